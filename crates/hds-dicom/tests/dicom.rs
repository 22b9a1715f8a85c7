//! Parsing real files from pydicom's test data and pydicom-data, checked against pydicom, and
//! synthetic instances written with dicom-rs.
//!
//! The real files are found through two environment variables, which must be set:
//! - `HDS_PYDICOM_TESTDATA`: pydicom's `data/test_files` directory,
//!   `python3 -c "import pydicom, os; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))"`;
//! - `HDS_PYDICOM_DATA`: pydicom-data's data directory (the package is `data_store`),
//!   `python3 -c "import data_store, os; print(os.path.join(os.path.dirname(data_store.__file__), 'data'))"`.
//!
//! `HDS_PYTHON` names the interpreter that has pydicom (default `python3`).

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use hds_dicom::attributes::searchable_by_tag;
use hds_dicom::frames::read_frame;
use hds_dicom::{InstanceError, QueryLevel, SearchValue, parse_instance};
use serde_json::{Value, json};

fn data_dir(variable: &str) -> PathBuf {
    let value = std::env::var_os(variable).unwrap_or_else(|| {
        panic!("{variable} is not set: point it at the pydicom test data (see tests/dicom.rs)")
    });
    let dir = PathBuf::from(value);
    // pydicom-data keeps its files under `data/`; accept the package directory as well.
    let nested = dir.join("data");
    if nested.join("emri_small.dcm").exists() {
        nested
    } else {
        dir
    }
}

fn pydicom_test_file(name: &str) -> PathBuf {
    data_dir("HDS_PYDICOM_TESTDATA").join(name)
}

fn pydicom_data_file(name: &str) -> PathBuf {
    data_dir("HDS_PYDICOM_DATA").join(name)
}

/// What pydicom says about a file, and the frames it yields.
struct Reference {
    summary: Value,
    frames: Vec<Vec<u8>>,
}

fn pydicom_reference(path: &Path) -> Reference {
    let python = std::env::var("HDS_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/reference.py");
    let out_dir = tempfile::tempdir().expect("temporary directory");
    let output = Command::new(python)
        .arg(&script)
        .arg(path)
        .arg(out_dir.path())
        .output()
        .expect("running python3 with pydicom");
    assert!(
        output.status.success(),
        "pydicom failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).expect("reference JSON");
    let count = summary["frames"].as_u64().expect("frame count") as usize;
    let frames = (0..count)
        .map(|index| {
            std::fs::read(out_dir.path().join(format!("frame_{index}.bin"))).expect("frame file")
        })
        .collect();
    Reference { summary, frames }
}

/// Parses `path` and checks it against pydicom: UIDs, transfer syntax, the frame count (also
/// against `expected_frames`, so that an error shared by both sides still shows) and every
/// frame's bytes.
fn check_against_pydicom(path: &Path, transfer_syntax: &str, expected_frames: usize) {
    let name = path.display();
    let parsed = parse_instance(File::open(path).expect("open test file"))
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    let reference = pydicom_reference(path);
    let summary = &reference.summary;
    assert_eq!(parsed.study_instance_uid, summary["study"], "{name}");
    assert_eq!(parsed.series_instance_uid, summary["series"], "{name}");
    assert_eq!(parsed.sop_instance_uid, summary["sop"], "{name}");
    assert_eq!(parsed.sop_class_uid, summary["sop_class"], "{name}");
    assert_eq!(parsed.transfer_syntax_uid, transfer_syntax, "{name}");
    assert_eq!(summary["transfer_syntax"], transfer_syntax, "{name}");
    assert_eq!(
        reference.frames.len(),
        expected_frames,
        "{name}: pydicom frames"
    );

    if expected_frames == 0 {
        assert!(parsed.frames.is_none(), "{name}: no pixel data");
        return;
    }
    let frame_map = parsed
        .frames
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: no frames"));
    assert_eq!(frame_map.frame_count(), expected_frames, "{name}");
    let ts_is_native = [
        uids::IMPLICIT_VR_LITTLE_ENDIAN,
        uids::EXPLICIT_VR_LITTLE_ENDIAN,
        EBE,
    ]
    .contains(&transfer_syntax);
    assert_eq!(frame_map.encapsulated, !ts_is_native, "{name}");
    let mut file = File::open(path).expect("open test file");
    for (index, expected) in reference.frames.iter().enumerate() {
        let frame = read_frame(&mut file, frame_map, index).expect("read frame");
        assert_eq!(
            frame.len(),
            expected.len(),
            "{name}: length of frame {index}"
        );
        assert!(frame == *expected, "{name}: bytes of frame {index} differ");
        assert_eq!(frame_map.frame_length(index), Some(frame.len() as u64));
    }
    assert!(read_frame(&mut file, frame_map, expected_frames).is_err());

    // Bulk data never reaches the metadata.
    let metadata = parsed.metadata.to_map().expect("metadata is an object");
    assert!(!metadata.contains_key("7FE00010"), "{name}");
    // Each level's attributes are the metadata's elements, as they are there.
    let levels = [
        &parsed.study_attributes,
        &parsed.series_attributes,
        &parsed.instance_attributes,
    ]
    .map(|level| level.to_map().expect("a level's attributes are an object"));
    for (key, value) in levels.iter().flatten() {
        if key != "00020010" {
            assert_eq!(metadata.get(key), Some(value), "{name}: {key}");
        }
    }
    assert_no_large_inline_binary(&Value::Object(metadata), &name.to_string());
}

fn assert_no_large_inline_binary(value: &Value, name: &str) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(binary)) = map.get("InlineBinary") {
                // base64 of at most 1024 bytes.
                assert!(binary.len() <= 1368, "{name}: large inline binary");
            }
            map.values()
                .for_each(|value| assert_no_large_inline_binary(value, name));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|value| assert_no_large_inline_binary(value, name)),
        _ => {}
    }
}

