//! hub-bus: publishes registry events to message buses (NATS and Kafka) and relays the transactional outbox to them.
//!
//! [`nats::NatsPublisher`] implements hub-core's `EventSink` with async-nats:
//! each event's envelope (`hub_core::domain::envelope`) goes to
//! `{prefix}.{tenant}.registry.{short_type}` (built only in [`subjects`]),
//! stored in a JetStream stream with acks when the server has JetStream, or
//! sent with plain publish when it has not.
//!
//! [`kafka::KafkaPublisher`] implements it with rskafka: each event is one
//! record of the topic `hub.registry.events`, keyed by tenant and placed on
//! the partition Kafka's default partitioner gives that key, acknowledged by
//! the broker before `publish` returns. [`kafka::KafkaTail`] reads a topic
//! back, for tests and tools.
//!
//! [`relay::Relay`] drains one bus's pending entries of hub-core's `Outbox`
//! (the PostgreSQL outbox) into its publisher, in order, marking them only
//! once the bus confirmed them, so no acknowledged change loses its event.
//! [`lazy::Lazy`] connects a publisher on first use; [`best_effort::BestEffort`]
//! is embedded mode's never-blocking queue; `testing` (feature) has broker
//! helpers for tests.

pub mod best_effort;
mod error;
pub mod kafka;
pub mod lazy;
pub mod nats;
pub mod probe;
pub mod relay;
pub mod subjects;
#[cfg(feature = "testing")]
pub mod testing;

pub use kafka::{KafkaConfig, KafkaPublisher, KafkaRecord, KafkaTail, partition_for};
pub use nats::{NatsAuth, NatsConfig, NatsPublisher, PublishMode};
pub use probe::{KafkaProbe, NatsProbe};
pub use subjects::SubjectPrefix;
