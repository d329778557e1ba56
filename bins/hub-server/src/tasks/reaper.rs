//! The lease reaper: expires the leases of instances that stopped heartbeating, on an interval.

use std::time::Duration;

use hub_core::Registry;
use tokio::sync::watch;

/// Runs lease expiry every `interval` until told to stop. A failed pass is
/// logged and retried at the next tick: expiry is idempotent.
pub(crate) async fn run(registry: Registry, interval: Duration, mut stop: watch::Receiver<bool>) {
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
