//! Dashboard routes: `GET /api/v1/dashboard/metrics`, the state of event delivery and the outbox backlog, scoped to the caller.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use hub_core::ports::EventStatus;
use hub_core::ratelimit::Limits;
use hub_core::{ChangeCounts, MassExpiryHold, Registry, SinkStatus, TenantId};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{Scope, ScopeQuery};
use crate::metrics::{RequestMetrics, RequestSummary};
use crate::routes::dashboard_health::StatusCountsBody;

/// The event-delivery state the dashboard reads (shared by every worker).
pub type Events = Arc<dyn EventStatus>;

fn sink_body(status: &SinkStatus, all: bool) -> Value {
    let mut body = serde_json::Map::new();
    if let Some(backlog) = status.backlog {
        let age = backlog
            .oldest
            .map(|oldest| (Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0);
        body.insert(
            "backlog".into(),
            json!({ "pending": backlog.pending, "oldest_pending_age_seconds": age }),
        );
        // Events set aside because they could not be decoded: never
        // delivered, kept for an operator (docs/POSTGRES.md). The tenant's
        // own, or every tenant's for operators, like the backlog.
        body.insert("undeliverable".into(), json!(backlog.undeliverable));
    }
    if all {
        body.insert("published".into(), json!(status.published));
        body.insert("failures".into(), json!(status.failures));
        if let Some(relaying) = status.relaying {
            body.insert("relaying".into(), json!(relaying));
        }
        if let Some(dropped) = status.dropped {
            body.insert("dropped".into(), json!(dropped));
        }
    }
    Value::Object(body)
}

/// The event section of the dashboard metrics: how events are delivered and,
/// per configured bus, the outbox backlog and the events set aside as
/// undeliverable (for the scope: see [`Scope`]) and, for totals across
/// tenants, this replica's counters.
#[utoipa::path(
    get,
    path = "/api/v1/dashboard/metrics",
    tag = "dashboard",
    operation_id = "dashboard_metrics",
    summary = "Event delivery, outbox backlog, rate-limit rejections and leases, for the scope",
    params(ScopeQuery),
    responses(
        (status = 200, description = "The figures for the scope.", body = crate::openapi::DashboardMetricsDoc),
        (status = 422, description = "`validation_failed`: `tenant` is not a valid tenant id.", body = ErrorBody),
    ),
)]
pub(crate) async fn metrics(
    scope: Scope,
    events: web::Data<Events>,
    limits: web::Data<Limits>,
    registry: web::Data<Registry>,
    requests: web::Data<RequestMetrics>,
    tenancy: web::Data<crate::tenancy::Tenancy>,
) -> Result<HttpResponse, ApiError> {
    let label = scope.label().to_owned();
    let scope = scope.tenant();
    let all = scope.is_none();
    let sinks = events.sinks(scope).await?;
    let sinks: serde_json::Map<String, Value> = sinks
        .iter()
        .map(|s| (s.sink.as_str().to_owned(), sink_body(s, all)))
        .collect();
    let additions = MetricsAdditions {
        counted_since: CountingPeriod::since(requests.started_at()),
        requests: requests.summary(scope),
        changes: ChangesBody::from(registry.change_counts(scope)),
        instances: StatusCountsBody::from(registry.status_counts(scope).await?),
    };
    let mut body = json!({
        "scope": label,
        "generated_at": Utc::now(),
        "events": {
            "delivery": events.delivery().as_str(),
            "sinks": sinks,
        },
        "rate_limits": rate_limit_body(&limits, scope),
        "leases": lease_body(&registry, scope),
    });
    if let (Value::Object(body), Ok(Value::Object(additions))) =
        (&mut body, serde_json::to_value(&additions))
    {
        body.extend(additions);
    }
    // A tenant's own usage today (stored, plus counted and not yet flushed).
    if let (Some(tenant), Value::Object(body)) = (scope, &mut body) {
        let today = Utc::now().date_naive();
        let stored = tenancy.directory().usage(tenant, today, today).await?;
        let days = crate::routes::admin::with_pending(
            stored,
            tenancy.meter().pending(tenant, today),
            today,
            (today, today),
        );
        let counts = days.first().map(|d| d.counts).unwrap_or_default();
        body.insert(
            "usage_today".into(),
            json!(crate::admin_dto::UsageCountsBody::from(counts)),
        );
    }
    Ok(HttpResponse::Ok().json(body))
}

