//! Domain vocabulary: identifiers, registrations, instances, events, the outbox and queries.

pub mod context;
pub mod envelope;
pub mod event;
pub mod ids;
pub mod instance;
pub mod outbox;
pub mod query;
pub mod registration;
pub mod summary;
