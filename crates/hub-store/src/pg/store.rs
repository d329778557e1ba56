//! `PgStore`: hub-core's `RegistryStore` on PostgreSQL; every query runs in a tenant-scoped transaction.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use hub_core::ports::{
    LeaseChange, ListPage, RegistryStore, Removed, Renewed, ServiceSnapshot, StoreFigures,
    Upserted, WriteBatchStats,
};
use hub_core::{
    ChangeContext, DEFAULT_LIST_LIMIT, EventKind, HealthStatus, Heartbeat, Instance, InstanceId,
    LeaseState, ListQuery, MassExpiry, MassExpiryHold, PageBuilder, Registration, RegistryError,
    Revision, ServiceName, ServiceSummary, Sinks, StatusCounts, TenantId,
};
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::advisory::{METRICS_LOCK, REAPER_LOCK, Releases, unlock};
use super::batch::{Accept, Batcher, Outcome, Param};
use super::config::PgConfig;
use super::error::DbError;
use super::error::{chain, from_db, from_pg};
use super::gate::Gate;
use super::rows::{self, COLUMNS, RAW_PAYLOAD, revision_of, stored};
use super::scoped::{Scoped, in_tenant, single_statement};

/// The registry store on PostgreSQL, and the store side of a lease cache
/// (`LeaseStore`, in `leases`). Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgStore {
    pub(super) pool: Gate,
    pub(super) outbox: Arc<OutboxWrites>,
    /// Advisory-lock releases in flight (see `advisory`).
    pub(super) releases: Arc<Releases>,
    /// The mass-expiry rule of [`RegistryStore::expire_leases`].
    policy: MassExpiry,
    /// Group commit of single-statement changes (see `batch`).
    batch: Arc<Batcher>,
}

/// What every change writes to the outbox: nothing when no sink is
/// configured, else its event, tagged with `origin`, and one due row per sink
/// in `sinks` (their bits).
#[derive(Debug, Default)]
pub(super) struct OutboxWrites {
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

/// Most batches of health metrics one pruning pass deletes for one tenant
/// before it moves on to the next: a tenant with a large backlog is worked
/// off over several passes and cannot hold up the others.
const METRICS_BATCHES_PER_TENANT: u32 = 100;

/// Rows a list reads per statement: pages are filled in chunks so that a page
/// that reaches its byte budget early never reads (and holds) the rest of
/// its limit. One chunk covers a default page and the row after it.
const LIST_CHUNK: usize = DEFAULT_LIST_LIMIT + 1;

/// The tenant's current revision (no row: it never changed anything).
const REVISION: &str = "SELECT revision FROM tenant_state WHERE tenant_id = $1";

/// A registration, whole, in one statement and in lock order: it bumps (and
/// so locks) the tenant's revision row first, enters a new tenant in
/// hub_tenants, writes the instance, and writes the audit row and the
/// outbox row (when sinks are configured), which read `created` from the
/// upsert's RETURNING. It is what `bump_revision` does, inlined: it runs as
/// one statement of a batch (group commit) or as a pipelined single-statement
/// transaction, since registration is the hottest write.
const UPSERT: &str = "WITH rev AS ( \
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
                     ), ids AS ( \
                         SELECT gen_random_uuid() AS event_id \
                     ), audit AS ( \
                         INSERT INTO coordination_history (tenant_id, revision, event_type, service_name, \
                             instance_id, actor, request_id, occurred_at, payload, event_id, \
                             registered_at, last_heartbeat) \
                         SELECT $1, up.revision, CASE WHEN up.created THEN 'service.registered' \
                                              ELSE 'service.updated' END, \
                                $2, $3, $14::varchar, $15::varchar, $12, $16::jsonb, ids.event_id, \
                                up.registered_at, $12 \
                         FROM up, ids \
                     ), event AS ( \
                         SELECT nextval('hub_outbox_id_seq') AS id, up.revision, up.created, \
                                up.registered_at, ids.event_id \
                         FROM up, ids WHERE cardinality($18::smallint[]) > 0 \
                     ), outbox AS ( \
                         INSERT INTO hub_outbox (id, tenant_id, revision, event_type, service_name, \
                             instance_id, occurred_at, previous_status, payload, registered_at, \
                             last_heartbeat, origin, event_id) \
                         SELECT e.id, $1, e.revision, CASE WHEN e.created THEN 'service.registered' \
                                              ELSE 'service.updated' END, \
                                $2, $3, $12, NULL, $16::jsonb, e.registered_at, $12, $17::varchar, \
                                e.event_id \
                         FROM event e \
                     ), due AS ( \
                         INSERT INTO hub_outbox_due (sink, id, tenant_id) \
                         SELECT s, event.id, $1 FROM event CROSS JOIN unnest($18::smallint[]) AS s \
                     ) \
                     SELECT registered_at, created, revision FROM up";

