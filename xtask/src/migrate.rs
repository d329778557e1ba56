//! `cargo xtask migrate`: creates the database if needed, applies the SQL migrations as the owning role, and optionally sets up the server's login role.
//!
//! `POSTGRES_USER` here names the role that runs the migrations and so owns
//! the tables; it defaults to `postgres`, the superuser of a local install.
//! That is deliberately not the role hub-server connects as: an owner could
//! disable row-level security on its tables. `--app-user NAME` creates (if
//! missing) the separate login the server should use and makes it a member of
//! the `central_hub_app` group role, which holds exactly the privileges the
//! migration grants, and of `central_hub_relay` (the outbox relay's role) for
//! a single-login set-up; `--relay-user NAME` gives the relay a login of its
//! own instead (the stricter set-up of docs/POSTGRES.md).
//!
//! The driver is reached through hub-store's `PgConfig` (its pool hands out
//! plain clients), so xtask needs no database dependency of its own.

use std::time::Duration;

use anyhow::{Context, bail};
use hub_store::PgConfig;
use hub_store::pg::migrate;

const USAGE: &str = "usage: cargo xtask migrate [options]

Creates the database if it does not exist, then applies the pending SQL
migrations of migrations/ (an already migrated database is left as it is).
A database of the original hub (single-tenant, after the seed document's
migration SQL, or the original multi-tenant schema) is upgraded on the way and
a report of what moved and what stayed behind is printed; a database in any
other state is refused without a change.

options:
  --app-user NAME      also make NAME a member of the central_hub_app group role,
                       creating it as a LOGIN role first if it does not exist:
                       the role hub-server should connect as. It must not be the
                       owner (POSTGRES_USER), a superuser or BYPASSRLS. Without
                       --relay-user, NAME also joins central_hub_relay, so that
                       the server's outbox relay can run as the same login.
  --relay-user NAME    the stricter set-up: make NAME (created as a LOGIN role if
                       missing) the outbox relay's own login, the only member of
                       central_hub_relay among the two, and take that role away
                       from --app-user. Start hub-server with HUB_RELAY_PG_USER=NAME.
  --relay-password PW  password given to the relay login when it is created
                       (default: the HUB_RELAY_PG_PASSWORD variable).
  --app-password PW    password given to NAME when it is created (default: the
                       HUB_APP_PASSWORD variable; prefer it, a command line is
                       visible to other users of the machine). An existing role
                       keeps its password.
  -h, --help           this text

environment (the variables hub-server reads, with one difference: here
POSTGRES_USER is the role that OWNS the tables, not the server's login):
  POSTGRES_HOST        default 127.0.0.1
  POSTGRES_PORT        default 5432
  POSTGRES_DB          default central_hub; created if missing, which needs
                       CREATEDB (or create it beforehand, owned by POSTGRES_USER)
  POSTGRES_USER        the owning role; default postgres. On a managed service
                       (RDS, Cloud SQL, Azure) use its admin user or a dedicated
                       owner role with CREATEROLE.
  POSTGRES_PASSWORD    its password, if the server asks for one
  HUB_APP_PASSWORD     see --app-password

example (local PostgreSQL, then the server as the application role):
  cargo xtask migrate --app-user central_hub
  POSTGRES_HOST=127.0.0.1 POSTGRES_USER=central_hub cargo run --release -p hub-server";

/// The database every PostgreSQL cluster has, used to create ours.
const MAINTENANCE_DB: &str = "postgres";

/// Connecting and creating the database are quick; a host that does not
/// answer in this time is reported rather than waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The migrations run in one transaction and an upgrade copies every row of
/// the original tables, which may take much longer than the server's
/// per-statement limit (`HUB_PG_STATEMENT_TIMEOUT_MS`).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(options) = Options::parse(args)? else {
        eprintln!("{USAGE}");
        return Ok(());
    };
    let target = target_from_env()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(migrate(&options, &target))
}

/// Command-line options.
#[derive(Debug)]
struct Options {
    app_user: Option<String>,
    app_password: Option<String>,
    relay_user: Option<String>,
    relay_password: Option<String>,
}

