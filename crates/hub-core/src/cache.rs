//! `CachedStore`: a `RegistryStore` decorator that answers repeated service lookups from memory for a short time.
//!
//! Lookups of one service are by far the most frequent request of a registry
//! and, on PostgreSQL, each costs a transaction. This decorator keeps the
//! answer of [`RegistryStore::service`] for at most `ttl` (DESIGN.md allows a
//! change to take up to 1 s to reach every replica). Every change made through
//! this process drops the entries it affects at once, so a client reads its
//! own writes; changes made through another replica show within `ttl`.
//!
//! A lookup that was already reading from the store when a change dropped its
//! entry must not put its older answer back: every change bumps an epoch, and
//! an answer is only kept if no change happened while it was being read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    Clock, LeaseChange, ListPage, RegistryStore, Removed, Renewed, ServiceSnapshot, Upserted,
};

/// Entries kept before the cache is emptied and refilled; bounds memory to a
/// few thousand service answers.
const CAPACITY: usize = 10_000;

type Key = (TenantId, ServiceName);

/// A store whose service lookups are cached for a short time.
pub struct CachedStore {
    inner: Arc<dyn RegistryStore>,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    entries: RwLock<HashMap<Key, (DateTime<Utc>, ServiceSnapshot)>>,
    epoch: AtomicU64,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CachedStore {
    /// Caches `inner`'s service lookups for `ttl`, timed by `clock`.
    pub fn new(inner: Arc<dyn RegistryStore>, clock: Arc<dyn Clock>, ttl: Duration) -> Self {
        Self {
            inner,
            clock,
            ttl,
            entries: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        }
    }

    /// Drops the cached answer for one service: for changes this process
    /// learns of from elsewhere (another replica, through the bus).
    pub fn forget(&self, tenant: &TenantId, service: &ServiceName) {
        // Bump first: a lookup in flight must see the change and not store.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(tenant.clone(), service.clone()));
    }
}

#[async_trait]
impl RegistryStore for CachedStore {
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
    ) -> Result<Upserted, RegistryError> {
        let service = registration.service_name().clone();
        let result = self.inner.upsert(tenant, registration, now, context).await;
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
        let key = (tenant.clone(), service.clone());
        if let Some((at, snapshot)) = self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            && now < *at + self.ttl
        {
            return Ok(snapshot.clone());
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let snapshot = self.inner.service(tenant, service).await?;
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(Ordering::SeqCst) == epoch {
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(key, (now, snapshot.clone()));
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
            Err(_) => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.entries
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
            }
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

    fn world() -> World {
        let backing = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::default());
        let cached = CachedStore::new(backing.clone(), clock.clone(), Duration::milliseconds(500));
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
            .upsert(&t, registration("svc", "a", 1), now, &ctx)
            .await
            .unwrap();
        assert_eq!(port_of(&w.cached.service(&t, &svc).await.unwrap()), 1);

        // A change through this store: visible on the next lookup.
        w.cached
            .upsert(&t, registration("svc", "a", 2), now, &ctx)
            .await
            .unwrap();
        assert_eq!(port_of(&w.cached.service(&t, &svc).await.unwrap()), 2);

        // A change behind its back (another replica): served stale until the ttl.
        w.backing
            .upsert(&t, registration("svc", "a", 3), now, &ctx)
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
            .upsert(&t, registration("svc", "a", 4), now, &ctx)
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
                .upsert(&t, registration("svc", "a", port), now, &ctx)
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
        ) -> Result<Upserted, RegistryError> {
            self.inner.upsert(t, r, now, c).await
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
        let cached = Arc::new(CachedStore::new(
            gated.clone(),
            clock.clone(),
            Duration::seconds(60),
        ));
        let t = TenantId::parse("t1").unwrap();
        let svc = ServiceName::parse("svc").unwrap();
        let ctx = ChangeContext::default();
        let now = clock.now();
        gated
            .inner
            .upsert(&t, registration("svc", "a", 1), now, &ctx)
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
            .upsert(&t, registration("svc", "a", 2), now, &ctx)
            .await
            .unwrap();
        gated.gate.add_permits(10);
        assert_eq!(port_of(&slow.await.unwrap().unwrap()), 1);
        // The overtaken answer was not kept: the next lookup sees the change.
        assert_eq!(port_of(&cached.service(&t, &svc).await.unwrap()), 2);
    }
}
