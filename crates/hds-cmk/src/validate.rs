//! Whether a key URL can protect a DICOM service: the requirements of the customer-managed
//! key documentation, each checked separately so that a refusal names exactly what to fix.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hds_crypto::keys::WrappedKey;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::client::{KeyFacts, KeyVaultClient, VAULT_RESOURCE};
use crate::error::{CmkError, ForbiddenReason};
use crate::token::TokenSource;
use crate::url::KeyUrl;

/// The role a DICOM service's identity needs on its key.
pub const CRYPTO_SERVICE_ENCRYPTION_USER_ROLE: &str = "Key Vault Crypto Service Encryption User";
/// That role's definition id (Azure's GUID).
pub const CRYPTO_SERVICE_ENCRYPTION_USER_ROLE_ID: &str = "e147488a-f6f5-4113-8e2d-b22465e65bf6";
/// Key types a DICOM service accepts.
pub const SUPPORTED_KEY_TYPES: [&str; 2] = ["RSA", "RSA-HSM"];
/// Key sizes (bits) a DICOM service accepts.
pub const SUPPORTED_KEY_SIZES: [u32; 2] = [2048, 3072];
/// Length of the random value the wrap/unwrap probe round-trips.
const PROBE_VALUE_LEN: usize = 32;

/// What can be wrong with a key for a DICOM service. Each is a distinct error code in ARM
/// errors and resource health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValidationCode {
    /// The key URL is malformed.
    InvalidKeyEncryptionKeyUrl,
    /// No such key, or no such version.
    KeyVaultKeyNotFound,
    /// The key version is disabled.
    KeyDisabled,
    /// The key version's activation date (nbf) is in the future.
    KeyNotYetValid,
    /// The key version's expiration date (exp) has passed.
    KeyExpired,
    /// The key is neither RSA nor RSA-HSM.
    KeyTypeNotSupported,
    /// The key is neither 2048 nor 3072 bits.
    KeySizeNotSupported,
    /// The key's permitted operations lack wrapKey or unwrapKey.
    KeyOperationsNotAllowed,
    /// The vault belongs to another tenant than the DICOM service.
    KeyVaultTenantMismatch,
    /// The vault does not keep deleted keys.
    KeyVaultSoftDeleteDisabled,
    /// The vault allows purging deleted keys before their retention ends.
    KeyVaultPurgeProtectionDisabled,
    /// The vault's firewall denies by default and does not let trusted services through.
    KeyVaultFirewallBlocksTrustedServices,
    /// The DICOM service's managed identity does not exist or is disabled.
    ManagedIdentityNotFound,
    /// No token could be had for the managed identity (the identity service failed).
    ManagedIdentityTokenUnavailable,
    /// The identity may not use the key (missing role or access policy).
    KeyAccessDenied,
    /// The key URL names a host hds does not send a managed identity's token to.
    KeyVaultHostNotAllowed,
    /// The vault could not be reached, or failed.
    KeyVaultUnreachable,
    /// The vault answered in an unexpected way, or the wrap/unwrap probe did not round-trip.
    KeyVaultProbeFailed,
}

