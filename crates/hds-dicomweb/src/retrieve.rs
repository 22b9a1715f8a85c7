//! WADO-RS (PS3.18 10.4): instances, metadata and frames of a study, series or instance; and
//! the deletes of the same resources.

use std::hash::{Hash, Hasher};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
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
            // The first blob is opened (and its first segment verified) before the status
            // line, so a missing or damaged blob is a clean 500 rather than a cut body. The
            // others are opened one at a time as the response reaches them: a study of
            // thousands of instances holds one open blob and about one segment in memory.
            let mut records = records.into_iter();
            let Some(first) = records.next() else {
                return Err(DicomWebError::NotFound(what));
            };
            let first_part = (
                instance_part_type(&first),
                None,
                blob_stream(context, state, &first).await?,
            );
            let context = context.clone();
            let state = state.clone();
            let rest = records.map(move |record| {
                let content_type = instance_part_type(&record);
                let context = context.clone();
                let state = state.clone();
                let part = futures::stream::once(async move {
                    blob_stream(&context, &state, &record)
                        .await
                        .map_err(|error| {
                            tracing::error!(error = %error, "opening a blob failed mid-response");
                            std::io::Error::other("blob open failed")
                        })
                })
                .try_flatten()
                .boxed();
                (content_type, None, part)
            });
            let body = multipart::body(boundary.clone(), std::iter::once(first_part).chain(rest));
            let content_type = multipart::content_type(&boundary, "application/dicom");
            Ok(([(CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
        }
    }
}

/// The content type of one stored instance in a multipart response.
fn instance_part_type(record: &InstanceRecord) -> String {
    format!(
        "application/dicom; transfer-syntax={}",
        record.transfer_syntax_uid
    )
}

/// The blob key of a stored instance, unwrapped through its study key.
fn blob_key(context: &ServiceContext, record: &InstanceRecord) -> Result<BlobKey, DicomWebError> {
    let stored = record
        .blob_key
        .as_ref()
        .ok_or_else(|| DicomWebError::DataIntegrity("instance row without a blob key".into()))?;
    Ok(context.keyring.open_blob_key(stored, &record.binding())?)
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
    let sealed = std::sync::Arc::new(
        state
            .blobs
            .open_sealed_ranges(&name, &context.service_key, &key, record.size)
            .await?,
    );
    let frame_ranges: Vec<Vec<std::ops::Range<u64>>> = requested
        .iter()
        .map(|number| {
            frame_map.frames[number - 1]
                .iter()
                .map(|range| range.offset..range.offset + range.length)
                .collect()
        })
        .collect();
    let part_type = if frame_map.encapsulated || !LITTLE_ENDIAN_NATIVE_SYNTAXES.contains(&syntax) {
        format!("application/octet-stream; transfer-syntax={syntax}")
    } else {
        "application/octet-stream".to_owned()
    };
    let mut frames = frame_ranges.into_iter();
    // The first frame is read before the status line, so a damaged blob is a clean 500; the
    // others are read one at a time as the client takes them, so a response holds about one
    // frame in memory however many it names.
    let first = match frames.next() {
        Some(ranges) => read_frame(&sealed, ranges).await?,
        None => return Err(DicomWebError::NotFound("frame")),
    };
    match negotiated.packaging {
        Packaging::Single => Ok(([(CONTENT_TYPE, part_type)], first).into_response()),
        Packaging::Multipart => {
            let boundary = multipart::new_boundary();
            let first_part: BoxStream<'static, Result<Bytes, std::io::Error>> =
                futures::stream::once(async move { Ok(first) }).boxed();
            let parts = std::iter::once((part_type.clone(), None, first_part)).chain(frames.map(
                move |ranges| {
                    let sealed = sealed.clone();
                    let part: BoxStream<'static, Result<Bytes, std::io::Error>> =
                        futures::stream::once(async move {
                            read_frame(&sealed, ranges).await.map_err(|error| {
                            tracing::error!(error = %error, "reading a frame failed mid-response");
                            std::io::Error::other("frame read failed")
                        })
                        })
                        .boxed();
                    (part_type.clone(), None, part)
                },
            ));
            let body = multipart::body(boundary.clone(), parts);
            let content_type = multipart::content_type(&boundary, "application/octet-stream");
            Ok(([(CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
        }
    }
}

/// The bytes of one frame: its ranges (one for native pixel data, one per fragment for
/// encapsulated), decrypted and joined.
async fn read_frame(
    sealed: &hds_blob::SealedRanges,
    ranges: Vec<std::ops::Range<u64>>,
) -> Result<Bytes, DicomWebError> {
    let mut pieces = sealed.read(&ranges).await?;
    if pieces.len() == 1 {
        return Ok(pieces.pop().unwrap_or_default());
    }
    Ok(Bytes::from(pieces.concat()))
}

/// The most frame numbers one frames request may name. Each number is distinct and names a
/// frame of the instance, so a response is never larger than the instance's pixel data; this
/// bounds the work of parsing and checking the list itself.
pub const MAX_FRAMES_PER_REQUEST: usize = 4096;

/// Parses `1,3,5` into frame numbers (from 1). A number named twice, or more than
/// [`MAX_FRAMES_PER_REQUEST`] numbers, is a 400: repeating a frame would let a short URL ask
/// for an unbounded response.
fn parse_frame_list(text: &str) -> Result<Vec<usize>, DicomWebError> {
    let malformed = || {
        DicomWebError::BadRequest(
            "frames must be a comma-separated list of frame numbers starting at 1".into(),
        )
    };
    let mut numbers = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for piece in text.split(',') {
        if numbers.len() == MAX_FRAMES_PER_REQUEST {
            return Err(DicomWebError::BadRequest(format!(
                "a request may name at most {MAX_FRAMES_PER_REQUEST} frames; retrieve the \
                 instance for more"
            )));
        }
        let number = piece.trim().parse::<usize>().map_err(|_| malformed())?;
        if number == 0 {
            return Err(malformed());
        }
        if !seen.insert(number) {
            return Err(DicomWebError::BadRequest(
                "each frame may be named once per request".into(),
            ));
        }
        numbers.push(number);
    }
    Ok(numbers)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lists_refuse_repeats_zero_and_too_many() {
        assert_eq!(parse_frame_list("1").expect("one"), vec![1]);
        assert_eq!(parse_frame_list("3, 1,2").expect("three"), vec![3, 1, 2]);
        for bad in ["", "0", "1,,2", "a", "-1", "1,1", "2,1,2"] {
            assert!(
                matches!(parse_frame_list(bad), Err(DicomWebError::BadRequest(_))),
                "{bad}"
            );
        }
        let most: Vec<String> = (1..=MAX_FRAMES_PER_REQUEST)
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            parse_frame_list(&most.join(",")).expect("at the cap").len(),
            MAX_FRAMES_PER_REQUEST
        );
        let too_many = format!("{},{}", most.join(","), MAX_FRAMES_PER_REQUEST + 1);
        assert!(matches!(
            parse_frame_list(&too_many),
            Err(DicomWebError::BadRequest(_))
        ));
        // The 3 KB URL that once asked for one frame a thousand times.
        let repeated = vec!["1"; 1500].join(",");
        assert!(matches!(
            parse_frame_list(&repeated),
            Err(DicomWebError::BadRequest(_))
        ));
    }
}
