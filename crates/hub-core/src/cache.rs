//! `CachedStore`: a `RegistryStore` decorator that answers repeated service lookups from memory, until the service changes or for a short time.
//!
//! Lookups of one service are by far the most frequent request of a registry
//! and, on PostgreSQL, each costs a transaction. This decorator keeps the
//! answer of [`RegistryStore::service`] in one of two modes:
//!
//! - **Listening** (the replica's change listener is connected, see
//!   [`CachedStore::set_listening`]): every change of any replica reaches this
//!   process as a notification and drops its entry ([`CachedStore::forget`]),
//!   so an answer is kept until its service changes, bounded only by a long
//!   safety TTL (`listen_ttl`).
//! - **Not listening**: changes of other replicas may go unnoticed, so an
//!   answer is kept at most `ttl` (DESIGN.md allows a change to take up to
//!   1 s to reach every replica).
//!
//! Every change made through this process drops the entries it affects at
//! once, in both modes, so a client reads its own writes. Switching mode (the
//! listener connects, or loses its connection) drops every entry: while no
//! one listened, changes may have been missed.
//!
//! **Invariant:** a lookup that was reading from the store when its entry was
//! dropped does not put its older answer back. Before reading, a miss leaves a
//! `Reading` marker with a token of its own in the entry's place; dropping the
//! entry (or everything) removes the marker, and the answer is kept only if
//! the lookup's own marker is still there when it arrives. This is per
//! service: a stream of changes to other services (heartbeats of a large
//! registry) does not keep misses from being cached, as one global epoch
//! would.
//!
//! Entries are held per tenant, then per service, so that the hit path looks
//! up borrowed ids without building a key. When `capacity` entries are held,
//! a sixteenth of them is evicted (expired ones first), never all at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::domain::context::ChangeContext;
use crate::domain::ids::{InstanceId, ServiceName, TenantId};
use crate::domain::query::{Heartbeat, ListQuery};
use crate::domain::registration::Registration;
use crate::domain::summary::{ServiceSummary, StatusCounts};
use crate::error::RegistryError;
use crate::ports::{
    Clock, LeaseChange, ListPage, RegistryStore, Removed, Renewed, ServiceSnapshot, StoreFigures,
    Upserted,
};

/// How long answers are kept, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// How long an answer is kept while no change listener is connected
    /// (`HUB_LOOKUP_CACHE_MS`).
    pub ttl: Duration,
    /// How long an answer is kept while the change listener is connected
    /// (`HUB_LOOKUP_CACHE_LISTEN_MS`): a safety bound, should a notification
    /// ever be lost without the connection being lost.
    pub listen_ttl: Duration,
    /// Services whose answers are held at most (`HUB_LOOKUP_CACHE_ENTRIES`).
    pub capacity: usize,
}

/// What the cache has done since it was built, and what it holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from memory.
    pub hits: u64,
    /// Lookups that went to the store.
    pub misses: u64,
    /// Entries dropped one by one because their service changed (here or,
    /// by notification, elsewhere), counted whether or not one was held.
    pub invalidations: u64,
    /// Times every entry was dropped (the listener connected or was lost,
    /// an undecodable notification, a failed lease pass).
    pub flushes: u64,
    /// Entries evicted to stay within the capacity.
    pub evictions: u64,
    /// Entries held now (answers and lookups in flight).
    pub entries: usize,
    /// Whether the change listener is connected.
    pub listening: bool,
}

/// One service's place in the cache.
enum Slot {
    /// A lookup with this token is reading from the store.
    Reading(u64),
    /// The answer read at `at`.
    Ready {
        at: DateTime<Utc>,
        snapshot: ServiceSnapshot,
    },
}

/// The entries, per tenant then per service, and how many there are.
#[derive(Default)]
struct Entries {
    tenants: HashMap<TenantId, HashMap<ServiceName, Slot>>,
    len: usize,
}

impl Entries {
    fn get(&self, tenant: &TenantId, service: &ServiceName) -> Option<&Slot> {
        self.tenants.get(tenant)?.get(service)
    }

