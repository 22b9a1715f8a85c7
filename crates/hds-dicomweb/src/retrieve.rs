//! WADO-RS (PS3.18 10.4): instances, metadata and frames of a study, series or instance; and
//! the deletes of the same resources. Finding, opening and streaming the data is the archive's
//! ([`hds_archive::ServiceArchive`]); this module negotiates media types and shapes responses.

use std::hash::{Hash, Hasher};

use axum::body::Body;
use axum::extract::Path;
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use hds_archive::{ByteStream, InstanceContent, Scope};
use serde::Deserialize;

use crate::DicomWebError;
use crate::media::{self, EXPLICIT_VR_LITTLE_ENDIAN, Packaging};
use crate::multipart;
use crate::rendered;
use crate::service::ServiceContext;

/// Transfer syntaxes whose native (not encapsulated) pixel data is in little-endian byte order:
/// their frames are what an `application/octet-stream` part without a transfer-syntax means.
/// Frames stored in any other syntax are transcoded for a client that does not accept it.
const LITTLE_ENDIAN_NATIVE_SYNTAXES: [&str; 3] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
];

/// `{study}`.
#[derive(Debug, Deserialize)]
pub struct StudyPath {
    pub(crate) study: String,
}

/// `{study}/series/{series}`.
#[derive(Debug, Deserialize)]
pub struct SeriesPath {
    pub(crate) study: String,
    pub(crate) series: String,
}

/// `{study}/series/{series}/instances/{instance}`.
#[derive(Debug, Deserialize)]
pub struct InstancePath {
    pub(crate) study: String,
    pub(crate) series: String,
    pub(crate) instance: String,
}

/// `{study}/series/{series}/instances/{instance}/frames/{frames}`.
#[derive(Debug, Deserialize)]
pub struct FramesPath {
    pub(crate) study: String,
    pub(crate) series: String,
    pub(crate) instance: String,
    pub(crate) frames: String,
}

/// `GET studies/{study}`.
pub async fn study(
    context: ServiceContext,
    Path(path): Path<StudyPath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    retrieve_instances(&context, Scope::Study(&path.study), &headers).await
}

/// `GET studies/{study}/series/{series}`.
pub async fn series(
    context: ServiceContext,
    Path(path): Path<SeriesPath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    retrieve_instances(&context, Scope::Series(&path.study, &path.series), &headers).await
}

/// `GET studies/{study}/series/{series}/instances/{instance}`.
pub async fn instance(
    context: ServiceContext,
    Path(path): Path<InstancePath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let scope = Scope::Instance(&path.study, &path.series, &path.instance);
    retrieve_instances(&context, scope, &headers).await
}

