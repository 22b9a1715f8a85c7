//! UPS workitems (PS3.4 Annex CC, PS3.18 chapter 11) as Azure's DICOM service serves them: the
//! workitem dataset in DICOM JSON, the attribute requirements of each transaction, the state
//! machine of the Procedure Step State, and the search keys.
//!
//! A workitem is kept as its DICOM JSON object (PS3.18 F), not as a parsed instance: every
//! transaction reads and rewrites whole top-level attributes, and nothing here needs the binary
//! encoding. Its Transaction UID, the owner's lock, is never part of the dataset: it is kept
//! apart ([`Workitem::transaction_uid`]) so that no read path can return it.
//!
//! Everything here is pure: no storage, no clock (callers pass the time), no HTTP. Refusal
//! messages name attributes and states, never values, since a message can reach a log.

use std::collections::BTreeSet;

use dicom_core::Tag;
use serde_json::{Map, Value};

use crate::SearchValue;
use crate::attributes::resolve_tag;
use crate::instance::tag_key;
use crate::normalize::{
    fuzzy_query_words, is_valid_uid, name_words, normalize_exact, normalize_person_name, parse_date,
};

/// The largest workitem request body, in bytes. A workitem is a few kilobytes of attributes;
/// this leaves room for large sequences without letting one request hold much memory.
pub const MAX_WORKITEM_BYTES: usize = 1024 * 1024;
/// The deepest nesting of sequences in a workitem (PS3.4's deepest path is four levels).
pub const MAX_SEQUENCE_DEPTH: usize = 8;
/// The most elements and values a workitem may hold, counted over all its items.
pub const MAX_NODES: usize = 20_000;
/// The longest string value of a workitem's element, in bytes (UT's limit is larger, but no UPS
/// attribute needs more).
pub const MAX_STRING_BYTES: usize = 64 * 1024;

/// The SOP Class UID of every workitem: Unified Procedure Step - Push.
pub const UPS_PUSH_SOP_CLASS_UID: &str = "1.2.840.10008.5.1.4.34.6.1";
/// The Worklist Label given when a creator leaves it empty (as Azure does).
pub const DEFAULT_WORKLIST_LABEL: &str = "worklist";

/// Tags of the attributes the transactions read or set.
pub mod tags {
    use dicom_core::Tag;

    /// SpecificCharacterSet.
    pub const SPECIFIC_CHARACTER_SET: Tag = Tag(0x0008, 0x0005);
    /// SOPClassUID.
    pub const SOP_CLASS_UID: Tag = Tag(0x0008, 0x0016);
    /// SOPInstanceUID: the Workitem UID.
    pub const SOP_INSTANCE_UID: Tag = Tag(0x0008, 0x0018);
    /// AccessionNumber.
    pub const ACCESSION_NUMBER: Tag = Tag(0x0008, 0x0050);
    /// CodeValue.
    pub const CODE_VALUE: Tag = Tag(0x0008, 0x0100);
    /// AdmittingDiagnosesDescription.
    pub const ADMITTING_DIAGNOSES_DESCRIPTION: Tag = Tag(0x0008, 0x1080);
    /// AdmittingDiagnosesCodeSequence.
    pub const ADMITTING_DIAGNOSES_CODE_SEQUENCE: Tag = Tag(0x0008, 0x1084);
    /// TransactionUID: the owner's lock, never stored in the dataset.
    pub const TRANSACTION_UID: Tag = Tag(0x0008, 0x1195);
    /// PatientName.
    pub const PATIENT_NAME: Tag = Tag(0x0010, 0x0010);
    /// PatientID.
    pub const PATIENT_ID: Tag = Tag(0x0010, 0x0020);
    /// IssuerOfPatientID.
    pub const ISSUER_OF_PATIENT_ID: Tag = Tag(0x0010, 0x0021);
    /// PatientBirthDate.
    pub const PATIENT_BIRTH_DATE: Tag = Tag(0x0010, 0x0030);
    /// PatientSex.
    pub const PATIENT_SEX: Tag = Tag(0x0010, 0x0040);
    /// OtherPatientIDsSequence.
    pub const OTHER_PATIENT_IDS_SEQUENCE: Tag = Tag(0x0010, 0x1002);
    /// StudyInstanceUID.
    pub const STUDY_INSTANCE_UID: Tag = Tag(0x0020, 0x000D);
    /// AdmissionID.
    pub const ADMISSION_ID: Tag = Tag(0x0038, 0x0010);
    /// IssuerOfAdmissionIDSequence.
    pub const ISSUER_OF_ADMISSION_ID_SEQUENCE: Tag = Tag(0x0038, 0x0014);
    /// CommentsOnTheScheduledProcedureStep.
    pub const COMMENTS_ON_THE_SCHEDULED_PROCEDURE_STEP: Tag = Tag(0x0040, 0x0400);
    /// RequestedProcedureID.
    pub const REQUESTED_PROCEDURE_ID: Tag = Tag(0x0040, 0x1001);
    /// ScheduledProcedureStepStartDateTime.
    pub const SCHEDULED_PROCEDURE_STEP_START_DATE_TIME: Tag = Tag(0x0040, 0x4005);
    /// ExpectedCompletionDateTime.
    pub const EXPECTED_COMPLETION_DATE_TIME: Tag = Tag(0x0040, 0x4011);
    /// ScheduledWorkitemCodeSequence.
    pub const SCHEDULED_WORKITEM_CODE_SEQUENCE: Tag = Tag(0x0040, 0x4018);
    /// InputInformationSequence.
    pub const INPUT_INFORMATION_SEQUENCE: Tag = Tag(0x0040, 0x4021);
    /// ScheduledStationNameCodeSequence.
    pub const SCHEDULED_STATION_NAME_CODE_SEQUENCE: Tag = Tag(0x0040, 0x4025);
    /// ScheduledStationClassCodeSequence.
    pub const SCHEDULED_STATION_CLASS_CODE_SEQUENCE: Tag = Tag(0x0040, 0x4026);
    /// ScheduledStationGeographicLocationCodeSequence.
    pub const SCHEDULED_STATION_GEOGRAPHIC_LOCATION_CODE_SEQUENCE: Tag = Tag(0x0040, 0x4027);
    /// PerformedStationNameCodeSequence.
    pub const PERFORMED_STATION_NAME_CODE_SEQUENCE: Tag = Tag(0x0040, 0x4028);
    /// ScheduledHumanPerformersSequence.
    pub const SCHEDULED_HUMAN_PERFORMERS_SEQUENCE: Tag = Tag(0x0040, 0x4034);
    /// ActualHumanPerformersSequence.
    pub const ACTUAL_HUMAN_PERFORMERS_SEQUENCE: Tag = Tag(0x0040, 0x4035);
    /// HumanPerformerOrganization.
    pub const HUMAN_PERFORMER_ORGANIZATION: Tag = Tag(0x0040, 0x4036);
    /// HumanPerformerName.
    pub const HUMAN_PERFORMER_NAME: Tag = Tag(0x0040, 0x4037);
    /// ScheduledProcedureStepModificationDateTime.
    pub const SCHEDULED_PROCEDURE_STEP_MODIFICATION_DATE_TIME: Tag = Tag(0x0040, 0x4010);
    /// InputReadinessState.
    pub const INPUT_READINESS_STATE: Tag = Tag(0x0040, 0x4041);
    /// PerformedProcedureStepStartDateTime.
    pub const PERFORMED_PROCEDURE_STEP_START_DATE_TIME: Tag = Tag(0x0040, 0x4050);
    /// PerformedProcedureStepEndDateTime.
    pub const PERFORMED_PROCEDURE_STEP_END_DATE_TIME: Tag = Tag(0x0040, 0x4051);
    /// ProcedureStepCancellationDateTime.
    pub const PROCEDURE_STEP_CANCELLATION_DATE_TIME: Tag = Tag(0x0040, 0x4052);
    /// OutputInformationSequence.
    pub const OUTPUT_INFORMATION_SEQUENCE: Tag = Tag(0x0040, 0x4033);
    /// HumanPerformerCodeSequence.
    pub const HUMAN_PERFORMER_CODE_SEQUENCE: Tag = Tag(0x0040, 0x4009);
    /// PerformedWorkitemCodeSequence.
    pub const PERFORMED_WORKITEM_CODE_SEQUENCE: Tag = Tag(0x0040, 0x4019);
    /// ReferencedRequestSequence.
    pub const REFERENCED_REQUEST_SEQUENCE: Tag = Tag(0x0040, 0xA370);
    /// ProcedureStepState.
    pub const PROCEDURE_STEP_STATE: Tag = Tag(0x0074, 0x1000);
    /// ProcedureStepProgressInformationSequence.
    pub const PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE: Tag = Tag(0x0074, 0x1002);
    /// ProcedureStepCommunicationsURISequence.
    pub const PROCEDURE_STEP_COMMUNICATIONS_URI_SEQUENCE: Tag = Tag(0x0074, 0x1008);
    /// ContactURI.
    pub const CONTACT_URI: Tag = Tag(0x0074, 0x100A);
    /// ContactDisplayName.
    pub const CONTACT_DISPLAY_NAME: Tag = Tag(0x0074, 0x100C);
    /// ProcedureStepDiscontinuationReasonCodeSequence.
    pub const PROCEDURE_STEP_DISCONTINUATION_REASON_CODE_SEQUENCE: Tag = Tag(0x0074, 0x100E);
    /// ScheduledProcedureStepPriority.
    pub const SCHEDULED_PROCEDURE_STEP_PRIORITY: Tag = Tag(0x0074, 0x1200);
    /// WorklistLabel.
    pub const WORKLIST_LABEL: Tag = Tag(0x0074, 0x1202);
    /// ProcedureStepLabel.
    pub const PROCEDURE_STEP_LABEL: Tag = Tag(0x0074, 0x1204);
    /// ScheduledProcessingParametersSequence.
    pub const SCHEDULED_PROCESSING_PARAMETERS_SEQUENCE: Tag = Tag(0x0074, 0x1210);
    /// UnifiedProcedureStepPerformedProcedureSequence.
    pub const UNIFIED_PROCEDURE_STEP_PERFORMED_PROCEDURE_SEQUENCE: Tag = Tag(0x0074, 0x1216);
    /// ReasonForCancellation.
    pub const REASON_FOR_CANCELLATION: Tag = Tag(0x0074, 0x1238);
}

