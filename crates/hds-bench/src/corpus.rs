//! The synthetic corpus: CT-like instances written with dicom-rs.
//!
//! Every value is random but valid, and the generator is seeded, so a corpus
//! can be produced again (for example to read back what an earlier run stored)
//! by passing the same seed and shape.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::{Date, Month};

/// Explicit VR Little Endian: the one transfer syntax every DICOMweb server
/// must accept, and native pixel data needs no codec on either side.
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// The matrix of one image: rows by columns of 16-bit samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelSize {
    /// Number of rows.
    pub rows: u16,
    /// Number of columns.
    pub columns: u16,
}

impl PixelSize {
    /// Bytes of native pixel data for one frame at 16 bits allocated.
    pub fn pixel_bytes(self) -> usize {
        usize::from(self.rows) * usize::from(self.columns) * 2
    }
}

impl fmt::Display for PixelSize {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}x{}", self.rows, self.columns)
    }
}

impl FromStr for PixelSize {
    type Err = String;

    /// Accepts `N` (a square image) or `ROWSxCOLUMNS`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parse_dimension = |part: &str| -> Result<u16, String> {
            let value: u16 = part
                .trim()
                .parse()
                .map_err(|_| format!("`{part}` is not a number from 1 to 65535"))?;
            if value == 0 {
                return Err("an image dimension must be at least 1".to_string());
            }
            Ok(value)
        };
        match text.split_once(['x', 'X']) {
            Some((rows, columns)) => Ok(PixelSize {
                rows: parse_dimension(rows)?,
                columns: parse_dimension(columns)?,
            }),
            None => {
                let side = parse_dimension(text)?;
                Ok(PixelSize {
                    rows: side,
                    columns: side,
                })
            }
        }
    }
}

/// The shape of the corpus to generate.
#[derive(Clone, Copy, Debug)]
pub struct CorpusShape {
    /// Number of studies (one patient each).
    pub studies: usize,
    /// Series in each study.
    pub series_per_study: usize,
    /// Instances in each study, spread evenly over its series.
    pub instances_per_study: usize,
    /// Image matrix of every instance.
    pub pixel_size: PixelSize,
    /// Seed of the random generator: the same seed and shape give the same corpus.
    pub seed: u64,
}

impl CorpusShape {
    /// Checks that the shape describes at least one instance and no empty series.
    pub fn validate(&self) -> Result<(), String> {
        if self.studies == 0 || self.series_per_study == 0 || self.instances_per_study == 0 {
            return Err(
                "studies, series per study and instances per study must be at least 1".into(),
            );
        }
        if self.instances_per_study < self.series_per_study {
            return Err(
                "instances per study must be at least the number of series per study".into(),
            );
        }
        Ok(())
    }
}

/// One generated study: what searches need to know about it.
#[derive(Clone, Debug)]
pub struct Study {
    /// Study Instance UID.
    pub study_uid: String,
    /// Patient ID, unique to this study within the corpus.
    pub patient_id: String,
    /// Study Date.
    pub study_date: Date,
    /// Number of instances in the study.
    pub instance_count: usize,
}

/// One generated instance: its identifiers and its encoded Part 10 file.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Index of the study in [`Corpus::studies`].
    pub study_index: usize,
    /// Series Instance UID.
    pub series_uid: String,
    /// Number of instances in this instance's series.
    pub series_instance_count: usize,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// The DICOM Part 10 file (preamble, meta group, data set).
    pub file: Bytes,
}

/// The whole generated corpus.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// The studies, in generation order.
    pub studies: Vec<Study>,
    /// The instances, study by study, series by series.
    pub instances: Vec<Instance>,
}

impl Corpus {
    /// Total size of all encoded instances, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.instances
            .iter()
            .map(|instance| instance.file.len() as u64)
            .sum()
    }
}

/// Errors from generating the corpus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorpusError {
    /// The requested shape is impossible.
    #[error("invalid corpus shape: {0}")]
    Shape(String),
    /// dicom-rs refused to build or write an instance.
    #[error("could not encode an instance: {0}")]
    Encode(String),
}

/// A UID under the `2.25` root: the decimal form of a random (version 4) UUID,
/// which needs no registered organisation root and cannot collide in practice.
pub fn random_uid(rng: &mut impl Rng) -> String {
    let random_bytes: [u8; 16] = rng.r#gen();
    let uuid = uuid::Builder::from_random_bytes(random_bytes).into_uuid();
    format!("2.25.{}", uuid.as_u128())
}

