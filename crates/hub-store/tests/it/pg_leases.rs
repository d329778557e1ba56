//! `PgStore` as the store side of a lease cache (`LeaseStore`), and mass-expiry protection in its own reaper pass, at explicit times.

use chrono::{DateTime, Duration, Utc};
use hub_core::ports::{LeaseChange, RegistryStore};
use hub_core::{
    CachedLease, ChangeContext, HealthStatus, Heartbeat, HeartbeatMetrics, Instance, InstanceId,
    JudgedLease, LeaseStore, ListQuery, MassExpiry, MassExpiryHold, MetricSample, ServiceName,
    Sink, Sinks, TenantId,
};
use hub_store::PgStore;
use hub_store::testing::TestDb;

use crate::support::{registration, tenant};

/// A fixed start (PostgreSQL keeps microseconds; this round-trips exactly).
fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap()
}

fn at(seconds: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(seconds)
}

async fn store_on(db: &TestDb) -> PgStore {
    PgStore::new(&db.app)
        .unwrap()
        .with_outbox(Sinks::NONE.with(Sink::Nats), "replica-a")
}

/// Registers `ids` of service `svc` (ttl 10 s) at `when`.
async fn register_at(
    store: &PgStore,
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
                registration(svc, id),
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

async fn stored(store: &PgStore, t: &TenantId) -> Vec<Instance> {
    store
        .list(t, &ListQuery::default())
        .await
        .unwrap()
        .instances
}

async fn revision(store: &PgStore, t: &TenantId) -> u64 {
    store
        .list(t, &ListQuery::default())
        .await
        .unwrap()
        .revision
        .get()
}

/// The table owner's connection, scoped to `t` for the session (owner
/// tables have FORCE row-level security).
async fn owner_in(db: &TestDb, t: &str) -> tokio_postgres::Client {
    let owner = TestDb::connect(&db.owner).await;
    owner
        .execute("SELECT set_config('app.tenant_id', $1, false)", &[&t])
        .await
        .unwrap();
    owner
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
async fn expire_judged_marks_critical_and_removes_with_audit_and_outbox() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = store_on(&db).await;
    let t = tenant("t1");
    let registered = register_at(&store, &t, "svc", &["a", "b", "c"], t0()).await;

    // The cache renewed `a` until 15 s (the store still has 10 s) and judged
    // it run out; `b` is judged dead as the store has it.
    let mut a = CachedLease::of(&registered[0]);
    a.last_heartbeat = at(5);
    a.expires_at = at(15);
    let b = CachedLease::of(&registered[1]);
    let judged = [
        JudgedLease {
            lease: a,
            remove: false,
        },
        JudgedLease {
            lease: b,
            remove: true,
        },
    ];
    let changes = store
        .expire_judged(&t, &judged, at(60), &ChangeContext::reaper())
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
    assert_eq!(instance.status(), HealthStatus::Critical);
    assert_eq!(
        instance.last_heartbeat(),
        at(5),
        "the judged lease is written"
    );
    assert_eq!(instance.lease_expires_at(), at(15));
    assert_eq!(instance.revision().get(), 4);
    let LeaseChange::Removed(gone) = &changes[1] else {
        panic!("{changes:?}")
    };
    assert_eq!(gone.instance_id().as_str(), "b");
    assert_eq!(gone.revision().get(), 5);

    let now = stored(&store, &t).await;
    assert_eq!(now.len(), 2);
    assert_eq!(now[0], *instance, "stored as returned");
    assert_eq!(now[1], registered[2], "c untouched");
    assert_eq!(revision(&store, &t).await, 5);

    let owner = owner_in(&db, "t1").await;
    let audit: Vec<(i64, String, String, Option<String>)> = owner
        .query(
            "SELECT revision, event_type, instance_id, actor FROM coordination_history \
             WHERE revision > 3 ORDER BY revision",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let reaper = Some("lease-reaper".to_owned());
    assert_eq!(
        audit,
        [
            (
                4,
                "service.status_changed".into(),
                "a".into(),
                reaper.clone()
            ),
            (5, "service.expired".into(), "b".into(), reaper),
        ]
    );
    let outbox: Vec<(i64, String, String, Option<String>)> = owner
        .query(
            "SELECT revision, event_type, instance_id, previous_status FROM hub_outbox \
             WHERE revision > 3 ORDER BY revision",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        outbox,
        [
            (
                4,
                "service.status_changed".into(),
                "a".into(),
                Some("passing".into())
            ),
            (5, "service.expired".into(), "b".into(), None),
        ]
    );

    // Applying the same judgement again changes nothing: `a` is critical
    // already and `b` is gone.
    let again = store
        .expire_judged(&t, &judged, at(61), &ChangeContext::reaper())
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(revision(&store, &t).await, 5);
}

#[tokio::test]
async fn expire_judged_yields_to_a_lease_renewed_in_the_store_since() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = store_on(&db).await;
    let t = tenant("t1");
    let registered = register_at(&store, &t, "svc", &["a", "b", "c"], t0()).await;
    // Judged from the cache at 10 s: all three ran out (c long ago).
    let judged: Vec<JudgedLease> = registered
        .iter()
        .zip([false, true, false])
        .map(|(i, remove)| JudgedLease {
            lease: CachedLease::of(i),
            remove,
        })
        .collect();
    // Meanwhile heartbeats of a and b reached the store (the cache had
    // marked them critical, or was briefly unreachable).
    for id in ["a", "b"] {
        store
            .renew(
                &t,
                &ServiceName::parse("svc").unwrap(),
                &InstanceId::parse(id).unwrap(),
                &Heartbeat::default(),
                at(8),
                &ChangeContext::default(),
            )
            .await
            .unwrap();
    }
    let changes = store
        .expire_judged(&t, &judged, at(50), &ChangeContext::reaper())
        .await
        .unwrap();
    assert_eq!(changes.len(), 1, "only c: {changes:?}");
    assert!(matches!(
        &changes[0],
        LeaseChange::Expired { instance, .. } if instance.instance_id().as_str() == "c"
    ));
    let now = stored(&store, &t).await;
    assert_eq!(now.len(), 3, "b was not removed");
    assert_eq!(
        now.iter().map(Instance::status).collect::<Vec<_>>(),
        [
            HealthStatus::Passing,
            HealthStatus::Passing,
            HealthStatus::Critical
        ]
    );
    assert_eq!(now[0].lease_expires_at(), at(18), "a keeps its renewal");
}

#[tokio::test]
async fn extend_leases_moves_only_shorter_leases_of_every_tenant() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = store_on(&db).await;
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    register_at(&store, &t1, "svc", &["old"], t0()).await;
    register_at(&store, &t1, "svc", &["new"], at(100)).await;
    register_at(&store, &t2, "svc", &["old"], t0()).await;
    let before = (revision(&store, &t1).await, revision(&store, &t2).await);

    // Floor 50 s: leases are moved to at least 60 s (floor plus ttl).
    let moved = store.extend_leases(at(50)).await.unwrap();
    assert_eq!(moved, 2);
    let leases = |is: Vec<Instance>| {
        is.iter()
            .map(|i| (i.instance_id().as_str().to_owned(), i.lease_expires_at()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        leases(stored(&store, &t1).await),
        [("new".to_owned(), at(110)), ("old".to_owned(), at(60))]
    );
    assert_eq!(
        leases(stored(&store, &t2).await),
        [("old".to_owned(), at(60))]
    );
    assert_eq!(
        (revision(&store, &t1).await, revision(&store, &t2).await),
        before,
        "a lease move is no registry change"
    );
    // Moved leases no longer run out at the old time.
    assert!(store.expire_leases(at(30)).await.unwrap().is_empty());
    assert_eq!(store.extend_leases(at(50)).await.unwrap(), 0, "idempotent");
}

#[tokio::test]
async fn record_metrics_writes_one_row_per_sample_for_its_tenant() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = store_on(&db).await;
    let t = tenant("t1");
    register_at(&store, &t, "svc", &["a", "b"], t0()).await;
    let sample = |id: &str, metrics, seconds| MetricSample {
        service: ServiceName::parse("svc").unwrap(),
        instance: InstanceId::parse(id).unwrap(),
        status: HealthStatus::Warning,
        metrics,
        recorded_at: at(seconds),
    };
    let full = HeartbeatMetrics::new(Some(12.5), Some(40.0), Some(512.0), Some(0.01)).unwrap();
    let partial = HeartbeatMetrics::new(None, Some(3.0), None, None).unwrap();
    store
        .record_metrics(&t, &[sample("a", full, 5), sample("b", partial, 6)])
        .await
        .unwrap();
    store.record_metrics(&t, &[]).await.unwrap();

    let owner = owner_in(&db, "t1").await;
    let rows: Vec<_> = owner
        .query(
            "SELECT instance_id, status, response_time_ms, cpu_usage, memory_usage, error_rate, \
                 recorded_at FROM health_metrics ORDER BY instance_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, Option<f64>>(2),
                r.get::<_, Option<f64>>(3),
                r.get::<_, Option<f64>>(4),
                r.get::<_, Option<f64>>(5),
                r.get::<_, DateTime<Utc>>(6),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "a".into(),
                "warning".into(),
                Some(12.5),
                Some(40.0),
                Some(512.0),
                Some(0.01),
                at(5)
            ),
            (
                "b".into(),
                "warning".into(),
                None,
                Some(3.0),
                None,
                None,
                at(6)
            ),
        ]
    );
    let other = owner_in(&db, "t2").await;
    let theirs: i64 = other
        .query_one("SELECT count(*) FROM health_metrics", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(theirs, 0);
}

