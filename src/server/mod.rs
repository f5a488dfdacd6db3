//! `turnflow serve` as a library: an HTTP server where each WebSocket at `/session` is one
//! conversation (the protocol is [`protocol`], documented in `docs/protocol.md`), with the page
//! that talks to it at `/`, phone calls from Twilio and Telnyx at `/telephony` and Twilio's
//! webhook at `/twilio/voice` ([`telephony`], `docs/telephony.md`), health at `/healthz` and
//! `/readyz`, and Prometheus metrics at `/metrics` ([`metrics`]). An application follows every
//! session through a [`SessionObserver`].
//!
//! Ownership: the server owns a [`TaskTracker`] of session tasks and a shutdown token whose
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

mod connection;
mod limits;
pub mod metrics;
pub mod protocol;
pub mod telephony;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::engine::{Backends, SessionConfig};
use crate::flux::{ApiKey, Connector, FluxConfig};
pub use metrics::Metrics;

/// The kernel's send buffer for a client's socket (Linux doubles it for its bookkeeping): about
/// 4 s of a browser's 16 kHz audio, 10 s of a phone line's. Left to itself the kernel grows it
/// to megabytes for a client that stops reading, so the stall would hide for minutes (holding
/// that much memory for one session) before a send waits long enough to end the session.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// After a session or an HTTP connection has been told to stop, how long it may take before it
/// is left behind, so that a drain always ends.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Largest request body taken (Twilio's webhook is a form of a few hundred bytes).
const BODY_LIMIT: usize = 64 * 1024;

/// Messages a client may send a second, averaged (`limits::MessageRate`): four times what a
/// browser (50 audio frames, up to 10 playback reports) or a carrier (50 media messages, its mark
/// echoes) sends.
pub const MESSAGES_PER_SECOND: u32 = 200;
/// Messages a client may send at once beyond that rate (a burst after a network stall).
pub const MESSAGE_BURST: u32 = 400;

/// What an application learns of the server's sessions, as they happen: every engine event,
/// and for phone calls who is calling and the keys pressed. Called on the session's task, so
/// an implementation must return quickly (hand the work to a channel). An observer that
/// panics is logged and not called again for that session; the conversation goes on.
pub trait SessionObserver: Send + Sync {
    /// A conversation event of session `session`.
    fn event(&self, session: &str, event: &crate::engine::EngineEvent) {
        let _ = (session, event);
    }

    /// A phone call started: its carrier, ids and custom parameters (the caller's number
    /// among them when the call was set up with it). Never logged by turnflow.
    fn call_started(&self, session: &str, call: &telephony::carrier::StreamStart) {
        let _ = (session, call);
    }

    /// The caller pressed a key (`0`-`9`, `*`, `#`, `A`-`D`).
    fn dtmf(&self, session: &str, digit: &str) {
        let _ = (session, digit);
    }
}

/// A session's view of the application's observer: a panic in the application's code is
/// logged once and ends the observing, not the conversation.
pub(crate) struct Observing(Option<Arc<dyn SessionObserver>>);

impl Observing {
    pub(crate) fn new(observer: Option<Arc<dyn SessionObserver>>) -> Self {
        Self(observer)
    }

    /// Calls `notify` with the observer, if there is one still observing.
    pub(crate) fn notify(&mut self, notify: impl FnOnce(&dyn SessionObserver)) {
        let Some(observer) = &self.0 else { return };
        let call = std::panic::AssertUnwindSafe(|| notify(observer.as_ref()));
        if let Err(panic) = std::panic::catch_unwind(call) {
            let message = crate::engine::response::panic_message(&*panic);
            warn!(panic = %message, "the session observer panicked; it is not called again for this session");
            self.0 = None;
        }
    }
}

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
    /// without a valid `X-Twilio-Signature` (401).
    pub twilio_auth_token: Option<ApiKey>,
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
            metrics_token: None,
            observer: None,
            record_dir: None,
            greeting: None,
            reprompt_after: None,
            reprompt_line: "Are you still there?".into(),
            goodbye_line: "I'll let you go now. Goodbye!".into(),
        }
    }
}

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
}

