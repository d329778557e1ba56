//! Rate limits per tenant and per API key: the `RateLimiter` port, the policy (defaults, per-tenant overrides), the in-process `governor` adapter and the fallback that never fails a request.
//!
//! Two budgets apply to every limited request: the tenant's, and the one of
//! the API key that makes it (keyed by the key's fingerprint, within the
//! tenant, so that both buckets share the tenant's Redis Cluster hash slot
//! and one atomic script can check them together). A request passes only if
//! both have room. A shared adapter (Dragonfly) makes the budgets hold across
//! replicas; when it fails, [`Limits`] answers from the local limiter instead.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};

use crate::TenantId;

/// A budget: `rate` requests per second on average, up to `burst` at once.
/// A rate of 0 means no limit (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// Requests per second, sustained.
    pub rate: u32,
    /// Requests allowed at once (at least 1 when `rate` > 0).
    pub burst: u32,
}

impl Quota {
    /// The time one request's share of the budget takes to come back.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.rate.max(1)))
    }

    fn is_off(&self) -> bool {
        self.rate == 0
    }
}

/// One request to be checked: the budgets it needs room in (one or two:
/// `"tenant"`, the tenant's, and `"key:<fingerprint>"`, the API key's within
/// that tenant), each by its name within the tenant.
#[derive(Debug, Clone)]
pub struct RateRequest {
    /// The tenant the request acts for.
    pub tenant: TenantId,
    /// The budgets, by name; never empty when a limiter sees it.
    pub budgets: Vec<(String, Quota)>,
}

/// The answer for one request, from the budget with the least room left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The burst of the binding budget (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests left at once after this one (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Until the binding budget is full again (`RateLimit-Reset`).
    pub reset: Duration,
    /// For a refused request, until one would pass (`Retry-After`).
    pub retry_after: Duration,
}

/// The limiter's backend could not answer (unreachable, timed out, an
/// unexpected reply). The caller answers from a local limiter instead: a
/// limiter never turns a request into an error.
#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct RateLimitError(pub String);

/// Port: checks and consumes one request against the budgets of
/// [`RateRequest`]. Must be atomic over both budgets (no budget is consumed
/// when the request is refused) where the backend allows it. Errors only when
/// the backend cannot answer; a refusal is `Ok` with `allowed: false`.
#[async_trait]
pub trait RateLimiter: Send + Sync + fmt::Debug {
    /// Checks and, if allowed, consumes.
    async fn check(&self, request: &RateRequest) -> Result<RateDecision, RateLimitError>;

    /// Checks and charges up to `cells` requests at once, as many as every
    /// budget has room for (at least 1, or none: a refusal charges
    /// nothing), atomically over the budgets like [`check`](Self::check).
    /// [`Limits`] spends the grant locally (see [`ALLOWANCE_LIFETIME`]). The
    /// default asks [`check`](Self::check) for one.
    async fn take(&self, request: &RateRequest, cells: u32) -> Result<Grant, RateLimitError> {
        let _ = cells;
        let decision = self.check(request).await?;
        Ok(Grant {
            cells: u32::from(decision.allowed),
            decision,
        })
    }
}

/// What a shared limiter granted at once: `cells` requests' worth, charged
/// to every budget of the request (0: refused, nothing charged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Requests granted and charged; 0 when refused.
    pub cells: u32,
    /// The answer for the last granted request (`remaining` and `reset`
    /// after the whole grant), or the refusal.
    pub decision: RateDecision,
}

