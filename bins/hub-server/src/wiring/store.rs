//! The registry store: in memory (embedded mode) or PostgreSQL, with the PostgreSQL outbox and lookup cache.

use std::sync::Arc;

use hub_core::cache::CachedStore;
use hub_core::memory::MemoryStore;
use hub_core::ports::{Clock, Outbox, RegistryStore};
use hub_core::{MassExpiry, Sinks};
use hub_store::PgStore;

use super::postgres;
use crate::settings::PostgresSettings;

/// The store and, in PostgreSQL mode, its outbox and lookup cache.
pub(crate) struct Stores {
    pub(crate) registry: Arc<dyn RegistryStore>,
    pub(crate) outbox: Option<Arc<dyn Outbox>>,
    pub(crate) cache: Option<Arc<CachedStore>>,
    /// The PostgreSQL store itself, for its maintenance (metrics pruning).
    pub(crate) pg: Option<Arc<PgStore>>,
}

/// The registry store: PostgreSQL when `POSTGRES_HOST` is set (opened and
/// checked by [`postgres::open`]), memory otherwise. In PostgreSQL mode,
/// lookups go through a cache for `HUB_LOOKUP_CACHE_MS` unless it is 0.
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
        });
    };
    let postgres::Opened { store: pg, outbox } =
        postgres::open(host, settings, sinks, replica_id, mass_expiry).await?;
    if settings.lookup_cache_ms == 0 {
        return Ok(Stores {
            registry: pg.clone(),
            outbox,
            cache: None,
            pg: Some(pg),
        });
    }
    let cache = Arc::new(CachedStore::new(
        pg.clone(),
        clock.clone(),
        chrono::Duration::milliseconds(i64::try_from(settings.lookup_cache_ms).unwrap_or(1000)),
    ));
    Ok(Stores {
        registry: cache.clone(),
        outbox,
        cache: Some(cache),
        pg: Some(pg),
    })
}
