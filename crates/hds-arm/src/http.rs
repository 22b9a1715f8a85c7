//! The ARM REST surface over axum.
//!
//! ARM paths compare case-insensitively (`/subscriptions/s/resourcegroups/rg` and
//! `/Subscriptions/s/resourceGroups/rg` are the same), which axum's router cannot express, so
//! one handler, [`handle`], parses every path itself. [`router`] mounts it under the
//! lowercase prefixes real clients send; a composition root that wants other spellings too
//! can call [`handle`] from its fallback for paths where [`is_arm_path`] holds.
//!
//! # API versions
//!
//! Every request needs `api-version`; any well-formed `YYYY-MM-DD` or `YYYY-MM-DD-preview` is
//! accepted and passed to providers, since the wire shapes modelled here do not change across
//! the versions clients use. The versions modelled (those of the seed templates and the CLIs
//! that deploy them) are: `Microsoft.Resources` 2021-04-01 and 2022-09-01 (subscriptions,
//! resource groups, deployments; `2022-12-01` for subscriptions and tenants),
//! `Microsoft.KeyVault` 2022-07-01, `Microsoft.ManagedIdentity` 2023-01-31,
//! `Microsoft.Authorization` 2021-04-01-preview and 2022-04-01, `Microsoft.HealthcareApis`
//! 2022-05-15 and 2023-06-01-preview.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;

use crate::error::ArmError;
use crate::id::ResourceId;
use crate::service::{Arm, Outcome};

/// The largest request body accepted: Azure's limit on a deployment request (template and
/// parameters), which no other ARM body comes near.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The deepest JSON body accepted. ARM bodies nest a few levels (a template's resources
/// about ten); the limit keeps every stored document readable back (the JSON reader refuses
/// nesting past 128) and recursive walks over it shallow.
pub(crate) const MAX_JSON_DEPTH: usize = 64;

/// The ARM routes: `/subscriptions...`, `/tenants` and `/providers...`.
pub fn router(arm: Arm) -> Router {
    Router::new()
        .route("/subscriptions", any(handle))
        .route("/subscriptions/{*rest}", any(handle))
        .route("/tenants", any(handle))
        .route("/providers", any(handle))
        .route("/providers/{*rest}", any(handle))
        .with_state(arm)
}

/// Whether `path` belongs to the control plane, in any letter case.
pub fn is_arm_path(path: &str) -> bool {
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    first.eq_ignore_ascii_case("subscriptions")
        || first.eq_ignore_ascii_case("tenants")
        || first.eq_ignore_ascii_case("providers")
}

/// Serves one control-plane request.
pub async fn handle(State(arm): State<Arm>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let result = serve(&arm, &parts.method, &parts.uri, &parts.headers, body).await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-ms-request-id", value);
    }
    response
}

/// What a path names.
#[derive(Debug)]
enum Route {
    Tenants,
    Subscriptions,
    Subscription(String),
    ResourceGroups(String),
    ResourceGroup(ResourceId),
    GroupResources(ResourceId),
    SubscriptionResources(String),
    /// `/subscriptions/{sub}/providers` or `/providers`.
    Providers(Option<String>),
    /// `/subscriptions/{sub}/providers/{ns}` or `/providers/{ns}`.
    Provider {
        subscription: Option<String>,
        namespace: String,
    },
    MoveResources(ResourceId),
    OperationStatus {
        subscription: String,
        namespace: String,
        operation: String,
    },
    Resource(ResourceId),
    Collection {
        parent: ResourceId,
        resource_type: String,
    },
    Action {
        id: ResourceId,
        action: String,
    },
}

