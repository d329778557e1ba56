//! API keys created through the admin API: scopes, the `hubk_<id>_<secret>` format, digests, and what a digest lookup answers.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{TenantId, ValidationError};

/// What a key or token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Lookups, lists, watches, the dashboard.
    Read,
    /// Register, heartbeat, deregister.
    Write,
    /// Manage its own tenant's keys and read its usage and audit.
    Admin,
}

impl Scope {
    /// Every scope, in order.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        match text {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(ValidationError::new(
                "scopes",
                format!("'{other}' is not a scope; use read, write or admin"),
            )),
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope at all.
    pub const NONE: Scopes = Scopes(0);
    /// Every scope (operator keys, `KEY:tenant` bound keys).
    pub const ALL: Scopes = Scopes(7);

    /// The set of `scopes`.
    pub fn of(scopes: &[Scope]) -> Self {
        Scopes(scopes.iter().fold(0, |bits, s| bits | s.bit()))
    }

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes, in [`Scope::ALL`] order.
    pub fn to_vec(self) -> Vec<Scope> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .collect()
    }

    /// The stored bits (1 read, 2 write, 4 admin).
    pub fn bits(self) -> i16 {
        i16::from(self.0)
    }

    /// From the stored bits; unknown bits are an error (a row written by a
    /// newer version).
    pub fn from_bits(bits: i16) -> Result<Self, ValidationError> {
        u8::try_from(bits)
            .ok()
            .filter(|b| *b <= 7)
            .map(Scopes)
            .ok_or_else(|| ValidationError::new("scopes", format!("unknown scope bits {bits}")))
    }

    /// Parses a space-separated list (the JWT `scope` claim). Unknown scopes
    /// are ignored there (a token may carry scopes of other services).
    pub fn from_claim(text: &str) -> Self {
        Scopes::of(
            &text
                .split_ascii_whitespace()
                .filter_map(|s| Scope::parse(s).ok())
                .collect::<Vec<_>>(),
        )
    }

    /// Parses a list of scope names strictly (the admin API): unknown names
    /// are an error and the list may not be empty.
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Self, ValidationError> {
        let scopes = names
            .iter()
            .map(|s| Scope::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err(ValidationError::new(
                "scopes",
                "must name at least one of read, write, admin",
            ));
        }
        Ok(Scopes::of(&scopes))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.to_vec()).finish()
    }
}

/// The prefix of every key the hub mints, so secret scanners can find
/// leaked ones.
pub const KEY_PREFIX: &str = "hubk_";

/// Length of a key id, in lowercase hex digits.
const KEY_ID_LEN: usize = 16;
/// Length of a key secret, in lowercase hex digits (256 bits).
const SECRET_LEN: usize = 64;

/// The public id of a key: 16 lowercase hex digits, shown in lists and
/// audit rows, usable to revoke it; it reveals nothing of the secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Parses a key id.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        if text.len() == KEY_ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(KeyId(text.to_owned()))
        } else {
            Err(ValidationError::new(
                "key_id",
                format!("must be {KEY_ID_LEN} lowercase hex digits"),
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 digest of a presented key, the only form in which keys are
/// stored or looked up.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A freshly minted key: its id, the whole key (shown once) and its digest.
pub struct MintedKey {
    /// Its public id.
    pub id: KeyId,
    /// `hubk_<id>_<secret>`: returned to the creator once, never stored.
    pub secret: String,
    /// SHA-256 of `secret`.
    pub digest: [u8; 32],
}

impl fmt::Debug for MintedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MintedKey {
    /// Mints a key from the operating system's randomness.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; (KEY_ID_LEN + SECRET_LEN) / 2];
        getrandom::fill(&mut bytes)?;
        let hex = hex_lower(&bytes);
        let (id, secret) = hex.split_at(KEY_ID_LEN);
        let whole = format!("{KEY_PREFIX}{id}_{secret}");
        Ok(MintedKey {
            id: KeyId(id.to_owned()),
            digest: digest(&whole),
            secret: whole,
        })
    }

    /// Whether `presented` has the shape of a minted key (`hubk_`, 16 hex,
    /// `_`, 64 hex): anything else need not be looked up in the database.
    pub fn looks_minted(presented: &str) -> bool {
        let Some(rest) = presented.strip_prefix(KEY_PREFIX) else {
            return false;
        };
        let Some((id, secret)) = rest.split_once('_') else {
            return false;
        };
        KeyId::parse(id).is_ok()
            && secret.len() == SECRET_LEN
            && secret
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// What storing a new key takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// Its public id.
    pub id: KeyId,
    /// SHA-256 of the whole key.
    pub digest: [u8; 32],
    /// A name for humans (1-200 characters).
    pub name: String,
    /// What it may do; never empty.
    pub scopes: Scopes,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Fingerprint of the key or token that created it.
    pub created_by: String,
}

/// The longest key name, in characters.
pub const MAX_KEY_NAME_CHARS: usize = 200;

impl NewKey {
    /// Checks what the stores would refuse: a name of 1-200 characters
    /// without control characters, and at least one scope.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let chars = self.name.chars().count();
        if chars == 0 || chars > MAX_KEY_NAME_CHARS || self.name.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "name",
                format!("must be 1-{MAX_KEY_NAME_CHARS} characters without control characters"),
            ));
        }
        if self.scopes.is_empty() {
            return Err(ValidationError::new(
                "scopes",
                "must name at least one of read, write, admin",
            ));
        }
        Ok(())
    }
}

