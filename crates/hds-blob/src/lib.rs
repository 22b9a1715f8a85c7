//! Blob storage for hds: every byte a DICOM service stores outside the index goes through
//! [`BlobStore`], under an opaque random name.
//!
//! Architecture invariants:
//! - Blob names never carry UIDs or any other value from an instance (UIDs can carry PHI); they
//!   are random 128-bit identities, sharded into directories by their first byte, and for a
//!   small blob in a pack (`pack`) the place of its record.
//! - This is the one seam where stored bytes are written and read, so the envelope encryption
//!   of a blob happens here and nowhere else.
//! - A blob is read only through an index row that names it, and a row is committed only
//!   after its blob is complete and durable. On local files a blob is written under its name
//!   (`local`); in an object store it is one PUT or a multipart upload that appears when
//!   completed. A crash mid-write leaves at most an unreferenced blob, never half of one that
//!   a row names.
//! - Blobs live in the data dir or in Azure Blob Storage or S3 (`remote`, `--blob-store`);
//!   either way the store sees only sealed ciphertext under random names. In an object store a
//!   write is durable when the store acknowledged its completing request.
//! - On local files, a blob is on stable storage once its data and its directory are synced
//!   (`local`; for a record in a pack, its segment's data), unless the store was opened with [`LocalOptions::sync_writes`] off. Writes
//!   return a [`PendingSync`] with those syncs running, and a caller records a blob in the
//!   index only after [`PendingSync::synced`] returned, so after a power cut every recorded
//!   blob is there; a blob written but not recorded is an orphan that
//!   [`BlobStore::sweep_orphans`] removes.
#![deny(missing_docs)]

mod local;
mod pack;
mod remote;
mod sealed;
mod sweep;

pub use local::LocalOptions;
pub use pack::PACKED_BLOB_LIMIT;
pub use remote::{BlobConfigError, RemoteKind, RemoteLocation};
pub use sealed::{SealedBlobWriter, SealedRanges};
pub use sweep::{SHARD_COUNT, ShardListing};

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The blob does not exist.
    #[error("blob not found")]
    NotFound,
    /// The object store failed. The message is redacted: an object store's error can quote a
    /// request URL, and a SAS token's signature must not reach a log.
    #[error("blob store: {}", remote::redact(&.0.to_string()))]
    Store(#[from] object_store::Error),
    /// The object store did not answer the startup check in time.
    #[error("blob store: no answer within the startup check's deadline")]
    Unreachable,
    /// The blob name is not one this store issued.
    #[error("invalid blob name")]
    InvalidName,
    /// A sealed blob failed to open: it was altered, truncated, swapped with another blob, or
    /// opened with the wrong key.
    #[error("sealed blob failed its integrity check: {0}")]
    Integrity(#[from] hds_crypto::stream::OpenError),
    /// Sealing a blob failed.
    #[error("sealing a blob failed: {0}")]
    Seal(#[from] hds_crypto::stream::SealError),
}

/// The opaque name of a blob: its identity, 32 lowercase hex digits, and for a blob kept in a
/// pack of a local store ([`pack`]) where its record is: `IDENTITY@SEGMENT.OFFSET.LENGTH`
/// (decimal). The identity alone names the blob everywhere else: its file or object, and the
/// binding of its sealed stream, so a packed blob copied into another store (a backup, an
/// object store) keeps its name and still opens there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use = "a written blob is recorded by the name its write returns"]
pub struct BlobName {
    /// The whole name, as stored in the index.
    text: String,
    /// The identity's 16 bytes (what a pack record's header holds).
    identity: [u8; 16],
    /// Where its record is, for a packed blob.
    packed: Option<pack::RecordAt>,
}

/// Length of a blob name's identity.
const IDENTITY_LEN: usize = 32;

impl BlobName {
    /// A new random name.
    pub fn random() -> BlobName {
        BlobName::from_identity(rand::random())
    }

    /// The name of the blob whose identity is `identity`, not in a pack.
    pub(crate) fn from_identity(identity: [u8; 16]) -> BlobName {
        BlobName {
            text: hex::encode(identity),
            identity,
            packed: None,
        }
    }

    /// Parses a stored name, refusing anything that is not an identity of 32 lowercase hex
    /// digits, optionally followed by a record's place in one canonical spelling (so a name
    /// from the index can never address a path outside the store, nor two names one record).
    pub fn parse(name: &str) -> Result<BlobName, BlobError> {
        let (identity_text, record) = match name.split_once('@') {
            Some((identity, record)) => (identity, Some(record)),
            None => (name, None),
        };
        let lowercase_hex = identity_text.len() == IDENTITY_LEN
            && identity_text
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        let mut identity = [0u8; 16];
        if !lowercase_hex || hex::decode_to_slice(identity_text, &mut identity).is_err() {
            return Err(BlobError::InvalidName);
        }
        let packed = match record {
            Some(record) => Some(pack::RecordAt::parse(record).ok_or(BlobError::InvalidName)?),
            None => None,
        };
        Ok(BlobName {
            text: name.to_owned(),
            identity,
            packed,
        })
    }

    /// The name of the same blob kept at `record` of a pack.
    pub(crate) fn packed_at(&self, record: pack::RecordAt) -> BlobName {
        BlobName {
            text: format!("{}@{record}", self.identity()),
            identity: self.identity,
            packed: Some(record),
        }
    }

    /// The name as stored in the index.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The blob's identity: what its sealed stream is bound to, and its file or object's name.
    pub fn identity(&self) -> &str {
        // Every constructor checks the identity's 32 ASCII digits.
        &self.text[..IDENTITY_LEN]
    }

    /// The identity's 16 bytes.
    pub(crate) fn identity_bytes(&self) -> &[u8; 16] {
        &self.identity
    }

    /// Where the blob's record is, when it was written into a pack.
    pub(crate) fn packed(&self) -> Option<pack::RecordAt> {
        self.packed
    }

    pub(crate) fn object_path(&self) -> ObjectPath {
        let identity = self.identity();
        ObjectPath::from(format!("{}/{identity}", &identity[..2]))
    }
}

impl std::fmt::Display for BlobName {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.text)
    }
}

