//! ARM resource ids as they arrive in request paths, template expressions and role-assignment
//! scopes: parsing never panics, and whatever parses survives its own accessors and a second
//! parse of its canonical text.
#![no_main]

use hds_arm::ResourceId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(id) = ResourceId::parse(text) else {
        return;
    };
    let _ = (id.namespace(), id.resource_type(), id.resource_group_name());
    let _ = (id.qualified_name(), id.parent(), id.scope());
    let again = ResourceId::parse(id.as_str()).expect("a parsed id parses again");
    assert_eq!(again.key(), id.key(), "parsing is stable on its own output");
});
