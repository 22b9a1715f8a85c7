//! The audit log's producers and readers: access-control decorators that record every key
//! operation on the vaults' data plane, every change of keys and role assignments on the
//! control plane, and every DICOM data request, with the caller's principal id, the action, the
//! resource id and the authorization decision; and `hds audit list` / `hds audit verify`.
//!
//! Key operations and role changes are appended before the decision is returned, and a
//! decision whose record cannot be written is a refusal: nothing audited happens unrecorded.
//! DICOM data requests are queued and appended in batches (a full queue refuses the request).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::http::HeaderMap;
use clap::{Args, Subcommand};
use hds_arm::{ArmAccessControl, ArmError, ArmFuture, Caller as ArmCaller, ResourceId};
use hds_audit::{AuditEvent, AuditFilter, AuditLog, AuditQueue, Verification};
use hds_db::Database;
use hds_dicomweb::{AccessRefusal, Caller as DicomCaller, DataAccess, DicomAccessControl};
use hds_identity::auth::AuthenticatedPrincipal;
use hds_identity::roles::actions;
use hds_keyvault::access::{AccessError, BoxFuture, Caller as VaultCaller, VaultAccessControl};
use std::future::Future;
use std::pin::Pin;

/// Whether a vault data action is audited: every key operation except reading a key.
fn audited_vault_action(data_action: &str) -> bool {
    data_action.starts_with("Microsoft.KeyVault/vaults/keys/") && !data_action.ends_with("/read")
}

/// Whether a control-plane action is audited: role assignments and keys, written or deleted.
fn audited_arm_action(action: &str) -> bool {
    let lower = action.to_ascii_lowercase();
    (lower.starts_with("microsoft.authorization/roleassignments/")
        || lower.starts_with("microsoft.keyvault/vaults/keys/"))
        && !lower.ends_with("/read")
}

fn outcome(allowed: bool) -> String {
    if allowed { "allowed" } else { "denied" }.to_owned()
}

/// A vault access control that records the key operations `inner` decides on.
pub struct AuditedVaultAccess<A> {
    pub inner: A,
    pub audit: AuditLog,
}

impl<A: VaultAccessControl> VaultAccessControl for AuditedVaultAccess<A> {
    fn authenticate<'a>(
        &'a self,
        bearer: &'a str,
    ) -> BoxFuture<'a, Result<VaultCaller, AccessError>> {
        self.inner.authenticate(bearer)
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a VaultCaller,
        data_action: &'a str,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(async move {
            let decision = self.inner.authorize(caller, data_action, scope).await;
            if !audited_vault_action(data_action) {
                return decision;
            }
            let allowed = match &decision {
                Ok(()) => true,
                Err(AccessError::Denied) => false,
                // No decision was made (the identity service failed): nothing to record.
                Err(_) => return decision,
            };
            let event = AuditEvent {
                principal_id: caller.principal_id.clone(),
                operation: data_action.to_owned(),
                resource_id: scope.to_owned(),
                outcome: outcome(allowed),
            };
            if let Err(error) = self.audit.append(&event).await {
                tracing::error!(%error, "an audit record could not be written; refusing");
                return Err(AccessError::Unavailable(
                    "the audit log is unavailable".to_owned(),
                ));
            }
            decision
        })
    }
}

/// A control-plane access control that records changes of role assignments and keys.
pub struct AuditedArmAccess {
    pub inner: Arc<dyn ArmAccessControl>,
    pub audit: AuditLog,
}

impl ArmAccessControl for AuditedArmAccess {
    fn authenticate<'a>(&'a self, headers: &'a HeaderMap) -> ArmFuture<'a, ArmCaller> {
        self.inner.authenticate(headers)
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a ArmCaller,
        action: &'a str,
        scope: &'a ResourceId,
    ) -> ArmFuture<'a, ()> {
        Box::pin(async move {
            let decision = self.inner.authorize(caller, action, scope).await;
            if !audited_arm_action(action) {
                return decision;
            }
            let allowed = match &decision {
                Ok(()) => true,
                Err(error) if error.status() == axum::http::StatusCode::FORBIDDEN => false,
                Err(_) => return decision,
            };
            let event = AuditEvent {
                principal_id: caller.principal_id.clone(),
                operation: action.to_owned(),
                resource_id: scope.to_string(),
                outcome: outcome(allowed),
            };
            if let Err(error) = self.audit.append(&event).await {
                return Err(ArmError::internal(&format!(
                    "an audit record could not be written; refusing: {error}"
                )));
            }
            decision
        })
    }
}

