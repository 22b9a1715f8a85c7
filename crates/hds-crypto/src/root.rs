//! The platform root key: one 256-bit secret (a 0600 file in the data dir) under which every
//! other platform secret at rest is sealed (vault keys, token-signing keys, the TLS CA key).
//!
//! # Sealed value format (version 1)
//!
//! ```text
//! +---------+----------------+------------------------------+
//! | 0x01    | nonce (12 B)   | AES-256-GCM ciphertext + tag |
//! +---------+----------------+------------------------------+
//! ```
//!
//! The AES key is `HKDF-SHA256(salt = "hds/root-key/v1", ikm = root key,
//! info = "hds/root-key/seal/v1" || 0x00 || purpose)`, so a value sealed for one purpose can
//! never be opened as another. The associated data is `version byte || associated_data`, which
//! binds the format version too. Nonces are random: each purpose is expected to seal far fewer
//! than 2^32 values under one root key, which keeps the collision probability negligible.
//!
//! # The root key under a passphrase
//!
//! A backup carries the root key, and an operator may keep it off the disk in plaintext; both
//! hold it sealed under a passphrase ([`RootKey::seal_with_passphrase`]), never raw:
//!
//! ```text
//! +-----------------+-----------+-----------+-----------+-----------+------------+--------------------+
//! | "hds-root-key\x01" | m (u32 LE) | t (u32 LE) | p (u32 LE) | salt (16 B) | nonce (12 B) | AES-256-GCM(key)+tag |
//! +-----------------+-----------+-----------+-----------+-----------+------------+--------------------+
//! ```
//!
//! The AES key is Argon2id(passphrase, salt) with memory `m` KiB, `t` passes and `p` lanes; the
//! associated data is everything before the nonce, so the parameters cannot be lowered in the
//! file without the open failing. Opening refuses parameters beyond [`PASSPHRASE_MAX_MEMORY_KIB`]
//! and [`PASSPHRASE_MAX_PASSES`], so a hostile file cannot make a start take unbounded memory or
//! time.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::kdf::hkdf_sha256;

/// Length of the root key in bytes.
const ROOT_KEY_LEN: usize = 32;
/// The format version written as the first byte of every sealed value.
const SEALED_VERSION: u8 = 1;
/// HKDF salt: fixed, so derivation is a pure function of (root key, purpose).
const HKDF_SALT: &[u8] = b"hds/root-key/v1";
/// Info prefix for AEAD subkeys used by [`RootKey::seal`].
const SEAL_INFO: &[u8] = b"hds/root-key/seal/v1";
/// Info prefix for [`RootKey::derive`]; distinct from [`SEAL_INFO`] so a derived key never
/// equals a sealing key for the same purpose.
const DERIVE_INFO: &[u8] = b"hds/root-key/derive/v1";
/// Authentication tag length of AES-256-GCM.
const TAG_LEN: usize = 16;

/// The first bytes of a root key sealed under a passphrase (with the format version).
const PASSPHRASE_MAGIC: &[u8; 13] = b"hds-root-key\x01";
/// Argon2id memory cost, in KiB (64 MiB): what OWASP suggests for interactive use, paid once
/// per start or backup.
const PASSPHRASE_MEMORY_KIB: u32 = 64 * 1024;
/// Argon2id passes.
const PASSPHRASE_PASSES: u32 = 3;
/// Argon2id lanes.
const PASSPHRASE_LANES: u32 = 1;
/// The largest memory cost an opened file may ask for (1 GiB).
pub const PASSPHRASE_MAX_MEMORY_KIB: u32 = 1024 * 1024;
/// The most passes an opened file may ask for.
pub const PASSPHRASE_MAX_PASSES: u32 = 16;
/// The most lanes an opened file may ask for.
const PASSPHRASE_MAX_LANES: u32 = 16;
/// Salt length of a passphrase-sealed root key.
const PASSPHRASE_SALT_LEN: usize = 16;
/// The shortest passphrase accepted for sealing.
pub const PASSPHRASE_MIN_LEN: usize = 12;
/// The longest passphrase accepted (sealing or opening).
pub const PASSPHRASE_MAX_LEN: usize = 1024;

