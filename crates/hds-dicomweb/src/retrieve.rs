//! WADO-RS (PS3.18 10.4): instances, metadata and frames of a study, series or instance; and
//! the deletes of the same resources.

use std::hash::{Hash, Hasher};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use hds_blob::BlobName;
use hds_crypto::keys::BlobKey;
use hds_index::{DeleteScope, InstanceRecord};
use serde::Deserialize;

use crate::DicomWebError;
use crate::media::{self, EXPLICIT_VR_LITTLE_ENDIAN, Packaging};
use crate::multipart;
use crate::service::{DicomWebState, ServiceContext};

/// Transfer syntaxes whose native (not encapsulated) pixel data is in little-endian byte order:
/// their frames are what an `application/octet-stream` part without a transfer-syntax means.
/// Frames stored big endian are sent only to a client that accepts the stored syntax
/// (`transfer-syntax=*`), labelled with it: hds does not transcode.
const LITTLE_ENDIAN_NATIVE_SYNTAXES: [&str; 3] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
];

/// `{study}`.
#[derive(Debug, Deserialize)]
pub struct StudyPath {
    study: String,
}

/// `{study}/series/{series}`.
#[derive(Debug, Deserialize)]
pub struct SeriesPath {
    study: String,
    series: String,
}

/// `{study}/series/{series}/instances/{instance}`.
#[derive(Debug, Deserialize)]
pub struct InstancePath {
    study: String,
    series: String,
    instance: String,
}

/// `{study}/series/{series}/instances/{instance}/frames/{frames}`.
#[derive(Debug, Deserialize)]
pub struct FramesPath {
    study: String,
    series: String,
    instance: String,
    frames: String,
}

/// `GET studies/{study}`.
pub async fn study(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<StudyPath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    retrieve_instances(
        &context,
        &state,
        DeleteScope::Study(&path.study),
        &headers,
        "study",
    )
    .await
}

/// `GET studies/{study}/series/{series}`.
pub async fn series(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<SeriesPath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    retrieve_instances(
        &context,
        &state,
        DeleteScope::Series(&path.study, &path.series),
        &headers,
        "series",
    )
    .await
}

/// `GET studies/{study}/series/{series}/instances/{instance}`.
pub async fn instance(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<InstancePath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let scope = DeleteScope::Instance(&path.study, &path.series, &path.instance);
    retrieve_instances(&context, &state, scope, &headers, "instance").await
}

