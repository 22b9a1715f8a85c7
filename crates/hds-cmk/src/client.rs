//! A client for the part of Key Vault's keys REST API a customer-managed key needs: get a key,
//! wrap, unwrap. It speaks to hds's own vault and to Azure Key Vault alike (same API, same
//! error shape), over HTTPS only, trusting hds's local CA and the system roots, and only to
//! the hosts its [`TokenDestinations`] allow: every request is checked before it is sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hds_crypto::keys::{RSA_OAEP, RSA_OAEP_256, WrappedKey};
use hds_metrics::{KeyVaultCallMetrics, KeyVaultOperation};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::destination::TokenDestinations;
use crate::error::{CmkError, ForbiddenReason, bounded};
use crate::url::KeyUrl;

/// The token audience (resource) of Key Vault's data plane.
pub const VAULT_RESOURCE: &str = "https://vault.azure.net";

/// The api-version sent with every request: supported by Azure Key Vault and by hds's vault.
pub const API_VERSION: &str = "7.4";

/// The RSA-OAEP variant a key is wrapped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WrapAlgorithm {
    /// RSA-OAEP with SHA-256 (`RSA-OAEP-256`): the default.
    #[default]
    RsaOaep256,
    /// RSA-OAEP with SHA-1 (`RSA-OAEP`), for HSMs that do no better.
    RsaOaep,
}

impl WrapAlgorithm {
    /// Key Vault's name for the algorithm.
    pub fn as_str(self) -> &'static str {
        match self {
            WrapAlgorithm::RsaOaep256 => RSA_OAEP_256,
            WrapAlgorithm::RsaOaep => RSA_OAEP,
        }
    }

    /// The algorithm Key Vault calls `name`, if it is one of these.
    pub fn from_name(name: &str) -> Option<WrapAlgorithm> {
        match name {
            RSA_OAEP_256 => Some(WrapAlgorithm::RsaOaep256),
            RSA_OAEP => Some(WrapAlgorithm::RsaOaep),
            _ => None,
        }
    }
}

/// How the client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// A PEM file of extra CA certificates to trust: hds's local CA (`{data-dir}/tls/ca.pem`).
    pub ca_pem_path: Option<PathBuf>,
    /// Whether to trust the system's CA store as well (needed for Azure Key Vault).
    pub trust_system_roots: bool,
    /// The algorithm new wraps use.
    pub wrap_algorithm: WrapAlgorithm,
    /// How long one request may take in all.
    pub request_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            ca_pem_path: None,
            trust_system_roots: true,
            wrap_algorithm: WrapAlgorithm::RsaOaep256,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What the vault says about one key version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFacts {
    /// The versioned key id (`kid`).
    pub kid: KeyUrl,
    /// `RSA`, `RSA-HSM`, `EC`, `oct-HSM`, ...
    pub kty: String,
    /// The RSA modulus length in bits (0 for keys without a modulus).
    pub key_size: u32,
    /// The permitted operations (`wrapKey`, `unwrapKey`, ...).
    pub key_ops: Vec<String>,
    /// Whether the version is enabled.
    pub enabled: bool,
    /// Not valid before (Unix seconds).
    pub not_before: Option<i64>,
    /// Expires (Unix seconds).
    pub expires: Option<i64>,
}

impl KeyFacts {
    /// The version the `kid` names.
    pub fn version(&self) -> &str {
        // `get_key` only builds facts from a versioned kid.
        self.kid.version().unwrap_or_default()
    }

    /// Why the version cannot be used at `now` (Unix seconds), if it cannot: disabled, not
    /// yet valid, or expired.
    pub fn usability_at(&self, now: i64) -> Result<(), CmkError> {
        if !self.enabled {
            return Err(CmkError::KeyDisabled {
                message: format!("key version {} is disabled", self.kid),
            });
        }
        if let Some(not_before) = self.not_before
            && now < not_before
        {
            return Err(CmkError::KeyNotYetValid {
                message: format!("key version {} is not valid before {not_before}", self.kid),
            });
        }
        if let Some(expires) = self.expires
            && now >= expires
        {
            return Err(CmkError::KeyExpired {
                message: format!("key version {} expired at {expires}", self.kid),
            });
        }
        Ok(())
    }

    /// Whether `key_ops` includes `operation` (compared as Key Vault spells them).
    pub fn permits(&self, operation: &str) -> bool {
        self.key_ops.iter().any(|permitted| permitted == operation)
    }
}

