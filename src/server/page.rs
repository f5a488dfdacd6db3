//! The browser page, served from the binary, with headers that keep it to itself: its
//! own scripts only, its WebSocket to this server only, never inside another site's frame.

use axum::extract::NestedPath;
use axum::http::header;
use axum::response::IntoResponse;

/// Scripts, the audio worklet and the WebSocket from this origin only; the page's one
/// inline stylesheet; no plugins, no base elsewhere than this origin, no forms, no framing.
pub(super) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self'; \
     base-uri 'self'; form-action 'none'; frame-ancestors 'none'";

type Headers = [(header::HeaderName, &'static str); 5];

fn headers(content_type: &'static str) -> Headers {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ]
}

/// The page, with a `<base>` naming where the router is nested, so its scripts and its
/// WebSocket resolve under the same path.
pub(super) async fn index(
    nested: Result<NestedPath, axum::extract::rejection::NestedPathRejection>,
) -> impl IntoResponse {
    let nested = nested
        .as_ref()
        .map_or("", |n| n.as_str().trim_end_matches('/'));
    let base = format!(
        "<meta charset=\"utf-8\">\n<base href=\"{}/\">",
        nested
            .replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
    );
    (
        headers("text/html; charset=utf-8"),
        include_str!("web/index.html").replacen("<meta charset=\"utf-8\">", &base, 1),
    )
}

pub(super) async fn script() -> impl IntoResponse {
    (
        headers("text/javascript; charset=utf-8"),
        include_str!("web/app.js"),
    )
}

pub(super) async fn worklets() -> impl IntoResponse {
    (
        headers("text/javascript; charset=utf-8"),
        include_str!("web/worklets.js"),
    )
}
