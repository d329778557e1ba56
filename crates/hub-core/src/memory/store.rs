//! `MemoryStore`: the embedded `RegistryStore`, safe under many tenants and many writers.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::context::ChangeContext;
use crate::domain::ids::{InstanceId, ServiceName, TenantId};
use crate::domain::instance::{HealthStatus, Instance, LeaseState, Revision};
use crate::domain::query::{Heartbeat, ListQuery, PageBuilder};
use crate::domain::registration::Registration;
use crate::domain::summary::{ServiceSummary, StatusCounts};
use crate::error::RegistryError;
use crate::lease::{JudgedLease, LeaseStore, MassExpiry, MassExpiryHold, MetricSample, ReaperTurn};
use crate::ports::{
    LeaseChange, ListPage, RegistryStore, Removed, Renewed, ServiceSnapshot, Upserted,
};

type Instances = BTreeMap<InstanceId, Instance>;

/// One tenant's registry. Ordered maps give the list order (service name,
/// then instance id) and cheap cursor seeks.
#[derive(Debug, Default)]
struct TenantState {
    services: BTreeMap<ServiceName, Instances>,
    revision: Revision,
    /// The latest heartbeat metrics reported per service (no history),
    /// for the dashboard. Dropped with the service's last instance.
    metrics: BTreeMap<ServiceName, MetricSample>,
}

impl TenantState {
    fn bump(&mut self) -> Revision {
        self.revision = self.revision.next();
        self.revision
    }

    fn remove_service_if_empty(&mut self, service: &ServiceName) {
        if self.services.get(service).is_some_and(BTreeMap::is_empty) {
            self.services.remove(service);
            self.metrics.remove(service);
        }
    }
}

/// An in-memory registry store. It keeps no audit trail (the change context
/// is not recorded) and no history of heartbeat metrics: both need durable
/// storage. It keeps the latest metrics reported per service, for the
/// dashboard.
///
/// Locking: an outer `RwLock` maps tenants to their own `RwLock`ed state. The
/// outer lock is taken for writing only the first time a tenant appears, so
/// tenants do not contend with each other; within a tenant, reads share and
/// writes exclude. Locks are `std` locks held for a few map operations and
/// never across an `.await`. A poisoned lock (a panic while holding it) is
/// recovered: every mutation leaves the maps consistent before it can panic.
/// A tenant's state (and so its revision counter) is kept when its last
/// instance goes, so its revisions never go backwards.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tenants: RwLock<HashMap<TenantId, Arc<RwLock<TenantState>>>>,
    /// The mass-expiry rule of [`RegistryStore::expire_leases`].
    policy: MassExpiry,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same store, holding removals in its lease expiry by `policy`
    /// (default: [`MassExpiry::default`]).
    #[must_use]
    pub fn with_mass_expiry(mut self, policy: MassExpiry) -> Self {
        self.policy = policy;
        self
    }

    fn existing(&self, tenant: &TenantId) -> Option<Arc<RwLock<TenantState>>> {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }

    fn tenant(&self, tenant: &TenantId) -> Arc<RwLock<TenantState>> {
        if let Some(state) = self.existing(tenant) {
            return state;
        }
        self.tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.clone())
            .or_default()
            .clone()
    }

    fn all_tenants(&self) -> Vec<(TenantId, Arc<RwLock<TenantState>>)> {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(tenant, state)| (tenant.clone(), state.clone()))
            .collect()
    }
}

#[async_trait]
impl RegistryStore for MemoryStore {
    async fn upsert(
        &self,
        tenant: &TenantId,
        registration: Registration,
        now: DateTime<Utc>,
        _context: &ChangeContext,
        max_instances: Option<u32>,
    ) -> Result<Upserted, RegistryError> {
        let state = self.tenant(tenant);
        let mut state = state.write().unwrap_or_else(PoisonError::into_inner);
        // Checked under the tenant's write lock, which every change of the
        // tenant holds: counting and inserting cannot interleave with
        // another registration, so concurrent ones never overshoot.
        if let Some(max) = max_instances {
            let exists = state
                .services
                .get(registration.service_name())
                .is_some_and(|m| m.contains_key(registration.instance_id()));
            let held: usize = state.services.values().map(|m| m.len()).sum();
            if !exists && held >= max as usize {
                return Err(RegistryError::QuotaExceeded {
                    limit: "max_instances",
                    max: u64::from(max),
                });
            }
        }
        let revision = state.bump();
        let service = registration.service_name().clone();
        let instances = state.services.entry(service).or_default();
        let previous = instances.get(registration.instance_id());
        let created = previous.is_none();
        let registered_at = previous.map(Instance::registered_at);
        let instance =
            Instance::registered(tenant.clone(), registration, now, registered_at, revision);
        instances.insert(instance.instance_id().clone(), instance.clone());
        Ok(Upserted { instance, created })
    }

