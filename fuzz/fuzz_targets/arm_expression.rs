//! One template string (an `[expression]`, a `[[` escape or a literal) parsed and evaluated
//! against parameters and variables that use each other (one uses itself): any input either
//! evaluates or is an error, within the deployment limits (length, nesting, steps, bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = hds_arm::fuzzing::evaluate_template_string(text);
    // The same text as an expression, so every input reaches the parser.
    if !text.starts_with('[') {
        let _ = hds_arm::fuzzing::evaluate_template_string(&format!("[{text}]"));
    }
});
