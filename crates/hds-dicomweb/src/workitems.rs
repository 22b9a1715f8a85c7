//! The Worklist Service (UPS-RS, PS3.18 chapter 11) as Azure's DICOM service serves it: create
//! (`POST workitems[?{workitem}]`), retrieve (`GET workitems/{workitem}`), update
//! (`POST workitems/{workitem}[?{transaction}]`), change state (`PUT workitems/{workitem}/state`),
//! request cancellation (`POST workitems/{workitem}/cancelrequest`) and search
//! (`GET workitems?...`).
//!
//! Reads need the read data action and every other transaction the write one, as Azure checks
//! them (the `ServiceContext` extractor decides, `service.rs`). Bodies are one DICOM JSON
//! dataset of at most [`MAX_WORKITEM_BYTES`], checked for shape, depth and size before anything
//! else; refusals carry their reason in the body and, for the transactions PS3.18 gives a
//! `Warning` header (update, change state, cancel request), in that header too. The UPS rules
//! are `hds_dicom::workitem`'s; each handler makes one call to the service's archive.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, RawQuery};
use axum::http::header::{CONTENT_LOCATION, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hds_dicom::normalize::is_valid_uid;
use hds_dicom::workitem::{
    Dataset, MAX_WORKITEM_BYTES, Projection, Refusal, RefusalKind, StateChange, find_key,
    parse_match,
};
use hds_index::WorkitemFilter;
use serde::Deserialize;
use serde_json::Value;

use crate::DicomWebError;
use crate::media::{accepts_dicom_json, content_type};
use crate::qido::{DEFAULT_LIMIT, page_limit, page_offset};
use crate::service::ServiceContext;

/// The most query parameters a workitem search may have.
const MAX_PARAMETERS: usize = 64;
/// The longest query string naming a Workitem or Transaction UID (`?{uid}`).
const MAX_UID_QUERY: usize = 128;
/// The Warning header's code for a persistent warning (RFC 7234 5.5), which PS3.18 uses.
const WARNING_CODE: &str = "299";

/// The `{workitem}` of a route.
#[derive(Debug, Deserialize)]
pub struct WorkitemPath {
    workitem: String,
}

type Parameters = Query<Vec<(String, String)>>;

/// `POST workitems[?{workitem}]`: 201 with the workitem's URL in `Location`.
pub async fn create(
    context: ServiceContext,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    let uid_in_uri = uid_query(query.as_deref(), "workitem UID")?;
    let dataset = dataset_body(&headers, body, false).await?;
    match context
        .archive
        .create_workitem(dataset, uid_in_uri.as_deref())
        .await?
    {
        Ok(uid) => {
            let url = workitem_url(&context, &uid)?;
            let mut response = StatusCode::CREATED.into_response();
            response.headers_mut().insert(LOCATION, url.clone());
            response.headers_mut().insert(CONTENT_LOCATION, url);
            Ok(response)
        }
        Err(refusal) => Ok(refused(refusal, false)),
    }
}

/// `GET workitems/{workitem}`: the workitem without its Transaction UID.
pub async fn retrieve(
    context: ServiceContext,
    Path(path): Path<WorkitemPath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let uid = path_uid(&path)?;
    if !accepts_dicom_json(&headers) {
        return Err(DicomWebError::NotAcceptable(
            "workitems are available as application/dicom+json".into(),
        ));
    }
    match context.archive.workitem(uid).await? {
        Some(dataset) => Ok(dicom_json(
            StatusCode::OK,
            Value::Object(dataset.as_object().clone()),
        )),
        None => Ok(refused(Refusal::not_found(), false)),
    }
}

/// `POST workitems/{workitem}[?{transaction}]`: 200.
pub async fn update(
    context: ServiceContext,
    Path(path): Path<WorkitemPath>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    let uid = path_uid(&path)?;
    let transaction_uid = uid_query(query.as_deref(), "Transaction UID")?;
    let changes = dataset_body(&headers, body, false).await?;
    match context
        .archive
        .update_workitem(uid, changes, transaction_uid.as_deref())
        .await?
    {
        Ok(warning) => {
            let mut response = with_warning(StatusCode::OK.into_response(), warning.as_deref());
            response
                .headers_mut()
                .insert(CONTENT_LOCATION, workitem_url(&context, uid)?);
            Ok(response)
        }
        Err(refusal) => Ok(refused(refusal, true)),
    }
}

/// `PUT workitems/{workitem}/state`: 200 (with a warning when already in a requested final
/// state).
pub async fn change_state(
    context: ServiceContext,
    Path(path): Path<WorkitemPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    let uid = path_uid(&path)?;
    let dataset = dataset_body(&headers, body, false).await?;
    let change = match StateChange::from_dataset(&dataset) {
        Ok(change) => change,
        Err(refusal) => return Ok(refused(refusal, true)),
    };
    match context.archive.change_workitem_state(uid, &change).await? {
        Ok(warning) => Ok(with_warning(
            StatusCode::OK.into_response(),
            warning.as_deref(),
        )),
        Err(refusal) => Ok(refused(refusal, true)),
    }
}

/// `POST workitems/{workitem}/cancelrequest`: 202 (the body, optional, may give a reason and a
/// contact).
pub async fn cancel_request(
    context: ServiceContext,
    Path(path): Path<WorkitemPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    let uid = path_uid(&path)?;
    let request = dataset_body(&headers, body, true).await?;
    match context
        .archive
        .request_workitem_cancel(uid, &request)
        .await?
    {
        Ok(warning) => Ok(with_warning(
            StatusCode::ACCEPTED.into_response(),
            warning.as_deref(),
        )),
        Err(refusal) => Ok(refused(refusal, true)),
    }
}

/// `GET workitems?...`: 200 with the matching workitems, 204 when none.
pub async fn search(
    context: ServiceContext,
    headers: HeaderMap,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    if !accepts_dicom_json(&headers) {
        return Err(DicomWebError::NotAcceptable(
            "workitems are available as application/dicom+json".into(),
        ));
    }
    let search = parse_search(&parameters)?;
    let found = context
        .archive
        .search_workitems(
            &search.filters,
            &search.projection,
            search.limit,
            search.offset,
        )
        .await?;
    if found.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let results: Vec<Value> = found.into_iter().map(Value::Object).collect();
    Ok(dicom_json(StatusCode::OK, Value::Array(results)))
}

/// A parsed search.
struct WorkitemSearch {
    filters: Vec<WorkitemFilter>,
    projection: Projection,
    limit: u32,
    offset: u32,
}

fn parse_search(parameters: &[(String, String)]) -> Result<WorkitemSearch, DicomWebError> {
    if parameters.len() > MAX_PARAMETERS {
        return Err(DicomWebError::BadRequest(format!(
            "a search may have at most {MAX_PARAMETERS} query parameters"
        )));
    }
    let mut fuzzy = false;
    for (name, value) in parameters {
        if name.eq_ignore_ascii_case("fuzzymatching") {
            fuzzy = match value.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(DicomWebError::BadRequest(
                        "fuzzymatching must be true or false".into(),
                    ));
                }
            };
        }
    }
    let mut search = WorkitemSearch {
        filters: Vec::new(),
        projection: Projection::default(),
        limit: DEFAULT_LIMIT,
        offset: 0,
    };
    for (name, value) in parameters {
        match name.to_ascii_lowercase().as_str() {
            "fuzzymatching" => {}
            "limit" => search.limit = page_limit(value)?,
            "offset" => search.offset = page_offset(value)?,
            "includefield" => {
                for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if field.eq_ignore_ascii_case("all") {
                        search.projection.all = true;
                        continue;
                    }
                    let tag = hds_dicom::attributes::resolve_tag(field).ok_or_else(|| {
                        DicomWebError::BadRequest(
                            "an includefield is not a known attribute keyword or tag".into(),
                        )
                    })?;
                    if search.projection.extra.len() >= MAX_PARAMETERS {
                        return Err(DicomWebError::BadRequest(format!(
                            "at most {MAX_PARAMETERS} attributes may be included"
                        )));
                    }
                    search.projection.extra.insert(tag);
                }
            }
            _ => {
                let key = find_key(name).ok_or_else(|| {
                    DicomWebError::BadRequest(format!(
                        "workitems cannot be searched by {}; the supported attributes are \
                         PatientName, PatientID, ReferencedRequestSequence.AccessionNumber, \
                         ReferencedRequestSequence.RequestedProcedureID, \
                         ScheduledProcedureStepStartDateTime, \
                         ScheduledStationNameCodeSequence.CodeValue, \
                         ScheduledStationClassCodeSequence.CodeValue, \
                         ScheduledStationGeographicLocationCodeSequence.CodeValue, \
                         ProcedureStepState and StudyInstanceUID",
                        printable_name(name)
                    ))
                })?;
                if search
                    .filters
                    .iter()
                    .any(|filter| std::ptr::eq(filter.key, key))
                {
                    return Err(DicomWebError::BadRequest(format!(
                        "{} is given more than once",
                        key.name
                    )));
                }
                let matcher = parse_match(key, value, fuzzy)
                    .map_err(|refusal| DicomWebError::BadRequest(refusal.message))?;
                if let Some(top) = key.path.first() {
                    search.projection.extra.insert(*top);
                }
                search.filters.push(WorkitemFilter { key, matcher });
            }
        }
    }
    Ok(search)
}

