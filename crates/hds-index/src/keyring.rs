//! The key hierarchy of each DICOM service, persisted in the shared database.
//!
//! ```text
//! KEK (customer's key in a vault; platform-managed: a LocalRsaKek sealed under the root key)
//!  └─ service root key       dicom_service_keys.wrapped_root_key   (one vault call to unwrap)
//!      ├─ index root key     dicom_service_keys.wrapped_index_key  -> index token + value keys
//!      └─ study key          dicom_study_keys.wrapped_key          (per study, by study token)
//!          └─ blob key       dicom_instances.blob_key              (per blob)
//! ```
//!
//! A [`ServiceKeyring`] holds the unwrapped root and index keys of one service in memory (zeroized
//! when dropped or [`forgotten`](ServiceKeyring::forget)); study and blob keys are unwrapped per
//! request and never cached, so destroying a study key takes effect at once.
//! [`ServiceKeyrings`] is the set of keyrings of all services, and the [`IndexCipher`] of the
//! index: tokens are HMACs under the service's token key, values AES-256-GCM bound to their row.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use hds_crypto::index_root::IndexRootKey;
use hds_crypto::keys::{
    BlobKey, IndexKeys, InstanceBinding, KekError, KeyEncryptionKey, KeyError, LocalRsaKek,
    RsaKeySize, ServiceRootKey, StudyKey, WrappedKey,
};
use hds_crypto::root::RootKey;
use hds_db::{Backend, Database, DbError};

use crate::index::{COMPONENT, MIGRATIONS, STUDY_UID};
use crate::sql::column;
use crate::{IndexCipher, IndexError, RowBinding};