/// A DICOMweb access control that records every data request's decision (who, which data
/// action, which DICOM service, allowed or denied), as Azure's DICOM `AuditLogs` do. Records
/// name the service's resource id, never a UID or any other DICOM value. They go through the
/// batching [`AuditQueue`]: one record per request would otherwise cost one more write
/// transaction beside every STOW's. A full queue refuses the request (503): nothing is served
/// unrecorded.
pub struct AuditedDicomAccess<A> {
    pub inner: A,
    pub queue: AuditQueue,
}

impl<A: DicomAccessControl> DicomAccessControl for AuditedDicomAccess<A> {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> Pin<Box<dyn Future<Output = Result<DicomCaller, AccessRefusal>> + Send + 'a>> {
        self.inner.authenticate(headers)
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a DicomCaller,
        resource_id: &'a str,
        access: DataAccess,
    ) -> Pin<Box<dyn Future<Output = Result<(), AccessRefusal>> + Send + 'a>> {
        Box::pin(async move {
            let decision = self.inner.authorize(caller, resource_id, access).await;
            let allowed = match &decision {
                Ok(()) => true,
                Err(refusal) if refusal.status == axum::http::StatusCode::FORBIDDEN => false,
                Err(_) => return decision,
            };
            let principal_id = caller
                .downcast_ref::<AuthenticatedPrincipal>()
                .map(|principal| principal.principal_id.clone())
                .unwrap_or_default();
            let event = AuditEvent {
                principal_id,
                operation: dicom_data_action(access).to_owned(),
                resource_id: resource_id.to_owned(),
                outcome: outcome(allowed),
            };
            if self.queue.record(event).is_err() {
                tracing::error!("the audit log's queue is full; refusing a DICOM request");
                return Err(AccessRefusal {
                    status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    code: "AuditLogUnavailable",
                    message: "the audit log is behind; try again shortly".into(),
                    challenge: None,
                });
            }
            decision
        })
    }
}

/// The audited Graph operation of a request, if it changes applications, service principals or
/// their secrets: Entra's directory action names, e.g.
/// `microsoft.directory/applications/credentials/update` for `addPassword`.
fn graph_operation(method: &axum::http::Method, path: &str) -> Option<String> {
    use axum::http::Method;
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if segments.first() != Some(&"") || segments.get(1) != Some(&"v1.0") {
        return None;
    }
    let collection = match segments.get(2).map(|segment| segment.to_ascii_lowercase()) {
        Some(name) if name == "applications" => "applications",
        Some(name) if name == "serviceprincipals" => "servicePrincipals",
        _ => return None,
    };
    let action = match (method, segments.len()) {
        (&Method::POST, 3) => "create",
        (&Method::PATCH, 4) => "basic/update",
        (&Method::DELETE, 4) => "delete",
        // addPassword, removePassword.
        (&Method::POST, 5) => "credentials/update",
        _ => return None,
    };
    Some(format!("microsoft.directory/{collection}/{action}"))
}

/// Records every change of applications, service principals and their secrets made through
/// Graph: who (the caller's principal id), what, which object (its Graph path), and whether it
/// was done (a 2xx) or refused (403). The record is appended once the change is made; if it
/// cannot be written, the answer becomes a 500 and the failure is logged (the change stands).
pub async fn audit_graph_changes(
    axum::extract::State((identity, audit)): axum::extract::State<(
        hds_identity::Identity,
        AuditLog,
    )>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(operation) = graph_operation(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let resource_id = request.uri().path().to_owned();
    let caller = hds_identity::graph::authenticate_graph(&identity, request.headers())
        .await
        .ok()
        .map(|principal| principal.principal_id);
    let response = next.run(request).await;
    let status = response.status();
    let allowed = if status.is_success() {
        true
    } else if status == axum::http::StatusCode::FORBIDDEN {
        false
    } else {
        return response;
    };
    let event = AuditEvent {
        principal_id: caller.unwrap_or_default(),
        operation,
        resource_id,
        outcome: outcome(allowed),
    };
    if let Err(error) = audit.append(&event).await {
        tracing::error!(%error, "a Graph change could not be recorded in the audit log");
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({
                "error": {"code": "AuditLogUnavailable", "message": "The change was made but could not be recorded in the audit log."}
            })),
        )
            .into_response();
    }
    response
}

