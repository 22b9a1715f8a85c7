//! `Microsoft.KeyVault/vaults` and `Microsoft.KeyVault/vaults/keys` over the vault service.
//!
//! The vault service is the truth for a vault's settings and keys; the generic store keeps
//! the ARM envelope (location, tags, `sku`, properties this platform does not model) so a
//! GET shows what was PUT, with the modelled properties read back from the service.
//!
//! A vault's permission model (`enableRbacAuthorization`) and its access policies decide who
//! may use its keys, so changing them is a grant of data access: as in Azure, it needs the
//! right to assign roles (`Microsoft.Authorization/roleAssignments/write` at the vault's scope:
//! Owner, User Access Administrator), not only `Microsoft.KeyVault/vaults/write`. Otherwise a
//! Contributor could switch a vault to access policies and grant itself unwrapKey.

use std::collections::BTreeMap;
use std::sync::Arc;

use hds_arm::{
    ArmError, ArmFuture, ProviderResponse, PutRequest, RequestContext, ResourceId, ResourceProvider,
};
use hds_identity::{Decision, Identity};
use hds_keyvault::KeyVaultService;
use hds_keyvault::VaultError;
use hds_keyvault::model::{
    AccessPolicy, Bypass, CreateKeyOptions, DefaultAction, IpRule, KeyAttributesInput, KeyBundle,
    KeyOperation, KeyPermission, KeyType, MAX_RETENTION_DAYS, MIN_RETENTION_DAYS, NetworkAcls,
    Vault, VaultProperties,
};
use hds_keyvault::rotation::RotationPolicy;
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::errors::{bad_request, from_vault, location_required};
use crate::json::{field, optional_bool, optional_string, remove_field};

/// The vault type.
pub const VAULTS_TYPE: &str = "Microsoft.KeyVault/vaults";
/// The key type.
pub const KEYS_TYPE: &str = "Microsoft.KeyVault/vaults/keys";

/// Told when a vault appears, changes or goes, so its data-plane listener can follow.
pub trait VaultEvents: Send + Sync + 'static {
    /// `vault` was created or updated.
    fn vault_changed(&self, vault: &Vault);
    /// The vault named `name` was deleted.
    fn vault_deleted(&self, name: &str);
}

/// The vault properties this provider models (and renders from the service); every other
/// property is kept as given.
const MODELLED_VAULT_PROPERTIES: &[&str] = &[
    "tenantId",
    "sku",
    "enableSoftDelete",
    "softDeleteRetentionInDays",
    "enablePurgeProtection",
    "enableRbacAuthorization",
    "accessPolicies",
    "networkAcls",
    "vaultUri",
    "provisioningState",
];

/// The action that changing who may use a vault's keys needs, besides writing the vault.
pub const ASSIGN_ROLES_ACTION: &str = "Microsoft.Authorization/roleAssignments/write";

/// The vault provider.
pub struct VaultProvider {
    service: Arc<KeyVaultService>,
    identity: Identity,
    events: Option<Arc<dyn VaultEvents>>,
}

impl std::fmt::Debug for VaultProvider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("VaultProvider")
            .finish_non_exhaustive()
    }
}

impl VaultProvider {
    /// Vaults kept by `service`, with permission-model changes authorized by `identity`;
    /// `events` hears of every change.
    pub fn new(
        service: Arc<KeyVaultService>,
        identity: Identity,
        events: Option<Arc<dyn VaultEvents>>,
    ) -> VaultProvider {
        VaultProvider {
            service,
            identity,
            events,
        }
    }

