//! Rotation policies and automatic rotation: a key's policy as stored (one row per key, JSON),
//! and the pass that rotates every key whose Rotate action has fallen due, run by
//! [`spawn_rotation_task`] on an interval and by tests with a manual clock. A rotation is due
//! by the latest version alone (created + `timeAfterCreate`, or expiry - `timeBeforeExpiry`), so
//! the new version it makes is not due again until its own time comes; a pass that finds the
//! key rotated meanwhile (another node, a user) skips it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;

use super::KeyVaultService;
use crate::error::VaultError;
use crate::model::Vault;
use crate::rotation::{RotationPolicy, StoredRotationPolicy};

impl KeyVaultService {
    /// A live key's rotation policy: the one set, or Key Vault's default when none was.
    pub async fn get_rotation_policy(
        &self,
        vault: &Vault,
        name: &str,
    ) -> Result<StoredRotationPolicy, VaultError> {
        self.load_version(vault, name, None).await?;
        Ok(self
            .stored_rotation_policy(vault, name)
            .await?
            .unwrap_or_else(|| StoredRotationPolicy {
                policy: RotationPolicy::default_policy(),
                created: None,
                updated: None,
            }))
    }

    /// Sets a live key's rotation policy (validated first); the first set is its creation time.
    pub async fn set_rotation_policy(
        &self,
        vault: &Vault,
        name: &str,
        policy: RotationPolicy,
    ) -> Result<StoredRotationPolicy, VaultError> {
        policy.validate()?;
        self.load_version(vault, name, None).await?;
        let text = serde_json::to_string(&policy)
            .map_err(|error| VaultError::Internal(error.to_string()))?;
        let now = self.now();
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "INSERT INTO keyvault_rotation_policies (vault, name, policy, created, updated) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (vault, name) DO UPDATE SET policy = excluded.policy, updated = excluded.updated",
        )
        .bind(vault.name.to_ascii_lowercase())
        .bind(name.to_ascii_lowercase())
        .bind(text)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        self.stored_rotation_policy(vault, name)
            .await?
            .ok_or_else(|| VaultError::Internal("the rotation policy just stored is gone".into()))
    }

    /// The policy set on a key, if one was.
    pub(super) async fn rotation_policy_of(
        &self,
        vault: &Vault,
        name: &str,
    ) -> Result<Option<RotationPolicy>, VaultError> {
        Ok(self
            .stored_rotation_policy(vault, name)
            .await?
            .map(|stored| stored.policy))
    }

    async fn stored_rotation_policy(
        &self,
        vault: &Vault,
        name: &str,
    ) -> Result<Option<StoredRotationPolicy>, VaultError> {
        let row = sqlx::query(
            "SELECT policy, created, updated FROM keyvault_rotation_policies WHERE vault = $1 AND name = $2",
        )
        .bind(vault.name.to_ascii_lowercase())
        .bind(name.to_ascii_lowercase())
        .fetch_optional(self.database.pool())
        .await?;
        row.map(|row| {
            let text: String = row.try_get("policy")?;
            Ok(StoredRotationPolicy {
                policy: parse_stored(&text)?,
                created: Some(row.try_get("created")?),
                updated: Some(row.try_get("updated")?),
            })
        })
        .transpose()
    }

    /// Rotates every live key whose policy's Rotate action is due by the service's clock;
    /// returns the new versions' key ids. A key that fails is logged (without key material)
    /// and left for the next pass; the others still rotate.
    pub async fn rotate_due_keys(&self) -> Result<Vec<String>, VaultError> {
        let rows = sqlx::query(
            "SELECT p.vault, k.display_name, p.policy FROM keyvault_rotation_policies p \
             JOIN keyvault_keys k ON k.vault = p.vault AND k.name = p.name \
             WHERE k.deleted_date IS NULL ORDER BY p.vault, p.name",
        )
        .fetch_all(self.database.pool())
        .await?;
        let now = self.now();
        let mut rotated = Vec::new();
        for row in rows {
            let vault_name: String = row.try_get("vault")?;
            let key_name: String = row.try_get("display_name")?;
            let text: String = row.try_get("policy")?;
            match self.rotate_if_due(&vault_name, &key_name, &text, now).await {
                Ok(Some(kid)) => {
                    tracing::info!(vault = %vault_name, key = %key_name, "key rotated by its rotation policy");
                    rotated.push(kid);
                }
                Ok(None) => {}
                Err(VaultError::Conflict(_)) => {}
                Err(error) => {
                    tracing::warn!(vault = %vault_name, key = %key_name, %error, "automatic key rotation failed; retried at the next pass");
                }
            }
        }
        Ok(rotated)
    }

    async fn rotate_if_due(
        &self,
        vault_name: &str,
        key_name: &str,
        policy: &str,
        now: i64,
    ) -> Result<Option<String>, VaultError> {
        let policy = parse_stored(policy)?;
        let vault = self.get_vault(vault_name).await?;
        let latest = self.load_version(&vault, key_name, None).await?.key;
        match policy.rotation_due_at(&latest) {
            Some(due) if due <= now => {
                let bundle = self
                    .rotate_key_from(&vault, key_name, Some(latest.version))
                    .await?;
                Ok(Some(bundle.key_uri_with_version()))
            }
            _ => Ok(None),
        }
    }
}

fn parse_stored(text: &str) -> Result<RotationPolicy, VaultError> {
    serde_json::from_str(text).map_err(|error| VaultError::Internal(error.to_string()))
}

/// Runs [`KeyVaultService::rotate_due_keys`] every `interval` until the task is aborted. Every
/// node may run it: a rotation succeeds only while the version it replaces is still the latest.
pub fn spawn_rotation_task(
    service: Arc<KeyVaultService>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = service.rotate_due_keys().await {
                tracing::warn!(%error, "the automatic key rotation pass failed");
            }
        }
    })
}
