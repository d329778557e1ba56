//! Domain vocabulary: identifiers, registrations, instances, events and queries.

pub mod context;
pub mod envelope;
pub mod event;
pub mod ids;
pub mod instance;
pub mod query;
pub mod registration;
