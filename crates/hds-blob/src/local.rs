//! Blobs as local files, written so that a blob whose write returned survives a power cut.
//!
//! A blob is written to a temporary file in its shard directory, its data synced
//! (`fdatasync`), renamed to its name, and then the shard directory is synced, so the rename
//! itself is on disk. Only then does the write return, and only then may the caller record
//! the blob in the index: an index row never names a blob a power cut can take away.
//!
//! The data sync is one per blob (its data is its own). The directory syncs are shared: writers
//! that finish while a round of directory syncs is running join the next round, which syncs each
//! directory named in it once. Under concurrent stores one round covers many blobs, the way the
//! index's group commit covers many rows with one commit.
//!
//! Temporary files carry a `.tmp-` suffix after the blob's name; one left behind by a crash
//! is not a blob and is removed by the sweeper (`crate::sweep`).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::{BlobError, BlobName, local_error};

/// The suffix that marks a blob still being written (or abandoned by a crash).
pub(crate) const TEMPORARY_MARKER: &str = ".tmp-";

/// How local blob files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalOptions {
    /// Sync each blob's data and its directory before a write returns (the default). Turning
    /// it off leaves acknowledged blobs in the page cache, where a power cut or a kernel crash
    /// loses them: for benchmarks and throwaway data only.
    pub sync_writes: bool,
}

impl Default for LocalOptions {
    fn default() -> LocalOptions {
        LocalOptions { sync_writes: true }
    }
}

/// The local files of a store: where they live and how they are written.
pub(crate) struct LocalFiles {
    pub(crate) root: PathBuf,
    pub(crate) options: LocalOptions,
    directory_sync: DirectorySync,
}

impl LocalFiles {
    pub(crate) fn open(root: PathBuf, options: LocalOptions) -> Result<LocalFiles, BlobError> {
        // Every blob lives under the directory named by its name's first two hex digits
        // (`BlobName::object_path`). Made here once, rather than by the first store into each
        // of them: a STOW then creates one file and no directory.
        let mut created = false;
        for prefix in 0..=255u8 {
            let shard = root.join(format!("{prefix:02x}"));
            if !shard.is_dir() {
                std::fs::create_dir_all(&shard).map_err(local_error)?;
                created = true;
            }
        }
        if created && options.sync_writes {
            // The new shard directories themselves must survive a power cut, and the root
            // with them.
            sync_directory(&root).map_err(local_error)?;
            if let Some(parent) = root.parent() {
                sync_directory(parent).map_err(local_error)?;
            }
        }
        Ok(LocalFiles {
            root,
            options,
            directory_sync: DirectorySync::default(),
        })
    }

    /// The path of a blob's file.
    pub(crate) fn path_of(&self, name: &BlobName) -> PathBuf {
        self.root.join(name.object_path().as_ref())
    }

    /// Starts a blob: a new temporary file in its shard directory.
    pub(crate) async fn create(&self, name: &BlobName) -> Result<LocalWriter, BlobError> {
        let final_path = self.path_of(name);
        let suffix: u64 = rand::random();
        let temporary_path = PathBuf::from(format!(
            "{}{TEMPORARY_MARKER}{suffix:016x}",
            final_path.display()
        ));
        let opened = temporary_path.clone();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&opened)
        })
        .await
        .map_err(|error| local_error(std::io::Error::other(error)))?
        .map_err(local_error)?;
        Ok(LocalWriter {
            file: Some(file),
            temporary_path,
            final_path,
        })
    }

    /// Writes a whole blob durably (see the module doc).
    pub(crate) async fn put(&self, name: &BlobName, contents: &[u8]) -> Result<(), BlobError> {
        let mut writer = self.create(name).await?;
        writer.write(contents.to_vec()).await?;
        self.finish(writer).await
    }

    /// Syncs the blob's data, renames it into place and syncs its directory.
    pub(crate) async fn finish(&self, mut writer: LocalWriter) -> Result<(), BlobError> {
        let file = writer.file.take();
        let temporary_path = writer.temporary_path.clone();
        let final_path = writer.final_path.clone();
        let sync_writes = self.options.sync_writes;
        let renamed = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(file) = file {
                if sync_writes {
                    file.sync_data()?;
                }
                drop(file);
            }
            std::fs::rename(&temporary_path, &final_path)
        })
        .await
        .map_err(|error| local_error(std::io::Error::other(error)))?;
        if let Err(error) = renamed {
            writer.remove_temporary().await;
            return Err(local_error(error));
        }
        // Renamed: nothing left to remove.
        writer.temporary_path = PathBuf::new();
        if sync_writes && let Some(directory) = writer.final_path.parent() {
            self.directory_sync.sync(directory.to_path_buf()).await?;
        }
        Ok(())
    }
}

