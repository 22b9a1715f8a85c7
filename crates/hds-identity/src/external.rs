//! External token issuers, trusted by configuration: an `iss` value and its keys, given as a
//! JWKS document or as the URL of one.
//!
//! Keys behind a URL are fetched on first use and again when a token names a `kid` the cached
//! document lacks (the issuer rotated), at most once per [`REFETCH_AFTER_UNKNOWN_KID`], and in
//! any case after [`MAX_AGE`]. A failed fetch keeps the last good document.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::jws::JwkSet;
use crate::{Identity, TokenError};

/// The shortest interval between fetches caused by unknown kids.
const REFETCH_AFTER_UNKNOWN_KID: Duration = Duration::from_secs(30);
/// How long a fetched document is used before it is fetched again.
const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS document accepted.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Where an external issuer's signing keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWKS document given in the configuration.
    Document(JwkSet),
    /// The URL of a JWKS document (an issuer's `jwks_uri`).
    Url(String),
}

/// An issuer outside the platform whose tokens are accepted; its principals are identified by
/// the token's `oid` (or `sub` when it has no `oid`), and role assignments can name them.
#[derive(Debug, Clone)]
pub struct ExternalIssuer {
    /// The exact `iss` value of its tokens.
    pub issuer: String,
    /// Its signing keys (RS256 or ES256 keys; others are ignored).
    pub jwks: JwksSource,
}

impl ExternalIssuer {
    /// An issuer from its `iss` value and its JWKS document (JSON text).
    pub fn from_jwks_json(
        issuer: impl Into<String>,
        jwks_json: &str,
    ) -> Result<ExternalIssuer, serde_json::Error> {
        Ok(ExternalIssuer {
            issuer: issuer.into(),
            jwks: JwksSource::Document(serde_json::from_str(jwks_json)?),
        })
    }

    /// An issuer from its `iss` value and the URL of its JWKS document.
    pub fn from_jwks_url(issuer: impl Into<String>, jwks_url: impl Into<String>) -> ExternalIssuer {
        ExternalIssuer {
            issuer: issuer.into(),
            jwks: JwksSource::Url(jwks_url.into()),
        }
    }
}

struct Fetched {
    keys: Arc<JwkSet>,
    fetched_at: Instant,
}

/// Fetched JWKS documents by URL. A std `RwLock`: never held across an await.
#[derive(Default)]
pub(crate) struct ExternalKeyCache {
    documents: RwLock<HashMap<String, Fetched>>,
    client: std::sync::OnceLock<reqwest::Client>,
}

impl ExternalKeyCache {
    fn cached(&self, url: &str) -> Option<(Arc<JwkSet>, Duration)> {
        let documents = match self.documents.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        documents
            .get(url)
            .map(|fetched| (fetched.keys.clone(), fetched.fetched_at.elapsed()))
    }

    fn store(&self, url: &str, keys: Arc<JwkSet>) {
        let mut documents = match self.documents.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        documents.insert(
            url.to_owned(),
            Fetched {
                keys,
                fetched_at: Instant::now(),
            },
        );
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, String> {
        let client = self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .unwrap_or_default()
        });
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response.bytes().await.map_err(|error| error.to_string())?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err("document too large".to_owned());
        }
        serde_json::from_slice(&body).map_err(|error| error.to_string())
    }
}

impl Identity {
    /// The keys of `issuer`, fetching its JWKS document when needed (see the module docs).
    pub(crate) async fn external_keys(
        &self,
        issuer: &ExternalIssuer,
        kid: Option<&str>,
    ) -> Result<Arc<JwkSet>, TokenError> {
        let url = match &issuer.jwks {
            JwksSource::Document(keys) => return Ok(Arc::new(keys.clone())),
            JwksSource::Url(url) => url,
        };
        let cache = &self.inner.external_keys;
        let cached = cache.cached(url);
        if let Some((keys, age)) = &cached {
            let has_kid =
                kid.is_none_or(|kid| keys.keys.iter().any(|jwk| jwk.kid.as_deref() == Some(kid)));
            let fresh = *age < MAX_AGE;
            if fresh && (has_kid || *age < REFETCH_AFTER_UNKNOWN_KID) {
                return Ok(keys.clone());
            }
        }
        match cache.fetch(url).await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                cache.store(url, keys.clone());
                Ok(keys)
            }
            Err(error) => {
                tracing::warn!(issuer = %issuer.issuer, %error, "fetching an external issuer's keys failed");
                match cached {
                    Some((keys, _)) => Ok(keys),
                    None => Err(TokenError::UnknownSigningKey),
                }
            }
        }
    }
}
