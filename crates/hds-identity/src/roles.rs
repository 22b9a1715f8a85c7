//! Built-in role definitions, with Azure's GUIDs and action strings, and action matching.
//!
//! The definitions are data, not rows: they cannot be edited, so they live in the code and a
//! role assignment names one by GUID. Their permissions are copied from Azure's published
//! built-in role definitions so that a template or script written for Azure grants the same
//! access here.

use serde::Serialize;

/// Owner: everything, including role assignments.
pub const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
/// Contributor: everything except managing access.
pub const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
/// Reader: read everything (control plane).
pub const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
/// User Access Administrator: manage role assignments.
pub const USER_ACCESS_ADMINISTRATOR: &str = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9";
/// Key Vault Administrator: all data actions on vaults.
pub const KEY_VAULT_ADMINISTRATOR: &str = "00482a5a-887f-4fb3-b363-3b7fe8e74483";
/// Key Vault Crypto Officer: all data actions on keys.
pub const KEY_VAULT_CRYPTO_OFFICER: &str = "14b46e9e-c2b7-41b4-b07b-48a6ebf60603";
/// Key Vault Crypto User: cryptographic operations with keys.
pub const KEY_VAULT_CRYPTO_USER: &str = "12338af0-0e69-4776-bea7-57ae8d297424";
/// Key Vault Crypto Service Encryption User: read keys, wrap and unwrap.
pub const KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER: &str = "e147488a-f6f5-4113-8e2d-b22465e65bf6";
/// Key Vault Reader: read vault and key metadata.
pub const KEY_VAULT_READER: &str = "21090545-7ca7-4776-b22c-e363652d74d2";
/// DICOM Data Owner: full access to DICOM data.
pub const DICOM_DATA_OWNER: &str = "58a3b984-7adf-4c20-983a-32417c86fbc8";
/// DICOM Data Reader: read and search DICOM data.
pub const DICOM_DATA_READER: &str = "e89c7a3c-2f64-4fa1-a847-3e4c9ba4283a";

/// Action strings the hds services check, so that callers do not spell them by hand.
pub mod actions {
    /// DICOMweb reads: WADO, QIDO, change feed (data action).
    pub const DICOM_READ: &str = "Microsoft.HealthcareApis/workspaces/dicomservices/resources/read";
    /// DICOMweb writes: STOW (data action).
    pub const DICOM_WRITE: &str =
        "Microsoft.HealthcareApis/workspaces/dicomservices/resources/write";
    /// DICOMweb deletes (data action).
    pub const DICOM_DELETE: &str =
        "Microsoft.HealthcareApis/workspaces/dicomservices/resources/delete";
    /// Adding, changing and deleting extended query tags (data action): Azure's DICOM service
    /// checks a data action of its own for them (`ManageExtendedQueryTags`), which DICOM Data
    /// Owner's `resources/*` grants and DICOM Data Reader's `resources/read` does not.
    pub const DICOM_MANAGE_EXTENDED_QUERY_TAGS: &str = "Microsoft.HealthcareApis/workspaces/dicomservices/resources/manageExtendedQueryTags/action";
    /// Exporting instances to a blob container (data action): Azure's DICOM service checks a
    /// data action of its own for export (`Export`), which DICOM Data Owner's `resources/*`
    /// grants and DICOM Data Reader's `resources/read` does not.
    pub const DICOM_EXPORT: &str =
        "Microsoft.HealthcareApis/workspaces/dicomservices/resources/export/action";
    /// Read a key's properties and public material (vault data action).
    pub const KEYS_READ: &str = "Microsoft.KeyVault/vaults/keys/read";
    /// Create a key (vault data action).
    pub const KEYS_CREATE: &str = "Microsoft.KeyVault/vaults/keys/create/action";
    /// Update a key's attributes (vault data action).
    pub const KEYS_UPDATE: &str = "Microsoft.KeyVault/vaults/keys/update/action";
    /// Delete a key (vault data action).
    pub const KEYS_DELETE: &str = "Microsoft.KeyVault/vaults/keys/delete";
    /// Wrap a key (vault data action).
    pub const KEYS_WRAP: &str = "Microsoft.KeyVault/vaults/keys/wrap/action";
    /// Unwrap a key (vault data action).
    pub const KEYS_UNWRAP: &str = "Microsoft.KeyVault/vaults/keys/unwrap/action";
    /// Encrypt with a key (vault data action).
    pub const KEYS_ENCRYPT: &str = "Microsoft.KeyVault/vaults/keys/encrypt/action";
    /// Decrypt with a key (vault data action).
    pub const KEYS_DECRYPT: &str = "Microsoft.KeyVault/vaults/keys/decrypt/action";
    /// Sign with a key (vault data action).
    pub const KEYS_SIGN: &str = "Microsoft.KeyVault/vaults/keys/sign/action";
    /// Verify with a key (vault data action).
    pub const KEYS_VERIFY: &str = "Microsoft.KeyVault/vaults/keys/verify/action";
    /// Create or update a role assignment (control-plane action).
    pub const ROLE_ASSIGNMENTS_WRITE: &str = "Microsoft.Authorization/roleAssignments/write";
    /// Delete a role assignment (control-plane action).
    pub const ROLE_ASSIGNMENTS_DELETE: &str = "Microsoft.Authorization/roleAssignments/delete";
    /// Read role assignments (control-plane action).
    pub const ROLE_ASSIGNMENTS_READ: &str = "Microsoft.Authorization/roleAssignments/read";
}

