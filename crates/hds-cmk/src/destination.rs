//! Where a managed identity's token may go.
//!
//! A key URL is customer input: whoever may write a DICOM service names the host that key
//! validation and the key-access monitor then call with the service's managed-identity token.
//! Left open, that sends a vault token to any host whose certificate hds trusts, and makes hds
//! connect wherever it is told. So every request the [`crate::KeyVaultClient`] makes passes
//! through [`TokenDestinations::check`] first, before any connection: the host must be a vault
//! this hds serves (its vault service knows their addresses), a host the composition names
//! explicitly, or, when an Azure tenant is configured, an Azure Key Vault or Managed HSM host
//! on the default port. Anything else is refused with [`CmkError::DestinationNotAllowed`].

use std::sync::Arc;

use crate::error::{CmkError, bounded};
use crate::url::KeyUrl;
use crate::validate::VaultDirectory;

/// The DNS suffixes of Azure Key Vault and Azure Key Vault Managed HSM (public cloud).
pub const AZURE_VAULT_DNS_SUFFIXES: [&str; 2] = [".vault.azure.net", ".managedhsm.azure.net"];

/// The rule as error messages state it.
pub const TOKEN_DESTINATION_RULE: &str = "a managed identity's token is sent only to a key vault this hds serves, or to Azure Key Vault (*.vault.azure.net) and Managed HSM (*.managedhsm.azure.net) when an Azure tenant is configured (--azure-tenant-id)";

/// The hosts a managed identity's token may be sent to. Deny by default: a new value allows
/// nothing; the composition adds what it serves. Cheap to clone.
#[derive(Clone, Default)]
pub struct TokenDestinations {
    /// Vaults this hds serves: a vault is served when the directory knows its settings.
    served: Option<Arc<dyn VaultDirectory>>,
    /// Authorities (`host[:port]`, lower case, without `:443`) allowed by name.
    hosts: Vec<String>,
    /// Whether Azure's vault DNS suffixes are allowed.
    azure: bool,
}

impl std::fmt::Debug for TokenDestinations {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TokenDestinations")
            .field("served", &self.served.is_some())
            .field("hosts", &self.hosts)
            .field("azure", &self.azure)
            .finish()
    }
}

impl TokenDestinations {
    /// Allows nothing.
    pub fn none() -> TokenDestinations {
        TokenDestinations::default()
    }

    /// Also allows every vault `directory` knows (the vaults this hds serves).
    pub fn with_served_vaults(mut self, directory: Arc<dyn VaultDirectory>) -> TokenDestinations {
        self.served = Some(directory);
        self
    }

    /// Also allows Azure Key Vault and Managed HSM hosts ([`AZURE_VAULT_DNS_SUFFIXES`]) on
    /// the default HTTPS port: for when hds signs in to an Azure tenant.
    pub fn with_azure_key_vault(mut self) -> TokenDestinations {
        self.azure = true;
        self
    }

    /// Also allows the vault at `authority` (`host[:port]`), named by the operator or a test.
    pub fn with_host(mut self, authority: &str) -> TokenDestinations {
        let authority = authority.trim().to_ascii_lowercase();
        let authority = authority
            .strip_suffix(":443")
            .map(str::to_owned)
            .unwrap_or(authority);
        self.hosts.push(authority);
        self
    }

    /// `Ok` when a token may be sent to the vault `url` names; decided without connecting.
    pub async fn check(&self, url: &KeyUrl) -> Result<(), CmkError> {
        let authority = url.authority();
        if self.hosts.iter().any(|allowed| allowed == authority) {
            return Ok(());
        }
        if self.azure && is_azure_vault_host(authority) {
            return Ok(());
        }
        if let Some(directory) = &self.served
            && directory.vault_facts(&url.vault_base_url()).await.is_some()
        {
            return Ok(());
        }
        tracing::warn!(host = %bounded(authority), "refused to send a managed identity's token to a host that is not an allowed key vault");
        Err(CmkError::DestinationNotAllowed {
            host: bounded(authority),
        })
    }
}

