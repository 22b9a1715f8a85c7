//! Pixel data services: one frame of a stored instance rendered as a JPEG or PNG image, for
//! DICOMweb's rendered and thumbnail resources (PS3.18 §8.3.5 and §9.5), and an instance or its
//! frames transcoded to the transfer syntax a WADO-RS client asks for (Explicit VR Little
//! Endian, JPEG Baseline, JPEG 2000; [`transcode()`]).
//!
//! Rendering follows the instance's own display pipeline, as a viewer would show it: the
//! modality LUT (RescaleSlope/RescaleIntercept), then the first window the instance stores
//! (WindowCenter/WindowWidth, linear; min-max normalization when it stores none; a VOI LUT
//! table is not applied), MONOCHROME1 inverted, colour (RGB, YBR, palette) converted to RGB. Decoding is dicom-rs's
//! (`dicom-pixeldata`: native, RLE, JPEG baseline and lossless, JPEG-LS by CharLS, JPEG 2000
//! and HTJ2K by OpenJPEG), except JPEG Extended, whose 12-bit samples libjpeg-turbo decodes
//! ([`jpeg_extended`]); grey levels through a table of one level per stored value
//! ([`grey`]); viewports scaled by `fast_image_resize`; JPEG encoded by libjpeg-turbo
//! ([`rendered_jpeg`]), PNG by the `image` crate. Nothing here writes to disk: the decrypted instance and its pixels stay in
//! memory, bounded by [`MAX_DECODED_BYTES`].
//!
//! The work is CPU-bound and synchronous: callers run it off their async workers, with a limit
//! on how many run at once.
#![deny(missing_docs)]

use std::io::Cursor;

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{
    ConvertOptions, DecodedPixelData, PhotometricInterpretation, PixelDecoder, VoiLutOption,
};
use fast_image_resize as resize;
use grey::grey_from_values;
use image::{DynamicImage, GrayImage, RgbImage};

mod codestream;
mod grey;
mod jpeg2000;
mod jpeg_extended;
mod reduced;
mod rendered_jpeg;
mod transcode;

pub use jpeg_extended::JPEG_EXTENDED;
pub use transcode::{
    EXPLICIT_VR_LITTLE_ENDIAN, HTJ2K, HTJ2K_LOSSLESS, HTJ2K_RPCL_LOSSLESS, JPEG_2000,
    JPEG_2000_LOSSLESS, JPEG_BASELINE, JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS, PixelHeader,
    TRANSCODABLE_SOURCES, TRANSCODING_TARGETS, TargetSyntax, check_transcodable, native_frames,
    transcode, transcode_frames, transcode_to_explicit_little_endian,
};

/// The most bytes one render may decode pixel data into: a frame, or every frame of an
/// instance whose codec cannot decode one frame alone. A hostile or huge instance is refused
/// before anything is decoded.
pub const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// The largest viewport side, in pixels.
pub const MAX_VIEWPORT_SIDE: u32 = 8192;

/// The largest image side the renderer produces without a viewport, in pixels: what a decoded
/// frame can have within [`MAX_DECODED_BYTES`] anyway, stated for encoders.
const MAX_IMAGE_SIDE: u32 = 65_535;

/// The side of a thumbnail's square viewport when the caller names none.
pub const THUMBNAIL_SIDE: u32 = 200;

/// The image format of a rendered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// `image/jpeg` (baseline, 8 bits per sample).
    Jpeg,
    /// `image/png` (lossless).
    Png,
}

impl ImageFormat {
    /// The media type of images in this format.
    pub fn media_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
        }
    }
}

/// The size a rendered image must fit in, keeping its aspect ratio (PS3.18 `viewport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewport {
    /// Width in pixels, 1 to [`MAX_VIEWPORT_SIDE`].
    pub width: u32,
    /// Height in pixels, 1 to [`MAX_VIEWPORT_SIDE`].
    pub height: u32,
}

/// How to render a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOptions {
    /// The image format.
    pub format: ImageFormat,
    /// JPEG quality, 1 to 100 (PNG ignores it).
    pub quality: u8,
    /// Scale the image down (or up) to fit this size.
    pub viewport: Option<Viewport>,
}

impl Default for RenderOptions {
    fn default() -> RenderOptions {
        RenderOptions {
            format: ImageFormat::Jpeg,
            quality: DEFAULT_QUALITY,
            viewport: None,
        }
    }
}

