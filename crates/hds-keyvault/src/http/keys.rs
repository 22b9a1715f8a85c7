//! The key lifecycle routes: create, import (a JWK), get, list, list versions, update,
//! rotate, backup and restore, with their request bodies. Private JWK components are held in
//! zeroized buffers from the moment they are parsed.

use std::collections::{BTreeMap, HashMap};

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::wire::{KvJson, bundle_json, decode_base64url, item_json, page_json, paging};
use super::{DataPlaneState, Handled, RequestContext};
use crate::access::DataPlaneAction;
use crate::error::VaultError;
use crate::material::RsaPrivateComponents;
use crate::model::{
    CreateKeyOptions, KeyAttributesInput, KeyOperation, KeyPermission, KeyType, KeyUpdate,
};
use crate::service::ImportKeyOptions;

/// Key attributes as the REST API names them.
#[derive(Deserialize, Default)]
struct AttributesBody {
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

impl AttributesBody {
    fn input(&self) -> KeyAttributesInput {
        KeyAttributesInput {
            enabled: self.enabled,
            not_before: self.nbf,
            expires: self.exp,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct CreateKeyBody {
    kty: String,
    key_size: Option<u32>,
    public_exponent: Option<u64>,
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    attributes: AttributesBody,
    tags: Option<BTreeMap<String, String>>,
}

/// A private JWK component, wiped from memory when dropped.
struct SecretField(Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SecretField, D::Error> {
        String::deserialize(deserializer).map(|text| SecretField(Zeroizing::new(text)))
    }
}

impl SecretField {
    fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

#[derive(Deserialize)]
struct JwkBody {
    kty: Option<String>,
    key_ops: Option<Vec<String>>,
    n: Option<String>,
    e: Option<String>,
    d: Option<SecretField>,
    p: Option<SecretField>,
    q: Option<SecretField>,
    dp: Option<SecretField>,
    dq: Option<SecretField>,
    qi: Option<SecretField>,
}

#[derive(Deserialize)]
pub(super) struct ImportKeyBody {
    key: JwkBody,
    #[serde(rename = "Hsm")]
    hsm: Option<bool>,
    #[serde(default)]
    attributes: AttributesBody,
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
pub(super) struct UpdateKeyBody {
    key_ops: Option<Vec<String>>,
    attributes: Option<AttributesBody>,
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
pub(super) struct RestoreBody {
    value: String,
}

fn parse_key_ops(key_ops: Option<Vec<String>>) -> Result<Option<Vec<KeyOperation>>, VaultError> {
    key_ops
        .map(|operations| {
            operations
                .iter()
                .map(|operation| KeyOperation::parse(operation))
                .collect()
        })
        .transpose()
}

fn decode_secret(field: &str, value: Option<&str>) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let value = value.ok_or_else(|| {
        VaultError::BadParameter(format!(
            "the imported JWK lacks '{field}': an RSA private key needs n, e, d, p, q, dp, dq and qi"
        ))
    })?;
    decode_base64url(field, value).map(Zeroizing::new)
}

pub(super) async fn create_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
    KvJson(body): KvJson<CreateKeyBody>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::Create),
            Some(&name),
        )
        .await?;
    if body
        .public_exponent
        .is_some_and(|exponent| exponent != 65537)
    {
        return Err(
            VaultError::BadParameter("public_exponent must be 65537 (or left out)".into()).into(),
        );
    }
    let options = CreateKeyOptions {
        key_type: KeyType::parse(&body.kty)?,
        key_size: body.key_size,
        key_ops: parse_key_ops(body.key_ops)?,
        attributes: body.attributes.input(),
        tags: body.tags.unwrap_or_default(),
    };
    let bundle = state
        .service
        .create_key(&context.vault, &name, options)
        .await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}

pub(super) async fn import_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
    KvJson(body): KvJson<ImportKeyBody>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::Import),
            Some(&name),
        )
        .await?;
    let jwk = body.key;
    let key_type = match jwk.kty.as_deref() {
        Some(kty) => KeyType::parse(kty)?,
        None => {
            return Err(
                VaultError::BadParameter("the imported JWK lacks 'kty'; use RSA".into()).into(),
            );
        }
    };
    let key_type = if body.hsm == Some(true) {
        KeyType::RsaHsm
    } else {
        key_type
    };
    let components = RsaPrivateComponents {
        n: decode_secret("n", jwk.n.as_deref())?.to_vec(),
        e: decode_secret("e", jwk.e.as_deref())?.to_vec(),
        d: decode_secret("d", jwk.d.as_ref().map(SecretField::as_str))?,
        p: decode_secret("p", jwk.p.as_ref().map(SecretField::as_str))?,
        q: decode_secret("q", jwk.q.as_ref().map(SecretField::as_str))?,
        dp: decode_secret("dp", jwk.dp.as_ref().map(SecretField::as_str))?,
        dq: decode_secret("dq", jwk.dq.as_ref().map(SecretField::as_str))?,
        qi: decode_secret("qi", jwk.qi.as_ref().map(SecretField::as_str))?,
    };
    let import = ImportKeyOptions {
        key_type,
        components,
        key_ops: parse_key_ops(jwk.key_ops)?,
        attributes: body.attributes.input(),
        tags: body.tags.unwrap_or_default(),
    };
    let bundle = state
        .service
        .import_key(&context.vault, &name, import)
        .await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}

