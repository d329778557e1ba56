//! `PgTenants`: hub-core's `TenantDirectory` on PostgreSQL (tenants, API keys, the admin audit, usage per day; schema V6).
//!
//! Where `app.tenant_id` is set: every statement on `hub_api_keys`,
//! `hub_admin_audit` and `hub_usage_daily` (row-level security, FORCE) runs
//! in a transaction scoped to the tenant it is about ([`in_tenant!`] or
//! [`single_statement`]), and so do the admin changes to `hub_tenants`, so
//! that each change and its audit row commit together. `hub_tenants` itself
//! has no row-level security (ids, names, states and limits only; V6 says
//! why), so reading it takes no tenant. Two reads cross tenants, each
//! through a SECURITY DEFINER function that answers only what it must: the
//! key lookup by digest (`hub_key_grant`), made before the tenant is known,
//! and the audit pruning by age (`hub_audit_prune`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use hub_core::tenancy::{
    ApiKeyRecord, AuditEntry, KeyGrant, KeyId, NewKey, Scopes, Tenant, TenantDirectory,
    TenantLimits, TenantPatch, TenantSpec, TenantState, UsageCounts, UsageDay, UsageDelta,
    UsageNotStored,
};
use hub_core::{ChangeContext, RegistryError, TenantId};
use serde_json::{Value, json};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::error::{DbError, from_db};
use super::gate::Gate;
use super::scoped::{Scoped, in_tenant, single_statement};
use super::store::PgStore;

/// The columns of a tenant, in the order [`tenant_of`] reads them.
const TENANT_COLUMNS: &str = "tenant_id, coalesce(display_name, tenant_id), state, max_instances, \
                              max_watchers, rate, burst, created_at, updated_at";

/// The columns of a key, in the order [`key_of`] reads them (never the
/// digest).
const KEY_COLUMNS: &str = "key_id, tenant_id, name, scopes, expires_at, created_by, created_at, \
                           last_used_at, revoked_at";

/// Audit rows one pruning call deletes: a short transaction each.
const PRUNE_BATCH: i32 = 5_000;

/// Tenants, keys, audit and usage in PostgreSQL. Shares the registry
/// store's pool (and its per-tenant connection shares). Cheap to clone.
#[derive(Clone)]
pub struct PgTenants {
    pool: Gate,
}

impl std::fmt::Debug for PgTenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTenants").finish_non_exhaustive()
    }
}

impl PgTenants {
    /// The directory over `store`'s pool.
    pub fn new(store: &PgStore) -> Self {
        Self {
            pool: store.pool.clone(),
        }
    }
}

/// A stored value that breaks the domain rules (written by hand, say): the
/// server's fault to report, not the caller's input.
fn corrupt(what: &str, cause: impl std::fmt::Display) -> DbError {
    DbError::Registry(RegistryError::Unexpected(
        format!("stored {what} cannot be read: {cause}").into(),
    ))
}

fn limit(row: &Row, index: usize) -> Result<Option<u32>, DbError> {
    let value: Option<i32> = row.try_get(index)?;
    value
        .map(|v| u32::try_from(v).map_err(|e| corrupt("tenant limit", e)))
        .transpose()
}

fn tenant_of(row: &Row) -> Result<Tenant, DbError> {
    let id: String = row.try_get(0)?;
    let state: String = row.try_get(2)?;
    Ok(Tenant {
        id: TenantId::parse(&id).map_err(|e| corrupt("tenant id", e))?,
        display_name: row.try_get(1)?,
        state: TenantState::parse(&state).map_err(|e| corrupt("tenant state", e))?,
        limits: TenantLimits {
            max_instances: limit(row, 3)?,
            max_watchers: limit(row, 4)?,
            rate: limit(row, 5)?,
            burst: limit(row, 6)?,
        },
        created_at: row.try_get(7)?,
        updated_at: row.try_get(8)?,
    })
}

fn key_of(row: &Row) -> Result<ApiKeyRecord, DbError> {
    let id: String = row.try_get(0)?;
    let tenant: String = row.try_get(1)?;
    Ok(ApiKeyRecord {
        id: KeyId::parse(&id).map_err(|e| corrupt("key id", e))?,
        tenant: TenantId::parse(&tenant).map_err(|e| corrupt("tenant id", e))?,
        name: row.try_get(2)?,
        scopes: Scopes::from_bits(row.try_get(3)?).map_err(|e| corrupt("key scopes", e))?,
        expires_at: row.try_get(4)?,
        created_by: row.try_get(5)?,
        created_at: row.try_get(6)?,
        last_used_at: row.try_get(7)?,
        revoked_at: row.try_get(8)?,
    })
}

