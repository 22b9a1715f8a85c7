//! Bulk update: the attributes Azure's DICOM service lets `studies/$bulkUpdate` change, the
//! checks on a change dataset (DICOM JSON), and the rewriting of an instance with it.
//!
//! Azure allows the non-sequence attributes of the Patient Identification, Patient Demographic
//! and General Study modules it lists (36 of them, [`UPDATABLE`]); every other attribute is
//! refused, so an update never touches an instance's identity (its UIDs), its pixel data or
//! anything a frame offset depends on. A value cannot be removed (Azure does not update a
//! value to null either). Error messages name the attribute and the rule, never the value.

use std::io::Cursor;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_object::OpenFileOptions;
use serde_json::{Map, Value};

use crate::normalize::parse_date;

/// The attributes a bulk update may change: (tag, keyword, VR, whether it takes several values).
pub const UPDATABLE: &[(Tag, &str, VR, bool)] = &[
    (Tag(0x0010, 0x0010), "PatientName", VR::PN, false),
    (Tag(0x0010, 0x0020), "PatientID", VR::LO, false),
    (Tag(0x0010, 0x1000), "OtherPatientIDs", VR::LO, true),
    (Tag(0x0010, 0x0022), "TypeOfPatientID", VR::CS, false),
    (Tag(0x0010, 0x1001), "OtherPatientNames", VR::PN, true),
    (Tag(0x0010, 0x1005), "PatientBirthName", VR::PN, false),
    (Tag(0x0010, 0x1060), "PatientMotherBirthName", VR::PN, false),
    (Tag(0x0010, 0x1090), "MedicalRecordLocator", VR::LO, false),
    (Tag(0x0010, 0x1010), "PatientAge", VR::AS, false),
    (Tag(0x0010, 0x2180), "Occupation", VR::SH, false),
    (
        Tag(0x0040, 0x3001),
        "ConfidentialityConstraintOnPatientDataDescription",
        VR::LO,
        false,
    ),
    (Tag(0x0010, 0x0030), "PatientBirthDate", VR::DA, false),
    (Tag(0x0010, 0x0032), "PatientBirthTime", VR::TM, false),
    (Tag(0x0010, 0x0040), "PatientSex", VR::CS, false),
    (Tag(0x0010, 0x0200), "QualityControlSubject", VR::CS, false),
    (Tag(0x0010, 0x1020), "PatientSize", VR::DS, false),
    (Tag(0x0010, 0x1030), "PatientWeight", VR::DS, false),
    (Tag(0x0010, 0x1040), "PatientAddress", VR::LO, false),
    (Tag(0x0010, 0x1080), "MilitaryRank", VR::LO, false),
    (Tag(0x0010, 0x1081), "BranchOfService", VR::LO, false),
    (Tag(0x0010, 0x2150), "CountryOfResidence", VR::LO, false),
    (Tag(0x0010, 0x2152), "RegionOfResidence", VR::LO, false),
    (Tag(0x0010, 0x2154), "PatientTelephoneNumbers", VR::SH, true),
    (Tag(0x0010, 0x2160), "EthnicGroup", VR::SH, false),
    (
        Tag(0x0010, 0x21F0),
        "PatientReligiousPreference",
        VR::LO,
        false,
    ),
    (Tag(0x0010, 0x4000), "PatientComments", VR::LT, false),
    (Tag(0x0010, 0x2297), "ResponsiblePerson", VR::PN, false),
    (Tag(0x0010, 0x2298), "ResponsiblePersonRole", VR::CS, false),
    (
        Tag(0x0010, 0x2299),
        "ResponsibleOrganization",
        VR::LO,
        false,
    ),
    (
        Tag(0x0010, 0x2201),
        "PatientSpeciesDescription",
        VR::LO,
        false,
    ),
    (
        Tag(0x0010, 0x2292),
        "PatientBreedDescription",
        VR::LO,
        false,
    ),
    (
        Tag(0x0010, 0x2295),
        "BreedRegistrationNumber",
        VR::LO,
        false,
    ),
    (Tag(0x0010, 0x0021), "IssuerOfPatientID", VR::LO, false),
    (Tag(0x0008, 0x0050), "AccessionNumber", VR::SH, false),
    (Tag(0x0008, 0x0090), "ReferringPhysicianName", VR::PN, false),
    (Tag(0x0008, 0x1030), "StudyDescription", VR::LO, false),
];

