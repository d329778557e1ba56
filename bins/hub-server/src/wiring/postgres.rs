//! PostgreSQL: its settings as the store takes them, the first connection and the messages start-up ends with, the role and relay-login checks, and migrate-on-start.

use std::sync::Arc;
use std::time::Duration;

use hub_core::MassExpiry;
use hub_core::Sinks;
use hub_core::error_chain;
use hub_core::ports::Outbox;
use hub_store::pg::diagnose::{ConnectProblem, diagnose};
use hub_store::pg::migrate;
use hub_store::{GroupCommit, PgConfig, PgStore, RoleCheck};
use secrecy::ExposeSecret;

use crate::settings::PostgresSettings;

/// The PostgreSQL settings as the store takes them.
fn pg_config(host: &str, s: &PostgresSettings) -> PgConfig {
    PgConfig {
        port: s.port,
        dbname: s.db.clone(),
        user: s.user.clone(),
        password: s.password.as_ref().map(|p| p.expose_secret().to_owned()),
        pool_size: s.pool_size,
        statement_timeout: Duration::from_millis(s.statement_timeout_ms),
        tenant_max_connections: (s.tenant_max_connections > 0).then_some(s.tenant_max_connections),
        group_commit: GroupCommit {
            writers: s.writers.min(s.pool_size.saturating_sub(1)),
            max_batch: s.write_batch,
            per_tenant: (s.write_batch / 4).max(1),
        },
        ..PgConfig::new(host)
    }
}

/// The relay's login: `HUB_RELAY_PG_USER` (with `HUB_RELAY_PG_PASSWORD`), or
/// the server's own login and password when it is unset.
fn relay_pg_config(server: &PgConfig, s: &PostgresSettings) -> PgConfig {
    match s.relay_user.as_deref().filter(|u| !u.is_empty()) {
        Some(user) => PgConfig {
            user: user.to_owned(),
            password: s
                .relay_password
                .as_ref()
                .map(|p| p.expose_secret().to_owned()),
            ..server.clone()
        },
        None => PgConfig {
            password: s
                .relay_password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .or_else(|| server.password.clone()),
            ..server.clone()
        },
    }
}

/// The sentence start-up ends with when PostgreSQL cannot be used: what is
/// wrong, in the operator's terms, and the next step (which variable to
/// set, which command to run).
fn connect_failure(config: &PgConfig, problem: &ConnectProblem, waited_secs: u64) -> String {
    let at = format!("PostgreSQL at {}:{}", config.host, config.port);
    let (user, db) = (&config.user, &config.dbname);
    match problem {
        ConnectProblem::NoSuchRole => format!(
            "{at} has no role {user:?} (POSTGRES_USER): create the server's login with `cargo xtask migrate --app-user {user}` (run as the database owner, see docs/POSTGRES.md), or set POSTGRES_USER to a login that exists"
        ),
        ConnectProblem::NoSuchDatabase => format!(
            "{at} has no database {db:?} (POSTGRES_DB): create and migrate it, with the server's login, by `cargo xtask migrate --app-user {user}` (run as the database owner, see docs/POSTGRES.md), or set POSTGRES_DB to the database you migrated"
        ),
        ConnectProblem::PasswordRefused => format!(
            "{at} refused the password of user {user:?}: set POSTGRES_PASSWORD to that login's password (and check POSTGRES_USER; `cargo xtask migrate --app-user {user}` creates the login)"
        ),
        ConnectProblem::PasswordMissing => format!(
            "{at} asks for a password for user {user:?} and none is configured: set POSTGRES_PASSWORD"
        ),
        ConnectProblem::NotAllowed(message) => format!(
            "{at} does not let user {user:?} connect to database {db:?} from this host ({message}): allow it in the server's pg_hba.conf, or check POSTGRES_USER and POSTGRES_DB"
        ),
        ConnectProblem::Unreachable(cause) => format!(
            "{at} could not be reached within {waited_secs} s ({cause}): check POSTGRES_HOST and POSTGRES_PORT and that PostgreSQL is running (HUB_PG_STARTUP_TIMEOUT_SECS sets how long start-up waits)"
        ),
        ConnectProblem::Other(message) => {
            format!("{at} (database {db:?}, user {user:?}) cannot be used: {message}")
        }
    }
}

