//! Black-box tests of hub-server over HTTP: each test starts its own app on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod cli;
mod concurrency;
mod containment;
mod differential;
mod discovery;
mod dragonfly_leases;
mod events;
mod leases;
mod limits;
mod metrics;
mod monitor;
mod openapi;
mod pg_bounds;
mod pg_lifecycle;
mod pg_listen;
mod pg_support;
mod process;
mod schemathesis;
mod startup_guard;
mod support;
mod timeouts;
mod validation;
mod walkthrough;
mod watch;
