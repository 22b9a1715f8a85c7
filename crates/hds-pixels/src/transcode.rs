//! Transcoding a stored instance, or some of its frames, to the transfer syntax a WADO-RS client
//! asks for: Explicit VR Little Endian (native samples), JPEG Baseline (8-bit samples only) or
//! JPEG 2000 (encoded losslessly, under either of its two transfer syntaxes).
//!
//! Every path first decodes the pixel data to native samples with dicom-rs (the same decoders
//! as rendering), within [`MAX_DECODED_BYTES`](crate::MAX_DECODED_BYTES) for all frames; an
//! encapsulated target then encodes frame by frame: JPEG by the `jpeg-encoder` crate (the
//! encoder dicom-rs itself uses), JPEG 2000 by OpenJPEG ([`crate::jpeg2000`]). Data that a
//! target cannot hold (16-bit samples in JPEG Baseline, four samples per pixel...) is refused
//! with [`PixelError::Unencodable`] before anything is encoded. Nothing is written to disk.

use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, Length, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_transfer_syntax_registry::entries;

use crate::jpeg_extended::{self, JPEG_EXTENDED};
use crate::jpeg2000::{self, FrameSamples};
use crate::{MAX_DECODED_BYTES, PixelError, guarded, open, pixel_layout};

/// Explicit VR Little Endian, the transfer syntax DICOMweb returns when none is asked for.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// JPEG Baseline (Process 1): lossy, 8-bit samples.
pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
/// JPEG 2000 Image Compression (Lossless Only).
pub const JPEG_2000_LOSSLESS: &str = "1.2.840.10008.1.2.4.90";
/// JPEG 2000 Image Compression (lossless or lossy; hds encodes it losslessly).
pub const JPEG_2000: &str = "1.2.840.10008.1.2.4.91";

/// The stored transfer syntaxes whose pixel data hds decodes, and so transcodes from: the other
/// native ones, RLE, JPEG baseline and lossless, JPEG-LS (lossless and near-lossless, by
/// CharLS through dicom-rs's `charls` feature), JPEG 2000, and High-Throughput JPEG 2000 (HTJ2K:
/// dicom-rs registers its three syntaxes with its JPEG 2000 adapter, and the OpenJPEG it
/// builds, 2.5, decodes HT code-blocks), and JPEG Extended (8- and 12-bit samples, by
/// libjpeg-turbo: [`crate::jpeg_extended`]).
pub const TRANSCODABLE_SOURCES: [&str; 14] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    JPEG_EXTENDED,
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    HTJ2K_LOSSLESS,
    HTJ2K_RPCL_LOSSLESS,
    HTJ2K,
];

/// JPEG-LS Lossless Image Compression.
pub const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
/// JPEG-LS Lossy (Near-Lossless) Image Compression.
pub const JPEG_LS_NEAR_LOSSLESS: &str = "1.2.840.10008.1.2.4.81";

/// High-Throughput JPEG 2000 Image Compression (Lossless Only).
pub const HTJ2K_LOSSLESS: &str = "1.2.840.10008.1.2.4.201";
/// High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only).
pub const HTJ2K_RPCL_LOSSLESS: &str = "1.2.840.10008.1.2.4.202";
/// High-Throughput JPEG 2000 Image Compression (lossless or lossy).
pub const HTJ2K: &str = "1.2.840.10008.1.2.4.203";

/// The stored syntaxes whose frames are JPEG 2000 codestreams (Part 1 or HTJ2K's Part 15),
/// which OpenJPEG decodes, at a reduced resolution too.
pub(crate) const JPEG_2000_FAMILY: [&str; 5] = [
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    HTJ2K_LOSSLESS,
    HTJ2K_RPCL_LOSSLESS,
    HTJ2K,
];

/// The transfer syntaxes hds transcodes to, by UID.
pub const TRANSCODING_TARGETS: [&str; 4] = [
    EXPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
];

