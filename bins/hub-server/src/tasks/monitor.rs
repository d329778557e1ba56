//! The infrastructure monitor: one loop per configured backend that checks it every interval, bounded by the timeout, records the outcome in the shared `Monitor` and logs each change of status once.

use std::sync::Arc;

use chrono::Utc;
use hub_core::monitor::{BackendStatus, Monitor, Outcome, Probe, ProbeFailure, Transition};
use tokio::sync::watch;
use tokio::time::Instant;

/// Checks `probe`'s backend every interval of `monitor` until told to stop.
/// One loop per backend, so a backend that hangs for the whole timeout
/// delays no other backend's check. The first check runs at once.
pub(crate) async fn run(monitor: Monitor, probe: Arc<dyn Probe>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(monitor.interval());
    // A check never takes longer than the timeout, at most the interval
    // (settings enforce it); `Delay` keeps checks an interval apart even
    // if the runtime stalled.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        tokio::select! {
            () = check_once(&monitor, probe.as_ref()) => {}
            _ = stop.changed() => break,
        }
    }
}

/// One check: the probe's round trip within the monitor's timeout, its
/// latency measured here, the outcome recorded, a change of status logged.
pub(crate) async fn check_once(monitor: &Monitor, probe: &dyn Probe) {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(monitor.timeout(), probe.check()).await {
        Ok(Ok(report)) => Outcome::Up {
            latency: started.elapsed(),
            report,
        },
        Ok(Err(error)) => Outcome::Down {
            latency: started.elapsed(),
            error,
        },
        Err(_) => Outcome::Down {
            latency: monitor.timeout(),
            error: ProbeFailure::new(format!(
                "no answer within {} ms (HUB_MONITOR_TIMEOUT_MS)",
                monitor.timeout().as_millis()
            )),
        },
    };
    if let Some(transition) = monitor.record(probe.backend(), outcome, Utc::now()) {
        log(&transition);
    }
}

/// Logs a change of status, once: a backend that stays down is one line.
fn log(transition: &Transition) {
    let backend = transition.backend.as_str();
    match (transition.from, transition.to) {
        (BackendStatus::Unknown, BackendStatus::Up) => {
            tracing::info!(backend, "monitor: {backend} is up");
        }
        (_, BackendStatus::Down) => tracing::warn!(
            backend,
            from = transition.from.as_str(),
            error = transition.error.as_deref().unwrap_or(""),
            "monitor: {backend} is down"
        ),
        (from, to) => tracing::info!(
            backend,
            from = from.as_str(),
            to = to.as_str(),
            "monitor: {backend} is {to} again"
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use async_trait::async_trait;
    use hub_core::monitor::{Backend, ProbeReport};

    use super::*;

    /// A probe that answers after `delay`, or fails at once.
    struct Fake {
        delay: Duration,
        fail: bool,
    }

    #[async_trait]
    impl Probe for Fake {
        fn backend(&self) -> Backend {
            Backend::Kafka
        }

        async fn check(&self) -> Result<ProbeReport, ProbeFailure> {
            if self.fail {
                return Err(ProbeFailure::new(
                    "refused by nats://user:secret@127.0.0.1:1",
                ));
            }
            tokio::time::sleep(self.delay).await;
            Ok(ProbeReport::default())
        }
    }

    fn status(monitor: &Monitor) -> (BackendStatus, Option<String>, Option<f64>) {
        let snapshot = monitor.snapshot();
        let kafka = snapshot.backend(Backend::Kafka).unwrap();
        (kafka.status, kafka.last_error.clone(), kafka.latency_ms)
    }

    #[tokio::test]
    async fn a_check_is_up_down_or_timed_out_with_its_latency() {
        let monitor = Monitor::new(
            &[Backend::Kafka],
            Duration::from_millis(500),
            Duration::from_millis(200),
            Utc::now(),
        );
        let fast = Fake {
            delay: Duration::from_millis(5),
            fail: false,
        };
        check_once(&monitor, &fast).await;
        let (s, error, latency) = status(&monitor);
        assert_eq!(s, BackendStatus::Up);
        assert_eq!(error, None);
        let latency = latency.unwrap();
        assert!((5.0..200.0).contains(&latency), "{latency}");

        let slow = Fake {
            delay: Duration::from_secs(5),
            fail: false,
        };
        let started = Instant::now();
        check_once(&monitor, &slow).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "bounded by the timeout"
        );
        let (s, error, latency) = status(&monitor);
        assert_eq!(s, BackendStatus::Down);
        assert_eq!(
            error.as_deref(),
            Some("no answer within 200 ms (HUB_MONITOR_TIMEOUT_MS)")
        );
        assert_eq!(latency, Some(200.0));

        let failing = Fake {
            delay: Duration::ZERO,
            fail: true,
        };
        check_once(&monitor, &failing).await;
        let (s, error, _) = status(&monitor);
        assert_eq!(s, BackendStatus::Down);
        assert_eq!(error.as_deref(), Some("refused by nats://127.0.0.1:1"));
    }
}