use tags::*;

/// How a workitem transaction was refused: the status class and a message without values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 404 or 409.
    pub kind: RefusalKind,
    /// What is wrong, naming attributes and states only.
    pub message: String,
}

/// The HTTP class of a [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// 400: the request is invalid (for the workitem's state too, as Azure answers).
    Invalid,
    /// 404: no such workitem.
    NotFound,
    /// 409: the workitem exists already, or its state does not allow the request.
    Conflict,
}

impl Refusal {
    /// A 400.
    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::Invalid,
            message: message.into(),
        }
    }

    /// A 409.
    pub fn conflict(message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::Conflict,
            message: message.into(),
        }
    }

    /// A 404.
    pub fn not_found() -> Refusal {
        Refusal {
            kind: RefusalKind::NotFound,
            message: "the workitem does not exist".into(),
        }
    }
}

/// The Procedure Step State (0074,1000) of a workitem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcedureStepState {
    /// Created, not claimed.
    Scheduled,
    /// Claimed by the owner of its Transaction UID.
    InProgress,
    /// Done (final).
    Completed,
    /// Canceled (final).
    Canceled,
}

impl ProcedureStepState {
    /// The defined term.
    pub fn name(self) -> &'static str {
        match self {
            ProcedureStepState::Scheduled => "SCHEDULED",
            ProcedureStepState::InProgress => "IN PROGRESS",
            ProcedureStepState::Completed => "COMPLETED",
            ProcedureStepState::Canceled => "CANCELED",
        }
    }

    /// The state a defined term names (padding ignored, case kept as PS3.4 writes it).
    pub fn parse(value: &str) -> Option<ProcedureStepState> {
        match normalize_exact(value).as_str() {
            "SCHEDULED" => Some(ProcedureStepState::Scheduled),
            "IN PROGRESS" => Some(ProcedureStepState::InProgress),
            "COMPLETED" => Some(ProcedureStepState::Completed),
            "CANCELED" => Some(ProcedureStepState::Canceled),
            _ => None,
        }
    }
}

/// The value representations DICOM JSON may carry.
const VRS: [&str; 34] = [
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL",
    "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US",
    "UT", "UV",
];

/// A workitem dataset: a DICOM JSON object whose keys are uppercase tags, checked against the
/// limits above. Never holds the Transaction UID.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset(Map<String, Value>);

impl Dataset {
    /// Reads a request body: one DICOM JSON dataset, or an array holding exactly one (Azure's
    /// form). Checks the shape of every element, the nesting and the size limits.
    pub fn from_request(body: &[u8]) -> Result<Dataset, Refusal> {
        if body.len() > MAX_WORKITEM_BYTES {
            return Err(Refusal::invalid(format!(
                "a workitem may have at most {MAX_WORKITEM_BYTES} bytes"
            )));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|_| Refusal::invalid("the body is not valid DICOM JSON"))?;
        let object = match value {
            Value::Object(object) => object,
            Value::Array(mut items) if items.len() == 1 => match items.pop() {
                Some(Value::Object(object)) => object,
                _ => return Err(Refusal::invalid("the dataset must be a JSON object")),
            },
            Value::Array(_) => {
                return Err(Refusal::invalid(
                    "the body must hold exactly one workitem dataset",
                ));
            }
            _ => return Err(Refusal::invalid("the dataset must be a JSON object")),
        };
        let mut nodes = 0;
        Ok(Dataset(checked_object(object, 0, &mut nodes)?))
    }

    /// A dataset read back from storage (written by [`Dataset::to_json`]).
    pub fn from_stored(bytes: &[u8]) -> Option<Dataset> {
        match serde_json::from_slice(bytes).ok()? {
            Value::Object(object) => Some(Dataset(object)),
            _ => None,
        }
    }

    /// An empty dataset.
    pub fn empty() -> Dataset {
        Dataset(Map::new())
    }

    /// The DICOM JSON bytes to store.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap_or_default()
    }

    /// The DICOM JSON object.
    pub fn as_object(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Whether the attribute is present (even empty).
    pub fn contains(&self, tag: Tag) -> bool {
        self.0.contains_key(&tag_key(tag))
    }

    /// Whether the attribute is present with a value (a sequence: with an item).
    pub fn has_value(&self, tag: Tag) -> bool {
        self.0.get(&tag_key(tag)).is_some_and(element_has_value)
    }

    /// The first value of a string attribute (a person name's alphabetic group), padding
    /// stripped; `None` when absent or empty.
    pub fn string(&self, tag: Tag) -> Option<String> {
        self.0.get(&tag_key(tag)).and_then(first_string)
    }

    /// The items of a sequence (none when absent or empty).
    pub fn items(&self, tag: Tag) -> Vec<Dataset> {
        self.0
            .get(&tag_key(tag))
            .and_then(|element| element.get("Value"))
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.as_object().cloned().map(Dataset))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The VR an attribute is written with.
    fn vr(&self, tag: Tag) -> Option<&str> {
        self.0
            .get(&tag_key(tag))
            .and_then(|element| element.get("vr"))
            .and_then(Value::as_str)
    }

    /// Sets a single-valued string attribute.
    pub fn set_string(&mut self, tag: Tag, vr: &str, value: &str) {
        self.0.insert(
            tag_key(tag),
            serde_json::json!({ "vr": vr, "Value": [value] }),
        );
    }

    /// Sets a sequence of the given items.
    pub fn set_items(&mut self, tag: Tag, items: Vec<Dataset>) {
        let items: Vec<Value> = items
            .into_iter()
            .map(|item| Value::Object(item.0))
            .collect();
        let element = if items.is_empty() {
            serde_json::json!({ "vr": "SQ" })
        } else {
            serde_json::json!({ "vr": "SQ", "Value": items })
        };
        self.0.insert(tag_key(tag), element);
    }

    /// Removes an attribute, returning whether it was there.
    pub fn remove(&mut self, tag: Tag) -> bool {
        self.0.remove(&tag_key(tag)).is_some()
    }

    /// Copies every top-level attribute of `changes` over this dataset's (N-SET: a sequence
    /// is replaced whole).
    fn merge(&mut self, changes: Dataset) {
        for (key, element) in changes.0 {
            self.0.insert(key, element);
        }
    }
}

/// Checks one dataset object: every key a tag, every element well formed.
fn checked_object(
    object: Map<String, Value>,
    depth: usize,
    nodes: &mut usize,
) -> Result<Map<String, Value>, Refusal> {
    let mut checked = Map::new();
    for (key, element) in object {
        *nodes += 1;
        if *nodes > MAX_NODES {
            return Err(Refusal::invalid(format!(
                "a workitem may hold at most {MAX_NODES} elements and values"
            )));
        }
        if key.len() != 8 || !key.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(Refusal::invalid(
                "every attribute of a DICOM JSON dataset must be keyed by its 8-digit tag",
            ));
        }
        let key = key.to_ascii_uppercase();
        let Value::Object(mut element) = element else {
            return Err(Refusal::invalid(format!(
                "the attribute {key} must be a JSON object with a vr"
            )));
        };
        let vr = match element.get("vr") {
            Some(Value::String(vr)) if VRS.contains(&vr.as_str()) => vr.clone(),
            _ => {
                return Err(Refusal::invalid(format!(
                    "the attribute {key} has no valid vr"
                )));
            }
        };
        for name in element.keys() {
            match name.as_str() {
                "vr" | "Value" | "InlineBinary" => {}
                "BulkDataURI" => {
                    return Err(Refusal::invalid(format!(
                        "the attribute {key}: bulk data must be inline in a workitem"
                    )));
                }
                _ => {
                    return Err(Refusal::invalid(format!(
                        "the attribute {key} has an unknown member"
                    )));
                }
            }
        }
        if element.contains_key("Value") && element.contains_key("InlineBinary") {
            return Err(Refusal::invalid(format!(
                "the attribute {key} has both Value and InlineBinary"
            )));
        }
        if let Some(inline) = element.get("InlineBinary") {
            match inline {
                Value::String(text) if text.len() <= MAX_WORKITEM_BYTES => {}
                _ => {
                    return Err(Refusal::invalid(format!(
                        "the attribute {key} has an invalid InlineBinary"
                    )));
                }
            }
        }
        if let Some(values) = element.remove("Value") {
            let Value::Array(values) = values else {
                return Err(Refusal::invalid(format!(
                    "the Value of the attribute {key} must be an array"
                )));
            };
            let mut checked_values = Vec::with_capacity(values.len());
            for value in values {
                *nodes += 1;
                if *nodes > MAX_NODES {
                    return Err(Refusal::invalid(format!(
                        "a workitem may hold at most {MAX_NODES} elements and values"
                    )));
                }
                checked_values.push(checked_value(&key, &vr, value, depth, nodes)?);
            }
            element.insert("Value".into(), Value::Array(checked_values));
        }
        checked.insert(key, Value::Object(element));
    }
    Ok(checked)
}