type Direct =
    governor::RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Most buckets the local limiter keeps; past it they are all dropped (which
/// refills every budget once), so that made-up tenant ids cannot grow memory
/// without bound.
const MAX_LOCAL_BUCKETS: usize = 100_000;

/// A budget within a tenant, borrowed: the tenant's, an API key's (by
/// fingerprint; named `key:<fingerprint>` in a [`RateRequest`]) or any other
/// name. Looking one up allocates nothing.
#[derive(Debug, Clone, Copy)]
enum Slot<'a> {
    Tenant,
    Key(&'a str),
    Other(&'a str),
}

impl<'a> Slot<'a> {
    fn of(name: &'a str) -> Self {
        if name == "tenant" {
            Slot::Tenant
        } else if let Some(fingerprint) = name.strip_prefix("key:") {
            Slot::Key(fingerprint)
        } else {
            Slot::Other(name)
        }
    }
}

/// One tenant's buckets, by [`Slot`].
#[derive(Default)]
struct LocalTenant {
    tenant: Option<Arc<Direct>>,
    keys: HashMap<Box<str>, Arc<Direct>>,
    other: HashMap<Box<str>, Arc<Direct>>,
}

impl LocalTenant {
    fn get(&self, slot: Slot<'_>) -> Option<&Arc<Direct>> {
        match slot {
            Slot::Tenant => self.tenant.as_ref(),
            Slot::Key(fingerprint) => self.keys.get(fingerprint),
            Slot::Other(name) => self.other.get(name),
        }
    }

    /// The bucket of `slot`, `fresh` if it had none (and whether it was new).
    fn get_or_insert(&mut self, slot: Slot<'_>, fresh: Arc<Direct>) -> (Arc<Direct>, bool) {
        let entry = match slot {
            Slot::Tenant => {
                let new = self.tenant.is_none();
                return (self.tenant.get_or_insert(fresh).clone(), new);
            }
            Slot::Key(fingerprint) => self.keys.entry(fingerprint.into()),
            Slot::Other(name) => self.other.entry(name.into()),
        };
        let new = matches!(entry, std::collections::hash_map::Entry::Vacant(_));
        (entry.or_insert(fresh).clone(), new)
    }
}

/// In-process adapter on `governor` (GCRA): the limiter of the embedded mode
/// and the fallback of the Dragonfly one. Per replica: two replicas each give
/// a tenant its full budget.
///
/// The hot path (a bucket that exists) takes a read lock and allocates
/// nothing; each bucket is a lock-free `governor` cell, so concurrent
/// requests of one tenant do not queue on a mutex. A bucket's quota is fixed
/// when it is first used.
pub struct LocalLimiter {
    clock: DefaultClock,
    buckets: RwLock<HashMap<Box<str>, LocalTenant>>,
    count: AtomicUsize,
}

impl fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter").finish_non_exhaustive()
    }
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self {
            clock: DefaultClock::default(),
            buckets: RwLock::new(HashMap::new()),
            count: AtomicUsize::new(0),
        }
    }
}

impl LocalLimiter {
    fn fresh(&self, quota: Quota) -> Arc<Direct> {
        let gov = governor::Quota::with_period(quota.interval())
            .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(quota.burst).unwrap_or(NonZeroU32::MIN));
        Arc::new(
            governor::RateLimiter::direct_with_clock(gov, self.clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
        )
    }

