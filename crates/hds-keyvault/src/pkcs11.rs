//! RSA-HSM keys inside a PKCS#11 token.
//!
//! When the service is opened with a [`Pkcs11Config`], each new RSA-HSM key version is a key
//! pair generated (or an imported key created) inside the token: private, sensitive and
//! non-extractable. The database keeps only the public key and the object's `CKA_ID`; decrypt,
//! unwrap and sign run in the token, while encrypt, wrap and verify need only the public key and
//! run in software.
//!
//! The module is loaded at run time (no build-time C dependency). `C_Initialize` is
//! process-wide, so a module is loaded and initialized once per process and kept for its
//! lifetime (see [`loaded_module`]); every service on the same module shares it.
//!
//! The user PIN is read from a file or an environment variable at open time, handed to
//! `C_Login` and dropped; it is never logged, stored or put into an error.

use std::collections::{BTreeMap, HashMap};
use std::os::raw::c_ulong;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::{AuthPin, Ulong};
use zeroize::Zeroizing;

use crate::error::VaultError;
use crate::material::{
    EncryptionAlgorithm, RsaPrivateComponents, SignatureAlgorithm, check_digest_length,
};

/// Where the token's user PIN comes from. The PIN itself is never part of the configuration,
/// so the configuration can be printed and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN (one trailing newline is ignored). It must not be readable by
    /// group or others.
    File(PathBuf),
    /// The name of an environment variable holding the PIN.
    Environment(String),
}

/// How to reach the PKCS#11 token that holds RSA-HSM keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module_path: PathBuf,
    /// The label of the (initialized) token to use.
    pub token_label: String,
    /// Where the user PIN is read from.
    pub user_pin: PinSource,
}

/// Why the token could not be opened. Messages name the module, the token or the PIN's source,
/// never the PIN.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs11Error {
    /// The module could not be loaded or initialized.
    #[error(
        "PKCS#11 module {path} could not be loaded or initialized ({reason}); check pkcs11.module_path (for SoftHSM: install softhsm2, module /usr/lib/softhsm/libsofthsm2.so)"
    )]
    Module {
        /// The module path.
        path: String,
        /// What the loader or the module said.
        reason: String,
    },
    /// No initialized token has that label.
    #[error(
        "no initialized PKCS#11 token is labelled '{label}' (tokens found: {found}); initialize one (softhsm2-util --init-token --free --label {label}) or fix pkcs11.token_label"
    )]
    TokenNotFound {
        /// The label asked for.
        label: String,
        /// The labels present.
        found: String,
    },
    /// The PIN could not be read from its source.
    #[error("the PKCS#11 user PIN could not be read: {0}")]
    Pin(String),
    /// The token holds no AES key with the label asked for.
    #[error(
        "PKCS#11 token '{token}' holds no AES key labelled '{key}'; check --root-key-pkcs11-key (a key is generated only for a data dir that has no root key yet)"
    )]
    KeyNotFound {
        /// The token label.
        token: String,
        /// The key label asked for.
        key: String,
    },
    /// The token holds more than one AES key with that label, so which one wraps is unclear.
    #[error(
        "PKCS#11 token '{token}' holds more than one AES key labelled '{key}'; give each its own label"
    )]
    AmbiguousKey {
        /// The token label.
        token: String,
        /// The key label.
        key: String,
    },
    /// The token could not find or generate the key.
    #[error("PKCS#11 token '{token}' failed to {step} ({reason})")]
    Key {
        /// The token label.
        token: String,
        /// What failed.
        step: &'static str,
        /// The module's return value.
        reason: String,
    },
    /// The token refused the session or the login.
    #[error("PKCS#11 token '{label}' refused {step} ({reason}); check the user PIN and the token")]
    Session {
        /// The token label.
        label: String,
        /// What was refused (open session, login).
        step: &'static str,
        /// The module's return value.
        reason: String,
    },
}

/// The public half of a key pair generated in the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPublicKey {
    /// The modulus, big-endian without leading zeros.
    pub modulus: Vec<u8>,
    /// The public exponent, big-endian without leading zeros.
    pub public_exponent: Vec<u8>,
}