/// The bearer challenge a vault answers an unauthenticated request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    /// `authorization` (or `authorization_uri`): the token authority, `{authority}/{tenant}`.
    pub authorization: String,
    /// `resource` (or `scope`).
    pub resource: Option<String>,
}

impl BearerChallenge {
    /// The tenant the vault belongs to: the last path segment of the authority.
    pub fn tenant_id(&self) -> Option<&str> {
        self.authorization
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|segment| !segment.is_empty() && !segment.contains(':'))
    }
}

/// The Key Vault REST client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KeyVaultClient {
    http: reqwest::Client,
    wrap_algorithm: WrapAlgorithm,
    destinations: TokenDestinations,
    metrics: KeyVaultCallMetrics,
}

#[derive(Deserialize)]
struct KeyBundleBody {
    key: JsonWebKeyBody,
    #[serde(default)]
    attributes: AttributesBody,
}

#[derive(Deserialize)]
struct JsonWebKeyBody {
    kid: String,
    kty: String,
    #[serde(default)]
    key_ops: Vec<String>,
    #[serde(default)]
    n: Option<String>,
}

#[derive(Deserialize, Default)]
struct AttributesBody {
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

#[derive(Deserialize)]
struct OperationResultBody {
    kid: Option<String>,
    value: String,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    innererror: Option<InnerErrorBody>,
}

#[derive(Deserialize)]
struct InnerErrorBody {
    #[serde(default)]
    code: String,
}

impl KeyVaultClient {
    /// A client per `config` that calls only the vaults `destinations` allows.
    pub fn new(
        config: &ClientConfig,
        destinations: TokenDestinations,
    ) -> Result<KeyVaultClient, CmkError> {
        let roots =
            hds_tls::trusted_roots(config.trust_system_roots, config.ca_pem_path.as_deref())
                .map_err(|error| CmkError::Configuration(format!("trusted CAs: {error}")))?;
        if roots.is_empty() {
            tracing::warn!("no CA certificates to trust: every vault call will fail");
        }
        // The provider is named rather than taken from process state, which another crate in
        // the process may have set to something else.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| CmkError::Configuration(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| CmkError::Configuration(error.to_string()))?;
        Ok(KeyVaultClient {
            http,
            wrap_algorithm: config.wrap_algorithm,
            destinations,
            metrics: KeyVaultCallMetrics::default(),
        })
    }

    /// The same client, counting and timing its calls in `metrics`.
    pub fn with_metrics(mut self, metrics: KeyVaultCallMetrics) -> KeyVaultClient {
        self.metrics = metrics;
        self
    }

    /// Runs one call of `operation`, recording its outcome and duration.
    async fn metered<T>(
        &self,
        operation: KeyVaultOperation,
        call: impl Future<Output = Result<T, CmkError>>,
    ) -> Result<T, CmkError> {
        let started = Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.outcome_label(),
        };
        self.metrics.record(operation, outcome, started.elapsed());
        result
    }

    /// The algorithm [`KeyVaultClient::wrap_key`] uses.
    pub fn wrap_algorithm(&self) -> WrapAlgorithm {
        self.wrap_algorithm
    }

    /// The key version `url` names (its latest version when `url` has none).
    pub async fn get_key(&self, url: &KeyUrl, token: &str) -> Result<KeyFacts, CmkError> {
        self.metered(KeyVaultOperation::Get, self.get_key_once(url, token))
            .await
    }

