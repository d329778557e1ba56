//! `cargo xtask bench`: starts a release hub-server in embedded and in PostgreSQL mode and measures registration, lookup and `/health` over loopback.
//!
//! Each run starts a fresh server, then drives three closed-loop phases with
//! one keep-alive HTTP/1.1 connection per task: registration of distinct
//! instances, time-bound service lookups, and time-bound `GET /health`, which
//! is the ceiling of this machine (the same HTTP stack with no registry work).
//! Then, unless PostgreSQL is skipped or unreachable, the same run starts a
//! second server on a throwaway database and drives registration and lookups
//! against it, sampling the CPU time of the server, of every `postgres`
//! process and of the load generator, so that the report can say which of
//! them bounds the figures. Unless `--skip-events` is given or the brokers
//! are missing, each run also starts a PostgreSQL-mode server with NATS and
//! Kafka configured (see `bench_events`); the two PostgreSQL-mode servers
//! take turns at going first. Unless skipped, each run also measures
//! heartbeats in every mode (see `bench_heartbeats`; the PostgreSQL+Dragonfly
//! mode needs a Dragonfly, see `bench_dragonfly`) and the rate limiter's cost
//! (see `bench_limiter`) and the request metrics' cost (see
//! `bench_metrics`). The medians over the runs are compared with the
//! targets of the issue.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

use crate::bench_dragonfly;
use crate::bench_events::{self, EventsResult};
use crate::bench_fairness::{self, FairnessResult};
use crate::bench_heartbeats::{self, HeartbeatResult};
use crate::bench_limiter::{self, LimiterResult};
use crate::bench_metrics::{self, MetricsResult};

const USAGE: &str = "usage: cargo xtask bench [options]

options:
  --duration-secs N   length of the lookup and health phases (default 10)
  --runs N            fresh-server runs; the medians are reported (default 3)
  --connections N     concurrent keep-alive connections (default 64)
  --log-level LEVEL   RUST_LOG of the server (default info: the access log is measured)
  --pg-pool N         HUB_PG_POOL_SIZE of the PostgreSQL-mode server (default 16)
  --postgres          fail if PostgreSQL cannot be reached (default: skip its phases)
  --skip-postgres     measure the embedded mode only
  --skip-events       skip the event phases (PostgreSQL mode with NATS and Kafka)
  --skip-fairness     skip the fairness phase (PostgreSQL mode: one tenant floods, another is timed)
  --skip-heartbeats   skip the heartbeat phases (every mode: lease renewals of the registered instances)
  --skip-limiter      skip the rate limiter's cost (lookups with limits on and off, embedded and
                      PostgreSQL+Dragonfly)
  --skip-request-metrics  skip the request metrics' cost (embedded lookups with
                      HUB_REQUEST_METRICS on and off, two servers, alternating 1 s slices,
                      --duration-secs slices per side)
  --skip-dragonfly    leave out the PostgreSQL+Dragonfly mode of the heartbeat and limiter phases
  --event-secs N      length of the fixed-rate event latency phase (default 10)
  --event-rate N      registrations/s of the event latency phase (default 1000)
  --quick             smoke test: 2 s phases (heartbeats and limiter too), 1 run, 2000 registrations,
                      3 s event latency phase

environment:
  HUB_BENCH_PG_ADMIN  libpq key=value connection of a role that may create databases
                      and roles (default: host=127.0.0.1 port=5432 user=postgres dbname=postgres);
                      each run creates a database hub_bench_<hex> and a login hub_bench_<hex>_app
                      and drops both at its end
  HUB_BENCH_DRAGONFLY host:port of the Dragonfly (or Redis) of the PostgreSQL+Dragonfly mode
                      (default 127.0.0.1:6379); the mode is skipped, and the report says so, when
                      it does not answer PING
  HUB_BENCH_DRAGONFLY_DB  its database number (HUB_DRAGONFLY_DB of the server; default 0); each
                      run uses tenants of its own and deletes their keys (hub:{bench-<hex>-*) at
                      its end

event phases (PostgreSQL mode only): NATS on nats://127.0.0.1:4222 must answer (else they are
skipped, and the report says why); a Kafka-compatible broker on 127.0.0.1:9092 is used, or a
Tansu broker is started as for `cargo xtask test`. Each run uses its own subject prefix, JetStream
stream and Kafka topic, deleted at its end";

/// The operator key the server is started with; it may act for any tenant.
pub(crate) const API_KEY: &str = "bench-key-0123456789";
const TENANTS: usize = 100;
const SERVICES_PER_TENANT: usize = 10;
const REGISTRATIONS: usize = 10_000;
const QUICK_REGISTRATIONS: usize = 2_000;
/// The event latency phase: its length (normal and `--quick`) and its rate.
const EVENT_SECS: usize = 10;
const QUICK_EVENT_SECS: usize = 3;
const EVENT_RATE: usize = 1_000;
const READY_DEADLINE: Duration = Duration::from_secs(30);
const PG_ADMIN_ENV: &str = "HUB_BENCH_PG_ADMIN";
const PG_ADMIN_DEFAULT: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";
const PG_POOL_DEFAULT: usize = 16;
/// Longest the admin connection waits to connect, so that an unreachable
/// server is reported quickly instead of hanging the benchmark.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The store's default timeout of 5 s is meant for requests; the migrations
/// are DDL on a fresh database, which a loaded machine can make slower.
const PG_MIGRATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Linux reports process CPU time in clock ticks of `USER_HZ`, which the
/// kernel fixes at 100 for user space on every architecture it supports.
const USER_HZ: f64 = 100.0;
/// Above this share of all cores busy, the machine itself is the bound.
const SATURATED: f64 = 0.90;

/// Targets of the issue, as ratios of the medians.
const LOOKUP_THROUGHPUT_TARGET: f64 = 0.60;
const LOOKUP_P99_TARGET: f64 = 1.5;
const REGISTER_THROUGHPUT_TARGET: f64 = 0.30;
/// Targets of the PostgreSQL mode, in absolute figures.
const PG_REGISTER_TARGET: f64 = 4000.0;
const PG_LOOKUP_P99_TARGET_MS: f64 = 5.0;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(options) = Options::parse(args)? else {
        eprintln!("{USAGE}");
        return Ok(());
    };
    let root = crate::project_root()?;
    crate::run_step(
        "build",
        crate::cargo().args(["build", "--release", "-p", "hub-server"]),
    )?;
    // Cargo resolves a relative CARGO_TARGET_DIR against its working
    // directory, which `crate::cargo()` sets to the root; `join` keeps an
    // absolute one as it is.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    let binary = target.join("release").join("hub-server");
    if !binary.is_file() {
        bail!(
            "the build succeeded but {} does not exist",
            binary.display()
        );
    }
    let log_dir = target.join("bench");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;

    // Two workers: the load generator shares the machine's cores with the
    // server, and more threads than cores would only add context switches.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime of the load generator")?;
    runtime.block_on(bench(&options, &binary, &log_dir))
}

