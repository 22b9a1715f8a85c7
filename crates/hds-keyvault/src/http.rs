//! The data plane: Azure Key Vault's keys REST API (api-version 7.x and the dated versions)
//! over [`KeyVaultService`]. Handlers are thin: the gate middleware resolves the vault,
//! answers the bearer challenge, checks `api-version`, authenticates and applies the
//! firewall; each handler authorizes its own action, calls the service and writes Key
//! Vault's JSON.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, RequestExt, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::access::{self, Caller, DataPlaneAction, VaultAccessControl};
use crate::error::VaultError;
use crate::material::{EncryptionAlgorithm, RsaPrivateComponents, SignatureAlgorithm};
use crate::model::{
    CreateKeyOptions, DeletedKey, KeyAttributesInput, KeyBundle, KeyOperation, KeyPermission,
    KeyType, KeyUpdate, Page, Vault,
};
use crate::service::{ImportKeyOptions, KeyVaultService, MAX_PAGE_SIZE};

/// Largest request body accepted (a restore blob of many 4096-bit versions fits easily).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the data plane needs.
#[derive(Clone)]
pub struct DataPlaneState {
    /// The vault service.
    pub service: Arc<KeyVaultService>,
    /// Authentication and RBAC.
    pub access: Arc<dyn VaultAccessControl>,
    /// The token authority base named in the 401 challenge (`{authority}/{tenantId}`), e.g.
    /// hds's own token endpoint base `https://127.0.0.1:8443`.
    pub token_authority: String,
}

/// Which vault a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultSelector {
    /// Every request on this listener is for this vault (loopback addressing).
    Fixed(String),
    /// The vault is the first label of `Host: {vault}.vault.{domain}` (domain addressing).
    ByHost {
        /// The configured domain.
        domain: String,
    },
}

/// A request that passed the gate.
#[derive(Debug, Clone)]
struct RequestContext {
    vault: Arc<Vault>,
    caller: Caller,
    api_version: String,
}

/// The router of one vault (or, with [`VaultSelector::ByHost`], of every vault).
pub fn data_plane_router(state: DataPlaneState, selector: VaultSelector) -> Router {
    let gate_state = (state.clone(), Arc::new(selector));
    Router::new()
        .route("/keys", get(list_keys))
        .route("/keys/restore", post(restore_key))
        .route(
            "/keys/{name}",
            get(get_latest_key).put(import_key).delete(delete_key),
        )
        .route(
            "/keys/{name}/",
            get(get_latest_key).patch(update_latest_key),
        )
        .route("/keys/{name}/create", post(create_key))
        .route("/keys/{name}/versions", get(list_key_versions))
        .route("/keys/{name}/rotate", post(rotate_key))
        .route("/keys/{name}/backup", post(backup_key))
        .route(
            "/keys/{name}/{version}",
            get(get_key_version).patch(update_key_version),
        )
        .route("/keys/{name}/{version}/{operation}", post(key_operation))
        // A versionless key id (`.../keys/{name}`) makes the SDKs send an empty version.
        .route("/keys/{name}//{operation}", post(key_operation_latest))
        .route("/deletedkeys", get(list_deleted_keys))
        .route(
            "/deletedkeys/{name}",
            get(get_deleted_key).delete(purge_deleted_key),
        )
        .route("/deletedkeys/{name}/recover", post(recover_deleted_key))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(gate_state, gate))
        .with_state(state)
}

// ----- the gate -----