const FAMILY_NAMES: &[&str] = &[
    "ANDERSEN",
    "BAKER",
    "CHEN",
    "DUBOIS",
    "ESPOSITO",
    "FISCHER",
    "GARCIA",
    "HANSEN",
    "IVANOV",
    "JONES",
    "KOWALSKI",
    "LOPEZ",
    "MULLER",
    "NGUYEN",
    "OKAFOR",
    "PETERSEN",
    "QUINN",
    "ROSSI",
    "SATO",
    "TANAKA",
    "UNDERWOOD",
    "VARGA",
    "WILSON",
    "XU",
    "YILMAZ",
    "ZHANG",
];

const GIVEN_NAMES: &[&str] = &[
    "ALEX", "BRIGIT", "CARLOS", "DANA", "EMIL", "FATIMA", "GREGOR", "HANNA", "IGOR", "JUNE", "KAI",
    "LINA", "MARTIN", "NORA", "OSKAR", "PRIYA", "RUTH", "SAMUEL", "TOVE", "VIKTOR",
];

const BODY_PARTS: &[&str] = &["CHEST", "ABDOMEN", "HEAD", "PELVIS", "NECK"];

/// Pads a value to even length, as Part 5 requires (NUL for UIDs, space for text).
fn even(value: String, padding: char) -> String {
    let mut value = value;
    if value.len() % 2 == 1 {
        value.push(padding);
    }
    value
}

fn text(tag: dicom_core::Tag, vr: VR, value: impl Into<String>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(even(value.into(), ' ')))
}

fn uid(tag: dicom_core::Tag, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(
        tag,
        VR::UI,
        PrimitiveValue::from(even(value.to_string(), '\0')),
    )
}

fn unsigned_short(tag: dicom_core::Tag, value: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}

