//! The change listener: in PostgreSQL mode, the registry's change notifications (one `LISTEN` connection per replica) drop this replica's cached lookups.

use std::sync::Arc;

use hub_core::cache::CachedStore;
use hub_core::watch::WatchHub;
use hub_core::{ServiceName, TenantId};
use hub_store::PgConfig;
use hub_store::pg::listen::{self, ChangeHandler};
use tokio::sync::watch;

/// Who hears the notifications: the lookup cache (when it listens) and the
/// watch hub, whose feed task then reads the tenant's new changes. One
/// listening connection serves both.
pub(crate) struct Changes {
    pub(crate) cache: Option<Arc<CachedStore>>,
    pub(crate) watch: WatchHub,
}

impl ChangeHandler for Changes {
    fn connected(&self) {
        if let Some(cache) = &self.cache {
            ChangeHandler::connected(cache.as_ref());
        }
        // Changes made while nobody listened are read now.
        self.watch.everything_changed();
    }

    fn lost(&self) {
        if let Some(cache) = &self.cache {
            ChangeHandler::lost(cache.as_ref());
        }
    }

    fn changed(&self, tenant: &TenantId, service: &ServiceName) {
        if let Some(cache) = &self.cache {
            ChangeHandler::changed(cache.as_ref(), tenant, service);
        }
        self.watch.changed(tenant);
    }

    fn everything_changed(&self) {
        if let Some(cache) = &self.cache {
            ChangeHandler::everything_changed(cache.as_ref());
        }
        self.watch.everything_changed();
    }
}

/// The `application_name` of the listening connection: the replica's id
/// after a fixed prefix, so that an operator (or a test) can find it in
/// `pg_stat_activity`. PostgreSQL keeps the first 63 bytes.
pub(crate) fn application_name(replica_id: &str) -> String {
    format!("central-hub-listen {replica_id}")
}

/// Listens until told to stop, reconnecting after each loss; the cache
/// and the watch hub learn of every change, and of each connection and loss (see
/// `hub_store::pg::listen`).
pub(crate) async fn run(
    config: PgConfig,
    replica_id: String,
    handler: Arc<Changes>,
    stop: watch::Receiver<bool>,
) {
    listen::run(config, application_name(&replica_id), handler, stop).await;
}