/// Why a keyring operation failed. Messages carry no key material and no values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// The key-encryption key failed: lost access, denied, disabled, or a bad wrapped key.
    #[error("key-encryption key: {0}")]
    Kek(#[from] KekError),
    /// A wrapped key did not unwrap: altered, moved, or wrapped under another key.
    #[error("wrapped key failed its integrity check")]
    Integrity(#[from] KeyError),
    /// The service's keys are not in memory (forgotten after lost key access).
    #[error("the service's encryption keys are not available")]
    KeysUnavailable,
    /// The service has no key hierarchy yet.
    #[error("the service has no keys")]
    NoServiceKeys,
    /// The study key changed while it was being created (a concurrent rotation); try again.
    #[error("the service's root key changed meanwhile; try again")]
    RootKeyChanged,
    /// The database failed.
    #[error("key database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Opening or migrating the database failed.
    #[error("key database setup failed: {0}")]
    Setup(#[from] DbError),
}

impl KeyringError {
    /// Whether the failure means the service cannot reach its key-encryption key (the
    /// `CustomerManagedKeyAccessLost` condition) rather than a fault in hds.
    pub fn is_key_access_lost(&self) -> bool {
        matches!(
            self,
            KeyringError::KeysUnavailable
                | KeyringError::Kek(
                    KekError::Unavailable(_)
                        | KekError::AccessDenied
                        | KekError::KeyNotFoundOrDisabled
                        | KekError::WrongKey
                )
        )
    }
}

impl From<IndexError> for KeyringError {
    fn from(error: IndexError) -> Self {
        match error {
            IndexError::Database(error) => KeyringError::Database(error),
            IndexError::Setup(error) => KeyringError::Setup(error),
            IndexError::Keyring(error) => error,
            _ => KeyringError::KeysUnavailable,
        }
    }
}

/// The unwrapped keys of a service, while it has key access.
struct UnlockedKeys {
    root: ServiceRootKey,
    index_root: IndexRootKey,
    index: Arc<IndexKeys>,
    /// The index keys of the service's data partitions, derived on first use (never stored).
    partition_index: Mutex<HashMap<String, Arc<IndexKeys>>>,
    /// Which root key this is (counts rotations): a study key is written only under the
    /// current one.
    generation: i64,
    /// Study keys (wrapped by this root key), by study token, for
    /// [`ServiceKeyring::study_key_for_store`]: every instance of a study after the first reads
    /// its key here rather than from the database, and the stores of a new study that arrive
    /// together all get the one new key the first of them made, instead of each making its own
    /// and all but one being refused. Wrapped keys only, so nothing secret is kept beyond the
    /// root key itself, and gone with these keys (lock, rotation). An entry gone stale (its
    /// study deleted meanwhile) is caught by the store, which answers
    /// [`crate::StoreOutcome::StudyKeyChanged`]; the caller then calls
    /// [`ServiceKeyring::forget_study_key`].
    wrapped_study_keys: Mutex<HashMap<Vec<u8>, RememberedStudyKey>>,
}

/// Past this many partitions the derived partition index keys are emptied rather than grown.
const MAX_CACHED_PARTITION_KEYS: usize = 1024;

impl UnlockedKeys {
    /// The index keys of `partition` (`None`: the default partition, the service's own).
    fn index_for(&self, partition: Option<&str>) -> Arc<IndexKeys> {
        let Some(partition) = partition else {
            return self.index.clone();
        };
        let mut derived = self
            .partition_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(keys) = derived.get(partition) {
            return keys.clone();
        }
        if derived.len() >= MAX_CACHED_PARTITION_KEYS {
            derived.clear();
        }
        let keys = Arc::new(self.index_root.partition_index_keys(partition));
        derived.insert(partition.to_owned(), keys.clone());
        keys
    }
}

/// A study key as [`UnlockedKeys::wrapped_study_keys`] remembers it.
#[derive(Clone)]
struct RememberedStudyKey {
    wrapped: Vec<u8>,
    /// Set while the key is new and maybe not stored yet: the root key generation it was
    /// wrapped under, which a store then writes it with. Cleared by
    /// [`ServiceKeyring::study_key_stored`].
    unstored_generation: Option<i64>,
}

impl RememberedStudyKey {
    fn stored(wrapped: Vec<u8>) -> RememberedStudyKey {
        RememberedStudyKey {
            wrapped,
            unstored_generation: None,
        }
    }
}

/// Past this many studies the wrapped study-key cache is emptied rather than grown.
const MAX_CACHED_STUDY_KEYS: usize = 4096;

/// The stored row of a service's root key.
struct ServiceKeyRow {
    wrapped_root_key: WrappedKey,
    wrapped_index_key: Vec<u8>,
    generation: i64,
}

/// One DICOM service's key hierarchy. Shared (`Arc`) by the index cipher and the DICOMweb
/// handlers.
///
/// A data partition's keyring ([`ServiceKeyring::partition`]) is a view of its service's: the
/// same root key and state (a partition is unlocked, forgotten and rotated with its service),
/// index keys derived for the partition, and study keys filed under the partition's scope.
pub struct ServiceKeyring {
    core: Arc<KeyringCore>,
    /// The data partition this view serves; `None` for the service's default partition.
    partition: Option<String>,
    /// What study keys and key bindings are filed under: the service, or its partition's scope
    /// ([`crate::partition_scope`]).
    scope: String,
}

/// What a service's keyring and its partitions' views share.
struct KeyringCore {
    database: Database,
    service: String,
    key_encryption_key: RwLock<Arc<dyn KeyEncryptionKey>>,
    unlocked: RwLock<Option<Arc<UnlockedKeys>>>,
    /// Serializes unlocking, re-wrapping and rotation, so concurrent callers share one vault
    /// call and no two changes of the root-key row interleave.
    key_changes: tokio::sync::Mutex<()>,
}

impl KeyringCore {
    /// The keyring of `service` over a new core, still locked.
    fn keyring(
        database: &Database,
        service: &str,
        key_encryption_key: Arc<dyn KeyEncryptionKey>,
    ) -> ServiceKeyring {
        ServiceKeyring {
            core: Arc::new(KeyringCore {
                database: database.clone(),
                service: service.to_owned(),
                key_encryption_key: RwLock::new(key_encryption_key),
                unlocked: RwLock::new(None),
                key_changes: tokio::sync::Mutex::new(()),
            }),
            partition: None,
            scope: service.to_owned(),
        }
    }
}

impl std::fmt::Debug for ServiceKeyring {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ServiceKeyring")
            .field("service", &self.scope)
            .field("unlocked", &self.is_unlocked())
            .finish_non_exhaustive()
    }
}

/// A study key ready to wrap blob keys, with the wrapped form the index checks at store time.
pub struct StudyKeyLease {
    service: String,
    study_key: StudyKey,
    wrapped_study_key: Vec<u8>,
    /// For a key made by [`ServiceKeyring::study_key_for_store`] and not stored yet: the root
    /// key generation it is wrapped under.
    unstored_generation: Option<i64>,
}

impl StudyKeyLease {
    /// Wraps `blob_key` under this study key, bound to the instance its blob holds, for
    /// [`crate::NewInstance::keys`].
    pub fn seal_blob_key(&self, owner: &InstanceBinding<'_>, blob_key: &BlobKey) -> InstanceKeys {
        InstanceKeys {
            wrapped_study_key: self.wrapped_study_key.clone(),
            wrapped_blob_key: self.study_key.wrap_blob_key(&self.service, owner, blob_key),
            new_study_key_generation: self.unstored_generation,
        }
    }
}

/// What the index stores with an instance: its blob key wrapped by its study key, and the
/// wrapped study key that was current when it was wrapped (checked at commit).
#[derive(Debug, Clone)]
pub struct InstanceKeys {
    /// The study key, wrapped by the root key, as read when the blob key was wrapped.
    pub wrapped_study_key: Vec<u8>,
    /// The blob key, wrapped by the study key.
    pub wrapped_blob_key: Vec<u8>,
    /// `Some(generation)` when the study key is new and not stored yet (from
    /// [`ServiceKeyring::study_key_for_store`]): the index stores it with the instance, in the
    /// same transaction, if the study still has no key and the root key is still at
    /// `generation`. `None` for a key read from the database.
    pub new_study_key_generation: Option<i64>,
}

/// What retrieval reads from the index to open a blob.
#[derive(Debug, Clone)]
pub struct StoredBlobKey {
    /// The study's blind token (the binding of its wrapped key).
    pub study_token: Vec<u8>,
    /// The study key, wrapped by the root key.
    pub wrapped_study_key: Vec<u8>,
    /// The blob key, wrapped by the study key.
    pub wrapped_blob_key: Vec<u8>,
}

fn lock_clause(database: &Database, exclusive: bool) -> &'static str {
    match (database.backend(), exclusive) {
        (Backend::Postgres, true) => " FOR UPDATE",
        (Backend::Postgres, false) => " FOR SHARE",
        // SQLite's write transaction holds the database lock already.
        (Backend::Sqlite, _) => "",
    }
}

