//! Usage per tenant: the flush that drains the in-memory `UsageMeter` into the tenant directory every `HUB_USAGE_FLUSH_SECS` (and once more at shutdown), and the pruning of admin audit rows older than `HUB_AUDIT_RETENTION_DAYS`.

use std::sync::Arc;
use std::time::Duration;

use hub_core::tenancy::{TenantDirectory, UsageMeter};
use hub_core::{Registry, error_chain};
use tokio::sync::watch;

/// How often old audit rows are looked for: they are kept for days, so an
/// hour late is nothing, and a pass that finds nothing costs one query.
pub(crate) const AUDIT_PRUNE_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Flushes every `every` until told to stop, then once more, so that a
/// graceful stop loses nothing counted until then (the HTTP server has
/// finished its requests before the tasks are stopped). A crash loses at
/// most one interval. Every replica runs it for what it counted itself: the
/// stored rows add up.
pub(crate) async fn run_flush(
    registry: Registry,
    meter: Arc<UsageMeter>,
    directory: Arc<dyn TenantDirectory>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: nothing was counted yet.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        flush(&registry, &meter, directory.as_ref()).await;
    }
    flush(&registry, &meter, directory.as_ref()).await;
}

/// One flush: notes the instance count of every tenant with pending usage
/// (the day's peak), drains the meter and adds it to the directory. What
/// the directory could not store goes back into the meter for the next
/// flush; what it stored is not retried (no double counting). Returns how
/// many (tenant, day) rows were stored.
pub(crate) async fn flush(
    registry: &Registry,
    meter: &UsageMeter,
    directory: &dyn TenantDirectory,
) -> usize {
    registry.note_instance_peaks(&meter.tenants()).await;
    let deltas = meter.drain();
    if deltas.is_empty() {
        return 0;
    }
    let count = deltas.len();
    match directory.add_usage(deltas).await {
        Ok(()) => {
            tracing::debug!(rows = count, "usage flushed");
            count
        }
        Err(not_stored) => {
            let kept = not_stored.deltas.len();
            tracing::warn!(
                cause = %error_chain(&not_stored.error),
                kept,
                "usage not stored for some tenants; kept in memory for the next flush"
            );
            meter.restore(not_stored.deltas);
            count - kept
        }
    }
}

/// Prunes audit rows older than `retention_days` every `every` (the first
/// pass at start) until told to stop. Concurrent passes of several replicas
/// delete by age only and cannot harm each other.
pub(crate) async fn run_audit_pruner(
    directory: Arc<dyn TenantDirectory>,
    retention_days: u32,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
        match directory.prune_audit(cutoff).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, retention_days, "old admin audit rows pruned"),
            Err(error) => tracing::warn!(
                cause = %error_chain(&error),
                "admin audit not pruned; the next pass tries again"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use hub_core::memory::{InProcessBus, ManualClock, MemoryStore};
    use hub_core::ports::Clock;
    use hub_core::tenancy::MemoryTenants;
    use hub_core::{ChangeContext, Registration, RegistrationInput, TenantId};
    use hub_store::{PgConfig, PgStore, PgTenants};

    fn registration(instance: &str) -> Registration {
        Registration::try_from(RegistrationInput {
            service_name: "svc".into(),
            instance_id: Some(instance.into()),
            host: "10.0.0.1".into(),
            port: 8080,
            ..Default::default()
        })
        .unwrap()
    }

    /// A directory whose PostgreSQL cannot be reached (nothing listens on
    /// port 1): every call fails as unavailable.
    fn unreachable() -> PgTenants {
        let config = PgConfig {
            host: "127.0.0.1".into(),
            port: 1,
            dbname: "none".into(),
            user: "none".into(),
            password: None,
            pool_size: 1,
            statement_timeout: Duration::from_millis(500),
            tenant_max_connections: None,
            group_commit: Default::default(),
        };
        PgTenants::new(&PgStore::new(&config).unwrap())
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_counts_for_the_next() {
        let meter = Arc::new(UsageMeter::new());
        let clock = Arc::new(ManualClock::default());
        let registry = Registry::new(
            Arc::new(MemoryStore::new()),
            Arc::new(InProcessBus::new()),
            clock.clone(),
        )
        .with_usage(meter.clone());
        let t = TenantId::parse("usage-t").unwrap();
        let ctx = ChangeContext::default();
        for i in ["a", "b", "c"] {
            registry.register(&t, registration(i), &ctx).await.unwrap();
        }
        registry
            .register(&t, registration("a"), &ctx)
            .await
            .unwrap();
        let svc = hub_core::ServiceName::parse("svc").unwrap();
        let beat = hub_core::Heartbeat::default();
        registry
            .heartbeat(
                &t,
                &svc,
                Some(&hub_core::InstanceId::parse("b").unwrap()),
                &beat,
                &ctx,
            )
            .await
            .unwrap();
        registry
            .deregister(
                &t,
                &svc,
                Some(&hub_core::InstanceId::parse("c").unwrap()),
                &ctx,
            )
            .await
            .unwrap();

        assert_eq!(flush(&registry, &meter, &unreachable()).await, 0);
        let directory = MemoryTenants::new();
        assert_eq!(flush(&registry, &meter, &directory).await, 1);
        let today = clock.now().date_naive();
        let days = directory.usage(&t, today, today).await.unwrap();
        let counts = days[0].counts;
        assert_eq!(counts.registrations, 4);
        assert_eq!(counts.heartbeats, 1);
        // Three registered, one updated, one deregistered.
        assert_eq!(counts.events_published, 5);
        // The peak is sampled when usage is flushed (and when instance
        // counts are read for the dashboard): two instances are left.
        assert_eq!(counts.peak_instances, 2);
        // Nothing is flushed twice.
        assert_eq!(flush(&registry, &meter, &directory).await, 0);
        assert_eq!(directory.usage(&t, today, today).await.unwrap(), days);
        // The reaper's events count too: both leases run out.
        clock.advance(chrono::Duration::seconds(31));
        let report = registry.expire_leases().await.unwrap();
        assert_eq!(report.expired, 2);
        assert_eq!(flush(&registry, &meter, &directory).await, 1);
        let day = clock.now().date_naive();
        let after = directory.usage(&t, day, day).await.unwrap();
        let expected = if day == today { 7 } else { 2 };
        assert_eq!(after[0].counts.events_published, expected);
    }
}
