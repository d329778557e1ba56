//! Session-level advisory locks that let one replica at a time run a background pass (the lease reaper, the metrics pruner), and the reaper's turn as a guard released on drop.
//!
//! A lock is taken with `pg_try_advisory_lock` on a pooled connection of its
//! own and held for the length of the pass. **Invariant:** a connection that
//! may still hold a lock never goes back to the pool (the next user would
//! hold the lock without knowing): it is returned only after
//! `pg_advisory_unlock` succeeded, and closed otherwise, in which case
//! PostgreSQL releases the lock with the session.
//!
//! The reaper's turn of the lease-cache reaper ([`ReaperTurnGuard`]) can
//! only be released in `Drop`, where nothing can be awaited: the unlock runs
//! on a spawned task. So that this process does not find its own lock still
//! taken right after dropping the guard (the reaper falls back to
//! [`hub_core::ports::RegistryStore::expire_leases`] at once, which takes the
//! same lock), every release in flight is counted in [`Releases`], and
//! [`PgStore::try_lock`] waits for them to finish before it tries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hub_core::RegistryError;
use tokio::sync::Notify;

use super::error::{from_db, from_pg};
use super::gate::Checkout;
use super::store::PgStore;

/// The advisory lock of the lease reaper (an arbitrary constant).
pub(super) const REAPER_LOCK: i64 = 0x00C3_7A11_4EA9;

/// The advisory lock of the health-metrics pruner (the reaper's plus one).
pub(super) const METRICS_LOCK: i64 = 0x00C3_7A11_4EAA;

/// A session-level advisory lock held on a pooled connection of its own.
/// A connection that may still hold the lock must never go back to the
/// pool: if the holder is dropped without [`unlock`] (its future was
/// cancelled, say), `Drop` closes the connection and PostgreSQL releases
/// the lock with it.
pub(super) struct AdvisoryLock {
    client: Option<Checkout>,
    key: i64,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            client.detach();
        }
    }
}

/// Releases an advisory lock taken by [`PgStore::try_lock`]; its connection
/// goes back to the pool only once the lock is released.
pub(super) async fn unlock(mut lock: AdvisoryLock) {
    let Some(client) = lock.client.take() else {
        return;
    };
    if client
        .execute("SELECT pg_advisory_unlock($1)", &[&lock.key])
        .await
        .is_err()
    {
        client.detach();
    }
}

/// Advisory-lock releases of this store (and its clones) still in flight.
#[derive(Debug, Default)]
pub(super) struct Releases {
    pending: AtomicUsize,
    done: Notify,
}

impl Releases {
    /// Waits until no release is in flight. Each release is bounded by the
    /// call deadline of its connection, so this wait is too.
    async fn settled(&self) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            // Registered before the check, so a release that ends between
            // the check and the wait still wakes it.
            done.as_mut().enable();
            if self.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }

    fn start(self: &Arc<Self>) -> Pending {
        self.pending.fetch_add(1, Ordering::SeqCst);
        Pending(self.clone())
    }
}

/// One release in flight; counted down when dropped, whether the release
/// task ran to its end or was dropped unrun (a runtime shutting down).
struct Pending(Arc<Releases>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
        self.0.done.notify_waiters();
    }
}

/// The reaper's turn ([`hub_core::ReaperTurn`]): holds the reaper's advisory
/// lock until dropped. Dropping it releases the lock on a spawned task
/// (outside a runtime it closes the connection instead, which releases the
/// lock too); see the module comment for how this process waits for that.
pub(super) struct ReaperTurnGuard {
    lock: Option<AdvisoryLock>,
    releases: Arc<Releases>,
}

impl Drop for ReaperTurnGuard {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let pending = self.releases.start();
                runtime.spawn(async move {
                    unlock(lock).await;
                    drop(pending);
                });
            }
            // `AdvisoryLock`'s own drop closes the connection.
            Err(_) => drop(lock),
        }
    }
}

impl PgStore {
    /// Takes the advisory lock `key` on a connection of its own, or `None`
    /// when another session (another replica) holds it. Held until
    /// [`unlock`], or until the connection is lost: then PostgreSQL releases
    /// it. Releases of this store still in flight are waited for first, so
    /// a lock this process just gave up is not reported as taken.
    pub(super) async fn try_lock(&self, key: i64) -> Result<Option<AdvisoryLock>, RegistryError> {
        self.releases.settled().await;
        let lock = self.pool.internal().await?;
        let taken: bool = lock
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(from_db)?
            .try_get(0)
            .map_err(from_pg)?;
        Ok(taken.then_some(AdvisoryLock {
            client: Some(lock),
            key,
        }))
    }

    /// The reaper's turn as a guard that releases it when dropped, or
    /// `None` when another replica has it.
    pub(super) async fn reaper_turn_guard(&self) -> Result<Option<ReaperTurnGuard>, RegistryError> {
        Ok(self
            .try_lock(REAPER_LOCK)
            .await?
            .map(|lock| ReaperTurnGuard {
                lock: Some(lock),
                releases: self.releases.clone(),
            }))
    }
}
