//! What the client connects to and how it stays connected.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::flux::options::ListenOptions;
use crate::net::ApiKey;

use super::FluxError;

/// Where Deepgram serves Flux.
pub const DEEPGRAM_BASE_URL: &str = "wss://api.deepgram.com";
/// The environment variable the API key is read from.
pub const API_KEY_ENV: &str = "DEEPGRAM_API_KEY";

/// How the client reconnects after a dropped connection: for a time budget, each attempt after
/// a random delay below a ceiling that doubles per attempt ("full jitter"), so sessions that
/// lost the service together come back spread out.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// How long an outage may last before the session gives up, from the moment the connection
    /// was lost (a reconnect that dies within `stable_after` does not end the outage).
    pub budget: Duration,
    /// Attempts before giving up, whatever the budget (0 disables reconnecting).
    pub max_attempts: u32,
    /// Ceiling of the first attempt's delay; the ceiling doubles per attempt.
    pub initial_backoff: Duration,
    /// Highest ceiling.
    pub max_backoff: Duration,
    /// A connection that lasted this long was healthy: the next drop starts counting attempts
    /// afresh. Shorter ones (a server that accepts and closes at once) count as failed
    /// attempts, so backoff keeps growing and the client gives up.
    pub stable_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(30),
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            stable_after: Duration::from_secs(10),
        }
    }
}

impl ReconnectPolicy {
    /// The ceiling of attempt `attempt`'s delay (1-based).
    pub(super) fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// The delay before attempt `attempt`: `dice` (uniform over `u64`) scaled into
    /// `0..=ceiling`, at least what the server asked for (`Retry-After`).
    pub(super) fn delay(&self, attempt: u32, dice: u64, asked: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jittered = ceiling.mul_f64(dice as f64 / u64::MAX as f64);
        asked.map_or(jittered, |asked| jittered.max(asked))
    }
}

/// Uniform random bits for the reconnect dice, from the operating system's generator (the
/// one `uuid` draws on), so processes started together do not share a sequence.
pub(super) fn dice() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// A limit on Flux handshakes in flight, shared by every session that holds a clone: a
/// recovering service meets at most this many at once. [`FluxConfig::new`] takes the
/// process's ([`DEFAULT_HANDSHAKES_IN_FLIGHT`]).
#[derive(Debug, Clone)]
pub struct HandshakeLimit(Arc<Semaphore>);

/// How many Flux handshakes a process runs at once by default.
pub const DEFAULT_HANDSHAKES_IN_FLIGHT: usize = 32;

impl HandshakeLimit {
    /// A limit of its own, of `in_flight` handshakes (at least one).
    pub fn new(in_flight: usize) -> Self {
        Self(Arc::new(Semaphore::new(in_flight.max(1))))
    }

    /// The process-wide limit.
    pub fn process() -> Self {
        static PROCESS: OnceLock<HandshakeLimit> = OnceLock::new();
        PROCESS
            .get_or_init(|| HandshakeLimit::new(DEFAULT_HANDSHAKES_IN_FLIGHT))
            .clone()
    }

    /// Waits for a place; the handshake holds it until the permit is dropped.
    pub(super) async fn enter(&self) -> OwnedSemaphorePermit {
        self.0
            .clone()
            .acquire_owned()
            .await
            .expect("the limit's semaphore is never closed")
    }
}

/// Everything the client needs to connect and stay connected.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FluxConfig {
    /// `wss://api.deepgram.com` by default; `ws://127.0.0.1:PORT` for an emulator. `http(s)`
    /// is accepted and turned into `ws(s)`. A query string is kept (the listen options follow
    /// it) unless it sets one of the listen options itself.
    pub base_url: String,
    /// Sent as `Authorization: Token <key>`.
    pub api_key: Option<ApiKey>,
    /// Allow sending the key over unencrypted `ws://` to a host other than this machine.
    pub allow_insecure: bool,
    /// The query parameters.
    pub options: ListenOptions,
    /// Length of each audio frame sent (Deepgram recommends 80 ms).
    pub frame: Duration,
    /// Limit for TCP + TLS + upgrade.
    pub connect_timeout: Duration,
    /// Limit for the `Connected` message after the upgrade.
    pub connected_timeout: Duration,
    /// Send a WebSocket ping when nothing was sent for this long (idle timeout is 60 s).
    pub ping_interval: Duration,
    /// While a turn is open, inject silence once the source has sent nothing for this long.
    pub silence_after: Duration,
    /// Reconnect when no message arrived for this long while audio was being sent (Flux
    /// answers every 240 ms of audio, so a second and a half of silence is a dead server).
    pub silent_server_timeout: Duration,
    /// Treat the connection as lost when the server has not read a frame for this long.
    pub writer_stall_timeout: Duration,
    /// Most audio kept for replay after a reconnect: of an open turn, or of all that was sent
    /// while the service was away.
    pub replay_limit: Duration,
    /// Bound for each step of [`FluxHandle::close`](super::FluxHandle::close).
    pub close_timeout: Duration,
    /// Reconnect behaviour.
    pub reconnect: ReconnectPolicy,
    /// Handshakes in flight, shared across sessions (the process's by default).
    pub handshakes: HandshakeLimit,
}

