//! Extended query tags: the attributes a DICOM service adds to its search index beyond the
//! defaults ([`crate::attributes::searchable_attributes`]), as Azure's DICOM service defines
//! them: which definitions are valid, how an instance's value of one is read from its metadata
//! (DICOM JSON) and checked, and how a query value is normalized to match it.
//!
//! Values are checked against the tag's value representation strictly (no length tolerance):
//! a value that does not fit is an error of that instance for that tag, listed by the service,
//! never a refusal of the instance.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use serde_json::{Map, Value};

use crate::attributes::{MAX_SEARCH_VALUES, QueryLevel, parse_hex_tag, searchable_by_tag};
use crate::instance::SearchValue;
use crate::normalize::{name_words, normalize_exact, normalize_person_name, parse_date};

/// The most extended query tags one service may have (Azure's limit).
pub const MAX_EXTENDED_QUERY_TAGS: usize = 128;

/// The longest private creator (an LO value).
const MAX_PRIVATE_CREATOR_CHARS: usize = 64;

/// The longest tag path accepted before parsing (a keyword is at most a few dozen characters).
const MAX_PATH_CHARS: usize = 64;

/// The value representations an extended query tag may have (Azure's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ExtendedVr {
    AE,
    AS,
    CS,
    DA,
    DS,
    DT,
    FD,
    FL,
    IS,
    LO,
    PN,
    SH,
    SL,
    SS,
    TM,
    UI,
    UL,
    US,
}

/// How values of a value representation are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendedKind {
    /// Exact match of the padding-stripped string.
    Text,
    /// Person name: exact, or fuzzy by word prefixes.
    Name,
    /// Date: exact or range.
    Date,
    /// Integer, matched by its value (`007` is `7`).
    Integer,
    /// Single-precision float, matched by its value.
    Float32,
    /// Double-precision float (and DS), matched by its value.
    Float64,
}

const ALL_VRS: [ExtendedVr; 18] = [
    ExtendedVr::AE,
    ExtendedVr::AS,
    ExtendedVr::CS,
    ExtendedVr::DA,
    ExtendedVr::DS,
    ExtendedVr::DT,
    ExtendedVr::FD,
    ExtendedVr::FL,
    ExtendedVr::IS,
    ExtendedVr::LO,
    ExtendedVr::PN,
    ExtendedVr::SH,
    ExtendedVr::SL,
    ExtendedVr::SS,
    ExtendedVr::TM,
    ExtendedVr::UI,
    ExtendedVr::UL,
    ExtendedVr::US,
];

impl ExtendedVr {
    /// The VR of a two-letter code (either case), if it is a supported one.
    pub fn parse(code: &str) -> Option<ExtendedVr> {
        ALL_VRS
            .into_iter()
            .find(|vr| vr.code().eq_ignore_ascii_case(code))
    }

