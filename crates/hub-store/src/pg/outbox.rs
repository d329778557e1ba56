//! The PostgreSQL outbox: relay sessions (one leader per sink by advisory lock), pending reads decoded row by row, marks, set-asides, pruning and backlog.
//!
//! Rows are written by the registry changes themselves (see `store.rs`), in
//! the change's transaction. Everything here goes through the SECURITY
//! DEFINER functions of `migrations/V2__event_outbox.sql` and
//! `V3__outbox_hardening.sql`. Reading, marking, setting aside and pruning
//! are the relay's: they run as the relay's login (a member of
//! `central_hub_relay`, see [`PgOutbox`]), which the request path's role
//! `central_hub_app` is not; the request path keeps only the backlog counts.
//!
//! One relay per sink publishes, whichever replica it runs in: a session
//! holds a connection of its own (outside the pool) and leads once it holds
//! the sink's session-level advisory lock. The lock lives exactly as long as
//! that connection, so a relay that dies or loses the database hands over to
//! another replica without any lease to expire. A single publisher per sink
//! is what keeps each tenant's events in commit order on the bus.

use hub_core::error_chain as chain;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hub_core::ports::{Outbox, OutboxSession};
use hub_core::{
    Backlog, EventKind, HealthStatus, OutboxEntry, Pending, RegistryError, RegistryEvent, Sink,
    TenantId, Undecodable,
};
use serde_json::Value;
use tokio_postgres::NoTls;

use super::config::PgConfig;
use super::error::from_pg;
use super::gate::Gate;
use super::rows::{instance_from_payload, revision_of};
use super::scoped::single_statement;
use super::store::PgStore;

/// The advisory lock of a sink's relay (arbitrary constants, next to the
/// reaper's).
fn relay_lock(sink: Sink) -> i64 {
    0x00C3_7A11_0000 + i64::from(sink.bit())
}

fn bit(sink: Sink) -> i16 {
    i16::from(sink.bit())
}

/// A relay's session: a connection of its own, leading once it holds the
/// sink's advisory lock.
pub struct PgOutboxSession {
    client: tokio_postgres::Client,
    sink: Sink,
    leading: bool,
    /// Prepared once the session leads: the relay runs them many times a
    /// second, and an unprepared query costs a round trip and a plan each.
    statements: Option<Statements>,
}

struct Statements {
    pending: tokio_postgres::Statement,
    mark: tokio_postgres::Statement,
    set_aside: tokio_postgres::Statement,
}

/// The pending rows of a sink, with the event id as text.
const PENDING: &str = "SELECT id, tenant_id, revision, event_id::text, event_type, service_name, \
        instance_id, occurred_at, previous_status, payload, registered_at, \
        last_heartbeat, origin \
 FROM hub_outbox_pending($1, $2)";

/// Marks rows delivered in one statement (its own transaction), committed
/// without waiting for the WAL flush: a mark lost in a crash only means the
/// event is published again (at least once), so the relay's commits need not
/// wait, and keep their cost off the registrations' path.
const MARK: &str = "SELECT set_config('synchronous_commit', 'off', true), hub_outbox_mark($1, $2)";

/// Sets one row aside (rare: committed durably, unlike marks).
const SET_ASIDE: &str = "SELECT hub_outbox_set_aside($1, $2, $3)";

impl std::fmt::Debug for PgOutboxSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOutboxSession")
            .field("sink", &self.sink)
            .field("leading", &self.leading)
            .finish_non_exhaustive()
    }
}

async fn connect(config: &PgConfig, sink: Sink) -> Result<tokio_postgres::Client, RegistryError> {
    let (client, connection) = config.connection().connect(NoTls).await.map_err(from_pg)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, %sink, "outbox relay connection ended");
        }
    });
    Ok(client)
}

