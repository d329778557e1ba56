//! `Gate`: the only way to a pooled connection. It bounds every wait and every call, and caps each tenant's share of the pool.
//!
//! **Bounded waits.** PostgreSQL enforces `statement_timeout` only while it
//! is running: a server that is frozen (a stopped process, a network that
//! drops packets without resetting connections) never answers, and a call
//! waiting for it would wait until the client gave up. So every call on a
//! checked-out connection carries a client-side deadline, the statement
//! timeout plus [`DEADLINE_MARGIN`] (the margin lets the server's own
//! timeout, which leaves the connection usable, fire first whenever the
//! server is alive). A call that misses it answers `Unavailable` (503
//! `store_unavailable`) and spoils its connection: a request may still be in
//! flight on it, so it is closed instead of going back to the pool. Getting
//! a connection (the tenant's share, then the pool) has one budget: the
//! statement timeout.
//!
//! **Fair share.** A tenant's requests hold at most `tenant_max` pooled
//! connections at once (`HUB_PG_TENANT_MAX_CONNECTIONS`, default a quarter of
//! the pool): a per-tenant semaphore, whose permit is held for the life of
//! the checkout. Past it, the tenant's requests queue (within the same
//! budget) and then get 503, while the rest of the pool serves the other
//! tenants. The semaphores live in a map that keeps only tenants with a
//! checkout held or awaited: the last one out removes its tenant's entry, so
//! the map is as large as the number of tenants active at this moment, not
//! the number ever seen. Work that acts for no tenant (the reaper's tenant
//! enumeration and its lock, health checks, outbox pruning) and the reaper's
//! passes over each tenant take no permit ([`Gate::uncapped`]): a tenant at
//! its cap must not delay its own expiries, nor anyone else's.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Object, Pool, Status};
use hub_core::{RegistryError, TenantId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, SimpleQueryMessage};

use super::config::PgConfig;
use super::error::{DbError, from_pool};

/// Added to the statement timeout to make the client-side deadline of a
/// call: long enough for the server's own timeout (which keeps the
/// connection usable) to come first when the server is alive.
pub(crate) const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// Why no connection could be had in time.
#[derive(Debug, thiserror::Error)]
enum Busy {
    #[error(
        "tenant '{tenant}' already holds its {max} pooled connections \
         (HUB_PG_TENANT_MAX_CONNECTIONS) and none was released within {waited:?}"
    )]
    TenantShare {
        tenant: String,
        max: usize,
        waited: Duration,
    },
    #[error(
        "no pooled connection became free within {0:?} (HUB_PG_POOL_SIZE, HUB_PG_STATEMENT_TIMEOUT_MS)"
    )]
    Pool(Duration),
    #[error("a tenant's connection share was closed")]
    Closed,
}

fn unavailable(busy: Busy) -> RegistryError {
    RegistryError::Unavailable {
        component: "store",
        source: Box::new(busy),
    }
}

/// The pool, the bounds on its use and the tenants' shares. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Gate {
    inner: Arc<Inner>,
    /// Whether tenant checkouts take a permit of the tenant's share.
    capped: bool,
}

struct Inner {
    pool: Pool,
    /// Budget for getting a connection (share and pool together).
    wait: Duration,
    /// Client-side bound on every call on a connection.
    deadline: Duration,
    /// Connections one tenant's requests may hold at once.
    tenant_max: usize,
    /// Tenants with a checkout held or awaited, and their semaphores.
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Gate {
    /// A gate over a new pool built from `config`.
    pub(crate) fn new(config: &PgConfig) -> Result<Self, RegistryError> {
        Ok(Self {
            inner: Arc::new(Inner {
                pool: config.pool()?,
                wait: config.statement_timeout,
                deadline: config.call_deadline(),
                tenant_max: config.tenant_share(),
                shares: Mutex::new(HashMap::new()),
            }),
            capped: true,
        })
    }

    /// The same pool, for internal work that acts for a tenant but must not
    /// wait behind that tenant's requests (the lease reaper).
    pub(crate) fn uncapped(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            capped: false,
        }
    }

    pub(crate) fn status(&self) -> Status {
        self.inner.pool.status()
    }

    /// A connection for work acting for `tenant`, within its share.
    pub(crate) async fn tenant(&self, tenant: &TenantId) -> Result<Checkout, RegistryError> {
        let until = Instant::now() + self.inner.wait;
        let share = if self.capped {
            Some(self.share(tenant, until).await?)
        } else {
            None
        };
        self.checkout(share, until).await
    }

    /// A connection for work that acts for no tenant (no share is taken).
    pub(crate) async fn internal(&self) -> Result<Checkout, RegistryError> {
        self.checkout(None, Instant::now() + self.inner.wait).await
    }

    async fn checkout(
        &self,
        share: Option<Share>,
        until: Instant,
    ) -> Result<Checkout, RegistryError> {
        let client = match tokio::time::timeout_at(until, self.inner.pool.get()).await {
            Ok(client) => client.map_err(from_pool)?,
            Err(_) => return Err(unavailable(Busy::Pool(self.inner.wait))),
        };
        Ok(Checkout {
            client: Some(client),
            _share: share,
            deadline: self.inner.deadline,
            spoiled: AtomicBool::new(false),
        })
    }

