//! Rendering real files (pydicom's test data, `HDS_PYDICOM_TESTDATA`) and refusing hostile ones.

use std::path::PathBuf;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_object::open_file;
use hds_pixels::{ImageFormat, PixelError, RenderOptions, Viewport, render, thumbnail};

fn test_file(name: &str) -> Vec<u8> {
    let directory = std::env::var("HDS_PYDICOM_TESTDATA")
        .expect("HDS_PYDICOM_TESTDATA names pydicom's test_files directory (scripts/test sets it)");
    std::fs::read(PathBuf::from(directory).join(name)).expect("test file")
}

/// The file with one element replaced, written back as Part 10 bytes.
fn with_element(name: &str, element: DataElement<dicom_object::InMemDicomObject>) -> Vec<u8> {
    let directory = std::env::var("HDS_PYDICOM_TESTDATA").expect("HDS_PYDICOM_TESTDATA");
    let mut object = open_file(PathBuf::from(directory).join(name)).expect("open");
    object.put(element);
    let mut bytes = Vec::new();
    object.write_all(&mut bytes).expect("write");
    bytes
}

fn png() -> RenderOptions {
    RenderOptions {
        format: ImageFormat::Png,
        ..RenderOptions::default()
    }
}

#[test]
fn a_ct_renders_at_its_size_with_grey_levels() {
    let image = render(&test_file("CT_small.dcm"), 1, &png()).expect("render");
    let decoded = image::load_from_memory(&image).expect("a PNG").to_luma8();
    assert_eq!(decoded.dimensions(), (128, 128));
    let levels: std::collections::BTreeSet<u8> = decoded.pixels().map(|pixel| pixel.0[0]).collect();
    assert!(levels.len() > 50, "only {} grey levels", levels.len());
}

#[test]
fn viewports_fit_and_thumbnails_default_to_their_square() {
    let bytes = test_file("MR_small.dcm");
    let fitted = render(
        &bytes,
        1,
        &RenderOptions {
            viewport: Some(Viewport {
                width: 16,
                height: 32,
            }),
            ..png()
        },
    )
    .expect("render");
    assert_eq!(image::load_from_memory(&fitted).expect("PNG").width(), 16);
    let small = thumbnail(&bytes, ImageFormat::Jpeg, 80, None).expect("thumbnail");
    let small = image::load_from_memory(&small).expect("JPEG");
    assert_eq!((small.width(), small.height()), (200, 200));
}

#[test]
fn frames_outside_the_instance_and_bad_options_are_refused() {
    let bytes = test_file("SC_rgb_rle_2frame.dcm");
    assert!(render(&bytes, 2, &png()).is_ok());
    for frame in [0, 3, u32::MAX] {
        assert!(matches!(
            render(&bytes, frame, &png()),
            Err(PixelError::NoSuchFrame { frames: 2, .. })
        ));
    }
    for options in [
        RenderOptions {
            quality: 0,
            ..png()
        },
        RenderOptions {
            quality: 101,
            ..png()
        },
        RenderOptions {
            viewport: Some(Viewport {
                width: 0,
                height: 5,
            }),
            ..png()
        },
        RenderOptions {
            viewport: Some(Viewport {
                width: 5,
                height: hds_pixels::MAX_VIEWPORT_SIDE + 1,
            }),
            ..png()
        },
    ] {
        assert!(matches!(
            render(&bytes, 1, &options),
            Err(PixelError::InvalidOptions(_))
        ));
    }
}

