//! `turnflow serve` as a library: an HTTP server where each WebSocket at `/session` is one
//! conversation (the protocol is [`protocol`], documented in `docs/protocol.md`), with the page
//! that talks to it at `/`, phone calls from Twilio and Telnyx at `/telephony` and Twilio's
//! webhook at `/twilio/voice` ([`telephony`], `docs/telephony.md`), health at `/healthz` and
//! `/readyz`, and Prometheus metrics at `/metrics` ([`metrics`]). An application follows every
//! session through a [`SessionObserver`].
//!
//! Ownership: the server owns a `TaskTracker` of session tasks and a shutdown token whose
//! children stop each session. [`Server::serve`] drains on its signal: readiness turns 503 and
//! new sessions are refused at once, running ones go on until they end or
//! [`ServerConfig::drain_timeout`] passes, then they are stopped (the reply in progress cut,
//! the client told `server_shutdown`) and awaited before `serve` returns.
//!
//! Limits are checked before the upgrade (capacity, token, origin and host: plain HTTP refusals
//! a load balancer and a browser understand) and per message after it (`limits`). Every phase
//! of a connection has an absolute deadline that shutdown overrides: its request headers and
//! body, the wait for `start` (which messages before it do not move), the idle time of a call
//! (only audio counts), the finish after the client's `stop`, and the drain, which returns
//! within [`ServerConfig::drain_timeout`] plus a few seconds whatever clients do.

mod admission;
mod browser;
mod config;
pub mod metrics;
mod observer;
mod page;
pub mod protocol;
mod routes;
mod service;
pub mod telephony;
#[cfg(feature = "webrtc")]
pub mod webrtc;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use admission::token_matches;
pub use config::ServerConfig;
pub use metrics::Metrics;
use observer::Reporting;
pub use observer::SessionObserver;
pub use service::{Drain, DrainReport, Server, Service};

/// Messages a client may send a second, averaged: four times what a
/// browser (50 audio frames, up to 10 playback reports) or a carrier (50 media messages, its mark
/// echoes) sends.
pub const MESSAGES_PER_SECOND: u32 = 200;
/// Messages a client may send at once beyond that rate (a burst after a network stall).
pub const MESSAGE_BURST: u32 = 400;

/// What the server's tasks share.
struct State {
    config: ServerConfig,
    metrics: Arc<Metrics>,
    /// Sessions admitted (reserved before the upgrade, released when the session ends).
    admitted: AtomicUsize,
    /// Cancelled when the drain begins (and by `shutdown`, its parent): a connection still
    /// waiting for its `start` ends then.
    draining: CancellationToken,
    /// Parent of every session's stop token.
    shutdown: CancellationToken,
    sessions: TaskTracker,
    /// What every browser session is run with.
    browser: Arc<crate::call::Settings>,
    /// What every phone call is run with: the browser's, with the greeting and the re-prompt.
    phone: Arc<crate::call::Settings>,
    /// The WebRTC port and its sessions, when configured.
    #[cfg(feature = "webrtc")]
    webrtc: Option<webrtc::WebRtc>,
}

impl State {
    /// The conversation `id`, run with `settings` and reported through `reporting`: stopped
    /// by the server's shutdown, its wait for `start` ended by the drain.
    fn call(
        &self,
        id: &str,
        settings: &Arc<crate::call::Settings>,
        reporting: Arc<Reporting>,
    ) -> crate::call::Call {
        crate::call::Call::new(id, settings.clone())
            .observed_by(reporting)
            .stopped_by(self.shutdown.clone())
            .draining_with(self.draining.clone())
    }

    /// A call is over: its outcome to the metrics, and its trace to the collector when
    /// traces are exported. `transport` is `browser`, `webrtc` or `phone`.
    fn call_ended(&self, id: &str, transport: &str, ending: &crate::call::Ending) {
        self.metrics.session_ended(ending.outcome);
        #[cfg(feature = "otel")]
        if let (Some(traces), Some(log)) = (&self.config.traces, &ending.log) {
            traces.export_call(
                log.entries(),
                &crate::report::trace::CallInfo {
                    session: id,
                    outcome: ending.outcome.as_str(),
                    transport,
                    llm: self.config.backends.llm.name(),
                    tts: self.config.backends.tts.name(),
                },
            );
        }
        #[cfg(not(feature = "otel"))]
        let _ = (id, transport);
    }

    /// A session's reporting to the metrics and the application's observer.
    fn reporting(&self) -> Arc<Reporting> {
        Arc::new(Reporting::new(
            self.metrics.clone(),
            self.config.observer.clone(),
        ))
    }
}

/// Whether a WebSocket read failed because the peer sent a message over the size limit (as
/// opposed to going away).
fn too_big(error: &axum::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|e| e.downcast_ref::<tokio_tungstenite::tungstenite::Error>())
        .is_some_and(|e| matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)))
}