    async fn get_key_once(&self, url: &KeyUrl, token: &str) -> Result<KeyFacts, CmkError> {
        self.destinations.check(url).await?;
        let request_url = format!(
            "{}keys/{}{}?api-version={API_VERSION}",
            url.vault_base_url(),
            url.name(),
            url.version()
                .map(|version| format!("/{version}"))
                .unwrap_or_default()
        );
        let response = self
            .http
            .get(request_url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .send()
            .await
            .map_err(network_error)?;
        let body: KeyBundleBody = read_success(response).await?;
        let kid = KeyUrl::parse(&body.key.kid)
            .map_err(|error| CmkError::InvalidResponse(format!("the key's kid: {error}")))?;
        if !kid.is_versioned() || !kid.same_key(url) {
            return Err(CmkError::InvalidResponse(
                "the key's kid is not a version of the requested key".into(),
            ));
        }
        if let Some(version) = url.version()
            && kid.version() != Some(version)
        {
            return Err(CmkError::InvalidResponse(
                "the key's kid names another version than requested".into(),
            ));
        }
        let key_size = match &body.key.n {
            Some(modulus) => modulus_bits(modulus)?,
            None => 0,
        };
        Ok(KeyFacts {
            kid,
            kty: body.key.kty,
            key_size,
            key_ops: body.key.key_ops,
            enabled: body.attributes.enabled.unwrap_or(true),
            not_before: body.attributes.nbf,
            expires: body.attributes.exp,
        })
    }

    /// Wraps `plaintext_key` under the key `url` names, with the configured algorithm.
    pub async fn wrap_key(
        &self,
        url: &KeyUrl,
        token: &str,
        plaintext_key: &[u8],
    ) -> Result<WrappedKey, CmkError> {
        let result = self
            .wrap_key_with(url, token, self.wrap_algorithm, plaintext_key)
            .await;
        match result {
            // An HSM that does RSA-OAEP with SHA-1 only (SoftHSM 2.6) refuses RSA-OAEP-256 with
            // a 400 that names RSA-OAEP: wrap with that instead. The wrapped key records the
            // algorithm, so unwrapping follows it.
            Err(CmkError::BadRequest { message })
                if self.wrap_algorithm == WrapAlgorithm::RsaOaep256
                    && message.contains("RSA-OAEP")
                    && !message.contains("RSA-OAEP-256 is supported") =>
            {
                tracing::info!("the key's HSM refuses RSA-OAEP-256; wrapping with RSA-OAEP");
                self.wrap_key_with(url, token, WrapAlgorithm::RsaOaep, plaintext_key)
                    .await
            }
            other => other,
        }
    }

    /// Wraps `plaintext_key` under the key `url` names with `algorithm`. The result names the
    /// version that wrapped it (the latest, when `url` has no version).
    pub async fn wrap_key_with(
        &self,
        url: &KeyUrl,
        token: &str,
        algorithm: WrapAlgorithm,
        plaintext_key: &[u8],
    ) -> Result<WrappedKey, CmkError> {
        let value = Zeroizing::new(URL_SAFE_NO_PAD.encode(plaintext_key));
        let result = self
            .metered(
                KeyVaultOperation::Wrap,
                self.key_operation(url, token, "wrapkey", algorithm, &value),
            )
            .await?;
        let kid = match result.kid.as_deref().map(KeyUrl::parse) {
            Some(Ok(kid)) if kid.is_versioned() && kid.same_key(url) => kid,
            Some(_) => {
                return Err(CmkError::InvalidResponse(
                    "wrapKey returned a kid that is not a version of the key".into(),
                ));
            }
            None if url.is_versioned() => url.clone(),
            None => {
                return Err(CmkError::InvalidResponse(
                    "wrapKey on a versionless key returned no kid".into(),
                ));
            }
        };
        let ciphertext = URL_SAFE_NO_PAD
            .decode(result.value.trim_end_matches('='))
            .map_err(|_| CmkError::InvalidResponse("wrapKey's value is not base64url".into()))?;
        Ok(WrappedKey {
            kid: kid.to_string(),
            algorithm: algorithm.as_str().to_owned(),
            ciphertext,
        })
    }

    /// Unwraps `wrapped` with the key version its `kid` names.
    pub async fn unwrap_key(
        &self,
        token: &str,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<Vec<u8>>, CmkError> {
        let url = KeyUrl::parse(&wrapped.kid)?;
        let algorithm =
            WrapAlgorithm::from_name(&wrapped.algorithm).ok_or_else(|| CmkError::BadRequest {
                message: format!(
                    "unsupported wrap algorithm '{}': use RSA-OAEP-256 or RSA-OAEP",
                    bounded(&wrapped.algorithm)
                ),
            })?;
        let value = URL_SAFE_NO_PAD.encode(&wrapped.ciphertext);
        let result = self
            .metered(
                KeyVaultOperation::Unwrap,
                self.key_operation(&url, token, "unwrapkey", algorithm, &value),
            )
            .await?;
        let encoded = Zeroizing::new(result.value);
        let plaintext = URL_SAFE_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| CmkError::InvalidResponse("unwrapKey's value is not base64url".into()))?;
        Ok(Zeroizing::new(plaintext))
    }

    /// Asks the vault of `url` for its bearer challenge (an unauthenticated request), which
    /// names the vault's tenant. `None` when the vault sends none.
    pub async fn challenge(&self, url: &KeyUrl) -> Result<Option<BearerChallenge>, CmkError> {
        self.destinations.check(url).await?;
        let request_url = format!("{}keys?api-version={API_VERSION}", url.vault_base_url());
        let response = self
            .http
            .get(request_url)
            .send()
            .await
            .map_err(network_error)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(None);
        }
        Ok(response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(parse_bearer_challenge))
    }

