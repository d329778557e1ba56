//! Dashboard routes `GET /api/v1/dashboard/health` (overall status, backends as the monitor last saw them, instances by status) and `GET /api/v1/dashboard/services` (per service: instances by status, newest heartbeat, latest metrics), scoped to the caller.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use hub_core::monitor::{
    BackendSnapshot, BackendStatus, Monitor, MonitorSnapshot, OverallStatus, PoolStats, Rule,
    overall_status,
};
use hub_core::{HealthStatus, MetricSample, Registry, ServiceSummary, StatusCounts, TenantId};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{Scope, ScopeQuery};

/// The hub's health at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverallStatusBody {
    /// Everything configured is up and no instance is critical.
    Healthy,
    /// A non-essential backend is down, a backend is not checked yet, some
    /// instances are critical, or mass-expiry protection is active.
    Degraded,
    /// The source of truth is down, or more than half of the instances are critical.
    Critical,
}

impl From<OverallStatus> for OverallStatusBody {
    fn from(s: OverallStatus) -> Self {
        match s {
            OverallStatus::Healthy => Self::Healthy,
            OverallStatus::Degraded => Self::Degraded,
            OverallStatus::Critical => Self::Critical,
        }
    }
}

/// The rule that decided `overall_status` (the first that matched, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleBody {
    /// critical: PostgreSQL (the source of truth) is down.
    SourceOfTruthDown,
    /// critical: more than half of the instances in scope are critical.
    MostInstancesCritical,
    /// degraded: Dragonfly, NATS or Kafka is configured and down.
    BackendDown,
    /// degraded: a configured backend has not been checked yet (just after start).
    BackendUnchecked,
    /// degraded: the store did not answer the count of instances.
    InstancesUncounted,
    /// degraded: mass-expiry protection holds removals in scope.
    MassExpiry,
    /// degraded: some (at most half) of the instances in scope are critical.
    SomeInstancesCritical,
    /// healthy: none of the above.
    AllUp,
}

impl From<Rule> for RuleBody {
    fn from(r: Rule) -> Self {
        match r {
            Rule::SourceOfTruthDown => Self::SourceOfTruthDown,
            Rule::MostInstancesCritical => Self::MostInstancesCritical,
            Rule::BackendDown => Self::BackendDown,
            Rule::BackendUnchecked => Self::BackendUnchecked,
            Rule::InstancesUncounted => Self::InstancesUncounted,
            Rule::MassExpiry => Self::MassExpiry,
            Rule::SomeInstancesCritical => Self::SomeInstancesCritical,
            Rule::AllUp => Self::AllUp,
        }
    }
}

/// A backend's status as the monitor last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendStatusBody {
    /// The last check succeeded.
    Up,
    /// The last check failed or timed out.
    Down,
    /// The hub runs without this backend.
    NotConfigured,
    /// Configured, not checked yet.
    Unknown,
}

impl From<BackendStatus> for BackendStatusBody {
    fn from(s: BackendStatus) -> Self {
        match s {
            BackendStatus::Up => Self::Up,
            BackendStatus::Down => Self::Down,
            BackendStatus::NotConfigured => Self::NotConfigured,
            BackendStatus::Unknown => Self::Unknown,
        }
    }
}

/// Connection pool figures at the last successful check (PostgreSQL).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolBody {
    /// The most connections the pool opens (`HUB_PG_POOL_SIZE`).
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Open connections not in use.
    pub idle: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

impl From<PoolStats> for PoolBody {
    fn from(p: PoolStats) -> Self {
        Self {
            max_size: p.max_size,
            size: p.size,
            idle: p.idle,
            waiting: p.waiting,
        }
    }
}

/// One backend, as the monitor of the replica that answers last checked it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackendBody {
    /// Its status.
    pub status: BackendStatusBody,
    /// The last check's round trip, in milliseconds (null before the first check).
    pub latency_ms: Option<f64>,
    /// When the last check ended.
    pub checked_at: Option<DateTime<Utc>>,
    /// When the current status began.
    pub since: DateTime<Utc>,
    /// How long the current status has lasted, in seconds.
    pub state_seconds: f64,
    /// Why it is down (present only while down): a short sentence without secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last failure seen, kept after a recovery (null if none since start).
    pub last_error: Option<String>,
    /// When that failure was seen.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Pool figures (PostgreSQL only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolBody>,
    /// Checks made since this replica started.
    pub checks: u64,
    /// Checks that failed since this replica started.
    pub failures: u64,
}

impl BackendBody {
    fn of(b: &BackendSnapshot, now: DateTime<Utc>) -> Self {
        Self {
            status: b.status.into(),
            latency_ms: b.latency_ms,
            checked_at: b.checked_at,
            since: b.since,
            state_seconds: b.state_seconds(now),
            error: (b.status == BackendStatus::Down)
                .then(|| b.last_error.clone())
                .flatten(),
            last_error: b.last_error.clone(),
            last_error_at: b.last_error_at,
            pool: b.pool.map(PoolBody::from),
            checks: b.checks,
            failures: b.failures,
        }
    }
}