    /// The two-letter code.
    pub fn code(self) -> &'static str {
        match self {
            ExtendedVr::AE => "AE",
            ExtendedVr::AS => "AS",
            ExtendedVr::CS => "CS",
            ExtendedVr::DA => "DA",
            ExtendedVr::DS => "DS",
            ExtendedVr::DT => "DT",
            ExtendedVr::FD => "FD",
            ExtendedVr::FL => "FL",
            ExtendedVr::IS => "IS",
            ExtendedVr::LO => "LO",
            ExtendedVr::PN => "PN",
            ExtendedVr::SH => "SH",
            ExtendedVr::SL => "SL",
            ExtendedVr::SS => "SS",
            ExtendedVr::TM => "TM",
            ExtendedVr::UI => "UI",
            ExtendedVr::UL => "UL",
            ExtendedVr::US => "US",
        }
    }

    /// How its values match.
    pub fn kind(self) -> ExtendedKind {
        match self {
            ExtendedVr::PN => ExtendedKind::Name,
            ExtendedVr::DA => ExtendedKind::Date,
            ExtendedVr::IS | ExtendedVr::SL | ExtendedVr::SS | ExtendedVr::UL | ExtendedVr::US => {
                ExtendedKind::Integer
            }
            ExtendedVr::FL => ExtendedKind::Float32,
            ExtendedVr::FD | ExtendedVr::DS => ExtendedKind::Float64,
            _ => ExtendedKind::Text,
        }
    }

    /// The longest value in characters (PS3.5 table 6.2-1; per component group for PN).
    fn max_chars(self) -> usize {
        match self {
            ExtendedVr::AS => 4,
            ExtendedVr::DA => 10,
            ExtendedVr::IS => 12,
            ExtendedVr::TM => 14,
            ExtendedVr::AE | ExtendedVr::CS | ExtendedVr::DS | ExtendedVr::SH => 16,
            ExtendedVr::DT => 26,
            _ => 64,
        }
    }

    /// The inclusive range of an integer VR.
    fn integer_range(self) -> (i64, i64) {
        match self {
            ExtendedVr::SS => (i64::from(i16::MIN), i64::from(i16::MAX)),
            ExtendedVr::US => (0, i64::from(u16::MAX)),
            ExtendedVr::UL => (0, i64::from(u32::MAX)),
            // SL and IS.
            _ => (i64::from(i32::MIN), i64::from(i32::MAX)),
        }
    }

    fn of_dicom(vr: VR) -> Option<ExtendedVr> {
        ExtendedVr::parse(vr.to_string())
    }
}

/// A valid extended query tag definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendedTagDefinition {
    /// The attribute.
    pub tag: Tag,
    /// Its value representation.
    pub vr: ExtendedVr,
    /// The private creator of a private tag (`None` for a standard one).
    pub private_creator: Option<String>,
    /// The level whose rows carry it.
    pub level: QueryLevel,
}

impl ExtendedTagDefinition {
    /// The tag's path as Azure spells it: 8 uppercase hex digits.
    pub fn path(&self) -> String {
        tag_path(self.tag)
    }

    /// The data dictionary keyword of a standard tag.
    pub fn keyword(&self) -> Option<&'static str> {
        if is_private(self.tag) {
            return None;
        }
        StandardDataDictionary
            .by_tag(self.tag)
            .map(|entry| entry.alias())
    }
}

/// A tag's path in the extended query tag API: its DICOM JSON key, 8 uppercase hex digits.
pub fn tag_path(tag: Tag) -> String {
    crate::instance::tag_key(tag)
}

fn is_private(tag: Tag) -> bool {
    tag.group() % 2 == 1
}

/// Why a definition is invalid. Messages name the field and what is allowed; a tag path is
/// schema, not patient data, so it may be repeated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TagDefinitionError {
    /// The path is neither a keyword of the data dictionary nor 8 hex digits.
    #[error("the tag path '{0}' is neither a DICOM keyword nor 8 hexadecimal digits")]
    InvalidPath(String),
    /// A path into a sequence.
    #[error("the tag path '{0}' names an attribute in a sequence, which is not supported")]
    SequenceNotSupported(String),
    /// A tag that cannot carry a searchable value (group length, file meta, private creator...).
    #[error("the tag '{0}' cannot be an extended query tag")]
    NotAllowed(String),
    /// A standard tag the index already searches.
    #[error("the tag '{0}' is already supported by default")]
    AlreadySupported(String),
    /// The VR is missing where it is required, or not supported.
    #[error("the VR '{vr}' of tag '{path}' is not supported (supported: {supported})")]
    UnsupportedVr {
        /// The tag.
        path: String,
        /// The VR given (or found in the dictionary).
        vr: String,
        /// The supported codes.
        supported: String,
    },
    /// The VR given is not the dictionary's for a standard tag.
    #[error("the VR '{vr}' does not match the data dictionary's VR of tag '{path}'")]
    VrMismatch {
        /// The tag.
        path: String,
        /// The VR given.
        vr: String,
    },
    /// A private tag without a VR.
    #[error("the private tag '{0}' needs a VR")]
    MissingVr(String),
    /// A private tag without a private creator, or a standard tag with one.
    #[error("the tag '{0}' {1}")]
    PrivateCreator(String, &'static str),
    /// The level is not Study, Series or Instance.
    #[error("the level of tag '{0}' must be Study, Series or Instance")]
    InvalidLevel(String),
}