/// A logged-in session on the configured token.
pub struct Pkcs11Token {
    label: String,
    /// One read-write session: a `Session` may move between threads but not be shared, and
    /// the token's RSA operations take about a millisecond, so serializing them is cheap.
    session: Mutex<Session>,
    /// Private-key handles by `CKA_ID`, so each operation does not search the token again.
    handles: Mutex<HashMap<Vec<u8>, ObjectHandle>>,
}

impl std::fmt::Debug for Pkcs11Token {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Pkcs11Token")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// Modules loaded in this process by path. PKCS#11 initialization is per process: a second
/// `C_Initialize` fails and a `C_Finalize` would end every other user's sessions, so each module
/// is initialized once and never finalized or unloaded.
static LOADED_MODULES: Mutex<BTreeMap<PathBuf, Pkcs11>> = Mutex::new(BTreeMap::new());

/// The process's context for the module at `path`, loading and initializing it the first time.
fn loaded_module(path: &Path) -> Result<Pkcs11, Pkcs11Error> {
    let module_error = |reason: String| Pkcs11Error::Module {
        path: path.display().to_string(),
        reason,
    };
    let mut loaded = LOADED_MODULES
        .lock()
        .map_err(|_| module_error("module registry lock poisoned".into()))?;
    if let Some(context) = loaded.get(path) {
        return Ok(context.clone());
    }
    let context = Pkcs11::new(path).map_err(|error| module_error(error.to_string()))?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(error) => return Err(module_error(error.to_string())),
    }
    loaded.insert(path.to_owned(), context.clone());
    Ok(context)
}

/// Reads the PIN from its source.
fn read_pin(source: &PinSource) -> Result<AuthPin, Pkcs11Error> {
    let text = match source {
        PinSource::File(path) => {
            refuse_shared_pin_file(path)?;
            let bytes = Zeroizing::new(std::fs::read(path).map_err(|error| {
                Pkcs11Error::Pin(format!("cannot read {}: {}", path.display(), error.kind()))
            })?);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| Pkcs11Error::Pin(format!("{} is not UTF-8 text", path.display())))?;
            let trimmed = text
                .strip_suffix('\n')
                .map(|line| line.strip_suffix('\r').unwrap_or(line))
                .unwrap_or(text);
            Zeroizing::new(trimmed.to_owned())
        }
        PinSource::Environment(name) => Zeroizing::new(std::env::var(name).map_err(|_| {
            Pkcs11Error::Pin(format!(
                "environment variable {name} is not set (or not UTF-8)"
            ))
        })?),
    };
    if text.is_empty() {
        return Err(Pkcs11Error::Pin("the PIN is empty".into()));
    }
    Ok(AuthPin::from(text.as_str()))
}

/// A PIN file others can read is a leaked PIN: refuse it, as for every secret file.
#[cfg(unix)]
fn refuse_shared_pin_file(path: &Path) -> Result<(), Pkcs11Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = std::fs::metadata(path).map_err(|error| {
        Pkcs11Error::Pin(format!("cannot read {}: {}", path.display(), error.kind()))
    })?;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Pkcs11Error::Pin(format!(
            "{} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_shared_pin_file(_path: &Path) -> Result<(), Pkcs11Error> {
    Ok(())
}

/// Loads the module, finds the token by label, opens a read-write session and logs the user in.
pub(crate) fn open_logged_in_session(config: &Pkcs11Config) -> Result<Session, Pkcs11Error> {
    let context = loaded_module(&config.module_path)?;
    let module_error = |error: CryptokiError| Pkcs11Error::Module {
        path: config.module_path.display().to_string(),
        reason: error.to_string(),
    };
    let mut found = Vec::new();
    let mut chosen = None;
    for slot in context
        .get_slots_with_initialized_token()
        .map_err(module_error)?
    {
        let info = context.get_token_info(slot).map_err(module_error)?;
        let label = info.label().trim_end().to_owned();
        if label == config.token_label && chosen.is_none() {
            chosen = Some(slot);
        }
        found.push(label);
    }
    let slot = chosen.ok_or_else(|| Pkcs11Error::TokenNotFound {
        label: config.token_label.clone(),
        found: if found.is_empty() {
            "none".to_owned()
        } else {
            found.join(", ")
        },
    })?;
    let session_error = |step: &'static str| {
        let label = config.token_label.clone();
        move |error: CryptokiError| Pkcs11Error::Session {
            label,
            step,
            reason: error.to_string(),
        }
    };
    let session = context
        .open_rw_session(slot)
        .map_err(session_error("a read-write session"))?;
    let pin = read_pin(&config.user_pin)?;
    match session.login(UserType::User, Some(&pin)) {
        // Login state is per application and token: another service in this process may
        // have logged in already.
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(error) => return Err(session_error("the user login")(error)),
    }
    Ok(session)
}

