//! `Application`: builds the backends and background tasks from settings (in `wiring` and `tasks`), binds the listener, runs until stopped, shuts down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use hub_core::Registry;
use hub_core::memory::{InProcessBus, SystemClock};
use hub_core::ports::Clock;
use hub_http::HttpDeps;

use crate::settings::Settings;
use crate::tasks::{Tasks, follower, metrics, reaper};
use crate::wiring::{
    auth, buses, dragonfly, events, http, leases, limits, monitor, store, tenants, watch,
};

/// A built, bound, not yet running server.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    registry: Registry,
    bus: InProcessBus,
    replica_id: String,
    watch: hub_core::watch::WatchHub,
    tasks: Tasks,
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
    watch: hub_core::watch::WatchHub,
}

impl StopHandle {
    /// Stops accepting connections, lets in-flight requests finish (up to the
    /// shutdown timeout), then lets `run_until_stopped` stop the background tasks.
    pub async fn stop(&self) {
        // Watch streams never end by themselves: they are closed first, so
        // that the graceful stop does not wait its whole timeout for them.
        self.watch.close();
        self.server.stop(true).await;
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
        let auth = auth::build(&settings.auth)?;
        let jwt = auth::jwt(&settings.tenancy)?;
        let replica_id = events::replica_id(&settings.events)?;
        // The source of truth first: a database that cannot be used is the
        // one thing start-up reports, before any broker is contacted.
        let buses = buses::configure(&settings.events, &replica_id)?;
        // One mass-expiry rule (its holds shared) for the store's own pass
        // and the lease cache's.
        let mass_expiry = settings.leases.mass_expiry();
        let stores = store::build(
            &settings.postgres,
            &clock,
            buses.sinks(),
            &replica_id,
            mass_expiry.clone(),
        )
        .await?;
        buses::first_attempts(&buses).await?;
        let dragonfly = dragonfly::connect(&settings.dragonfly)?;
        let limits = limits::build(&settings.rate_limits, dragonfly.as_ref())?;
        let bus = InProcessBus::new();
        let mut tasks = Tasks::new();
        let events = events::wire(
            &settings.events,
            &buses,
            stores.outbox.as_ref(),
            &bus,
            &mut tasks,
        );
        let watch = watch::build(&settings.watch, &stores, &mut tasks);
        // Every replica's changes reach this one's lookup cache and watch
        // hub from PostgreSQL itself, with or without NATS.
        store::listen(
            &stores,
            &settings.postgres,
            &replica_id,
            &watch.hub,
            &mut tasks,
        );
        // Replicas follow each other: another replica's changes drop this
        // one's cached lookups and reach its in-process watchers.
        if stores.outbox.is_some()
            && let Some(nats) = &buses.nats
        {
            tasks.spawn(
                "nats follower",
                follower::run(
                    nats.clone(),
                    replica_id.clone(),
                    stores.cache.clone(),
                    bus.clone(),
                    tasks.stop_signal(),
                ),
            );
        }
        if let Some(pg) = &stores.pg
            && settings.postgres.metrics_retention_days > 0
        {
            tasks.spawn(
                "metrics pruner",
                metrics::run(
                    pg.clone(),
                    settings.postgres.metrics_retention_days,
                    metrics::METRICS_PRUNE_INTERVAL,
                    tasks.stop_signal(),
                ),
            );
        }
        // Tenants, keys and usage: the registry counts into the meter the
        // HTTP layer counts requests into; both are flushed to the directory.
        let tenancy = tenants::build(&stores);
        let registry = leases::wire(
            Registry::new(
                stores.registry.clone(),
                watch::sink(events.sink, &watch),
                clock,
            )
            .with_usage(tenancy.usage.clone()),
            &stores,
            dragonfly.as_ref(),
            &settings.leases,
            mass_expiry,
            &mut tasks,
        );
        let monitor = monitor::start(
            &settings.monitor,
            &stores,
            dragonfly.as_ref(),
            &buses,
            &mut tasks,
        );
        let http_tenancy = crate::wiring::tenancy::build(
            &settings.tenancy,
            tenancy.directory.clone(),
            tenancy.usage.clone(),
            &mut tasks,
        )?;
        let (addr, server) = http::serve(
            &settings.server,
            HttpDeps {
                registry: registry.clone(),
                auth,
                events: events.status,
                limits,
                monitor,
                body_timeout: Duration::from_secs(settings.server.body_timeout_secs),
                metrics: Arc::new(hub_http::metrics::RequestMetrics::new(
                    settings.server.request_metrics,
                    settings.server.metrics_max_tenants,
                )?),
                tenancy: http_tenancy,
                jwt,
                watch: watch.deps.clone(),
            },
        )?;
        tasks.spawn(
            "lease reaper",
            reaper::run(
                registry.clone(),
                Duration::from_millis(settings.leases.reap_interval_ms),
                tasks.stop_signal(),
            ),
        );
        tenants::spawn(&tenancy, &registry, &settings.usage, &mut tasks);
        Ok(Self {
            addr,
            server,
            registry,
            bus,
            replica_id,
            watch: watch.hub,
            tasks,
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

    /// The watch hub (streams and blocking queries).
    pub fn watch(&self) -> &hub_core::watch::WatchHub {
        &self.watch
    }

    /// This replica's name in the `hub-origin` header of its events.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// A handle to stop the server from another task.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            server: self.server.handle(),
            watch: self.watch.clone(),
        }
    }

    /// Serves until stopped through a [`StopHandle`], then stops the
    /// background tasks and waits for them.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        self.tasks.stop().await;
        tracing::info!("stopped");
        served
    }
}
