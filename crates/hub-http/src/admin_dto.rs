//! Wire types of the admin API (`/api/v1/admin/...`): tenants, keys, usage and audit as clients send and read them.
//!
//! Request bodies refuse unknown fields: a typo in an admin change (say
//! `max_instance`) must be a 422, not a change silently not made.

use chrono::{DateTime, NaiveDate, Utc};
use hub_core::tenancy::{
    ApiKeyRecord, AuditEntry, Tenant, TenantLimits, TenantState, UsageCounts, UsageDay,
};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::ToSchema;

use crate::dto::rfc3339;

fn rfc3339_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// A tenant's own limits; an absent or `null` field means the configured default applies.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Most instances registered at once (0-10,000,000); a registration past
    /// it is 429 `quota_exceeded`.
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub max_instances: Option<u32>,
    /// Most watch streams open at once (0-10,000,000).
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub max_watchers: Option<u32>,
    /// Requests per second, overriding `HUB_RATE_LIMIT_RPS` (1-10,000,000).
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub rate: Option<u32>,
    /// Burst, overriding `HUB_RATE_LIMIT_BURST` (1-10,000,000).
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub burst: Option<u32>,
}

impl From<LimitsBody> for TenantLimits {
    fn from(l: LimitsBody) -> Self {
        TenantLimits {
            max_instances: l.max_instances,
            max_watchers: l.max_watchers,
            rate: l.rate,
            burst: l.burst,
        }
    }
}

impl From<TenantLimits> for LimitsBody {
    fn from(l: TenantLimits) -> Self {
        LimitsBody {
            max_instances: l.max_instances,
            max_watchers: l.max_watchers,
            rate: l.rate,
            burst: l.burst,
        }
    }
}

/// The state of a tenant on the wire.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateBody {
    /// Served normally.
    Active,
    /// Every call of its own is refused with 403 `tenant_suspended`.
    Suspended,
}

impl From<StateBody> for TenantState {
    fn from(s: StateBody) -> Self {
        match s {
            StateBody::Active => TenantState::Active,
            StateBody::Suspended => TenantState::Suspended,
        }
    }
}

impl From<TenantState> for StateBody {
    fn from(s: TenantState) -> Self {
        match s {
            TenantState::Active => StateBody::Active,
            TenantState::Suspended => StateBody::Suspended,
        }
    }
}

/// `POST /api/v1/admin/tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tenant_id": "acme", "display_name": "Acme Trading", "limits": {"max_instances": 100}}))]
pub struct CreateTenantRequest {
    /// The tenant's id (its `X-Tenant-ID`): 1-100 of `[A-Za-z0-9_-]`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,100}$")]
    pub tenant_id: String,
    /// A name for humans, 1-200 characters; default: the id.
    #[schema(min_length = 1, max_length = 200)]
    pub display_name: Option<String>,
    /// Initial state; default `active`.
    pub state: Option<StateBody>,
    /// Its limits; default: the configured defaults.
    pub limits: Option<LimitsBody>,
}

/// `PATCH /api/v1/admin/tenants/{tenant_id}`: each field given replaces
/// that part (`limits` as a whole). `{"state":"suspended"}` suspends,
/// `{"state":"active"}` reactivates.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"state": "suspended"}))]
pub struct PatchTenantRequest {
    /// New name for humans, 1-200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub display_name: Option<String>,
    /// New state.
    pub state: Option<StateBody>,
    /// New limits, replacing all four.
    pub limits: Option<LimitsBody>,
}