    /// Refuses a PUT that changes who may use the vault's keys (see the module docs) unless
    /// the caller may assign roles at the vault's scope.
    async fn authorize_permission_change(
        &self,
        context: &RequestContext,
        id: &ResourceId,
        current: Option<&VaultProperties>,
        wanted: &VaultProperties,
    ) -> Result<(), ArmError> {
        let Some(change) = permission_change(current, wanted) else {
            return Ok(());
        };
        let principal_id = &context.caller.principal_id;
        match self
            .identity
            .authorize(principal_id, ASSIGN_ROLES_ACTION, id.as_str(), false)
            .await
        {
            Ok(Decision::Allow) => Ok(()),
            Ok(Decision::Deny(_)) => Err(ArmError::new(
                StatusCode::FORBIDDEN,
                "AuthorizationFailed",
                format!(
                    "The client '{principal_id}' with object id '{principal_id}' does not have authorization to perform action '{ASSIGN_ROLES_ACTION}' over scope '{}'. Changing a key vault's {change} grants access to its keys, so it needs the right to assign roles at the vault's scope (Owner or User Access Administrator), not only to write the vault.",
                    id.as_str()
                ),
            )),
            Err(error) => Err(ArmError::internal(&error)),
        }
    }

    async fn existing_vault(&self, name: &str) -> Result<Option<Vault>, ArmError> {
        match self.service.get_vault(name).await {
            Ok(vault) => Ok(Some(vault)),
            Err(VaultError::VaultNotFound(_)) => Ok(None),
            Err(error) => Err(from_vault(error)),
        }
    }
}

/// Reads `properties.sku`: `{family: "A", name: "standard" | "premium"}`.
fn parse_sku(value: &Value) -> Result<Value, ArmError> {
    let name = optional_string(value, "name", "properties.sku.name")?.unwrap_or_default();
    let name = ["standard", "premium"]
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(&name))
        .ok_or_else(|| {
            bad_request(
                "InvalidSku",
                "'properties.sku.name' must be 'standard' or 'premium'.",
            )
        })?;
    let family = optional_string(value, "family", "properties.sku.family")?
        .unwrap_or_else(|| "A".to_owned());
    if !family.eq_ignore_ascii_case("A") {
        return Err(bad_request(
            "InvalidSku",
            "'properties.sku.family' must be 'A'.",
        ));
    }
    Ok(json!({ "family": "A", "name": name }))
}

fn parse_access_policies(value: &Value) -> Result<Vec<AccessPolicy>, ArmError> {
    let Some(entries) = value.as_array() else {
        return Err(bad_request(
            "InvalidAccessPolicy",
            "'properties.accessPolicies' must be an array.",
        ));
    };
    let mut policies = Vec::new();
    for entry in entries {
        let text = |name: &str| -> Result<String, ArmError> {
            optional_string(entry, name, &format!("properties.accessPolicies[].{name}"))?
                .filter(|text| uuid::Uuid::parse_str(text).is_ok())
                .ok_or_else(|| {
                    bad_request(
                        "InvalidAccessPolicy",
                        format!("Each access policy needs '{name}' (a GUID)."),
                    )
                })
        };
        let tenant_id = text("tenantId")?;
        let object_id = text("objectId")?;
        let mut key_permissions = Vec::new();
        let keys = field(entry, "permissions")
            .and_then(|permissions| field(permissions, "keys"))
            .cloned()
            .unwrap_or(json!([]));
        for permission in keys.as_array().into_iter().flatten() {
            let name = permission.as_str().unwrap_or_default();
            let parsed = KeyPermission::CONCRETE
                .into_iter()
                .chain([KeyPermission::All])
                .find(|known| known.policy_name().eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    bad_request(
                        "InvalidAccessPolicy",
                        format!(
                            "'{}' is not a key permission; use get, list, create, import, update, delete, recover, backup, restore, purge, encrypt, decrypt, wrapKey, unwrapKey, sign, verify, rotate or all.",
                            name.chars().take(32).collect::<String>()
                        ),
                    )
                })?;
            key_permissions.push(parsed);
        }
        policies.push(AccessPolicy {
            tenant_id,
            object_id,
            key_permissions,
        });
    }
    Ok(policies)
}