/// turnflow's routes and the sessions they run, for an application's own axum server: nest
/// [`Service::router`] under any path, behind the application's own middleware, and drain
/// through [`Service::drain`] from the application's own signal handling. [`Server`] is this
/// on a listener of its own, as `turnflow serve` runs it.
///
/// Mounted in another server, two protections of [`Server`] are the application's to keep:
/// a deadline for request headers ([`ServerConfig::header_timeout`]; `axum::serve` has none,
/// so a client that never finishes a request holds its connection) and a capped send buffer
/// for each client socket.
#[derive(Clone)]
pub struct Service {
    state: Arc<State>,
}

impl Service {
    /// The routes and sessions of `config`; nothing runs until the router serves a request.
    pub fn new(config: ServerConfig) -> Self {
        let shutdown = CancellationToken::new();
        Self {
            state: Arc::new(State {
                config,
                metrics: Arc::new(Metrics::default()),
                admitted: AtomicUsize::new(0),
                draining: shutdown.child_token(),
                shutdown,
                sessions: TaskTracker::new(),
            }),
        }
    }

    /// Every route: the page (`/`, `/app.js`, `/worklets.js`), `/session`, `/telephony`,
    /// `/twilio/voice`, `/healthz`, `/readyz` and `/metrics`, relative to wherever the router is
    /// nested. Nested at `/voice`, the page is at `/voice` (axum's nesting matches no trailing
    /// slash) and finds its scripts and its WebSocket under `/voice/`; carriers need
    /// [`ServerConfig::public_url`] to end with `/voice`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(page::index))
            .route("/app.js", get(page::script))
            .route("/worklets.js", get(page::worklets))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .route("/session", get(session))
            .route("/telephony", get(telephony_stream))
            .route("/twilio/voice", axum::routing::post(twilio_voice))
            .with_state(self.state.clone())
    }

    /// The metrics of every session (also at `/metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// The handle that drains this service's sessions.
    pub fn drain(&self) -> Drain {
        Drain {
            state: self.state.clone(),
        }
    }
}

/// Drains a [`Service`]: what a rolling update needs, started from the application's own
/// signal handling. Cloning gives another handle to the same drain.
#[derive(Clone)]
pub struct Drain {
    state: Arc<State>,
}

impl Drain {
    /// Starts draining (again is a no-op): readiness answers 503, new sessions are refused with
    /// 503 and `Retry-After`, connections still waiting for their `start` end at once; running
    /// sessions go on.
    pub fn start(&self) {
        if !self.state.draining.is_cancelled() {
            self.state.draining.cancel();
            self.state.sessions.close();
            info!(
                running = self.state.sessions.len(),
                "draining: new sessions are refused, running ones go on"
            );
        }
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.state.draining.is_cancelled()
    }

    /// Sessions running now (connections waiting for `start` included).
    pub fn running(&self) -> usize {
        self.state.sessions.len()
    }

    /// Starts the drain if it has not started, waits until every session has ended or
    /// `timeout` has passed, then stops those still running (the reply in progress cut, the
    /// client told `server_shutdown`) and waits for them, a few seconds at most.
    ///
    /// # Cancellation safety
    /// Dropping the future leaves the sessions running; the drain, once started, stays on.
    pub async fn wait(&self, timeout: Duration) -> DrainReport {
        let state = &self.state;
        self.start();
        let running = state.sessions.len();
        let drained = async {
            let deadline = tokio::time::sleep(timeout);
            let mut deadline = std::pin::pin!(deadline);
            let mut progress = tokio::time::interval(Duration::from_secs(10));
            progress.tick().await;
            loop {
                tokio::select! {
                    () = state.sessions.wait() => return true,
                    () = &mut deadline => return false,
                    _ = progress.tick() => info!(running = state.sessions.len(), "draining"),
                }
            }
        };
        let mut stopped = 0;
        if !drained.await {
            stopped = state.sessions.len();
            warn!(
                stopped,
                "drain timeout: stopping the sessions still running"
            );
            state.shutdown.cancel();
            // Each session ends within a few seconds of being stopped (its sends and its
            // closing handshake are bounded); this bounds the drain even so.
            if tokio::time::timeout(STOP_GRACE, state.sessions.wait())
                .await
                .is_err()
            {
                warn!(
                    left = state.sessions.len(),
                    "sessions still ending after being stopped; leaving them"
                );
            }
        }
        info!(running, stopped, "drained");
        DrainReport { running, stopped }
    }
}

