//! The vault service: vaults and keys over the shared database, private keys sealed under the
//! root key. Both the data plane ([`crate::http`]) and the future ARM provider call this; it
//! checks no access itself (each caller authorizes in its own terms).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, TcpListener};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hds_crypto::root::RootKey;
use hds_db::{Backend, Database, Migration};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use zeroize::{Zeroize, Zeroizing};

use crate::error::VaultError;
use crate::material::{
    EncryptionAlgorithm, RsaKeyMaterial, RsaPrivateComponents, RsaPublicKey, SignatureAlgorithm,
    key_size_for,
};
use crate::model::{
    CreateKeyOptions, DeletedKey, KeyAttributesInput, KeyBundle, KeyOperation, KeyType, KeyUpdate,
    KeyVersion, Page, Vault, VaultProperties,
};
use crate::pkcs11::{Pkcs11Config, Pkcs11Token, TokenPublicKey, oaep_256_refused};

/// The database component name of the vault's migrations.
pub const MIGRATION_COMPONENT: &str = "keyvault";

/// The vault's schema steps.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "vaults, keys and sealed key versions",
        sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        description: "PKCS#11 object ids of RSA-HSM key versions held in a token",
        sqlite: include_str!("../migrations/sqlite/0002_pkcs11.sql"),
        postgres: include_str!("../migrations/postgres/0002_pkcs11.sql"),
    },
];

/// Root-key purpose of private key material at rest. DO NOT CHANGE: stored keys depend on it.
const KEY_MATERIAL_PURPOSE: &str = "keyvault/key-material";
/// Root-key purpose of backup blobs. DO NOT CHANGE: issued backups depend on it.
const BACKUP_PURPOSE: &str = "keyvault/key-backup";
/// Format tag of backup blobs, bound in as associated data.
const BACKUP_FORMAT: &str = "hds-keyvault-backup/1";
/// Opened keys kept in memory; beyond this the cache starts over.
const KEY_CACHE_LIMIT: usize = 4096;
/// Most items per listing page (Azure's limit).
pub const MAX_PAGE_SIZE: usize = 25;

/// How vault data planes are addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAddressing {
    /// Each vault has its own HTTPS listener on this loopback (or local) address, with a port
    /// chosen at creation and kept: `https://127.0.0.1:{port}/`.
    Loopback {
        /// The address listeners bind.
        address: IpAddr,
    },
    /// One listener routes by Host: `https://{vault}.vault.{domain}[:{port}]/`.
    Domain {
        /// The DNS domain (e.g. `hds.example.org`).
        domain: String,
        /// The public port, when not 443.
        port: Option<u16>,
    },
}

/// Settings of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// How vaults are addressed.
    pub addressing: VaultAddressing,
}

/// Where the service takes the time from; tests substitute a manual clock.
pub trait Clock: Send + Sync + 'static {
    /// Now, in Unix seconds.
    fn now(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }
}

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

/// The vault service.
pub struct KeyVaultService {
    database: Database,
    root_key: Arc<RootKey>,
    config: ServiceConfig,
    clock: Arc<dyn Clock>,
    /// The PKCS#11 token that holds new RSA-HSM keys, when one is configured.
    token: Option<Arc<Pkcs11Token>>,
    /// Opened keys by `vault/name/version`: opening and parsing a key costs more than the RSA
    /// operation itself. Entries are dropped on purge; attributes are always re-read from the
    /// store, so disabling a key takes effect at once even on other nodes.
    opened_keys: Mutex<HashMap<String, Arc<OpenedKey>>>,
}

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

/// A key version about to be stored: what [`KeyVaultService::store_new_version`] writes.
struct NewVersion<'a> {
    name: &'a str,
    version: String,
    key_type: KeyType,
    material: NewMaterial<'a>,
    key_ops: Vec<KeyOperation>,
    attributes: &'a KeyAttributesInput,
    tags: BTreeMap<String, String>,
    /// The key must already exist (a rotation), rather than may (a create or import).
    must_exist: bool,
}

