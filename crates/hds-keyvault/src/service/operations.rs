//! Cryptographic operations with a key version: encrypt and wrap (public key), decrypt and
//! unwrap, sign (private key, in software or inside the PKCS#11 token), verify. Each
//! operation first checks the version is usable now (enabled, within its dates) and permits
//! the operation; the opened-key cache spares re-opening and re-parsing the private key, while
//! attributes are re-read every time so a disabled key stops at once, on every node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::KeyVaultService;
use super::sealing::sealing_context;
use crate::error::VaultError;
use crate::material::{EncryptionAlgorithm, RsaKeyMaterial, RsaPublicKey, SignatureAlgorithm};
use crate::model::{KeyBundle, KeyOperation, Vault};
use crate::pkcs11::oaep_256_refused;

/// Opened keys kept in memory; beyond this the cache starts over.
const KEY_CACHE_LIMIT: usize = 4096;

/// A key version ready for operations.
enum OpenedKey {
    /// The private key, opened from its sealed form.
    Software(RsaKeyMaterial),
    /// The public key; the private key stays in the token under `object_id` (`CKA_ID`).
    Token {
        public: RsaPublicKey,
        object_id: Vec<u8>,
    },
}

/// Opened keys by `vault/name/version` (the sealing context): opening and parsing a key costs
/// more than the RSA operation itself. Entries are dropped when their key is removed.
#[derive(Default)]
pub(super) struct OpenedKeyCache(Mutex<HashMap<String, Arc<OpenedKey>>>);

impl OpenedKeyCache {
    fn get(&self, cache_key: &str) -> Result<Option<Arc<OpenedKey>>, VaultError> {
        Ok(self
            .0
            .lock()
            .map_err(|_| poisoned())?
            .get(cache_key)
            .cloned())
    }

    fn insert(&self, cache_key: String, opened: Arc<OpenedKey>) -> Result<(), VaultError> {
        let mut cache = self.0.lock().map_err(|_| poisoned())?;
        if cache.len() >= KEY_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(cache_key, opened);
        Ok(())
    }

    /// Drops every entry under `prefix` (`vault/` or `vault/name/`).
    pub(super) fn forget(&self, prefix: &str) {
        if let Ok(mut opened) = self.0.lock() {
            opened.retain(|cache_key, _| !cache_key.starts_with(prefix));
        }
    }
}

impl KeyVaultService {
    /// Encrypts or wraps with the public key of a version. Returns the version's `kid` and
    /// the result. For a version held in a token the algorithm must be one the token can
    /// decrypt, so RSA-OAEP-256 is refused here too.
    pub async fn encrypt(
        &self,
        vault: &Vault,
        name: &str,
        version: Option<&str>,
        operation: KeyOperation,
        algorithm: EncryptionAlgorithm,
        value: &[u8],
    ) -> Result<(String, Vec<u8>), VaultError> {
        let (bundle, opened) = self.usable_key(vault, name, version, operation).await?;
        let result = match opened.as_ref() {
            OpenedKey::Software(material) => material.encrypt(algorithm, value)?,
            OpenedKey::Token { public, .. } => {
                if algorithm == EncryptionAlgorithm::RsaOaep256 {
                    return Err(oaep_256_refused());
                }
                public.encrypt(algorithm, value)?
            }
        };
        Ok((bundle.key_uri_with_version(), result))
    }

    /// Decrypts or unwraps with the private key of a version (inside the token for a version
    /// held in one).
    pub async fn decrypt(
        &self,
        vault: &Vault,
        name: &str,
        version: Option<&str>,
        operation: KeyOperation,
        algorithm: EncryptionAlgorithm,
        value: &[u8],
    ) -> Result<(String, Zeroizing<Vec<u8>>), VaultError> {
        let (bundle, opened) = self.usable_key(vault, name, version, operation).await?;
        let result = match opened.as_ref() {
            OpenedKey::Software(material) => material.decrypt(algorithm, value)?,
            OpenedKey::Token { object_id, .. } => self
                .token_for_operation()?
                .decrypt(object_id, algorithm, value)?,
        };
        Ok((bundle.key_uri_with_version(), result))
    }

    /// Signs a digest (inside the token for a version held in one).
    pub async fn sign(
        &self,
        vault: &Vault,
        name: &str,
        version: Option<&str>,
        algorithm: SignatureAlgorithm,
        digest: &[u8],
    ) -> Result<(String, Vec<u8>), VaultError> {
        let (bundle, opened) = self
            .usable_key(vault, name, version, KeyOperation::Sign)
            .await?;
        let signature = match opened.as_ref() {
            OpenedKey::Software(material) => material.sign_digest(algorithm, digest)?,
            OpenedKey::Token { object_id, .. } => self
                .token_for_operation()?
                .sign_digest(object_id, algorithm, digest)?,
        };
        Ok((bundle.key_uri_with_version(), signature))
    }

    /// Verifies a signature over a digest.
    pub async fn verify(
        &self,
        vault: &Vault,
        name: &str,
        version: Option<&str>,
        algorithm: SignatureAlgorithm,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool, VaultError> {
        let (_, opened) = self
            .usable_key(vault, name, version, KeyOperation::Verify)
            .await?;
        match opened.as_ref() {
            OpenedKey::Software(material) => material.verify_digest(algorithm, digest, signature),
            OpenedKey::Token { public, .. } => public.verify_digest(algorithm, digest, signature),
        }
    }

    /// A version checked for `operation` now, with its opened key.
    async fn usable_key(
        &self,
        vault: &Vault,
        name: &str,
        version: Option<&str>,
        operation: KeyOperation,
    ) -> Result<(KeyBundle, Arc<OpenedKey>), VaultError> {
        let stored = self.load_version(vault, name, version).await?;
        stored.key.usability(operation.as_str(), self.now())?;
        if !stored.key.key_ops.contains(&operation) {
            return Err(VaultError::OperationNotPermitted {
                operation: operation.as_str().to_owned(),
            });
        }
        let vault_key = vault.name.to_ascii_lowercase();
        let key_name = name.to_ascii_lowercase();
        let cache_key = sealing_context(&vault_key, &key_name, &stored.key.version);
        let opened = match self.opened_keys.get(&cache_key)? {
            Some(opened) => opened,
            None => {
                let opened = match &stored.token_object {
                    Some(object_id) => OpenedKey::Token {
                        public: RsaPublicKey::from_components(
                            &stored.key.modulus,
                            &stored.key.public_exponent,
                        )?,
                        object_id: object_id.clone(),
                    },
                    None => {
                        let pkcs8 = self.open_private(&vault_key, &key_name, &stored)?;
                        OpenedKey::Software(RsaKeyMaterial::from_pkcs8(&pkcs8)?)
                    }
                };
                let opened = Arc::new(opened);
                self.opened_keys.insert(cache_key, Arc::clone(&opened))?;
                opened
            }
        };
        Ok((self.bundle(vault, stored.key), opened))
    }
}

fn poisoned() -> VaultError {
    VaultError::Internal("key cache lock poisoned".into())
}
