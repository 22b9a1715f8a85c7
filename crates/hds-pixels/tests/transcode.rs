//! Transcoding real files (pydicom's test data, `HDS_PYDICOM_TESTDATA`) to JPEG 2000 and JPEG
//! Baseline, checked by decoding the output again with dicom-rs: exact for JPEG 2000, close for
//! JPEG; and what a target cannot hold refused.

use std::io::Cursor;
use std::path::PathBuf;

use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use hds_pixels::{
    PixelError, PixelHeader, TargetSyntax, check_transcodable, transcode, transcode_frames,
};

fn test_file(name: &str) -> Vec<u8> {
    let directory = std::env::var("HDS_PYDICOM_TESTDATA")
        .expect("HDS_PYDICOM_TESTDATA names pydicom's test_files directory (scripts/test sets it)");
    std::fs::read(PathBuf::from(directory).join(name)).expect("test file")
}

/// A file of pydicom-data (`HDS_PYDICOM_DATA`: the `data_store` package directory, as
/// scripts/test sets it, whose files are under `data/`; or that `data/` directory itself).
fn data_file(name: &str) -> Vec<u8> {
    let directory =
        PathBuf::from(std::env::var("HDS_PYDICOM_DATA").expect(
            "HDS_PYDICOM_DATA names pydicom-data's package directory (scripts/test sets it)",
        ));
    let nested = directory.join("data").join(name);
    let path = if nested.exists() {
        nested
    } else {
        directory.join(name)
    };
    std::fs::read(path).expect("data file")
}

fn parse(bytes: &[u8]) -> DefaultDicomObject {
    OpenFileOptions::new()
        .from_reader(Cursor::new(bytes))
        .expect("parse")
}

/// Every frame's samples as decoded by dicom-rs, as i32 (signed where stored so).
fn samples(bytes: &[u8]) -> Vec<i32> {
    let object = parse(bytes);
    let decoded = object.decode_pixel_data().expect("decode");
    decoded.to_vec::<i32>().expect("samples")
}

fn syntax(bytes: &[u8]) -> String {
    parse(bytes)
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_owned()
}

#[test]
fn jpeg_2000_round_trips_exactly() {
    for (name, frames) in [
        ("CT_small.dcm", 1),          // signed 16-bit
        ("MR_small.dcm", 1),          // unsigned 16-bit
        ("SC_rgb_small_odd.dcm", 1),  // 8-bit RGB, odd sides
        ("SC_rgb_rle_2frame.dcm", 2), // RLE source, two frames, planes
        ("MR_small_RLE.dcm", 1),
    ] {
        let source = test_file(name);
        for target in [TargetSyntax::Jpeg2000Lossless, TargetSyntax::Jpeg2000] {
            let out = transcode(&source, target).expect(name);
            assert_eq!(syntax(&out), target.uid(), "{name}");
            assert_eq!(samples(&out), samples(&source), "{name} as {target:?}");
            let object = parse(&out);
            let fragments = object
                .element(dicom_core::Tag(0x7FE0, 0x0010))
                .expect("pixel data")
                .fragments()
                .expect("encapsulated")
                .len();
            assert_eq!(fragments, frames, "{name}");
        }
    }
}

#[test]
fn jpeg_baseline_from_8_bit_samples_is_close() {
    for (name, source) in [
        ("SC_rgb_rle_2frame.dcm", test_file("SC_rgb_rle_2frame.dcm")),
        ("vlut_04.dcm", data_file("vlut_04.dcm")),
    ] {
        let out = transcode(&source, TargetSyntax::JpegBaseline).expect(name);
        assert_eq!(syntax(&out), hds_pixels::JPEG_BASELINE);
        let object = parse(&out);
        let decoded = object.decode_pixel_data().expect("decode");
        let got = decoded.to_vec::<i32>().expect("samples");
        let expected = samples(&source);
        assert_eq!(got.len(), expected.len(), "{name}");
        let squared: f64 = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / got.len() as f64;
        let psnr = 10.0 * (255.0f64 * 255.0 / squared.max(1e-9)).log10();
        assert!(psnr > 30.0, "{name}: PSNR {psnr}");
        let lossy = object
            .element(dicom_core::Tag(0x0028, 0x2110))
            .expect("LossyImageCompression")
            .to_str()
            .expect("text");
        assert_eq!(lossy.trim(), "01");
    }
}