/// Why a root-key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootKeyError {
    /// Reading or writing the key file failed.
    #[error("root key file: {0}")]
    Io(#[from] std::io::Error),
    /// The key file is readable by group or others, or has the wrong length.
    #[error("root key file is unsafe or malformed: {0}")]
    Unsafe(String),
    /// A sealed value failed authentication (altered, or sealed for another purpose or key).
    #[error("sealed value failed its integrity check")]
    Integrity,
    /// A passphrase-sealed root key did not open: the passphrase is wrong or the file was
    /// altered (the two cannot be told apart).
    #[error("the root key did not open: wrong passphrase, or the sealed key file was altered")]
    WrongPassphrase,
    /// The passphrase is shorter than [`PASSPHRASE_MIN_LEN`] or longer than
    /// [`PASSPHRASE_MAX_LEN`] bytes.
    #[error("the passphrase must be {PASSPHRASE_MIN_LEN} to {PASSPHRASE_MAX_LEN} bytes long")]
    PassphraseLength,
    /// The file is not a passphrase-sealed root key, or asks for key-derivation costs beyond
    /// the limits.
    #[error("not a passphrase-sealed root key, or its parameters are out of bounds")]
    MalformedSealedKey,
    /// A token-wrapped root key did not open: the wrapping key is another one than the key
    /// was wrapped with, or the file was altered.
    #[error("the root key did not open under {0}: wrong key, or the wrapped key file was altered")]
    WrongWrappingKey(String),
    /// The wrapper (a PKCS#11 token) could not be used.
    #[error("the root key's token is unavailable: {0}")]
    WrapperUnavailable(String),
    /// The data dir holds the root key in another form than the one asked for.
    #[error("the root key of {} is {held}", data_dir.display())]
    HeldInAnotherForm {
        /// The data dir.
        data_dir: std::path::PathBuf,
        /// The form it holds.
        held: &'static str,
    },
    /// A migration whose source and target are the same form.
    #[error("the root key is already {0}")]
    SameForm(&'static str),
}

/// The platform root key. Zeroized on drop; never logged.
pub struct RootKey {
    key_bytes: Zeroizing<[u8; ROOT_KEY_LEN]>,
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("RootKey(<redacted>)")
    }
}

impl RootKey {
    /// Loads the key from `path`, creating it (0600, 32 random bytes) when absent.
    /// Refuses a file readable by group or others.
    pub fn load_or_create(path: &Path) -> Result<RootKey, RootKeyError> {
        match File::open(path) {
            Ok(file) => Self::load_from_file(file, path),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Self::create_at(path),
            Err(error) => Err(RootKeyError::Io(error)),
        }
    }

    /// Loads the key from `path`, which must exist (see [`RootKey::load_or_create`]).
    pub fn load(path: &Path) -> Result<RootKey, RootKeyError> {
        Self::load_from_file(File::open(path)?, path)
    }

    /// Writes this key as a new plaintext key file at `path` (0600, synced with its
    /// directory), the form [`RootKey::load_or_create`] reads: what a restore leaves in a new
    /// data dir. An existing file is never replaced.
    pub fn write_plaintext(&self, path: &Path) -> Result<(), RootKeyError> {
        let mut file = create_owner_only(path)?;
        file.write_all(self.key_bytes.as_slice())?;
        file.sync_all()?;
        sync_parent_directory(path)?;
        Ok(())
    }

    /// A fresh random root key held only in memory: for tests and for callers that keep the
    /// key elsewhere (a PKCS#11 token unwraps into one of these).
    pub fn generate() -> RootKey {
        let mut key_bytes = Zeroizing::new([0u8; ROOT_KEY_LEN]);
        fill_random(key_bytes.as_mut_slice());
        RootKey { key_bytes }
    }

    /// Builds a root key from raw bytes (e.g. unwrapped from a hardware token).
    pub fn from_bytes(key_bytes: Zeroizing<[u8; ROOT_KEY_LEN]>) -> RootKey {
        RootKey { key_bytes }
    }