/// Reads a tag path: a keyword of the data dictionary (as the standard spells it) or 8 hex
/// digits.
pub fn parse_tag_path(path: &str) -> Result<Tag, TagDefinitionError> {
    let shown = || path.chars().take(MAX_PATH_CHARS).collect::<String>();
    if path.is_empty() || path.chars().count() > MAX_PATH_CHARS {
        return Err(TagDefinitionError::InvalidPath(shown()));
    }
    if path.contains('.') {
        return Err(TagDefinitionError::SequenceNotSupported(shown()));
    }
    if let Some(tag) = parse_hex_tag(path) {
        return Ok(tag);
    }
    StandardDataDictionary
        .by_name(path)
        .map(|entry| entry.tag())
        .ok_or_else(|| TagDefinitionError::InvalidPath(shown()))
}

/// Reads a level name (either case).
pub fn parse_level(level: &str) -> Option<QueryLevel> {
    match level.to_ascii_lowercase().as_str() {
        "study" => Some(QueryLevel::Study),
        "series" => Some(QueryLevel::Series),
        "instance" => Some(QueryLevel::Instance),
        _ => None,
    }
}

/// The name of a level as Azure writes it.
pub fn level_name(level: QueryLevel) -> &'static str {
    match level {
        QueryLevel::Study => "Study",
        QueryLevel::Series => "Series",
        QueryLevel::Instance => "Instance",
    }
}

fn supported_vrs() -> String {
    ALL_VRS.map(ExtendedVr::code).join(", ")
}

/// Checks one definition as a request states it and returns it in canonical form.
pub fn validate_definition(
    path: &str,
    vr: Option<&str>,
    private_creator: Option<&str>,
    level: &str,
) -> Result<ExtendedTagDefinition, TagDefinitionError> {
    let tag = parse_tag_path(path)?;
    let canonical = tag_path(tag);
    let level =
        parse_level(level).ok_or_else(|| TagDefinitionError::InvalidLevel(canonical.clone()))?;
    // Group lengths, the file meta group, the command groups and the item delimiters carry
    // nothing searchable.
    if tag.element() == 0 || tag.group() < 0x0008 || tag.group() == 0xFFFE {
        return Err(TagDefinitionError::NotAllowed(canonical));
    }
    let vr_given = vr.map(str::trim).filter(|vr| !vr.is_empty());
    let private_creator = private_creator
        .map(str::trim)
        .filter(|creator| !creator.is_empty());
    let unsupported = |code: &str| TagDefinitionError::UnsupportedVr {
        path: canonical.clone(),
        vr: code.chars().take(8).collect(),
        supported: supported_vrs(),
    };
    let vr = if is_private(tag) {
        // (gggg,0010-00FF) reserve blocks for creators; (gggg,0001-000F) are not used.
        if tag.element() < 0x1000 {
            return Err(TagDefinitionError::NotAllowed(canonical));
        }
        let Some(creator) = private_creator else {
            return Err(TagDefinitionError::PrivateCreator(
                canonical,
                "is private and needs a privateCreator",
            ));
        };
        if creator.chars().count() > MAX_PRIVATE_CREATOR_CHARS
            || creator.chars().any(|c| c.is_control() || c == '\\')
        {
            return Err(TagDefinitionError::PrivateCreator(
                canonical,
                "has a privateCreator that is not a valid LO value (at most 64 characters)",
            ));
        }
        let code = vr_given.ok_or_else(|| TagDefinitionError::MissingVr(canonical.clone()))?;
        ExtendedVr::parse(code).ok_or_else(|| unsupported(code))?
    } else {
        if private_creator.is_some() {
            return Err(TagDefinitionError::PrivateCreator(
                canonical,
                "is a standard tag and takes no privateCreator",
            ));
        }
        if searchable_by_tag(tag).is_some() {
            return Err(TagDefinitionError::AlreadySupported(canonical));
        }
        let entry = StandardDataDictionary
            .by_tag(tag)
            .ok_or_else(|| TagDefinitionError::InvalidPath(canonical.clone()))?;
        let allowed: Vec<VR> = match entry.vr() {
            VirtualVr::Exact(vr) => vec![vr],
            VirtualVr::Xs => vec![VR::US, VR::SS],
            VirtualVr::Lt => vec![VR::US],
            _ => Vec::new(),
        };
        match vr_given {
            Some(code) => {
                let vr = ExtendedVr::parse(code).ok_or_else(|| unsupported(code))?;
                if !allowed
                    .iter()
                    .any(|dictionary| dictionary.to_string() == vr.code())
                {
                    return Err(TagDefinitionError::VrMismatch {
                        path: canonical,
                        vr: vr.code().to_owned(),
                    });
                }
                vr
            }
            None => allowed
                .first()
                .and_then(|vr| ExtendedVr::of_dicom(*vr))
                .ok_or_else(|| {
                    unsupported(&allowed.first().map(|vr| vr.to_string()).unwrap_or_default())
                })?,
        }
    };
    Ok(ExtendedTagDefinition {
        tag,
        vr,
        private_creator: private_creator.map(str::to_owned),
        level,
    })
}