/// [`UPSERT`] under an instance quota ($19): the revision row, and so every
/// write, happens only if `hub_instance_quota` (V6) lets the instance in.
/// That function takes the tenant's revision row lock before it counts, in
/// a snapshot of its own taken after the lock: the count sees every change
/// committed before, and the insert that follows runs under the same lock,
/// so concurrent registrations cannot overshoot (a count in this statement
/// would read the statement's snapshot, taken before the lock wait). No row
/// back: the quota refused it and nothing was written. A separate statement
/// from [`UPSERT`] so that a tenant without a limit pays nothing for it.
static UPSERT_LIMITED: LazyLock<String> = LazyLock::new(|| {
    UPSERT.replacen(
        "WITH rev AS ( \
            INSERT INTO tenant_state AS s (tenant_id, revision) VALUES ($1, 1) ",
        "WITH quota AS ( \
            SELECT public.hub_instance_quota($1::varchar, $2::varchar, $3::varchar, $19::int) AS ok \
         ), rev AS ( \
            INSERT INTO tenant_state AS s (tenant_id, revision) \
            SELECT $1::varchar, 1 FROM quota WHERE quota.ok ",
        1,
    )
});

/// A heartbeat that keeps the instance's status, as one statement of a batch:
/// the lease renewal and, when the heartbeat carries metrics ($10), their
/// row. No row when the instance is missing or its status differs (the
/// caller then takes the transaction that records a status change).
static RENEW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH up AS ( \
             UPDATE service_registry \
             SET last_heartbeat = $4, \
                 lease_expires_at = $4::timestamptz + make_interval(secs => ttl_seconds) \
             WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3 AND status = $5 \
             RETURNING {COLUMNS} \
         ), metrics AS ( \
             INSERT INTO health_metrics (tenant_id, service_name, instance_id, status, \
                 response_time_ms, cpu_usage, memory_usage, error_rate, recorded_at) \
             SELECT $1, $2, $3, $5, $6, $7, $8, $9, $4 FROM up WHERE $10 \
         ) \
         SELECT {COLUMNS} FROM up"
    )
});

/// One change as recorded: its audit row and, when sinks are configured, its
/// outbox row (the event). `instance` is the record after the change (before
/// it, for removals) and carries the change's revision.
pub(super) struct Audit<'a> {
    pub(super) kind: EventKind,
    pub(super) instance: &'a Instance,
    pub(super) previous_status: Option<HealthStatus>,
}

impl Audit<'_> {
    /// The audit of a lease change (`None` for a hold, which changes nothing).
    pub(super) fn of_change(change: &LeaseChange) -> Option<Audit<'_>> {
        match change {
            LeaseChange::Expired {
                instance,
                previous_status,
            } => Some(Audit {
                kind: EventKind::StatusChanged,
                instance,
                previous_status: Some(*previous_status),
            }),
            LeaseChange::Removed(instance) => Some(Audit {
                kind: EventKind::Expired,
                instance,
                previous_status: None,
            }),
            LeaseChange::Held(_) => None,
        }
    }
}

impl PgStore {
    /// A store over a new pool (connections open on first use).
    pub fn new(config: &PgConfig) -> Result<Self, RegistryError> {
        let pool = Gate::new(config)?;
        Ok(Self {
            batch: Arc::new(Batcher::new(
                pool.clone(),
                config.group_commit,
                config.statement_timeout,
                config.call_deadline(),
            )),
            pool,
            outbox: Arc::new(OutboxWrites::default()),
            releases: Arc::default(),
            policy: MassExpiry::default(),
        })
    }

