//! Rendered resources (PS3.18 §9.5, 10.4.1.1.3): an instance or one of its frames as a JPEG or
//! PNG image with the instance's own window, and thumbnails of studies, series and instances;
//! and the transcoding of retrieved instances and frames to the transfer syntax a client asks
//! for. The pixel work is
//! `hds-pixels`'s; this module negotiates the format, reads the parameters and bounds the work
//! (whole instances in memory up to a limit, at most one decode per core at a time).

use std::sync::LazyLock;

use axum::extract::{Path, Query};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use hds_archive::{ByteStream, FoundInstance, FoundInstances, InstanceContent, Scope};
use hds_pixels::{DEFAULT_QUALITY, ImageFormat, PixelError, RenderOptions, Viewport};
use tokio::sync::Semaphore;

use crate::DicomWebError;
use crate::media;
use crate::retrieve::{FramesPath, InstancePath, SeriesPath, StudyPath};
use crate::service::ServiceContext;

/// The largest stored instance that is rendered: it is read into memory whole (decrypted, never
/// written anywhere) to be decoded.
pub const MAX_RENDERED_INSTANCE_BYTES: usize = 512 * 1024 * 1024;

/// Renders running at once: decoding is CPU-bound, so at most one per core runs and the others
/// wait their turn rather than starve the async workers' requests.
static RENDERS: LazyLock<Semaphore> = LazyLock::new(|| {
    Semaphore::new(std::thread::available_parallelism().map_or(2, |cores| cores.get()))
});