/// The first connection, before anything else starts: PostgreSQL is the
/// source of truth, so it is checked first and any failure is the one thing
/// start-up reports. A database that is not reachable yet (it may be
/// starting alongside this server) is retried with backoff for
/// `startup_timeout_secs`, with one warning and the repeats at debug level;
/// every other failure (no such role, wrong password...) will not fix
/// itself and ends start-up at once.
async fn first_connection(
    config: &PgConfig,
    startup_timeout_secs: u64,
) -> anyhow::Result<RoleCheck> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(startup_timeout_secs);
    let mut delay = Duration::from_millis(250);
    let mut attempt = 0u32;
    loop {
        let error = match migrate::role_check(config).await {
            Ok(check) => return Ok(check),
            Err(error) => error,
        };
        attempt += 1;
        let problem = diagnose(&error);
        let now = tokio::time::Instant::now();
        if !problem.is_transient() || now >= deadline {
            anyhow::bail!(connect_failure(config, &problem, startup_timeout_secs));
        }
        // The last wait ends at the deadline, for one last attempt there.
        let wait = delay.min(deadline - now);
        let retry_in_ms = wait.as_millis() as u64;
        if attempt == 1 {
            tracing::warn!(host = %config.host, port = config.port, error = %error_chain(&error), retry_in_ms, "PostgreSQL not reachable yet; retrying quietly until HUB_PG_STARTUP_TIMEOUT_SECS");
        } else {
            tracing::debug!(host = %config.host, port = config.port, error = %error_chain(&error), attempt, retry_in_ms, "PostgreSQL still not reachable");
        }
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// The PostgreSQL store, checked and ready, and its outbox when there are
/// event sinks.
pub(crate) struct Opened {
    pub(crate) store: Arc<PgStore>,
    pub(crate) outbox: Option<Arc<dyn Outbox>>,
    /// How the store connects: the change listener opens its own
    /// connection from it.
    pub(crate) config: PgConfig,
}

/// Opens the PostgreSQL store at `host`. An unreachable database is retried
/// with backoff for `HUB_PG_STARTUP_TIMEOUT_SECS`; a role that bypasses
/// row-level security is refused unless explicitly allowed. With event
/// sinks, every change also writes its event to the outbox, tagged with
/// `replica_id`.
pub(crate) async fn open(
    host: &str,
    settings: &PostgresSettings,
    sinks: Sinks,
    replica_id: &str,
    mass_expiry: MassExpiry,
) -> anyhow::Result<Opened> {
    let config = pg_config(host, settings);
    let check = first_connection(&config, settings.startup_timeout_secs).await?;
    if check.bypasses_rls() {
        let why = if check.superuser {
            "a superuser"
        } else {
            "a role with BYPASSRLS"
        };
        if settings.allow_rls_bypass {
            tracing::warn!(
                role = %check.role,
                "HUB_ALLOW_RLS_BYPASS=true: connected as {why}, which ignores row-level security; tenant isolation then rests on application code alone. Development only."
            );
        } else {
            anyhow::bail!(
                "refusing to start: POSTGRES_USER {:?} is {why}, which ignores row-level security, so tenants would not be isolated by the database. Connect as a login that is a member of the {} role and neither superuser nor BYPASSRLS (`cargo xtask migrate --app-user NAME` creates one), or set HUB_ALLOW_RLS_BYPASS=true for development.",
                check.role,
                migrate::APP_ROLE
            );
        }
    }
    if settings.migrate_on_start {
        let applied = migrate::run(&config)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "HUB_MIGRATE_ON_START=true, but migrating the database {} failed: {}; run `cargo xtask migrate` as the schema's owner to see the details, or start without HUB_MIGRATE_ON_START",
                    config.dbname,
                    error_chain(&e)
                )
            })?;
        tracing::info!(
            ?applied,
            "migrations applied at start (HUB_MIGRATE_ON_START)"
        );
    } else if !check.schema_ready {
        anyhow::bail!(
            "the database {} is not migrated to this version (migration V3, V4 or V5 is missing): run `cargo xtask migrate` or set HUB_MIGRATE_ON_START=true",
            config.dbname
        );
    }
    tracing::info!(
        host,
        port = config.port,
        database = %config.dbname,
        user = %config.user,
        pool_size = config.pool_size,
        tenant_max_connections = config.tenant_share(),
        "postgres mode: the registry is stored in PostgreSQL with row-level security"
    );
    let pg = Arc::new(
        PgStore::new(&config)?
            .with_outbox(sinks, replica_id)
            .with_mass_expiry(mass_expiry),
    );
    let outbox: Option<Arc<dyn Outbox>> = if sinks.is_empty() {
        None
    } else {
        let relay = relay_pg_config(&config, settings);
        check_relay_login(&relay).await?;
        Some(Arc::new(pg.relay_outbox(&relay)?))
    };
    Ok(Opened {
        store: pg,
        outbox,
        config,
    })
}

/// Refuses to start a relay whose login could not do its job: it would
/// retry forever while every event stays pending.
async fn check_relay_login(relay: &PgConfig) -> anyhow::Result<()> {
    let which = "HUB_RELAY_PG_USER (default: POSTGRES_USER)";
    match migrate::relay_check(relay).await {
        Ok(true) => {
            tracing::info!(user = %relay.user, "the outbox relay connects as its own login");
            Ok(())
        }
        Ok(false) => anyhow::bail!(
            "the outbox relay's login {:?} ({which}) may not read the outbox: make it a member of {} with `cargo xtask migrate --app-user NAME` (one login for both roles) or `--relay-user NAME` (a separate relay login), or set HUB_RELAY_PG_USER to such a login",
            relay.user,
            migrate::RELAY_ROLE
        ),
        Err(error) => anyhow::bail!(
            "the outbox relay cannot connect to PostgreSQL as {:?} ({which}; password HUB_RELAY_PG_PASSWORD, default POSTGRES_PASSWORD): {:#}",
            relay.user,
            anyhow::Error::new(error)
        ),
    }
}
