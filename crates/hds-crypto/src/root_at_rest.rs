//! The root key at rest in a data dir, in one of three forms, each in its own file:
//!
//! | protector                         | file               | what a copy of the data dir opens |
//! |-----------------------------------|--------------------|-----------------------------------|
//! | [`Protector::Plaintext`]          | `root.key`         | everything (the laptop default)   |
//! | [`Protector::Passphrase`]         | `root.key.sealed`  | nothing without the passphrase    |
//! | [`Protector::Wrapper`] (a token)  | `root.key.wrapped` | nothing without the token's key   |
//!
//! The passphrase form is [`RootKey::seal_with_passphrase`]'s format. The wrapped form is
//!
//! ```text
//! +---------------------------+-------------------------------------------+
//! | "hds-root-key-wrapped\x01" | what the wrapper returned (opaque here)   |
//! +---------------------------+-------------------------------------------+
//! ```
//!
//! where the wrapper (a PKCS#11 token in `hds-keyvault`) encrypts the 32 key bytes with a key
//! that never leaves it, authenticating the magic as associated data. Handing the raw key to a
//! [`RootKeyWrapper`] is the one place, besides the KEK seam, where key bytes leave this crate:
//! a token can only wrap what it is given.
//!
//! Two rules keep an operator's key safe:
//! - [`open_or_create`] opens only the form its protector names. A data dir that holds the key
//!   in another form is refused ([`RootKeyError::HeldInAnotherForm`]), before anything is
//!   written: a wrong flag never creates a second key nor moves the key silently.
//! - Moving the key between forms is [`migrate`] alone, which an operator asks for explicitly;
//!   it writes the new form, proves it opens to the same key, and only then removes the old one.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::root::{
    RootKey, RootKeyError, check_owner_only, create_owner_only, sync_parent_directory,
};

/// The plaintext root key's file name.
pub const PLAINTEXT_FILE: &str = "root.key";
/// The passphrase-sealed root key's file name.
pub const PASSPHRASE_FILE: &str = "root.key.sealed";
/// The token-wrapped root key's file name.
pub const WRAPPED_FILE: &str = "root.key.wrapped";
/// The first bytes of a wrapped root key file (with the format version).
const WRAPPED_MAGIC: &[u8; 21] = b"hds-root-key-wrapped\x01";
/// The largest root key file read: far above every form's size, so a hostile file cannot make
/// a start read without bound.
const ROOT_KEY_FILE_LIMIT: u64 = 4096;

/// Something outside the data dir that encrypts the root key with a key it never reveals: a
/// PKCS#11 token's AES key (`hds_keyvault::Pkcs11RootKeyWrapper`).
pub trait RootKeyWrapper: Send + Sync {
    /// Names the wrapping key for messages, e.g. `PKCS#11 token 'hds', key 'hds-root-key'`.
    /// Never secret.
    fn describe(&self) -> String;
    /// Encrypts `root_key_bytes` with authentication of `associated_data`.
    fn wrap(&self, associated_data: &[u8], root_key_bytes: &[u8]) -> Result<Vec<u8>, WrapperError>;
    /// Opens what [`RootKeyWrapper::wrap`] returned for the same associated data.
    fn unwrap(
        &self,
        associated_data: &[u8],
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, WrapperError>;
}

/// Why a wrapper failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WrapperError {
    /// The wrapped value did not open: another key, or an altered file.
    #[error("the wrapped value did not open under this key")]
    WrongKey,
    /// The wrapper could not do its work (token gone, session lost). The message names the
    /// token and key, never secrets.
    #[error("{0}")]
    Unavailable(String),
}

/// How the root key is kept at rest.
#[derive(Clone, Copy)]
pub enum Protector<'a> {
    /// In plaintext (`root.key`).
    Plaintext,
    /// Sealed under this passphrase (`root.key.sealed`).
    Passphrase(&'a [u8]),
    /// Wrapped by this wrapper (`root.key.wrapped`).
    Wrapper(&'a dyn RootKeyWrapper),
}

impl std::fmt::Debug for Protector<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.describe())
    }
}

