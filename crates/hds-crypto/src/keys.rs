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

use std::future::Future;
use std::pin::Pin;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::hmac;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey,
    OaepPublicEncryptingKey, PrivateDecryptingKey,
};
use zeroize::Zeroizing;

use crate::kdf::{hkdf_sha256, push_length_prefixed};
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

/// Why unwrapping a key or opening an index value failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The wrapped key or sealed value is malformed, altered, or bound to something else
    /// (another service, study or blob), or was wrapped under another key.
    #[error("wrapped key or sealed value failed its integrity check")]
    Integrity,
    /// The wrapped key or sealed value has a format version this build cannot read.
    #[error("unsupported wrapped-key format version {0}")]
    UnsupportedVersion(u8),
}

/// Format version of keys wrapped inside the hierarchy and of sealed index values.
const WRAP_VERSION_1: u8 = 1;
/// Format version of blob keys bound to the instance they belong to ([`InstanceBinding`]).
/// Same layout as version 1; the version byte tells which binding a wrapped blob key was made
/// with, and is itself part of that binding, so a version-2 key cannot pass for a version-1 one.
const WRAP_VERSION_2: u8 = 2;
/// HKDF salt for every key derived from a service root key.
const HIERARCHY_SALT: &[u8] = b"hds/key-hierarchy/v1";
const STUDY_WRAPPING_INFO: &[u8] = b"hds/key-hierarchy/v1/wrap-study-key";
const BLOB_WRAPPING_INFO: &[u8] = b"hds/key-hierarchy/v1/wrap-blob-key";
const INDEX_VALUE_INFO: &[u8] = b"hds/key-hierarchy/v1/index-value-key";
const INDEX_TOKEN_INFO: &[u8] = b"hds/key-hierarchy/v1/index-token-key";
const INDEX_VALUE_SUBKEY_INFO: &[u8] = b"hds/key-hierarchy/v1/index-value-subkey";
const AES_GCM_TAG_LEN: usize = 16;
/// Length of a key wrapped by [`ServiceRootKey::wrap_study_key`] or [`StudyKey::wrap_blob_key`].
pub const WRAPPED_DATA_KEY_LEN: usize = 1 + NONCE_LEN + DATA_KEY_LEN + AES_GCM_TAG_LEN;

fn derive_key(input_key: &[u8; DATA_KEY_LEN], info: &[u8]) -> Zeroizing<[u8; DATA_KEY_LEN]> {
    let mut derived = Zeroizing::new([0u8; DATA_KEY_LEN]);
    hkdf_sha256(HIERARCHY_SALT, input_key, &[info], derived.as_mut_slice());
    derived
}

/// HKDF-SHA256 of `input_key` under `info`, for [`crate::index_root::IndexRootKey`]'s
/// partition keys.
pub(crate) fn derive_partition_root(
    input_key: &[u8; DATA_KEY_LEN],
    info: &[u8],
) -> Zeroizing<[u8; DATA_KEY_LEN]> {
    derive_key(input_key, info)
}

fn aes_gcm_key(key_bytes: &[u8]) -> LessSafeKey {
    let unbound = UnboundKey::new(&AES_256_GCM, key_bytes)
        // Every caller passes a 32-byte key, always valid for AES-256.
        .expect("32 bytes is a valid AES-256-GCM key");
    LessSafeKey::new(unbound)
}

/// The associated data of a wrapped key: what it is, and whose.
fn wrapping_binding(kind: &[u8], service: &str, owner: &[u8]) -> Vec<u8> {
    versioned_wrapping_binding(WRAP_VERSION_1, kind, service, owner)
}

fn versioned_wrapping_binding(version: u8, kind: &[u8], service: &str, owner: &[u8]) -> Vec<u8> {
    let mut binding = Vec::with_capacity(24 + kind.len() + service.len() + owner.len());
    binding.push(version);
    push_length_prefixed(&mut binding, kind);
    push_length_prefixed(&mut binding, service.as_bytes());
    push_length_prefixed(&mut binding, owner);
    binding
}

/// `version || nonce || AES-256-GCM(key, nonce, data key, binding) || tag`, with a random nonce.
fn wrap_data_key(wrapping_key: &LessSafeKey, binding: &[u8], data_key: &DataKey) -> Vec<u8> {
    wrap_versioned_data_key(WRAP_VERSION_1, wrapping_key, binding, data_key)
}

