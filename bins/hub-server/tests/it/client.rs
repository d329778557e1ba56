//! hub-client against a real hub: the registration guard (heartbeats, re-registration after a restart, deregistration), discovery from each of its sources, its age while the hub is away, typed errors, and the crate's example.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hub_client::{
    ChangeKind, DiscoverOptions, Discovery, HealthStatus, HeartbeatRequest, HubClient, HubError,
    ListQuery, RegistrationSpec, Source, WatchEvent, WatchFilter, WatchStream,
};
use hub_server::{Application, Settings, StopHandle};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::support::{self, BOUND_KEY, OPERATOR_KEY, eventually};

/// The example of the crate, compiled into this test binary so that the
/// tests run the very code the README shows.
#[allow(dead_code)]
#[path = "../../../../crates/hub-client/examples/register_and_discover.rs"]
mod example;

const TENANT: &str = "tenant1";

/// An embedded-mode hub that a test can stop (and wait for) and start again
/// on the same port, its registry lost as a real restart loses it.
struct Hub {
    port: u16,
    base: String,
    stop: StopHandle,
    serving: JoinHandle<std::io::Result<()>>,
}

impl Hub {
    /// Starts on `port` (0: any free port).
    async fn start(port: u16) -> Self {
        Self::start_with(port, &[]).await
    }

    /// Starts with extra environment variables.
    async fn start_with(port: u16, extra: &[(&str, &str)]) -> Self {
        let bind = format!("127.0.0.1:{port}");
        let mut vars = vec![("HUB_BIND", bind.as_str())];
        vars.extend_from_slice(extra);
        let env = support::env(&vars);
        let app = Application::build(Settings::load(&env).unwrap())
            .await
            .unwrap();
        let port = app.port();
        let stop = app.stop_handle();
        let serving = tokio::spawn(app.run_until_stopped());
        Self {
            port,
            base: format!("http://127.0.0.1:{port}"),
            stop,
            serving,
        }
    }

    async fn shut_down(self) {
        self.stop.stop().await;
        self.serving.await.unwrap().unwrap();
    }