    fn remove(&mut self, tenant: &TenantId, service: &ServiceName) {
        if let Some(services) = self.tenants.get_mut(tenant)
            && services.remove(service).is_some()
        {
            self.len -= 1;
            if services.is_empty() {
                self.tenants.remove(tenant);
            }
        }
    }

    fn clear(&mut self) {
        self.tenants.clear();
        self.len = 0;
    }

    /// Puts `slot` in the service's place; a new place is made room for
    /// first when `capacity` are taken. Returns how many were evicted.
    fn put(
        &mut self,
        tenant: &TenantId,
        service: &ServiceName,
        slot: Slot,
        capacity: usize,
        expired: impl Fn(&DateTime<Utc>) -> bool,
    ) -> usize {
        let is_new = self.get(tenant, service).is_none();
        let evicted = if is_new && self.len >= capacity {
            self.evict((capacity / 16).max(1), expired)
        } else {
            0
        };
        let services = match self.tenants.get_mut(tenant) {
            Some(services) => services,
            None => self.tenants.entry(tenant.clone()).or_default(),
        };
        if services.insert(service.clone(), slot).is_none() {
            self.len += 1;
        }
        evicted
    }

    /// Removes `count` entries: expired answers first, then any (lookups in
    /// flight then simply do not keep their answer).
    fn evict(&mut self, count: usize, expired: impl Fn(&DateTime<Utc>) -> bool) -> usize {
        let mut left = count;
        for pass in [true, false] {
            for services in self.tenants.values_mut() {
                if left == 0 {
                    break;
                }
                services.retain(|_, slot| {
                    let doomed = left > 0
                        && (!pass || matches!(slot, Slot::Ready { at, .. } if expired(at)));
                    if doomed {
                        left -= 1;
                    }
                    !doomed
                });
            }
        }
        self.tenants.retain(|_, services| !services.is_empty());
        let evicted = count - left;
        self.len -= evicted;
        evicted
    }
}

/// A store whose service lookups are cached (see the module documentation).
pub struct CachedStore {
    inner: Arc<dyn RegistryStore>,
    clock: Arc<dyn Clock>,
    limits: CacheLimits,
    listening: AtomicBool,
    // A read-write lock: hits (nearly every lookup) only read, and share it.
    entries: RwLock<Entries>,
    tokens: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("limits", &self.limits)
            .field("listening", &self.is_listening())
            .finish_non_exhaustive()
    }
}

impl CachedStore {
    /// Caches `inner`'s service lookups within `limits`, timed by `clock`;
    /// not listening until told otherwise.
    pub fn new(inner: Arc<dyn RegistryStore>, clock: Arc<dyn Clock>, limits: CacheLimits) -> Self {
        Self {
            inner,
            clock,
            limits,
            listening: AtomicBool::new(false),
            entries: RwLock::new(Entries::default()),
            tokens: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Drops the cached answer for one service: for changes this process
    /// learns of from elsewhere (a notification, another replica's event).
    pub fn forget(&self, tenant: &TenantId, service: &ServiceName) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        // Most notifications are of services not held here (heartbeats of
        // a large registry): those need no write lock. A lookup that leaves
        // its marker after this check reads the store after the change.
        if self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant, service)
            .is_none()
        {
            return;
        }
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tenant, service);
    }

    /// Drops every cached answer, and every lookup in flight keeps its
    /// answer to itself: for when changes may have been missed.
    pub fn forget_all(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Says whether every change now reaches [`Self::forget`] (the change
    /// listener connected: `true`; lost: `false`), and drops everything
    /// either way: changes made while no one listened may have been missed,
    /// and answers kept under the long TTL must not outlive the listener.
    /// Call it with `true` only once the listener listens, so that every
    /// change committed after the call is notified.
    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::SeqCst);
        self.forget_all();
    }

    /// Whether answers are currently kept until their service changes.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// The counters and the current state.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: self
                .entries
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len,
            listening: self.is_listening(),
        }
    }

    /// How long an answer is kept in the current mode.
    fn ttl(&self) -> Duration {
        if self.listening.load(Ordering::Relaxed) {
            self.limits.listen_ttl
        } else {
            self.limits.ttl
        }
    }
}

