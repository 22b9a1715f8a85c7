//! A STOW request body split as STOW splits it: the Content-Type's `type` and `boundary`, the
//! scanner that enforces the part-count and part-header limits on the raw bytes, and the
//! multipart parser, with the body arriving in chunks of any size.
//!
//! Input: one byte choosing the chunk size (1 to 64 KiB), the Content-Type up to the first
//! `\n`, then the body. Small limits (8 parts, 512-byte part headers, 1 MiB) so they are
//! reached; whatever is accepted must respect them.
#![no_main]

use hds_dicomweb::MultipartLimits;
use libfuzzer_sys::fuzz_target;

const LIMITS: MultipartLimits = MultipartLimits {
    max_parts: 8,
    max_header_bytes: 512,
};
const MAX_BYTES: u64 = 1024 * 1024;

fuzz_target!(|bytes: &[u8]| {
    let Some((&selector, rest)) = bytes.split_first() else {
        return;
    };
    let chunk_size = 1_usize << (selector % 17);
    let (content_type, body) = match rest.iter().position(|&byte| byte == b'\n') {
        Some(end) => (&rest[..end], &rest[end + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(content_type) = std::str::from_utf8(content_type) else {
        return;
    };
    if let Ok(parts) =
        hds_dicomweb::fuzzing::split_stow_body(content_type, body, chunk_size, LIMITS, MAX_BYTES)
    {
        assert!(parts.len() <= LIMITS.max_parts, "more parts than the limit");
        let total: u64 = parts.iter().map(|(length, _)| length).sum();
        assert!(total <= body.len() as u64, "parts longer than the body");
    }
});
