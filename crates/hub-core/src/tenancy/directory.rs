//! The [`TenantDirectory`] port: tenants, keys, admin audit and usage, stored in PostgreSQL (hub-store) or memory ([`super::MemoryTenants`]).

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::{
    ApiKeyRecord, KeyGrant, KeyId, NewKey, Tenant, TenantPatch, TenantSpec, UsageDay, UsageDelta,
    UsageNotStored,
};
use crate::{ChangeContext, RegistryError, TenantId};

/// One admin change, as the audit keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// The tenant the change was about.
    pub tenant: TenantId,
    /// `tenant.created`, `tenant.updated`, `tenant.suspended`,
    /// `tenant.reactivated`, `tenant.deleted`, `key.created`, `key.revoked`.
    pub action: String,
    /// What it changed: the tenant id or the key id.
    pub target: String,
    /// Fingerprint of the key or token that made it.
    pub actor: Option<String>,
    /// The request that made it.
    pub request_id: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
    /// What changed (never a secret).
    pub details: serde_json::Value,
}

/// Tenants, their keys, the admin audit and usage per day.
///
/// Every change writes its audit row in the same transaction (or under the
/// same lock) as the change itself, so no change goes unaudited.
#[async_trait]
pub trait TenantDirectory: Send + Sync + 'static {
    /// Creates a tenant. `Conflict` if it exists (whether created through
    /// the API or recorded on first use in `open` mode).
    async fn create_tenant(
        &self,
        id: &TenantId,
        spec: TenantSpec,
        ctx: &ChangeContext,
    ) -> Result<Tenant, RegistryError>;

    /// Records a tenant on first use (`open` mode): creates it active with
    /// default limits if it does not exist; never changes an existing one.
    /// Returns the tenant as stored.
    async fn record_tenant(&self, id: &TenantId) -> Result<Tenant, RegistryError>;

    /// One tenant, or `None`.
    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, RegistryError>;

    /// Every tenant, by id.
    async fn tenants(&self) -> Result<Vec<Tenant>, RegistryError>;

    /// Applies `patch`. `NotFound` if the tenant does not exist.
    async fn update_tenant(
        &self,
        id: &TenantId,
        patch: TenantPatch,
        ctx: &ChangeContext,
    ) -> Result<Tenant, RegistryError>;

    /// Deletes the tenant record, its keys (they stop working at once) and
    /// its limits, keeping its audit rows. Its instances are removed by the
    /// caller through the registry first, so that watchers and buses see
    /// them go. `NotFound` if it does not exist.
    async fn delete_tenant(&self, id: &TenantId, ctx: &ChangeContext) -> Result<(), RegistryError>;

    /// Stores a key for `tenant`. `NotFound` if the tenant does not exist.
    async fn create_key(
        &self,
        tenant: &TenantId,
        key: NewKey,
        ctx: &ChangeContext,
    ) -> Result<ApiKeyRecord, RegistryError>;

    /// The tenant's keys, revoked ones included, oldest first.
    async fn keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, RegistryError>;

    /// Revokes a key of `tenant` for good. `NotFound` if the tenant has no
    /// such key. Revoking a revoked key answers it unchanged.
    async fn revoke_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        ctx: &ChangeContext,
    ) -> Result<ApiKeyRecord, RegistryError>;

    /// The key whose SHA-256 digest is `digest`, or `None`. This is the one
    /// lookup made before the tenant is known: it answers nothing but that
    /// key's grant.
    async fn key_grant(&self, digest: &[u8; 32]) -> Result<Option<KeyGrant>, RegistryError>;

    /// Records when keys were last used (sampled by the caller).
    async fn touch_keys(
        &self,
        used: &[(TenantId, KeyId, DateTime<Utc>)],
    ) -> Result<(), RegistryError>;

    /// Adds counted usage (each tenant's rows in its own scoped
    /// transaction); peaks are kept as the greater value. A tenant whose
    /// rows cannot be stored does not stop the others: the error names the
    /// deltas that were not stored, and only those may be retried.
    async fn add_usage(&self, deltas: Vec<UsageDelta>) -> Result<(), UsageNotStored>;

    /// Usage of `tenant` per day, `from..=to`, oldest first; days without
    /// use are absent.
    async fn usage(
        &self,
        tenant: &TenantId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<UsageDay>, RegistryError>;

    /// The newest `limit` audit rows of `tenant`, newest first.
    async fn audit(&self, tenant: &TenantId, limit: u32) -> Result<Vec<AuditEntry>, RegistryError>;

    /// Removes audit rows older than `before`; returns how many.
    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, RegistryError>;
}