/// Command-line options after `--quick` and the explicit flags are applied.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) duration: Duration,
    runs: usize,
    pub(crate) connections: usize,
    pub(crate) registrations: usize,
    pub(crate) log_level: String,
    postgres: PgMode,
    pg_pool: usize,
    /// The libpq string of `HUB_BENCH_PG_ADMIN`, or the default.
    pg_admin: String,
    /// Whether the event phases run (not `--skip-events`).
    pub(crate) events: bool,
    /// Whether the fairness phase runs (not `--skip-fairness`).
    fairness: bool,
    /// Whether the heartbeat phases run (not `--skip-heartbeats`).
    pub(crate) heartbeats: bool,
    /// Whether the rate limiter's cost is measured (not `--skip-limiter`).
    pub(crate) limiter: bool,
    /// Whether the request metrics' cost is measured (not `--skip-request-metrics`).
    pub(crate) request_metrics: bool,
    /// Whether the PostgreSQL+Dragonfly mode may run (not `--skip-dragonfly`).
    pub(crate) dragonfly: bool,
    /// Length of the fixed-rate event latency phase.
    pub(crate) event_duration: Duration,
    /// Registrations per second of the event latency phase.
    pub(crate) event_rate: usize,
}

/// Whether the PostgreSQL phases run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgMode {
    /// Run them if PostgreSQL answers, and say so if it does not.
    Auto,
    /// Run them, and fail if PostgreSQL does not answer (`--postgres`).
    Require,
    /// Do not run them (`--skip-postgres`).
    Skip,
}

impl Options {
    /// `Ok(None)` means help was asked for.
    fn parse(args: &[String]) -> anyhow::Result<Option<Self>> {
        let mut quick = false;
        let mut duration_secs = None;
        let mut runs = None;
        let mut connections = None;
        let mut log_level = None;
        let mut pg_pool = None;
        let mut require_postgres = false;
        let mut skip_postgres = false;
        let mut skip_events = false;
        let mut skip_fairness = false;
        let mut skip_heartbeats = false;
        let mut skip_limiter = false;
        let mut skip_request_metrics = false;
        let mut skip_dragonfly = false;
        let mut event_secs = None;
        let mut event_rate = None;
        // Both `--flag value` and `--flag=value` are accepted.
        let mut flags = crate::args::Flags::new(args, USAGE);
        while let Some((flag, inline)) = flags.next_flag() {
            let mut value = || flags.value(flag, inline);
            match flag {
                "--duration-secs" => duration_secs = Some(positive(flag, &value()?)?),
                "--runs" => runs = Some(positive(flag, &value()?)?),
                "--connections" => connections = Some(positive(flag, &value()?)?),
                "--log-level" => log_level = Some(value()?),
                "--pg-pool" => pg_pool = Some(positive(flag, &value()?)?),
                "--postgres" => require_postgres = true,
                "--skip-postgres" => skip_postgres = true,
                "--skip-events" => skip_events = true,
                "--skip-fairness" => skip_fairness = true,
                "--skip-heartbeats" => skip_heartbeats = true,
                "--skip-limiter" => skip_limiter = true,
                "--skip-request-metrics" => skip_request_metrics = true,
                "--skip-dragonfly" => skip_dragonfly = true,
                "--event-secs" => event_secs = Some(positive(flag, &value()?)?),
                "--event-rate" => event_rate = Some(positive(flag, &value()?)?),
                "--quick" => quick = true,
                "--help" | "-h" => return Ok(None),
                other => bail!("unknown option {other:?}\n\n{USAGE}"),
            }
        }
        let postgres = match (require_postgres, skip_postgres) {
            (true, true) => bail!("--postgres and --skip-postgres contradict each other"),
            (true, false) => PgMode::Require,
            (false, true) => PgMode::Skip,
            (false, false) => PgMode::Auto,
        };
        let pg_admin = std::env::var(PG_ADMIN_ENV)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .unwrap_or_else(|| PG_ADMIN_DEFAULT.to_owned());
        let duration_secs = duration_secs.unwrap_or(if quick { 2 } else { 10 });
        let event_secs = event_secs.unwrap_or(if quick { QUICK_EVENT_SECS } else { EVENT_SECS });
        Ok(Some(Self {
            duration: Duration::from_secs(u64::try_from(duration_secs)?),
            runs: runs.unwrap_or(if quick { 1 } else { 3 }),
            connections: connections.unwrap_or(64),
            registrations: if quick {
                QUICK_REGISTRATIONS
            } else {
                REGISTRATIONS
            },
            log_level: log_level.unwrap_or_else(|| "info".to_owned()),
            postgres,
            pg_pool: pg_pool.unwrap_or(PG_POOL_DEFAULT),
            pg_admin,
            events: !skip_events,
            fairness: !skip_fairness,
            heartbeats: !skip_heartbeats,
            limiter: !skip_limiter,
            request_metrics: !skip_request_metrics,
            dragonfly: !skip_dragonfly,
            event_duration: Duration::from_secs(u64::try_from(event_secs)?),
            event_rate: event_rate.unwrap_or(EVENT_RATE),
        }))
    }
}

fn positive(flag: &str, value: &str) -> anyhow::Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{flag} must be a positive whole number (got {value:?})"),
    }
}

/// The phases of one run, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Register,
    Lookup,
    Health,
}

/// Where the health figures are in `Phase::ALL` order.
const HEALTH: usize = 2;

impl Phase {
    const ALL: [Self; 3] = [Self::Register, Self::Lookup, Self::Health];

    fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Lookup => "lookup",
            Self::Health => "health",
        }
    }
}

/// The figures of one phase of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// The figures of one run, in `Phase::ALL` order, the server's peak RSS, and
/// the PostgreSQL-mode figures when that mode ran, with and without events.
#[derive(Debug)]
struct RunResult {
    phases: [Figures; 3],
    peak_rss_kib: u64,
    pg: Option<PgResult>,
    events: Option<EventsResult>,
    fairness: Option<FairnessResult>,
    heartbeats: Option<HeartbeatResult>,
    limiter: Option<LimiterResult>,
    request_metrics: Option<MetricsResult>,
}

/// The figures of the PostgreSQL-mode server of one run.
#[derive(Debug)]
struct PgResult {
    register: Figures,
    lookup: Figures,
    /// Heartbeats of the registered instances, unless `--skip-heartbeats`.
    heartbeat: Option<Figures>,
    register_cpu: CpuUsage,
    lookup_cpu: CpuUsage,
    peak_rss_kib: u64,
}

