//! The watch history in PostgreSQL: a tenant's events after a revision, read from `coordination_history` in the tenant's scoped transaction (migration V8 gave its rows what an envelope needs).
//!
//! **Tenancy.** Both queries run through [`single_statement`], which sets
//! `app.tenant_id` transaction-locally first; row-level security
//! (`tenant_isolation` on `coordination_history` and `tenant_state`, with
//! FORCE) then limits them to the tenant's rows even without the explicit
//! `tenant_id = $1`, which is there for the index.
//!
//! Revisions are assigned under the tenant's revision row lock, held until
//! commit, so the committed revisions a reader sees are always a prefix: no
//! later change can commit with a revision below one already visible. That
//! is what lets the feed read "everything after my latest" without missing
//! a change still in flight.

use async_trait::async_trait;
use hub_core::watch::{ChangeLog, ChangesSince};
use hub_core::{RegistryError, RegistryEvent, Revision, TenantId};

use super::error::from_pg;
use super::scoped::single_statement;
use super::store::PgStore;

/// The rows after `$2`, in the column order `outbox::entry` reads, then the
/// tenant's `history_from`. The outer join keeps one row when none follow.
const CHANGES: &str = "SELECT h.id, h.tenant_id, h.revision, h.event_id::text, h.event_type, \
        h.service_name, h.instance_id, h.occurred_at, h.previous_status, h.payload, \
        h.registered_at, h.last_heartbeat, NULL::varchar AS origin, \
        coalesce((SELECT s.history_from FROM tenant_state s WHERE s.tenant_id = $1), 0) \
 FROM (SELECT 1) AS one LEFT JOIN LATERAL ( \
     SELECT * FROM coordination_history \
     WHERE tenant_id = $1 AND revision > $2 \
     ORDER BY revision, id LIMIT $3) AS h ON true";

const HEAD: &str = "SELECT coalesce((SELECT s.revision FROM tenant_state s WHERE s.tenant_id = $1), 0), \
        coalesce((SELECT s.history_from FROM tenant_state s WHERE s.tenant_id = $1), 0)";

fn stored(revision: Revision) -> i64 {
    i64::try_from(revision.get()).unwrap_or(i64::MAX)
}

fn revision(value: i64) -> Revision {
    Revision::new(u64::try_from(value).unwrap_or(0))
}

#[async_trait]
impl ChangeLog for PgStore {
    async fn changes_since(
        &self,
        tenant: &TenantId,
        after: Revision,
        max: u32,
    ) -> Result<ChangesSince, RegistryError> {
        let limit = i64::from(max.max(1));
        let rows = single_statement(
            &self.pool,
            tenant,
            CHANGES,
            &[&tenant.as_str(), &stored(after), &limit],
        )
        .await?;
        let mut oldest = Revision::ZERO;
        // (revision, event if the row is one) for every row read.
        let mut read: Vec<(u64, Option<RegistryEvent>)> = Vec::with_capacity(rows.len());
        for row in &rows {
            oldest = revision(row.try_get(13).map_err(from_pg)?);
            let Some(seq) = row.try_get::<_, Option<i64>>(0).map_err(from_pg)? else {
                continue;
            };
            let at = revision(row.try_get(2).map_err(from_pg)?).get();
            // Rows without an event id are audit rows of no event (stored rows
            // that could not be read when removed) or rows from before V8.
            let event = if row
                .try_get::<_, Option<String>>(3)
                .map_err(from_pg)?
                .is_some()
            {
                let tenant_text: String = row.try_get(1).map_err(from_pg)?;
                match super::outbox::entry(seq, &tenant_text, row) {
                    Ok(event) => Some(event),
                    Err(cause) => {
                        tracing::error!(%tenant, seq, cause, "a history row cannot be read as an event; watchers go on without it");
                        None
                    }
                }
            } else {
                None
            };
            read.push((at, event));
        }
        let mut through = read.last().map_or(after.get(), |(r, _)| *r);
        let more = read.len() >= usize::try_from(max).unwrap_or(usize::MAX);
        // A full page may have cut the last revision in two: leave that
        // revision to the next read, unless it is the only one.
        if more && read.first().is_some_and(|(r, _)| *r < through) {
            through -= 1;
        }
        let events = read
            .into_iter()
            .filter(|(r, _)| *r <= through)
            .filter_map(|(_, e)| e)
            .collect();
        Ok(ChangesSince {
            events,
            through: Revision::new(through),
            oldest_retained: oldest,
            more,
        })
    }

    async fn head(&self, tenant: &TenantId) -> Result<(Revision, Revision), RegistryError> {
        let rows = single_statement(&self.pool, tenant, HEAD, &[&tenant.as_str()]).await?;
        let row = rows
            .first()
            .ok_or_else(|| RegistryError::Unexpected("the head query returned no row".into()))?;
        Ok((
            revision(row.try_get(0).map_err(from_pg)?),
            revision(row.try_get(1).map_err(from_pg)?),
        ))
    }
}
