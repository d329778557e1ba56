//! `Application`: builds adapters from settings, binds the listener, runs the HTTP server and background tasks, shuts down.

use hub_core::error_chain;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpServer;
use actix_web::dev::{Server, ServerHandle};
use async_trait::async_trait;
use hub_bus::best_effort::{BestEffort, BestEffortStats};
use hub_bus::lazy::Lazy;
use hub_bus::relay::{Relay, RelaySettings, RelayStats, prune_outbox};
use hub_bus::{KafkaConfig, KafkaPublisher, NatsAuth, NatsConfig, NatsPublisher, SubjectPrefix};
use hub_core::cache::CachedStore;
use hub_core::memory::{InProcessBus, MemoryStore, SystemClock};
use hub_core::ports::{Clock, EventSink, EventStatus, Outbox, RegistryStore};
use hub_core::{
    Delivery, Registry, RegistryError, RegistryEvent, Sink, SinkStatus, Sinks, TenantId,
};
use hub_http::{ApiKeys, Auth, HttpDeps};
use hub_store::pg::diagnose::{ConnectProblem, diagnose};
use hub_store::pg::migrate;
use hub_store::{PgConfig, PgStore, RoleCheck};
use secrecy::ExposeSecret;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::settings::{EventSettings, PostgresSettings, Settings};

/// A built, bound, not yet running server.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    registry: Registry,
    bus: InProcessBus,
    replica_id: String,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    stop_background: watch::Sender<bool>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A handle that stops a running [`Application`] gracefully.
#[derive(Debug, Clone)]
pub struct StopHandle {
    server: ServerHandle,
}

impl StopHandle {
    /// Stops accepting connections, lets in-flight requests finish (up to the
    /// shutdown timeout), then lets `run_until_stopped` stop the background tasks.
    pub async fn stop(&self) {
        self.server.stop(true).await;
    }
}

/// 32 random bytes as hex: the key generated when auth is on and none is configured.
fn generate_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    Ok(hex::encode(bytes))
}

fn build_auth(settings: &Settings) -> anyhow::Result<Auth> {
    if settings.auth.disabled {
        tracing::warn!(
            "DISABLE_AUTH=true: every endpoint is open to anyone who can reach this port; use only for development"
        );
        return Ok(Auth::Disabled);
    }
    let keys = ApiKeys::parse(settings.auth.api_keys.expose_secret())
        .map_err(|e| anyhow::anyhow!("CENTRAL_HUB_API_KEYS is invalid: {e}"))?;
    if keys.is_empty() {
        let key = generate_key()?;
        // The one place a key is ever logged: it was made here, for this run,
        // so that the first request of the README works without configuration.
        tracing::warn!(
            bootstrap_api_key = %key,
            "no API key configured (CENTRAL_HUB_API_KEYS): generated an operator key for this run only"
        );
        return Ok(Auth::Keys(keys.with_operator_key(&key)));
    }
    tracing::info!(keys = keys.len(), "API keys loaded");
    Ok(Auth::Keys(keys))
}

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

/// The store and, in PostgreSQL mode, its outbox and lookup cache.
struct Stores {
    registry: Arc<dyn RegistryStore>,
    outbox: Option<Arc<dyn Outbox>>,
    cache: Option<Arc<CachedStore>>,
    /// The PostgreSQL store itself, for its maintenance (metrics pruning).
    pg: Option<Arc<PgStore>>,
}