fn parse_network_acls(value: &Value) -> Result<NetworkAcls, ArmError> {
    let default_action = match optional_string(
        value,
        "defaultAction",
        "properties.networkAcls.defaultAction",
    )? {
        None => DefaultAction::Allow,
        Some(text) if text.eq_ignore_ascii_case("Allow") => DefaultAction::Allow,
        Some(text) if text.eq_ignore_ascii_case("Deny") => DefaultAction::Deny,
        Some(_) => {
            return Err(bad_request(
                "InvalidNetworkAcls",
                "'properties.networkAcls.defaultAction' must be 'Allow' or 'Deny'.",
            ));
        }
    };
    let bypass = match optional_string(value, "bypass", "properties.networkAcls.bypass")? {
        None => Bypass::AzureServices,
        Some(text) if text.eq_ignore_ascii_case("AzureServices") => Bypass::AzureServices,
        Some(text) if text.eq_ignore_ascii_case("None") => Bypass::None,
        Some(_) => {
            return Err(bad_request(
                "InvalidNetworkAcls",
                "'properties.networkAcls.bypass' must be 'AzureServices' or 'None'.",
            ));
        }
    };
    let mut ip_rules = Vec::new();
    for rule in field(value, "ipRules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = optional_string(rule, "value", "properties.networkAcls.ipRules[].value")?
            .unwrap_or_default();
        let parsed: IpRule = text
            .parse()
            .map_err(|error: VaultError| bad_request("InvalidNetworkAcls", error.to_string()))?;
        ip_rules.push(parsed);
    }
    Ok(NetworkAcls {
        default_action,
        bypass,
        ip_rules,
    })
}

/// Reads the modelled vault properties of a PUT body against the vault as it is (absent
/// properties keep their current values), enforcing Azure's rules with one code each.
fn parse_vault_properties(
    properties: &Value,
    current: Option<&VaultProperties>,
) -> Result<VaultProperties, ArmError> {
    let tenant_id = match optional_string(properties, "tenantId", "properties.tenantId")? {
        Some(tenant) if uuid::Uuid::parse_str(&tenant).is_ok() => tenant,
        Some(_) => {
            return Err(bad_request(
                "InvalidTenantId",
                "'properties.tenantId' must be the tenant's id (a GUID).",
            ));
        }
        None => match current {
            Some(current) => current.tenant_id.clone(),
            None => {
                return Err(bad_request(
                    "TenantIdRequired",
                    "'properties.tenantId' is required: the tenant whose tokens the vault accepts.",
                ));
            }
        },
    };
    let retention = match field(properties, "softDeleteRetentionInDays") {
        None => current.map_or(MAX_RETENTION_DAYS, |current| {
            current.soft_delete_retention_in_days
        }),
        Some(value) => value
            .as_u64()
            .and_then(|days| u32::try_from(days).ok())
            .filter(|days| (MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS).contains(days))
            .ok_or_else(|| {
                bad_request(
                    "InvalidSoftDeleteRetentionPeriod",
                    format!(
                        "'properties.softDeleteRetentionInDays' must be a whole number of days from {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS}."
                    ),
                )
            })?,
    };
    if let Some(current) = current
        && current.soft_delete_retention_in_days != retention
    {
        return Err(bad_request(
            "SoftDeleteRetentionPeriodImmutable",
            format!(
                "'properties.softDeleteRetentionInDays' cannot change once the vault exists (it is {} days). Leave it out or send the current value.",
                current.soft_delete_retention_in_days
            ),
        ));
    }
    let soft_delete = one_way_flag(
        properties,
        "enableSoftDelete",
        current.map(|current| current.enable_soft_delete),
        true,
        (
            "SoftDeleteCannotBeDisabled",
            "'properties.enableSoftDelete' cannot be turned off once it is on. Send true or leave it out.",
        ),
    )?;
    let purge_protection = one_way_flag(
        properties,
        "enablePurgeProtection",
        current.map(|current| current.enable_purge_protection),
        false,
        (
            "PurgeProtectionCannotBeDisabled",
            "'properties.enablePurgeProtection' cannot be set to false: enabling purge protection is irreversible. Send true or leave it out.",
        ),
    )?;
    if purge_protection && !soft_delete {
        return Err(bad_request(
            "PurgeProtectionRequiresSoftDelete",
            "Purge protection needs soft delete: set 'properties.enableSoftDelete' to true.",
        ));
    }
    let rbac = optional_bool(
        properties,
        "enableRbacAuthorization",
        "properties.enableRbacAuthorization",
    )?
    .unwrap_or_else(|| current.is_some_and(|current| current.enable_rbac_authorization));
    let access_policies = match field(properties, "accessPolicies") {
        Some(value) => parse_access_policies(value)?,
        None => current.map_or_else(Vec::new, |current| current.access_policies.clone()),
    };
    let network_acls = match field(properties, "networkAcls") {
        Some(value) => parse_network_acls(value)?,
        None => current.map_or_else(NetworkAcls::default, |current| current.network_acls.clone()),
    };
    Ok(VaultProperties {
        tenant_id,
        enable_soft_delete: soft_delete,
        soft_delete_retention_in_days: retention,
        enable_purge_protection: purge_protection,
        enable_rbac_authorization: rbac,
        access_policies,
        network_acls,
    })
}