/// The key material of a version being stored.
enum NewMaterial<'a> {
    /// A software key, to be sealed under the root key.
    Software(&'a RsaKeyMaterial),
    /// A private key already in the token: only its public half and `CKA_ID` are stored.
    Token {
        public: TokenPublicKey,
        bits: u32,
        object_id: Vec<u8>,
    },
}

impl std::fmt::Debug for KeyVaultService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KeyVaultService")
            .field("config", &self.config)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// A key version as stored, with its sealed private key.
struct StoredVersion {
    key: KeyVersion,
    /// Empty for a version held in a token.
    sealed_private: Vec<u8>,
    /// The `CKA_ID` of a version held in a token.
    token_object: Option<Vec<u8>>,
}

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
    /// Opens the service on `database` (applying the vault's migrations), without a PKCS#11
    /// token: RSA-HSM keys are sealed software keys that are never exported.
    pub async fn open(
        database: Database,
        root_key: Arc<RootKey>,
        config: ServiceConfig,
    ) -> Result<KeyVaultService, VaultError> {
        KeyVaultService::open_with_pkcs11(database, root_key, config, None).await
    }

    /// Opens the service with an optional PKCS#11 token: when `pkcs11` is given, the module is
    /// loaded, the token found and the user logged in before anything else, and new RSA-HSM
    /// key versions are generated (or imported) inside the token.
    pub async fn open_with_pkcs11(
        database: Database,
        root_key: Arc<RootKey>,
        config: ServiceConfig,
        pkcs11: Option<Pkcs11Config>,
    ) -> Result<KeyVaultService, VaultError> {
        let token = match pkcs11 {
            Some(pkcs11) => Some(Arc::new(
                tokio::task::spawn_blocking(move || Pkcs11Token::open(&pkcs11))
                    .await
                    .map_err(|error| VaultError::Internal(error.to_string()))??,
            )),
            None => None,
        };
        database.migrate(MIGRATION_COMPONENT, MIGRATIONS).await?;
        Ok(KeyVaultService {
            database,
            root_key,
            config,
            clock: Arc::new(SystemClock),
            token,
            opened_keys: Mutex::new(HashMap::new()),
        })
    }

    /// The label of the PKCS#11 token holding RSA-HSM keys, when one is configured.
    pub fn pkcs11_token_label(&self) -> Option<&str> {
        self.token.as_deref().map(Pkcs11Token::label)
    }

    /// Replaces the clock (tests of retention and expiry).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> KeyVaultService {
        self.clock = clock;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Now, by the service's clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    // ----- vaults -----

    /// Creates a vault or updates its settings (ARM PUT semantics). Returns the vault and
    /// whether it was created.
    pub async fn create_or_update_vault(
        &self,
        resource_id: &str,
        name: &str,
        properties: VaultProperties,
    ) -> Result<(Vault, bool), VaultError> {
        validate_vault_name(name)?;
        properties.validate()?;
        let now = self.now();
        let key = name.to_ascii_lowercase();
        let properties_json = serde_json::to_string(&properties)
            .map_err(|error| VaultError::Internal(error.to_string()))?;
        let mut transaction = self.database.begin_write().await?;
        let existing = sqlx::query("SELECT properties FROM keyvault_vaults WHERE name = $1")
            .bind(&key)
            .fetch_optional(&mut *transaction)
            .await?;
        let created = match existing {
            Some(row) => {
                let current: VaultProperties = parse_properties(&row.try_get::<String, _>(0)?)?;
                properties.validate_update(&current)?;
                sqlx::query("UPDATE keyvault_vaults SET properties = $1, resource_id = $2, updated = $3 WHERE name = $4")
                    .bind(&properties_json)
                    .bind(resource_id)
                    .bind(now)
                    .bind(&key)
                    .execute(&mut *transaction)
                    .await?;
                false
            }
            None => {
                let port = match &self.config.addressing {
                    VaultAddressing::Loopback { address } => {
                        let used: Vec<i64> =
                            sqlx::query("SELECT port FROM keyvault_vaults WHERE port IS NOT NULL")
                                .fetch_all(&mut *transaction)
                                .await?
                                .iter()
                                .map(|row| row.try_get::<i64, _>(0))
                                .collect::<Result<_, _>>()?;
                        Some(i64::from(allocate_port(*address, &used)?))
                    }
                    VaultAddressing::Domain { .. } => None,
                };
                sqlx::query(
                    "INSERT INTO keyvault_vaults (name, display_name, resource_id, properties, port, created, updated) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6)",
                )
                .bind(&key)
                .bind(name)
                .bind(resource_id)
                .bind(&properties_json)
                .bind(port)
                .bind(now)
                .execute(&mut *transaction)
                .await?;
                true
            }
        };
        transaction.commit().await?;
        Ok((self.get_vault(name).await?, created))
    }

    /// A vault by name (case-insensitive).
    pub async fn get_vault(&self, name: &str) -> Result<Vault, VaultError> {
        let row = sqlx::query(
            "SELECT display_name, resource_id, properties, port, created, updated FROM keyvault_vaults WHERE name = $1",
        )
        .bind(name.to_ascii_lowercase())
        .fetch_optional(self.database.pool())
        .await?
        .ok_or_else(|| VaultError::VaultNotFound(name.to_owned()))?;
        self.vault_from_row(&row)
    }

    /// Every vault.
    pub async fn list_vaults(&self) -> Result<Vec<Vault>, VaultError> {
        let rows = sqlx::query(
            "SELECT display_name, resource_id, properties, port, created, updated FROM keyvault_vaults ORDER BY name",
        )
        .fetch_all(self.database.pool())
        .await?;
        rows.iter().map(|row| self.vault_from_row(row)).collect()
    }

    /// Deletes a vault and every key in it. Vaults themselves are not soft-deleted, so a
    /// purge-protected vault is refused while it holds any key (live, or deleted and not yet
    /// past its retention): deleting it would purge keys that purge protection promises to
    /// keep. Returns whether the vault existed.
    pub async fn delete_vault(&self, name: &str) -> Result<bool, VaultError> {
        let key = name.to_ascii_lowercase();
        let vault = match self.get_vault(name).await {
            Ok(vault) => vault,
            Err(VaultError::VaultNotFound(_)) => return Ok(false),
            Err(error) => return Err(error),
        };
        let mut transaction = self.database.begin_write().await?;
        let mut token_objects = Vec::new();
        if vault.properties.enable_purge_protection {
            token_objects.extend(self.purge_expired(&mut transaction, &key).await?);
            let held: i64 = sqlx::query("SELECT COUNT(*) FROM keyvault_keys WHERE vault = $1")
                .bind(&key)
                .fetch_one(&mut *transaction)
                .await?
                .try_get(0)?;
            if held > 0 {
                return Err(VaultError::VaultNotEmpty(vault.name));
            }
        }
        token_objects.extend(token_objects_of(&mut transaction, &key, None).await?);
        sqlx::query("DELETE FROM keyvault_key_versions WHERE vault = $1")
            .bind(&key)
            .execute(&mut *transaction)
            .await?;
        sqlx::query("DELETE FROM keyvault_keys WHERE vault = $1")
            .bind(&key)
            .execute(&mut *transaction)
            .await?;
        let deleted = sqlx::query("DELETE FROM keyvault_vaults WHERE name = $1")
            .bind(&key)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        transaction.commit().await?;
        self.forget_opened(&format!("{key}/"));
        self.destroy_token_objects(token_objects);
        Ok(deleted > 0)
    }

    fn vault_from_row(&self, row: &AnyRow) -> Result<Vault, VaultError> {
        let name: String = row.try_get("display_name")?;
        let port: Option<i64> = row.try_get("port")?;
        let port = port.and_then(|port| u16::try_from(port).ok());
        let vault_uri = match &self.config.addressing {
            VaultAddressing::Loopback { address } => {
                let port = port.unwrap_or(443);
                match address {
                    IpAddr::V4(v4) => format!("https://{v4}:{port}/"),
                    IpAddr::V6(v6) => format!("https://[{v6}]:{port}/"),
                }
            }
            VaultAddressing::Domain { domain, port } => match port {
                Some(port) => format!(
                    "https://{}.vault.{domain}:{port}/",
                    name.to_ascii_lowercase()
                ),
                None => format!("https://{}.vault.{domain}/", name.to_ascii_lowercase()),
            },
        };
        Ok(Vault {
            name,
            resource_id: row.try_get("resource_id")?,
            properties: parse_properties(&row.try_get::<String, _>("properties")?)?,
            port,
            vault_uri,
            created: row.try_get("created")?,
            updated: row.try_get("updated")?,
        })
    }

    // ----- keys -----

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
            false,
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
        must_exist: bool,
    ) -> Result<KeyBundle, VaultError> {
        let (size, bits) = key_size_for(key_size)?;
        let version = new_version();
        match (key_type, &self.token) {
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
                let material = NewMaterial::Token {
                    public,
                    bits,
                    object_id: object_id.clone(),
                };
                let new = NewVersion {
                    name,
                    version,
                    key_type,
                    material,
                    key_ops,
                    attributes,
                    tags,
                    must_exist,
                };
                self.store_or_destroy(vault, new, &object_id).await
            }
            _ => {
                let material = tokio::task::spawn_blocking(move || RsaKeyMaterial::generate(size))
                    .await
                    .map_err(|error| VaultError::Internal(error.to_string()))??;
                let new = NewVersion {
                    name,
                    version,
                    key_type,
                    material: NewMaterial::Software(&material),
                    key_ops,
                    attributes,
                    tags,
                    must_exist,
                };
                self.store_new_version(vault, new).await
            }
        }
    }

    /// Stores a version whose private key is already in the token, destroying the token
    /// object when the row cannot be stored (a deleted key holding the name, for instance).
    async fn store_or_destroy(
        &self,
        vault: &Vault,
        new: NewVersion<'_>,
        object_id: &[u8],
    ) -> Result<KeyBundle, VaultError> {
        let stored = self.store_new_version(vault, new).await;
        if stored.is_err() {
            self.destroy_token_objects(vec![object_id.to_vec()]);
        }
        stored
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
        match (import.key_type, &self.token) {
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
                let material = NewMaterial::Token {
                    public,
                    bits,
                    object_id: object_id.clone(),
                };
                let new = NewVersion {
                    name,
                    version,
                    key_type: import.key_type,
                    material,
                    key_ops,
                    attributes: &import.attributes,
                    tags: import.tags,
                    must_exist: false,
                };
                self.store_or_destroy(vault, new, &object_id).await
            }
            _ => {
                let new = NewVersion {
                    name,
                    version,
                    key_type: import.key_type,
                    material: NewMaterial::Software(&material),
                    key_ops,
                    attributes: &import.attributes,
                    tags: import.tags,
                    must_exist: false,
                };
                self.store_new_version(vault, new).await
            }
        }
    }

    /// A new version of an existing key with the latest version's type, size, operations and
    /// tags.
    pub async fn rotate_key(&self, vault: &Vault, name: &str) -> Result<KeyBundle, VaultError> {
        let latest = self.load_version(vault, name, None).await?.key;
        self.generate_and_store(
            vault,
            name,
            latest.key_type,
            Some(latest.key_size),
            latest.key_ops,
            &KeyAttributesInput::default(),
            latest.tags,
            true,
        )
        .await
    }

    async fn store_new_version(
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
            must_exist,
        } = new;
        validate_tags(&tags)?;
        let vault_key = vault.name.to_ascii_lowercase();
        let key_name = name.to_ascii_lowercase();
        let now = self.now();
        let (sealed, token_object, key_size, modulus, public_exponent) = match material {
            NewMaterial::Software(material) => {
                let pkcs8 = material.to_pkcs8()?;
                let sealed = self.root_key.seal(
                    KEY_MATERIAL_PURPOSE,
                    sealing_context(&vault_key, &key_name, &version).as_bytes(),
                    &pkcs8,
                );
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
        if !must_exist {
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
            expires: attributes.expires,
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
            self.forget_opened(&format!("{vault_key}/{key_name}/"));
            self.destroy_token_objects(token_objects);
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
        let mut transaction = self.database.begin_write().await?;
        let purged = self.purge_expired(&mut transaction, &vault_key).await?;
        transaction.commit().await?;
        self.destroy_token_objects(purged);
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
        let mut transaction = self.database.begin_write().await?;
        let purged = self.purge_expired(&mut transaction, &vault_key).await?;
        transaction.commit().await?;
        self.destroy_token_objects(purged);
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
        self.forget_opened(&format!("{vault_key}/{key_name}/"));
        self.destroy_token_objects(token_objects);
        Ok(())
    }

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
            let pkcs8 = self.open_sealed(
                &vault_key,
                &key_name,
                &stored.key.version,
                &stored.sealed_private,
            )?;
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
            let sealed = self.root_key.seal(
                KEY_MATERIAL_PURPOSE,
                sealing_context(&vault_key, &key_name, &key.version).as_bytes(),
                &pkcs8,
            );
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

    // ----- cryptographic operations -----

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
        let cached = self
            .opened_keys
            .lock()
            .map_err(|_| poisoned())?
            .get(&cache_key)
            .cloned();
        let opened = match cached {
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
                        let pkcs8 = self.open_sealed(
                            &vault_key,
                            &key_name,
                            &stored.key.version,
                            &stored.sealed_private,
                        )?;
                        OpenedKey::Software(RsaKeyMaterial::from_pkcs8(&pkcs8)?)
                    }
                };
                let opened = Arc::new(opened);
                let mut cache = self.opened_keys.lock().map_err(|_| poisoned())?;
                if cache.len() >= KEY_CACHE_LIMIT {
                    cache.clear();
                }
                cache.insert(cache_key, Arc::clone(&opened));
                opened
            }
        };
        Ok((self.bundle(vault, stored.key), opened))
    }

    /// The token, for an operation on a version held in one.
    fn token_for_operation(&self) -> Result<&Pkcs11Token, VaultError> {
        self.token.as_deref().ok_or_else(|| {
            VaultError::Internal(
                "this key version's private key is held in a PKCS#11 token, but the vault was started without one (configure pkcs11)".into(),
            )
        })
    }

    /// Destroys the token objects of purged versions. Failures are logged and left behind:
    /// the rows are gone, so the objects are unreachable through the vault either way.
    fn destroy_token_objects(&self, object_ids: Vec<Vec<u8>>) {
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

    // ----- helpers -----

    fn open_sealed(
        &self,
        vault_key: &str,
        key_name: &str,
        version: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.root_key
            .open(
                KEY_MATERIAL_PURPOSE,
                sealing_context(vault_key, key_name, version).as_bytes(),
                sealed,
            )
            .map_err(|_| VaultError::Sealed)
    }

    fn forget_opened(&self, prefix: &str) {
        if let Ok(mut opened) = self.opened_keys.lock() {
            opened.retain(|cache_key, _| !cache_key.starts_with(prefix));
        }
    }

    fn bundle(&self, vault: &Vault, key: KeyVersion) -> KeyBundle {
        KeyBundle {
            vault_uri: vault.vault_uri.clone(),
            key,
            recovery_level: vault.properties.recovery_level(),
            recoverable_days: vault
                .properties
                .enable_soft_delete
                .then_some(vault.properties.soft_delete_retention_in_days),
        }
    }

    async fn load_version(
        &self,
        vault: &Vault,
        name: &str,
        version: Option<&str>,
    ) -> Result<StoredVersion, VaultError> {
        self.load_version_any_state(vault, name, version, false)
            .await
    }

    async fn load_version_any_state(
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

    async fn page_of_names(
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

    /// Purges deleted keys whose retention has ended. Returns the token objects of the purged
    /// versions, to destroy once the transaction has committed.
    async fn purge_expired(
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
            self.forget_opened(&format!("{vault_key}/{key_name}/"));
        }
        Ok(token_objects)
    }

    /// The backend, for tests that want to name it.
    pub fn backend(&self) -> Backend {
        self.database.backend()
    }
}

const VERSION_SELECT: &str = "SELECT k.display_name, v.version, v.sequence, v.kty, v.key_size, v.key_ops, v.enabled, \
    v.not_before, v.expires, v.created, v.updated, v.tags, v.public_n, v.public_e, v.sealed_private, v.pkcs11_id \
    FROM keyvault_key_versions v JOIN keyvault_keys k ON k.vault = v.vault AND k.name = v.name";

fn version_from_row(row: &AnyRow) -> Result<StoredVersion, VaultError> {
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

async fn insert_version(
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

/// Deletes a key and its versions; returns the token objects of those versions.
async fn remove_key(
    transaction: &mut hds_db::WriteTransaction,
    vault_key: &str,
    key_name: &str,
) -> Result<Vec<Vec<u8>>, VaultError> {
    let token_objects = token_objects_of(transaction, vault_key, Some(key_name)).await?;
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

/// The `CKA_ID`s of the token-held versions of a vault, or of one key in it.
async fn token_objects_of(
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

/// A new version id: 32 lowercase hex digits.
fn new_version() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `CKA_ID` of a token-held version: the version's 16 random bytes, unique across vaults.
fn token_object_id(version: &str) -> Vec<u8> {
    hex::decode(version).unwrap_or_else(|_| version.as_bytes().to_vec())
}

/// The `CKA_LABEL` of a token-held version, naming what it belongs to for token tools.
fn token_label(vault: &Vault, name: &str, version: &str) -> String {
    format!(
        "hds-keyvault/{}/{}/{version}",
        vault.name.to_ascii_lowercase(),
        name.to_ascii_lowercase()
    )
}

/// The associated data a version's private key is sealed with: it cannot be moved to another
/// key, version or vault row unnoticed.
fn sealing_context(vault_key: &str, key_name: &str, version: &str) -> String {
    format!("{vault_key}/{key_name}/{version}")
}

fn key_ops_text(key_ops: &[KeyOperation]) -> String {
    key_ops
        .iter()
        .map(|operation| operation.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn tags_text(tags: &BTreeMap<String, String>) -> Result<String, VaultError> {
    serde_json::to_string(tags).map_err(|error| VaultError::Internal(error.to_string()))
}

fn parse_properties(text: &str) -> Result<VaultProperties, VaultError> {
    serde_json::from_str(text)
        .map_err(|error| VaultError::Internal(format!("stored vault properties: {error}")))
}

fn deleted_conflict(name: &str) -> VaultError {
    VaultError::Conflict(format!(
        "Key {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can only be recovered or purged."
    ))
}

fn bad_continuation() -> VaultError {
    VaultError::BadParameter(
        "the $skiptoken is not valid; follow the nextLink exactly as returned".into(),
    )
}

fn poisoned() -> VaultError {
    VaultError::Internal("key cache lock poisoned".into())
}

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

/// Vault names: 3-24 characters, letters, digits and single hyphens, starting with a letter
/// and ending with a letter or digit (they become DNS labels).
pub fn validate_vault_name(name: &str) -> Result<(), VaultError> {
    let bytes = name.as_bytes();
    let valid = (3..=24).contains(&bytes.len())
        && bytes[0].is_ascii_alphabetic()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(VaultError::BadParameter(format!(
            "vault name '{name}' is invalid: use 3-24 letters, digits and single hyphens, starting with a letter and ending with a letter or digit"
        )))
    }
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

/// A free port on `address` that no other vault holds. The port is free now; the listener
/// binds it moments later.
fn allocate_port(address: IpAddr, used: &[i64]) -> Result<u16, VaultError> {
    for _ in 0..32 {
        let listener = TcpListener::bind((address, 0)).map_err(|error| {
            VaultError::Internal(format!("cannot allocate a vault port: {error}"))
        })?;
        let port = listener
            .local_addr()
            .map_err(|error| {
                VaultError::Internal(format!("cannot allocate a vault port: {error}"))
            })?
            .port();
        if !used.contains(&i64::from(port)) {
            return Ok(port);
        }
    }
    Err(VaultError::Internal(
        "cannot allocate a free vault port".into(),
    ))
}
