//! Storing one instance: its bytes stream straight into a new sealed blob under a random name
//! and a fresh blob key while at most [`IN_MEMORY_PART_LIMIT`] bytes of them are kept for
//! parsing; a larger instance is parsed back from its blob through ranged, decrypting reads. So
//! a store's memory stays bounded whatever the instance's size. The blob key is kept in memory
//! until parsing tells the study; then the index wraps it under that study's key and records
//! the row (retrying while the study key changes, `Index::store_sealed_instance`).
//!
//! Every path that does not end in a recorded row removes the blob it wrote, except one: when
//! the index's write fails, the row may still have been committed (a lost answer to a commit),
//! so the blob is left for the sweeper, which removes it only if no row references it.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hds_blob::{BlobName, SealedBlobWriter};
use hds_crypto::keys::BlobKey;
use hds_dicom::{InstanceError, ParsedInstance, parse_instance};
use hds_index::{CommitGate, IndexError, SealedInstance, StoreMode};

use crate::chunk_reader::ChunkReader;
use crate::sync_reader::BlobSyncReader;
use crate::{ArchiveError, ServiceArchive};

/// Instances up to this size are parsed from memory; larger ones from their blob. The parser
/// reads the header only (it stops at the pixel data), so a large instance costs a few sealed
/// segments read back, while keeping it whole would cost its size in memory per store in flight
/// (an 8 MiB radiograph times the concurrent STOWs).
const IN_MEMORY_PART_LIMIT: u64 = 2 * 1024 * 1024;

/// Instances up to this size are parsed on the caller's task: the parser reads the header
/// elements only (it stops at the pixel data), a short job next to a hop to the blocking pool
/// and back. Larger ones can carry large headers and are parsed on the blocking pool.
const INLINE_PARSE_LIMIT: u64 = 1024 * 1024;

/// What became of one instance offered for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Recorded: it is durable and visible.
    Stored(StoredInstance),
    /// Not stored, for a reason of the instance's own (nothing of it is kept).
    Refused(Refusal),
}

/// The identity of a stored instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInstance {
    /// SOPClassUID.
    pub sop_class_uid: String,
    /// SOPInstanceUID.
    pub sop_instance_uid: String,
    /// StudyInstanceUID.
    pub study_instance_uid: String,
    /// SeriesInstanceUID.
    pub series_instance_uid: String,
    /// Whether it replaced an instance of the same SOPInstanceUID
    /// ([`ServiceArchive::replace_instance`]).
    pub replaced: bool,
}

/// An instance that was not stored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// SOPClassUID, when the instance could be parsed.
    pub sop_class_uid: Option<String>,
    /// SOPInstanceUID, when the instance could be parsed.
    pub sop_instance_uid: Option<String>,
    /// Why it was refused.
    pub reason: RefusalReason,
}

/// Why an instance was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The body held no byte.
    Empty,
    /// Not readable as a DICOM Part-10 instance.
    Unreadable,
    /// Readable, but it fails validation (a required attribute missing or malformed, a value
    /// too long, an unsupported transfer syntax).
    Invalid,
    /// Its StudyInstanceUID is not the study the caller required.
    StudyMismatch,
    /// An instance with its SOPInstanceUID is already stored in the service.
    AlreadyStored,
}

/// A blob written for an instance, with the gate its row's commit waits for.
struct WrittenBlob<'a> {
    name: &'a BlobName,
    key: &'a BlobKey,
    /// The plaintext length in bytes.
    size: u64,
    /// Passes once the blob is on stable storage.
    durable: CommitGate,
}

/// Why recording a written blob failed, and so whether the blob may be removed.
enum RecordError {
    /// Nothing references the blob: remove it.
    Unreferenced(ArchiveError),
    /// The index's write may have committed a row that references the blob: keep it.
    Uncertain(ArchiveError),
}

impl From<ArchiveError> for RecordError {
    fn from(error: ArchiveError) -> Self {
        RecordError::Unreferenced(error)
    }
}

impl ServiceArchive {
    /// Stores the instance whose bytes `body` yields: writes them into a new sealed blob,
    /// parses them, and records the instance in the index, wrapping its blob key under its
    /// study's key. `required_study`, when given, is the only study the instance may belong to.
    ///
    /// A refused instance is `Ok(StoreOutcome::Refused)`. An error of `body` ends the store and
    /// is returned as it is; any failure removes the blob written so far (see the module's
    /// note on the one exception), so the caller has nothing to clean up.
    pub async fn store_instance<S, E>(
        &self,
        body: S,
        required_study: Option<&str>,
    ) -> Result<StoreOutcome, E>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: From<ArchiveError>,
    {
        self.store(body, required_study, StoreMode::Create).await
    }

