//! PostgreSQL change notifications: without NATS, a change through one replica drops another's cached lookup as it commits; a lost LISTEN connection drops the cache, falls back to the short TTL, and listening resumes after reconnecting.

use std::time::{Duration, Instant};

use hub_store::testing::TestDb;
use reqwest::StatusCode;

use crate::pg_support::Hub;
use crate::support::eventually;

/// The short TTL (used while not listening) and a listening TTL far longer
/// than any test: an answer that changes within the short TTL's reach while
/// listening can only have been dropped by a notification. `Hub::start`
/// configures no NATS or Kafka: nothing but PostgreSQL connects replicas.
fn cache_env(replica: &str) -> [(&str, &str); 3] {
    [
        ("HUB_LOOKUP_CACHE_MS", "1000"),
        ("HUB_LOOKUP_CACHE_LISTEN_MS", "600000"),
        ("HUB_REPLICA_ID", replica),
    ]
}

/// The process id of `replica`'s listening connection once it listens: its
/// pings (`SELECT 1`) start only after `LISTEN` succeeded and the cache was
/// told.
async fn listening_pid(db: &TestDb, replica: &str, not: Option<i32>) -> i32 {
    let admin = db.admin().await;
    let name = format!("central-hub-listen {replica}");
    eventually(15, || async {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = $2 AND query = 'SELECT 1' \
                   AND pid IS DISTINCT FROM $3",
                &[&db.name, &name, &not],
            )
            .await
            .unwrap();
        row.map(|r| r.get::<_, i32>(0))
    })
    .await
}

/// Moves every instance of `tenant1`'s `svc` to `host` in SQL, as the
/// table owner and with a new revision (the store's contract for a change
/// of content). With `notify` false the notification trigger is disabled
/// for this transaction only: a change the replicas cannot learn of.
async fn change_in_sql(db: &TestDb, host: &str, notify: bool) {
    let mut owner = TestDb::connect(&db.owner).await;
    let tx = owner.transaction().await.unwrap();
    if !notify {
        tx.batch_execute("ALTER TABLE service_registry DISABLE TRIGGER service_registry_notify")
            .await
            .unwrap();
    }
    tx.execute("SELECT set_config('app.tenant_id', 'tenant1', true)", &[])
        .await
        .unwrap();
    let revision: i64 = tx
        .query_one(
            "UPDATE tenant_state SET revision = revision + 1 RETURNING revision",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let changed = tx
        .execute(
            "UPDATE service_registry SET host = $1, revision = $2 WHERE service_name = 'svc'",
            &[&host, &revision],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    if !notify {
        tx.batch_execute("ALTER TABLE service_registry ENABLE TRIGGER service_registry_notify")
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

/// `hub` keeps answering `host` for longer than the short TTL: it serves
/// from its cache, under the listening TTL.
async fn keeps_answering(hub: &Hub, host: &str) {
    let until = Instant::now() + Duration::from_millis(1300);
    while Instant::now() < until {
        assert_eq!(hub.hosts().await, [host], "the cached answer was dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `hub` until it answers `host`; returns how long that took.
async fn seen_within(hub: &Hub, host: &str, bound: Duration, since: Instant) -> Duration {
    loop {
        if hub.hosts().await == [host] {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < bound,
            "still not answering {host} after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn without_nats_a_change_through_one_replica_drops_the_others_cached_lookup() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // Registered before B starts: the notification of a change B already
    // reads could still be on its way and drop B's answer while it is
    // being shown to be cached.
    let a = Hub::start(&db.app, &cache_env("replica-a")).await;
    a.register_created("tenant1", "svc", "i1", "10.0.0.1").await;
    let b = Hub::start(&db.app, &cache_env("replica-b")).await;
    listening_pid(&db, "replica-b", None).await;
    assert_eq!(b.hosts().await, ["10.0.0.1"]);

    // B serves from its cache: a change it cannot learn of stays unseen
    // past the short TTL, while A, which has no answer cached, reads it.
    change_in_sql(&db, "10.5.5.5", false).await;
    keeps_answering(&b, "10.0.0.1").await;
    assert_eq!(a.hosts().await, ["10.5.5.5"]);

    // A change through A reaches B within 1 s, by notification alone.
    let changed_at = Instant::now();
    let r = a.register("tenant1", "svc", "i1", "10.9.9.9").await;
    assert_eq!(r.status(), StatusCode::OK);
    let took = seen_within(&b, "10.9.9.9", Duration::from_secs(1), changed_at).await;
    #[allow(clippy::print_stderr)]
    {
        eprintln!("replica B answered the change {took:?} after A acknowledged it");
    }
    a.shut_down().await;
    b.shut_down().await;
}

#[tokio::test]
async fn a_lost_listen_connection_drops_the_cache_falls_back_to_the_ttl_and_listening_resumes() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // Registered by an earlier replica (see the test above for why).
    let seed = Hub::start(&db.app, &cache_env("replica-s")).await;
    seed.register_created("tenant1", "svc", "i1", "10.0.0.1")
        .await;
    seed.shut_down().await;
    let hub = Hub::start(&db.app, &cache_env("replica-l")).await;
    let first = listening_pid(&db, "replica-l", None).await;
    // The pool opens a few connections now: while the listener is kept
    // from reconnecting below, requests use these.
    futures_util::future::join_all((0..8).map(|_| hub.list("tenant1"))).await;
    let cached_at = Instant::now();
    assert_eq!(hub.hosts().await, ["10.0.0.1"]);
    change_in_sql(&db, "10.1.1.1", false).await;
    assert_eq!(hub.hosts().await, ["10.0.0.1"], "served from the cache");

    // The listening connection is cut, and the hub's login may open no new
    // connection for now. The whole cache is dropped at once: the change
    // shows before the cached answer's short TTL would have run out.
    let admin = db.admin().await;
    let login = format!("\"{}\"", db.app.user);
    admin
        .batch_execute(&format!("ALTER ROLE {login} CONNECTION LIMIT 0"))
        .await
        .unwrap();
    let terminated: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    seen_within(&hub, "10.1.1.1", Duration::from_millis(1000), cached_at).await;

    // Not listening, the short TTL applies: a change no one is told of
    // shows within it (plus the polling's slack).
    let changed_at = Instant::now();
    change_in_sql(&db, "10.2.2.2", false).await;
    seen_within(&hub, "10.2.2.2", Duration::from_millis(1500), changed_at).await;

    // Allowed to reconnect, it listens again, and notifications drop
    // cached answers again, including those of a change typed in SQL.
    admin
        .batch_execute(&format!("ALTER ROLE {login} CONNECTION LIMIT -1"))
        .await
        .unwrap();
    listening_pid(&db, "replica-l", Some(first)).await;
    assert_eq!(hub.hosts().await, ["10.2.2.2"]);
    change_in_sql(&db, "10.3.3.3", false).await;
    keeps_answering(&hub, "10.2.2.2").await;
    let changed_at = Instant::now();
    change_in_sql(&db, "10.4.4.4", true).await;
    seen_within(&hub, "10.4.4.4", Duration::from_secs(1), changed_at).await;
    hub.shut_down().await;
}