impl Protector<'_> {
    /// The form this protector keeps.
    pub fn form(&self) -> Form {
        match self {
            Protector::Plaintext => Form::Plaintext,
            Protector::Passphrase(_) => Form::Passphrase,
            Protector::Wrapper(_) => Form::Wrapped,
        }
    }

    /// Says how the key is kept, for messages (no secret).
    pub fn describe(&self) -> String {
        match self {
            Protector::Plaintext => "in plaintext".to_owned(),
            Protector::Passphrase(_) => "sealed under a passphrase".to_owned(),
            Protector::Wrapper(wrapper) => format!("wrapped by {}", wrapper.describe()),
        }
    }

    /// Reads the key this protector keeps in `data_dir`.
    pub fn read(&self, data_dir: &Path) -> Result<RootKey, RootKeyError> {
        let path = data_dir.join(self.form().file_name());
        match self {
            Protector::Plaintext => RootKey::load(&path),
            Protector::Passphrase(passphrase) => RootKey::load_sealed(&path, passphrase),
            Protector::Wrapper(wrapper) => {
                let stored = read_owner_only(&path)?;
                let wrapped = stored
                    .strip_prefix(WRAPPED_MAGIC.as_slice())
                    .ok_or(RootKeyError::MalformedSealedKey)?;
                let opened = wrapper
                    .unwrap(WRAPPED_MAGIC, wrapped)
                    .map_err(|error| wrapper_error(*wrapper, error))?;
                let key_bytes: [u8; 32] = opened
                    .as_slice()
                    .try_into()
                    .map_err(|_| RootKeyError::MalformedSealedKey)?;
                Ok(RootKey::from_bytes(Zeroizing::new(key_bytes)))
            }
        }
    }

    /// Writes `root_key` in this protector's form to a new file in `data_dir` (0600, synced
    /// with its directory). An existing file is never replaced.
    pub fn write(&self, data_dir: &Path, root_key: &RootKey) -> Result<(), RootKeyError> {
        let path = data_dir.join(self.form().file_name());
        match self {
            Protector::Plaintext => root_key.write_plaintext(&path),
            Protector::Passphrase(passphrase) => root_key.write_sealed(&path, passphrase),
            Protector::Wrapper(wrapper) => {
                let wrapped = wrapper
                    .wrap(WRAPPED_MAGIC, root_key.key_bytes())
                    .map_err(|error| wrapper_error(*wrapper, error))?;
                let mut contents = Vec::with_capacity(WRAPPED_MAGIC.len() + wrapped.len());
                contents.extend_from_slice(WRAPPED_MAGIC);
                contents.extend_from_slice(&wrapped);
                let mut file = create_owner_only(&path)?;
                file.write_all(&contents)?;
                file.sync_all()?;
                sync_parent_directory(&path)?;
                Ok(())
            }
        }
    }
}

/// A form of the root key at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `root.key`.
    Plaintext,
    /// `root.key.sealed`.
    Passphrase,
    /// `root.key.wrapped`.
    Wrapped,
}

impl Form {
    /// Every form, the plaintext first.
    pub const ALL: [Form; 3] = [Form::Plaintext, Form::Passphrase, Form::Wrapped];

    /// The file that holds this form in a data dir.
    pub fn file_name(self) -> &'static str {
        match self {
            Form::Plaintext => PLAINTEXT_FILE,
            Form::Passphrase => PASSPHRASE_FILE,
            Form::Wrapped => WRAPPED_FILE,
        }
    }

    /// Says what this form is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Form::Plaintext => "in plaintext",
            Form::Passphrase => "sealed under a passphrase",
            Form::Wrapped => "wrapped by a PKCS#11 token's key",
        }
    }
}

/// The forms of the root key `data_dir` holds (a file exists), plaintext first.
pub fn held_forms(data_dir: &Path) -> Result<Vec<Form>, RootKeyError> {
    let mut held = Vec::new();
    for form in Form::ALL {
        match std::fs::symlink_metadata(data_dir.join(form.file_name())) {
            Ok(_) => held.push(form),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(RootKeyError::Io(error)),
        }
    }
    Ok(held)
}

/// The root key of `data_dir` as `protector` keeps it: opened when its file exists; created
/// in that form (a fresh key) when the data dir holds no root key at all; refused with
/// [`RootKeyError::HeldInAnotherForm`] when the data dir holds it only in another form. Every
/// failure happens before anything is written.
pub fn open_or_create(data_dir: &Path, protector: Protector<'_>) -> Result<RootKey, RootKeyError> {
    let held = held_forms(data_dir)?;
    if held.contains(&protector.form()) {
        return protector.read(data_dir);
    }
    if let Some(form) = held.first() {
        return Err(RootKeyError::HeldInAnotherForm {
            data_dir: data_dir.to_path_buf(),
            held: form.describe(),
        });
    }
    match protector {
        // Linked into place atomically, so two starts at once share one key.
        Protector::Plaintext => RootKey::load_or_create(&data_dir.join(PLAINTEXT_FILE)),
        _ => {
            let root_key = RootKey::generate();
            protector.write(data_dir, &root_key)?;
            Ok(root_key)
        }
    }
}

