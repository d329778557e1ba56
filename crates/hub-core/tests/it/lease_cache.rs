//! The registry with a lease cache (`MemoryLeases` over `MemoryStore`): renewals that skip the store, the reaper judging from the cache, and every failure rule of `lease_sync` (down, lost, dirty, a store-side renewal winning).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use hub_core::memory::{InProcessBus, ManualClock, MemoryStore};
use hub_core::ports::{Clock, RegistryStore};
use hub_core::{
    ChangeContext, EventKind, HealthStatus, Heartbeat, MassExpiry, MemoryLeases, Registry,
};

use crate::support::{registration, service, tenant};

struct Cached {
    registry: Registry,
    store: Arc<MemoryStore>,
    cache: Arc<MemoryLeases>,
    clock: Arc<ManualClock>,
    bus: InProcessBus,
}

fn cached() -> Cached {
    let clock = Arc::new(ManualClock::new(
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap(),
    ));
    let bus = InProcessBus::new();
    let store = Arc::new(MemoryStore::new());
    let cache = Arc::new(MemoryLeases::new());
    let registry = Registry::new(store.clone(), Arc::new(bus.clone()), clock.clone())
        .with_lease_cache(cache.clone(), store.clone(), MassExpiry::default());
    Cached {
        registry,
        store,
        cache,
        clock,
        bus,
    }
}

fn passing() -> Heartbeat {
    Heartbeat::new(HealthStatus::Passing, None)
}

impl Cached {
    async fn beat(&self, svc: &str, id: &str) -> HealthStatus {
        let id = hub_core::InstanceId::parse(id).unwrap();
        self.registry
            .heartbeat(
                &tenant("t"),
                &service(svc),
                Some(&id),
                &passing(),
                &ChangeContext::default(),
            )
            .await
            .unwrap()
            .status()
    }

    /// The store's own record (what reads show).
    async fn stored(&self, svc: &str) -> Vec<(String, HealthStatus, DateTime<Utc>)> {
        self.store
            .service(&tenant("t"), &service(svc))
            .await
            .unwrap()
            .instances
            .iter()
            .map(|i| {
                (
                    i.instance_id().as_str().to_owned(),
                    i.status(),
                    i.lease_expires_at(),
                )
            })
            .collect()
    }

    async fn register(&self, svc: &str, id: &str) {
        self.registry
            .register(
                &tenant("t"),
                registration(svc, id, 10),
                &ChangeContext::default(),
            )
            .await
            .unwrap();
    }

    async fn pass(&self) -> hub_core::ExpiryReport {
        self.registry.expire_leases().await.unwrap()
    }
}

#[tokio::test]
async fn renewals_skip_the_store_once_synced_and_expiry_is_judged_from_the_cache() {
    let c = cached();
    let t0 = c.clock.now();
    c.register("svc", "a").await;
    c.register("svc", "b").await;
    // Not synced yet: a heartbeat goes to the store.
    c.clock.advance(Duration::seconds(1));
    c.beat("svc", "a").await;
    assert_eq!(c.stored("svc").await[0].2, t0 + Duration::seconds(11));
    assert_eq!(c.registry.lease_synced(&tenant("t")).await, Some(false));
    c.pass().await;
    assert_eq!(c.registry.lease_synced(&tenant("t")).await, Some(true));

    // Synced: renewals leave the store's lease where it was...
    for _ in 0..4 {
        c.clock.advance(Duration::seconds(5));
        assert_eq!(c.beat("svc", "a").await, HealthStatus::Passing);
        c.pass().await;
    }
    let stored = c.stored("svc").await;
    assert_eq!(
        stored[0].2,
        t0 + Duration::seconds(11),
        "the store was not touched"
    );
    // ...while the reaper, judging from the cache, keeps "a" alive and
    // expires "b" (silent since t0), with the judged lease written.
    assert_eq!(stored[0].1, HealthStatus::Passing);
    assert_eq!(stored[1].1, HealthStatus::Critical);
    assert_eq!(
        stored[1].2,
        t0 + Duration::seconds(11),
        "the lease as refilled at t0+1"
    );
    c.clock.advance(Duration::seconds(25));
    c.beat("svc", "a").await;
    let mut events = c.bus.subscribe();
    let report = c.pass().await;
    assert_eq!((report.expired, report.removed), (0, 1));
    assert_eq!(events.recv().await.unwrap().kind(), EventKind::Expired);
    assert_eq!(c.stored("svc").await.len(), 1);
}

#[tokio::test]
async fn a_heartbeat_that_reached_the_store_wins_over_the_judged_expiry() {
    let c = cached();
    c.register("svc", "a").await;
    c.pass().await;
    c.clock.advance(Duration::seconds(11));
    // A renewal that reached the store only (another replica fell back).
    c.store
        .renew(
            &tenant("t"),
            &service("svc"),
            &hub_core::InstanceId::parse("a").unwrap(),
            &passing(),
            c.clock.now(),
            &ChangeContext::default(),
        )
        .await
        .unwrap();
    let report = c.pass().await;
    assert_eq!(report.expired, 0, "the store's newer lease wins");
    assert_eq!(c.stored("svc").await[0].1, HealthStatus::Passing);
    // The cache marked it critical: the next heartbeat goes to the store
    // (it finds it passing) and puts the fresh lease back.
    assert_eq!(c.beat("svc", "a").await, HealthStatus::Passing);
    c.clock.advance(Duration::seconds(9));
    assert_eq!(c.pass().await.expired, 0);
}