/// What a PUT changes in who may use the vault's keys, if anything: the permission model, or
/// the access policies. A new vault's permission model grants nothing by itself (RBAC grants
/// through role assignments, which need the same right; access policies grant only what they
/// list), so for a new vault only a non-empty list of access policies counts.
fn permission_change(
    current: Option<&VaultProperties>,
    wanted: &VaultProperties,
) -> Option<&'static str> {
    match current {
        None if !wanted.access_policies.is_empty() => Some("access policies"),
        None => None,
        Some(current) if current.enable_rbac_authorization != wanted.enable_rbac_authorization => {
            Some("permission model (enableRbacAuthorization)")
        }
        Some(current) if current.access_policies != wanted.access_policies => {
            Some("access policies")
        }
        Some(_) => None,
    }
}

/// The modelled properties as ARM shows them.
fn render_vault_properties(vault: &Vault, target: &mut Map<String, Value>) {
    let properties = &vault.properties;
    target.insert("tenantId".into(), json!(properties.tenant_id));
    target.insert(
        "enableSoftDelete".into(),
        json!(properties.enable_soft_delete),
    );
    target.insert(
        "softDeleteRetentionInDays".into(),
        json!(properties.soft_delete_retention_in_days),
    );
    target.insert(
        "enablePurgeProtection".into(),
        json!(properties.enable_purge_protection),
    );
    target.insert(
        "enableRbacAuthorization".into(),
        json!(properties.enable_rbac_authorization),
    );
    let policies: Vec<Value> = properties
        .access_policies
        .iter()
        .map(|policy| {
            json!({
                "tenantId": policy.tenant_id,
                "objectId": policy.object_id,
                "permissions": {
                    "keys": policy.key_permissions.iter().map(|permission| permission.policy_name()).collect::<Vec<_>>(),
                    "secrets": [],
                    "certificates": [],
                },
            })
        })
        .collect();
    target.insert("accessPolicies".into(), Value::Array(policies));
    let acls = &properties.network_acls;
    target.insert(
        "networkAcls".into(),
        json!({
            "defaultAction": match acls.default_action { DefaultAction::Allow => "Allow", DefaultAction::Deny => "Deny" },
            "bypass": match acls.bypass { Bypass::AzureServices => "AzureServices", Bypass::None => "None" },
            "ipRules": acls.ip_rules.iter().map(|rule| json!({ "value": rule.to_string() })).collect::<Vec<_>>(),
            "virtualNetworkRules": [],
        }),
    );
    target.insert("vaultUri".into(), json!(vault.vault_uri));
}