    async fn key_operation(
        &self,
        url: &KeyUrl,
        token: &str,
        operation: &str,
        algorithm: WrapAlgorithm,
        value: &str,
    ) -> Result<OperationResultBody, CmkError> {
        self.destinations.check(url).await?;
        // A versionless key id makes the SDKs send an empty version segment; vaults accept it.
        let request_url = format!(
            "{}keys/{}/{}/{operation}?api-version={API_VERSION}",
            url.vault_base_url(),
            url.name(),
            url.version().unwrap_or_default()
        );
        let body = Zeroizing::new(
            serde_json::json!({"alg": algorithm.as_str(), "value": value}).to_string(),
        );
        let response = self
            .http
            .post(request_url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.as_bytes().to_vec())
            .send()
            .await
            .map_err(network_error)?;
        read_success(response).await
    }
}

/// The modulus length in bits of a base64url-encoded big-endian modulus.
fn modulus_bits(encoded: &str) -> Result<u32, CmkError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| CmkError::InvalidResponse("the key's modulus (n) is not base64url".into()))?;
    let significant: &[u8] = match bytes.iter().position(|byte| *byte != 0) {
        Some(start) => &bytes[start..],
        None => &[],
    };
    let Some(first) = significant.first() else {
        return Ok(0);
    };
    let bits = (significant.len() as u64 - 1) * 8 + u64::from(8 - first.leading_zeros());
    u32::try_from(bits)
        .map_err(|_| CmkError::InvalidResponse("the key's modulus is too long".into()))
}

fn network_error(error: reqwest::Error) -> CmkError {
    let mut message = if error.is_timeout() {
        "the request timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    CmkError::Network(bounded(&message))
}

async fn read_success<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, CmkError> {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.map_err(network_error)?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|error| {
            CmkError::InvalidResponse(format!(
                "the body is not the expected JSON ({:?} error at line {}, column {})",
                error.classify(),
                error.line(),
                error.column()
            ))
        });
    }
    Err(error_from_response(status, &headers, &bytes))
}

/// Maps a vault's error answer to a [`CmkError`], by status and Key Vault's error codes.
fn error_from_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> CmkError {
    let parsed: Option<ErrorBody> = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|envelope| envelope.error);
    let (code, inner_code, message) = match &parsed {
        Some(error) => (
            error.code.as_str(),
            error
                .innererror
                .as_ref()
                .map(|inner| inner.code.as_str())
                .unwrap_or(""),
            bounded(&error.message),
        ),
        None => ("", "", String::new()),
    };
    match status {
        StatusCode::UNAUTHORIZED => {
            let challenge = headers
                .get(WWW_AUTHENTICATE)
                .and_then(|value| value.to_str().ok())
                .and_then(parse_bearer_challenge);
            let mut message = if message.is_empty() {
                "the vault answered 401 Unauthorized".to_owned()
            } else {
                message
            };
            if let Some(challenge) = challenge {
                message.push_str(&format!(
                    " (the vault asks for a token from {})",
                    bounded(&challenge.authorization)
                ));
            }
            let tenant_mismatch = message.contains("AKV10032");
            CmkError::Unauthorized {
                message,
                tenant_mismatch,
            }
        }
        StatusCode::FORBIDDEN => {
            let has = |text: &str| {
                inner_code.eq_ignore_ascii_case(text) || code.eq_ignore_ascii_case(text)
            };
            if has("KeyDisabled") || message.contains("disabled key") {
                CmkError::KeyDisabled { message }
            } else if has("KeyNotYetValid") {
                CmkError::KeyNotYetValid { message }
            } else if has("KeyExpired") || message.contains("expired key") {
                CmkError::KeyExpired { message }
            } else {
                let reason = if has("ForbiddenByRbac") {
                    ForbiddenReason::Rbac
                } else if has("ForbiddenByFirewall")
                    || message.contains("Client address is not authorized")
                {
                    ForbiddenReason::Firewall
                } else if has("AccessDenied") || message.contains("does not have keys") {
                    ForbiddenReason::AccessPolicy
                } else if has("KeyOperationForbidden") {
                    ForbiddenReason::KeyOperation
                } else if message.contains("Caller is not authorized") {
                    ForbiddenReason::Rbac
                } else {
                    ForbiddenReason::Other
                };
                CmkError::Forbidden { reason, message }
            }
        }
        StatusCode::NOT_FOUND => CmkError::KeyNotFound {
            message: if message.is_empty() {
                "the vault answered 404 Not Found".to_owned()
            } else {
                message
            },
        },
        status if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS => {
            CmkError::BadRequest {
                message: format!("HTTP {}: {message}", status.as_u16()),
            }
        }
        status => CmkError::Server {
            status: status.as_u16(),
            message,
        },
    }
}