impl ServiceKeyring {
    /// The keyring of `service` (e.g. `default/dicom`), unlocked. On first use it creates the
    /// service's root key and index root key and stores the root key wrapped by
    /// `key_encryption_key` (one vault call); afterwards it unwraps the stored root key (one
    /// vault call). Of concurrent first uses, on any number of nodes, one root key wins.
    pub async fn open_or_create(
        database: &Database,
        service: &str,
        key_encryption_key: Arc<dyn KeyEncryptionKey>,
    ) -> Result<Arc<ServiceKeyring>, KeyringError> {
        database.migrate(COMPONENT, MIGRATIONS).await?;
        let keyring = KeyringCore::keyring(database, service, key_encryption_key.clone());
        if let Some(row) = keyring.read_row().await? {
            keyring.unlock_row(&row).await?;
            return Ok(Arc::new(keyring));
        }
        let root = ServiceRootKey::generate();
        let index_root = IndexRootKey::generate();
        let wrapped_root_key = root.wrap_with(key_encryption_key.as_ref()).await?;
        let wrapped_index_key = root.wrap_index_root_key(service, &index_root);
        sqlx::query(
            "INSERT INTO dicom_service_keys \
             (service, kek_id, algorithm, wrapped_root_key, wrapped_index_key, generation) \
             VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (service) DO NOTHING",
        )
        .bind(service)
        .bind(wrapped_root_key.kid.as_str())
        .bind(wrapped_root_key.algorithm.as_str())
        .bind(wrapped_root_key.ciphertext.as_slice())
        .bind(wrapped_index_key.as_slice())
        .execute(database.pool())
        .await?;
        let row = keyring
            .read_row()
            .await?
            .ok_or(KeyringError::NoServiceKeys)?;
        if row.wrapped_root_key.ciphertext == wrapped_root_key.ciphertext {
            keyring.set_unlocked(root, index_root, row.generation);
        } else {
            // Another node created the service's keys first: use theirs.
            keyring.unlock_row(&row).await?;
        }
        Ok(Arc::new(keyring))
    }

    /// The service this keyring belongs to.
    pub fn service(&self) -> &str {
        &self.core.service
    }

