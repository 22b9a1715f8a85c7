//! A whole deployment PUT body planned as a PUT plans it before anything deploys: section
//! counts, every expression parsed, parameters, variables, conditions, names, scopes,
//! dependencies and outputs evaluated under one deployment budget. Any JSON either plans or
//! is an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let _ = hds_arm::fuzzing::plan_deployment(&body);
});
