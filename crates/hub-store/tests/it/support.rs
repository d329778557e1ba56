//! Helpers: a registry on a fresh PostgreSQL database.

use std::sync::Arc;

use hub_core::memory::{InProcessBus, ManualClock};
use hub_core::{Registration, RegistrationInput, Registry, TenantId};
use hub_store::PgStore;
use hub_store::testing::TestDb;

pub struct World {
    pub db: TestDb,
    pub registry: Registry,
    pub clock: Arc<ManualClock>,
}

/// `None` only outside CI when PostgreSQL is unreachable (said on stderr).
pub async fn world() -> Option<World> {
    let db = TestDb::create().await?;
    let store = Arc::new(PgStore::new(&db.app).unwrap());
    let clock = Arc::new(ManualClock::default());
    let registry = Registry::new(store, Arc::new(InProcessBus::new()), clock.clone());
    Some(World {
        db,
        registry,
        clock,
    })
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

pub fn registration(service: &str, instance: &str) -> Registration {
    Registration::try_from(RegistrationInput {
        service_name: service.into(),
        instance_id: Some(instance.into()),
        host: "10.0.0.1".into(),
        port: 8080,
        tags: vec!["blue".into()],
        metadata: Some(serde_json::json!({"zone": "a"})),
        ttl_seconds: Some(10),
        ..Default::default()
    })
    .unwrap()
}
