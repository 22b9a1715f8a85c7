//! `Microsoft.HealthcareApis/workspaces` and `.../workspaces/dicomservices`.
//!
//! The DICOM service provider owns the ARM side of a service: its managed identities, which
//! identity reaches its customer-managed key, and the resource as ARM shows it. The service
//! itself is the [`DicomServiceHost`]'s: every PUT and PATCH ends in [`DicomServiceHost::apply`],
//! and the resource is written only once the host accepted, so a refused update leaves the
//! service as it was.

use std::sync::Arc;

use hds_arm::{
    ArmError, ArmFuture, ProviderResponse, PutRequest, RequestContext, ResourceId, ResourceProvider,
};
use hds_db::Database;
use hds_identity::principals::{ManagedIdentity, ManagedIdentityKind};
use hds_identity::roles::KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER;
use hds_identity::{DICOM_AUDIENCE, Identity};
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::errors::{bad_request, from_identity, location_required};
use crate::host::{
    CorsConfiguration, DicomServiceHost, DicomServiceSpec, KeyBinding, KeyIdentityKind,
};
use crate::json::{field, optional_string, remove_field};
use crate::managed_identity::USER_ASSIGNED_IDENTITIES_TYPE;
use crate::workspace_names::{Claim, WorkspaceNames};

/// The workspace type.
pub const WORKSPACES_TYPE: &str = "Microsoft.HealthcareApis/workspaces";
/// The DICOM service type.
pub const DICOM_SERVICES_TYPE: &str = "Microsoft.HealthcareApis/workspaces/dicomservices";
/// The oldest api-version modelled.
pub const OLDEST_API_VERSION: &str = "2022-05-15";
/// The newest api-version modelled.
pub const NEWEST_API_VERSION: &str = "2024-03-31";

/// The action that attaching a user-assigned identity to a resource needs on the identity.
pub const ASSIGN_USER_ASSIGNED_IDENTITY: &str =
    "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action";

/// Properties computed by the provider; whatever a client sends for them is replaced.
const READ_ONLY_PROPERTIES: &[&str] = &[
    "provisioningState",
    "serviceUrl",
    "authenticationConfiguration",
    "privateEndpointConnections",
    "eventState",
];

/// Refuses api-versions outside the modelled range (the shapes differ before it and are
/// unknown after it).
fn check_api_version(api_version: &str, resource_type: &str) -> Result<(), ArmError> {
    let date = api_version.get(..10).unwrap_or(api_version);
    if (OLDEST_API_VERSION..=NEWEST_API_VERSION).contains(&date) {
        Ok(())
    } else {
        Err(bad_request(
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for API version '{}' and type '{resource_type}'. The supported api-versions are {OLDEST_API_VERSION} through {NEWEST_API_VERSION} (including previews in between, such as 2023-06-01-preview).",
                api_version.chars().take(32).collect::<String>()
            ),
        ))
    }
}

/// Workspace names: 3-24 letters and digits.
fn check_workspace_name(name: &str) -> Result<(), ArmError> {
    if (3..=24).contains(&name.len()) && name.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(bad_request(
            "InvalidWorkspaceName",
            "A workspace name must be 3 to 24 letters and digits.",
        ))
    }
}

/// DICOM service names: 3-24 letters, digits and hyphens, starting and ending with a letter
/// or digit (the name is a path segment of the service URL).
fn check_service_name(name: &str) -> Result<(), ArmError> {
    let bytes = name.as_bytes();
    let valid = (3..=24).contains(&bytes.len())
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if valid {
        Ok(())
    } else {
        Err(bad_request(
            "InvalidDicomServiceName",
            "A DICOM service name must be 3 to 24 letters, digits and hyphens, starting and ending with a letter or digit.",
        ))
    }
}

/// Checks `publicNetworkAccess` and fills Azure's default.
fn normalize_public_network_access(properties: &mut Map<String, Value>) -> Result<(), ArmError> {
    let given = optional_string(
        &Value::Object(properties.clone()),
        "publicNetworkAccess",
        "properties.publicNetworkAccess",
    )?;
    let value = match given.as_deref() {
        None => "Enabled",
        Some(text) if text.eq_ignore_ascii_case("Enabled") => "Enabled",
        Some(text) if text.eq_ignore_ascii_case("Disabled") => "Disabled",
        Some(_) => {
            return Err(bad_request(
                "InvalidPublicNetworkAccess",
                "'properties.publicNetworkAccess' must be 'Enabled' or 'Disabled'.",
            ));
        }
    };
    remove_field(properties, "publicNetworkAccess");
    properties.insert("publicNetworkAccess".into(), json!(value));
    Ok(())
}

/// The workspace provider. A workspace's name is unique across the whole hds (see
/// [`WorkspaceNames`]): a PUT of a name another workspace holds answers 409.
#[derive(Debug)]
pub struct WorkspaceProvider {
    names: WorkspaceNames,
}

impl WorkspaceProvider {
    /// Workspaces whose names are claimed in `database`.
    pub fn new(database: Database) -> WorkspaceProvider {
        WorkspaceProvider {
            names: WorkspaceNames::new(database),
        }
    }
}

