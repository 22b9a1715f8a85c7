//! HKDF-SHA256 and length-prefixed encoding shared by every derivation in this crate.

use aws_lc_rs::hkdf;

/// An output length for [`hkdf::Prk::expand`].
struct OutputLength(usize);

impl hkdf::KeyType for OutputLength {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869): extract with `salt` from `input_key`, then expand with the
/// concatenation of `info_parts` into `output`. `output` must be at most 8160 bytes; every
/// caller asks for 16 or 32.
pub(crate) fn hkdf_sha256(salt: &[u8], input_key: &[u8], info_parts: &[&[u8]], output: &mut [u8]) {
    let pseudo_random_key = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(input_key);
    pseudo_random_key
        .expand(info_parts, OutputLength(output.len()))
        .and_then(|output_keying_material| output_keying_material.fill(output))
        // Expand fails only when more than 255 * 32 bytes are requested; callers ask for 16 or 32.
        .expect("HKDF-SHA256 output of at most 32 bytes");
}

/// HKDF-SHA256 with one extract and two expands: two independent outputs from the same
/// salt and input key, at the cost of one extract.
pub(crate) fn hkdf_sha256_expand_twice(
    salt: &[u8],
    input_key: &[u8],
    first: (&[&[u8]], &mut [u8]),
    second: (&[&[u8]], &mut [u8]),
) {
    let pseudo_random_key = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(input_key);
    for (info_parts, output) in [first, second] {
        pseudo_random_key
            .expand(info_parts, OutputLength(output.len()))
            .and_then(|output_keying_material| output_keying_material.fill(output))
            // Expand fails only when more than 255 * 32 bytes are requested; callers ask for
            // 16 or 32.
            .expect("HKDF-SHA256 output of at most 32 bytes");
    }
}

/// Appends `value` prefixed by its length as a big-endian u64, so that concatenated fields
/// cannot be re-split differently ("ab" + "c" never encodes like "a" + "bc").
pub(crate) fn push_length_prefixed(encoded: &mut Vec<u8>, value: &[u8]) {
    encoded.extend_from_slice(&(value.len() as u64).to_be_bytes());
    encoded.extend_from_slice(value);
}