    async fn service(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
    ) -> Result<ServiceSnapshot, RegistryError> {
        let Some(state) = self.existing(tenant) else {
            return Ok(ServiceSnapshot {
                instances: Vec::new(),
                revision: Revision::ZERO,
                skipped: 0,
            });
        };
        let state = state.read().unwrap_or_else(PoisonError::into_inner);
        Ok(ServiceSnapshot {
            instances: state
                .services
                .get(service)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            revision: state.revision,
            skipped: 0,
        })
    }

    async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<ListPage, RegistryError> {
        let Some(state) = self.existing(tenant) else {
            return Ok(ListPage {
                instances: Vec::new(),
                next: None,
                revision: Revision::ZERO,
                skipped: 0,
            });
        };
        let state = state.read().unwrap_or_else(PoisonError::into_inner);
        let services: Box<dyn Iterator<Item = (&ServiceName, &Instances)>> =
            match (query.service_name(), query.after()) {
                (Some(name), _) => Box::new(state.services.get_key_value(name).into_iter()),
                (None, Some(cursor)) => Box::new(state.services.range::<ServiceName, _>((
                    Bound::Included(cursor.service_name()),
                    Bound::Unbounded,
                ))),
                (None, None) => Box::new(state.services.iter()),
            };
        let after = query.after();
        let matching = services
            .flat_map(|(name, instances)| {
                let start = match after {
                    Some(c) if c.service_name() == name => Bound::Excluded(c.instance_id()),
                    Some(c) if c.service_name() > name => return None.into_iter().flatten(),
                    _ => Bound::Unbounded,
                };
                Some(
                    instances
                        .range::<InstanceId, _>((start, Bound::Unbounded))
                        .map(|(_, i)| i),
                )
                .into_iter()
                .flatten()
            })
            .filter(|i| query.status().is_none_or(|s| i.status() == s))
            .filter(|i| i.has_all_tags(query.tags()));
        let mut page = PageBuilder::new(query);
        for instance in matching {
            if !page.offer(instance.clone()) {
                break;
            }
        }
        let (instances, next) = page.finish();
        Ok(ListPage {
            instances,
            next,
            revision: state.revision,
            skipped: 0,
        })
    }

    async fn remove(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: Option<&InstanceId>,
        _context: &ChangeContext,
    ) -> Result<Removed, RegistryError> {
        let Some(state) = self.existing(tenant) else {
            return Ok(Removed::default());
        };
        let mut state = state.write().unwrap_or_else(PoisonError::into_inner);
        let removed: Vec<Instance> = match (state.services.get_mut(service), instance) {
            (None, _) => Vec::new(),
            (Some(instances), Some(id)) => instances.remove(id).into_iter().collect(),
            (Some(instances), None) => std::mem::take(instances).into_values().collect(),
        };
        state.remove_service_if_empty(service);
        Ok(Removed {
            instances: removed
                .into_iter()
                .map(|i| {
                    let revision = state.bump();
                    i.with_revision(revision)
                })
                .collect(),
            undecodable: 0,
        })
    }

    async fn renew(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: &InstanceId,
        heartbeat: &Heartbeat,
        now: DateTime<Utc>,
        _context: &ChangeContext,
    ) -> Result<Renewed, RegistryError> {
        // Embedded mode keeps no metric history and no audit trail (only
        // the latest metrics per service); the PostgreSQL store records
        // every `heartbeat.metrics()` and the context.
        let not_found =
            || RegistryError::not_found(format!("instance '{instance}' of service '{service}'"));
        let state = self.existing(tenant).ok_or_else(not_found)?;
        let mut state = state.write().unwrap_or_else(PoisonError::into_inner);
        let current = state
            .services
            .get(service)
            .and_then(|m| m.get(instance))
            .ok_or_else(not_found)?;
        let previous_status = current.status();
        let mut renewed = current.renewed(now, heartbeat.status());
        if previous_status != heartbeat.status() {
            let revision = state.bump();
            renewed = renewed.with_revision(revision);
        }
        if let Some(slot) = state
            .services
            .get_mut(service)
            .and_then(|m| m.get_mut(instance))
        {
            *slot = renewed.clone();
        }
        if let Some(metrics) = heartbeat.metrics() {
            state.metrics.insert(
                service.clone(),
                MetricSample {
                    service: service.clone(),
                    instance: instance.clone(),
                    status: heartbeat.status(),
                    metrics: *metrics,
                    recorded_at: now,
                },
            );
        }
        Ok(Renewed {
            instance: renewed,
            previous_status,
        })
    }