fn wrap_versioned_data_key(
    version: u8,
    wrapping_key: &LessSafeKey,
    binding: &[u8],
    data_key: &DataKey,
) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    let mut wrapped = Vec::with_capacity(WRAPPED_DATA_KEY_LEN);
    wrapped.push(version);
    wrapped.extend_from_slice(&nonce);
    wrapped.extend_from_slice(data_key.expose());
    let tag = wrapping_key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(binding),
            &mut wrapped[1 + NONCE_LEN..],
        )
        // Sealing 32 bytes cannot exceed AES-GCM's length limit.
        .expect("AES-256-GCM seal of a 32-byte key cannot fail");
    wrapped.extend_from_slice(tag.as_ref());
    wrapped
}

fn unwrap_data_key(
    wrapping_key: &LessSafeKey,
    binding: &[u8],
    wrapped: &[u8],
) -> Result<DataKey, KeyError> {
    match wrapped.first() {
        Some(&WRAP_VERSION_1) => {}
        Some(&version) => return Err(KeyError::UnsupportedVersion(version)),
        None => return Err(KeyError::Integrity),
    }
    open_wrapped_data_key(wrapping_key, binding, wrapped)
}

/// Opens a wrapped key whose version byte the caller has already checked (it is part of
/// `binding`, so a changed byte fails the integrity check).
fn open_wrapped_data_key(
    wrapping_key: &LessSafeKey,
    binding: &[u8],
    wrapped: &[u8],
) -> Result<DataKey, KeyError> {
    if wrapped.len() != WRAPPED_DATA_KEY_LEN {
        return Err(KeyError::Integrity);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&wrapped[1..1 + NONCE_LEN]);
    let mut in_out = Zeroizing::new([0u8; DATA_KEY_LEN + AES_GCM_TAG_LEN]);
    in_out.copy_from_slice(&wrapped[1 + NONCE_LEN..]);
    let plaintext = wrapping_key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(binding),
            in_out.as_mut_slice(),
        )
        .map_err(|_| KeyError::Integrity)?;
    let mut key_bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
    key_bytes.copy_from_slice(plaintext);
    Ok(DataKey::from_bytes(key_bytes))
}

impl ServiceRootKey {
    /// Wraps `study_key` for storage, bound to `service` and the study's blind token, so a
    /// wrapped key copied to another study or service does not unwrap.
    ///
    /// Nonces are random under one derived wrapping key per service root key: the collision
    /// probability stays below 2^-32 up to 2^32 wrapped study keys.
    pub fn wrap_study_key(
        &self,
        service: &str,
        study_token: &[u8],
        study_key: &StudyKey,
    ) -> Vec<u8> {
        let wrapping_key = aes_gcm_key(derive_key(self.expose(), STUDY_WRAPPING_INFO).as_slice());
        let binding = wrapping_binding(b"study-key", service, study_token);
        wrap_data_key(&wrapping_key, &binding, &study_key.data_key)
    }

    /// Unwraps what [`ServiceRootKey::wrap_study_key`] produced for the same service and study.
    pub fn unwrap_study_key(
        &self,
        service: &str,
        study_token: &[u8],
        wrapped: &[u8],
    ) -> Result<StudyKey, KeyError> {
        let wrapping_key = aes_gcm_key(derive_key(self.expose(), STUDY_WRAPPING_INFO).as_slice());
        let binding = wrapping_binding(b"study-key", service, study_token);
        unwrap_data_key(&wrapping_key, &binding, wrapped).map(StudyKey::from_data_key)
    }

    /// The index keys of this service, derived (not stored).
    pub fn index_keys(&self) -> IndexKeys {
        IndexKeys::derive(self)
    }

    /// Wraps this key under the customer's key-encryption key (one vault call).
    pub async fn wrap_with(
        &self,
        key_encryption_key: &dyn KeyEncryptionKey,
    ) -> Result<WrappedKey, KekError> {
        key_encryption_key.wrap_key(self.expose()).await
    }