    /// Checks one budget: under the read lock when its bucket exists, else
    /// after creating it under the write lock.
    fn one(&self, tenant: &TenantId, slot: Slot<'_>, quota: Quota) -> RateDecision {
        {
            let buckets = self.buckets.read().unwrap_or_else(|p| p.into_inner());
            if let Some(bucket) = buckets.get(tenant.as_str()).and_then(|t| t.get(slot)) {
                return self.decide(bucket, quota);
            }
        }
        let fresh = self.fresh(quota);
        let bucket = {
            let mut buckets = self.buckets.write().unwrap_or_else(|p| p.into_inner());
            if self.count.load(Ordering::Relaxed) >= MAX_LOCAL_BUCKETS {
                buckets.clear();
                self.count.store(0, Ordering::Relaxed);
            }
            let (bucket, new) = buckets
                .entry(tenant.as_str().into())
                .or_default()
                .get_or_insert(slot, fresh);
            if new {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
            bucket
        };
        self.decide(&bucket, quota)
    }

    fn decide(&self, bucket: &Direct, quota: Quota) -> RateDecision {
        match bucket.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                RateDecision {
                    allowed: true,
                    limit: quota.burst,
                    remaining,
                    reset: quota.interval() * quota.burst.saturating_sub(remaining),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => RateDecision {
                allowed: false,
                limit: quota.burst,
                remaining: 0,
                reset: quota.interval() * quota.burst,
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Checks the budgets one after the other, stopping at the first that
    /// refuses. Unlike the shared script this is not atomic over both: a
    /// request the key's budget refuses has used one of the tenant's (a
    /// replica-local approximation).
    fn check_slots<'a>(
        &self,
        tenant: &TenantId,
        budgets: impl IntoIterator<Item = (Slot<'a>, Quota)>,
    ) -> RateDecision {
        let mut decision: Option<RateDecision> = None;
        for (slot, quota) in budgets {
            let one = self.one(tenant, slot, quota);
            let refused = !one.allowed;
            decision = Some(match decision {
                Some(previous) => combine(previous, one),
                None => one,
            });
            if refused {
                break;
            }
        }
        decision.unwrap_or(RateDecision {
            allowed: true,
            limit: 0,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
        })
    }

    /// Checks the budgets one after the other, stopping at the first that
    /// refuses. Unlike the shared script this is not atomic over both: a
    /// request the key's budget refuses has used one of the tenant's (a
    /// replica-local approximation).
    pub fn check_now(&self, request: &RateRequest) -> RateDecision {
        self.check_slots(
            &request.tenant,
            request
                .budgets
                .iter()
                .map(|(name, quota)| (Slot::of(name), *quota)),
        )
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn check(&self, request: &RateRequest) -> Result<RateDecision, RateLimitError> {
        Ok(self.check_now(request))
    }
}

/// The answer of two budgets: allowed only if both allow; the numbers of the
/// one with less room.
pub fn combine(a: RateDecision, b: RateDecision) -> RateDecision {
    let allowed = a.allowed && b.allowed;
    let binding = if !a.allowed {
        a
    } else if !b.allowed || b.remaining < a.remaining {
        b
    } else {
        a
    };
    RateDecision {
        allowed,
        retry_after: if allowed {
            Duration::ZERO
        } else {
            a.retry_after.max(b.retry_after)
        },
        ..binding
    }
}

/// How long cells taken from the shared limiter in one batch may be spent
/// by the replica that took them, counted from when it asked. Unspent cells
/// are not returned but expire: giving them back to the shared GCRA could
/// free time the bucket has already refilled (more than the rate), while an
/// expired cell only under-serves.
///
/// The bounds this gives, with `L` this lifetime: every request served was
/// charged to the shared budgets first, so no replica ever exceeds the rate
/// in the long run; cells held when a window starts were all charged within
/// the last `L`, which pushed the shared bucket's time ahead by as much, so
/// over any window of length `T` all replicas together serve at most
/// `burst + rate × (T + L)` (at most `rate × L` more than one exact GCRA, and
/// never more than the replicas' unspent batches). Under-serving: each
/// replica loses at most one batch's unspent cells per lifetime and budget
/// pair; batch sizes follow the demand of the previous batch (at most a
/// sixteenth of the smallest burst), so a replica that serves a trickle asks
/// for one cell at a time and loses nothing.
pub const ALLOWANCE_LIFETIME: Duration = Duration::from_millis(100);

/// The largest batch a replica takes at once.
const MAX_BATCH: u32 = 256;

/// The largest batch for a pair of budgets: a sixteenth of the smallest
/// burst, between 1 and [`MAX_BATCH`]. A budget with a burst under 32 is thus
/// always asked one request at a time, so small limits stay exact (as in
/// the test of 20/s, burst 20, across two replicas); a large one lets a busy
/// replica spend up to 256 requests per script call, and what replicas hold
/// unspent can never exceed a sixteenth of the burst each. Within the cap
/// the size follows demand: it starts at 1, doubles when a batch was used up
/// within its lifetime, and falls to what was spent when one expired with
/// cells left.
fn batch_cap(quotas: impl Iterator<Item = Quota>) -> u32 {
    quotas
        .map(|q| (q.burst / 16).clamp(1, MAX_BATCH))
        .min()
        .unwrap_or(1)
}

/// The budgets of one request, borrowed: the tenant's (if on) and the API
/// key's (its fingerprint, if on).
#[derive(Debug, Clone, Copy)]
struct Budgets<'a> {
    tenant: Option<Quota>,
    key: Option<(&'a str, Quota)>,
}

impl<'a> Budgets<'a> {
    fn slots(&self) -> impl Iterator<Item = (Slot<'a>, Quota)> + 'a {
        let tenant = self.tenant.map(|q| (Slot::Tenant, q));
        let key = self.key.map(|(fp, q)| (Slot::Key(fp), q));
        tenant.into_iter().chain(key)
    }

    fn quotas(&self) -> impl Iterator<Item = Quota> + 'a {
        self.slots().map(|(_, q)| q)
    }

    /// The port's request (allocates: only for a call to the shared limiter).
    fn request(&self, tenant: &TenantId) -> RateRequest {
        let mut budgets = Vec::with_capacity(2);
        if let Some(quota) = self.tenant {
            budgets.push(("tenant".to_owned(), quota));
        }
        if let Some((fingerprint, quota)) = self.key {
            budgets.push((format!("key:{fingerprint}"), quota));
        }
        RateRequest {
            tenant: tenant.clone(),
            budgets,
        }
    }
}

/// Cells of one budget pair taken from the shared limiter and not yet spent,
/// or the last refusal while it still holds.
#[derive(Debug)]
struct AllowanceState {
    /// Cells left to spend.
    cells: u32,
    /// Size of the last batch granted (0: none yet, or refused).
    taken: u32,
    /// When the cells stop being spendable.
    expires: Instant,
    /// The shared limiter's answer for the batch's last cell, or its refusal.
    decision: RateDecision,
    /// The emission interval of the budget `decision` speaks for.
    interval: Duration,
    /// A refusal answers locally until then: the shared budgets cannot have
    /// room earlier (other replicas only use it up), so this is exact.
    refused_until: Option<Instant>,
    /// Calls to the shared limiter so far, and whether the last one failed:
    /// requests that waited for another's call learn its outcome.
    calls: u64,
    failed: bool,
}

impl AllowanceState {
    /// The answer from local state, if it has one.
    fn serve(&mut self, now: Instant) -> Option<RateDecision> {
        if let Some(until) = self.refused_until {
            if now < until {
                return Some(RateDecision {
                    allowed: false,
                    remaining: 0,
                    retry_after: until - now,
                    ..self.decision
                });
            }
            self.refused_until = None;
            return None;
        }
        if self.cells > 0 && now < self.expires {
            self.cells -= 1;
            return Some(self.answer());
        }
        None
    }

    /// The answer for a cell spent locally, `cells` still left: the shared
    /// answer for the batch's last cell, as if the unspent ones were not
    /// charged yet (exact for a batch's first cell; later ones do not see
    /// other replicas' spending or the refill since the batch was taken).
    fn answer(&self) -> RateDecision {
        RateDecision {
            allowed: true,
            remaining: self
                .decision
                .remaining
                .saturating_add(self.cells)
                .min(self.decision.limit),
            reset: self
                .decision
                .reset
                .saturating_sub(self.interval * self.cells),
            retry_after: Duration::ZERO,
            ..self.decision
        }
    }

    /// How many cells to ask for next (see [`batch_cap`]).
    fn next_batch(&self, now: Instant, cap: u32) -> u32 {
        let wanted = if self.taken == 0 {
            1
        } else if self.cells == 0 && now < self.expires {
            self.taken.saturating_mul(2)
        } else {
            self.taken - self.cells.min(self.taken)
        };
        wanted.clamp(1, cap)
    }
}

/// One budget pair's allowance: its state, and a lock held while one request
/// asks the shared limiter, so that the others wait for that batch instead of
/// each taking one.
#[derive(Debug)]
struct Allowance {
    state: Mutex<AllowanceState>,
    refill: tokio::sync::Mutex<()>,
}

impl Allowance {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(AllowanceState {
                cells: 0,
                taken: 0,
                expires: now,
                decision: RateDecision {
                    allowed: true,
                    limit: 0,
                    remaining: 0,
                    reset: Duration::ZERO,
                    retry_after: Duration::ZERO,
                },
                interval: Duration::ZERO,
                refused_until: None,
                calls: 0,
                failed: false,
            }),
            refill: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AllowanceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One tenant's allowances: without an API key budget, and per fingerprint.
#[derive(Debug, Default)]
struct TenantAllowances {
    plain: Option<Arc<Allowance>>,
    keys: HashMap<Box<str>, Arc<Allowance>>,
}

/// A shared limiter with batched allowances: each replica takes a batch of
/// cells per budget pair in one call and spends them locally (see
/// [`ALLOWANCE_LIFETIME`] for the bounds and [`batch_cap`] for the sizes).
#[derive(Debug)]
struct Batched {
    shared: Arc<dyn RateLimiter>,
    allowances: RwLock<HashMap<Box<str>, TenantAllowances>>,
    count: AtomicUsize,
}

impl Batched {
    fn new(shared: Arc<dyn RateLimiter>) -> Self {
        Self {
            shared,
            allowances: RwLock::new(HashMap::new()),
            count: AtomicUsize::new(0),
        }
    }

    fn allowance(&self, tenant: &TenantId, key: Option<&str>) -> Arc<Allowance> {
        {
            let map = self.allowances.read().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = map.get(tenant.as_str()) {
                let found = match key {
                    None => t.plain.as_ref(),
                    Some(fp) => t.keys.get(fp),
                };
                if let Some(found) = found {
                    return found.clone();
                }
            }
        }
        let mut map = self.allowances.write().unwrap_or_else(|p| p.into_inner());
        if self.count.load(Ordering::Relaxed) >= MAX_LOCAL_BUCKETS {
            // Unspent cells of the dropped allowances are lost (under-serving).
            map.clear();
            self.count.store(0, Ordering::Relaxed);
        }
        let t = map.entry(tenant.as_str().into()).or_default();
        let (allowance, new) = match key {
            None => {
                let new = t.plain.is_none();
                let allowance = t.plain.get_or_insert_with(|| Arc::new(Allowance::new()));
                (allowance.clone(), new)
            }
            Some(fp) => match t.keys.get(fp) {
                Some(found) => (found.clone(), false),
                None => {
                    let allowance = Arc::new(Allowance::new());
                    t.keys.insert(fp.into(), allowance.clone());
                    (allowance, true)
                }
            },
        };
        if new {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        allowance
    }

    /// The answer, and whether the shared limiter was asked for it (rather
    /// than answered from the allowance).
    async fn check(
        &self,
        tenant: &TenantId,
        budgets: &Budgets<'_>,
    ) -> Result<(RateDecision, bool), RateLimitError> {
        let allowance = self.allowance(tenant, budgets.key.map(|(fp, _)| fp));
        let calls_seen = {
            let mut state = allowance.state();
            if let Some(decision) = state.serve(Instant::now()) {
                return Ok((decision, false));
            }
            state.calls
        };
        let _refilling = allowance.refill.lock().await;
        let wanted = {
            let mut state = allowance.state();
            let now = Instant::now();
            if state.calls != calls_seen {
                // Another request asked while this one waited: use its answer.
                if let Some(decision) = state.serve(now) {
                    return Ok((decision, false));
                }
                if state.failed {
                    return Err(RateLimitError(
                        "the shared limiter failed a moment ago".into(),
                    ));
                }
            }
            state.next_batch(now, batch_cap(budgets.quotas()))
        };
        let asked = Instant::now();
        let result = self.shared.take(&budgets.request(tenant), wanted).await;
        let mut state = allowance.state();
        state.calls += 1;
        state.failed = result.is_err();
        let grant = result?;
        state.decision = grant.decision;
        state.interval = budgets
            .quotas()
            .find(|q| q.burst == grant.decision.limit)
            .unwrap_or_default()
            .interval();
        if grant.cells == 0 || !grant.decision.allowed {
            state.cells = 0;
            state.taken = 0;
            state.refused_until = Some(asked + grant.decision.retry_after);
            return Ok((grant.decision, true));
        }
        state.refused_until = None;
        state.taken = grant.cells.min(wanted.max(1));
        state.cells = state.taken - 1;
        state.expires = asked + ALLOWANCE_LIFETIME;
        Ok((state.answer(), true))
    }
}

/// A tenant's own rate and burst from its record; each `None` keeps the
/// configured value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnQuota {
    /// Requests per second.
    pub rate: Option<u32>,
    /// Burst.
    pub burst: Option<u32>,
}

/// Which budgets apply: the defaults, and per-tenant overrides.
#[derive(Debug, Clone, Default)]
pub struct RatePolicy {
    /// Every tenant's budget unless overridden (rate 0: no tenant limit).
    pub tenant: Quota,
    /// Every API key's budget within a tenant (rate 0: no key limit).
    pub key: Quota,
    /// Budgets of named tenants, replacing `tenant`.
    pub overrides: HashMap<TenantId, Quota>,
}

/// The limits the HTTP layer applies: the policy, the shared limiter if any,
/// the local one, and the counters. Never fails: a shared limiter that cannot
/// answer is replaced by the local one for that request.
#[derive(Debug)]
pub struct Limits {
    policy: RatePolicy,
    shared: Option<Batched>,
    local: LocalLimiter,
    fallbacks: AtomicU64,
    degraded: AtomicBool,
    rejections: Mutex<HashMap<TenantId, u64>>,
}

impl Limits {
    /// Limits with a policy and, optionally, a shared limiter (Dragonfly),
    /// which is asked for batches of requests (see [`ALLOWANCE_LIFETIME`]).
    pub fn new(policy: RatePolicy, shared: Option<Arc<dyn RateLimiter>>) -> Self {
        Self {
            policy,
            shared: shared.map(Batched::new),
            local: LocalLimiter::default(),
            fallbacks: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            rejections: Mutex::new(HashMap::new()),
        }
    }

    /// No limits at all.
    pub fn off() -> Self {
        Self::new(RatePolicy::default(), None)
    }

    /// The budgets for a tenant and key fingerprint, or `None` when neither
    /// applies. Allocates nothing.
    fn budgets<'a>(
        &self,
        tenant: &TenantId,
        fingerprint: Option<&'a str>,
        own: OwnQuota,
    ) -> Option<Budgets<'a>> {
        let configured = self
            .policy
            .overrides
            .get(tenant)
            .copied()
            .unwrap_or(self.policy.tenant);
        let rate = own.rate.unwrap_or(configured.rate);
        // A tenant given a rate where none is configured gets a burst of
        // one second's worth unless it has its own.
        let burst = match own.burst.unwrap_or(configured.burst) {
            0 if rate > 0 => rate,
            b => b,
        };
        let tenant_quota = Quota { rate, burst };
        let budgets = Budgets {
            tenant: (!tenant_quota.is_off()).then_some(tenant_quota),
            key: fingerprint
                .filter(|_| !self.policy.key.is_off())
                .map(|fp| (fp, self.policy.key)),
        };
        (budgets.tenant.is_some() || budgets.key.is_some()).then_some(budgets)
    }

    /// Checks one request of `tenant` made with the key `fingerprint`.
    /// `None`: no limit applies.
    pub async fn check(
        &self,
        tenant: &TenantId,
        fingerprint: Option<&str>,
    ) -> Option<RateDecision> {
        self.check_with(tenant, fingerprint, OwnQuota::default())
            .await
    }

    /// Like [`Limits::check`], with the tenant's own `rate` and `burst` (its
    /// record's limits, set through the admin API) replacing the configured
    /// ones, each when given.
    pub async fn check_with(
        &self,
        tenant: &TenantId,
        fingerprint: Option<&str>,
        own: OwnQuota,
    ) -> Option<RateDecision> {
        let budgets = self.budgets(tenant, fingerprint, own)?;
        let decision = match &self.shared {
            Some(shared) => match shared.check(tenant, &budgets).await {
                Ok((decision, asked)) => {
                    if asked && self.degraded.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            "shared rate limiter answers again; limits hold across replicas"
                        );
                    }
                    decision
                }
                Err(error) => {
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    if !self.degraded.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%error, "shared rate limiter unavailable; each replica limits on its own until it returns");
                    }
                    self.local.check_slots(tenant, budgets.slots())
                }
            },
            None => self.local.check_slots(tenant, budgets.slots()),
        };
        if !decision.allowed {
            let mut rejections = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
            match rejections.get_mut(tenant) {
                Some(count) => *count += 1,
                None => {
                    rejections.insert(tenant.clone(), 1);
                }
            }
        }
        Some(decision)
    }