#[test]
fn frames_are_encoded_one_codestream_each() {
    let source = test_file("SC_rgb_rle_2frame.dcm");
    let frames =
        transcode_frames(&source, TargetSyntax::Jpeg2000Lossless, &[2, 1]).expect("frames");
    assert_eq!(frames.len(), 2);
    for frame in &frames {
        assert_eq!(
            &frame[..2],
            &[0xFF, 0x4F],
            "a J2K codestream opens with SOC"
        );
    }
    let jpeg = transcode_frames(&source, TargetSyntax::JpegBaseline, &[1]).expect("jpeg");
    let image = image::load_from_memory(&jpeg[0]).expect("a JPEG");
    assert_eq!((image.width(), image.height()), (100, 100));
    assert!(matches!(
        transcode_frames(&source, TargetSyntax::Jpeg2000, &[3]),
        Err(PixelError::NoSuchFrame {
            frame: 3,
            frames: 2
        })
    ));
}

#[test]
fn what_a_target_cannot_hold_is_refused() {
    // 16-bit samples in JPEG Baseline.
    for name in ["MR_small.dcm", "CT_small.dcm", "MR_small_jp2klossless.dcm"] {
        let refused = transcode(&test_file(name), TargetSyntax::JpegBaseline);
        assert!(
            matches!(&refused, Err(PixelError::Unencodable(reason)) if reason.contains("8-bit")),
            "{name}: {refused:?}"
        );
    }
    // Palette indices are not put through a lossy codec.
    let refused = transcode(
        &test_file("examples_palette.dcm"),
        TargetSyntax::JpegBaseline,
    );
    assert!(
        matches!(refused, Err(PixelError::Unencodable(_))),
        "{refused:?}"
    );
    // JPEG Extended's 12-bit samples do not fit JPEG Baseline's 8 bits.
    let refused = transcode(&test_file("JPGExtended.dcm"), TargetSyntax::JpegBaseline);
    assert!(
        matches!(&refused, Err(PixelError::Unencodable(reason)) if reason.contains("8-bit")),
        "{refused:?}"
    );
}

#[test]
fn an_instance_without_pixel_data_changes_only_its_encoding() {
    let out = transcode(&test_file("rtplan.dcm"), TargetSyntax::Jpeg2000Lossless).expect("plan");
    assert_eq!(syntax(&out), hds_pixels::JPEG_2000_LOSSLESS);
}

/// The header of a stored file as the index's metadata gives it to [`check_transcodable`].
fn header_of(bytes: &[u8]) -> (String, PixelHeader) {
    use dicom_dictionary_std::tags;
    let object = parse(bytes);
    let number = |tag| {
        object
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|element| element.to_int::<u32>().ok())
    };
    let header = PixelHeader {
        samples_per_pixel: number(tags::SAMPLES_PER_PIXEL),
        photometric_interpretation: object
            .element_opt(tags::PHOTOMETRIC_INTERPRETATION)
            .ok()
            .flatten()
            .and_then(|element| element.to_str().ok())
            .map(|text| text.trim().to_owned()),
        bits_allocated: number(tags::BITS_ALLOCATED),
        bits_stored: number(tags::BITS_STORED),
        pixel_representation: number(tags::PIXEL_REPRESENTATION),
        rows: number(tags::ROWS),
        columns: number(tags::COLUMNS),
        number_of_frames: number(tags::NUMBER_OF_FRAMES),
    };
    (syntax(bytes), header)
}

