//! The event phases of `cargo xtask bench`: PostgreSQL-mode registration with NATS and Kafka configured, the relays' catch-up, and the time from an acknowledged registration to its event on each bus.
//!
//! Each run starts one more PostgreSQL-mode server, on a fresh database like
//! the one without events, configured with NATS and Kafka under names of its
//! own (subject prefix, JetStream stream, Kafka topic), which are deleted
//! when the run ends. Before the server starts, a core NATS subscription on
//! every event subject of the prefix is opened; once it is ready (and has
//! created the topic), one long-polling fetcher per Kafka partition follows
//! the topic from its start. Both note the instant each event arrives.
//!
//! Then the server gets the same closed-loop registration phase as the one
//! without events, whose throughput is compared with it; the bench waits
//! until every event of that phase has arrived on both buses and reports how
//! long after the last acknowledged registration the last one came (the
//! relays' backlog catch-up). Last, an open-loop phase sends registrations at
//! a fixed rate (request `i` at `start + i / rate`, over enough connections
//! that the server does not pace the sender; sends more than `LATE` behind
//! their schedule are counted) and notes when each 2xx answer arrived; the
//! latency of an event is its arrival minus that instant.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use rskafka::BackoffConfig;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client as KafkaClient, ClientBuilder};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::bench::{
    Bound, CpuSample, CpuUsage, Figures, OnError, Options, PgAdmin, PgServer, Phase,
    REGISTER_PREFIX, Stop, TENANT_PREFIX, Workload, connect, cpu_line, drive, instance_id, median,
    mib, new_histogram, progress, random_hex, report, send, target, verify_registrations,
};

/// The brokers of the event phases (those of `cargo xtask test`).
const NATS_URL: &str = "nats://127.0.0.1:4222";
const KAFKA_BROKER: &str = "127.0.0.1:9092";
/// `HUB_KAFKA_PARTITIONS` of the server, which creates the topic.
const KAFKA_PARTITIONS: i32 = 6;
/// The name of the registration phase with events in the tables.
pub(crate) const REGISTER_ROW: &str = "pg reg+event";
/// The instances of the latency phase are `l-00000`, `l-00001`, ...
const LATENCY_PREFIX: &str = "l";
/// A send this far behind its schedule counts as late: the sender, not the
/// server, paced it. Above the tokio timer's millisecond resolution.
const LATE: Duration = Duration::from_millis(5);
/// The open-loop phase starts this long after its connections are open, so
/// that every sender task is waiting on its first slot before it comes.
const LEAD: Duration = Duration::from_millis(50);
/// Longest wait for the events of a phase to arrive after its last answer...
const DELIVERY_DEADLINE: Duration = Duration::from_secs(120);
/// ...and for the next one to come while none does.
const DELIVERY_STALL: Duration = Duration::from_secs(20);
/// How long a Kafka fetch waits at the broker for a record to come, while
/// no latency is measured (the registration phase, so that the listener
/// costs the brokers little there)...
const FETCH_WAIT_MS: i32 = 500;
/// ...and while it is. Tansu does not answer a waiting fetch when a record
/// comes: it looks again after a while (up to about half of the wait), so the
/// wait bounds the resolution of the Kafka figures, at a price in broker CPU
/// (with 5 ms, arrivals are seen within about 2.5 ms).
const FINE_FETCH_WAIT_MS: i32 = 5;
const FETCH_MAX_BYTES: i32 = 4 * 1024 * 1024;
/// Bound on connecting to a broker and on each request beyond a fetch's wait.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Targets of the issue.
const EVENTS_THROUGHPUT_TARGET: f64 = 0.85;
const NATS_P99_TARGET_MS: f64 = 100.0;

/// The two buses, in the order of every `[_; 2]` below.
const SINKS: [&str; 2] = ["NATS", "Kafka"];

/// The brokers, checked once before the runs. Holds the Kafka-compatible
/// broker this bench started, if it started one, until the end.
#[derive(Debug)]
pub(crate) struct Brokers {
    _kafka: crate::kafka::Broker,
}