/// The JPEG quality of transcoded JPEG Baseline frames: the same default as rendered images.
const JPEG_QUALITY: u8 = crate::DEFAULT_QUALITY;

/// A transfer syntax hds transcodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSyntax {
    /// Native samples, little endian.
    ExplicitVrLittleEndian,
    /// JPEG Baseline, 8-bit samples, lossy.
    JpegBaseline,
    /// JPEG 2000, lossless.
    Jpeg2000Lossless,
    /// JPEG 2000 under the syntax that also allows lossy encoding; encoded losslessly.
    Jpeg2000,
}

impl TargetSyntax {
    /// The target named by `uid`, if hds transcodes to it.
    pub fn from_uid(uid: &str) -> Option<TargetSyntax> {
        match uid {
            EXPLICIT_VR_LITTLE_ENDIAN => Some(TargetSyntax::ExplicitVrLittleEndian),
            JPEG_BASELINE => Some(TargetSyntax::JpegBaseline),
            JPEG_2000_LOSSLESS => Some(TargetSyntax::Jpeg2000Lossless),
            JPEG_2000 => Some(TargetSyntax::Jpeg2000),
            _ => None,
        }
    }

    /// The transfer syntax UID.
    pub fn uid(self) -> &'static str {
        match self {
            TargetSyntax::ExplicitVrLittleEndian => EXPLICIT_VR_LITTLE_ENDIAN,
            TargetSyntax::JpegBaseline => JPEG_BASELINE,
            TargetSyntax::Jpeg2000Lossless => JPEG_2000_LOSSLESS,
            TargetSyntax::Jpeg2000 => JPEG_2000,
        }
    }

    fn encapsulated(self) -> bool {
        self != TargetSyntax::ExplicitVrLittleEndian
    }
}

/// The Part-10 instance `instance` re-encoded in `target`: its pixel data decoded to native
/// samples (every frame: the whole decoded size must be within
/// [`MAX_DECODED_BYTES`](crate::MAX_DECODED_BYTES)), then, for an encapsulated target, each
/// frame encoded. Attributes other than the transfer syntax and those describing the pixel
/// data's encoding are kept as they are.
pub fn transcode(instance: &[u8], target: TargetSyntax) -> Result<Vec<u8>, PixelError> {
    guarded(|| transcode_unguarded(instance, target))
}

fn transcode_unguarded(instance: &[u8], target: TargetSyntax) -> Result<Vec<u8>, PixelError> {
    let mut object = decode_to_native(instance, target)?;
    if target.encapsulated() && has_pixel_data(&object) {
        let native = NativeFrames::of(&object)?;
        let frame_indexes: Vec<usize> = (0..native.count).collect();
        let encoded = native.encode(target, &frame_indexes)?;
        encapsulate(&mut object, target, encoded)?;
    }
    let syntax = TransferSyntaxRegistry
        .get(target.uid())
        .ok_or_else(|| PixelError::Encode(format!("transfer syntax {} unknown", target.uid())))?;
    object.update_meta(|meta| meta.set_transfer_syntax(syntax));
    let mut out = Vec::with_capacity(instance.len());
    object
        .write_all(&mut out)
        .map_err(|error| PixelError::Encode(error.to_string()))?;
    Ok(out)
}

/// The Part-10 instance `instance` re-encoded in Explicit VR Little Endian (see [`transcode`]).
pub fn transcode_to_explicit_little_endian(instance: &[u8]) -> Result<Vec<u8>, PixelError> {
    transcode(instance, TargetSyntax::ExplicitVrLittleEndian)
}

