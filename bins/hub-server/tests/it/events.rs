//! Registry events on real NATS and Kafka through the PostgreSQL outbox: per-tenant delivery and order, broker outages, a relay crash, replicas following each other, embedded best effort.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hub_bus::relay::{Relay, RelaySettings};
use hub_bus::testing::{self, BrokerProcess};
use hub_bus::{KafkaRecord, KafkaTail, NatsConfig, NatsPublisher, SubjectPrefix, partition_for};
use hub_core::memory::{InProcessBus, ManualClock};
use hub_core::ports::{EventSink, Outbox};
use hub_core::{
    ChangeContext, Registration, RegistrationInput, Registry, RegistryError, RegistryEvent, Sink,
    Sinks, TenantId,
};
use hub_server::{Application, Settings, StopHandle};
use hub_store::PgStore;
use hub_store::testing::TestDb;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::support::{BOUND_KEY, OPERATOR_KEY, manual_clock};

/// How long one event may take from its acknowledged change to a subscriber.
const DELIVERY: Duration = Duration::from_secs(1);

/// A running server built from explicit settings (tests that need several
/// replicas, or the in-process bus).
struct Running {
    base: String,
    client: reqwest::Client,
    stop: StopHandle,
    replica_id: String,
    bus: InProcessBus,
}

