//! One UPS-RS request body: read as a workitem dataset (limits on size, nesting and element
//! count), then put through every transaction's rules (create, update, change state, cancel
//! request) and the search terms. Any input is either refused with a 400-class reason or
//! handled; none panics or runs away.
#![no_main]

use hds_dicom::workitem::{
    Dataset, StateChange, apply_update, change_state, prepare_create, request_cancel,
    search_terms,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(dataset) = Dataset::from_request(body) else {
        return;
    };
    let _ = search_terms(&dataset);
    if let Ok(created) = prepare_create(dataset.clone(), Some("1.2.3"), 0) {
        let _ = search_terms(&created.dataset);
        let _ = apply_update(&created, dataset.clone(), None, 0);
        let _ = request_cancel(&created, &dataset, 0);
        if let Ok(change) = StateChange::from_dataset(&dataset) {
            let _ = change_state(&created, &change, 0);
        }
    }
});
