//! `PgStore`: hub-core's `RegistryStore` on PostgreSQL; every query runs in a tenant-scoped transaction.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::Pool;
use hub_core::ports::{LeaseChange, ListPage, RegistryStore, Renewed, ServiceSnapshot, Upserted};
use hub_core::{
    ChangeContext, EventKind, HealthStatus, Heartbeat, Instance, InstanceId, LeaseState,
    ListCursor, ListQuery, Registration, RegistryError, Revision, ServiceName, Sinks, TenantId,
};
use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::config::PgConfig;
use super::error::DbError;
use super::error::{from_pg, from_pool};
use super::rows::{self, COLUMNS, revision_of, stored};
use super::scoped::{Scoped, in_tenant, single_statement};

/// The registry store on PostgreSQL. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgStore {
    pub(super) pool: Pool,
    outbox: Arc<OutboxWrites>,
}

/// What every change writes to the outbox: nothing when no sink is
/// configured, else its event, tagged with `origin`, and one due row per sink
/// in `sinks` (their bits).
#[derive(Debug, Default)]
struct OutboxWrites {
    sinks: Vec<i16>,
    origin: Option<String>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("status", &self.pool.status())
            .finish()
    }
}

/// The advisory lock of the lease reaper (an arbitrary constant).
const REAPER_LOCK: i64 = 0x00C3_7A11_4EA9;

/// The tenant's current revision (no row: it never changed anything).
const REVISION: &str = "SELECT revision FROM tenant_state WHERE tenant_id = $1";

/// One change as recorded: its audit row and, when sinks are configured, its
/// outbox row (the event). `instance` is the record after the change (before
/// it, for removals) and carries the change's revision.
struct Audit<'a> {
    kind: EventKind,
    instance: &'a Instance,
    previous_status: Option<HealthStatus>,
}

impl PgStore {
    /// A store over a new pool (connections open on first use).
    pub fn new(config: &PgConfig) -> Result<Self, RegistryError> {
        Ok(Self {
            pool: config.pool()?,
            outbox: Arc::new(OutboxWrites::default()),
        })
    }

    /// The same store, writing every change's event to the outbox for
    /// `sinks`, in the change's transaction, tagged as made through the
    /// replica `origin` (at most 64 characters). With no sink, nothing is
    /// written to the outbox (the default).
    pub fn with_outbox(mut self, sinks: Sinks, origin: impl Into<String>) -> Self {
        self.outbox = Arc::new(OutboxWrites {
            sinks: sinks.iter().map(|s| i16::from(s.bit())).collect(),
            origin: Some(origin.into().chars().take(64).collect()),
        });
        self
    }

    /// Tenants that have ever written, from `hub_tenants` (ids only, no tenant
    /// data, no row-level security). The reaper visits each in its own
    /// tenant-scoped transaction.
    async fn known_tenants(&self) -> Result<Vec<TenantId>, RegistryError> {
        let client = self.pool.get().await.map_err(from_pool)?;
        let rows = client
            .query("SELECT tenant_id FROM hub_tenants ORDER BY tenant_id", &[])
            .await
            .map_err(from_pg)?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0).map_err(from_pg)?;
                TenantId::parse(id).map_err(|e| RegistryError::Unexpected(Box::new(e)))
            })
            .collect()
    }
}

/// Takes the tenant's revision row lock and returns the current revision
/// (zero for a tenant that never changed anything). Every changing
/// transaction takes this lock first, so changes of one tenant are ordered
/// and two transactions never wait on each other in opposite orders.
async fn lock_revision(scoped: &Scoped, tenant: &TenantId) -> Result<i64, DbError> {
    bump_revision(scoped, tenant, 0).await
}

/// Takes the tenant's revision row lock and adds `by` to the revision in one
/// statement; returns the new revision. A tenant seen for the first time is
/// also entered in `hub_tenants`, whichever change comes first, so the lease
/// reaper visits every tenant that has a revision row.
async fn bump_revision(scoped: &Scoped, tenant: &TenantId, by: i64) -> Result<i64, DbError> {
    let row = scoped
        .query_one(
            "INSERT INTO tenant_state AS s (tenant_id, revision) VALUES ($1, $2) \
             ON CONFLICT (tenant_id) DO UPDATE SET revision = s.revision + $2 \
             RETURNING revision, (xmax = 0) AS created",
            &[&tenant.as_str(), &by],
        )
        .await?;
    if row.try_get::<_, bool>(1)? {
        scoped
            .execute(
                "INSERT INTO hub_tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&tenant.as_str()],
            )
            .await?;
    }
    Ok(row.try_get(0)?)
}