/// Checks one value of an element of VR `vr`.
fn checked_value(
    key: &str,
    vr: &str,
    value: Value,
    depth: usize,
    nodes: &mut usize,
) -> Result<Value, Refusal> {
    let bad = || Refusal::invalid(format!("the attribute {key} has a value of the wrong type"));
    match (vr, value) {
        ("SQ", Value::Object(item)) => {
            if depth + 1 > MAX_SEQUENCE_DEPTH {
                return Err(Refusal::invalid(format!(
                    "sequences may nest at most {MAX_SEQUENCE_DEPTH} deep"
                )));
            }
            Ok(Value::Object(checked_object(item, depth + 1, nodes)?))
        }
        ("SQ", _) => Err(bad()),
        ("PN", Value::Object(name)) => {
            for (group, text) in &name {
                let known = matches!(group.as_str(), "Alphabetic" | "Ideographic" | "Phonetic");
                let fits = match text {
                    Value::String(text) => text.len() <= MAX_STRING_BYTES,
                    Value::Null => true,
                    _ => false,
                };
                if !known || !fits {
                    return Err(bad());
                }
            }
            Ok(Value::Object(name))
        }
        (_, Value::String(text)) if text.len() > MAX_STRING_BYTES => Err(Refusal::invalid(
            format!("a value of the attribute {key} is longer than {MAX_STRING_BYTES} bytes"),
        )),
        // Numbers are valid for the binary numeric VRs and DS/IS; strings for all others.
        (_, value @ (Value::String(_) | Value::Number(_) | Value::Null)) => Ok(value),
        _ => Err(bad()),
    }
}

fn element_has_value(element: &Value) -> bool {
    if element.get("InlineBinary").is_some() {
        return true;
    }
    element
        .get("Value")
        .and_then(Value::as_array)
        .is_some_and(|values| {
            values.iter().any(|value| match value {
                Value::Null => false,
                Value::String(text) => !normalize_exact(text).is_empty(),
                Value::Object(object) => {
                    // A sequence item counts even when empty; a person name needs some text.
                    element.get("vr").and_then(Value::as_str) != Some("PN")
                        || object.values().any(|group| {
                            group
                                .as_str()
                                .is_some_and(|text| !normalize_exact(text).is_empty())
                        })
                }
                _ => true,
            })
        })
}

fn first_string(element: &Value) -> Option<String> {
    let value = element.get("Value")?.as_array()?.first()?;
    let text = match value {
        Value::String(text) => normalize_exact(text),
        Value::Object(name) => {
            let groups: Vec<&str> = ["Alphabetic", "Ideographic", "Phonetic"]
                .iter()
                .map(|group| name.get(*group).and_then(Value::as_str).unwrap_or(""))
                .collect();
            normalize_person_name(&groups.join("="))
        }
        Value::Number(number) => number.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// What a transaction requires of an attribute (PS3.4 Table CC.2.5-3, the SCU's column, with
/// conditional requirements read as optional, as Azure does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requirement {
    /// Type 1: present with a value.
    Value,
    /// Type 2: present, possibly empty.
    Present,
    /// Type 3/1: when present, with a value.
    ValueIfPresent,
    /// May not be given.
    NotAllowed,
    /// Optional.
    Optional,
}

/// One row of the requirement table: the attribute, its keyword (for messages), what create
/// and update require, and what the items of a sequence require.
struct Row {
    tag: Tag,
    keyword: &'static str,
    create: Requirement,
    update: Requirement,
    items: &'static [Row],
}

const fn row(tag: Tag, keyword: &'static str, create: Requirement, update: Requirement) -> Row {
    Row {
        tag,
        keyword,
        create,
        update,
        items: &[],
    }
}

use Requirement::{NotAllowed, Optional, Present, Value as Required, ValueIfPresent};

const REFERENCED_REQUEST_ITEMS: &[Row] = &[
    row(STUDY_INSTANCE_UID, "StudyInstanceUID", Required, Required),
    row(ACCESSION_NUMBER, "AccessionNumber", Present, Present),
    row(
        REQUESTED_PROCEDURE_ID,
        "RequestedProcedureID",
        Present,
        Present,
    ),
];

const HUMAN_PERFORMER_ITEMS: &[Row] = &[
    row(
        HUMAN_PERFORMER_CODE_SEQUENCE,
        "HumanPerformerCodeSequence",
        Required,
        Required,
    ),
    row(
        HUMAN_PERFORMER_NAME,
        "HumanPerformerName",
        Required,
        Required,
    ),
    row(
        HUMAN_PERFORMER_ORGANIZATION,
        "HumanPerformerOrganization",
        Required,
        Required,
    ),
];

/// The attributes the create and update transactions check.
const REQUIREMENTS: &[Row] = &[
    // SOP Common (SOPClassUID is set by the service).
    row(SOP_INSTANCE_UID, "SOPInstanceUID", Required, NotAllowed),
    row(SOP_CLASS_UID, "SOPClassUID", Optional, NotAllowed),
    // Scheduled Procedure Information.
    row(
        SCHEDULED_PROCEDURE_STEP_PRIORITY,
        "ScheduledProcedureStepPriority",
        Required,
        ValueIfPresent,
    ),
    row(
        PROCEDURE_STEP_LABEL,
        "ProcedureStepLabel",
        Required,
        ValueIfPresent,
    ),
    row(WORKLIST_LABEL, "WorklistLabel", Optional, ValueIfPresent),
    row(
        SCHEDULED_PROCESSING_PARAMETERS_SEQUENCE,
        "ScheduledProcessingParametersSequence",
        Present,
        Optional,
    ),
    row(
        SCHEDULED_STATION_NAME_CODE_SEQUENCE,
        "ScheduledStationNameCodeSequence",
        Present,
        Optional,
    ),
    row(
        SCHEDULED_STATION_CLASS_CODE_SEQUENCE,
        "ScheduledStationClassCodeSequence",
        Present,
        Optional,
    ),
    row(
        SCHEDULED_STATION_GEOGRAPHIC_LOCATION_CODE_SEQUENCE,
        "ScheduledStationGeographicLocationCodeSequence",
        Present,
        Optional,
    ),
    Row {
        tag: SCHEDULED_HUMAN_PERFORMERS_SEQUENCE,
        keyword: "ScheduledHumanPerformersSequence",
        create: Optional,
        update: Optional,
        items: HUMAN_PERFORMER_ITEMS,
    },
    row(
        SCHEDULED_PROCEDURE_STEP_START_DATE_TIME,
        "ScheduledProcedureStepStartDateTime",
        Required,
        ValueIfPresent,
    ),
    row(
        EXPECTED_COMPLETION_DATE_TIME,
        "ExpectedCompletionDateTime",
        ValueIfPresent,
        ValueIfPresent,
    ),
    row(
        SCHEDULED_WORKITEM_CODE_SEQUENCE,
        "ScheduledWorkitemCodeSequence",
        Present,
        ValueIfPresent,
    ),
    row(
        COMMENTS_ON_THE_SCHEDULED_PROCEDURE_STEP,
        "CommentsOnTheScheduledProcedureStep",
        Present,
        ValueIfPresent,
    ),
    row(
        INPUT_READINESS_STATE,
        "InputReadinessState",
        Required,
        ValueIfPresent,
    ),
    row(
        INPUT_INFORMATION_SEQUENCE,
        "InputInformationSequence",
        Present,
        Optional,
    ),
    row(STUDY_INSTANCE_UID, "StudyInstanceUID", Optional, Optional),
    // Relationship: the patient and the request are fixed at creation.
    row(PATIENT_NAME, "PatientName", Present, NotAllowed),
    row(PATIENT_ID, "PatientID", Optional, NotAllowed),
    row(
        ISSUER_OF_PATIENT_ID,
        "IssuerOfPatientID",
        Optional,
        NotAllowed,
    ),
    row(
        OTHER_PATIENT_IDS_SEQUENCE,
        "OtherPatientIDsSequence",
        Present,
        Optional,
    ),
    row(PATIENT_BIRTH_DATE, "PatientBirthDate", Present, NotAllowed),
    row(PATIENT_SEX, "PatientSex", Present, NotAllowed),
    row(ADMISSION_ID, "AdmissionID", Present, NotAllowed),
    row(
        ISSUER_OF_ADMISSION_ID_SEQUENCE,
        "IssuerOfAdmissionIDSequence",
        Present,
        NotAllowed,
    ),
    row(
        ADMITTING_DIAGNOSES_DESCRIPTION,
        "AdmittingDiagnosesDescription",
        Present,
        NotAllowed,
    ),
    row(
        ADMITTING_DIAGNOSES_CODE_SEQUENCE,
        "AdmittingDiagnosesCodeSequence",
        Present,
        NotAllowed,
    ),
    Row {
        tag: REFERENCED_REQUEST_SEQUENCE,
        keyword: "ReferencedRequestSequence",
        create: Present,
        update: NotAllowed,
        items: REFERENCED_REQUEST_ITEMS,
    },
    // Progress: the state changes only through its own transactions.
    row(
        PROCEDURE_STEP_STATE,
        "ProcedureStepState",
        Optional,
        NotAllowed,
    ),
    row(TRANSACTION_UID, "TransactionUID", Optional, NotAllowed),
];

/// Which transaction a dataset is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transaction {
    Create,
    Update,
}

