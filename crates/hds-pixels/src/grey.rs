//! A grey frame's display pipeline: modality LUT (rescale), then the first stored window with
//! the linear VOI function of PS3.3 C.11.2.1.2.1, or a min-max normalization when no usable
//! window is stored; MONOCHROME1 inverted; 8-bit display levels.
//!
//! Integer samples of at most 16 stored bits go through a table with one display level per
//! possible stored value (at most 65,536), built once per frame: a sample then costs one
//! lookup, where computing its level would cost floating-point arithmetic and a rounding. The
//! table holds exactly what the computation gives: [`display_level`] fills it. Other samples
//! (more than 16 bits, floating point) and reduced-resolution decodes take the computation
//! itself, [`grey_from_values`].

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{DecodedPixelData, PixelRepresentation};
use image::{DynamicImage, GrayImage};

use crate::PixelError;

/// The most bits stored for which levels are read from a table (its size is 2^bits).
const MAX_TABLE_BITS: u16 = 16;

/// How modality values map to display levels before inversion.
#[derive(Debug, Clone, Copy)]
enum Levels {
    /// The linear VOI function of a stored window.
    Window { center: f64, width: f64 },
    /// The frame's lowest value black, its highest white.
    Range { lowest: f64, range: f64 },
}

impl Levels {
    /// The first stored window, or else the range of the frame's values, which `range` gives
    /// (called only then: a windowed frame needs no pass over its values).
    fn of(object: &DefaultDicomObject, range: impl FnOnce() -> (f64, f64)) -> Levels {
        match stored_window(object) {
            Some((center, width)) => Levels::Window { center, width },
            None => {
                let (lowest, highest) = range();
                Levels::Range {
                    lowest,
                    range: (highest - lowest).max(f64::EPSILON),
                }
            }
        }
    }
}

/// The lowest and highest of `values`.
fn lowest_and_highest(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), value| {
        (low.min(value), high.max(value))
    })
}