#[test]
fn hostile_instances_are_refused_before_decoding() {
    // Not DICOM, and cut short.
    assert!(matches!(
        render(b"not dicom", 1, &png()),
        Err(PixelError::Unreadable(_))
    ));
    let bytes = test_file("CT_small.dcm");
    assert!(render(&bytes[..bytes.len() / 2], 1, &png()).is_err());
    // Claimed sizes far beyond the pixel data: refused from the header, nothing allocated.
    let wide = with_element(
        "CT_small.dcm",
        DataElement::new(
            dicom_core::Tag(0x0028, 0x0011),
            VR::US,
            PrimitiveValue::from(65_535u16),
        ),
    );
    let tall = {
        let directory = std::env::var("HDS_PYDICOM_TESTDATA").expect("HDS_PYDICOM_TESTDATA");
        let mut object =
            open_file(PathBuf::from(directory).join("SC_rgb_rle_2frame.dcm")).expect("open");
        object.put(DataElement::new(
            dicom_core::Tag(0x0028, 0x0010),
            VR::US,
            PrimitiveValue::from(65_535u16),
        ));
        object.put(DataElement::new(
            dicom_core::Tag(0x0028, 0x0011),
            VR::US,
            PrimitiveValue::from(65_535u16),
        ));
        let mut out = Vec::new();
        object.write_all(&mut out).expect("write");
        out
    };
    assert!(render(&wide, 1, &png()).is_err());
    assert!(matches!(
        render(&tall, 1, &png()),
        Err(PixelError::TooLarge { .. })
    ));
    // No pixel data at all.
    assert!(matches!(
        render(&test_file("rtplan.dcm"), 1, &png()),
        Err(PixelError::NoPixelData)
    ));
}

/// An RLE segment shorter than its image makes dicom-rs's RLE decoder index past it (a panic,
/// found by fuzzing): hds refuses the instance as undecodable, for rendering and transcoding
/// alike, and the next one decodes as usual.
#[test]
fn a_decoder_panic_on_damaged_data_is_an_undecodable_instance() {
    let directory = std::env::var("HDS_PYDICOM_TESTDATA").expect("HDS_PYDICOM_TESTDATA");
    let mut object = open_file(PathBuf::from(directory).join("MR_small_RLE.dcm")).expect("open");
    let pixel_data = object
        .element(dicom_core::Tag(0x7FE0, 0x0010))
        .expect("pixel data");
    let fragment = pixel_data.value().fragments().expect("fragments")[0].clone();
    // The RLE header (64 bytes: segment count and offsets) and the first bytes of segment 1.
    let mut short = fragment[..64].to_vec();
    short.extend_from_slice(&fragment[64..72]);
    short[8..12].copy_from_slice(&72_u32.to_le_bytes()); // segment 2 starts at the end
    object.put(DataElement::new(
        dicom_core::Tag(0x7FE0, 0x0010),
        VR::OB,
        dicom_core::value::PixelFragmentSequence::new(Vec::<u32>::new(), vec![short]),
    ));
    let mut damaged = Vec::new();
    object.write_all(&mut damaged).expect("write");
    let rendered = render(&damaged, 1, &png());
    assert!(
        matches!(&rendered, Err(PixelError::Undecodable(_))),
        "{rendered:?}"
    );
    let transcoded =
        hds_pixels::transcode(&damaged, hds_pixels::TargetSyntax::ExplicitVrLittleEndian);
    assert!(
        matches!(&transcoded, Err(PixelError::Undecodable(_))),
        "{transcoded:?}"
    );
    assert!(render(&test_file("MR_small_RLE.dcm"), 1, &png()).is_ok());
}

