//! Sealed blobs: every blob a DICOM service stores is a sealed stream (`docs/sealed-format.md`)
//! under its own blob key, bound to the service and the blob's name, so a blob copied or moved
//! under another name or service does not open.
//!
//! Reads come in two shapes: a whole blob as a stream of verified segments (WADO of an
//! instance), and plaintext ranges that decrypt only the segments holding them (frames, and
//! the parser reading a large instance back).

use std::ops::Range;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use hds_crypto::keys::BlobKey;
use hds_crypto::stream::{
    HEADER_LEN, OpenError, Opener, RangeOpener, SEGMENT_SIZE, Sealer, StreamBinding, TAG_LEN,
};

use crate::{BlobError, BlobName, BlobStore, BlobWriter, not_found};

/// Ciphertext is handed to the store in pieces of about this size, so sealing adds one small
/// buffer to the store's own part buffers.
const WRITE_FLUSH_BYTES: usize = 1024 * 1024;

/// Sealed blobs are read in pieces of this size: the header and 16 sealed segments (64 KiB
/// each, plus a tag), about 1 MiB. Large enough that a typical instance is one read, small
/// enough that a stream holds about 2 MiB (ciphertext and plaintext) however large the blob.
const READ_CHUNK_BYTES: usize = HEADER_LEN + 16 * (SEGMENT_SIZE as usize + TAG_LEN);

/// Ciphertext that opens the first segment of a stream in the default layout: the header, the
/// segment and its tag, and one byte more (which shows the segment is not the last).
const FIRST_SEGMENT_BYTES: usize = HEADER_LEN + SEGMENT_SIZE as usize + TAG_LEN + 1;

/// Where the stream of a sealed read is.
enum SealedRead {
    /// More ciphertext to open.
    Reading(BoxStream<'static, Result<Bytes, BlobError>>, Opener),
    /// Verified plaintext was released; this error comes next.
    Failed(BlobError),
    /// Ended.
    Done,
}

impl BlobStore {
    /// Starts writing a new sealed blob under `blob_key`, bound to `service` and `name`. Memory
    /// stays bounded whatever the blob's size: one segment of plaintext and about 1 MiB of
    /// ciphertext besides the store's part buffers.
    ///
    /// Nothing is written until about 1 MiB of ciphertext has accumulated: a blob that stays
    /// smaller (most instances) is stored by one `put` when finished, rather than a multipart
    /// upload's create, part and complete round trips.
    pub async fn create_sealed(
        &self,
        name: &BlobName,
        service: &str,
        blob_key: &BlobKey,
    ) -> Result<SealedBlobWriter, BlobError> {
        let sealer = Sealer::new(
            blob_key,
            StreamBinding {
                service,
                blob_name: name.as_str(),
            },
        );
        Ok(SealedBlobWriter {
            store: self.clone(),
            name: name.clone(),
            upload: None,
            sealer,
            // Room for a flush's worth and the segment that crosses it: no reallocation.
            ciphertext: Vec::with_capacity(WRITE_FLUSH_BYTES + 128 * 1024),
        })
    }

