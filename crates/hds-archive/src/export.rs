//! Export: copies of a service's instances, as plaintext DICOM files, into a customer's Azure
//! Blob Storage container, as Azure's DICOM service (v2 `POST export`) writes them.
//!
//! The copies leave hds's key hierarchy: that is what export is for, at the request of a caller
//! allowed to export. Everything hds keeps about an export stays sealed under the service's
//! index key (the identifiers, the destination with its SAS token, the error log's lines; see
//! `hds_index`'s `export.rs`), and nothing of it is logged: not the identifiers, not the
//! destination, not the object store client's errors (they can carry the URL).
//!
//! Layout in the container, as Azure's: `{operation}/results/{study}/{series}/{sop}.dcm` for
//! each instance (byte-identical to what was stored), and `{operation}/errors.log`, one JSON
//! object per line (`Timestamp`, `Identifier`, `Error`) per identifier that found nothing or
//! instance that could not be read. Azure appends to an append blob; `object_store` has no
//! append, so the log's lines are kept (sealed) with the operation and the blob is rewritten
//! whole by each step that adds to it.
//!
//! The destination is checked before anything is recorded: `https`, or `http` only to a
//! loopback address (Azurite and tests), never hds's own listener, no user info, and a
//! credential that hds can use: a SAS token (in the container URI's query or the connection
//! string), or an account key only for a loopback emulator (Azure refuses account keys too).
//! A managed identity is refused: hds's managed identities hold tokens from hds's own token
//! service, which no storage account outside hds accepts.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hds_index::{ExportAdvance, ExportRecord, ServiceKeyrings};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use crate::{Archive, ArchiveError, Scope, ServiceArchive};

/// The most identifiers one export may name.
pub const MAX_EXPORT_IDENTIFIERS: usize = 1000;

/// The longest container URI, connection string or container name accepted.
const MAX_SETTING_CHARS: usize = 4096;

/// Instances per step (one position update each).
const BATCH: usize = 20;

/// Consecutive steps that could not write to the destination before the export fails.
const MAX_FAILURES: i64 = 5;

/// The largest error log kept; past it, lines are counted (`skipped`) but not written.
const MAX_ERROR_LOG_BYTES: usize = 4 * 1024 * 1024;

/// Azurite's well-known development account and key (public, documented by Microsoft).
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Which destinations hds may write to, beyond the fixed rules.
#[derive(Debug, Clone, Default)]
pub struct ExportPolicy {
    /// `host:port` authorities (lowercase) no destination may name: hds's own listener.
    pub forbidden_authorities: Vec<String>,
}

/// Why an export request is refused (400); the message says what to change and never repeats
/// a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExportRefusal(pub String);

fn refuse<T>(message: impl Into<String>) -> Result<T, ExportRefusal> {
    Err(ExportRefusal(message.into()))
}

/// A study, series or instance to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportIdentifier {
    study: String,
    series: Option<String>,
    instance: Option<String>,
}

impl ExportIdentifier {
    /// Parses Azure's `study[/series[/instance]]`.
    pub fn parse(text: &str) -> Result<ExportIdentifier, ExportRefusal> {
        let parts: Vec<&str> = text.split('/').collect();
        if parts.len() > 3 || !parts.iter().all(|uid| is_uid(uid)) {
            return refuse(
                "Each value of source.settings.values must be 'study[/series[/instance]]', each a \
                 UID (digits and dots, at most 64 characters).",
            );
        }
        Ok(ExportIdentifier {
            study: parts[0].to_owned(),
            series: parts.get(1).map(|uid| (*uid).to_owned()),
            instance: parts.get(2).map(|uid| (*uid).to_owned()),
        })
    }

    fn scope(&self) -> Scope<'_> {
        match (&self.series, &self.instance) {
            (Some(series), Some(instance)) => Scope::Instance(&self.study, series, instance),
            (Some(series), None) => Scope::Series(&self.study, series),
            _ => Scope::Study(&self.study),
        }
    }

    fn not_found(&self) -> &'static str {
        match (&self.series, &self.instance) {
            (Some(_), Some(_)) => "The specified instance cannot be found.",
            (Some(_), None) => "The specified series cannot be found.",
            _ => "The specified study cannot be found.",
        }
    }
}

impl std::fmt::Display for ExportIdentifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.study)?;
        for uid in [&self.series, &self.instance].into_iter().flatten() {
            write!(formatter, "/{uid}")?;
        }
        Ok(())
    }
}

fn is_uid(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || byte == b'.')
        && !text.starts_with('.')
        && !text.ends_with('.')
        && !text.contains("..")
}

/// How hds authenticates to the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    /// A SAS token (the query, without `?`).
    Sas(String),
    /// A shared key, only for a loopback emulator.
    EmulatorKey(String),
}

