//! Microsoft Graph v1.0 `applications` and `servicePrincipals`, the subset `az ad app` and
//! `az ad sp` use: list (with the `$filter` forms az sends, `$top`, `@odata.nextLink`), get,
//! create, rename (`PATCH` of `displayName`), delete, `addPassword`, `removePassword`.
//!
//! Every call needs a Graph token of a caller that [`Identity::may_manage_applications`]
//! (403 `Authorization_RequestDenied` otherwise, with Graph's "Insufficient privileges" that az
//! recognises). Bodies are bounded; properties hds does not implement are refused with 400
//! rather than silently dropped, except empty ones az always sends (`keyCredentials: []`).
//!
//! Helpers return `Result<_, Response>`: a refusal is the finished response, built once on a
//! path that ends the request, so boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::applications::{
    Application, CredentialOwner, MAX_DISPLAY_NAME_CHARS, PasswordCredential, PasswordRequest,
};
use crate::graph::{authenticate_graph, graph_error, service_principal_json};
use crate::principals::Principal;
use crate::{Identity, IdentityError};

/// The largest body accepted by these endpoints.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// The longest query string accepted.
const MAX_QUERY_BYTES: usize = 4096;
/// The most `and`-joined clauses of one `$filter`.
const MAX_FILTER_CLAUSES: usize = 8;
/// The page size when `$top` is absent, and the largest `$top` (Graph's own).
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 999;

impl Identity {
    /// The Graph routes for applications and service principals.
    pub(crate) fn graph_apps_router(&self) -> Router {
        Router::new()
            .route(
                "/v1.0/applications",
                get(list_applications).post(create_application),
            )
            .route(
                "/v1.0/applications/{id}",
                get(get_application)
                    .patch(patch_application)
                    .delete(delete_application),
            )
            .route(
                "/v1.0/applications/{id}/addPassword",
                post(application_add_password),
            )
            .route(
                "/v1.0/applications/{id}/removePassword",
                post(application_remove_password),
            )
            .route(
                "/v1.0/servicePrincipals",
                get(list_service_principals).post(create_service_principal),
            )
            .route(
                "/v1.0/servicePrincipals/{id}",
                get(get_service_principal).delete(delete_service_principal),
            )
            .route(
                "/v1.0/servicePrincipals/{id}/addPassword",
                post(service_principal_add_password),
            )
            .route(
                "/v1.0/servicePrincipals/{id}/removePassword",
                post(service_principal_remove_password),
            )
            .with_state(self.clone())
    }
}

fn bad_request(message: impl AsRef<str>) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        "Request_BadRequest",
        message.as_ref(),
    )
}

fn not_found(id: &str) -> Response {
    let shown: String = id.chars().take(64).collect();
    graph_error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{shown}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn internal(error: &IdentityError) -> Response {
    tracing::error!(%error, "a Graph request failed");
    graph_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
        "The request could not be completed.",
    )
}

fn identity_error(error: IdentityError, id: &str) -> Response {
    match error {
        IdentityError::InvalidArgument(message) => bad_request(message),
        IdentityError::ApplicationNotFound | IdentityError::PrincipalNotFound => not_found(id),
        IdentityError::Conflict(message) => graph_error(
            StatusCode::CONFLICT,
            "Request_MultipleObjectsWithSameKeyValue",
            &message,
        ),
        IdentityError::NotPermitted(message) => bad_request(message),
        IdentityError::LimitReached(message) => {
            graph_error(StatusCode::BAD_REQUEST, "Directory_QuotaExceeded", &message)
        }
        other => internal(&other),
    }
}

/// Authenticates the caller and checks that it may manage applications.
async fn authorize(identity: &Identity, headers: &HeaderMap) -> Result<(), Response> {
    let caller = authenticate_graph(identity, headers).await?;
    match identity.may_manage_applications(&caller.principal_id).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(graph_error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation. Managing applications needs Owner or User Access Administrator on the subscription.",
        )),
        Err(error) => Err(internal(&error)),
    }
}

/// The caller's right to manage applications, then the object id of the path: what every
/// handler of one object checks first, in that order (an unauthorized caller learns nothing
/// about ids).
async fn authorized_object_id(
    identity: &Identity,
    headers: &HeaderMap,
    id: &str,
) -> Result<String, Response> {
    authorize(identity, headers).await?;
    object_id(id)
}

