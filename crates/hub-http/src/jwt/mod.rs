//! JWT bearer tokens: verifying `Authorization: Bearer <jwt>` (HS256 with a shared secret, RS256/ES256 with a JWKS file) into the tenants, scopes and identity it grants.
//!
//! The algorithm a token may use is decided by the configuration, never by the
//! token: HS256 only when `HUB_JWT_SECRET` is set, and verified with that
//! secret only; RS256 and ES256 only with a key of that type from
//! `HUB_JWT_JWKS_PATH`. `alg: none` is not an algorithm `jsonwebtoken` knows,
//! so such a token never parses. Every error's text is fixed (or names a
//! setting or claim), so it can be sent to the client: nothing of the token
//! is ever echoed.

mod cache;
mod jwks;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hub_core::tenancy::Scopes;
use hub_core::{TenantId, ValidationError};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use self::cache::{Verified, VerifiedTokens};
use self::jwks::JwksFile;

/// The tenant claim's name when `HUB_JWT_TENANT_CLAIM` is not set.
pub const DEFAULT_TENANT_CLAIM: &str = "tenant_id";

/// The clock skew allowed on `exp` and `nbf` when `HUB_JWT_LEEWAY_SECS` is not set.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// The shortest HS256 secret accepted: RFC 7518 section 3.2 requires a key at
/// least as long as the hash (256 bits); a shorter one can be brute-forced
/// from a single token.
pub const MIN_SECRET_BYTES: usize = 32;

/// Longer "tokens" are refused before any parsing, so that a huge header
/// costs nothing to reject.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How JWT bearer tokens are verified (the `HUB_JWT_*` settings).
#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// `HUB_JWT_SECRET`: enables HS256 with this shared secret (at least
    /// [`MIN_SECRET_BYTES`] bytes).
    pub secret: Option<SecretString>,
    /// `HUB_JWT_JWKS_PATH`: a JWKS file whose RSA and EC P-256 keys enable
    /// RS256 and ES256; reloaded when it changes.
    pub jwks_path: Option<PathBuf>,
    /// `HUB_JWT_ISSUER`: when set, every token must carry this `iss`.
    pub issuer: Option<String>,
    /// `HUB_JWT_AUDIENCE`: when set, every token's `aud` must contain this.
    pub audience: Option<String>,
    /// `HUB_JWT_TENANT_CLAIM`: the claim naming the token's tenant (a string)
    /// or tenants (a list of strings); default [`DEFAULT_TENANT_CLAIM`].
    pub tenant_claim: String,
    /// `HUB_JWT_LEEWAY_SECS`: clock skew allowed on `exp` and `nbf`; default
    /// [`DEFAULT_LEEWAY_SECS`].
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    /// Nothing enabled, default claim name and leeway.
    fn default() -> Self {
        Self {
            secret: None,
            jwks_path: None,
            issuer: None,
            audience: None,
            tenant_claim: DEFAULT_TENANT_CLAIM.to_owned(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

impl JwtConfig {
    /// Whether any way of verifying a token is configured (a secret or a
    /// JWKS file); without one, [`JwtVerifier::new`] refuses the configuration.
    pub fn is_enabled(&self) -> bool {
        self.secret.is_some() || self.jwks_path.is_some()
    }
}

/// What a verified token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    /// The `sub` claim, if any.
    pub subject: Option<String>,
    /// The tenants of the tenant claim (deduplicated, in claim order); never
    /// empty.
    pub tenants: Vec<TenantId>,
    /// The known scopes of the `scope` claim; unknown names are ignored and a
    /// token without `scope` has none.
    pub scopes: Scopes,
    /// Identifies the token's holder in logs, audit rows and rate limits
    /// without revealing the token: `jwt:` and 8 hex digits of
    /// SHA-256(`iss` NUL `sub`).
    pub fingerprint: String,
    /// When the token expires (`exp`).
    pub expires_at: DateTime<Utc>,
}

/// Why a token was refused. Every kind answers 401 `invalid_token`; the kind
/// is for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtErrorKind {
    /// Not a JWT, or a header naming an algorithm that does not exist
    /// (`none` among them).
    Malformed,
    /// An algorithm the configuration did not enable.
    AlgorithmNotAllowed,
    /// A `kid` that no key of the JWKS file has (with that algorithm).
    UnknownKey,
    /// The signature does not verify with any key that may verify it.
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    WrongAudience,
    /// A required claim is absent or has the wrong type.
    InvalidClaim,
    /// The tenant claim is absent, empty, or names an invalid tenant id.
    InvalidTenant,
}

impl JwtErrorKind {
    /// A stable snake_case name for logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::InvalidClaim => "invalid_claim",
            Self::InvalidTenant => "invalid_tenant",
        }
    }
}

