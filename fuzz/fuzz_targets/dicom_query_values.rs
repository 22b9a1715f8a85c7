//! QIDO-RS query values: names, fuzzy words, dates and date ranges, UIDs and attribute names
//! or tags, each normalized the way a search builds its tokens. None may panic.
#![no_main]

use hds_dicom::{attributes, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = normalize::normalize_exact(text);
    let _ = normalize::normalize_person_name(text);
    let _ = normalize::name_words(text);
    let _ = normalize::fuzzy_query_words(text);
    let _ = normalize::parse_date(text);
    let _ = normalize::parse_date_range(text);
    let _ = normalize::is_valid_uid(text);
    let _ = attributes::resolve_tag(text);
    let _ = attributes::find_searchable(text);
});
