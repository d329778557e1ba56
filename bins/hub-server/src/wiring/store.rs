//! The registry store: in memory (embedded mode) or PostgreSQL, with the PostgreSQL outbox, lookup cache and change listener.

use std::sync::Arc;

use hub_core::cache::{CacheLimits, CachedStore};
use hub_core::memory::MemoryStore;
use hub_core::ports::{Clock, Outbox, RegistryStore};
use hub_core::watch::WatchHub;
use hub_core::{MassExpiry, Sinks};
use hub_store::{PgConfig, PgStore};

use super::postgres;
use crate::settings::PostgresSettings;
use crate::tasks::{Tasks, listener};

/// The store and, in PostgreSQL mode, its outbox and lookup cache.
pub(crate) struct Stores {
    pub(crate) registry: Arc<dyn RegistryStore>,
    pub(crate) outbox: Option<Arc<dyn Outbox>>,
    pub(crate) cache: Option<Arc<CachedStore>>,
    /// The PostgreSQL store itself, for its maintenance (metrics pruning).
    pub(crate) pg: Option<Arc<PgStore>>,
    /// How the PostgreSQL store connects, for the change listener.
    pub(crate) pg_config: Option<PgConfig>,
}

/// The registry store: PostgreSQL when `POSTGRES_HOST` is set (opened and
/// checked by [`postgres::open`]), memory otherwise. In PostgreSQL mode,
/// lookups go through a cache unless `HUB_LOOKUP_CACHE_MS` is 0: kept for
/// `HUB_LOOKUP_CACHE_MS`, or `HUB_LOOKUP_CACHE_LISTEN_MS` while the change
/// listener ([`listen`]) is connected.
pub(crate) async fn build(
    settings: &PostgresSettings,
    clock: &Arc<dyn Clock>,
    sinks: Sinks,
    replica_id: &str,
    mass_expiry: MassExpiry,
) -> anyhow::Result<Stores> {
    let Some(host) = settings.host.as_deref().filter(|h| !h.is_empty()) else {
        tracing::info!(
            "embedded mode: in-memory registry and in-process event bus; nothing is persisted across restarts"
        );
        return Ok(Stores {
            registry: Arc::new(MemoryStore::new().with_mass_expiry(mass_expiry)),
            outbox: None,
            cache: None,
            pg: None,
            pg_config: None,
        });
    };
    let postgres::Opened {
        store: pg,
        outbox,
        config,
    } = postgres::open(host, settings, sinks, replica_id, mass_expiry).await?;
    if settings.lookup_cache_ms == 0 {
        return Ok(Stores {
            registry: pg.clone(),
            outbox,
            cache: None,
            pg: Some(pg),
            pg_config: Some(config),
        });
    }
    let millis = |ms: u64| chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX));
    let cache = Arc::new(CachedStore::new(
        pg.clone(),
        clock.clone(),
        CacheLimits {
            ttl: millis(settings.lookup_cache_ms),
            listen_ttl: millis(settings.lookup_cache_listen_ms),
            capacity: settings.lookup_cache_entries,
        },
    ));
    Ok(Stores {
        registry: cache.clone(),
        outbox,
        cache: Some(cache),
        pg: Some(pg),
        pg_config: Some(config),
    })
}

/// Starts the change listener in PostgreSQL mode: it feeds the watch hub
/// and the lookup cache. The cache listens unless `HUB_LOOKUP_CACHE_LISTEN_MS`
/// is 0 (then it keeps answers for `HUB_LOOKUP_CACHE_MS` only); until the
/// listener first connects, and after every loss until it reconnects, that
/// short time applies too.
pub(crate) fn listen(
    stores: &Stores,
    settings: &PostgresSettings,
    replica_id: &str,
    watch: &WatchHub,
    tasks: &mut Tasks,
) {
    let Some(config) = &stores.pg_config else {
        return;
    };
    let cache = stores
        .cache
        .clone()
        .filter(|_| settings.lookup_cache_listen_ms != 0);
    if stores.cache.is_some() && cache.is_none() {
        tracing::info!(
            "HUB_LOOKUP_CACHE_LISTEN_MS=0: the lookup cache does not follow the change listener; cached lookups last HUB_LOOKUP_CACHE_MS"
        );
    }
    tasks.spawn(
        "change listener",
        listener::run(
            config.clone(),
            replica_id.to_owned(),
            Arc::new(listener::Changes {
                cache,
                watch: watch.clone(),
            }),
            tasks.stop_signal(),
        ),
    );
}
