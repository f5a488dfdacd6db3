//! The error of a language model or a voice: which provider, what kind of failure, the HTTP
//! status when there was one, and a message a person can act on.
//!
//! The kind decides what happens next: [`BackendError::is_retryable`] is what failover chains
//! and retries follow (a wrong key or a refused request is never retried; a rate limit, a
//! server error, a broken network or stream and a timeout may be). The engine keeps the error
//! typed all the way to [`crate::engine::EngineEvent::ResponseEnded`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

fn from_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
}

fn as_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u128(d.as_millis()),
        None => s.serialize_none(),
    }
}

/// What kind of failure a [`BackendError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The key is missing, wrong or not allowed (HTTP 401/403).
    Auth,
    /// Too many requests (HTTP 429, Aura's `DATA-0001`); try again after `retry_after` when
    /// the provider said.
    RateLimited {
        /// The provider's `retry-after`, when it sent one.
        #[serde(
            rename = "retry_after_ms",
            default,
            skip_serializing_if = "Option::is_none",
            serialize_with = "as_millis",
            deserialize_with = "from_millis"
        )]
        retry_after: Option<Duration>,
    },
    /// The provider refused the request as given: model, parameters, text (HTTP 4xx), or the
    /// client is configured in a way it will not use (an unencrypted remote URL).
    BadRequest,
    /// The provider failed (HTTP 5xx).
    Server,
    /// The connection could not be made or was lost before a response.
    Network,
    /// The response broke off, or did not follow the provider's protocol.
    StreamBroken,
    /// Nothing arrived within a limit.
    Timeout,
    /// The reply was unusable: no text, or only a tool call nobody can run.
    EmptyReply,
    /// The backend's code panicked.
    Panicked,
    /// Not asked: the provider failed every request recently and its breaker is open.
    Unavailable,
}

impl ErrorKind {
    /// The kind for an HTTP status other than success.
    pub fn from_status(status: u16, retry_after: Option<Duration>) -> Self {
        match status {
            401 | 403 => ErrorKind::Auth,
            408 => ErrorKind::Timeout,
            429 => ErrorKind::RateLimited { retry_after },
            400..=499 => ErrorKind::BadRequest,
            _ => ErrorKind::Server,
        }
    }

    /// The kind named `name` (see [`ErrorKind::as_str`]); a rate limit comes back without its
    /// `retry_after`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "auth" => ErrorKind::Auth,
            "rate_limited" => ErrorKind::RateLimited { retry_after: None },
            "bad_request" => ErrorKind::BadRequest,
            "server" => ErrorKind::Server,
            "network" => ErrorKind::Network,
            "stream_broken" => ErrorKind::StreamBroken,
            "timeout" => ErrorKind::Timeout,
            "empty_reply" => ErrorKind::EmptyReply,
            "panicked" => ErrorKind::Panicked,
            "unavailable" => ErrorKind::Unavailable,
            _ => return None,
        })
    }

    /// A short lowercase name (`auth`, `rate_limited`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::RateLimited { .. } => "rate_limited",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Server => "server",
            ErrorKind::Network => "network",
            ErrorKind::StreamBroken => "stream_broken",
            ErrorKind::Timeout => "timeout",
            ErrorKind::EmptyReply => "empty_reply",
            ErrorKind::Panicked => "panicked",
            ErrorKind::Unavailable => "unavailable",
        }
    }
}

/// A language model's or a voice's failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub struct BackendError {
    /// Which backend (`openai-compatible`, `anthropic`, `aura`, ...).
    pub provider: String,
    /// What kind of failure.
    #[serde(flatten)]
    pub kind: ErrorKind,
    /// The HTTP status, when the provider answered with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What happened, for a person; never holds a key.
    pub message: String,
}

/// The provider's own words (an error body may echo the request, even the key) are escaped and
/// cut short, so a log line stays one short line.
impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.provider,
            crate::text::Untrusted(&self.message)
        )
    }
}

