//! The outbox relay: drains one sink's pending outbox entries into its publisher, in order, with backoff; and the outbox pruner.
//!
//! One [`Relay`] runs per configured sink in every replica, but only the one
//! whose [`OutboxSession`] leads (PostgreSQL: the sink's advisory lock)
//! publishes; the others wait to take over. The leader reads a batch in
//! outbox order, hands it to the publisher, and marks it only once the
//! publisher has confirmed every event (JetStream acks, Kafka acks). A
//! failure leaves the batch pending: it is published again, from its first
//! event, after an exponential backoff (capped), so delivery is at least
//! once and each tenant's events keep their order. Sinks do not wait for each
//! other: each has its own relay, session and marks.
//!
//! A row that cannot be decoded into an event, or an event the bus refuses
//! for good (its publisher answers `Invalid`), can never be delivered, and
//! retrying it would hold up every event behind it, every tenant's. It is
//! set aside instead (kept in the outbox for an operator, counted, logged
//! once with its id, tenant and cause), and the relay goes on with the
//! others in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use hub_core::ports::{EventSink, Outbox, OutboxSession};
use hub_core::{Pending, RegistryError, RegistryEvent, Sink};
use tokio::sync::{Notify, watch};

/// How a relay paces itself.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Most entries read and published at once (256).
    pub batch: u32,
    /// How often an idle leader looks for new entries (20 ms). Changes made
    /// through this process wake it at once (see [`Relay::waker`]).
    pub poll: Duration,
    /// How long an idle leader waits after a wake-up before it reads (5 ms),
    /// so that under load one read and one mark serve many changes instead
    /// of one each.
    pub linger: Duration,
    /// How often a relay that does not lead tries to take over (1 s).
    pub follower_retry: Duration,
    /// First wait after a failure (100 ms); doubles per failure...
    pub backoff_min: Duration,
    /// ...up to this (10 s).
    pub backoff_max: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch: 256,
            poll: Duration::from_millis(20),
            linger: Duration::from_millis(5),
            follower_retry: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// What a relay has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct RelayStats {
    published: AtomicU64,
    failures: AtomicU64,
    set_aside: AtomicU64,
    leading: AtomicBool,
}

impl RelayStats {
    /// Events this relay published and marked.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Failed attempts (publish or outbox) so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    /// Rows this relay set aside as undeliverable.
    pub fn set_aside(&self) -> u64 {
        self.set_aside.load(Ordering::Relaxed)
    }
    /// Whether this relay currently leads its sink.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }
}

/// Relays one sink's outbox entries to its publisher.
pub struct Relay {
    outbox: Arc<dyn Outbox>,
    sink: Sink,
    publisher: Arc<dyn EventSink>,
    settings: RelaySettings,
    stats: Arc<RelayStats>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("sink", &self.sink)
            .field("settings", &self.settings)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Why the loop went round again.
enum Next {
    /// Look again now (the batch was full).
    Now,
    /// Nothing pending: wait for the poll interval or a wake-up.
    Idle,
    /// Another relay leads.
    Follow,
    /// The publisher failed: back off, keep the session.
    PublishFailed(RegistryError),
    /// The outbox failed: back off, drop the session.
    OutboxFailed(RegistryError),
}

impl Relay {
    /// A relay of `sink`'s entries of `outbox` to `publisher`.
    pub fn new(
        outbox: Arc<dyn Outbox>,
        sink: Sink,
        publisher: Arc<dyn EventSink>,
        settings: RelaySettings,
    ) -> Self {
        Self {
            outbox,
            sink,
            publisher,
            settings,
            stats: Arc::new(RelayStats::default()),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The relay's counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Notify this to make an idle relay look at the outbox now (after a
    /// change was committed through this process).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Relays until `stop` turns true (or its sender is dropped).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let sink = self.sink;
        let mut session: Option<Box<dyn OutboxSession>> = None;
        let mut backoff = self.settings.backoff_min;
        let mut failing = 0u64;
        loop {
            if *stop.borrow() {
                break;
            }
            let next = tokio::select! {
                next = self.step(&mut session) => next,
                _ = stop.changed() => break,
            };
            // Only an idle leader listens for wake-ups: a follower would
            // otherwise ask for the lock at every local change, and a failing
            // relay must keep its backoff.
            let listen = matches!(next, Next::Idle);
            let wait = match next {
                Next::Now | Next::Idle | Next::Follow => {
                    if failing > 0 {
                        tracing::info!(%sink, failed_attempts = failing, "outbox relay delivers again");
                    }
                    failing = 0;
                    backoff = self.settings.backoff_min;
                    match next {
                        Next::Now => None,
                        Next::Idle => Some(self.settings.poll),
                        _ => Some(self.settings.follower_retry),
                    }
                }
                Next::PublishFailed(error) | Next::OutboxFailed(error) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    // The whole chain: "store unavailable" alone hides
                    // whether the database refused, timed out or is gone.
                    let error = cause(&error);
                    if failing == 0 {
                        tracing::warn!(%sink, %error, retry_in_ms = backoff.as_millis() as u64, "outbox relay cannot deliver; retrying with backoff");
                    } else {
                        tracing::debug!(%sink, %error, attempt = failing + 1, retry_in_ms = backoff.as_millis() as u64, "outbox relay still failing");
                    }
                    failing += 1;
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.settings.backoff_max);
                    Some(wait)
                }
            };
            if let Some(wait) = wait {
                let woken = tokio::select! {
                    _ = tokio::time::sleep(wait) => false,
                    _ = self.wake.notified(), if listen => true,
                    _ = stop.changed() => break,
                };
                if woken && !self.settings.linger.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(self.settings.linger) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
        self.stats.leading.store(false, Ordering::Relaxed);
        tracing::debug!(%sink, "outbox relay stopped");
    }

    /// One round: open a session if needed, lead, read, publish, mark.
    async fn step(&self, slot: &mut Option<Box<dyn OutboxSession>>) -> Next {
        let session = match slot {
            Some(session) => session,
            None => match self.outbox.open(self.sink).await {
                Ok(session) => slot.insert(session),
                Err(error) => return Next::OutboxFailed(error),
            },
        };
        let outcome = self.lead_and_relay(session.as_mut()).await;
        if let Next::OutboxFailed(_) = outcome {
            // Its connection may be broken: start afresh (this also gives up
            // leadership, so another replica can take over meanwhile).
            *slot = None;
            self.stats.leading.store(false, Ordering::Relaxed);
        }
        outcome
    }

    async fn lead_and_relay(&self, session: &mut dyn OutboxSession) -> Next {
        match session.lead().await {
            Ok(true) => {
                if !self.stats.leading.swap(true, Ordering::Relaxed) {
                    tracing::info!(sink = %self.sink, "this replica now relays the outbox");
                }
            }
            Ok(false) => return Next::Follow,
            Err(error) => return Next::OutboxFailed(error),
        }
        let entries = match session.pending(self.settings.batch).await {
            Ok(entries) => entries,
            Err(error) => return Next::OutboxFailed(error),
        };
        if entries.is_empty() {
            return Next::Idle;
        }
        let full = entries.len() >= usize::try_from(self.settings.batch).unwrap_or(usize::MAX);
        let mut seqs: Vec<i64> = Vec::with_capacity(entries.len());
        let mut events: Vec<RegistryEvent> = Vec::with_capacity(entries.len());
        for pending in entries {
            match pending {
                Pending::Event(entry) => {
                    seqs.push(entry.seq);
                    events.push(entry.event);
                }
                // Set aside before anything is published: if that fails, the
                // batch is read again as it was, nothing published twice.
                Pending::Undecodable(row) => match session.set_aside(row.seq, &row.cause).await {
                    Ok(owed) => {
                        if owed {
                            self.stats.set_aside.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                sink = %self.sink,
                                outbox_id = row.seq,
                                tenant = %row.tenant,
                                cause = %row.cause,
                                "outbox event cannot be decoded: set aside (kept in hub_outbox_undeliverable); the relay goes on with the other events"
                            );
                        }
                    }
                    Err(error) => return Next::OutboxFailed(error),
                },
            }
        }
        if events.is_empty() {
            // Only rows set aside: look again at once for what follows them.
            return Next::Now;
        }
        match self.publisher.publish(&events).await {
            Ok(()) => {}
            // The bus refused an event for good: find it, set it aside, and
            // deliver the others.
            Err(RegistryError::Invalid(_)) => {
                return self.publish_each(session, seqs, events).await;
            }
            Err(error) => return Next::PublishFailed(error),
        }
        if let Err(error) = session.mark(&seqs).await {
            // Published but not marked: they will be published again
            // (consumers dedupe on the event id).
            return Next::OutboxFailed(error);
        }
        self.stats
            .published
            .fetch_add(seqs.len() as u64, Ordering::Relaxed);
        if full { Next::Now } else { Next::Idle }
    }

