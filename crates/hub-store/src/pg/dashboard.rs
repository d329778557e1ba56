//! Dashboard reads of one tenant on PostgreSQL: instances counted by status and the per-service summary, each one statement in the tenant's scoped transaction, and the monitor's probe of the pool.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hub_core::monitor::{Backend, PoolStats, Probe, ProbeFailure, ProbeReport};
use hub_core::{
    HealthStatus, HeartbeatMetrics, InstanceId, MetricSample, RegistryError, ServiceName,
    ServiceSummary, StatusCounts, TenantId,
};
use tokio_postgres::Row;

use super::error::{chain, from_db, from_pg};
use super::gate::{Checkout, Gate};
use super::scoped::single_statement;
use super::store::PgStore;

/// Counts by stored status: a `GROUP BY` on the `(tenant_id, ...)` unique
/// index, no instance is loaded.
const STATUS_COUNTS: &str = "SELECT status, count(*) FROM service_registry \
     WHERE tenant_id = $1 GROUP BY status";

/// Per service: counts by status and the newest heartbeat (one `GROUP BY`),
/// and the service's most recent `health_metrics` row, found through the
/// `(tenant_id, service_name, recorded_at)` index one service at a time
/// (a `LATERAL ... LIMIT 1`), so the metric history is not scanned.
const SUMMARIES: &str = "SELECT s.service_name, s.passing, s.warning, s.critical, s.newest, \
         m.instance_id, m.status, m.response_time_ms, m.cpu_usage, m.memory_usage, \
         m.error_rate, m.recorded_at \
     FROM (SELECT service_name, \
             count(*) FILTER (WHERE status = 'passing') AS passing, \
             count(*) FILTER (WHERE status = 'warning') AS warning, \
             count(*) FILTER (WHERE status = 'critical') AS critical, \
             max(last_heartbeat) AS newest \
           FROM service_registry WHERE tenant_id = $1 GROUP BY service_name) AS s \
     LEFT JOIN LATERAL (SELECT instance_id, status, response_time_ms, cpu_usage, \
             memory_usage, error_rate, recorded_at \
           FROM health_metrics h \
           WHERE h.tenant_id = $1 AND h.service_name = s.service_name \
           ORDER BY h.recorded_at DESC LIMIT 1) AS m ON true \
     ORDER BY s.service_name";

fn count(row: &Row, index: usize) -> Result<u64, RegistryError> {
    let n: i64 = row.try_get(index).map_err(from_pg)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The tenant's instances by status (row-level security: the statement
/// runs after `app.tenant_id` is set to `tenant`, see `scoped`).
pub(super) async fn status_counts(
    gate: &Gate,
    tenant: &TenantId,
) -> Result<StatusCounts, RegistryError> {
    let rows = single_statement(gate, tenant, STATUS_COUNTS, &[&tenant.as_str()]).await?;
    let mut counts = StatusCounts::default();
    for row in &rows {
        let status: String = row.try_get(0).map_err(from_pg)?;
        // The column's CHECK allows only the three; anything else would be
        // a row written behind the API's back, which reads as critical like
        // an unreadable status does elsewhere.
        let status = status.parse().unwrap_or(HealthStatus::Critical);
        counts.add(status, count(row, 1)?);
    }
    Ok(counts)
}

/// The latest metrics of a summary row, if the service has any.
fn latest_metrics(service: &ServiceName, row: &Row) -> Option<MetricSample> {
    let read = || -> Result<Option<MetricSample>, String> {
        let Some(instance) = row.try_get::<_, Option<String>>(5).map_err(|e| chain(&e))? else {
            return Ok(None);
        };
        let status: String = row.try_get(6).map_err(|e| chain(&e))?;
        let figure = |i: usize| row.try_get::<_, Option<f64>>(i).map_err(|e| chain(&e));
        let metrics = HeartbeatMetrics::new(figure(7)?, figure(8)?, figure(9)?, figure(10)?)
            .map_err(|e| chain(&e))?;
        Ok(Some(MetricSample {
            service: service.clone(),
            instance: InstanceId::restore(instance).map_err(|e| chain(&e))?,
            status: status.parse().unwrap_or(HealthStatus::Critical),
            metrics,
            recorded_at: row.try_get(11).map_err(|e| chain(&e))?,
        }))
    };
    match read() {
        Ok(sample) => sample,
        Err(cause) => {
            tracing::error!(service = %service, %cause, "a health_metrics row cannot be read; the dashboard leaves it out");
            None
        }
    }
}

/// Every service of the tenant with its counts, newest heartbeat and latest
/// metrics, in one statement in the tenant's scoped transaction. A service
/// name that cannot be read (a row written by hand) is logged and left out.
pub(super) async fn service_summaries(
    gate: &Gate,
    tenant: &TenantId,
) -> Result<Vec<ServiceSummary>, RegistryError> {
    let rows = single_statement(gate, tenant, SUMMARIES, &[&tenant.as_str()]).await?;
    let mut summaries = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.try_get(0).map_err(from_pg)?;
        let service = match ServiceName::restore(name) {
            Ok(service) => service,
            Err(e) => {
                tracing::error!(tenant = %tenant, cause = %chain(&e), "a stored service name cannot be read; the dashboard leaves it out");
                continue;
            }
        };
        let mut counts = StatusCounts::default();
        counts.add(HealthStatus::Passing, count(row, 1)?);
        counts.add(HealthStatus::Warning, count(row, 2)?);
        counts.add(HealthStatus::Critical, count(row, 3)?);
        let newest: Option<DateTime<Utc>> = row.try_get(4).map_err(from_pg)?;
        let latest = latest_metrics(&service, row);
        summaries.push(ServiceSummary {
            service_name: service,
            counts,
            newest_heartbeat: newest,
            latest_metrics: latest,
        });
    }
    Ok(summaries)
}

/// Spoils a checked-out connection when dropped before [`Disarm::done`]:
/// a call whose future was dropped mid-flight leaves a request on the
/// connection, maybe on a server that no longer answers, so the connection
/// is closed rather than handed to the next caller.
struct Disarm<'a> {
    checkout: &'a Checkout,
    armed: bool,
}

impl Disarm<'_> {
    fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.checkout.spoil();
        }
    }
}

/// `SELECT 1` on a pooled connection (no tenant, no share). The monitor
/// bounds it with its own timeout, usually shorter than the call's
/// deadline: if it gives up first, the connection is closed, not pooled.
async fn ping(gate: &Gate) -> Result<(), RegistryError> {
    let checkout = gate.internal().await?;
    let guard = Disarm {
        checkout: &checkout,
        armed: true,
    };
    checkout.simple_query("SELECT 1").await.map_err(from_db)?;
    guard.done();
    Ok(())
}

/// The monitor's check of PostgreSQL: `SELECT 1` on a pooled connection
/// (the same path as readiness: no tenant, no share taken), with the pool's
/// figures.
#[derive(Debug, Clone)]
pub struct PgProbe {
    store: PgStore,
}

impl PgProbe {
    /// A probe of `store`'s pool.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Probe for PgProbe {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn check(&self) -> Result<ProbeReport, ProbeFailure> {
        ping(&self.store.pool).await?;
        let status = self.store.pool_status();
        Ok(ProbeReport {
            pool: Some(PoolStats {
                max_size: status.max_size,
                size: status.size,
                idle: status.available,
                waiting: status.waiting,
            }),
        })
    }
}
