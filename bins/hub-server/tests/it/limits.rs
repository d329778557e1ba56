//! Rate limits over HTTP: 429 body and headers, exempt paths, two replicas sharing one budget through Redis, and a Redis that dies mid-test.

use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, assert_error, spawn_app_with};
use hub_store::testing::{self, RedisServer};

/// A tenant id no other run uses: the tests share the machine's Redis.
fn fresh_tenant(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

fn header(response: &Response, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// A config file with per-tenant budgets; kept as long as the returned
/// guard (the settings read it at start).
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(body: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hub-rl-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, body).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_and_the_remaining_budget() {
    let app = spawn_app_with(
        Backend::Embedded,
        &[("HUB_RATE_LIMIT_RPS", "1"), ("HUB_RATE_LIMIT_BURST", "3")],
        None,
    )
    .await
    .unwrap();
    for left in [2, 1, 0] {
        let r = app.list("tenant1", "").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "ratelimit-limit"), Some(3));
        assert_eq!(header(&r, "ratelimit-remaining"), Some(left));
        assert!(header(&r, "ratelimit-reset").is_some());
    }
    let r = app.list("tenant1", "").await;
    assert_eq!(header(&r, "retry-after"), Some(1));
    assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
    assert!(r.headers().contains_key("x-request-id"));
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another tenant has its own budget.
    assert_eq!(app.list("tenant2", "").await.status(), StatusCode::OK);
    // The refusal is counted for the tenant on the dashboard.
    let body: Value = app.dashboard_metrics().await;
    assert_eq!(body["rate_limits"]["rejected"]["tenant1"], 1, "{body}");
}

#[tokio::test]
async fn health_docs_and_heartbeats_are_never_limited() {
    let app = spawn_app_with(
        Backend::Embedded,
        &[("HUB_RATE_LIMIT_RPS", "1"), ("HUB_RATE_LIMIT_BURST", "1")],
        None,
    )
    .await
    .unwrap();
    app.register_ok("tenant1", "svc", "i1").await; // the one request of the burst
    assert_eq!(
        app.list("tenant1", "").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..20 {
        for path in [
            "/health",
            "/health/ready",
            "/docs",
            "/redoc",
            "/openapi.json",
        ] {
            let r = app
                .request(Method::GET, path, Some("tenant1"))
                .send()
                .await
                .unwrap();
            // The docs pages may not be served by this build (404), but are
            // never refused for the budget.
            assert_ne!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
            assert!(!r.status().is_server_error(), "{path}: {}", r.status());
            if path.starts_with("/health") {
                assert!(r.status().is_success(), "{path}: {}", r.status());
            }
            assert!(!r.headers().contains_key("ratelimit-limit"), "{path}");
        }
        let r = app
            .heartbeat(
                "tenant1",
                json!({"service_name": "svc", "instance_id": "i1"}),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "heartbeats have no budget to run out"
        );
    }
}

/// Sends requests of `tenant` through `apps` in turn from 4 tasks for
/// `period`; returns (passed, refused, other statuses).
async fn hammer(apps: &[&TestApp], tenant: &str, period: Duration) -> (u32, u32, Vec<u16>) {
    let deadline = Instant::now() + period;
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let targets: Vec<(reqwest::Client, String)> = apps
            .iter()
            .map(|a| (a.client.clone(), a.url("/api/v1/discovery/services")))
            .collect();
        let tenant = tenant.to_owned();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut limited, mut other) = (0, 0, Vec::new());
            let mut i = worker;
            while Instant::now() < deadline {
                let (client, url) = &targets[i % targets.len()];
                i += 1;
                let status = client
                    .get(url)
                    .header("X-API-Key", crate::support::OPERATOR_KEY)
                    .header("X-Tenant-ID", &tenant)
                    .send()
                    .await
                    .unwrap()
                    .status();
                match status {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => limited += 1,
                    s => other.push(s.as_u16()),
                }
            }
            (ok, limited, other)
        }));
    }
    let mut total = (0, 0, Vec::new());
    for task in tasks {
        let (ok, limited, other) = task.await.unwrap();
        total.0 += ok;
        total.1 += limited;
        total.2.extend(other);
    }
    total
}

fn redis_env(port: &str, config: &ConfigFile) -> Vec<(&'static str, String)> {
    let (host, _) = testing::redis_addr();
    vec![
        ("DRAGONFLY_HOST", host),
        ("DRAGONFLY_PORT", port.to_owned()),
        ("HUB_CONFIG", config.path().to_owned()),
    ]
}

