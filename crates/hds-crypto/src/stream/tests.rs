use super::*;
use crate::keys::DataKey;

const BINDING: StreamBinding<'static> = StreamBinding {
    service: "workspace-a/dicom-a",
    blob_name: "blob-0001",
};

fn patterned_plaintext(length: usize) -> Vec<u8> {
    (0..length).map(|index| (index * 31 % 251) as u8).collect()
}

fn blob_key_from(bytes: [u8; 32]) -> BlobKey {
    BlobKey::from_data_key(DataKey::from_bytes(Zeroizing::new(bytes)))
}

/// A sealer with a fixed salt and nonce prefix, so that two ways of sealing can be compared byte
/// for byte.
fn fixed_sealer(blob_key: &BlobKey, layout: StreamLayout) -> Sealer {
    Sealer::with_parameters(
        blob_key.expose(),
        BINDING,
        layout,
        &[7; SALT_LEN],
        &[9; NONCE_PREFIX_LEN],
    )
}

/// Seals with a small segment size so that tests can afford to visit every byte.
fn seal_with_layout(
    blob_key: &BlobKey,
    segment_size: u32,
    plaintext: &[u8],
    chunk_size: usize,
) -> Vec<u8> {
    let layout = StreamLayout::new(segment_size).expect("valid segment size");
    let mut sealer = fixed_sealer(blob_key, layout);
    let mut sealed = Vec::new();
    for chunk in plaintext.chunks(chunk_size.max(1)) {
        sealer.push(chunk, &mut sealed).expect("push");
    }
    sealer.finish(&mut sealed).expect("finish");
    sealed
}

fn open_in_chunks(
    blob_key: &BlobKey,
    binding: StreamBinding<'_>,
    sealed: &[u8],
    chunk_size: usize,
) -> Result<Vec<u8>, OpenError> {
    let mut opener = Opener::new(blob_key, binding);
    let mut plaintext = Vec::new();
    for chunk in sealed.chunks(chunk_size.max(1)) {
        opener.push(chunk, &mut plaintext)?;
    }
    opener.finish(&mut plaintext)?;
    Ok(plaintext)
}

#[test]
fn round_trips_at_default_segment_size_across_boundaries() {
    let blob_key = BlobKey::generate();
    let segment = SEGMENT_SIZE as usize;
    for length in [
        0,
        1,
        segment - 1,
        segment,
        segment + 1,
        3 * segment,
        3 * segment + 5,
    ] {
        let plaintext = patterned_plaintext(length);
        let sealed = seal(&blob_key, BINDING, &plaintext).expect("seal");
        assert_eq!(
            sealed.len() as u64,
            sealed_len(length as u64),
            "length {length}"
        );
        assert_eq!(
            StreamLayout::DEFAULT.plaintext_len(sealed.len() as u64),
            Some(length as u64)
        );
        let opened = open(&blob_key, BINDING, &sealed).expect("open");
        assert_eq!(opened.as_slice(), plaintext.as_slice(), "length {length}");
    }
}

#[test]
fn ciphertext_does_not_contain_the_plaintext() {
    let blob_key = BlobKey::generate();
    let marker = b"MARKER-PATIENT-NAME^DOE";
    let plaintext = marker.repeat(5000);
    let sealed = seal(&blob_key, BINDING, &plaintext).expect("seal");
    assert!(!sealed.windows(marker.len()).any(|window| window == marker));
}

#[test]
fn chunking_of_input_does_not_change_the_output() {
    let blob_key = BlobKey::generate();
    let plaintext = patterned_plaintext(1000);
    let reference = seal_with_layout(&blob_key, 64, &plaintext, plaintext.len());
    for chunk_size in [1, 7, 63, 64, 65, 128, 999] {
        assert_eq!(
            seal_with_layout(&blob_key, 64, &plaintext, chunk_size),
            reference,
            "chunk size {chunk_size}"
        );
        let opened = open_in_chunks(&blob_key, BINDING, &reference, chunk_size).expect("open");
        assert_eq!(opened, plaintext, "open chunk size {chunk_size}");
    }
}

#[test]
fn every_stream_has_its_own_salt_and_nonce_prefix() {
    let blob_key = BlobKey::generate();
    let first = seal(&blob_key, BINDING, b"same").expect("seal");
    let second = seal(&blob_key, BINDING, b"same").expect("seal");
    assert_ne!(first[9..HEADER_PREFIX_LEN], second[9..HEADER_PREFIX_LEN]);
    assert_ne!(first[HEADER_LEN..], second[HEADER_LEN..]);
}