async fn bench(options: &Options, binary: &Path, log_dir: &Path) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    // Other work on the machine (a compiler, say) skews every figure, so the
    // load average before the start is part of the record.
    report(&format!(
        "machine: nproc={cores}, 1-min load {} before start; the load generator (2 tokio workers) \
         and hub-server share these cores, so absolute figures understate a dedicated server\n\
         setup: {} connections, {} registrations over {TENANTS} tenants, {} s lookup and health phases, \
         {} run(s), server RUST_LOG={}\n",
        load_average(),
        options.connections,
        options.registrations,
        options.duration.as_secs(),
        options.runs,
        options.log_level,
    ));
    let admin = postgres_admin(options).await?;
    // Held to the end: a broker this bench started stops when it is dropped.
    let brokers = match &admin {
        Some(_) => bench_events::brokers(options).await,
        None => {
            if options.events {
                report("events: skipped (they need the PostgreSQL mode, which does not run)\n");
            }
            None
        }
    };
    let dragonfly = bench_dragonfly::endpoint(options, admin.is_some()).await;
    let mut runs = Vec::with_capacity(options.runs);
    for run in 1..=options.runs {
        let log_path = log_dir.join(format!("server-run{run}.log"));
        progress(&format!(
            "run {run}/{}: starting {} (log: {})",
            options.runs,
            binary.display(),
            log_path.display()
        ));
        let mut server = Server::start(binary, &log_path, &options.log_level, &[])?;
        server.wait_ready("/health").await?;
        let (phases, peak_rss_kib) = one_run(options, &mut server)
            .await
            .with_context(|| format!("run {run} (server log: {})", log_path.display()))?;
        // Heartbeats of the instances the registration phase left, after the
        // health ceiling of the same server.
        let embedded_heartbeat = if options.heartbeats {
            progress("  heartbeat...");
            let figures = bench_heartbeats::measure(options, &mut server, OnError::Fail)
                .await
                .with_context(|| format!("run {run} (server log: {})", log_path.display()))?;
            Some(figures)
        } else {
            None
        };
        drop(server);
        // The PostgreSQL-mode servers without and with events take turns at
        // going first, so that neither always inherits the other's leftovers
        // (checkpoints, autovacuum, a warm or cold cache).
        let events_first = run % 2 == 0;
        let mut pg = None;
        let mut events = None;
        if let Some(admin) = &admin {
            for with_events in [events_first, !events_first] {
                if with_events {
                    if brokers.is_some() {
                        let log_path = log_dir.join(format!("server-pg-events-run{run}.log"));
                        let result = bench_events::pg_events_run(options, admin, binary, &log_path)
                            .await
                            .with_context(|| {
                                format!(
                                    "run {run}, PostgreSQL mode with events (server log: {})",
                                    log_path.display()
                                )
                            })?;
                        events = Some(result);
                    }
                } else {
                    let log_path = log_dir.join(format!("server-pg-run{run}.log"));
                    let result = pg_run(options, admin, binary, &log_path)
                        .await
                        .with_context(|| {
                            format!(
                                "run {run}, PostgreSQL mode (server log: {})",
                                log_path.display()
                            )
                        })?;
                    pg = Some(result);
                }
            }
        }
        let fairness = match &admin {
            Some(admin) if options.fairness => {
                let log_path = log_dir.join(format!("server-pg-fairness-run{run}.log"));
                let result = bench_fairness::pg_fairness_run(options, admin, binary, &log_path)
                    .await
                    .with_context(|| {
                        format!("run {run}, fairness (server log: {})", log_path.display())
                    })?;
                Some(result)
            }
            _ => None,
        };
        let dragonfly_heartbeat = match (&admin, &dragonfly) {
            (Some(admin), Some(endpoint)) if options.heartbeats => {
                let log_path = log_dir.join(format!("server-pg-dragonfly-run{run}.log"));
                let result =
                    bench_heartbeats::pg_dragonfly_run(options, admin, endpoint, binary, &log_path)
                        .await
                        .with_context(|| {
                            format!(
                                "run {run}, PostgreSQL+Dragonfly heartbeats (server log: {})",
                                log_path.display()
                            )
                        })?;
                Some(result)
            }
            _ => None,
        };
        let heartbeats = embedded_heartbeat.map(|embedded| HeartbeatResult {
            embedded,
            pg: pg.as_ref().and_then(|pg| pg.heartbeat),
            dragonfly: dragonfly_heartbeat,
        });
        let limiter = if options.limiter {
            let result = bench_limiter::run(
                options,
                admin.as_ref().zip(dragonfly.as_ref()),
                binary,
                log_dir,
                run,
            )
            .await
            .with_context(|| format!("run {run}, rate limiter's cost"))?;
            Some(result)
        } else {
            None
        };
        let request_metrics = if options.request_metrics {
            let result = bench_metrics::run(options, binary, log_dir, run)
                .await
                .with_context(|| format!("run {run}, request metrics' cost"))?;
            Some(result)
        } else {
            None
        };
        let result = RunResult {
            phases,
            peak_rss_kib,
            pg,
            events,
            fairness,
            heartbeats,
            limiter,
            request_metrics,
        };
        report(&run_table(run, &result, options.pg_pool));
        runs.push(result);
    }
    report(&summary(&runs, options.pg_pool));
    drop(brokers);
    Ok(())
}

/// The 1-minute load average, or `?` where /proc does not say.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().next().unwrap_or("?").to_owned()
}

/// Decides whether the PostgreSQL phases run: `None` means they do not, and
/// the report says why.
async fn postgres_admin(options: &Options) -> anyhow::Result<Option<PgAdmin>> {
    if options.postgres == PgMode::Skip {
        report("postgres: skipped (--skip-postgres)\n");
        return Ok(None);
    }
    let admin = PgAdmin::parse(&options.pg_admin);
    let probed = match admin {
        Ok(admin) => admin.probe().await.map(|()| admin),
        Err(error) => Err(error),
    };
    match probed {
        Ok(admin) => {
            report(&format!(
                "postgres: {} as {} (admin), HUB_PG_POOL_SIZE={}; a throwaway database and login per run\n",
                admin.endpoint(),
                admin.user,
                options.pg_pool
            ));
            Ok(Some(admin))
        }
        Err(error) if options.postgres == PgMode::Auto => {
            report(&format!(
                "postgres: SKIPPED, the admin connection ({PG_ADMIN_ENV} or its default) failed: {error:#}; \
                 pass --postgres to make this an error\n"
            ));
            Ok(None)
        }
        Err(error) => Err(error.context("--postgres was given but PostgreSQL is not usable")),
    }
}

