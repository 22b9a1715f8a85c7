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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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

/// Values read at some generation, usable while the generation holds and for [`ENTRY_TTL`].
struct FreshMap<K, V> {
    entries: Mutex<HashMap<K, (V, u64, Instant)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Default for FreshMap<K, V> {
    fn default() -> Self {
        FreshMap {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> FreshMap<K, V> {
    fn get<Q>(&self, key: &Q, generation: u64) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(key)
            .filter(|(_, read_at, loaded_at)| {
                *read_at == generation && loaded_at.elapsed() < ENTRY_TTL
            })
            .map(|(value, _, _)| value.clone())
    }

    fn insert(&self, key: K, value: V, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (value, generation, Instant::now()));
    }
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct AccessCache {
    generation: AtomicU64,
    principals: FreshMap<String, Arc<PrincipalAccess>>,
    /// SHA-256 of a token → the `kid` whose key verified its signature.
    verified_tokens: FreshMap<[u8; 32], String>,
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

    /// The cached access of `principal_id`, if fresh.
    pub(crate) fn principal(&self, principal_id: &str) -> Option<Arc<PrincipalAccess>> {
        self.principals.get(principal_id, self.generation())
    }

    /// Remembers `access` of `principal_id`, read from the database at `generation`.
    pub(crate) fn remember_principal(
        &self,
        principal_id: &str,
        access: Arc<PrincipalAccess>,
        generation: u64,
    ) {
        self.principals
            .insert(principal_id.to_owned(), access, generation);
    }

    /// The `kid` that verified the token with this digest, if remembered and fresh.
    pub(crate) fn verified_by(&self, token_digest: &[u8; 32]) -> Option<String> {
        self.verified_tokens.get(token_digest, self.generation())
    }

    /// Remembers that the key `kid` verified the token with this digest.
    pub(crate) fn remember_verified(&self, token_digest: [u8; 32], kid: &str, generation: u64) {
        self.verified_tokens
            .insert(token_digest, kid.to_owned(), generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Arc<PrincipalAccess> {
        Arc::new(PrincipalAccess {
            principal: None,
            assignments: vec![("/subscriptions/s".into(), "Reader".into())],
        })
    }

    #[test]
    fn invalidation_makes_every_entry_stale_including_reads_in_flight() {
        let cache = AccessCache::default();
        let before = cache.generation();
        cache.remember_principal("p", access(), before);
        cache.remember_verified([7; 32], "kid-1", before);
        assert!(cache.principal("p").is_some());
        assert_eq!(cache.verified_by(&[7; 32]).as_deref(), Some("kid-1"));

        cache.invalidate();
        assert!(cache.principal("p").is_none());
        assert!(cache.verified_by(&[7; 32]).is_none());
        // A value read before the change but stored after it is not served either.
        cache.remember_principal("p", access(), before);
        assert!(cache.principal("p").is_none());
        cache.remember_principal("p", access(), cache.generation());
        assert!(cache.principal("p").is_some());
        assert!(cache.principal("other").is_none());
    }
}