/// A refused token. `Display` is a description safe to send to the client
/// (`error_description`): it never contains the token or any part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtError {
    kind: JwtErrorKind,
    description: String,
}

impl JwtError {
    fn new(kind: JwtErrorKind, description: impl Into<String>) -> Self {
        Self {
            kind,
            description: description.into(),
        }
    }

    /// Why the token was refused.
    pub fn kind(&self) -> JwtErrorKind {
        self.kind
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

impl std::error::Error for JwtError {}

/// Verifies bearer tokens. Cheap to clone (shared state); `Debug` shows the
/// configuration without the secret.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// The HS256 key from `HUB_JWT_SECRET`.
    hmac: Option<DecodingKey>,
    /// The JWKS file (RS256, ES256).
    jwks: Option<JwksFile>,
    /// One validation per algorithm, built once: each allows only its own
    /// algorithm, so a token can never pick another.
    hs256: Validation,
    rs256: Validation,
    es256: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    tenant_claim: String,
    leeway_secs: u64,
    /// Tokens verified before (see `cache`).
    verified: VerifiedTokens,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("JwtVerifier")
            .field("hs256", &inner.hmac.is_some())
            .field("jwks", &inner.jwks)
            .field("issuer", &inner.issuer)
            .field("audience", &inner.audience)
            .field("tenant_claim", &inner.tenant_claim)
            .field("leeway_secs", &inner.leeway_secs)
            .finish()
    }
}

