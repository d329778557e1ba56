//! Test worlds (random prefix and stream on the real NATS server, unique Kafka topics) and event builders; brokers come from `hub_bus::testing`.

use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use hub_bus::{NatsConfig, SubjectPrefix};
use hub_core::domain::event::{EventKind, RegistryEvent};
use hub_core::domain::ids::TenantId;
use hub_core::domain::instance::{Instance, Revision};
use hub_core::domain::registration::{Registration, RegistrationInput};

/// How long a published event may take to reach a subscriber.
pub const DELIVERY: Duration = Duration::from_secs(1);

/// One test's private corner of the NATS server.
pub struct World {
    /// A plain client of the test itself, to subscribe and inspect streams.
    pub client: async_nats::Client,
    pub prefix: SubjectPrefix,
    pub stream: String,
}

impl World {
    /// A fresh world, or `None` (after printing SKIPPED) when NATS is not
    /// reachable outside CI. Under CI=true an unreachable server fails the test.
    pub async fn new(test: &str) -> Option<World> {
        let client = hub_bus::testing::nats_client(test).await?;
        let hex = uuid::Uuid::new_v4().simple().to_string();
        Some(World {
            client,
            prefix: SubjectPrefix::parse(format!("hubt{}", &hex[..12])).unwrap(),
            stream: format!("HUBT_{}", &hex[..12].to_uppercase()),
        })
    }

    /// The publisher's settings for this world.
    pub fn config(&self) -> NatsConfig {
        let mut config = NatsConfig::new(&hub_bus::testing::nats_url()).unwrap();
        config.subject_prefix = self.prefix.clone();
        config.stream_name = self.stream.clone();
        // Short, so that a stream left behind by a failed test holds little.
        config.stream_max_age = Duration::from_secs(600);
        config.connection_name = "hub-bus-test".to_owned();
        config
    }

    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    /// A subscription that the server has registered once this returns (the
    /// flush is a PING/PONG round trip after the SUB).
    pub async fn subscribe(&self, subject: String) -> async_nats::Subscriber {
        let subscriber = self.client.subscribe(subject).await.unwrap();
        self.client.flush().await.unwrap();
        subscriber
    }

    /// The number of messages in this world's stream.
    pub async fn stream_messages(&self) -> u64 {
        let stream = self.jetstream().get_stream(&self.stream).await.unwrap();
        stream.get_info().await.unwrap().state.messages
    }

    /// Deletes the stream if it exists.
    pub async fn cleanup(self) {
        let _ = self.jetstream().delete_stream(&self.stream).await;
    }
}

/// The next message, or a panic after [`DELIVERY`].
pub async fn next_message(subscriber: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(DELIVERY, subscriber.next())
        .await
        .expect("no message within the delivery deadline")
        .expect("subscription ended")
}

pub fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

/// An event about instance `service`/`instance` of `tenant`.
pub fn event(tenant_id: &str, service: &str, kind: EventKind, revision: u64) -> RegistryEvent {
    event_with_metadata(tenant_id, service, kind, revision, None)
}

/// A registration event whose envelope is over `bytes` long (a metadata
/// string of that length).
pub fn big_event(tenant_id: &str, service: &str, bytes: usize) -> RegistryEvent {
    let metadata = serde_json::json!({ "blob": "x".repeat(bytes) });
    event_with_metadata(tenant_id, service, EventKind::Registered, 1, Some(metadata))
}

fn event_with_metadata(
    tenant_id: &str,
    service: &str,
    kind: EventKind,
    revision: u64,
    metadata: Option<serde_json::Value>,
) -> RegistryEvent {
    let registration = Registration::try_from(RegistrationInput {
        service_name: service.into(),
        instance_id: Some(format!("{service}-1")),
        host: "10.0.0.7".into(),
        port: 8080,
        metadata,
        ..Default::default()
    })
    .unwrap();
    let now = Utc::now();
    let instance = Instance::registered(
        tenant(tenant_id),
        registration,
        now,
        None,
        Revision::new(revision),
    );
    RegistryEvent::new(kind, instance, None, now)
}

/// Checks that `message` carries `event`: subject, headers and envelope.
pub fn assert_carries(
    message: &async_nats::Message,
    prefix: &SubjectPrefix,
    event: &RegistryEvent,
) {
    assert_eq!(
        message.subject.as_str(),
        prefix.event_subject(event.tenant_id(), event.kind())
    );
    let headers = message.headers.as_ref().expect("headers");
    assert_eq!(
        headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .unwrap()
            .as_str(),
        event.id()
    );
    assert_eq!(
        headers.get("event-type").unwrap().as_str(),
        event.kind().as_str()
    );
    let envelope: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(envelope["id"], event.id());
    assert_eq!(envelope["type"], event.kind().as_str());
    assert_eq!(envelope["tenant_id"], event.tenant_id().as_str());
    assert_eq!(envelope["service_name"], event.service_name().as_str());
    assert_eq!(envelope["revision"], event.revision().get());
}

/// A topic name no other test uses.
pub fn unique_topic() -> String {
    format!("hubt.{}", uuid::Uuid::new_v4().simple())
}
