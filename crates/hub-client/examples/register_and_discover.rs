//! Example: a service named `orders` registers itself (kept alive until it stops) and discovers the `billing` service of its tenant.
//!
//! Run it against a hub with a `billing` instance registered:
//!
//! ```text
//! HUB_URL=http://127.0.0.1:7000 HUB_API_KEY=my-key HUB_TENANT=tenant1 \
//!     cargo run -p hub-client --example register_and_discover
//! ```
//!
//! The hub-server test suite runs [`run`] itself against a real server
//! (`bins/hub-server/tests/it/client.rs` includes this file), so the
//! example cannot rot without a test failing.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use hub_client::{HubClient, HubError, Instance, RegistrationSpec};

/// What the example did: the instance it registered and the one it found.
#[derive(Debug)]
pub struct Outcome {
    pub registered: Instance,
    /// `None` if no billing instance showed up in time.
    pub billing: Option<Instance>,
}

/// Registers `orders`, finds a `billing` instance (waiting up to `wait`
/// for one), then deregisters `orders` again.
pub async fn run(
    hub_url: &str,
    api_key: &str,
    tenant: &str,
    wait: Duration,
) -> Result<Outcome, HubError> {
    let hub = HubClient::builder(hub_url)
        .api_key(api_key)
        .tenant(tenant)
        .build()?;

    // 1. Register: heartbeats run in the background until `shutdown`
    //    (or until the guard is dropped).
    let me = hub
        .register(
            RegistrationSpec::new("orders", "127.0.0.1", 8080)
                .instance_id("orders-1")
                .ttl_seconds(15),
        )
        .await?;

    // 2. Discover: answers come from a local cache the watch stream keeps
    //    current; only `passing` instances, round-robin.
    let billing = hub.discover("billing").pick_within(wait).await;

    // 3. Deregister before returning, whatever discovery found.
    let registered = me.instance();
    me.shutdown().await?;
    Ok(Outcome {
        registered,
        billing,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), HubError> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let outcome = run(
        &var("HUB_URL", "http://127.0.0.1:7000"),
        &var("HUB_API_KEY", ""),
        &var("HUB_TENANT", "system"),
        Duration::from_secs(10),
    )
    .await?;
    let billing = outcome
        .billing
        .map_or_else(|| "not found".to_owned(), |b| format!("at {}", b.url));
    println!(
        "registered {} at {}; billing is {billing}",
        outcome.registered.instance_id, outcome.registered.url
    );
    Ok(())
}