#[test]
fn empty_stream_is_a_header_and_one_tag() {
    let blob_key = BlobKey::generate();
    let sealed = seal(&blob_key, BINDING, b"").expect("seal");
    assert_eq!(sealed.len(), HEADER_LEN + TAG_LEN);
    assert!(open(&blob_key, BINDING, &sealed).expect("open").is_empty());
}

#[test]
fn every_flipped_byte_is_detected_with_the_right_error() {
    let blob_key = BlobKey::generate();
    let segment_size = 32u32;
    let plaintext = patterned_plaintext(100);
    let sealed = seal_with_layout(&blob_key, segment_size, &plaintext, 100);
    let segment_len = segment_size as usize + TAG_LEN;
    for index in 0..sealed.len() {
        let mut altered = sealed.clone();
        altered[index] ^= 0x01;
        let error = open(&blob_key, BINDING, &altered).expect_err("a flipped byte must not open");
        let expected = match index {
            0..4 => OpenError::NotSealedStream,
            4 => OpenError::UnsupportedVersion(VERSION_1 ^ 1),
            // The most significant byte of the segment size: 16 MiB + 32 is over the limit.
            5 => OpenError::UnsupportedSegmentSize((1 << 24) + segment_size),
            // The segment size changes to another valid size: the key check no longer matches.
            6..HEADER_LEN => OpenError::BindingMismatch,
            _ => OpenError::SegmentAuthentication {
                segment_index: ((index - HEADER_LEN) / segment_len) as u64,
            },
        };
        assert_eq!(error, expected, "byte {index}");
    }
}

#[test]
fn implausible_segment_size_is_refused_before_anything_else() {
    let blob_key = BlobKey::generate();
    let mut sealed = seal(&blob_key, BINDING, b"x").expect("seal");
    sealed[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        open(&blob_key, BINDING, &sealed).map(|_| ()),
        Err(OpenError::UnsupportedSegmentSize(u32::MAX))
    );
}

#[test]
fn truncation_at_a_segment_boundary_is_reported_as_truncated() {
    let blob_key = BlobKey::generate();
    let segment_len = 32 + TAG_LEN;
    let sealed = seal_with_layout(&blob_key, 32, &patterned_plaintext(100), 100);
    for kept_segments in 1..=3 {
        let truncated = &sealed[..HEADER_LEN + kept_segments * segment_len];
        assert_eq!(
            open(&blob_key, BINDING, truncated).map(|_| ()),
            Err(OpenError::Truncated),
            "{kept_segments} segments kept"
        );
    }
    // No segment at all, or a partial header.
    assert_eq!(
        open(&blob_key, BINDING, &sealed[..HEADER_LEN]).map(|_| ()),
        Err(OpenError::Truncated)
    );
    assert_eq!(
        open(&blob_key, BINDING, &sealed[..10]).map(|_| ()),
        Err(OpenError::Truncated)
    );
    assert_eq!(
        open(&blob_key, BINDING, &[]).map(|_| ()),
        Err(OpenError::NotSealedStream)
    );
}

#[test]
fn truncation_at_any_length_never_opens() {
    let blob_key = BlobKey::generate();
    let sealed = seal_with_layout(&blob_key, 32, &patterned_plaintext(100), 100);
    for length in 0..sealed.len() {
        assert!(
            open(&blob_key, BINDING, &sealed[..length]).is_err(),
            "length {length} opened"
        );
    }
}

#[test]
fn data_after_a_full_last_segment_is_reported_as_trailing() {
    let blob_key = BlobKey::generate();
    // 96 bytes: three full segments, the last flagged.
    let sealed = seal_with_layout(&blob_key, 32, &patterned_plaintext(96), 96);
    for extension in [&b"x"[..], &[0u8; 16], &[0u8; 48], &sealed[HEADER_LEN..]] {
        let mut extended = sealed.clone();
        extended.extend_from_slice(extension);
        assert_eq!(
            open(&blob_key, BINDING, &extended).map(|_| ()),
            Err(OpenError::TrailingData)
        );
    }
}

#[test]
fn data_after_a_short_last_segment_never_opens() {
    let blob_key = BlobKey::generate();
    let sealed = seal_with_layout(&blob_key, 32, &patterned_plaintext(100), 100);
    for extra in 1..80 {
        let mut extended = sealed.clone();
        extended.extend(std::iter::repeat_n(0u8, extra));
        assert!(
            open(&blob_key, BINDING, &extended).is_err(),
            "{extra} extra bytes opened"
        );
    }
}