const ELE: &str = uids::EXPLICIT_VR_LITTLE_ENDIAN;
const ILE: &str = uids::IMPLICIT_VR_LITTLE_ENDIAN;
/// Explicit VR big endian: retired, hence no constant without a deprecation warning.
const EBE: &str = "1.2.840.10008.1.2.2";
const RLE: &str = uids::RLE_LOSSLESS;
const JPEG_BASELINE: &str = uids::JPEG_BASELINE8_BIT;
const JPEG_EXTENDED: &str = uids::JPEG_EXTENDED12_BIT;
const JPEG_LOSSLESS_SV1: &str = uids::JPEG_LOSSLESS_SV1;
const JPEG_LS_LOSSLESS: &str = uids::JPEGLS_LOSSLESS;
const J2K_LOSSLESS: &str = uids::JPEG2000_LOSSLESS;
const J2K: &str = uids::JPEG2000;

#[test]
fn pydicom_native_files_match_pydicom() {
    for (name, ts, frames) in [
        ("CT_small.dcm", ELE, 1),
        ("MR_small_bigendian.dcm", EBE, 1),
        ("MR_small_implicit.dcm", ILE, 1),
        ("SC_rgb_small_odd.dcm", ELE, 1),
        ("SC_ybr_full_422_uncompressed.dcm", ELE, 1),
        ("SC_rgb_small_odd_big_endian.dcm", EBE, 1),
        ("rtdose.dcm", ILE, 15),
        ("rtdose_expb.dcm", EBE, 15),
        ("liver_1frame.dcm", ELE, 1),
        ("examples_overlay.dcm", ELE, 1),
        ("rtplan.dcm", ILE, 0),
        ("test-SR.dcm", ELE, 0),
        ("waveform_ecg.dcm", ELE, 0),
    ] {
        check_against_pydicom(&pydicom_test_file(name), ts, frames);
    }
}

#[test]
fn pydicom_encapsulated_files_match_pydicom() {
    for (name, ts, frames) in [
        ("JPEG2000.dcm", J2K, 1),
        ("JPEG2000-embedded-sequence-delimiter.dcm", J2K, 1),
        ("MR_small_jp2klossless.dcm", J2K_LOSSLESS, 1),
        ("SC_rgb_jpeg_dcmtk.dcm", JPEG_BASELINE, 1),
        ("JPGExtended.dcm", JPEG_EXTENDED, 1),
        ("SC_rgb_jpeg_gdcm.dcm", JPEG_LOSSLESS_SV1, 1),
        ("MR_small_jpeg_ls_lossless.dcm", JPEG_LS_LOSSLESS, 1),
        ("MR_small_RLE.dcm", RLE, 1),
        ("SC_rgb_rle_2frame.dcm", RLE, 2),
        ("SC_rgb_rle_32bit_2frame.dcm", RLE, 2),
        ("rtdose_rle.dcm", RLE, 15),
        ("examples_ybr_color.dcm", JPEG_BASELINE, 30),
    ] {
        check_against_pydicom(&pydicom_test_file(name), ts, frames);
    }
}

#[test]
fn pydicom_data_files_match_pydicom() {
    for (name, ts, frames) in [
        ("emri_small.dcm", ELE, 10),
        ("emri_small_big_endian.dcm", EBE, 10),
        ("emri_small_RLE.dcm", RLE, 10),
        ("emri_small_jpeg_2k_lossless.dcm", J2K_LOSSLESS, 10),
        ("emri_small_jpeg_ls_lossless.dcm", JPEG_LS_LOSSLESS, 10),
        ("US1_UNCR.dcm", ELE, 1),
        ("US1_J2KR.dcm", J2K_LOSSLESS, 1),
        ("color3d_jpeg_baseline.dcm", JPEG_BASELINE, 120),
        ("liver.dcm", ELE, 3),
        ("OBXXXX1A_rle_2frame.dcm", RLE, 2),
        ("OBXXXX1A_expb_2frame.dcm", EBE, 2),
        ("SC_rgb_expb_32bit_2frame.dcm", EBE, 2),
        ("explicit_VR-UN.dcm", J2K_LOSSLESS, 1),
        ("gdcm-US-ALOKA-16.dcm", ILE, 1),
        ("eCT_Supplemental.dcm", ELE, 2),
        ("MR-SIEMENS-DICOM-WithOverlays.dcm", ELE, 1),
    ] {
        check_against_pydicom(&pydicom_data_file(name), ts, frames);
    }
}

