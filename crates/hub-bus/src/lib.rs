//! hub-bus: publishes registry events to message buses (NATS and Kafka); the outbox relay comes next.
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
//! Still to come: the relay that drains the PostgreSQL outbox into these
//! publishers, so that no acknowledged change loses its event.

pub mod best_effort;
pub mod kafka;
pub mod lazy;
pub mod nats;
pub mod relay;
pub mod subjects;
#[cfg(feature = "testing")]
pub mod testing;

pub use kafka::{KafkaConfig, KafkaPublisher, KafkaRecord, KafkaTail, partition_for};
pub use nats::{NatsAuth, NatsConfig, NatsPublisher, PublishMode};
pub use subjects::SubjectPrefix;
