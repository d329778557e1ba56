//! The infrastructure monitor: a probe per configured backend (PostgreSQL, Dragonfly, NATS, Kafka), the shared state the dashboard reads, and one monitor loop per probe.

use std::sync::Arc;

use chrono::Utc;
use hub_bus::{KafkaProbe, NatsProbe};
use hub_core::monitor::{Monitor, Probe};
use hub_store::PgProbe;
use hub_store::dragonfly::{Dragonfly, DragonflyProbe};

use super::buses::Buses;
use super::store::Stores;
use crate::settings::MonitorSettings;
use crate::tasks::{Tasks, monitor};

/// The monitor of every configured backend, its loops started. Backends
/// not configured are reported as `not_configured` and never checked.
pub(crate) fn start(
    settings: &MonitorSettings,
    stores: &Stores,
    dragonfly: Option<&Dragonfly>,
    buses: &Buses,
    tasks: &mut Tasks,
) -> Monitor {
    let mut probes: Vec<Arc<dyn Probe>> = Vec::new();
    if let Some(pg) = &stores.pg {
        probes.push(Arc::new(PgProbe::new(pg.as_ref().clone())));
    }
    if let Some(dragonfly) = dragonfly {
        probes.push(Arc::new(DragonflyProbe::new(dragonfly.clone())));
    }
    if let Some(nats) = &buses.nats {
        probes.push(Arc::new(NatsProbe::new(nats.clone())));
    }
    if let Some(kafka) = &buses.kafka {
        probes.push(Arc::new(KafkaProbe::new(kafka.clone())));
    }
    let configured: Vec<_> = probes.iter().map(|p| p.backend()).collect();
    let handle = Monitor::new(
        &configured,
        settings.interval(),
        settings.timeout(),
        Utc::now(),
    );
    for probe in probes {
        let name = match probe.backend() {
            hub_core::monitor::Backend::Postgres => "monitor: postgres",
            hub_core::monitor::Backend::Dragonfly => "monitor: dragonfly",
            hub_core::monitor::Backend::Nats => "monitor: nats",
            hub_core::monitor::Backend::Kafka => "monitor: kafka",
        };
        tasks.spawn(
            name,
            monitor::run(handle.clone(), probe, tasks.stop_signal()),
        );
    }
    tracing::info!(
        backends = ?configured.iter().map(|b| b.as_str()).collect::<Vec<_>>(),
        interval_ms = settings.interval_ms,
        timeout_ms = settings.timeout_ms,
        "infrastructure monitor started"
    );
    handle
}