/// A GUID path segment, lowercased; anything else is no object of ours.
fn object_id(id: &str) -> Result<String, Response> {
    uuid::Uuid::parse_str(id)
        .map(|guid| guid.hyphenated().to_string())
        .map_err(|_| not_found(id))
}

/// The body as a JSON object, bounded.
fn json_object(body: &Bytes) -> Result<Map<String, Value>, Response> {
    if body.len() > MAX_BODY_BYTES {
        return Err(graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request_EntityTooLarge",
            "The request body is too large.",
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_request("The request body must be a JSON object.")),
    }
}

/// Whether a property value is empty: what az sends for properties it does not set.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.values().all(is_empty),
        Value::Bool(flag) => !flag,
        _ => false,
    }
}

/// The `displayName` of an application body, if any; refuses properties hds does not keep.
fn application_body(body: &Map<String, Value>) -> Result<Option<String>, Response> {
    let mut display_name = None;
    for (key, value) in body {
        match key.as_str() {
            "displayName" => match value {
                Value::String(name) => display_name = Some(name.clone()),
                _ => return Err(bad_request("displayName must be a string.")),
            },
            "signInAudience" if value.as_str() == Some("AzureADMyOrg") || value.is_null() => {}
            _ if is_empty(value) => {}
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(bad_request(format!(
                    "Property '{shown}' is not supported by hds: applications have a displayName and password credentials only."
                )));
            }
        }
    }
    Ok(display_name)
}

fn format_time(seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn parse_time(value: &Value, name: &str) -> Result<Option<i64>, Response> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if text.len() <= 64 => OffsetDateTime::parse(text, &Rfc3339)
            .map(|time| Some(time.unix_timestamp()))
            .map_err(|_| bad_request(format!("{name} must be an ISO 8601 date and time."))),
        _ => Err(bad_request(format!(
            "{name} must be an ISO 8601 date and time."
        ))),
    }
}

fn password_json(credential: &PasswordCredential, secret: Option<&str>) -> Value {
    json!({
        "customKeyIdentifier": null,
        "displayName": credential.display_name,
        "endDateTime": format_time(credential.end),
        "hint": credential.hint,
        "keyId": credential.key_id,
        "secretText": secret,
        "startDateTime": format_time(credential.start),
    })
}

fn application_json(application: &Application, passwords: &[PasswordCredential]) -> Value {
    json!({
        "id": application.object_id,
        "appId": application.app_id,
        "displayName": application.display_name,
        "createdDateTime": format_time(application.created_at),
        "deletedDateTime": null,
        "signInAudience": "AzureADMyOrg",
        "identifierUris": [],
        "keyCredentials": [],
        "passwordCredentials": passwords.iter().map(|credential| password_json(credential, None)).collect::<Vec<_>>(),
        "requiredResourceAccess": [],
        "appRoles": [],
        "tags": [],
        "api": { "requestedAccessTokenVersion": null, "oauth2PermissionScopes": [] },
        "web": {
            "homePageUrl": null,
            "redirectUris": [],
            "implicitGrantSettings": { "enableAccessTokenIssuance": false, "enableIdTokenIssuance": false },
        },
        "publicClient": { "redirectUris": [] },
    })
}

async fn full_application(
    identity: &Identity,
    application: &Application,
) -> Result<Value, Response> {
    let passwords = identity
        .password_credentials(&application.object_id)
        .await
        .map_err(|error| internal(&error))?;
    Ok(application_json(application, &passwords))
}

async fn full_service_principal(
    identity: &Identity,
    principal: &Principal,
) -> Result<Value, Response> {
    let passwords = identity
        .password_credentials(&principal.principal_id)
        .await
        .map_err(|error| internal(&error))?;
    let mut value = service_principal_json(principal);
    if let Value::Object(map) = &mut value {
        map.insert(
            "passwordCredentials".to_owned(),
            passwords
                .iter()
                .map(|credential| password_json(credential, None))
                .collect(),
        );
        map.insert("keyCredentials".to_owned(), json!([]));
        map.insert("appDisplayName".to_owned(), json!(principal.display_name));
        map.insert("tags".to_owned(), json!([]));
    }
    Ok(value)
}

