//! `PgConfig`: how to reach PostgreSQL, and the pool built from it.

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use hub_core::RegistryError;
use tokio_postgres::NoTls;

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
    /// `Unavailable` (503 `store_unavailable`).
    pub statement_timeout: Duration,
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
        }
    }

    /// The tokio-postgres configuration of one connection. The statement
    /// timeout is a session setting of the connection (it says nothing about
    /// tenants, so carrying it across checkouts is intended).
    pub fn connection(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .user(&self.user)
            .application_name("central-hub")
            .connect_timeout(self.statement_timeout)
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