/// Why an instance's value of an extended query tag was not indexed. Messages never carry the
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtendedValueError {
    /// The element's VR is not the tag's.
    #[error("the value's VR does not match the extended query tag's VR")]
    WrongVr,
    /// A value is longer than the VR allows.
    #[error("the value is longer than its VR allows")]
    TooLong,
    /// A value is not valid for the VR (not a date, not a number, out of range).
    #[error("the value is not valid for its VR")]
    Invalid,
    /// More values than the index takes for one attribute.
    #[error("the attribute has more values than the limit")]
    TooManyValues,
}

/// What an instance holds for one extended query tag: its element as DICOM JSON (for
/// `includefield`) and its normalized search values.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendedValues {
    /// The element as it is in the metadata.
    pub element: Value,
    /// The values to index.
    pub values: Vec<SearchValue>,
}

/// The values of `definition` in an instance's `metadata` (DICOM JSON, keys 8 uppercase hex
/// digits): `Ok(None)` when the instance does not have the attribute (or, for a private tag,
/// has it under another creator), an error when a value does not fit the tag.
pub fn extract_values(
    metadata: &Map<String, Value>,
    definition: &ExtendedTagDefinition,
) -> Result<Option<ExtendedValues>, ExtendedValueError> {
    let Some(element) = metadata.get(&definition.path()) else {
        return Ok(None);
    };
    if let Some(creator) = &definition.private_creator {
        let block = definition.tag.element() >> 8;
        let creator_key = format!("{:04X}00{block:02X}", definition.tag.group());
        let found = metadata
            .get(&creator_key)
            .and_then(|creator| creator.get("Value"))
            .and_then(|values| values.get(0))
            .and_then(Value::as_str)
            .map(|found| found.trim_matches([' ', '\0']));
        if found != Some(creator.as_str()) {
            return Ok(None);
        }
    }
    let vr = element.get("vr").and_then(Value::as_str).unwrap_or("");
    let raw_values: Vec<Value> = if vr == definition.vr.code() {
        match element.get("Value").and_then(Value::as_array) {
            Some(values) => values.clone(),
            None => return Ok(None),
        }
    } else if vr == "UN" {
        un_values(element, definition.vr)?
    } else {
        return Err(ExtendedValueError::WrongVr);
    };
    if raw_values.len() > MAX_SEARCH_VALUES {
        return Err(ExtendedValueError::TooManyValues);
    }
    let mut values = Vec::with_capacity(raw_values.len());
    for raw in &raw_values {
        if let Some(value) = stored_value(definition.vr, raw)? {
            values.push(value);
        }
    }
    if values.is_empty() {
        return Ok(None);
    }
    Ok(Some(ExtendedValues {
        element: element.clone(),
        values,
    }))
}