    /// Unwraps a service root key with the customer's key-encryption key (one vault call).
    pub async fn unwrap_with(
        key_encryption_key: &dyn KeyEncryptionKey,
        wrapped: &WrappedKey,
    ) -> Result<ServiceRootKey, KekError> {
        let plaintext = key_encryption_key.unwrap_key(wrapped).await?;
        let key_bytes: [u8; DATA_KEY_LEN] = plaintext
            .as_slice()
            .try_into()
            .map_err(|_| KekError::UnwrapFailed)?;
        Ok(ServiceRootKey::from_data_key(DataKey::from_bytes(
            Zeroizing::new(key_bytes),
        )))
    }
}

/// The instance a blob holds, as its wrapped blob key is bound to it: the blob's name and the
/// instance's three UIDs. A row of the index whose blob columns were swapped with another row's,
/// or replayed from another instance, names a different owner than its blob key was wrapped for,
/// so the key does not unwrap and the blob is never served as the wrong instance.
#[derive(Debug, Clone, Copy)]
pub struct InstanceBinding<'a> {
    /// The blob's opaque name (the sealed stream is bound to it as well).
    pub blob_name: &'a str,
    /// StudyInstanceUID.
    pub study_instance_uid: &'a str,
    /// SeriesInstanceUID.
    pub series_instance_uid: &'a str,
    /// SOPInstanceUID.
    pub sop_instance_uid: &'a str,
}

impl InstanceBinding<'_> {
    /// Each part length-prefixed, so no two different owners encode alike.
    fn encode(&self) -> Vec<u8> {
        let mut owner = Vec::with_capacity(
            32 + self.blob_name.len()
                + self.study_instance_uid.len()
                + self.series_instance_uid.len()
                + self.sop_instance_uid.len(),
        );
        for part in [
            self.blob_name,
            self.study_instance_uid,
            self.series_instance_uid,
            self.sop_instance_uid,
        ] {
            push_length_prefixed(&mut owner, part.as_bytes());
        }
        owner
    }
}

impl StudyKey {
    /// Wraps `blob_key` for storage, bound to `service` and to the instance the blob holds
    /// (its name and UIDs), so the wrapped key unwraps only for that instance of that service.
    ///
    /// Nonces are random under one derived wrapping key per study: the collision probability
    /// stays below 2^-32 up to 2^32 blobs in a study.
    pub fn wrap_blob_key(
        &self,
        service: &str,
        owner: &InstanceBinding<'_>,
        blob_key: &BlobKey,
    ) -> Vec<u8> {
        let wrapping_key = aes_gcm_key(derive_key(self.expose(), BLOB_WRAPPING_INFO).as_slice());
        let binding = versioned_wrapping_binding(
            WRAP_VERSION_2,
            b"instance-blob-key",
            service,
            &owner.encode(),
        );
        wrap_versioned_data_key(WRAP_VERSION_2, &wrapping_key, &binding, &blob_key.data_key)
    }

    /// Unwraps what [`StudyKey::wrap_blob_key`] produced for the same service and instance.
    ///
    /// Blob keys wrapped by earlier builds (format version 1) are bound to the service and blob
    /// name only; they still open, with that weaker binding, so existing data stays readable.
    /// A version-2 key never opens as version 1: the version byte is part of each binding.
    pub fn unwrap_blob_key(
        &self,
        service: &str,
        owner: &InstanceBinding<'_>,
        wrapped: &[u8],
    ) -> Result<BlobKey, KeyError> {
        let wrapping_key = aes_gcm_key(derive_key(self.expose(), BLOB_WRAPPING_INFO).as_slice());
        let binding = match wrapped.first() {
            Some(&WRAP_VERSION_2) => versioned_wrapping_binding(
                WRAP_VERSION_2,
                b"instance-blob-key",
                service,
                &owner.encode(),
            ),
            Some(&WRAP_VERSION_1) => {
                wrapping_binding(b"blob-key", service, owner.blob_name.as_bytes())
            }
            Some(&version) => return Err(KeyError::UnsupportedVersion(version)),
            None => return Err(KeyError::Integrity),
        };
        open_wrapped_data_key(&wrapping_key, &binding, wrapped).map(BlobKey::from_data_key)
    }
}

/// The service's index keys, derived from its root key: an AES-256-GCM key for index values
/// and an HMAC-SHA256 key for blind tokens. Never stored.
pub struct IndexKeys {
    value_key: Zeroizing<[u8; DATA_KEY_LEN]>,
    /// aws-lc clears the HMAC context when the key is dropped.
    token_key: hmac::Key,
}

