//! Infrastructure monitor: the `Probe` port each backend adapter implements, the per-backend state the monitor loop keeps (pure, no I/O) and the rules of the dashboard's overall status.
//!
//! The loop itself (an interval, a timeout per probe, the clock) lives in
//! hub-server; the probes in hub-store (PostgreSQL, Dragonfly) and hub-bus
//! (NATS, Kafka). This module only judges what they report, so every rule
//! here is tested without a backend.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::summary::StatusCounts;
use crate::error::{RegistryError, error_chain};

/// A backend the hub can be configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// PostgreSQL, the source of truth when configured.
    Postgres,
    /// Dragonfly (leases and shared rate limits).
    Dragonfly,
    /// NATS (events, replicas following each other).
    Nats,
    /// Kafka (events).
    Kafka,
}

impl Backend {
    /// Every backend, in the order the dashboard lists them.
    pub const ALL: [Backend; 4] = [
        Backend::Postgres,
        Backend::Dragonfly,
        Backend::Nats,
        Backend::Kafka,
    ];

    /// The name used on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Dragonfly => "dragonfly",
            Backend::Nats => "nats",
            Backend::Kafka => "kafka",
        }
    }

    /// Whether the hub cannot serve without it when it is configured (the
    /// source of truth). The others degrade the hub; they do not stop it.
    pub fn essential(self) -> bool {
        self == Backend::Postgres
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the monitor knows of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStatus {
    /// The last check succeeded.
    Up,
    /// The last check failed or timed out.
    Down,
    /// The hub runs without it.
    NotConfigured,
    /// Configured, but not checked yet (the first moments after start).
    Unknown,
}

impl BackendStatus {
    /// The name used on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendStatus::Up => "up",
            BackendStatus::Down => "down",
            BackendStatus::NotConfigured => "not_configured",
            BackendStatus::Unknown => "unknown",
        }
    }
}

impl fmt::Display for BackendStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection pool's figures at the time of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now (in use or idle).
    pub size: usize,
    /// Open connections nobody uses.
    pub idle: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// What a successful check found besides "up".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeReport {
    /// The pool's figures, for backends reached through a pool.
    pub pool: Option<PoolStats>,
}

/// Why a check failed: one short sentence, safe to show an operator.
///
/// Built only through [`ProbeFailure::new`], which removes credentials from
/// URLs (`scheme://user:password@host` keeps only `scheme://host`) and cuts
/// the text to [`ProbeFailure::MAX_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure(String);

impl ProbeFailure {
    /// The longest error text kept.
    pub const MAX_CHARS: usize = 200;

    /// A failure described by `text`, with credentials removed and cut short.
    pub fn new(text: impl AsRef<str>) -> Self {
        let clean = redact_userinfo(text.as_ref());
        let mut short: String = clean
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(Self::MAX_CHARS)
            .collect();
        if short.is_empty() {
            short.push_str("check failed");
        }
        Self(short)
    }

    /// The sentence.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<RegistryError> for ProbeFailure {
    fn from(error: RegistryError) -> Self {
        Self::new(error_chain(&error))
    }
}

/// Removes the user-info part (`user:password@`) of every URL in `text`.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', whitespace or quote.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(sep) => out.push_str(&authority[sep + 1..]),
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A check of one backend, implemented by its adapter. The monitor loop
/// bounds each call with its timeout and measures its latency, so an
/// implementation only does the round trip and reports what it found.
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    /// The backend this probe checks.
    fn backend(&self) -> Backend;

    /// One round trip to the backend. `Err` with a short, secret-free
    /// sentence when it does not answer as it should.
    async fn check(&self) -> Result<ProbeReport, ProbeFailure>;
}

/// The result of one check, as the loop measured it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The backend answered within the timeout.
    Up {
        /// How long the round trip took.
        latency: Duration,
        /// What it reported.
        report: ProbeReport,
    },
    /// The backend failed or did not answer within the timeout.
    Down {
        /// How long the check ran before it failed (the timeout, if it timed out).
        latency: Duration,
        /// Why.
        error: ProbeFailure,
    },
}

