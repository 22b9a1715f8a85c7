//! JPEG Extended (1.2.840.10008.1.2.4.51) pixel data decoded by libjpeg-turbo.
//!
//! JPEG Extended is how many CT and MR archives of the 1990s and 2000s stored 12-bit samples
//! lossily. dicom-rs decodes JPEG with the `jpeg-decoder` crate, which reads 8-bit DCT data
//! only; libjpeg-turbo (3.x, built from the source `turbojpeg-sys` bundles) reads both 8- and
//! 12-bit sequential JPEG. So a stored instance in this syntax has its frames decoded here into
//! native samples (an Explicit VR Little Endian object), after which rendering and transcoding
//! go on exactly as for any native instance.
//!
//! Hostile input is bounded before anything is allocated: every frame's JPEG header must match
//! the data set's Rows, Columns and SamplesPerPixel and a precision that its BitsAllocated
//! holds, and libjpeg-turbo is told the largest image it may decode. Decoded pixels stay in
//! memory.
//!
//! With [`crate::jpeg2000`] and [`crate::rendered_jpeg`], the crate's only `unsafe` code: the
//! TurboJPEG calls, with the handle held by a guard that frees it on every path.
#![allow(unsafe_code)]

use std::borrow::Cow;
use std::ffi::{CStr, c_int};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::DefaultDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_transfer_syntax_registry::entries;
use turbojpeg_sys as tj;

use crate::PixelError;
use crate::transcode::{put_native_pixel_data, required_number};

/// JPEG Extended (Process 2 and 4): 8- or 12-bit samples, lossy.
pub const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

/// Whether `object` is stored in JPEG Extended, whose frames this module decodes.
pub(crate) fn is_jpeg_extended(object: &DefaultDicomObject) -> bool {
    object.meta().transfer_syntax().trim_end_matches('\0') == JPEG_EXTENDED
}

/// Replaces the encapsulated JPEG Extended pixel data of `object` with native samples, and its
/// transfer syntax with Explicit VR Little Endian: every frame, or only frame `only` (from 0),
/// which then becomes the object's single frame. Three-sample colour is decoded to RGB
/// (PhotometricInterpretation RGB, interleaved), as dicom-rs decodes colour JPEG.
pub(crate) fn decode_to_native(
    object: &mut DefaultDicomObject,
    only: Option<u32>,
) -> Result<(), PixelError> {
    let header = FrameHeader::of(object)?;
    let frames = frames_of(object)?;
    let wanted = match only {
        Some(index) => {
            let frame = frames
                .into_iter()
                .nth(index as usize)
                .ok_or_else(|| undecodable(format!("frame {} is missing", index + 1)))?;
            vec![frame]
        }
        None => frames,
    };
    let mut decoder = Decoder::new(&header)?;
    let mut native = Vec::with_capacity(header.frame_bytes().saturating_mul(wanted.len()));
    for jpeg in &wanted {
        decoder.decode_into(jpeg, &mut native)?;
    }
    put_native_pixel_data(object, native, header.bits_allocated as usize / 8)?;
    if only.is_some() {
        object.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("1"),
        ));
    }
    if header.samples_per_pixel == 3 {
        object.put(DataElement::new(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("RGB"),
        ));
        object.put(DataElement::new(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0_u16),
        ));
    }
    let explicit = TransferSyntaxRegistry
        .get(entries::EXPLICIT_VR_LITTLE_ENDIAN.uid())
        .ok_or_else(|| undecodable("Explicit VR Little Endian is not registered".into()))?;
    object.update_meta(|meta| meta.set_transfer_syntax(explicit));
    Ok(())
}

fn undecodable(reason: String) -> PixelError {
    PixelError::Undecodable(format!("{reason} (transfer syntax {JPEG_EXTENDED})"))
}

/// What the data set says each frame is; every JPEG header must agree.
struct FrameHeader {
    rows: u32,
    columns: u32,
    samples_per_pixel: u32,
    bits_allocated: u32,
    /// Signed samples are sign-extended from `bits_stored` into their 16 bits.
    signed: bool,
    bits_stored: u32,
}