    /// Stores the instance as [`ServiceArchive::store_instance`] does, except that an instance
    /// of the same SOPInstanceUID in the same study and series is replaced rather than refused
    /// (the upsert `PUT`). The replaced instance's row goes in the same commit that records the
    /// new one (its change feed entries become `replaced`); its blob is deleted after the
    /// commit, and one that fails to go is unreferenced, so the sweeper removes it.
    pub async fn replace_instance<S, E>(
        &self,
        body: S,
        required_study: Option<&str>,
    ) -> Result<StoreOutcome, E>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: From<ArchiveError>,
    {
        self.store(body, required_study, StoreMode::Replace).await
    }

    pub(crate) async fn store<S, E>(
        &self,
        mut body: S,
        required_study: Option<&str>,
        mode: StoreMode,
    ) -> Result<StoreOutcome, E>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: From<ArchiveError>,
    {
        // A body without a byte is no instance: refused before it costs a blob.
        let first_chunk = loop {
            match body.next().await {
                None => return Ok(refused(None, RefusalReason::Empty)),
                Some(Err(error)) => return Err(error),
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => break chunk,
            }
        };
        let blob_name = BlobName::random();
        let blob_key = BlobKey::generate();
        let mut writer = self
            .blobs
            .create_sealed(&blob_name, &self.service, &blob_key)
            .await
            .map_err(ArchiveError::from)?;
        let body = futures::stream::iter([Ok(first_chunk)]).chain(body);
        let (kept, size) = match write_blob(&mut writer, body).await {
            Ok(written) => written,
            Err(error) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, "abandoning a partly written blob failed");
                }
                return Err(error);
            }
        };
        // The blob's syncs run while it is parsed and while its row waits for its group
        // commit, which begins only after they are done (the row's `durable` gate).
        // The name the blob is recorded by: a small blob kept in a pack has its record's place
        // in it.
        let (blob_name, durable) = match writer.finish_pending().await {
            Ok((stored, pending)) => (
                stored,
                CommitGate::new(async move {
                    pending.synced().await.map_err(|error| error.to_string())
                }),
            ),
            Err(error) => {
                self.discard(&blob_name).await;
                return Err(ArchiveError::from(error).into());
            }
        };
        let blob = WrittenBlob {
            name: &blob_name,
            key: &blob_key,
            size,
            durable,
        };
        match self
            .parse_and_record(&blob, kept, required_study, mode)
            .await
        {
            Ok(outcome @ StoreOutcome::Stored(_)) => Ok(outcome),
            Ok(refusal) => {
                self.blobs
                    .delete(&blob_name)
                    .await
                    .map_err(ArchiveError::from)?;
                Ok(refusal)
            }
            Err(RecordError::Unreferenced(error)) => {
                self.discard(&blob_name).await;
                Err(error.into())
            }
            Err(RecordError::Uncertain(error)) => Err(error.into()),
        }
    }

    /// Parses the written instance (from `kept` when it fit in memory, else from its blob) and
    /// records it.
    async fn parse_and_record(
        &self,
        blob: &WrittenBlob<'_>,
        kept: Vec<Bytes>,
        required_study: Option<&str>,
        mode: StoreMode,
    ) -> Result<StoreOutcome, RecordError> {
        let size = blob.size;
        let parsed = if size <= INLINE_PARSE_LIMIT {
            // Headers only, from memory: as quick as a hop to the blocking pool and back.
            Ok(parse_instance(ChunkReader::new(kept)))
        } else if size <= IN_MEMORY_PART_LIMIT {
            tokio::task::spawn_blocking(move || parse_instance(ChunkReader::new(kept))).await
        } else {
            let ranges = self
                .blobs
                .open_sealed_ranges(blob.name, &self.service, blob.key, size)
                .await
                .map_err(ArchiveError::from)?;
            let reader = BlobSyncReader::new(ranges, tokio::runtime::Handle::current());
            tokio::task::spawn_blocking(move || parse_instance(reader)).await
        }
        .map_err(|error| ArchiveError::internal("parsing task", error))?;
        match parsed {
            Err(error) => Ok(failed_parse(&error)),
            Ok(parsed) => self.record(&parsed, blob, required_study, mode).await,
        }
    }

    async fn record(
        &self,
        parsed: &ParsedInstance,
        blob: &WrittenBlob<'_>,
        required_study: Option<&str>,
        mode: StoreMode,
    ) -> Result<StoreOutcome, RecordError> {
        if required_study.is_some_and(|study| study != parsed.study_instance_uid) {
            return Ok(refused(Some(parsed), RefusalReason::StudyMismatch));
        }
        let stored = self
            .index
            .store_sealed_instance(
                &self.keyring,
                SealedInstance {
                    parsed,
                    blob_name: blob.name.as_str(),
                    blob_key: blob.key,
                    size: blob.size,
                    durable: blob.durable.clone(),
                    mode,
                },
            )
            .await
            .map_err(|error| match error {
                // Refused before anything was written.
                IndexError::KeysUnavailable
                | IndexError::Keyring(_)
                | IndexError::NotDurable(_)
                | IndexError::WriterStopped => RecordError::Unreferenced(error.into()),
                other => RecordError::Uncertain(other.into()),
            })?;
        let stored_instance = |replaced: bool| {
            StoreOutcome::Stored(StoredInstance {
                sop_class_uid: parsed.sop_class_uid.clone(),
                sop_instance_uid: parsed.sop_instance_uid.clone(),
                study_instance_uid: parsed.study_instance_uid.clone(),
                series_instance_uid: parsed.series_instance_uid.clone(),
                replaced,
            })
        };
        match stored {
            hds_index::StoreOutcome::Stored => Ok(stored_instance(false)),
            hds_index::StoreOutcome::Replaced { previous_blob_name } => {
                // Committed: the previous blob is unreferenced now. A failure to remove it is
                // the sweeper's to finish, not the store's to report.
                match BlobName::parse(&previous_blob_name) {
                    Ok(name) => self.discard(&name).await,
                    Err(error) => {
                        tracing::warn!(error = %error, "a replaced blob's name is invalid")
                    }
                }
                Ok(stored_instance(true))
            }
            hds_index::StoreOutcome::Updated {
                superseded_blob_name,
            } => {
                // Committed: an intermediate version's blob is unreferenced now (the
                // original's stays with the row).
                if let Some(superseded) = superseded_blob_name {
                    match BlobName::parse(&superseded) {
                        Ok(name) => self.discard(&name).await,
                        Err(error) => {
                            tracing::warn!(error = %error, "a superseded blob's name is invalid")
                        }
                    }
                }
                Ok(stored_instance(true))
            }
            hds_index::StoreOutcome::NotFound => Err(RecordError::Unreferenced(
                ArchiveError::NotFound("instance"),
            )),
            hds_index::StoreOutcome::AlreadyExists => {
                Ok(refused(Some(parsed), RefusalReason::AlreadyStored))
            }
            // Nothing was recorded.
            hds_index::StoreOutcome::StudyKeyChanged => Err(RecordError::Unreferenced(
                ArchiveError::Internal("the study key kept changing while storing".into()),
            )),
        }
    }

    /// Removes a blob no row references, as cleanup after a failure: a blob that stays is the
    /// sweeper's, so a failure here is logged rather than returned over the first one.
    async fn discard(&self, blob_name: &BlobName) {
        if let Err(error) = self.blobs.delete(blob_name).await {
            tracing::warn!(error = %error, "removing the blob of a failed store failed");
        }
    }
}

