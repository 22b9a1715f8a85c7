//! A STOW part as hds sees it: any bytes go through the structural scan, dicom-rs parsing,
//! attribute extraction, the search terms and the frame map without panicking or allocating
//! what a hostile header claims.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(instance) = hds_dicom::parse_instance(Cursor::new(bytes)) else {
        return;
    };
    if let Some(frames) = &instance.frames {
        for frame in 0..frames.frame_count().min(64) {
            let _ = frames.frame_length(frame);
        }
    }
    let _ = serde_json::to_vec(&instance.metadata);
});
