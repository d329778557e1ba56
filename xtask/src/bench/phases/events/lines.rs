//! The event phases' lines of the report: per run, the medians over the runs, and their targets.

use std::fmt::Write as _;

use super::listener::{Drain, ListenerCounts, SINKS, drain_text};
use super::paced::LATE;
use super::run::{EventsResult, REGISTER_ROW, SinkLatency};
use crate::bench::cpu::CpuUsage;
use crate::bench::load::Figures;
use crate::bench::report::{Bound, cpu_line, median, median_cpu, mib, target};
/// Targets of the issue.
pub(super) const EVENTS_THROUGHPUT_TARGET: f64 = 0.85;
pub(super) const NATS_P99_TARGET_MS: f64 = 100.0;
pub(super) fn ms_text(ms: f64) -> String {
    if ms.is_finite() {
        format!("{ms:.2}")
    } else {
        "inf".to_owned()
    }
}

pub(super) fn latency_line(out: &mut String, sink: &str, latency: &SinkLatency) {
    let _ = writeln!(
        out,
        "  {sink:<5} ack->event ms: p50 {}, p99 {}, max {}; p50 first/last fifth {}/{}; \
         missing {}, before the ack {}",
        ms_text(latency.p50_ms),
        ms_text(latency.p99_ms),
        ms_text(latency.max_ms),
        ms_text(latency.first_p50_ms),
        ms_text(latency.last_p50_ms),
        latency.missing,
        latency.before_ack,
    );
}

pub(super) fn listener_line(out: &mut String, listeners: &[ListenerCounts; 2]) {
    let parts: Vec<String> = SINKS
        .iter()
        .zip(listeners)
        .map(|(sink, counts)| {
            let mut part = format!(
                "{sink} {} messages, {} duplicate(s), {} of other types, {} unreadable, {} error(s)",
                counts.messages, counts.duplicates, counts.unexpected, counts.unreadable, counts.errors
            );
            if let Some(error) = &counts.last_error {
                let _ = write!(part, " (last: {error})");
            }
            part
        })
        .collect();
    let _ = writeln!(out, "events seen: {}", parts.join("; "));
}

/// The lines of one run below its table.
pub(crate) fn run_lines(out: &mut String, events: &EventsResult) {
    let _ = writeln!(
        out,
        "pg+events peak RSS: {:.1} MiB",
        mib(events.peak_rss_kib)
    );
    cpu_line(out, REGISTER_ROW, &events.register_cpu);
    let _ = writeln!(
        out,
        "events of {REGISTER_ROW}: {}",
        drain_text(&events.drains)
    );
    let latency = &events.latency;
    let _ = writeln!(
        out,
        "events at {}/s: {} sent ({} more than {} ms late, max lag {:.1} ms), {} acked, {} errors; \
         HTTP from schedule p50 {:.2} ms, p99 {:.2} ms",
        latency.rate,
        latency.sent,
        latency.late,
        LATE.as_millis(),
        latency.max_lag_ms,
        latency.acked,
        latency.errors,
        latency.http_p50_ms,
        latency.http_p99_ms,
    );
    if let Some(error) = &latency.first_error {
        let _ = writeln!(out, "  first error: {error}");
    }
    for (sink, figures) in SINKS.iter().zip(&latency.sinks) {
        latency_line(out, sink, figures);
    }
    cpu_line(out, &format!("events at {}/s", latency.rate), &latency.cpu);
    listener_line(out, &events.listeners);
}

/// The medians over the runs, below the summary table.
pub(crate) fn summary_lines(out: &mut String, runs: &[&EventsResult]) {
    let Some(rate) = runs.first().map(|e| e.latency.rate) else {
        return;
    };
    let peak = runs.iter().map(|e| e.peak_rss_kib).max().unwrap_or(0);
    let _ = writeln!(out, "pg+events peak RSS: {:.1} MiB", mib(peak));
    let register: Vec<&CpuUsage> = runs.iter().map(|e| &e.register_cpu).collect();
    cpu_line(out, REGISTER_ROW, &median_cpu(&register));
    let drains: Vec<String> = (0..2)
        .map(|sink| {
            let all: Vec<&Drain> = runs.iter().map(|e| &e.drains[sink]).collect();
            let delivered: usize = all.iter().map(|d| d.delivered).sum();
            let expected: usize = all.iter().map(|d| d.expected).sum();
            let complete: Vec<f64> = all.iter().filter_map(|d| d.drain_ms).collect();
            let drain = if complete.len() == all.len() {
                format!("median drain {:.0} ms after the last ack", median(complete))
            } else {
                format!(
                    "{} of {} runs INCOMPLETE",
                    all.len() - complete.len(),
                    all.len()
                )
            };
            format!("{} {delivered}/{expected} ({drain})", SINKS[sink])
        })
        .collect();
    let _ = writeln!(out, "events of {REGISTER_ROW}: {}", drains.join(", "));
    let late: usize = runs.iter().map(|e| e.latency.late).sum();
    let sent: usize = runs.iter().map(|e| e.latency.sent).sum();
    let errors: u64 = runs.iter().map(|e| e.latency.errors).sum();
    let http_p99 = median(runs.iter().map(|e| e.latency.http_p99_ms).collect());
    let _ = writeln!(
        out,
        "events at {rate}/s: {sent} sent in all, {late} more than {} ms late, {errors} errors; \
         HTTP from schedule median p99 {http_p99:.2} ms",
        LATE.as_millis()
    );
    for (sink, name) in SINKS.iter().enumerate() {
        let all: Vec<&SinkLatency> = runs.iter().map(|e| &e.latency.sinks[sink]).collect();
        let of = |f: fn(&SinkLatency) -> f64| median(all.iter().map(|l| f(l)).collect());
        let figures = SinkLatency {
            p50_ms: of(|l| l.p50_ms),
            p99_ms: of(|l| l.p99_ms),
            max_ms: all.iter().map(|l| l.max_ms).fold(0.0, f64::max),
            first_p50_ms: of(|l| l.first_p50_ms),
            last_p50_ms: of(|l| l.last_p50_ms),
            missing: all.iter().map(|l| l.missing).sum(),
            before_ack: all.iter().map(|l| l.before_ack).sum(),
        };
        latency_line(out, name, &figures);
    }
    let cpu: Vec<&CpuUsage> = runs.iter().map(|e| &e.latency.cpu).collect();
    cpu_line(out, &format!("events at {rate}/s"), &median_cpu(&cpu));
    let _ = writeln!(
        out,
        "(medians of p50 and p99, max of max, missing summed over runs)"
    );
}

/// The target lines of the event phases.
pub(crate) fn targets(
    out: &mut String,
    pg_register: Option<Figures>,
    events_register: Option<Figures>,
    runs: &[&EventsResult],
) {
    let (Some(without), Some(with), Some(first)) = (pg_register, events_register, runs.first())
    else {
        let _ = writeln!(
            out,
            "pg register events/none, nats p99 ms: not measured (events skipped)"
        );
        return;
    };
    target(
        out,
        "pg register events/none",
        with.rps / without.rps,
        Bound::AtLeast(EVENTS_THROUGHPUT_TARGET),
    );
    let p99 = median(runs.iter().map(|e| e.latency.sinks[0].p99_ms).collect());
    target(
        out,
        &format!("nats p99 ms @{}/s", first.latency.rate),
        p99,
        Bound::Below(NATS_P99_TARGET_MS),
    );
}