async fn gate(
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
    let api_version = match api_version_of(request.uri().query()) {
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

/// Accepts `7.x` (with previews) and the dated versions the older SDKs send.
fn api_version_of(query: Option<&str>) -> Result<String, VaultError> {
    let version = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "api-version")
        .map(|(_, value)| value.to_owned());
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

// ----- errors and bodies -----

/// A [`VaultError`] on its way to the client.
struct ApiError(VaultError);

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

fn error_response(error: &VaultError) -> Response {
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
struct KvJson<T>(T);

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

fn decode_base64url(field: &str, value: &str) -> Result<Vec<u8>, VaultError> {
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('=').as_bytes())
        .map_err(|_| {
            VaultError::BadParameter(format!(
                "'{field}' must be base64url-encoded (RFC 4648 §5, padding optional)"
            ))
        })
}

fn decode_secret(field: &str, value: Option<&str>) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let value = value.ok_or_else(|| {
        VaultError::BadParameter(format!(
            "the imported JWK lacks '{field}': an RSA private key needs n, e, d, p, q, dp, dq and qi"
        ))
    })?;
    decode_base64url(field, value).map(Zeroizing::new)
}

async fn require(
    state: &DataPlaneState,
    context: &RequestContext,
    action: DataPlaneAction,
    key_name: Option<&str>,
) -> Result<(), ApiError> {
    access::authorize(
        state.access.as_ref(),
        &context.vault,
        &context.caller,
        action,
        key_name,
    )
    .await
    .map_err(ApiError)
}

// ----- JSON -----

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

fn bundle_json(bundle: &KeyBundle) -> Value {
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

fn item_json(bundle: &KeyBundle, with_version: bool) -> Value {
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

fn add_deleted_fields(body: &mut Value, deleted: &DeletedKey) {
    body["recoveryId"] = json!(deleted.recovery_id());
    body["deletedDate"] = json!(deleted.deleted_date);
    body["scheduledPurgeDate"] = json!(deleted.scheduled_purge_date);
}

/// A DeletedKeyBundle: the key bundle plus the deletion fields.
fn deleted_bundle_json(deleted: &DeletedKey) -> Value {
    let mut body = bundle_json(&deleted.bundle);
    add_deleted_fields(&mut body, deleted);
    body
}

fn page_json<T>(
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

fn paging(query: &HashMap<String, String>) -> Result<(usize, Option<String>), VaultError> {
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

// ----- request bodies -----

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
struct CreateKeyBody {
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
struct ImportKeyBody {
    key: JwkBody,
    #[serde(rename = "Hsm")]
    hsm: Option<bool>,
    #[serde(default)]
    attributes: AttributesBody,
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct UpdateKeyBody {
    key_ops: Option<Vec<String>>,
    attributes: Option<AttributesBody>,
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct OperationBody {
    alg: String,
    value: String,
    digest: Option<String>,
}

#[derive(Deserialize)]
struct RestoreBody {
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

// ----- handlers -----

async fn unknown_route() -> ApiError {
    ApiError(VaultError::BadParameter(
        "unknown operation: this vault serves the keys API (/keys, /deletedkeys); secrets and certificates are not supported".into(),
    ))
}

type Handled = Result<Response, ApiError>;

async fn create_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
    KvJson(body): KvJson<CreateKeyBody>,
) -> Handled {
    require(
        &state,
        &context,
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

async fn import_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
    KvJson(body): KvJson<ImportKeyBody>,
) -> Handled {
    require(
        &state,
        &context,
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

async fn get_latest_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    require(
        &state,
        &context,
        DataPlaneAction::key(KeyPermission::Get),
        Some(&name),
    )
    .await?;
    let bundle = state.service.get_key(&context.vault, &name, None).await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}

async fn get_key_version(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path((name, version)): Path<(String, String)>,
) -> Handled {
    require(
        &state,
        &context,
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

async fn list_keys(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Query(query): Query<HashMap<String, String>>,
) -> Handled {
    require(
        &state,
        &context,
        DataPlaneAction::key(KeyPermission::List),
        None,
    )
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

async fn list_key_versions(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Handled {
    require(
        &state,
        &context,
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

async fn update_latest_key(
    state: State<DataPlaneState>,
    context: Extension<RequestContext>,
    Path(name): Path<String>,
    body: KvJson<UpdateKeyBody>,
) -> Handled {
    update_key(state, context, name, None, body).await
}

async fn update_key_version(
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
    require(
        &state,
        &context,
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

async fn delete_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    require(
        &state,
        &context,
        DataPlaneAction::key(KeyPermission::Delete),
        Some(&name),
    )
    .await?;
    let deleted = state.service.delete_key(&context.vault, &name).await?;
    Ok(Json(deleted_bundle_json(&deleted)).into_response())
}

async fn get_deleted_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    require(
        &state,
        &context,
        DataPlaneAction::read_deleted(KeyPermission::Get),
        Some(&name),
    )
    .await?;
    let deleted = state.service.get_deleted_key(&context.vault, &name).await?;
    Ok(Json(deleted_bundle_json(&deleted)).into_response())
}

async fn list_deleted_keys(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Query(query): Query<HashMap<String, String>>,
) -> Handled {
    require(
        &state,
        &context,
        DataPlaneAction::read_deleted(KeyPermission::List),
        None,
    )
    .await?;
    let (max_results, token) = paging(&query)?;
    let page = state
        .service
        .list_deleted_keys(&context.vault, max_results, token.as_deref())
        .await?;
    Ok(Json(page_json(
        &context,
        "deletedkeys",
        page,
        max_results,
        |deleted| {
            let mut body = item_json(&deleted.bundle, false);
            add_deleted_fields(&mut body, deleted);
            body
        },
    ))
    .into_response())
}

async fn recover_deleted_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    require(
        &state,
        &context,
        DataPlaneAction::key(KeyPermission::Recover),
        Some(&name),
    )
    .await?;
    let bundle = state
        .service
        .recover_deleted_key(&context.vault, &name)
        .await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}

async fn purge_deleted_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    require(
        &state,
        &context,
        DataPlaneAction::key(KeyPermission::Purge),
        Some(&name),
    )
    .await?;
    state
        .service
        .purge_deleted_key(&context.vault, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rotate_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    require(
        &state,
        &context,
        DataPlaneAction::key(KeyPermission::Rotate),
        Some(&name),
    )
    .await?;
    let bundle = state.service.rotate_key(&context.vault, &name).await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}

async fn backup_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    Path(name): Path<String>,
) -> Handled {
    require(
        &state,
        &context,
        DataPlaneAction::key(KeyPermission::Backup),
        Some(&name),
    )
    .await?;
    let blob = state.service.backup_key(&context.vault, &name).await?;
    Ok(Json(json!({"value": URL_SAFE_NO_PAD.encode(blob)})).into_response())
}

async fn restore_key(
    State(state): State<DataPlaneState>,
    Extension(context): Extension<RequestContext>,
    KvJson(body): KvJson<RestoreBody>,
) -> Handled {
    require(
        &state,
        &context,
        DataPlaneAction::key(KeyPermission::Restore),
        None,
    )
    .await?;
    let blob = decode_base64url("value", &body.value)?;
    let bundle = state.service.restore_key(&context.vault, &blob).await?;
    Ok(Json(bundle_json(&bundle)).into_response())
}

async fn key_operation_latest(
    state: State<DataPlaneState>,
    context: Extension<RequestContext>,
    Path((name, operation)): Path<(String, String)>,
    body: KvJson<OperationBody>,
) -> Handled {
    run_key_operation(state, context, name, None, operation, body).await
}

async fn key_operation(
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
    require(
        &state,
        &context,
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
