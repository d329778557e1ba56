//! The `LeaseCache` contract, one suite run against both `MemoryLeases` and `DragonflyLeases` (on the machine's Redis), plus Dragonfly-only checks: key slots, an unreachable server, a forgotten script.
//!
//! Every case gets a fresh cache handle and fresh uuid tenants, so runs share
//! Redis without FLUSHALL. Times are the caller's, with microseconds, so an
//! adapter that rounds to milliseconds (or reads the server's clock) fails.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use hub_core::lease::{CacheRenewal, CachedLease, LeaseCache};
use hub_core::{
    HealthStatus, Heartbeat, HeartbeatMetrics, Instance, InstanceId, MemoryLeases, Registration,
    RegistrationInput, RegistryError, Revision, ServiceName, TenantId,
};
use hub_store::dragonfly::{CHUNK, DragonflyLeases};
use hub_store::testing::{self, RedisServer};

type Cache = Arc<dyn LeaseCache>;

/// A time with microseconds (and none below), far from any other test's.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_800_000_000_123_457).unwrap()
}

fn us(n: i64) -> Duration {
    Duration::microseconds(n)
}

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

fn fresh_tenant() -> TenantId {
    TenantId::parse(format!("ls-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn service() -> ServiceName {
    ServiceName::parse("billing").unwrap()
}

fn id(name: &str) -> InstanceId {
    InstanceId::parse(name).unwrap()
}

/// Instance `name` of `billing`, revision `rev`, renewed at `heartbeat`
/// with a 10 s ttl, registered an hour (and 7 µs) before t0.
fn instance(tenant: &TenantId, name: &str, rev: u64, heartbeat: DateTime<Utc>) -> Instance {
    let registration = Registration::try_from(RegistrationInput {
        service_name: "billing".into(),
        instance_id: Some(name.into()),
        host: "10.0.0.7".into(),
        port: 8080,
        tags: vec!["eu".into()],
        metadata: Some(serde_json::json!({"zone": "a", "weight": 0.1})),
        ttl_seconds: Some(10),
        ..Default::default()
    })
    .unwrap();
    Instance::restore(
        tenant.clone(),
        registration,
        HealthStatus::Passing,
        t0() - secs(3600) + us(7),
        heartbeat,
        heartbeat + secs(10),
        Revision::new(rev),
    )
}

fn with_lease(i: &Instance, expires: DateTime<Utc>) -> Instance {
    Instance::restore(
        i.tenant_id().clone(),
        i.registration().clone(),
        i.status(),
        i.registered_at(),
        i.last_heartbeat(),
        expires,
        i.revision(),
    )
}

fn passing() -> Heartbeat {
    Heartbeat::default()
}

fn metrics(rt: f64) -> HeartbeatMetrics {
    HeartbeatMetrics::new(Some(rt), Some(12.5), None, Some(0.01)).unwrap()
}

async fn renew(
    cache: &Cache,
    tenant: &TenantId,
    name: &str,
    hb: &Heartbeat,
    now: DateTime<Utc>,
) -> CacheRenewal {
    cache
        .renew(tenant, &service(), &id(name), hb, now)
        .await
        .unwrap()
}

/// Every cached lease of the tenant (due at the end of time), by instance.
async fn leases(cache: &Cache, tenant: &TenantId) -> Vec<CachedLease> {
    let far = t0() + secs(86_400 * 365);
    let mut due = cache.due(tenant, far).await.unwrap();
    assert_eq!(
        due.leases.len(),
        due.total,
        "every lease is due at the end of time"
    );
    due.leases.sort_by(|a, b| a.instance.cmp(&b.instance));
    due.leases
}

fn names(leases: &[CachedLease]) -> Vec<&str> {
    leases.iter().map(|l| l.instance.as_str()).collect()
}

// ---------------------------------------------------------------- the cases

async fn renew_misses_until_synced_and_for_unknown_or_changed_status(cache: Cache) {
    let tenant = fresh_tenant();
    let a = instance(&tenant, "a", 1, t0());
    cache.put(&a).await.unwrap();
    assert!(!cache.synced(&tenant).await.unwrap(), "put does not sync");
    assert_eq!(
        renew(&cache, &tenant, "a", &passing(), t0() + secs(1)).await,
        CacheRenewal::Miss,
        "not synced"
    );
    cache
        .refill(&tenant, std::slice::from_ref(&a), t0(), false)
        .await
        .unwrap();
    assert!(cache.synced(&tenant).await.unwrap());
    assert_eq!(
        renew(&cache, &tenant, "zz", &passing(), t0() + secs(1)).await,
        CacheRenewal::Miss,
        "unknown"
    );
    let warning = Heartbeat::new(HealthStatus::Warning, Some(metrics(1.0)));
    assert_eq!(
        renew(&cache, &tenant, "a", &warning, t0() + secs(1)).await,
        CacheRenewal::Miss,
        "status change"
    );
    assert_eq!(
        leases(&cache, &tenant).await,
        vec![CachedLease::of(&a)],
        "a miss changes nothing"
    );
    assert!(
        cache
            .take_metrics(&tenant, t0() + secs(2), secs(60))
            .await
            .unwrap()
            .is_empty(),
        "nor keeps metrics"
    );
    let at = t0() + secs(3);
    assert_eq!(
        renew(&cache, &tenant, "a", &passing(), at).await,
        CacheRenewal::Renewed(a.renewed(at, HealthStatus::Passing))
    );
}

async fn renew_returns_the_exact_lease(cache: Cache) {
    let tenant = fresh_tenant();
    let a = instance(&tenant, "a", 4, t0() + us(1));
    cache
        .refill(&tenant, std::slice::from_ref(&a), t0() - secs(100), false)
        .await
        .unwrap();
    assert_eq!(
        leases(&cache, &tenant).await,
        vec![CachedLease::of(&a)],
        "the stored lease, to the µs"
    );
    let at = t0() + secs(2) + us(999_999);
    let CacheRenewal::Renewed(renewed) = renew(&cache, &tenant, "a", &passing(), at).await else {
        panic!("a synced, known, unchanged instance renews");
    };
    assert_eq!(
        renewed,
        a.renewed(at, HealthStatus::Passing),
        "record, registered_at and revision kept"
    );
    assert_eq!(renewed.lease_expires_at(), at + secs(10));
    let due = cache.due(&tenant, at + secs(10) - us(1)).await.unwrap();
    assert!(
        due.leases.is_empty(),
        "one µs before its expiry the lease is not due: {due:?}"
    );
    let due = cache.due(&tenant, at + secs(10)).await.unwrap();
    assert_eq!(
        due.leases,
        vec![CachedLease::of(&renewed)],
        "due exactly at its expiry"
    );
}

/// Renewals of an unchanged instance may reuse a record the cache already
/// handed out; a change (new revision) must hand out the new record.
async fn a_changed_record_is_renewed_as_changed(cache: Cache) {
    let tenant = fresh_tenant();
    let a = instance(&tenant, "a", 4, t0());
    cache
        .refill(&tenant, std::slice::from_ref(&a), t0(), false)
        .await
        .unwrap();
    for n in 1..=3 {
        let at = t0() + secs(n);
        let CacheRenewal::Renewed(r) = renew(&cache, &tenant, "a", &passing(), at).await else {
            panic!("renews");
        };
        assert_eq!(r, a.renewed(at, HealthStatus::Passing));
    }
    // Re-registered elsewhere: revision 9, another host.
    let moved = Registration::try_from(RegistrationInput {
        service_name: "billing".into(),
        instance_id: Some("a".into()),
        host: "10.9.9.9".into(),
        port: 9090,
        ttl_seconds: Some(10),
        ..Default::default()
    })
    .unwrap();
    let b = Instance::restore(
        tenant.clone(),
        moved,
        HealthStatus::Passing,
        a.registered_at(),
        t0() + secs(4),
        t0() + secs(14),
        Revision::new(9),
    );
    cache.put(&b).await.unwrap();
    let at = t0() + secs(5);
    let CacheRenewal::Renewed(r) = renew(&cache, &tenant, "a", &passing(), at).await else {
        panic!("renews");
    };
    assert_eq!(r, b.renewed(at, HealthStatus::Passing));
    assert_eq!((r.host().as_str(), r.port()), ("10.9.9.9", 9090));
}

async fn put_ignores_older_revisions_and_never_moves_expiry_back(cache: Cache) {
    let tenant = fresh_tenant();
    let a5 = instance(&tenant, "a", 5, t0());
    cache.put(&a5).await.unwrap();
    let older = with_lease(&instance(&tenant, "a", 4, t0() + secs(50)), t0() + secs(60))
        .with_status(HealthStatus::Warning);
    cache.put(&older).await.unwrap();
    assert_eq!(
        leases(&cache, &tenant).await,
        vec![CachedLease::of(&a5)],
        "a lower revision is ignored"
    );
    cache
        .put(&with_lease(&a5, a5.lease_expires_at() - us(1)))
        .await
        .unwrap();
    assert_eq!(
        leases(&cache, &tenant).await,
        vec![CachedLease::of(&a5)],
        "same revision never moves back"
    );
    let later = with_lease(&a5, a5.lease_expires_at() + us(1)).with_status(HealthStatus::Warning);
    cache.put(&later).await.unwrap();
    assert_eq!(
        leases(&cache, &tenant).await,
        vec![CachedLease::of(&later)],
        "same revision moves forward"
    );
    let newer = with_lease(&instance(&tenant, "a", 6, t0() - secs(30)), t0() - secs(20));
    cache.put(&newer).await.unwrap();
    assert_eq!(
        leases(&cache, &tenant).await,
        vec![CachedLease::of(&newer)],
        "a higher revision always wins"
    );
}

async fn refill_with_floor_gives_grace(cache: Cache) {
    let tenant = fresh_tenant();
    let stale = instance(&tenant, "stale", 1, t0() - secs(100));
    let fresh = instance(&tenant, "fresh", 1, t0() + secs(5));
    let floor = t0();
    cache
        .refill(&tenant, &[stale.clone(), fresh.clone()], floor, true)
        .await
        .unwrap();
    assert!(
        cache
            .due(&tenant, floor + secs(10) - us(1))
            .await
            .unwrap()
            .leases
            .is_empty(),
        "one ttl of grace"
    );
    let due = cache.due(&tenant, floor + secs(10)).await.unwrap();
    assert_eq!(
        due.leases,
        vec![CachedLease::of(&with_lease(&stale, floor + secs(10)))]
    );
    assert_eq!(due.total, 2);
    let all = leases(&cache, &tenant).await;
    assert_eq!(
        all[0],
        CachedLease::of(&fresh),
        "a later lease than the floor is kept"
    );
}

async fn refill_reconciles_or_replaces(cache: Cache) {
    let tenant = fresh_tenant();
    // Cached: a (rev 1, renewed late), b (rev 3), c (gone from the store).
    let a1 = instance(&tenant, "a", 1, t0() + secs(30));
    let b3 = instance(&tenant, "b", 3, t0());
    let c1 = instance(&tenant, "c", 1, t0());
    cache
        .refill(&tenant, &[a1.clone(), b3.clone(), c1.clone()], t0(), false)
        .await
        .unwrap();
    let with_metrics = Heartbeat::new(HealthStatus::Passing, Some(metrics(3.0)));
    assert!(matches!(
        renew(&cache, &tenant, "c", &with_metrics, t0()).await,
        CacheRenewal::Renewed(_)
    ));
    // The store: a is newer (rev 2, warning, earlier lease), b is older
    // (rev 2), d is new with an old lease.
    let a2 = instance(&tenant, "a", 2, t0()).with_status(HealthStatus::Warning);
    let b2 = instance(&tenant, "b", 2, t0() + secs(40));
    let d1 = instance(&tenant, "d", 1, t0() - secs(100));
    let store = [a2.clone(), b2.clone(), d1.clone()];
    let floor = t0() + secs(1);
    cache.refill(&tenant, &store, floor, false).await.unwrap();
    assert!(cache.synced(&tenant).await.unwrap());
    let got = leases(&cache, &tenant).await;
    assert_eq!(names(&got), ["a", "b", "d"], "c dropped");
    assert_eq!(
        got[0],
        CachedLease::of(&with_lease(&a2, a1.lease_expires_at())),
        "newer record, later expiry kept"
    );
    assert_eq!(
        got[1],
        CachedLease::of(&b3),
        "an older store record does not replace the cache's"
    );
    assert_eq!(
        got[2],
        CachedLease::of(&with_lease(&d1, floor + secs(10))),
        "added with the floor"
    );
    assert!(
        cache
            .take_metrics(&tenant, t0() + secs(100), secs(1))
            .await
            .unwrap()
            .is_empty(),
        "a dropped instance's metrics go with it"
    );
    // Replace: the store's records as they are (floored), whatever the cache had.
    let b1 = instance(&tenant, "b", 1, t0() - secs(5));
    cache
        .refill(&tenant, std::slice::from_ref(&b1), floor, true)
        .await
        .unwrap();
    assert_eq!(
        leases(&cache, &tenant).await,
        vec![CachedLease::of(&with_lease(&b1, floor + secs(10)))]
    );
    assert!(cache.synced(&tenant).await.unwrap());
}

async fn refill_and_forget_many_in_chunks(cache: Cache) {
    let tenant = fresh_tenant();
    let many: Vec<Instance> = (0..CHUNK * 2 + 3)
        .map(|n| instance(&tenant, &format!("i{n:05}"), 1, t0()))
        .collect();
    cache.refill(&tenant, &many, t0(), true).await.unwrap();
    let due = cache.due(&tenant, t0() + secs(10)).await.unwrap();
    assert_eq!((due.leases.len(), due.total), (many.len(), many.len()));
    // The store lost all but the last CHUNK + 1: reconciling drops the rest.
    let kept = &many[CHUNK + 2..];
    cache.refill(&tenant, kept, t0(), false).await.unwrap();
    assert_eq!(cache.due(&tenant, t0()).await.unwrap().total, kept.len());
    let forget: Vec<_> = kept
        .iter()
        .map(|i| (i.service_name().clone(), i.instance_id().clone()))
        .collect();
    cache.forget(&tenant, &forget[1..]).await.unwrap();
    assert_eq!(
        names(&leases(&cache, &tenant).await),
        [kept[0].instance_id().as_str()]
    );
}

async fn due_lists_run_out_leases_and_counts_all(cache: Cache) {
    let tenant = fresh_tenant();
    assert_eq!(
        cache.due(&tenant, t0()).await.unwrap(),
        Default::default(),
        "an unknown tenant"
    );
    let is: Vec<Instance> = (0..3)
        .map(|n| instance(&tenant, &format!("i{n}"), 1, t0() + secs(n)))
        .collect();
    for i in &is {
        cache.put(i).await.unwrap();
    }
    let at = is[1].lease_expires_at();
    let mut due = cache.due(&tenant, at).await.unwrap();
    due.leases.sort_by(|a, b| a.instance.cmp(&b.instance));
    assert_eq!(
        due.leases,
        vec![CachedLease::of(&is[0]), CachedLease::of(&is[1])]
    );
    assert_eq!(due.total, 3);
    cache
        .forget(&tenant, &[(service(), id("i0"))])
        .await
        .unwrap();
    assert_eq!(cache.due(&tenant, at).await.unwrap().total, 2);
}

async fn mark_critical_loses_to_a_renewal(cache: Cache) {
    let tenant = fresh_tenant();
    let a = instance(&tenant, "a", 1, t0());
    let b = instance(&tenant, "b", 1, t0());
    cache
        .refill(&tenant, &[a.clone(), b.clone()], t0() - secs(100), false)
        .await
        .unwrap();
    let now = t0() + secs(10);
    let due = cache.due(&tenant, now).await.unwrap().leases;
    assert_eq!(due.len(), 2);
    // b heartbeats between the reaper's due and its mark.
    assert!(matches!(
        renew(&cache, &tenant, "b", &passing(), now + us(1)).await,
        CacheRenewal::Renewed(_)
    ));
    let marked = cache.mark_critical(&tenant, &due).await.unwrap();
    assert_eq!(
        marked,
        vec![CachedLease::of(&a)],
        "only the unrenewed lease is marked, as given"
    );
    let got = leases(&cache, &tenant).await;
    assert_eq!(got[0].status, HealthStatus::Critical);
    assert_eq!(
        got[0].expires_at,
        a.lease_expires_at(),
        "marking keeps the lease"
    );
    assert_eq!(got[1].status, HealthStatus::Passing);
    assert_eq!(
        renew(&cache, &tenant, "a", &passing(), now + secs(1)).await,
        CacheRenewal::Miss,
        "a goes to the store now"
    );
    assert!(cache.mark_critical(&tenant, &[]).await.unwrap().is_empty());
}

async fn forget_unrenewed_loses_to_a_renewal(cache: Cache) {
    let tenant = fresh_tenant();
    let a = instance(&tenant, "a", 1, t0());
    let b = instance(&tenant, "b", 1, t0());
    cache
        .refill(&tenant, &[a.clone(), b.clone()], t0() - secs(100), false)
        .await
        .unwrap();
    let now = t0() + secs(40);
    let due = cache.due(&tenant, now).await.unwrap().leases;
    assert!(matches!(
        renew(&cache, &tenant, "b", &passing(), now).await,
        CacheRenewal::Renewed(_)
    ));
    cache.forget_unrenewed(&tenant, &due).await.unwrap();
    let got = leases(&cache, &tenant).await;
    assert_eq!(names(&got), ["b"], "the renewed lease stays");
    assert_eq!(got[0].expires_at, now + secs(10));
}

async fn take_metrics_once_per_every_and_only_the_latest(cache: Cache) {
    let tenant = fresh_tenant();
    let is = [
        instance(&tenant, "a", 1, t0()),
        instance(&tenant, "b", 1, t0()),
    ];
    cache.refill(&tenant, &is, t0(), false).await.unwrap();
    let hb = |rt| Heartbeat::new(HealthStatus::Passing, Some(metrics(rt)));
    renew(&cache, &tenant, "a", &hb(1.5), t0() + secs(1)).await;
    renew(&cache, &tenant, "a", &hb(2.25), t0() + secs(2) + us(3)).await;
    renew(&cache, &tenant, "b", &passing(), t0() + secs(2)).await;
    let every = secs(60);
    let taken = cache
        .take_metrics(&tenant, t0() + secs(3), every)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "b reported none: {taken:?}");
    assert_eq!(
        (
            taken[0].instance.as_str(),
            taken[0].status,
            taken[0].metrics,
            taken[0].recorded_at
        ),
        (
            "a",
            HealthStatus::Passing,
            metrics(2.25),
            t0() + secs(2) + us(3)
        ),
        "the latest only"
    );
    assert!(
        cache
            .take_metrics(&tenant, t0() + secs(4), every)
            .await
            .unwrap()
            .is_empty(),
        "taken"
    );
    renew(&cache, &tenant, "a", &hb(7.0), t0() + secs(5)).await;
    assert!(
        cache
            .take_metrics(&tenant, t0() + secs(62), every)
            .await
            .unwrap()
            .is_empty(),
        "not again within `every`, whoever asks"
    );
    let taken = cache
        .take_metrics(&tenant, t0() + secs(63), every)
        .await
        .unwrap();
    assert_eq!(
        taken.iter().map(|s| s.metrics).collect::<Vec<_>>(),
        vec![metrics(7.0)]
    );
}

async fn unsync_makes_renew_miss(cache: Cache) {
    let tenant = fresh_tenant();
    let a = instance(&tenant, "a", 1, t0());
    cache
        .refill(&tenant, std::slice::from_ref(&a), t0(), false)
        .await
        .unwrap();
    assert!(matches!(
        renew(&cache, &tenant, "a", &passing(), t0()).await,
        CacheRenewal::Renewed(_)
    ));
    cache.unsync(&tenant).await.unwrap();
    assert!(!cache.synced(&tenant).await.unwrap());
    assert_eq!(
        renew(&cache, &tenant, "a", &passing(), t0() + secs(1)).await,
        CacheRenewal::Miss
    );
    assert_eq!(
        leases(&cache, &tenant).await.len(),
        1,
        "unsync keeps the leases"
    );
    cache
        .refill(&tenant, std::slice::from_ref(&a), t0(), false)
        .await
        .unwrap();
    assert!(matches!(
        renew(&cache, &tenant, "a", &passing(), t0() + secs(2)).await,
        CacheRenewal::Renewed(_)
    ));
}

async fn tenants_never_see_each_other(cache: Cache) {
    let (one, two) = (fresh_tenant(), fresh_tenant());
    let a = instance(&one, "a", 1, t0());
    cache
        .refill(&one, std::slice::from_ref(&a), t0(), false)
        .await
        .unwrap();
    assert!(!cache.synced(&two).await.unwrap());
    cache.refill(&two, &[], t0(), false).await.unwrap();
    assert_eq!(
        renew(&cache, &two, "a", &passing(), t0()).await,
        CacheRenewal::Miss,
        "same names, other tenant"
    );
    assert_eq!(
        cache.due(&two, t0() + secs(100)).await.unwrap(),
        Default::default()
    );
    assert!(
        cache
            .mark_critical(&two, &[CachedLease::of(&a)])
            .await
            .unwrap()
            .is_empty()
    );
    cache
        .forget_unrenewed(&two, &[CachedLease::of(&a)])
        .await
        .unwrap();
    cache.forget(&two, &[(service(), id("a"))]).await.unwrap();
    cache.unsync(&two).await.unwrap();
    assert!(cache.synced(&one).await.unwrap());
    assert_eq!(leases(&cache, &one).await, vec![CachedLease::of(&a)]);
}

async fn forget_drops_lease_and_metrics(cache: Cache) {
    let tenant = fresh_tenant();
    let a = instance(&tenant, "a", 1, t0());
    cache
        .refill(&tenant, std::slice::from_ref(&a), t0(), false)
        .await
        .unwrap();
    renew(
        &cache,
        &tenant,
        "a",
        &Heartbeat::new(HealthStatus::Passing, Some(metrics(1.0))),
        t0(),
    )
    .await;
    cache
        .forget(&tenant, &[(service(), id("a"))])
        .await
        .unwrap();
    assert!(leases(&cache, &tenant).await.is_empty());
    assert!(
        cache
            .take_metrics(&tenant, t0() + secs(1), secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        renew(&cache, &tenant, "a", &passing(), t0()).await,
        CacheRenewal::Miss
    );
}

// ---------------------------------------------------- both implementations

async fn dragonfly_cache() -> Option<Cache> {
    Some(Arc::new(DragonflyLeases::new(testing::dragonfly().await?)))
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(std::sync::Arc::new(hub_core::MemoryLeases::new())).await;
                }
            )*
        }
        mod dragonfly {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(cache) = super::dragonfly_cache().await else {
                        return;
                    };
                    super::$case(cache).await;
                }
            )*
        }
    };
}