impl Options {
    /// `Ok(None)` means help was asked for.
    fn parse(args: &[String]) -> anyhow::Result<Option<Self>> {
        let mut app_user = None;
        let mut app_password = None;
        let mut relay_user = None;
        let mut relay_password = None;
        // Both `--flag value` and `--flag=value` are accepted.
        let mut flags = crate::args::Flags::new(args, USAGE);
        while let Some((flag, inline)) = flags.next_flag() {
            let mut value = || flags.value(flag, inline);
            match flag {
                "--app-user" => app_user = Some(value()?),
                "--app-password" => app_password = Some(value()?),
                "--relay-user" => relay_user = Some(value()?),
                "--relay-password" => relay_password = Some(value()?),
                "--help" | "-h" => return Ok(None),
                other => bail!("unknown option {other:?}\n\n{USAGE}"),
            }
        }
        if app_password.is_some() && app_user.is_none() {
            bail!("--app-password needs --app-user\n\n{USAGE}");
        }
        if relay_password.is_some() && relay_user.is_none() {
            bail!("--relay-password needs --relay-user\n\n{USAGE}");
        }
        let app_password = app_password.or_else(|| non_empty_env("HUB_APP_PASSWORD"));
        let relay_password = relay_password.or_else(|| non_empty_env("HUB_RELAY_PG_PASSWORD"));
        Ok(Some(Self {
            app_user,
            app_password,
            relay_user,
            relay_password,
        }))
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The database to migrate and the owning role, from `POSTGRES_*`.
fn target_from_env() -> anyhow::Result<PgConfig> {
    let host = non_empty_env("POSTGRES_HOST").unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = match non_empty_env("POSTGRES_PORT") {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .with_context(|| format!("POSTGRES_PORT must be a port number (got {port:?})"))?,
        None => 5432,
    };
    let dbname = non_empty_env("POSTGRES_DB").unwrap_or_else(|| "central_hub".to_owned());
    // The name is spliced into CREATE DATABASE (identifiers cannot be bind
    // parameters), so it is held to plain characters and quoted there.
    if dbname.len() > 63
        || !dbname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("POSTGRES_DB must be 1-63 letters, digits, '_' or '-' (got {dbname:?})");
    }
    let user = non_empty_env("POSTGRES_USER").unwrap_or_else(|| "postgres".to_owned());
    Ok(PgConfig {
        port,
        dbname,
        user,
        password: non_empty_env("POSTGRES_PASSWORD"),
        pool_size: 1,
        statement_timeout: CONNECT_TIMEOUT,
        ..PgConfig::new(host)
    })
}

/// Where `config` points, for messages (never the password).
fn describe(config: &PgConfig) -> String {
    format!(
        "{}:{} database {:?} as {:?}",
        config.host, config.port, config.dbname, config.user
    )
}

async fn migrate(options: &Options, target: &PgConfig) -> anyhow::Result<()> {
    if let Some(app_user) = &options.app_user
        && *app_user == target.user
    {
        bail!(
            "--app-user {app_user:?} is the migrating role (POSTGRES_USER): the server must not connect as the tables' owner, who could disable row-level security. Choose another name, e.g. --app-user central_hub."
        );
    }
    if let Some(relay) = &options.relay_user
        && (*relay == target.user || options.app_user.as_ref() == Some(relay))
    {
        bail!(
            "--relay-user {relay:?} must be a login of its own, neither the owner (POSTGRES_USER) nor --app-user; leave it out for one login in both roles"
        );
    }
    ensure_database(target).await?;

    eprintln!("migrating {}", describe(target));
    let migration = PgConfig {
        statement_timeout: MIGRATION_TIMEOUT,
        ..target.clone()
    };
    let migrated = match migrate::run_with_report(&migration).await {
        Ok(migrated) => migrated,
        // An expected refusal is a plain sentence of its own.
        Err(migrate::MigrateError::Refused(message)) => bail!("{message}"),
        Err(migrate::MigrateError::Store(error)) => {
            return Err(anyhow::Error::new(error))
                .with_context(|| format!("applying the migrations to {}", describe(target)));
        }
    };
    if let Some(report) = &migrated.upgrade {
        eprintln!("{report}");
    }
    let applied = migrated.applied;
    if applied.is_empty() {
        eprintln!("up to date: no migration was pending");
    } else {
        for version in &applied {
            eprintln!("applied {version}");
        }
    }

    match &options.app_user {
        Some(app_user) => {
            grant(target, app_user, options.app_password.as_deref()).await?;
            relay_roles(options, target).await?;
            next_steps(target, app_user, options.app_password.is_some());
        }
        None => relay_roles(options, target).await?,
    }
    if options.app_user.is_none() {
        eprintln!(
            "\nnext: hub-server must connect as a login that is a member of {role} and neither \
             the owner ({owner}) nor a superuser: run again with --app-user NAME to create one",
            role = migrate::APP_ROLE,
            owner = target.user
        );
    }
    Ok(())
}

/// The outbox relay's role: granted to `--relay-user` (and taken from
/// `--app-user`) in the stricter set-up, else to `--app-user` itself.
async fn relay_roles(options: &Options, target: &PgConfig) -> anyhow::Result<()> {
    let role = migrate::RELAY_ROLE;
    let context = |login: &str| {
        format!(
            "making {login:?} a member of {role} as {:?} (the same rights as for {})",
            target.user,
            migrate::APP_ROLE
        )
    };
    match (&options.relay_user, &options.app_user) {
        (Some(relay), app) => {
            migrate::grant_relay_role(target, relay, options.relay_password.as_deref())
                .await
                .map_err(anyhow::Error::new)
                .with_context(|| context(relay))?;
            eprintln!("{relay:?} is the outbox relay's login (a member of {role})");
            if let Some(app) = app {
                migrate::revoke_relay_role(target, app)
                    .await
                    .map_err(anyhow::Error::new)
                    .with_context(|| format!("taking {role} from {app:?}"))?;
                eprintln!(
                    "{app:?} is not a member of {role}: the server cannot read other tenants' events"
                );
            }
            eprintln!(
                "start hub-server with HUB_RELAY_PG_USER={relay} (and HUB_RELAY_PG_PASSWORD if it has one)"
            );
        }
        (None, Some(app)) if *app != target.user => {
            migrate::grant_relay_role(target, app, options.app_password.as_deref())
                .await
                .map_err(anyhow::Error::new)
                .with_context(|| context(app))?;
            eprintln!(
                "{app:?} is also a member of {role}: the server's outbox relay runs as the same login \
                 (--relay-user NAME gives the relay a login of its own)"
            );
        }
        _ => {}
    }
    Ok(())
}

/// Creates the target database, owned by the migrating role, unless it
/// exists. Asks the maintenance database first, so that a missing database
/// is told apart from an unreachable server; if the role may not connect to
/// the maintenance database, a database it can reach directly is enough.
async fn ensure_database(target: &PgConfig) -> anyhow::Result<()> {
    let maintenance = PgConfig {
        dbname: MAINTENANCE_DB.to_owned(),
        ..target.clone()
    };
    let pool = maintenance.pool().map_err(anyhow::Error::new)?;
    let client = match pool.get().await {
        Ok(client) => client,
        Err(maintenance_error) => {
            let direct = target.pool().map_err(anyhow::Error::new)?;
            return match direct.get().await {
                Ok(_) => Ok(()),
                Err(error) => Err(anyhow::Error::new(error)).with_context(|| {
                    format!(
                        "cannot connect to PostgreSQL at {} (nor to its {MAINTENANCE_DB:?} database: {maintenance_error}); \
                         check POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER and POSTGRES_PASSWORD",
                        describe(target)
                    )
                }),
            };
        }
    };
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&target.dbname],
        )
        .await
        .context("looking the database up in pg_database")?
        .is_some();
    if exists {
        return Ok(());
    }
    let Err(error) = client
        .batch_execute(&format!("CREATE DATABASE \"{}\"", target.dbname))
        .await
    else {
        eprintln!(
            "created database {:?} (owner {:?})",
            target.dbname, target.user
        );
        return Ok(());
    };
    match error.code().map(|state| state.code()) {
        // Someone created it between the look-up and now: the goal is met.
        Some("42P04") => Ok(()),
        Some("42501") => Err(anyhow::Error::new(error)).context(format!(
            "database {db:?} does not exist and role {user:?} may not create it (it lacks CREATEDB). \
             Either have an administrator run `CREATE DATABASE \"{db}\" OWNER \"{user}\"`, \
             or set POSTGRES_USER to a role with CREATEDB",
            db = target.dbname,
            user = target.user
        )),
        _ => Err(anyhow::Error::new(error))
            .context(format!("creating database {:?}", target.dbname)),
    }
}

