//! The watch hub: fed by the registry's events in embedded mode, by PostgreSQL's change notifications and history in PostgreSQL mode; handed to the HTTP layer with its keep-alive.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hub_core::ports::EventSink;
use hub_core::watch::{ChangeLog, WatchHub};
use hub_core::{RegistryError, RegistryEvent};
use hub_http::routes::watch::WatchDeps;

use super::store::Stores;
use crate::settings::WatchSettings;
use crate::tasks::{Tasks, watch_feed};

/// How often an embedded hub looks for revisions that never arrived (see
/// `hub_core::watch::GAP_GRACE`): a quarter of the grace, so that a gap
/// holds watchers up for at most 1.25 s.
const TICK: Duration = Duration::from_millis(250);

/// The hub and what the HTTP layer gets of it.
pub(crate) struct Watch {
    pub(crate) hub: WatchHub,
    pub(crate) deps: WatchDeps,
}

/// Builds the hub for the store's mode and starts what feeds it: in
/// PostgreSQL mode the feed task (which reads `coordination_history` when
/// notified), in embedded mode the tick that skips revisions never published.
pub(crate) fn build(settings: &WatchSettings, stores: &Stores, tasks: &mut Tasks) -> Watch {
    let config = settings.config();
    let hub = match &stores.pg {
        Some(pg) => {
            let log: Arc<dyn ChangeLog> = pg.clone();
            let hub = WatchHub::with_log(config, log);
            tasks.spawn(
                "watch feed",
                watch_feed::run(hub.clone(), tasks.stop_signal()),
            );
            hub
        }
        None => {
            let hub = WatchHub::embedded(config);
            let ticking = hub.clone();
            let mut stop = tasks.stop_signal();
            tasks.spawn("watch gap tick", async move {
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tokio::select! {
                        _ = tick.tick() => ticking.tick(),
                        _ = stop.changed() => return,
                    }
                }
            });
            hub
        }
    };
    Watch {
        deps: WatchDeps {
            hub: hub.clone(),
            keepalive: Duration::from_secs(settings.keepalive_secs),
            max_wait: Duration::from_secs(settings.max_wait_secs),
        },
        hub,
    }
}

/// The registry's event sink with the embedded hub in front: the hub gets
/// every event of this process as it is published. In PostgreSQL mode the
/// sink is left as it is: the hub reads the database instead, which sees
/// every replica's changes with the ids the buses carry.
pub(crate) fn sink(events: Arc<dyn EventSink>, watch: &Watch) -> Arc<dyn EventSink> {
    if watch.hub.reads_store() {
        return events;
    }
    Arc::new(WithWatch {
        hub: watch.hub.clone(),
        events,
    })
}

struct WithWatch {
    hub: WatchHub,
    events: Arc<dyn EventSink>,
}

#[async_trait]
impl EventSink for WithWatch {
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        self.hub.publish(events);
        self.events.publish(events).await
    }
}