fn check_rows(dataset: &Dataset, rows: &[Row], transaction: Transaction) -> Result<(), Refusal> {
    for row in rows {
        let requirement = match transaction {
            Transaction::Create => row.create,
            Transaction::Update => row.update,
        };
        let present = dataset.contains(row.tag);
        let keyword = row.keyword;
        match requirement {
            Required if !dataset.has_value(row.tag) => {
                return Err(Refusal::invalid(format!(
                    "the attribute {keyword} is required and must have a value"
                )));
            }
            Present if !present => {
                return Err(Refusal::invalid(format!(
                    "the attribute {keyword} is required (it may be empty)"
                )));
            }
            ValueIfPresent if present && !dataset.has_value(row.tag) => {
                return Err(Refusal::invalid(format!(
                    "the attribute {keyword} must have a value when it is given"
                )));
            }
            NotAllowed if present => {
                return Err(Refusal::invalid(format!(
                    "the attribute {keyword} may not be given in this transaction"
                )));
            }
            _ => {}
        }
        if !row.items.is_empty() {
            for item in dataset.items(row.tag) {
                check_rows(&item, row.items, transaction)?;
            }
        }
    }
    Ok(())
}

/// Checks the values the service reads: UIDs, the enumerated attributes and the start time.
fn check_values(dataset: &Dataset) -> Result<(), Refusal> {
    for (tag, keyword) in [
        (SOP_INSTANCE_UID, "SOPInstanceUID"),
        (STUDY_INSTANCE_UID, "StudyInstanceUID"),
    ] {
        if let Some(uid) = dataset.string(tag)
            && !is_valid_uid(&uid)
        {
            return Err(Refusal::invalid(format!(
                "the attribute {keyword} is not a valid UID"
            )));
        }
    }
    for item in dataset.items(REFERENCED_REQUEST_SEQUENCE) {
        if let Some(uid) = item.string(STUDY_INSTANCE_UID)
            && !is_valid_uid(&uid)
        {
            return Err(Refusal::invalid(
                "the attribute ReferencedRequestSequence.StudyInstanceUID is not a valid UID",
            ));
        }
    }
    if let Some(priority) = dataset.string(SCHEDULED_PROCEDURE_STEP_PRIORITY)
        && !matches!(priority.as_str(), "HIGH" | "MEDIUM" | "LOW")
    {
        return Err(Refusal::invalid(
            "the attribute ScheduledProcedureStepPriority must be HIGH, MEDIUM or LOW",
        ));
    }
    if let Some(readiness) = dataset.string(INPUT_READINESS_STATE)
        && !matches!(readiness.as_str(), "READY" | "UNAVAILABLE" | "INCOMPLETE")
    {
        return Err(Refusal::invalid(
            "the attribute InputReadinessState must be READY, UNAVAILABLE or INCOMPLETE",
        ));
    }
    for (tag, keyword) in [
        (
            SCHEDULED_PROCEDURE_STEP_START_DATE_TIME,
            "ScheduledProcedureStepStartDateTime",
        ),
        (EXPECTED_COMPLETION_DATE_TIME, "ExpectedCompletionDateTime"),
    ] {
        if let Some(value) = dataset.string(tag)
            && datetime_date(&value).is_none()
        {
            return Err(Refusal::invalid(format!(
                "the attribute {keyword} is not a valid DT value"
            )));
        }
    }
    if let Some(vr) = dataset.vr(PATIENT_NAME)
        && vr != "PN"
    {
        return Err(Refusal::invalid(
            "the attribute PatientName must have VR PN",
        ));
    }
    check_key_values(dataset)
}

/// The date (`YYYYMMDD`) of a DT value (`YYYYMMDD[HH[MM[SS[.F]]]][&ZZXX]`), if it is one.
pub fn datetime_date(value: &str) -> Option<u32> {
    let value = normalize_exact(value);
    if value.len() < 8 || value.len() > 26 {
        return None;
    }
    // `get` rather than slicing: a hostile value may put a multi-byte character across byte 8.
    let (date, rest) = (value.get(..8)?, value.get(8..)?);
    let date = parse_date(date)?;
    let rest_ok = rest
        .bytes()
        .all(|byte| byte.is_ascii_digit() || matches!(byte, b'.' | b'+' | b'-'));
    rest_ok.then_some(date)
}

/// A DT value (UTC, with offset) for `unix_micros` microseconds since 1970.
pub fn datetime_value(unix_micros: i64) -> String {
    let seconds = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}.{micros:06}+0000",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The calendar date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A workitem as stored: its dataset (without the Transaction UID) and its lock.
#[derive(Debug, Clone, PartialEq)]
pub struct Workitem {
    /// The dataset, Procedure Step State included.
    pub dataset: Dataset,
    /// The Transaction UID of its owner, while IN PROGRESS or after.
    pub transaction_uid: Option<String>,
}

impl Workitem {
    /// Its Workitem UID.
    pub fn uid(&self) -> Option<String> {
        self.dataset.string(SOP_INSTANCE_UID)
    }

    /// Its state; `None` only for a damaged dataset.
    pub fn state(&self) -> Option<ProcedureStepState> {
        self.dataset
            .string(PROCEDURE_STEP_STATE)
            .and_then(|state| ProcedureStepState::parse(&state))
    }
}

/// Prepares a new workitem (N-CREATE): the Workitem UID from the URI (`?{uid}`) or the
/// dataset (both must agree), the attributes the service sets (SOP Class, modification time,
/// Worklist Label, the SCHEDULED state), then the requirements of PS3.4 Table CC.2.5-3.
pub fn prepare_create(
    mut dataset: Dataset,
    uid_in_uri: Option<&str>,
    now_micros: i64,
) -> Result<Workitem, Refusal> {
    if let Some(uid) = uid_in_uri {
        if !is_valid_uid(uid) {
            return Err(Refusal::invalid(
                "the workitem UID in the URI is not a valid UID",
            ));
        }
        match dataset.string(SOP_INSTANCE_UID) {
            Some(in_dataset) if in_dataset != normalize_exact(uid) => {
                return Err(Refusal::invalid(
                    "the SOPInstanceUID of the dataset differs from the workitem UID in the URI",
                ));
            }
            _ => dataset.set_string(SOP_INSTANCE_UID, "UI", &normalize_exact(uid)),
        }
    }
    if dataset.has_value(TRANSACTION_UID) {
        return Err(Refusal::invalid(
            "the attribute TransactionUID must be empty when a workitem is created",
        ));
    }
    dataset.remove(TRANSACTION_UID);
    match dataset.string(PROCEDURE_STEP_STATE) {
        None => {}
        Some(state) if ProcedureStepState::parse(&state) == Some(ProcedureStepState::Scheduled) => {
        }
        Some(_) => {
            return Err(Refusal::invalid(
                "the attribute ProcedureStepState must be SCHEDULED when a workitem is created",
            ));
        }
    }
    check_rows(&dataset, REQUIREMENTS, Transaction::Create)?;
    check_values(&dataset)?;
    dataset.set_string(SOP_CLASS_UID, "UI", UPS_PUSH_SOP_CLASS_UID);
    dataset.set_string(
        SCHEDULED_PROCEDURE_STEP_MODIFICATION_DATE_TIME,
        "DT",
        &datetime_value(now_micros),
    );
    if !dataset.has_value(WORKLIST_LABEL) {
        dataset.set_string(WORKLIST_LABEL, "LO", DEFAULT_WORKLIST_LABEL);
    }
    dataset.set_string(
        PROCEDURE_STEP_STATE,
        "CS",
        ProcedureStepState::Scheduled.name(),
    );
    Ok(Workitem {
        dataset,
        transaction_uid: None,
    })
}

/// Applies an update (N-SET) with the Transaction UID given in the URI (`?{transaction}`):
/// a SCHEDULED workitem takes none, an IN PROGRESS one only its own, a final one no update.
pub fn apply_update(
    current: &Workitem,
    changes: Dataset,
    transaction_uid: Option<&str>,
    now_micros: i64,
) -> Result<Workitem, Refusal> {
    match current.state() {
        Some(ProcedureStepState::Scheduled) => {
            if transaction_uid.is_some() {
                return Err(Refusal::invalid(
                    "a SCHEDULED workitem is updated without a Transaction UID",
                ));
            }
        }
        Some(ProcedureStepState::InProgress) => match transaction_uid {
            None => {
                return Err(Refusal::invalid(
                    "an IN PROGRESS workitem is updated only with its Transaction UID",
                ));
            }
            Some(given) if Some(normalize_exact(given)) != current.transaction_uid => {
                return Err(Refusal::invalid(
                    "the Transaction UID does not match the workitem's",
                ));
            }
            Some(_) => {}
        },
        Some(state @ (ProcedureStepState::Completed | ProcedureStepState::Canceled)) => {
            return Err(Refusal::invalid(format!(
                "the workitem is {} and may no longer be updated",
                state.name()
            )));
        }
        None => return Err(Refusal::invalid("the workitem has no valid state")),
    }
    check_rows(&changes, REQUIREMENTS, Transaction::Update)?;
    check_values(&changes)?;
    let mut dataset = current.dataset.clone();
    dataset.merge(changes);
    dataset.set_string(
        SCHEDULED_PROCEDURE_STEP_MODIFICATION_DATE_TIME,
        "DT",
        &datetime_value(now_micros),
    );
    Ok(Workitem {
        dataset,
        transaction_uid: current.transaction_uid.clone(),
    })
}

