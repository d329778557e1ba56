//! Integration tests of hub-bus against a real NATS server (127.0.0.1:4222, or NATS_URL) and a Kafka-compatible broker (127.0.0.1:9092, or HUB_TEST_KAFKA).
//!
//! Every test makes its own world: a random subject prefix and stream name,
//! so tests run in parallel on one server without seeing each other, and the
//! stream is deleted at the end; Kafka tests use a random topic each. When a
//! server is unreachable the tests fail under CI=true and are skipped (with a
//! note on stderr) elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod jetstream;
mod kafka;
mod no_jetstream;
mod plain;
mod refusals;
mod routing;
mod support;
mod unreachable;
