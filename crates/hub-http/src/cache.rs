//! `ServiceBodyCache`: the serialized answer of a service lookup, reused while the service is unchanged.
//!
//! Lookups dominate a registry's traffic and their cost is mostly JSON
//! serialization (measured with `perf` under `cargo xtask bench`: about a fifth
//! of all CPU). The answer is a pure function of the tenant's revision and, per
//! instance, of its revision, last heartbeat and status: every change to an
//! instance's content takes a new revision (the store's contract) except a
//! plain lease renewal, which moves `last_heartbeat`. That tuple is the cache
//! key, compared exactly, so a stale answer cannot be served.

use std::cell::RefCell;
use std::collections::HashMap;

use actix_web::web::Bytes;
use hub_core::{HealthStatus, Instance, Revision, ServiceName, TenantId};

/// Entries kept per worker before the cache is emptied and refilled. 4096
/// hot services of a few KiB each bound it to a few tens of MiB per worker;
/// emptying it whole keeps the code simple and the cost of a refill is one
/// serialization per service.
const CAPACITY: usize = 4096;

/// What an answer was made from.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    revision: Revision,
    instances: Vec<(Revision, i64, HealthStatus)>,
}

impl Stamp {
    fn of(revision: Revision, instances: &[Instance]) -> Self {
        Self {
            revision,
            instances: instances
                .iter()
                .map(|i| {
                    let beat = i.last_heartbeat();
                    let nanos =
                        beat.timestamp() * 1_000_000_000 + i64::from(beat.timestamp_subsec_nanos());
                    (i.revision(), nanos, i.status())
                })
                .collect(),
        }
    }
}

/// A per-worker cache (actix builds the app once per worker thread, so no
/// lock is needed: `RefCell`).
#[derive(Debug, Default)]
pub struct ServiceBodyCache {
    entries: RefCell<HashMap<(TenantId, ServiceName), (Stamp, Bytes)>>,
}

impl ServiceBodyCache {
    /// The cached body for this answer, or a fresh one from `render` (then kept).
    pub fn get_or_render<E>(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        revision: Revision,
        instances: &[Instance],
        render: impl FnOnce() -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        let stamp = Stamp::of(revision, instances);
        let key = (tenant.clone(), service.clone());
        if let Some((cached, body)) = self.entries.borrow().get(&key)
            && *cached == stamp
        {
            return Ok(body.clone());
        }
        let body = render()?;
        let mut entries = self.entries.borrow_mut();
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(key, (stamp, body.clone()));
        Ok(body)
    }
}
