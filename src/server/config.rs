//! How the server behaves: [`ServerConfig`] and its production defaults.

use std::sync::Arc;
use std::time::Duration;

use super::SessionObserver;
use crate::engine::{Backends, SessionConfig};
use crate::flux::{ApiKey, Connector, FluxConfig};

/// How the server behaves. [`ServerConfig::new`] gives production defaults.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Speech to text for every session; the encoding and sample rate are set per session
    /// from the client's `start`.
    pub flux: FluxConfig,
    /// How Flux connections are made (Deepgram over WebSocket, or an emulator).
    pub connector: Arc<dyn Connector>,
    /// The language model and voice every session uses.
    pub backends: Backends,
    /// The engine's settings for every session.
    pub session: SessionConfig,
    /// Sessions at once; a connection beyond this is refused with 503 before the upgrade.
    pub max_sessions: usize,
    /// When set, a connection must present it (`Authorization: Bearer TOKEN`, or `?token=`
    /// for browsers, which cannot set headers on a WebSocket).
    pub token: Option<ApiKey>,
    /// Origins a browser page may connect from (`https://app.example.com`, or `*`). Empty:
    /// only pages served by this server (the Origin's host equals the Host header). Clients
    /// that send no Origin (not browsers) are not affected.
    pub allowed_origins: Vec<String>,
    /// On shutdown, how long running sessions may go on before they are stopped.
    pub drain_timeout: Duration,
    /// A session that receives no audio for this long is closed (control messages, pings and
    /// carrier marks do not count).
    pub idle_timeout: Duration,
    /// A connection that has not sent its `start` this long after the upgrade is closed,
    /// whatever else it sent meanwhile.
    pub start_timeout: Duration,
    /// After the client's `stop`, how long the reply in progress may go on before the session
    /// is ended.
    pub finish_timeout: Duration,
    /// An HTTP connection whose request headers have not all arrived this long after it
    /// opened (or after its previous request) is closed.
    pub header_timeout: Duration,
    /// A request body (Twilio's webhook) must arrive whole within this.
    pub body_timeout: Duration,
    /// Largest audio frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// How far a client's audio may run ahead of real time.
    pub realtime_margin: Duration,
    /// What a full or draining server tells clients to wait before retrying.
    pub retry_after: Duration,
    /// Where carriers reach this server (`https://agent.example.com`): the TwiML answered at
    /// `/twilio/voice` points the call's media stream at its `/telephony`, and Twilio's
    /// signatures are computed over it.
    pub public_url: Option<String>,
    /// Twilio's auth token: when set, `/twilio/voice` and `/telephony` refuse requests
    /// without a valid `X-Twilio-Signature` (401). A transfer on a Twilio call signs in with
    /// it too.
    pub twilio_auth_token: Option<ApiKey>,
    /// Phone calls: the number `transfer_call` hands a caller to (E.164); `None`: the tool is
    /// not offered.
    pub transfer_to: Option<String>,
    /// The carriers' APIs a transfer asks (their real hosts by default) and Telnyx's key.
    pub carrier_api: super::telephony::transfer::CarrierApi,
    /// When set, `/metrics` must be asked with `Authorization: Bearer TOKEN` (a scraper's own
    /// credential, apart from [`ServerConfig::token`]); unset, it is open, for a port that only
    /// the cluster reaches.
    pub metrics_token: Option<ApiKey>,
    /// The application's view of every session, if it wants one.
    pub observer: Option<Arc<dyn SessionObserver>>,
    /// Phone calls: what the agent says when a call connects (nothing: it waits for the caller).
    pub greeting: Option<String>,
    /// Phone calls: after the agent finished and the caller said nothing for this long, the
    /// agent re-prompts once ([`ServerConfig::reprompt_line`]); after as long again it says
    /// [`ServerConfig::goodbye_line`] and hangs up. `None`: it waits.
    pub reprompt_after: Option<Duration>,
    /// The re-prompt.
    pub reprompt_line: String,
    /// The last words before hanging up on a silent caller.
    pub goodbye_line: String,
    /// When set, every session is recorded into `DIR/<session id>/` for `turnflow replay`
    /// (`docs/recordings.md`): the caller's audio, Flux's messages, the model's and the voice's
    /// streams, the event log. Recordings hold what was said: keep them like call recordings.
    pub record_dir: Option<std::path::PathBuf>,
    /// Where every finished call's trace goes (feature `otel`); `None`: nowhere.
    #[cfg(feature = "otel")]
    pub traces: Option<crate::report::otlp::TraceExporter>,
    /// The UDP port WebRTC sessions use (feature `webrtc`); `None` answers `POST /webrtc`
    /// with 404, and the page uses the WebSocket.
    #[cfg(feature = "webrtc")]
    pub webrtc: Option<super::webrtc::WebRtcPort>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("flux", &self.flux)
            .field("backends", &self.backends)
            .field("max_sessions", &self.max_sessions)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<set>"),
            )
            .field("allowed_origins", &self.allowed_origins)
            .field("drain_timeout", &self.drain_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// A configuration with production defaults: 100 sessions, a 10 minute drain, 15 s idle
    /// and start limits, a minute to finish after `stop`, 10 s for request headers and for a
    /// request body, 16 KiB frames, audio at most 2 s ahead of real time.
    pub fn new(flux: FluxConfig, connector: Arc<dyn Connector>, backends: Backends) -> Self {
        // Reports are computed per turn from the log; a few minutes of entries is plenty and
        // keeps a thousand sessions in memory.
        let session = SessionConfig {
            log_limit: 2048,
            ..SessionConfig::default()
        };
        Self {
            flux,
            connector,
            backends,
            session,
            max_sessions: 100,
            token: None,
            allowed_origins: Vec::new(),
            drain_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(15),
            start_timeout: Duration::from_secs(15),
            finish_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_frame_bytes: 16 * 1024,
            realtime_margin: Duration::from_secs(2),
            retry_after: Duration::from_secs(5),
            public_url: None,
            twilio_auth_token: None,
            transfer_to: None,
            carrier_api: super::telephony::transfer::CarrierApi::default(),
            metrics_token: None,
            observer: None,
            record_dir: None,
            #[cfg(feature = "otel")]
            traces: None,
            #[cfg(feature = "webrtc")]
            webrtc: None,
            greeting: None,
            reprompt_after: None,
            reprompt_line: "Are you still there?".into(),
            goodbye_line: "I'll let you go now. Goodbye!".into(),
        }
    }
}