async fn retrieve_instances(
    context: &ServiceContext,
    state: &DicomWebState,
    scope: DeleteScope<'_>,
    headers: &HeaderMap,
    what: &'static str,
) -> Result<Response, DicomWebError> {
    let records = state
        .index
        .find_instances(&context.service_key, scope)
        .await?;
    if records.is_empty() {
        return Err(DicomWebError::NotFound(what));
    }
    let syntaxes: Vec<&str> = records
        .iter()
        .map(|record| record.transfer_syntax_uid.as_str())
        .collect();
    let single_allowed = matches!(scope, DeleteScope::Instance(..));
    let negotiated = media::negotiate(
        headers,
        "application/dicom",
        &syntaxes,
        |syntax| syntax == EXPLICIT_VR_LITTLE_ENDIAN,
        single_allowed,
    )?;
    match negotiated.packaging {
        Packaging::Single => {
            let record = &records[0];
            let stream = blob_stream(context, state, record).await?;
            let content_type = format!(
                "application/dicom; transfer-syntax={}",
                record.transfer_syntax_uid
            );
            Ok(([(CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response())
        }
        Packaging::Multipart => {
            let boundary = multipart::new_boundary();
            let mut parts = Vec::with_capacity(records.len());
            // Open every blob (and verify its first segment) before the status line is sent, so
            // a missing or damaged blob is a clean 500 rather than a cut body.
            for record in &records {
                let content_type = format!(
                    "application/dicom; transfer-syntax={}",
                    record.transfer_syntax_uid
                );
                parts.push((
                    content_type,
                    None,
                    blob_stream(context, state, record).await?,
                ));
            }
            let body = multipart::body(boundary.clone(), parts);
            let content_type = multipart::content_type(&boundary, "application/dicom");
            Ok(([(CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
        }
    }
}

/// The blob key of a stored instance, unwrapped through its study key.
fn blob_key(context: &ServiceContext, record: &InstanceRecord) -> Result<BlobKey, DicomWebError> {
    let stored = record
        .blob_key
        .as_ref()
        .ok_or_else(|| DicomWebError::DataIntegrity("instance row without a blob key".into()))?;
    Ok(context.keyring.open_blob_key(stored, &record.blob_name)?)
}

/// The decrypted instance as a stream. A segment that fails after the first ends the stream
/// with an error, which aborts the response (no closing boundary), so a client never takes a
/// cut body for a whole one.
async fn blob_stream(
    context: &ServiceContext,
    state: &DicomWebState,
    record: &InstanceRecord,
) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, DicomWebError> {
    let name = BlobName::parse(&record.blob_name)?;
    let key = blob_key(context, record)?;
    let stream = state
        .blobs
        .read_sealed(&name, &context.service_key, &key)
        .await?;
    Ok(stream
        .map(|chunk| {
            chunk.map_err(|error| {
                tracing::error!(error = %error, "reading a blob failed mid-response");
                std::io::Error::other("blob read failed")
            })
        })
        .boxed())
}

/// `GET studies/{study}/metadata`.
pub async fn study_metadata(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<StudyPath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    metadata(
        &context,
        &state,
        DeleteScope::Study(&path.study),
        &headers,
        "study",
    )
    .await
}

/// `GET studies/{study}/series/{series}/metadata`.
pub async fn series_metadata(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<SeriesPath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    metadata(
        &context,
        &state,
        DeleteScope::Series(&path.study, &path.series),
        &headers,
        "series",
    )
    .await
}

/// `GET studies/{study}/series/{series}/instances/{instance}/metadata`.
pub async fn instance_metadata(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<InstancePath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let scope = DeleteScope::Instance(&path.study, &path.series, &path.instance);
    metadata(&context, &state, scope, &headers, "instance").await
}

async fn metadata(
    context: &ServiceContext,
    state: &DicomWebState,
    scope: DeleteScope<'_>,
    headers: &HeaderMap,
    what: &'static str,
) -> Result<Response, DicomWebError> {
    if !media::accepts_dicom_json(headers) {
        return Err(DicomWebError::NotAcceptable(
            "metadata is available as application/dicom+json".into(),
        ));
    }
    let body = state
        .index
        .find_metadata_json(&context.service_key, scope)
        .await?
        .ok_or(DicomWebError::NotFound(what))?;
    let etag = entity_tag(&body);
    let matches = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|candidate| {
            let candidate = candidate.trim();
            candidate == "*" || candidate.trim_start_matches("W/") == etag
        });
    let etag_header =
        HeaderValue::from_str(&etag).map_err(|error| DicomWebError::internal("etag", error))?;
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(ETAG, etag_header)]).into_response());
    }
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/dicom+json"),
            ),
            (ETAG, etag_header),
        ],
        body,
    )
        .into_response())
}

/// A strong entity tag of a response body. SipHash with fixed keys: stable across restarts,
/// and 64 bits of a digest reveal nothing useful about the document.
fn entity_tag(body: &[u8]) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    body.hash(&mut hasher);
    format!("\"{:016x}-{:x}\"", hasher.finish(), body.len())
}