/// A checked destination container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportDestination {
    /// The account's blob endpoint, without a trailing slash: `https://ACCOUNT.blob.core.windows.net`,
    /// or `http://127.0.0.1:10000/devstoreaccount1` for Azurite.
    endpoint: String,
    account: String,
    container: String,
    credential: Credential,
}

impl ExportDestination {
    /// The container's URL, without any credential.
    pub fn container_url(&self) -> String {
        format!("{}/{}", self.endpoint, self.container)
    }

    fn client(&self) -> Result<Arc<dyn ObjectStore>, ArchiveError> {
        let mut builder = MicrosoftAzureBuilder::new()
            .with_account(&self.account)
            .with_container_name(&self.container)
            .with_endpoint(self.endpoint.clone())
            .with_allow_http(self.endpoint.starts_with("http://"))
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(Duration::from_secs(120))
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_allow_http(self.endpoint.starts_with("http://")),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(60),
                ..RetryConfig::default()
            });
        builder = match &self.credential {
            Credential::Sas(sas) => builder.with_config(AzureConfigKey::SasKey, sas),
            Credential::EmulatorKey(key) => builder.with_access_key(key),
        };
        // The client's error can name the URL (and so a SAS): never passed on.
        let store = builder
            .build()
            .map_err(|_| ArchiveError::Internal("the export destination's client".into()))?;
        Ok(Arc::new(store))
    }

    fn to_json(&self) -> Value {
        let (kind, secret) = match &self.credential {
            Credential::Sas(sas) => ("sas", sas),
            Credential::EmulatorKey(key) => ("emulatorKey", key),
        };
        json!({
            "endpoint": self.endpoint,
            "account": self.account,
            "container": self.container,
            "credential": kind,
            "secret": secret,
        })
    }

    fn from_json(value: &Value) -> Option<ExportDestination> {
        let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
        let secret = text("secret")?;
        Some(ExportDestination {
            endpoint: text("endpoint")?,
            account: text("account")?,
            container: text("container")?,
            credential: match text("credential")?.as_str() {
                "sas" => Credential::Sas(secret),
                "emulatorKey" => Credential::EmulatorKey(secret),
                _ => return None,
            },
        })
    }
}

/// A checked export request: what to export and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    identifiers: Vec<ExportIdentifier>,
    destination: ExportDestination,
}

impl ExportRequest {
    /// The identifiers, in order.
    pub fn identifiers(&self) -> &[ExportIdentifier] {
        &self.identifiers
    }

    /// The destination.
    pub fn destination(&self) -> &ExportDestination {
        &self.destination
    }
}

/// Reads Azure's export body: `{"source": {"type": "identifiers", "settings": {"values": [...]}},
/// "destination": {"type": "azureblob", "settings": {...}}}`, property names compared without
/// case as Azure's binder does.
pub fn parse_export_request(
    body: &Value,
    policy: &ExportPolicy,
) -> Result<ExportRequest, ExportRefusal> {
    let Some(body) = body.as_object() else {
        return refuse("The body must be a JSON object with source and destination.");
    };
    only(body, &["source", "destination"], "the body")?;
    let source = object(body, "source")?;
    only(source, &["type", "settings"], "source")?;
    if !string(source, "type")?.is_some_and(|kind| kind.eq_ignore_ascii_case("identifiers")) {
        return refuse("source.type must be 'identifiers'.");
    }
    let source_settings = object(source, "settings")?;
    only(source_settings, &["values"], "source.settings")?;
    let values = match property(source_settings, "values") {
        Some(Value::Array(values)) => values,
        _ => return refuse("source.settings.values must be an array of identifiers."),
    };
    if values.is_empty() || values.len() > MAX_EXPORT_IDENTIFIERS {
        return refuse(format!(
            "source.settings.values must hold 1 to {MAX_EXPORT_IDENTIFIERS} identifiers."
        ));
    }
    let identifiers = values
        .iter()
        .map(|value| match value.as_str() {
            Some(text) => ExportIdentifier::parse(text),
            None => refuse("Each value of source.settings.values must be a string."),
        })
        .collect::<Result<Vec<_>, _>>()?;

    let destination = object(body, "destination")?;
    only(destination, &["type", "settings"], "destination")?;
    if !string(destination, "type")?.is_some_and(|kind| kind.eq_ignore_ascii_case("azureblob")) {
        return refuse("destination.type must be 'azureblob'.");
    }
    let settings = object(destination, "settings")?;
    only(
        settings,
        &[
            "blobContainerUri",
            "connectionString",
            "blobContainerName",
            "useManagedIdentity",
        ],
        "destination.settings",
    )?;
    let managed_identity = match property(settings, "useManagedIdentity") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return refuse("destination.settings.useManagedIdentity must be a boolean."),
    };
    if managed_identity {
        return refuse(
            "destination.settings.useManagedIdentity is not supported by hds: its managed \
             identities hold tokens of hds's own token service, which a storage account does not \
             accept. Give a SAS token with write permission in blobContainerUri or connectionString.",
        );
    }
    let uri = string(settings, "blobContainerUri")?.filter(|text| !text.is_empty());
    let connection = string(settings, "connectionString")?.filter(|text| !text.is_empty());
    let name = string(settings, "blobContainerName")?.filter(|text| !text.is_empty());
    for text in [uri, connection, name].into_iter().flatten() {
        if text.chars().count() > MAX_SETTING_CHARS {
            return refuse(format!(
                "destination.settings values are at most {MAX_SETTING_CHARS} characters."
            ));
        }
    }
    let destination = match (uri, connection, name) {
        (Some(uri), None, None) => container_from_uri(uri, policy)?,
        (None, Some(connection), Some(name)) => {
            container_from_connection(connection, name, policy)?
        }
        (None, Some(_), None) | (None, None, Some(_)) => {
            return refuse(
                "destination.settings needs connectionString together with blobContainerName.",
            );
        }
        (None, None, None) => {
            return refuse(
                "destination.settings needs blobContainerUri, or connectionString and \
                 blobContainerName.",
            );
        }
        _ => {
            return refuse(
                "destination.settings takes either blobContainerUri or connectionString and \
                 blobContainerName, not both.",
            );
        }
    };
    Ok(ExportRequest {
        identifiers,
        destination,
    })
}

