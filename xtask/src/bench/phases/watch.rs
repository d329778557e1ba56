//! `cargo xtask bench`, watch phase: 1,000 open watch streams (SSE) over 100 tenants while registrations arrive at a fixed rate; the time from each acknowledged change to its delivery on every stream of its tenant, what was missing or duplicated, and the server's RSS with the streams open. Embedded and PostgreSQL mode.
//!
//! Each registration creates a distinct instance (`w-NNNNN`), so a delivered
//! event names the registration it came from by its `instance_id`; latency
//! is the arrival time on a stream minus the time the registration's 2xx
//! answer was read (zero when the event came first). A stream that gets an
//! event twice counts a duplicate; one that never gets an event of its
//! tenant that was acknowledged counts it missing, after a drain of up to
//! `DRAIN` once the sending is over.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::HOST;
use tokio::sync::watch;

use crate::bench::console::{progress, report};
use crate::bench::load::{connect, new_histogram};
use crate::bench::names::{API_KEY, TENANTS, fresh_tenant_prefix, tenant_name};
use crate::bench::options::Options;
use crate::bench::pg::{PgAdmin, PgServer};
use crate::bench::phases::events::paced;
use crate::bench::report::{Bound, median, mib, target};
use crate::bench::servers::{Server, read_proc_status};
use crate::bench::workload::Workload;

/// Open streams, spread evenly over the tenants.
const STREAMS: usize = 1000;
/// Connections the registrations are sent over (open loop).
const SENDERS: usize = 32;
/// How long after the last acknowledged change the streams may take to
/// deliver it before it counts as missing.
const DRAIN: Duration = Duration::from_secs(10);
/// The instances of the phase are `w-00000`, ...
const PREFIX: &str = "w";
/// The targets.
const P99_TARGET_MS: f64 = 50.0;
const RSS_TARGET_MIB: f64 = 64.0;

/// The figures of one mode of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WatchFigures {
    pub(crate) changes: usize,
    pub(crate) deliveries: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) missing: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    pub(crate) rss_kib: u64,
}

/// Both modes of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WatchResult {
    pub(crate) embedded: WatchFigures,
    pub(crate) pg: Option<WatchFigures>,
}

/// What one stream received: `(registration index, arrival)` in order.
struct Received {
    tenant: usize,
    arrivals: Vec<(usize, Instant)>,
    ids: Vec<u64>,
}

/// The server settings of the phase: room for every stream under one key.
fn env() -> Vec<(&'static str, String)> {
    vec![
        ("HUB_WATCH_MAX_PER_KEY", (STREAMS * 2).to_string()),
        ("HUB_WATCH_MAX_PER_TENANT", STREAMS.to_string()),
    ]
}

/// One run of the phase in each mode (PostgreSQL when `admin` is given).
pub(crate) async fn run(
    options: &Options,
    admin: Option<&PgAdmin>,
    binary: &Path,
    log_dir: &Path,
    run: usize,
) -> anyhow::Result<WatchResult> {
    let log_path = log_dir.join(format!("server-watch-run{run}.log"));
    progress("  watch (embedded)...");
    let mut server = Server::start(binary, &log_path, &options.log_level, &env())?;
    server.wait_ready("/health").await?;
    let embedded = measure(options, &mut server)
        .await
        .with_context(|| format!("watch phase, embedded (server log: {})", log_path.display()))?;
    drop(server);
    let pg = match admin {
        Some(admin) => {
            progress("  watch (postgres)...");
            let log_path = log_dir.join(format!("server-pg-watch-run{run}.log"));
            let PgServer {
                mut server,
                scratch,
            } = PgServer::start(options, admin, binary, &log_path, &env()).await?;
            let figures = measure(options, &mut server).await.with_context(|| {
                format!("watch phase, postgres (server log: {})", log_path.display())
            })?;
            drop(server);
            drop(scratch);
            Some(figures)
        }
        None => None,
    };
    let result = WatchResult { embedded, pg };
    report(&run_lines(run, &result));
    Ok(result)
}