impl ResourceProvider for VaultProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![VAULTS_TYPE]
    }

    fn api_versions(&self) -> Vec<&'static str> {
        vec!["2022-07-01"]
    }

    fn put(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            let request = PutRequest::parse(&body)?;
            if request.location.is_none() {
                return Err(location_required());
            }
            let name = id.name().to_owned();
            hds_keyvault::service::validate_vault_name(&name)
                .map_err(|error| bad_request("VaultNameNotValid", error.to_string()))?;
            let existing = self.existing_vault(&name).await?;
            if let Some(existing) = &existing
                && !existing.resource_id.eq_ignore_ascii_case(id.as_str())
            {
                return Err(ArmError::new(
                    StatusCode::CONFLICT,
                    "VaultAlreadyExists",
                    format!(
                        "The vault name '{name}' is already in use. Vault names are global; choose another name."
                    ),
                ));
            }
            let stored = context.store.get(&id).await?;
            let sku = match field(&request.properties, "sku") {
                Some(sku) => parse_sku(sku)?,
                None => match stored
                    .as_ref()
                    .and_then(|stored| field(&stored.properties, "sku").cloned())
                {
                    Some(sku) => sku,
                    None => {
                        return Err(bad_request(
                            "InvalidSku",
                            "'properties.sku' is required: {\"family\": \"A\", \"name\": \"standard\"}.",
                        ));
                    }
                },
            };
            let properties = parse_vault_properties(
                &request.properties,
                existing.as_ref().map(|vault| &vault.properties),
            )?;
            self.authorize_permission_change(
                &context,
                &id,
                existing.as_ref().map(|vault| &vault.properties),
                &properties,
            )
            .await?;
            let (vault, _) = self
                .service
                .create_or_update_vault(id.as_str(), &name, properties)
                .await
                .map_err(from_vault)?;
            let mut kept = request.properties.as_object().cloned().unwrap_or_default();
            for modelled in MODELLED_VAULT_PROPERTIES {
                remove_field(&mut kept, modelled);
            }
            kept.insert("sku".into(), sku);
            let request = PutRequest {
                properties: Value::Object(kept),
                ..request
            };
            context.store.put_succeeded(&id, &request).await?;
            if let Some(events) = &self.events {
                events.vault_changed(&vault);
            }
            let value = self.get(context, id).await?;
            Ok(ProviderResponse::Completed(value))
        })
    }

    fn get(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, Value> {
        Box::pin(async move {
            let Some(resource) = context.store.get(&id).await? else {
                return Err(ArmError::resource_not_found(&id));
            };
            let Some(vault) = self.existing_vault(id.name()).await? else {
                return Err(ArmError::resource_not_found(&id));
            };
            let mut value = resource.to_json();
            if let Some(Value::Object(properties)) = value.get_mut("properties") {
                render_vault_properties(&vault, properties);
            }
            Ok(value)
        })
    }

    /// Deletes the vault and its keys. A purge-protected vault that still holds keys (live or
    /// soft-deleted) is refused: deleting it would destroy keys purge protection promises to
    /// keep.
    fn delete(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            if let Some(vault) = self.existing_vault(id.name()).await? {
                if vault.properties.enable_purge_protection {
                    let live = self
                        .service
                        .list_keys(&vault, 1, None)
                        .await
                        .map_err(from_vault)?;
                    let deleted = self
                        .service
                        .list_deleted_keys(&vault, 1, None)
                        .await
                        .map_err(from_vault)?;
                    if !live.items.is_empty() || !deleted.items.is_empty() {
                        return Err(ArmError::new(
                            StatusCode::CONFLICT,
                            "VaultPurgeProtected",
                            format!(
                                "The vault '{}' has purge protection and still holds keys (live or soft-deleted); it cannot be deleted until its deleted keys reach their scheduled purge date ({} days after deletion).",
                                vault.name, vault.properties.soft_delete_retention_in_days
                            ),
                        ));
                    }
                }
                self.service
                    .delete_vault(&vault.name)
                    .await
                    .map_err(from_vault)?;
                if let Some(events) = &self.events {
                    events.vault_deleted(&vault.name);
                }
            }
            if context.store.delete(&id).await? {
                Ok(ProviderResponse::Completed(Value::Null))
            } else {
                Ok(ProviderResponse::NoContent)
            }
        })
    }

    /// The vault service records the resource id: keep it current.
    fn on_moved(
        &self,
        _context: RequestContext,
        _old_id: ResourceId,
        new_id: ResourceId,
    ) -> ArmFuture<'_, ()> {
        Box::pin(async move {
            if let Some(vault) = self.existing_vault(new_id.name()).await? {
                self.service
                    .create_or_update_vault(new_id.as_str(), &vault.name, vault.properties)
                    .await
                    .map_err(from_vault)?;
            }
            Ok(())
        })
    }
}