/// The check from the header alone (what a multipart response decides before its status line)
/// gives the same answer as transcoding itself, on files of every source syntax and kind of
/// sample: a prediction that passed where transcoding refuses would cut a response again.
#[test]
fn the_header_check_predicts_what_transcoding_refuses() {
    let files = [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "SC_rgb.dcm",
        "SC_rgb_rle_2frame.dcm",
        "SC_rgb_small_odd.dcm",
        "SC_rgb_dcmtk_+eb+cr.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "SC_ybr_full_uncompressed.dcm",
        "SC_rgb_32bit.dcm",
        "OBXXXX1A.dcm",
        "examples_palette.dcm",
        "JPEG2000.dcm",
        "JPGExtended.dcm",
        "JPEG-LL.dcm",
        "vlut_04.dcm",
        "rtplan.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "JPEGLSNearLossless_16.dcm",
    ];
    let targets = [
        TargetSyntax::ExplicitVrLittleEndian,
        TargetSyntax::JpegBaseline,
        TargetSyntax::Jpeg2000Lossless,
        TargetSyntax::Jpeg2000,
    ];
    for name in files {
        let in_pydicom = std::env::var("HDS_PYDICOM_TESTDATA")
            .map(|directory| PathBuf::from(directory).join(name).exists())
            .unwrap_or(false);
        let bytes = if in_pydicom {
            test_file(name)
        } else {
            data_file(name)
        };
        let (source, header) = header_of(&bytes);
        for target in targets {
            let predicted = check_transcodable(&source, &header, target);
            let actual = transcode(&bytes, target);
            assert_eq!(
                predicted.is_ok(),
                actual.is_ok(),
                "{name} ({source}) to {}: predicted {predicted:?}, transcoding {:?}",
                target.uid(),
                actual.err()
            );
        }
    }
}

/// JPEG-LS sources (CharLS through dicom-rs's `charls` feature): lossless decodes to exactly the
/// uncompressed twin's samples, to Explicit VR Little Endian and through JPEG 2000.
#[test]
fn jpeg_ls_lossless_sources_decode_to_their_twin() {
    for (stored, twin) in [
        (
            test_file("MR_small_jpeg_ls_lossless.dcm"),
            test_file("MR_small.dcm"),
        ),
        (
            data_file("emri_small_jpeg_ls_lossless.dcm"),
            data_file("emri_small.dcm"),
        ),
    ] {
        let expected = samples(&twin);
        let native = transcode(&stored, TargetSyntax::ExplicitVrLittleEndian).expect("to ELE");
        assert_eq!(syntax(&native), hds_pixels::EXPLICIT_VR_LITTLE_ENDIAN);
        assert_eq!(samples(&native), expected);
        let j2k = transcode(&stored, TargetSyntax::Jpeg2000Lossless).expect("to JPEG 2000");
        assert_eq!(samples(&j2k), expected);
    }
}

/// JPEG Extended with 12-bit samples (libjpeg-turbo) decodes to a 12-bit image, which JPEG 2000
/// then holds exactly. pydicom's other copy of the file, whose scan header is damaged (a
/// sequential scan that claims spectral selection), is refused as undecodable, as libjpeg's
/// other decoders refuse it.
#[test]
fn jpeg_extended_12_bit_decodes() {
    let stored = test_file("JPGExtended.dcm");
    let native = transcode(&stored, TargetSyntax::ExplicitVrLittleEndian).expect("to ELE");
    assert_eq!(syntax(&native), hds_pixels::EXPLICIT_VR_LITTLE_ENDIAN);
    let values = samples(&native);
    assert_eq!(values.len(), 1024 * 256);
    assert!(values.iter().all(|value| (0..4096).contains(value)));
    // An image, not a blank: many distinct grey levels.
    let mut levels = values.clone();
    levels.sort_unstable();
    levels.dedup();
    assert!(levels.len() > 100, "{} grey levels", levels.len());
    let j2k = transcode(&stored, TargetSyntax::Jpeg2000Lossless).expect("to J2K");
    assert_eq!(samples(&j2k), values);

    let damaged = transcode(
        &test_file("JPEG-lossy.dcm"),
        TargetSyntax::ExplicitVrLittleEndian,
    );
    assert!(
        matches!(&damaged, Err(PixelError::Undecodable(reason)) if reason.contains("SOS")),
        "{damaged:?}"
    );
}