async fn spawn_with(env: &[(&'static str, String)]) -> TestApp {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_app_with(Backend::Embedded, &pairs, None)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_replicas_share_one_budget_through_redis() {
    // Fails under CI when the machine's Redis is missing.
    if testing::dragonfly().await.is_none() {
        return;
    }
    let hammered = fresh_tenant("rl-a");
    let bystander = fresh_tenant("rl-b");
    let config = ConfigFile::new(&format!(
        "[rate_limits.tenants.{hammered}]\nrate = 20\nburst = 20\n"
    ));
    let (_, port) = testing::redis_addr();
    let env = redis_env(&port.to_string(), &config);
    let a = spawn_with(&env).await;
    let b = spawn_with(&env).await;
    // Wait until both replicas are connected: until then each answers from
    // its local limiter, which would add a burst of 20 per replica.
    for app in [&a, &b] {
        let warm_up = fresh_tenant("rl-w");
        crate::support::eventually(10, || async {
            assert_eq!(app.list(&warm_up, "").await.status(), StatusCode::OK);
            let body: Value = app.dashboard_metrics().await;
            (body["rate_limits"]["degraded"] == false).then_some(())
        })
        .await;
    }
    let period = Duration::from_secs(3);
    let started = Instant::now();
    let both = [&a, &b];
    let (hammer_result, bystander_result) = tokio::join!(
        hammer(&both, &hammered, period),
        hammer(&both, &bystander, period),
    );
    let elapsed = started.elapsed().as_secs_f64();
    let (ok, limited, other) = hammer_result;
    assert!(other.is_empty(), "unexpected statuses {other:?}");
    // One shared budget: the burst of 20 plus 20/s, in total over both
    // replicas (each on its own would give twice that).
    let expected = 20.0 + 20.0 * elapsed;
    let ok = f64::from(ok);
    // Answers of the local limiter (Dragonfly failed) would explain excess.
    let fallbacks = [
        a.dashboard_metrics().await["rate_limits"]["fallbacks"].clone(),
        b.dashboard_metrics().await["rate_limits"]["fallbacks"].clone(),
    ];
    assert!(
        ok >= expected * 0.8 && ok <= expected * 1.2,
        "{ok} requests passed in {elapsed:.2} s, expected about {expected:.0} (refused {limited}, fallbacks {fallbacks:?})"
    );
    let (bystander_ok, bystander_limited, other) = bystander_result;
    assert_eq!(bystander_limited, 0, "another tenant must never see a 429");
    assert!(other.is_empty() && bystander_ok > 0, "{other:?}");
}

#[tokio::test]
async fn a_redis_that_dies_falls_back_to_the_local_limiter_without_errors() {
    let mut redis = RedisServer::start().await;
    let tenant = fresh_tenant("rl-out");
    let config = ConfigFile::new(&format!(
        "[rate_limits.tenants.{tenant}]\nrate = 5\nburst = 5\n"
    ));
    let app = spawn_with(&redis_env(&redis.port.to_string(), &config)).await;
    // Wait for the background connection: a request answered by the shared
    // limiter clears `degraded`.
    crate::support::eventually(10, || async {
        let r = app.list("tenant2", "").await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = app.dashboard_metrics().await;
        (body["rate_limits"]["degraded"] == false).then_some(())
    })
    .await;
    redis.stop();
    // Lookups, registrations and heartbeats keep succeeding: no 5xx.
    let mut statuses = Vec::new();
    for i in 0..30 {
        statuses.push(app.list("tenant2", "").await.status());
        let r = app
            .register(
                "tenant2",
                json!({"service_name": "svc", "instance_id": format!("i{i}"), "host": "10.0.0.1", "port": 80}),
            )
            .await;
        statuses.push(r.status());
    }
    assert!(
        statuses.iter().all(|s| s.is_success()),
        "every request succeeds on the local limiter: {statuses:?}"
    );
    // The local limiter still holds the tenant to its budget.
    let mut limited = 0;
    for _ in 0..10 {
        if app.list(&tenant, "").await.status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert!(
        limited >= 4,
        "the fallback limits too ({limited} of 10 refused)"
    );
    let body: Value = app.dashboard_metrics().await;
    assert!(
        body["rate_limits"]["fallbacks"].as_u64().unwrap() > 0,
        "fallbacks are counted: {body}"
    );
    assert_eq!(body["rate_limits"]["degraded"], true, "{body}");
}

#[tokio::test]
async fn an_unreachable_dragonfly_does_not_stop_start_up() {
    // A port nothing listens on: taken from the OS, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = ConfigFile::new("");
    let app = spawn_with(&redis_env(&port.to_string(), &config)).await;
    let r = app.list("tenant1", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("ratelimit-remaining"));
}
