//! Kafka publisher against a real Kafka-compatible broker (HUB_TEST_KAFKA, or a private Tansu): topics, keys, headers, order, outages.
//!
//! Each test uses its own topic (a random name), so tests run in parallel on
//! the shared broker without seeing each other's records.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hub_bus::kafka::{HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_ORIGIN};
use hub_bus::{KafkaConfig, KafkaPublisher, KafkaRecord, KafkaTail, partition_for};
use hub_core::domain::envelope;
use hub_core::domain::event::{EventKind, RegistryEvent};
use hub_core::error::RegistryError;
use hub_core::ports::EventSink;

use hub_bus::testing::{BrokerProcess, free_port, kafka};

use crate::support::{event, unique_topic};

fn config(broker: &str, topic: &str, partitions: i32) -> KafkaConfig {
    let mut config = KafkaConfig::new(vec![broker.to_owned()]);
    config.topic = topic.to_owned();
    config.partitions = partitions;
    config
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, RegistryError>) {
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Unavailable {
                component: "events",
                ..
            }
        ),
        "{err:?}"
    );
}

/// Polls `tail` until it has returned `count` records in all, or fails
/// after a deadline.
async fn read(tail: &mut KafkaTail, count: usize) -> Vec<KafkaRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records arrived",
            records.len()
        );
        records.extend(tail.poll(Duration::from_millis(200)).await.unwrap());
    }
    assert_eq!(records.len(), count, "more records than published");
    records
}

/// Checks that `record` carries `event`: key, headers, value, timestamp.
fn assert_carries(record: &KafkaRecord, event: &RegistryEvent) {
    let tenant = event.tenant_id().as_str();
    assert_eq!(record.key.as_deref(), Some(tenant.as_bytes()));
    assert_eq!(record.value, envelope::to_json(event));
    assert_eq!(
        record.headers.get(HEADER_EVENT_ID).map(Vec::as_slice),
        Some(event.id().as_bytes())
    );
    assert_eq!(
        record.headers.get(HEADER_EVENT_TYPE).map(Vec::as_slice),
        Some(event.kind().as_str().as_bytes())
    );
    assert_eq!(
        record.headers.get(HEADER_ORIGIN).map(Vec::as_slice),
        event.origin().map(str::as_bytes)
    );
    assert_eq!(
        record.timestamp.timestamp_millis(),
        event.occurred_at().timestamp_millis()
    );
}

#[tokio::test]
async fn topic_gets_the_configured_partitions_and_an_existing_one_keeps_its_own() {
    let Some(broker) = kafka("kafka_partitions") else {
        return;
    };
    let topic = unique_topic();
    let first = KafkaPublisher::connect(config(&broker, &topic, 3))
        .await
        .unwrap();
    assert_eq!(first.partitions(), 3);
    let tail = KafkaTail::connect(vec![broker.clone()], &topic)
        .await
        .unwrap();
    assert_eq!(tail.partitions(), 3);

    // Another process configured with more partitions finds the topic there
    // and uses its three.
    let second = KafkaPublisher::connect(config(&broker, &topic, 8))
        .await
        .unwrap();
    assert_eq!(second.partitions(), 3);
    let tail = KafkaTail::connect(vec![broker], &topic).await.unwrap();
    assert_eq!(tail.partitions(), 3);
}

#[tokio::test]
async fn concurrent_starts_agree_on_the_new_topic() {
    let Some(broker) = kafka("kafka_concurrent_create") else {
        return;
    };
    let topic = unique_topic();
    // Both may try to create the topic; the loser's "already exists" is fine.
    let (a, b) = tokio::join!(
        KafkaPublisher::connect(config(&broker, &topic, 4)),
        KafkaPublisher::connect(config(&broker, &topic, 4)),
    );
    assert_eq!(a.unwrap().partitions(), 4);
    assert_eq!(b.unwrap().partitions(), 4);
}

