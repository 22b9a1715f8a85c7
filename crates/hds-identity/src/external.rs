//! External token issuers, trusted by configuration: an `iss` value and its keys, given as a
//! JWKS document or as the `https://` URL of one. Keys fetched over plain HTTP could be
//! replaced by anyone on the path, who could then sign tokens as any of the issuer's users, so
//! a plain-HTTP URL is refused when the issuer is configured, and fetches follow no redirect
//! off HTTPS.
//!
//! Keys behind a URL are fetched on first use and again when a token names a `kid` the cached
//! document lacks (the issuer rotated), at most once per [`REFETCH_AFTER_UNKNOWN_KID`], and in
//! any case after [`MAX_AGE`]. A failed fetch keeps the last good document.

use std::collections::HashMap;
use std::path::Path;
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

/// The longest issuer (`iss`) or JWKS URL accepted in the configuration.
const MAX_CONFIGURED_TEXT: usize = 2048;

/// Why an external issuer's configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExternalIssuerError {
    /// The JWKS URL is not `https://`.
    #[error(
        "the JWKS URL must start with https:// (keys fetched over plain HTTP could be replaced on the way); give a file holding the JWKS document instead if the issuer has no HTTPS endpoint"
    )]
    JwksNotHttps,
    /// The issuer or the URL is empty, too long, or holds whitespace or control characters.
    #[error("the {0} is empty, longer than 2048 characters, or holds whitespace")]
    Invalid(&'static str),
}

fn check_text(text: &str, what: &'static str) -> Result<(), ExternalIssuerError> {
    let valid = !text.is_empty()
        && text.len() <= MAX_CONFIGURED_TEXT
        && !text
            .chars()
            .any(|character| character.is_whitespace() || character.is_control());
    if valid {
        Ok(())
    } else {
        Err(ExternalIssuerError::Invalid(what))
    }
}

/// Where an external issuer's signing keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWKS document given in the configuration.
    Document(JwkSet),
    /// The `https://` URL of a JWKS document (an issuer's `jwks_uri`).
    Url(String),
}

/// An issuer outside the platform whose tokens are accepted; its principals are identified by
/// [`crate::external_principal_id`] of the issuer, the token's `tid` and its `oid` (or `sub`
/// when it has no `oid`), and role assignments name them by that id.
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

    /// An issuer from its `iss` value and the `https://` URL of its JWKS document.
    pub fn from_jwks_url(
        issuer: impl Into<String>,
        jwks_url: impl Into<String>,
    ) -> Result<ExternalIssuer, ExternalIssuerError> {
        let issuer = issuer.into();
        let jwks_url = jwks_url.into();
        check_text(&issuer, "issuer")?;
        check_text(&jwks_url, "JWKS URL")?;
        let is_https = jwks_url
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        if !is_https || reqwest::Url::parse(&jwks_url).is_err() {
            return Err(ExternalIssuerError::JwksNotHttps);
        }
        Ok(ExternalIssuer {
            issuer,
            jwks: JwksSource::Url(jwks_url),
        })
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

    async fn fetch(&self, url: &str, extra_ca: Option<&Path>) -> Result<JwkSet, String> {
        let client = match self.client.get() {
            Some(client) => client,
            None => {
                let built = https_client(extra_ca)?;
                self.client.get_or_init(|| built)
            }
        };
        let mut response = client
            .get(url)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64)
        {
            return Err("document too large".to_owned());
        }
        // Read in chunks and stop at the limit: a hostile endpoint may send without end.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err("document too large".to_owned());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|error| error.to_string())
    }
}

/// An HTTPS-only client trusting the system's roots and `extra_ca` (a PEM file), following
/// redirects only to HTTPS.
fn https_client(extra_ca: Option<&Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::limited(3));
    for certificate in rustls_native_certs::load_native_certs().certs {
        if let Ok(certificate) = reqwest::Certificate::from_der(certificate.as_ref()) {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path)
            .map_err(|error| format!("reading the CA file {}: {error}", path.display()))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| format!("the CA file {}: {error}", path.display()))?
        {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|error| error.to_string())
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
        match cache
            .fetch(url, self.inner.config.jwks_ca_pem_path.as_deref())
            .await
        {
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