    /// The plaintext of a sealed blob as a stream of verified segments.
    ///
    /// The header and the first segment are verified before this returns, so a blob that is
    /// altered there, swapped, or opened with the wrong key fails here, before a caller has
    /// sent anything. A later segment that fails ends the stream with an error: a caller that
    /// already sent a status must abort its response rather than complete it.
    pub async fn read_sealed(
        &self,
        name: &BlobName,
        service: &str,
        blob_key: &BlobKey,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let mut chunks = self.read_chunked(name, READ_CHUNK_BYTES).await?;
        let mut opener = Opener::new(
            blob_key,
            StreamBinding {
                service,
                blob_name: name.as_str(),
            },
        );
        // Only the header and the first segment are opened here (a segment opens once a byte
        // beyond it arrives); the rest of a read goes to the stream, so that a damaged later
        // segment fails there, after the segments before it, as its position in the blob says.
        let mut first = Vec::new();
        let mut consumed = 0usize;
        let mut leftover = None;
        while first.is_empty() {
            let Some(chunk) = chunks.next().await else {
                opener.finish(&mut first)?;
                let whole = Bytes::from(first);
                return Ok(futures::stream::once(async move { Ok(whole) }).boxed());
            };
            let chunk = chunk?;
            let wanted = FIRST_SEGMENT_BYTES.saturating_sub(consumed);
            // A blob with longer segments than the default takes whole chunks until it opens.
            let taken = if wanted == 0 {
                chunk.len()
            } else {
                chunk.len().min(wanted)
            };
            first.reserve(taken);
            opener.push(&chunk[..taken], &mut first)?;
            consumed += taken;
            if taken < chunk.len() {
                leftover = Some(chunk.slice(taken..));
                if first.is_empty() {
                    // Not opened yet (longer segments): feed the remainder on the next turn.
                    let remainder = leftover.take().map(Ok);
                    chunks = futures::stream::iter(remainder).chain(chunks).boxed();
                }
            }
        }
        let chunks = futures::stream::iter(leftover.map(Ok))
            .chain(chunks)
            .boxed();
        let rest =
            futures::stream::unfold(SealedRead::Reading(chunks, opener), |state| async move {
                let (mut chunks, mut opener) = match state {
                    SealedRead::Reading(chunks, opener) => (chunks, opener),
                    SealedRead::Failed(error) => return Some((Err(error), SealedRead::Done)),
                    SealedRead::Done => return None,
                };
                loop {
                    let mut plaintext = Vec::new();
                    match chunks.next().await {
                        Some(Ok(chunk)) => {
                            // Opening outputs at most what it was given plus one pending segment.
                            plaintext.reserve(chunk.len() + SEGMENT_SIZE as usize);
                            match opener.push(&chunk, &mut plaintext) {
                                Ok(()) if plaintext.is_empty() => continue,
                                Ok(()) => {
                                    let next = SealedRead::Reading(chunks, opener);
                                    return Some((Ok(Bytes::from(plaintext)), next));
                                }
                                // The segments opened before the damaged one are verified:
                                // release them, then the error.
                                Err(error) if !plaintext.is_empty() => {
                                    let next = SealedRead::Failed(BlobError::from(error));
                                    return Some((Ok(Bytes::from(plaintext)), next));
                                }
                                Err(error) => {
                                    return Some((Err(BlobError::from(error)), SealedRead::Done));
                                }
                            }
                        }
                        Some(Err(error)) => return Some((Err(error), SealedRead::Done)),
                        None => {
                            let last = opener
                                .finish(&mut plaintext)
                                .map(|()| Bytes::from(plaintext))
                                .map_err(BlobError::from);
                            return Some((last, SealedRead::Done));
                        }
                    }
                }
            });
        let first = Bytes::from(first);
        Ok(futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .boxed())
    }

    /// Opens a sealed blob for ranged reads of its plaintext: reads and verifies its header,
    /// and checks that its length matches `plaintext_len` (what the index recorded), so a
    /// truncated or extended blob is noticed before any range is read.
    pub async fn open_sealed_ranges(
        &self,
        name: &BlobName,
        service: &str,
        blob_key: &BlobKey,
        plaintext_len: u64,
    ) -> Result<SealedRanges, BlobError> {
        let path = name.object_path();
        let meta = self.store.head(&path).await.map_err(not_found)?;
        let header_end = (HEADER_LEN as u64).min(meta.size);
        let header = if header_end == 0 {
            Bytes::new()
        } else {
            self.store
                .get_range(&path, 0..header_end)
                .await
                .map_err(not_found)?
        };
        let opener = RangeOpener::new(
            blob_key,
            StreamBinding {
                service,
                blob_name: name.as_str(),
            },
            &header,
            meta.size,
        )?;
        if opener.plaintext_len() != plaintext_len {
            return Err(BlobError::Integrity(OpenError::Truncated));
        }
        Ok(SealedRanges {
            store: self.clone(),
            name: name.clone(),
            opener,
        })
    }
}

/// A sealed blob being written. Dropping it without [`SealedBlobWriter::finish`] abandons the
/// blob; an unfinished sealed stream would not open anyway (its last segment is missing).
pub struct SealedBlobWriter {
    store: BlobStore,
    name: BlobName,
    /// The multipart upload, started when the ciphertext first outgrows one flush.
    upload: Option<BlobWriter>,
    sealer: Sealer,
    ciphertext: Vec<u8>,
}

impl SealedBlobWriter {
    /// Seals and appends plaintext bytes.
    pub async fn write(&mut self, plaintext: &[u8]) -> Result<(), BlobError> {
        self.sealer.push(plaintext, &mut self.ciphertext)?;
        if self.ciphertext.len() >= WRITE_FLUSH_BYTES {
            let upload = match &mut self.upload {
                Some(upload) => upload,
                None => self.upload.insert(self.store.create(&self.name).await?),
            };
            upload.write(&self.ciphertext).await?;
            self.ciphertext.clear();
        }
        Ok(())
    }

    /// Seals the last segment and completes the blob, making it visible under its name.
    pub async fn finish(self) -> Result<(), BlobError> {
        let SealedBlobWriter {
            store,
            name,
            upload,
            sealer,
            mut ciphertext,
        } = self;
        sealer.finish(&mut ciphertext)?;
        match upload {
            // The whole blob is in memory: one atomic put (staged and renamed on local files).
            None => store.put(&name, Bytes::from(ciphertext)).await,
            Some(mut upload) => {
                upload.write(&ciphertext).await?;
                upload.finish().await
            }
        }
    }

