//! Sealed streams: the format of every blob hds stores.
//!
//! A sealed stream is a 64-byte header followed by fixed-size segments, each sealed with
//! AES-256-GCM under a key derived from the blob key, the header and the blob's binding
//! (service, blob name). The construction follows Tink's AES-GCM-HKDF streaming AEAD; the
//! byte layout and a test vector are in `docs/sealed-format.md`.
//!
//! ```text
//! header (64 B) = magic "HDSS" | version 0x01 | segment size (u32 BE) | salt (32 B)
//!                 | nonce prefix (7 B) | key check (16 B)
//! segment i     = AES-256-GCM(segment key, nonce_i, plaintext_i) || tag (16 B)
//! nonce_i       = nonce prefix (7 B) || i (u32 BE) || last-segment flag (0x00 or 0x01)
//! ```
//!
//! Why this shape:
//! - Segments give random access: a plaintext range is opened by reading and decrypting only
//!   the segments that hold it ([`RangeOpener`]), and a stream is sealed or opened with
//!   memory bounded by one segment ([`Sealer`], [`Opener`]).
//! - The counter in the nonce makes reordering detectable, and the last-segment flag makes
//!   truncation at a segment boundary and extension after the last segment detectable.
//! - The binding (service, blob name) and the header are inputs of the key derivation, so a
//!   blob copied under another name, or with an altered header, does not open. The key check
//!   in the header reports that case as [`OpenError::BindingMismatch`] before any segment is
//!   read.
//! - A fresh random salt per stream gives every stream its own segment key, so segment
//!   nonces never repeat under one key even when a blob key were reused.
//!
//! Plaintext leaves [`Opener`] segment by segment, before the end of the stream has been
//! verified. A consumer that forwards it (an HTTP response) must abort, not complete, when a
//! later call fails.

use std::io::Write;
use std::ops::Range;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::kdf::{hkdf_sha256_expand_twice, push_length_prefixed};
use crate::keys::{BlobKey, DATA_KEY_LEN};
use crate::root::fill_random;
use crate::secret::SecretBytes;

/// Plaintext bytes per segment in streams sealed by this version.
///
/// DO NOT CHANGE: existing blobs record their segment size in their header and still open,
/// but changing this alters every new blob's layout, and the range mapping of callers that
/// cache [`sealed_len`]. Change it only together with a new format version.
pub const SEGMENT_SIZE: u32 = 64 * 1024;
/// Length of the stream header in bytes.
pub const HEADER_LEN: usize = 64;
/// Length of each segment's authentication tag in bytes.
pub const TAG_LEN: usize = 16;

const MAGIC: [u8; 4] = *b"HDSS";
const VERSION_1: u8 = 1;
const SALT_LEN: usize = 32;
const NONCE_PREFIX_LEN: usize = 7;
const KEY_CHECK_LEN: usize = 16;
/// The header bytes before the key check: what the key derivation binds.
const HEADER_PREFIX_LEN: usize = HEADER_LEN - KEY_CHECK_LEN;
/// Smallest and largest segment sizes an opener accepts, so a forged header cannot make the
/// opener buffer gigabytes.
const MIN_SEGMENT_SIZE: u32 = 16;
const MAX_SEGMENT_SIZE: u32 = 16 * 1024 * 1024;
const SEGMENT_KEY_INFO: &[u8] = b"hds/sealed-stream/v1/segment-key";
const KEY_CHECK_INFO: &[u8] = b"hds/sealed-stream/v1/key-check";
/// How far from its position a segment is looked for when it fails to open, to tell
/// reordering from corruption. Only failures pay for this.
const REORDER_SEARCH_WINDOW: u64 = 4;

/// What a stream is bound to: a blob opens only under the same service and blob name it was
/// sealed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamBinding<'a> {
    /// The DICOM service (its resource id) the blob belongs to.
    pub service: &'a str,
    /// The blob's opaque name in the blob store.
    pub blob_name: &'a str,
}

impl StreamBinding<'_> {
    fn encode(&self) -> Vec<u8> {
        let mut encoded = Vec::with_capacity(16 + self.service.len() + self.blob_name.len());
        push_length_prefixed(&mut encoded, self.service.as_bytes());
        push_length_prefixed(&mut encoded, self.blob_name.as_bytes());
        encoded
    }
}

/// Why sealing failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The stream would need more than 2^32 segments (256 TiB at 64 KiB segments).
    #[error("sealed stream exceeds the maximum number of segments")]
    StreamTooLong,
    /// A segment given to [`SegmentSealer::seal_segment_in_place`] has the wrong length.
    #[error("segment buffer has the wrong length")]
    SegmentLength,
    /// The last segment was already sealed.
    #[error("sealed stream already finished")]
    AlreadyFinished,
    /// The output slice given to a `*_to_slice` method cannot hold what the call emits.
    #[error("output buffer too small: {needed} bytes needed")]
    OutputTooSmall {
        /// The bytes the call needs room for.
        needed: usize,
    },
}

/// Why opening failed. Every variant but [`OpenError::OutputTooSmall`],
/// [`OpenError::RangeOutOfBounds`] and [`OpenError::AlreadyFailed`] means the bytes are not
/// what was sealed under this key and binding; none carries plaintext or key material.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The bytes do not start with a sealed-stream header.
    #[error("not a sealed stream")]
    NotSealedStream,
    /// The header names a format version this build cannot open.
    #[error("unsupported sealed-stream version {0}")]
    UnsupportedVersion(u8),
    /// The header names a segment size outside the accepted range.
    #[error("unsupported sealed-stream segment size {0}")]
    UnsupportedSegmentSize(u32),
    /// The header does not verify under this key and binding: the blob was moved or copied
    /// under another name or service, opened with the wrong key, or its header was altered.
    #[error("sealed stream does not belong to this key and binding")]
    BindingMismatch,
    /// A segment failed authentication: altered bytes, or cut or extended inside a segment.
    #[error("segment {segment_index} failed authentication")]
    SegmentAuthentication {
        /// Position of the segment in the stream (0-based).
        segment_index: u64,
    },
    /// A valid segment of this stream sits at the wrong position.
    #[error("segment at position {position} was sealed at position {sealed_at}")]
    SegmentOutOfOrder {
        /// Where the segment was found.
        position: u64,
        /// Where it was sealed.
        sealed_at: u64,
    },
    /// The stream ends before its last segment.
    #[error("sealed stream is truncated")]
    Truncated,
    /// Bytes follow the last segment.
    #[error("sealed stream has data after its last segment")]
    TrailingData,
    /// The stream claims more than 2^32 segments.
    #[error("sealed stream exceeds the maximum number of segments")]
    StreamTooLong,
    /// The requested plaintext range lies outside the stream.
    #[error("plaintext range is outside the stream")]
    RangeOutOfBounds,
    /// The opener already reported an error and accepts no more input.
    #[error("opener already failed")]
    AlreadyFailed,
    /// The output slice given to a `*_to_slice` method cannot hold what the call may release.
    /// The only variant that says nothing about the stream: the caller's buffer is short.
    #[error("output buffer too small: {needed} bytes needed")]
    OutputTooSmall {
        /// The bytes the call needs room for.
        needed: usize,
    },
}

