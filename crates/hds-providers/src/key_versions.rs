//! `Microsoft.KeyVault/vaults/keys/versions`: a key's versions through the control plane, and
//! the two writes the portal needs beside them, so that it never has to call a vault's data
//! plane (another origin, which its Content-Security-Policy does not allow).
//!
//! - `GET .../keys/{name}/versions` lists the versions, oldest first; `GET .../versions/{v}`
//!   reads one (both as in Azure's ARM API).
//! - `POST .../keys/{name}/rotate` adds a version (hds's own; the data plane's `rotate`).
//! - `PATCH .../versions/{v}` with `properties.attributes` (`enabled`, `nbf`, `exp`) changes
//!   that version (hds's own; Azure's ARM API does not write keys).
//!
//! **Invariant:** a write here needs what the same change through the data plane needs, on top
//! of the ARM permission: the RBAC data action (`keys/rotate/action`, `keys/update/action`)
//! on a vault that uses RBAC, or the access-policy permission on one that does not. So owning
//! the resource group (Owner, Contributor) is not enough to disable a key a service depends on,
//! just as in Azure. The vault's firewall is a network rule of its data plane and does not
//! apply to the control plane.

use std::sync::Arc;

use hds_arm::{
    ArmError, ArmFuture, ProviderResponse, RequestContext, ResourceId, ResourceProvider,
};
use hds_identity::{Decision, Identity};
use hds_keyvault::KeyVaultService;
use hds_keyvault::VaultError;
use hds_keyvault::access::{AccessError, BoxFuture, DataPlaneAction, VaultAccessControl};
use hds_keyvault::model::{KeyPermission, KeyUpdate, Vault};
use serde_json::Value;

use crate::errors::{bad_request, from_vault, not_supported, refused};
use crate::json::{field, optional_bool};
use crate::keyvault::{key_json, vault_of_key};

/// The key version type.
pub const KEY_VERSIONS_TYPE: &str = "Microsoft.KeyVault/vaults/keys/versions";

/// The most versions one list returns; a key rotated more often than this lists its newest.
const MAX_LISTED_VERSIONS: usize = 1000;

/// Whether the identity service grants `principal_id` the vault data action `data_action` at
/// `scope`, as a vault's access control answers it: the rule both the vaults' data plane and
/// the control plane's key-version writes apply.
pub async fn authorize_data_action(
    identity: &Identity,
    principal_id: &str,
    data_action: &str,
    scope: &str,
) -> Result<(), AccessError> {
    match identity
        .authorize(principal_id, data_action, scope, true)
        .await
    {
        Ok(Decision::Allow) => Ok(()),
        Ok(Decision::Deny(_)) => Err(AccessError::Denied),
        Err(error) => Err(AccessError::Unavailable(error.to_string())),
    }
}

/// The vault's data-plane rule, asked for an ARM caller (already authenticated by ARM).
struct DataPlaneRule {
    identity: Identity,
}

impl VaultAccessControl for DataPlaneRule {
    fn authenticate<'a>(
        &'a self,
        _bearer: &'a str,
    ) -> BoxFuture<'a, Result<hds_keyvault::Caller, AccessError>> {
        Box::pin(async {
            Err(AccessError::InvalidToken(
                "the control plane authenticates its callers itself".into(),
            ))
        })
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a hds_keyvault::Caller,
        data_action: &'a str,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(authorize_data_action(
            &self.identity,
            &caller.principal_id,
            data_action,
            scope,
        ))
    }
}

/// Refuses `permission` on key `key_name` unless the vault's data plane would allow the caller.
pub(crate) async fn authorize_key_action(
    identity: &Identity,
    vault: &Vault,
    context: &RequestContext,
    permission: KeyPermission,
    key_name: &str,
) -> Result<(), ArmError> {
    let rule = DataPlaneRule {
        identity: identity.clone(),
    };
    let caller = hds_keyvault::Caller {
        principal_id: context.caller.principal_id.clone(),
        tenant_id: context.caller.tenant_id.clone(),
        is_trusted_service: false,
    };
    hds_keyvault::access::authorize(
        &rule,
        vault,
        &caller,
        DataPlaneAction::key(permission),
        Some(key_name),
    )
    .await
    .map_err(from_vault)
}

/// The provider of key versions.
pub struct KeyVersionProvider {
    service: Arc<KeyVaultService>,
    identity: Identity,
}

impl std::fmt::Debug for KeyVersionProvider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KeyVersionProvider")
            .finish_non_exhaustive()
    }
}

impl KeyVersionProvider {
    /// Versions of the keys kept by `service`; `identity` decides the data-plane permission
    /// a change needs.
    pub fn new(service: Arc<KeyVaultService>, identity: Identity) -> KeyVersionProvider {
        KeyVersionProvider { service, identity }
    }

    /// The vault and key name of version `id` (`.../keys/{name}/versions/{version}`).
    async fn key_of(&self, id: &ResourceId) -> Result<(Vault, ResourceId), ArmError> {
        let key = id
            .parent()
            .ok_or_else(|| ArmError::resource_not_found(id))?;
        let vault = vault_of_key(&self.service, &key).await?;
        Ok((vault, key))
    }
}