impl ValidationCode {
    /// Every code, for parsing and documentation.
    pub const ALL: [ValidationCode; 18] = [
        ValidationCode::InvalidKeyEncryptionKeyUrl,
        ValidationCode::KeyVaultKeyNotFound,
        ValidationCode::KeyDisabled,
        ValidationCode::KeyNotYetValid,
        ValidationCode::KeyExpired,
        ValidationCode::KeyTypeNotSupported,
        ValidationCode::KeySizeNotSupported,
        ValidationCode::KeyOperationsNotAllowed,
        ValidationCode::KeyVaultTenantMismatch,
        ValidationCode::KeyVaultSoftDeleteDisabled,
        ValidationCode::KeyVaultPurgeProtectionDisabled,
        ValidationCode::KeyVaultFirewallBlocksTrustedServices,
        ValidationCode::ManagedIdentityNotFound,
        ValidationCode::ManagedIdentityTokenUnavailable,
        ValidationCode::KeyAccessDenied,
        ValidationCode::KeyVaultHostNotAllowed,
        ValidationCode::KeyVaultUnreachable,
        ValidationCode::KeyVaultProbeFailed,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationCode::InvalidKeyEncryptionKeyUrl => "InvalidKeyEncryptionKeyUrl",
            ValidationCode::KeyVaultKeyNotFound => "KeyVaultKeyNotFound",
            ValidationCode::KeyDisabled => "KeyDisabled",
            ValidationCode::KeyNotYetValid => "KeyNotYetValid",
            ValidationCode::KeyExpired => "KeyExpired",
            ValidationCode::KeyTypeNotSupported => "KeyTypeNotSupported",
            ValidationCode::KeySizeNotSupported => "KeySizeNotSupported",
            ValidationCode::KeyOperationsNotAllowed => "KeyOperationsNotAllowed",
            ValidationCode::KeyVaultTenantMismatch => "KeyVaultTenantMismatch",
            ValidationCode::KeyVaultSoftDeleteDisabled => "KeyVaultSoftDeleteDisabled",
            ValidationCode::KeyVaultPurgeProtectionDisabled => "KeyVaultPurgeProtectionDisabled",
            ValidationCode::KeyVaultFirewallBlocksTrustedServices => {
                "KeyVaultFirewallBlocksTrustedServices"
            }
            ValidationCode::ManagedIdentityNotFound => "ManagedIdentityNotFound",
            ValidationCode::ManagedIdentityTokenUnavailable => "ManagedIdentityTokenUnavailable",
            ValidationCode::KeyAccessDenied => "KeyAccessDenied",
            ValidationCode::KeyVaultHostNotAllowed => "KeyVaultHostNotAllowed",
            ValidationCode::KeyVaultUnreachable => "KeyVaultUnreachable",
            ValidationCode::KeyVaultProbeFailed => "KeyVaultProbeFailed",
        }
    }

    /// The code spelled `text`.
    pub fn parse(text: &str) -> Option<ValidationCode> {
        ValidationCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
    }
}

impl fmt::Display for ValidationCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A refused key: a code and a message saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ValidationError {
    /// What is wrong.
    pub code: ValidationCode,
    /// What to do about it.
    pub message: String,
}

impl ValidationError {
    /// An error with `code` and `message`.
    pub fn new(code: ValidationCode, message: impl Into<String>) -> ValidationError {
        ValidationError {
            code,
            message: message.into(),
        }
    }
}

/// What a vault's control plane says about it (not visible on the data plane).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultFacts {
    /// The vault's ARM resource id.
    pub resource_id: String,
    /// The tenant the vault belongs to.
    pub tenant_id: String,
    /// Whether soft delete is on.
    pub enable_soft_delete: bool,
    /// Whether purge protection is on.
    pub enable_purge_protection: bool,
    /// Whether the firewall denies addresses no rule admits (`networkAcls.defaultAction=Deny`).
    pub network_default_deny: bool,
    /// Whether trusted services pass the firewall (`networkAcls.bypass=AzureServices`).
    pub bypass_azure_services: bool,
}

/// A boxed future, so that [`VaultDirectory`] can be used as a trait object.
pub type VaultFactsFuture<'a> = Pin<Box<dyn Future<Output = Option<VaultFacts>> + Send + 'a>>;

/// Looks up a vault's control-plane settings by its data-plane base URL. hds implements it
/// over its own vaults; for a vault it does not host (Azure Key Vault) it answers `None`, and
/// the checks that need these facts are skipped with a warning.
pub trait VaultDirectory: Send + Sync {
    /// The facts of the vault at `vault_base_url` (`https://host[:port]/`), if known.
    fn vault_facts<'a>(&'a self, vault_base_url: &'a str) -> VaultFactsFuture<'a>;
}