async fn set_revision(scoped: &Scoped, tenant: &TenantId, revision: i64) -> Result<(), DbError> {
    scoped
        .execute(
            "UPDATE tenant_state SET revision = $2 WHERE tenant_id = $1",
            &[&tenant.as_str(), &revision],
        )
        .await?;
    Ok(())
}

/// Writes the audit rows of changes and, when sinks are configured, their
/// outbox rows, in the caller's transaction (one statement).
async fn record(
    scoped: &Scoped,
    tenant: &TenantId,
    entries: &[Audit<'_>],
    context: &ChangeContext,
    at: DateTime<Utc>,
    outbox: &OutboxWrites,
) -> Result<(), DbError> {
    if entries.is_empty() {
        return Ok(());
    }
    let revisions: Vec<i64> = entries
        .iter()
        .map(|e| stored(e.instance.revision()))
        .collect();
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    let services: Vec<&str> = entries
        .iter()
        .map(|e| e.instance.service_name().as_str())
        .collect();
    let instances: Vec<&str> = entries
        .iter()
        .map(|e| e.instance.instance_id().as_str())
        .collect();
    let payloads: Vec<Value> = entries.iter().map(|e| rows::payload(e.instance)).collect();
    let previous: Vec<Option<&str>> = entries
        .iter()
        .map(|e| e.previous_status.map(HealthStatus::as_str))
        .collect();
    let registered: Vec<DateTime<Utc>> =
        entries.iter().map(|e| e.instance.registered_at()).collect();
    let heartbeats: Vec<DateTime<Utc>> = entries
        .iter()
        .map(|e| e.instance.last_heartbeat())
        .collect();
    scoped
        .execute(
            "WITH u AS ( \
                 SELECT * FROM unnest($2::bigint[], $3::varchar[], $4::varchar[], $5::varchar[], \
                     $6::jsonb[], $12::varchar[], $13::timestamptz[], $14::timestamptz[]) \
                     AS u(revision, kind, service, instance, payload, previous, registered, heartbeat) \
             ), audit AS ( \
                 INSERT INTO coordination_history \
                     (tenant_id, revision, event_type, service_name, instance_id, actor, request_id, occurred_at, payload) \
                 SELECT $1, u.revision, u.kind, u.service, u.instance, $7, $8, $9, u.payload FROM u \
             ) \
             , event AS ( \
                 SELECT nextval('hub_outbox_id_seq') AS id, u.* FROM u \
                 WHERE cardinality($11::smallint[]) > 0 \
             ), outbox AS ( \
                 INSERT INTO hub_outbox (id, tenant_id, revision, event_type, service_name, instance_id, \
                     occurred_at, previous_status, payload, registered_at, last_heartbeat, origin) \
                 SELECT e.id, $1, e.revision, e.kind, e.service, e.instance, $9, e.previous, e.payload, \
                     e.registered, e.heartbeat, $10 \
                 FROM event e \
             ) \
             INSERT INTO hub_outbox_due (sink, id, tenant_id) \
             SELECT s, event.id, $1 FROM event CROSS JOIN unnest($11::smallint[]) AS s",
            &[
                &tenant.as_str(),
                &revisions,
                &kinds,
                &services,
                &instances,
                &payloads,
                &context.actor(),
                &context.request_id(),
                &at,
                &outbox.origin,
                &outbox.sinks,
                &previous,
                &registered,
                &heartbeats,
            ],
        )
        .await?;
    Ok(())
}

fn instances(
    tenant: &TenantId,
    rows: &[tokio_postgres::Row],
) -> Result<Vec<Instance>, RegistryError> {
    rows.iter().map(|row| rows::instance(tenant, row)).collect()
}

#[async_trait]
impl RegistryStore for PgStore {
    async fn upsert(
        &self,
        tenant: &TenantId,
        registration: Registration,
        now: DateTime<Utc>,
        context: &ChangeContext,
    ) -> Result<Upserted, RegistryError> {
        let lease = now + Duration::seconds(i64::from(registration.ttl_seconds()));
        let metadata = Value::Object(registration.metadata().clone());
        let registration = &registration;
        let t = tenant.as_str();
        let service = registration.service_name().as_str();
        let instance = registration.instance_id().as_str();
        let host = registration.host().as_str();
        let port = i32::from(registration.port());
        let protocol = registration.protocol().as_str();
        let health = registration.health_endpoint();
        let version = registration.version();
        let tags = registration.tags();
        let ttl = i32::try_from(registration.ttl_seconds()).unwrap_or(i32::MAX);
        let payload = rows::registration_payload(registration, HealthStatus::Passing, lease);
        let actor = context.actor();
        let request_id = context.request_id();
        let outbox = &*self.outbox;
        let params: [&(dyn ToSql + Sync); 18] = [
            &t,
            &service,
            &instance,
            &host,
            &port,
            &protocol,
            &health,
            &version,
            &tags,
            &metadata,
            &ttl,
            &now,
            &lease,
            &actor,
            &request_id,
            &payload,
            &outbox.origin,
            &outbox.sinks,
        ];
        // One statement does the whole change, in lock order: it bumps (and
        // so locks) the tenant's revision row first, enters a new tenant in
        // hub_tenants, writes the instance, and writes the audit row and the
        // outbox row (when sinks are configured), which read `created` from
        // the upsert's RETURNING. It is what
        // `bump_revision` does, inlined, and it runs as a pipelined
        // single-statement transaction: registration is the hottest write.
        let rows = single_statement(
            &self.pool,
            tenant,
            "WITH rev AS ( \
                         INSERT INTO tenant_state AS s (tenant_id, revision) VALUES ($1, 1) \
                         ON CONFLICT (tenant_id) DO UPDATE SET revision = s.revision + 1 \
                         RETURNING revision, (xmax = 0) AS created \
                     ), known AS ( \
                         INSERT INTO hub_tenants (tenant_id) SELECT $1 FROM rev WHERE rev.created \
                         ON CONFLICT DO NOTHING \
                     ), up AS ( \
                         INSERT INTO service_registry (tenant_id, service_name, instance_id, host, port, \
                             protocol, health_endpoint, version, tags, metadata, ttl_seconds, status, \
                             registered_at, last_heartbeat, lease_expires_at, revision) \
                         SELECT $1, $2::varchar, $3::varchar, $4::varchar, $5::int, $6::varchar, \
                             $7::varchar, $8::varchar, $9::text[], $10::jsonb, $11::int, 'passing', \
                             $12::timestamptz, $12::timestamptz, $13::timestamptz, rev.revision \
                         FROM rev \
                         ON CONFLICT (tenant_id, service_name, instance_id) DO UPDATE SET \
                             host = EXCLUDED.host, port = EXCLUDED.port, protocol = EXCLUDED.protocol, \
                             health_endpoint = EXCLUDED.health_endpoint, version = EXCLUDED.version, \
                             tags = EXCLUDED.tags, metadata = EXCLUDED.metadata, \
                             ttl_seconds = EXCLUDED.ttl_seconds, status = 'passing', \
                             last_heartbeat = EXCLUDED.last_heartbeat, \
                             lease_expires_at = EXCLUDED.lease_expires_at, revision = EXCLUDED.revision \
                         RETURNING registered_at, (xmax = 0) AS created, revision \
                     ), audit AS ( \
                         INSERT INTO coordination_history (tenant_id, revision, event_type, service_name, \
                             instance_id, actor, request_id, occurred_at, payload) \
                         SELECT $1, up.revision, CASE WHEN up.created THEN 'service.registered' \
                                              ELSE 'service.updated' END, \
                                $2, $3, $14::varchar, $15::varchar, $12, $16::jsonb \
                         FROM up \
                     ), event AS ( \
                         SELECT nextval('hub_outbox_id_seq') AS id, up.revision, up.created, \
                                up.registered_at \
                         FROM up WHERE cardinality($18::smallint[]) > 0 \
                     ), outbox AS ( \
                         INSERT INTO hub_outbox (id, tenant_id, revision, event_type, service_name, \
                             instance_id, occurred_at, previous_status, payload, registered_at, \
                             last_heartbeat, origin) \
                         SELECT e.id, $1, e.revision, CASE WHEN e.created THEN 'service.registered' \
                                              ELSE 'service.updated' END, \
                                $2, $3, $12, NULL, $16::jsonb, e.registered_at, $12, $17::varchar \
                         FROM event e \
                     ), due AS ( \
                         INSERT INTO hub_outbox_due (sink, id, tenant_id) \
                         SELECT s, event.id, $1 FROM event CROSS JOIN unnest($18::smallint[]) AS s \
                     ) \
                     SELECT registered_at, created, revision FROM up",
            &params,
        )
        .await?;
        let row = rows.first().ok_or_else(|| {
            RegistryError::Unexpected("the registration statement returned no row".into())
        })?;
        let registered_at: DateTime<Utc> = row.try_get(0).map_err(from_pg)?;
        let created: bool = row.try_get(1).map_err(from_pg)?;
        let revision: i64 = row.try_get(2).map_err(from_pg)?;
        let instance = Instance::registered(
            tenant.clone(),
            registration.clone(),
            now,
            Some(registered_at),
            revision_of(revision)?,
        );
        Ok(Upserted { instance, created })
    }

    async fn service(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
    ) -> Result<ServiceSnapshot, RegistryError> {
        // One statement answers both: the tenant's revision in column 0 and
        // the instances after it. The outer join keeps one row even when the
        // service has no instance (its columns then are NULL).
        let sql = format!(
            "SELECT coalesce((SELECT revision FROM tenant_state WHERE tenant_id = $1), 0), r.* \
             FROM (SELECT 1) AS one \
             LEFT JOIN LATERAL (SELECT {COLUMNS} FROM service_registry \
                 WHERE tenant_id = $1 AND service_name = $2 ORDER BY instance_id) AS r ON true"
        );
        let rows = single_statement(
            &self.pool,
            tenant,
            &sql,
            &[&tenant.as_str(), &service.as_str()],
        )
        .await?;
        let mut revision = 0;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            revision = row.try_get(0).map_err(from_pg)?;
            if row
                .try_get::<_, Option<String>>(1)
                .map_err(from_pg)?
                .is_some()
            {
                found.push(rows::instance_at(tenant, row, 1)?);
            }
        }
        Ok(ServiceSnapshot {
            instances: found,
            revision: revision_of(revision)?,
        })
    }

    async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<ListPage, RegistryError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM service_registry \
             WHERE tenant_id = $1 \
               AND ($2::varchar IS NULL OR service_name = $2) \
               AND (cardinality($3::text[]) = 0 OR tags @> $3) \
               AND ($4::varchar IS NULL OR status = $4) \
               AND ($5::varchar IS NULL OR (service_name, instance_id) > \
                    ($5::varchar COLLATE \"C\", $6::varchar COLLATE \"C\")) \
             ORDER BY service_name, instance_id \
             LIMIT $7"
        );
        let after = query.after();
        // One more than the page, to know whether another page follows.
        let fetch = i64::try_from(query.limit()).unwrap_or(i64::MAX - 1) + 1;
        let (rows, revision) = in_tenant!(&self.pool, tenant, |scoped| {
            let t = tenant.as_str();
            let service = query.service_name().map(ServiceName::as_str);
            let status = query.status().map(HealthStatus::as_str);
            let after_service = after.map(|c| c.service_name().as_str());
            let after_instance = after.map(|c| c.instance_id().as_str());
            let tags = query.tags();
            let list_params: [&(dyn ToSql + Sync); 7] = [
                &t,
                &service,
                &tags,
                &status,
                &after_service,
                &after_instance,
                &fetch,
            ];
            let revision_params: [&(dyn ToSql + Sync); 1] = [&t];
            let (rows, revision) = tokio::try_join!(
                scoped.query(&sql, &list_params),
                scoped.query_opt(REVISION, &revision_params),
            )?;
            let revision: i64 = match revision {
                Some(row) => row.try_get(0)?,
                None => 0,
            };
            Ok((rows, revision))
        })?;
        let mut instances = instances(tenant, &rows)?;
        let next = if instances.len() > query.limit() {
            instances.truncate(query.limit());
            instances
                .last()
                .map(|l| ListCursor::after(l.service_name().clone(), l.instance_id().clone()))
        } else {
            None
        };
        Ok(ListPage {
            instances,
            next,
            revision: revision_of(revision)?,
        })
    }

    async fn remove(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: Option<&InstanceId>,
        context: &ChangeContext,
    ) -> Result<Vec<Instance>, RegistryError> {
        let now = chrono::Utc::now();
        let sql = format!(
            "DELETE FROM service_registry \
             WHERE tenant_id = $1 AND service_name = $2 AND ($3::varchar IS NULL OR instance_id = $3) \
             RETURNING {COLUMNS}"
        );
        in_tenant!(&self.pool, tenant, |scoped| {
            let base = lock_revision(scoped, tenant).await?;
            let rows = scoped
                .query(
                    &sql,
                    &[
                        &tenant.as_str(),
                        &service.as_str(),
                        &instance.map(InstanceId::as_str),
                    ],
                )
                .await?;
            let mut removed = instances(tenant, &rows)?;
            removed.sort_by(|a, b| a.instance_id().cmp(b.instance_id()));
            let mut revision = base;
            let mut stamped = Vec::with_capacity(removed.len());
            for instance in &removed {
                revision += 1;
                stamped.push(instance.with_revision(Revision::new(revision.unsigned_abs())));
            }
            if !stamped.is_empty() {
                set_revision(scoped, tenant, revision).await?;
                let entries: Vec<Audit<'_>> = stamped
                    .iter()
                    .map(|i| Audit {
                        kind: EventKind::Deregistered,
                        instance: i,
                        previous_status: None,
                    })
                    .collect();
                record(scoped, tenant, &entries, context, now, &self.outbox).await?;
            }
            Ok(stamped)
        })
    }

    async fn renew(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: &InstanceId,
        heartbeat: &Heartbeat,
        now: DateTime<Utc>,
        context: &ChangeContext,
    ) -> Result<Renewed, RegistryError> {
        let status = heartbeat.status().as_str();
        let renew_sql = format!(
            "UPDATE service_registry \
             SET last_heartbeat = $4, lease_expires_at = $4::timestamptz + make_interval(secs => ttl_seconds) \
             WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3 AND status = $5 \
             RETURNING {COLUMNS}"
        );
        let change_sql = format!(
            "UPDATE service_registry \
             SET last_heartbeat = $4, lease_expires_at = $4::timestamptz + make_interval(secs => ttl_seconds), \
                 status = $5, revision = $6 \
             WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3 \
             RETURNING {COLUMNS}"
        );
        let keys: [&(dyn ToSql + Sync); 5] = [
            &tenant.as_str(),
            &service.as_str(),
            &instance.as_str(),
            &now,
            &status,
        ];
        let outcome = in_tenant!(&self.pool, tenant, |scoped| {
            // Fast path: the status does not change, so this is no registry
            // change (no revision, no audit row), only a lease renewal.
            let (row, previous) = match scoped.query_opt(&renew_sql, &keys).await? {
                Some(row) => (row, heartbeat.status()),
                None => {
                    let base = lock_revision(scoped, tenant).await?;
                    let current = scoped
                        .query_opt(
                            "SELECT status FROM service_registry \
                             WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3 FOR UPDATE",
                            &keys[..3],
                        )
                        .await?;
                    let Some(current) = current else {
                        return Ok(None);
                    };
                    let previous: String = current.try_get(0)?;
                    let revision = base + 1;
                    let row = scoped
                        .query_one(
                            &change_sql,
                            &[keys[0], keys[1], keys[2], keys[3], keys[4], &revision],
                        )
                        .await?;
                    set_revision(scoped, tenant, revision).await?;
                    let previous = previous.parse().unwrap_or(HealthStatus::Critical);
                    (row, previous)
                }
            };
            if let Some(m) = heartbeat.metrics() {
                scoped
                    .execute(
                        "INSERT INTO health_metrics (tenant_id, service_name, instance_id, status, \
                             response_time_ms, cpu_usage, memory_usage, error_rate, recorded_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        &[
                            &tenant.as_str(),
                            &service.as_str(),
                            &instance.as_str(),
                            &status,
                            &m.response_time_ms(),
                            &m.cpu_usage(),
                            &m.memory_usage(),
                            &m.error_rate(),
                            &now,
                        ],
                    )
                    .await?;
            }
            let renewed = rows::instance(tenant, &row)?;
            if previous != renewed.status() {
                let entry = Audit {
                    kind: EventKind::StatusChanged,
                    instance: &renewed,
                    previous_status: Some(previous),
                };
                record(scoped, tenant, &[entry], context, now, &self.outbox).await?;
            }
            Ok(Some(Renewed {
                instance: renewed,
                previous_status: previous,
            }))
        })?;
        outcome.ok_or_else(|| {
            RegistryError::not_found(format!("instance '{instance}' of service '{service}'"))
        })
    }

    async fn expire_leases(&self, now: DateTime<Utc>) -> Result<Vec<LeaseChange>, RegistryError> {
        let candidates_sql = format!(
            "SELECT {COLUMNS} FROM service_registry \
             WHERE tenant_id = $1 AND lease_expires_at <= $2 \
             ORDER BY service_name, instance_id FOR UPDATE"
        );
        // One replica at a time runs a pass: the others find the advisory
        // lock taken and skip this tick. (Two passes at once would still be
        // correct, since every change re-reads its rows under row locks, but
        // they would only do the same work twice.) The lock is held on a
        // connection of its own for the length of the pass; if the process
        // dies, PostgreSQL releases it with the connection.
        let lock = self.pool.get().await.map_err(from_pool)?;
        let taken: bool = lock
            .query_one("SELECT pg_try_advisory_lock($1)", &[&REAPER_LOCK])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(from_pg)?;
        if !taken {
            return Ok(Vec::new());
        }
        let result = self.expire_all(now, &candidates_sql).await;
        if lock
            .execute("SELECT pg_advisory_unlock($1)", &[&REAPER_LOCK])
            .await
            .is_err()
        {
            // A connection that may still hold the lock must not go back to the pool.
            drop(deadpool_postgres::Object::take(lock));
        }
        result
    }

    async fn check(&self) -> Result<(), RegistryError> {
        let client = self.pool.get().await.map_err(from_pool)?;
        client.simple_query("SELECT 1").await.map_err(from_pg)?;
        Ok(())
    }
}

