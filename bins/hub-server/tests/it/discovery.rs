//! Discovery contract: register, update, get, list with filters and paging, deregister, heartbeat; isolation between tenants.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Backend, assert_error, on_both_backends, spawn_app};

async fn register_creates_then_updates_with_the_documented_shape(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let r = app
        .register(
            "tenant1",
            json!({
                "name": "api-gateway", "host": "::1", "port": 8000, "protocol": "https",
                "health_endpoint": "/healthz", "version": "1.2.3", "tags": ["edge", "eu"],
                "metadata": {"zone": "a", "weight": 3}, "ttl_seconds": 15, "unknown": "ignored"
            }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["x-tenant-id"], "tenant1");
    let created: Value = r.json().await.unwrap();
    let keys: BTreeSet<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "tenant_id",
        "service_name",
        "instance_id",
        "host",
        "port",
        "protocol",
        "url",
        "health_endpoint",
        "version",
        "tags",
        "metadata",
        "ttl_seconds",
        "status",
        "registered_at",
        "last_heartbeat",
        "lease_expires_at",
        "revision",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
    assert_eq!(created["tenant_id"], "tenant1");
    assert_eq!(created["service_name"], "api-gateway");
    assert_eq!(
        created["instance_id"], "api-gateway",
        "defaults to the service name"
    );
    assert_eq!(created["url"], "https://[::1]:8000");
    assert_eq!(created["status"], "passing");
    assert_eq!(created["tags"], json!(["edge", "eu"]));
    assert_eq!(created["metadata"], json!({"zone": "a", "weight": 3}));
    assert_eq!(created["ttl_seconds"], 15);
    assert_eq!(created["revision"], 1);
    let registered =
        chrono::DateTime::parse_from_rfc3339(created["registered_at"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(created["lease_expires_at"].as_str().unwrap())
            .unwrap();
    assert_eq!((expires - registered).num_seconds(), 15);
    assert!(created["registered_at"].as_str().unwrap().ends_with('Z'));

    // Same name again: an update (200), same record, new revision, registered_at kept.
    let r = app
        .register(
            "tenant1",
            json!({"service_name": "api-gateway", "host": "10.0.0.2", "port": 8001}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["url"], "http://10.0.0.2:8001");
    assert_eq!(updated["revision"], 2);
    assert_eq!(updated["registered_at"], created["registered_at"]);
    assert_eq!(app.list_ids("tenant1").await.len(), 1);
}

async fn get_lists_instances_of_one_service(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for i in ["i2", "i1", "i3"] {
        app.register_ok("tenant1", "billing", i).await;
    }
    app.register_ok("tenant1", "other", "o1").await;
    let r = app.get_service("tenant1", "billing").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["service_name"], "billing");
    assert_eq!(body["revision"], 4);
    let ids: Vec<&str> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["i1", "i2", "i3"]);
    assert_error(
        app.get_service("tenant1", "missing").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

async fn list_filters_and_pages(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for (svc, inst, tags) in [
        ("api", "a1", json!(["eu", "blue"])),
        ("api", "a2", json!(["eu"])),
        ("db", "d1", json!(["eu", "blue"])),
        ("mq", "m1", json!([])),
    ] {
        let r = app
            .register(
                "tenant1",
                json!({"service_name": svc, "instance_id": inst, "host": "h", "port": 1, "tags": tags}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let hb = app
        .heartbeat(
            "tenant1",
            json!({"service_name": "mq", "instance_id": "m1", "status": "warning"}),
        )
        .await;
    assert_eq!(hb.status(), StatusCode::OK);

    let ids = |query: &'static str| {
        let app = &app;
        async move {
            let r = app.list("tenant1", query).await;
            assert_eq!(r.status(), StatusCode::OK, "{query}");
            let body: Value = r.json().await.unwrap();
            let ids: Vec<String> = body["services"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["instance_id"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(body["count"], ids.len());
            ids
        }
    };
    assert_eq!(ids("").await, ["a1", "a2", "d1", "m1"]);
    assert_eq!(ids("?service_name=api").await, ["a1", "a2"]);
    assert_eq!(ids("?tag=blue").await, ["a1", "d1"]);
    assert_eq!(ids("?tag=blue&tag=eu").await, ["a1", "d1"]);
    assert_eq!(ids("?tag=eu&service_name=api").await, ["a1", "a2"]);
    assert_eq!(ids("?status=warning").await, ["m1"]);
    assert_eq!(ids("?status=passing&tag=eu").await, ["a1", "a2", "d1"]);
    assert!(ids("?tag=none").await.is_empty());

    // Paging: limit 3 then the cursor; the last page has no cursor.
    let first: Value = app.list("tenant1", "?limit=3").await.json().await.unwrap();
    assert_eq!(first["count"], 3);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .list("tenant1", &format!("?limit=3&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["count"], 1);
    assert_eq!(second["services"][0]["instance_id"], "m1");
    assert!(second.get("next_cursor").is_none());
    assert_eq!(first["revision"], 5);
}

async fn deregister_one_instance_or_the_whole_service(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for i in ["i1", "i2", "i3"] {
        app.register_ok("tenant1", "svc", i).await;
    }
    let r = app.deregister("tenant1", "svc", "?instance_id=i2").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"deregistered": 1}));
    assert_error(
        app.deregister("tenant1", "svc", "?instance_id=i2").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    let r = app.deregister("tenant1", "svc", "").await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"deregistered": 2}));
    assert_error(
        app.deregister("tenant1", "svc", "").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get_service("tenant1", "svc").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(app.list_ids("tenant1").await.is_empty());
}

async fn heartbeat_renews_and_404_means_register_again(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let created = app.register_ok("tenant1", "svc", "svc").await;
    let r = app
        .heartbeat("tenant1", json!({"service_name": "svc"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "passing");
    assert_eq!(body["instance_id"], "svc");
    assert!(
        body["lease_expires_at"].as_str().unwrap() >= created["lease_expires_at"].as_str().unwrap()
    );

    let r = app
        .heartbeat(
            "tenant1",
            json!({"name": "svc", "metrics": {"response_time_ms": 12.5, "cpu_usage": 40, "memory_usage": 512, "error_rate": 0.01}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    let message = assert_error(
        app.heartbeat("tenant1", json!({"service_name": "ghost"}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(message.contains("register"), "{message}");
    assert_error(
        app.heartbeat(
            "tenant1",
            json!({"service_name": "svc", "instance_id": "other"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

async fn tenants_never_see_or_touch_each_other(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    // Same service and instance names in both tenants: where a leak would hide.
    app.register_ok("tenant1", "shared", "i1").await;
    app.register_ok("tenant1", "only-t1", "x").await;
    app.register_ok("tenant2", "shared", "i2").await;

    assert_eq!(
        app.list_ids("tenant2").await,
        vec![("shared".to_string(), "i2".to_string())]
    );
    for query in [
        "?service_name=only-t1",
        "?tag=anything",
        "?status=passing&service_name=shared",
        "?limit=1",
    ] {
        let body: Value = app.list("tenant2", query).await.json().await.unwrap();
        for i in body["services"].as_array().unwrap() {
            assert_eq!(i["tenant_id"], "tenant2", "{query}");
        }
    }
    // A cursor minted for tenant1 only positions within tenant2's own data.
    let t1_page: Value = app.list("tenant1", "?limit=1").await.json().await.unwrap();
    let cursor = t1_page["next_cursor"].as_str().unwrap();
    let body: Value = app
        .list("tenant2", &format!("?cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    for i in body["services"].as_array().unwrap() {
        assert_eq!(i["tenant_id"], "tenant2");
    }

    assert_error(
        app.get_service("tenant2", "only-t1").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let shared: Value = app
        .get_service("tenant2", "shared")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shared["instances"].as_array().unwrap().len(), 1);
    assert_eq!(shared["instances"][0]["instance_id"], "i2");

    // tenant2 can neither deregister nor heartbeat tenant1's instances.
    assert_error(
        app.deregister("tenant2", "only-t1", "").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.deregister("tenant2", "shared", "?instance_id=i1").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.heartbeat(
            "tenant2",
            json!({"service_name": "shared", "instance_id": "i1"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // Deregistering tenant2's whole "shared" service leaves tenant1's alone.
    let r = app.deregister("tenant2", "shared", "").await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"deregistered": 1}));
    assert_eq!(
        app.list_ids("tenant1").await,
        vec![
            ("only-t1".to_string(), "x".to_string()),
            ("shared".to_string(), "i1".to_string())
        ]
    );
    // Revisions are per tenant: tenant2's activity does not move tenant1's.
    let t1: Value = app.list("tenant1", "").await.json().await.unwrap();
    assert_eq!(t1["revision"], 2);
}

async fn lookups_reflect_every_change_at_once(backend: Backend) {
    // Lookups are served from a per-worker cache of serialized answers; each
    // kind of change must still show on the very next lookup.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let get = |tenant: &'static str| {
        let app = &app;
        async move {
            let r = app.get_service(tenant, "svc").await;
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    app.register_ok("tenant1", "svc", "a").await;
    app.register_ok("tenant2", "svc", "b").await;
    let first = get("tenant1").await;
    assert_eq!(
        get("tenant1").await,
        first,
        "unchanged service, same answer"
    );
    assert_eq!(
        get("tenant2").await["instances"][0]["instance_id"],
        "b",
        "the cache is per tenant"
    );

    // A plain renewal moves last_heartbeat and the lease, nothing else.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let hb = app
        .heartbeat(
            "tenant1",
            json!({"service_name": "svc", "instance_id": "a"}),
        )
        .await;
    assert_eq!(hb.status(), StatusCode::OK);
    let renewed = get("tenant1").await;
    assert_ne!(
        renewed["instances"][0]["last_heartbeat"],
        first["instances"][0]["last_heartbeat"]
    );
    assert_eq!(renewed["revision"], first["revision"]);

    let hb = app
        .heartbeat(
            "tenant1",
            json!({"service_name": "svc", "instance_id": "a", "status": "warning"}),
        )
        .await;
    assert_eq!(hb.status(), StatusCode::OK);
    assert_eq!(get("tenant1").await["instances"][0]["status"], "warning");

    let r = app
        .register(
            "tenant1",
            json!({"service_name": "svc", "instance_id": "a", "host": "10.9.9.9", "port": 1234}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        get("tenant1").await["instances"][0]["url"],
        "http://10.9.9.9:1234"
    );

    app.register_ok("tenant1", "svc", "c").await;
    assert_eq!(
        get("tenant1").await["instances"].as_array().unwrap().len(),
        2
    );
    let r = app.deregister("tenant1", "svc", "?instance_id=a").await;
    assert_eq!(r.status(), StatusCode::OK);
    let last = get("tenant1").await;
    assert_eq!(last["instances"].as_array().unwrap().len(), 1);
    assert_eq!(last["instances"][0]["instance_id"], "c");
}

on_both_backends!(
    register_creates_then_updates_with_the_documented_shape,
    get_lists_instances_of_one_service,
    list_filters_and_pages,
    deregister_one_instance_or_the_whole_service,
    heartbeat_renews_and_404_means_register_again,
    tenants_never_see_or_touch_each_other,
    lookups_reflect_every_change_at_once,
);
