//! Which DICOM services exist, and the shared state of the API.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use hds_archive::{Archive, ServiceArchive};
use hds_crypto::root::RootKey;
use hds_db::Database;
use hds_index::{KeyringError, ServiceKeyring, ServiceKeyrings};

use crate::DicomWebError;

/// Settings of the DICOMweb API.
#[derive(Debug, Clone)]
pub struct DicomWebConfig {
    /// The largest request body STOW-RS accepts, in bytes.
    pub max_request_bytes: u64,
    /// How clients reach the main listener, e.g. `https://dicom.example.org` (no trailing
    /// slash): the base of every URL in a response (RetrieveURL). Never taken from the
    /// request's `Host` header, which the client chooses.
    pub public_base_url: String,
    /// The limits on a multipart request body.
    pub multipart: crate::request_body::MultipartLimits,
    /// How long a request body may send nothing before the request is refused (408).
    pub body_idle_timeout: std::time::Duration,
    /// Which export destinations are refused beyond the fixed rules (hds's own listener).
    pub export_policy: hds_archive::ExportPolicy,
}

impl Default for DicomWebConfig {
    fn default() -> Self {
        DicomWebConfig {
            max_request_bytes: 2 * 1024 * 1024 * 1024,
            public_base_url: "https://localhost".to_owned(),
            multipart: crate::request_body::MultipartLimits::default(),
            body_idle_timeout: std::time::Duration::from_secs(60),
            export_policy: hds_archive::ExportPolicy::default(),
        }
    }
}

/// A DICOM service the API may serve, as the resolver found it.
#[derive(Debug, Clone)]
pub struct ResolvedService {
    /// The service's key in the index and blob store, e.g. `default/dicom`.
    pub service_key: String,
    /// The service's ARM resource id: the scope role assignments are checked against.
    pub resource_id: String,
    /// The service's key hierarchy. A keyring whose keys were forgotten is refused by the
    /// handlers all the same.
    pub keyring: Arc<ServiceKeyring>,
    /// Why the service cannot serve data now (such as lost access to its customer-managed key),
    /// or `None`. Carried rather than returned as an error so that the API tells it only to a
    /// caller who is allowed to use the service: authorization comes first.
    pub unavailable: Option<ServiceUnavailable>,
    /// Whether the service has data partitions (ARM `properties.enableDataPartitions`, fixed at
    /// creation): then its data routes are served under `partitions/{name}/` only.
    pub data_partitions: bool,
}

/// Why a service that exists cannot serve data: answered as `500` with this code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUnavailable {
    /// A stable error code, e.g. `CustomerManagedKeyAccessLost`.
    pub code: &'static str,
    /// What happened and what to do.
    pub message: String,
}

/// What a request does to a service's data, for authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataAccess {
    /// Search and retrieve.
    Read,
    /// Store.
    Write,
    /// Delete.
    Delete,
    /// Add, change or delete extended query tags (Azure's `ManageExtendedQueryTags`).
    ManageExtendedQueryTags,
    /// Export instances to a blob container (Azure's `Export` data action).
    Export,
}

/// A refusal by [`DicomAccessControl`]: 401 (with its challenge) or 403.
#[derive(Debug, Clone)]
pub struct AccessRefusal {
    /// 401 or 403.
    pub status: axum::http::StatusCode,
    /// A stable code, e.g. `InvalidAuthenticationToken` or `AuthorizationFailed`.
    pub code: &'static str,
    /// What is wrong and what to do.
    pub message: String,
    /// The `WWW-Authenticate` challenge of a 401.
    pub challenge: Option<String>,
}

/// An authenticated caller, as [`DicomAccessControl::authenticate`] found it. Opaque here: only
/// the access control that made it reads it back.
pub struct Caller(Box<dyn std::any::Any + Send + Sync>);

impl Caller {
    /// Wraps what an access control knows about a caller.
    pub fn new<T: std::any::Any + Send + Sync>(caller: T) -> Caller {
        Caller(Box::new(caller))
    }

    /// What [`Caller::new`] wrapped, if it is a `T`.
    pub fn downcast_ref<T: std::any::Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Caller")
    }
}

