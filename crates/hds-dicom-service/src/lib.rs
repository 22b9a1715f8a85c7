//! What runs hds's DICOM services.
//!
//! **Architecture invariant:** a service's data (keyring, index rows, blobs, key-access
//! state) is keyed by its internal service id ([`service_ids`]), never by its
//! `{workspace}/{service}` name: the data belongs to the full resource id, and survives a
//! move of the resource.
#![deny(missing_docs)]

pub mod service_ids;

pub use service_ids::{Claimed, ServiceIdError, ServiceIds};