fn with_context(mut value: Value, identity: &Identity, entity_set: &str) -> Value {
    if let Value::Object(map) = &mut value {
        map.insert(
            "@odata.context".to_owned(),
            json!(format!(
                "{}/v1.0/$metadata#{entity_set}/$entity",
                identity.config().base_url
            )),
        );
    }
    value
}

// ---------------------------------------------------------------------------------------------
// Queries: $filter, $top, $skiptoken.

/// One clause of a `$filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Clause {
    /// `{property} eq '{value}'`.
    Equals(String, String),
    /// `startswith({property},'{value}')`.
    StartsWith(String, String),
    /// `{collection}/any(x:x eq '{value}')`.
    AnyEquals(String, String),
}

/// A list request's query.
#[derive(Debug, Default)]
struct ListQuery {
    filter: Option<String>,
    clauses: Vec<Clause>,
    top: usize,
    skip_token: Option<String>,
}

fn unsupported_query(message: impl AsRef<str>) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        "Request_UnsupportedQuery",
        message.as_ref(),
    )
}

fn parse_list_query(raw: Option<&str>, properties: &[&str]) -> Result<ListQuery, Response> {
    let raw = raw.unwrap_or("");
    if raw.len() > MAX_QUERY_BYTES {
        return Err(unsupported_query("The query string is too long."));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|_| unsupported_query("The query string is malformed."))?;
    let mut query = ListQuery {
        top: DEFAULT_PAGE,
        ..ListQuery::default()
    };
    for (name, value) in pairs {
        match name.as_str() {
            "$filter" => {
                query.clauses = parse_filter(&value, properties)?;
                query.filter = Some(value);
            }
            "$top" => {
                query.top = value
                    .parse::<usize>()
                    .ok()
                    .filter(|top| (1..=MAX_PAGE).contains(top))
                    .ok_or_else(|| {
                        unsupported_query(format!("$top must be between 1 and {MAX_PAGE}."))
                    })?;
            }
            "$skiptoken" => {
                let token = uuid::Uuid::parse_str(&value)
                    .map_err(|_| unsupported_query("$skiptoken is not valid."))?;
                query.skip_token = Some(token.hyphenated().to_string());
            }
            // Which properties to return: all of them are always returned.
            "$select" => {}
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(unsupported_query(format!(
                    "The query parameter '{shown}' is not supported."
                )));
            }
        }
    }
    Ok(query)
}

/// Splits `text` at ` and ` outside string literals.
fn split_and(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let bytes = text.as_bytes();
    let mut in_string = false;
    let mut start = 0;
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\'' {
            in_string = !in_string;
        } else if !in_string
            && bytes[index..].len() >= 5
            && bytes[index..index + 5].eq_ignore_ascii_case(b" and ")
        {
            parts.push(&text[start..index]);
            index += 5;
            start = index;
            continue;
        }
        index += 1;
    }
    parts.push(&text[start..]);
    parts
}

/// A whole string literal `'...'` (with `''` for a quote) and nothing else.
fn string_literal(text: &str) -> Option<String> {
    let inner = text.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    let mut value = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None;
        }
        value.push(c);
    }
    Some(value)
}

fn parse_clause(clause: &str, properties: &[&str]) -> Option<Clause> {
    let clause = clause.trim();
    let known = |name: &str| {
        properties
            .iter()
            .find(|property| property.eq_ignore_ascii_case(name))
            .map(|property| (*property).to_owned())
    };
    if let Some(rest) = clause
        .get(..11)
        .filter(|head| head.eq_ignore_ascii_case("startswith("))
        .and_then(|_| clause.get(11..))
    {
        let inner = rest.strip_suffix(')')?;
        let (property, literal) = inner.split_once(',')?;
        return Some(Clause::StartsWith(
            known(property.trim())?,
            string_literal(literal)?,
        ));
    }
    if let Some((collection, rest)) = clause.split_once("/any(") {
        let inner = rest.strip_suffix(')')?;
        let (variable, condition) = inner.split_once(':')?;
        let condition = condition.trim().strip_prefix(variable.trim())?;
        let literal = condition.trim_start().strip_prefix("eq ")?;
        return Some(Clause::AnyEquals(
            known(collection.trim())?,
            string_literal(literal)?,
        ));
    }
    let (property, literal) = clause.split_once(" eq ")?;
    Some(Clause::Equals(
        known(property.trim())?,
        string_literal(literal)?,
    ))
}

