//! The two hashing template functions, whose outputs must be stable forever: they name
//! resources (a role assignment named `guid(...)` is found again on the next deployment only
//! if the same inputs give the same GUID). DO NOT CHANGE.

use aws_lc_rs::digest;

/// ARM's namespace for `guid()`.
const GUID_NAMESPACE: [u8; 16] = [
    0x11, 0xfb, 0x06, 0xfb, 0x71, 0x2d, 0x4d, 0xdd, 0x98, 0xc7, 0xe7, 0x1b, 0xbd, 0x58, 0x88, 0x30,
];

/// `guid(a, b, ...)`: a name-based UUID, version 5 (RFC 9562 §5.5: SHA-1 over the namespace's
/// 16 bytes in network order followed by the name), where the name is the UTF-8 of the
/// arguments joined with `-` and the namespace is `11fb06fb-712d-4ddd-98c7-e71bbd588830`, as
/// ARM and Bicep document it. Returned lowercase, hyphenated.
pub(crate) fn guid(arguments: &[&str]) -> String {
    let name = arguments.join("-");
    let mut input = Vec::with_capacity(16 + name.len());
    input.extend_from_slice(&GUID_NAMESPACE);
    input.extend_from_slice(name.as_bytes());
    let hash = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&hash.as_ref()[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes).to_string()
}

/// `uniqueString(a, b, ...)`: 13 characters of `[a-z2-7]`. The arguments are joined with `-`,
/// hashed with MurmurHash64A (seed 0) over their UTF-8, and the 8 hash bytes (little-endian)
/// are written in RFC 4648 base32, lowercase, without padding. This is the algorithm of
/// Microsoft's open-source DSC port of the ARM function; it has not been checked here against
/// values produced by Azure itself.
pub(crate) fn unique_string(arguments: &[&str]) -> String {
    let hash = murmur_hash_64a(arguments.join("-").as_bytes(), 0);
    base32_lower(&hash.to_le_bytes())
}

/// Austin Appleby's MurmurHash64A.
fn murmur_hash_64a(data: &[u8], seed: u64) -> u64 {
    const MULTIPLIER: u64 = 0xc6a4_a793_5bd1_e995;
    const SHIFT: u32 = 47;
    let length = data.len() as u64;
    let mut hash = seed ^ length.wrapping_mul(MULTIPLIER);
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut block = [0_u8; 8];
        block.copy_from_slice(chunk);
        let mut k = u64::from_le_bytes(block);
        k = k.wrapping_mul(MULTIPLIER);
        k ^= k >> SHIFT;
        k = k.wrapping_mul(MULTIPLIER);
        hash ^= k;
        hash = hash.wrapping_mul(MULTIPLIER);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (index, byte) in tail.iter().enumerate() {
            hash ^= u64::from(*byte) << (8 * index);
        }
        hash = hash.wrapping_mul(MULTIPLIER);
    }
    hash ^= hash >> SHIFT;
    hash = hash.wrapping_mul(MULTIPLIER);
    hash ^= hash >> SHIFT;
    hash
}

fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut output = String::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            output.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        output.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_is_uuid_v5_in_the_arm_namespace() {
        // Known answers computed independently with Python's
        // uuid.uuid5(UUID("11fb06fb-712d-4ddd-98c7-e71bbd588830"), name).
        assert_eq!(guid(&["hello"]), PYTHON_HELLO);
        assert_eq!(guid(&["a", "b", "c"]), PYTHON_A_B_C);
        assert_eq!(guid(&["a", "b", "c"]), guid(&["a-b-c"]));
        assert_ne!(guid(&["ab"]), guid(&["a", "b"]));
    }

    const PYTHON_HELLO: &str = "520f8434-fe3a-5d99-888d-450a827486a1";
    const PYTHON_A_B_C: &str = "a98fa280-e03f-5afa-8d8e-92d0a9c201e8";

    #[test]
    fn base32_matches_rfc_4648() {
        // RFC 4648 §10 test vectors, lowercase and unpadded.
        assert_eq!(base32_lower(b"f"), "my");
        assert_eq!(base32_lower(b"fo"), "mzxq");
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn murmur_hash_64a_known_answers() {
        assert_eq!(murmur_hash_64a(b"", 0), 0);
        assert_eq!(murmur_hash_64a(b"hello", 0), PYTHON_MURMUR_HELLO);
    }

    /// A regression value from a separate Python transcription of MurmurHash64A (not an
    /// independent reference: it guards against accidental change).
    const PYTHON_MURMUR_HELLO: u64 = 0x1e68_d17c_457b_f117;

    #[test]
    fn unique_string_is_13_base32_characters_and_deterministic() {
        let value = unique_string(&["/subscriptions/s/resourceGroups/rg"]);
        assert_eq!(value.len(), 13);
        assert!(
            value
                .chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
        assert_eq!(
            value,
            unique_string(&["/subscriptions/s/resourceGroups/rg"])
        );
        assert_ne!(
            value,
            unique_string(&["/subscriptions/s/resourceGroups/rg2"])
        );
    }
}
