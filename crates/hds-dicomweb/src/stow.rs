//! STOW-RS: `POST studies` and `POST studies/{study}` (PS3.18 10.5), and Azure's upsert:
//! `PUT studies` and `PUT studies/{study}`, which answer alike but replace an instance of the
//! same SOPInstanceUID (in the same study and series) instead of refusing it with 45070.
//!
//! The body is split into parts under the request's limits, and each DICOM part streams into
//! [`hds_archive::ServiceArchive::store_instance`], which writes, parses and records it (and
//! cleans up after a failure) with bounded memory whatever its size. This module answers with
//! the PS3.18 store response.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header::CONTENT_LENGTH};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use hds_archive::{StoreMode, StoreOutcome};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::DicomWebError;
use crate::media;
use crate::request_body::{self, BodyError, MAX_BOUNDARY_LEN, MultipartLimits, MultipartScanner};
use crate::service::{DicomWebState, ServiceContext};

/// Failure reasons of PS3.18 table I.2-1 and the DICOM service's extensions.
mod failure_reason {
    /// Processing failure.
    pub const PROCESSING_FAILURE: u16 = 272;
    /// The instance failed validation.
    pub const VALIDATION_FAILED: u16 = 43264;
    /// The instance's StudyInstanceUID differs from the one in the URL.
    pub const STUDY_MISMATCH: u16 = 43265;
    /// The SOP instance is already stored.
    pub const ALREADY_STORED: u16 = 45070;

    /// The failure reason that tells why the archive refused an instance.
    pub fn of(reason: hds_archive::RefusalReason) -> u16 {
        use hds_archive::RefusalReason;
        match reason {
            RefusalReason::Empty | RefusalReason::Unreadable => PROCESSING_FAILURE,
            RefusalReason::Invalid => VALIDATION_FAILED,
            RefusalReason::StudyMismatch => STUDY_MISMATCH,
            RefusalReason::AlreadyStored => ALREADY_STORED,
        }
    }
}

/// The `{study}` of `studies/{study}`.
#[derive(Debug, Deserialize)]
pub struct StudyPath {
    study: String,
}

/// `POST studies`.
pub async fn store(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    store_request(context, state, headers, body, None, StoreMode::Create).await
}

/// `PUT studies`: stores, replacing instances already stored.
pub async fn upsert(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    store_request(context, state, headers, body, None, StoreMode::Replace).await
}

/// `PUT studies/{study}`: as `PUT studies`, every instance belonging to that study.
pub async fn upsert_in_study(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<StudyPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    store_request(
        context,
        state,
        headers,
        body,
        Some(path.study),
        StoreMode::Replace,
    )
    .await
}

/// `POST studies/{study}`: every instance must belong to that study.
pub async fn store_in_study(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<StudyPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    store_request(
        context,
        state,
        headers,
        body,
        Some(path.study),
        StoreMode::Create,
    )
    .await
}

/// What happened to one part.
enum PartOutcome {
    Stored {
        sop_class_uid: String,
        sop_instance_uid: String,
        study_instance_uid: String,
        series_instance_uid: String,
    },
    Failed {
        sop_class_uid: Option<String>,
        sop_instance_uid: Option<String>,
        reason: u16,
    },
}