fn parse_filter(filter: &str, properties: &[&str]) -> Result<Vec<Clause>, Response> {
    let parts = split_and(filter);
    if parts.len() > MAX_FILTER_CLAUSES {
        return Err(unsupported_query(format!(
            "A $filter may join at most {MAX_FILTER_CLAUSES} clauses."
        )));
    }
    parts
        .iter()
        .map(|part| {
            parse_clause(part, properties).ok_or_else(|| {
                unsupported_query(format!(
                    "Unsupported $filter: hds understands \"{{property}} eq '{{value}}'\", \"startswith({{property}},'{{value}}')\" and \"{{collection}}/any(x:x eq '{{value}}')\" on {}, joined by 'and'.",
                    properties.join(", ")
                ))
            })
        })
        .collect()
}

/// The value of a property of a listed object, for filtering.
trait Filterable {
    fn id(&self) -> &str;
    fn property(&self, name: &str) -> Vec<String>;
}

impl Filterable for Application {
    fn id(&self) -> &str {
        &self.object_id
    }
    fn property(&self, name: &str) -> Vec<String> {
        match name {
            "id" => vec![self.object_id.clone()],
            "appId" => vec![self.app_id.clone()],
            "displayName" => vec![self.display_name.clone()],
            _ => Vec::new(),
        }
    }
}

impl Filterable for Principal {
    fn id(&self) -> &str {
        &self.principal_id
    }
    fn property(&self, name: &str) -> Vec<String> {
        match name {
            "id" => vec![self.principal_id.clone()],
            "appId" => vec![self.client_id.clone()],
            "displayName" => vec![self.display_name.clone()],
            "servicePrincipalNames" => {
                let mut names = vec![self.client_id.clone()];
                names.extend(self.resource_id.iter().cloned());
                names
            }
            _ => Vec::new(),
        }
    }
}

fn matches(object: &impl Filterable, clauses: &[Clause]) -> bool {
    clauses.iter().all(|clause| match clause {
        // GUIDs compare case-insensitively; names exactly, as in Graph's `eq`.
        Clause::Equals(property, value) | Clause::AnyEquals(property, value) => {
            object.property(property).iter().any(|have| {
                have == value || (property != "displayName" && have.eq_ignore_ascii_case(value))
            })
        }
        Clause::StartsWith(property, prefix) => object
            .property(property)
            .iter()
            .any(|have| have.to_lowercase().starts_with(&prefix.to_lowercase())),
    })
}

/// One page of `objects` (sorted by id) and the link to the next.
fn page<'a, T: Filterable>(
    objects: &'a [T],
    query: &ListQuery,
    identity: &Identity,
    collection: &str,
) -> (Vec<&'a T>, Option<String>) {
    let mut selected = objects
        .iter()
        .filter(|object| {
            query
                .skip_token
                .as_deref()
                .is_none_or(|token| object.id() > token)
        })
        .filter(|object| matches(*object, &query.clauses));
    let items: Vec<&T> = selected.by_ref().take(query.top).collect();
    let next = match (selected.next(), items.last()) {
        (Some(_), Some(last)) => {
            let mut pairs = Vec::new();
            if let Some(filter) = &query.filter {
                pairs.push(("$filter", filter.clone()));
            }
            pairs.push(("$top", query.top.to_string()));
            pairs.push(("$skiptoken", last.id().to_owned()));
            serde_urlencoded::to_string(pairs).ok().map(|encoded| {
                format!("{}/v1.0/{collection}?{encoded}", identity.config().base_url)
            })
        }
        _ => None,
    };
    (items, next)
}

