//! `CachedLeases`: how the registry keeps a lease cache and the store consistent (fast-path renewals, write-through, the cache-driven reaper pass, fallback and recovery).
//!
//! The rules, each for a failure the cache can have:
//!
//! - **Renewal.** A heartbeat is renewed in the cache only when the cache
//!   says the tenant is synced, knows the instance and holds the reported
//!   status; otherwise it goes to the store as before, and what the store
//!   wrote is put into the cache.
//! - **A write to the cache fails** (unreachable, timed out): the tenant is
//!   remembered as *dirty*. Before this process renews anything in the cache
//!   again, it marks its dirty tenants not synced, so the reaper refills
//!   them from the store and no stale status or lease is served.
//! - **The cache restarts empty**: every tenant is then not synced (the
//!   marker is gone with the rest), heartbeats go to the store, and the
//!   reaper refills each tenant with a grace of one ttl per instance before
//!   it expires anything.
//! - **The cache is unreachable for the reaper**: it says so once, moves
//!   every stored lease to at least now plus its ttl (leases renewed only in
//!   the cache must not expire because the cache went away), and runs the
//!   store's own expiry until the cache answers again; then it refills every
//!   tenant, replacing what the cache held.
//! - **Instances the cache lost track of** (a write lost with a crashed
//!   process, or a registration whose write to the cache landed while a
//!   refill was replacing the tenant): the pass after a refill reconciles
//!   the tenant once more, and every `RESYNC` the reaper reconciles each
//!   tenant with the store, adding what is missing and dropping what the
//!   store no longer has.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

use crate::domain::context::ChangeContext;
use crate::domain::ids::{InstanceId, ServiceName, TenantId};
use crate::domain::instance::{HealthStatus, Instance};
use crate::domain::query::Heartbeat;
use crate::error::{RegistryError, error_chain};
use crate::lease::{
    CacheRenewal, CachedLease, LeaseCache, LeaseStore, MassExpiry, MetricSample, judge,
};
use crate::ports::{Clock, LeaseChange, RegistryStore};

/// How often the reaper reconciles every tenant's cached leases with the
/// store, to pick up instances a lost write left out of the cache.
const RESYNC: Duration = Duration::seconds(300);

/// What a cache-driven pass over one tenant ran into.
enum TenantFailure {
    /// The cache failed: the pass falls back to the store.
    Cache(RegistryError),
    /// The store failed for this tenant: logged, the pass goes on.
    Store(RegistryError),
}

/// The lease cache, the store side of it, and the state of their sync.
pub(crate) struct CachedLeases {
    cache: Arc<dyn LeaseCache>,
    store: Arc<dyn LeaseStore>,
    policy: MassExpiry,
    /// Tenants whose cache writes failed since their last unsync.
    dirty: Mutex<HashSet<TenantId>>,
    /// Whether `dirty` may be non-empty (checked without the lock).
    any_dirty: AtomicBool,
    /// Whether the last cache call of a request failed (for logging once).
    degraded: AtomicBool,
    /// Heartbeats that went to the store because the cache failed.
    fallbacks: AtomicU64,
    /// Whether the reaper found the cache unreachable (and extended the
    /// stored leases); cleared once it has refilled every tenant.
    reaper_down: AtomicBool,
    /// The registry's clock: the stored leases are extended from the time
    /// the fallback starts, not from the start of a pass that may have
    /// waited long for the cache.
    clock: Arc<dyn Clock>,
    /// The latest time (µs since the epoch) a request of this process was
    /// answered by the cache, and the floor of the last extension: a
    /// renewal in the cache after that extension must be covered again.
    last_success: AtomicI64,
    extended_from: AtomicI64,
    /// When the reaper last reconciled every tenant.
    last_resync: Mutex<Option<DateTime<Utc>>>,
    /// Tenants refilled (replaced) at the last pass, with the floor used:
    /// the next pass reconciles them once more, to add an instance whose
    /// registration committed after the refill read the store but whose
    /// write to the cache landed before the refill replaced it.
    follow_ups: Mutex<HashMap<TenantId, DateTime<Utc>>>,
}