/// The JPEG quality of a rendered image when the caller names none.
pub const DEFAULT_QUALITY: u8 = 90;

/// Why a frame could not be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PixelError {
    /// The stored instance did not parse (it parsed when it was stored: a damaged blob or a bug).
    #[error("the instance could not be read: {0}")]
    Unreadable(String),
    /// The instance holds no image (a structured report, a presentation state...).
    #[error("the instance has no pixel data")]
    NoPixelData,
    /// Frames are numbered from 1 to the instance's number of frames.
    #[error("frame {frame} does not exist: the instance has {frames}")]
    NoSuchFrame {
        /// The frame asked for.
        frame: u32,
        /// How many frames the instance has.
        frames: u32,
    },
    /// Decoding would take more memory than [`MAX_DECODED_BYTES`].
    #[error("decoding would take {bytes} bytes, more than the limit of {limit}")]
    TooLarge {
        /// What decoding would take.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The pixel data's encoding or layout is one the decoder does not support, or it is
    /// damaged.
    #[error("the pixel data cannot be decoded: {0}")]
    Undecodable(String),
    /// The options are out of range.
    #[error("{0}")]
    InvalidOptions(&'static str),
    /// The target transfer syntax cannot hold this pixel data (16-bit samples in JPEG
    /// Baseline, four samples per pixel...).
    #[error("{0}")]
    Unencodable(String),
    /// Encoding the image failed.
    #[error("encoding the image failed: {0}")]
    Encode(String),
}

/// Runs `work`, which decodes pixel data with the codecs hds links, turning a panic of one of
/// them on damaged data (dicom-rs's RLE decoder indexes past a short segment, for one) into
/// [`PixelError::Undecodable`]: a hostile instance is refused like any other damaged one, and
/// the worker that decodes it carries on.
pub(crate) fn guarded<T>(work: impl FnOnce() -> Result<T, PixelError>) -> Result<T, PixelError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|_| {
        Err(PixelError::Undecodable(
            "the decoder failed on damaged pixel data".into(),
        ))
    })
}

/// Renders frame `frame` (numbered from 1) of the Part-10 instance `instance` as `options` say.
pub fn render(instance: &[u8], frame: u32, options: &RenderOptions) -> Result<Vec<u8>, PixelError> {
    guarded(|| render_unguarded(instance, frame, options))
}

fn render_unguarded(
    instance: &[u8],
    frame: u32,
    options: &RenderOptions,
) -> Result<Vec<u8>, PixelError> {
    check_options(options)?;
    let object = open(instance)?;
    let frames = frame_count(&object)?;
    if frame == 0 || frame > frames {
        return Err(PixelError::NoSuchFrame { frame, frames });
    }
    codestream::check_frames(&object, Some(frame - 1))?;
    if let Some(viewport) = options.viewport
        && let Some(image) = reduced::render_reduced(&object, frame - 1, viewport)
    {
        return encode(fit_to_viewport(image, viewport)?, options);
    }
    // JPEG Extended is decoded here (its 12-bit samples are beyond dicom-rs's JPEG decoder):
    // the frame asked for becomes the object's only, native frame.
    let mut object = object;
    let mut index = frame - 1;
    if jpeg_extended::is_jpeg_extended(&object) {
        jpeg_extended::decode_to_native(&mut object, Some(index))?;
        index = 0;
    }
    let decoded = object.decode_pixel_data_frame(index).map_err(|error| {
        PixelError::Undecodable(format!(
            "{error} (transfer syntax {})",
            object.meta().transfer_syntax().trim_end_matches('\0')
        ))
    })?;
    let image = if decoded.samples_per_pixel() == 1
        && matches!(
            decoded.photometric_interpretation(),
            PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2
        ) {
        grey_image(&object, &decoded)?
    } else {
        // Colour (RGB, YBR, palette): dicom-rs converts it to RGB.
        decoded
            .to_dynamic_image_with_options(0, &ConvertOptions::new().force_8bit())
            .map_err(|error| PixelError::Undecodable(error.to_string()))?
    };
    let image = match options.viewport {
        Some(viewport) => fit_to_viewport(image, viewport)?,
        None => image,
    };
    encode(image, options)
}

