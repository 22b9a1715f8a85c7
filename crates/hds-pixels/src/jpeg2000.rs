//! JPEG 2000 encoding of one frame of native samples by OpenJPEG: the C library that the
//! `openjpeg-sys` crate builds from its vendored source, the same one dicom-rs decodes JPEG 2000
//! with here. The output is a raw codestream (J2K, not the JP2 file format), as DICOM
//! encapsulates it (PS3.5 A.4.4), and lossless: the reversible 5-3 wavelet, one quality layer,
//! no colour transform, so the samples decode back exactly and colour stays as stored.
//!
//! One of the crate's two modules with `unsafe` code (with `jpeg_extended`): the OpenJPEG
//! calls. Every resource the library allocates is held by a guard that frees it on every path,
//! and the output stream writes into a `Vec` owned here, never into a file: the decrypted
//! pixels stay in memory.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};

use openjpeg_sys as opj;

/// One frame of native samples, interleaved (colour-by-pixel), little-endian.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameSamples<'a> {
    /// Columns.
    pub columns: u32,
    /// Rows.
    pub rows: u32,
    /// Samples per pixel: 1 or 3.
    pub components: u32,
    /// Bits stored per sample, 1 to 16.
    pub bits_stored: u32,
    /// Bytes per sample in `data`: 1 or 2.
    pub bytes_per_sample: usize,
    /// Samples are two's complement (PixelRepresentation 1).
    pub signed: bool,
    /// The samples.
    pub data: &'a [u8],
}

/// The resolution levels of the wavelet transform: OpenJPEG's default (6), fewer for images
/// too small for it (each level halves the smaller side).
fn resolution_levels(columns: u32, rows: u32) -> i32 {
    let smallest = columns.min(rows).max(1);
    let mut levels = 6;
    while levels > 1 && (1u32 << (levels - 1)) > smallest {
        levels -= 1;
    }
    levels
}

