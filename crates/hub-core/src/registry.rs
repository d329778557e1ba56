//! `Registry`: the use cases (register, list, get, heartbeat, deregister, expire leases) over the ports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Duration;

use crate::counters::{ChangeCounters, ChangeCounts, ChangeKind};
use crate::domain::context::ChangeContext;
use crate::domain::event::{EventKind, RegistryEvent};
use crate::domain::ids::{InstanceId, ServiceName, TenantId};
use crate::domain::instance::{Instance, Revision};
use crate::domain::query::{Heartbeat, ListQuery};
use crate::domain::registration::Registration;
use crate::domain::summary::{ServiceSummary, StatusCounts};
use crate::error::RegistryError;
use crate::lease::{LeaseCache, LeaseStore, MassExpiry, MassExpiryHold};
use crate::lease_sync::CachedLeases;
use crate::ports::{Clock, EventSink, LeaseChange, ListPage, RegistryStore, Upserted};
use crate::tenancy::UsageMeter;

/// The instances of one service, as answered by [`Registry::get`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInstances {
    /// The service asked for.
    pub service_name: ServiceName,
    /// Its instances, ordered by instance id; empty only when every stored
    /// instance of the service was skipped.
    pub instances: Vec<Instance>,
    /// The tenant's revision at the time of reading.
    pub revision: Revision,
    /// Stored instances left out because they cannot be read (see
    /// [`ServiceSnapshot::skipped`](crate::ports::ServiceSnapshot)).
    pub skipped: usize,
}

/// What one reaper pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpiryReport {
    /// Instances that turned critical.
    pub expired: usize,
    /// Instances removed after staying expired.
    pub removed: usize,
    /// Tenants whose removals mass-expiry protection held this pass.
    pub held: usize,
}

/// Where heartbeat leases live, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// `"store"` (no lease cache) or `"cache"` (Dragonfly).
    pub backend: &'static str,
    /// With a cache: whether this process's last call to it succeeded.
    pub cache_reachable: Option<bool>,
    /// With a cache: heartbeats this process sent to the store because the
    /// cache failed.
    pub fallbacks: u64,
}