impl std::fmt::Debug for IndexKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("IndexKeys(<redacted>)")
    }
}

/// Sealed index value layout: `version || subkey salt (16) || nonce (12) || ciphertext || tag`.
const INDEX_SALT_LEN: usize = 16;
/// Bytes a sealed index value adds to its plaintext.
pub const SEALED_VALUE_OVERHEAD: usize = 1 + INDEX_SALT_LEN + NONCE_LEN + AES_GCM_TAG_LEN;

impl IndexKeys {
    /// Derives the index keys of the service whose root key is `service_root_key`.
    pub fn derive(service_root_key: &ServiceRootKey) -> IndexKeys {
        let token_key_bytes = derive_key(service_root_key.expose(), INDEX_TOKEN_INFO);
        IndexKeys {
            value_key: derive_key(service_root_key.expose(), INDEX_VALUE_INFO),
            token_key: hmac::Key::new(hmac::HMAC_SHA256, token_key_bytes.as_slice()),
        }
    }

    /// A blind token: HMAC-SHA256 over the length-prefixed `domain` (e.g. `"PatientID"`, or
    /// `"PatientName/prefix"`) and `value` (already normalized by the caller). Equal inputs give
    /// equal tokens, so tokens are searchable; the domain keeps equal values of different
    /// attributes from matching.
    pub fn token(&self, domain: &str, value: &[u8]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.token_key);
        context.update(&(domain.len() as u64).to_be_bytes());
        context.update(domain.as_bytes());
        context.update(&(value.len() as u64).to_be_bytes());
        context.update(value);
        let mut token = [0u8; 32];
        token.copy_from_slice(context.sign().as_ref());
        token
    }

    /// Seals an index value, bound to `binding` (the caller encodes service, row and attribute)
    /// as associated data, so a value moved to another row or column does not open.
    ///
    /// Each value is sealed under its own subkey, derived from the value key and 16 random
    /// bytes stored with it, with a random 96-bit nonce. Nonce reuse would need a collision
    /// of 224 random bits, so there is no practical limit on the number of values.
    pub fn seal_value(&self, binding: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut salt = [0u8; INDEX_SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut salt);
        fill_random(&mut nonce);
        let subkey = self.value_subkey(&salt);
        let mut sealed = Vec::with_capacity(SEALED_VALUE_OVERHEAD + plaintext.len());
        sealed.push(WRAP_VERSION_1);
        sealed.extend_from_slice(&salt);
        sealed.extend_from_slice(&nonce);
        let start = sealed.len();
        sealed.extend_from_slice(plaintext);
        let tag = subkey
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(binding),
                &mut sealed[start..],
            )
            // Index values are far below AES-GCM's 2^36-byte limit.
            .expect("AES-256-GCM seal of an index value cannot fail");
        sealed.extend_from_slice(tag.as_ref());
        sealed
    }

    /// Opens what [`IndexKeys::seal_value`] produced with the same binding.
    pub fn open_value(
        &self,
        binding: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match sealed.first() {
            Some(&WRAP_VERSION_1) => {}
            Some(&version) => return Err(KeyError::UnsupportedVersion(version)),
            None => return Err(KeyError::Integrity),
        }
        if sealed.len() < SEALED_VALUE_OVERHEAD {
            return Err(KeyError::Integrity);
        }
        let mut salt = [0u8; INDEX_SALT_LEN];
        salt.copy_from_slice(&sealed[1..1 + INDEX_SALT_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1 + INDEX_SALT_LEN..1 + INDEX_SALT_LEN + NONCE_LEN]);
        let subkey = self.value_subkey(&salt);
        let mut in_out = Zeroizing::new(sealed[1 + INDEX_SALT_LEN + NONCE_LEN..].to_vec());
        let plaintext_len = subkey
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(binding),
                in_out.as_mut_slice(),
            )
            .map_err(|_| KeyError::Integrity)?
            .len();
        in_out.truncate(plaintext_len);
        Ok(in_out)
    }

    fn value_subkey(&self, salt: &[u8; INDEX_SALT_LEN]) -> LessSafeKey {
        let mut subkey = Zeroizing::new([0u8; DATA_KEY_LEN]);
        hkdf_sha256(
            salt,
            self.value_key.as_slice(),
            &[INDEX_VALUE_SUBKEY_INFO],
            subkey.as_mut_slice(),
        );
        aes_gcm_key(subkey.as_slice())
    }
}