/// A [`Service`] on a listener of its own, not yet serving: its own accept loop, with the
/// header deadline and the capped send buffers.
pub struct Server {
    listener: TcpListener,
    service: Service,
}

/// How a drain went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Sessions running when the drain began.
    pub running: usize,
    /// Sessions stopped at the drain timeout.
    pub stopped: usize,
}

impl Server {
    /// Binds the listener (port 0 picks a free one).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::on(listener, config))
    }

    /// Serves on a listener the caller made (a socket handed over by systemd, a port chosen
    /// elsewhere).
    pub fn on(listener: TcpListener, config: ServerConfig) -> Self {
        Self {
            listener,
            service: Service::new(config),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The server's metrics (also at `/metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.service.metrics()
    }

    /// The handle that drains this server's sessions; [`Server::serve`] drains by it too.
    pub fn drain(&self) -> Drain {
        self.service.drain()
    }

    /// Serves until `signal` completes or [`Drain::start`] is called, then drains (see the
    /// module docs) and returns.
    ///
    /// # Errors
    /// The HTTP server failed.
    ///
    /// # Cancellation safety
    /// Dropping the future stops accepting at once and cancels every session.
    pub async fn serve(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> std::io::Result<DrainReport> {
        let drain = self.service.drain();
        let state = self.service.state.clone();
        let _stop_sessions_on_drop = state.shutdown.clone().drop_guard();
        let stop_http = CancellationToken::new();
        let http = serve_http(
            self.listener,
            self.service.router(),
            state.config.header_timeout,
            stop_http.clone(),
        );
        let mut http = std::pin::pin!(http);
        tokio::select! {
            result = &mut http => {
                result?;
                return Ok(DrainReport { running: 0, stopped: 0 });
            }
            () = signal => {}
            () = state.draining.cancelled() => {}
        }
        // The HTTP side keeps answering probes (readiness 503) while sessions drain.
        let report = tokio::select! {
            result = &mut http => {
                result?;
                return Ok(DrainReport { running: 0, stopped: 0 });
            }
            report = drain.wait(state.config.drain_timeout) => report,
        };
        stop_http.cancel();
        http.await?;
        Ok(report)
    }
}

/// Accepts HTTP/1 connections until `stop`, then lets each finish the request it is on and
/// waits for them, [`STOP_GRACE`] at most: a client that never finishes its request or never
/// reads its response does not hold the process. Upgraded connections (sessions) are not
/// waited for: they belong to the session tasks. Each connection must send its request headers within `header_timeout`,
/// so a client that opens connections and never finishes a request (slowloris) cannot hold
/// them; `axum::serve` sets no such timer.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let abandon = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            // One connection failed on its way in: the listener is fine.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue;
            }
            // Out of file descriptors, most likely: wait rather than spin.
            Err(e) => {
                warn!(error = %e, "accepting a connection failed; retrying in 1 s");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Agent audio, `clear` and events go out as written: Nagle's algorithm would hold a
        // small message while the previous one is unacknowledged (a clear behind a frame,
        // until the client's ACK).
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY not set");
        }
        if let Err(e) = socket2::SockRef::from(&tcp).set_send_buffer_size(SEND_BUFFER_BYTES) {
            debug!(error = %e, "SO_SNDBUF not set");
        }
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (stop, abandon) = (stop.clone(), abandon.clone());
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        debug!(error = %e, "http connection ended");
                    }
                    return;
                }
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            tokio::select! {
                _ = connection => {}
                () = abandon.cancelled() => debug!("an http connection still open at shutdown closed"),
            }
        });
    }
    connections.close();
    if tokio::time::timeout(STOP_GRACE, connections.wait())
        .await
        .is_err()
    {
        warn!(
            left = connections.len(),
            "http connections still open after shutdown; closing them"
        );
        abandon.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// Follows a session's turns to report each one's figures (and record them in the metrics)
/// once its reply has ended.
#[derive(Debug, Default)]
struct Turns {
    turn_of: std::collections::HashMap<crate::engine::ResponseId, u64>,
    reported: Option<u64>,
    started: u64,
}

impl Turns {
    /// User turns started so far.
    fn started(&self) -> u64 {
        self.started
    }

    /// Notes `event`; returns the figures of the turns it completed.
    fn on_event(
        &mut self,
        event: &crate::engine::EngineEvent,
        log: &crate::engine::log::EventLog,
        metrics: &Metrics,
    ) -> Vec<crate::report::TurnReport> {
        use crate::engine::EngineEvent;
        match event {
            EngineEvent::UserStarted { turn, .. } => self.started = self.started.max(*turn + 1),
            EngineEvent::Speculating { turn, response, .. }
            | EngineEvent::Responding { turn, response } => {
                self.turn_of.insert(*response, *turn);
            }
            EngineEvent::ResponseEnded {
                response, error, ..
            } => {
                if let Some(error) = error {
                    metrics.provider_error(error);
                }
                if let Some(turn) = self.turn_of.remove(response) {
                    let report = crate::report::Report::from_log(&log.entries());
                    let done: Vec<_> = report
                        .turns
                        .into_iter()
                        .filter(|t| t.index <= turn && self.reported.is_none_or(|r| t.index > r))
                        .collect();
                    for t in &done {
                        metrics.turn(t);
                    }
                    self.reported = Some(self.reported.map_or(turn, |r| r.max(turn)));
                    // Responses of turns already reported cannot report again.
                    self.turn_of.retain(|_, t| *t > turn);
                    return done;
                }
            }
            _ => {}
        }
        Vec::new()
    }
}

/// Whether a WebSocket read failed because the peer sent a message over the size limit (as
/// opposed to going away).
fn too_big(error: &axum::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|e| e.downcast_ref::<tokio_tungstenite::tungstenite::Error>())
        .is_some_and(|e| matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)))
}