/// A tenant.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "tenant_id": "acme", "display_name": "Acme Trading", "state": "active",
    "limits": {"max_instances": 100, "max_watchers": null, "rate": null, "burst": null},
    "created_at": "2026-11-27T14:35:05.123Z", "updated_at": "2026-11-27T14:35:05.123Z"
}))]
pub struct TenantBody {
    /// Its id.
    pub tenant_id: String,
    /// Its name for humans.
    pub display_name: String,
    /// Active or suspended.
    pub state: StateBody,
    /// Its own limits (`null`: the configured default).
    pub limits: LimitsBody,
    /// When it was created (or first used, in `open` mode).
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl From<&Tenant> for TenantBody {
    fn from(t: &Tenant) -> Self {
        TenantBody {
            tenant_id: t.id.to_string(),
            display_name: t.display_name.clone(),
            state: t.state.into(),
            limits: t.limits.into(),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// `GET /api/v1/admin/tenants`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantListBody {
    /// Every tenant, by id.
    pub tenants: Vec<TenantBody>,
    /// How many.
    pub count: usize,
}

/// `DELETE /api/v1/admin/tenants/{tenant_id}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"tenant_id": "acme", "instances_removed": 3}))]
pub struct DeletedTenantBody {
    /// The deleted tenant.
    pub tenant_id: String,
    /// How many of its instances were deregistered first.
    pub instances_removed: usize,
}

/// `POST /api/v1/admin/tenants/{tenant_id}/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "gateway writer", "scopes": ["write"], "expires_at": "2027-01-01T00:00:00Z"}))]
pub struct CreateKeyRequest {
    /// A name for humans, 1-200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// What it may do: one or more of `read`, `write`, `admin`.
    #[schema(value_type = Vec<ScopeDoc>, min_items = 1)]
    pub scopes: Vec<String>,
    /// When it stops working (RFC 3339, in the future); default: never.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// A scope.
#[derive(Debug, ToSchema)]
#[schema(as = Scope)]
#[allow(dead_code)]
pub enum ScopeDoc {
    /// Lookups, lists, the dashboard.
    #[schema(rename = "read")]
    Read,
    /// Register, heartbeat, deregister.
    #[schema(rename = "write")]
    Write,
    /// Manage its own tenant's keys, read its usage and audit.
    #[schema(rename = "admin")]
    Admin,
}

/// A key, as lists show it: never its secret or digest.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyBody {
    /// Its public id (16 hex digits), part of the key itself.
    #[schema(pattern = "^[0-9a-f]{16}$")]
    pub key_id: String,
    /// The tenant it acts for.
    pub tenant_id: String,
    /// Its name.
    pub name: String,
    /// What it may do.
    #[schema(value_type = Vec<ScopeDoc>)]
    pub scopes: Vec<&'static str>,
    /// When it stops working, if ever.
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Fingerprint of the key or token that created it.
    pub created_by: String,
    /// When it was created.
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// When it was last used (sampled: up to a flush interval late).
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked; a revoked key never works again.
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<&ApiKeyRecord> for KeyBody {
    fn from(k: &ApiKeyRecord) -> Self {
        KeyBody {
            key_id: k.id.to_string(),
            tenant_id: k.tenant.to_string(),
            name: k.name.clone(),
            scopes: k.scopes.to_vec().into_iter().map(|s| s.as_str()).collect(),
            expires_at: k.expires_at,
            created_by: k.created_by.clone(),
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A key just created: its record and, this once, the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyBody {
    /// The key to send in `X-API-Key`: `hubk_<key_id>_<secret>`. Shown only
    /// in this answer; the hub keeps only its SHA-256 digest.
    #[schema(pattern = "^hubk_[0-9a-f]{16}_[0-9a-f]{64}$")]
    pub key: String,
    /// Its record.
    #[serde(flatten)]
    pub record: KeyBody,
}

/// `GET /api/v1/admin/tenants/{tenant_id}/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyListBody {
    /// The tenant's keys, revoked ones included, oldest first.
    pub keys: Vec<KeyBody>,
    /// How many.
    pub count: usize,
}

/// Usage counts of a day or a period.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct UsageCountsBody {
    /// Read requests (lookups, lists, dashboard).
    pub requests_read: u64,
    /// Write requests (register, heartbeat, deregister).
    pub requests_write: u64,
    /// Admin requests.
    pub requests_admin: u64,
    /// Successful registrations.
    pub registrations: u64,
    /// Successful heartbeats.
    pub heartbeats: u64,
    /// Registry events published.
    pub events_published: u64,
    /// Most instances at once (over a period: the greatest day).
    pub peak_instances: u64,
}

impl From<UsageCounts> for UsageCountsBody {
    fn from(c: UsageCounts) -> Self {
        UsageCountsBody {
            requests_read: c.requests_read,
            requests_write: c.requests_write,
            requests_admin: c.requests_admin,
            registrations: c.registrations,
            heartbeats: c.heartbeats,
            events_published: c.events_published,
            peak_instances: c.peak_instances,
        }
    }
}

/// One day of usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageDayBody {
    /// The day (UTC), `YYYY-MM-DD`.
    #[schema(value_type = String, format = Date)]
    pub day: NaiveDate,
    /// Its counts.
    #[serde(flatten)]
    pub counts: UsageCountsBody,
}

impl From<&UsageDay> for UsageDayBody {
    fn from(d: &UsageDay) -> Self {
        UsageDayBody {
            day: d.day,
            counts: d.counts.into(),
        }
    }
}

/// `GET /api/v1/admin/tenants/{tenant_id}/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBody {
    /// Whose.
    pub tenant_id: String,
    /// First day of the period.
    #[schema(value_type = String, format = Date)]
    pub from: NaiveDate,
    /// Last day of the period.
    #[schema(value_type = String, format = Date)]
    pub to: NaiveDate,
    /// Days with use, oldest first; today includes what is counted and not yet flushed.
    pub days: Vec<UsageDayBody>,
    /// The sums over the period (peak: the greatest day).
    pub total: UsageCountsBody,
}

/// One admin change.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryBody {
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
    #[serde(serialize_with = "rfc3339")]
    pub at: DateTime<Utc>,
    /// What changed (never a secret).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl From<&AuditEntry> for AuditEntryBody {
    fn from(a: &AuditEntry) -> Self {
        AuditEntryBody {
            action: a.action.clone(),
            target: a.target.clone(),
            actor: a.actor.clone(),
            request_id: a.request_id.clone(),
            at: a.at,
            details: a.details.clone(),
        }
    }
}

/// `GET /api/v1/admin/tenants/{tenant_id}/audit`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditBody {
    /// Whose.
    pub tenant_id: String,
    /// The newest changes first.
    pub entries: Vec<AuditEntryBody>,
    /// How many.
    pub count: usize,
}