    /// Publishes a batch the bus refused, one event at a time, in order:
    /// each event it refuses for good is set aside (logged once with its
    /// outbox id, tenant and the bus's answer), the others are delivered and
    /// marked. Any other failure stops there, as for a whole batch.
    async fn publish_each(
        &self,
        session: &mut dyn OutboxSession,
        seqs: Vec<i64>,
        events: Vec<RegistryEvent>,
    ) -> Next {
        let mut delivered = Vec::with_capacity(seqs.len());
        let mut outcome = Next::Now;
        for (seq, event) in seqs.into_iter().zip(events) {
            match self.publisher.publish(std::slice::from_ref(&event)).await {
                Ok(()) => delivered.push(seq),
                Err(RegistryError::Invalid(refusal)) => {
                    let cause = format!("refused by {}: {refusal}", self.sink);
                    match session.set_aside(seq, &cause).await {
                        Ok(owed) => {
                            if owed {
                                self.stats.set_aside.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(
                                    sink = %self.sink,
                                    outbox_id = seq,
                                    tenant = %event.tenant_id(),
                                    %cause,
                                    "the bus refuses this event for good: set aside (kept in hub_outbox_undeliverable); the relay goes on with the other events"
                                );
                            }
                        }
                        Err(error) => {
                            outcome = Next::OutboxFailed(error);
                            break;
                        }
                    }
                }
                Err(error) => {
                    outcome = Next::PublishFailed(error);
                    break;
                }
            }
        }
        if !delivered.is_empty() {
            if let Err(error) = session.mark(&delivered).await {
                return Next::OutboxFailed(error);
            }
            self.stats
                .published
                .fetch_add(delivered.len() as u64, Ordering::Relaxed);
        }
        outcome
    }
}

/// An error with its causes on one line, for the log.
fn cause(error: &RegistryError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Deletes outbox entries every sink has and older than `retention`, every `interval`,
/// until `stop` turns true. Any replica may run it: deleting is idempotent.
pub async fn prune_outbox(
    outbox: Arc<dyn Outbox>,
    retention: Duration,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    const CHUNK: u32 = 10_000;
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        let cutoff = Utc::now() - retention;
        let mut total = 0u64;
        loop {
            match outbox.prune(cutoff, CHUNK).await {
                Ok(n) => {
                    total += n;
                    if n < u64::from(CHUNK) || *stop.borrow() {
                        break;
                    }
                }
                Err(error) => {
                    let error = cause(&error);
                    tracing::warn!(%error, "outbox pruning failed; retrying at the next tick");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::debug!(pruned = total, "delivered outbox entries pruned");
        }
    }
}