/// `GET .../instances/{instance}/frames/{frames}`: frame numbers from 1, comma-separated.
pub async fn frames(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<FramesPath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let requested = parse_frame_list(&path.frames)?;
    let scope = DeleteScope::Instance(&path.study, &path.series, &path.instance);
    let records = state
        .index
        .find_instances(&context.service_key, scope)
        .await?;
    let record = records
        .into_iter()
        .next()
        .ok_or(DicomWebError::NotFound("instance"))?;
    let frame_map = record.frames.as_ref().ok_or(DicomWebError::NotFound(
        "frame (the instance has no pixel data)",
    ))?;
    let frame_count = frame_map.frames.len();
    if requested.iter().any(|&number| number > frame_count) {
        return Err(DicomWebError::NotFound("frame"));
    }
    let syntax = record.transfer_syntax_uid.as_str();
    let negotiated = media::negotiate(
        &headers,
        "application/octet-stream",
        &[syntax],
        |syntax| LITTLE_ENDIAN_NATIVE_SYNTAXES.contains(&syntax),
        requested.len() == 1,
    )?;
    let name = BlobName::parse(&record.blob_name)?;
    let key = blob_key(&context, &record)?;
    // Only the segments holding the requested frames are read and decrypted.
    let sealed = state
        .blobs
        .open_sealed_ranges(&name, &context.service_key, &key, record.size)
        .await?;
    let mut frame_bodies = Vec::with_capacity(requested.len());
    for number in &requested {
        let ranges: Vec<std::ops::Range<u64>> = frame_map.frames[number - 1]
            .iter()
            .map(|range| range.offset..range.offset + range.length)
            .collect();
        let pieces = sealed.read(&ranges).await?;
        frame_bodies.push(Bytes::from(pieces.concat()));
    }
    let part_type = if frame_map.encapsulated || !LITTLE_ENDIAN_NATIVE_SYNTAXES.contains(&syntax) {
        format!("application/octet-stream; transfer-syntax={syntax}")
    } else {
        "application/octet-stream".to_owned()
    };
    match negotiated.packaging {
        Packaging::Single => {
            let body = frame_bodies.pop().unwrap_or_default();
            Ok(([(CONTENT_TYPE, part_type)], body).into_response())
        }
        Packaging::Multipart => {
            let boundary = multipart::new_boundary();
            let parts = frame_bodies
                .into_iter()
                .map(|frame| {
                    let stream: BoxStream<'static, Result<Bytes, std::io::Error>> =
                        futures::stream::once(async move { Ok(frame) }).boxed();
                    (part_type.clone(), None, stream)
                })
                .collect();
            let body = multipart::body(boundary.clone(), parts);
            let content_type = multipart::content_type(&boundary, "application/octet-stream");
            Ok(([(CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
        }
    }
}

/// Parses `1,3,5` into frame numbers (from 1).
fn parse_frame_list(text: &str) -> Result<Vec<usize>, DicomWebError> {
    let numbers: Result<Vec<usize>, _> = text
        .split(',')
        .map(|piece| piece.trim().parse::<usize>())
        .collect();
    match numbers {
        Ok(numbers) if !numbers.is_empty() && numbers.iter().all(|&number| number >= 1) => {
            Ok(numbers)
        }
        _ => Err(DicomWebError::BadRequest(
            "frames must be a comma-separated list of frame numbers starting at 1".into(),
        )),
    }
}

/// `DELETE studies/{study}`.
pub async fn delete_study(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<StudyPath>,
) -> Result<StatusCode, DicomWebError> {
    delete(&context, &state, DeleteScope::Study(&path.study), "study").await
}

/// `DELETE studies/{study}/series/{series}`.
pub async fn delete_series(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<SeriesPath>,
) -> Result<StatusCode, DicomWebError> {
    delete(
        &context,
        &state,
        DeleteScope::Series(&path.study, &path.series),
        "series",
    )
    .await
}

/// `DELETE studies/{study}/series/{series}/instances/{instance}`.
pub async fn delete_instance(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<InstancePath>,
) -> Result<StatusCode, DicomWebError> {
    let scope = DeleteScope::Instance(&path.study, &path.series, &path.instance);
    delete(&context, &state, scope, "instance").await
}

/// Removes the index rows first (the data stops being visible at once), then the blobs.
async fn delete(
    context: &ServiceContext,
    state: &DicomWebState,
    scope: DeleteScope<'_>,
    what: &'static str,
) -> Result<StatusCode, DicomWebError> {
    let blob_names = state.index.delete(&context.service_key, scope).await?;
    if blob_names.is_empty() {
        return Err(DicomWebError::NotFound(what));
    }
    for name in blob_names {
        state.blobs.delete(&BlobName::parse(&name)?).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
