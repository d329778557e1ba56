//! `cargo xtask bench`, heartbeat phases: lease renewals of distinct registered instances over 100 tenants, closed loop, in embedded mode, in PostgreSQL mode without Dragonfly and in PostgreSQL mode with Dragonfly, each compared with the same run's `/health`.
//!
//! The embedded and the PostgreSQL-mode servers of a run already hold the
//! instances of their registration phase, so their heartbeat phase follows
//! their other phases on the same server. The PostgreSQL+Dragonfly mode gets
//! a server of its own on a fresh database, with tenants of its own
//! (`bench-<hex>-tNNN`) whose Dragonfly keys are deleted at its end; its
//! instances are registered first, outside the measurement. Every phase
//! sends `POST /api/v1/discovery/heartbeat` with only `service_name` and
//! `instance_id` (no status, no metrics): a renewal that changes nothing but
//! the lease. Heartbeats are exempt from the rate limits, so the limiter's
//! defaults cannot throttle them.
//!
//! The reference is the `/health` rate and p99 of the run's embedded server
//! (the same HTTP stack with no registry work); the targets hold for the
//! embedded and the PostgreSQL+Dragonfly modes, and the PostgreSQL mode
//! without Dragonfly is reported beside them, so that the difference shows
//! what Dragonfly buys.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::bench::console::progress;
use crate::bench::dragonfly::{Endpoint, RunKeys};
use crate::bench::load::{Figures, OnError, Stop, drive};
use crate::bench::names::{REGISTER_PREFIX, TENANT_PREFIX, fresh_tenant_prefix};
use crate::bench::options::Options;
use crate::bench::pg::{PgAdmin, PgServer};
use crate::bench::phases::prepare::register_unmeasured;
use crate::bench::report::{Bound, median_figures, row, target};
use crate::bench::servers::Server;
use crate::bench::workload::Workload;

/// The targets for the embedded and the PostgreSQL+Dragonfly modes:
/// heartbeats at least this share of the `/health` rate...
const THROUGHPUT_TARGET: f64 = 0.5;
/// ...with a p99 at most this many times the `/health` p99.
const P99_TARGET: f64 = 2.0;
/// Rows of the report.
const EMBEDDED_ROW: &str = "hb embedded";
const PG_ROW: &str = "hb pg";
const DRAGONFLY_ROW: &str = "hb pg+df";

/// The heartbeat figures of one run.
#[derive(Debug)]
pub(crate) struct HeartbeatResult {
    /// The embedded server.
    pub(crate) embedded: Figures,
    /// The PostgreSQL-mode server without Dragonfly, when that mode ran.
    pub(crate) pg: Option<Figures>,
    /// The PostgreSQL-mode server with Dragonfly, when that mode ran.
    pub(crate) dragonfly: Option<Figures>,
}

/// Heartbeats for `options.duration`, round robin over the instances of the
/// server's registration phase (tenants `bench-tNNN`).
pub(crate) async fn measure(
    options: &Options,
    server: &mut Server,
    on_error: OnError,
) -> anyhow::Result<Figures> {
    measure_tenants(options, server, TENANT_PREFIX, on_error).await
}

async fn measure_tenants(
    options: &Options,
    server: &mut Server,
    tenants: &str,
    on_error: OnError,
) -> anyhow::Result<Figures> {
    let workload =
        Workload::heartbeats(server.addr, options.registrations, REGISTER_PREFIX, tenants)?;
    let figures = drive(
        server.addr,
        options.connections,
        Arc::new(workload),
        Stop::At(options.duration),
        on_error,
    )
    .await
    .context("heartbeat phase")?;
    server.check_alive()?;
    Ok(figures)
}

/// The PostgreSQL+Dragonfly mode of one run: a server on a fresh database
/// with Dragonfly configured, instances of fresh tenants registered outside
/// the measurement, then their heartbeats. Errors are counted, as in the
/// PostgreSQL mode without Dragonfly.
pub(crate) async fn pg_dragonfly_run(
    options: &Options,
    admin: &PgAdmin,
    endpoint: &Endpoint,
    binary: &Path,
    log_path: &Path,
) -> anyhow::Result<Figures> {
    let tenants = fresh_tenant_prefix()?;
    // Declared before the server, so that it is dropped after it.
    let keys = RunKeys::new(endpoint, &tenants);
    let PgServer {
        mut server,
        scratch,
    } = PgServer::start(options, admin, binary, log_path, &endpoint.env()).await?;
    progress(&format!(
        "  pg+dragonfly: registering {} instances of tenants {tenants}NNN (not measured)...",
        options.registrations
    ));
    register_unmeasured(options, &mut server, &tenants).await?;
    progress("  pg+dragonfly heartbeat...");
    let figures = measure_tenants(options, &mut server, &tenants, OnError::Count).await?;
    // The server first: the database and the keys go away only once nothing
    // uses them.
    drop(server);
    drop(scratch);
    drop(keys);
    Ok(figures)
}