impl ResourceProvider for WorkspaceProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![WORKSPACES_TYPE]
    }

    fn api_versions(&self) -> Vec<&'static str> {
        vec![NEWEST_API_VERSION, OLDEST_API_VERSION]
    }

    fn put(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            check_api_version(&context.api_version, WORKSPACES_TYPE)?;
            check_workspace_name(id.name())?;
            let request = PutRequest::parse(&body)?;
            if request.location.is_none() {
                return Err(location_required());
            }
            let mut properties = request.properties.as_object().cloned().unwrap_or_default();
            for read_only in READ_ONLY_PROPERTIES {
                remove_field(&mut properties, read_only);
            }
            normalize_public_network_access(&mut properties)?;
            let request = PutRequest {
                properties: Value::Object(properties),
                ..request
            };
            let claim = self.names.claim(&id).await?;
            match context.store.put_succeeded(&id, &request).await {
                Ok(resource) => Ok(ProviderResponse::Completed(resource.to_json())),
                Err(error) => {
                    if claim == Claim::Taken {
                        self.names.release(&id).await?;
                    }
                    Err(error.into())
                }
            }
        })
    }

    /// A workspace with DICOM services is not deleted: delete the services first (deleting
    /// the resource group does that, innermost first).
    fn delete(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            let services = context
                .store
                .list_children(&id, DICOM_SERVICES_TYPE)
                .await?;
            if !services.is_empty() {
                return Err(ArmError::new(
                    StatusCode::CONFLICT,
                    "WorkspaceHasChildResources",
                    format!(
                        "The workspace '{}' still has {} DICOM service(s); delete them first.",
                        id.name(),
                        services.len()
                    ),
                ));
            }
            let existed = context.store.delete(&id).await?;
            self.names.release(&id).await?;
            if existed {
                Ok(ProviderResponse::Completed(Value::Null))
            } else {
                Ok(ProviderResponse::NoContent)
            }
        })
    }

    /// The name's claim follows the workspace to its new group or subscription.
    fn on_moved(
        &self,
        _context: RequestContext,
        old_id: ResourceId,
        new_id: ResourceId,
    ) -> ArmFuture<'_, ()> {
        Box::pin(async move { self.names.moved(&old_id, &new_id).await })
    }
}

/// The `identity` block of a request.
#[derive(Debug, Default)]
struct IdentityRequest {
    /// Whether the block was there at all (`{"type": "None"}` shows as such).
    declared: bool,
    system: bool,
    /// User-assigned identity ids, as given, without duplicates.
    user: Vec<ResourceId>,
}

fn invalid_identity(message: impl Into<String>) -> ArmError {
    bad_request("InvalidIdentityType", message)
}

/// The refusal when a request turns on a system-assigned identity and, in the same request,
/// asks it to reach the key: the identity's principal is created by that request, so nobody can
/// have granted it a role on the vault yet, and naming its principal id would name one that the
/// refusal has deleted again. The seed's order is what works: enable the identity first (or use
/// a user-assigned identity), grant the role, then set the key in an update.
fn system_identity_cannot_hold_the_role_yet(new_service: bool) -> ArmError {
    let enable_first = if new_service {
        "Create the DICOM service first with 'identity.type' SystemAssigned and without keyEncryptionKeyUrl"
    } else {
        "Update the DICOM service first to enable its system-assigned identity, without changing the key"
    };
    bad_request(
        "KeyAccessDenied",
        format!(
            "A system-assigned managed identity is created with this request, so it cannot have been granted access to the key yet; nothing was changed. {enable_first}, assign its principal (shown in 'identity.principalId') the Key Vault Crypto Service Encryption User role ({KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER}) on the key vault, then update the service with 'properties.encryption.customerManagedKeyEncryption.keyEncryptionKeyUrl'. Or use a user-assigned managed identity that already holds the role."
        ),
    )
}

/// Reads `identity`: `type` None, SystemAssigned, UserAssigned or "SystemAssigned,UserAssigned"
/// in any case and spacing, and `userAssignedIdentities` (ids as keys; `null` values are
/// removals left by a PATCH).
fn parse_identity(identity: Option<&Value>) -> Result<IdentityRequest, ArmError> {
    let Some(identity) = identity else {
        return Ok(IdentityRequest::default());
    };
    let type_text = optional_string(identity, "type", "identity.type")?.unwrap_or_default();
    let mut request = IdentityRequest {
        declared: true,
        ..IdentityRequest::default()
    };
    let mut user = false;
    let mut none = false;
    for part in type_text.split(',').map(str::trim) {
        if part.eq_ignore_ascii_case("SystemAssigned") {
            request.system = true;
        } else if part.eq_ignore_ascii_case("UserAssigned") {
            user = true;
        } else if part.eq_ignore_ascii_case("None") {
            none = true;
        } else {
            return Err(invalid_identity(
                "'identity.type' must be None, SystemAssigned, UserAssigned or 'SystemAssigned,UserAssigned'.",
            ));
        }
    }
    if none && (user || request.system) {
        return Err(invalid_identity(
            "'identity.type' None cannot be combined with another type.",
        ));
    }
    let mut ids: Vec<ResourceId> = Vec::new();
    if let Some(map) = field(identity, "userAssignedIdentities") {
        let Some(map) = map.as_object() else {
            return Err(invalid_identity(
                "'identity.userAssignedIdentities' must be an object keyed by identity resource ids.",
            ));
        };
        for (text, value) in map {
            if value.is_null() {
                continue;
            }
            let parsed = ResourceId::parse(text)
                .ok()
                .filter(|parsed| {
                    parsed
                        .resource_type()
                        .is_some_and(|kind| kind.eq_ignore_ascii_case(USER_ASSIGNED_IDENTITIES_TYPE))
                })
                .ok_or_else(|| {
                    bad_request(
                        "InvalidUserAssignedIdentity",
                        format!(
                            "'{}' in identity.userAssignedIdentities is not a {USER_ASSIGNED_IDENTITIES_TYPE} resource id.",
                            text.chars().take(300).collect::<String>()
                        ),
                    )
                })?;
            if !ids.contains(&parsed) {
                ids.push(parsed);
            }
        }
    }
    if user && ids.is_empty() {
        return Err(bad_request(
            "UserAssignedIdentitiesRequired",
            "'identity.type' includes UserAssigned, so 'identity.userAssignedIdentities' must name at least one identity.",
        ));
    }
    if !user && !ids.is_empty() {
        return Err(bad_request(
            "UserAssignedIdentitiesNotAllowed",
            "'identity.userAssignedIdentities' is only allowed when 'identity.type' includes UserAssigned.",
        ));
    }
    request.user = ids;
    Ok(request)
}

