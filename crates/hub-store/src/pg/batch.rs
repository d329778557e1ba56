//! Group commit: concurrent single-statement changes of any tenants share one transaction, and so one WAL flush.
//!
//! A registration (or a heartbeat that changes no status) is one statement.
//! Run alone it costs a transaction: `BEGIN`, the tenant setting, the
//! statement, `COMMIT`, and a WAL flush that PostgreSQL must wait for before
//! it answers. Under a registration storm the flushes, not the statements,
//! are the bound. So changes go through queues to a few writer tasks
//! ([`GroupCommit::writers`]), each tenant always to the same writer (a hash
//! of its id), so two writers never touch the same tenant's rows and never
//! wait for each other's locks. A writer takes everything queued for it (up
//! to [`GroupCommit::max_batch`], at most [`GroupCommit::per_tenant`] of one
//! tenant, so one noisy tenant cannot crowd the others out of a batch) and
//! runs it as one transaction, pipelined in one round trip:
//!
//! ```text
//! BEGIN
//! set_config('app.tenant_id', 'a', true)   -- tenant a's changes, in arrival order
//! <change 1 of a> ; <change 2 of a>
//! set_config('app.tenant_id', 'b', true)   -- then tenant b's
//! <change 1 of b>
//! COMMIT                                   -- only once every answer was read
//! ```
//!
//! Nobody waits on purpose: with one change queued, it goes alone at once.
//! Batches grow with load, because changes arrive while the writers are busy
//! with the previous transactions (adaptive, as etcd batches the proposals
//! that arrive while the previous batch is being written).
//!
//! **What stays true.**
//! - A change is acknowledged only after its batch committed.
//! - Every statement runs after the `set_config` of its own tenant, set
//!   transaction-locally, so row-level security checks each row against the
//!   tenant the change was made for; no statement writes two tenants' rows.
//! - One writer per tenant, tenants in id order within a batch, and each
//!   tenant's changes in arrival order: a tenant's revisions follow the
//!   order its changes arrived in, and every transaction locks revision rows
//!   in the same order (a batch and a tenant's own transaction, say a
//!   removal, cannot deadlock each other).
//! - One failing change fails alone. PostgreSQL aborts the whole
//!   transaction at the first error, so the writer rolls it back, answers
//!   the change that failed with its error, and runs the others again in a
//!   new transaction. A change the caller finds unacceptable after reading
//!   its rows (its `accept` check) is rolled back the same way and answered
//!   [`Outcome::Rejected`], so the caller can take its slow path.
//! - A batch that cannot finish (the connection broke, the deadline passed)
//!   rolls back as a whole on the server: nothing of it is half done, and
//!   every change in it answers `store_unavailable` (its outcome unknown,
//!   as for a lone transaction).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::future::join_all;
use hub_core::ports::WriteBatchStats;
use hub_core::{RegistryError, TenantId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::error::{DbError, chain, from_db, is_retryable};
use super::gate::{Checkout, Gate};
use super::scoped::MAX_ATTEMPTS;

const SET_TENANT: &str = "SELECT set_config('app.tenant_id', $1, true)";

/// A batch's transaction, whose `lock_timeout` bounds how long a change in
/// it waits for a lock (a tenant's revision row, an instance row) that a
/// transaction outside the batch holds: 200 ms. A change waits for a lock before it goes on, and the whole
/// batch with it; past this, the change leaves the batch (which runs again
/// without it) and its tenant's changes bypass the batches for
/// [`BYPASS_FOR`], each in a transaction of its own within the tenant's
/// connection share. So one tenant whose rows are held (a long
/// transaction, an operator's lock) cannot hold up the other tenants'
/// changes. Batches of two writers that share a tenant wait for each other
/// only as long as a batch takes, far less than this.
const BEGIN: &str = "BEGIN; SET LOCAL lock_timeout = '200ms'";
const BYPASS_FOR: Duration = Duration::from_secs(2);

/// A statement parameter the change owns (it outlives the caller's borrow).
pub(crate) type Param = Box<dyn ToSql + Send + Sync>;

/// A check of a change's rows, made before its batch commits: `false` rolls
/// the change back (and only it) and answers [`Outcome::Rejected`].
pub(crate) type Accept = Box<dyn Fn(&[Row]) -> bool + Send + Sync>;

/// How group commit runs (`HUB_PG_WRITERS`, `HUB_PG_WRITE_BATCH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// Transactions of batched changes in flight at once (each holds one
    /// pooled connection while it runs). 0 turns group commit off: every
    /// change is a transaction of its own.
    pub writers: usize,
    /// Most changes in one transaction.
    pub max_batch: usize,
    /// Most changes of one tenant in one transaction.
    pub per_tenant: usize,
}