/// The `DigestInfo` prefix (RFC 8017 section 9.2, note 1) of a PKCS#1 v1.5 signature over a
/// digest of this length: `CKM_RSA_PKCS` signs the DigestInfo as given.
fn digest_info_prefix(algorithm: SignatureAlgorithm) -> Option<&'static [u8]> {
    const SHA256: &[u8] = &[
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    const SHA384: &[u8] = &[
        0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0x04, 0x30,
    ];
    const SHA512: &[u8] = &[
        0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
        0x05, 0x00, 0x04, 0x40,
    ];
    match algorithm {
        SignatureAlgorithm::Rs256 => Some(SHA256),
        SignatureAlgorithm::Rs384 => Some(SHA384),
        SignatureAlgorithm::Rs512 => Some(SHA512),
        SignatureAlgorithm::Ps256 | SignatureAlgorithm::Ps384 | SignatureAlgorithm::Ps512 => None,
    }
}

fn pss_params(algorithm: SignatureAlgorithm) -> Option<PkcsPssParams> {
    let (hash_alg, mgf, salt_length): (MechanismType, PkcsMgfType, c_ulong) = match algorithm {
        SignatureAlgorithm::Ps256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32),
        SignatureAlgorithm::Ps384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48),
        SignatureAlgorithm::Ps512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64),
        SignatureAlgorithm::Rs256 | SignatureAlgorithm::Rs384 | SignatureAlgorithm::Rs512 => {
            return None;
        }
    };
    Some(PkcsPssParams {
        hash_alg,
        mgf,
        s_len: Ulong::from(salt_length),
    })
}

fn token_failure(operation: &str, error: CryptokiError) -> VaultError {
    VaultError::Internal(format!("PKCS#11 {operation} failed: {error}"))
}