impl PgStore {
    /// One reaper pass over every tenant, each in its own scoped transaction.
    async fn expire_all(
        &self,
        now: DateTime<Utc>,
        candidates_sql: &str,
    ) -> Result<Vec<LeaseChange>, RegistryError> {
        let context = ChangeContext::reaper();
        let mut changes = Vec::new();
        for tenant in self.known_tenants().await? {
            let tenant = &tenant;
            let outcome = in_tenant!(&self.pool, tenant, |scoped| {
                // Cheap check first: most passes find nothing to do, and
                // then take no lock.
                let due = scoped
                    .query_opt(
                        "SELECT 1 FROM service_registry WHERE tenant_id = $1 AND lease_expires_at <= $2 \
                         AND (status <> 'critical' \
                              OR lease_expires_at + make_interval(secs => ttl_seconds * 3) <= $2) LIMIT 1",
                        &[&tenant.as_str(), &now],
                    )
                    .await?;
                if due.is_none() {
                    return Ok(Vec::new());
                }
                let mut revision = lock_revision(scoped, tenant).await?;
                // Rows are re-read under their row locks: a heartbeat that
                // committed meanwhile has moved its lease and is no longer
                // selected (the heartbeat wins).
                let rows = scoped
                    .query(candidates_sql, &[&tenant.as_str(), &now])
                    .await?;
                let found = instances(tenant, &rows)?;
                let mut tenant_changes = Vec::new();
                for instance in found {
                    match instance.lease_state(now) {
                        LeaseState::Alive => {}
                        LeaseState::Expired if instance.status() == HealthStatus::Critical => {}
                        LeaseState::Expired => {
                            revision += 1;
                            scoped
                                .execute(
                                    "UPDATE service_registry SET status = 'critical', revision = $4 \
                                     WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3",
                                    &[
                                        &tenant.as_str(),
                                        &instance.service_name().as_str(),
                                        &instance.instance_id().as_str(),
                                        &revision,
                                    ],
                                )
                                .await?;
                            let previous_status = instance.status();
                            let updated = instance
                                .with_status(HealthStatus::Critical)
                                .with_revision(Revision::new(revision.unsigned_abs()));
                            tenant_changes.push(LeaseChange::Expired {
                                instance: updated,
                                previous_status,
                            });
                        }
                        LeaseState::Dead => {
                            revision += 1;
                            scoped
                                .execute(
                                    "DELETE FROM service_registry \
                                     WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3",
                                    &[
                                        &tenant.as_str(),
                                        &instance.service_name().as_str(),
                                        &instance.instance_id().as_str(),
                                    ],
                                )
                                .await?;
                            tenant_changes.push(LeaseChange::Removed(
                                instance.with_revision(Revision::new(revision.unsigned_abs())),
                            ));
                        }
                    }
                }
                if !tenant_changes.is_empty() {
                    set_revision(scoped, tenant, revision).await?;
                    let entries: Vec<Audit<'_>> = tenant_changes
                        .iter()
                        .map(|c| match c {
                            LeaseChange::Expired {
                                instance,
                                previous_status,
                            } => Audit {
                                kind: EventKind::StatusChanged,
                                instance,
                                previous_status: Some(*previous_status),
                            },
                            LeaseChange::Removed(instance) => Audit {
                                kind: EventKind::Expired,
                                instance,
                                previous_status: None,
                            },
                        })
                        .collect();
                    record(scoped, tenant, &entries, &context, now, &self.outbox).await?;
                }
                Ok(tenant_changes)
            });
            changes.extend(outcome?);
        }
        Ok(changes)
    }
}
