//! Key Vault's wire format, written once for every route: the error body (5xx bodies say
//! nothing of the cause; the cause goes to the log), JSON bodies with a size limit whose
//! rejections never echo the input, base64url, key bundles, list items and paged lists.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::RequestContext;
use crate::error::VaultError;
use crate::model::{DeletedKey, KeyBundle, Page};
use crate::service::MAX_PAGE_SIZE;

/// Largest request body accepted (a restore blob of many 4096-bit versions fits easily).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A [`VaultError`] on its way to the client.
pub(super) struct ApiError(pub(super) VaultError);

impl From<VaultError> for ApiError {
    fn from(error: VaultError) -> ApiError {
        ApiError(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(&self.0)
    }
}

pub(super) fn error_response(error: &VaultError) -> Response {
    let status = error.status();
    if status.is_server_error() {
        tracing::error!(%error, "key vault request failed");
    }
    let mut body = json!({"error": {"code": error.code(), "message": error.public_message()}});
    if let Some(inner) = error.inner_code() {
        body["error"]["innererror"] = json!({"code": inner});
    }
    (status, Json(body)).into_response()
}

/// A JSON body whose rejections are in Key Vault's shape and never echo the input.
pub(super) struct KvJson<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for KvJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<KvJson<T>, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|_| {
            VaultError::BadParameter(format!(
                "the request body could not be read (at most {MAX_BODY_BYTES} bytes)"
            ))
        })?;
        if bytes.len() > MAX_BODY_BYTES {
            return Err(VaultError::BadParameter(format!(
                "the request body exceeds {MAX_BODY_BYTES} bytes"
            ))
            .into());
        }
        serde_json::from_slice(&bytes).map(KvJson).map_err(|error| {
            ApiError(VaultError::BadParameter(format!(
                "the request body is not valid for this operation ({:?} error at line {}, column {}); see the Key Vault REST reference for its fields",
                error.classify(),
                error.line(),
                error.column()
            )))
        })
    }
}

pub(super) fn decode_base64url(field: &str, value: &str) -> Result<Vec<u8>, VaultError> {
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('=').as_bytes())
        .map_err(|_| {
            VaultError::BadParameter(format!(
                "'{field}' must be base64url-encoded (RFC 4648 §5, padding optional)"
            ))
        })
}
fn attributes_json(bundle: &KeyBundle) -> Value {
    let key = &bundle.key;
    let mut attributes = json!({
        "enabled": key.enabled,
        "created": key.created,
        "updated": key.updated,
        "recoveryLevel": bundle.recovery_level,
        "exportable": false,
    });
    if let Some(days) = bundle.recoverable_days {
        attributes["recoverableDays"] = json!(days);
    }
    if let Some(not_before) = key.not_before {
        attributes["nbf"] = json!(not_before);
    }
    if let Some(expires) = key.expires {
        attributes["exp"] = json!(expires);
    }
    attributes
}

pub(super) fn bundle_json(bundle: &KeyBundle) -> Value {
    let key = &bundle.key;
    let mut body = json!({
        "key": {
            "kid": bundle.key_uri_with_version(),
            "kty": key.key_type.as_str(),
            "key_ops": key.key_ops.iter().map(|operation| operation.as_str()).collect::<Vec<_>>(),
            "n": URL_SAFE_NO_PAD.encode(&key.modulus),
            "e": URL_SAFE_NO_PAD.encode(&key.public_exponent),
        },
        "attributes": attributes_json(bundle),
    });
    if !key.tags.is_empty() {
        body["tags"] = json!(key.tags);
    }
    body
}

pub(super) fn item_json(bundle: &KeyBundle, with_version: bool) -> Value {
    let kid = if with_version {
        bundle.key_uri_with_version()
    } else {
        bundle.key_uri()
    };
    let mut body = json!({"kid": kid, "attributes": attributes_json(bundle)});
    if !bundle.key.tags.is_empty() {
        body["tags"] = json!(bundle.key.tags);
    }
    body
}

pub(super) fn add_deleted_fields(body: &mut Value, deleted: &DeletedKey) {
    body["recoveryId"] = json!(deleted.recovery_id());
    body["deletedDate"] = json!(deleted.deleted_date);
    body["scheduledPurgeDate"] = json!(deleted.scheduled_purge_date);
}

/// A DeletedKeyBundle: the key bundle plus the deletion fields.
pub(super) fn deleted_bundle_json(deleted: &DeletedKey) -> Value {
    let mut body = bundle_json(&deleted.bundle);
    add_deleted_fields(&mut body, deleted);
    body
}

pub(super) fn page_json<T>(
    context: &RequestContext,
    path: &str,
    page: Page<T>,
    max_results: usize,
    item: impl Fn(&T) -> Value,
) -> Value {
    let next_link = page.continuation.map(|token| {
        format!(
            "{}{path}?api-version={}&maxresults={max_results}&$skiptoken={token}",
            context.vault.vault_uri, context.api_version
        )
    });
    json!({"value": page.items.iter().map(item).collect::<Vec<_>>(), "nextLink": next_link})
}

pub(super) fn paging(
    query: &HashMap<String, String>,
) -> Result<(usize, Option<String>), VaultError> {
    let max_results = match query.get("maxresults") {
        Some(value) => value
            .parse::<usize>()
            .ok()
            .filter(|count| (1..=MAX_PAGE_SIZE).contains(count))
            .ok_or_else(|| {
                VaultError::BadParameter(format!(
                    "maxresults must be between 1 and {MAX_PAGE_SIZE}"
                ))
            })?,
        None => MAX_PAGE_SIZE,
    };
    Ok((max_results, query.get("$skiptoken").cloned()))
}