impl Drop for Running {
    fn drop(&mut self) {
        let stop = self.stop.clone();
        drop(tokio::spawn(async move { stop.stop().await }));
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

async fn start(
    db: Option<&TestDb>,
    extra: &[(&str, String)],
    clock: Option<Arc<ManualClock>>,
) -> Running {
    let mut env: HashMap<String, String> = [
        ("HUB_BIND", "127.0.0.1:0".to_owned()),
        (
            "CENTRAL_HUB_API_KEYS",
            format!("{OPERATOR_KEY},{BOUND_KEY}:tenant1"),
        ),
        ("HUB_REAP_INTERVAL_MS", "20".to_owned()),
        ("HUB_SHUTDOWN_TIMEOUT_SECS", "5".to_owned()),
        ("HUB_PG_POOL_SIZE", "4".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(db) = db {
        env.insert("POSTGRES_HOST".into(), db.app.host.clone());
        env.insert("POSTGRES_PORT".into(), db.app.port.to_string());
        env.insert("POSTGRES_DB".into(), db.app.dbname.clone());
        env.insert("POSTGRES_USER".into(), db.app.user.clone());
        // The stricter set-up: the relay has a login of its own.
        env.insert("HUB_RELAY_PG_USER".into(), db.relay.user.clone());
    }
    for (k, v) in extra {
        env.insert((*k).to_owned(), v.clone());
    }
    let settings = Settings::load(&env).unwrap();
    let app = match clock {
        Some(clock) => Application::build_with_clock(settings, clock)
            .await
            .unwrap(),
        None => Application::build(settings).await.unwrap(),
    };
    let running = Running {
        base: format!("http://127.0.0.1:{}", app.port()),
        client: reqwest::Client::new(),
        stop: app.stop_handle(),
        replica_id: app.replica_id().to_owned(),
        bus: app.bus().clone(),
    };
    tokio::spawn(app.run_until_stopped());
    running
}

impl Running {
    fn request(&self, method: Method, path: &str, tenant: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", OPERATOR_KEY)
            .header("X-Tenant-ID", tenant)
    }

    async fn register(&self, tenant: &str, service: &str, instance: &str, port: u16) {
        let r = self
            .request(Method::POST, "/api/v1/discovery/register", tenant)
            .json(&json!({"service_name": service, "instance_id": instance,
                          "host": "10.0.0.1", "port": port, "ttl_seconds": 10}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "register: {}", r.status());
    }

    async fn deregister(&self, tenant: &str, service: &str, instance: &str) {
        let r = self
            .request(
                Method::DELETE,
                &format!("/api/v1/discovery/services/{service}?instance_id={instance}"),
                tenant,
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "deregister: {}", r.status());
    }

    /// The dashboard's event metrics, as the operator or as tenant1's bound key.
    async fn event_metrics(&self, key: &str) -> Value {
        let r = self
            .client
            .get(format!("{}/api/v1/dashboard/metrics", self.base))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    async fn instances(&self, tenant: &str, service: &str) -> Vec<String> {
        let r = self
            .request(
                Method::GET,
                &format!("/api/v1/discovery/services/{service}"),
                tenant,
            )
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            return Vec::new();
        }
        let body: Value = r.json().await.unwrap();
        body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["instance_id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// The next message of `subscriber` within [`DELIVERY`], as an envelope.
async fn next_envelope(subscriber: &mut async_nats::Subscriber, what: &str) -> (String, Value) {
    let message = tokio::time::timeout(DELIVERY, subscriber.next())
        .await
        .unwrap_or_else(|_| panic!("no NATS event within {DELIVERY:?} after {what}"))
        .unwrap();
    (
        message.subject.to_string(),
        serde_json::from_slice(&message.payload).unwrap(),
    )
}

/// Reads `topic` until `count` distinct event ids arrived (or `secs` passed).
async fn kafka_records(brokers: &str, topic: &str, count: usize, secs: u64) -> Vec<KafkaRecord> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tail = loop {
        match KafkaTail::connect(vec![brokers.to_owned()], topic).await {
            Ok(tail) => break tail,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "topic {topic} never readable: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut records = Vec::new();
    let mut ids = std::collections::HashSet::new();
    while ids.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} events on Kafka within {secs} s",
            ids.len()
        );
        match tail.poll(Duration::from_millis(500)).await {
            Ok(batch) => {
                for record in batch {
                    ids.insert(record.headers.get("event-id").cloned());
                    records.push(record);
                }
            }
            // The topic may not exist yet (first event still on its way).
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    records
}

fn envelope_of(record: &KafkaRecord) -> Value {
    serde_json::from_slice(&record.value).unwrap()
}

/// Checks that every tenant's events carry each revision from 1 to its
/// last, first seen in increasing order; returns the number of duplicates.
fn assert_complete_and_ordered(
    envelopes: &[Value],
    expected_per_tenant: &BTreeMap<String, u64>,
) -> usize {
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    let mut duplicates = 0;
    for e in envelopes {
        if !ids.insert(e["id"].as_str().unwrap().to_owned()) {
            duplicates += 1;
            continue;
        }
        seen.entry(e["tenant_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["revision"].as_u64().unwrap());
    }
    for (tenant, last) in expected_per_tenant {
        let revisions = seen.remove(tenant).unwrap_or_default();
        assert_eq!(
            revisions,
            (1..=*last).collect::<Vec<_>>(),
            "tenant {tenant}: every revision once, in order"
        );
    }
    assert!(seen.is_empty(), "events of unexpected tenants: {seen:?}");
    duplicates
}

#[tokio::test]
async fn changes_reach_nats_and_kafka_per_tenant_in_order() {
    let Some(nats) = testing::nats_client("events").await else {
        return;
    };
    let Some(kafka) = testing::kafka("events") else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let prefix = unique("hubt");
    let topic = format!("hubt.{}", unique(""));
    let stream = unique("HUBT_").to_uppercase();
    let mut tenant1 = nats
        .subscribe(format!("{prefix}.tenant1.registry.>"))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let clock = manual_clock();
    let app = start(
        Some(&db),
        &[
            ("NATS_URL", testing::nats_url()),
            ("HUB_NATS_SUBJECT_PREFIX", prefix.clone()),
            ("HUB_NATS_STREAM", stream.clone()),
            ("KAFKA_BROKERS", kafka.clone()),
            ("HUB_KAFKA_TOPIC", topic.clone()),
            ("HUB_KAFKA_PARTITIONS", "3".to_owned()),
        ],
        Some(clock.clone()),
    )
    .await;

    let mut nats_ids = Vec::new();
    let expect = |step: &'static str, kind: &'static str, revision: u64| (step, kind, revision);
    let steps = [
        expect("register", "service.registered", 1),
        expect("register again", "service.updated", 2),
        expect("lease expiry", "service.status_changed", 3),
        expect("deregister", "service.deregistered", 4),
    ];
    for (step, kind, revision) in steps {
        match step {
            "register" => {
                app.register("tenant1", "billing", "b-1", 8080).await;
                app.register("tenant2", "billing", "b-1", 8080).await;
            }
            "register again" => {
                app.register("tenant2", "billing", "b-1", 9090).await;
                app.register("tenant1", "billing", "b-1", 9090).await;
            }
            "lease expiry" => clock.advance(chrono::Duration::seconds(11)),
            _ => {
                app.deregister("tenant1", "billing", "b-1").await;
                app.deregister("tenant2", "billing", "b-1").await;
            }
        }
        let (subject, envelope) = next_envelope(&mut tenant1, step).await;
        let short = kind.trim_start_matches("service.");
        assert_eq!(subject, format!("{prefix}.tenant1.registry.{short}"));
        assert_eq!(envelope["type"], kind, "{envelope}");
        assert_eq!(envelope["tenant_id"], "tenant1");
        assert_eq!(envelope["revision"], revision);
        assert_eq!(envelope["schema"], "central-hub.registry-event.v1");
        nats_ids.push(envelope["id"].as_str().unwrap().to_owned());
    }
    // Nothing else for tenant1 (tenant2's went to its own subjects).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), tenant1.next())
            .await
            .is_err(),
        "an extra event on tenant1's subjects"
    );

    let records = kafka_records(&kafka, &topic, 8, 10).await;
    let mut by_tenant: BTreeMap<String, Vec<&KafkaRecord>> = BTreeMap::new();
    for record in &records {
        let key = String::from_utf8(record.key.clone().unwrap()).unwrap();
        let envelope = envelope_of(record);
        assert_eq!(envelope["tenant_id"], key.as_str(), "key is the tenant");
        assert_eq!(
            record.headers["event-id"],
            envelope["id"].as_str().unwrap().as_bytes()
        );
        assert_eq!(
            record.headers["event-type"],
            envelope["type"].as_str().unwrap().as_bytes()
        );
        assert_eq!(record.partition, partition_for(key.as_bytes(), 3));
        by_tenant.entry(key).or_default().push(record);
    }
    for (tenant, records) in &by_tenant {
        let kinds: Vec<String> = records
            .iter()
            .map(|r| envelope_of(r)["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            kinds,
            [
                "service.registered",
                "service.updated",
                "service.status_changed",
                "service.deregistered"
            ],
            "{tenant}"
        );
    }
    // The same events, with the same ids, on both buses.
    let kafka_ids: Vec<String> = by_tenant["tenant1"]
        .iter()
        .map(|r| envelope_of(r)["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kafka_ids, nats_ids);
    drop(app);
    let js = async_nats::jetstream::new(nats);
    let _ = js.delete_stream(&stream).await;
}

/// Registers 250 instances for each of two tenants through `app`.
async fn register_500(app: &Running) {
    for i in 0..250 {
        app.register("tenant1", "svc", &format!("i{i}"), 8080).await;
        app.register("tenant2", "svc", &format!("i{i}"), 8080).await;
    }
}

fn expected_500() -> BTreeMap<String, u64> {
    [("tenant1".to_owned(), 250), ("tenant2".to_owned(), 250)].into()
}

#[tokio::test]
async fn a_nats_outage_delays_events_and_loses_none() {
    let Some(mut server) = BrokerProcess::nats("nats_outage") else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let prefix = unique("hubt");
    let app = start(
        Some(&db),
        &[
            ("NATS_URL", server.nats_url()),
            ("HUB_NATS_SUBJECT_PREFIX", prefix.clone()),
        ],
        None,
    )
    .await;
    server.stop();
    // Every request succeeds while the broker is down: the events wait in
    // the outbox, and the dashboard shows them waiting.
    register_500(&app).await;
    let metrics = app.event_metrics(OPERATOR_KEY).await;
    assert_eq!(metrics["scope"], "all_tenants");
    assert_eq!(metrics["events"]["delivery"], "outbox");
    let nats = &metrics["events"]["sinks"]["nats"];
    assert_eq!(nats["backlog"]["pending"], 500, "{metrics}");
    assert!(
        nats["backlog"]["oldest_pending_age_seconds"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert_eq!(nats["relaying"], true);
    // A tenant's key sees its own backlog and no replica-wide counters.
    let mine = app.event_metrics(BOUND_KEY).await;
    assert_eq!(mine["scope"], "tenant1");
    assert_eq!(mine["events"]["sinks"]["nats"]["backlog"]["pending"], 250);
    assert!(
        mine["events"]["sinks"]["nats"].get("published").is_none(),
        "{mine}"
    );
    server.restart();

    let client = async_nats::connect(server.nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut stream = js.get_stream("HUB_REGISTRY").await.unwrap();
    loop {
        let info = stream.info().await.unwrap();
        if info.state.messages >= 500 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 500 events stored within 60 s",
            info.state.messages
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut envelopes = Vec::new();
    for seq in 1..=last {
        let message = stream.get_raw_message(seq).await.unwrap();
        envelopes.push(serde_json::from_slice::<Value>(&message.payload).unwrap());
    }
    let duplicates = assert_complete_and_ordered(&envelopes, &expected_500());
    eprintln!(
        "nats outage: {} events stored, {duplicates} duplicates",
        envelopes.len()
    );
}

#[tokio::test]
async fn a_kafka_outage_delays_events_and_loses_none() {
    let Some(mut broker) = BrokerProcess::tansu("kafka_outage") else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let topic = format!("hubt.{}", unique(""));
    let app = start(
        Some(&db),
        &[
            ("KAFKA_BROKERS", broker.addr()),
            ("HUB_KAFKA_TOPIC", topic.clone()),
            ("HUB_KAFKA_PARTITIONS", "2".to_owned()),
        ],
        None,
    )
    .await;
    broker.stop();
    register_500(&app).await;
    broker.restart();
    let records = kafka_records(&broker.addr(), &topic, 500, 60).await;
    let mut partitions = BTreeMap::<i32, Vec<&KafkaRecord>>::new();
    for r in &records {
        partitions.entry(r.partition).or_default().push(r);
    }
    // Order within each partition is the broker's offset order.
    let envelopes: Vec<Value> = partitions
        .values()
        .flatten()
        .map(|r| envelope_of(r))
        .collect();
    let duplicates = assert_complete_and_ordered(&envelopes, &expected_500());
    eprintln!(
        "kafka outage: {} records, {duplicates} duplicates",
        records.len()
    );
}

/// A publisher that delivers to NATS and then never returns: the relay is
/// stopped between publishing and marking.
struct StallAfterPublish(NatsPublisher);

#[async_trait::async_trait]
impl EventSink for StallAfterPublish {
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        self.0.publish(events).await?;
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// A relay test's world: a test database whose store writes NATS outbox
/// rows, the relay's view of that outbox, a NATS configuration with a
/// subject prefix and stream of its own, and a subscriber to those subjects.
struct RelayWorld {
    nats: async_nats::Client,
    db: TestDb,
    stream: String,
    config: NatsConfig,
    subscriber: async_nats::Subscriber,
    outbox: Arc<dyn Outbox>,
    registry: Registry,
}

impl RelayWorld {
    /// `None` (the test skips) outside CI when NATS or PostgreSQL is missing.
    async fn new(name: &str) -> Option<Self> {
        let nats = testing::nats_client(name).await?;
        let db = TestDb::create().await?;
        let prefix = SubjectPrefix::parse(unique("hubt")).unwrap();
        let stream = unique("HUBT_").to_uppercase();
        let mut config = NatsConfig::new(&testing::nats_url()).unwrap();
        config.subject_prefix = prefix.clone();
        config.stream_name = stream.clone();
        let subscriber = nats.subscribe(prefix.all_events()).await.unwrap();
        nats.flush().await.unwrap();
        let store = PgStore::new(&db.app)
            .unwrap()
            .with_outbox(Sinks::NONE.with(Sink::Nats), "replica-a");
        let outbox: Arc<dyn Outbox> = Arc::new(store.relay_outbox(&db.relay).unwrap());
        let registry = Registry::new(
            Arc::new(store),
            Arc::new(InProcessBus::new()),
            Arc::new(ManualClock::default()),
        );
        Some(Self {
            nats,
            db,
            stream,
            config,
            subscriber,
            outbox,
            registry,
        })
    }

    /// Registers `service` for `tenant` (its outbox row is written with it).
    async fn register(&self, tenant: &str, service: &str) {
        let registration = Registration::try_from(RegistrationInput {
            service_name: service.into(),
            host: "10.0.0.1".into(),
            port: 80,
            ..Default::default()
        })
        .unwrap();
        self.registry
            .register(
                &TenantId::parse(tenant).unwrap(),
                registration,
                &ChangeContext::new(None, None),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_relay_stopped_between_publish_and_mark_delivers_again() {
    let Some(world) = RelayWorld::new("relay_crash").await else {
        return;
    };
    world.register("tenant1", "svc").await;
    let RelayWorld {
        nats,
        stream,
        config,
        mut subscriber,
        outbox,
        ..
    } = world;

    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let stalling = Relay::new(
        outbox.clone(),
        Sink::Nats,
        Arc::new(StallAfterPublish(
            NatsPublisher::connect(config.clone()).await.unwrap(),
        )),
        RelaySettings::default(),
    );
    let crashed = tokio::spawn(stalling.run(stop.clone()));
    let first = tokio::time::timeout(Duration::from_secs(5), subscriber.next())
        .await
        .expect("published before the crash")
        .unwrap();
    crashed.abort();
    let _ = crashed.await;
    assert_eq!(
        outbox.backlog(Sink::Nats, None).await.unwrap().pending,
        1,
        "published but never marked"
    );

    let relay = Relay::new(
        outbox.clone(),
        Sink::Nats,
        Arc::new(NatsPublisher::connect(config).await.unwrap()),
        RelaySettings::default(),
    );
    let stats = relay.stats();
    let task = tokio::spawn(relay.run(stop));
    let again = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
        .await
        .expect("delivered again after the restart")
        .unwrap();
    let id = |m: &async_nats::Message| {
        serde_json::from_slice::<Value>(&m.payload).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(id(&again), id(&first), "the same event, not a new one");
    crate::support::eventually(5, || async {
        (outbox.backlog(Sink::Nats, None).await.unwrap().pending == 0).then_some(())
    })
    .await;
    assert_eq!(stats.published(), 1);
    task.abort();
    let _ = async_nats::jetstream::new(nats)
        .delete_stream(&stream)
        .await;
}

/// The next event on a replica's in-process bus within `DELIVERY`.
async fn next_local(rx: &mut broadcast::Receiver<RegistryEvent>, what: &str) -> RegistryEvent {
    tokio::time::timeout(DELIVERY, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no event on the bus within {DELIVERY:?}: {what}"))
        .unwrap()
}

#[tokio::test]
async fn replicas_follow_each_other_through_nats() {
    let Some(nats) = testing::nats_client("replicas").await else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    let prefix = unique("hubt");
    let stream = unique("HUBT_").to_uppercase();
    let env = |cache_ms: &str| {
        vec![
            ("NATS_URL", testing::nats_url()),
            ("HUB_NATS_SUBJECT_PREFIX", prefix.clone()),
            ("HUB_NATS_STREAM", stream.clone()),
            // The longest lookup cache allowed: only the bus can make B
            // see A's change sooner.
            ("HUB_LOOKUP_CACHE_MS", cache_ms.to_owned()),
        ]
    };
    let a = start(Some(&db), &env("1000"), None).await;
    let b = start(Some(&db), &env("1000"), None).await;
    assert_ne!(a.replica_id, b.replica_id);
    let mut a_bus = a.bus.subscribe();
    let mut b_bus = b.bus.subscribe();

    // B caches "no instance" for the service.
    assert!(b.instances("tenant1", "billing").await.is_empty());
    a.register("tenant1", "billing", "b-1", 8080).await;

    // A's own event: once, from its registry (not again from NATS).
    let own = next_local(&mut a_bus, "A's own change").await;
    assert_eq!(own.origin(), None);
    // B learns it from NATS, tagged with A's name...
    let learnt = next_local(&mut b_bus, "A's change on B").await;
    assert_eq!(learnt.origin(), Some(a.replica_id.as_str()));
    assert_eq!(learnt.kind(), own.kind());
    assert_eq!(learnt.instance_id(), own.instance_id());
    assert_eq!(learnt.revision(), own.revision());
    // ...and has dropped its cached answer by then: B lists it at once,
    // long before its 1 s cache would have expired.
    assert_eq!(b.instances("tenant1", "billing").await, ["b-1"]);
    // Not even tenant2's view is touched.
    assert!(b.instances("tenant2", "billing").await.is_empty());

    // And the other way round.
    b.deregister("tenant1", "billing", "b-1").await;
    let learnt = next_local(&mut a_bus, "B's change on A").await;
    assert_eq!(learnt.origin(), Some(b.replica_id.as_str()));
    assert!(a.instances("tenant1", "billing").await.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        a_bus.try_recv().is_err(),
        "A received an event twice (its own echo or a duplicate)"
    );
    drop((a, b));
    let _ = async_nats::jetstream::new(nats)
        .delete_stream(&stream)
        .await;
}

#[tokio::test]
async fn without_buses_events_stay_in_process() {
    let app = start(None, &[], None).await;
    let metrics = app.event_metrics(OPERATOR_KEY).await;
    assert_eq!(metrics["events"]["delivery"], "in_process");
    assert_eq!(metrics["events"]["sinks"], json!({}));
    let r = app
        .client
        .get(format!("{}/api/v1/dashboard/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "not public");
}

#[tokio::test]
async fn embedded_mode_publishes_to_nats_best_effort() {
    let Some(nats) = testing::nats_client("embedded_events").await else {
        return;
    };
    let prefix = unique("hubt");
    let stream = unique("HUBT_").to_uppercase();
    let mut subscriber = nats
        .subscribe(format!("{prefix}.*.registry.>"))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let app = start(
        None,
        &[
            ("NATS_URL", testing::nats_url()),
            ("HUB_NATS_SUBJECT_PREFIX", prefix.clone()),
            ("HUB_NATS_STREAM", stream.clone()),
        ],
        None,
    )
    .await;
    app.register("tenant7", "svc", "a", 80).await;
    let (subject, envelope) = next_envelope(&mut subscriber, "embedded register").await;
    assert_eq!(subject, format!("{prefix}.tenant7.registry.registered"));
    assert_eq!(envelope["tenant_id"], "tenant7");
    let metrics = app.event_metrics(OPERATOR_KEY).await;
    assert_eq!(metrics["events"]["delivery"], "best_effort");
    let bus = &metrics["events"]["sinks"]["nats"];
    assert_eq!(bus["dropped"], 0);
    assert!(bus.get("backlog").is_none(), "no outbox in embedded mode");
    crate::support::eventually(5, || async {
        (app.event_metrics(OPERATOR_KEY).await["events"]["sinks"]["nats"]["published"] == 1)
            .then_some(())
    })
    .await;
    drop(app);
    let _ = async_nats::jetstream::new(nats)
        .delete_stream(&stream)
        .await;
}

#[tokio::test]
async fn invalid_bus_settings_stop_start_up_but_unreachable_buses_do_not() {
    let build = |pairs: &[(&str, &str)]| {
        let mut env: HashMap<String, String> = [
            ("HUB_BIND", "127.0.0.1:0"),
            ("CENTRAL_HUB_API_KEYS", OPERATOR_KEY),
        ]
        .iter()
        .chain(pairs)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        env.insert("HUB_SHUTDOWN_TIMEOUT_SECS".into(), "1".into());
        async move { Application::build(Settings::load(&env).unwrap()).await }
    };
    for (var, value) in [
        ("KAFKA_BROKERS", "kafka-without-port"),
        ("NATS_URL", "nats://bad host:4222"),
    ] {
        let error = build(&[(var, value)]).await.unwrap_err().to_string();
        assert!(error.contains(var), "{var}: {error}");
    }
    let error = build(&[("KAFKA_BROKERS", "127.0.0.1:1"), ("HUB_KAFKA_TOPIC", "a/b")])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("kafka.topic"), "{error}");
    // Nothing listens on port 1: the server starts, and events wait.
    let app = build(&[
        ("KAFKA_BROKERS", "127.0.0.1:1"),
        ("NATS_URL", "nats://127.0.0.1:1"),
    ])
    .await
    .unwrap();
    drop(app);
}

/// Records what a relay publishes.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(String, u64)>>);

#[async_trait::async_trait]
impl EventSink for Recorder {
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        self.0.lock().unwrap().extend(
            events
                .iter()
                .map(|e| (e.tenant_id().to_string(), e.revision().get())),
        );
        Ok(())
    }
}

#[tokio::test]
async fn relays_of_several_replicas_publish_each_event_once_in_tenant_order() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::new(&db.app)
        .unwrap()
        .with_outbox(Sinks::NONE.with(Sink::Kafka), "replica-a");
    let outbox: Arc<dyn Outbox> = Arc::new(store.relay_outbox(&db.relay).unwrap());
    let registry = Registry::new(
        Arc::new(store.clone()),
        Arc::new(InProcessBus::new()),
        Arc::new(ManualClock::default()),
    );
    let recorder = Arc::new(Recorder::default());
    let settings = RelaySettings {
        batch: 16,
        follower_retry: Duration::from_millis(50),
        ..RelaySettings::default()
    };
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    // Three replicas' relays of the same bus; the first to lead is then
    // killed mid-stream, and another must take over where it stopped.
    let relays: Vec<_> = (0..3)
        .map(|_| {
            let relay = Relay::new(
                outbox.clone(),
                Sink::Kafka,
                recorder.clone(),
                settings.clone(),
            );
            let stats = relay.stats();
            (stats, tokio::spawn(relay.run(stop.clone())))
        })
        .collect();
    let tenants = ["tenant1", "tenant2", "tenant3", "tenant4"];
    let writers: Vec<_> = tenants
        .iter()
        .map(|tenant| {
            let registry = registry.clone();
            let tenant = TenantId::parse(*tenant).unwrap();
            tokio::spawn(async move {
                for i in 0..100 {
                    let registration = Registration::try_from(RegistrationInput {
                        service_name: "svc".into(),
                        instance_id: Some(format!("i{}", i % 10)),
                        host: "10.0.0.1".into(),
                        port: 80,
                        ..Default::default()
                    })
                    .unwrap();
                    registry
                        .register(&tenant, registration, &ChangeContext::new(None, None))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // Kill the leader once it has published something.
    let leader = crate::support::eventually(10, || async {
        relays
            .iter()
            .position(|(stats, _)| stats.leading() && stats.published() > 0)
    })
    .await;
    relays[leader].1.abort();
    for writer in writers {
        writer.await.unwrap();
    }
    crate::support::eventually(20, || async {
        (outbox.backlog(Sink::Kafka, None).await.unwrap().pending == 0).then_some(())
    })
    .await;
    let published = recorder.0.lock().unwrap().clone();
    let mut per_tenant: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (tenant, revision) in &published {
        let seen = per_tenant.entry(tenant.clone()).or_default();
        // A batch cut short by the kill may be published again (at least
        // once); it must never go backwards past what is new.
        if seen.last().is_some_and(|last| revision <= last) {
            continue;
        }
        seen.push(*revision);
    }
    for tenant in tenants {
        assert_eq!(
            per_tenant[tenant],
            (1..=100).collect::<Vec<u64>>(),
            "{tenant}: every event, in order"
        );
    }
    // One relay publishes at a time: only the batch the kill cut short may
    // go out twice.
    assert!(
        published.len() - 400 <= settings.batch as usize,
        "{} events published twice: relays published side by side",
        published.len() - 400
    );
    let leaders = relays
        .iter()
        .filter(|(stats, _)| stats.published() > 0)
        .count();
    assert!(leaders >= 2, "another relay took over after the kill");
    eprintln!(
        "relay takeover: {} published for 400 events ({} republished)",
        published.len(),
        published.len() - 400
    );
    for (_, task) in relays {
        task.abort();
    }
}

/// An outbox row no relay can decode (a payload of the wrong shape, written
/// behind the server's back or by another version) used to stop the relay
/// for good: every tenant's events behind it stayed pending. It is set aside
/// now, once, and the others are delivered in order.
#[tokio::test]
async fn an_undecodable_outbox_row_is_set_aside_and_the_others_are_delivered_in_order() {
    let Some(nats) = testing::nats_client("poison").await else {
        return;
    };
    let Some(db) = TestDb::create().await else {
        return;
    };
    // The poison row, first in the outbox and owed to NATS, written as the
    // tables' owner (no request can write such a row).
    let owner = TestDb::connect(&db.owner).await;
    owner
        .batch_execute(
            "INSERT INTO hub_outbox (tenant_id, revision, event_type, service_name, instance_id, \
                 occurred_at, payload, registered_at, last_heartbeat) \
             VALUES ('tenantx', 1, 'service.registered', 'svc', 'i', now(), \
                 '{\"metadata\":{\"x\":1e400}}', now(), now()); \
             INSERT INTO hub_outbox_due (sink, id, tenant_id) \
             SELECT 1, max(id), 'tenantx' FROM hub_outbox",
        )
        .await
        .unwrap();
    let poison: i64 = owner
        .query_one("SELECT max(id) FROM hub_outbox", &[])
        .await
        .unwrap()
        .get(0);
    let prefix = unique("hubt");
    let stream = unique("HUBT_").to_uppercase();
    let mut all = nats.subscribe(format!("{prefix}.>")).await.unwrap();
    nats.flush().await.unwrap();
    let app = start(
        Some(&db),
        &[
            ("NATS_URL", testing::nats_url()),
            ("HUB_NATS_SUBJECT_PREFIX", prefix.clone()),
            ("HUB_NATS_STREAM", stream.clone()),
        ],
        None,
    )
    .await;
    let changes = [
        ("tenant1", "a", 8080),
        ("tenant2", "b", 8080),
        ("tenant1", "a", 9090),
        ("tenant2", "b", 9090),
    ];
    for (tenant, service, port) in changes {
        app.register(tenant, service, "i-1", port).await;
    }
    let mut delivered = Vec::new();
    for (tenant, ..) in changes {
        let (_, envelope) = next_envelope(&mut all, tenant).await;
        delivered.push((
            envelope["tenant_id"].as_str().unwrap().to_owned(),
            envelope["revision"].as_u64().unwrap(),
            envelope["data"]["port"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        delivered,
        [
            ("tenant1".to_owned(), 1, 8080),
            ("tenant2".to_owned(), 1, 8080),
            ("tenant1".to_owned(), 2, 9090),
            ("tenant2".to_owned(), 2, 9090),
        ],
        "every other event, in order"
    );
    // Visible to operators, kept, and never retried: no failed attempt.
    let nats_metrics = crate::support::eventually(5, || async {
        let metrics = app.event_metrics(OPERATOR_KEY).await;
        let nats = metrics["events"]["sinks"]["nats"].clone();
        // The counter follows the mark's commit by a moment.
        (nats["backlog"]["pending"] == 0 && nats["published"] == 4).then_some(nats)
    })
    .await;
    assert_eq!(nats_metrics["undeliverable"], 1, "{nats_metrics}");
    assert_eq!(nats_metrics["failures"], 0, "{nats_metrics}");
    let mine = app.event_metrics(BOUND_KEY).await;
    assert_eq!(
        mine["events"]["sinks"]["nats"]["undeliverable"], 0,
        "tenantx's row is not tenant1's: {mine}"
    );
    let kept = owner
        .query_one(
            "SELECT u.tenant_id::text, u.reason, \
                    (SELECT count(*) FROM hub_outbox o WHERE o.id = u.id) \
             FROM hub_outbox_undeliverable u WHERE u.sink = 1 AND u.id = $1",
            &[&poison],
        )
        .await
        .unwrap();
    assert_eq!(kept.get::<_, String>(0), "tenantx");
    let reason: String = kept.get(1);
    // The real cause, whatever it is (a number serde_json cannot hold, or a
    // payload without the instance's fields), naming the row.
    assert!(
        reason.starts_with(&format!("outbox row {poison}: ")) && !reason.contains("unavailable"),
        "{reason}"
    );
    assert_eq!(kept.get::<_, i64>(2), 1, "the event itself is kept");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), all.next())
            .await
            .is_err(),
        "the poison row is never published"
    );
    let _ = async_nats::jetstream::new(nats)
        .delete_stream(&stream)
        .await;
}

/// NATS, except that it refuses for good every event of the service
/// `refused` (as a broker refuses a message over its size limit): a batch
/// holding one is refused whole, as a real publish would fail.
struct RefusesOneService(NatsPublisher);

#[async_trait::async_trait]
impl EventSink for RefusesOneService {
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        if events
            .iter()
            .any(|e| e.service_name().as_str() == "refused")
        {
            return Err(RegistryError::Invalid(hub_core::ValidationError::new(
                "event",
                "larger than the bus's maximum message size",
            )));
        }
        self.0.publish(events).await
    }
}

#[tokio::test]
async fn an_event_the_bus_refuses_for_good_is_set_aside_and_the_others_go_on() {
    let Some(world) = RelayWorld::new("refused").await else {
        return;
    };
    // All written before the relay starts: one batch holds them all.
    for (tenant, service) in [("tenant1", "a"), ("tenant2", "refused"), ("tenant1", "b")] {
        world.register(tenant, service).await;
    }
    let RelayWorld {
        nats,
        db,
        stream,
        config,
        mut subscriber,
        outbox,
        ..
    } = world;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let relay = Relay::new(
        outbox.clone(),
        Sink::Nats,
        Arc::new(RefusesOneService(
            NatsPublisher::connect(config).await.unwrap(),
        )),
        RelaySettings::default(),
    );
    let stats = relay.stats();
    let task = tokio::spawn(relay.run(stop));
    let mut services = Vec::new();
    for step in ["a", "b"] {
        let (_, envelope) = next_envelope(&mut subscriber, step).await;
        services.push(envelope["service_name"].as_str().unwrap().to_owned());
    }
    assert_eq!(services, ["a", "b"], "the others, in order");
    let backlog = crate::support::eventually(5, || async {
        let backlog = outbox.backlog(Sink::Nats, None).await.unwrap();
        (backlog.pending == 0).then_some(backlog)
    })
    .await;
    assert_eq!(backlog.undeliverable, 1);
    assert_eq!(
        (stats.set_aside(), stats.failures()),
        (1, 0),
        "never retried"
    );
    let reason: String = TestDb::connect(&db.owner)
        .await
        .query_one("SELECT reason FROM hub_outbox_undeliverable", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("maximum message size"), "{reason}");
    task.abort();
    let _ = async_nats::jetstream::new(nats)
        .delete_stream(&stream)
        .await;
}
