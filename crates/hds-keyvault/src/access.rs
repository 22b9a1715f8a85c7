//! Who may call a vault's data plane: authentication and RBAC behind a trait (implemented
//! over hds-identity by the composition root), access policies and the firewall here.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;

use crate::error::VaultError;
use crate::model::{KeyPermission, Vault};

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The token audience of Key Vault's data plane.
pub const VAULT_AUDIENCE: &str = "https://vault.azure.net";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The principal's object id.
    pub principal_id: String,
    /// The principal's tenant.
    pub tenant_id: String,
    /// One of hds's own hosted services (passes the firewall under `bypass=AzureServices`).
    pub is_trusted_service: bool,
}

/// Why authentication or authorization failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The token is malformed, expired, for another audience or not signed by a known issuer.
    /// The message says which, and never contains the token.
    #[error("{0}")]
    InvalidToken(String),
    /// The caller holds no role assignment granting the action at the scope.
    #[error("not authorized")]
    Denied,
    /// The identity service could not answer.
    #[error("authorization unavailable: {0}")]
    Unavailable(String),
}

/// Authentication and RBAC for the data plane.
pub trait VaultAccessControl: Send + Sync + 'static {
    /// Validates the bearer token (audience [`VAULT_AUDIENCE`]) and returns the caller.
    fn authenticate<'a>(&'a self, bearer: &'a str) -> BoxFuture<'a, Result<Caller, AccessError>>;

    /// Whether `caller` may perform `data_action` (e.g. `Microsoft.KeyVault/vaults/keys/wrap/action`)
    /// at `scope` (the vault's ARM resource id, or `{vault id}/keys/{name}`), with role
    /// assignments inherited from enclosing scopes.
    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        data_action: &'a str,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<(), AccessError>>;
}

/// What a data-plane request asks to do: an access-policy permission and an RBAC data action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPlaneAction {
    /// The access-policy permission that grants it.
    pub permission: KeyPermission,
    /// The RBAC data action that grants it.
    pub data_action: &'static str,
}

impl DataPlaneAction {
    /// An action on live keys.
    pub fn key(permission: KeyPermission) -> DataPlaneAction {
        DataPlaneAction {
            permission,
            data_action: permission.data_action(),
        }
    }

    /// Reading deleted keys (access policies: `get` or `list`; RBAC: `deletedKeys/read`).
    pub fn read_deleted(permission: KeyPermission) -> DataPlaneAction {
        DataPlaneAction {
            permission,
            data_action: "Microsoft.KeyVault/vaults/deletedKeys/read",
        }
    }
}

/// The firewall: refuses a caller at `client` that `networkAcls` does not admit.
pub fn check_firewall(
    vault: &Vault,
    caller: &Caller,
    client: Option<IpAddr>,
) -> Result<(), VaultError> {
    if vault
        .properties
        .network_acls
        .admits(client, caller.is_trusted_service)
    {
        Ok(())
    } else {
        Err(VaultError::ForbiddenByFirewall {
            client: client
                .map(|address| address.to_string())
                .unwrap_or_else(|| "unknown".into()),
        })
    }
}

/// Authorizes `action` on the vault (or on key `key_name`): by RBAC when the vault uses it,
/// otherwise by its access policies.
pub async fn authorize(
    access: &dyn VaultAccessControl,
    vault: &Vault,
    caller: &Caller,
    action: DataPlaneAction,
    key_name: Option<&str>,
) -> Result<(), VaultError> {
    if vault.properties.enable_rbac_authorization {
        let scope = match key_name {
            Some(name) => format!("{}/keys/{}", vault.resource_id, name),
            None => vault.resource_id.clone(),
        };
        return match access.authorize(caller, action.data_action, &scope).await {
            Ok(()) => Ok(()),
            Err(AccessError::Denied | AccessError::InvalidToken(_)) => {
                Err(VaultError::ForbiddenByRbac {
                    principal_id: caller.principal_id.clone(),
                    data_action: action.data_action.to_owned(),
                    scope,
                })
            }
            Err(AccessError::Unavailable(reason)) => Err(VaultError::Internal(reason)),
        };
    }
    let granted = vault.properties.access_policies.iter().any(|policy| {
        policy.object_id.eq_ignore_ascii_case(&caller.principal_id)
            && policy.tenant_id.eq_ignore_ascii_case(&caller.tenant_id)
            && policy
                .key_permissions
                .iter()
                .any(|permission| permission.grants(action.permission))
    });
    if granted {
        Ok(())
    } else {
        Err(VaultError::ForbiddenByPolicy {
            principal_id: caller.principal_id.clone(),
            permission: action.permission.policy_name().to_owned(),
            vault: vault.name.clone(),
        })
    }
}

/// An access control over a fixed table of tokens and grants: for tests and local tools,
/// never for production (tokens are compared as plain strings).
#[derive(Debug, Default)]
pub struct StaticAccessControl {
    callers: Mutex<HashMap<String, Caller>>,
    grants: Mutex<HashSet<(String, String)>>,
}

impl StaticAccessControl {
    /// An empty table: every token is refused.
    pub fn new() -> StaticAccessControl {
        StaticAccessControl::default()
    }

    /// Accepts `token` as `caller`.
    pub fn add_token(&self, token: &str, caller: Caller) {
        if let Ok(mut callers) = self.callers.lock() {
            callers.insert(token.to_owned(), caller);
        }
    }

    /// Grants `data_action` (or `*` for every action) to `principal_id` at every scope.
    pub fn grant(&self, principal_id: &str, data_action: &str) {
        if let Ok(mut grants) = self.grants.lock() {
            grants.insert((principal_id.to_owned(), data_action.to_owned()));
        }
    }

    /// Takes a grant back.
    pub fn revoke(&self, principal_id: &str, data_action: &str) {
        if let Ok(mut grants) = self.grants.lock() {
            grants.remove(&(principal_id.to_owned(), data_action.to_owned()));
        }
    }
}

impl VaultAccessControl for StaticAccessControl {
    fn authenticate<'a>(&'a self, bearer: &'a str) -> BoxFuture<'a, Result<Caller, AccessError>> {
        let result = self
            .callers
            .lock()
            .map_err(|_| AccessError::Unavailable("token table lock poisoned".into()))
            .and_then(|callers| {
                callers.get(bearer).cloned().ok_or_else(|| {
                    AccessError::InvalidToken("the bearer token is not valid".into())
                })
            });
        Box::pin(async move { result })
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        data_action: &'a str,
        _scope: &'a str,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        let result = match self.grants.lock() {
            Ok(grants) => {
                let principal = caller.principal_id.clone();
                if grants.contains(&(principal.clone(), data_action.to_owned()))
                    || grants.contains(&(principal, "*".to_owned()))
                {
                    Ok(())
                } else {
                    Err(AccessError::Denied)
                }
            }
            Err(_) => Err(AccessError::Unavailable("grant table lock poisoned".into())),
        };
        Box::pin(async move { result })
    }
}