async fn measure(options: &Options, server: &mut Server) -> anyhow::Result<WatchFigures> {
    let tenants = fresh_tenant_prefix()?;
    let total = options.event_rate * usize::try_from(options.event_duration.as_secs())?;
    let (stop, stopped) = watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    // Every stream is open (its snapshot read) before the first change.
    let mut readers = Vec::with_capacity(STREAMS);
    for stream in 0..STREAMS {
        let tenant = stream % TENANTS;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        readers.push((
            ready_rx,
            tokio::spawn(read_stream(
                server.addr,
                tenant_name(&tenants, tenant),
                tenant,
                stopped.clone(),
                delivered.clone(),
                ready_tx,
            )),
        ));
    }
    let mut tasks = Vec::with_capacity(STREAMS);
    for (ready, task) in readers {
        ready
            .await
            .context("a watch stream ended before its snapshot")?;
        tasks.push(task);
    }
    server.check_alive()?;
    let workload = Workload::registrations(server.addr, total, PREFIX, &tenants)?;
    let sent = paced(
        server.addr,
        SENDERS,
        Arc::new(workload),
        total,
        options.event_rate,
    )
    .await?;
    // What every stream of a tenant must get: its acknowledged changes.
    let acked: Vec<(usize, Instant)> = sent
        .acks
        .iter()
        .enumerate()
        .filter_map(|(i, at)| at.map(|at| (i, at)))
        .collect();
    let expected = (acked.len() * STREAMS / TENANTS) as u64;
    let deadline = Instant::now() + DRAIN;
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_kib = rss_kib(server.pid())?;
    let _ = stop.send(true);
    let mut received = Vec::with_capacity(STREAMS);
    for task in tasks {
        received.push(task.await.context("a watch reader panicked")??);
    }
    server.check_alive()?;
    let mut acks = vec![None; total];
    for (i, at) in &acked {
        acks[*i] = Some(*at);
    }
    let mut histogram = new_histogram()?;
    let (mut missing, mut duplicated, mut out_of_order, mut deliveries) = (0, 0, 0, 0);
    for stream in &received {
        let mut seen = HashSet::new();
        for (i, at) in &stream.arrivals {
            deliveries += 1;
            if !seen.insert(*i) {
                duplicated += 1;
                continue;
            }
            if let Some(Some(acked)) = acks.get(*i) {
                let micros = at.saturating_duration_since(*acked).as_micros();
                histogram.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
            }
        }
        out_of_order += stream.ids.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        missing += acked
            .iter()
            .filter(|(i, _)| i % TENANTS == stream.tenant && !seen.contains(i))
            .count() as u64;
    }
    if sent.errors > 0 {
        progress(&format!(
            "  warning: {} registrations failed; they are not expected on any stream",
            sent.errors
        ));
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(WatchFigures {
        changes: acked.len(),
        deliveries,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
        missing,
        duplicated,
        out_of_order,
        rss_kib,
    })
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = read_proc_status(pid)?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .context("no VmRSS line in /proc/<pid>/status")?;
    line.trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("VmRSS is not a number of kB: {line:?}"))
}