/// Frames `frames` (numbered from 1) of the Part-10 instance `instance` in `target`: native
/// samples in little-endian order for Explicit VR Little Endian (how the frames resource
/// returns them), one JPEG or JPEG 2000 codestream per frame otherwise. The instance is decoded
/// whole first (every frame must fit within [`MAX_DECODED_BYTES`](crate::MAX_DECODED_BYTES));
/// only the frames asked for are encoded.
pub fn transcode_frames(
    instance: &[u8],
    target: TargetSyntax,
    frames: &[usize],
) -> Result<Vec<Vec<u8>>, PixelError> {
    guarded(|| transcode_frames_unguarded(instance, target, frames))
}

fn transcode_frames_unguarded(
    instance: &[u8],
    target: TargetSyntax,
    frames: &[usize],
) -> Result<Vec<Vec<u8>>, PixelError> {
    let object = decode_to_native(instance, target)?;
    let native = NativeFrames::of(&object)?;
    let mut indexes = Vec::with_capacity(frames.len());
    for &frame in frames {
        if frame == 0 || frame > native.count {
            return Err(PixelError::NoSuchFrame {
                frame: u32::try_from(frame).unwrap_or(u32::MAX),
                frames: u32::try_from(native.count).unwrap_or(u32::MAX),
            });
        }
        indexes.push(frame - 1);
    }
    if target.encapsulated() {
        return native.encode(target, &indexes);
    }
    Ok(indexes
        .iter()
        .map(|&index| native.frame(index).to_vec())
        .collect())
}

/// Frames `frames` as native little-endian samples (see [`transcode_frames`]).
pub fn native_frames(instance: &[u8], frames: &[usize]) -> Result<Vec<Vec<u8>>, PixelError> {
    transcode_frames(instance, TargetSyntax::ExplicitVrLittleEndian, frames)
}

fn has_pixel_data(object: &DefaultDicomObject) -> bool {
    object
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .is_some()
}

/// Opens the instance and decodes its pixel data to native samples in Explicit VR Little
/// Endian, within the decoded-size limit. For an encapsulated target, colour samples stored
/// plane by plane are interleaved (PlanarConfiguration 0), as the encoders take them.
fn decode_to_native(
    instance: &[u8],
    target: TargetSyntax,
) -> Result<DefaultDicomObject, PixelError> {
    let mut object = open(instance)?;
    match pixel_layout(&object) {
        Ok(layout) if layout.native_bytes > MAX_DECODED_BYTES => {
            return Err(PixelError::TooLarge {
                bytes: layout.native_bytes,
                limit: MAX_DECODED_BYTES,
            });
        }
        // Without pixel data only the data set's encoding changes.
        Ok(_) | Err(PixelError::NoPixelData) => {}
        Err(other) => return Err(other),
    }
    let source = object
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_owned();
    crate::codestream::check_frames(&object, None)?;
    if jpeg_extended::is_jpeg_extended(&object) {
        jpeg_extended::decode_to_native(&mut object, None)?;
    }
    object
        .transcode(&entries::EXPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|error| PixelError::Undecodable(format!("{error} (transfer syntax {source})")))?;
    if target.encapsulated() && has_pixel_data(&object) {
        interleave_planes(&mut object)?;
    }
    Ok(object)
}

fn number(object: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<u32> {
    object.element_opt(tag).ok().flatten()?.to_int::<u32>().ok()
}

/// The value of a numeric attribute a decoder needs; its absence makes the instance
/// undecodable, named by `name`.
pub(crate) fn required_number(
    object: &DefaultDicomObject,
    tag: dicom_core::Tag,
    name: &str,
) -> Result<u32, PixelError> {
    number(object, tag).ok_or_else(|| PixelError::Undecodable(format!("{name} is missing")))
}

fn text(object: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    object
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|element| element.to_str().ok())
        .map(|value| value.trim().to_owned())
        .unwrap_or_default()
}

