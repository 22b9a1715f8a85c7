//! Key backups: every version of a key, private keys included, serialized and sealed under
//! the root key, so a backup restores only into a vault of this hds and never leaves it
//! readable. RSA-HSM keys (and versions held in a token) are never backed up.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use zeroize::{Zeroize, Zeroizing};

use super::KeyVaultService;
use super::deletion::deleted_conflict;
use super::store::{VERSION_SELECT, insert_version, version_from_row};
use crate::error::VaultError;
use crate::material::RsaKeyMaterial;
use crate::model::{KeyBundle, KeyOperation, KeyType, KeyVersion, Vault};

/// Root-key purpose of backup blobs. DO NOT CHANGE: issued backups depend on it.
const BACKUP_PURPOSE: &str = "keyvault/key-backup";
/// Format tag of backup blobs, bound in as associated data.
const BACKUP_FORMAT: &str = "hds-keyvault-backup/1";

/// One version inside a backup blob.
#[derive(Serialize, Deserialize)]
struct BackupVersion {
    version: String,
    sequence: i64,
    key_ops: Vec<String>,
    enabled: bool,
    not_before: Option<i64>,
    expires: Option<i64>,
    created: i64,
    updated: i64,
    tags: BTreeMap<String, String>,
    pkcs8: String,
}

impl Drop for BackupVersion {
    fn drop(&mut self) {
        self.pkcs8.zeroize();
    }
}

/// The plaintext of a backup blob (only ever held in memory, sealed before it leaves).
#[derive(Serialize, Deserialize)]
struct BackupContents {
    format: String,
    name: String,
    kty: String,
    versions: Vec<BackupVersion>,
}

impl KeyVaultService {
    /// A backup of every version of a key, sealed under the root key: it restores only into
    /// a vault of this hds. RSA-HSM keys are refused.
    pub async fn backup_key(&self, vault: &Vault, name: &str) -> Result<Vec<u8>, VaultError> {
        let latest = self.load_version(vault, name, None).await?.key;
        if !latest.key_type.is_exportable() {
            return Err(VaultError::NonExtractable(latest.name));
        }
        let vault_key = vault.name.to_ascii_lowercase();
        let key_name = name.to_ascii_lowercase();
        let rows = sqlx::query(&format!(
            "{VERSION_SELECT} WHERE v.vault = $1 AND v.name = $2 ORDER BY v.sequence"
        ))
        .bind(&vault_key)
        .bind(&key_name)
        .fetch_all(self.database.pool())
        .await?;
        let mut versions = Vec::with_capacity(rows.len());
        for row in &rows {
            let sequence: i64 = row.try_get("sequence")?;
            let stored = version_from_row(row)?;
            if stored.token_object.is_some() {
                return Err(VaultError::NonExtractable(stored.key.name));
            }
            let pkcs8 = self.open_private(&vault_key, &key_name, &stored)?;
            let key = stored.key;
            versions.push(BackupVersion {
                version: key.version,
                sequence,
                key_ops: key
                    .key_ops
                    .iter()
                    .map(|operation| operation.as_str().to_owned())
                    .collect(),
                enabled: key.enabled,
                not_before: key.not_before,
                expires: key.expires,
                created: key.created,
                updated: key.updated,
                tags: key.tags,
                pkcs8: STANDARD.encode(pkcs8.as_slice()),
            });
        }
        let contents = BackupContents {
            format: BACKUP_FORMAT.to_owned(),
            name: latest.name,
            kty: latest.key_type.as_str().to_owned(),
            versions,
        };
        let plaintext = Zeroizing::new(
            serde_json::to_vec(&contents)
                .map_err(|error| VaultError::Internal(error.to_string()))?,
        );
        Ok(self
            .root_key
            .seal(BACKUP_PURPOSE, BACKUP_FORMAT.as_bytes(), &plaintext))
    }

    /// Restores a backup made by [`KeyVaultService::backup_key`] in any vault of this hds.
    pub async fn restore_key(&self, vault: &Vault, blob: &[u8]) -> Result<KeyBundle, VaultError> {
        let plaintext = self.root_key.open(BACKUP_PURPOSE, BACKUP_FORMAT.as_bytes(), blob).map_err(|_| {
            VaultError::BadParameter(
                "the backup blob is not valid: it must be the unaltered value of a backup made by this hds (backups are sealed to the hds that made them)".into(),
            )
        })?;
        let contents: BackupContents = serde_json::from_slice(&plaintext).map_err(|_| {
            VaultError::BadParameter("the backup blob's contents are malformed".into())
        })?;
        if contents.format != BACKUP_FORMAT {
            return Err(VaultError::BadParameter(
                "the backup blob has an unknown format".into(),
            ));
        }
        let key_type = KeyType::parse(&contents.kty)?;
        let vault_key = vault.name.to_ascii_lowercase();
        let key_name = contents.name.to_ascii_lowercase();
        let mut transaction = self.database.begin_write().await?;
        let purged = self.purge_expired(&mut transaction, &vault_key).await?;
        let existing =
            sqlx::query("SELECT deleted_date FROM keyvault_keys WHERE vault = $1 AND name = $2")
                .bind(&vault_key)
                .bind(&key_name)
                .fetch_optional(&mut *transaction)
                .await?;
        if let Some(row) = existing {
            if row.try_get::<Option<i64>, _>(0)?.is_some() {
                return Err(deleted_conflict(&contents.name));
            }
            return Err(VaultError::Conflict(format!(
                "Key {} already exists in this vault; delete and purge it, or restore into another vault",
                contents.name
            )));
        }
        sqlx::query("INSERT INTO keyvault_keys (vault, name, display_name) VALUES ($1, $2, $3)")
            .bind(&vault_key)
            .bind(&key_name)
            .bind(&contents.name)
            .execute(&mut *transaction)
            .await?;
        for version in &contents.versions {
            let pkcs8 =
                Zeroizing::new(STANDARD.decode(version.pkcs8.as_bytes()).map_err(|_| {
                    VaultError::BadParameter("the backup blob's contents are malformed".into())
                })?);
            let material = RsaKeyMaterial::from_pkcs8(&pkcs8)?;
            let key_ops = version
                .key_ops
                .iter()
                .map(|operation| KeyOperation::parse(operation))
                .collect::<Result<Vec<_>, _>>()?;
            let key = KeyVersion {
                name: contents.name.clone(),
                version: version.version.clone(),
                key_type,
                key_size: material.size_bits(),
                key_ops,
                enabled: version.enabled,
                not_before: version.not_before,
                expires: version.expires,
                created: version.created,
                updated: version.updated,
                tags: version.tags.clone(),
                modulus: material.modulus().to_vec(),
                public_exponent: material.public_exponent().to_vec(),
            };
            let sealed = self.seal_private(&vault_key, &key_name, &key.version, &pkcs8);
            insert_version(
                &mut transaction,
                &vault_key,
                &key_name,
                version.sequence,
                &key,
                &sealed,
                None,
            )
            .await?;
        }
        transaction.commit().await?;
        self.destroy_token_objects(purged);
        self.get_key(vault, &contents.name, None).await
    }
}