/// What a state change or a cancel request does.
#[derive(Debug, Clone, PartialEq)]
pub enum StateOutcome {
    /// The workitem changes to this.
    Changed(Workitem),
    /// Nothing changes: the workitem is already in the requested final state; the message is
    /// the warning to return (PS3.4 B304/B306).
    Unchanged(String),
}

/// The body of a change-state request: its Transaction UID and target state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The Transaction UID the caller holds (or claims with).
    pub transaction_uid: String,
    /// IN PROGRESS, COMPLETED or CANCELED.
    pub target: ProcedureStepState,
}

impl StateChange {
    /// Reads a change-state dataset: a Transaction UID and a Procedure Step State, both
    /// required.
    pub fn from_dataset(dataset: &Dataset) -> Result<StateChange, Refusal> {
        let transaction_uid = dataset.string(TRANSACTION_UID).ok_or_else(|| {
            Refusal::invalid("the attribute TransactionUID is required to change the state")
        })?;
        if !is_valid_uid(&transaction_uid) {
            return Err(Refusal::invalid(
                "the attribute TransactionUID is not a valid UID",
            ));
        }
        let state = dataset.string(PROCEDURE_STEP_STATE).ok_or_else(|| {
            Refusal::invalid("the attribute ProcedureStepState is required to change the state")
        })?;
        let target = match ProcedureStepState::parse(&state) {
            Some(
                state @ (ProcedureStepState::InProgress
                | ProcedureStepState::Completed
                | ProcedureStepState::Canceled),
            ) => state,
            _ => {
                return Err(Refusal::invalid(
                    "the attribute ProcedureStepState must be IN PROGRESS, COMPLETED or CANCELED",
                ));
            }
        };
        Ok(StateChange {
            transaction_uid,
            target,
        })
    }
}

/// Changes the state (N-ACTION "Change UPS State", PS3.4 Table CC.1.1-2 as Azure applies it):
/// SCHEDULED to IN PROGRESS with a new Transaction UID (the caller becomes the owner); IN
/// PROGRESS to COMPLETED or CANCELED with the owner's. Every refused transition is a 400 whose
/// message carries the PS3.4 status (C300, C301, C302, C310).
pub fn change_state(
    current: &Workitem,
    change: &StateChange,
    now_micros: i64,
) -> Result<StateOutcome, Refusal> {
    use ProcedureStepState::*;
    let state = current
        .state()
        .ok_or_else(|| Refusal::invalid("the workitem has no valid state"))?;
    let matches = current.transaction_uid.as_deref() == Some(change.transaction_uid.as_str());
    let refused = |code: &str, why: &str| {
        Err(Refusal::invalid(format!(
            "the workitem cannot change from {} to {} ({code}): {why}",
            state.name(),
            change.target.name()
        )))
    };
    const WRONG_UID: &str = "the Transaction UID does not match the workitem's";
    let target = match (change.target, state) {
        (InProgress, Scheduled) => InProgress,
        (InProgress, InProgress) if matches => {
            return refused("C302", "the workitem is already IN PROGRESS");
        }
        (InProgress, Completed | Canceled) if matches => {
            return refused("C300", "the workitem may no longer be updated");
        }
        (Completed | Canceled, Scheduled) if current.transaction_uid.is_none() => {
            return refused("C310", "the workitem is not IN PROGRESS");
        }
        (Completed, InProgress) if matches => Completed,
        (Canceled, InProgress) if matches => Canceled,
        (Completed, Completed) if matches => {
            return Ok(StateOutcome::Unchanged(
                "the workitem is already in the requested state of COMPLETED (B306)".into(),
            ));
        }
        (Canceled, Canceled) if matches => {
            return Ok(StateOutcome::Unchanged(
                "the workitem is already in the requested state of CANCELED (B304)".into(),
            ));
        }
        (Completed, Canceled) | (Canceled, Completed) if matches => {
            return refused("C300", "the workitem may no longer be updated");
        }
        _ => return refused("C301", WRONG_UID),
    };
    let mut next = current.clone();
    next.dataset
        .set_string(PROCEDURE_STEP_STATE, "CS", target.name());
    match target {
        InProgress => next.transaction_uid = Some(change.transaction_uid.clone()),
        Canceled => record_cancellation(&mut next.dataset, None, now_micros),
        _ => {}
    }
    check_final_state(&next.dataset, target)?;
    Ok(StateOutcome::Changed(next))
}

/// Requests the cancellation of a workitem (N-ACTION "Request UPS Cancel"): a SCHEDULED one is
/// canceled at once (202). This service does not notify owners (no Watch/Event SOP classes),
/// so an IN PROGRESS one is refused (409), as are final ones (CANCELED with the B304 warning).
pub fn request_cancel(
    current: &Workitem,
    request: &Dataset,
    now_micros: i64,
) -> Result<StateOutcome, Refusal> {
    match current.state() {
        Some(ProcedureStepState::Scheduled) => {}
        Some(ProcedureStepState::InProgress) => {
            return Err(Refusal::conflict(
                "the workitem is IN PROGRESS: only its owner may cancel it, through a change \
                 of state (C312)",
            ));
        }
        Some(ProcedureStepState::Completed) => {
            return Err(Refusal::conflict(
                "the workitem is already COMPLETED (C311)",
            ));
        }
        Some(ProcedureStepState::Canceled) => {
            return Err(Refusal::conflict(
                "the workitem is already in the requested state of CANCELED (B304)",
            ));
        }
        None => return Err(Refusal::invalid("the workitem has no valid state")),
    }
    let mut next = current.clone();
    next.dataset.set_string(
        PROCEDURE_STEP_STATE,
        "CS",
        ProcedureStepState::Canceled.name(),
    );
    record_cancellation(&mut next.dataset, Some(request), now_micros);
    check_final_state(&next.dataset, ProcedureStepState::Canceled)?;
    Ok(StateOutcome::Changed(next))
}

/// Records a cancellation in the Progress Information: its time, and the reason and contact of
/// a cancel request when it gave them.
fn record_cancellation(dataset: &mut Dataset, request: Option<&Dataset>, now_micros: i64) {
    let now = datetime_value(now_micros);
    let mut progress = dataset
        .items(PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE)
        .into_iter()
        .next()
        .unwrap_or_else(Dataset::empty);
    progress.set_string(PROCEDURE_STEP_CANCELLATION_DATE_TIME, "DT", &now);
    if let Some(request) = request {
        if let Some(reason) = request.string(REASON_FOR_CANCELLATION) {
            progress.set_string(REASON_FOR_CANCELLATION, "LT", &reason);
        }
        if request.contains(PROCEDURE_STEP_DISCONTINUATION_REASON_CODE_SEQUENCE) {
            progress.set_items(
                PROCEDURE_STEP_DISCONTINUATION_REASON_CODE_SEQUENCE,
                request.items(PROCEDURE_STEP_DISCONTINUATION_REASON_CODE_SEQUENCE),
            );
        }
        let mut contact = Dataset::empty();
        if let Some(uri) = request.string(CONTACT_URI) {
            contact.set_string(CONTACT_URI, "UR", &uri);
        }
        if let Some(name) = request.string(CONTACT_DISPLAY_NAME) {
            contact.set_string(CONTACT_DISPLAY_NAME, "LO", &name);
        }
        if !contact.as_object().is_empty() {
            progress.set_items(PROCEDURE_STEP_COMMUNICATIONS_URI_SEQUENCE, vec![contact]);
        }
    }
    dataset.set_items(PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE, vec![progress]);
}

/// The final-state requirements (PS3.4 Table CC.2.5-1): what must have a value before a
/// workitem is COMPLETED or CANCELED ("R"), and before it is COMPLETED ("P").
fn check_final_state(dataset: &Dataset, target: ProcedureStepState) -> Result<(), Refusal> {
    if !matches!(
        target,
        ProcedureStepState::Completed | ProcedureStepState::Canceled
    ) {
        return Ok(());
    }
    let missing = |keyword: &str| {
        Err(Refusal::invalid(format!(
            "the workitem cannot be {} without a value of {keyword}",
            target.name()
        )))
    };
    for (tag, keyword) in [
        (SOP_CLASS_UID, "SOPClassUID"),
        (SOP_INSTANCE_UID, "SOPInstanceUID"),
        (
            SCHEDULED_PROCEDURE_STEP_PRIORITY,
            "ScheduledProcedureStepPriority",
        ),
        (
            SCHEDULED_PROCEDURE_STEP_MODIFICATION_DATE_TIME,
            "ScheduledProcedureStepModificationDateTime",
        ),
        (
            SCHEDULED_PROCEDURE_STEP_START_DATE_TIME,
            "ScheduledProcedureStepStartDateTime",
        ),
        (INPUT_READINESS_STATE, "InputReadinessState"),
        (PROCEDURE_STEP_STATE, "ProcedureStepState"),
    ] {
        if !dataset.has_value(tag) {
            return missing(keyword);
        }
    }
    if target == ProcedureStepState::Completed {
        let performed = dataset.items(UNIFIED_PROCEDURE_STEP_PERFORMED_PROCEDURE_SEQUENCE);
        let Some(item) = performed.first() else {
            return missing("UnifiedProcedureStepPerformedProcedureSequence");
        };
        for (tag, keyword) in [
            (
                PERFORMED_STATION_NAME_CODE_SEQUENCE,
                "UnifiedProcedureStepPerformedProcedureSequence.PerformedStationNameCodeSequence",
            ),
            (
                PERFORMED_PROCEDURE_STEP_START_DATE_TIME,
                "UnifiedProcedureStepPerformedProcedureSequence.PerformedProcedureStepStartDateTime",
            ),
            (
                PERFORMED_WORKITEM_CODE_SEQUENCE,
                "UnifiedProcedureStepPerformedProcedureSequence.PerformedWorkitemCodeSequence",
            ),
            (
                PERFORMED_PROCEDURE_STEP_END_DATE_TIME,
                "UnifiedProcedureStepPerformedProcedureSequence.PerformedProcedureStepEndDateTime",
            ),
            (
                OUTPUT_INFORMATION_SEQUENCE,
                "UnifiedProcedureStepPerformedProcedureSequence.OutputInformationSequence",
            ),
        ] {
            if !item.has_value(tag) {
                return missing(keyword);
            }
        }
        for performer in item.items(ACTUAL_HUMAN_PERFORMERS_SEQUENCE) {
            if !performer.has_value(HUMAN_PERFORMER_CODE_SEQUENCE)
                || !performer.has_value(HUMAN_PERFORMER_NAME)
            {
                return missing("ActualHumanPerformersSequence.HumanPerformerName");
            }
        }
    }
    Ok(())
}

