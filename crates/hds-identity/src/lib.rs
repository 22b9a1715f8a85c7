//! Identity for hds: who a caller is, and what they may do.
//!
//! - **Principals** ([`principals`]): tenants, subscriptions, service principals (client id +
//!   secret, the secret kept only as an HMAC-SHA256 under a key derived from the platform root
//!   key) and managed identities (system-assigned ones tied to the resource that enabled them,
//!   user-assigned ones tied to a `Microsoft.ManagedIdentity/userAssignedIdentities` resource).
//! - **App registrations** ([`applications`]): applications, their service principals and
//!   password credentials with expiry, managed through Microsoft Graph's `applications` and
//!   `servicePrincipals` by whoever may assign roles on the subscription.
//! - **Tokens** ([`tokens`]): ES256 JWTs signed with keys sealed under the root key, issued by
//!   the OAuth2 client-credentials endpoint ([`Identity::router`]) or in-process to managed
//!   identities, and validated with the algorithm fixed by the key, never by the token.
//!   Tokens from configured external issuers validate too; their principals get ids in a
//!   namespace of their own ([`external_principal_id`]), so they can never be a local
//!   principal or a managed identity.
//! - **Authorization** ([`rbac`]): Azure's built-in role definitions ([`roles`]), role
//!   assignments inherited down the scope tree, and [`Identity::authorize`].
//! - **Enforcement** ([`auth`]): [`auth::authenticate`] and axum extractors that answer 401 with
//!   the `WWW-Authenticate` challenge Azure SDKs expect.
//!
//! Invariants:
//! - A token is bounded before it is read: its length, its lifetime (24 hours at most, `exp`
//!   required, `nbf` honoured) and its identity claims; an external issuer's keys come only
//!   from its configuration or over HTTPS.
//! - No secret is stored in the clear: client secrets are HMACed, signing keys sealed.
//! - A token of a deleted principal stops working at once: validation looks the principal up
//!   on every call (one primary-key read), rather than caching, because on several nodes a
//!   cache could not learn of a deletion made elsewhere.
//! - This crate knows nothing of ARM's wire format beyond ids and scopes; `hds-arm` renders
//!   role assignments and identities as ARM JSON.
#![deny(missing_docs)]

mod access_cache;
pub mod applications;
pub mod auth;
mod bootstrap;
mod error;
mod external;
pub mod graph;
mod graph_apps;
mod jws;
pub mod principals;
pub mod rbac;
pub mod roles;
mod schema;
mod scope;
mod signing;
mod token_service;
pub mod tokens;

use std::sync::Arc;

use hds_crypto::root::RootKey;
use hds_db::Database;

pub use auth::{AuthError, AuthenticatedPrincipal};
pub use bootstrap::{AdminCredentials, BootstrapInfo};
pub use error::{IdentityError, TokenError};
pub use external::{ExternalIssuer, ExternalIssuerError, JwksSource};
pub use graph::{GRAPH_AUDIENCE, MAX_GRAPH_IDS};
pub use jws::{Jwk, JwkSet};
pub use rbac::{Decision, DenyReason, RoleAssignment, RoleAssignmentRequest, ScopeFilter};
pub use roles::RoleDefinition;
/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub use tokens::fuzzing;
pub use tokens::{
    AccessToken, MAX_CLAIM_BYTES, MAX_TOKEN_BYTES, MAX_TOKEN_LIFETIME_SECONDS,
    external_principal_id,
};

/// The audience of the control plane (ARM).
pub const MANAGEMENT_AUDIENCE: &str = "https://management.azure.com";
/// The audience of the DICOMweb data plane.
pub const DICOM_AUDIENCE: &str = "https://dicom.healthcareapis.azure.com";
/// The audience of the key vault data plane.
pub const VAULT_AUDIENCE: &str = "https://vault.azure.net";

/// How the identity service is set up.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The public base URL of the main listener (`https://host:port`), without a trailing
    /// slash; token issuers are `{base_url}/{tenant}/v2.0`.
    pub base_url: String,
    /// Issuers outside the platform whose tokens are accepted too.
    pub external_issuers: Vec<ExternalIssuer>,
    /// A PEM file of CA certificates trusted for fetching external issuers' JWKS documents,
    /// besides the system's roots.
    pub jwks_ca_pem_path: Option<std::path::PathBuf>,
}

