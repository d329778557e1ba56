//! hub-core's `LeaseStore` on PostgreSQL: the store side of leases kept in a lease cache (Dragonfly): the reaper's turn, fills, judged expiries, lease moves and sampled metrics.
//!
//! Every call that touches a tenant table runs in a transaction scoped to
//! one tenant ([`in_tenant!`]), so row-level security applies as for any
//! request: even [`LeaseStore::extend_leases`], which moves every tenant's
//! leases, does so tenant by tenant (the application role cannot bypass
//! RLS). These calls are background work (the reaper, the metrics sampler):
//! like the store's own reaper pass they take no permit of the tenants'
//! shares (see `gate`), so a tenant at its cap cannot hold up its own
//! expiries.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hub_core::ports::LeaseChange;
use hub_core::{
    ChangeContext, EventKind, HealthStatus, Instance, JudgedLease, LeaseStore, MetricSample,
    ReaperTurn, RegistryError, TenantId,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::error::{DbError, chain};
use super::rows::{self, COLUMNS, RAW_PAYLOAD};
use super::scoped::{Scoped, in_tenant};
use super::store::{
    Audit, PgStore, RawAudit, expire_unreadable, lock_revision, readable, record, record_raw,
    row_key, set_revision,
};

#[async_trait]
impl LeaseStore for PgStore {
    async fn tenants(&self) -> Result<Vec<TenantId>, RegistryError> {
        self.known_tenants().await
    }

    async fn reaper_turn(&self) -> Result<Option<ReaperTurn>, RegistryError> {
        // The same advisory lock as the store's own reaper pass: one
        // replica at a time reaps, whichever way.
        Ok(self
            .reaper_turn_guard()
            .await?
            .map(|guard| Box::new(guard) as ReaperTurn))
    }

    async fn instances(&self, tenant: &TenantId) -> Result<Vec<Instance>, RegistryError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM service_registry WHERE tenant_id = $1 \
             ORDER BY service_name, instance_id"
        );
        let pool = self.pool.uncapped();
        in_tenant!(&pool, tenant, |scoped| {
            let rows = scoped.query(&sql, &[&tenant.as_str()]).await?;
            // A row that cannot be read is logged and left out, as reads do.
            Ok(rows
                .iter()
                .filter_map(|row| readable(tenant, row, 0))
                .collect())
        })
    }

    async fn expire_judged(
        &self,
        tenant: &TenantId,
        judged: &[JudgedLease],
        now: DateTime<Utc>,
        context: &ChangeContext,
    ) -> Result<Vec<LeaseChange>, RegistryError> {
        if judged.is_empty() {
            return Ok(Vec::new());
        }
        let services: Vec<&str> = judged.iter().map(|j| j.lease.service.as_str()).collect();
        let instances: Vec<&str> = judged.iter().map(|j| j.lease.instance.as_str()).collect();
        let expiries: Vec<DateTime<Utc>> = judged.iter().map(|j| j.lease.expires_at).collect();
        let by_key: HashMap<(&str, &str), &JudgedLease> = judged
            .iter()
            .map(|j| ((j.lease.service.as_str(), j.lease.instance.as_str()), j))
            .collect();
        // The judged rows, locked, in key order (the order of their
        // revisions), but only where the stored lease does not expire after
        // the judged one: a heartbeat that reached the store since has moved
        // it, and wins. Under READ COMMITTED a row renewed by a transaction
        // that commits while this one waits for its lock is checked again
        // on its new version, and drops out. Column 15 holds the values as
        // stored, for a row that cannot be read.
        let candidates_sql = format!(
            "SELECT {COLUMNS}, {RAW_PAYLOAD} \
             FROM service_registry \
             JOIN unnest($2::varchar[], $3::varchar[], $4::timestamptz[]) AS j(service, instance, expires) \
                 ON service_name = j.service AND instance_id = j.instance \
             WHERE tenant_id = $1 AND lease_expires_at <= j.expires \
             ORDER BY service_name, instance_id \
             FOR UPDATE OF service_registry"
        );
        let pool = self.pool.uncapped();
        in_tenant!(&pool, tenant, |scoped| {
            let mut revision = lock_revision(scoped, tenant).await?;
            let rows = scoped
                .query(
                    &candidates_sql,
                    &[&tenant.as_str(), &services, &instances, &expiries],
                )
                .await?;
            let mut changes = Vec::new();
            let mut raw = Vec::new();
            for row in &rows {
                let (service, instance) = row_key(row, 0);
                let Some(judged) = by_key.get(&(service.as_str(), instance.as_str())) else {
                    continue;
                };
                let change = match rows::instance(tenant, row) {
                    Ok(stored) => {
                        apply_judged(scoped, tenant, &stored, judged, &mut revision).await?
                    }
                    Err(error) => {
                        raw.extend(
                            apply_judged_unreadable(
                                scoped,
                                tenant,
                                row,
                                judged,
                                &error,
                                &mut revision,
                            )
                            .await?,
                        );
                        None
                    }
                };
                changes.extend(change);
            }
            if !changes.is_empty() || !raw.is_empty() {
                set_revision(scoped, tenant, revision).await?;
                let entries: Vec<Audit<'_>> = changes.iter().filter_map(Audit::of_change).collect();
                record(scoped, tenant, &entries, context, now, &self.outbox).await?;
                record_raw(scoped, tenant, &raw, context, now).await?;
            }
            Ok(changes)
        })
    }

    async fn expire_unreadable(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
        context: &ChangeContext,
    ) -> Result<usize, RegistryError> {
        // The store's own candidates query (columns 15-17: dead, the stored
        // payload, past the grace), first without locks to find the rows
        // that cannot be read, then each of those again under its row lock.
        let select = format!(
            "SELECT {COLUMNS}, lease_expires_at + make_interval(secs => ttl_seconds * 3) <= $2, \
                 {RAW_PAYLOAD}, false \
             FROM service_registry \
             WHERE tenant_id = $1 AND lease_expires_at <= $2"
        );
        let locked = format!("{select} AND service_name = $3 AND instance_id = $4 FOR UPDATE");
        let pool = self.pool.uncapped();
        in_tenant!(&pool, tenant, |scoped| {
            let rows = scoped.query(&select, &[&tenant.as_str(), &now]).await?;
            let unreadable: Vec<(String, String)> = rows
                .iter()
                .filter(|row| rows::instance(tenant, row).is_err())
                .map(|row| row_key(row, 0))
                .collect();
            if unreadable.is_empty() {
                return Ok(0);
            }
            let mut revision = lock_revision(scoped, tenant).await?;
            let mut audits = Vec::new();
            for (service, instance) in &unreadable {
                let Some(row) = scoped
                    .query_opt(&locked, &[&tenant.as_str(), &now, service, instance])
                    .await?
                else {
                    continue;
                };
                let Err(error) = rows::instance(tenant, &row) else {
                    continue;
                };
                let (audit, _kept) =
                    expire_unreadable(scoped, tenant, &row, &error, &mut revision, false).await?;
                audits.extend(audit);
            }
            if !audits.is_empty() {
                set_revision(scoped, tenant, revision).await?;
                record_raw(scoped, tenant, &audits, context, now).await?;
            }
            Ok(audits.len())
        })
    }

    async fn extend_leases(&self, floor: DateTime<Utc>) -> Result<u64, RegistryError> {
        let pool = self.pool.uncapped();
        let mut moved = 0u64;
        let mut first_error = None;
        for tenant in self.known_tenants().await? {
            // A lease move is no registry change: no revision, no audit row.
            let result = in_tenant!(&pool, &tenant, |scoped| {
                scoped
                    .execute(
                        "UPDATE service_registry \
                         SET lease_expires_at = $2::timestamptz + make_interval(secs => ttl_seconds) \
                         WHERE tenant_id = $1 \
                           AND lease_expires_at < $2::timestamptz + make_interval(secs => ttl_seconds)",
                        &[&tenant.as_str(), &floor],
                    )
                    .await
            });
            match result {
                Ok(n) => moved += n,
                Err(error) => {
                    // The other tenants are still moved; the error is
                    // returned so that the caller does not expire from the
                    // store while some leases may be short (it tries again;
                    // moving twice is harmless).
                    tracing::error!(
                        tenant = %tenant,
                        cause = %chain(&error),
                        "moving this tenant's leases failed"
                    );
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(moved),
        }
    }

    async fn record_metrics(
        &self,
        tenant: &TenantId,
        samples: &[MetricSample],
    ) -> Result<(), RegistryError> {
        if samples.is_empty() {
            return Ok(());
        }
        let services: Vec<&str> = samples.iter().map(|s| s.service.as_str()).collect();
        let instances: Vec<&str> = samples.iter().map(|s| s.instance.as_str()).collect();
        let statuses: Vec<&str> = samples.iter().map(|s| s.status.as_str()).collect();
        let response: Vec<Option<f64>> = samples
            .iter()
            .map(|s| s.metrics.response_time_ms())
            .collect();
        let cpu: Vec<Option<f64>> = samples.iter().map(|s| s.metrics.cpu_usage()).collect();
        let memory: Vec<Option<f64>> = samples.iter().map(|s| s.metrics.memory_usage()).collect();
        let errors: Vec<Option<f64>> = samples.iter().map(|s| s.metrics.error_rate()).collect();
        let at: Vec<DateTime<Utc>> = samples.iter().map(|s| s.recorded_at).collect();
        let params: [&(dyn ToSql + Sync); 9] = [
            &tenant.as_str(),
            &services,
            &instances,
            &statuses,
            &response,
            &cpu,
            &memory,
            &errors,
            &at,
        ];
        let pool = self.pool.uncapped();
        in_tenant!(&pool, tenant, |scoped| {
            scoped
                .execute(
                    "INSERT INTO health_metrics (tenant_id, service_name, instance_id, status, \
                         response_time_ms, cpu_usage, memory_usage, error_rate, recorded_at) \
                     SELECT $1, u.* FROM unnest($2::varchar[], $3::varchar[], $4::varchar[], \
                         $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::timestamptz[]) AS u",
                    &params,
                )
                .await?;
            Ok(())
        })
    }
}

/// Applies one judged expiry to a readable row the candidates query
/// selected (so its stored lease is not newer than the judged one): removes
/// it, or marks it critical with the judged lease times if it is not
/// critical already. Returns the change, which takes the next revision.
async fn apply_judged(
    scoped: &Scoped,
    tenant: &TenantId,
    stored: &Instance,
    judged: &JudgedLease,
    revision: &mut i64,
) -> Result<Option<LeaseChange>, DbError> {
    let keys: [&(dyn ToSql + Sync); 3] = [
        &tenant.as_str(),
        &stored.service_name().as_str(),
        &stored.instance_id().as_str(),
    ];
    if judged.remove {
        *revision += 1;
        scoped
            .execute(
                "DELETE FROM service_registry \
                 WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3",
                &keys,
            )
            .await?;
        return Ok(Some(LeaseChange::Removed(
            stored.with_revision(rows::revision_of(*revision)?),
        )));
    }
    if stored.status() == HealthStatus::Critical {
        return Ok(None);
    }
    *revision += 1;
    let sql = format!(
        "UPDATE service_registry \
         SET status = 'critical', last_heartbeat = $4, lease_expires_at = $5, revision = $6 \
         WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3 \
         RETURNING {COLUMNS}"
    );
    let row = scoped
        .query_one(
            &sql,
            &[
                keys[0],
                keys[1],
                keys[2],
                &judged.lease.last_heartbeat,
                &judged.lease.expires_at,
                &*revision,
            ],
        )
        .await?;
    Ok(Some(LeaseChange::Expired {
        instance: rows::instance(tenant, &row)?,
        previous_status: stored.status(),
    }))
}

/// [`apply_judged`] for a row that cannot be read: removed, or marked
/// critical (with the judged lease times) if it is not already, like the
/// store's own reaper does with such rows ([`RawAudit`], no event).
async fn apply_judged_unreadable(
    scoped: &Scoped,
    tenant: &TenantId,
    row: &Row,
    judged: &JudgedLease,
    error: &RegistryError,
    revision: &mut i64,
) -> Result<Option<RawAudit>, DbError> {
    let (service, instance) = row_key(row, 0);
    let status: String = row.try_get(10)?;
    let kind = if judged.remove {
        EventKind::Expired
    } else if status != HealthStatus::Critical.as_str() {
        EventKind::StatusChanged
    } else {
        return Ok(None);
    };
    tracing::error!(
        tenant = %tenant,
        service,
        instance,
        cause = %chain(error),
        "lease of a stored instance that cannot be read ran out; it is expired like any other, without an event"
    );
    *revision += 1;
    let payload: String = if judged.remove {
        scoped
            .execute(
                "DELETE FROM service_registry \
                 WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3",
                &[&tenant.as_str(), &service, &instance],
            )
            .await?;
        row.try_get(15)?
    } else {
        let sql = format!(
            "UPDATE service_registry \
             SET status = 'critical', last_heartbeat = $4, lease_expires_at = $5, revision = $6 \
             WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3 \
             RETURNING {RAW_PAYLOAD}"
        );
        scoped
            .query_one(
                &sql,
                &[
                    &tenant.as_str(),
                    &service,
                    &instance,
                    &judged.lease.last_heartbeat,
                    &judged.lease.expires_at,
                    &*revision,
                ],
            )
            .await?
            .try_get(0)?
    };
    Ok(Some(RawAudit {
        kind,
        service,
        instance,
        revision: *revision,
        payload,
    }))
}
