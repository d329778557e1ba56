//! The metrics sampler: writes the latest heartbeat metrics kept in Dragonfly to PostgreSQL, at most once per instance per `HUB_METRICS_SAMPLE_SECS`.

use std::time::Duration;

use hub_core::{Registry, error_chain};
use tokio::sync::watch;

/// Samples every `every` until told to stop. Every replica runs it; the
/// lease cache hands each instance's metrics to one caller per `every`, so
/// the replicas together still write at most one sample per instance.
pub(crate) async fn run(registry: Registry, every: Duration, mut stop: watch::Receiver<bool>) {
    let period = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::seconds(60));
    // Looking a few times per period keeps each instance's samples close to
    // one per period (the cache refuses any sooner).
    let mut ticker = tokio::time::interval((every / 4).max(Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: skip it, nothing has been reported yet.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        match registry.sample_metrics(period).await {
            Ok(0) => {}
            Ok(written) => tracing::debug!(written, "heartbeat metrics sampled"),
            Err(error) => tracing::warn!(
                cause = %error_chain(&error),
                "heartbeat metrics not sampled; the next pass takes them"
            ),
        }
    }
}