/// Registration, then lookups of what was registered, then the health ceiling
/// against the same server (so both time-bound phases see the same state).
/// Returns the figures in `Phase::ALL` order and the server's peak RSS.
async fn one_run(options: &Options, server: &mut Server) -> anyhow::Result<([Figures; 3], u64)> {
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
async fn measure(
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

/// Registers `options.registrations` instances of the tenants named
/// `{tenants}NNN`, as the registration phase does, but outside any
/// measurement: the set-up of a phase that measures something else.
pub(crate) async fn register_unmeasured(
    options: &Options,
    server: &mut Server,
    tenants: &str,
) -> anyhow::Result<()> {
    let addr = server.addr;
    let workload = Workload::registrations(addr, options.registrations, REGISTER_PREFIX, tenants)?;
    drive(
        addr,
        options.connections,
        Arc::new(workload),
        Stop::After(options.registrations),
        OnError::Fail,
    )
    .await
    .context("registering the instances (outside the measurement)")?;
    server.check_alive()?;
    verify_registrations(addr, options.registrations, tenants).await
}

/// The PostgreSQL mode of one run: a fresh database migrated as the admin, a
/// server connected as a fresh non-superuser login (as in production, where
/// row-level security must apply), then registration and lookups.
async fn pg_run(
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
        Some(bench_heartbeats::measure(options, &mut server, OnError::Count).await?)
    } else {
        None
    };

    let peak_rss_kib = server.peak_rss_kib()?;
    // The server first: the database goes away only once nothing uses it.
    drop(server);
    drop(scratch);
    Ok(PgResult {
        register,
        lookup,
        heartbeat,
        register_cpu,
        lookup_cpu,
        peak_rss_kib,
    })
}

/// A PostgreSQL-mode server on a fresh database migrated as the admin,
/// connected as a fresh non-superuser login (as in production, where
/// row-level security must apply).
#[derive(Debug)]
pub(crate) struct PgServer {
    /// Declared before the database, so that it is dropped (killed) first:
    /// the database goes away only once nothing uses it any more.
    pub(crate) server: Server,
    pub(crate) scratch: Scratch,
}

impl PgServer {
    /// `extra` comes on top of the store's variables (the event buses).
    pub(crate) async fn start(
        options: &Options,
        admin: &PgAdmin,
        binary: &Path,
        log_path: &Path,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let scratch = Scratch::create(admin).await?;
        progress(&format!(
            "  postgres: database {}, login {}; migrating (server log: {})",
            scratch.database,
            scratch.role,
            log_path.display()
        ));
        let as_admin = admin.pg_config(&scratch.database);
        hub_store::pg::migrate::run(&as_admin)
            .await
            .with_context(|| format!("applying the migrations to {}", scratch.database))?;
        hub_store::pg::migrate::grant_app_role(&as_admin, &scratch.role, Some(&scratch.password))
            .await
            .with_context(|| format!("creating the login {}", scratch.role))?;
        // One login for the server and its outbox relay, as `cargo xtask
        // migrate --app-user` sets it up.
        hub_store::pg::migrate::grant_relay_role(&as_admin, &scratch.role, None)
            .await
            .with_context(|| format!("granting the relay role to {}", scratch.role))?;
        let mut env = vec![
            ("POSTGRES_HOST", admin.host.clone()),
            ("POSTGRES_PORT", admin.port.to_string()),
            ("POSTGRES_DB", scratch.database.clone()),
            ("POSTGRES_USER", scratch.role.clone()),
            ("POSTGRES_PASSWORD", scratch.password.clone()),
            ("HUB_PG_POOL_SIZE", options.pg_pool.to_string()),
        ];
        env.extend(extra.iter().cloned());
        let mut server = Server::start(binary, log_path, &options.log_level, &env)?;
        server.wait_ready("/health/ready").await?;
        Ok(Self { server, scratch })
    }
}

/// How to reach PostgreSQL as a role that may create databases and roles.
#[derive(Debug)]
pub(crate) struct PgAdmin {
    config: tokio_postgres::Config,
    /// A TCP host name or a Unix socket folder; the server gets the same.
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
}

impl PgAdmin {
    fn parse(libpq: &str) -> anyhow::Result<Self> {
        let mut config: tokio_postgres::Config = libpq
            .parse()
            .with_context(|| format!("{PG_ADMIN_ENV} is not a libpq key=value string"))?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(folder)) => folder.display().to_string(),
            None => bail!("{PG_ADMIN_ENV} names no host="),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let password = config
            .get_password()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
        if config.get_user().is_none() {
            config.user(&user);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(PG_CONNECT_TIMEOUT);
        }
        config.application_name("hub-bench");
        Ok(Self {
            config,
            host,
            port,
            user,
            password,
        })
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Connects and asks for nothing, to learn whether the phases can run.
    async fn probe(&self) -> anyhow::Result<()> {
        let client = admin_client(&self.config).await?;
        client
            .simple_query("SELECT 1")
            .await
            .context("querying PostgreSQL")?;
        Ok(())
    }

    /// The store's configuration for the admin in `database`, used to migrate
    /// it and to create the server's login.
    fn pg_config(&self, database: &str) -> hub_store::PgConfig {
        let mut config = hub_store::PgConfig::new(self.host.clone());
        config.port = self.port;
        config.dbname = database.to_owned();
        config.user.clone_from(&self.user);
        config.password.clone_from(&self.password);
        config.pool_size = 1;
        config.statement_timeout = PG_MIGRATE_TIMEOUT;
        config
    }
}

async fn admin_client(config: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    // The connection's own error also fails the next query, which reports it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A throwaway database and login, both dropped when this is dropped, on the
/// error paths too.
#[derive(Debug)]
pub(crate) struct Scratch {
    admin: tokio_postgres::Config,
    pub(crate) database: String,
    role: String,
    /// The login gets a random password so that the bench also works where
    /// the server does not trust loopback connections.
    password: String,
}

impl Scratch {
    async fn create(admin: &PgAdmin) -> anyhow::Result<Self> {
        let id = random_hex(6)?;
        // Built before anything is created, so that a failure of the CREATE
        // itself still runs the (IF EXISTS) cleanup.
        let scratch = Self {
            admin: admin.config.clone(),
            database: format!("hub_bench_{id}"),
            role: format!("hub_bench_{id}_app"),
            password: random_hex(16)?,
        };
        let client = admin_client(&scratch.admin).await?;
        // The name is made of letters, digits and '_' only, and identifiers
        // cannot be bind parameters.
        client
            .batch_execute(&format!("CREATE DATABASE \"{}\"", scratch.database))
            .await
            .with_context(|| format!("creating the database {}", scratch.database))?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Drop cannot await, and the calling thread belongs to the load
        // generator's runtime, which cannot be blocked on from inside; a
        // short-lived thread with a runtime of its own does the cleanup.
        let admin = self.admin.clone();
        let statements = [
            format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database),
            format!("DROP ROLE IF EXISTS \"{}\"", self.role),
        ];
        let outcome = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a runtime for the cleanup")?;
            runtime.block_on(async {
                let client = admin_client(&admin).await?;
                for statement in &statements {
                    client
                        .batch_execute(statement)
                        .await
                        .with_context(|| statement.clone())?;
                }
                Ok(())
            })
        })
        .join();
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(error)) => format!("{error:#}"),
            Err(_) => "the cleanup thread panicked".to_owned(),
        };
        progress(&format!(
            "warning: could not drop the database {} and the role {} ({error}); drop them by hand",
            self.database, self.role
        ));
    }
}

pub(crate) fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0_u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut buffer))
        .context("reading /dev/urandom")?;
    Ok(buffer.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    }))
}

/// CPU time consumed during a phase, in seconds, and how busy the whole
/// machine was (0 to 1 over all cores).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuUsage {
    wall_s: f64,
    server_s: f64,
    postgres_s: f64,
    /// The part of `postgres_s` spent by backends connected to the bench's
    /// database; the rest is the cluster's own processes and other users.
    postgres_bench_s: f64,
    /// The event brokers (`nats-server`, `tansu`), whoever uses them.
    brokers_s: f64,
    generator_s: f64,
    machine_busy: f64,
}

impl CpuUsage {
    /// Percent of one core.
    fn percent(&self, seconds: f64) -> f64 {
        if self.wall_s > 0.0 {
            seconds / self.wall_s * 100.0
        } else {
            f64::NAN
        }
    }
}

/// CPU counters at one instant, in clock ticks.
#[derive(Debug)]
pub(crate) struct CpuSample {
    at: Instant,
    server: u64,
    /// Every process whose comm is `postgres`: ticks, and whether it is a
    /// backend of the bench's database.
    postgres: HashMap<u32, (u64, bool)>,
    /// Every process whose comm is one of `BROKERS`: ticks.
    brokers: HashMap<u32, u64>,
    generator: u64,
    machine_total: u64,
    machine_idle: u64,
}

impl CpuSample {
    pub(crate) fn take(server_pid: u32, database: &str) -> anyhow::Result<Self> {
        let server =
            process_ticks(&server_pid.to_string()).context("reading the CPU time of hub-server")?;
        let generator = process_ticks("self").context("reading the CPU time of the bench")?;
        let (machine_total, machine_idle) = machine_ticks()?;
        let (postgres, brokers) = other_ticks(database);
        Ok(Self {
            at: Instant::now(),
            server,
            postgres,
            brokers,
            generator,
            machine_total,
            machine_idle,
        })
    }