/// How a search key matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkitemKeyKind {
    /// Equality of the normalized value.
    Exact,
    /// A person name: exact, or word prefixes with `fuzzymatching=true`.
    PersonName,
    /// A date-time matched on its date, by exact day or inclusive range of days.
    DateTime,
    /// The Procedure Step State (its defined terms, compared in upper case).
    State,
}

/// An attribute workitems are searched by: its path (a sequence's item attribute has two
/// tags) and Azure's name for it.
#[derive(Debug, PartialEq, Eq)]
pub struct WorkitemKey {
    /// Azure's name: a keyword, or `Sequence.Keyword`.
    pub name: &'static str,
    /// The tags from the top level down.
    pub path: &'static [Tag],
    /// How it matches.
    pub kind: WorkitemKeyKind,
}

/// The search keys Azure's DICOM service supports for workitems.
pub static WORKITEM_KEYS: [WorkitemKey; 10] = [
    WorkitemKey {
        name: "PatientName",
        path: &[PATIENT_NAME],
        kind: WorkitemKeyKind::PersonName,
    },
    WorkitemKey {
        name: "PatientID",
        path: &[PATIENT_ID],
        kind: WorkitemKeyKind::Exact,
    },
    WorkitemKey {
        name: "ReferencedRequestSequence.AccessionNumber",
        path: &[REFERENCED_REQUEST_SEQUENCE, ACCESSION_NUMBER],
        kind: WorkitemKeyKind::Exact,
    },
    WorkitemKey {
        name: "ReferencedRequestSequence.RequestedProcedureID",
        path: &[REFERENCED_REQUEST_SEQUENCE, REQUESTED_PROCEDURE_ID],
        kind: WorkitemKeyKind::Exact,
    },
    WorkitemKey {
        name: "ScheduledProcedureStepStartDateTime",
        path: &[SCHEDULED_PROCEDURE_STEP_START_DATE_TIME],
        kind: WorkitemKeyKind::DateTime,
    },
    WorkitemKey {
        name: "ScheduledStationNameCodeSequence.CodeValue",
        path: &[SCHEDULED_STATION_NAME_CODE_SEQUENCE, CODE_VALUE],
        kind: WorkitemKeyKind::Exact,
    },
    WorkitemKey {
        name: "ScheduledStationClassCodeSequence.CodeValue",
        path: &[SCHEDULED_STATION_CLASS_CODE_SEQUENCE, CODE_VALUE],
        kind: WorkitemKeyKind::Exact,
    },
    WorkitemKey {
        name: "ScheduledStationGeographicLocationCodeSequence.CodeValue",
        path: &[
            SCHEDULED_STATION_GEOGRAPHIC_LOCATION_CODE_SEQUENCE,
            CODE_VALUE,
        ],
        kind: WorkitemKeyKind::Exact,
    },
    WorkitemKey {
        name: "ProcedureStepState",
        path: &[PROCEDURE_STEP_STATE],
        kind: WorkitemKeyKind::State,
    },
    WorkitemKey {
        name: "StudyInstanceUID",
        path: &[STUDY_INSTANCE_UID],
        kind: WorkitemKeyKind::Exact,
    },
];

/// The search key a query parameter's name denotes: keywords or 8-digit tags joined by `.`.
pub fn find_key(name: &str) -> Option<&'static WorkitemKey> {
    if name.len() > 128 {
        return None;
    }
    let path: Vec<Tag> = name
        .split('.')
        .map(resolve_tag)
        .collect::<Option<Vec<Tag>>>()?;
    WORKITEM_KEYS.iter().find(|key| key.path == path.as_slice())
}

/// The most values one search key may take in a workitem (items of its sequence).
pub const MAX_VALUES_PER_KEY: usize = 64;
/// The longest value of a search key, in bytes: a person name's three groups of 64 characters,
/// which every other key's VR (LO, SH, CS, UI, DT) stays well under.
pub const MAX_KEY_VALUE_BYTES: usize = 3 * 64 * 4 + 2;

/// The values of one search key in a dataset (each item of a sequence gives one).
fn key_values(dataset: &Dataset, key: &WorkitemKey) -> Vec<String> {
    match key.path {
        [tag] => dataset.string(*tag).into_iter().collect(),
        [sequence, tag] => dataset
            .items(*sequence)
            .iter()
            .filter_map(|item| item.string(*tag))
            .collect(),
        _ => Vec::new(),
    }
}

/// Refuses a dataset whose searchable values would cost more tokens than a workitem needs:
/// at most [`MAX_VALUES_PER_KEY`] values per key, each at most [`MAX_KEY_VALUE_BYTES`] long
/// (a person name leaves one token per word prefix, so its length bounds the work).
fn check_key_values(dataset: &Dataset) -> Result<(), Refusal> {
    for key in &WORKITEM_KEYS {
        let values = key_values(dataset, key);
        if values.len() > MAX_VALUES_PER_KEY {
            return Err(Refusal::invalid(format!(
                "{} may have at most {MAX_VALUES_PER_KEY} values in a workitem",
                key.name
            )));
        }
        if values.iter().any(|value| value.len() > MAX_KEY_VALUE_BYTES) {
            return Err(Refusal::invalid(format!(
                "a value of {} is longer than its VR allows",
                key.name
            )));
        }
    }
    Ok(())
}

/// The values a stored workitem is found by, per key (each item of a sequence gives one).
pub fn search_terms(dataset: &Dataset) -> Vec<(&'static WorkitemKey, SearchValue)> {
    let mut terms = Vec::new();
    for key in &WORKITEM_KEYS {
        for value in key_values(dataset, key) {
            let term = match key.kind {
                WorkitemKeyKind::Exact => Some(SearchValue::Exact(normalize_exact(&value))),
                WorkitemKeyKind::State => {
                    Some(SearchValue::Exact(normalize_exact(&value).to_uppercase()))
                }
                WorkitemKeyKind::PersonName => Some(SearchValue::PersonName {
                    exact: normalize_person_name(&value),
                    words: name_words(&value),
                }),
                WorkitemKeyKind::DateTime => datetime_date(&value).map(SearchValue::Date),
            };
            if let Some(term) = term
                && !terms.contains(&(key, term.clone()))
            {
                terms.push((key, term));
            }
        }
    }
    terms
}

/// How a query value matches a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMatch {
    /// The normalized value equals this.
    Exact(String),
    /// Each of these word prefixes starts some word of the name.
    FuzzyName(Vec<String>),
    /// The date lies in these inclusive bounds (either may be open).
    DateRange(Option<u32>, Option<u32>),
}

/// Reads a query value for `key` (values are at most 256 bytes; wildcards are not supported,
/// a date-time matches by whole days).
pub fn parse_match(key: &WorkitemKey, value: &str, fuzzy: bool) -> Result<KeyMatch, Refusal> {
    if value.len() > 256 {
        return Err(Refusal::invalid(format!(
            "the value of {} is longer than 256 bytes",
            key.name
        )));
    }
    let trimmed = normalize_exact(value);
    if trimmed.is_empty() {
        return Err(Refusal::invalid(format!(
            "searching {} for an empty value is not supported",
            key.name
        )));
    }
    if key.kind != WorkitemKeyKind::PersonName && (trimmed.contains('*') || trimmed.contains('?')) {
        return Err(Refusal::invalid(format!(
            "wildcards are not supported in {}",
            key.name
        )));
    }
    Ok(match key.kind {
        WorkitemKeyKind::Exact => KeyMatch::Exact(trimmed),
        WorkitemKeyKind::State => KeyMatch::Exact(trimmed.to_uppercase()),
        WorkitemKeyKind::PersonName if fuzzy => {
            let words = fuzzy_query_words(&trimmed);
            if words.is_empty() {
                return Err(Refusal::invalid(
                    "a fuzzy PatientName search needs at least one letter or digit",
                ));
            }
            KeyMatch::FuzzyName(words)
        }
        WorkitemKeyKind::PersonName => {
            if trimmed.contains('*') || trimmed.contains('?') {
                return Err(Refusal::invalid(
                    "wildcards are not supported in PatientName; use fuzzymatching=true",
                ));
            }
            KeyMatch::Exact(normalize_person_name(&trimmed))
        }
        WorkitemKeyKind::DateTime => {
            let only_dates = trimmed
                .split('-')
                .all(|bound| bound.is_empty() || bound.len() == 8);
            if !only_dates {
                return Err(Refusal::invalid(format!(
                    "{} matches whole days: give YYYYMMDD or a range YYYYMMDD-YYYYMMDD",
                    key.name
                )));
            }
            let (from, to) = crate::normalize::parse_date_range(&trimmed)
                .map_err(|error| Refusal::invalid(format!("{}: {error}", key.name)))?;
            KeyMatch::DateRange(from, to)
        }
    })
}