impl CachedLeases {
    pub(crate) fn new(
        cache: Arc<dyn LeaseCache>,
        store: Arc<dyn LeaseStore>,
        policy: MassExpiry,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            cache,
            store,
            policy,
            dirty: Mutex::new(HashSet::new()),
            any_dirty: AtomicBool::new(false),
            degraded: AtomicBool::new(false),
            fallbacks: AtomicU64::new(0),
            reaper_down: AtomicBool::new(false),
            clock,
            last_success: AtomicI64::new(i64::MIN),
            extended_from: AtomicI64::new(i64::MIN),
            last_resync: Mutex::new(None),
            follow_ups: Mutex::new(HashMap::new()),
        }
    }

    /// Heartbeats that went to the store because the cache failed.
    pub(crate) fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Whether the cache answered this process's last call.
    pub(crate) fn reachable(&self) -> bool {
        !self.degraded.load(Ordering::Relaxed)
    }

    fn succeeded(&self, now: DateTime<Utc>) {
        self.last_success
            .fetch_max(now.timestamp_micros(), Ordering::SeqCst);
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("lease cache (Dragonfly) reachable again; heartbeats renew there");
        }
    }

    fn failed(&self, tenant: &TenantId, error: &RegistryError) {
        self.mark_dirty(tenant);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cause = %error_chain(error),
                "lease cache (Dragonfly) unreachable; heartbeats go to PostgreSQL until it returns (logged once)"
            );
        }
    }

    fn mark_dirty(&self, tenant: &TenantId) {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.clone());
        self.any_dirty.store(true, Ordering::SeqCst);
    }

    /// Marks every dirty tenant not synced. Returns false if the cache
    /// still fails (the tenants stay dirty).
    pub(crate) async fn flush_dirty(&self) -> bool {
        if !self.any_dirty.load(Ordering::SeqCst) {
            return true;
        }
        let tenants: Vec<TenantId> = {
            let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
            self.any_dirty.store(false, Ordering::SeqCst);
            dirty.drain().collect()
        };
        let mut ok = true;
        for tenant in tenants {
            if let Err(error) = self.cache.unsync(&tenant).await {
                self.failed(&tenant, &error);
                ok = false;
            }
        }
        ok
    }

    /// The fast path: `Some` when the cache renewed the lease.
    pub(crate) async fn renew(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: &InstanceId,
        heartbeat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> Option<Instance> {
        if !self.flush_dirty().await {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match self
            .cache
            .renew(tenant, service, instance, heartbeat, now)
            .await
        {
            Ok(CacheRenewal::Renewed(instance)) => {
                self.succeeded(now);
                Some(instance)
            }
            Ok(CacheRenewal::Miss) => {
                self.succeeded(now);
                None
            }
            Err(error) => {
                self.failed(tenant, &error);
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Whether the cache holds the tenant's leases (`None` if it cannot say).
    pub(crate) async fn synced(&self, tenant: &TenantId) -> Option<bool> {
        self.cache.synced(tenant).await.ok()
    }

    /// Writes what the store just wrote through to the cache.
    pub(crate) async fn put(&self, instance: &Instance) {
        if let Err(error) = self.cache.put(instance).await {
            self.failed(instance.tenant_id(), &error);
        }
    }

    /// Forgets removed instances in the cache.
    pub(crate) async fn forget(&self, tenant: &TenantId, removed: &[Instance]) {
        if removed.is_empty() {
            return;
        }
        let keys: Vec<(ServiceName, InstanceId)> = removed
            .iter()
            .map(|i| (i.service_name().clone(), i.instance_id().clone()))
            .collect();
        if let Err(error) = self.cache.forget(tenant, &keys).await {
            self.failed(tenant, &error);
        }
    }

    /// One reaper pass: from the cache when it answers, else from the store.
    pub(crate) async fn reap(
        &self,
        registry_store: &dyn RegistryStore,
        now: DateTime<Utc>,
    ) -> Result<Vec<LeaseChange>, RegistryError> {
        // Each replica un-syncs its own dirty tenants, reaper or not.
        self.flush_dirty().await;
        let Some(turn) = self.store.reaper_turn().await? else {
            return Ok(Vec::new());
        };
        let tenants = self.store.tenants().await?;
        let recovering = self.reaper_down.load(Ordering::SeqCst);
        let resync = {
            let last = self
                .last_resync
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            last.is_none_or(|t| t + RESYNC <= now)
        };
        let mut changes = Vec::new();
        let mut cache_error = None;
        let mut store_errors = 0usize;
        for tenant in &tenants {
            match self.reap_tenant(tenant, now, recovering, resync).await {
                Ok(tenant_changes) => changes.extend(tenant_changes),
                Err(TenantFailure::Cache(error)) => {
                    cache_error = Some(error);
                    break;
                }
                Err(TenantFailure::Store(error)) => {
                    store_errors += 1;
                    tracing::error!(
                        tenant = %tenant,
                        cause = %error_chain(&error),
                        "lease expiry failed for this tenant; skipped until the next pass"
                    );
                }
            }
        }
        if let Some(error) = cache_error {
            // The store's own expiry takes the reaper's turn itself.
            drop(turn);
            return self.fall_back(registry_store, now, &error, changes).await;
        }
        if recovering {
            self.reaper_down.store(false, Ordering::SeqCst);
            tracing::info!(
                tenants = tenants.len(),
                "lease cache (Dragonfly) back: every tenant refilled from PostgreSQL; the reaper judges from it again"
            );
        }
        if resync {
            *self
                .last_resync
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(now);
        }
        if store_errors > 0 && store_errors == tenants.len() {
            return Err(RegistryError::Unavailable {
                component: "store",
                source: "lease expiry failed for every tenant".into(),
            });
        }
        Ok(changes)
    }

    async fn fall_back(
        &self,
        registry_store: &dyn RegistryStore,
        now: DateTime<Utc>,
        error: &RegistryError,
        mut changes: Vec<LeaseChange>,
    ) -> Result<Vec<LeaseChange>, RegistryError> {
        // Leases renewed only in the cache are older in the store: they
        // must not run out because the cache went away. They are extended
        // when the fallback starts, and again if this process saw the cache
        // renew anything since the last extension (a pass that failed on a
        // slow cache may have extended from a time before those renewals).
        let floor = self.clock.now();
        let renewed_since =
            self.last_success.load(Ordering::SeqCst) >= self.extended_from.load(Ordering::SeqCst);
        if !self.reaper_down.load(Ordering::SeqCst) || renewed_since {
            if !self.reaper_down.load(Ordering::SeqCst) {
                tracing::warn!(
                    cause = %error_chain(error),
                    "lease cache (Dragonfly) unreachable: the reaper expires leases from PostgreSQL until it returns, after giving every instance one ttl of grace"
                );
            }
            self.store.extend_leases(floor).await?;
            self.extended_from
                .store(floor.timestamp_micros(), Ordering::SeqCst);
            self.reaper_down.store(true, Ordering::SeqCst);
        }
        changes.extend(registry_store.expire_leases(now).await?);
        Ok(changes)
    }

    async fn reap_tenant(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
        recovering: bool,
        resync: bool,
    ) -> Result<Vec<LeaseChange>, TenantFailure> {
        let synced = self
            .cache
            .synced(tenant)
            .await
            .map_err(TenantFailure::Cache)?;
        let follow_up = self
            .follow_ups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tenant);
        if recovering || !synced || resync || follow_up.is_some() {
            let instances = self
                .store
                .instances(tenant)
                .await
                .map_err(TenantFailure::Store)?;
            let replace = recovering || !synced;
            let floor = match follow_up {
                Some(floor) if !replace => floor,
                _ => now,
            };
            self.cache
                .refill(tenant, &instances, floor, replace)
                .await
                .map_err(TenantFailure::Cache)?;
            if replace {
                self.follow_ups
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(tenant.clone(), now);
            }
            // Rows that cannot be read never enter the cache: the store
            // expires them by its own rule, at each reconciliation.
            self.store
                .expire_unreadable(tenant, now, &ChangeContext::reaper())
                .await
                .map_err(TenantFailure::Store)?;
            if replace {
                // A refilled tenant gets its grace: nothing of it is due now.
                return Ok(Vec::new());
            }
        }
        let due = self
            .cache
            .due(tenant, now)
            .await
            .map_err(TenantFailure::Cache)?;
        if due.leases.is_empty() {
            return Ok(Vec::new());
        }
        let (judged, hold) = judge(&due, now, &self.policy, tenant);
        // Claim first: once marked critical in the cache, the instance's
        // next heartbeat goes to the store, where the expiry below is
        // conditional on the stored lease (a heartbeat in between wins).
        let to_mark: Vec<CachedLease> = judged
            .iter()
            .filter(|j| j.lease.status != HealthStatus::Critical)
            .map(|j| j.lease.clone())
            .collect();
        let marked = if to_mark.is_empty() {
            Vec::new()
        } else {
            self.cache
                .mark_critical(tenant, &to_mark)
                .await
                .map_err(TenantFailure::Cache)?
        };
        let judged: Vec<_> = judged
            .into_iter()
            .filter(|j| j.lease.status == HealthStatus::Critical || marked.contains(&j.lease))
            .collect();
        let mut changes = if judged.is_empty() {
            Vec::new()
        } else {
            self.store
                .expire_judged(tenant, &judged, now, &ChangeContext::reaper())
                .await
                .map_err(TenantFailure::Store)?
        };
        for change in &changes {
            if let LeaseChange::Expired { instance, .. } = change {
                self.put(instance).await;
            }
        }
        let removed: Vec<CachedLease> = judged
            .iter()
            .filter(|j| j.remove)
            .map(|j| j.lease.clone())
            .collect();
        if !removed.is_empty() {
            self.cache
                .forget_unrenewed(tenant, &removed)
                .await
                .map_err(TenantFailure::Cache)?;
        }
        if let Some(hold) = hold {
            changes.push(LeaseChange::Held(hold));
        }
        Ok(changes)
    }

    /// One metrics sampling pass: every tenant's latest metrics (at most one
    /// per instance per `every`) written to the store. Returns how many.
    /// The latest metrics in the cache not yet sampled into the store
    /// (none when the cache cannot be asked: the dashboard then shows the
    /// store's latest sample).
    pub(crate) async fn peek_metrics(&self, tenant: &TenantId) -> Vec<MetricSample> {
        match self.cache.peek_metrics(tenant).await {
            Ok(samples) => samples,
            Err(error) => {
                tracing::debug!(tenant = %tenant, cause = %error_chain(&error), "cached heartbeat metrics not read; the dashboard shows the stored ones");
                Vec::new()
            }
        }
    }

    pub(crate) async fn sample_metrics(
        &self,
        now: DateTime<Utc>,
        every: Duration,
    ) -> Result<usize, RegistryError> {
        let mut written = 0;
        for tenant in self.store.tenants().await? {
            let samples: Vec<MetricSample> = self.cache.take_metrics(&tenant, now, every).await?;
            if samples.is_empty() {
                continue;
            }
            if let Err(error) = self.store.record_metrics(&tenant, &samples).await {
                tracing::warn!(
                    tenant = %tenant,
                    count = samples.len(),
                    cause = %error_chain(&error),
                    "heartbeat metrics sample not written; the next sample replaces it"
                );
                continue;
            }
            written += samples.len();
        }
        Ok(written)
    }
}