    /// The keyring of the data partition `partition` of this service (the service's own for
    /// [`crate::DEFAULT_PARTITION`]): the same keys, state and vault, with the partition's
    /// own index keys and study keys. The caller checked the name
    /// ([`crate::check_partition_name`]).
    pub fn partition(&self, partition: &str) -> Arc<ServiceKeyring> {
        let partition = (partition != crate::DEFAULT_PARTITION).then(|| partition.to_owned());
        let scope = match &partition {
            Some(name) => crate::partition_scope(&self.core.service, name),
            None => self.core.service.clone(),
        };
        Arc::new(ServiceKeyring {
            core: self.core.clone(),
            partition,
            scope,
        })
    }

    /// What this keyring's rows and study keys are filed under: the service, or its data
    /// partition's scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The key-encryption key the root key is wrapped under now.
    pub fn key_encryption_key(&self) -> Arc<dyn KeyEncryptionKey> {
        self.core
            .key_encryption_key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the root and index keys are in memory.
    pub fn is_unlocked(&self) -> bool {
        self.core
            .unlocked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Drops the unwrapped keys from memory (zeroized once no request holds them): for lost
    /// key access. Until [`ServiceKeyring::unlock`] succeeds, every operation that needs data
    /// fails with [`KeyringError::KeysUnavailable`].
    pub fn forget(&self) {
        self.core
            .unlocked
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Unwraps the stored root key again (one vault call), e.g. once key access is back.
    /// Does nothing if the keys are in memory.
    pub async fn unlock(&self) -> Result<(), KeyringError> {
        let _changes = self.core.key_changes.lock().await;
        if self.is_unlocked() {
            return Ok(());
        }
        let row = self.read_row().await?.ok_or(KeyringError::NoServiceKeys)?;
        self.unlock_row(&row).await
    }

    /// Re-wraps the root key under `new_key_encryption_key` (a new KEK version, or another
    /// key): one unwrap with the current KEK and one wrap with the new one, and one row
    /// written. No data is re-encrypted; study keys, blob keys, the index and blobs are
    /// untouched. Afterwards the old KEK (version) can be disabled.
    pub async fn rewrap(
        &self,
        new_key_encryption_key: Arc<dyn KeyEncryptionKey>,
    ) -> Result<(), KeyringError> {
        let _changes = self.core.key_changes.lock().await;
        let row = self.read_row().await?.ok_or(KeyringError::NoServiceKeys)?;
        let old_key_encryption_key = self.key_encryption_key();
        let root =
            ServiceRootKey::unwrap_with(old_key_encryption_key.as_ref(), &row.wrapped_root_key)
                .await?;
        let rewrapped = root.wrap_with(new_key_encryption_key.as_ref()).await?;
        let index_root = root.unwrap_index_root_key(&self.core.service, &row.wrapped_index_key)?;
        let updated = sqlx::query(
            "UPDATE dicom_service_keys SET kek_id = $1, algorithm = $2, wrapped_root_key = $3 \
             WHERE service = $4 AND wrapped_root_key = $5",
        )
        .bind(rewrapped.kid.as_str())
        .bind(rewrapped.algorithm.as_str())
        .bind(rewrapped.ciphertext.as_slice())
        .bind(self.core.service.as_str())
        .bind(row.wrapped_root_key.ciphertext.as_slice())
        .execute(self.core.database.pool())
        .await?;
        if updated.rows_affected() != 1 {
            return Err(KeyringError::RootKeyChanged);
        }
        *self
            .core
            .key_encryption_key
            .write()
            .unwrap_or_else(PoisonError::into_inner) = new_key_encryption_key;
        self.set_unlocked(root, index_root, row.generation);
        Ok(())
    }

    /// Replaces the service's root key with a new random one: every study key and the index
    /// root key are re-wrapped under it, and it is wrapped under the current KEK (one vault
    /// call), in one transaction. Blobs, blob keys, tokens and sealed index values are not
    /// touched. Afterwards a database backup taken before the rotation holds study keys
    /// wrapped by a root key that the current database no longer has.
    pub async fn rotate_root_key(&self) -> Result<u64, KeyringError> {
        let _changes = self.core.key_changes.lock().await;
        let current = self.unlocked_keys()?;
        let new_root = ServiceRootKey::generate();
        let key_encryption_key = self.key_encryption_key();
        let wrapped_root_key = new_root.wrap_with(key_encryption_key.as_ref()).await?;
        let mut transaction = self.core.database.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT generation FROM dicom_service_keys WHERE service = $1{}",
            lock_clause(&self.core.database, true)
        ))
        .bind(self.core.service.as_str())
        .fetch_optional(&mut *transaction)
        .await?
        .ok_or(KeyringError::NoServiceKeys)?;
        let generation: i64 = column(&row, 0)?;
        if generation != current.generation {
            return Err(KeyringError::RootKeyChanged);
        }
        // The study keys of the service and of each of its data partitions.
        let study_keys = sqlx::query(
            "SELECT service, study_token, wrapped_key FROM dicom_study_keys WHERE service = $1 \
             OR service IN (SELECT scope FROM dicom_partitions WHERE service = $1)",
        )
        .bind(self.core.service.as_str())
        .fetch_all(&mut *transaction)
        .await?;
        let mut rewrapped_count = 0u64;
        for study in &study_keys {
            let scope: String = column(study, 0)?;
            let study_token: Vec<u8> = column(study, 1)?;
            let wrapped: Vec<u8> = column(study, 2)?;
            let study_key = current
                .root
                .unwrap_study_key(&scope, &study_token, &wrapped)?;
            let rewrapped = new_root.wrap_study_key(&scope, &study_token, &study_key);
            sqlx::query(
                "UPDATE dicom_study_keys SET wrapped_key = $1 WHERE service = $2 AND study_token = $3",
            )
            .bind(rewrapped.as_slice())
            .bind(scope.as_str())
            .bind(study_token.as_slice())
            .execute(&mut *transaction)
            .await?;
            rewrapped_count += 1;
        }
        let wrapped_index_key =
            new_root.wrap_index_root_key(&self.core.service, &current.index_root);
        sqlx::query(
            "UPDATE dicom_service_keys SET kek_id = $1, algorithm = $2, wrapped_root_key = $3, \
             wrapped_index_key = $4, generation = $5 WHERE service = $6",
        )
        .bind(wrapped_root_key.kid.as_str())
        .bind(wrapped_root_key.algorithm.as_str())
        .bind(wrapped_root_key.ciphertext.as_slice())
        .bind(wrapped_index_key.as_slice())
        .bind(generation + 1)
        .bind(self.core.service.as_str())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        let index_root = new_root.unwrap_index_root_key(&self.core.service, &wrapped_index_key)?;
        self.set_unlocked(new_root, index_root, generation + 1);
        Ok(rewrapped_count)
    }

    /// The blind token of a StudyInstanceUID: the same token the index keys the study row by.
    pub fn study_token(&self, study_instance_uid: &str) -> Result<Vec<u8>, KeyringError> {
        let keys = self.unlocked_keys()?;
        Ok(keys
            .index_for(self.partition.as_deref())
            .token(STUDY_UID, study_instance_uid.as_bytes())
            .to_vec())
    }

    /// The study's key, created (random, wrapped by the root key) if the study has none yet.
    /// Of concurrent creations one key wins: insert if absent, then read back what is stored.
    pub async fn study_key(&self, study_instance_uid: &str) -> Result<StudyKeyLease, KeyringError> {
        let keys = self.unlocked_keys()?;
        let study_token = keys
            .index_for(self.partition.as_deref())
            .token(STUDY_UID, study_instance_uid.as_bytes())
            .to_vec();
        if let Some(wrapped) = self.read_study_key(&study_token).await? {
            return self.lease(&keys, &study_token, RememberedStudyKey::stored(wrapped));
        }
        let study_key = StudyKey::generate();
        let wrapped = keys
            .root
            .wrap_study_key(&self.scope, &study_token, &study_key);
        let mut transaction = self.core.database.begin_write().await?;
        // Written only under the current root key: a rotation in between would otherwise leave
        // a study key wrapped under a root key that is gone.
        let generation = sqlx::query(&format!(
            "SELECT generation FROM dicom_service_keys WHERE service = $1{}",
            lock_clause(&self.core.database, false)
        ))
        .bind(self.core.service.as_str())
        .fetch_optional(&mut *transaction)
        .await?
        .ok_or(KeyringError::NoServiceKeys)?;
        if column::<i64>(&generation, 0)? != keys.generation {
            return Err(KeyringError::RootKeyChanged);
        }
        sqlx::query(
            "INSERT INTO dicom_study_keys (service, study_token, wrapped_key) VALUES ($1, $2, $3) \
             ON CONFLICT (service, study_token) DO NOTHING",
        )
        .bind(self.scope.as_str())
        .bind(study_token.as_slice())
        .bind(wrapped.as_slice())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        let stored = self
            .read_study_key(&study_token)
            .await?
            .ok_or(KeyringError::RootKeyChanged)?;
        self.lease(&keys, &study_token, RememberedStudyKey::stored(stored))
    }

    /// The study's key for storing an instance: the stored one, or else a new random key that
    /// is not written here. [`crate::Index::store_instance`] writes it with the instance, in
    /// the instance's own transaction, so storing the first instance of a study takes the
    /// database's write lock once instead of twice. Until [`ServiceKeyring::study_key_stored`]
    /// says it is stored, the new key is handed to every store of the study (each may be the
    /// one that writes it). If another store gave the study another key first (another node),
    /// the store answers [`crate::StoreOutcome::StudyKeyChanged`] and the caller forgets this
    /// one and asks again, getting that key.
    pub async fn study_key_for_store(
        &self,
        study_instance_uid: &str,
    ) -> Result<StudyKeyLease, KeyringError> {
        let keys = self.unlocked_keys()?;
        let study_token = keys
            .index_for(self.partition.as_deref())
            .token(STUDY_UID, study_instance_uid.as_bytes())
            .to_vec();
        let cached = keys
            .wrapped_study_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&study_token)
            .cloned();
        if let Some(remembered) = cached {
            return self.lease(&keys, &study_token, remembered);
        }
        let remembered = match self.read_study_key(&study_token).await? {
            Some(wrapped) => RememberedStudyKey::stored(wrapped),
            None => {
                let study_key = StudyKey::generate();
                RememberedStudyKey {
                    wrapped: keys
                        .root
                        .wrap_study_key(&self.scope, &study_token, &study_key),
                    unstored_generation: Some(keys.generation),
                }
            }
        };
        let mut cache = keys
            .wrapped_study_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_STUDY_KEYS {
            cache.clear();
        }
        // A store of the same study that read the database at the same time may have put its
        // key here first: all of them use that one.
        let remembered = cache
            .entry(study_token.clone())
            .or_insert(remembered)
            .clone();
        drop(cache);
        self.lease(&keys, &study_token, remembered)
    }