/// Parses `Bearer authorization="...", resource="..."` (or `authorization_uri`, `scope`).
fn parse_bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let rest = header.trim();
    let scheme_end = rest.find(' ')?;
    if !rest[..scheme_end].eq_ignore_ascii_case("Bearer") {
        return None;
    }
    let mut authorization = None;
    let mut resource = None;
    for part in rest[scheme_end..].split(',') {
        let Some((name, value)) = part.trim().split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_owned();
        match name.trim().to_ascii_lowercase().as_str() {
            "authorization" | "authorization_uri" => authorization = Some(value),
            "resource" | "scope" => resource = Some(value),
            _ => {}
        }
    }
    Some(BearerChallenge {
        authorization: authorization?,
        resource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_counts_significant_bits() {
        let mut modulus = vec![0u8; 257];
        modulus[1] = 0x80;
        assert_eq!(
            modulus_bits(&URL_SAFE_NO_PAD.encode(&modulus)).unwrap(),
            2048
        );
        let mut modulus = vec![0xffu8; 384];
        modulus[0] = 0x7f;
        assert_eq!(
            modulus_bits(&URL_SAFE_NO_PAD.encode(&modulus)).unwrap(),
            3071
        );
        assert!(modulus_bits("not base64!").is_err());
    }

    #[test]
    fn parses_bearer_challenges() {
        let challenge = parse_bearer_challenge(
            "Bearer authorization=\"https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47\", resource=\"https://vault.azure.net\"",
        )
        .unwrap();
        assert_eq!(
            challenge.tenant_id(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(
            challenge.resource.as_deref(),
            Some("https://vault.azure.net")
        );
        assert!(parse_bearer_challenge("Basic realm=\"x\"").is_none());
        let bare =
            parse_bearer_challenge("Bearer authorization=\"https://127.0.0.1:8443\"").unwrap();
        assert_eq!(bare.tenant_id(), None);
    }

    #[test]
    fn maps_forbidden_by_inner_code() {
        let body = |inner: &str| {
            format!(
                r#"{{"error":{{"code":"Forbidden","message":"m","innererror":{{"code":"{inner}"}}}}}}"#
            )
        };
        let headers = HeaderMap::new();
        let reason = |inner: &str| match error_from_response(
            StatusCode::FORBIDDEN,
            &headers,
            body(inner).as_bytes(),
        ) {
            CmkError::Forbidden { reason, .. } => Some(reason),
            _ => None,
        };
        assert_eq!(reason("ForbiddenByRbac"), Some(ForbiddenReason::Rbac));
        assert_eq!(reason("AccessDenied"), Some(ForbiddenReason::AccessPolicy));
        assert_eq!(
            reason("ForbiddenByFirewall"),
            Some(ForbiddenReason::Firewall)
        );
        assert_eq!(reason("Whatever"), Some(ForbiddenReason::Other));
        assert!(matches!(
            error_from_response(
                StatusCode::FORBIDDEN,
                &headers,
                body("KeyDisabled").as_bytes()
            ),
            CmkError::KeyDisabled { .. }
        ));
        assert!(matches!(
            error_from_response(StatusCode::SERVICE_UNAVAILABLE, &headers, b"oops"),
            CmkError::Server { status: 503, .. }
        ));
        assert!(matches!(
            error_from_response(StatusCode::TOO_MANY_REQUESTS, &headers, b""),
            CmkError::Server { status: 429, .. }
        ));
    }
}
