//! Bounded waits and fair share of the PostgreSQL pool: a frozen database answers 503 within the call deadline, and a tenant held at its connection share does not hold up the others.

use std::time::{Duration, Instant};

use hub_store::PgConfig;
use hub_store::testing::TestDb;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::pg_support::{Hub, blocking_create};
use crate::support::{assert_error, eventually};

/// Sends `request` on a task of its own and times it.
fn timed(request: RequestBuilder) -> JoinHandle<(Duration, reqwest::Result<reqwest::Response>)> {
    tokio::spawn(async move {
        let started = Instant::now();
        let response = request.send().await;
        (started.elapsed(), response)
    })
}

fn registration(hub: &Hub, tenant: &str, instance: &str) -> RequestBuilder {
    hub.request(Method::POST, "/api/v1/discovery/register", tenant)
        .json(&json!({
            "service_name": "svc", "instance_id": instance,
            "host": "10.0.0.1", "port": 8080, "ttl_seconds": 3600
        }))
}

/// Sessions of database `$db` waiting for a lock, seen through `$admin` (a
/// macro: the tests do not name the driver's client type).
macro_rules! lock_waiters {
    ($admin:expr, $db:expr) => {{
        let db: &str = $db;
        let waiting: i64 = $admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        waiting
    }};
}

/// Finding 3: requests that hold a pooled connection when PostgreSQL stops
/// answering (every process of the cluster stopped with SIGSTOP, sockets
/// left open) answer 503 within the statement timeout plus the margin, and
/// so do requests arriving meanwhile; once the processes continue, the hub
/// serves again without a restart. About 12 s (most of it `initdb`).
#[tokio::test]
async fn a_frozen_database_answers_503_within_the_deadline_and_the_hub_recovers() {
    const TIMEOUT: Duration = Duration::from_millis(2000);
    // The client-side deadline of a call (hub_store's margin is 1 s).
    const DEADLINE: Duration = Duration::from_millis(3000);
    // Scheduling slack on a loaded machine; not a speed test.
    const SLACK: Duration = Duration::from_millis(1500);
    const HELD: usize = 3;
    let Some(cluster) = blocking_create().await else {
        return;
    };
    let pg = cluster.hub_database().await;
    let hub = Hub::start(
        &pg,
        &[
            ("HUB_PG_STATEMENT_TIMEOUT_MS", "2000"),
            ("HUB_PG_POOL_SIZE", "8"),
            ("HUB_PG_TENANT_MAX_CONNECTIONS", "8"),
            ("HUB_LOOKUP_CACHE_MS", "0"),
        ],
    )
    .await;
    hub.register_created("held", "svc", "i0", "10.0.0.1").await;
    hub.register_created("fresh", "svc", "i0", "10.0.0.1").await;

    // Requests that hold their connections: their tenant's revision row is
    // locked by a session of the test, so they wait inside PostgreSQL.
    let admin = TestDb::connect(&PgConfig {
        dbname: pg.dbname.clone(),
        ..cluster.superuser()
    })
    .await;
    admin
        .batch_execute("BEGIN; SELECT 1 FROM tenant_state WHERE tenant_id = 'held' FOR UPDATE")
        .await
        .unwrap();
    let held: Vec<_> = (0..HELD)
        .map(|i| timed(registration(&hub, "held", &format!("held-{i}"))))
        .collect();
    // Frozen as soon as one waits (the server's own timeout would end the
    // wait after 2 s); any other still on its way hangs in the same way.
    eventually(20, || async {
        (lock_waiters!(admin, &pg.dbname) >= 1).then_some(())
    })
    .await;

    // Nothing answers from here on, and no connection is closed.
    let frozen = cluster.freeze();
    let frozen_at = Instant::now();
    // Requests arriving during the freeze: they get a pooled connection
    // (or try to open one) and wait as well.
    let fresh = vec![
        ("register", timed(registration(&hub, "fresh", "fresh-1"))),
        (
            "lookup",
            timed(hub.request(Method::GET, "/api/v1/discovery/services/svc", "fresh")),
        ),
        (
            "list",
            timed(hub.request(Method::GET, "/api/v1/discovery/services", "fresh")),
        ),
        (
            "ready",
            timed(hub.request(Method::GET, "/health/ready", "fresh")),
        ),
    ];

    let mut report = Vec::new();
    for (i, request) in held.into_iter().enumerate() {
        let (took, response) = request.await.unwrap();
        let since_freeze = frozen_at.elapsed();
        let response = response.unwrap_or_else(|e| panic!("held request {i}: {e}"));
        assert_error(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
        )
        .await;
        assert!(
            took < DEADLINE + SLACK,
            "a request holding a connection answered after {took:?}"
        );
        report.push(format!(
            "held-{i} {took:?} ({since_freeze:?} after the freeze)"
        ));
    }
    for (what, request) in fresh {
        let (took, response) = request.await.unwrap();
        let response = response.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_error(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
        )
        .await;
        // The wait for a connection (the statement timeout) plus one call.
        assert!(
            took < TIMEOUT + DEADLINE + SLACK,
            "{what} during the freeze answered after {took:?}"
        );
        report.push(format!("{what} {took:?}"));
    }

    let processes = frozen.len();
    drop(frozen);
    let thawed = Instant::now();
    admin.batch_execute("ROLLBACK").await.unwrap();
    eventually(30, || async {
        let ready = hub.get_path("/health/ready").await.status() == StatusCode::OK;
        let lookup = hub.get_service("fresh", "svc").await.status() == StatusCode::OK;
        (ready && lookup).then_some(())
    })
    .await;
    let recovered = thawed.elapsed();
    hub.register_created("held", "svc", "after", "10.0.0.2")
        .await;
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "froze {processes} processes; answers during the freeze: {}; served again {recovered:?} after the thaw",
            report.join(", ")
        );
    }
    hub.shut_down().await;
}