/// Decodes one row of `hub_outbox_pending`. A row that is not a valid event
/// is an [`Undecodable`] naming its id, its tenant and the real cause, never
/// an error of the whole read: one bad row must not hold up the others.
fn pending_row(row: &tokio_postgres::Row) -> Result<Pending, RegistryError> {
    // The id and the tenant are plain columns of the query; a failure to
    // read them is a bug of this code, not of the row.
    let seq: i64 = row.try_get(0).map_err(from_pg)?;
    let tenant: String = row.try_get(1).map_err(from_pg)?;
    Ok(match entry(seq, &tenant, row) {
        Ok(event) => Pending::Event(OutboxEntry { seq, event }),
        Err(cause) => Pending::Undecodable(Undecodable { seq, tenant, cause }),
    })
}

/// Rebuilds the event of one row of `hub_outbox_pending`, or says why not.
pub(super) fn entry(
    seq: i64,
    tenant: &str,
    row: &tokio_postgres::Row,
) -> Result<RegistryEvent, String> {
    let column = |e: tokio_postgres::Error| format!("outbox row {seq}: {}", chain(&e));
    let domain = |e: RegistryError| format!("outbox row {seq}: {}", chain(&e));
    let tenant = TenantId::parse(tenant.to_owned())
        .map_err(|e| format!("outbox row {seq} has an invalid tenant: {e}"))?;
    let revision = revision_of(row.try_get(2).map_err(column)?).map_err(domain)?;
    let id: String = row.try_get(3).map_err(column)?;
    let kind: String = row.try_get(4).map_err(column)?;
    let kind = EventKind::from_type_name(&kind)
        .ok_or_else(|| format!("outbox row {seq} has type {kind:?}"))?;
    let service: String = row.try_get(5).map_err(column)?;
    let instance_id: String = row.try_get(6).map_err(column)?;
    let occurred_at: DateTime<Utc> = row.try_get(7).map_err(column)?;
    let previous: Option<String> = row.try_get(8).map_err(column)?;
    let previous = previous
        .map(|p| {
            p.parse::<HealthStatus>()
                .map_err(|_| format!("outbox row {seq} has previous status {p:?}"))
        })
        .transpose()?;
    let payload: Value = row.try_get(9).map_err(column)?;
    let instance = instance_from_payload(
        &tenant,
        service,
        instance_id,
        &payload,
        row.try_get(10).map_err(column)?,
        row.try_get(11).map_err(column)?,
        revision,
    )
    .map_err(domain)?;
    let origin: Option<String> = row.try_get(12).map_err(column)?;
    let mut event = RegistryEvent::restore(id, kind, instance, previous, occurred_at);
    if let Some(origin) = origin {
        event = event.with_origin(origin);
    }
    Ok(event)
}

#[async_trait]
impl OutboxSession for PgOutboxSession {
    async fn lead(&mut self) -> Result<bool, RegistryError> {
        if !self.leading {
            self.leading = self
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&relay_lock(self.sink)])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(from_pg)?;
            if self.leading {
                self.statements = Some(Statements {
                    pending: self.client.prepare(PENDING).await.map_err(from_pg)?,
                    mark: self.client.prepare(MARK).await.map_err(from_pg)?,
                    set_aside: self.client.prepare(SET_ASIDE).await.map_err(from_pg)?,
                });
            }
        }
        Ok(self.leading)
    }

    async fn pending(&mut self, max: u32) -> Result<Vec<Pending>, RegistryError> {
        let Some(statements) = self.statements.as_ref().filter(|_| self.leading) else {
            return Err(RegistryError::Unexpected(
                "outbox read by a session that does not lead".into(),
            ));
        };
        let max = i32::try_from(max).unwrap_or(i32::MAX);
        let rows = self
            .client
            .query(&statements.pending, &[&bit(self.sink), &max])
            .await
            .map_err(from_pg)?;
        rows.iter().map(pending_row).collect()
    }

    async fn mark(&mut self, seqs: &[i64]) -> Result<(), RegistryError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let Some(statements) = self.statements.as_ref().filter(|_| self.leading) else {
            return Err(RegistryError::Unexpected(
                "outbox marked by a session that does not lead".into(),
            ));
        };
        self.client
            .query_one(&statements.mark, &[&bit(self.sink), &seqs])
            .await
            .map_err(from_pg)?;
        Ok(())
    }

    async fn set_aside(&mut self, seq: i64, reason: &str) -> Result<bool, RegistryError> {
        let Some(statements) = self.statements.as_ref().filter(|_| self.leading) else {
            return Err(RegistryError::Unexpected(
                "outbox set aside by a session that does not lead".into(),
            ));
        };
        self.client
            .query_one(&statements.set_aside, &[&bit(self.sink), &seq, &reason])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(from_pg)
    }
}

