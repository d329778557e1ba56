//! `Application`: builds adapters from settings, binds the listener, runs the HTTP server and background tasks, shuts down.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpServer;
use actix_web::dev::{Server, ServerHandle};
use hub_core::Registry;
use hub_core::memory::{InProcessBus, MemoryStore, SystemClock};
use hub_core::ports::Clock;
use hub_http::{ApiKeys, Auth, HttpDeps};
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::settings::Settings;

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
        tracing::info!(
            "embedded mode: in-memory registry and in-process event bus; nothing is persisted across restarts"
        );
        let bus = InProcessBus::new();
        let registry = Registry::new(Arc::new(MemoryStore::new()), Arc::new(bus.clone()), clock);

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