/// The most values a multi-valued attribute may take in one update.
pub const MAX_VALUES: usize = 16;

/// One attribute of a change dataset that was refused: its tag as written (8 hex digits, or
/// the key as sent, cut to 16 characters) and why. Never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeRefusal {
    /// The key of the attribute in the change dataset.
    pub tag: String,
    /// Why it was refused.
    pub reason: String,
}

/// A checked change dataset: each attribute with its values, as they will be written.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeDataset {
    changes: Vec<(Tag, VR, Vec<String>)>,
}

impl ChangeDataset {
    /// Checks `dataset` (a DICOM JSON object): every attribute must be one of [`UPDATABLE`],
    /// with its dictionary VR and 1 value (1 to [`MAX_VALUES`] for a multi-valued one) that
    /// fits the VR. Returns every refusal at once, as Azure lists them.
    pub fn parse(dataset: &Value) -> Result<ChangeDataset, Vec<AttributeRefusal>> {
        let Some(object) = dataset.as_object() else {
            return Err(vec![AttributeRefusal {
                tag: String::new(),
                reason: "changeDataset must be a DICOM JSON object".into(),
            }]);
        };
        if object.is_empty() {
            return Err(vec![AttributeRefusal {
                tag: String::new(),
                reason: "changeDataset names no attribute".into(),
            }]);
        }
        let mut refusals = Vec::new();
        let mut changes = Vec::with_capacity(object.len());
        for (key, element) in object {
            match parse_element(key, element) {
                Ok(change) => changes.push(change),
                Err(reason) => refusals.push(AttributeRefusal {
                    tag: key.chars().take(16).collect(),
                    reason,
                }),
            }
        }
        if refusals.is_empty() {
            Ok(ChangeDataset { changes })
        } else {
            Err(refusals)
        }
    }

    /// The dataset as DICOM JSON (what an operation keeps, sealed, to resume with).
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        for (tag, vr, values) in &self.changes {
            let values: Vec<Value> = values
                .iter()
                .map(|value| match vr {
                    VR::PN => serde_json::json!({ "Alphabetic": value }),
                    _ => Value::String(value.clone()),
                })
                .collect();
            object.insert(
                crate::instance::tag_key(*tag),
                serde_json::json!({ "vr": vr.to_string(), "Value": values }),
            );
        }
        Value::Object(object)
    }

    /// The keywords of the attributes it changes.
    pub fn keywords(&self) -> Vec<&'static str> {
        self.changes
            .iter()
            .filter_map(|(tag, ..)| updatable(*tag).map(|(_, keyword, ..)| keyword))
            .collect()
    }

    /// The Part-10 instance `instance` with the changed attributes (added when absent), every
    /// other element kept as read, pixel data included, in the same transfer syntax. A value
    /// outside ASCII switches the instance's SpecificCharacterSet to UTF-8 (`ISO_IR 192`), and
    /// its text is written again in that character set.
    pub fn apply(&self, instance: &[u8]) -> Result<Vec<u8>, crate::InstanceError> {
        let mut object = OpenFileOptions::new()
            .from_reader(Cursor::new(instance))
            .map_err(|error| crate::InstanceError::Unreadable(error.to_string()))?;
        let non_ascii = self
            .changes
            .iter()
            .any(|(_, _, values)| values.iter().any(|value| !value.is_ascii()));
        if non_ascii {
            object.put(DataElement::new(
                Tag(0x0008, 0x0005),
                VR::CS,
                PrimitiveValue::from("ISO_IR 192"),
            ));
        }
        for (tag, vr, values) in &self.changes {
            let value = if values.len() == 1 {
                PrimitiveValue::from(values[0].as_str())
            } else {
                PrimitiveValue::Strs(values.iter().cloned().collect())
            };
            object.put(DataElement::new(*tag, *vr, value));
        }
        let mut out = Vec::with_capacity(instance.len() + 256);
        object
            .write_all(&mut out)
            .map_err(|error| crate::InstanceError::Unreadable(error.to_string()))?;
        Ok(out)
    }
}

