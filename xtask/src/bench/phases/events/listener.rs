//! The listeners of the event phases: a core NATS subscription and one long-polling fetcher per Kafka partition, each noting when every event arrives.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::buses::{BROKER_TIMEOUT, Buses, NATS_URL, kafka_client, nats_connect};
/// Longest wait for the events of a phase to arrive after its last answer...
pub(super) const DELIVERY_DEADLINE: Duration = Duration::from_secs(120);
/// ...and for the next one to come while none does.
pub(super) const DELIVERY_STALL: Duration = Duration::from_secs(20);
/// How long a Kafka fetch waits at the broker for a record to come, while
/// no latency is measured (the registration phase, so that the listener
/// costs the brokers little there)...
pub(super) const FETCH_WAIT_MS: i32 = 500;
/// ...and while it is. Tansu does not answer a waiting fetch when a record
/// comes: it looks again after a while (up to about half of the wait), so the
/// wait bounds the resolution of the Kafka figures, at a price in broker CPU
/// (with 5 ms, arrivals are seen within about 2.5 ms).
pub(super) const FINE_FETCH_WAIT_MS: i32 = 5;
pub(super) const FETCH_MAX_BYTES: i32 = 4 * 1024 * 1024;

/// What one listener (NATS or Kafka) has seen.
#[derive(Debug, Default)]
pub(super) struct Arrivals {
    /// When the first `service.registered` event of each instance arrived.
    pub(super) first: HashMap<String, Instant>,
    /// Per phase (the instance id's part before `-`): instances whose event
    /// arrived, and when the last of them did.
    pub(super) phases: HashMap<String, (usize, Instant)>,
    /// Distinct event ids, to tell a redelivery from a new event.
    pub(super) ids: HashSet<String>,
    pub(super) counts: ListenerCounts,
}

/// Everything a listener saw that was not a first delivery.
#[derive(Debug, Default, Clone)]
pub(super) struct ListenerCounts {
    pub(super) messages: u64,
    pub(super) duplicates: u64,
    /// Events of other types (there should be none: TTLs outlast the run).
    pub(super) unexpected: u64,
    /// Payloads that are not an envelope.
    pub(super) unreadable: u64,
    pub(super) errors: u64,
    pub(super) last_error: Option<String>,
}

/// How many events of a phase arrived, and when the last one did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivered {
    pub(super) count: usize,
    pub(super) last: Option<Instant>,
}

impl Arrivals {
    pub(super) fn record(&mut self, at: Instant, payload: &[u8]) {
        self.counts.messages += 1;
        let Ok(envelope) = serde_json::from_slice::<Value>(payload) else {
            self.counts.unreadable += 1;
            return;
        };
        let field = |name: &str| envelope.get(name).and_then(Value::as_str);
        let (Some(id), Some(kind), Some(instance)) =
            (field("id"), field("type"), field("instance_id"))
        else {
            self.counts.unreadable += 1;
            return;
        };
        if !self.ids.insert(id.to_owned()) {
            self.counts.duplicates += 1;
            return;
        }
        if kind != "service.registered" {
            self.counts.unexpected += 1;
            return;
        }
        if let Entry::Vacant(slot) = self.first.entry(instance.to_owned()) {
            slot.insert(at);
            let phase = instance
                .split_once('-')
                .map_or(instance, |(phase, _)| phase);
            let seen = self.phases.entry(phase.to_owned()).or_insert((0, at));
            seen.0 += 1;
            seen.1 = at;
        }
    }

    pub(super) fn error(&mut self, error: String) {
        self.counts.errors += 1;
        self.counts.last_error = Some(error);
    }

    pub(super) fn delivered(&self, phase: &str) -> Delivered {
        self.phases.get(phase).map_or(
            Delivered {
                count: 0,
                last: None,
            },
            |(count, last)| Delivered {
                count: *count,
                last: Some(*last),
            },
        )
    }
}

pub(super) type Shared = Arc<Mutex<Arrivals>>;

pub(super) fn lock(shared: &Shared) -> MutexGuard<'_, Arrivals> {
    // A listener task that panicked leaves counts that are still worth
    // reporting.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The NATS subscription and the Kafka fetchers of one server, each noting
/// when events arrive. Stops them when dropped.
#[derive(Debug)]
pub(super) struct Listener {
    /// NATS, then Kafka.
    pub(super) arrivals: [Shared; 2],
    pub(super) tasks: Vec<JoinHandle<()>>,
    /// The wait of the Kafka fetches, in ms; a change cancels the fetches
    /// waiting at the broker and asks again with the new one.
    pub(super) fetch_wait: tokio::sync::watch::Sender<i32>,
    pub(super) _nats: async_nats::Client,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Listener {
    /// Subscribes to every event subject of the prefix; call it before the
    /// server starts, since a core subscription sees only later messages.
    pub(super) async fn start(buses: &Buses) -> anyhow::Result<Self> {
        let client = nats_connect()
            .await
            .with_context(|| format!("NATS on {NATS_URL}"))?;
        let subject = format!("{}.*.registry.>", buses.prefix);
        let mut subscriber = client
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("subscribing to {subject}"))?;
        // The subscription is in place at the server once the flush returns.
        client.flush().await.context("flushing to NATS")?;
        let nats = Shared::default();
        let task = tokio::spawn({
            let nats = Arc::clone(&nats);
            async move {
                while let Some(message) = subscriber.next().await {
                    let at = Instant::now();
                    lock(&nats).record(at, &message.payload);
                }
                lock(&nats).error("the NATS subscription ended".to_owned());
            }
        });
        Ok(Self {
            arrivals: [nats, Shared::default()],
            tasks: vec![task],
            fetch_wait: tokio::sync::watch::Sender::new(FETCH_WAIT_MS),
            _nats: client,
        })
    }