#[test]
fn ct_small_attributes_levels_and_search_terms() {
    let parsed = parse_instance(File::open(pydicom_test_file("CT_small.dcm")).expect("open"))
        .expect("parse CT_small");
    let study = parsed.study_attributes.to_map().expect("study attributes");
    let series = parsed
        .series_attributes
        .to_map()
        .expect("series attributes");
    let instance = parsed
        .instance_attributes
        .to_map()
        .expect("instance attributes");
    assert_eq!(
        study["00100010"],
        json!({"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]})
    );
    assert_eq!(study["00100020"], json!({"vr": "LO", "Value": ["1CT1"]}));
    assert_eq!(
        study["0020000D"],
        json!({"vr": "UI", "Value": ["1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"]})
    );
    assert!(!study.contains_key("00080060"));
    assert_eq!(series["00080060"], json!({"vr": "CS", "Value": ["CT"]}));
    assert_eq!(
        series["00081090"],
        json!({"vr": "LO", "Value": ["RHAPSODE"]})
    );
    assert!(!series.contains_key("00100010"));
    assert_eq!(instance["00020010"], json!({"vr": "UI", "Value": [ELE]}));
    assert_eq!(instance["00280010"], json!({"vr": "US", "Value": [128]}));
    assert_eq!(
        instance.keys().next_back().map(String::as_str),
        Some("00020010")
    );
    // The file meta group stays out of the metadata, the data set is all there.
    let metadata = parsed.metadata.to_map().expect("object");
    assert!(!metadata.contains_key("00020010"));
    assert!(metadata.contains_key("00100010"));
    assert!(metadata.contains_key("00080060"));
    assert!(metadata.keys().all(|key| {
        key.len() == 8
            && key
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    }));

    let study: Vec<_> = parsed.terms_at(QueryLevel::Study).collect();
    let term = |tag| {
        parsed
            .search_terms
            .iter()
            .filter(|term| term.attribute.tag == tag)
            .map(|term| term.value.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        term(tags::PATIENT_NAME),
        vec![SearchValue::PersonName {
            exact: "CompressedSamples^CT1".into(),
            words: vec!["compressedsamples".into(), "ct1".into()],
        }]
    );
    assert_eq!(term(tags::STUDY_DATE), vec![SearchValue::Date(20040119)]);
    assert_eq!(term(tags::MODALITY), vec![SearchValue::Exact("CT".into())]);
    assert_eq!(
        term(tags::MODALITIES_IN_STUDY),
        vec![SearchValue::Exact("CT".into())]
    );
    assert_eq!(
        term(tags::MANUFACTURER_MODEL_NAME),
        vec![SearchValue::Exact("RHAPSODE".into())]
    );
    // Empty values (AccessionNumber, ReferringPhysicianName) give no term.
    assert!(term(tags::ACCESSION_NUMBER).is_empty());
    assert!(term(tags::REFERRING_PHYSICIAN_NAME).is_empty());
    assert!(
        study
            .iter()
            .any(|t| t.attribute.tag == tags::MODALITIES_IN_STUDY)
    );
    assert!(study.iter().all(|t| t.attribute.level == QueryLevel::Study));
    let instance: Vec<_> = parsed.terms_at(QueryLevel::Instance).collect();
    assert_eq!(instance.len(), 1);
    assert_eq!(
        instance[0].value,
        SearchValue::Exact(parsed.sop_instance_uid.clone())
    );
}

#[test]
fn refused_real_files() {
    let open = |path: PathBuf| File::open(path).expect("open");
    // Deflated data sets have no addressable pixel data.
    assert!(matches!(
        parse_instance(open(pydicom_test_file("image_dfl.dcm"))),
        Err(InstanceError::UnsupportedTransferSyntax(uid)) if uid == "1.2.840.10008.1.2.1.99"
    ));
    // No StudyInstanceUID.
    assert!(matches!(
        parse_instance(open(pydicom_test_file("JPEGLSNearLossless_08.dcm"))),
        Err(InstanceError::MissingAttribute("StudyInstanceUID"))
    ));
    // No file meta group.
    assert!(matches!(
        parse_instance(open(pydicom_test_file("rtstruct.dcm"))),
        Err(InstanceError::Unreadable(_))
    ));
    // A sequence stored as UN of undefined length.
    assert!(matches!(
        parse_instance(open(pydicom_test_file("UN_sequence.dcm"))),
        Err(InstanceError::Unreadable(_))
    ));
    // Pixel data cut short.
    assert!(parse_instance(open(pydicom_test_file("MR_truncated.dcm"))).is_err());
}

/// Every file of both collections either parses or is refused with an error: never a panic,
/// and a frame map always lies within the file.
#[test]
fn every_real_file_parses_or_is_refused() {
    let mut parsed_count = 0;
    for dir in [
        data_dir("HDS_PYDICOM_TESTDATA"),
        data_dir("HDS_PYDICOM_DATA"),
    ] {
        for entry in std::fs::read_dir(&dir).expect("read data directory") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_none_or(|ext| ext != "dcm") {
                continue;
            }
            let file_length = std::fs::metadata(&path).expect("metadata").len();
            if let Ok(parsed) = parse_instance(File::open(&path).expect("open")) {
                parsed_count += 1;
                for range in parsed
                    .frames
                    .iter()
                    .flat_map(|map| map.frames.iter().flatten())
                {
                    assert!(
                        range.offset + range.length <= file_length,
                        "{}",
                        path.display()
                    );
                }
            }
        }
    }
    assert!(parsed_count > 100, "only {parsed_count} files parsed");
}

// Synthetic instances.

const STUDY_UID: &str = "1.2.826.0.1.3680043.8.498.1";
const SERIES_UID: &str = "1.2.826.0.1.3680043.8.498.1.1";
const INSTANCE_UID: &str = "1.2.826.0.1.3680043.8.498.1.1.1";

fn synthetic_data_set() -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
        ),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, INSTANCE_UID),
        DataElement::new(tags::STUDY_DATE, VR::DA, "1999.12.31"),
        DataElement::new(tags::MODALITY, VR::CS, "OT"),
        DataElement::new(
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            "Ŝtefan^Ångström^^Dr.",
        ),
        DataElement::new(tags::PATIENT_NAME, VR::PN, "Müller^Jöhn=ミュラー^ジョン"),
        DataElement::new(tags::PATIENT_ID, VR::LO, "MARKER-ID "),
        DataElement::new(tags::PATIENT_BIRTH_DATE, VR::DA, "not-a-date"),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, STUDY_UID),
        DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, SERIES_UID),
        // A private binary value above the bulk threshold, and a small one.
        DataElement::new(
            dicom_core::Tag(0x0009, 0x1001),
            VR::OB,
            PrimitiveValue::from(vec![7u8; 4096]),
        ),
        DataElement::new(
            dicom_core::Tag(0x0009, 0x1002),
            VR::OB,
            PrimitiveValue::from(vec![1u8, 2, 3, 4]),
        ),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1_u16)),
        DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, "3"),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(4_u16)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(2_u16)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16_u16)),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16((0..24_u16).collect()),
        ),
    ])
}

