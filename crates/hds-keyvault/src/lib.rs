//! hds's key vault: enough of Azure Key Vault's keys REST API for the official SDKs
//! (`azure-keyvault-keys`, `azure-identity`) to work against it, and a Rust API for the
//! control plane (`Microsoft.KeyVault/vaults` and `vaults/keys`).
//!
//! # Layout
//! - [`model`]: vaults (tenant, soft delete, purge protection, RBAC or access policies,
//!   firewall) and versioned RSA keys, without wire formats.
//! - [`service`]: [`service::KeyVaultService`], the domain over the shared database
//!   (component `keyvault` of `hds-db`), one module per concern (vaults, key lifecycle,
//!   deletion and purge protection, backups, cryptographic operations, PKCS#11 objects,
//!   sealing, rows). The ARM provider calls it directly (`create_or_update_vault`,
//!   `create_key_if_absent`, `get_key`, ...).
//! - [`rotation`]: key rotation policies (lifetime actions, expiry) and when a rotation is
//!   due; the service stores them and rotates due keys (`spawn_rotation_task`).
//! - [`material`]: RSA over aws-lc-rs (OAEP-SHA1/SHA256, PKCS#1 v1.5, RS*/PS* signatures).
//! - [`pkcs11`]: RSA-HSM keys generated and used inside a PKCS#11 token, when one is
//!   configured ([`Pkcs11Config`]); [`pkcs11_root_key`]: the platform root key wrapped by an
//!   AES key in a token (`hds up --root-key-pkcs11-*`).
//! - [`access`]: the [`access::VaultAccessControl`] trait (tokens and RBAC, implemented over
//!   hds-identity by the composition root), access policies and the firewall.
//! - [`http`]: the data plane router (a gate, then routes by resource); [`listeners`]: one HTTPS listener per vault, or Host
//!   routing under a DNS domain.
//!
//! # Invariants
//! - Private key material never leaves this crate in plaintext: it is sealed under the root
//!   key at rest (bound to vault, key and version), held in `Zeroizing` buffers while sealed or
//!   opened, and returned only as public JWK parts. Backups are sealed under the root key too,
//!   so they restore only into this hds; RSA-HSM keys are never backed up.
//! - With a PKCS#11 token configured, new RSA-HSM key versions live in the token
//!   (sensitive, non-extractable): the database holds only their public key and `CKA_ID`.
//!   Without one, RSA-HSM keys are sealed software keys that are never exported.
//! - The data plane is HTTPS only and host-addressed: the SDKs require both.
//! - Every rejection is in Key Vault's error shape and says what to change; 5xx bodies say
//!   nothing about the cause.
#![deny(missing_docs)]

pub mod access;
pub mod error;
pub mod http;
pub mod listeners;
pub mod material;
pub mod model;
pub mod pkcs11;
pub mod pkcs11_root_key;
pub mod rotation;
pub mod service;

pub use access::{Caller, StaticAccessControl, VaultAccessControl};
pub use error::VaultError;
pub use http::{DataPlaneState, VaultSelector, data_plane_router};
pub use listeners::{VaultListeners, host_routed_router};
pub use pkcs11::{PinSource, Pkcs11Config, Pkcs11Error};
pub use pkcs11_root_key::{Pkcs11RootKeyWrapper, WrappingKeyCreation};
pub use service::{KeyVaultService, ServiceConfig, VaultAddressing, spawn_rotation_task};
