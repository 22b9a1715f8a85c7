//! Extended query tags and operations, as Azure's DICOM service serves them:
//! `POST/GET extendedquerytags`, `GET/PATCH/DELETE extendedquerytags/{tagPath}`,
//! `GET extendedquerytags/{tagPath}/errors` and `GET operations/{id}`.
//!
//! Reads need the read data action; adding, changing and deleting tags need
//! `ManageExtendedQueryTags` (the `ServiceContext` extractor decides, `service.rs`). Every body
//! and parameter is bounded: a body of at most [`MAX_BODY_BYTES`], at most
//! [`MAX_EXTENDED_QUERY_TAGS`] tags per request, paths and values checked before any lookup.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use dicom_core::Tag;
use hds_archive::{
    AddTagsOutcome, ExtendedQueryTag, Operation, OperationStatus, TagChange, TagError,
    TagQueryStatus, TagStatus,
};
use hds_dicom::extended::{
    ExtendedTagDefinition, MAX_EXTENDED_QUERY_TAGS, level_name, parse_tag_path, tag_path,
    validate_definition,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::DicomWebError;
use crate::qido::{DEFAULT_LIMIT, page_limit, page_offset};
use crate::service::ServiceContext;

/// The largest body of `POST extendedquerytags` and `PATCH extendedquerytags/{tagPath}`: 128
/// definitions of a few hundred bytes each fit well within it.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The `{tagPath}` of a route.
#[derive(Debug, Deserialize)]
pub struct TagPath {
    #[serde(rename = "tagPath")]
    tag_path: String,
}

/// The `{id}` of `operations/{id}`.
#[derive(Debug, Deserialize)]
pub struct OperationPath {
    id: String,
}

type Parameters = Query<Vec<(String, String)>>;

/// `POST extendedquerytags`: 202 with the reindex operation's reference.
pub async fn add(
    context: ServiceContext,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    let body = json_body(&headers, body).await?;
    let definitions = parse_definitions(&body)?;
    match context
        .archive
        .add_extended_query_tags(&definitions)
        .await?
    {
        AddTagsOutcome::Started { operation_id } => Ok((
            StatusCode::ACCEPTED,
            Json(operation_reference(&context, &operation_id)),
        )
            .into_response()),
        AddTagsOutcome::AlreadyExists(path) => Err(DicomWebError::Conflict(format!(
            "the extended query tag {path} already exists"
        ))),
        AddTagsOutcome::TooMany => Err(DicomWebError::Conflict(format!(
            "a service may have at most {MAX_EXTENDED_QUERY_TAGS} extended query tags"
        ))),
        AddTagsOutcome::OperationRunning => Err(DicomWebError::Conflict(
            "an operation on the extended query tags is still running; retry once it has \
             finished"
                .into(),
        )),
    }
}

/// `GET extendedquerytags`: the service's tags, a page at a time.
pub async fn list(
    context: ServiceContext,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    let (limit, offset) = parse_page(&parameters)?;
    let tags = context.archive.extended_query_tags().await?;
    let page: Vec<Value> = tags
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|tag| render_tag(&context, tag))
        .collect();
    Ok(json_response(StatusCode::OK, Value::Array(page)))
}

/// `GET extendedquerytags/{tagPath}`.
pub async fn get(
    context: ServiceContext,
    Path(path): Path<TagPath>,
) -> Result<Response, DicomWebError> {
    let tag = path_tag(&path.tag_path)?;
    let found = context
        .archive
        .extended_query_tag(tag)
        .await?
        .ok_or_else(|| tag_not_found(tag))?;
    Ok(json_response(StatusCode::OK, render_tag(&context, &found)))
}

/// `PATCH extendedquerytags/{tagPath}`: `{"queryStatus": "Enabled" | "Disabled"}`.
pub async fn update(
    context: ServiceContext,
    Path(path): Path<TagPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    let tag = path_tag(&path.tag_path)?;
    let body = json_body(&headers, body).await?;
    let query_status = parse_update(&body)?;
    match context
        .archive
        .set_extended_query_tag_query_status(tag, query_status)
        .await?
    {
        TagChange::Done(updated) => Ok(json_response(
            StatusCode::OK,
            render_tag(&context, &updated),
        )),
        TagChange::NotFound => Err(tag_not_found(tag)),
        TagChange::Busy => Err(DicomWebError::Conflict(format!(
            "the extended query tag {} is not ready: it is being added or deleted",
            tag_path(tag)
        ))),
    }
}