    pub(crate) fn since(&self, before: &Self) -> CpuUsage {
        let seconds = |ticks: u64| ticks as f64 / USER_HZ;
        // Per process, so that a backend that exits during the phase only
        // loses its own share instead of making the sum go down; one that
        // starts during the phase counts whole.
        let (mut postgres, mut bench) = (0, 0);
        for (pid, (ticks, ours)) in &self.postgres {
            let start = before.postgres.get(pid).map_or(0, |(ticks, _)| *ticks);
            let spent = ticks.saturating_sub(start);
            postgres += spent;
            if *ours {
                bench += spent;
            }
        }
        let brokers: u64 = self
            .brokers
            .iter()
            .map(|(pid, ticks)| ticks.saturating_sub(before.brokers.get(pid).copied().unwrap_or(0)))
            .sum();
        let total = self.machine_total.saturating_sub(before.machine_total);
        let idle = self.machine_idle.saturating_sub(before.machine_idle);
        CpuUsage {
            wall_s: self.at.duration_since(before.at).as_secs_f64(),
            server_s: seconds(self.server.saturating_sub(before.server)),
            postgres_s: seconds(postgres),
            postgres_bench_s: seconds(bench),
            brokers_s: seconds(brokers),
            generator_s: seconds(self.generator.saturating_sub(before.generator)),
            machine_busy: if total > 0 {
                1.0 - idle as f64 / total as f64
            } else {
                f64::NAN
            },
        }
    }
}

/// utime + stime of `/proc/<pid>/stat`.
fn process_ticks(pid: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name in parentheses may hold spaces, so the fields are
    // counted from the last ')': state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index - 3)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("field {index} of {path} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// The command names (`comm`) of the event brokers whose CPU time is counted.
const BROKERS: [&str; 2] = ["nats-server", "tansu"];

/// The ticks of every `postgres` process and of every event broker this user
/// can see. Processes come and go while /proc is read, so one that cannot be
/// read is left out.
fn other_ticks(database: &str) -> (HashMap<u32, (u64, bool)>, HashMap<u32, u64>) {
    let mut found = HashMap::new();
    let mut brokers = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (found, brokers);
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let comm = comm.trim_end();
        let is_broker = BROKERS.contains(&comm);
        if comm != "postgres" && !is_broker {
            continue;
        }
        let Ok(ticks) = process_ticks(&pid.to_string()) else {
            continue;
        };
        if is_broker {
            brokers.insert(pid, ticks);
            continue;
        }
        // A backend's title is "postgres: <cluster>: <user> <database> ...".
        let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            String::from_utf8_lossy(&cmdline)
                .split(|c: char| c.is_whitespace() || c == '\0')
                .any(|word| word == database)
        });
        found.insert(pid, (ticks, ours));
    }
    (found, brokers)
}

/// All and idle (idle + iowait) ticks of the machine, from `/proc/stat`.
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("/proc/stat does not start with the cpu line")?
        .split_whitespace()
        .filter_map(|value| value.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal; guest time is already
    // part of user, so the later columns are not added again.
    let total = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((total, idle))
}

/// A hub-server child process, killed when dropped so that no error path
/// leaves it running.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: SocketAddr,
    log_path: PathBuf,
}

impl Server {
    /// `env` comes on top of what every mode gets; it selects the store.
    pub(crate) fn start(
        binary: &Path,
        log_path: &Path,
        log_level: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let log =
            File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        // A cleared environment keeps the developer's variables out of the
        // measurement; in particular a POSTGRES_HOST of the developer would
        // turn the embedded run into a PostgreSQL one. The log goes to a file
        // so that a terminal cannot become the bottleneck.
        let child = Command::new(binary)
            .env_clear()
            .env("HUB_BIND", addr.to_string())
            .env("CENTRAL_HUB_API_KEYS", API_KEY)
            .env("RUST_LOG", log_level)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            addr,
            log_path: log_path.to_owned(),
        })
    }

    /// Polls `GET path` until it answers 200, the process exits, or the
    /// deadline passes.
    pub(crate) async fn wait_ready(&mut self, path: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            self.check_alive()?;
            let last_error = match get_status(self.addr, path).await {
                Ok(200) => return Ok(()),
                Ok(status) => format!("status {status}"),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "hub-server on {} was not ready after {READY_DEADLINE:?} (last: {last_error}); see {}",
                    self.addr,
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the server has exited, which would make every later figure
    /// meaningless.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("checking on hub-server")? {
            bail!(
                "hub-server exited unexpectedly ({status}); see {}",
                self.log_path.display()
            );
        }
        Ok(())
    }

    /// `VmHWM` of the server: the peak resident set size since it started.
    pub(crate) fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = read_proc_status(self.child.id())?;
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .context("no VmHWM line in /proc/<pid>/status")?;
        let kib = line.trim().trim_end_matches("kB").trim();
        kib.parse()
            .with_context(|| format!("VmHWM is not a number of kB: {line:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The benchmark is over for this server, so there is nothing in flight
        // worth a graceful shutdown; errors mean it has already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_proc_status(pid: u32) -> anyhow::Result<String> {
    let path = format!("/proc/{pid}/status");
    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
}

/// A port nobody listens on right now. The listener is dropped before the
/// server binds, which leaves a small window for a race that loopback
/// benchmarks can live with.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a free port")?;
    listener.local_addr().context("reading the free port")
}

/// One request from a fresh connection; only for readiness and checks.
async fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let (status, _) = get_once(addr, path, None).await?;
    Ok(status)
}

pub(crate) async fn get_once(
    addr: SocketAddr,
    path: &str,
    tenant: Option<&str>,
) -> anyhow::Result<(u16, Bytes)> {
    let mut sender = connect(addr).await?;
    let mut request = Request::get(path).header(HOST, addr.to_string());
    if let Some(tenant) = tenant {
        request = request
            .header("x-api-key", API_KEY)
            .header("x-tenant-id", tenant);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::new()))?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// After the registration phase, the first and the last tenant must list
/// every instance of a service, or the lookup phase would measure 404s or
/// short answers.
pub(crate) async fn verify_registrations(
    addr: SocketAddr,
    registrations: usize,
    tenants: &str,
) -> anyhow::Result<()> {
    let expected = registrations / (TENANTS * SERVICES_PER_TENANT);
    for tenant in [0, TENANTS - 1] {
        let tenant = tenant_name(tenants, tenant);
        let path = format!("/api/v1/discovery/services/{}", service_name(0));
        let (status, body) = get_once(addr, &path, Some(&tenant)).await?;
        if status != 200 {
            bail!("GET {path} for {tenant} answered {status} after registration");
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).context("lookup answer is not JSON")?;
        let found = json
            .get("instances")
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len);
        if found != expected {
            bail!("GET {path} for {tenant} lists {found} instances, expected {expected}");
        }
    }
    Ok(())
}

pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    // Requests are small and sent one at a time; Nagle would only add delay.
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    // A connection error also fails the next `send_request`, which is where
    // it is counted, so the driver's own result adds nothing.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The tenants of the phases that get a server of their own state (a fresh
/// process or database) are `bench-t000` to `bench-t099`.
pub(crate) const TENANT_PREFIX: &str = "bench-t";

/// Tenant `index` of the tenants named `{prefix}000`, `{prefix}001`, ...
fn tenant_name(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:03}")
}

/// A tenant prefix of its own, `bench-<hex>-t`, for phases whose state
/// outlives the server (Dragonfly's keys): repeated runs then never meet each
/// other's keys, and the keys of one run can be found (and deleted) by it.
pub(crate) fn fresh_tenant_prefix() -> anyhow::Result<String> {
    Ok(format!("bench-{}-t", random_hex(4)?))
}

fn service_name(index: usize) -> String {
    format!("svc-{index:03}")
}

