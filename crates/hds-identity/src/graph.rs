//! A minimal Microsoft Graph: `POST /v1.0/directoryObjects/getByIds`, the Graph call the
//! Azure CLI makes to show who a role assignment is for (`az role assignment list/create`);
//! applications and service principals (`az ad app`, `az ad sp`) are in `graph_apps.rs`.
//!
//! Every principal of hds is a service principal (applications and managed identities), so
//! the answer holds `#microsoft.graph.servicePrincipal` objects only. The Graph resource is
//! the main listener itself: `az` uses its cloud's `microsoftGraphResourceId` both as the
//! token audience and as the base URL, so `/metadata/endpoints` advertises the public base URL
//! and tokens for that audience (or for `https://graph.microsoft.com`) are accepted.
//!
//! Any authenticated principal of the tenant may look objects up by id, as any member of an
//! Entra tenant may read the directory's basic objects; nothing else is disclosed (no
//! credentials, no role assignments). Unknown ids are left out of the answer, as Graph does.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::principals::PrincipalKind;
use crate::{Identity, TokenError};

/// The most ids one lookup may name (Graph's own limit).
pub const MAX_GRAPH_IDS: usize = 1000;
/// The largest request body accepted.
const MAX_GRAPH_BODY_BYTES: usize = 64 * 1024;
/// Microsoft Graph's own audience, accepted beside the main listener's base URL.
pub const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";

#[derive(Deserialize)]
struct GetByIds {
    ids: Vec<String>,
    #[serde(default)]
    types: Option<Vec<String>>,
}

pub(crate) fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

impl Identity {
    /// The Graph routes, to be merged into the main listener's router at its root.
    pub fn graph_router(&self) -> Router {
        Router::new()
            .route("/v1.0/directoryObjects/getByIds", post(get_by_ids))
            .with_state(self.clone())
            .merge(self.graph_apps_router())
    }
}

/// Authenticates a Graph caller: a token for the main listener or for Graph's own audience.
pub async fn authenticate_graph(
    identity: &Identity,
    headers: &HeaderMap,
) -> Result<crate::AuthenticatedPrincipal, Response> {
    let unauthorized = || {
        graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty or not valid.",
        )
    };
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(unauthorized)?;
    let own = identity.config().base_url.clone();
    for audience in [own.as_str(), GRAPH_AUDIENCE] {
        match identity.validate_token(token, audience).await {
            Ok(principal) => return Ok(principal),
            Err(TokenError::Internal(message)) => {
                tracing::error!(error = %message, "token validation failed");
                return Err(graph_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "The request could not be completed.",
                ));
            }
            Err(_) => {}
        }
    }
    Err(unauthorized())
}

async fn get_by_ids(State(identity): State<Identity>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = authenticate_graph(&identity, &headers).await {
        return response;
    }
    if body.len() > MAX_GRAPH_BODY_BYTES {
        return graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request_EntityTooLarge",
            "The request body is too large.",
        );
    }
    let Ok(request) = serde_json::from_slice::<GetByIds>(&body) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "The request body must be a JSON object with an 'ids' array of strings.",
        );
    };
    if request.ids.len() > MAX_GRAPH_IDS {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "Too many ids: at most 1000 may be looked up at once.",
        );
    }
    if request
        .ids
        .iter()
        .any(|id| uuid::Uuid::parse_str(id).is_err())
    {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "Invalid object identifier: every id must be a GUID.",
        );
    }
    let wants_service_principals = request.types.as_ref().is_none_or(|types| {
        types.iter().any(|kind| {
            kind.trim_start_matches("#microsoft.graph.")
                .eq_ignore_ascii_case("servicePrincipal")
        })
    });
    let mut values = Vec::new();
    if wants_service_principals {
        for id in &request.ids {
            match identity.principal(&id.to_ascii_lowercase()).await {
                Ok(Some(principal)) => values.push(service_principal_json(&principal)),
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(%error, "reading a principal failed");
                    return graph_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalServerError",
                        "The request could not be completed.",
                    );
                }
            }
        }
    }
    let base = &identity.config().base_url;
    axum::Json(json!({
        "@odata.context": format!("{base}/v1.0/$metadata#directoryObjects"),
        "value": values,
    }))
    .into_response()
}

/// A principal as Graph shows a service principal.
pub(crate) fn service_principal_json(principal: &crate::principals::Principal) -> Value {
    let managed = !matches!(principal.kind, PrincipalKind::ServicePrincipal);
    let mut names = vec![principal.client_id.clone()];
    if let Some(resource) = &principal.resource_id {
        names.push(resource.clone());
    }
    json!({
        "@odata.type": "#microsoft.graph.servicePrincipal",
        "id": principal.principal_id,
        "appId": principal.client_id,
        "displayName": principal.display_name,
        "accountEnabled": true,
        "appOwnerOrganizationId": principal.tenant_id,
        "servicePrincipalType": if managed { "ManagedIdentity" } else { "Application" },
        "servicePrincipalNames": names,
        "alternativeNames": principal.resource_id.iter().collect::<Vec<_>>(),
    })
}
