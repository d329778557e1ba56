//! Leases with a manual clock, observed over HTTP while the real reaper task runs.

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    Backend, assert_error, eventually, manual_clock, on_both_backends, spawn_app_with,
};

/// The tenant of a test: `tenant1`, or a fresh one with a shared Redis
/// (each test keeps to its own keys there).
fn tenant_for(backend: Backend) -> String {
    match backend {
        Backend::PgDragonfly => format!("lease-{}", uuid::Uuid::new_v4().simple()),
        _ => "tenant1".to_owned(),
    }
}

async fn status_of(app: &crate::support::TestApp, tenant: &str, service: &str) -> Option<String> {
    let r = app.get_service(tenant, service).await;
    if r.status() == StatusCode::NOT_FOUND {
        return None;
    }
    let body: Value = r.json().await.unwrap();
    Some(body["instances"][0]["status"].as_str().unwrap().to_owned())
}

async fn expiry_turns_critical_then_removes_and_reregistering_restores(backend: Backend) {
    let clock = manual_clock();
    let Some(app) = spawn_app_with(backend, &[], Some(clock.clone())).await else {
        return;
    };
    let tenant = tenant_for(backend);
    let r = app
        .register(
            &tenant,
            json!({"service_name": "svc", "host": "h", "port": 1, "ttl_seconds": 10}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.settle(&tenant).await;

    // Within the ttl nothing changes, however often the reaper runs.
    clock.advance(Duration::seconds(9));
    let list: Value = app.list(&tenant, "").await.json().await.unwrap();
    let revision = list["revision"].clone();
    assert_eq!(
        status_of(&app, &tenant, "svc").await.as_deref(),
        Some("passing")
    );

    // No heartbeat for the ttl: critical.
    clock.advance(Duration::seconds(1));
    eventually(5, || async {
        (status_of(&app, &tenant, "svc").await.as_deref() == Some("critical")).then_some(())
    })
    .await;
    let list: Value = app
        .list(&tenant, "?status=critical")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["count"], 1);
    assert_ne!(list["revision"], revision);

    // Expired for deregister_after (3 x ttl): removed.
    clock.advance(Duration::seconds(30));
    eventually(5, || async {
        status_of(&app, &tenant, "svc")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // A heartbeat now is a 404: the client must register again...
    assert_error(
        app.heartbeat(&tenant, json!({"service_name": "svc"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // ...and registering again restores it.
    let r = app
        .register(
            &tenant,
            json!({"service_name": "svc", "host": "h", "port": 1, "ttl_seconds": 10}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        status_of(&app, &tenant, "svc").await.as_deref(),
        Some("passing")
    );
}

async fn heartbeats_keep_an_instance_passing_and_revive_a_critical_one(backend: Backend) {
    let clock = manual_clock();
    let Some(app) = spawn_app_with(backend, &[], Some(clock.clone())).await else {
        return;
    };
    let tenant = tenant_for(backend);
    for svc in ["kept", "lapsed"] {
        let r = app
            .register(
                &tenant,
                json!({"service_name": svc, "host": "h", "port": 1, "ttl_seconds": 10}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    app.settle(&tenant).await;
    for _ in 0..3 {
        clock.advance(Duration::seconds(6));
        let r = app
            .heartbeat(&tenant, json!({"service_name": "kept"}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // 18 s have passed: "lapsed" is critical, "kept" still passing.
    eventually(5, || async {
        (status_of(&app, &tenant, "lapsed").await.as_deref() == Some("critical")).then_some(())
    })
    .await;
    assert_eq!(
        status_of(&app, &tenant, "kept").await.as_deref(),
        Some("passing")
    );

    // A heartbeat on a critical (not yet removed) instance brings it back.
    let r = app
        .heartbeat(&tenant, json!({"service_name": "lapsed"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "passing");
    assert_eq!(
        status_of(&app, &tenant, "lapsed").await.as_deref(),
        Some("passing")
    );
}

on_both_backends!(
    expiry_turns_critical_then_removes_and_reregistering_restores,
    heartbeats_keep_an_instance_passing_and_revive_a_critical_one,
);

/// The same rules with the leases in Dragonfly (the machine's Redis).
mod pg_dragonfly {
    use crate::support::Backend;

    #[tokio::test]
    async fn expiry_turns_critical_then_removes_and_reregistering_restores() {
        super::expiry_turns_critical_then_removes_and_reregistering_restores(Backend::PgDragonfly)
            .await;
    }

    #[tokio::test]
    async fn heartbeats_keep_an_instance_passing_and_revive_a_critical_one() {
        super::heartbeats_keep_an_instance_passing_and_revive_a_critical_one(Backend::PgDragonfly)
            .await;
    }
}
