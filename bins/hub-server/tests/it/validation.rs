//! Bad input: each case is a JSON error with the right status, and stored data is unchanged afterwards.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backend, OPERATOR_KEY, TestApp, assert_error, on_both_backends, spawn_app};

const REGISTER: &str = "/api/v1/discovery/register";

fn base() -> Value {
    json!({"service_name": "victim", "host": "10.0.0.1", "port": 8080, "metadata": {"v": 1}})
}

fn with(field: &str, value: Value) -> Value {
    let mut body = base();
    body[field] = value;
    body
}

/// A metadata object nested `levels` deep.
fn nested(levels: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..levels {
        v = json!({ "a": v });
    }
    v
}

async fn snapshot(app: &TestApp) -> Value {
    let r = app.get_service("tenant1", "victim").await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut body: Value = r.json().await.unwrap();
    body.as_object_mut().unwrap().remove("revision");
    body
}

async fn invalid_registrations_are_422_naming_the_field_and_change_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    assert_eq!(
        app.register("tenant1", base()).await.status(),
        StatusCode::CREATED
    );
    let before = snapshot(&app).await;

    let cases: Vec<(Value, &str)> = vec![
        (with("port", json!(0)), "port"),
        (with("port", json!(65536)), "port"),
        (with("port", json!(-1)), "port"),
        (with("port", json!("80")), "port"),
        (with("port", json!(80.5)), "port"),
        (with("host", json!("")), "host"),
        (with("host", json!("h".repeat(256))), "host"),
        (with("host", json!("bad host")), "host"),
        (with("service_name", json!("has spaces")), "service_name"),
        (with("service_name", json!("s".repeat(300))), "service_name"),
        (with("metadata", json!([1, 2, 3])), "metadata"),
        (with("metadata", json!("text")), "metadata"),
        (with("metadata", json!({"k": "nul\0byte"})), "metadata"),
        (
            with("metadata", json!({"big": "x".repeat(17 * 1024)})),
            "metadata",
        ),
        // 33 levels: accepted before, then unreadable in list responses and
        // envelopes once near serde_json's 128-level limit.
        (with("metadata", nested(33)), "metadata"),
        (with("metadata", nested(126)), "metadata"),
        (with("ttl_seconds", json!(0)), "ttl_seconds"),
        (with("ttl_seconds", json!(100000)), "ttl_seconds"),
        (with("protocol", json!("ftp")), "protocol"),
        (with("tags", json!(["ok", ""])), "tags[1]"),
        (with("tags", json!("not-a-list")), "tags"),
        (with("instance_id", json!("a b")), "instance_id"),
        // Invisible characters: `prod\u{200b}` would be stored and never match `prod`.
        (with("tags", json!(["prod\u{200b}"])), "tags[0]"),
        (with("tags", json!(["ok", "\u{202e}dorp"])), "tags[1]"),
        (with("tags", json!(["\u{feff}"])), "tags[0]"),
        (with("tags", json!(["a\u{2066}b"])), "tags[0]"),
        (with("tags", json!(["a\u{e0041}"])), "tags[0]"),
        (with("tags", json!(["a\u{ad}b"])), "tags[0]"),
        (with("version", json!("1.0\u{200d}")), "version"),
        (with("version", json!("\u{061c}1.0")), "version"),
        (with("version", json!("1.0\u{200e}")), "version"),
        (
            with("health_endpoint", json!("/health\u{2060}")),
            "health_endpoint",
        ),
        (
            with("health_endpoint", json!("/h\u{202a}x")),
            "health_endpoint",
        ),
        (
            with("health_endpoint", json!("/h\u{200f}")),
            "health_endpoint",
        ),
        // `.` and `..` cannot be addressed by clients that normalise paths.
        (with("service_name", json!(".")), "service_name"),
        (with("service_name", json!("..")), "service_name"),
        (with("instance_id", json!(".")), "instance_id"),
        (with("instance_id", json!("..")), "instance_id"),
        (json!({"host": "h", "port": 1}), "service_name"),
        (json!({"service_name": "victim", "port": 1}), "host"),
        (json!([1, 2]), "body"),
    ];
    for (body, field) in cases {
        let r = app.register("tenant1", body.clone()).await;
        let message = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(
            message.starts_with(field) || message.contains(&format!("`{field}`")),
            "message {message:?} should name {field} (body {body})"
        );
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "a rejected update must not change the stored instance"
    );
    assert_eq!(app.list_ids("tenant1").await.len(), 1);
}