/// A role definition: what a role assignment of it permits.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinition {
    /// The GUID (the definition's `name` in ARM).
    pub name: &'static str,
    /// The display name (`roleName` in ARM).
    pub role_name: &'static str,
    /// What the role is for.
    pub description: &'static str,
    /// Control-plane actions granted.
    pub actions: &'static [&'static str],
    /// Control-plane actions taken back from `actions`.
    pub not_actions: &'static [&'static str],
    /// Data-plane actions granted.
    pub data_actions: &'static [&'static str],
    /// Data-plane actions taken back from `data_actions`.
    pub not_data_actions: &'static [&'static str],
}

impl RoleDefinition {
    /// The tenant-level id, `/providers/Microsoft.Authorization/roleDefinitions/{guid}`.
    pub fn id(&self) -> String {
        format!(
            "/providers/Microsoft.Authorization/roleDefinitions/{}",
            self.name
        )
    }

    /// Whether this role grants `action` (a data action when `is_data_action`): one of its
    /// (data) actions matches and none of its not(Data)Actions does.
    pub fn permits(&self, action: &str, is_data_action: bool) -> bool {
        let (granted, excluded) = if is_data_action {
            (self.data_actions, self.not_data_actions)
        } else {
            (self.actions, self.not_actions)
        };
        granted
            .iter()
            .any(|pattern| action_matches(pattern, action))
            && !excluded
                .iter()
                .any(|pattern| action_matches(pattern, action))
    }
}

const KEY_VAULT_MANAGEMENT_READ_ACTIONS: &[&str] = &[
    "Microsoft.Authorization/*/read",
    "Microsoft.Insights/alertRules/*",
    "Microsoft.Resources/deployments/*",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Support/*",
    "Microsoft.KeyVault/checkNameAvailability/read",
    "Microsoft.KeyVault/deletedVaults/read",
    "Microsoft.KeyVault/locations/*/read",
    "Microsoft.KeyVault/vaults/*/read",
    "Microsoft.KeyVault/operations/read",
];

