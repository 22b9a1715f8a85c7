//! Cross-origin requests per DICOM service, as Azure's `corsConfiguration` allows them: a
//! viewer served from another origin (OHIF, say) calls QIDO/WADO from the browser. A request
//! whose `Origin` the service does not list gets no CORS headers, so the browser keeps the
//! answer from the page; the request itself is authorized as any other (CORS is not access
//! control). Preflights (`OPTIONS` with `Access-Control-Request-Method`) carry no token and
//! are answered here, before authentication.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::DicomWebState;

/// A service's CORS rules (the control plane validated them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsPolicy {
    /// `scheme://host[:port]`, lowercase, or `*`.
    pub origins: Vec<String>,
    /// Request headers a page may send (`*`: any).
    pub headers: Vec<String>,
    /// Methods a page may use, uppercase (`*`: any).
    pub methods: Vec<String>,
    /// Seconds a browser may cache a preflight answer.
    pub max_age: Option<u32>,
    /// Whether a page may send credentials.
    pub allow_credentials: bool,
}

/// Response headers a page may read besides the CORS-safelisted ones.
const EXPOSED_HEADERS: &str = "Content-Location, Location, Warning, ETag";

impl CorsPolicy {
    fn allows_origin(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    }

    fn allows_method(&self, method: &str) -> bool {
        self.methods
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(method))
    }

    /// `Access-Control-Allow-Origin`: the origin itself (so credentials can work, and caches
    /// keep answers per origin through `Vary`), or `*` when any origin may and no credentials.
    fn allow_origin_value(&self, origin: &str) -> Option<HeaderValue> {
        if !self.allow_credentials && self.origins.iter().any(|allowed| allowed == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        HeaderValue::from_str(origin).ok()
    }
}

/// `/dicom/{workspace}/{service}/...` → (workspace, service).
fn service_of(path: &str) -> Option<(&str, &str)> {
    let mut segments = path.trim_start_matches('/').split('/');
    if segments.next()? != "dicom" {
        return None;
    }
    Some((segments.next()?, segments.next()?))
}

fn common_headers(policy: &CorsPolicy, origin: &str, headers: &mut HeaderMap) {
    if let Some(value) = policy.allow_origin_value(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    if policy.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The middleware of every DICOMweb route.
pub(crate) async fn apply(
    State(state): State<DicomWebState>,
    request: Request,
    next: Next,
) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|origin| origin.to_str().ok())
        .map(str::to_owned);
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let policy = service_of(request.uri().path())
        .and_then(|(workspace, service)| state.services.cors(workspace, service))
        .filter(|policy| policy.allows_origin(&origin));
    let Some(policy) = policy else {
        return next.run(request).await;
    };
    let preflight_method = request
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|method| method.to_str().ok())
        .map(str::to_owned);
    if request.method() == Method::OPTIONS
        && let Some(method) = preflight_method
    {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        common_headers(&policy, &origin, headers);
        if policy.allows_method(&method) {
            let methods = if policy.methods.iter().any(|allowed| allowed == "*") {
                method
            } else {
                policy.methods.join(", ")
            };
            if let Ok(value) = HeaderValue::from_str(&methods) {
                headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, value);
            }
        }
        let allowed_headers = if policy.headers.iter().any(|allowed| allowed == "*") {
            request
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
        } else if policy.headers.is_empty() {
            None
        } else {
            HeaderValue::from_str(&policy.headers.join(", ")).ok()
        };
        if let Some(value) = allowed_headers {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
        }
        if let Some(max_age) = policy.max_age {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age));
        }
        return response;
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    common_headers(&policy, &origin, headers);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_read_from_the_path() {
        assert_eq!(service_of("/dicom/ws/svc/v2/studies"), Some(("ws", "svc")));
        assert_eq!(service_of("/portal/x/y"), None);
        assert_eq!(service_of("/dicom/ws"), None);
    }

    #[test]
    fn origins_match_exactly_or_by_wildcard() {
        let policy = CorsPolicy {
            origins: vec!["https://viewer.example".into()],
            ..CorsPolicy::default()
        };
        assert!(policy.allows_origin("https://viewer.example"));
        assert!(policy.allows_origin("HTTPS://VIEWER.EXAMPLE"));
        assert!(!policy.allows_origin("https://viewer.example.evil"));
        assert!(!policy.allows_origin("http://viewer.example"));
        let any = CorsPolicy {
            origins: vec!["*".into()],
            ..CorsPolicy::default()
        };
        assert_eq!(
            any.allow_origin_value("https://a.example"),
            Some(HeaderValue::from_static("*"))
        );
    }
}