fn write_instance(data_set: InMemDicomObject, transfer_syntax: &str) -> Vec<u8> {
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(transfer_syntax)
        .media_storage_sop_class_uid(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(INSTANCE_UID);
    let file = data_set.with_exact_meta(meta.build().expect("meta table"));
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).expect("write instance");
    bytes
}

#[test]
fn synthetic_instance_terms_and_frames_in_every_native_encoding() {
    for transfer_syntax in [ELE, ILE, EBE] {
        let bytes = write_instance(synthetic_data_set(), transfer_syntax);
        let parsed = parse_instance(Cursor::new(&bytes)).expect("parse synthetic");
        assert_eq!(parsed.study_instance_uid, STUDY_UID);
        assert_eq!(parsed.transfer_syntax_uid, transfer_syntax);

        let value_of = |tag| {
            let attribute = searchable_by_tag(tag).expect("searchable");
            parsed
                .search_terms
                .iter()
                .filter(|term| std::ptr::eq(term.attribute, attribute))
                .map(|term| term.value.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            value_of(tags::PATIENT_NAME),
            vec![SearchValue::PersonName {
                exact: "Müller^Jöhn=ミュラー^ジョン".into(),
                words: vec![
                    "muller".into(),
                    "john".into(),
                    "ミュラー".into(),
                    "ジョン".into()
                ],
            }]
        );
        assert_eq!(
            value_of(tags::REFERRING_PHYSICIAN_NAME),
            vec![SearchValue::PersonName {
                exact: "Ŝtefan^Ångström^^Dr.".into(),
                words: vec!["stefan".into(), "angstrom".into(), "dr.".into()],
            }]
        );
        assert_eq!(
            value_of(tags::PATIENT_ID),
            vec![SearchValue::Exact("MARKER-ID".into())]
        );
        assert_eq!(
            value_of(tags::STUDY_DATE),
            vec![SearchValue::Date(19991231)]
        );
        // An unparseable date is not searchable, but stays in the metadata.
        assert!(value_of(tags::PATIENT_BIRTH_DATE).is_empty());
        let metadata = parsed.metadata.to_map().expect("metadata");
        assert!(metadata.get("00100030").is_some());

        // Bulk binary left out, small binary kept inline.
        assert!(metadata.get("00091001").is_none());
        // Implicit VR reads unknown private attributes back as UN.
        assert_eq!(metadata["00091002"]["InlineBinary"], "AQIDBA==");
        assert!(metadata.get("7FE00010").is_none());

        let frame_map = parsed.frames.expect("frames");
        assert!(!frame_map.encapsulated);
        assert_eq!(frame_map.frame_count(), 3);
        for index in 0..3 {
            let frame = read_frame(Cursor::new(&bytes), &frame_map, index).expect("frame");
            let words: Vec<u16> = frame
                .chunks_exact(2)
                .map(|pair| {
                    let pair = [pair[0], pair[1]];
                    if transfer_syntax == EBE {
                        u16::from_be_bytes(pair)
                    } else {
                        u16::from_le_bytes(pair)
                    }
                })
                .collect();
            let first = index as u16 * 8;
            assert_eq!(
                words,
                (first..first + 8).collect::<Vec<_>>(),
                "{transfer_syntax}"
            );
        }
    }
}

#[test]
fn missing_and_invalid_uids_are_refused() {
    let cases: [(dicom_core::Tag, Option<String>, &str, bool); 6] = [
        (tags::STUDY_INSTANCE_UID, None, "StudyInstanceUID", true),
        (tags::SERIES_INSTANCE_UID, None, "SeriesInstanceUID", true),
        (tags::SOP_CLASS_UID, None, "SOPClassUID", true),
        (
            tags::STUDY_INSTANCE_UID,
            Some(String::new()),
            "StudyInstanceUID",
            true,
        ),
        (
            tags::SERIES_INSTANCE_UID,
            Some("1.2.abc".into()),
            "SeriesInstanceUID",
            false,
        ),
        (
            tags::SOP_INSTANCE_UID,
            Some("1".repeat(65)),
            "SOPInstanceUID",
            false,
        ),
    ];
    for (tag, replacement, keyword, missing) in cases {
        let mut data_set = synthetic_data_set();
        match replacement {
            None => {
                data_set.remove_element(tag);
            }
            Some(value) => {
                data_set.put(DataElement::new(tag, VR::UI, value));
            }
        }
        let bytes = write_instance(data_set, ELE);
        let error = parse_instance(Cursor::new(&bytes)).expect_err("refused");
        match error {
            InstanceError::MissingAttribute(name) if missing => assert_eq!(name, keyword),
            InstanceError::InvalidUid(name) if !missing => assert_eq!(name, keyword),
            other => panic!("{keyword}: unexpected {other:?}"),
        }
        // The message names the attribute, never the value.
        assert!(!error_message_contains_value(&bytes, keyword));
    }
    // A 64-character UID is valid.
    let mut data_set = synthetic_data_set();
    let long_uid = format!("1.{}", "2".repeat(62));
    data_set.put(DataElement::new(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        long_uid.as_str(),
    ));
    let parsed = parse_instance(Cursor::new(write_instance(data_set, ELE))).expect("64 chars");
    assert_eq!(parsed.series_instance_uid, long_uid);
}

fn error_message_contains_value(bytes: &[u8], keyword: &str) -> bool {
    let message = match parse_instance(Cursor::new(bytes)) {
        Err(error) => error.to_string(),
        Ok(_) => return false,
    };
    assert!(message.contains(keyword));
    message.contains("1.2.abc") || message.contains("11111111")
}

#[test]
fn pixel_data_shorter_than_its_frames_is_refused() {
    let mut data_set = synthetic_data_set();
    data_set.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, "4"));
    let bytes = write_instance(data_set, ELE);
    assert!(matches!(
        parse_instance(Cursor::new(&bytes)),
        Err(InstanceError::PixelData(_))
    ));

    let mut data_set = synthetic_data_set();
    data_set.remove_element(tags::ROWS);
    let bytes = write_instance(data_set, ELE);
    assert!(matches!(
        parse_instance(Cursor::new(&bytes)),
        Err(InstanceError::InvalidAttribute("Rows"))
    ));
}