#[test]
fn reordered_segments_are_reported_as_out_of_order() {
    let blob_key = BlobKey::generate();
    let segment_len = 32 + TAG_LEN;
    let sealed = seal_with_layout(&blob_key, 32, &patterned_plaintext(32 * 4 + 3), 1000);
    let segment = |index: usize| {
        &sealed[HEADER_LEN + index * segment_len..HEADER_LEN + (index + 1) * segment_len]
    };
    let mut reordered = sealed[..HEADER_LEN].to_vec();
    for index in [0, 2, 1, 3] {
        reordered.extend_from_slice(segment(index));
    }
    reordered.extend_from_slice(&sealed[HEADER_LEN + 4 * segment_len..]);
    assert_eq!(reordered.len(), sealed.len());
    assert_eq!(
        open(&blob_key, BINDING, &reordered).map(|_| ()),
        Err(OpenError::SegmentOutOfOrder {
            position: 1,
            sealed_at: 2
        })
    );
    // A segment duplicated over another.
    let mut duplicated = sealed.clone();
    duplicated[HEADER_LEN + 3 * segment_len..HEADER_LEN + 4 * segment_len]
        .copy_from_slice(segment(0));
    assert_eq!(
        open(&blob_key, BINDING, &duplicated).map(|_| ()),
        Err(OpenError::SegmentOutOfOrder {
            position: 3,
            sealed_at: 0
        })
    );
}

#[test]
fn a_blob_moved_under_another_name_or_key_does_not_open() {
    let blob_key = BlobKey::generate();
    let sealed = seal(&blob_key, BINDING, b"instance bytes").expect("seal");
    let other_name = StreamBinding {
        blob_name: "blob-0002",
        ..BINDING
    };
    let other_service = StreamBinding {
        service: "workspace-a/dicom-b",
        ..BINDING
    };
    // Length prefixes keep these distinct even though the concatenations are equal.
    let shifted = StreamBinding {
        service: "workspace-a/dicom-ablob",
        blob_name: "-0001",
    };
    for binding in [other_name, other_service, shifted] {
        assert_eq!(
            open(&blob_key, binding, &sealed).map(|_| ()),
            Err(OpenError::BindingMismatch)
        );
    }
    assert_eq!(
        open(&BlobKey::generate(), BINDING, &sealed).map(|_| ()),
        Err(OpenError::BindingMismatch)
    );
}

#[test]
fn opener_refuses_input_after_an_error() {
    let blob_key = BlobKey::generate();
    let mut sealed = seal(&blob_key, BINDING, &patterned_plaintext(200_000)).expect("seal");
    sealed[HEADER_LEN + 5] ^= 1;
    let mut opener = Opener::new(&blob_key, BINDING);
    let mut plaintext = Vec::new();
    assert_eq!(
        opener.push(&sealed, &mut plaintext),
        Err(OpenError::SegmentAuthentication { segment_index: 0 })
    );
    assert!(plaintext.is_empty());
    assert_eq!(
        opener.push(&[], &mut plaintext),
        Err(OpenError::AlreadyFailed)
    );
}

#[test]
fn opener_releases_plaintext_segment_by_segment() {
    let blob_key = BlobKey::generate();
    let plaintext = patterned_plaintext(3 * SEGMENT_SIZE as usize + 10);
    let sealed = seal(&blob_key, BINDING, &plaintext).expect("seal");
    let mut opener = Opener::new(&blob_key, BINDING);
    let mut opened = Vec::new();
    // Header plus two segments plus one byte: two segments are known not to be last.
    let two_segments = HEADER_LEN + 2 * (SEGMENT_SIZE as usize + TAG_LEN) + 1;
    opener
        .push(&sealed[..two_segments], &mut opened)
        .expect("push");
    assert_eq!(opened.as_slice(), &plaintext[..2 * SEGMENT_SIZE as usize]);
    opener
        .push(&sealed[two_segments..], &mut opened)
        .expect("push");
    opener.finish(&mut opened).expect("finish");
    assert_eq!(opened, plaintext);
}

#[test]
fn sealing_writer_round_trips() {
    let blob_key = BlobKey::generate();
    let plaintext = patterned_plaintext(150_000);
    let mut writer = SealingWriter::new(&blob_key, BINDING, Vec::new());
    for chunk in plaintext.chunks(10_000) {
        writer.write_all(chunk).expect("write");
    }
    let sealed = writer.finish().expect("finish");
    assert_eq!(sealed.len() as u64, sealed_len(plaintext.len() as u64));
    assert_eq!(
        open(&blob_key, BINDING, &sealed).expect("open").as_slice(),
        plaintext.as_slice()
    );
}