fn property<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

fn object<'a>(
    parent: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a Map<String, Value>, ExportRefusal> {
    match property(parent, name) {
        Some(Value::Object(object)) => Ok(object),
        _ => refuse(format!("{name} must be a JSON object.")),
    }
}

fn string<'a>(
    parent: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, ExportRefusal> {
    match property(parent, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => refuse(format!("{name} must be a string.")),
    }
}

fn only(object: &Map<String, Value>, names: &[&str], what: &str) -> Result<(), ExportRefusal> {
    match object
        .keys()
        .find(|key| !names.iter().any(|name| key.eq_ignore_ascii_case(name)))
    {
        Some(_) => refuse(format!(
            "{what} has an unknown property; it takes {}.",
            names.join(", ")
        )),
        None => Ok(()),
    }
}

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|address| address.is_loopback())
}

/// Checks an endpoint: `https`, or `http` to a loopback address; no user info or fragment; not
/// hds's own listener. Returns the URL and whether its host is loopback.
fn check_endpoint(text: &str, policy: &ExportPolicy) -> Result<(url::Url, bool), ExportRefusal> {
    let url = url::Url::parse(text.trim())
        .or_else(|_| refuse("The destination is not an absolute URL."))?;
    if !matches!(url.scheme(), "https" | "http") {
        return refuse("The destination must be an https URL.");
    }
    let Some(host) = url.host_str().filter(|host| !host.is_empty()) else {
        return refuse("The destination URL has no host.");
    };
    let loopback = is_loopback(host);
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return refuse(
                "The destination must use https (http is allowed only to a loopback address, \
                 such as a local Azurite).",
            );
        }
        _ => return refuse("The destination must be an https URL."),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("The destination URL must not carry a user name or password.");
    }
    if url.fragment().is_some() {
        return refuse("The destination URL must not have a fragment.");
    }
    let authority = format!(
        "{}:{}",
        host.to_ascii_lowercase(),
        url.port_or_known_default().unwrap_or_default()
    );
    if policy
        .forbidden_authorities
        .iter()
        .any(|own| own.eq_ignore_ascii_case(&authority))
    {
        return refuse("The destination names hds's own listener; export to a storage account.");
    }
    Ok((url, loopback))
}

fn check_container(name: &str) -> Result<(), ExportRefusal> {
    let valid = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        refuse(
            "The container name must be 3-63 lowercase letters, digits and single hyphens, \
             starting and ending with a letter or digit.",
        )
    }
}

fn check_account(name: &str) -> Result<(), ExportRefusal> {
    if (3..=24).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
    {
        Ok(())
    } else {
        refuse("The storage account name must be 3-24 lowercase letters and digits.")
    }
}

/// A SAS token: `key=value` pairs with a signature.
fn check_sas(sas: &str) -> Result<String, ExportRefusal> {
    let sas = sas.trim().trim_start_matches('?');
    let has_signature = url::form_urlencoded::parse(sas.as_bytes())
        .any(|(key, value)| key == "sig" && !value.is_empty());
    if !has_signature || sas.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("The SAS token is malformed: it needs a signature (sig).");
    }
    Ok(sas.to_owned())
}

