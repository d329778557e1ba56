//! The metrics pruner: deletes heartbeat metrics (`health_metrics`) older than their retention, in PostgreSQL mode.

use std::sync::Arc;
use std::time::Duration;

use hub_store::PgStore;
use tokio::sync::watch;

/// Rows of `health_metrics` one pruning statement deletes: small enough to
/// keep each transaction short, large enough to keep up with a tenant that
/// heartbeats with metrics hundreds of times a second.
const METRICS_PRUNE_BATCH: u32 = 1000;

/// How often `health_metrics` is pruned.
pub(crate) const METRICS_PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Prunes heartbeat metrics older than `keep_days` days every `interval`,
/// starting at once, until told to stop. Only the replica holding the
/// pruner's advisory lock does the work; a failed pass is logged and
/// retried at the next tick.
pub(crate) async fn run(
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
