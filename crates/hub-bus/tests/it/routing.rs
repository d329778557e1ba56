//! Events reach the subscribers of their tenant's subjects, in order, and no one else's.

use futures_util::{FutureExt, StreamExt};
use hub_bus::{NatsPublisher, PublishMode};
use hub_core::domain::event::EventKind;
use hub_core::ports::EventSink;

use crate::support::{World, assert_carries, event, next_message, tenant};

#[tokio::test]
async fn a_tenant_subscriber_gets_its_events_in_order_and_no_others() {
    let Some(world) = World::new("routing").await else {
        return;
    };
    let mut tenant1 = world
        .subscribe(world.prefix.tenant_events(&tenant("tenant1")))
        .await;
    let mut everyone = world.subscribe(world.prefix.all_events()).await;
    let publisher = NatsPublisher::connect(world.config()).await.unwrap();
    assert_eq!(publisher.mode(), PublishMode::JetStream);

    // Interleaved, and ending with tenant1: NATS keeps the order of one
    // connection's messages, so once the last tenant1 event has arrived any
    // tenant2 event wrongly routed to tenant1 would already be there.
    let events = [
        event("tenant1", "billing", EventKind::Registered, 1),
        event("tenant2", "billing", EventKind::Registered, 1),
        event("tenant1", "billing", EventKind::StatusChanged, 2),
        event("tenant2", "orders", EventKind::Registered, 2),
        event("tenant1", "billing", EventKind::Deregistered, 3),
    ];
    publisher.publish(&events[..2]).await.unwrap();
    publisher.publish(&events[2..]).await.unwrap();

    for expected in [&events[0], &events[2], &events[4]] {
        let message = next_message(&mut tenant1).await;
        assert_carries(&message, &world.prefix, expected);
    }
    // Nothing else is queued: a wrong tenant2 event would have come before
    // tenant1's last one, and so be sitting here already.
    assert!(
        tenant1.next().now_or_never().flatten().is_none(),
        "tenant1's subscriber got more than tenant1's events"
    );
    for expected in &events {
        let message = next_message(&mut everyone).await;
        assert_carries(&message, &world.prefix, expected);
    }
    world.cleanup().await;
}