impl JwtVerifier {
    /// Checks the configuration and loads the JWKS file. Errors name the
    /// setting at fault: `HUB_JWT_SECRET` (too short), `HUB_JWT_JWKS_PATH`
    /// (unreadable, not JWKS, no usable key), `HUB_JWT_TENANT_CLAIM`,
    /// `HUB_JWT_ISSUER`, `HUB_JWT_AUDIENCE` (empty), or both secret and path
    /// when neither is set.
    pub fn new(config: JwtConfig) -> Result<Self, ValidationError> {
        if !config.is_enabled() {
            return Err(ValidationError::new(
                "HUB_JWT_SECRET",
                "JWT bearer tokens need HUB_JWT_SECRET (HS256) or HUB_JWT_JWKS_PATH (RS256/ES256)",
            ));
        }
        let hmac = match &config.secret {
            None => None,
            Some(secret) => {
                let bytes = secret.expose_secret().as_bytes();
                if bytes.len() < MIN_SECRET_BYTES {
                    return Err(ValidationError::new(
                        "HUB_JWT_SECRET",
                        format!("must be at least {MIN_SECRET_BYTES} bytes long"),
                    ));
                }
                Some(
                    DecodingKey::from_secret(bytes)
                        .map_err(|e| ValidationError::new("HUB_JWT_SECRET", e.to_string()))?,
                )
            }
        };
        let jwks = match &config.jwks_path {
            None => None,
            Some(path) => Some(
                JwksFile::open(path).map_err(|e| ValidationError::new("HUB_JWT_JWKS_PATH", e))?,
            ),
        };
        if config.tenant_claim.trim().is_empty() {
            return Err(ValidationError::new(
                "HUB_JWT_TENANT_CLAIM",
                "must name a claim",
            ));
        }
        for (setting, value) in [
            ("HUB_JWT_ISSUER", &config.issuer),
            ("HUB_JWT_AUDIENCE", &config.audience),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(ValidationError::new(
                    setting,
                    "must not be empty (leave it unset to accept any)",
                ));
            }
        }
        let validation = |alg| validation(alg, &config);
        Ok(Self {
            inner: Arc::new(Inner {
                hmac,
                jwks,
                hs256: validation(Algorithm::HS256),
                rs256: validation(Algorithm::RS256),
                es256: validation(Algorithm::ES256),
                issuer: config.issuer,
                audience: config.audience,
                tenant_claim: config.tenant_claim,
                leeway_secs: config.leeway_secs,
                verified: VerifiedTokens::new(cache::CAPACITY),
            }),
        })
    }

    /// Verifies `token` (the text after `Bearer `): its signature with a key
    /// the configuration allows for its algorithm, then `exp`, `nbf`, `iss`,
    /// `aud`, and the tenant claim.
    pub fn verify(&self, token: &str) -> Result<TokenClaims, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed());
        }
        let inner = &*self.inner;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(verified) = inner.verified.get(&digest) {
            if self.still_valid(&verified) {
                return Ok(verified.claims);
            }
            // Expired, or verified by keys since reloaded: the full check
            // below gives the precise answer.
            inner.verified.remove(&digest);
        }
        let verified = self.verify_uncached(token)?;
        inner.verified.insert(digest, verified.clone());
        Ok(verified.claims)
    }

    /// Whether a remembered verification still holds: not expired (with the
    /// leeway), and made with the key set in force now.
    fn still_valid(&self, verified: &Verified) -> bool {
        let inner = &*self.inner;
        let leeway = i64::try_from(inner.leeway_secs).unwrap_or(i64::MAX);
        let fresh = verified
            .claims
            .expires_at
            .timestamp()
            .saturating_add(leeway)
            >= Utc::now().timestamp();
        let same_keys = match verified.generation {
            None => true,
            Some(generation) => inner
                .jwks
                .as_ref()
                .is_some_and(|jwks| jwks.current().generation() == generation),
        };
        fresh && same_keys
    }

    fn verify_uncached(&self, token: &str) -> Result<Verified, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| malformed())?;
        let inner = &*self.inner;
        let (claims, generation) = match header.alg {
            Algorithm::HS256 => {
                let key = inner.hmac.as_ref().ok_or_else(|| not_allowed(header.alg))?;
                (decode(token, key, &inner.hs256)?, None)
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let jwks = inner.jwks.as_ref().ok_or_else(|| not_allowed(header.alg))?;
                let keys = jwks.current();
                if !keys.has_algorithm(header.alg) {
                    return Err(not_allowed(header.alg));
                }
                let validation = if header.alg == Algorithm::RS256 {
                    &inner.rs256
                } else {
                    &inner.es256
                };
                let mut outcome = Err(JwtError::new(
                    JwtErrorKind::UnknownKey,
                    "the token's key id (kid) names no key of this server",
                ));
                // Without a `kid` each key of the algorithm is tried; only a
                // bad signature moves on to the next key, any other refusal
                // (expired, wrong issuer) is final.
                for key in keys.candidates(header.alg, header.kid.as_deref()) {
                    outcome = decode(token, &key.key, validation);
                    if !matches!(&outcome, Err(e) if e.kind == JwtErrorKind::BadSignature) {
                        break;
                    }
                }
                (outcome?, Some(keys.generation()))
            }
            other => return Err(not_allowed(other)),
        };
        Ok(Verified {
            claims: self.claims(claims)?,
            generation,
        })
    }

    /// Turns verified claims into what they grant.
    fn claims(&self, claims: Map<String, Value>) -> Result<TokenClaims, JwtError> {
        let inner = &*self.inner;
        let tenants = tenants(claims.get(&inner.tenant_claim), &inner.tenant_claim)?;
        let scopes = match claims.get("scope") {
            None | Some(Value::Null) => Scopes::NONE,
            Some(Value::String(text)) => Scopes::from_claim(text),
            // Some identity providers send scopes as a list of names.
            Some(Value::Array(items)) => {
                let mut names = Vec::with_capacity(items.len());
                for item in items {
                    names.push(item.as_str().ok_or_else(bad_scope_claim)?);
                }
                Scopes::from_claim(&names.join(" "))
            }
            Some(_) => return Err(bad_scope_claim()),
        };
        let subject = optional_string(&claims, "sub")?;
        let issuer = optional_string(&claims, "iss")?;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_f64)
            .and_then(|exp| {
                // `exp` is seconds; fractions are allowed by RFC 7519 and
                // dropped here.
                #[allow(clippy::cast_possible_truncation)]
                let secs = exp.floor() as i64;
                DateTime::from_timestamp(secs, 0)
            })
            .ok_or_else(|| {
                JwtError::new(
                    JwtErrorKind::InvalidClaim,
                    "the token's `exp` claim is not a time",
                )
            })?;
        Ok(TokenClaims {
            fingerprint: fingerprint(issuer.as_deref(), subject.as_deref()),
            subject,
            tenants,
            scopes,
            expires_at,
        })
    }
}