/// The data action a DICOM request is authorized for (Azure's names).
fn dicom_data_action(access: DataAccess) -> &'static str {
    match access {
        DataAccess::Read => actions::DICOM_READ,
        DataAccess::Write => actions::DICOM_WRITE,
        DataAccess::Delete => actions::DICOM_DELETE,
        DataAccess::ManageExtendedQueryTags => actions::DICOM_MANAGE_EXTENDED_QUERY_TAGS,
        DataAccess::Export => actions::DICOM_EXPORT,
    }
}

/// `hds audit ...`: read and check the audit log of a data dir.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print audit records (JSON lines, the oldest first).
    List(AuditListOptions),
    /// Recompute the chain; exit 1 if a record was changed, inserted or removed.
    Verify(AuditDataOptions),
}

/// Where the audit log is.
#[derive(Debug, Args)]
pub struct AuditDataOptions {
    /// The data dir of the hds whose log to read.
    #[arg(long, env = "HDS_DATA_DIR", default_value_os_t = crate::cli::default_data_dir())]
    pub data_dir: PathBuf,

    /// The index `hds up` runs with: `sqlite` (the data dir's `index.db`) or a PostgreSQL URL.
    #[arg(long, env = "HDS_INDEX", default_value = "sqlite")]
    pub index: String,

    /// How the data dir keeps its root key: the flags `hds up` runs with.
    #[command(flatten)]
    pub root_key: crate::root_key::RootKeyOptions,
}

/// Options of `hds audit list`.
#[derive(Debug, Args)]
pub struct AuditListOptions {
    #[command(flatten)]
    pub data: AuditDataOptions,

    /// Only records of this principal id.
    #[arg(long)]
    pub principal: Option<String>,

    /// Only this operation, e.g. Microsoft.KeyVault/vaults/keys/wrap/action.
    #[arg(long)]
    pub operation: Option<String>,

    /// Only this resource id and those under it.
    #[arg(long)]
    pub resource: Option<String>,

    /// Only records of the last DURATION (e.g. 1h, 30m).
    #[arg(long, value_parser = crate::cli::parse_duration)]
    pub since: Option<std::time::Duration>,

    /// At most this many records.
    #[arg(long)]
    pub limit: Option<u32>,
}

async fn open(options: &AuditDataOptions) -> anyhow::Result<AuditLog> {
    let root_key = crate::root_key::open_existing(&options.data_dir, &options.root_key)?;
    let url = match options.index.as_str() {
        "sqlite" => format!("sqlite:{}", options.data_dir.join("index.db").display()),
        url => url.to_owned(),
    };
    let database = Database::connect(&url)
        .await
        .context("opening the database")?;
    AuditLog::open(database, &root_key)
        .await
        .context("opening the audit log")
}

pub async fn list(options: AuditListOptions) -> anyhow::Result<()> {
    let audit = open(&options.data).await?;
    let since_ms = options.since.map(|since| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let since = i128::try_from(since.as_millis()).unwrap_or(i128::MAX);
        i64::try_from(now.saturating_sub(since)).unwrap_or(0)
    });
    let records = audit
        .list(&AuditFilter {
            principal_id: options.principal,
            operation: options.operation,
            resource_id: options.resource,
            since_ms,
            limit: options.limit,
            ..AuditFilter::default()
        })
        .await?;
    for record in records {
        let time = rfc3339_of_ms(record.recorded_ms);
        let line = serde_json::json!({
            "sequence": record.sequence,
            "time": time,
            "principalId": record.event.principal_id,
            "operation": record.event.operation,
            "resourceId": record.event.resource_id,
            "outcome": record.event.outcome,
        });
        println!("{line}");
    }
    Ok(())
}

fn rfc3339_of_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The longest `$filter` the activity log takes.
const MAX_ACTIVITY_FILTER: usize = 2048;
/// The most events on one page of the activity log (the rest through `nextLink`).
const ACTIVITY_PAGE: u32 = 1000;
/// The action that reads the activity log (in Reader's `*/read`).
const ACTIVITY_LOG_READ: &str = "Microsoft.Insights/eventtypes/values/read";