#[tokio::test]
async fn events_are_keyed_by_tenant_on_its_partition_in_publish_order() {
    let Some(broker) = kafka("kafka_keys") else {
        return;
    };
    let topic = unique_topic();
    let publisher = KafkaPublisher::connect(config(&broker, &topic, 6))
        .await
        .unwrap();
    // acme and globex hash to different partitions of six (0 and 1), so the
    // batch really is split.
    assert_ne!(partition_for(b"acme", 6), partition_for(b"globex", 6));

    let events = vec![
        event("acme", "billing", EventKind::Registered, 1),
        event("globex", "orders", EventKind::Registered, 1).with_origin("replica-b"),
        event("acme", "billing", EventKind::Updated, 2),
        event("acme", "search", EventKind::Registered, 3).with_origin("replica-a"),
        event("globex", "orders", EventKind::StatusChanged, 2),
        event("acme", "billing", EventKind::Deregistered, 4),
    ];
    publisher.publish(&events).await.unwrap();
    // A second call goes after the first in each partition.
    let later = vec![
        event("globex", "orders", EventKind::Expired, 3),
        event("acme", "search", EventKind::Updated, 5),
    ];
    publisher.publish(&later).await.unwrap();

    let mut tail = KafkaTail::connect(vec![broker], &topic).await.unwrap();
    let records = read(&mut tail, events.len() + later.len()).await;
    let published: Vec<&RegistryEvent> = events.iter().chain(&later).collect();
    for tenant in ["acme", "globex"] {
        let expected: Vec<&RegistryEvent> = published
            .iter()
            .copied()
            .filter(|e| e.tenant_id().as_str() == tenant)
            .collect();
        let got: Vec<&KafkaRecord> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(tenant.as_bytes()))
            .collect();
        assert_eq!(got.len(), expected.len(), "{tenant}");
        let partition = partition_for(tenant.as_bytes(), 6);
        // `records` of one partition come in offset order.
        for (record, event) in got.iter().zip(&expected) {
            assert_eq!(record.partition, partition, "{tenant}");
            assert_carries(record, event);
        }
        assert!(got.windows(2).all(|w| w[0].offset < w[1].offset));
    }
}