/// Records how long after the StartOfTurn that caused it a `clear` was written to a client.
fn clear_written(metrics: &Metrics, log: &crate::engine::log::EventLog) {
    let now = tokio::time::Instant::now();
    let started = log.last_at(|kind| {
        matches!(
            kind,
            crate::engine::log::LogKind::Flux {
                event: crate::flux::TurnEvent::StartOfTurn,
                ..
            }
        )
    });
    if let Some(at) = started {
        metrics.clear_sent(now.saturating_duration_since(at).as_secs_f64());
    }
}

/// A session's recording, when the server records ([`ServerConfig::record_dir`]).
pub(crate) struct SessionRecording {
    recorder: crate::recording::Recorder,
    dir: std::path::PathBuf,
    settings: crate::recording::RecordedSettings,
    user_rate: u32,
}

impl SessionRecording {
    /// A recording for session `id` listening with `options`, when the server records.
    fn start(
        config: &ServerConfig,
        id: &str,
        options: &crate::flux::ListenOptions,
    ) -> Option<Self> {
        let dir = config.record_dir.as_ref()?.join(id);
        Some(Self {
            recorder: crate::recording::Recorder::new(),
            dir,
            settings: crate::recording::RecordedSettings::of(
                &config.session,
                options,
                config.backends.llm.name(),
                config.backends.tts.name(),
            ),
            user_rate: options.sample_rate.unwrap_or(16000),
        })
    }

    fn connector(&self, inner: Arc<dyn Connector>) -> Arc<dyn Connector> {
        self.recorder.connector(inner)
    }

    fn backends(&self, inner: &Backends) -> Backends {
        Backends {
            llm: self.recorder.llm(inner.llm.clone()),
            tts: self.recorder.tts(inner.tts.clone()),
            tools: inner.tools.clone(),
        }
    }

    /// Keeps the caller's audio, in the session's `encoding`.
    fn user_audio(&self, encoding: crate::flux::Encoding, bytes: &[u8]) {
        self.recorder.user_audio_encoded(encoding, bytes);
    }

    /// Writes the recording (off the runtime's threads); a failure is logged, never fatal.
    async fn finish(self, log: &crate::engine::log::EventLog, voice_rate: u32) {
        let entries = log.entries();
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            self.recorder.write(
                &self.dir,
                "serve",
                self.settings,
                self.user_rate,
                voice_rate,
                Some(&entries),
            )
        })
        .await;
        match written {
            Ok(Ok(())) => info!(dir = %dir.display(), "session recorded"),
            Ok(Err(e)) => warn!(error = %e, "the session's recording could not be written"),
            Err(e) => warn!(error = %e, "the session's recording writer stopped"),
        }
    }
}

