//! `cargo xtask bench`, the request metrics' cost: embedded service lookups with `HUB_REQUEST_METRICS` on against the same lookups with it off.
//!
//! The switch is a start-up setting, so each side gets a server of its own,
//! both running at once with the same registrations (outside the
//! measurement). The lookups then alternate between them in one-second
//! slices (on, off, off, on, ...) for twice the phase's length, and each
//! side's figures are the mean throughput and the median p50 and p99 of its
//! slices. On this machine the load of other work changes within seconds
//! (a first version measured each side for the whole phase, one after the
//! other, and three runs gave 0.90x, 1.15x and 0.59x); slices this short
//! expose both sides to the same load. After the lookups each server's
//! dashboard is read, so that a misspelt variable cannot make both sides
//! measure the same thing: with the metrics on it must have counted at least
//! the lookups the load generator saw answered, with them off it must say
//! that it tracks nothing.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::bench::console::progress;
use crate::bench::load::{Figures, OnError, Stop, drive, get_once};
use crate::bench::names::TENANT_PREFIX;
use crate::bench::options::Options;
use crate::bench::phases::prepare::register_unmeasured;
use crate::bench::report::{Bound, median, median_figures, row, target};
use crate::bench::servers::Server;
use crate::bench::workload::Workload;

/// The target: lookups with the request metrics on at least this
/// share of lookups with them off.
const RATIO_TARGET: f64 = 0.9;
const SWITCH: &str = "HUB_REQUEST_METRICS";
const SLICE: Duration = Duration::from_secs(1);

/// Embedded lookups with the request metrics on and off, in one run.
#[derive(Debug)]
pub(crate) struct MetricsResult {
    pub(crate) on: Figures,
    pub(crate) off: Figures,
    /// Slices per side.
    pub(crate) slices: usize,
}

/// Both sides of one run, interleaved.
pub(crate) async fn run(
    options: &Options,
    binary: &Path,
    log_dir: &Path,
    run: usize,
) -> anyhow::Result<MetricsResult> {
    let mut servers = Vec::with_capacity(2);
    for on in [false, true] {
        let log_path = log_dir.join(format!("server-metrics-{}-run{run}.log", side(on)));
        progress(&format!(
            "  request metrics: embedded server with {SWITCH}={} (log: {})",
            side(on),
            log_path.display()
        ));
        let env = [(SWITCH, side(on).to_owned())];
        let mut server = Server::start(binary, &log_path, &options.log_level, &env)?;
        server.wait_ready("/health").await?;
        register_unmeasured(options, &mut server, TENANT_PREFIX)
            .await
            .with_context(|| format!("registrations (server log: {})", log_path.display()))?;
        let workload = Arc::new(Workload::lookups(server.addr, TENANT_PREFIX)?);
        servers.push((server, workload));
    }
    let slices = usize::try_from(options.duration.as_secs())?.max(2);
    progress(&format!(
        "  request metrics: {slices} one-second slices of lookups per side, alternating"
    ));
    let mut measured: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for slice in 0..slices {
        let on_first = (slice + run) % 2 == 1;
        for on in [on_first, !on_first] {
            let (server, workload) = &mut servers[usize::from(on)];
            let figures = drive(
                server.addr,
                options.connections,
                Arc::clone(workload),
                Stop::At(SLICE),
                OnError::Fail,
            )
            .await
            .with_context(|| format!("lookups with {SWITCH}={}", side(on)))?;
            server.check_alive()?;
            measured[usize::from(on)].push(figures);
        }
    }
    let [off, on] = measured.map(|figures| combine(&figures));
    for (on_side, figures) in [(false, &off), (true, &on)] {
        let (server, _) = &servers[usize::from(on_side)];
        check_counted(server, on_side, figures.requests).await?;
    }
    Ok(MetricsResult { on, off, slices })
}

fn side(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// One side's slices as one figure: requests summed, the mean throughput,
/// the median p50 and p99.
pub(crate) fn combine(slices: &[Figures]) -> Figures {
    let count = slices.len().max(1) as f64;
    Figures {
        requests: slices.iter().map(|f| f.requests).sum(),
        errors: slices.iter().map(|f| f.errors).sum(),
        rps: slices.iter().map(|f| f.rps).sum::<f64>() / count,
        p50_ms: median(slices.iter().map(|f| f.p50_ms).collect()),
        p99_ms: median(slices.iter().map(|f| f.p99_ms).collect()),
    }
}

/// With the metrics on, the server's dashboard must have counted at least
/// `requests` requests; with them off, it must track nothing.
async fn check_counted(server: &Server, on: bool, requests: u64) -> anyhow::Result<()> {
    let (status, body) = get_once(
        server.addr,
        "/api/v1/dashboard/metrics",
        Some("bench-metrics-check"),
    )
    .await
    .context("reading the dashboard after the lookups")?;
    if status != 200 {
        bail!(
            "the dashboard answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let body: serde_json::Value =
        serde_json::from_slice(&body).context("the dashboard's answer is not JSON")?;
    let tracked = body["requests"]["tracked"].as_bool();
    let total = body["requests"]["total"].as_u64().unwrap_or(0);
    match (on, tracked) {
        (true, Some(true)) if total >= requests => Ok(()),
        (true, _) => bail!(
            "{SWITCH}=on, but the dashboard counted {total} requests (tracked: {tracked:?}) \
             after {requests} lookups"
        ),
        (false, Some(false)) if total == 0 => Ok(()),
        (false, _) => {
            bail!("{SWITCH}=off, but the dashboard counted {total} requests (tracked: {tracked:?})")
        }
    }
}

const ON: &str = "metrics on";
const OFF: &str = "metrics off";

/// The rows of one run.
pub(crate) fn run_lines(out: &mut String, result: &MetricsResult) {
    row(out, ON, result.on.requests, &result.on);
    row(out, OFF, result.off.requests, &result.off);
    let _ = writeln!(
        out,
        "request metrics on/off lookups: embedded {:.2}x ({} one-second slices per side)",
        result.on.rps / result.off.rps,
        result.slices
    );
}

/// The medians over the runs, and the target.
pub(crate) fn summary_lines(out: &mut String, runs: &[&MetricsResult]) {
    if runs.is_empty() {
        let _ = writeln!(
            out,
            "request metrics' cost: not measured (--skip-request-metrics)"
        );
        return;
    }
    let _ = writeln!(
        out,
        "request metrics' cost: embedded lookups with {SWITCH}=on against =off, a server each, \
         in alternating one-second slices"
    );
    let on: Vec<&Figures> = runs.iter().map(|r| &r.on).collect();
    let off: Vec<&Figures> = runs.iter().map(|r| &r.off).collect();
    let (on_requests, on) = median_figures(&on);
    let (off_requests, off) = median_figures(&off);
    row(out, ON, on_requests, &on);
    row(out, OFF, off_requests, &off);
    let _ = writeln!(
        out,
        "metrics: p50 {:.3} ms on, {:.3} ms off; p99 {:.3} ms on, {:.3} ms off",
        on.p50_ms, off.p50_ms, on.p99_ms, off.p99_ms
    );
    target(
        out,
        "metrics on/off lookups embedded",
        on.rps / off.rps,
        Bound::AtLeast(RATIO_TARGET),
    );
}