/// The checks `jsonwebtoken` makes for one algorithm.
fn validation(alg: Algorithm, config: &JwtConfig) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = config.leeway_secs;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = &config.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &config.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Without a configured audience a token's `aud` is not ours to judge
        // (`jsonwebtoken` would otherwise refuse every token that has one).
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, JwtError> {
    jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| from_library(e.kind()))
}

/// The library's errors as ours, with fixed descriptions (its own messages
/// may quote parts of the token, e.g. a JSON error).
fn from_library(kind: &ErrorKind) -> JwtError {
    use JwtErrorKind as K;
    match kind {
        ErrorKind::ExpiredSignature => JwtError::new(K::Expired, "the token has expired"),
        ErrorKind::ImmatureSignature => JwtError::new(K::NotYetValid, "the token is not valid yet"),
        ErrorKind::InvalidIssuer => {
            JwtError::new(K::WrongIssuer, "the token's issuer (iss) is not accepted")
        }
        ErrorKind::InvalidAudience => JwtError::new(
            K::WrongAudience,
            "the token's audience (aud) is not accepted",
        ),
        ErrorKind::MissingRequiredClaim(claim) => {
            // `claim` is one of the names this module required (exp, iss,
            // aud), not text from the token.
            JwtError::new(
                K::InvalidClaim,
                format!("the token lacks the required claim `{claim}`"),
            )
        }
        ErrorKind::InvalidClaimFormat(_) => JwtError::new(
            K::InvalidClaim,
            "a registered claim of the token (exp, nbf, iss, aud) has the wrong type",
        ),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => JwtError::new(
            K::AlgorithmNotAllowed,
            "the token's algorithm is not accepted",
        ),
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidKeyFormat => {
            JwtError::new(K::BadSignature, "the token's signature does not verify")
        }
        _ => malformed(),
    }
}

fn malformed() -> JwtError {
    JwtError::new(
        JwtErrorKind::Malformed,
        "the token is not a well-formed JWT with a supported algorithm",
    )
}

fn not_allowed(alg: Algorithm) -> JwtError {
    JwtError::new(
        JwtErrorKind::AlgorithmNotAllowed,
        format!("tokens signed with {alg:?} are not accepted by this server"),
    )
}

fn bad_scope_claim() -> JwtError {
    JwtError::new(
        JwtErrorKind::InvalidClaim,
        "the token's `scope` claim must be a space-separated string",
    )
}

/// A claim that must be a string when present.
fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(JwtError::new(
            JwtErrorKind::InvalidClaim,
            format!("the token's `{name}` claim must be a string"),
        )),
    }
}

/// The tenant claim: one tenant id, or a non-empty list of them, each valid.
fn tenants(claim: Option<&Value>, name: &str) -> Result<Vec<TenantId>, JwtError> {
    let invalid = || {
        JwtError::new(
            JwtErrorKind::InvalidTenant,
            format!(
                "the token's `{name}` claim must be a valid tenant id or a non-empty list of them"
            ),
        )
    };
    let parse = |value: &Value| {
        value
            .as_str()
            .and_then(|text| TenantId::parse(text).ok())
            .ok_or_else(invalid)
    };
    match claim {
        Some(value @ Value::String(_)) => Ok(vec![parse(value)?]),
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut tenants: Vec<TenantId> = Vec::with_capacity(items.len());
            for item in items {
                let tenant = parse(item)?;
                if !tenants.contains(&tenant) {
                    tenants.push(tenant);
                }
            }
            Ok(tenants)
        }
        _ => Err(invalid()),
    }
}

/// `jwt:` and 8 hex digits of SHA-256(iss NUL sub): stable for one holder,
/// distinct between issuers, and useless for replaying the token.
fn fingerprint(issuer: Option<&str>, subject: Option<&str>) -> String {
    let mut hash = Sha256::new();
    hash.update(issuer.unwrap_or_default().as_bytes());
    hash.update([0]);
    hash.update(subject.unwrap_or_default().as_bytes());
    let digest = hash.finalize();
    format!("jwt:{}", hex::encode(&digest[..4]))
}