static BUILT_IN_ROLES: &[RoleDefinition] = &[
    RoleDefinition {
        name: OWNER,
        role_name: "Owner",
        description: "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.",
        actions: &["*"],
        not_actions: &[],
        data_actions: &[],
        not_data_actions: &[],
    },
    RoleDefinition {
        name: CONTRIBUTOR,
        role_name: "Contributor",
        description: "Grants full access to manage all resources, but does not allow you to assign roles in Azure RBAC, manage assignments in Azure Blueprints, or share image galleries.",
        actions: &["*"],
        not_actions: &[
            "Microsoft.Authorization/*/Delete",
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/elevateAccess/Action",
            "Microsoft.Blueprint/blueprintAssignments/write",
            "Microsoft.Blueprint/blueprintAssignments/delete",
            "Microsoft.Compute/galleries/share/action",
        ],
        data_actions: &[],
        not_data_actions: &[],
    },
    RoleDefinition {
        name: READER,
        role_name: "Reader",
        description: "View all resources, but does not allow you to make any changes.",
        actions: &["*/read"],
        not_actions: &[],
        data_actions: &[],
        not_data_actions: &[],
    },
    RoleDefinition {
        name: USER_ACCESS_ADMINISTRATOR,
        role_name: "User Access Administrator",
        description: "Lets you manage user access to Azure resources.",
        actions: &["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"],
        not_actions: &[],
        data_actions: &[],
        not_data_actions: &[],
    },
    RoleDefinition {
        name: KEY_VAULT_ADMINISTRATOR,
        role_name: "Key Vault Administrator",
        description: "Perform all data plane operations on a key vault and all objects in it, including certificates, keys, and secrets. Cannot manage key vault resources or manage role assignments. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: KEY_VAULT_MANAGEMENT_READ_ACTIONS,
        not_actions: &[],
        data_actions: &["Microsoft.KeyVault/vaults/*"],
        not_data_actions: &[],
    },
    RoleDefinition {
        name: KEY_VAULT_CRYPTO_OFFICER,
        role_name: "Key Vault Crypto Officer",
        description: "Perform any action on the keys of a key vault, except manage permissions. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: KEY_VAULT_MANAGEMENT_READ_ACTIONS,
        not_actions: &[],
        data_actions: &[
            "Microsoft.KeyVault/vaults/keys/*",
            "Microsoft.KeyVault/vaults/keyrotationpolicies/*",
        ],
        not_data_actions: &[],
    },
    RoleDefinition {
        name: KEY_VAULT_CRYPTO_USER,
        role_name: "Key Vault Crypto User",
        description: "Perform cryptographic operations using keys. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: &[],
        not_actions: &[],
        data_actions: &[
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/update/action",
            "Microsoft.KeyVault/vaults/keys/backup/action",
            "Microsoft.KeyVault/vaults/keys/encrypt/action",
            "Microsoft.KeyVault/vaults/keys/decrypt/action",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
            "Microsoft.KeyVault/vaults/keys/unwrap/action",
            "Microsoft.KeyVault/vaults/keys/sign/action",
            "Microsoft.KeyVault/vaults/keys/verify/action",
        ],
        not_data_actions: &[],
    },
    RoleDefinition {
        name: KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER,
        role_name: "Key Vault Crypto Service Encryption User",
        description: "Read metadata of keys and perform wrap/unwrap operations. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: &[
            "Microsoft.EventGrid/eventSubscriptions/write",
            "Microsoft.EventGrid/eventSubscriptions/read",
            "Microsoft.EventGrid/eventSubscriptions/delete",
        ],
        not_actions: &[],
        data_actions: &[
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
            "Microsoft.KeyVault/vaults/keys/unwrap/action",
        ],
        not_data_actions: &[],
    },
    RoleDefinition {
        name: KEY_VAULT_READER,
        role_name: "Key Vault Reader",
        description: "Read metadata of key vaults and its certificates, keys, and secrets. Cannot read sensitive values such as secret contents or key material. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: KEY_VAULT_MANAGEMENT_READ_ACTIONS,
        not_actions: &[],
        data_actions: &[
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ],
        not_data_actions: &[],
    },
    RoleDefinition {
        name: DICOM_DATA_OWNER,
        role_name: "DICOM Data Owner",
        description: "Full access to DICOM data.",
        actions: &[],
        not_actions: &[],
        data_actions: &["Microsoft.HealthcareApis/workspaces/dicomservices/resources/*"],
        not_data_actions: &[],
    },
    RoleDefinition {
        name: DICOM_DATA_READER,
        role_name: "DICOM Data Reader",
        description: "Read and search DICOM data.",
        actions: &[],
        not_actions: &[],
        data_actions: &["Microsoft.HealthcareApis/workspaces/dicomservices/resources/read"],
        not_data_actions: &[],
    },
];

/// Every built-in role definition.
pub fn role_definitions() -> &'static [RoleDefinition] {
    BUILT_IN_ROLES
}

/// The built-in role with GUID `name` (case-insensitive).
pub fn role_definition(name: &str) -> Option<&'static RoleDefinition> {
    BUILT_IN_ROLES
        .iter()
        .find(|definition| definition.name.eq_ignore_ascii_case(name))
}

/// The role named by a `roleDefinitionId`, whatever scope prefix it carries
/// (`/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{guid}`,
/// `/providers/Microsoft.Authorization/roleDefinitions/{guid}`, a resource group's) or a bare
/// GUID.
pub fn role_definition_by_id(role_definition_id: &str) -> Option<&'static RoleDefinition> {
    let trimmed = role_definition_id.trim_end_matches('/');
    let lower = trimmed.to_ascii_lowercase();
    let marker = "/providers/microsoft.authorization/roledefinitions/";
    let guid = match lower.rfind(marker) {
        Some(position) => {
            let guid = &trimmed[position + marker.len()..];
            // The prefix before the provider part must be a scope (empty, or /...).
            let prefix = &trimmed[..position];
            if !(prefix.is_empty() || prefix.starts_with('/')) {
                return None;
            }
            guid
        }
        None if !trimmed.contains('/') => trimmed,
        None => return None,
    };
    role_definition(guid)
}