/// Moves the root key of `data_dir` from the form `from` keeps to the form `to` keeps: reads
/// it, writes the new form, opens that again and checks it is the same key, and only then
/// removes the old file (a plaintext file is overwritten with zeros and synced first). A crash
/// part-way leaves both forms, each opening to the same key; running it again finishes.
pub fn migrate(
    data_dir: &Path,
    from: Protector<'_>,
    to: Protector<'_>,
) -> Result<(), RootKeyError> {
    if from.form() == to.form() {
        return Err(RootKeyError::SameForm(to.form().describe()));
    }
    let root_key = from.read(data_dir)?;
    let target = data_dir.join(to.form().file_name());
    if target.exists() {
        // A migration a crash interrupted: the new form must hold this very key.
        if !to.read(data_dir)?.same_key_as(&root_key) {
            return Err(RootKeyError::Unsafe(format!(
                "{} holds another root key than the one being moved; move it away first",
                target.display()
            )));
        }
    } else {
        to.write(data_dir, &root_key)?;
        if !to.read(data_dir)?.same_key_as(&root_key) {
            return Err(RootKeyError::Integrity);
        }
    }
    let source = data_dir.join(from.form().file_name());
    if from.form() == Form::Plaintext {
        overwrite_with_zeros(&source)?;
    }
    std::fs::remove_file(&source)?;
    sync_parent_directory(&source)?;
    Ok(())
}

/// Overwrites a key file with zeros and syncs it, so the key is not left in its blocks by the
/// unlink that follows (on file systems that write in place).
fn overwrite_with_zeros(path: &PathBuf) -> Result<(), RootKeyError> {
    let length = std::fs::metadata(path)?.len();
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(&vec![0u8; usize::try_from(length).unwrap_or(0)])?;
    file.sync_all()?;
    Ok(())
}

/// Reads a small owner-only file.
fn read_owner_only(path: &Path) -> Result<Vec<u8>, RootKeyError> {
    let file = File::open(path)?;
    let metadata = file.metadata()?;
    check_owner_only(&metadata, path)?;
    if metadata.len() > ROOT_KEY_FILE_LIMIT {
        return Err(RootKeyError::MalformedSealedKey);
    }
    let mut contents = Vec::new();
    file.take(ROOT_KEY_FILE_LIMIT).read_to_end(&mut contents)?;
    Ok(contents)
}