/// `blobContainerUri`: `https://ACCOUNT.blob.core.windows.net/CONTAINER?SAS` (host style), or
/// `http://127.0.0.1:10000/ACCOUNT/CONTAINER?SAS` for a loopback emulator (path style).
fn container_from_uri(
    text: &str,
    policy: &ExportPolicy,
) -> Result<ExportDestination, ExportRefusal> {
    let (url, loopback) = check_endpoint(text, policy)?;
    let segments: Vec<&str> = url
        .path_segments()
        .map(|segments| segments.filter(|segment| !segment.is_empty()).collect())
        .unwrap_or_default();
    let host = url.host_str().unwrap_or_default();
    let origin = url.origin().ascii_serialization();
    let (endpoint, account, container) = if loopback || host.parse::<std::net::IpAddr>().is_ok() {
        let [account, container] = segments[..] else {
            return refuse(
                "A loopback blobContainerUri must be http(s)://HOST:PORT/ACCOUNT/CONTAINER.",
            );
        };
        (format!("{origin}/{account}"), account, container)
    } else {
        let [container] = segments[..] else {
            return refuse(
                "blobContainerUri must be https://ACCOUNT.blob.core.windows.net/CONTAINER.",
            );
        };
        let account = host.split('.').next().unwrap_or_default();
        (origin, account, container)
    };
    check_account(account)?;
    check_container(container)?;
    let Some(query) = url.query().filter(|query| !query.is_empty()) else {
        return refuse(
            "blobContainerUri carries no SAS token: hds writes to a container only with a SAS \
             token with write permission.",
        );
    };
    Ok(ExportDestination {
        endpoint,
        account: account.to_owned(),
        container: container.to_owned(),
        credential: Credential::Sas(check_sas(query)?),
    })
}

/// `connectionString` (Azure Storage's `Key=Value;...` form) and `blobContainerName`.
fn container_from_connection(
    text: &str,
    container: &str,
    policy: &ExportPolicy,
) -> Result<ExportDestination, ExportRefusal> {
    check_container(container)?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for part in text
        .split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let Some((key, value)) = part.split_once('=') else {
            return refuse("The connection string must be Key=Value pairs separated by ';'.");
        };
        let key = key.trim().to_ascii_lowercase();
        if pairs.iter().any(|(seen, _)| *seen == key) {
            return refuse("The connection string names a key twice.");
        }
        pairs.push((key, value.trim().to_owned()));
    }
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    const KNOWN: &[&str] = &[
        "defaultendpointsprotocol",
        "accountname",
        "accountkey",
        "blobendpoint",
        "endpointsuffix",
        "sharedaccesssignature",
        "usedevelopmentstorage",
        "queueendpoint",
        "tableendpoint",
        "fileendpoint",
    ];
    if pairs.iter().any(|(key, _)| !KNOWN.contains(&key.as_str())) {
        return refuse(
            "The connection string has a key hds does not take (it reads DefaultEndpointsProtocol, \
             AccountName, AccountKey, BlobEndpoint, EndpointSuffix, SharedAccessSignature, \
             UseDevelopmentStorage).",
        );
    }
    if get("usedevelopmentstorage").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
        if pairs.len() != 1 {
            return refuse("UseDevelopmentStorage=true takes no other keys.");
        }
        return Ok(ExportDestination {
            endpoint: format!("http://127.0.0.1:10000/{EMULATOR_ACCOUNT}"),
            account: EMULATOR_ACCOUNT.to_owned(),
            container: container.to_owned(),
            credential: Credential::EmulatorKey(EMULATOR_KEY.to_owned()),
        });
    }
    let (endpoint, loopback, account) = match get("blobendpoint") {
        Some(blob_endpoint) => {
            let (url, loopback) = check_endpoint(blob_endpoint, policy)?;
            if url.query().is_some() {
                return refuse("BlobEndpoint must not carry a query; use SharedAccessSignature.");
            }
            let endpoint = url.as_str().trim_end_matches('/').to_owned();
            let account = match get("accountname") {
                Some(account) => account.to_owned(),
                None if loopback => url
                    .path_segments()
                    .and_then(|mut segments| segments.next())
                    .unwrap_or_default()
                    .to_owned(),
                None => url
                    .host_str()
                    .and_then(|host| host.split('.').next())
                    .unwrap_or_default()
                    .to_owned(),
            };
            (endpoint, loopback, account)
        }
        None => {
            let Some(account) = get("accountname") else {
                return refuse("The connection string needs AccountName or BlobEndpoint.");
            };
            check_account(account)?;
            let protocol = get("defaultendpointsprotocol").unwrap_or("https");
            let suffix = get("endpointsuffix").unwrap_or("core.windows.net");
            let (url, loopback) =
                check_endpoint(&format!("{protocol}://{account}.blob.{suffix}"), policy)?;
            (
                url.as_str().trim_end_matches('/').to_owned(),
                loopback,
                account.to_owned(),
            )
        }
    };
    check_account(&account)?;
    let credential = match (get("sharedaccesssignature"), get("accountkey")) {
        (Some(sas), _) => Credential::Sas(check_sas(sas)?),
        (None, Some(key)) if loopback && !key.is_empty() => Credential::EmulatorKey(key.to_owned()),
        (None, Some(_)) => {
            return refuse(
                "Account keys are not accepted (as in Azure's DICOM service), except for a local \
                 emulator: give a SAS token with write permission (SharedAccessSignature).",
            );
        }
        (None, None) => {
            return refuse(
                "The connection string carries no credential: give a SAS token with write \
                 permission (SharedAccessSignature).",
            );
        }
    };
    Ok(ExportDestination {
        endpoint,
        account,
        container: container.to_owned(),
        credential,
    })
}