impl ServerConfig {
    /// What browser sessions and phone calls are run with: the same providers and limits;
    /// calls greet and re-prompt.
    pub(super) fn call_settings(&self) -> (crate::call::Settings, crate::call::Settings) {
        let mut browser = crate::call::Settings::new(
            self.flux.clone(),
            self.connector.clone(),
            self.backends.clone(),
        );
        browser.session = self.session.clone();
        browser.record_dir = self.record_dir.clone();
        browser.limits = crate::call::Limits {
            start_timeout: self.start_timeout,
            idle_timeout: self.idle_timeout,
            finish_timeout: self.finish_timeout,
            realtime_margin: self.realtime_margin,
            max_audio_bytes: self.max_frame_bytes,
            messages_per_second: super::MESSAGES_PER_SECOND,
            message_burst: super::MESSAGE_BURST,
        };
        let mut phone = browser.clone();
        if let Some(to) = &self.transfer_to {
            let mut toolbox = crate::tools::Toolbox::new();
            let added = match &self.backends.tools {
                Some(tools) => toolbox.add("the configured tools", None, tools.clone()),
                None => Ok(()),
            }
            .and_then(|()| {
                toolbox.add(
                    "call control",
                    None,
                    Arc::new(crate::tools::CallControl::transferring()),
                )
            });
            match added {
                Ok(()) => {
                    phone.backends.tools = Some(Arc::new(toolbox));
                    phone.transfer_to = Some(to.clone());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "transfer_call is not offered on phone calls")
                }
            }
        }
        phone.greeting = self.greeting.clone();
        phone.silence = self.reprompt_after.map(|after| {
            let mut policy = crate::call::SilencePolicy::new(after);
            policy.reprompt = self.reprompt_line.clone();
            policy.goodbye = self.goodbye_line.clone();
            policy
        });
        (browser, phone)
    }
}
