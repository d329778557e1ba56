//! Heartbeat leases: in Dragonfly when PostgreSQL and Dragonfly are both configured (with the metrics sampler), else kept by the store itself.

use std::sync::Arc;
use std::time::Duration;

use hub_core::{LeaseStore, MassExpiry, Registry};
use hub_store::dragonfly::{Dragonfly, DragonflyLeases};

use super::store::Stores;
use crate::settings::LeaseSettings;
use crate::tasks::{Tasks, sampler};

/// The registry with its leases in Dragonfly, when there is both a
/// PostgreSQL store and a Dragonfly client; otherwise `registry` as it is
/// (embedded mode keeps leases in memory, PostgreSQL alone in its table).
pub(crate) fn wire(
    registry: Registry,
    stores: &Stores,
    dragonfly: Option<&Dragonfly>,
    settings: &LeaseSettings,
    mass_expiry: MassExpiry,
    tasks: &mut Tasks,
) -> Registry {
    let (Some(pg), Some(dragonfly)) = (&stores.pg, dragonfly) else {
        if stores.pg.is_none() && dragonfly.is_some() {
            tracing::info!(
                "embedded mode: heartbeat leases stay in memory; Dragonfly serves the rate limits only"
            );
        }
        return registry;
    };
    let lease_store: Arc<dyn LeaseStore> = pg.clone();
    let registry = registry.with_lease_cache(
        Arc::new(DragonflyLeases::new(dragonfly.clone())),
        lease_store,
        mass_expiry,
    );
    tracing::info!(
        sample_secs = settings.metrics_sample_secs,
        "heartbeat leases in Dragonfly: heartbeats that change no status write nothing to PostgreSQL; metrics are sampled"
    );
    tasks.spawn(
        "metrics sampler",
        sampler::run(
            registry.clone(),
            Duration::from_secs(settings.metrics_sample_secs),
            tasks.stop_signal(),
        ),
    );
    registry
}
