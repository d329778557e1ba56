//! `BestEffort`: embedded mode's publisher to NATS or Kafka, a bounded queue drained in order by a background task, dropping (and counting) when full.
//!
//! Embedded mode has no outbox (nothing is persisted), so its events to
//! external buses are best effort by design: `publish` never waits for the
//! bus and never fails the change. A batch that fails is retried with
//! backoff, in order, while new events queue behind it; once the queue
//! holds `capacity` events, newer events are dropped and counted. A restart
//! loses whatever was queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hub_core::ports::EventSink;
use hub_core::{RegistryError, RegistryEvent, Sink};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Events taken from the queue per publish.
const BATCH: usize = 256;

/// Counters of a [`BestEffort`] publisher.
#[derive(Debug, Default)]
pub struct BestEffortStats {
    published: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
}

impl BestEffortStats {
    /// Events the bus acknowledged.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Failed publish attempts.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// A queueing, never-blocking front of another publisher.
#[derive(Debug, Clone)]
pub struct BestEffort {
    sink: Sink,
    queue: mpsc::Sender<RegistryEvent>,
    stats: Arc<BestEffortStats>,
}

impl BestEffort {
    /// Starts the task that drains up to `capacity` queued events into
    /// `inner`, until `stop` turns true.
    pub fn spawn(
        sink: Sink,
        inner: Arc<dyn EventSink>,
        capacity: usize,
        stop: watch::Receiver<bool>,
    ) -> (Self, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(BestEffortStats::default());
        let task = tokio::spawn(drain(sink, inner, rx, stats.clone(), stop));
        (Self { sink, queue, stats }, task)
    }

    /// The publisher's counters.
    pub fn stats(&self) -> Arc<BestEffortStats> {
        self.stats.clone()
    }
}

async fn drain(
    sink: Sink,
    inner: Arc<dyn EventSink>,
    mut rx: mpsc::Receiver<RegistryEvent>,
    stats: Arc<BestEffortStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => if n == 0 { break },
            _ = stop.changed() => break,
        }
        let mut backoff = Duration::from_millis(100);
        let mut failed = 0u32;
        loop {
            match inner.publish(&batch).await {
                Ok(()) => {
                    stats
                        .published
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if failed > 0 {
                        tracing::info!(%sink, failed_attempts = failed, "best-effort event publishing works again");
                    }
                    break;
                }
                Err(error) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    if failed == 0 {
                        tracing::warn!(%sink, %error, "best-effort event publishing failed; retrying (embedded mode has no outbox)");
                    }
                    failed += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[async_trait]
impl EventSink for BestEffort {
    /// Queues the events and returns at once; never fails.
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        for event in events {
            if self.queue.try_send(event.clone()).is_err() {
                let before = self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if before.is_power_of_two() || before == 0 {
                    tracing::warn!(sink = %self.sink, dropped = before + 1, "best-effort event queue full: event dropped");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    use chrono::Utc;
    use hub_core::{EventKind, Instance, Registration, RegistrationInput, Revision, TenantId};

    use super::*;

    /// A bus that fails while `down` and records what it took.
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        seen: Mutex<Vec<u64>>,
    }

    #[async_trait]
    impl EventSink for Flaky {
        async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(RegistryError::Unavailable {
                    component: "events",
                    source: "down".into(),
                });
            }
            self.seen
                .lock()
                .unwrap()
                .extend(events.iter().map(|e| e.revision().get()));
            Ok(())
        }
    }

    fn event(revision: u64) -> RegistryEvent {
        let registration = Registration::try_from(RegistrationInput {
            service_name: "svc".into(),
            host: "h".into(),
            port: 1,
            ..Default::default()
        })
        .unwrap();
        let instance = Instance::registered(
            TenantId::parse("t").unwrap(),
            registration,
            Utc::now(),
            None,
            Revision::new(revision),
        );
        RegistryEvent::new(EventKind::Registered, instance, None, Utc::now())
    }

    #[tokio::test]
    async fn queues_in_order_through_an_outage_and_drops_beyond_capacity() {
        let flaky = Arc::new(Flaky::default());
        flaky.down.store(true, Ordering::SeqCst);
        let (_stop_tx, stop) = watch::channel(false);
        let (publisher, _task) = BestEffort::spawn(Sink::Nats, flaky.clone(), 10, stop);
        let events: Vec<RegistryEvent> = (1..=20).map(event).collect();
        // While the bus is down: the first event is taken by the task and
        // retried, 10 more wait in the queue, and the rest are dropped.
        publisher.publish(&events[..1]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        publisher.publish(&events[1..]).await.unwrap();
        assert_eq!(publisher.stats().dropped(), 9);
        flaky.down.store(false, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while publisher.stats().published() < 11 {
            assert!(tokio::time::Instant::now() < deadline, "not drained");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*flaky.seen.lock().unwrap(), (1..=11).collect::<Vec<_>>());
        assert!(publisher.stats().failures() >= 1);
    }
}
