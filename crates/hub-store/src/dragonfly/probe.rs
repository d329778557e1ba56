//! The monitor's check of Dragonfly: a `PING` on a pooled connection.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::ClientLike;
use hub_core::monitor::{Backend, Probe, ProbeFailure, ProbeReport};

use super::Dragonfly;

/// How long a check waits for a connection that is not up.
const CONNECT_GRACE: Duration = Duration::from_secs(1);

/// Sends `PING` and expects `PONG`. The client fails fast while no
/// connection is up, so a Dragonfly that went away is reported at once, and
/// one that hangs is bounded by the monitor's timeout.
#[derive(Debug, Clone)]
pub struct DragonflyProbe {
    client: Dragonfly,
}

impl DragonflyProbe {
    /// A probe over `client`'s connections.
    pub fn new(client: Dragonfly) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Probe for DragonflyProbe {
    fn backend(&self) -> Backend {
        Backend::Dragonfly
    }

    async fn check(&self) -> Result<ProbeReport, ProbeFailure> {
        // Connecting (just after start) or reconnecting: wait for a
        // connection a little, so the first check after start does not
        // report a Dragonfly that is being connected to as down. The
        // monitor's own timeout may end the wait first.
        let until = tokio::time::Instant::now() + CONNECT_GRACE;
        while !self.client.is_connected() {
            if tokio::time::Instant::now() >= until {
                return Err(ProbeFailure::new("no connection to Dragonfly is up"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let answer: String = self
            .client
            .client()
            .ping(None)
            .await
            .map_err(|e| ProbeFailure::new(format!("PING failed: {e}")))?;
        if answer.eq_ignore_ascii_case("PONG") {
            Ok(ProbeReport::default())
        } else {
            Err(ProbeFailure::new(format!(
                "PING answered {answer:?} instead of PONG"
            )))
        }
    }
}