/// Finding 4 (starvation): one tenant's requests hold their whole share of
/// the pool (blocked behind a row lock the test holds) and more of them
/// queue, while another tenant's registrations, heartbeats and lookups
/// answer promptly. Without the share the first tenant's requests take
/// every pooled connection and the other tenant waits out the statement
/// timeout. About 4 s.
#[tokio::test]
async fn a_tenant_at_its_connection_share_queues_while_other_tenants_go_on() {
    const HOG_REQUESTS: usize = 6;
    const PROMPT: Duration = Duration::from_millis(1500);
    let Some(db) = TestDb::create().await else {
        return;
    };
    let hub = Hub::start(
        &db.app,
        &[
            ("HUB_PG_POOL_SIZE", "4"),
            ("HUB_PG_TENANT_MAX_CONNECTIONS", "1"),
            ("HUB_PG_STATEMENT_TIMEOUT_MS", "3000"),
            ("HUB_LOOKUP_CACHE_MS", "0"),
        ],
    )
    .await;
    hub.register_created("hog", "svc", "i0", "10.0.0.1").await;
    hub.register_created("calm", "svc", "i0", "10.0.0.2").await;

    // A superuser session on the test's database (row-level security does
    // not hide the row from it).
    let admin = TestDb::connect(&PgConfig {
        user: "postgres".into(),
        ..db.owner.clone()
    })
    .await;
    admin
        .batch_execute("BEGIN; SELECT 1 FROM tenant_state WHERE tenant_id = 'hog' FOR UPDATE")
        .await
        .unwrap();
    // More of the tenant's writes than the pool has connections.
    let hog: Vec<_> = (0..HOG_REQUESTS)
        .map(|i| timed(registration(&hub, "hog", &format!("hog-{i}"))))
        .collect();
    eventually(10, || async {
        (lock_waiters!(admin, &db.name) >= 1).then_some(())
    })
    .await;

    // The other tenant goes on, one request after another, each prompt.
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let instance = format!("calm-{i}");
        let started = Instant::now();
        let r = registration(&hub, "calm", &instance).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "calm registration");
        let r = hub
            .request(Method::POST, "/api/v1/discovery/heartbeat", "calm")
            .json(&json!({"service_name": "svc", "instance_id": instance}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "calm heartbeat");
        let r = hub.get_service("calm", "svc").await;
        assert_eq!(r.status(), StatusCode::OK, "calm lookup");
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < PROMPT,
            "another tenant's register, heartbeat and lookup took {took:?} while one tenant was at its share"
        );
    }

    // The held tenant's requests waited their bounded time and were refused.
    let mut refused = Vec::new();
    for request in hog {
        let (took, response) = request.await.unwrap();
        assert_error(
            response.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
        )
        .await;
        refused.push(took);
    }
    admin.batch_execute("ROLLBACK").await.unwrap();
    hub.register_created("hog", "svc", "after", "10.0.0.1")
        .await;
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "other tenant's slowest round {slowest:?}; held tenant's requests refused after {refused:?}"
        );
    }
    hub.shut_down().await;
}
