//! `Scoped`: the only way to touch a tenant table. A transaction whose first statement sets `app.tenant_id` locally.
//!
//! **Invariant:** every statement on a tenant table runs through a [`Scoped`]
//! opened by [`in_tenant!`], whose transaction began with
//! `SELECT set_config('app.tenant_id', $1, true)`. `Scoped` cannot be built
//! any other way and the pool is private to the store, so a query without a
//! tenant cannot be written. The setting is transaction-local (`true`): when
//! the transaction ends the connection carries no tenant. A session-level
//! `SET` would survive into the next checkout of the pooled connection, which
//! is why there is none.
//!
//! A transaction that is neither committed nor rolled back (its future was
//! dropped, say because the client went away) must not hand its connection
//! back to the pool while still open: `Drop` detaches such a connection from
//! the pool, which closes it, and the server rolls the transaction back.
//!
//! Every call here (`BEGIN`, each statement, the end) goes through the
//! connection's [`Checkout::bounded`], so each has the client-side deadline
//! of [`super::gate`]; a call that missed it leaves the transaction
//! unfinished, and the connection is closed the same way.

use hub_core::{RegistryError, TenantId};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::error::{DbError, from_db};
use super::gate::{Checkout, Gate};

/// Times a transaction is run again after the server rolled it back for a
/// serialization failure or deadlock. Only those: any other failure has an
/// outcome the caller must learn about, not a silent second attempt.
pub(crate) const MAX_ATTEMPTS: usize = 3;

const SET_TENANT: &str = "SELECT set_config('app.tenant_id', $1, true)";

/// An open transaction acting for one tenant. Statements are prepared once
/// per connection and cached (deadpool's statement cache).
pub(crate) struct Scoped {
    connection: Option<Checkout>,
}

impl Drop for Scoped {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            tracing::debug!("transaction abandoned; closing its connection instead of reusing it");
            connection.detach();
        }
    }
}

impl Scoped {
    /// Checks out a connection (within the tenant's share) and opens a
    /// transaction for `tenant`. `BEGIN` and `set_config` go out together
    /// (pipelined).
    pub(crate) async fn begin(gate: &Gate, tenant: &TenantId) -> Result<Self, RegistryError> {
        let scoped = Self {
            connection: Some(gate.tenant(tenant).await?),
        };
        scoped.open(tenant).await.map_err(from_db)?;
        Ok(scoped)
    }

    async fn open(&self, tenant: &TenantId) -> Result<(), DbError> {
        let connection = self.connection()?;
        let client = connection.client()?;
        let tenant = tenant.as_str();
        connection
            .bounded(async {
                let set_tenant = client.prepare_cached(SET_TENANT).await?;
                let params: [&(dyn ToSql + Sync); 1] = [&tenant];
                tokio::try_join!(
                    client.batch_execute("BEGIN"),
                    client.execute(&set_tenant, &params),
                )
            })
            .await?;
        Ok(())
    }

    /// Commits on `Ok`, rolls back on `Err`, and returns `result` (or the
    /// commit's error). A connection whose transaction could not be ended
    /// cleanly, or on which a call missed its deadline, is closed rather
    /// than reused.
    pub(crate) async fn finish<T>(mut self, result: Result<T, DbError>) -> Result<T, DbError> {
        let Some(connection) = self.connection.take() else {
            return Err(DbError::Finished);
        };
        if connection.is_spoiled() {
            // The server may still be running a statement of this
            // transaction (or not answering at all): no `ROLLBACK` to wait
            // for, the connection is closed and the server rolls back.
            connection.detach();
            return result;
        }
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = match connection.client() {
            Ok(client) => connection.bounded(client.batch_execute(end)).await,
            Err(e) => Err(e),
        };
        match ended {
            Ok(()) => result,
            Err(error) => {
                connection.detach();
                result.and(Err(error))
            }
        }
    }

