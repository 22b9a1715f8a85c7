use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

async fn get(path: &str) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let response = router()
        .oneshot(
            Request::builder()
                .uri(path)
                .body(Body::empty())
                .expect("a static request is well formed"),
        )
        .await
        .expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("an in-memory body reads")
        .to_bytes()
        .to_vec();
    (status, headers, bytes)
}

fn text(bytes: &'static [u8]) -> &'static str {
    std::str::from_utf8(bytes).expect("the assets are UTF-8")
}

#[tokio::test]
async fn serves_each_asset_with_its_type_and_the_policy() {
    for (path, content_type, asset) in [
        ("/portal/", "text/html; charset=utf-8", &INDEX_HTML),
        (
            "/portal/index.html",
            "text/html; charset=utf-8",
            &INDEX_HTML,
        ),
        ("/portal/app.js", "text/javascript; charset=utf-8", &APP_JS),
        ("/portal/app.css", "text/css; charset=utf-8", &APP_CSS),
        ("/portal/favicon.svg", "image/svg+xml", &FAVICON_SVG),
    ] {
        let (status, headers, body) = get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers[header::CONTENT_TYPE], content_type, "{path}");
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY", "{path}");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer", "{path}");
        assert_eq!(body, asset.bytes, "{path}");
    }
}

#[tokio::test]
async fn the_bare_mount_redirects_and_unknown_paths_are_not_found() {
    let (status, headers, _) = get("/portal").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers[header::LOCATION], MOUNT_PATH);

    for path in [
        "/portal/missing.js",
        "/portal/assets/app.js",
        "/portal/../Cargo.toml",
    ] {
        let (status, headers, _) = get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
    }
}

#[test]
fn the_policy_allows_only_this_origin() {
    let directives: Vec<&str> = CONTENT_SECURITY_POLICY.split(';').map(str::trim).collect();
    assert!(directives.contains(&"default-src 'self'"));
    assert!(directives.contains(&"script-src 'self'"));
    assert!(directives.contains(&"connect-src 'self'"));
    assert!(directives.contains(&"frame-ancestors 'none'"));
    for relaxation in [
        "unsafe-inline",
        "unsafe-eval",
        "http:",
        "https:",
        "data:",
        "*",
    ] {
        assert!(
            !CONTENT_SECURITY_POLICY.contains(relaxation),
            "the policy must not allow {relaxation}"
        );
    }
}

#[test]
fn the_page_has_no_inline_code_and_no_third_party_assets() {
    let html = text(INDEX_HTML.bytes).to_ascii_lowercase();
    let scripts: Vec<&str> = html.split("<script").skip(1).collect();
    assert_eq!(scripts.len(), 1, "one script, the module");
    for script in scripts {
        let tag_end = script.find('>').expect("a script tag closes");
        assert!(script[..tag_end].contains("src=\"app.js\""));
        assert!(
            script[tag_end + 1..].trim_start().starts_with("</script>"),
            "the script element has no inline body"
        );
    }
    assert!(!html.contains("<style"), "no inline style element");
    assert!(!html.contains(" style="), "no style attributes");
    assert!(!html.contains("javascript:"));
    for attribute in ["onload=", "onclick=", "onerror=", "onsubmit="] {
        assert!(!html.contains(attribute), "no inline handler {attribute}");
    }
    for asset in [
        &html,
        &text(APP_JS.bytes).to_ascii_lowercase(),
        &text(APP_CSS.bytes).to_ascii_lowercase(),
    ] {
        assert!(!asset.contains("http://"), "no absolute http URLs");
        assert!(!asset.contains("//cdn"), "no CDN");
        assert!(!asset.contains("@import"), "no imported style sheets");
    }
}

#[test]
fn the_script_never_parses_data_as_markup_and_keeps_the_token_in_the_session() {
    let script = text(APP_JS.bytes);
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "createContextualFragment",
        "DOMParser",
        "localStorage",
        "document.cookie",
    ] {
        assert!(!script.contains(sink), "app.js must not use {sink}");
    }
    assert!(script.contains("sessionStorage.setItem(SESSION_KEY"));
    // The secret goes to the token endpoint and nowhere else: it is never put in the session.
    let save_session = script
        .split("return {\n    accessToken: body.access_token,")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("the session built from the token response");
    assert!(!save_session.contains("clientSecret"));
}
