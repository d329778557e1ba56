//! `cargo xtask bench`, fairness phase: in PostgreSQL mode one tenant floods the hub with 64 connections while another tenant's lookups and heartbeats are timed at a modest rate, alone and then during the flood.
//!
//! The flood is closed-loop: 64 keep-alive connections, each with one
//! request in flight, three heartbeats with metrics for every re-registration
//! of one of the flooding tenant's instances. The other tenant sends a fixed
//! rate of lookups and heartbeats (with metrics) over a few connections; its
//! p99 during the flood is compared with its p99 alone (target: at most 3x).
//! The flooding tenant's errors (503 when it waits past its share of the
//! pool) are counted, not fatal: refusing it is the point.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};

use crate::bench::console::progress;
use crate::bench::load::{Figures, connect, new_histogram, send};
use crate::bench::names::API_KEY;
use crate::bench::options::Options;
use crate::bench::pg::{PgAdmin, PgServer};
use crate::bench::report::{Bound, median_figures, row, target};

const FLOOD_TENANT: &str = "flood";
const TIMED_TENANT: &str = "timed";
const FLOOD_CONNECTIONS: usize = 64;
/// The flooding tenant's instances (heartbeats and re-registrations cycle
/// over them, so its table does not grow during the phase).
const FLOOD_INSTANCES: usize = 256;
/// The timed tenant: services with one instance each, its request rate and
/// the connections that carry it.
const TIMED_SERVICES: usize = 10;
const TIMED_RATE: u64 = 100;
const TIMED_CONNECTIONS: u64 = 4;
/// The target: the timed tenant's p99 during the flood at most this
/// many times its p99 alone.
const P99_RATIO_TARGET: f64 = 3.0;
/// Rows of the report.
const ALONE_ROW: &str = "fair alone";
const LOADED_ROW: &str = "fair flooded";
const FLOOD_ROW: &str = "fair flood";

/// The figures of the fairness phase of one run.
#[derive(Debug)]
pub(crate) struct FairnessResult {
    /// The timed tenant alone.
    pub(crate) alone: Figures,
    /// The timed tenant during the flood.
    pub(crate) flooded: Figures,
    /// The flooding tenant (errors are its refused requests).
    pub(crate) flood: Figures,
}

/// One fairness phase on a fresh PostgreSQL-mode server (the pool and the
/// tenant share at their defaults for `--pg-pool`).
pub(crate) async fn pg_fairness_run(
    options: &Options,
    admin: &PgAdmin,
    binary: &Path,
    log_path: &Path,
) -> anyhow::Result<FairnessResult> {
    let PgServer {
        mut server,
        scratch,
    } = PgServer::start(options, admin, binary, log_path, &[]).await?;
    let addr = server.addr;
    progress("  fairness: registering both tenants' instances...");
    let mut setup = connect(addr).await?;
    for i in 0..TIMED_SERVICES {
        send(&mut setup, registration(addr, TIMED_TENANT, i)?).await?;
    }
    for i in 0..FLOOD_INSTANCES {
        send(&mut setup, registration(addr, FLOOD_TENANT, i)?).await?;
    }
    drop(setup);

    progress("  fairness: the timed tenant alone...");
    let alone = timed(addr, options.duration).await?;

    progress("  fairness: the timed tenant during a 64-connection flood...");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    let flooding = tokio::spawn(flood(addr, Arc::clone(&stop), Arc::clone(&started)));
    // The timed tenant starts once every flood connection has a request out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.load(Ordering::Relaxed) < FLOOD_CONNECTIONS as u64 {
        if Instant::now() > deadline || flooding.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let flooded = timed(addr, options.duration).await;
    stop.store(true, Ordering::Relaxed);
    let flood = flooding.await.context("the flood task panicked")??;
    let flooded = flooded?;
    server.check_alive()?;
    // The server first: the database goes away only once nothing uses it.
    drop(server);
    drop(scratch);
    Ok(FairnessResult {
        alone,
        flooded,
        flood,
    })
}

fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    tenant: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, HeaderValue::from_str(&addr.to_string())?)
        .header("x-api-key", HeaderValue::from_static(API_KEY))
        .header("x-tenant-id", HeaderValue::from_str(tenant)?);
    let body = match body {
        Some(body) => {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    Ok(request.body(Full::new(body))?)
}

/// Registration of instance `i` of `tenant` (service `svc-{i % 10}`).
fn registration(addr: SocketAddr, tenant: &str, i: usize) -> anyhow::Result<Request<Full<Bytes>>> {
    let body = serde_json::json!({
        "service_name": format!("svc-{}", i % TIMED_SERVICES),
        "instance_id": format!("{tenant}-{i:04}"),
        "host": format!("10.0.{}.{}", i / 250, i % 250),
        "port": 8080,
        "tags": ["bench"],
        "ttl_seconds": 3600,
    });
    request(
        addr,
        Method::POST,
        "/api/v1/discovery/register",
        tenant,
        Some(body),
    )
}

fn heartbeat(addr: SocketAddr, tenant: &str, i: usize) -> anyhow::Result<Request<Full<Bytes>>> {
    let body = serde_json::json!({
        "service_name": format!("svc-{}", i % TIMED_SERVICES),
        "instance_id": format!("{tenant}-{i:04}"),
        "metrics": {"response_time_ms": 12.5, "cpu_usage": 40, "memory_usage": 512, "error_rate": 0.01},
    });
    request(
        addr,
        Method::POST,
        "/api/v1/discovery/heartbeat",
        tenant,
        Some(body),
    )
}

fn lookup(addr: SocketAddr, i: usize) -> anyhow::Result<Request<Full<Bytes>>> {
    request(
        addr,
        Method::GET,
        &format!("/api/v1/discovery/services/svc-{}", i % TIMED_SERVICES),
        TIMED_TENANT,
        None,
    )
}

/// What a set of connections measured.
struct Measured {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Measured {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            histogram: new_histogram()?,
            errors: 0,
            first_error: None,
        })
    }

    /// Records one answer; a transport error (the server went away) ends
    /// the phase.
    fn record(&mut self, sent: Instant, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(micros.max(1));
        if let Err(error) = outcome {
            if error.downcast_ref::<hyper::Error>().is_some() {
                bail!("a connection was lost: {error:#}");
            }
            self.errors += 1;
            self.first_error.get_or_insert_with(|| format!("{error:#}"));
        }
        Ok(())
    }

    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.histogram
            .add(&other.histogram)
            .context("merging latency histograms")?;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        Ok(())
    }

    fn figures(&self, what: &str, elapsed: Duration) -> anyhow::Result<Figures> {
        let requests = self.histogram.len();
        if requests == 0 {
            bail!("{what}: no request completed");
        }
        if let Some(first) = &self.first_error {
            progress(&format!(
                "  {what}: {} of {requests} requests failed; the first: {first}",
                self.errors
            ));
        }
        let ms = |quantile: f64| self.histogram.value_at_quantile(quantile) as f64 / 1000.0;
        Ok(Figures {
            requests,
            errors: self.errors,
            rps: requests as f64 / elapsed.as_secs_f64(),
            p50_ms: ms(0.50),
            p99_ms: ms(0.99),
        })
    }
}

/// The timed tenant for `duration`: `TIMED_RATE` requests a second over
/// `TIMED_CONNECTIONS` connections, lookups and heartbeats taking turns. A
/// request that takes longer than its interval delays the next one on its
/// connection (the figures then show it as latency and a lower rate).
async fn timed(addr: SocketAddr, duration: Duration) -> anyhow::Result<Figures> {
    let period = Duration::from_millis(1000 * TIMED_CONNECTIONS / TIMED_RATE);
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::new();
    for connection in 0..TIMED_CONNECTIONS {
        let mut sender = connect(addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut measured = Measured::new()?;
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = usize::try_from(connection)?;
            while Instant::now() < end {
                ticks.tick().await;
                let request = if i % 2 == 0 {
                    lookup(addr, i / 2)?
                } else {
                    heartbeat(addr, TIMED_TENANT, (i / 2) % TIMED_SERVICES)?
                };
                let sent = Instant::now();
                let outcome = send(&mut sender, request).await;
                measured.record(sent, outcome)?;
                i += usize::try_from(TIMED_CONNECTIONS)?;
            }
            anyhow::Ok(measured)
        }));
    }
    let mut all = Measured::new()?;
    for task in tasks {
        all.merge(task.await.context("a timed task panicked")??)?;
    }
    all.figures("timed tenant", started.elapsed())
}

