//! A key's life: creating (generated in software, or inside the PKCS#11 token for RSA-HSM
//! keys when one is configured), importing, rotating, reading, listing and updating its
//! versions, and the input rules of names and tags. Every new version is written by one path,
//! [`KeyVaultService::store_new_version`], whatever made its private key.

use std::collections::BTreeMap;
use std::sync::Arc;

use hds_db::Backend;
use sqlx::Row;

use super::deletion::deleted_conflict;
use super::store::{
    VERSION_SELECT, bad_continuation, insert_version, key_ops_text, tags_text, version_from_row,
};
use super::token::{token_label, token_object_id};
use super::{KeyVaultService, MAX_PAGE_SIZE};
use crate::error::VaultError;
use crate::material::{RsaKeyMaterial, RsaPrivateComponents, key_size_for};
use crate::model::{
    CreateKeyOptions, KeyAttributesInput, KeyBundle, KeyOperation, KeyType, KeyUpdate, KeyVersion,
    Page, Vault,
};
use crate::pkcs11::TokenPublicKey;

/// What to import.
pub struct ImportKeyOptions {
    /// RSA, or RSA-HSM (non-extractable from then on).
    pub key_type: KeyType,
    /// The private key.
    pub components: RsaPrivateComponents,
    /// Permitted operations (default: all).
    pub key_ops: Option<Vec<KeyOperation>>,
    /// Attributes.
    pub attributes: KeyAttributesInput,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// A key version about to be stored: what [`KeyVaultService::store_new_version`] writes.
struct NewVersion<'a> {
    name: &'a str,
    version: String,
    key_type: KeyType,
    material: NewMaterial,
    key_ops: Vec<KeyOperation>,
    attributes: &'a KeyAttributesInput,
    tags: BTreeMap<String, String>,
    /// Where the version comes from: a create or import, or a rotation.
    lineage: Lineage,
}

/// Whether a new version may start a key, and which version it must succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lineage {
    /// A create or import: the key may or may not exist yet.
    CreateOrAdd,
    /// A rotation: the key must exist; with `replaces`, that version must still be the latest
    /// (so two nodes running due rotations at once make one new version, not two). With a
    /// `lifetime` (the rotation policy's `expiryTime`, in seconds), the version expires that
    /// long after the instant stamped as its creation, not after the rotation began: key
    /// generation can take seconds.
    Rotation {
        replaces: Option<String>,
        lifetime: Option<i64>,
    },
}

/// The key material of a version being stored.
enum NewMaterial {
    /// A software key, to be sealed under the root key.
    Software(RsaKeyMaterial),
    /// A private key already in the token: only its public half and `CKA_ID` are stored.
    Token {
        public: TokenPublicKey,
        bits: u32,
        object_id: Vec<u8>,
    },
}

impl KeyVaultService {
    /// Creates a key, or a new version of an existing key (the data plane's `create`).
    pub async fn create_key(
        &self,
        vault: &Vault,
        name: &str,
        options: CreateKeyOptions,
    ) -> Result<KeyBundle, VaultError> {
        validate_key_name(name)?;
        validate_tags(&options.tags)?;
        let key_ops = options
            .key_ops
            .unwrap_or_else(|| KeyOperation::ALL_RSA.to_vec());
        self.generate_and_store(
            vault,
            name,
            options.key_type,
            options.key_size,
            key_ops,
            &options.attributes,
            options.tags,
            Lineage::CreateOrAdd,
        )
        .await
    }

    /// Generates a new version's key (in the token for RSA-HSM keys when one is configured,
    /// otherwise in software) and stores it. A token key whose row cannot be stored is
    /// destroyed again.
    #[allow(clippy::too_many_arguments)]
    async fn generate_and_store(
        &self,
        vault: &Vault,
        name: &str,
        key_type: KeyType,
        key_size: Option<u32>,
        key_ops: Vec<KeyOperation>,
        attributes: &KeyAttributesInput,
        tags: BTreeMap<String, String>,
        lineage: Lineage,
    ) -> Result<KeyBundle, VaultError> {
        let (size, bits) = key_size_for(key_size)?;
        let version = new_version();
        let material = match (key_type, &self.token) {
            (KeyType::RsaHsm, Some(token)) => {
                let object_id = token_object_id(&version);
                let label = token_label(vault, name, &version);
                let token = Arc::clone(token);
                let generated_id = object_id.clone();
                let public = tokio::task::spawn_blocking(move || {
                    token.generate_rsa(bits, &generated_id, &label)
                })
                .await
                .map_err(|error| VaultError::Internal(error.to_string()))??;
                NewMaterial::Token {
                    public,
                    bits,
                    object_id,
                }
            }
            _ => NewMaterial::Software(
                tokio::task::spawn_blocking(move || RsaKeyMaterial::generate(size))
                    .await
                    .map_err(|error| VaultError::Internal(error.to_string()))??,
            ),
        };
        let new = NewVersion {
            name,
            version,
            key_type,
            material,
            key_ops,
            attributes,
            tags,
            lineage,
        };
        self.store_new_version(vault, new).await
    }

