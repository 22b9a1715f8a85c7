//! hds's key vault: an Azure Key Vault compatible keys API.
#![deny(missing_docs)]

pub mod error;
pub mod material;
pub mod model;
pub mod service;