/// The attributes a search returns by default: those of PS3.4 Table CC.2.5-3 with return key
/// type 1 or 2 (top level), as Azure returns them.
const DEFAULT_RETURN: &[Tag] = &[
    SPECIFIC_CHARACTER_SET,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    SCHEDULED_PROCEDURE_STEP_PRIORITY,
    SCHEDULED_PROCEDURE_STEP_MODIFICATION_DATE_TIME,
    PROCEDURE_STEP_LABEL,
    WORKLIST_LABEL,
    SCHEDULED_PROCESSING_PARAMETERS_SEQUENCE,
    SCHEDULED_STATION_NAME_CODE_SEQUENCE,
    SCHEDULED_STATION_CLASS_CODE_SEQUENCE,
    SCHEDULED_STATION_GEOGRAPHIC_LOCATION_CODE_SEQUENCE,
    SCHEDULED_HUMAN_PERFORMERS_SEQUENCE,
    SCHEDULED_PROCEDURE_STEP_START_DATE_TIME,
    EXPECTED_COMPLETION_DATE_TIME,
    SCHEDULED_WORKITEM_CODE_SEQUENCE,
    COMMENTS_ON_THE_SCHEDULED_PROCEDURE_STEP,
    INPUT_READINESS_STATE,
    INPUT_INFORMATION_SEQUENCE,
    STUDY_INSTANCE_UID,
    PATIENT_NAME,
    PATIENT_ID,
    ISSUER_OF_PATIENT_ID,
    OTHER_PATIENT_IDS_SEQUENCE,
    PATIENT_BIRTH_DATE,
    PATIENT_SEX,
    ADMISSION_ID,
    ISSUER_OF_ADMISSION_ID_SEQUENCE,
    ADMITTING_DIAGNOSES_DESCRIPTION,
    ADMITTING_DIAGNOSES_CODE_SEQUENCE,
    REFERENCED_REQUEST_SEQUENCE,
    PROCEDURE_STEP_STATE,
    PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE,
    UNIFIED_PROCEDURE_STEP_PERFORMED_PROCEDURE_SEQUENCE,
];

/// Which attributes of a search result are returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    /// `includefield=all`: every attribute.
    pub all: bool,
    /// Top-level attributes asked for besides the defaults (includefield, matched keys).
    pub extra: BTreeSet<Tag>,
}