    /// ARM PUT on `vaults/keys`: creates the first version when the key is absent, otherwise
    /// returns the latest version unchanged. Returns the key and whether it was created.
    pub async fn create_key_if_absent(
        &self,
        vault: &Vault,
        name: &str,
        options: CreateKeyOptions,
    ) -> Result<(KeyBundle, bool), VaultError> {
        match self.get_key(vault, name, None).await {
            Ok(bundle) => Ok((bundle, false)),
            Err(VaultError::KeyNotFound(_)) => {
                Ok((self.create_key(vault, name, options).await?, true))
            }
            Err(error) => Err(error),
        }
    }

    /// Imports RSA key material as a new version of `name`.
    pub async fn import_key(
        &self,
        vault: &Vault,
        name: &str,
        import: ImportKeyOptions,
    ) -> Result<KeyBundle, VaultError> {
        validate_key_name(name)?;
        let material = RsaKeyMaterial::from_components(&import.components)?;
        let bits = material.size_bits();
        if !(2048..=4096).contains(&bits) {
            return Err(VaultError::BadParameter(format!(
                "imported RSA keys must be 2048 to 4096 bits; this one has {bits}"
            )));
        }
        validate_tags(&import.tags)?;
        let key_ops = import
            .key_ops
            .unwrap_or_else(|| KeyOperation::ALL_RSA.to_vec());
        let version = new_version();
        let material = match (import.key_type, &self.token) {
            (KeyType::RsaHsm, Some(token)) => {
                let object_id = token_object_id(&version);
                token.import_rsa(
                    &import.components,
                    &object_id,
                    &token_label(vault, name, &version),
                )?;
                let public = TokenPublicKey {
                    modulus: material.modulus().to_vec(),
                    public_exponent: material.public_exponent().to_vec(),
                };
                drop(material);
                NewMaterial::Token {
                    public,
                    bits,
                    object_id,
                }
            }
            _ => NewMaterial::Software(material),
        };
        let new = NewVersion {
            name,
            version,
            key_type: import.key_type,
            material,
            key_ops,
            attributes: &import.attributes,
            tags: import.tags,
            lineage: Lineage::CreateOrAdd,
        };
        self.store_new_version(vault, new).await
    }

    /// A new version of an existing key with the latest version's type, size, operations and
    /// tags, expiring as the key's rotation policy says (`expiryTime`), if it says.
    pub async fn rotate_key(&self, vault: &Vault, name: &str) -> Result<KeyBundle, VaultError> {
        self.rotate_key_from(vault, name, None).await
    }

    /// [`KeyVaultService::rotate_key`], refused with a conflict when `replaces` is given and is
    /// no longer the latest version.
    pub(super) async fn rotate_key_from(
        &self,
        vault: &Vault,
        name: &str,
        replaces: Option<String>,
    ) -> Result<KeyBundle, VaultError> {
        let latest = self.load_version(vault, name, None).await?.key;
        let policy = self.rotation_policy_of(vault, name).await?;
        let lifetime = policy.and_then(|policy| policy.lifetime());
        self.generate_and_store(
            vault,
            name,
            latest.key_type,
            Some(latest.key_size),
            latest.key_ops,
            &KeyAttributesInput::default(),
            latest.tags,
            Lineage::Rotation { replaces, lifetime },
        )
        .await
    }

    /// Stores a new version. A version whose private key is already in the token has its
    /// token object destroyed when the row cannot be stored (a deleted key holding the name,
    /// for instance), so no object is left that no row names.
    async fn store_new_version(
        &self,
        vault: &Vault,
        new: NewVersion<'_>,
    ) -> Result<KeyBundle, VaultError> {
        let token_object = match &new.material {
            NewMaterial::Token { object_id, .. } => Some(object_id.clone()),
            NewMaterial::Software(_) => None,
        };
        let stored = self.write_new_version(vault, new).await;
        if let (Err(_), Some(object_id)) = (&stored, token_object) {
            self.destroy_token_objects(vec![object_id]);
        }
        stored
    }

