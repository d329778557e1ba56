//! Exact round trip: what the API accepts reads back unchanged in meaning on both stores, and a differential property test that both stores answer alike.

use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::support::{Backend, TestApp, on_both_backends, spawn_app};

/// Registers `metadata` for `service` and checks that every read (register
/// answer, get, list, heartbeat, delete) succeeds and returns it unchanged.
async fn round_trips(app: &TestApp, tenant: &str, service: &str, metadata: Value) {
    let r = app
        .register(
            tenant,
            json!({"service_name": service, "host": "10.0.0.1", "port": 80, "metadata": metadata}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "register");
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["metadata"], metadata, "register answer");

    let r = app.get_service(tenant, service).await;
    assert_eq!(r.status(), StatusCode::OK, "get");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["instances"][0]["metadata"], metadata, "get");

    let r = app.list(tenant, "").await;
    assert_eq!(r.status(), StatusCode::OK, "list");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["services"][0]["metadata"], metadata, "list");

    let r = app
        .heartbeat(
            tenant,
            json!({"service_name": service, "status": "warning",
                   "metrics": {"response_time_ms": 1.7976931348623157e308, "memory_usage": 5e-324}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "heartbeat");
    let r = app.get_service(tenant, service).await;
    assert_eq!(r.status(), StatusCode::OK, "get after heartbeat");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["instances"][0]["metadata"], metadata,
        "after heartbeat"
    );

    let r = app.deregister(tenant, service, "").await;
    assert_eq!(r.status(), StatusCode::OK, "delete");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["deregistered"], 1);
    assert!(app.list_ids(tenant).await.is_empty());
}

/// The poison number: PostgreSQL keeps it exactly and prints it as a
/// 309-digit integer, which serde_json could not read back (500 on every read).
async fn the_largest_double_reads_back(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    round_trips(&app, "tb", "poison", json!({"x": f64::MAX})).await;
    round_trips(
        &app,
        "tb",
        "tiny",
        json!({"x": 5e-324, "y": -1.7976931348623157e308}),
    )
    .await;
}

/// The second way in: 900 entries of 1.7e308 (15.3 KB) used to read back as
/// `1.7000000000000001e+308`, 27.9 KB, over the 16 KiB limit re-checked on read.
async fn a_wide_object_of_large_numbers_reads_back(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let metadata: Map<String, Value> = (0..900)
        .map(|i| (format!("key{i:03}"), json!(1.7e308)))
        .collect();
    let metadata = Value::Object(metadata);
    assert!(serde_json::to_vec(&metadata).unwrap().len() > 15_000);
    round_trips(&app, "tb", "wide", metadata).await;
}

on_both_backends!(
    the_largest_double_reads_back,
    a_wide_object_of_large_numbers_reads_back,
);
