//! The key hierarchy below the customer's key-encryption key (KEK).
//!
//! ```text
//! KEK (customer RSA key in the vault)
//!  └─ ServiceRootKey  (random; stored only wrapped by the KEK)
//!      ├─ IndexKeys   (derived: AES-256-GCM for index values, HMAC-SHA256 for blind tokens)
//!      └─ StudyKey    (random per study; stored wrapped by the service root key)
//!          └─ BlobKey (random per blob; stored wrapped by the study key)
//! ```
//!
//! Plaintext key bytes never leave this crate: the types expose no accessor for them, only
//! operations (wrap, seal, open, derive).

use zeroize::Zeroizing;

use crate::root::fill_random;

/// Length in bytes of every symmetric key in the hierarchy.
pub const DATA_KEY_LEN: usize = 32;

/// 32 random bytes of symmetric key material. Zeroized on drop; `Debug` hides the bytes.
pub struct DataKey {
    bytes: Zeroizing<[u8; DATA_KEY_LEN]>,
}

impl DataKey {
    /// Fresh random key material from the system RNG.
    pub fn generate() -> DataKey {
        let mut bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
        fill_random(bytes.as_mut_slice());
        DataKey { bytes }
    }

    /// Key material from bytes the caller already holds (e.g. just unwrapped).
    pub fn from_bytes(bytes: Zeroizing<[u8; DATA_KEY_LEN]>) -> DataKey {
        DataKey { bytes }
    }

    /// The raw bytes, for use inside this crate only.
    pub(crate) fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.bytes
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("DataKey(<redacted>)")
    }
}

/// Declares a role-specific key type around [`DataKey`], so a study key cannot be passed
/// where a blob key is expected.
macro_rules! role_key {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        pub struct $name {
            data_key: DataKey,
        }

        impl $name {
            /// A fresh random key.
            pub fn generate() -> $name {
                $name { data_key: DataKey::generate() }
            }

            /// Wraps existing key material in this role.
            pub fn from_data_key(data_key: DataKey) -> $name {
                $name { data_key }
            }

            /// The raw bytes, for use inside this crate only.
            #[allow(dead_code)]
            pub(crate) fn expose(&self) -> &[u8; DATA_KEY_LEN] {
                self.data_key.expose()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

role_key!(
    /// The DICOM service's root key: random, stored only wrapped by the customer's KEK.
    /// Everything else in the service hangs off it.
    ServiceRootKey
);
role_key!(
    /// One study's key: random, stored wrapped by the service root key. Destroying it
    /// crypto-shreds the study.
    StudyKey
);
role_key!(
    /// One blob's key: random, stored wrapped by its study key; the blob is a sealed stream
    /// under it.
    BlobKey
);