/// The flooding tenant, closed-loop on `FLOOD_CONNECTIONS` connections
/// until `stop`; `started` counts requests sent.
async fn flood(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
) -> anyhow::Result<Figures> {
    let mut senders = Vec::with_capacity(FLOOD_CONNECTIONS);
    for _ in 0..FLOOD_CONNECTIONS {
        senders.push(connect(addr).await?);
    }
    let begun = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(connection, mut sender)| {
            let (stop, started) = (Arc::clone(&stop), Arc::clone(&started));
            tokio::spawn(async move {
                let mut measured = Measured::new()?;
                let mut i = connection;
                while !stop.load(Ordering::Relaxed) {
                    let instance = i % FLOOD_INSTANCES;
                    let request = if (i / FLOOD_CONNECTIONS) % 4 == 3 {
                        registration(addr, FLOOD_TENANT, instance)?
                    } else {
                        heartbeat(addr, FLOOD_TENANT, instance)?
                    };
                    started.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    let outcome = send(&mut sender, request).await;
                    measured.record(sent, outcome)?;
                    i += FLOOD_CONNECTIONS;
                }
                anyhow::Ok(measured)
            })
        })
        .collect();
    let mut all = Measured::new()?;
    for task in tasks {
        all.merge(task.await.context("a flood task panicked")??)?;
    }
    all.figures("flooding tenant", begun.elapsed())
}

/// The rows of one run.
pub(crate) fn run_lines(out: &mut String, result: &FairnessResult) {
    row(out, ALONE_ROW, result.alone.requests, &result.alone);
    row(out, LOADED_ROW, result.flooded.requests, &result.flooded);
    row(out, FLOOD_ROW, result.flood.requests, &result.flood);
}

/// The medians over the runs, and the target.
pub(crate) fn summary_lines(out: &mut String, runs: &[&FairnessResult]) {
    if runs.is_empty() {
        let _ = writeln!(
            out,
            "fairness p99 flooded/alone: not measured (PostgreSQL or the phase skipped)"
        );
        return;
    }
    let alone: Vec<&Figures> = runs.iter().map(|r| &r.alone).collect();
    let flooded: Vec<&Figures> = runs.iter().map(|r| &r.flooded).collect();
    let flood: Vec<&Figures> = runs.iter().map(|r| &r.flood).collect();
    let (requests, alone) = median_figures(&alone);
    row(out, ALONE_ROW, requests, &alone);
    let (requests, flooded) = median_figures(&flooded);
    row(out, LOADED_ROW, requests, &flooded);
    let (requests, flood) = median_figures(&flood);
    row(out, FLOOD_ROW, requests, &flood);
    let _ = writeln!(
        out,
        "fairness: tenant '{TIMED_TENANT}' at {TIMED_RATE} req/s (lookups and heartbeats) alone, then while \
         tenant '{FLOOD_TENANT}' floods with {FLOOD_CONNECTIONS} connections (heartbeats with metrics, \
         re-registrations); p50 {:.3} -> {:.3} ms, p99 {:.3} -> {:.3} ms; flood errors (refused past its share) {}",
        alone.p50_ms, flooded.p50_ms, alone.p99_ms, flooded.p99_ms, flood.errors
    );
    target(
        out,
        "fairness p99 flooded/alone",
        flooded.p99_ms / alone.p99_ms,
        Bound::AtMost(P99_RATIO_TARGET),
    );
}
