//! Small adapters that let the library crates use each other without depending on each other:
//! managed-identity tokens for the key-vault client, the vaults' control-plane settings for key
//! validation, and vault listeners that follow the control plane.

use std::sync::Arc;

use hds_cmk::token::TokenFuture;
use hds_cmk::validate::VaultFactsFuture;
use hds_cmk::{CmkError, TokenSource, VaultDirectory, VaultFacts};
use hds_identity::Identity;
use hds_keyvault::model::{Bypass, DefaultAction, Vault};
use hds_keyvault::{KeyVaultService, VaultListeners};
use hds_providers::VaultEvents;

/// Tokens for hosted services' managed identities, issued in-process by the identity service.
pub struct ManagedIdentityTokens {
    pub identity: Identity,
}

impl TokenSource for ManagedIdentityTokens {
    fn token(&self, principal_id: &str, resource: &str) -> TokenFuture<'_> {
        let principal_id = principal_id.to_owned();
        let resource = resource.to_owned();
        Box::pin(async move {
            match self
                .identity
                .issue_token_for_managed_identity(&principal_id, &resource)
                .await
            {
                Ok(token) => Ok(token.access_token),
                Err(hds_identity::IdentityError::PrincipalNotFound) => {
                    Err(CmkError::ManagedIdentityNotFound {
                        principal_id: principal_id.clone(),
                    })
                }
                Err(error) => Err(CmkError::TokenUnavailable(error.to_string())),
            }
        })
    }
}

/// The settings of the vaults hds hosts, found by their data-plane URL.
pub struct HostedVaults {
    pub service: Arc<KeyVaultService>,
}

impl VaultDirectory for HostedVaults {
    fn vault_facts<'a>(&'a self, vault_base_url: &'a str) -> VaultFactsFuture<'a> {
        Box::pin(async move {
            let wanted = vault_base_url.trim_end_matches('/');
            let vaults = self.service.list_vaults().await.ok()?;
            let vault = vaults.into_iter().find(|vault| {
                vault
                    .vault_uri
                    .trim_end_matches('/')
                    .eq_ignore_ascii_case(wanted)
            })?;
            let acls = &vault.properties.network_acls;
            Some(VaultFacts {
                resource_id: vault.resource_id.clone(),
                tenant_id: vault.properties.tenant_id.clone(),
                enable_soft_delete: vault.properties.enable_soft_delete,
                enable_purge_protection: vault.properties.enable_purge_protection,
                network_default_deny: acls.default_action == DefaultAction::Deny,
                bypass_azure_services: acls.bypass == Bypass::AzureServices,
            })
        })
    }
}

/// Starts a vault's HTTPS listener when the control plane creates it, stops it on delete.
pub struct VaultListenerEvents {
    pub listeners: Arc<VaultListeners>,
}

impl VaultEvents for VaultListenerEvents {
    fn vault_changed(&self, vault: &Vault) {
        // Under --vault-domain a vault has no port: the main listener routes to it by host.
        if vault.port.is_none() {
            return;
        }
        if let Err(error) = self.listeners.start(vault) {
            tracing::error!(vault = %vault.name, error = %error, "starting the vault's listener failed");
        }
    }

    fn vault_deleted(&self, name: &str) {
        self.listeners.stop(name);
    }
}
