//! hub-store: the PostgreSQL adapter of hub-core's `RegistryStore`, with tenant isolation enforced by row-level security.
//!
//! Every tenant-scoped statement runs inside [`pg::PgStore`]'s one
//! tenant-scoped transaction, whose first statement sets `app.tenant_id` for
//! that transaction only; the policies of `migrations/` do the rest. The
//! DragonflyDB adapters live in [`dragonfly`] (rate limits now; leases next).

pub mod dragonfly;
pub mod pg;
#[cfg(feature = "testing")]
pub mod testing;

pub use pg::{GroupCommit, PgConfig, PgOutbox, PgProbe, PgStore, PgTenants, RoleCheck};
