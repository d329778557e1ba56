//! PostgreSQL for the bench: the admin connection, a throwaway database and login per server, and a PostgreSQL-mode server on them.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

use crate::bench::console::{progress, report};
use crate::bench::names::random_hex;
use crate::bench::options::{Options, PG_ADMIN_ENV, PgMode};
use crate::bench::servers::Server;

/// Longest the admin connection waits to connect, so that an unreachable
/// server is reported quickly instead of hanging the benchmark.
pub(crate) const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The store's default timeout of 5 s is meant for requests; the migrations
/// are DDL on a fresh database, which a loaded machine can make slower.
pub(crate) const PG_MIGRATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Decides whether the PostgreSQL phases run: `None` means they do not, and
/// the report says why.
pub(crate) async fn postgres_admin(options: &Options) -> anyhow::Result<Option<PgAdmin>> {
    if options.postgres == PgMode::Skip {
        report("postgres: skipped (--skip-postgres)\n");
        return Ok(None);
    }
    let admin = PgAdmin::parse(&options.pg_admin);
    let probed = match admin {
        Ok(admin) => admin.probe().await.map(|()| admin),
        Err(error) => Err(error),
    };
    match probed {
        Ok(admin) => {
            report(&format!(
                "postgres: {} as {} (admin), HUB_PG_POOL_SIZE={}; a throwaway database and login per run\n",
                admin.endpoint(),
                admin.user,
                options.pg_pool
            ));
            Ok(Some(admin))
        }
        Err(error) if options.postgres == PgMode::Auto => {
            report(&format!(
                "postgres: SKIPPED, the admin connection ({PG_ADMIN_ENV} or its default) failed: {error:#}; \
                 pass --postgres to make this an error\n"
            ));
            Ok(None)
        }
        Err(error) => Err(error.context("--postgres was given but PostgreSQL is not usable")),
    }
}

/// A PostgreSQL-mode server on a fresh database migrated as the admin,
/// connected as a fresh non-superuser login (as in production, where
/// row-level security must apply).
#[derive(Debug)]
pub(crate) struct PgServer {
    /// Declared before the database, so that it is dropped (killed) first:
    /// the database goes away only once nothing uses it any more.
    pub(crate) server: Server,
    pub(crate) scratch: Scratch,
}

impl PgServer {
    /// `extra` comes on top of the store's variables (the event buses).
    pub(crate) async fn start(
        options: &Options,
        admin: &PgAdmin,
        binary: &Path,
        log_path: &Path,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let scratch = Scratch::create(admin).await?;
        progress(&format!(
            "  postgres: database {}, login {}; migrating (server log: {})",
            scratch.database,
            scratch.role,
            log_path.display()
        ));
        let as_admin = admin.pg_config(&scratch.database);
        hub_store::pg::migrate::run(&as_admin)
            .await
            .with_context(|| format!("applying the migrations to {}", scratch.database))?;
        hub_store::pg::migrate::grant_app_role(&as_admin, &scratch.role, Some(&scratch.password))
            .await
            .with_context(|| format!("creating the login {}", scratch.role))?;
        // One login for the server and its outbox relay, as `cargo xtask
        // migrate --app-user` sets it up.
        hub_store::pg::migrate::grant_relay_role(&as_admin, &scratch.role, None)
            .await
            .with_context(|| format!("granting the relay role to {}", scratch.role))?;
        let mut env = vec![
            ("POSTGRES_HOST", admin.host.clone()),
            ("POSTGRES_PORT", admin.port.to_string()),
            ("POSTGRES_DB", scratch.database.clone()),
            ("POSTGRES_USER", scratch.role.clone()),
            ("POSTGRES_PASSWORD", scratch.password.clone()),
            ("HUB_PG_POOL_SIZE", options.pg_pool.to_string()),
        ];
        if let Some(writers) = options.pg_writers {
            env.push(("HUB_PG_WRITERS", writers.to_string()));
        }
        // Later entries win: a phase's own settings override the options.
        env.extend(extra.iter().cloned());
        let mut server = Server::start(binary, log_path, &options.log_level, &env)?;
        server.wait_ready("/health/ready").await?;
        Ok(Self { server, scratch })
    }
}

