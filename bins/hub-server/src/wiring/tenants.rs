//! The tenant directory (PostgreSQL with the store, memory in embedded mode), the usage meter the registry and the HTTP layer count into, and their background tasks (usage flush, audit pruning).

use std::sync::Arc;
use std::time::Duration;

use hub_core::Registry;
use hub_core::tenancy::{MemoryTenants, TenantDirectory, UsageMeter};
use hub_store::PgTenants;

use super::store::Stores;
use crate::settings::UsageSettings;
use crate::tasks::{Tasks, usage};

/// The tenant directory and the usage meter, built once and shared.
pub(crate) struct Tenancy {
    /// Tenants, keys, audit and usage: in PostgreSQL when the registry is
    /// (sharing its pool), else in memory.
    pub(crate) directory: Arc<dyn TenantDirectory>,
    /// Usage counted in memory: the registry counts registrations,
    /// heartbeats, events and instance peaks, the HTTP layer requests by
    /// class; the flush task drains it into `directory`.
    pub(crate) usage: Arc<UsageMeter>,
}

/// The directory that goes with `stores`, and an empty meter.
pub(crate) fn build(stores: &Stores) -> Tenancy {
    let directory: Arc<dyn TenantDirectory> = match &stores.pg {
        Some(pg) => Arc::new(PgTenants::new(pg)),
        None => Arc::new(MemoryTenants::new()),
    };
    Tenancy {
        directory,
        usage: Arc::new(UsageMeter::new()),
    }
}

/// Starts the usage flush (every `HUB_USAGE_FLUSH_SECS`, and once more at
/// shutdown) and the audit pruner (rows older than
/// `HUB_AUDIT_RETENTION_DAYS`). `registry` must count into
/// `tenancy.usage` (`Registry::with_usage`).
pub(crate) fn spawn(
    tenancy: &Tenancy,
    registry: &Registry,
    settings: &UsageSettings,
    tasks: &mut Tasks,
) {
    tasks.spawn(
        "usage flush",
        usage::run_flush(
            registry.clone(),
            tenancy.usage.clone(),
            tenancy.directory.clone(),
            Duration::from_secs(settings.flush_secs),
            tasks.stop_signal(),
        ),
    );
    tasks.spawn(
        "audit pruner",
        usage::run_audit_pruner(
            tenancy.directory.clone(),
            settings.audit_retention_days,
            usage::AUDIT_PRUNE_INTERVAL,
            tasks.stop_signal(),
        ),
    );
}