    /// Follows every partition of `topic` from its start, one long-polling
    /// fetch per partition at a time so that each record is seen as soon as
    /// its partition has it (a fetch of all partitions at once would wait
    /// for the slowest). The server must have created the topic.
    pub(super) async fn follow_kafka(&mut self, topic: &str) -> anyhow::Result<()> {
        let client = kafka_client().await?;
        let deadline = Instant::now() + BROKER_TIMEOUT;
        let partitions = loop {
            let topics = tokio::time::timeout(BROKER_TIMEOUT, client.list_topics())
                .await
                .context("listing the Kafka topics timed out")?
                .context("listing the Kafka topics")?;
            if let Some(found) = topics.into_iter().find(|t| t.name == topic) {
                break found.partitions;
            }
            if Instant::now() >= deadline {
                bail!("the server did not create the Kafka topic {topic}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for partition in partitions {
            let partition_client = tokio::time::timeout(
                BROKER_TIMEOUT,
                client.partition_client(topic, partition, UnknownTopicHandling::Retry),
            )
            .await
            .context("timed out")?
            .with_context(|| format!("Kafka partition {partition} of {topic}"))?;
            let mut next = tokio::time::timeout(
                BROKER_TIMEOUT,
                partition_client.get_offset(OffsetAt::Earliest),
            )
            .await
            .context("timed out")?
            .with_context(|| format!("earliest offset of partition {partition}"))?;
            let kafka = Arc::clone(&self.arrivals[1]);
            let mut wait = self.fetch_wait.subscribe();
            self.tasks.push(tokio::spawn(async move {
                loop {
                    let wait_ms = *wait.borrow_and_update();
                    let changed = async {
                        if wait.changed().await.is_err() {
                            // No more changes: the listener is going away.
                            std::future::pending::<()>().await;
                        }
                    };
                    let fetched = tokio::select! {
                        fetched = partition_client.fetch_records(next, 1..FETCH_MAX_BYTES, wait_ms) => fetched,
                        () = changed => continue,
                    };
                    let at = Instant::now();
                    match fetched {
                        Ok((records, _high_watermark)) => {
                            let mut arrivals = lock(&kafka);
                            for record in records.iter().filter(|r| r.offset >= next) {
                                arrivals.record(at, record.record.value.as_deref().unwrap_or(&[]));
                            }
                            if let Some(last) = records.iter().map(|r| r.offset).max() {
                                next = next.max(last + 1);
                            }
                        }
                        Err(error) => {
                            lock(&kafka).error(format!("partition {partition}: {error}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        Ok(())
    }

    /// Sets the wait of the Kafka fetches (see `FINE_FETCH_WAIT_MS`).
    pub(super) fn set_fetch_wait(&self, ms: i32) {
        self.fetch_wait.send_replace(ms);
    }

    /// Waits until `expected` events of `phase` arrived on both buses, or
    /// until the deadline, or until none came for a while.
    pub(super) async fn wait_delivered(&self, phase: &str, expected: usize) -> [Delivered; 2] {
        let deadline = Instant::now() + DELIVERY_DEADLINE;
        let mut progress_at = Instant::now();
        let mut seen = [0, 0];
        loop {
            let now = self.arrivals.each_ref().map(|a| lock(a).delivered(phase));
            let counts = now.map(|d| d.count);
            if counts.iter().all(|&count| count >= expected) {
                return now;
            }
            if counts != seen {
                seen = counts;
                progress_at = Instant::now();
            }
            if Instant::now() >= deadline || progress_at.elapsed() >= DELIVERY_STALL {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(super) fn counts(&self) -> [ListenerCounts; 2] {
        self.arrivals.each_ref().map(|a| lock(a).counts.clone())
    }
}

/// One bus after the registration phase: how many of its events arrived,
/// and how long after the last acknowledged registration the last one did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Drain {
    pub(super) delivered: usize,
    pub(super) expected: usize,
    /// `None` when not every event arrived.
    pub(super) drain_ms: Option<f64>,
}

impl Drain {
    pub(super) fn of(delivered: Delivered, expected: usize, acked: Instant) -> Self {
        let drain_ms = (delivered.count >= expected).then(|| {
            delivered.last.map_or(0.0, |last| {
                last.saturating_duration_since(acked).as_secs_f64() * 1000.0
            })
        });
        Self {
            delivered: delivered.count,
            expected,
            drain_ms,
        }
    }
}

/// The two buses, in the order of every `[_; 2]` of the event phases.
pub(super) const SINKS: [&str; 2] = ["NATS", "Kafka"];

/// Per bus: how many events of the registration phase arrived, and when the last did.
pub(super) fn drain_text(drains: &[Drain; 2]) -> String {
    let parts: Vec<String> = SINKS
        .iter()
        .zip(drains)
        .map(|(sink, drain)| {
            let done = match drain.drain_ms {
                Some(ms) => format!("all arrived {ms:.0} ms after the last ack"),
                None => format!(
                    "{} MISSING",
                    drain.expected - drain.delivered.min(drain.expected)
                ),
            };
            format!("{sink} {}/{} ({done})", drain.delivered, drain.expected)
        })
        .collect();
    parts.join(", ")
}
