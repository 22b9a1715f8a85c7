//! Logging. Request spans name the matched route (`/studies/{study}`), never the URI: UIDs in
//! paths and values in queries can be PHI.

use axum::extract::MatchedPath;
use axum::http::Request;
use tracing::Span;
use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `HDS_LOG` (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_env("HDS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The span of one request: method, route template and the names (not values) of the query
/// parameters.
pub fn request_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("(unmatched)");
    let parameter_names: Vec<&str> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split('=').next())
        .filter(|name| !name.is_empty())
        .collect();
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = route,
        query = parameter_names.join(","),
    )
}
