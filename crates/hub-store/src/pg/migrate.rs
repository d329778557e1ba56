//! Schema migrations (refinery, from `migrations/`, in one transaction with the upgrade of an original hub's database), the application role grant, and the startup role check.

use hub_core::RegistryError;
use refinery::{AsyncMigrate, Migration, SchemaVersion, Target};
use refinery_core::traits::r#async::{AsyncQuery, AsyncTransaction};
use tokio_postgres::NoTls;

use super::config::PgConfig;
use super::error::from_pg;
use super::legacy::{self, SchemaState, UpgradeReport};

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// The NOLOGIN group role that holds the application's privileges.
pub const APP_ROLE: &str = "central_hub_app";

/// The NOLOGIN group role of the outbox relay (migration V3): it alone may
/// read every tenant's events, mark them, set them aside and prune them.
pub const RELAY_ROLE: &str = "central_hub_relay";

/// An arbitrary constant: the advisory lock that keeps two processes from
/// migrating the same database at once.
const MIGRATION_LOCK: i64 = 0x00C3_7A11_4B1D;

/// What the connected role may do that would defeat row-level security.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleCheck {
    /// The role the connection acts as.
    pub role: String,
    /// Superusers ignore row-level security.
    pub superuser: bool,
    /// So do roles with BYPASSRLS.
    pub bypass_rls: bool,
    /// Whether the schema is migrated to this version. Checked on the newest
    /// objects: `hub_outbox_undeliverable` (V3), `hub_metrics_prune` (V4)
    /// `hub_registry_notify` (V5, without which no replica would learn
    /// of another's changes and cached lookups would stay stale) and
    /// `hub_key_grant` (V6, without which no tenant record or key could be
    /// read).
    /// A database that stopped at V1 or V2 (whose outbox functions any
    /// application session could misuse) or at V3 (whose metrics pruner would
    /// fail every pass), or the original single-tenant schema (which also has
    /// a `service_registry`), is not ready.
    pub schema_ready: bool,
}

impl RoleCheck {
    /// Whether this role would see every tenant's rows.
    pub fn bypasses_rls(&self) -> bool {
        self.superuser || self.bypass_rls
    }
}

async fn connect(config: &PgConfig) -> Result<tokio_postgres::Client, RegistryError> {
    let (client, connection) = config.connection().connect(NoTls).await.map_err(from_pg)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "migration connection ended");
        }
    });
    Ok(client)
}

/// Applies the pending migrations in order, recorded in refinery's history
/// table; applying twice is a no-op. Returns the versions applied now.
/// A database of the original hub is upgraded on the way (its report is
/// logged); see [`run_with_report`].
pub async fn run(config: &PgConfig) -> Result<Vec<String>, RegistryError> {
    match run_with_report(config).await {
        Ok(migrated) => {
            if let Some(report) = &migrated.upgrade {
                tracing::warn!(%report, "upgraded a database of the original hub");
            }
            Ok(migrated.applied)
        }
        Err(MigrateError::Store(error)) => Err(error),
        Err(refused) => Err(RegistryError::Unexpected(Box::new(refused))),
    }
}

/// Applies the migrations up to `version` only, for tests of the upgrade
/// from an older schema of this hub (a database left at V5, say).
#[cfg(feature = "testing")]
pub async fn run_up_to(config: &PgConfig, version: i32) -> Result<Vec<String>, RegistryError> {
    let mut client = connect(config).await?;
    let transaction = client.transaction().await.map_err(from_pg)?;
    let applied = apply(&transaction, Target::Version(version)).await?;
    transaction.commit().await.map_err(from_pg)?;
    Ok(applied)
}

/// Every migration this build carries, in order (`V1__multi_tenant_registry`,
/// ...): what a run on an empty or legacy database applies.
pub fn known_versions() -> Vec<String> {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect()
}

/// What [`run_with_report`] did.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The state the database was found in.
    pub state: SchemaState,
    /// The versions applied now (`V1__multi_tenant_registry`, ...).
    pub applied: Vec<String>,
    /// For a database of the original hub: what moved and what stayed.
    pub upgrade: Option<UpgradeReport>,
}

