//! What the Azure CLI reads about a cloud before it can use it, and hds's answer to paths it
//! does not serve.
//!
//! `az cloud register --endpoint-resource-manager URL` (without `--skip-endpoint-discovery`)
//! reads `GET {URL}/metadata/endpoints?api-version=...` and derives every endpoint of the
//! cloud from it: where to sign in (`authentication.loginEndpoint`), which audience the
//! control plane's tokens carry (`authentication.audiences[0]`), and where Microsoft Graph is
//! (`microsoftGraphResourceId`, used by `az` as both audience and base URL: here the main
//! listener, which serves the one Graph call `az role` needs).

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::json;

/// The Key Vault DNS suffix advertised when vaults are served on ports of their own (their
/// `vaultUri`), not by host name: one that never resolves (RFC 2606), so `--vault-name` fails
/// plainly instead of sending requests anywhere else.
pub const KEY_VAULT_DNS_SUFFIX_BY_PORT: &str = ".vault.hds.invalid";

/// The Key Vault DNS suffix az appends to `--vault-name`: `.vault.DOMAIN[:PORT]` under
/// `--vault-domain` (az forms `https://{name}{suffix}`), otherwise the one that never resolves.
pub fn key_vault_dns_suffix(vault_domain: Option<&str>, public_port: Option<u16>) -> String {
    match (vault_domain, public_port) {
        (Some(domain), Some(port)) => format!(".vault.{domain}:{port}"),
        (Some(domain), None) => format!(".vault.{domain}"),
        (None, _) => KEY_VAULT_DNS_SUFFIX_BY_PORT.to_owned(),
    }
}

#[derive(Clone)]
struct Cloud {
    base_url: String,
    tenant_id: String,
    key_vault_dns_suffix: String,
}

/// `GET /metadata/endpoints` for the listener at `base_url` (no trailing slash).
pub fn router(base_url: &str, tenant_id: &str, key_vault_dns_suffix: String) -> Router {
    Router::new()
        .route("/metadata/endpoints", get(endpoints))
        // `az cloud register --endpoint-resource-manager https://host:port/` appends the path
        // to the URL as given, trailing slash included.
        .route("//metadata/endpoints", get(endpoints))
        .with_state(Cloud {
            base_url: base_url.trim_end_matches('/').to_owned(),
            tenant_id: tenant_id.to_owned(),
            key_vault_dns_suffix,
        })
}

async fn endpoints(State(cloud): State<Cloud>, request: Request) -> Response {
    let has_version = request.uri().query().is_some_and(|query| {
        query.split('&').any(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let name = name.replace("%2D", "-").replace("%2d", "-");
            name.eq_ignore_ascii_case("api-version")
        })
    });
    if !has_version {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let base = format!("{}/", cloud.base_url);
    axum::Json(json!({
        "name": "hds",
        "portal": format!("{base}portal/"),
        "resourceManager": base,
        "microsoftGraphResourceId": base,
        "authentication": {
            "loginEndpoint": base,
            "audiences": [format!("{}/", hds_identity::MANAGEMENT_AUDIENCE)],
            "tenant": cloud.tenant_id,
            "identityProvider": "AAD",
        },
        "suffixes": {
            "keyVaultDns": cloud.key_vault_dns_suffix,
        },
    }))
    .into_response()
}

/// An ARM-shaped JSON error.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// The answer to a path nothing serves: 404 with a JSON error body, as ARM gives, instead
/// of an empty one that clients cannot report.
pub async fn not_found(request: Request) -> Response {
    let path: String = request.uri().path().chars().take(256).collect();
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("No route serves '{} {path}'.", request.method()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(app: Router, uri: &str) -> (StatusCode, serde_json::Value) {
        let response = app
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, serde_json::from_slice(&bytes).expect("JSON body"))
    }

    #[tokio::test]
    async fn metadata_names_this_listener_for_sign_in_arm_and_graph() {
        let app = router(
            "https://127.0.0.1:8443/",
            "tenant-1",
            key_vault_dns_suffix(None, Some(8443)),
        );
        let (status, body) = call(app.clone(), "/metadata/endpoints?api-version=2022-09-01").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["suffixes"]["keyVaultDns"], ".vault.hds.invalid");
        assert_eq!(
            key_vault_dns_suffix(Some("hds.example"), Some(8443)),
            ".vault.hds.example:8443"
        );
        assert_eq!(
            key_vault_dns_suffix(Some("hds.example"), None),
            ".vault.hds.example"
        );
        assert_eq!(body["resourceManager"], "https://127.0.0.1:8443/");
        assert_eq!(body["microsoftGraphResourceId"], "https://127.0.0.1:8443/");
        assert_eq!(
            body["authentication"]["loginEndpoint"],
            "https://127.0.0.1:8443/"
        );
        assert_eq!(
            body["authentication"]["audiences"][0],
            "https://management.azure.com/"
        );
        let (status, _) = call(app.clone(), "/metadata/endpoints?api%2Dversion=2022-09-01").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(app.clone(), "//metadata/endpoints?api-version=2022-09-01").await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(app, "/metadata/endpoints").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "MissingApiVersionParameter");
    }

    #[tokio::test]
    async fn unknown_paths_answer_json() {
        let app = Router::new().fallback(not_found);
        let (status, body) = call(app, "/no/such/path").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "NotFound");
    }
}
