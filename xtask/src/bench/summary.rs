//! The tables of the report: one per run, then the medians over the runs with the targets of the issues.

use std::fmt::Write as _;

use crate::bench::console::load_average;
use crate::bench::cpu::CpuUsage;
use crate::bench::load::Figures;
use crate::bench::peers::{self, PeersResult};
use crate::bench::phases::auth::{self, AuthResult};
use crate::bench::phases::core::PgResult;
use crate::bench::phases::core::REGISTER_ALONE_ROW;
use crate::bench::phases::events::{self, EventsResult};
use crate::bench::phases::fairness::{self, FairnessResult};
use crate::bench::phases::heartbeats::{self, HeartbeatResult};
use crate::bench::phases::large::{self, LargeResult};
use crate::bench::phases::limiter::{self, LimiterResult};
use crate::bench::phases::metrics::{self, MetricsResult};
use crate::bench::report::{
    Bound, HEADER, cpu_line, median_cpu, median_figures, mib, pg_cpu_per_registration_line, row,
    target,
};
use crate::bench::workload::{HEALTH, Phase};

/// Targets of the issue, as ratios of the medians.
pub(crate) const LOOKUP_THROUGHPUT_TARGET: f64 = 0.60;
pub(crate) const LOOKUP_P99_TARGET: f64 = 1.5;
pub(crate) const REGISTER_THROUGHPUT_TARGET: f64 = 0.30;
/// Targets of the PostgreSQL mode, in absolute figures.
pub(crate) const PG_REGISTER_TARGET: f64 = 4000.0;
/// Issue 11: registrations with group commit against one transaction each.
pub(crate) const GROUP_COMMIT_TARGET: f64 = 2.5;
pub(crate) const PG_LOOKUP_P99_TARGET_MS: f64 = 5.0;

/// The figures of one run, in `Phase::ALL` order, the server's peak RSS, and
/// the PostgreSQL-mode figures when that mode ran, with and without events.
#[derive(Debug)]
pub(crate) struct RunResult {
    pub(crate) phases: [Figures; 3],
    pub(crate) peak_rss_kib: u64,
    pub(crate) pg: Option<PgResult>,
    pub(crate) events: Option<EventsResult>,
    pub(crate) fairness: Option<FairnessResult>,
    pub(crate) heartbeats: Option<HeartbeatResult>,
    pub(crate) limiter: Option<LimiterResult>,
    pub(crate) request_metrics: Option<MetricsResult>,
    /// The auth checks' cost (PostgreSQL mode), unless `--skip-auth`.
    pub(crate) auth: Option<AuthResult>,
    /// The lookups over 10,000 services, unless `--skip-large-registry`.
    pub(crate) large: Option<LargeResult>,
    /// The peers, with `--peers`.
    pub(crate) peers: Option<PeersResult>,
}

pub(crate) fn run_table(run: usize, result: &RunResult, pg_pool: usize) -> String {
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
        row(
            &mut out,
            REGISTER_ALONE_ROW,
            pg.register_alone.requests,
            &pg.register_alone,
        );
    }
    if let Some(events) = &result.events {
        row(
            &mut out,
            events::REGISTER_ROW,
            events.register.requests,
            &events.register,
        );
    }
    if let Some(large) = &result.large {
        large::run_rows(&mut out, large);
    }
    if let Some(peers) = &result.peers {
        peers::run_rows(&mut out, peers);
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
        pg_cpu_per_registration_line(&mut out, "pg register", &[(&pg.register_cpu, &pg.register)]);
        pg_cpu_per_registration_line(
            &mut out,
            REGISTER_ALONE_ROW,
            &[(&pg.register_alone_cpu, &pg.register_alone)],
        );
    }
    if let Some(events) = &result.events {
        events::run_lines(&mut out, events);
        pg_cpu_per_registration_line(
            &mut out,
            events::REGISTER_ROW,
            &[(&events.register_cpu, &events.register)],
        );
    }
    if let Some(large) = &result.large {
        large::run_lines(&mut out, large);
    }
    if let Some(peers) = &result.peers {
        peers::cpu_lines(&mut out, &[peers]);
    }
    if let Some(fairness) = &result.fairness {
        fairness::run_lines(&mut out, fairness);
    }
    if let Some(heartbeats) = &result.heartbeats {
        heartbeats::run_lines(&mut out, heartbeats, &result.phases[HEALTH]);
    }
    if let Some(limiter) = &result.limiter {
        limiter::run_lines(&mut out, limiter);
    }
    if let Some(metrics) = &result.request_metrics {
        metrics::run_lines(&mut out, metrics);
    }
    if let Some(result) = &result.auth {
        auth::run_lines(&mut out, result);
    }
    out
}