#[test]
fn garbage_is_unreadable() {
    let error = parse_instance(Cursor::new(vec![0u8; 300])).expect_err("garbage");
    assert!(matches!(error, InstanceError::Unreadable(_)), "{error:?}");
    let error = parse_instance(Cursor::new(Vec::new())).expect_err("empty");
    assert!(matches!(error, InstanceError::Unreadable(_)), "{error:?}");
}

#[test]
fn hostile_lengths_and_truncation_are_refused_before_parsing() {
    let bytes = write_instance(synthetic_data_set(), ELE);
    // The header of the large private OB value: tag (0009,1001), "OB", reserved, length.
    let header = [0x09, 0x00, 0x01, 0x10, b'O', b'B', 0, 0];
    let at = bytes
        .windows(header.len())
        .position(|window| window == header)
        .expect("private OB header");
    let mut hostile = bytes.clone();
    hostile[at + 8..at + 12].copy_from_slice(&0xF000_0000_u32.to_le_bytes());
    assert!(matches!(
        parse_instance(Cursor::new(&hostile)),
        Err(InstanceError::Unreadable(_))
    ));
    // Cut inside the pixel data.
    let truncated = &bytes[..bytes.len() - 10];
    assert!(matches!(
        parse_instance(Cursor::new(truncated)),
        Err(InstanceError::PixelData(_))
    ));
    // Cut inside the header.
    assert!(parse_instance(Cursor::new(&bytes[..at + 4])).is_err());
    // An element after the pixel data that claims 4 GB (found by fuzzing the pixel services):
    // the parse at STOW stops at the pixel data, but a full parse later (rendering, bulk
    // update) reads on, so the scan checks it too.
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(&[0xFC, 0xFF, 0xFC, 0xFF, b'O', b'B', 0, 0]);
    trailing.extend_from_slice(&0xF200_0000_u32.to_le_bytes());
    trailing.extend_from_slice(&[0; 16]);
    let refused = parse_instance(Cursor::new(&trailing));
    assert!(
        matches!(&refused, Err(InstanceError::Unreadable(reason)) if reason.contains("past the end")),
        "{:?}",
        refused.err()
    );
    // The same padding element with its true length is fine.
    let mut padded = bytes.clone();
    padded.extend_from_slice(&[0xFC, 0xFF, 0xFC, 0xFF, b'O', b'B', 0, 0]);
    padded.extend_from_slice(&16_u32.to_le_bytes());
    padded.extend_from_slice(&[0; 16]);
    assert!(parse_instance(Cursor::new(&padded)).is_ok());
}

