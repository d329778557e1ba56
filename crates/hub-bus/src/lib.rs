//! hub-bus: publishes registry events to message buses; the NATS publisher is here, the Kafka producer and the outbox relay come next.
//!
//! [`nats::NatsPublisher`] implements hub-core's `EventSink` with async-nats:
//! each event's envelope (`hub_core::domain::envelope`) goes to
//! `{prefix}.{tenant}.registry.{short_type}` (built only in [`subjects`]),
//! stored in a JetStream stream with acks when the server has JetStream, or
//! sent with plain publish when it has not.
//!
//! Still to come: the Kafka producer (rskafka, topic `hub.registry.events`,
//! keyed by tenant) and the relay that drains the PostgreSQL outbox into
//! these publishers, so that no acknowledged change loses its event.

pub mod nats;
pub mod subjects;

pub use nats::{NatsAuth, NatsConfig, NatsPublisher, PublishMode};
pub use subjects::SubjectPrefix;
