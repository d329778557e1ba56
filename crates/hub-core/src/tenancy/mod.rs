//! Tenants as records (state, limits), API keys with scopes, admin audit and usage per day: the vocabulary and the [`TenantDirectory`] port.
//!
//! A tenant used to exist implicitly: any valid `X-Tenant-ID` worked. Now a
//! tenant is a record with a display name, a state (`active`, `suspended`)
//! and limits that override the configured defaults. Keys created through the
//! admin API belong to one tenant, carry scopes and are stored only as a
//! SHA-256 digest; the secret is shown once, at creation.
//!
//! **Invariant:** a key is looked up by its digest only
//! ([`TenantDirectory::key_grant`]), which answers that key's tenant, scopes,
//! expiry and revocation and nothing else: the lookup happens before the
//! tenant is known, so it must not be able to read other keys.

mod directory;
mod key;
mod memory;
mod usage;

pub use directory::{AuditEntry, TenantDirectory};
pub use key::{
    ApiKeyRecord, KEY_PREFIX, KeyGrant, KeyId, MAX_KEY_NAME_CHARS, MintedKey, NewKey, Scope,
    Scopes, digest,
};
pub use memory::MemoryTenants;
pub use usage::{RequestClass, UsageCounts, UsageDay, UsageDelta, UsageMeter, UsageNotStored};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{TenantId, ValidationError};

/// Whether a tenant may use the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// Served normally.
    Active,
    /// Every call of the tenant's own is refused with 403 `tenant_suspended`;
    /// operators may still act on it. Reversible.
    Suspended,
}

impl TenantState {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Active => "active",
            TenantState::Suspended => "suspended",
        }
    }

    /// The audit action of a change from `before` to `self`: every
    /// directory adapter names its audit rows with this one rule.
    pub fn update_action(self, before: TenantState) -> &'static str {
        match (before, self) {
            (TenantState::Active, TenantState::Suspended) => "tenant.suspended",
            (TenantState::Suspended, TenantState::Active) => "tenant.reactivated",
            _ => "tenant.updated",
        }
    }

    /// Parses the stored and wire spelling.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        match text {
            "active" => Ok(TenantState::Active),
            "suspended" => Ok(TenantState::Suspended),
            other => Err(ValidationError::new(
                "state",
                format!("'{other}' is not a tenant state; use active or suspended"),
            )),
        }
    }
}

/// Upper bounds for [`TenantLimits`] fields: beyond them a value is a typo,
/// not a plan.
pub const MAX_LIMIT_VALUE: u32 = 10_000_000;

/// A tenant's own limits; `None` means the configured default applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantLimits {
    /// Most instances the tenant may have registered at once.
    pub max_instances: Option<u32>,
    /// Most watch streams the tenant may hold open at once.
    pub max_watchers: Option<u32>,
    /// Requests per second (rate limit), overriding `HUB_RATE_LIMIT_RPS`.
    pub rate: Option<u32>,
    /// Burst of the rate limit, overriding `HUB_RATE_LIMIT_BURST`.
    pub burst: Option<u32>,
}

impl TenantLimits {
    /// Checks every set limit is within `1..=MAX_LIMIT_VALUE` (`max_instances`
    /// and `max_watchers` may be 0: a tenant that may hold none).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let fields = [
            ("limits.max_instances", self.max_instances, 0),
            ("limits.max_watchers", self.max_watchers, 0),
            ("limits.rate", self.rate, 1),
            ("limits.burst", self.burst, 1),
        ];
        for (field, value, min) in fields {
            if let Some(v) = value
                && !(min..=MAX_LIMIT_VALUE).contains(&v)
            {
                return Err(ValidationError::new(
                    field,
                    format!("must be between {min} and {MAX_LIMIT_VALUE}"),
                ));
            }
        }
        Ok(())
    }
}

/// The longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;

/// Checks a display name: 1-200 characters, no control characters.
pub fn validate_display_name(name: &str) -> Result<(), ValidationError> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_DISPLAY_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "display_name",
            format!("must be 1-{MAX_DISPLAY_NAME_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

/// A stored tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its id (the `X-Tenant-ID` value).
    pub id: TenantId,
    /// A human name; defaults to the id.
    pub display_name: String,
    /// Active or suspended.
    pub state: TenantState,
    /// Its own limits.
    pub limits: TenantLimits,
    /// When it was created (or first used, in `open` mode).
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// What creating a tenant takes besides its id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantSpec {
    /// Display name; `None` = the id.
    pub display_name: Option<String>,
    /// Initial state; `None` = active.
    pub state: Option<TenantState>,
    /// Its limits.
    pub limits: TenantLimits,
}

impl TenantSpec {
    /// Checks the display name and limits; every adapter calls it first.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.limits.validate()?;
        self.display_name
            .as_deref()
            .map_or(Ok(()), validate_display_name)
    }
}

/// A change to a tenant: each `Some` replaces that part (limits as a whole).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPatch {
    /// New display name.
    pub display_name: Option<String>,
    /// New state (suspend, reactivate).
    pub state: Option<TenantState>,
    /// New limits, replacing all four.
    pub limits: Option<TenantLimits>,
}

impl Tenant {
    /// The audit details of its creation.
    pub fn audit_details(&self) -> serde_json::Value {
        serde_json::json!({"display_name": self.display_name, "state": self.state, "limits": self.limits})
    }
}

impl TenantPatch {
    /// The audit details of this change.
    pub fn audit_details(&self) -> serde_json::Value {
        serde_json::json!({"display_name": self.display_name, "state": self.state, "limits": self.limits})
    }

    /// Checks the display name and limits; every adapter calls it first.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(limits) = &self.limits {
            limits.validate()?;
        }
        self.display_name
            .as_deref()
            .map_or(Ok(()), validate_display_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_names_are_checked() {
        assert!(TenantLimits::default().validate().is_ok());
        let zero_rate = TenantLimits {
            rate: Some(0),
            ..Default::default()
        };
        assert_eq!(zero_rate.validate().unwrap_err().field(), "limits.rate");
        let no_instances = TenantLimits {
            max_instances: Some(0),
            ..Default::default()
        };
        assert!(no_instances.validate().is_ok());
        assert!(validate_display_name("Acme Trading").is_ok());
        assert!(validate_display_name("").is_err());
        assert!(validate_display_name("a\nb").is_err());
        assert_eq!(
            TenantState::parse("suspended").unwrap().as_str(),
            "suspended"
        );
        assert!(TenantState::parse("gone").is_err());
    }
}