/// Makes `app_user` a member of the application role, then checks that the
/// server could really act as it: a superuser or BYPASSRLS role would be
/// refused at start, and a role without LOGIN cannot connect at all.
async fn grant(target: &PgConfig, app_user: &str, password: Option<&str>) -> anyhow::Result<()> {
    let pool = target.pool().map_err(anyhow::Error::new)?;
    let client = pool
        .get()
        .await
        .with_context(|| format!("connecting to {}", describe(target)))?;
    let existed = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&app_user])
        .await
        .context("looking the role up in pg_roles")?
        .is_some();
    migrate::grant_app_role(target, app_user, password)
        .await
        .map_err(anyhow::Error::new)
        .with_context(|| {
            format!(
                "making {app_user:?} a member of {role} as {owner:?}: this needs CREATEROLE to create \
                 the login, and the right to grant {role} (superuser, CREATEROLE before PostgreSQL 16, \
                 ADMIN OPTION on {role} from 16 on, which the role's creator has)",
                role = migrate::APP_ROLE,
                owner = target.user
            )
        })?;
    let row = client
        .query_one(
            "SELECT rolsuper, rolbypassrls, rolcanlogin, pg_has_role(oid, $2, 'MEMBER') \
             FROM pg_roles WHERE rolname = $1",
            &[&app_user, &migrate::APP_ROLE],
        )
        .await
        .context("reading the application role's attributes")?;
    let superuser: bool = row.try_get(0)?;
    let bypass_rls: bool = row.try_get(1)?;
    let can_login: bool = row.try_get(2)?;
    let member: bool = row.try_get(3)?;
    if superuser || bypass_rls {
        let what = if superuser {
            "a superuser"
        } else {
            "BYPASSRLS"
        };
        bail!(
            "{app_user:?} is {what}, which ignores row-level security: hub-server refuses to start as it. \
             Use a plain login role (the default of a role this command creates)."
        );
    }
    if !can_login {
        bail!(
            "{app_user:?} exists but has no LOGIN attribute: run `ALTER ROLE \"{app_user}\" LOGIN` \
             (as a role with CREATEROLE) or choose another name"
        );
    }
    if !member {
        bail!(
            "{app_user:?} is not a member of {} after the grant",
            migrate::APP_ROLE
        );
    }
    if existed {
        eprintln!(
            "role {app_user:?} already existed: it is a member of {}{}",
            migrate::APP_ROLE,
            if password.is_some() {
                "; its password was left unchanged"
            } else {
                ""
            }
        );
    } else {
        eprintln!(
            "created login role {app_user:?}{} and made it a member of {}",
            if password.is_some() {
                " with the given password"
            } else {
                " without a password (enough for trust or peer authentication only)"
            },
            migrate::APP_ROLE
        );
    }
    Ok(())
}

/// How to start the server as the application role now.
fn next_steps(target: &PgConfig, app_user: &str, has_password: bool) {
    let password = if has_password {
        " POSTGRES_PASSWORD=<its password>"
    } else {
        ""
    };
    eprintln!(
        "\nnext: run hub-server as {app_user:?}, not as the owner:\n  \
         POSTGRES_HOST={host} POSTGRES_PORT={port} POSTGRES_DB={db} POSTGRES_USER={app_user}{password} \
         cargo run --release -p hub-server",
        host = target.host,
        port = target.port,
        db = target.dbname,
    );
}
