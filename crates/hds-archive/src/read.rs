//! Reading a service's data: instances and frames as streams, metadata as one document.
//!
//! A read is found first and opened second, so a caller can decide how to answer (which media
//! type, one part or many) from what was found before anything is decrypted. Opening verifies
//! the first blob's header and first segment (or reads the first frame) before it returns, so
//! a missing or damaged blob is an error the caller can still answer cleanly; everything after
//! it is read as the caller consumes the streams, one blob and about one segment (or one frame)
//! at a time, and a failure there ends the stream with an error.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use hds_blob::{BlobName, SealedRanges};
use hds_crypto::keys::BlobKey;
use hds_index::InstanceRecord;

use crate::{ArchiveError, Scope, ServiceArchive};

/// Plaintext bytes as a stream. An error mid-stream means the rest could not be read or failed
/// its integrity check: whoever is sending the bytes must abort rather than end cleanly.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// The instances of a scope, found and not yet opened.
pub struct FoundInstances {
    archive: ServiceArchive,
    records: Vec<InstanceRecord>,
}

/// One instance being read.
pub struct InstanceContent {
    /// The transfer syntax it is stored in.
    pub transfer_syntax_uid: String,
    /// Its bytes, decrypted as they are read.
    pub bytes: ByteStream,
}

/// What the index says of one found instance, before it is opened.
#[derive(Debug, Clone, Copy)]
pub struct FoundInstance<'a> {
    /// SOPInstanceUID.
    pub sop_instance_uid: &'a str,
    /// The transfer syntax it is stored in.
    pub transfer_syntax_uid: &'a str,
    /// The stored Part-10 instance's length in bytes.
    pub size: u64,
}

/// The frames of an instance, found and not yet read.
pub struct FoundFrames {
    archive: ServiceArchive,
    record: InstanceRecord,
    /// Per requested frame, its byte ranges in the instance (one for native pixel data, one per
    /// fragment for encapsulated).
    frames: Vec<Vec<Range<u64>>>,
    encapsulated: bool,
}

impl ServiceArchive {
    /// The instances in `scope`, ordered by series then store order; not found (naming the
    /// scope's level) when there are none.
    pub async fn find_instances(&self, scope: Scope<'_>) -> Result<FoundInstances, ArchiveError> {
        self.find_instance_versions(scope, false).await
    }

    /// [`ServiceArchive::find_instances`], or with `original` the versions the instances had
    /// before their first bulk update (the current one for an instance never updated): what
    /// Azure serves under `msdicom-request-original: true`.
    pub async fn find_instance_versions(
        &self,
        scope: Scope<'_>,
        original: bool,
    ) -> Result<FoundInstances, ArchiveError> {
        let records = self
            .index
            .find_instance_versions(&self.service, scope, original)
            .await?;
        if records.is_empty() {
            return Err(ArchiveError::NotFound(level_name(scope)));
        }
        Ok(FoundInstances {
            archive: self.clone(),
            records,
        })
    }

    /// The frames `numbers` (from 1) of one instance, in that order. Not found when the
    /// instance does not exist, has no pixel data, or has fewer frames than a number names.
    pub async fn find_frames(
        &self,
        study: &str,
        series: &str,
        instance: &str,
        numbers: &[usize],
    ) -> Result<FoundFrames, ArchiveError> {
        let scope = Scope::Instance(study, series, instance);
        let record = self
            .index
            .find_instances(&self.service, scope)
            .await?
            .into_iter()
            .next()
            .ok_or(ArchiveError::NotFound("instance"))?;
        let frame_map = record.frames.as_ref().ok_or(ArchiveError::NotFound(
            "frame (the instance has no pixel data)",
        ))?;
        let frames = numbers
            .iter()
            .map(|&number| {
                let ranges = number
                    .checked_sub(1)
                    .and_then(|index| frame_map.frames.get(index))
                    .ok_or(ArchiveError::NotFound("frame"))?;
                Ok(ranges
                    .iter()
                    .map(|range| range.offset..range.offset + range.length)
                    .collect())
            })
            .collect::<Result<Vec<Vec<Range<u64>>>, ArchiveError>>()?;
        if frames.is_empty() {
            return Err(ArchiveError::NotFound("frame"));
        }
        let encapsulated = frame_map.encapsulated;
        Ok(FoundFrames {
            archive: self.clone(),
            record,
            frames,
            encapsulated,
        })
    }

