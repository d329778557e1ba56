//! The phases of a run beyond the load generator: each module starts the servers it needs, measures, and writes its own lines of the report.

pub(crate) mod auth;
pub(crate) mod core;
pub(crate) mod events;
pub(crate) mod fairness;
pub(crate) mod heartbeats;
pub(crate) mod large;
pub(crate) mod limiter;
pub(crate) mod metrics;
pub(crate) mod prepare;
pub(crate) mod watch;