/// Azure Key Vault's name for RSA-OAEP with SHA-256 and MGF1-SHA-256: the default.
pub const RSA_OAEP_256: &str = "RSA-OAEP-256";
/// Azure Key Vault's name for RSA-OAEP with SHA-1 and MGF1-SHA-1, accepted for unwrapping keys
/// wrapped by older clients.
pub const RSA_OAEP: &str = "RSA-OAEP";

/// A key wrapped by a key-encryption key, as the vault's wrapKey returns it.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The versioned id of the key-encryption key that wrapped it.
    pub kid: String,
    /// The wrap algorithm: [`RSA_OAEP_256`] or [`RSA_OAEP`].
    pub algorithm: String,
    /// The wrapped key.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WrappedKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Why a key-encryption-key operation failed. The variants separate what the key-access
/// monitor must tell apart: lost access (retry, start the 30-minute clock) versus bad input.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    /// The vault could not be reached or answered with a server error.
    #[error("key-encryption key is unavailable: {0}")]
    Unavailable(String),
    /// The identity lacks permission on the key.
    #[error("access to the key-encryption key was denied")]
    AccessDenied,
    /// The key (or this version) does not exist or is disabled.
    #[error("key-encryption key not found or disabled")]
    KeyNotFoundOrDisabled,
    /// The wrapped key names another key-encryption key.
    #[error("wrapped key belongs to another key-encryption key")]
    WrongKey,
    /// The wrap algorithm is not supported.
    #[error("unsupported key wrap algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// Wrapping failed.
    #[error("key wrap failed")]
    WrapFailed,
    /// Unwrapping failed: the wrapped key is altered or was wrapped under another key.
    #[error("key unwrap failed")]
    UnwrapFailed,
}

/// What a key-encryption-key operation returns: a boxed future, so that the trait can be used
/// as `dyn KeyEncryptionKey` (a remote vault client and [`LocalRsaKek`] behind one handle).
pub type KekFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KekError>> + Send + 'a>>;

/// The customer's key-encryption key: wraps and unwraps service root keys, like Azure Key
/// Vault's wrapKey and unwrapKey. The key itself never leaves its holder.
pub trait KeyEncryptionKey: Send + Sync {
    /// The versioned key id used for new wraps.
    fn key_id(&self) -> &str;

    /// Wraps `plaintext_key`.
    fn wrap_key<'a>(&'a self, plaintext_key: &'a [u8]) -> KekFuture<'a, WrappedKey>;

    /// Unwraps `wrapped`.
    fn unwrap_key<'a>(&'a self, wrapped: &'a WrappedKey) -> KekFuture<'a, Zeroizing<Vec<u8>>>;
}

/// Size of a [`LocalRsaKek`] key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RsaKeySize {
    /// 2048-bit modulus.
    Rsa2048,
    /// 3072-bit modulus.
    Rsa3072,
    /// 4096-bit modulus.
    Rsa4096,
}

/// A key-encryption key held in memory as an aws-lc RSA private key: for tests and for the
/// platform-managed key (whose PKCS#8 form is sealed under the platform root key at rest).
pub struct LocalRsaKek {
    key_id: String,
    private_key: PrivateDecryptingKey,
    algorithm: &'static str,
}

impl std::fmt::Debug for LocalRsaKek {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LocalRsaKek")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn oaep_algorithm(name: &str) -> Result<&'static OaepAlgorithm, KekError> {
    match name {
        RSA_OAEP_256 => Ok(&OAEP_SHA256_MGF1SHA256),
        RSA_OAEP => Ok(&OAEP_SHA1_MGF1SHA1),
        other => Err(KekError::UnsupportedAlgorithm(other.to_owned())),
    }
}

impl LocalRsaKek {
    /// Generates a new RSA key with id `key_id`, wrapping with [`RSA_OAEP_256`].
    pub fn generate(key_id: impl Into<String>, size: RsaKeySize) -> Result<LocalRsaKek, KekError> {
        let key_size = match size {
            RsaKeySize::Rsa2048 => KeySize::Rsa2048,
            RsaKeySize::Rsa3072 => KeySize::Rsa3072,
            RsaKeySize::Rsa4096 => KeySize::Rsa4096,
        };
        let private_key =
            PrivateDecryptingKey::generate(key_size).map_err(|_| KekError::WrapFailed)?;
        Ok(LocalRsaKek {
            key_id: key_id.into(),
            private_key,
            algorithm: RSA_OAEP_256,
        })
    }