async fn serve(
    arm: &Arm,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ArmError> {
    let query = query_pairs(uri.query().unwrap_or_default())?;
    let api_version = api_version(&query)?;
    let filter = query_value(&query, "$filter");
    let top = top(query_value(&query, "$top"))?;
    let segments = decode_segments(uri.path())?;
    let segment_refs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = parse_route(&segment_refs, method)?;
    let caller = arm.authenticate(headers).await?;
    let body = read_json_body(body, headers, method).await?;
    let base_url = base_url(arm, headers);
    let outcome = match (route, method.clone()) {
        (Route::Tenants, Method::GET) => {
            return Ok(json_response(StatusCode::OK, arm.list_tenants()));
        }
        (Route::Subscriptions, Method::GET) => {
            return Ok(json_response(
                StatusCode::OK,
                arm.list_subscriptions(&caller).await?,
            ));
        }
        (Route::Subscription(subscription), Method::GET) => {
            return Ok(json_response(
                StatusCode::OK,
                arm.get_subscription(&caller, &subscription).await?,
            ));
        }
        (Route::ResourceGroups(subscription), Method::GET) => {
            return Ok(json_response(
                StatusCode::OK,
                arm.list_resource_groups(&caller, &subscription).await?,
            ));
        }
        (Route::ResourceGroup(id), Method::PUT) => {
            arm.put_resource_group(&caller, &id, &body).await?
        }
        (Route::ResourceGroup(id), Method::PATCH) => {
            let mut current = arm.get_resource_group(&caller, &id).await?;
            crate::provider::merge_patch(&mut current, &body);
            arm.put_resource_group(&caller, &id, &current).await?
        }
        (Route::ResourceGroup(id), Method::GET) => {
            return Ok(json_response(
                StatusCode::OK,
                arm.get_resource_group(&caller, &id).await?,
            ));
        }
        (Route::ResourceGroup(id), Method::HEAD) => {
            let status = match arm.get_resource_group(&caller, &id).await {
                Ok(_) => StatusCode::NO_CONTENT,
                Err(error) if error.status() == StatusCode::NOT_FOUND => StatusCode::NOT_FOUND,
                Err(error) => return Err(error),
            };
            return Ok(status.into_response());
        }
        (Route::ResourceGroup(id), Method::DELETE) => {
            arm.delete_resource_group(&caller, &id, &api_version)
                .await?
        }
        (Route::GroupResources(id), Method::GET) => {
            return Ok(json_response(
                StatusCode::OK,
                arm.list_group_resources(&caller, &id, filter, top).await?,
            ));
        }
        (Route::SubscriptionResources(subscription), Method::GET) => {
            return Ok(json_response(
                StatusCode::OK,
                arm.list_subscription_resources(&caller, &subscription, filter, top)
                    .await?,
            ));
        }
        (Route::Providers(subscription), Method::GET) => {
            return Ok(json_response(
                StatusCode::OK,
                arm.list_providers(subscription.as_deref())?,
            ));
        }
        (
            Route::Provider {
                subscription,
                namespace,
            },
            Method::GET,
        ) => {
            return Ok(json_response(
                StatusCode::OK,
                arm.get_provider(subscription.as_deref(), &namespace)?,
            ));
        }
        (Route::MoveResources(id), Method::POST) => {
            arm.move_resources(&caller, &api_version, &id, &body)
                .await?
        }
        (
            Route::OperationStatus {
                subscription,
                namespace,
                operation,
            },
            Method::GET,
        ) => {
            return Ok(json_response(
                StatusCode::OK,
                arm.operation_status(&caller, &subscription, &namespace, &operation)
                    .await?,
            ));
        }
        (Route::Resource(id), Method::GET) => {
            return Ok(json_response(
                StatusCode::OK,
                arm.get_resource(&caller, &api_version, &id).await?,
            ));
        }
        (Route::Resource(id), Method::HEAD) => {
            let status = match arm.get_resource(&caller, &api_version, &id).await {
                Ok(_) => StatusCode::NO_CONTENT,
                Err(error) if error.status() == StatusCode::NOT_FOUND => StatusCode::NOT_FOUND,
                Err(error) => return Err(error),
            };
            return Ok(status.into_response());
        }
        (Route::Resource(id), Method::PUT) => {
            arm.put_resource(&caller, &api_version, &id, body).await?
        }
        (Route::Resource(id), Method::PATCH) => {
            arm.patch_resource(&caller, &api_version, &id, body).await?
        }
        (Route::Resource(id), Method::DELETE) => {
            arm.delete_resource(&caller, &api_version, &id).await?
        }
        (
            Route::Collection {
                parent,
                resource_type,
            },
            Method::GET,
        ) => {
            return Ok(json_response(
                StatusCode::OK,
                arm.list_resources(&caller, &api_version, &parent, &resource_type, filter)
                    .await?,
            ));
        }
        (Route::Action { id, action }, Method::POST) => {
            arm.post_action(&caller, &api_version, &id, &action, body)
                .await?
        }
        _ => return Err(ArmError::method_not_allowed()),
    };
    Ok(render(outcome, &base_url, &api_version))
}

fn parse_route(segments: &[&str], method: &Method) -> Result<Route, ArmError> {
    let lower: Vec<String> = segments
        .iter()
        .map(|segment| segment.to_ascii_lowercase())
        .collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let route = match lower.as_slice() {
        ["tenants"] => Route::Tenants,
        ["subscriptions"] => Route::Subscriptions,
        ["subscriptions", _] => Route::Subscription(segments[1].to_owned()),
        ["providers"] => Route::Providers(None),
        ["providers", _] => Route::Provider {
            subscription: None,
            namespace: segments[1].to_owned(),
        },
        ["subscriptions", _, "resources"] => Route::SubscriptionResources(segments[1].to_owned()),
        ["subscriptions", _, "providers"] => Route::Providers(Some(segments[1].to_owned())),
        ["subscriptions", _, "providers", _] => Route::Provider {
            subscription: Some(segments[1].to_owned()),
            namespace: segments[3].to_owned(),
        },
        ["subscriptions", _, "resourcegroups"] => Route::ResourceGroups(segments[1].to_owned()),
        ["subscriptions", _, "resourcegroups", _] => {
            Route::ResourceGroup(ResourceId::resource_group(segments[1], segments[3]))
        }
        ["subscriptions", _, "resourcegroups", _, "resources"] => {
            Route::GroupResources(ResourceId::resource_group(segments[1], segments[3]))
        }
        ["subscriptions", _, "resourcegroups", _, "moveresources"] => {
            Route::MoveResources(ResourceId::resource_group(segments[1], segments[3]))
        }
        [
            "subscriptions",
            _,
            "providers",
            _,
            "locations",
            _,
            "operationstatuses" | "operationresults",
            _,
        ] => Route::OperationStatus {
            subscription: segments[1].to_owned(),
            namespace: segments[3].to_owned(),
            operation: segments[7].to_owned(),
        },
        _ if lower.contains(&"providers") => match ResourceId::from_segments(segments) {
            Ok((id, None)) if id.is_resource() => Route::Resource(id),
            Ok((id, Some(action))) if *method == Method::POST && id.is_resource() => {
                Route::Action { id, action }
            }
            _ => match ResourceId::collection_from_segments(segments) {
                Ok((parent, resource_type)) => Route::Collection {
                    parent,
                    resource_type,
                },
                Err(_) => return Err(ArmError::route_not_found()),
            },
        },
        _ => return Err(ArmError::route_not_found()),
    };
    Ok(route)
}

/// The most query parameters one request may carry.
const MAX_QUERY_PARAMETERS: usize = 32;
/// The largest `$top` accepted (ARM's own page size).
const MAX_TOP: usize = 1000;

/// The query's parameters with names and values percent-decoded (`+` is a space), so that a
/// client writing `api%2Dversion` is understood as one writing `api-version`. Text whose
/// escapes are not UTF-8 stays as sent, for the parameter's own check to refuse by name.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ArmError> {
    let decode = |text: &str| {
        let text = text.replace('+', " ");
        percent_decode(&text).unwrap_or(text)
    };
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        if pairs.len() == MAX_QUERY_PARAMETERS {
            return Err(ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequestUri",
                format!("The request query has more than {MAX_QUERY_PARAMETERS} parameters."),
            ));
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push((decode(name), decode(value)));
    }
    Ok(pairs)
}