/// Whether `authority` is an Azure vault host: one or more labels before a known suffix, and
/// no explicit port (Azure's vaults listen on 443 only, which [`KeyUrl`] drops).
fn is_azure_vault_host(authority: &str) -> bool {
    if authority.contains(':') {
        return false;
    }
    AZURE_VAULT_DNS_SUFFIXES.iter().any(|suffix| {
        authority.strip_suffix(suffix).is_some_and(|label| {
            !label.is_empty() && !label.starts_with('.') && !label.ends_with('.')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{NoVaultDirectory, VaultFacts, VaultFactsFuture};

    fn url(text: &str) -> KeyUrl {
        KeyUrl::parse(text).expect("a valid key URL")
    }

    /// Knows exactly one vault.
    struct OneVault(&'static str);

    impl VaultDirectory for OneVault {
        fn vault_facts<'a>(&'a self, vault_base_url: &'a str) -> VaultFactsFuture<'a> {
            let known = vault_base_url == self.0;
            Box::pin(async move {
                known.then(|| VaultFacts {
                    resource_id:
                        "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/v"
                            .into(),
                    tenant_id: "t".into(),
                    enable_soft_delete: true,
                    enable_purge_protection: true,
                    network_default_deny: false,
                    bypass_azure_services: true,
                })
            })
        }
    }

    fn refused(result: Result<(), CmkError>) -> bool {
        matches!(result, Err(CmkError::DestinationNotAllowed { .. }))
    }

    #[tokio::test]
    async fn nothing_is_allowed_by_default() {
        let none = TokenDestinations::none();
        assert!(refused(
            none.check(&url("https://127.0.0.1:8443/keys/k")).await
        ));
        assert!(refused(
            none.check(&url("https://v.vault.azure.net/keys/k")).await
        ));
        let empty_directory =
            TokenDestinations::none().with_served_vaults(Arc::new(NoVaultDirectory));
        assert!(refused(
            empty_directory
                .check(&url("https://127.0.0.1:8443/keys/k"))
                .await
        ));
    }

    #[tokio::test]
    async fn served_vaults_are_allowed_by_exact_address() {
        let served = TokenDestinations::none()
            .with_served_vaults(Arc::new(OneVault("https://127.0.0.1:8443/")));
        assert!(
            served
                .check(&url("https://127.0.0.1:8443/keys/k"))
                .await
                .is_ok()
        );
        // Another port of the same address is another host.
        let error = served
            .check(&url("https://127.0.0.1:8444/keys/k"))
            .await
            .unwrap_err();
        assert!(refused(Err(error.clone())));
        assert!(error.to_string().contains("127.0.0.1:8444"), "{error}");
        assert!(error.to_string().contains("serves"), "{error}");
    }

    #[tokio::test]
    async fn azure_suffixes_only_when_configured_and_only_as_suffixes() {
        let azure = TokenDestinations::none().with_azure_key_vault();
        for allowed in [
            "https://myvault.vault.azure.net/keys/k",
            "https://MyVault.Vault.Azure.Net:443/keys/k",
            "https://myhsm.managedhsm.azure.net/keys/k",
        ] {
            assert!(azure.check(&url(allowed)).await.is_ok(), "{allowed}");
        }
        for refused_host in [
            "https://vault.azure.net/keys/k",
            "https://.vault.azure.net/keys/k",
            "https://myvault.vault.azure.net.evil.example/keys/k",
            "https://myvault-vault.azure.net/keys/k",
            "https://evilvault.azure.net/keys/k",
            "https://myvault.vault.azure.net:8443/keys/k",
            "https://127.0.0.1:8443/keys/k",
        ] {
            assert!(
                refused(azure.check(&url(refused_host)).await),
                "{refused_host}"
            );
        }
    }

    #[tokio::test]
    async fn named_hosts_are_normalized() {
        let named = TokenDestinations::none()
            .with_host("Vault.Example:443")
            .with_host("127.0.0.1:9000");
        assert!(
            named
                .check(&url("https://vault.example/keys/k"))
                .await
                .is_ok()
        );
        assert!(
            named
                .check(&url("https://127.0.0.1:9000/keys/k"))
                .await
                .is_ok()
        );
        assert!(refused(
            named.check(&url("https://127.0.0.1:9001/keys/k")).await
        ));
    }
}