async fn store_request(
    context: ServiceContext,
    state: DicomWebState,
    headers: HeaderMap,
    body: Body,
    required_study: Option<String>,
    mode: StoreMode,
) -> Result<Response, DicomWebError> {
    let limit = state.config.max_request_bytes;
    let declared_length = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > limit) {
        return Err(DicomWebError::PayloadTooLarge(limit));
    }
    let content_type = media::content_type(&headers).ok_or_else(|| {
        DicomWebError::UnsupportedMediaType(
            "send multipart/related; type=\"application/dicom\" or application/dicom".into(),
        )
    })?;
    let idle_timeout = state.config.body_idle_timeout;
    let mut outcomes = Vec::new();
    match content_type.essence.as_str() {
        "multipart/related" => {
            let mut multipart = open_multipart(
                &content_type,
                body.into_data_stream(),
                limit,
                idle_timeout,
                state.config.multipart,
            )?;
            while let Some((field, part_is_dicom)) = next_part(&mut multipart, limit).await? {
                if !part_is_dicom {
                    // Drain the part so the next one can be read.
                    drain_part(field, limit).await?;
                    outcomes.push(PartOutcome::Failed {
                        sop_class_uid: None,
                        sop_instance_uid: None,
                        reason: failure_reason::VALIDATION_FAILED,
                    });
                    continue;
                }
                let chunks = field.map_err(|error| multipart_error(error, limit));
                outcomes
                    .push(ingest_part(&context, chunks, required_study.as_deref(), mode).await?);
            }
        }
        "application/dicom" => {
            let stream = request_body::guard(body.into_data_stream(), limit, idle_timeout, None);
            let chunks = stream.map_err(|error| body_error(error, limit));
            outcomes.push(ingest_part(&context, chunks, required_study.as_deref(), mode).await?);
        }
        other => {
            return Err(DicomWebError::UnsupportedMediaType(format!(
                "{other} is not supported; send multipart/related; type=\"application/dicom\" or application/dicom"
            )));
        }
    }
    if outcomes.is_empty() {
        return Err(DicomWebError::BadRequest(
            "the request holds no DICOM instance".into(),
        ));
    }
    Ok(store_response(
        &context,
        &outcomes,
        required_study.as_deref(),
    ))
}

/// Opens a `multipart/related` STOW body: checks the Content-Type's `type` and `boundary`, and
/// puts the scanner that enforces the request's limits on the raw bytes in front of the
/// multipart parser.
fn open_multipart<S>(
    content_type: &media::MediaRange,
    body: S,
    limit: u64,
    idle_timeout: Duration,
    limits: MultipartLimits,
) -> Result<multer::Multipart<'static>, DicomWebError>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
{
    if let Some(part_type) = content_type.parameter("type")
        && !part_type.eq_ignore_ascii_case("application/dicom")
    {
        return Err(DicomWebError::UnsupportedMediaType(format!(
            "multipart/related of type {part_type} is not supported; send type=\"application/dicom\""
        )));
    }
    let boundary = content_type
        .parameter("boundary")
        .ok_or_else(|| {
            DicomWebError::BadRequest("the multipart Content-Type has no boundary".into())
        })?
        .to_owned();
    let scanner = MultipartScanner::new(&boundary).ok_or_else(|| {
        DicomWebError::BadRequest(format!(
            "the multipart boundary must be 1 to {MAX_BOUNDARY_LEN} characters"
        ))
    })?;
    let stream = request_body::guard(body, limit, idle_timeout, Some((scanner, limits)));
    Ok(multer::Multipart::new(stream, boundary))
}

/// The next part of a STOW body, and whether it is DICOM (`application/dicom`, or no
/// Content-Type); `None` after the last.
async fn next_part(
    multipart: &mut multer::Multipart<'static>,
    limit: u64,
) -> Result<Option<(multer::Field<'static>, bool)>, DicomWebError> {
    let Some(field) = multipart
        .next_field()
        .await
        .map_err(|error| multipart_error(error, limit))?
    else {
        return Ok(None);
    };
    let part_is_dicom = field
        .content_type()
        .is_none_or(|mime| mime.essence_str().eq_ignore_ascii_case("application/dicom"));
    Ok(Some((field, part_is_dicom)))
}

/// Reads a part to its end without keeping it, so the next part can be read.
async fn drain_part(mut field: multer::Field<'static>, limit: u64) -> Result<u64, DicomWebError> {
    let mut size = 0;
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|error| multipart_error(error, limit))?
    {
        size += chunk.len() as u64;
    }
    Ok(size)
}

/// Entry points for the fuzz targets in `fuzz/`; not an API.
pub mod fuzzing {
    use super::*;