/// A store of blobs. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The files of a local store: written here rather than through `store` (which does not
    /// sync), and read directly by sealed reads, so that opening a blob and reading it is one
    /// blocking-pool task instead of two.
    pub(crate) local: Option<Arc<local::LocalFiles>>,
}

impl BlobStore {
    /// Blobs as files under `directory` (created if missing), every write synced before it
    /// returns.
    pub fn local(directory: &Path) -> Result<BlobStore, BlobError> {
        Self::local_with(directory, LocalOptions::default())
    }

    /// Blobs as files under `directory` (created if missing), written as `options` says.
    pub fn local_with(directory: &Path, options: LocalOptions) -> Result<BlobStore, BlobError> {
        std::fs::create_dir_all(directory).map_err(|source| {
            BlobError::Store(object_store::Error::Generic {
                store: "local",
                source: Box::new(source),
            })
        })?;
        let store = LocalFileSystem::new_with_prefix(directory)?;
        // The same directory the store resolves names under (it canonicalizes it too).
        let root = std::fs::canonicalize(directory).map_err(local_error)?;
        Ok(BlobStore {
            store: Arc::new(store),
            local: Some(Arc::new(local::LocalFiles::open(root, options)?)),
        })
    }

    /// Blobs in any object store (Azure Blob, S3, memory).
    pub fn from_object_store(store: Arc<dyn ObjectStore>) -> BlobStore {
        BlobStore { store, local: None }
    }

