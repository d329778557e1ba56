//! `MemoryStore` as the store side of a lease cache (`LeaseStore`), and mass-expiry protection in its own reaper pass.

use chrono::{DateTime, Duration, Utc};
use hub_core::memory::MemoryStore;
use hub_core::ports::{LeaseChange, RegistryStore};
use hub_core::{
    CachedLease, ChangeContext, HealthStatus, Heartbeat, Instance, InstanceId, JudgedLease,
    LeaseStore, ListQuery, MassExpiry, MassExpiryHold, TenantId,
};

use crate::support::{registration, service, tenant, world};

fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap()
}

fn at(seconds: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(seconds)
}

/// Registers `ids` of service `svc` (ttl 10 s) at `when`.
async fn register_at(
    store: &MemoryStore,
    t: &TenantId,
    svc: &str,
    ids: &[&str],
    when: DateTime<Utc>,
) -> Vec<Instance> {
    let mut out = Vec::new();
    for id in ids {
        let up = store
            .upsert(
                t,
                registration(svc, id, 10),
                when,
                &ChangeContext::default(),
                None,
            )
            .await
            .unwrap();
        out.push(up.instance);
    }
    out
}

async fn stored(store: &MemoryStore, t: &TenantId) -> (Vec<Instance>, u64) {
    let page = store.list(t, &ListQuery::default()).await.unwrap();
    (page.instances, page.revision.get())
}

async fn heartbeat(store: &MemoryStore, t: &TenantId, id: &str, when: DateTime<Utc>) {
    store
        .renew(
            t,
            &service("svc"),
            &InstanceId::parse(id).unwrap(),
            &Heartbeat::default(),
            when,
            &ChangeContext::default(),
        )
        .await
        .unwrap();
}

fn ten() -> Vec<String> {
    (0..10).map(|i| format!("i{i}")).collect()
}

fn held(changes: &[LeaseChange]) -> Vec<&MassExpiryHold> {
    changes
        .iter()
        .filter_map(|c| match c {
            LeaseChange::Held(h) => Some(h),
            _ => None,
        })
        .collect()
}

fn count(changes: &[LeaseChange]) -> (usize, usize) {
    let expired = changes
        .iter()
        .filter(|c| matches!(c, LeaseChange::Expired { .. }))
        .count();
    let removed = changes
        .iter()
        .filter(|c| matches!(c, LeaseChange::Removed(_)))
        .count();
    (expired, removed)
}

#[tokio::test]
async fn mass_expiry_keeps_the_dead_until_the_grace_passes() {
    let store = MemoryStore::new();
    let t = tenant("t1");
    let ids = ten();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    register_at(&store, &t, "svc", &ids, t0()).await;
    let hold = |expired, held| MassExpiryHold {
        tenant: t.clone(),
        expired,
        total: 10,
        held,
    };

    let changes = store.expire_leases(at(10)).await.unwrap();
    assert_eq!(count(&changes), (10, 0));
    assert_eq!(held(&changes), [&hold(10, 0)]);

    let changes = store.expire_leases(at(40)).await.unwrap();
    assert_eq!(count(&changes), (0, 0), "{changes:?}");
    assert_eq!(held(&changes), [&hold(10, 10)]);
    let (instances, revision) = stored(&store, &t).await;
    assert_eq!(instances.len(), 10);
    assert_eq!(revision, 20, "a hold is no change");

    heartbeat(&store, &t, "i0", at(905)).await;
    let changes = store.expire_leases(at(910)).await.unwrap();
    assert_eq!(count(&changes), (0, 9));
    assert_eq!(held(&changes), [&hold(9, 0)]);
    assert_eq!(stored(&store, &t).await.0.len(), 1);
    assert!(store.expire_leases(at(911)).await.unwrap().is_empty());
}

#[tokio::test]
async fn held_dead_instances_that_were_never_marked_turn_critical() {
    // A first pass that finds them dead already (the reaper was down).
    let store = MemoryStore::new();
    let t = tenant("t1");
    let ids = ten();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    register_at(&store, &t, "svc", &ids, t0()).await;
    let changes = store.expire_leases(at(40)).await.unwrap();
    assert_eq!(count(&changes), (10, 0));
    assert_eq!(held(&changes)[0].held, 10);
    assert!(
        stored(&store, &t)
            .await
            .0
            .iter()
            .all(|i| i.status() == HealthStatus::Critical)
    );
}

#[tokio::test]
async fn a_few_dead_among_many_are_removed_at_once() {
    let store = MemoryStore::new();
    let t = tenant("t1");
    let ids = ten();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    register_at(&store, &t, "svc", &ids, t0()).await;
    for id in &ids[2..] {
        heartbeat(&store, &t, id, at(35)).await;
    }
    let changes = store.expire_leases(at(40)).await.unwrap();
    assert_eq!(count(&changes), (0, 2), "{changes:?}");
    assert!(held(&changes).is_empty());
}

#[tokio::test]
async fn without_mass_expiry_protection_the_dead_go_at_once() {
    let store = MemoryStore::new().with_mass_expiry(MassExpiry::off());
    let t = tenant("t1");
    let ids = ten();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    register_at(&store, &t, "svc", &ids, t0()).await;
    let changes = store.expire_leases(at(40)).await.unwrap();
    assert_eq!(count(&changes), (0, 10));
    assert!(held(&changes).is_empty());
}

