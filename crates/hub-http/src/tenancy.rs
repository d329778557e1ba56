//! The HTTP side of tenancy: keys created through the admin API and tenant records, looked up through short-lived caches so that a request costs a hash-map hit, plus the usage meter and the sampled `last_used_at` of keys.
//!
//! **Invariant:** nothing here keeps a decision longer than [`CACHE_TTL`]
//! (about 500 ms). A key revoked or a tenant suspended on another replica
//! therefore stops working here within a second, without any channel between
//! replicas; a change made through this replica drops its own entry at once
//! ([`Tenancy::forget_key`], [`Tenancy::forget_tenant`]).
//!
//! Both caches are bounded: random keys or tenant ids sent by an attacker
//! cannot grow them past [`CACHE_ENTRIES`]. A full cache first drops its
//! stale entries; if every entry is fresh, the new answer is simply not kept
//! (the next request asks the directory again). Keys are held by digest only,
//! never as text.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use chrono::{DateTime, Utc};
use hub_core::tenancy::{KeyGrant, KeyId, MintedKey, Tenant, TenantDirectory, TenantState};
use hub_core::tenancy::{UsageMeter, digest};
use hub_core::{RegistryError, TenantId, ValidationError};

use crate::auth::Principal;
use crate::error::ApiError;

/// How long a key lookup or tenant record is trusted before it is asked
/// again: the bound on how late a revocation or suspension made on another
/// replica takes effect here.
pub const CACHE_TTL: Duration = Duration::from_millis(500);

/// Most entries each cache holds.
pub const CACHE_ENTRIES: usize = 10_000;

/// Whether tenants must be created through the admin API (`HUB_TENANTS_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TenantsMode {
    /// Any valid tenant id is accepted and recorded on first use.
    #[default]
    Open,
    /// Only tenants created through the admin API exist; any other
    /// `X-Tenant-ID` is 403 `unknown_tenant`.
    Registered,
}

impl TenantsMode {
    /// Parses `open` or `registered`.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(TenantsMode::Open),
            "registered" => Ok(TenantsMode::Registered),
            other => Err(ValidationError::new(
                "HUB_TENANTS_MODE",
                format!("'{other}' is not a tenants mode; use open or registered"),
            )),
        }
    }

    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantsMode::Open => "open",
            TenantsMode::Registered => "registered",
        }
    }
}

/// A small map whose entries live at most `ttl`, holding at most `capacity`.
/// Readers share a read lock; writes (misses, invalidations) are rare.
#[derive(Debug)]
struct TtlCache<K, V> {
    entries: RwLock<HashMap<K, (Instant, V)>>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            ttl,
            capacity,
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        if entries.len() < self.capacity {
            entries.insert(key, (Instant::now(), value));
        }
    }

    fn remove_where(&self, mut drop: impl FnMut(&K, &V) -> bool) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, (_, v)| !drop(k, v));
    }
}

/// The tenant directory as the HTTP layer uses it: cached key lookups and
/// tenant records, the tenants mode, the usage meter, and the keys used
/// since the last flush of `last_used_at`.
pub struct Tenancy {
    directory: Arc<dyn TenantDirectory>,
    meter: Arc<UsageMeter>,
    mode: TenantsMode,
    keys: TtlCache<[u8; 32], Option<KeyGrant>>,
    tenants: TtlCache<TenantId, Option<Arc<Tenant>>>,
    /// Keys used since the last flush, by id: at most one `last_used_at`
    /// write per key per flush, whatever its request rate.
    used: Mutex<HashMap<KeyId, (TenantId, DateTime<Utc>)>>,
    /// Misses are looked up one at a time per shard (by hash of the tenant
    /// or digest): when an entry expires under load, one request asks the
    /// directory and the others wait for its answer instead of all asking
    /// at once (which would take every pooled connection at the same time).
    misses: [tokio::sync::Mutex<()>; MISS_SHARDS],
}

/// Shards of [`Tenancy::misses`]: misses of different tenants or keys rarely wait for each other.
const MISS_SHARDS: usize = 16;

fn shard<K: Hash>(key: &K) -> usize {
    use std::hash::{BuildHasher, RandomState};
    // A fixed-seed hasher is enough: the shard only spreads the waits.
    static SEED: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    let hash = SEED.get_or_init(RandomState::new).hash_one(key);
    usize::try_from(hash % MISS_SHARDS as u64).unwrap_or(0)
}