/// Who may do what to a service's data. Deny by default: implementations answer `Ok` only for
/// an authenticated caller holding a role that grants the access at the service's scope.
///
/// Two steps, because the first runs before the service is looked up: a caller without valid
/// credentials is refused alike whether the service exists or not, and so learns nothing of
/// which services exist.
pub trait DicomAccessControl: Send + Sync + 'static {
    /// Checks the request's credentials: who is calling (401 when nobody valid).
    fn authenticate<'a>(
        &'a self,
        headers: &'a axum::http::HeaderMap,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AccessRefusal>> + Send + 'a>>;

    /// Checks that `caller` may have `access` to the service `resource_id` (403 when not).
    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        resource_id: &'a str,
        access: DataAccess,
    ) -> Pin<Box<dyn Future<Output = Result<(), AccessRefusal>> + Send + 'a>>;
}

/// Lets every request through. For tests of the API alone, never for a server.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl DicomAccessControl for AllowAll {
    fn authenticate<'a>(
        &'a self,
        _headers: &'a axum::http::HeaderMap,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AccessRefusal>> + Send + 'a>> {
        Box::pin(async { Ok(Caller::new(())) })
    }

    fn authorize<'a>(
        &'a self,
        _caller: &'a Caller,
        _resource_id: &'a str,
        _access: DataAccess,
    ) -> Pin<Box<dyn Future<Output = Result<(), AccessRefusal>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }
}

/// Decides which `{workspace}/{service}` pairs exist and whether they may serve data now.
/// The control plane implements it; [`StaticServices`] serves a fixed list.
pub trait DicomServiceResolver: Send + Sync + 'static {
    /// The service, or `Ok(None)` if there is none. A service that cannot serve data now is
    /// still returned, with [`ResolvedService::unavailable`] saying why: whether the caller may
    /// learn that is decided after authorization. An error is the resolver's own failure.
    fn resolve<'a>(
        &'a self,
        workspace: &'a str,
        service: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<ResolvedService>, DicomWebError>> + Send + 'a>>;

    /// The service's CORS rules, if it allows any cross-origin call (answered from memory: it
    /// runs before every request that carries an `Origin`).
    fn cors(&self, _workspace: &str, _service: &str) -> Option<crate::cors::CorsPolicy> {
        None
    }
}

/// A fixed set of services, compared case-insensitively as ARM names are.
#[derive(Debug, Clone, Default)]
pub struct StaticServices {
    services: HashMap<(String, String), ResolvedService>,
}

impl StaticServices {
    /// The service key (`{workspace}/{service}`, lowercase) of a service: what its keyring,
    /// index rows and blob bindings are keyed by.
    pub fn service_key(workspace: &str, service: &str) -> String {
        format!(
            "{}/{}",
            workspace.to_ascii_lowercase(),
            service.to_ascii_lowercase()
        )
    }

    /// Adds `workspace/service`, whose ARM resource id is `resource_id` and whose keys are in
    /// `keyring` (opened for [`StaticServices::service_key`]).
    pub fn with(
        mut self,
        workspace: &str,
        service: &str,
        resource_id: &str,
        keyring: Arc<ServiceKeyring>,
    ) -> StaticServices {
        let key = (workspace.to_ascii_lowercase(), service.to_ascii_lowercase());
        let service_key = StaticServices::service_key(workspace, service);
        self.services.insert(
            key,
            ResolvedService {
                service_key,
                resource_id: resource_id.to_owned(),
                keyring,
                unavailable: None,
                data_partitions: false,
            },
        );
        self
    }

    /// Turns data partitions on for `workspace/service` (added before).
    pub fn with_data_partitions(mut self, workspace: &str, service: &str) -> StaticServices {
        let key = (workspace.to_ascii_lowercase(), service.to_ascii_lowercase());
        if let Some(resolved) = self.services.get_mut(&key) {
            resolved.data_partitions = true;
        }
        self
    }

    /// Adds `workspace/service` with a platform-managed key: its KEK is an RSA key generated on
    /// first use and kept sealed under the platform `root_key` in `database`; its keyring is
    /// opened (created on first use) and registered in `keyrings`, the index's cipher.
    pub async fn with_platform_key(
        self,
        keyrings: &ServiceKeyrings,
        database: &Database,
        root_key: &RootKey,
        workspace: &str,
        service: &str,
        resource_id: &str,
    ) -> Result<StaticServices, KeyringError> {
        let service_key = StaticServices::service_key(workspace, service);
        let key_encryption_key = hds_index::platform_kek(database, root_key, resource_id).await?;
        let keyring = keyrings
            .open_or_create(database, &service_key, Arc::new(key_encryption_key))
            .await?;
        Ok(self.with(workspace, service, resource_id, keyring))
    }
}

