//! Heartbeat leases kept outside the source of truth: the `LeaseCache` and `LeaseStore` ports, the mass-expiry rule, and the in-memory lease cache.
//!
//! With a lease cache (Dragonfly), a heartbeat that does not change an
//! instance's status renews its lease in the cache only: the store (PostgreSQL)
//! keeps the lease as of the last change, and is told about expiry by the
//! reaper, which judges leases from the cache. The rules that keep the two
//! consistent are in [`crate::Registry`]; the ports here state what each
//! side must guarantee:
//!
//! - A tenant's leases are in the cache only once the reaper has filled them
//!   from the store ([`LeaseCache::refill`] marks the tenant *synced*). A
//!   heartbeat is renewed in the cache only for a synced tenant, a known
//!   instance and an unchanged status; anything else goes to the store.
//! - Expiry is judged only on positive evidence: a lease the cache holds and
//!   says ran out. A cache that lost its data (restarted empty) holds nothing
//!   and expires nothing; the reaper refills it first, with a grace of one
//!   ttl per instance.
//! - The store applies an expiry only if its own lease is not newer than the
//!   one judged ([`LeaseStore::expire_judged`]): a heartbeat that went to the
//!   store meanwhile wins.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::domain::context::ChangeContext;
use crate::domain::ids::{InstanceId, ServiceName, TenantId};
use crate::domain::instance::{HealthStatus, Instance};
use crate::domain::query::{Heartbeat, HeartbeatMetrics};
use crate::error::RegistryError;
use crate::ports::LeaseChange;

/// One instance's lease as the cache holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedLease {
    /// The instance's service.
    pub service: ServiceName,
    /// The instance.
    pub instance: InstanceId,
    /// Its status as the cache knows it.
    pub status: HealthStatus,
    /// Its lease length.
    pub ttl_seconds: u32,
    /// Its last renewal.
    pub last_heartbeat: DateTime<Utc>,
    /// When its lease runs out.
    pub expires_at: DateTime<Utc>,
}

impl CachedLease {
    /// The lease of `instance` as the store has it.
    pub fn of(instance: &Instance) -> Self {
        Self {
            service: instance.service_name().clone(),
            instance: instance.instance_id().clone(),
            status: instance.status(),
            ttl_seconds: instance.registration().ttl_seconds(),
            last_heartbeat: instance.last_heartbeat(),
            expires_at: instance.lease_expires_at(),
        }
    }

    /// When the instance is removed if it stays unrenewed (see
    /// [`Instance::deregister_at`]).
    pub fn deregister_at(&self) -> DateTime<Utc> {
        self.expires_at
            + Duration::seconds(i64::from(
                self.ttl_seconds * crate::domain::registration::DEREGISTER_AFTER_TTLS,
            ))
    }
}

/// What the cache did with a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheRenewal {
    /// Renewed in the cache: the record after the renewal.
    Renewed(Instance),
    /// Not renewed (tenant not synced, instance unknown to the cache, or a
    /// status change): the heartbeat must go to the store.
    Miss,
}

/// Leases of one tenant that ran out, as the cache holds them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DueLeases {
    /// Leases whose expiry is at or before the time asked about.
    pub leases: Vec<CachedLease>,
    /// How many instances of the tenant the cache holds in all.
    pub total: usize,
}

/// The latest metrics an instance reported, kept by the cache until the
/// metrics sampler writes them to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    /// The instance's service.
    pub service: ServiceName,
    /// The instance.
    pub instance: InstanceId,
    /// The status reported with them.
    pub status: HealthStatus,
    /// The figures.
    pub metrics: HeartbeatMetrics,
    /// When they were reported.
    pub recorded_at: DateTime<Utc>,
}

