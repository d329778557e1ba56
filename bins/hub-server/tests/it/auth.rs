//! Authentication and tenant context: keys, bound tenants, public paths, DISABLE_AUTH.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    BOUND_KEY, Backend, OPERATOR_KEY, assert_error, env, on_both_backends, spawn_app,
    spawn_app_with,
};

const SERVICES: &str = "/api/v1/discovery/services";

async fn missing_and_unknown_keys_are_401_with_www_authenticate(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let r = app.client.get(app.url(SERVICES)).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "ApiKey");
    assert_eq!(r.headers()["x-tenant-id"], "system");
    assert_error(r, StatusCode::UNAUTHORIZED, "missing_api_key").await;

    for bad in [
        "wrong",
        "test-operator-ke",
        "test-operator-keyy",
        "TEST-OPERATOR-KEY",
    ] {
        let r = app
            .client
            .get(app.url(SERVICES))
            .header("X-API-Key", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["www-authenticate"], "ApiKey");
        assert_error(r, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    }
    // Writes are refused the same way, and nothing is stored.
    let r = app
        .client
        .post(app.url("/api/v1/discovery/register"))
        .json(&json!({"service_name": "x", "host": "h", "port": 1}))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "missing_api_key").await;
    assert!(app.list_ids("system").await.is_empty());
}