impl FluxConfig {
    /// A configuration for Deepgram with `options` and no key (see [`FluxConfig::from_env`]
    /// and [`FluxConfig::with_api_key`]).
    pub fn new(options: ListenOptions) -> Self {
        Self {
            base_url: DEEPGRAM_BASE_URL.into(),
            api_key: None,
            allow_insecure: false,
            options,
            frame: Duration::from_millis(80),
            connect_timeout: Duration::from_secs(10),
            connected_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            silence_after: Duration::from_millis(500),
            silent_server_timeout: Duration::from_millis(1500),
            writer_stall_timeout: Duration::from_secs(5),
            replay_limit: Duration::from_secs(30),
            close_timeout: Duration::from_secs(3),
            reconnect: ReconnectPolicy::default(),
            handshakes: HandshakeLimit::process(),
        }
    }

    /// Like [`FluxConfig::new`], with the key read from `DEEPGRAM_API_KEY`.
    ///
    /// # Errors
    /// A message naming the variable when it is unset or empty.
    pub fn from_env(options: ListenOptions) -> Result<Self, String> {
        match std::env::var(API_KEY_ENV) {
            Ok(key) if !key.trim().is_empty() => {
                Ok(Self::new(options).with_api_key(ApiKey::new(key.trim())))
            }
            _ => Err(format!(
                "{API_KEY_ENV} is not set: the Deepgram API key is read from it"
            )),
        }
    }

    /// Targets another server (an emulator, a proxy, a regional host).
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// Sets the API key explicitly.
    pub fn with_api_key(mut self, key: ApiKey) -> Self {
        self.api_key = Some(key);
        self
    }

    /// Checks what [`FluxConfig::url_for`] and the key need of the base URL.
    ///
    /// # Errors
    /// [`FluxError::InvalidBaseUrl`] for a scheme other than ws(s)/http(s), a fragment, or a
    /// query string that sets a listen option; [`FluxError::InsecureTransport`] when a key
    /// would go unencrypted to another machine.
    pub fn check_base_url(&self) -> Result<(), FluxError> {
        let url = &self.base_url;
        let invalid = |reason: String| FluxError::InvalidBaseUrl {
            url: url.clone(),
            reason,
        };
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("ws" | "wss" | "http" | "https")) {
            return Err(invalid(
                "use a ws://, wss://, http:// or https:// url".into(),
            ));
        }
        if url.contains('#') {
            return Err(invalid("a url fragment (#...) is not allowed".into()));
        }
        if let Some((_, query)) = url.split_once('?') {
            let ours = self.options.to_query();
            let ours: Vec<&str> = ours
                .split('&')
                .filter_map(|pair| pair.split('=').next())
                .collect();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let key = pair.split('=').next().unwrap_or(pair);
                if ours.contains(&key) {
                    return Err(invalid(format!(
                        "its query sets {key}, which comes from the listen options; set the option instead"
                    )));
                }
            }
        }
        if self.api_key.is_some() && !self.allow_insecure && crate::net::insecure_remote(url) {
            return Err(FluxError::InsecureTransport { url: url.clone() });
        }
        Ok(())
    }

    /// The full `/v2/listen` URL for `options`; a query string in the base URL is kept, the
    /// options follow it.
    pub fn url_for(&self, options: &ListenOptions) -> String {
        let (base, extra) = match self.base_url.split_once('?') {
            Some((base, query)) => (base, Some(query.trim_matches('&'))),
            None => (self.base_url.as_str(), None),
        };
        let base = base.trim_end_matches('/');
        let base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_owned()
        };
        let path = if base.ends_with("/v2/listen") {
            ""
        } else {
            "/v2/listen"
        };
        match extra.filter(|q| !q.is_empty()) {
            Some(extra) => format!("{base}{path}?{extra}&{}", options.to_query()),
            None => format!("{base}{path}?{}", options.to_query()),
        }
    }

    pub(super) fn bytes_per_second(&self) -> Option<f64> {
        let encoding = self.options.encoding?;
        let bytes = encoding.bytes_per_sample()?;
        Some(f64::from(self.options.sample_rate?) * bytes as f64)
    }
}