/// A list request on one collection: the caller's right first, then the query, then one page
/// of the objects `load` reads, each shown by `full`.
async fn list_objects<T: Filterable>(
    identity: &Identity,
    headers: &HeaderMap,
    raw: Option<&str>,
    properties: &[&str],
    collection: &str,
    load: impl AsyncFn(&Identity) -> Result<Vec<T>, IdentityError>,
    full: impl AsyncFn(&Identity, &T) -> Result<Value, Response>,
) -> Response {
    if let Err(response) = authorize(identity, headers).await {
        return response;
    }
    let query = match parse_list_query(raw, properties) {
        Ok(query) => query,
        Err(response) => return response,
    };
    let objects = match load(identity).await {
        Ok(objects) => objects,
        Err(error) => return internal(&error),
    };
    let (items, next) = page(&objects, &query, identity, collection);
    let mut values = Vec::with_capacity(items.len());
    for object in items {
        match full(identity, object).await {
            Ok(value) => values.push(value),
            Err(response) => return response,
        }
    }
    list_json(identity, collection, values, next)
}

fn list_json(
    identity: &Identity,
    collection: &str,
    values: Vec<Value>,
    next: Option<String>,
) -> Response {
    let mut body = json!({
        "@odata.context": format!("{}/v1.0/$metadata#{collection}", identity.config().base_url),
        "value": values,
    });
    if let (Some(next), Value::Object(map)) = (next, &mut body) {
        map.insert("@odata.nextLink".to_owned(), json!(next));
    }
    Json(body).into_response()
}

// ---------------------------------------------------------------------------------------------
// applications

async fn list_applications(
    State(identity): State<Identity>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    list_objects(
        &identity,
        &headers,
        raw.as_deref(),
        &["id", "appId", "displayName", "identifierUris"],
        "applications",
        async |identity| identity.applications().await,
        async |identity, application| full_application(identity, application).await,
    )
    .await
}

async fn create_application(
    State(identity): State<Identity>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = authorize(&identity, &headers).await {
        return response;
    }
    let display_name = match json_object(&body).and_then(|body| application_body(&body)) {
        Ok(Some(name)) => name,
        Ok(None) => return bad_request("displayName is required."),
        Err(response) => return response,
    };
    match identity.create_application(&display_name).await {
        Ok(application) => {
            let value = application_json(&application, &[]);
            (
                StatusCode::CREATED,
                Json(with_context(value, &identity, "applications")),
            )
                .into_response()
        }
        Err(error) => identity_error(error, ""),
    }
}

async fn get_application(
    State(identity): State<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let object_id = match authorized_object_id(&identity, &headers, &id).await {
        Ok(object_id) => object_id,
        Err(response) => return response,
    };
    match identity.application(&object_id).await {
        Ok(Some(application)) => match full_application(&identity, &application).await {
            Ok(value) => Json(with_context(value, &identity, "applications")).into_response(),
            Err(response) => response,
        },
        Ok(None) => not_found(&id),
        Err(error) => internal(&error),
    }
}