impl Pkcs11Token {
    /// Loads the module, finds the token by label, opens a read-write session and logs the
    /// user in.
    pub fn open(config: &Pkcs11Config) -> Result<Pkcs11Token, Pkcs11Error> {
        Ok(Pkcs11Token {
            label: config.token_label.clone(),
            session: Mutex::new(open_logged_in_session(config)?),
            handles: Mutex::new(HashMap::new()),
        })
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>, VaultError> {
        self.session
            .lock()
            .map_err(|_| VaultError::Internal("PKCS#11 session lock poisoned".into()))
    }

    /// The attributes every private key of the vault has in the token: kept on the token,
    /// usable only after login, never revealed, for decrypt/unwrap/sign only.
    fn private_key_template(object_id: &[u8], label: &str) -> Vec<Attribute> {
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Decrypt(true),
            Attribute::Unwrap(true),
            Attribute::Sign(true),
            Attribute::Id(object_id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    }

    /// Generates an RSA key pair of `bits` bits (exponent 65537) in the token. The private key
    /// is a token object with `CKA_ID` = `object_id` and `CKA_LABEL` = `label`; the public key
    /// is a session object, read and destroyed at once (the vault keeps the public key itself).
    pub fn generate_rsa(
        &self,
        bits: u32,
        object_id: &[u8],
        label: &str,
    ) -> Result<TokenPublicKey, VaultError> {
        let public_template = [
            Attribute::Token(false),
            Attribute::ModulusBits(Ulong::from(c_ulong::from(bits))),
            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            Attribute::Encrypt(true),
            Attribute::Wrap(true),
            Attribute::Verify(true),
            Attribute::Id(object_id.to_vec()),
        ];
        let private_template = Pkcs11Token::private_key_template(object_id, label);
        let session = self.session()?;
        let (public, private) = session
            .generate_key_pair(
                &Mechanism::RsaPkcsKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(|error| token_failure("key pair generation", error))?;
        let attributes = session
            .get_attributes(
                public,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .map_err(|error| token_failure("reading the public key", error));
        // The public key is a session object; destroy it now rather than at session close.
        let _ = session.destroy_object(public);
        let attributes = attributes?;
        let mut modulus = None;
        let mut public_exponent = None;
        for attribute in attributes {
            match attribute {
                Attribute::Modulus(value) => modulus = Some(value),
                Attribute::PublicExponent(value) => public_exponent = Some(value),
                _ => {}
            }
        }
        let (Some(modulus), Some(public_exponent)) = (modulus, public_exponent) else {
            let _ = session.destroy_object(private);
            return Err(VaultError::Internal(
                "the PKCS#11 token returned no modulus or exponent".into(),
            ));
        };
        drop(session);
        self.remember(object_id, private)?;
        Ok(TokenPublicKey {
            modulus: strip_leading_zeros(&modulus).to_vec(),
            public_exponent: strip_leading_zeros(&public_exponent).to_vec(),
        })
    }

    /// Creates an imported RSA private key in the token (sensitive and non-extractable from
    /// then on). The caller has checked the components form one valid key.
    pub fn import_rsa(
        &self,
        components: &RsaPrivateComponents,
        object_id: &[u8],
        label: &str,
    ) -> Result<(), VaultError> {
        let mut template = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Modulus(components.n.clone()),
            Attribute::PublicExponent(components.e.clone()),
        ];
        template.extend(Pkcs11Token::private_key_template(object_id, label));
        // The private components pass through this template on their way into the token; it
        // is cleared right after the call.
        template.push(Attribute::PrivateExponent(components.d.to_vec()));
        template.push(Attribute::Prime1(components.p.to_vec()));
        template.push(Attribute::Prime2(components.q.to_vec()));
        template.push(Attribute::Exponent1(components.dp.to_vec()));
        template.push(Attribute::Exponent2(components.dq.to_vec()));
        template.push(Attribute::Coefficient(components.qi.to_vec()));
        let created = self
            .session()?
            .create_object(&template)
            .map_err(|error| token_failure("key import", error));
        clear_template(&mut template);
        let handle = created?;
        self.remember(object_id, handle)
    }

    /// Decrypts (or unwraps) with the private key `object_id`. RSA-OAEP (SHA-1) and RSA1_5
    /// only: callers refuse RSA-OAEP-256 beforehand with a message for the client.
    pub fn decrypt(
        &self,
        object_id: &[u8],
        algorithm: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let mechanism = match algorithm {
            EncryptionAlgorithm::RsaOaep => Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
                MechanismType::SHA1,
                PkcsMgfType::MGF1_SHA1,
                PkcsOaepSource::empty(),
            )),
            EncryptionAlgorithm::Rsa15 => Mechanism::RsaPkcs,
            EncryptionAlgorithm::RsaOaep256 => return Err(oaep_256_refused()),
        };
        let handle = self.handle(object_id)?;
        match self.session()?.decrypt(&mechanism, handle, ciphertext) {
            Ok(plaintext) => Ok(Zeroizing::new(plaintext)),
            Err(CryptokiError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange,
                _,
            )) => Err(undecryptable()),
            // SoftHSM reports a padding check that fails as a general error. A ciphertext that
            // does not decrypt is by far the likeliest cause, so the client hears that, and the
            // operator finds the token's answer in the log in case the token itself failed.
            Err(error @ CryptokiError::Pkcs11(RvError::GeneralError, _)) => {
                tracing::warn!(token = %self.label, %error, "PKCS#11 decryption failed; answered as an undecryptable value");
                Err(undecryptable())
            }
            Err(error) => Err(token_failure("decryption", error)),
        }
    }

    /// Signs a precomputed digest with the private key `object_id`.
    pub fn sign_digest(
        &self,
        object_id: &[u8],
        algorithm: SignatureAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        check_digest_length(algorithm, digest)?;
        let handle = self.handle(object_id)?;
        let signed = match (digest_info_prefix(algorithm), pss_params(algorithm)) {
            (Some(prefix), _) => {
                let mut digest_info = Vec::with_capacity(prefix.len() + digest.len());
                digest_info.extend_from_slice(prefix);
                digest_info.extend_from_slice(digest);
                self.session()?
                    .sign(&Mechanism::RsaPkcs, handle, &digest_info)
            }
            (None, Some(params)) => {
                self.session()?
                    .sign(&Mechanism::RsaPkcsPss(params), handle, digest)
            }
            (None, None) => {
                return Err(VaultError::Internal(
                    "signature algorithm without a PKCS#11 mechanism".into(),
                ));
            }
        };
        signed.map_err(|error| token_failure("signing", error))
    }

