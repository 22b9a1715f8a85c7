//! The vault service: vaults and keys over the shared database, private keys sealed under the
//! root key. Both the data plane ([`crate::http`]) and the ARM provider call it; it checks no
//! access itself (each caller authorizes in its own terms).
//!
//! [`KeyVaultService`] is one type; its methods are split by concern, one module each:
//! - `vaults.rs`: vault settings, addressing (ports, URIs) and deleting a vault;
//! - `keys.rs`: a key's life: create, import, rotate, read, list and update versions;
//! - `deletion.rs`: soft delete, recovery, purge, purge protection and retention;
//! - `backup.rs`: sealed backups and their restore;
//! - `operations.rs`: encrypt/wrap, decrypt/unwrap, sign, verify, and the opened-key cache;
//! - `rotation.rs`: rotation policies and the pass (and task) that rotates keys when due;
//! - `token.rs`: the PKCS#11 token's objects (their ids, labels and destruction);
//! - `sealing.rs`: private key material sealed under the root key;
//! - `store.rs`: the schema, and the rows and queries the others share.

use std::sync::Arc;

use hds_crypto::root::RootKey;
use hds_db::{Backend, Database};

use crate::error::VaultError;
use crate::model::{KeyBundle, KeyVersion, Vault};
use crate::pkcs11::{Pkcs11Config, Pkcs11Token};

mod backup;
mod deletion;
mod keys;
mod operations;
mod rotation;
mod sealing;
mod store;
mod token;
mod vaults;

pub use keys::{ImportKeyOptions, validate_key_name};
pub use rotation::spawn_rotation_task;
pub use store::{MIGRATION_COMPONENT, MIGRATIONS};
pub use vaults::{VaultAddressing, validate_vault_name};

use operations::OpenedKeyCache;

/// Most items per listing page (Azure's limit).
pub const MAX_PAGE_SIZE: usize = 25;

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
    opened_keys: OpenedKeyCache,
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
            opened_keys: OpenedKeyCache::default(),
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

    /// The backend, for tests that want to name it.
    pub fn backend(&self) -> Backend {
        self.database.backend()
    }

    /// A version as the API returns it: with its vault's URI and recovery settings.
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
}