/// A directory that knows no vault: every vault-level check is skipped (with a warning), but
/// the tenant is still checked through the vault's bearer challenge.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoVaultDirectory;

impl VaultDirectory for NoVaultDirectory {
    fn vault_facts<'a>(&'a self, _vault_base_url: &'a str) -> VaultFactsFuture<'a> {
        Box::pin(async { None })
    }
}

/// A key that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedKey {
    /// The key URL as configured (versioned or versionless).
    pub key_url: KeyUrl,
    /// The key version to wrap with: the one the URL names, or the latest.
    pub facts: KeyFacts,
    /// Checks that could not be made (vault settings of a vault hds does not host).
    pub warnings: Vec<String>,
}

/// Who uses a key: the identity that reaches it and the tenant it must be in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUser<'a> {
    /// The managed identity's principal (object) id.
    pub principal_id: &'a str,
    /// The DICOM service's tenant.
    pub tenant_id: &'a str,
}

/// Validates key URLs for DICOM services.
#[derive(Clone)]
pub struct KeyValidator {
    client: KeyVaultClient,
    tokens: Arc<dyn TokenSource>,
    directory: Arc<dyn VaultDirectory>,
}

impl KeyValidator {
    /// A validator calling vaults with `client` and `tokens`, and asking `directory` for vault
    /// settings.
    pub fn new(
        client: KeyVaultClient,
        tokens: Arc<dyn TokenSource>,
        directory: Arc<dyn VaultDirectory>,
    ) -> KeyValidator {
        KeyValidator {
            client,
            tokens,
            directory,
        }
    }

