//! A byte buffer for secrets (plaintext, key material) that is wiped on drop.

use zeroize::Zeroize;

/// Secret bytes, wiped when dropped. `Debug` hides the contents.
///
/// Unlike `Zeroizing<Vec<u8>>`, which wipes a vector one volatile byte write at a time, this
/// wipes in bulk, so dropping a multi-megabyte plaintext costs about as much as a `memset`.
/// The buffer never grows past the capacity it was created with inside this crate, so no
/// reallocation leaves an unwiped copy behind.
#[derive(Default)]
pub struct SecretBytes {
    bytes: Vec<u8>,
}

impl SecretBytes {
    /// An empty buffer that can hold `capacity` bytes without reallocating.
    pub(crate) fn with_capacity(capacity: usize) -> SecretBytes {
        SecretBytes {
            bytes: Vec::with_capacity(capacity),
        }
    }

    /// `len` zero bytes, to be overwritten in place. For large lengths the allocator hands
    /// out fresh pages that the kernel zeroes on first touch, so no separate zeroing pass runs.
    pub(crate) fn zeroed(len: usize) -> SecretBytes {
        SecretBytes {
            bytes: vec![0u8; len],
        }
    }

    /// The bytes, writable in place.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// The vector inside, for appending within its capacity.
    pub(crate) fn as_mut_vec(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }
}

impl std::ops::Deref for SecretBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.bytes.as_mut_slice().zeroize();
        self.bytes.spare_capacity_mut().zeroize();
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "SecretBytes(<{} bytes redacted>)",
            self.bytes.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_bytes() {
        let mut secret = SecretBytes::with_capacity(8);
        secret.as_mut_vec().extend_from_slice(b"PHI-1234");
        assert_eq!(format!("{secret:?}"), "SecretBytes(<8 bytes redacted>)");
        assert_eq!(secret.as_slice(), b"PHI-1234");
        assert_eq!(&secret[..3], b"PHI");
    }
}