impl FrameHeader {
    fn of(object: &DefaultDicomObject) -> Result<FrameHeader, PixelError> {
        let number = |tag, name| required_number(object, tag, name);
        let header = FrameHeader {
            rows: number(tags::ROWS, "Rows")?,
            columns: number(tags::COLUMNS, "Columns")?,
            samples_per_pixel: number(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?,
            bits_allocated: number(tags::BITS_ALLOCATED, "BitsAllocated")?,
            bits_stored: number(tags::BITS_STORED, "BitsStored")?,
            signed: number(tags::PIXEL_REPRESENTATION, "PixelRepresentation").unwrap_or(0) == 1,
        };
        if header.rows == 0 || header.columns == 0 {
            return Err(undecodable("an empty image".into()));
        }
        if !matches!(header.samples_per_pixel, 1 | 3) {
            return Err(undecodable(format!(
                "{} samples per pixel (1 or 3 are decoded)",
                header.samples_per_pixel
            )));
        }
        if !matches!(header.bits_allocated, 8 | 16) || header.bits_stored > 12 {
            return Err(undecodable(format!(
                "{} bits allocated, {} stored (8 or 16 allocated, at most 12 stored)",
                header.bits_allocated, header.bits_stored
            )));
        }
        Ok(header)
    }

    fn pixels(&self) -> usize {
        self.rows as usize * self.columns as usize
    }

    fn frame_bytes(&self) -> usize {
        self.pixels() * self.samples_per_pixel as usize * (self.bits_allocated as usize / 8)
    }
}

/// The JPEG codestream of each frame: one fragment per frame, or the fragments of a single
/// frame joined (the only case that copies).
fn frames_of(object: &DefaultDicomObject) -> Result<Vec<Cow<'_, [u8]>>, PixelError> {
    let element = object
        .element(tags::PIXEL_DATA)
        .map_err(|_| PixelError::NoPixelData)?;
    let fragments = element
        .value()
        .fragments()
        .ok_or_else(|| undecodable("the pixel data is not encapsulated".into()))?;
    let frames = object
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|element| element.to_int::<u32>().ok())
        .unwrap_or(1)
        .max(1) as usize;
    if fragments.len() == frames {
        return Ok(fragments
            .iter()
            .map(|fragment| Cow::Borrowed(fragment.as_slice()))
            .collect());
    }
    if frames == 1 && !fragments.is_empty() {
        return Ok(vec![Cow::Owned(fragments.concat())]);
    }
    Err(undecodable(format!(
        "{} fragments for {frames} frames",
        fragments.len()
    )))
}

/// A TurboJPEG decompressor (or compressor: [`crate::rendered_jpeg`]), freed when dropped.
pub(crate) struct Handle(pub(crate) tj::tjhandle);

impl Handle {
    /// What TurboJPEG says of the last call's failure.
    pub(crate) fn error_message(&self) -> String {
        // SAFETY: the handle is valid, and `tj3GetErrorStr` returns a NUL-terminated string
        // owned by it, copied here before the next call.
        unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.0)) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from `tj3Init` and is destroyed once, here.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

/// Decodes frames that must match one data set's description.
struct Decoder<'a> {
    handle: Handle,
    header: &'a FrameHeader,
}

