//! Leases with a manual clock, observed over HTTP while the real reaper task runs.

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    Backend, assert_error, eventually, manual_clock, on_both_backends, spawn_app_with,
};

async fn status_of(app: &crate::support::TestApp, service: &str) -> Option<String> {
    let r = app.get_service("tenant1", service).await;
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
    let r = app
        .register(
            "tenant1",
            json!({"service_name": "svc", "host": "h", "port": 1, "ttl_seconds": 10}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // Within the ttl nothing changes, however often the reaper runs.
    clock.advance(Duration::seconds(9));
    let list: Value = app.list("tenant1", "").await.json().await.unwrap();
    let revision = list["revision"].clone();
    assert_eq!(status_of(&app, "svc").await.as_deref(), Some("passing"));

    // No heartbeat for the ttl: critical.
    clock.advance(Duration::seconds(1));
    eventually(5, || async {
        (status_of(&app, "svc").await.as_deref() == Some("critical")).then_some(())
    })
    .await;
    let list: Value = app
        .list("tenant1", "?status=critical")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["count"], 1);
    assert_ne!(list["revision"], revision);

    // Expired for deregister_after (3 x ttl): removed.
    clock.advance(Duration::seconds(30));
    eventually(5, || async {
        status_of(&app, "svc").await.is_none().then_some(())
    })
    .await;

    // A heartbeat now is a 404: the client must register again...
    assert_error(
        app.heartbeat("tenant1", json!({"service_name": "svc"}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // ...and registering again restores it.
    let r = app
        .register(
            "tenant1",
            json!({"service_name": "svc", "host": "h", "port": 1, "ttl_seconds": 10}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(status_of(&app, "svc").await.as_deref(), Some("passing"));
}

async fn heartbeats_keep_an_instance_passing_and_revive_a_critical_one(backend: Backend) {
    let clock = manual_clock();
    let Some(app) = spawn_app_with(backend, &[], Some(clock.clone())).await else {
        return;
    };
    for svc in ["kept", "lapsed"] {
        let r = app
            .register(
                "tenant1",
                json!({"service_name": svc, "host": "h", "port": 1, "ttl_seconds": 10}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    for _ in 0..3 {
        clock.advance(Duration::seconds(6));
        let r = app
            .heartbeat("tenant1", json!({"service_name": "kept"}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // 18 s have passed: "lapsed" is critical, "kept" still passing.
    eventually(5, || async {
        (status_of(&app, "lapsed").await.as_deref() == Some("critical")).then_some(())
    })
    .await;
    assert_eq!(status_of(&app, "kept").await.as_deref(), Some("passing"));

    // A heartbeat on a critical (not yet removed) instance brings it back.
    let r = app
        .heartbeat("tenant1", json!({"service_name": "lapsed"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "passing");
    assert_eq!(status_of(&app, "lapsed").await.as_deref(), Some("passing"));
}

on_both_backends!(
    expiry_turns_critical_then_removes_and_reregistering_restores,
    heartbeats_keep_an_instance_passing_and_revive_a_critical_one,
);
