//! Private key material at rest: sealed under the root key, bound to its vault, key and
//! version, and opened only into `Zeroizing` buffers. The one place the service seals or opens
//! a version's private key, so the purpose and binding cannot drift between writers.

use zeroize::Zeroizing;

use super::KeyVaultService;
use super::store::StoredVersion;
use crate::error::VaultError;

/// Root-key purpose of private key material at rest. DO NOT CHANGE: stored keys depend on it.
const KEY_MATERIAL_PURPOSE: &str = "keyvault/key-material";

/// The associated data a version's private key is sealed with: it cannot be moved to another
/// key, version or vault row unnoticed.
pub(super) fn sealing_context(vault_key: &str, key_name: &str, version: &str) -> String {
    format!("{vault_key}/{key_name}/{version}")
}

impl KeyVaultService {
    /// Seals a version's PKCS#8 private key under the root key.
    pub(super) fn seal_private(
        &self,
        vault_key: &str,
        key_name: &str,
        version: &str,
        pkcs8: &[u8],
    ) -> Vec<u8> {
        self.root_key.seal(
            KEY_MATERIAL_PURPOSE,
            sealing_context(vault_key, key_name, version).as_bytes(),
            pkcs8,
        )
    }

    /// Opens a stored version's sealed private key; a seal that does not open is
    /// [`VaultError::Sealed`].
    pub(super) fn open_private(
        &self,
        vault_key: &str,
        key_name: &str,
        stored: &StoredVersion,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.root_key
            .open(
                KEY_MATERIAL_PURPOSE,
                sealing_context(vault_key, key_name, &stored.key.version).as_bytes(),
                &stored.sealed_private,
            )
            .map_err(|_| VaultError::Sealed)
    }
}
