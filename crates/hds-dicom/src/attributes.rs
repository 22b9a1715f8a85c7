//! The attributes QIDO-RS can search on, the levels they live at, and the attributes each
//! level returns by default.

use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::{StandardDataDictionary, tags};

/// The three levels of the DICOM information model that QIDO-RS searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum QueryLevel {
    /// Patient and study attributes.
    Study,
    /// Series attributes.
    Series,
    /// Instance attributes.
    Instance,
}

/// How a searchable attribute matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchKind {
    /// Exact match on the normalized value (UIDs, IDs, codes, descriptions).
    Exact,
    /// Person name: exact, or with `fuzzymatching=true` prefix-word match on name parts.
    PersonName,
    /// DA value: exact, or a range `a-b`, `a-`, `-b`.
    Date,
}

/// One attribute QIDO-RS can search on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchableAttribute {
    /// The attribute's tag.
    pub tag: Tag,
    /// Its DICOM keyword, e.g. `PatientName`.
    pub keyword: &'static str,
    /// The level whose rows carry it.
    pub level: QueryLevel,
    /// How it matches.
    pub kind: SearchKind,
}

const fn searchable(
    tag: Tag,
    keyword: &'static str,
    level: QueryLevel,
    kind: SearchKind,
) -> SearchableAttribute {
    SearchableAttribute {
        tag,
        keyword,
        level,
        kind,
    }
}

static SEARCHABLE_ATTRIBUTES: [SearchableAttribute; 14] = [
    searchable(
        tags::STUDY_INSTANCE_UID,
        "StudyInstanceUID",
        QueryLevel::Study,
        SearchKind::Exact,
    ),
    searchable(
        tags::PATIENT_NAME,
        "PatientName",
        QueryLevel::Study,
        SearchKind::PersonName,
    ),
    searchable(
        tags::PATIENT_ID,
        "PatientID",
        QueryLevel::Study,
        SearchKind::Exact,
    ),
    searchable(
        tags::PATIENT_BIRTH_DATE,
        "PatientBirthDate",
        QueryLevel::Study,
        SearchKind::Date,
    ),
    searchable(
        tags::ACCESSION_NUMBER,
        "AccessionNumber",
        QueryLevel::Study,
        SearchKind::Exact,
    ),
    searchable(
        tags::REFERRING_PHYSICIAN_NAME,
        "ReferringPhysicianName",
        QueryLevel::Study,
        SearchKind::PersonName,
    ),
    searchable(
        tags::STUDY_DATE,
        "StudyDate",
        QueryLevel::Study,
        SearchKind::Date,
    ),
    searchable(
        tags::STUDY_DESCRIPTION,
        "StudyDescription",
        QueryLevel::Study,
        SearchKind::Exact,
    ),
    searchable(
        tags::MODALITIES_IN_STUDY,
        "ModalitiesInStudy",
        QueryLevel::Study,
        SearchKind::Exact,
    ),
    searchable(
        tags::SERIES_INSTANCE_UID,
        "SeriesInstanceUID",
        QueryLevel::Series,
        SearchKind::Exact,
    ),
    searchable(
        tags::MODALITY,
        "Modality",
        QueryLevel::Series,
        SearchKind::Exact,
    ),
    searchable(
        tags::PERFORMED_PROCEDURE_STEP_START_DATE,
        "PerformedProcedureStepStartDate",
        QueryLevel::Series,
        SearchKind::Date,
    ),
    searchable(
        tags::MANUFACTURER_MODEL_NAME,
        "ManufacturerModelName",
        QueryLevel::Series,
        SearchKind::Exact,
    ),
    searchable(
        tags::SOP_INSTANCE_UID,
        "SOPInstanceUID",
        QueryLevel::Instance,
        SearchKind::Exact,
    ),
];

/// How many times its value representation's maximum length a searchable value may be. Some
/// modalities overrun the maximum a little (a 70-character StudyDescription); a value far past
/// it is not a real value but an attack on the index, whose search tokens it would multiply.
pub const LENGTH_TOLERANCE: usize = 4;

