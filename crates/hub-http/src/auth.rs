//! API keys: parsing `CENTRAL_HUB_API_KEYS`, holding keys as SHA-256 digests, and who a key acts for.

use std::collections::HashMap;
use std::fmt;

use hub_core::tenancy::{Scope, Scopes};
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
    /// A credential bound to a list of tenants (the first is its default):
    /// a `KEY:t1|t2` entry of `CENTRAL_HUB_API_KEYS` (every scope), a key
    /// created through the admin API (its one tenant, its scopes) or a
    /// bearer token (the tenants of its claim, the scopes of its `scope`
    /// claim).
    Bound {
        /// Short fingerprint of the credential, for logs, audit and rate
        /// limits: the key id for keys created through the admin API.
        fingerprint: String,
        /// Tenants the credential may act for; never empty.
        tenants: Vec<TenantId>,
        /// What it may do there.
        scopes: Scopes,
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

    /// Whether this principal acts across tenants: an operator key, or
    /// anyone when authentication is off.
    pub fn is_operator(&self) -> bool {
        matches!(self, Principal::Anonymous | Principal::Operator { .. })
    }

    /// What this principal may do: everything for operators, its scopes otherwise.
    pub fn scopes(&self) -> Scopes {
        match self {
            Principal::Anonymous | Principal::Operator { .. } => Scopes::ALL,
            Principal::Bound { scopes, .. } => *scopes,
        }
    }

    /// Whether this principal holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes().contains(scope)
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

/// The shortest key accepted in `CENTRAL_HUB_API_KEYS`, in characters: a
/// key is the only thing between the network and every tenant's data, and
/// anything shorter can be guessed or was never meant as a secret.
pub const MIN_KEY_CHARS: usize = 16;

/// How to write an entry, quoted by every syntax error.
const SYNTAX: &str = "write KEY (operator), KEY:* (operator; needed when the key itself contains ':') or KEY:tenant1|tenant2 (bound)";

impl ApiKeys {
    /// Parses the `CENTRAL_HUB_API_KEYS` syntax: comma-separated entries, each
    /// one of
    /// - `KEY`: an operator key (any tenant); the key has no `:`;
    /// - `KEY:*`: an operator key, written so for a key that contains `:`;
    /// - `KEY:tenant1|tenant2`: bound to those tenants, the first being the
    ///   default.
    ///
    /// An entry with a `:` is split at its **last** `:`, so a key may contain
    /// `:` as long as the entry ends in `:*` or `:TENANTS`. What follows the
    /// last `:` must be `*` or valid tenant ids, and the key must be at least
    /// [`MIN_KEY_CHARS`] long: `pass:word` is refused (a 4-character key), not
    /// read as key `pass` bound to tenant `word`. Blank entries are ignored.
    /// Errors name the entry by position, never by its key, and say how to
    /// write it.
    pub fn parse(spec: &str) -> Result<Self, ValidationError> {
        let mut keys = Self::default();
        for (index, entry) in spec.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let field = format!("CENTRAL_HUB_API_KEYS[{index}]");
            let (key, scope) = match entry.rsplit_once(':') {
                None => (entry, None),
                Some((key, scope)) => (key.trim(), Some(scope.trim())),
            };
            if key.is_empty() {
                return Err(ValidationError::new(
                    field,
                    format!("the key is empty; {SYNTAX}"),
                ));
            }
            let chars = key.chars().count();
            if chars < MIN_KEY_CHARS {
                let hint = if scope.is_some() {
                    " (if the part after the last ':' belongs to the key, end the entry with ':*')"
                } else {
                    ""
                };
                return Err(ValidationError::new(
                    field,
                    format!(
                        "the key is {chars} characters long; keys must be at least {MIN_KEY_CHARS} characters long{hint}, e.g. 32 random hex digits from `openssl rand -hex 16`"
                    ),
                ));
            }
            let fingerprint = fingerprint(key);
            let principal = match scope {
                None | Some("*") => Principal::Operator { fingerprint },
                Some(list) => {
                    let tenants = list
                        .split('|')
                        .map(|t| TenantId::parse(t.trim()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            ValidationError::new(
                                field.clone(),
                                format!(
                                    "what follows the last ':' is neither '*' nor a list of tenant ids ({}); {SYNTAX}",
                                    e.message()
                                ),
                            )
                        })?;
                    Principal::Bound {
                        fingerprint,
                        tenants,
                        scopes: Scopes::ALL,
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

    const OP: &str = "operator-key-0123";
    const BOUND: &str = "bound-key-0123456";

    #[test]
    fn parses_operator_and_bound_keys() {
        let keys = ApiKeys::parse(&format!(" {OP} , {BOUND}:tenant1|tenant2,, ")).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(matches!(
            keys.authenticate(OP),
            Some(Principal::Operator { .. })
        ));
        let bound = keys.authenticate(BOUND).unwrap();
        assert_eq!(bound.default_tenant(), t("tenant1"));
        assert!(bound.may_act_for(&t("tenant2")));
        assert!(!bound.may_act_for(&t("tenant3")));
        assert!(keys.authenticate("nope").is_none());
        assert!(
            keys.authenticate(&format!("{BOUND}:tenant1|tenant2"))
                .is_none()
        );
    }

    #[test]
    fn keys_with_colons_split_at_the_last_one() {
        let keys = ApiKeys::parse(
            "user:pass:0123456789abcdef:*, a:b:0123456789abcdef:tenant1, explicit-operator-key:*",
        )
        .unwrap();
        assert!(matches!(
            keys.authenticate("user:pass:0123456789abcdef"),
            Some(Principal::Operator { .. })
        ));
        assert!(matches!(
            keys.authenticate("explicit-operator-key"),
            Some(Principal::Operator { .. })
        ));
        let bound = keys.authenticate("a:b:0123456789abcdef").unwrap();
        assert_eq!(bound.default_tenant(), t("tenant1"));
        assert!(!bound.may_act_for(&t("a")));
        assert_eq!(keys.len(), 3);
    }

    #[test]
    fn short_keys_are_refused_with_the_way_to_write_them() {
        // `pass:word` used to become key `pass` bound to tenant `word`.
        let err = ApiKeys::parse("pass:word").unwrap_err();
        assert!(err.message().contains("4 characters"), "{err}");
        assert!(err.message().contains("':*'"), "{err}");
        for spec in ["k", "fifteen-chars-k", "x:*"] {
            let err = ApiKeys::parse(spec).unwrap_err();
            assert!(err.message().contains("at least 16"), "{spec}: {err}");
        }
        assert!(ApiKeys::parse("sixteen-chars-ok").is_ok());
        // Characters, not bytes: 16 non-ASCII characters are enough.
        assert!(ApiKeys::parse(&"ключ".repeat(4)).is_ok());
    }

    #[test]
    fn rejects_bad_entries_without_echoing_the_key() {
        for spec in [
            ":tenant1",
            "secret-0123456789:bad.tenant",
            "secret-0123456789:",
            "secret-0123456789:tenant1|",
            "secret-0123456789:*|tenant1",
            "secret-0123456789,secret-0123456789",
            "secret-0123456789,secret-0123456789:*",
            "secret",
        ] {
            let err = ApiKeys::parse(spec).unwrap_err();
            assert!(err.field().starts_with("CENTRAL_HUB_API_KEYS["), "{spec}");
            assert!(!err.message().contains("secret"), "{spec}: {err}");
        }
        let err = ApiKeys::parse("secret-0123456789:bad.tenant").unwrap_err();
        assert!(
            err.message().contains("KEY:*"),
            "says how to write it: {err}"
        );
    }

    #[test]
    fn debug_shows_fingerprints_not_keys() {
        let keys = ApiKeys::parse("super-secret-key-123").unwrap();
        let printed = format!("{keys:?}");
        assert!(!printed.contains("super-secret-key-123"));
        assert!(printed.contains(&fingerprint("super-secret-key-123")));
        assert_eq!(fingerprint("x").len(), 8);
    }
}
