//! Envelope encryption for hds.
//!
//! - [`root`]: the platform root key, under which platform secrets (vault keys, token-signing
//!   keys, the TLS CA key) are sealed at rest.
//! - [`root_at_rest`]: the root key in a data dir, in plaintext, sealed under a passphrase or
//!   wrapped by a token's key, and the explicit move between those forms.
//! - [`keys`]: the key hierarchy under the customer's key-encryption key (KEK): service root
//!   key, index keys, study keys, blob keys, and the [`keys::KeyEncryptionKey`] seam that a
//!   vault client or [`keys::LocalRsaKek`] implements.
//! - [`stream`]: sealed streams, the at-rest format of every blob: segmented AES-256-GCM with
//!   random access by plaintext range (`docs/sealed-format.md`).
//!
//! Design choices:
//! - All primitives come from aws-lc-rs (AES-256-GCM, HKDF-SHA256, HMAC-SHA256, RSA-OAEP);
//!   nothing is implemented here beyond their composition.
//! - Plaintext key bytes never leave this crate: key types expose operations, not bytes, and
//!   are zeroized on drop. The one exception is the KEK seam, which must hand the service root
//!   key to the vault's wrapKey, and the root-key wrapper seam, which must hand the root key to a
//!   token to wrap.
//! - Every ciphertext is bound to what it protects (purpose, service, study, blob name, index
//!   row) through the key derivation or the associated data, so copying ciphertext elsewhere
//!   makes it fail to open rather than open in the wrong place.
//! - Every format starts with a version byte; openers refuse versions they do not know.
//! - Secrets are compared in constant time; errors and `Debug` output carry no key material.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod index_root;
mod kdf;
pub mod keys;
pub mod root;
pub mod root_at_rest;
mod secret;
pub mod stream;

pub use secret::SecretBytes;