pub(super) async fn get_latest_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::Get),
            Some(&name),
        )
        .await?;
    let bundle = state.service.get_key(&context.vault, &name, None).await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}

pub(super) async fn get_key_version(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path((name, version)): Path<(String, String)>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::Get),
            Some(&name),
        )
        .await?;
    let bundle = state
        .service
        .get_key(&context.vault, &name, Some(&version))
        .await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}

pub(super) async fn list_keys(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Query(query): Query<HashMap<String, String>>,
) -> Handled {
    context
        .authorize(&state, DataPlaneAction::key(KeyPermission::List), None)
        .await?;
    let (max_results, token) = paging(&query)?;
    let page = state
        .service
        .list_keys(&context.vault, max_results, token.as_deref())
        .await?;
    Ok(
        Json(page_json(&context, "keys", page, max_results, |bundle| {
            item_json(bundle, false)
        }))
        .into_response(),
    )
}

pub(super) async fn list_key_versions(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::List),
            Some(&name),
        )
        .await?;
    let (max_results, token) = paging(&query)?;
    let page = state
        .service
        .list_key_versions(&context.vault, &name, max_results, token.as_deref())
        .await?;
    let path = format!("keys/{name}/versions");
    Ok(
        Json(page_json(&context, &path, page, max_results, |bundle| {
            item_json(bundle, true)
        }))
        .into_response(),
    )
}

pub(super) async fn update_latest_key(
    state: State<DataPlaneState>,
    context: Extension<RequestContext>,
    Path(name): Path<String>,
    body: KvJson<UpdateKeyBody>,
) -> Handled {
    update_key(state, context, name, None, body).await
}

pub(super) async fn update_key_version(
    state: State<DataPlaneState>,
    context: Extension<RequestContext>,
    Path((name, version)): Path<(String, String)>,
    body: KvJson<UpdateKeyBody>,
) -> Handled {
    update_key(state, context, name, Some(version), body).await
}

async fn update_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    name: String,
    version: Option<String>,
    KvJson(body): KvJson<UpdateKeyBody>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::Update),
            Some(&name),
        )
        .await?;
    let attributes = body.attributes.unwrap_or_default();
    let update = KeyUpdate {
        key_ops: parse_key_ops(body.key_ops)?,
        enabled: attributes.enabled,
        not_before: attributes.nbf.map(Some),
        expires: attributes.exp.map(Some),
        tags: body.tags,
    };
    let bundle = state
        .service
        .update_key(&context.vault, &name, version.as_deref(), update)
        .await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}

pub(super) async fn rotate_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::Rotate),
            Some(&name),
        )
        .await?;
    let bundle = state.service.rotate_key(&context.vault, &name).await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}

pub(super) async fn backup_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    context
        .authorize(
            &state,
            DataPlaneAction::key(KeyPermission::Backup),
            Some(&name),
        )
        .await?;
    let blob = state.service.backup_key(&context.vault, &name).await?;
    Ok(Json(json!({"value": URL_SAFE_NO_PAD.encode(blob)})).into_response())
}

pub(super) async fn restore_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    KvJson(body): KvJson<RestoreBody>,
) -> Handled {
    context
        .authorize(&state, DataPlaneAction::key(KeyPermission::Restore), None)
        .await?;
    let blob = decode_base64url("value", &body.value)?;
    let bundle = state.service.restore_key(&context.vault, &blob).await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}
