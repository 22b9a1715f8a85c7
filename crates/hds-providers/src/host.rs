//! The seam between the control plane and the DICOM services it configures.
//!
//! The `dicomservices` provider validates the ARM side (names, identities, which identity
//! reaches the key) and keeps the resource; what a DICOM service *is* (its key hierarchy, its
//! data, the key-access monitor) lives behind [`DicomServiceHost`], implemented by the
//! composition root over the crypto and DICOMweb crates.

use std::time::Duration;

use hds_arm::ArmFuture;
use time::OffsetDateTime;

/// The default time after which lost key access latches (`--cmk-lost-access-latch`).
pub const DEFAULT_LOST_ACCESS_LATCH: Duration = Duration::from_secs(30 * 60);

/// Which managed identity of a DICOM service reaches its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyIdentityKind {
    /// The service's own system-assigned identity.
    SystemAssigned,
    /// A user-assigned identity attached to the service.
    UserAssigned {
        /// The `Microsoft.ManagedIdentity/userAssignedIdentities` resource id.
        resource_id: String,
    },
}

/// The customer-managed key of a DICOM service and the identity that reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBinding {
    /// `properties.encryption.customerManagedKeyEncryption.keyEncryptionKeyUrl`, as given
    /// (with or without a version).
    pub key_url: String,
    /// The object id of the identity that asks the vault for tokens and wraps/unwraps.
    pub principal_id: String,
    /// Its client id.
    pub client_id: String,
    /// Which identity it is.
    pub identity_kind: KeyIdentityKind,
}

/// What a DICOM service should be, as one PUT or PATCH left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomServiceSpec {
    /// The ARM id of the `dicomservices` resource.
    pub resource_id: String,
    /// The workspace name.
    pub workspace: String,
    /// The service name.
    pub service: String,
    /// The tenant the service and its vault belong to.
    pub tenant_id: String,
    /// The customer-managed key, when one is configured.
    pub key: Option<KeyBinding>,
    /// `{public_base_url}/dicom/{workspace}/{service}`.
    pub service_url: String,
    /// Which browser origins may call the data plane (`properties.corsConfiguration`).
    pub cors: CorsConfiguration,
    /// Whether the service has data partitions (`properties.enableDataPartitions`, set at
    /// creation only).
    pub data_partitions: bool,
}

/// A DICOM service's `corsConfiguration`, validated: which web origins a browser may call its
/// data plane from (a viewer such as OHIF served elsewhere), with which methods and headers.
/// Empty origins: no cross-origin calls (the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsConfiguration {
    /// `scheme://host[:port]`, lowercase, or `*`.
    pub origins: Vec<String>,
    /// Request headers a page may send (`*`: any).
    pub headers: Vec<String>,
    /// Methods a page may use, uppercase (`*`: any).
    pub methods: Vec<String>,
    /// How long a browser may cache a preflight answer, in seconds.
    pub max_age: Option<u32>,
    /// Whether a page may send credentials (never with the origin `*`).
    pub allow_credentials: bool,
}

/// Where a DICOM service stands with its key, as the key-access monitor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAccessState {
    /// The last probe reached the key (or no customer-managed key is configured).
    Healthy,
    /// Probes fail; access coming back before the latch recovers the service by itself.
    KeyAccessLost,
    /// Probes failed for longer than the latch: only an update of the service brings it back.
    RequiresUpdate,
    /// Nothing is known yet (the service was just configured, or the host does not know it).
    Unknown,
}

/// The health of one DICOM service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The state.
    pub state: KeyAccessState,
    /// When the current state began (for lost access: the first failed probe).
    pub since: Option<OffsetDateTime>,
    /// When the key was last probed.
    pub last_checked: Option<OffsetDateTime>,
    /// Why the last probe failed, in words fit for an operator (no key material, no tokens),
    /// e.g. "the vault answered 403 Forbidden (ForbiddenByRbac)" or "the key is disabled".
    pub reason: Option<String>,
    /// How long lost access may last before it latches.
    pub latch_after: Duration,
}

impl HealthReport {
    /// A healthy report checked at `last_checked`.
    pub fn healthy(last_checked: Option<OffsetDateTime>) -> HealthReport {
        HealthReport {
            state: KeyAccessState::Healthy,
            since: None,
            last_checked,
            reason: None,
            latch_after: DEFAULT_LOST_ACCESS_LATCH,
        }
    }
}

/// What runs DICOM services. Errors are ARM errors the control plane returns as they are.
pub trait DicomServiceHost: Send + Sync + 'static {
    /// Creates or updates a service: validates the key (when given) with the chosen identity
    /// and (re)configures encryption; a latched service comes back. Called on every PUT and
    /// PATCH, even when nothing changed. Fails with a 400 whose code names the requirement
    /// that failed.
    fn apply(&self, spec: DicomServiceSpec) -> ArmFuture<'_, ()>;

    /// Deletes a service and its data (crypto-shredding first).
    fn remove<'a>(&'a self, resource_id: &'a str) -> ArmFuture<'a, ()>;

    /// The service's key-access health.
    fn health<'a>(&'a self, resource_id: &'a str) -> ArmFuture<'a, HealthReport>;

    /// The service moved (another resource group or subscription): serve it under `new_id`
    /// from now on, without re-validating its key. A system-assigned identity was replaced by
    /// then, so key access is lost until the next update.
    fn moved<'a>(&'a self, old_id: &'a str, new_id: &'a str) -> ArmFuture<'a, ()>;
}