    /// Destroys the private key `object_id` (a purged key version). Absent objects are fine:
    /// a purge that failed half-way is retried.
    pub fn destroy(&self, object_id: &[u8]) -> Result<(), VaultError> {
        let session = self.session()?;
        let handles = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(object_id.to_vec()),
            ])
            .map_err(|error| token_failure("object search", error))?;
        for handle in handles {
            session
                .destroy_object(handle)
                .map_err(|error| token_failure("object destruction", error))?;
        }
        drop(session);
        if let Ok(mut cached) = self.handles.lock() {
            cached.remove(object_id);
        }
        Ok(())
    }

    /// The handle of the private key `object_id`, from the cache or the token.
    fn handle(&self, object_id: &[u8]) -> Result<ObjectHandle, VaultError> {
        if let Some(handle) = self
            .handles
            .lock()
            .map_err(|_| VaultError::Internal("PKCS#11 handle cache lock poisoned".into()))?
            .get(object_id)
        {
            return Ok(*handle);
        }
        let found = self
            .session()?
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(object_id.to_vec()),
            ])
            .map_err(|error| token_failure("object search", error))?;
        let handle = found.first().copied().ok_or_else(|| {
            VaultError::Internal(format!(
                "the private key of this version is missing from PKCS#11 token '{}'",
                self.label
            ))
        })?;
        self.remember(object_id, handle)?;
        Ok(handle)
    }

    fn remember(&self, object_id: &[u8], handle: ObjectHandle) -> Result<(), VaultError> {
        self.handles
            .lock()
            .map_err(|_| VaultError::Internal("PKCS#11 handle cache lock poisoned".into()))?
            .insert(object_id.to_vec(), handle);
        Ok(())
    }
}

fn undecryptable() -> VaultError {
    VaultError::BadParameter(
        "the value could not be decrypted: check that it was encrypted with this key version's public key, with the same algorithm, and sent base64url-encoded".into(),
    )
}

/// The refusal of RSA-OAEP-256 for a key held in the token.
pub(crate) fn oaep_256_refused() -> VaultError {
    VaultError::BadParameter(
        "this RSA-HSM key is held in a PKCS#11 token, and the HSM supports RSA-OAEP (SHA-1) only: use alg RSA-OAEP (or RSA1_5) for encrypt, decrypt, wrapKey and unwrapKey with this key".into(),
    )
}

/// Zeroes the byte values of a template that carried private key components.
fn clear_template(template: &mut [Attribute]) {
    use zeroize::Zeroize as _;
    for attribute in template {
        match attribute {
            Attribute::PrivateExponent(value)
            | Attribute::Prime1(value)
            | Attribute::Prime2(value)
            | Attribute::Exponent1(value)
            | Attribute::Exponent2(value)
            | Attribute::Coefficient(value) => value.zeroize(),
            _ => {}
        }
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_files_must_be_private_and_trimmed() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("pin");
        std::fs::write(&path, "5678\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = read_pin(&PinSource::File(path.clone())).unwrap_err();
        assert!(refused.to_string().contains("chmod 600"), "{refused}");
        assert!(!refused.to_string().contains("5678"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pin = read_pin(&PinSource::File(path)).unwrap();
        use secrecy::ExposeSecret as _;
        assert_eq!(pin.expose_secret(), "5678");
        let missing = read_pin(&PinSource::Environment(
            "HDS_KEYVAULT_TEST_UNSET_PIN_VARIABLE".into(),
        ))
        .unwrap_err();
        assert!(missing.to_string().contains("is not set"), "{missing}");
    }

    #[test]
    fn digest_info_prefixes_announce_the_digest_length() {
        for (algorithm, length) in [
            (SignatureAlgorithm::Rs256, 32),
            (SignatureAlgorithm::Rs384, 48),
            (SignatureAlgorithm::Rs512, 64),
        ] {
            let prefix = digest_info_prefix(algorithm).unwrap();
            assert_eq!(usize::from(prefix[prefix.len() - 1]), length);
            assert_eq!(usize::from(prefix[1]) + 2, prefix.len() + length);
        }
        assert!(digest_info_prefix(SignatureAlgorithm::Ps256).is_none());
        assert!(pss_params(SignatureAlgorithm::Rs256).is_none());
    }
}