/// `DELETE extendedquerytags/{tagPath}`: 204.
pub async fn delete(
    context: ServiceContext,
    Path(path): Path<TagPath>,
) -> Result<Response, DicomWebError> {
    let tag = path_tag(&path.tag_path)?;
    match context.archive.delete_extended_query_tag(tag).await? {
        TagChange::Done(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        TagChange::NotFound => Err(tag_not_found(tag)),
        TagChange::Busy => Err(DicomWebError::Conflict(format!(
            "the extended query tag {} is being added; delete it once its operation has ended",
            tag_path(tag)
        ))),
    }
}

/// `GET extendedquerytags/{tagPath}/errors`.
pub async fn errors(
    context: ServiceContext,
    Path(path): Path<TagPath>,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    let tag = path_tag(&path.tag_path)?;
    let (limit, offset) = parse_page(&parameters)?;
    let errors = context
        .archive
        .extended_query_tag_errors(tag, limit, offset)
        .await?
        .ok_or_else(|| tag_not_found(tag))?;
    let body: Vec<Value> = errors.iter().map(render_error).collect();
    Ok(json_response(StatusCode::OK, Value::Array(body)))
}

/// `GET operations/{id}`.
pub async fn operation(
    context: ServiceContext,
    Path(path): Path<OperationPath>,
) -> Result<Response, DicomWebError> {
    let not_found = || DicomWebError::NotFound("operation");
    // Azure's ids are GUIDs; hds writes them as 32 hex digits (dashes are accepted).
    let id: String = path.id.chars().filter(|c| *c != '-').collect();
    if id.len() != 32 || !id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let found = context
        .archive
        .operation(&id.to_ascii_lowercase())
        .await?
        .ok_or_else(not_found)?;
    let mut rendered = render_operation(&context, &found);
    if found.kind == "export"
        && let Some(summary) = context.archive.export_summary(&found.id).await?
    {
        // Azure's export operation reports its counts and error log under `results`.
        rendered["resources"] = json!([]);
        rendered["results"] = json!({
            "errorHref": summary.error_href,
            "exported": summary.exported,
            "skipped": summary.skipped,
        });
    }
    // As Azure: 202 with a Location while the operation runs, 200 once it has ended.
    let running = matches!(
        found.status,
        OperationStatus::NotStarted | OperationStatus::Running
    );
    let mut response = json_response(
        if running {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        },
        rendered,
    );
    if running
        && let Ok(location) = axum::http::HeaderValue::from_str(&format!(
            "{}/operations/{}",
            context.base_url, found.id
        ))
    {
        response
            .headers_mut()
            .insert(axum::http::header::LOCATION, location);
    }
    Ok(response)
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(CONTENT_TYPE, "application/json")], Json(body)).into_response()
}

fn tag_not_found(tag: Tag) -> DicomWebError {
    DicomWebError::NotFoundMessage(format!(
        "the extended query tag {} does not exist",
        tag_path(tag)
    ))
}

