//! The change listener: in PostgreSQL mode, the registry's change notifications (one `LISTEN` connection per replica) drop this replica's cached lookups.

use std::sync::Arc;

use hub_core::cache::CachedStore;
use hub_store::PgConfig;
use hub_store::pg::listen;
use tokio::sync::watch;

/// The `application_name` of the listening connection: the replica's id
/// after a fixed prefix, so that an operator (or a test) can find it in
/// `pg_stat_activity`. PostgreSQL keeps the first 63 bytes.
pub(crate) fn application_name(replica_id: &str) -> String {
    format!("central-hub-listen {replica_id}")
}

/// Listens until told to stop, reconnecting after each loss; the cache
/// learns of every change, and of each connection and loss (see
/// `hub_store::pg::listen`).
pub(crate) async fn run(
    config: PgConfig,
    replica_id: String,
    cache: Arc<CachedStore>,
    stop: watch::Receiver<bool>,
) {
    listen::run(config, application_name(&replica_id), cache, stop).await;
}
