//! What runs hds's DICOM services: the [`DicomHost`] behind the control plane's
//! `dicomservices` provider ([`hds_providers::DicomServiceHost`]) and the DICOMweb API's
//! service lookup ([`hds_dicomweb::DicomServiceResolver`]).
//!
//! It owns the domain logic of a service's life: opening or creating its key hierarchy under
//! a customer-managed key (validated first) or a platform-managed one, registering it with the
//! key-access monitor and dropping its keys while access is lost, following a versionless
//! key's latest version (the root key is re-wrapped, no data re-encrypted), and
//! crypto-shredding its data when it is deleted. Storing an instance (with the study-key
//! protocol and its retries) is one call of the index, `Index::store_sealed_instance`.
//!
//! **Architecture invariant:** a service's data (keyring, index rows, blobs, key-access
//! state) is keyed by its internal service id ([`service_ids`]), never by its
//! `{workspace}/{service}` names: the data belongs to the full resource id, and survives a
//! move of the resource. The names are only the data plane's route, unambiguous because
//! workspace names are unique.
#![deny(missing_docs)]

mod host;
pub mod service_ids;

pub use host::{DicomHost, DicomHostParts, HostError, ServedService, service_route};
pub use service_ids::{Claimed, ServiceIdError, ServiceIds};