/// Where heartbeat leases live between changes (Dragonfly; in memory for
/// tests and embedders). Every method is scoped to one tenant. Errors are
/// `Unavailable` when the cache cannot be reached: callers fall back to the
/// store, never fail a request because of the cache.
#[async_trait]
pub trait LeaseCache: Send + Sync + 'static {
    /// Renews the lease at `now` if the tenant is synced, the instance is
    /// known and its cached status is the one reported; keeps the heartbeat's
    /// metrics as the instance's latest (for [`LeaseCache::take_metrics`]).
    async fn renew(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: &InstanceId,
        heartbeat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> Result<CacheRenewal, RegistryError>;

    /// Stores the record and lease of an instance as the store has just
    /// written it. A record older (lower revision) than the cached one is
    /// ignored, and the cached expiry never moves backwards for the same
    /// revision.
    async fn put(&self, instance: &Instance) -> Result<(), RegistryError>;

    /// Forgets instances of the tenant (deregistered or removed).
    async fn forget(
        &self,
        tenant: &TenantId,
        instances: &[(ServiceName, InstanceId)],
    ) -> Result<(), RegistryError>;

    /// Whether the tenant is synced (its leases were filled from the store
    /// and nothing since has made them doubtful).
    async fn synced(&self, tenant: &TenantId) -> Result<bool, RegistryError>;

    /// Fills the tenant's leases from the store's `instances`, each expiring
    /// no earlier than `floor` plus its ttl, and marks the tenant synced.
    /// With `replace`, every cached lease of the tenant is dropped first;
    /// without, cached leases are kept (a cached record older, by revision,
    /// than the store's takes the store's record but keeps the later
    /// expiry), missing ones are added, and ones the store no longer has
    /// are dropped.
    async fn refill(
        &self,
        tenant: &TenantId,
        instances: &[Instance],
        floor: DateTime<Utc>,
        replace: bool,
    ) -> Result<(), RegistryError>;

    /// Marks the tenant not synced: its heartbeats go to the store until the
    /// reaper refills it.
    async fn unsync(&self, tenant: &TenantId) -> Result<(), RegistryError>;

    /// The tenant's leases that ran out at `now`, and how many it holds.
    async fn due(&self, tenant: &TenantId, now: DateTime<Utc>) -> Result<DueLeases, RegistryError>;

    /// Marks `critical` those of `leases` whose cached expiry is still the
    /// one given (a renewal since wins), so that their next heartbeat goes to
    /// the store; returns the ones marked.
    async fn mark_critical(
        &self,
        tenant: &TenantId,
        leases: &[CachedLease],
    ) -> Result<Vec<CachedLease>, RegistryError>;

    /// Forgets those of `leases` whose cached expiry is still the one given.
    async fn forget_unrenewed(
        &self,
        tenant: &TenantId,
        leases: &[CachedLease],
    ) -> Result<(), RegistryError>;

    /// The latest metrics of each instance that reported some since they
    /// were last taken, taking them, but only for instances whose metrics
    /// were last taken at least `every` before `now` (or never): whichever
    /// process calls, an instance yields at most one sample per `every`.
    async fn take_metrics(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
        every: Duration,
    ) -> Result<Vec<MetricSample>, RegistryError>;

    /// The latest metrics of each instance that reported some since they
    /// were last taken, without taking them (the dashboard's view of what
    /// the sampler has not written to the store yet).
    async fn peek_metrics(&self, tenant: &TenantId) -> Result<Vec<MetricSample>, RegistryError>;
}

/// The reaper's turn: while the value lives, no other process sharing the
/// store runs a reaper pass.
pub type ReaperTurn = Box<dyn Send + Sync>;

/// An expiry the reaper judged from cached leases, for the store to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgedLease {
    /// The lease as judged.
    pub lease: CachedLease,
    /// Remove the instance (else: mark it critical).
    pub remove: bool,
}

/// What the store side of cached leases needs (PostgreSQL; in memory).
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Every tenant that may have instances.
    async fn tenants(&self) -> Result<Vec<TenantId>, RegistryError>;

    /// Takes the reaper's turn if no other process has it (`None` then).
    async fn reaper_turn(&self) -> Result<Option<ReaperTurn>, RegistryError>;

    /// Every readable instance of the tenant.
    async fn instances(&self, tenant: &TenantId) -> Result<Vec<Instance>, RegistryError>;

    /// Applies judged expiries, each only if the stored lease does not
    /// expire after the judged one (else a heartbeat reached the store
    /// since, and wins): marking critical (with the judged lease times
    /// written, if the instance is not critical already) or removing. Each
    /// change takes the tenant's next revision, an audit row with `context`
    /// and an outbox event, as any other change.
    async fn expire_judged(
        &self,
        tenant: &TenantId,
        judged: &[JudgedLease],
        now: DateTime<Utc>,
        context: &ChangeContext,
    ) -> Result<Vec<LeaseChange>, RegistryError>;

    /// Applies the store's own expiry rule (no mass-expiry hold) to the
    /// tenant's stored rows that cannot be read as instances. They never
    /// enter a lease cache and their heartbeats are refused, so the stored
    /// lease is their real one; without this they would never expire while
    /// a cache judges the others. Audited without an event, as the store's
    /// own pass does. Returns how many changed.
    async fn expire_unreadable(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
        context: &ChangeContext,
    ) -> Result<usize, RegistryError>;

    /// Moves every stored lease (every tenant) to expire no earlier than
    /// `floor` plus its ttl, so that leases renewed only in a cache that is
    /// now lost do not expire at once. Returns how many moved.
    async fn extend_leases(&self, floor: DateTime<Utc>) -> Result<u64, RegistryError>;

    /// Writes sampled heartbeat metrics to the tenant's history.
    async fn record_metrics(
        &self,
        tenant: &TenantId,
        samples: &[MetricSample],
    ) -> Result<(), RegistryError>;
}

