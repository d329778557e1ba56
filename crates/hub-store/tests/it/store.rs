//! The registry use cases on PostgreSQL: results, revisions, audit rows and metrics as stored.

use chrono::Duration;
use hub_core::{
    ChangeContext, HealthStatus, Heartbeat, HeartbeatMetrics, InstanceId, ListQuery, RegistryError,
    ServiceName,
};
use hub_store::testing::TestDb;

use crate::support::{registration, tenant, world};

#[tokio::test]
async fn register_get_list_deregister_with_audit_rows() {
    let Some(w) = world().await else { return };
    let t1 = tenant("tenant1");
    let ctx = ChangeContext::new(Some("abcd1234".into()), Some("req-1".into()));
    let first = w
        .registry
        .register(&t1, registration("svc", "a"), &ctx)
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.instance.revision().get(), 1);
    let again = w
        .registry
        .register(&t1, registration("svc", "a"), &ctx)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.instance.revision().get(), 2);
    assert_eq!(
        again.instance.registered_at(),
        first.instance.registered_at()
    );
    w.registry
        .register(&t1, registration("svc", "b"), &ctx)
        .await
        .unwrap();

    let got = w
        .registry
        .get(&t1, &ServiceName::parse("svc").unwrap())
        .await
        .unwrap();
    assert_eq!(got.revision.get(), 3);
    let ids: Vec<_> = got
        .instances
        .iter()
        .map(|i| i.instance_id().to_string())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(got.instances[0].metadata()["zone"], "a");
    assert_eq!(got.instances[0].tags(), ["blue"]);

    let page = w
        .registry
        .list(
            &t1,
            &ListQuery::new(None, vec!["blue".into()], None, Some(1), None).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(page.instances.len(), 1);
    let next = w
        .registry
        .list(
            &t1,
            &ListQuery::new(None, vec![], None, Some(1), page.next.clone()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(next.instances[0].instance_id().as_str(), "b");
    assert!(next.next.is_none());

    let removed = w
        .registry
        .deregister(&t1, &ServiceName::parse("svc").unwrap(), None, &ctx)
        .await
        .unwrap();
    assert_eq!(removed, 2);

    let owner = TestDb::connect(&w.db.owner).await;
    let tx_rows = owner
        .query("SELECT set_config('app.tenant_id', 'tenant1', false)", &[])
        .await
        .unwrap();
    assert_eq!(tx_rows.len(), 1);
    let audit = owner
        .query(
            "SELECT revision, event_type, instance_id, actor, request_id FROM coordination_history ORDER BY revision",
            &[],
        )
        .await
        .unwrap();
    type AuditRow = (i64, String, String, Option<String>, Option<String>);
    let audit: Vec<AuditRow> = audit
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let actor = Some("abcd1234".to_string());
    let req = Some("req-1".to_string());
    assert_eq!(
        audit,
        vec![
            (
                1,
                "service.registered".into(),
                "a".into(),
                actor.clone(),
                req.clone()
            ),
            (
                2,
                "service.updated".into(),
                "a".into(),
                actor.clone(),
                req.clone()
            ),
            (
                3,
                "service.registered".into(),
                "b".into(),
                actor.clone(),
                req.clone()
            ),
            (
                4,
                "service.deregistered".into(),
                "a".into(),
                actor.clone(),
                req.clone()
            ),
            (5, "service.deregistered".into(), "b".into(), actor, req),
        ]
    );
}

#[tokio::test]
async fn heartbeats_renew_record_metrics_and_expiry_follows_the_clock() {
    let Some(w) = world().await else { return };
    let t1 = tenant("tenant1");
    let svc = ServiceName::parse("svc").unwrap();
    let id = InstanceId::parse("a").unwrap();
    let ctx = ChangeContext::default();
    w.registry
        .register(&t1, registration("svc", "a"), &ctx)
        .await
        .unwrap();

    let metrics = HeartbeatMetrics::new(Some(12.5), Some(40.0), Some(512.0), Some(0.01)).unwrap();
    w.clock.advance(Duration::seconds(5));
    let renewed = w
        .registry
        .heartbeat(
            &t1,
            &svc,
            Some(&id),
            &Heartbeat::new(HealthStatus::Passing, Some(metrics)),
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(
        renewed.revision().get(),
        1,
        "a renewal is no registry change"
    );

    // ttl 10 s after the heartbeat: critical; 3 x ttl later: removed.
    w.clock.advance(Duration::seconds(10));
    let report = w.registry.expire_leases().await.unwrap();
    assert_eq!((report.expired, report.removed), (1, 0));
    assert_eq!(w.registry.expire_leases().await.unwrap().expired, 0);
    let got = w.registry.get(&t1, &svc).await.unwrap();
    assert_eq!(got.instances[0].status(), HealthStatus::Critical);
    assert_eq!(got.revision.get(), 2);

    // A heartbeat revives it (a status change: new revision).
    let revived = w
        .registry
        .heartbeat(&t1, &svc, Some(&id), &Heartbeat::default(), &ctx)
        .await
        .unwrap();
    assert_eq!(revived.status(), HealthStatus::Passing);
    assert_eq!(revived.revision().get(), 3);

    w.clock.advance(Duration::seconds(40));
    let report = w.registry.expire_leases().await.unwrap();
    assert_eq!((report.expired, report.removed), (0, 1));
    assert!(matches!(
        w.registry.get(&t1, &svc).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        w.registry
            .heartbeat(&t1, &svc, Some(&id), &Heartbeat::default(), &ctx)
            .await,
        Err(RegistryError::NotFound(_))
    ));

    let owner = TestDb::connect(&w.db.owner).await;
    owner
        .execute("SELECT set_config('app.tenant_id', 'tenant1', false)", &[])
        .await
        .unwrap();
    let row = owner
        .query_one("SELECT response_time_ms, cpu_usage, memory_usage, error_rate, status FROM health_metrics", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<f64>>(0), Some(12.5));
    assert_eq!(row.get::<_, Option<f64>>(1), Some(40.0));
    assert_eq!(row.get::<_, String>(4), "passing");
    let kinds: Vec<String> = owner
        .query(
            "SELECT event_type FROM coordination_history ORDER BY revision",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        kinds,
        [
            "service.registered",
            "service.status_changed",
            "service.status_changed",
            "service.expired"
        ]
    );
    let actor: Option<String> = owner
        .query_one(
            "SELECT actor FROM coordination_history WHERE event_type = 'service.expired'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(actor.as_deref(), Some("lease-reaper"));
}

#[tokio::test]
async fn tenants_do_not_see_each_other_through_the_store() {
    let Some(w) = world().await else { return };
    let ctx = ChangeContext::default();
    w.registry
        .register(&tenant("t1"), registration("shared", "x"), &ctx)
        .await
        .unwrap();
    w.registry
        .register(&tenant("t2"), registration("shared", "y"), &ctx)
        .await
        .unwrap();
    let t2 = w
        .registry
        .list(&tenant("t2"), &ListQuery::default())
        .await
        .unwrap();
    assert_eq!(t2.instances.len(), 1);
    assert_eq!(t2.instances[0].instance_id().as_str(), "y");
    assert_eq!(t2.revision.get(), 1, "per-tenant revisions");
    let svc = ServiceName::parse("shared").unwrap();
    let removed = w
        .registry
        .deregister(
            &tenant("t2"),
            &svc,
            Some(&InstanceId::parse("x").unwrap()),
            &ctx,
        )
        .await;
    assert!(matches!(removed, Err(RegistryError::NotFound(_))));
    assert_eq!(
        w.registry
            .get(&tenant("t1"), &svc)
            .await
            .unwrap()
            .instances
            .len(),
        1
    );
}

#[tokio::test]
async fn the_reaper_visits_a_tenant_whose_first_request_changed_nothing() {
    // A tenant's first request may be a heartbeat or deregistration that
    // finds nothing; its later registrations must still expire.
    let Some(w) = world().await else { return };
    let t = tenant("late-registrar");
    let svc = ServiceName::parse("svc").unwrap();
    let ctx = ChangeContext::default();
    assert!(matches!(
        w.registry.deregister(&t, &svc, None, &ctx).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        w.registry
            .heartbeat(&t, &svc, None, &Heartbeat::default(), &ctx)
            .await,
        Err(RegistryError::NotFound(_))
    ));
    w.registry
        .register(&t, registration("svc", "a"), &ctx)
        .await
        .unwrap();
    w.clock.advance(Duration::seconds(11));
    assert_eq!(w.registry.expire_leases().await.unwrap().expired, 1);
}

#[tokio::test]
async fn one_reaper_at_a_time() {
    let Some(w) = world().await else { return };
    let t = tenant("t1");
    w.registry
        .register(&t, registration("svc", "a"), &ChangeContext::default())
        .await
        .unwrap();
    w.clock.advance(Duration::seconds(11));
    // Another replica holds the reaper's advisory lock: this one skips the pass.
    let other = TestDb::connect(&w.db.app).await;
    let held: bool = other
        .query_one("SELECT pg_try_advisory_lock(x'00C37A114EA9'::bigint)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(held);
    assert_eq!(w.registry.expire_leases().await.unwrap().expired, 0);
    other
        .execute("SELECT pg_advisory_unlock(x'00C37A114EA9'::bigint)", &[])
        .await
        .unwrap();
    assert_eq!(w.registry.expire_leases().await.unwrap().expired, 1);
}