/// The instances of the registration phases are `i-00000`, `i-00001`, ...
pub(crate) const REGISTER_PREFIX: &str = "i";

/// The id of registration `index` of a phase whose instances start with
/// `prefix`; the event phases find an event's registration by it.
pub(crate) fn instance_id(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:05}")
}

/// Everything a phase sends, built before the clock starts so that the load
/// generator spends its share of the cores on sending, not formatting.
#[derive(Debug)]
pub(crate) struct Workload {
    method: Method,
    host: HeaderValue,
    /// Request `i` uses `targets[i % targets.len()]`.
    targets: Vec<Target>,
}

#[derive(Debug)]
struct Target {
    uri: Uri,
    tenant: Option<HeaderValue>,
    body: Bytes,
}

impl Workload {
    pub(crate) fn new(phase: Phase, options: &Options, addr: SocketAddr) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&addr.to_string())?;
        let (method, targets) = match phase {
            Phase::Register => {
                return Self::registrations(
                    addr,
                    options.registrations,
                    REGISTER_PREFIX,
                    TENANT_PREFIX,
                );
            }
            Phase::Lookup => return Self::lookups(addr, TENANT_PREFIX),
            Phase::Health => {
                let target = Target {
                    uri: Uri::from_static("/health"),
                    tenant: None,
                    body: Bytes::new(),
                };
                (Method::GET, vec![target])
            }
        };
        Ok(Self {
            method,
            host,
            targets,
        })
    }

    /// Lookups of every service of every tenant named `{tenants}NNN`, round
    /// robin over tenants first, then services.
    pub(crate) fn lookups(addr: SocketAddr, tenants: &str) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&addr.to_string())?;
        let targets = (0..TENANTS * SERVICES_PER_TENANT)
            .map(|i| {
                let path = format!("/api/v1/discovery/services/{}", service_name(i / TENANTS));
                Ok(Target {
                    uri: Uri::try_from(path)?,
                    tenant: Some(HeaderValue::from_str(&tenant_name(tenants, i % TENANTS))?),
                    body: Bytes::new(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            method: Method::GET,
            host,
            targets,
        })
    }

    /// Where registration `i` of [`Workload::registrations`] goes: its
    /// tenant, service and instance number within the service.
    fn placement(i: usize) -> (usize, usize, usize) {
        let tenant = i % TENANTS;
        let rest = i / TENANTS;
        (
            tenant,
            rest % SERVICES_PER_TENANT,
            rest / SERVICES_PER_TENANT,
        )
    }

    /// `count` registrations of distinct instances, instance `i` named
    /// `{prefix}-{i:05}`, of the tenants named `{tenants}NNN`. Instance `i`
    /// goes to tenant `i % 100`, then service, then instance number, so every
    /// tenant gets 10 services with an equal share of instances each.
    pub(crate) fn registrations(
        addr: SocketAddr,
        count: usize,
        prefix: &str,
        tenants: &str,
    ) -> anyhow::Result<Self> {
        Self::per_instance(
            addr,
            "/api/v1/discovery/register",
            count,
            tenants,
            |i, (tenant, service, instance)| {
                // TTL is the maximum so no lease expires, and no instance
                // turns critical, while the run is going.
                serde_json::json!({
                    "service_name": service_name(service),
                    "instance_id": instance_id(prefix, i),
                    "host": format!("10.{tenant}.{service}.{instance}"),
                    "port": 8080,
                    "tags": ["bench"],
                    "metadata": { "zone": "a" },
                    "ttl_seconds": 3600,
                })
            },
        )
    }

    /// A heartbeat for each of the `count` instances of
    /// [`Workload::registrations`] with the same `prefix` and `tenants`, in
    /// the same order (round robin over the tenants), without a status or
    /// metrics: a plain lease renewal.
    pub(crate) fn heartbeats(
        addr: SocketAddr,
        count: usize,
        prefix: &str,
        tenants: &str,
    ) -> anyhow::Result<Self> {
        Self::per_instance(
            addr,
            "/api/v1/discovery/heartbeat",
            count,
            tenants,
            |i, (_, service, _)| {
                serde_json::json!({
                    "service_name": service_name(service),
                    "instance_id": instance_id(prefix, i),
                })
            },
        )
    }

    /// One POST to `path` per instance `i < count`, as the tenant of its
    /// [`Workload::placement`], with the body `body(i, placement)`.
    fn per_instance(
        addr: SocketAddr,
        path: &'static str,
        count: usize,
        tenants: &str,
        body: impl Fn(usize, (usize, usize, usize)) -> serde_json::Value,
    ) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&addr.to_string())?;
        let uri = Uri::from_static(path);
        let targets = (0..count)
            .map(|i| {
                let placement = Self::placement(i);
                Ok(Target {
                    uri: uri.clone(),
                    tenant: Some(HeaderValue::from_str(&tenant_name(tenants, placement.0))?),
                    body: Bytes::from(body(i, placement).to_string()),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            method: Method::POST,
            host,
            targets,
        })
    }

    pub(crate) fn request(&self, index: usize) -> anyhow::Result<Request<Full<Bytes>>> {
        let target = self
            .targets
            .get(index % self.targets.len().max(1))
            .context("a workload without requests")?;
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(target.uri.clone())
            .header(HOST, self.host.clone());
        if let Some(tenant) = &target.tenant {
            request = request
                .header("x-api-key", HeaderValue::from_static(API_KEY))
                .header("x-tenant-id", tenant.clone());
        }
        if !target.body.is_empty() {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Ok(request.body(Full::new(target.body.clone()))?)
    }
}

/// What a failed request does to a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnError {
    /// The phase fails.
    Fail,
    /// The phase goes on; the error answers are counted and the first one is
    /// shown. A lost connection still fails it: that is a server going away,
    /// not a slow store.
    Count,
}

/// When a phase ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// After this many requests in total (registration).
    After(usize),
    /// When this much time has passed since the start (lookup, health).
    At(Duration),
}

/// What one connection's task measured.
#[derive(Debug)]
struct TaskResult {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    /// Why the connection was lost, if it was (which ended this task).
    lost: Option<String>,
}

/// Runs one closed-loop phase: `connections` tasks, each with its own
/// keep-alive connection and one request in flight at a time.
pub(crate) async fn drive(
    addr: SocketAddr,
    connections: usize,
    workload: Arc<Workload>,
    stop: Stop,
    on_error: OnError,
) -> anyhow::Result<Figures> {
    // Connections are opened before the clock starts: the figures are about
    // requests, not TCP handshakes.
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = match stop {
        Stop::At(duration) => Some(started + duration),
        Stop::After(_) => None,
    };
    let limit = match stop {
        Stop::After(count) => count,
        Stop::At(_) => usize::MAX,
    };
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            let workload = Arc::clone(&workload);
            let next = Arc::clone(&next);
            tokio::spawn(connection_loop(sender, workload, next, limit, deadline))
        })
        .collect();
    let mut histogram = new_histogram()?;
    let mut errors = 0;
    let mut first_error = None;
    let mut lost = None;
    for task in tasks {
        let result = task.await.context("a load generator task panicked")??;
        histogram
            .add(&result.histogram)
            .context("merging latency histograms")?;
        errors += result.errors;
        first_error = first_error.or(result.first_error);
        lost = lost.or(result.lost);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = histogram.len();
    if let Some(lost) = lost {
        bail!("{errors} of {requests} requests failed, and a connection was lost: {lost}");
    }
    if let Some(first) = first_error {
        if on_error == OnError::Fail {
            bail!("{errors} of {requests} requests failed; the first: {first}");
        }
        progress(&format!(
            "  warning: {errors} of {requests} requests failed; the first: {first}"
        ));
    }
    if requests == 0 {
        bail!("no request completed");
    }
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(Figures {
        requests,
        errors,
        rps: requests as f64 / elapsed,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
    })
}

pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds from 1 µs to 60 s with three significant figures, which
    // resolves every latency to 0.1 %.
    Histogram::new_with_bounds(1, 60_000_000, 3).context("creating a latency histogram")
}

/// One connection's closed loop. Every request counts in the histogram,
/// errors included, so `requests` is what the server was asked to do.
async fn connection_loop(
    mut sender: SendRequest<Full<Bytes>>,
    workload: Arc<Workload>,
    next: Arc<AtomicUsize>,
    limit: usize,
    deadline: Option<Instant>,
) -> anyhow::Result<TaskResult> {
    let mut result = TaskResult {
        histogram: new_histogram()?,
        errors: 0,
        first_error: None,
        lost: None,
    };
    loop {
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= limit {
            break;
        }
        let request = workload.request(index)?;
        let sent = Instant::now();
        let outcome = send(&mut sender, request).await;
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        result.histogram.saturating_record(micros.max(1));
        match outcome {
            Ok(()) => {}
            Err(error) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
                // A transport error leaves the connection unusable, and it
                // fails the phase, so this task stops here.
                if error.downcast_ref::<hyper::Error>().is_some() {
                    result.lost = Some(format!("{error:#}"));
                    break;
                }
            }
        }
    }
    Ok(result)
}

/// Sends one request and reads the whole answer; non-2xx is an error.
pub(crate) async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<()> {
    let method = request.method().clone();
    let uri = request.uri().clone();
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "{method} {uri} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

const HEADER: &str = "phase          requests        rps   p50 ms   p99 ms   errors";

pub(crate) fn row(out: &mut String, name: &str, requests: u64, figures: &Figures) {
    let _ = writeln!(
        out,
        "{name:<12} {requests:>10} {:>10.1} {:>8.3} {:>8.3} {:>8}",
        figures.rps, figures.p50_ms, figures.p99_ms, figures.errors
    );
}

/// Where the CPU time of a PostgreSQL phase went, and what that says about
/// the bound.
pub(crate) fn cpu_line(out: &mut String, name: &str, cpu: &CpuUsage) {
    let _ = writeln!(
        out,
        "{name} CPU (% of one core): hub-server {:.0}, postgres {:.0} (bench backends {:.0}), \
         brokers {:.0}, load generator {:.0}; machine {:.0}% busy over all cores -> {}",
        cpu.percent(cpu.server_s),
        cpu.percent(cpu.postgres_s),
        cpu.percent(cpu.postgres_bench_s),
        cpu.percent(cpu.brokers_s),
        cpu.percent(cpu.generator_s),
        cpu.machine_busy * 100.0,
        bound(cpu),
    );
}

/// The bench's reading of the CPU figures: with the cores saturated, the
/// biggest consumer is the bound; otherwise it is waiting (round trips,
/// locks, WAL flushes), which CPU time cannot show.
fn bound(cpu: &CpuUsage) -> String {
    if cpu.machine_busy.is_nan() {
        return "bound unknown".to_owned();
    }
    if cpu.machine_busy < SATURATED {
        return "cores not saturated: bound by waiting (round trips, locks, WAL flushes), not CPU"
            .to_owned();
    }
    let shares = [
        ("hub-server", cpu.server_s),
        ("postgres", cpu.postgres_s),
        ("the brokers (nats-server, tansu)", cpu.brokers_s),
        ("the load generator", cpu.generator_s),
    ];
    let biggest = shares
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or("?", |(name, _)| name);
    format!("cores saturated: CPU-bound, biggest consumer {biggest}")
}

fn run_table(run: usize, result: &RunResult, pg_pool: usize) -> String {
    let mut out = format!(
        "\nrun {run} (1-min load {} at its end)\n{HEADER}\n",
        load_average()
    );
    for (phase, figures) in Phase::ALL.iter().zip(&result.phases) {
        row(&mut out, phase.name(), figures.requests, figures);
    }
    if let Some(pg) = &result.pg {
        row(&mut out, "pg register", pg.register.requests, &pg.register);
        row(&mut out, "pg lookup", pg.lookup.requests, &pg.lookup);
    }
    if let Some(events) = &result.events {
        row(
            &mut out,
            bench_events::REGISTER_ROW,
            events.register.requests,
            &events.register,
        );
    }
    let _ = writeln!(out, "peak RSS: {:.1} MiB", mib(result.peak_rss_kib));
    if let Some(pg) = &result.pg {
        let _ = writeln!(
            out,
            "pg peak RSS: {:.1} MiB; HUB_PG_POOL_SIZE={pg_pool}",
            mib(pg.peak_rss_kib)
        );
        cpu_line(&mut out, "pg register", &pg.register_cpu);
        cpu_line(&mut out, "pg lookup", &pg.lookup_cpu);
    }
    if let Some(events) = &result.events {
        bench_events::run_lines(&mut out, events);
    }
    if let Some(fairness) = &result.fairness {
        bench_fairness::run_lines(&mut out, fairness);
    }
    if let Some(heartbeats) = &result.heartbeats {
        bench_heartbeats::run_lines(&mut out, heartbeats, &result.phases[HEALTH]);
    }
    if let Some(limiter) = &result.limiter {
        bench_limiter::run_lines(&mut out, limiter);
    }
    if let Some(metrics) = &result.request_metrics {
        bench_metrics::run_lines(&mut out, metrics);
    }
    out
}

/// The median of each figure separately, and the errors and requests summed.
pub(crate) fn median_figures(all: &[&Figures]) -> (u64, Figures) {
    let of = |f: fn(&Figures) -> f64| median(all.iter().map(|figures| f(figures)).collect());
    let figures = Figures {
        requests: 0,
        errors: all.iter().map(|figures| figures.errors).sum(),
        rps: of(|f| f.rps),
        p50_ms: of(|f| f.p50_ms),
        p99_ms: of(|f| f.p99_ms),
    };
    (all.iter().map(|figures| figures.requests).sum(), figures)
}

pub(crate) fn median_cpu(all: &[&CpuUsage]) -> CpuUsage {
    let of = |f: fn(&CpuUsage) -> f64| median(all.iter().map(|cpu| f(cpu)).collect());
    // Every share is a median of its own, over the same wall time of one
    // second, so that `percent` reads them back unchanged.
    CpuUsage {
        wall_s: 1.0,
        server_s: of(|c| c.server_s / c.wall_s),
        postgres_s: of(|c| c.postgres_s / c.wall_s),
        postgres_bench_s: of(|c| c.postgres_bench_s / c.wall_s),
        brokers_s: of(|c| c.brokers_s / c.wall_s),
        generator_s: of(|c| c.generator_s / c.wall_s),
        machine_busy: of(|c| c.machine_busy),
    }
}

fn summary(runs: &[RunResult], pg_pool: usize) -> String {
    let mut out = format!(
        "\nmedians of {} run(s) (each figure separately; 1-min load {} at the end)\n{HEADER}\n",
        runs.len(),
        load_average()
    );
    let mut medians = Vec::new();
    for (i, phase) in Phase::ALL.iter().enumerate() {
        let all: Vec<&Figures> = runs.iter().map(|r| &r.phases[i]).collect();
        let (requests, figures) = median_figures(&all);
        row(&mut out, phase.name(), requests, &figures);
        medians.push((*phase, figures));
    }
    let pg_runs: Vec<&PgResult> = runs.iter().filter_map(|r| r.pg.as_ref()).collect();
    // Either every run measured PostgreSQL or none did: a failed one fails
    // the bench.
    let pg = (!pg_runs.is_empty()).then(|| {
        let register: Vec<&Figures> = pg_runs.iter().map(|pg| &pg.register).collect();
        let lookup: Vec<&Figures> = pg_runs.iter().map(|pg| &pg.lookup).collect();
        let (requests, register) = median_figures(&register);
        row(&mut out, "pg register", requests, &register);
        let (requests, lookup) = median_figures(&lookup);
        row(&mut out, "pg lookup", requests, &lookup);
        (register, lookup)
    });
    let events_runs: Vec<&EventsResult> = runs.iter().filter_map(|r| r.events.as_ref()).collect();
    let events_register = (!events_runs.is_empty()).then(|| {
        let register: Vec<&Figures> = events_runs.iter().map(|e| &e.register).collect();
        let (requests, register) = median_figures(&register);
        row(&mut out, bench_events::REGISTER_ROW, requests, &register);
        register
    });
    let peak = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "peak RSS: {:.1} MiB (max over runs; requests column is the total of all runs)",
        mib(peak)
    );
    if pg.is_some() {
        let peak = pg_runs.iter().map(|pg| pg.peak_rss_kib).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "pg peak RSS: {:.1} MiB; HUB_PG_POOL_SIZE={pg_pool}",
            mib(peak)
        );
        let register: Vec<&CpuUsage> = pg_runs.iter().map(|pg| &pg.register_cpu).collect();
        cpu_line(&mut out, "pg register", &median_cpu(&register));
        let lookup: Vec<&CpuUsage> = pg_runs.iter().map(|pg| &pg.lookup_cpu).collect();
        cpu_line(&mut out, "pg lookup", &median_cpu(&lookup));
    }
    if events_register.is_some() {
        bench_events::summary_lines(&mut out, &events_runs);
    }
    out.push('\n');
    let get = |wanted: Phase| {
        medians
            .iter()
            .find(|(phase, _)| *phase == wanted)
            .map(|(_, figures)| *figures)
    };
    if let (Some(register), Some(lookup), Some(health)) =
        (get(Phase::Register), get(Phase::Lookup), get(Phase::Health))
    {
        target(
            &mut out,
            "lookup/health throughput",
            lookup.rps / health.rps,
            Bound::AtLeast(LOOKUP_THROUGHPUT_TARGET),
        );
        target(
            &mut out,
            "lookup/health p99",
            lookup.p99_ms / health.p99_ms,
            Bound::AtMost(LOOKUP_P99_TARGET),
        );
        target(
            &mut out,
            "register/health throughput",
            register.rps / health.rps,
            Bound::AtLeast(REGISTER_THROUGHPUT_TARGET),
        );
    }
    match pg {
        Some((register, lookup)) => {
            target(
                &mut out,
                "pg register/s",
                register.rps,
                Bound::AtLeast(PG_REGISTER_TARGET),
            );
            target(
                &mut out,
                "pg lookup p99 ms",
                lookup.p99_ms,
                Bound::Below(PG_LOOKUP_P99_TARGET_MS),
            );
        }
        None => {
            let _ = writeln!(
                out,
                "pg register/s, pg lookup p99 ms: not measured (PostgreSQL skipped)"
            );
        }
    }
    bench_events::targets(
        &mut out,
        pg.map(|(register, _)| register),
        events_register,
        &events_runs,
    );
    let fairness: Vec<&FairnessResult> = runs.iter().filter_map(|r| r.fairness.as_ref()).collect();
    bench_fairness::summary_lines(&mut out, &fairness);
    let heartbeats: Vec<&HeartbeatResult> =
        runs.iter().filter_map(|r| r.heartbeats.as_ref()).collect();
    if let Some(health) = get(Phase::Health) {
        bench_heartbeats::summary_lines(&mut out, &heartbeats, &health);
    }
    let limiter: Vec<&LimiterResult> = runs.iter().filter_map(|r| r.limiter.as_ref()).collect();
    bench_limiter::summary_lines(&mut out, &limiter);
    let request_metrics: Vec<&MetricsResult> = runs
        .iter()
        .filter_map(|r| r.request_metrics.as_ref())
        .collect();
    bench_metrics::summary_lines(&mut out, &request_metrics);
    out
}

