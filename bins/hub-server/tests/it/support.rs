//! `spawn_app()` and request helpers shared by the black-box tests.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hub_core::memory::ManualClock;
use hub_core::ports::Clock;
use hub_server::{Application, Settings, StopHandle};
use hub_store::testing::TestDb;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

/// The operator key every test app is configured with.
pub const OPERATOR_KEY: &str = "test-operator-key";
/// A key bound to tenant1 and tenant3 (tenant1 is its default).
pub const BOUND_KEY: &str = "test-bound-key-0001";

/// Which store the app runs on: every contract test runs on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Postgres,
    /// PostgreSQL with heartbeat leases in Dragonfly (the machine's Redis).
    PgDragonfly,
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    stop: StopHandle,
    /// The app's registry (to run a reaper pass or read lease state).
    #[allow(dead_code)]
    pub registry: hub_core::Registry,
    /// The test's own database (PostgreSQL mode), kept alive as long as the
    /// app; tests that restart the server or look at the tables use it.
    #[allow(dead_code)]
    pub db: Option<TestDb>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop without waiting: the runtime of the test is going away.
        let stop = self.stop.clone();
        drop(tokio::spawn(async move { stop.stop().await }));
    }
}

/// The environment of every test app (embedded mode), with `extra` on top.
pub fn env(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("HUB_BIND", "127.0.0.1:0".to_string()),
        (
            "CENTRAL_HUB_API_KEYS",
            format!("{OPERATOR_KEY},{BOUND_KEY}:tenant1|tenant3"),
        ),
        ("HUB_REAP_INTERVAL_MS", "20".to_string()),
        ("HUB_SHUTDOWN_TIMEOUT_SECS", "5".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// Builds the app from `env`; one that starts is stopped again at once (its
/// HTTP workers run from the moment it is built). The error text, with its
/// causes, if it refuses to start.
pub async fn build_and_stop(env: &HashMap<String, String>) -> Result<(), String> {
    let app = Application::build(Settings::load(env).unwrap())
        .await
        .map_err(|e| format!("{e:#}"))?;
    let stop = app.stop_handle();
    let running = tokio::spawn(app.run_until_stopped());
    stop.stop().await;
    running.await.unwrap().unwrap();
    Ok(())
}

/// Starts the app on a free port with the system clock. `None` only in
/// PostgreSQL mode outside CI when PostgreSQL is unreachable (said on stderr).
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, &[], None).await
}

/// Starts the app with extra environment variables and optionally a manual clock.
pub async fn spawn_app_with(
    backend: Backend,
    extra_env: &[(&str, &str)],
    clock: Option<Arc<ManualClock>>,
) -> Option<TestApp> {
    let mut env = env(extra_env);
    let db = match backend {
        Backend::Embedded => None,
        Backend::Postgres | Backend::PgDragonfly => {
            let db = TestDb::create().await?;
            if backend == Backend::PgDragonfly {
                // A loaded test machine can take longer than the 250 ms
                // default for one command; a fallback then is correct but
                // not what these tests look at.
                env.entry("HUB_DRAGONFLY_TIMEOUT_MS".into())
                    .or_insert("2000".to_owned());
                hub_store::testing::dragonfly().await?;
                let (host, port) = hub_store::testing::redis_addr();
                env.entry("DRAGONFLY_HOST".into()).or_insert(host);
                env.entry("DRAGONFLY_PORT".into())
                    .or_insert(port.to_string());
            }
            // A test may point the app elsewhere (another app's database,
            // a proxy): its own variables win.
            for (var, value) in [
                ("POSTGRES_HOST", db.app.host.clone()),
                ("POSTGRES_PORT", db.app.port.to_string()),
                ("POSTGRES_DB", db.app.dbname.clone()),
                ("POSTGRES_USER", db.app.user.clone()),
                ("HUB_RELAY_PG_USER", db.relay.user.clone()),
                ("HUB_PG_POOL_SIZE", "8".to_owned()),
            ] {
                env.entry(var.to_owned()).or_insert(value);
            }
            Some(db)
        }
    };
    let settings = Settings::load(&env).unwrap();
    let app = match &clock {
        Some(c) => Application::build_with_clock(settings, c.clone() as Arc<dyn Clock>)
            .await
            .unwrap(),
        None => Application::build(settings).await.unwrap(),
    };
    let base = format!("http://127.0.0.1:{}", app.port());
    let stop = app.stop_handle();
    let registry = app.registry().clone();
    tokio::spawn(app.run_until_stopped());
    Some(TestApp {
        base,
        client: reqwest::Client::new(),
        stop,
        registry,
        db,
    })
}