impl Default for GroupCommit {
    fn default() -> Self {
        Self {
            writers: 2,
            max_batch: 256,
            per_tenant: 64,
        }
    }
}

impl GroupCommit {
    /// Changes that may wait in one writer's queue before a new one is
    /// refused with `store_unavailable` (a few full batches).
    fn queue_capacity(&self) -> usize {
        self.max_batch.max(1) * 8
    }
}

/// What became of one change.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Committed; the rows its statement returned.
    Rows(Vec<Row>),
    /// Rolled back because its `accept` check refused its rows.
    Rejected,
    /// Not run in a batch: a lock it needs is held elsewhere (see
    /// [`BEGIN`]); the caller runs it in a transaction of its own, with
    /// the parameters given back.
    Bypass(Vec<Param>),
}

/// One change waiting for a batch.
struct Pending {
    tenant: TenantId,
    sql: &'static str,
    params: Vec<Param>,
    accept: Option<Accept>,
    reply: oneshot::Sender<Result<Outcome, RegistryError>>,
    /// When it was queued: a change that found no writer within the wait
    /// for a connection is answered 503 instead of being run.
    queued_at: Instant,
}

/// The queue and the writers that empty it. Writers start on the first
/// change (so a store can be built outside a runtime) and end when the
/// store and all its clones are gone (the queue's sender closes).
pub(crate) struct Batcher {
    config: GroupCommit,
    gate: Gate,
    /// One queue per writer; a tenant's changes always go to the same one.
    senders: OnceLock<Vec<mpsc::Sender<Pending>>>,
    /// How long a change may wait for a writer (the wait for a connection,
    /// `HUB_PG_STATEMENT_TIMEOUT_MS`), as a lone transaction waits for a
    /// pooled connection.
    wait: Duration,
    /// How long a caller waits for its answer: the wait for a writer and
    /// the deadline of a call, the bound a lone transaction has (past it:
    /// `store_unavailable`).
    patience: Duration,
    stats: Arc<Stats>,
    /// The runtime the store was built on, where the writers run: not the
    /// runtime of whichever request comes first (with actix-web, one of the
    /// HTTP workers' own, which may be restarted).
    runtime: Option<tokio::runtime::Handle>,
}

#[derive(Default)]
struct Stats {
    batches: AtomicU64,
    changes: AtomicU64,
    bypassed: AtomicU64,
    /// Tenants whose changes found a lock held elsewhere, and until when
    /// their changes bypass the batches.
    contended: std::sync::Mutex<HashMap<TenantId, Instant>>,
}