/// The 8-bit display level of a modality value.
fn display_level(value: f64, levels: Levels, invert: bool) -> u8 {
    let level = match levels {
        Levels::Window { center, width } => {
            let low = center - 0.5 - (width - 1.0) / 2.0;
            let high = center - 0.5 + (width - 1.0) / 2.0;
            if value <= low {
                0.0
            } else if value > high {
                255.0
            } else {
                ((value - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
            }
        }
        Levels::Range { lowest, range } => (value - lowest) / range * 255.0,
    };
    let level = level.clamp(0.0, 255.0);
    let level = if invert { 255.0 - level } else { level };
    level.round() as u8
}

/// Modality values (rescaled) to display levels, computed one by one.
pub(crate) fn grey_from_values(
    object: &DefaultDicomObject,
    values: &[f64],
    columns: u32,
    rows: u32,
    invert: bool,
) -> Result<DynamicImage, PixelError> {
    let levels = Levels::of(object, || lowest_and_highest(values.iter().copied()));
    let grey = values
        .iter()
        .map(|value| display_level(*value, levels, invert))
        .collect();
    grey_image(columns, rows, grey)
}

/// Frame 0 of `decoded` (one grey sample per pixel) to display levels through a table, or
/// `None` when its samples are not integers of at most 16 stored bits.
///
/// The stored values are read as dicom-rs's modality LUT reads them: the low `BitsStored` bits
/// (all 8 of an 8-bit sample), sign-extended when PixelRepresentation is signed, then
/// `slope * value + intercept` with the frame's rescale.
pub(crate) fn grey_from_samples(
    object: &DefaultDicomObject,
    decoded: &DecodedPixelData<'_>,
    invert: bool,
) -> Result<Option<DynamicImage>, PixelError> {
    let bits = match (decoded.bits_allocated(), decoded.bits_stored()) {
        (8, _) => 8,
        (16, bits @ 1..=MAX_TABLE_BITS) => bits,
        _ => return Ok(None),
    };
    let data = decoded
        .frame_data(0)
        .map_err(|error| PixelError::Undecodable(error.to_string()))?;
    let rescale = decoded
        .rescale()
        .map_err(|error| PixelError::Undecodable(error.to_string()))?
        .first()
        .copied()
        .unwrap_or(dicom_pixeldata::Rescale::new(1.0, 0.0));
    let signed = decoded.pixel_representation() == PixelRepresentation::Signed;
    let size = 1_usize << bits;
    let mask = size - 1;
    let eight_bit = decoded.bits_allocated() == 8;
    let modality_value = |index: usize| {
        let stored = if signed && index >= size / 2 {
            index as f64 - size as f64
        } else {
            index as f64
        };
        rescale.slope * stored + rescale.intercept
    };
    let levels = Levels::of(object, || {
        // The range of the values the frame holds: each stored value seen once.
        let mut seen = vec![false; size];
        for_each_index(data, eight_bit, mask, |index| seen[index] = true);
        lowest_and_highest(
            seen.iter()
                .enumerate()
                .filter(|(_, seen)| **seen)
                .map(|(index, _)| modality_value(index)),
        )
    });
    let table: Vec<u8> = (0..size)
        .map(|index| display_level(modality_value(index), levels, invert))
        .collect();
    let mut grey = Vec::with_capacity(data.len() / if eight_bit { 1 } else { 2 });
    for_each_index(data, eight_bit, mask, |index| grey.push(table[index]));
    grey_image(decoded.columns(), decoded.rows(), grey).map(Some)
}

/// Calls `each` with the table index of every sample of `data` (8-bit samples, or 16-bit
/// little-endian ones), in order.
fn for_each_index(data: &[u8], eight_bit: bool, mask: usize, mut each: impl FnMut(usize)) {
    if eight_bit {
        for sample in data {
            each(usize::from(*sample) & mask);
        }
    } else {
        for pair in data.chunks_exact(2) {
            each(usize::from(u16::from_le_bytes([pair[0], pair[1]])) & mask);
        }
    }
}

fn grey_image(columns: u32, rows: u32, grey: Vec<u8>) -> Result<DynamicImage, PixelError> {
    GrayImage::from_raw(columns, rows, grey)
        .map(DynamicImage::ImageLuma8)
        .ok_or_else(|| {
            PixelError::Undecodable("the frame's size does not match its samples".into())
        })
}

/// The first WindowCenter and WindowWidth, when both are stored and the width is at least 1.
fn stored_window(object: &DefaultDicomObject) -> Option<(f64, f64)> {
    let first = |tag| {
        object
            .element_opt(tag)
            .ok()
            .flatten()?
            .to_multi_float64()
            .ok()?
            .first()
            .copied()
    };
    let center = first(tags::WINDOW_CENTER)?;
    let width = first(tags::WINDOW_WIDTH)?;
    (width >= 1.0 && center.is_finite() && width.is_finite()).then_some((center, width))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use dicom_pixeldata::{ConvertOptions, PixelDecoder, VoiLutOption};

    use super::*;

    /// Grey files of pydicom's test data (`HDS_PYDICOM_TESTDATA`) that cover the table's
    /// cases: 8 and 16 bits allocated; 12, 13, 14 and 16 bits stored; signed and unsigned; a
    /// stored window and none; overlay bits above BitsStored; several codecs.
    const FILES: &[&str] = &[
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "693_J2KI.dcm",
        "J2K_pixelrep_mismatch.dcm",
        "JPGExtended.dcm",
        "JPEGLSNearLossless_08.dcm",
        "JPEGLSNearLossless_16.dcm",
        "examples_overlay.dcm",
    ];

    #[test]
    fn the_table_gives_every_sample_the_level_its_value_computes_to() {
        let directory = std::env::var("HDS_PYDICOM_TESTDATA").expect(
            "HDS_PYDICOM_TESTDATA names pydicom's test_files directory (scripts/test sets it)",
        );
        for name in FILES {
            let bytes = std::fs::read(PathBuf::from(&directory).join(name)).expect("test file");
            let mut object = crate::open(&bytes).expect("open");
            if crate::jpeg_extended::is_jpeg_extended(&object) {
                crate::jpeg_extended::decode_to_native(&mut object, Some(0)).expect("decode");
            }
            let decoded = object.decode_pixel_data_frame(0).expect("decode");
            let values: Vec<f64> = decoded
                .to_vec_frame_with_options(
                    0,
                    &ConvertOptions::new().with_voi_lut(VoiLutOption::Identity),
                )
                .expect("values");
            for invert in [false, true] {
                let computed =
                    grey_from_values(&object, &values, decoded.columns(), decoded.rows(), invert)
                        .expect("computed");
                let looked_up = grey_from_samples(&object, &decoded, invert)
                    .expect("looked up")
                    .unwrap_or_else(|| panic!("{name}: no table"));
                assert!(
                    computed.as_bytes() == looked_up.as_bytes(),
                    "{name} (inverted: {invert}): the table's levels differ"
                );
            }
        }
    }

    #[test]
    fn samples_over_16_bits_are_left_to_the_computation() {
        let directory = std::env::var("HDS_PYDICOM_TESTDATA").expect("HDS_PYDICOM_TESTDATA");
        let bytes =
            std::fs::read(PathBuf::from(&directory).join("rtdose_1frame.dcm")).expect("test file");
        let object = crate::open(&bytes).expect("open");
        let decoded = object.decode_pixel_data_frame(0).expect("decode");
        assert!(
            grey_from_samples(&object, &decoded, false)
                .expect("no error")
                .is_none()
        );
    }
}