/// Mass-expiry protection (like Eureka's self-preservation, but per tenant,
/// observable and self-ending): when more than `ratio` of a tenant's
/// instances, and at least `min`, have run-out leases at one reaper pass, a
/// hold starts. Held instances still turn critical, but none is removed
/// until its lease ran out `grace` ago; instances that heartbeat again
/// recover as usual. The hold lasts until no instance of the tenant has a
/// run-out lease (every one came back or was removed) or `grace` has passed
/// since it started; it does not end merely because some came back (a
/// healing partition brings instances back over a heartbeat interval, not
/// at once). Clones share the holds: give the store and the lease cache
/// clones of one value.
#[derive(Debug, Clone)]
pub struct MassExpiry {
    /// Share of a tenant's instances above which removals are held.
    pub ratio: f64,
    /// Fewest run-out instances that count as a mass expiry.
    pub min: usize,
    /// How long after its lease ran out a held instance is removed anyway,
    /// and how long a hold lasts at most.
    pub grace: Duration,
    /// When each held tenant's hold started (this process's reaper).
    holds: Arc<Mutex<HashMap<TenantId, DateTime<Utc>>>>,
}

impl PartialEq for MassExpiry {
    fn eq(&self, other: &Self) -> bool {
        self.ratio == other.ratio && self.min == other.min && self.grace == other.grace
    }
}

impl Default for MassExpiry {
    fn default() -> Self {
        Self::new(0.5, 5, Duration::seconds(900))
    }
}

impl MassExpiry {
    /// The rule with these settings and no hold yet.
    pub fn new(ratio: f64, min: usize, grace: Duration) -> Self {
        Self {
            ratio,
            min,
            grace,
            holds: Arc::default(),
        }
    }

    /// The rule turned off (nothing is ever held).
    pub fn off() -> Self {
        Self::new(1.0, usize::MAX, Duration::zero())
    }

    /// Whether `expired` run-out instances out of `total` are a mass expiry.
    pub fn holds(&self, expired: usize, total: usize) -> bool {
        #[allow(clippy::cast_precision_loss)]
        let share = expired as f64 / total.max(1) as f64;
        expired >= self.min && expired > 0 && share > self.ratio
    }

    /// Whether `tenant`'s removals are held at `now`, with `expired` of its
    /// `total` instances run out: a hold starts on a mass expiry and lasts
    /// while any instance is run out, for at most `grace`.
    pub fn decide(
        &self,
        tenant: &TenantId,
        expired: usize,
        total: usize,
        now: DateTime<Utc>,
    ) -> bool {
        let mut holds = self.holds.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(since) = holds.get(tenant).copied() {
            if expired > 0 && now < since + self.grace {
                return true;
            }
            holds.remove(tenant);
        }
        let mass = self.holds(expired, total);
        if mass {
            holds.insert(tenant.clone(), now);
        }
        mass
    }

    /// Whether an instance whose lease ran out at `expires_at` and which is
    /// due for removal at `deregister_at` is removed at `now`, when the
    /// tenant is `held` or not.
    pub fn removes(
        &self,
        held: bool,
        expires_at: DateTime<Utc>,
        deregister_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        now >= deregister_at && (!held || now >= expires_at + self.grace)
    }
}

/// A tenant whose removals a reaper pass held back.
#[derive(Debug, Clone, PartialEq)]
pub struct MassExpiryHold {
    /// The tenant.
    pub tenant: TenantId,
    /// Its instances with run-out leases at the pass.
    pub expired: usize,
    /// All its instances.
    pub total: usize,
    /// Instances due for removal that the hold kept.
    pub held: usize,
}

