//! The infrastructure monitor and the dashboard's health and services routes: every backend up, then each one stopped (test-owned PostgreSQL, redis-server, nats-server and Tansu), and instance counts per scope on both stores.

use std::time::{Duration, Instant};

use hub_bus::testing::BrokerProcess;
use hub_store::testing::RedisServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::pg_support::{Hub, blocking, blocking_create};
use crate::support::{
    BOUND_KEY, Backend, TestApp, assert_error, eventually, on_both_backends, spawn_app_with,
};

/// The monitor's interval in these tests, and its timeout per check.
const INTERVAL_MS: u64 = 250;
const TIMEOUT_MS: u64 = 150;

async fn dashboard(hub: &Hub) -> Value {
    let r = hub
        .request(Method::GET, "/api/v1/dashboard/health", "system")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "dashboard health answers 200");
    r.json().await.unwrap()
}

/// Polls the dashboard until `backend` shows `status`; returns the body and
/// how long it took.
async fn wait_status(hub: &Hub, backend: &str, status: &str) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let body = dashboard(hub).await;
        if body["infrastructure"][backend]["status"] == status {
            return (body, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{backend} not {status} within 20 s: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// When `backend`'s current status began, as the dashboard says.
fn since(body: &Value, backend: &str) -> chrono::DateTime<chrono::Utc> {
    body["infrastructure"][backend]["since"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// While a backend other than PostgreSQL is down, the API keeps answering
/// without a 5xx, and readiness stays 200.
async fn no_5xx(hub: &Hub, round: usize) {
    let tenant = "mon-tenant-a";
    let paths = [
        "/health",
        "/health/ready",
        "/api/v1/discovery/services",
        "/api/v1/discovery/services/billing",
        "/api/v1/dashboard/health",
        "/api/v1/dashboard/services",
        "/api/v1/dashboard/metrics",
    ];
    for path in paths {
        let r = hub.request(Method::GET, path, tenant).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "GET {path} in round {round}");
    }
    let r = hub
        .register(tenant, "extra", &format!("e{round}"), "10.1.0.1")
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "register in round {round}");
    let r = hub
        .request(Method::POST, "/api/v1/discovery/heartbeat", tenant)
        .json(&json!({"service_name": "extra", "instance_id": format!("e{round}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "heartbeat in round {round}");
}

#[tokio::test]
async fn every_backend_up_then_each_stopped_in_turn() {
    let Some(cluster) = blocking_create().await else {
        return;
    };
    let pg = cluster.hub_database().await;
    // The outbox relays (NATS and Kafka are configured) log in as the
    // application login too: one login for both roles.
    hub_store::testing::TestDb::connect(&cluster.superuser())
        .await
        .batch_execute(&format!(
            "GRANT {} TO hub_app",
            hub_store::pg::migrate::RELAY_ROLE
        ))
        .await
        .unwrap();
    let mut redis = RedisServer::start().await;
    let Some(mut nats) = BrokerProcess::nats("monitor") else {
        return;
    };
    let Some(mut tansu) = BrokerProcess::tansu("monitor") else {
        return;
    };
    let redis_port = redis.port.to_string();
    let nats_url = nats.nats_url();
    let kafka = tansu.addr();
    let interval = INTERVAL_MS.to_string();
    let timeout = TIMEOUT_MS.to_string();
    let hub = Hub::start(
        &pg,
        &[
            ("DRAGONFLY_HOST", "127.0.0.1"),
            ("DRAGONFLY_PORT", &redis_port),
            ("NATS_URL", &nats_url),
            ("KAFKA_BROKERS", &kafka),
            ("HUB_KAFKA_PARTITIONS", "1"),
            ("HUB_MONITOR_INTERVAL_MS", &interval),
            ("HUB_MONITOR_TIMEOUT_MS", &timeout),
            // Bounds a dashboard request that counts on a frozen server
            // before the monitor has seen it down.
            ("HUB_PG_STATEMENT_TIMEOUT_MS", "1000"),
        ],
    )
    .await;

    // Everything up.
    for backend in ["postgres", "dragonfly", "nats", "kafka"] {
        wait_status(&hub, backend, "up").await;
    }
    hub.register_created("mon-tenant-a", "billing", "b1", "10.0.0.1")
        .await;
    hub.register_created("mon-tenant-a", "billing", "b2", "10.0.0.2")
        .await;
    hub.register_created("mon-tenant-b", "search", "s1", "10.0.0.3")
        .await;
    let body = dashboard(&hub).await;
    assert_eq!(body["overall_status"], "healthy", "{body:#}");
    assert_eq!(body["rule"], "all_up");
    assert_eq!(body["scope"], "all_tenants");
    assert_eq!(
        body["services"],
        json!({"total": 3, "passing": 3, "warning": 0, "critical": 0})
    );
    assert_eq!(
        body["monitor"],
        json!({"interval_ms": INTERVAL_MS, "timeout_ms": TIMEOUT_MS})
    );
    for backend in ["postgres", "dragonfly", "nats", "kafka"] {
        let b = &body["infrastructure"][backend];
        let latency = b["latency_ms"].as_f64().unwrap();
        assert!(
            latency >= 0.0 && latency < TIMEOUT_MS as f64,
            "{backend}: {b}"
        );
        assert!(b["checked_at"].is_string() && b["since"].is_string(), "{b}");
        assert!(b.get("error").is_none(), "{b}");
        assert!(b["checks"].as_u64().unwrap() >= 1);
    }
    let pool = &body["infrastructure"]["postgres"]["pool"];
    assert_eq!(pool["max_size"], 8, "{pool}");
    assert!(pool["size"].as_u64().unwrap() >= 1, "{pool}");
    // A bound view of one tenant counts only that tenant.
    let r = hub
        .request(
            Method::GET,
            "/api/v1/dashboard/health?tenant=mon-tenant-b",
            "system",
        )
        .send()
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["scope"], "mon-tenant-b");
    assert_eq!(b["services"]["total"], 1);

    // Each non-essential backend stopped in turn: it turns down within two
    // intervals, the others stay up, the hub is degraded, nothing 5xx.
    let two_intervals = Duration::from_millis(2 * INTERVAL_MS);
    let mut down = Vec::new();
    let mut flips = Vec::new();
    for (round, backend) in ["dragonfly", "nats", "kafka"].into_iter().enumerate() {
        let stopped = chrono::Utc::now();
        match backend {
            "dragonfly" => redis.stop(),
            "nats" => nats.stop(),
            _ => tansu.stop(),
        }
        let (body, _) = wait_status(&hub, backend, "down").await;
        // Measured by the monitor's own record (the requests that poll
        // the dashboard may wait for the rate limiter's Dragonfly timeout).
        let took = since(&body, backend) - stopped;
        let took = took.to_std().unwrap_or_default();
        flips.push((backend, took));
        assert!(
            took <= two_intervals,
            "{backend} seen down after {took:?}, more than two intervals"
        );
        down.push(backend);
        assert_eq!(body["overall_status"], "degraded", "{body:#}");
        assert_eq!(body["rule"], "backend_down");
        assert_eq!(body["reason"], format!("down: {}", down.join(", ")));
        let b = &body["infrastructure"][backend];
        let error = b["error"].as_str().unwrap();
        assert!(!error.is_empty() && error.len() <= 200, "{b}");
        assert_eq!(b["last_error"], b["error"]);
        assert!(b["state_seconds"].as_f64().unwrap() < 2.0, "{b}");
        assert!(b["failures"].as_u64().unwrap() >= 1);
        for other in ["postgres", "dragonfly", "nats", "kafka"] {
            if !down.contains(&other) {
                assert_eq!(
                    body["infrastructure"][other]["status"], "up",
                    "{other} while {backend} is down: {body:#}"
                );
            }
        }
        no_5xx(&hub, round).await;
    }
    // NATS reconnects by itself when it comes back.
    nats.restart();
    let (body, _) = wait_status(&hub, "nats", "up").await;
    assert_eq!(body["reason"], "down: dragonfly, kafka");
    assert!(
        body["infrastructure"]["nats"]["last_error"].is_string(),
        "the last failure is kept after a recovery"
    );

    // The source of truth frozen (SIGSTOP: nothing answers, no connection
    // closes): the check times out, so it is down; thawed, up again.
    let frozen = cluster.freeze();
    let froze = chrono::Utc::now();
    let (body, _) = wait_status(&hub, "postgres", "down").await;
    let took = (since(&body, "postgres") - froze)
        .to_std()
        .unwrap_or_default();
    flips.push(("postgres frozen", took));
    assert!(
        took <= two_intervals,
        "frozen postgres seen down after {took:?}"
    );
    assert_eq!(
        body["infrastructure"]["postgres"]["error"],
        format!("no answer within {TIMEOUT_MS} ms (HUB_MONITOR_TIMEOUT_MS)")
    );
    assert_eq!(body["rule"], "source_of_truth_down");
    drop(frozen);
    wait_status(&hub, "postgres", "up").await;

    // The source of truth stopped: critical, readiness 503, liveness 200,
    // and the dashboard itself still answers.
    let stopped = chrono::Utc::now();
    let mut ctl = cluster.pg_ctl();
    blocking(move || {
        let out = ctl.args(["-w", "stop", "-m", "fast"]).output().unwrap();
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    })
    .await;
    let (body, _) = wait_status(&hub, "postgres", "down").await;
    let took = (since(&body, "postgres") - stopped)
        .to_std()
        .unwrap_or_default();
    flips.push(("postgres", took));
    // `pg_ctl stop -m fast` itself takes a moment before the server
    // refuses connections; the check after that comes within an interval.
    assert!(
        took <= two_intervals + Duration::from_secs(1),
        "postgres seen down {took:?} after the stop began"
    );
    assert_eq!(body["overall_status"], "critical", "{body:#}");
    assert_eq!(body["rule"], "source_of_truth_down");
    assert!(body["services"].is_null(), "no count without the store");
    let r = hub
        .request(Method::GET, "/health/ready", "system")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable").await;
    let r = hub
        .request(Method::GET, "/health", "system")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let error = body["infrastructure"]["postgres"]["error"]
        .as_str()
        .unwrap();
    assert!(!error.contains("password"), "{error}");
    #[allow(clippy::print_stderr)]
    {
        eprintln!("monitor: time to see each backend down: {flips:?}");
    }
    hub.shut_down().await;
}

/// Readiness follows the source of truth only: with every bus and
/// Dragonfly configured but unreachable from the start, the hub is ready
/// and degraded.
#[tokio::test]
async fn readiness_ignores_backends_other_than_the_store() {
    let dead = hub_bus::testing::free_port().to_string();
    let nats = format!("nats://127.0.0.1:{dead}");
    let kafka = format!("127.0.0.1:{dead}");
    let Some(app) = spawn_app_with(
        Backend::Postgres,
        &[
            ("DRAGONFLY_HOST", "127.0.0.1"),
            ("DRAGONFLY_PORT", &dead),
            ("NATS_URL", &nats),
            ("KAFKA_BROKERS", &kafka),
            ("HUB_MONITOR_INTERVAL_MS", "100"),
            ("HUB_MONITOR_TIMEOUT_MS", "100"),
        ],
        None,
    )
    .await
    else {
        return;
    };
    let body = eventually(20, || async {
        let body = health(&app, "", None).await;
        (body["infrastructure"]["kafka"]["status"] == "down"
            && body["infrastructure"]["nats"]["status"] == "down"
            && body["infrastructure"]["dragonfly"]["status"] == "down"
            && body["infrastructure"]["postgres"]["status"] == "up")
            .then_some(body)
    })
    .await;
    assert_eq!(body["overall_status"], "degraded");
    assert_eq!(body["reason"], "down: dragonfly, nats, kafka");
    let r = app
        .request(Method::GET, "/health/ready", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// The health dashboard as `key` (the operator key when `None`) sees it.
async fn health(app: &TestApp, query: &str, key: Option<&str>) -> Value {
    let r = dashboard_get(app, "/api/v1/dashboard/health", query, key).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn dashboard_get(
    app: &TestApp,
    path: &str,
    query: &str,
    key: Option<&str>,
) -> reqwest::Response {
    match key {
        None => app.request(Method::GET, &format!("{path}{query}"), None),
        Some(key) => app
            .client
            .get(app.url(&format!("{path}{query}")))
            .header("X-API-Key", key),
    }
    .send()
    .await
    .unwrap()
}

async fn beat(app: &TestApp, tenant: &str, service: &str, instance: &str, body: Value) {
    let mut body = body;
    body["service_name"] = json!(service);
    body["instance_id"] = json!(instance);
    let r = app.heartbeat(tenant, body).await;
    assert_eq!(r.status(), StatusCode::OK, "heartbeat {tenant}/{instance}");
}

fn counts(total: u64, passing: u64, warning: u64, critical: u64) -> Value {
    json!({"total": total, "passing": passing, "warning": warning, "critical": critical})
}

/// Instances by status per scope, exactly; the overall status follows the
/// instance rules; a bound key sees its own tenant only.
async fn counts_per_scope_and_instance_rules(backend: Backend) {
    // With Dragonfly, a redis-server of the test's own: the tenant ids
    // here (the bound key's) must not meet other tests' keys.
    let redis = match backend {
        Backend::PgDragonfly => Some(RedisServer::start().await),
        _ => None,
    };
    let port = redis.as_ref().map(|r| r.port.to_string());
    let extra: Vec<(&str, &str)> = match &port {
        Some(port) => vec![("DRAGONFLY_HOST", "127.0.0.1"), ("DRAGONFLY_PORT", port)],
        None => Vec::new(),
    };
    let Some(app) = spawn_app_with(backend, &extra, None).await else {
        return;
    };
    // tenant1 (the bound key's): billing 3 (one warning), search 1.
    // tenant2: orders 2, one of them critical.
    for (tenant, service, instance) in [
        ("tenant1", "billing", "b1"),
        ("tenant1", "billing", "b2"),
        ("tenant1", "billing", "b3"),
        ("tenant1", "search", "s1"),
        ("tenant2", "orders", "o1"),
        ("tenant2", "orders", "o2"),
    ] {
        app.register_ok(tenant, service, instance).await;
    }
    // With Dragonfly, heartbeats that change no status (b3's) renew in the
    // cache once the tenant is synced, and their metrics stay there until
    // sampled: the dashboard must show them all the same.
    app.settle("tenant1").await;
    app.settle("tenant2").await;
    beat(
        &app,
        "tenant1",
        "billing",
        "b2",
        json!({"status": "warning", "metrics": {"response_time_ms": 12.5, "cpu_usage": 40.0}}),
    )
    .await;
    beat(
        &app,
        "tenant1",
        "billing",
        "b3",
        json!({"metrics": {"response_time_ms": 3.0, "memory_usage": 512.0, "error_rate": 0.01}}),
    )
    .await;
    beat(
        &app,
        "tenant2",
        "orders",
        "o1",
        json!({"status": "critical"}),
    )
    .await;

    let all = health(&app, "", None).await;
    assert_eq!(all["scope"], "all_tenants");
    assert_eq!(all["services"], counts(6, 4, 1, 1), "{all:#}");
    assert_eq!(all["overall_status"], "degraded");
    assert_eq!(all["rule"], "some_instances_critical", "{all:#}");
    assert_eq!(all["reason"], "1 of 6 instances are critical");
    let (postgres, dragonfly) = match backend {
        Backend::Embedded => ("not_configured", "not_configured"),
        Backend::Postgres => ("up", "not_configured"),
        Backend::PgDragonfly => ("up", "up"),
    };
    let all = eventually(10, || async {
        let body = health(&app, "", None).await;
        (body["infrastructure"]["postgres"]["status"] == postgres
            && body["infrastructure"]["dragonfly"]["status"] == dragonfly)
            .then_some(body)
    })
    .await;
    for other in ["nats", "kafka"] {
        assert_eq!(all["infrastructure"][other]["status"], "not_configured");
    }

    let one = health(&app, "?tenant=tenant1", None).await;
    assert_eq!(one["scope"], "tenant1");
    assert_eq!(one["services"], counts(4, 3, 1, 0));
    assert_eq!(
        one["overall_status"], "healthy",
        "a warning is not critical"
    );
    assert_eq!(one["rule"], "all_up");

    // tenant2: 1 of 2 critical is half, not most.
    let two = health(&app, "?tenant=tenant2", None).await;
    assert_eq!(two["services"], counts(2, 1, 0, 1));
    assert_eq!(two["rule"], "some_instances_critical");
    beat(
        &app,
        "tenant2",
        "orders",
        "o2",
        json!({"status": "critical"}),
    )
    .await;
    let two = health(&app, "?tenant=tenant2", None).await;
    assert_eq!(two["services"], counts(2, 0, 0, 2));
    assert_eq!(two["overall_status"], "critical");
    assert_eq!(two["rule"], "most_instances_critical");

    // The bound key sees tenant1 only, with or without naming it.
    for query in ["", "?tenant=tenant1"] {
        let bound = health(&app, query, Some(BOUND_KEY)).await;
        assert_eq!(bound["scope"], "tenant1");
        assert_eq!(bound["services"], counts(4, 3, 1, 0));
        assert_eq!(bound["overall_status"], "healthy");
    }
    for path in ["/api/v1/dashboard/health", "/api/v1/dashboard/services"] {
        let r = dashboard_get(&app, path, "?tenant=tenant2", Some(BOUND_KEY)).await;
        assert_error(r, StatusCode::FORBIDDEN, "tenant_forbidden").await;
    }

    // Services of tenant1 as the bound key sees them.
    let r = dashboard_get(&app, "/api/v1/dashboard/services", "", Some(BOUND_KEY)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let services: Value = r.json().await.unwrap();
    assert_eq!(services["scope"], "tenant1");
    assert_eq!(services["count"], 2, "{services:#}");
    let list = services["services"].as_array().unwrap();
    assert!(list.iter().all(|s| s["tenant_id"] == "tenant1"));
    let billing = &list[0];
    assert_eq!(billing["service_name"], "billing");
    assert_eq!(billing["instances"], counts(3, 2, 1, 0));
    assert!(billing["newest_heartbeat"].is_string());
    let metrics = &billing["latest_metrics"];
    assert_eq!(
        metrics["instance_id"], "b3",
        "the latest report: {billing:#}"
    );
    assert_eq!(metrics["status"], "passing");
    assert_eq!(metrics["response_time_ms"], 3.0);
    assert_eq!(metrics["memory_usage"], 512.0);
    assert_eq!(metrics["error_rate"], 0.01);
    assert!(metrics["cpu_usage"].is_null());
    let search = &list[1];
    assert_eq!(search["service_name"], "search");
    assert_eq!(search["instances"], counts(1, 1, 0, 0));
    assert!(search["latest_metrics"].is_null());

    // The operator's view covers both tenants, tenant by tenant.
    let r = dashboard_get(&app, "/api/v1/dashboard/services", "", None).await;
    let all: Value = r.json().await.unwrap();
    assert_eq!(all["scope"], "all_tenants");
    let names: Vec<(String, String, u64)> = all["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["tenant_id"].as_str().unwrap().to_owned(),
                s["service_name"].as_str().unwrap().to_owned(),
                s["instances"]["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("tenant1".into(), "billing".into(), 3),
            ("tenant1".into(), "search".into(), 1),
            ("tenant2".into(), "orders".into(), 2),
        ]
    );
    // A deregistered service leaves the summary.
    let r = app.deregister("tenant1", "search", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    let one = health(&app, "?tenant=tenant1", None).await;
    assert_eq!(one["services"], counts(3, 2, 1, 0));
}

on_both_backends!(counts_per_scope_and_instance_rules);

#[tokio::test]
async fn counts_per_scope_and_instance_rules_with_leases_in_dragonfly() {
    counts_per_scope_and_instance_rules(Backend::PgDragonfly).await;
}

/// Mass-expiry protection holding a tenant's removals degrades that
/// tenant's (and the operator's) view, not another tenant's.
#[tokio::test]
async fn mass_expiry_protection_degrades_the_tenants_view() {
    let clock = crate::support::manual_clock();
    let Some(app) = spawn_app_with(
        Backend::Embedded,
        &[
            ("HUB_MASS_EXPIRY_RATIO", "0.3"),
            ("HUB_MASS_EXPIRY_MIN", "2"),
        ],
        Some(clock.clone()),
    )
    .await
    else {
        return;
    };
    // 4 of 10 instances stop heartbeating at once: more than 30 %, at
    // least 2, so the reaper holds their removal; 40 % is not "most".
    for i in 0..10 {
        let ttl = if i < 4 { 5 } else { 3600 };
        let r = app
            .register(
                "tenant3",
                json!({"service_name": "fleet", "instance_id": format!("f{i}"), "host": "10.0.0.1", "port": 80, "ttl_seconds": ttl}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    app.register_ok("tenant1", "calm", "c1").await;
    clock.advance(chrono::Duration::seconds(6));
    let held = eventually(10, || async {
        let body = health(&app, "?tenant=tenant3", None).await;
        (body["mass_expiry"] == true).then_some(body)
    })
    .await;
    assert_eq!(held["overall_status"], "degraded", "{held:#}");
    assert_eq!(held["rule"], "mass_expiry");
    assert_eq!(held["services"], counts(10, 6, 0, 4));
    let all = health(&app, "", None).await;
    assert_eq!(
        (&all["rule"], &all["mass_expiry"]),
        (&json!("mass_expiry"), &json!(true))
    );
    // The bound key's own tenant is not held.
    let own = health(&app, "", Some(BOUND_KEY)).await;
    assert_eq!(own["scope"], "tenant1");
    assert_eq!(own["mass_expiry"], false);
    assert_eq!(own["overall_status"], "healthy", "{own:#}");
}