impl<'a> Decoder<'a> {
    fn new(header: &'a FrameHeader) -> Result<Decoder<'a>, PixelError> {
        // SAFETY: plain constructor; the handle is freed by its guard.
        let handle = Handle(unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as c_int) });
        if handle.0.is_null() {
            return Err(undecodable("libjpeg-turbo could not start".into()));
        }
        let pixels = c_int::try_from(header.pixels())
            .map_err(|_| undecodable("an image over 2^31 pixels".into()))?;
        let decoder = Decoder { handle, header };
        // The largest image libjpeg-turbo may decode: the data set's, so a JPEG header that
        // claims more is refused before its buffers are allocated.
        decoder.set(tj::TJPARAM_TJPARAM_MAXPIXELS, pixels)?;
        Ok(decoder)
    }

    fn set(&self, parameter: tj::TJPARAM, value: c_int) -> Result<(), PixelError> {
        // SAFETY: the handle is valid; `tj3Set` only records the value.
        if unsafe { tj::tj3Set(self.handle.0, parameter as c_int, value) } != 0 {
            return Err(self.error("setting a decoder parameter"));
        }
        Ok(())
    }

    fn get(&self, parameter: tj::TJPARAM) -> c_int {
        // SAFETY: the handle is valid; `tj3Get` reads a value.
        unsafe { tj::tj3Get(self.handle.0, parameter as c_int) }
    }

    fn error(&self, doing: &str) -> PixelError {
        undecodable(format!("{doing}: {}", self.handle.error_message()))
    }

    /// Decodes one frame, appending its native little-endian samples to `out`.
    fn decode_into(&mut self, jpeg: &[u8], out: &mut Vec<u8>) -> Result<(), PixelError> {
        let header = self.header;
        let size = tj::size_t::try_from(jpeg.len())
            .map_err(|_| undecodable("a frame over the C library's size".into()))?;
        // SAFETY: `jpeg` is a live slice of `size` bytes, only read.
        if unsafe { tj::tj3DecompressHeader(self.handle.0, jpeg.as_ptr(), size) } != 0 {
            return Err(self.error("reading a frame's JPEG header"));
        }
        let width = self.get(tj::TJPARAM_TJPARAM_JPEGWIDTH);
        let height = self.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT);
        let precision = self.get(tj::TJPARAM_TJPARAM_PRECISION);
        let lossless = self.get(tj::TJPARAM_TJPARAM_LOSSLESS);
        let colorspace = self.get(tj::TJPARAM_TJPARAM_COLORSPACE);
        let grey = colorspace == tj::TJCS_TJCS_GRAY as c_int;
        let colour =
            colorspace == tj::TJCS_TJCS_YCbCr as c_int || colorspace == tj::TJCS_TJCS_RGB as c_int;
        if u32::try_from(width).ok() != Some(header.columns)
            || u32::try_from(height).ok() != Some(header.rows)
        {
            return Err(undecodable(format!(
                "a {width}x{height} JPEG frame in a {}x{} image",
                header.columns, header.rows
            )));
        }
        let matches = match header.samples_per_pixel {
            1 => grey,
            _ => colour,
        };
        if !matches {
            return Err(undecodable(format!(
                "a JPEG frame of colour space {colorspace} in an image of {} samples per pixel",
                header.samples_per_pixel
            )));
        }
        let twelve = match (precision, header.bits_allocated) {
            (8, 8) => false,
            (9..=12, 16) => true,
            _ => {
                return Err(undecodable(format!(
                    "{precision}-bit JPEG samples in {} bits allocated",
                    header.bits_allocated
                )));
            }
        };
        if lossless != 0 {
            return Err(undecodable("a lossless JPEG frame".into()));
        }
        let format = if grey {
            tj::TJPF_TJPF_GRAY
        } else {
            tj::TJPF_TJPF_RGB
        } as c_int;
        let samples = header.pixels() * header.samples_per_pixel as usize;
        if twelve {
            let mut decoded = vec![0_i16; samples];
            // SAFETY: `decoded` holds width x height x samples-per-pixel samples, what
            // TurboJPEG writes with a pitch of 0 (rows packed) for the checked dimensions.
            let status = unsafe {
                tj::tj3Decompress12(
                    self.handle.0,
                    jpeg.as_ptr(),
                    size,
                    decoded.as_mut_ptr(),
                    0,
                    format,
                )
            };
            if status != 0 {
                return Err(self.error("decoding a 12-bit JPEG frame"));
            }
            if header.signed {
                // Stored as the sample's bit pattern; sign-extended from BitsStored.
                let shift = 16 - header.bits_stored.clamp(1, 16);
                for sample in &mut decoded {
                    *sample = (*sample << shift) >> shift;
                }
            }
            let start = out.len();
            out.resize(start + samples * 2, 0);
            for (bytes, sample) in out[start..].chunks_exact_mut(2).zip(&decoded) {
                bytes.copy_from_slice(&sample.to_le_bytes());
            }
        } else {
            let start = out.len();
            out.resize(start + samples, 0);
            // SAFETY: `out[start..]` holds width x height x samples-per-pixel bytes, what
            // TurboJPEG writes with a pitch of 0 for the checked dimensions.
            let status = unsafe {
                tj::tj3Decompress8(
                    self.handle.0,
                    jpeg.as_ptr(),
                    size,
                    out[start..].as_mut_ptr(),
                    0,
                    format,
                )
            };
            if status != 0 {
                return Err(self.error("decoding an 8-bit JPEG frame"));
            }
        }
        Ok(())
    }
}
