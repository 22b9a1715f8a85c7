//! What runs the DICOM services the control plane configures: their key hierarchies (under a
//! customer-managed key or a platform-managed one), their registration with the key-access
//! monitor, following a versionless key's latest version, crypto-shredding a deleted service,
//! and the answer to "which service is this URL, and may it serve data now?".
//!
//! The control plane's `dicomservices` provider calls [`DicomServiceHost`]; the DICOMweb API
//! calls [`DicomServiceResolver`]; both meet in [`DicomHost`]. A service's data is keyed by
//! its internal id ([`ServiceIds`]); `{workspace}/{service}` is only the data plane's route.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};

use hds_arm::{ArmError, ArmFuture};
use hds_blob::{BlobError, BlobName, BlobStore};
use hds_cmk::{
    CUSTOMER_MANAGED_KEY_ACCESS_LOST, EntraApplication, KeyAccessMonitor,
    KeyAccessState as MonitorState, KeyBinding as MonitorBinding, KeyUrl, KeyUrlError, KeyUser,
    KeyValidator, KeyVaultClient, MonitorError, RemoteKek, TokenSource,
};
use hds_crypto::keys::KeyEncryptionKey;
use hds_crypto::root::RootKey;
use hds_db::Database;
use hds_dicom::QueryLevel;
use hds_dicomweb::{DicomServiceResolver, DicomWebError, ResolvedService, ServiceUnavailable};
use hds_index::{
    DeleteScope, Index, IndexError, KeyringError, SearchQuery, ServiceKeyring, ServiceKeyrings,
    platform_kek, stored_key_id,
};
use hds_providers::{DicomServiceHost, DicomServiceSpec, HealthReport, KeyAccessState};
use http::StatusCode;

use crate::service_ids::{ServiceIdError, ServiceIds};