    /// Records that the new study key a store was given is now stored: later stores of the
    /// study no longer offer to write it (after the study is deleted, a store must fail and
    /// ask again rather than bring the deleted study's key back).
    pub fn study_key_stored(&self, study_instance_uid: &str) {
        if let Ok(keys) = self.unlocked_keys() {
            let study_token = keys
                .index_for(self.partition.as_deref())
                .token(STUDY_UID, study_instance_uid.as_bytes());
            if let Some(remembered) = keys
                .wrapped_study_keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(study_token.as_slice())
            {
                remembered.unstored_generation = None;
            }
        }
    }

    /// Drops what [`ServiceKeyring::study_key_for_store`] remembered of a study's key: called
    /// when a store found that key no longer the study's (the study was deleted meanwhile).
    pub fn forget_study_key(&self, study_instance_uid: &str) {
        if let Ok(keys) = self.unlocked_keys() {
            let study_token = keys
                .index_for(self.partition.as_deref())
                .token(STUDY_UID, study_instance_uid.as_bytes());
            keys.wrapped_study_keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(study_token.as_slice());
        }
    }

    /// Unwraps the key of the blob holding the instance `owner`: its study key with the root
    /// key, then the blob key with the study key. Fails once the study key is destroyed, and
    /// when the row's blob key was wrapped for another instance (a swapped or replayed row).
    pub fn open_blob_key(
        &self,
        stored: &StoredBlobKey,
        owner: &InstanceBinding<'_>,
    ) -> Result<BlobKey, KeyringError> {
        let keys = self.unlocked_keys()?;
        let study_key = keys.root.unwrap_study_key(
            &self.scope,
            &stored.study_token,
            &stored.wrapped_study_key,
        )?;
        Ok(study_key.unwrap_blob_key(&self.scope, owner, &stored.wrapped_blob_key)?)
    }

