//! Logging. Request spans name the matched route (`/studies/{study}`), never the URI: UIDs in
//! paths and values in queries can be PHI.

use axum::extract::MatchedPath;
use axum::http::Request;
use tracing::Span;
use tracing_subscriber::EnvFilter;

/// How log lines are written, from `HDS_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// For people: one line per event, colored on a terminal (`text`, the default).
    Text,
    /// For log pipelines: one JSON object per line with the event's fields and those of the
    /// spans it happened in (`json`).
    Json,
}

impl LogFormat {
    fn from_env() -> anyhow::Result<LogFormat> {
        match std::env::var("HDS_LOG_FORMAT") {
            Err(std::env::VarError::NotPresent) => Ok(LogFormat::Text),
            Ok(value) if value.eq_ignore_ascii_case("text") => Ok(LogFormat::Text),
            Ok(value) if value.eq_ignore_ascii_case("json") => Ok(LogFormat::Json),
            _ => anyhow::bail!("HDS_LOG_FORMAT must be text or json"),
        }
    }
}

/// What is logged without `HDS_LOG`: hds at `info`; the JPEG 2000 decoder only when it warns
/// (at `info` it narrates every image it decodes, a few lines per frame rendered or transcoded);
/// the object store client only when it warns (its `info` retry lines print the request's
/// error, which names the URL: for an export, the customer's container and its SAS token).
const DEFAULT_FILTER: &str = "info,jpeg2k=warn,object_store=warn";

/// Logs to stderr, filtered by `HDS_LOG` (default [`DEFAULT_FILTER`]), as text or as JSON lines
/// (`HDS_LOG_FORMAT`). Either way the same fields: what is kept out of spans and events (PHI,
/// tokens, key material) is kept out of both formats.
pub fn init() -> anyhow::Result<()> {
    let format = LogFormat::from_env()?;
    let filter =
        EnvFilter::try_from_env("HDS_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    Ok(())
}

/// The span of one request: method, route template and the names (not values) of the query
/// parameters, each as [`loggable_name`] writes it.
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
        .map(loggable_name)
        .collect();
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = route,
        query = parameter_names.join(","),
    )
}

/// A query parameter's name as the request span records it. Names are usually keywords, tags
/// or control parameters, but UPS-RS puts a UID where a name goes (`workitems?{workitem}`,
/// `workitems/{workitem}?{transaction}`), and a client may put anything there: a name made of
/// digits and dots that is not a tag path is recorded as `{uid}`, and any other name that is
/// not a plain word as `{other}`.
fn loggable_name(name: &str) -> &str {
    let is_tag_path = name
        .split('.')
        .all(|segment| segment.len() == 8 && segment.bytes().all(|byte| byte.is_ascii_hexdigit()));
    if is_tag_path {
        name
    } else if name
        .bytes()
        .all(|byte| byte.is_ascii_digit() || byte == b'.')
    {
        "{uid}"
    } else if name.len() <= 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        && name.bytes().any(|byte| byte.is_ascii_alphabetic())
    {
        name
    } else {
        "{other}"
    }
}

#[cfg(test)]
mod tests {
    use super::loggable_name;

    #[test]
    fn parameter_names_never_carry_uids_or_odd_text() {
        for kept in [
            "PatientName",
            "00100010",
            "0040A370.00080050",
            "ReferencedRequestSequence.AccessionNumber",
            "includefield",
        ] {
            assert_eq!(loggable_name(kept), kept);
        }
        assert_eq!(loggable_name("1.2.826.0.1.3680043.10.4242.2"), "{uid}");
        assert_eq!(loggable_name("12345"), "{uid}");
        assert_eq!(loggable_name("Doe%5EJane"), "{other}");
        assert_eq!(loggable_name(&"A".repeat(65)), "{other}");
    }
}