    /// The raw key, for a [`crate::root_at_rest::RootKeyWrapper`] only.
    pub(crate) fn key_bytes(&self) -> &[u8] {
        self.key_bytes.as_slice()
    }

    /// Whether `other` is the same key, compared in constant time.
    pub fn same_key_as(&self, other: &RootKey) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(
            self.key_bytes.as_slice(),
            other.key_bytes.as_slice(),
        )
        .is_ok()
    }

    /// Seals `plaintext` with AES-256-GCM under a subkey derived for `purpose`
    /// (e.g. `"keyvault/key-material"`), with `associated_data` bound in.
    pub fn seal(&self, purpose: &str, associated_data: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let aead_key = self.sealing_key(purpose);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        fill_random(&mut nonce_bytes);

        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        sealed.push(SEALED_VERSION);
        sealed.extend_from_slice(&nonce_bytes);
        // Encrypted in place in the output, so no other copy of the plaintext is made.
        sealed.extend_from_slice(plaintext);
        let tag = aead_key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(bound_associated_data(associated_data)),
                &mut sealed[1 + NONCE_LEN..],
            )
            // AES-GCM sealing fails only for inputs beyond 2^36 bytes, far above any secret
            // sealed under the root key.
            .expect("AES-256-GCM seal of an in-memory value cannot fail");
        sealed.extend_from_slice(tag.as_ref());
        sealed
    }

    /// Opens what [`RootKey::seal`] produced with the same purpose and associated data.
    pub fn open(
        &self,
        purpose: &str,
        associated_data: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RootKeyError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != SEALED_VERSION {
            return Err(RootKeyError::Integrity);
        }
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let aead_key = self.sealing_key(purpose);
        let mut in_out = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
        let plaintext_len = aead_key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(bound_associated_data(associated_data)),
                in_out.as_mut_slice(),
            )
            .map_err(|_| RootKeyError::Integrity)?
            .len();
        in_out.truncate(plaintext_len);
        Ok(in_out)
    }

    /// A 32-byte key derived (HKDF-SHA256) for `purpose`, e.g. the HMAC key for client-secret hashes.
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        self.expand(DERIVE_INFO, purpose)
    }

    /// This key sealed under `passphrase` (format in the module doc): what a backup carries
    /// and what an operator may keep on disk instead of the plaintext key.
    pub fn seal_with_passphrase(&self, passphrase: &[u8]) -> Result<Vec<u8>, RootKeyError> {
        if passphrase.len() < PASSPHRASE_MIN_LEN || passphrase.len() > PASSPHRASE_MAX_LEN {
            return Err(RootKeyError::PassphraseLength);
        }
        let mut sealed = Vec::with_capacity(PASSPHRASE_HEADER_LEN + NONCE_LEN + 48);
        sealed.extend_from_slice(PASSPHRASE_MAGIC);
        for parameter in [PASSPHRASE_MEMORY_KIB, PASSPHRASE_PASSES, PASSPHRASE_LANES] {
            sealed.extend_from_slice(&parameter.to_le_bytes());
        }
        let mut salt = [0u8; PASSPHRASE_SALT_LEN];
        fill_random(&mut salt);
        sealed.extend_from_slice(&salt);
        let aead_key = passphrase_key(
            passphrase,
            &salt,
            PASSPHRASE_MEMORY_KIB,
            PASSPHRASE_PASSES,
            PASSPHRASE_LANES,
        )?;
        let header = sealed.clone();
        let mut nonce_bytes = [0u8; NONCE_LEN];
        fill_random(&mut nonce_bytes);
        sealed.extend_from_slice(&nonce_bytes);
        let start = sealed.len();
        sealed.extend_from_slice(self.key_bytes.as_slice());
        let tag = aead_key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(header),
                &mut sealed[start..],
            )
            // 32 bytes are far below AES-GCM's limit.
            .expect("AES-256-GCM seal of 32 bytes cannot fail");
        sealed.extend_from_slice(tag.as_ref());
        Ok(sealed)
    }

    /// Opens what [`RootKey::seal_with_passphrase`] produced.
    pub fn open_with_passphrase(sealed: &[u8], passphrase: &[u8]) -> Result<RootKey, RootKeyError> {
        if passphrase.is_empty() || passphrase.len() > PASSPHRASE_MAX_LEN {
            return Err(RootKeyError::PassphraseLength);
        }
        if sealed.len() != PASSPHRASE_HEADER_LEN + NONCE_LEN + ROOT_KEY_LEN + TAG_LEN
            || !sealed.starts_with(PASSPHRASE_MAGIC)
        {
            return Err(RootKeyError::MalformedSealedKey);
        }
        let parameter = |index: usize| {
            let offset = PASSPHRASE_MAGIC.len() + 4 * index;
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(&sealed[offset..offset + 4]);
            u32::from_le_bytes(bytes)
        };
        let (memory_kib, passes, lanes) = (parameter(0), parameter(1), parameter(2));
        if memory_kib > PASSPHRASE_MAX_MEMORY_KIB
            || passes > PASSPHRASE_MAX_PASSES
            || lanes > PASSPHRASE_MAX_LANES
        {
            return Err(RootKeyError::MalformedSealedKey);
        }
        let salt = &sealed[PASSPHRASE_HEADER_LEN - PASSPHRASE_SALT_LEN..PASSPHRASE_HEADER_LEN];
        let aead_key = passphrase_key(passphrase, salt, memory_kib, passes, lanes)?;
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes
            .copy_from_slice(&sealed[PASSPHRASE_HEADER_LEN..PASSPHRASE_HEADER_LEN + NONCE_LEN]);
        let mut in_out = Zeroizing::new(sealed[PASSPHRASE_HEADER_LEN + NONCE_LEN..].to_vec());
        let opened = aead_key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(&sealed[..PASSPHRASE_HEADER_LEN]),
                in_out.as_mut_slice(),
            )
            .map_err(|_| RootKeyError::WrongPassphrase)?;
        let mut key_bytes = Zeroizing::new([0u8; ROOT_KEY_LEN]);
        key_bytes.copy_from_slice(opened);
        Ok(RootKey { key_bytes })
    }

    /// Loads a passphrase-sealed key from `path` (a 0600 file). Never creates one: a missing
    /// file is an error, so a wrong path cannot start hds on a new, empty key.
    pub fn load_sealed(path: &Path, passphrase: &[u8]) -> Result<RootKey, RootKeyError> {
        let mut file = File::open(path)?;
        let metadata = file.metadata()?;
        check_owner_only(&metadata, path)?;
        if metadata.len() > 1024 {
            return Err(RootKeyError::MalformedSealedKey);
        }
        let mut sealed = Vec::new();
        file.read_to_end(&mut sealed)?;
        Self::open_with_passphrase(&sealed, passphrase)
    }

    /// Writes this key, sealed under `passphrase`, to a new 0600 file at `path` (synced, with
    /// its directory); an existing file is never replaced.
    pub fn write_sealed(&self, path: &Path, passphrase: &[u8]) -> Result<(), RootKeyError> {
        let sealed = self.seal_with_passphrase(passphrase)?;
        let mut file = create_owner_only(path)?;
        file.write_all(&sealed)?;
        file.sync_all()?;
        sync_parent_directory(path)?;
        Ok(())
    }

    fn sealing_key(&self, purpose: &str) -> LessSafeKey {
        let key_bytes = self.expand(SEAL_INFO, purpose);
        let unbound = UnboundKey::new(&AES_256_GCM, key_bytes.as_slice())
            // A 32-byte slice is always a valid AES-256 key.
            .expect("32 bytes is a valid AES-256-GCM key");
        LessSafeKey::new(unbound)
    }

    fn expand(&self, info_prefix: &[u8], purpose: &str) -> Zeroizing<[u8; 32]> {
        let mut output = Zeroizing::new([0u8; 32]);
        hkdf_sha256(
            HKDF_SALT,
            self.key_bytes.as_slice(),
            &[info_prefix, &[0u8], purpose.as_bytes()],
            output.as_mut_slice(),
        );
        output
    }

    fn load_from_file(mut file: File, path: &Path) -> Result<RootKey, RootKeyError> {
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(RootKeyError::Unsafe(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        check_owner_only(&metadata, path)?;
        if metadata.len() != ROOT_KEY_LEN as u64 {
            return Err(RootKeyError::Unsafe(format!(
                "{} must hold exactly {ROOT_KEY_LEN} bytes",
                path.display()
            )));
        }
        let mut key_bytes = Zeroizing::new([0u8; ROOT_KEY_LEN]);
        file.read_exact(key_bytes.as_mut_slice())?;
        let mut trailing = [0u8; 1];
        if file.read(&mut trailing)? != 0 {
            return Err(RootKeyError::Unsafe(format!(
                "{} must hold exactly {ROOT_KEY_LEN} bytes",
                path.display()
            )));
        }
        Ok(RootKey { key_bytes })
    }

    /// Writes a new key to a temporary file and links it into place, so a concurrent start or
    /// a crash never leaves a half-written key at `path`, and an existing key is never replaced.
    fn create_at(path: &Path) -> Result<RootKey, RootKeyError> {
        let root_key = RootKey::generate();
        let mut suffix = [0u8; 8];
        fill_random(&mut suffix);
        let file_name = path
            .file_name()
            .ok_or_else(|| RootKeyError::Unsafe(format!("{} has no file name", path.display())))?;
        let mut temporary_name = file_name.to_os_string();
        temporary_name.push(format!(".tmp-{:016x}", u64::from_le_bytes(suffix)));
        let temporary_path = path.with_file_name(temporary_name);

        let result = (|| {
            let mut file = create_owner_only(&temporary_path)?;
            file.write_all(root_key.key_bytes.as_slice())?;
            file.sync_all()?;
            std::fs::hard_link(&temporary_path, path)?;
            // The new name must survive a power cut too, or a restart would make a new key and
            // lose every secret sealed under this one.
            sync_parent_directory(path)
        })();
        let _ = std::fs::remove_file(&temporary_path);
        match result {
            Ok(()) => Ok(root_key),
            // Another process created the key between our open and our link: use theirs.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load_from_file(File::open(path)?, path)
            }
            Err(error) => Err(RootKeyError::Io(error)),
        }
    }
}