    /// The index keys, for the cipher.
    fn index_keys(&self) -> Result<Arc<UnlockedKeys>, KeyringError> {
        self.unlocked_keys()
    }

    fn unlocked_keys(&self) -> Result<Arc<UnlockedKeys>, KeyringError> {
        self.core
            .unlocked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(KeyringError::KeysUnavailable)
    }

    fn lease(
        &self,
        keys: &UnlockedKeys,
        study_token: &[u8],
        remembered: RememberedStudyKey,
    ) -> Result<StudyKeyLease, KeyringError> {
        let study_key =
            keys.root
                .unwrap_study_key(&self.scope, study_token, &remembered.wrapped)?;
        Ok(StudyKeyLease {
            service: self.scope.clone(),
            study_key,
            wrapped_study_key: remembered.wrapped,
            unstored_generation: remembered.unstored_generation,
        })
    }

    async fn read_study_key(&self, study_token: &[u8]) -> Result<Option<Vec<u8>>, KeyringError> {
        let row = sqlx::query(
            "SELECT wrapped_key FROM dicom_study_keys WHERE service = $1 AND study_token = $2",
        )
        .bind(self.scope.as_str())
        .bind(study_token)
        .fetch_optional(self.core.database.pool())
        .await?;
        Ok(match row {
            Some(row) => Some(column(&row, 0)?),
            None => None,
        })
    }

