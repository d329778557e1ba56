//! The PostgreSQL store: connection pool, tenant-scoped transactions, registry queries, the event outbox, migrations, the change listener.

mod advisory;
mod batch;
mod changes;
mod config;
mod dashboard;
pub mod diagnose;
mod error;
mod gate;
#[cfg(all(test, feature = "testing"))]
mod hygiene_tests;
mod leases;
pub mod legacy;
pub mod listen;
pub mod migrate;
pub mod outbox;
mod rows;
mod scoped;
mod store;
mod tenants;

pub use batch::GroupCommit;
pub use config::PgConfig;
pub use dashboard::PgProbe;
pub use migrate::RoleCheck;
pub use outbox::PgOutbox;
pub use store::PgStore;
pub use tenants::PgTenants;
