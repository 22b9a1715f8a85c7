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
use std::sync::Arc;

use hds_crypto::stream::{
    HEADER_LEN, OpenError, RangeOpener, SEGMENT_SIZE, Sealer, SegmentOpener, StreamBinding, TAG_LEN,
};
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;

use crate::local::join_error;
use crate::{BlobError, BlobName, BlobStore, BlobWriter, PendingSync, local_error, not_found};

/// Ciphertext is handed to the store in pieces of about this size, so sealing adds one small
/// buffer to the store's own part buffers.
const WRITE_FLUSH_BYTES: usize = 1024 * 1024;

/// Sealed segments read at once: 16 segments of 64 KiB (plus tags) is about 1 MiB, large
/// enough that a typical instance is one read, small enough that a stream holds about 1 MiB
/// however large the blob.
const SEGMENTS_PER_READ: u64 = 16;

/// The first read of a sealed blob, before its header tells the segment size: the header and
/// [`SEGMENTS_PER_READ`] segments of the default size.
const FIRST_READ_BYTES: usize =
    HEADER_LEN + SEGMENTS_PER_READ as usize * (SEGMENT_SIZE as usize + TAG_LEN);

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
                blob_name: name.identity(),
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
    ///
    /// The ciphertext is read in pieces of whole segments (about 1 MiB: a typical instance is
    /// one read) and opened in place, and each item of the stream is the plaintext of one
    /// segment, a slice of the buffer it was read into: no plaintext is copied, and no buffer
    /// is zeroed before it is filled. A stream holds about one piece however large the blob.
    pub async fn read_sealed(
        &self,
        name: &BlobName,
        service: &str,
        blob_key: &BlobKey,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let (source, sealed_len, first_piece) =
            self.open_ciphertext(name, FIRST_READ_BYTES as u64).await?;
        let header = &first_piece[..first_piece.len().min(HEADER_LEN)];
        let opener = SegmentOpener::new(
            blob_key,
            StreamBinding {
                service,
                blob_name: name.identity(),
            },
            header,
        )?;
        // A stream always ends with a sealed last segment, even when its plaintext is empty.
        if sealed_len <= HEADER_LEN as u64 {
            return Err(BlobError::Integrity(OpenError::Truncated));
        }
        let mut reader = SealedSegmentReader {
            source,
            opener,
            sealed_len,
            next_segment_offset: HEADER_LEN as u64,
        };
        // Open at least the first segment before returning (a segment size larger than the
        // first read's guess takes more reads). An error here is one no byte was sent for.
        let mut piece = Some((0u64, first_piece));
        let first = loop {
            let (piece_offset, piece_bytes) = match piece.take() {
                Some(first_read) => first_read,
                None => reader.read_next_piece().await?,
            };
            let opened = reader.open_piece(piece_offset, piece_bytes);
            if let Some(error) = opened.error {
                if opened.segments == 0 {
                    return Err(error);
                }
                // Segments before the damaged one are verified: release them, then the error.
                let released = opened.plaintext.into_iter().map(Ok);
                return Ok(futures::stream::iter(released.chain([Err(error)])).boxed());
            }
            // A piece always holds a whole segment except when the header announces segments
            // longer than the first read's guess.
            if opened.segments > 0 {
                break opened.plaintext;
            }
        };
        let rest = futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            if reader.at_end() {
                return None;
            }
            let (piece_offset, piece_bytes) = match reader.read_next_piece().await {
                Ok(piece) => piece,
                Err(error) => return Some((vec![Err(error)], None)),
            };
            let opened = reader.open_piece(piece_offset, piece_bytes);
            let mut items: Vec<Result<Bytes, BlobError>> =
                opened.plaintext.into_iter().map(Ok).collect();
            match opened.error {
                Some(error) => {
                    items.push(Err(error));
                    Some((items, None))
                }
                None => Some((items, Some(reader))),
            }
        })
        .flat_map(futures::stream::iter);
        Ok(futures::stream::iter(first.into_iter().map(Ok))
            .chain(rest)
            .boxed())
    }

    /// Opens a blob for reading its ciphertext: where to read the rest, its length, and its
    /// first `first_read` bytes (fewer if it is shorter). On local files, opening and the
    /// first read are one blocking-pool task.
    async fn open_ciphertext(
        &self,
        name: &BlobName,
        first_read: u64,
    ) -> Result<(CiphertextSource, u64, Vec<u8>), BlobError> {
        if let Some(local) = &self.local {
            let local = Arc::clone(local);
            let name = name.clone();
            return tokio::task::spawn_blocking(move || {
                let located = local
                    .locate(&name)
                    .map_err(local_error)?
                    .ok_or(BlobError::NotFound)?;
                let sealed_len = located.bytes.end - located.bytes.start;
                let base = located.bytes.start;
                let first = read_exactly(&located.file, base, sealed_len.min(first_read))?;
                let source = CiphertextSource::File {
                    file: located.file,
                    base,
                };
                Ok((source, sealed_len, first))
            })
            .await
            .map_err(join_error)?;
        }
        let path = name.object_path();
        let sealed_len = self.store.head(&path).await.map_err(not_found)?.size;
        let source = CiphertextSource::Store {
            store: self.store.clone(),
            path,
        };
        let first = source.read(0..sealed_len.min(first_read)).await?;
        Ok((source, sealed_len, first))
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
        let (source, sealed_len, header) = self.open_ciphertext(name, HEADER_LEN as u64).await?;
        let opener = RangeOpener::new(
            blob_key,
            StreamBinding {
                service,
                blob_name: name.identity(),
            },
            &header,
            sealed_len,
        )?;
        if opener.plaintext_len() != plaintext_len {
            return Err(BlobError::Integrity(OpenError::Truncated));
        }
        Ok(SealedRanges { source, opener })
    }
}

