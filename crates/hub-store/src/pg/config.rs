//! `PgConfig`: how to reach PostgreSQL, and the pool built from it.

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use hub_core::RegistryError;
use tokio_postgres::NoTls;

use super::batch::GroupCommit;

/// Idle time before the first keepalive probe, time between probes, and
/// probes unanswered before the connection is dropped: a vanished peer of
/// an idle connection is noticed within about 25 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// Connection settings (the `POSTGRES_*` variables of the deployment guide).
#[derive(Clone)]
pub struct PgConfig {
    /// `POSTGRES_HOST`.
    pub host: String,
    /// `POSTGRES_PORT`, default 5432.
    pub port: u16,
    /// `POSTGRES_DB`, default `central_hub`.
    pub dbname: String,
    /// `POSTGRES_USER`, default `central_hub`.
    pub user: String,
    /// `POSTGRES_PASSWORD`, if any.
    pub password: Option<String>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Longest a statement may run, and longest a request waits for a
    /// connection or for a new one to open; beyond it the store answers
    /// `Unavailable` (503 `store_unavailable`). Every call also has a
    /// client-side deadline of this plus a margin ([`Self::call_deadline`]),
    /// which holds when the server does not answer at all.
    pub statement_timeout: Duration,
    /// Pooled connections one tenant's requests may hold at once; `None`:
    /// a quarter of the pool, at least one.
    pub tenant_max_connections: Option<usize>,
    /// How registrations and lease renewals share transactions (group
    /// commit; see `batch`).
    pub group_commit: GroupCommit,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("tenant_max_connections", &self.tenant_share())
            .field("group_commit", &self.group_commit)
            .finish()
    }
}

impl PgConfig {
    /// Settings for `host` with the documented defaults.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: 5432,
            dbname: "central_hub".into(),
            user: "central_hub".into(),
            password: None,
            pool_size: 16,
            statement_timeout: Duration::from_secs(5),
            tenant_max_connections: None,
            group_commit: GroupCommit::default(),
        }
    }

    /// The client-side bound on one call to PostgreSQL: the statement
    /// timeout plus a margin, so the server's own timeout comes first
    /// whenever the server is answering.
    pub fn call_deadline(&self) -> Duration {
        self.statement_timeout + super::gate::DEADLINE_MARGIN
    }

    /// Pooled connections one tenant's requests may hold at once: the
    /// setting, or a quarter of the pool; at least one, at most the pool.
    pub fn tenant_share(&self) -> usize {
        self.tenant_max_connections
            .unwrap_or(self.pool_size / 4)
            .clamp(1, self.pool_size.max(1))
    }

    /// The tokio-postgres configuration of one connection. The statement
    /// timeout is a session setting of the connection (it says nothing about
    /// tenants, so carrying it across checkouts is intended). TCP keepalive
    /// finds an idle pooled connection whose peer vanished (the pool then
    /// drops it instead of handing it out), and the TCP user timeout closes
    /// a connection whose sent data goes unacknowledged for longer than a
    /// call may take (a frozen network), including one the client already
    /// gave up on.
    pub fn connection(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .user(&self.user)
            .application_name("central-hub")
            .connect_timeout(self.statement_timeout)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES)
            .tcp_user_timeout(self.call_deadline())
            .options(format!(
                "-c statement_timeout={}",
                self.statement_timeout.as_millis()
            ));
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    /// A pool. Connections are opened lazily; `Fast` recycling is safe here
    /// because no connection ever carries a tenant outside a transaction (the
    /// tenant is set transaction-locally, and a dropped transaction is rolled
    /// back before the connection serves anyone else).
    pub fn pool(&self) -> Result<Pool, RegistryError> {
        let manager = Manager::from_config(
            self.connection(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(self.statement_timeout),
                create: Some(self.statement_timeout),
                recycle: Some(self.statement_timeout),
            })
            .build()
            .map_err(|e| RegistryError::Unexpected(Box::new(e)))
    }
}