/// The `keyEncryptionKeyIdentity` extension: which identity reaches the key when that is
/// not obvious.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ExplicitKeyIdentity {
    SystemAssigned,
    UserAssigned(Option<ResourceId>),
}

fn parse_explicit_key_identity(value: &Value) -> Result<ExplicitKeyIdentity, ArmError> {
    const PATH: &str =
        "properties.encryption.customerManagedKeyEncryption.keyEncryptionKeyIdentity";
    let identity_type = optional_string(value, "identityType", &format!("{PATH}.identityType"))?
        .unwrap_or_default();
    if identity_type.eq_ignore_ascii_case("SystemAssigned") {
        return Ok(ExplicitKeyIdentity::SystemAssigned);
    }
    if !identity_type.eq_ignore_ascii_case("UserAssigned") {
        return Err(bad_request(
            "InvalidKeyEncryptionKeyIdentity",
            format!("'{PATH}.identityType' must be SystemAssigned or UserAssigned."),
        ));
    }
    let resource_id = optional_string(
        value,
        "userAssignedIdentityResourceId",
        &format!("{PATH}.userAssignedIdentityResourceId"),
    )?;
    match resource_id {
        None => Ok(ExplicitKeyIdentity::UserAssigned(None)),
        Some(text) => ResourceId::parse(&text)
            .map(|id| ExplicitKeyIdentity::UserAssigned(Some(id)))
            .map_err(|_| {
                bad_request(
                    "InvalidKeyEncryptionKeyIdentity",
                    format!("'{PATH}.userAssignedIdentityResourceId' must be a resource id."),
                )
            }),
    }
}

/// Which identity reaches the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChosenIdentity {
    System,
    /// An index into the attached user-assigned identities.
    User(usize),
}

/// The identity-selection rule: an explicit `keyEncryptionKeyIdentity` wins (and must name
/// an attached identity); otherwise the single attached user-assigned identity, otherwise the
/// system-assigned one. Several user-assigned identities without the extension are ambiguous.
fn choose_key_identity(
    system: bool,
    users: &[ResourceId],
    explicit: Option<&ExplicitKeyIdentity>,
) -> Result<ChosenIdentity, ArmError> {
    match explicit {
        Some(ExplicitKeyIdentity::SystemAssigned) => {
            if system {
                Ok(ChosenIdentity::System)
            } else {
                Err(bad_request(
                    "KeyEncryptionKeyIdentityNotEnabled",
                    "keyEncryptionKeyIdentity names the system-assigned identity, but 'identity.type' does not include SystemAssigned.",
                ))
            }
        }
        Some(ExplicitKeyIdentity::UserAssigned(Some(wanted))) => users
            .iter()
            .position(|attached| attached == wanted)
            .map(ChosenIdentity::User)
            .ok_or_else(|| {
                bad_request(
                    "KeyEncryptionKeyIdentityNotAttached",
                    format!(
                        "keyEncryptionKeyIdentity.userAssignedIdentityResourceId '{wanted}' is not one of the service's identity.userAssignedIdentities."
                    ),
                )
            }),
        Some(ExplicitKeyIdentity::UserAssigned(None)) => match users.len() {
            1 => Ok(ChosenIdentity::User(0)),
            0 => Err(bad_request(
                "KeyEncryptionKeyIdentityNotAttached",
                "keyEncryptionKeyIdentity asks for a user-assigned identity, but none is attached.",
            )),
            _ => Err(ambiguous_identities()),
        },
        None => match (users.len(), system) {
            (1, _) => Ok(ChosenIdentity::User(0)),
            (0, true) => Ok(ChosenIdentity::System),
            (0, false) => Err(bad_request(
                "ManagedIdentityRequired",
                "A customer-managed key is reached through a managed identity: set 'identity.type' to SystemAssigned or UserAssigned (with 'identity.userAssignedIdentities') and grant that identity the Key Vault Crypto Service Encryption User role on the vault.",
            )),
            _ => Err(ambiguous_identities()),
        },
    }
}

fn ambiguous_identities() -> ArmError {
    bad_request(
        "KeyEncryptionKeyIdentityRequired",
        "Several user-assigned identities are attached, so the one that reaches the key must be named: set properties.encryption.customerManagedKeyEncryption.keyEncryptionKeyIdentity to {\"identityType\": \"UserAssigned\", \"userAssignedIdentityResourceId\": \"<id>\"} (or {\"identityType\": \"SystemAssigned\"}).",
    )
}