async fn bound_key_is_limited_to_its_tenants(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bound = |tenant: Option<&str>| {
        let mut r = app
            .client
            .post(app.url("/api/v1/discovery/register"))
            .header("X-API-Key", BOUND_KEY);
        if let Some(t) = tenant {
            r = r.header("X-Tenant-ID", t);
        }
        r
    };
    let body = json!({"service_name": "svc", "host": "10.0.0.1", "port": 80});

    // Foreign tenant: 403, nothing stored there.
    let r = bound(Some("tenant2")).json(&body).send().await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "tenant_forbidden").await;
    let r = bound(Some("system")).json(&body).send().await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "tenant_forbidden").await;
    assert!(app.list_ids("tenant2").await.is_empty());

    // No header: acts for its first tenant.
    let r = bound(None).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["x-tenant-id"], "tenant1");
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["tenant_id"], "tenant1");
    assert_eq!(
        app.list_ids("tenant1").await,
        vec![("svc".into(), "svc".into())]
    );
    assert!(app.list_ids("system").await.is_empty());

    // Its second tenant is allowed.
    let r = bound(Some("tenant3")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

async fn operator_key_acts_for_any_tenant_and_defaults_to_system(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for tenant in ["tenant1", "tenant2", "another_one-9"] {
        app.register_ok(tenant, "svc", "i1").await;
        assert_eq!(app.list_ids(tenant).await.len(), 1);
    }
    let r = app
        .client
        .post(app.url("/api/v1/discovery/register"))
        .header("X-API-Key", OPERATOR_KEY)
        .json(&json!({"service_name": "sys", "host": "h", "port": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["x-tenant-id"], "system");
    assert_eq!(
        app.list_ids("system").await,
        vec![("sys".into(), "sys".into())]
    );
}

async fn public_paths_need_no_key(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], "central-hub");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    let r = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A wrong key on a public path is ignored, not rejected.
    let r = app
        .client
        .get(app.url("/health"))
        .header("X-API-Key", "nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn disable_auth_opens_everything(backend: Backend) {
    let Some(app) = spawn_app_with(backend, &[("DISABLE_AUTH", "true")], None).await else {
        return;
    };
    let r = app
        .client
        .post(app.url("/api/v1/discovery/register"))
        .header("X-Tenant-ID", "tenant7")
        .json(&json!({"service_name": "svc", "host": "h", "port": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .client
        .get(app.url(SERVICES))
        .header("X-Tenant-ID", "tenant7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["count"], 1);
    // Even a key that is configured nowhere is accepted: there is no auth.
    let r = app
        .client
        .get(app.url(SERVICES))
        .header("X-API-Key", "anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn request_ids_are_echoed_when_sane_and_generated_otherwise(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let r = app
        .client
        .get(app.url("/health"))
        .header("X-Request-ID", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc.123");
    for insane in ["has space", &"x".repeat(200), "semi;colon"] {
        let r = app
            .client
            .get(app.url("/health"))
            .header("X-Request-ID", insane)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, insane);
        assert_eq!(id.len(), 36, "a generated UUID: {id}");
    }
    let a = app.client.get(app.url("/health")).send().await.unwrap();
    let b = app.client.get(app.url("/health")).send().await.unwrap();
    assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
}

async fn every_response_carries_nosniff_and_no_store(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let register = json!({"service_name": "svc", "host": "10.0.0.1", "port": 80});
    let responses = [
        // 200, public
        app.client.get(app.url("/health")).send().await.unwrap(),
        // 201
        app.register("tenant1", register.clone()).await,
        // 200 with tenant data
        app.list("tenant1", "").await,
        // 401 from the auth middleware
        app.client.get(app.url(SERVICES)).send().await.unwrap(),
        // 404 of the fallback route
        app.request(reqwest::Method::GET, "/nowhere", None)
            .send()
            .await
            .unwrap(),
        // 405, rewritten to JSON by the middleware
        app.request(reqwest::Method::PUT, SERVICES, None)
            .send()
            .await
            .unwrap(),
        // 422 from the handler
        app.register("tenant1", json!({"service_name": "svc"}))
            .await,
        // 400 from the tenant middleware
        app.request(reqwest::Method::GET, SERVICES, Some("bad tenant"))
            .send()
            .await
            .unwrap(),
    ];
    for r in responses {
        let status = r.status();
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{status}"
        );
        assert_eq!(
            r.headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{status}"
        );
    }
}

/// Builds the app with `CENTRAL_HUB_API_KEYS` (and `extra`), stopping it
/// again at once; the error text if it refuses to start.
async fn start_with_keys(keys: &str, extra: &[(&str, &str)]) -> Result<(), String> {
    let mut pairs = vec![("CENTRAL_HUB_API_KEYS", keys)];
    pairs.extend_from_slice(extra);
    crate::support::build_and_stop(&env(&pairs)).await
}

#[tokio::test]
async fn short_and_ambiguous_keys_are_refused_at_start_with_the_way_to_write_them() {
    // A 1-character operator key, and `pass:word`, which used to become key
    // `pass` bound to tenant `word`.
    for (keys, says) in [
        ("k", "at least 16"),
        (
            &format!("{OPERATOR_KEY},short:tenant1") as &str,
            "at least 16",
        ),
        ("pass:word", "':*'"),
        ("a-long-enough-key-0001:not.a.tenant", "KEY:*"),
    ] {
        let error = start_with_keys(keys, &[]).await.unwrap_err();
        assert!(error.contains("CENTRAL_HUB_API_KEYS"), "{keys}: {error}");
        assert!(error.contains(says), "{keys}: {error}");
        assert!(!error.contains("pass"), "never echoes a key: {error}");
    }
    // With auth disabled the keys are not used, so they are not checked.
    start_with_keys("k", &[("DISABLE_AUTH", "true")])
        .await
        .unwrap();
    // The original guide's plain keys still start as operator keys.
    start_with_keys("plain-operator-key-from-the-guide", &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_key_containing_colons_is_written_with_its_scope_last() {
    let operator = "user:pass:0123456789abcdef";
    let bound = "a:b:0123456789abcdef";
    let keys = format!("{operator}:*,{bound}:tenant2");
    let app = spawn_app_with(Backend::Embedded, &[("CENTRAL_HUB_API_KEYS", &keys)], None)
        .await
        .unwrap();
    let get = |key: &str, tenant: &str| {
        app.client
            .get(app.url(SERVICES))
            .header("X-API-Key", key)
            .header("X-Tenant-ID", tenant)
            .send()
    };
    // The operator key, colons and all, acts for any tenant.
    for tenant in ["tenant1", "tenant2", "user"] {
        assert_eq!(
            get(operator, tenant).await.unwrap().status(),
            StatusCode::OK
        );
    }
    // Its parts are no keys.
    let r = get("user", "pass").await.unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    // The bound key is bound to what follows its last colon only.
    assert_eq!(
        get(bound, "tenant2").await.unwrap().status(),
        StatusCode::OK
    );
    let r = get(bound, "tenant1").await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "tenant_forbidden").await;
}

on_both_backends!(
    every_response_carries_nosniff_and_no_store,
    missing_and_unknown_keys_are_401_with_www_authenticate,
    bound_key_is_limited_to_its_tenants,
    operator_key_acts_for_any_tenant_and_defaults_to_system,
    public_paths_need_no_key,
    disable_auth_opens_everything,
    request_ids_are_echoed_when_sane_and_generated_otherwise,
);
