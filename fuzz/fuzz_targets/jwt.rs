//! Bearer tokens as validation reads them before trusting anything: the length limit, the
//! compact JWS (base64url, JSON header), the claims' JSON, the choice of key by `kid` among an
//! external issuer's published keys (ES256 and RS256) and the signature check; then, on the
//! same parse, the claim checks (times, lifetime, claim sizes, audience) that follow a valid
//! signature. Nothing may panic.
#![no_main]

use std::sync::LazyLock;

use hds_identity::{JwkSet, fuzzing};
use libfuzzer_sys::fuzz_target;

/// The public keys of the seed tokens (fuzz/corpus/jwt): one ES256 key `es`, one RS256 key
/// `rs`, and an ES256 key without `kid`.
static JWKS: LazyLock<JwkSet> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../jwks.json")).expect("the fixed key set parses")
});
/// The time the seed tokens are valid at.
const NOW: i64 = 1_800_000_000;

fuzz_target!(|token: &str| {
    let _ = fuzzing::verify_token(token, &JWKS);
    for platform in [false, true] {
        let _ = fuzzing::check_token_claims(
            token,
            platform,
            "https://dicom.healthcareapis.azure.com",
            NOW,
        );
    }
});