contract!(
    renew_misses_until_synced_and_for_unknown_or_changed_status,
    renew_returns_the_exact_lease,
    a_changed_record_is_renewed_as_changed,
    put_ignores_older_revisions_and_never_moves_expiry_back,
    refill_with_floor_gives_grace,
    refill_reconciles_or_replaces,
    refill_and_forget_many_in_chunks,
    due_lists_run_out_leases_and_counts_all,
    mark_critical_loses_to_a_renewal,
    forget_unrenewed_loses_to_a_renewal,
    take_metrics_once_per_every_and_only_the_latest,
    unsync_makes_renew_miss,
    tenants_never_see_each_other,
    forget_drops_lease_and_metrics,
);

// ------------------------------------------------------- Dragonfly only

#[tokio::test]
async fn every_key_of_a_tenant_hashes_to_its_slot() {
    let Some(cache) = dragonfly_cache().await else {
        return;
    };
    let tenant = fresh_tenant();
    let a = instance(&tenant, "a", 1, t0());
    let b = instance(&tenant, "b", 1, t0());
    cache.put(&a).await.unwrap();
    cache
        .refill(&tenant, &[a.clone(), b.clone()], t0(), false)
        .await
        .unwrap();
    renew(
        &cache,
        &tenant,
        "a",
        &Heartbeat::new(HealthStatus::Passing, Some(metrics(1.0))),
        t0(),
    )
    .await;
    renew(
        &cache,
        &tenant,
        "b",
        &Heartbeat::new(HealthStatus::Passing, Some(metrics(1.0))),
        t0(),
    )
    .await;
    cache.take_metrics(&tenant, t0(), secs(1)).await.unwrap();
    renew(
        &cache,
        &tenant,
        "b",
        &Heartbeat::new(HealthStatus::Passing, Some(metrics(2.0))),
        t0(),
    )
    .await;
    // Every key that mentions the tenant anywhere, not only under its prefix.
    let (host, port) = testing::redis_addr();
    let out = std::process::Command::new("redis-cli")
        .args(["-h", &host, "-p", &port.to_string(), "--scan", "--pattern"])
        .arg(format!("*{}*", tenant.as_str()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut keys: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    let prefix = format!("hub:{{{}}}:lease:", tenant.as_str());
    let names: Vec<&str> = keys
        .iter()
        .map(|k| k.strip_prefix(&prefix).unwrap_or(k))
        .collect();
    assert_eq!(
        names,
        [
            "exp", "hb", "metrics", "rec", "rev", "status", "synced", "taken", "ttl"
        ],
        "every key the adapter writes, all under the tenant's prefix"
    );
    let slot = fred::util::redis_keyslot(tenant.as_str().as_bytes());
    for key in &keys {
        assert_eq!(fred::util::redis_keyslot(key.as_bytes()), slot, "{key}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_fast() {
    let mut server = RedisServer::start().await;
    let cache: Cache = Arc::new(DragonflyLeases::new(
        testing::dragonfly_on(server.port).await,
    ));
    let tenant = fresh_tenant();
    let a = instance(&tenant, "a", 1, t0());
    cache
        .refill(&tenant, std::slice::from_ref(&a), t0(), false)
        .await
        .unwrap();
    server.stop();
    let started = Instant::now();
    let unavailable = |r: Result<(), RegistryError>, what: &str| {
        assert!(
            matches!(
                r,
                Err(RegistryError::Unavailable {
                    component: "leases",
                    ..
                })
            ),
            "{what}: {r:?}"
        );
    };
    unavailable(renew_result(&cache, &tenant).await, "renew");
    unavailable(cache.put(&a).await, "put");
    unavailable(cache.synced(&tenant).await.map(drop), "synced");
    unavailable(cache.refill(&tenant, &[], t0(), true).await, "refill");
    unavailable(cache.due(&tenant, t0()).await.map(drop), "due");
    unavailable(
        cache
            .mark_critical(&tenant, &[CachedLease::of(&a)])
            .await
            .map(drop),
        "mark_critical",
    );
    unavailable(
        cache.take_metrics(&tenant, t0(), secs(1)).await.map(drop),
        "take_metrics",
    );
    unavailable(cache.unsync(&tenant).await, "unsync");
    assert!(
        started.elapsed() < StdDuration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

async fn renew_result(cache: &Cache, tenant: &TenantId) -> Result<(), RegistryError> {
    cache
        .renew(tenant, &service(), &id("a"), &passing(), t0())
        .await
        .map(drop)
}

#[tokio::test]
async fn a_server_that_forgot_the_scripts_gets_them_again() {
    // A server of its own: SCRIPT FLUSH on the shared one would touch others.
    let server = RedisServer::start().await;
    let cache: Cache = Arc::new(DragonflyLeases::new(
        testing::dragonfly_on(server.port).await,
    ));
    let tenant = fresh_tenant();
    let a = instance(&tenant, "a", 1, t0());
    cache
        .refill(&tenant, std::slice::from_ref(&a), t0(), false)
        .await
        .unwrap();
    let flushed = std::process::Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "SCRIPT", "FLUSH"])
        .output()
        .unwrap();
    assert!(flushed.status.success());
    assert!(matches!(
        renew(&cache, &tenant, "a", &passing(), t0()).await,
        CacheRenewal::Renewed(_)
    ));
}

/// The memory cache is the reference: it must agree with itself being set
/// down (the same error the Dragonfly one gives).
#[tokio::test]
async fn memory_set_down_is_unavailable() {
    let memory = MemoryLeases::new();
    memory.set_down(true);
    let r = memory.synced(&fresh_tenant()).await;
    assert!(matches!(
        r,
        Err(RegistryError::Unavailable {
            component: "leases",
            ..
        })
    ));
}
