//! The vault's one error type. Each variant knows its HTTP status and Key Vault's wire codes
//! (`{"error":{"code","message","innererror":{"code"}}}`); the message says what to change.
//! Messages never carry key material or tokens.

use http::StatusCode;

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// No vault of that name.
    #[error("vault '{0}' was not found; create it through the control plane first")]
    VaultNotFound(String),
    /// No such key, or no such version of it.
    #[error(
        "A key with (name/id) {0} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command."
    )]
    KeyNotFound(String),
    /// No deleted key of that name.
    #[error(
        "Deleted Key not found: {0}. List deleted keys (GET /deletedkeys) to see what can be recovered."
    )]
    DeletedKeyNotFound(String),
    /// A request value is wrong.
    #[error("{0}")]
    BadParameter(String),
    /// The name is held by a deleted key, or the key already exists.
    #[error("{0}")]
    Conflict(String),
    /// The version is disabled.
    #[error(
        "Operation {operation} is not allowed on a disabled key. Enable the key version (update its attributes with enabled=true) first."
    )]
    KeyDisabled {
        /// The refused operation.
        operation: String,
    },
    /// The version's `nbf` is in the future.
    #[error(
        "Operation {operation} is not allowed on a key that is not yet valid (nbf is in the future). Wait, or update the key's nbf."
    )]
    KeyNotYetValid {
        /// The refused operation.
        operation: String,
    },
    /// The version's `exp` has passed.
    #[error(
        "Operation {operation} is not allowed on an expired key. Update the key's exp or rotate the key."
    )]
    KeyExpired {
        /// The refused operation.
        operation: String,
    },
    /// The key's `key_ops` do not include the operation.
    #[error(
        "Operation {operation} is not permitted on this key. Add '{operation}' to the key's key_ops (update the key) or use another key."
    )]
    OperationNotPermitted {
        /// The refused operation.
        operation: String,
    },
    /// A purge-protected vault still holds keys (live or deleted) and cannot be deleted.
    #[error(
        "vault '{0}' has purge protection and still holds keys: its keys must outlive their retention period. Delete the keys and wait until their scheduledPurgeDate has passed, then delete the vault."
    )]
    VaultNotEmpty(String),
    /// RSA-HSM keys never leave the vault.
    #[error(
        "Key '{0}' is an RSA-HSM key and its material is non-extractable: it cannot be backed up. Only RSA (software) keys can be backed up, and their backups restore only into this hds."
    )]
    NonExtractable(String),
    /// Purge refused under purge protection.
    #[error(
        "Operation \"purge\" is not allowed because purge protection is enabled for this vault. The key will be purged automatically at its scheduledPurgeDate; recover it instead if you need it."
    )]
    PurgeProtected,
    /// No or unusable bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// RBAC denied the data action.
    #[error(
        "Caller is not authorized to perform action on resource.\r\nIf role assignments were recently changed, please wait several minutes for role assignments to become effective.\r\nCaller: oid={principal_id}\r\nAction: '{data_action}'\r\nResource: '{scope}'\r\nAssign the caller a role that grants this action (e.g. Key Vault Crypto Service Encryption User for wrap/unwrap) at the vault or key scope."
    )]
    ForbiddenByRbac {
        /// The caller's object id.
        principal_id: String,
        /// The data action denied.
        data_action: String,
        /// The scope checked.
        scope: String,
    },
    /// Access policies do not grant the permission.
    #[error(
        "The user, group or application 'oid={principal_id}' does not have keys {permission} permission on key vault '{vault}'. Add '{permission}' to the key permissions of an access policy for this principal."
    )]
    ForbiddenByPolicy {
        /// The caller's object id.
        principal_id: String,
        /// The missing permission.
        permission: String,
        /// The vault.
        vault: String,
    },
    /// The firewall denied the client address.
    #[error(
        "Client address is not authorized and caller is not a trusted service.\r\nClient address: {client}\r\nAdd the address to the vault's networkAcls.ipRules, or set networkAcls.defaultAction to Allow."
    )]
    ForbiddenByFirewall {
        /// The client address as seen by the listener.
        client: String,
    },
    /// A stored value did not open under the root key (wrong data dir, or tampering).
    #[error("stored key material failed its integrity check")]
    Sealed,
    /// The PKCS#11 token could not be opened.
    #[error("{0}")]
    Pkcs11(#[from] crate::pkcs11::Pkcs11Error),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] hds_db::DbError),
    /// Something that should not happen (a cryptographic primitive failed unexpectedly).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for VaultError {
    fn from(error: sqlx::Error) -> VaultError {
        VaultError::Storage(hds_db::DbError::Sqlx(error))
    }
}