    /// Starts writing a new blob; it is visible only after [`BlobWriter::finish`].
    pub async fn create(&self, name: &BlobName) -> Result<BlobWriter, BlobError> {
        if let Some(local) = &self.local {
            return Ok(BlobWriter {
                inner: WriterKind::Local {
                    writer: local.create(name).await?,
                    files: Arc::clone(local),
                },
            });
        }
        let upload = self.store.put_multipart(&name.object_path()).await?;
        Ok(BlobWriter {
            inner: WriterKind::Store(WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024)),
        })
    }

    /// Writes a whole blob at once; it is durable when this returns. Returns the name to
    /// record it by: `name`, or on local files, for a small blob kept in a pack, `name` with
    /// where its record is.
    pub async fn put(&self, name: &BlobName, contents: Bytes) -> Result<BlobName, BlobError> {
        let (stored, pending) = self.put_pending(name, contents).await?;
        pending.synced().await?;
        Ok(stored)
    }

    /// Writes a whole blob at once and returns the name to record it by (see [`BlobStore::put`])
    /// with the syncs that make it durable still running: wait for them
    /// ([`PendingSync::synced`]) before recording the blob anywhere.
    pub async fn put_pending(
        &self,
        name: &BlobName,
        contents: Bytes,
    ) -> Result<(BlobName, PendingSync), BlobError> {
        if let Some(local) = &self.local {
            return local.put(name, contents).await;
        }
        self.store.put(&name.object_path(), contents.into()).await?;
        Ok((name.clone(), PendingSync::done()))
    }

    /// Reads `range` of a packed blob of a local store; `None` when the blob is not in a
    /// pack here (a file, an object store, or a record restored elsewhere), so the caller
    /// reads it by its identity.
    async fn read_packed(
        &self,
        name: &BlobName,
        range: Option<Range<u64>>,
    ) -> Result<Option<Bytes>, BlobError> {
        let (Some(local), Some(record)) = (&self.local, name.packed()) else {
            return Ok(None);
        };
        let identity = *name.identity_bytes();
        let packs = Arc::clone(&local.packs);
        let range = range.unwrap_or(0..u64::from(record.length));
        let read = local::blocking(move || packs.read(&identity, record, range)).await?;
        Ok(read.map(Bytes::from))
    }

    /// The blob's bytes as a stream of chunks.
    pub async fn read(
        &self,
        name: &BlobName,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        if let Some(bytes) = self.read_packed(name, None).await? {
            return Ok(futures::stream::once(futures::future::ready(Ok(bytes))).boxed());
        }
        let result = self
            .store
            .get(&name.object_path())
            .await
            .map_err(not_found)?;
        Ok(result.into_stream().map_err(BlobError::from).boxed())
    }

    /// The bytes in `range` of the blob.
    pub async fn read_range(&self, name: &BlobName, range: Range<u64>) -> Result<Bytes, BlobError> {
        if let Some(bytes) = self.read_packed(name, Some(range.clone())).await? {
            return Ok(bytes);
        }
        self.store
            .get_range(&name.object_path(), range)
            .await
            .map_err(not_found)
    }

    /// The file and the bytes in it that hold a local blob (a file of its own, or its record's
    /// bytes in a pack segment), for tools and tests that inspect a data dir; `None` for a
    /// missing blob or an object store.
    pub async fn local_extent(
        &self,
        name: &BlobName,
    ) -> Result<Option<(std::path::PathBuf, Range<u64>)>, BlobError> {
        let Some(local) = &self.local else {
            return Ok(None);
        };
        let local = Arc::clone(local);
        let name = name.clone();
        local::blocking(move || {
            let located = local.locate(&name)?;
            Ok(located.map(|located| (located.path, located.bytes)))
        })
        .await
    }

    /// Deletes a blob; deleting a missing blob succeeds.
    pub async fn delete(&self, name: &BlobName) -> Result<(), BlobError> {
        if let (Some(local), Some(record)) = (&self.local, name.packed()) {
            let identity = *name.identity_bytes();
            let packs = Arc::clone(&local.packs);
            local::blocking(move || packs.delete(&identity, record)).await?;
        }
        // A packed blob restored as a file (a backup's copy) is a file under its identity.
        match self.store.delete(&name.object_path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

fn local_error(source: std::io::Error) -> BlobError {
    BlobError::Store(object_store::Error::Generic {
        store: "local",
        source: Box::new(source),
    })
}

fn not_found(error: object_store::Error) -> BlobError {
    match error {
        object_store::Error::NotFound { .. } => BlobError::NotFound,
        other => BlobError::Store(other),
    }
}

/// The syncs that make a written blob durable, running on their own: a blob may be recorded
/// (referenced by an index row) only once [`PendingSync::synced`] returned `Ok`. Waited for
/// once, by whoever records the blob (the index's `CommitGate` shares the outcome further).
pub struct PendingSync(BoxFuture<'static, Result<(), BlobError>>);

impl PendingSync {
    /// Nothing left to sync.
    pub fn done() -> PendingSync {
        PendingSync(futures::future::ready(Ok(())).boxed())
    }

    /// Syncs that `syncs` waits for; they must already be running (spawned), since nobody
    /// may poll this until it is waited for.
    pub(crate) fn running(
        syncs: impl std::future::Future<Output = Result<(), BlobError>> + Send + 'static,
    ) -> PendingSync {
        PendingSync(syncs.boxed())
    }

    /// Waits until the blob is on stable storage.
    pub async fn synced(self) -> Result<(), BlobError> {
        self.0.await
    }
}

impl std::fmt::Debug for PendingSync {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PendingSync")
    }
}

/// A blob being written. Dropping it without [`BlobWriter::finish`] abandons the blob.
pub struct BlobWriter {
    inner: WriterKind,
}

enum WriterKind {
    /// A local file, synced when finished.
    Local {
        writer: local::LocalWriter,
        files: Arc<local::LocalFiles>,
    },
    /// A multipart upload to an object store.
    Store(WriteMultipart),
}

impl BlobWriter {
    /// Appends bytes. Waits when too many parts are in flight, so memory stays bounded.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        match &mut self.inner {
            WriterKind::Local { writer, .. } => writer.write(bytes.to_vec()).await,
            WriterKind::Store(upload) => {
                upload.wait_for_capacity(4).await?;
                upload.write(bytes);
                Ok(())
            }
        }
    }

    /// Completes the blob; it is durable when this returns.
    pub async fn finish(self) -> Result<(), BlobError> {
        self.finish_pending().await?.synced().await
    }

    /// Completes the blob and returns with the syncs that make it durable still running (on
    /// local files; an object store's upload is durable once completed).
    pub async fn finish_pending(self) -> Result<PendingSync, BlobError> {
        match self.inner {
            WriterKind::Local { writer, files } => files.finish(writer),
            WriterKind::Store(upload) => {
                upload.finish().await?;
                Ok(PendingSync::done())
            }
        }
    }

    /// Abandons the blob.
    pub async fn abort(self) -> Result<(), BlobError> {
        match self.inner {
            WriterKind::Local { writer, .. } => writer.abort().await,
            WriterKind::Store(upload) => {
                upload.abort().await?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_reads_ranges_and_deletes() -> Result<(), BlobError> {
        let directory = tempfile::tempdir().map_err(|e| {
            BlobError::Store(object_store::Error::Generic {
                store: "test",
                source: Box::new(e),
            })
        })?;
        let store = BlobStore::local(directory.path())?;
        let name = BlobName::random();
        let mut writer = store.create(&name).await?;
        let contents: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in contents.chunks(1 << 20) {
            writer.write(chunk).await?;
        }
        writer.finish().await?;
        let read: Vec<Bytes> = store.read(&name).await?.try_collect().await?;
        assert_eq!(read.concat(), contents);
        let range = store.read_range(&name, 9_999_990..10_000_010).await?;
        assert_eq!(&range[..], &contents[9_999_990..10_000_010]);
        store.delete(&name).await?;
        assert!(matches!(store.read(&name).await, Err(BlobError::NotFound)));
        store.delete(&name).await?;
        Ok(())
    }

    /// A blob's bytes, read back whole.
    pub(crate) async fn contents_of(store: &BlobStore, name: &BlobName) -> Vec<u8> {
        let chunks: Vec<Bytes> = store
            .read(name)
            .await
            .expect("read")
            .try_collect()
            .await
            .expect("bytes");
        chunks.concat()
    }

    /// The names of the files in a local store's shard directories.
    fn files_in(root: &Path) -> Vec<String> {
        let mut files = Vec::new();
        for shard in std::fs::read_dir(root).expect("root") {
            let shard = shard.expect("shard");
            if shard.file_name() == pack::DIRECTORY {
                continue;
            }
            for file in std::fs::read_dir(shard.path()).expect("shard dir") {
                files.push(
                    file.expect("file")
                        .file_name()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        files.sort();
        files
    }

    #[tokio::test]
    async fn local_writes_leave_only_whole_blobs_and_aborts_leave_nothing() {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(directory.path()).expect("store");
        // A small blob written whole goes into a pack, not a file of its own.
        let small = store
            .put(&BlobName::random(), Bytes::from_static(b"small"))
            .await
            .expect("put");
        assert!(small.packed().is_some());
        let whole = BlobName::random();
        let whole = store
            .put(&whole, Bytes::from(vec![2u8; pack::PACKED_BLOB_LIMIT + 1]))
            .await
            .expect("put");
        assert!(whole.packed().is_none(), "too large for a pack");
        let large = BlobName::random();
        let mut writer = store.create(&large).await.expect("create");
        writer.write(&[1u8; 3_000_000]).await.expect("write");
        assert_eq!(
            files_in(directory.path()).len(),
            2,
            "an unfinished blob is a file under its name"
        );
        writer.finish().await.expect("finish");
        let abandoned = BlobName::random();
        let mut writer = store.create(&abandoned).await.expect("create");
        writer.write(b"partial").await.expect("write");
        writer.abort().await.expect("abort");
        let dropped = BlobName::random();
        let mut writer = store.create(&dropped).await.expect("create");
        writer.write(b"partial").await.expect("write");
        drop(writer);

        let mut expected = vec![whole.to_string(), large.to_string()];
        expected.sort();
        assert_eq!(files_in(directory.path()), expected);
        assert_eq!(contents_of(&store, &small).await, b"small");
        assert_eq!(contents_of(&store, &large).await, vec![1u8; 3_000_000]);
        assert!(matches!(
            store.read(&abandoned).await,
            Err(BlobError::NotFound)
        ));
    }

    #[tokio::test]
    async fn concurrent_durable_writes_all_land() {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(directory.path()).expect("store");
        let mut tasks = Vec::new();
        for index in 0..64u8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let name = BlobName::random();
                store
                    .put(&name, Bytes::from(vec![index; 100]))
                    .await
                    .map(|stored| (stored, index))
            }));
        }
        for task in tasks {
            let (name, index) = task.await.expect("join").expect("put");
            assert_eq!(contents_of(&store, &name).await, vec![index; 100]);
        }
    }

    #[tokio::test]
    async fn settled_listings_name_old_blobs_and_remove_old_temporaries() {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(directory.path()).expect("store");
        // A file of its own: too large for a pack.
        let name = BlobName::random();
        let name = store
            .put(&name, Bytes::from(vec![1u8; pack::PACKED_BLOB_LIMIT + 1]))
            .await
            .expect("put");
        let shard = u8::from_str_radix(&name.as_str()[..2], 16).expect("hex");
        let crash_leftover = directory
            .path()
            .join(&name.as_str()[..2])
            .join(format!("{}.tmp-00000000000000ff", BlobName::random()));
        std::fs::write(&crash_leftover, b"half").expect("leftover");
        let stranger = directory.path().join(&name.as_str()[..2]).join("README");
        std::fs::write(&stranger, b"not ours").expect("stranger");

        let before = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let listing = store.list_settled(shard, before).await.expect("list");
        assert!(listing.settled_blobs.is_empty(), "nothing is an hour old");
        assert_eq!(listing.temporaries_removed, 0);
        assert!(crash_leftover.exists());

        let after = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        let listing = store.list_settled(shard, after).await.expect("list");
        assert_eq!(listing.settled_blobs, vec![name]);
        assert_eq!(listing.temporaries_removed, 1);
        assert!(!crash_leftover.exists());
        assert!(stranger.exists(), "files that are not ours are left alone");
    }

    #[test]
    fn names_are_opaque_and_validated() {
        let name = BlobName::random();
        assert_eq!(BlobName::parse(name.as_str()).ok(), Some(name));
        assert!(BlobName::parse("../../etc/passwd").is_err());
        assert!(BlobName::parse("1.2.840.10008.5.1.4.1.1.2").is_err());
    }
}
