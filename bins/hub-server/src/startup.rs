//! `Application`: builds adapters from settings, binds the listener, runs the HTTP server and background tasks, shuts down.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpServer;
use actix_web::dev::{Server, ServerHandle};
use hub_core::cache::CachedStore;
use hub_core::memory::{InProcessBus, MemoryStore, SystemClock};
use hub_core::ports::{Clock, RegistryStore};
use hub_core::{Registry, RegistryError};
use hub_http::{ApiKeys, Auth, HttpDeps};
use hub_store::pg::migrate;
use hub_store::{PgConfig, PgStore};
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::settings::{PostgresSettings, Settings};

/// A built, bound, not yet running server.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    registry: Registry,
    bus: InProcessBus,
    reaper: JoinHandle<()>,
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
        ..PgConfig::new(host)
    }
}

/// The registry store: PostgreSQL when `POSTGRES_HOST` is set, memory
/// otherwise. An unreachable database is retried with backoff for
/// `HUB_PG_STARTUP_TIMEOUT_SECS`; a role that bypasses row-level security is
/// refused unless explicitly allowed.
async fn build_store(
    settings: &PostgresSettings,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn RegistryStore>> {
    let Some(host) = settings.host.as_deref().filter(|h| !h.is_empty()) else {
        tracing::info!(
            "embedded mode: in-memory registry and in-process event bus; nothing is persisted across restarts"
        );
        return Ok(Arc::new(MemoryStore::new()));
    };
    let config = pg_config(host, settings);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(settings.startup_timeout_secs);
    let mut delay = Duration::from_millis(250);
    let check = loop {
        match migrate::role_check(&config).await {
            Ok(check) => break check,
            Err(RegistryError::Unavailable { source, .. })
                if tokio::time::Instant::now() + delay < deadline =>
            {
                tracing::warn!(host, port = config.port, error = %source, retry_in_ms = delay.as_millis() as u64, "PostgreSQL not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => anyhow::bail!(
                "PostgreSQL at {host}:{} (database {}, user {}) is not usable: {error:?}",
                config.port,
                config.dbname,
                config.user
            ),
        }
    };
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
            .map_err(|e| anyhow::anyhow!("migrating at start failed: {e:?}"))?;
        tracing::info!(
            ?applied,
            "migrations applied at start (HUB_MIGRATE_ON_START)"
        );
    } else if !check.schema_ready {
        anyhow::bail!(
            "the database {} has no registry tables: run `cargo xtask migrate` or set HUB_MIGRATE_ON_START=true",
            config.dbname
        );
    }
    tracing::info!(
        host,
        port = config.port,
        database = %config.dbname,
        user = %config.user,
        pool_size = config.pool_size,
        "postgres mode: the registry is stored in PostgreSQL with row-level security"
    );
    let store: Arc<dyn RegistryStore> = Arc::new(PgStore::new(&config)?);
    if settings.lookup_cache_ms == 0 {
        return Ok(store);
    }
    Ok(Arc::new(CachedStore::new(
        store,
        clock.clone(),
        chrono::Duration::milliseconds(i64::try_from(settings.lookup_cache_ms).unwrap_or(1000)),
    )))
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
        let store = build_store(&settings.postgres, &clock).await?;
        let bus = InProcessBus::new();
        let registry = Registry::new(store, Arc::new(bus.clone()), clock);

        let listener = TcpListener::bind(&settings.server.bind)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.server.bind))?;
        let addr = listener.local_addr()?;
        let deps = HttpDeps {
            registry: registry.clone(),
            auth,
        };
        let mut http = HttpServer::new(move || hub_http::app(deps.clone()))
            .disable_signals()
            .shutdown_timeout(settings.server.shutdown_timeout_secs);
        if let Some(workers) = settings.server.workers {
            http = http.workers(workers);
        }
        let server = http.listen(listener)?.run();
        tracing::info!(%addr, "listening");

        let (stop_background, stop_rx) = watch::channel(false);
        let reaper = tokio::spawn(reap_leases(
            registry.clone(),
            Duration::from_millis(settings.leases.reap_interval_ms),
            stop_rx,
        ));
        Ok(Self {
            addr,
            server,
            registry,
            bus,
            reaper,
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

    /// The in-process event bus (subscribe to follow registry changes).
    pub fn bus(&self) -> &InProcessBus {
        &self.bus
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
        if let Err(error) = self.reaper.await {
            tracing::warn!(%error, "lease reaper ended abnormally");
        }
        tracing::info!("stopped");
        served
    }
}
