//! The token service over HTTP, shaped like Microsoft Entra ID's v2.0 endpoints so that MSAL
//! and the Azure SDKs work against it:
//!
//! - `GET /{tenant}/v2.0/.well-known/openid-configuration`: discovery;
//! - `GET /{tenant}/discovery/v2.0/keys`: the JWKS;
//! - `POST /{tenant}/oauth2/v2.0/token`: the client-credentials grant, form-encoded, with the
//!   client authenticated by `client_id` + `client_secret` in the body or by HTTP Basic.
//!
//! Errors use the OAuth2 shape `{"error","error_description","error_codes"}` with Entra ID's
//! AADSTS codes. A wrong secret and an unknown client id get the same answer, so the endpoint
//! does not reveal which client ids exist.

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{AUTHORIZATION, CACHE_CONTROL, PRAGMA};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;

use crate::{Identity, IdentityError};

/// An OAuth2 error response.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

impl OAuthError {
    fn new(
        status: StatusCode,
        error: &'static str,
        code: u32,
        description: impl Into<String>,
    ) -> OAuthError {
        OAuthError {
            status,
            error,
            code,
            description: description.into(),
        }
    }

    fn tenant_not_found() -> OAuthError {
        OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            "AADSTS90002: Tenant not found. Check to make sure you have the correct tenant ID.",
        )
    }

    fn server_error() -> OAuthError {
        OAuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            90033,
            "AADSTS90033: A transient error has occurred. Please try again.",
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.error,
            "error_description": self.description,
            "error_codes": [self.code],
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        no_store(response.headers_mut());
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"hds\""),
            );
        }
        response
    }
}

fn no_store(headers: &mut HeaderMap) {
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
    /// The v1 endpoint's way to name the audience; accepted when `scope` is absent.
    resource: Option<String>,
}

impl Identity {
    /// The token service's routes (discovery, JWKS, token endpoint), to be merged into the
    /// main listener's router at its root.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(openid_configuration),
            )
            .route("/{tenant}/discovery/v2.0/keys", get(jwks))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .with_state(self.clone())
    }

    /// Whether `tenant` is this platform's tenant.
    async fn check_tenant(&self, tenant: &str) -> Result<String, OAuthError> {
        match self.default_tenant().await {
            Ok(known) if known.eq_ignore_ascii_case(tenant) => Ok(known),
            Ok(_) | Err(crate::IdentityError::NotBootstrapped) => {
                Err(OAuthError::tenant_not_found())
            }
            Err(error) => {
                tracing::error!(%error, "reading the tenant failed");
                Err(OAuthError::server_error())
            }
        }
    }
}

async fn openid_configuration(
    State(identity): State<Identity>,
    Path(tenant): Path<String>,
) -> Result<Response, OAuthError> {
    let tenant = identity.check_tenant(&tenant).await?;
    let base = &identity.config().base_url;
    let document = serde_json::json!({
        "issuer": identity.issuer(&tenant),
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": [crate::jws::ES256],
        "scopes_supported": ["openid"],
        "claims_supported": ["aud", "iss", "iat", "nbf", "exp", "tid", "oid", "sub", "appid", "azp", "idtyp", "ver"],
        "tenant_region_scope": null,
        "cloud_instance_name": "hds",
    });
    Ok(axum::Json(document).into_response())
}

async fn jwks(
    State(identity): State<Identity>,
    Path(tenant): Path<String>,
) -> Result<Response, OAuthError> {
    identity.check_tenant(&tenant).await?;
    let keys = identity.jwks().await.map_err(|error| {
        tracing::error!(%error, "loading signing keys failed");
        OAuthError::server_error()
    })?;
    Ok(axum::Json(keys).into_response())
}

/// `client_id` and `client_secret` from an HTTP Basic header (RFC 6749 2.3.1: each part
/// form-urlencoded before base64).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (client_id, client_secret) = decoded.split_once(':')?;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(&format!("id={client_id}&secret={client_secret}")).ok()?;
    let mut pairs = pairs.into_iter().map(|(_, value)| value);
    Some((pairs.next()?, pairs.next()?))
}

