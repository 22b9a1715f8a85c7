//! The link between a DICOM service and its customer-managed key (CMK).
//!
//! A DICOM service's data is encrypted under its service root key, which is stored only
//! wrapped by the customer's key-encryption key (KEK) in a key vault. The service reaches the
//! vault as its managed identity. This crate holds everything on that path:
//!
//! - [`url`]: key URLs (`https://host[:port]/keys/{name}[/{version}]`).
//! - [`destination`]: where a managed identity's token may go ([`TokenDestinations`]): vaults
//!   this hds serves, hosts named by the composition, and Azure's vault hosts when an Azure
//!   tenant is configured; checked before every request, before any connection.
//! - [`client`]: a Key Vault REST client (get key, wrapKey, unwrapKey) for hds's own vault
//!   and Azure Key Vault alike, with the vault's errors typed ([`error::CmkError`]).
//! - [`token`]: the [`token::TokenSource`] seam for managed-identity tokens, and a cache.
//! - [`remote`]: [`remote::RemoteKek`], the vault key as a `hds_crypto` key-encryption key.
//! - [`validate`]: the requirements a key must meet for a DICOM service, each failure with
//!   its own error code and a message that says what to fix.
//! - [`monitor`]: the key-access monitor and the 30-minute rule, its state kept in the shared
//!   database (component `cmk`, [`store`]).
//!
//! Design choices:
//! - The client only ever sends a token over HTTPS, to the host the key URL names, and only
//!   when [`TokenDestinations`] allows that host; it follows no redirects.
//! - Tokens, wrapped and unwrapped key bytes never appear in errors or logs; error messages
//!   carry the vault's own explanation (principal ids, scopes), which names no secret.
//! - Vault-level settings (tenant, soft delete, purge protection, firewall) are not visible on
//!   a vault's data plane, so they come from a [`validate::VaultDirectory`] the composition
//!   root implements; for a vault hds does not host they are skipped with a warning, and the
//!   tenant is still checked through the vault's bearer challenge.
//! - The monitor's probe is a trait ([`monitor::KeyProbe`]) and its clock too, so that the
//!   30-minute rule is tested without waiting.
#![deny(missing_docs)]

pub mod client;
pub mod destination;
pub mod entra;
pub mod error;
pub mod monitor;
pub mod remote;
pub mod store;
pub mod token;
pub mod url;
pub mod validate;

pub use client::{ClientConfig, KeyFacts, KeyVaultClient, VAULT_RESOURCE, WrapAlgorithm};
pub use destination::{AZURE_VAULT_DNS_SUFFIXES, TokenDestinations};
pub use entra::{EntraApplication, EntraTokenSource, RoutedTokenSource};
pub use error::{CmkError, ForbiddenReason};
pub use monitor::{
    CUSTOMER_MANAGED_KEY_ACCESS_LOST, Clock, KeyAccessMonitor, KeyAccessState, KeyBinding,
    KeyProbe, MonitorConfig, MonitorError, SystemClock, VaultKeyProbe,
};
pub use remote::RemoteKek;
pub use token::{CachingTokenSource, TokenSource};
pub use url::{KeyUrl, KeyUrlError};
pub use validate::{
    KeyUser, KeyValidator, NoVaultDirectory, ValidatedKey, ValidationCode, ValidationError,
    VaultDirectory, VaultFacts,
};