/// Sizes of a sealed stream with a given segment size: the mapping between plaintext and
/// ciphertext offsets. Pure arithmetic, no key needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLayout {
    segment_size: u32,
}

/// Which segments hold a plaintext range, and where they are in the ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSpan {
    /// The plaintext range asked for.
    pub plaintext_range: Range<u64>,
    /// Index of the first segment holding it.
    pub first_segment: u64,
    /// Number of segments holding it (0 for an empty range).
    pub segment_count: u64,
    /// The ciphertext bytes to read: those segments, tags included, header excluded.
    pub ciphertext_range: Range<u64>,
}

impl StreamLayout {
    /// The layout of streams sealed by this version ([`SEGMENT_SIZE`]).
    pub const DEFAULT: StreamLayout = StreamLayout {
        segment_size: SEGMENT_SIZE,
    };

    /// A layout with `segment_size` plaintext bytes per segment.
    pub fn new(segment_size: u32) -> Result<StreamLayout, OpenError> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
            return Err(OpenError::UnsupportedSegmentSize(segment_size));
        }
        Ok(StreamLayout { segment_size })
    }

    /// Plaintext bytes per segment.
    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }

    fn plaintext_segment_len(&self) -> u64 {
        u64::from(self.segment_size)
    }

    fn ciphertext_segment_len(&self) -> u64 {
        u64::from(self.segment_size) + TAG_LEN as u64
    }

    /// Number of segments for `plaintext_len` bytes: at least one, since even an empty
    /// stream has a last segment (a bare tag) marking its end.
    pub fn segment_count(&self, plaintext_len: u64) -> u64 {
        plaintext_len.div_ceil(self.plaintext_segment_len()).max(1)
    }

    /// Length of the sealed stream for `plaintext_len` bytes of plaintext.
    /// Saturates at `u64::MAX` for lengths no stream can have.
    pub fn sealed_len(&self, plaintext_len: u64) -> u64 {
        (HEADER_LEN as u64)
            .saturating_add(plaintext_len)
            .saturating_add(
                self.segment_count(plaintext_len)
                    .saturating_mul(TAG_LEN as u64),
            )
    }

    /// Length of the plaintext of a sealed stream of `sealed_len` bytes, or `None` when no
    /// stream has that length (shorter than a header and one tag, or a last segment shorter
    /// than a tag).
    pub fn plaintext_len(&self, sealed_len: u64) -> Option<u64> {
        let body_len = sealed_len.checked_sub(HEADER_LEN as u64)?;
        if body_len < TAG_LEN as u64 {
            return None;
        }
        let full_segments = body_len / self.ciphertext_segment_len();
        let remainder = body_len % self.ciphertext_segment_len();
        if remainder == 0 {
            return Some(full_segments * self.plaintext_segment_len());
        }
        if remainder < TAG_LEN as u64 {
            return None;
        }
        Some(full_segments * self.plaintext_segment_len() + remainder - TAG_LEN as u64)
    }

    /// The ciphertext range (in the whole sealed stream, header included) of segment
    /// `segment_index` in a stream of `plaintext_len` bytes.
    pub fn segment_ciphertext_range(&self, segment_index: u64, plaintext_len: u64) -> Range<u64> {
        let start = HEADER_LEN as u64 + segment_index * self.ciphertext_segment_len();
        let end = (start + self.ciphertext_segment_len()).min(self.sealed_len(plaintext_len));
        start..end
    }

    /// The segments holding `plaintext_range` of a stream of `plaintext_len` bytes, and the
    /// ciphertext range (in the whole sealed stream) to read to open it.
    pub fn segment_span(
        &self,
        plaintext_range: Range<u64>,
        plaintext_len: u64,
    ) -> Result<SegmentSpan, OpenError> {
        if plaintext_range.start > plaintext_range.end || plaintext_range.end > plaintext_len {
            return Err(OpenError::RangeOutOfBounds);
        }
        if plaintext_range.start == plaintext_range.end {
            return Ok(SegmentSpan {
                plaintext_range,
                first_segment: 0,
                segment_count: 0,
                ciphertext_range: HEADER_LEN as u64..HEADER_LEN as u64,
            });
        }
        let first_segment = plaintext_range.start / self.plaintext_segment_len();
        let last_segment = (plaintext_range.end - 1) / self.plaintext_segment_len();
        let start = self
            .segment_ciphertext_range(first_segment, plaintext_len)
            .start;
        let end = self
            .segment_ciphertext_range(last_segment, plaintext_len)
            .end;
        Ok(SegmentSpan {
            plaintext_range,
            first_segment,
            segment_count: last_segment - first_segment + 1,
            ciphertext_range: start..end,
        })
    }
}

/// Length of the sealed stream for `plaintext_len` bytes with the default layout.
pub fn sealed_len(plaintext_len: u64) -> u64 {
    StreamLayout::DEFAULT.sealed_len(plaintext_len)
}

/// The parsed, unauthenticated fields of a header.
struct Header {
    bytes: [u8; HEADER_LEN],
    layout: StreamLayout,
}

impl Header {
    fn new(
        layout: StreamLayout,
        salt: &[u8; SALT_LEN],
        nonce_prefix: &[u8; NONCE_PREFIX_LEN],
    ) -> Header {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[4] = VERSION_1;
        bytes[5..9].copy_from_slice(&layout.segment_size.to_be_bytes());
        bytes[9..9 + SALT_LEN].copy_from_slice(salt);
        bytes[9 + SALT_LEN..HEADER_PREFIX_LEN].copy_from_slice(nonce_prefix);
        Header { bytes, layout }
    }

    fn parse(bytes: &[u8]) -> Result<Header, OpenError> {
        let bytes: [u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|header| header.try_into().ok())
            .ok_or(OpenError::Truncated)?;
        if bytes[0..4] != MAGIC {
            return Err(OpenError::NotSealedStream);
        }
        if bytes[4] != VERSION_1 {
            return Err(OpenError::UnsupportedVersion(bytes[4]));
        }
        let segment_size = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        let layout = StreamLayout::new(segment_size)?;
        Ok(Header { bytes, layout })
    }

