//! The outbox tasks of PostgreSQL mode: one relay per bus publishing the outbox's events, the pruner of delivered ones, and the waker that starts the relays after a change.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hub_bus::relay::{Relay, RelaySettings, RelayStats, prune_outbox};
use hub_core::ports::{EventSink, Outbox};
use hub_core::{RegistryError, RegistryEvent, Sink};
use tokio::sync::Notify;

use super::Tasks;
use crate::settings::EventSettings;
use crate::wiring::buses::Buses;

/// Starts one relay per configured bus and the outbox pruner. Returns the
/// sink that wakes the relays after a change stored through this process,
/// and each relay's counters.
pub(crate) fn start(
    outbox: &Arc<dyn Outbox>,
    buses: &Buses,
    settings: &EventSettings,
    tasks: &mut Tasks,
) -> (WakeRelays, Vec<(Sink, Arc<RelayStats>)>) {
    let relay_settings = RelaySettings {
        batch: settings.outbox_batch,
        poll: Duration::from_millis(settings.outbox_poll_ms),
        ..RelaySettings::default()
    };
    let mut wakers = Vec::new();
    let mut stats = Vec::new();
    for sink in buses.sinks().iter() {
        let Some(publisher) = buses.publisher(sink) else {
            continue;
        };
        let relay = Relay::new(outbox.clone(), sink, publisher, relay_settings.clone());
        wakers.push(relay.waker());
        stats.push((sink, relay.stats()));
        let name = match sink {
            Sink::Nats => "nats relay",
            Sink::Kafka => "kafka relay",
        };
        tasks.spawn(name, relay.run(tasks.stop_signal()));
    }
    tasks.spawn(
        "outbox pruner",
        prune_outbox(
            outbox.clone(),
            Duration::from_secs(settings.outbox_retention_secs),
            Duration::from_secs(60),
            tasks.stop_signal(),
        ),
    );
    (WakeRelays(wakers), stats)
}

/// Wakes the outbox relays of this process after a change it stored, so
/// they publish at once rather than at their next poll.
pub(crate) struct WakeRelays(Vec<Arc<Notify>>);

#[async_trait]
impl EventSink for WakeRelays {
    async fn publish(&self, _events: &[RegistryEvent]) -> Result<(), RegistryError> {
        for wake in &self.0 {
            wake.notify_one();
        }
        Ok(())
    }
}
