//! Blobs as local files, written so that a blob whose syncs completed survives a power cut.
//!
//! A blob written whole of up to [`pack::PACKED_BLOB_LIMIT`] bytes is a record appended to a
//! pack segment (`crate::pack`), its segment's data synced after the write. Any other blob is a
//! file of its own: created under its (random) name in its shard directory, its bytes written,
//! then its data synced (`fdatasync`); the shard directory is synced after the file's creation,
//! so its name is on disk too. The syncs must complete before the caller records the blob in
//! the index: an index row never names a blob a power cut can take away.
//!
//! The syncs run while the caller goes on ([`PendingSync`]). The caller waits for them only
//! when it is about to commit the row that references the blob, so the syncs overlap with
//! parsing and with the wait for the index's group commit instead of adding to them. A blob
//! written whole ([`LocalFiles::put`]) is written and synced by one blocking task, which reports
//! the write as soon as it is done: one hop to the blocking pool per blob. A blob written in
//! pieces has its directory synced from its creation on (while the rest arrives), its data once
//! the last byte is written.
//!
//! A blob being written is a file under its final name (or a record at its place); until a
//! committed row names it, nothing reads it (names are random and only index rows lead to
//! them). One left half-written by a crash, or whose row never committed, is an orphan that the
//! sweeper removes after its grace period. No rename: a rename is another change to the
//! directory, and so another journal commit to wait for, per blob.
//!
//! Each file's syncs are its own. Directory syncs are not shared between writers: with 256
//! shard directories concurrent blobs seldom share one, and shared rounds made a writer that
//! arrived during a round wait for the next.
//!
//! Files with a `.tmp-` suffix after a blob's name were written by earlier versions (which
//! renamed a temporary into place); one left behind by a crash is removed by the sweeper
//! (`crate::sweep`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::task::JoinHandle;

use crate::{BlobError, BlobName, PendingSync, local_error, pack};

/// The suffix that marks a temporary file of an earlier version's writes (or one abandoned by
/// a crash).
pub(crate) const TEMPORARY_MARKER: &str = ".tmp-";

