//! The watch stream (SSE) and blocking queries: order and envelope, resume and reset, tenant isolation under load, lagged readers, keep-alive, limits, shutdown, and two replicas on one PostgreSQL with and without NATS.

use std::time::{Duration, Instant};

use hub_bus::testing::BrokerProcess;
use hub_store::testing::TestDb;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::pg_support::Hub;
use crate::support::{
    BOUND_KEY, Backend, TestApp, assert_error, on_both_backends, spawn_app, spawn_app_with,
};

const WATCH: &str = "/api/v1/discovery/watch";

/// One SSE frame: `event:`, `id:` and `data:` fields, or a comment.
#[derive(Debug, Clone, Default)]
struct Frame {
    event: String,
    id: Option<u64>,
    data: String,
    comment: bool,
}

impl Frame {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// A watch stream read frame by frame.
struct Sse {
    response: Response,
    buffer: String,
}

impl Sse {
    async fn open(response: Response) -> Self {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next frame (comments included), or `None` when the stream ended.
    async fn next_any(&mut self) -> Option<Frame> {
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..at + 2).collect();
                let mut frame = Frame::default();
                for line in raw.lines() {
                    if line.starts_with(':') {
                        frame.comment = true;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        frame.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        frame.id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        frame.data = v.to_owned();
                    }
                }
                return Some(frame);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("no frame within 20 s")
                .ok()??;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event (comments skipped).
    async fn next(&mut self) -> Frame {
        loop {
            let frame = self.next_any().await.expect("the stream ended");
            if !frame.comment {
                return frame;
            }
        }
    }

    async fn events(&mut self, n: usize) -> Vec<Frame> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next().await);
        }
        out
    }
}

async fn watch(app: &TestApp, tenant: &str, query: &str) -> Sse {
    Sse::open(
        app.request(Method::GET, &format!("{WATCH}{query}"), Some(tenant))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn register(app: &TestApp, tenant: &str, service: &str, instance: &str) -> u64 {
    let body = app
        .register(
            tenant,
            json!({"service_name": service, "instance_id": instance, "host": "10.0.0.1",
                   "port": 8080, "ttl_seconds": 3600}),
        )
        .await;
    assert!(body.status().is_success(), "{}", body.status());
    body.json::<Value>().await.unwrap()["revision"]
        .as_u64()
        .unwrap()
}

async fn events_in_order_with_the_exact_envelope(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let first = register(&app, "tenant1", "billing", "b-0").await;
    let mut sse = watch(&app, "tenant1", "").await;
    let snapshot = sse.next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.id, Some(first));
    let data = snapshot.json();
    assert_eq!(data["revision"], first);
    assert_eq!(data["instances"][0]["instance_id"], "b-0");
    assert_eq!(data["instances"][0]["url"], "http://10.0.0.1:8080");

    let r1 = register(&app, "tenant1", "billing", "b-1").await;
    let r2 = register(&app, "tenant1", "billing", "b-1").await;
    let removed = app
        .deregister("tenant1", "billing", "?instance_id=b-0")
        .await;
    assert_eq!(removed.status(), StatusCode::OK);
    let frames = sse.events(3).await;
    let kinds: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "service.registered",
            "service.updated",
            "service.deregistered"
        ]
    );
    assert_eq!(frames[0].id, Some(r1));
    assert_eq!(frames[1].id, Some(r2));
    assert!(frames[2].id.unwrap() > r2);
    for f in &frames {
        let e = f.json();
        assert_eq!(e["schema"], "central-hub.registry-event.v1");
        assert_eq!(e["type"], f.event);
        assert_eq!(e["tenant_id"], "tenant1");
        assert_eq!(e["service_name"], "billing");
        assert_eq!(e["revision"].as_u64(), f.id);
        assert!(uuid::Uuid::parse_str(e["id"].as_str().unwrap()).is_ok());
        assert_eq!(e["data"]["url"], "http://10.0.0.1:8080");
        assert_eq!(e.as_object().unwrap().len(), 9, "{e}");
    }
    assert_eq!(frames[2].json()["instance_id"], "b-0");
}