async fn retrieve_instances(
    context: &ServiceContext,
    scope: Scope<'_>,
    headers: &HeaderMap,
) -> Result<Response, DicomWebError> {
    let found = context
        .archive
        .find_instance_versions(scope, requests_original(headers))
        .await?;
    let stored_syntaxes = found.transfer_syntaxes();
    let negotiated = media::negotiate(
        headers,
        &media::Offer {
            part_types: &["application/dicom"],
            stored_syntaxes: &stored_syntaxes,
            acceptable_without_parameter: &|syntax| syntax == EXPLICIT_VR_LITTLE_ENDIAN,
            transcodable: &|syntax| hds_pixels::TRANSCODABLE_SOURCES.contains(&syntax),
            single_allowed: matches!(scope, Scope::Instance(..)),
        },
    )?;
    drop(stored_syntaxes);
    // When transcoding several instances, each is checked from its stored header (index
    // metadata, no pixel read) before the status line: what cannot be produced (JPEG Baseline
    // from 16-bit samples...) is a clean 406 for the whole request, as Azure answers a
    // multi-instance request it will not transcode, never a body cut at a later instance.
    if let Some(target) = negotiated.target
        && found.len() > 1
    {
        rendered::check_all_transcodable(context, scope, &found, target).await?;
    }
    // The first instance is opened (and its first segment verified) before the status line,
    // so a missing or damaged blob is a clean 500 rather than a cut body; the others are
    // opened one at a time as the response reaches them. When transcoding, the first is also
    // transcoded before the status line; a later one whose data turns out damaged (its header
    // passed the check above) ends the body, as a damaged blob does.
    let mut instances = found.open().await?;
    let first = instances
        .next()
        .ok_or_else(|| DicomWebError::Internal("no instance opened".into()))?;
    let first = match negotiated.target {
        Some(target) if first.transfer_syntax_uid != target => InstanceContent {
            transfer_syntax_uid: target.to_owned(),
            bytes: bytes_stream(rendered::transcode(first, target).await?),
        },
        _ => first,
    };
    match negotiated.packaging {
        Packaging::Single => {
            let content_type = instance_part_type(&first.transfer_syntax_uid);
            Ok((
                [(CONTENT_TYPE, content_type)],
                Body::from_stream(first.bytes),
            )
                .into_response())
        }
        Packaging::Multipart => {
            let boundary = multipart::new_boundary();
            let target = negotiated.target;
            let rest = instances.map(move |instance| match target {
                Some(target) => rendered::transcoded(instance, target),
                None => instance,
            });
            let parts = std::iter::once(first).chain(rest).map(|instance| {
                (
                    instance_part_type(&instance.transfer_syntax_uid),
                    None,
                    instance.bytes,
                )
            });
            let body = multipart::body(boundary.clone(), parts);
            let content_type = multipart::content_type(&boundary, "application/dicom");
            Ok(([(CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
        }
    }
}

/// A stream of one chunk.
fn bytes_stream(bytes: impl Into<Bytes>) -> ByteStream {
    let bytes = bytes.into();
    futures::stream::once(async move { Ok(bytes) }).boxed()
}

/// The content type of one stored instance.
fn instance_part_type(transfer_syntax_uid: &str) -> String {
    format!("application/dicom; transfer-syntax={transfer_syntax_uid}")
}

/// `GET studies/{study}/metadata`.
pub async fn study_metadata(
    context: ServiceContext,
    Path(path): Path<StudyPath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    metadata(&context, Scope::Study(&path.study), &headers).await
}

/// `GET studies/{study}/series/{series}/metadata`.
pub async fn series_metadata(
    context: ServiceContext,
    Path(path): Path<SeriesPath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    metadata(&context, Scope::Series(&path.study, &path.series), &headers).await
}

/// `GET studies/{study}/series/{series}/instances/{instance}/metadata`.
pub async fn instance_metadata(
    context: ServiceContext,
    Path(path): Path<InstancePath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let scope = Scope::Instance(&path.study, &path.series, &path.instance);
    metadata(&context, scope, &headers).await
}

async fn metadata(
    context: &ServiceContext,
    scope: Scope<'_>,
    headers: &HeaderMap,
) -> Result<Response, DicomWebError> {
    if !media::accepts_dicom_json(headers) {
        return Err(DicomWebError::NotAcceptable(
            "metadata is available as application/dicom+json".into(),
        ));
    }
    let body = if requests_original(headers) {
        context.archive.original_metadata(scope).await?
    } else {
        context.archive.metadata(scope).await?
    };
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

/// Whether the request asks for the versions before a bulk update: Azure's
/// `msdicom-request-original` header, its first value `true` in any case. Honoured by the
/// retrieval of studies, series and instances and of their metadata, as in Azure.
fn requests_original(headers: &HeaderMap) -> bool {
    headers
        .get("msdicom-request-original")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
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
    Path(path): Path<FramesPath>,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let requested = parse_frame_list(&path.frames)?;
    let found = context
        .archive
        .find_frames(&path.study, &path.series, &path.instance, &requested)
        .await?;
    let syntax = found.transfer_syntax_uid().to_owned();
    let negotiated = media::negotiate(
        &headers,
        &media::Offer {
            part_types: &["application/octet-stream", "image/jpeg", "image/jp2"],
            stored_syntaxes: &[syntax.as_str()],
            acceptable_without_parameter: &|syntax| LITTLE_ENDIAN_NATIVE_SYNTAXES.contains(&syntax),
            transcodable: &|syntax| hds_pixels::TRANSCODABLE_SOURCES.contains(&syntax),
            single_allowed: requested.len() == 1,
        },
    )?;
    let part_essence = negotiated.part_type;
    match negotiated.target {
        // Native little-endian frames are already what Explicit VR Little Endian returns.
        Some(EXPLICIT_VR_LITTLE_ENDIAN)
            if LITTLE_ENDIAN_NATIVE_SYNTAXES.contains(&syntax.as_str()) => {}
        Some(target) if target != syntax => {
            return transcoded_frames(&context, &path, requested, &negotiated, target).await;
        }
        _ => {}
    }
    let part_type = if part_essence == "application/octet-stream"
        && !found.encapsulated()
        && LITTLE_ENDIAN_NATIVE_SYNTAXES.contains(&syntax.as_str())
    {
        part_essence.to_owned()
    } else {
        format!("{part_essence}; transfer-syntax={syntax}")
    };
    // The first frame is read before the status line, so a damaged blob is a clean 500; the
    // others are read one at a time as the client takes them, so a response holds about one
    // frame in memory however many it names.
    let (first, rest) = found.open().await?;
    match negotiated.packaging {
        Packaging::Single => Ok(([(CONTENT_TYPE, part_type)], first).into_response()),
        Packaging::Multipart => {
            let boundary = multipart::new_boundary();
            let first_part: ByteStream = futures::stream::once(async move { Ok(first) }).boxed();
            let parts = std::iter::once(first_part)
                .chain(rest)
                .map(move |part| (part_type.clone(), None, part));
            let body = multipart::body(boundary.clone(), parts);
            let content_type = multipart::content_type(&boundary, part_essence);
            Ok(([(CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
        }
    }
}

/// Frames of an instance transcoded to `target`: native little-endian samples, or one JPEG or
/// JPEG 2000 codestream per frame. The instance is read and decoded whole, and the frames
/// encoded, before the status line, so what cannot be produced is a clean 406.
async fn transcoded_frames(
    context: &ServiceContext,
    path: &FramesPath,
    requested: Vec<usize>,
    negotiated: &media::Negotiated,
    target: &'static str,
) -> Result<Response, DicomWebError> {
    let scope = Scope::Instance(&path.study, &path.series, &path.instance);
    let mut instances = context.archive.find_instances(scope).await?.open().await?;
    let instance = instances
        .next()
        .ok_or_else(|| DicomWebError::Internal("no instance opened".into()))?;
    let frames = rendered::transcode_frames(instance, target, requested).await?;
    let part_type = if target == EXPLICIT_VR_LITTLE_ENDIAN {
        negotiated.part_type.to_owned()
    } else {
        format!("{}; transfer-syntax={target}", negotiated.part_type)
    };
    match negotiated.packaging {
        Packaging::Single => {
            let frame = frames.into_iter().next().unwrap_or_default();
            Ok(([(CONTENT_TYPE, part_type)], frame).into_response())
        }
        Packaging::Multipart => {
            let boundary = multipart::new_boundary();
            let parts = frames
                .into_iter()
                .map(move |frame| (part_type.clone(), None, bytes_stream(frame)));
            let body = multipart::body(boundary.clone(), parts);
            let content_type = multipart::content_type(&boundary, negotiated.part_type);
            Ok(([(CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
        }
    }
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
    Path(path): Path<StudyPath>,
) -> Result<StatusCode, DicomWebError> {
    delete(&context, Scope::Study(&path.study)).await
}

/// `DELETE studies/{study}/series/{series}`.
pub async fn delete_series(
    context: ServiceContext,
    Path(path): Path<SeriesPath>,
) -> Result<StatusCode, DicomWebError> {
    delete(&context, Scope::Series(&path.study, &path.series)).await
}

/// `DELETE studies/{study}/series/{series}/instances/{instance}`.
pub async fn delete_instance(
    context: ServiceContext,
    Path(path): Path<InstancePath>,
) -> Result<StatusCode, DicomWebError> {
    let scope = Scope::Instance(&path.study, &path.series, &path.instance);
    delete(&context, scope).await
}

/// Deletes through the archive, which removes the rows first (the data stops being visible at
/// once), then the blobs.
async fn delete(context: &ServiceContext, scope: Scope<'_>) -> Result<StatusCode, DicomWebError> {
    context.archive.delete(scope).await?;
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