/// A version id as the vault makes them: 32 hex digits. Anything else cannot exist.
fn valid_version(version: &str) -> bool {
    version.len() == 32 && version.bytes().all(|byte| byte.is_ascii_hexdigit())
}

fn not_found(id: &ResourceId) -> impl Fn(VaultError) -> ArmError + '_ {
    move |error| match error {
        VaultError::KeyNotFound(_) => ArmError::resource_not_found(id),
        other => from_vault(other),
    }
}

/// Reads `properties.attributes` of a PATCH: `enabled`, `nbf`, `exp`; nothing else.
fn parse_update(body: &Value) -> Result<KeyUpdate, ArmError> {
    let Some(body) = body.as_object() else {
        return Err(bad_request(
            "InvalidRequestContent",
            "The request content must be a JSON object.",
        ));
    };
    if let Some(name) = body.keys().find(|name| name.as_str() != "properties") {
        return Err(bad_request(
            "InvalidRequestContent",
            format!(
                "'{name}' cannot be changed on a key version; only 'properties.attributes' can."
            ),
        ));
    }
    let properties = body.get("properties").unwrap_or(&Value::Null);
    let attributes = match field(properties, "attributes") {
        Some(attributes @ Value::Object(map)) => {
            if let Some(name) = map
                .keys()
                .find(|name| !["enabled", "nbf", "exp"].contains(&name.as_str()))
            {
                return Err(bad_request(
                    "InvalidRequestContent",
                    format!(
                        "'properties.attributes.{name}' cannot be changed; 'enabled', 'nbf' and 'exp' can."
                    ),
                ));
            }
            attributes
        }
        _ => {
            return Err(bad_request(
                "InvalidRequestContent",
                "'properties.attributes' is required: for example {\"enabled\": false}.",
            ));
        }
    };
    let time = |name: &str| -> Result<Option<Option<i64>>, ArmError> {
        match field(attributes, name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(value) => value.as_i64().map(|time| Some(Some(time))).ok_or_else(|| {
                bad_request(
                    "InvalidRequestContent",
                    format!("'properties.attributes.{name}' must be Unix seconds or null."),
                )
            }),
        }
    };
    Ok(KeyUpdate {
        key_ops: None,
        enabled: optional_bool(attributes, "enabled", "properties.attributes.enabled")?,
        not_before: time("nbf")?,
        expires: time("exp")?,
        tags: None,
    })
}

impl ResourceProvider for KeyVersionProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![KEY_VERSIONS_TYPE]
    }

    fn api_versions(&self) -> Vec<&'static str> {
        vec!["2022-07-01"]
    }

    fn put(
        &self,
        _context: RequestContext,
        _id: ResourceId,
        _body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        refused(
            "Key versions are not created by PUT: POST .../keys/{name}/rotate adds one, and PATCH changes a version's attributes.",
        )
    }

    fn get(&self, _context: RequestContext, id: ResourceId) -> ArmFuture<'_, Value> {
        Box::pin(async move {
            if !valid_version(id.name()) {
                return Err(ArmError::resource_not_found(&id));
            }
            let (vault, key) = self.key_of(&id).await?;
            let bundle = self
                .service
                .get_key(&vault, key.name(), Some(id.name()))
                .await
                .map_err(not_found(&id))?;
            Ok(key_json(&id, &bundle))
        })
    }

    /// The key's versions, oldest first.
    fn list(
        &self,
        _context: RequestContext,
        parent: ResourceId,
        _resource_type: String,
    ) -> ArmFuture<'_, Vec<Value>> {
        Box::pin(async move {
            let vault = vault_of_key(&self.service, &parent).await?;
            let mut values = Vec::new();
            let mut continuation: Option<String> = None;
            loop {
                let page = self
                    .service
                    .list_key_versions(
                        &vault,
                        parent.name(),
                        hds_keyvault::service::MAX_PAGE_SIZE,
                        continuation.as_deref(),
                    )
                    .await
                    .map_err(not_found(&parent))?;
                for bundle in &page.items {
                    if let Some(id) = parent.child("versions", &bundle.key.version) {
                        values.push(key_json(&id, bundle));
                    }
                }
                match page.continuation {
                    Some(next) if values.len() < MAX_LISTED_VERSIONS => continuation = Some(next),
                    _ => break,
                }
            }
            Ok(values)
        })
    }

    /// Enables or disables a version, or changes its activation or expiry.
    fn patch(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            let update = parse_update(&body)?;
            if !valid_version(id.name()) {
                return Err(ArmError::resource_not_found(&id));
            }
            let (vault, key) = self.key_of(&id).await?;
            // A version that does not exist is a 404 whoever asks.
            self.service
                .get_key(&vault, key.name(), Some(id.name()))
                .await
                .map_err(not_found(&id))?;
            authorize_key_action(
                &self.identity,
                &vault,
                &context,
                KeyPermission::Update,
                key.name(),
            )
            .await?;
            let bundle = self
                .service
                .update_key(&vault, key.name(), Some(id.name()), update)
                .await
                .map_err(not_found(&id))?;
            Ok(ProviderResponse::Completed(key_json(&id, &bundle)))
        })
    }

    fn delete(&self, _context: RequestContext, _id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            Err(not_supported(
                "A key version cannot be deleted on its own; disable it, or delete the key.",
            ))
        })
    }
}