#[test]
fn layout_maps_plaintext_ranges_to_segments() {
    let layout = StreamLayout::DEFAULT;
    let segment = u64::from(SEGMENT_SIZE);
    let ciphertext_segment = segment + TAG_LEN as u64;
    let header = HEADER_LEN as u64;
    let plaintext_len = 3 * segment + 100;
    assert_eq!(layout.segment_count(plaintext_len), 4);
    assert_eq!(layout.segment_count(0), 1);
    assert_eq!(layout.segment_count(segment), 1);
    assert_eq!(layout.segment_count(segment + 1), 2);

    let span = layout.segment_span(10..20, plaintext_len).expect("span");
    assert_eq!((span.first_segment, span.segment_count), (0, 1));
    assert_eq!(span.ciphertext_range, header..header + ciphertext_segment);

    let span = layout
        .segment_span(segment - 1..segment + 1, plaintext_len)
        .expect("span");
    assert_eq!((span.first_segment, span.segment_count), (0, 2));
    assert_eq!(
        span.ciphertext_range,
        header..header + 2 * ciphertext_segment
    );

    let span = layout
        .segment_span(3 * segment..plaintext_len, plaintext_len)
        .expect("span");
    assert_eq!((span.first_segment, span.segment_count), (3, 1));
    assert_eq!(
        span.ciphertext_range,
        header + 3 * ciphertext_segment..layout.sealed_len(plaintext_len)
    );

    assert_eq!(
        layout.segment_span(0..plaintext_len + 1, plaintext_len),
        Err(OpenError::RangeOutOfBounds)
    );
    let empty = layout
        .segment_span(5..5, plaintext_len)
        .expect("empty span");
    assert_eq!(empty.segment_count, 0);

    assert_eq!(layout.sealed_len(u64::MAX), u64::MAX);
    assert_eq!(layout.plaintext_len(header + TAG_LEN as u64 - 1), None);
    assert_eq!(layout.plaintext_len(header + ciphertext_segment + 5), None);
    assert_eq!(
        layout.plaintext_len(header + ciphertext_segment + 16),
        Some(segment)
    );
}

/// Records the ranges read, to prove only the needed segments are touched.
struct RecordingReader<'a> {
    sealed: &'a [u8],
    reads: Vec<Range<u64>>,
}

impl CiphertextRangeReader for RecordingReader<'_> {
    type Error = std::convert::Infallible;

    fn read_ciphertext_range(&mut self, range: Range<u64>) -> Result<Vec<u8>, Self::Error> {
        self.reads.push(range.clone());
        let mut slice = self.sealed;
        slice.read_ciphertext_range(range)
    }
}

#[test]
fn range_opener_returns_exact_ranges_reading_only_their_segments() {
    let blob_key = BlobKey::generate();
    let segment = SEGMENT_SIZE as u64;
    let plaintext = patterned_plaintext(4 * segment as usize + 777);
    let sealed = seal(&blob_key, BINDING, &plaintext).expect("seal");
    let total = plaintext.len() as u64;
    let ranges = [
        0..1,
        0..total,
        5..segment,
        segment - 3..segment + 3,
        2 * segment..3 * segment,
        total - 1..total,
        4 * segment..total,
        7..7,
    ];
    for range in ranges {
        let mut reader = RecordingReader {
            sealed: &sealed,
            reads: Vec::new(),
        };
        let opened = open_range(
            &blob_key,
            BINDING,
            &mut reader,
            sealed.len() as u64,
            range.clone(),
        )
        .expect("open range");
        assert_eq!(
            opened.as_slice(),
            &plaintext[range.start as usize..range.end as usize],
            "range {range:?}"
        );
        let expected_span = StreamLayout::DEFAULT
            .segment_span(range.clone(), total)
            .expect("span");
        let segment_reads: Vec<_> = reader.reads.iter().skip(1).cloned().collect();
        if expected_span.segment_count == 0 {
            assert!(segment_reads.is_empty());
        } else {
            assert_eq!(
                segment_reads,
                vec![expected_span.ciphertext_range.clone()],
                "range {range:?}"
            );
            let read_len =
                expected_span.ciphertext_range.end - expected_span.ciphertext_range.start;
            assert!(read_len <= expected_span.segment_count * (segment + TAG_LEN as u64));
        }
    }
}