/// Whether the event phases can run: `None` means they do not, and the report
/// says why.
pub(crate) async fn brokers(options: &Options) -> Option<Brokers> {
    if !options.events {
        report("events: skipped (--skip-events)\n");
        return None;
    }
    if let Err(error) = nats_connect().await {
        report(&format!(
            "events: SKIPPED, NATS on {NATS_URL} does not answer: {error:#}\n"
        ));
        return None;
    }
    let kafka = match tokio::task::spawn_blocking(crate::kafka::ensure).await {
        Ok(Ok(kafka)) => kafka,
        Ok(Err(error)) => {
            report(&format!(
                "events: SKIPPED, no Kafka-compatible broker on {KAFKA_BROKER}: {error:#}\n"
            ));
            return None;
        }
        Err(error) => {
            report(&format!(
                "events: SKIPPED, looking for a Kafka-compatible broker failed: {error}\n"
            ));
            return None;
        }
    };
    report(&format!(
        "events: NATS {NATS_URL}, Kafka {KAFKA_BROKER} ({KAFKA_PARTITIONS} partitions); a subject prefix, \
         stream and topic per run; latency phase {} registrations/s for {} s, open loop over {} connections\n",
        options.event_rate,
        options.event_duration.as_secs(),
        options.connections,
    ));
    Some(Brokers { _kafka: kafka })
}

async fn nats_connect() -> anyhow::Result<async_nats::Client> {
    let connect = async_nats::ConnectOptions::new()
        .name("hub-bench")
        .connection_timeout(Duration::from_secs(2))
        .connect(NATS_URL);
    tokio::time::timeout(BROKER_TIMEOUT, connect)
        .await
        .context("timed out")?
        .context("connecting")
}

async fn kafka_client() -> anyhow::Result<KafkaClient> {
    // rskafka retries without end by default; a bench must not hang.
    let backoff = BackoffConfig {
        deadline: Some(Duration::from_secs(5)),
        ..BackoffConfig::default()
    };
    let build = ClientBuilder::new(vec![KAFKA_BROKER.to_owned()])
        .client_id("hub-bench")
        .backoff_config(backoff)
        .build();
    tokio::time::timeout(BROKER_TIMEOUT, build)
        .await
        .context("timed out")?
        .with_context(|| format!("connecting to Kafka on {KAFKA_BROKER}"))
}

/// The bus names of one server: deleted (the stream and the topic) when
/// dropped, on the error paths too. Drop it after the server, or the server
/// would create them again.
#[derive(Debug)]
struct Buses {
    prefix: String,
    stream: String,
    topic: String,
}

impl Buses {
    fn new() -> anyhow::Result<Self> {
        let id = random_hex(6)?;
        Ok(Self {
            prefix: format!("hubbench{id}"),
            stream: format!("HUBBENCH_{id}"),
            topic: format!("hubbench.{id}"),
        })
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", NATS_URL.to_owned()),
            ("HUB_NATS_SUBJECT_PREFIX", self.prefix.clone()),
            ("HUB_NATS_STREAM", self.stream.clone()),
            // Only in case the deletion fails: the stream then goes by itself.
            ("HUB_NATS_STREAM_MAX_AGE_SECS", "3600".to_owned()),
            ("KAFKA_BROKERS", KAFKA_BROKER.to_owned()),
            ("HUB_KAFKA_TOPIC", self.topic.clone()),
            ("HUB_KAFKA_PARTITIONS", KAFKA_PARTITIONS.to_string()),
        ]
    }
}

impl Drop for Buses {
    fn drop(&mut self) {
        // As for the scratch database: Drop cannot await, and the calling
        // thread belongs to the load generator's runtime.
        let stream = self.stream.clone();
        let topic = self.topic.clone();
        let outcome = std::thread::spawn(move || -> Vec<String> {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => return vec![format!("no runtime for the cleanup: {error}")],
            };
            runtime.block_on(async {
                let mut problems = Vec::new();
                let nats = async {
                    let client = nats_connect().await?;
                    async_nats::jetstream::new(client)
                        .delete_stream(&stream)
                        .await
                        .context("deleting")?;
                    anyhow::Ok(())
                };
                if let Err(error) = nats.await {
                    problems.push(format!("the NATS stream {stream} ({error:#})"));
                }
                let kafka = async {
                    let client = kafka_client().await?;
                    let controller = client.controller_client().context("controller")?;
                    tokio::time::timeout(BROKER_TIMEOUT, controller.delete_topic(&topic, 5_000))
                        .await
                        .context("timed out")?
                        .context("deleting")?;
                    anyhow::Ok(())
                };
                if let Err(error) = kafka.await {
                    problems.push(format!("the Kafka topic {topic} ({error:#})"));
                }
                problems
            })
        })
        .join()
        .unwrap_or_else(|_| vec!["the cleanup thread panicked".to_owned()]);
        for problem in outcome {
            progress(&format!("warning: could not delete {problem}"));
        }
    }
}