/// Says that the counts of the answer are this replica's, since it started
/// (another replica, or this one after a restart, counts from zero).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CountingPeriod {
    /// When this replica started counting.
    pub replica_started_at: DateTime<Utc>,
    /// Seconds since then.
    pub uptime_seconds: f64,
    /// What the counts cover.
    #[schema(example = "counts are of this replica only, since it started")]
    pub note: &'static str,
}

impl CountingPeriod {
    fn since(started_at: DateTime<Utc>) -> Self {
        Self {
            replica_started_at: started_at,
            uptime_seconds: (Utc::now() - started_at).num_milliseconds().max(0) as f64 / 1000.0,
            note: "counts are of this replica only, since it started",
        }
    }
}

/// Lease expirations counted by this replica's reaper.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct ExpirationsBody {
    /// Leases that ran out: the instance turned critical.
    pub to_critical: u64,
    /// Instances removed after staying expired.
    pub removed: u64,
}

/// Registry changes made through this replica since it started (for the
/// scope: one tenant, or the sum over tenants).
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct ChangesBody {
    /// Instances created by a registration.
    pub registrations: u64,
    /// Registrations that replaced an existing instance.
    pub updates: u64,
    /// Instances removed by deregistrations.
    pub deregistrations: u64,
    /// Lease expirations.
    pub expirations: ExpirationsBody,
    /// Status changes reported by heartbeats.
    pub status_changes: u64,
}

impl From<ChangeCounts> for ChangesBody {
    fn from(c: ChangeCounts) -> Self {
        Self {
            registrations: c.registrations,
            updates: c.updates,
            deregistrations: c.deregistrations,
            expirations: ExpirationsBody {
                to_critical: c.expired_to_critical,
                removed: c.expired_removed,
            },
            status_changes: c.status_changes,
        }
    }
}

/// The parts of `GET /api/v1/dashboard/metrics` described by typed schemas
/// (the OpenAPI document can reference them).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MetricsAdditions {
    /// The period every count covers.
    pub counted_since: CountingPeriod,
    /// Requests answered in the scope.
    pub requests: RequestSummary,
    /// Registry changes in the scope.
    pub changes: ChangesBody,
    /// The scope's instances by status, as the store holds them now (not
    /// a count since start).
    pub instances: StatusCountsBody,
}

fn hold_body(hold: &MassExpiryHold) -> Value {
    json!({ "expired": hold.expired, "total": hold.total, "held": hold.held })
}

/// Where heartbeat leases live and the mass-expiry holds this replica's
/// reaper placed (`mass_expiry` is the request tenant's hold or null; for
/// operators, every held tenant, whether the lease cache answers and how
/// many heartbeats fell back to the store).
fn lease_body(registry: &Registry, scope: Option<&TenantId>) -> Value {
    let status = registry.lease_status();
    match scope {
        Some(tenant) => json!({
            "backend": status.backend,
            "mass_expiry": registry.mass_expiry(tenant).as_ref().map(hold_body),
        }),
        None => {
            let holds: serde_json::Map<String, Value> = registry
                .mass_expiry_holds()
                .iter()
                .map(|h| (h.tenant.as_str().to_owned(), hold_body(h)))
                .collect();
            json!({
                "backend": status.backend,
                "cache_reachable": status.cache_reachable,
                "fallbacks": status.fallbacks,
                "mass_expiry": holds,
            })
        }
    }
}

/// Requests refused with 429 by this replica, per tenant (the request's
/// tenant only for a bound key; for operators every tenant, the requests
/// answered by the local fallback, and whether the fallback is in use now).
fn rate_limit_body(limits: &Limits, scope: Option<&TenantId>) -> Value {
    match scope {
        Some(tenant) => json!({ "rejected": { tenant.as_str(): limits.rejections(tenant) } }),
        None => {
            let rejected: serde_json::Map<String, Value> = limits
                .all_rejections()
                .into_iter()
                .map(|(t, n)| (t.as_str().to_owned(), json!(n)))
                .collect();
            json!({
                "rejected": rejected,
                "fallbacks": limits.fallbacks(),
                "degraded": limits.degraded(),
            })
        }
    }
}