/// The outbox as the relay and the dashboards use it. Relay sessions and
/// pruning connect as the relay's login (`HUB_RELAY_PG_USER`, a member of
/// `central_hub_relay`); the backlog counts go through the store's pool (the
/// application login), since tenants' dashboards read them in the tenant's
/// own transaction.
#[derive(Clone)]
pub struct PgOutbox {
    relay: Arc<PgConfig>,
    /// One connection of the relay login, opened on first use, for pruning.
    relay_pool: Gate,
    app_pool: Gate,
}

impl std::fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOutbox")
            .field("relay_user", &self.relay.user)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// This store's outbox, relayed as the login `relay` (the same database;
    /// usually another user). Connections are opened on first use.
    pub fn relay_outbox(&self, relay: &PgConfig) -> Result<PgOutbox, RegistryError> {
        let relay = PgConfig {
            pool_size: 1,
            ..relay.clone()
        };
        Ok(PgOutbox {
            relay_pool: Gate::new(&relay)?,
            relay: Arc::new(relay),
            app_pool: self.pool.clone(),
        })
    }
}

#[async_trait]
impl Outbox for PgOutbox {
    async fn open(&self, sink: Sink) -> Result<Box<dyn OutboxSession>, RegistryError> {
        let client = connect(&self.relay, sink).await?;
        Ok(Box::new(PgOutboxSession {
            client,
            sink,
            leading: false,
            statements: None,
        }))
    }

    async fn prune(&self, cutoff: DateTime<Utc>, max: u32) -> Result<u64, RegistryError> {
        let client = self.relay_pool.internal().await?;
        let max = i32::try_from(max).unwrap_or(i32::MAX);
        let pruned: i64 = client
            .query_one("SELECT hub_outbox_prune($1, $2)", &[&cutoff, &max])
            .await
            .map_err(super::error::from_db)?
            .try_get(0)
            .map_err(from_pg)?;
        Ok(pruned.unsigned_abs())
    }

    async fn backlog(
        &self,
        sink: Sink,
        tenant: Option<&TenantId>,
    ) -> Result<Backlog, RegistryError> {
        const BACKLOG: &str =
            "SELECT backlog, oldest_created_at, undeliverable FROM hub_outbox_backlog($1, $2)";
        let row = match tenant {
            // A tenant's backlog is a tenant-scoped query like any other: it
            // runs in the tenant's transaction, and the function filters on
            // that transaction's `app.tenant_id`, not on a parameter.
            Some(tenant) => single_statement(&self.app_pool, tenant, BACKLOG, &[&bit(sink), &true])
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    RegistryError::Unexpected("the backlog query returned no row".into())
                })?,
            None => {
                let client = self.app_pool.internal().await?;
                client
                    .query_one(BACKLOG, &[&bit(sink), &false])
                    .await
                    .map_err(super::error::from_db)?
            }
        };
        let pending: i64 = row.try_get(0).map_err(from_pg)?;
        let undeliverable: i64 = row.try_get(2).map_err(from_pg)?;
        Ok(Backlog {
            pending: pending.unsigned_abs(),
            oldest: row.try_get(1).map_err(from_pg)?,
            undeliverable: undeliverable.unsigned_abs(),
        })
    }
}
