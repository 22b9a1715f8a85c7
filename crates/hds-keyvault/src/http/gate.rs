//! The gate every data plane request passes before a handler: which vault (by listener or
//! Host), the bearer challenge the SDKs expect first, `api-version`, authentication, the
//! vault's tenant, and the firewall (network rules and the trusted-services bypass, decided
//! in [`crate::access`]). What passes carries a [`RequestContext`] to the handler.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::RequestExt;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, Uri, header};
use axum::middleware::Next;
use axum::response::Response;

use super::wire::error_response;
use super::{DataPlaneState, RequestContext, VaultSelector};
use crate::access;
use crate::error::VaultError;
use crate::model::Vault;

/// Resolves, authenticates and admits a request, or answers it.
pub(super) async fn gate(
    State((state, selector)): State<(DataPlaneState, Arc<VaultSelector>)>,
    mut request: Request,
    next: Next,
) -> Response {
    let vault_name = match selector.as_ref() {
        VaultSelector::Fixed(name) => name.clone(),
        VaultSelector::ByHost { domain } => match vault_from_host(&request, domain) {
            Some(name) => name,
            None => {
                return error_response(&VaultError::BadParameter(format!(
                    "the Host header must name a vault as {{vault}}.vault.{domain}"
                )));
            }
        },
    };
    let vault = match state.service.get_vault(&vault_name).await {
        Ok(vault) => Arc::new(vault),
        Err(error) => return error_response(&error),
    };
    // The SDKs' first request carries no token: answer the challenge before reading the body.
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(|token| token.trim().to_owned());
    let Some(bearer) = bearer.filter(|token| !token.is_empty()) else {
        return challenge(
            &state,
            &vault,
            "Request is missing a Bearer or PoP token. Send Authorization: Bearer <token> for the resource https://vault.azure.net.",
        );
    };
    let api_version = match api_version_of(request.uri()) {
        Ok(version) => version,
        Err(error) => return error_response(&error),
    };
    let caller = match state.access.authenticate(&bearer).await {
        Ok(caller) => caller,
        Err(access::AccessError::Unavailable(reason)) => {
            return error_response(&VaultError::Internal(reason));
        }
        Err(error) => {
            return challenge(
                &state,
                &vault,
                &format!("{error}. Get a new token for the resource https://vault.azure.net."),
            );
        }
    };
    if !caller
        .tenant_id
        .eq_ignore_ascii_case(&vault.properties.tenant_id)
    {
        return challenge(
            &state,
            &vault,
            "AKV10032: Invalid issuer: the token's tenant is not the vault's tenant. Get a token from the vault's tenant.",
        );
    }
    // The connection's peer address (axum's extractor also honours `MockConnectInfo` in tests).
    let client: Option<IpAddr> = request
        .extract_parts::<ConnectInfo<SocketAddr>>()
        .await
        .ok()
        .map(|ConnectInfo(address)| address.ip());
    if let Err(error) = access::check_firewall(&vault, &caller, client) {
        return error_response(&error);
    }
    request.extensions_mut().insert(RequestContext {
        vault,
        caller,
        api_version,
    });
    next.run(request).await
}

fn vault_from_host(request: &Request, domain: &str) -> Option<String> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| request.uri().host())?;
    let host = host
        .rsplit_once(':')
        .map(|(name, _)| name)
        .unwrap_or(host)
        .to_ascii_lowercase();
    let suffix = format!(".vault.{}", domain.to_ascii_lowercase());
    let name = host.strip_suffix(&suffix)?;
    (!name.is_empty() && !name.contains('.')).then(|| name.to_owned())
}

/// Accepts `7.x` (with previews) and the dated versions the older SDKs send. Names and values
/// are percent-decoded first, as every query parameter is: the JavaScript SDK sends the name
/// as `api%2Dversion`.
fn api_version_of(uri: &Uri) -> Result<String, VaultError> {
    let parameters: Vec<(String, String)> = Query::try_from_uri(uri)
        .map(|Query(parameters)| parameters)
        .map_err(|_| {
            VaultError::BadParameter(
                "the query string is not valid percent-encoded form data".into(),
            )
        })?;
    let version = parameters
        .into_iter()
        .find(|(name, _)| name == "api-version")
        .map(|(_, value)| value);
    let Some(version) = version.filter(|value| !value.is_empty()) else {
        return Err(VaultError::BadParameter(
            "The api-version query parameter is missing; add ?api-version=7.5 (or another 7.x version).".into(),
        ));
    };
    let dated = version.len() >= 10
        && version.as_bytes()[..10]
            .iter()
            .enumerate()
            .all(|(index, byte)| {
                if index == 4 || index == 7 {
                    *byte == b'-'
                } else {
                    byte.is_ascii_digit()
                }
            });
    if version.starts_with("7.") || dated {
        Ok(version)
    } else {
        Err(VaultError::BadParameter(format!(
            "The specified version ({}) is not recognized. Use a 7.x api-version such as 7.5.",
            version.chars().take(32).collect::<String>()
        )))
    }
}

fn challenge(state: &DataPlaneState, vault: &Vault, message: &str) -> Response {
    let authority = format!(
        "{}/{}",
        state.token_authority.trim_end_matches('/'),
        vault.properties.tenant_id
    );
    let mut response = error_response(&VaultError::Unauthorized(message.to_owned()));
    let value = format!(
        "Bearer authorization=\"{authority}\", resource=\"{}\"",
        access::VAULT_AUDIENCE
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