/// Rewrites colour pixel data stored plane by plane (PlanarConfiguration 1) as interleaved.
fn interleave_planes(object: &mut DefaultDicomObject) -> Result<(), PixelError> {
    if number(object, tags::SAMPLES_PER_PIXEL) != Some(3)
        || number(object, tags::PLANAR_CONFIGURATION) != Some(1)
    {
        return Ok(());
    }
    let native = NativeFrames::of(object)?;
    let pixels = native.columns as usize * native.rows as usize;
    let sample = native.bytes_per_sample;
    let mut interleaved = Vec::with_capacity(native.bytes.len());
    for index in 0..native.count {
        let frame = native.frame(index);
        for pixel in 0..pixels {
            for plane in 0..3 {
                let at = (plane * pixels + pixel) * sample;
                interleaved.extend_from_slice(&frame[at..at + sample]);
            }
        }
    }
    put_native_pixel_data(object, interleaved, sample)?;
    object.put(DataElement::new(
        tags::PLANAR_CONFIGURATION,
        VR::US,
        PrimitiveValue::from(0_u16),
    ));
    Ok(())
}

/// Replaces the pixel data of `object` with native samples `bytes` of `bytes_per_sample` bytes
/// each (OB for one, OW otherwise).
pub(crate) fn put_native_pixel_data(
    object: &mut DefaultDicomObject,
    bytes: Vec<u8>,
    bytes_per_sample: usize,
) -> Result<(), PixelError> {
    let length = u32::try_from(bytes.len())
        .map_err(|_| PixelError::Undecodable("pixel data over 4 GiB".into()))?;
    let vr = if bytes_per_sample == 1 {
        VR::OB
    } else {
        VR::OW
    };
    object.put(DataElement::new_with_len(
        tags::PIXEL_DATA,
        vr,
        Length::defined(length),
        PrimitiveValue::from(bytes),
    ));
    Ok(())
}

/// The native pixel data of an instance in Explicit VR Little Endian, cut into frames.
struct NativeFrames {
    bytes: Vec<u8>,
    count: usize,
    frame_len: usize,
    columns: u32,
    rows: u32,
    samples_per_pixel: u32,
    bits_allocated: u32,
    bits_stored: u32,
    bytes_per_sample: usize,
    signed: bool,
    photometric: String,
}

impl NativeFrames {
    fn of(object: &DefaultDicomObject) -> Result<NativeFrames, PixelError> {
        let layout = pixel_layout(object)?;
        let bytes = object
            .element(tags::PIXEL_DATA)
            .map_err(|_| PixelError::NoPixelData)?
            .to_bytes()
            .map_err(|error| PixelError::Undecodable(error.to_string()))?
            .into_owned();
        let count = usize::try_from(layout.frames.max(1))
            .map_err(|_| PixelError::Undecodable("too many frames".into()))?;
        let missing = |name: &str| PixelError::Undecodable(format!("{name} is missing"));
        let columns = number(object, tags::COLUMNS).ok_or_else(|| missing("Columns"))?;
        let rows = number(object, tags::ROWS).ok_or_else(|| missing("Rows"))?;
        let samples_per_pixel =
            number(object, tags::SAMPLES_PER_PIXEL).ok_or_else(|| missing("SamplesPerPixel"))?;
        let bits_allocated =
            number(object, tags::BITS_ALLOCATED).ok_or_else(|| missing("BitsAllocated"))?;
        let bytes_per_sample = bits_allocated.div_ceil(8) as usize;
        // Frames follow each other without padding; the whole value may end with a pad byte.
        let frame_len =
            columns as usize * rows as usize * samples_per_pixel as usize * bytes_per_sample;
        if bits_allocated % 8 != 0 || frame_len * count > bytes.len() {
            return Err(PixelError::Undecodable(format!(
                "{} bytes of pixel data do not hold {count} frames of {columns}x{rows}, {} \
                 samples of {bits_allocated} bits",
                bytes.len(),
                samples_per_pixel
            )));
        }
        Ok(NativeFrames {
            frame_len,
            count,
            columns,
            rows,
            samples_per_pixel,
            bits_allocated,
            bits_stored: number(object, tags::BITS_STORED).unwrap_or(bits_allocated),
            bytes_per_sample,
            signed: number(object, tags::PIXEL_REPRESENTATION) == Some(1),
            photometric: text(object, tags::PHOTOMETRIC_INTERPRETATION),
            bytes,
        })
    }

