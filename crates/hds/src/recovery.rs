//! `hds backup` and `hds restore`: argument handling around `hds-backup`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use hds_db::Database;

/// The environment variable a passphrase may come from instead of a file.
const PASSPHRASE_ENV: &str = "HDS_BACKUP_PASSPHRASE";
/// The largest passphrase file read.
const PASSPHRASE_FILE_LIMIT: u64 = 4096;

/// Options of `hds backup`.
#[derive(Debug, Args)]
pub struct BackupOptions {
    /// The data dir of the hds to back up (it may be running).
    #[arg(long, env = "HDS_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Where to write the backup: a new or empty directory.
    #[arg(long)]
    pub to: PathBuf,

    /// A 0600 file holding the passphrase that seals the root key in the backup (else the
    /// HDS_BACKUP_PASSPHRASE variable). Never on the command line.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,

    /// The index: `sqlite` (the data dir's `index.db`). A PostgreSQL URL is refused: back
    /// such an index up with `pg_dump` (docs/durability.md, "PostgreSQL").
    #[arg(long, env = "HDS_INDEX", default_value = "sqlite")]
    pub index: String,

    /// The blob store `hds up` runs with (`--blob-store`): the blobs are read through it and
    /// copied into the backup. Unset for the data dir's `blobs/`.
    #[arg(long, env = "HDS_BLOB_STORE", value_name = "URL")]
    pub blob_store: Option<String>,

    /// How the data dir keeps its root key: the flags `hds up` runs with.
    #[command(flatten)]
    pub root_key: crate::root_key::RootKeyOptions,
}

/// Options of `hds restore`.
#[derive(Debug, Args)]
pub struct RestoreOptions {
    /// The backup to restore.
    #[arg(long)]
    pub from: PathBuf,

    /// The new data dir: absent or empty.
    #[arg(long)]
    pub data_dir: PathBuf,

    /// A 0600 file holding the backup's passphrase (else the HDS_BACKUP_PASSPHRASE variable).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,

    /// Write the blobs into this object store (the `--blob-store` the restored hds will run
    /// with) instead of the new data dir's `blobs/`. A flag only, never read from
    /// HDS_BLOB_STORE: a restore writes into a store only when told to.
    #[arg(long, value_name = "URL")]
    pub blob_store: Option<String>,
}

pub async fn backup(options: BackupOptions) -> anyhow::Result<()> {
    if options.index != "sqlite" {
        bail!(
            "hds backup copies a SQLite index only; this hds keeps its index in PostgreSQL: back up the database with pg_dump, then the blob store and the sealed root key, as docs/durability.md (section \"PostgreSQL\") describes"
        );
    }
    let backup_passphrase = passphrase(options.passphrase_file.as_deref())?;
    let root_key = crate::root_key::open_existing(&options.data_dir, &options.root_key)?;
    let database_path = options.data_dir.join("index.db");
    if !database_path.is_file() {
        bail!(
            "{} holds no SQLite index (index.db); for an index in PostgreSQL follow docs/durability.md (section \"PostgreSQL\")",
            options.data_dir.display()
        );
    }
    let database = Database::connect(&format!("sqlite:{}", database_path.display()))
        .await
        .context("opening the database")?;
    let blobs = crate::blob_store::open(&options.data_dir, options.blob_store.as_deref()).await?;
    let started = std::time::Instant::now();
    let report = hds_backup::backup(
        hds_backup::BackupSource {
            data_dir: &options.data_dir,
            database: &database,
            blobs: &blobs,
            root_key: &root_key,
        },
        &options.to,
        &backup_passphrase,
    )
    .await
    .context("backing up")?;
    database.close().await;
    tracing::info!(
        instances = report.instances,
        blobs = report.blobs,
        blob_bytes = report.blob_bytes,
        deleted_during_backup = report.deleted_during_backup,
        seconds = started.elapsed().as_secs_f64(),
        "backup complete"
    );
    Ok(())
}

pub async fn restore(options: RestoreOptions) -> anyhow::Result<()> {
    let passphrase = passphrase(options.passphrase_file.as_deref())?;
    let report = match crate::blob_store::open_remote(options.blob_store.as_deref())? {
        Some(remote) => {
            let blobs = remote.checked().await?;
            hds_backup::restore_into(&options.from, &options.data_dir, &passphrase, &blobs).await
        }
        None => hds_backup::restore(&options.from, &options.data_dir, &passphrase).await,
    }
    .context("restoring")?;
    tracing::info!(
        instances = report.instances,
        blobs = report.blobs,
        "restore complete; start it with hds up --data-dir {}",
        options.data_dir.display()
    );
    Ok(())
}

/// The passphrase from its file (owner-only, trailing newline dropped) or the environment.
pub(crate) fn passphrase(file: Option<&Path>) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut bytes = match file {
        Some(path) => {
            use std::io::Read;
            use std::os::unix::fs::PermissionsExt;
            let opened =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let metadata = opened.metadata()?;
            if metadata.permissions().mode() & 0o077 != 0 {
                bail!(
                    "{} must not be readable by group or others (chmod 600)",
                    path.display()
                );
            }
            let mut bytes = zeroize::Zeroizing::new(Vec::new());
            opened
                .take(PASSPHRASE_FILE_LIMIT + 1)
                .read_to_end(&mut bytes)?;
            if bytes.len() as u64 > PASSPHRASE_FILE_LIMIT {
                bail!(
                    "{} is larger than {PASSPHRASE_FILE_LIMIT} bytes",
                    path.display()
                );
            }
            bytes
        }
        None => match std::env::var_os(PASSPHRASE_ENV) {
            Some(value) => zeroize::Zeroizing::new(value.into_encoded_bytes()),
            None => bail!("give the passphrase with --passphrase-file or {PASSPHRASE_ENV}"),
        },
    };
    while bytes
        .last()
        .is_some_and(|byte| *byte == b'\n' || *byte == b'\r')
    {
        bytes.pop();
    }
    Ok(bytes)
}