/// How local blob files are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalOptions {
    /// Sync each blob's data and its directory before a write is reported durable (the
    /// default). Turning it off leaves acknowledged blobs in the page cache, where a power cut
    /// or a kernel crash loses them: for benchmarks and throwaway data only.
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
    /// The small blobs written whole.
    pub(crate) packs: Arc<pack::Packs>,
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
        let packs = Arc::new(pack::Packs::new(&root, options.sync_writes));
        Ok(LocalFiles {
            root,
            options,
            packs,
        })
    }

    /// The path of a blob's file.
    pub(crate) fn path_of(&self, name: &BlobName) -> PathBuf {
        self.root.join(name.object_path().as_ref())
    }

    /// Where a blob's bytes are: its record in a pack, or else a file under its identity (a
    /// packed blob restored from a backup is one); `None` when neither is there. Blocks.
    pub(crate) fn locate(&self, name: &BlobName) -> std::io::Result<Option<Located>> {
        if let Some(record) = name.packed()
            && let Some(file) = self.packs.find(name.identity_bytes(), record)?
        {
            let start = record.data_offset();
            return Ok(Some(Located {
                file,
                path: self.packs.path_of(record.segment),
                bytes: start..start + u64::from(record.length),
            }));
        }
        let path = self.path_of(name);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let length = file.metadata()?.len();
        Ok(Some(Located {
            file: Arc::new(file),
            path,
            bytes: 0..length,
        }))
    }

    /// Starts a blob: its new file, whose directory's sync starts now.
    pub(crate) async fn create(&self, name: &BlobName) -> Result<LocalWriter, BlobError> {
        let path = self.path_of(name);
        let opened = path.clone();
        let file = tokio::task::spawn_blocking(move || create_new(&opened))
            .await
            .map_err(join_error)?
            .map_err(local_error)?;
        Ok(LocalWriter {
            file: Some(file),
            directory_synced: self.sync_directory_of(&path),
            path,
        })
    }

    /// Writes a whole blob: into a pack when it is small, else as a file of its own. Returns
    /// the name to record it by (a packed blob's says where its record is) with the syncs
    /// running (see the module doc).
    pub(crate) async fn put(
        &self,
        name: &BlobName,
        contents: bytes::Bytes,
    ) -> Result<(BlobName, PendingSync), BlobError> {
        if contents.len() <= pack::PACKED_BLOB_LIMIT && !contents.is_empty() {
            let identity = *name.identity_bytes();
            let packs = Arc::clone(&self.packs);
            let (record, synced) = self
                .write_then_sync(move || {
                    let (record, segment) = packs.append(&identity, &contents)?;
                    Ok((record, move || segment.sync_data()))
                })
                .await?;
            return Ok((name.packed_at(record), synced));
        }
        let path = self.path_of(name);
        let ((), synced) = self
            .write_then_sync(move || {
                let mut file = create_new(&path)?;
                if let Err(error) = file.write_all(&contents) {
                    drop(file);
                    let _ = std::fs::remove_file(&path);
                    return Err(error);
                }
                Ok(((), move || {
                    file.sync_data()?;
                    match path.parent() {
                        Some(directory) => sync_directory(directory),
                        None => Ok(()),
                    }
                }))
            })
            .await?;
        Ok((name.clone(), synced))
    }

    /// Runs `write` and then, when writes are synced, the sync it returns, on one blocking
    /// task that answers as soon as the write is done: a blob costs one hop to the blocking
    /// pool, not one for its write and another for its syncs.
    async fn write_then_sync<T, S>(
        &self,
        write: impl FnOnce() -> std::io::Result<(T, S)> + Send + 'static,
    ) -> Result<(T, PendingSync), BlobError>
    where
        T: Send + 'static,
        S: FnOnce() -> std::io::Result<()>,
    {
        let sync_writes = self.options.sync_writes;
        let (written, write_outcome) = tokio::sync::oneshot::channel();
        let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let sync = match write() {
                Ok((value, sync)) => {
                    let _ = written.send(Ok(value));
                    sync
                }
                Err(error) => {
                    let _ = written.send(Err(error));
                    return Ok(());
                }
            };
            if sync_writes { sync() } else { Ok(()) }
        });
        let value = write_outcome
            .await
            .map_err(|_| local_error(std::io::Error::other("the blob's write task ended")))?
            .map_err(local_error)?;
        if !sync_writes {
            return Ok((value, PendingSync::done()));
        }
        Ok((
            value,
            PendingSync::running(
                async move { synced.await.map_err(join_error)?.map_err(local_error) },
            ),
        ))
    }

    /// Ends a blob's writes and starts its data sync.
    pub(crate) fn finish(&self, mut writer: LocalWriter) -> Result<PendingSync, BlobError> {
        let file = writer
            .file
            .take()
            .ok_or_else(|| local_error(std::io::Error::other("blob writer already failed")))?;
        // Finished: the file is the blob's now, not the writer's to remove.
        writer.path = PathBuf::new();
        Ok(self.sync_data(file, writer.directory_synced.take()))
    }

    /// The directory sync of a new file's shard, running on a blocking thread so it proceeds
    /// whether or not anyone waits for it yet; `None` when writes are not synced.
    fn sync_directory_of(&self, path: &Path) -> Option<JoinHandle<Result<(), BlobError>>> {
        if !self.options.sync_writes {
            return None;
        }
        let directory = path.parent()?.to_path_buf();
        Some(tokio::task::spawn_blocking(move || {
            sync_directory(&directory).map_err(local_error)
        }))
    }

    /// Starts the data sync of a written file; the blob is durable when it and its directory's
    /// sync have completed.
    fn sync_data(
        &self,
        file: std::fs::File,
        directory_synced: Option<JoinHandle<Result<(), BlobError>>>,
    ) -> PendingSync {
        if !self.options.sync_writes {
            return PendingSync::done();
        }
        let data_synced = tokio::task::spawn_blocking(move || file.sync_data());
        PendingSync::running(async move {
            data_synced
                .await
                .map_err(join_error)?
                .map_err(local_error)?;
            if let Some(directory_synced) = directory_synced {
                directory_synced.await.map_err(join_error)??;
            }
            Ok(())
        })
    }
}

/// Where a local blob's bytes are ([`LocalFiles::locate`]).
pub(crate) struct Located {
    /// The open file that holds them: the blob's own, or its pack segment.
    pub(crate) file: Arc<std::fs::File>,
    /// That file's path.
    pub(crate) path: PathBuf,
    /// The blob's bytes in the file.
    pub(crate) bytes: std::ops::Range<u64>,
}

/// Runs blocking file work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(join_error)?
        .map_err(local_error)
}

/// Opens a new file; an existing one is an error (names are random: a clash is a bug).
fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

pub(crate) fn join_error(error: tokio::task::JoinError) -> BlobError {
    local_error(std::io::Error::other(error))
}

/// A local blob being written: its open file, and its directory's sync (started at creation).
pub(crate) struct LocalWriter {
    file: Option<std::fs::File>,
    /// The file's path while it is the writer's to remove (unfinished); empty once finished.
    path: PathBuf,
    directory_synced: Option<JoinHandle<Result<(), BlobError>>>,
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
        .map_err(join_error)?;
        written.map_err(local_error)?;
        self.file = Some(file);
        Ok(())
    }

    /// Abandons the blob: its file is removed.
    pub(crate) async fn abort(mut self) -> Result<(), BlobError> {
        self.file = None;
        let path = std::mem::take(&mut self.path);
        if !path.as_os_str().is_empty() {
            // A file left behind (the removal failed) is an orphan the sweeper removes later.
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
        }
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Dropped unfinished (a request cancelled mid-body): remove the file now rather than
        // leave it to the sweeper. A small blocking unlink.
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Syncs a directory, so the names created, renamed or removed in it are on disk.
pub(crate) fn sync_directory(directory: &Path) -> std::io::Result<()> {
    std::fs::File::open(directory)?.sync_all()
}