    fn frame(&self, index: usize) -> &[u8] {
        &self.bytes[index * self.frame_len..(index + 1) * self.frame_len]
    }

    /// Why `target` cannot hold these samples, if it cannot.
    fn unencodable(&self, target: TargetSyntax) -> Option<String> {
        unencodable(
            &DecodedHeader {
                samples_per_pixel: self.samples_per_pixel,
                photometric: &self.photometric,
                bits_allocated: self.bits_allocated,
                bits_stored: self.bits_stored,
                signed: self.signed,
            },
            target,
        )
    }

    /// Encodes frames `indexes` (from 0) in the encapsulated `target`.
    fn encode(&self, target: TargetSyntax, indexes: &[usize]) -> Result<Vec<Vec<u8>>, PixelError> {
        if let Some(reason) = self.unencodable(target) {
            return Err(PixelError::Unencodable(reason));
        }
        indexes
            .iter()
            .map(|&index| {
                let samples = FrameSamples {
                    columns: self.columns,
                    rows: self.rows,
                    components: self.samples_per_pixel,
                    bits_stored: self.bits_stored,
                    bytes_per_sample: self.bytes_per_sample,
                    signed: self.signed,
                    data: self.frame(index),
                };
                match target {
                    TargetSyntax::JpegBaseline => encode_jpeg(&samples),
                    TargetSyntax::Jpeg2000Lossless | TargetSyntax::Jpeg2000 => {
                        jpeg2000::encode_lossless(&samples).map_err(PixelError::Encode)
                    }
                    TargetSyntax::ExplicitVrLittleEndian => Ok(samples.data.to_vec()),
                }
            })
            .collect()
    }
}

/// What decides whether a target can hold decoded samples: the pixel description as it is
/// once the pixel data is native (after dicom-rs's decoding, which names colour RGB).
struct DecodedHeader<'a> {
    samples_per_pixel: u32,
    photometric: &'a str,
    bits_allocated: u32,
    bits_stored: u32,
    signed: bool,
}

/// Why `target` cannot hold samples described by `header`, if it cannot. The one rule for both
/// the check of decoded frames and the prediction from a stored header ([`check_transcodable`]).
fn unencodable(header: &DecodedHeader<'_>, target: TargetSyntax) -> Option<String> {
    let name = target.uid();
    let colour_ok = match header.samples_per_pixel {
        1 => true,
        3 => header.photometric == "RGB",
        _ => false,
    };
    if !colour_ok {
        return Some(format!(
            "{name} is produced from 1 sample per pixel or 3 in RGB; the instance has {} in {}",
            header.samples_per_pixel, header.photometric
        ));
    }
    match target {
        TargetSyntax::ExplicitVrLittleEndian => None,
        // Palette indices through a lossy codec would be other colours.
        TargetSyntax::JpegBaseline
            if header.samples_per_pixel == 1 && !header.photometric.starts_with("MONOCHROME") =>
        {
            Some(format!(
                "JPEG Baseline ({name}) is produced from greyscale or RGB samples; the instance \
                 has {}",
                header.photometric
            ))
        }
        TargetSyntax::JpegBaseline => {
            (header.bits_allocated != 8 || header.bits_stored != 8 || header.signed).then(|| {
                format!(
                    "JPEG Baseline ({name}) holds unsigned 8-bit samples; the instance has {} \
                     bits stored{}",
                    header.bits_stored,
                    if header.signed { ", signed" } else { "" }
                )
            })
        }
        TargetSyntax::Jpeg2000Lossless | TargetSyntax::Jpeg2000 => (!(header.bits_allocated == 8
            || header.bits_allocated == 16)
            || header.bits_stored == 0
            || header.bits_stored > header.bits_allocated)
            .then(|| {
                format!(
                    "JPEG 2000 ({name}) is produced from 8- or 16-bit samples; the instance \
                         has {} bits allocated, {} stored",
                    header.bits_allocated, header.bits_stored
                )
            }),
    }
}