#[tokio::test]
async fn the_registry_reports_a_hold_and_its_end() {
    let w = world();
    let t = tenant("t1");
    for i in 0..6 {
        w.registry
            .register(
                &t,
                registration("svc", &format!("i{i}"), 10),
                &ChangeContext::default(),
            )
            .await
            .unwrap();
    }
    w.clock.advance(Duration::seconds(40));
    let report = w.registry.expire_leases().await.unwrap();
    assert_eq!((report.expired, report.removed, report.held), (6, 0, 1));
    let hold = w.registry.mass_expiry(&t).unwrap();
    assert_eq!((hold.expired, hold.total, hold.held), (6, 6, 6));
    w.clock.advance(Duration::seconds(900));
    let report = w.registry.expire_leases().await.unwrap();
    assert_eq!(report.removed, 6);
    w.registry.expire_leases().await.unwrap();
    assert!(w.registry.mass_expiry(&t).is_none(), "the hold ended");
}

#[tokio::test]
async fn expire_judged_marks_removes_and_yields_to_a_newer_stored_lease() {
    let store = MemoryStore::new();
    let t = tenant("t1");
    let registered = register_at(&store, &t, "svc", &["a", "b", "c", "d"], t0()).await;
    let mut a = CachedLease::of(&registered[0]);
    a.last_heartbeat = at(5);
    a.expires_at = at(15);
    let judged: Vec<JudgedLease> = [
        (a, false),
        (CachedLease::of(&registered[1]), true),
        (CachedLease::of(&registered[2]), false),
        (CachedLease::of(&registered[3]), true),
    ]
    .into_iter()
    .map(|(lease, remove)| JudgedLease { lease, remove })
    .collect();
    // c and d heartbeat in the store after the judgement: they win.
    heartbeat(&store, &t, "c", at(8)).await;
    heartbeat(&store, &t, "d", at(8)).await;

    let changes = store
        .expire_judged(&t, &judged, at(50), &ChangeContext::reaper())
        .await
        .unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    let LeaseChange::Expired {
        instance,
        previous_status,
    } = &changes[0]
    else {
        panic!("{changes:?}")
    };
    assert_eq!(*previous_status, HealthStatus::Passing);
    assert_eq!(
        (
            instance.status(),
            instance.last_heartbeat(),
            instance.lease_expires_at(),
            instance.revision().get()
        ),
        (HealthStatus::Critical, at(5), at(15), 5)
    );
    assert!(
        matches!(&changes[1], LeaseChange::Removed(b) if b.instance_id().as_str() == "b" && b.revision().get() == 6)
    );
    let (now, revision) = stored(&store, &t).await;
    assert_eq!(revision, 6);
    assert_eq!(now.len(), 3);
    assert_eq!(now[0], *instance);
    assert_eq!(now[1].status(), HealthStatus::Passing, "c kept its renewal");
    assert_eq!(now[1].lease_expires_at(), at(18));

    let again = store
        .expire_judged(&t, &judged, at(51), &ChangeContext::reaper())
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test]
async fn extend_leases_moves_only_shorter_leases_of_every_tenant() {
    let store = MemoryStore::new();
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    register_at(&store, &t1, "svc", &["old"], t0()).await;
    register_at(&store, &t1, "svc", &["new"], at(100)).await;
    register_at(&store, &t2, "svc", &["old"], t0()).await;
    let before = (stored(&store, &t1).await.1, stored(&store, &t2).await.1);
    assert_eq!(store.extend_leases(at(50)).await.unwrap(), 2);
    let leases = |is: Vec<Instance>| {
        is.iter()
            .map(|i| (i.instance_id().as_str().to_owned(), i.lease_expires_at()))
            .collect::<Vec<_>>()
    };
    let (s1, r1) = stored(&store, &t1).await;
    let (s2, r2) = stored(&store, &t2).await;
    assert_eq!(
        leases(s1),
        [("new".to_owned(), at(110)), ("old".to_owned(), at(60))]
    );
    assert_eq!(leases(s2), [("old".to_owned(), at(60))]);
    assert_eq!((r1, r2), before, "a lease move is no registry change");
    assert_eq!(store.extend_leases(at(50)).await.unwrap(), 0);
}

#[tokio::test]
async fn instances_tenants_turns_and_metrics() {
    let store = MemoryStore::new();
    let t = tenant("t1");
    let mut expected = register_at(&store, &t, "web", &["w1", "w2"], t0()).await;
    expected.extend(register_at(&store, &t, "api", &["a1"], t0()).await);
    register_at(&store, &tenant("t2"), "web", &["theirs"], t0()).await;
    expected.sort_by(|x, y| {
        (x.service_name(), x.instance_id()).cmp(&(y.service_name(), y.instance_id()))
    });
    assert_eq!(store.instances(&t).await.unwrap(), expected);
    assert!(store.instances(&tenant("none")).await.unwrap().is_empty());
    let mut tenants = store.tenants().await.unwrap();
    tenants.sort();
    assert_eq!(tenants, [tenant("t1"), tenant("t2")]);
    // One process, no sharing: the turn is always free.
    let first = store.reaper_turn().await.unwrap();
    assert!(first.is_some() && store.reaper_turn().await.unwrap().is_some());
    // Embedded mode keeps no metric history: accepted, dropped.
    store.record_metrics(&t, &[]).await.unwrap();
}