impl std::fmt::Debug for Tenancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenancy")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Tenancy {
    /// The HTTP view of `directory` in `mode`, counting usage in `meter`.
    pub fn new(
        directory: Arc<dyn TenantDirectory>,
        meter: Arc<UsageMeter>,
        mode: TenantsMode,
    ) -> Self {
        Self::with_ttl(directory, meter, mode, CACHE_TTL)
    }

    /// Like [`Tenancy::new`] with another cache lifetime (tests use zero to
    /// see every change at once).
    pub fn with_ttl(
        directory: Arc<dyn TenantDirectory>,
        meter: Arc<UsageMeter>,
        mode: TenantsMode,
        ttl: Duration,
    ) -> Self {
        Self {
            directory,
            meter,
            mode,
            keys: TtlCache::new(ttl, CACHE_ENTRIES),
            tenants: TtlCache::new(ttl, CACHE_ENTRIES),
            used: Mutex::new(HashMap::new()),
            misses: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
        }
    }

    /// The directory itself (the admin API changes it).
    pub fn directory(&self) -> &Arc<dyn TenantDirectory> {
        &self.directory
    }

    /// The usage meter.
    pub fn meter(&self) -> &UsageMeter {
        &self.meter
    }

    /// The tenants mode.
    pub fn mode(&self) -> TenantsMode {
        self.mode
    }

    /// The principal of a presented key created through the admin API, or
    /// `None` when it is not one (unknown, revoked or expired: the caller
    /// answers all three alike, so an attacker learns nothing). Keys that do
    /// not have the minted shape are not looked up at all.
    pub async fn key_principal(&self, presented: &str) -> Result<Option<Principal>, ApiError> {
        if !MintedKey::looks_minted(presented) {
            return Ok(None);
        }
        let digest = digest(presented);
        let grant = match self.keys.get(&digest) {
            Some(grant) => grant,
            None => {
                let _one_at_a_time = self.misses[shard(&digest)].lock().await;
                match self.keys.get(&digest) {
                    Some(grant) => grant,
                    None => {
                        let grant = self.directory.key_grant(&digest).await?;
                        self.keys.insert(digest, grant.clone());
                        grant
                    }
                }
            }
        };
        let now = Utc::now();
        let Some(grant) = grant.filter(|g| g.usable_at(now)) else {
            return Ok(None);
        };
        {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            if !used.contains_key(&grant.id) {
                used.insert(grant.id.clone(), (grant.tenant.clone(), now));
            }
        }
        Ok(Some(Principal::Bound {
            fingerprint: grant.id.to_string(),
            tenants: vec![grant.tenant],
            scopes: grant.scopes,
        }))
    }

    /// Drops the cached lookup of key `id` (revoked through this replica).
    pub fn forget_key(&self, id: &KeyId) {
        self.keys
            .remove_where(|_, grant| grant.as_ref().is_some_and(|g| g.id == *id));
    }

    /// Drops the cached record of `tenant` and its keys' lookups (changed or
    /// deleted through this replica).
    pub fn forget_tenant(&self, tenant: &TenantId) {
        self.tenants.remove_where(|t, _| t == tenant);
        self.keys
            .remove_where(|_, grant| grant.as_ref().is_some_and(|g| g.tenant == *tenant));
    }

    /// The record of `tenant` as the mode makes it: in `open` mode a tenant
    /// without a record is recorded now; in `registered` mode it is `None`.
    pub async fn tenant(&self, tenant: &TenantId) -> Result<Option<Arc<Tenant>>, ApiError> {
        if let Some(found) = self.tenants.get(tenant) {
            return Ok(found);
        }
        let _one_at_a_time = self.misses[shard(tenant)].lock().await;
        if let Some(found) = self.tenants.get(tenant) {
            return Ok(found);
        }
        let found = match self.directory.tenant(tenant).await? {
            Some(t) => Some(t),
            None if self.mode == TenantsMode::Open => {
                Some(self.directory.record_tenant(tenant).await?)
            }
            None => None,
        }
        .map(Arc::new);
        self.tenants.insert(tenant.clone(), found.clone());
        Ok(found)
    }

    /// Admits a request of `tenant`'s own: 403 `unknown_tenant` when it has
    /// no record (`registered` mode), 403 `tenant_suspended` when suspended.
    pub async fn admit(&self, tenant: &TenantId) -> Result<Arc<Tenant>, ApiError> {
        match self.tenant(tenant).await? {
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "unknown_tenant",
                format!(
                    "tenant '{tenant}' does not exist; an operator creates it with POST /api/v1/admin/tenants"
                ),
            )),
            Some(t) if t.state == TenantState::Suspended => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_suspended",
                format!("tenant '{tenant}' is suspended"),
            )),
            Some(t) => Ok(t),
        }
    }

    /// Writes the `last_used_at` of the keys used since the last call. A
    /// failure is logged and the sample dropped: it is a sample, and the next
    /// flush writes newer times.
    pub async fn flush_key_use(&self) -> Result<usize, RegistryError> {
        let used: Vec<(TenantId, KeyId, DateTime<Utc>)> = {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *used)
                .into_iter()
                .map(|(id, (tenant, at))| (tenant, id, at))
                .collect()
        };
        if used.is_empty() {
            return Ok(0);
        }
        self.directory.touch_keys(&used).await?;
        Ok(used.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use hub_core::ChangeContext;
    use hub_core::tenancy::{MemoryTenants, NewKey, Scope, Scopes, TenantPatch, TenantSpec};

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    async fn with_key(
        mode: TenantsMode,
        ttl: Duration,
    ) -> (Arc<MemoryTenants>, Tenancy, MintedKey) {
        let dir = Arc::new(MemoryTenants::new());
        let ctx = ChangeContext::new(None, None);
        dir.create_tenant(&t("acme"), TenantSpec::default(), &ctx)
            .await
            .unwrap();
        let key = MintedKey::generate().unwrap();
        dir.create_key(
            &t("acme"),
            NewKey {
                id: key.id.clone(),
                digest: key.digest,
                name: "k".into(),
                scopes: Scopes::of(&[Scope::Read]),
                expires_at: None,
                created_by: "test".into(),
            },
            &ctx,
        )
        .await
        .unwrap();
        let tenancy = Tenancy::with_ttl(dir.clone(), Arc::new(UsageMeter::new()), mode, ttl);
        (dir, tenancy, key)
    }

    #[tokio::test]
    async fn keys_resolve_revoke_and_sample_their_use() {
        let (dir, tenancy, key) = with_key(TenantsMode::Open, CACHE_TTL).await;
        let p = tenancy.key_principal(&key.secret).await.unwrap().unwrap();
        assert_eq!(p.fingerprint(), Some(key.id.as_str()));
        assert!(p.has(Scope::Read) && !p.has(Scope::Write));
        assert!(p.may_act_for(&t("acme")) && !p.may_act_for(&t("other")));
        // Not minted-shaped: never looked up; minted-shaped but unknown: None.
        assert!(tenancy.key_principal("plain").await.unwrap().is_none());
        let unknown = MintedKey::generate().unwrap();
        assert!(
            tenancy
                .key_principal(&unknown.secret)
                .await
                .unwrap()
                .is_none()
        );
        // Two uses, one sample.
        tenancy.key_principal(&key.secret).await.unwrap();
        assert_eq!(tenancy.flush_key_use().await.unwrap(), 1);
        assert_eq!(tenancy.flush_key_use().await.unwrap(), 0);
        let ctx = ChangeContext::new(None, None);
        dir.revoke_key(&t("acme"), &key.id, &ctx).await.unwrap();
        // Cached for up to the TTL, unless this replica forgets it.
        tenancy.forget_key(&key.id);
        assert!(tenancy.key_principal(&key.secret).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn modes_and_suspension() {
        let (dir, open, _) = with_key(TenantsMode::Open, Duration::ZERO).await;
        assert!(open.admit(&t("fresh")).await.is_ok());
        assert!(dir.tenant(&t("fresh")).await.unwrap().is_some());
        let registered = Tenancy::with_ttl(
            dir.clone(),
            Arc::new(UsageMeter::new()),
            TenantsMode::Registered,
            Duration::ZERO,
        );
        assert_eq!(
            registered.admit(&t("nobody")).await.unwrap_err().code(),
            "unknown_tenant"
        );
        assert!(dir.tenant(&t("nobody")).await.unwrap().is_none());
        let ctx = ChangeContext::new(None, None);
        dir.update_tenant(
            &t("acme"),
            TenantPatch {
                state: Some(TenantState::Suspended),
                ..Default::default()
            },
            &ctx,
        )
        .await
        .unwrap();
        assert_eq!(
            registered.admit(&t("acme")).await.unwrap_err().code(),
            "tenant_suspended"
        );
        assert_eq!(
            TenantsMode::parse("Registered").unwrap().as_str(),
            "registered"
        );
        assert!(TenantsMode::parse("closed").is_err());
    }

    #[test]
    fn caches_are_bounded() {
        let cache: TtlCache<u32, u32> = TtlCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            cache.insert(i, i);
        }
        assert_eq!(cache.entries.read().unwrap().len(), 3);
        let expired: TtlCache<u32, u32> = TtlCache::new(Duration::ZERO, 3);
        for i in 0..10 {
            expired.insert(i, i);
        }
        assert!(expired.get(&9).is_none());
        assert!(expired.entries.read().unwrap().len() <= 3);
    }
}