async fn patch_application(
    State(identity): State<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let object_id = match authorized_object_id(&identity, &headers, &id).await {
        Ok(object_id) => object_id,
        Err(response) => return response,
    };
    let display_name = match json_object(&body).and_then(|body| application_body(&body)) {
        Ok(name) => name,
        Err(response) => return response,
    };
    let result = match display_name {
        Some(name) => identity.rename_application(&object_id, &name).await,
        None => identity.application(&object_id).await,
    };
    match result {
        Ok(Some(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(None) => not_found(&id),
        Err(error) => identity_error(error, &id),
    }
}

async fn delete_application(
    State(identity): State<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let object_id = match authorized_object_id(&identity, &headers, &id).await {
        Ok(object_id) => object_id,
        Err(response) => return response,
    };
    match identity.delete_application(&object_id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(&id),
        Err(error) => internal(&error),
    }
}

async fn add_password(
    identity: Identity,
    headers: HeaderMap,
    owner: CredentialOwner,
    id: String,
    body: Bytes,
) -> Response {
    let object_id = match authorized_object_id(&identity, &headers, &id).await {
        Ok(object_id) => object_id,
        Err(response) => return response,
    };
    let body = match json_object(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut request = PasswordRequest::default();
    for (key, value) in &body {
        if key != "passwordCredential" {
            let shown: String = key.chars().take(64).collect();
            return bad_request(format!("Property '{shown}' is not supported."));
        }
        let Value::Object(credential) = value else {
            if value.is_null() {
                continue;
            }
            return bad_request("passwordCredential must be an object.");
        };
        for (name, value) in credential {
            let parsed = match name.as_str() {
                "displayName" => match value {
                    Value::Null => Ok(()),
                    Value::String(text) => {
                        request.display_name = Some(text.clone());
                        Ok(())
                    }
                    _ => Err(bad_request(format!(
                        "passwordCredential.displayName must be a string of at most {MAX_DISPLAY_NAME_CHARS} characters."
                    ))),
                },
                "startDateTime" => parse_time(value, "passwordCredential.startDateTime")
                    .map(|start| request.start = start),
                "endDateTime" => {
                    parse_time(value, "passwordCredential.endDateTime").map(|end| request.end = end)
                }
                _ if is_empty(value) => Ok(()),
                other => {
                    let shown: String = other.chars().take(64).collect();
                    Err(bad_request(format!(
                        "passwordCredential.{shown} is not supported: the secret is always generated by the server."
                    )))
                }
            };
            if let Err(response) = parsed {
                return response;
            }
        }
    }
    match identity.add_password(owner, &object_id, &request).await {
        Ok(created) => {
            let mut value = password_json(&created.credential, Some(created.secret_text.as_str()));
            if let Value::Object(map) = &mut value {
                map.insert(
                    "@odata.context".to_owned(),
                    json!(format!(
                        "{}/v1.0/$metadata#microsoft.graph.passwordCredential",
                        identity.config().base_url
                    )),
                );
            }
            let mut response = Json(value).into_response();
            response.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(error) => identity_error(error, &id),
    }
}

async fn remove_password(
    identity: Identity,
    headers: HeaderMap,
    owner: CredentialOwner,
    id: String,
    body: Bytes,
) -> Response {
    let object_id = match authorized_object_id(&identity, &headers, &id).await {
        Ok(object_id) => object_id,
        Err(response) => return response,
    };
    let body = match json_object(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let key_id = match body
        .get("keyId")
        .and_then(Value::as_str)
        .map(uuid::Uuid::parse_str)
    {
        Some(Ok(key_id)) if body.len() == 1 => key_id.hyphenated().to_string(),
        _ => return bad_request("The body must be {\"keyId\": \"<GUID>\"}."),
    };
    match identity.remove_password(owner, &object_id, &key_id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!("No password credential with keyId '{key_id}' was found."),
        ),
        Err(error) => identity_error(error, &id),
    }
}

async fn application_add_password(
    State(identity): State<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    add_password(identity, headers, CredentialOwner::Application, id, body).await
}

async fn application_remove_password(
    State(identity): State<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    remove_password(identity, headers, CredentialOwner::Application, id, body).await
}

// ---------------------------------------------------------------------------------------------
// servicePrincipals

async fn list_service_principals(
    State(identity): State<Identity>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    list_objects(
        &identity,
        &headers,
        raw.as_deref(),
        &["id", "appId", "displayName", "servicePrincipalNames"],
        "servicePrincipals",
        async |identity| identity.principals().await,
        async |identity, principal| full_service_principal(identity, principal).await,
    )
    .await
}

async fn create_service_principal(
    State(identity): State<Identity>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = authorize(&identity, &headers).await {
        return response;
    }
    let body = match json_object(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut app_id = None;
    for (key, value) in &body {
        match key.as_str() {
            "appId" => app_id = value.as_str().map(str::to_owned),
            "accountEnabled" if value.as_bool() == Some(true) => {}
            _ if is_empty(value) => {}
            other => {
                let shown: String = other.chars().take(64).collect();
                return bad_request(format!("Property '{shown}' is not supported by hds."));
            }
        }
    }
    let Some(app_id) = app_id else {
        return bad_request("appId is required.");
    };
    let Ok(app_guid) = uuid::Uuid::parse_str(&app_id) else {
        return bad_request("appId must be a GUID.");
    };
    let app_id = app_guid.hyphenated().to_string();
    match identity.create_application_service_principal(&app_id).await {
        Ok(principal) => match full_service_principal(&identity, &principal).await {
            Ok(value) => (
                StatusCode::CREATED,
                Json(with_context(value, &identity, "servicePrincipals")),
            )
                .into_response(),
            Err(response) => response,
        },
        Err(IdentityError::ApplicationNotFound) => bad_request(format!(
            "The appId '{app_id}' of the service principal does not reference a valid application object."
        )),
        Err(error) => identity_error(error, &app_id),
    }
}

async fn get_service_principal(
    State(identity): State<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let object_id = match authorized_object_id(&identity, &headers, &id).await {
        Ok(object_id) => object_id,
        Err(response) => return response,
    };
    match identity.principal(&object_id).await {
        Ok(Some(principal)) => match full_service_principal(&identity, &principal).await {
            Ok(value) => Json(with_context(value, &identity, "servicePrincipals")).into_response(),
            Err(response) => response,
        },
        Ok(None) => not_found(&id),
        Err(error) => internal(&error),
    }
}

async fn delete_service_principal(
    State(identity): State<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let object_id = match authorized_object_id(&identity, &headers, &id).await {
        Ok(object_id) => object_id,
        Err(response) => return response,
    };
    match identity
        .delete_application_service_principal(&object_id)
        .await
    {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(&id),
        Err(error) => identity_error(error, &id),
    }
}

async fn service_principal_add_password(
    State(identity): State<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    add_password(
        identity,
        headers,
        CredentialOwner::ServicePrincipal,
        id,
        body,
    )
    .await
}

async fn service_principal_remove_password(
    State(identity): State<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    remove_password(
        identity,
        headers,
        CredentialOwner::ServicePrincipal,
        id,
        body,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPS: &[&str] = &["id", "appId", "displayName", "identifierUris"];

    #[test]
    fn filters_az_sends_parse() {
        assert_eq!(
            parse_filter("appId eq '0f6b5a4e-1111-4222-8333-944445555666'", APPS).ok(),
            Some(vec![Clause::Equals(
                "appId".into(),
                "0f6b5a4e-1111-4222-8333-944445555666".into()
            )])
        );
        assert_eq!(
            parse_filter(
                "startswith(displayName,'it''s and more') and displayName eq 'x'",
                APPS
            )
            .ok(),
            Some(vec![
                Clause::StartsWith("displayName".into(), "it's and more".into()),
                Clause::Equals("displayName".into(), "x".into()),
            ])
        );
        assert_eq!(
            parse_filter("identifierUris/any(s:s eq 'api://x')", APPS).ok(),
            Some(vec![Clause::AnyEquals(
                "identifierUris".into(),
                "api://x".into()
            )])
        );
    }

    #[test]
    fn hostile_filters_are_refused() {
        for filter in [
            "secretHash eq 'x'",
            "appId eq 'unterminated",
            "appId eq 'a'b'",
            "appId ne 'x'",
            "startswith(displayName,'x'",
            "x/any(s:t eq 'a')",
            &"appId eq 'a' and ".repeat(9),
        ] {
            assert!(parse_filter(filter, APPS).is_err(), "{filter}");
        }
        assert!(parse_list_query(Some("$top=0"), APPS).is_err());
        assert!(parse_list_query(Some("$top=1000"), APPS).is_err());
        assert!(parse_list_query(Some("$skiptoken=x"), APPS).is_err());
        assert!(parse_list_query(Some("$expand=owners"), APPS).is_err());
        assert!(parse_list_query(Some(&"a".repeat(MAX_QUERY_BYTES + 1)), APPS).is_err());
        assert!(parse_list_query(Some("%24top=5"), APPS).is_ok_and(|query| query.top == 5));
    }

    #[test]
    fn application_bodies_refuse_what_hds_does_not_keep() {
        let body = |value: Value| application_body(value.as_object().expect("object"));
        assert_eq!(
            body(json!({"displayName": "a", "keyCredentials": []})).ok(),
            Some(Some("a".to_owned()))
        );
        assert!(body(json!({"displayName": 5})).is_err());
        assert!(body(json!({"identifierUris": ["api://x"]})).is_err());
        assert!(body(json!({"keyCredentials": [{"key": "x"}]})).is_err());
    }
}
