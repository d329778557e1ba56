//! `ChangeCounters`: how many registry changes of each kind this process made, per tenant, since it started.
//!
//! The [`Registry`](crate::Registry) counts here, because it is the one place
//! that knows the kind of every change once it is stored (a registration that
//! created an instance or updated one, a status change from a heartbeat or
//! from a lease running out). Counting happens after the store acknowledged
//! the change, so a refused or failed change is never counted.
//!
//! Changes are far rarer than lookups and each already costs a store write,
//! so a read-mostly lock over the per-tenant map is enough: a change of a
//! tenant seen before takes the read lock and bumps an atomic; only a
//! tenant's first change takes the write lock. The map holds one small entry
//! per tenant that changed something (it is not capped here; exporters cap
//! the labels they emit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::domain::ids::TenantId;

/// One kind of counted change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// An instance registered for the first time (created).
    Registration,
    /// A registration that replaced an existing instance.
    Update,
    /// An instance removed by a deregistration.
    Deregistration,
    /// An instance's lease ran out and the reaper turned it critical.
    ExpiredToCritical,
    /// An instance removed by the reaper after staying expired.
    ExpiredRemoved,
    /// A heartbeat changed an instance's status.
    StatusChange,
}

/// The counts of one tenant (or summed over tenants), since this process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    /// Instances created by a registration.
    pub registrations: u64,
    /// Registrations that replaced an existing instance.
    pub updates: u64,
    /// Instances removed by deregistrations.
    pub deregistrations: u64,
    /// Leases that ran out (instance turned critical by the reaper).
    pub expired_to_critical: u64,
    /// Instances the reaper removed after they stayed expired.
    pub expired_removed: u64,
    /// Status changes reported by heartbeats.
    pub status_changes: u64,
}

impl ChangeCounts {
    /// Adds `other` to these counts (for totals across tenants).
    pub fn add(&mut self, other: &ChangeCounts) {
        self.registrations += other.registrations;
        self.updates += other.updates;
        self.deregistrations += other.deregistrations;
        self.expired_to_critical += other.expired_to_critical;
        self.expired_removed += other.expired_removed;
        self.status_changes += other.status_changes;
    }
}

#[derive(Debug, Default)]
struct TenantCounters([AtomicU64; 6]);

impl TenantCounters {
    fn slot(kind: ChangeKind) -> usize {
        match kind {
            ChangeKind::Registration => 0,
            ChangeKind::Update => 1,
            ChangeKind::Deregistration => 2,
            ChangeKind::ExpiredToCritical => 3,
            ChangeKind::ExpiredRemoved => 4,
            ChangeKind::StatusChange => 5,
        }
    }

    fn counts(&self) -> ChangeCounts {
        let get = |i: usize| self.0[i].load(Ordering::Relaxed);
        ChangeCounts {
            registrations: get(0),
            updates: get(1),
            deregistrations: get(2),
            expired_to_critical: get(3),
            expired_removed: get(4),
            status_changes: get(5),
        }
    }
}

/// Change counts per tenant since this process started. Cheap to share.
#[derive(Debug, Default)]
pub struct ChangeCounters {
    tenants: RwLock<HashMap<TenantId, Arc<TenantCounters>>>,
}

impl ChangeCounters {
    /// Counts `n` changes of `kind` for `tenant`.
    pub fn count(&self, tenant: &TenantId, kind: ChangeKind, n: u64) {
        if n == 0 {
            return;
        }
        let slot = TenantCounters::slot(kind);
        let known = self
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .cloned();
        let counters = match known {
            Some(counters) => counters,
            None => self
                .tenants
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(tenant.clone())
                .or_default()
                .clone(),
        };
        counters.0[slot].fetch_add(n, Ordering::Relaxed);
    }

    /// The counts of one tenant (zero if it changed nothing).
    pub fn of(&self, tenant: &TenantId) -> ChangeCounts {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .map(|c| c.counts())
            .unwrap_or_default()
    }

    /// Every tenant's counts, ordered by tenant id.
    pub fn all(&self) -> Vec<(TenantId, ChangeCounts)> {
        let mut all: Vec<(TenantId, ChangeCounts)> = self
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(t, c)| (t.clone(), c.counts()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The sum over every tenant.
    pub fn total(&self) -> ChangeCounts {
        let mut total = ChangeCounts::default();
        for (_, counts) in self.all() {
            total.add(&counts);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_tenant_and_in_total() {
        let counters = ChangeCounters::default();
        let a = TenantId::parse("a").unwrap();
        let b = TenantId::parse("b").unwrap();
        counters.count(&a, ChangeKind::Registration, 2);
        counters.count(&a, ChangeKind::ExpiredRemoved, 1);
        counters.count(&b, ChangeKind::Registration, 1);
        counters.count(&TenantId::parse("c").unwrap(), ChangeKind::StatusChange, 0);
        assert_eq!(counters.of(&a).registrations, 2);
        assert_eq!(counters.of(&a).expired_removed, 1);
        assert_eq!(counters.of(&b).registrations, 1);
        assert_eq!(counters.total().registrations, 3);
        assert_eq!(
            counters.of(&TenantId::parse("c").unwrap()),
            ChangeCounts::default()
        );
        assert_eq!(counters.all().len(), 2, "a zero count adds no tenant");
    }
}
