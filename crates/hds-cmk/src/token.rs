//! Where access tokens for a managed identity come from.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use crate::error::CmkError;

/// A boxed future returning a token, so that [`TokenSource`] can be used as a trait object.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<String, CmkError>> + Send + 'a>>;

/// Issues access tokens for a managed identity, as the identity endpoint of a hosted service
/// would. hds implements it with its identity service's in-process managed-identity tokens.
///
/// A principal that does not exist (the identity was deleted, or the system-assigned identity
/// turned off) must fail with [`CmkError::ManagedIdentityNotFound`]; other failures with
/// [`CmkError::TokenUnavailable`].
pub trait TokenSource: Send + Sync {
    /// A bearer token for `principal_id` with audience `resource` (for Key Vault,
    /// [`crate::client::VAULT_RESOURCE`]).
    fn token(&self, principal_id: &str, resource: &str) -> TokenFuture<'_>;
}

/// How long before its expiry a cached token is replaced.
const REFRESH_MARGIN_SECONDS: i64 = 300;

/// A [`TokenSource`] that keeps each token until shortly (5 minutes) before its `exp` claim
/// and asks `inner` otherwise. Tokens whose expiry cannot be read (not a JWT) are not cached.
///
/// Caching does not hide a deleted identity for long: the vault validates each token against
/// the identity service, which refuses tokens of deleted principals.
pub struct CachingTokenSource {
    inner: Arc<dyn TokenSource>,
    cache: Mutex<HashMap<(String, String), CachedToken>>,
    now: Box<dyn Fn() -> i64 + Send + Sync>,
}

struct CachedToken {
    token: Zeroizing<String>,
    expires: i64,
}

impl CachingTokenSource {
    /// Caches what `inner` issues, against the system clock.
    pub fn new(inner: Arc<dyn TokenSource>) -> CachingTokenSource {
        CachingTokenSource::with_clock(inner, || time::OffsetDateTime::now_utc().unix_timestamp())
    }

    /// Caches what `inner` issues, with `now` giving Unix seconds (tests).
    pub fn with_clock(
        inner: Arc<dyn TokenSource>,
        now: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> CachingTokenSource {
        CachingTokenSource {
            inner,
            cache: Mutex::new(HashMap::new()),
            now: Box::new(now),
        }
    }

    /// Forgets the cached tokens of `principal_id` (after its identity changed).
    pub fn forget(&self, principal_id: &str) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.retain(|(principal, _), _| principal != principal_id);
    }

    fn cached(&self, key: &(String, String)) -> Option<String> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = cache.get(key)?;
        ((self.now)() < entry.expires - REFRESH_MARGIN_SECONDS).then(|| entry.token.to_string())
    }
}

impl TokenSource for CachingTokenSource {
    fn token(&self, principal_id: &str, resource: &str) -> TokenFuture<'_> {
        let key = (principal_id.to_owned(), resource.to_owned());
        Box::pin(async move {
            if let Some(token) = self.cached(&key) {
                return Ok(token);
            }
            let token = self.inner.token(&key.0, &key.1).await?;
            if let Some(expires) = jwt_expiry(&token) {
                let mut cache = self
                    .cache
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                cache.insert(
                    key,
                    CachedToken {
                        token: Zeroizing::new(token.clone()),
                        expires,
                    },
                );
            }
            Ok(token)
        })
    }
}

/// The `exp` claim of a JWT, read without verifying it (the vault verifies; this only decides
/// how long to keep the token).
fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let decoded = Zeroizing::new(URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?);
    let claims: serde_json::Value = serde_json::from_slice(&decoded).ok()?;
    claims.get("exp")?.as_i64()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

    use super::*;

    struct CountingSource {
        issued: AtomicUsize,
        expires: i64,
    }

    impl TokenSource for CountingSource {
        fn token(&self, principal_id: &str, _resource: &str) -> TokenFuture<'_> {
            let count = self.issued.fetch_add(1, Ordering::SeqCst);
            let claims = URL_SAFE_NO_PAD
                .encode(serde_json::json!({"oid": principal_id, "exp": self.expires}).to_string());
            let principal = principal_id.to_owned();
            Box::pin(async move {
                if principal == "deleted" {
                    return Err(CmkError::ManagedIdentityNotFound {
                        principal_id: principal,
                    });
                }
                Ok(format!("header.{claims}.signature{count}"))
            })
        }
    }

    #[tokio::test]
    async fn caches_until_shortly_before_expiry() {
        let inner = Arc::new(CountingSource {
            issued: AtomicUsize::new(0),
            expires: 10_000,
        });
        let now = Arc::new(AtomicI64::new(1_000));
        let clock = Arc::clone(&now);
        let source =
            CachingTokenSource::with_clock(inner.clone(), move || clock.load(Ordering::SeqCst));
        let first = source.token("p1", "https://vault.azure.net").await.unwrap();
        let second = source.token("p1", "https://vault.azure.net").await.unwrap();
        assert_eq!(first, second);
        assert_eq!(inner.issued.load(Ordering::SeqCst), 1);
        source.token("p2", "https://vault.azure.net").await.unwrap();
        assert_eq!(inner.issued.load(Ordering::SeqCst), 2);
        // Inside the refresh margin: a new token.
        now.store(10_000 - REFRESH_MARGIN_SECONDS, Ordering::SeqCst);
        let third = source.token("p1", "https://vault.azure.net").await.unwrap();
        assert_ne!(first, third);
        assert_eq!(inner.issued.load(Ordering::SeqCst), 3);
        source.forget("p1");
        now.store(1_000, Ordering::SeqCst);
        source.token("p1", "https://vault.azure.net").await.unwrap();
        assert_eq!(inner.issued.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn passes_identity_errors_through() {
        let inner = Arc::new(CountingSource {
            issued: AtomicUsize::new(0),
            expires: 10_000,
        });
        let source = CachingTokenSource::with_clock(inner, || 0);
        assert!(matches!(
            source.token("deleted", "https://vault.azure.net").await,
            Err(CmkError::ManagedIdentityNotFound { .. })
        ));
    }

    #[test]
    fn reads_jwt_expiry() {
        let claims = URL_SAFE_NO_PAD.encode(r#"{"exp":1234}"#);
        assert_eq!(jwt_expiry(&format!("a.{claims}.c")), Some(1234));
        assert_eq!(jwt_expiry("opaque-token"), None);
    }
}