    /// Waits (until `until`) for a permit of `tenant`'s share.
    async fn share(&self, tenant: &TenantId, until: Instant) -> Result<Share, RegistryError> {
        let key = tenant.as_str();
        let semaphore = {
            let mut shares = self.inner.lock();
            shares
                .entry(key.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.inner.tenant_max)))
                .clone()
        };
        // The guard exists before the wait, so a wait that times out or is
        // abandoned still removes an entry nobody else uses.
        let mut share = Share {
            permit: None,
            semaphore: Some(semaphore.clone()),
            inner: self.inner.clone(),
            tenant: key.to_owned(),
        };
        match tokio::time::timeout_at(until, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => {
                share.permit = Some(permit);
                Ok(share)
            }
            Ok(Err(_)) => Err(unavailable(Busy::Closed)),
            Err(_) => {
                tracing::warn!(
                    tenant = key,
                    max = self.inner.tenant_max,
                    "a tenant's requests waited for its connection share in vain"
                );
                Err(unavailable(Busy::TenantShare {
                    tenant: key.to_owned(),
                    max: self.inner.tenant_max,
                    waited: self.inner.wait,
                }))
            }
        }
    }

    /// Tenants currently holding or awaiting a connection (for tests).
    #[cfg(all(test, feature = "testing"))]
    pub(crate) fn tenants_tracked(&self) -> usize {
        self.inner.lock().len()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        // The map is consistent after every statement under the lock, so a
        // panic elsewhere while holding it leaves nothing half done.
        self.shares.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets `tenant`'s semaphore when nobody holds or awaits it. Clones
    /// of the `Arc` are only made under the lock, so a count of one (the
    /// map's own) seen under the lock cannot grow behind our back.
    fn release(&self, tenant: &str) {
        let mut shares = self.lock();
        if shares
            .get(tenant)
            .is_some_and(|semaphore| Arc::strong_count(semaphore) == 1)
        {
            shares.remove(tenant);
        }
    }
}

/// A permit of one tenant's share (or a wait for one).
struct Share {
    permit: Option<OwnedSemaphorePermit>,
    semaphore: Option<Arc<Semaphore>>,
    inner: Arc<Inner>,
    tenant: String,
}

impl Drop for Share {
    fn drop(&mut self) {
        // Both references to the semaphore go first, so `release` sees only
        // the map's own when this was the last user.
        drop(self.permit.take());
        drop(self.semaphore.take());
        self.inner.release(&self.tenant);
    }
}

/// A checked-out connection whose every call is bounded by the deadline.
/// A call that missed it spoils the connection, which is then closed
/// rather than returned to the pool.
pub(crate) struct Checkout {
    client: Option<Object>,
    /// Held for as long as the connection is.
    _share: Option<Share>,
    deadline: Duration,
    spoiled: AtomicBool,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if self.spoiled.load(Ordering::Relaxed)
            && let Some(client) = self.client.take()
        {
            drop(Object::take(client));
        }
    }
}

impl Checkout {
    pub(crate) fn client(&self) -> Result<&Object, DbError> {
        self.client.as_ref().ok_or(DbError::Finished)
    }

    /// Runs `call` within the deadline; past it the connection is spoiled.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(result) => Ok(result?),
            Err(_) => {
                self.spoil();
                Err(DbError::Deadline(self.deadline))
            }
        }
    }

    /// Marks the connection as not reusable (it is closed when dropped).
    pub(crate) fn spoil(&self) {
        self.spoiled.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_spoiled(&self) -> bool {
        self.spoiled.load(Ordering::Relaxed)
    }

    /// Closes the connection instead of returning it to the pool.
    pub(crate) fn detach(self) {
        self.spoil();
    }

    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        let client = self.client()?;
        self.bounded(client.query(sql, params)).await
    }

    pub(crate) async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError> {
        let client = self.client()?;
        self.bounded(client.query_one(sql, params)).await
    }

    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DbError> {
        let client = self.client()?;
        self.bounded(client.execute(sql, params)).await
    }

    pub(crate) async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, DbError> {
        let client = self.client()?;
        self.bounded(client.simple_query(sql)).await
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    /// A tenant at its share waits its bounded time and is refused while
    /// another tenant gets a connection, and the map of shares forgets
    /// every tenant once nothing is held or awaited (many tenants in turn
    /// leave nothing behind).
    #[tokio::test]
    async fn shares_cap_one_tenant_and_are_forgotten_when_idle() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let gate = Gate::new(&PgConfig {
            pool_size: 4,
            tenant_max_connections: Some(1),
            statement_timeout: Duration::from_millis(300),
            ..db.app.clone()
        })
        .unwrap();
        let a = TenantId::parse("share-a").unwrap();
        let b = TenantId::parse("share-b").unwrap();
        let held = gate.tenant(&a).await.unwrap();
        let started = std::time::Instant::now();
        let refused = gate.tenant(&a).await.err().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        let RegistryError::Unavailable { source, .. } = refused else {
            panic!("{refused:?}")
        };
        assert!(source.to_string().contains("HUB_PG_TENANT_MAX_CONNECTIONS"));
        // Another tenant, and internal work, are not held up.
        let other = gate.tenant(&b).await.unwrap();
        let internal = gate.internal().await.unwrap();
        let reaper = gate.uncapped().tenant(&a).await.unwrap();
        assert_eq!(gate.tenants_tracked(), 2);
        drop((held, other, internal, reaper));
        assert_eq!(gate.tenants_tracked(), 0);
        for i in 0..200 {
            let tenant = TenantId::parse(format!("many-{i}")).unwrap();
            let checkout = gate.tenant(&tenant).await.unwrap();
            checkout.simple_query("SELECT 1").await.unwrap();
        }
        assert_eq!(gate.tenants_tracked(), 0, "idle tenants are forgotten");
    }
}