/// The most values (value multiplicity) a searchable attribute may carry in one instance.
pub const MAX_SEARCH_VALUES: usize = 16;

/// The most component groups of a person name (alphabetic, ideographic, phonetic; PS3.5 6.2.1).
const MAX_NAME_GROUPS: usize = 3;

/// The maximum length in characters of one value of `attribute`'s value representation
/// (PS3.5 table 6.2-1): UI 64, LO 64, SH 16, CS 16, DA 8, and PN 64 per component group.
pub fn value_representation_max_chars(attribute: &SearchableAttribute) -> usize {
    match attribute.tag {
        tags::ACCESSION_NUMBER | tags::MODALITY | tags::MODALITIES_IN_STUDY => 16,
        tags::PATIENT_BIRTH_DATE | tags::STUDY_DATE | tags::PERFORMED_PROCEDURE_STEP_START_DATE => {
            8
        }
        // UI, LO, and PN per component group.
        _ => 64,
    }
}

/// Whether `value` (one value of `attribute`, as stored or as queried) is short enough to be
/// indexed or searched: at most [`LENGTH_TOLERANCE`] times its value representation's maximum,
/// per component group for a person name (of which there are at most three). Counting stops at
/// the limit, so the check costs no more than the limit whatever the value's length.
pub fn within_length_limit(attribute: &SearchableAttribute, value: &str) -> bool {
    let limit = value_representation_max_chars(attribute) * LENGTH_TOLERANCE;
    let short = |text: &str| text.chars().take(limit + 1).count() <= limit;
    match attribute.kind {
        SearchKind::PersonName => {
            let mut groups = 0;
            value.split('=').all(|group| {
                groups += 1;
                groups <= MAX_NAME_GROUPS && short(group)
            })
        }
        SearchKind::Exact | SearchKind::Date => short(value),
    }
}

/// Every searchable attribute (StudyInstanceUID, PatientName, PatientID, PatientBirthDate,
/// AccessionNumber, ReferringPhysicianName, StudyDate, StudyDescription, ModalitiesInStudy,
/// SeriesInstanceUID, Modality, PerformedProcedureStepStartDate, ManufacturerModelName,
/// SOPInstanceUID).
///
/// ManufacturerModelName belongs to the General Equipment module, which is series-level here.
/// ModalitiesInStudy is not stored in instances: it is derived from each instance's Modality.
pub fn searchable_attributes() -> &'static [SearchableAttribute] {
    &SEARCHABLE_ATTRIBUTES
}

/// The searchable attribute with this tag, if any.
pub fn searchable_by_tag(tag: Tag) -> Option<&'static SearchableAttribute> {
    SEARCHABLE_ATTRIBUTES
        .iter()
        .find(|attribute| attribute.tag == tag)
}

/// Finds a searchable attribute by keyword (`PatientName`) or tag (`00100010`),
/// case-insensitively for keywords.
pub fn find_searchable(name_or_tag: &str) -> Option<&'static SearchableAttribute> {
    if let Some(tag) = parse_hex_tag(name_or_tag) {
        return searchable_by_tag(tag);
    }
    SEARCHABLE_ATTRIBUTES
        .iter()
        .find(|attribute| attribute.keyword.eq_ignore_ascii_case(name_or_tag))
}

/// Parses an 8-hex-digit tag such as `00100010` or `7FE00010` (either case).
pub fn parse_hex_tag(text: &str) -> Option<Tag> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let group = u16::from_str_radix(&text[..4], 16).ok()?;
    let element = u16::from_str_radix(&text[4..], 16).ok()?;
    Some(Tag(group, element))
}

/// Resolves an `includefield` value (a keyword or an 8-hex-digit tag) to a tag; `None` if unknown.
///
/// Keywords are those of the standard data dictionary, matched exactly as the standard spells
/// them (`PatientName`). Any well-formed hex tag resolves, private ones included.
pub fn resolve_tag(name_or_tag: &str) -> Option<Tag> {
    if let Some(tag) = parse_hex_tag(name_or_tag) {
        return Some(tag);
    }
    StandardDataDictionary
        .by_name(name_or_tag)
        .map(|entry| entry.tag())
}