#[test]
fn range_opener_detects_damage_only_where_it_reads() {
    let blob_key = BlobKey::generate();
    let segment = SEGMENT_SIZE as u64;
    let plaintext = patterned_plaintext(3 * segment as usize);
    let mut sealed = seal(&blob_key, BINDING, &plaintext).expect("seal");
    let segment_one_offset = HEADER_LEN + SEGMENT_SIZE as usize + TAG_LEN + 10;
    sealed[segment_one_offset] ^= 0x80;
    let range_opener = RangeOpener::new(
        &blob_key,
        BINDING,
        &sealed[..HEADER_LEN],
        sealed.len() as u64,
    )
    .expect("header");
    let mut reader: &[u8] = &sealed;
    assert_eq!(
        range_opener
            .open_range(&mut reader, 0..100)
            .expect("segment 0")
            .as_slice(),
        &plaintext[..100]
    );
    assert!(matches!(
        range_opener.open_range(&mut reader, segment + 5..segment + 6),
        Err(RangeOpenError::Open(OpenError::SegmentAuthentication {
            segment_index: 1
        }))
    ));
}

#[test]
fn range_opener_detects_truncation_and_extension_at_the_end() {
    let blob_key = BlobKey::generate();
    let segment = SEGMENT_SIZE as usize;
    let plaintext = patterned_plaintext(3 * segment);
    let sealed = seal(&blob_key, BINDING, &plaintext).expect("seal");

    let truncated = &sealed[..HEADER_LEN + 2 * (segment + TAG_LEN)];
    let mut reader: &[u8] = truncated;
    let result = open_range(
        &blob_key,
        BINDING,
        &mut reader,
        truncated.len() as u64,
        0..2 * segment as u64,
    );
    assert!(matches!(
        result,
        Err(RangeOpenError::Open(OpenError::Truncated))
    ));

    let mut extended = sealed.clone();
    extended.extend_from_slice(&sealed[HEADER_LEN..HEADER_LEN + segment + TAG_LEN]);
    let mut reader: &[u8] = &extended;
    let result = open_range(
        &blob_key,
        BINDING,
        &mut reader,
        extended.len() as u64,
        2 * segment as u64..3 * segment as u64,
    );
    assert!(matches!(
        result,
        Err(RangeOpenError::Open(OpenError::TrailingData))
    ));

    let mut reader: &[u8] = &sealed;
    let result = open_range(
        &blob_key,
        BINDING,
        &mut reader,
        sealed.len() as u64 + 3,
        0..1,
    );
    assert!(matches!(
        result,
        Err(RangeOpenError::Open(OpenError::Truncated))
    ));
}

#[test]
fn range_opener_checks_the_binding() {
    let blob_key = BlobKey::generate();
    let sealed = seal(&blob_key, BINDING, b"frame data").expect("seal");
    let other = StreamBinding {
        blob_name: "blob-9999",
        ..BINDING
    };
    assert!(matches!(
        RangeOpener::new(&blob_key, other, &sealed[..HEADER_LEN], sealed.len() as u64),
        Err(OpenError::BindingMismatch)
    ));
}

/// Reads `field = value` lines from the test-vector section of the format document.
fn documented_vector() -> std::collections::HashMap<String, String> {
    let document = include_str!("../../../../docs/sealed-format.md");
    let section = document
        .split("## Test vector")
        .nth(1)
        .expect("test vector section");
    section
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .map(|(field, value)| (field.trim().to_owned(), value.to_owned()))
        .collect()
}

fn hex_decode(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&text[index..index + 2], 16).expect("hex digit"))
        .collect()
}

#[test]
fn documented_test_vector_matches() {
    let vector = documented_vector();
    let field = |name: &str| {
        vector
            .get(name)
            .unwrap_or_else(|| panic!("field {name} missing"))
            .clone()
    };
    let blob_key: [u8; 32] = hex_decode(&field("blob key"))
        .try_into()
        .expect("32-byte key");
    let salt: [u8; SALT_LEN] = hex_decode(&field("salt")).try_into().expect("salt");
    let nonce_prefix: [u8; NONCE_PREFIX_LEN] = hex_decode(&field("nonce prefix"))
        .try_into()
        .expect("prefix");
    let segment_size: u32 = field("segment size").parse().expect("segment size");
    let plaintext = field("plaintext");
    assert_eq!(plaintext.len(), 70);
    let service = field("service");
    let blob_name = field("blob name");
    let binding = StreamBinding {
        service: &service,
        blob_name: &blob_name,
    };

    let mut expected = hex_decode(&field("header"));
    for index in 0..3 {
        expected.extend(hex_decode(&field(&format!("segment {index}"))));
    }
    assert_eq!(expected.len(), 182);

    let layout = StreamLayout::new(segment_size).expect("layout");
    let mut sealer = Sealer::with_parameters(&blob_key, binding, layout, &salt, &nonce_prefix);
    let mut sealed = Vec::new();
    sealer
        .push(plaintext.as_bytes(), &mut sealed)
        .expect("push");
    sealer.finish(&mut sealed).expect("finish");
    assert_eq!(sealed, expected);
    assert_eq!(
        &sealed[HEADER_PREFIX_LEN..HEADER_LEN],
        hex_decode(&field("key check")).as_slice()
    );

    let opened = open(&blob_key_from(blob_key), binding, &expected).expect("open the vector");
    assert_eq!(opened.as_slice(), plaintext.as_bytes());
}

