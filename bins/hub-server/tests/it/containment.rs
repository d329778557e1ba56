//! Containment over HTTP: bounded list pages in both modes; in PostgreSQL mode a stored row that cannot be read harms only itself.

use std::collections::HashSet;

use chrono::Duration;
use hub_core::ports::Clock;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    Backend, TestApp, assert_error, eventually, manual_clock, on_both_backends, spawn_app,
    spawn_app_with,
};

/// Instances registered for the byte-budget test, and their metadata size:
/// together about 4.6 MB, more than one page's 4 MiB.
const LARGE_INSTANCES: usize = 300;
const LARGE_METADATA: usize = 15_000;

async fn list_pages_stop_at_the_byte_budget_and_the_cursor_continues(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let blob = "x".repeat(LARGE_METADATA);
    for i in 0..LARGE_INSTANCES {
        let r = app
            .register(
                "tenant1",
                json!({"service_name": "big", "instance_id": format!("i{i:04}"), "host": "10.0.0.1",
                       "port": 80, "metadata": {"blob": blob}}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let mut seen = HashSet::new();
    let mut query = "?limit=10000".to_owned();
    let mut pages = Vec::new();
    loop {
        let r = app.list("tenant1", &query).await;
        assert_eq!(r.status(), StatusCode::OK);
        let bytes = r.bytes().await.unwrap();
        assert!(
            bytes.len() < 4 * 1024 * 1024 + 64 * 1024,
            "a page of {} bytes",
            bytes.len()
        );
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let services = body["services"].as_array().unwrap();
        assert_eq!(body["count"], services.len());
        pages.push(services.len());
        for s in services {
            assert!(seen.insert(s["instance_id"].as_str().unwrap().to_owned()));
        }
        match body.get("next_cursor").and_then(Value::as_str) {
            Some(cursor) => query = format!("?limit=10000&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), LARGE_INSTANCES, "every instance, once");
    assert!(pages.len() >= 2, "the budget cut the page: {pages:?}");
    assert!(pages[0] > LARGE_INSTANCES / 2, "pages of {pages:?}");
}

on_both_backends!(list_pages_stop_at_the_byte_budget_and_the_cursor_continues);

/// The instances of `service` that tenant `tenant` can read, and how many it cannot.
async fn lookup(app: &TestApp, tenant: &str, service: &str) -> (Vec<Value>, u64) {
    let r = app.get_service(tenant, service).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    (
        body["instances"].as_array().unwrap().clone(),
        body["skipped"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn an_unreadable_row_is_left_out_refused_by_heartbeats_and_deletable() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let db = app.db.as_ref().unwrap();
    app.register_ok("tenant1", "poison", "good").await;
    let lease = chrono::Utc::now() + Duration::seconds(600);
    db.insert_unreadable("tenant1", "poison", "bad", lease)
        .await;

    // Lists and lookups answer, leaving the row out and saying so.
    let r = app.list("tenant1", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["count"].clone(), body["skipped"].clone()),
        (json!(1), json!(1))
    );
    let (instances, skipped) = lookup(&app, "tenant1", "poison").await;
    assert_eq!((instances.len(), skipped), (1, 1));
    // Nothing is said where nothing was left out.
    let clean: Value = app.list("tenant2", "").await.json().await.unwrap();
    assert!(clean.get("skipped").is_none(), "{clean}");

    // A heartbeat on it is a clear conflict, not a 500.
    let message = assert_error(
        app.heartbeat(
            "tenant1",
            json!({"service_name": "poison", "instance_id": "bad"}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert!(message.contains("deregister it"), "{message}");

    // The tenant removes it, by id and with its service.
    let r = app
        .deregister("tenant1", "poison", "?instance_id=bad")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["deregistered"], 1);
    db.insert_unreadable("tenant1", "poison", "bad", lease)
        .await;
    let r = app.deregister("tenant1", "poison", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["deregistered"], 2);
    assert_eq!(
        app.get_service("tenant1", "poison").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_reaper_expires_other_tenants_past_an_unreadable_row() {
    let clock = manual_clock();
    let Some(app) = spawn_app_with(Backend::Postgres, &[], Some(clock.clone())).await else {
        return;
    };
    let db = app.db.as_ref().unwrap();
    // Tenant "aaa" comes first in every pass and holds an unreadable row
    // whose lease ran out; tenant "bbb" holds a plain instance.
    for tenant in ["aaa", "bbb"] {
        let r = app
            .register(
                tenant,
                json!({"service_name": "svc", "instance_id": "i1", "host": "h", "port": 1, "ttl_seconds": 10}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    db.insert_unreadable("aaa", "svc", "poison", clock.now())
        .await;
    clock.advance(Duration::seconds(11));
    for tenant in ["bbb", "aaa"] {
        eventually(5, || async {
            let (instances, _) = lookup(&app, tenant, "svc").await;
            (instances[0]["status"] == "critical").then_some(())
        })
        .await;
    }
    // Expired for 3 x ttl: removed, the unreadable row as well.
    clock.advance(Duration::seconds(40));
    for tenant in ["bbb", "aaa"] {
        eventually(5, || async {
            (app.get_service(tenant, "svc").await.status() == StatusCode::NOT_FOUND).then_some(())
        })
        .await;
    }
}
