//! `Lazy`: a publisher connected on first use and again after a failed connect, so a bus that is down at start-up delays events instead of stopping the server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use hub_core::ports::EventSink;
use hub_core::{RegistryError, RegistryEvent};
use tokio::sync::Mutex;

type Connect<T> =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<T, RegistryError>> + Send>> + Send + Sync>;

/// A value (a publisher) made by an async `connect` the first time it is
/// needed, and kept once made. While `connect` fails, every use tries again
/// (each attempt is bounded by the publisher's own connect timeout).
pub struct Lazy<T> {
    name: &'static str,
    connect: Connect<T>,
    slot: Mutex<Option<Arc<T>>>,
}

impl<T> std::fmt::Debug for Lazy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("name", &self.name)
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
            slot: Mutex::new(None),
        }
    }

    /// The value, connecting now if it is not there yet.
    pub async fn get(&self) -> Result<Arc<T>, RegistryError> {
        let mut slot = self.slot.lock().await;
        if let Some(value) = slot.as_ref() {
            return Ok(value.clone());
        }
        let value = Arc::new((self.connect)().await?);
        tracing::info!(bus = self.name, "connected");
        *slot = Some(value.clone());
        Ok(value)
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

    #[tokio::test]
    async fn connects_on_first_use_retries_failures_and_keeps_success() {
        let attempts = Arc::new(AtomicU32::new(0));
        let counter = attempts.clone();
        let lazy = Lazy::new("test", move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(RegistryError::Unavailable {
                        component: "events",
                        source: "down".into(),
                    })
                } else {
                    Ok(n)
                }
            }
        });
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            0,
            "nothing before first use"
        );
        assert!(lazy.get().await.is_err());
        assert_eq!(*lazy.get().await.unwrap(), 1);
        assert_eq!(*lazy.get().await.unwrap(), 1);
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }
}
