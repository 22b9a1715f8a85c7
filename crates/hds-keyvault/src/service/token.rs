//! The PKCS#11 token's side of RSA-HSM key versions: the `CKA_ID` and `CKA_LABEL` a version's
//! object gets, finding the objects of a key or vault, and destroying them once their rows are
//! gone. The token itself (module, session, mechanisms) is [`crate::pkcs11`]; this module is
//! only what the service keeps in step with it.

use sqlx::Row;

use super::KeyVaultService;
use crate::error::VaultError;
use crate::model::Vault;
use crate::pkcs11::Pkcs11Token;

impl KeyVaultService {
    /// The token, for an operation on a version held in one.
    pub(super) fn token_for_operation(&self) -> Result<&Pkcs11Token, VaultError> {
        self.token.as_deref().ok_or_else(|| {
            VaultError::Internal(
                "this key version's private key is held in a PKCS#11 token, but the vault was started without one (configure pkcs11)".into(),
            )
        })
    }

    /// Destroys the token objects of purged versions. Failures are logged and left behind:
    /// the rows are gone, so the objects are unreachable through the vault either way.
    pub(super) fn destroy_token_objects(&self, object_ids: Vec<Vec<u8>>) {
        if object_ids.is_empty() {
            return;
        }
        let Some(token) = self.token.as_deref() else {
            tracing::warn!(
                objects = object_ids.len(),
                "purged RSA-HSM key versions left objects in a PKCS#11 token that is not configured"
            );
            return;
        };
        for object_id in object_ids {
            if let Err(error) = token.destroy(&object_id) {
                tracing::warn!(
                    object_id = %hex::encode(&object_id),
                    %error,
                    "a purged RSA-HSM key version's PKCS#11 object could not be destroyed"
                );
            }
        }
    }
}

/// The `CKA_ID`s of the token-held versions of a vault, or of one key in it.
pub(super) async fn token_objects_of(
    transaction: &mut hds_db::WriteTransaction,
    vault_key: &str,
    key_name: Option<&str>,
) -> Result<Vec<Vec<u8>>, VaultError> {
    let rows = match key_name {
        Some(key_name) => {
            sqlx::query(
                "SELECT pkcs11_id FROM keyvault_key_versions WHERE vault = $1 AND name = $2 AND pkcs11_id IS NOT NULL",
            )
            .bind(vault_key)
            .bind(key_name)
            .fetch_all(&mut **transaction)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT pkcs11_id FROM keyvault_key_versions WHERE vault = $1 AND pkcs11_id IS NOT NULL",
            )
            .bind(vault_key)
            .fetch_all(&mut **transaction)
            .await?
        }
    };
    rows.iter()
        .map(|row| row.try_get::<Vec<u8>, _>(0).map_err(VaultError::from))
        .collect()
}

/// The `CKA_ID` of a token-held version: the version's 16 random bytes, unique across vaults.
pub(super) fn token_object_id(version: &str) -> Vec<u8> {
    hex::decode(version).unwrap_or_else(|_| version.as_bytes().to_vec())
}

/// The `CKA_LABEL` of a token-held version, naming what it belongs to for token tools.
pub(super) fn token_label(vault: &Vault, name: &str, version: &str) -> String {
    format!(
        "hds-keyvault/{}/{}/{version}",
        vault.name.to_ascii_lowercase(),
        name.to_ascii_lowercase()
    )
}