    async fn read_row(&self) -> Result<Option<ServiceKeyRow>, KeyringError> {
        let row = sqlx::query(
            "SELECT kek_id, algorithm, wrapped_root_key, wrapped_index_key, generation \
             FROM dicom_service_keys WHERE service = $1",
        )
        .bind(self.core.service.as_str())
        .fetch_optional(self.core.database.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(ServiceKeyRow {
            wrapped_root_key: WrappedKey {
                kid: column(&row, 0)?,
                algorithm: column(&row, 1)?,
                ciphertext: column(&row, 2)?,
            },
            wrapped_index_key: column(&row, 3)?,
            generation: column(&row, 4)?,
        }))
    }

    async fn unlock_row(&self, row: &ServiceKeyRow) -> Result<(), KeyringError> {
        let key_encryption_key = self.key_encryption_key();
        let root =
            ServiceRootKey::unwrap_with(key_encryption_key.as_ref(), &row.wrapped_root_key).await?;
        let index_root = root.unwrap_index_root_key(&self.core.service, &row.wrapped_index_key)?;
        self.set_unlocked(root, index_root, row.generation);
        Ok(())
    }

    fn set_unlocked(&self, root: ServiceRootKey, index_root: IndexRootKey, generation: i64) {
        let index = Arc::new(index_root.index_keys());
        *self
            .core
            .unlocked
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(UnlockedKeys {
            root,
            index_root,
            index,
            partition_index: Mutex::new(HashMap::new()),
            generation,
            wrapped_study_keys: Mutex::new(HashMap::new()),
        }));
    }
}

/// The keyrings of all DICOM services of this hds, and the [`IndexCipher`] of the index: each
/// service's values are tokenized and sealed under its own index keys. Cheap to clone.
#[derive(Clone, Default)]
pub struct ServiceKeyrings {
    keyrings: Arc<RwLock<HashMap<String, Arc<ServiceKeyring>>>>,
}

impl std::fmt::Debug for ServiceKeyrings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ServiceKeyrings")
    }
}

impl ServiceKeyrings {
    /// Opens (creating on first use) the keyring of `service` and registers it.
    pub async fn open_or_create(
        &self,
        database: &Database,
        service: &str,
        key_encryption_key: Arc<dyn KeyEncryptionKey>,
    ) -> Result<Arc<ServiceKeyring>, KeyringError> {
        let keyring = ServiceKeyring::open_or_create(database, service, key_encryption_key).await?;
        self.insert(keyring.clone());
        Ok(keyring)
    }

    /// Registers a keyring (replacing any of the same service).
    pub fn insert(&self, keyring: Arc<ServiceKeyring>) {
        self.keyrings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(keyring.service().to_owned(), keyring);
    }

    /// Unregisters the keyring of `service` (a deleted service).
    pub fn remove(&self, service: &str) -> Option<Arc<ServiceKeyring>> {
        self.keyrings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(service)
    }

    /// The keyring of `service`, if registered.
    pub fn get(&self, service: &str) -> Option<Arc<ServiceKeyring>> {
        self.keyrings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(service)
            .cloned()
    }

    /// The index keys of `scope`: a service's, or one of its data partitions'.
    fn keys(&self, scope: &str) -> Result<Arc<IndexKeys>, IndexError> {
        let (service, partition) = crate::split_scope(scope);
        let keyring = self.get(service).ok_or(IndexError::KeysUnavailable)?;
        Ok(keyring
            .index_keys()
            .map_err(|_| IndexError::KeysUnavailable)?
            .index_for(partition))
    }
}

