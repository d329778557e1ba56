//! hub-client: a Rust client of Central Hub, so that registering, staying alive and discovering others is three lines of a service's code.
//!
//! ```no_run
//! # async fn run() -> Result<(), hub_client::HubError> {
//! use hub_client::{HubClient, RegistrationSpec};
//!
//! let hub = HubClient::builder("http://127.0.0.1:7000")
//!     .api_key("my-key")
//!     .tenant("tenant1")
//!     .build()?;
//! // Registered now, kept alive by heartbeats, deregistered on drop.
//! let _me = hub.register(RegistrationSpec::new("orders", "10.0.0.5", 8080)).await?;
//! // Answered from a local cache the watch stream keeps current.
//! let billing = hub.discover("billing");
//! billing.ready().await;
//! if let Some(instance) = billing.pick() {
//!     let _url = instance.url; // call it directly
//! }
//! # Ok(())
//! # }
//! ```
//!
//! **Invariant:** no server code in the dependency tree (no actix-web,
//! hub-http, hub-store or hub-bus); the wire types are this crate's own and
//! the tests check them against a real hub.

mod backoff;
mod client;
mod discovery;
mod error;
mod guard;
mod sse;
mod types;
mod watch;

pub use client::{HubClient, HubClientBuilder};
pub use discovery::{DiscoverOptions, Discovery, Pick, Source};
pub use error::HubError;
pub use guard::RegistrationGuard;
pub use types::{
    Block, HealthStatus, HeartbeatMetrics, HeartbeatRequest, Instance, InstanceList, Lease,
    ListQuery, RegistrationSpec, ServiceInstances,
};
pub use watch::{ChangeKind, RegistryChange, WatchEvent, WatchFilter, WatchStream};
