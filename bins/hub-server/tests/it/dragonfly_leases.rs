//! Heartbeat leases in Dragonfly (the machine's Redis, or a test's own `redis-server`): no PostgreSQL statement per heartbeat, sampled metrics, two replicas, an outage and an empty restart, mass expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Duration;
use hub_core::TenantId;
use hub_store::testing::{self, RedisServer, TestDb};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Backend, TestApp, eventually, manual_clock, spawn_app_with};

fn fresh_tenant() -> String {
    format!("dl-{}", uuid::Uuid::new_v4().simple())
}

/// A TCP forwarder in front of PostgreSQL that counts the bytes the app
/// sends: any statement at all (simple or extended protocol) is bytes.
struct PgProxy {
    port: u16,
    sent: Arc<AtomicU64>,
}

impl PgProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let up = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            counter.fetch_add(n as u64, Ordering::SeqCst);
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self { port, sent }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

async fn register(app: &TestApp, tenant: &str, service: &str, instance: &str, ttl: u32) {
    let r = app
        .register(
            tenant,
            json!({"service_name": service, "instance_id": instance, "host": "10.0.0.1",
                   "port": 8080, "ttl_seconds": ttl}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
}

async fn beat(app: &TestApp, tenant: &str, service: &str, instance: &str, extra: Value) -> Value {
    let mut body = json!({"service_name": service, "instance_id": instance});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = app.heartbeat(tenant, body.clone()).await;
    if r.status() != StatusCode::OK {
        let status = r.status();
        let text = r.text().await.unwrap();
        let listed = statuses(app, tenant).await;
        panic!("heartbeat {body}: {status} {text}; listed now: {listed:?}");
    }
    r.json().await.unwrap()
}

/// Each instance's status, as listed.
async fn statuses(app: &TestApp, tenant: &str) -> Vec<(String, String)> {
    let r = app.list(tenant, "?limit=1000").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    body["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["instance_id"].as_str().unwrap().to_owned(),
                i["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The two text columns `sql` reads as the table owner, in a transaction
/// scoped to `tenant` (the owner is bound by row-level security too).
async fn owner_rows(db: &TestDb, tenant: &str, sql: &str) -> Vec<(String, Option<String>)> {
    let mut client = TestDb::connect(&db.owner).await;
    let tx = client.transaction().await.unwrap();
    tx.execute("SELECT set_config('app.tenant_id', $1, true)", &[&tenant])
        .await
        .unwrap();
    let rows = tx.query(sql, &[]).await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Events recorded (audit trail) for the tenant: type and instance.
async fn history(db: &TestDb, tenant: &str) -> Vec<(String, String)> {
    let sql = "SELECT event_type::text, instance_id::text FROM coordination_history ORDER BY id";
    owner_rows(db, tenant, sql)
        .await
        .into_iter()
        .map(|(kind, instance)| (kind, instance.unwrap_or_default()))
        .collect()
}

/// Heartbeat metrics written for the tenant, oldest first: instance and CPU.
async fn metric_rows(db: &TestDb, tenant: &str) -> Vec<(String, Option<f64>)> {
    let sql = "SELECT instance_id::text, cpu_usage::text FROM health_metrics ORDER BY recorded_at";
    owner_rows(db, tenant, sql)
        .await
        .into_iter()
        .map(|(instance, cpu)| (instance, cpu.map(|c| c.parse().unwrap())))
        .collect()
}

async fn pass(app: &TestApp) {
    app.registry.expire_leases().await.unwrap();
}

#[tokio::test]
async fn heartbeats_that_change_nothing_send_postgresql_not_a_single_byte() {
    let proxy = PgProxy::start().await;
    let port = proxy.port.to_string();
    let Some(app) = spawn_app_with(
        Backend::PgDragonfly,
        &[
            ("POSTGRES_PORT", port.as_str()),
            // No background pass during the measurement: the test runs them.
            ("HUB_REAP_INTERVAL_MS", "3600000"),
            ("HUB_METRICS_SAMPLE_SECS", "3600"),
            ("HUB_METRICS_RETENTION_DAYS", "0"),
        ],
        None,
    )
    .await
    else {
        return;
    };
    let tenant = fresh_tenant();
    register(&app, &tenant, "pay", "a", 30).await;

    // A registration goes to PostgreSQL: the counter sees it (the
    // measurement works).
    let before = proxy.sent();
    register(&app, &tenant, "pay", "b", 30).await;
    assert!(proxy.sent() > before, "a registration goes to PostgreSQL");

    // A pass fills the tenant's leases (the start-up pass may still hold
    // the reaper's turn for a moment: try until one runs).
    eventually(10, || async {
        pass(&app).await;
        let synced = app
            .registry
            .lease_synced(&TenantId::parse(tenant.as_str()).unwrap())
            .await;
        (synced == Some(true)).then_some(())
    })
    .await;
    // The pass's advisory lock is released by a task of its own: let it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let quiet = proxy.sent();
    for i in 0..100 {
        let body = beat(
            &app,
            &tenant,
            "pay",
            "a",
            json!({"metrics": {"cpu_usage": f64::from(i % 100), "response_time_ms": 3.5}}),
        )
        .await;
        assert_eq!(body["status"], "passing");
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        proxy.sent(),
        quiet,
        "100 heartbeats with metrics sent bytes to PostgreSQL"
    );

    // A status change is a registry change: it goes to PostgreSQL, with
    // its audit row, and reads show it.
    let body = beat(&app, &tenant, "pay", "a", json!({"status": "warning"})).await;
    assert_eq!(body["status"], "warning");
    assert!(proxy.sent() > quiet);
    assert_eq!(
        statuses(&app, &tenant).await,
        [
            ("a".to_owned(), "warning".to_owned()),
            ("b".to_owned(), "passing".to_owned())
        ]
    );
    let db = app.db.as_ref().unwrap();
    let kinds: Vec<String> = history(db, &tenant)
        .await
        .into_iter()
        .map(|h| h.0)
        .collect();
    assert_eq!(
        kinds,
        [
            "service.registered",
            "service.registered",
            "service.status_changed"
        ],
        "renewals are not registry changes"
    );
}

#[tokio::test]
async fn a_stopped_instance_turns_critical_then_goes_with_one_event_each_and_metrics_are_sampled() {
    let clock = manual_clock();
    let Some(app) = spawn_app_with(
        Backend::PgDragonfly,
        &[("HUB_METRICS_SAMPLE_SECS", "60")],
        Some(clock.clone()),
    )
    .await
    else {
        return;
    };
    let tenant = fresh_tenant();
    register(&app, &tenant, "risk", "x", 10).await;
    register(&app, &tenant, "risk", "y", 10).await;
    app.settle(&tenant).await;
    let db = app.db.as_ref().unwrap();

    // Metrics: reported on every heartbeat, written once per instance per
    // 60 s (of the registry's clock), the latest of each period.
    for cpu in [10.0, 20.0, 30.0] {
        clock.advance(Duration::seconds(5));
        beat(
            &app,
            &tenant,
            "risk",
            "x",
            json!({"metrics": {"cpu_usage": cpu}}),
        )
        .await;
        beat(&app, &tenant, "risk", "y", json!({})).await;
        app.registry
            .sample_metrics(Duration::seconds(60))
            .await
            .unwrap();
    }
    // The first sample went at once; the two later ones waited.
    assert_eq!(metric_rows(db, &tenant).await, [("x".into(), Some(10.0))]);
    clock.advance(Duration::seconds(56));
    beat(
        &app,
        &tenant,
        "risk",
        "x",
        json!({"metrics": {"cpu_usage": 40.0}}),
    )
    .await;
    beat(&app, &tenant, "risk", "y", json!({})).await;
    app.registry
        .sample_metrics(Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!(
        metric_rows(db, &tenant).await,
        [("x".into(), Some(10.0)), ("x".into(), Some(40.0))],
        "one sample per period, the latest figures"
    );

    // y keeps heartbeating, x stops: x turns critical after its ttl...
    for _ in 0..2 {
        clock.advance(Duration::seconds(6));
        beat(&app, &tenant, "risk", "y", json!({})).await;
    }
    eventually(10, || async {
        let s = statuses(&app, &tenant).await;
        (s == [
            ("x".into(), "critical".into()),
            ("y".into(), "passing".into()),
        ])
        .then_some(())
    })
    .await;
    // ...and goes after deregister_after (3 x ttl), while y stays.
    for _ in 0..6 {
        clock.advance(Duration::seconds(6));
        beat(&app, &tenant, "risk", "y", json!({})).await;
    }
    eventually(10, || async {
        (statuses(&app, &tenant).await == [("y".into(), "passing".into())]).then_some(())
    })
    .await;
    let x_events: Vec<String> = history(db, &tenant)
        .await
        .into_iter()
        .filter(|h| h.1 == "x")
        .map(|h| h.0)
        .collect();
    assert_eq!(
        x_events,
        [
            "service.registered",
            "service.status_changed",
            "service.expired"
        ]
    );
}

#[tokio::test]
async fn two_replicas_share_the_leases() {
    let clock = manual_clock();
    let Some(a) = spawn_app_with(Backend::PgDragonfly, &[], Some(clock.clone())).await else {
        return;
    };
    let db = a.db.as_ref().unwrap();
    let db_port = db.app.port.to_string();
    let env = [
        ("POSTGRES_HOST", db.app.host.as_str()),
        ("POSTGRES_PORT", db_port.as_str()),
        ("POSTGRES_DB", db.app.dbname.as_str()),
        ("POSTGRES_USER", db.app.user.as_str()),
    ];
    // B: the same database and Redis, its own process state.
    let b = spawn_app_with(Backend::PgDragonfly, &env, Some(clock.clone()))
        .await
        .unwrap();
    let tenant = fresh_tenant();
    register(&a, &tenant, "md", "feed", 10).await;
    a.settle(&tenant).await;
    // Heartbeats through A only, for 10 ttls; B's view (and whichever
    // replica reaps) keeps it passing.
    for _ in 0..20 {
        clock.advance(Duration::seconds(5));
        beat(&a, &tenant, "md", "feed", json!({})).await;
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert_eq!(
            statuses(&b, &tenant).await,
            [("feed".into(), "passing".into())]
        );
    }
    // They stop: B sees it critical.
    clock.advance(Duration::seconds(11));
    eventually(10, || async {
        (statuses(&b, &tenant).await == [("feed".into(), "critical".into())]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_outage_and_an_empty_restart_expire_nothing_wrongly_and_fail_no_request() {
    if testing::dragonfly().await.is_none() {
        return;
    }
    let mut redis = RedisServer::start().await;
    let redis_port = redis.port.to_string();
    let clock = manual_clock();
    let Some(app) = spawn_app_with(
        Backend::PgDragonfly,
        &[
            ("DRAGONFLY_HOST", "127.0.0.1"),
            ("DRAGONFLY_PORT", redis_port.as_str()),
        ],
        Some(clock.clone()),
    )
    .await
    else {
        return;
    };
    let tenant = fresh_tenant();
    for id in ["busy", "quiet"] {
        register(&app, &tenant, "exec", id, 10).await;
    }
    app.settle(&tenant).await;
    let all_passing = vec![
        ("busy".to_owned(), "passing".to_owned()),
        ("quiet".to_owned(), "passing".to_owned()),
    ];
    // t+8: both renewed in Dragonfly only (PostgreSQL still says t+10).
    clock.advance(Duration::seconds(8));
    beat(&app, &tenant, "exec", "busy", json!({})).await;
    beat(&app, &tenant, "exec", "quiet", json!({})).await;

    // Dragonfly dies. t+13: PostgreSQL's leases ran out, Dragonfly's did not.
    redis.stop();
    clock.advance(Duration::seconds(5));
    for _ in 0..5 {
        beat(&app, &tenant, "exec", "busy", json!({})).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    register(&app, &tenant, "exec", "new", 10).await;
    let r = app.get_service(&tenant, "exec").await;
    assert_eq!(r.status(), StatusCode::OK);
    // Passes run (every 20 ms) from PostgreSQL now; "quiet" must not expire.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut expected = all_passing.clone();
    expected.insert(1, ("new".to_owned(), "passing".to_owned()));
    assert_eq!(statuses(&app, &tenant).await, expected);
    let status = app.registry.lease_status();
    assert_eq!(status.cache_reachable, Some(false));
    assert!(status.fallbacks >= 5, "{status:?}");

    // Dragonfly comes back empty. Nothing expires during the grace.
    redis.restart_empty().await;
    app.settle(&tenant).await;
    clock.advance(Duration::seconds(9));
    beat(&app, &tenant, "exec", "busy", json!({})).await;
    beat(&app, &tenant, "exec", "new", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(statuses(&app, &tenant).await, expected);

    // Dragonfly has taken over: heartbeats renew there (no fallback).
    let fallbacks = app.registry.lease_status().fallbacks;
    for _ in 0..5 {
        beat(&app, &tenant, "exec", "busy", json!({})).await;
    }
    let status = app.registry.lease_status();
    assert_eq!(status.cache_reachable, Some(true));
    assert_eq!(status.fallbacks, fallbacks);
    // And it judges again: "quiet", silent since t+8, expires once its
    // grace is over.
    clock.advance(Duration::seconds(15));
    beat(&app, &tenant, "exec", "busy", json!({})).await;
    beat(&app, &tenant, "exec", "new", json!({})).await;
    eventually(10, || async {
        statuses(&app, &tenant)
            .await
            .contains(&("quiet".to_owned(), "critical".to_owned()))
            .then_some(())
    })
    .await;
}

async fn mass_expiry_holds_removals_until_heartbeats_resume(backend: Backend) {
    let clock = manual_clock();
    let Some(app) = spawn_app_with(
        backend,
        &[("HUB_MASS_EXPIRY_GRACE_SECS", "300")],
        Some(clock.clone()),
    )
    .await
    else {
        return;
    };
    let tenant = fresh_tenant();
    let ids: Vec<String> = (0..10).map(|i| format!("i{i}")).collect();
    for id in &ids {
        register(&app, &tenant, "gw", id, 10).await;
    }
    app.settle(&tenant).await;
    // All ten stop together (a partition): they turn critical...
    clock.advance(Duration::seconds(11));
    eventually(10, || async {
        statuses(&app, &tenant)
            .await
            .iter()
            .all(|s| s.1 == "critical")
            .then_some(())
    })
    .await;
    // ...and stay past deregister_after (30 s): held, and visible.
    clock.advance(Duration::seconds(60));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(statuses(&app, &tenant).await.len(), 10);
    let hold = app
        .registry
        .mass_expiry(&TenantId::parse(tenant.as_str()).unwrap())
        .expect("the hold is exposed");
    assert_eq!((hold.expired, hold.total, hold.held), (10, 10, 10));
    let r = app
        .request(
            reqwest::Method::GET,
            "/api/v1/dashboard/metrics",
            Some(&tenant),
        )
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["leases"]["mass_expiry"][&tenant]["held"], 10, "{body}");

    // Heartbeats resume for eight (a partition heals over a heartbeat
    // interval): they pass again, and the hold goes on for the two silent
    // ones, which stay although they are long past deregister_after.
    for id in &ids[..8] {
        let body = beat(&app, &tenant, "gw", id, json!({})).await;
        assert_eq!(body["status"], "passing");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let listed = statuses(&app, &tenant).await;
    assert_eq!(listed.len(), 10, "{listed:?}");
    assert_eq!(listed.iter().filter(|s| s.1 == "passing").count(), 8);

    // The grace (300 s) passes while the eight keep heartbeating: the two
    // silent ones go, and the hold ends.
    for _ in 0..50 {
        clock.advance(Duration::seconds(5));
        for id in &ids[..8] {
            beat(&app, &tenant, "gw", id, json!({})).await;
        }
    }
    eventually(10, || async {
        (statuses(&app, &tenant).await.len() == 8).then_some(())
    })
    .await;
    assert!(
        statuses(&app, &tenant)
            .await
            .iter()
            .all(|s| s.1 == "passing")
    );
    eventually(10, || async {
        app.registry
            .mass_expiry(&TenantId::parse(tenant.as_str()).unwrap())
            .is_none()
            .then_some(())
    })
    .await;
}

mod mass_expiry {
    use crate::support::Backend;

    #[tokio::test]
    async fn embedded() {
        super::mass_expiry_holds_removals_until_heartbeats_resume(Backend::Embedded).await;
    }

    #[tokio::test]
    async fn postgres() {
        super::mass_expiry_holds_removals_until_heartbeats_resume(Backend::Postgres).await;
    }

    #[tokio::test]
    async fn pg_dragonfly() {
        super::mass_expiry_holds_removals_until_heartbeats_resume(Backend::PgDragonfly).await;
    }
}