    /// Requests answered by the local limiter because the shared one failed.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Whether the last answer came from the local limiter because the
    /// shared one failed (it stays so until the shared one answers again).
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Requests of `tenant` refused with 429 by this replica.
    pub fn rejections(&self, tenant: &TenantId) -> u64 {
        let rejections = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
        rejections.get(tenant).copied().unwrap_or(0)
    }

    /// Refusals per tenant on this replica.
    pub fn all_rejections(&self) -> HashMap<TenantId, u64> {
        self.rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    fn policy(rate: u32, burst: u32) -> RatePolicy {
        RatePolicy {
            tenant: Quota { rate, burst },
            key: Quota::default(),
            overrides: HashMap::new(),
        }
    }

    #[tokio::test]
    async fn burst_then_refusal_with_retry_after() {
        let limits = Limits::new(policy(1, 3), None);
        let t = tenant("acme");
        for left in [2, 1, 0] {
            let d = limits.check(&t, None).await.unwrap();
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (3, left));
        }
        let d = limits.check(&t, None).await.unwrap();
        assert!(!d.allowed);
        assert!(d.retry_after > Duration::from_millis(500), "{d:?}");
        assert_eq!(limits.rejections(&t), 1);
        assert_eq!(limits.rejections(&tenant("other")), 0);
    }