/// Judges one tenant's run-out leases at `now` under `policy`: which turn
/// critical, which are removed, and whether removals are held.
pub fn judge(
    due: &DueLeases,
    now: DateTime<Utc>,
    policy: &MassExpiry,
    tenant: &TenantId,
) -> (Vec<JudgedLease>, Option<MassExpiryHold>) {
    let expired: Vec<&CachedLease> = due.leases.iter().filter(|l| l.expires_at <= now).collect();
    let held = policy.decide(tenant, expired.len(), due.total, now);
    let mut kept = 0usize;
    let mut judged = Vec::new();
    for lease in expired {
        let dead = now >= lease.deregister_at();
        if dead && policy.removes(held, lease.expires_at, lease.deregister_at(), now) {
            judged.push(JudgedLease {
                lease: lease.clone(),
                remove: true,
            });
        } else {
            if dead {
                kept += 1;
            }
            if lease.status != HealthStatus::Critical {
                judged.push(JudgedLease {
                    lease: lease.clone(),
                    remove: false,
                });
            }
        }
    }
    let hold = held.then(|| MassExpiryHold {
        tenant: tenant.clone(),
        expired: due.leases.iter().filter(|l| l.expires_at <= now).count(),
        total: due.total,
        held: kept,
    });
    (judged, hold)
}

type Member = (ServiceName, InstanceId);

#[derive(Debug, Default)]
struct TenantLeases {
    synced: bool,
    records: BTreeMap<Member, Instance>,
    metrics: HashMap<Member, MetricSample>,
    taken: HashMap<Member, DateTime<Utc>>,
}

/// An in-memory lease cache: the same contract as the Dragonfly one, for
/// tests and embedders (one process; no sharing).
#[derive(Debug, Default)]
pub struct MemoryLeases {
    tenants: Mutex<HashMap<TenantId, TenantLeases>>,
    down: std::sync::atomic::AtomicBool,
}

impl MemoryLeases {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loses every lease, as a cache that restarts empty does.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Makes every call fail as unreachable (`true`) or work again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, TenantLeases>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reachable(&self) -> Result<(), RegistryError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RegistryError::Unavailable {
                component: "leases",
                source: "the in-memory lease cache is set down".into(),
            });
        }
        Ok(())
    }
}

fn key_of(instance: &Instance) -> Member {
    (
        instance.service_name().clone(),
        instance.instance_id().clone(),
    )
}

fn with_lease(record: &Instance, lease_expires_at: DateTime<Utc>) -> Instance {
    Instance::restore(
        record.tenant_id().clone(),
        record.registration().clone(),
        record.status(),
        record.registered_at(),
        record.last_heartbeat(),
        lease_expires_at,
        record.revision(),
    )
}