#[test]
fn an_unknown_vr_is_scanned_with_the_length_the_parser_reads() {
    // The parser reads an explicit VR it does not know as UN: two reserved bytes and a 32-bit
    // length. PatientID (0010,0020) LO "MARKER-ID " relabelled "ZZ" then claims a length of
    // "MARK" read as a number (1.26 GB), which the parser would allocate before reading; the
    // scan must read the same length and refuse it first.
    let bytes = write_instance(synthetic_data_set(), ELE);
    let header = [0x10, 0x00, 0x20, 0x00, b'L', b'O', 10, 0];
    let at = bytes
        .windows(header.len())
        .position(|window| window == header)
        .expect("PatientID header");
    let mut hostile = bytes.clone();
    hostile[at + 4..at + 6].copy_from_slice(b"ZZ");
    let error = parse_instance(Cursor::new(&hostile)).expect_err("refused");
    assert!(
        error.to_string().contains("runs past the end"),
        "refused by the scan, not the parser: {error}"
    );
}

#[test]
fn a_binary_value_the_parser_cannot_read_whole_is_refused() {
    // The parser reads a 3-byte US value as one number and moves on by 2 bytes, so its next
    // header would start inside the value, where the scan never looked (a fuzzed part made it
    // allocate 1.8 GB that way). Rows (0028,0010) is given 3 bytes, in explicit and implicit VR.
    for (transfer_syntax, header, hostile_header) in [
        (
            ELE,
            vec![0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0],
            vec![0x28, 0x00, 0x10, 0x00, b'U', b'S', 3, 0],
        ),
        (
            ILE,
            vec![0x28, 0x00, 0x10, 0x00, 2, 0, 0, 0],
            vec![0x28, 0x00, 0x10, 0x00, 3, 0, 0, 0],
        ),
    ] {
        let bytes = write_instance(synthetic_data_set(), transfer_syntax);
        let at = bytes
            .windows(header.len())
            .position(|window| window == header)
            .expect("Rows header");
        let mut hostile = bytes[..at].to_vec();
        hostile.extend_from_slice(&hostile_header);
        hostile.extend_from_slice(&[4, 0, 0]);
        hostile.extend_from_slice(&bytes[at + header.len() + 2..]);
        let error = parse_instance(Cursor::new(&hostile)).expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("not a multiple of its value size"),
            "{transfer_syntax}: {error}"
        );
    }
}