impl Projection {
    /// The attributes of `dataset` this projection returns.
    pub fn apply(&self, dataset: &Dataset) -> Map<String, Value> {
        if self.all {
            return dataset.0.clone();
        }
        let mut selected = Map::new();
        for tag in DEFAULT_RETURN.iter().chain(self.extra.iter()) {
            let key = tag_key(*tag);
            if let Some(element) = dataset.0.get(&key) {
                selected.insert(key, element.clone());
            }
        }
        selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_780_000_000_000_000;

    pub(crate) fn create_body(uid: &str) -> Value {
        json!({
            "00080018": {"vr": "UI", "Value": [uid]},
            "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
            "00741204": {"vr": "LO", "Value": ["label"]},
            "00741210": {"vr": "SQ"},
            "00404025": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["STATION1"]}}]},
            "00404026": {"vr": "SQ"},
            "00404027": {"vr": "SQ"},
            "00404005": {"vr": "DT", "Value": ["20261204093000"]},
            "00404018": {"vr": "SQ"},
            "00400400": {"vr": "LT"},
            "00404041": {"vr": "CS", "Value": ["READY"]},
            "00404021": {"vr": "SQ"},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00100020": {"vr": "LO", "Value": ["PID1"]},
            "00101002": {"vr": "SQ"},
            "00100030": {"vr": "DA"},
            "00100040": {"vr": "CS"},
            "00380010": {"vr": "LO"},
            "00380014": {"vr": "SQ"},
            "00081080": {"vr": "LO"},
            "00081084": {"vr": "SQ"},
            "0040A370": {"vr": "SQ", "Value": [{
                "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
                "00080050": {"vr": "SH", "Value": ["ACC1"]},
                "00401001": {"vr": "SH", "Value": ["RP1"]}
            }]}
        })
    }

    fn dataset(value: Value) -> Result<Dataset, Refusal> {
        Dataset::from_request(value.to_string().as_bytes())
    }

    fn created(uid: &str) -> Workitem {
        prepare_create(dataset(create_body(uid)).expect("dataset"), None, NOW).expect("create")
    }

    fn change(uid: &str, target: ProcedureStepState) -> StateChange {
        StateChange {
            transaction_uid: uid.into(),
            target,
        }
    }

    fn changed(outcome: Result<StateOutcome, Refusal>) -> Workitem {
        match outcome {
            Ok(StateOutcome::Changed(next)) => next,
            other => panic!("not changed: {other:?}"),
        }
    }

    fn completable(mut workitem: Workitem) -> Workitem {
        let performed = dataset(json!({
            "00741216": {"vr": "SQ", "Value": [{
                "00404028": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["S"]}}]},
                "00404050": {"vr": "DT", "Value": ["20261204100000"]},
                "00404019": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["W"]}}]},
                "00404051": {"vr": "DT", "Value": ["20261204110000"]},
                "00404033": {"vr": "SQ", "Value": [{}]}
            }]}
        }))
        .expect("performed");
        let txn = workitem.transaction_uid.clone();
        workitem = apply_update(&workitem, performed, txn.as_deref(), NOW).expect("update");
        workitem
    }

    #[test]
    fn create_sets_what_the_service_owns_and_checks_requirements() {
        let workitem = created("1.2.3.100");
        assert_eq!(workitem.state(), Some(ProcedureStepState::Scheduled));
        assert_eq!(
            workitem.dataset.string(SOP_CLASS_UID).as_deref(),
            Some(UPS_PUSH_SOP_CLASS_UID)
        );
        assert_eq!(
            workitem.dataset.string(WORKLIST_LABEL).as_deref(),
            Some(DEFAULT_WORKLIST_LABEL)
        );
        assert!(workitem.transaction_uid.is_none());
        // The URI's UID fills the dataset's, and must agree with it.
        let mut body = create_body("1.2.3.100");
        body.as_object_mut().expect("object").remove("00080018");
        let from_uri = prepare_create(dataset(body).expect("dataset"), Some("1.2.3.101"), NOW)
            .expect("create");
        assert_eq!(from_uri.uid().as_deref(), Some("1.2.3.101"));
        let mismatch = prepare_create(
            dataset(create_body("1.2.3.100")).expect("dataset"),
            Some("1.2.3.101"),
            NOW,
        );
        assert_eq!(mismatch.map_err(|r| r.kind), Err(RefusalKind::Invalid));
        // Missing, empty or wrong attributes are refused with their name.
        for (key, replacement) in [
            ("00741200", None),
            ("00741200", Some(json!({"vr": "CS", "Value": ["URGENT"]}))),
            (
                "00404005",
                Some(json!({"vr": "DT", "Value": ["not a date"]})),
            ),
            ("00100010", None),
            (
                "00741000",
                Some(json!({"vr": "CS", "Value": ["IN PROGRESS"]})),
            ),
            ("00081195", Some(json!({"vr": "UI", "Value": ["1.2.3"]}))),
            (
                "00080018",
                Some(json!({"vr": "UI", "Value": ["not-a-uid"]})),
            ),
        ] {
            let mut body = create_body("1.2.3.102");
            let object = body.as_object_mut().expect("object");
            match replacement {
                Some(value) => object.insert(key.into(), value),
                None => object.remove(key),
            };
            let refused =
                prepare_create(dataset(body).expect("dataset"), None, NOW).expect_err("refused");
            assert_eq!(refused.kind, RefusalKind::Invalid, "{key}");
        }
    }

    #[test]
    fn hostile_datasets_are_refused() {
        let deep = (0..=MAX_SEQUENCE_DEPTH).fold(
            json!({}),
            |inner, _| json!({"0040A730": {"vr": "SQ", "Value": [inner]}}),
        );
        for body in [
            json!([]),
            json!([{}, {}]),
            json!("text"),
            json!({"PatientName": {"vr": "PN"}}),
            json!({"00100010": {"vr": "XX"}}),
            json!({"00100010": {"vr": "PN", "Value": "Doe"}}),
            json!({"00100010": {"vr": "PN", "Value": [{"Other": "Doe"}]}}),
            json!({"7FE00010": {"vr": "OB", "BulkDataURI": "http://x"}}),
            json!({"00100020": {"vr": "LO", "Value": ["x".repeat(MAX_STRING_BYTES + 1)]}}),
            json!({"00100020": {"vr": "LO", "Value": [[1]]}}),
            deep,
        ] {
            assert!(dataset(body).is_err());
        }
        let values: Vec<Value> = (0..MAX_NODES).map(|_| json!("v")).collect();
        assert!(dataset(json!({"00100020": {"vr": "LO", "Value": values}})).is_err());
        assert!(Dataset::from_request(&vec![b' '; MAX_WORKITEM_BYTES + 1]).is_err());
        // Searchable values are bounded in length and number: a long name costs a token per
        // word prefix.
        let mut body = create_body("1.2.3.103");
        body["00100010"] = json!({"vr": "PN", "Value": [{"Alphabetic": "a b ".repeat(2000)}]});
        assert!(prepare_create(dataset(body).expect("dataset"), None, NOW).is_err());
        let mut body = create_body("1.2.3.104");
        let station = json!({"00080100": {"vr": "SH", "Value": ["S"]}});
        body["00404025"] = json!({"vr": "SQ", "Value": vec![station; MAX_VALUES_PER_KEY + 1]});
        assert!(prepare_create(dataset(body).expect("dataset"), None, NOW).is_err());
    }

    #[test]
    fn lifecycle_follows_the_state_table() {
        let scheduled = created("1.2.3.200");
        // Update while scheduled: no Transaction UID.
        let label = dataset(json!({"00741204": {"vr": "LO", "Value": ["new"]}})).expect("ds");
        assert!(apply_update(&scheduled, label.clone(), Some("1.9"), NOW).is_err());
        let scheduled = apply_update(&scheduled, label, None, NOW).expect("update");
        assert_eq!(
            scheduled.dataset.string(PROCEDURE_STEP_LABEL).as_deref(),
            Some("new")
        );
        // Updates may not touch what create fixed.
        let patient =
            dataset(json!({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "X"}]}})).expect("ds");
        assert!(apply_update(&scheduled, patient, None, NOW).is_err());
        // Completing a scheduled workitem is refused; claiming works.
        assert!(
            change_state(
                &scheduled,
                &change("1.9", ProcedureStepState::Completed),
                NOW
            )
            .is_err()
        );
        let claimed = changed(change_state(
            &scheduled,
            &change("1.9", ProcedureStepState::InProgress),
            NOW,
        ));
        assert_eq!(claimed.state(), Some(ProcedureStepState::InProgress));
        assert_eq!(claimed.transaction_uid.as_deref(), Some("1.9"));
        // A second claim, with either UID, is refused.
        for uid in ["1.9", "1.8"] {
            let refused = change_state(&claimed, &change(uid, ProcedureStepState::InProgress), NOW)
                .expect_err("refused");
            assert_eq!(refused.kind, RefusalKind::Invalid);
        }
        // Updates need the owner's UID.
        let comment = dataset(json!({"00400400": {"vr": "LT", "Value": ["c"]}})).expect("ds");
        assert!(apply_update(&claimed, comment.clone(), None, NOW).is_err());
        assert!(apply_update(&claimed, comment.clone(), Some("1.8"), NOW).is_err());
        let claimed = apply_update(&claimed, comment, Some("1.9"), NOW).expect("owner update");
        // Completing needs the performed procedure information, and the owner's UID.
        assert!(
            change_state(&claimed, &change("1.9", ProcedureStepState::Completed), NOW).is_err()
        );
        let claimed = completable(claimed);
        assert!(
            change_state(&claimed, &change("1.8", ProcedureStepState::Completed), NOW).is_err()
        );
        let completed = changed(change_state(
            &claimed,
            &change("1.9", ProcedureStepState::Completed),
            NOW,
        ));
        assert_eq!(completed.state(), Some(ProcedureStepState::Completed));
        // Completing again warns; canceling, updating or claiming a final workitem is refused.
        assert!(matches!(
            change_state(
                &completed,
                &change("1.9", ProcedureStepState::Completed),
                NOW
            ),
            Ok(StateOutcome::Unchanged(_))
        ));
        assert!(
            change_state(
                &completed,
                &change("1.9", ProcedureStepState::Canceled),
                NOW
            )
            .is_err()
        );
        assert!(apply_update(&completed, Dataset::empty(), Some("1.9"), NOW).is_err());
        assert_eq!(
            request_cancel(&completed, &Dataset::empty(), NOW).map_err(|r| r.kind),
            Err(RefusalKind::Conflict)
        );
    }

    #[test]
    fn cancellation_by_request_and_by_owner() {
        let scheduled = created("1.2.3.300");
        let reason =
            dataset(json!({"00741238": {"vr": "LT", "Value": ["no longer needed"]}})).expect("ds");
        let canceled = changed(request_cancel(&scheduled, &reason, NOW));
        assert_eq!(canceled.state(), Some(ProcedureStepState::Canceled));
        let progress = canceled
            .dataset
            .items(PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE);
        assert!(progress[0].has_value(PROCEDURE_STEP_CANCELLATION_DATE_TIME));
        assert_eq!(
            request_cancel(&canceled, &reason, NOW).map_err(|r| r.kind),
            Err(RefusalKind::Conflict)
        );
        let claimed = changed(change_state(
            &created("1.2.3.301"),
            &change("1.7", ProcedureStepState::InProgress),
            NOW,
        ));
        assert_eq!(
            request_cancel(&claimed, &reason, NOW).map_err(|r| r.kind),
            Err(RefusalKind::Conflict)
        );
        let canceled = changed(change_state(
            &claimed,
            &change("1.7", ProcedureStepState::Canceled),
            NOW,
        ));
        assert!(matches!(
            change_state(&canceled, &change("1.7", ProcedureStepState::Canceled), NOW),
            Ok(StateOutcome::Unchanged(_))
        ));
    }

    #[test]
    fn search_terms_and_matches() {
        let workitem = created("1.2.3.400");
        let terms = search_terms(&workitem.dataset);
        let names: Vec<&str> = terms.iter().map(|(key, _)| key.name).collect();
        for expected in [
            "PatientName",
            "PatientID",
            "ReferencedRequestSequence.AccessionNumber",
            "ReferencedRequestSequence.RequestedProcedureID",
            "ScheduledProcedureStepStartDateTime",
            "ScheduledStationNameCodeSequence.CodeValue",
            "ProcedureStepState",
        ] {
            assert!(names.contains(&expected), "{expected}");
        }
        assert!(terms.contains(&(&WORKITEM_KEYS[4], SearchValue::Date(20261204))));
        let key = find_key("0040A370.00080050").expect("key");
        assert_eq!(key.name, "ReferencedRequestSequence.AccessionNumber");
        assert!(find_key("ReferencedRequestSequence.AccessionNumber").is_some());
        assert!(find_key("PatientSex").is_none());
        assert!(find_key(&"A.".repeat(100)).is_none());
        let date = find_key("ScheduledProcedureStepStartDateTime").expect("key");
        assert_eq!(
            parse_match(date, "20261201-20261231", false),
            Ok(KeyMatch::DateRange(Some(20261201), Some(20261231)))
        );
        assert!(parse_match(date, "20261201093000-", false).is_err());
        assert!(parse_match(date, "-", false).is_err());
        let name = find_key("PatientName").expect("key");
        assert_eq!(
            parse_match(name, "jan do", true),
            Ok(KeyMatch::FuzzyName(vec!["jan".into(), "do".into()]))
        );
        assert!(parse_match(name, "Doe*", false).is_err());
        assert!(parse_match(find_key("PatientID").expect("key"), "", false).is_err());
        let state = find_key("ProcedureStepState").expect("key");
        assert_eq!(
            parse_match(state, "scheduled", false),
            Ok(KeyMatch::Exact("SCHEDULED".into()))
        );
    }

    /// What the `workitem_dataset` fuzz target does, on its seed and on truncations of it.
    #[test]
    fn every_transaction_takes_any_readable_body() {
        let seed = include_bytes!("../../../fuzz/corpus/workitem_dataset/seed.json");
        for end in 0..=seed.len() {
            let Ok(dataset) = Dataset::from_request(&seed[..end]) else {
                continue;
            };
            let _ = search_terms(&dataset);
            if let Ok(created) = prepare_create(dataset.clone(), Some("1.2.3"), 0) {
                let _ = apply_update(&created, dataset.clone(), None, 0);
                let _ = request_cancel(&created, &dataset, 0);
                if let Ok(change) = StateChange::from_dataset(&dataset) {
                    let _ = change_state(&created, &change, 0);
                }
            }
        }
    }

    #[test]
    fn datetimes_are_written_and_read() {
        assert_eq!(datetime_value(0), "19700101000000.000000+0000");
        assert_eq!(
            datetime_value(1_709_208_000_000_001),
            "20240229120000.000001+0000"
        );
        assert_eq!(datetime_date("20240229120000.000001+0000"), Some(20240229));
        assert_eq!(datetime_date("2024022"), None);
        assert_eq!(datetime_date("20240230"), None);
        // A multi-byte character across byte 8 (found by fuzzing): refused, not a panic.
        assert_eq!(datetime_date("2026120\u{43b}T0000"), None);
        assert_eq!(datetime_date("20261204\u{43b}"), None);
    }

    #[test]
    fn projection_keeps_defaults_and_asked_attributes() {
        let mut workitem = created("1.2.3.500");
        workitem
            .dataset
            .set_string(Tag(0x0009, 0x1001), "LO", "private");
        let default = Projection::default().apply(&workitem.dataset);
        assert!(default.contains_key("00100010"));
        assert!(!default.contains_key("00091001"));
        let mut asked = Projection::default();
        asked.extra.insert(Tag(0x0009, 0x1001));
        assert!(asked.apply(&workitem.dataset).contains_key("00091001"));
        let all = Projection {
            all: true,
            ..Projection::default()
        };
        assert!(all.apply(&workitem.dataset).contains_key("00091001"));
    }
}