/// The key provider (ARM's create-if-absent semantics), plus the `rotate` action that adds a
/// version (see [`crate::key_versions`]).
pub struct KeyProvider {
    service: Arc<KeyVaultService>,
    identity: Identity,
}

impl std::fmt::Debug for KeyProvider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KeyProvider")
            .finish_non_exhaustive()
    }
}

impl KeyProvider {
    /// Keys kept by `service`; `identity` decides the data-plane permission `rotate` needs.
    pub fn new(service: Arc<KeyVaultService>, identity: Identity) -> KeyProvider {
        KeyProvider { service, identity }
    }

    async fn vault_of(&self, id: &ResourceId) -> Result<Vault, ArmError> {
        vault_of_key(&self.service, id).await
    }

    /// `value` (a key as [`key_json`] shows it) with `properties.rotationPolicy`, as Azure's ARM
    /// API shows a key. A key deleted meanwhile shows without one.
    async fn with_policy(
        &self,
        vault: &Vault,
        id: &ResourceId,
        mut value: Value,
    ) -> Result<Value, ArmError> {
        match self.service.get_rotation_policy(vault, id.name()).await {
            Ok(stored) => {
                value["properties"]["rotationPolicy"] = crate::rotation_policy::to_json(&stored);
            }
            Err(VaultError::KeyNotFound(_)) => {}
            Err(error) => return Err(from_vault(error)),
        }
        Ok(value)
    }
}

/// The vault of key `id` (`.../vaults/{vault}/keys/{name}`).
pub(crate) async fn vault_of_key(
    service: &KeyVaultService,
    id: &ResourceId,
) -> Result<Vault, ArmError> {
    let parent = id
        .parent()
        .ok_or_else(|| ArmError::resource_not_found(id))?;
    match service.get_vault(parent.name()).await {
        Ok(vault) => Ok(vault),
        Err(VaultError::VaultNotFound(_)) => Err(ArmError::parent_not_found(&parent)),
        Err(error) => Err(from_vault(error)),
    }
}

