//! The platform root key wrapped by an AES key inside a PKCS#11 token: the
//! [`RootKeyWrapper`] behind `hds up --root-key-pkcs11-*` (`hds_crypto::root_at_rest`).
//!
//! The token's key is a 256-bit AES secret key object (token, private, sensitive,
//! non-extractable) found by its `CKA_LABEL`. The root key is encrypted with `CKM_AES_GCM`
//! inside the token, under a random 96-bit IV, with the caller's associated data and a 128-bit
//! tag; what is returned (and kept in the data dir) is `IV || ciphertext || tag`. AES-GCM
//! rather than `CKM_AES_KEY_WRAP` because the root key is not a token object: it is plain data
//! to the token, and GCM authenticates it, so another key or an altered file fails to open
//! rather than yielding a wrong key.
//!
//! The module and login are shared with the vault's RSA-HSM keys (one `C_Initialize` per
//! process, see [`crate::pkcs11`]); the PIN is read, used for `C_Login` and dropped.

use std::sync::Mutex;

use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use hds_crypto::root_at_rest::{RootKeyWrapper, WrapperError};
use zeroize::Zeroizing;

use crate::pkcs11::{Pkcs11Config, Pkcs11Error, open_logged_in_session};

/// Length of the GCM IV.
const IV_LEN: usize = 12;
/// Length of the GCM tag, in bits.
const TAG_BITS: u64 = 128;
/// Length of the token's AES key, in bytes.
const AES_KEY_LEN: u64 = 32;

/// Whether a missing wrapping key may be generated in the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrappingKeyCreation {
    /// Only for a data dir with no root key yet (or a key being moved into the token): a new
    /// key wraps a root key nothing else depends on.
    GenerateIfMissing,
    /// For a data dir whose root key is already wrapped: a missing key is an error, never a
    /// new key.
    MustExist,
}

/// A logged-in session on the token and the handle of its wrapping key.
pub struct Pkcs11RootKeyWrapper {
    token_label: String,
    key_label: String,
    /// `Session` may move between threads but not be shared; wrapping happens at start and
    /// in `hds root-key`, so one session behind a lock is plenty.
    session: Mutex<Session>,
    key: ObjectHandle,
}

impl std::fmt::Debug for Pkcs11RootKeyWrapper {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.describe())
    }
}

impl Pkcs11RootKeyWrapper {
    /// Logs in to the configured token and finds the AES key labelled `key_label`,
    /// generating it when absent and `creation` allows.
    pub fn open(
        config: &Pkcs11Config,
        key_label: &str,
        creation: WrappingKeyCreation,
    ) -> Result<Pkcs11RootKeyWrapper, Pkcs11Error> {
        let session = open_logged_in_session(config)?;
        let token = config.token_label.clone();
        let key_error = |step: &'static str| {
            let token = token.clone();
            move |error: CryptokiError| Pkcs11Error::Key {
                token,
                step,
                reason: error.to_string(),
            }
        };
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(key_label.as_bytes().to_vec()),
            ])
            .map_err(key_error("search for the wrapping key"))?;
        let key = match (found.as_slice(), creation) {
            ([key], _) => *key,
            ([], WrappingKeyCreation::GenerateIfMissing) => {
                let template = [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::ValueLen(Ulong::from(AES_KEY_LEN)),
                    Attribute::Label(key_label.as_bytes().to_vec()),
                ];
                let key = session
                    .generate_key(&Mechanism::AesKeyGen, &template)
                    .map_err(key_error("generate the wrapping key"))?;
                tracing::info!(token = %token, key = %key_label, "generated the root key's wrapping key in the PKCS#11 token");
                key
            }
            ([], WrappingKeyCreation::MustExist) => {
                return Err(Pkcs11Error::KeyNotFound {
                    token,
                    key: key_label.to_owned(),
                });
            }
            (_, _) => {
                return Err(Pkcs11Error::AmbiguousKey {
                    token,
                    key: key_label.to_owned(),
                });
            }
        };
        Ok(Pkcs11RootKeyWrapper {
            token_label: config.token_label.clone(),
            key_label: key_label.to_owned(),
            session: Mutex::new(session),
            key,
        })
    }

    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>, WrapperError> {
        self.session
            .lock()
            .map_err(|_| WrapperError::Unavailable("PKCS#11 session lock poisoned".into()))
    }

    fn unavailable(&self, operation: &str, error: CryptokiError) -> WrapperError {
        WrapperError::Unavailable(format!(
            "{} failed to {operation} ({error})",
            self.describe()
        ))
    }
}

impl RootKeyWrapper for Pkcs11RootKeyWrapper {
    fn describe(&self) -> String {
        format!(
            "PKCS#11 token '{}', key '{}'",
            self.token_label, self.key_label
        )
    }

    fn wrap(&self, associated_data: &[u8], root_key_bytes: &[u8]) -> Result<Vec<u8>, WrapperError> {
        let mut iv = [0u8; IV_LEN];
        aws_lc_rs::rand::fill(&mut iv)
            .map_err(|_| WrapperError::Unavailable("the random number generator failed".into()))?;
        let mut wrapped = iv.to_vec();
        let mut iv_for_token = iv;
        let parameters = GcmParams::new(&mut iv_for_token, associated_data, Ulong::from(TAG_BITS))
            .map_err(|error| self.unavailable("set up AES-GCM", error))?;
        let ciphertext = self
            .session()?
            .encrypt(&Mechanism::AesGcm(parameters), self.key, root_key_bytes)
            .map_err(|error| self.unavailable("wrap the root key", error))?;
        wrapped.extend_from_slice(&ciphertext);
        Ok(wrapped)
    }

    fn unwrap(
        &self,
        associated_data: &[u8],
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, WrapperError> {
        if wrapped.len() < IV_LEN + 16 {
            return Err(WrapperError::WrongKey);
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&wrapped[..IV_LEN]);
        let parameters = GcmParams::new(&mut iv, associated_data, Ulong::from(TAG_BITS))
            .map_err(|error| self.unavailable("set up AES-GCM", error))?;
        match self
            .session()?
            .decrypt(&Mechanism::AesGcm(parameters), self.key, &wrapped[IV_LEN..])
        {
            Ok(plaintext) => Ok(Zeroizing::new(plaintext)),
            // A tag that does not verify: another key, or an altered file. SoftHSM reports
            // some failed checks as a general error; the operator sees the key's name either
            // way.
            Err(CryptokiError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::GeneralError
                | RvError::FunctionFailed,
                _,
            )) => Err(WrapperError::WrongKey),
            Err(error) => Err(self.unavailable("unwrap the root key", error)),
        }
    }
}
