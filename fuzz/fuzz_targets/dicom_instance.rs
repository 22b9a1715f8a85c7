//! A STOW part as hds sees it: any bytes go through the structural scan, dicom-rs parsing,
//! attribute extraction, the search terms and the frame map without panicking or allocating
//! what a hostile header claims. The DICOM JSON that hds writes by hand for the metadata and
//! each query level must parse back as a JSON object, whatever the data set holds: it is
//! sealed and served as it is.
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
    for text in [
        &instance.metadata,
        &instance.study_attributes,
        &instance.series_attributes,
        &instance.instance_attributes,
    ] {
        if let Err(error) = text.to_map() {
            panic!("hds wrote DICOM JSON that does not parse: {error}");
        }
    }
});
