//! The vault's schema and the rows every concern reads: versions (with their sealed private
//! key or token object id), pages of key names, and the text forms of operations and tags.
//! Kept apart so that one query and one row mapping serve lifecycle, deletion, backup and
//! operations alike.

use std::collections::BTreeMap;

use hds_db::Migration;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{KeyVaultService, MAX_PAGE_SIZE};
use crate::error::VaultError;
use crate::model::{KeyOperation, KeyType, KeyVersion, Page, Vault};

/// The database component name of the vault's migrations.
pub const MIGRATION_COMPONENT: &str = "keyvault";

/// The vault's schema steps.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "vaults, keys and sealed key versions",
        sqlite: include_str!("../../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        description: "PKCS#11 object ids of RSA-HSM key versions held in a token",
        sqlite: include_str!("../../migrations/sqlite/0002_pkcs11.sql"),
        postgres: include_str!("../../migrations/postgres/0002_pkcs11.sql"),
    },
    Migration {
        version: 3,
        description: "key rotation policies",
        sqlite: include_str!("../../migrations/sqlite/0003_rotation_policies.sql"),
        postgres: include_str!("../../migrations/postgres/0003_rotation_policies.sql"),
    },
    Migration {
        version: 4,
        description: "one vault per listener port",
        sqlite: include_str!("../../migrations/sqlite/0004_unique_ports.sql"),
        postgres: include_str!("../../migrations/postgres/0004_unique_ports.sql"),
    },
];

/// A key version as stored, with its sealed private key.
pub(super) struct StoredVersion {
    pub(super) key: KeyVersion,
    /// Empty for a version held in a token.
    pub(super) sealed_private: Vec<u8>,
    /// The `CKA_ID` of a version held in a token.
    pub(super) token_object: Option<Vec<u8>>,
}

impl KeyVaultService {
    /// A live key's latest version (`version` = None) or a given version.
    pub(super) async fn load_version(
        &self,
        vault: &Vault,
        name: &str,
        version: Option<&str>,
    ) -> Result<StoredVersion, VaultError> {
        self.load_version_any_state(vault, name, version, false)
            .await
    }

    /// A version of a live key, or (`deleted`) of a deleted one.
    pub(super) async fn load_version_any_state(
        &self,
        vault: &Vault,
        name: &str,
        version: Option<&str>,
        deleted: bool,
    ) -> Result<StoredVersion, VaultError> {
        let state = if deleted {
            "k.deleted_date IS NOT NULL"
        } else {
            "k.deleted_date IS NULL"
        };
        let vault_key = vault.name.to_ascii_lowercase();
        let key_name = name.to_ascii_lowercase();
        let not_found = || match version {
            Some(version) => VaultError::KeyNotFound(format!("{name}/{version}")),
            None => VaultError::KeyNotFound(name.to_owned()),
        };
        let row = match version {
            Some(version) => {
                sqlx::query(&format!(
                    "{VERSION_SELECT} WHERE v.vault = $1 AND v.name = $2 AND v.version = $3 AND {state}"
                ))
                .bind(&vault_key)
                .bind(&key_name)
                .bind(version.to_ascii_lowercase())
                .fetch_optional(self.database.pool())
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "{VERSION_SELECT} WHERE v.vault = $1 AND v.name = $2 AND {state} ORDER BY v.sequence DESC LIMIT 1"
                ))
                .bind(&vault_key)
                .bind(&key_name)
                .fetch_optional(self.database.pool())
                .await?
            }
        };
        version_from_row(&row.ok_or_else(not_found)?)
    }

    /// The display names of live (or deleted) keys after `continuation`, by name.
    pub(super) async fn page_of_names(
        &self,
        vault: &Vault,
        deleted: bool,
        max_results: usize,
        continuation: Option<&str>,
    ) -> Result<Page<String>, VaultError> {
        let state = if deleted {
            "deleted_date IS NOT NULL"
        } else {
            "deleted_date IS NULL"
        };
        let limit = max_results.clamp(1, MAX_PAGE_SIZE);
        let after = continuation.unwrap_or("");
        let rows = sqlx::query(&format!(
            "SELECT name, display_name FROM keyvault_keys WHERE vault = $1 AND {state} AND name > $2 ORDER BY name LIMIT $3"
        ))
        .bind(vault.name.to_ascii_lowercase())
        .bind(after)
        .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
        .fetch_all(self.database.pool())
        .await?;
        let mut items = Vec::new();
        let mut last = String::new();
        for row in rows.iter().take(limit) {
            last = row.try_get("name")?;
            items.push(row.try_get("display_name")?);
        }
        let continuation = (rows.len() > limit).then_some(last);
        Ok(Page {
            items,
            continuation,
        })
    }
}