/// The registry store: PostgreSQL when `POSTGRES_HOST` is set, memory
/// otherwise. An unreachable database is retried with backoff for
/// `HUB_PG_STARTUP_TIMEOUT_SECS`; a role that bypasses row-level security is
/// refused unless explicitly allowed. With event sinks, every change also
/// writes its event to the outbox, tagged with `replica_id`.
async fn build_store(
    settings: &PostgresSettings,
    clock: &Arc<dyn Clock>,
    sinks: Sinks,
    replica_id: &str,
) -> anyhow::Result<Stores> {
    let Some(host) = settings.host.as_deref().filter(|h| !h.is_empty()) else {
        tracing::info!(
            "embedded mode: in-memory registry and in-process event bus; nothing is persisted across restarts"
        );
        return Ok(Stores {
            registry: Arc::new(MemoryStore::new()),
            outbox: None,
            cache: None,
            pg: None,
        });
    };
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
            "the database {} is not migrated to this version (no hub_outbox_undeliverable table, migration V3): run `cargo xtask migrate` or set HUB_MIGRATE_ON_START=true",
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
    let pg = Arc::new(PgStore::new(&config)?.with_outbox(sinks, replica_id));
    let outbox: Option<Arc<dyn Outbox>> = if sinks.is_empty() {
        None
    } else {
        let relay = relay_pg_config(&config, settings);
        check_relay_login(&relay).await?;
        Some(Arc::new(pg.relay_outbox(&relay)?))
    };
    if settings.lookup_cache_ms == 0 {
        return Ok(Stores {
            registry: pg.clone(),
            outbox,
            cache: None,
            pg: Some(pg),
        });
    }
    let cache = Arc::new(CachedStore::new(
        pg.clone(),
        clock.clone(),
        chrono::Duration::milliseconds(i64::try_from(settings.lookup_cache_ms).unwrap_or(1000)),
    ));
    Ok(Stores {
        registry: cache.clone(),
        outbox,
        cache: Some(cache),
        pg: Some(pg),
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

/// The configured event buses, each connected on first use (and again,
/// with backoff, after a failed attempt), so that a bus that is down at
/// start-up only delays events. Start-up tries each once, after PostgreSQL,
/// to log how it publishes.
struct Buses {
    nats: Option<Arc<Lazy<NatsPublisher>>>,
    kafka: Option<Arc<Lazy<KafkaPublisher>>>,
}

impl Buses {
    fn sinks(&self) -> Sinks {
        let mut sinks = Sinks::NONE;
        if self.nats.is_some() {
            sinks = sinks.with(Sink::Nats);
        }
        if self.kafka.is_some() {
            sinks = sinks.with(Sink::Kafka);
        }
        sinks
    }

    fn publisher(&self, sink: Sink) -> Option<Arc<dyn EventSink>> {
        match sink {
            Sink::Nats => self.nats.clone().map(|p| p as Arc<dyn EventSink>),
            Sink::Kafka => self.kafka.clone().map(|p| p as Arc<dyn EventSink>),
        }
    }
}

fn nats_config(
    settings: &EventSettings,
    url: &str,
    replica_id: &str,
) -> anyhow::Result<NatsConfig> {
    let mut config = NatsConfig::new(url).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.auth = match (&settings.nats_token, &settings.nats_user) {
        (Some(token), _) => NatsAuth::Token(token.clone()),
        (None, Some(user)) => NatsAuth::UserPassword {
            user: user.clone(),
            password: settings
                .nats_password
                .clone()
                .unwrap_or_else(|| secrecy::SecretString::from(String::new())),
        },
        (None, None) => NatsAuth::None,
    };
    config.subject_prefix = SubjectPrefix::parse(settings.nats_subject_prefix.clone())
        .map_err(|e| anyhow::anyhow!("HUB_NATS_SUBJECT_PREFIX: {e}"))?;
    config.stream_name = settings.nats_stream.clone();
    config.stream_max_age = Duration::from_secs(settings.nats_stream_max_age_secs);
    config.connection_name = format!("central-hub {replica_id}");
    Ok(config)
}

/// The configured buses, not connected yet (no I/O here, so that start-up
/// can look at PostgreSQL first).
fn configure_buses(settings: &EventSettings, replica_id: &str) -> anyhow::Result<Buses> {
    let nats = match settings
        .nats_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        None => None,
        Some(url) => {
            let config = nats_config(settings, url, replica_id)?;
            Some(Arc::new(Lazy::new("nats", move || {
                NatsPublisher::connect(config.clone())
            })))
        }
    };
    let kafka = match settings
        .kafka_brokers
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    {
        None => None,
        Some(brokers) => {
            let config = KafkaConfig {
                topic: settings.kafka_topic.clone(),
                partitions: settings.kafka_partitions,
                ..KafkaConfig::new(
                    brokers
                        .split(',')
                        .map(str::trim)
                        .filter(|b| !b.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            };
            Some(Arc::new(Lazy::new("kafka", move || {
                KafkaPublisher::connect(config.clone())
            })))
        }
    };
    Ok(Buses { nats, kafka })
}

/// One connection attempt per configured bus, once PostgreSQL is known to
/// be fine. An unreachable bus only delays events: [`Lazy`] logs it once
/// and retries quietly with backoff. An invalid setting (a malformed broker
/// address or topic) will not fix itself, so it stops start-up.
async fn first_bus_attempts(buses: &Buses) -> anyhow::Result<()> {
    let attempts = [
        (
            "nats",
            match &buses.nats {
                Some(nats) => nats.get().await.err(),
                None => None,
            },
        ),
        (
            "kafka",
            match &buses.kafka {
                Some(kafka) => kafka.get().await.err(),
                None => None,
            },
        ),
    ];
    for (sink, error) in attempts {
        if let Some(RegistryError::Invalid(error)) = error {
            anyhow::bail!("the {sink} settings are invalid: {error}")
        }
    }
    Ok(())
}

/// Hands every event to each of several sinks (the in-process bus first).
/// Only the first sink's error would matter to the registry, which ignores
/// them all: the change is stored either way.
struct FanOut(Vec<Arc<dyn EventSink>>);

#[async_trait]
impl EventSink for FanOut {
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        let mut result = Ok(());
        for sink in &self.0 {
            if let Err(error) = sink.publish(events).await {
                result = Err(error);
            }
        }
        result
    }
}

/// Wakes the outbox relays of this process after a change it stored, so
/// they publish at once rather than at their next poll.
struct WakeRelays(Vec<Arc<Notify>>);

#[async_trait]
impl EventSink for WakeRelays {
    async fn publish(&self, _events: &[RegistryEvent]) -> Result<(), RegistryError> {
        for wake in &self.0 {
            wake.notify_one();
        }
        Ok(())
    }
}

/// What a bus's publisher in this replica counts.
enum Counters {
    Relay(Arc<RelayStats>),
    BestEffort(Arc<BestEffortStats>),
}

/// Event delivery as the dashboard shows it: this replica's counters and,
/// in outbox mode, the backlog in the database.
struct DeliveryState {
    delivery: Delivery,
    outbox: Option<Arc<dyn Outbox>>,
    sinks: Vec<(Sink, Counters)>,
}

impl std::fmt::Debug for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryState")
            .field("delivery", &self.delivery)
            .field("sinks", &self.sinks.iter().map(|s| s.0).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventStatus for DeliveryState {
    fn delivery(&self) -> Delivery {
        self.delivery
    }

    async fn sinks(&self, tenant: Option<&TenantId>) -> Result<Vec<SinkStatus>, RegistryError> {
        let mut out = Vec::with_capacity(self.sinks.len());
        for (sink, counters) in &self.sinks {
            let backlog = match &self.outbox {
                Some(outbox) => Some(outbox.backlog(*sink, tenant).await?),
                None => None,
            };
            out.push(match counters {
                Counters::Relay(stats) => SinkStatus {
                    sink: *sink,
                    published: stats.published(),
                    failures: stats.failures(),
                    relaying: Some(stats.leading()),
                    dropped: None,
                    backlog,
                },
                Counters::BestEffort(stats) => SinkStatus {
                    sink: *sink,
                    published: stats.published(),
                    failures: stats.failures(),
                    relaying: None,
                    dropped: Some(stats.dropped()),
                    backlog,
                },
            });
        }
        Ok(out)
    }
}

/// A name for this replica: `HUB_REPLICA_ID`, or random per start.
fn replica_id(settings: &EventSettings) -> anyhow::Result<String> {
    if let Some(id) = settings.replica_id.as_deref().filter(|i| !i.is_empty()) {
        return Ok(id.chars().take(64).collect());
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for a replica id: {e}"))?;
    Ok(format!("hub-{}", hex::encode(bytes)))
}

/// Runs lease expiry every `interval` until told to stop. A failed pass is
/// logged and retried at the next tick: expiry is idempotent.
async fn reap_leases(registry: Registry, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                match registry.expire_leases().await {
                    Ok(report) if report.expired + report.removed > 0 => {
                        tracing::info!(expired = report.expired, removed = report.removed, "leases expired");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "lease expiry pass failed"),
                }
            }
            _ = stop.changed() => break,
        }
    }
}

/// Rows of `health_metrics` one pruning statement deletes: small enough to
/// keep each transaction short, large enough to keep up with a tenant that
/// heartbeats with metrics hundreds of times a second.
const METRICS_PRUNE_BATCH: u32 = 1000;

/// How often `health_metrics` is pruned.
const METRICS_PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Prunes heartbeat metrics older than `keep_days` days every `interval`,
/// starting at once, until told to stop. Only the replica holding the
/// pruner's advisory lock does the work; a failed pass is logged and
/// retried at the next tick.
async fn prune_metrics(
    pg: Arc<PgStore>,
    keep_days: u32,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        let pass = pg.prune_metrics(keep_days, METRICS_PRUNE_BATCH);
        let outcome = tokio::select! {
            outcome = pass => outcome,
            _ = stop.changed() => break,
        };
        match outcome {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, keep_days, "old health metrics pruned"),
            Err(error) => {
                tracing::warn!(%error, "health metrics pruning failed; retrying at the next tick");
            }
        }
    }
}