/// The tag a `{tagPath}` names (keyword or 8 hex digits).
fn path_tag(path: &str) -> Result<Tag, DicomWebError> {
    parse_tag_path(path).map_err(|error| DicomWebError::BadRequest(error.to_string()))
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`] (415 unless it says it is JSON).
pub(crate) async fn json_body_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Value, DicomWebError> {
    json_body_of(headers, body, limit).await
}

async fn json_body(headers: &HeaderMap, body: Body) -> Result<Value, DicomWebError> {
    json_body_of(headers, body, MAX_BODY_BYTES).await
}

async fn json_body_of(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Value, DicomWebError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media_type != "application/json" {
        return Err(DicomWebError::UnsupportedMediaType(
            "the body must be application/json".into(),
        ));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| DicomWebError::PayloadTooLarge(limit as u64))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| DicomWebError::BadRequest("the body is not valid JSON".into()))
}

/// A property of a JSON object, its name compared without case (as Azure's binder does); 400
/// when it is there but not a string.
fn string_property<'a>(
    object: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, DicomWebError> {
    match object
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
    {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(DicomWebError::BadRequest(format!(
            "the property {name} must be a string"
        ))),
    }
}

/// The definitions of a `POST extendedquerytags` body: a non-empty array of at most
/// [`MAX_EXTENDED_QUERY_TAGS`] objects, each valid, no tag twice.
fn parse_definitions(body: &Value) -> Result<Vec<ExtendedTagDefinition>, DicomWebError> {
    let entries = body.as_array().ok_or_else(|| {
        DicomWebError::BadRequest("the body must be a JSON array of extended query tags".into())
    })?;
    if entries.is_empty() {
        return Err(DicomWebError::BadRequest(
            "the body must name at least one extended query tag".into(),
        ));
    }
    if entries.len() > MAX_EXTENDED_QUERY_TAGS {
        return Err(DicomWebError::BadRequest(format!(
            "at most {MAX_EXTENDED_QUERY_TAGS} extended query tags may be added at once"
        )));
    }
    let mut definitions: Vec<ExtendedTagDefinition> = Vec::with_capacity(entries.len());
    for entry in entries {
        let object = entry.as_object().ok_or_else(|| {
            DicomWebError::BadRequest("each extended query tag must be a JSON object".into())
        })?;
        let path = string_property(object, "path")?
            .ok_or_else(|| DicomWebError::BadRequest("the property path is required".into()))?;
        let level = string_property(object, "level")?
            .ok_or_else(|| DicomWebError::BadRequest("the property level is required".into()))?;
        let definition = validate_definition(
            path,
            string_property(object, "vr")?,
            string_property(object, "privateCreator")?,
            level,
        )
        .map_err(|error| DicomWebError::BadRequest(error.to_string()))?;
        if definitions.iter().any(|known| known.tag == definition.tag) {
            return Err(DicomWebError::BadRequest(format!(
                "the extended query tag {} is named more than once",
                definition.path()
            )));
        }
        definitions.push(definition);
    }
    Ok(definitions)
}

/// The query status of a `PATCH` body.
fn parse_update(body: &Value) -> Result<TagQueryStatus, DicomWebError> {
    let object = body.as_object().ok_or_else(|| {
        DicomWebError::BadRequest("the body must be a JSON object with queryStatus".into())
    })?;
    match string_property(object, "queryStatus")? {
        Some(status) if status.eq_ignore_ascii_case("enabled") => Ok(TagQueryStatus::Enabled),
        Some(status) if status.eq_ignore_ascii_case("disabled") => Ok(TagQueryStatus::Disabled),
        _ => Err(DicomWebError::BadRequest(
            "queryStatus must be Enabled or Disabled".into(),
        )),
    }
}

/// `limit` (1-200, default 100) and `offset` (0-100000) of a list; anything else is refused.
fn parse_page(parameters: &[(String, String)]) -> Result<(u32, u32), DicomWebError> {
    if parameters.len() > 2 {
        return Err(DicomWebError::BadRequest(
            "only limit and offset may be given".into(),
        ));
    }
    let mut limit = DEFAULT_LIMIT;
    let mut offset = 0;
    for (name, value) in parameters {
        match name.to_ascii_lowercase().as_str() {
            "limit" => {
                limit = page_limit(value)?;
            }
            "offset" => {
                offset = page_offset(value)?;
            }
            _ => {
                return Err(DicomWebError::BadRequest(
                    "only limit and offset may be given".into(),
                ));
            }
        }
    }
    Ok((limit, offset))
}

pub(crate) fn operation_reference(context: &ServiceContext, operation_id: &str) -> Value {
    json!({
        "id": operation_id,
        "href": format!("{}/operations/{operation_id}", context.base_url),
    })
}

fn render_tag(context: &ServiceContext, tag: &ExtendedQueryTag) -> Value {
    let path = tag.definition.path();
    let mut body = Map::new();
    body.insert("path".into(), json!(path));
    body.insert("vr".into(), json!(tag.definition.vr.code()));
    if let Some(creator) = &tag.definition.private_creator {
        body.insert("privateCreator".into(), json!(creator));
    }
    body.insert("level".into(), json!(level_name(tag.definition.level)));
    body.insert("status".into(), json!(tag.status.name()));
    body.insert("queryStatus".into(), json!(tag.query_status.name()));
    if tag.error_count > 0 {
        body.insert(
            "errors".into(),
            json!({
                "count": tag.error_count,
                "href": format!("{}/extendedquerytags/{path}/errors", context.base_url),
            }),
        );
    }
    if let (Some(operation_id), TagStatus::Adding) = (&tag.operation_id, tag.status) {
        body.insert(
            "operation".into(),
            operation_reference(context, operation_id),
        );
    }
    Value::Object(body)
}

fn render_error(error: &TagError) -> Value {
    json!({
        "studyInstanceUid": error.study_instance_uid,
        "seriesInstanceUid": error.series_instance_uid,
        "sopInstanceUid": error.sop_instance_uid,
        "createdTime": format_time(error.created_us),
        "errorMessage": error.message,
    })
}

fn render_operation(context: &ServiceContext, operation: &Operation) -> Value {
    let resources: Vec<String> = operation
        .resources
        .iter()
        .map(|path| format!("{}/extendedquerytags/{path}", context.base_url))
        .collect();
    let mut body = json!({
        "operationId": operation.id,
        "type": operation.kind,
        "createdTime": format_time(operation.created_us),
        "lastUpdatedTime": format_time(operation.updated_us),
        "status": operation.status.name(),
        "percentComplete": operation.percent_complete,
    });
    match &operation.results {
        // A bulk update: Azure's results, and no resources.
        Some(results) => {
            body["results"] = json!({
                "studyProcessed": results.study_processed,
                "studyUpdated": results.study_updated,
                "studyFailed": results.study_failed,
                "instanceUpdated": results.instance_updated,
                "errors": results.errors,
            });
        }
        None => body["resources"] = json!(resources),
    }
    body
}

/// RFC 3339 in UTC, as Azure writes times.
fn format_time(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: Value) -> bool {
        matches!(parse_definitions(&body), Err(DicomWebError::BadRequest(_)))
    }

    #[test]
    fn definitions_are_checked() {
        let parsed = parse_definitions(&json!([
            {"path": "PatientSex", "level": "Study"},
            {"Path": "00091001", "VR": "LO", "PrivateCreator": "ACME", "Level": "series"},
        ]))
        .expect("valid");
        assert_eq!(parsed.len(), 2);
        assert!(refused(json!({"path": "PatientSex", "level": "Study"})));
        assert!(refused(json!([])));
        assert!(refused(json!([{"path": "PatientSex"}])));
        assert!(refused(json!([{"path": 7, "level": "Study"}])));
        assert!(refused(json!([
            {"path": "PatientSex", "level": "Study"},
            {"path": "00100040", "level": "Series"},
        ])));
        let too_many: Vec<Value> = (0..=MAX_EXTENDED_QUERY_TAGS)
            .map(|element| json!({"path": format!("0009{:04X}", 0x1000 + element), "vr": "LO", "privateCreator": "A", "level": "Study"}))
            .collect();
        assert!(refused(Value::Array(too_many)));
    }

    #[test]
    fn pages_and_updates_are_bounded() {
        let page = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect();
            parse_page(&pairs)
        };
        assert_eq!(page(&[]).ok(), Some((DEFAULT_LIMIT, 0)));
        assert!(page(&[("limit", "0")]).is_err());
        assert!(page(&[("limit", "201")]).is_err());
        assert!(page(&[("offset", "-1")]).is_err());
        assert!(page(&[("other", "1")]).is_err());
        assert!(parse_update(&json!({"queryStatus": "Disabled"})).is_ok());
        assert!(parse_update(&json!({"queryStatus": "Paused"})).is_err());
        assert!(parse_update(&json!(["Enabled"])).is_err());
    }
}
