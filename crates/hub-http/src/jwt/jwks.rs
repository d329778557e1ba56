//! The JWKS file of `HUB_JWT_JWKS_PATH`: its RS256 and ES256 public keys, reloaded when the file changes.
//!
//! Only asymmetric signature keys are taken from the file. A symmetric
//! (`kty: oct`) key in it is skipped on purpose: HS256 is verified with
//! `HUB_JWT_SECRET` alone, and a key published for RS256/ES256 must never
//! become an HMAC secret (the algorithm-confusion attack).
//!
//! Reloading: [`JwksFile::current`] looks at the file at most once per
//! [`CHECK_INTERVAL`], on use, so an idle server does no I/O and a busy one
//! does one `stat` per second. A broken new file keeps the keys already
//! loaded, and its error is logged once per distinct content, not once per
//! check.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};

/// How often, at most, the file's modification time is looked at.
pub(super) const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A file whose modification time is younger than this is read again even
/// when its time and length look unchanged: a rewrite within the file
/// system's timestamp granularity keeps the same time (git's "racy" files).
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The smallest RSA modulus accepted, in base64url characters (2048 bits =
/// 256 bytes = 342 characters without padding). Weaker keys are skipped.
const MIN_RSA_MODULUS_CHARS: usize = 342;

/// A P-256 coordinate (32 bytes) in base64url without padding.
const P256_COORDINATE_CHARS: usize = 43;

/// One verification key of the file.
pub(super) struct PublicKey {
    /// The key's `kid`, which a token's header may name.
    pub(super) kid: Option<String>,
    /// RS256 or ES256: the only algorithm this key verifies.
    pub(super) alg: Algorithm,
    /// The key itself.
    pub(super) key: DecodingKey,
}

/// The usable keys of one version of the file (never empty).
pub(super) struct KeySet {
    keys: Vec<PublicKey>,
    /// Which load of the file this is (0 for the first): a verification
    /// remembered under another generation may rest on a key that is gone.
    generation: u64,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys that are not RS256 or
    /// ES256 signature keys are skipped with a warning (an identity provider
    /// may publish encryption keys beside them); a document without any
    /// usable key is an error, since it would refuse every token.
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
        let mut keys = Vec::with_capacity(document.keys.len());
        for (index, value) in document.keys.into_iter().enumerate() {
            match usable_key(value) {
                Ok(key) => keys.push(key),
                Err(reason) => {
                    tracing::warn!(index, reason, "JWKS key skipped");
                }
            }
        }
        if keys.is_empty() {
            return Err("no usable RS256 or ES256 public key".into());
        }
        Ok(Self {
            keys,
            generation: 0,
        })
    }

    /// The keys to try for a token signed with `alg` naming `kid`: the key
    /// with that `kid` (if it is for `alg`), or without a `kid` every key of
    /// `alg`. Empty when nothing may verify it.
    pub(super) fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a PublicKey> + 'a {
        self.keys.iter().filter(move |key| {
            key.alg == alg
                && match kid {
                    Some(kid) => key.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }

    /// Whether any key verifies `alg` (to tell "algorithm not enabled" from
    /// "unknown key id").
    pub(super) fn has_algorithm(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|key| key.alg == alg)
    }

    /// How many keys the set holds.
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Which load of the file this set came from.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }
}

/// One JWK turned into a verification key, or the reason it is skipped.
fn usable_key(value: serde_json::Value) -> Result<PublicKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("not a signature key (`use` is not `sig`)".into()),
    }
    let declared = jwk.common.key_algorithm;
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(params) => {
            if !matches!(declared, None | Some(KeyAlgorithm::RS256)) {
                return Err(format!("RSA key for {declared:?}; only RS256 is accepted"));
            }
            if params.n.len() < MIN_RSA_MODULUS_CHARS {
                return Err("RSA modulus shorter than 2048 bits".into());
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(params) => {
            if params.curve != EllipticCurve::P256 {
                return Err("EC key not on P-256; only ES256 is accepted".into());
            }
            if !matches!(declared, None | Some(KeyAlgorithm::ES256)) {
                return Err(format!("EC key for {declared:?}; only ES256 is accepted"));
            }
            if params.x.len() != P256_COORDINATE_CHARS || params.y.len() != P256_COORDINATE_CHARS {
                return Err("EC key coordinates are not 32 bytes".into());
            }
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric (oct) keys are never used: HS256 is verified with HUB_JWT_SECRET only"
                    .into(),
            );
        }
        _ => return Err("unsupported key type (only RSA and EC P-256)".into()),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unreadable key material: {e}"))?;
    Ok(PublicKey {
        kid: jwk.common.key_id,
        alg,
        key,
    })
}

