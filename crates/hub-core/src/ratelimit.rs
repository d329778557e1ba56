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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

type Direct =
    governor::RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Most buckets the local limiter keeps; past it they are all dropped (which
/// refills every budget once), so that made-up tenant ids cannot grow memory
/// without bound.
const MAX_LOCAL_BUCKETS: usize = 100_000;

/// In-process adapter on `governor` (GCRA): the limiter of the embedded mode
/// and the fallback of the Dragonfly one. Per replica: two replicas each give
/// a tenant its full budget.
pub struct LocalLimiter {
    clock: DefaultClock,
    buckets: Mutex<HashMap<(String, String), Arc<Direct>>>,
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
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl LocalLimiter {
    fn bucket(&self, tenant: &TenantId, name: &str, quota: Quota) -> Arc<Direct> {
        let gov = governor::Quota::with_period(quota.interval())
            .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(quota.burst).unwrap_or(NonZeroU32::MIN));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_LOCAL_BUCKETS {
            buckets.clear();
        }
        buckets
            .entry((tenant.as_str().to_owned(), name.to_owned()))
            .or_insert_with(|| {
                Arc::new(
                    governor::RateLimiter::direct_with_clock(gov, self.clock.clone())
                        .with_middleware::<StateInformationMiddleware>(),
                )
            })
            .clone()
    }

    fn one(&self, bucket: &Direct, quota: Quota) -> RateDecision {
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
    pub fn check_now(&self, request: &RateRequest) -> RateDecision {
        let mut decision: Option<RateDecision> = None;
        for (name, quota) in &request.budgets {
            let one = self.one(&self.bucket(&request.tenant, name, *quota), *quota);
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
    shared: Option<Arc<dyn RateLimiter>>,
    local: LocalLimiter,
    fallbacks: AtomicU64,
    degraded: AtomicBool,
    rejections: Mutex<HashMap<TenantId, u64>>,
}

impl Limits {
    /// Limits with a policy and, optionally, a shared limiter (Dragonfly).
    pub fn new(policy: RatePolicy, shared: Option<Arc<dyn RateLimiter>>) -> Self {
        Self {
            policy,
            shared,
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

    /// The request for a tenant and key fingerprint, or `None` when neither
    /// budget applies.
    fn request(&self, tenant: &TenantId, fingerprint: Option<&str>) -> Option<RateRequest> {
        let tenant_quota = self
            .policy
            .overrides
            .get(tenant)
            .copied()
            .unwrap_or(self.policy.tenant);
        let mut budgets = Vec::with_capacity(2);
        if !tenant_quota.is_off() {
            budgets.push(("tenant".to_owned(), tenant_quota));
        }
        if let Some(fingerprint) = fingerprint.filter(|_| !self.policy.key.is_off()) {
            budgets.push((format!("key:{fingerprint}"), self.policy.key));
        }
        (!budgets.is_empty()).then(|| RateRequest {
            tenant: tenant.clone(),
            budgets,
        })
    }

    /// Checks one request of `tenant` made with the key `fingerprint`.
    /// `None`: no limit applies.
    pub async fn check(
        &self,
        tenant: &TenantId,
        fingerprint: Option<&str>,
    ) -> Option<RateDecision> {
        let request = self.request(tenant, fingerprint)?;
        let decision = match &self.shared {
            Some(shared) => match shared.check(&request).await {
                Ok(decision) => {
                    if self.degraded.swap(false, Ordering::Relaxed) {
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
                    self.local.check_now(&request)
                }
            },
            None => self.local.check_now(&request),
        };
        if !decision.allowed {
            let mut rejections = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
            *rejections.entry(tenant.clone()).or_insert(0) += 1;
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
}