async fn a_resume_replays_exactly_the_missing_events(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut revisions = Vec::new();
    for i in 0..6 {
        let service = if i % 2 == 0 { "even" } else { "odd" };
        revisions.push(register(&app, "tenant1", service, &format!("i-{i}")).await);
    }
    let mut sse = watch(&app, "tenant1", &format!("?since={}", revisions[2])).await;
    let ids: Vec<Option<u64>> = sse.events(3).await.iter().map(|f| f.id).collect();
    assert_eq!(
        ids,
        revisions[3..].iter().map(|r| Some(*r)).collect::<Vec<_>>()
    );
    // Nothing more until the next change, which follows at once: no gap, no
    // duplicate at the seam between replay and live.
    let next = register(&app, "tenant1", "odd", "i-6").await;
    assert_eq!(sse.next().await.id, Some(next));

    // `Last-Event-ID` wins over `since`; filters apply to the replay.
    let response = app
        .request(
            Method::GET,
            &format!("{WATCH}?since=0&service_name=even&type=service.registered"),
            Some("tenant1"),
        )
        .header("Last-Event-ID", revisions[1].to_string())
        .send()
        .await
        .unwrap();
    let mut sse = Sse::open(response).await;
    let frames = sse.events(2).await;
    assert_eq!(frames[0].id, Some(revisions[2]));
    assert_eq!(frames[1].id, Some(revisions[4]));
    assert!(frames.iter().all(|f| f.json()["service_name"] == "even"));
}

async fn bad_watch_parameters_are_named(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for (query, field) in [
        ("?since=abc", "since"),
        ("?since=-1", "since"),
        ("?type=service.exploded", "type"),
        ("?service_name=no%20spaces", "service_name"),
    ] {
        let r = app
            .request(Method::GET, &format!("{WATCH}{query}"), Some("tenant1"))
            .send()
            .await
            .unwrap();
        let message = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(message.contains(field), "{query}: {message}");
    }
    let r = app
        .request(Method::GET, WATCH, Some("tenant1"))
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    let message = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(message.contains("Last-Event-ID"), "{message}");
}