    /// Splits `body`, arriving in chunks of `chunk_size` bytes, the way STOW splits a request
    /// whose Content-Type is `content_type`, under `limits` and a size limit of `max_bytes`:
    /// the Content-Type checks, the limit scanner and the multipart parser. Returns each
    /// part's length and whether it is DICOM, or the error STOW would answer.
    pub fn split_stow_body(
        content_type: &str,
        body: &[u8],
        chunk_size: usize,
        limits: MultipartLimits,
        max_bytes: u64,
    ) -> Result<Vec<(u64, bool)>, DicomWebError> {
        let content_type = media::MediaRange::parse(content_type)
            .filter(|media| media.essence == "multipart/related")
            .ok_or_else(|| DicomWebError::UnsupportedMediaType("not multipart/related".into()))?;
        let chunks: Vec<Result<Bytes, axum::Error>> = body
            .chunks(chunk_size.max(1))
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|error| DicomWebError::Internal(error.to_string()))?;
        runtime.block_on(async {
            let mut multipart = open_multipart(
                &content_type,
                futures::stream::iter(chunks),
                max_bytes,
                Duration::from_secs(60),
                limits,
            )?;
            let mut parts = Vec::new();
            while let Some((field, part_is_dicom)) = next_part(&mut multipart, max_bytes).await? {
                parts.push((drain_part(field, max_bytes).await?, part_is_dicom));
            }
            Ok(parts)
        })
    }
}

/// Stores one part through the service's archive.
async fn ingest_part<S>(
    context: &ServiceContext,
    chunks: S,
    required_study: Option<&str>,
    mode: StoreMode,
) -> Result<PartOutcome, DicomWebError>
where
    S: Stream<Item = Result<Bytes, DicomWebError>> + Unpin,
{
    let archive = &context.archive;
    let outcome = match mode {
        StoreMode::Create => archive.store_instance(chunks, required_study).await?,
        // STOW-RS never updates: only the bulk update operation does.
        StoreMode::Replace | StoreMode::Update => {
            archive.replace_instance(chunks, required_study).await?
        }
    };
    Ok(match outcome {
        StoreOutcome::Stored(stored) => PartOutcome::Stored {
            sop_class_uid: stored.sop_class_uid,
            sop_instance_uid: stored.sop_instance_uid,
            study_instance_uid: stored.study_instance_uid,
            series_instance_uid: stored.series_instance_uid,
        },
        StoreOutcome::Refused(refusal) => PartOutcome::Failed {
            sop_class_uid: refusal.sop_class_uid,
            sop_instance_uid: refusal.sop_instance_uid,
            reason: failure_reason::of(refusal.reason),
        },
    })
}

/// The PS3.18 store response: 200 all stored, 202 some, 409 none.
fn store_response(
    context: &ServiceContext,
    outcomes: &[PartOutcome],
    required_study: Option<&str>,
) -> Response {
    let mut referenced = Vec::new();
    let mut failed = Vec::new();
    let mut studies: Vec<&str> = Vec::new();
    for outcome in outcomes {
        match outcome {
            PartOutcome::Stored {
                sop_class_uid,
                sop_instance_uid,
                study_instance_uid,
                series_instance_uid,
            } => {
                let url = format!(
                    "{}/studies/{study_instance_uid}/series/{series_instance_uid}/instances/{sop_instance_uid}",
                    context.base_url
                );
                referenced.push(json!({
                    "00081150": { "vr": "UI", "Value": [sop_class_uid] },
                    "00081155": { "vr": "UI", "Value": [sop_instance_uid] },
                    "00081190": { "vr": "UR", "Value": [url] },
                }));
                if !studies.contains(&study_instance_uid.as_str()) {
                    studies.push(study_instance_uid);
                }
            }
            PartOutcome::Failed {
                sop_class_uid,
                sop_instance_uid,
                reason,
            } => {
                let mut item = Map::new();
                if let Some(class) = sop_class_uid {
                    item.insert("00081150".into(), json!({ "vr": "UI", "Value": [class] }));
                }
                if let Some(instance) = sop_instance_uid {
                    item.insert(
                        "00081155".into(),
                        json!({ "vr": "UI", "Value": [instance] }),
                    );
                }
                item.insert("00081197".into(), json!({ "vr": "US", "Value": [reason] }));
                failed.push(Value::Object(item));
            }
        }
    }
    let mut body = Map::new();
    let study_for_url = required_study.or(if studies.len() == 1 {
        Some(studies[0])
    } else {
        None
    });
    if let Some(study) = study_for_url {
        body.insert(
            "00081190".into(),
            json!({ "vr": "UR", "Value": [format!("{}/studies/{study}", context.base_url)] }),
        );
    }
    if !referenced.is_empty() {
        body.insert(
            "00081199".into(),
            json!({ "vr": "SQ", "Value": referenced }),
        );
    }
    if !failed.is_empty() {
        body.insert("00081198".into(), json!({ "vr": "SQ", "Value": failed }));
    }
    let status = match (referenced.is_empty(), failed.is_empty()) {
        (false, true) => StatusCode::OK,
        (false, false) => StatusCode::ACCEPTED,
        _ => StatusCode::CONFLICT,
    };
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/dicom+json")],
        Json(Value::Object(body)),
    )
        .into_response()
}