/// A parameter name fit to repeat in a message: short, and only the characters of keywords
/// and tags (a name is not a value, but a client could put anything in it).
fn printable_name(name: &str) -> String {
    if name.len() <= 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'.')
    {
        name.to_owned()
    } else {
        "that parameter".to_owned()
    }
}

/// The `{workitem}` of the path, which must be a UID.
fn path_uid(path: &WorkitemPath) -> Result<&str, DicomWebError> {
    if is_valid_uid(&path.workitem) {
        Ok(&path.workitem)
    } else {
        Err(DicomWebError::BadRequest(
            "the workitem UID in the path is not a valid UID".into(),
        ))
    }
}

/// The UID a query string names as its first (and only) parameter's name, `?{uid}` (a `=`
/// with an empty value is tolerated).
fn uid_query(query: Option<&str>, what: &str) -> Result<Option<String>, DicomWebError> {
    let Some(query) = query.filter(|query| !query.is_empty()) else {
        return Ok(None);
    };
    if query.len() > MAX_UID_QUERY {
        return Err(DicomWebError::BadRequest(format!(
            "the query must be only the {what}"
        )));
    }
    let uid = query.strip_suffix('=').unwrap_or(query);
    if !is_valid_uid(uid) {
        return Err(DicomWebError::BadRequest(format!(
            "the query must be only the {what}, a valid UID"
        )));
    }
    Ok(Some(uid.to_owned()))
}