    async fn expire_leases(&self, now: DateTime<Utc>) -> Result<Vec<LeaseChange>, RegistryError> {
        let mut changes = Vec::new();
        for (tenant, state) in self.all_tenants() {
            // Judging and changing happen under one write lock, so a heartbeat
            // cannot slip in between (the port's "heartbeat wins" rule).
            let mut state = state.write().unwrap_or_else(PoisonError::into_inner);
            let mut total = 0usize;
            let mut run_out = 0usize;
            let mut to_mark = Vec::new();
            let mut dead = Vec::new();
            for (service, instances) in &state.services {
                for (id, instance) in instances {
                    total += 1;
                    let key = (service.clone(), id.clone());
                    match instance.lease_state(now) {
                        LeaseState::Alive => {}
                        LeaseState::Expired => {
                            run_out += 1;
                            if instance.status() != HealthStatus::Critical {
                                to_mark.push(key);
                            }
                        }
                        LeaseState::Dead => {
                            run_out += 1;
                            dead.push((key, instance));
                        }
                    }
                }
            }
            // Mass expiry: the dead stay (critical) until the grace passes.
            let held = self.policy.decide(&tenant, run_out, total, now);
            let mut to_remove = Vec::new();
            let mut kept = 0usize;
            for (key, instance) in dead {
                if self.policy.removes(
                    held,
                    instance.lease_expires_at(),
                    instance.deregister_at(),
                    now,
                ) {
                    to_remove.push(key);
                } else {
                    kept += 1;
                    if instance.status() != HealthStatus::Critical {
                        to_mark.push(key);
                    }
                }
            }
            to_mark.sort();
            for (service, id) in to_mark {
                let revision = state.bump();
                if let Some(slot) = state
                    .services
                    .get_mut(&service)
                    .and_then(|m| m.get_mut(&id))
                {
                    let previous_status = slot.status();
                    *slot = slot
                        .with_status(HealthStatus::Critical)
                        .with_revision(revision);
                    changes.push(LeaseChange::Expired {
                        instance: slot.clone(),
                        previous_status,
                    });
                }
            }
            for (service, id) in to_remove {
                let removed = state.services.get_mut(&service).and_then(|m| m.remove(&id));
                state.remove_service_if_empty(&service);
                if let Some(instance) = removed {
                    let revision = state.bump();
                    changes.push(LeaseChange::Removed(instance.with_revision(revision)));
                }
            }
            if held {
                changes.push(LeaseChange::Held(MassExpiryHold {
                    tenant,
                    expired: run_out,
                    total,
                    held: kept,
                }));
            }
        }
        Ok(changes)
    }

    async fn check(&self) -> Result<(), RegistryError> {
        Ok(())
    }

    async fn tenant_ids(&self) -> Result<Vec<TenantId>, RegistryError> {
        let mut tenants: Vec<TenantId> = self
            .all_tenants()
            .into_iter()
            .map(|(tenant, _)| tenant)
            .collect();
        tenants.sort();
        Ok(tenants)
    }

    async fn status_counts(&self, tenant: &TenantId) -> Result<StatusCounts, RegistryError> {
        let mut counts = StatusCounts::default();
        if let Some(state) = self.existing(tenant) {
            let state = state.read().unwrap_or_else(PoisonError::into_inner);
            for instance in state.services.values().flat_map(BTreeMap::values) {
                counts.add(instance.status(), 1);
            }
        }
        Ok(counts)
    }

    async fn service_summaries(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<ServiceSummary>, RegistryError> {
        let Some(state) = self.existing(tenant) else {
            return Ok(Vec::new());
        };
        let state = state.read().unwrap_or_else(PoisonError::into_inner);
        Ok(state
            .services
            .iter()
            .filter(|(_, instances)| !instances.is_empty())
            .map(|(service, instances)| {
                let mut counts = StatusCounts::default();
                for instance in instances.values() {
                    counts.add(instance.status(), 1);
                }
                ServiceSummary {
                    service_name: service.clone(),
                    counts,
                    newest_heartbeat: instances.values().map(Instance::last_heartbeat).max(),
                    latest_metrics: state.metrics.get(service).cloned(),
                }
            })
            .collect())
    }
}

/// The store side of a lease cache, in memory. One process and no sharing:
/// the reaper's turn is always free, and heartbeat metrics are accepted and
/// dropped (embedded mode keeps no history, as [`RegistryStore::renew`]
/// keeps none here either).
#[async_trait]
impl LeaseStore for MemoryStore {
    async fn tenants(&self) -> Result<Vec<TenantId>, RegistryError> {
        Ok(self
            .all_tenants()
            .into_iter()
            .map(|(tenant, _)| tenant)
            .collect())
    }