/// The attributes of a stored instance that decide whether it can be transcoded, as its index
/// metadata holds them (no pixel is read): `None` where the instance does not have the
/// attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PixelHeader {
    /// SamplesPerPixel.
    pub samples_per_pixel: Option<u32>,
    /// PhotometricInterpretation.
    pub photometric_interpretation: Option<String>,
    /// BitsAllocated.
    pub bits_allocated: Option<u32>,
    /// BitsStored.
    pub bits_stored: Option<u32>,
    /// PixelRepresentation (1: signed samples).
    pub pixel_representation: Option<u32>,
    /// Rows.
    pub rows: Option<u32>,
    /// Columns.
    pub columns: Option<u32>,
    /// NumberOfFrames (1 when absent).
    pub number_of_frames: Option<u32>,
}

/// Whether an instance stored in `source` with the pixel description `header` can be
/// transcoded to `target`, decided before any pixel is read: the source must be one hds decodes
/// ([`TRANSCODABLE_SOURCES`]), its samples within the decoded-size limit and of a depth the
/// decoder produces, and the target able to hold them as they are once decoded (dicom-rs names
/// decoded colour RGB, and decoded single samples MONOCHROME2 unless they were MONOCHROME1).
/// The same rules as the transcoding itself, so an instance that passes fails later only if its
/// data is damaged. An instance without an image (no SamplesPerPixel) always passes: only its
/// data set's encoding changes.
pub fn check_transcodable(
    source: &str,
    header: &PixelHeader,
    target: TargetSyntax,
) -> Result<(), PixelError> {
    if source == target.uid() {
        return Ok(());
    }
    if source != EXPLICIT_VR_LITTLE_ENDIAN && !TRANSCODABLE_SOURCES.contains(&source) {
        return Err(PixelError::Undecodable(format!(
            "hds does not decode transfer syntax {source}"
        )));
    }
    let Some(samples_per_pixel) = header.samples_per_pixel else {
        return Ok(());
    };
    let missing = |name: &str| PixelError::Undecodable(format!("{name} is missing"));
    let bits_allocated = header
        .bits_allocated
        .ok_or_else(|| missing("BitsAllocated"))?;
    let rows = u64::from(header.rows.ok_or_else(|| missing("Rows"))?);
    let columns = u64::from(header.columns.ok_or_else(|| missing("Columns"))?);
    let frames = u64::from(header.number_of_frames.unwrap_or(1).max(1));
    let native_bytes = rows
        .saturating_mul(columns)
        .saturating_mul(u64::from(samples_per_pixel.max(1)))
        .saturating_mul(u64::from(bits_allocated.div_ceil(8).max(1)))
        .saturating_mul(frames);
    if native_bytes > MAX_DECODED_BYTES {
        return Err(PixelError::TooLarge {
            bytes: native_bytes,
            limit: MAX_DECODED_BYTES,
        });
    }
    let stored_photometric = header
        .photometric_interpretation
        .as_deref()
        .unwrap_or_default()
        .trim();
    let encapsulated = TransferSyntaxRegistry
        .get(source)
        .is_some_and(|syntax| syntax.is_encapsulated_pixel_data());
    // What dicom-rs's decoding to native samples makes of the description (its
    // `decode_inline`): it writes 8- or 16-bit samples only, and renames the photometric
    // interpretation.
    let photometric = if encapsulated {
        if bits_allocated != 8 && bits_allocated != 16 {
            return Err(PixelError::Undecodable(format!(
                "{bits_allocated} bits allocated: compressed pixel data is decoded to 8 or 16"
            )));
        }
        match samples_per_pixel {
            1 if stored_photometric == "MONOCHROME1" => "MONOCHROME1",
            1 => "MONOCHROME2",
            3 => "RGB",
            _ => stored_photometric,
        }
    } else {
        stored_photometric
    };
    if !target.encapsulated() {
        return Ok(());
    }
    let reason = unencodable(
        &DecodedHeader {
            samples_per_pixel,
            photometric,
            bits_allocated,
            bits_stored: header.bits_stored.unwrap_or(bits_allocated),
            signed: header.pixel_representation == Some(1),
        },
        target,
    );
    match reason {
        Some(reason) => Err(PixelError::Unencodable(reason)),
        None => Ok(()),
    }
}