/// JPEG Extended also holds 8-bit samples (baseline-coded frames are valid in it): an 8-bit
/// image encoded by `jpeg-encoder` and stored under 1.2.840.10008.1.2.4.51 decodes close to
/// the original, grey and colour, one frame or several.
#[test]
fn jpeg_extended_8_bit_decodes_close_to_the_original() {
    use dicom_core::value::PixelFragmentSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    for (samples_per_pixel, frames) in [(1_u16, 1_u32), (3, 1), (1, 3)] {
        let (columns, rows) = (64_u16, 48_u16);
        let original: Vec<u8> =
            (0..u32::from(columns) * u32::from(rows) * u32::from(samples_per_pixel) * frames)
                .map(|at| {
                    // Smooth ramps, one per sample, so that chroma subsampling loses little.
                    let pixel = at / u32::from(samples_per_pixel);
                    let (x, y) = (pixel % 64, pixel / 64 % 48);
                    (40 + x + y + 20 * (at % u32::from(samples_per_pixel))) as u8
                })
                .collect();
        let frame_len = original.len() / frames as usize;
        let fragments: Vec<Vec<u8>> = original
            .chunks(frame_len)
            .map(|frame| {
                let mut jpeg = Vec::new();
                let colour = if samples_per_pixel == 1 {
                    jpeg_encoder::ColorType::Luma
                } else {
                    jpeg_encoder::ColorType::Rgb
                };
                jpeg_encoder::Encoder::new(&mut jpeg, 95)
                    .encode(frame, columns, rows, colour)
                    .expect("encode");
                jpeg
            })
            .collect();
        let mut object = InMemDicomObject::new_empty();
        let put = |object: &mut InMemDicomObject, tag, vr, value: PrimitiveValue| {
            object.put(DataElement::new(tag, vr, value));
        };
        put(
            &mut object,
            tags::SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.7".into(),
        );
        put(
            &mut object,
            tags::SOP_INSTANCE_UID,
            VR::UI,
            "1.2.3.4.5.6".into(),
        );
        put(&mut object, tags::ROWS, VR::US, rows.into());
        put(&mut object, tags::COLUMNS, VR::US, columns.into());
        put(
            &mut object,
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            samples_per_pixel.into(),
        );
        let photometric = if samples_per_pixel == 1 {
            "MONOCHROME2"
        } else {
            "YBR_FULL_422"
        };
        put(
            &mut object,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            photometric.into(),
        );
        put(&mut object, tags::BITS_ALLOCATED, VR::US, 8_u16.into());
        put(&mut object, tags::BITS_STORED, VR::US, 8_u16.into());
        put(&mut object, tags::HIGH_BIT, VR::US, 7_u16.into());
        put(
            &mut object,
            tags::PIXEL_REPRESENTATION,
            VR::US,
            0_u16.into(),
        );
        put(
            &mut object,
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            frames.to_string().into(),
        );
        if samples_per_pixel == 3 {
            put(
                &mut object,
                tags::PLANAR_CONFIGURATION,
                VR::US,
                0_u16.into(),
            );
        }
        object.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PixelFragmentSequence::new(Vec::<u32>::new(), fragments),
        ));
        let file = object
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(hds_pixels::JPEG_EXTENDED)
                    .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
                    .media_storage_sop_instance_uid("1.2.3.4.5.6"),
            )
            .expect("meta");
        let mut stored = Vec::new();
        file.write_all(&mut stored).expect("write");

        let native = transcode(&stored, TargetSyntax::ExplicitVrLittleEndian).expect("to ELE");
        let values = samples(&native);
        assert_eq!(values.len(), original.len());
        let worst = values
            .iter()
            .zip(&original)
            .map(|(decoded, original)| (decoded - i32::from(*original)).abs())
            .max()
            .unwrap_or(0);
        assert!(
            worst <= 12,
            "{samples_per_pixel} samples, {frames} frames: off by {worst}"
        );
        // A rendered frame of the same instance.
        let rendered = hds_pixels::render(&stored, frames, &hds_pixels::RenderOptions::default())
            .expect("render");
        assert!(rendered.starts_with(&[0xFF, 0xD8]));
    }
}

/// A JPEG Extended frame whose header disagrees with the data set (here: larger than Rows x
/// Columns) is refused before libjpeg-turbo allocates it.
#[test]
fn jpeg_extended_frames_larger_than_their_image_are_refused() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;

    let mut object = parse(&test_file("JPGExtended.dcm"));
    object.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(16_u16),
    ));
    let mut bytes = Vec::new();
    object.write_all(&mut bytes).expect("write");
    let refused = transcode(&bytes, TargetSyntax::ExplicitVrLittleEndian);
    assert!(
        matches!(&refused, Err(PixelError::Undecodable(reason)) if reason.contains("256x1024")),
        "{refused:?}"
    );
}
