//! hub-core: the domain of Central Hub (types, registry use cases, ports) and in-memory adapters.
//!
//! **Invariant:** this crate performs no network I/O and knows nothing of HTTP,
//! SQL, Redis, NATS or Kafka. Adapters for those implement the traits in
//! [`ports`] from other crates.
//!
//! ```
//! # tokio_test_block_on(async {
//! use std::sync::Arc;
//! use hub_core::{ChangeContext, Registry, Registration, RegistrationInput, TenantId, ServiceName};
//! use hub_core::memory::{MemoryStore, InProcessBus, SystemClock};
//!
//! let registry = Registry::new(
//!     Arc::new(MemoryStore::new()),
//!     Arc::new(InProcessBus::new()),
//!     Arc::new(SystemClock),
//! );
//! let tenant = TenantId::parse("tenant1")?;
//! let registration = Registration::try_from(RegistrationInput {
//!     service_name: "billing".into(),
//!     host: "10.0.0.7".into(),
//!     port: 8080,
//!     ..Default::default()
//! })?;
//! registry.register(&tenant, registration, &ChangeContext::default()).await?;
//! let found = registry.get(&tenant, &ServiceName::parse("billing")?).await?;
//! assert_eq!(found.instances[0].url(), "http://10.0.0.7:8080");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # });
//! # fn tokio_test_block_on<F: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>>(f: F) {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f).unwrap()
//! # }
//! ```

pub mod cache;
pub mod counters;
pub mod domain;
pub mod error;
pub mod lease;
mod lease_sync;
pub mod memory;
pub mod monitor;
pub mod ports;
pub mod ratelimit;
pub mod registry;
pub mod tenancy;
pub mod watch;

pub use counters::{ChangeCounters, ChangeCounts, ChangeKind};
pub use domain::context::ChangeContext;
pub use domain::event::{EventKind, RegistryEvent};
pub use domain::ids::{InstanceId, ServiceName, TenantId};
pub use domain::instance::{HealthStatus, Instance, LeaseState, Revision};
pub use domain::outbox::{
    Backlog, Delivery, OutboxEntry, Pending, Sink, SinkStatus, Sinks, Undecodable,
};
pub use domain::query::{
    DEFAULT_LIST_LIMIT, Heartbeat, HeartbeatMetrics, ListCursor, ListQuery, MAX_LIST_BYTES,
    MAX_LIST_LIMIT, PageBuilder, listed_size,
};
pub use domain::registration::{Host, Protocol, Registration, RegistrationInput};
pub use domain::summary::{ServiceSummary, StatusCounts};
pub use error::{RegistryError, ValidationError, error_chain};
pub use lease::{
    CacheRenewal, CachedLease, DueLeases, JudgedLease, LeaseCache, LeaseStore, MassExpiry,
    MassExpiryHold, MemoryLeases, MetricSample, ReaperTurn,
};
pub use registry::{ExpiryReport, LeaseStatus, Registry, ServiceInstances};