/// Where the ciphertext of a sealed read comes from.
enum CiphertextSource {
    /// A local file, or a pack's segment, with the blob from `base` on: read on the blocking
    /// pool.
    File { file: Arc<std::fs::File>, base: u64 },
    /// Any object store: ranged gets.
    Store {
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
    },
}

impl CiphertextSource {
    /// Exactly the bytes in `range` (which lies inside the blob): a blob that turns out shorter
    /// is truncated.
    async fn read(&self, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
        let mut pieces = self.read_ranges(std::slice::from_ref(&range)).await?;
        pieces
            .pop()
            .ok_or(BlobError::Integrity(OpenError::Truncated))
    }

    /// Exactly the bytes in each range, in order.
    async fn read_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, BlobError> {
        match self {
            CiphertextSource::File { file, base } => {
                let file = Arc::clone(file);
                let base = *base;
                let ranges = ranges.to_vec();
                tokio::task::spawn_blocking(move || {
                    ranges
                        .into_iter()
                        .map(|range| {
                            read_exactly(&file, base + range.start, range.end - range.start)
                        })
                        .collect()
                })
                .await
                .map_err(join_error)?
            }
            CiphertextSource::Store { store, path } => {
                // Stores refuse a range that starts at the end (of an empty blob).
                let wanted: Vec<Range<u64>> = ranges
                    .iter()
                    .filter(|range| range.end > range.start)
                    .cloned()
                    .collect();
                let mut fetched = if wanted.is_empty() {
                    Vec::new()
                } else {
                    store.get_ranges(path, &wanted).await.map_err(not_found)?
                }
                .into_iter();
                let mut pieces = Vec::with_capacity(ranges.len());
                for range in ranges {
                    let length = range.end - range.start;
                    if length == 0 {
                        pieces.push(Vec::new());
                        continue;
                    }
                    let bytes = fetched
                        .next()
                        .ok_or(BlobError::Integrity(OpenError::Truncated))?;
                    if bytes.len() as u64 != length {
                        return Err(BlobError::Integrity(OpenError::Truncated));
                    }
                    // The store's buffer when this is its only owner; a copy otherwise.
                    pieces.push(Vec::from(bytes));
                }
                Ok(pieces)
            }
        }
    }
}

/// `length` bytes at `offset`, read into a buffer that is not zeroed first: a file that ends
/// before is a truncated blob.
fn read_exactly(file: &std::fs::File, offset: u64, length: u64) -> Result<Vec<u8>, BlobError> {
    match crate::pack::read_at(file, offset, length) {
        Ok(bytes) => Ok(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(BlobError::Integrity(OpenError::Truncated))
        }
        Err(error) => Err(local_error(error)),
    }
}

/// The segments opened from one piece of ciphertext.
struct OpenedPiece {
    /// The plaintext of each segment opened, in order (empty segments left out).
    plaintext: Vec<Bytes>,
    /// Segments opened.
    segments: usize,
    /// The segment that failed to open, after the ones in `plaintext`.
    error: Option<BlobError>,
}