impl IdentityConfig {
    /// A configuration with the given base URL and no external issuers.
    pub fn new(base_url: impl Into<String>) -> IdentityConfig {
        let base_url: String = base_url.into();
        IdentityConfig {
            base_url: base_url.trim_end_matches('/').to_owned(),
            external_issuers: Vec::new(),
            jwks_ca_pem_path: None,
        }
    }

    /// Trusts the CA certificates in `path` (PEM) for fetching JWKS documents too.
    pub fn with_jwks_ca(mut self, path: impl Into<std::path::PathBuf>) -> IdentityConfig {
        self.jwks_ca_pem_path = Some(path.into());
        self
    }

    /// Adds an external issuer whose tokens are accepted.
    pub fn with_external_issuer(mut self, issuer: ExternalIssuer) -> IdentityConfig {
        self.external_issuers.push(issuer);
        self
    }
}

/// The identity service: one per process, cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

struct Inner {
    database: Database,
    root_key: Arc<RootKey>,
    config: IdentityConfig,
    /// HMAC key for client-secret hashes, derived from the root key once.
    secret_hash_key: aws_lc_rs::hmac::Key,
    signing_keys: signing::KeyRing,
    /// The bootstrap tenant, read once from the database (it never changes once set).
    default_tenant: tokio::sync::OnceCell<String>,
    /// JWKS documents fetched from external issuers' URLs.
    external_keys: external::ExternalKeyCache,
    /// Serializes bootstraps within the process: two at once could each replace the admin's
    /// secret and leave admin.json holding the loser's.
    bootstrap_lock: tokio::sync::Mutex<()>,
    /// Principals, role assignments and verified token signatures of recent requests.
    access_cache: access_cache::AccessCache,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Identity")
            .field("base_url", &self.inner.config.base_url)
            .finish_non_exhaustive()
    }
}

/// The purpose under which client-secret hashes are keyed.
const CLIENT_SECRET_HASH_PURPOSE: &str = "identity/client-secret-hash";

impl Identity {
    /// Opens the identity service on `database`: applies the `identity` migrations and makes
    /// sure a token-signing key exists (creating and sealing one on first start).
    pub async fn open(
        database: Database,
        root_key: Arc<RootKey>,
        config: IdentityConfig,
    ) -> Result<Identity, IdentityError> {
        database
            .migrate(schema::COMPONENT, schema::MIGRATIONS)
            .await?;
        let derived = root_key.derive(CLIENT_SECRET_HASH_PURPOSE);
        let secret_hash_key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, derived.as_ref());
        let identity = Identity {
            inner: Arc::new(Inner {
                database,
                root_key,
                config,
                secret_hash_key,
                signing_keys: signing::KeyRing::default(),
                default_tenant: tokio::sync::OnceCell::new(),
                bootstrap_lock: tokio::sync::Mutex::new(()),
                external_keys: external::ExternalKeyCache::default(),
                access_cache: access_cache::AccessCache::default(),
            }),
        };
        identity.ensure_signing_key().await?;
        Ok(identity)
    }

    /// The configuration this service runs with.
    pub fn config(&self) -> &IdentityConfig {
        &self.inner.config
    }

    /// The issuer URL of `tenant_id`'s tokens: `{base}/{tenant}/v2.0`.
    pub fn issuer(&self, tenant_id: &str) -> String {
        format!("{}/{tenant_id}/v2.0", self.inner.config.base_url)
    }

    /// The tenant created by bootstrap, which new principals belong to.
    pub async fn default_tenant(&self) -> Result<String, IdentityError> {
        let tenant = self
            .inner
            .default_tenant
            .get_or_try_init(|| async {
                bootstrap::read_meta(self.database(), bootstrap::META_TENANT)
                    .await?
                    .ok_or(IdentityError::NotBootstrapped)
            })
            .await?;
        Ok(tenant.clone())
    }

    fn database(&self) -> &Database {
        &self.inner.database
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

/// A new random GUID in lowercase hyphenated form.
pub(crate) fn new_guid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}
