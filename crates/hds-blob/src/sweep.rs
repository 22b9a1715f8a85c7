//! Listing the blobs a sweeper may consider: those written long enough ago that no store can
//! still be between writing them and recording them in the index.
//!
//! The store cannot tell an orphan (a blob whose store crashed or failed before its index
//! commit) from a blob about to be recorded; only age can. A caller lists one shard at a time
//! (so memory stays bounded by a shard however large the store), asks the index which names
//! it references, and deletes the rest.

use std::sync::Arc;
use std::time::SystemTime;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;

use crate::local::{TEMPORARY_MARKER, blocking, join_error};
use crate::{BlobError, BlobName, BlobStore, local_error};

/// How many shards a store has: blob names are sharded by their first byte.
pub const SHARD_COUNT: u16 = 256;

/// What one shard holds that was last written before the cutoff.
#[derive(Debug, Default)]
pub struct ShardListing {
    /// Blobs written before the cutoff.
    pub settled_blobs: Vec<BlobName>,
    /// Temporary files (writes abandoned by a crash) older than the cutoff, removed while
    /// listing.
    pub temporaries_removed: u64,
}

impl BlobStore {
    /// The blobs of shard `shard` (0 to 255) last modified before `cutoff`; temporary files
    /// older than it are removed on the way. Entries that are neither are left alone.
    pub async fn list_settled(
        &self,
        shard: u8,
        cutoff: SystemTime,
    ) -> Result<ShardListing, BlobError> {
        let prefix = format!("{shard:02x}");
        if let Some(local) = &self.local {
            let directory = local.root.join(&prefix);
            return tokio::task::spawn_blocking(move || list_local(&directory, cutoff))
                .await
                .map_err(join_error)?;
        }
        let mut listing = ShardListing::default();
        let mut objects = self.store.list(Some(&ObjectPath::from(prefix)));
        while let Some(object) = objects.try_next().await? {
            let modified: SystemTime = object.last_modified.into();
            if modified >= cutoff {
                continue;
            }
            if let Some(file_name) = object.location.filename()
                && let Ok(name) = BlobName::parse(file_name)
            {
                listing.settled_blobs.push(name);
            }
        }
        Ok(listing)
    }

    /// The segments of a local store's packs (none in an object store), to list with
    /// [`BlobStore::list_settled_packed`].
    pub async fn pack_segments(&self) -> Result<Vec<u32>, BlobError> {
        let Some(local) = &self.local else {
            return Ok(Vec::new());
        };
        let packs = Arc::clone(&local.packs);
        blocking(move || packs.segments()).await
    }

    /// The blobs in pack segment `segment` written before the cutoff, by the names they are
    /// recorded by. Deleted records and writes a crash cut short are not blobs.
    pub async fn list_settled_packed(
        &self,
        segment: u32,
        cutoff: SystemTime,
    ) -> Result<Vec<BlobName>, BlobError> {
        let Some(local) = &self.local else {
            return Ok(Vec::new());
        };
        let packs = Arc::clone(&local.packs);
        let records = blocking(move || packs.settled_records(segment, cutoff)).await?;
        Ok(records
            .into_iter()
            .map(|(identity, record)| BlobName::from_identity(identity).packed_at(record))
            .collect())
    }

    /// Every blob in the store, by the name it is recorded by, listed at once: for tools and
    /// tests that inspect a small store (the sweeper lists a shard or a segment at a time).
    pub async fn list_blobs(&self) -> Result<Vec<BlobName>, BlobError> {
        let everything = SystemTime::now() + std::time::Duration::from_secs(366 * 24 * 3600);
        let mut names = Vec::new();
        for shard in 0..SHARD_COUNT {
            let shard = u8::try_from(shard).unwrap_or(u8::MAX);
            names.extend(self.list_settled(shard, everything).await?.settled_blobs);
        }
        for segment in self.pack_segments().await? {
            names.extend(self.list_settled_packed(segment, everything).await?);
        }
        Ok(names)
    }
}

fn list_local(directory: &std::path::Path, cutoff: SystemTime) -> Result<ShardListing, BlobError> {
    let mut listing = ShardListing::default();
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
        Err(error) => return Err(local_error(error)),
    };
    for entry in entries {
        let entry = entry.map_err(local_error)?;
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            // Removed since the directory was read (a delete or a rename).
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(local_error(error)),
        };
        if !metadata.is_file() || metadata.modified().map_err(local_error)? >= cutoff {
            continue;
        }
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if let Ok(name) = BlobName::parse(file_name) {
            listing.settled_blobs.push(name);
        } else if is_temporary(file_name) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => listing.temporaries_removed += 1,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(local_error(error)),
            }
        }
    }
    Ok(listing)
}

/// A temporary of this store (`NAME.tmp-SUFFIX`) or of the object store used before
/// (`NAME#N`): a blob name followed by one of the markers.
fn is_temporary(file_name: &str) -> bool {
    let Some(stem) = file_name.get(..32) else {
        return false;
    };
    let rest = &file_name[32..];
    BlobName::parse(stem).is_ok() && (rest.starts_with(TEMPORARY_MARKER) || rest.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_files_after_a_blob_name_are_temporaries() {
        let name = BlobName::random();
        assert!(is_temporary(&format!("{name}.tmp-0123")));
        assert!(is_temporary(&format!("{name}#1")));
        assert!(!is_temporary(name.as_str()));
        assert!(!is_temporary("notes.txt.tmp-1"));
        assert!(!is_temporary("é"));
    }
}
