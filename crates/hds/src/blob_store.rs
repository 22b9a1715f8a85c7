//! `--blob-store`: where blobs live, for `hds up`, `hds backup` and `hds restore`.

use std::path::Path;

use anyhow::Context;
use hds_blob::{BlobStore, RemoteLocation};

/// A blob store in an object store, configured but not yet contacted.
pub struct RemoteBlobs {
    store: BlobStore,
    location: RemoteLocation,
}

/// Parses `--blob-store` and builds its client from the environment, refusing an unsupported
/// URL or a store with no credential source. `None` for the data dir.
pub fn open_remote(url: Option<&str>) -> anyhow::Result<Option<RemoteBlobs>> {
    let Some(url) = url else {
        return Ok(None);
    };
    let location = RemoteLocation::parse(url)?;
    let store = BlobStore::open_remote(&location)?;
    Ok(Some(RemoteBlobs { store, location }))
}

impl RemoteBlobs {
    /// The store once it has answered a listing: a wrong key, a missing container or bucket,
    /// or an unreachable endpoint stops the start here, not at the first STOW.
    pub async fn checked(self) -> anyhow::Result<BlobStore> {
        self.store.check_access().await.with_context(|| {
            format!(
                "--blob-store {}: the startup check failed (does the container or bucket exist, \
                 is the endpoint reachable, and do the credentials allow listing, reading, \
                 writing and deleting blobs?)",
                self.location
            )
        })?;
        tracing::info!(blob_store = %self.location, "blobs are kept in an object store");
        Ok(self.store)
    }
}

/// The store `--blob-store` names, checked, or the data dir's `blobs/`.
pub async fn open(data_dir: &Path, url: Option<&str>) -> anyhow::Result<BlobStore> {
    match open_remote(url)? {
        Some(remote) => remote.checked().await,
        None => BlobStore::local(&data_dir.join("blobs")).context("opening the blob store"),
    }
}
