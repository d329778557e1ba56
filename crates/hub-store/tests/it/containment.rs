//! Containment: a stored row that cannot be read, or a tenant whose reaper pass fails, harms only itself; old health metrics are pruned.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Duration;
use hub_core::memory::InProcessBus;
use hub_core::ports::Clock;
use hub_core::{
    ChangeContext, HealthStatus, Heartbeat, InstanceId, ListQuery, Registry, RegistryError,
    ServiceName,
};
use hub_store::PgStore;
use hub_store::testing::TestDb;

use crate::support::{registration, tenant, world};

/// Rows of the audit trail of `tenant`: (event type, instance, unreadable flag).
async fn audit(db: &TestDb, tenant: &str) -> Vec<(String, String, bool)> {
    let owner = TestDb::connect(&db.owner).await;
    owner
        .execute("SELECT set_config('app.tenant_id', $1, false)", &[&tenant])
        .await
        .unwrap();
    owner
        .query(
            "SELECT event_type, instance_id, coalesce((payload->>'unreadable')::boolean, false) \
             FROM coordination_history ORDER BY revision",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn the_reaper_expires_other_tenants_past_an_unreadable_row() {
    let Some(w) = world().await else { return };
    let ctx = ChangeContext::default();
    // Tenant "aaa" comes first in the pass and holds a row that cannot be
    // read, with a lease that ran out; tenant "bbb" has a plain instance.
    let (a, b) = (tenant("aaa"), tenant("bbb"));
    w.registry
        .register(&a, registration("svc", "good"), &ctx)
        .await
        .unwrap();
    w.registry
        .register(&b, registration("svc", "b1"), &ctx)
        .await
        .unwrap();
    w.db.insert_unreadable("aaa", "svc", "poison", w.clock.now())
        .await;
    let svc = ServiceName::parse("svc").unwrap();

    // ttl 10 s: one pass turns every lease critical, the unreadable one too.
    w.clock.advance(Duration::seconds(11));
    let report = w.registry.expire_leases().await.unwrap();
    assert_eq!(report.expired, 2, "the readable instances of both tenants");
    let b_now = w.registry.get(&b, &svc).await.unwrap();
    assert_eq!(b_now.instances[0].status(), HealthStatus::Critical);
    let a_now = w.registry.get(&a, &svc).await.unwrap();
    assert_eq!(a_now.instances.len(), 1);
    assert_eq!(a_now.instances[0].status(), HealthStatus::Critical);
    assert_eq!(
        a_now.skipped, 1,
        "the unreadable row is left out, and said so"
    );

    // 3 x ttl later every one of them is removed, the unreadable one with
    // an audit row of its stored values.
    w.clock.advance(Duration::seconds(40));
    let report = w.registry.expire_leases().await.unwrap();
    assert_eq!(report.removed, 2);
    assert!(matches!(
        w.registry.get(&b, &svc).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        w.registry.get(&a, &svc).await,
        Err(RegistryError::NotFound(_))
    ));
    let trail = audit(&w.db, "aaa").await;
    assert!(trail.contains(&("service.status_changed".into(), "poison".into(), true)));
    assert!(trail.contains(&("service.expired".into(), "poison".into(), true)));
}

#[tokio::test]
async fn a_tenant_whose_pass_fails_is_skipped_and_the_others_expire() {
    let Some(w) = world().await else { return };
    // A store whose statements give up after 300 ms, so that a tenant held
    // up by a lock fails quickly.
    let store = PgStore::new(&hub_store::PgConfig {
        statement_timeout: StdDuration::from_millis(300),
        ..w.db.app.clone()
    })
    .unwrap();
    let registry = Registry::new(
        Arc::new(store),
        Arc::new(InProcessBus::new()),
        w.clock.clone(),
    );
    let ctx = ChangeContext::default();
    let (a, b) = (tenant("aaa"), tenant("bbb"));
    registry
        .register(&a, registration("svc", "a1"), &ctx)
        .await
        .unwrap();
    registry
        .register(&b, registration("svc", "b1"), &ctx)
        .await
        .unwrap();
    // Another session holds tenant aaa's revision row: its pass cannot
    // take the lock and fails at the statement timeout.
    let mut holder = TestDb::connect(&w.db.owner).await;
    let held = holder.transaction().await.unwrap();
    held.execute("SELECT set_config('app.tenant_id', 'aaa', true)", &[])
        .await
        .unwrap();
    held.execute(
        "SELECT revision FROM tenant_state WHERE tenant_id = 'aaa' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();

    w.clock.advance(Duration::seconds(11));
    let report = registry.expire_leases().await.unwrap();
    assert_eq!(
        report.expired, 1,
        "tenant bbb's instance, past the failed tenant"
    );
    let svc = ServiceName::parse("svc").unwrap();
    assert_eq!(
        registry.get(&b, &svc).await.unwrap().instances[0].status(),
        HealthStatus::Critical
    );
    assert_eq!(
        registry.get(&a, &svc).await.unwrap().instances[0].status(),
        HealthStatus::Passing
    );
    // Once the lock is gone, the next pass catches up.
    held.rollback().await.unwrap();
    assert_eq!(registry.expire_leases().await.unwrap().expired, 1);
}

#[tokio::test]
async fn unreadable_rows_are_left_out_of_reads_refused_by_heartbeats_and_deletable() {
    let Some(w) = world().await else { return };
    let t = tenant("t1");
    let ctx = ChangeContext::default();
    w.registry
        .register(&t, registration("svc", "a"), &ctx)
        .await
        .unwrap();
    let lease = w.clock.now() + Duration::seconds(10);
    w.db.insert_unreadable("t1", "svc", "poison", lease).await;
    w.db.insert_unreadable("t1", "svc", "poison2", lease).await;
    let svc = ServiceName::parse("svc").unwrap();

    let page = w.registry.list(&t, &ListQuery::default()).await.unwrap();
    assert_eq!(page.instances.len(), 1);
    assert_eq!(page.skipped, 2);
    // Paging goes on past unreadable rows (they sit between "a" and "z").
    w.registry
        .register(&t, registration("svc", "z"), &ctx)
        .await
        .unwrap();
    let first = ListQuery::new(None, vec![], None, Some(1), None).unwrap();
    let page = w.registry.list(&t, &first).await.unwrap();
    assert_eq!(page.instances[0].instance_id().as_str(), "a");
    let rest = ListQuery::new(None, vec![], None, Some(1), page.next.clone()).unwrap();
    let page = w.registry.list(&t, &rest).await.unwrap();
    assert_eq!(page.instances[0].instance_id().as_str(), "z");
    assert!(page.next.is_none());
    assert_eq!(page.skipped, 2);

    let got = w.registry.get(&t, &svc).await.unwrap();
    assert_eq!((got.instances.len(), got.skipped), (2, 2));

    // A heartbeat cannot renew what cannot be read: a conflict, nothing changed.
    let poison = InstanceId::parse("poison").unwrap();
    let beat = w
        .registry
        .heartbeat(&t, &svc, Some(&poison), &Heartbeat::default(), &ctx)
        .await;
    assert!(matches!(beat, Err(RegistryError::Conflict(_))), "{beat:?}");

    // The tenant removes one by its id, then the whole service.
    let removed = w
        .registry
        .deregister(&t, &svc, Some(&poison), &ctx)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(
        w.registry.deregister(&t, &svc, None, &ctx).await.unwrap(),
        3
    );
    assert!(matches!(
        w.registry.get(&t, &svc).await,
        Err(RegistryError::NotFound(_))
    ));
    let trail = audit(&w.db, "t1").await;
    let removals: Vec<_> = trail
        .iter()
        .filter(|(kind, _, _)| kind == "service.deregistered")
        .map(|(_, id, unreadable)| (id.as_str(), *unreadable))
        .collect();
    assert_eq!(
        removals,
        [
            ("poison", true),
            ("a", false),
            ("poison2", true),
            ("z", false)
        ]
    );
}

#[tokio::test]
async fn old_health_metrics_are_pruned_tenant_by_tenant_and_recent_ones_kept() {
    let Some(w) = world().await else { return };
    let store = PgStore::new(&w.db.app).unwrap();
    let ctx = ChangeContext::default();
    for t in ["t1", "t2"] {
        w.registry
            .register(&tenant(t), registration("svc", "a"), &ctx)
            .await
            .unwrap();
    }
    // Per tenant: 5 rows 30 days old, 3 rows 8 days old, 2 rows 1 day old.
    let owner = TestDb::connect(&w.db.owner).await;
    for t in ["t1", "t2"] {
        owner
            .execute("SELECT set_config('app.tenant_id', $1, false)", &[&t])
            .await
            .unwrap();
        owner
            .execute(
                "INSERT INTO health_metrics (tenant_id, service_name, instance_id, status, recorded_at) \
                 SELECT $1, 'svc', 'a', 'passing', now() - make_interval(days => d) \
                 FROM unnest(ARRAY[30, 30, 30, 30, 30, 8, 8, 8, 1, 1]) AS d",
                &[&t],
            )
            .await
            .unwrap();
    }
    // Batches of 2 rows: several statements per tenant.
    assert_eq!(store.prune_metrics(7, 2).await.unwrap(), 16);
    assert_eq!(store.prune_metrics(7, 2).await.unwrap(), 0);
    for t in ["t1", "t2"] {
        owner
            .execute("SELECT set_config('app.tenant_id', $1, false)", &[&t])
            .await
            .unwrap();
        let left: i64 = owner
            .query_one(
                "SELECT count(*) FROM health_metrics WHERE recorded_at > now() - interval '2 days'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let all: i64 = owner
            .query_one("SELECT count(*) FROM health_metrics", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!((left, all), (2, 2), "tenant {t}");
    }
    // The application role cannot use the function to reach recent rows,
    // nor act outside a tenant.
    let app = TestDb::connect(&w.db.app).await;
    let outside = app.query_one("SELECT hub_metrics_prune(7, 10)", &[]).await;
    assert!(outside.is_err(), "no tenant, no pruning");
    app.execute("SELECT set_config('app.tenant_id', 't1', false)", &[])
        .await
        .unwrap();
    let too_recent = app.query_one("SELECT hub_metrics_prune(0, 10)", &[]).await;
    assert!(too_recent.is_err(), "at least one day is kept");
    let delete = app.execute("DELETE FROM health_metrics", &[]).await;
    assert!(delete.is_err(), "the application role stays append-only");
}