    #[tokio::test]
    async fn overrides_and_off() {
        let mut p = policy(1, 1);
        p.overrides
            .insert(tenant("big"), Quota { rate: 0, burst: 0 });
        let limits = Limits::new(p, None);
        assert!(limits.check(&tenant("big"), None).await.is_none());
        assert!(limits.check(&tenant("small"), None).await.unwrap().allowed);
        assert!(!limits.check(&tenant("small"), None).await.unwrap().allowed);
        assert!(Limits::off().check(&tenant("x"), Some("k")).await.is_none());
    }

    #[tokio::test]
    async fn a_tenants_own_rate_and_burst_replace_the_configured_ones() {
        let limits = Limits::new(policy(100, 100), None);
        let own = OwnQuota {
            rate: Some(1),
            burst: Some(2),
        };
        let t = tenant("acme");
        assert!(limits.check_with(&t, None, own).await.unwrap().allowed);
        let second = limits.check_with(&t, None, own).await.unwrap();
        assert!(second.allowed);
        assert_eq!(second.limit, 2);
        assert!(!limits.check_with(&t, None, own).await.unwrap().allowed);
        // Only a rate, where none is configured: a burst of one second's worth.
        let none = Limits::new(policy(0, 0), None);
        let rate_only = OwnQuota {
            rate: Some(3),
            burst: None,
        };
        let d = none.check_with(&t, None, rate_only).await.unwrap();
        assert_eq!(d.limit, 3);
        assert!(
            none.check_with(&t, None, OwnQuota::default())
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn keys_keep_their_own_budgets_when_the_tenant_has_none() {
        let mut p = policy(0, 0);
        p.key = Quota { rate: 1, burst: 1 };
        let limits = Limits::new(p, None);
        let t = tenant("acme");
        assert!(limits.check(&t, None).await.is_none());
        assert!(limits.check(&t, Some("k1")).await.unwrap().allowed);
        assert!(!limits.check(&t, Some("k1")).await.unwrap().allowed);
        assert!(limits.check(&t, Some("k2")).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn key_budget_applies_beside_the_tenant_one() {
        let mut p = policy(100, 100);
        p.key = Quota { rate: 1, burst: 2 };
        let limits = Limits::new(p, None);
        let t = tenant("acme");
        assert!(limits.check(&t, Some("k1")).await.unwrap().allowed);
        let d = limits.check(&t, Some("k1")).await.unwrap();
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (2, 0), "the key's budget binds");
        assert!(!limits.check(&t, Some("k1")).await.unwrap().allowed);
        assert!(limits.check(&t, Some("k2")).await.unwrap().allowed);
    }

    #[derive(Debug)]
    struct Down;

    #[async_trait]
    impl RateLimiter for Down {
        async fn check(&self, _: &RateRequest) -> Result<RateDecision, RateLimitError> {
            Err(RateLimitError("down".into()))
        }
    }

    #[tokio::test]
    async fn a_failing_shared_limiter_falls_back_to_the_local_one() {
        let limits = Limits::new(policy(1, 2), Some(Arc::new(Down)));
        let t = tenant("acme");
        assert!(limits.check(&t, None).await.unwrap().allowed);
        assert!(limits.check(&t, None).await.unwrap().allowed);
        assert!(!limits.check(&t, None).await.unwrap().allowed);
        assert_eq!(limits.fallbacks(), 3);
        assert!(limits.degraded());
    }

    /// A shared limiter with a fixed stock of cells (no refill): grants
    /// what it has, counts its calls and the cells it handed out.
    #[derive(Debug)]
    struct Stock {
        left: Mutex<u32>,
        calls: AtomicU64,
        retry_after: Duration,
    }

    impl Stock {
        fn new(cells: u32) -> Arc<Self> {
            Arc::new(Self {
                left: Mutex::new(cells),
                calls: AtomicU64::new(0),
                retry_after: Duration::from_millis(300),
            })
        }

        fn calls(&self) -> u64 {
            self.calls.load(Ordering::Relaxed)
        }
    }

    #[async_trait]
    impl RateLimiter for Stock {
        async fn check(&self, request: &RateRequest) -> Result<RateDecision, RateLimitError> {
            Ok(self.take(request, 1).await?.decision)
        }

        async fn take(&self, request: &RateRequest, cells: u32) -> Result<Grant, RateLimitError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut left = self.left.lock().unwrap();
            let granted = cells.min(*left);
            *left -= granted;
            let limit = request.budgets[0].1.burst;
            Ok(Grant {
                cells: granted,
                decision: RateDecision {
                    allowed: granted > 0,
                    limit,
                    remaining: (*left).min(limit),
                    reset: Duration::ZERO,
                    retry_after: if granted > 0 {
                        Duration::ZERO
                    } else {
                        self.retry_after
                    },
                },
            })
        }
    }

    #[tokio::test]
    async fn a_big_budget_is_served_from_batches_that_grow_with_demand() {
        let stock = Stock::new(u32::MAX);
        let limits = Limits::new(policy(1_000_000, 1_000_000), Some(stock.clone()));
        let t = tenant("acme");
        for _ in 0..2_000 {
            assert!(limits.check(&t, None).await.unwrap().allowed);
        }
        // 1, 2, 4, ... 256, then 256 at a time: 2000 requests in ~15 calls
        // (more only if a batch expired on a slow machine).
        let calls = stock.calls();
        assert!(calls <= 40, "{calls} calls for 2000 requests");
        let handed_out = u32::MAX - *stock.left.lock().unwrap();
        assert!(
            (2_000..2_000 + MAX_BATCH).contains(&handed_out),
            "{handed_out} cells taken"
        );
        assert!(!limits.degraded());
    }

    #[tokio::test]
    async fn a_small_burst_is_asked_one_request_at_a_time() {
        let stock = Stock::new(u32::MAX);
        let limits = Limits::new(policy(20, 20), Some(stock.clone()));
        let t = tenant("acme");
        for _ in 0..10 {
            assert!(limits.check(&t, None).await.unwrap().allowed);
        }
        assert_eq!(stock.calls(), 10);
        assert_eq!(u32::MAX - *stock.left.lock().unwrap(), 10);
    }

    #[tokio::test]
    async fn unspent_cells_expire_after_their_lifetime() {
        let stock = Stock::new(u32::MAX);
        let limits = Limits::new(policy(1_000_000, 1_000_000), Some(stock.clone()));
        let t = tenant("acme");
        for _ in 0..100 {
            limits.check(&t, None).await.unwrap();
        }
        let calls = stock.calls();
        // The last batch still has cells: the next request is local...
        limits.check(&t, None).await.unwrap();
        assert_eq!(stock.calls(), calls);
        // ...but not once the batch is older than its lifetime.
        std::thread::sleep(ALLOWANCE_LIFETIME + Duration::from_millis(20));
        limits.check(&t, None).await.unwrap();
        assert_eq!(stock.calls(), calls + 1);
    }

    #[tokio::test]
    async fn a_refusal_answers_locally_until_retry_after_and_keys_have_their_own() {
        let stock = Stock::new(0);
        let mut p = policy(1_000_000, 1_000_000);
        p.key = Quota {
            rate: 1_000_000,
            burst: 1_000_000,
        };
        let limits = Limits::new(p, Some(stock.clone()));
        let t = tenant("acme");
        let d = limits.check(&t, Some("k1")).await.unwrap();
        assert!(!d.allowed);
        let again = limits.check(&t, Some("k1")).await.unwrap();
        assert!(!again.allowed);
        assert!(again.retry_after > Duration::ZERO && again.retry_after <= d.retry_after);
        assert_eq!(
            stock.calls(),
            1,
            "the second refusal came from the allowance"
        );
        assert!(!limits.check(&t, Some("k2")).await.unwrap().allowed);
        assert_eq!(stock.calls(), 2, "another key asks for itself");
        assert_eq!(limits.rejections(&t), 3);
    }
}
