//! Limits on open watches: per tenant and per API key, counted in the hub and given back when a permit drops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::ids::TenantId;

use super::{Inner, lock};

/// Open watches, by tenant and by key fingerprint. One mutex for both maps,
/// so that a refusal by the second limit never leaves the first counted.
#[derive(Debug, Default)]
pub(super) struct Counts {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    tenants: HashMap<TenantId, u32>,
    keys: HashMap<String, u32>,
    open: u64,
}

impl Counts {
    pub(super) fn open(&self) -> u64 {
        lock(&self.state).open
    }
}

/// Which limit refused a watch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchLimit {
    /// The tenant has this many watches open already.
    #[error("the tenant has {0} watches open, its limit")]
    Tenant(u32),
    /// The API key has this many watches open already.
    #[error("this API key has {0} watches open, its limit")]
    Key(u32),
}

/// One open watch, counted until dropped.
#[derive(Debug)]
pub struct WatchPermit {
    inner: Arc<Inner>,
    tenant: TenantId,
    key: Option<String>,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.limits.state);
        state.open = state.open.saturating_sub(1);
        release(&mut state.tenants, &self.tenant);
        if let Some(key) = &self.key {
            release(&mut state.keys, key);
        }
    }
}

fn release<K, Q>(map: &mut HashMap<Q, u32>, key: &K)
where
    K: std::hash::Hash + Eq + ?Sized,
    Q: std::hash::Hash + Eq + std::borrow::Borrow<K>,
{
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

pub(super) fn acquire(
    inner: &Arc<Inner>,
    tenant: &TenantId,
    key: Option<&str>,
    max_tenant: u32,
    max_key: u32,
) -> Result<WatchPermit, WatchLimit> {
    let mut state = lock(&inner.limits.state);
    let for_tenant = state.tenants.get(tenant).copied().unwrap_or(0);
    if for_tenant >= max_tenant {
        return Err(WatchLimit::Tenant(max_tenant));
    }
    if let Some(key) = key {
        let for_key = state.keys.get(key).copied().unwrap_or(0);
        if for_key >= max_key {
            return Err(WatchLimit::Key(max_key));
        }
        state.keys.insert(key.to_owned(), for_key + 1);
    }
    state.tenants.insert(tenant.clone(), for_tenant + 1);
    state.open += 1;
    Ok(WatchPermit {
        inner: inner.clone(),
        tenant: tenant.clone(),
        key: key.map(str::to_owned),
    })
}