    /// Checks every requirement on `key_url` for a DICOM service whose identity is
    /// `user.principal_id` in tenant `user.tenant_id`, ending with a live wrap/unwrap.
    pub async fn validate(
        &self,
        key_url: &str,
        user: KeyUser<'_>,
    ) -> Result<ValidatedKey, ValidationError> {
        let key_url = KeyUrl::parse(key_url).map_err(|error| {
            ValidationError::new(
                ValidationCode::InvalidKeyEncryptionKeyUrl,
                error.to_string(),
            )
        })?;
        let vault_base_url = key_url.vault_base_url();
        let mut warnings = Vec::new();
        match self.directory.vault_facts(&vault_base_url).await {
            Some(facts) => check_vault_facts(&facts, &vault_base_url, user.tenant_id)?,
            None => {
                // The first request to the vault: a host tokens may not go to is refused here,
                // before any connection.
                self.check_tenant_by_challenge(&key_url, user.tenant_id)
                    .await?;
                let warning = format!(
                    "the settings of vault {vault_base_url} are not known to hds: check yourself that soft delete and purge protection are on, and that a firewall lets trusted services through"
                );
                tracing::warn!(vault = %vault_base_url, "vault settings unknown; soft delete, purge protection and firewall not checked");
                warnings.push(warning);
            }
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let facts = probe_key(
            &self.client,
            self.tokens.as_ref(),
            &key_url,
            user.principal_id,
            now,
            check_key_facts,
        )
        .await?;
        Ok(ValidatedKey {
            key_url,
            facts,
            warnings,
        })
    }

    /// The tenant named in the vault's bearer challenge, compared with the service's.
    async fn check_tenant_by_challenge(
        &self,
        key_url: &KeyUrl,
        tenant_id: &str,
    ) -> Result<(), ValidationError> {
        let vault_base_url = &key_url.vault_base_url();
        let challenge = self
            .client
            .challenge(key_url)
            .await
            .map_err(|error| vault_error(error, &Context::vault(vault_base_url)))?;
        if let Some(vault_tenant) = challenge
            .as_ref()
            .and_then(|challenge| challenge.tenant_id())
            && !vault_tenant.eq_ignore_ascii_case(tenant_id)
        {
            return Err(tenant_mismatch(
                vault_base_url,
                Some(vault_tenant),
                tenant_id,
            ));
        }
        Ok(())
    }
}

fn tenant_mismatch(
    vault_base_url: &str,
    vault_tenant: Option<&str>,
    tenant_id: &str,
) -> ValidationError {
    let vault_tenant = vault_tenant
        .map(|tenant| format!("tenant {tenant}"))
        .unwrap_or_else(|| "another tenant".into());
    ValidationError::new(
        ValidationCode::KeyVaultTenantMismatch,
        format!(
            "The key vault {vault_base_url} belongs to {vault_tenant}, but the DICOM service is in tenant {tenant_id}. Use a key in a vault of the DICOM service's tenant."
        ),
    )
}

/// The vault-level requirements: same tenant, soft delete, purge protection, and a firewall
/// that lets trusted services through.
pub fn check_vault_facts(
    facts: &VaultFacts,
    vault_base_url: &str,
    tenant_id: &str,
) -> Result<(), ValidationError> {
    if !facts.tenant_id.eq_ignore_ascii_case(tenant_id) {
        return Err(tenant_mismatch(
            vault_base_url,
            Some(&facts.tenant_id),
            tenant_id,
        ));
    }
    if !facts.enable_soft_delete {
        return Err(ValidationError::new(
            ValidationCode::KeyVaultSoftDeleteDisabled,
            format!(
                "Soft delete is off on key vault {}. Turn on soft delete (enableSoftDelete=true) so that a deleted key can be recovered; without it, deleting the key destroys the DICOM service's data.",
                facts.resource_id
            ),
        ));
    }
    if !facts.enable_purge_protection {
        return Err(ValidationError::new(
            ValidationCode::KeyVaultPurgeProtectionDisabled,
            format!(
                "Purge protection is off on key vault {}. Turn on purge protection (enablePurgeProtection=true) so that a deleted key cannot be purged before its retention period ends.",
                facts.resource_id
            ),
        ));
    }
    if facts.network_default_deny && !facts.bypass_azure_services {
        return Err(firewall_error(&facts.resource_id));
    }
    Ok(())
}

fn firewall_error(vault: &str) -> ValidationError {
    ValidationError::new(
        ValidationCode::KeyVaultFirewallBlocksTrustedServices,
        format!(
            "The firewall of key vault {vault} blocks the DICOM service. Allow trusted Microsoft services to bypass the firewall (networkAcls.bypass=AzureServices), or allow public access (networkAcls.defaultAction=Allow)."
        ),
    )
}

/// The key-level requirements: type, size and permitted operations.
pub fn check_key_facts(facts: &KeyFacts) -> Result<(), ValidationError> {
    if !SUPPORTED_KEY_TYPES.contains(&facts.kty.as_str()) {
        return Err(ValidationError::new(
            ValidationCode::KeyTypeNotSupported,
            format!(
                "Key {} has type {}; a DICOM service needs an RSA or RSA-HSM key. Create an RSA or RSA-HSM key and use its URL.",
                facts.kid, facts.kty
            ),
        ));
    }
    if !SUPPORTED_KEY_SIZES.contains(&facts.key_size) {
        return Err(ValidationError::new(
            ValidationCode::KeySizeNotSupported,
            format!(
                "Key {} is {} bits; a DICOM service needs a 2048-bit or 3072-bit key. Create a 2048-bit or 3072-bit RSA key and use its URL.",
                facts.kid, facts.key_size
            ),
        ));
    }
    let missing: Vec<&str> = ["wrapKey", "unwrapKey"]
        .into_iter()
        .filter(|operation| !facts.permits(operation))
        .collect();
    if !missing.is_empty() {
        return Err(ValidationError::new(
            ValidationCode::KeyOperationsNotAllowed,
            format!(
                "Key {} does not permit {}. Add wrapKey and unwrapKey to the key's permitted operations (key_ops).",
                facts.kid,
                missing.join(" and ")
            ),
        ));
    }
    Ok(())
}

/// What a vault error is about, for its message.
struct Context<'a> {
    vault_base_url: &'a str,
    key_url: Option<&'a KeyUrl>,
    principal_id: Option<&'a str>,
}

