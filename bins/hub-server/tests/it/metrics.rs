//! Request and change metrics over HTTP: exact counts of the test's own traffic on the dashboard, percentiles, tenant isolation, and `GET /metrics` parsed as Prometheus text.

use std::collections::{BTreeMap, HashMap};

use chrono::Duration;
use prometheus_parse::{Sample, Scrape, Value as PromValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{
    BOUND_KEY, Backend, TestApp, assert_error, eventually, manual_clock, on_both_backends,
    spawn_app_with,
};

const LOOKUP: &str = "/api/v1/discovery/services/{service_name}";
const REGISTER: &str = "/api/v1/discovery/register";

/// The dashboard metrics for `?tenant=` as the operator sees them. The call
/// acts for a tenant of its own (the operator's scope comes from the query),
/// so it spends no test tenant's rate budget and adds to no test tenant's
/// request counts.
async fn dashboard_for(app: &TestApp, tenant: &str) -> Value {
    let caller = format!("ops-{}", uuid::Uuid::new_v4().simple());
    let r = app
        .request(
            Method::GET,
            &format!("/api/v1/dashboard/metrics?tenant={tenant}"),
            Some(&caller),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// `method route status_class -> count` of a dashboard body's requests.
fn by_route(body: &Value) -> BTreeMap<String, u64> {
    body["requests"]["by_route"]
        .as_array()
        .unwrap_or_else(|| panic!("no requests.by_route in {body}"))
        .iter()
        .map(|r| {
            (
                format!(
                    "{} {} {}",
                    r["method"].as_str().unwrap(),
                    r["route"].as_str().unwrap(),
                    r["status_class"].as_str().unwrap()
                ),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn assert_ordered_percentiles(p: &Value, count: u64) {
    assert_eq!(p["count"], count, "{p}");
    let (p50, p90, p99) = (
        p["p50_ms"].as_f64().unwrap_or_else(|| panic!("p50 in {p}")),
        p["p90_ms"].as_f64().unwrap(),
        p["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p90 && p90 <= p99, "{p}");
}

/// Traffic of known shape for tenant1 and tenant2, then: the dashboard
/// counts exactly it, per tenant, with ordered percentiles, and the bound
/// key of tenant1 sees tenant1's figures and nothing of tenant2's.
async fn dashboard_counts_the_traffic_of_the_test_exactly(backend: Backend) {
    let Some(app) = spawn_app_with(backend, &[], None).await else {
        return;
    };
    for i in ["a", "b", "c"] {
        app.register_ok("tenant1", "billing", i).await;
    }
    // Registering "a" again updates it.
    app.register_ok("tenant1", "billing", "a").await;
    for _ in 0..5 {
        assert_eq!(
            app.get_service("tenant1", "billing").await.status(),
            StatusCode::OK
        );
    }
    for _ in 0..2 {
        assert_eq!(
            app.get_service("tenant1", "nothing").await.status(),
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(
        app.deregister("tenant1", "billing", "?instance_id=c")
            .await
            .status(),
        StatusCode::OK
    );
    let r = app
        .heartbeat(
            "tenant1",
            json!({"service_name": "billing", "instance_id": "b", "status": "warning"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // A path no route matches: counted under one fixed label, not the path.
    let r = app
        .request(Method::GET, "/api/v1/no/such/path-42", Some("tenant1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // No key: 401, counted under no tenant.
    for _ in 0..2 {
        let r = app
            .client
            .get(app.url("/api/v1/discovery/services/billing"))
            .header("X-Tenant-ID", "tenant1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    app.register_ok("tenant2", "secret-payroll", "x").await;
    assert_eq!(
        app.get_service("tenant2", "secret-payroll").await.status(),
        StatusCode::OK
    );

    let t1 = dashboard_for(&app, "tenant1").await;
    let expected: BTreeMap<String, u64> = [
        (format!("POST {REGISTER} 2xx"), 4),
        (format!("GET {LOOKUP} 2xx"), 5),
        (format!("GET {LOOKUP} 4xx"), 2),
        (
            "DELETE /api/v1/discovery/services/{service_name} 2xx".to_owned(),
            1,
        ),
        ("POST /api/v1/discovery/heartbeat 2xx".to_owned(), 1),
        ("GET unmatched 4xx".to_owned(), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_route(&t1), expected, "{t1}");
    assert_eq!(t1["requests"]["tracked"], true);
    assert_eq!(t1["requests"]["total"], 14);
    assert!(t1["requests"].get("without_tenant").is_none(), "{t1}");
    assert_ordered_percentiles(&t1["requests"]["latency"]["since_start"], 14);
    // Everything happened within the last 45 seconds: all in the window.
    assert_ordered_percentiles(&t1["requests"]["latency"]["last_minute"], 14);
    assert_eq!(
        t1["changes"],
        json!({
            "registrations": 3,
            "updates": 1,
            "deregistrations": 1,
            "expirations": {"to_critical": 0, "removed": 0},
            "status_changes": 1,
        })
    );
    assert!(
        t1["counted_since"]["replica_started_at"].is_string(),
        "{t1}"
    );
    assert!(
        t1["counted_since"]["note"]
            .as_str()
            .unwrap()
            .contains("since it started")
    );
    assert_eq!(t1["rate_limits"]["rejected"]["tenant1"], 0);
    // Instances as stored now: "c" deregistered, "b" reported warning.
    assert_eq!(
        t1["instances"],
        json!({"total": 2, "passing": 1, "warning": 1, "critical": 0}),
        "{t1}"
    );

    let t2 = dashboard_for(&app, "tenant2").await;
    assert_eq!(t2["requests"]["total"], 2, "{t2}");
    assert_eq!(t2["changes"]["registrations"], 1);

    // The operator's totals: both tenants, the 401s under no tenant, and the
    // two dashboard calls above.
    let all = app.dashboard_metrics().await;
    assert_eq!(all["scope"], "all_tenants");
    assert_eq!(all["requests"]["without_tenant"], 2, "{all}");
    assert_eq!(all["requests"]["total"], 14 + 2 + 2 + 2, "{all}");
    assert_eq!(
        by_route(&all)[&format!("GET {LOOKUP} 4xx")],
        2 + 2,
        "the 401s carry the route they asked for"
    );
    assert_eq!(all["changes"]["registrations"], 4);
    assert_eq!(
        all["instances"],
        json!({"total": 3, "passing": 2, "warning": 1, "critical": 0}),
        "{all}"
    );

    // tenant1's bound key: tenant1's figures, and no trace of tenant2.
    let r = app
        .client
        .get(app.url("/api/v1/dashboard/metrics"))
        .header("X-API-Key", BOUND_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let bound: Value = r.json().await.unwrap();
    assert_eq!(bound["scope"], "tenant1");
    assert_eq!(by_route(&bound), expected);
    assert_eq!(bound["changes"], t1["changes"]);
    assert_eq!(bound["instances"], t1["instances"]);
    let text = bound.to_string();
    assert!(
        !text.contains("tenant2") && !text.contains("secret-payroll"),
        "{text}"
    );
    assert!(bound["requests"].get("without_tenant").is_none());
    let r = app
        .client
        .get(app.url("/api/v1/dashboard/metrics?tenant=tenant2"))
        .header("X-API-Key", BOUND_KEY)
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "tenant_forbidden").await;
}

/// The reaper's expirations are counted: a lease that runs out turns the
/// instance critical, and one expired for long enough is removed.
async fn lease_expirations_are_counted(backend: Backend) {
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
    clock.advance(Duration::seconds(10));
    let expirations = |body: Value| body["changes"]["expirations"].clone();
    eventually(5, || async {
        (expirations(dashboard_for(&app, "tenant1").await)
            == json!({"to_critical": 1, "removed": 0}))
        .then_some(())
    })
    .await;
    clock.advance(Duration::seconds(30));
    eventually(5, || async {
        (expirations(dashboard_for(&app, "tenant1").await)
            == json!({"to_critical": 1, "removed": 1}))
        .then_some(())
    })
    .await;
    assert_eq!(
        expirations(dashboard_for(&app, "tenant2").await),
        json!({"to_critical": 0, "removed": 0})
    );
}

on_both_backends!(
    dashboard_counts_the_traffic_of_the_test_exactly,
    lease_expirations_are_counted,
);

async fn scrape(app: &TestApp) -> Scrape {
    let r = app
        .request(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = r.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn labels_of(sample: &Sample, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| sample.labels.get(n).unwrap_or("").to_owned())
        .collect()
}

/// `labels -> value` of every counter or gauge sample named `metric`.
fn values(scrape: &Scrape, metric: &str, names: &[&str]) -> HashMap<Vec<String>, f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| {
            let value = match s.value {
                PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => v,
                ref other => panic!("{metric} is not a counter or gauge: {other:?}"),
            };
            (labels_of(s, names), value)
        })
        .collect()
}

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

#[tokio::test]
async fn prometheus_metrics_need_an_operator_key_and_count_the_traffic() {
    let app = spawn_app_with(Backend::Embedded, &[], None).await.unwrap();
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "missing_api_key").await;
    let r = app
        .client
        .get(app.url("/metrics"))
        .header("X-API-Key", BOUND_KEY)
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "operator_key_required").await;

    for i in ["a", "b"] {
        app.register_ok("tenant1", "billing", i).await;
    }
    for _ in 0..3 {
        assert_eq!(
            app.get_service("tenant1", "billing").await.status(),
            StatusCode::OK
        );
    }
    let scrape = scrape(&app).await;
    let requests = values(
        &scrape,
        "hub_http_requests_total",
        &["method", "route", "status"],
    );
    let lookup = key(&["GET", "/api/v1/discovery/services/:service_name", "200"]);
    assert_eq!(requests[&lookup], 3.0, "{requests:?}");
    assert_eq!(
        requests[&key(&["POST", "/api/v1/discovery/register", "201"])],
        2.0
    );
    // The 401 and the 403 above.
    assert_eq!(requests[&key(&["GET", "/metrics", "401"])], 1.0);
    assert_eq!(requests[&key(&["GET", "/metrics", "403"])], 1.0);

    let histogram = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "hub_http_request_duration_seconds"
                && labels_of(s, &["method", "route", "status"]) == lookup
        })
        .unwrap_or_else(|| panic!("no latency histogram for lookups: {:?}", scrape.samples));
    let PromValue::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {histogram:?}");
    };
    assert!(!buckets.is_empty());
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
    assert_eq!(inf.count, 3.0);
    let counts = values(
        &scrape,
        "hub_http_request_duration_seconds_count",
        &["method", "route", "status"],
    );
    assert_eq!(counts[&lookup], 3.0);

    let changes = values(&scrape, "hub_registry_changes_total", &["tenant", "kind"]);
    assert_eq!(changes[&key(&["tenant1", "registration"])], 2.0);
    let expirations = values(
        &scrape,
        "hub_lease_expirations_total",
        &["tenant", "outcome"],
    );
    assert_eq!(expirations[&key(&["tenant1", "critical"])], 0.0);
    let started = values(&scrape, "hub_replica_start_time_seconds", &[]);
    assert!(started[&key(&[])] > 1.7e9);
    let instances = values(&scrape, "hub_instances", &["tenant", "status"]);
    assert_eq!(
        instances[&key(&["tenant1", "passing"])],
        2.0,
        "{instances:?}"
    );
    assert_eq!(instances[&key(&["tenant1", "critical"])], 0.0);
    // Embedded mode configures no backend: no backend series.
    assert!(
        values(&scrape, "hub_backend_up", &["backend"]).is_empty(),
        "{:?}",
        scrape.samples
    );
    // Embedded mode without buses: no bus series, but the families parse.
    assert!(scrape.docs.contains_key("hub_http_requests_total"));
    // No lookup cache and no group commit in embedded mode: no families.
    for family in ["hub_lookup_cache_listening", "hub_pg_write_batches_total"] {
        assert!(!scrape.docs.contains_key(family), "{family}");
    }
}

#[tokio::test]
async fn prometheus_tenant_labels_are_capped_and_the_rest_is_other() {
    let app = spawn_app_with(
        Backend::Embedded,
        &[
            ("HUB_METRICS_MAX_TENANTS", "2"),
            ("HUB_RATE_LIMIT_RPS", "1"),
            ("HUB_RATE_LIMIT_BURST", "1"),
        ],
        None,
    )
    .await
    .unwrap();
    let tenants = ["cap-t1", "cap-t2", "cap-t3", "cap-t4", "cap-t5"];
    for tenant in tenants {
        app.register_ok(tenant, "svc", "i").await;
        // The burst of one is spent: refused and counted for the tenant.
        assert_eq!(
            app.register(
                tenant,
                json!({"service_name": "svc", "host": "h", "port": 1})
            )
            .await
            .status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let scrape = scrape(&app).await;
    let changes = values(&scrape, "hub_registry_changes_total", &["tenant", "kind"]);
    let registrations: HashMap<String, f64> = changes
        .iter()
        .filter(|(k, _)| k[1] == "registration")
        .map(|(k, v)| (k[0].clone(), *v))
        .collect();
    assert_eq!(
        registrations,
        HashMap::from([
            ("cap-t1".to_owned(), 1.0),
            ("cap-t2".to_owned(), 1.0),
            ("other".to_owned(), 3.0)
        ])
    );
    let instances = values(&scrape, "hub_instances", &["tenant", "status"]);
    assert_eq!(instances[&key(&["other", "passing"])], 3.0, "{instances:?}");
    assert_eq!(
        instances[&key(&["cap-t1", "passing"])],
        1.0,
        "{instances:?}"
    );
    let rejections = values(&scrape, "hub_rate_limit_rejections_total", &["tenant"]);
    assert_eq!(
        rejections,
        HashMap::from([
            (key(&["cap-t1"]), 1.0),
            (key(&["cap-t2"]), 1.0),
            (key(&["other"]), 3.0)
        ])
    );
    // Every tenant label in the whole scrape is one of the three.
    for sample in &scrape.samples {
        if let Some(tenant) = sample.labels.get("tenant") {
            assert!(
                ["cap-t1", "cap-t2", "other"].contains(&tenant),
                "{sample:?}"
            );
        }
    }
    // A tenant past the cap is not tracked on its dashboard (its requests
    // are pooled with other tenants'); its change counts are still its own.
    let t5 = dashboard_for(&app, "cap-t5").await;
    assert_eq!(t5["requests"]["tracked"], false, "{t5}");
    assert_eq!(t5["requests"]["total"], 0);
    assert_eq!(t5["changes"]["registrations"], 1);
    assert_eq!(dashboard_for(&app, "cap-t1").await["requests"]["total"], 2);
}

/// In PostgreSQL mode the monitor's view of the store is scraped: up, with
/// the latency of its last check.
#[tokio::test]
async fn prometheus_reports_the_backends_the_monitor_checks() {
    let Some(app) = spawn_app_with(
        Backend::Postgres,
        &[
            ("HUB_MONITOR_INTERVAL_MS", "200"),
            ("HUB_MONITOR_TIMEOUT_MS", "150"),
        ],
        None,
    )
    .await
    else {
        return;
    };
    app.register_ok("tenant1", "billing", "a").await;
    let mut last = None;
    for _ in 0..50 {
        let scrape = scrape(&app).await;
        let up = values(&scrape, "hub_backend_up", &["backend"]);
        if up.get(&key(&["postgres"])) == Some(&1.0) {
            last = Some(scrape);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let scraped = last.expect("the monitor never reported postgres up within 5 s");
    let up = values(&scraped, "hub_backend_up", &["backend"]);
    assert_eq!(up.len(), 1, "only configured backends have series: {up:?}");
    let latency = values(&scraped, "hub_backend_check_latency_seconds", &["backend"]);
    let pg = latency[&key(&["postgres"])];
    assert!(pg > 0.0 && pg < 2.0, "{latency:?}");
    let instances = values(&scraped, "hub_instances", &["tenant", "status"]);
    assert_eq!(
        instances[&key(&["tenant1", "passing"])],
        1.0,
        "{instances:?}"
    );

    // The store's machinery: the change listener is connected (it says
    // so within a few seconds of start), the second of two lookups is a
    // cache hit, and the registration went through group commit.
    let one = |scrape: &Scrape, metric: &str| values(scrape, metric, &[]).get(&key(&[])).copied();
    let mut listening = None;
    for _ in 0..50 {
        listening = one(&scrape(&app).await, "hub_lookup_cache_listening");
        if listening == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(listening, Some(1.0), "the change listener never connected");
    for _ in 0..2 {
        assert_eq!(
            app.get_service("tenant1", "billing").await.status(),
            StatusCode::OK
        );
    }
    let scraped = scrape(&app).await;
    assert!(one(&scraped, "hub_lookup_cache_hits_total") >= Some(1.0));
    assert!(one(&scraped, "hub_lookup_cache_misses_total") >= Some(1.0));
    assert!(one(&scraped, "hub_lookup_cache_entries") >= Some(1.0));
    assert!(one(&scraped, "hub_pg_write_batch_changes_total") >= Some(1.0));
    assert!(one(&scraped, "hub_pg_write_batches_total") >= Some(1.0));
    assert_eq!(one(&scraped, "hub_pg_write_bypassed_total"), Some(0.0));
}

#[tokio::test]
async fn with_request_metrics_off_nothing_is_counted_but_changes_are() {
    let app = spawn_app_with(Backend::Embedded, &[("HUB_REQUEST_METRICS", "off")], None)
        .await
        .unwrap();
    app.register_ok("tenant1", "billing", "a").await;
    assert_eq!(
        app.get_service("tenant1", "billing").await.status(),
        StatusCode::OK
    );
    let t1 = dashboard_for(&app, "tenant1").await;
    assert_eq!(t1["requests"]["tracked"], false, "{t1}");
    assert_eq!(t1["requests"]["total"], 0);
    assert_eq!(t1["requests"]["latency"]["since_start"]["count"], 0);
    assert!(t1["requests"]["latency"]["since_start"]["p50_ms"].is_null());
    // The registry's change counters do not depend on the switch.
    assert_eq!(t1["changes"]["registrations"], 1);
    let scrape = scrape(&app).await;
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("hub_http_")),
        "{:?}",
        scrape.samples
    );
    let changes = values(&scrape, "hub_registry_changes_total", &["tenant", "kind"]);
    assert_eq!(changes[&key(&["tenant1", "registration"])], 1.0);
}
