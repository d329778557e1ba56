//! Lease expiry driven by a manual clock, and the events each step publishes.

use chrono::Duration;
use hub_core::ChangeContext;
use hub_core::{EventKind, HealthStatus, Heartbeat, RegistryError};

use crate::support::{registration, service, tenant, world};

#[tokio::test]
async fn unrenewed_lease_turns_critical_then_is_removed() {
    let w = world();
    let mut events = w.bus.subscribe();
    let t = tenant("t1");
    w.registry
        .register(&t, registration("svc", "a", 10), &ChangeContext::default())
        .await
        .unwrap();

    // Just before the ttl: nothing happens.
    w.clock.advance(Duration::milliseconds(9_999));
    assert_eq!(w.registry.expire_leases().await.unwrap().expired, 0);

    // At the ttl: critical, once.
    w.clock.advance(Duration::milliseconds(1));
    let report = w.registry.expire_leases().await.unwrap();
    assert_eq!((report.expired, report.removed), (1, 0));
    assert_eq!(
        w.registry.expire_leases().await.unwrap().expired,
        0,
        "expired only once"
    );
    let got = w.registry.get(&t, &service("svc")).await.unwrap();
    assert_eq!(got.instances[0].status(), HealthStatus::Critical);

    // deregister_after = 3 x ttl after expiry: removed.
    w.clock.advance(Duration::seconds(29));
    assert_eq!(w.registry.expire_leases().await.unwrap().removed, 0);
    w.clock.advance(Duration::seconds(1));
    assert_eq!(w.registry.expire_leases().await.unwrap().removed, 1);
    assert!(matches!(
        w.registry.get(&t, &service("svc")).await,
        Err(RegistryError::NotFound(_))
    ));

    let kinds: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| (e.kind(), e.revision().get(), e.previous_status()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Registered, 1, None),
            (EventKind::StatusChanged, 2, Some(HealthStatus::Passing)),
            (EventKind::Expired, 3, None),
        ]
    );
}

#[tokio::test]
async fn heartbeat_restores_a_critical_instance_and_keeps_it_alive() {
    let w = world();
    let t = tenant("t1");
    w.registry
        .register(&t, registration("svc", "a", 10), &ChangeContext::default())
        .await
        .unwrap();
    w.clock.advance(Duration::seconds(10));
    w.registry.expire_leases().await.unwrap();

    let mut events = w.bus.subscribe();
    let renewed = w
        .registry
        .heartbeat(
            &t,
            &service("svc"),
            Some(&"a".try_into().unwrap()),
            &Heartbeat::default(),
            &ChangeContext::default(),
        )
        .await
        .unwrap();
    assert_eq!(renewed.status(), HealthStatus::Passing);
    assert_eq!(
        renewed.lease_expires_at(),
        w.clock_now() + Duration::seconds(10)
    );
    let e = events.try_recv().unwrap();
    assert_eq!(e.kind(), EventKind::StatusChanged);
    assert_eq!(e.previous_status(), Some(HealthStatus::Critical));

    // Heartbeats every 5 s keep it alive through 100 s.
    for _ in 0..20 {
        w.clock.advance(Duration::seconds(5));
        w.registry
            .heartbeat(
                &t,
                &service("svc"),
                Some(&"a".try_into().unwrap()),
                &Heartbeat::default(),
                &ChangeContext::default(),
            )
            .await
            .unwrap();
        assert_eq!(w.registry.expire_leases().await.unwrap().expired, 0);
    }
    // A renewal that does not change the status is no registry change.
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn heartbeat_may_report_warning_and_unknown_instances_are_not_found() {
    let w = world();
    let t = tenant("t1");
    w.registry
        .register(
            &t,
            registration("svc", "svc", 30),
            &ChangeContext::default(),
        )
        .await
        .unwrap();
    let warned = w
        .registry
        .heartbeat(
            &t,
            &service("svc"),
            None,
            &Heartbeat::new(HealthStatus::Warning, None),
            &ChangeContext::default(),
        )
        .await
        .unwrap();
    assert_eq!(warned.status(), HealthStatus::Warning);
    assert_eq!(
        warned.revision().get(),
        2,
        "a status change is a new revision"
    );

    for (tenant_name, svc, id) in [
        ("t1", "other", None),
        ("t1", "svc", Some("nope")),
        ("t2", "svc", None),
    ] {
        let id = id.map(|i| i.try_into().unwrap());
        let err = w
            .registry
            .heartbeat(
                &tenant(tenant_name),
                &service(svc),
                id.as_ref(),
                &Heartbeat::default(),
                &ChangeContext::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::NotFound(_)), "{err}");
    }
}

#[tokio::test]
async fn reregistering_restores_and_keeps_registered_at() {
    let w = world();
    let t = tenant("t1");
    let first = w
        .registry
        .register(&t, registration("svc", "a", 5), &ChangeContext::default())
        .await
        .unwrap();
    assert!(first.created);
    w.clock.advance(Duration::seconds(6));
    w.registry.expire_leases().await.unwrap();
    let again = w
        .registry
        .register(&t, registration("svc", "a", 5), &ChangeContext::default())
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.instance.status(), HealthStatus::Passing);
    assert_eq!(
        again.instance.registered_at(),
        first.instance.registered_at()
    );
    assert!(again.instance.revision() > first.instance.revision());
}

#[tokio::test]
async fn a_heartbeat_just_before_expiry_wins() {
    let w = world();
    let t = tenant("t1");
    w.registry
        .register(&t, registration("svc", "a", 10), &ChangeContext::default())
        .await
        .unwrap();
    w.clock.advance(Duration::seconds(9));
    w.registry
        .heartbeat(
            &t,
            &service("svc"),
            Some(&"a".try_into().unwrap()),
            &Heartbeat::default(),
            &ChangeContext::default(),
        )
        .await
        .unwrap();
    w.clock.advance(Duration::seconds(9));
    assert_eq!(w.registry.expire_leases().await.unwrap().expired, 0);
}

trait ClockNow {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc>;
}

impl ClockNow for crate::support::World {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use hub_core::ports::Clock;
        self.clock.now()
    }
}