#[derive(Clone)]
struct ActivityLog {
    audit: AuditLog,
    access: Arc<dyn ArmAccessControl>,
    tenant_id: String,
    public_url: String,
}

/// The audit log as Azure Monitor's activity log serves events, so `az monitor activity-log
/// list` and the SDKs read it: `GET /subscriptions/{sub}/providers/Microsoft.Insights/
/// eventtypes/management/values?api-version=...&$filter=...`. The caller needs read access
/// (`Microsoft.Insights/eventtypes/values/read`, in Reader) at the scope the filter names: the
/// subscription, a resource group (`resourceGroupName eq`) or a resource (`resourceUri eq`).
///
/// ARM's router owns every path under `/subscriptions/`, so this one is a layer for the main
/// router ([`ActivityLogLayer::route`]) that takes the activity log's path before ARM sees it.
#[derive(Clone)]
pub struct ActivityLogLayer {
    router: axum::Router,
}

impl ActivityLogLayer {
    pub fn new(
        audit: AuditLog,
        access: Arc<dyn ArmAccessControl>,
        tenant_id: &str,
        public_url: &str,
    ) -> ActivityLogLayer {
        let router = axum::Router::new()
            .route(
                "/{subscriptions}/{subscription}/{providers}/{namespace}/{eventtypes}/{management}/{values}",
                axum::routing::get(activity_log_events),
            )
            .with_state(ActivityLog {
                audit,
                access,
                tenant_id: tenant_id.to_owned(),
                public_url: public_url.trim_end_matches('/').to_owned(),
            });
        ActivityLogLayer { router }
    }

    /// The middleware: the activity log's path to its router, everything else on.
    pub async fn route(
        axum::extract::State(layer): axum::extract::State<ActivityLogLayer>,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        if !is_activity_log_path(request.uri().path()) {
            return next.run(request).await;
        }
        use tower::ServiceExt;
        match layer.router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// `/subscriptions/{sub}/providers/Microsoft.Insights/eventtypes/management/values`, the
/// namespace and the fixed words in any case (ARM's paths are case-insensitive).
fn is_activity_log_path(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["", subscriptions, subscription, providers, namespace, eventtypes, management, values]
            if subscriptions.eq_ignore_ascii_case("subscriptions")
                && !subscription.is_empty()
                && providers.eq_ignore_ascii_case("providers")
                && namespace.eq_ignore_ascii_case("Microsoft.Insights")
                && eventtypes.eq_ignore_ascii_case("eventtypes")
                && management.eq_ignore_ascii_case("management")
                && values.eq_ignore_ascii_case("values")
    )
}

/// What an activity-log `$filter` asks for.
#[derive(Debug, Default, PartialEq)]
struct ActivityFilter {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    resource_group: Option<String>,
    resource_uri: Option<String>,
    caller: Option<String>,
}

fn activity_error(message: impl Into<String>) -> ArmError {
    ArmError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "BadRequest",
        message.into(),
    )
}

