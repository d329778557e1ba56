//! The lookups over the larger registry: 10,000 services (100 tenants x 100 services, 100,000 instances) registered unmeasured, then the lookup phase, in embedded and PostgreSQL mode.
//!
//! The lookup phase of the core phases covers 1,000 services; a cache whose
//! entries expire before they are asked for again shows only over more
//! services than that. Each mode gets a fresh server (and, in PostgreSQL
//! mode, a fresh database), the registrations are driven before the clock
//! starts, and the lookups go round robin over every service of every tenant
//! for `--duration-secs`.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::bench::console::progress;
use crate::bench::cpu::{CpuSample, CpuUsage};
use crate::bench::load::{Figures, OnError, Stop, drive};
use crate::bench::names::{TENANT_PREFIX, TENANTS};
use crate::bench::options::Options;
use crate::bench::pg::{PgAdmin, PgServer};
use crate::bench::phases::prepare::register_unmeasured_over;
use crate::bench::report::{Bound, cpu_line, median_cpu, median_figures, row, target};
use crate::bench::servers::Server;
use crate::bench::workload::Workload;

/// Services per tenant of the larger registry.
pub(crate) const SERVICES: usize = 100;
/// Instances of the larger registry: 10 per service, as in the core phases.
pub(crate) const INSTANCES: usize = 100_000;
/// Targets of issue 11 for PostgreSQL-mode lookups against embedded ones,
/// over each registry size.
pub(crate) const PG_LOOKUP_RPS_TARGET: f64 = 0.9;
pub(crate) const PG_LOOKUP_P99_TARGET: f64 = 1.2;

const EMBEDDED_ROW: &str = "lookup 10k";
const PG_ROW: &str = "pg lookup 10k";

/// The lookups over the larger registry of one run.
#[derive(Debug)]
pub(crate) struct LargeResult {
    pub(crate) embedded: Figures,
    /// `None` when the PostgreSQL mode does not run.
    pub(crate) pg: Option<(Figures, CpuUsage)>,
}

/// Both modes of one run: embedded first, then PostgreSQL if it runs.
pub(crate) async fn run(
    options: &Options,
    admin: Option<&PgAdmin>,
    binary: &Path,
    log_dir: &Path,
    run: usize,
) -> anyhow::Result<LargeResult> {
    let log_path = log_dir.join(format!("server-large-run{run}.log"));
    let mut server = Server::start(binary, &log_path, &options.log_level, &[])?;
    server.wait_ready("/health").await?;
    let embedded = lookups(options, &mut server, "")
        .await
        .with_context(|| format!("embedded (server log: {})", log_path.display()))?;
    drop(server);
    let pg = match admin {
        Some(admin) => {
            let log_path = log_dir.join(format!("server-pg-large-run{run}.log"));
            let mut pg = PgServer::start(options, admin, binary, &log_path, &[]).await?;
            let pid = pg.server.pid();
            let database = pg.scratch.database.clone();
            let context = || format!("PostgreSQL mode (server log: {})", log_path.display());
            register(options, &mut pg.server, "pg ")
                .await
                .with_context(context)?;
            let before = CpuSample::take(pid, &database)?;
            let figures = measure(options, &mut pg.server, "pg ")
                .await
                .with_context(context)?;
            let cpu = CpuSample::take(pid, &database)?.since(&before);
            Some((figures, cpu))
        }
        None => None,
    };
    Ok(LargeResult { embedded, pg })
}

/// Registration outside the measurement, then the measured lookups.
async fn lookups(options: &Options, server: &mut Server, mode: &str) -> anyhow::Result<Figures> {
    register(options, server, mode).await?;
    measure(options, server, mode).await
}

async fn register(options: &Options, server: &mut Server, mode: &str) -> anyhow::Result<()> {
    progress(&format!(
        "  {mode}large registry: registering {INSTANCES} instances over {} services (unmeasured)...",
        TENANTS * SERVICES
    ));
    register_unmeasured_over(options, server, TENANT_PREFIX, INSTANCES, SERVICES).await
}