#[test]
fn a_delimiter_outside_any_sequence_is_refused() {
    // An item delimitation item at the top level: the parser steps over it and reads on, so
    // the scan may not stop there as it does at an attribute past the pixel data.
    let bytes = write_instance(synthetic_data_set(), ELE);
    let header = [0x10, 0x00, 0x20, 0x00, b'L', b'O', 10, 0];
    let at = bytes
        .windows(header.len())
        .position(|window| window == header)
        .expect("PatientID header");
    let mut hostile = bytes[..at].to_vec();
    hostile.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
    hostile.extend_from_slice(&bytes[at..]);
    let error = parse_instance(Cursor::new(&hostile)).expect_err("refused");
    assert!(
        error.to_string().contains("outside any sequence"),
        "{error}"
    );
}

#[test]
fn a_value_of_undefined_length_is_walked_as_the_parser_reads_it() {
    // An OB value of undefined length that is not pixel data: the parser reads it as a
    // sequence of data set items, so the header inside its item (a UN of 0xF000_0000 bytes)
    // must be checked like any other, not skipped over as a pixel fragment.
    let bytes = write_instance(synthetic_data_set(), ELE);
    let header = [0x10, 0x00, 0x20, 0x00, b'L', b'O', 10, 0];
    let at = bytes
        .windows(header.len())
        .position(|window| window == header)
        .expect("PatientID header");
    let mut hostile = bytes[..at].to_vec();
    hostile.extend_from_slice(&[
        0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    hostile.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 12, 0, 0, 0]);
    hostile.extend_from_slice(&[0x09, 0x00, 0x11, 0x10, b'U', b'N', 0, 0, 0, 0, 0, 0xF0]);
    hostile.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    hostile.extend_from_slice(&bytes[at..]);
    let error = parse_instance(Cursor::new(&hostile)).expect_err("refused");
    assert!(error.to_string().contains("runs past the end"), "{error}");
}

/// A 3-frame JPEG-baseline instance whose fragments are written as given, with an optional
/// basic offset table.
fn encapsulated_instance(offset_table: Vec<u32>, fragments: Vec<Vec<u8>>) -> Vec<u8> {
    use dicom_core::value::{PixelFragmentSequence, Value as DicomValue};
    let mut data_set = synthetic_data_set();
    data_set.put(DataElement::new(
        tags::BITS_ALLOCATED,
        VR::US,
        PrimitiveValue::from(8_u16),
    ));
    data_set.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        DicomValue::PixelSequence(PixelFragmentSequence::new(offset_table, fragments)),
    ));
    write_instance(data_set, JPEG_BASELINE)
}

fn frames_of(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let parsed = parse_instance(Cursor::new(bytes)).expect("parse encapsulated");
    let frame_map = parsed.frames?;
    assert!(frame_map.encapsulated);
    Some(
        (0..frame_map.frame_count())
            .map(|index| read_frame(Cursor::new(bytes), &frame_map, index).expect("frame"))
            .collect(),
    )
}

#[test]
fn encapsulated_fragments_are_assigned_to_frames() {
    let frame_1a = vec![0xFF, 0xD8, 1, 2];
    let frame_1b = vec![3, 4, 0xFF, 0xD9];
    let frame_2 = vec![0xFF, 0xD8, 5, 6, 0xFF, 0xD9];
    let frame_3a = vec![0xFF, 0xD8];
    let frame_3b = vec![7, 0xFF, 0xD9, 0x00];
    let fragments = vec![
        frame_1a.clone(),
        frame_1b.clone(),
        frame_2.clone(),
        frame_3a.clone(),
        frame_3b.clone(),
    ];
    let expected = vec![
        [frame_1a.clone(), frame_1b.clone()].concat(),
        frame_2.clone(),
        [frame_3a.clone(), frame_3b.clone()].concat(),
    ];

    // Empty offset table: grouped by end-of-image markers.
    let bytes = encapsulated_instance(vec![], fragments.clone());
    assert_eq!(frames_of(&bytes), Some(expected.clone()));

    // Offset table: item offsets from the first fragment's item header (8-byte headers).
    let bytes = encapsulated_instance(vec![0, 24, 38], fragments.clone());
    assert_eq!(frames_of(&bytes), Some(expected));

    // Without markers only the table can group them.
    let bytes = encapsulated_instance(vec![0, 20, 30], vec![vec![1, 2]; 5]);
    assert_eq!(
        frames_of(&bytes),
        Some(vec![vec![1, 2, 1, 2], vec![1, 2], vec![1, 2, 1, 2]])
    );

    // One fragment per frame, markers or not.
    let bytes = encapsulated_instance(vec![], vec![vec![1, 2], vec![3, 4], vec![5, 6]]);
    assert_eq!(
        frames_of(&bytes),
        Some(vec![vec![1, 2], vec![3, 4], vec![5, 6]])
    );

    // More fragments than frames, no table, no markers: the frames cannot be addressed.
    let bytes = encapsulated_instance(vec![], vec![vec![1, 2]; 5]);
    assert_eq!(frames_of(&bytes), None);

    // Fewer fragments than frames: the same.
    let bytes = encapsulated_instance(vec![], vec![vec![1, 2]; 2]);
    assert_eq!(frames_of(&bytes), None);
}

