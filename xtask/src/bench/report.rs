//! The building blocks of the report: table rows, CPU lines, medians and target lines.

use std::fmt::Write as _;

use crate::bench::cpu::CpuUsage;
use crate::bench::load::Figures;

/// Above this share of all cores busy, the machine itself is the bound.
pub(crate) const SATURATED: f64 = 0.90;

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

pub(crate) const HEADER: &str = "phase            requests        rps   p50 ms   p99 ms   errors";

pub(crate) fn row(out: &mut String, name: &str, requests: u64, figures: &Figures) {
    let _ = writeln!(
        out,
        "{name:<14} {requests:>10} {:>10.1} {:>8.3} {:>8.3} {:>8}",
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
pub(crate) fn bound(cpu: &CpuUsage) -> String {
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

/// CPU time of every PostgreSQL process (the cluster's own included) per
/// 1,000 registrations, the median over the runs: what a registration costs
/// the database, comparable across write paths. The bench backends' share is
/// in brackets.
pub(crate) fn pg_cpu_per_registration_line(
    out: &mut String,
    name: &str,
    runs: &[(&CpuUsage, &Figures)],
) {
    let per_1k = |seconds: f64, requests: u64| seconds * 1000.0 / (requests as f64 / 1000.0);
    let all = median(
        runs.iter()
            .map(|(cpu, figures)| per_1k(cpu.postgres_s, figures.requests))
            .collect(),
    );
    let bench = median(
        runs.iter()
            .map(|(cpu, figures)| per_1k(cpu.postgres_bench_s, figures.requests))
            .collect(),
    );
    let _ = writeln!(
        out,
        "{name} postgres CPU-ms per 1,000 registrations: {all:.0} (bench backends {bench:.0})"
    );
}