/// Follows the other replicas' events on NATS: each drops this replica's
/// cached lookup of its service and goes to the in-process bus. Waits for
/// NATS if it is down at start.
async fn follow_replicas(
    nats: Arc<Lazy<NatsPublisher>>,
    replica_id: String,
    cache: Option<Arc<CachedStore>>,
    bus: InProcessBus,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(500);
    loop {
        let follow_stop = stop.clone();
        let attempt = async {
            let publisher = nats.get().await?;
            let cache = cache.clone();
            let bus = bus.clone();
            publisher
                .follow(
                    Some(replica_id.clone()),
                    move |event| {
                        if let Some(cache) = &cache {
                            cache.forget(event.tenant_id(), event.service_name());
                        }
                        bus.send(event);
                    },
                    follow_stop,
                )
                .await
        };
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = stop.changed() => return,
        };
        match outcome {
            Ok(task) => {
                tracing::info!("following other replicas' events on NATS");
                if let Err(error) = task.await {
                    tracing::warn!(%error, "NATS follower ended abnormally");
                }
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "cannot follow NATS yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

impl Application {
    /// Builds the server with the system clock.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Builds the server with a given clock (tests pass a manual one).
    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let auth = build_auth(&settings)?;
        let replica_id = replica_id(&settings.events)?;
        // The source of truth first: a database that cannot be used is the
        // one thing start-up reports, before any broker is contacted.
        let buses = configure_buses(&settings.events, &replica_id)?;
        let stores = build_store(&settings.postgres, &clock, buses.sinks(), &replica_id).await?;
        first_bus_attempts(&buses).await?;
        let bus = InProcessBus::new();
        let (stop_background, stop_rx) = watch::channel(false);
        let mut tasks: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
        let mut sinks: Vec<Arc<dyn EventSink>> = vec![Arc::new(bus.clone())];
        let mut counters: Vec<(Sink, Counters)> = Vec::new();
        match &stores.outbox {
            // PostgreSQL: events reach the buses through the outbox, written
            // in each change's transaction; one relay per bus publishes them.
            Some(outbox) => {
                let relay_settings = RelaySettings {
                    batch: settings.events.outbox_batch,
                    poll: Duration::from_millis(settings.events.outbox_poll_ms),
                    ..RelaySettings::default()
                };
                let mut wakers = Vec::new();
                for sink in buses.sinks().iter() {
                    let Some(publisher) = buses.publisher(sink) else {
                        continue;
                    };
                    let relay = Relay::new(outbox.clone(), sink, publisher, relay_settings.clone());
                    wakers.push(relay.waker());
                    counters.push((sink, Counters::Relay(relay.stats())));
                    let name = match sink {
                        Sink::Nats => "nats relay",
                        Sink::Kafka => "kafka relay",
                    };
                    tasks.push((name, tokio::spawn(relay.run(stop_rx.clone()))));
                }
                sinks.push(Arc::new(WakeRelays(wakers)));
                tasks.push((
                    "outbox pruner",
                    tokio::spawn(prune_outbox(
                        outbox.clone(),
                        Duration::from_secs(settings.events.outbox_retention_secs),
                        Duration::from_secs(60),
                        stop_rx.clone(),
                    )),
                ));
                tracing::info!(sinks = ?buses.sinks().iter().map(Sink::as_str).collect::<Vec<_>>(), "events are relayed from the PostgreSQL outbox (at least once)");
            }
            // Embedded: no outbox; external buses get the events best effort.
            None => {
                for sink in buses.sinks().iter() {
                    let Some(publisher) = buses.publisher(sink) else {
                        continue;
                    };
                    let (queue, task) = BestEffort::spawn(
                        sink,
                        publisher,
                        settings.events.embedded_event_queue,
                        stop_rx.clone(),
                    );
                    counters.push((sink, Counters::BestEffort(queue.stats())));
                    sinks.push(Arc::new(queue));
                    tasks.push(("best-effort publisher", task));
                }
                if !buses.sinks().is_empty() {
                    tracing::warn!(
                        "embedded mode publishes to NATS/Kafka best effort: events queued while a bus is down are lost on restart or when the queue is full"
                    );
                }
            }
        }
        // Replicas follow each other: another replica's changes drop this
        // one's cached lookups and reach its in-process watchers.
        if stores.outbox.is_some()
            && let Some(nats) = &buses.nats
        {
            tasks.push((
                "nats follower",
                tokio::spawn(follow_replicas(
                    nats.clone(),
                    replica_id.clone(),
                    stores.cache.clone(),
                    bus.clone(),
                    stop_rx.clone(),
                )),
            ));
        }
        if let Some(pg) = &stores.pg
            && settings.postgres.metrics_retention_days > 0
        {
            tasks.push((
                "metrics pruner",
                tokio::spawn(prune_metrics(
                    pg.clone(),
                    settings.postgres.metrics_retention_days,
                    METRICS_PRUNE_INTERVAL,
                    stop_rx.clone(),
                )),
            ));
        }
        let registry = Registry::new(stores.registry, Arc::new(FanOut(sinks)), clock);
        let events: Arc<dyn EventStatus> = Arc::new(DeliveryState {
            delivery: match (&stores.outbox, counters.is_empty()) {
                (_, true) => Delivery::InProcess,
                (Some(_), false) => Delivery::Outbox,
                (None, false) => Delivery::BestEffort,
            },
            outbox: stores.outbox.clone(),
            sinks: counters,
        });

        let listener = TcpListener::bind(&settings.server.bind)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.server.bind))?;
        let addr = listener.local_addr()?;
        let deps = HttpDeps {
            registry: registry.clone(),
            auth,
            events,
            body_timeout: Duration::from_secs(settings.server.body_timeout_secs),
        };
        let mut http = HttpServer::new(move || hub_http::app(deps.clone()))
            .disable_signals()
            .shutdown_timeout(settings.server.shutdown_timeout_secs);
        if let Some(workers) = settings.server.workers {
            http = http.workers(workers);
        }
        let server = http.listen(listener)?.run();
        tracing::info!(%addr, "listening");

        tasks.push((
            "lease reaper",
            tokio::spawn(reap_leases(
                registry.clone(),
                Duration::from_millis(settings.leases.reap_interval_ms),
                stop_rx,
            )),
        ));
        Ok(Self {
            addr,
            server,
            registry,
            bus,
            replica_id,
            tasks,
            stop_background,
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry, for embedders and tests that watch it directly.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The in-process event bus (subscribe to follow registry changes,
    /// this replica's and, with NATS, the other replicas').
    pub fn bus(&self) -> &InProcessBus {
        &self.bus
    }

    /// This replica's name in the `hub-origin` header of its events.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// A handle to stop the server from another task.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            server: self.server.handle(),
        }
    }

    /// Serves until stopped through a [`StopHandle`], then stops the
    /// background tasks and waits for them.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        let _ = self.stop_background.send(true);
        for (name, task) in self.tasks {
            if let Err(error) = task.await {
                tracing::warn!(%error, task = name, "background task ended abnormally");
            }
        }
        tracing::info!("stopped");
        served
    }
}