/// Hostile values of searchable attributes are refused while the values are read, before
/// anything is derived from them: the names that once cost seconds to minutes of token
/// building (a 200,000-letter name; 20,000 characters that each decompose into 18) are refused
/// in a linear scan, and one value per attribute beyond the multiplicity limit too.
#[test]
fn over_long_and_over_many_search_values_are_refused() {
    let implicit = "1.2.840.10008.1.2";
    let cases: [(dicom_core::Tag, VR, String, &str); 4] = [
        (
            tags::PATIENT_NAME,
            VR::PN,
            "a".repeat(200_000),
            "PatientName",
        ),
        (
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            "\u{fdfa}".repeat(20_000),
            "ReferringPhysicianName",
        ),
        // Four groups, each short.
        (tags::PATIENT_NAME, VR::PN, "a=b=c=d".into(), "PatientName"),
        (
            tags::ACCESSION_NUMBER,
            VR::SH,
            "7".repeat(65),
            "AccessionNumber",
        ),
    ];
    for (tag, vr, value, keyword) in cases {
        let mut data_set = synthetic_data_set();
        data_set.put(DataElement::new(tag, vr, value.as_str()));
        let bytes = write_instance(data_set, implicit);
        let started = std::time::Instant::now();
        let error = parse_instance(Cursor::new(&bytes)).expect_err("refused");
        assert!(
            matches!(error, InstanceError::ValueTooLong(name) if name == keyword),
            "{keyword}: {error:?}"
        );
        assert!(!error_message_contains_value(&bytes, keyword));
        // Generous for a debug build on a busy machine; the quadratic path took seconds.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
    let mut data_set = synthetic_data_set();
    let modalities = vec!["OT"; 17].join("\\");
    data_set.put(DataElement::new(
        tags::MODALITY,
        VR::CS,
        modalities.as_str(),
    ));
    let error = parse_instance(Cursor::new(write_instance(data_set, ELE))).expect_err("17 values");
    assert!(
        matches!(
            error,
            InstanceError::TooManyValues("Modality" | "ModalitiesInStudy")
        ),
        "{error:?}"
    );
    // Within the tolerance: a description a little past LO's 64 characters, three name groups.
    let mut data_set = synthetic_data_set();
    data_set.put(DataElement::new(
        tags::STUDY_DESCRIPTION,
        VR::LO,
        "d".repeat(70).as_str(),
    ));
    data_set.put(DataElement::new(
        tags::PATIENT_NAME,
        VR::PN,
        format!("{}=b=c", "a".repeat(256)).as_str(),
    ));
    parse_instance(Cursor::new(write_instance(data_set, ELE))).expect("within the tolerance");
}

/// A bulk update rewrites the demographics and keeps everything else: the UIDs, the transfer
/// syntax and every frame's bytes (native and encapsulated), and a non-ASCII name switches the
/// instance to UTF-8.
#[test]
fn bulk_update_changes_demographics_and_keeps_pixel_data() {
    use hds_dicom::update::ChangeDataset;
    let change = ChangeDataset::parse(&json!({
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Zoë"}]},
        "00100020": {"vr": "LO", "Value": ["NEW-ID"]},
        "00081030": {"vr": "LO", "Value": ["Updated study"]},
    }))
    .expect("a valid change");
    for path in [
        pydicom_test_file("CT_small.dcm"),
        pydicom_test_file("JPEG2000.dcm"),
    ] {
        let bytes = std::fs::read(&path).expect("read");
        let before = parse_instance(std::io::Cursor::new(bytes.clone())).expect("parse before");
        let updated = change.apply(&bytes).expect("apply");
        let after = parse_instance(std::io::Cursor::new(updated.clone())).expect("parse after");
        let study = after.study_attributes.to_map().expect("study attributes");
        assert_eq!(
            study["00100010"],
            json!({"vr": "PN", "Value": [{"Alphabetic": "Müller^Zoë"}]})
        );
        assert_eq!(study["00100020"]["Value"][0], "NEW-ID");
        assert_eq!(after.sop_instance_uid, before.sop_instance_uid);
        assert_eq!(after.series_instance_uid, before.series_instance_uid);
        assert_eq!(after.transfer_syntax_uid, before.transfer_syntax_uid);
        let (old_frames, new_frames) = (
            before.frames.expect("frames"),
            after.frames.expect("frames"),
        );
        assert_eq!(old_frames.frames.len(), new_frames.frames.len());
        for index in 0..old_frames.frames.len() {
            let old =
                read_frame(std::io::Cursor::new(&bytes), &old_frames, index).expect("old frame");
            let new =
                read_frame(std::io::Cursor::new(&updated), &new_frames, index).expect("new frame");
            assert_eq!(old, new, "frame {index} of {}", path.display());
        }
    }
}