/// One 8-bit frame as a baseline JPEG: grey, or RGB converted to YCbCr with the chroma halved
/// horizontally, which is what YBR_FULL_422 says.
fn encode_jpeg(samples: &FrameSamples<'_>) -> Result<Vec<u8>, PixelError> {
    let width = u16::try_from(samples.columns)
        .map_err(|_| PixelError::Unencodable("JPEG sides are at most 65535".into()))?;
    let height = u16::try_from(samples.rows)
        .map_err(|_| PixelError::Unencodable("JPEG sides are at most 65535".into()))?;
    let colour = if samples.components == 3 {
        jpeg_encoder::ColorType::Rgb
    } else {
        jpeg_encoder::ColorType::Luma
    };
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, JPEG_QUALITY);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_1);
    encoder
        .encode(samples.data, width, height, colour)
        .map_err(|error| PixelError::Encode(error.to_string()))?;
    Ok(out)
}

/// Replaces the native pixel data with `frames` as encapsulated fragments (one per frame,
/// with a basic offset table), and the attributes that describe the new encoding.
fn encapsulate(
    object: &mut DefaultDicomObject,
    target: TargetSyntax,
    frames: Vec<Vec<u8>>,
) -> Result<(), PixelError> {
    let native_bytes: usize = object
        .element(tags::PIXEL_DATA)
        .ok()
        .and_then(|element| element.to_bytes().ok().map(|bytes| bytes.len()))
        .unwrap_or(0);
    let mut offsets = Vec::with_capacity(frames.len());
    let mut fragments = Vec::with_capacity(frames.len());
    let mut offset: u64 = 0;
    let mut encoded_bytes: u64 = 0;
    for mut frame in frames {
        if frame.len() % 2 == 1 {
            frame.push(0); // fragments have even lengths (PS3.5 A.4)
        }
        offsets.push(
            u32::try_from(offset)
                .map_err(|_| PixelError::Encode("encoded pixel data over 4 GiB".into()))?,
        );
        offset += frame.len() as u64 + 8;
        encoded_bytes += frame.len() as u64;
        fragments.push(frame);
    }
    object.put(DataElement::new_with_len(
        tags::PIXEL_DATA,
        VR::OB,
        Length::UNDEFINED,
        PixelFragmentSequence::new(offsets, fragments),
    ));
    if target == TargetSyntax::JpegBaseline {
        let ratio = native_bytes as f64 / encoded_bytes.max(1) as f64;
        object.put(DataElement::new(
            tags::LOSSY_IMAGE_COMPRESSION,
            VR::CS,
            PrimitiveValue::from("01"),
        ));
        object.put(DataElement::new(
            tags::LOSSY_IMAGE_COMPRESSION_RATIO,
            VR::DS,
            PrimitiveValue::from(format!("{ratio:.4}")),
        ));
        object.put(DataElement::new(
            tags::LOSSY_IMAGE_COMPRESSION_METHOD,
            VR::CS,
            PrimitiveValue::from("ISO_10918_1"),
        ));
        if number(object, tags::SAMPLES_PER_PIXEL) == Some(3) {
            object.put(DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                PrimitiveValue::from("YBR_FULL_422"),
            ));
        }
    }
    Ok(())
}