/// Starts the engine session of a connection: stopped by the server's shutdown or by the
/// returned token.
fn start_engine(
    state: &State,
    flux: crate::flux::FluxEvents,
    backends: Backends,
    sink: Box<dyn crate::engine::AudioSink>,
) -> (
    CancellationToken,
    crate::engine::SessionHandle,
    tokio::sync::mpsc::Receiver<crate::engine::EngineEvent>,
) {
    let stop = state.shutdown.child_token();
    let (handle, events) = crate::engine::start_session(
        state.config.session.clone(),
        flux,
        backends,
        sink,
        stop.clone(),
    );
    (stop, handle, events)
}

/// Releases an admitted session's place when dropped (whether or not the upgrade happened).
struct Admission(Arc<State>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refusal(state: &State, status: StatusCode, why: metrics::Refusal, message: &str) -> Response {
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
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Whether `given` is the token, in time independent of where they differ.
fn token_matches(expected: &str, given: &str) -> bool {
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
    let name = hostname(host);
    if name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    public_url
        .and_then(|url| url.split_once("://"))
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .is_some_and(|public| hostname(public).eq_ignore_ascii_case(name))
}

/// The name of an authority: `[::1]:8080` -> `::1`, `agent.example:443` -> `agent.example`.
fn hostname(authority: &str) -> &str {
    if let Some(bracketed) = authority.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or(bracketed);
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    }
}

/// The 403 for a browser page whose origin may not connect, when it may not.
fn refuse_origin(state: &State, headers: &HeaderMap) -> Option<Response> {
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
struct SessionQuery {
    token: Option<String>,
}

/// Admission before an upgrade: draining, then capacity. Returns the reserved place.
fn admit(state: &Arc<State>) -> Result<Admission, metrics::Refusal> {
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
fn unavailable(state: &State, why: metrics::Refusal) -> Response {
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
fn upgrade_into<F, Fut>(upgrade: WebSocketUpgrade, admission: Admission, serve: F) -> Response
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

async fn session(
    AxumState(state): AxumState<Arc<State>>,
    Query(query): Query<SessionQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if state.draining.is_cancelled() {
        return unavailable(&state, metrics::Refusal::Draining);
    }
    if let Some(expected) = &state.config.token {
        let given = bearer(&headers).or(query.token.as_deref());
        if !given.is_some_and(|g| token_matches(expected.expose(), g)) {
            return refusal(
                &state,
                StatusCode::UNAUTHORIZED,
                metrics::Refusal::Unauthorized,
                "a bearer token is required (Authorization: Bearer TOKEN, or ?token=)",
            );
        }
    }
    if let Some(refused) = refuse_origin(&state, &headers) {
        return refused;
    }
    match admit(&state) {
        Ok(admission) => upgrade_into(upgrade, admission, connection::serve),
        Err(why) => unavailable(&state, why),
    }
}

/// The public URL of one of our paths, in the scheme a carrier uses for it.
fn public(state: &State, path: &str, websocket: bool) -> Option<String> {
    let base = state.config.public_url.as_deref()?.trim_end_matches('/');
    let base = if websocket {
        base.replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    } else {
        base.to_owned()
    };
    Some(format!("{base}{path}"))
}

fn twilio_signature_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
}

/// A carrier's media stream: Twilio's signature when an auth token is configured, else the
/// bearer token (as `?token=`, which carriers can put in a stream URL) when one is. Carriers
/// send no `Origin`; a browser page must pass the same origin policy as on `/session`, or any
/// site could run calls on the operator's provider keys.
async fn telephony_stream(
    AxumState(state): AxumState<Arc<State>>,
    Query(query): Query<SessionQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if state.draining.is_cancelled() {
        return unavailable(&state, metrics::Refusal::Draining);
    }
    if let Some(refused) = refuse_origin(&state, &headers) {
        return refused;
    }
    if let Some(auth) = &state.config.twilio_auth_token {
        let url = public(&state, "/telephony", true).unwrap_or_default();
        if !telephony::signature_valid(auth.expose(), &url, &[], twilio_signature_header(&headers))
        {
            warn!("a media stream without a valid X-Twilio-Signature refused");
            return refusal(
                &state,
                StatusCode::UNAUTHORIZED,
                metrics::Refusal::Unauthorized,
                "a valid X-Twilio-Signature is required",
            );
        }
    } else if let Some(expected) = &state.config.token
        && !query
            .token
            .as_deref()
            .is_some_and(|g| token_matches(expected.expose(), g))
    {
        return refusal(
            &state,
            StatusCode::UNAUTHORIZED,
            metrics::Refusal::Unauthorized,
            "a token is required (?token= in the stream URL)",
        );
    }
    match admit(&state) {
        Ok(admission) => upgrade_into(upgrade, admission, telephony::serve),
        Err(why) => unavailable(&state, why),
    }
}

/// Reads a request's form body whole within [`ServerConfig::body_timeout`] and
/// [`BODY_LIMIT`]: a body sent a byte at a time, or one without end, is answered 408 or 413
/// instead of holding the connection.
async fn form_within_limits(
    state: &State,
    request: axum::extract::Request,
) -> Result<(HeaderMap, Vec<(String, String)>), Response> {
    use axum::extract::FromRequest as _;
    let (parts, body) = request.into_parts();
    let limit = state.config.body_timeout;
    let bytes = match tokio::time::timeout(limit, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {BODY_LIMIT} bytes, or broke off\n"),
            )
                .into_response());
        }
        Err(_) => {
            warn!(limit = ?limit, "a request body that did not arrive in time refused");
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {limit:?}\n"),
            )
                .into_response());
        }
    };
    let headers = parts.headers.clone();
    let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    match axum::Form::<Vec<(String, String)>>::from_request(request, &()).await {
        Ok(axum::Form(params)) => Ok((headers, params)),
        Err(rejection) => Err(rejection.into_response()),
    }
}