/// Study level: SpecificCharacterSet, StudyDate, StudyTime, AccessionNumber,
/// InstanceAvailability, ModalitiesInStudy, ReferringPhysicianName, TimezoneOffsetFromUTC,
/// RetrieveURL, PatientName, PatientID, PatientBirthDate, PatientSex, StudyInstanceUID, StudyID
/// (PS3.18 table 10.6.3-3), plus StudyDescription as most servers return it.
static STUDY_RETURN_TAGS: [Tag; 16] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::INSTANCE_AVAILABILITY,
    tags::MODALITIES_IN_STUDY,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::RETRIEVE_URL,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_ID,
    tags::STUDY_DESCRIPTION,
];

/// Series level (PS3.18 table 10.6.3-4), plus SeriesDate and ManufacturerModelName.
static SERIES_RETURN_TAGS: [Tag; 12] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::MODALITY,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::SERIES_DESCRIPTION,
    tags::RETRIEVE_URL,
    tags::SERIES_INSTANCE_UID,
    tags::SERIES_NUMBER,
    tags::PERFORMED_PROCEDURE_STEP_START_DATE,
    tags::PERFORMED_PROCEDURE_STEP_START_TIME,
    tags::REQUEST_ATTRIBUTES_SEQUENCE,
    tags::SERIES_DATE,
    tags::MANUFACTURER_MODEL_NAME,
];

/// Instance level (PS3.18 table 10.6.3-5).
static INSTANCE_RETURN_TAGS: [Tag; 11] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
    tags::INSTANCE_AVAILABILITY,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::RETRIEVE_URL,
    tags::INSTANCE_NUMBER,
    tags::ROWS,
    tags::COLUMNS,
    tags::BITS_ALLOCATED,
    tags::NUMBER_OF_FRAMES,
];

/// The attributes QIDO-RS returns by default at a level (PS3.18 table 10.6.3-3 and friends),
/// not counting the computed `Number*Related*` attributes.
pub fn default_return_tags(level: QueryLevel) -> &'static [Tag] {
    match level {
        QueryLevel::Study => &STUDY_RETURN_TAGS,
        QueryLevel::Series => &SERIES_RETURN_TAGS,
        QueryLevel::Instance => &INSTANCE_RETURN_TAGS,
    }
}

/// Patient and General Study module attributes, kept per study.
static STUDY_LEVEL_TAGS: [Tag; 26] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
    tags::OTHER_PATIENT_I_DS_SEQUENCE,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_BIRTH_TIME,
    tags::PATIENT_SEX,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
    tags::PATIENT_COMMENTS,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_ID,
    tags::STUDY_DESCRIPTION,
    tags::PHYSICIANS_OF_RECORD,
    tags::NAME_OF_PHYSICIANS_READING_STUDY,
    tags::PROCEDURE_CODE_SEQUENCE,
    tags::ADMITTING_DIAGNOSES_DESCRIPTION,
];

/// General Series and General Equipment module attributes, kept per series.
static SERIES_LEVEL_TAGS: [Tag; 22] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::SERIES_INSTANCE_UID,
    tags::MODALITY,
    tags::SERIES_NUMBER,
    tags::SERIES_DESCRIPTION,
    tags::SERIES_DATE,
    tags::SERIES_TIME,
    tags::LATERALITY,
    tags::PERFORMED_PROCEDURE_STEP_START_DATE,
    tags::PERFORMED_PROCEDURE_STEP_START_TIME,
    tags::PERFORMED_PROCEDURE_STEP_ID,
    tags::PERFORMING_PHYSICIAN_NAME,
    tags::OPERATORS_NAME,
    tags::PROTOCOL_NAME,
    tags::BODY_PART_EXAMINED,
    tags::PATIENT_POSITION,
    tags::REQUEST_ATTRIBUTES_SEQUENCE,
    tags::MANUFACTURER,
    tags::MANUFACTURER_MODEL_NAME,
    tags::INSTITUTION_NAME,
    tags::STATION_NAME,
];