/// Opens a watch of `tenant` (starting with a snapshot), says when the
/// snapshot arrived, then notes every event until told to stop.
async fn read_stream(
    addr: SocketAddr,
    tenant_id: String,
    tenant: usize,
    mut stop: watch::Receiver<bool>,
    delivered: Arc<AtomicU64>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Received> {
    let mut sender = connect(addr).await?;
    let request = Request::get("/api/v1/discovery/watch")
        .header(HOST, addr.to_string())
        .header("x-api-key", API_KEY)
        .header("x-tenant-id", &tenant_id)
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        bail!(
            "opening a watch of {tenant_id} answered {}",
            response.status()
        );
    }
    let mut body = response.into_body();
    let mut buffer: Vec<u8> = Vec::new();
    let mut ready = Some(ready);
    let mut received = Received {
        tenant,
        arrivals: Vec::new(),
        ids: Vec::new(),
    };
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = stop.changed() => return Ok(received),
        };
        let Some(frame) = frame else {
            bail!("the watch of {tenant_id} ended");
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let at = Instant::now();
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&raw);
            let mut event = "";
            let mut payload = "";
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v;
                } else if let Some(v) = line.strip_prefix("id: ") {
                    received.ids.push(v.parse().unwrap_or(0));
                } else if let Some(v) = line.strip_prefix("data: ") {
                    payload = v;
                }
            }
            if event == "snapshot" {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                received.ids.clear();
            } else if event.starts_with("service.") {
                let envelope: serde_json::Value = serde_json::from_str(payload)?;
                let index = envelope["instance_id"]
                    .as_str()
                    .and_then(|id| id.strip_prefix("w-"))
                    .and_then(|n| n.parse::<usize>().ok())
                    .context("an event of an instance this phase did not register")?;
                received.arrivals.push((index, at));
                delivered.fetch_add(1, Ordering::Relaxed);
            } else if event == "lagged" {
                bail!("the watch of {tenant_id} lagged: {payload}");
            }
        }
    }
}

fn figures_line(out: &mut String, mode: &str, f: &WatchFigures) {
    let _ = writeln!(
        out,
        "watch {mode:<9} {STREAMS} streams/{TENANTS} tenants, {} changes, {} deliveries: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; missing {}, duplicated {}, out of order {}; server RSS {:.1} MiB with the streams open",
        f.changes,
        f.deliveries,
        f.p50_ms,
        f.p99_ms,
        f.max_ms,
        f.missing,
        f.duplicated,
        f.out_of_order,
        mib(f.rss_kib),
    );
}

fn run_lines(run: usize, result: &WatchResult) -> String {
    let mut out = format!("run {run}, watch phase:\n");
    figures_line(&mut out, "embedded", &result.embedded);
    match &result.pg {
        Some(pg) => figures_line(&mut out, "postgres", pg),
        None => out.push_str("watch postgres: not measured (PostgreSQL skipped)\n"),
    }
    out
}

/// The medians over the runs, against the targets.
pub(crate) fn summary_lines(runs: &[WatchResult]) -> String {
    let mut out = String::from(
        "\nwatch (medians over the runs; time from acknowledged change to delivery on every stream of its tenant):\n",
    );
    if runs.is_empty() {
        out.push_str("watch: not measured (--skip-watch)\n");
        return out;
    }
    let modes: [(&str, Vec<WatchFigures>); 2] = [
        ("embedded", runs.iter().map(|r| r.embedded).collect()),
        ("postgres", runs.iter().filter_map(|r| r.pg).collect()),
    ];
    for (mode, all) in modes {
        if all.is_empty() {
            continue;
        }
        let m = |pick: fn(&WatchFigures) -> f64| median(all.iter().map(pick).collect());
        let _ = writeln!(
            out,
            "watch {mode:<9} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, RSS {:.1} MiB; missing {}, duplicated {} (sums)",
            m(|f| f.p50_ms),
            m(|f| f.p99_ms),
            m(|f| f.max_ms),
            m(|f| mib(f.rss_kib)),
            all.iter().map(|f| f.missing).sum::<u64>(),
            all.iter().map(|f| f.duplicated).sum::<u64>(),
        );
        target(
            &mut out,
            &format!("watch {mode} p99 ms"),
            m(|f| f.p99_ms),
            Bound::Below(P99_TARGET_MS),
        );
        target(
            &mut out,
            &format!("watch {mode} RSS MiB"),
            m(|f| mib(f.rss_kib)),
            Bound::Below(RSS_TARGET_MIB),
        );
    }
    out
}
