//! The customer's key in a vault as a [`KeyEncryptionKey`]: every wrap and unwrap is one vault
//! call made with a token of the DICOM service's managed identity.

use std::sync::Arc;

use hds_crypto::keys::{KekError, KekFuture, KeyEncryptionKey, WrappedKey};
use zeroize::Zeroizing;

use crate::client::{KeyVaultClient, VAULT_RESOURCE, WrapAlgorithm};
use crate::error::{CmkError, ForbiddenReason};
use crate::token::TokenSource;
use crate::url::{KeyUrl, KeyUrlError};

/// A key-encryption key held in a key vault, used as one managed identity.
///
/// New wraps use the one key version it was built with (a versioned key URL), so the wrapped
/// service root key names the exact version needed to unwrap it. Unwraps use the version the
/// wrapped key names, which may be an older version of the same key (after a rotation, before
/// the rewrap); a wrapped key of another key is refused without calling the vault.
pub struct RemoteKek {
    client: KeyVaultClient,
    tokens: Arc<dyn TokenSource>,
    principal_id: String,
    key_url: KeyUrl,
    key_id: String,
}

impl std::fmt::Debug for RemoteKek {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RemoteKek")
            .field("key_id", &self.key_id)
            .field("principal_id", &self.principal_id)
            .finish_non_exhaustive()
    }
}

impl RemoteKek {
    /// The key version `key_url` names, used as `principal_id`. The URL must be versioned
    /// (resolve a versionless one with [`RemoteKek::latest`]).
    pub fn new(
        client: KeyVaultClient,
        tokens: Arc<dyn TokenSource>,
        principal_id: impl Into<String>,
        key_url: KeyUrl,
    ) -> Result<RemoteKek, KeyUrlError> {
        if !key_url.is_versioned() {
            return Err(KeyUrlError::VersionRequired);
        }
        Ok(RemoteKek {
            key_id: key_url.to_string(),
            client,
            tokens,
            principal_id: principal_id.into(),
            key_url,
        })
    }

    /// The latest version of the key `key_url` names (asked of the vault now, as
    /// `principal_id`), or the version it names.
    pub async fn latest(
        client: KeyVaultClient,
        tokens: Arc<dyn TokenSource>,
        principal_id: impl Into<String>,
        key_url: &KeyUrl,
    ) -> Result<RemoteKek, CmkError> {
        let principal_id = principal_id.into();
        let token = tokens.token(&principal_id, VAULT_RESOURCE).await?;
        let facts = client.get_key(key_url, &token).await?;
        Ok(RemoteKek::new(client, tokens, principal_id, facts.kid)?)
    }

    /// The key version new wraps use.
    pub fn key_url(&self) -> &KeyUrl {
        &self.key_url
    }

    async fn wrap(&self, plaintext_key: &[u8]) -> Result<WrappedKey, KekError> {
        let token = self
            .tokens
            .token(&self.principal_id, VAULT_RESOURCE)
            .await
            .map_err(kek_error)?;
        self.client
            .wrap_key(&self.key_url, &token, plaintext_key)
            .await
            .map_err(|error| match error {
                CmkError::BadRequest { .. } | CmkError::InvalidResponse(_) => KekError::WrapFailed,
                other => kek_error(other),
            })
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let wrapped_by = KeyUrl::parse(&wrapped.kid).map_err(|_| KekError::WrongKey)?;
        if !wrapped_by.is_versioned() || !wrapped_by.same_key(&self.key_url) {
            return Err(KekError::WrongKey);
        }
        if WrapAlgorithm::from_name(&wrapped.algorithm).is_none() {
            return Err(KekError::UnsupportedAlgorithm(wrapped.algorithm.clone()));
        }
        let token = self
            .tokens
            .token(&self.principal_id, VAULT_RESOURCE)
            .await
            .map_err(kek_error)?;
        self.client
            .unwrap_key(&token, wrapped)
            .await
            .map_err(|error| match error {
                // The vault refuses a ciphertext that does not decrypt under the key as a bad
                // parameter: the wrapped key is altered or was wrapped under another key.
                CmkError::BadRequest { .. } | CmkError::InvalidResponse(_) => {
                    KekError::UnwrapFailed
                }
                other => kek_error(other),
            })
    }
}

impl KeyEncryptionKey for RemoteKek {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn wrap_key<'a>(&'a self, plaintext_key: &'a [u8]) -> KekFuture<'a, WrappedKey> {
        Box::pin(self.wrap(plaintext_key))
    }

    fn unwrap_key<'a>(&'a self, wrapped: &'a WrappedKey) -> KekFuture<'a, Zeroizing<Vec<u8>>> {
        Box::pin(self.unwrap(wrapped))
    }
}

/// Folds a vault failure into what the key hierarchy distinguishes.
pub(crate) fn kek_error(error: CmkError) -> KekError {
    match error {
        CmkError::Network(message) => KekError::Unavailable(message),
        CmkError::Server { status, .. } => {
            KekError::Unavailable(format!("the key vault answered HTTP {status}"))
        }
        CmkError::TokenUnavailable(message) => KekError::Unavailable(message),
        CmkError::ManagedIdentityNotFound { .. }
        | CmkError::DestinationNotAllowed { .. }
        | CmkError::Unauthorized { .. }
        | CmkError::Forbidden {
            reason:
                ForbiddenReason::Rbac | ForbiddenReason::AccessPolicy | ForbiddenReason::Firewall,
            ..
        } => KekError::AccessDenied,
        CmkError::KeyNotFound { .. }
        | CmkError::KeyDisabled { .. }
        | CmkError::KeyNotYetValid { .. }
        | CmkError::KeyExpired { .. }
        | CmkError::Forbidden { .. } => KekError::KeyNotFoundOrDisabled,
        CmkError::InvalidKeyUrl(_) => KekError::WrongKey,
        CmkError::BadRequest { .. } | CmkError::InvalidResponse(_) | CmkError::Configuration(_) => {
            KekError::Unavailable(error.to_string())
        }
    }
}