/// The values of an element stored as UN (a private attribute in an implicit VR data set): the
/// bytes of a string VR read as text; binary numbers are not reinterpreted.
fn un_values(element: &Value, vr: ExtendedVr) -> Result<Vec<Value>, ExtendedValueError> {
    use base64::Engine;
    if matches!(
        vr,
        ExtendedVr::FD
            | ExtendedVr::FL
            | ExtendedVr::SL
            | ExtendedVr::SS
            | ExtendedVr::UL
            | ExtendedVr::US
    ) {
        return Err(ExtendedValueError::WrongVr);
    }
    let Some(encoded) = element.get("InlineBinary").and_then(Value::as_str) else {
        return Ok(Vec::new());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| ExtendedValueError::Invalid)?;
    let text = String::from_utf8(bytes).map_err(|_| ExtendedValueError::Invalid)?;
    Ok(text
        .split('\\')
        .map(|value| Value::String(value.to_owned()))
        .collect())
}

/// One stored value, checked and normalized; `None` when empty.
fn stored_value(vr: ExtendedVr, raw: &Value) -> Result<Option<SearchValue>, ExtendedValueError> {
    match vr.kind() {
        ExtendedKind::Name => {
            let full = match raw {
                Value::String(text) => text.clone(),
                Value::Object(groups) => {
                    let group = |name: &str| {
                        groups
                            .get(name)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    [group("Alphabetic"), group("Ideographic"), group("Phonetic")].join("=")
                }
                Value::Null => return Ok(None),
                _ => return Err(ExtendedValueError::Invalid),
            };
            if full.split('=').count() > 3
                || full
                    .split('=')
                    .any(|group| group.chars().count() > vr.max_chars())
            {
                return Err(ExtendedValueError::TooLong);
            }
            let exact = normalize_person_name(&full);
            if exact.is_empty() {
                return Ok(None);
            }
            Ok(Some(SearchValue::PersonName {
                words: name_words(&exact),
                exact,
            }))
        }
        ExtendedKind::Date => {
            let Some(text) = raw.as_str() else {
                return match raw {
                    Value::Null => Ok(None),
                    _ => Err(ExtendedValueError::Invalid),
                };
            };
            if text.trim_matches([' ', '\0']).is_empty() {
                return Ok(None);
            }
            if text.chars().count() > vr.max_chars() {
                return Err(ExtendedValueError::TooLong);
            }
            parse_date(text)
                .map(|date| Some(SearchValue::Date(date)))
                .ok_or(ExtendedValueError::Invalid)
        }
        ExtendedKind::Text => {
            let Some(text) = raw.as_str() else {
                return match raw {
                    Value::Null => Ok(None),
                    _ => Err(ExtendedValueError::Invalid),
                };
            };
            if text.chars().count() > vr.max_chars() {
                return Err(ExtendedValueError::TooLong);
            }
            let exact = normalize_exact(text);
            Ok((!exact.is_empty()).then_some(SearchValue::Exact(exact)))
        }
        ExtendedKind::Integer | ExtendedKind::Float32 | ExtendedKind::Float64 => {
            let text = match raw {
                Value::Number(number) => number.to_string(),
                Value::String(text) => {
                    if text.chars().count() > vr.max_chars() {
                        return Err(ExtendedValueError::TooLong);
                    }
                    text.clone()
                }
                Value::Null => return Ok(None),
                _ => return Err(ExtendedValueError::Invalid),
            };
            if text.trim_matches([' ', '\0']).is_empty() {
                return Ok(None);
            }
            normalize_number(vr, &text).map(|value| Some(SearchValue::Exact(value)))
        }
    }
}

/// The canonical text of a number of `vr`, as stored values and query values are compared:
/// `007` and `7.0` are `7` for an integer VR, `1.50` is `1.5` for a float.
fn normalize_number(vr: ExtendedVr, text: &str) -> Result<String, ExtendedValueError> {
    let text = text.trim_matches([' ', '\0']);
    match vr.kind() {
        ExtendedKind::Integer => {
            let value: i64 = match text.parse::<i64>() {
                Ok(value) => value,
                Err(_) => {
                    // DICOM JSON may write an integer as `12.0`.
                    let float: f64 = text.parse().map_err(|_| ExtendedValueError::Invalid)?;
                    if float.fract() != 0.0 || !float.is_finite() || float.abs() > 1e18 {
                        return Err(ExtendedValueError::Invalid);
                    }
                    float as i64
                }
            };
            let (low, high) = vr.integer_range();
            if !(low..=high).contains(&value) {
                return Err(ExtendedValueError::Invalid);
            }
            Ok(value.to_string())
        }
        ExtendedKind::Float32 => {
            let value: f32 = text.parse().map_err(|_| ExtendedValueError::Invalid)?;
            if !value.is_finite() {
                return Err(ExtendedValueError::Invalid);
            }
            Ok(format!("{}", if value == 0.0 { 0.0 } else { value }))
        }
        _ => {
            let value: f64 = text.parse().map_err(|_| ExtendedValueError::Invalid)?;
            if !value.is_finite() {
                return Err(ExtendedValueError::Invalid);
            }
            Ok(format!("{}", if value == 0.0 { 0.0 } else { value }))
        }
    }
}

/// A query value for an exact match on a tag of `vr` (not a date or a person name, which
/// have their own query forms), normalized as stored values are.
pub fn normalize_query_value(vr: ExtendedVr, value: &str) -> Result<String, ExtendedValueError> {
    if value.chars().count() > vr.max_chars().max(32) {
        return Err(ExtendedValueError::TooLong);
    }
    match vr.kind() {
        ExtendedKind::Integer | ExtendedKind::Float32 | ExtendedKind::Float64 => {
            normalize_number(vr, value)
        }
        _ => Ok(normalize_exact(value)),
    }
}

/// Whether a query value of a person-name tag fits the VR (per component group).
pub fn name_query_within_limit(value: &str) -> bool {
    value.split('=').count() <= 3
        && value
            .split('=')
            .all(|group| group.chars().count() <= ExtendedVr::PN.max_chars())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition(path: &str, vr: Option<&str>, creator: Option<&str>) -> ExtendedTagDefinition {
        validate_definition(path, vr, creator, "Study").expect("valid")
    }

    #[test]
    fn paths_are_keywords_or_hex() {
        assert_eq!(
            definition("PatientSex", None, None).path(),
            "00100040".to_owned()
        );
        let by_hex = definition("00101010", Some("AS"), None);
        assert_eq!(by_hex.vr, ExtendedVr::AS);
        assert_eq!(by_hex.keyword(), Some("PatientAge"));
        for bad in ["", "0010101", "PatientSexy", "0010101G", &"A".repeat(100)] {
            assert!(
                matches!(
                    validate_definition(bad, None, None, "Study"),
                    Err(TagDefinitionError::InvalidPath(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            validate_definition("00400275.00321060", None, None, "Study"),
            Err(TagDefinitionError::SequenceNotSupported(_))
        ));
    }

    #[test]
    fn definitions_follow_azures_rules() {
        let refused = |path, vr, creator, level| validate_definition(path, vr, creator, level);
        assert!(matches!(
            refused("PatientName", None, None, "Study"),
            Err(TagDefinitionError::AlreadySupported(_))
        ));
        assert!(matches!(
            refused("PatientSex", Some("LO"), None, "Study"),
            Err(TagDefinitionError::VrMismatch { .. })
        ));
        assert!(matches!(
            refused("00100040", Some("XX"), None, "Study"),
            Err(TagDefinitionError::UnsupportedVr { .. })
        ));
        // An SQ or binary attribute cannot be indexed.
        assert!(matches!(
            refused("ReferencedStudySequence", None, None, "Study"),
            Err(TagDefinitionError::UnsupportedVr { .. })
        ));
        assert!(matches!(
            refused("PatientSex", None, None, "Patient"),
            Err(TagDefinitionError::InvalidLevel(_))
        ));
        assert!(matches!(
            refused("00091001", Some("LO"), None, "Series"),
            Err(TagDefinitionError::PrivateCreator(..))
        ));
        assert!(matches!(
            refused("00091001", None, Some("ACME"), "Series"),
            Err(TagDefinitionError::MissingVr(_))
        ));
        assert!(matches!(
            refused("00090010", Some("LO"), Some("ACME"), "Series"),
            Err(TagDefinitionError::NotAllowed(_))
        ));
        assert!(matches!(
            refused("00100040", None, Some("ACME"), "Series"),
            Err(TagDefinitionError::PrivateCreator(..))
        ));
        assert!(matches!(
            refused("00020010", None, None, "Study"),
            Err(TagDefinitionError::NotAllowed(_))
        ));
        assert!(matches!(
            refused("00100000", None, None, "Study"),
            Err(TagDefinitionError::NotAllowed(_))
        ));
        let private = definition("00091001", Some("lo"), Some("ACME"));
        assert_eq!(private.vr, ExtendedVr::LO);
        assert_eq!(private.keyword(), None);
    }

    #[test]
    fn values_are_checked_against_the_vr() {
        let sex = definition("PatientSex", None, None);
        let metadata = |element: Value| {
            let mut map = Map::new();
            map.insert("00100040".into(), element);
            map
        };
        let found = extract_values(&metadata(json!({"vr": "CS", "Value": ["F "]})), &sex)
            .expect("valid")
            .expect("present");
        assert_eq!(found.values, vec![SearchValue::Exact("F".into())]);
        assert_eq!(
            extract_values(
                &metadata(json!({"vr": "CS", "Value": ["X".repeat(17)]})),
                &sex
            ),
            Err(ExtendedValueError::TooLong)
        );
        assert_eq!(
            extract_values(&metadata(json!({"vr": "LO", "Value": ["F"]})), &sex),
            Err(ExtendedValueError::WrongVr)
        );
        assert_eq!(extract_values(&Map::new(), &sex), Ok(None));
        let weight = validate_definition("PatientWeight", None, None, "Study").expect("DS");
        let mut map = Map::new();
        map.insert("00101030".into(), json!({"vr": "DS", "Value": [72.50]}));
        let found = extract_values(&map, &weight).expect("ok").expect("present");
        assert_eq!(found.values, vec![SearchValue::Exact("72.5".into())]);
        assert_eq!(
            normalize_query_value(ExtendedVr::DS, "72.500"),
            Ok("72.5".into())
        );
        assert_eq!(normalize_query_value(ExtendedVr::US, "007"), Ok("7".into()));
        assert!(normalize_query_value(ExtendedVr::US, "70000").is_err());
    }

    #[test]
    fn private_values_need_their_creator() {
        let private = definition("00091001", Some("LO"), Some("ACME"));
        let mut map = Map::new();
        map.insert("00091001".into(), json!({"vr": "LO", "Value": ["abc"]}));
        assert_eq!(extract_values(&map, &private), Ok(None));
        map.insert("00090010".into(), json!({"vr": "LO", "Value": ["OTHER"]}));
        assert_eq!(extract_values(&map, &private), Ok(None));
        map.insert("00090010".into(), json!({"vr": "LO", "Value": ["ACME"]}));
        let found = extract_values(&map, &private)
            .expect("ok")
            .expect("present");
        assert_eq!(found.values, vec![SearchValue::Exact("abc".into())]);
        // Implicit VR: the value arrives as UN bytes.
        map.insert(
            "00091001".into(),
            json!({"vr": "UN", "InlineBinary": "YWJjIA=="}),
        );
        let found = extract_values(&map, &private)
            .expect("ok")
            .expect("present");
        assert_eq!(found.values, vec![SearchValue::Exact("abc".into())]);
    }
}