/// Runs each named test `fn name(backend: Backend)` once per backend, in
/// modules `embedded` and `postgres`: one suite, two stores.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Backend::Embedded).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// A manual clock at a fixed, recent instant.
pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap(),
    ))
}

impl TestApp {
    /// Waits until the tenant's leases are in the lease cache (a reaper
    /// pass filled them); at once without a cache.
    #[allow(dead_code)]
    pub async fn settle(&self, tenant: &str) {
        if self.registry.lease_status().backend != "cache" {
            return;
        }
        let tenant = hub_core::TenantId::parse(tenant).unwrap();
        eventually(15, || async {
            (self.registry.lease_synced(&tenant).await == Some(true)).then_some(())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the server gracefully (and waits for it to stop serving).
    #[allow(dead_code)]
    pub async fn stop(&self) {
        self.stop.stop().await;
    }

    /// A request with the operator key and the given tenant header (if any).
    pub fn request(&self, method: Method, path: &str, tenant: Option<&str>) -> RequestBuilder {
        let mut r = self
            .client
            .request(method, self.url(path))
            .header("X-API-Key", OPERATOR_KEY);
        if let Some(t) = tenant {
            r = r.header("X-Tenant-ID", t);
        }
        r
    }

    pub async fn register(&self, tenant: &str, body: Value) -> Response {
        self.request(Method::POST, "/api/v1/discovery/register", Some(tenant))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Registers and asserts success; returns the instance body.
    pub async fn register_ok(&self, tenant: &str, service: &str, instance: &str) -> Value {
        let r = self
            .register(
                tenant,
                json!({"service_name": service, "instance_id": instance, "host": "10.0.0.1", "port": 8080}),
            )
            .await;
        assert!(r.status().is_success(), "register failed: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn list(&self, tenant: &str, query: &str) -> Response {
        self.request(
            Method::GET,
            &format!("/api/v1/discovery/services{query}"),
            Some(tenant),
        )
        .send()
        .await
        .unwrap()
    }

    /// `(service_name, instance_id)` of every instance the tenant lists.
    pub async fn list_ids(&self, tenant: &str) -> Vec<(String, String)> {
        let r = self.list(tenant, "?limit=10000").await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                assert_eq!(i["tenant_id"], tenant, "foreign instance in list");
                (
                    i["service_name"].as_str().unwrap().to_owned(),
                    i["instance_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub async fn get_service(&self, tenant: &str, service: &str) -> Response {
        self.request(
            Method::GET,
            &format!("/api/v1/discovery/services/{service}"),
            Some(tenant),
        )
        .send()
        .await
        .unwrap()
    }

    pub async fn deregister(&self, tenant: &str, service: &str, query: &str) -> Response {
        self.request(
            Method::DELETE,
            &format!("/api/v1/discovery/services/{service}{query}"),
            Some(tenant),
        )
        .send()
        .await
        .unwrap()
    }

    /// The dashboard metrics body as the operator key sees it (all tenants).
    pub async fn dashboard_metrics(&self) -> Value {
        let r = self
            .request(Method::GET, "/api/v1/dashboard/metrics", None)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn heartbeat(&self, tenant: &str, body: Value) -> Response {
        self.request(Method::POST, "/api/v1/discovery/heartbeat", Some(tenant))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

/// Asserts the documented error shape, status and code, and that the body's
/// request id is the one in the `X-Request-ID` header. Returns the message.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> String {
    assert_eq!(response.status(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type:?}"
    );
    let header_id = response
        .headers()
        .get("x-request-id")
        .expect("X-Request-ID on every response")
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object in {body}"));
    assert_eq!(error.len(), 3, "exactly code, message, request_id: {body}");
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(error["request_id"], header_id.as_str());
    let message = error["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    message
}

/// Polls `check` until it returns `Some`, failing after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {secs} s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
