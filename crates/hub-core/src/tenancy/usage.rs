//! Usage per tenant per day, counted in memory ([`UsageMeter`]) and flushed periodically through [`super::TenantDirectory::add_usage`].
//!
//! Counting is a short mutex hold per event; nothing is written per request.
//! A crash loses at most one flush interval; a graceful stop flushes.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, Utc};

use crate::TenantId;

/// The class of an API request, for usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestClass {
    /// Lookups, lists, watches, dashboard.
    Read,
    /// Register, heartbeat, deregister.
    Write,
    /// The admin API.
    Admin,
}

/// Counts of one tenant on one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts {
    /// Read requests.
    pub requests_read: u64,
    /// Write requests.
    pub requests_write: u64,
    /// Admin requests.
    pub requests_admin: u64,
    /// Successful registrations (new and updated).
    pub registrations: u64,
    /// Successful heartbeats.
    pub heartbeats: u64,
    /// Registry events published for the tenant.
    pub events_published: u64,
    /// Most instances seen at once (a maximum, not a sum).
    pub peak_instances: u64,
}

impl UsageCounts {
    /// Adds `other` (sums; the peak is the greater).
    pub fn add(&mut self, other: &UsageCounts) {
        self.requests_read += other.requests_read;
        self.requests_write += other.requests_write;
        self.requests_admin += other.requests_admin;
        self.registrations += other.registrations;
        self.heartbeats += other.heartbeats;
        self.events_published += other.events_published;
        self.peak_instances = self.peak_instances.max(other.peak_instances);
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == UsageCounts::default()
    }
}

/// Counted usage of one tenant on one day, to be added to the stored day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// Whose.
    pub tenant: TenantId,
    /// Which day (UTC).
    pub day: NaiveDate,
    /// What was counted.
    pub counts: UsageCounts,
}

/// Stored usage of one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDay {
    /// The day (UTC).
    pub day: NaiveDate,
    /// Its counts.
    pub counts: UsageCounts,
}

/// What a flush could not store: the deltas of the tenants whose
/// transaction failed (every other tenant's were stored, and must not be
/// added again) and the first failure. The flush puts the deltas back in
/// the meter ([`UsageMeter::restore`]) to retry them next time.
#[derive(Debug)]
pub struct UsageNotStored {
    /// The deltas not stored.
    pub deltas: Vec<UsageDelta>,
    /// Why (the first tenant's failure).
    pub error: crate::RegistryError,
}

/// In-memory usage counters, drained by the flush task.
#[derive(Debug, Default)]
pub struct UsageMeter {
    counts: Mutex<HashMap<(TenantId, NaiveDate), UsageCounts>>,
}

impl UsageMeter {
    /// An empty meter.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(&self, tenant: &TenantId, at: DateTime<Utc>, f: impl FnOnce(&mut UsageCounts)) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match counts.get_mut(&(tenant.clone(), at.date_naive())) {
            Some(c) => f(c),
            None => f(counts.entry((tenant.clone(), at.date_naive())).or_default()),
        }
    }

    /// Counts one request of `class`.
    pub fn request(&self, tenant: &TenantId, class: RequestClass, at: DateTime<Utc>) {
        self.with(tenant, at, |c| match class {
            RequestClass::Read => c.requests_read += 1,
            RequestClass::Write => c.requests_write += 1,
            RequestClass::Admin => c.requests_admin += 1,
        });
    }

    /// Counts one successful registration.
    pub fn registration(&self, tenant: &TenantId, at: DateTime<Utc>) {
        self.with(tenant, at, |c| c.registrations += 1);
    }

    /// Counts one successful heartbeat.
    pub fn heartbeat(&self, tenant: &TenantId, at: DateTime<Utc>) {
        self.with(tenant, at, |c| c.heartbeats += 1);
    }

    /// Counts `n` published events.
    pub fn events(&self, tenant: &TenantId, n: u64, at: DateTime<Utc>) {
        self.with(tenant, at, |c| c.events_published += n);
    }

    /// Notes the tenant's instance count (the day keeps the greatest).
    pub fn instances(&self, tenant: &TenantId, count: u64, at: DateTime<Utc>) {
        self.with(tenant, at, |c| {
            c.peak_instances = c.peak_instances.max(count)
        });
    }

    /// The tenants with usage counted and not yet flushed (each once).
    pub fn tenants(&self) -> Vec<TenantId> {
        let mut tenants: Vec<TenantId> = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .map(|(tenant, _)| tenant.clone())
            .collect();
        tenants.sort();
        tenants.dedup();
        tenants
    }

    /// Takes everything counted so far, leaving the meter empty.
    pub fn drain(&self) -> Vec<UsageDelta> {
        let taken = std::mem::take(
            &mut *self
                .counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        taken
            .into_iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|((tenant, day), counts)| UsageDelta {
                tenant,
                day,
                counts,
            })
            .collect()
    }

    /// Puts back deltas a failed flush could not store, so the next flush
    /// retries them (nothing counted is lost while the store is down).
    pub fn restore(&self, deltas: Vec<UsageDelta>) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for d in deltas {
            counts.entry((d.tenant, d.day)).or_default().add(&d.counts);
        }
    }

    /// What is counted and not yet flushed for `tenant` (the dashboard adds
    /// it to the stored day so its figures are current).
    pub fn pending(&self, tenant: &TenantId, day: NaiveDate) -> UsageCounts {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(tenant.clone(), day))
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_drain_and_restore() {
        let meter = UsageMeter::new();
        let t = TenantId::parse("t1").unwrap();
        let now = Utc::now();
        for _ in 0..3 {
            meter.request(&t, RequestClass::Read, now);
        }
        meter.registration(&t, now);
        meter.instances(&t, 5, now);
        meter.instances(&t, 2, now);
        meter.events(&t, 4, now);
        let pending = meter.pending(&t, now.date_naive());
        assert_eq!(pending.requests_read, 3);
        assert_eq!(pending.peak_instances, 5);
        let drained = meter.drain();
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].counts.events_published, 4);
        assert!(meter.drain().is_empty());
        meter.restore(drained);
        meter.heartbeat(&t, now);
        let again = meter.drain();
        assert_eq!(again[0].counts.heartbeats, 1);
        assert_eq!(again[0].counts.registrations, 1);
    }
}