/// What the last look at the file saw, to tell whether it changed.
#[derive(Default)]
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    /// SHA-256 of the content last read (loaded or refused).
    digest: [u8; 32],
    /// The last error logged, so that a file that stays broken (or missing)
    /// is reported once, not every second.
    logged_error: Option<String>,
}

/// The JWKS file and the keys last loaded from it.
pub(super) struct JwksFile {
    path: PathBuf,
    keys: RwLock<Arc<KeySet>>,
    /// Start of the clock `next_check_ms` counts on.
    epoch: Instant,
    /// When the next look at the file is due, in ms since `epoch`. An atomic
    /// so that the common case (not due) takes no lock.
    next_check_ms: AtomicU64,
    /// Held by the one caller that looks at the file; others go on with the
    /// current keys instead of waiting.
    seen: Mutex<Seen>,
}

impl fmt::Debug for JwksFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksFile")
            .field("path", &self.path)
            .field("keys", &self.current_unchecked().len())
            .finish()
    }
}

impl JwksFile {
    /// Reads and parses the file once; an error (unreadable, not JWKS, no
    /// usable key) is returned so that start-up fails naming the setting.
    pub(super) fn open(path: &Path) -> Result<Self, String> {
        let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        let keys = KeySet::parse(&bytes).map_err(|e| format!("{path:?}: {e}"))?;
        let seen = Seen {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            digest: Sha256::digest(&bytes).into(),
            logged_error: None,
        };
        let file = Self {
            path: path.to_owned(),
            keys: RwLock::new(Arc::new(keys)),
            epoch: Instant::now(),
            next_check_ms: AtomicU64::new(0),
            seen: Mutex::new(seen),
        };
        file.schedule_next_check();
        Ok(file)
    }

    /// The keys to verify with now, after looking at the file if a look is due.
    pub(super) fn current(&self) -> Arc<KeySet> {
        if self.elapsed_ms() >= self.next_check_ms.load(Ordering::Relaxed) {
            // try_lock: a caller that finds another one already looking uses
            // the keys it has rather than queueing behind a file read.
            if let Ok(mut seen) = self.seen.try_lock() {
                self.schedule_next_check();
                self.refresh(&mut seen);
            }
        }
        self.current_unchecked()
    }

    /// Looks at the file now, whatever the interval (tests).
    #[cfg(test)]
    pub(super) fn check_now(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh(&mut seen);
    }

    fn current_unchecked(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn schedule_next_check(&self) {
        let interval = u64::try_from(CHECK_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        self.next_check_ms.store(
            self.elapsed_ms().saturating_add(interval),
            Ordering::Relaxed,
        );
    }

    /// Reloads the keys if the file changed. Never drops the loaded keys: a
    /// missing, unreadable or broken file is logged (once per distinct
    /// error) and the previous keys stay in force.
    fn refresh(&self, seen: &mut Seen) {
        let metadata = match std::fs::metadata(&self.path) {
            Ok(metadata) => metadata,
            Err(e) => {
                self.log_error_once(seen, format!("cannot read the file: {e}"));
                return;
            }
        };
        let modified = metadata.modified().ok();
        let racy = modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < RACY_WINDOW);
        if modified == seen.modified && metadata.len() == seen.len && !racy {
            return;
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.log_error_once(seen, format!("cannot read the file: {e}"));
                return;
            }
        };
        seen.modified = modified;
        seen.len = metadata.len();
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if digest == seen.digest {
            return;
        }
        seen.digest = digest;
        match KeySet::parse(&bytes) {
            Ok(mut keys) => {
                tracing::info!(path = ?self.path, keys = keys.len(), "JWKS reloaded");
                let mut current = self.keys.write().unwrap_or_else(PoisonError::into_inner);
                keys.generation = current.generation.wrapping_add(1);
                *current = Arc::new(keys);
                seen.logged_error = None;
            }
            Err(e) => self.log_error_once(seen, e),
        }
    }

    fn log_error_once(&self, seen: &mut Seen, error: String) {
        if seen.logged_error.as_deref() != Some(error.as_str()) {
            tracing::error!(
                path = ?self.path,
                error = %error,
                "HUB_JWT_JWKS_PATH: the changed file is not used; the keys loaded before stay in force"
            );
            seen.logged_error = Some(error);
        }
    }
}