fn updatable(tag: Tag) -> Option<(Tag, &'static str, VR, bool)> {
    UPDATABLE.iter().copied().find(|(known, ..)| *known == tag)
}

fn parse_element(key: &str, element: &Value) -> Result<(Tag, VR, Vec<String>), String> {
    let tag = parse_key(key).ok_or("the key is not a tag of 8 hexadecimal digits")?;
    let (_, keyword, vr, multiple) = updatable(tag)
        .ok_or("the attribute cannot be updated (patient and study demographics only)")?;
    let object = element
        .as_object()
        .ok_or_else(|| format!("{keyword}: the element must be an object"))?;
    for member in object.keys() {
        if member != "vr" && member != "Value" {
            return Err(format!("{keyword}: only vr and Value are allowed"));
        }
    }
    match object.get("vr").and_then(Value::as_str) {
        Some(given) if given == vr.to_string() => {}
        _ => return Err(format!("{keyword}: vr must be {vr}")),
    }
    let values = match object.get("Value") {
        Some(Value::Array(values)) if !values.is_empty() => values,
        _ => {
            return Err(format!(
                "{keyword}: a value is required (a value cannot be removed)"
            ));
        }
    };
    if values.len() > 1 && !multiple {
        return Err(format!("{keyword}: takes one value"));
    }
    if values.len() > MAX_VALUES {
        return Err(format!("{keyword}: at most {MAX_VALUES} values"));
    }
    let mut checked = Vec::with_capacity(values.len());
    for value in values {
        checked.push(check_value(keyword, vr, value)?);
    }
    Ok((tag, vr, checked))
}

fn parse_key(key: &str) -> Option<Tag> {
    if key.len() != 8 || !key.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let group = u16::from_str_radix(&key[..4], 16).ok()?;
    let element = u16::from_str_radix(&key[4..], 16).ok()?;
    Some(Tag(group, element))
}

/// The longest value of each VR (PN: per component group), in characters.
fn max_length(vr: VR) -> usize {
    match vr {
        VR::AS => 4,
        VR::CS | VR::SH | VR::DS => 16,
        VR::DA => 8,
        VR::TM => 14,
        VR::LT => 10_240,
        _ => 64,
    }
}

fn check_value(keyword: &str, vr: VR, value: &Value) -> Result<String, String> {
    let text = match (vr, value) {
        (VR::PN, Value::Object(name)) => {
            for member in name.keys() {
                if member != "Alphabetic" {
                    return Err(format!(
                        "{keyword}: a person name takes its Alphabetic form only"
                    ));
                }
            }
            name.get("Alphabetic")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{keyword}: Alphabetic must be a string"))?
                .to_owned()
        }
        (VR::PN, _) => return Err(format!("{keyword}: a person name is an object")),
        (VR::DS, Value::Number(number)) => number.to_string(),
        (_, Value::String(text)) => text.clone(),
        _ => return Err(format!("{keyword}: the value must be a string")),
    };
    let trimmed = text.trim_end_matches(' ');
    if trimmed.is_empty() {
        return Err(format!(
            "{keyword}: a value is required (a value cannot be removed)"
        ));
    }
    if trimmed.chars().count() > max_length(vr) {
        return Err(format!(
            "{keyword}: longer than {vr} allows ({} characters)",
            max_length(vr)
        ));
    }
    let text_controls = matches!(vr, VR::LT);
    if trimmed.chars().any(|character| {
        character == '\\'
            || (character.is_control()
                && !(text_controls && matches!(character, '\r' | '\n' | '\t' | '\x0c')))
    }) {
        return Err(format!(
            "{keyword}: contains a backslash or a control character"
        ));
    }
    let valid = match vr {
        VR::AS => {
            let bytes = trimmed.as_bytes();
            bytes.len() == 4
                && bytes[..3].iter().all(u8::is_ascii_digit)
                && matches!(bytes[3], b'D' | b'W' | b'M' | b'Y')
        }
        VR::CS => trimmed.bytes().all(|byte| {
            byte.is_ascii_uppercase() || byte.is_ascii_digit() || b" _".contains(&byte)
        }),
        VR::DA => trimmed.len() == 8 && parse_date(trimmed).is_some(),
        VR::TM => is_time(trimmed),
        VR::DS => {
            let number = trimmed.trim_start_matches(' ');
            number.parse::<f64>().is_ok_and(f64::is_finite)
                && number
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || b"+-.eE".contains(&byte))
        }
        VR::PN => trimmed.matches('^').count() <= 4 && !trimmed.contains('='),
        _ => true,
    };
    if !valid {
        return Err(format!("{keyword}: not a valid {vr} value"));
    }
    Ok(trimmed.to_owned())
}