impl DicomServiceResolver for StaticServices {
    fn resolve<'a>(
        &'a self,
        workspace: &'a str,
        service: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<ResolvedService>, DicomWebError>> + Send + 'a>>
    {
        let key = (workspace.to_ascii_lowercase(), service.to_ascii_lowercase());
        let found = self.services.get(&key).cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// Everything a DICOMweb handler needs. Cheap to clone.
#[derive(Clone)]
pub struct DicomWebState {
    /// The data of every service: what the handlers store, read, search and delete through.
    pub archive: Archive,
    /// Which services exist.
    pub services: Arc<dyn DicomServiceResolver>,
    /// Who may use them.
    pub access: Arc<dyn DicomAccessControl>,
    /// Settings.
    pub config: Arc<DicomWebConfig>,
}

/// The service a request addresses (its archive, of the partition the path names) and the
/// base of its URLs; an extractor that answers 404 for an unknown service or API version, and
/// 400 for a partition the service cannot serve.
#[derive(Clone)]
pub struct ServiceContext {
    /// The service's data: of the partition the path names, or of the default partition.
    pub archive: ServiceArchive,
    /// `{public base URL}/dicom/{workspace}/{service}/{version}`, followed by
    /// `/partitions/{name}` under a partition, for RetrieveURL.
    pub base_url: String,
    /// The export destinations' rules.
    pub export_policy: hds_archive::ExportPolicy,
    /// Whether the service has data partitions.
    pub data_partitions: bool,
}

impl FromRequestParts<DicomWebState> for ServiceContext {
    type Rejection = DicomWebError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &DicomWebState,
    ) -> Result<Self, Self::Rejection> {
        // Nesting strips the prefix from `parts.uri`; the original URI keeps it.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map(|original| original.0.path().to_owned())
            .unwrap_or_else(|| parts.uri.path().to_owned());
        // Who is calling comes first: until then nothing about the address is revealed, not
        // even whether a service lives there.
        let caller = state
            .access
            .authenticate(&parts.headers)
            .await
            .map_err(DicomWebError::Refused)?;
        let prefix = service_prefix(&path).ok_or(DicomWebError::ServiceNotFound)?;
        let [workspace, service, version] = prefix;
        if version != "v1" && version != "v2" {
            return Err(DicomWebError::ServiceNotFound);
        }
        let resolved = state
            .services
            .resolve(workspace, service)
            .await?
            .ok_or(DicomWebError::ServiceNotFound)?;
        let access = data_access(&parts.method, &path);
        state
            .access
            .authorize(&caller, &resolved.resource_id, access)
            .await
            .map_err(DicomWebError::Refused)?;
        // Only a caller allowed to use the service learns the state of its key.
        if let Some(unavailable) = resolved.unavailable {
            return Err(DicomWebError::Unavailable {
                code: unavailable.code,
                message: unavailable.message,
            });
        }
        let route = partition_route(&parts.method, &path);
        check_partition_route(resolved.data_partitions, &route)?;
        let archive = state
            .archive
            .service(&resolved.service_key, resolved.keyring);
        if !archive.is_unlocked() {
            return Err(DicomWebError::key_access_lost());
        }
        // The configured public URL, never the Host header: a response's URLs must not point
        // wherever the client's headers say.
        let mut base_url = format!(
            "{}/dicom/{}/{}/{}",
            state.config.public_base_url, workspace, service, version
        );
        let archive = match route {
            PartitionRoute::Partition { name, creates } => {
                let exists = if creates {
                    archive.partition_or_add(name).await.map(|_| true)?
                } else {
                    archive.find_partition(name).await?.is_some()
                };
                if !exists {
                    return Err(DicomWebError::Partition {
                        code: "DataPartitionNotFound",
                        message: "Specified PartitionName does not exist.".into(),
                    });
                }
                base_url.push_str("/partitions/");
                base_url.push_str(name);
                archive.partition(name)
            }
            PartitionRoute::Service | PartitionRoute::Data => archive,
        };
        Ok(ServiceContext {
            archive,
            base_url,
            export_policy: state.config.export_policy.clone(),
            data_partitions: resolved.data_partitions,
        })
    }
}

/// What a request does: reads are reads; a change of the extended query tags and an export
/// need their own data actions, as in Azure; other writes are stores, deletes are deletes. Workitems follow the
/// same rule, as Azure's DICOM service checks them: retrieve and search need the read data
/// action, every other UPS-RS transaction (create, update, change state, cancel request) the
/// write one.
fn data_access(method: &axum::http::Method, path: &str) -> DataAccess {
    use axum::http::Method;
    let manages_tags = path
        .trim_start_matches('/')
        .split('/')
        .nth(4)
        .is_some_and(|segment| segment.eq_ignore_ascii_case("extendedquerytags"));
    let exports = path
        .trim_start_matches('/')
        .split('/')
        .nth(4)
        .is_some_and(|segment| segment.eq_ignore_ascii_case("export"));
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => DataAccess::Read,
        _ if manages_tags => DataAccess::ManageExtendedQueryTags,
        _ if exports => DataAccess::Export,
        Method::POST | Method::PUT => DataAccess::Write,
        Method::DELETE => DataAccess::Delete,
        _ => DataAccess::Read,
    }
}

