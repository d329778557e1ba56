//! The monitor's checks of the buses: NATS (connection state and a flush round trip) and Kafka (a metadata request), through the same lazily connected publishers the events use.

use std::sync::Arc;

use async_trait::async_trait;
use hub_core::monitor::{Backend, Probe, ProbeFailure, ProbeReport};

use crate::kafka::KafkaPublisher;
use crate::lazy::Lazy;
use crate::nats::NatsPublisher;

/// Checks NATS through the events' publisher. A publisher not connected yet
/// is down with the reason of its last attempt; the check does not open a
/// second connection, so what it reports is what the events see.
#[derive(Debug, Clone)]
pub struct NatsProbe {
    publisher: Arc<Lazy<NatsPublisher>>,
}

impl NatsProbe {
    /// A probe of the events' NATS publisher.
    pub fn new(publisher: Arc<Lazy<NatsPublisher>>) -> Self {
        Self { publisher }
    }
}

#[async_trait]
impl Probe for NatsProbe {
    fn backend(&self) -> Backend {
        Backend::Nats
    }

    async fn check(&self) -> Result<ProbeReport, ProbeFailure> {
        self.publisher.get().await?.check().await?;
        Ok(ProbeReport::default())
    }
}

/// Checks Kafka through the events' publisher (see [`NatsProbe`]).
#[derive(Debug, Clone)]
pub struct KafkaProbe {
    publisher: Arc<Lazy<KafkaPublisher>>,
}

impl KafkaProbe {
    /// A probe of the events' Kafka publisher.
    pub fn new(publisher: Arc<Lazy<KafkaPublisher>>) -> Self {
        Self { publisher }
    }
}

#[async_trait]
impl Probe for KafkaProbe {
    fn backend(&self) -> Backend {
        Backend::Kafka
    }

    async fn check(&self) -> Result<ProbeReport, ProbeFailure> {
        self.publisher.get().await?.check().await?;
        Ok(ProbeReport::default())
    }
}
