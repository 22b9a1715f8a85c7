//! The data plane: Azure Key Vault's keys REST API (api-version 7.x and the dated versions)
//! over [`KeyVaultService`]. Handlers are thin: the gate middleware resolves the vault,
//! answers the bearer challenge, checks `api-version`, authenticates and applies the
//! firewall; each handler authorizes its own action, calls the service and writes Key
//! Vault's JSON.
//!
//! One module per concern: `gate.rs` (vault, challenge, api-version, authentication,
//! firewall), `keys.rs` (the key lifecycle routes), `deleted.rs` (deletion and the
//! `/deletedkeys` routes), `policy.rs` (rotation policies and `/rng`), `operations.rs` (wrap/unwrap, encrypt/decrypt, sign/verify) and
//! `wire.rs` (errors, bodies and JSON as Key Vault writes them).

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};

use crate::access::{self, Caller, DataPlaneAction, VaultAccessControl};
use crate::error::VaultError;
use crate::model::Vault;
use crate::service::KeyVaultService;

mod deleted;
mod gate;
mod keys;
mod operations;
mod policy;
mod wire;

use deleted::{
    delete_key, get_deleted_key, list_deleted_keys, purge_deleted_key, recover_deleted_key,
};
use gate::gate;
use keys::{
    backup_key, create_key, get_key_version, get_latest_key, import_key, list_key_versions,
    list_keys, restore_key, rotate_key, update_key_version, update_latest_key,
};
use operations::{key_operation, key_operation_latest};
use policy::{get_rotation_policy, random_bytes, set_rotation_policy};
use wire::ApiError;

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

impl RequestContext {
    /// Authorizes the caller for `action` (on `key_name`, when it names one), in Key Vault's
    /// error shape when refused. Each handler calls it first, naming its own action.
    async fn authorize(
        &self,
        state: &DataPlaneState,
        action: DataPlaneAction,
        key_name: Option<&str>,
    ) -> Result<(), ApiError> {
        access::authorize(
            state.access.as_ref(),
            &self.vault,
            &self.caller,
            action,
            key_name,
        )
        .await
        .map_err(ApiError)
    }
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
        .route(
            "/keys/{name}/rotationpolicy",
            get(get_rotation_policy).put(set_rotation_policy),
        )
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
        .route("/rng", post(random_bytes))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(gate_state, gate))
        .with_state(state)
}

/// Anything outside the keys API: a clear 400 rather than a bare 404.
async fn unknown_route() -> ApiError {
    ApiError(VaultError::BadParameter(
        "unknown operation: this vault serves the keys API (/keys, /deletedkeys, /rng); secrets and certificates are not supported".into(),
    ))
}

/// What every handler returns.
type Handled = Result<Response, ApiError>;
