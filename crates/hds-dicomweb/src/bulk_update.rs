//! `POST studies/$bulkUpdate` (API v2), as Azure's DICOM service serves it: a JSON body
//! `{"studyInstanceUids": [...], "changeDataset": {DICOM JSON}}` starts a background operation
//! that rewrites every instance of those studies with the changed attributes, and answers 202
//! with its reference (`{id, href}`), polled at `operations/{id}`.
//!
//! Refusals, as Azure's: a body that is not such an object, no study, more than
//! [`MAX_STUDIES`] studies or a study that is not a UID: 400 `{"error": ...}`; attributes that
//! cannot be updated or whose values do not fit: 400 with a DICOM JSON dataset whose
//! FailedAttributesSequence (0074,1048) has one item per attribute, its ErrorComment (0000,0902)
//! naming the tag and the rule (never the value); another update of the service still running:
//! 409. Writing needs the write data action, as Azure checks it (`DataActions.Write`).

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hds_archive::{StartUpdate, UpdateInput};
use hds_dicom::normalize::is_valid_uid;
use hds_dicom::update::{AttributeRefusal, ChangeDataset};
use serde_json::{Value, json};

use crate::DicomWebError;
use crate::extended_tags::{json_body_limited, operation_reference};
use crate::service::ServiceContext;

/// Azure's limit on the studies of one update.
pub const MAX_STUDIES: usize = 50;

/// The largest body: 50 UIDs and 36 attributes, one of them a 10,240-character text, fit well.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `POST studies/$bulkUpdate`.
pub async fn start(
    context: ServiceContext,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    // Bulk update is an API v2 feature in Azure: v1 does not know the route.
    if context.base_url.ends_with("/v1") {
        return Err(DicomWebError::NotFound("resource"));
    }
    let body = json_body_limited(&headers, body, MAX_BODY_BYTES).await?;
    let (studies, change) = match parse_request(&body)? {
        Ok(parsed) => parsed,
        Err(refusals) => return Ok(failed_attributes(&refusals)),
    };
    let input = UpdateInput {
        study_instance_uids: studies,
        change_dataset: change.to_json(),
    };
    match context.archive.start_update(&input).await? {
        StartUpdate::Started(id) => Ok((
            StatusCode::ACCEPTED,
            [(CONTENT_TYPE, "application/json")],
            axum::Json(operation_reference(&context, &id)),
        )
            .into_response()),
        StartUpdate::Busy(id) => Err(DicomWebError::Conflict(format!(
            "an update operation is already running: {}/operations/{id}; retry once it has ended",
            context.base_url
        ))),
    }
}

/// `POST partitions/{partition}/studies/$bulkUpdate`: not served yet (the update worker reads
/// and rewrites the default partition only). Answered after authorization, as the route would
/// be, so that a caller without the write action still learns nothing more than 403; without
/// this route the path would reach STOW-RS and be refused for its media type.
pub async fn refuse_in_partition(_context: ServiceContext) -> Result<Response, DicomWebError> {
    Err(DicomWebError::BadRequest(
        "bulk update is not supported under a data partition yet; it is served for DICOM \
         services without data partitions (POST {serviceUrl}/v2/studies/$bulkUpdate)"
            .into(),
    ))
}

type Parsed = Result<(Vec<String>, ChangeDataset), Vec<AttributeRefusal>>;

/// The studies and the checked change dataset; a 400 for the body's shape and studies, the
/// attributes' refusals for the DICOM JSON answer.
fn parse_request(body: &Value) -> Result<Parsed, DicomWebError> {
    let bad = |message: &str| DicomWebError::BadRequest(message.to_owned());
    let object = body.as_object().ok_or_else(|| {
        bad("the body must be an object with studyInstanceUids and changeDataset")
    })?;
    let mut studies = None;
    let mut change = None;
    // Property names without case, as Azure's binder reads them.
    for (name, value) in object {
        match name.to_ascii_lowercase().as_str() {
            "studyinstanceuids" => studies = Some(value),
            "changedataset" => change = Some(value),
            _ => {
                return Err(bad(
                    "the body takes only studyInstanceUids and changeDataset",
                ));
            }
        }
    }
    let studies = studies
        .and_then(Value::as_array)
        .filter(|studies| !studies.is_empty())
        .ok_or_else(|| bad("studyInstanceUids must be a list of 1 to 50 study UIDs"))?;
    if studies.len() > MAX_STUDIES {
        return Err(bad(&format!(
            "studyInstanceUids may name at most {MAX_STUDIES} studies"
        )));
    }
    let mut uids: Vec<String> = Vec::with_capacity(studies.len());
    for study in studies {
        let uid = study
            .as_str()
            .filter(|uid| is_valid_uid(uid))
            .ok_or_else(|| bad("studyInstanceUids holds a value that is not a valid UID"))?;
        if uids.iter().any(|seen| seen == uid) {
            return Err(bad("studyInstanceUids names a study twice"));
        }
        uids.push(uid.to_owned());
    }
    let change = change.ok_or_else(|| bad("changeDataset is required"))?;
    Ok(ChangeDataset::parse(change).map(|change| (uids, change)))
}

/// Azure's 400 for attributes: a dataset whose FailedAttributesSequence lists each refusal.
fn failed_attributes(refusals: &[AttributeRefusal]) -> Response {
    let items: Vec<Value> = refusals
        .iter()
        .map(|refusal| {
            let comment = if refusal.tag.is_empty() {
                refusal.reason.clone()
            } else {
                format!("{}: {}", refusal.tag, refusal.reason)
            };
            json!({ "00000902": { "vr": "LO", "Value": [comment] } })
        })
        .collect();
    (
        StatusCode::BAD_REQUEST,
        [(CONTENT_TYPE, "application/dicom+json")],
        axum::Json(json!({ "00741048": { "vr": "SQ", "Value": items } })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_change() -> Value {
        json!({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "New^Name"}]}})
    }

    #[test]
    fn reads_azure_body() {
        let parsed = parse_request(&json!({
            "studyInstanceUids": ["1.2.3", "1.2.4"],
            "changeDataset": name_change(),
        }))
        .expect("valid")
        .expect("valid attributes");
        assert_eq!(parsed.0, ["1.2.3", "1.2.4"]);
    }

    #[test]
    fn refuses_hostile_bodies() {
        let many: Vec<String> = (0..51).map(|n| format!("1.2.{n}")).collect();
        for body in [
            json!([]),
            json!({"changeDataset": name_change()}),
            json!({"studyInstanceUids": [], "changeDataset": name_change()}),
            json!({"studyInstanceUids": many, "changeDataset": name_change()}),
            json!({"studyInstanceUids": ["not a uid"], "changeDataset": name_change()}),
            json!({"studyInstanceUids": ["1.2.3", "1.2.3"], "changeDataset": name_change()}),
            json!({"studyInstanceUids": ["1".repeat(65)], "changeDataset": name_change()}),
            json!({"studyInstanceUids": [5], "changeDataset": name_change()}),
            json!({"studyInstanceUids": ["1.2.3"]}),
            json!({"studyInstanceUids": ["1.2.3"], "changeDataset": name_change(), "x": 1}),
        ] {
            assert!(
                matches!(parse_request(&body), Err(DicomWebError::BadRequest(_))),
                "{body}"
            );
        }
        let refused = parse_request(&json!({
            "studyInstanceUids": ["1.2.3"],
            "changeDataset": {"0020000D": {"vr": "UI", "Value": ["1.2.9"]}},
        }))
        .expect("a well-formed body");
        assert!(refused.is_err());
    }
}