    fn salt(&self) -> &[u8] {
        &self.bytes[9..9 + SALT_LEN]
    }

    fn nonce_prefix(&self) -> [u8; NONCE_PREFIX_LEN] {
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        prefix.copy_from_slice(&self.bytes[9 + SALT_LEN..HEADER_PREFIX_LEN]);
        prefix
    }

    /// Derives the segment cipher and the expected key check for this header, key and binding.
    fn derive(
        &self,
        blob_key: &[u8; DATA_KEY_LEN],
        binding: &StreamBinding<'_>,
    ) -> (SegmentCipher, [u8; KEY_CHECK_LEN]) {
        let encoded_binding = binding.encode();
        let header_prefix = &self.bytes[..HEADER_PREFIX_LEN];
        let mut segment_key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        let mut key_check = [0u8; KEY_CHECK_LEN];
        hkdf_sha256_expand_twice(
            self.salt(),
            blob_key,
            (
                &[SEGMENT_KEY_INFO, &[0], header_prefix, &encoded_binding],
                segment_key.as_mut_slice(),
            ),
            (
                &[KEY_CHECK_INFO, &[0], header_prefix, &encoded_binding],
                &mut key_check,
            ),
        );
        let unbound = UnboundKey::new(&AES_256_GCM, segment_key.as_slice())
            // A 32-byte slice is always a valid AES-256 key.
            .expect("32 bytes is a valid AES-256-GCM key");
        let cipher = SegmentCipher {
            key: LessSafeKey::new(unbound),
            nonce_prefix: self.nonce_prefix(),
            layout: self.layout,
        };
        (cipher, key_check)
    }

    /// Verifies the key check and returns the segment cipher.
    fn verify(
        &self,
        blob_key: &[u8; DATA_KEY_LEN],
        binding: &StreamBinding<'_>,
    ) -> Result<SegmentCipher, OpenError> {
        let (cipher, expected_key_check) = self.derive(blob_key, binding);
        aws_lc_rs::constant_time::verify_slices_are_equal(
            &expected_key_check,
            &self.bytes[HEADER_PREFIX_LEN..],
        )
        .map_err(|_| OpenError::BindingMismatch)?;
        Ok(cipher)
    }
}

/// The per-stream AES-256-GCM key and nonce prefix.
struct SegmentCipher {
    key: LessSafeKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    layout: StreamLayout,
}