async fn unreadable_bodies_get_400_413_415(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    assert_eq!(
        app.register("tenant1", base()).await.status(),
        StatusCode::CREATED
    );
    let before = snapshot(&app).await;
    let post = || {
        app.client
            .post(app.url(REGISTER))
            .header("X-API-Key", OPERATOR_KEY)
            .header("X-Tenant-ID", "tenant1")
    };

    for raw in ["{\"service_name\": \"victim\",", "not json", "{} {}", ""] {
        let r = post()
            .header("Content-Type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_error(r, StatusCode::BAD_REQUEST, "malformed_json").await;
    }

    let r = post().body(base().to_string()).send().await.unwrap();
    assert_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let r = post()
        .header("Content-Type", "text/plain")
        .body(base().to_string())
        .send()
        .await
        .unwrap();
    assert_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    // 1 MiB of valid JSON: refused by size before it is parsed.
    let mut huge = base();
    huge["metadata"] = json!({"blob": "x".repeat(1024 * 1024)});
    let r = post().json(&huge).send().await.unwrap();
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    // A content type with parameters is still JSON.
    let r = post()
        .header("Content-Type", "application/json; charset=utf-8")
        .body(with("port", json!(9090)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut after = snapshot(&app).await;
    assert_eq!(after["instances"][0]["port"], 9090);
    after["instances"][0]["port"] = before["instances"][0]["port"].clone();
    assert_eq!(
        after["instances"][0]["metadata"],
        before["instances"][0]["metadata"]
    );
}

async fn bad_tenant_headers_are_400_never_replaced(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_ok("system", "victim", "victim").await;
    for bad in [
        "tenant.1",
        "tenant 1",
        &"t".repeat(101),
        "t1' OR '1'='1",
        "t1'; DROP TABLE service_registry; --",
        "",
    ] {
        let r = app
            .request(Method::GET, "/api/v1/discovery/services", None)
            .header("X-Tenant-ID", bad)
            .send()
            .await
            .unwrap();
        assert!(
            r.headers().get("x-tenant-id").is_none(),
            "an invalid tenant is not echoed"
        );
        assert_error(r, StatusCode::BAD_REQUEST, "invalid_tenant_id").await;

        let r = app
            .request(Method::POST, REGISTER, None)
            .header("X-Tenant-ID", bad)
            .json(&base())
            .send()
            .await
            .unwrap();
        assert_error(r, StatusCode::BAD_REQUEST, "invalid_tenant_id").await;
    }
    // Non-UTF-8 bytes in the header.
    let r = app
        .request(Method::GET, "/api/v1/discovery/services", None)
        .header(
            "X-Tenant-ID",
            reqwest::header::HeaderValue::from_bytes(b"t\xff1").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_header").await;
    // Nothing landed in `system` (the default) by way of a bad header.
    assert_eq!(
        app.list_ids("system").await,
        vec![("victim".into(), "victim".into())]
    );
}

async fn unknown_routes_and_wrong_methods_are_json(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for path in ["/nope", "/api/v1/discovery", "/api/v2/discovery/services"] {
        let r = app.request(Method::GET, path, None).send().await.unwrap();
        assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    for (method, path) in [
        (Method::GET, REGISTER),
        (Method::PUT, "/api/v1/discovery/services"),
        (Method::POST, "/api/v1/discovery/services/svc"),
        (Method::DELETE, "/health"),
    ] {
        let r = app.request(method, path, None).send().await.unwrap();
        assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    }
}

async fn bad_query_parameters_are_422(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=10001", "limit"),
        ("?limit=ten", "limit"),
        ("?status=dead", "status"),
        ("?service_name=a%20b", "service_name"),
        ("?cursor=zzzz", "cursor"),
        // Query values are checked like body values: a tag that could never
        // be stored (NUL was a 500 in PostgreSQL mode) is refused, in both modes.
        ("?tag=%00", "tag"),
        ("?tag=a%00b", "tag"),
        ("?tag=prod%E2%80%8B", "tag"),
        ("?tag=%E2%80%AEx", "tag"),
        ("?tag=%01", "tag"),
        ("?tag=", "tag"),
        ("?tag=ok&tag=%7F", "tag"),
        ("?status=%00", "status"),
        ("?status=passing%E2%80%8B", "status"),
        ("?service_name=%00", "service_name"),
        ("?service_name=a%E2%80%8Fb", "service_name"),
        ("?service_name=.", "service_name"),
        ("?service_name=..", "service_name"),
        ("?cursor=%00", "cursor"),
        ("?cursor=61%00", "cursor"),
    ] {
        let message = assert_error(
            app.list("tenant1", query).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(message.starts_with(field), "{query}: {message}");
    }
    for query in [
        "?instance_id=a%20b",
        "?instance_id=%00",
        "?instance_id=a%E2%80%8B",
        "?instance_id=.",
        "?instance_id=..",
    ] {
        let r = app.deregister("tenant1", "svc", query).await;
        let message = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(message.starts_with("instance_id"), "{query}: {message}");
    }
    let r = app.get_service("tenant1", "bad%20name").await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}

async fn bad_heartbeats_are_rejected(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_ok("tenant1", "svc", "svc").await;
    for (body, field) in [
        (json!({"service_name": "svc", "status": "dead"}), "status"),
        (
            json!({"service_name": "svc", "metrics": {"cpu_usage": 250}}),
            "metrics.cpu_usage",
        ),
        (
            json!({"service_name": "svc", "metrics": {"error_rate": -0.1}}),
            "metrics.error_rate",
        ),
        (
            json!({"service_name": "svc", "metrics": {"memory_usage": "lots"}}),
            "metrics.memory_usage",
        ),
        (json!({"instance_id": "svc"}), "service_name"),
    ] {
        let message = assert_error(
            app.heartbeat("tenant1", body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(message.contains(field), "{body}: {message}");
    }
    let r = app.get_service("tenant1", "svc").await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["instances"][0]["status"], "passing");
}

on_both_backends!(
    invalid_registrations_are_422_naming_the_field_and_change_nothing,
    unreadable_bodies_get_400_413_415,
    bad_tenant_headers_are_400_never_replaced,
    unknown_routes_and_wrong_methods_are_json,
    bad_query_parameters_are_422,
    bad_heartbeats_are_rejected,
);