/// Reads a key PUT's properties into creation options.
fn parse_key_options(
    properties: &Value,
    tags: Option<&Value>,
) -> Result<CreateKeyOptions, ArmError> {
    let kty = optional_string(properties, "kty", "properties.kty")?.ok_or_else(|| {
        bad_request(
            "InvalidKeyType",
            "'properties.kty' is required: RSA or RSA-HSM.",
        )
    })?;
    let key_type = KeyType::parse(&kty.to_ascii_uppercase())
        .map_err(|error| bad_request("KeyTypeNotSupported", error.to_string()))?;
    let key_size = match field(properties, "keySize") {
        None => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|size| u32::try_from(size).ok())
                .filter(|size| [2048, 3072, 4096].contains(size))
                .ok_or_else(|| {
                    bad_request(
                        "InvalidKeySize",
                        "'properties.keySize' must be 2048, 3072 or 4096.",
                    )
                })?,
        ),
    };
    let key_ops = match field(properties, "keyOps") {
        None => None,
        Some(Value::Array(operations)) => Some(
            operations
                .iter()
                .map(|operation| {
                    KeyOperation::parse(operation.as_str().unwrap_or_default())
                        .map_err(|error| bad_request("InvalidKeyOperation", error.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(bad_request(
                "InvalidKeyOperation",
                "'properties.keyOps' must be an array of operations.",
            ));
        }
    };
    // `curveName` applies to EC keys only; ARM accepts it on RSA keys and ignores it.
    optional_string(properties, "curveName", "properties.curveName")?;
    let mut attributes = KeyAttributesInput::default();
    if let Some(given) = field(properties, "attributes") {
        attributes.enabled = optional_bool(given, "enabled", "properties.attributes.enabled")?;
        let time = |name: &str| -> Result<Option<i64>, ArmError> {
            match field(given, name) {
                None => Ok(None),
                Some(value) => value.as_i64().map(Some).ok_or_else(|| {
                    bad_request(
                        "InvalidRequestContent",
                        format!("'properties.attributes.{name}' must be Unix seconds."),
                    )
                }),
            }
        };
        attributes.not_before = time("nbf")?;
        attributes.expires = time("exp")?;
    }
    let tags: BTreeMap<String, String> = tags
        .and_then(Value::as_object)
        .map(|tags| {
            tags.iter()
                .filter_map(|(name, value)| Some((name.clone(), value.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(CreateKeyOptions {
        key_type,
        key_size,
        key_ops,
        attributes,
        tags,
    })
}

/// A key (or, under `id` `.../keys/{name}/versions/{version}`, one version) as ARM returns it.
pub(crate) fn key_json(id: &ResourceId, bundle: &KeyBundle) -> Value {
    let key = &bundle.key;
    let mut attributes = json!({
        "enabled": key.enabled,
        "created": key.created,
        "updated": key.updated,
        "recoveryLevel": bundle.recovery_level,
        "exportable": false,
    });
    if let Some(not_before) = key.not_before {
        attributes["nbf"] = json!(not_before);
    }
    if let Some(expires) = key.expires {
        attributes["exp"] = json!(expires);
    }
    let mut value = json!({
        "id": id.as_str(),
        "name": id.name(),
        "type": id.resource_type().unwrap_or_else(|| KEYS_TYPE.to_owned()),
        "properties": {
            "attributes": attributes,
            "kty": key.key_type.as_str(),
            "keyOps": key.key_ops.iter().map(|operation| operation.as_str()).collect::<Vec<_>>(),
            "keySize": key.key_size,
            "keyUri": bundle.key_uri(),
            "keyUriWithVersion": bundle.key_uri_with_version(),
            "provisioningState": "Succeeded",
        },
    });
    if !key.tags.is_empty() {
        value["tags"] = json!(key.tags);
    }
    value
}

impl ResourceProvider for KeyProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![KEYS_TYPE]
    }

    fn api_versions(&self) -> Vec<&'static str> {
        vec!["2022-07-01"]
    }

    /// Creates the key's first version when the key is absent; otherwise returns the
    /// current version unchanged (ARM never writes an existing key).
    fn put(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            let request = PutRequest::parse(&body)?;
            hds_keyvault::service::validate_key_name(id.name())
                .map_err(|error| bad_request("KeyNameNotValid", error.to_string()))?;
            let options = parse_key_options(&request.properties, request.tags.as_ref())?;
            let policy = field(&request.properties, "rotationPolicy")
                .map(crate::rotation_policy::parse)
                .transpose()?;
            let vault = self.vault_of(&id).await?;
            // A policy other than the key's current one (the default for a new key) is a write
            // on the vault: authorized before anything is created.
            let policy = match policy {
                Some(policy) => {
                    let current = match self.service.get_rotation_policy(&vault, id.name()).await {
                        Ok(stored) => stored.policy,
                        Err(VaultError::KeyNotFound(_)) => RotationPolicy::default_policy(),
                        Err(error) => return Err(from_vault(error)),
                    };
                    if crate::rotation_policy::same(&policy, &current) {
                        None
                    } else {
                        crate::key_versions::authorize_key_action(
                            &self.identity,
                            &vault,
                            &context,
                            KeyPermission::SetRotationPolicy,
                            id.name(),
                        )
                        .await?;
                        Some(policy)
                    }
                }
                None => None,
            };
            let (bundle, _) = self
                .service
                .create_key_if_absent(&vault, id.name(), options)
                .await
                .map_err(from_vault)?;
            if let Some(policy) = policy {
                self.service
                    .set_rotation_policy(&vault, id.name(), policy)
                    .await
                    .map_err(from_vault)?;
            }
            let envelope = PutRequest {
                location: None,
                identity: None,
                properties: json!({}),
                ..request
            };
            if context.store.get(&id).await?.is_none() {
                context.store.put_succeeded(&id, &envelope).await?;
            }
            let value = self
                .with_policy(&vault, &id, key_json(&id, &bundle))
                .await?;
            Ok(ProviderResponse::Completed(value))
        })
    }

    fn get(&self, _context: RequestContext, id: ResourceId) -> ArmFuture<'_, Value> {
        Box::pin(async move {
            let vault = self.vault_of(&id).await?;
            match self.service.get_key(&vault, id.name(), None).await {
                Ok(bundle) => self.with_policy(&vault, &id, key_json(&id, &bundle)).await,
                Err(VaultError::KeyNotFound(_)) => Err(ArmError::resource_not_found(&id)),
                Err(error) => Err(from_vault(error)),
            }
        })
    }

    /// Every live key of the vault, including those created through the data plane.
    fn list(
        &self,
        _context: RequestContext,
        parent: ResourceId,
        _resource_type: String,
    ) -> ArmFuture<'_, Vec<Value>> {
        Box::pin(async move {
            let vault = match self.service.get_vault(parent.name()).await {
                Ok(vault) => vault,
                Err(VaultError::VaultNotFound(_)) => {
                    return Err(ArmError::resource_not_found(&parent));
                }
                Err(error) => return Err(from_vault(error)),
            };
            let mut values = Vec::new();
            let mut continuation: Option<String> = None;
            loop {
                let page = self
                    .service
                    .list_keys(
                        &vault,
                        hds_keyvault::service::MAX_PAGE_SIZE,
                        continuation.as_deref(),
                    )
                    .await
                    .map_err(from_vault)?;
                for bundle in &page.items {
                    if let Some(id) = parent.child("keys", &bundle.key.name) {
                        values.push(self.with_policy(&vault, &id, key_json(&id, bundle)).await?);
                    }
                }
                match page.continuation {
                    Some(next) => continuation = Some(next),
                    None => break,
                }
            }
            Ok(values)
        })
    }

    /// A key cannot be updated through ARM; PATCH is a PUT, which returns it unchanged.
    fn patch(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            let current = self.get(context.clone(), id.clone()).await?;
            let mut merged = current;
            hds_arm::merge_patch(&mut merged, &body);
            self.put(context, id, merged).await
        })
    }

    /// `rotate`: a new version of the key, as the data plane's `POST /keys/{name}/rotate`.
    fn post_action(
        &self,
        context: RequestContext,
        id: ResourceId,
        action: String,
        _body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            if !action.eq_ignore_ascii_case("rotate") {
                return Err(ArmError::new(
                    StatusCode::NOT_FOUND,
                    "InvalidAction",
                    format!("The action '{action}' is not supported on keys; 'rotate' is."),
                ));
            }
            let vault = self.vault_of(&id).await?;
            crate::key_versions::authorize_key_action(
                &self.identity,
                &vault,
                &context,
                KeyPermission::Rotate,
                id.name(),
            )
            .await?;
            let bundle = self
                .service
                .rotate_key(&vault, id.name())
                .await
                .map_err(|error| match error {
                    VaultError::KeyNotFound(_) => ArmError::resource_not_found(&id),
                    other => from_vault(other),
                })?;
            let value = self
                .with_policy(&vault, &id, key_json(&id, &bundle))
                .await?;
            Ok(ProviderResponse::Completed(value))
        })
    }

    /// Soft-deletes the key in the vault (recoverable for the vault's retention period when
    /// soft delete is on), as deleting it through the data plane would.
    fn delete(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            let vault = self.vault_of(&id).await?;
            let existed = match self.service.delete_key(&vault, id.name()).await {
                Ok(_) => true,
                Err(VaultError::KeyNotFound(_)) => false,
                Err(error) => return Err(from_vault(error)),
            };
            let stored = context.store.delete(&id).await?;
            if existed || stored {
                Ok(ProviderResponse::Completed(Value::Null))
            } else {
                Ok(ProviderResponse::NoContent)
            }
        })
    }
}

/// A vault flag that can be turned on but never off again: its value in `properties`, else the
/// current one (`current`, `None` for a new vault), else `new_default`. Turning it off once on
/// is refused with `refusal` (code, message).
fn one_way_flag(
    properties: &Value,
    name: &str,
    current: Option<bool>,
    new_default: bool,
    refusal: (&'static str, &'static str),
) -> Result<bool, ArmError> {
    let value = optional_bool(properties, name, &format!("properties.{name}"))?
        .unwrap_or(current.unwrap_or(new_default));
    if current == Some(true) && !value {
        return Err(bad_request(refusal.0, refusal.1));
    }
    Ok(value)
}
