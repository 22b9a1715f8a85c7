//! The end of a key's life: soft delete (recoverable until the vault's retention ends),
//! recovery, purge, and purge protection (no purge before the retention ends). Deleted keys
//! past their retention are purged lazily, inside the next write that could collide with
//! them, rather than by a timer, so any node sees the same state.

use sqlx::Row;

use super::KeyVaultService;
use super::token::token_objects_of;
use crate::error::VaultError;
use crate::model::{DeletedKey, KeyBundle, Page, Vault};

impl KeyVaultService {
    /// Deletes a key: soft (recoverable until the retention ends) when the vault keeps
    /// deleted keys, otherwise for good.
    pub async fn delete_key(&self, vault: &Vault, name: &str) -> Result<DeletedKey, VaultError> {
        let latest = self.load_version(vault, name, None).await?.key;
        let now = self.now();
        let vault_key = vault.name.to_ascii_lowercase();
        let key_name = name.to_ascii_lowercase();
        let retention_days = i64::from(vault.properties.soft_delete_retention_in_days);
        let mut token_objects = Vec::new();
        let mut transaction = self.database.begin_write().await?;
        let scheduled_purge_date = if vault.properties.enable_soft_delete {
            let scheduled = now + retention_days * 86_400;
            sqlx::query(
                "UPDATE keyvault_keys SET deleted_date = $1, scheduled_purge_date = $2 WHERE vault = $3 AND name = $4",
            )
            .bind(now)
            .bind(scheduled)
            .bind(&vault_key)
            .bind(&key_name)
            .execute(&mut *transaction)
            .await?;
            scheduled
        } else {
            token_objects = remove_key(&mut transaction, &vault_key, &key_name).await?;
            now
        };
        transaction.commit().await?;
        if !vault.properties.enable_soft_delete {
            self.forget_removed_key(&vault_key, &key_name, token_objects);
        }
        Ok(DeletedKey {
            bundle: self.bundle(vault, latest),
            deleted_date: now,
            scheduled_purge_date,
        })
    }

    /// A deleted key.
    pub async fn get_deleted_key(
        &self,
        vault: &Vault,
        name: &str,
    ) -> Result<DeletedKey, VaultError> {
        let vault_key = vault.name.to_ascii_lowercase();
        self.purge_expired_now(&vault_key).await?;
        let row = sqlx::query(
            "SELECT deleted_date, scheduled_purge_date FROM keyvault_keys WHERE vault = $1 AND name = $2 AND deleted_date IS NOT NULL",
        )
        .bind(&vault_key)
        .bind(name.to_ascii_lowercase())
        .fetch_optional(self.database.pool())
        .await?
        .ok_or_else(|| VaultError::DeletedKeyNotFound(name.to_owned()))?;
        let deleted_date: i64 = row.try_get::<Option<i64>, _>(0)?.unwrap_or_default();
        let scheduled_purge_date: i64 = row.try_get::<Option<i64>, _>(1)?.unwrap_or(deleted_date);
        let latest = self
            .load_version_any_state(vault, name, None, true)
            .await?
            .key;
        Ok(DeletedKey {
            bundle: self.bundle(vault, latest),
            deleted_date,
            scheduled_purge_date,
        })
    }

    /// Deleted keys, by name, a page at a time.
    pub async fn list_deleted_keys(
        &self,
        vault: &Vault,
        max_results: usize,
        continuation: Option<&str>,
    ) -> Result<Page<DeletedKey>, VaultError> {
        let vault_key = vault.name.to_ascii_lowercase();
        self.purge_expired_now(&vault_key).await?;
        let names = self
            .page_of_names(vault, true, max_results, continuation)
            .await?;
        let mut items = Vec::with_capacity(names.items.len());
        for name in &names.items {
            items.push(self.get_deleted_key(vault, name).await?);
        }
        Ok(Page {
            items,
            continuation: names.continuation,
        })
    }