/// Why [`run_with_report`] failed. Either way nothing was changed: the
/// detection, the upgrade and every migration share one transaction.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database is in a state this hub will not change by itself; the
    /// message says why and what to do, in plain words.
    #[error("{0}")]
    Refused(String),
    /// The database failed or refused a statement.
    #[error(transparent)]
    Store(#[from] RegistryError),
}

/// Applies the pending migrations like [`run`], recognising first the state
/// of the database (`legacy::detect`): an empty one is created, one of this
/// hub is brought up to date, one of the original hub is upgraded
/// (`legacy`), and anything else is refused before any change. Detection,
/// upgrade and migrations run in one transaction, under an advisory lock
/// against a second migrating process.
pub async fn run_with_report(config: &PgConfig) -> Result<Migrated, MigrateError> {
    let mut client = connect(config).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(from_pg)?;
    let result = migrate_locked(&mut client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn migrate_locked(client: &mut tokio_postgres::Client) -> Result<Migrated, MigrateError> {
    // Dropped without commit on every early return: rolled back.
    let transaction = client.transaction().await.map_err(from_pg)?;
    let schema = legacy::inspect(&transaction).await?;
    let state = schema.state().clone();
    if let SchemaState::Unknown(reason) = &state {
        return Err(MigrateError::Refused(format!(
            "refusing to migrate: the database is in a state this hub does not know how to upgrade ({reason}). Nothing was changed."
        )));
    }
    let mut applied = Vec::new();
    let mut upgrade = None;
    if state.is_legacy() {
        if let Err(refusal) = legacy::stage(&transaction, &schema).await? {
            return Err(MigrateError::Refused(format!(
                "refusing to upgrade {state}: {}",
                refusal.0
            )));
        }
        // V1 creates the new tables; the rows go in before later
        // migrations, which then see them like any others.
        applied.extend(apply(&transaction, Target::Version(1)).await?);
        upgrade = Some(legacy::import(&transaction, &schema).await?);
    }
    applied.extend(apply(&transaction, Target::Latest).await?);
    transaction.commit().await.map_err(from_pg)?;
    Ok(Migrated {
        state,
        applied,
        upgrade,
    })
}

/// Runs refinery's runner up to `target` inside `transaction`.
async fn apply(
    transaction: &tokio_postgres::Transaction<'_>,
    target: Target,
) -> Result<Vec<String>, RegistryError> {
    let report = embedded::migrations::runner()
        .set_target(target)
        .run_async(&mut InTransaction(transaction))
        .await
        .map_err(|e| RegistryError::Unexpected(Box::new(e)))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect())
}

/// refinery's connection, bound to a transaction of ours: refinery's own
/// `Client` driver commits a transaction per migration, and the upgrade
/// from the original hub must happen together with V1 or not at all.
struct InTransaction<'t, 'c>(&'t tokio_postgres::Transaction<'c>);

/// A failure of [`InTransaction`]: of the database, or a history row that
/// refinery did not write.
#[derive(Debug, thiserror::Error)]
enum InTransactionError {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    #[error("refinery_schema_history holds a row refinery cannot have written: {0}")]
    History(String),
}

impl AsyncTransaction for InTransaction<'_, '_> {
    type Error = InTransactionError;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let mut count = 0;
        for query in queries {
            self.0.batch_execute(query).await?;
            count += 1;
        }
        Ok(count)
    }
}

impl AsyncQuery<Vec<Migration>> for InTransaction<'_, '_> {
    /// As refinery's own driver reads its history table.
    async fn query<'a>(&'a mut self, query: &'a str) -> Result<Vec<Migration>, Self::Error> {
        let mut applied = Vec::new();
        for row in self.0.query(query, &[]).await? {
            let version: SchemaVersion = row.try_get(0)?;
            let name: String = row.try_get(1)?;
            let applied_on: String = row.try_get(2)?;
            let checksum: String = row.try_get(3)?;
            let applied_on = time::OffsetDateTime::parse(
                &applied_on,
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|e| InTransactionError::History(format!("applied_on {applied_on:?}: {e}")))?;
            let checksum = checksum
                .parse::<u64>()
                .map_err(|e| InTransactionError::History(format!("checksum {checksum:?}: {e}")))?;
            applied.push(Migration::applied(version, name, applied_on, checksum));
        }
        Ok(applied)
    }
}