/// The first value of the parameter `name` (compared case-insensitively).
pub(crate) fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// `$top`: a count from 1 to [`MAX_TOP`].
fn top(value: Option<&str>) -> Result<Option<usize>, ArmError> {
    let Some(value) = value else {
        return Ok(None);
    };
    match value.trim().parse::<usize>() {
        Ok(count) if (1..=MAX_TOP).contains(&count) => Ok(Some(count)),
        _ => Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidTopInQueryString",
            format!("The $top must be a whole number from 1 to {MAX_TOP}."),
        )),
    }
}

/// The `api-version` query parameter, checked for shape.
fn api_version(pairs: &[(String, String)]) -> Result<String, ArmError> {
    let value = query_value(pairs, "api-version");
    let Some(value) = value.filter(|value| !value.is_empty()) else {
        return Err(ArmError::missing_api_version());
    };
    if is_well_formed_api_version(value) {
        Ok(value.to_owned())
    } else {
        Err(ArmError::invalid_api_version(value))
    }
}

/// `YYYY-MM-DD` or `YYYY-MM-DD-preview`, with a plausible month and day.
pub(crate) fn is_well_formed_api_version(value: &str) -> bool {
    let date = value.strip_suffix("-preview").unwrap_or(value);
    let bytes = date.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return false;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let text = date.get(range)?;
        if text.bytes().all(|byte| byte.is_ascii_digit()) {
            text.parse().ok()
        } else {
            None
        }
    };
    matches!(
        (digits(0..4), digits(5..7), digits(8..10)),
        (Some(year), Some(month), Some(day)) if year >= 2000 && (1..=12).contains(&month) && (1..=31).contains(&day)
    )
}