#[tokio::test]
async fn a_cache_that_goes_down_falls_back_and_is_refilled_when_it_returns() {
    let c = cached();
    let t0 = c.clock.now();
    c.register("svc", "busy").await;
    c.register("svc", "quiet").await;
    c.pass().await;
    c.clock.advance(Duration::seconds(8));
    c.beat("svc", "busy").await;
    c.beat("svc", "quiet").await;
    // Down at t0+13: the store's leases (t0+10) ran out, the cache's not.
    c.cache.set_down(true);
    c.clock.advance(Duration::seconds(5));
    assert_eq!(c.beat("svc", "busy").await, HealthStatus::Passing);
    c.register("svc", "new").await;
    let status = c.registry.lease_status();
    assert_eq!((status.cache_reachable, status.fallbacks), (Some(false), 1));
    let report = c.pass().await;
    assert_eq!(
        report.expired, 0,
        "no lease expires because the cache went away"
    );
    let quiet = c.stored("svc").await[2].clone();
    assert_eq!(quiet.0, "quiet");
    assert_eq!(
        quiet.2,
        t0 + Duration::seconds(23),
        "one ttl of grace from the outage"
    );
    // While down the reaper expires from the store: quiet goes critical
    // after its grace.
    c.clock.advance(Duration::seconds(10));
    c.beat("svc", "busy").await;
    c.beat("svc", "new").await;
    assert_eq!(c.pass().await.expired, 1);

    // Back: the reaper refills every tenant (replacing stale entries) and
    // the cache serves renewals again.
    c.cache.set_down(false);
    c.pass().await;
    assert_eq!(c.registry.lease_synced(&tenant("t")).await, Some(true));
    let before = c.stored("svc").await;
    c.clock.advance(Duration::seconds(5));
    c.beat("svc", "busy").await;
    assert_eq!(c.stored("svc").await, before, "renewed in the cache only");
    // The quiet one is critical in the cache too: its heartbeat goes to
    // the store and revives it.
    assert_eq!(c.beat("svc", "quiet").await, HealthStatus::Passing);
    assert_eq!(c.stored("svc").await[2].1, HealthStatus::Passing);
}

#[tokio::test]
async fn a_cache_that_restarts_empty_expires_nothing_during_the_grace() {
    let c = cached();
    c.register("svc", "a").await;
    c.pass().await;
    for _ in 0..3 {
        c.clock.advance(Duration::seconds(5));
        c.beat("svc", "a").await;
    }
    // The store still says t0+10; it is t0+15. The cache loses everything.
    c.cache.clear();
    assert_eq!(c.registry.lease_synced(&tenant("t")).await, Some(false));
    let report = c.pass().await;
    assert_eq!(report.expired, 0, "refilled, not expired");
    // One ttl of grace from the refill.
    c.clock.advance(Duration::seconds(9));
    assert_eq!(c.pass().await.expired, 0);
    c.clock.advance(Duration::seconds(1));
    assert_eq!(c.pass().await.expired, 1);
}

#[tokio::test]
async fn a_failed_write_makes_the_tenant_unsynced_before_the_cache_serves_it_again() {
    let c = cached();
    c.register("svc", "a").await;
    c.pass().await;
    // The cache is down while the status changes in the store.
    c.cache.set_down(true);
    let id = hub_core::InstanceId::parse("a").unwrap();
    c.registry
        .heartbeat(
            &tenant("t"),
            &service("svc"),
            Some(&id),
            &Heartbeat::new(HealthStatus::Warning, None),
            &ChangeContext::default(),
        )
        .await
        .unwrap();
    c.cache.set_down(false);
    // The cache still says "passing": a passing heartbeat must not be
    // renewed there as if nothing had changed. It goes to the store, which
    // records the change back to passing.
    let mut events = c.bus.subscribe();
    assert_eq!(c.beat("svc", "a").await, HealthStatus::Passing);
    let event = events.recv().await.unwrap();
    assert_eq!(event.kind(), EventKind::StatusChanged);
    assert_eq!(c.stored("svc").await[0].1, HealthStatus::Passing);
}

#[tokio::test]
async fn renewals_in_the_cache_after_a_fallback_are_covered_when_it_fails_again() {
    let c = cached();
    c.register("svc", "a").await;
    c.pass().await;
    // A pass meets a failing cache: the stored leases are extended now.
    c.cache.set_down(true);
    assert_eq!(c.pass().await.expired, 0);
    // The cache answers again, but no pass runs before it fails once more;
    // in between, "a" was renewed there only.
    c.cache.set_down(false);
    c.clock.advance(Duration::seconds(8));
    c.beat("svc", "a").await;
    c.cache.set_down(true);
    c.clock.advance(Duration::seconds(5));
    // The store's lease (t0+10) ran out, the cache's (t0+18) did not: the
    // fallback extends again because of that renewal.
    assert_eq!(
        c.pass().await.expired,
        0,
        "a renewal in the cache must count"
    );
    assert_eq!(c.stored("svc").await[0].1, HealthStatus::Passing);
}