    /// The metadata (DICOM JSON, bulk data left out) of the instances in `scope` as one JSON
    /// array, in the order of [`ServiceArchive::find_instances`]; not found when none.
    pub async fn metadata(&self, scope: Scope<'_>) -> Result<Vec<u8>, ArchiveError> {
        self.index
            .find_metadata_json(&self.service, scope)
            .await?
            .ok_or(ArchiveError::NotFound(level_name(scope)))
    }

    /// The metadata of the instances in `scope` as they were before their first bulk update
    /// (the current one for an instance never updated), as one JSON array. An original's
    /// metadata is not kept in the index: it is read from the original's blob (its header only).
    pub async fn original_metadata(&self, scope: Scope<'_>) -> Result<Vec<u8>, ArchiveError> {
        let records = self
            .index
            .find_instance_versions(&self.service, scope, true)
            .await?;
        if records.is_empty() {
            return Err(ArchiveError::NotFound(level_name(scope)));
        }
        let mut documents = Vec::with_capacity(records.len());
        for record in &records {
            let name = BlobName::parse(&record.blob_name)?;
            let key = self.blob_key(record)?;
            let ranges = self
                .blobs
                .open_sealed_ranges(&name, &self.service, &key, record.size)
                .await?;
            let reader =
                crate::sync_reader::BlobSyncReader::new(ranges, tokio::runtime::Handle::current());
            let parsed = tokio::task::spawn_blocking(move || hds_dicom::parse_instance(reader))
                .await
                .map_err(|error| ArchiveError::internal("parsing task", error))?
                .map_err(|_| {
                    ArchiveError::Integrity("an original version does not parse".into())
                })?;
            documents.push(parsed.metadata);
        }
        Ok(hds_dicom::json_array(
            documents
                .iter()
                .map(|metadata| metadata.as_str().as_bytes()),
        ))
    }

    /// The blob key of a stored instance, unwrapped through its study key and checked against
    /// the instance the row names (a swapped or replayed row fails here).
    fn blob_key(&self, record: &InstanceRecord) -> Result<BlobKey, ArchiveError> {
        let stored = record
            .blob_key
            .as_ref()
            .ok_or_else(|| ArchiveError::Integrity("instance row without a blob key".into()))?;
        Ok(self.keyring.open_blob_key(stored, &record.binding())?)
    }

    /// The decrypted instance as a stream; its first segment is verified before this returns.
    pub(crate) async fn open_instance(
        &self,
        record: &InstanceRecord,
    ) -> Result<ByteStream, ArchiveError> {
        let name = BlobName::parse(&record.blob_name)?;
        let key = self.blob_key(record)?;
        let stream = self.blobs.read_sealed(&name, &self.service, &key).await?;
        Ok(stream
            .map(|chunk| {
                chunk.map_err(|error| {
                    tracing::error!(error = %error, "reading a blob failed mid-response");
                    std::io::Error::other("blob read failed")
                })
            })
            .boxed())
    }
}

impl FoundInstances {
    /// How many instances were found.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Always false: finding nothing is not found.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The transfer syntax each instance is stored in, in order.
    pub fn transfer_syntaxes(&self) -> Vec<&str> {
        self.records
            .iter()
            .map(|record| record.transfer_syntax_uid.as_str())
            .collect()
    }

