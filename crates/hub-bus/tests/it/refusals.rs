//! Permanent refusals: an event larger than a private nats-server's `max_payload` (or a stream's `max_msg_size`) is `Invalid`, not `Unavailable`, and the next event still goes through.
//!
//! The relay sets an `Invalid` event aside and goes on; an `Unavailable` one
//! it retries forever, holding back every tenant's events behind it.

use std::time::Duration;

use hub_bus::testing::BrokerProcess;
use hub_bus::{NatsConfig, NatsPublisher, PublishMode};
use hub_core::RegistryError;
use hub_core::domain::event::EventKind;
use hub_core::ports::EventSink;

use crate::support::{assert_carries, big_event, event, next_message};

const MAX_PAYLOAD: &str = "max_payload: 1024\n";

/// A publisher of the private server; a short ack timeout, so that a
/// refusal misreported as an outage fails the test in a second.
async fn publisher(broker: &BrokerProcess, jetstream: bool) -> NatsPublisher {
    let mut config = NatsConfig::new(&broker.nats_url()).unwrap();
    config.jetstream = jetstream;
    config.ack_timeout = Duration::from_secs(1);
    NatsPublisher::connect(config).await.unwrap()
}

/// Panics unless `result` is the refusal of an `event` naming `cause`.
pub fn assert_refused(result: Result<(), RegistryError>, cause: &str) {
    match result {
        Err(RegistryError::Invalid(refusal)) => {
            let text = refusal.to_string();
            assert!(text.contains("event"), "{text}");
            assert!(text.contains(cause), "{text}");
        }
        other => panic!("expected Invalid naming {cause:?}, got {other:?}"),
    }
}

async fn stream_messages(broker: &BrokerProcess, stream: &str) -> u64 {
    let client = async_nats::connect(broker.nats_url()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(stream)
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn jetstream_refuses_an_event_over_max_payload_and_takes_the_rest() {
    let test = "jetstream_refuses_an_event_over_max_payload";
    let Some(broker) = BrokerProcess::nats_with_config(test, MAX_PAYLOAD) else {
        return;
    };
    let publisher = publisher(&broker, true).await;
    assert_eq!(publisher.mode(), PublishMode::JetStream);

    let big = big_event("tenant1", "orders", 2000);
    assert_refused(
        publisher.publish(std::slice::from_ref(&big)).await,
        "larger than the NATS server's max_payload of 1024 bytes",
    );
    // In a batch too, so that the relay goes over it one event at a time.
    let small = event("tenant1", "billing", EventKind::Registered, 1);
    assert_refused(
        publisher.publish(&[small.clone(), big]).await,
        "max_payload of 1024 bytes",
    );
    publisher.publish(&[small]).await.unwrap();

    // Right at the limit: the publisher counts headers and payload as the
    // server does, so the largest event it lets through is stored (were it
    // to count short, the server would drop the connection and the ack never
    // come), and one byte more is refused before sending.
    let mut stored = 1;
    let mut blob = 0;
    let refusal = loop {
        let candidate = big_event("tenant2", "edge", blob);
        match publisher.publish(std::slice::from_ref(&candidate)).await {
            Ok(()) => stored += 1,
            Err(err) => break err,
        }
        blob += 1;
        assert!(blob < 1024, "an event of over 1024 bytes got through");
    };
    assert_refused(Err(refusal), "a message of 1025 bytes");
    assert!(stored > 1, "even an empty blob was refused");
    assert_eq!(
        stream_messages(&broker, hub_bus::nats::DEFAULT_STREAM).await,
        stored
    );
}

#[tokio::test]
async fn plain_publish_refuses_an_event_over_max_payload_and_delivers_the_rest() {
    let test = "plain_publish_refuses_an_event_over_max_payload";
    let Some(broker) = BrokerProcess::nats_with_config(test, MAX_PAYLOAD) else {
        return;
    };
    let client = async_nats::connect(broker.nats_url()).await.unwrap();
    let prefix = hub_bus::SubjectPrefix::default();
    let mut everyone = client.subscribe(prefix.all_events()).await.unwrap();
    client.flush().await.unwrap();
    let publisher = publisher(&broker, false).await;
    assert_eq!(publisher.mode(), PublishMode::Plain);

    let big = big_event("tenant1", "orders", 2000);
    assert_refused(
        publisher.publish(std::slice::from_ref(&big)).await,
        "larger than the NATS server's max_payload of 1024 bytes",
    );
    let small = event("tenant1", "billing", EventKind::Registered, 1);
    publisher
        .publish(std::slice::from_ref(&small))
        .await
        .unwrap();
    assert_carries(&next_message(&mut everyone).await, &prefix, &small);
}

#[tokio::test]
async fn jetstream_refusal_of_a_stream_max_msg_size_is_permanent() {
    let test = "jetstream_refusal_of_a_stream_max_msg_size";
    let Some(broker) = BrokerProcess::nats(test) else {
        return;
    };
    // An operator's stream that takes messages of up to 800 bytes; the
    // server's max_payload (1 MiB) is no limit here, the stream's ack is.
    let client = async_nats::connect(broker.nats_url()).await.unwrap();
    let prefix = hub_bus::SubjectPrefix::default();
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: hub_bus::nats::DEFAULT_STREAM.to_owned(),
            subjects: vec![prefix.all_events()],
            max_message_size: 800,
            ..Default::default()
        })
        .await
        .unwrap();
    let publisher = publisher(&broker, true).await;
    assert_eq!(publisher.mode(), PublishMode::JetStream);

    assert_refused(
        publisher
            .publish(std::slice::from_ref(&big_event("tenant1", "orders", 2000)))
            .await,
        "the JetStream stream refused the message",
    );
    let small = event("tenant1", "billing", EventKind::Registered, 1);
    publisher
        .publish(std::slice::from_ref(&small))
        .await
        .unwrap();
    assert_eq!(
        stream_messages(&broker, hub_bus::nats::DEFAULT_STREAM).await,
        1
    );
}