impl<'a> Context<'a> {
    fn vault(vault_base_url: &'a str) -> Context<'a> {
        Context {
            vault_base_url,
            key_url: None,
            principal_id: None,
        }
    }

    fn key_text(&self) -> String {
        self.key_url
            .map(ToString::to_string)
            .unwrap_or_else(|| self.vault_base_url.to_owned())
    }
}

/// Turns a vault failure into the validation error that says what to fix.
fn vault_error(error: CmkError, context: &Context<'_>) -> ValidationError {
    let principal = context.principal_id.unwrap_or("(unknown)");
    let key = context.key_text();
    match error {
        CmkError::InvalidKeyUrl(error) => ValidationError::new(
            ValidationCode::InvalidKeyEncryptionKeyUrl,
            error.to_string(),
        ),
        CmkError::ManagedIdentityNotFound { principal_id } => ValidationError::new(
            ValidationCode::ManagedIdentityNotFound,
            format!(
                "The DICOM service's managed identity (principalId {principal_id}) does not exist or is disabled. Turn on the system-assigned identity or assign an existing user-assigned identity to the DICOM service, grant it access to the key, and update the service."
            ),
        ),
        CmkError::TokenUnavailable(message) => ValidationError::new(
            ValidationCode::ManagedIdentityTokenUnavailable,
            format!(
                "No access token could be obtained for the DICOM service's managed identity (principalId {principal}): {message}. Try again; if it persists, check the identity service."
            ),
        ),
        CmkError::Unauthorized {
            tenant_mismatch: true,
            ..
        } => ValidationError::new(
            ValidationCode::KeyVaultTenantMismatch,
            format!(
                "The key vault {} does not accept tokens from the DICOM service's tenant. Use a key in a vault of the DICOM service's tenant.",
                context.vault_base_url
            ),
        ),
        CmkError::Unauthorized { message, .. }
        | CmkError::Forbidden {
            reason: ForbiddenReason::Rbac | ForbiddenReason::AccessPolicy | ForbiddenReason::Other,
            message,
        } => ValidationError::new(
            ValidationCode::KeyAccessDenied,
            format!(
                "The DICOM service's managed identity (principalId {principal}) may not use key {key}. Assign it the role {CRYPTO_SERVICE_ENCRYPTION_USER_ROLE} ({CRYPTO_SERVICE_ENCRYPTION_USER_ROLE_ID}) on the key vault or the key (a vault using access policies instead needs get, wrapKey and unwrapKey key permissions for it), then update the DICOM service. The vault said: {message}"
            ),
        ),
        CmkError::Forbidden {
            reason: ForbiddenReason::Firewall,
            ..
        } => firewall_error(context.vault_base_url),
        CmkError::Forbidden {
            reason: ForbiddenReason::KeyOperation,
            message,
        } => ValidationError::new(
            ValidationCode::KeyOperationsNotAllowed,
            format!(
                "Key {key} does not permit an operation the DICOM service needs. Add wrapKey and unwrapKey to the key's permitted operations (key_ops). The vault said: {message}"
            ),
        ),
        CmkError::KeyNotFound { .. } => ValidationError::new(
            ValidationCode::KeyVaultKeyNotFound,
            format!(
                "Key {key} was not found. Check the key URL (copy the key identifier from the vault), or recover the key if it was deleted."
            ),
        ),
        CmkError::KeyDisabled { .. } => ValidationError::new(
            ValidationCode::KeyDisabled,
            format!("Key {key} is disabled. Enable the key version, or use an enabled version."),
        ),
        CmkError::KeyNotYetValid { .. } => ValidationError::new(
            ValidationCode::KeyNotYetValid,
            format!(
                "Key {key} is not valid yet (its activation date is in the future). Clear or move its activation date (nbf), or use another version."
            ),
        ),
        CmkError::KeyExpired { .. } => ValidationError::new(
            ValidationCode::KeyExpired,
            format!(
                "Key {key} has expired. Extend its expiration date (exp), or rotate the key and use the new version."
            ),
        ),
        error @ CmkError::DestinationNotAllowed { .. } => ValidationError::new(
            ValidationCode::KeyVaultHostNotAllowed,
            format!(
                "{error}. Use a key in a key vault of this hds (copy the key identifier from the vault), or configure an Azure tenant to use Azure Key Vault."
            ),
        ),
        CmkError::Network(message) => ValidationError::new(
            ValidationCode::KeyVaultUnreachable,
            format!(
                "The key vault {} could not be reached: {message}. Check the key URL's host and that the vault is running.",
                context.vault_base_url
            ),
        ),
        CmkError::Server { status, .. } => ValidationError::new(
            ValidationCode::KeyVaultUnreachable,
            format!(
                "The key vault {} answered HTTP {status}. Try again later.",
                context.vault_base_url
            ),
        ),
        CmkError::BadRequest { message }
        | CmkError::InvalidResponse(message)
        | CmkError::Configuration(message) => ValidationError::new(
            ValidationCode::KeyVaultProbeFailed,
            format!("Using key {key} failed: {message}"),
        ),
    }
}

/// One probe of a key as `principal_id`: a token, the key's facts (with `check` applied to
/// them), and a wrap and unwrap of a random value with the version found. Returns the facts
/// of the version used.
pub(crate) async fn probe_key(
    client: &KeyVaultClient,
    tokens: &dyn TokenSource,
    key_url: &KeyUrl,
    principal_id: &str,
    now: i64,
    check: impl FnOnce(&KeyFacts) -> Result<(), ValidationError>,
) -> Result<KeyFacts, ValidationError> {
    let vault_base_url = key_url.vault_base_url();
    let context = Context {
        vault_base_url: &vault_base_url,
        key_url: Some(key_url),
        principal_id: Some(principal_id),
    };
    let token = Zeroizing::new(
        tokens
            .token(principal_id, VAULT_RESOURCE)
            .await
            .map_err(|error| vault_error(error, &context))?,
    );
    let facts = client
        .get_key(key_url, &token)
        .await
        .map_err(|error| vault_error(error, &context))?;
    facts
        .usability_at(now)
        .map_err(|error| vault_error(error, &context))?;
    check(&facts)?;
    let mut value = Zeroizing::new([0u8; PROBE_VALUE_LEN]);
    rand::rngs::OsRng.fill_bytes(value.as_mut_slice());
    let wrapped: WrappedKey = client
        .wrap_key(&facts.kid, &token, value.as_slice())
        .await
        .map_err(|error| vault_error(error, &context))?;
    let unwrapped = client
        .unwrap_key(&token, &wrapped)
        .await
        .map_err(|error| vault_error(error, &context))?;
    if unwrapped.as_slice() != value.as_slice() {
        return Err(ValidationError::new(
            ValidationCode::KeyVaultProbeFailed,
            format!(
                "Key {} did not return the value it wrapped: the vault is not behaving as a key vault.",
                facts.kid
            ),
        ));
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> KeyFacts {
        KeyFacts {
            kid: KeyUrl::parse("https://vault/keys/k/0123456789abcdef0123456789abcdef").unwrap(),
            kty: "RSA".into(),
            key_size: 2048,
            key_ops: vec!["wrapKey".into(), "unwrapKey".into()],
            enabled: true,
            not_before: None,
            expires: None,
        }
    }

    #[test]
    fn codes_round_trip() {
        for code in ValidationCode::ALL {
            assert_eq!(ValidationCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ValidationCode::parse("Nope"), None);
    }

    #[test]
    fn key_facts_checks_name_what_works() {
        assert!(check_key_facts(&facts()).is_ok());
        let ec = KeyFacts {
            kty: "EC".into(),
            ..facts()
        };
        let error = check_key_facts(&ec).unwrap_err();
        assert_eq!(error.code, ValidationCode::KeyTypeNotSupported);
        assert!(
            error.message.contains("RSA or RSA-HSM"),
            "{}",
            error.message
        );
        let big = KeyFacts {
            key_size: 4096,
            ..facts()
        };
        let error = check_key_facts(&big).unwrap_err();
        assert_eq!(error.code, ValidationCode::KeySizeNotSupported);
        assert!(
            error.message.contains("2048-bit or 3072-bit"),
            "{}",
            error.message
        );
        let hsm = KeyFacts {
            kty: "RSA-HSM".into(),
            key_size: 3072,
            ..facts()
        };
        assert!(check_key_facts(&hsm).is_ok());
        let no_unwrap = KeyFacts {
            key_ops: vec!["wrapKey".into(), "encrypt".into()],
            ..facts()
        };
        let error = check_key_facts(&no_unwrap).unwrap_err();
        assert_eq!(error.code, ValidationCode::KeyOperationsNotAllowed);
        assert!(
            error.message.contains("does not permit unwrapKey."),
            "{}",
            error.message
        );
    }

    #[test]
    fn vault_facts_checks() {
        let good = VaultFacts {
            resource_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v"
                .into(),
            tenant_id: "Tenant-A".into(),
            enable_soft_delete: true,
            enable_purge_protection: true,
            network_default_deny: true,
            bypass_azure_services: true,
        };
        assert!(check_vault_facts(&good, "https://v/", "tenant-a").is_ok());
        let code = |facts: VaultFacts| {
            check_vault_facts(&facts, "https://v/", "tenant-a")
                .unwrap_err()
                .code
        };
        assert_eq!(
            code(VaultFacts {
                tenant_id: "tenant-b".into(),
                ..good.clone()
            }),
            ValidationCode::KeyVaultTenantMismatch
        );
        assert_eq!(
            code(VaultFacts {
                enable_soft_delete: false,
                ..good.clone()
            }),
            ValidationCode::KeyVaultSoftDeleteDisabled
        );
        assert_eq!(
            code(VaultFacts {
                enable_purge_protection: false,
                ..good.clone()
            }),
            ValidationCode::KeyVaultPurgeProtectionDisabled
        );
        assert_eq!(
            code(VaultFacts {
                bypass_azure_services: false,
                ..good.clone()
            }),
            ValidationCode::KeyVaultFirewallBlocksTrustedServices
        );
        assert!(
            check_vault_facts(
                &VaultFacts {
                    network_default_deny: false,
                    bypass_azure_services: false,
                    ..good
                },
                "https://v/",
                "tenant-a"
            )
            .is_ok()
        );
    }

    #[test]
    fn access_denied_names_principal_and_role() {
        let key_url = KeyUrl::parse("https://vault/keys/k").unwrap();
        let context = Context {
            vault_base_url: "https://vault/",
            key_url: Some(&key_url),
            principal_id: Some("principal-1"),
        };
        let error = vault_error(
            CmkError::Forbidden {
                reason: ForbiddenReason::Rbac,
                message: "Caller is not authorized".into(),
            },
            &context,
        );
        assert_eq!(error.code, ValidationCode::KeyAccessDenied);
        assert!(error.message.contains("principal-1"));
        assert!(error.message.contains(CRYPTO_SERVICE_ENCRYPTION_USER_ROLE));
        assert!(
            error
                .message
                .contains(CRYPTO_SERVICE_ENCRYPTION_USER_ROLE_ID)
        );
    }
}