/// What a request's path says about data partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartitionRoute<'a> {
    /// A route of the whole service, never partitioned (as in Azure): the change feed (whose
    /// entries name their partition), extended query tags, operations, the partition list.
    Service,
    /// A data route without a partition: the default partition's data, in a service without
    /// partitions.
    Data,
    /// A data route under `partitions/{name}/`.
    Partition {
        /// The name as sent (not checked yet).
        name: &'a str,
        /// Whether the request may create the partition: a store (STOW-RS, upsert) or a new
        /// workitem, as in Azure.
        creates: bool,
    },
}

/// Which [`PartitionRoute`] a request of `method` to `path`
/// (`/dicom/{workspace}/{service}/{version}/...`) is.
fn partition_route<'a>(method: &axum::http::Method, path: &'a str) -> PartitionRoute<'a> {
    use axum::http::Method;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').skip(4).collect();
    match segments.as_slice() {
        ["partitions", name, rest @ ..] if !rest.is_empty() => PartitionRoute::Partition {
            name,
            creates: match rest {
                ["studies", study] if is_bulk_update(study) => false,
                ["studies"] | ["studies", _] => *method == Method::POST || *method == Method::PUT,
                ["workitems"] => *method == Method::POST,
                _ => false,
            },
        },
        [first, ..]
            if [
                "changefeed",
                "export",
                "extendedquerytags",
                "operations",
                "partitions",
            ]
            .iter()
            .any(|route| first.eq_ignore_ascii_case(route)) =>
        {
            PartitionRoute::Service
        }
        _ => PartitionRoute::Data,
    }
}

/// Whether a path segment after `studies/` names bulk update rather than a study (Azure's
/// spelling, matched without case as ASP.NET matches routes).
fn is_bulk_update(segment: &str) -> bool {
    segment.eq_ignore_ascii_case("$bulkUpdate")
}

/// Azure's answers to a route that does not fit the service: a partition route while
/// partitions are disabled, a data route without one while they are enabled, a name outside
/// Azure's rules (the name itself is not echoed: it is the client's input).
fn check_partition_route(
    data_partitions: bool,
    route: &PartitionRoute<'_>,
) -> Result<(), DicomWebError> {
    match (data_partitions, route) {
        (false, PartitionRoute::Partition { .. }) => Err(DicomWebError::Partition {
            code: "DataPartitionsFeatureDisabled",
            message: "Data partitions feature is disabled.".into(),
        }),
        (true, PartitionRoute::Data) => Err(DicomWebError::Partition {
            code: "DataPartitionsMissingPartition",
            message: "PartitionName value is missing in the route segment.".into(),
        }),
        (true, PartitionRoute::Partition { name, .. }) => hds_archive::check_partition_name(name)
            .map_err(|error| DicomWebError::Partition {
                code: "InvalidPartitionName",
                message: format!("The specified PartitionName is invalid: {error}."),
            }),
        _ => Ok(()),
    }
}