/// The answer to a body cut off by [`request_body::guard`].
fn body_error(error: BodyError, limit: u64) -> DicomWebError {
    match error {
        BodyError::TooLarge => DicomWebError::PayloadTooLarge(limit),
        BodyError::Stalled => DicomWebError::RequestTimeout(
            "the request body sent nothing for longer than the server waits".into(),
        ),
        BodyError::PartHeaderTooLarge(_) | BodyError::TooManyParts(_) => {
            DicomWebError::BadRequest(error.to_string())
        }
        BodyError::Body(error) => {
            DicomWebError::BadRequest(format!("reading the request body: {error}"))
        }
    }
}

fn multipart_error(error: multer::Error, limit: u64) -> DicomWebError {
    if let multer::Error::StreamReadFailed(inner) = error {
        return match inner.downcast::<BodyError>() {
            Ok(body) => body_error(*body, limit),
            Err(other) => DicomWebError::BadRequest(format!("malformed multipart body: {other}")),
        };
    }
    DicomWebError::BadRequest(format!("malformed multipart body: {error}"))
}

#[cfg(test)]
mod tests {
    use super::fuzzing::split_stow_body;
    use super::*;

    const CONTENT_TYPE: &str = "multipart/related; type=\"application/dicom\"; boundary=b0und";
    const LIMITS: MultipartLimits = MultipartLimits {
        max_parts: 2,
        max_header_bytes: 64,
    };

    fn split(body: &[u8]) -> Vec<Result<Vec<(u64, bool)>, String>> {
        [1, 3, 7, 64, 4096]
            .into_iter()
            .map(|chunk_size| {
                split_stow_body(CONTENT_TYPE, body, chunk_size, LIMITS, 1 << 20)
                    .map_err(|error| error.to_string())
            })
            .collect()
    }

    #[test]
    fn parts_are_split_whatever_the_chunking() {
        let body = b"--b0und\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--b0und\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0und--\r\n";
        for result in split(body) {
            assert_eq!(result, Ok(vec![(4, true), (2, false)]));
        }
    }

    #[test]
    fn the_parts_the_parser_sees_are_the_parts_the_limits_count() {
        // A first delimiter without a line end before it: the parser opens a part there, so
        // the limits count it (a fuzzed body once had one part more than the limit).
        let part = "--b0und\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n";
        let body = format!("preamble{part}{part}{part}--b0und--");
        for result in split(body.as_bytes()) {
            let error = result.expect_err("three parts");
            assert!(error.contains("more than 2 parts"), "{error}");
        }
        let body = format!("preamble{part}{part}--b0und--");
        for result in split(body.as_bytes()) {
            assert_eq!(result, Ok(vec![(4, true), (4, true)]));
        }
        // Without header fields, the parser reads up to the first blank line after the
        // delimiter's line as header: the limit measures the same bytes.
        for result in split(b"--b0und\r\n\r\nab\r\n\r\ncd\r\n--b0und--") {
            assert_eq!(result, Ok(vec![(2, true)]));
        }
        // A part whose content has no blank line is all header to the parser.
        let mut body = b"x--b0und\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'a', 100));
        body.extend_from_slice(b"\r\n--b0und--");
        for result in split(&body) {
            let error = result.expect_err("header too long");
            assert!(error.contains("exceeds 64 bytes"), "{error}");
        }
    }
}
