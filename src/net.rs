//! Shared networking: API keys, the rule against sending keys in clear, TLS setup (ring and
//! Mozilla's roots, per client: no process-wide provider is installed) and the HTTP client.
//! Used by the Flux client, the LLM clients and the voices alike.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// An API key. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The secret itself, for building an authorization header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The host of `url` (`scheme://[user@]host[:port]/...`), brackets of IPv6 literals removed.
pub(crate) fn host_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority_host(authority)
}

/// The host of an authority (`user@host:port`, `[::1]:8080`, a `Host` header), without
/// user, port or IPv6 brackets.
pub(crate) fn authority_host(authority: &str) -> Option<&str> {
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(host, _)| host);
    }
    Some(
        authority
            .split_once(':')
            .map_or(authority, |(host, _)| host),
    )
}

/// An HTTP header value holding a secret, marked sensitive so HTTP/2 never indexes it and
/// debug output of the request hides it. `None` when the secret has characters a header
/// cannot carry.
pub(crate) fn secret_header(value: &str) -> Option<reqwest::header::HeaderValue> {
    let mut header = reqwest::header::HeaderValue::from_str(value).ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// One readable line for a failed HTTP exchange: the host, what failed and every cause
/// (reqwest's own message alone is "error sending request"). The path and query are left out.
pub(crate) fn describe_http_error(error: &reqwest::Error) -> String {
    let host = error.url().and_then(|u| {
        let host = u.host_str()?;
        Some(match u.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        })
    });
    let mut line = match host {
        Some(host) => format!("{host}: "),
        None => String::new(),
    };
    let mut top = error.to_string();
    if let Some(url) = error.url() {
        top = top
            .replace(&format!(" for url ({url})"), "")
            .replace(&format!(" ({url})"), "")
            .replace(url.as_str(), "");
    }
    line.push_str(top.trim());
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// A [`BackendError`](crate::error::BackendError) for a request that got no HTTP answer:
/// a timeout, a connection that could not be made, or a body that broke off.
pub(crate) fn http_error(provider: &str, error: &reqwest::Error) -> crate::error::BackendError {
    use crate::error::ErrorKind;
    let kind = if error.is_timeout() {
        ErrorKind::Timeout
    } else if error.is_body() || error.is_decode() {
        ErrorKind::StreamBroken
    } else {
        ErrorKind::Network
    };
    crate::error::BackendError::new(provider, kind, describe_http_error(error))
}

/// The `retry-after` header in seconds (the HTTP-date form is ignored).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// The most of an error response's body kept for its message (the message shows 300
/// characters of it).
const ERROR_BODY_LIMIT: usize = 4096;

/// The start of an error response's body, as text: at most [`ERROR_BODY_LIMIT`] bytes are
/// read, however much the server sends, and a body that breaks off gives what came.
pub(crate) async fn error_body(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    String::from_utf8_lossy(&body).into_owned()
}

/// Whether `url` names this machine (`localhost`, `127.0.0.0/8`, `::1`).
pub(crate) fn is_loopback(url: &str) -> bool {
    host_of(url).is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// Whether `url` is unencrypted (`http://` or `ws://`) to a host other than this machine:
/// a key sent there travels in clear.
pub(crate) fn insecure_remote(url: &str) -> bool {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    matches!(scheme.as_deref(), Some("http" | "ws")) && !is_loopback(url)
}

/// The TLS settings of every connection turnflow makes: ring as the crypto provider, Mozilla's
/// roots, and `alpn` as the offered protocols. Built per client, never installed as the
/// process's default, so an application's own rustls setup is left alone.
fn tls_config(alpn: &[&[u8]]) -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports rustls's default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// TLS for WebSockets (Flux, Aura): no ALPN, as the upgrade is HTTP/1.1.
pub(crate) fn websocket_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| Arc::new(tls_config(&[]))).clone()
}

/// The largest message or frame a provider connection takes. Provider messages are a few
/// kilobytes (a turn's transcript, a chunk of speech); tungstenite's default (64 MiB) would let
/// a broken or hostile server make every session allocate that much.
pub(crate) const WEBSOCKET_MESSAGE_LIMIT: usize = 4 << 20;

/// WebSocket settings for provider connections: tungstenite's default read buffer (128 KiB,
/// zero-filled on every read) costs memory and time per connection; provider messages are
/// a few kilobytes, and the buffer still grows for a larger one, up to
/// [`WEBSOCKET_MESSAGE_LIMIT`].
pub(crate) fn websocket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(WEBSOCKET_MESSAGE_LIMIT))
        .max_frame_size(Some(WEBSOCKET_MESSAGE_LIMIT))
}

/// The HTTP client every HTTP backend uses.
pub(crate) fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, String> {
    http_client_builder(connect_timeout)
        .build()
        .map_err(|e| format!("cannot build the http client: {e}"))
}

/// [`http_client`]'s settings, for a client that needs one more.
pub(crate) fn http_client_builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(&[b"h2", b"http/1.1"]))
        .connect_timeout(connect_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_gives_its_host_alone() {
        assert_eq!(authority_host("agent.example:443"), Some("agent.example"));
        assert_eq!(authority_host("agent.example"), Some("agent.example"));
        assert_eq!(authority_host("[::1]:8080"), Some("::1"));
        assert_eq!(authority_host("user:pw@h:1"), Some("h"));
        assert_eq!(authority_host("[::1"), None);
    }

    #[test]
    fn loopback_is_parsed_not_guessed() {
        for local in [
            "http://localhost:11434/v1",
            "ws://127.0.0.1:9000",
            "http://127.8.9.10",
            "ws://[::1]:80/x",
            "http://user:pw@LOCALHOST/",
        ] {
            assert!(is_loopback(local), "{local}");
            assert!(!insecure_remote(local), "{local}");
        }
        for remote in [
            "http://127.evil.example/v1",
            "ws://example.com",
            "http://10.0.0.1:8080",
            "ws://localhost.example.com",
            "http://[2001:db8::1]:80",
            "http://localhost@evil.example/",
        ] {
            assert!(insecure_remote(remote), "{remote}");
        }
        for encrypted in ["https://example.com", "wss://api.deepgram.com"] {
            assert!(!insecure_remote(encrypted), "{encrypted}");
        }
    }

    #[tokio::test]
    async fn http_errors_name_the_host_and_every_cause() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = http_client(Duration::from_secs(1)).unwrap();
        let error = client
            .get(format!("http://127.0.0.1:{port}/v1/secret-path?q=1"))
            .send()
            .await
            .unwrap_err();
        let line = describe_http_error(&error);
        assert!(line.starts_with(&format!("127.0.0.1:{port}: ")), "{line}");
        assert!(line.to_lowercase().contains("refused"), "the cause: {line}");
        assert!(!line.contains("secret-path"), "{line}");
        assert!(
            !line.contains('\n') && !line.contains("{ "),
            "one readable line: {line}"
        );
    }

    #[test]
    fn secret_headers_are_sensitive() {
        let header = secret_header("Token dg_123").unwrap();
        assert!(header.is_sensitive());
        assert_eq!(format!("{header:?}"), "Sensitive");
        assert!(secret_header("bad\nkey").is_none());
    }

    #[test]
    fn api_key_is_redacted() {
        let key = ApiKey::new("sk-secret");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
        assert_eq!(key.expose(), "sk-secret");
    }
}
