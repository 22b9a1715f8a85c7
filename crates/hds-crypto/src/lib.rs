//! Envelope encryption for hds.
//!
//! - [`root`]: the platform root key, under which platform secrets are sealed at rest.
//! - [`stream`]: sealed streams, the on-disk format of every blob (segmented AES-256-GCM,
//!   random access by plaintext range).
//! - [`keys`]: the key hierarchy under the customer's key-encryption key.
#![deny(missing_docs)]

mod kdf;
pub mod keys;
pub mod root;
pub mod stream;
