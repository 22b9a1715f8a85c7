//! Sealed-stream throughput next to one-shot AES-256-GCM over the same sizes, in one run.
//!
//! `cargo bench -p hds-crypto --bench seal -- --warm-up-time 1 --measurement-time 3`
//!
//! Baselines: one-shot AES-256-GCM in place (the cheapest possible) and out of place (the same
//! job as `Sealer::push`, which leaves its input intact). Sealed variants: the streaming
//! `Sealer`/`Opener` appending to an output vector (`push`), the same writing into a reused
//! output slice (`push_to_slice`, no zero-fill of the output), and the in-place
//! `SegmentSealer`/`SegmentOpener` over segment-sized buffers. Every output buffer is
//! allocated once outside the timed loop, for the raw baselines as for the sealed variants.

use std::hint::black_box;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hds_crypto::keys::BlobKey;
use hds_crypto::stream::{
    HEADER_LEN, Opener, Sealer, SegmentOpener, SegmentSealer, StreamBinding, TAG_LEN, sealed_len,
};

const BINDING: StreamBinding<'static> = StreamBinding {
    service: "workspace-bench/dicom-bench",
    blob_name: "blob-bench",
};

const SIZES: [(&str, usize); 3] = [
    ("64KiB", 64 * 1024),
    ("1MiB", 1024 * 1024),
    ("64MiB", 64 * 1024 * 1024),
];

const NONCE: [u8; 12] = [7; 12];

fn raw_key() -> LessSafeKey {
    let key = UnboundKey::new(&AES_256_GCM, &[0x42; 32]).expect("valid key length");
    LessSafeKey::new(key)
}

/// Seals `plaintext` into a buffer laid out as the sealed stream, segment by segment in place.
fn seal_segments_in_place(segment_sealer: &mut SegmentSealer, layout_buffer: &mut [u8]) {
    layout_buffer[..HEADER_LEN].copy_from_slice(segment_sealer.header());
    let sealed_segment_len = segment_sealer.segment_size() + TAG_LEN;
    let mut segments = layout_buffer[HEADER_LEN..]
        .chunks_mut(sealed_segment_len)
        .peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        segment_sealer
            .seal_segment_in_place(segment, is_last)
            .expect("seal segment");
    }
}

