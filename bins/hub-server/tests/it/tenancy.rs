//! Tenants, keys and scopes over HTTP: the scope x state x route table, the key lifecycle, tenants modes, suspension, usage, audit and bad admin input.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{
    Backend, OPERATOR_KEY, TestApp, assert_error, eventually, on_both_backends, spawn_app,
    spawn_app_with,
};

const TENANTS: &str = "/api/v1/admin/tenants";

impl TestApp {
    /// A request with `key` (none: no key header) for `tenant` (none: no header).
    pub fn as_key(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        tenant: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut r = self.client.request(method, self.url(path));
        if let Some(k) = key {
            r = r.header("X-API-Key", k);
        }
        if let Some(t) = tenant {
            r = r.header("X-Tenant-ID", t);
        }
        r
    }

    /// Creates a tenant with the operator key; returns its body.
    pub async fn create_tenant(&self, body: Value) -> Value {
        let r = self
            .request(Method::POST, TENANTS, None)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "create tenant {body}");
        r.json().await.unwrap()
    }

    /// Creates a key of `tenant` with `scopes` (operator key); returns the
    /// whole answer (`key` is the secret).
    pub async fn create_key(&self, tenant: &str, scopes: &[&str]) -> Value {
        let r = self
            .request(Method::POST, &format!("{TENANTS}/{tenant}/keys"), None)
            .json(&json!({"name": format!("{scopes:?} key"), "scopes": scopes}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }

    /// Sets a tenant's state with the operator key.
    pub async fn set_state(&self, tenant: &str, state: &str) {
        let r = self
            .request(Method::PATCH, &format!("{TENANTS}/{tenant}"), None)
            .json(&json!({"state": state}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}

fn secret(created: &Value) -> String {
    created["key"].as_str().unwrap().to_owned()
}

/// Who may call a route, as this test expects it: written out here, apart
/// from the server's own table, so a changed decision fails this test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Public,
    Read,
    Write,
    Dashboard,
    TenantAdmin,
    Operator,
}

fn expected_kind(method: &str, path: &str) -> Option<Kind> {
    use Kind::*;
    Some(match (method, path) {
        ("GET", "/health" | "/health/ready") => Public,
        (
            "GET",
            "/api/v1/discovery/services"
            | "/api/v1/discovery/services/{service_name}"
            | "/api/v1/discovery/watch",
        ) => Read,
        ("POST", "/api/v1/discovery/register" | "/api/v1/discovery/heartbeat")
        | ("DELETE", "/api/v1/discovery/services/{service_name}") => Write,
        (
            "GET",
            "/api/v1/dashboard/metrics" | "/api/v1/dashboard/health" | "/api/v1/dashboard/services",
        ) => Dashboard,
        ("GET", "/metrics")
        | ("POST" | "GET", "/api/v1/admin/tenants")
        | ("GET" | "PATCH" | "DELETE", "/api/v1/admin/tenants/{tenant_id}") => Operator,
        ("POST" | "GET", "/api/v1/admin/tenants/{tenant_id}/keys")
        | ("DELETE", "/api/v1/admin/tenants/{tenant_id}/keys/{key_id}")
        | ("GET", "/api/v1/admin/tenants/{tenant_id}/usage")
        | ("GET", "/api/v1/admin/tenants/{tenant_id}/audit") => TenantAdmin,
        _ => return None,
    })
}

fn body_for(method: &str, path: &str, n: usize) -> Option<Value> {
    Some(match (method, path) {
        ("POST", "/api/v1/discovery/register") => {
            json!({"service_name": "svc", "host": "10.0.0.1", "port": 80})
        }
        ("POST", "/api/v1/discovery/heartbeat") => json!({"service_name": "svc"}),
        ("POST", "/api/v1/admin/tenants") => json!({"tenant_id": format!("made-{n}")}),
        ("PATCH", "/api/v1/admin/tenants/{tenant_id}") => json!({"display_name": "renamed"}),
        ("POST", "/api/v1/admin/tenants/{tenant_id}/keys") => {
            json!({"name": "made", "scopes": ["read"]})
        }
        _ => return None,
    })
}

/// One row of the table: a credential, the tenant it sends, and what it
/// gets on each kind of route (`None`: allowed, i.e. neither 401 nor 403).
struct Row {
    name: &'static str,
    key: Option<String>,
    tenant: &'static str,
    expect: fn(Kind) -> Option<(StatusCode, &'static str)>,
}

const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;

fn scoped(holds: Kind) -> fn(Kind) -> Option<(StatusCode, &'static str)> {
    match holds {
        Kind::Read => |k| match k {
            Kind::Public | Kind::Read | Kind::Dashboard => None,
            Kind::Write | Kind::TenantAdmin => Some((FORBIDDEN, "insufficient_scope")),
            Kind::Operator => Some((FORBIDDEN, "operator_key_required")),
        },
        Kind::Write => |k| match k {
            Kind::Public | Kind::Write => None,
            Kind::Read | Kind::Dashboard | Kind::TenantAdmin => {
                Some((FORBIDDEN, "insufficient_scope"))
            }
            Kind::Operator => Some((FORBIDDEN, "operator_key_required")),
        },
        _ => |k| match k {
            Kind::Public | Kind::TenantAdmin => None,
            Kind::Read | Kind::Write | Kind::Dashboard => Some((FORBIDDEN, "insufficient_scope")),
            Kind::Operator => Some((FORBIDDEN, "operator_key_required")),
        },
    }
}

/// Every route (the server's own list) against a key with each single
/// scope, a key of a suspended tenant, the operator acting for an active
/// and a suspended tenant, and no key at all.
async fn every_route_against_every_scope_and_state(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.create_tenant(json!({"tenant_id": "acme"})).await;
    app.create_tenant(json!({"tenant_id": "frozen"})).await;
    let read = secret(&app.create_key("acme", &["read"]).await);
    let write = secret(&app.create_key("acme", &["write"]).await);
    let admin = secret(&app.create_key("acme", &["admin"]).await);
    let frozen = secret(&app.create_key("frozen", &["read", "write", "admin"]).await);
    app.set_state("frozen", "suspended").await;
    let rows = [
        Row {
            name: "read key",
            key: Some(read),
            tenant: "acme",
            expect: scoped(Kind::Read),
        },
        Row {
            name: "write key",
            key: Some(write),
            tenant: "acme",
            expect: scoped(Kind::Write),
        },
        Row {
            name: "admin key",
            key: Some(admin),
            tenant: "acme",
            expect: scoped(Kind::TenantAdmin),
        },
        Row {
            name: "suspended tenant's key",
            key: Some(frozen),
            tenant: "frozen",
            expect: |k| match k {
                Kind::Public => None,
                Kind::Operator => Some((FORBIDDEN, "operator_key_required")),
                _ => Some((FORBIDDEN, "tenant_suspended")),
            },
        },
        Row {
            name: "operator",
            key: Some(OPERATOR_KEY.to_owned()),
            tenant: "acme",
            expect: |_| None,
        },
        Row {
            name: "operator on a suspended tenant",
            key: Some(OPERATOR_KEY.to_owned()),
            tenant: "frozen",
            // Operators act on a suspended tenant through the admin API
            // only; its own routes are refused even to them.
            expect: |k| match k {
                Kind::Read | Kind::Write => Some((FORBIDDEN, "tenant_suspended")),
                _ => None,
            },
        },
        Row {
            name: "no key",
            key: None,
            tenant: "acme",
            expect: |k| match k {
                Kind::Public => None,
                _ => Some((StatusCode::UNAUTHORIZED, "missing_api_key")),
            },
        },
    ];
    let mut n = 0;
    let mut undecided = Vec::new();
    for endpoint in hub_http::routes::endpoints() {
        let method = endpoint.method.as_str().to_owned();
        let Some(kind) = expected_kind(&method, &endpoint.path) else {
            undecided.push(format!("{method} {}", endpoint.path));
            continue;
        };
        for row in &rows {
            n += 1;
            let mut path_tenant = row.tenant.to_owned();
            // An operator deleting a tenant deletes a tenant of its own.
            if (method.as_str(), endpoint.path.as_str())
                == ("DELETE", "/api/v1/admin/tenants/{tenant_id}")
                && row.key.as_deref() == Some(OPERATOR_KEY)
            {
                path_tenant = format!("doomed-{n}");
                app.create_tenant(json!({"tenant_id": path_tenant})).await;
            }
            let path = endpoint
                .path
                .replace("{service_name}", "svc")
                .replace("{tenant_id}", &path_tenant)
                .replace("{key_id}", "00000000000000ff");
            let mut request = app.as_key(
                row.key.as_deref(),
                Method::from_bytes(method.as_bytes()).unwrap(),
                &path,
                Some(row.tenant),
            );
            if let Some(body) = body_for(&method, &endpoint.path, n) {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let cell = format!("{} on {method} {path}", row.name);
            match (row.expect)(kind) {
                None => assert!(
                    !matches!(
                        response.status(),
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                    ),
                    "{cell}: allowed, got {} {}",
                    response.status(),
                    response.text().await.unwrap()
                ),
                Some((status, code)) => {
                    let message = assert_error(response, status, code).await;
                    if code == "insufficient_scope" {
                        let scope = match kind {
                            Kind::Read | Kind::Dashboard => "'read'",
                            Kind::Write => "'write'",
                            _ => "'admin'",
                        };
                        assert!(message.contains(scope), "{cell}: {message}");
                    }
                }
            }
        }
    }
    assert!(
        undecided.is_empty(),
        "routes this test has no expectation for: {undecided:?}"
    );
}

/// Create a write key and a read key, use them, revoke one: refused at
/// once (same replica), the other keeps working; lists never show a secret.
async fn key_lifecycle(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.create_tenant(json!({"tenant_id": "acme", "display_name": "Acme"}))
        .await;
    let writer = app.create_key("acme", &["write"]).await;
    let reader = app.create_key("acme", &["read"]).await;
    let (write, read) = (secret(&writer), secret(&reader));
    assert!(write.starts_with("hubk_"));
    assert_eq!(writer["scopes"], json!(["write"]));
    assert!(writer["revoked_at"].is_null());
    // A key acts for its tenant without X-Tenant-ID, and for no other.
    let r = app
        .as_key(
            Some(&write),
            Method::POST,
            "/api/v1/discovery/register",
            None,
        )
        .json(&json!({"service_name": "api", "host": "10.0.0.1", "port": 80}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["x-tenant-id"], "acme");
    let r = app
        .as_key(
            Some(&read),
            Method::GET,
            "/api/v1/discovery/services/api",
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .as_key(
            Some(&read),
            Method::GET,
            "/api/v1/discovery/services",
            Some("other"),
        )
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "tenant_forbidden").await;
    // Lists show records, never a secret or digest.
    let r = app
        .request(Method::GET, &format!("{TENANTS}/acme/keys"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&write[22..]) && !text.contains(&read[22..]));
    assert!(!text.contains("digest"));
    let listed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(listed["count"], 2);
    // Revoke the write key: refused at once, like an unknown key.
    let id = writer["key_id"].as_str().unwrap();
    let r = app
        .request(Method::DELETE, &format!("{TENANTS}/acme/keys/{id}"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let revoked = r.text().await.unwrap();
    assert!(!revoked.contains(&write[22..]));
    assert!(!serde_json::from_str::<Value>(&revoked).unwrap()["revoked_at"].is_null());
    let r = app
        .as_key(
            Some(&write),
            Method::POST,
            "/api/v1/discovery/heartbeat",
            None,
        )
        .json(&json!({"service_name": "api"}))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    let r = app
        .as_key(
            Some(&read),
            Method::GET,
            "/api/v1/discovery/services/api",
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A key with an expiry works until then and is refused after, without
/// anyone touching it.
async fn keys_expire(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.create_tenant(json!({"tenant_id": "acme"})).await;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(2);
    let r = app
        .request(Method::POST, &format!("{TENANTS}/acme/keys"), None)
        .json(&json!({"name": "short", "scopes": ["read"], "expires_at": expires.to_rfc3339()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let key = secret(&r.json().await.unwrap());
    let list = || {
        app.as_key(Some(&key), Method::GET, "/api/v1/discovery/services", None)
            .send()
    };
    assert_eq!(list().await.unwrap().status(), StatusCode::OK);
    eventually(10, || async {
        (list().await.unwrap().status() == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    assert!(chrono::Utc::now() >= expires);
    assert_error(
        list().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    )
    .await;
}

async fn registered_mode_refuses_unknown_tenants(backend: Backend) {
    let Some(app) = spawn_app_with(backend, &[("HUB_TENANTS_MODE", "registered")], None).await
    else {
        return;
    };
    let r = app
        .register(
            "ghost",
            json!({"service_name": "api", "host": "10.0.0.1", "port": 80}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "unknown_tenant").await;
    let r = app.list("ghost", "").await;
    assert_error(r, StatusCode::FORBIDDEN, "unknown_tenant").await;
    // Refused, not silently created.
    let r = app
        .request(Method::GET, &format!("{TENANTS}/ghost"), None)
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    // Operators still manage tenants without naming one.
    app.create_tenant(json!({"tenant_id": "ghost"})).await;
    app.register_ok("ghost", "api", "a1").await;
    // The operator's dashboard works without a tenant record for `system`.
    app.dashboard_metrics().await;
}

async fn open_mode_records_tenants_on_first_use(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register_ok("newcomer", "api", "a1").await;
    let r = app
        .request(Method::GET, &format!("{TENANTS}/newcomer"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["state"], "active");
    assert_eq!(body["display_name"], "newcomer");
}

async fn suspension_is_immediate_and_reversible(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.create_tenant(json!({"tenant_id": "acme"})).await;
    let key = secret(&app.create_key("acme", &["read", "write", "admin"]).await);
    let list = || {
        app.as_key(Some(&key), Method::GET, "/api/v1/discovery/services", None)
            .send()
    };
    assert_eq!(list().await.unwrap().status(), StatusCode::OK);
    app.set_state("acme", "suspended").await;
    assert_error(
        list().await.unwrap(),
        StatusCode::FORBIDDEN,
        "tenant_suspended",
    )
    .await;
    let r = app
        .as_key(
            Some(&key),
            Method::GET,
            &format!("{TENANTS}/acme/keys"),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "tenant_suspended").await;
    // The operator still sees and changes it.
    let r = app
        .request(Method::GET, &format!("{TENANTS}/acme"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "suspended");
    app.set_state("acme", "active").await;
    assert_eq!(list().await.unwrap().status(), StatusCode::OK);
}

/// Usage counts every request by class, exactly, and shows it before any
/// flush; the admin-scope key of the tenant reads it.
async fn usage_is_exact_after_a_burst(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.create_tenant(json!({"tenant_id": "acme"})).await;
    let key = secret(&app.create_key("acme", &["read", "write", "admin"]).await);
    let reads = 37;
    let writes = 11;
    let mut calls = Vec::new();
    for i in 0..reads {
        calls.push(
            app.as_key(Some(&key), Method::GET, "/api/v1/discovery/services", None)
                .query(&[("limit", (i % 5 + 1).to_string())])
                .send(),
        );
    }
    for i in 0..writes {
        calls.push(
            app.as_key(Some(&key), Method::POST, "/api/v1/discovery/register", None)
                .json(&json!({"service_name": "api", "instance_id": format!("i{i}"), "host": "10.0.0.1", "port": 80}))
                .send(),
        );
    }
    for r in futures_util::future::join_all(calls).await {
        assert!(r.unwrap().status().is_success());
    }
    let r = app
        .as_key(
            Some(&key),
            Method::GET,
            &format!("{TENANTS}/acme/usage"),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["total"]["requests_read"], reads, "{body}");
    assert_eq!(body["total"]["requests_write"], writes, "{body}");
    // Admin requests on the tenant count as its admin requests: creating
    // it, creating its key, and this request itself.
    assert_eq!(body["total"]["requests_admin"], 3, "{body}");
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(body["to"], today.as_str());
    assert_eq!(body["days"].as_array().unwrap().len(), 1);
    assert_eq!(body["days"][0]["day"], today.as_str());
    // The tenant's dashboard shows today's usage; its own request is a read.
    let r = app
        .as_key(Some(&key), Method::GET, "/api/v1/dashboard/metrics", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let dashboard: Value = r.json().await.unwrap();
    assert_eq!(dashboard["usage_today"]["requests_read"], reads + 1);
    assert_eq!(dashboard["usage_today"]["requests_write"], writes);
    assert_eq!(dashboard["usage_today"]["registrations"], writes);
}

/// Every admin change writes an audit row naming who made it and the request.
async fn admin_changes_write_audit_rows(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let operator = hub_http::auth::fingerprint(OPERATOR_KEY);
    let mut request_ids = Vec::new();
    let r = app
        .request(Method::POST, TENANTS, None)
        .json(&json!({"tenant_id": "acme"}))
        .send()
        .await
        .unwrap();
    request_ids.push(r.headers()["x-request-id"].to_str().unwrap().to_owned());
    let key = app.create_key("acme", &["admin"]).await;
    let own = secret(&key);
    // A change by the tenant's own admin key names that key.
    let r = app
        .as_key(
            Some(&own),
            Method::POST,
            &format!("{TENANTS}/acme/keys"),
            None,
        )
        .json(&json!({"name": "by admin", "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let made: Value = r.json().await.unwrap();
    assert_eq!(made["created_by"], key["key_id"]);
    app.set_state("acme", "suspended").await;
    app.set_state("acme", "active").await;
    let made_id = made["key_id"].as_str().unwrap();
    let r = app
        .request(
            Method::DELETE,
            &format!("{TENANTS}/acme/keys/{made_id}"),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .request(Method::GET, &format!("{TENANTS}/acme/audit?limit=10"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let entries = body["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "key.revoked",
            "tenant.reactivated",
            "tenant.suspended",
            "key.created",
            "key.created",
            "tenant.created"
        ],
        "{body}"
    );
    let created = entries.last().unwrap();
    assert_eq!(created["actor"], operator.as_str());
    assert_eq!(created["request_id"], request_ids[0].as_str());
    assert_eq!(entries[3]["actor"], key["key_id"]);
    assert!(!body.to_string().contains(&own[22..]));
}

/// Deleting a tenant deregisters its instances (so watchers see them go)
/// and its keys stop working.
async fn deleting_a_tenant_removes_instances_and_keys(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.create_tenant(json!({"tenant_id": "acme"})).await;
    let key = secret(&app.create_key("acme", &["read"]).await);
    app.register_ok("acme", "api", "a1").await;
    app.register_ok("acme", "api", "a2").await;
    app.register_ok("acme", "db", "d1").await;
    app.register_ok("other", "api", "o1").await;
    let r = app
        .request(Method::DELETE, &format!("{TENANTS}/acme"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"tenant_id": "acme", "instances_removed": 3}));
    let r = app
        .as_key(Some(&key), Method::GET, "/api/v1/discovery/services", None)
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    assert_eq!(app.list_ids("other").await.len(), 1);
    let r = app
        .request(Method::GET, &format!("{TENANTS}/acme/audit"), None)
        .send()
        .await
        .unwrap();
    let audit: Value = r.json().await.unwrap();
    assert_eq!(audit["entries"][0]["action"], "tenant.deleted", "{audit}");
    let r = app
        .request(Method::DELETE, &format!("{TENANTS}/acme"), None)
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

/// What the admin API stores, for comparing before and after bad input.
async fn snapshot(app: &TestApp) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for path in [
        TENANTS.to_owned(),
        format!("{TENANTS}/acme/keys"),
        format!("{TENANTS}/acme/audit?limit=1000"),
    ] {
        let r = app.request(Method::GET, &path, None).send().await.unwrap();
        let mut body: Value = r.json().await.unwrap();
        if let Some(keys) = body.get_mut("keys").and_then(Value::as_array_mut) {
            // Sampled; not something bad input changes.
            for k in keys {
                k["last_used_at"] = Value::Null;
            }
        }
        out.insert(path, body);
    }
    out
}

/// A bad admin request: method, path, body, then the status, code and a
/// word its message must contain.
type BadCase<'a> = (Method, String, Option<Value>, StatusCode, &'a str, &'a str);

async fn bad_admin_input_is_refused_and_changes_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.create_tenant(json!({"tenant_id": "acme"})).await;
    let key = app.create_key("acme", &["read"]).await;
    let key_id = key["key_id"].as_str().unwrap().to_owned();
    let before = snapshot(&app).await;
    let k = |p: &str| format!("{TENANTS}/acme/keys{p}");
    let cases: Vec<BadCase> = vec![
        (
            Method::POST,
            TENANTS.into(),
            Some(json!({})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "tenant_id",
        ),
        (
            Method::POST,
            TENANTS.into(),
            Some(json!({"tenant_id": "bad.id"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "tenant_id",
        ),
        (
            Method::POST,
            TENANTS.into(),
            Some(json!({"tenant_id": "acme"})),
            StatusCode::CONFLICT,
            "conflict",
            "acme",
        ),
        (
            Method::POST,
            TENANTS.into(),
            Some(json!({"tenant_id": "t2", "state": "gone"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "state",
        ),
        (
            Method::POST,
            TENANTS.into(),
            Some(json!({"tenant_id": "t2", "limits": {"rate": 0}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "limits.rate",
        ),
        (
            Method::POST,
            TENANTS.into(),
            Some(json!({"tenant_id": "t2", "limits": {"max_instances": -1}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "max_instances",
        ),
        (
            Method::POST,
            TENANTS.into(),
            Some(json!({"tenant_id": "t2", "limits": {"max_instance": 5}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "max_instance",
        ),
        (
            Method::POST,
            TENANTS.into(),
            Some(json!({"tenant_id": "t2", "display_name": ""})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "display_name",
        ),
        (
            Method::GET,
            format!("{TENANTS}/bad.id"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "tenant_id",
        ),
        (
            Method::GET,
            format!("{TENANTS}/nobody"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            "nobody",
        ),
        (
            Method::PATCH,
            format!("{TENANTS}/acme"),
            Some(json!({"state": "paused"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "state",
        ),
        (
            Method::PATCH,
            format!("{TENANTS}/acme"),
            Some(json!({"limits": {"burst": 0}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "limits.burst",
        ),
        (
            Method::PATCH,
            format!("{TENANTS}/acme"),
            Some(json!({"tenant_id": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "tenant_id",
        ),
        (
            Method::PATCH,
            format!("{TENANTS}/nobody"),
            Some(json!({"display_name": "x"})),
            StatusCode::NOT_FOUND,
            "not_found",
            "nobody",
        ),
        (
            Method::DELETE,
            format!("{TENANTS}/nobody"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            "nobody",
        ),
        (
            Method::POST,
            k(""),
            Some(json!({"name": "k", "scopes": []})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "scopes",
        ),
        (
            Method::POST,
            k(""),
            Some(json!({"name": "k", "scopes": ["root"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "scopes",
        ),
        (
            Method::POST,
            k(""),
            Some(json!({"name": "", "scopes": ["read"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "name",
        ),
        (
            Method::POST,
            k(""),
            Some(json!({"scopes": ["read"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "name",
        ),
        (
            Method::POST,
            k(""),
            Some(json!({"name": "k", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "expires_at",
        ),
        (
            Method::POST,
            k(""),
            Some(json!({"name": "k", "scopes": ["read"], "expires_at": "soon"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "expires_at",
        ),
        (
            Method::POST,
            format!("{TENANTS}/nobody/keys"),
            Some(json!({"name": "k", "scopes": ["read"]})),
            StatusCode::NOT_FOUND,
            "not_found",
            "nobody",
        ),
        (
            Method::GET,
            format!("{TENANTS}/nobody/keys"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            "nobody",
        ),
        (
            Method::DELETE,
            k("/XYZ"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "key_id",
        ),
        (
            Method::DELETE,
            k("/00000000000000ff"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            "00000000000000ff",
        ),
        (
            Method::DELETE,
            format!("{TENANTS}/other/keys/{key_id}"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            &key_id,
        ),
        (
            Method::GET,
            format!("{TENANTS}/acme/usage?from=yesterday"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "from",
        ),
        (
            Method::GET,
            format!("{TENANTS}/acme/usage?from=2026-02-01&to=2026-01-01"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "from",
        ),
        (
            Method::GET,
            format!("{TENANTS}/acme/usage?from=2020-01-01&to=2026-01-01"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "366",
        ),
        (
            Method::GET,
            format!("{TENANTS}/acme/usage?to=2026-02-30"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "to",
        ),
        (
            Method::GET,
            format!("{TENANTS}/nobody/usage"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            "nobody",
        ),
        (
            Method::GET,
            format!("{TENANTS}/acme/audit?limit=0"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "limit",
        ),
        (
            Method::GET,
            format!("{TENANTS}/acme/audit?limit=abc"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "limit",
        ),
    ];
    for (method, path, body, status, code, named) in cases {
        let mut r = app.request(method.clone(), &path, None);
        if let Some(b) = &body {
            r = r.json(b);
        }
        let message = assert_error(r.send().await.unwrap(), status, code).await;
        assert!(
            message.contains(named),
            "{method} {path} {body:?}: message {message:?} should name {named:?}"
        );
    }
    // Malformed JSON and a body that is not JSON at all.
    let r = app
        .request(Method::POST, TENANTS, None)
        .header("content-type", "application/json")
        .body("{\"tenant_id\":")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "malformed_json").await;
    let r = app
        .request(Method::PATCH, &format!("{TENANTS}/acme"), None)
        .body("state=suspended")
        .send()
        .await
        .unwrap();
    assert_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_eq!(snapshot(&app).await, before);
}

on_both_backends!(
    every_route_against_every_scope_and_state,
    key_lifecycle,
    keys_expire,
    registered_mode_refuses_unknown_tenants,
    open_mode_records_tenants_on_first_use,
    suspension_is_immediate_and_reversible,
    usage_is_exact_after_a_burst,
    admin_changes_write_audit_rows,
    deleting_a_tenant_removes_instances_and_keys,
    bad_admin_input_is_refused_and_changes_nothing,
    quota_holds_under_concurrency,
    tenant_rate_limits_override_the_defaults,
    bearer_tokens_bind_tenants_and_scopes,
);

/// The real binary, logging everything at debug level as JSON: a key's
/// secret appears in no log line, whether the key is created, used, used
/// for another tenant, revoked or used after revocation.
#[tokio::test]
async fn key_secrets_never_reach_the_log() {
    use crate::process::ServerProcess;
    let mut server = ServerProcess::start(&[
        ("CENTRAL_HUB_API_KEYS", OPERATOR_KEY),
        ("RUST_LOG", "debug"),
    ]);
    let base = format!("http://{}", server.wait_listening());
    let client = reqwest::Client::new();
    let op = |method: Method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .header("X-API-Key", OPERATOR_KEY)
    };
    let r = op(Method::POST, TENANTS)
        .json(&json!({"tenant_id": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = op(Method::POST, &format!("{TENANTS}/acme/keys"))
        .json(&json!({"name": "k", "scopes": ["read", "write"]}))
        .send()
        .await
        .unwrap();
    let created: Value = r.json().await.unwrap();
    let key = secret(&created);
    let with_key = |method: Method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .header("X-API-Key", key.as_str())
    };
    let r = with_key(Method::POST, "/api/v1/discovery/register")
        .json(&json!({"service_name": "api", "host": "10.0.0.1", "port": 80}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = with_key(Method::GET, "/api/v1/discovery/services")
        .header("X-Tenant-ID", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let id = created["key_id"].as_str().unwrap();
    let r = op(Method::DELETE, &format!("{TENANTS}/acme/keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = with_key(Method::GET, "/api/v1/discovery/services")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The access line of that last request closes what is to be read.
    let last = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    server.wait_for("the last access line", |v| {
        (v.get("request_id").and_then(Value::as_str) == Some(last.as_str())).then(String::new)
    });
    // The secret part of the key, and the key as a whole.
    let hidden = &key[22..];
    for line in &server.seen {
        let text = line.to_string();
        assert!(!text.contains(hidden), "a log line carries the key: {text}");
    }
    assert!(server.seen.len() > 5, "logs were read");
}

/// A tenant's `max_instances` holds under many registrations at once:
/// exactly that many new instances are stored, the rest get 429
/// `quota_exceeded`, and updating a stored instance is never refused.
async fn quota_holds_under_concurrency(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.create_tenant(json!({"tenant_id": "acme", "limits": {"max_instances": 10}}))
        .await;
    let calls = (0..40).map(|i| {
        app.register(
            "acme",
            json!({"service_name": "api", "instance_id": format!("i{i}"), "host": "10.0.0.1", "port": 80}),
        )
    });
    let mut created = 0;
    for r in futures_util::future::join_all(calls).await {
        match r.status() {
            StatusCode::CREATED => created += 1,
            _ => {
                let message =
                    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
                assert!(message.contains("max_instances"), "{message}");
            }
        }
    }
    assert_eq!(created, 10);
    let stored = app.list_ids("acme").await;
    assert_eq!(stored.len(), 10);
    let (_, existing) = &stored[0];
    let r = app
        .register(
            "acme",
            json!({"service_name": "api", "instance_id": existing, "host": "10.0.0.2", "port": 80}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Raising the limit takes effect at once through this replica.
    let r = app
        .request(Method::PATCH, &format!("{TENANTS}/acme"), None)
        .json(&json!({"limits": {"max_instances": 11}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.register_ok("acme", "api", "one-more").await;
}

/// A tenant's own `rate` and `burst` replace the configured rate limit.
async fn tenant_rate_limits_override_the_defaults(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.create_tenant(json!({"tenant_id": "acme", "limits": {"rate": 1, "burst": 2}}))
        .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(app.list("acme", "").await);
    }
    let last = statuses.pop().unwrap();
    for r in statuses {
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["ratelimit-limit"], "2");
    }
    assert_error(last, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another tenant keeps the configured defaults.
    assert_eq!(app.list("other", "").await.status(), StatusCode::OK);
}

const JWT_SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Bearer tokens: the tenant claim binds them like a bound key, the scope
/// claim applies, and a refused token is 401 `invalid_token` with a
/// `Bearer` challenge that does not quote it.
async fn bearer_tokens_bind_tenants_and_scopes(backend: Backend) {
    let Some(app) = spawn_app_with(
        backend,
        &[
            ("HUB_JWT_SECRET", JWT_SECRET),
            ("HUB_JWT_ISSUER", "https://issuer.test"),
        ],
        None,
    )
    .await
    else {
        return;
    };
    let exp = (chrono::Utc::now() + chrono::Duration::minutes(5)).timestamp();
    let bearer = |token: &str, method: Method, path: &str, tenant: Option<&str>| {
        let mut r = app
            .client
            .request(method, app.url(path))
            .header("Authorization", format!("Bearer {token}"));
        if let Some(t) = tenant {
            r = r.header("X-Tenant-ID", t);
        }
        r
    };
    let writer = token(json!({
        "iss": "https://issuer.test", "sub": "svc-a", "exp": exp,
        "tenant_id": ["acme", "beta"], "scope": "read write"
    }));
    let r = bearer(&writer, Method::POST, "/api/v1/discovery/register", None)
        .json(&json!({"service_name": "api", "host": "10.0.0.1", "port": 80}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["x-tenant-id"], "acme");
    let r = bearer(
        &writer,
        Method::GET,
        "/api/v1/discovery/services",
        Some("beta"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = bearer(
        &writer,
        Method::GET,
        "/api/v1/discovery/services",
        Some("other"),
    )
    .send()
    .await
    .unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "tenant_forbidden").await;
    let r = bearer(&writer, Method::GET, &format!("{TENANTS}/acme/keys"), None)
        .send()
        .await
        .unwrap();
    let message = assert_error(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert!(message.contains("'admin'"), "{message}");
    let reader = token(json!({
        "iss": "https://issuer.test", "sub": "svc-b", "exp": exp,
        "tenant_id": "acme", "scope": "read"
    }));
    let r = bearer(&reader, Method::POST, "/api/v1/discovery/heartbeat", None)
        .json(&json!({"service_name": "api"}))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    let expired = token(json!({
        "iss": "https://issuer.test", "sub": "svc-a", "exp": exp - 3600,
        "tenant_id": "acme", "scope": "read"
    }));
    let wrong_issuer = token(json!({
        "iss": "https://elsewhere.test", "sub": "svc-a", "exp": exp,
        "tenant_id": "acme", "scope": "read"
    }));
    for refused in [expired.as_str(), wrong_issuer.as_str(), "not.a.token"] {
        let r = bearer(refused, Method::GET, "/api/v1/discovery/services", None)
            .send()
            .await
            .unwrap();
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{challenge}"
        );
        assert!(!challenge.contains(refused), "{challenge}");
        let message = assert_error(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
        assert!(!message.contains(refused), "{message}");
    }
    // A token's tenants are admitted like any other: suspension applies.
    app.create_tenant(json!({"tenant_id": "frozen", "state": "suspended"}))
        .await;
    let frozen = token(json!({
        "iss": "https://issuer.test", "sub": "svc-c", "exp": exp,
        "tenant_id": "frozen", "scope": "read"
    }));
    let r = bearer(&frozen, Method::GET, "/api/v1/discovery/services", None)
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "tenant_suspended").await;
}

/// Without a `HUB_JWT_*` key, a bearer token is refused, never ignored.
#[tokio::test]
async fn bearer_tokens_are_refused_when_not_configured() {
    let app = spawn_app(Backend::Embedded).await.unwrap();
    let r = app
        .client
        .get(app.url("/api/v1/discovery/services"))
        .header(
            "Authorization",
            format!("Bearer {}", token(json!({"tenant_id": "acme"}))),
        )
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer error=\"invalid_token\"")
    );
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

/// Two replicas on one database: a key revoked, or a tenant suspended,
/// through one is refused by the other within 1 s (its caches live
/// ~500 ms), with no channel between them but the database.
#[tokio::test]
async fn revocation_and_suspension_reach_another_replica_within_a_second() {
    let Some(a) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let db = a.db.as_ref().unwrap();
    let port = db.app.port.to_string();
    let b = spawn_app_with(
        Backend::Postgres,
        &[
            ("POSTGRES_HOST", db.app.host.as_str()),
            ("POSTGRES_PORT", port.as_str()),
            ("POSTGRES_DB", db.app.dbname.as_str()),
            ("POSTGRES_USER", db.app.user.as_str()),
            ("HUB_RELAY_PG_USER", db.relay.user.as_str()),
        ],
        None,
    )
    .await
    .unwrap();
    a.create_tenant(json!({"tenant_id": "acme"})).await;
    let created = a.create_key("acme", &["read"]).await;
    let key = secret(&created);
    let list = |app: &TestApp| {
        app.as_key(Some(&key), Method::GET, "/api/v1/discovery/services", None)
            .send()
    };
    assert_eq!(list(&b).await.unwrap().status(), StatusCode::OK);
    let id = created["key_id"].as_str().unwrap();
    let r = a
        .request(Method::DELETE, &format!("{TENANTS}/acme/keys/{id}"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let revoked_at = std::time::Instant::now();
    assert_eq!(list(&a).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    eventually(5, || async {
        (list(&b).await.unwrap().status() == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let took = revoked_at.elapsed();
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    // Never again.
    assert_error(
        list(&b).await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    )
    .await;

    // Suspension, the same way, and back.
    let other = secret(&a.create_key("acme", &["read"]).await);
    let list_other = |app: &TestApp| {
        app.as_key(
            Some(&other),
            Method::GET,
            "/api/v1/discovery/services",
            None,
        )
        .send()
    };
    assert_eq!(list_other(&b).await.unwrap().status(), StatusCode::OK);
    a.set_state("acme", "suspended").await;
    let suspended_at = std::time::Instant::now();
    eventually(5, || async {
        (list_other(&b).await.unwrap().status() == StatusCode::FORBIDDEN).then_some(())
    })
    .await;
    let took = suspended_at.elapsed();
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    a.set_state("acme", "active").await;
    eventually(5, || async {
        (list_other(&b).await.unwrap().status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// Request counts and a key's last use, counted in memory, survive a
/// graceful restart: the stop flushes both, and the next server reads them
/// back through the admin API.
#[tokio::test]
async fn usage_and_key_use_survive_a_graceful_restart() {
    use crate::pg_support::Hub;
    let Some(db) = hub_store::testing::TestDb::create().await else {
        return;
    };
    // Flush intervals far longer than the test: only the stop flushes.
    let env = [
        ("HUB_USAGE_FLUSH_SECS", "3600"),
        ("HUB_KEY_USE_FLUSH_SECS", "3600"),
    ];
    let hub = Hub::start(&db.app, &env).await;
    let client = reqwest::Client::new();
    let op = |hub: &Hub, method: Method, path: &str| {
        client
            .request(method, hub.url(path))
            .header("X-API-Key", OPERATOR_KEY)
    };
    let r = op(&hub, Method::POST, TENANTS)
        .json(&json!({"tenant_id": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = op(&hub, Method::POST, &format!("{TENANTS}/acme/keys"))
        .json(&json!({"name": "reader", "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    let created: Value = r.json().await.unwrap();
    let key = secret(&created);
    let reads = 23;
    for _ in 0..reads {
        let r = client
            .get(hub.url("/api/v1/discovery/services"))
            .header("X-API-Key", key.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    hub.shut_down().await;

    let hub = Hub::start(&db.app, &env).await;
    let r = op(&hub, Method::GET, &format!("{TENANTS}/acme/usage"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let usage: Value = r.json().await.unwrap();
    assert_eq!(usage["total"]["requests_read"], reads, "{usage}");
    let r = op(&hub, Method::GET, &format!("{TENANTS}/acme/keys"))
        .send()
        .await
        .unwrap();
    let keys: Value = r.json().await.unwrap();
    assert!(!keys["keys"][0]["last_used_at"].is_null(), "{keys}");
    hub.shut_down().await;
}
