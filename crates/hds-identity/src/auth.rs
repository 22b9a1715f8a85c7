//! Enforcement at the HTTP edge: bearer-token authentication and the 401/403 responses
//! Azure SDKs understand.
//!
//! A 401 carries the challenge the SDKs follow to get a token: on the control plane and the
//! DICOM data plane `Bearer authorization_uri="{base}/{tenant}", resource_id="{audience}"`,
//! on the vault (whose SDKs parse a different shape) `Bearer authorization="{base}/{tenant}",
//! resource="https://vault.azure.net"`. A 403 says which permission is missing.

use std::marker::PhantomData;

use axum::extract::{FromRef, FromRequestParts};
use axum::response::{IntoResponse, Response};
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::rbac::{Decision, DenyReason};
use crate::{Identity, IdentityError, TokenError, VAULT_AUDIENCE};

/// Who a validated token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedPrincipal {
    /// The object id (`oid`): what role assignments name.
    pub principal_id: String,
    /// The tenant (`tid`), when the token has one.
    pub tenant_id: Option<String>,
    /// The application (`appid`/`azp`), when the token has one.
    pub client_id: Option<String>,
    /// The token's issuer.
    pub issuer: String,
    /// Whether the token came from a configured external issuer.
    pub external: bool,
    /// The audience it was validated for (without a trailing slash).
    pub audience: String,
    /// When the token expires (Unix seconds).
    pub expires_at: i64,
}

/// Why a request was refused at the edge. Turns into a 401, 403 or 500 response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No bearer token, or one that did not validate.
    #[error("{}", unauthenticated_message(.reason.as_ref()))]
    Unauthenticated {
        /// Why the token was refused; `None` when there was none.
        reason: Option<TokenError>,
        /// The `WWW-Authenticate` value to send.
        challenge: String,
        /// Whether the response is for the vault (its error codes differ).
        vault: bool,
    },
    /// The caller is authenticated but lacks a permission.
    #[error("{0}")]
    Forbidden(DenyReason),
    /// Validation or authorization could not complete (storage failed).
    #[error("authorization could not be checked")]
    Internal,
}

fn unauthenticated_message(reason: Option<&TokenError>) -> String {
    match reason {
        None => "The request is missing a bearer token in the Authorization header.".to_owned(),
        Some(reason) => format!("The access token is invalid: {reason}."),
    }
}

impl AuthError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error code for an `{"error":{"code","message"}}` body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated { vault: true, .. } => "Unauthorized",
            AuthError::Unauthenticated { reason: None, .. } => "AuthenticationFailed",
            AuthError::Unauthenticated { .. } => "InvalidAuthenticationToken",
            AuthError::Forbidden(reason) if reason.is_data_action => "Forbidden",
            AuthError::Forbidden(_) => "AuthorizationFailed",
            AuthError::Internal => "InternalServerError",
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let AuthError::Unauthenticated { challenge, .. } = &self
            && let Ok(value) = HeaderValue::from_str(challenge)
        {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// The bearer token of an `Authorization` header (scheme compared case-insensitively).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Identity {
    /// The `WWW-Authenticate` challenge for an endpoint with audience `audience`.
    pub async fn challenge(&self, audience: &str) -> String {
        let authority = match self.default_tenant().await {
            Ok(tenant) => format!("{}/{tenant}", self.config().base_url),
            Err(_) => self.config().base_url.clone(),
        };
        let audience = audience.trim_end_matches('/');
        if audience.eq_ignore_ascii_case(VAULT_AUDIENCE) {
            format!("Bearer authorization=\"{authority}\", resource=\"{audience}\"")
        } else {
            format!("Bearer authorization_uri=\"{authority}\", resource_id=\"{audience}\"")
        }
    }

    /// Turns an authorization decision into `Ok` or a 403 [`AuthError`].
    pub async fn require(
        &self,
        principal: &AuthenticatedPrincipal,
        action: &str,
        scope: &str,
        is_data_action: bool,
    ) -> Result<(), AuthError> {
        match self
            .authorize(&principal.principal_id, action, scope, is_data_action)
            .await
        {
            Ok(Decision::Allow) => Ok(()),
            Ok(Decision::Deny(reason)) => Err(AuthError::Forbidden(reason)),
            Err(error) => {
                tracing::error!(%error, "authorization check failed");
                Err(AuthError::Internal)
            }
        }
    }
}

/// Authenticates a request by its bearer token, for an endpoint whose audience is
/// `expected_audience` ([`crate::MANAGEMENT_AUDIENCE`], [`crate::DICOM_AUDIENCE`],
/// [`crate::VAULT_AUDIENCE`]).
pub async fn authenticate(
    identity: &Identity,
    headers: &HeaderMap,
    expected_audience: &str,
) -> Result<AuthenticatedPrincipal, AuthError> {
    let vault = expected_audience
        .trim_end_matches('/')
        .eq_ignore_ascii_case(VAULT_AUDIENCE);
    let Some(token) = bearer_token(headers) else {
        return Err(AuthError::Unauthenticated {
            reason: None,
            challenge: identity.challenge(expected_audience).await,
            vault,
        });
    };
    match identity.validate_token(token, expected_audience).await {
        Ok(principal) => Ok(principal),
        Err(TokenError::Internal(message)) => {
            tracing::error!(error = %message, "token validation failed");
            Err(AuthError::Internal)
        }
        Err(reason) => Err(AuthError::Unauthenticated {
            reason: Some(reason),
            challenge: identity.challenge(expected_audience).await,
            vault,
        }),
    }
}

impl From<IdentityError> for AuthError {
    fn from(error: IdentityError) -> Self {
        tracing::error!(%error, "identity operation failed");
        AuthError::Internal
    }
}

/// An endpoint audience, for the [`Authenticated`] extractor.
pub trait Audience: Send + Sync + 'static {
    /// The audience tokens must be issued for.
    const AUDIENCE: &'static str;
}

/// The control plane's audience.
#[derive(Debug, Clone, Copy)]
pub struct ManagementAudience;
impl Audience for ManagementAudience {
    const AUDIENCE: &'static str = crate::MANAGEMENT_AUDIENCE;
}

/// The DICOMweb data plane's audience.
#[derive(Debug, Clone, Copy)]
pub struct DicomAudience;
impl Audience for DicomAudience {
    const AUDIENCE: &'static str = crate::DICOM_AUDIENCE;
}

/// The key vault's audience.
#[derive(Debug, Clone, Copy)]
pub struct VaultAudience;
impl Audience for VaultAudience {
    const AUDIENCE: &'static str = crate::VAULT_AUDIENCE;
}

/// An axum extractor: the authenticated caller, for audience `A`. The router's state must
/// yield an [`Identity`] (`FromRef`).
#[derive(Debug, Clone)]
pub struct Authenticated<A: Audience> {
    /// The caller.
    pub principal: AuthenticatedPrincipal,
    audience: PhantomData<A>,
}

impl<S, A> FromRequestParts<S> for Authenticated<A>
where
    S: Send + Sync,
    A: Audience,
    Identity: FromRef<S>,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let identity = Identity::from_ref(state);
        let principal = authenticate(&identity, &parts.headers, A::AUDIENCE).await?;
        Ok(Authenticated {
            principal,
            audience: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_requires_a_token() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
    }
}