fn wrapper_error(wrapper: &dyn RootKeyWrapper, error: WrapperError) -> RootKeyError {
    match error {
        WrapperError::WrongKey => RootKeyError::WrongWrappingKey(wrapper.describe()),
        WrapperError::Unavailable(reason) => RootKeyError::WrapperUnavailable(reason),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

    use super::*;

    /// A wrapper with an in-memory AES key: the contract a token keeps, without the token.
    struct SoftwareWrapper {
        key: LessSafeKey,
        available: AtomicBool,
    }

    impl SoftwareWrapper {
        fn new(byte: u8) -> SoftwareWrapper {
            SoftwareWrapper {
                key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[byte; 32]).expect("key")),
                available: AtomicBool::new(true),
            }
        }
    }

    impl RootKeyWrapper for SoftwareWrapper {
        fn describe(&self) -> String {
            "a test key".to_owned()
        }

        fn wrap(
            &self,
            associated_data: &[u8],
            root_key_bytes: &[u8],
        ) -> Result<Vec<u8>, WrapperError> {
            if !self.available.load(Ordering::SeqCst) {
                return Err(WrapperError::Unavailable("the test token is gone".into()));
            }
            let mut out = vec![7u8; NONCE_LEN];
            out.extend_from_slice(root_key_bytes);
            let tag = self
                .key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([7u8; NONCE_LEN]),
                    Aad::from(associated_data),
                    &mut out[NONCE_LEN..],
                )
                .expect("seal");
            out.extend_from_slice(tag.as_ref());
            Ok(out)
        }

        fn unwrap(
            &self,
            associated_data: &[u8],
            wrapped: &[u8],
        ) -> Result<Zeroizing<Vec<u8>>, WrapperError> {
            if !self.available.load(Ordering::SeqCst) {
                return Err(WrapperError::Unavailable("the test token is gone".into()));
            }
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(wrapped.get(..NONCE_LEN).ok_or(WrapperError::WrongKey)?);
            let mut in_out = Zeroizing::new(wrapped[NONCE_LEN..].to_vec());
            let length = self
                .key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(associated_data),
                    &mut in_out,
                )
                .map_err(|_| WrapperError::WrongKey)?
                .len();
            in_out.truncate(length);
            Ok(in_out)
        }
    }

    fn listing(directory: &Path) -> Vec<(String, Vec<u8>)> {
        let mut entries: Vec<(String, Vec<u8>)> = std::fs::read_dir(directory)
            .expect("list")
            .map(|entry| {
                let entry = entry.expect("entry");
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    std::fs::read(entry.path()).expect("read"),
                )
            })
            .collect();
        entries.sort();
        entries
    }

    #[test]
    fn a_wrapped_key_opens_only_with_its_wrapping_key_and_refusals_touch_nothing() {
        let directory = tempfile::tempdir().expect("tempdir");
        let wrapper = SoftwareWrapper::new(1);
        let created =
            open_or_create(directory.path(), Protector::Wrapper(&wrapper)).expect("create");
        assert_eq!(
            held_forms(directory.path()).expect("forms"),
            vec![Form::Wrapped]
        );
        let stored = std::fs::read(directory.path().join(WRAPPED_FILE)).expect("read");
        assert!(
            !stored
                .windows(32)
                .any(|window| window == created.key_bytes())
        );
        let reopened =
            open_or_create(directory.path(), Protector::Wrapper(&wrapper)).expect("open");
        assert!(reopened.same_key_as(&created));

        let before = listing(directory.path());
        let other = SoftwareWrapper::new(2);
        assert!(matches!(
            open_or_create(directory.path(), Protector::Wrapper(&other)),
            Err(RootKeyError::WrongWrappingKey(_))
        ));
        wrapper.available.store(false, Ordering::SeqCst);
        assert!(matches!(
            open_or_create(directory.path(), Protector::Wrapper(&wrapper)),
            Err(RootKeyError::WrapperUnavailable(_))
        ));
        for protector in [
            Protector::Plaintext,
            Protector::Passphrase(b"a long passphrase"),
        ] {
            assert!(matches!(
                open_or_create(directory.path(), protector),
                Err(RootKeyError::HeldInAnotherForm { .. })
            ));
        }
        assert_eq!(
            listing(directory.path()),
            before,
            "a refused open writes nothing"
        );
    }

    #[test]
    fn migration_moves_the_same_key_and_removes_the_old_form() {
        let directory = tempfile::tempdir().expect("tempdir");
        let original = open_or_create(directory.path(), Protector::Plaintext).expect("create");
        let sealed = original.seal("p", b"", b"survives every move");
        let passphrase = Protector::Passphrase(b"a long passphrase");
        migrate(directory.path(), Protector::Plaintext, passphrase).expect("to passphrase");
        assert_eq!(
            held_forms(directory.path()).expect("forms"),
            vec![Form::Passphrase]
        );
        let wrapper = SoftwareWrapper::new(3);
        // A wrong passphrase moves nothing.
        assert!(matches!(
            migrate(
                directory.path(),
                Protector::Passphrase(b"another passphrase"),
                Protector::Wrapper(&wrapper)
            ),
            Err(RootKeyError::WrongPassphrase)
        ));
        assert_eq!(
            held_forms(directory.path()).expect("forms"),
            vec![Form::Passphrase]
        );
        migrate(directory.path(), passphrase, Protector::Wrapper(&wrapper)).expect("to the token");
        assert_eq!(
            held_forms(directory.path()).expect("forms"),
            vec![Form::Wrapped]
        );
        let moved = open_or_create(directory.path(), Protector::Wrapper(&wrapper)).expect("open");
        assert_eq!(
            moved.open("p", b"", &sealed).expect("open").as_slice(),
            b"survives every move"
        );
        assert!(matches!(
            migrate(
                directory.path(),
                Protector::Wrapper(&wrapper),
                Protector::Wrapper(&wrapper)
            ),
            Err(RootKeyError::SameForm(_))
        ));
    }

    #[test]
    fn an_interrupted_migration_finishes_when_run_again() {
        let directory = tempfile::tempdir().expect("tempdir");
        let original = open_or_create(directory.path(), Protector::Plaintext).expect("create");
        let wrapper = SoftwareWrapper::new(4);
        // As a crash after the new form was written leaves it.
        Protector::Wrapper(&wrapper)
            .write(directory.path(), &original)
            .expect("write");
        migrate(
            directory.path(),
            Protector::Plaintext,
            Protector::Wrapper(&wrapper),
        )
        .expect("finish");
        assert_eq!(
            held_forms(directory.path()).expect("forms"),
            vec![Form::Wrapped]
        );
        // A wrapped file holding another key is never taken for the moved one.
        let other_directory = tempfile::tempdir().expect("tempdir");
        open_or_create(other_directory.path(), Protector::Plaintext).expect("create");
        Protector::Wrapper(&wrapper)
            .write(other_directory.path(), &RootKey::generate())
            .expect("write");
        assert!(
            migrate(
                other_directory.path(),
                Protector::Plaintext,
                Protector::Wrapper(&wrapper)
            )
            .is_err()
        );
        assert!(other_directory.path().join(PLAINTEXT_FILE).exists());
    }
}
