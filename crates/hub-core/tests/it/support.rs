//! Helpers: a registry on in-memory adapters with a manual clock, and registration builders.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use hub_core::memory::{InProcessBus, ManualClock, MemoryStore};
use hub_core::{Registration, RegistrationInput, Registry, ServiceName, TenantId};

pub struct World {
    pub registry: Registry,
    pub clock: Arc<ManualClock>,
    pub bus: InProcessBus,
}

pub fn world() -> World {
    let clock = Arc::new(ManualClock::new(
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap(),
    ));
    let bus = InProcessBus::new();
    let registry = Registry::new(
        Arc::new(MemoryStore::new()),
        Arc::new(bus.clone()),
        clock.clone(),
    );
    World {
        registry,
        clock,
        bus,
    }
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

pub fn service(name: &str) -> ServiceName {
    ServiceName::parse(name).unwrap()
}

pub fn registration(service: &str, instance: &str, ttl: i64) -> Registration {
    Registration::try_from(RegistrationInput {
        service_name: service.into(),
        instance_id: Some(instance.into()),
        host: "10.0.0.1".into(),
        port: 8080,
        ttl_seconds: Some(ttl),
        ..Default::default()
    })
    .unwrap()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
