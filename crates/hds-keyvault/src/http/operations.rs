//! The cryptographic operation routes (`/keys/{name}[/{version}]/{operation}`): encrypt and
//! wrapkey, decrypt and unwrapkey, sign, verify. Each authorizes the permission its operation
//! needs before the body is decoded.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;

use super::wire::{KvJson, decode_base64url};
use super::{DataPlaneState, Handled, RequestContext};
use crate::access::DataPlaneAction;
use crate::error::VaultError;
use crate::material::{EncryptionAlgorithm, SignatureAlgorithm};
use crate::model::KeyOperation;

/// The body of every operation: the algorithm, the value (base64url), and for verify the
/// digest.
#[derive(Deserialize)]
pub(super) struct OperationBody {
    alg: String,
    value: String,
    digest: Option<String>,
}

pub(super) async fn key_operation_latest(
    state: State<DataPlaneState>,
    context: Extension<RequestContext>,
    Path((name, operation)): Path<(String, String)>,
    body: KvJson<OperationBody>,
) -> Handled {
    run_key_operation(state, context, name, None, operation, body).await
}

pub(super) async fn key_operation(
    state: State<DataPlaneState>,
    context: Extension<RequestContext>,
    Path((name, version, operation)): Path<(String, String, String)>,
    body: KvJson<OperationBody>,
) -> Handled {
    run_key_operation(state, context, name, Some(version), operation, body).await
}

async fn run_key_operation(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    name: String,
    version: Option<String>,
    operation: String,
    KvJson(body): KvJson<OperationBody>,
) -> Handled {
    let operation = match operation.to_ascii_lowercase().as_str() {
        "encrypt" => KeyOperation::Encrypt,
        "decrypt" => KeyOperation::Decrypt,
        "wrapkey" => KeyOperation::WrapKey,
        "unwrapkey" => KeyOperation::UnwrapKey,
        "sign" => KeyOperation::Sign,
        "verify" => KeyOperation::Verify,
        _ => {
            return Err(VaultError::BadParameter(
                "unknown key operation; use encrypt, decrypt, wrapkey, unwrapkey, sign or verify"
                    .into(),
            )
            .into());
        }
    };
    context
        .authorize(
            &state,
            DataPlaneAction::key(operation.permission()),
            Some(&name),
        )
        .await?;
    let vault = &context.vault;
    let service = &state.service;
    let value = decode_base64url("value", &body.value)?;
    let version = version.as_deref();
    let body = match operation {
        KeyOperation::Encrypt | KeyOperation::WrapKey => {
            let algorithm = EncryptionAlgorithm::parse(&body.alg)?;
            let (kid, result) = service
                .encrypt(vault, &name, version, operation, algorithm, &value)
                .await?;
            json!({"kid": kid, "value": URL_SAFE_NO_PAD.encode(result)})
        }
        KeyOperation::Decrypt | KeyOperation::UnwrapKey => {
            let algorithm = EncryptionAlgorithm::parse(&body.alg)?;
            let (kid, result) = service
                .decrypt(vault, &name, version, operation, algorithm, &value)
                .await?;
            json!({"kid": kid, "value": URL_SAFE_NO_PAD.encode(result.as_slice())})
        }
        KeyOperation::Sign => {
            let algorithm = SignatureAlgorithm::parse(&body.alg)?;
            let (kid, signature) = service
                .sign(vault, &name, version, algorithm, &value)
                .await?;
            json!({"kid": kid, "value": URL_SAFE_NO_PAD.encode(signature)})
        }
        KeyOperation::Verify => {
            let algorithm = SignatureAlgorithm::parse(&body.alg)?;
            let digest = match body.digest.as_deref() {
                Some(digest) => decode_base64url("digest", digest)?,
                None => {
                    return Err(VaultError::BadParameter(
                        "verify needs 'digest' (base64url)".into(),
                    )
                    .into());
                }
            };
            let valid = service
                .verify(vault, &name, version, algorithm, &digest, &value)
                .await?;
            json!({"value": valid})
        }
    };
    Ok(Json(body).into_response())
}
