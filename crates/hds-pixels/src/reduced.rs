//! Rendering a JPEG 2000 frame for a small viewport from a reduced resolution: the wavelet's
//! lower levels hold the image at 1/2, 1/4... of its size, and OpenJPEG decodes only those, so
//! a thumbnail of a 1024x1024 frame decodes a fraction of the codestream. Greyscale frames, and
//! 8-bit colour frames whose codestream OpenJPEG returns as RGB (RGB, or YBR_RCT / YBR_ICT,
//! whose colour transform OpenJPEG inverts), take this path; anything else, or a codestream
//! with fewer levels than asked, falls back to the full decode.

use dicom_dictionary_std::tags;
use dicom_encoding::adapters::PixelDataObject;
use dicom_object::DefaultDicomObject;
use image::{DynamicImage, RgbImage};

use crate::Viewport;
use crate::grey::grey_from_values;
use crate::transcode::JPEG_2000_FAMILY;

/// The most resolution levels dropped: OpenJPEG's default codestreams have 5.
const MAX_REDUCTION: u32 = 5;

/// How many resolution levels can be dropped while the image still covers what `viewport`
/// shows of a `columns` x `rows` frame (the fitted size, keeping the aspect ratio).
fn reduction(columns: u32, rows: u32, viewport: Viewport) -> u32 {
    let scale = (f64::from(viewport.width) / f64::from(columns))
        .min(f64::from(viewport.height) / f64::from(rows));
    let mut levels = 0;
    while levels < MAX_REDUCTION && scale * f64::from(1u32 << (levels + 1)) <= 1.0 {
        levels += 1;
    }
    levels
}

/// How a frame's decoded components become an image.
enum Kind {
    /// One component through the grey display pipeline; MONOCHROME1 inverted.
    Grey { invert: bool },
    /// Three 8-bit components, R, G and B once OpenJPEG has decoded them.
    Rgb,
}

/// Frame `index` (from 0) of `object` decoded at the lowest resolution that still fills
/// `viewport`, as an image: greyscale through the grey display pipeline, colour as RGB; `None`
/// when this path does not apply (not JPEG 2000, another colour model or depth, no reduction
/// possible, or the decoder declines).
pub(crate) fn render_reduced(
    object: &DefaultDicomObject,
    index: u32,
    viewport: Viewport,
) -> Option<DynamicImage> {
    let syntax = object.meta().transfer_syntax().trim_end_matches('\0');
    if !JPEG_2000_FAMILY.contains(&syntax) {
        return None;
    }
    let photometric = object.photometric_interpretation()?.trim().to_owned();
    let kind = match (object.samples_per_pixel()?, photometric.as_str()) {
        (1, "MONOCHROME1") => Kind::Grey { invert: true },
        (1, "MONOCHROME2") => Kind::Grey { invert: false },
        // What the full decode renders as these samples unchanged (dicom-rs takes OpenJPEG's
        // RGB output as is for these); other colour models (YBR_FULL...) convert there.
        (3, "RGB" | "YBR_RCT" | "YBR_ICT") if object.bits_allocated()? == 8 => Kind::Rgb,
        _ => return None,
    };
    let levels = reduction(
        u32::from(object.cols()?),
        u32::from(object.rows()?),
        viewport,
    );
    if levels == 0 {
        return None;
    }
    let codestream = object.frame_pixel_data(index)?;
    let parameters = jpeg2k::DecodeParameters::new().reduce(levels);
    let decoded = jpeg2k::Image::from_bytes_with(&codestream, parameters).ok()?;
    match kind {
        Kind::Grey { invert } => grey(object, &decoded, invert),
        Kind::Rgb => rgb(&decoded),
    }
}

fn grey(
    object: &DefaultDicomObject,
    decoded: &jpeg2k::Image,
    invert: bool,
) -> Option<DynamicImage> {
    let component = decoded.components().first()?;
    let number = |tag| {
        object
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|element| element.to_float64().ok())
    };
    let slope = number(tags::RESCALE_SLOPE).unwrap_or(1.0);
    let intercept = number(tags::RESCALE_INTERCEPT).unwrap_or(0.0);
    let values: Vec<f64> = component
        .data()
        .iter()
        .map(|raw| f64::from(*raw) * slope + intercept)
        .collect();
    grey_from_values(
        object,
        &values,
        component.width(),
        component.height(),
        invert,
    )
    .ok()
}

/// Three components of 8 bits at the same (reduced) size, interleaved as RGB; `None` for
/// subsampled or deeper components, which the full decode handles.
fn rgb(decoded: &jpeg2k::Image) -> Option<DynamicImage> {
    let components = decoded.components();
    let [red, green, blue] = components else {
        return None;
    };
    let (width, height) = (red.width(), red.height());
    let same = |component: &jpeg2k::ImageComponent| {
        component.width() == width
            && component.height() == height
            && component.precision() <= 8
            && !component.is_signed()
    };
    if !(same(red) && same(green) && same(blue)) {
        return None;
    }
    let level = |value: i32| value.clamp(0, 255) as u8;
    let samples: Vec<u8> = red
        .data()
        .iter()
        .zip(green.data())
        .zip(blue.data())
        .flat_map(|((r, g), b)| [level(*r), level(*g), level(*b)])
        .collect();
    RgbImage::from_raw(width, height, samples).map(DynamicImage::ImageRgb8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_keeps_at_least_the_fitted_size() {
        let viewport = |width, height| Viewport { width, height };
        assert_eq!(reduction(1024, 1024, viewport(200, 200)), 2); // 256 >= 200
        assert_eq!(reduction(1024, 1024, viewport(256, 256)), 2);
        assert_eq!(reduction(1024, 1024, viewport(257, 257)), 1);
        assert_eq!(reduction(1024, 512, viewport(100, 500)), 3); // fits by width: 1/10
        assert_eq!(reduction(64, 64, viewport(64, 64)), 0);
        assert_eq!(reduction(4096, 4096, viewport(1, 1)), MAX_REDUCTION);
    }
}