#[test]
fn stream_types_can_be_held_across_await_points_on_any_thread() {
    fn assert_send_and_sync<T: Send + Sync>() {}
    assert_send_and_sync::<Sealer>();
    assert_send_and_sync::<Opener>();
    assert_send_and_sync::<RangeOpener>();
}

/// Seals `plaintext` with [`SegmentSealer`] the way a caller reading into segment buffers would.
fn seal_in_place_segments(blob_key: &BlobKey, plaintext: &[u8]) -> Vec<u8> {
    let mut segment_sealer = SegmentSealer::new(blob_key, BINDING);
    let segment_size = segment_sealer.segment_size();
    let mut sealed = segment_sealer.header().to_vec();
    let segment_count = StreamLayout::DEFAULT.segment_count(plaintext.len() as u64) as usize;
    for index in 0..segment_count {
        let end = ((index + 1) * segment_size).min(plaintext.len());
        let mut buffer = plaintext[index * segment_size..end].to_vec();
        buffer.resize(buffer.len() + TAG_LEN, 0);
        segment_sealer
            .seal_segment_in_place(&mut buffer, index + 1 == segment_count)
            .expect("seal segment");
        sealed.extend_from_slice(&buffer);
    }
    sealed
}

#[test]
fn in_place_segments_produce_a_stream_the_opener_reads() {
    let blob_key = BlobKey::generate();
    let segment = SEGMENT_SIZE as usize;
    for length in [0, 1, segment, 2 * segment + 3] {
        let plaintext = patterned_plaintext(length);
        let sealed = seal_in_place_segments(&blob_key, &plaintext);
        assert_eq!(sealed.len() as u64, sealed_len(length as u64));
        assert_eq!(
            open(&blob_key, BINDING, &sealed).expect("open").as_slice(),
            plaintext.as_slice()
        );
    }
}

#[test]
fn segment_sealer_checks_lengths_and_the_end() {
    let blob_key = BlobKey::generate();
    let mut segment_sealer = SegmentSealer::new(&blob_key, BINDING);
    let mut short = vec![0u8; 100 + TAG_LEN];
    assert_eq!(
        segment_sealer.seal_segment_in_place(&mut short, false),
        Err(SealError::SegmentLength)
    );
    let mut too_long = vec![0u8; SEGMENT_SIZE as usize + 1 + TAG_LEN];
    assert_eq!(
        segment_sealer.seal_segment_in_place(&mut too_long, true),
        Err(SealError::SegmentLength)
    );
    assert_eq!(
        segment_sealer.seal_segment_in_place(&mut [0u8; 3], true),
        Err(SealError::SegmentLength)
    );
    segment_sealer
        .seal_segment_in_place(&mut short, true)
        .expect("last segment");
    assert_eq!(
        segment_sealer.seal_segment_in_place(&mut short, true),
        Err(SealError::AlreadyFinished)
    );
}

