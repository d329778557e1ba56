//! Plain mode (`jetstream: false`): no stream, events still reach subscribers.

use hub_bus::{NatsPublisher, PublishMode};
use hub_core::domain::event::EventKind;
use hub_core::ports::EventSink;

use crate::support::{World, assert_carries, event, next_message};

#[tokio::test]
async fn plain_publish_reaches_subscribers() {
    let Some(world) = World::new("plain").await else {
        return;
    };
    let mut everyone = world.subscribe(world.prefix.all_events()).await;
    let mut config = world.config();
    config.jetstream = false;
    let publisher = NatsPublisher::connect(config).await.unwrap();
    assert_eq!(publisher.mode(), PublishMode::Plain);
    assert!(
        world.jetstream().get_stream(&world.stream).await.is_err(),
        "plain mode created a stream"
    );

    let events = [
        event("tenant1", "billing", EventKind::Registered, 1),
        event("tenant2", "orders", EventKind::Registered, 1),
    ];
    publisher.publish(&events).await.unwrap();
    for expected in &events {
        let message = next_message(&mut everyone).await;
        assert_carries(&message, &world.prefix, expected);
    }
    world.cleanup().await;
}