fn counter(row: &Row, index: usize) -> Result<u64, DbError> {
    let value: i64 = row.try_get(index)?;
    u64::try_from(value).map_err(|e| corrupt("usage count", e))
}

fn stored_count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn stored_limit(value: Option<u32>) -> Option<i32> {
    value.map(|v| i32::try_from(v).unwrap_or(i32::MAX))
}

fn not_found(tenant: &TenantId) -> DbError {
    DbError::Registry(RegistryError::not_found(format!("tenant '{tenant}'")))
}

/// Writes the audit row of an admin change, in the change's transaction
/// (scoped to `tenant`, which row-level security checks the row against).
async fn audit(
    scoped: &Scoped,
    tenant: &TenantId,
    action: &str,
    target: &str,
    ctx: &ChangeContext,
    details: Value,
) -> Result<(), DbError> {
    scoped
        .execute(
            "INSERT INTO hub_admin_audit (tenant_id, action, target, actor, request_id, details) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &tenant.as_str(),
                &action,
                &target,
                &ctx.actor(),
                &ctx.request_id(),
                &details,
            ],
        )
        .await?;
    Ok(())
}

#[async_trait]
impl TenantDirectory for PgTenants {
    async fn create_tenant(
        &self,
        id: &TenantId,
        spec: TenantSpec,
        ctx: &ChangeContext,
    ) -> Result<Tenant, RegistryError> {
        spec.validate()?;
        let name = spec.display_name.unwrap_or_else(|| id.to_string());
        let state = spec.state.unwrap_or(TenantState::Active);
        let limits = spec.limits;
        let sql = format!(
            "INSERT INTO hub_tenants (tenant_id, display_name, state, max_instances, max_watchers, \
                 rate, burst) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant_id) DO NOTHING RETURNING {TENANT_COLUMNS}"
        );
        in_tenant!(&self.pool, id, |scoped| {
            let row = scoped
                .query_opt(
                    &sql,
                    &[
                        &id.as_str(),
                        &name,
                        &state.as_str(),
                        &stored_limit(limits.max_instances),
                        &stored_limit(limits.max_watchers),
                        &stored_limit(limits.rate),
                        &stored_limit(limits.burst),
                    ],
                )
                .await?
                .ok_or_else(|| {
                    DbError::Registry(RegistryError::Conflict(format!(
                        "tenant '{id}' already exists"
                    )))
                })?;
            let tenant = tenant_of(&row)?;
            audit(
                scoped,
                id,
                "tenant.created",
                id.as_str(),
                ctx,
                tenant.audit_details(),
            )
            .await?;
            Ok(tenant)
        })
    }

    async fn record_tenant(&self, id: &TenantId) -> Result<Tenant, RegistryError> {
        if let Some(tenant) = self.tenant(id).await? {
            return Ok(tenant);
        }
        let sql = format!(
            "INSERT INTO hub_tenants (tenant_id, display_name) VALUES ($1, $1) \
             ON CONFLICT (tenant_id) DO NOTHING RETURNING {TENANT_COLUMNS}"
        );
        let connection = self.pool.internal().await?;
        let inserted = connection
            .query(&sql, &[&id.as_str()])
            .await
            .map_err(from_db)?;
        // Given back before reading again: holding one connection while
        // waiting for a second would deadlock the pool when many first uses
        // arrive at once.
        drop(connection);
        match inserted.first() {
            Some(row) => tenant_of(row).map_err(from_db),
            // Recorded by someone else meanwhile (committed before our
            // insert gave way, so this read sees it).
            None => self
                .tenant(id)
                .await?
                .ok_or_else(|| RegistryError::Conflict(format!("tenant '{id}' was just deleted"))),
        }
    }

    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, RegistryError> {
        let connection = self.pool.internal().await?;
        let rows = connection
            .query(
                &format!("SELECT {TENANT_COLUMNS} FROM hub_tenants WHERE tenant_id = $1"),
                &[&id.as_str()],
            )
            .await
            .map_err(from_db)?;
        rows.first().map(tenant_of).transpose().map_err(from_db)
    }

    async fn tenants(&self) -> Result<Vec<Tenant>, RegistryError> {
        let connection = self.pool.internal().await?;
        let rows = connection
            .query(
                &format!("SELECT {TENANT_COLUMNS} FROM hub_tenants ORDER BY tenant_id"),
                &[],
            )
            .await
            .map_err(from_db)?;
        rows.iter()
            .map(tenant_of)
            .collect::<Result<_, _>>()
            .map_err(from_db)
    }