/// One backend as last seen by the monitor.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSnapshot {
    /// Which backend.
    pub backend: Backend,
    /// Its status.
    pub status: BackendStatus,
    /// The last check's round trip in milliseconds (none before the first).
    pub latency_ms: Option<f64>,
    /// When the last check ended.
    pub checked_at: Option<DateTime<Utc>>,
    /// When the current status began (start-up for the first one).
    pub since: DateTime<Utc>,
    /// The error of the last failed check; kept after a recovery, with
    /// [`BackendSnapshot::last_error_at`], so an operator sees what happened.
    pub last_error: Option<String>,
    /// When the last failed check ended.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Pool figures of the last successful check, when the backend has a pool.
    pub pool: Option<PoolStats>,
    /// Checks made since start.
    pub checks: u64,
    /// Checks that failed since start.
    pub failures: u64,
}

impl BackendSnapshot {
    /// How long the current status has lasted at `now`, in seconds (millisecond precision).
    pub fn state_seconds(&self, now: DateTime<Utc>) -> f64 {
        ((now - self.since).num_milliseconds().max(0) as f64) / 1000.0
    }
}

/// A status change of one backend, to be logged once.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Which backend.
    pub backend: Backend,
    /// Its status before.
    pub from: BackendStatus,
    /// Its status now.
    pub to: BackendStatus,
    /// Why, when it went down.
    pub error: Option<String>,
}

/// Every backend as last seen, and how the monitor checks them.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSnapshot {
    /// One entry per backend, in [`Backend::ALL`] order, configured or not.
    pub backends: Vec<BackendSnapshot>,
    /// Time between checks.
    pub interval: Duration,
    /// How long a check may take before it counts as down.
    pub timeout: Duration,
}

impl MonitorSnapshot {
    /// The entry of `backend`.
    pub fn backend(&self, backend: Backend) -> Option<&BackendSnapshot> {
        self.backends.iter().find(|b| b.backend == backend)
    }
}

/// The monitor's state: pure, driven by [`MonitorState::record`] with the
/// time passed in.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorState {
    backends: Vec<BackendSnapshot>,
}

impl MonitorState {
    /// Every backend of [`Backend::ALL`]: those in `configured` not checked
    /// yet, the others `not_configured`, all since `now`.
    pub fn new(configured: &[Backend], now: DateTime<Utc>) -> Self {
        let backends = Backend::ALL
            .iter()
            .map(|&backend| BackendSnapshot {
                backend,
                status: if configured.contains(&backend) {
                    BackendStatus::Unknown
                } else {
                    BackendStatus::NotConfigured
                },
                latency_ms: None,
                checked_at: None,
                since: now,
                last_error: None,
                last_error_at: None,
                pool: None,
                checks: 0,
                failures: 0,
            })
            .collect();
        Self { backends }
    }

    /// Records the outcome of a check of `backend` that ended at `now`.
    /// Returns the transition when its status changed (including the first
    /// check after start); `None` when it stayed the same or the backend is
    /// not configured (a probe for it is a wiring mistake, ignored).
    pub fn record(
        &mut self,
        backend: Backend,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Option<Transition> {
        let entry = self
            .backends
            .iter_mut()
            .find(|b| b.backend == backend && b.status != BackendStatus::NotConfigured)?;
        let from = entry.status;
        let (to, latency) = match outcome {
            Outcome::Up { latency, report } => {
                entry.pool = report.pool;
                (BackendStatus::Up, latency)
            }
            Outcome::Down { latency, error } => {
                entry.failures += 1;
                entry.last_error = Some(error.as_str().to_owned());
                entry.last_error_at = Some(now);
                (BackendStatus::Down, latency)
            }
        };
        entry.checks += 1;
        entry.latency_ms = Some(latency.as_secs_f64() * 1000.0);
        entry.checked_at = Some(now);
        if from == to {
            return None;
        }
        entry.status = to;
        entry.since = now;
        Some(Transition {
            backend,
            from,
            to,
            error: (to == BackendStatus::Down)
                .then(|| entry.last_error.clone())
                .flatten(),
        })
    }

    /// Every backend as last seen.
    pub fn backends(&self) -> &[BackendSnapshot] {
        &self.backends
    }
}

/// The monitor's state shared between its loop (which records) and the
/// dashboard (which reads snapshots). Cheap to clone.
///
/// A `std` lock: it is held for a copy of four small records or one
/// update, never across an `.await`.
#[derive(Debug, Clone)]
pub struct Monitor {
    state: Arc<RwLock<MonitorState>>,
    interval: Duration,
    timeout: Duration,
}

impl Monitor {
    /// A monitor of the `configured` backends, checked every `interval`
    /// with `timeout` per check, nothing recorded yet.
    pub fn new(
        configured: &[Backend],
        interval: Duration,
        timeout: Duration,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            state: Arc::new(RwLock::new(MonitorState::new(configured, now))),
            interval,
            timeout,
        }
    }