    /// Each instance's SOPInstanceUID, stored transfer syntax and stored size, in order: what a
    /// caller checks before answering (can every instance be transcoded?) without opening any.
    pub fn stored(&self) -> impl Iterator<Item = FoundInstance<'_>> {
        self.records.iter().map(|record| FoundInstance {
            sop_instance_uid: &record.sop_instance_uid,
            transfer_syntax_uid: &record.transfer_syntax_uid,
            size: record.size,
        })
    }

    /// Opens the instances for reading, in order. The first is opened now (a missing or
    /// damaged blob, or a row bound to another instance, fails here); each next one only when
    /// its stream is first polled, so the whole holds one open blob at a time.
    pub async fn open(
        self,
    ) -> Result<impl Iterator<Item = InstanceContent> + Send + 'static, ArchiveError> {
        let FoundInstances { archive, records } = self;
        let mut records = records.into_iter();
        let Some(first) = records.next() else {
            return Err(ArchiveError::NotFound("instance"));
        };
        let first = InstanceContent {
            bytes: archive.open_instance(&first).await?,
            transfer_syntax_uid: first.transfer_syntax_uid,
        };
        let rest = records.map(move |record| {
            let archive = archive.clone();
            let transfer_syntax_uid = record.transfer_syntax_uid.clone();
            let bytes = futures::stream::once(async move {
                archive.open_instance(&record).await.map_err(|error| {
                    tracing::error!(error = %error, "opening a blob failed mid-response");
                    std::io::Error::other("blob open failed")
                })
            })
            .try_flatten()
            .boxed();
            InstanceContent {
                transfer_syntax_uid,
                bytes,
            }
        });
        Ok(std::iter::once(first).chain(rest))
    }
}

impl FoundFrames {
    /// The transfer syntax the instance is stored in.
    pub fn transfer_syntax_uid(&self) -> &str {
        &self.record.transfer_syntax_uid
    }

    /// Whether the pixel data is encapsulated (compressed fragments) rather than native.
    pub fn encapsulated(&self) -> bool {
        self.encapsulated
    }

    /// How many frames were asked for.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Always false: asking for no frame is not found.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Reads the frames, in order: the first now (a damaged blob fails here), returned whole;
    /// each next one as a stream of one item, read only when polled. Only the segments holding
    /// a frame are read and decrypted, so the whole holds about one frame in memory.
    pub async fn open(
        self,
    ) -> Result<(Bytes, impl Iterator<Item = ByteStream> + Send + 'static), ArchiveError> {
        let FoundFrames {
            archive,
            record,
            frames,
            ..
        } = self;
        let name = BlobName::parse(&record.blob_name)?;
        let key = archive.blob_key(&record)?;
        let sealed = Arc::new(
            archive
                .blobs
                .open_sealed_ranges(&name, &archive.service, &key, record.size)
                .await?,
        );
        let mut frames = frames.into_iter();
        let first = match frames.next() {
            Some(ranges) => read_frame(&sealed, ranges).await?,
            None => return Err(ArchiveError::NotFound("frame")),
        };
        let rest = frames.map(move |ranges| {
            let sealed = sealed.clone();
            futures::stream::once(async move {
                read_frame(&sealed, ranges).await.map_err(|error| {
                    tracing::error!(error = %error, "reading a frame failed mid-response");
                    std::io::Error::other("frame read failed")
                })
            })
            .boxed()
        });
        Ok((first, rest))
    }
}

/// The bytes of one frame: its ranges decrypted and joined.
async fn read_frame(sealed: &SealedRanges, ranges: Vec<Range<u64>>) -> Result<Bytes, ArchiveError> {
    let mut pieces = sealed.read(&ranges).await?;
    if pieces.len() == 1 {
        return Ok(pieces.pop().unwrap_or_default());
    }
    Ok(Bytes::from(pieces.concat()))
}

/// What a scope addresses, for a not-found answer.
pub(crate) fn level_name(scope: Scope<'_>) -> &'static str {
    match scope {
        Scope::Study(_) => "study",
        Scope::Series(..) => "series",
        Scope::Instance(..) => "instance",
    }
}