impl AsyncMigrate for InTransaction<'_, '_> {}

/// Makes `login` a member of [`APP_ROLE`], creating it as a LOGIN role first
/// if it does not exist. Run as a role allowed to do so (the migrating one).
pub async fn grant_app_role(
    config: &PgConfig,
    login: &str,
    password: Option<&str>,
) -> Result<(), RegistryError> {
    grant_role(config, login, password, APP_ROLE).await
}

/// Makes `login` a member of [`RELAY_ROLE`], creating it as a LOGIN role
/// first if it does not exist (like [`grant_app_role`]).
pub async fn grant_relay_role(
    config: &PgConfig,
    login: &str,
    password: Option<&str>,
) -> Result<(), RegistryError> {
    grant_role(config, login, password, RELAY_ROLE).await
}

/// Ends `login`'s membership of [`RELAY_ROLE`] (the stricter set-up, where
/// the relay has a login of its own and the server's may not read events).
pub async fn revoke_relay_role(config: &PgConfig, login: &str) -> Result<(), RegistryError> {
    check_login_name(login)?;
    let client = connect(config).await?;
    client
        .batch_execute(&format!("REVOKE {RELAY_ROLE} FROM \"{login}\""))
        .await
        .map_err(from_pg)
}

fn check_login_name(login: &str) -> Result<(), RegistryError> {
    if login.is_empty()
        || !login
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(RegistryError::Invalid(hub_core::ValidationError::new(
            "app_user",
            "must be letters, digits, '_' or '-'",
        )));
    }
    Ok(())
}

async fn grant_role(
    config: &PgConfig,
    login: &str,
    password: Option<&str>,
    role: &str,
) -> Result<(), RegistryError> {
    check_login_name(login)?;
    let client = connect(config).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&login])
        .await
        .map_err(from_pg)?
        .is_some();
    // Identifiers cannot be bind parameters; `login` was checked above to
    // hold only plain characters, and is quoted.
    if !exists {
        let mut sql = format!("CREATE ROLE \"{login}\" LOGIN");
        if let Some(password) = password {
            sql.push_str(&format!(" PASSWORD '{}'", password.replace('\'', "''")));
        }
        client.batch_execute(&sql).await.map_err(from_pg)?;
    }
    client
        .batch_execute(&format!("GRANT {role} TO \"{login}\""))
        .await
        .map_err(from_pg)
}

/// Reads whether the connected role bypasses row-level security.
pub async fn role_check(config: &PgConfig) -> Result<RoleCheck, RegistryError> {
    let client = connect(config).await?;
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper, rolbypassrls, \
                    to_regclass('public.hub_outbox_undeliverable') IS NOT NULL \
                    AND to_regprocedure('public.hub_metrics_prune(integer, integer)') IS NOT NULL \
                    AND to_regprocedure('public.hub_registry_notify()') IS NOT NULL \
                    AND to_regprocedure('public.hub_key_grant(bytea)') IS NOT NULL \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(from_pg)?;
    Ok(RoleCheck {
        role: row.try_get(0).map_err(from_pg)?,
        superuser: row.try_get(1).map_err(from_pg)?,
        bypass_rls: row.try_get(2).map_err(from_pg)?,
        schema_ready: row.try_get(3).map_err(from_pg)?,
    })
}

/// Whether the connected login may run the relay's functions (a member of
/// [`RELAY_ROLE`], or the tables' owner). `false` as well when the schema
/// has no such function yet.
pub async fn relay_check(config: &PgConfig) -> Result<bool, RegistryError> {
    let client = connect(config).await?;
    let row = client
        .query_one(
            "SELECT coalesce(has_function_privilege(\
                 to_regprocedure('public.hub_outbox_pending(smallint, integer)'), 'EXECUTE'), false) \
             AND coalesce(has_function_privilege(\
                 to_regprocedure('public.hub_outbox_set_aside(smallint, bigint, text)'), 'EXECUTE'), false)",
            &[],
        )
        .await
        .map_err(from_pg)?;
    row.try_get(0).map_err(from_pg)
}