/// SOP Common and image attributes, kept per instance (TransferSyntaxUID comes from the file
/// meta group).
static INSTANCE_LEVEL_TAGS: [Tag; 16] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
    tags::TRANSFER_SYNTAX_UID,
    tags::INSTANCE_NUMBER,
    tags::CONTENT_DATE,
    tags::CONTENT_TIME,
    tags::IMAGE_TYPE,
    tags::ROWS,
    tags::COLUMNS,
    tags::BITS_ALLOCATED,
    tags::SAMPLES_PER_PIXEL,
    tags::PHOTOMETRIC_INTERPRETATION,
    tags::NUMBER_OF_FRAMES,
    tags::ACQUISITION_DATE_TIME,
];

/// The attributes an instance contributes to the rows of a level (the `*_attributes` maps of
/// [`crate::ParsedInstance`]): patient and study modules at study level, general series and
/// equipment at series level, SOP common and image attributes at instance level.
pub fn level_tags(level: QueryLevel) -> &'static [Tag] {
    match level {
        QueryLevel::Study => &STUDY_LEVEL_TAGS,
        QueryLevel::Series => &SERIES_LEVEL_TAGS,
        QueryLevel::Instance => &INSTANCE_LEVEL_TAGS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searchable_lookup_by_keyword_and_tag() {
        let by_keyword = find_searchable("patientname").map(|a| a.tag);
        assert_eq!(by_keyword, Some(tags::PATIENT_NAME));
        let by_tag = find_searchable("00100010").map(|a| a.keyword);
        assert_eq!(by_tag, Some("PatientName"));
        let model = find_searchable("ManufacturerModelName").map(|a| a.level);
        assert_eq!(model, Some(QueryLevel::Series));
        assert_eq!(
            find_searchable("0020000d").map(|a| a.keyword),
            Some("StudyInstanceUID")
        );
        assert!(find_searchable("PatientSex").is_none());
        assert!(find_searchable("0010004").is_none());
    }

    #[test]
    fn every_searchable_keyword_matches_the_dictionary() {
        for attribute in searchable_attributes() {
            assert_eq!(
                resolve_tag(attribute.keyword),
                Some(attribute.tag),
                "{}",
                attribute.keyword
            );
        }
    }

    #[test]
    fn resolve_any_keyword_or_hex_tag() {
        assert_eq!(resolve_tag("Rows"), Some(tags::ROWS));
        assert_eq!(resolve_tag("7FE00010"), Some(tags::PIXEL_DATA));
        assert_eq!(resolve_tag("00091001"), Some(Tag(0x0009, 0x1001)));
        assert_eq!(resolve_tag("NotAKeyword"), None);
        assert_eq!(resolve_tag("0010001G"), None);
    }

    #[test]
    fn length_limits_follow_the_value_representation() {
        let name = find_searchable("PatientName").expect("PatientName");
        let accession = find_searchable("AccessionNumber").expect("AccessionNumber");
        assert!(within_length_limit(name, &"a".repeat(256)));
        assert!(!within_length_limit(name, &"a".repeat(257)));
        // Per component group, three groups at most.
        let group = "b".repeat(256);
        assert!(within_length_limit(
            name,
            &format!("{group}={group}={group}")
        ));
        assert!(!within_length_limit(
            name,
            &format!("{group}={group}={group}=x")
        ));
        assert!(within_length_limit(accession, &"1".repeat(64)));
        assert!(!within_length_limit(accession, &"1".repeat(65)));
        // Characters, not bytes: a 64-character name in a three-byte script is fine.
        assert!(within_length_limit(name, &"\u{5c71}".repeat(256)));
    }

    #[test]
    fn default_return_tags_per_level() {
        assert!(default_return_tags(QueryLevel::Study).contains(&tags::PATIENT_NAME));
        assert!(default_return_tags(QueryLevel::Series).contains(&tags::MODALITY));
        assert!(default_return_tags(QueryLevel::Instance).contains(&tags::SOP_INSTANCE_UID));
        assert!(!default_return_tags(QueryLevel::Instance).contains(&tags::PATIENT_NAME));
    }
}