/// The `identity` block as ARM returns it.
fn identity_json(
    declared: bool,
    system: Option<&ManagedIdentity>,
    users: &[(ResourceId, ManagedIdentity)],
) -> Option<Value> {
    let type_text = match (system.is_some(), !users.is_empty()) {
        (true, true) => "SystemAssigned,UserAssigned",
        (true, false) => "SystemAssigned",
        (false, true) => "UserAssigned",
        (false, false) => {
            return declared.then(|| json!({ "type": "None" }));
        }
    };
    let mut value = json!({ "type": type_text });
    if let Some(system) = system {
        value["principalId"] = json!(system.principal_id);
        value["tenantId"] = json!(system.tenant_id);
    }
    if !users.is_empty() {
        let map: Map<String, Value> = users
            .iter()
            .map(|(id, identity)| {
                (
                    id.as_str().to_owned(),
                    json!({ "principalId": identity.principal_id, "clientId": identity.client_id }),
                )
            })
            .collect();
        value["userAssignedIdentities"] = Value::Object(map);
    }
    Some(value)
}

/// The key URL and identity extension of `properties.encryption.customerManagedKeyEncryption`.
fn parse_encryption(
    properties: &Value,
) -> Result<(Option<String>, Option<ExplicitKeyIdentity>), ArmError> {
    let Some(cmk) = field(properties, "encryption")
        .and_then(|encryption| field(encryption, "customerManagedKeyEncryption"))
    else {
        return Ok((None, None));
    };
    let key_url = optional_string(
        cmk,
        "keyEncryptionKeyUrl",
        "properties.encryption.customerManagedKeyEncryption.keyEncryptionKeyUrl",
    )?
    .map(|url| url.trim().to_owned())
    .filter(|url| !url.is_empty());
    let explicit = field(cmk, "keyEncryptionKeyIdentity")
        .map(parse_explicit_key_identity)
        .transpose()?;
    Ok((key_url, explicit))
}

/// The key URL a stored DICOM service resource carries, if any.
pub(crate) fn stored_key_url(properties: &Value) -> Option<String> {
    parse_encryption(properties).ok().and_then(|(url, _)| url)
}