    /// Abandons the blob.
    pub async fn abort(self) -> Result<(), BlobError> {
        match self.upload {
            Some(upload) => upload.abort().await,
            None => Ok(()),
        }
    }
}

/// Ranged plaintext reads of one sealed blob whose header is verified: each read fetches and
/// decrypts only the segments holding the ranges asked for.
pub struct SealedRanges {
    store: BlobStore,
    name: BlobName,
    opener: RangeOpener,
}

impl SealedRanges {
    /// Length of the blob's plaintext.
    pub fn plaintext_len(&self) -> u64 {
        self.opener.plaintext_len()
    }

    /// The plaintext of each range, in order.
    pub async fn read(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, BlobError> {
        let mut spans = Vec::with_capacity(ranges.len());
        for range in ranges {
            spans.push(self.opener.segment_span(range.clone())?);
        }
        let ciphertext_ranges: Vec<Range<u64>> = spans
            .iter()
            .filter(|span| span.segment_count > 0)
            .map(|span| span.ciphertext_range.clone())
            .collect();
        let mut ciphertexts = if ciphertext_ranges.is_empty() {
            Vec::new()
        } else {
            self.store
                .store
                .get_ranges(&self.name.object_path(), &ciphertext_ranges)
                .await
                .map_err(not_found)?
        }
        .into_iter();
        let mut plaintexts = Vec::with_capacity(spans.len());
        for span in &spans {
            if span.segment_count == 0 {
                plaintexts.push(Bytes::new());
                continue;
            }
            let ciphertext = ciphertexts
                .next()
                .ok_or(BlobError::Integrity(OpenError::Truncated))?;
            let mut plaintext = Vec::with_capacity(ciphertext.len());
            self.opener.open_span(span, &ciphertext, &mut plaintext)?;
            plaintexts.push(Bytes::from(plaintext));
        }
        Ok(plaintexts)
    }

    /// The plaintext of one range.
    pub async fn read_range(&self, range: Range<u64>) -> Result<Bytes, BlobError> {
        let mut pieces = self.read(std::slice::from_ref(&range)).await?;
        pieces
            .pop()
            .ok_or(BlobError::Integrity(OpenError::Truncated))
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use hds_crypto::stream::{SEGMENT_SIZE, TAG_LEN};

    use super::*;

    const SERVICE: &str = "default/dicom";
    const SEGMENT: usize = SEGMENT_SIZE as usize;

    fn plaintext(length: usize) -> Vec<u8> {
        (0..length)
            .map(|position| (position % 251) as u8 ^ 0x5a)
            .collect()
    }

    async fn store_with(contents: &[u8]) -> (tempfile::TempDir, BlobStore, BlobName, BlobKey) {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(directory.path()).expect("store");
        let name = BlobName::random();
        let key = BlobKey::generate();
        let mut writer = store
            .create_sealed(&name, SERVICE, &key)
            .await
            .expect("create");
        // Odd chunk sizes, so segments straddle writes.
        for chunk in contents.chunks(10_007) {
            writer.write(chunk).await.expect("write");
        }
        writer.finish().await.expect("finish");
        (directory, store, name, key)
    }

    async fn raw(store: &BlobStore, name: &BlobName) -> Vec<u8> {
        let chunks: Vec<Bytes> = store
            .read(name)
            .await
            .expect("read")
            .try_collect()
            .await
            .expect("chunks");
        chunks.concat()
    }

    async fn read_all(
        store: &BlobStore,
        name: &BlobName,
        service: &str,
        key: &BlobKey,
    ) -> Result<Vec<u8>, BlobError> {
        let chunks: Vec<Bytes> = store
            .read_sealed(name, service, key)
            .await?
            .try_collect()
            .await?;
        Ok(chunks.concat())
    }

    /// Offset in the sealed blob of byte `offset` of segment `segment`'s ciphertext.
    fn sealed_offset(segment: usize, offset: usize) -> usize {
        HEADER_LEN + segment * (SEGMENT + TAG_LEN) + offset
    }

    #[tokio::test]
    async fn sealed_blobs_round_trip_and_hold_no_plaintext() {
        for length in [0, 1, SEGMENT, 3 * SEGMENT, 3 * SEGMENT + 17, 1_000_000] {
            let contents = plaintext(length);
            let (_directory, store, name, key) = store_with(&contents).await;
            assert_eq!(
                read_all(&store, &name, SERVICE, &key).await.expect("open"),
                contents
            );
            let stored = raw(&store, &name).await;
            assert_eq!(
                stored.len() as u64,
                hds_crypto::stream::sealed_len(length as u64)
            );
            if length >= 64 {
                assert!(
                    !stored.windows(64).any(|window| window == &contents[..64]),
                    "plaintext at rest"
                );
            }
            let ranges = store
                .open_sealed_ranges(&name, SERVICE, &key, length as u64)
                .await
                .expect("ranges");
            if length > 10 {
                let wanted = [0..1, (length as u64 / 2)..(length as u64), 3..10];
                let pieces = ranges.read(&wanted).await.expect("read ranges");
                for (range, piece) in wanted.iter().zip(pieces) {
                    assert_eq!(
                        &piece[..],
                        &contents[range.start as usize..range.end as usize]
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn a_damaged_first_segment_fails_before_any_byte_is_released() {
        let contents = plaintext(5 * SEGMENT);
        let (_directory, store, name, key) = store_with(&contents).await;
        let mut stored = raw(&store, &name).await;
        stored[sealed_offset(0, 100)] ^= 1;
        store.put(&name, Bytes::from(stored)).await.expect("put");
        assert!(matches!(
            store.read_sealed(&name, SERVICE, &key).await.err(),
            Some(BlobError::Integrity(OpenError::SegmentAuthentication {
                segment_index: 0
            }))
        ));
    }

    #[tokio::test]
    async fn a_damaged_later_segment_ends_the_stream_with_an_error() {
        let contents = plaintext(5 * SEGMENT);
        let (_directory, store, name, key) = store_with(&contents).await;
        let mut stored = raw(&store, &name).await;
        stored[sealed_offset(3, 5)] ^= 0x80;
        store.put(&name, Bytes::from(stored)).await.expect("put");
        let mut stream = store
            .read_sealed(&name, SERVICE, &key)
            .await
            .expect("first segment is fine");
        let mut released = Vec::new();
        let error = loop {
            match stream.try_next().await {
                Ok(Some(chunk)) => released.extend_from_slice(&chunk),
                Ok(None) => panic!("a damaged stream must not end cleanly"),
                Err(error) => break error,
            }
        };
        assert!(matches!(
            error,
            BlobError::Integrity(OpenError::SegmentAuthentication { segment_index: 3 })
        ));
        assert_eq!(released, contents[..3 * SEGMENT]);
        // Ranged reads open only the segments they need: segment 1 still opens, 3 does not.
        let ranges = store
            .open_sealed_ranges(&name, SERVICE, &key, contents.len() as u64)
            .await
            .expect("ranges");
        let start = SEGMENT as u64 + 10;
        assert_eq!(
            &ranges
                .read_range(start..start + 100)
                .await
                .expect("segment 1")[..],
            &contents[SEGMENT + 10..SEGMENT + 110]
        );
        let start = 3 * SEGMENT as u64;
        assert!(matches!(
            ranges.read_range(start..start + 10).await,
            Err(BlobError::Integrity(_))
        ));
    }

    #[tokio::test]
    async fn truncated_blobs_do_not_open() {
        let contents = plaintext(3 * SEGMENT + 100);
        let (_directory, store, name, key) = store_with(&contents).await;
        let stored = raw(&store, &name).await;
        // Cut at a segment boundary: every segment left is valid, but the last is missing.
        store
            .put(
                &name,
                Bytes::copy_from_slice(&stored[..sealed_offset(3, 0)]),
            )
            .await
            .expect("put");
        assert!(matches!(
            read_all(&store, &name, SERVICE, &key).await,
            Err(BlobError::Integrity(_))
        ));
        assert!(matches!(
            store
                .open_sealed_ranges(&name, SERVICE, &key, contents.len() as u64)
                .await
                .err(),
            Some(BlobError::Integrity(_))
        ));
    }

    #[tokio::test]
    async fn swapped_or_misattributed_blobs_do_not_open() {
        let contents = plaintext(2 * SEGMENT);
        let (_directory, store, name, key) = store_with(&contents).await;
        // The same bytes under another name (a swap in the store), with the right key.
        let other = BlobName::random();
        store
            .put(&other, Bytes::from(raw(&store, &name).await))
            .await
            .expect("copy");
        assert!(matches!(
            read_all(&store, &other, SERVICE, &key).await,
            Err(BlobError::Integrity(OpenError::BindingMismatch))
        ));
        // Another service, or another key.
        assert!(matches!(
            read_all(&store, &name, "other/dicom", &key).await,
            Err(BlobError::Integrity(OpenError::BindingMismatch))
        ));
        assert!(matches!(
            read_all(&store, &name, SERVICE, &BlobKey::generate()).await,
            Err(BlobError::Integrity(OpenError::BindingMismatch))
        ));
        assert!(matches!(
            store
                .open_sealed_ranges(&other, SERVICE, &key, contents.len() as u64)
                .await
                .err(),
            Some(BlobError::Integrity(OpenError::BindingMismatch))
        ));
    }
}