impl SegmentCipher {
    fn nonce(&self, segment_index: u32, is_last: bool) -> Nonce {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_PREFIX_LEN..NONCE_PREFIX_LEN + 4].copy_from_slice(&segment_index.to_be_bytes());
        nonce[NONCE_LEN - 1] = u8::from(is_last);
        Nonce::assume_unique_for_key(nonce)
    }

    /// Seals `plaintext` as segment `segment_index` into `out`, which holds exactly the
    /// plaintext's length plus [`TAG_LEN`] bytes. Encrypts out of place, straight from
    /// `plaintext` into `out`, so each byte is read once and written once: a separate copy or
    /// zero-fill pass over the output costs about as much as the encryption once blobs
    /// outgrow the CPU cache.
    fn seal_segment_to(
        &self,
        segment_index: u64,
        is_last: bool,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), SealError> {
        let segment_index = u32::try_from(segment_index).map_err(|_| SealError::StreamTooLong)?;
        let (ciphertext, tag) = out.split_at_mut(plaintext.len());
        self.key
            .seal_out_of_place_scatter(
                self.nonce(segment_index, is_last),
                Aad::empty(),
                plaintext,
                ciphertext,
                &[],
                tag,
            )
            // Segments are at most 16 MiB, far below AES-GCM's 2^36-byte limit, and every
            // caller passes an `out` of exactly the plaintext's length plus the tag's.
            .expect("AES-256-GCM seal of one segment cannot fail");
        Ok(())
    }

    /// Opens `ciphertext` (one segment with its tag) as segment `segment_index` into `out`
    /// (exactly the plaintext's length), without diagnosing failures. Decrypts out of place;
    /// on failure `out` is wiped.
    fn try_open_segment_to(
        &self,
        segment_index: u64,
        is_last: bool,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> bool {
        let Ok(segment_index) = u32::try_from(segment_index) else {
            return false;
        };
        let Some(plaintext_len) = ciphertext.len().checked_sub(TAG_LEN) else {
            return false;
        };
        if out.len() != plaintext_len {
            return false;
        }
        let (encrypted, tag) = ciphertext.split_at(plaintext_len);
        let opened = self.key.open_separate_gather(
            self.nonce(segment_index, is_last),
            Aad::empty(),
            encrypted,
            tag,
            out,
        );
        if opened.is_err() {
            // Whatever was written is unauthenticated: drop it.
            out.fill(0);
            return false;
        }
        true
    }

    /// Opens segment `segment_index` into `out` (exactly the plaintext's length); on
    /// failure, wipes `out` and finds out why.
    fn open_segment_to(
        &self,
        segment_index: u64,
        is_last: bool,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<(), OpenError> {
        if segment_index > u64::from(u32::MAX) {
            return Err(OpenError::StreamTooLong);
        }
        if ciphertext.len() < TAG_LEN {
            return Err(OpenError::Truncated);
        }
        if self.try_open_segment_to(segment_index, is_last, ciphertext, out) {
            return Ok(());
        }
        Err(self.diagnose(segment_index, is_last, ciphertext))
    }

    /// Opens segment `segment_index` and appends its plaintext to `out`; on failure `out` is
    /// unchanged.
    fn open_segment_into(
        &self,
        segment_index: u64,
        is_last: bool,
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        let Some(plaintext_len) = ciphertext.len().checked_sub(TAG_LEN) else {
            return Err(OpenError::Truncated);
        };
        let start = out.len();
        out.resize(start + plaintext_len, 0);
        let opened = self.open_segment_to(segment_index, is_last, ciphertext, &mut out[start..]);
        if opened.is_err() {
            out.truncate(start);
        }
        opened
    }

    /// Tells why a segment failed to open, by trying the other last-segment flag and nearby
    /// positions. Nothing decrypted here is returned.
    fn diagnose(&self, segment_index: u64, is_last: bool, ciphertext: &[u8]) -> OpenError {
        let plaintext_len = ciphertext.len().saturating_sub(TAG_LEN);
        let mut scratch = SecretBytes::zeroed(plaintext_len);
        let scratch = scratch.as_mut_slice();
        if self.try_open_segment_to(segment_index, !is_last, ciphertext, scratch) {
            return if is_last {
                OpenError::Truncated
            } else {
                OpenError::TrailingData
            };
        }
        let lowest = segment_index.saturating_sub(REORDER_SEARCH_WINDOW);
        for candidate in lowest..=segment_index + REORDER_SEARCH_WINDOW {
            if candidate == segment_index {
                continue;
            }
            for candidate_is_last in [false, true] {
                if self.try_open_segment_to(candidate, candidate_is_last, ciphertext, scratch) {
                    return OpenError::SegmentOutOfOrder {
                        position: segment_index,
                        sealed_at: candidate,
                    };
                }
            }
        }
        OpenError::SegmentAuthentication { segment_index }
    }
}

/// The header and segment cipher of a new stream with chosen parameters.
fn start_stream(
    blob_key: &[u8; DATA_KEY_LEN],
    binding: StreamBinding<'_>,
    layout: StreamLayout,
    salt: &[u8; SALT_LEN],
    nonce_prefix: &[u8; NONCE_PREFIX_LEN],
) -> ([u8; HEADER_LEN], SegmentCipher) {
    let header = Header::new(layout, salt, nonce_prefix);
    let (cipher, key_check) = header.derive(blob_key, &binding);
    let mut header_bytes = header.bytes;
    header_bytes[HEADER_PREFIX_LEN..].copy_from_slice(&key_check);
    (header_bytes, cipher)
}

/// The header and segment cipher of a new stream with the default layout and a fresh random
/// salt and nonce prefix.
fn start_random_stream(
    blob_key: &BlobKey,
    binding: StreamBinding<'_>,
) -> ([u8; HEADER_LEN], SegmentCipher) {
    let mut salt = [0u8; SALT_LEN];
    let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
    fill_random(&mut salt);
    fill_random(&mut nonce_prefix);
    start_stream(
        blob_key.expose(),
        binding,
        StreamLayout::DEFAULT,
        &salt,
        &nonce_prefix,
    )
}

/// Seals a stream incrementally: push plaintext chunks of any size, get ciphertext out.
/// Holds at most one segment of plaintext (zeroized on drop), so a blob of any size is sealed
/// in bounded memory; async callers push what they read and write what comes out.
///
/// The ciphertext is complete only after [`Sealer::finish`], which emits the last segment.
pub struct Sealer {
    cipher: SegmentCipher,
    /// The header, until it has been emitted.
    header: Option<[u8; HEADER_LEN]>,
    /// Plaintext not yet sealed: at most one segment. Allocated at full capacity on first use
    /// so it never reallocates (which would leave an unzeroized copy behind).
    pending: SecretBytes,
    next_segment: u64,
}

impl Sealer {
    /// A sealer for a new stream under `blob_key`, bound to `binding`, with the default layout
    /// and a fresh random salt and nonce prefix.
    pub fn new(blob_key: &BlobKey, binding: StreamBinding<'_>) -> Sealer {
        let (header, cipher) = start_random_stream(blob_key, binding);
        Sealer {
            cipher,
            header: Some(header),
            pending: SecretBytes::default(),
            next_segment: 0,
        }
    }

    /// A sealer with chosen parameters. Reusing a salt and nonce prefix under the same key and
    /// binding reuses nonces; only test vectors and tests may do that.
    #[cfg(test)]
    pub(crate) fn with_parameters(
        blob_key: &[u8; DATA_KEY_LEN],
        binding: StreamBinding<'_>,
        layout: StreamLayout,
        salt: &[u8; SALT_LEN],
        nonce_prefix: &[u8; NONCE_PREFIX_LEN],
    ) -> Sealer {
        let (header, cipher) = start_stream(blob_key, binding, layout, salt, nonce_prefix);
        Sealer {
            cipher,
            header: Some(header),
            pending: SecretBytes::default(),
            next_segment: 0,
        }
    }

    /// Seals `plaintext` (the next bytes of the stream) and appends the ciphertext ready so
    /// far to `out`. A segment is emitted only once a byte beyond it arrives, because only
    /// then is it known not to be the last.
    ///
    /// `out` grows once per call, by exactly [`Sealer::push_output_len`] bytes, which are
    /// zero-filled before being overwritten: a caller that reuses an output buffer for large
    /// pushes saves that pass with [`Sealer::push_to_slice`].
    pub fn push(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        let room = self.push_output_len(plaintext.len());
        append_to(out, room, |slice| self.push_to_slice(plaintext, slice))
    }

    /// Seals `plaintext` (the next bytes of the stream) into the start of `out`, and returns
    /// how many ciphertext bytes were written: exactly [`Sealer::push_output_len`]. Writes
    /// straight into `out` with no zero-fill or copy, for callers that keep an output buffer.
    ///
    /// Fails with [`SealError::OutputTooSmall`], before consuming anything, when `out` is
    /// shorter than that.
    pub fn push_to_slice(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, SealError> {
        let needed = self.push_output_len(plaintext.len());
        if out.len() < needed {
            return Err(SealError::OutputTooSmall { needed });
        }
        let completed_segments = self.segments_completed_by(plaintext.len()) as u64;
        // Checked before anything is consumed, so a failed push leaves the sealer unchanged.
        if self.next_segment + completed_segments > u64::from(u32::MAX) + 1 {
            return Err(SealError::StreamTooLong);
        }
        let segment_size = self.cipher.layout.segment_size as usize;
        let sealed_segment_len = segment_size + TAG_LEN;
        let mut written = self.emit_header_to(out);
        let mut input = plaintext;
        if !self.pending.is_empty() {
            let taken = input.len().min(segment_size - self.pending.len());
            self.pending.as_mut_vec().extend_from_slice(&input[..taken]);
            input = &input[taken..];
            if input.is_empty() {
                return Ok(written);
            }
            // The pending segment is full and more follows: it is not the last.
            self.cipher.seal_segment_to(
                self.next_segment,
                false,
                &self.pending,
                &mut out[written..written + sealed_segment_len],
            )?;
            written += sealed_segment_len;
            self.next_segment += 1;
            self.pending.as_mut_vec().clear();
        }
        // Whole segments straight from the input, without staging.
        while input.len() > segment_size {
            self.cipher.seal_segment_to(
                self.next_segment,
                false,
                &input[..segment_size],
                &mut out[written..written + sealed_segment_len],
            )?;
            written += sealed_segment_len;
            self.next_segment += 1;
            input = &input[segment_size..];
        }
        if !input.is_empty() {
            self.pending.as_mut_vec().reserve_exact(segment_size);
            self.pending.as_mut_vec().extend_from_slice(input);
        }
        Ok(written)
    }

    /// Ciphertext bytes that pushing `plaintext_len` more bytes emits: the header on the
    /// first call, and every segment that those bytes complete and go beyond.
    pub fn push_output_len(&self, plaintext_len: usize) -> usize {
        let header_len = if self.header.is_some() { HEADER_LEN } else { 0 };
        let sealed_segment_len = self.cipher.layout.ciphertext_segment_len() as usize;
        header_len + self.segments_completed_by(plaintext_len) * sealed_segment_len
    }

    /// Ciphertext bytes that [`Sealer::finish`] emits: the last segment (and the header, for
    /// a stream nothing was pushed to).
    pub fn finish_output_len(&self) -> usize {
        let header_len = if self.header.is_some() { HEADER_LEN } else { 0 };
        header_len + self.pending.len() + TAG_LEN
    }

    /// Segments sealed by a push of `plaintext_len` more bytes: those filled with a byte
    /// beyond them.
    fn segments_completed_by(&self, plaintext_len: usize) -> usize {
        let segment_size = self.cipher.layout.segment_size as usize;
        self.pending
            .len()
            .saturating_add(plaintext_len)
            .saturating_sub(1)
            / segment_size
    }

    /// Seals what remains as the last segment and appends it (and the header, for an empty
    /// stream) to `out`.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<(), SealError> {
        let room = self.finish_output_len();
        append_to(out, room, |slice| self.finish_to_slice(slice))
    }

    /// Seals what remains as the last segment into the start of `out` (after the header, for
    /// an empty stream), and returns how many bytes were written: exactly
    /// [`Sealer::finish_output_len`]. Fails with [`SealError::OutputTooSmall`] when `out` is
    /// shorter than that.
    pub fn finish_to_slice(mut self, out: &mut [u8]) -> Result<usize, SealError> {
        let needed = self.finish_output_len();
        if out.len() < needed {
            return Err(SealError::OutputTooSmall { needed });
        }
        let written = self.emit_header_to(out);
        self.cipher.seal_segment_to(
            self.next_segment,
            true,
            &self.pending,
            &mut out[written..needed],
        )?;
        Ok(needed)
    }

    /// Writes the header to the start of `out` if it has not been emitted yet; returns its
    /// length, or 0. `out` has room: every caller checked it against the output length.
    fn emit_header_to(&mut self, out: &mut [u8]) -> usize {
        match self.header.take() {
            Some(header) => {
                out[..HEADER_LEN].copy_from_slice(&header);
                HEADER_LEN
            }
            None => 0,
        }
    }
}

/// Seals everything written to it into `inner`: a [`std::io::Write`] adapter over
/// [`Sealer`]. Call [`SealingWriter::finish`]; dropping it without finishing leaves a
/// truncated stream, which will not open.
pub struct SealingWriter<W: Write> {
    sealer: Sealer,
    inner: W,
    ciphertext: Vec<u8>,
}

impl<W: Write> SealingWriter<W> {
    /// Seals into `inner` under `blob_key`, bound to `binding`.
    pub fn new(blob_key: &BlobKey, binding: StreamBinding<'_>, inner: W) -> SealingWriter<W> {
        SealingWriter {
            sealer: Sealer::new(blob_key, binding),
            inner,
            ciphertext: Vec::new(),
        }
    }

    /// Writes the last segment, flushes, and returns the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.ciphertext.clear();
        self.sealer
            .finish(&mut self.ciphertext)
            .map_err(std::io::Error::other)?;
        self.inner.write_all(&self.ciphertext)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealingWriter<W> {
    fn write(&mut self, plaintext: &[u8]) -> std::io::Result<usize> {
        self.ciphertext.clear();
        self.sealer
            .push(plaintext, &mut self.ciphertext)
            .map_err(std::io::Error::other)?;
        self.inner.write_all(&self.ciphertext)?;
        Ok(plaintext.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Seals a stream one segment at a time, in place, in buffers the caller owns: the
/// zero-copy path for a caller that reads plaintext into segment-sized buffers anyway (a file,
/// a request body) and writes each buffer out after sealing.
///
/// Write [`SegmentSealer::header`] first, then each segment in order; the last one is sealed
/// with `is_last` and ends the stream.
pub struct SegmentSealer {
    cipher: SegmentCipher,
    header: [u8; HEADER_LEN],
    next_segment: u64,
    finished: bool,
}

impl SegmentSealer {
    /// A segment sealer for a new stream under `blob_key`, bound to `binding`, with the default
    /// layout and a fresh random salt and nonce prefix.
    pub fn new(blob_key: &BlobKey, binding: StreamBinding<'_>) -> SegmentSealer {
        let (header, cipher) = start_random_stream(blob_key, binding);
        SegmentSealer {
            cipher,
            header,
            next_segment: 0,
            finished: false,
        }
    }

    /// The stream header: the first [`HEADER_LEN`] bytes of the sealed stream.
    pub fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// Plaintext bytes in every segment but the last.
    pub fn segment_size(&self) -> usize {
        self.cipher.layout.segment_size as usize
    }

    /// Seals the next segment in place. `segment` holds the plaintext followed by [`TAG_LEN`]
    /// bytes of room for the tag; on return it holds the sealed segment. The plaintext must be
    /// exactly [`SegmentSealer::segment_size`] bytes, except in the last segment (`is_last`),
    /// which holds 0 to `segment_size` bytes.
    pub fn seal_segment_in_place(
        &mut self,
        segment: &mut [u8],
        is_last: bool,
    ) -> Result<(), SealError> {
        if self.finished {
            return Err(SealError::AlreadyFinished);
        }
        let plaintext_len = segment
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(SealError::SegmentLength)?;
        let valid_length = if is_last {
            plaintext_len <= self.segment_size()
        } else {
            plaintext_len == self.segment_size()
        };
        if !valid_length {
            return Err(SealError::SegmentLength);
        }
        let segment_index =
            u32::try_from(self.next_segment).map_err(|_| SealError::StreamTooLong)?;
        let (plaintext, tag_room) = segment.split_at_mut(plaintext_len);
        let tag = self
            .cipher
            .key
            .seal_in_place_separate_tag(
                self.cipher.nonce(segment_index, is_last),
                Aad::empty(),
                plaintext,
            )
            // Segments are at most 16 MiB, far below AES-GCM's 2^36-byte limit.
            .expect("AES-256-GCM seal of one segment cannot fail");
        tag_room.copy_from_slice(tag.as_ref());
        self.next_segment += 1;
        self.finished = is_last;
        Ok(())
    }
}

/// Opens a stream one segment at a time, in place, in buffers the caller owns: the zero-copy
/// counterpart of [`SegmentSealer`]. The caller tells which segment is the last (from the
/// stream's total length, or by reading ahead).
///
/// A failed segment is reported as [`OpenError::SegmentAuthentication`] whatever the cause
/// (alteration, reordering, truncation or extension at a boundary), because the failed buffer
/// is wiped; [`Opener`] and [`RangeOpener`] keep the ciphertext and tell these apart.
pub struct SegmentOpener {
    cipher: SegmentCipher,
    next_segment: u64,
    finished: bool,
}

impl SegmentOpener {
    /// Verifies `header` against `blob_key` and `binding`.
    pub fn new(
        blob_key: &BlobKey,
        binding: StreamBinding<'_>,
        header: &[u8],
    ) -> Result<SegmentOpener, OpenError> {
        if header.is_empty() {
            return Err(OpenError::NotSealedStream);
        }
        let cipher = Header::parse(header)?.verify(blob_key.expose(), &binding)?;
        Ok(SegmentOpener {
            cipher,
            next_segment: 0,
            finished: false,
        })
    }

    /// Sealed bytes (plaintext and tag) in every segment but the last.
    pub fn sealed_segment_len(&self) -> usize {
        self.cipher.layout.ciphertext_segment_len() as usize
    }

    /// Opens the next segment in place and returns its plaintext, a prefix of `segment`.
    /// On failure the buffer's contents are unspecified and must be discarded.
    pub fn open_segment_in_place<'segment>(
        &mut self,
        segment: &'segment mut [u8],
        is_last: bool,
    ) -> Result<&'segment mut [u8], OpenError> {
        if self.finished {
            return Err(OpenError::TrailingData);
        }
        let segment_index = self.next_segment;
        let valid_length = if is_last {
            (TAG_LEN..=self.sealed_segment_len()).contains(&segment.len())
        } else {
            segment.len() == self.sealed_segment_len()
        };
        if !valid_length {
            return Err(if segment.len() < TAG_LEN || is_last {
                OpenError::Truncated
            } else {
                OpenError::SegmentAuthentication { segment_index }
            });
        }
        let index = u32::try_from(segment_index).map_err(|_| OpenError::StreamTooLong)?;
        if self
            .cipher
            .key
            .open_in_place(
                self.cipher.nonce(index, is_last),
                Aad::empty(),
                &mut *segment,
            )
            .is_err()
        {
            // aws-lc wipes the buffer when authentication fails, so there is nothing left to
            // retry with other positions or flags: the error cannot be more specific here.
            self.finished = true;
            return Err(OpenError::SegmentAuthentication { segment_index });
        }
        self.next_segment += 1;
        self.finished = is_last;
        let plaintext_len = segment.len() - TAG_LEN;
        Ok(&mut segment[..plaintext_len])
    }
}

/// Seals a whole in-memory plaintext: [`Sealer`] in one call.
pub fn seal(
    blob_key: &BlobKey,
    binding: StreamBinding<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut sealer = Sealer::new(blob_key, binding);
    let total_len = sealed_len(plaintext.len() as u64) as usize;
    // `vec!` of zeros takes fresh pages from the kernel for large blobs rather than
    // zero-filling in a pass of its own; the segments are then sealed straight into it.
    let mut sealed = vec![0u8; total_len];
    let mut written = sealer.push_to_slice(plaintext, &mut sealed)?;
    written += sealer.finish_to_slice(&mut sealed[written..])?;
    sealed.truncate(written);
    Ok(sealed)
}

/// Opens a whole stream in one call: [`Opener`] over an in-memory ciphertext.
pub fn open(
    blob_key: &BlobKey,
    binding: StreamBinding<'_>,
    sealed: &[u8],
) -> Result<SecretBytes, OpenError> {
    let mut opener = Opener::new(blob_key, binding);
    // The plaintext is shorter than the ciphertext after the header, so this never grows.
    let mut plaintext = SecretBytes::zeroed(opener.max_push_output_len(sealed.len()));
    let mut written = opener.push_to_slice(sealed, plaintext.as_mut_slice())?;
    written += opener.finish_to_slice(&mut plaintext.as_mut_slice()[written..])?;
    plaintext.as_mut_vec().truncate(written);
    Ok(plaintext)
}

enum OpenerState {
    AwaitingHeader {
        blob_key: Zeroizing<[u8; DATA_KEY_LEN]>,
        /// The binding's service and blob name, kept until the header arrives.
        binding_names: (String, String),
        header: Vec<u8>,
    },
    Segments {
        cipher: SegmentCipher,
        next_segment: u64,
    },
    Failed,
}

/// Opens a stream incrementally: push ciphertext chunks of any size, get plaintext out, one
/// verified segment at a time. Holds at most one segment of ciphertext.
///
/// Each segment is authenticated before its plaintext is released, but the stream as a whole
/// (its end) is verified only by [`Opener::finish`]. Treat an error from any call, including
/// `finish`, as fatal for everything already released.
pub struct Opener {
    state: OpenerState,
    /// Ciphertext not yet opened: at most one segment with its tag.
    pending: Vec<u8>,
}

impl Opener {
    /// An opener for a stream sealed under `blob_key` for `binding`.
    pub fn new(blob_key: &BlobKey, binding: StreamBinding<'_>) -> Opener {
        Opener {
            state: OpenerState::AwaitingHeader {
                blob_key: Zeroizing::new(*blob_key.expose()),
                binding_names: (binding.service.to_owned(), binding.blob_name.to_owned()),
                header: Vec::with_capacity(HEADER_LEN),
            },
            pending: Vec::new(),
        }
    }

    /// Opens the segments completed by `ciphertext` and appends their plaintext to `out`.
    ///
    /// `out` grows once per call, by exactly the plaintext released, which is zero-filled
    /// before being overwritten: a caller that reuses an output buffer for large pushes saves
    /// that pass with [`Opener::push_to_slice`]. When a segment fails, `out` keeps the
    /// plaintext of the segments before it, which were authenticated.
    pub fn push(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        let result = self.push_appending(ciphertext, out);
        if result.is_err() {
            self.state = OpenerState::Failed;
        }
        result
    }

    /// Opens the segments completed by `ciphertext` into the start of `out`, and returns how
    /// many plaintext bytes were written. Writes straight into `out` with no zero-fill or
    /// copy, for callers that keep an output buffer.
    ///
    /// `out` must hold at least [`Opener::max_push_output_len`] bytes; otherwise this fails
    /// with [`OpenError::OutputTooSmall`] before consuming anything, and the opener stays
    /// usable. Any other error is final, as with [`Opener::push`]; the plaintext written
    /// before it (the segments that were authenticated) is not reported.
    pub fn push_to_slice(&mut self, ciphertext: &[u8], out: &mut [u8]) -> Result<usize, OpenError> {
        let needed = self.max_push_output_len(ciphertext.len());
        if out.len() < needed {
            return Err(OpenError::OutputTooSmall { needed });
        }
        let mut written = 0;
        let result = match self.take_header(ciphertext) {
            Ok(Some(input)) => self.open_segments(input, out, &mut written),
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => Ok(written),
            Err(error) => {
                self.state = OpenerState::Failed;
                Err(error)
            }
        }
    }

    /// At most how many plaintext bytes pushing `ciphertext_len` more bytes releases: what
    /// [`Opener::push_to_slice`] needs room for. Never more than the ciphertext given plus
    /// the ciphertext held back from earlier calls (at most one segment).
    pub fn max_push_output_len(&self, ciphertext_len: usize) -> usize {
        match &self.state {
            OpenerState::AwaitingHeader { header, .. } => {
                ciphertext_len.saturating_sub(HEADER_LEN - header.len())
            }
            OpenerState::Segments { .. } => self.pending.len().saturating_add(ciphertext_len),
            OpenerState::Failed => 0,
        }
    }

    /// At most how many plaintext bytes [`Opener::finish`] releases: what
    /// [`Opener::finish_to_slice`] needs room for.
    pub fn max_finish_output_len(&self) -> usize {
        match &self.state {
            OpenerState::Segments { .. } => self.pending.len().saturating_sub(TAG_LEN),
            OpenerState::AwaitingHeader { .. } | OpenerState::Failed => 0,
        }
    }

    /// Opens the last segment, appends its plaintext to `out`, and verifies the stream ends
    /// there.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), OpenError> {
        self.push_appending(&[], out)?;
        let (cipher, next_segment) = self.last_segment_cipher()?;
        cipher.open_segment_into(next_segment, true, &self.pending, out)
    }

    /// Opens the last segment into the start of `out`, verifies the stream ends there, and
    /// returns how many plaintext bytes were written. `out` must hold at least
    /// [`Opener::max_finish_output_len`] bytes, or this fails with
    /// [`OpenError::OutputTooSmall`].
    pub fn finish_to_slice(self, out: &mut [u8]) -> Result<usize, OpenError> {
        let needed = self.max_finish_output_len();
        if out.len() < needed {
            return Err(OpenError::OutputTooSmall { needed });
        }
        let (cipher, next_segment) = self.last_segment_cipher()?;
        if self.pending.len() < TAG_LEN {
            return Err(OpenError::Truncated);
        }
        cipher.open_segment_to(next_segment, true, &self.pending, &mut out[..needed])?;
        Ok(needed)
    }

    /// The cipher and index of the last segment, or why the stream cannot have one.
    fn last_segment_cipher(&self) -> Result<(&SegmentCipher, u64), OpenError> {
        match &self.state {
            OpenerState::AwaitingHeader { header, .. } if header.is_empty() => {
                Err(OpenError::NotSealedStream)
            }
            OpenerState::AwaitingHeader { .. } => Err(OpenError::Truncated),
            OpenerState::Failed => Err(OpenError::AlreadyFailed),
            OpenerState::Segments {
                cipher,
                next_segment,
            } => Ok((cipher, *next_segment)),
        }
    }

    /// [`Opener::push`] without marking the opener failed: grows `out` once, by exactly the
    /// plaintext the completed segments hold, and opens into it.
    fn push_appending(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        let Some(input) = self.take_header(ciphertext)? else {
            return Ok(());
        };
        let released = match &self.state {
            OpenerState::Segments { cipher, .. } => {
                let layout = cipher.layout;
                let completed = self
                    .pending
                    .len()
                    .saturating_add(input.len())
                    .saturating_sub(1)
                    / layout.ciphertext_segment_len() as usize;
                completed * layout.plaintext_segment_len() as usize
            }
            OpenerState::AwaitingHeader { .. } | OpenerState::Failed => 0,
        };
        let start = out.len();
        out.resize(start + released, 0);
        let mut written = 0;
        let result = self.open_segments(input, &mut out[start..], &mut written);
        out.truncate(start + written);
        result
    }

    /// Takes header bytes from the front of `ciphertext` and, once the header is complete,
    /// verifies it. Returns the ciphertext after the header, or `None` while the header is
    /// still incomplete.
    fn take_header<'input>(
        &mut self,
        ciphertext: &'input [u8],
    ) -> Result<Option<&'input [u8]>, OpenError> {
        let OpenerState::AwaitingHeader {
            blob_key,
            binding_names,
            header,
        } = &mut self.state
        else {
            return Ok(Some(ciphertext));
        };
        let taken = ciphertext.len().min(HEADER_LEN - header.len());
        header.extend_from_slice(&ciphertext[..taken]);
        if header.len() < HEADER_LEN {
            return Ok(None);
        }
        let parsed = Header::parse(header)?;
        let binding = StreamBinding {
            service: &binding_names.0,
            blob_name: &binding_names.1,
        };
        let cipher = parsed.verify(blob_key, &binding)?;
        self.pending = Vec::with_capacity(cipher.layout.ciphertext_segment_len() as usize);
        self.state = OpenerState::Segments {
            cipher,
            next_segment: 0,
        };
        Ok(Some(&ciphertext[taken..]))
    }

    /// Opens every segment that `input` completes (each one followed by more ciphertext, so
    /// not the last) into `out` from offset `*written`, advancing `*written` past each
    /// authenticated segment, and holds back the rest. `out` has room for them: callers size
    /// it by the same count or by an upper bound.
    fn open_segments(
        &mut self,
        input: &[u8],
        out: &mut [u8],
        written: &mut usize,
    ) -> Result<(), OpenError> {
        let OpenerState::Segments {
            cipher,
            next_segment,
        } = &mut self.state
        else {
            return Err(OpenError::AlreadyFailed);
        };
        let segment_len = cipher.layout.ciphertext_segment_len() as usize;
        let plaintext_segment_len = cipher.layout.plaintext_segment_len() as usize;
        let mut input = input;
        if !self.pending.is_empty() {
            let taken = input.len().min(segment_len - self.pending.len());
            self.pending.extend_from_slice(&input[..taken]);
            input = &input[taken..];
            if input.is_empty() {
                return Ok(());
            }
            let end = *written + plaintext_segment_len;
            cipher.open_segment_to(*next_segment, false, &self.pending, &mut out[*written..end])?;
            *written = end;
            *next_segment += 1;
            self.pending.clear();
        }
        while input.len() > segment_len {
            let end = *written + plaintext_segment_len;
            cipher.open_segment_to(
                *next_segment,
                false,
                &input[..segment_len],
                &mut out[*written..end],
            )?;
            *written = end;
            *next_segment += 1;
            input = &input[segment_len..];
        }
        self.pending.extend_from_slice(input);
        Ok(())
    }
}

