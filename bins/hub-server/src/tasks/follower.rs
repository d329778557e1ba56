//! The replica follower: other replicas' events from NATS drop this replica's cached lookups and reach its in-process bus.

use std::sync::Arc;
use std::time::Duration;

use hub_bus::NatsPublisher;
use hub_bus::lazy::Lazy;
use hub_core::cache::CachedStore;
use hub_core::memory::InProcessBus;
use tokio::sync::watch;

/// Follows the other replicas' events on NATS: each drops this replica's
/// cached lookup of its service and goes to the in-process bus. Waits for
/// NATS if it is down at start.
pub(crate) async fn run(
    nats: Arc<Lazy<NatsPublisher>>,
    replica_id: String,
    cache: Option<Arc<CachedStore>>,
    bus: InProcessBus,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(500);
    loop {
        let follow_stop = stop.clone();
        let attempt = async {
            let publisher = nats.get().await?;
            let cache = cache.clone();
            let bus = bus.clone();
            publisher
                .follow(
                    Some(replica_id.clone()),
                    move |event| {
                        if let Some(cache) = &cache {
                            cache.forget(event.tenant_id(), event.service_name());
                        }
                        bus.send(event);
                    },
                    follow_stop,
                )
                .await
        };
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = stop.changed() => return,
        };
        match outcome {
            Ok(task) => {
                tracing::info!("following other replicas' events on NATS");
                if let Err(error) = task.await {
                    tracing::warn!(%error, "NATS follower ended abnormally");
                }
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "cannot follow NATS yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