#[async_trait]
impl LeaseCache for MemoryLeases {
    async fn renew(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: &InstanceId,
        heartbeat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> Result<CacheRenewal, RegistryError> {
        self.reachable()?;
        let mut tenants = self.lock();
        let Some(state) = tenants.get_mut(tenant) else {
            return Ok(CacheRenewal::Miss);
        };
        if !state.synced {
            return Ok(CacheRenewal::Miss);
        }
        let key = (service.clone(), instance.clone());
        let Some(record) = state.records.get_mut(&key) else {
            return Ok(CacheRenewal::Miss);
        };
        if record.status() != heartbeat.status() {
            return Ok(CacheRenewal::Miss);
        }
        *record = record.renewed(now, heartbeat.status());
        let renewed = record.clone();
        if let Some(metrics) = heartbeat.metrics() {
            state.metrics.insert(
                key.clone(),
                MetricSample {
                    service: key.0,
                    instance: key.1,
                    status: heartbeat.status(),
                    metrics: *metrics,
                    recorded_at: now,
                },
            );
        }
        Ok(CacheRenewal::Renewed(renewed))
    }

    async fn put(&self, instance: &Instance) -> Result<(), RegistryError> {
        self.reachable()?;
        let mut tenants = self.lock();
        let state = tenants.entry(instance.tenant_id().clone()).or_default();
        let key = key_of(instance);
        match state.records.get(&key) {
            Some(cached) if cached.revision() > instance.revision() => {}
            Some(cached)
                if cached.revision() == instance.revision()
                    && cached.lease_expires_at() >= instance.lease_expires_at() => {}
            _ => {
                state.records.insert(key, instance.clone());
            }
        }
        Ok(())
    }

    async fn forget(
        &self,
        tenant: &TenantId,
        instances: &[(ServiceName, InstanceId)],
    ) -> Result<(), RegistryError> {
        self.reachable()?;
        if let Some(state) = self.lock().get_mut(tenant) {
            for key in instances {
                state.records.remove(key);
                state.metrics.remove(key);
            }
        }
        Ok(())
    }

    async fn synced(&self, tenant: &TenantId) -> Result<bool, RegistryError> {
        self.reachable()?;
        Ok(self.lock().get(tenant).is_some_and(|s| s.synced))
    }

    async fn refill(
        &self,
        tenant: &TenantId,
        instances: &[Instance],
        floor: DateTime<Utc>,
        replace: bool,
    ) -> Result<(), RegistryError> {
        self.reachable()?;
        let mut tenants = self.lock();
        let state = tenants.entry(tenant.clone()).or_default();
        if replace {
            state.records.clear();
        }
        let present: HashSet<Member> = instances.iter().map(key_of).collect();
        state.records.retain(|k, _| present.contains(k));
        // A dropped instance's metrics go with it, as with `forget`: the
        // sampler must not write history for an instance the store no
        // longer has.
        state.metrics.retain(|k, _| present.contains(k));
        for instance in instances {
            let floor_expiry =
                floor + Duration::seconds(i64::from(instance.registration().ttl_seconds()));
            let expiry = instance.lease_expires_at().max(floor_expiry);
            match state.records.get_mut(&key_of(instance)) {
                None => {
                    state
                        .records
                        .insert(key_of(instance), with_lease(instance, expiry));
                }
                Some(cached) if cached.revision() < instance.revision() => {
                    let kept = cached.lease_expires_at().max(instance.lease_expires_at());
                    *cached = with_lease(instance, kept);
                }
                Some(_) => {}
            }
        }
        state.synced = true;
        Ok(())
    }

    async fn unsync(&self, tenant: &TenantId) -> Result<(), RegistryError> {
        self.reachable()?;
        if let Some(state) = self.lock().get_mut(tenant) {
            state.synced = false;
        }
        Ok(())
    }

    async fn due(&self, tenant: &TenantId, now: DateTime<Utc>) -> Result<DueLeases, RegistryError> {
        self.reachable()?;
        let tenants = self.lock();
        let Some(state) = tenants.get(tenant) else {
            return Ok(DueLeases::default());
        };
        Ok(DueLeases {
            leases: state
                .records
                .values()
                .filter(|r| r.lease_expires_at() <= now)
                .map(CachedLease::of)
                .collect(),
            total: state.records.len(),
        })
    }

    async fn mark_critical(
        &self,
        tenant: &TenantId,
        leases: &[CachedLease],
    ) -> Result<Vec<CachedLease>, RegistryError> {
        self.reachable()?;
        let mut tenants = self.lock();
        let Some(state) = tenants.get_mut(tenant) else {
            return Ok(Vec::new());
        };
        let mut marked = Vec::new();
        for lease in leases {
            let key = (lease.service.clone(), lease.instance.clone());
            if let Some(record) = state.records.get_mut(&key)
                && record.lease_expires_at() == lease.expires_at
            {
                *record = record.with_status(HealthStatus::Critical);
                marked.push(lease.clone());
            }
        }
        Ok(marked)
    }

    async fn forget_unrenewed(
        &self,
        tenant: &TenantId,
        leases: &[CachedLease],
    ) -> Result<(), RegistryError> {
        self.reachable()?;
        if let Some(state) = self.lock().get_mut(tenant) {
            for lease in leases {
                let key = (lease.service.clone(), lease.instance.clone());
                if state
                    .records
                    .get(&key)
                    .is_some_and(|r| r.lease_expires_at() == lease.expires_at)
                {
                    state.records.remove(&key);
                    state.metrics.remove(&key);
                }
            }
        }
        Ok(())
    }

    async fn take_metrics(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
        every: Duration,
    ) -> Result<Vec<MetricSample>, RegistryError> {
        self.reachable()?;
        let mut tenants = self.lock();
        let Some(state) = tenants.get_mut(tenant) else {
            return Ok(Vec::new());
        };
        let ready: Vec<Member> = state
            .metrics
            .keys()
            .filter(|k| state.taken.get(*k).is_none_or(|t| *t + every <= now))
            .cloned()
            .collect();
        let mut samples = Vec::new();
        for key in ready {
            if let Some(sample) = state.metrics.remove(&key) {
                state.taken.insert(key, now);
                samples.push(sample);
            }
        }
        Ok(samples)
    }

    async fn peek_metrics(&self, tenant: &TenantId) -> Result<Vec<MetricSample>, RegistryError> {
        self.reachable()?;
        Ok(self
            .lock()
            .get(tenant)
            .map(|state| state.metrics.values().cloned().collect())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(expires_in: i64, status: HealthStatus, now: DateTime<Utc>) -> CachedLease {
        CachedLease {
            service: ServiceName::parse("svc").unwrap(),
            instance: InstanceId::parse(format!("i{expires_in}")).unwrap(),
            status,
            ttl_seconds: 10,
            last_heartbeat: now + Duration::seconds(expires_in - 10),
            expires_at: now + Duration::seconds(expires_in),
        }
    }

    #[test]
    fn a_hold_lasts_while_any_is_run_out_for_at_most_the_grace() {
        let p = MassExpiry::default();
        let t = TenantId::parse("t").unwrap();
        let now = Utc::now();
        assert!(p.decide(&t, 6, 10, now), "a mass expiry starts a hold");
        // Most came back: still held (a partition heals over an interval).
        assert!(p.decide(&t, 2, 10, now + Duration::seconds(60)));
        // All came back: over; a later trickle is no mass expiry.
        assert!(!p.decide(&t, 0, 10, now + Duration::seconds(61)));
        assert!(!p.decide(&t, 2, 10, now + Duration::seconds(62)));
        // At most the grace, even if some never come back.
        assert!(p.decide(&t, 6, 10, now + Duration::seconds(100)));
        assert!(p.decide(&t, 1, 10, now + Duration::seconds(999)));
        assert!(!p.decide(&t, 1, 10, now + Duration::seconds(1000)));
        // Clones share holds; tenants do not.
        let other = TenantId::parse("u").unwrap();
        assert!(p.clone().decide(&t, 6, 10, now + Duration::seconds(2000)));
        assert!(p.decide(&t, 1, 10, now + Duration::seconds(2001)));
        assert!(!p.decide(&other, 1, 10, now + Duration::seconds(2001)));
    }

    #[test]
    fn the_rule_needs_both_the_share_and_the_minimum() {
        let p = MassExpiry::default();
        assert!(p.holds(6, 10));
        assert!(!p.holds(5, 10), "exactly half is not more than half");
        assert!(!p.holds(4, 4), "fewer than the minimum never holds");
        assert!(p.holds(5, 5));
        assert!(!p.holds(0, 0));
    }

    #[test]
    fn held_removals_wait_for_the_grace_then_go() {
        let now = Utc::now();
        let tenant = TenantId::parse("t").unwrap();
        // Six of eight ran out 40 s ago (dead: 10 s ttl, 30 s after).
        let mut leases: Vec<CachedLease> = (0..6)
            .map(|i| lease(-40 - i, HealthStatus::Critical, now))
            .collect();
        leases.push(lease(-1, HealthStatus::Passing, now));
        let due = DueLeases { leases, total: 8 };
        let policy = MassExpiry::default();
        let (judged, hold) = judge(&due, now, &policy, &tenant);
        let hold = hold.unwrap();
        assert_eq!((hold.expired, hold.total, hold.held), (7, 8, 6));
        assert_eq!(judged.len(), 1, "only the passing one turns critical");
        assert!(!judged[0].remove);
        // After the grace they are removed.
        let later = now + Duration::seconds(1000);
        let (judged, _) = judge(&due, later, &policy, &tenant);
        assert_eq!(judged.iter().filter(|j| j.remove).count(), 7);
        // Without a hold (few of many) the dead are removed at once.
        let few = DueLeases {
            leases: due.leases.clone(),
            total: 100,
        };
        let (judged, hold) = judge(&few, now, &MassExpiry::default(), &tenant);
        assert!(hold.is_none());
        assert_eq!(judged.iter().filter(|j| j.remove).count(), 6);
    }
}