/// A target of the issue, stated as a bound on a ratio or an absolute figure.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bound {
    AtLeast(f64),
    AtMost(f64),
    Below(f64),
}

pub(crate) fn target(out: &mut String, name: &str, value: f64, bound: Bound) {
    let (pass, relation, bound) = match bound {
        Bound::AtLeast(b) => (value >= b, ">=", b),
        Bound::AtMost(b) => (value <= b, "<=", b),
        Bound::Below(b) => (value < b, "<", b),
    };
    let verdict = if pass { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "{name:<27} {value:.2} (target {relation} {bound:.2}) {verdict}"
    );
}

/// The results: the only output on stdout, so it can be redirected to a file.
#[allow(clippy::print_stdout)]
pub(crate) fn report(text: &str) {
    print!("{text}");
}

/// Progress notes go to stderr, next to cargo's own output.
pub(crate) fn progress(text: &str) {
    eprintln!("{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(workload: &Workload, i: usize) -> (String, serde_json::Value) {
        let target = &workload.targets[i];
        let tenant = target.tenant.as_ref().unwrap().to_str().unwrap().to_owned();
        (tenant, serde_json::from_slice(&target.body).unwrap())
    }

    /// Heartbeat `i` renews the instance registration `i` created (same
    /// tenant, service and instance id), so the heartbeat phase never meets
    /// a 404, and it carries no status (a plain renewal).
    #[test]
    fn heartbeats_name_the_registered_instances() {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let count = 2000;
        let tenants = "bench-0a1b2c3d-t";
        let registrations = Workload::registrations(addr, count, REGISTER_PREFIX, tenants).unwrap();
        let heartbeats = Workload::heartbeats(addr, count, REGISTER_PREFIX, tenants).unwrap();
        assert_eq!(heartbeats.method, Method::POST);
        assert_eq!(heartbeats.targets.len(), count);
        let mut seen = std::collections::HashSet::new();
        for i in [0, 1, 99, 100, 999, 1000, 1999] {
            let (reg_tenant, registration) = body(&registrations, i);
            let (hb_tenant, heartbeat) = body(&heartbeats, i);
            assert_eq!(hb_tenant, reg_tenant);
            assert!(hb_tenant.starts_with(tenants));
            assert_eq!(heartbeat["service_name"], registration["service_name"]);
            assert_eq!(heartbeat["instance_id"], registration["instance_id"]);
            assert!(heartbeat.get("status").is_none());
            assert_eq!(
                heartbeats.targets[i].uri.path(),
                "/api/v1/discovery/heartbeat"
            );
            seen.insert(heartbeat["instance_id"].to_string());
        }
        assert_eq!(seen.len(), 7, "heartbeats of distinct instances");
        // Round robin over the 100 tenants.
        assert_ne!(body(&heartbeats, 0).0, body(&heartbeats, 1).0);
        assert_eq!(body(&heartbeats, 0).0, body(&heartbeats, 100).0);
    }
}