/// Whether `pattern` (from a role definition) matches `action`. Case-insensitive; `*` matches
/// any run of characters, slashes included (`Microsoft.Authorization/*/read` matches
/// `Microsoft.Authorization/roleAssignments/read`), as Azure's wildcard does.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    let pattern = pattern.as_bytes();
    let action = action.as_bytes();
    // Iterative glob with one backtrack point: linear-ish, no recursion.
    let (mut pattern_index, mut action_index) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while action_index < action.len() {
        if pattern_index < pattern.len() && pattern[pattern_index] == b'*' {
            star = Some((pattern_index, action_index));
            pattern_index += 1;
        } else if pattern_index < pattern.len()
            && pattern[pattern_index].eq_ignore_ascii_case(&action[action_index])
        {
            pattern_index += 1;
            action_index += 1;
        } else if let Some((star_pattern, star_action)) = star {
            pattern_index = star_pattern + 1;
            action_index = star_action + 1;
            star = Some((star_pattern, star_action + 1));
        } else {
            return false;
        }
    }
    pattern[pattern_index..].iter().all(|byte| *byte == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_azure() {
        assert!(action_matches("*", "Microsoft.KeyVault/vaults/write"));
        assert!(action_matches("*/read", "Microsoft.KeyVault/vaults/read"));
        assert!(!action_matches("*/read", "Microsoft.KeyVault/vaults/write"));
        assert!(action_matches(
            "Microsoft.KeyVault/vaults/keys/*",
            "Microsoft.KeyVault/vaults/keys/wrap/action"
        ));
        assert!(!action_matches(
            "Microsoft.KeyVault/vaults/keys/*",
            "Microsoft.KeyVault/vaults/secrets/getSecret/action"
        ));
        assert!(action_matches(
            "Microsoft.Authorization/*/Write",
            "microsoft.authorization/roleAssignments/write"
        ));
        assert!(!action_matches(
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/roleAssignments/read"
        ));
        assert!(action_matches(
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/vaults/keys/read"
        ));
        assert!(!action_matches(
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/read/extra"
        ));
        assert!(!action_matches("", "x"));
    }

    #[test]
    fn not_actions_take_back_what_actions_grant() {
        let contributor = role_definition(CONTRIBUTOR).expect("built in");
        assert!(contributor.permits("Microsoft.KeyVault/vaults/write", false));
        assert!(!contributor.permits(actions::ROLE_ASSIGNMENTS_WRITE, false));
        assert!(!contributor.permits(actions::ROLE_ASSIGNMENTS_DELETE, false));
        assert!(contributor.permits(actions::ROLE_ASSIGNMENTS_READ, false));
        assert!(
            !contributor.permits(actions::KEYS_READ, true),
            "control-plane roles grant no data actions"
        );
    }

    #[test]
    fn role_definition_ids_parse_with_any_scope_prefix() {
        for id in [
            "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/providers/Microsoft.Authorization/roleDefinitions/14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
            "/subscriptions/s/resourceGroups/rg/providers/microsoft.authorization/roledefinitions/14B46E9E-C2B7-41B4-B07B-48A6EBF60603",
            "/providers/Microsoft.Authorization/roleDefinitions/14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
            "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
        ] {
            assert_eq!(
                role_definition_by_id(id).map(|role| role.role_name),
                Some("Key Vault Crypto Officer"),
                "{id}"
            );
        }
        assert!(role_definition_by_id("/providers/Microsoft.Authorization/roleDefinitions/00000000-0000-0000-0000-000000000000").is_none());
        assert!(role_definition_by_id("/something/14b46e9e-c2b7-41b4-b07b-48a6ebf60603").is_none());
    }

    #[test]
    fn every_definition_has_a_unique_guid() {
        for (index, role) in BUILT_IN_ROLES.iter().enumerate() {
            assert!(
                uuid::Uuid::parse_str(role.name).is_ok(),
                "{}",
                role.role_name
            );
            assert!(
                BUILT_IN_ROLES[index + 1..]
                    .iter()
                    .all(|other| other.name != role.name)
            );
        }
    }
}