/// `[workspace, service, version]` from a path `/dicom/{workspace}/{service}/{version}/...`.
fn service_prefix(path: &str) -> Option<[&str; 3]> {
    let mut segments = path.trim_start_matches('/').split('/');
    if segments.next()? != "dicom" {
        return None;
    }
    Some([segments.next()?, segments.next()?, segments.next()?])
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    #[test]
    fn export_needs_its_own_data_action() {
        let path = "/dicom/ws/svc/v2/export";
        assert_eq!(data_access(&Method::POST, path), DataAccess::Export);
        assert_eq!(
            data_access(&Method::POST, "/dicom/ws/svc/v1/EXPORT"),
            DataAccess::Export
        );
        assert_eq!(
            data_access(&Method::GET, "/dicom/ws/svc/v2/operations/abc"),
            DataAccess::Read
        );
        assert_eq!(
            data_access(&Method::POST, "/dicom/ws/svc/v2/studies"),
            DataAccess::Write
        );
    }

    const BASE: &str = "/dicom/ws/svc/v2";

    #[test]
    fn stores_and_new_workitems_create_partitions_and_nothing_else_does() {
        let route = |method: Method, rest: &str| {
            let path = format!("{BASE}/{rest}");
            match partition_route(&method, &path) {
                PartitionRoute::Partition { name, creates } => {
                    assert_eq!(name, "p1");
                    Some(creates)
                }
                _ => None,
            }
        };
        assert_eq!(route(Method::POST, "partitions/p1/studies"), Some(true));
        assert_eq!(route(Method::PUT, "partitions/p1/studies/1.2"), Some(true));
        assert_eq!(route(Method::POST, "partitions/p1/workitems"), Some(true));
        // Bulk update is not a store, in any spelling.
        for spelling in ["$bulkUpdate", "$bulkupdate", "$BULKUPDATE"] {
            let rest = format!("partitions/p1/studies/{spelling}");
            assert_eq!(route(Method::POST, &rest), Some(false), "{spelling}");
        }
        assert_eq!(route(Method::GET, "partitions/p1/studies"), Some(false));
        assert_eq!(route(Method::GET, "partitions/p1/workitems"), Some(false));
        assert_eq!(
            route(Method::POST, "partitions/p1/workitems/1.2"),
            Some(false)
        );
        assert_eq!(
            route(Method::DELETE, "partitions/p1/studies/1.2"),
            Some(false)
        );
        assert_eq!(
            route(Method::GET, "partitions/p1/studies/1/series"),
            Some(false)
        );
    }

    #[test]
    fn service_routes_are_never_partitioned() {
        for rest in [
            "changefeed",
            "changefeed/latest",
            "extendedquerytags/x",
            "operations/1",
            "partitions",
        ] {
            let path = format!("{BASE}/{rest}");
            assert_eq!(
                partition_route(&Method::GET, &path),
                PartitionRoute::Service,
                "{rest}"
            );
        }
        let path = format!("{BASE}/studies");
        assert_eq!(partition_route(&Method::GET, &path), PartitionRoute::Data);
    }

    #[test]
    fn partition_routes_fit_the_service_or_are_refused_as_azure_refuses_them() {
        let code =
            |enabled: bool, route: PartitionRoute<'_>| match check_partition_route(enabled, &route)
            {
                Ok(()) => "ok",
                Err(DicomWebError::Partition { code, .. }) => code,
                Err(_) => "other",
            };
        let named = |name| PartitionRoute::Partition {
            name,
            creates: false,
        };
        assert_eq!(code(false, named("p1")), "DataPartitionsFeatureDisabled");
        assert_eq!(
            code(true, PartitionRoute::Data),
            "DataPartitionsMissingPartition"
        );
        assert_eq!(code(true, PartitionRoute::Service), "ok");
        assert_eq!(code(false, PartitionRoute::Data), "ok");
        assert_eq!(code(true, named("p1")), "ok");
        let long = "a".repeat(65);
        for hostile in ["..", ".", "a%2Fb", long.as_str(), "a b", ""] {
            assert_eq!(
                code(true, named(hostile)),
                "InvalidPartitionName",
                "{hostile}"
            );
        }
    }
}