/// Parses `eventTimestamp ge 'T' [and eventTimestamp le 'T'] [and resourceGroupName eq 'G' |
/// resourceUri eq 'ID' | resourceId eq 'ID'] [and caller eq 'P']`, terms joined by `and` in any
/// order. `eventTimestamp ge` is required, as Azure requires it.
fn parse_activity_filter(filter: &str) -> Result<ActivityFilter, ArmError> {
    if filter.len() > MAX_ACTIVITY_FILTER {
        return Err(activity_error(format!(
            "$filter is longer than {MAX_ACTIVITY_FILTER} characters"
        )));
    }
    let mut parsed = ActivityFilter::default();
    let mut rest = filter.trim();
    while !rest.is_empty() {
        let (field, after) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| activity_error("$filter: expected 'field op 'value''"))?;
        let after = after.trim_start();
        let (operator, after) = after
            .split_once(char::is_whitespace)
            .ok_or_else(|| activity_error("$filter: expected an operator"))?;
        let after = after.trim_start();
        // 'quoted', or bare up to the next space (az sends its times bare).
        let (value, after) = match after.strip_prefix('\'') {
            Some(quoted) => quoted
                .split_once('\'')
                .ok_or_else(|| activity_error("$filter: an unterminated quoted value"))?,
            None => after.split_once(char::is_whitespace).unwrap_or((after, "")),
        };
        let timestamp = || activity_time(value);
        match (
            field.to_ascii_lowercase().as_str(),
            operator.to_ascii_lowercase().as_str(),
        ) {
            ("eventtimestamp", "ge") => parsed.since_ms = Some(timestamp()?),
            ("eventtimestamp", "le") => parsed.until_ms = Some(timestamp()?),
            ("resourcegroupname", "eq") => parsed.resource_group = Some(value.to_owned()),
            ("resourceuri" | "resourceid", "eq") => parsed.resource_uri = Some(value.to_owned()),
            ("caller", "eq") => parsed.caller = Some(value.to_owned()),
            _ => {
                return Err(activity_error(format!(
                    "$filter: '{field} {operator}' is not supported; use eventTimestamp ge/le, resourceGroupName eq, resourceUri eq or caller eq"
                )));
            }
        }
        rest = after.trim_start();
        if !rest.is_empty() {
            rest = rest
                .strip_prefix("and ")
                .or_else(|| rest.strip_prefix("AND "))
                .ok_or_else(|| activity_error("$filter: terms are joined by 'and'"))?
                .trim_start();
        }
    }
    if parsed.since_ms.is_none() {
        return Err(activity_error(
            "$filter must include eventTimestamp ge '<RFC 3339 time>'",
        ));
    }
    if parsed.resource_group.is_some() && parsed.resource_uri.is_some() {
        return Err(activity_error(
            "$filter: give resourceGroupName or resourceUri, not both",
        ));
    }
    Ok(parsed)
}