/// Reads a DICOM JSON body of at most [`MAX_WORKITEM_BYTES`] (415 unless it says it is
/// `application/dicom+json` or JSON); an empty body is an empty dataset only when `optional`.
async fn dataset_body(
    headers: &HeaderMap,
    body: Body,
    optional: bool,
) -> Result<Dataset, DicomWebError> {
    let bytes = axum::body::to_bytes(body, MAX_WORKITEM_BYTES)
        .await
        .map_err(|_| DicomWebError::PayloadTooLarge(MAX_WORKITEM_BYTES as u64))?;
    if bytes.is_empty() && optional {
        return Ok(Dataset::empty());
    }
    let media_type = content_type(headers).map(|range| range.essence);
    if !matches!(
        media_type.as_deref(),
        Some("application/dicom+json" | "application/json")
    ) {
        return Err(DicomWebError::UnsupportedMediaType(
            "the body must be application/dicom+json".into(),
        ));
    }
    Dataset::from_request(&bytes).map_err(|refusal| DicomWebError::BadRequest(refusal.message))
}

fn workitem_url(context: &ServiceContext, uid: &str) -> Result<HeaderValue, DicomWebError> {
    HeaderValue::from_str(&format!("{}/workitems/{uid}", context.base_url))
        .map_err(|error| DicomWebError::internal("workitem URL", error))
}