    fn client(&self) -> HubClient {
        HubClient::builder(&self.base)
            .api_key(OPERATOR_KEY)
            .tenant(TENANT)
            .request_timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// `(instance_id, status)` of a service's instances, read over plain
    /// HTTP (not through the client under test); empty on 404.
    async fn instances(&self, service: &str) -> Vec<(String, String)> {
        let r = reqwest::Client::new()
            .get(format!("{}/api/v1/discovery/services/{service}", self.base))
            .header("X-API-Key", OPERATOR_KEY)
            .header("X-Tenant-ID", TENANT)
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            return Vec::new();
        }
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["instances"]
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
}

fn spec(service: &str, instance: &str, ttl: u32) -> RegistrationSpec {
    RegistrationSpec::new(service, "10.1.2.3", 8080)
        .instance_id(instance)
        .ttl_seconds(ttl)
}

fn ids(discovery: &Discovery) -> Vec<String> {
    discovery
        .instances()
        .into_iter()
        .map(|i| i.instance_id)
        .collect()
}

#[tokio::test]
async fn the_heartbeat_loop_keeps_an_instance_alive_past_several_ttls() {
    let hub = Hub::start(0).await;
    let client = hub.client();
    // ttl 5 s (the hub's minimum): a heartbeat every 5/3 s. The reaper of
    // the test app runs every 20 ms, so a lapse would show at once.
    let guard = client
        .register(spec("orders", "orders-1", 5))
        .await
        .unwrap();
    assert_eq!(guard.interval(), Duration::from_secs(5) / 3);
    let until = Instant::now() + Duration::from_secs(16);
    while Instant::now() < until {
        assert_eq!(
            hub.instances("orders").await,
            vec![("orders-1".to_owned(), "passing".to_owned())],
            "the instance lapsed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Kept alive by heartbeats alone, never registered a second time.
    assert_eq!(guard.registrations(), 1);
    assert_eq!(guard.last_error(), None);
    guard.shutdown().await.unwrap();
    assert!(hub.instances("orders").await.is_empty());
    hub.shut_down().await;
}

#[tokio::test]
async fn a_restarted_embedded_hub_gets_the_instance_again_within_one_interval() {
    let first = Hub::start(0).await;
    let port = first.port;
    let client = first.client();
    let guard = client
        .register(spec("orders", "orders-1", 6))
        .await
        .unwrap();
    let interval = guard.interval();
    assert_eq!(interval, Duration::from_secs(2));
    first.shut_down().await;

    // The same address, an empty registry: the next heartbeat gets a 404.
    let second = Hub::start(port).await;
    let restarted = Instant::now();
    assert!(second.instances("orders").await.is_empty());
    eventually(10, || async {
        (!second.instances("orders").await.is_empty()).then_some(())
    })
    .await;
    let took = restarted.elapsed();
    assert!(
        took <= interval + Duration::from_millis(500),
        "registered again after {took:?}, interval {interval:?}"
    );
    assert_eq!(guard.registrations(), 2);
    assert_eq!(guard.instance().instance_id, "orders-1");
    guard.shutdown().await.unwrap();
    assert!(second.instances("orders").await.is_empty());
    second.shut_down().await;
}

#[tokio::test]
async fn the_guard_deregisters_when_dropped() {
    let hub = Hub::start(0).await;
    let client = hub.client();
    let guard = client
        .register(spec("orders", "orders-1", 30))
        .await
        .unwrap();
    let kept = client
        .register(spec("orders", "orders-2", 30))
        .await
        .unwrap();
    assert_eq!(hub.instances("orders").await.len(), 2);
    drop(guard);
    eventually(5, || async {
        (hub.instances("orders").await == vec![("orders-2".to_owned(), "passing".to_owned())])
            .then_some(())
    })
    .await;
    // The other guard's instance is untouched and still shuts down cleanly.
    kept.shutdown().await.unwrap();
    assert!(hub.instances("orders").await.is_empty());
    hub.shut_down().await;
}

/// Discovery with `source` first sees a registration made by another client
/// within 1 s, and its removal likewise; it stays on `source`.
async fn discovery_follows_another_client(source: Source) {
    let hub = Hub::start(0).await;
    let watcher = hub.client();
    // The tenant has a change behind it, so that blocking queries have an
    // index to block on (at revision 0 the hub answers at once).
    watcher
        .register_once(&spec("other", "other-1", 3600))
        .await
        .unwrap();
    let discovery = watcher.discover_with(
        "billing",
        DiscoverOptions {
            start_with: source,
            poll_interval: Duration::from_millis(200),
            ..DiscoverOptions::default()
        },
    );
    tokio::time::timeout(Duration::from_secs(5), discovery.ready())
        .await
        .expect("a first answer");
    assert!(discovery.instances().is_empty());
    assert!(discovery.staleness().is_some());
    if source != Source::Polling {
        // Live: a watch stream open, or a blocking query held by the hub.
        eventually(5, || async {
            (discovery.staleness() == Some(Duration::ZERO)).then_some(())
        })
        .await;
    }

    let other = hub.client();
    let guard = other
        .register(spec("billing", "billing-1", 30))
        .await
        .unwrap();
    let registered = Instant::now();
    let found = discovery
        .pick_within(Duration::from_secs(1))
        .await
        .unwrap_or_else(|| panic!("{source:?}: not seen within 1 s"));
    assert!(registered.elapsed() <= Duration::from_secs(1));
    assert_eq!(found.instance_id, "billing-1");
    assert_eq!(found.url, "http://10.1.2.3:8080");
    assert_eq!(found.tenant_id, TENANT);
    assert_eq!(found.status, HealthStatus::Passing);
    assert_eq!(discovery.source(), source, "fell back from {source:?}");

    guard.shutdown().await.unwrap();
    let removed = Instant::now();
    eventually(2, || async {
        discovery.instances().is_empty().then_some(())
    })
    .await;
    assert!(
        removed.elapsed() <= Duration::from_secs(1),
        "{source:?}: removal seen after {:?}",
        removed.elapsed()
    );
    hub.shut_down().await;
}

#[tokio::test]
async fn discovery_on_the_watch_stream_follows_another_client_within_a_second() {
    discovery_follows_another_client(Source::Watch).await;
}

#[tokio::test]
async fn discovery_on_blocking_queries_follows_another_client_within_a_second() {
    discovery_follows_another_client(Source::Blocking).await;
}

#[tokio::test]
async fn discovery_by_polling_follows_another_client_within_a_second() {
    discovery_follows_another_client(Source::Polling).await;
}

/// Only `passing` instances by default, round-robin over them; other states
/// on request.
#[tokio::test]
async fn discovery_answers_passing_instances_in_turn() {
    let hub = Hub::start(0).await;
    let client = hub.client();
    let mut guards = Vec::new();
    for id in ["pay-1", "pay-2", "pay-3"] {
        guards.push(client.register(spec("pay", id, 30)).await.unwrap());
    }
    // pay-3 reports itself critical (a heartbeat may carry a state).
    let mut critical = HeartbeatRequest::new("pay", "pay-3");
    critical.status = Some(HealthStatus::Critical);
    client.heartbeat(&critical).await.unwrap();

    let passing = client.discover("pay");
    let all = client.discover_with(
        "pay",
        DiscoverOptions {
            statuses: vec![
                HealthStatus::Passing,
                HealthStatus::Warning,
                HealthStatus::Critical,
            ],
            ..DiscoverOptions::default()
        },
    );
    eventually(5, || async {
        (ids(&passing) == ["pay-1", "pay-2"] && ids(&all).len() == 3).then_some(())
    })
    .await;
    let picks: Vec<String> = (0..4)
        .map(|_| passing.pick().unwrap().instance_id)
        .collect();
    assert_eq!(picks, ["pay-1", "pay-2", "pay-1", "pay-2"]);
    // Back to passing: it comes back into the default answer.
    client
        .heartbeat(&HeartbeatRequest::new("pay", "pay-3"))
        .await
        .unwrap();
    eventually(5, || async { (ids(&passing).len() == 3).then_some(()) }).await;
    // Every instance at once: each removal reaches the cache.
    assert_eq!(client.deregister("pay", None).await.unwrap(), 3);
    eventually(5, || async {
        (passing.instances().is_empty() && all.instances().is_empty()).then_some(())
    })
    .await;
    assert_eq!(passing.pick(), None);
    // Their guards find nothing left to deregister, which is no error.
    for guard in guards {
        guard.shutdown().await.unwrap();
    }
    hub.shut_down().await;
}

/// With the hub gone, discovery answers from its last state and says how
/// old it is; when a hub is back (an empty one), it follows it again.
#[tokio::test]
async fn an_unreachable_hub_leaves_discovery_answering_its_last_state_with_its_age() {
    let hub = Hub::start(0).await;
    let port = hub.port;
    let client = hub.client();
    client
        .register_once(&spec("billing", "billing-1", 3600))
        .await
        .unwrap();
    let discovery = client.discover("billing");
    let found = discovery.pick_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(found.instance_id, "billing-1");
    assert_eq!(
        discovery.staleness(),
        Some(Duration::ZERO),
        "live on the watch"
    );

    // The watch streams close as the stop begins, before it is over.
    let stopping = Instant::now();
    hub.shut_down().await;
    let age = eventually(10, || async {
        discovery
            .staleness()
            .filter(|age| *age >= Duration::from_millis(500))
    })
    .await;
    assert!(age <= stopping.elapsed(), "{age:?}");
    assert_eq!(ids(&discovery), ["billing-1"], "the last state is kept");
    assert_eq!(discovery.pick().unwrap().instance_id, "billing-1");
    assert!(discovery.last_error().is_some());
    let updated_at = discovery.updated_at().unwrap();
    assert!(chrono::Utc::now() - updated_at >= chrono::Duration::milliseconds(500));

    // A new, empty hub on the same address: discovery reconnects and
    // replaces its state (the revision went back, so no resume).
    let second = Hub::start(port).await;
    eventually(10, || async {
        discovery.instances().is_empty().then_some(())
    })
    .await;
    assert_eq!(discovery.staleness(), Some(Duration::ZERO));
    assert_eq!(discovery.last_error(), None);
    client
        .register_once(&spec("billing", "billing-2", 3600))
        .await
        .unwrap();
    let found = discovery.pick_within(Duration::from_secs(1)).await.unwrap();
    assert_eq!(found.instance_id, "billing-2");
    second.shut_down().await;
}

/// Every failure is typed and keeps the hub's code.
#[tokio::test]
async fn errors_are_typed_and_keep_the_hubs_code() {
    let hub = Hub::start(0).await;
    let client = hub.client();
    let api = |e: HubError| match e {
        HubError::Api {
            status,
            code,
            request_id,
            message,
        } => {
            assert!(!message.is_empty());
            assert!(request_id.is_some_and(|id| !id.is_empty()));
            (status, code)
        }
        other => panic!("not an API error: {other:?}"),
    };
    // 404: no such service; no such instance to renew.
    let e = client.get("nowhere").await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(api(e), (404, "not_found".to_owned()));
    let e = client
        .heartbeat(&HeartbeatRequest::new("nowhere", "x"))
        .await
        .unwrap_err();
    assert_eq!(api(e), (404, "not_found".to_owned()));
    // 422: the hub's validation, naming the field.
    let e = client
        .register(RegistrationSpec::new("orders", "10.0.0.1", 8080).ttl_seconds(1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("validation_failed"));
    assert!(e.to_string().contains("ttl_seconds"), "{e}");
    // 401 and 403: a wrong key, a key bound to other tenants.
    let wrong = HubClient::builder(&hub.base)
        .api_key("not-a-key")
        .build()
        .unwrap();
    assert_eq!(
        api(wrong.list(&ListQuery::default()).await.unwrap_err()),
        (401, "invalid_api_key".to_owned())
    );
    let bound = HubClient::builder(&hub.base)
        .api_key(BOUND_KEY)
        .tenant("tenant2")
        .build()
        .unwrap();
    let e = bound.discover("billing");
    // Discovery keeps trying (the key might be fixed) and says why it fails.
    let error = eventually(5, || async { e.last_error() }).await;
    assert!(error.contains("tenant_forbidden"), "{error}");
    assert_eq!(e.staleness(), None, "never answered");
    assert_eq!(
        api(bound.get("billing").await.unwrap_err()),
        (403, "tenant_forbidden".to_owned())
    );
    // No hub at all: unreachable, not an API error.
    hub.shut_down().await;
    let e = client.list(&ListQuery::default()).await.unwrap_err();
    assert!(matches!(e, HubError::Unreachable { .. }), "{e:?}");
    assert!(e.is_transient());
}

/// The typed calls read back what the hub stores (the client's own wire
/// types against the server's JSON), and list and get carry `X-Hub-Index`.
#[tokio::test]
async fn typed_calls_read_back_what_was_registered() {
    let hub = Hub::start(0).await;
    let client = hub.client();
    let mut metadata = serde_json::Map::new();
    metadata.insert("region".into(), "eu-west".into());
    let spec = RegistrationSpec::new("search", "search.internal", 9200)
        .instance_id("search-1")
        .protocol("https")
        .health_endpoint("/ready")
        .version("2.1.0")
        .tag("primary")
        .metadata(metadata.clone())
        .ttl_seconds(60);
    let registered = client.register_once(&spec).await.unwrap();
    assert_eq!(registered.url, "https://search.internal:9200");
    assert_eq!(registered.health_endpoint, "/ready");
    assert_eq!(registered.version.as_deref(), Some("2.1.0"));
    assert_eq!(registered.tags, ["primary"]);
    assert_eq!(registered.metadata, metadata);
    assert_eq!(registered.ttl_seconds, 60);

    let got = client.get("search").await.unwrap();
    assert_eq!(got.instances, vec![registered.clone()]);
    assert_eq!(got.index, Some(got.revision));
    let list = client
        .list(&ListQuery {
            tags: vec!["primary".into()],
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(list.instances, vec![registered.clone()]);
    assert_eq!(list.index, Some(list.revision));

    let lease = client
        .heartbeat(&HeartbeatRequest::new("search", "search-1"))
        .await
        .unwrap();
    assert_eq!(lease.status, HealthStatus::Passing);
    assert!(lease.lease_expires_at >= registered.lease_expires_at);

    // A blocking query returns when the service changes.
    let index = got.index.unwrap();
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .get_blocking(
                    "search",
                    hub_client::Block {
                        index,
                        wait: Duration::from_secs(30),
                    },
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "a current index is held");
    client
        .register_once(&spec.clone().version("2.2.0"))
        .await
        .unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(changed.index.unwrap() > index);
    assert_eq!(changed.instances[0].version.as_deref(), Some("2.2.0"));

    assert_eq!(
        client.deregister("search", Some("search-1")).await.unwrap(),
        1
    );
    assert!(client.get("search").await.unwrap_err().is_not_found());
    hub.shut_down().await;
}

/// The crate's example, run against a real hub: it registers `orders`,
/// finds the `billing` instance another client registered, and leaves
/// nothing behind.
#[tokio::test]
async fn the_example_registers_and_discovers() {
    let hub = Hub::start(0).await;
    hub.client()
        .register_once(&spec("billing", "billing-1", 3600))
        .await
        .unwrap();
    let outcome = example::run(&hub.base, OPERATOR_KEY, TENANT, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(outcome.registered.service_name, "orders");
    assert_eq!(outcome.registered.instance_id, "orders-1");
    assert_eq!(outcome.registered.tenant_id, TENANT);
    assert_eq!(outcome.billing.unwrap().instance_id, "billing-1");
    assert!(hub.instances("orders").await.is_empty(), "deregistered");
    hub.shut_down().await;
}

/// The next event of a watch that is not a keep-alive, within 5 s.
async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .expect("a well-formed event");
        if event != WatchEvent::KeepAlive {
            return event;
        }
    }
}

fn change(event: WatchEvent) -> hub_client::RegistryChange {
    match event {
        WatchEvent::Change(change) => *change,
        other => panic!("not a change: {other:?}"),
    }
}

/// The raw watch: a snapshot, then each change with its envelope decoded
/// into the instance, in revision order; resuming from the middle replays
/// exactly the rest.
#[tokio::test]
async fn the_watch_stream_decodes_every_kind_of_change_and_resumes_from_a_revision() {
    let hub = Hub::start(0).await;
    let client = hub.client();
    let before = client
        .register_once(&spec("pay", "pay-1", 30))
        .await
        .unwrap();
    let filter = WatchFilter::new().service("pay");
    let mut stream = client.watch(&filter).await.unwrap();
    let WatchEvent::Snapshot {
        revision,
        instances,
    } = next_event(&mut stream).await
    else {
        panic!("no snapshot first");
    };
    assert_eq!(revision, before.revision);
    assert_eq!(instances, vec![before.clone()]);
    assert_eq!(stream.last_revision(), Some(revision));

    // Another service's change is filtered out by the hub.
    client
        .register_once(&spec("other", "o-1", 30))
        .await
        .unwrap();
    let added = client
        .register_once(&spec("pay", "pay-2", 30))
        .await
        .unwrap();
    let updated = client
        .register_once(&spec("pay", "pay-2", 30).version("2"))
        .await
        .unwrap();
    let mut critical = HeartbeatRequest::new("pay", "pay-1");
    critical.status = Some(HealthStatus::Critical);
    client.heartbeat(&critical).await.unwrap();
    client.deregister("pay", Some("pay-2")).await.unwrap();

    let registered = change(next_event(&mut stream).await);
    assert_eq!(registered.kind, ChangeKind::Registered);
    assert_eq!(
        registered.instance, added,
        "the envelope reads back as the instance"
    );
    let update = change(next_event(&mut stream).await);
    assert_eq!(update.kind, ChangeKind::Updated);
    assert_eq!(update.instance, updated);
    let status = change(next_event(&mut stream).await);
    assert_eq!(status.kind, ChangeKind::StatusChanged);
    assert_eq!(status.instance.instance_id, "pay-1");
    assert_eq!(status.instance.status, HealthStatus::Critical);
    assert_eq!(status.previous_status, Some(HealthStatus::Passing));
    let removed = change(next_event(&mut stream).await);
    assert_eq!(removed.kind, ChangeKind::Deregistered);
    assert!(removed.kind.removes());
    assert_eq!(removed.instance.instance_id, "pay-2");
    let revisions = [&registered, &update, &status, &removed].map(|c| c.revision);
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    assert_eq!(stream.last_revision(), Some(removed.revision));
    let ids: std::collections::HashSet<&str> = [&registered, &update, &status, &removed]
        .map(|c| c.id.as_str())
        .into();
    assert_eq!(ids.len(), 4, "each event its own id");
    drop(stream);

    // Resumed after the update: the status change and the removal again,
    // and nothing else.
    let mut resumed = client
        .watch(&filter.clone().since(update.revision))
        .await
        .unwrap();
    assert_eq!(change(next_event(&mut resumed).await), status);
    assert_eq!(change(next_event(&mut resumed).await), removed);
    client
        .register_once(&spec("pay", "pay-3", 30))
        .await
        .unwrap();
    let live = change(next_event(&mut resumed).await);
    assert_eq!(live.instance.instance_id, "pay-3");
    assert_eq!(live.kind, ChangeKind::Registered);
    hub.shut_down().await;
}

/// A resume point older than the hub keeps: a `reset` with the current
/// instances, which discovery takes as its new state.
#[tokio::test]
async fn a_resume_point_older_than_the_history_gets_a_reset() {
    let hub = Hub::start_with(0, &[("HUB_WATCH_HISTORY", "2")]).await;
    let client = hub.client();
    for i in 1..=6 {
        client
            .register_once(&spec("pay", &format!("pay-{i}"), 30))
            .await
            .unwrap();
    }
    client.deregister("pay", Some("pay-1")).await.unwrap();
    let mut stream = client
        .watch(&WatchFilter::new().service("pay").since(1))
        .await
        .unwrap();
    let WatchEvent::Reset {
        revision,
        instances,
        oldest_retained,
        requested,
    } = next_event(&mut stream).await
    else {
        panic!("no reset");
    };
    assert_eq!(requested, Some(1));
    assert!(
        oldest_retained.is_some_and(|o| o > 1),
        "{oldest_retained:?}"
    );
    assert_eq!(revision, 7);
    let ids: Vec<&str> = instances.iter().map(|i| i.instance_id.as_str()).collect();
    assert_eq!(ids, ["pay-2", "pay-3", "pay-4", "pay-5", "pay-6"]);
    hub.shut_down().await;
}

/// A proxy in front of a real hub that plays an older one: it has no watch
/// route (404, as actix answers an unknown path) and, with `strip_index`, no
/// blocking queries either (no `X-Hub-Index`, the one sign a client has).
/// One request per connection (`Connection: close`), GETs only: what
/// discovery sends.
async fn older_hub(hub_port: u16, strip_index: bool) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                if head.starts_with("GET /api/v1/discovery/watch") {
                    let body = r#"{"error":{"code":"not_found","message":"no route","request_id":"proxy"}}"#;
                    let answer = format!(
                        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = client.write_all(answer.as_bytes()).await;
                    return;
                }
                let mut lines: Vec<&str> = head
                    .trim_end()
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .collect();
                lines.push("connection: close");
                let request = format!("{}\r\n\r\n", lines.join("\r\n"));
                let Ok(mut upstream) =
                    tokio::net::TcpStream::connect(("127.0.0.1", hub_port)).await
                else {
                    return;
                };
                if upstream.write_all(request.as_bytes()).await.is_err() {
                    return;
                }
                let mut answer = Vec::new();
                let _ = upstream.read_to_end(&mut answer).await;
                let answer = String::from_utf8_lossy(&answer).into_owned();
                let answer = match answer.split_once("\r\n\r\n") {
                    Some((head, body)) if strip_index => {
                        let head: Vec<&str> = head
                            .split("\r\n")
                            .filter(|l| !l.to_ascii_lowercase().starts_with("x-hub-index:"))
                            .collect();
                        format!("{}\r\n\r\n{body}", head.join("\r\n"))
                    }
                    _ => answer,
                };
                let _ = client.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// On a hub without the watch route discovery moves to blocking queries,
/// on one without those to polling, and follows changes on each.
#[tokio::test]
async fn discovery_falls_back_from_the_watch_to_blocking_queries_to_polling() {
    let hub = Hub::start(0).await;
    let registrar = hub.client();
    for (strip_index, expected) in [(false, Source::Blocking), (true, Source::Polling)] {
        let port = older_hub(hub.port, strip_index).await;
        let client = HubClient::builder(format!("http://127.0.0.1:{port}"))
            .api_key(OPERATOR_KEY)
            .tenant(TENANT)
            .build()
            .unwrap();
        let service = format!("svc-{expected:?}");
        let discovery = client.discover_with(
            service.clone(),
            DiscoverOptions {
                poll_interval: Duration::from_millis(200),
                ..DiscoverOptions::default()
            },
        );
        tokio::time::timeout(Duration::from_secs(5), discovery.ready())
            .await
            .expect("a first answer");
        eventually(5, || async {
            (discovery.source() == expected).then_some(())
        })
        .await;
        let guard = registrar.register(spec(&service, "i-1", 30)).await.unwrap();
        let registered = Instant::now();
        let found = discovery.pick_within(Duration::from_secs(1)).await;
        assert_eq!(
            found.map(|i| i.instance_id).as_deref(),
            Some("i-1"),
            "{expected:?}: not seen within 1 s"
        );
        assert!(registered.elapsed() <= Duration::from_secs(1));
        assert_eq!(discovery.source(), expected);
        guard.shutdown().await.unwrap();
    }
    hub.shut_down().await;
}

/// The same client against a hub on PostgreSQL (revisions and envelopes
/// from the store): registration, discovery on the watch, deregistration.
#[tokio::test]
async fn the_client_works_against_a_postgresql_hub() {
    let Some(app) = support::spawn_app(support::Backend::Postgres).await else {
        return;
    };
    let client = HubClient::builder(&app.base)
        .api_key(OPERATOR_KEY)
        .tenant(TENANT)
        .build()
        .unwrap();
    let discovery = client.discover("billing");
    tokio::time::timeout(Duration::from_secs(10), discovery.ready())
        .await
        .expect("a first answer");
    let guard = client
        .register(spec("billing", "billing-1", 30))
        .await
        .unwrap();
    let registered = Instant::now();
    let found = discovery.pick_within(Duration::from_secs(1)).await.unwrap();
    assert!(registered.elapsed() <= Duration::from_secs(1));
    assert_eq!(found, guard.instance());
    assert_eq!(discovery.source(), Source::Watch);
    guard.shutdown().await.unwrap();
    eventually(2, || async {
        discovery.instances().is_empty().then_some(())
    })
    .await;
}

/// A hub at its watch limit (429 `too_many_watchers`): discovery follows
/// with blocking queries meanwhile, and goes back to the watch once a place
/// is free.
#[tokio::test]
async fn a_hub_at_its_watch_limit_gets_blocking_queries_until_a_watch_is_free() {
    let hub = Hub::start_with(
        0,
        &[
            ("HUB_WATCH_MAX_PER_TENANT", "1"),
            // The hub notices a closed stream when it next writes to it.
            ("HUB_WATCH_KEEPALIVE_SECS", "1"),
        ],
    )
    .await;
    let client = hub.client();
    // A tenant with a change behind it: at revision 0 there is nothing to
    // block on (the hub answers index 0 at once, as Consul does), and
    // discovery would poll at its interval until the first change.
    client
        .register_once(&spec("other", "other-1", 3600))
        .await
        .unwrap();
    let taken = client.watch(&WatchFilter::new()).await.unwrap();
    let e = client.watch(&WatchFilter::new()).await.unwrap_err();
    assert_eq!(e.code(), Some("too_many_watchers"));

    let discovery = client.discover_with(
        "billing",
        DiscoverOptions {
            // Long enough that the checks below run before the first retry.
            watch_retry: Duration::from_secs(2),
            ..DiscoverOptions::default()
        },
    );
    tokio::time::timeout(Duration::from_secs(5), discovery.ready())
        .await
        .expect("a first answer");
    let guard = client
        .register(spec("billing", "billing-1", 30))
        .await
        .unwrap();
    let found = discovery.pick_within(Duration::from_secs(1)).await;
    assert_eq!(found.map(|i| i.instance_id).as_deref(), Some("billing-1"));
    assert_eq!(discovery.source(), Source::Blocking);

    drop(taken);
    eventually(10, || async {
        (discovery.source() == Source::Watch && discovery.staleness() == Some(Duration::ZERO))
            .then_some(())
    })
    .await;
    guard.shutdown().await.unwrap();
    eventually(2, || async {
        discovery.instances().is_empty().then_some(())
    })
    .await;
    hub.shut_down().await;
}