    /// Brings a deleted key back with all its versions.
    pub async fn recover_deleted_key(
        &self,
        vault: &Vault,
        name: &str,
    ) -> Result<KeyBundle, VaultError> {
        self.get_deleted_key(vault, name).await?;
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "UPDATE keyvault_keys SET deleted_date = NULL, scheduled_purge_date = NULL WHERE vault = $1 AND name = $2",
        )
        .bind(vault.name.to_ascii_lowercase())
        .bind(name.to_ascii_lowercase())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        self.get_key(vault, name, None).await
    }

    /// Removes a deleted key for good; refused under purge protection.
    pub async fn purge_deleted_key(&self, vault: &Vault, name: &str) -> Result<(), VaultError> {
        self.get_deleted_key(vault, name).await?;
        if vault.properties.enable_purge_protection {
            return Err(VaultError::PurgeProtected);
        }
        let vault_key = vault.name.to_ascii_lowercase();
        let key_name = name.to_ascii_lowercase();
        let mut transaction = self.database.begin_write().await?;
        let token_objects = remove_key(&mut transaction, &vault_key, &key_name).await?;
        transaction.commit().await?;
        self.forget_removed_key(&vault_key, &key_name, token_objects);
        Ok(())
    }

    /// Purges the vault's deleted keys whose retention has ended, in a transaction of its own.
    async fn purge_expired_now(&self, vault_key: &str) -> Result<(), VaultError> {
        let mut transaction = self.database.begin_write().await?;
        let purged = self.purge_expired(&mut transaction, vault_key).await?;
        transaction.commit().await?;
        self.destroy_token_objects(purged);
        Ok(())
    }

    /// After a removed key's rows are committed: drops its opened versions and destroys its
    /// token objects.
    fn forget_removed_key(&self, vault_key: &str, key_name: &str, token_objects: Vec<Vec<u8>>) {
        self.opened_keys.forget(&format!("{vault_key}/{key_name}/"));
        self.destroy_token_objects(token_objects);
    }

    /// Purges deleted keys whose retention has ended. Returns the token objects of the purged
    /// versions, to destroy once the transaction has committed.
    pub(super) async fn purge_expired(
        &self,
        transaction: &mut hds_db::WriteTransaction,
        vault_key: &str,
    ) -> Result<Vec<Vec<u8>>, VaultError> {
        let expired: Vec<String> = sqlx::query(
            "SELECT name FROM keyvault_keys WHERE vault = $1 AND deleted_date IS NOT NULL AND scheduled_purge_date <= $2",
        )
        .bind(vault_key)
        .bind(self.now())
        .fetch_all(&mut **transaction)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
        let mut token_objects = Vec::new();
        for key_name in expired {
            token_objects.extend(remove_key(transaction, vault_key, &key_name).await?);
            self.opened_keys.forget(&format!("{vault_key}/{key_name}/"));
        }
        Ok(token_objects)
    }
}

/// Deletes a key and its versions; returns the token objects of those versions.
async fn remove_key(
    transaction: &mut hds_db::WriteTransaction,
    vault_key: &str,
    key_name: &str,
) -> Result<Vec<Vec<u8>>, VaultError> {
    let token_objects = token_objects_of(transaction, vault_key, Some(key_name)).await?;
    sqlx::query("DELETE FROM keyvault_rotation_policies WHERE vault = $1 AND name = $2")
        .bind(vault_key)
        .bind(key_name)
        .execute(&mut **transaction)
        .await?;
    sqlx::query("DELETE FROM keyvault_key_versions WHERE vault = $1 AND name = $2")
        .bind(vault_key)
        .bind(key_name)
        .execute(&mut **transaction)
        .await?;
    sqlx::query("DELETE FROM keyvault_keys WHERE vault = $1 AND name = $2")
        .bind(vault_key)
        .bind(key_name)
        .execute(&mut **transaction)
        .await?;
    Ok(token_objects)
}

/// A name held by a deleted key, which may be recovered or purged but not reused.
pub(super) fn deleted_conflict(name: &str) -> VaultError {
    VaultError::Conflict(format!(
        "Key {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can only be recovered or purged."
    ))
}
