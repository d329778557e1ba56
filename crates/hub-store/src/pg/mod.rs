//! The PostgreSQL store: connection pool, tenant-scoped transactions, registry queries, migrations.

mod config;
mod error;
#[cfg(all(test, feature = "testing"))]
mod hygiene_tests;
pub mod migrate;
mod rows;
mod scoped;
mod store;

pub use config::PgConfig;
pub use migrate::RoleCheck;
pub use store::PgStore;