/// Why the host could not serve a service or delete its data. Messages carry no key material
/// and no PHI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The mapping of resource ids to service ids failed.
    #[error(transparent)]
    ServiceIds(#[from] ServiceIdError),
    /// The service's key hierarchy could not be opened or created.
    #[error("the service's keys: {0}")]
    Keyring(#[from] KeyringError),
    /// The service's key URL is not usable.
    #[error("the service's key URL: {0}")]
    KeyUrl(#[from] KeyUrlError),
    /// The key-access monitor failed.
    #[error("the key-access monitor: {0}")]
    Monitor(#[from] MonitorError),
    /// The index failed.
    #[error("the index: {0}")]
    Index(#[from] IndexError),
    /// The blob store failed.
    #[error("the blob store: {0}")]
    Blob(#[from] BlobError),
}

/// One DICOM service being served.
struct HostedService {
    /// Its ARM resource id (changes when the service moves).
    resource_id: String,
    /// `{workspace}/{service}`, lowercase: where the data plane finds it.
    route: String,
    /// Its internal id ([`ServiceIds`]): its key in the index, blob store, keyrings and the
    /// key-access monitor. Never derived from its names.
    service_key: String,
    /// Its key hierarchy.
    keyring: Arc<ServiceKeyring>,
    /// Whether a customer-managed key protects it (else a platform-managed key does).
    customer_managed: bool,
    /// What it was last served as: [`DicomHost::reconcile`] serves it again when the
    /// database holds something else.
    spec: DicomServiceSpec,
}

/// The DICOM services of this hds.
pub struct DicomHost {
    database: Database,
    root_key: Arc<RootKey>,
    index: Index,
    blobs: BlobStore,
    keyrings: ServiceKeyrings,
    client: KeyVaultClient,
    tokens: Arc<dyn TokenSource>,
    validator: KeyValidator,
    monitor: Arc<KeyAccessMonitor>,
    azure_application: Option<EntraApplication>,
    ids: ServiceIds,
    services: RwLock<Served>,
}

/// The services served, by internal id, and the routes (`{workspace}/{service}`) to them.
#[derive(Default)]
struct Served {
    by_id: HashMap<String, HostedService>,
    routes: HashMap<String, String>,
    /// When this node last created, changed or removed a service, by lowercase resource id:
    /// [`DicomHost::reconcile`] leaves such a service alone for [`RECENT_CHANGE`], since the
    /// control plane records the change in the database only after the host applied it.
    changed_here: HashMap<String, std::time::Instant>,
}

/// How long [`DicomHost::reconcile`] leaves alone a service this node just changed.
const RECENT_CHANGE: std::time::Duration = std::time::Duration::from_secs(30);

/// Parts the host is built from.
pub struct DicomHostParts {
    /// The shared database (keyrings and platform-managed keys live there).
    pub database: Database,
    /// The platform root key, which seals platform-managed key-encryption keys.
    pub root_key: Arc<RootKey>,
    /// The index the services' data is recorded in.
    pub index: Index,
    /// The blob store the services' instances are sealed in.
    pub blobs: BlobStore,
    /// The keyrings the index tokenizes and seals with; the host registers each service's.
    pub keyrings: ServiceKeyrings,
    /// The Key Vault client that reaches customer-managed keys.
    pub client: KeyVaultClient,
    /// Tokens of the identities that reach keys.
    pub tokens: Arc<dyn TokenSource>,
    /// Validates a key before a service uses it.
    pub validator: KeyValidator,
    /// Probes each customer-managed key and says whether its service may serve data.
    pub monitor: Arc<KeyAccessMonitor>,
    /// The Entra ID application that reaches keys in Azure Key Vault, if configured.
    pub azure_application: Option<EntraApplication>,
    /// The internal ids of the services.
    pub ids: ServiceIds,
}

/// Hosts of Azure Key Vault and Managed HSM: keys there are reached as the configured Entra ID
/// application, since Azure knows none of hds's managed identities.
const AZURE_KEY_HOST_SUFFIXES: [&str; 2] = [".vault.azure.net", ".managedhsm.azure.net"];

/// `{workspace}/{service}` in lowercase (ARM names compare case-insensitively): the data
/// plane's route to a service (unambiguous, workspace names being unique), and the key the
/// data of services created before internal ids existed is stored under.
pub fn service_route(workspace: &str, service: &str) -> String {
    format!(
        "{}/{}",
        workspace.to_ascii_lowercase(),
        service.to_ascii_lowercase()
    )
}

impl DicomHost {
    /// The host, following each versionless key's latest version through the monitor.
    pub fn new(parts: DicomHostParts) -> Arc<DicomHost> {
        let host = Arc::new(DicomHost {
            database: parts.database,
            root_key: parts.root_key,
            index: parts.index,
            blobs: parts.blobs,
            keyrings: parts.keyrings,
            client: parts.client,
            tokens: parts.tokens,
            validator: parts.validator,
            monitor: parts.monitor,
            azure_application: parts.azure_application,
            ids: parts.ids,
            services: RwLock::new(Served::default()),
        });
        // A versionless key URL follows the key's latest version: when the monitor sees a new
        // one, the root key is re-wrapped under it, in the background since the listener runs
        // inside a probe. The listener holds the host weakly: the monitor is the host's part.
        let weak = Arc::downgrade(&host);
        host.monitor
            .set_new_version_listener(Arc::new(move |service: &str, kid: &KeyUrl| {
                let Some(host) = weak.upgrade() else {
                    return;
                };
                let (service, kid) = (service.to_owned(), kid.to_string());
                tokio::spawn(async move { host.follow_new_version(&service, &kid).await });
            }));
        host
    }

    /// Re-wraps a service's root key under `kid`, the latest version of its versionless key,
    /// unless it is wrapped under that version already (one unwrap with the old version, which
    /// must still be enabled, and one wrap; no data is re-encrypted).
    async fn follow_new_version(&self, key: &str, kid: &str) {
        let (Some(keyring), Some(binding)) = (self.keyrings.get(key), self.monitor.binding(key))
        else {
            return;
        };
        let kek = match self.remote_kek(&binding.principal_id, kid) {
            Ok(kek) => kek,
            Err(error) => {
                tracing::warn!(service = %key, error = %error, "the key's latest version could not be used");
                return;
            }
        };
        if keyring.key_encryption_key().key_id() == kek.key_id() {
            return;
        }
        match keyring.rewrap(kek).await {
            Ok(()) => {
                tracing::info!(service = %key, "the service's root key was re-wrapped under the key's latest version")
            }
            Err(error) => {
                tracing::warn!(service = %key, error = %error, "re-wrapping the service's root key under the key's latest version failed")
            }
        }
    }

    /// Serves a service that already exists (at start-up), without re-validating its key:
    /// the key-access monitor's persisted state says whether it may serve data.
    pub async fn restore(&self, spec: &DicomServiceSpec) -> Result<(), HostError> {
        // A service stored before internal ids existed keeps the key its data is under.
        let legacy_key = service_route(&spec.workspace, &spec.service);
        let key = self
            .ids
            .claim_preferring(&spec.resource_id, Some(&legacy_key))
            .await?
            .service_id;
        self.serve_stored(spec, key).await
    }

    /// Serves `spec` under its internal id `key`, without re-validating its key.
    async fn serve_stored(&self, spec: &DicomServiceSpec, key: String) -> Result<(), HostError> {
        let (keyring, customer_managed) = match &spec.key {
            Some(binding) => {
                let (principal_id, tenant_id) =
                    self.key_user(&binding.key_url, &binding.principal_id, &spec.tenant_id);
                let stored = self.stored_key_id(&key).await?;
                let kek_url = stored.unwrap_or_else(|| binding.key_url.clone());
                let kek = self.remote_kek(&principal_id, &kek_url)?;
                self.monitor
                    .register(
                        &key,
                        monitor_binding(&binding.key_url, &principal_id, &tenant_id)?,
                    )
                    .await?;
                // The vault may be unreachable now: the service then starts locked, and the
                // monitor unlocks it once access is back.
                let keyring = match ServiceKeyring::open_or_create(
                    &self.database,
                    &key,
                    kek.clone(),
                )
                .await
                {
                    Ok(keyring) => keyring,
                    Err(error) => {
                        tracing::warn!(service = %key, error = %error, "the service's key could not be opened at start");
                        ServiceKeyring::locked(&self.database, &key, kek)
                    }
                };
                (keyring, true)
            }
            None => (self.platform_keyring(&key).await?, false),
        };
        self.keyrings.insert(keyring.clone());
        self.serve(spec, key, keyring, customer_managed);
        Ok(())
    }

    /// Serves what the database holds when several nodes share it: `specs` are the DICOM
    /// services it records now. A service another node created (or changed) is restored here,
    /// one it deleted is no longer served (its data is that node's to delete). Services this
    /// node changed in the last [`RECENT_CHANGE`] are left as they are.
    ///
    /// The internal ids decide, not the resources alone: a move commits the resource under its
    /// new id before the service's internal id follows it ([`ServiceIds::moved`]). Meanwhile the
    /// new resource id has no internal id, and the old one still has the service's: the
    /// service is not served as a new one (claiming an id for it would make the move fail and
    /// open an empty service), and not dropped either. The next pass sees the move complete.
    pub async fn reconcile(&self, specs: &[DicomServiceSpec]) {
        let (stale, gone): (Vec<DicomServiceSpec>, Vec<(String, String)>) = {
            let mut served = self
                .services
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            served
                .changed_here
                .retain(|_, at| at.elapsed() < RECENT_CHANGE);
            let recent = |resource_id: &str| {
                served
                    .changed_here
                    .contains_key(&resource_id.to_ascii_lowercase())
            };
            let stale = specs
                .iter()
                .filter(|spec| !recent(&spec.resource_id))
                .filter(|spec| {
                    !served
                        .by_id
                        .values()
                        .any(|hosted| same_service(&hosted.spec, spec))
                })
                .cloned()
                .collect();
            let gone = served
                .by_id
                .values()
                .filter(|hosted| !recent(&hosted.resource_id))
                .filter(|hosted| {
                    !specs
                        .iter()
                        .any(|spec| spec.resource_id.eq_ignore_ascii_case(&hosted.resource_id))
                })
                .map(|hosted| (hosted.resource_id.clone(), hosted.service_key.clone()))
                .collect();
            (stale, gone)
        };
        for spec in stale {
            let key = match self.ids.get(&spec.resource_id).await {
                Ok(Some(key)) => key,
                Ok(None) => {
                    tracing::debug!(resource_id = %spec.resource_id, "a DICOM service without an internal id yet (a move or creation under way) is left for the next pass");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(resource_id = %spec.resource_id, error = %error, "a DICOM service's internal id could not be read");
                    continue;
                }
            };
            match self.serve_stored(&spec, key).await {
                Ok(()) => tracing::info!(
                    resource_id = %spec.resource_id,
                    "serving a DICOM service as another node created or changed it"
                ),
                Err(error) => {
                    tracing::warn!(resource_id = %spec.resource_id, error = %error, "a DICOM service another node created or changed could not be served");
                }
            }
        }
        for (resource_id, service_key) in gone {
            match self.ids.get(&resource_id).await {
                Ok(Some(key)) if key == service_key => {
                    tracing::debug!(resource_id = %resource_id, "a DICOM service whose resource moved before its internal id (a move under way) is still served");
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(resource_id = %resource_id, error = %error, "a DICOM service's internal id could not be read");
                    continue;
                }
            }
            self.stop_serving(&resource_id);
            tracing::info!(resource_id = %resource_id, "no longer serving a DICOM service another node deleted");
        }
    }

    /// Forgets a service in this process only: its unwrapped keys, its route, its monitor
    /// registration. Its data and its shared key-access state stay.
    fn stop_serving(&self, resource_id: &str) {
        let Some((key, _, customer_managed)) = self.find_by_resource_id(resource_id) else {
            return;
        };
        if customer_managed {
            self.monitor.forget(&key);
        }
        if let Some(keyring) = self.keyrings.remove(&key) {
            keyring.forget();
        }
        let mut served = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(hosted) = served.by_id.remove(&key)
            && served.routes.get(&hosted.route) == Some(&key)
        {
            served.routes.remove(&hosted.route);
        }
    }

    fn changed_here(&self, resource_id: &str) {
        self.services
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .changed_here
            .insert(resource_id.to_ascii_lowercase(), std::time::Instant::now());
    }

    fn serve(
        &self,
        spec: &DicomServiceSpec,
        key: String,
        keyring: Arc<ServiceKeyring>,
        customer_managed: bool,
    ) {
        // Every update serves the service again; one follower per keyring is enough.
        let followed = self
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .get(&key)
            .is_some_and(|hosted| {
                hosted.customer_managed && Arc::ptr_eq(&hosted.keyring, &keyring)
            });
        if customer_managed && !followed {
            self.follow_key_access(&key, &keyring);
        }
        let route = service_route(&spec.workspace, &spec.service);
        let hosted = HostedService {
            resource_id: spec.resource_id.clone(),
            route: route.clone(),
            service_key: key.clone(),
            keyring,
            customer_managed,
            spec: spec.clone(),
        };
        let mut served = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Workspace names are unique, so a route has one service; only a data dir from before
        // that rule can hold two services under one route, and the first one keeps it.
        match served.routes.get(&route) {
            Some(holder) if *holder != key => {
                tracing::error!(
                    resource_id = %spec.resource_id,
                    "another DICOM service holds this service's URL; it is not served"
                );
            }
            _ => {
                served.routes.insert(route, key.clone());
            }
        }
        served.by_id.insert(key, hosted);
    }

    /// Drops a service's unwrapped keys while its key is not accessible, and unlocks them
    /// again when the monitor sees access come back. The follower holds the keyring weakly:
    /// an update that replaces the keyring (another identity) ends it.
    fn follow_key_access(&self, key: &str, keyring: &Arc<ServiceKeyring>) {
        let Some(mut changes) = self.monitor.subscribe(key) else {
            return;
        };
        let service = key.to_owned();
        let keyring = Arc::downgrade(keyring);
        tokio::spawn(async move {
            loop {
                let Some(keyring) = keyring.upgrade() else {
                    return;
                };
                let healthy = changes.borrow_and_update().is_healthy();
                if healthy {
                    if let Err(error) = keyring.unlock().await {
                        tracing::warn!(service = %service, error = %error, "unlocking the service's keys failed");
                    }
                } else {
                    keyring.forget();
                    tracing::warn!(service = %service, "key access lost: the service's keys were dropped from memory");
                }
                drop(keyring);
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Who reaches a key and in which tenant: the service's managed identity for keys in hds's
    /// vaults, the configured Entra ID application for keys in Azure Key Vault.
    fn key_user(&self, key_url: &str, principal_id: &str, tenant_id: &str) -> (String, String) {
        let in_azure = KeyUrl::parse(key_url).is_ok_and(|url| {
            let base = url.vault_base_url();
            let host = base
                .trim_start_matches("https://")
                .split(['/', ':'])
                .next()
                .unwrap_or_default()
                .to_owned();
            AZURE_KEY_HOST_SUFFIXES
                .iter()
                .any(|suffix| host.ends_with(suffix))
        });
        match (&self.azure_application, in_azure) {
            (Some(application), true) => {
                (application.principal_id(), application.tenant_id.clone())
            }
            _ => (principal_id.to_owned(), tenant_id.to_owned()),
        }
    }

    async fn platform_keyring(&self, key: &str) -> Result<Arc<ServiceKeyring>, HostError> {
        let kek: Arc<dyn KeyEncryptionKey> =
            Arc::new(platform_kek(&self.database, &self.root_key, key).await?);
        Ok(ServiceKeyring::open_or_create(&self.database, key, kek).await?)
    }

    fn remote_kek(
        &self,
        principal_id: &str,
        versioned_key_url: &str,
    ) -> Result<Arc<dyn KeyEncryptionKey>, HostError> {
        let url = KeyUrl::parse(versioned_key_url)?;
        Ok(Arc::new(RemoteKek::new(
            self.client.clone(),
            self.tokens.clone(),
            principal_id,
            url,
        )?))
    }

    /// The customer-managed key id the service's root key is wrapped under, if it has one.
    async fn stored_key_id(&self, key: &str) -> Result<Option<String>, HostError> {
        Ok(stored_key_id(&self.database, key)
            .await?
            .filter(|id| !id.starts_with("platform:")))
    }

    async fn apply_spec(&self, spec: DicomServiceSpec) -> Result<(), ArmError> {
        self.changed_here(&spec.resource_id);
        let claimed = self
            .ids
            .claim(&spec.resource_id)
            .await
            .map_err(|error| ArmError::internal(&error))?;
        let resource_id = spec.resource_id.clone();
        let result = self.apply_to(spec, claimed.service_id).await;
        if result.is_err() && claimed.assigned {
            // A refused creation leaves no id behind.
            self.ids
                .release(&resource_id)
                .await
                .map_err(|error| ArmError::internal(&error))?;
        }
        result
    }

    async fn apply_to(&self, spec: DicomServiceSpec, key: String) -> Result<(), ArmError> {
        let existing = self.keyrings.get(&key);
        let Some(binding) = &spec.key else {
            if existing.is_none() {
                let keyring = self
                    .platform_keyring(&key)
                    .await
                    .map_err(|error| ArmError::internal(&error))?;
                self.keyrings.insert(keyring.clone());
                self.serve(&spec, key, keyring, false);
            } else if let Some(keyring) = existing {
                let customer_managed = self.is_customer_managed(&key);
                self.serve(&spec, key, keyring, customer_managed);
            }
            return Ok(());
        };
        let (principal_id, tenant_id) =
            self.key_user(&binding.key_url, &binding.principal_id, &spec.tenant_id);
        let validated = self
            .validator
            .validate(
                &binding.key_url,
                KeyUser {
                    principal_id: &principal_id,
                    tenant_id: &tenant_id,
                },
            )
            .await
            .map_err(|error| {
                ArmError::new(
                    StatusCode::BAD_REQUEST,
                    error.code.as_str(),
                    error.message.clone(),
                )
            })?;
        for warning in &validated.warnings {
            tracing::warn!(service = %key, "{warning}");
        }
        let kek = self
            .remote_kek(&principal_id, &validated.facts.kid.to_string())
            .map_err(|error| ArmError::internal(&error))?;
        let keyring = match existing {
            Some(existing) => self.reopen(&key, existing, kek, &principal_id).await?,
            None => ServiceKeyring::open_or_create(&self.database, &key, kek)
                .await
                .map_err(|error| {
                    ArmError::new(
                        StatusCode::BAD_REQUEST,
                        "KeyAccessDenied",
                        format!("the service's keys could not be created or unwrapped: {error}"),
                    )
                })?,
        };
        self.keyrings.insert(keyring.clone());
        let monitor_binding = monitor_binding(&binding.key_url, &principal_id, &tenant_id)
            .map_err(|error| ArmError::internal(&error))?;
        self.monitor
            .register(&key, monitor_binding)
            .await
            .map_err(|error| ArmError::internal(&error))?;
        self.monitor
            .revalidate(&key)
            .await
            .map_err(|error| ArmError::internal(&error))?;
        self.serve(&spec, key, keyring, true);
        Ok(())
    }

    /// The keyring of an existing service after an update: its stored root key opened as the
    /// update's identity, then re-wrapped if the key (version) changed. The identity may differ
    /// from the one the current keyring was opened with (a move gives the service a new
    /// system-assigned principal; a user may switch identities), and the old principal may no
    /// longer exist, so the current keyring's key-encryption key cannot be reused.
    async fn reopen(
        &self,
        key: &str,
        existing: Arc<ServiceKeyring>,
        kek: Arc<dyn KeyEncryptionKey>,
        principal_id: &str,
    ) -> Result<Arc<ServiceKeyring>, ArmError> {
        let keyring = match self
            .stored_key_id(key)
            .await
            .map_err(|error| ArmError::internal(&error))?
        {
            Some(stored) => {
                let current = self
                    .remote_kek(principal_id, &stored)
                    .map_err(|error| ArmError::internal(&error))?;
                ServiceKeyring::open_or_create(&self.database, key, current)
                    .await
                    .map_err(|error| {
                        ArmError::new(
                            StatusCode::BAD_REQUEST,
                            "KeyAccessDenied",
                            format!("the service's keys could not be unwrapped: {error}"),
                        )
                    })?
            }
            // Under the platform-managed key: no identity is involved in opening it.
            None => existing,
        };
        if keyring.key_encryption_key().key_id() != kek.key_id() {
            keyring.rewrap(kek).await.map_err(|error| {
                ArmError::new(
                    StatusCode::BAD_REQUEST,
                    "KeyRewrapFailed",
                    format!(
                        "the service's data keys could not be moved to the new key: the current key must still be accessible while the key changes ({error})"
                    ),
                )
            })?;
        }
        Ok(keyring)
    }

    fn is_customer_managed(&self, key: &str) -> bool {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .get(key)
            .is_some_and(|hosted| hosted.customer_managed)
    }

    fn find_by_resource_id(
        &self,
        resource_id: &str,
    ) -> Option<(String, Arc<ServiceKeyring>, bool)> {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .values()
            .find(|hosted| hosted.resource_id.eq_ignore_ascii_case(resource_id))
            .map(|hosted| {
                (
                    hosted.service_key.clone(),
                    hosted.keyring.clone(),
                    hosted.customer_managed,
                )
            })
    }

    /// Deletes every study of a service and of each of its data partitions, one study at a
    /// time: each study key is destroyed before its blobs (crypto-shredding), so nothing
    /// lingers readable. The partitions' rows go last.
    async fn delete_all_data(&self, key: &str) -> Result<(), HostError> {
        for scope in self.index.partition_scopes(key).await? {
            self.delete_scope_data(&scope).await?;
        }
        self.delete_scope_data(key).await?;
        self.index.delete_partitions_of(key).await?;
        Ok(())
    }

    /// Deletes every study of one scope (a service's default partition, or another).
    async fn delete_scope_data(&self, key: &str) -> Result<(), HostError> {
        loop {
            let query = SearchQuery {
                service: key,
                level: QueryLevel::Study,
                study_instance_uid: None,
                series_instance_uid: None,
                filters: Vec::new(),
                extended_filters: Vec::new(),
                limit: 200,
                offset: 0,
            };
            let studies = self.index.search(&query).await?;
            if studies.is_empty() {
                self.index.delete_extended_query_tags_of(key).await?;
                self.index.delete_workitems_of(key).await?;
                return Ok(());
            }
            for study in studies {
                let Some(uid) = study.first_string("0020000D") else {
                    continue;
                };
                for name in self.index.delete(key, DeleteScope::Study(&uid)).await? {
                    self.blobs.delete(&BlobName::parse(&name)?).await?;
                }
            }
        }
    }
}

/// Whether two specs serve the same: the stored one does not record a system-assigned
/// identity's client id, which serving does not use.
fn same_service(served: &DicomServiceSpec, stored: &DicomServiceSpec) -> bool {
    let without_client_id = |spec: &DicomServiceSpec| {
        let mut spec = spec.clone();
        spec.resource_id = spec.resource_id.to_ascii_lowercase();
        if let Some(key) = &mut spec.key {
            key.client_id.clear();
        }
        spec
    };
    without_client_id(served) == without_client_id(stored)
}

fn monitor_binding(
    key_url: &str,
    principal_id: &str,
    tenant_id: &str,
) -> Result<MonitorBinding, HostError> {
    Ok(MonitorBinding {
        key_url: KeyUrl::parse(key_url)?,
        principal_id: principal_id.to_owned(),
        tenant_id: tenant_id.to_owned(),
    })
}

impl DicomServiceHost for DicomHost {
    fn apply(&self, spec: DicomServiceSpec) -> ArmFuture<'_, ()> {
        Box::pin(self.apply_spec(spec))
    }

    fn remove<'a>(&'a self, resource_id: &'a str) -> ArmFuture<'a, ()> {
        Box::pin(async move {
            self.changed_here(resource_id);
            let Some((key, _keyring, customer_managed)) = self.find_by_resource_id(resource_id)
            else {
                self.ids
                    .release(resource_id)
                    .await
                    .map_err(|error| ArmError::internal(&error))?;
                return Ok(());
            };
            self.delete_all_data(&key)
                .await
                .map_err(|error| ArmError::internal(&error))?;
            if customer_managed {
                self.monitor
                    .unregister(&key)
                    .await
                    .map_err(|error| ArmError::internal(&error))?;
            }
            if let Some(keyring) = self.keyrings.remove(&key) {
                keyring.forget();
            }
            {
                let mut served = self
                    .services
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(hosted) = served.by_id.remove(&key)
                    && served.routes.get(&hosted.route) == Some(&key)
                {
                    served.routes.remove(&hosted.route);
                }
            }
            self.ids
                .release(resource_id)
                .await
                .map_err(|error| ArmError::internal(&error))?;
            Ok(())
        })
    }

    fn health<'a>(&'a self, resource_id: &'a str) -> ArmFuture<'a, HealthReport> {
        Box::pin(async move {
            let latch = self.monitor.config().lost_access_latch;
            let Some((key, _, customer_managed)) = self.find_by_resource_id(resource_id) else {
                return Ok(HealthReport {
                    state: KeyAccessState::Unknown,
                    since: None,
                    last_checked: None,
                    reason: None,
                    latch_after: latch,
                });
            };
            if !customer_managed {
                return Ok(HealthReport {
                    latch_after: latch,
                    ..HealthReport::healthy(None)
                });
            }
            // reportedTime is the last probe's time (none yet after a restart: then "now").
            let last_checked = self.monitor.last_checked(&key);
            // The state all nodes share, whichever node probed last.
            let state = self
                .monitor
                .shared_state(&key)
                .await
                .map_err(|error| ArmError::internal(&error))?;
            let report = match state {
                None => HealthReport {
                    state: KeyAccessState::Unknown,
                    since: None,
                    last_checked: None,
                    reason: None,
                    latch_after: latch,
                },
                Some(MonitorState::Healthy) => HealthReport {
                    latch_after: latch,
                    ..HealthReport::healthy(last_checked)
                },
                Some(MonitorState::KeyAccessLost { since, reason }) => HealthReport {
                    state: KeyAccessState::KeyAccessLost,
                    since: Some(since),
                    last_checked,
                    reason: Some(format!("{}: {}", reason.code.as_str(), reason.message)),
                    latch_after: latch,
                },
                Some(MonitorState::RequiresUpdate { since, reason }) => HealthReport {
                    state: KeyAccessState::RequiresUpdate,
                    since: Some(since),
                    last_checked,
                    reason: Some(format!("{}: {}", reason.code.as_str(), reason.message)),
                    latch_after: latch,
                },
            };
            Ok(report)
        })
    }

    fn moved<'a>(&'a self, old_id: &'a str, new_id: &'a str) -> ArmFuture<'a, ()> {
        Box::pin(async move {
            self.ids
                .moved(old_id, new_id)
                .await
                .map_err(|error| ArmError::internal(&error))?;
            let mut services = self
                .services
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(hosted) = services
                .by_id
                .values_mut()
                .find(|hosted| hosted.resource_id.eq_ignore_ascii_case(old_id))
            {
                hosted.resource_id = new_id.to_owned();
                hosted.spec.resource_id = new_id.to_owned();
            }
            let now = std::time::Instant::now();
            for id in [old_id, new_id] {
                services.changed_here.insert(id.to_ascii_lowercase(), now);
            }
            Ok(())
        })
    }
}

/// A served DICOM service as the event dispatcher needs it.
#[derive(Clone)]
pub struct ServedService {
    /// Its internal id (its change feed's key).
    pub service_key: String,
    /// Its ARM resource id.
    pub resource_id: String,
    /// Its service URL.
    pub service_url: String,
    /// Its keys: the change feed's UIDs are sealed under them.
    pub keyring: Arc<ServiceKeyring>,
    /// Whether access to its customer-managed key is lost (as the data plane decides it):
    /// it then gets no events, as it serves no data.
    pub key_access_lost: bool,
}

impl DicomHost {
    /// The DICOM services served under the workspace `workspace_id` (its resource id, in any
    /// case).
    pub fn services_in_workspace(&self, workspace_id: &str) -> Vec<ServedService> {
        let prefix = format!(
            "{}/dicomservices/",
            workspace_id.trim_end_matches('/').to_ascii_lowercase()
        );
        let services = self.services.read().unwrap_or_else(PoisonError::into_inner);
        services
            .by_id
            .values()
            .filter(|hosted| {
                let id = hosted.resource_id.to_ascii_lowercase();
                id.strip_prefix(&prefix)
                    .is_some_and(|name| !name.is_empty() && !name.contains('/'))
            })
            .map(|hosted| self.served_service(hosted))
            .collect()
    }

    /// The service served under the internal id `service_key`, if any.
    pub fn served(&self, service_key: &str) -> Option<ServedService> {
        let services = self.services.read().unwrap_or_else(PoisonError::into_inner);
        services
            .by_id
            .get(service_key)
            .map(|hosted| self.served_service(hosted))
    }

    fn served_service(&self, hosted: &HostedService) -> ServedService {
        let key_access_lost = hosted.customer_managed
            && self
                .monitor
                .state(&hosted.service_key)
                .and_then(|state| {
                    state.data_plane_message_with_latch(self.monitor.config().lost_access_latch)
                })
                .is_some();
        ServedService {
            service_key: hosted.service_key.clone(),
            resource_id: hosted.resource_id.clone(),
            service_url: hosted.spec.service_url.clone(),
            keyring: hosted.keyring.clone(),
            key_access_lost,
        }
    }
}

impl DicomServiceResolver for DicomHost {
    fn cors(&self, workspace: &str, service: &str) -> Option<hds_dicomweb::CorsPolicy> {
        let route = service_route(workspace, service);
        let services = self.services.read().unwrap_or_else(PoisonError::into_inner);
        let cors = &services
            .routes
            .get(&route)
            .and_then(|key| services.by_id.get(key))?
            .spec
            .cors;
        if cors.origins.is_empty() {
            return None;
        }
        Some(hds_dicomweb::CorsPolicy {
            origins: cors.origins.clone(),
            headers: cors.headers.clone(),
            methods: cors.methods.clone(),
            max_age: cors.max_age,
            allow_credentials: cors.allow_credentials,
        })
    }

    fn resolve<'a>(
        &'a self,
        workspace: &'a str,
        service: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<ResolvedService>, DicomWebError>> + Send + 'a>>
    {
        Box::pin(async move {
            let route = service_route(workspace, service);
            let found = {
                let services = self.services.read().unwrap_or_else(PoisonError::into_inner);
                services
                    .routes
                    .get(&route)
                    .and_then(|key| services.by_id.get(key))
                    .map(|hosted| {
                        (
                            hosted.service_key.clone(),
                            hosted.resource_id.clone(),
                            hosted.keyring.clone(),
                            hosted.customer_managed,
                            hosted.spec.data_partitions,
                        )
                    })
            };
            let Some((key, resource_id, keyring, customer_managed, data_partitions)) = found else {
                return Ok(None);
            };
            // Lost key access is reported with the service, not instead of it: the API tells
            // it only to a caller who passed authorization for this service.
            let unavailable = if customer_managed {
                self.monitor
                    .state(&key)
                    .and_then(|state| {
                        state.data_plane_message_with_latch(self.monitor.config().lost_access_latch)
                    })
                    .map(|message| ServiceUnavailable {
                        code: CUSTOMER_MANAGED_KEY_ACCESS_LOST,
                        message,
                    })
            } else {
                None
            };
            Ok(Some(ResolvedService {
                service_key: key,
                resource_id,
                keyring,
                unavailable,
                data_partitions,
            }))
        })
    }
}
