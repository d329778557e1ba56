//! The monitor's check of Dragonfly: a `PING` on a pooled connection.

use async_trait::async_trait;
use fred::prelude::ClientLike;
use hub_core::monitor::{Backend, Probe, ProbeFailure, ProbeReport};

use super::Dragonfly;

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
        if !self.client.is_connected() {
            return Err(ProbeFailure::new("no connection to Dragonfly is up"));
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