    /// Time between checks.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long one check may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Records a check's outcome (see [`MonitorState::record`]).
    pub fn record(
        &self,
        backend: Backend,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Option<Transition> {
        self.state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .record(backend, outcome, now)
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> MonitorSnapshot {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        MonitorSnapshot {
            backends: state.backends().to_vec(),
            interval: self.interval,
            timeout: self.timeout,
        }
    }
}

/// The hub's health at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverallStatus {
    /// Everything configured is up and no instance is critical.
    Healthy,
    /// It serves, with something wrong (see [`Rule`]).
    Degraded,
    /// The source of truth is down or most instances are critical.
    Critical,
}

impl OverallStatus {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OverallStatus::Healthy => "healthy",
            OverallStatus::Degraded => "degraded",
            OverallStatus::Critical => "critical",
        }
    }
}

/// The rule that decided an overall status, first match wins in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Critical: the source of truth (PostgreSQL) is down.
    SourceOfTruthDown,
    /// Critical: more than half of the instances in scope are critical.
    MostInstancesCritical,
    /// Degraded: a configured backend other than the source of truth is down.
    BackendDown,
    /// Degraded: a configured backend has not been checked yet.
    BackendUnchecked,
    /// Degraded: the store did not answer the count of instances (while
    /// the monitor had not seen it down).
    InstancesUncounted,
    /// Degraded: mass-expiry protection holds removals in scope.
    MassExpiry,
    /// Degraded: some (at most half) of the instances in scope are critical.
    SomeInstancesCritical,
    /// Healthy: none of the above.
    AllUp,
}

impl Rule {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::SourceOfTruthDown => "source_of_truth_down",
            Rule::MostInstancesCritical => "most_instances_critical",
            Rule::BackendDown => "backend_down",
            Rule::BackendUnchecked => "backend_unchecked",
            Rule::InstancesUncounted => "instances_uncounted",
            Rule::MassExpiry => "mass_expiry",
            Rule::SomeInstancesCritical => "some_instances_critical",
            Rule::AllUp => "all_up",
        }
    }
}

/// An overall status, the rule that decided it and a sentence saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The status.
    pub status: OverallStatus,
    /// The rule that decided it.
    pub rule: Rule,
    /// Why, for a person ("nats is down").
    pub reason: String,
}