/// The specification hds seals with the operation.
fn spec_document(request: &ExportRequest, error_href: &str) -> Vec<u8> {
    let identifiers: Vec<String> = request
        .identifiers
        .iter()
        .map(ToString::to_string)
        .collect();
    json!({
        "identifiers": identifiers,
        "destination": request.destination.to_json(),
        "errorHref": error_href,
    })
    .to_string()
    .into_bytes()
}

struct Spec {
    identifiers: Vec<ExportIdentifier>,
    destination: ExportDestination,
}

fn read_spec(bytes: &[u8]) -> Option<(Spec, String)> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let identifiers = value
        .get("identifiers")?
        .as_array()?
        .iter()
        .map(|value| ExportIdentifier::parse(value.as_str()?).ok())
        .collect::<Option<Vec<_>>>()?;
    let destination = ExportDestination::from_json(value.get("destination")?)?;
    let error_href = value.get("errorHref")?.as_str()?.to_owned();
    Some((
        Spec {
            identifiers,
            destination,
        },
        error_href,
    ))
}

/// What an export's operation reports in `results`, as Azure does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Instances exported.
    pub exported: i64,
    /// Instances (and identifiers that found none) skipped.
    pub skipped: i64,
    /// The error log's URL (no credential).
    pub error_href: String,
}

impl ServiceArchive {
    /// Records an export of `request` and returns its operation id; the operation worker
    /// (`ExportWorker`) of some process carries it out.
    pub async fn start_export(&self, request: &ExportRequest) -> Result<String, ArchiveError> {
        if !self.is_unlocked() {
            return Err(ArchiveError::KeyAccessLost);
        }
        // The document names the container; the error log's URL is that and the operation's
        // id, put together when read (`export_summary`).
        let spec = spec_document(request, &request.destination.container_url());
        let count = request.identifiers.len() as i64;
        Ok(self
            .index
            .create_export(&self.service, &spec, count)
            .await?)
    }

    /// The counts and error log of export `id`, if it is one of this service's exports.
    pub async fn export_summary(&self, id: &str) -> Result<Option<ExportSummary>, ArchiveError> {
        let Some(results) = self.index.export_results(&self.service, id).await? else {
            return Ok(None);
        };
        let (_, container_url) = read_spec(&results.spec)
            .ok_or_else(|| ArchiveError::Integrity("export specification".into()))?;
        Ok(Some(ExportSummary {
            exported: results.exported,
            skipped: results.skipped,
            error_href: format!("{container_url}/{id}/errors.log"),
        }))
    }
}

/// What one step of the export worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportStep {
    /// Nothing to do.
    Idle,
    /// Some instances were exported (or skipped).
    Progressed,
    /// An export ended.
    Finished,
    /// The destination could not be written; tried again later.
    Retry,
}

/// Runs export operations: any process may, one step at a time, under the operation's lease.
#[derive(Clone)]
pub struct ExportWorker {
    archive: Archive,
    keyrings: ServiceKeyrings,
    destination: Option<Arc<dyn ObjectStore>>,
}

enum InstanceOutcome {
    Exported,
    Skipped(&'static str),
}

/// Why a step stopped without recording anything.
enum StepFailure {
    /// The service's keys are gone: wait for them.
    Keys,
    /// The destination refused or failed.
    Destination(object_store::Error),
    /// Something else.
    Archive(ArchiveError),
}

impl From<ArchiveError> for StepFailure {
    fn from(error: ArchiveError) -> Self {
        match error {
            ArchiveError::KeyAccessLost => StepFailure::Keys,
            other => StepFailure::Archive(other),
        }
    }
}

impl From<hds_index::IndexError> for StepFailure {
    fn from(error: hds_index::IndexError) -> Self {
        StepFailure::from(ArchiveError::from(error))
    }
}

impl ExportWorker {
    /// The worker over `archive`, finding each service's keys in `keyrings`.
    pub fn new(archive: Archive, keyrings: ServiceKeyrings) -> ExportWorker {
        ExportWorker {
            archive,
            keyrings,
            destination: None,
        }
    }