/// Reads byte ranges of a sealed stream's ciphertext (a file, an object store).
pub trait CiphertextRangeReader {
    /// Why a read failed.
    type Error;

    /// Returns exactly the bytes in `range` of the sealed stream (header included in the
    /// offsets), or fewer if the stream ends first.
    fn read_ciphertext_range(&mut self, range: Range<u64>) -> Result<Vec<u8>, Self::Error>;
}

impl CiphertextRangeReader for &[u8] {
    type Error = std::convert::Infallible;

    fn read_ciphertext_range(&mut self, range: Range<u64>) -> Result<Vec<u8>, Self::Error> {
        let length = self.len() as u64;
        let start = range.start.min(length) as usize;
        let end = range.end.min(length) as usize;
        Ok(self[start..end.max(start)].to_vec())
    }
}

/// Why a range read failed: reading the ciphertext, or opening it.
#[derive(Debug, thiserror::Error)]
pub enum RangeOpenError<E> {
    /// The reader failed.
    #[error("reading the sealed stream failed")]
    Read(#[source] E),
    /// The ciphertext did not open.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// Opens plaintext ranges of a stream whose total ciphertext length is known, decrypting only
/// the segments that hold each range.
///
/// The header is verified once, at construction. Each range opened is authenticated, and the
/// segment that the ciphertext length makes last is opened as the last; segments not read are
/// not verified, so a truncation or extension is noticed only by a range that touches the end.
pub struct RangeOpener {
    cipher: SegmentCipher,
    plaintext_len: u64,
}

impl RangeOpener {
    /// Verifies `header` (the first [`HEADER_LEN`] bytes of the stream) against `blob_key` and
    /// `binding`, for a stream of `sealed_len` bytes in total.
    pub fn new(
        blob_key: &BlobKey,
        binding: StreamBinding<'_>,
        header: &[u8],
        sealed_len: u64,
    ) -> Result<RangeOpener, OpenError> {
        if header.is_empty() {
            return Err(OpenError::NotSealedStream);
        }
        let parsed = Header::parse(header)?;
        let cipher = parsed.verify(blob_key.expose(), &binding)?;
        let plaintext_len = cipher
            .layout
            .plaintext_len(sealed_len)
            .ok_or(OpenError::Truncated)?;
        if cipher.layout.segment_count(plaintext_len) > u64::from(u32::MAX) + 1 {
            return Err(OpenError::StreamTooLong);
        }
        Ok(RangeOpener {
            cipher,
            plaintext_len,
        })
    }

    /// Length of the stream's plaintext.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// The stream's layout.
    pub fn layout(&self) -> StreamLayout {
        self.cipher.layout
    }

    /// The segments holding `plaintext_range` and the ciphertext range to read for them.
    pub fn segment_span(&self, plaintext_range: Range<u64>) -> Result<SegmentSpan, OpenError> {
        self.cipher
            .layout
            .segment_span(plaintext_range, self.plaintext_len)
    }

    /// Opens `span` from `ciphertext` (exactly the bytes of `span.ciphertext_range`) and appends
    /// the plaintext of `span.plaintext_range` to `out`.
    pub fn open_span(
        &self,
        span: &SegmentSpan,
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        if span.segment_count == 0 {
            return Ok(());
        }
        let expected_len = span.ciphertext_range.end - span.ciphertext_range.start;
        if (ciphertext.len() as u64) < expected_len {
            return Err(OpenError::Truncated);
        }
        let layout = self.cipher.layout;
        let last_segment_of_stream = layout.segment_count(self.plaintext_len) - 1;
        let start = out.len();
        let mut remaining = &ciphertext[..expected_len as usize];
        for segment_index in span.first_segment..span.first_segment + span.segment_count {
            let segment_len = remaining
                .len()
                .min(layout.ciphertext_segment_len() as usize);
            let (segment, rest) = remaining.split_at(segment_len);
            self.cipher.open_segment_into(
                segment_index,
                segment_index == last_segment_of_stream,
                segment,
                out,
            )?;
            remaining = rest;
        }
        let skipped =
            span.plaintext_range.start - span.first_segment * layout.plaintext_segment_len();
        let wanted = span.plaintext_range.end - span.plaintext_range.start;
        out.drain(start..start + skipped as usize);
        out.truncate(start + wanted as usize);
        Ok(())
    }

    /// Reads and opens `plaintext_range` through `reader` (one read).
    pub fn open_range<R: CiphertextRangeReader>(
        &self,
        reader: &mut R,
        plaintext_range: Range<u64>,
    ) -> Result<SecretBytes, RangeOpenError<R::Error>> {
        let span = self.segment_span(plaintext_range)?;
        if span.segment_count == 0 {
            return Ok(SecretBytes::default());
        }
        let ciphertext = reader
            .read_ciphertext_range(span.ciphertext_range.clone())
            .map_err(RangeOpenError::Read)?;
        // Opening appends at most the ciphertext length, so the buffer never reallocates.
        let mut plaintext = SecretBytes::with_capacity(ciphertext.len());
        self.open_span(&span, &ciphertext, plaintext.as_mut_vec())?;
        Ok(plaintext)
    }
}

/// Opens `plaintext_range` of a stream of `sealed_len` bytes through `reader`: reads the header,
/// then only the segments holding the range (two reads).
pub fn open_range<R: CiphertextRangeReader>(
    blob_key: &BlobKey,
    binding: StreamBinding<'_>,
    reader: &mut R,
    sealed_len: u64,
    plaintext_range: Range<u64>,
) -> Result<SecretBytes, RangeOpenError<R::Error>> {
    let header = reader
        .read_ciphertext_range(0..HEADER_LEN as u64)
        .map_err(RangeOpenError::Read)?;
    let range_opener = RangeOpener::new(blob_key, binding, &header, sealed_len)?;
    range_opener.open_range(reader, plaintext_range)
}

/// Appends what `write` puts into `room` zeroed bytes at the end of `out`, keeping only the
/// bytes it reports written (none when it fails). The zeroing is the price of a `Vec` without
/// unsafe code; callers with their own buffer use the `*_to_slice` methods.
fn append_to<E>(
    out: &mut Vec<u8>,
    room: usize,
    write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<(), E> {
    let start = out.len();
    out.resize(start + room, 0);
    match write(&mut out[start..]) {
        Ok(written) => {
            out.truncate(start + written);
            Ok(())
        }
        Err(error) => {
            out.truncate(start);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests;
