//! Who may become a session, decided before the upgrade with plain HTTP refusals a load
//! balancer and a browser understand: draining, capacity, the bearer token, and the origin and
//! host policy.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::warn;

use super::{State, metrics};

/// Releases an admitted session's place when dropped (whether or not the upgrade happened).
pub(super) struct Admission(Arc<State>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) fn refusal(
    state: &State,
    status: StatusCode,
    why: metrics::Refusal,
    message: &str,
) -> Response {
    state.metrics.refused(why);
    let mut response = (status, format!("{message}\n")).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let seconds = state.config.retry_after.as_secs().max(1).to_string();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&seconds).expect("digits are a valid header value"),
        );
    }
    response
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Whether `given` is the token, in time independent of where they differ.
pub(super) fn token_matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a browser page at `origin` may open a WebSocket here. Clients that send no
/// `Origin` (carriers, the load generator, SDKs) are not browsers and pass. With an allowed
/// list, the origin must be on it (`*` allows any). Without one, only the server's own page
/// may: the origin must name the `Host` the request was sent to, and that host must be a name
/// no one else can point at this server ([`host_is_ours`]), so a page on an attacker's domain
/// that resolves to this server (DNS rebinding) is refused.
fn origin_allowed(
    allowed: &[String],
    public_url: Option<&str>,
    origin: Option<&str>,
    host: Option<&str>,
) -> bool {
    let Some(origin) = origin else { return true };
    if !allowed.is_empty() {
        return allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    }
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    host.is_some_and(|host| {
        host.eq_ignore_ascii_case(origin_host) && host_is_ours(host, public_url)
    })
}

/// Whether the authority `host` (`name[:port]`) names this server: an IP address, `localhost`,
/// or the host of `public_url`.
fn host_is_ours(host: &str, public_url: Option<&str>) -> bool {
    let Some(name) = crate::net::authority_host(host) else {
        return false;
    };
    if name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    public_url
        .and_then(crate::net::host_of)
        .is_some_and(|public| public.eq_ignore_ascii_case(name))
}

/// The 403 for a browser page whose origin may not connect, when it may not.
pub(super) fn refuse_origin(state: &State, headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if origin_allowed(
        &state.config.allowed_origins,
        state.config.public_url.as_deref(),
        origin,
        host,
    ) {
        return None;
    }
    warn!(
        origin = %crate::text::Untrusted(origin.unwrap_or_default()),
        host = %crate::text::Untrusted(host.unwrap_or_default()),
        "connection from an origin not allowed"
    );
    Some(refusal(
        state,
        StatusCode::FORBIDDEN,
        metrics::Refusal::Origin,
        "this origin may not connect (see --allowed-origin and --public-url)",
    ))
}

#[derive(serde::Deserialize)]
pub(super) struct SessionQuery {
    pub(super) token: Option<String>,
}

/// Admission before an upgrade: draining, then capacity. Returns the reserved place.
pub(super) fn admit(state: &Arc<State>) -> Result<Admission, metrics::Refusal> {
    if state.draining.is_cancelled() {
        return Err(metrics::Refusal::Draining);
    }
    if state.admitted.fetch_add(1, Ordering::SeqCst) >= state.config.max_sessions {
        state.admitted.fetch_sub(1, Ordering::SeqCst);
        return Err(metrics::Refusal::Full);
    }
    Ok(Admission(state.clone()))
}

/// The 503 of a draining or full server.
pub(super) fn unavailable(state: &State, why: metrics::Refusal) -> Response {
    let message = match why {
        metrics::Refusal::Draining => {
            "the server is shutting down; connect again to reach another".to_owned()
        }
        _ => format!(
            "the server is full ({} sessions); retry later",
            state.config.max_sessions
        ),
    };
    refusal(state, StatusCode::SERVICE_UNAVAILABLE, why, &message)
}

/// Upgrades with the server's frame limits and runs `serve` as a tracked session task.
pub(super) fn upgrade_into<F, Fut>(
    upgrade: WebSocketUpgrade,
    admission: Admission,
    serve: F,
) -> Response
where
    F: FnOnce(axum::extract::ws::WebSocket, Arc<State>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Messages up to 1 MiB reach our own checks, which answer with an error and a close
    // code; past that tungstenite drops the connection (counted as a protocol error).
    let frame_limit = (admission.0.config.max_frame_bytes * 4).max(1 << 20);
    // tungstenite's default 128 KiB read buffer is zero-filled on every read: most of the
    // CPU a session's socket cost, and most of its memory. A 20 ms frame is 640 bytes.
    upgrade
        .read_buffer_size(8 * 1024)
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            let sessions = admission.0.sessions.clone();
            let state = admission.0.clone();
            sessions.track_future(async move {
                serve(socket, state).await;
                drop(admission);
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_default_to_the_server_itself_under_a_name_that_is_its_own() {
        let own = |origin: &str, host: &str| origin_allowed(&[], None, Some(origin), Some(host));
        assert!(
            origin_allowed(&[], None, None, Some("evil.example")),
            "non-browser clients"
        );
        assert!(own("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(own("http://localhost:8080", "localhost:8080"));
        assert!(own("http://[::1]:8080", "[::1]:8080"));
        assert!(own("http://192.168.1.5:8080", "192.168.1.5:8080"));
        assert!(
            !own("https://evil.example", "127.0.0.1:8080"),
            "another site"
        );
        assert!(
            !own("http://evil.example:8080", "evil.example:8080"),
            "DNS rebinding: the attacker's name in both"
        );
        assert!(!own(
            "http://localhost.evil.example",
            "localhost.evil.example"
        ));
        assert!(
            !own("http://127.0.0.1:8080", "127.0.0.1:9090"),
            "another port"
        );
        let public = Some("https://agent.example.com/");
        assert!(origin_allowed(
            &[],
            public,
            Some("https://agent.example.com"),
            Some("agent.example.com")
        ));
        assert!(origin_allowed(
            &[],
            Some("https://Agent.Example.com:8443/voice"),
            Some("https://agent.example.com:8443"),
            Some("agent.example.com:8443")
        ));
        assert!(!origin_allowed(
            &[],
            public,
            Some("https://evil.example"),
            Some("evil.example")
        ));
        assert!(
            !origin_allowed(&[], None, Some("http://h"), None),
            "no Host"
        );
        let list = vec!["https://app.example.com/".to_owned()];
        assert!(origin_allowed(
            &list,
            None,
            Some("https://app.example.com"),
            Some("h:1")
        ));
        assert!(!origin_allowed(
            &list,
            None,
            Some("http://h:1"),
            Some("h:1")
        ));
        assert!(origin_allowed(
            &["*".into()],
            None,
            Some("https://any"),
            None
        ));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secret", "secre"));
        assert!(!token_matches("secret", "secreT"));
    }
}