    /// Writes every export into `store` instead of its destination (tests).
    #[doc(hidden)]
    pub fn with_destination_store(mut self, store: Arc<dyn ObjectStore>) -> ExportWorker {
        self.destination = Some(store);
        self
    }

    /// Starts the task that runs exports on this process, looking for one every
    /// `idle_interval` when there is none.
    pub fn spawn(self, idle_interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let owner = match hds_index::Index::new_lease_owner() {
                Ok(owner) => owner,
                Err(_) => {
                    tracing::error!("the export worker could not start");
                    return;
                }
            };
            loop {
                match self.step(&owner).await {
                    Ok(ExportStep::Progressed | ExportStep::Finished) => {
                        tokio::task::yield_now().await
                    }
                    Ok(ExportStep::Idle | ExportStep::Retry) => {
                        tokio::time::sleep(idle_interval).await
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "an export step failed; retrying later");
                        tokio::time::sleep(idle_interval).await
                    }
                }
            }
        })
    }

    /// One step of the worker `owner`: up to [`BATCH`] instances of the oldest export it holds
    /// or can take, or the end of that export.
    pub async fn step(&self, owner: &str) -> Result<ExportStep, ArchiveError> {
        let Some(record) = self.archive.index.claim_export(owner).await? else {
            return Ok(ExportStep::Idle);
        };
        let Some(keyring) = self.keyrings.get(&record.service) else {
            return Ok(ExportStep::Idle);
        };
        let archive = self.archive.service(&record.service, keyring);
        let Some((spec, _)) = read_spec(&record.spec) else {
            self.archive
                .index
                .finish_export(&record.id, owner, false)
                .await?;
            return Err(ArchiveError::Integrity("export specification".into()));
        };
        let store = match &self.destination {
            Some(store) => store.clone(),
            None => spec.destination.client()?,
        };
        match self.run_step(&archive, &record, &spec, &store, owner).await {
            Ok(step) => Ok(step),
            Err(StepFailure::Keys) => Ok(ExportStep::Idle),
            Err(StepFailure::Archive(error)) => Err(error),
            Err(StepFailure::Destination(error)) => {
                // The error can name the URL and its SAS: only its kind is logged.
                let permanent = matches!(
                    error,
                    object_store::Error::NotFound { .. }
                        | object_store::Error::PermissionDenied { .. }
                        | object_store::Error::Unauthenticated { .. }
                );
                let failures = self
                    .archive
                    .index
                    .export_failed_attempt(&record.id, owner)
                    .await?;
                tracing::warn!(
                    permanent,
                    failures,
                    "an export could not write to its destination"
                );
                if permanent || failures >= MAX_FAILURES {
                    self.archive
                        .index
                        .finish_export(&record.id, owner, false)
                        .await?;
                    return Ok(ExportStep::Finished);
                }
                Ok(ExportStep::Retry)
            }
        }
    }

    async fn run_step(
        &self,
        archive: &ServiceArchive,
        record: &ExportRecord,
        spec: &Spec,
        store: &Arc<dyn ObjectStore>,
        owner: &str,
    ) -> Result<ExportStep, StepFailure> {
        if !archive.is_unlocked() {
            return Err(StepFailure::Keys);
        }
        let error_log = ObjectPath::from(format!("{}/errors.log", record.id));
        let fresh = record.cursor == 0
            && record.item_cursor == 0
            && record.exported == 0
            && record.skipped == 0;
        if fresh {
            // As Azure creates the (empty) log first: a wrong container or credential stops
            // the export before anything is read.
            store
                .put(&error_log, PutPayload::new())
                .await
                .map_err(StepFailure::Destination)?;
        }
        let index = usize::try_from(record.cursor).unwrap_or(usize::MAX);
        let Some(identifier) = spec.identifiers.get(index) else {
            self.archive
                .index
                .finish_export(&record.id, owner, true)
                .await?;
            return Ok(ExportStep::Finished);
        };
        let records = self
            .archive
            .index
            .find_instances(&record.service, identifier.scope())
            .await?;
        let mut errors = Vec::new();
        let (mut exported, mut skipped) = (0, 0);
        let start = usize::try_from(record.item_cursor).unwrap_or(usize::MAX);
        let to = if records.is_empty() {
            skipped += 1;
            errors.push(error_line(&identifier.to_string(), identifier.not_found()));
            (record.cursor + 1, 0)
        } else {
            let end = start.saturating_add(BATCH).min(records.len());
            for instance in records.get(start..end).unwrap_or_default() {
                match export_instance(archive, instance, store, &record.id).await? {
                    InstanceOutcome::Exported => exported += 1,
                    InstanceOutcome::Skipped(why) => {
                        skipped += 1;
                        let id = format!(
                            "{}/{}/{}",
                            instance.study_instance_uid,
                            instance.series_instance_uid,
                            instance.sop_instance_uid
                        );
                        errors.push(error_line(&id, why));
                    }
                }
                // A long step keeps its lease.
                self.archive
                    .index
                    .renew_export_lease(&record.id, owner)
                    .await?;
            }
            if end >= records.len() {
                (record.cursor + 1, 0)
            } else {
                (record.cursor, end as i64)
            }
        };
        let log = if errors.is_empty() {
            None
        } else {
            let mut log = record.errors.clone();
            for line in errors {
                if log.len() + line.len() <= MAX_ERROR_LOG_BYTES {
                    log.extend_from_slice(&line);
                }
            }
            store
                .put(&error_log, PutPayload::from(log.clone()))
                .await
                .map_err(StepFailure::Destination)?;
            Some(log)
        };
        self.archive
            .index
            .advance_export(
                &record.service,
                &record.id,
                owner,
                ExportAdvance {
                    from: (record.cursor, record.item_cursor),
                    to,
                    exported,
                    skipped,
                    errors: log.as_deref(),
                },
            )
            .await?;
        Ok(ExportStep::Progressed)
    }
}