    /// The row writes of [`KeyVaultService::store_new_version`]: seals a software key, then
    /// inserts the version with the next sequence number of its key.
    async fn write_new_version(
        &self,
        vault: &Vault,
        new: NewVersion<'_>,
    ) -> Result<KeyBundle, VaultError> {
        let NewVersion {
            name,
            version,
            key_type,
            material,
            key_ops,
            attributes,
            tags,
            lineage,
        } = new;
        validate_tags(&tags)?;
        let vault_key = vault.name.to_ascii_lowercase();
        let key_name = name.to_ascii_lowercase();
        let now = self.now();
        let (sealed, token_object, key_size, modulus, public_exponent) = match material {
            NewMaterial::Software(material) => {
                let pkcs8 = material.to_pkcs8()?;
                let sealed = self.seal_private(&vault_key, &key_name, &version, &pkcs8);
                (
                    sealed,
                    None,
                    material.size_bits(),
                    material.modulus().to_vec(),
                    material.public_exponent().to_vec(),
                )
            }
            NewMaterial::Token {
                public,
                bits,
                object_id,
            } => (
                Vec::new(),
                Some(object_id),
                bits,
                public.modulus,
                public.public_exponent,
            ),
        };
        let mut transaction = self.database.begin_write().await?;
        let purged = self.purge_expired(&mut transaction, &vault_key).await?;
        if lineage == Lineage::CreateOrAdd {
            // Two nodes creating the same new key at once must not fail on the primary key.
            sqlx::query(
                "INSERT INTO keyvault_keys (vault, name, display_name) VALUES ($1, $2, $3) \
                 ON CONFLICT (vault, name) DO NOTHING",
            )
            .bind(&vault_key)
            .bind(&key_name)
            .bind(name)
            .execute(&mut *transaction)
            .await?;
        }
        // On PostgreSQL the key row is locked so concurrent versions get distinct sequences;
        // SQLite's write transaction already serializes writers.
        let lock = match self.database.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let existing = sqlx::query(&format!(
            "SELECT display_name, deleted_date FROM keyvault_keys WHERE vault = $1 AND name = $2{lock}"
        ))
        .bind(&vault_key)
        .bind(&key_name)
        .fetch_optional(&mut *transaction)
        .await?;
        let display_name = match existing {
            Some(row) => {
                if row.try_get::<Option<i64>, _>(1)?.is_some() {
                    return Err(deleted_conflict(name));
                }
                row.try_get::<String, _>(0)?
            }
            None => return Err(VaultError::KeyNotFound(name.to_owned())),
        };
        if let Lineage::Rotation {
            replaces: Some(replaces),
            ..
        } = &lineage
        {
            let latest: Option<String> = sqlx::query(
                "SELECT version FROM keyvault_key_versions WHERE vault = $1 AND name = $2 ORDER BY sequence DESC LIMIT 1",
            )
            .bind(&vault_key)
            .bind(&key_name)
            .fetch_optional(&mut *transaction)
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
            if latest.as_deref() != Some(replaces.as_str()) {
                return Err(VaultError::Conflict(format!(
                    "key {name} was rotated meanwhile: its latest version is no longer {replaces}"
                )));
            }
        }
        let sequence: i64 = sqlx::query(
            "SELECT COALESCE(MAX(sequence), 0) + 1 FROM keyvault_key_versions WHERE vault = $1 AND name = $2",
        )
        .bind(&vault_key)
        .bind(&key_name)
        .fetch_one(&mut *transaction)
        .await?
        .try_get(0)?;
        let key = KeyVersion {
            name: display_name,
            version,
            key_type,
            key_size,
            key_ops,
            enabled: attributes.enabled.unwrap_or(true),
            not_before: attributes.not_before,
            expires: match lineage {
                Lineage::Rotation {
                    lifetime: Some(lifetime),
                    ..
                } => now.checked_add(lifetime),
                _ => attributes.expires,
            },
            created: now,
            updated: now,
            tags,
            modulus,
            public_exponent,
        };
        insert_version(
            &mut transaction,
            &vault_key,
            &key_name,
            sequence,
            &key,
            &sealed,
            token_object.as_deref(),
        )
        .await?;
        transaction.commit().await?;
        self.destroy_token_objects(purged);
        Ok(self.bundle(vault, key))
    }

