//! [`MemoryTenants`]: the in-memory [`TenantDirectory`] of the embedded mode, of embedders and of tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::{
    ApiKeyRecord, AuditEntry, KeyGrant, KeyId, NewKey, Tenant, TenantDirectory, TenantPatch,
    TenantSpec, TenantState, UsageCounts, UsageDay, UsageDelta, UsageNotStored,
};
use crate::{ChangeContext, RegistryError, TenantId};

#[derive(Debug, Default)]
struct State {
    tenants: BTreeMap<TenantId, Tenant>,
    keys: Vec<(ApiKeyRecord, [u8; 32])>,
    audit: Vec<AuditEntry>,
    usage: HashMap<(TenantId, NaiveDate), UsageCounts>,
}

/// Tenants, keys, audit and usage in memory. One lock: every operation is
/// short and admin changes are rare.
#[derive(Debug, Default)]
pub struct MemoryTenants {
    state: Mutex<State>,
}

impl MemoryTenants {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn audit(
    state: &mut State,
    tenant: &TenantId,
    action: &str,
    target: &str,
    ctx: &ChangeContext,
    details: serde_json::Value,
) {
    state.audit.push(AuditEntry {
        tenant: tenant.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        actor: ctx.actor().map(str::to_owned),
        request_id: ctx.request_id().map(str::to_owned),
        at: Utc::now(),
        details,
    });
}

fn not_found(tenant: &TenantId) -> RegistryError {
    RegistryError::not_found(format!("tenant '{tenant}'"))
}

#[async_trait]
impl TenantDirectory for MemoryTenants {
    async fn create_tenant(
        &self,
        id: &TenantId,
        spec: TenantSpec,
        ctx: &ChangeContext,
    ) -> Result<Tenant, RegistryError> {
        spec.validate()?;
        let mut state = self.lock();
        if state.tenants.contains_key(id) {
            return Err(RegistryError::Conflict(format!(
                "tenant '{id}' already exists"
            )));
        }
        let now = Utc::now();
        let tenant = Tenant {
            id: id.clone(),
            display_name: spec.display_name.unwrap_or_else(|| id.to_string()),
            state: spec.state.unwrap_or(TenantState::Active),
            limits: spec.limits,
            created_at: now,
            updated_at: now,
        };
        state.tenants.insert(id.clone(), tenant.clone());
        audit(
            &mut state,
            id,
            "tenant.created",
            id.as_str(),
            ctx,
            tenant.audit_details(),
        );
        Ok(tenant)
    }

    async fn record_tenant(&self, id: &TenantId) -> Result<Tenant, RegistryError> {
        let mut state = self.lock();
        let now = Utc::now();
        Ok(state
            .tenants
            .entry(id.clone())
            .or_insert_with(|| Tenant {
                id: id.clone(),
                display_name: id.to_string(),
                state: TenantState::Active,
                limits: Default::default(),
                created_at: now,
                updated_at: now,
            })
            .clone())
    }

    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, RegistryError> {
        Ok(self.lock().tenants.get(id).cloned())
    }

    async fn tenants(&self) -> Result<Vec<Tenant>, RegistryError> {
        Ok(self.lock().tenants.values().cloned().collect())
    }

    async fn update_tenant(
        &self,
        id: &TenantId,
        patch: TenantPatch,
        ctx: &ChangeContext,
    ) -> Result<Tenant, RegistryError> {
        patch.validate()?;
        let mut state = self.lock();
        let tenant = state.tenants.get_mut(id).ok_or_else(|| not_found(id))?;
        let before = tenant.state;
        if let Some(name) = patch.display_name.clone() {
            tenant.display_name = name;
        }
        if let Some(s) = patch.state {
            tenant.state = s;
        }
        if let Some(limits) = patch.limits {
            tenant.limits = limits;
        }
        tenant.updated_at = Utc::now();
        let updated = tenant.clone();
        let action = updated.state.update_action(before);
        audit(
            &mut state,
            id,
            action,
            id.as_str(),
            ctx,
            patch.audit_details(),
        );
        Ok(updated)
    }

    async fn delete_tenant(&self, id: &TenantId, ctx: &ChangeContext) -> Result<(), RegistryError> {
        let mut state = self.lock();
        if state.tenants.remove(id).is_none() {
            return Err(not_found(id));
        }
        state.keys.retain(|(k, _)| k.tenant != *id);
        state.usage.retain(|(t, _), _| t != id);
        audit(
            &mut state,
            id,
            "tenant.deleted",
            id.as_str(),
            ctx,
            serde_json::json!({}),
        );
        Ok(())
    }

    async fn create_key(
        &self,
        tenant: &TenantId,
        key: NewKey,
        ctx: &ChangeContext,
    ) -> Result<ApiKeyRecord, RegistryError> {
        key.validate()?;
        let mut state = self.lock();
        if !state.tenants.contains_key(tenant) {
            return Err(not_found(tenant));
        }
        if state
            .keys
            .iter()
            .any(|(k, d)| k.id == key.id || *d == key.digest)
        {
            return Err(RegistryError::Conflict(format!(
                "key '{}' already exists",
                key.id
            )));
        }
        let record = ApiKeyRecord {
            id: key.id,
            tenant: tenant.clone(),
            name: key.name,
            scopes: key.scopes,
            expires_at: key.expires_at,
            created_by: key.created_by,
            created_at: Utc::now(),
            last_used_at: None,
            revoked_at: None,
        };
        state.keys.push((record.clone(), key.digest));
        audit(
            &mut state,
            tenant,
            "key.created",
            record.id.as_str(),
            ctx,
            serde_json::json!({"name": record.name, "scopes": record.scopes.to_vec(), "expires_at": record.expires_at}),
        );
        Ok(record)
    }

