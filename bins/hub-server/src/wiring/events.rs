//! Where events go: this replica's name on them, the fan-out to the in-process bus and the buses (through the outbox relays or best effort), and the delivery counters the dashboard reads.

use std::sync::Arc;

use async_trait::async_trait;
use hub_bus::best_effort::{BestEffort, BestEffortStats};
use hub_bus::relay::RelayStats;
use hub_core::memory::InProcessBus;
use hub_core::ports::{EventSink, EventStatus, Outbox};
use hub_core::{Delivery, RegistryError, RegistryEvent, Sink, SinkStatus, TenantId};

use super::buses::Buses;
use crate::settings::EventSettings;
use crate::tasks::{Tasks, outbox};

/// A name for this replica: `HUB_REPLICA_ID`, or random per start.
pub(crate) fn replica_id(settings: &EventSettings) -> anyhow::Result<String> {
    if let Some(id) = settings.replica_id.as_deref().filter(|i| !i.is_empty()) {
        return Ok(id.chars().take(64).collect());
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for a replica id: {e}"))?;
    Ok(format!("hub-{}", hex::encode(bytes)))
}

/// The registry's way out for events, and what the dashboard reads about
/// their delivery.
pub(crate) struct Events {
    pub(crate) sink: Arc<dyn EventSink>,
    pub(crate) status: Arc<dyn EventStatus>,
}

/// Every event goes to the in-process bus and, with buses configured, to
/// NATS and Kafka: in PostgreSQL mode through the outbox and its relays
/// (started here with the outbox pruner), in embedded mode best effort.
pub(crate) fn wire(
    settings: &EventSettings,
    buses: &Buses,
    outbox: Option<&Arc<dyn Outbox>>,
    bus: &InProcessBus,
    tasks: &mut Tasks,
) -> Events {
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![Arc::new(bus.clone())];
    let mut counters: Vec<(Sink, Counters)> = Vec::new();
    match outbox {
        // PostgreSQL: events reach the buses through the outbox, written
        // in each change's transaction; one relay per bus publishes them.
        Some(outbox) => {
            let (wake, relays) = outbox::start(outbox, buses, settings, tasks);
            counters.extend(
                relays
                    .into_iter()
                    .map(|(sink, stats)| (sink, Counters::Relay(stats))),
            );
            sinks.push(Arc::new(wake));
            tracing::info!(sinks = ?buses.sinks().iter().map(Sink::as_str).collect::<Vec<_>>(), "events are relayed from the PostgreSQL outbox (at least once)");
        }
        // Embedded: no outbox; external buses get the events best effort.
        None => {
            for sink in buses.sinks().iter() {
                let Some(publisher) = buses.publisher(sink) else {
                    continue;
                };
                let (queue, task) = BestEffort::spawn(
                    sink,
                    publisher,
                    settings.embedded_event_queue,
                    tasks.stop_signal(),
                );
                counters.push((sink, Counters::BestEffort(queue.stats())));
                sinks.push(Arc::new(queue));
                tasks.adopt("best-effort publisher", task);
            }
            if !buses.sinks().is_empty() {
                tracing::warn!(
                    "embedded mode publishes to NATS/Kafka best effort: events queued while a bus is down are lost on restart or when the queue is full"
                );
            }
        }
    }
    let status = DeliveryState {
        delivery: match (outbox, counters.is_empty()) {
            (_, true) => Delivery::InProcess,
            (Some(_), false) => Delivery::Outbox,
            (None, false) => Delivery::BestEffort,
        },
        outbox: outbox.cloned(),
        sinks: counters,
    };
    Events {
        sink: Arc::new(FanOut(sinks)),
        status: Arc::new(status),
    }
}

/// Hands every event to each of several sinks (the in-process bus first).
/// Only the first sink's error would matter to the registry, which ignores
/// them all: the change is stored either way.
struct FanOut(Vec<Arc<dyn EventSink>>);

#[async_trait]
impl EventSink for FanOut {
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        let mut result = Ok(());
        for sink in &self.0 {
            if let Err(error) = sink.publish(events).await {
                result = Err(error);
            }
        }
        result
    }
}

/// What a bus's publisher in this replica counts.
enum Counters {
    Relay(Arc<RelayStats>),
    BestEffort(Arc<BestEffortStats>),
}

/// Event delivery as the dashboard shows it: this replica's counters and,
/// in outbox mode, the backlog in the database.
struct DeliveryState {
    delivery: Delivery,
    outbox: Option<Arc<dyn Outbox>>,
    sinks: Vec<(Sink, Counters)>,
}

impl std::fmt::Debug for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryState")
            .field("delivery", &self.delivery)
            .field("sinks", &self.sinks.iter().map(|s| s.0).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventStatus for DeliveryState {
    fn delivery(&self) -> Delivery {
        self.delivery
    }

    async fn sinks(&self, tenant: Option<&TenantId>) -> Result<Vec<SinkStatus>, RegistryError> {
        let mut out = Vec::with_capacity(self.sinks.len());
        for (sink, counters) in &self.sinks {
            let backlog = match &self.outbox {
                Some(outbox) => Some(outbox.backlog(*sink, tenant).await?),
                None => None,
            };
            out.push(match counters {
                Counters::Relay(stats) => SinkStatus {
                    sink: *sink,
                    published: stats.published(),
                    failures: stats.failures(),
                    relaying: Some(stats.leading()),
                    dropped: None,
                    backlog,
                },
                Counters::BestEffort(stats) => SinkStatus {
                    sink: *sink,
                    published: stats.published(),
                    failures: stats.failures(),
                    relaying: None,
                    dropped: Some(stats.dropped()),
                    backlog,
                },
            });
        }
        Ok(out)
    }
}
