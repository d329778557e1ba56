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
//! Kafka configured (`phases::events`); the two PostgreSQL-mode servers take
//! turns at going first. Unless skipped, each run also measures lookups over
//! a larger registry (`phases::large`), heartbeats in every mode
//! (`phases::heartbeats`; the PostgreSQL+Dragonfly mode needs a Dragonfly,
//! see `dragonfly`), the rate limiter's cost (`phases::limiter`), the
//! request metrics' cost (`phases::metrics`), watch streams' delivery
//! latency (`phases::watch`) and, in PostgreSQL mode, what
//! authentication costs (`phases::auth`: env key, database key, JWTs); with
//! `--peers`, etcd and r-nacos are measured with the same load generator
//! (`peers`). The medians
//! over the runs are compared with the targets of the issues (`summary`).
//!
//! The modules form layers, each using only the ones below it: `console`,
//! `names`, `options` and `cpu` at the bottom; `workload` and `load` (the
//! load generator) above them; `servers`, `pg` and `dragonfly` (the processes
//! and backends); `report` (rows, CPU lines, medians, target lines); then
//! `phases` and `peers`; `summary` (the tables) and this module on top.

mod console;
mod cpu;
mod dragonfly;
mod load;
mod names;
mod options;
mod peers;
mod pg;
mod phases;
mod report;
mod servers;
mod summary;
mod workload;

use std::path::Path;

use anyhow::{Context, bail};

use crate::bench::console::{load_average, progress, report};
use crate::bench::load::OnError;
use crate::bench::names::TENANTS;
use crate::bench::options::{Options, USAGE};
use crate::bench::pg::postgres_admin;
use crate::bench::phases::core::{one_run, pg_run};
use crate::bench::phases::heartbeats::{self, HeartbeatResult};
use crate::bench::phases::{auth, events, fairness, large, limiter, metrics, watch};
use crate::bench::servers::Server;
use crate::bench::summary::{RunResult, run_table, summary};

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
        Some(_) => events::brokers(options).await,
        None => {
            if options.events {
                report("events: skipped (they need the PostgreSQL mode, which does not run)\n");
            }
            None
        }
    };
    let dragonfly = dragonfly::endpoint(options, admin.is_some()).await;
    let peers = peers::find(options);
    if !options.large_registry {
        report("large registry: skipped (--skip-large-registry)\n");
    }
    let mut runs = Vec::with_capacity(options.runs);
    let mut watches = Vec::with_capacity(options.runs);
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
            let figures = heartbeats::measure(options, &mut server, OnError::Fail)
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
                        let result = events::pg_events_run(options, admin, binary, &log_path)
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
        let large = if options.large_registry {
            let result = large::run(options, admin.as_ref(), binary, log_dir, run)
                .await
                .with_context(|| format!("run {run}, lookups over the larger registry"))?;
            Some(result)
        } else {
            None
        };
        let peers = match &peers {
            Some(peers) => {
                let result = peers::run(options, peers, log_dir, run)
                    .await
                    .with_context(|| format!("run {run}, peers"))?;
                Some(result)
            }
            None => None,
        };
        let fairness = match &admin {
            Some(admin) if options.fairness => {
                let log_path = log_dir.join(format!("server-pg-fairness-run{run}.log"));
                let result = fairness::pg_fairness_run(options, admin, binary, &log_path)
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
                    heartbeats::pg_dragonfly_run(options, admin, endpoint, binary, &log_path)
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
            let result = limiter::run(
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
            let result = metrics::run(options, binary, log_dir, run)
                .await
                .with_context(|| format!("run {run}, request metrics' cost"))?;
            Some(result)
        } else {
            None
        };
        let auth = match &admin {
            Some(admin) if options.auth => {
                let result = auth::pg_auth_run(options, admin, binary, log_dir, run)
                    .await
                    .with_context(|| format!("run {run}, auth checks' cost"))?;
                Some(result)
            }
            _ => None,
        };
        if options.watch {
            let result = watch::run(options, admin.as_ref(), binary, log_dir, run)
                .await
                .with_context(|| format!("run {run}, watch phase"))?;
            watches.push(result);
        }
        let result = RunResult {
            phases,
            peak_rss_kib,
            pg,
            events,
            fairness,
            heartbeats,
            limiter,
            request_metrics,
            auth,
            large,
            peers,
        };
        report(&run_table(run, &result, options.pg_pool));
        runs.push(result);
    }
    report(&summary(&runs, options.pg_pool));
    if options.watch {
        report(&watch::summary_lines(&watches));
    }
    drop(brokers);
    Ok(())
}