/// The resource a client-credentials `scope` names: exactly one `{resource}/.default`
/// (OpenID scopes such as `openid` or `offline_access` may ride along and are ignored).
fn resource_of_scope(scope: &str) -> Option<String> {
    let mut resources = scope
        .split_whitespace()
        .filter(|item| !matches!(*item, "openid" | "profile" | "offline_access" | "email"));
    let only = resources.next()?;
    if resources.next().is_some() {
        return None;
    }
    let resource = only.strip_suffix("/.default")?;
    (!resource.is_empty()).then(|| resource.to_owned())
}

async fn token(
    State(identity): State<Identity>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Result<Response, OAuthError> {
    identity.check_tenant(&tenant).await?;
    let Ok(Form(request)) = form else {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "AADSTS900144: The request body must be application/x-www-form-urlencoded and contain the parameter 'grant_type'.",
        ));
    };
    match request.grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                "AADSTS70003: The app requested an unsupported grant type. Only 'client_credentials' is supported.",
            ));
        }
        None => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
            ));
        }
    }
    let (client_id, client_secret) = if let Some(secret) =
        request.client_secret.filter(|secret| !secret.is_empty())
    {
        (
            request
                .client_id
                .ok_or_else(|| missing_parameter("client_id"))?,
            secret,
        )
    } else if let Some(basic) = basic_credentials(&headers) {
        basic
    } else if request.client_id.is_none() {
        return Err(missing_parameter("client_id"));
    } else {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    let resource = match (request.scope.as_deref(), request.resource.as_deref()) {
        (Some(scope), _) => resource_of_scope(scope).ok_or_else(|| {
            OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        })?,
        (None, Some(resource)) if !resource.is_empty() => resource.to_owned(),
        _ => return Err(missing_parameter("scope")),
    };
    let issued = identity
        .issue_token_for_client_credentials(&client_id, &client_secret, &resource)
        .await
        .map_err(|error| match error {
            IdentityError::ClientSecretExpired => OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000222,
                "AADSTS7000222: The provided client secret keys are expired or not yet valid. Create a new secret (az ad sp credential reset).",
            ),
            error => {
                tracing::error!(%error, "issuing a token failed");
                OAuthError::server_error()
            }
        })?;
    let Some(issued) = issued else {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, and that the client id is correct.",
        ));
    };
    let body = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "ext_expires_in": issued.expires_in,
        "access_token": issued.access_token,
    });
    let mut response = axum::Json(body).into_response();
    no_store(response.headers_mut());
    Ok(response)
}

fn missing_parameter(name: &str) -> OAuthError {
    OAuthError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        format!("AADSTS900144: The request body must contain the following parameter: '{name}'."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_name_one_default_resource() {
        assert_eq!(
            resource_of_scope("https://management.azure.com/.default").as_deref(),
            Some("https://management.azure.com")
        );
        assert_eq!(
            resource_of_scope("https://management.azure.com//.default").as_deref(),
            Some("https://management.azure.com/")
        );
        assert_eq!(
            resource_of_scope("https://vault.azure.net/.default offline_access").as_deref(),
            Some("https://vault.azure.net")
        );
        assert_eq!(resource_of_scope("https://vault.azure.net/keys.read"), None);
        assert_eq!(resource_of_scope("a/.default b/.default"), None);
        assert_eq!(resource_of_scope("/.default"), None);
        assert_eq!(resource_of_scope(""), None);
    }

    #[test]
    fn basic_credentials_are_url_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = STANDARD.encode("my%20client:se%3Acret");
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("ascii"),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("my client".to_owned(), "se:cret".to_owned()))
        );
    }
}

#[cfg(test)]
mod form_tests {
    use super::*;

    /// Form parameter names are percent-decoded like their values, so a client that escapes
    /// `grant_type` as `grant%5Ftype` is understood.
    #[test]
    fn form_names_are_percent_decoded() {
        let request: TokenRequest = serde_urlencoded::from_str(
            "grant%5Ftype=client_credentials&client%5Fid=a&scope=https%3A%2F%2Fx%2F.default",
        )
        .expect("a form");
        assert_eq!(request.grant_type.as_deref(), Some("client_credentials"));
        assert_eq!(request.client_id.as_deref(), Some("a"));
        assert_eq!(request.scope.as_deref(), Some("https://x/.default"));
    }
}
