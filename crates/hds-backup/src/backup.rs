//! Online backup of a data dir, and its restore into a new one.
//!
//! A backup directory holds:
//! - `index.db`: the database at one instant, made by SQLite's `VACUUM INTO` on a read
//!   transaction, so STOWs and every other write go on while it runs;
//! - `blobs/`: every blob that snapshot references, copied after the snapshot (a blob is
//!   written and synced before its index row commits, so every blob the snapshot names
//!   exists; one deleted since is dropped from the copy's index, see [`BackupReport`]);
//! - `root.key.sealed`: the root key under the operator's passphrase (Argon2id and
//!   AES-256-GCM, `hds_crypto::root`), never the raw key;
//! - `files/`: the rest of the data dir (the local CA, sealed under the root key), without
//!   `admin.json`: the restored hds issues the admin a new secret at its first start;
//! - `hds-backup.json`: what the backup holds, written last, so a directory without it is an
//!   unfinished backup that [`restore`] refuses.
//!
//! Everything is synced before [`backup`] returns. Customer data stays sealed under keys the
//! customer holds: a restored hds serves it only while the customer's key is reachable.

use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use hds_blob::{BlobError, BlobName, BlobStore};
use hds_crypto::root::{RootKey, RootKeyError};
use hds_db::{Backend, Database};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// The manifest's file name.
const MANIFEST: &str = "hds-backup.json";
/// The database copy's file name (in the backup and in the data dir).
const DATABASE_FILE: &str = "index.db";
/// The sealed root key's file name in a backup.
const SEALED_ROOT_KEY: &str = "root.key.sealed";
/// The plaintext root key's file name in a data dir.
const ROOT_KEY: &str = "root.key";
/// Entries of a data dir that a backup handles itself, or leaves out.
const HANDLED_ENTRIES: &[&str] = &[
    ROOT_KEY,
    "root.key.sealed",
    // Useless without the token that wrapped it; the backup holds the key sealed instead.
    "root.key.wrapped",
    "admin.json",
    DATABASE_FILE,
    "index.db-wal",
    "index.db-shm",
    "blobs",
];
/// The backup format this build writes and reads.
const FORMAT_VERSION: u32 = 1;
/// Blobs copied at once.
const COPY_CONCURRENCY: usize = 8;

/// Why a backup or a restore failed. Nothing is left half-done where it matters: a backup
/// without its manifest is refused by restore, and restore writes nothing before the
/// passphrase has opened the root key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The target directory exists and is not empty.
    #[error("{0} exists and is not empty")]
    TargetNotEmpty(PathBuf),
    /// The database is PostgreSQL: back it up with `pg_dump` (docs/durability.md).
    #[error(
        "hds backup copies SQLite data dirs; for PostgreSQL use pg_dump and copy the blobs (docs/durability.md)"
    )]
    PostgresUsePgDump,
    /// The directory is not a complete backup of this format.
    #[error("{0} is not a complete hds backup (no readable {MANIFEST} of format {FORMAT_VERSION})")]
    NotABackup(PathBuf),
    /// The root key could not be sealed or opened.
    #[error("root key: {0}")]
    RootKey(#[from] RootKeyError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Opening a database failed.
    #[error("database: {0}")]
    Db(#[from] hds_db::DbError),
    /// Reading or writing a blob failed.
    #[error("blob store: {0}")]
    Blobs(#[from] BlobError),
    /// The restored data dir's index names blobs the backup does not hold.
    #[error("the backup is incomplete: {0} blobs its index references are missing")]
    MissingBlobs(u64),
}

/// What a running hds is made of, for [`backup`].
pub struct BackupSource<'a> {
    /// The data dir (its other files are copied too).
    pub data_dir: &'a Path,
    /// The database (SQLite).
    pub database: &'a Database,
    /// The blob store.
    pub blobs: &'a BlobStore,
    /// The root key.
    pub root_key: &'a RootKey,
}

/// What a backup copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    /// Instances in the backup's index.
    pub instances: u64,
    /// Blobs copied.
    pub blobs: u64,
    /// Bytes of blobs copied (ciphertext).
    pub blob_bytes: u64,
    /// Instances deleted between the snapshot and the copy of their blob: dropped from the
    /// backup's index, as if the backup had been taken just after their delete.
    pub deleted_during_backup: u64,
}

/// What a restore wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Blobs restored.
    pub blobs: u64,
    /// Instances in the restored index.
    pub instances: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    format: u32,
    #[serde(flatten)]
    report: BackupReport,
}

