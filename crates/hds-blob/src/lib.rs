//! Blob storage for hds: every byte a DICOM service stores outside the index goes through
//! [`BlobStore`], under an opaque random name.
//!
//! Architecture invariants:
//! - Blob names never carry UIDs or any other value from an instance (UIDs can carry PHI); they
//!   are random 128-bit identifiers, sharded into directories by their first byte.
//! - This is the one seam where stored bytes are written and read, so the envelope encryption
//!   of a blob happens here and nowhere else.
//! - A blob becomes visible under its name only when complete (object_store writes to a temporary
//!   file and renames it), so a crash never leaves half a blob under a real name.
#![deny(missing_docs)]

mod sealed;

pub use sealed::{SealedBlobWriter, SealedRanges};

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
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
    /// The object store failed.
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
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

/// The opaque name of a blob: 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobName(String);

impl BlobName {
    /// A new random name.
    pub fn random() -> BlobName {
        let bytes: [u8; 16] = rand::random();
        BlobName(hex::encode(bytes))
    }

    /// Parses a stored name, refusing anything that is not 32 lowercase hex digits (so a name
    /// from the index can never address a path outside the store).
    pub fn parse(name: &str) -> Result<BlobName, BlobError> {
        let well_formed = name.len() == 32
            && name
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if well_formed {
            Ok(BlobName(name.to_owned()))
        } else {
            Err(BlobError::InvalidName)
        }
    }

    /// The name as stored in the index.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn object_path(&self) -> ObjectPath {
        ObjectPath::from(format!("{}/{}", &self.0[..2], &self.0))
    }
}

impl std::fmt::Display for BlobName {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A store of blobs. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The directory of a store of local files: sealed reads open the files themselves, so
    /// that opening a blob and reading it is one blocking-pool task instead of two.
    pub(crate) local_root: Option<Arc<PathBuf>>,
}

impl BlobStore {
    /// Blobs as files under `directory` (created if missing).
    pub fn local(directory: &Path) -> Result<BlobStore, BlobError> {
        std::fs::create_dir_all(directory).map_err(|source| {
            BlobError::Store(object_store::Error::Generic {
                store: "local",
                source: Box::new(source),
            })
        })?;
        let store = LocalFileSystem::new_with_prefix(directory)?;
        // The same directory the store resolves names under (it canonicalizes it too).
        let root = std::fs::canonicalize(directory).map_err(local_error)?;
        // Every blob lives under the directory named by its name's first two hex digits
        // (`BlobName::object_path`). Made here once, rather than by the first store into each
        // of them: a STOW then creates one file and no directory.
        for prefix in 0..=255u8 {
            std::fs::create_dir_all(root.join(format!("{prefix:02x}"))).map_err(local_error)?;
        }
        Ok(BlobStore {
            store: Arc::new(store),
            local_root: Some(Arc::new(root)),
        })
    }

    /// Blobs in any object store (Azure Blob, S3, memory).
    pub fn from_object_store(store: Arc<dyn ObjectStore>) -> BlobStore {
        BlobStore {
            store,
            local_root: None,
        }
    }

    /// Starts writing a new blob; it is visible only after [`BlobWriter::finish`].
    pub async fn create(&self, name: &BlobName) -> Result<BlobWriter, BlobError> {
        let upload = self.store.put_multipart(&name.object_path()).await?;
        Ok(BlobWriter {
            inner: WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024),
        })
    }

    /// Writes a whole blob at once.
    pub async fn put(&self, name: &BlobName, contents: Bytes) -> Result<(), BlobError> {
        self.store.put(&name.object_path(), contents.into()).await?;
        Ok(())
    }

    /// The blob's bytes as a stream of chunks.
    pub async fn read(
        &self,
        name: &BlobName,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let result = self
            .store
            .get(&name.object_path())
            .await
            .map_err(not_found)?;
        Ok(result.into_stream().map_err(BlobError::from).boxed())
    }

    /// The bytes in `range` of the blob.
    pub async fn read_range(&self, name: &BlobName, range: Range<u64>) -> Result<Bytes, BlobError> {
        self.store
            .get_range(&name.object_path(), range)
            .await
            .map_err(not_found)
    }

    /// Deletes a blob; deleting a missing blob succeeds.
    pub async fn delete(&self, name: &BlobName) -> Result<(), BlobError> {
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

/// A blob being written. Dropping it without [`BlobWriter::finish`] abandons the blob.
pub struct BlobWriter {
    inner: WriteMultipart,
}

impl BlobWriter {
    /// Appends bytes. Waits when too many parts are in flight, so memory stays bounded.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.inner.wait_for_capacity(4).await?;
        self.inner.write(bytes);
        Ok(())
    }

    /// Completes the blob, making it visible under its name.
    pub async fn finish(self) -> Result<(), BlobError> {
        self.inner.finish().await?;
        Ok(())
    }

    /// Abandons the blob.
    pub async fn abort(self) -> Result<(), BlobError> {
        self.inner.abort().await?;
        Ok(())
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

    #[test]
    fn names_are_opaque_and_validated() {
        let name = BlobName::random();
        assert_eq!(BlobName::parse(name.as_str()).ok(), Some(name));
        assert!(BlobName::parse("../../etc/passwd").is_err());
        assert!(BlobName::parse("1.2.840.10008.5.1.4.1.1.2").is_err());
    }
}
