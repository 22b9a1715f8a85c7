//! DICOM JSON (PS3.18 F.2: `{"0020000D": {"vr": "UI", "Value": [...]}}`) as people and
//! `--query` want it: `{"StudyInstanceUID": "..."}`, keywords from the standard dictionary,
//! one value bare, several as a list, person names by their alphabetic form.

use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::StandardDataDictionary;
use serde_json::{Map, Value};

/// A dataset's attributes by keyword (unknown tags keep their 8-digit form).
pub fn keywords(dataset: &Value) -> Value {
    let Value::Object(attributes) = dataset else {
        return dataset.clone();
    };
    let mut converted = Map::new();
    for (tag, attribute) in attributes {
        converted.insert(keyword(tag), value(attribute));
    }
    Value::Object(converted)
}

fn keyword(tag: &str) -> String {
    let parsed = (tag.len() == 8)
        .then(|| {
            let group = u16::from_str_radix(&tag[..4], 16).ok()?;
            let element = u16::from_str_radix(&tag[4..], 16).ok()?;
            Some(Tag(group, element))
        })
        .flatten();
    parsed
        .and_then(|tag| StandardDataDictionary.by_tag(tag))
        .map(|entry| entry.alias().to_owned())
        .filter(|alias| !alias.is_empty())
        .unwrap_or_else(|| tag.to_owned())
}

fn value(attribute: &Value) -> Value {
    let vr = attribute.get("vr").and_then(Value::as_str).unwrap_or("");
    let Some(Value::Array(values)) = attribute.get("Value") else {
        if let Some(uri) = attribute.get("BulkDataURI") {
            return uri.clone();
        }
        return attribute
            .get("InlineBinary")
            .cloned()
            .unwrap_or(Value::Null);
    };
    let mut converted: Vec<Value> = values
        .iter()
        .map(|item| match vr {
            "SQ" => keywords(item),
            "PN" => item
                .get("Alphabetic")
                .cloned()
                .unwrap_or_else(|| item.clone()),
            _ => item.clone(),
        })
        .collect();
    if converted.len() == 1 && vr != "SQ" {
        converted.remove(0)
    } else {
        Value::Array(converted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dicom_json_by_keyword() {
        let dataset = json!({
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
            "00201208": {"vr": "IS", "Value": [3]},
            "00080020": {"vr": "DA"},
            "00091001": {"vr": "LO", "Value": ["private"]},
        });
        assert_eq!(
            keywords(&dataset),
            json!({
                "StudyInstanceUID": "1.2.3",
                "PatientName": "Doe^Jane",
                "ModalitiesInStudy": ["CT", "MR"],
                "NumberOfStudyRelatedInstances": 3,
                "StudyDate": null,
                "00091001": "private",
            })
        );
    }
}