/// What a stored DICOM service resource says it should be, for serving it again at start-up
/// without re-validating its key: the same identity-selection rule as a PUT, applied to the
/// identities the resource recorded. `None` for a resource that is not a DICOM service.
pub fn stored_spec(
    resource: &hds_arm::Resource,
    tenant_id: &str,
    public_base_url: &str,
) -> Option<DicomServiceSpec> {
    let id = &resource.id;
    if !id
        .resource_type()
        .is_some_and(|resource_type| resource_type.eq_ignore_ascii_case(DICOM_SERVICES_TYPE))
    {
        return None;
    }
    let identity = resource.identity.as_ref();
    let request = parse_identity(identity).ok()?;
    let (key_url, explicit) = parse_encryption(&resource.properties).ok()?;
    let recorded_user = |user: &ResourceId| -> Option<(String, String)> {
        let users = identity
            .and_then(|identity| field(identity, "userAssignedIdentities"))?
            .as_object()?;
        let (_, entry) = users
            .iter()
            .find(|(key, _)| ResourceId::parse(key).is_ok_and(|key| &key == user))?;
        Some((
            entry.get("principalId")?.as_str()?.to_owned(),
            entry
                .get("clientId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ))
    };
    let key = match key_url {
        None => None,
        Some(key_url) => {
            match choose_key_identity(request.system, &request.user, explicit.as_ref()).ok()? {
                ChosenIdentity::System => Some(KeyBinding {
                    key_url,
                    principal_id: identity
                        .and_then(|identity| identity.get("principalId"))?
                        .as_str()?
                        .to_owned(),
                    client_id: String::new(),
                    identity_kind: KeyIdentityKind::SystemAssigned,
                }),
                ChosenIdentity::User(index) => {
                    let user = request.user.get(index)?;
                    let (principal_id, client_id) = recorded_user(user)?;
                    Some(KeyBinding {
                        key_url,
                        principal_id,
                        client_id,
                        identity_kind: KeyIdentityKind::UserAssigned {
                            resource_id: user.as_str().to_owned(),
                        },
                    })
                }
            }
        }
    };
    let workspace = id
        .parent()
        .map(|parent| parent.name().to_owned())
        .unwrap_or_default();
    Some(DicomServiceSpec {
        resource_id: id.as_str().to_owned(),
        service_url: format!(
            "{}/dicom/{workspace}/{}",
            public_base_url.trim_end_matches('/'),
            id.name()
        ),
        workspace,
        service: id.name().to_owned(),
        tenant_id: tenant_id.to_owned(),
        key,
        cors: parse_cors(&resource.properties).unwrap_or_default(),
        data_partitions: parse_data_partitions(&resource.properties)
            .ok()
            .flatten()
            .unwrap_or(false),
    })
}

/// Reads `properties.enableDataPartitions`: `None` when absent or null.
fn parse_data_partitions(properties: &Value) -> Result<Option<bool>, ArmError> {
    match field(properties, "enableDataPartitions") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(enabled)) => Ok(Some(*enabled)),
        Some(_) => Err(bad_request(
            "InvalidDataPartitionsSetting",
            "'properties.enableDataPartitions' must be true or false.",
        )),
    }
}

/// Whether a service has data partitions: set when it is created, never changed afterwards
/// (Azure: "data partitions can't be turned on for any DICOM service that is already
/// deployed", and once on they cannot be turned off). A request that leaves the property out
/// keeps what the service has, so a template deployed again unchanged still applies.
fn decide_data_partitions(stored: Option<bool>, requested: Option<bool>) -> Result<bool, ArmError> {
    match (stored, requested) {
        (None, requested) => Ok(requested.unwrap_or(false)),
        (Some(stored), None) => Ok(stored),
        (Some(stored), Some(requested)) if stored == requested => Ok(stored),
        (Some(true), Some(_)) => Err(bad_request(
            "DataPartitionsCannotBeChanged",
            "Data partitions cannot be disabled once enabled: 'properties.enableDataPartitions' is set when the DICOM service is created and cannot be changed.",
        )),
        (Some(false), Some(_)) => Err(bad_request(
            "DataPartitionsCannotBeChanged",
            "Data partitions can be enabled only when the DICOM service is created: 'properties.enableDataPartitions' cannot be changed on an existing service. Create a new DICOM service with it set to true.",
        )),
    }
}

/// The most entries in each list of `corsConfiguration`.
const MAX_CORS_ENTRIES: usize = 64;
/// The longest origin or header name.
const MAX_CORS_ENTRY_CHARS: usize = 256;
/// Azure's bound on `maxAge`.
const MAX_CORS_MAX_AGE: u64 = 99_999;
const CORS_METHODS: [&str; 7] = ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"];

/// Reads and checks `properties.corsConfiguration` (absent or null: no cross-origin access).
fn parse_cors(properties: &Value) -> Result<CorsConfiguration, ArmError> {
    const PATH: &str = "properties.corsConfiguration";
    let Some(cors) = field(properties, "corsConfiguration").filter(|value| !value.is_null()) else {
        return Ok(CorsConfiguration::default());
    };
    if !cors.is_object() {
        return Err(bad_request(
            "InvalidCorsConfiguration",
            format!("'{PATH}' must be an object."),
        ));
    }
    let list = |name: &str| -> Result<Vec<String>, ArmError> {
        let Some(value) = field(cors, name).filter(|value| !value.is_null()) else {
            return Ok(Vec::new());
        };
        let entries = value.as_array().ok_or_else(|| {
            bad_request(
                "InvalidCorsConfiguration",
                format!("'{PATH}.{name}' must be an array of strings."),
            )
        })?;
        if entries.len() > MAX_CORS_ENTRIES {
            return Err(bad_request(
                "InvalidCorsConfiguration",
                format!("'{PATH}.{name}' holds at most {MAX_CORS_ENTRIES} entries."),
            ));
        }
        entries
            .iter()
            .map(|entry| {
                entry
                    .as_str()
                    .map(str::trim)
                    .filter(|text| !text.is_empty() && text.len() <= MAX_CORS_ENTRY_CHARS)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        bad_request(
                            "InvalidCorsConfiguration",
                            format!("'{PATH}.{name}' entries are non-empty strings of at most {MAX_CORS_ENTRY_CHARS} characters."),
                        )
                    })
            })
            .collect()
    };
    let origins = list("origins")?
        .into_iter()
        .map(|origin| {
            if origin == "*" || is_web_origin(&origin) {
                Ok(origin.to_ascii_lowercase())
            } else {
                Err(bad_request(
                    "InvalidCorsConfiguration",
                    format!("'{PATH}.origins': '{}' is not an origin: give 'https://host[:port]' (no path) or '*'.", hds_arm::printable(&origin)),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let headers = list("headers")?;
    if let Some(header) = headers.iter().find(|header| {
        *header != "*"
            && !header
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    }) {
        return Err(bad_request(
            "InvalidCorsConfiguration",
            format!(
                "'{PATH}.headers': '{}' is not a header name (letters, digits, '-') or '*'.",
                hds_arm::printable(header)
            ),
        ));
    }
    let methods = list("methods")?
        .into_iter()
        .map(|method| {
            let upper = method.to_ascii_uppercase();
            if upper == "*" || CORS_METHODS.contains(&upper.as_str()) {
                Ok(upper)
            } else {
                Err(bad_request(
                    "InvalidCorsConfiguration",
                    format!(
                        "'{PATH}.methods': '{}' is not one of {} or '*'.",
                        hds_arm::printable(&method),
                        CORS_METHODS.join(", ")
                    ),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_age = match field(cors, "maxAge").filter(|value| !value.is_null()) {
        None => None,
        Some(value) => Some(
            value
                .as_u64()
                .filter(|age| *age <= MAX_CORS_MAX_AGE)
                .and_then(|age| u32::try_from(age).ok())
                .ok_or_else(|| {
                    bad_request(
                        "InvalidCorsConfiguration",
                        format!("'{PATH}.maxAge' must be a whole number of seconds from 0 to {MAX_CORS_MAX_AGE}."),
                    )
                })?,
        ),
    };
    let allow_credentials = match field(cors, "allowCredentials").filter(|value| !value.is_null()) {
        None => false,
        Some(value) => value.as_bool().ok_or_else(|| {
            bad_request(
                "InvalidCorsConfiguration",
                format!("'{PATH}.allowCredentials' must be true or false."),
            )
        })?,
    };
    if allow_credentials && origins.iter().any(|origin| origin == "*") {
        return Err(bad_request(
            "InvalidCorsConfiguration",
            format!(
                "'{PATH}': allowCredentials cannot be true with the origin '*'; name the origins."
            ),
        ));
    }
    Ok(CorsConfiguration {
        origins,
        headers,
        methods,
        max_age,
        allow_credentials,
    })
}

/// `scheme://host[:port]` with an http(s) scheme, a host of letters, digits, dots and hyphens
/// (or a bracketed IPv6 address) and nothing after it: what a browser sends as `Origin`.
fn is_web_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return false;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !rest.ends_with(']') => (host, Some(port)),
        _ => (rest, None),
    };
    let host_ok = if let Some(inner) = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
    {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            })
    };
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok_and(|port| port > 0));
    host_ok && port_ok
}

/// The DICOM service provider.
pub struct DicomServiceProvider {
    identity: Identity,
    host: Arc<dyn DicomServiceHost>,
    public_base_url: String,
    /// Where event subscriptions are recorded: `eventState` is read from it.
    events: Option<hds_events::EventStore>,
}

impl std::fmt::Debug for DicomServiceProvider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DicomServiceProvider")
            .field("public_base_url", &self.public_base_url)
            .finish_non_exhaustive()
    }
}

impl DicomServiceProvider {
    /// Services run by `host`, with identities in `identity`, served under
    /// `public_base_url` (e.g. `https://127.0.0.1:8080`).
    pub fn new(
        identity: Identity,
        host: Arc<dyn DicomServiceHost>,
        public_base_url: &str,
    ) -> DicomServiceProvider {
        DicomServiceProvider {
            identity,
            host,
            public_base_url: public_base_url.trim_end_matches('/').to_owned(),
            events: None,
        }
    }

    /// The same provider, showing `eventState: Enabled` for the services of workspaces that
    /// an event subscription in `events` delivers from.
    pub fn with_events(mut self, events: Option<hds_events::EventStore>) -> DicomServiceProvider {
        self.events = events;
        self
    }

    fn service_url(&self, id: &ResourceId) -> String {
        let workspace = id
            .parent()
            .map(|parent| parent.name().to_owned())
            .unwrap_or_default();
        format!("{}/dicom/{workspace}/{}", self.public_base_url, id.name())
    }

    /// Attaching a user-assigned identity lets the service act as it (its tokens reach the
    /// identity's keys), so, as in Azure, the caller needs
    /// [`ASSIGN_USER_ASSIGNED_IDENTITY`] on each identity it attaches, beyond write on the
    /// service: 403 `LinkedAuthorizationFailed` otherwise. Identities the service has already
    /// were checked when they were attached. Checked before the identities are looked up, so a
    /// caller learns nothing of identities it has no rights on.
    async fn authorize_attaching(
        &self,
        context: &RequestContext,
        requested: &[ResourceId],
        attached: &[ResourceId],
    ) -> Result<(), ArmError> {
        let principal_id = &context.caller.principal_id;
        for id in requested.iter().filter(|id| !attached.contains(id)) {
            let decision = self
                .identity
                .authorize(
                    principal_id,
                    ASSIGN_USER_ASSIGNED_IDENTITY,
                    id.as_str(),
                    false,
                )
                .await
                .map_err(from_identity)?;
            if !decision.is_allowed() {
                return Err(ArmError::linked_authorization_failed(
                    principal_id,
                    ASSIGN_USER_ASSIGNED_IDENTITY,
                    id.as_str(),
                ));
            }
        }
        Ok(())
    }

    /// Each attached user-assigned identity's principal; a missing one is a 400.
    async fn resolve_user_identities(
        &self,
        context: &RequestContext,
        ids: &[ResourceId],
    ) -> Result<Vec<(ResourceId, ManagedIdentity)>, ArmError> {
        let mut resolved = Vec::new();
        for id in ids {
            let exists = context.store.get(id).await?.is_some();
            let principal = if exists {
                self.identity
                    .managed_identity(ManagedIdentityKind::UserAssigned, id.as_str())
                    .await
                    .map_err(from_identity)?
            } else {
                None
            };
            let Some(principal) = principal else {
                return Err(bad_request(
                    "UserAssignedIdentityNotFound",
                    format!(
                        "The user-assigned identity '{id}' in identity.userAssignedIdentities does not exist. Create it (PUT {USER_ASSIGNED_IDENTITIES_TYPE}) first."
                    ),
                ));
            };
            resolved.push((id.clone(), principal));
        }
        Ok(resolved)
    }

    async fn put_service(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> Result<Value, ArmError> {
        check_api_version(&context.api_version, DICOM_SERVICES_TYPE)?;
        check_service_name(id.name())?;
        let request = PutRequest::parse(&body)?;
        if request.location.is_none() {
            return Err(location_required());
        }
        let previous = context.store.get(&id).await?;
        // A PUT that leaves `identity` out keeps the identities the service has: dropping a
        // system-assigned identity by omission would cost its principal and key access.
        let identity_block = request.identity.clone().or_else(|| {
            previous
                .as_ref()
                .and_then(|previous| previous.identity.clone())
        });
        let identity_request = parse_identity(identity_block.as_ref())?;
        let attached = previous
            .as_ref()
            .and_then(|previous| parse_identity(previous.identity.as_ref()).ok())
            .map(|previous| previous.user)
            .unwrap_or_default();
        self.authorize_attaching(&context, &identity_request.user, &attached)
            .await?;
        let users = self
            .resolve_user_identities(&context, &identity_request.user)
            .await?;
        let (key_url, explicit) = parse_encryption(&request.properties)?;
        let cors = parse_cors(&request.properties)?;
        let data_partitions = decide_data_partitions(
            previous.as_ref().map(|previous| {
                parse_data_partitions(&previous.properties)
                    .ok()
                    .flatten()
                    .unwrap_or(false)
            }),
            parse_data_partitions(&request.properties)?,
        )?;
        let chosen = match &key_url {
            Some(_) => Some(choose_key_identity(
                identity_request.system,
                &identity_request.user,
                explicit.as_ref(),
            )?),
            None => None,
        };
        if key_url.is_none()
            && previous
                .as_ref()
                .is_some_and(|previous| stored_key_url(&previous.properties).is_some())
        {
            return Err(bad_request(
                "CustomerManagedKeyCannotBeRemoved",
                "The service's data is encrypted under a customer-managed key, which cannot be removed. Keep 'properties.encryption.customerManagedKeyEncryption.keyEncryptionKeyUrl' (it may name another key or version).",
            ));
        }
        let previous_system = self
            .identity
            .managed_identity(ManagedIdentityKind::SystemAssigned, id.as_str())
            .await
            .map_err(from_identity)?;
        let system = if identity_request.system {
            Some(
                self.identity
                    .create_managed_identity(ManagedIdentityKind::SystemAssigned, id.as_str())
                    .await
                    .map_err(from_identity)?,
            )
        } else {
            None
        };
        let created_system = system.is_some() && previous_system.is_none();
        let key = match (&key_url, chosen) {
            (Some(key_url), Some(ChosenIdentity::System)) => {
                system.as_ref().map(|system| KeyBinding {
                    key_url: key_url.clone(),
                    principal_id: system.principal_id.clone(),
                    client_id: system.client_id.clone(),
                    identity_kind: KeyIdentityKind::SystemAssigned,
                })
            }
            (Some(key_url), Some(ChosenIdentity::User(index))) => {
                users.get(index).map(|(user_id, user)| KeyBinding {
                    key_url: key_url.clone(),
                    principal_id: user.principal_id.clone(),
                    client_id: user.client_id.clone(),
                    identity_kind: KeyIdentityKind::UserAssigned {
                        resource_id: user_id.as_str().to_owned(),
                    },
                })
            }
            _ => None,
        };
        let tenant_id = self
            .identity
            .default_tenant()
            .await
            .map_err(from_identity)?;
        let service_url = self.service_url(&id);
        let spec = DicomServiceSpec {
            resource_id: id.as_str().to_owned(),
            workspace: id
                .parent()
                .map(|parent| parent.name().to_owned())
                .unwrap_or_default(),
            service: id.name().to_owned(),
            tenant_id: tenant_id.clone(),
            key,
            service_url: service_url.clone(),
            cors,
            data_partitions,
        };
        let key_needs_new_system_identity =
            created_system && key_url.is_some() && matches!(chosen, Some(ChosenIdentity::System));
        if let Err(error) = self.host.apply(spec).await {
            if created_system {
                // The identity appeared with this request; a refused request leaves none.
                self.identity
                    .delete_managed_identity(ManagedIdentityKind::SystemAssigned, id.as_str())
                    .await
                    .map_err(from_identity)?;
            }
            if key_needs_new_system_identity && error.code() == "KeyAccessDenied" {
                return Err(system_identity_cannot_hold_the_role_yet(previous.is_none()));
            }
            return Err(error);
        }
        if system.is_none() && previous_system.is_some() {
            self.identity
                .delete_managed_identity(ManagedIdentityKind::SystemAssigned, id.as_str())
                .await
                .map_err(from_identity)?;
        }
        let mut properties = request.properties.as_object().cloned().unwrap_or_default();
        for read_only in READ_ONLY_PROPERTIES {
            remove_field(&mut properties, read_only);
        }
        normalize_public_network_access(&mut properties)?;
        properties.insert("serviceUrl".into(), json!(service_url));
        properties.insert(
            "authenticationConfiguration".into(),
            json!({
                "authority": format!("{}/{tenant_id}", self.public_base_url),
                "audiences": [DICOM_AUDIENCE, service_url],
            }),
        );
        if field(&Value::Object(properties.clone()), "corsConfiguration").is_none() {
            properties.insert(
                "corsConfiguration".into(),
                json!({ "origins": [], "headers": [], "methods": [], "allowCredentials": false }),
            );
        }
        properties.insert("privateEndpointConnections".into(), json!([]));
        properties.insert("enableDataPartitions".into(), json!(data_partitions));
        let request = PutRequest {
            identity: identity_json(identity_request.declared, system.as_ref(), &users),
            properties: Value::Object(properties),
            ..request
        };
        let resource = context.store.put_succeeded(&id, &request).await?;
        crate::eventgrid::set_event_state(self.events.as_ref(), &id, resource.to_json()).await
    }
}

impl ResourceProvider for DicomServiceProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![DICOM_SERVICES_TYPE]
    }

    fn api_versions(&self) -> Vec<&'static str> {
        vec![NEWEST_API_VERSION, OLDEST_API_VERSION]
    }

    fn put(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            let value = self.put_service(context, id, body).await?;
            Ok(ProviderResponse::Completed(value))
        })
    }

    /// The stored resource, with `eventState` as the workspace's event subscriptions make it
    /// now (it is not stored: a subscription on the workspace changes it).
    fn get(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, Value> {
        Box::pin(async move {
            let resource = context
                .store
                .get(&id)
                .await?
                .ok_or_else(|| ArmError::resource_not_found(&id))?;
            crate::eventgrid::set_event_state(self.events.as_ref(), &id, resource.to_json()).await
        })
    }

    /// Deletes the service's data through the host, then its system-assigned identity.
    fn delete(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            if context.store.get(&id).await?.is_none() {
                return Ok(ProviderResponse::NoContent);
            }
            self.host.remove(id.as_str()).await?;
            self.identity
                .delete_managed_identity(ManagedIdentityKind::SystemAssigned, id.as_str())
                .await
                .map_err(from_identity)?;
            context.store.delete(&id).await?;
            Ok(ProviderResponse::Completed(Value::Null))
        })
    }

    /// A system-assigned identity belongs to the resource id: after a move the service gets a
    /// new principal (the old one is deleted), which holds no role yet, so key access is lost
    /// until the service is updated. The host re-registers the service under its new id.
    fn on_moved(
        &self,
        context: RequestContext,
        old_id: ResourceId,
        new_id: ResourceId,
    ) -> ArmFuture<'_, ()> {
        Box::pin(async move {
            let had_system = self
                .identity
                .delete_managed_identity(ManagedIdentityKind::SystemAssigned, old_id.as_str())
                .await
                .map_err(from_identity)?;
            if had_system && let Some(mut resource) = context.store.get(&new_id).await? {
                let system = self
                    .identity
                    .create_managed_identity(ManagedIdentityKind::SystemAssigned, new_id.as_str())
                    .await
                    .map_err(from_identity)?;
                if let Some(Value::Object(identity)) = resource.identity.as_mut() {
                    identity.insert("principalId".into(), json!(system.principal_id));
                    identity.insert("tenantId".into(), json!(system.tenant_id));
                }
                context.store.upsert(&resource).await?;
            }
            self.host.moved(old_id.as_str(), new_id.as_str()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uai(name: &str) -> ResourceId {
        ResourceId::parse(&format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        ))
        .expect("valid id")
    }

    #[test]
    fn data_partitions_are_set_at_creation_only() {
        assert!(!decide_data_partitions(None, None).expect("default"));
        assert!(decide_data_partitions(None, Some(true)).expect("created with"));
        assert!(decide_data_partitions(Some(true), None).expect("kept when left out"));
        assert!(decide_data_partitions(Some(true), Some(true)).expect("same"));
        for (stored, requested) in [(true, false), (false, true)] {
            let error = decide_data_partitions(Some(stored), Some(requested))
                .expect_err("a change is refused");
            assert_eq!(error.code(), "DataPartitionsCannotBeChanged");
        }
        assert_eq!(
            parse_data_partitions(&json!({"enableDataPartitions": "yes"}))
                .expect_err("not a boolean")
                .code(),
            "InvalidDataPartitionsSetting"
        );
        assert_eq!(
            parse_data_partitions(&json!({"enableDataPartitions": null})).ok(),
            Some(None)
        );
    }

    #[test]
    fn identity_selection_follows_the_rule() {
        let one = [uai("a")];
        let two = [uai("a"), uai("b")];
        assert_eq!(
            choose_key_identity(true, &[], None).ok(),
            Some(ChosenIdentity::System)
        );
        assert_eq!(
            choose_key_identity(false, &one, None).ok(),
            Some(ChosenIdentity::User(0))
        );
        assert_eq!(
            choose_key_identity(true, &one, None).ok(),
            Some(ChosenIdentity::User(0))
        );
        let ambiguous = choose_key_identity(true, &two, None).expect_err("ambiguous");
        assert_eq!(ambiguous.code(), "KeyEncryptionKeyIdentityRequired");
        let named = ExplicitKeyIdentity::UserAssigned(Some(uai("B")));
        assert_eq!(
            choose_key_identity(false, &two, Some(&named)).ok(),
            Some(ChosenIdentity::User(1))
        );
        assert_eq!(
            choose_key_identity(true, &two, Some(&ExplicitKeyIdentity::SystemAssigned)).ok(),
            Some(ChosenIdentity::System)
        );
        assert_eq!(
            choose_key_identity(false, &one, Some(&ExplicitKeyIdentity::SystemAssigned))
                .expect_err("system not enabled")
                .code(),
            "KeyEncryptionKeyIdentityNotEnabled"
        );
        assert_eq!(
            choose_key_identity(false, &[], None)
                .expect_err("no identity")
                .code(),
            "ManagedIdentityRequired"
        );
    }

    #[test]
    fn identity_types_parse_in_any_case() {
        let both = parse_identity(Some(&json!({
            "type": "systemassigned, USERASSIGNED",
            "userAssignedIdentities": { uai("a").as_str(): {} }
        })))
        .expect("valid");
        assert!(both.system);
        assert_eq!(both.user.len(), 1);
        assert!(
            parse_identity(Some(&json!({"type": "None"})))
                .expect("valid")
                .declared
        );
        assert_eq!(
            parse_identity(Some(&json!({"type": "UserAssigned"})))
                .expect_err("needs identities")
                .code(),
            "UserAssignedIdentitiesRequired"
        );
        assert_eq!(
            parse_identity(Some(&json!({"type": "Everything"})))
                .expect_err("unknown type")
                .code(),
            "InvalidIdentityType"
        );
    }

    #[test]
    fn api_versions_in_range_are_accepted() {
        for version in ["2022-05-15", "2023-06-01-preview", "2024-03-31"] {
            assert!(
                check_api_version(version, DICOM_SERVICES_TYPE).is_ok(),
                "{version}"
            );
        }
        for version in ["2021-11-01", "2024-04-01"] {
            assert!(
                check_api_version(version, DICOM_SERVICES_TYPE).is_err(),
                "{version}"
            );
        }
    }
}
