//! `InProcessBus`: the embedded `EventSink`, a broadcast channel that watchers subscribe to.

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::domain::event::RegistryEvent;
use crate::error::RegistryError;
use crate::ports::EventSink;

/// Events buffered per subscriber before a slow one starts losing the oldest.
///
/// 4096 covers a burst of several seconds of registrations at benchmark rates.
/// A subscriber that falls further behind is told how many events it missed
/// (`RecvError::Lagged`) and should re-read the registry, whose revision tells
/// it where it stands. Publishers never wait for subscribers.
pub const BUS_CAPACITY: usize = 4096;

/// An in-process event bus. Best effort by design: with no subscriber the
/// events go nowhere, and a lagging subscriber loses the oldest ones.
#[derive(Debug, Clone)]
pub struct InProcessBus {
    sender: broadcast::Sender<RegistryEvent>,
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessBus {
    /// A bus with [`BUS_CAPACITY`].
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(BUS_CAPACITY);
        Self { sender }
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.sender.subscribe()
    }

    /// Hands one event to the current subscribers, without waiting (for
    /// events learnt from elsewhere, such as another replica's on NATS).
    pub fn send(&self, event: RegistryEvent) {
        // Fails only when nobody subscribes, which is not an error here.
        let _ = self.sender.send(event);
    }
}

#[async_trait]
impl EventSink for InProcessBus {
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        for event in events {
            self.send(event.clone());
        }
        Ok(())
    }
}