#[async_trait]
impl RegistryStore for CachedStore {
    fn figures(&self) -> StoreFigures {
        StoreFigures {
            lookup_cache: Some(self.stats()),
            ..self.inner.figures()
        }
    }

    fn changed_elsewhere(&self, tenant: &TenantId, service: &ServiceName) {
        self.forget(tenant, service);
        self.inner.changed_elsewhere(tenant, service);
    }

    async fn upsert(
        &self,
        tenant: &TenantId,
        registration: Registration,
        now: DateTime<Utc>,
        context: &ChangeContext,
        max_instances: Option<u32>,
    ) -> Result<Upserted, RegistryError> {
        let service = registration.service_name().clone();
        let result = self
            .inner
            .upsert(tenant, registration, now, context, max_instances)
            .await;
        // Dropped whatever the outcome: a failed write may still have landed.
        self.forget(tenant, &service);
        result
    }

    async fn service(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
    ) -> Result<ServiceSnapshot, RegistryError> {
        let now = self.clock.now();
        let ttl = self.ttl();
        if let Some(Slot::Ready { at, snapshot }) = self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant, service)
            && now < *at + ttl
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(snapshot.clone());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let expired = |at: &DateTime<Utc>| now >= *at + ttl;
        let evicted = self
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .put(
                tenant,
                service,
                Slot::Reading(token),
                self.limits.capacity,
                expired,
            );
        if evicted > 0 {
            self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
        }
        let snapshot = match self.inner.service(tenant, service).await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
                if matches!(entries.get(tenant, service), Some(Slot::Reading(t)) if *t == token) {
                    entries.remove(tenant, service);
                }
                return Err(error);
            }
        };
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = entries
            .tenants
            .get_mut(tenant)
            .and_then(|services| services.get_mut(service))
            && matches!(slot, Slot::Reading(t) if *t == token)
        {
            *slot = Slot::Ready {
                at: now,
                snapshot: snapshot.clone(),
            };
        }
        Ok(snapshot)
    }

    async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<ListPage, RegistryError> {
        self.inner.list(tenant, query).await
    }

    async fn remove(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: Option<&InstanceId>,
        context: &ChangeContext,
    ) -> Result<Removed, RegistryError> {
        let result = self.inner.remove(tenant, service, instance, context).await;
        self.forget(tenant, service);
        result
    }

    async fn renew(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: &InstanceId,
        heartbeat: &Heartbeat,
        now: DateTime<Utc>,
        context: &ChangeContext,
    ) -> Result<Renewed, RegistryError> {
        let result = self
            .inner
            .renew(tenant, service, instance, heartbeat, now, context)
            .await;
        self.forget(tenant, service);
        result
    }

    async fn expire_leases(&self, now: DateTime<Utc>) -> Result<Vec<LeaseChange>, RegistryError> {
        let result = self.inner.expire_leases(now).await;
        match &result {
            Ok(changes) => {
                for change in changes {
                    let instance = match change {
                        LeaseChange::Expired { instance, .. } | LeaseChange::Removed(instance) => {
                            instance
                        }
                        LeaseChange::Held(_) => continue,
                    };
                    self.forget(instance.tenant_id(), instance.service_name());
                }
            }
            // What a failed pass changed is unknown: forget everything.
            Err(_) => self.forget_all(),
        }
        result
    }

    async fn check(&self) -> Result<(), RegistryError> {
        self.inner.check().await
    }

    // Dashboard reads go to the store: they are rare, and a count must not
    // lag behind the lookups' own cache.
    async fn tenant_ids(&self) -> Result<Vec<TenantId>, RegistryError> {
        self.inner.tenant_ids().await
    }

    async fn status_counts(&self, tenant: &TenantId) -> Result<StatusCounts, RegistryError> {
        self.inner.status_counts(tenant).await
    }

    async fn service_summaries(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<ServiceSummary>, RegistryError> {
        self.inner.service_summaries(tenant).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::registration::RegistrationInput;
    use crate::memory::{ManualClock, MemoryStore};

    fn registration(service: &str, instance: &str, port: i64) -> Registration {
        Registration::try_from(RegistrationInput {
            service_name: service.into(),
            instance_id: Some(instance.into()),
            host: "h".into(),
            port,
            ttl_seconds: Some(10),
            ..Default::default()
        })
        .unwrap()
    }

    struct World {
        backing: Arc<MemoryStore>,
        cached: CachedStore,
        clock: Arc<ManualClock>,
    }

    fn limits(capacity: usize) -> CacheLimits {
        CacheLimits {
            ttl: Duration::milliseconds(500),
            listen_ttl: Duration::seconds(60),
            capacity,
        }
    }

    fn world() -> World {
        world_of(10_000)
    }

    fn world_of(capacity: usize) -> World {
        let backing = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::default());
        let cached = CachedStore::new(backing.clone(), clock.clone(), limits(capacity));
        World {
            backing,
            cached,
            clock,
        }
    }

    fn port_of(snapshot: &ServiceSnapshot) -> u16 {
        snapshot.instances[0].port()
    }

    #[tokio::test]
    async fn own_changes_show_at_once_and_others_within_the_ttl() {
        let w = world();
        let t = TenantId::parse("t1").unwrap();
        let svc = ServiceName::parse("svc").unwrap();
        let ctx = ChangeContext::default();
        let now = w.clock.now();
        w.cached
            .upsert(&t, registration("svc", "a", 1), now, &ctx, None)
            .await
            .unwrap();
        assert_eq!(port_of(&w.cached.service(&t, &svc).await.unwrap()), 1);

        // A change through this store: visible on the next lookup.
        w.cached
            .upsert(&t, registration("svc", "a", 2), now, &ctx, None)
            .await
            .unwrap();
        assert_eq!(port_of(&w.cached.service(&t, &svc).await.unwrap()), 2);

        // A change behind its back (another replica): served stale until the ttl.
        w.backing
            .upsert(&t, registration("svc", "a", 3), now, &ctx, None)
            .await
            .unwrap();
        assert_eq!(port_of(&w.cached.service(&t, &svc).await.unwrap()), 2);
        w.clock.advance(Duration::milliseconds(499));
        assert_eq!(port_of(&w.cached.service(&t, &svc).await.unwrap()), 2);
        w.clock.advance(Duration::milliseconds(1));
        assert_eq!(port_of(&w.cached.service(&t, &svc).await.unwrap()), 3);

        // Removal, renewal and expiry drop the entry too.
        let removed = w.cached.remove(&t, &svc, None, &ctx).await.unwrap();
        assert_eq!(removed.instances.len(), 1);
        assert!(
            w.cached
                .service(&t, &svc)
                .await
                .unwrap()
                .instances
                .is_empty()
        );
        w.cached
            .upsert(&t, registration("svc", "a", 4), now, &ctx, None)
            .await
            .unwrap();
        assert_eq!(w.cached.service(&t, &svc).await.unwrap().instances.len(), 1);
        let later = w.clock.now() + Duration::seconds(11);
        assert_eq!(w.cached.expire_leases(later).await.unwrap().len(), 1);
        let after = w.cached.service(&t, &svc).await.unwrap();
        assert_eq!(after.instances[0].status(), crate::HealthStatus::Critical);
        let id = InstanceId::parse("a").unwrap();
        w.cached
            .renew(&t, &svc, &id, &Heartbeat::default(), later, &ctx)
            .await
            .unwrap();
        let renewed = w.cached.service(&t, &svc).await.unwrap();
        assert_eq!(renewed.instances[0].status(), crate::HealthStatus::Passing);
    }

    #[tokio::test]
    async fn entries_are_per_tenant() {
        let w = world();
        let svc = ServiceName::parse("svc").unwrap();
        let ctx = ChangeContext::default();
        let now = w.clock.now();
        for (tenant, port) in [("t1", 1), ("t2", 2)] {
            let t = TenantId::parse(tenant).unwrap();
            w.cached
                .upsert(&t, registration("svc", "a", port), now, &ctx, None)
                .await
                .unwrap();
            assert_eq!(
                port_of(&w.cached.service(&t, &svc).await.unwrap()),
                port as u16
            );
        }
        let t1 = TenantId::parse("t1").unwrap();
        assert_eq!(port_of(&w.cached.service(&t1, &svc).await.unwrap()), 1);
        let t3 = TenantId::parse("t3").unwrap();
        assert!(
            w.cached
                .service(&t3, &svc)
                .await
                .unwrap()
                .instances
                .is_empty()
        );
    }

    /// A store whose lookups read, then wait for the test to let them answer.
    struct Gated {
        inner: MemoryStore,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl RegistryStore for Gated {
        async fn upsert(
            &self,
            t: &TenantId,
            r: Registration,
            now: DateTime<Utc>,
            c: &ChangeContext,
            max: Option<u32>,
        ) -> Result<Upserted, RegistryError> {
            self.inner.upsert(t, r, now, c, max).await
        }
        async fn service(
            &self,
            t: &TenantId,
            s: &ServiceName,
        ) -> Result<ServiceSnapshot, RegistryError> {
            let snapshot = self.inner.service(t, s).await;
            let _permit = self.gate.acquire().await;
            snapshot
        }
        async fn list(&self, t: &TenantId, q: &ListQuery) -> Result<ListPage, RegistryError> {
            self.inner.list(t, q).await
        }
        async fn remove(
            &self,
            t: &TenantId,
            s: &ServiceName,
            i: Option<&InstanceId>,
            c: &ChangeContext,
        ) -> Result<Removed, RegistryError> {
            self.inner.remove(t, s, i, c).await
        }
        async fn renew(
            &self,
            t: &TenantId,
            s: &ServiceName,
            i: &InstanceId,
            h: &Heartbeat,
            now: DateTime<Utc>,
            c: &ChangeContext,
        ) -> Result<Renewed, RegistryError> {
            self.inner.renew(t, s, i, h, now, c).await
        }
        async fn expire_leases(
            &self,
            now: DateTime<Utc>,
        ) -> Result<Vec<LeaseChange>, RegistryError> {
            self.inner.expire_leases(now).await
        }
        async fn check(&self) -> Result<(), RegistryError> {
            Ok(())
        }
        async fn tenant_ids(&self) -> Result<Vec<TenantId>, RegistryError> {
            self.inner.tenant_ids().await
        }
        async fn status_counts(&self, t: &TenantId) -> Result<StatusCounts, RegistryError> {
            self.inner.status_counts(t).await
        }
        async fn service_summaries(
            &self,
            t: &TenantId,
        ) -> Result<Vec<ServiceSummary>, RegistryError> {
            self.inner.service_summaries(t).await
        }
    }

    #[tokio::test]
    async fn a_lookup_overtaken_by_a_change_does_not_keep_its_old_answer() {
        let clock = Arc::new(ManualClock::default());
        let gated = Arc::new(Gated {
            inner: MemoryStore::new(),
            gate: tokio::sync::Semaphore::new(0),
        });
        let cached = Arc::new(CachedStore::new(gated.clone(), clock.clone(), limits(100)));
        let t = TenantId::parse("t1").unwrap();
        let svc = ServiceName::parse("svc").unwrap();
        let ctx = ChangeContext::default();
        let now = clock.now();
        gated
            .inner
            .upsert(&t, registration("svc", "a", 1), now, &ctx, None)
            .await
            .unwrap();

        // A lookup reads port 1 and is held before answering...
        let slow = tokio::spawn({
            let (cached, t, svc) = (cached.clone(), t.clone(), svc.clone());
            async move { cached.service(&t, &svc).await }
        });
        tokio::task::yield_now().await;
        // ...while a change goes through.
        cached
            .upsert(&t, registration("svc", "a", 2), now, &ctx, None)
            .await
            .unwrap();
        gated.gate.add_permits(10);
        assert_eq!(port_of(&slow.await.unwrap().unwrap()), 1);
        // The overtaken answer was not kept: the next lookup sees the change.
        assert_eq!(port_of(&cached.service(&t, &svc).await.unwrap()), 2);
    }

    /// Registers `svc` (port `port`) for tenant `t1` behind the cache's back.
    async fn behind_its_back(w: &World, service: &str, port: i64) {
        let t = TenantId::parse("t1").unwrap();
        w.backing
            .upsert(
                &t,
                registration(service, "a", port),
                w.clock.now(),
                &ChangeContext::default(),
                None,
            )
            .await
            .unwrap();
    }

    async fn port_seen(w: &World, service: &str) -> u16 {
        let t = TenantId::parse("t1").unwrap();
        let svc = ServiceName::parse(service).unwrap();
        port_of(&w.cached.service(&t, &svc).await.unwrap())
    }

    #[tokio::test]
    async fn while_listening_an_answer_is_kept_until_its_service_is_notified() {
        let w = world();
        w.cached.set_listening(true);
        assert!(w.cached.is_listening());
        behind_its_back(&w, "svc", 1).await;
        assert_eq!(port_seen(&w, "svc").await, 1);
        behind_its_back(&w, "svc", 2).await;
        // Far past the short TTL, the answer is still the cached one...
        w.clock.advance(Duration::seconds(30));
        assert_eq!(port_seen(&w, "svc").await, 1);
        // ...until the notification of the change arrives.
        let t = TenantId::parse("t1").unwrap();
        w.cached.forget(&t, &ServiceName::parse("svc").unwrap());
        assert_eq!(port_seen(&w, "svc").await, 2);
        // The long TTL still bounds it, should a notification be lost.
        behind_its_back(&w, "svc", 3).await;
        w.clock.advance(Duration::seconds(59));
        assert_eq!(port_seen(&w, "svc").await, 2);
        w.clock.advance(Duration::seconds(1));
        assert_eq!(port_seen(&w, "svc").await, 3);
        let stats = w.cached.stats();
        assert_eq!((stats.hits, stats.misses), (2, 3));
        assert_eq!(stats.invalidations, 1);
        assert!(stats.listening);
    }

    #[tokio::test]
    async fn connecting_and_losing_the_listener_each_drop_every_entry() {
        let w = world();
        behind_its_back(&w, "svc", 1).await;
        behind_its_back(&w, "other", 1).await;
        assert_eq!(port_seen(&w, "svc").await, 1);
        assert_eq!(port_seen(&w, "other").await, 1);
        // Changes made before the listener connected were never notified.
        behind_its_back(&w, "svc", 2).await;
        behind_its_back(&w, "other", 2).await;
        w.cached.set_listening(true);
        assert_eq!(w.cached.stats().entries, 0);
        assert_eq!(port_seen(&w, "svc").await, 2);
        assert_eq!(port_seen(&w, "other").await, 2);
        // Lost: what changed meanwhile may never be notified; the short TTL
        // applies again.
        behind_its_back(&w, "svc", 3).await;
        w.cached.set_listening(false);
        assert!(!w.cached.is_listening());
        assert_eq!(port_seen(&w, "svc").await, 3);
        behind_its_back(&w, "svc", 4).await;
        w.clock.advance(Duration::milliseconds(499));
        assert_eq!(port_seen(&w, "svc").await, 3);
        w.clock.advance(Duration::milliseconds(1));
        assert_eq!(port_seen(&w, "svc").await, 4);
        assert_eq!(w.cached.stats().flushes, 2);
    }

    /// Starts a lookup of tenant `t1`'s `svc` through `cached` that reads
    /// `gated`, and waits until it holds its answer at the gate.
    async fn held_lookup(
        cached: &Arc<CachedStore>,
    ) -> tokio::task::JoinHandle<Result<ServiceSnapshot, RegistryError>> {
        let t = TenantId::parse("t1").unwrap();
        let svc = ServiceName::parse("svc").unwrap();
        let slow = tokio::spawn({
            let cached = cached.clone();
            async move { cached.service(&t, &svc).await }
        });
        // The lookup counts its miss before reading: wait for that.
        while cached.stats().misses == 0 {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        slow
    }

    fn gated_world() -> (Arc<Gated>, Arc<CachedStore>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let gated = Arc::new(Gated {
            inner: MemoryStore::new(),
            gate: tokio::sync::Semaphore::new(0),
        });
        let cached = Arc::new(CachedStore::new(gated.clone(), clock.clone(), limits(100)));
        (gated, cached, clock)
    }

    async fn gated_register(gated: &Gated, clock: &ManualClock, port: i64) {
        let t = TenantId::parse("t1").unwrap();
        gated
            .inner
            .upsert(
                &t,
                registration("svc", "a", port),
                clock.now(),
                &ChangeContext::default(),
                None,
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_lookup_in_flight_when_the_listener_is_lost_does_not_keep_its_answer() {
        let (gated, cached, clock) = gated_world();
        cached.set_listening(true);
        gated_register(&gated, &clock, 1).await;
        let slow = held_lookup(&cached).await;
        // The listener is lost while the lookup is out: the change made
        // meanwhile is never notified.
        cached.set_listening(false);
        gated_register(&gated, &clock, 2).await;
        gated.gate.add_permits(10);
        assert_eq!(port_of(&slow.await.unwrap().unwrap()), 1);
        let t = TenantId::parse("t1").unwrap();
        let svc = ServiceName::parse("svc").unwrap();
        assert_eq!(port_of(&cached.service(&t, &svc).await.unwrap()), 2);
    }

    #[tokio::test]
    async fn a_lookup_in_flight_keeps_its_answer_when_another_service_changes() {
        let (gated, cached, clock) = gated_world();
        cached.set_listening(true);
        gated_register(&gated, &clock, 1).await;
        let slow = held_lookup(&cached).await;
        let t = TenantId::parse("t1").unwrap();
        cached.forget(&t, &ServiceName::parse("other").unwrap());
        gated.gate.add_permits(10);
        assert_eq!(port_of(&slow.await.unwrap().unwrap()), 1);
        let svc = ServiceName::parse("svc").unwrap();
        assert_eq!(port_of(&cached.service(&t, &svc).await.unwrap()), 1);
        assert_eq!(cached.stats().hits, 1, "the answer was kept");
    }

    #[tokio::test]
    async fn a_full_cache_evicts_a_sixteenth_and_keeps_the_rest() {
        const CAPACITY: usize = 64;
        let w = world_of(CAPACITY);
        w.cached.set_listening(true);
        let t = TenantId::parse("t1").unwrap();
        let services: Vec<String> = (0..CAPACITY + 1).map(|i| format!("svc-{i}")).collect();
        for service in &services {
            behind_its_back(&w, service, 1).await;
        }
        for service in &services[..CAPACITY] {
            port_seen(&w, service).await;
        }
        assert_eq!(w.cached.stats().entries, CAPACITY);
        // One more: room is made by evicting a sixteenth, not everything.
        port_seen(&w, &services[CAPACITY]).await;
        let stats = w.cached.stats();
        assert_eq!(stats.evictions, (CAPACITY / 16) as u64);
        assert_eq!(stats.entries, CAPACITY - CAPACITY / 16 + 1);
        // The kept answers are still held (and so served from memory).
        let entries = w.cached.entries.read().unwrap();
        let held = services
            .iter()
            .filter(|s| {
                entries
                    .get(&t, &ServiceName::parse(s.as_str()).unwrap())
                    .is_some()
            })
            .count();
        assert_eq!(held, CAPACITY - CAPACITY / 16 + 1);
        let newest = ServiceName::parse(services[CAPACITY].as_str()).unwrap();
        assert!(entries.get(&t, &newest).is_some());
    }

    #[tokio::test]
    async fn eviction_takes_expired_answers_first() {
        const CAPACITY: usize = 32;
        let w = world_of(CAPACITY);
        let t = TenantId::parse("t1").unwrap();
        let services: Vec<String> = (0..CAPACITY + 1).map(|i| format!("svc-{i}")).collect();
        for service in &services {
            behind_its_back(&w, service, 1).await;
        }
        // Two answers expire (short TTL), the others are fresh.
        port_seen(&w, &services[0]).await;
        port_seen(&w, &services[1]).await;
        w.clock.advance(Duration::milliseconds(500));
        for service in &services[2..CAPACITY] {
            port_seen(&w, service).await;
        }
        port_seen(&w, &services[CAPACITY]).await;
        assert_eq!(w.cached.stats().evictions, 2);
        let misses = w.cached.stats().misses;
        for service in &services[2..] {
            let svc = ServiceName::parse(service.as_str()).unwrap();
            w.cached.service(&t, &svc).await.unwrap();
        }
        assert_eq!(w.cached.stats().misses, misses, "every fresh answer kept");
    }
}