/// What one listener (NATS or Kafka) has seen.
#[derive(Debug, Default)]
struct Arrivals {
    /// When the first `service.registered` event of each instance arrived.
    first: HashMap<String, Instant>,
    /// Per phase (the instance id's part before `-`): instances whose event
    /// arrived, and when the last of them did.
    phases: HashMap<String, (usize, Instant)>,
    /// Distinct event ids, to tell a redelivery from a new event.
    ids: HashSet<String>,
    counts: ListenerCounts,
}

/// Everything a listener saw that was not a first delivery.
#[derive(Debug, Default, Clone)]
struct ListenerCounts {
    messages: u64,
    duplicates: u64,
    /// Events of other types (there should be none: TTLs outlast the run).
    unexpected: u64,
    /// Payloads that are not an envelope.
    unreadable: u64,
    errors: u64,
    last_error: Option<String>,
}

/// How many events of a phase arrived, and when the last one did.
#[derive(Debug, Clone, Copy)]
struct Delivered {
    count: usize,
    last: Option<Instant>,
}

impl Arrivals {
    fn record(&mut self, at: Instant, payload: &[u8]) {
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

    fn error(&mut self, error: String) {
        self.counts.errors += 1;
        self.counts.last_error = Some(error);
    }

    fn delivered(&self, phase: &str) -> Delivered {
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

type Shared = Arc<Mutex<Arrivals>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Arrivals> {
    // A listener task that panicked leaves counts that are still worth
    // reporting.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The NATS subscription and the Kafka fetchers of one server, each noting
/// when events arrive. Stops them when dropped.
#[derive(Debug)]
struct Listener {
    /// NATS, then Kafka.
    arrivals: [Shared; 2],
    tasks: Vec<JoinHandle<()>>,
    /// The wait of the Kafka fetches, in ms; a change cancels the fetches
    /// waiting at the broker and asks again with the new one.
    fetch_wait: tokio::sync::watch::Sender<i32>,
    _nats: async_nats::Client,
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
    async fn start(buses: &Buses) -> anyhow::Result<Self> {
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
    async fn follow_kafka(&mut self, topic: &str) -> anyhow::Result<()> {
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
    fn set_fetch_wait(&self, ms: i32) {
        self.fetch_wait.send_replace(ms);
    }

    /// Waits until `expected` events of `phase` arrived on both buses, or
    /// until the deadline, or until none came for a while.
    async fn wait_delivered(&self, phase: &str, expected: usize) -> [Delivered; 2] {
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

    fn counts(&self) -> [ListenerCounts; 2] {
        self.arrivals.each_ref().map(|a| lock(a).counts.clone())
    }
}

/// One bus after the registration phase: how many of its events arrived,
/// and how long after the last acknowledged registration the last one did.
#[derive(Debug, Clone, Copy)]
struct Drain {
    delivered: usize,
    expected: usize,
    /// `None` when not every event arrived.
    drain_ms: Option<f64>,
}

impl Drain {
    fn of(delivered: Delivered, expected: usize, acked: Instant) -> Self {
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

/// One bus in the fixed-rate phase.
#[derive(Debug, Clone, Copy)]
struct SinkLatency {
    /// Over the acknowledged registrations; a missing event counts as
    /// slower than any (so it cannot flatter p99).
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// p50 over the first and the last fifth of the registrations: a relay
    /// falling behind shows as growth.
    first_p50_ms: f64,
    last_p50_ms: f64,
    missing: usize,
    /// Events that arrived before the answer to their registration was read
    /// (counted as 0 ms).
    before_ack: usize,
}

/// The fixed-rate phase of one run.
#[derive(Debug, Clone)]
struct Latency {
    rate: usize,
    sent: usize,
    acked: usize,
    errors: u64,
    first_error: Option<String>,
    late: usize,
    max_lag_ms: f64,
    /// Answer times measured from the schedule, so queueing in the sender
    /// counts (no coordinated omission).
    http_p50_ms: f64,
    http_p99_ms: f64,
    sinks: [SinkLatency; 2],
    cpu: CpuUsage,
}

/// The event phases of one run.
#[derive(Debug)]
pub(crate) struct EventsResult {
    pub(crate) register: Figures,
    register_cpu: CpuUsage,
    drains: [Drain; 2],
    latency: Latency,
    listeners: [ListenerCounts; 2],
    peak_rss_kib: u64,
}

/// A PostgreSQL-mode server with NATS and Kafka: registration throughput,
/// then the relays' catch-up, then latency at a fixed rate.
pub(crate) async fn pg_events_run(
    options: &Options,
    admin: &PgAdmin,
    binary: &Path,
    log_path: &Path,
) -> anyhow::Result<EventsResult> {
    // Declared in this order so that they are dropped the other way round:
    // the server first, then the listener, then the stream and the topic.
    let buses = Buses::new()?;
    let mut listener = Listener::start(&buses).await?;
    let mut pg = PgServer::start(options, admin, binary, log_path, &buses.env()).await?;
    listener
        .follow_kafka(&buses.topic)
        .await
        .context("following the server's Kafka topic")?;
    let addr = pg.server.addr;
    let pid = pg.server.pid();
    let database = pg.scratch.database.clone();

    progress(&format!(
        "  pg register with events (prefix {}, stream {}, topic {})...",
        buses.prefix, buses.stream, buses.topic
    ));
    let workload = Workload::new(Phase::Register, options, addr)?;
    let before = CpuSample::take(pid, &database)?;
    let register = drive(
        addr,
        options.connections,
        Arc::new(workload),
        Stop::After(options.registrations),
        OnError::Fail,
    )
    .await
    .context("register phase with events")?;
    let acked = Instant::now();
    let register_cpu = CpuSample::take(pid, &database)?.since(&before);
    // From here on, arrivals are timed: the events still to come, then the
    // fixed-rate phase.
    listener.set_fetch_wait(FINE_FETCH_WAIT_MS);
    pg.server.check_alive()?;
    verify_registrations(addr, options.registrations, TENANT_PREFIX).await?;
    let delivered = listener
        .wait_delivered(REGISTER_PREFIX, options.registrations)
        .await;
    let drains = delivered.map(|d| Drain::of(d, options.registrations, acked));
    progress(&format!(
        "  events of the registration phase: {}",
        drain_text(&drains)
    ));

    progress(&format!(
        "  events at {}/s for {} s...",
        options.event_rate,
        options.event_duration.as_secs()
    ));
    let latency = latency_phase(options, &mut pg, &listener).await?;
    let peak_rss_kib = pg.server.peak_rss_kib()?;
    let listeners = listener.counts();
    drop(pg);
    drop(listener);
    drop(buses);
    Ok(EventsResult {
        register,
        register_cpu,
        drains,
        latency,
        listeners,
        peak_rss_kib,
    })
}

/// Registrations at `options.event_rate` for `options.event_duration`, then
/// the wait for their events, then the latencies.
async fn latency_phase(
    options: &Options,
    pg: &mut PgServer,
    listener: &Listener,
) -> anyhow::Result<Latency> {
    let rate = options.event_rate;
    let total = usize::try_from(
        options
            .event_duration
            .as_secs()
            .saturating_mul(u64::try_from(rate)?),
    )?;
    let addr = pg.server.addr;
    let workload = Arc::new(Workload::registrations(
        addr,
        total,
        LATENCY_PREFIX,
        TENANT_PREFIX,
    )?);
    let before = CpuSample::take(pg.server.pid(), &pg.scratch.database)?;
    let paced = paced(addr, options.connections, workload, total, rate).await?;
    let cpu = CpuSample::take(pg.server.pid(), &pg.scratch.database)?.since(&before);
    pg.server.check_alive()?;

    let acked = paced.acks.iter().flatten().count();
    listener.wait_delivered(LATENCY_PREFIX, acked).await;
    let mut sinks = Vec::with_capacity(2);
    for arrivals in &listener.arrivals {
        sinks.push(sink_latency(&paced.acks, &lock(arrivals))?);
    }
    let sinks = <[SinkLatency; 2]>::try_from(sinks)
        .map_err(|_| anyhow::anyhow!("expected one latency per bus"))?;
    let ms = |quantile: f64| paced.http.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(Latency {
        rate,
        sent: total,
        acked,
        errors: paced.errors,
        first_error: paced.first_error,
        late: paced.late,
        max_lag_ms: paced.max_lag.as_secs_f64() * 1000.0,
        http_p50_ms: ms(0.50),
        http_p99_ms: ms(0.99),
        sinks,
        cpu,
    })
}

/// The latencies of one bus: arrival minus acknowledgement, per
/// acknowledged registration.
fn sink_latency(acks: &[Option<Instant>], arrivals: &Arrivals) -> anyhow::Result<SinkLatency> {
    let mut all = new_histogram()?;
    let mut first = new_histogram()?;
    let mut last = new_histogram()?;
    let fifth = acks.len() / 5;
    let (mut acked, mut missing, mut before_ack) = (0_usize, 0_usize, 0_usize);
    for (index, ack) in acks.iter().enumerate() {
        let Some(ack) = ack else {
            continue;
        };
        acked += 1;
        let Some(arrived) = arrivals.first.get(&instance_id(LATENCY_PREFIX, index)) else {
            missing += 1;
            continue;
        };
        if arrived < ack {
            before_ack += 1;
        }
        let micros = u64::try_from(arrived.saturating_duration_since(*ack).as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        all.saturating_record(micros);
        if index < fifth {
            first.saturating_record(micros);
        } else if index >= acks.len() - fifth {
            last.saturating_record(micros);
        }
    }
    // The missing events count as slower than any that came: the quantile
    // is taken over all acknowledged registrations.
    let quantile = |histogram: &Histogram<u64>, q: f64| {
        let found = histogram.len() as f64;
        let wanted = q * acked as f64;
        if found == 0.0 || wanted > found {
            f64::INFINITY
        } else {
            histogram.value_at_quantile(wanted / found) as f64 / 1000.0
        }
    };
    let p50 = |histogram: &Histogram<u64>| {
        if histogram.is_empty() {
            f64::NAN
        } else {
            histogram.value_at_quantile(0.5) as f64 / 1000.0
        }
    };
    Ok(SinkLatency {
        p50_ms: quantile(&all, 0.50),
        p99_ms: quantile(&all, 0.99),
        max_ms: if missing > 0 {
            f64::INFINITY
        } else {
            all.max() as f64 / 1000.0
        },
        first_p50_ms: p50(&first),
        last_p50_ms: p50(&last),
        missing,
        before_ack,
    })
}

/// What the open-loop sender measured.
#[derive(Debug)]
struct Paced {
    /// When the 2xx answer to registration `i` was read.
    acks: Vec<Option<Instant>>,
    http: Histogram<u64>,
    late: usize,
    max_lag: Duration,
    errors: u64,
    first_error: Option<String>,
}

/// One sender task's share of it.
#[derive(Debug)]
struct PacedTask {
    acks: Vec<(usize, Instant)>,
    http: Histogram<u64>,
    late: usize,
    max_lag: Duration,
    errors: u64,
    first_error: Option<String>,
    lost: Option<String>,
}

/// Sends request `i` of `workload` at `start + i / rate`, `total` in all,
/// over `connections` keep-alive connections: each task takes the next
/// request, waits for its slot, sends it and reads the answer. With enough
/// tasks one is always waiting for the next slot, so the server's answers do
/// not pace the sends; a send that starts more than `LATE` behind its slot
/// is counted.
async fn paced(
    addr: SocketAddr,
    connections: usize,
    workload: Arc<Workload>,
    total: usize,
    rate: usize,
) -> anyhow::Result<Paced> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + LEAD;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            let workload = Arc::clone(&workload);
            let next = Arc::clone(&next);
            tokio::spawn(paced_loop(sender, workload, next, total, start, rate))
        })
        .collect();
    let mut paced = Paced {
        acks: vec![None; total],
        http: new_histogram()?,
        late: 0,
        max_lag: Duration::ZERO,
        errors: 0,
        first_error: None,
    };
    let mut lost = None;
    for task in tasks {
        let result = task.await.context("a load generator task panicked")??;
        for (index, at) in result.acks {
            if let Some(slot) = paced.acks.get_mut(index) {
                *slot = Some(at);
            }
        }
        paced
            .http
            .add(&result.http)
            .context("merging latency histograms")?;
        paced.late += result.late;
        paced.max_lag = paced.max_lag.max(result.max_lag);
        paced.errors += result.errors;
        paced.first_error = paced.first_error.or(result.first_error);
        lost = lost.or(result.lost);
    }
    if let Some(lost) = lost {
        bail!(
            "{} of {total} registrations failed, and a connection was lost: {lost}",
            paced.errors
        );
    }
    if let Some(first) = &paced.first_error {
        progress(&format!(
            "  warning: {} of {total} registrations failed; the first: {first}",
            paced.errors
        ));
    }
    Ok(paced)
}

async fn paced_loop(
    mut sender: SendRequest<Full<Bytes>>,
    workload: Arc<Workload>,
    next: Arc<AtomicUsize>,
    total: usize,
    start: Instant,
    rate: usize,
) -> anyhow::Result<PacedTask> {
    let mut result = PacedTask {
        acks: Vec::new(),
        http: new_histogram()?,
        late: 0,
        max_lag: Duration::ZERO,
        errors: 0,
        first_error: None,
        lost: None,
    };
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= total {
            break;
        }
        let slot = start + Duration::from_secs_f64(index as f64 / rate as f64);
        tokio::time::sleep_until(slot.into()).await;
        let lag = Instant::now().saturating_duration_since(slot);
        if lag > LATE {
            result.late += 1;
        }
        result.max_lag = result.max_lag.max(lag);
        let request = workload.request(index)?;
        let outcome = send(&mut sender, request).await;
        let answered = Instant::now();
        let micros =
            u64::try_from(answered.saturating_duration_since(slot).as_micros()).unwrap_or(u64::MAX);
        result.http.saturating_record(micros.max(1));
        match outcome {
            Ok(()) => result.acks.push((index, answered)),
            Err(error) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
                if error.downcast_ref::<hyper::Error>().is_some() {
                    result.lost = Some(format!("{error:#}"));
                    break;
                }
            }
        }
    }
    Ok(result)
}

fn drain_text(drains: &[Drain; 2]) -> String {
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

fn ms_text(ms: f64) -> String {
    if ms.is_finite() {
        format!("{ms:.2}")
    } else {
        "inf".to_owned()
    }
}

fn latency_line(out: &mut String, sink: &str, latency: &SinkLatency) {
    let _ = writeln!(
        out,
        "  {sink:<5} ack->event ms: p50 {}, p99 {}, max {}; p50 first/last fifth {}/{}; \
         missing {}, before the ack {}",
        ms_text(latency.p50_ms),
        ms_text(latency.p99_ms),
        ms_text(latency.max_ms),
        ms_text(latency.first_p50_ms),
        ms_text(latency.last_p50_ms),
        latency.missing,
        latency.before_ack,
    );
}

fn listener_line(out: &mut String, listeners: &[ListenerCounts; 2]) {
    let parts: Vec<String> = SINKS
        .iter()
        .zip(listeners)
        .map(|(sink, counts)| {
            let mut part = format!(
                "{sink} {} messages, {} duplicate(s), {} of other types, {} unreadable, {} error(s)",
                counts.messages, counts.duplicates, counts.unexpected, counts.unreadable, counts.errors
            );
            if let Some(error) = &counts.last_error {
                let _ = write!(part, " (last: {error})");
            }
            part
        })
        .collect();
    let _ = writeln!(out, "events seen: {}", parts.join("; "));
}

/// The lines of one run below its table.
pub(crate) fn run_lines(out: &mut String, events: &EventsResult) {
    let _ = writeln!(
        out,
        "pg+events peak RSS: {:.1} MiB",
        mib(events.peak_rss_kib)
    );
    cpu_line(out, REGISTER_ROW, &events.register_cpu);
    let _ = writeln!(
        out,
        "events of {REGISTER_ROW}: {}",
        drain_text(&events.drains)
    );
    let latency = &events.latency;
    let _ = writeln!(
        out,
        "events at {}/s: {} sent ({} more than {} ms late, max lag {:.1} ms), {} acked, {} errors; \
         HTTP from schedule p50 {:.2} ms, p99 {:.2} ms",
        latency.rate,
        latency.sent,
        latency.late,
        LATE.as_millis(),
        latency.max_lag_ms,
        latency.acked,
        latency.errors,
        latency.http_p50_ms,
        latency.http_p99_ms,
    );
    if let Some(error) = &latency.first_error {
        let _ = writeln!(out, "  first error: {error}");
    }
    for (sink, figures) in SINKS.iter().zip(&latency.sinks) {
        latency_line(out, sink, figures);
    }
    cpu_line(out, &format!("events at {}/s", latency.rate), &latency.cpu);
    listener_line(out, &events.listeners);
}

/// The medians over the runs, below the summary table.
pub(crate) fn summary_lines(out: &mut String, runs: &[&EventsResult]) {
    let Some(rate) = runs.first().map(|e| e.latency.rate) else {
        return;
    };
    let peak = runs.iter().map(|e| e.peak_rss_kib).max().unwrap_or(0);
    let _ = writeln!(out, "pg+events peak RSS: {:.1} MiB", mib(peak));
    let register: Vec<&CpuUsage> = runs.iter().map(|e| &e.register_cpu).collect();
    cpu_line(out, REGISTER_ROW, &crate::bench::median_cpu(&register));
    let drains: Vec<String> = (0..2)
        .map(|sink| {
            let all: Vec<&Drain> = runs.iter().map(|e| &e.drains[sink]).collect();
            let delivered: usize = all.iter().map(|d| d.delivered).sum();
            let expected: usize = all.iter().map(|d| d.expected).sum();
            let complete: Vec<f64> = all.iter().filter_map(|d| d.drain_ms).collect();
            let drain = if complete.len() == all.len() {
                format!("median drain {:.0} ms after the last ack", median(complete))
            } else {
                format!(
                    "{} of {} runs INCOMPLETE",
                    all.len() - complete.len(),
                    all.len()
                )
            };
            format!("{} {delivered}/{expected} ({drain})", SINKS[sink])
        })
        .collect();
    let _ = writeln!(out, "events of {REGISTER_ROW}: {}", drains.join(", "));
    let late: usize = runs.iter().map(|e| e.latency.late).sum();
    let sent: usize = runs.iter().map(|e| e.latency.sent).sum();
    let errors: u64 = runs.iter().map(|e| e.latency.errors).sum();
    let http_p99 = median(runs.iter().map(|e| e.latency.http_p99_ms).collect());
    let _ = writeln!(
        out,
        "events at {rate}/s: {sent} sent in all, {late} more than {} ms late, {errors} errors; \
         HTTP from schedule median p99 {http_p99:.2} ms",
        LATE.as_millis()
    );
    for (sink, name) in SINKS.iter().enumerate() {
        let all: Vec<&SinkLatency> = runs.iter().map(|e| &e.latency.sinks[sink]).collect();
        let of = |f: fn(&SinkLatency) -> f64| median(all.iter().map(|l| f(l)).collect());
        let figures = SinkLatency {
            p50_ms: of(|l| l.p50_ms),
            p99_ms: of(|l| l.p99_ms),
            max_ms: all.iter().map(|l| l.max_ms).fold(0.0, f64::max),
            first_p50_ms: of(|l| l.first_p50_ms),
            last_p50_ms: of(|l| l.last_p50_ms),
            missing: all.iter().map(|l| l.missing).sum(),
            before_ack: all.iter().map(|l| l.before_ack).sum(),
        };
        latency_line(out, name, &figures);
    }
    let cpu: Vec<&CpuUsage> = runs.iter().map(|e| &e.latency.cpu).collect();
    cpu_line(
        out,
        &format!("events at {rate}/s"),
        &crate::bench::median_cpu(&cpu),
    );
    let _ = writeln!(
        out,
        "(medians of p50 and p99, max of max, missing summed over runs)"
    );
}

/// The target lines of the event phases.
pub(crate) fn targets(
    out: &mut String,
    pg_register: Option<Figures>,
    events_register: Option<Figures>,
    runs: &[&EventsResult],
) {
    let (Some(without), Some(with), Some(first)) = (pg_register, events_register, runs.first())
    else {
        let _ = writeln!(
            out,
            "pg register events/none, nats p99 ms: not measured (events skipped)"
        );
        return;
    };
    target(
        out,
        "pg register events/none",
        with.rps / without.rps,
        Bound::AtLeast(EVENTS_THROUGHPUT_TARGET),
    );
    let p99 = median(runs.iter().map(|e| e.latency.sinks[0].p99_ms).collect());
    target(
        out,
        &format!("nats p99 ms @{}/s", first.latency.rate),
        p99,
        Bound::Below(NATS_P99_TARGET_MS),
    );
}
