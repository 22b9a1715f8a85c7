//! The Azure-Resource-Manager-compatible control plane of hds.
//!
//! What ARM is to Azure, this crate is to hds: one REST surface
//! (`/subscriptions/{sub}/resourceGroups/{rg}/providers/{Namespace}/{type}/{name}...`) over
//! which every resource type is created, read, updated, listed, deleted and moved, with
//! ARM's ids, `api-version` rule, error shape, provisioning states and long-running
//! operation protocol, plus template deployments.
//!
//! The crate owns the generic parts and nothing type-specific:
//! - [`ResourceId`]: parsing, formatting and case-insensitive identity of ids;
//! - [`ResourceStore`]: every resource as one row of the shared database (component `arm`);
//! - [`ResourceProvider`]: the trait a resource type implements (validate, enrich, act);
//!   types nobody registered answer `NoRegisteredProviderFound`;
//! - [`ArmAccessControl`]: authentication and RBAC, implemented over the identity service
//!   elsewhere ([`AllowAll`] for tests);
//! - [`Arm`]: the core, and [`router`]: its HTTP surface;
//! - template deployments ([`Arm::deploy`], and `Microsoft.Resources/deployments` over HTTP).
//!
//! **Architecture invariant:** this crate knows nothing of key vaults, identities or DICOM;
//! providers know nothing of HTTP paths or the ARM error wire format beyond [`ArmError`].
#![deny(missing_docs)]

mod access;
mod error;
mod filter;
mod http;
mod id;
mod lenient;
mod names;
mod provider;
mod service;
mod store;
mod template;

pub use access::{AllowAll, ArmAccessControl, Caller, MANAGEMENT_AUDIENCE};
pub use error::ArmError;
pub use filter::{
    FilterClause, MAX_FILTER_BYTES, MAX_FILTER_CLAUSES, invalid_filter, parse_filter,
};
pub use http::{handle, is_arm_path, router};
pub use id::{ResourceId, ResourceIdError};
pub use names::printable;
pub use provider::{
    ArmFuture, PlainProvider, ProviderResponse, RequestContext, ResourceProvider, merge_patch,
};
pub use service::{Arm, ArmBuilder, ArmConfig, DEPLOYMENTS_TYPE, Subscription, normalize_location};
pub use store::{
    COMPONENT, MIGRATIONS, Operation, OperationStatus, PutRequest, Resource, ResourceStore,
    StoreError,
};
/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub use template::fuzzing;
