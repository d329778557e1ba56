//! hub-bus: the NATS and Kafka adapters of hub-core's `EventSink` and the outbox relay (not built yet).
//!
//! This crate will publish registry events to NATS subjects
//! `hub.{tenant}.registry.{type}` with async-nats and to the Kafka topic
//! `hub.registry.events` with rskafka, fed by a transactional outbox so that
//! no acknowledged change loses its event. Until then events go through
//! hub-core's in-process bus only.