    async fn update_tenant(
        &self,
        id: &TenantId,
        patch: TenantPatch,
        ctx: &ChangeContext,
    ) -> Result<Tenant, RegistryError> {
        patch.validate()?;
        let limits = patch.limits.unwrap_or_default();
        let sql = format!(
            "UPDATE hub_tenants SET display_name = coalesce($2, display_name, tenant_id), \
                 state = coalesce($3, state), \
                 max_instances = CASE WHEN $4 THEN $5 ELSE max_instances END, \
                 max_watchers = CASE WHEN $4 THEN $6 ELSE max_watchers END, \
                 rate = CASE WHEN $4 THEN $7 ELSE rate END, \
                 burst = CASE WHEN $4 THEN $8 ELSE burst END, \
                 updated_at = now() \
             WHERE tenant_id = $1 RETURNING {TENANT_COLUMNS}"
        );
        in_tenant!(&self.pool, id, |scoped| {
            // The state before, under the row lock the update then holds.
            let before = scoped
                .query_opt(
                    "SELECT state FROM hub_tenants WHERE tenant_id = $1 FOR UPDATE",
                    &[&id.as_str()],
                )
                .await?
                .ok_or_else(|| not_found(id))?;
            let before: String = before.try_get(0)?;
            let row = scoped
                .query_one(
                    &sql,
                    &[
                        &id.as_str(),
                        &patch.display_name,
                        &patch.state.map(TenantState::as_str),
                        &patch.limits.is_some(),
                        &stored_limit(limits.max_instances),
                        &stored_limit(limits.max_watchers),
                        &stored_limit(limits.rate),
                        &stored_limit(limits.burst),
                    ],
                )
                .await?;
            let tenant = tenant_of(&row)?;
            let before = TenantState::parse(&before).map_err(|e| corrupt("tenant state", e))?;
            let action = tenant.state.update_action(before);
            audit(scoped, id, action, id.as_str(), ctx, patch.audit_details()).await?;
            Ok(tenant)
        })
    }

    async fn delete_tenant(&self, id: &TenantId, ctx: &ChangeContext) -> Result<(), RegistryError> {
        in_tenant!(&self.pool, id, |scoped| {
            let deleted = scoped
                .execute(
                    "DELETE FROM hub_tenants WHERE tenant_id = $1",
                    &[&id.as_str()],
                )
                .await?;
            if deleted == 0 {
                return Err(not_found(id));
            }
            // Keys stop working with this commit; usage goes with them. The
            // audit rows stay until the retention prunes them.
            scoped
                .execute(
                    "DELETE FROM hub_api_keys WHERE tenant_id = $1",
                    &[&id.as_str()],
                )
                .await?;
            scoped
                .execute(
                    "DELETE FROM hub_usage_daily WHERE tenant_id = $1",
                    &[&id.as_str()],
                )
                .await?;
            audit(scoped, id, "tenant.deleted", id.as_str(), ctx, json!({})).await?;
            Ok(())
        })
    }

    async fn create_key(
        &self,
        tenant: &TenantId,
        key: NewKey,
        ctx: &ChangeContext,
    ) -> Result<ApiKeyRecord, RegistryError> {
        key.validate()?;
        let created_by: String = key.created_by.chars().take(128).collect();
        let sql = format!(
            "INSERT INTO hub_api_keys (tenant_id, key_id, digest, name, scopes, expires_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLUMNS}"
        );
        in_tenant!(&self.pool, tenant, |scoped| {
            // A share lock on the tenant row: a deletion of the tenant
            // waits for this key (and then deletes it), or this finds the
            // tenant gone.
            scoped
                .query_opt(
                    "SELECT 1 FROM hub_tenants WHERE tenant_id = $1 FOR SHARE",
                    &[&tenant.as_str()],
                )
                .await?
                .ok_or_else(|| not_found(tenant))?;
            let row = scoped
                .query_one(
                    &sql,
                    &[
                        &tenant.as_str(),
                        &key.id.as_str(),
                        &&key.digest[..],
                        &key.name,
                        &key.scopes.bits(),
                        &key.expires_at,
                        &created_by,
                    ],
                )
                .await?;
            let record = key_of(&row)?;
            audit(
                scoped,
                tenant,
                "key.created",
                record.id.as_str(),
                ctx,
                json!({"name": record.name, "scopes": record.scopes.to_vec(), "expires_at": record.expires_at}),
            )
            .await?;
            Ok(record)
        })
    }

