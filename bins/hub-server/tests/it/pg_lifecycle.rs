//! PostgreSQL lifecycle: registrations survive a server restart, and the hub rides out a database outage (503 `store_unavailable`) and recovers without a restart.

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

use crate::support::{OPERATOR_KEY, assert_error, eventually};

/// Where the PostgreSQL 15 server binaries are.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A hub-server started by these tests on a given database, stopped
/// explicitly (and waited for) so that a second one can take its place.
struct Hub {
    base: String,
    client: reqwest::Client,
    stop: StopHandle,
    serving: Option<JoinHandle<std::io::Result<()>>>,
}

impl Hub {
    /// Starts the app on a free port against `pg` (built the way
    /// `support::spawn_app_with` does it, plus `extra` variables).
    async fn start(pg: &PgConfig, extra: &[(&str, &str)]) -> Self {
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
    async fn shut_down(mut self) {
        self.stop.stop().await;
        if let Some(serving) = self.serving.take() {
            serving.await.unwrap().unwrap();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn request(&self, method: Method, path: &str, tenant: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("X-API-Key", OPERATOR_KEY)
            .header("X-Tenant-ID", tenant)
    }

    /// Registers with a long lease, so no instance expires during the test.
    async fn register(&self, tenant: &str, service: &str, instance: &str, host: &str) -> Response {
        self.request(Method::POST, "/api/v1/discovery/register", tenant)
            .json(&json!({
                "service_name": service, "instance_id": instance,
                "host": host, "port": 8080, "ttl_seconds": 3600
            }))
            .send()
            .await
            .unwrap()
    }

    async fn register_created(&self, tenant: &str, service: &str, instance: &str, host: &str) {
        let r = self.register(tenant, service, instance, host).await;
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "registering {tenant}/{service}/{instance}: {body}"
        );
    }

    async fn list(&self, tenant: &str) -> Response {
        self.request(
            Method::GET,
            "/api/v1/discovery/services?limit=10000",
            tenant,
        )
        .send()
        .await
        .unwrap()
    }

    async fn get_service(&self, tenant: &str, service: &str) -> Response {
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
    async fn listed(&self, tenant: &str) -> BTreeSet<(String, String, String)> {
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

    async fn get_path(&self, path: &str) -> Response {
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

fn triples(items: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .map(|(s, i, h)| ((*s).to_owned(), (*i).to_owned(), (*h).to_owned()))
        .collect()
}

#[tokio::test]
async fn registrations_survive_a_server_restart_per_tenant() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // The same service and instance names in both tenants, told apart by host.
    let alpha = [
        ("orders", "orders-1", "10.0.1.1"),
        ("orders", "orders-2", "10.0.1.2"),
        ("billing", "billing-1", "10.0.1.3"),
    ];
    let beta = [
        ("orders", "orders-1", "10.0.2.1"),
        ("search", "search-1", "10.0.2.2"),
    ];

    let first = Hub::start(&db.app, &[]).await;
    for (service, instance, host) in alpha {
        first
            .register_created("alpha", service, instance, host)
            .await;
    }
    for (service, instance, host) in beta {
        first
            .register_created("beta", service, instance, host)
            .await;
    }
    assert_eq!(first.listed("alpha").await, triples(&alpha));
    let old_base = first.base.clone();
    first.shut_down().await;
    assert!(
        reqwest::get(format!("{old_base}/health")).await.is_err(),
        "the first server still answers after being stopped"
    );

    let second = Hub::start(&db.app, &[]).await;
    assert_eq!(second.listed("alpha").await, triples(&alpha));
    assert_eq!(second.listed("beta").await, triples(&beta));
    // A service only the other tenant has is not found, and a tenant that
    // never registered anything sees nothing.
    let r = second.get_service("beta", "billing").await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = second.get_service("alpha", "search").await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    assert!(second.listed("gamma").await.is_empty());
    second.shut_down().await;
}

/// A PostgreSQL cluster of the test's own, in a fresh folder under /tmp,
/// listening on 127.0.0.1 on a free port. `initdb` and `postgres` refuse to
/// run as root, so every command runs as the `postgres` OS user, which owns
/// the folder. Dropping it stops the cluster and removes the folder.
struct PgCluster {
    dir: PathBuf,
    port: u16,
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
    fn unavailable() -> Option<String> {
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
    fn create() -> Option<Self> {
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

    fn pg_ctl(&self) -> Command {
        let mut command = as_postgres("pg_ctl");
        command.arg("-D").arg(&self.dir);
        command
    }

    /// Starts the server and waits until it accepts connections.
    fn start(&self) {
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
    fn stop_fast(&self) {
        run(
            "pg_ctl stop",
            self.pg_ctl().args(["-w", "stop", "-m", "fast"]),
        );
    }

    /// The bootstrap superuser, for setting up roles and the database only.
    fn superuser(&self) -> PgConfig {
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
    async fn hub_database(&self) -> PgConfig {
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

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .pg_ctl()
            .args(["-w", "stop", "-m", "immediate"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a blocking cluster command off the runtime, so the hub (served on
/// the same runtime) keeps answering meanwhile.
async fn blocking<F: FnOnce() + Send + 'static>(f: F) {
    tokio::task::spawn_blocking(f).await.unwrap();
}

#[tokio::test]
async fn the_hub_answers_503_during_a_database_outage_and_recovers_without_a_restart() {
    const TIMEOUT_MS: u64 = 1000;
    const N: usize = 20;
    let Some(cluster) = blocking_create().await else {
        return;
    };
    let pg = cluster.hub_database().await;
    let hub = Hub::start(
        &pg,
        &[
            ("HUB_PG_STATEMENT_TIMEOUT_MS", "1000"),
            ("HUB_PG_POOL_SIZE", "4"),
        ],
    )
    .await;
    let tenant = "outage";
    let mut acknowledged = BTreeSet::new();
    for i in 0..N {
        let (service, instance) = (format!("svc-{}", i % 4), format!("inst-{i}"));
        hub.register_created(tenant, &service, &instance, "10.0.0.1")
            .await;
        acknowledged.insert((service, instance, "10.0.0.1".to_owned()));
    }
    assert_eq!(hub.listed(tenant).await, acknowledged);

    let cluster = std::sync::Arc::new(cluster);
    let c = cluster.clone();
    blocking(move || c.stop_fast()).await;

    // Every request during the outage answers, and answers quickly: a bound
    // of three statement timeouts, with margin, not a speed test.
    let bound = Duration::from_millis(3 * TIMEOUT_MS);
    let slowest = std::cell::Cell::new(Duration::ZERO);
    let timed = |what: &'static str, started: Instant| {
        let took = started.elapsed();
        slowest.set(slowest.get().max(took));
        assert!(took < bound, "{what} took {took:?} during the outage");
    };
    // The hub notices within a few statement timeouts.
    eventually(5 * TIMEOUT_MS / 1000, || async {
        let started = Instant::now();
        let r = hub.list(tenant).await;
        timed("list", started);
        (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let started = Instant::now();
    let r = hub.list(tenant).await;
    timed("list", started);
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable").await;
    let started = Instant::now();
    let r = hub
        .register(tenant, "svc-new", "during-outage", "10.0.0.9")
        .await;
    timed("register", started);
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable").await;
    let started = Instant::now();
    let r = hub.get_service(tenant, "svc-0").await;
    timed("get", started);
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable").await;
    let started = Instant::now();
    let r = hub.get_path("/health/ready").await;
    timed("ready", started);
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable").await;
    let r = hub.get_path("/health").await;
    assert_eq!(r.status(), StatusCode::OK, "/health is liveness only");

    let c = cluster.clone();
    blocking(move || c.start()).await;
    let recovered = Instant::now();
    eventually(30, || async {
        let ready = hub.get_path("/health/ready").await.status() == StatusCode::OK;
        let listed = hub.list(tenant).await.status() == StatusCode::OK;
        (ready && listed).then_some(())
    })
    .await;
    let took = recovered.elapsed();
    // Nothing acknowledged was lost; the one refused during the outage was
    // not stored; new writes work again.
    assert_eq!(hub.listed(tenant).await, acknowledged);
    hub.register_created(tenant, "svc-new", "after-outage", "10.0.0.9")
        .await;
    assert_eq!(hub.listed(tenant).await.len(), N + 1);
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "slowest answer during the outage {:?}; recovered {took:?} after the database came back",
            slowest.get()
        );
    }
    hub.shut_down().await;
}

/// `PgCluster::create` off the runtime (initdb takes a while).
async fn blocking_create() -> Option<PgCluster> {
    tokio::task::spawn_blocking(PgCluster::create)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_change_through_one_replica_is_seen_through_another_within_a_second() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // Two replicas on one database, each with its lookup cache (500 ms) and
    // its refresher running.
    let a = Hub::start(&db.app, &[("HUB_LOOKUP_CACHE_MS", "500")]).await;
    let b = Hub::start(&db.app, &[("HUB_LOOKUP_CACHE_MS", "500")]).await;
    a.register_created("tenant1", "svc", "i1", "10.0.0.1").await;
    // Replica B looks the service up, so it is cached and kept busy there.
    assert_eq!(hosts(&b).await, ["10.0.0.1"]);
    // Replica A changes it; B shows the change within 1 s.
    let changed_at = Instant::now();
    let r = a.register("tenant1", "svc", "i1", "10.9.9.9").await;
    assert_eq!(r.status(), StatusCode::OK);
    loop {
        if hosts(&b).await == ["10.9.9.9"] {
            break;
        }
        assert!(
            changed_at.elapsed() < Duration::from_secs(1),
            "replica B still serves the old answer after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shut_down().await;
    b.shut_down().await;
}

/// The hosts of `tenant1`'s `svc` instances, as `hub` answers.
async fn hosts(hub: &Hub) -> Vec<String> {
    let r = hub.get_service("tenant1", "svc").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["host"].as_str().unwrap().to_owned())
        .collect()
}