#[test]
fn segment_opener_opens_in_place_and_rejects_damage() {
    let blob_key = BlobKey::generate();
    let segment_len = SEGMENT_SIZE as usize + TAG_LEN;
    let plaintext = patterned_plaintext(2 * SEGMENT_SIZE as usize + 10);
    let sealed = seal(&blob_key, BINDING, &plaintext).expect("seal");
    let segments: Vec<&[u8]> = sealed[HEADER_LEN..].chunks(segment_len).collect();
    assert_eq!(segments.len(), 3);

    let mut segment_opener =
        SegmentOpener::new(&blob_key, BINDING, &sealed[..HEADER_LEN]).expect("header");
    let mut opened = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        let mut buffer = segment.to_vec();
        let plaintext_part = segment_opener
            .open_segment_in_place(&mut buffer, index == 2)
            .expect("open segment");
        opened.extend_from_slice(plaintext_part);
    }
    assert_eq!(opened, plaintext);
    assert_eq!(
        segment_opener
            .open_segment_in_place(&mut segments[0].to_vec(), true)
            .map(|_| ()),
        Err(OpenError::TrailingData)
    );

    let mut segment_opener =
        SegmentOpener::new(&blob_key, BINDING, &sealed[..HEADER_LEN]).expect("header");
    let mut altered = segments[0].to_vec();
    altered[17] ^= 1;
    assert_eq!(
        segment_opener
            .open_segment_in_place(&mut altered, false)
            .map(|_| ()),
        Err(OpenError::SegmentAuthentication { segment_index: 0 })
    );

    // Segment 1 presented first, and segment 0 presented as the last: both fail.
    let mut segment_opener =
        SegmentOpener::new(&blob_key, BINDING, &sealed[..HEADER_LEN]).expect("header");
    assert!(
        segment_opener
            .open_segment_in_place(&mut segments[1].to_vec(), false)
            .is_err()
    );
    let mut segment_opener =
        SegmentOpener::new(&blob_key, BINDING, &sealed[..HEADER_LEN]).expect("header");
    assert!(
        segment_opener
            .open_segment_in_place(&mut segments[0].to_vec(), true)
            .is_err()
    );

    let other = StreamBinding {
        blob_name: "moved",
        ..BINDING
    };
    assert!(matches!(
        SegmentOpener::new(&blob_key, other, &sealed[..HEADER_LEN]),
        Err(OpenError::BindingMismatch)
    ));
}

/// Seals through the slice methods with the parameters of [`seal_with_layout`], checking that
/// each call writes exactly what the sealer predicted.
fn seal_to_slices_with_layout(
    blob_key: &BlobKey,
    segment_size: u32,
    plaintext: &[u8],
    chunk_size: usize,
) -> Vec<u8> {
    let layout = StreamLayout::new(segment_size).expect("valid segment size");
    let mut sealer = fixed_sealer(blob_key, layout);
    let mut sealed = vec![0u8; layout.sealed_len(plaintext.len() as u64) as usize];
    let mut written = 0;
    for chunk in plaintext.chunks(chunk_size.max(1)) {
        let predicted = sealer.push_output_len(chunk.len());
        let pushed = sealer
            .push_to_slice(chunk, &mut sealed[written..])
            .expect("push");
        assert_eq!(pushed, predicted, "chunk size {chunk_size}");
        written += pushed;
    }
    let predicted = sealer.finish_output_len();
    let finished = sealer
        .finish_to_slice(&mut sealed[written..])
        .expect("finish");
    assert_eq!(finished, predicted, "chunk size {chunk_size}");
    assert_eq!(written + finished, sealed.len(), "chunk size {chunk_size}");
    sealed
}

/// Opens through the slice methods, in chunks, into one buffer sized by the bounds.
fn open_to_slices_in_chunks(
    blob_key: &BlobKey,
    sealed: &[u8],
    chunk_size: usize,
) -> Result<Vec<u8>, OpenError> {
    let mut opener = Opener::new(blob_key, BINDING);
    let mut plaintext = vec![0u8; sealed.len()];
    let mut written = 0;
    for chunk in sealed.chunks(chunk_size.max(1)) {
        let bound = opener.max_push_output_len(chunk.len());
        let pushed = opener.push_to_slice(chunk, &mut plaintext[written..])?;
        assert!(pushed <= bound, "pushed {pushed} over the bound {bound}");
        written += pushed;
    }
    let bound = opener.max_finish_output_len();
    let finished = opener.finish_to_slice(&mut plaintext[written..])?;
    assert!(
        finished <= bound,
        "finished {finished} over the bound {bound}"
    );
    plaintext.truncate(written + finished);
    Ok(plaintext)
}

#[test]
fn slice_methods_write_the_same_stream_as_vector_methods() {
    let blob_key = BlobKey::generate();
    for length in [0, 1, 63, 64, 65, 128, 129, 1000] {
        let plaintext = patterned_plaintext(length);
        let reference = seal_with_layout(&blob_key, 64, &plaintext, plaintext.len());
        for chunk_size in [1, 7, 63, 64, 65, 128, 999, 4096] {
            assert_eq!(
                seal_to_slices_with_layout(&blob_key, 64, &plaintext, chunk_size),
                reference,
                "length {length}, chunk size {chunk_size}"
            );
            let opened = open_to_slices_in_chunks(&blob_key, &reference, chunk_size).expect("open");
            assert_eq!(
                opened, plaintext,
                "length {length}, chunk size {chunk_size}"
            );
        }
    }
}