async fn a_bound_key_cannot_watch_another_tenant(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let r = app
        .client
        .get(app.url(WATCH))
        .header("X-API-Key", BOUND_KEY)
        .header("X-Tenant-ID", "tenant2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app.client.get(app.url(WATCH)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Its own tenant it may watch, and sees only that tenant's events.
    let response = app
        .client
        .get(app.url(WATCH))
        .header("X-API-Key", BOUND_KEY)
        .send()
        .await
        .unwrap();
    let mut sse = Sse::open(response).await;
    assert_eq!(sse.next().await.event, "snapshot");
    register(&app, "tenant2", "other", "o").await;
    let mine = register(&app, "tenant1", "mine", "m").await;
    let frame = sse.next().await;
    assert_eq!(frame.id, Some(mine));
    assert_eq!(frame.json()["tenant_id"], "tenant1");
}

async fn two_tenants_interleaved_each_stream_has_exactly_its_own(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    const PER_TENANT: usize = 60;
    let mut streams = Vec::new();
    for tenant in ["tenant1", "tenant2"] {
        // `since=0` and an empty replay: the first change is the first frame.
        let mut sse = watch(&app, tenant, "?since=0").await;
        streams.push((tenant, async move { sse.events(PER_TENANT).await }));
    }
    let writes = futures_util::future::join_all((0..PER_TENANT * 2).map(|i| {
        let app = &app;
        async move {
            let tenant = if i % 2 == 0 { "tenant1" } else { "tenant2" };
            register(app, tenant, &format!("svc-{}", i % 7), &format!("i-{i}")).await
        }
    }));
    let mut readers = Vec::new();
    for (tenant, read) in streams {
        readers.push(async move { (tenant, read.await) });
    }
    let (written, read) = tokio::join!(writes, futures_util::future::join_all(readers));
    assert_eq!(written.len(), PER_TENANT * 2);
    for (tenant, frames) in read {
        let ids: Vec<u64> = frames.iter().map(|f| f.id.unwrap()).collect();
        assert_eq!(
            ids,
            (1..=PER_TENANT as u64).collect::<Vec<_>>(),
            "{tenant}: every revision once, in order"
        );
        assert!(frames.iter().all(|f| f.json()["tenant_id"] == tenant));
        // The stream equals the tenant's list.
        let listed = app.list_ids(tenant).await;
        let mut streamed: Vec<(String, String)> = frames
            .iter()
            .map(|f| {
                let e = f.json();
                (
                    e["service_name"].as_str().unwrap().to_owned(),
                    e["instance_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        streamed.sort();
        assert_eq!(streamed, listed, "{tenant}");
    }
}

async fn blocking_queries_wait_for_a_change(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let services = "/api/v1/discovery/services";
    let index = |r: &Response| -> u64 {
        r.headers()["x-hub-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let r = app.list("tenant1", "").await;
    assert_eq!(index(&r), 0);
    let current = register(&app, "tenant1", "a", "a-1").await;
    let get = |query: String| {
        let request = app.request(Method::GET, &query, Some("tenant1"));
        async move { request.send().await.unwrap() }
    };
    // An old index, or 0, answers at once.
    for query in [
        format!("{services}?index={}&wait=10m", current - 1),
        format!("{services}?index=0&wait=10m"),
    ] {
        let t = Instant::now();
        let r = get(query).await;
        assert_eq!(index(&r), current);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    // The current index waits until the wait ends.
    let t = Instant::now();
    let r = get(format!("{services}?index={current}&wait=400ms")).await;
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(index(&r), current);
    // ... or until a change, then reflects it.
    let waiting = async |n: u64| {
        crate::support::eventually(20, || async {
            let text = app
                .request(Method::GET, "/metrics", None)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.contains(&format!("hub_blocking_queries_waiting {n}"))
                .then_some(())
        })
        .await
    };
    let blocked = tokio::spawn(get(format!("{services}?index={current}&wait=60s")));
    waiting(1).await;
    let changed = register(&app, "tenant1", "b", "b-1").await;
    let r = blocked.await.unwrap();
    assert_eq!(index(&r), changed);
    assert_eq!(r.json::<Value>().await.unwrap()["count"], 2);
    waiting(0).await;
    // One service: a change of another service does not end the wait, a
    // change of this one does.
    let blocked = tokio::spawn(get(format!("{services}/a?index={changed}&wait=60s")));
    waiting(1).await;
    let other = register(&app, "tenant1", "b", "b-2").await;
    // The hub has seen the other change once a tenant-wide wait on it ends.
    let r = get(format!("{services}?index={changed}&wait=60s")).await;
    assert_eq!(index(&r), other);
    assert!(!blocked.is_finished(), "a change of b ended a wait on a");
    let mine = register(&app, "tenant1", "a", "a-2").await;
    let r = blocked.await.unwrap();
    assert_eq!(index(&r), mine);
    assert_eq!(
        r.json::<Value>().await.unwrap()["instances"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A 404 says which revision it reflects.
    let r = get(format!("{services}/nothing")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(index(&r), mine);
    // Bad parameters name themselves.
    for (query, field) in [("?index=x", "index"), ("?index=1&wait=10x", "wait")] {
        let r = get(format!("{services}{query}")).await;
        let message = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(message.contains(field), "{message}");
        let r = get(format!("{services}/a{query}")).await;
        let message = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(message.contains(field), "{message}");
    }
}

async fn keep_alives_arrive_and_shutdown_ends_streams(backend: Backend) {
    let Some(app) = spawn_app_with(backend, &[("HUB_WATCH_KEEPALIVE_SECS", "1")], None).await
    else {
        return;
    };
    let mut sse = watch(&app, "tenant1", "").await;
    assert_eq!(sse.next().await.event, "snapshot");
    let frame = sse.next_any().await.unwrap();
    assert!(frame.comment, "{frame:?}");
    let t = Instant::now();
    app.stop().await;
    assert!(
        sse.next_any().await.is_none(),
        "the stream ends at shutdown"
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

async fn watches_over_the_limit_get_429(backend: Backend) {
    let Some(app) = spawn_app_with(
        backend,
        &[
            ("HUB_WATCH_MAX_PER_TENANT", "2"),
            ("HUB_WATCH_KEEPALIVE_SECS", "1"),
        ],
        None,
    )
    .await
    else {
        return;
    };
    let first = watch(&app, "tenant1", "").await;
    let _second = watch(&app, "tenant1", "").await;
    let r = app
        .request(Method::GET, WATCH, Some("tenant1"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_watchers").await;
    // Another tenant is not affected; a closed watch gives its place back.
    let _other = watch(&app, "tenant2", "").await;
    drop(first);
    crate::support::eventually(10, || async {
        let r = app
            .request(Method::GET, WATCH, Some("tenant1"))
            .send()
            .await
            .unwrap();
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    let metrics = app
        .request(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("hub_watch_streams_open 3"), "{metrics}");
    // A tenant's own `max_watchers` (its record, issue 12) replaces the
    // configured per-tenant limit, here downwards.
    app.create_tenant(json!({"tenant_id": "tenant3", "limits": {"max_watchers": 1}}))
        .await;
    let _only = watch(&app, "tenant3", "").await;
    let r = app
        .request(Method::GET, WATCH, Some("tenant3"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_watchers").await;
}

async fn a_slow_reader_is_cut_off_with_lagged(backend: Backend) {
    let Some(app) = spawn_app_with(backend, &[("HUB_WATCH_BUFFER", "1")], None).await else {
        return;
    };
    let mut sse = watch(&app, "tenant1", "").await;
    let snapshot = sse.next().await;
    assert_eq!(snapshot.event, "snapshot");
    let snapshot_revision = snapshot.id.unwrap();
    // Events of 15 KiB each, many more than the socket buffers hold, while
    // this test does not read: the stream's one-revision buffer overflows.
    let metadata = json!({"blob": "x".repeat(15_000)});
    for chunk in 0..20 {
        futures_util::future::join_all((0..25).map(|i| {
            let body = json!({"service_name": "big", "instance_id": format!("i-{chunk}-{i}"),
                              "host": "h", "port": 1, "ttl_seconds": 3600,
                              "metadata": metadata});
            let app = &app;
            async move { assert!(app.register("tenant1", body).await.status().is_success()) }
        }))
        .await;
    }
    let mut last_id = None;
    let lagged = loop {
        let frame = sse.next_any().await.expect("ended without lagged");
        if frame.event == "lagged" {
            break frame;
        }
        if frame.id.is_some() {
            last_id = frame.id;
        }
    };
    // Resuming from `resume_from` misses nothing: it is the last id read
    // (or the snapshot's revision when none was).
    let resume = lagged.json()["resume_from"].as_u64().unwrap();
    assert_eq!(resume, last_id.unwrap_or(snapshot_revision));
    assert!(
        sse.next_any().await.is_none(),
        "the stream ends after lagged"
    );
    let metrics = app
        .request(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("hub_watch_lagged_total 1"), "{metrics}");
}

on_both_backends!(
    events_in_order_with_the_exact_envelope,
    a_resume_replays_exactly_the_missing_events,
    bad_watch_parameters_are_named,
    a_bound_key_cannot_watch_another_tenant,
    two_tenants_interleaved_each_stream_has_exactly_its_own,
    blocking_queries_wait_for_a_change,
    keep_alives_arrive_and_shutdown_ends_streams,
    watches_over_the_limit_get_429,
    a_slow_reader_is_cut_off_with_lagged,
);

#[tokio::test]
async fn embedded_resume_older_than_the_ring_gets_reset() {
    let app = spawn_app_with(Backend::Embedded, &[("HUB_WATCH_HISTORY", "2")], None)
        .await
        .unwrap();
    let mut last = 0;
    for i in 0..5 {
        last = register(&app, "tenant1", "svc", &format!("i-{i}")).await;
    }
    let mut sse = watch(&app, "tenant1", "?since=1").await;
    let reset = sse.next().await;
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.id, Some(last));
    let data = reset.json();
    assert_eq!(data["revision"], last);
    assert_eq!(data["requested"], 1);
    assert_eq!(data["oldest_retained"], last - 2);
    assert_eq!(data["instances"].as_array().unwrap().len(), 5);
    // Then live.
    let next = register(&app, "tenant1", "svc", "i-5").await;
    assert_eq!(sse.next().await.id, Some(next));
}

#[tokio::test]
async fn postgres_resume_before_the_history_gets_reset_and_after_it_replays() {
    // A ring of 2 events: every replay below goes to coordination_history.
    let Some(app) = spawn_app_with(Backend::Postgres, &[("HUB_WATCH_HISTORY", "2")], None).await
    else {
        return;
    };
    let mut revisions = Vec::new();
    for i in 0..6 {
        revisions.push(register(&app, "tenant1", "svc", &format!("i-{i}")).await);
    }
    let mut sse = watch(&app, "tenant1", "?since=1").await;
    let ids: Vec<Option<u64>> = sse.events(5).await.iter().map(|f| f.id).collect();
    assert_eq!(
        ids,
        revisions[1..].iter().map(|r| Some(*r)).collect::<Vec<_>>()
    );
    // History before `history_from` (as for rows older than V8) is not
    // replayed: a reset.
    let db = app.db.as_ref().unwrap();
    let mut owner = TestDb::connect(&db.owner).await;
    let tx = owner.transaction().await.unwrap();
    tx.execute("SELECT set_config('app.tenant_id', 'tenant1', true)", &[])
        .await
        .unwrap();
    tx.execute("UPDATE tenant_state SET history_from = 3", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut sse = watch(&app, "tenant1", "?since=2").await;
    let reset = sse.next().await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert_eq!(reset.json()["oldest_retained"], 3);
    assert_eq!(reset.json()["requested"], 2);
}

#[tokio::test]
async fn postgres_history_is_tenant_isolated_under_rls() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let app = Hub::start(&db.app, &[]).await;
    app.register_created("tenant1", "svc", "a", "h1").await;
    app.register_created("tenant2", "svc", "b", "h2").await;
    // As the application role, scoped to tenant1: only its history rows,
    // even when asking for every tenant's.
    let rows = db
        .as_tenant(
            "tenant1",
            "SELECT DISTINCT tenant_id::text FROM coordination_history WHERE event_id IS NOT NULL",
            &[],
        )
        .await;
    let tenants: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(tenants, ["tenant1"]);
    let unscoped = TestDb::connect(&db.app)
        .await
        .query("SELECT count(*) FROM coordination_history", &[])
        .await
        .unwrap();
    assert_eq!(unscoped[0].get::<_, i64>(0), 0, "no tenant set: no rows");
    app.shut_down().await;
}

/// Reads `n` change events from a replica's watch (a stream opened with `since=0`).
async fn replica_watch(hub: &Hub, tenant: &str) -> Sse {
    Sse::open(
        hub.request(Method::GET, &format!("{WATCH}?since=0"), tenant)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_watcher_on_replica_b_sees_replica_a_changes_in_order_without_nats() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a = Hub::start(&db.app, &[("HUB_REPLICA_ID", "replica-a")]).await;
    let b = Hub::start(&db.app, &[("HUB_REPLICA_ID", "replica-b")]).await;
    let mut sse = replica_watch(&b, "tenant1").await;
    for i in 0..30 {
        a.register_created("tenant1", "svc", &format!("i-{i}"), "h")
            .await;
    }
    let ids: Vec<u64> = sse.events(30).await.iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(ids, (1..=30).collect::<Vec<_>>());
    a.shut_down().await;
    b.shut_down().await;
}

#[tokio::test]
async fn a_watcher_on_replica_b_misses_nothing_when_nats_stops_mid_stream() {
    let Some(mut nats) = BrokerProcess::nats("watch_nats_outage") else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let prefix = format!("hubw{}", std::process::id());
    let url = nats.nats_url();
    let relay = db.relay.user.clone();
    let a = Hub::start(
        &db.app,
        &[
            ("HUB_REPLICA_ID", "replica-a"),
            ("NATS_URL", &url),
            ("HUB_NATS_SUBJECT_PREFIX", &prefix),
            ("HUB_RELAY_PG_USER", &relay),
        ],
    )
    .await;
    let b = Hub::start(
        &db.app,
        &[
            ("HUB_REPLICA_ID", "replica-b"),
            ("NATS_URL", &url),
            ("HUB_NATS_SUBJECT_PREFIX", &prefix),
            ("HUB_RELAY_PG_USER", &relay),
        ],
    )
    .await;
    let mut sse = replica_watch(&b, "tenant1").await;
    for i in 0..10 {
        a.register_created("tenant1", "svc", &format!("i-{i}"), "h")
            .await;
    }
    let before: Vec<u64> = sse.events(10).await.iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(before, (1..=10).collect::<Vec<_>>());
    nats.stop();
    for i in 10..20 {
        a.register_created("tenant1", "svc", &format!("i-{i}"), "h")
            .await;
    }
    let during: Vec<u64> = sse.events(10).await.iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(during, (11..=20).collect::<Vec<_>>());
    nats.restart();
    for i in 20..30 {
        a.register_created("tenant1", "svc", &format!("i-{i}"), "h")
            .await;
    }
    let after: Vec<u64> = sse.events(10).await.iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(
        after,
        (21..=30).collect::<Vec<_>>(),
        "no gap after NATS returns"
    );
    a.shut_down().await;
    b.shut_down().await;
}