/// A local blob being written: the open temporary file and where it goes.
pub(crate) struct LocalWriter {
    file: Option<std::fs::File>,
    temporary_path: PathBuf,
    final_path: PathBuf,
}

impl LocalWriter {
    /// Appends bytes (on the blocking pool).
    pub(crate) async fn write(&mut self, bytes: Vec<u8>) -> Result<(), BlobError> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| local_error(std::io::Error::other("blob writer already failed")))?;
        let (file, written) = tokio::task::spawn_blocking(move || {
            let written = file.write_all(&bytes);
            (file, written)
        })
        .await
        .map_err(|error| local_error(std::io::Error::other(error)))?;
        written.map_err(local_error)?;
        self.file = Some(file);
        Ok(())
    }

    /// Abandons the blob: its temporary file is removed.
    pub(crate) async fn abort(mut self) -> Result<(), BlobError> {
        self.file = None;
        self.remove_temporary().await;
        Ok(())
    }

    async fn remove_temporary(&mut self) {
        let path = std::mem::take(&mut self.temporary_path);
        if path.as_os_str().is_empty() {
            return;
        }
        // A file left behind (the removal failed) is a temporary the sweeper removes later.
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Dropped unfinished (a request cancelled mid-body): remove the temporary file now
        // rather than leave it to the sweeper. A small blocking unlink.
        if !self.temporary_path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temporary_path);
        }
    }
}

/// Syncs a directory, so the names created, renamed or removed in it are on disk.
pub(crate) fn sync_directory(directory: &Path) -> std::io::Result<()> {
    std::fs::File::open(directory)?.sync_all()
}

/// Directory syncs shared between concurrent writers, in rounds (see the module doc).
#[derive(Default)]
struct DirectorySync {
    state: Arc<Mutex<SyncState>>,
    completed: Arc<SyncProgress>,
}

struct SyncProgress {
    sender: watch::Sender<RoundsDone>,
}

impl Default for SyncProgress {
    fn default() -> SyncProgress {
        SyncProgress {
            sender: watch::Sender::new(RoundsDone::default()),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct RoundsDone {
    /// The last round whose syncs finished.
    completed: u64,
    /// The last round whose syncs failed: its writers (and any that cannot tell their round
    /// apart from it) get an error.
    last_failed: Option<u64>,
}

#[derive(Default)]
struct SyncState {
    /// Directories waiting for the next round.
    pending: BTreeSet<PathBuf>,
    /// The round that new requests join (rounds are numbered from 1).
    next_round: u64,
    /// Whether a task is running rounds.
    running: bool,
}

impl DirectorySync {
    /// Returns once `directory` has been synced by a round that began after this call.
    async fn sync(&self, directory: PathBuf) -> Result<(), BlobError> {
        let round = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if state.next_round == 0 {
                state.next_round = 1;
            }
            state.pending.insert(directory);
            if !state.running {
                state.running = true;
                let state = Arc::clone(&self.state);
                let completed = Arc::clone(&self.completed);
                tokio::spawn(run_rounds(state, completed));
            }
            state.next_round
        };
        let mut receiver = self.completed.sender.subscribe();
        let done = receiver
            .wait_for(|done| done.completed >= round)
            .await
            .map(|done| *done)
            .map_err(|error| local_error(std::io::Error::other(error)))?;
        if done.last_failed.is_some_and(|failed| failed >= round) {
            return Err(local_error(std::io::Error::other(
                "syncing a blob directory failed",
            )));
        }
        Ok(())
    }
}

/// Runs rounds until no directory is pending.
async fn run_rounds(state: Arc<Mutex<SyncState>>, progress: Arc<SyncProgress>) {
    loop {
        let (directories, round) = {
            let mut state = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if state.pending.is_empty() {
                state.running = false;
                return;
            }
            let round = state.next_round;
            state.next_round += 1;
            (std::mem::take(&mut state.pending), round)
        };
        let synced = tokio::task::spawn_blocking(move || {
            directories
                .iter()
                .try_for_each(|directory| sync_directory(directory))
        })
        .await;
        let failed = !matches!(synced, Ok(Ok(())));
        if failed {
            tracing::error!("syncing blob directories failed; the stores waiting on it fail");
        }
        progress.sender.send_modify(|done| {
            done.completed = round;
            if failed {
                done.last_failed = Some(round);
            }
        });
    }
}