/// How to reach PostgreSQL as a role that may create databases and roles.
#[derive(Debug)]
pub(crate) struct PgAdmin {
    pub(crate) config: tokio_postgres::Config,
    /// A TCP host name or a Unix socket folder; the server gets the same.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: Option<String>,
}

impl PgAdmin {
    pub(crate) fn parse(libpq: &str) -> anyhow::Result<Self> {
        let mut config: tokio_postgres::Config = libpq
            .parse()
            .with_context(|| format!("{PG_ADMIN_ENV} is not a libpq key=value string"))?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(folder)) => folder.display().to_string(),
            None => bail!("{PG_ADMIN_ENV} names no host="),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let password = config
            .get_password()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
        if config.get_user().is_none() {
            config.user(&user);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(PG_CONNECT_TIMEOUT);
        }
        config.application_name("hub-bench");
        Ok(Self {
            config,
            host,
            port,
            user,
            password,
        })
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Connects and asks for nothing, to learn whether the phases can run.
    pub(crate) async fn probe(&self) -> anyhow::Result<()> {
        let client = admin_client(&self.config).await?;
        client
            .simple_query("SELECT 1")
            .await
            .context("querying PostgreSQL")?;
        Ok(())
    }

    /// The store's configuration for the admin in `database`, used to migrate
    /// it and to create the server's login.
    pub(crate) fn pg_config(&self, database: &str) -> hub_store::PgConfig {
        let mut config = hub_store::PgConfig::new(self.host.clone());
        config.port = self.port;
        config.dbname = database.to_owned();
        config.user.clone_from(&self.user);
        config.password.clone_from(&self.password);
        config.pool_size = 1;
        config.statement_timeout = PG_MIGRATE_TIMEOUT;
        config
    }
}

pub(crate) async fn admin_client(
    config: &tokio_postgres::Config,
) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    // The connection's own error also fails the next query, which reports it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A throwaway database and login, both dropped when this is dropped, on the
/// error paths too.
#[derive(Debug)]
pub(crate) struct Scratch {
    pub(crate) admin: tokio_postgres::Config,
    pub(crate) database: String,
    pub(crate) role: String,
    /// The login gets a random password so that the bench also works where
    /// the server does not trust loopback connections.
    pub(crate) password: String,
}

impl Scratch {
    pub(crate) async fn create(admin: &PgAdmin) -> anyhow::Result<Self> {
        let id = random_hex(6)?;
        // Built before anything is created, so that a failure of the CREATE
        // itself still runs the (IF EXISTS) cleanup.
        let scratch = Self {
            admin: admin.config.clone(),
            database: format!("hub_bench_{id}"),
            role: format!("hub_bench_{id}_app"),
            password: random_hex(16)?,
        };
        let client = admin_client(&scratch.admin).await?;
        // The name is made of letters, digits and '_' only, and identifiers
        // cannot be bind parameters.
        client
            .batch_execute(&format!("CREATE DATABASE \"{}\"", scratch.database))
            .await
            .with_context(|| format!("creating the database {}", scratch.database))?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Drop cannot await, and the calling thread belongs to the load
        // generator's runtime, which cannot be blocked on from inside; a
        // short-lived thread with a runtime of its own does the cleanup.
        let admin = self.admin.clone();
        let statements = [
            format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database),
            format!("DROP ROLE IF EXISTS \"{}\"", self.role),
        ];
        let outcome = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a runtime for the cleanup")?;
            runtime.block_on(async {
                let client = admin_client(&admin).await?;
                for statement in &statements {
                    client
                        .batch_execute(statement)
                        .await
                        .with_context(|| statement.clone())?;
                }
                Ok(())
            })
        })
        .join();
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(error)) => format!("{error:#}"),
            Err(_) => "the cleanup thread panicked".to_owned(),
        };
        progress(&format!(
            "warning: could not drop the database {} and the role {} ({error}); drop them by hand",
            self.database, self.role
        ));
    }
}