/// Encodes `frame` as a lossless JPEG 2000 codestream.
pub(crate) fn encode_lossless(frame: &FrameSamples<'_>) -> Result<Vec<u8>, String> {
    if !(frame.components == 1 || frame.components == 3) {
        return Err(format!(
            "{} samples per pixel cannot be encoded",
            frame.components
        ));
    }
    if !(1..=16).contains(&frame.bits_stored)
        || !(frame.bytes_per_sample == 1 || frame.bytes_per_sample == 2)
        || frame.bits_stored as usize > frame.bytes_per_sample * 8
    {
        return Err(format!(
            "{} bits stored in {} bytes per sample cannot be encoded",
            frame.bits_stored, frame.bytes_per_sample
        ));
    }
    let pixels = frame.columns as usize * frame.rows as usize;
    let components = frame.components as usize;
    if pixels == 0 || frame.data.len() < pixels * components * frame.bytes_per_sample {
        return Err("the frame holds fewer samples than its size says".into());
    }
    let mut component_parameters: Vec<opj::opj_image_cmptparm_t> = (0..components)
        .map(|_| opj::opj_image_cmptparm_t {
            dx: 1,
            dy: 1,
            w: frame.columns,
            h: frame.rows,
            x0: 0,
            y0: 0,
            prec: frame.bits_stored,
            bpp: frame.bits_stored,
            sgnd: u32::from(frame.signed),
        })
        .collect();
    let colour_space = if components == 3 {
        opj::COLOR_SPACE::OPJ_CLRSPC_SRGB
    } else {
        opj::COLOR_SPACE::OPJ_CLRSPC_GRAY
    };
    // SAFETY: the parameters array holds `components` initialized entries; OpenJPEG copies
    // them and allocates each component's `w * h` samples. The image is freed by the guard.
    let image = ImageGuard(unsafe {
        opj::opj_image_create(
            frame.components,
            component_parameters.as_mut_ptr(),
            colour_space,
        )
    });
    if image.0.is_null() {
        return Err("OpenJPEG could not allocate the image".into());
    }
    // SAFETY: the image is non-null and was just created with `components` components of
    // `pixels` samples each; nothing else refers to it.
    unsafe {
        let image = &mut *image.0;
        image.x0 = 0;
        image.y0 = 0;
        image.x1 = frame.columns;
        image.y1 = frame.rows;
        for component in 0..components {
            let target = &mut *image.comps.add(component);
            if target.data.is_null() {
                return Err("OpenJPEG could not allocate the samples".into());
            }
            let samples = std::slice::from_raw_parts_mut(target.data, pixels);
            fill_component(frame, component, samples);
        }
    }

    // Declared before the codec, so dropped after it on every path: the error handler below
    // may write to it until the codec is destroyed.
    let mut messages = String::new();
    // SAFETY: plain constructor; the codec is freed by the guard.
    let codec = CodecGuard(unsafe { opj::opj_create_compress(opj::CODEC_FORMAT::OPJ_CODEC_J2K) });
    if codec.0.is_null() {
        return Err("OpenJPEG could not create an encoder".into());
    }
    // SAFETY: `messages` outlives the codec (see above) and is not moved; the callback only
    // appends to it.
    unsafe {
        opj::opj_set_error_handler(
            codec.0,
            Some(collect_message),
            (&mut messages as *mut String).cast::<c_void>(),
        );
    }
    // SAFETY: zeroed memory is a valid `opj_cparameters_t` (integers, arrays and null
    // pointers), and OpenJPEG then sets its defaults.
    let mut parameters: opj::opj_cparameters_t = unsafe { std::mem::zeroed() };
    unsafe { opj::opj_set_default_encoder_parameters(&mut parameters) };
    parameters.tcp_numlayers = 1;
    parameters.tcp_rates[0] = 0.0; // no rate limit: lossless
    parameters.cp_disto_alloc = 1;
    parameters.irreversible = 0;
    parameters.tcp_mct = 0;
    parameters.numresolution = resolution_levels(frame.columns, frame.rows);

    let mut output = Box::new(Output::default());
    // SAFETY: the stream is freed by its guard, which is declared after `output` and so
    // dropped before it: the user-data pointer never dangles while the stream exists. No
    // free function is given: the box is ours.
    let stream =
        StreamGuard(unsafe { opj::opj_stream_create(opj::OPJ_J2K_STREAM_CHUNK_SIZE as usize, 0) });
    if stream.0.is_null() {
        return Err("OpenJPEG could not create an output stream".into());
    }
    let encoded = unsafe {
        opj::opj_stream_set_write_function(stream.0, Some(write_output));
        opj::opj_stream_set_skip_function(stream.0, Some(skip_output));
        opj::opj_stream_set_seek_function(stream.0, Some(seek_output));
        opj::opj_stream_set_user_data(
            stream.0,
            (&mut *output as *mut Output).cast::<c_void>(),
            None,
        );
        // SAFETY: codec, image and stream are live and distinct; the parameters are read
        // during setup only.
        opj::opj_setup_encoder(codec.0, &mut parameters, image.0) == 1
            && opj::opj_start_compress(codec.0, image.0, stream.0) == 1
            && opj::opj_encode(codec.0, stream.0) == 1
            && opj::opj_end_compress(codec.0, stream.0) == 1
    };
    drop(stream);
    drop(codec);
    if !encoded {
        return Err(format!("OpenJPEG failed to encode: {}", messages.trim()));
    }
    Ok(output.bytes)
}

/// Copies one component of the interleaved little-endian samples into OpenJPEG's `i32`s,
/// sign-extended from `bits_stored` for signed samples, masked to it for unsigned ones.
fn fill_component(frame: &FrameSamples<'_>, component: usize, samples: &mut [i32]) {
    let components = frame.components as usize;
    for (pixel, sample) in samples.iter_mut().enumerate() {
        let at = (pixel * components + component) * frame.bytes_per_sample;
        let raw = if frame.bytes_per_sample == 1 {
            u32::from(frame.data[at])
        } else {
            u32::from(u16::from_le_bytes([frame.data[at], frame.data[at + 1]]))
        };
        *sample = if frame.signed {
            // Shift the sign bit to the top of an i32, then back: sign extension.
            let shift = 32 - frame.bits_stored;
            ((raw << shift) as i32) >> shift
        } else {
            (raw & ((1u32 << frame.bits_stored) - 1)) as i32
        };
    }
}

/// Where the codestream is written: bytes and the stream's position in them.
#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    position: usize,
}

impl Output {
    fn move_to(&mut self, position: usize) {
        if position > self.bytes.len() {
            self.bytes.resize(position, 0);
        }
        self.position = position;
    }
}

unsafe extern "C" fn write_output(
    buffer: *mut c_void,
    length: opj::OPJ_SIZE_T,
    user_data: *mut c_void,
) -> opj::OPJ_SIZE_T {
    // SAFETY: `user_data` is the `Output` this module gave the stream, alive while it is;
    // OpenJPEG hands `length` readable bytes at `buffer`.
    let output = unsafe { &mut *user_data.cast::<Output>() };
    let written = unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), length) };
    let end = output.position + length;
    if end > output.bytes.len() {
        output.bytes.resize(end, 0);
    }
    output.bytes[output.position..end].copy_from_slice(written);
    output.position = end;
    length
}