/// One line of the error log, as Azure writes it.
fn error_line(identifier: &str, error: &str) -> Vec<u8> {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut line = json!({
        "Timestamp": timestamp,
        "Identifier": identifier,
        "Error": error,
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}

/// Copies one instance, decrypted as it is read, to `{operation}/results/{study}/{series}/{sop}.dcm`.
async fn export_instance(
    archive: &ServiceArchive,
    instance: &hds_index::InstanceRecord,
    store: &Arc<dyn ObjectStore>,
    operation: &str,
) -> Result<InstanceOutcome, StepFailure> {
    const UNREADABLE: &str = "The instance could not be read from the archive.";
    let mut bytes = match archive.open_instance(instance).await {
        Ok(bytes) => bytes,
        Err(ArchiveError::KeyAccessLost) => return Err(StepFailure::Keys),
        Err(_) if !archive.is_unlocked() => return Err(StepFailure::Keys),
        Err(_) => return Ok(InstanceOutcome::Skipped(UNREADABLE)),
    };
    let path = ObjectPath::from(format!(
        "{operation}/results/{}/{}/{}.dcm",
        instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid
    ));
    let mut writer =
        object_store::buffered::BufWriter::with_capacity(store.clone(), path, 8 * 1024 * 1024);
    while let Some(chunk) = bytes.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(_) => {
                let _ = writer.abort().await;
                if !archive.is_unlocked() {
                    return Err(StepFailure::Keys);
                }
                return Ok(InstanceOutcome::Skipped(UNREADABLE));
            }
        };
        if let Err(error) = writer.write_all(&chunk).await {
            let _ = writer.abort().await;
            return Err(StepFailure::Destination(io_to_store(error)));
        }
    }
    writer
        .shutdown()
        .await
        .map_err(|error| StepFailure::Destination(io_to_store(error)))?;
    Ok(InstanceOutcome::Exported)
}