    async fn keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, RegistryError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM hub_api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id"
        );
        let rows = single_statement(&self.pool, tenant, &sql, &[&tenant.as_str()]).await?;
        rows.iter()
            .map(key_of)
            .collect::<Result<_, _>>()
            .map_err(from_db)
    }

    async fn revoke_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        ctx: &ChangeContext,
    ) -> Result<ApiKeyRecord, RegistryError> {
        let revoke = format!(
            "UPDATE hub_api_keys SET revoked_at = now() \
             WHERE tenant_id = $1 AND key_id = $2 AND revoked_at IS NULL RETURNING {KEY_COLUMNS}"
        );
        let current =
            format!("SELECT {KEY_COLUMNS} FROM hub_api_keys WHERE tenant_id = $1 AND key_id = $2");
        in_tenant!(&self.pool, tenant, |scoped| {
            let params: [&(dyn ToSql + Sync); 2] = [&tenant.as_str(), &id.as_str()];
            if let Some(row) = scoped.query_opt(&revoke, &params).await? {
                let record = key_of(&row)?;
                audit(
                    scoped,
                    tenant,
                    "key.revoked",
                    id.as_str(),
                    ctx,
                    json!({"name": record.name}),
                )
                .await?;
                return Ok(record);
            }
            // Already revoked (answered unchanged), or no such key.
            match scoped.query_opt(&current, &params).await? {
                Some(row) => key_of(&row),
                None => Err(DbError::Registry(RegistryError::not_found(format!(
                    "key '{id}'"
                )))),
            }
        })
    }

    async fn key_grant(&self, digest: &[u8; 32]) -> Result<Option<KeyGrant>, RegistryError> {
        let connection = self.pool.internal().await?;
        let client = connection.client().map_err(from_db)?;
        let rows = connection
            .bounded(async {
                let statement = client
                    .prepare_cached(
                        "SELECT key_id, tenant_id, scopes, expires_at, revoked \
                         FROM hub_key_grant($1)",
                    )
                    .await?;
                client.query(&statement, &[&&digest[..]]).await
            })
            .await
            .map_err(from_db)?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let grant = (|| {
            let id: String = row.try_get(0)?;
            let tenant: String = row.try_get(1)?;
            Ok::<_, DbError>(KeyGrant {
                id: KeyId::parse(&id).map_err(|e| corrupt("key id", e))?,
                tenant: TenantId::parse(&tenant).map_err(|e| corrupt("tenant id", e))?,
                scopes: Scopes::from_bits(row.try_get(2)?).map_err(|e| corrupt("key scopes", e))?,
                expires_at: row.try_get(3)?,
                revoked: row.try_get(4)?,
            })
        })()
        .map_err(from_db)?;
        Ok(Some(grant))
    }

    async fn touch_keys(
        &self,
        used: &[(TenantId, KeyId, DateTime<Utc>)],
    ) -> Result<(), RegistryError> {
        // One statement per tenant, with the latest use of each key (an
        // UPDATE ... FROM with two rows for one key would apply either).
        let mut by_tenant: BTreeMap<&TenantId, BTreeMap<&str, DateTime<Utc>>> = BTreeMap::new();
        for (tenant, id, at) in used {
            let latest = by_tenant
                .entry(tenant)
                .or_default()
                .entry(id.as_str())
                .or_insert(*at);
            *latest = (*latest).max(*at);
        }
        let mut first_error = None;
        for (tenant, keys) in by_tenant {
            let ids: Vec<&str> = keys.keys().copied().collect();
            let ats: Vec<DateTime<Utc>> = keys.values().copied().collect();
            let touched = single_statement(
                &self.pool,
                tenant,
                "UPDATE hub_api_keys k \
                 SET last_used_at = GREATEST(coalesce(k.last_used_at, u.at), u.at) \
                 FROM unnest($2::varchar[], $3::timestamptz[]) AS u(id, at) \
                 WHERE k.tenant_id = $1 AND k.key_id = u.id",
                &[&tenant.as_str(), &ids, &ats],
            )
            .await;
            if let Err(error) = touched {
                tracing::warn!(tenant = %tenant, %error, "last use of keys not recorded");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn add_usage(&self, deltas: Vec<UsageDelta>) -> Result<(), UsageNotStored> {
        // Merged per tenant and day first: one INSERT ... ON CONFLICT may
        // not touch a row twice.
        let mut merged: BTreeMap<TenantId, BTreeMap<NaiveDate, UsageCounts>> = BTreeMap::new();
        for delta in deltas {
            merged
                .entry(delta.tenant)
                .or_default()
                .entry(delta.day)
                .or_default()
                .add(&delta.counts);
        }
        let mut failed = Vec::new();
        let mut first_error = None;
        for (tenant, days) in merged {
            let column = |f: fn(&UsageCounts) -> u64| -> Vec<i64> {
                days.values().map(|c| stored_count(f(c))).collect()
            };
            let dates: Vec<NaiveDate> = days.keys().copied().collect();
            let stored = single_statement(
                &self.pool,
                &tenant,
                "INSERT INTO hub_usage_daily AS d (tenant_id, day, requests_read, requests_write, \
                     requests_admin, registrations, heartbeats, events_published, peak_instances) \
                 SELECT $1, u.* FROM unnest($2::date[], $3::bigint[], $4::bigint[], $5::bigint[], \
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[]) AS u \
                 ON CONFLICT (tenant_id, day) DO UPDATE SET \
                     requests_read = d.requests_read + EXCLUDED.requests_read, \
                     requests_write = d.requests_write + EXCLUDED.requests_write, \
                     requests_admin = d.requests_admin + EXCLUDED.requests_admin, \
                     registrations = d.registrations + EXCLUDED.registrations, \
                     heartbeats = d.heartbeats + EXCLUDED.heartbeats, \
                     events_published = d.events_published + EXCLUDED.events_published, \
                     peak_instances = GREATEST(d.peak_instances, EXCLUDED.peak_instances)",
                &[
                    &tenant.as_str(),
                    &dates,
                    &column(|c| c.requests_read),
                    &column(|c| c.requests_write),
                    &column(|c| c.requests_admin),
                    &column(|c| c.registrations),
                    &column(|c| c.heartbeats),
                    &column(|c| c.events_published),
                    &column(|c| c.peak_instances),
                ],
            )
            .await;
            if let Err(error) = stored {
                failed.extend(days.into_iter().map(|(day, counts)| UsageDelta {
                    tenant: tenant.clone(),
                    day,
                    counts,
                }));
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            None => Ok(()),
            Some(error) => Err(UsageNotStored {
                deltas: failed,
                error,
            }),
        }
    }

    async fn usage(
        &self,
        tenant: &TenantId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<UsageDay>, RegistryError> {
        let rows = single_statement(
            &self.pool,
            tenant,
            "SELECT day, requests_read, requests_write, requests_admin, registrations, heartbeats, \
                 events_published, peak_instances \
             FROM hub_usage_daily WHERE tenant_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day",
            &[&tenant.as_str(), &from, &to],
        )
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UsageDay {
                    day: row.try_get(0)?,
                    counts: UsageCounts {
                        requests_read: counter(row, 1)?,
                        requests_write: counter(row, 2)?,
                        requests_admin: counter(row, 3)?,
                        registrations: counter(row, 4)?,
                        heartbeats: counter(row, 5)?,
                        events_published: counter(row, 6)?,
                        peak_instances: counter(row, 7)?,
                    },
                })
            })
            .collect::<Result<_, DbError>>()
            .map_err(from_db)
    }

    async fn audit(&self, tenant: &TenantId, limit: u32) -> Result<Vec<AuditEntry>, RegistryError> {
        let limit = i64::from(limit);
        let rows = single_statement(
            &self.pool,
            tenant,
            "SELECT tenant_id, action, target, actor, request_id, at, details \
             FROM hub_admin_audit WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2",
            &[&tenant.as_str(), &limit],
        )
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0)?;
                Ok(AuditEntry {
                    tenant: TenantId::parse(&id).map_err(|e| corrupt("tenant id", e))?,
                    action: row.try_get(1)?,
                    target: row.try_get(2)?,
                    actor: row.try_get(3)?,
                    request_id: row.try_get(4)?,
                    at: row.try_get(5)?,
                    details: row.try_get(6)?,
                })
            })
            .collect::<Result<_, DbError>>()
            .map_err(from_db)
    }

    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, RegistryError> {
        let mut total = 0u64;
        loop {
            let connection = self.pool.internal().await?;
            let row = connection
                .query_one("SELECT hub_audit_prune($1, $2)", &[&before, &PRUNE_BATCH])
                .await
                .map_err(from_db)?;
            let pruned: i64 = row.try_get(0).map_err(|e| from_db(e.into()))?;
            total += pruned.unsigned_abs();
            if pruned < i64::from(PRUNE_BATCH) {
                return Ok(total);
            }
        }
    }
}