/// Runs the pixel work `work` on the blocking pool once it has one of the per-core turns
/// ([`RENDERS`]): renders and transcodes share the limit, so the async workers keep serving.
/// `what` names the work in the error of a task that did not finish.
async fn with_a_core<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DicomWebError> {
    let _turn = RENDERS
        .acquire()
        .await
        .map_err(|_| DicomWebError::Internal("the render limit was closed".into()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| DicomWebError::Internal(format!("{what} task: {error}")))
}

/// `quality` and `viewport` (PS3.18 §8.3.5.1); other rendering parameters are refused.
type Parameters = Query<Vec<(String, String)>>;

/// `GET .../instances/{instance}/rendered`: the first frame.
pub async fn instance(
    context: ServiceContext,
    Path(path): Path<InstancePath>,
    Query(parameters): Parameters,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let scope = Scope::Instance(&path.study, &path.series, &path.instance);
    render(&context, scope, 1, &parameters, &headers, false).await
}

/// `GET .../instances/{instance}/frames/{frame}/rendered`: one frame.
pub async fn frame(
    context: ServiceContext,
    Path(path): Path<FramesPath>,
    Query(parameters): Parameters,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let frame = path
        .frames
        .parse::<u32>()
        .ok()
        .filter(|frame| *frame >= 1)
        .ok_or_else(|| {
            DicomWebError::BadRequest("a rendered frame is one frame number, starting at 1".into())
        })?;
    let scope = Scope::Instance(&path.study, &path.series, &path.instance);
    render(&context, scope, frame, &parameters, &headers, false).await
}

/// `GET studies/{study}/thumbnail`: the first instance of the study.
pub async fn study_thumbnail(
    context: ServiceContext,
    Path(path): Path<StudyPath>,
    Query(parameters): Parameters,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let scope = Scope::Study(&path.study);
    render(&context, scope, 1, &parameters, &headers, true).await
}

/// `GET studies/{study}/series/{series}/thumbnail`: the first instance of the series.
pub async fn series_thumbnail(
    context: ServiceContext,
    Path(path): Path<SeriesPath>,
    Query(parameters): Parameters,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let scope = Scope::Series(&path.study, &path.series);
    render(&context, scope, 1, &parameters, &headers, true).await
}

/// `GET .../instances/{instance}/thumbnail`.
pub async fn instance_thumbnail(
    context: ServiceContext,
    Path(path): Path<InstancePath>,
    Query(parameters): Parameters,
    headers: HeaderMap,
) -> Result<Response, DicomWebError> {
    let scope = Scope::Instance(&path.study, &path.series, &path.instance);
    render(&context, scope, 1, &parameters, &headers, true).await
}

async fn render(
    context: &ServiceContext,
    scope: Scope<'_>,
    frame: u32,
    parameters: &[(String, String)],
    headers: &HeaderMap,
    thumbnail: bool,
) -> Result<Response, DicomWebError> {
    // The request is checked before any data is read.
    let format = negotiate_image(headers)?;
    let mut options = render_options(parameters, format)?;
    if thumbnail && options.viewport.is_none() {
        options.viewport = Some(Viewport {
            width: hds_pixels::THUMBNAIL_SIDE,
            height: hds_pixels::THUMBNAIL_SIDE,
        });
    }
    let found = context.archive.find_instances(scope).await?;
    let instance = found
        .open()
        .await?
        .next()
        .ok_or_else(|| DicomWebError::Internal("no instance opened".into()))?;
    let bytes = read_whole(instance.bytes).await?;
    let image = with_a_core("rendering", move || {
        hds_pixels::render(&bytes, frame, &options)
    })
    .await?
    .map_err(rendering_error)?;
    Ok(([(CONTENT_TYPE, format.media_type())], image).into_response())
}

/// The image format the client accepts: JPEG unless it prefers PNG (PS3.18 §8.7.3.4: JPEG is
/// the default of single-frame rendered media).
fn negotiate_image(headers: &HeaderMap) -> Result<ImageFormat, DicomWebError> {
    for range in media::accepted(headers) {
        match range.essence.as_str() {
            "image/jpeg" | "image/*" | "*/*" => return Ok(ImageFormat::Jpeg),
            "image/png" => return Ok(ImageFormat::Png),
            _ => {}
        }
    }
    Err(DicomWebError::NotAcceptable(
        "rendered images are available as image/jpeg or image/png".into(),
    ))
}

/// Reads `quality` (1 to 100) and `viewport` (`width,height`); any other parameter is a 400,
/// as is a parameter given twice.
fn render_options(
    parameters: &[(String, String)],
    format: ImageFormat,
) -> Result<RenderOptions, DicomWebError> {
    let mut options = RenderOptions {
        format,
        quality: DEFAULT_QUALITY,
        viewport: None,
    };
    let mut seen = Vec::new();
    for (name, value) in parameters {
        if seen.contains(&name.as_str()) {
            return Err(DicomWebError::BadRequest(format!(
                "{name} may be given once"
            )));
        }
        seen.push(name.as_str());
        match name.as_str() {
            "quality" => {
                options.quality = value
                    .parse::<u8>()
                    .ok()
                    .filter(|quality| (1..=100).contains(quality))
                    .ok_or_else(|| {
                        DicomWebError::BadRequest("quality must be an integer from 1 to 100".into())
                    })?;
            }
            "viewport" => options.viewport = Some(parse_viewport(value)?),
            _ => {
                return Err(DicomWebError::BadRequest(format!(
                    "{name} is not a supported rendering parameter (supported: quality, viewport)"
                )));
            }
        }
    }
    Ok(options)
}

/// `width,height`, each 1 to [`hds_pixels::MAX_VIEWPORT_SIDE`]. The source-region form
/// (`vw,vh,sx,sy,sw,sh`) is not supported.
fn parse_viewport(text: &str) -> Result<Viewport, DicomWebError> {
    let malformed = || {
        DicomWebError::BadRequest(format!(
            "viewport must be width,height in pixels, each from 1 to {}",
            hds_pixels::MAX_VIEWPORT_SIDE
        ))
    };
    let (width, height) = text.split_once(',').ok_or_else(malformed)?;
    let side = |text: &str| {
        text.trim()
            .parse::<u32>()
            .ok()
            .filter(|side| (1..=hds_pixels::MAX_VIEWPORT_SIDE).contains(side))
            .ok_or_else(malformed)
    };
    Ok(Viewport {
        width: side(width)?,
        height: side(height)?,
    })
}

/// The stored `instance` transcoded to `target` (one of [`hds_pixels::TRANSCODING_TARGETS`]):
/// read whole, decoded and encoded off the async workers under the same per-core limit as
/// renders.
pub(crate) async fn transcode(
    instance: InstanceContent,
    target: &'static str,
) -> Result<Vec<u8>, DicomWebError> {
    let target_syntax = target_syntax(target)?;
    let source = instance.transfer_syntax_uid;
    let whole = read_whole(instance.bytes).await?;
    with_a_core("transcoding", move || {
        hds_pixels::transcode(&whole, target_syntax)
    })
    .await?
    .map_err(|error| transcoding_error(error, "the instance", &source, target))
}

/// Frames `frames` of the stored `instance` in `target`: native little-endian samples for
/// Explicit VR Little Endian, one JPEG or JPEG 2000 codestream each otherwise; decoded off the
/// async workers under the per-core limit.
pub(crate) async fn transcode_frames(
    instance: InstanceContent,
    target: &'static str,
    frames: Vec<usize>,
) -> Result<Vec<Bytes>, DicomWebError> {
    let target_syntax = target_syntax(target)?;
    let source = instance.transfer_syntax_uid;
    let whole = read_whole(instance.bytes).await?;
    let encoded = with_a_core("transcoding", move || {
        hds_pixels::transcode_frames(&whole, target_syntax, &frames)
    })
    .await?
    .map_err(|error| transcoding_error(error, "the frames", &source, target))?;
    Ok(encoded.into_iter().map(Bytes::from).collect())
}

fn target_syntax(target: &str) -> Result<hds_pixels::TargetSyntax, DicomWebError> {
    hds_pixels::TargetSyntax::from_uid(target)
        .ok_or_else(|| DicomWebError::Internal(format!("{target} is not a transcoding target")))
}

/// A transcoding failure as the client sees it: a missing frame is a 404; data that cannot be
/// decoded, or that the target cannot hold, a 406 naming the stored syntax, what was asked
/// and what hds offers.
fn transcoding_error(error: PixelError, what: &str, source: &str, target: &str) -> DicomWebError {
    match error {
        PixelError::NoSuchFrame { .. } => DicomWebError::NotFound("frame"),
        PixelError::TooLarge { .. }
        | PixelError::Undecodable(_)
        | PixelError::Unencodable(_)
        | PixelError::NoPixelData => DicomWebError::NotAcceptable(format!(
            "{what} (stored in transfer syntax {source}) cannot be transcoded to {target}: \
             {error}; hds transcodes to {}; ask for another, or for transfer-syntax=* to \
             receive the data as stored",
            hds_pixels::TRANSCODING_TARGETS.join(", ")
        )),
        other => DicomWebError::Internal(other.to_string()),
    }
}

/// Refuses, with the 406 of [`transcoding_error`], a multi-instance retrieve of `scope` in
/// `target` when any instance not stored in `target` cannot be transcoded to it: an undecoded
/// source syntax, an instance over the size read whole, or a pixel description the target
/// cannot hold. Decided from what the index holds (each instance's stored syntax and size, and
/// its metadata's pixel attributes), so no blob is opened and no pixel decoded; what passes
/// fails later only if its pixel data is damaged.
pub(crate) async fn check_all_transcodable(
    context: &ServiceContext,
    scope: Scope<'_>,
    found: &FoundInstances,
    target: &'static str,
) -> Result<(), DicomWebError> {
    let target_syntax = target_syntax(target)?;
    let count = found.len();
    let pending: Vec<(usize, FoundInstance<'_>)> = found
        .stored()
        .enumerate()
        .filter(|(_, instance)| instance.transfer_syntax_uid != target)
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let what = |position: usize| format!("instance {} of the {count} requested", position + 1);
    for (position, instance) in &pending {
        if instance.size > MAX_RENDERED_INSTANCE_BYTES as u64 {
            return Err(DicomWebError::NotAcceptable(format!(
                "{} (stored in transfer syntax {}) is over {MAX_RENDERED_INSTANCE_BYTES} bytes, \
                 more than hds transcodes; ask for transfer-syntax=* to receive the instances \
                 as stored",
                what(*position),
                instance.transfer_syntax_uid
            )));
        }
    }
    let metadata = context.archive.metadata(scope).await?;
    let headers = pixel_headers(&metadata)?;
    for (position, instance) in pending {
        // An instance without metadata (deleted or replaced since it was found) has nothing to
        // check: opening it answers for it.
        let header = headers
            .get(instance.sop_instance_uid)
            .cloned()
            .unwrap_or_default();
        hds_pixels::check_transcodable(instance.transfer_syntax_uid, &header, target_syntax)
            .map_err(|error| {
                transcoding_error(error, &what(position), instance.transfer_syntax_uid, target)
            })?;
    }
    Ok(())
}

/// One DICOM JSON attribute: only its values are read.
#[derive(serde::Deserialize)]
struct JsonAttribute {
    #[serde(rename = "Value", default)]
    value: Vec<serde_json::Value>,
}

impl JsonAttribute {
    fn first(&self) -> Option<&serde_json::Value> {
        self.value.first()
    }

    /// A US or IS value: a JSON number, or a string for IS as some writers give it.
    fn number(&self) -> Option<u32> {
        match self.first()? {
            serde_json::Value::Number(number) => {
                number.as_u64().and_then(|n| u32::try_from(n).ok())
            }
            serde_json::Value::String(text) => text.trim().parse().ok(),
            _ => None,
        }
    }

    fn text(&self) -> Option<String> {
        self.first()?.as_str().map(|text| text.trim().to_owned())
    }
}

/// The attributes of an instance's metadata that [`hds_pixels::check_transcodable`] reads;
/// every other attribute is skipped.
#[derive(serde::Deserialize)]
struct HeaderAttributes {
    #[serde(rename = "00080018")]
    sop_instance_uid: Option<JsonAttribute>,
    #[serde(rename = "00280002")]
    samples_per_pixel: Option<JsonAttribute>,
    #[serde(rename = "00280004")]
    photometric_interpretation: Option<JsonAttribute>,
    #[serde(rename = "00280008")]
    number_of_frames: Option<JsonAttribute>,
    #[serde(rename = "00280010")]
    rows: Option<JsonAttribute>,
    #[serde(rename = "00280011")]
    columns: Option<JsonAttribute>,
    #[serde(rename = "00280100")]
    bits_allocated: Option<JsonAttribute>,
    #[serde(rename = "00280101")]
    bits_stored: Option<JsonAttribute>,
    #[serde(rename = "00280103")]
    pixel_representation: Option<JsonAttribute>,
}

/// The pixel description of each instance of a metadata array (DICOM JSON, as the index holds
/// it), by SOPInstanceUID.
fn pixel_headers(
    metadata: &[u8],
) -> Result<std::collections::HashMap<String, hds_pixels::PixelHeader>, DicomWebError> {
    let documents: Vec<HeaderAttributes> = serde_json::from_slice(metadata)
        // Not the parser's message: it may quote a value.
        .map_err(|_| DicomWebError::Internal("stored metadata did not parse".into()))?;
    let number =
        |attribute: &Option<JsonAttribute>| attribute.as_ref().and_then(JsonAttribute::number);
    Ok(documents
        .into_iter()
        .filter_map(|document| {
            let sop = document.sop_instance_uid.as_ref()?.text()?;
            let header = hds_pixels::PixelHeader {
                samples_per_pixel: number(&document.samples_per_pixel),
                photometric_interpretation: document
                    .photometric_interpretation
                    .as_ref()
                    .and_then(JsonAttribute::text),
                bits_allocated: number(&document.bits_allocated),
                bits_stored: number(&document.bits_stored),
                pixel_representation: number(&document.pixel_representation),
                rows: number(&document.rows),
                columns: number(&document.columns),
                number_of_frames: number(&document.number_of_frames),
            };
            Some((sop, header))
        })
        .collect())
}

/// An instance as a multipart response sends it in `target`: one stored so passes through;
/// any other is transcoded when the response reaches it (a failure then ends the body, as a
/// damaged blob does).
pub(crate) fn transcoded(instance: InstanceContent, target: &'static str) -> InstanceContent {
    if instance.transfer_syntax_uid == target {
        return instance;
    }
    let bytes = futures::stream::once(async move {
        transcode(instance, target)
            .await
            .map(Bytes::from)
            .map_err(|error| {
                tracing::warn!(error = %error, "transcoding an instance failed mid-response");
                std::io::Error::other("transcoding failed")
            })
    })
    .boxed();
    InstanceContent {
        transfer_syntax_uid: target.to_owned(),
        bytes,
    }
}

/// The decrypted instance, whole, up to [`MAX_RENDERED_INSTANCE_BYTES`].
async fn read_whole(mut stream: ByteStream) -> Result<Vec<u8>, DicomWebError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| DicomWebError::Internal(error.to_string()))?;
        if bytes.len() + chunk.len() > MAX_RENDERED_INSTANCE_BYTES {
            return Err(DicomWebError::NotAcceptable(format!(
                "instances over {MAX_RENDERED_INSTANCE_BYTES} bytes are not rendered; retrieve the instance or its frames instead"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn rendering_error(error: PixelError) -> DicomWebError {
    match error {
        PixelError::NoSuchFrame { .. } => DicomWebError::NotFound("frame"),
        PixelError::InvalidOptions(reason) => DicomWebError::BadRequest(reason.into()),
        PixelError::NoPixelData | PixelError::TooLarge { .. } | PixelError::Undecodable(_) => {
            DicomWebError::NotAcceptable(format!("the instance cannot be rendered: {error}"))
        }
        other => DicomWebError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::ACCEPT,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn pixel_headers_read_the_pixel_attributes_of_each_instance_by_sop_instance_uid() {
        let metadata = br#"[
            {"00080018": {"vr": "UI", "Value": ["1.2.3"]},
             "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
             "00280002": {"vr": "US", "Value": [3]},
             "00280004": {"vr": "CS", "Value": ["RGB "]},
             "00280008": {"vr": "IS", "Value": ["10"]},
             "00280010": {"vr": "US", "Value": [480]},
             "00280011": {"vr": "US", "Value": [640]},
             "00280100": {"vr": "US", "Value": [8]},
             "00280101": {"vr": "US", "Value": [8]},
             "00280103": {"vr": "US", "Value": [0]}},
            {"00080018": {"vr": "UI", "Value": ["1.2.4"]},
             "00280008": {"vr": "IS", "Value": [2]}},
            {"00280002": {"vr": "US", "Value": [1]}}
        ]"#;
        let headers = pixel_headers(metadata).expect("parsed");
        assert_eq!(
            headers.len(),
            2,
            "a document without a SOP Instance UID is skipped"
        );
        let colour = &headers["1.2.3"];
        assert_eq!(colour.samples_per_pixel, Some(3));
        assert_eq!(colour.photometric_interpretation.as_deref(), Some("RGB"));
        assert_eq!(colour.number_of_frames, Some(10));
        assert_eq!((colour.columns, colour.rows), (Some(640), Some(480)));
        assert_eq!(colour.pixel_representation, Some(0));
        let plain = &headers["1.2.4"];
        assert_eq!(plain.samples_per_pixel, None);
        assert_eq!(plain.number_of_frames, Some(2));
        // Metadata that does not parse is an internal error whose message quotes nothing.
        match pixel_headers(br#"[{"00080018": {"Value": "PATIENT NAME"}}]"#) {
            Err(DicomWebError::Internal(message)) => assert!(!message.contains("PATIENT")),
            other => panic!("{:?}", other.map(|headers| headers.len())),
        }
    }

    #[test]
    fn jpeg_by_default_png_when_preferred_nothing_else() {
        assert_eq!(
            negotiate_image(&HeaderMap::new()).ok(),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(
            negotiate_image(&accept("image/png")).ok(),
            Some(ImageFormat::Png)
        );
        assert_eq!(
            negotiate_image(&accept("image/png;q=0.5, image/jpeg")).ok(),
            Some(ImageFormat::Jpeg)
        );
        assert!(matches!(
            negotiate_image(&accept("image/gif")),
            Err(DicomWebError::NotAcceptable(_))
        ));
        assert!(matches!(
            negotiate_image(&accept("application/dicom")),
            Err(DicomWebError::NotAcceptable(_))
        ));
    }

    #[test]
    fn parameters_out_of_range_repeated_or_unknown_are_refused() {
        let format = ImageFormat::Jpeg;
        let good = render_options(&pairs(&[("quality", "40"), ("viewport", "64,32")]), format)
            .expect("valid");
        assert_eq!(good.quality, 40);
        assert_eq!(
            good.viewport,
            Some(Viewport {
                width: 64,
                height: 32
            })
        );
        for hostile in [
            vec![("quality", "0")],
            vec![("quality", "101")],
            vec![("quality", "-1")],
            vec![("quality", "99999999999999999999")],
            vec![("quality", "50"), ("quality", "60")],
            vec![("viewport", "0,10")],
            vec![("viewport", "10")],
            vec![("viewport", "100000,100000")],
            vec![("viewport", "10,10,0,0,5,5")],
            vec![("window", "40,400,LINEAR")],
            vec![("annotation", "patient")],
        ] {
            assert!(
                matches!(
                    render_options(&pairs(&hostile), format),
                    Err(DicomWebError::BadRequest(_))
                ),
                "{hostile:?}"
            );
        }
    }
}