/// Every backend the hub knows, configured or not.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InfrastructureBody {
    /// PostgreSQL, the source of truth (`not_configured` in embedded mode).
    pub postgres: BackendBody,
    /// Dragonfly (leases, shared rate limits).
    pub dragonfly: BackendBody,
    /// NATS (events).
    pub nats: BackendBody,
    /// Kafka (events).
    pub kafka: BackendBody,
}

impl InfrastructureBody {
    fn of(snapshot: &MonitorSnapshot, now: DateTime<Utc>) -> Self {
        use hub_core::monitor::Backend;
        let entry = |backend: Backend| {
            snapshot.backend(backend).map_or_else(
                || BackendBody {
                    status: BackendStatusBody::NotConfigured,
                    latency_ms: None,
                    checked_at: None,
                    since: now,
                    state_seconds: 0.0,
                    error: None,
                    last_error: None,
                    last_error_at: None,
                    pool: None,
                    checks: 0,
                    failures: 0,
                },
                |b| BackendBody::of(b, now),
            )
        };
        Self {
            postgres: entry(Backend::Postgres),
            dragonfly: entry(Backend::Dragonfly),
            nats: entry(Backend::Nats),
            kafka: entry(Backend::Kafka),
        }
    }
}

/// Instances counted by status.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct StatusCountsBody {
    /// Every instance.
    pub total: u64,
    /// Lease alive, reporting passing.
    pub passing: u64,
    /// Reporting warning.
    pub warning: u64,
    /// Reporting critical, or lease ran out.
    pub critical: u64,
}

impl From<StatusCounts> for StatusCountsBody {
    fn from(c: StatusCounts) -> Self {
        Self {
            total: c.total,
            passing: c.passing,
            warning: c.warning,
            critical: c.critical,
        }
    }
}

/// How the monitor checks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MonitorBody {
    /// Time between checks (`HUB_MONITOR_INTERVAL_MS`).
    pub interval_ms: u64,
    /// How long a check may take (`HUB_MONITOR_TIMEOUT_MS`).
    pub timeout_ms: u64,
}

/// `GET /api/v1/dashboard/health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DashboardHealthBody {
    /// `all_tenants` or the tenant id the answer covers.
    pub scope: String,
    /// When this answer was built.
    pub generated_at: DateTime<Utc>,
    /// healthy, degraded or critical.
    pub overall_status: OverallStatusBody,
    /// The rule that decided `overall_status`.
    pub rule: RuleBody,
    /// Why, in a sentence.
    pub reason: String,
    /// Every backend, as this replica's monitor last checked it.
    pub infrastructure: InfrastructureBody,
    /// The scope's instances by status; null when the source of truth is
    /// down and they cannot be counted.
    pub services: Option<StatusCountsBody>,
    /// Whether mass-expiry protection holds removals of the scope's
    /// tenants (as this replica's reaper saw at its last pass).
    pub mass_expiry: bool,
    /// How the monitor checks.
    pub monitor: MonitorBody,
}

/// Overall status, backends and instances by status for the scope. Answers
/// 200 whatever the backends' state: with PostgreSQL down it says
/// `critical` (and cannot count instances), it does not fail.
#[utoipa::path(
    get,
    path = "/api/v1/dashboard/health",
    tag = "dashboard",
    operation_id = "dashboard_health",
    summary = "Overall status, each backend as the monitor last saw it, and instances by status, for the scope",
    params(ScopeQuery),
    responses(
        (status = 200, description = "The health of the hub for the scope; 200 whatever the backends' state.", body = DashboardHealthBody),
        (status = 422, description = "`validation_failed`: `tenant` is not a valid tenant id.", body = ErrorBody),
    ),
)]
pub(crate) async fn health(
    scope: Scope,
    registry: web::Data<Registry>,
    monitor: web::Data<Monitor>,
) -> Result<HttpResponse, ApiError> {
    let now = Utc::now();
    let snapshot = monitor.snapshot();
    let tenant = scope.tenant();
    let truth_down = snapshot
        .backends
        .iter()
        .any(|b| b.backend.essential() && b.status == BackendStatus::Down);
    // With the source of truth down a count would only wait for the
    // store's timeout and fail; the monitor already says why.
    let counts = if truth_down {
        None
    } else {
        match registry.status_counts(tenant).await {
            Ok(counts) => Some(counts),
            Err(error) => {
                tracing::warn!(%error, "dashboard: instances could not be counted");
                None
            }
        }
    };
    let mass_expiry = match tenant {
        Some(t) => registry.mass_expiry(t).is_some(),
        None => !registry.mass_expiry_holds().is_empty(),
    };
    let verdict = overall_status(&snapshot, counts.as_ref(), mass_expiry);
    Ok(HttpResponse::Ok().json(DashboardHealthBody {
        scope: scope.label().to_owned(),
        generated_at: now,
        overall_status: verdict.status.into(),
        rule: verdict.rule.into(),
        reason: verdict.reason,
        infrastructure: InfrastructureBody::of(&snapshot, now),
        services: counts.map(StatusCountsBody::from),
        mass_expiry,
        monitor: MonitorBody {
            interval_ms: u64::try_from(snapshot.interval.as_millis()).unwrap_or(u64::MAX),
            timeout_ms: u64::try_from(snapshot.timeout.as_millis()).unwrap_or(u64::MAX),
        },
    }))
}