    fn connection(&self) -> Result<&Checkout, DbError> {
        self.connection.as_ref().ok_or(DbError::Finished)
    }

    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        let connection = self.connection()?;
        let client = connection.client()?;
        connection
            .bounded(async {
                let statement = client.prepare_cached(sql).await?;
                client.query(&statement, params).await
            })
            .await
    }

    pub(crate) async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError> {
        let connection = self.connection()?;
        let client = connection.client()?;
        connection
            .bounded(async {
                let statement = client.prepare_cached(sql).await?;
                client.query_opt(&statement, params).await
            })
            .await
    }

    pub(crate) async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError> {
        let connection = self.connection()?;
        let client = connection.client()?;
        connection
            .bounded(async {
                let statement = client.prepare_cached(sql).await?;
                client.query_one(&statement, params).await
            })
            .await
    }

    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DbError> {
        let connection = self.connection()?;
        let client = connection.client()?;
        connection
            .bounded(async {
                let statement = client.prepare_cached(sql).await?;
                client.execute(&statement, params).await
            })
            .await
    }
}

/// Runs one statement as its own transaction scoped to `tenant`, with
/// `BEGIN`, the tenant setting, the statement and `COMMIT` sent together: one
/// round trip instead of three, for the hottest write (registration).
///
/// The same invariant holds as for [`Scoped`]: the first statement after
/// `BEGIN` sets `app.tenant_id` transaction-locally. If any part fails, the
/// server has aborted the transaction and the pipelined `COMMIT` ends it as a
/// rollback, so the connection goes back to the pool outside any
/// transaction. The four requests are queued on the connection in one poll,
/// so a caller that gives up cannot leave them half sent. A serialization
/// failure or deadlock reruns it (up to `MAX_ATTEMPTS` times). The whole
/// pipeline has the call deadline; one that missed it closes the connection.
pub(crate) async fn single_statement(
    gate: &Gate,
    tenant: &TenantId,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, RegistryError> {
    let connection = gate.tenant(tenant).await?;
    let client = connection.client().map_err(from_db)?;
    let mut attempt = 1;
    loop {
        let result = connection
            .bounded(pipelined(client, tenant, sql, params))
            .await;
        match result {
            Err(e) if super::error::is_retryable(&e) && attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "transaction rolled back by the server; running it again");
                attempt += 1;
            }
            other => return other.map_err(from_db),
        }
    }
}

async fn pipelined(
    client: &deadpool_postgres::Object,
    tenant: &TenantId,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let set_tenant = client.prepare_cached(SET_TENANT).await?;
    let statement = client.prepare_cached(sql).await?;
    let tenant = tenant.as_str();
    let tenant_params: [&(dyn ToSql + Sync); 1] = [&tenant];
    let (begin, set, rows, commit) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.execute(&set_tenant, &tenant_params),
        client.query(&statement, params),
        client.batch_execute("COMMIT"),
    );
    begin?;
    set?;
    let rows = rows?;
    commit?;
    Ok(rows)
}

/// `in_tenant!(gate, tenant, |scoped| { ... })`: runs the block (an async
/// block returning `Result<T, DbError>`) in a transaction scoped
/// to `tenant`, commits it on `Ok` and rolls it back on `Err`. A serialization
/// failure or deadlock reruns the whole block (up to `MAX_ATTEMPTS` times).
/// Evaluates to `Result<T, RegistryError>`.
///
/// A macro rather than a function taking a closure: an async closure that
/// borrows its captures cannot be shown to be `Send` for every lifetime the
/// `RegistryStore` futures need.
macro_rules! in_tenant {
    ($gate:expr, $tenant:expr, |$scoped:ident| $body:block) => {{
        let mut attempt = 1usize;
        loop {
            let transaction = $crate::pg::scoped::Scoped::begin($gate, $tenant).await?;
            let result: Result<_, $crate::pg::error::DbError> = {
                let $scoped = &transaction;
                async { $body }.await
            };
            match transaction.finish(result).await {
                Err(e)
                    if $crate::pg::error::is_retryable(&e)
                        && attempt < $crate::pg::scoped::MAX_ATTEMPTS =>
                {
                    tracing::debug!(attempt, error = %e, "transaction rolled back by the server; running it again");
                    attempt += 1;
                }
                other => break other.map_err($crate::pg::error::from_db),
            }
        }
    }};
}
pub(crate) use in_tenant;
