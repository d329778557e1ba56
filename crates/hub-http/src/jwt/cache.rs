//! Verified tokens remembered by their digest, so that a client sending the same bearer token on every request pays for its signature check once.
//!
//! Verifying a signature costs far more than a lookup (measured in release
//! on the 2-core development machine: about 10 us for HS256, 200 us for
//! RS256 and 600 us for ES256 with the pure-Rust backend), so without this
//! an RS256 or ES256 client would cut the hub's throughput several times.
//!
//! Why reusing a verification is safe: a token cannot change, and what
//! `verify` checked about it apart from time (signature, algorithm, `iss`,
//! `aud`, tenant and scope claims) depends only on the token and the
//! configuration. The configuration is fixed for the life of the process
//! except for the JWKS file; an entry of an RS256/ES256 token remembers the
//! generation of the key set that verified it and counts only while that
//! generation is current, so a reload (a key removed) takes effect at once.
//! Time: every hit checks `exp` again with the leeway; `nbf` had passed at
//! the first verification and time only moves forward. Only successes are
//! remembered, keyed by SHA-256 of the token so that no token outlives its
//! request in memory.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use super::TokenClaims;

/// How many tokens are remembered at most: far more than the distinct
/// clients of one replica, and a few MB at most.
pub(super) const CAPACITY: usize = 10_000;

/// One remembered verification.
#[derive(Clone)]
pub(super) struct Verified {
    pub(super) claims: TokenClaims,
    /// The JWKS generation that verified it; `None` for HS256, whose secret
    /// never changes while the process runs.
    pub(super) generation: Option<u64>,
}

/// The remembered verifications. A read lock on hits (the common case), a
/// write lock only for the first request of each token.
pub(super) struct VerifiedTokens {
    entries: RwLock<HashMap<[u8; 32], Verified>>,
    capacity: usize,
}

impl VerifiedTokens {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    pub(super) fn get(&self, digest: &[u8; 32]) -> Option<Verified> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    /// Remembers a verification. When full, everything is forgotten first:
    /// simpler than tracking recency, and it costs each live client one
    /// more verification, only after `capacity` distinct valid tokens
    /// (which only the token issuer can mint).
    pub(super) fn insert(&self, digest: [u8; 32], verified: Verified) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&digest) {
            entries.clear();
        }
        entries.insert(digest, verified);
    }

    pub(super) fn remove(&self, digest: &[u8; 32]) {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
