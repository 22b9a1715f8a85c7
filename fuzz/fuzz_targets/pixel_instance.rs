//! A stored instance's pixel data as the pixel services see it: any bytes that STOW-RS would
//! store (they pass `hds_dicom::parse_instance`, whose structural scan checks every length
//! against the bytes there are), then transcoded to Explicit VR Little Endian and to JPEG 2000
//! and rendered, through every decoder hds links (dicom-rs's native, RLE and JPEG ones,
//! CharLS, OpenJPEG, libjpeg-turbo). Each is refused or done; none panics, and no frame header
//! can make a decoder allocate more than the data set describes.
//!
//! Images larger than 2^20 decoded bytes are skipped: hds allows up to 512 MiB, which is right
//! for a server and is tested by the unit tests, but would only make this run slow.
#![no_main]

use std::io::Cursor;

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use hds_pixels::{RenderOptions, TargetSyntax, render, transcode};
use libfuzzer_sys::fuzz_target;

/// The most decoded bytes an input may describe here.
const MAX_DECODED: u64 = 1 << 20;

// hds-pixels turns a panic of a third-party decoder on damaged data into an error, so the hook
// libfuzzer-sys installs (abort on any panic, even a caught one) is put back to the default: a
// panic that escapes still aborts, through libfuzzer-sys's own `catch_unwind`.
fuzz_target!(init: drop(std::panic::take_hook()), |bytes: &[u8]| {
    if hds_dicom::parse_instance(Cursor::new(bytes)).is_err() {
        return;
    }
    let Ok(object) = OpenFileOptions::new().from_reader(Cursor::new(bytes)) else {
        return;
    };
    let number = |tag| {
        object
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|element| element.to_int::<u64>().ok())
            .unwrap_or(1)
    };
    let decoded = number(tags::ROWS)
        .saturating_mul(number(tags::COLUMNS))
        .saturating_mul(number(tags::SAMPLES_PER_PIXEL).max(3))
        .saturating_mul(number(tags::BITS_ALLOCATED).div_ceil(8).max(1))
        .saturating_mul(number(tags::NUMBER_OF_FRAMES).max(1));
    if decoded > MAX_DECODED {
        return;
    }
    let _ = transcode(bytes, TargetSyntax::ExplicitVrLittleEndian);
    let _ = transcode(bytes, TargetSyntax::Jpeg2000Lossless);
    let _ = render(bytes, 1, &RenderOptions::default());
});
