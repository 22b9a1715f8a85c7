//! The resource providers of hds's control plane, and its access control.
//!
//! `hds-arm` knows ARM (ids, routing, the store, deployments) and nothing of what resources
//! mean; this crate gives the resource types their meaning over the services that implement
//! them:
//!
//! | type | over |
//! |---|---|
//! | `Microsoft.ManagedIdentity/userAssignedIdentities` | [`hds_identity`] managed identities |
//! | `Microsoft.Authorization/roleAssignments`, `roleDefinitions` | [`hds_identity`] RBAC |
//! | `Microsoft.KeyVault/vaults`, `vaults/keys`, `vaults/keys/versions` | [`hds_keyvault::KeyVaultService`] |
//! | `Microsoft.HealthcareApis/workspaces`, `workspaces/dicomservices` | the store, and a [`DicomServiceHost`] |
//! | `Microsoft.ResourceHealth/availabilityStatuses` | [`DicomServiceHost::health`] |
//! | `Microsoft.EventGrid/systemTopics`, `systemTopics/eventSubscriptions` | the store, and [`hds_events`] (webhook handshake, delivery rows) |
//!
//! plus [`IdentityAccessControl`], the [`hds_arm::ArmAccessControl`] over bearer tokens and
//! role assignments. [`register_all`] registers everything on an [`ArmBuilder`].
//!
//! **Architecture invariant:** what a DICOM service does with its key (validation, key
//! hierarchy, serving, crypto-shredding) is behind [`DicomServiceHost`]; this crate decides
//! only which identity reaches which key, and keeps the ARM resource. A PUT or PATCH of a DICOM
//! service always reaches the host, and the resource changes only when the host accepted.
#![deny(missing_docs)]

mod access;
mod authorization;
mod errors;
mod eventgrid;
mod health;
mod healthcare;
mod host;
mod json;
mod key_versions;
mod keyvault;
mod managed_identity;
mod rotation_policy;
mod workspace_names;

use std::sync::Arc;

use hds_arm::ArmBuilder;
use hds_db::Database;
use hds_identity::Identity;
use hds_keyvault::KeyVaultService;

pub use access::IdentityAccessControl;
pub use authorization::{
    ROLE_ASSIGNMENTS_TYPE, ROLE_DEFINITIONS_TYPE, RoleAssignmentProvider, RoleDefinitionProvider,
};
pub use eventgrid::{
    EVENT_SUBSCRIPTIONS_TYPE, EventGridParts, EventSubscriptionProvider, SUBSCRIBE_ACTION,
    SYSTEM_TOPICS_TYPE, SystemTopicProvider, WORKSPACE_TOPIC_TYPE,
};
pub use health::{AVAILABILITY_STATUSES_TYPE, AvailabilityStatusProvider, CURRENT};
pub use healthcare::{
    DICOM_SERVICES_TYPE, DicomServiceProvider, NEWEST_API_VERSION, OLDEST_API_VERSION,
    WORKSPACES_TYPE, WorkspaceProvider, stored_spec,
};
pub use host::{
    CorsConfiguration, DEFAULT_LOST_ACCESS_LATCH, DicomServiceHost, DicomServiceSpec, HealthReport,
    KeyAccessState, KeyBinding, KeyIdentityKind,
};
pub use key_versions::{KEY_VERSIONS_TYPE, KeyVersionProvider, authorize_data_action};
pub use keyvault::{KEYS_TYPE, KeyProvider, VAULTS_TYPE, VaultEvents, VaultProvider};
pub use managed_identity::{USER_ASSIGNED_IDENTITIES_TYPE, UserAssignedIdentityProvider};

/// What the providers are built over.
#[derive(Clone)]
pub struct ProviderDependencies {
    /// The shared database (for what providers keep beside the ARM store, e.g. the claims
    /// of workspace names).
    pub database: Database,
    /// Principals, managed identities and role assignments.
    pub identity: Identity,
    /// Vaults and keys.
    pub key_vault: Arc<KeyVaultService>,
    /// What runs DICOM services.
    pub dicom_host: Arc<dyn DicomServiceHost>,
    /// The externally visible base URL of the main listener (`https://host:port`), for
    /// service URLs and token authorities.
    pub public_base_url: String,
    /// Told of vault changes (to start and stop vault listeners), if anyone needs to know.
    pub vault_events: Option<Arc<dyn VaultEvents>>,
    /// DICOM events: without them, the Event Grid types are not served and every DICOM
    /// service's `eventState` is `Disabled`.
    pub events: Option<EventGridParts>,
}

impl std::fmt::Debug for ProviderDependencies {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ProviderDependencies")
            .field("public_base_url", &self.public_base_url)
            .finish_non_exhaustive()
    }
}

/// The access control to build [`hds_arm::Arm`] with.
pub fn access_control(identity: Identity) -> Arc<dyn hds_arm::ArmAccessControl> {
    Arc::new(IdentityAccessControl::new(identity))
}

/// Registers every provider of this crate on `builder`.
pub fn register_all(builder: ArmBuilder, dependencies: &ProviderDependencies) -> ArmBuilder {
    let identity = &dependencies.identity;
    let builder = match &dependencies.events {
        Some(parts) => builder
            .provider(Arc::new(SystemTopicProvider::new(
                identity.clone(),
                parts.clone(),
            )))
            .provider(Arc::new(EventSubscriptionProvider::new(
                identity.clone(),
                parts.clone(),
            ))),
        None => builder,
    };
    builder
        .provider(Arc::new(UserAssignedIdentityProvider::new(
            identity.clone(),
        )))
        .provider(Arc::new(RoleAssignmentProvider::new(identity.clone())))
        .provider(Arc::new(RoleDefinitionProvider))
        .provider(Arc::new(VaultProvider::new(
            Arc::clone(&dependencies.key_vault),
            identity.clone(),
            dependencies.vault_events.clone(),
        )))
        .provider(Arc::new(KeyProvider::new(
            Arc::clone(&dependencies.key_vault),
            identity.clone(),
        )))
        .provider(Arc::new(KeyVersionProvider::new(
            Arc::clone(&dependencies.key_vault),
            identity.clone(),
        )))
        .provider(Arc::new(WorkspaceProvider::new(
            dependencies.database.clone(),
        )))
        .provider(Arc::new(
            DicomServiceProvider::new(
                identity.clone(),
                Arc::clone(&dependencies.dicom_host),
                &dependencies.public_base_url,
            )
            .with_events(
                dependencies
                    .events
                    .as_ref()
                    .map(|parts| parts.store.clone()),
            ),
        ))
        .provider(Arc::new(AvailabilityStatusProvider::new(Arc::clone(
            &dependencies.dicom_host,
        ))))
}