/// Heartbeat over `/health`: the rate ratio and the p99 ratio.
fn ratios(heartbeat: &Figures, health: &Figures) -> (f64, f64) {
    (heartbeat.rps / health.rps, heartbeat.p99_ms / health.p99_ms)
}

fn ratio_text(name: &str, figures: Option<&Figures>, health: &Figures) -> String {
    match figures {
        Some(figures) => {
            let (rps, p99) = ratios(figures, health);
            format!("{name} {rps:.2}x req/s, {p99:.2}x p99")
        }
        None => format!("{name} not measured"),
    }
}

/// The rows of one run, and the ratios to its `/health`.
pub(crate) fn run_lines(out: &mut String, result: &HeartbeatResult, health: &Figures) {
    let modes = [
        (EMBEDDED_ROW, Some(&result.embedded)),
        (PG_ROW, result.pg.as_ref()),
        (DRAGONFLY_ROW, result.dragonfly.as_ref()),
    ];
    for (name, figures) in modes {
        if let Some(figures) = figures {
            row(out, name, figures.requests, figures);
        }
    }
    let _ = writeln!(
        out,
        "heartbeats/health (/health {:.1} req/s, p99 {:.3} ms): {}; {}; {}",
        health.rps,
        health.p99_ms,
        ratio_text("embedded", Some(&result.embedded), health),
        ratio_text("pg", result.pg.as_ref(), health),
        ratio_text("pg+df", result.dragonfly.as_ref(), health),
    );
}

/// The medians over the runs, their ratios to the median `/health`, and the
/// targets.
pub(crate) fn summary_lines(out: &mut String, runs: &[&HeartbeatResult], health: &Figures) {
    if runs.is_empty() {
        let _ = writeln!(out, "heartbeats: not measured (--skip-heartbeats)");
        return;
    }
    let median_of = |pick: fn(&HeartbeatResult) -> Option<&Figures>| {
        let all: Vec<&Figures> = runs.iter().filter_map(|r| pick(r)).collect();
        (!all.is_empty()).then(|| median_figures(&all))
    };
    let embedded = median_of(|r| Some(&r.embedded));
    let pg = median_of(|r| r.pg.as_ref());
    let dragonfly = median_of(|r| r.dragonfly.as_ref());
    for (name, median) in [
        (EMBEDDED_ROW, &embedded),
        (PG_ROW, &pg),
        (DRAGONFLY_ROW, &dragonfly),
    ] {
        if let Some((requests, figures)) = median {
            row(out, name, *requests, figures);
        }
    }
    let _ = writeln!(
        out,
        "heartbeats: distinct registered instances over 100 tenants, closed loop, renewals without \
         status or metrics; ratios to the embedded /health ({:.1} req/s, p99 {:.3} ms)",
        health.rps, health.p99_ms
    );
    for (name, median) in [("embedded", &embedded), ("pg+df", &dragonfly)] {
        match median {
            Some((_, figures)) => {
                let (rps, p99) = ratios(figures, health);
                target(
                    out,
                    &format!("hb {name}/health req/s"),
                    rps,
                    Bound::AtLeast(THROUGHPUT_TARGET),
                );
                target(
                    out,
                    &format!("hb {name}/health p99"),
                    p99,
                    Bound::AtMost(P99_TARGET),
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "hb {name}/health: not measured (PostgreSQL or Dragonfly skipped)"
                );
            }
        }
    }
    match &pg {
        Some((_, figures)) => {
            let (rps, p99) = ratios(figures, health);
            let _ = writeln!(
                out,
                "{:<27} {rps:.2} req/s, {p99:.2} p99 (PostgreSQL without Dragonfly: no target, for comparison)",
                "hb pg/health"
            );
        }
        None => {
            let _ = writeln!(out, "hb pg/health: not measured (PostgreSQL skipped)");
        }
    }
}