#[tokio::test]
async fn an_empty_batch_sends_nothing() {
    let Some(broker) = kafka("kafka_empty") else {
        return;
    };
    let topic = unique_topic();
    let publisher = KafkaPublisher::connect(config(&broker, &topic, 2))
        .await
        .unwrap();
    publisher.publish(&[]).await.unwrap();
    let mut tail = KafkaTail::connect(vec![broker], &topic).await.unwrap();
    assert!(
        tail.poll(Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_thousand_events_in_one_batch() {
    let Some(broker) = kafka("kafka_thousand") else {
        return;
    };
    let topic = unique_topic();
    let publisher = KafkaPublisher::connect(config(&broker, &topic, 6))
        .await
        .unwrap();
    let tenants: Vec<String> = (0..20).map(|i| format!("tenant{i}")).collect();
    let events: Vec<RegistryEvent> = (0..1000u64)
        .map(|i| {
            let tenant = &tenants[(i % 20) as usize];
            event(tenant, "billing", EventKind::Updated, i + 1)
        })
        .collect();

    let started = Instant::now();
    publisher.publish(&events).await.unwrap();
    let took = started.elapsed();
    eprintln!("kafka: published 1000 events in one batch in {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let mut tail = KafkaTail::connect(vec![broker], &topic).await.unwrap();
    let records = read(&mut tail, events.len()).await;
    // Per tenant: its partition, and its events in publish order.
    let mut by_tenant: BTreeMap<&[u8], Vec<&KafkaRecord>> = BTreeMap::new();
    for record in &records {
        by_tenant
            .entry(record.key.as_deref().unwrap())
            .or_default()
            .push(record);
    }
    assert_eq!(by_tenant.len(), tenants.len());
    for tenant in &tenants {
        let got = &by_tenant[tenant.as_bytes()];
        let expected: Vec<&RegistryEvent> = events
            .iter()
            .filter(|e| e.tenant_id().as_str() == tenant)
            .collect();
        assert_eq!(got.len(), expected.len());
        for (record, event) in got.iter().zip(expected) {
            assert_eq!(record.partition, partition_for(tenant.as_bytes(), 6));
            assert_carries(record, event);
        }
    }
}

#[tokio::test]
async fn nothing_listening_is_unavailable_at_once() {
    let port = free_port();
    let mut config = config(&format!("127.0.0.1:{port}"), &unique_topic(), 1);
    config.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    assert_unavailable(KafkaPublisher::connect(config).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_silent_peer_is_unavailable_after_the_connect_timeout() {
    // The kernel accepts the connection, but no Kafka answer ever comes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = config(&format!("127.0.0.1:{port}"), &unique_topic(), 1);
    config.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    assert_unavailable(KafkaPublisher::connect(config).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(listener);
}

#[tokio::test]
async fn a_restarted_broker_is_picked_up_by_the_next_publish() {
    let Some(mut tansu) = BrokerProcess::tansu("kafka_restart") else {
        return;
    };
    let topic = unique_topic();
    let mut config = config(&tansu.addr(), &topic, 3);
    config.request_timeout = Duration::from_secs(2);
    let publisher = KafkaPublisher::connect(config).await.unwrap();
    publisher
        .publish(&[event("acme", "billing", EventKind::Registered, 1)])
        .await
        .unwrap();

    // Broker down: publish fails within its bound.
    tansu.stop();
    let started = Instant::now();
    assert_unavailable(
        publisher
            .publish(&[event("acme", "billing", EventKind::Updated, 2)])
            .await,
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Back on the same port, with memory storage: the topic is gone, and the
    // publisher creates it again with its partition count.
    tansu.restart();
    let after = vec![
        event("acme", "billing", EventKind::Updated, 3),
        event("globex", "orders", EventKind::Registered, 1),
    ];
    publisher.publish(&after).await.unwrap();

    let mut tail = KafkaTail::connect(vec![tansu.addr()], &topic)
        .await
        .unwrap();
    assert_eq!(tail.partitions(), 3);
    let records = read(&mut tail, after.len()).await;
    for event in &after {
        let record = records
            .iter()
            .find(|r| {
                r.headers.get(HEADER_EVENT_ID).map(Vec::as_slice) == Some(event.id().as_bytes())
            })
            .expect("event after the restart");
        assert_eq!(
            record.partition,
            partition_for(event.tenant_id().as_str().as_bytes(), 3)
        );
        assert_carries(record, event);
    }
}

/// Tansu has no maximum message size to set, but its schema registry
/// refuses a record its topic's schema does not accept with
/// `INVALID_RECORD`, as a Kafka broker's own record checks do: `Invalid`,
/// which the relay sets aside, and the next event still goes in.
#[tokio::test]
async fn a_record_the_broker_calls_invalid_is_refused_for_good() {
    let topic = "hubt.refusals";
    // The value is the envelope; a service name of over 8 characters fails.
    let schema = r#"{
        "type": "object",
        "properties": {
            "value": {
                "type": "object",
                "properties": { "service_name": { "type": "string", "maxLength": 8 } }
            }
        }
    }"#;
    let Some(tansu) = BrokerProcess::tansu_with_schemas("kafka_invalid_record", &[(topic, schema)])
    else {
        return;
    };
    let publisher = KafkaPublisher::connect(config(&tansu.addr(), topic, 1))
        .await
        .unwrap();

    let refused = event("tenant1", "refusedservice", EventKind::Registered, 1);
    crate::refusals::assert_refused(
        publisher.publish(std::slice::from_ref(&refused)).await,
        "the Kafka broker refused the records",
    );
    let taken = event("tenant1", "billing", EventKind::Registered, 2);
    publisher
        .publish(std::slice::from_ref(&taken))
        .await
        .unwrap();
    let mut tail = KafkaTail::connect(vec![tansu.addr()], topic).await.unwrap();
    let records = read(&mut tail, 1).await;
    assert_carries(&records[0], &taken);
}