fn dicom_date(date: Date) -> String {
    format!(
        "{:04}{:02}{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

fn random_date(rng: &mut impl Rng, first_year: i32, last_year: i32) -> Date {
    let year = rng.gen_range(first_year..=last_year);
    let month = Month::try_from(rng.gen_range(1u8..=12)).unwrap_or(Month::January);
    // Day 28 exists in every month, so only the fallback of an impossible
    // date is needed to keep this total.
    let day = rng.gen_range(1u8..=28);
    Date::from_calendar_date(year, month, day).unwrap_or(Date::MIN)
}

/// Fills native 16-bit pixel data with a smooth CT-like pattern plus noise:
/// cheap to make and not a constant, so no layer can shortcut it.
fn pixel_data(size: PixelSize, rng: &mut impl Rng) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(size.pixel_bytes());
    let mut noise_state: u32 = rng.r#gen::<u32>() | 1;
    let centre_row = i32::from(size.rows) / 2;
    let centre_column = i32::from(size.columns) / 2;
    let radius_squared = (centre_row.min(centre_column).max(1)).pow(2);
    for row in 0..i32::from(size.rows) {
        for column in 0..i32::from(size.columns) {
            noise_state ^= noise_state << 13;
            noise_state ^= noise_state >> 17;
            noise_state ^= noise_state << 5;
            let distance_squared = (row - centre_row).pow(2) + (column - centre_column).pow(2);
            // Air outside the body, soft tissue inside: stored values of a
            // 12-bit CT with rescale intercept -1024.
            let base: u32 = if distance_squared < radius_squared {
                1064
            } else {
                24
            };
            let sample = ((base + (noise_state & 0x3F)) & 0x0FFF) as u16;
            pixels.extend_from_slice(&sample.to_le_bytes());
        }
    }
    pixels
}

/// Generates the corpus described by `shape`.
pub fn generate(shape: &CorpusShape) -> Result<Corpus, CorpusError> {
    shape.validate().map_err(CorpusError::Shape)?;
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let mut studies = Vec::with_capacity(shape.studies);
    let mut instances = Vec::with_capacity(shape.studies * shape.instances_per_study);

    for study_index in 0..shape.studies {
        let study_uid = random_uid(&mut rng);
        let frame_of_reference_uid = random_uid(&mut rng);
        let patient_id = format!("HDSB{:012}", rng.gen_range(0u64..1_000_000_000_000));
        let patient_name = format!(
            "{}^{}",
            FAMILY_NAMES[rng.gen_range(0..FAMILY_NAMES.len())],
            GIVEN_NAMES[rng.gen_range(0..GIVEN_NAMES.len())]
        );
        let birth_date = random_date(&mut rng, 1930, 2010);
        let study_date = random_date(&mut rng, 1995, 2024);
        let study_time = format!(
            "{:02}{:02}{:02}",
            rng.gen_range(7..19),
            rng.gen_range(0..60),
            rng.gen_range(0..60)
        );
        let sex = if rng.gen_bool(0.5) { "F" } else { "M" };
        let accession_number = format!("A{:09}", rng.gen_range(0u32..1_000_000_000));
        let body_part = BODY_PARTS[rng.gen_range(0..BODY_PARTS.len())];

        let series_uids: Vec<String> = (0..shape.series_per_study)
            .map(|_| random_uid(&mut rng))
            .collect();
        for instance_index in 0..shape.instances_per_study {
            // Contiguous, even split: series s holds instances
            // [s*n/S, (s+1)*n/S), and n >= S keeps every series non-empty.
            let series_index = instance_index * shape.series_per_study / shape.instances_per_study;
            let series_start = series_index * shape.instances_per_study / shape.series_per_study;
            let series_end =
                (series_index + 1) * shape.instances_per_study / shape.series_per_study;
            let sop_instance_uid = random_uid(&mut rng);
            let instance_number = instance_index - series_start + 1;
            let slice_position = -(instance_number as f64) * 1.25;

            let object = InMemDicomObject::from_element_iter([
                text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
                text(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL"),
                uid(tags::SOP_CLASS_UID, uids::CT_IMAGE_STORAGE),
                uid(tags::SOP_INSTANCE_UID, &sop_instance_uid),
                text(tags::STUDY_DATE, VR::DA, dicom_date(study_date)),
                text(tags::SERIES_DATE, VR::DA, dicom_date(study_date)),
                text(tags::STUDY_TIME, VR::TM, study_time.clone()),
                text(tags::ACCESSION_NUMBER, VR::SH, accession_number.clone()),
                text(tags::MODALITY, VR::CS, "CT"),
                text(tags::MANUFACTURER, VR::LO, "HDS BENCH"),
                text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""),
                text(tags::STUDY_DESCRIPTION, VR::LO, format!("CT {body_part}")),
                text(
                    tags::SERIES_DESCRIPTION,
                    VR::LO,
                    format!("AXIAL {}", series_index + 1),
                ),
                text(tags::PATIENT_NAME, VR::PN, patient_name.clone()),
                text(tags::PATIENT_ID, VR::LO, patient_id.clone()),
                text(tags::PATIENT_BIRTH_DATE, VR::DA, dicom_date(birth_date)),
                text(tags::PATIENT_SEX, VR::CS, sex),
                text(tags::BODY_PART_EXAMINED, VR::CS, body_part),
                text(tags::SLICE_THICKNESS, VR::DS, "1.25"),
                text(tags::KVP, VR::DS, "120"),
                uid(tags::STUDY_INSTANCE_UID, &study_uid),
                uid(tags::SERIES_INSTANCE_UID, &series_uids[series_index]),
                text(tags::STUDY_ID, VR::SH, "1"),
                text(tags::SERIES_NUMBER, VR::IS, (series_index + 1).to_string()),
                text(tags::INSTANCE_NUMBER, VR::IS, instance_number.to_string()),
                text(
                    tags::IMAGE_POSITION_PATIENT,
                    VR::DS,
                    format!("-250\\-250\\{slice_position}"),
                ),
                text(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0"),
                uid(tags::FRAME_OF_REFERENCE_UID, &frame_of_reference_uid),
                unsigned_short(tags::SAMPLES_PER_PIXEL, 1),
                text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
                unsigned_short(tags::ROWS, shape.pixel_size.rows),
                unsigned_short(tags::COLUMNS, shape.pixel_size.columns),
                text(tags::PIXEL_SPACING, VR::DS, "0.9765625\\0.9765625"),
                unsigned_short(tags::BITS_ALLOCATED, 16),
                unsigned_short(tags::BITS_STORED, 12),
                unsigned_short(tags::HIGH_BIT, 11),
                unsigned_short(tags::PIXEL_REPRESENTATION, 0),
                text(tags::WINDOW_CENTER, VR::DS, "40"),
                text(tags::WINDOW_WIDTH, VR::DS, "400"),
                text(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
                text(tags::RESCALE_SLOPE, VR::DS, "1"),
                DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OW,
                    PrimitiveValue::from(pixel_data(shape.pixel_size, &mut rng)),
                ),
            ]);
            let file_object = object
                .with_meta(FileMetaTableBuilder::new().transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN))
                .map_err(|error| CorpusError::Encode(error.to_string()))?;
            let mut encoded = Vec::with_capacity(shape.pixel_size.pixel_bytes() + 4096);
            file_object
                .write_all(&mut encoded)
                .map_err(|error| CorpusError::Encode(error.to_string()))?;
            instances.push(Instance {
                study_index,
                series_uid: series_uids[series_index].clone(),
                series_instance_count: series_end - series_start,
                sop_instance_uid,
                file: Bytes::from(encoded),
            });
        }
        studies.push(Study {
            study_uid,
            patient_id,
            study_date,
            instance_count: shape.instances_per_study,
        });
    }
    Ok(Corpus { studies, instances })
}

/// Formats a date as DICOM DA (`YYYYMMDD`), for QIDO range queries.
pub fn format_dicom_date(date: Date) -> String {
    dicom_date(date)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_object::OpenFileOptions;

    fn small_shape() -> CorpusShape {
        CorpusShape {
            studies: 2,
            series_per_study: 2,
            instances_per_study: 5,
            pixel_size: PixelSize {
                rows: 16,
                columns: 8,
            },
            seed: 7,
        }
    }

    #[test]
    fn pixel_size_parses_square_and_rectangular_forms() {
        assert_eq!(
            "512".parse::<PixelSize>(),
            Ok(PixelSize {
                rows: 512,
                columns: 512
            })
        );
        assert_eq!(
            "256x128".parse::<PixelSize>(),
            Ok(PixelSize {
                rows: 256,
                columns: 128
            })
        );
        assert!("0".parse::<PixelSize>().is_err());
        assert!("70000".parse::<PixelSize>().is_err());
        assert!("12xq".parse::<PixelSize>().is_err());
        assert_eq!(
            PixelSize {
                rows: 512,
                columns: 512
            }
            .pixel_bytes(),
            512 * 1024
        );
    }

    #[test]
    fn uids_are_2_25_decimal_and_fit_the_64_character_limit() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let generated = random_uid(&mut rng);
            assert!(generated.len() <= 64, "{generated}");
            let digits = generated.strip_prefix("2.25.").expect("2.25 root");
            assert!(digits.chars().all(|c| c.is_ascii_digit()));
            assert!(!digits.starts_with('0'));
        }
    }

    #[test]
    fn shape_rejects_empty_series() {
        let mut shape = small_shape();
        shape.series_per_study = 6;
        assert!(matches!(generate(&shape), Err(CorpusError::Shape(_))));
        shape.series_per_study = 0;
        assert!(generate(&shape).is_err());
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let first = generate(&small_shape()).expect("corpus");
        let again = generate(&small_shape()).expect("corpus");
        let mut other_shape = small_shape();
        other_shape.seed = 8;
        let other = generate(&other_shape).expect("corpus");
        assert_eq!(first.instances[3].file, again.instances[3].file);
        assert_ne!(
            first.instances[3].sop_instance_uid,
            other.instances[3].sop_instance_uid
        );
    }

    #[test]
    fn instances_read_back_as_valid_part10_files_with_the_recorded_identifiers() {
        let corpus = generate(&small_shape()).expect("corpus");
        assert_eq!(corpus.studies.len(), 2);
        assert_eq!(corpus.instances.len(), 10);
        let mut series_seen = std::collections::BTreeMap::new();
        for instance in &corpus.instances {
            assert_eq!(&instance.file[128..132], b"DICM");
            let object = OpenFileOptions::new()
                .from_reader(&instance.file[..])
                .expect("dicom-rs reads the generated file");
            assert_eq!(object.meta().transfer_syntax(), EXPLICIT_VR_LITTLE_ENDIAN);
            let read = |tag| {
                object
                    .element(tag)
                    .expect("element present")
                    .to_str()
                    .expect("string")
                    .trim_end_matches(['\0', ' '])
                    .to_string()
            };
            let study = &corpus.studies[instance.study_index];
            assert_eq!(read(tags::SOP_INSTANCE_UID), instance.sop_instance_uid);
            assert_eq!(read(tags::SERIES_INSTANCE_UID), instance.series_uid);
            assert_eq!(read(tags::STUDY_INSTANCE_UID), study.study_uid);
            assert_eq!(read(tags::PATIENT_ID), study.patient_id);
            assert_eq!(read(tags::STUDY_DATE), format_dicom_date(study.study_date));
            assert_eq!(read(tags::SOP_CLASS_UID), uids::CT_IMAGE_STORAGE);
            let pixels = object
                .element(tags::PIXEL_DATA)
                .expect("pixel data")
                .to_bytes()
                .expect("bytes");
            assert_eq!(pixels.len(), 16 * 8 * 2);
            *series_seen
                .entry(instance.series_uid.clone())
                .or_insert(0usize) += 1;
            assert!(instance.series_instance_count >= 2);
        }
        // Two studies of two series each, five instances split 2 + 3.
        assert_eq!(series_seen.len(), 4);
        let mut counts: Vec<usize> = series_seen.values().copied().collect();
        counts.sort_unstable();
        assert_eq!(counts, vec![2, 2, 3, 3]);
    }
}
