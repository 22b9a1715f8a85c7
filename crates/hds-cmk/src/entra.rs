//! Customer keys kept in Azure Key Vault: there a key is reached with a Microsoft Entra ID
//! token for an application the customer registered (and granted a crypto role on the vault),
//! not with one of hds's managed identities, which Azure does not know.
//!
//! [`EntraTokenSource`] gets such tokens with the OAuth2 client-credentials grant;
//! [`RoutedTokenSource`] sends the principal ids that name the application
//! (`entra-app:{client id}`) there and every other principal to hds's own identity service.

use std::sync::Arc;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::CmkError;
use crate::token::{TokenFuture, TokenSource};

/// The prefix of principal ids that stand for the configured Entra application.
pub const ENTRA_APPLICATION_PREFIX: &str = "entra-app:";

/// Microsoft Entra ID's public authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// An application registered in Microsoft Entra ID.
#[derive(Clone)]
pub struct EntraApplication {
    /// The authority, normally [`DEFAULT_AUTHORITY`].
    pub authority: String,
    /// The customer's tenant.
    pub tenant_id: String,
    /// The application (client) id.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: Zeroizing<String>,
}

impl std::fmt::Debug for EntraApplication {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EntraApplication")
            .field("authority", &self.authority)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl EntraApplication {
    /// The principal id hds records for keys reached as this application.
    pub fn principal_id(&self) -> String {
        format!("{ENTRA_APPLICATION_PREFIX}{}", self.client_id)
    }
}

/// Tokens for an [`EntraApplication`] (client-credentials grant).
pub struct EntraTokenSource {
    application: EntraApplication,
    http: reqwest::Client,
}

impl EntraTokenSource {
    /// A token source for `application`, calling its authority with `http`.
    pub fn new(application: EntraApplication, http: reqwest::Client) -> EntraTokenSource {
        EntraTokenSource { application, http }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenSource for EntraTokenSource {
    fn token(&self, _principal_id: &str, resource: &str) -> TokenFuture<'_> {
        let scope = format!("{}/.default", resource.trim_end_matches('/'));
        Box::pin(async move {
            let application = &self.application;
            let url = format!(
                "{}/{}/oauth2/v2.0/token",
                application.authority.trim_end_matches('/'),
                application.tenant_id
            );
            let response = self
                .http
                .post(&url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", application.client_id.as_str()),
                    ("client_secret", application.client_secret.as_str()),
                    ("scope", scope.as_str()),
                ])
                .send()
                .await
                .map_err(|error| {
                    CmkError::TokenUnavailable(format!(
                        "the Entra ID token endpoint is unreachable: {error}"
                    ))
                })?;
            let status = response.status();
            let body = response.bytes().await.map_err(|error| {
                CmkError::TokenUnavailable(format!("reading the Entra ID token response: {error}"))
            })?;
            if status.is_success() {
                let token: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
                    CmkError::TokenUnavailable("the Entra ID token response is not a token".into())
                })?;
                return Ok(token.access_token);
            }
            let reason = serde_json::from_slice::<ErrorResponse>(&body)
                .map(|error| format!("{}: {}", error.error, error.error_description))
                .unwrap_or_else(|_| format!("status {status}"));
            Err(CmkError::TokenUnavailable(format!(
                "Entra ID refused a token for application {}: {reason}",
                application.client_id
            )))
        })
    }
}

/// Sends `entra-app:` principals to the Entra application's token source and every other
/// principal to `managed_identities`.
pub struct RoutedTokenSource {
    /// hds's own managed identities.
    pub managed_identities: Arc<dyn TokenSource>,
    /// The configured Entra application, if any.
    pub entra: Option<Arc<dyn TokenSource>>,
}

impl TokenSource for RoutedTokenSource {
    fn token(&self, principal_id: &str, resource: &str) -> TokenFuture<'_> {
        match (
            &self.entra,
            principal_id.starts_with(ENTRA_APPLICATION_PREFIX),
        ) {
            (Some(entra), true) => entra.token(principal_id, resource),
            (None, true) => Box::pin(async {
                Err(CmkError::TokenUnavailable(
                    "the key is in Azure Key Vault but no Entra ID application is configured (--azure-client-id)".into(),
                ))
            }),
            (_, false) => self.managed_identities.token(principal_id, resource),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str);

    impl TokenSource for Fixed {
        fn token(&self, _principal_id: &str, _resource: &str) -> TokenFuture<'_> {
            let value = self.0;
            Box::pin(async move { Ok(value.to_owned()) })
        }
    }

    #[tokio::test]
    async fn routes_by_principal() {
        let routed = RoutedTokenSource {
            managed_identities: Arc::new(Fixed("managed")),
            entra: Some(Arc::new(Fixed("entra"))),
        };
        assert_eq!(
            routed
                .token("0000-1111", "https://vault.azure.net")
                .await
                .ok()
                .as_deref(),
            Some("managed")
        );
        assert_eq!(
            routed
                .token("entra-app:abc", "https://vault.azure.net")
                .await
                .ok()
                .as_deref(),
            Some("entra")
        );
        let unconfigured = RoutedTokenSource {
            managed_identities: Arc::new(Fixed("managed")),
            entra: None,
        };
        assert!(
            unconfigured
                .token("entra-app:abc", "https://vault.azure.net")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn client_credentials_against_a_token_endpoint() {
        use axum::routing::post;
        let app = axum::Router::new().route(
            "/{tenant}/oauth2/v2.0/token",
            post(|axum::extract::Path(tenant): axum::extract::Path<String>, body: String| async move {
                let form: std::collections::HashMap<String, String> =
                    url_form(&body);
                let ok = tenant == "t1"
                    && form.get("grant_type").map(String::as_str) == Some("client_credentials")
                    && form.get("client_id").map(String::as_str) == Some("app")
                    && form.get("client_secret").map(String::as_str) == Some("s3cret")
                    && form.get("scope").map(String::as_str) == Some("https://vault.azure.net/.default");
                if ok {
                    (axum::http::StatusCode::OK, r#"{"access_token":"entra-token","token_type":"Bearer","expires_in":3599}"#)
                } else {
                    (axum::http::StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let application = |secret: &str| EntraApplication {
            authority: format!("http://{address}"),
            tenant_id: "t1".into(),
            client_id: "app".into(),
            client_secret: Zeroizing::new(secret.into()),
        };
        let source = EntraTokenSource::new(application("s3cret"), reqwest::Client::new());
        assert_eq!(
            source
                .token("entra-app:app", "https://vault.azure.net/")
                .await
                .ok()
                .as_deref(),
            Some("entra-token")
        );
        let refused = EntraTokenSource::new(application("wrong"), reqwest::Client::new());
        let error = refused
            .token("entra-app:app", "https://vault.azure.net")
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("invalid_client") && error.contains("AADSTS7000215"),
            "{error}"
        );
        assert!(
            !error.contains("wrong"),
            "the secret must not appear in errors"
        );
    }

    fn url_form(body: &str) -> std::collections::HashMap<String, String> {
        body.split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (decode(key), decode(value)))
            .collect()
    }

    fn decode(text: &str) -> String {
        let bytes = text.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut index = 0;
        while index < bytes.len() {
            if bytes[index] == b'%' && index + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                index += 3;
            } else {
                out.push(bytes[index]);
                index += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
