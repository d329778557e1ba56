//! The key-use flush: writes the sampled `last_used_at` of keys created through the admin API, once per key per interval, and once more at stop.

use std::sync::Arc;
use std::time::Duration;

use hub_http::Tenancy;
use tokio::sync::watch;

async fn flush(tenancy: &Tenancy) {
    match tenancy.flush_key_use().await {
        Ok(_) => {}
        // A sample: the next flush writes newer times, so nothing is retried.
        Err(error) => tracing::warn!(%error, "writing the last use of API keys failed"),
    }
}

/// Flushes every `interval` until told to stop, then once more so that a
/// graceful stop loses no sample.
pub(crate) async fn run(
    tenancy: Arc<Tenancy>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate and there is nothing to write yet.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => flush(&tenancy).await,
            _ = stop.changed() => break,
        }
    }
    flush(&tenancy).await;
}
