//! Rendered frames encoded as JPEG by libjpeg-turbo (the library JPEG Extended is decoded
//! with, built with its SIMD code), which encodes a large grey frame several times faster
//! than a portable encoder: at 1024x256 the encoding was the largest part of a render.
//!
//! Chroma is subsampled 4:2:0 below quality 90 and kept whole (4:4:4) from 90, as dicom-rs's
//! encoder chooses; grey frames are encoded as one component.
#![allow(unsafe_code)]

use std::ffi::c_int;

use turbojpeg_sys as tj;

use crate::PixelError;
use crate::jpeg_extended::Handle;

/// The samples of a rendered frame: 8-bit grey, or 8-bit interleaved RGB.
pub(crate) enum Samples<'a> {
    Grey(&'a [u8]),
    Rgb(&'a [u8]),
}

/// Encodes a `width` x `height` frame at `quality` (1 to 100) into `out`.
pub(crate) fn encode(
    samples: Samples<'_>,
    width: u32,
    height: u32,
    quality: u8,
    out: &mut Vec<u8>,
) -> Result<(), PixelError> {
    let (bytes, format, subsampling, per_pixel) = match samples {
        Samples::Grey(bytes) => (bytes, tj::TJPF_TJPF_GRAY, tj::TJSAMP_TJSAMP_GRAY, 1),
        Samples::Rgb(bytes) => (
            bytes,
            tj::TJPF_TJPF_RGB,
            if quality < 90 {
                tj::TJSAMP_TJSAMP_420
            } else {
                tj::TJSAMP_TJSAMP_444
            },
            3,
        ),
    };
    let side = |side: u32| {
        c_int::try_from(side).map_err(|_| PixelError::Encode("an image side over 2^31".into()))
    };
    let (columns, rows) = (side(width)?, side(height)?);
    if bytes.len() != width as usize * height as usize * per_pixel {
        return Err(PixelError::Encode(
            "the image's size does not match its samples".into(),
        ));
    }
    // SAFETY: plain constructor; the handle is freed by its guard.
    let handle = Handle(unsafe { tj::tj3Init(tj::TJINIT_TJINIT_COMPRESS as c_int) });
    if handle.0.is_null() {
        return Err(PixelError::Encode("libjpeg-turbo could not start".into()));
    }
    for (parameter, value) in [
        (tj::TJPARAM_TJPARAM_QUALITY, c_int::from(quality)),
        (tj::TJPARAM_TJPARAM_SUBSAMP, subsampling as c_int),
    ] {
        // SAFETY: the handle is valid; `tj3Set` only records the value.
        if unsafe { tj::tj3Set(handle.0, parameter as c_int, value) } != 0 {
            return Err(failure(&handle, "setting an encoder parameter"));
        }
    }
    let mut jpeg: *mut u8 = std::ptr::null_mut();
    let mut size: tj::size_t = 0;
    // SAFETY: `bytes` holds rows x columns x samples-per-pixel bytes (checked above), read with
    // a pitch of 0 (rows packed); TurboJPEG allocates the output, which is freed below.
    let status = unsafe {
        tj::tj3Compress8(
            handle.0,
            bytes.as_ptr(),
            columns,
            0,
            rows,
            format as c_int,
            &mut jpeg,
            &mut size,
        )
    };
    let result = if status != 0 || jpeg.is_null() {
        Err(failure(&handle, "encoding a JPEG"))
    } else {
        // SAFETY: on success TurboJPEG set `jpeg` to a buffer of `size` bytes it allocated.
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(jpeg, size as usize) });
        Ok(())
    };
    if !jpeg.is_null() {
        // SAFETY: the buffer came from TurboJPEG and is freed once, here.
        unsafe { tj::tj3Free(jpeg.cast()) };
    }
    result
}

fn failure(handle: &Handle, doing: &str) -> PixelError {
    PixelError::Encode(format!("{doing}: {}", handle.error_message()))
}