impl VaultError {
    /// The HTTP status the data plane answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            VaultError::VaultNotFound(_)
            | VaultError::KeyNotFound(_)
            | VaultError::DeletedKeyNotFound(_) => StatusCode::NOT_FOUND,
            VaultError::BadParameter(_) | VaultError::NonExtractable(_) => StatusCode::BAD_REQUEST,
            VaultError::Conflict(_) | VaultError::VaultNotEmpty(_) => StatusCode::CONFLICT,
            VaultError::KeyDisabled { .. }
            | VaultError::KeyNotYetValid { .. }
            | VaultError::KeyExpired { .. }
            | VaultError::OperationNotPermitted { .. }
            | VaultError::PurgeProtected
            | VaultError::ForbiddenByRbac { .. }
            | VaultError::ForbiddenByPolicy { .. }
            | VaultError::ForbiddenByFirewall { .. } => StatusCode::FORBIDDEN,
            VaultError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            VaultError::Sealed
            | VaultError::Pkcs11(_)
            | VaultError::Storage(_)
            | VaultError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Key Vault's `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            VaultError::VaultNotFound(_) => "VaultNotFound",
            VaultError::KeyNotFound(_) | VaultError::DeletedKeyNotFound(_) => "KeyNotFound",
            VaultError::BadParameter(_) | VaultError::NonExtractable(_) => "BadParameter",
            VaultError::Conflict(_) | VaultError::VaultNotEmpty(_) => "Conflict",
            VaultError::Unauthorized(_) => "Unauthorized",
            VaultError::KeyDisabled { .. }
            | VaultError::KeyNotYetValid { .. }
            | VaultError::KeyExpired { .. }
            | VaultError::OperationNotPermitted { .. }
            | VaultError::PurgeProtected
            | VaultError::ForbiddenByRbac { .. }
            | VaultError::ForbiddenByPolicy { .. }
            | VaultError::ForbiddenByFirewall { .. } => "Forbidden",
            VaultError::Sealed
            | VaultError::Pkcs11(_)
            | VaultError::Storage(_)
            | VaultError::Internal(_) => "InternalError",
        }
    }

    /// Key Vault's `error.innererror.code`, where it gives one.
    pub fn inner_code(&self) -> Option<&'static str> {
        match self {
            VaultError::KeyDisabled { .. } => Some("KeyDisabled"),
            VaultError::KeyNotYetValid { .. } => Some("KeyNotYetValid"),
            VaultError::KeyExpired { .. } => Some("KeyExpired"),
            VaultError::OperationNotPermitted { .. } => Some("KeyOperationForbidden"),
            VaultError::NonExtractable(_) => Some("NonExtractableKey"),
            VaultError::PurgeProtected => Some("PurgeProtectionEnabled"),
            VaultError::ForbiddenByRbac { .. } => Some("ForbiddenByRbac"),
            VaultError::ForbiddenByPolicy { .. } => Some("AccessDenied"),
            VaultError::ForbiddenByFirewall { .. } => Some("ForbiddenByFirewall"),
            VaultError::Conflict(_) => Some("ObjectIsDeletedButRecoverable"),
            _ => None,
        }
    }

    /// The message sent to the client: server-side failures reveal nothing.
    pub fn public_message(&self) -> String {
        if self.status().is_server_error() {
            "The vault could not complete the request because of an internal error; see the hds logs.".to_owned()
        } else {
            self.to_string()
        }
    }
}