/// Renders the first frame of `instance` scaled to fit `viewport` (a square of
/// [`THUMBNAIL_SIDE`] when `None`), as a thumbnail.
pub fn thumbnail(
    instance: &[u8],
    format: ImageFormat,
    quality: u8,
    viewport: Option<Viewport>,
) -> Result<Vec<u8>, PixelError> {
    let viewport = viewport.unwrap_or(Viewport {
        width: THUMBNAIL_SIDE,
        height: THUMBNAIL_SIDE,
    });
    render(
        instance,
        1,
        &RenderOptions {
            format,
            quality,
            viewport: Some(viewport),
        },
    )
}

fn check_options(options: &RenderOptions) -> Result<(), PixelError> {
    if !(1..=100).contains(&options.quality) {
        return Err(PixelError::InvalidOptions("quality must be from 1 to 100"));
    }
    if let Some(viewport) = options.viewport {
        let sides = 1..=MAX_VIEWPORT_SIDE;
        if !sides.contains(&viewport.width) || !sides.contains(&viewport.height) {
            return Err(PixelError::InvalidOptions(
                "viewport sides must be from 1 to 8192 pixels",
            ));
        }
    }
    Ok(())
}

/// Parses the whole instance, pixel data included (as stored: fragments stay encoded).
pub(crate) fn open(instance: &[u8]) -> Result<DefaultDicomObject, PixelError> {
    OpenFileOptions::new()
        .from_reader(Cursor::new(instance))
        .map_err(|error| PixelError::Unreadable(error.to_string()))
}

/// The number of frames, once one frame's decoded size is known to be within the limit.
fn frame_count(object: &DefaultDicomObject) -> Result<u32, PixelError> {
    let layout = pixel_layout(object)?;
    if layout.frame_bytes > MAX_DECODED_BYTES {
        return Err(PixelError::TooLarge {
            bytes: layout.frame_bytes,
            limit: MAX_DECODED_BYTES,
        });
    }
    Ok(layout.frames)
}

/// What decoding an instance's pixel data takes, from its header.
pub(crate) struct PixelLayout {
    pub(crate) frames: u32,
    /// One frame decoded into native samples and converted to 8-bit samples (RGB at most).
    pub(crate) frame_bytes: u64,
    /// Every frame in native samples.
    pub(crate) native_bytes: u64,
}

pub(crate) fn pixel_layout(object: &DefaultDicomObject) -> Result<PixelLayout, PixelError> {
    if object
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .is_none()
    {
        return Err(PixelError::NoPixelData);
    }
    let number = |tag| -> Result<u64, PixelError> {
        let element = object
            .element_opt(tag)
            .map_err(|error| PixelError::Undecodable(error.to_string()))?
            .ok_or(PixelError::Undecodable(format!("{tag} is missing")))?;
        element
            .to_int::<u64>()
            .map_err(|error| PixelError::Undecodable(format!("{tag}: {error}")))
    };
    let rows = number(tags::ROWS)?;
    let columns = number(tags::COLUMNS)?;
    let samples = number(tags::SAMPLES_PER_PIXEL)?;
    let bits = number(tags::BITS_ALLOCATED)?;
    let frames = match object.element_opt(tags::NUMBER_OF_FRAMES).ok().flatten() {
        Some(element) => element
            .to_int::<u64>()
            .map_err(|error| PixelError::Undecodable(format!("NumberOfFrames: {error}")))?,
        None => 1,
    }
    .max(1);
    if rows > u64::from(MAX_IMAGE_SIDE) || columns > u64::from(MAX_IMAGE_SIDE) {
        return Err(PixelError::Undecodable(format!(
            "{columns}x{rows} pixels: sides over {MAX_IMAGE_SIDE} are not rendered"
        )));
    }
    let native_frame = rows * columns * samples.max(1) * bits.div_ceil(8).max(1);
    Ok(PixelLayout {
        frames: u32::try_from(frames)
            .map_err(|_| PixelError::Undecodable("NumberOfFrames is too large".into()))?,
        frame_bytes: native_frame + rows * columns * samples.max(3),
        native_bytes: native_frame.saturating_mul(frames),
    })
}