impl Stats {
    fn contended(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Instant>> {
        self.contended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `tenant`'s changes bypass the batches now (forgetting
    /// tenants whose time is up).
    fn bypasses(&self, tenant: &TenantId) -> bool {
        let mut contended = self.contended();
        if contended.is_empty() {
            return false;
        }
        let now = Instant::now();
        contended.retain(|_, until| *until > now);
        contended.contains_key(tenant)
    }

    fn contend(&self, tenant: &TenantId) {
        self.bypassed.fetch_add(1, Ordering::Relaxed);
        self.contended()
            .insert(tenant.clone(), Instant::now() + BYPASS_FOR);
    }
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A writer's queue: the channel, and what was taken off it but did not
/// fit in a batch (kept in arrival order).
struct Queue {
    receiver: mpsc::Receiver<Pending>,
    waiting: VecDeque<Pending>,
}

impl Batcher {
    pub(crate) fn new(gate: Gate, config: GroupCommit, wait: Duration, deadline: Duration) -> Self {
        Self {
            config,
            gate,
            senders: OnceLock::new(),
            wait,
            patience: wait + deadline,
            stats: Arc::default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    pub(crate) fn stats(&self) -> WriteBatchStats {
        WriteBatchStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            changes: self.stats.changes.load(Ordering::Relaxed),
            bypassed: self.stats.bypassed.load(Ordering::Relaxed),
        }
    }

    /// Whether changes are batched (else the caller runs its own
    /// transaction).
    pub(crate) fn enabled(&self) -> bool {
        self.config.writers > 0 && self.config.max_batch > 1
    }

    /// Runs `sql` with `params` for `tenant` in the next batch and answers
    /// once that batch committed (or failed).
    pub(crate) async fn submit(
        &self,
        tenant: &TenantId,
        sql: &'static str,
        params: Vec<Param>,
        accept: Option<Accept>,
    ) -> Result<Outcome, RegistryError> {
        if self.stats.bypasses(tenant) {
            return Ok(Outcome::Bypass(params));
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            tenant: tenant.clone(),
            sql,
            params,
            accept,
            reply,
            queued_at: Instant::now(),
        };
        self.sender(tenant)?.try_send(pending).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => unavailable(format!(
                "{} changes are already waiting for PostgreSQL (HUB_PG_WRITERS, HUB_PG_WRITE_BATCH)",
                self.config.queue_capacity()
            )),
            mpsc::error::TrySendError::Closed(_) => {
                unavailable("the store's writers have stopped".to_owned())
            }
        })?;
        match tokio::time::timeout(self.patience, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(unavailable(
                "the change's writer ended before answering".to_owned(),
            )),
            Err(_) => Err(unavailable(format!(
                "the change was not committed within {:?} (HUB_PG_STATEMENT_TIMEOUT_MS); its outcome is unknown",
                self.patience
            ))),
        }
    }

    /// The queue of `tenant`'s writer. Tenants are spread over the writers
    /// by a hash of their id, so two writers never hold the same tenant's
    /// rows: their transactions never wait for each other's locks (with one
    /// shared queue they did, at almost every tenant two batches shared),
    /// and each tenant's changes commit strictly in arrival order.
    fn sender(&self, tenant: &TenantId) -> Result<&mpsc::Sender<Pending>, RegistryError> {
        let senders = self.senders.get_or_init(|| {
            (0..self.config.writers.max(1))
                .map(|_| {
                    let (sender, receiver) = mpsc::channel(self.config.queue_capacity());
                    let queue = Queue {
                        receiver,
                        waiting: VecDeque::new(),
                    };
                    let writer = writer(
                        queue,
                        self.gate.clone(),
                        (self.config, self.wait),
                        self.stats.clone(),
                    );
                    match &self.runtime {
                        Some(runtime) => drop(runtime.spawn(writer)),
                        None => drop(tokio::spawn(writer)),
                    }
                    sender
                })
                .collect()
        });
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(tenant.as_str(), &mut hasher);
        let shard = std::hash::Hasher::finish(&hasher) % (senders.len().max(1) as u64);
        usize::try_from(shard)
            .ok()
            .and_then(|shard| senders.get(shard))
            .ok_or_else(|| unavailable("the store has no writer".to_owned()))
    }
}

fn unavailable(message: String) -> RegistryError {
    RegistryError::Unavailable {
        component: "store",
        source: message.into(),
    }
}

/// One writer: takes a batch off its queue, runs it, and again, until the
/// queue closes.
async fn writer(
    mut queue: Queue,
    gate: Gate,
    (config, wait): (GroupCommit, Duration),
    stats: Arc<Stats>,
) {
    loop {
        let batch = {
            if queue.waiting.is_empty() {
                match queue.receiver.recv().await {
                    Some(pending) => queue.waiting.push_back(pending),
                    None => return,
                }
            }
            while queue.waiting.len() < config.max_batch.saturating_mul(4) {
                match queue.receiver.try_recv() {
                    Ok(pending) => queue.waiting.push_back(pending),
                    Err(_) => break,
                }
            }
            take(&mut queue.waiting, config, wait)
        };
        if !batch.is_empty() {
            let committed = run(&gate, &stats, batch).await;
            if committed > 0 {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.changes.fetch_add(committed, Ordering::Relaxed);
            }
        }
    }
}

/// Takes up to `max_batch` changes off the front, at most `per_tenant` of
/// one tenant (the rest keep their places), skips changes whose caller has
/// gone, and answers 503 to changes that waited longer than `wait` for a
/// writer (the writers are stuck: PostgreSQL does not answer). Returns them
/// grouped by tenant (in id order), each tenant's in arrival order.
fn take(waiting: &mut VecDeque<Pending>, config: GroupCommit, wait: Duration) -> Vec<Pending> {
    let mut taken: Vec<Pending> = Vec::new();
    let mut per_tenant: HashMap<TenantId, usize> = HashMap::new();
    let mut left = VecDeque::with_capacity(waiting.len());
    while let Some(pending) = waiting.pop_front() {
        if pending.reply.is_closed() {
            continue;
        }
        if pending.queued_at.elapsed() > wait {
            let _ = pending.reply.send(Err(unavailable(format!(
                "no writer was free within {wait:?} (HUB_PG_STATEMENT_TIMEOUT_MS, HUB_PG_WRITERS); the change was not run"
            ))));
            continue;
        }
        if taken.len() >= config.max_batch.max(1) {
            left.push_back(pending);
            continue;
        }
        let count = per_tenant.entry(pending.tenant.clone()).or_default();
        if *count >= config.per_tenant.max(1) {
            left.push_back(pending);
            continue;
        }
        *count += 1;
        taken.push(pending);
    }
    *waiting = left;
    // Stable: each tenant's changes keep their arrival order.
    taken.sort_by(|a, b| a.tenant.as_str().cmp(b.tenant.as_str()));
    taken
}

/// Runs a batch to the end: commits what can be committed and answers
/// every change. Returns how many changes were committed.
async fn run(gate: &Gate, stats: &Stats, mut batch: Vec<Pending>) -> u64 {
    let mut attempt = 1;
    while !batch.is_empty() {
        let connection = match gate.internal().await {
            Ok(connection) => connection,
            Err(error) => {
                answer_all(batch, &error);
                return 0;
            }
        };
        match attempt_batch(&connection, &batch).await {
            Attempt::Committed(rows) => {
                let committed = batch.len() as u64;
                for (pending, rows) in batch.into_iter().zip(rows) {
                    let _ = pending.reply.send(Ok(Outcome::Rows(rows)));
                }
                return committed;
            }
            Attempt::Failed { index, error } => {
                end(&connection, "ROLLBACK").await;
                let failed = batch.remove(index);
                let _ = failed.reply.send(Err(from_db(error)));
            }
            Attempt::Contended(index) => {
                end(&connection, "ROLLBACK").await;
                let contended = batch.remove(index);
                tracing::debug!(tenant = %contended.tenant, "a change waited for a lock held elsewhere; its tenant bypasses batches for a while");
                stats.contend(&contended.tenant);
                let _ = contended.reply.send(Ok(Outcome::Bypass(contended.params)));
            }
            Attempt::Rejected(index) => {
                end(&connection, "ROLLBACK").await;
                let rejected = batch.remove(index);
                let _ = rejected.reply.send(Ok(Outcome::Rejected));
            }
            Attempt::Retry(error) if attempt < MAX_ATTEMPTS => {
                end(&connection, "ROLLBACK").await;
                tracing::debug!(attempt, error = %error, "batch rolled back by the server; running it again");
                attempt += 1;
            }
            Attempt::Retry(error) | Attempt::Broken(error) => {
                // The server rolls back whatever was sent (a broken
                // connection is closed; its transaction never commits).
                connection.detach();
                answer_all(batch, &from_db(error));
                return 0;
            }
        }
    }
    0
}

/// One try of a batch on one connection.
enum Attempt {
    /// Committed; each change's rows, in batch order.
    Committed(Vec<Vec<Row>>),
    /// The change at `index` failed on its own; the rest did not run or
    /// were rolled back with it.
    Failed { index: usize, error: DbError },
    /// The change at `index` was refused by its `accept` check.
    Rejected(usize),
    /// The change at `index` waited longer than [`BEGIN`] for a
    /// lock.
    Contended(usize),
    /// The server rolled the transaction back for a serialization failure
    /// or deadlock: it may simply be run again.
    Retry(DbError),
    /// The connection or the transaction cannot go on; outcome unknown.
    Broken(DbError),
}

type Call<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;

async fn attempt_batch(connection: &Checkout, batch: &[Pending]) -> Attempt {
    let client = match connection.client() {
        Ok(client) => client,
        Err(error) => return Attempt::Broken(error),
    };
    // Prepared once per connection and statement text (deadpool's cache).
    let mut statements: HashMap<&'static str, Statement> = HashMap::new();
    let prepared = connection
        .bounded(async {
            let set_tenant = client.prepare_cached(SET_TENANT).await?;
            for pending in batch {
                if !statements.contains_key(pending.sql) {
                    statements.insert(pending.sql, client.prepare_cached(pending.sql).await?);
                }
            }
            Ok(set_tenant)
        })
        .await;
    let set_tenant = match prepared {
        Ok(statement) => statement,
        Err(error) => return Attempt::Broken(error),
    };
    // Every call is queued on the connection in order on the first poll of
    // `join_all`, so the whole batch goes out in one round trip.
    let tenants: Vec<&str> = batch.iter().map(|p| p.tenant.as_str()).collect();
    let mut calls: Vec<Call<'_>> = Vec::with_capacity(batch.len() * 2 + 1);
    let mut change_calls = Vec::with_capacity(batch.len());
    calls.push(Box::pin(async {
        client.batch_execute(BEGIN).await.map(|()| Vec::new())
    }));
    for (index, pending) in batch.iter().enumerate() {
        if index == 0 || tenants[index - 1] != tenants[index] {
            let tenant = &tenants[index];
            let set_tenant = &set_tenant;
            calls.push(Box::pin(async move {
                client
                    .query(set_tenant, &[tenant as &(dyn ToSql + Sync)])
                    .await
            }));
        }
        let Some(statement) = statements.get(pending.sql) else {
            return Attempt::Broken(DbError::Finished);
        };
        change_calls.push(calls.len());
        calls.push(Box::pin(async move {
            let params: Vec<&(dyn ToSql + Sync)> = pending
                .params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            client.query(statement, &params).await
        }));
    }
    let results = match connection
        .bounded(async { Ok::<_, tokio_postgres::Error>(join_all(calls).await) })
        .await
    {
        Ok(results) => results,
        Err(error) => return Attempt::Broken(error),
    };
    let mut results: Vec<Option<Result<Vec<Row>, tokio_postgres::Error>>> =
        results.into_iter().map(Some).collect();
    // The first error is the cause; later calls only report that the
    // transaction was already aborted.
    if let Some(position) = results.iter().position(|r| matches!(r, Some(Err(_)))) {
        let error = match results.get_mut(position).and_then(Option::take) {
            Some(Err(error)) => error,
            _ => return Attempt::Broken(DbError::Finished),
        };
        let error = DbError::Pg(error);
        if is_retryable(&error) {
            return Attempt::Retry(error);
        }
        let contended =
            matches!(&error, DbError::Pg(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE));
        return match change_calls.iter().position(|&call| call == position) {
            Some(index) if contended => Attempt::Contended(index),
            Some(index) if !is_connection_error(&error) => Attempt::Failed { index, error },
            // BEGIN or a tenant setting failed, or the connection broke.
            _ => Attempt::Broken(error),
        };
    }
    let mut rows = Vec::with_capacity(batch.len());
    for (index, &call) in change_calls.iter().enumerate() {
        let change_rows: Vec<Row> = match results.get_mut(call).and_then(Option::take) {
            Some(Ok(change_rows)) => change_rows,
            _ => return Attempt::Broken(DbError::Finished),
        };
        if let Some(accept) = &batch[index].accept
            && !accept(&change_rows)
        {
            return Attempt::Rejected(index);
        }
        rows.push(change_rows);
    }
    match connection.bounded(client.batch_execute("COMMIT")).await {
        Ok(()) => Attempt::Committed(rows),
        Err(error) if is_retryable(&error) => Attempt::Retry(error),
        Err(error) => Attempt::Broken(error),
    }
}

/// Whether the error is the connection's rather than one statement's.
fn is_connection_error(error: &DbError) -> bool {
    match error {
        DbError::Pg(e) => {
            e.is_closed()
                || match e.code() {
                    None => true,
                    // A statement timeout (57014) is the statement's own.
                    Some(code) if *code == SqlState::QUERY_CANCELED => false,
                    Some(code) => {
                        code.code().starts_with("08")
                            || code.code().starts_with("57")
                            || *code == SqlState::IN_FAILED_SQL_TRANSACTION
                    }
                }
        }
        _ => true,
    }
}

/// Ends the transaction; a connection that cannot end it is closed (the
/// server then rolls it back).
async fn end(connection: &Checkout, statement: &str) {
    let ended = match connection.client() {
        Ok(client) => connection.bounded(client.batch_execute(statement)).await,
        Err(error) => Err(error),
    };
    if let Err(error) = ended {
        tracing::debug!(cause = %chain(&error), "could not end a batch's transaction; closing its connection");
        connection.spoil();
    }
}

/// Answers every change of a batch with (a copy of) the same failure.
fn answer_all(batch: Vec<Pending>, error: &RegistryError) {
    tracing::warn!(changes = batch.len(), cause = %chain(error), "a batch of changes failed as a whole");
    for pending in batch {
        let _ = pending.reply.send(Err(copy(error)));
    }
}

/// A copy of `error` for one of several callers (the original's cause is
/// kept as text).
fn copy(error: &RegistryError) -> RegistryError {
    match error {
        RegistryError::NotFound(what) => RegistryError::NotFound(what.clone()),
        RegistryError::Conflict(what) => RegistryError::Conflict(what.clone()),
        RegistryError::QuotaExceeded { limit, max } => {
            RegistryError::QuotaExceeded { limit, max: *max }
        }
        RegistryError::Unavailable { component, .. } => RegistryError::Unavailable {
            component,
            source: chain(error).into(),
        },
        RegistryError::Invalid(_) | RegistryError::Unexpected(_) => {
            RegistryError::Unexpected(chain(error).into())
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::pg::PgConfig;
    use crate::testing::TestDb;

    type Answer = oneshot::Receiver<Result<Outcome, RegistryError>>;

    const INSERT_STATE: &str =
        "INSERT INTO tenant_state (tenant_id, revision) VALUES ($1, $2) RETURNING revision";

    fn change(
        tenant: &str,
        sql: &'static str,
        params: Vec<Param>,
        accept: Option<Accept>,
    ) -> (Pending, Answer) {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            tenant: TenantId::parse(tenant).unwrap(),
            sql,
            params,
            accept,
            reply,
            queued_at: Instant::now(),
        };
        (pending, answer)
    }

    /// A change of `tenant` that writes `row`'s revision row.
    fn insert(tenant: &str, row: &str, revision: i64) -> (Pending, Answer) {
        change(
            tenant,
            INSERT_STATE,
            vec![Box::new(row.to_owned()), Box::new(revision)],
            None,
        )
    }

    fn gate(db: &TestDb) -> Gate {
        Gate::new(&PgConfig {
            statement_timeout: Duration::from_secs(20),
            ..db.app.clone()
        })
        .unwrap()
    }

    /// The revision stored for `tenant`, read as the application in a
    /// transaction scoped to that tenant.
    async fn stored(db: &TestDb, tenant: &str) -> Option<i64> {
        db.as_tenant(
            tenant,
            "SELECT revision FROM tenant_state WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .first()
        .map(|r| r.get(0))
    }

    fn rows(answer: Result<Outcome, RegistryError>) -> Vec<Row> {
        match answer.unwrap() {
            Outcome::Rows(rows) => rows,
            other => panic!("{other:?}"),
        }
    }

    /// In one batch of four tenants: a change that writes another tenant's
    /// row is refused by row-level security (the tenant setting applies to
    /// each change), a duplicate fails as a conflict, and only those two
    /// fail: the other changes commit, with their own rows.
    #[tokio::test]
    async fn each_change_is_checked_under_its_own_tenant_and_fails_alone() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let gate = gate(&db);
        let (a, a_answer) = insert("batch-a", "batch-a", 1);
        let (b, b_answer) = insert("batch-b", "batch-x", 7);
        let (c, c_answer) = insert("batch-c", "batch-c", 3);
        let (d1, d1_answer) = insert("batch-d", "batch-d", 4);
        let (d2, d2_answer) = insert("batch-d", "batch-d", 5);
        assert_eq!(
            run(&gate, &Stats::default(), vec![a, b, c, d1, d2]).await,
            3
        );
        assert_eq!(rows(a_answer.await.unwrap())[0].get::<_, i64>(0), 1);
        let refused = b_answer.await.unwrap().err().unwrap();
        assert!(
            chain(&refused).contains("row-level security"),
            "{}",
            chain(&refused)
        );
        assert_eq!(rows(c_answer.await.unwrap())[0].get::<_, i64>(0), 3);
        assert_eq!(rows(d1_answer.await.unwrap())[0].get::<_, i64>(0), 4);
        let duplicate = d2_answer.await.unwrap().err().unwrap();
        assert!(
            matches!(duplicate, RegistryError::Conflict(_)),
            "{duplicate:?}"
        );
        assert_eq!(stored(&db, "batch-a").await, Some(1));
        assert_eq!(stored(&db, "batch-c").await, Some(3));
        assert_eq!(stored(&db, "batch-d").await, Some(4));
        assert_eq!(stored(&db, "batch-x").await, None);
        assert_eq!(stored(&db, "batch-b").await, None);
    }

    /// A change whose rows its caller refuses is rolled back alone.
    #[tokio::test]
    async fn a_rejected_change_is_rolled_back_alone() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let gate = gate(&db);
        let (a, a_answer) = insert("reject-a", "reject-a", 1);
        let (b, b_answer) = change(
            "reject-b",
            INSERT_STATE,
            vec![Box::new("reject-b".to_owned()), Box::new(2i64)],
            Some(Box::new(|rows: &[Row]| rows.is_empty())),
        );
        let (c, c_answer) = insert("reject-c", "reject-c", 3);
        assert_eq!(run(&gate, &Stats::default(), vec![a, b, c]).await, 2);
        rows(a_answer.await.unwrap());
        assert!(matches!(b_answer.await.unwrap(), Ok(Outcome::Rejected)));
        rows(c_answer.await.unwrap());
        assert_eq!(stored(&db, "reject-a").await, Some(1));
        assert_eq!(stored(&db, "reject-b").await, None);
        assert_eq!(stored(&db, "reject-c").await, Some(3));
    }

    /// A batch whose connection dies between its statements (here while
    /// its last statement runs) leaves nothing of itself behind, and every
    /// change in it learns that its outcome is unknown.
    #[tokio::test]
    async fn a_batch_cut_short_leaves_nothing_half_done() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let gate = gate(&db);
        let (a, a_answer) = insert("cut-a", "cut-a", 1);
        let (b, b_answer) = insert("cut-b", "cut-b", 2);
        let (c, c_answer) = change(
            "cut-c",
            "SELECT pg_sleep($1)",
            vec![Box::new(15.0f64)],
            None,
        );
        let batch = tokio::spawn({
            let gate = gate.clone();
            async move { run(&gate, &Stats::default(), vec![a, b, c]).await }
        });
        let admin = db.admin().await;
        let mut terminated = false;
        for _ in 0..100 {
            let killed = admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND query = 'SELECT pg_sleep($1)' AND state = 'active'",
                    &[&db.name],
                )
                .await
                .unwrap();
            if !killed.is_empty() {
                terminated = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(terminated, "the batch's statement was never seen running");
        assert_eq!(batch.await.unwrap(), 0);
        for answer in [a_answer, b_answer, c_answer] {
            let error = answer.await.unwrap().err().unwrap();
            assert!(
                matches!(error, RegistryError::Unavailable { .. }),
                "{error:?}"
            );
        }
        assert_eq!(stored(&db, "cut-a").await, None);
        assert_eq!(stored(&db, "cut-b").await, None);
    }

    /// A change that waits for a lock held outside the batch leaves it
    /// after the lock timeout, with its parameters, and its tenant bypasses
    /// the batches for a while; the batch commits the rest.
    #[tokio::test]
    async fn a_change_held_up_by_a_lock_leaves_its_batch() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let gate = gate(&db);
        let stats = Stats::default();
        let (held, answer) = insert("held", "held", 1);
        assert_eq!(run(&gate, &stats, vec![held]).await, 1);
        rows(answer.await.unwrap());
        let superuser = TestDb::connect(&PgConfig {
            user: "postgres".into(),
            ..db.owner.clone()
        })
        .await;
        superuser
            .batch_execute("BEGIN; SELECT 1 FROM tenant_state WHERE tenant_id = 'held' FOR UPDATE")
            .await
            .unwrap();
        let (a, a_answer) = insert("free", "free", 1);
        let (bump, bump_answer) = change(
            "held",
            "UPDATE tenant_state SET revision = revision + 1 WHERE tenant_id = $1 RETURNING revision",
            vec![Box::new("held".to_owned())],
            None,
        );
        let started = Instant::now();
        assert_eq!(run(&gate, &stats, vec![a, bump]).await, 1);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        rows(a_answer.await.unwrap());
        match bump_answer.await.unwrap() {
            Ok(Outcome::Bypass(params)) => assert_eq!(params.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(stats.bypasses(&TenantId::parse("held").unwrap()));
        assert!(!stats.bypasses(&TenantId::parse("free").unwrap()));
        assert_eq!(stats.bypassed.load(Ordering::Relaxed), 1);
        superuser.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(stored(&db, "free").await, Some(1));
        assert_eq!(stored(&db, "held").await, Some(1));
    }

    /// A batch takes at most `per_tenant` changes of one tenant and
    /// `max_batch` in all; the rest keep their places for the next batch;
    /// changes whose caller has gone are dropped, and those that waited past
    /// the wait are answered 503; the batch is grouped by tenant, each
    /// tenant's changes in arrival order.
    #[test]
    fn a_batch_caps_each_tenant_and_keeps_arrival_order() {
        let config = GroupCommit {
            writers: 1,
            max_batch: 5,
            per_tenant: 2,
        };
        let mut waiting = VecDeque::new();
        let mut answers = Vec::new();
        for (tenant, revision) in [("n", 1), ("n", 2), ("n", 3), ("m", 1), ("n", 4), ("k", 1)] {
            let (pending, answer) = insert(tenant, tenant, revision);
            waiting.push_back(pending);
            answers.push(answer);
        }
        let (gone, answer) = insert("g", "g", 1);
        drop(answer);
        waiting.push_front(gone);
        let (mut stale, mut stale_answer) = insert("s", "s", 1);
        stale.queued_at = Instant::now() - Duration::from_secs(6);
        waiting.push_front(stale);
        let order = |batch: &[Pending]| -> Vec<String> {
            batch.iter().map(|p| p.tenant.as_str().to_owned()).collect()
        };
        let first = take(&mut waiting, config, Duration::from_secs(5));
        assert_eq!(order(&first), ["k", "m", "n", "n"]);
        // A change that found no writer within the wait is answered, not run.
        let refused = stale_answer.try_recv().unwrap().err().unwrap();
        assert!(
            matches!(refused, RegistryError::Unavailable { .. }),
            "{refused:?}"
        );
        assert_eq!(waiting.len(), 2, "n's third and fourth wait");
        let second = take(&mut waiting, config, Duration::from_secs(5));
        assert_eq!(order(&second), ["n", "n"]);
        assert!(waiting.is_empty());
        // n's changes went out in the order they came.
        let firsts: Vec<String> = first
            .iter()
            .chain(&second)
            .filter(|p| p.tenant.as_str() == "n")
            .map(|p| format!("{:?}", p.params[1]))
            .collect();
        assert_eq!(firsts, ["1", "2", "3", "4"]);
    }
}