fn dicom_json(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/dicom+json")],
        Json(body),
    )
        .into_response()
}

/// A refusal as Azure answers it: its status, the reason in the body (the API's JSON error
/// form) and, when `warn`, in a `Warning` header too.
fn refused(refusal: Refusal, warn: bool) -> Response {
    let (status, code) = match refusal.kind {
        RefusalKind::Invalid => (StatusCode::BAD_REQUEST, "BadRequest"),
        RefusalKind::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
        RefusalKind::Conflict => (StatusCode::CONFLICT, "Conflict"),
    };
    let body = serde_json::json!({ "error": { "code": code, "message": refusal.message } });
    let response = (status, Json(body)).into_response();
    if warn {
        with_warning(response, Some(&refusal.message))
    } else {
        response
    }
}

/// Adds `Warning: 299 - "{message}"` (the message is fixed text without values).
fn with_warning(mut response: Response, message: Option<&str>) -> Response {
    if let Some(message) = message.filter(|message| !message.is_empty()) {
        let text: String = message
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    if c == '"' || c == '\\' { '\'' } else { c }
                } else {
                    ' '
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&format!("{WARNING_CODE} - \"{text}\"")) {
            response.headers_mut().insert("warning", value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn searches_are_bounded_and_checked() {
        let parsed = parse_search(&pairs(&[
            ("PatientName", "jo"),
            ("fuzzymatching", "true"),
            ("0040A370.00080050", "ACC1"),
            ("ScheduledProcedureStepStartDateTime", "20260101-20261231"),
            ("includefield", "00741204,all"),
            ("limit", "5"),
        ]))
        .expect("parsed");
        assert_eq!(parsed.filters.len(), 3);
        assert!(parsed.projection.all);
        assert_eq!(parsed.limit, 5);
        for bad in [
            vec![("PatientSex", "F")],
            vec![("PatientID", "a"), ("PatientID", "b")],
            vec![("PatientID", "")],
            vec![("fuzzymatching", "maybe")],
            vec![("limit", "0")],
            vec![("limit", "201")],
            vec![("offset", "-1")],
            vec![("includefield", "NotAKeyword")],
            vec![("ScheduledProcedureStepStartDateTime", "-")],
        ] {
            assert!(parse_search(&pairs(&bad)).is_err(), "{bad:?}");
        }
        let many: Vec<(String, String)> = (0..=MAX_PARAMETERS)
            .map(|_| ("limit".to_owned(), "1".to_owned()))
            .collect();
        assert!(parse_search(&many).is_err());
        assert_eq!(printable_name("Patient<script>"), "that parameter");
    }

    #[test]
    fn uid_queries_are_checked() {
        assert_eq!(uid_query(None, "x").ok(), Some(None));
        assert_eq!(
            uid_query(Some("1.2.3"), "x").ok(),
            Some(Some("1.2.3".to_owned()))
        );
        assert_eq!(
            uid_query(Some("1.2.3="), "x").ok(),
            Some(Some("1.2.3".to_owned()))
        );
        assert!(uid_query(Some("1.2.3&x=1"), "x").is_err());
        assert!(uid_query(Some("abc"), "x").is_err());
        assert!(uid_query(Some(&"1".repeat(200)), "x").is_err());
    }

    #[test]
    fn warnings_are_header_safe() {
        let response = with_warning(
            StatusCode::OK.into_response(),
            Some("quote \" and\nnewline"),
        );
        let warning = response
            .headers()
            .get("warning")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(warning, "299 - \"quote ' and newline\"");
    }
}