/// An RFC 3339 time, or one without a zone (as az sends `datetime.utcnow().isoformat()`),
/// which is UTC; in ms since the epoch.
fn activity_time(value: &str) -> Result<i64, ArmError> {
    let rfc3339 = time::format_description::well_known::Rfc3339;
    let has_zone = value.ends_with(['Z', 'z'])
        || value
            .rsplit_once('T')
            .is_some_and(|(_, clock)| clock.contains(['+', '-']));
    let parsed = if has_zone {
        time::OffsetDateTime::parse(value, &rfc3339)
    } else {
        time::OffsetDateTime::parse(&format!("{value}Z"), &rfc3339)
    };
    parsed
        .map(|time| i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        .map_err(|_| activity_error(format!("$filter: '{value}' is not an RFC 3339 time")))
}

async fn activity_log_events(
    axum::extract::State(log): axum::extract::State<ActivityLog>,
    uri: axum::http::Uri,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ArmError> {
    // The path was matched by `is_activity_log_path`: its third segment is the subscription.
    // (Read from the URI: the request went through ARM's catch-all route, whose parameters
    // are already on it.)
    let subscription = uri.path().split('/').nth(2).unwrap_or_default().to_owned();
    let caller = log.access.authenticate(&headers).await?;
    let parameter = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    };
    if parameter("api-version").is_none() {
        return Err(ArmError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    }
    let filter = parse_activity_filter(parameter("$filter").unwrap_or_default())?;
    let after_sequence = match parameter("$skipToken") {
        Some(token) => Some(
            token
                .parse::<i64>()
                .ok()
                .filter(|sequence| *sequence >= 0)
                .ok_or_else(|| activity_error("$skipToken is not one this service gave"))?,
        ),
        None => None,
    };
    let subscription_scope = ResourceId::subscription(&subscription);
    let scope = match (&filter.resource_group, &filter.resource_uri) {
        (Some(group), _) => ResourceId::resource_group(&subscription, group),
        (_, Some(uri)) => {
            let id = ResourceId::parse(uri)
                .map_err(|_| activity_error(format!("resourceUri '{uri}' is not a resource id")))?;
            if !id.is_within(&subscription_scope) {
                return Err(activity_error(
                    "resourceUri names a resource of another subscription",
                ));
            }
            id
        }
        _ => subscription_scope,
    };
    log.access
        .authorize(&caller, ACTIVITY_LOG_READ, &scope)
        .await?;
    let records = log
        .audit
        .list(&AuditFilter {
            principal_id: filter.caller.clone(),
            resource_id: Some(scope.as_str().to_owned()),
            since_ms: filter.since_ms,
            until_ms: filter.until_ms,
            after_sequence,
            limit: Some(ACTIVITY_PAGE + 1),
            ..AuditFilter::default()
        })
        .await
        .map_err(|error| ArmError::internal(&error))?;
    let more = records.len() > ACTIVITY_PAGE as usize;
    let page = &records[..records.len().min(ACTIVITY_PAGE as usize)];
    let value: Vec<serde_json::Value> = page
        .iter()
        .map(|record| activity_event(record, &log.tenant_id))
        .collect();
    let mut body = serde_json::json!({ "value": value });
    if let (true, Some(last)) = (more, page.last()) {
        // The request's own parameters, then where this page ended.
        let mut pairs: Vec<(&str, String)> = query
            .iter()
            .filter(|(key, _)| !key.eq_ignore_ascii_case("$skipToken"))
            .map(|(key, value)| (key.as_str(), value.clone()))
            .collect();
        pairs.sort();
        pairs.push(("$skipToken", last.sequence.to_string()));
        let next = format!(
            "{}/subscriptions/{subscription}/providers/Microsoft.Insights/eventtypes/management/values?{}",
            log.public_url,
            serde_urlencoded::to_string(&pairs).map_err(|error| ArmError::internal(&error))?
        );
        body["nextLink"] = serde_json::json!(next);
    }
    Ok(axum::Json(body))
}

/// One audit record in the shape of an activity log event (`EventData`).
fn activity_event(record: &hds_audit::AuditRecord, tenant_id: &str) -> serde_json::Value {
    let event = &record.event;
    let time = rfc3339_of_ms(record.recorded_ms);
    let id = ResourceId::parse(&event.resource_id).ok();
    let allowed = event.outcome == "allowed";
    // Control-plane changes are the activity log's own category; data-plane key and DICOM
    // operations are what Azure keeps in diagnostic `AuditEvent`/`AuditLogs`.
    let category = if audited_arm_action(&event.operation) {
        "Administrative"
    } else {
        "Audit"
    };
    let event_data_id = format!("00000000-0000-4000-8000-{:012x}", record.sequence);
    serde_json::json!({
        "authorization": { "action": event.operation, "scope": event.resource_id },
        "caller": event.principal_id,
        "channels": "Operation",
        "category": { "value": category, "localizedValue": category },
        "eventDataId": event_data_id,
        "eventName": { "value": "EndRequest", "localizedValue": "End request" },
        "eventTimestamp": time,
        "id": format!("{}/events/{event_data_id}", event.resource_id),
        "level": if allowed { "Informational" } else { "Warning" },
        "operationId": event_data_id,
        "operationName": { "value": event.operation, "localizedValue": event.operation },
        "resourceGroupName": id.as_ref().and_then(|id| id.resource_group_name()),
        "resourceProviderName": id.as_ref().and_then(|id| id.namespace()).map(|namespace| serde_json::json!({ "value": namespace, "localizedValue": namespace })),
        "resourceId": event.resource_id,
        "status": if allowed {
            serde_json::json!({ "value": "Succeeded", "localizedValue": "Succeeded" })
        } else {
            serde_json::json!({ "value": "Failed", "localizedValue": "Failed" })
        },
        "subStatus": if allowed {
            serde_json::json!({ "value": "", "localizedValue": "" })
        } else {
            serde_json::json!({ "value": "Forbidden", "localizedValue": "Forbidden (HTTP Status Code: 403)" })
        },
        "submissionTimestamp": time,
        "subscriptionId": id.as_ref().map(|id| id.subscription_id()),
        "tenantId": tenant_id,
        "properties": { "outcome": event.outcome, "sequence": record.sequence.to_string() },
    })
}

pub async fn verify(options: AuditDataOptions) -> anyhow::Result<()> {
    let audit = open(&options).await?;
    match audit.verify().await? {
        Verification::Intact { records } => {
            println!("the audit log is intact: {records} records");
            Ok(())
        }
        Verification::Broken { sequence, reason } => {
            anyhow::bail!("the audit log is broken at record {sequence}: {reason}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_log_filters_as_az_and_the_sdks_write_them() {
        let parsed = parse_activity_filter(
            "eventTimestamp ge 2026-12-03T09:00:00.123456 and eventTimestamp le 2026-12-03T10:00:00 and resourceId eq '/subscriptions/s/resourceGroups/g'",
        )
        .expect("az's filter");
        assert_eq!(parsed.since_ms, Some(1_796_288_400_123));
        assert_eq!(parsed.until_ms, Some(1_796_292_000_000));
        assert_eq!(
            parsed.resource_uri.as_deref(),
            Some("/subscriptions/s/resourceGroups/g")
        );
        let parsed = parse_activity_filter(
            "eventTimestamp ge '2026-12-03T09:00:00+01:00' and resourceGroupName eq 'g' and caller eq 'p'",
        )
        .expect("quoted");
        assert_eq!(parsed.since_ms, Some(1_796_284_800_000));
        assert_eq!(parsed.resource_group.as_deref(), Some("g"));
        assert_eq!(parsed.caller.as_deref(), Some("p"));
        for hostile in [
            "",
            "caller eq 'p'",
            "eventTimestamp ge 'then'",
            "eventTimestamp gt '2026-12-03T09:00:00Z'",
            "eventTimestamp ge '2026-12-03T09:00:00Z' or caller eq 'p'",
            "eventTimestamp ge '2026-12-03T09:00:00Z' and status eq 'Failed'",
            "eventTimestamp ge '2026-12-03T09:00:00Z and caller eq 'p'",
            "eventTimestamp ge '2026-12-03T09:00:00Z' and resourceGroupName eq 'g' and resourceUri eq '/x'",
        ] {
            assert!(
                parse_activity_filter(hostile).is_err(),
                "{hostile:?} was accepted"
            );
        }
        assert!(parse_activity_filter(&"x".repeat(MAX_ACTIVITY_FILTER + 1)).is_err());
    }

    #[test]
    fn the_activity_log_path_is_recognised_in_any_case_and_nothing_else_is() {
        assert!(is_activity_log_path(
            "/subscriptions/s/providers/Microsoft.Insights/eventtypes/management/values"
        ));
        assert!(is_activity_log_path(
            "/SUBSCRIPTIONS/s/providers/microsoft.insights/EventTypes/management/values/"
        ));
        for other in [
            "/subscriptions//providers/Microsoft.Insights/eventtypes/management/values",
            "/subscriptions/s/providers/Microsoft.Insights/eventtypes/management",
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Insights/eventtypes/management/values",
            "/subscriptions/s/providers/Microsoft.KeyVault/eventtypes/management/values",
        ] {
            assert!(!is_activity_log_path(other), "{other}");
        }
    }

    #[test]
    fn graph_changes_are_named_as_entra_names_them_and_reads_are_not_audited() {
        use axum::http::Method;
        let id = "/v1.0/applications/0c8e2a64-5d0e-4f4e-9d5c-1f3a1f0e7b11";
        assert_eq!(
            graph_operation(&Method::POST, "/v1.0/applications").as_deref(),
            Some("microsoft.directory/applications/create")
        );
        assert_eq!(
            graph_operation(&Method::POST, &format!("{id}/addPassword")).as_deref(),
            Some("microsoft.directory/applications/credentials/update")
        );
        assert_eq!(
            graph_operation(&Method::DELETE, "/v1.0/servicePrincipals/x").as_deref(),
            Some("microsoft.directory/servicePrincipals/delete")
        );
        assert_eq!(graph_operation(&Method::GET, id), None);
        assert_eq!(graph_operation(&Method::GET, "/v1.0/applications"), None);
        assert_eq!(
            graph_operation(&Method::POST, "/v1.0/directoryObjects/getByIds"),
            None
        );
        assert_eq!(graph_operation(&Method::POST, "/v2.0/applications"), None);
    }

    #[test]
    fn key_operations_and_role_changes_are_audited_reads_are_not() {
        assert!(audited_vault_action(
            "Microsoft.KeyVault/vaults/keys/wrap/action"
        ));
        assert!(audited_vault_action(
            "Microsoft.KeyVault/vaults/keys/rotate/action"
        ));
        assert!(!audited_vault_action("Microsoft.KeyVault/vaults/keys/read"));
        assert!(audited_arm_action(
            "Microsoft.Authorization/roleAssignments/write"
        ));
        assert!(audited_arm_action(
            "Microsoft.Authorization/roleAssignments/delete"
        ));
        assert!(!audited_arm_action(
            "Microsoft.Authorization/roleAssignments/read"
        ));
        assert!(!audited_arm_action(
            "Microsoft.HealthcareApis/workspaces/write"
        ));
    }
}
