//! The PostgreSQL watch feed: reads each notified tenant's new changes from `coordination_history` and hands them to the watch hub, so that every replica's watchers see every change, in order, without relying on a message bus.

use std::time::Duration;

use futures_util::StreamExt;
use hub_core::error_chain;
use hub_core::watch::WatchHub;
use tokio::sync::watch;

/// Events read per query.
const READ: u32 = 1000;
/// Tenants read at once: enough to keep up with many tenants changing
/// together, few enough to leave the pool to requests.
const CONCURRENT_TENANTS: usize = 4;
/// A safety net: every followed tenant is read this often even without a
/// notification, so that a notification lost with the listener's connection
/// delays an event by at most this long (it reconnects and marks every
/// tenant too).
pub(crate) const SWEEP: Duration = Duration::from_secs(5);

/// Runs until `stop`: takes the tenants marked since the last round and
/// reads each one's missing changes. A failed read marks the tenant again
/// for the next sweep.
pub(crate) async fn run(hub: WatchHub, mut stop: watch::Receiver<bool>) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let tenants = tokio::select! {
            tenants = hub.dirty() => tenants,
            _ = sweep.tick() => {
                hub.everything_changed();
                continue;
            }
            _ = stop.changed() => return,
        };
        futures_util::stream::iter(tenants)
            .for_each_concurrent(CONCURRENT_TENANTS, |tenant| {
                let hub = hub.clone();
                async move {
                    if let Err(error) = hub.catch_up(&tenant, READ).await {
                        tracing::warn!(
                            tenant = %tenant,
                            error = error_chain(&error),
                            "watch feed: reading the tenant's changes failed; retried at the next sweep"
                        );
                    }
                }
            })
            .await;
    }
}