/// Splits and decodes the path; every decoded segment is checked
/// ([`check_path_segment`](crate::names::check_path_segment)) before anything routes on it.
fn decode_segments(path: &str) -> Result<Vec<String>, ArmError> {
    path.trim_matches('/')
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let decoded = percent_decode(segment).ok_or_else(|| {
                ArmError::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestUri",
                    "The request path is not valid UTF-8.",
                )
            })?;
            crate::names::check_path_segment(&decoded)?;
            Ok(decoded)
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                let high = (bytes[index + 1] as char).to_digit(16)?;
                let low = (bytes[index + 2] as char).to_digit(16)?;
                decoded.push(u8::try_from(high * 16 + low).ok()?);
                index += 3;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

/// 413 `RequestContentTooLarge`, before or while reading a body past [`MAX_BODY_BYTES`].
fn body_too_large() -> ArmError {
    ArmError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestContentTooLarge",
        format!("The request content exceeds the maximum size of {MAX_BODY_BYTES} bytes."),
    )
}

/// Reads at most [`MAX_BODY_BYTES`]: a declared larger length is refused unread, a longer
/// stream is refused at the first chunk past the limit.
async fn read_body_bytes(body: Body, headers: &HeaderMap) -> Result<Vec<u8>, ArmError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(body_too_large());
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            ArmError::invalid_request_content("The request body could not be read.")
        })?;
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(body_too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// How deeply `value` nests (a scalar is 1), without recursion.
pub(crate) fn json_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 1_usize)];
    while let Some((value, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        match value {
            Value::Array(items) => pending.extend(items.iter().map(|item| (item, depth + 1))),
            Value::Object(object) => pending.extend(object.values().map(|item| (item, depth + 1))),
            _ => {}
        }
    }
    deepest
}

async fn read_json_body(
    body: Body,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Value, ArmError> {
    let bytes = read_body_bytes(body, headers).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(if matches!(*method, Method::PUT | Method::PATCH) {
            Value::Null
        } else {
            Value::Object(serde_json::Map::new())
        });
    }
    let value = parse_lenient_json(&bytes)?;
    if json_depth(&value) > MAX_JSON_DEPTH {
        return Err(ArmError::invalid_request_content(format!(
            "The request content nests deeper than {MAX_JSON_DEPTH} levels."
        )));
    }
    Ok(value)
}