/// Length of a passphrase-sealed key's header: magic, three parameters, salt.
const PASSPHRASE_HEADER_LEN: usize = PASSPHRASE_MAGIC.len() + 12 + PASSPHRASE_SALT_LEN;

/// The AES-256-GCM key Argon2id derives from a passphrase.
fn passphrase_key(
    passphrase: &[u8],
    salt: &[u8],
    memory_kib: u32,
    passes: u32,
    lanes: u32,
) -> Result<LessSafeKey, RootKeyError> {
    let parameters = argon2::Params::new(memory_kib, passes, lanes, Some(32))
        .map_err(|_| RootKeyError::MalformedSealedKey)?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        parameters,
    );
    let mut key_bytes = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, key_bytes.as_mut_slice())
        .map_err(|_| RootKeyError::MalformedSealedKey)?;
    let unbound = UnboundKey::new(&AES_256_GCM, key_bytes.as_slice())
        // A 32-byte slice is always a valid AES-256 key.
        .expect("32 bytes is a valid AES-256-GCM key");
    Ok(LessSafeKey::new(unbound))
}

/// Syncs the directory holding `path`, so a name just created there survives a power cut.
pub(crate) fn sync_parent_directory(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Prefixes the caller's associated data with the format version.
fn bound_associated_data(associated_data: &[u8]) -> Vec<u8> {
    let mut bound = Vec::with_capacity(1 + associated_data.len());
    bound.push(SEALED_VERSION);
    bound.extend_from_slice(associated_data);
    bound
}

pub(crate) fn fill_random(out: &mut [u8]) {
    aws_lc_rs::rand::fill(out)
        // aws-lc's RNG fails only if the OS entropy source is unavailable, which leaves no
        // safe way to continue.
        .expect("the system random number generator failed");
}

#[cfg(unix)]
pub(crate) fn check_owner_only(
    metadata: &std::fs::Metadata,
    path: &Path,
) -> Result<(), RootKeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(RootKeyError::Unsafe(format!(
            "{} has mode {:o}; it must not be accessible to group or others (chmod 600)",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_metadata: &std::fs::Metadata, _path: &Path) -> Result<(), RootKeyError> {
    Ok(())
}

#[cfg(unix)]
pub(crate) fn create_owner_only(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
pub(crate) fn create_owner_only(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary_directory() -> tempfile::TempDir {
        tempfile::tempdir().expect("create a temporary directory")
    }

    #[test]
    fn seal_then_open_round_trips() {
        let root_key = RootKey::generate();
        let sealed = root_key.seal("test/purpose", b"row-1", b"secret value");
        assert_ne!(&sealed[1 + NONCE_LEN..1 + NONCE_LEN + 12], b"secret value");
        let opened = root_key
            .open("test/purpose", b"row-1", &sealed)
            .expect("open");
        assert_eq!(opened.as_slice(), b"secret value");
    }

    #[test]
    fn passphrase_sealed_keys_open_only_with_their_passphrase() {
        let root_key = RootKey::generate();
        let sealed = root_key
            .seal_with_passphrase(b"correct horse battery")
            .expect("seal");
        assert!(
            !sealed
                .windows(ROOT_KEY_LEN)
                .any(|window| window == root_key.key_bytes.as_slice()),
            "the raw key is not in the sealed file"
        );
        let opened =
            RootKey::open_with_passphrase(&sealed, b"correct horse battery").expect("open");
        assert_eq!(opened.key_bytes.as_slice(), root_key.key_bytes.as_slice());
        assert!(matches!(
            RootKey::open_with_passphrase(&sealed, b"wrong horse battery"),
            Err(RootKeyError::WrongPassphrase)
        ));
        // Lowering the cost in the file breaks its authentication.
        let mut cheaper = sealed.clone();
        cheaper[PASSPHRASE_MAGIC.len() + 4] = 1;
        assert!(RootKey::open_with_passphrase(&cheaper, b"correct horse battery").is_err());
        // A hostile file asking for unbounded memory is refused before any work.
        let mut hostile = sealed.clone();
        hostile[PASSPHRASE_MAGIC.len()..PASSPHRASE_MAGIC.len() + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            RootKey::open_with_passphrase(&hostile, b"correct horse battery"),
            Err(RootKeyError::MalformedSealedKey)
        ));
        assert!(matches!(
            RootKey::open_with_passphrase(&sealed[1..], b"correct horse battery"),
            Err(RootKeyError::MalformedSealedKey)
        ));
        assert!(matches!(
            root_key.seal_with_passphrase(b"short"),
            Err(RootKeyError::PassphraseLength)
        ));
    }

    #[test]
    fn sealed_key_files_round_trip_and_are_never_created_by_loading() {
        let directory = temporary_directory();
        let path = directory.path().join("root.key.sealed");
        assert!(matches!(
            RootKey::load_sealed(&path, b"correct horse battery"),
            Err(RootKeyError::Io(_))
        ));
        assert!(!path.exists());
        let root_key = RootKey::generate();
        root_key
            .write_sealed(&path, b"correct horse battery")
            .expect("write");
        let loaded = RootKey::load_sealed(&path, b"correct horse battery").expect("load");
        assert_eq!(loaded.key_bytes.as_slice(), root_key.key_bytes.as_slice());
        assert!(
            root_key
                .write_sealed(&path, b"correct horse battery")
                .is_err()
        );
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let root_key = RootKey::generate();
        let sealed = root_key.seal("p", b"", b"");
        assert_eq!(sealed.len(), 1 + NONCE_LEN + TAG_LEN);
        assert!(root_key.open("p", b"", &sealed).expect("open").is_empty());
    }

    #[test]
    fn two_seals_of_the_same_value_differ() {
        let root_key = RootKey::generate();
        assert_ne!(root_key.seal("p", b"", b"x"), root_key.seal("p", b"", b"x"));
    }

    #[test]
    fn wrong_purpose_fails_integrity() {
        let root_key = RootKey::generate();
        let sealed = root_key.seal("keyvault/key-material", b"ad", b"secret");
        assert!(matches!(
            root_key.open("identity/signing-key", b"ad", &sealed),
            Err(RootKeyError::Integrity)
        ));
    }

    #[test]
    fn wrong_associated_data_fails_integrity() {
        let root_key = RootKey::generate();
        let sealed = root_key.seal("p", b"vault-a/key-1", b"secret");
        assert!(matches!(
            root_key.open("p", b"vault-a/key-2", &sealed),
            Err(RootKeyError::Integrity)
        ));
    }

    #[test]
    fn every_flipped_byte_fails_integrity() {
        let root_key = RootKey::generate();
        let sealed = root_key.seal("p", b"ad", b"secret");
        for index in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[index] ^= 0x01;
            assert!(
                matches!(
                    root_key.open("p", b"ad", &altered),
                    Err(RootKeyError::Integrity)
                ),
                "flipping byte {index} was not detected"
            );
        }
    }

    #[test]
    fn truncated_value_fails_integrity() {
        let root_key = RootKey::generate();
        let sealed = root_key.seal("p", b"ad", b"secret");
        for length in 0..sealed.len() {
            assert!(matches!(
                root_key.open("p", b"ad", &sealed[..length]),
                Err(RootKeyError::Integrity)
            ));
        }
    }

    #[test]
    fn another_root_key_fails_integrity() {
        let sealed = RootKey::generate().seal("p", b"", b"secret");
        assert!(matches!(
            RootKey::generate().open("p", b"", &sealed),
            Err(RootKeyError::Integrity)
        ));
    }

    #[test]
    fn derive_is_deterministic_and_separated_by_purpose() {
        let root_key = RootKey::generate();
        assert_eq!(*root_key.derive("a"), *root_key.derive("a"));
        assert_ne!(*root_key.derive("a"), *root_key.derive("b"));
        assert_ne!(*root_key.derive("a"), *RootKey::generate().derive("a"));
    }

    #[test]
    fn load_or_create_persists_the_key() {
        let directory = temporary_directory();
        let path = directory.path().join("root.key");
        let created = RootKey::load_or_create(&path).expect("create");
        let sealed = created.seal("p", b"", b"survives restart");
        let loaded = RootKey::load_or_create(&path).expect("load");
        assert_eq!(
            loaded.open("p", b"", &sealed).expect("open").as_slice(),
            b"survives restart"
        );
        assert_eq!(std::fs::metadata(&path).expect("metadata").len(), 32);
        // No temporary file is left beside the key.
        assert_eq!(
            std::fs::read_dir(directory.path()).expect("list").count(),
            1
        );
    }

    #[cfg(unix)]
    #[test]
    fn created_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let directory = temporary_directory();
        let path = directory.path().join("root.key");
        RootKey::load_or_create(&path).expect("create");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn group_or_other_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let directory = temporary_directory();
        let path = directory.path().join("root.key");
        RootKey::load_or_create(&path).expect("create");
        for mode in [0o640, 0o604, 0o660, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert!(
                matches!(RootKey::load_or_create(&path), Err(RootKeyError::Unsafe(_))),
                "mode {mode:o} was accepted"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        assert!(RootKey::load_or_create(&path).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn wrong_length_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let directory = temporary_directory();
        let path = directory.path().join("root.key");
        std::fs::write(&path, [7u8; 31]).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            RootKey::load_or_create(&path),
            Err(RootKeyError::Unsafe(_))
        ));
    }

    #[test]
    fn debug_output_hides_the_key() {
        let root_key = RootKey::from_bytes(Zeroizing::new([0xAB; 32]));
        let rendered = format!("{root_key:?}");
        assert!(!rendered.to_lowercase().contains("ab"));
    }
}