/// `HH`, `HHMM`, `HHMMSS` or `HHMMSS.F` to `HHMMSS.FFFFFF`, in range.
fn is_time(text: &str) -> bool {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    if !matches!(whole.len(), 2 | 4 | 6) || !whole.bytes().all(|byte| byte.is_ascii_digit()) {
        return false;
    }
    if let Some(fraction) = fraction
        && (whole.len() != 6
            || fraction.is_empty()
            || fraction.len() > 6
            || !fraction.bytes().all(|byte| byte.is_ascii_digit()))
    {
        return false;
    }
    let field =
        |range: std::ops::Range<usize>| whole.get(range).and_then(|part| part.parse::<u32>().ok());
    field(0..2).is_some_and(|hours| hours < 24)
        && (whole.len() < 4 || field(2..4).is_some_and(|minutes| minutes < 60))
        && (whole.len() < 6 || field(4..6).is_some_and(|seconds| seconds < 60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_azure_example() {
        let change = ChangeDataset::parse(&json!({
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "New^Name"}]},
            "00100030": {"vr": "DA", "Value": ["19800101"]},
            "00081030": {"vr": "LO", "Value": ["Head CT"]},
            "00101030": {"vr": "DS", "Value": [72.5]},
        }))
        .unwrap();
        assert_eq!(change.keywords().len(), 4);
        let round = ChangeDataset::parse(&change.to_json()).unwrap();
        assert_eq!(round, change);
    }

    #[test]
    fn refuses_what_azure_refuses_and_hostile_values() {
        let cases = [
            // An identity attribute.
            json!({"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}),
            // Pixel data.
            json!({"7FE00010": {"vr": "OB", "InlineBinary": "AAAA"}}),
            // A keyword instead of a tag.
            json!({"PatientName": {"vr": "PN", "Value": [{"Alphabetic": "A"}]}}),
            // The wrong VR.
            json!({"00100010": {"vr": "LO", "Value": ["A"]}}),
            // Removing a value.
            json!({"00100010": {"vr": "PN"}}),
            json!({"00100020": {"vr": "LO", "Value": [""]}}),
            // Too long, a backslash, a control character, not a date, not a number.
            json!({"00100020": {"vr": "LO", "Value": ["x".repeat(65)]}}),
            json!({"00100020": {"vr": "LO", "Value": ["a\\b"]}}),
            json!({"00100020": {"vr": "LO", "Value": ["a\u{0}b"]}}),
            json!({"00100030": {"vr": "DA", "Value": ["19801301"]}}),
            json!({"00101030": {"vr": "DS", "Value": ["NaN"]}}),
            json!({"00100040": {"vr": "CS", "Value": ["m"]}}),
            json!({"00100032": {"vr": "TM", "Value": ["256000"]}}),
            json!({"00101010": {"vr": "AS", "Value": ["12X"]}}),
            // Two values where one is allowed, too many values, bulk data.
            json!({"00100020": {"vr": "LO", "Value": ["a", "b"]}}),
            json!({"00101000": {"vr": "LO", "Value": vec!["a"; 17]}}),
            json!({"00100020": {"vr": "LO", "Value": ["a"], "BulkDataURI": "http://x"}}),
            json!({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A", "Ideographic": "B"}]}}),
            json!({}),
            json!([]),
        ];
        for case in cases {
            assert!(ChangeDataset::parse(&case).is_err(), "{case}");
        }
    }

    #[test]
    fn refusals_name_the_attribute_not_the_value() {
        let refusals = ChangeDataset::parse(&json!({
            "00100020": {"vr": "LO", "Value": ["SECRET\\VALUE"]},
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        }))
        .unwrap_err();
        assert_eq!(refusals.len(), 2);
        for refusal in refusals {
            assert!(!refusal.reason.contains("SECRET"));
        }
    }
}