    /// A heartbeat that keeps the instance's status, in the next batch.
    /// `None`: it renewed nothing (the instance is missing, its status
    /// differs, or its row cannot be read, in which case nothing was
    /// committed), and the caller's own transaction decides.
    async fn renew_in_batch(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: &InstanceId,
        heartbeat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> Result<Option<Renewed>, RegistryError> {
        let metrics = heartbeat.metrics();
        let params: Vec<Param> = vec![
            Box::new(tenant.as_str().to_owned()),
            Box::new(service.as_str().to_owned()),
            Box::new(instance.as_str().to_owned()),
            Box::new(now),
            Box::new(heartbeat.status().as_str().to_owned()),
            Box::new(metrics.and_then(|m| m.response_time_ms())),
            Box::new(metrics.and_then(|m| m.cpu_usage())),
            Box::new(metrics.and_then(|m| m.memory_usage())),
            Box::new(metrics.and_then(|m| m.error_rate())),
            Box::new(metrics.is_some()),
        ];
        let owner = tenant.clone();
        let accept: Accept =
            Box::new(move |rows| rows.iter().all(|row| rows::instance(&owner, row).is_ok()));
        let Some(rows) = self
            .single_change(tenant, RENEW.as_str(), params, Some(accept))
            .await?
        else {
            return Ok(None);
        };
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let instance = rows::instance(tenant, row)?;
        Ok(Some(Renewed {
            instance,
            previous_status: heartbeat.status(),
        }))
    }

    /// What group commit has done since this store was built (batches and
    /// the changes they carried).
    pub fn write_batches(&self) -> WriteBatchStats {
        self.batch.stats()
    }

    /// Runs a change that is one statement: in the next batch (group
    /// commit), or as a pipelined transaction of its own when group commit
    /// is off or the tenant's changes bypass the batches (see `batch`).
    /// `None`: its `accept` check refused the rows and the change was rolled
    /// back, or it was not run and its caller must run it in a transaction
    /// of its own (only changes with an `accept` check, which is consulted
    /// in batches only).
    async fn single_change(
        &self,
        tenant: &TenantId,
        sql: &'static str,
        params: Vec<Param>,
        accept: Option<Accept>,
    ) -> Result<Option<Vec<Row>>, RegistryError> {
        let mut params = params;
        if self.batch.enabled() {
            let checked = accept.is_some();
            match self.batch.submit(tenant, sql, params, accept).await? {
                Outcome::Rows(rows) => return Ok(Some(rows)),
                Outcome::Rejected => return Ok(None),
                // The caller's own transaction takes a checked change.
                Outcome::Bypass(_) if checked => return Ok(None),
                Outcome::Bypass(given_back) => params = given_back,
            }
        }
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        single_statement(&self.pool, tenant, sql, &refs)
            .await
            .map(Some)
    }

    /// The same store, holding removals in its own lease expiry
    /// ([`RegistryStore::expire_leases`]) by `policy` (default:
    /// [`MassExpiry::default`]).
    #[must_use]
    pub fn with_mass_expiry(mut self, policy: MassExpiry) -> Self {
        self.policy = policy;
        self
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
    ///
    /// An id that is not a valid tenant id (written by hand, say) is logged
    /// and left out: it must not stop the pass for every other tenant.
    pub(super) async fn known_tenants(&self) -> Result<Vec<TenantId>, RegistryError> {
        let client = self.pool.internal().await?;
        let rows = client
            .query("SELECT tenant_id FROM hub_tenants ORDER BY tenant_id", &[])
            .await
            .map_err(from_db)?;
        let mut tenants = Vec::with_capacity(rows.len());
        for row in &rows {
            match row
                .try_get::<_, String>(0)
                .map_err(|e| chain(&e))
                .and_then(|id| TenantId::parse(id).map_err(|e| chain(&e)))
            {
                Ok(tenant) => tenants.push(tenant),
                Err(cause) => {
                    tracing::error!(%cause, "hub_tenants holds an id that is not a tenant id; skipped");
                }
            }
        }
        Ok(tenants)
    }

    /// Deletes health metrics older than `keep_days` days (at least one), in
    /// batches of `batch` rows, tenant by tenant, each batch in a
    /// transaction of its own scoped to the tenant (so row-level security
    /// applies). One replica at a time prunes (an advisory lock of its own);
    /// the others find it taken and return 0. A tenant whose pruning fails is
    /// logged and skipped; the pass goes on with the next. Returns how many
    /// rows were deleted.
    pub async fn prune_metrics(&self, keep_days: u32, batch: u32) -> Result<u64, RegistryError> {
        let Some(lock) = self.try_lock(METRICS_LOCK).await? else {
            return Ok(0);
        };
        let keep = i32::try_from(keep_days.max(1)).unwrap_or(i32::MAX);
        let max = i32::try_from(batch.max(1)).unwrap_or(i32::MAX);
        // No permit of the tenants' shares: a tenant at its cap must not
        // hold up the pruning of its own metrics (see `gate`).
        let pool = self.pool.uncapped();
        let result = async {
            let mut total = 0u64;
            for tenant in self.known_tenants().await? {
                for _ in 0..METRICS_BATCHES_PER_TENANT {
                    let pruned = single_statement(
                        &pool,
                        &tenant,
                        "SELECT hub_metrics_prune($1, $2)",
                        &[&keep, &max],
                    )
                    .await
                    .and_then(|rows| {
                        rows.first()
                            .map(|row| row.try_get::<_, i64>(0).map_err(from_pg))
                            .unwrap_or(Ok(0))
                    });
                    match pruned {
                        Ok(n) => {
                            total += n.unsigned_abs();
                            if n < i64::from(max) {
                                break;
                            }
                        }
                        Err(error) => {
                            tracing::error!(tenant = %tenant, cause = %chain(&error), "pruning this tenant's health metrics failed; skipped until the next pass");
                            break;
                        }
                    }
                }
            }
            Ok(total)
        }
        .await;
        unlock(lock).await;
        result
    }
}

/// Service name and instance id of a stored row whose [`COLUMNS`] start at
/// `first`, for logs and for the audit of a row that cannot be read.
pub(super) fn row_key(row: &Row, first: usize) -> (String, String) {
    let key = |i| {
        row.try_get::<_, String>(i)
            .unwrap_or_else(|_| "?".to_owned())
    };
    (key(first), key(first + 1))
}

/// Reads an instance from a row whose [`COLUMNS`] start at `first`; a row
/// that cannot be read is logged as an error (tenant, service, instance and
/// the real cause) and gives `None`: reads leave it out and say how many they
/// left out, instead of failing the whole answer.
pub(super) fn readable(tenant: &TenantId, row: &Row, first: usize) -> Option<Instance> {
    match rows::instance_at(tenant, row, first) {
        Ok(instance) => Some(instance),
        Err(error) => {
            let (service, instance) = row_key(row, first);
            tracing::error!(
                tenant = %tenant,
                service,
                instance,
                cause = %chain(&error),
                "stored instance cannot be read; left out of the answer (the tenant can deregister it)"
            );
            None
        }
    }
}

/// The audit of a change to a stored row that cannot be read: its keys, the
/// change's revision, and the row's values as PostgreSQL holds them
/// ([`RAW_PAYLOAD`], as text).
pub(super) struct RawAudit {
    pub(super) kind: EventKind,
    pub(super) service: String,
    pub(super) instance: String,
    pub(super) revision: i64,
    pub(super) payload: String,
}

/// Writes audit rows of changes to rows that cannot be read, in the caller's
/// transaction. No outbox row: an event carries a valid instance, and
/// consumers could not read this one either.
pub(super) async fn record_raw(
    scoped: &Scoped,
    tenant: &TenantId,
    entries: &[RawAudit],
    context: &ChangeContext,
    at: DateTime<Utc>,
) -> Result<(), DbError> {
    if entries.is_empty() {
        return Ok(());
    }
    let revisions: Vec<i64> = entries.iter().map(|e| e.revision).collect();
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    let services: Vec<&str> = entries.iter().map(|e| e.service.as_str()).collect();
    let instances: Vec<&str> = entries.iter().map(|e| e.instance.as_str()).collect();
    let payloads: Vec<&str> = entries.iter().map(|e| e.payload.as_str()).collect();
    scoped
        .execute(
            "INSERT INTO coordination_history \
                 (tenant_id, revision, event_type, service_name, instance_id, actor, request_id, occurred_at, payload) \
             SELECT $1, u.revision, u.kind, u.service, u.instance, $7, $8, $9, u.payload::jsonb \
             FROM unnest($2::bigint[], $3::varchar[], $4::varchar[], $5::varchar[], $6::text[]) \
                 AS u(revision, kind, service, instance, payload)",
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
            ],
        )
        .await?;
    Ok(())
}

/// Takes the tenant's revision row lock and returns the current revision
/// (zero for a tenant that never changed anything). Every changing
/// transaction takes this lock first, so changes of one tenant are ordered
/// and two transactions never wait on each other in opposite orders.
pub(super) async fn lock_revision(scoped: &Scoped, tenant: &TenantId) -> Result<i64, DbError> {
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

pub(super) async fn set_revision(
    scoped: &Scoped,
    tenant: &TenantId,
    revision: i64,
) -> Result<(), DbError> {
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
pub(super) async fn record(
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
                 SELECT u.*, gen_random_uuid() AS event_id \
                 FROM unnest($2::bigint[], $3::varchar[], $4::varchar[], $5::varchar[], \
                     $6::jsonb[], $12::varchar[], $13::timestamptz[], $14::timestamptz[]) \
                     AS u(revision, kind, service, instance, payload, previous, registered, heartbeat) \
             ), audit AS ( \
                 INSERT INTO coordination_history \
                     (tenant_id, revision, event_type, service_name, instance_id, actor, request_id, occurred_at, \
                      payload, event_id, previous_status, registered_at, last_heartbeat) \
                 SELECT $1, u.revision, u.kind, u.service, u.instance, $7, $8, $9, u.payload, \
                     u.event_id, u.previous, u.registered, u.heartbeat FROM u \
             ) \
             , event AS ( \
                 SELECT nextval('hub_outbox_id_seq') AS id, u.* FROM u \
                 WHERE cardinality($11::smallint[]) > 0 \
             ), outbox AS ( \
                 INSERT INTO hub_outbox (id, tenant_id, revision, event_type, service_name, instance_id, \
                     occurred_at, previous_status, payload, registered_at, last_heartbeat, origin, event_id) \
                 SELECT e.id, $1, e.revision, e.kind, e.service, e.instance, $9, e.previous, e.payload, \
                     e.registered, e.heartbeat, $10, e.event_id \
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

#[async_trait]
impl RegistryStore for PgStore {
    fn figures(&self) -> StoreFigures {
        StoreFigures {
            lookup_cache: None,
            write_batches: self.batch.enabled().then(|| self.write_batches()),
        }
    }

    async fn upsert(
        &self,
        tenant: &TenantId,
        registration: Registration,
        now: DateTime<Utc>,
        context: &ChangeContext,
        max_instances: Option<u32>,
    ) -> Result<Upserted, RegistryError> {
        let lease = now + Duration::seconds(i64::from(registration.ttl_seconds()));
        let metadata = Value::Object(registration.metadata().clone());
        let registration = &registration;
        let ttl = i32::try_from(registration.ttl_seconds()).unwrap_or(i32::MAX);
        let payload = rows::registration_payload(registration, HealthStatus::Passing, lease);
        let outbox = &*self.outbox;
        let mut params: Vec<Param> = vec![
            Box::new(tenant.as_str().to_owned()),
            Box::new(registration.service_name().as_str().to_owned()),
            Box::new(registration.instance_id().as_str().to_owned()),
            Box::new(registration.host().as_str().to_owned()),
            Box::new(i32::from(registration.port())),
            Box::new(registration.protocol().as_str().to_owned()),
            Box::new(registration.health_endpoint().to_owned()),
            Box::new(registration.version().map(str::to_owned)),
            Box::new(registration.tags().to_vec()),
            Box::new(metadata),
            Box::new(ttl),
            Box::new(now),
            Box::new(lease),
            Box::new(context.actor().map(str::to_owned)),
            Box::new(context.request_id().map(str::to_owned)),
            Box::new(payload),
            Box::new(outbox.origin.clone()),
            Box::new(outbox.sinks.clone()),
        ];
        let sql = match max_instances {
            None => UPSERT,
            Some(max) => {
                params.push(Box::new(i32::try_from(max).unwrap_or(i32::MAX)));
                UPSERT_LIMITED.as_str()
            }
        };
        let rows = self
            .single_change(tenant, sql, params, None)
            .await?
            .ok_or_else(|| {
                RegistryError::Unexpected("a registration without a check was refused".into())
            })?;
        let Some(row) = rows.first() else {
            // Only the quota check writes nothing and answers no row; it
            // was committed (or rolled back) alone, whatever else its batch
            // carried.
            return match max_instances {
                Some(max) => Err(RegistryError::QuotaExceeded {
                    limit: "max_instances",
                    max: u64::from(max),
                }),
                None => Err(RegistryError::Unexpected(
                    "the registration statement returned no row".into(),
                )),
            };
        };
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
        let mut skipped = 0;
        for row in &rows {
            revision = row.try_get(0).map_err(from_pg)?;
            if row
                .try_get::<_, Option<String>>(1)
                .map_err(from_pg)?
                .is_some()
            {
                match readable(tenant, row, 1) {
                    Some(instance) => found.push(instance),
                    None => skipped += 1,
                }
            }
        }
        Ok(ServiceSnapshot {
            instances: found,
            revision: revision_of(revision)?,
            skipped,
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
        // Read in chunks, in list order, each continuing after the last row
        // read (readable or not), until the page is full or the rows run out.
        let fetch = query.limit().saturating_add(1).min(LIST_CHUNK);
        let fetch_sql = i64::try_from(fetch).unwrap_or(i64::MAX);
        let (page, revision, skipped) = in_tenant!(&self.pool, tenant, |scoped| {
            let t = tenant.as_str();
            let service = query.service_name().map(ServiceName::as_str);
            let status = query.status().map(HealthStatus::as_str);
            let tags = query.tags();
            let mut after: Option<(String, String)> = query.after().map(|c| {
                (
                    c.service_name().as_str().to_owned(),
                    c.instance_id().as_str().to_owned(),
                )
            });
            let mut page = PageBuilder::new(query);
            let mut skipped = 0usize;
            let mut revision: Option<i64> = None;
            loop {
                let after_service = after.as_ref().map(|(s, _)| s.as_str());
                let after_instance = after.as_ref().map(|(_, i)| i.as_str());
                let list_params: [&(dyn ToSql + Sync); 7] = [
                    &t,
                    &service,
                    &tags,
                    &status,
                    &after_service,
                    &after_instance,
                    &fetch_sql,
                ];
                let rows = match revision {
                    Some(_) => scoped.query(&sql, &list_params).await?,
                    None => {
                        // The first chunk and the revision go out together.
                        let revision_params: [&(dyn ToSql + Sync); 1] = [&t];
                        let (rows, current) = tokio::try_join!(
                            scoped.query(&sql, &list_params),
                            scoped.query_opt(REVISION, &revision_params),
                        )?;
                        revision = Some(match current {
                            Some(row) => row.try_get(0)?,
                            None => 0,
                        });
                        rows
                    }
                };
                for row in &rows {
                    match readable(tenant, row, 0) {
                        Some(instance) => {
                            if !page.offer(instance) {
                                break;
                            }
                        }
                        None => skipped += 1,
                    }
                }
                if page.is_full() || rows.len() < fetch {
                    break;
                }
                after = rows.last().map(|row| row_key(row, 0));
            }
            Ok((page, revision.unwrap_or(0), skipped))
        })?;
        let (instances, next) = page.finish();
        Ok(ListPage {
            instances,
            next,
            revision: revision_of(revision)?,
            skipped,
        })
    }

    async fn remove(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: Option<&InstanceId>,
        context: &ChangeContext,
    ) -> Result<Removed, RegistryError> {
        let now = chrono::Utc::now();
        // Every row carries its values as stored (column 15) too, for the
        // audit of a row that cannot be read: such rows are removed like any
        // other, so a tenant can always remove what it cannot read.
        let sql = format!(
            "DELETE FROM service_registry \
             WHERE tenant_id = $1 AND service_name = $2 AND ($3::varchar IS NULL OR instance_id = $3) \
             RETURNING {COLUMNS}, {RAW_PAYLOAD}"
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
            // Revisions in instance-id order, readable rows or not.
            let mut gone: Vec<(String, Result<Instance, String>)> = Vec::with_capacity(rows.len());
            for row in &rows {
                let (_, id) = row_key(row, 0);
                let read = match rows::instance(tenant, row) {
                    Ok(instance) => Ok(instance),
                    Err(error) => {
                        tracing::warn!(
                            tenant = %tenant,
                            service = %service,
                            instance = id,
                            cause = %chain(&error),
                            "removing a stored instance that cannot be read; its audit row keeps the stored values and no event is sent"
                        );
                        Err(row.try_get::<_, String>(15)?)
                    }
                };
                gone.push((id, read));
            }
            gone.sort_by(|a, b| a.0.cmp(&b.0));
            let mut revision = base;
            let mut stamped = Vec::with_capacity(gone.len());
            let mut raw = Vec::new();
            for (id, read) in gone {
                revision += 1;
                match read {
                    Ok(instance) => {
                        stamped.push(instance.with_revision(Revision::new(revision.unsigned_abs())))
                    }
                    Err(payload) => raw.push(RawAudit {
                        kind: EventKind::Deregistered,
                        service: service.as_str().to_owned(),
                        instance: id,
                        revision,
                        payload,
                    }),
                }
            }
            if revision != base {
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
                record_raw(scoped, tenant, &raw, context, now).await?;
            }
            Ok(Removed {
                instances: stamped,
                undecodable: raw.len(),
            })
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
        if self.batch.enabled()
            && let Some(renewed) = self
                .renew_in_batch(tenant, service, instance, heartbeat, now)
                .await?
        {
            return Ok(renewed);
        }
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
            // A row that cannot be read is not renewed (the transaction
            // rolls back): the client learns it must register it again,
            // and the operator finds the real cause in the log.
            let renewed = rows::instance(tenant, &row).map_err(|error| {
                tracing::error!(
                    tenant = %tenant,
                    service = %service,
                    instance = %instance,
                    cause = %chain(&error),
                    "heartbeat for a stored instance that cannot be read; refused"
                );
                RegistryError::Conflict(format!(
                    "instance '{instance}' of service '{service}' is stored in a form this server cannot read; deregister it and register it again"
                ))
            })?;
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
        // Column 15 tells whether the lease is dead (what `lease_state`
        // decides for a readable row), column 16 the values as stored,
        // column 17 whether the lease ran out a mass-expiry grace ago ($3 is
        // `now` minus the grace): they serve rows that cannot be read, which
        // expire like any other.
        let candidates_sql = format!(
            "SELECT {COLUMNS}, lease_expires_at + make_interval(secs => ttl_seconds * 3) <= $2, \
                 {RAW_PAYLOAD}, lease_expires_at <= $3 \
             FROM service_registry \
             WHERE tenant_id = $1 AND lease_expires_at <= $2 \
             ORDER BY service_name, instance_id FOR UPDATE"
        );
        // One replica at a time runs a pass: the others find the advisory
        // lock taken and skip this tick. (Two passes at once would still be
        // correct, since every change re-reads its rows under row locks, but
        // they would only do the same work twice.) The lock is held on a
        // connection of its own for the length of the pass; if the process
        // dies, PostgreSQL releases it with the connection.
        let Some(lock) = self.try_lock(REAPER_LOCK).await? else {
            return Ok(Vec::new());
        };
        let result = self.expire_all(now, &candidates_sql).await;
        unlock(lock).await;
        result
    }

    async fn check(&self) -> Result<(), RegistryError> {
        let client = self.pool.internal().await?;
        client.simple_query("SELECT 1").await.map_err(from_db)?;
        Ok(())
    }

    async fn tenant_ids(&self) -> Result<Vec<TenantId>, RegistryError> {
        self.known_tenants().await
    }

    async fn status_counts(&self, tenant: &TenantId) -> Result<StatusCounts, RegistryError> {
        super::dashboard::status_counts(&self.pool, tenant).await
    }

    async fn service_summaries(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<ServiceSummary>, RegistryError> {
        super::dashboard::service_summaries(&self.pool, tenant).await
    }
}

impl PgStore {
    /// The pool's figures now (size, idle, waiting), for the monitor.
    pub(super) fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }
}

impl PgStore {
    /// One reaper pass over every tenant, each in its own scoped transaction.
    /// A tenant whose pass fails is logged (tenant and cause) and skipped,
    /// and the pass goes on: one tenant's trouble must not leave every other
    /// tenant's expired instances `passing`. The pass fails only when every
    /// tenant it visited failed (the database itself is then in trouble).
    async fn expire_all(
        &self,
        now: DateTime<Utc>,
        candidates_sql: &str,
    ) -> Result<Vec<LeaseChange>, RegistryError> {
        let mut changes = Vec::new();
        let mut first_error = None;
        let mut succeeded = 0usize;
        for tenant in self.known_tenants().await? {
            match self.expire_tenant(&tenant, now, candidates_sql).await {
                Ok(tenant_changes) => {
                    succeeded += 1;
                    changes.extend(tenant_changes);
                }
                Err(error) => {
                    tracing::error!(
                        tenant = %tenant,
                        cause = %chain(&error),
                        "lease expiry failed for this tenant; skipped until the next pass"
                    );
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) if succeeded == 0 => Err(error),
            _ => Ok(changes),
        }
    }

    /// Lease expiry for one tenant, in one transaction scoped to it, under
    /// the mass-expiry rule: when it holds, the dead turn critical but are
    /// kept until their grace passes, and the pass returns a
    /// [`LeaseChange::Held`] (no audit row, no event: nothing changed).
    async fn expire_tenant(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
        candidates_sql: &str,
    ) -> Result<Vec<LeaseChange>, RegistryError> {
        let context = ChangeContext::reaper();
        let policy = &self.policy;
        let past_grace = now - policy.grace;
        // The passes take no permit of the tenants' shares: a tenant at its
        // cap must not hold up its own expiries (see `gate`).
        let pool = self.pool.uncapped();
        in_tenant!(&pool, tenant, |scoped| {
            // Cheap counts first, without locks: most passes find nothing
            // to do and take no lock. The EXISTS is a one-time filter on the
            // lease index, so a tenant with no run-out lease is not counted
            // at all; only one with some is (all its rows, for the share).
            let counts = scoped
                .query_one(
                    "SELECT count(*), \
                         count(*) FILTER (WHERE lease_expires_at <= $2), \
                         count(*) FILTER (WHERE lease_expires_at <= $2 AND status <> 'critical'), \
                         count(*) FILTER (WHERE lease_expires_at + make_interval(secs => ttl_seconds * 3) <= $2), \
                         count(*) FILTER (WHERE lease_expires_at + make_interval(secs => ttl_seconds * 3) <= $2 \
                                          AND lease_expires_at <= $3) \
                     FROM service_registry \
                     WHERE tenant_id = $1 AND EXISTS ( \
                         SELECT 1 FROM service_registry WHERE tenant_id = $1 AND lease_expires_at <= $2)",
                    &[&tenant.as_str(), &now, &past_grace],
                )
                .await?;
            let count = |i: usize| -> Result<usize, DbError> {
                Ok(usize::try_from(counts.try_get::<_, i64>(i)?).unwrap_or(usize::MAX))
            };
            let (total, run_out, unmarked, dead, dead_past_grace) =
                (count(0)?, count(1)?, count(2)?, count(3)?, count(4)?);
            if run_out == 0 {
                // Ends a hold, if there was one.
                policy.decide(tenant, 0, total, now);
                return Ok(Vec::new());
            }
            // Decided on the counts read without locks: a heartbeat since
            // can only have lowered `run_out` (a registration raised
            // `total`), so a stale decision errs on the side of holding.
            let held = policy.decide(tenant, run_out, total, now);
            let hold = |kept: usize| {
                held.then(|| {
                    LeaseChange::Held(MassExpiryHold {
                        tenant: tenant.clone(),
                        expired: run_out,
                        total,
                        held: kept,
                    })
                })
            };
            let removable = if held { dead_past_grace } else { dead };
            if unmarked == 0 && removable == 0 {
                // Nothing to change (a held tenant whose run-out instances
                // are all critical already): no lock taken.
                return Ok(hold(dead).into_iter().collect());
            }
            let mut revision = lock_revision(scoped, tenant).await?;
            // Rows are re-read under their row locks: a heartbeat that
            // committed meanwhile has moved its lease and is no longer
            // selected (the heartbeat wins).
            let rows = scoped
                .query(candidates_sql, &[&tenant.as_str(), &now, &past_grace])
                .await?;
            let mut tenant_changes = Vec::new();
            let mut raw = Vec::new();
            let mut kept = 0usize;
            for row in &rows {
                let instance = match rows::instance(tenant, row) {
                    Ok(instance) => instance,
                    Err(error) => {
                        let (audit, was_kept) =
                            expire_unreadable(scoped, tenant, row, &error, &mut revision, held)
                                .await?;
                        kept += usize::from(was_kept);
                        raw.extend(audit);
                        continue;
                    }
                };
                let remove = match instance.lease_state(now) {
                    LeaseState::Alive => continue,
                    LeaseState::Expired => false,
                    LeaseState::Dead => {
                        let remove = policy.removes(
                            held,
                            instance.lease_expires_at(),
                            instance.deregister_at(),
                            now,
                        );
                        kept += usize::from(!remove);
                        remove
                    }
                };
                if remove {
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
                } else if instance.status() != HealthStatus::Critical {
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
            }
            if !tenant_changes.is_empty() || !raw.is_empty() {
                set_revision(scoped, tenant, revision).await?;
                let entries: Vec<Audit<'_>> =
                    tenant_changes.iter().filter_map(Audit::of_change).collect();
                record(scoped, tenant, &entries, &context, now, &self.outbox).await?;
                record_raw(scoped, tenant, &raw, &context, now).await?;
            }
            tenant_changes.extend(hold(kept));
            Ok(tenant_changes)
        })
    }
}

/// Lease expiry for a candidate row (of the reaper's query) that cannot be
/// read: the same rule as for any other, judged on its stored lease (column
/// 15 says whether it is dead, column 17 whether its mass-expiry grace
/// passed, for a `held` tenant), so such a row turns critical and is removed
/// in time instead of staying forever. Its change takes the next revision
/// and returns its audit (with the stored values); no event is sent. The
/// flag says whether the hold kept a dead row.
pub(super) async fn expire_unreadable(
    scoped: &Scoped,
    tenant: &TenantId,
    row: &Row,
    error: &RegistryError,
    revision: &mut i64,
    held: bool,
) -> Result<(Option<RawAudit>, bool), DbError> {
    let (service, instance) = row_key(row, 0);
    let dead: bool = row.try_get(15)?;
    let past_grace: bool = row.try_get(17)?;
    let remove = dead && (!held || past_grace);
    let kept = dead && !remove;
    let status: String = row.try_get(10)?;
    let kind = if remove {
        EventKind::Expired
    } else if status != HealthStatus::Critical.as_str() {
        EventKind::StatusChanged
    } else {
        return Ok((None, kept));
    };
    tracing::error!(
        tenant = %tenant,
        service,
        instance,
        cause = %chain(error),
        "lease of a stored instance that cannot be read ran out; it is expired like any other, without an event"
    );
    *revision += 1;
    let keys: [&(dyn ToSql + Sync); 4] = [&tenant.as_str(), &service, &instance, &*revision];
    let payload: String = if remove {
        row.try_get(16)?
    } else {
        let sql = format!(
            "UPDATE service_registry SET status = 'critical', revision = $4 \
             WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3 \
             RETURNING {RAW_PAYLOAD}"
        );
        scoped.query_one(&sql, &keys).await?.try_get(0)?
    };
    if remove {
        scoped
            .execute(
                "DELETE FROM service_registry \
                 WHERE tenant_id = $1 AND service_name = $2 AND instance_id = $3",
                &keys[..3],
            )
            .await?;
    }
    Ok((
        Some(RawAudit {
            kind,
            service,
            instance,
            revision: *revision,
            payload,
        }),
        kept,
    ))
}