    async fn keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, RegistryError> {
        Ok(self
            .lock()
            .keys
            .iter()
            .filter(|(k, _)| k.tenant == *tenant)
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn revoke_key(
        &self,
        tenant: &TenantId,
        id: &KeyId,
        ctx: &ChangeContext,
    ) -> Result<ApiKeyRecord, RegistryError> {
        let mut state = self.lock();
        let (record, _) = state
            .keys
            .iter_mut()
            .find(|(k, _)| k.tenant == *tenant && k.id == *id)
            .ok_or_else(|| RegistryError::not_found(format!("key '{id}'")))?;
        if record.revoked_at.is_some() {
            return Ok(record.clone());
        }
        record.revoked_at = Some(Utc::now());
        let record = record.clone();
        audit(
            &mut state,
            tenant,
            "key.revoked",
            id.as_str(),
            ctx,
            serde_json::json!({"name": record.name}),
        );
        Ok(record)
    }

    async fn key_grant(&self, digest: &[u8; 32]) -> Result<Option<KeyGrant>, RegistryError> {
        Ok(self
            .lock()
            .keys
            .iter()
            .find(|(_, d)| d == digest)
            .map(|(k, _)| KeyGrant {
                id: k.id.clone(),
                tenant: k.tenant.clone(),
                scopes: k.scopes,
                expires_at: k.expires_at,
                revoked: k.revoked_at.is_some(),
            }))
    }

    async fn touch_keys(
        &self,
        used: &[(TenantId, KeyId, DateTime<Utc>)],
    ) -> Result<(), RegistryError> {
        let mut state = self.lock();
        for (tenant, id, at) in used {
            if let Some((k, _)) = state
                .keys
                .iter_mut()
                .find(|(k, _)| k.tenant == *tenant && k.id == *id)
            {
                k.last_used_at = Some(k.last_used_at.map_or(*at, |t| t.max(*at)));
            }
        }
        Ok(())
    }

    async fn add_usage(&self, deltas: Vec<UsageDelta>) -> Result<(), UsageNotStored> {
        let mut state = self.lock();
        for d in &deltas {
            state
                .usage
                .entry((d.tenant.clone(), d.day))
                .or_default()
                .add(&d.counts);
        }
        Ok(())
    }

    async fn usage(
        &self,
        tenant: &TenantId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<UsageDay>, RegistryError> {
        let state = self.lock();
        let mut days: Vec<UsageDay> = state
            .usage
            .iter()
            .filter(|((t, day), _)| t == tenant && (from..=to).contains(day))
            .map(|((_, day), counts)| UsageDay {
                day: *day,
                counts: *counts,
            })
            .collect();
        days.sort_by_key(|d| d.day);
        Ok(days)
    }

    async fn audit(&self, tenant: &TenantId, limit: u32) -> Result<Vec<AuditEntry>, RegistryError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(self
            .lock()
            .audit
            .iter()
            .rev()
            .filter(|a| a.tenant == *tenant)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, RegistryError> {
        let mut state = self.lock();
        let len = state.audit.len();
        state.audit.retain(|a| a.at >= before);
        Ok(u64::try_from(len - state.audit.len()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MintedKey, Scopes};
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn key_lifecycle_and_audit() {
        let dir = MemoryTenants::new();
        let ctx = ChangeContext::new(Some("op".into()), Some("r1".into()));
        dir.create_tenant(&t("acme"), TenantSpec::default(), &ctx)
            .await
            .unwrap();
        assert!(matches!(
            dir.create_tenant(&t("acme"), TenantSpec::default(), &ctx)
                .await,
            Err(RegistryError::Conflict(_))
        ));
        let minted = MintedKey::generate().unwrap();
        let new = NewKey {
            id: minted.id.clone(),
            digest: minted.digest,
            name: "ci".into(),
            scopes: Scopes::ALL,
            expires_at: None,
            created_by: "op".into(),
        };
        dir.create_key(&t("acme"), new, &ctx).await.unwrap();
        let grant = dir.key_grant(&minted.digest).await.unwrap().unwrap();
        assert_eq!(grant.tenant, t("acme"));
        assert!(!grant.revoked);
        assert!(matches!(
            dir.revoke_key(&t("other"), &minted.id, &ctx).await,
            Err(RegistryError::NotFound(_))
        ));
        dir.revoke_key(&t("acme"), &minted.id, &ctx).await.unwrap();
        assert!(
            dir.key_grant(&minted.digest)
                .await
                .unwrap()
                .unwrap()
                .revoked
        );
        dir.delete_tenant(&t("acme"), &ctx).await.unwrap();
        assert!(dir.key_grant(&minted.digest).await.unwrap().is_none());
        let actions: Vec<_> = dir
            .audit(&t("acme"), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(
            actions,
            [
                "tenant.deleted",
                "key.revoked",
                "key.created",
                "tenant.created"
            ]
        );
    }
}