/// Takes an online backup of `source` into `destination` (created; it must be absent or
/// empty), the root key sealed under `passphrase`.
pub async fn backup(
    source: BackupSource<'_>,
    destination: &Path,
    passphrase: &[u8],
) -> Result<BackupReport, BackupError> {
    if source.database.backend() != Backend::Sqlite {
        return Err(BackupError::PostgresUsePgDump);
    }
    // Seal first: a passphrase refused (too short) leaves nothing behind.
    let sealed_root_key = source.root_key.seal_with_passphrase(passphrase)?;
    prepare_empty_directory(destination)?;
    write_synced(&destination.join(SEALED_ROOT_KEY), &sealed_root_key)?;

    // The snapshot: one read transaction's view of every table.
    let database_copy = destination.join(DATABASE_FILE);
    let database_copy_text = database_copy
        .to_str()
        .ok_or_else(|| io_error(&database_copy, std::io::Error::other("path is not UTF-8")))?
        .to_owned();
    sqlx::query("VACUUM INTO $1")
        .bind(database_copy_text.as_str())
        .execute(source.database.pool())
        .await?;
    sync_file(&database_copy)?;

    let copy = Database::connect(&format!("sqlite:{database_copy_text}")).await?;
    let names = blob_names(&copy).await?;
    let target_blobs = BlobStore::local(&destination.join("blobs"))?;
    let mut report = BackupReport::default();
    let copied: Vec<Result<u64, BlobError>> = futures::stream::iter(names.iter())
        .map(|name| copy_blob(source.blobs, &target_blobs, name))
        .buffered(COPY_CONCURRENCY)
        .collect()
        .await;
    for (name, result) in names.iter().zip(copied) {
        match result {
            Ok(bytes) => {
                report.blobs += 1;
                report.blob_bytes += bytes;
            }
            Err(BlobError::NotFound) => {
                // Deleted after the snapshot: its delete had committed, so drop its row.
                sqlx::query(
                    "DELETE FROM dicom_instances WHERE blob_name = $1 \
                     OR original_blob_name = $1",
                )
                .bind(name.as_str())
                .execute(copy.pool())
                .await?;
                report.deleted_during_backup += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
    report.instances = count_instances(&copy).await?;
    // Fold the copy's log into its file, so the backup is the one file.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(copy.pool())
        .await?;
    copy.close().await;
    sync_file(&database_copy)?;

    copy_tree(source.data_dir, &destination.join("files"), true)?;

    let manifest = serde_json::to_vec_pretty(&Manifest {
        format: FORMAT_VERSION,
        report,
    })
    .map_err(|error| io_error(&destination.join(MANIFEST), std::io::Error::other(error)))?;
    write_synced(&destination.join(MANIFEST), &manifest)?;
    Ok(report)
}

/// Restores the backup in `source` into a new data dir `data_dir` (absent or empty). The
/// passphrase is checked before anything is written; the root key is written as the plaintext
/// `root.key` that `hds up` reads by default.
pub async fn restore(
    source: &Path,
    data_dir: &Path,
    passphrase: &[u8],
) -> Result<RestoreReport, BackupError> {
    restore_with(source, data_dir, passphrase, None).await
}

/// [`restore`], with the blobs written into `blobs` (an object store the restored hds runs
/// with) instead of the new data dir. Blobs already there under the same names are rewritten
/// with the backup's bytes: a blob's name and contents never change once written.
pub async fn restore_into(
    source: &Path,
    data_dir: &Path,
    passphrase: &[u8],
    blobs: &BlobStore,
) -> Result<RestoreReport, BackupError> {
    restore_with(source, data_dir, passphrase, Some(blobs)).await
}

async fn restore_with(
    source: &Path,
    data_dir: &Path,
    passphrase: &[u8],
    target_blobs: Option<&BlobStore>,
) -> Result<RestoreReport, BackupError> {
    let manifest_path = source.join(MANIFEST);
    let manifest: Manifest = std::fs::read(&manifest_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(|manifest: &Manifest| manifest.format == FORMAT_VERSION)
        .ok_or_else(|| BackupError::NotABackup(source.to_path_buf()))?;
    let sealed_path = source.join(SEALED_ROOT_KEY);
    let sealed = std::fs::read(&sealed_path).map_err(|error| io_error(&sealed_path, error))?;
    let root_key = RootKey::open_with_passphrase(&sealed, passphrase)?;
    prepare_empty_directory(data_dir)?;

    let files = source.join("files");
    if files.is_dir() {
        copy_tree(&files, data_dir, false)?;
    }
    let database_path = data_dir.join(DATABASE_FILE);
    std::fs::copy(source.join(DATABASE_FILE), &database_path)
        .map_err(|error| io_error(&database_path, error))?;
    sync_file(&database_path)?;

    let database = Database::connect(&format!("sqlite:{}", database_path.display())).await?;
    let names = blob_names(&database).await?;
    let instances = count_instances(&database).await?;
    database.close().await;
    let backup_blobs = BlobStore::local(&source.join("blobs"))?;
    let restored_blobs = match target_blobs {
        Some(blobs) => blobs.clone(),
        None => BlobStore::local(&data_dir.join("blobs"))?,
    };
    let copied: Vec<Result<u64, BlobError>> = futures::stream::iter(names.iter())
        .map(|name| copy_blob(&backup_blobs, &restored_blobs, name))
        .buffered(COPY_CONCURRENCY)
        .collect()
        .await;
    let mut missing = 0u64;
    for result in copied {
        match result {
            Ok(_) => {}
            Err(BlobError::NotFound) => missing += 1,
            Err(error) => return Err(error.into()),
        }
    }
    if missing > 0 {
        return Err(BackupError::MissingBlobs(missing));
    }
    // The key last: a data dir without it does not start, so an interrupted restore is
    // never mistaken for a complete one.
    root_key_file(&root_key, &data_dir.join(ROOT_KEY))?;
    tracing::info!(
        instances,
        backup_instances = manifest.report.instances,
        "restored"
    );
    Ok(RestoreReport {
        blobs: names.len() as u64,
        instances,
    })
}

/// Writes the plaintext root key file (0600, synced) that `hds up` reads.
fn root_key_file(root_key: &RootKey, path: &Path) -> Result<(), BackupError> {
    // The key crosses into a file only through hds-crypto: sealed under a one-off passphrase
    // would defeat the purpose, so this asks hds-crypto for the plaintext file format.
    root_key.write_plaintext(path)?;
    Ok(())
}

/// Every blob name in a database's index.
async fn blob_names(database: &Database) -> Result<Vec<BlobName>, BackupError> {
    // Updated instances' originals are blobs of their own.
    let rows = sqlx::query(
        "SELECT blob_name FROM (SELECT id, blob_name FROM dicom_instances UNION ALL \
         SELECT id, original_blob_name FROM dicom_instances \
         WHERE original_blob_name IS NOT NULL) AS names ORDER BY id",
    )
    .fetch(database.pool())
    .map_err(BackupError::from)
    .and_then(|row| async move {
        let name: String = row.try_get(0)?;
        Ok(BlobName::parse(&name)?)
    });
    rows.try_collect().await
}

async fn count_instances(database: &Database) -> Result<u64, BackupError> {
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM dicom_instances")
        .fetch_one(database.pool())
        .await?
        .try_get(0)?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Copies one blob's stored bytes (ciphertext: nothing is opened) durably; its size.
async fn copy_blob(from: &BlobStore, to: &BlobStore, name: &BlobName) -> Result<u64, BlobError> {
    let mut chunks = from.read(name).await?;
    let mut writer = to.create(name).await?;
    let mut size = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                let _ = writer.abort().await;
                return Err(error);
            }
        };
        size += chunk.len() as u64;
        writer.write(&chunk).await?;
    }
    writer.finish().await?;
    Ok(size)
}

/// Creates `directory` (0700) or accepts it empty.
fn prepare_empty_directory(directory: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(directory) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::TargetNotEmpty(directory.to_path_buf()));
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(directory).map_err(|error| io_error(directory, error))?;
        }
        Err(error) => return Err(io_error(directory, error)),
    }
    set_owner_only(directory)?;
    Ok(())
}