    /// A key's latest version (`version` = None) or a given version.
    pub async fn get_key(
        &self,
        vault: &Vault,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyBundle, VaultError> {
        let stored = self.load_version(vault, name, version).await?;
        Ok(self.bundle(vault, stored.key))
    }

    /// Live keys (their latest versions), by name, a page at a time.
    pub async fn list_keys(
        &self,
        vault: &Vault,
        max_results: usize,
        continuation: Option<&str>,
    ) -> Result<Page<KeyBundle>, VaultError> {
        let names = self
            .page_of_names(vault, false, max_results, continuation)
            .await?;
        let mut items = Vec::with_capacity(names.items.len());
        for name in &names.items {
            items.push(self.get_key(vault, name, None).await?);
        }
        Ok(Page {
            items,
            continuation: names.continuation,
        })
    }

    /// The versions of a live key, oldest first, a page at a time.
    pub async fn list_key_versions(
        &self,
        vault: &Vault,
        name: &str,
        max_results: usize,
        continuation: Option<&str>,
    ) -> Result<Page<KeyBundle>, VaultError> {
        self.load_version(vault, name, None).await?;
        let after: i64 = match continuation {
            Some(token) => token.parse().map_err(|_| bad_continuation())?,
            None => 0,
        };
        let limit = max_results.clamp(1, MAX_PAGE_SIZE);
        let rows = sqlx::query(&format!(
            "{VERSION_SELECT} WHERE v.vault = $1 AND v.name = $2 AND v.sequence > $3 ORDER BY v.sequence LIMIT $4"
        ))
        .bind(vault.name.to_ascii_lowercase())
        .bind(name.to_ascii_lowercase())
        .bind(after)
        .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
        .fetch_all(self.database.pool())
        .await?;
        let mut items = Vec::new();
        let mut last_sequence = 0;
        for row in rows.iter().take(limit) {
            last_sequence = row.try_get::<i64, _>("sequence")?;
            items.push(self.bundle(vault, version_from_row(row)?.key));
        }
        let continuation = (rows.len() > limit).then(|| last_sequence.to_string());
        Ok(Page {
            items,
            continuation,
        })
    }

    /// Changes a version's operations, attributes or tags (latest when `version` is None).
    pub async fn update_key(
        &self,
        vault: &Vault,
        name: &str,
        version: Option<&str>,
        update: KeyUpdate,
    ) -> Result<KeyBundle, VaultError> {
        let mut key = self.load_version(vault, name, version).await?.key;
        if let Some(key_ops) = update.key_ops {
            key.key_ops = key_ops;
        }
        if let Some(enabled) = update.enabled {
            key.enabled = enabled;
        }
        if let Some(not_before) = update.not_before {
            key.not_before = not_before;
        }
        if let Some(expires) = update.expires {
            key.expires = expires;
        }
        if let Some(tags) = update.tags {
            validate_tags(&tags)?;
            key.tags = tags;
        }
        key.updated = self.now();
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "UPDATE keyvault_key_versions SET key_ops = $1, enabled = $2, not_before = $3, expires = $4, tags = $5, updated = $6 \
             WHERE vault = $7 AND name = $8 AND version = $9",
        )
        .bind(key_ops_text(&key.key_ops))
        .bind(i64::from(key.enabled))
        .bind(key.not_before)
        .bind(key.expires)
        .bind(tags_text(&key.tags)?)
        .bind(key.updated)
        .bind(vault.name.to_ascii_lowercase())
        .bind(name.to_ascii_lowercase())
        .bind(&key.version)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(self.bundle(vault, key))
    }
}

/// A new version id: 32 lowercase hex digits.
fn new_version() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Tags: at most 15, names and values at most 512 characters (Azure's limits).
fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), VaultError> {
    if tags.len() > 15 {
        return Err(VaultError::BadParameter(format!(
            "a key may have at most 15 tags; got {}",
            tags.len()
        )));
    }
    if let Some((name, _)) = tags
        .iter()
        .find(|(name, value)| name.len() > 512 || value.len() > 512)
    {
        return Err(VaultError::BadParameter(format!(
            "tag '{}' is too long: names and values are limited to 512 characters",
            name.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

/// Key names: 1-127 letters, digits and hyphens.
pub fn validate_key_name(name: &str) -> Result<(), VaultError> {
    if (1..=127).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    {
        Ok(())
    } else {
        Err(VaultError::BadParameter(format!(
            "key name '{}' is invalid: use 1-127 letters, digits and hyphens",
            name.chars().take(130).collect::<String>()
        )))
    }
}