/// A grey frame through the display pipeline ([`grey`]): through a table of display levels
/// when its samples are integers of at most 16 bits, else value by value from dicom-rs's
/// rescaled values. Done here rather than by dicom-rs's image conversion, which renders signed
/// samples without a window black.
fn grey_image(
    object: &DefaultDicomObject,
    decoded: &DecodedPixelData<'_>,
) -> Result<DynamicImage, PixelError> {
    let invert = *decoded.photometric_interpretation() == PhotometricInterpretation::Monochrome1;
    if let Some(image) = grey::grey_from_samples(object, decoded, invert)? {
        return Ok(image);
    }
    let values: Vec<f64> = decoded
        .to_vec_frame_with_options(
            0,
            &ConvertOptions::new().with_voi_lut(VoiLutOption::Identity),
        )
        .map_err(|error| PixelError::Undecodable(error.to_string()))?;
    grey_from_values(object, &values, decoded.columns(), decoded.rows(), invert)
}

/// `image` scaled to the largest size that fits `viewport` with its aspect ratio kept (what
/// `DynamicImage::resize` picks), by a bilinear convolution (which widens its support when it
/// shrinks, so every source pixel counts). `fast_image_resize`'s SIMD code, not the `image`
/// crate's resize, which cost as much as the rest of a small render.
fn fit_to_viewport(image: DynamicImage, viewport: Viewport) -> Result<DynamicImage, PixelError> {
    let (width, height) = (image.width(), image.height());
    let ratio = (f64::from(viewport.width) / f64::from(width))
        .min(f64::from(viewport.height) / f64::from(height));
    let side = |side: u32| ((f64::from(side) * ratio).round() as u32).max(1);
    let (fitted_width, fitted_height) = (side(width), side(height));
    if (fitted_width, fitted_height) == (width, height) {
        return Ok(image);
    }
    let (pixel_type, samples) = match image {
        DynamicImage::ImageLuma8(grey) => (resize::PixelType::U8, grey.into_raw()),
        DynamicImage::ImageLuma16(_) => (resize::PixelType::U8, image.to_luma8().into_raw()),
        other => (resize::PixelType::U8x3, other.to_rgb8().into_raw()),
    };
    let failed = |error: &dyn std::fmt::Display| PixelError::Encode(format!("scaling: {error}"));
    let source = resize::images::Image::from_vec_u8(width, height, samples, pixel_type)
        .map_err(|error| failed(&error))?;
    let mut fitted = resize::images::Image::new(fitted_width, fitted_height, pixel_type);
    resize::Resizer::new()
        .resize(
            &source,
            &mut fitted,
            &resize::ResizeOptions::new()
                .resize_alg(resize::ResizeAlg::Convolution(resize::FilterType::Bilinear)),
        )
        .map_err(|error| failed(&error))?;
    let samples = fitted.into_vec();
    let image = match pixel_type {
        resize::PixelType::U8 => {
            GrayImage::from_raw(fitted_width, fitted_height, samples).map(DynamicImage::ImageLuma8)
        }
        _ => RgbImage::from_raw(fitted_width, fitted_height, samples).map(DynamicImage::ImageRgb8),
    };
    image.ok_or_else(|| PixelError::Encode("scaling: the image's size changed".into()))
}

fn encode(image: DynamicImage, options: &RenderOptions) -> Result<Vec<u8>, PixelError> {
    // JPEG and PNG both take 8-bit grey or RGB; anything else (grey with alpha...) becomes RGB.
    let image = match image {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => image,
        DynamicImage::ImageLuma16(_) => DynamicImage::ImageLuma8(image.to_luma8()),
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    };
    let mut out = Vec::new();
    match options.format {
        ImageFormat::Jpeg => encode_jpeg(&image, options.quality, &mut out)?,
        ImageFormat::Png => {
            let encoder = image::codecs::png::PngEncoder::new(&mut out);
            image
                .write_with_encoder(encoder)
                .map_err(|error| PixelError::Encode(error.to_string()))?;
        }
    }
    Ok(out)
}

/// JPEG by libjpeg-turbo ([`rendered_jpeg`]).
fn encode_jpeg(image: &DynamicImage, quality: u8, out: &mut Vec<u8>) -> Result<(), PixelError> {
    let samples = match image {
        DynamicImage::ImageLuma8(grey) => rendered_jpeg::Samples::Grey(grey.as_raw()),
        DynamicImage::ImageRgb8(rgb) => rendered_jpeg::Samples::Rgb(rgb.as_raw()),
        _ => return Err(PixelError::Encode("JPEG takes 8-bit grey or RGB".into())),
    };
    rendered_jpeg::encode(samples, image.width(), image.height(), quality, out)
}