#[tokio::test]
async fn instances_are_every_readable_one_of_the_tenant() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = store_on(&db).await;
    let t = tenant("t1");
    let mut expected = register_at(&store, &t, "web", &["w1", "w2"], t0()).await;
    expected.extend(register_at(&store, &t, "api", &["a1"], t0()).await);
    register_at(&store, &tenant("t2"), "web", &["theirs"], t0()).await;
    db.insert_unreadable("t1", "web", "broken", at(10)).await;

    let got = store.instances(&t).await.unwrap();
    expected.sort_by(|x, y| {
        (x.service_name(), x.instance_id()).cmp(&(y.service_name(), y.instance_id()))
    });
    assert_eq!(got, expected, "the unreadable row is left out, t2 unseen");
    assert!(store.instances(&tenant("none")).await.unwrap().is_empty());
    let tenants = store.tenants().await.unwrap();
    assert_eq!(tenants, [tenant("t1"), tenant("t2")]);
}

#[tokio::test]
async fn mass_expiry_keeps_the_dead_until_the_grace_passes() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = store_on(&db).await;
    let t = tenant("t1");
    let ids: Vec<String> = (0..10).map(|i| format!("i{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    register_at(&store, &t, "svc", &ids, t0()).await;
    let hold = |expired, held| MassExpiryHold {
        tenant: t.clone(),
        expired,
        total: 10,
        held,
    };

    // All ten leases run out at 10 s: all turn critical; the tenant is held.
    let changes = store.expire_leases(at(10)).await.unwrap();
    assert_eq!(count(&changes), (10, 0));
    assert_eq!(held(&changes), [&hold(10, 0)]);

    // At deregister_after (40 s) they are due for removal, but kept.
    let changes = store.expire_leases(at(40)).await.unwrap();
    assert_eq!(count(&changes), (0, 0), "{changes:?}");
    assert_eq!(held(&changes), [&hold(10, 10)]);
    assert_eq!(stored(&store, &t).await.len(), 10);
    assert_eq!(revision(&store, &t).await, 20, "a hold is no change");
    // Every pass says so while it lasts.
    let changes = store.expire_leases(at(500)).await.unwrap();
    assert_eq!(held(&changes), [&hold(10, 10)]);

    // One that heartbeats recovers as usual and is not counted.
    store
        .renew(
            &t,
            &ServiceName::parse("svc").unwrap(),
            &InstanceId::parse("i0").unwrap(),
            &Heartbeat::default(),
            at(905),
            &ChangeContext::default(),
        )
        .await
        .unwrap();
    // The grace (900 s after the leases ran out) passes: removed.
    let changes = store.expire_leases(at(910)).await.unwrap();
    assert_eq!(count(&changes), (0, 9));
    assert_eq!(held(&changes), [&hold(9, 0)]);
    assert_eq!(stored(&store, &t).await.len(), 1);
    assert!(store.expire_leases(at(911)).await.unwrap().is_empty());

    let owner = owner_in(&db, "t1").await;
    let expired: i64 = owner
        .query_one(
            "SELECT count(*) FROM coordination_history WHERE event_type = 'service.expired'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(expired, 9, "holds write no audit rows");
}

#[tokio::test]
async fn a_few_dead_among_many_are_removed_at_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = store_on(&db).await;
    let t = tenant("t1");
    let ids: Vec<String> = (0..10).map(|i| format!("i{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    register_at(&store, &t, "svc", &ids, t0()).await;
    for id in &ids[2..] {
        store
            .renew(
                &t,
                &ServiceName::parse("svc").unwrap(),
                &InstanceId::parse(*id).unwrap(),
                &Heartbeat::default(),
                at(35),
                &ChangeContext::default(),
            )
            .await
            .unwrap();
    }
    let changes = store.expire_leases(at(40)).await.unwrap();
    assert_eq!(count(&changes), (0, 2), "{changes:?}");
    assert!(held(&changes).is_empty());
    assert_eq!(stored(&store, &t).await.len(), 8);
}

#[tokio::test]
async fn without_mass_expiry_protection_the_dead_go_at_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = store_on(&db).await.with_mass_expiry(MassExpiry::off());
    let t = tenant("t1");
    let ids: Vec<String> = (0..6).map(|i| format!("i{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    register_at(&store, &t, "svc", &ids, t0()).await;
    let changes = store.expire_leases(at(40)).await.unwrap();
    assert_eq!(count(&changes), (0, 6));
    assert!(held(&changes).is_empty());
}

#[tokio::test]
async fn a_held_tenant_keeps_unreadable_dead_rows_too() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = store_on(&db).await;
    let t = tenant("t1");
    let ids: Vec<String> = (0..5).map(|i| format!("i{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    register_at(&store, &t, "svc", &ids, t0()).await;
    db.insert_unreadable("t1", "svc", "broken", at(10)).await;

    let changes = store.expire_leases(at(40)).await.unwrap();
    assert_eq!(
        count(&changes),
        (5, 0),
        "critical, not removed: {changes:?}"
    );
    let h = held(&changes);
    assert_eq!((h[0].expired, h[0].total, h[0].held), (6, 6, 6));
    let changes = store.expire_leases(at(910)).await.unwrap();
    assert_eq!(count(&changes), (0, 5));
    let owner = owner_in(&db, "t1").await;
    let left: i64 = owner
        .query_one("SELECT count(*) FROM service_registry", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the unreadable row went with the others");
}

#[tokio::test]
async fn the_reaper_turn_excludes_others_and_is_released_on_drop() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = store_on(&db).await;
    let replica = store_on(&db).await;
    let t = tenant("t1");
    register_at(&store, &t, "svc", &["a"], t0()).await;

    let turn = store
        .reaper_turn()
        .await
        .unwrap()
        .expect("the turn is free");
    assert!(replica.reaper_turn().await.unwrap().is_none());
    assert!(
        store.reaper_turn().await.unwrap().is_none(),
        "not twice in one process either"
    );
    assert!(
        store.expire_leases(at(11)).await.unwrap().is_empty(),
        "the store's own pass takes the same lock"
    );
    drop(turn);
    // Right after the drop, this process's pass runs (it waits for the
    // release in flight instead of finding its own lock taken).
    assert_eq!(count(&store.expire_leases(at(11)).await.unwrap()), (1, 0));
    let again = replica.reaper_turn().await.unwrap();
    assert!(again.is_some(), "released for other replicas too");
    drop(again);
    // Taken and given up in a row, the turn is always free again at once
    // for the process that gave it up (a race would show within a few
    // rounds). Only for that one: another process may find it taken until
    // the release reached PostgreSQL.
    for round in 0..50 {
        let turn = replica.reaper_turn().await.unwrap();
        assert!(turn.is_some(), "round {round}");
    }
}

/// With a lease cache, rows that cannot be read never enter it: the store
/// expires them by its own rule, and leaves the readable ones (whose stored
/// leases are stale by design) alone.
#[tokio::test]
async fn expire_unreadable_expires_only_rows_that_cannot_be_read() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = store_on(&db).await;
    let t = tenant("t1");
    register_at(&store, &t, "svc", &["ok"], t0()).await;
    db.insert_unreadable("t1", "svc", "broken", at(10)).await;
    db.insert_unreadable("t2", "svc", "theirs", at(10)).await;
    let context = ChangeContext::reaper();

    assert_eq!(
        store.expire_unreadable(&t, at(5), &context).await.unwrap(),
        0
    );
    // Run out: critical (the readable one, just as run out, is untouched).
    assert_eq!(
        store.expire_unreadable(&t, at(20), &context).await.unwrap(),
        1
    );
    assert_eq!(
        store.expire_unreadable(&t, at(21), &context).await.unwrap(),
        0,
        "once"
    );
    let listed = store
        .service(&t, &ServiceName::parse("svc").unwrap())
        .await
        .unwrap();
    assert_eq!(listed.instances[0].status(), HealthStatus::Passing);
    assert_eq!(listed.skipped, 1);
    // Dead: removed; the other tenant's row is not touched.
    assert_eq!(
        store.expire_unreadable(&t, at(45), &context).await.unwrap(),
        1
    );
    let listed = store
        .service(&t, &ServiceName::parse("svc").unwrap())
        .await
        .unwrap();
    assert_eq!((listed.instances.len(), listed.skipped), (1, 0));
    let theirs = store
        .service(&tenant("t2"), &ServiceName::parse("svc").unwrap())
        .await
        .unwrap();
    assert_eq!(theirs.skipped, 1);
}