/// The columns [`version_from_row`] reads, from a version joined with its key.
pub(super) const VERSION_SELECT: &str = "SELECT k.display_name, v.version, v.sequence, v.kty, v.key_size, v.key_ops, v.enabled, \
    v.not_before, v.expires, v.created, v.updated, v.tags, v.public_n, v.public_e, v.sealed_private, v.pkcs11_id \
    FROM keyvault_key_versions v JOIN keyvault_keys k ON k.vault = v.vault AND k.name = v.name";

/// A version row as read by [`VERSION_SELECT`].
pub(super) fn version_from_row(row: &AnyRow) -> Result<StoredVersion, VaultError> {
    let kty: String = row.try_get("kty")?;
    let key_ops: String = row.try_get("key_ops")?;
    let tags: String = row.try_get("tags")?;
    let key = KeyVersion {
        name: row.try_get("display_name")?,
        version: row.try_get("version")?,
        key_type: KeyType::parse(&kty)?,
        key_size: u32::try_from(row.try_get::<i64, _>("key_size")?).unwrap_or_default(),
        key_ops: key_ops
            .split(',')
            .filter(|operation| !operation.is_empty())
            .map(KeyOperation::parse)
            .collect::<Result<_, _>>()?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        not_before: row.try_get("not_before")?,
        expires: row.try_get("expires")?,
        created: row.try_get("created")?,
        updated: row.try_get("updated")?,
        tags: serde_json::from_str(&tags)
            .map_err(|error| VaultError::Internal(error.to_string()))?,
        modulus: row.try_get("public_n")?,
        public_exponent: row.try_get("public_e")?,
    };
    Ok(StoredVersion {
        key,
        sealed_private: row.try_get("sealed_private")?,
        token_object: row.try_get("pkcs11_id")?,
    })
}

/// Stores one version row; `sealed` is empty for a version held in a token.
pub(super) async fn insert_version(
    transaction: &mut hds_db::WriteTransaction,
    vault_key: &str,
    key_name: &str,
    sequence: i64,
    key: &KeyVersion,
    sealed: &[u8],
    token_object: Option<&[u8]>,
) -> Result<(), VaultError> {
    sqlx::query(
        "INSERT INTO keyvault_key_versions (vault, name, version, sequence, kty, key_size, key_ops, enabled, not_before, \
         expires, created, updated, tags, public_n, public_e, sealed_private, pkcs11_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(vault_key)
    .bind(key_name)
    .bind(&key.version)
    .bind(sequence)
    .bind(key.key_type.as_str())
    .bind(i64::from(key.key_size))
    .bind(key_ops_text(&key.key_ops))
    .bind(i64::from(key.enabled))
    .bind(key.not_before)
    .bind(key.expires)
    .bind(key.created)
    .bind(key.updated)
    .bind(tags_text(&key.tags)?)
    .bind(key.modulus.clone())
    .bind(key.public_exponent.clone())
    .bind(sealed.to_vec())
    .bind(token_object.map(<[u8]>::to_vec))
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Operations as stored: comma-separated.
pub(super) fn key_ops_text(key_ops: &[KeyOperation]) -> String {
    key_ops
        .iter()
        .map(|operation| operation.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Tags as stored: a JSON object.
pub(super) fn tags_text(tags: &BTreeMap<String, String>) -> Result<String, VaultError> {
    serde_json::to_string(tags).map_err(|error| VaultError::Internal(error.to_string()))
}

/// A `$skiptoken` this service did not issue.
pub(super) fn bad_continuation() -> VaultError {
    VaultError::BadParameter(
        "the $skiptoken is not valid; follow the nextLink exactly as returned".into(),
    )
}
