//! API keys: parsing `CENTRAL_HUB_API_KEYS`, holding keys as SHA-256 digests, and who a key acts for.

use std::collections::HashMap;
use std::fmt;

use hub_core::{TenantId, ValidationError};
use sha2::{Digest, Sha256};

/// Who a request acts as, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is disabled (`DISABLE_AUTH=true`): any tenant.
    Anonymous,
    /// An operator key: any tenant.
    Operator {
        /// Short fingerprint of the key, for logs and audit.
        fingerprint: String,
    },
    /// A key bound to a list of tenants (the first is its default).
    Bound {
        /// Short fingerprint of the key, for logs and audit.
        fingerprint: String,
        /// Tenants the key may act for; never empty.
        tenants: Vec<TenantId>,
    },
}

impl Principal {
    /// The tenant a request without `X-Tenant-ID` acts for.
    pub fn default_tenant(&self) -> TenantId {
        match self {
            Principal::Bound { tenants, .. } => {
                tenants.first().cloned().unwrap_or_else(TenantId::system)
            }
            _ => TenantId::system(),
        }
    }

    /// Whether this principal may act for `tenant`.
    pub fn may_act_for(&self, tenant: &TenantId) -> bool {
        match self {
            Principal::Anonymous | Principal::Operator { .. } => true,
            Principal::Bound { tenants, .. } => tenants.contains(tenant),
        }
    }

    /// The key's fingerprint, if a key was used.
    pub fn fingerprint(&self) -> Option<&str> {
        match self {
            Principal::Anonymous => None,
            Principal::Operator { fingerprint } | Principal::Bound { fingerprint, .. } => {
                Some(fingerprint)
            }
        }
    }
}

/// The configured API keys. Only SHA-256 digests of the keys are held, so a
/// memory dump or a debug print reveals no key.
#[derive(Clone, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Principal>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fingerprints: Vec<_> = self
            .by_digest
            .values()
            .filter_map(Principal::fingerprint)
            .collect();
        fingerprints.sort_unstable();
        f.debug_struct("ApiKeys")
            .field("fingerprints", &fingerprints)
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A short, stable name for a key that reveals nothing usable about it: the
/// first 8 hex digits of its SHA-256 digest.
pub fn fingerprint(key: &str) -> String {
    hex::encode(&digest(key)[..4])
}

impl ApiKeys {
    /// Parses the `CENTRAL_HUB_API_KEYS` syntax: comma-separated entries, each
    /// `KEY` (operator: any tenant) or `KEY:tenant1|tenant2` (bound to those
    /// tenants, the first being the default). Blank entries are ignored.
    /// Errors name the entry by position, never by its key.
    pub fn parse(spec: &str) -> Result<Self, ValidationError> {
        let mut keys = Self::default();
        for (index, entry) in spec.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let field = format!("CENTRAL_HUB_API_KEYS[{index}]");
            let (key, tenants) = match entry.split_once(':') {
                None => (entry, None),
                Some((key, tenants)) => (key.trim(), Some(tenants)),
            };
            if key.is_empty() {
                return Err(ValidationError::new(field, "the key is empty"));
            }
            let fingerprint = fingerprint(key);
            let principal = match tenants {
                None => Principal::Operator { fingerprint },
                Some(list) => {
                    let tenants = list
                        .split('|')
                        .map(|t| TenantId::parse(t.trim()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            ValidationError::new(field.clone(), format!("bad tenant: {e}"))
                        })?;
                    Principal::Bound {
                        fingerprint,
                        tenants,
                    }
                }
            };
            if keys.by_digest.insert(digest(key), principal).is_some() {
                return Err(ValidationError::new(field, "the key is listed twice"));
            }
        }
        Ok(keys)
    }

    /// Adds an operator key (used for the generated bootstrap key).
    pub fn with_operator_key(mut self, key: &str) -> Self {
        self.by_digest.insert(
            digest(key),
            Principal::Operator {
                fingerprint: fingerprint(key),
            },
        );
        self
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// The principal of a presented key, if it is one of ours.
    pub fn authenticate(&self, presented: &str) -> Option<&Principal> {
        self.by_digest.get(&digest(presented))
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Everything is open (development only).
    Disabled,
    /// `X-API-Key` must name one of these keys.
    Keys(ApiKeys),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn parses_operator_and_bound_keys() {
        let keys = ApiKeys::parse(" op-key , bound:tenant1|tenant2,, ").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(matches!(
            keys.authenticate("op-key"),
            Some(Principal::Operator { .. })
        ));
        let bound = keys.authenticate("bound").unwrap();
        assert_eq!(bound.default_tenant(), t("tenant1"));
        assert!(bound.may_act_for(&t("tenant2")));
        assert!(!bound.may_act_for(&t("tenant3")));
        assert!(keys.authenticate("nope").is_none());
        assert!(keys.authenticate("bound:tenant1|tenant2").is_none());
    }

    #[test]
    fn rejects_bad_entries_without_echoing_the_key() {
        for spec in [":tenant1", "secret:bad.tenant", "secret:", "k,k"] {
            let err = ApiKeys::parse(spec).unwrap_err();
            assert!(err.field().starts_with("CENTRAL_HUB_API_KEYS["), "{spec}");
            assert!(!err.message().contains("secret"), "{err}");
        }
    }

    #[test]
    fn debug_shows_fingerprints_not_keys() {
        let keys = ApiKeys::parse("super-secret-key").unwrap();
        let printed = format!("{keys:?}");
        assert!(!printed.contains("super-secret-key"));
        assert!(printed.contains(&fingerprint("super-secret-key")));
        assert_eq!(fingerprint("x").len(), 8);
    }
}