/// Writes `body` into `writer`, keeping the chunks while the total stays within
/// [`IN_MEMORY_PART_LIMIT`]; returns the kept chunks (empty past the limit) and the size.
async fn write_blob<S, E>(writer: &mut SealedBlobWriter, body: S) -> Result<(Vec<Bytes>, u64), E>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: From<ArchiveError>,
{
    let mut body = std::pin::pin!(body);
    let mut kept: Vec<Bytes> = Vec::new();
    let mut size: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        if size <= IN_MEMORY_PART_LIMIT {
            kept.push(chunk.clone());
        } else {
            kept.clear();
        }
        writer.write(&chunk).await.map_err(ArchiveError::from)?;
    }
    Ok((kept, size))
}

fn refused(parsed: Option<&ParsedInstance>, reason: RefusalReason) -> StoreOutcome {
    StoreOutcome::Refused(Refusal {
        sop_class_uid: parsed.map(|parsed| parsed.sop_class_uid.clone()),
        sop_instance_uid: parsed.map(|parsed| parsed.sop_instance_uid.clone()),
        reason,
    })
}

fn failed_parse(error: &InstanceError) -> StoreOutcome {
    let reason = match error {
        InstanceError::Unreadable(_) => RefusalReason::Unreadable,
        _ => RefusalReason::Invalid,
    };
    tracing::info!(reason = ?reason, error = %error, "instance refused");
    refused(None, reason)
}
