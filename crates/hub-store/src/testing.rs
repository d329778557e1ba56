//! Test support: a fresh database per test, migrated by a non-superuser owner and used by a non-superuser application role.
//!
//! The machine's PostgreSQL is shared by every test run, so everything made
//! here carries a random id and is dropped afterwards; nothing else is
//! touched. The superuser connection only creates and drops the database and
//! roles: tests never reach the tables under test as a superuser (it would
//! bypass row-level security and prove nothing).

use std::time::Duration;

use tokio_postgres::NoTls;

use crate::pg::{PgConfig, migrate};

/// Where the administrative connection goes, overridable with
/// `HUB_TEST_PG_ADMIN` (a libpq key-value string).
const DEFAULT_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

/// A database made for one test.
#[derive(Debug)]
pub struct TestDb {
    /// Database name (`hub_test_<id>`).
    pub name: String,
    /// The table owner's login (ran the migrations; bound by FORCE).
    pub owner: PgConfig,
    /// The application's login: a member of `central_hub_app`, nothing more.
    pub app: PgConfig,
    /// The outbox relay's login: a member of `central_hub_relay`, nothing
    /// more (the stricter set-up of docs/POSTGRES.md).
    pub relay: PgConfig,
    admin: String,
}

async fn admin_client(admin: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = admin
        .parse::<tokio_postgres::Config>()?
        .connect(NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl TestDb {
    /// Makes a migrated database, or `None` when PostgreSQL cannot be
    /// reached outside CI (said loudly on stderr). With `CI=true` an
    /// unreachable PostgreSQL is a test failure, never a silent skip.
    pub async fn create() -> Option<Self> {
        let db = Self::create_unmigrated().await?;
        migrate::run(&db.owner)
            .await
            .unwrap_or_else(|e| panic!("migrating test database: {e:?}"));
        Some(db)
    }

    /// Like [`TestDb::create`] but without running the migrations, for
    /// tests that build an older schema first (the upgrade path).
    pub async fn create_unmigrated() -> Option<Self> {
        let admin = std::env::var("HUB_TEST_PG_ADMIN").unwrap_or_else(|_| DEFAULT_ADMIN.to_owned());
        let client = match admin_client(&admin).await {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "PostgreSQL is not reachable at {admin:?} and CI=true: {e}"
                );
                #[allow(clippy::print_stderr)]
                {
                    eprintln!(
                        "SKIPPED: PostgreSQL not reachable at {admin:?} ({e}); set CI=true to fail instead"
                    );
                }
                return None;
            }
        };
        Some(Self::create_with(&client, admin).await)
    }

    async fn create_with(client: &tokio_postgres::Client, admin: String) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let name = format!("hub_test_{id}");
        let owner = format!("hubt_{id}_owner");
        let app = format!("hubt_{id}_app");
        let relay = format!("hubt_{id}_relay");
        // The group roles are cluster-wide and made by an administrator
        // (the owner has no CREATEROLE); one statement each, so that a
        // concurrent test creating the same role only fails its own.
        for role in [migrate::APP_ROLE, migrate::RELAY_ROLE] {
            client
                .batch_execute(&format!(
                    "DO $$ BEGIN
                         IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                             CREATE ROLE {role} NOLOGIN;
                         END IF;
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                     END $$;"
                ))
                .await
                .unwrap_or_else(|e| panic!("creating test role {role}: {e}"));
        }
        client
            .batch_execute(&format!(
                "CREATE ROLE {owner} LOGIN;
                 CREATE ROLE {app} LOGIN;
                 CREATE ROLE {relay} LOGIN;
                 GRANT {app_role} TO {app};
                 GRANT {relay_role} TO {relay};",
                app_role = migrate::APP_ROLE,
                relay_role = migrate::RELAY_ROLE
            ))
            .await
            .unwrap_or_else(|e| panic!("creating test roles: {e}"));
        client
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {owner}"))
            .await
            .unwrap_or_else(|e| panic!("creating test database: {e}"));
        let base = admin.parse::<tokio_postgres::Config>().unwrap_or_default();
        let host = base
            .get_hostaddrs()
            .first()
            .map(ToString::to_string)
            .or_else(|| {
                base.get_hosts().first().and_then(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => Some(h.clone()),
                    #[allow(unreachable_patterns)]
                    _ => None,
                })
            })
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let port = base.get_ports().first().copied().unwrap_or(5432);
        let config = |user: &str| PgConfig {
            port,
            dbname: name.clone(),
            user: user.to_owned(),
            pool_size: 4,
            statement_timeout: Duration::from_secs(5),
            ..PgConfig::new(host.clone())
        };
        Self {
            owner: config(&owner),
            app: config(&app),
            relay: config(&relay),
            name,
            admin,
        }
    }

    /// The administrative (superuser) connection that made this database,
    /// for tests that need to create special roles. Never use it on the
    /// tables under test: a superuser bypasses row-level security.
    pub async fn admin(&self) -> tokio_postgres::Client {
        admin_client(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("admin connection: {e}"))
    }

    /// Writes, behind the API's back, an instance of `tenant` that cannot be
    /// read back (its metadata holds `1e400`, which PostgreSQL's numeric
    /// keeps and serde_json cannot parse), with its lease ending at
    /// `lease_expires_at`. Written as the table owner in a transaction scoped
    /// to the tenant (the owner is bound by row-level security too); the
    /// tenant is entered in `hub_tenants` so that the reaper visits it.
    pub async fn insert_unreadable(
        &self,
        tenant: &str,
        service: &str,
        instance: &str,
        lease_expires_at: chrono::DateTime<chrono::Utc>,
    ) {
        let mut owner = Self::connect(&self.owner).await;
        let tx = owner
            .transaction()
            .await
            .unwrap_or_else(|e| panic!("begin: {e}"));
        tx.execute("SELECT set_config('app.tenant_id', $1, true)", &[&tenant])
            .await
            .unwrap_or_else(|e| panic!("set tenant: {e}"));
        tx.execute(
            "INSERT INTO hub_tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&tenant],
        )
        .await
        .unwrap_or_else(|e| panic!("hub_tenants: {e}"));
        tx.execute(
            "INSERT INTO service_registry (tenant_id, service_name, instance_id, host, port, \
                 protocol, health_endpoint, tags, metadata, ttl_seconds, status, registered_at, \
                 last_heartbeat, lease_expires_at, revision) \
             VALUES ($1, $2, $3, '10.0.0.9', 80, 'http', '/health', '{}', '{\"x\": 1e400}'::jsonb, \
                 10, 'passing', $4::timestamptz - interval '10 seconds', \
                 $4::timestamptz - interval '10 seconds', $4, 0)",
            &[&tenant, &service, &instance, &lease_expires_at],
        )
        .await
        .unwrap_or_else(|e| panic!("inserting an unreadable instance: {e}"));
        tx.commit().await.unwrap_or_else(|e| panic!("commit: {e}"));
    }

    /// Runs `sql` as the application role in a transaction scoped to
    /// `tenant` (row-level security applies, as for the server), and
    /// returns its rows.
    pub async fn as_tenant(
        &self,
        tenant: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<tokio_postgres::Row> {
        let client = Self::connect(&self.app).await;
        client
            .batch_execute("BEGIN")
            .await
            .unwrap_or_else(|e| panic!("begin: {e}"));
        client
            .execute("SELECT set_config('app.tenant_id', $1, true)", &[&tenant])
            .await
            .unwrap_or_else(|e| panic!("setting the tenant: {e}"));
        let rows = client
            .query(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        client
            .batch_execute("COMMIT")
            .await
            .unwrap_or_else(|e| panic!("commit: {e}"));
        rows
    }

    /// A raw connection as `config`'s role, for SQL-level tests.
    pub async fn connect(config: &PgConfig) -> tokio_postgres::Client {
        let (client, connection) = config
            .connection()
            .connect(NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting as {}: {e}", config.user));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

impl Drop for TestDb {
    /// Drops the database and its three roles (best effort, on a thread of its
    /// own because the test's runtime may be shutting down). One statement
    /// at a time: several in one simple query form an implicit transaction,
    /// and `DROP DATABASE` refuses to run inside one. `WITH (FORCE)` gives
    /// the backends it ends five seconds, which a loaded machine has been
    /// seen to exceed, so each statement gets three attempts.
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let statements = [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            format!("DROP ROLE IF EXISTS {}", self.owner.user),
            format!("DROP ROLE IF EXISTS {}", self.app.user),
            format!("DROP ROLE IF EXISTS {}", self.relay.user),
        ];
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(client) = admin_client(&admin).await else {
                    return;
                };
                for statement in &statements {
                    let mut result = client.batch_execute(statement).await;
                    for _ in 1..3 {
                        if result.is_ok() {
                            break;
                        }
                        result = client.batch_execute(statement).await;
                    }
                    if let Err(error) = result {
                        #[allow(clippy::print_stderr)]
                        {
                            eprintln!("test cleanup: {statement}: {error}");
                        }
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// The shared Redis (standing in for DragonflyDB) of the tests:
/// `HUB_TEST_REDIS` (`host:port`, default `127.0.0.1:6379`).
pub fn redis_addr() -> (String, u16) {
    let addr = std::env::var("HUB_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".to_owned());
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "6379"));
    (host.to_owned(), port.parse().unwrap_or(6379))
}

/// Client settings for a Redis at `host:port` with a short command timeout.
pub fn dragonfly_config(host: &str, port: u16) -> crate::dragonfly::DragonflyConfig {
    crate::dragonfly::DragonflyConfig {
        host: host.to_owned(),
        port,
        db: None,
        username: None,
        password: None,
        command_timeout: std::time::Duration::from_millis(500),
        tls: None,
    }
}

/// Whether `client` is connected within 5 s (polled).
pub async fn wait_connected(client: &crate::dragonfly::Dragonfly) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !client.is_connected() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}

/// A connected client of a Redis on 127.0.0.1 at `port` (a test's own
/// [`RedisServer`]); panics if it does not connect.
pub async fn dragonfly_on(port: u16) -> crate::dragonfly::Dragonfly {
    let client = crate::dragonfly::Dragonfly::connect(&dragonfly_config("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wait_connected(&client).await,
        "no connection to 127.0.0.1:{port}"
    );
    client
}

/// A client of the shared test Redis once connected, or `None` outside CI
/// when it is unreachable (said on stderr). With `CI=true` that fails.
pub async fn dragonfly() -> Option<crate::dragonfly::Dragonfly> {
    let (host, port) = redis_addr();
    let client = crate::dragonfly::Dragonfly::connect(&dragonfly_config(&host, port))
        .unwrap_or_else(|e| panic!("{e}"));
    if wait_connected(&client).await {
        return Some(client);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "Redis is not reachable at {host}:{port} and CI=true"
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!("SKIPPED: Redis not reachable at {host}:{port}; set CI=true to fail instead");
    }
    None
}

/// A `redis-server` owned by one test, on a free port, without persistence;
/// killed when dropped (or by [`RedisServer::stop`]).
#[derive(Debug)]
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers. Panics when `redis-server`
    /// cannot be run (the tests that need one say so).
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        Self::start_on(port).await
    }

    /// Starts a new, empty server on the port of this one (after
    /// [`RedisServer::stop`]): a Dragonfly that restarted and lost its data.
    pub async fn restart_empty(&mut self) {
        self.stop();
        *self = Self::start_on(self.port).await;
    }

    async fn start_on(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server: {e}"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Self {
            port,
            child: Some(child),
        }
    }

    /// Kills it (SIGKILL: a crash, not a goodbye) and waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