pub(crate) fn summary(runs: &[RunResult], pg_pool: usize) -> String {
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
        let alone: Vec<&Figures> = pg_runs.iter().map(|pg| &pg.register_alone).collect();
        let (requests, alone) = median_figures(&alone);
        row(&mut out, REGISTER_ALONE_ROW, requests, &alone);
        (register, lookup, alone)
    });
    let events_runs: Vec<&EventsResult> = runs.iter().filter_map(|r| r.events.as_ref()).collect();
    let events_register = (!events_runs.is_empty()).then(|| {
        let register: Vec<&Figures> = events_runs.iter().map(|e| &e.register).collect();
        let (requests, register) = median_figures(&register);
        row(&mut out, events::REGISTER_ROW, requests, &register);
        register
    });
    let large_runs: Vec<&LargeResult> = runs.iter().filter_map(|r| r.large.as_ref()).collect();
    let large = large::summary_rows(&mut out, &large_runs);
    let peer_runs: Vec<&PeersResult> = runs.iter().filter_map(|r| r.peers.as_ref()).collect();
    let peer_medians = peers::summary_rows(&mut out, &peer_runs);
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
        let register: Vec<_> = pg_runs
            .iter()
            .map(|pg| (&pg.register_cpu, &pg.register))
            .collect();
        pg_cpu_per_registration_line(&mut out, "pg register", &register);
        let alone: Vec<_> = pg_runs
            .iter()
            .map(|pg| (&pg.register_alone_cpu, &pg.register_alone))
            .collect();
        pg_cpu_per_registration_line(&mut out, REGISTER_ALONE_ROW, &alone);
    }
    if events_register.is_some() {
        events::summary_lines(&mut out, &events_runs);
        let register: Vec<_> = events_runs
            .iter()
            .map(|e| (&e.register_cpu, &e.register))
            .collect();
        pg_cpu_per_registration_line(&mut out, events::REGISTER_ROW, &register);
    }
    large::summary_lines(&mut out, &large_runs);
    peers::cpu_lines(&mut out, &peer_runs);
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
        Some((register, lookup, alone)) => {
            target(
                &mut out,
                "pg register/s",
                register.rps,
                Bound::AtLeast(PG_REGISTER_TARGET),
            );
            // Issue 11: group commit at least 2.5x one transaction per
            // registration, as a floor.
            target(
                &mut out,
                "pg register grouped/1 per tx",
                register.rps / alone.rps,
                Bound::AtLeast(GROUP_COMMIT_TARGET),
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
                "pg register/s, pg register grouped/1 per tx, pg lookup p99 ms: not measured (PostgreSQL skipped)"
            );
        }
    }
    events::targets(
        &mut out,
        pg.map(|(register, _, _)| register),
        events_register,
        &events_runs,
    );
    let pg_lookup = pg.map(|(_, lookup, _)| lookup);
    large::targets(
        &mut out,
        "1k svc",
        match (get(Phase::Lookup), pg_lookup) {
            (Some(embedded), Some(pg)) => Ok((embedded, pg)),
            _ => Err("PostgreSQL skipped"),
        },
    );
    large::targets(
        &mut out,
        "10k svc",
        match large {
            Some((embedded, Some(pg))) => Ok((embedded, pg)),
            Some((_, None)) => Err("PostgreSQL skipped"),
            None => Err("--skip-large-registry"),
        },
    );
    let ours = [
        ("pg register", pg.map(|(register, _, _)| register), true),
        (events::REGISTER_ROW, events_register, true),
        ("register", get(Phase::Register), true),
        ("pg lookup", pg_lookup, false),
        ("lookup", get(Phase::Lookup), false),
    ];
    peers::side_by_side(
        &mut out,
        &ours,
        &peer_medians,
        pg.map(|(register, _, _)| register),
    );
    let fairness: Vec<&FairnessResult> = runs.iter().filter_map(|r| r.fairness.as_ref()).collect();
    fairness::summary_lines(&mut out, &fairness);
    let heartbeats: Vec<&HeartbeatResult> =
        runs.iter().filter_map(|r| r.heartbeats.as_ref()).collect();
    if let Some(health) = get(Phase::Health) {
        heartbeats::summary_lines(&mut out, &heartbeats, &health);
    }
    let limiter: Vec<&LimiterResult> = runs.iter().filter_map(|r| r.limiter.as_ref()).collect();
    limiter::summary_lines(&mut out, &limiter);
    let request_metrics: Vec<&MetricsResult> = runs
        .iter()
        .filter_map(|r| r.request_metrics.as_ref())
        .collect();
    metrics::summary_lines(&mut out, &request_metrics);
    let auth: Vec<&AuthResult> = runs.iter().filter_map(|r| r.auth.as_ref()).collect();
    auth::summary_lines(&mut out, &auth);
    out
}