/// A JPEG 2000 frame whose header claims a larger image than its data set would make OpenJPEG
/// allocate that image before decoding anything (found by fuzzing: 620 MB for a 6 KB
/// instance): refused as undecodable for rendering, a viewport and transcoding, and the
/// instance as stored still decodes.
#[test]
fn a_jpeg_2000_header_larger_than_its_data_set_is_refused_before_decoding() {
    let directory = std::env::var("HDS_PYDICOM_TESTDATA").expect("HDS_PYDICOM_TESTDATA");
    let mut object =
        open_file(PathBuf::from(directory).join("MR_small_jp2klossless.dcm")).expect("open");
    let pixel_data = object
        .element(dicom_core::Tag(0x7FE0, 0x0010))
        .expect("pixel data");
    let mut codestream = pixel_data.value().fragments().expect("fragments")[0].clone();
    // SOC, SIZ, Lsiz, Rsiz, then Xsiz and Ysiz: 10,000 x 15,000 in one tile (XTsiz, YTsiz).
    assert_eq!(&codestream[..4], &[0xFF, 0x4F, 0xFF, 0x51]);
    codestream[8..12].copy_from_slice(&10_000_u32.to_be_bytes());
    codestream[12..16].copy_from_slice(&15_000_u32.to_be_bytes());
    codestream[24..28].copy_from_slice(&10_000_u32.to_be_bytes());
    codestream[28..32].copy_from_slice(&15_000_u32.to_be_bytes());
    object.put(DataElement::new(
        dicom_core::Tag(0x7FE0, 0x0010),
        VR::OB,
        dicom_core::value::PixelFragmentSequence::new(Vec::<u32>::new(), vec![codestream]),
    ));
    let mut hostile = Vec::new();
    object.write_all(&mut hostile).expect("write");
    let thumbnail = RenderOptions {
        viewport: Some(Viewport {
            width: 16,
            height: 16,
        }),
        ..png()
    };
    for rendered in [render(&hostile, 1, &png()), render(&hostile, 1, &thumbnail)] {
        assert!(
            matches!(&rendered, Err(PixelError::Undecodable(reason)) if reason.contains("larger")),
            "{rendered:?}"
        );
    }
    let transcoded =
        hds_pixels::transcode(&hostile, hds_pixels::TargetSyntax::ExplicitVrLittleEndian);
    assert!(
        matches!(&transcoded, Err(PixelError::Undecodable(_))),
        "{transcoded:?}"
    );
    assert!(render(&test_file("MR_small_jp2klossless.dcm"), 1, &png()).is_ok());
}

#[test]
fn transcoding_keeps_the_data_set_and_refuses_what_would_decode_too_large() {
    let rle = test_file("SC_rgb_rle_2frame.dcm");
    let out = hds_pixels::transcode_to_explicit_little_endian(&rle).expect("transcode");
    let object = dicom_object::OpenFileOptions::new()
        .from_reader(std::io::Cursor::new(&out))
        .expect("parse");
    assert_eq!(
        object.meta().transfer_syntax().trim_end_matches('\0'),
        hds_pixels::EXPLICIT_VR_LITTLE_ENDIAN
    );
    let pixels = object
        .element(dicom_core::Tag(0x7FE0, 0x0010))
        .expect("pixel data")
        .to_bytes()
        .expect("native bytes");
    assert_eq!(pixels.len(), 100 * 100 * 3 * 2);
    // Two frames declared 65535 x 65535: refused from the header.
    let huge = {
        let directory = std::env::var("HDS_PYDICOM_TESTDATA").expect("HDS_PYDICOM_TESTDATA");
        let mut object =
            open_file(PathBuf::from(directory).join("SC_rgb_rle_2frame.dcm")).expect("open");
        for tag in [
            dicom_core::Tag(0x0028, 0x0010),
            dicom_core::Tag(0x0028, 0x0011),
        ] {
            object.put(DataElement::new(
                tag,
                VR::US,
                PrimitiveValue::from(65_535u16),
            ));
        }
        let mut out = Vec::new();
        object.write_all(&mut out).expect("write");
        out
    };
    assert!(matches!(
        hds_pixels::transcode_to_explicit_little_endian(&huge),
        Err(PixelError::TooLarge { .. })
    ));
}

