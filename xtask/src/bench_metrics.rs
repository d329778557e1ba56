//! `cargo xtask bench`, the request metrics' cost: embedded service lookups with `HUB_REQUEST_METRICS` on against the same lookups with it off.
//!
//! The switch is a start-up setting, so each side gets a server of its own:
//! the same registrations (outside the measurement), then closed-loop lookups
//! for the phase's length, as the lookup phase does. After the lookups each
//! server's dashboard is read, so that a misspelt variable cannot make both
//! sides measure the same thing: with the metrics on it must have counted at
//! least the lookups the load generator saw answered, with them off it must
//! say that it tracks nothing. The two sides take turns at going first.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::bench::{
    Bound, Figures, OnError, Options, Server, Stop, TENANT_PREFIX, Workload, drive, get_once,
    median_figures, progress, register_unmeasured, row, target,
};

/// The target: lookups with the request metrics on at least this
/// share of lookups with them off.
const RATIO_TARGET: f64 = 0.9;
const SWITCH: &str = "HUB_REQUEST_METRICS";

/// Embedded lookups with the request metrics on and off, in one run.
#[derive(Debug)]
pub(crate) struct MetricsResult {
    pub(crate) on: Figures,
    pub(crate) off: Figures,
}

/// Both sides of one run.
pub(crate) async fn run(
    options: &Options,
    binary: &Path,
    log_dir: &Path,
    run: usize,
) -> anyhow::Result<MetricsResult> {
    let on_first = run % 2 == 1;
    let mut figures = [None, None];
    for on in [on_first, !on_first] {
        let log_path = log_dir.join(format!("server-metrics-{}-run{run}.log", side(on)));
        progress(&format!(
            "  request metrics: embedded, {} (log: {})",
            side(on),
            log_path.display()
        ));
        let env = [(SWITCH, side(on).to_owned())];
        let mut server = Server::start(binary, &log_path, &options.log_level, &env)?;
        server.wait_ready("/health").await?;
        let measured = lookups(options, &mut server, on).await.with_context(|| {
            format!(
                "embedded, request metrics {} (server log: {})",
                side(on),
                log_path.display()
            )
        })?;
        figures[usize::from(on)] = Some(measured);
    }
    let [Some(off), Some(on)] = figures else {
        bail!("a side of the request metrics' phase was not measured");
    };
    Ok(MetricsResult { on, off })
}

fn side(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// Registrations (not measured), lookups for the phase's length, then the
/// check that the server counted them (on) or tracks nothing (off).
async fn lookups(options: &Options, server: &mut Server, on: bool) -> anyhow::Result<Figures> {
    register_unmeasured(options, server, TENANT_PREFIX).await?;
    let addr = server.addr;
    let workload = Workload::lookups(addr, TENANT_PREFIX)?;
    let figures = drive(
        addr,
        options.connections,
        Arc::new(workload),
        Stop::At(options.duration),
        OnError::Fail,
    )
    .await
    .context("lookup phase of the request metrics")?;
    server.check_alive()?;
    let (status, body) = get_once(
        addr,
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
        (true, Some(true)) if total >= figures.requests => {}
        (true, _) => bail!(
            "{SWITCH}=on, but the dashboard counted {total} requests (tracked: {tracked:?}) \
             after {} lookups",
            figures.requests
        ),
        (false, Some(false)) if total == 0 => {}
        (false, _) => {
            bail!("{SWITCH}=off, but the dashboard counted {total} requests (tracked: {tracked:?})")
        }
    }
    Ok(figures)
}

const ON: &str = "metrics on";
const OFF: &str = "metrics off";

/// The rows of one run.
pub(crate) fn run_lines(out: &mut String, result: &MetricsResult) {
    row(out, ON, result.on.requests, &result.on);
    row(out, OFF, result.off.requests, &result.off);
    let _ = writeln!(
        out,
        "request metrics on/off lookups: embedded {:.2}x",
        result.on.rps / result.off.rps
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
         as in the lookup phase"
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