    /// Loads an RSA private key from its PKCS#8 DER form.
    pub fn from_pkcs8(
        key_id: impl Into<String>,
        pkcs8_der: &[u8],
    ) -> Result<LocalRsaKek, KekError> {
        let private_key = PrivateDecryptingKey::from_pkcs8(pkcs8_der)
            .map_err(|_| KekError::KeyNotFoundOrDisabled)?;
        Ok(LocalRsaKek {
            key_id: key_id.into(),
            private_key,
            algorithm: RSA_OAEP_256,
        })
    }

    /// Wraps with `algorithm` ([`RSA_OAEP_256`] or [`RSA_OAEP`]) from now on.
    pub fn with_wrap_algorithm(mut self, algorithm: &str) -> Result<LocalRsaKek, KekError> {
        self.algorithm = match algorithm {
            RSA_OAEP_256 => RSA_OAEP_256,
            RSA_OAEP => RSA_OAEP,
            other => return Err(KekError::UnsupportedAlgorithm(other.to_owned())),
        };
        Ok(self)
    }

    /// The private key in PKCS#8 DER form, to be sealed at rest (never stored in the clear).
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let der = self
            .private_key
            .as_der()
            .map_err(|_| KekError::WrapFailed)?;
        Ok(Zeroizing::new(der.as_ref().to_vec()))
    }

    /// The public key in X.509 SubjectPublicKeyInfo DER form.
    pub fn public_key_der(&self) -> Result<Vec<u8>, KekError> {
        let der = self
            .private_key
            .public_key()
            .as_der()
            .map_err(|_| KekError::WrapFailed)?;
        Ok(der.as_ref().to_vec())
    }

    /// The modulus length in bits.
    pub fn key_size_bits(&self) -> usize {
        self.private_key.key_size_bits()
    }

    /// [`KeyEncryptionKey::wrap_key`] without the future.
    pub fn wrap_key_now(&self, plaintext_key: &[u8]) -> Result<WrappedKey, KekError> {
        let algorithm = oaep_algorithm(self.algorithm)?;
        let public_key = OaepPublicEncryptingKey::new(self.private_key.public_key())
            .map_err(|_| KekError::WrapFailed)?;
        let mut ciphertext = vec![0u8; public_key.ciphertext_size()];
        let written = public_key
            .encrypt(algorithm, plaintext_key, &mut ciphertext, None)
            .map_err(|_| KekError::WrapFailed)?
            .len();
        ciphertext.truncate(written);
        Ok(WrappedKey {
            kid: self.key_id.clone(),
            algorithm: self.algorithm.to_owned(),
            ciphertext,
        })
    }

    /// [`KeyEncryptionKey::unwrap_key`] without the future.
    pub fn unwrap_key_now(&self, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, KekError> {
        if wrapped.kid != self.key_id {
            return Err(KekError::WrongKey);
        }
        let algorithm = oaep_algorithm(&wrapped.algorithm)?;
        let private_key = OaepPrivateDecryptingKey::new(self.private_key.clone())
            .map_err(|_| KekError::UnwrapFailed)?;
        let mut plaintext = Zeroizing::new(vec![0u8; private_key.min_output_size()]);
        let written = private_key
            .decrypt(algorithm, &wrapped.ciphertext, &mut plaintext, None)
            .map_err(|_| KekError::UnwrapFailed)?
            .len();
        plaintext.truncate(written);
        Ok(plaintext)
    }
}

impl KeyEncryptionKey for LocalRsaKek {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn wrap_key<'a>(&'a self, plaintext_key: &'a [u8]) -> KekFuture<'a, WrappedKey> {
        Box::pin(std::future::ready(self.wrap_key_now(plaintext_key)))
    }

    fn unwrap_key<'a>(&'a self, wrapped: &'a WrappedKey) -> KekFuture<'a, Zeroizing<Vec<u8>>> {
        Box::pin(std::future::ready(self.unwrap_key_now(wrapped)))
    }
}

#[cfg(test)]
mod tests;
