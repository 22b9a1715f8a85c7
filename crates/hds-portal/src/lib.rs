//! The web portal of hds: a single-page app in plain HTML, one JavaScript module and one style
//! sheet, compiled into the binary and served under `/portal/`.
//!
//! The portal has no server side of its own. It signs in at the token service
//! (`/{tenant}/oauth2/v2.0/token`) and then speaks only the ARM control plane
//! (`/subscriptions/...`) from the browser, with the bearer token, so everything it shows or
//! changes goes through the same providers, validation and access control as the CLI, the
//! templates and the Azure SDKs. That is why [`router`] is stateless and can be merged into any
//! router that also serves those two surfaces on the same origin.
//!
//! **Architecture invariants:**
//! - No third-party assets and no inline script or style: every response carries a
//!   `Content-Security-Policy` that allows only this origin, so an injected `<script>` or
//!   `style=` does not run even if one slipped into the page.
//! - The page never turns data into markup: the script builds DOM nodes and sets text with
//!   `textContent` (the tests check the assets for the HTML-parsing sinks).
//! - The access token lives in `sessionStorage` only (gone when the tab closes); the client
//!   secret is sent once to the token endpoint and never stored.
#![deny(missing_docs)]

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

/// Where the portal is mounted. The page's links and asset URLs are relative to it.
pub const MOUNT_PATH: &str = "/portal/";

/// The policy every portal response carries: this origin only, no inline code, no framing.
///
/// `connect-src 'self'` is what keeps the token from being sent anywhere but this origin's
/// token service and control plane. The policy lives in a file of its own so that the browser
/// test serves the very same one when it runs the page from source.
pub const CONTENT_SECURITY_POLICY: &str =
    include_str!("assets/content-security-policy.txt").trim_ascii();

/// One embedded file.
struct Asset {
    content_type: &'static str,
    bytes: &'static [u8],
}

const INDEX_HTML: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    bytes: include_bytes!("assets/index.html"),
};
const APP_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    bytes: include_bytes!("assets/app.js"),
};
const APP_CSS: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    bytes: include_bytes!("assets/app.css"),
};
const FAVICON_SVG: Asset = Asset {
    content_type: "image/svg+xml",
    bytes: include_bytes!("assets/favicon.svg"),
};

/// The portal's routes: `/portal` (redirects), `/portal/` and its assets.
///
/// Stateless: merge it into a router that serves the token service and the control plane on
/// the same origin, which is what the page calls.
pub fn router() -> Router {
    Router::new()
        .route("/portal", get(redirect_to_mount))
        .route("/portal/", get(|| async { serve(&INDEX_HTML) }))
        .route("/portal/index.html", get(|| async { serve(&INDEX_HTML) }))
        .route("/portal/app.js", get(|| async { serve(&APP_JS) }))
        .route("/portal/app.css", get(|| async { serve(&APP_CSS) }))
        .route("/portal/favicon.svg", get(|| async { serve(&FAVICON_SVG) }))
        .route("/portal/{*rest}", get(not_found))
}

async fn redirect_to_mount() -> Response {
    let mut response = with_security_headers(Response::new(Body::empty()));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(MOUNT_PATH));
    response
}

async fn not_found() -> Response {
    let mut response = with_security_headers(Response::new(Body::from("Not found\n")));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn serve(asset: &Asset) -> Response {
    let mut response = with_security_headers(Response::new(Body::from(asset.bytes)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // The assets change with the binary; revalidating costs little for a few kilobytes and
    // never leaves a browser running an old script against a newer control plane.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Hash routes carry resource ids; they are not sent in Referer, and nothing else should be.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests;
