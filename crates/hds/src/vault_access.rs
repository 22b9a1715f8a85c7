//! The key vaults' data-plane access control, answered by the identity service.
//!
//! Trusted services: a caller counts as one of hds's own hosted services (and so passes a vault
//! firewall under `bypass=AzureServices`) when it is a managed identity. Managed-identity tokens
//! are only issued in-process, to the services hds hosts; no HTTP endpoint hands them out.

use hds_identity::principals::PrincipalKind;
use hds_identity::{Identity, TokenError, VAULT_AUDIENCE};
use hds_keyvault::access::{AccessError, BoxFuture, Caller, VaultAccessControl};

/// [`VaultAccessControl`] over [`Identity`].
pub struct IdentityVaultAccess {
    pub identity: Identity,
}

impl VaultAccessControl for IdentityVaultAccess {
    fn authenticate<'a>(&'a self, bearer: &'a str) -> BoxFuture<'a, Result<Caller, AccessError>> {
        Box::pin(async move {
            let principal = match self.identity.validate_token(bearer, VAULT_AUDIENCE).await {
                Ok(principal) => principal,
                Err(TokenError::Internal(message)) => {
                    return Err(AccessError::Unavailable(message));
                }
                Err(reason) => return Err(AccessError::InvalidToken(reason.to_string())),
            };
            let stored = self
                .identity
                .principal(&principal.principal_id)
                .await
                .map_err(|error| AccessError::Unavailable(error.to_string()))?;
            let is_trusted_service = stored.as_ref().is_some_and(|stored| {
                matches!(
                    stored.kind,
                    PrincipalKind::SystemAssignedIdentity | PrincipalKind::UserAssignedIdentity
                )
            });
            let tenant_id = principal
                .tenant_id
                .or_else(|| stored.map(|stored| stored.tenant_id))
                .unwrap_or_default();
            Ok(Caller {
                principal_id: principal.principal_id,
                tenant_id,
                is_trusted_service,
            })
        })
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        data_action: &'a str,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(hds_providers::authorize_data_action(
            &self.identity,
            &caller.principal_id,
            data_action,
            scope,
        ))
    }
}