    async fn reaper_turn(&self) -> Result<Option<ReaperTurn>, RegistryError> {
        Ok(Some(Box::new(())))
    }

    async fn instances(&self, tenant: &TenantId) -> Result<Vec<Instance>, RegistryError> {
        let Some(state) = self.existing(tenant) else {
            return Ok(Vec::new());
        };
        let state = state.read().unwrap_or_else(PoisonError::into_inner);
        Ok(state
            .services
            .values()
            .flat_map(|instances| instances.values().cloned())
            .collect())
    }

    async fn expire_judged(
        &self,
        tenant: &TenantId,
        judged: &[JudgedLease],
        _now: DateTime<Utc>,
        _context: &ChangeContext,
    ) -> Result<Vec<LeaseChange>, RegistryError> {
        let Some(state) = self.existing(tenant) else {
            return Ok(Vec::new());
        };
        // In key order, as the PostgreSQL store gives revisions.
        let mut judged: Vec<&JudgedLease> = judged.iter().collect();
        judged.sort_by(|a, b| {
            (&a.lease.service, &a.lease.instance).cmp(&(&b.lease.service, &b.lease.instance))
        });
        let mut state = state.write().unwrap_or_else(PoisonError::into_inner);
        let mut changes = Vec::new();
        for j in judged {
            let lease = &j.lease;
            let Some(current) = state
                .services
                .get(&lease.service)
                .and_then(|m| m.get(&lease.instance))
            else {
                continue;
            };
            // A lease renewed in the store since the judgement wins.
            if current.lease_expires_at() > lease.expires_at {
                continue;
            }
            if j.remove {
                let removed = state
                    .services
                    .get_mut(&lease.service)
                    .and_then(|m| m.remove(&lease.instance));
                state.remove_service_if_empty(&lease.service);
                if let Some(instance) = removed {
                    let revision = state.bump();
                    changes.push(LeaseChange::Removed(instance.with_revision(revision)));
                }
            } else if current.status() != HealthStatus::Critical {
                let previous_status = current.status();
                let marked = Instance::restore(
                    current.tenant_id().clone(),
                    current.registration().clone(),
                    HealthStatus::Critical,
                    current.registered_at(),
                    lease.last_heartbeat,
                    lease.expires_at,
                    current.revision(),
                );
                let revision = state.bump();
                let marked = marked.with_revision(revision);
                if let Some(slot) = state
                    .services
                    .get_mut(&lease.service)
                    .and_then(|m| m.get_mut(&lease.instance))
                {
                    *slot = marked.clone();
                }
                changes.push(LeaseChange::Expired {
                    instance: marked,
                    previous_status,
                });
            }
        }
        Ok(changes)
    }

    /// The memory store holds only readable instances: nothing to do.
    async fn expire_unreadable(
        &self,
        _tenant: &TenantId,
        _now: DateTime<Utc>,
        _context: &ChangeContext,
    ) -> Result<usize, RegistryError> {
        Ok(0)
    }

    async fn extend_leases(&self, floor: DateTime<Utc>) -> Result<u64, RegistryError> {
        let mut moved = 0u64;
        for (_, state) in self.all_tenants() {
            let mut state = state.write().unwrap_or_else(PoisonError::into_inner);
            for instance in state.services.values_mut().flat_map(BTreeMap::values_mut) {
                let at_least = floor
                    + chrono::Duration::seconds(i64::from(instance.registration().ttl_seconds()));
                if instance.lease_expires_at() < at_least {
                    // A lease move is no registry change: same revision.
                    *instance = Instance::restore(
                        instance.tenant_id().clone(),
                        instance.registration().clone(),
                        instance.status(),
                        instance.registered_at(),
                        instance.last_heartbeat(),
                        at_least,
                        instance.revision(),
                    );
                    moved += 1;
                }
            }
        }
        Ok(moved)
    }

    async fn record_metrics(
        &self,
        _tenant: &TenantId,
        _samples: &[MetricSample],
    ) -> Result<(), RegistryError> {
        // Embedded mode keeps no metric history.
        Ok(())
    }
}