/// The registry use cases. Cheap to clone; hand a clone to each handler.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn RegistryStore>,
    events: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
    leases: Option<Arc<CachedLeases>>,
    /// Tenants whose removals this process's reaper holds (mass expiry).
    holds: Arc<Mutex<HashMap<TenantId, MassExpiryHold>>>,
    /// Changes made through this process, per tenant (dashboard, /metrics).
    changes: Arc<ChangeCounters>,
    /// Usage per tenant per day, when the server meters it (flushed to the
    /// tenant directory by the server's usage task).
    usage: Option<Arc<UsageMeter>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry over the given adapters.
    pub fn new(
        store: Arc<dyn RegistryStore>,
        events: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            events,
            clock,
            leases: None,
            holds: Arc::default(),
            changes: Arc::default(),
            usage: None,
        }
    }

    /// The same registry counting usage in `meter`: successful
    /// registrations and heartbeats, every event it emits (the reaper's
    /// included), and the instance counts it reads (for the daily peak).
    #[must_use]
    pub fn with_usage(mut self, meter: Arc<UsageMeter>) -> Self {
        self.usage = Some(meter);
        self
    }

    /// The usage meter, if usage is counted.
    pub fn usage(&self) -> Option<&Arc<UsageMeter>> {
        self.usage.as_ref()
    }

    /// Reads the instance count of each tenant in `tenants` and notes it in
    /// the usage meter (the day keeps the greatest). The usage task calls it
    /// for the tenants that were active since its last flush before each
    /// flush; a tenant that fails is logged and skipped. Nothing without a
    /// meter.
    pub async fn note_instance_peaks(&self, tenants: &[TenantId]) {
        if self.usage.is_none() {
            return;
        }
        for tenant in tenants {
            if let Err(error) = self.status_counts(Some(tenant)).await {
                tracing::debug!(tenant = %tenant, %error, "instance count for the usage peak not read; the next flush tries again");
            }
        }
    }

    /// The same registry with heartbeat leases in `cache`: a heartbeat that
    /// does not change its instance's status is renewed there only, and the
    /// reaper judges leases from it (`lease_store` is the store's side of
    /// that, and `policy` the mass-expiry rule of those passes). See
    /// [`crate::lease`] for the contract.
    #[must_use]
    pub fn with_lease_cache(
        mut self,
        cache: Arc<dyn LeaseCache>,
        lease_store: Arc<dyn LeaseStore>,
        policy: MassExpiry,
    ) -> Self {
        self.leases = Some(Arc::new(CachedLeases::new(
            cache,
            lease_store,
            policy,
            self.clock.clone(),
        )));
        self
    }

    /// What the store's machinery (lookup cache, group commit) has done,
    /// for `/metrics`.
    pub fn store_figures(&self) -> crate::ports::StoreFigures {
        self.store.figures()
    }

    /// Where leases live, and how the cache is doing.
    pub fn lease_status(&self) -> LeaseStatus {
        match &self.leases {
            None => LeaseStatus {
                backend: "store",
                cache_reachable: None,
                fallbacks: 0,
            },
            Some(leases) => LeaseStatus {
                backend: "cache",
                cache_reachable: Some(leases.reachable()),
                fallbacks: leases.fallbacks(),
            },
        }
    }

    /// The changes made through this process since it started: one tenant's,
    /// or (`None`) the sum over every tenant.
    pub fn change_counts(&self, tenant: Option<&TenantId>) -> ChangeCounts {
        match tenant {
            Some(tenant) => self.changes.of(tenant),
            None => self.changes.total(),
        }
    }

    /// The changes made through this process since it started, per tenant
    /// (ordered by tenant id; tenants that changed nothing are absent).
    pub fn change_counts_by_tenant(&self) -> Vec<(TenantId, ChangeCounts)> {
        self.changes.all()
    }

    /// The mass-expiry hold on `tenant`'s removals, if this process's reaper
    /// placed one at its last pass.
    pub fn mass_expiry(&self, tenant: &TenantId) -> Option<MassExpiryHold> {
        self.holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }

    /// Whether `tenant`'s leases are in the lease cache (`None` without a
    /// cache, or when it cannot be asked).
    pub async fn lease_synced(&self, tenant: &TenantId) -> Option<bool> {
        self.leases.as_ref()?.synced(tenant).await
    }

    /// Every mass-expiry hold this process's reaper placed at its last pass.
    pub fn mass_expiry_holds(&self) -> Vec<MassExpiryHold> {
        let mut holds: Vec<MassExpiryHold> = self
            .holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        holds.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        holds
    }

    /// Writes the latest heartbeat metrics kept in the lease cache to the
    /// store, at most one sample per instance per `every`. Returns how many
    /// were written; 0 without a lease cache (the store then records the
    /// metrics of each heartbeat itself).
    pub async fn sample_metrics(&self, every: Duration) -> Result<usize, RegistryError> {
        match &self.leases {
            None => Ok(0),
            Some(leases) => leases.sample_metrics(self.clock.now(), every).await,
        }
    }

    /// Registers an instance, or updates it if the tenant already has one with
    /// the same service name and instance id. The lease starts now.
    pub async fn register(
        &self,
        tenant: &TenantId,
        registration: Registration,
        context: &ChangeContext,
    ) -> Result<Upserted, RegistryError> {
        self.register_limited(tenant, registration, context, None)
            .await
    }

    /// [`Registry::register`] under the tenant's instance quota: with
    /// `max_instances`, registering a NEW instance past it fails with
    /// `QuotaExceeded { limit: "max_instances", max }` and changes nothing;
    /// updating an existing instance never does. The store checks it
    /// atomically, so concurrent registrations never overshoot it.
    pub async fn register_limited(
        &self,
        tenant: &TenantId,
        registration: Registration,
        context: &ChangeContext,
        max_instances: Option<u32>,
    ) -> Result<Upserted, RegistryError> {
        let now = self.clock.now();
        let upserted = self
            .store
            .upsert(tenant, registration, now, context, max_instances)
            .await?;
        if let Some(usage) = &self.usage {
            usage.registration(tenant, now);
        }
        if let Some(leases) = &self.leases {
            leases.put(&upserted.instance).await;
        }
        let (kind, counted) = if upserted.created {
            (EventKind::Registered, ChangeKind::Registration)
        } else {
            (EventKind::Updated, ChangeKind::Update)
        };
        self.changes.count(tenant, counted, 1);
        self.publish(vec![RegistryEvent::new(
            kind,
            upserted.instance.clone(),
            None,
            now,
        )])
        .await;
        Ok(upserted)
    }

    /// One page of the tenant's instances.
    pub async fn list(
        &self,
        tenant: &TenantId,
        query: &ListQuery,
    ) -> Result<ListPage, RegistryError> {
        self.store.list(tenant, query).await
    }

    /// The instances of one service; `NotFound` if the tenant has none (a
    /// service whose only instances cannot be read is found, with none
    /// listed and `skipped` saying how many were left out).
    pub async fn get(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
    ) -> Result<ServiceInstances, RegistryError> {
        let snapshot = self.store.service(tenant, service).await?;
        if snapshot.instances.is_empty() && snapshot.skipped == 0 {
            return Err(RegistryError::not_found(format!("service '{service}'")));
        }
        Ok(ServiceInstances {
            service_name: service.clone(),
            instances: snapshot.instances,
            revision: snapshot.revision,
            skipped: snapshot.skipped,
        })
    }

    /// The instances of one service and the tenant's revision they were read
    /// at: empty (not an error) when the tenant has no such service, so that
    /// a blocking query can say which revision its 404 reflects.
    pub async fn service_snapshot(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
    ) -> Result<crate::ports::ServiceSnapshot, RegistryError> {
        self.store.service(tenant, service).await
    }

    /// Renews an instance's lease (the instance id defaults to the service
    /// name, like registration). `NotFound` means the client must register again.
    pub async fn heartbeat(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: Option<&InstanceId>,
        heartbeat: &Heartbeat,
        context: &ChangeContext,
    ) -> Result<Instance, RegistryError> {
        let now = self.clock.now();
        let default_id;
        let instance = match instance {
            Some(id) => id,
            None => {
                default_id = InstanceId::from(service);
                &default_id
            }
        };
        if let Some(leases) = &self.leases
            && let Some(renewed) = leases
                .renew(tenant, service, instance, heartbeat, now)
                .await
        {
            if let Some(usage) = &self.usage {
                usage.heartbeat(tenant, now);
            }
            return Ok(renewed);
        }
        let renewed = self
            .store
            .renew(tenant, service, instance, heartbeat, now, context)
            .await?;
        if let Some(usage) = &self.usage {
            usage.heartbeat(tenant, now);
        }
        if let Some(leases) = &self.leases {
            leases.put(&renewed.instance).await;
        }
        if renewed.previous_status != renewed.instance.status() {
            self.changes.count(tenant, ChangeKind::StatusChange, 1);
            self.publish(vec![RegistryEvent::new(
                EventKind::StatusChanged,
                renewed.instance.clone(),
                Some(renewed.previous_status),
                now,
            )])
            .await;
        }
        Ok(renewed.instance)
    }

    /// Removes one instance, or all instances of the service. Returns how many
    /// were removed (stored rows that cannot be read included); `NotFound` if
    /// none matched.
    pub async fn deregister(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: Option<&InstanceId>,
        context: &ChangeContext,
    ) -> Result<usize, RegistryError> {
        let now = self.clock.now();
        let removed = self
            .store
            .remove(tenant, service, instance, context)
            .await?;
        if let Some(leases) = &self.leases {
            leases.forget(tenant, &removed.instances).await;
        }
        let count = removed.instances.len() + removed.undecodable;
        if count == 0 {
            return Err(RegistryError::not_found(match instance {
                Some(id) => format!("instance '{id}' of service '{service}'"),
                None => format!("service '{service}'"),
            }));
        }
        self.changes
            .count(tenant, ChangeKind::Deregistration, count as u64);
        self.publish(
            removed
                .instances
                .into_iter()
                .map(|i| RegistryEvent::new(EventKind::Deregistered, i, None, now))
                .collect(),
        )
        .await;
        Ok(count)
    }

    /// One reaper pass at the clock's current time: expired leases turn
    /// critical, leases expired for longer than `deregister_after` are removed.
    pub async fn expire_leases(&self) -> Result<ExpiryReport, RegistryError> {
        let now = self.clock.now();
        let changes = match &self.leases {
            None => self.store.expire_leases(now).await?,
            Some(leases) => {
                let changes = leases.reap(self.store.as_ref(), now).await?;
                // The cache-driven pass changed the store through its lease
                // side: derived state (the lookup cache) must drop them.
                for change in &changes {
                    if let LeaseChange::Expired { instance, .. } | LeaseChange::Removed(instance) =
                        change
                    {
                        self.store
                            .changed_elsewhere(instance.tenant_id(), instance.service_name());
                    }
                }
                changes
            }
        };
        let mut report = ExpiryReport::default();
        let mut holds = HashMap::new();
        let events = changes
            .into_iter()
            .filter_map(|change| match change {
                LeaseChange::Held(hold) => {
                    report.held += 1;
                    holds.insert(hold.tenant.clone(), hold);
                    None
                }
                LeaseChange::Expired {
                    instance,
                    previous_status,
                } => {
                    report.expired += 1;
                    self.changes
                        .count(instance.tenant_id(), ChangeKind::ExpiredToCritical, 1);
                    Some(RegistryEvent::new(
                        EventKind::StatusChanged,
                        instance,
                        Some(previous_status),
                        now,
                    ))
                }
                LeaseChange::Removed(instance) => {
                    report.removed += 1;
                    self.changes
                        .count(instance.tenant_id(), ChangeKind::ExpiredRemoved, 1);
                    Some(RegistryEvent::new(EventKind::Expired, instance, None, now))
                }
            })
            .collect::<Vec<_>>();
        self.publish(events).await;
        self.update_holds(holds);
        Ok(report)
    }

    /// Keeps this pass's mass-expiry holds, logging each hold that starts
    /// or ends (once, not every pass).
    fn update_holds(&self, holds: HashMap<TenantId, MassExpiryHold>) {
        let mut current = self.holds.lock().unwrap_or_else(PoisonError::into_inner);
        for (tenant, hold) in &holds {
            if !current.contains_key(tenant) {
                tracing::warn!(
                    tenant = %tenant,
                    expired = hold.expired,
                    total = hold.total,
                    "mass expiry: most of this tenant's instances stopped heartbeating at once; they are critical but kept until they heartbeat again or the grace passes"
                );
            }
        }
        for tenant in current.keys() {
            if !holds.contains_key(tenant) {
                tracing::info!(tenant = %tenant, "mass expiry over: removals of this tenant run normally again");
            }
        }
        *current = holds;
    }

    /// Instances counted by status: the tenant's when `scope` is a tenant,
    /// else the total over every tenant of the store. The total is built
    /// tenant by tenant, each through the store's tenant-scoped count (in
    /// PostgreSQL one `GROUP BY` in the tenant's own row-level-security
    /// transaction; nothing bypasses it). Unreadable rows count by their
    /// stored status.
    pub async fn status_counts(
        &self,
        scope: Option<&TenantId>,
    ) -> Result<StatusCounts, RegistryError> {
        match scope {
            Some(tenant) => {
                let counts = self.store.status_counts(tenant).await?;
                if let Some(usage) = &self.usage {
                    usage.instances(tenant, counts.total, self.clock.now());
                }
                Ok(counts)
            }
            None => Ok(self
                .status_counts_by_tenant()
                .await?
                .into_iter()
                .fold(StatusCounts::default(), |sum, (_, c)| sum.plus(c))),
        }
    }

    /// Every tenant that has written to the store (ids only), in id order.
    pub async fn tenant_ids(&self) -> Result<Vec<TenantId>, RegistryError> {
        self.store.tenant_ids().await
    }

    /// Every tenant of the store with its instances counted by status (for
    /// operators: totals and per-tenant gauges), in tenant id order. Each
    /// count runs in that tenant's own scope, as in [`Registry::status_counts`].
    pub async fn status_counts_by_tenant(
        &self,
    ) -> Result<Vec<(TenantId, StatusCounts)>, RegistryError> {
        let tenants = self.store.tenant_ids().await?;
        let mut counts = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let c = self.store.status_counts(&tenant).await?;
            if let Some(usage) = &self.usage {
                usage.instances(&tenant, c.total, self.clock.now());
            }
            counts.push((tenant, c));
        }
        Ok(counts)
    }

    /// Every service of the tenant, ordered by name, with its instances by
    /// status, newest heartbeat and latest reported metrics.
    ///
    /// With a lease cache, metrics reported since the sampler last wrote
    /// them to the store live in the cache: the newer of the cache's and
    /// the store's is shown.
    pub async fn service_summaries(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<ServiceSummary>, RegistryError> {
        let mut summaries = self.store.service_summaries(tenant).await?;
        if let Some(leases) = &self.leases {
            for sample in leases.peek_metrics(tenant).await {
                let Some(summary) = summaries
                    .iter_mut()
                    .find(|s| s.service_name == sample.service)
                else {
                    continue;
                };
                if summary
                    .latest_metrics
                    .as_ref()
                    .is_none_or(|m| m.recorded_at < sample.recorded_at)
                {
                    summary.latest_metrics = Some(sample);
                }
            }
        }
        Ok(summaries)
    }

    /// Whether the source of truth is reachable.
    pub async fn check_store(&self) -> Result<(), RegistryError> {
        self.store.check().await
    }

    /// Publishes events of a change that is already stored. A failure is logged,
    /// not returned: the write succeeded and the caller must not retry it.
    async fn publish(&self, events: Vec<RegistryEvent>) {
        if events.is_empty() {
            return;
        }
        if let Some(usage) = &self.usage {
            let now = self.clock.now();
            let mut run: Option<(&TenantId, u64)> = None;
            // Events of one change or pass come grouped by tenant mostly;
            // one meter update per run of a tenant's events.
            for event in &events {
                let tenant = event.tenant_id();
                match &mut run {
                    Some((t, n)) if *t == tenant => *n += 1,
                    _ => {
                        if let Some((t, n)) = run.take() {
                            usage.events(t, n, now);
                        }
                        run = Some((tenant, 1));
                    }
                }
            }
            if let Some((t, n)) = run {
                usage.events(t, n, now);
            }
        }
        if let Err(error) = self.events.publish(&events).await {
            tracing::warn!(%error, count = events.len(), "registry events not published");
        }
    }
}