/// An instance status on the wire.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatusBody {
    /// Lease alive, reporting healthy.
    Passing,
    /// Reporting a degraded state.
    Warning,
    /// Reporting failure, or lease ran out.
    Critical,
}

impl From<HealthStatus> for InstanceStatusBody {
    fn from(s: HealthStatus) -> Self {
        match s {
            HealthStatus::Passing => Self::Passing,
            HealthStatus::Warning => Self::Warning,
            HealthStatus::Critical => Self::Critical,
        }
    }
}

/// The latest heartbeat metrics one of the service's instances reported.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LatestMetricsBody {
    /// The instance that reported them.
    pub instance_id: String,
    /// The status it reported with them.
    pub status: InstanceStatusBody,
    /// Response time in milliseconds.
    pub response_time_ms: Option<f64>,
    /// CPU usage in percent (0-100).
    pub cpu_usage: Option<f64>,
    /// Memory usage (as the instance reports it).
    pub memory_usage: Option<f64>,
    /// Error rate (0-1).
    pub error_rate: Option<f64>,
    /// When they were reported (with Dragonfly: when last sampled into PostgreSQL).
    pub recorded_at: DateTime<Utc>,
}

impl From<&MetricSample> for LatestMetricsBody {
    fn from(m: &MetricSample) -> Self {
        Self {
            instance_id: m.instance.as_str().to_owned(),
            status: m.status.into(),
            response_time_ms: m.metrics.response_time_ms(),
            cpu_usage: m.metrics.cpu_usage(),
            memory_usage: m.metrics.memory_usage(),
            error_rate: m.metrics.error_rate(),
            recorded_at: m.recorded_at,
        }
    }
}

/// One service of a tenant.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServiceSummaryBody {
    /// The tenant the service belongs to.
    pub tenant_id: String,
    /// The service.
    pub service_name: String,
    /// Its instances by status.
    pub instances: StatusCountsBody,
    /// The newest `last_heartbeat` among its instances.
    pub newest_heartbeat: Option<DateTime<Utc>>,
    /// The latest heartbeat metrics reported for it (null if none is kept).
    pub latest_metrics: Option<LatestMetricsBody>,
}

impl ServiceSummaryBody {
    fn of(tenant: &TenantId, s: &ServiceSummary) -> Self {
        Self {
            tenant_id: tenant.as_str().to_owned(),
            service_name: s.service_name.as_str().to_owned(),
            instances: s.counts.into(),
            newest_heartbeat: s.newest_heartbeat,
            latest_metrics: s.latest_metrics.as_ref().map(LatestMetricsBody::from),
        }
    }
}

/// `GET /api/v1/dashboard/services`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DashboardServicesBody {
    /// `all_tenants` or the tenant id the answer covers.
    pub scope: String,
    /// When this answer was built.
    pub generated_at: DateTime<Utc>,
    /// How many services are listed.
    pub count: usize,
    /// The services, ordered by tenant, then name.
    pub services: Vec<ServiceSummaryBody>,
}

/// Per service of the scope's tenant (every tenant, one after the other,
/// for an operator without `?tenant=`): instances by status, newest
/// heartbeat and the latest metrics reported.
#[utoipa::path(
    get,
    path = "/api/v1/dashboard/services",
    tag = "dashboard",
    operation_id = "dashboard_services",
    summary = "Per service of the scope: instances by status, newest heartbeat, latest reported metrics",
    params(ScopeQuery),
    responses(
        (status = 200, description = "The services of the scope, ordered by tenant, then name.", body = DashboardServicesBody),
        (status = 422, description = "`validation_failed`: `tenant` is not a valid tenant id.", body = ErrorBody),
    ),
)]
pub(crate) async fn services(
    scope: Scope,
    registry: web::Data<Registry>,
) -> Result<HttpResponse, ApiError> {
    let tenants = match scope.tenant() {
        Some(tenant) => vec![tenant.clone()],
        None => registry.tenant_ids().await?,
    };
    let mut services = Vec::new();
    for tenant in &tenants {
        let summaries = registry.service_summaries(tenant).await?;
        services.extend(summaries.iter().map(|s| ServiceSummaryBody::of(tenant, s)));
    }
    Ok(HttpResponse::Ok().json(DashboardServicesBody {
        scope: scope.label().to_owned(),
        generated_at: Utc::now(),
        count: services.len(),
        services,
    }))
}