/// A stored key, as the admin API lists it (never its secret or digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Its public id.
    pub id: KeyId,
    /// The tenant it belongs to.
    pub tenant: TenantId,
    /// Its name.
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it was last used, sampled (at most one write per key per flush).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked; a revoked key never works again.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What a digest lookup answers: only what authentication needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    /// The key's public id.
    pub id: KeyId,
    /// The one tenant it acts for.
    pub tenant: TenantId,
    /// What it may do.
    pub scopes: Scopes,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether it was revoked.
    pub revoked: bool,
}

impl KeyGrant {
    /// Whether the key works at `now`: not revoked, not expired.
    pub fn usable_at(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && self.expires_at.is_none_or(|at| now < at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_have_the_documented_shape() {
        let key = MintedKey::generate().unwrap();
        assert!(key.secret.starts_with("hubk_"));
        assert!(MintedKey::looks_minted(&key.secret));
        assert_eq!(key.digest, digest(&key.secret));
        assert!(key.secret.contains(key.id.as_str()));
        assert!(!format!("{key:?}").contains(&key.secret[22..]));
        let other = MintedKey::generate().unwrap();
        assert_ne!(key.secret, other.secret);
        assert!(!MintedKey::looks_minted("hubk_0123_abc"));
        assert!(!MintedKey::looks_minted("operator-key-0123456"));
    }

    #[test]
    fn scopes_parse_and_round_trip() {
        let s = Scopes::parse_list(&["read", "admin"]).unwrap();
        assert!(s.contains(Scope::Read) && s.contains(Scope::Admin));
        assert!(!s.contains(Scope::Write));
        assert_eq!(Scopes::from_bits(s.bits()).unwrap(), s);
        assert!(Scopes::from_bits(8).is_err());
        assert!(Scopes::parse_list::<&str>(&[]).is_err());
        assert!(Scopes::parse_list(&["root"]).is_err());
        assert_eq!(
            Scopes::from_claim("openid write other"),
            Scopes::of(&[Scope::Write])
        );
        assert_eq!(Scopes::ALL.to_vec(), Scope::ALL.to_vec());
    }

    #[test]
    fn grants_expire_and_revoke() {
        let now = Utc::now();
        let grant = KeyGrant {
            id: KeyId::parse("0123456789abcdef").unwrap(),
            tenant: TenantId::parse("t1").unwrap(),
            scopes: Scopes::ALL,
            expires_at: Some(now),
            revoked: false,
        };
        assert!(!grant.usable_at(now));
        assert!(grant.usable_at(now - chrono::Duration::seconds(1)));
        let revoked = KeyGrant {
            revoked: true,
            expires_at: None,
            ..grant
        };
        assert!(!revoked.usable_at(now));
    }
}
