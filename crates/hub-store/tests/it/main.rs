//! hub-store integration tests against the machine's real PostgreSQL: a fresh database per test, non-superuser roles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod containment;
mod dragonfly;
mod dragonfly_tls;
mod group_commit;
mod leases_contract;
mod notify;
mod outbox;
mod pg_leases;
mod rls;
mod store;
mod support;
mod tenants;
mod upgrade;