/// Reads the segments of a sealed blob whose header is verified, a piece at a time.
struct SealedSegmentReader {
    source: CiphertextSource,
    opener: SegmentOpener,
    sealed_len: u64,
    /// Offset in the blob of the first segment not opened yet.
    next_segment_offset: u64,
}

impl SealedSegmentReader {
    /// Whether the last segment was opened.
    fn at_end(&self) -> bool {
        self.next_segment_offset >= self.sealed_len
    }

    /// Reads the next [`SEGMENTS_PER_READ`] segments (fewer at the end) and returns where the
    /// piece starts in the blob, and its bytes.
    async fn read_next_piece(&mut self) -> Result<(u64, Vec<u8>), BlobError> {
        let start = self.next_segment_offset;
        let piece_len = SEGMENTS_PER_READ * self.opener.sealed_segment_len() as u64;
        let end = start.saturating_add(piece_len).min(self.sealed_len);
        Ok((start, self.source.read(start..end).await?))
    }

    /// Opens in place every whole segment of `piece` (the bytes at `piece_offset` in the blob)
    /// from the next segment on. The segment that ends the blob is opened as the last, so a
    /// blob cut or extended at a segment boundary fails there.
    fn open_piece(&mut self, piece_offset: u64, mut piece: Vec<u8>) -> OpenedPiece {
        let segment_len = self.opener.sealed_segment_len() as u64;
        let piece_end = piece_offset + piece.len() as u64;
        let mut plaintext_ranges = Vec::with_capacity(SEGMENTS_PER_READ as usize);
        let mut segments = 0;
        let mut error = None;
        while self.next_segment_offset < self.sealed_len {
            let segment_start = self.next_segment_offset;
            let segment_end = segment_start
                .saturating_add(segment_len)
                .min(self.sealed_len);
            if segment_end > piece_end {
                break;
            }
            let is_last = segment_end == self.sealed_len;
            // Both offsets lie inside the piece, whose length is a usize.
            let start = (segment_start - piece_offset) as usize;
            let end = (segment_end - piece_offset) as usize;
            match self
                .opener
                .open_segment_in_place(&mut piece[start..end], is_last)
            {
                Ok(plaintext) => {
                    segments += 1;
                    if !plaintext.is_empty() {
                        plaintext_ranges.push(start..start + plaintext.len());
                    }
                    self.next_segment_offset = segment_end;
                }
                Err(failure) => {
                    error = Some(BlobError::Integrity(failure));
                    // Nothing after a failed segment is read.
                    self.next_segment_offset = self.sealed_len;
                    break;
                }
            }
        }
        let piece = Bytes::from(piece);
        OpenedPiece {
            plaintext: plaintext_ranges
                .into_iter()
                .map(|range| piece.slice(range))
                .collect(),
            segments,
            error,
        }
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

    /// Seals the last segment and completes the blob; it is durable when this returns.
    /// Returns the name to record it by (see [`BlobStore::put`]).
    pub async fn finish(self) -> Result<BlobName, BlobError> {
        let (stored, pending) = self.finish_pending().await?;
        pending.synced().await?;
        Ok(stored)
    }

    /// Seals the last segment and completes the blob, returning the name to record it by (see
    /// [`BlobStore::put`]) with the syncs that make it durable still running (see
    /// [`PendingSync`]).
    pub async fn finish_pending(self) -> Result<(BlobName, PendingSync), BlobError> {
        let SealedBlobWriter {
            store,
            name,
            upload,
            sealer,
            mut ciphertext,
        } = self;
        sealer.finish(&mut ciphertext)?;
        match upload {
            // The whole blob is in memory: one put.
            None => store.put_pending(&name, Bytes::from(ciphertext)).await,
            Some(mut upload) => {
                upload.write(&ciphertext).await?;
                Ok((name, upload.finish_pending().await?))
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
    source: CiphertextSource,
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
            self.source.read_ranges(&ciphertext_ranges).await?
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
    use crate::tests::contents_of;

    const SERVICE: &str = "default/dicom";
    const SEGMENT: usize = SEGMENT_SIZE as usize;

    fn plaintext(length: usize) -> Vec<u8> {
        (0..length)
            .map(|position| (position % 251) as u8 ^ 0x5a)
            .collect()
    }

    /// A local store in a new directory, and a name and key for a blob in it.
    fn new_store() -> (tempfile::TempDir, BlobStore, BlobName, BlobKey) {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::local(directory.path()).expect("store");
        (directory, store, BlobName::random(), BlobKey::generate())
    }

    async fn store_with(contents: &[u8]) -> (tempfile::TempDir, BlobStore, BlobName, BlobKey) {
        let (directory, store, name, key) = new_store();
        let mut writer = store
            .create_sealed(&name, SERVICE, &key)
            .await
            .expect("create");
        // Odd chunk sizes, so segments straddle writes.
        for chunk in contents.chunks(10_007) {
            writer.write(chunk).await.expect("write");
        }
        let name = writer.finish().await.expect("finish");
        (directory, store, name, key)
    }

    /// Puts `bytes` in place of a stored blob (a blob is never overwritten by a put).
    async fn replace(store: &BlobStore, name: &BlobName, bytes: Vec<u8>) {
        store.delete(name).await.expect("delete");
        if store.local.is_none() {
            let stored = store.put(name, Bytes::from(bytes)).await.expect("put");
            assert_eq!(&stored, name);
            return;
        }
        // On local files, a file under the blob's identity, which is where a packed blob is
        // read from when its record is not in a pack (restored from a backup): a small put
        // would go into a new record instead.
        let as_file = BlobName::parse(name.identity()).expect("identity");
        let mut writer = store.create(&as_file).await.expect("create");
        writer.write(&bytes).await.expect("write");
        writer.finish().await.expect("finish");
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

    /// Reads a damaged stream to its error: the plaintext released before it, and the error.
    async fn read_until_error(
        stream: &mut BoxStream<'static, Result<Bytes, BlobError>>,
    ) -> (Vec<u8>, BlobError) {
        let mut released = Vec::new();
        loop {
            match stream.try_next().await {
                Ok(Some(chunk)) => released.extend_from_slice(&chunk),
                Ok(None) => panic!("a damaged stream must not end cleanly"),
                Err(error) => return (released, error),
            }
        }
    }

    /// Offset in the sealed blob of byte `offset` of segment `segment`'s ciphertext.
    fn sealed_offset(segment: usize, offset: usize) -> usize {
        HEADER_LEN + segment * (SEGMENT + TAG_LEN) + offset
    }

    #[tokio::test]
    async fn sealed_blobs_round_trip_and_hold_no_plaintext() {
        for length in [
            0,
            1,
            SEGMENT,
            3 * SEGMENT,
            3 * SEGMENT + 17,
            1_000_000,
            3_500_000,
        ] {
            let contents = plaintext(length);
            let (_directory, store, name, key) = store_with(&contents).await;
            assert_eq!(
                read_all(&store, &name, SERVICE, &key).await.expect("open"),
                contents
            );
            let stored = contents_of(&store, &name).await;
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

    /// One write of several flushes' worth, after a small one, round trips.
    #[tokio::test]
    async fn one_large_write_round_trips() {
        let contents = plaintext(2 * WRITE_FLUSH_BYTES + 12_345);
        let (_directory, store, name, key) = new_store();
        let mut writer = store
            .create_sealed(&name, SERVICE, &key)
            .await
            .expect("create");
        writer.write(&contents[..7]).await.expect("write");
        writer.write(&contents[7..]).await.expect("write");
        let name = writer.finish().await.expect("finish");
        assert_eq!(
            contents_of(&store, &name).await.len() as u64,
            hds_crypto::stream::sealed_len(contents.len() as u64)
        );
        assert_eq!(
            read_all(&store, &name, SERVICE, &key).await.expect("open"),
            contents
        );
    }

    #[tokio::test]
    async fn a_damaged_first_segment_fails_before_any_byte_is_released() {
        let contents = plaintext(5 * SEGMENT);
        let (_directory, store, name, key) = store_with(&contents).await;
        let mut stored = contents_of(&store, &name).await;
        stored[sealed_offset(0, 100)] ^= 1;
        replace(&store, &name, stored).await;
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
        let mut stored = contents_of(&store, &name).await;
        stored[sealed_offset(3, 5)] ^= 0x80;
        replace(&store, &name, stored).await;
        let mut stream = store
            .read_sealed(&name, SERVICE, &key)
            .await
            .expect("first segment is fine");
        let (released, error) = read_until_error(&mut stream).await;
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
        let stored = contents_of(&store, &name).await;
        // Cut at a segment boundary: every segment left is valid, but the last is missing.
        replace(&store, &name, stored[..sealed_offset(3, 0)].to_vec()).await;
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
        let other = store
            .put(
                &BlobName::random(),
                Bytes::from(contents_of(&store, &name).await),
            )
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

    /// The same blob in a store of local files (read through the file itself) and in an
    /// in-memory object store (read through ranged gets).
    async fn both_stores(
        contents: &[u8],
    ) -> (
        tempfile::TempDir,
        Vec<(BlobStore, &'static str)>,
        BlobName,
        BlobKey,
    ) {
        let (directory, local, name, key) = store_with(contents).await;
        let memory = BlobStore::from_object_store(Arc::new(object_store::memory::InMemory::new()));
        let copied = memory
            .put(&name, Bytes::from(contents_of(&local, &name).await))
            .await
            .expect("copy");
        assert_eq!(copied, name, "an object store keeps the name it is given");
        (
            directory,
            vec![(local, "local"), (memory, "memory")],
            name,
            key,
        )
    }

    #[tokio::test]
    async fn blobs_of_several_reads_open_from_files_and_object_stores() {
        // Several pieces of 16 segments, ending in a short segment and in a full one.
        for length in [40 * SEGMENT + 123, 32 * SEGMENT, 16 * SEGMENT - 1] {
            let contents = plaintext(length);
            let (_directory, stores, name, key) = both_stores(&contents).await;
            for (store, kind) in stores {
                let chunks: Vec<Bytes> = store
                    .read_sealed(&name, SERVICE, &key)
                    .await
                    .expect("open")
                    .try_collect()
                    .await
                    .expect("read");
                assert_eq!(chunks.concat(), contents, "{kind}, {length} bytes");
                // Each item is the plaintext of one segment.
                assert!(chunks.iter().all(|chunk| chunk.len() <= SEGMENT), "{kind}");
            }
        }
    }

    #[tokio::test]
    async fn damage_in_a_later_read_releases_only_the_segments_before_it() {
        let contents = plaintext(40 * SEGMENT);
        let (_directory, stores, name, key) = both_stores(&contents).await;
        for (store, kind) in stores {
            let mut stored = contents_of(&store, &name).await;
            stored[sealed_offset(20, 7)] ^= 4;
            replace(&store, &name, stored).await;
            let mut stream = store
                .read_sealed(&name, SERVICE, &key)
                .await
                .expect("the first segment is fine");
            let (released, error) = read_until_error(&mut stream).await;
            assert!(
                matches!(
                    error,
                    BlobError::Integrity(OpenError::SegmentAuthentication { segment_index: 20 })
                ),
                "{kind}: {error}"
            );
            assert_eq!(released, contents[..20 * SEGMENT], "{kind}");
            assert!(stream.try_next().await.expect("ended").is_none(), "{kind}");
        }
    }

    #[tokio::test]
    async fn cut_extended_missing_or_headerless_blobs_do_not_open() {
        let contents = plaintext(20 * SEGMENT + 5);
        let (_directory, stores, name, key) = both_stores(&contents).await;
        for (store, kind) in stores {
            let stored = contents_of(&store, &name).await;
            let extended = [stored.as_slice(), &[0u8; TAG_LEN + 1]].concat();
            let cut_inside_the_last_segment = stored[..stored.len() - 1].to_vec();
            let cut_after_a_full_segment = stored[..sealed_offset(17, 0)].to_vec();
            let header_only = stored[..HEADER_LEN].to_vec();
            let half_header = stored[..HEADER_LEN / 2].to_vec();
            for (case, bytes) in [
                ("extended", extended),
                ("cut inside the last segment", cut_inside_the_last_segment),
                ("cut after a full segment", cut_after_a_full_segment),
                ("header only", header_only),
                ("half a header", half_header),
                ("empty", Vec::new()),
            ] {
                // Under the blob's own name, so only the damage can be what fails.
                replace(&store, &name, bytes).await;
                assert!(
                    matches!(
                        read_all(&store, &name, SERVICE, &key).await,
                        Err(BlobError::Integrity(_))
                    ),
                    "{kind}: {case}"
                );
            }
            assert!(
                matches!(
                    store
                        .read_sealed(&BlobName::random(), SERVICE, &key)
                        .await
                        .err(),
                    Some(BlobError::NotFound)
                ),
                "{kind}: missing"
            );
        }
    }
}