fn bench_sizes(criterion: &mut Criterion) {
    for (label, size) in SIZES {
        let mut group = criterion.benchmark_group(format!("seal-{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        if size >= 64 * 1024 * 1024 {
            group.sample_size(10);
        }
        let plaintext: Vec<u8> = (0..size).map(|index| index as u8).collect();
        let raw = raw_key();
        let blob_key = BlobKey::generate();

        group.bench_function(
            BenchmarkId::new("raw_aes_gcm_seal_in_place", label),
            |bencher| {
                let mut buffer = plaintext.clone();
                bencher.iter(|| {
                    let tag = raw
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(NONCE),
                            Aad::empty(),
                            &mut buffer,
                        )
                        .expect("seal");
                    black_box(tag.as_ref()[0]);
                });
            },
        );

        group.bench_function(
            BenchmarkId::new("raw_aes_gcm_seal_out_of_place", label),
            |bencher| {
                let mut ciphertext = vec![0u8; size];
                let mut tag = [0u8; TAG_LEN];
                bencher.iter(|| {
                    raw.seal_out_of_place_scatter(
                        Nonce::assume_unique_for_key(NONCE),
                        Aad::empty(),
                        &plaintext,
                        &mut ciphertext,
                        &[],
                        &mut tag,
                    )
                    .expect("seal");
                    black_box(tag[0]);
                });
            },
        );

        group.bench_function(BenchmarkId::new("sealed_stream_seal", label), |bencher| {
            let mut sealed = Vec::with_capacity(sealed_len(size as u64) as usize);
            bencher.iter(|| {
                sealed.clear();
                let mut sealer = Sealer::new(&blob_key, BINDING);
                sealer.push(&plaintext, &mut sealed).expect("push");
                sealer.finish(&mut sealed).expect("finish");
                black_box(sealed.len());
            });
        });

        group.bench_function(
            BenchmarkId::new("sealed_stream_seal_to_slice", label),
            |bencher| {
                let mut sealed = vec![0u8; sealed_len(size as u64) as usize];
                bencher.iter(|| {
                    let mut sealer = Sealer::new(&blob_key, BINDING);
                    let written = sealer.push_to_slice(&plaintext, &mut sealed).expect("push");
                    let finished = sealer
                        .finish_to_slice(&mut sealed[written..])
                        .expect("finish");
                    black_box(written + finished);
                });
            },
        );

        group.bench_function(
            BenchmarkId::new("sealed_segments_seal_in_place", label),
            |bencher| {
                let mut layout_buffer = vec![0u8; sealed_len(size as u64) as usize];
                bencher.iter(|| {
                    let mut segment_sealer = SegmentSealer::new(&blob_key, BINDING);
                    seal_segments_in_place(&mut segment_sealer, &mut layout_buffer);
                    black_box(layout_buffer[HEADER_LEN]);
                });
            },
        );

        let mut raw_ciphertext = plaintext.clone();
        let raw_tag = raw
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(NONCE),
                Aad::empty(),
                &mut raw_ciphertext,
            )
            .expect("seal");
        group.bench_function(
            BenchmarkId::new("raw_aes_gcm_open_in_place", label),
            |bencher| {
                let mut with_tag = raw_ciphertext.clone();
                with_tag.extend_from_slice(raw_tag.as_ref());
                // The copy that in-place opening consumes is made outside the timed part.
                bencher.iter_batched_ref(
                    || with_tag.clone(),
                    |buffer| {
                        let opened = raw
                            .open_in_place(
                                Nonce::assume_unique_for_key(NONCE),
                                Aad::empty(),
                                buffer,
                            )
                            .expect("open");
                        black_box(opened.len());
                    },
                    BatchSize::LargeInput,
                );
            },
        );

        group.bench_function(
            BenchmarkId::new("raw_aes_gcm_open_out_of_place", label),
            |bencher| {
                let mut opened = vec![0u8; size];
                bencher.iter(|| {
                    raw.open_separate_gather(
                        Nonce::assume_unique_for_key(NONCE),
                        Aad::empty(),
                        &raw_ciphertext,
                        raw_tag.as_ref(),
                        &mut opened,
                    )
                    .expect("open");
                    black_box(opened[0]);
                });
            },
        );

        let mut sealed = Vec::new();
        let mut sealer = Sealer::new(&blob_key, BINDING);
        sealer.push(&plaintext, &mut sealed).expect("push");
        sealer.finish(&mut sealed).expect("finish");
        group.bench_function(BenchmarkId::new("sealed_stream_open", label), |bencher| {
            let mut opened = Vec::with_capacity(sealed.len());
            bencher.iter(|| {
                opened.clear();
                let mut opener = Opener::new(&blob_key, BINDING);
                opener.push(&sealed, &mut opened).expect("push");
                opener.finish(&mut opened).expect("finish");
                black_box(opened.len());
            });
        });

        group.bench_function(
            BenchmarkId::new("sealed_stream_open_to_slice", label),
            |bencher| {
                let mut opened = vec![0u8; sealed.len()];
                bencher.iter(|| {
                    let mut opener = Opener::new(&blob_key, BINDING);
                    let written = opener.push_to_slice(&sealed, &mut opened).expect("push");
                    let finished = opener
                        .finish_to_slice(&mut opened[written..])
                        .expect("finish");
                    black_box(written + finished);
                });
            },
        );

        group.bench_function(
            BenchmarkId::new("sealed_segments_open_in_place", label),
            |bencher| {
                bencher.iter_batched_ref(
                    || sealed.clone(),
                    |buffer| {
                        let (header, body) = buffer.split_at_mut(HEADER_LEN);
                        let mut segment_opener =
                            SegmentOpener::new(&blob_key, BINDING, header).expect("header");
                        let mut segments = body
                            .chunks_mut(segment_opener.sealed_segment_len())
                            .peekable();
                        while let Some(segment) = segments.next() {
                            let is_last = segments.peek().is_none();
                            let opened = segment_opener
                                .open_segment_in_place(segment, is_last)
                                .expect("open");
                            black_box(opened.len());
                        }
                    },
                    BatchSize::LargeInput,
                );
            },
        );
        group.finish();
    }
}

criterion_group!(benches, bench_sizes);
criterion_main!(benches);
