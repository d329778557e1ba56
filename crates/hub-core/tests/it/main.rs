//! hub-core integration tests: the registry use cases on the in-memory adapters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod concurrency;
mod isolation;
mod lease_cache;
mod lease_store;
mod leases;
mod support;