impl BackendError {
    /// An error of `kind` from `provider`.
    pub fn new(provider: impl Into<String>, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            provider: provider.into(),
            kind,
            status: None,
            message: message.into(),
        }
    }

    /// The error for an HTTP `status` (kind from the status).
    pub fn http(
        provider: impl Into<String>,
        status: u16,
        retry_after: Option<Duration>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status: Some(status),
            ..Self::new(
                provider,
                ErrorKind::from_status(status, retry_after),
                message,
            )
        }
    }

    /// This error as a caller may see it: the provider, the kind and the status, with a fixed
    /// message for the kind in place of the provider's words (an error body can carry the
    /// request, an account's details or the key itself).
    pub fn for_caller(&self) -> Self {
        let message = match self.kind {
            ErrorKind::Auth => "the provider refused the server's credentials",
            ErrorKind::RateLimited { .. } => "the provider is limiting requests",
            ErrorKind::BadRequest => "the provider refused the request",
            ErrorKind::Server => "the provider failed",
            ErrorKind::Network => "the provider could not be reached",
            ErrorKind::StreamBroken => "the provider's reply broke off",
            ErrorKind::Timeout => "the provider did not answer in time",
            ErrorKind::EmptyReply => "the reply was empty",
            ErrorKind::Panicked => "the backend failed",
            ErrorKind::Unavailable => "the provider is down and not being asked for now",
        };
        Self {
            message: message.to_owned(),
            ..self.clone()
        }
    }

    /// Whether trying again (later, or the same request elsewhere) may succeed: rate limits,
    /// server errors, network and stream failures, timeouts. Never a wrong key, a refused
    /// request, an empty reply or a panic.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited { .. }
                | ErrorKind::Server
                | ErrorKind::Network
                | ErrorKind::StreamBroken
                | ErrorKind::Timeout
        )
    }

    /// The wait the provider asked for, when rate limited.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            ErrorKind::RateLimited { retry_after } => retry_after,
            _ => None,
        }
    }

    /// How long to wait before trying the same provider again, or `None` when it should not
    /// be: the error is not retryable, or the provider asked for a longer wait than `longest`
    /// (better spent on the next provider). Waits `backoff` unless the provider said.
    pub fn retry_wait(&self, backoff: Duration, longest: Duration) -> Option<Duration> {
        if !self.is_retryable() {
            return None;
        }
        let wait = self.retry_after().unwrap_or(backoff);
        (wait <= longest).then_some(wait)
    }

    /// Whether the failure is in how the backend is set up (key, model, parameters): it will
    /// fail the same way every time until someone changes the configuration.
    pub fn is_configuration(&self) -> bool {
        matches!(self.kind, ErrorKind::Auth | ErrorKind::BadRequest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name() {
        for kind in [
            ErrorKind::Auth,
            ErrorKind::RateLimited { retry_after: None },
            ErrorKind::BadRequest,
            ErrorKind::Server,
            ErrorKind::Network,
            ErrorKind::StreamBroken,
            ErrorKind::Timeout,
            ErrorKind::EmptyReply,
            ErrorKind::Panicked,
        ] {
            assert_eq!(ErrorKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorKind::from_name("sunspots"), None);
    }

    #[test]
    fn statuses_map_to_kinds_and_retry_rules() {
        let cases = [
            (401, "auth", false, true),
            (403, "auth", false, true),
            (400, "bad_request", false, true),
            (404, "bad_request", false, true),
            (408, "timeout", true, false),
            (429, "rate_limited", true, false),
            (500, "server", true, false),
            (503, "server", true, false),
        ];
        for (status, kind, retryable, configuration) in cases {
            let e = BackendError::http("p", status, None, "m");
            assert_eq!(e.kind.as_str(), kind, "{status}");
            assert_eq!(e.is_retryable(), retryable, "{status}");
            assert_eq!(e.is_configuration(), configuration, "{status}");
            assert_eq!(e.status, Some(status));
        }
        let limited = BackendError::http("p", 429, Some(Duration::from_secs(7)), "slow down");
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(limited.to_string(), "p: slow down");
        let json = serde_json::to_value(&limited).unwrap();
        assert_eq!(json["kind"], "rate_limited");
        assert_eq!(json["status"], 429);
        assert_eq!(json["retry_after_ms"], 7000);
        assert!(!BackendError::new("p", ErrorKind::EmptyReply, "m").is_retryable());
        let echoed = BackendError::http("p", 401, None, "http 401: bad key sk-live-123\nINFO x");
        assert_eq!(
            echoed.to_string(),
            "p: http 401: bad key sk-live-123\\nINFO x"
        );
        let told = echoed.for_caller();
        assert_eq!(
            (told.kind, told.status, told.provider.as_str()),
            (ErrorKind::Auth, Some(401), "p")
        );
        assert!(!told.message.contains("sk-live"), "{told}");
        let (backoff, longest) = (Duration::from_millis(200), Duration::from_secs(2));
        assert_eq!(
            BackendError::http("p", 401, None, "m").retry_wait(backoff, longest),
            None
        );
        assert_eq!(
            BackendError::http("p", 503, None, "m").retry_wait(backoff, longest),
            Some(backoff)
        );
        let soon = BackendError::http("p", 429, Some(Duration::from_secs(1)), "m");
        assert_eq!(
            soon.retry_wait(backoff, longest),
            Some(Duration::from_secs(1))
        );
        let later = BackendError::http("p", 429, Some(Duration::from_secs(30)), "m");
        assert_eq!(
            later.retry_wait(backoff, longest),
            None,
            "next provider instead"
        );
    }
}