#[cfg(unix)]
fn set_owner_only(directory: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o700))
        .map_err(|error| io_error(directory, error))
}

#[cfg(not(unix))]
fn set_owner_only(_directory: &Path) -> Result<(), BackupError> {
    Ok(())
}

/// Copies the files under `from` to `to`, keeping modes; at the top level of a data dir
/// (`top_level_of_data_dir`) the entries the backup handles itself are skipped.
fn copy_tree(from: &Path, to: &Path, top_level_of_data_dir: bool) -> Result<(), BackupError> {
    std::fs::create_dir_all(to).map_err(|error| io_error(to, error))?;
    let entries = std::fs::read_dir(from).map_err(|error| io_error(from, error))?;
    for entry in entries {
        let entry = entry.map_err(|error| io_error(from, error))?;
        let name = entry.file_name();
        if top_level_of_data_dir
            && name
                .to_str()
                .is_some_and(|name| HANDLED_ENTRIES.contains(&name))
        {
            continue;
        }
        let path = entry.path();
        let target = to.join(&name);
        let kind = entry.file_type().map_err(|error| io_error(&path, error))?;
        if kind.is_dir() {
            copy_tree(&path, &target, false)?;
        } else if kind.is_file() {
            std::fs::copy(&path, &target).map_err(|error| io_error(&target, error))?;
            sync_file(&target)?;
        }
    }
    sync_file(to)?;
    Ok(())
}

/// Writes a new file (0600) and syncs it and its directory.
fn write_synced(path: &Path, contents: &[u8]) -> Result<(), BackupError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|error| io_error(path, error))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|error| io_error(path, error))?;
    if let Some(parent) = path.parent() {
        sync_file(parent)?;
    }
    Ok(())
}

/// Syncs a file or a directory.
fn sync_file(path: &Path) -> Result<(), BackupError> {
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|error| io_error(path, error))
}

fn io_error(path: &Path, source: std::io::Error) -> BackupError {
    BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}