/// The object store error inside a writer's I/O error, when there is one.
fn io_to_store(error: std::io::Error) -> object_store::Error {
    match error.into_inner() {
        Some(inner) => match inner.downcast::<object_store::Error>() {
            Ok(error) => *error,
            Err(other) => object_store::Error::Generic {
                store: "export",
                source: other,
            },
        },
        None => object_store::Error::Generic {
            store: "export",
            source: "write failed".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(settings: Value) -> Value {
        json!({
            "source": {"type": "identifiers", "settings": {"values": ["1.2.3", "1.2.3/4.5", "1.2.3/4.5/6.7"]}},
            "destination": {"type": "azureblob", "settings": settings},
        })
    }

    fn policy() -> ExportPolicy {
        ExportPolicy {
            forbidden_authorities: vec!["127.0.0.1:8080".into()],
        }
    }

    fn refused(settings: Value) -> String {
        match parse_export_request(&body(settings), &policy()) {
            Err(ExportRefusal(message)) => message,
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn accepts_azure_forms() {
        let request = parse_export_request(
            &body(json!({"blobContainerUri": "https://acct1.blob.core.windows.net/export?sv=2022&sp=cw&sig=abc%3D"})),
            &policy(),
        )
        .unwrap();
        assert_eq!(request.identifiers().len(), 3);
        assert_eq!(
            request.destination().container_url(),
            "https://acct1.blob.core.windows.net/export"
        );
        let request = parse_export_request(
            &body(json!({
                "ConnectionString": format!("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={EMULATOR_KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"),
                "BlobContainerName": "export",
            })),
            &policy(),
        )
        .unwrap();
        assert_eq!(
            request.destination().container_url(),
            "http://127.0.0.1:10000/devstoreaccount1/export"
        );
        let request = parse_export_request(
            &body(json!({"blobContainerUri": "http://127.0.0.1:10000/devstoreaccount1/export?sv=1&sig=x"})),
            &policy(),
        )
        .unwrap();
        assert_eq!(request.destination().account, "devstoreaccount1");
        let request = parse_export_request(
            &body(json!({"connectionString": "AccountName=acct1;SharedAccessSignature=sv=1&sig=x", "blobContainerName": "out"})),
            &policy(),
        )
        .unwrap();
        assert_eq!(
            request.destination().container_url(),
            "https://acct1.blob.core.windows.net/out"
        );
    }

    #[test]
    fn refuses_hostile_destinations() {
        // Plain http off the machine, other schemes, own listener, user info.
        assert!(
            refused(json!({"blobContainerUri": "http://evil.example/acct/exp?sig=x"}))
                .contains("https")
        );
        assert!(refused(json!({"blobContainerUri": "file:///etc/passwd"})).contains("https"));
        assert!(
            refused(json!({"blobContainerUri": "http://127.0.0.1:8080/acct/exp?sig=x"}))
                .contains("own listener")
        );
        assert!(
            refused(
                json!({"blobContainerUri": "https://u:p@acct1.blob.core.windows.net/exp?sig=x"})
            )
            .contains("user name")
        );
        // No credential, account keys, managed identity.
        assert!(
            refused(json!({"blobContainerUri": "https://acct1.blob.core.windows.net/exp"}))
                .contains("SAS")
        );
        assert!(refused(json!({"connectionString": "AccountName=acct1;AccountKey=abc", "blobContainerName": "exp"})).contains("Account keys"));
        assert!(refused(json!({"blobContainerUri": "https://acct1.blob.core.windows.net/exp?sig=x", "useManagedIdentity": true})).contains("useManagedIdentity"));
        // Conflicting or incomplete settings, bad names, unknown keys.
        assert!(refused(json!({"blobContainerUri": "https://acct1.blob.core.windows.net/exp?sig=x", "connectionString": "UseDevelopmentStorage=true"})).contains("not both"));
        assert!(
            refused(json!({"connectionString": "UseDevelopmentStorage=true"}))
                .contains("blobContainerName")
        );
        assert!(refused(json!({"connectionString": "UseDevelopmentStorage=true", "blobContainerName": "../x"})).contains("container name"));
        assert!(refused(json!({"connectionString": "UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://x", "blobContainerName": "exp"})).contains("does not take"));
        assert!(refused(json!({"connectionString": "AccountName=acct1;BlobEndpoint=http://10.0.0.1/;SharedAccessSignature=sig=x", "blobContainerName": "exp"})).contains("https"));
        assert!(
            refused(
                json!({"blobContainerUri": "https://acct1.blob.core.windows.net/exp/extra?sig=x"})
            )
            .contains("CONTAINER")
        );
        assert!(refused(json!({"blobContainerUri": "x".repeat(5000)})).contains("at most"));
        assert!(refused(json!({"blobContainerUri": "https://acct1.blob.core.windows.net/exp?sig=x", "other": 1})).contains("unknown property"));
    }

    #[test]
    fn refuses_hostile_sources() {
        let settings = json!({"blobContainerUri": "https://acct1.blob.core.windows.net/exp?sig=x"});
        for values in [
            json!([]),
            json!(["../../etc"]),
            json!(["1.2/3/4/5"]),
            json!(["1..2"]),
            json!([format!("1.{}", "2".repeat(70))]),
            json!([1]),
            Value::Array(vec![json!("1.2"); MAX_EXPORT_IDENTIFIERS + 1]),
        ] {
            let body = json!({
                "source": {"type": "identifiers", "settings": {"values": values}},
                "destination": {"type": "azureblob", "settings": settings},
            });
            assert!(parse_export_request(&body, &policy()).is_err(), "{values}");
        }
        let body = json!({
            "source": {"type": "query", "settings": {"values": ["1.2"]}},
            "destination": {"type": "azureblob", "settings": settings},
        });
        assert!(parse_export_request(&body, &policy()).is_err());
    }

    #[test]
    fn spec_round_trips() {
        let request = parse_export_request(
            &body(json!({"blobContainerUri": "https://acct1.blob.core.windows.net/export?sv=1&sig=x"})),
            &policy(),
        )
        .unwrap();
        let document = spec_document(&request, "https://acct1.blob.core.windows.net/export");
        let (spec, href) = read_spec(&document).unwrap();
        assert_eq!(spec.identifiers, request.identifiers);
        assert_eq!(spec.destination, request.destination);
        assert_eq!(href, "https://acct1.blob.core.windows.net/export");
    }
}
