//! PostgreSQL lifecycle: registrations survive a server restart, and the hub rides out a database outage (503 `store_unavailable`) and recovers without a restart.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hub_store::testing::TestDb;
use reqwest::StatusCode;

use crate::pg_support::{Hub, blocking, blocking_create};
use crate::support::{assert_error, eventually};

fn triples(items: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .map(|(s, i, h)| ((*s).to_owned(), (*i).to_owned(), (*h).to_owned()))
        .collect()
}

#[tokio::test]
async fn registrations_survive_a_server_restart_per_tenant() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // The same service and instance names in both tenants, told apart by host.
    let alpha = [
        ("orders", "orders-1", "10.0.1.1"),
        ("orders", "orders-2", "10.0.1.2"),
        ("billing", "billing-1", "10.0.1.3"),
    ];
    let beta = [
        ("orders", "orders-1", "10.0.2.1"),
        ("search", "search-1", "10.0.2.2"),
    ];

    let first = Hub::start(&db.app, &[]).await;
    for (service, instance, host) in alpha {
        first
            .register_created("alpha", service, instance, host)
            .await;
    }
    for (service, instance, host) in beta {
        first
            .register_created("beta", service, instance, host)
            .await;
    }
    assert_eq!(first.listed("alpha").await, triples(&alpha));
    let old_base = first.base.clone();
    first.shut_down().await;
    assert!(
        reqwest::get(format!("{old_base}/health")).await.is_err(),
        "the first server still answers after being stopped"
    );

    let second = Hub::start(&db.app, &[]).await;
    assert_eq!(second.listed("alpha").await, triples(&alpha));
    assert_eq!(second.listed("beta").await, triples(&beta));
    // A service only the other tenant has is not found, and a tenant that
    // never registered anything sees nothing.
    let r = second.get_service("beta", "billing").await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = second.get_service("alpha", "search").await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    assert!(second.listed("gamma").await.is_empty());
    second.shut_down().await;
}

#[tokio::test]
async fn the_hub_answers_503_during_a_database_outage_and_recovers_without_a_restart() {
    const TIMEOUT_MS: u64 = 1000;
    const N: usize = 20;
    let Some(cluster) = blocking_create().await else {
        return;
    };
    let pg = cluster.hub_database().await;
    let hub = Hub::start(
        &pg,
        &[
            ("HUB_PG_STATEMENT_TIMEOUT_MS", "1000"),
            ("HUB_PG_POOL_SIZE", "4"),
        ],
    )
    .await;
    let tenant = "outage";
    let mut acknowledged = BTreeSet::new();
    for i in 0..N {
        let (service, instance) = (format!("svc-{}", i % 4), format!("inst-{i}"));
        hub.register_created(tenant, &service, &instance, "10.0.0.1")
            .await;
        acknowledged.insert((service, instance, "10.0.0.1".to_owned()));
    }
    assert_eq!(hub.listed(tenant).await, acknowledged);

    let cluster = std::sync::Arc::new(cluster);
    let c = cluster.clone();
    blocking(move || c.stop_fast()).await;

    // Every request during the outage answers, and answers quickly: a bound
    // of three statement timeouts, with margin, not a speed test.
    let bound = Duration::from_millis(3 * TIMEOUT_MS);
    let slowest = std::cell::Cell::new(Duration::ZERO);
    let timed = |what: &'static str, started: Instant| {
        let took = started.elapsed();
        slowest.set(slowest.get().max(took));
        assert!(took < bound, "{what} took {took:?} during the outage");
    };
    // The hub notices within a few statement timeouts.
    eventually(5 * TIMEOUT_MS / 1000, || async {
        let started = Instant::now();
        let r = hub.list(tenant).await;
        timed("list", started);
        (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let started = Instant::now();
    let r = hub.list(tenant).await;
    timed("list", started);
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable").await;
    let started = Instant::now();
    let r = hub
        .register(tenant, "svc-new", "during-outage", "10.0.0.9")
        .await;
    timed("register", started);
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable").await;
    let started = Instant::now();
    let r = hub.get_service(tenant, "svc-0").await;
    timed("get", started);
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable").await;
    let started = Instant::now();
    let r = hub.get_path("/health/ready").await;
    timed("ready", started);
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable").await;
    let r = hub.get_path("/health").await;
    assert_eq!(r.status(), StatusCode::OK, "/health is liveness only");

    let c = cluster.clone();
    blocking(move || c.start()).await;
    let recovered = Instant::now();
    eventually(30, || async {
        let ready = hub.get_path("/health/ready").await.status() == StatusCode::OK;
        let listed = hub.list(tenant).await.status() == StatusCode::OK;
        (ready && listed).then_some(())
    })
    .await;
    let took = recovered.elapsed();
    // Nothing acknowledged was lost; the one refused during the outage was
    // not stored; new writes work again.
    assert_eq!(hub.listed(tenant).await, acknowledged);
    hub.register_created(tenant, "svc-new", "after-outage", "10.0.0.9")
        .await;
    assert_eq!(hub.listed(tenant).await.len(), N + 1);
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "slowest answer during the outage {:?}; recovered {took:?} after the database came back",
            slowest.get()
        );
    }
    hub.shut_down().await;
}

#[tokio::test]
async fn a_change_through_one_replica_is_seen_through_another_within_a_second() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // Two replicas on one database, each with its lookup cache (500 ms) and
    // its refresher running.
    let a = Hub::start(&db.app, &[("HUB_LOOKUP_CACHE_MS", "500")]).await;
    let b = Hub::start(&db.app, &[("HUB_LOOKUP_CACHE_MS", "500")]).await;
    a.register_created("tenant1", "svc", "i1", "10.0.0.1").await;
    // Replica B looks the service up, so it is cached and kept busy there.
    assert_eq!(b.hosts().await, ["10.0.0.1"]);
    // Replica A changes it; B shows the change within 1 s.
    let changed_at = Instant::now();
    let r = a.register("tenant1", "svc", "i1", "10.9.9.9").await;
    assert_eq!(r.status(), StatusCode::OK);
    loop {
        if b.hosts().await == ["10.9.9.9"] {
            break;
        }
        assert!(
            changed_at.elapsed() < Duration::from_secs(1),
            "replica B still serves the old answer after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shut_down().await;
    b.shut_down().await;
}