unsafe extern "C" fn skip_output(
    distance: opj::OPJ_OFF_T,
    user_data: *mut c_void,
) -> opj::OPJ_OFF_T {
    // SAFETY: as in `write_output`.
    let output = unsafe { &mut *user_data.cast::<Output>() };
    match i64::try_from(output.position)
        .ok()
        .and_then(|position| position.checked_add(distance))
        .and_then(|target| usize::try_from(target).ok())
    {
        Some(target) => {
            output.move_to(target);
            distance
        }
        None => -1,
    }
}

unsafe extern "C" fn seek_output(
    position: opj::OPJ_OFF_T,
    user_data: *mut c_void,
) -> opj::OPJ_BOOL {
    // SAFETY: as in `write_output`.
    let output = unsafe { &mut *user_data.cast::<Output>() };
    match usize::try_from(position) {
        Ok(target) => {
            output.move_to(target);
            1
        }
        Err(_) => 0,
    }
}

unsafe extern "C" fn collect_message(message: *const c_char, user_data: *mut c_void) {
    if message.is_null() || user_data.is_null() {
        return;
    }
    // SAFETY: OpenJPEG passes a NUL-terminated message and the `String` registered with the
    // handler, alive while the codec is.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    let messages = unsafe { &mut *user_data.cast::<String>() };
    if messages.len() < 4096 {
        messages.push_str(&text);
    }
}

struct ImageGuard(*mut opj::opj_image_t);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by `opj_image_create`, freed once.
            unsafe { opj::opj_image_destroy(self.0) };
        }
    }
}

struct CodecGuard(*mut opj::opj_codec_t);

impl Drop for CodecGuard {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by `opj_create_compress`, freed once.
            unsafe { opj::opj_destroy_codec(self.0) };
        }
    }
}

struct StreamGuard(*mut opj::opj_stream_t);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by `opj_stream_create`, freed once; it has no free function.
            unsafe { opj::opj_stream_destroy(self.0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_levels_fit_the_smaller_side() {
        assert_eq!(resolution_levels(512, 512), 6);
        assert_eq!(resolution_levels(64, 16), 5);
        assert_eq!(resolution_levels(3, 100), 2);
        assert_eq!(resolution_levels(1, 1), 1);
    }

    #[test]
    fn signed_samples_are_sign_extended_from_bits_stored() {
        // 12 bits stored: 0x0FFF is -1, 0x0800 is -2048; the unused high bits are ignored.
        let data = [0xFF, 0x0F, 0x00, 0x08, 0x01, 0xF0];
        let frame = FrameSamples {
            columns: 3,
            rows: 1,
            components: 1,
            bits_stored: 12,
            bytes_per_sample: 2,
            signed: true,
            data: &data,
        };
        let mut samples = [0; 3];
        fill_component(&frame, 0, &mut samples);
        assert_eq!(samples, [-1, -2048, 1]);
        let unsigned = FrameSamples {
            signed: false,
            ..frame
        };
        fill_component(&unsigned, 0, &mut samples);
        assert_eq!(samples, [4095, 2048, 1]);
    }

    #[test]
    fn refuses_what_it_cannot_encode() {
        let data = [0u8; 16];
        let frame = FrameSamples {
            columns: 2,
            rows: 2,
            components: 4,
            bits_stored: 8,
            bytes_per_sample: 1,
            signed: false,
            data: &data,
        };
        assert!(encode_lossless(&frame).is_err());
        let short = FrameSamples {
            components: 1,
            columns: 8,
            rows: 8,
            ..frame
        };
        assert!(encode_lossless(&short).is_err());
    }

    #[test]
    fn encodes_a_codestream() {
        let data: Vec<u8> = (0..64u32 * 64 * 2).map(|i| (i % 251) as u8).collect();
        let frame = FrameSamples {
            columns: 64,
            rows: 64,
            components: 1,
            bits_stored: 16,
            bytes_per_sample: 2,
            signed: false,
            data: &data,
        };
        let encoded = encode_lossless(&frame).expect("encoded");
        // SOC then SIZ markers open a J2K codestream; EOC closes it.
        assert_eq!(&encoded[..4], &[0xFF, 0x4F, 0xFF, 0x51]);
        assert_eq!(&encoded[encoded.len() - 2..], &[0xFF, 0xD9]);
    }
}
