//! Helpers of the PostgreSQL-mode tests that need more than `TestDb`: a hub started and stopped explicitly on a given database, and a private PostgreSQL cluster the tests may stop, restart or freeze.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hub_server::{Application, Settings, StopHandle};
use hub_store::PgConfig;
use hub_store::pg::migrate;
use hub_store::testing::TestDb;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::support::OPERATOR_KEY;

/// Where the PostgreSQL 15 server binaries are.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A hub-server started by these tests on a given database, stopped
/// explicitly (and waited for) so that a second one can take its place.
pub struct Hub {
    pub base: String,
    client: reqwest::Client,
    stop: StopHandle,
    serving: Option<JoinHandle<std::io::Result<()>>>,
}

impl Hub {
    /// Starts the app on a free port against `pg` (built the way
    /// `support::spawn_app_with` does it, plus `extra` variables).
    pub async fn start(pg: &PgConfig, extra: &[(&str, &str)]) -> Self {
        let mut env: HashMap<String, String> = [
            ("HUB_BIND", "127.0.0.1:0".to_owned()),
            ("CENTRAL_HUB_API_KEYS", OPERATOR_KEY.to_owned()),
            ("HUB_REAP_INTERVAL_MS", "20".to_owned()),
            ("HUB_SHUTDOWN_TIMEOUT_SECS", "5".to_owned()),
            ("POSTGRES_HOST", pg.host.clone()),
            ("POSTGRES_PORT", pg.port.to_string()),
            ("POSTGRES_DB", pg.dbname.clone()),
            ("POSTGRES_USER", pg.user.clone()),
            ("HUB_PG_POOL_SIZE", "8".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(password) = &pg.password {
            env.insert("POSTGRES_PASSWORD".into(), password.clone());
        }
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let app = Application::build(Settings::load(&env).unwrap())
            .await
            .unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let stop = app.stop_handle();
        let serving = tokio::spawn(app.run_until_stopped());
        Self {
            base,
            // A bound on every request, so a hung server fails the test
            // instead of hanging it.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            stop,
            serving: Some(serving),
        }
    }

    /// Stops the server and waits until it and its background tasks are done.
    pub async fn shut_down(mut self) {
        self.stop.stop().await;
        if let Some(serving) = self.serving.take() {
            serving.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn request(&self, method: Method, path: &str, tenant: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("X-API-Key", OPERATOR_KEY)
            .header("X-Tenant-ID", tenant)
    }

    /// Registers with a long lease, so no instance expires during the test.
    pub async fn register(
        &self,
        tenant: &str,
        service: &str,
        instance: &str,
        host: &str,
    ) -> Response {
        self.request(Method::POST, "/api/v1/discovery/register", tenant)
            .json(&json!({
                "service_name": service, "instance_id": instance,
                "host": host, "port": 8080, "ttl_seconds": 3600
            }))
            .send()
            .await
            .unwrap()
    }

    pub async fn register_created(&self, tenant: &str, service: &str, instance: &str, host: &str) {
        let r = self.register(tenant, service, instance, host).await;
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "registering {tenant}/{service}/{instance}: {body}"
        );
    }

    pub async fn list(&self, tenant: &str) -> Response {
        self.request(
            Method::GET,
            "/api/v1/discovery/services?limit=10000",
            tenant,
        )
        .send()
        .await
        .unwrap()
    }

    /// The hosts of `tenant1`'s `svc` instances, as this hub answers.
    pub async fn hosts(&self) -> Vec<String> {
        let r = self.get_service("tenant1", "svc").await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["host"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn get_service(&self, tenant: &str, service: &str) -> Response {
        self.request(
            Method::GET,
            &format!("/api/v1/discovery/services/{service}"),
            tenant,
        )
        .send()
        .await
        .unwrap()
    }

    /// `(service, instance, host)` of every instance the tenant lists; each
    /// must belong to the tenant.
    pub async fn listed(&self, tenant: &str) -> BTreeSet<(String, String, String)> {
        let r = self.list(tenant).await;
        assert_eq!(r.status(), StatusCode::OK, "listing {tenant}");
        let body: Value = r.json().await.unwrap();
        body["services"]
            .as_array()
            .unwrap_or_else(|| panic!("no services array in {body}"))
            .iter()
            .map(|i| {
                assert_eq!(i["tenant_id"], tenant, "foreign instance in list: {i}");
                (
                    i["service_name"].as_str().unwrap().to_owned(),
                    i["instance_id"].as_str().unwrap().to_owned(),
                    i["host"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub async fn get_path(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // A test that failed half-way: stop without waiting, the runtime of
        // the test is going away.
        if self.serving.is_some() {
            let stop = self.stop.clone();
            drop(tokio::spawn(async move { stop.stop().await }));
        }
    }
}

/// A PostgreSQL cluster of the test's own, in a fresh folder under /tmp,
/// listening on 127.0.0.1 on a free port. `initdb` and `postgres` refuse to
/// run as root, so every command runs as the `postgres` OS user, which owns
/// the folder. Dropping it stops the cluster and removes the folder.
pub struct PgCluster {
    dir: PathBuf,
    pub port: u16,
}

fn run(what: &str, command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command
        .args(["-u", "postgres", "--"])
        .arg(Path::new(PG_BIN).join(program));
    command
}

impl PgCluster {
    /// Whether this machine can run a private cluster: the binaries exist and
    /// `runuser` can act as `postgres`. The reason if not.
    pub fn unavailable() -> Option<String> {
        for program in ["initdb", "pg_ctl", "postgres"] {
            if !Path::new(PG_BIN).join(program).exists() {
                return Some(format!("{PG_BIN}/{program} is missing"));
            }
        }
        match as_postgres("pg_ctl").arg("--version").output() {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "`runuser -u postgres -- pg_ctl --version` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => Some(format!("runuser cannot be run: {e}")),
        }
    }

    /// Makes and starts a cluster, or `None` outside CI when this machine
    /// cannot (said on stderr). With `CI=true` that is a failure.
    pub fn create() -> Option<Self> {
        if let Some(reason) = Self::unavailable() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "a private PostgreSQL cluster is needed and CI=true: {reason}"
            );
            #[allow(clippy::print_stderr)]
            {
                eprintln!("SKIPPED: cannot run a private PostgreSQL cluster ({reason})");
            }
            return None;
        }
        let id = RandomState::new().hash_one((std::process::id(), Instant::now()));
        let dir = std::env::temp_dir().join(format!("hub-pg-{id:016x}"));
        std::fs::create_dir(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The guard exists from here on, so the folder goes away on any failure.
        let cluster = Self { dir, port };
        run(
            "chown",
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cluster.dir),
        );
        run(
            "initdb",
            as_postgres("initdb")
                .arg("-D")
                .arg(&cluster.dir)
                .args(["-A", "trust", "-U", "postgres"]),
        );
        cluster.start();
        Some(cluster)
    }

    pub fn pg_ctl(&self) -> Command {
        let mut command = as_postgres("pg_ctl");
        command.arg("-D").arg(&self.dir);
        command
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let output = self
            .pg_ctl()
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "start"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_ctl start failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// Stops the server ("fast": sessions are ended, as in a planned
    /// restart or a failover) and waits until it is down.
    pub fn stop_fast(&self) {
        run(
            "pg_ctl stop",
            self.pg_ctl().args(["-w", "stop", "-m", "fast"]),
        );
    }

    /// The bootstrap superuser, for setting up roles and the database only.
    pub fn superuser(&self) -> PgConfig {
        PgConfig {
            port: self.port,
            dbname: "postgres".into(),
            user: "postgres".into(),
            ..PgConfig::new("127.0.0.1")
        }
    }

    /// Sets the cluster up as `TestDb` does: the application group role, a
    /// table owner that runs the migrations, and an application login that
    /// is only a member of the group role. Returns the application login.
    pub async fn hub_database(&self) -> PgConfig {
        let admin = TestDb::connect(&self.superuser()).await;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} NOLOGIN;
                 CREATE ROLE {relay} NOLOGIN;
                 CREATE ROLE hub_owner LOGIN;
                 CREATE ROLE hub_app LOGIN;
                 GRANT {role} TO hub_app;",
                role = migrate::APP_ROLE,
                relay = migrate::RELAY_ROLE
            ))
            .await
            .unwrap();
        // Its own statement: CREATE DATABASE cannot run in a transaction block.
        admin
            .batch_execute("CREATE DATABASE central_hub OWNER hub_owner")
            .await
            .unwrap();
        let login = |user: &str| PgConfig {
            port: self.port,
            dbname: "central_hub".into(),
            user: user.into(),
            ..PgConfig::new("127.0.0.1")
        };
        migrate::run(&login("hub_owner")).await.unwrap();
        login("hub_app")
    }
}

impl PgCluster {
    /// The server's processes: the postmaster (first line of
    /// `postmaster.pid`) and its children, from `/proc`.
    fn processes(&self) -> Vec<u32> {
        let Some(postmaster) = std::fs::read_to_string(self.dir.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces, so parse
            // after the last parenthesis.
            let parent = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat.rsplit_once(')')?.1.to_owned();
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Freezes every process of the server with SIGSTOP: connections stay
    /// open and nothing answers, as with a frozen network. The postmaster
    /// goes first, so it forks no new backend meanwhile. The processes
    /// are thawed (SIGCONT) when the guard is dropped, whatever happens.
    pub fn freeze(&self) -> Frozen {
        let pids = self.processes();
        assert!(!pids.is_empty(), "no server process found to freeze");
        let frozen = Frozen { pids };
        signal("-STOP", &frozen.pids);
        frozen
    }
}

/// Processes frozen by [`PgCluster::freeze`]; dropping it thaws them.
pub struct Frozen {
    pids: Vec<u32>,
}

impl Frozen {
    /// How many processes were frozen.
    pub fn len(&self) -> usize {
        self.pids.len()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.pids);
    }
}

fn signal(which: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    // Best effort: a backend may have exited since it was listed.
    let _ = Command::new("kill")
        .arg(which)
        .args(pids.iter().map(u32::to_string))
        .stderr(std::process::Stdio::null())
        .status();
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // A process left stopped would keep `pg_ctl stop` waiting.
        signal("-CONT", &self.processes());
        let _ = self
            .pg_ctl()
            .args(["-w", "stop", "-m", "immediate"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a blocking cluster command off the runtime, so the hub (served on
/// the same runtime) keeps answering meanwhile.
pub async fn blocking<F: FnOnce() + Send + 'static>(f: F) {
    tokio::task::spawn_blocking(f).await.unwrap();
}

/// `PgCluster::create` off the runtime (initdb takes a while).
pub async fn blocking_create() -> Option<PgCluster> {
    tokio::task::spawn_blocking(PgCluster::create)
        .await
        .unwrap()
}
