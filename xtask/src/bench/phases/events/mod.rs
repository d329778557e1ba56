//! The event phases of `cargo xtask bench`: PostgreSQL-mode registration with NATS and Kafka configured, the relays' catch-up, and the time from an acknowledged registration to its event on each bus.
//!
//! Each run starts one more PostgreSQL-mode server, on a fresh database like
//! the one without events, configured with NATS and Kafka under names of its
//! own (subject prefix, JetStream stream, Kafka topic), which are deleted
//! when the run ends. Before the server starts, a core NATS subscription on
//! every event subject of the prefix is opened; once it is ready (and has
//! created the topic), one long-polling fetcher per Kafka partition follows
//! the topic from its start. Both note the instant each event arrives.
//!
//! Then the server gets the same closed-loop registration phase as the one
//! without events, whose throughput is compared with it; the bench waits
//! until every event of that phase has arrived on both buses and reports how
//! long after the last acknowledged registration the last one came (the
//! relays' backlog catch-up). Last, an open-loop phase sends registrations at
//! a fixed rate (request `i` at `start + i / rate`, over enough connections
//! that the server does not pace the sender; sends more than `LATE` behind
//! their schedule are counted) and notes when each 2xx answer arrived; the
//! latency of an event is its arrival minus that instant.

mod buses;
mod lines;
mod listener;
mod paced;
mod run;

pub(crate) use buses::brokers;
pub(crate) use lines::{run_lines, summary_lines, targets};
pub(crate) use paced::paced;
pub(crate) use run::{EventsResult, REGISTER_ROW, pg_events_run};