#[test]
fn slice_methods_refuse_short_buffers_without_consuming_input() {
    let blob_key = BlobKey::generate();
    let plaintext = patterned_plaintext(3 * SEGMENT_SIZE as usize + 10);
    let reference = seal(&blob_key, BINDING, &plaintext).expect("seal");

    let mut sealer = Sealer::new(&blob_key, BINDING);
    let needed = sealer.push_output_len(plaintext.len());
    assert_eq!(needed, HEADER_LEN + 3 * (SEGMENT_SIZE as usize + TAG_LEN));
    let mut sealed = vec![0u8; reference.len()];
    assert_eq!(
        sealer.push_to_slice(&plaintext, &mut sealed[..needed - 1]),
        Err(SealError::OutputTooSmall { needed })
    );
    let written = sealer.push_to_slice(&plaintext, &mut sealed).expect("push");
    assert_eq!(written, needed);
    let finished = sealer
        .finish_to_slice(&mut sealed[written..])
        .expect("finish");
    assert_eq!(written + finished, reference.len());
    assert_eq!(
        open(&blob_key, BINDING, &sealed).expect("open").as_slice(),
        plaintext.as_slice()
    );

    let mut opener = Opener::new(&blob_key, BINDING);
    let needed = opener.max_push_output_len(reference.len());
    assert_eq!(needed, reference.len() - HEADER_LEN);
    let mut opened = vec![0u8; needed];
    assert_eq!(
        opener.push_to_slice(&reference, &mut opened[..needed - 1]),
        Err(OpenError::OutputTooSmall { needed })
    );
    let written = opener.push_to_slice(&reference, &mut opened).expect("push");
    assert_eq!(written, 3 * SEGMENT_SIZE as usize);
    let finished = opener
        .finish_to_slice(&mut opened[written..])
        .expect("finish");
    assert_eq!(&opened[..written + finished], plaintext.as_slice());
}

#[test]
fn slice_opener_reports_the_same_errors_and_then_refuses_input() {
    let blob_key = BlobKey::generate();
    let plaintext = patterned_plaintext(1000);
    let sealed = seal_with_layout(&blob_key, 64, &plaintext, plaintext.len());
    let segment_len = 64 + TAG_LEN;

    let mut damaged = sealed.clone();
    damaged[HEADER_LEN + 2 * segment_len + 3] ^= 1;
    let mut swapped = sealed.clone();
    let (first, second) = (HEADER_LEN + segment_len, HEADER_LEN + 2 * segment_len);
    let second_segment = sealed[second..second + segment_len].to_vec();
    swapped.copy_within(first..first + segment_len, second);
    swapped[first..first + segment_len].copy_from_slice(&second_segment);
    let truncated = sealed[..HEADER_LEN + 3 * segment_len].to_vec();
    let mut extended = sealed.clone();
    extended.extend_from_slice(&[0; 20]);

    for (name, stream) in [
        ("damaged", damaged),
        ("swapped", swapped),
        ("truncated", truncated),
        ("extended", extended),
    ] {
        for chunk_size in [1, 80, 500, 4096] {
            assert_eq!(
                open_to_slices_in_chunks(&blob_key, &stream, chunk_size),
                open_in_chunks(&blob_key, BINDING, &stream, chunk_size),
                "{name}, chunk size {chunk_size}"
            );
            assert!(
                open_to_slices_in_chunks(&blob_key, &stream, chunk_size).is_err(),
                "{name}, chunk size {chunk_size}"
            );
        }
    }

    let mut damaged = sealed.clone();
    damaged[HEADER_LEN + 3] ^= 1;
    let mut opener = Opener::new(&blob_key, BINDING);
    let mut out = vec![0u8; damaged.len()];
    assert_eq!(
        opener.push_to_slice(&damaged, &mut out),
        Err(OpenError::SegmentAuthentication { segment_index: 0 })
    );
    assert!(
        out.iter().all(|&byte| byte == 0),
        "unauthenticated bytes left"
    );
    assert_eq!(
        opener.push_to_slice(&[], &mut out),
        Err(OpenError::AlreadyFailed)
    );
}

#[test]
fn vector_opener_keeps_the_segments_authenticated_before_a_failure() {
    let blob_key = BlobKey::generate();
    let plaintext = patterned_plaintext(1000);
    let mut sealed = seal_with_layout(&blob_key, 64, &plaintext, plaintext.len());
    sealed[HEADER_LEN + 2 * (64 + TAG_LEN) + 3] ^= 1;
    let mut opener = Opener::new(&blob_key, BINDING);
    let mut opened = b"earlier".to_vec();
    assert_eq!(
        opener.push(&sealed, &mut opened),
        Err(OpenError::SegmentAuthentication { segment_index: 2 })
    );
    assert_eq!(&opened[..7], b"earlier");
    assert_eq!(&opened[7..], &plaintext[..128]);
}