/// Twilio's voice webhook: answers TwiML that connects the call's media to `/telephony`.
async fn twilio_voice(
    AxumState(state): AxumState<Arc<State>>,
    request: axum::extract::Request,
) -> Response {
    let (headers, params) = match form_within_limits(&state, request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let (Some(webhook), Some(stream)) = (
        public(&state, "/twilio/voice", false),
        public(&state, "/telephony", true),
    ) else {
        warn!("a Twilio call arrived but no public URL is configured (--public-url)");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server has no public URL configured (--public-url)\n",
        )
            .into_response();
    };
    if let Some(auth) = &state.config.twilio_auth_token
        && !telephony::signature_valid(
            auth.expose(),
            &webhook,
            &params,
            twilio_signature_header(&headers),
        )
    {
        warn!("a Twilio webhook without a valid X-Twilio-Signature refused");
        return refusal(
            &state,
            StatusCode::UNAUTHORIZED,
            metrics::Refusal::Unauthorized,
            "a valid X-Twilio-Signature is required",
        );
    }
    if state.draining.is_cancelled() {
        return refusal(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            metrics::Refusal::Draining,
            "the server is shutting down",
        );
    }
    (
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        telephony::twiml(&stream),
    )
        .into_response()
}

async fn readyz(AxumState(state): AxumState<Arc<State>>) -> Response {
    if state.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if state.admitted.load(Ordering::SeqCst) >= state.config.max_sessions {
        (StatusCode::SERVICE_UNAVAILABLE, "full\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn metrics_text(AxumState(state): AxumState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.config.metrics_token
        && !bearer(&headers).is_some_and(|given| token_matches(expected.expose(), given))
    {
        return (
            StatusCode::UNAUTHORIZED,
            "the metrics token is required (Authorization: Bearer TOKEN)\n",
        )
            .into_response();
    }
    let ready = !state.draining.is_cancelled()
        && state.admitted.load(Ordering::SeqCst) < state.config.max_sessions;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(ready),
    )
        .into_response()
}

mod page {
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
    fn hostnames_drop_the_port_only() {
        assert_eq!(hostname("a.example:443"), "a.example");
        assert_eq!(hostname("a.example"), "a.example");
        assert_eq!(hostname("[::1]:80"), "::1");
        assert_eq!(hostname("[::1]"), "::1");
        assert_eq!(hostname("a.example:x"), "a.example:x");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secret", "secre"));
        assert!(!token_matches("secret", "secreT"));
    }
}
