//! What every authenticated request would otherwise read again: the caller's principal row,
//! its role assignments, and whether its token's signature verified.
//!
//! A data-plane request used to spend more time authenticating than serving: an ECDSA P-256
//! verification and two database reads, each a round trip to a connection thread. Those
//! answers change only when a principal, a role assignment or a signing key changes, so they
//! are kept here:
//!
//! - every write of principals and role assignments made through this process calls
//!   [`AccessCache::invalidate`], so a deleted principal or a removed role is refused by the
//!   very next request;
//! - entries also expire after [`ENTRY_TTL`], which bounds how long a change made by another
//!   `hds` node on the same PostgreSQL database takes to be seen here;
//! - a verified signature is remembered by the SHA-256 of the whole token (header, claims and
//!   signature), so only the identical token skips verification, and only while the key that
//!   verified it is still published; the claims (expiry, audience) are still checked on every
//!   request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::principals::Principal;

/// How long a cached answer is used before it is read again.
pub(crate) const ENTRY_TTL: Duration = Duration::from_secs(5);

/// Past this many entries a map is emptied rather than grown: the cache is an optimisation for
/// the callers of the last seconds, not a store.
const MAX_ENTRIES: usize = 4096;

/// A principal and its role assignments (scope key, role name), as read together.
#[derive(Debug, Clone)]
pub(crate) struct PrincipalAccess {
    /// The principal, `None` if it does not exist (deleted).
    pub(crate) principal: Option<Principal>,
    /// Its role assignments.
    pub(crate) assignments: Vec<(String, String)>,
}

struct Entry<T> {
    value: T,
    generation: u64,
    loaded_at: Instant,
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct AccessCache {
    generation: AtomicU64,
    principals: Mutex<HashMap<String, Entry<std::sync::Arc<PrincipalAccess>>>>,
    /// SHA-256 of a token → the `kid` whose key verified its signature.
    verified_tokens: Mutex<HashMap<[u8; 32], Entry<String>>>,
}

impl AccessCache {
    /// Forgets every cached answer: called after any change to principals or role assignments.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The generation to stamp a value read from the database with. Read it *before* reading
    /// the database, so a change committed meanwhile makes the value stale at once.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn fresh<T>(&self, entry: &Entry<T>) -> bool {
        entry.generation == self.generation() && entry.loaded_at.elapsed() < ENTRY_TTL
    }

    /// The cached access of `principal_id`, if fresh.
    pub(crate) fn principal(&self, principal_id: &str) -> Option<std::sync::Arc<PrincipalAccess>> {
        let principals = self
            .principals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        principals
            .get(principal_id)
            .filter(|entry| self.fresh(entry))
            .map(|entry| entry.value.clone())
    }

    /// Remembers `access` of `principal_id`, read from the database at `generation`.
    pub(crate) fn remember_principal(
        &self,
        principal_id: &str,
        access: std::sync::Arc<PrincipalAccess>,
        generation: u64,
    ) {
        let mut principals = self
            .principals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if principals.len() >= MAX_ENTRIES {
            principals.clear();
        }
        principals.insert(
            principal_id.to_owned(),
            Entry {
                value: access,
                generation,
                loaded_at: Instant::now(),
            },
        );
    }

    /// The `kid` that verified the token with this digest, if remembered and fresh.
    pub(crate) fn verified_by(&self, token_digest: &[u8; 32]) -> Option<String> {
        let verified = self
            .verified_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        verified
            .get(token_digest)
            .filter(|entry| self.fresh(entry))
            .map(|entry| entry.value.clone())
    }

    /// Remembers that the key `kid` verified the token with this digest.
    pub(crate) fn remember_verified(&self, token_digest: [u8; 32], kid: &str, generation: u64) {
        let mut verified = self
            .verified_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= MAX_ENTRIES {
            verified.clear();
        }
        verified.insert(
            token_digest,
            Entry {
                value: kid.to_owned(),
                generation,
                loaded_at: Instant::now(),
            },
        );
    }
}