impl IndexCipher for ServiceKeyrings {
    fn token(
        &self,
        service: &str,
        domain: &str,
        normalized_value: &str,
    ) -> Result<Vec<u8>, IndexError> {
        let keys = self.keys(service)?;
        Ok(keys.token(domain, normalized_value.as_bytes()).to_vec())
    }

    fn seal(&self, binding: RowBinding<'_>, plaintext: &[u8]) -> Result<Vec<u8>, IndexError> {
        let keys = self.keys(binding.service)?;
        Ok(keys.seal_value(&binding.encode(), plaintext))
    }

    fn open(&self, binding: RowBinding<'_>, sealed: &[u8]) -> Result<Vec<u8>, IndexError> {
        let keys = self.keys(binding.service)?;
        let plaintext = keys
            .open_value(&binding.encode(), sealed)
            .map_err(|_| IndexError::Integrity)?;
        Ok(plaintext.to_vec())
    }
}

/// The sealed platform KEK named `name`, if stored. (A plain `async fn`, not a closure: a
/// closure returning a future that borrows a connection defeats the `Send` proof callers need.)
async fn read_platform_kek(
    database: &Database,
    name: &str,
) -> Result<Option<Vec<u8>>, KeyringError> {
    let row = sqlx::query("SELECT sealed_private_key FROM dicom_platform_keks WHERE name = $1")
        .bind(name)
        .fetch_optional(database.pool())
        .await?;
    Ok(match row {
        Some(row) => Some(column::<Vec<u8>>(&row, 0)?),
        None => None,
    })
}

/// The id of the key-encryption key the root key of `service` is wrapped under (a key URL, or
/// `platform:{name}` for a platform-managed key), if the service has keys: where a service
/// whose vault is unreachable at start-up must reopen its keys from.
pub async fn stored_key_id(
    database: &Database,
    service: &str,
) -> Result<Option<String>, KeyringError> {
    database.migrate(COMPONENT, MIGRATIONS).await?;
    let row = sqlx::query("SELECT kek_id FROM dicom_service_keys WHERE service = $1")
        .bind(service)
        .fetch_optional(database.pool())
        .await?;
    Ok(match row {
        Some(row) => Some(column::<String>(&row, 0)?),
        None => None,
    })
}

/// The purpose under which platform-managed KEKs are sealed with the platform root key.
const PLATFORM_KEK_PURPOSE: &str = "dicom/platform-kek";

/// The platform-managed key-encryption key named `name` (e.g. a DICOM service's resource id):
/// an RSA-2048 key generated on first use, kept in the database as PKCS#8 sealed under the
/// platform root key. For services configured without a customer-managed key.
pub async fn platform_kek(
    database: &Database,
    root_key: &RootKey,
    name: &str,
) -> Result<LocalRsaKek, KeyringError> {
    database.migrate(COMPONENT, MIGRATIONS).await?;
    let key_id = format!("platform:{name}");
    if read_platform_kek(database, name).await?.is_none() {
        let generated = LocalRsaKek::generate(key_id.clone(), RsaKeySize::Rsa2048)?;
        let sealed = root_key.seal(
            PLATFORM_KEK_PURPOSE,
            name.as_bytes(),
            &generated.to_pkcs8()?,
        );
        sqlx::query(
            "INSERT INTO dicom_platform_keks (name, sealed_private_key) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(sealed.as_slice())
        .execute(database.pool())
        .await?;
    }
    let sealed = read_platform_kek(database, name)
        .await?
        .ok_or(KeyringError::NoServiceKeys)?;
    let pkcs8 = root_key
        .open(PLATFORM_KEK_PURPOSE, name.as_bytes(), &sealed)
        .map_err(|_| KeyringError::Integrity(KeyError::Integrity))?;
    Ok(LocalRsaKek::from_pkcs8(key_id, &pkcs8)?)
}

impl ServiceKeyring {
    /// The keyring of an existing service, still locked: used at start-up when the vault
    /// cannot be reached yet. [`ServiceKeyring::unlock`] opens it once access is back; until
    /// then the service's requests are refused.
    pub fn locked(
        database: &Database,
        service: &str,
        key_encryption_key: Arc<dyn KeyEncryptionKey>,
    ) -> Arc<ServiceKeyring> {
        Arc::new(KeyringCore::keyring(database, service, key_encryption_key))
    }
}
