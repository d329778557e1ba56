//! The core phases: registration, lookup and health against one server, and the same registration and lookups in PostgreSQL mode.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::bench::console::progress;
use crate::bench::cpu::{CpuSample, CpuUsage};
use crate::bench::load::{Figures, OnError, Stop, drive};
use crate::bench::names::TENANT_PREFIX;
use crate::bench::options::Options;
use crate::bench::pg::{PgAdmin, PgServer};
use crate::bench::phases::heartbeats;
use crate::bench::phases::prepare::verify_registrations;
use crate::bench::servers::Server;
use crate::bench::workload::{Phase, Workload};

/// The figures of the PostgreSQL-mode server of one run.
#[derive(Debug)]
pub(crate) struct PgResult {
    pub(crate) register: Figures,
    pub(crate) lookup: Figures,
    /// Heartbeats of the registered instances, unless `--skip-heartbeats`.
    pub(crate) heartbeat: Option<Figures>,
    pub(crate) register_cpu: CpuUsage,
    pub(crate) lookup_cpu: CpuUsage,
    pub(crate) peak_rss_kib: u64,
    /// The same registrations on a second fresh server with group commit
    /// off (`HUB_PG_WRITERS=0`: one transaction per registration), the
    /// figure group commit is measured against in the same run.
    pub(crate) register_alone: Figures,
    pub(crate) register_alone_cpu: CpuUsage,
}

/// The row name of registrations with group commit off.
pub(crate) const REGISTER_ALONE_ROW: &str = "pg reg 1/tx";

/// Registration, then lookups of what was registered, then the health ceiling
/// against the same server (so both time-bound phases see the same state).
/// Returns the figures in `Phase::ALL` order and the server's peak RSS.
pub(crate) async fn one_run(
    options: &Options,
    server: &mut Server,
) -> anyhow::Result<([Figures; 3], u64)> {
    let mut phases = Vec::with_capacity(Phase::ALL.len());
    let mut peak_rss_kib = 0;
    for phase in Phase::ALL {
        progress(&format!("  {}...", phase.name()));
        let figures = measure(options, server, phase, OnError::Fail).await?;
        peak_rss_kib = peak_rss_kib.max(server.peak_rss_kib()?);
        phases.push(figures);
    }
    let phases = <[Figures; 3]>::try_from(phases)
        .map_err(|_| anyhow::anyhow!("expected one set of figures per phase"))?;
    Ok((phases, peak_rss_kib))
}

/// Drives one phase against `server`, checks that the server survived it, and
/// after registration that every instance can be found.
pub(crate) async fn measure(
    options: &Options,
    server: &mut Server,
    phase: Phase,
    on_error: OnError,
) -> anyhow::Result<Figures> {
    let workload = Workload::new(phase, options, server.addr)?;
    let stop = match phase {
        Phase::Register => Stop::After(options.registrations),
        Phase::Lookup | Phase::Health => Stop::At(options.duration),
    };
    let figures = drive(
        server.addr,
        options.connections,
        Arc::new(workload),
        stop,
        on_error,
    )
    .await
    .with_context(|| format!("{} phase", phase.name()))?;
    server.check_alive()?;
    if phase == Phase::Register {
        verify_registrations(server.addr, options.registrations, TENANT_PREFIX).await?;
    }
    Ok(figures)
}

/// The PostgreSQL mode of one run: a fresh database migrated as the admin, a
/// server connected as a fresh non-superuser login (as in production, where
/// row-level security must apply), then registration and lookups.
pub(crate) async fn pg_run(
    options: &Options,
    admin: &PgAdmin,
    binary: &Path,
    log_path: &Path,
) -> anyhow::Result<PgResult> {
    let PgServer {
        mut server,
        scratch,
    } = PgServer::start(options, admin, binary, log_path, &[]).await?;
    let pid = server.pid();

    progress("  pg register...");
    let before = CpuSample::take(pid, &scratch.database)?;
    let register = measure(options, &mut server, Phase::Register, OnError::Fail).await?;
    let register_cpu = CpuSample::take(pid, &scratch.database)?.since(&before);

    // Errors are counted rather than fatal here: a store that times out under
    // load is a finding to report next to the latency, not a broken bench.
    progress("  pg lookup...");
    let before = CpuSample::take(pid, &scratch.database)?;
    let lookup = measure(options, &mut server, Phase::Lookup, OnError::Count).await?;
    let lookup_cpu = CpuSample::take(pid, &scratch.database)?.since(&before);

    // Every heartbeat is a PostgreSQL transaction in this mode (no Dragonfly):
    // the figure the README sets beside the Dragonfly one.
    let heartbeat = if options.heartbeats {
        progress("  pg heartbeat...");
        Some(heartbeats::measure(options, &mut server, OnError::Count).await?)
    } else {
        None
    };

    let peak_rss_kib = server.peak_rss_kib()?;
    // The server first: the database goes away only once nothing uses it.
    drop(server);
    drop(scratch);

    progress("  pg register, one transaction per registration (HUB_PG_WRITERS=0)...");
    let alone_log = log_path.with_extension("alone.log");
    let PgServer {
        mut server,
        scratch,
    } = PgServer::start(
        options,
        admin,
        binary,
        &alone_log,
        &[("HUB_PG_WRITERS", "0".to_owned())],
    )
    .await?;
    let pid = server.pid();
    let before = CpuSample::take(pid, &scratch.database)?;
    let register_alone = measure(options, &mut server, Phase::Register, OnError::Fail).await?;
    let register_alone_cpu = CpuSample::take(pid, &scratch.database)?.since(&before);
    drop(server);
    drop(scratch);
    Ok(PgResult {
        register_alone,
        register_alone_cpu,
        register,
        lookup,
        heartbeat,
        register_cpu,
        lookup_cpu,
        peak_rss_kib,
    })
}