/// Unmeasured lookups before the measured ones (see `measure`).
const WARM_UP: std::time::Duration = std::time::Duration::from_secs(3);

async fn measure(options: &Options, server: &mut Server, mode: &str) -> anyhow::Result<Figures> {
    progress(&format!(
        "  {mode}lookup over {} services...",
        TENANTS * SERVICES
    ));
    let workload = Arc::new(Workload::lookups_over(
        server.addr,
        TENANT_PREFIX,
        SERVICES,
    )?);
    // The same lookups for WARM_UP first, unmeasured, in both modes: the
    // figure is the steady state of a registry that is being read, not the
    // tail of the 100,000 registrations just made (whose change
    // notifications a PostgreSQL-mode replica is still working off when
    // they end).
    drive(
        server.addr,
        options.connections,
        workload.clone(),
        Stop::At(WARM_UP),
        OnError::Count,
    )
    .await
    .context("warming up the lookups over the larger registry")?;
    // Errors are counted, as in the PostgreSQL lookup phase: a store that
    // times out under load is a finding, not a broken bench.
    let figures = drive(
        server.addr,
        options.connections,
        workload,
        Stop::At(options.duration),
        OnError::Count,
    )
    .await
    .context("lookup phase over the larger registry")?;
    server.check_alive()?;
    Ok(figures)
}

/// The rows of one run, below the core phases.
pub(crate) fn run_rows(out: &mut String, result: &LargeResult) {
    row(
        out,
        EMBEDDED_ROW,
        result.embedded.requests,
        &result.embedded,
    );
    if let Some((pg, _)) = &result.pg {
        row(out, PG_ROW, pg.requests, pg);
    }
}

/// The lines of one run below its table.
pub(crate) fn run_lines(out: &mut String, result: &LargeResult) {
    if let Some((_, cpu)) = &result.pg {
        cpu_line(out, PG_ROW, cpu);
    }
}

/// The medians over the runs: the rows, and the figures the targets need.
pub(crate) fn summary_rows(
    out: &mut String,
    runs: &[&LargeResult],
) -> Option<(Figures, Option<Figures>)> {
    if runs.is_empty() {
        return None;
    }
    let embedded: Vec<&Figures> = runs.iter().map(|r| &r.embedded).collect();
    let (requests, embedded) = median_figures(&embedded);
    row(out, EMBEDDED_ROW, requests, &embedded);
    let pg_runs: Vec<&(Figures, CpuUsage)> = runs.iter().filter_map(|r| r.pg.as_ref()).collect();
    let pg = (!pg_runs.is_empty()).then(|| {
        let figures: Vec<&Figures> = pg_runs.iter().map(|(f, _)| f).collect();
        let (requests, pg) = median_figures(&figures);
        row(out, PG_ROW, requests, &pg);
        pg
    });
    Some((embedded, pg))
}

/// The CPU line of the medians.
pub(crate) fn summary_lines(out: &mut String, runs: &[&LargeResult]) {
    let cpu: Vec<&CpuUsage> = runs
        .iter()
        .filter_map(|r| r.pg.as_ref().map(|(_, cpu)| cpu))
        .collect();
    if !cpu.is_empty() {
        cpu_line(out, PG_ROW, &median_cpu(&cpu));
    }
}

/// The targets of PostgreSQL-mode lookups against embedded ones over one
/// registry size (`services`: "1k svc", "10k svc"), or why they were not
/// measured.
pub(crate) fn targets(out: &mut String, services: &str, medians: Result<(Figures, Figures), &str>) {
    match medians {
        Ok((embedded, pg)) => {
            target(
                out,
                &format!("pg/emb lookup rps {services}"),
                pg.rps / embedded.rps,
                Bound::AtLeast(PG_LOOKUP_RPS_TARGET),
            );
            target(
                out,
                &format!("pg/emb lookup p99 {services}"),
                pg.p99_ms / embedded.p99_ms,
                Bound::AtMost(PG_LOOKUP_P99_TARGET),
            );
        }
        Err(why) => {
            let _ = writeln!(out, "pg/emb lookup {services}: not measured ({why})");
        }
    }
}
