//! `Lazy`: a publisher connected on first use and again, with backoff, after a failed connect, so a bus that is down at start-up delays events instead of stopping the server or filling the log.

use hub_core::error_chain as chain;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hub_core::ports::EventSink;
use hub_core::{RegistryError, RegistryEvent};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::unavailable_msg;

type Connect<T> =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<T, RegistryError>> + Send>> + Send + Sync>;

/// First wait after a failed connect; it doubles per failure...
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// ...up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The value, or why there is none yet and when to try again.
struct Slot<T> {
    value: Option<Arc<T>>,
    /// Failed connects since the last success.
    failures: u32,
    /// No new attempt before this instant.
    retry_at: Option<Instant>,
    /// The last attempt's error, repeated to callers until the next attempt.
    last_error: String,
}

/// A value (a publisher) made by an async `connect` the first time it is
/// needed, and kept once made. While `connect` fails, attempts are spaced
/// by an exponential backoff ([`BACKOFF_MIN`] doubling up to
/// [`BACKOFF_MAX`]); a use in between fails at once with the last error.
/// The first failure is logged as a warning, the repeats at debug level, and
/// the success after failures at info: a broker that is down is one line in
/// the log, not one per attempt.
pub struct Lazy<T> {
    name: &'static str,
    connect: Connect<T>,
    backoff: (Duration, Duration),
    // A tokio mutex, held across `connect`: concurrent users wait for the
    // one attempt under way instead of each opening a connection.
    slot: Mutex<Slot<T>>,
}

impl<T> std::fmt::Debug for Lazy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("name", &self.name)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Lazy<T> {
    /// A value made by `connect` when first needed; `name` is for logs.
    pub fn new<F, Fut>(name: &'static str, connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, RegistryError>> + Send + 'static,
    {
        Self {
            name,
            connect: Box::new(move || Box::pin(connect())),
            backoff: (BACKOFF_MIN, BACKOFF_MAX),
            slot: Mutex::new(Slot {
                value: None,
                failures: 0,
                retry_at: None,
                last_error: String::new(),
            }),
        }
    }

    /// The same with another backoff (`min` doubling up to `max`).
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max.max(min));
        self
    }

    /// The value, connecting now if it is not there yet and the backoff
    /// after the last failed attempt has passed.
    ///
    /// Returns the `connect` error of an attempt made now, or `Unavailable`
    /// with the last attempt's error while waiting for the next one.
    pub async fn get(&self) -> Result<Arc<T>, RegistryError> {
        let mut slot = self.slot.lock().await;
        if let Some(value) = slot.value.as_ref() {
            return Ok(value.clone());
        }
        let now = Instant::now();
        if let Some(at) = slot.retry_at.filter(|at| now < *at) {
            return Err(unavailable_msg(format!(
                "{} not connected ({}); next attempt in {} ms",
                self.name,
                slot.last_error,
                (at - now).as_millis()
            )));
        }
        match (self.connect)().await {
            Ok(value) => {
                let value = Arc::new(value);
                if slot.failures > 0 {
                    tracing::info!(
                        bus = self.name,
                        failed_attempts = slot.failures,
                        "{} connected",
                        self.name
                    );
                } else {
                    tracing::info!(bus = self.name, "{} connected", self.name);
                }
                *slot = Slot {
                    value: Some(value.clone()),
                    failures: 0,
                    retry_at: None,
                    last_error: String::new(),
                };
                Ok(value)
            }
            // A setting that is wrong will not become right by waiting;
            // whoever asked reports it (start-up stops on it).
            Err(error @ RegistryError::Invalid(_)) => Err(error),
            Err(error) => {
                let (min, max) = self.backoff;
                let wait = min
                    .saturating_mul(2u32.saturating_pow(slot.failures.min(16)))
                    .min(max);
                slot.failures += 1;
                slot.retry_at = Some(Instant::now() + wait);
                slot.last_error = chain(&error);
                let retry_in_ms = wait.as_millis() as u64;
                if slot.failures == 1 {
                    tracing::warn!(bus = self.name, error = %slot.last_error, retry_in_ms, "{} not reachable; events wait for it, retrying quietly with backoff (up to {} s apart)", self.name, max.as_secs());
                } else {
                    tracing::debug!(bus = self.name, error = %slot.last_error, attempt = slot.failures, retry_in_ms, "{} still not reachable", self.name);
                }
                Err(error)
            }
        }
    }
}

#[async_trait]
impl<T: EventSink> EventSink for Lazy<T> {
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        self.get().await?.publish(events).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A `Lazy` whose first `fail` connects fail, counting attempts.
    fn failing(fail: u32) -> (Lazy<u32>, Arc<AtomicU32>) {
        let attempts = Arc::new(AtomicU32::new(0));
        let counter = attempts.clone();
        let lazy = Lazy::new("test", move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < fail {
                    Err(RegistryError::Unavailable {
                        component: "events",
                        source: "down".into(),
                    })
                } else {
                    Ok(n)
                }
            }
        });
        (lazy, attempts)
    }

    #[tokio::test(start_paused = true)]
    async fn connects_on_first_use_retries_failures_and_keeps_success() {
        let (lazy, attempts) = failing(1);
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            0,
            "nothing before first use"
        );
        assert!(lazy.get().await.is_err());
        tokio::time::advance(BACKOFF_MIN).await;
        assert_eq!(*lazy.get().await.unwrap(), 1);
        assert_eq!(*lazy.get().await.unwrap(), 1);
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_connects_are_spaced_by_a_growing_capped_backoff() {
        let (lazy, attempts) = failing(u32::MAX);
        let mut gaps = Vec::new();
        let started = Instant::now();
        let mut last = started;
        // Uses every 100 ms for 3 minutes: only the backoff's attempts connect.
        while Instant::now() - started < Duration::from_secs(180) {
            let before = attempts.load(Ordering::SeqCst);
            let error = lazy.get().await.unwrap_err();
            if attempts.load(Ordering::SeqCst) > before {
                gaps.push((Instant::now() - last).as_millis());
                last = Instant::now();
            } else {
                assert!(error.to_string().contains("unavailable"), "{error}");
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let attempts = attempts.load(Ordering::SeqCst);
        // 0.5, 1, 2, 4, 8, 16 s, then every 30 s: 13 attempts in 180 s,
        // where retrying at every use would have made 1800.
        assert!(
            (10..=14).contains(&attempts),
            "{attempts} attempts: {gaps:?}"
        );
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
        assert!(
            gaps.iter().all(|g| *g <= 30_100),
            "capped at 30 s: {gaps:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_settings_are_not_backed_off() {
        let attempts = Arc::new(AtomicU32::new(0));
        let counter = attempts.clone();
        let lazy: Lazy<u32> = Lazy::new("test", move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                Err(RegistryError::Invalid(hub_core::ValidationError::new(
                    "KAFKA_BROKERS",
                    "bad",
                )))
            }
        });
        assert!(matches!(
            lazy.get().await.unwrap_err(),
            RegistryError::Invalid(_)
        ));
        assert!(matches!(
            lazy.get().await.unwrap_err(),
            RegistryError::Invalid(_)
        ));
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }
}
