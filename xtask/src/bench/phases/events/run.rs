//! One run of the event phases: the PostgreSQL-mode server with NATS and Kafka, its registration phase, the relays' catch-up and the fixed-rate latency phase.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;

use super::buses::Buses;
use super::listener::{
    Arrivals, Drain, FINE_FETCH_WAIT_MS, Listener, ListenerCounts, drain_text, lock,
};
use super::paced::paced;
use crate::bench::console::progress;
use crate::bench::cpu::{CpuSample, CpuUsage};
use crate::bench::load::{Figures, OnError, Stop, drive, new_histogram};
use crate::bench::names::{REGISTER_PREFIX, TENANT_PREFIX, instance_id};
use crate::bench::options::Options;
use crate::bench::pg::{PgAdmin, PgServer};
use crate::bench::phases::prepare::verify_registrations;
use crate::bench::workload::{Phase, Workload};
/// The name of the registration phase with events in the tables.
pub(crate) const REGISTER_ROW: &str = "pg reg+event";
/// The instances of the latency phase are `l-00000`, `l-00001`, ...
pub(super) const LATENCY_PREFIX: &str = "l";

/// One bus in the fixed-rate phase.
#[derive(Debug, Clone, Copy)]
pub(super) struct SinkLatency {
    /// Over the acknowledged registrations; a missing event counts as
    /// slower than any (so it cannot flatter p99).
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    /// p50 over the first and the last fifth of the registrations: a relay
    /// falling behind shows as growth.
    pub(super) first_p50_ms: f64,
    pub(super) last_p50_ms: f64,
    pub(super) missing: usize,
    /// Events that arrived before the answer to their registration was read
    /// (counted as 0 ms).
    pub(super) before_ack: usize,
}

/// The fixed-rate phase of one run.
#[derive(Debug, Clone)]
pub(super) struct Latency {
    pub(super) rate: usize,
    pub(super) sent: usize,
    pub(super) acked: usize,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) late: usize,
    pub(super) max_lag_ms: f64,
    /// Answer times measured from the schedule, so queueing in the sender
    /// counts (no coordinated omission).
    pub(super) http_p50_ms: f64,
    pub(super) http_p99_ms: f64,
    pub(super) sinks: [SinkLatency; 2],
    pub(super) cpu: CpuUsage,
}

/// The event phases of one run.
#[derive(Debug)]
pub(crate) struct EventsResult {
    pub(crate) register: Figures,
    pub(crate) register_cpu: CpuUsage,
    pub(super) drains: [Drain; 2],
    pub(super) latency: Latency,
    pub(super) listeners: [ListenerCounts; 2],
    pub(super) peak_rss_kib: u64,
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
pub(super) async fn latency_phase(
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
pub(super) fn sink_latency(
    acks: &[Option<Instant>],
    arrivals: &Arrivals,
) -> anyhow::Result<SinkLatency> {
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