fn names(backends: &[&BackendSnapshot]) -> String {
    backends
        .iter()
        .map(|b| b.backend.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The overall status of the hub for a scope: the backends as `snapshot`
/// has them, the scope's instances by status (`None` when the store could
/// not count them), and whether mass-expiry protection holds any of the
/// scope's tenants.
///
/// Rules, first match wins: the source of truth down, or more than half of
/// the instances critical, is `critical`; another configured backend down,
/// a configured backend not checked yet, instances that could not be
/// counted, mass-expiry protection active, or some instances critical is
/// `degraded`; else `healthy`.
pub fn overall_status(
    snapshot: &MonitorSnapshot,
    counts: Option<&StatusCounts>,
    mass_expiry: bool,
) -> Verdict {
    let uncounted = StatusCounts::default();
    let counted = counts.is_some();
    let counts = counts.unwrap_or(&uncounted);
    let verdict = |status, rule, reason: String| Verdict {
        status,
        rule,
        reason,
    };
    let down: Vec<&BackendSnapshot> = snapshot
        .backends
        .iter()
        .filter(|b| b.status == BackendStatus::Down)
        .collect();
    if let Some(b) = down.iter().find(|b| b.backend.essential()) {
        return verdict(
            OverallStatus::Critical,
            Rule::SourceOfTruthDown,
            format!("{} (the source of truth) is down", b.backend),
        );
    }
    if counts.most_critical() {
        return verdict(
            OverallStatus::Critical,
            Rule::MostInstancesCritical,
            format!(
                "{} of {} instances are critical",
                counts.critical, counts.total
            ),
        );
    }
    if !down.is_empty() {
        return verdict(
            OverallStatus::Degraded,
            Rule::BackendDown,
            format!("down: {}", names(&down)),
        );
    }
    let unchecked: Vec<&BackendSnapshot> = snapshot
        .backends
        .iter()
        .filter(|b| b.status == BackendStatus::Unknown)
        .collect();
    if !unchecked.is_empty() {
        return verdict(
            OverallStatus::Degraded,
            Rule::BackendUnchecked,
            format!("not checked yet: {}", names(&unchecked)),
        );
    }
    if !counted {
        return verdict(
            OverallStatus::Degraded,
            Rule::InstancesUncounted,
            "the store did not answer the count of instances".to_owned(),
        );
    }
    if mass_expiry {
        return verdict(
            OverallStatus::Degraded,
            Rule::MassExpiry,
            "mass-expiry protection holds removals".to_owned(),
        );
    }
    if counts.critical > 0 {
        return verdict(
            OverallStatus::Degraded,
            Rule::SomeInstancesCritical,
            format!(
                "{} of {} instances are critical",
                counts.critical, counts.total
            ),
        );
    }
    verdict(
        OverallStatus::Healthy,
        Rule::AllUp,
        "every configured backend is up and no instance is critical".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::HealthStatus;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn up(ms: u64) -> Outcome {
        Outcome::Up {
            latency: Duration::from_millis(ms),
            report: ProbeReport::default(),
        }
    }

    fn down(text: &str) -> Outcome {
        Outcome::Down {
            latency: Duration::from_millis(2000),
            error: ProbeFailure::new(text),
        }
    }

    fn counts(passing: u64, warning: u64, critical: u64) -> StatusCounts {
        let mut c = StatusCounts::default();
        c.add(HealthStatus::Passing, passing);
        c.add(HealthStatus::Warning, warning);
        c.add(HealthStatus::Critical, critical);
        c
    }

    fn snapshot(state: &MonitorState) -> MonitorSnapshot {
        MonitorSnapshot {
            backends: state.backends().to_vec(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }

    fn all_up() -> MonitorState {
        let mut state = MonitorState::new(&Backend::ALL, t(0));
        for b in Backend::ALL {
            state.record(b, up(1), t(1));
        }
        state
    }

    #[test]
    fn unconfigured_backends_are_reported_and_never_change() {
        let mut state = MonitorState::new(&[Backend::Postgres], t(0));
        let s = snapshot(&state);
        assert_eq!(
            s.backend(Backend::Postgres).unwrap().status,
            BackendStatus::Unknown
        );
        for b in [Backend::Dragonfly, Backend::Nats, Backend::Kafka] {
            assert_eq!(s.backend(b).unwrap().status, BackendStatus::NotConfigured);
            assert_eq!(state.record(b, up(1), t(1)), None);
        }
        assert_eq!(
            snapshot(&state).backend(Backend::Kafka).unwrap().status,
            BackendStatus::NotConfigured
        );
    }

    #[test]
    fn transitions_are_reported_once_and_the_state_keeps_its_start() {
        let mut state = MonitorState::new(&[Backend::Nats], t(0));
        let first = state.record(Backend::Nats, up(3), t(1)).unwrap();
        assert_eq!(
            (first.from, first.to),
            (BackendStatus::Unknown, BackendStatus::Up)
        );
        assert_eq!(state.record(Backend::Nats, up(4), t(2)), None);
        let went = state
            .record(Backend::Nats, down("connection refused"), t(3))
            .unwrap();
        assert_eq!(went.to, BackendStatus::Down);
        assert_eq!(went.error.as_deref(), Some("connection refused"));
        assert_eq!(
            state.record(Backend::Nats, down("connection refused"), t(4)),
            None
        );
        let nats = snapshot(&state).backend(Backend::Nats).unwrap().clone();
        assert_eq!(nats.since, t(3), "down since the first failed check");
        assert_eq!(nats.checked_at, Some(t(4)));
        assert_eq!(nats.state_seconds(t(13)), 10.0);
        assert_eq!((nats.checks, nats.failures), (4, 2));
        assert_eq!(nats.latency_ms, Some(2000.0));
        let back = state.record(Backend::Nats, up(2), t(5)).unwrap();
        assert_eq!(back.error, None);
        let nats = snapshot(&state).backend(Backend::Nats).unwrap().clone();
        assert_eq!(nats.status, BackendStatus::Up);
        assert_eq!(nats.last_error.as_deref(), Some("connection refused"));
        assert_eq!(nats.last_error_at, Some(t(4)));
    }

    #[test]
    fn failures_carry_no_credentials_and_stay_short() {
        let f = ProbeFailure::new(
            "error connecting to postgres://hub:s3cret@db.internal:5432/hub and redis://:pw@cache:6379",
        );
        assert_eq!(
            f.as_str(),
            "error connecting to postgres://db.internal:5432/hub and redis://cache:6379"
        );
        assert!(!f.as_str().contains("s3cret"));
        let long = ProbeFailure::new("x".repeat(1000));
        assert_eq!(long.as_str().chars().count(), ProbeFailure::MAX_CHARS);
        assert_eq!(ProbeFailure::new("  ").as_str(), "check failed");
        assert_eq!(
            ProbeFailure::new("two\nlines").as_str(),
            "two lines",
            "one line for logs and JSON"
        );
    }

    #[test]
    fn overall_status_follows_the_rules_in_order() {
        let healthy = all_up();
        let v = overall_status(&snapshot(&healthy), Some(&counts(3, 1, 0)), false);
        assert_eq!((v.status, v.rule), (OverallStatus::Healthy, Rule::AllUp));
        // A warning instance is not critical.
        let v = overall_status(&snapshot(&healthy), Some(&counts(0, 4, 0)), false);
        assert_eq!(v.status, OverallStatus::Healthy);

        let v = overall_status(&snapshot(&healthy), Some(&counts(3, 0, 1)), false);
        assert_eq!(
            (v.status, v.rule),
            (OverallStatus::Degraded, Rule::SomeInstancesCritical)
        );
        // Exactly half is not "most".
        let v = overall_status(&snapshot(&healthy), Some(&counts(2, 0, 2)), false);
        assert_eq!(v.rule, Rule::SomeInstancesCritical);
        let v = overall_status(&snapshot(&healthy), Some(&counts(1, 1, 3)), false);
        assert_eq!(
            (v.status, v.rule),
            (OverallStatus::Critical, Rule::MostInstancesCritical)
        );
        assert_eq!(v.reason, "3 of 5 instances are critical");

        let v = overall_status(&snapshot(&healthy), Some(&counts(3, 0, 0)), true);
        assert_eq!(
            (v.status, v.rule),
            (OverallStatus::Degraded, Rule::MassExpiry)
        );

        for b in [Backend::Dragonfly, Backend::Nats, Backend::Kafka] {
            let mut state = all_up();
            state.record(b, down("timed out"), t(2));
            let v = overall_status(&snapshot(&state), Some(&counts(3, 0, 0)), false);
            assert_eq!(
                (v.status, v.rule),
                (OverallStatus::Degraded, Rule::BackendDown),
                "{b}"
            );
            assert_eq!(v.reason, format!("down: {b}"));
            // Most instances critical outranks a non-essential backend.
            let v = overall_status(&snapshot(&state), Some(&counts(0, 0, 3)), false);
            assert_eq!(v.rule, Rule::MostInstancesCritical);
        }

        let mut state = all_up();
        state.record(Backend::Kafka, down("timed out"), t(2));
        state.record(Backend::Postgres, down("refused"), t(2));
        let v = overall_status(&snapshot(&state), Some(&counts(0, 0, 3)), true);
        assert_eq!(
            (v.status, v.rule),
            (OverallStatus::Critical, Rule::SourceOfTruthDown)
        );

        let fresh = MonitorState::new(&[Backend::Postgres, Backend::Nats], t(0));
        let v = overall_status(&snapshot(&fresh), Some(&counts(1, 0, 0)), false);
        assert_eq!(
            (v.status, v.rule),
            (OverallStatus::Degraded, Rule::BackendUnchecked)
        );
        assert_eq!(v.reason, "not checked yet: postgres, nats");

        let v = overall_status(&snapshot(&healthy), None, true);
        assert_eq!(
            (v.status, v.rule),
            (OverallStatus::Degraded, Rule::InstancesUncounted)
        );
        let v = overall_status(&snapshot(&state), None, false);
        assert_eq!(
            v.rule,
            Rule::SourceOfTruthDown,
            "outranks an unanswered count"
        );

        // Embedded mode: nothing configured, nothing to be down.
        let embedded = MonitorState::new(&[], t(0));
        let v = overall_status(&snapshot(&embedded), Some(&StatusCounts::default()), false);
        assert_eq!(v.status, OverallStatus::Healthy);
    }

    #[test]
    fn counts_add_up_across_tenants() {
        let a = counts(2, 1, 0);
        let b = counts(0, 0, 3);
        let sum = a.plus(b);
        assert_eq!(sum, counts(2, 1, 3));
        assert_eq!(sum.total, 6);
        assert!(!sum.most_critical(), "3 of 6 is half, not most");
        assert!(!StatusCounts::default().most_critical());
    }
}