#[test]
fn small_viewports_of_jpeg_2000_decode_a_reduced_resolution_close_to_the_full_one() {
    // The same 64x64 MR as JPEG 2000 (fitted to 16x16 from a quarter-resolution decode) and
    // native (decoded whole, then scaled down).
    let options = RenderOptions {
        viewport: Some(Viewport {
            width: 16,
            height: 16,
        }),
        ..png()
    };
    let reduced = render(&test_file("MR_small_jp2klossless.dcm"), 1, &options).expect("render");
    let full = render(&test_file("MR_small.dcm"), 1, &options).expect("render");
    let reduced = image::load_from_memory(&reduced).expect("PNG").to_luma8();
    let full = image::load_from_memory(&full).expect("PNG").to_luma8();
    assert_eq!(reduced.dimensions(), (16, 16));
    assert_eq!(full.dimensions(), (16, 16));
    let difference: f64 = reduced
        .pixels()
        .zip(full.pixels())
        .map(|(a, b)| (f64::from(a.0[0]) - f64::from(b.0[0])).abs())
        .sum::<f64>()
        / 256.0;
    let mean = |image: &image::GrayImage| {
        image
            .pixels()
            .map(|pixel| f64::from(pixel.0[0]))
            .sum::<f64>()
            / 256.0
    };
    // Same levels overall; edges differ between the wavelet's low-pass and the triangle
    // filter that scales the full-resolution frame down (about 17 levels on this small MR).
    assert!((mean(&reduced) - mean(&full)).abs() < 4.0);
    assert!(difference < 24.0, "mean difference {difference}");
    // A viewport as large as the frame decodes it whole, as before.
    let whole = render(
        &test_file("MR_small_jp2klossless.dcm"),
        1,
        &RenderOptions {
            viewport: Some(Viewport {
                width: 64,
                height: 64,
            }),
            ..png()
        },
    )
    .expect("render");
    assert_eq!(
        image::load_from_memory(&whole)
            .expect("PNG")
            .to_luma8()
            .dimensions(),
        (64, 64)
    );
}

/// Colour JPEG 2000 (YBR_RCT, YBR_ICT: OpenJPEG inverts the colour transform) rendered for a
/// small viewport from a reduced resolution is close to the full decode scaled down the same way.
#[test]
fn small_viewports_of_colour_jpeg_2000_decode_a_reduced_resolution_close_to_the_full_one() {
    let directory = std::path::PathBuf::from(
        std::env::var("HDS_PYDICOM_DATA").expect("HDS_PYDICOM_DATA (scripts/test sets it)"),
    );
    for name in ["US1_J2KR.dcm", "US1_J2KI.dcm"] {
        let nested = directory.join("data").join(name);
        let path = if nested.exists() {
            nested
        } else {
            directory.join(name)
        };
        let instance = std::fs::read(path).expect("data file");
        // 640x480 fitted to 160x120: two levels dropped.
        let viewport = Viewport {
            width: 160,
            height: 120,
        };
        let reduced = render(
            &instance,
            1,
            &RenderOptions {
                viewport: Some(viewport),
                ..png()
            },
        )
        .expect("reduced render");
        let full = render(&instance, 1, &png()).expect("full render");
        let reduced = image::load_from_memory(&reduced).expect("PNG").to_rgb8();
        let full = image::load_from_memory(&full).expect("PNG");
        assert_eq!((full.width(), full.height()), (640, 480), "{name}");
        let full = full
            .resize(160, 120, image::imageops::FilterType::Triangle)
            .to_rgb8();
        assert_eq!(reduced.dimensions(), (160, 120), "{name}");
        let count = f64::from(160 * 120);
        // Each channel keeps its level (a channel swapped or a colour transform not undone
        // would move them apart).
        for channel in 0..3 {
            let mean = |image: &image::RgbImage| {
                image
                    .pixels()
                    .map(|pixel| f64::from(pixel.0[channel]))
                    .sum::<f64>()
                    / count
            };
            assert!(
                (mean(&reduced) - mean(&full)).abs() < 2.0,
                "{name} channel {channel}: means {} and {}",
                mean(&reduced),
                mean(&full)
            );
        }
        // Most pixels match closely; edges differ between the wavelet's low-pass and the
        // triangle filter that scales the full frame down (this ultrasound's speckle and text
        // are nearly all edges: about 12 levels on average, 2 at the median).
        let mut differences: Vec<u8> = reduced
            .as_raw()
            .iter()
            .zip(full.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let difference =
            differences.iter().map(|d| f64::from(*d)).sum::<f64>() / differences.len() as f64;
        differences.sort_unstable();
        let median = differences[differences.len() / 2];
        assert!(median <= 4, "{name}: median difference {median}");
        assert!(difference < 16.0, "{name}: mean difference {difference}");
    }
}
