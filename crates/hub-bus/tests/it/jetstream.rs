//! JetStream mode: the stream is created once, stores each event once, and publish fails loudly without it.

use std::time::Duration;

use hub_bus::{NatsPublisher, PublishMode};
use hub_core::domain::event::EventKind;
use hub_core::error::RegistryError;
use hub_core::ports::EventSink;

use crate::support::{World, event};

#[tokio::test]
async fn stream_is_created_once_and_stores_each_event_once() {
    let Some(world) = World::new("jetstream").await else {
        return;
    };
    let js = world.jetstream();
    assert!(
        js.get_stream(&world.stream).await.is_err(),
        "stream exists before connect"
    );

    let publisher = NatsPublisher::connect(world.config()).await.unwrap();
    assert_eq!(publisher.mode(), PublishMode::JetStream);
    let info = js
        .get_stream(&world.stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.subjects, [world.prefix.all_events()]);
    assert_eq!(info.config.max_age, Duration::from_secs(600));

    let events = [
        event("tenant1", "billing", EventKind::Registered, 1),
        event("tenant2", "billing", EventKind::Registered, 1),
        event("tenant1", "billing", EventKind::Updated, 2),
    ];
    publisher.publish(&events).await.unwrap();
    // Ok means stored: no waiting needed before reading the stream state.
    assert_eq!(world.stream_messages().await, 3);

    // A re-publish of the same event id (an outbox retry) is dropped by the
    // stream's duplicate window.
    publisher.publish(&events[..1]).await.unwrap();
    assert_eq!(world.stream_messages().await, 3);

    // Connecting again with the stream present keeps it and its messages.
    let again = NatsPublisher::connect(world.config()).await.unwrap();
    assert_eq!(again.mode(), PublishMode::JetStream);
    again.publish(&events[1..2]).await.unwrap();
    assert_eq!(world.stream_messages().await, 3);
    again
        .publish(&[event("tenant1", "billing", EventKind::Expired, 3)])
        .await
        .unwrap();
    assert_eq!(world.stream_messages().await, 4);

    world.cleanup().await;
}

#[tokio::test]
async fn publish_without_the_stream_is_unavailable() {
    let Some(world) = World::new("jetstream_gone").await else {
        return;
    };
    let publisher = NatsPublisher::connect(world.config()).await.unwrap();
    world
        .jetstream()
        .delete_stream(&world.stream)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let err = publisher
        .publish(&[event("tenant1", "billing", EventKind::Registered, 1)])
        .await
        .unwrap_err();
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
    // No responders is immediate; the ack timeout is the upper bound.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    world.cleanup().await;
}

#[tokio::test]
async fn a_stream_that_does_not_cover_the_subjects_is_refused() {
    let Some(world) = World::new("jetstream_foreign").await else {
        return;
    };
    world
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: world.stream.clone(),
            subjects: vec![format!("{}.other.>", world.prefix)],
            ..Default::default()
        })
        .await
        .unwrap();
    let err = NatsPublisher::connect(world.config()).await.unwrap_err();
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
    world.cleanup().await;
}