/// Parses a body as ARM does: strict JSON, or else ARM's lenient JSON (comments, trailing
/// commas, bare keys, single quotes; see [`crate::lenient`]), which `az deployment` relies on.
pub(crate) fn parse_lenient_json(bytes: &[u8]) -> Result<Value, ArmError> {
    let invalid = |error: serde_json::Error| {
        ArmError::invalid_request_content(format!(
            "The request content was invalid and could not be deserialized: line {}, column {}.",
            error.line(),
            error.column()
        ))
    };
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(strict_error) => {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return Err(invalid(strict_error));
            };
            let rewritten = crate::lenient::to_strict(text).map_err(|problem| {
                ArmError::invalid_request_content(format!(
                    "The request content was invalid and could not be deserialized: {problem}."
                ))
            })?;
            serde_json::from_str(&rewritten).map_err(invalid)
        }
    }
}

fn base_url(arm: &Arm, headers: &HeaderMap) -> String {
    if let Some(base) = &arm.config().public_base_url {
        return base.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn render(outcome: Outcome, base_url: &str, api_version: &str) -> Response {
    match outcome {
        Outcome::Done {
            status,
            body: Some(body),
        } => json_response(status, body),
        Outcome::Done { status, body: None } => status.into_response(),
        Outcome::Accepted {
            status,
            body,
            operation,
        } => {
            let mut response = match body {
                Some(body) => json_response(status, body),
                None => status.into_response(),
            };
            let url = format!(
                "{base_url}{}?api-version={api_version}",
                operation.status_path()
            );
            if let Ok(value) = HeaderValue::from_str(&url) {
                let headers = response.headers_mut();
                headers.insert("azure-asyncoperation", value.clone());
                headers.insert(header::LOCATION, value);
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert!(is_well_formed_api_version("2022-07-01"));
        assert!(is_well_formed_api_version("2023-06-01-preview"));
        assert!(!is_well_formed_api_version("2023-13-01"));
        assert!(!is_well_formed_api_version("2023-06-01-beta"));
        assert!(!is_well_formed_api_version("20230601"));
        assert!(!is_well_formed_api_version("2023-6-1"));
        let version = |query: &str| api_version(&query_pairs(query).expect("valid query"));
        assert!(
            matches!(version("x=1"), Err(error) if error.code() == "MissingApiVersionParameter")
        );
        assert!(
            matches!(version("api-version=latest"), Err(error) if error.code() == "InvalidApiVersionParameter")
        );
        assert_eq!(
            version("a=b&API-VERSION=2021-04-01").ok().as_deref(),
            Some("2021-04-01")
        );
        // The JavaScript SDKs percent-encode the parameter's name.
        assert_eq!(
            version("api%2Dversion=2021-04-01").ok().as_deref(),
            Some("2021-04-01")
        );
    }

    #[test]
    fn query_names_and_values_are_decoded_and_bounded() {
        let pairs = query_pairs("%24filter=name%20eq%20%27a+b%27&%24top=5").expect("valid");
        assert_eq!(query_value(&pairs, "$filter"), Some("name eq 'a b'"));
        assert_eq!(top(query_value(&pairs, "$top")).ok(), Some(Some(5)));
        for bad in ["0", "-1", "1001", "x", ""] {
            assert!(top(Some(bad)).is_err(), "{bad}");
        }
        let raw = query_pairs("api-version=%ff").expect("kept as sent");
        assert!(
            matches!(api_version(&raw), Err(error) if error.code() == "InvalidApiVersionParameter")
        );
        let many = ["a=1"; MAX_QUERY_PARAMETERS + 1].join("&");
        assert!(query_pairs(&many).is_err());
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%20b%2Fc").as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("trailing%2"), Some("trailing%2".to_owned()));
    }
}
