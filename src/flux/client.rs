//! The Flux `/v2/listen` client: one handle, one supervisor task, a reader and a writer per
//! connection.
//!
//! ```text
//! FluxHandle / FluxSender --commands--> supervisor --frames--> writer task --> Connection.sink
//!                FluxEvents <--events-- supervisor <--parsed-- reader task <-- Connection.stream
//! ```
//!
//! The supervisor owns everything that must survive a reconnect: the audio timeline, the audio of
//! the open turn (replayed to a new connection so no words are lost), the configuration (the
//! latest one goes into the new URL), and the turn state the consumer has seen, so that a drop in
//! the middle of a turn never shows up as a premature `EndOfTurn` or a second `StartOfTurn`.
//!
//! It also keeps Flux's audio-driven clock running: WebSocket pings when no audio flows (Flux has
//! no `KeepAlive` message) and silence when the source stalls mid-turn. A server that stops
//! answering while audio flows is treated like a dropped socket.
//!
//! Continuity features need a sample-based raw encoding (linear16, linear32, mulaw, alaw), where
//! bytes map to audio time. With Opus or containerized audio, frames pass through unchanged and
//! reconnects start a fresh timeline without replay.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::continuity::{AudioLedger, Chunker, ReplayBuffer, TurnTracker};
use super::messages::{
    ClientMessage, Configure, ConfigureFailure, ConfigureSuccess, FatalError, Parsed,
    ServerMessage, TurnEvent, TurnInfo, Warning,
};
use super::options::{ListenOptions, OptionsError};
use super::transport::{ConnectError, ConnectRequest, Connection, Connector, WireFrame};
use crate::net::ApiKey;

/// Frames the supervisor holds for a writer that is behind before it stops taking audio
/// from the caller (about 5 s of 80 ms frames).
const OUTBOX_LIMIT: usize = 64;

/// Where Deepgram serves Flux.
pub const DEEPGRAM_BASE_URL: &str = "wss://api.deepgram.com";
/// The environment variable the API key is read from.
pub const API_KEY_ENV: &str = "DEEPGRAM_API_KEY";

/// Errors of the Flux client.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FluxError {
    /// The options would be refused by the server; nothing was sent.
    #[error(transparent)]
    InvalidOptions(#[from] OptionsError),
    /// Opening the connection failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The server accepted the upgrade but sent no `Connected` in time.
    #[error("no Connected message within {0:?} of the upgrade")]
    ConnectedTimeout(Duration),
    /// The server sent `Error` and closed the connection.
    #[error("server error {}: {}", .0.code, .0.description)]
    Server(FatalError),
    /// The connection dropped and every reconnect attempt failed.
    #[error("connection lost ({reason}); {attempts} reconnect attempts failed, last: {last_error}")]
    ReconnectFailed {
        /// Why the connection was lost.
        reason: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        last_error: String,
    },
    /// The client is closed.
    #[error("the flux client is closed")]
    Closed,
    /// The API key would travel unencrypted to another machine.
    #[error(
        "refusing to send the api key over unencrypted {url} (not this machine): use wss://, or allow it explicitly (FluxConfig::allow_insecure)"
    )]
    InsecureTransport {
        /// The base URL refused.
        url: String,
    },
    /// The base URL cannot be used as given.
    #[error("flux url {url:?} is not usable: {reason}")]
    InvalidBaseUrl {
        /// The base URL.
        url: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// How the client reconnects after a dropped connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Attempts before giving up (0 disables reconnecting).
    pub max_attempts: u32,
    /// Delay before the first attempt; doubles per attempt.
    pub initial_backoff: Duration,
    /// Longest delay between attempts.
    pub max_backoff: Duration,
    /// A connection that lasted this long was healthy: the next drop starts counting attempts
    /// afresh. Shorter ones (a server that accepts and closes at once) count as failed
    /// attempts, so backoff keeps growing and the client gives up.
    pub stable_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            stable_after: Duration::from_secs(10),
        }
    }
}

impl ReconnectPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
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
    /// Most audio of an open turn kept for replay after a reconnect.
    pub replay_limit: Duration,
    /// Bound for each step of [`FluxHandle::close`].
    pub close_timeout: Duration,
    /// Reconnect behaviour.
    pub reconnect: ReconnectPolicy,
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

    fn bytes_per_second(&self) -> Option<f64> {
        let encoding = self.options.encoding?;
        let bytes = encoding.bytes_per_sample()?;
        Some(f64::from(self.options.sample_rate?) * bytes as f64)
    }
}

/// Counters a production deployment wants to watch.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ClientStats {
    /// Server messages that could not be parsed (logged and skipped).
    pub malformed_messages: AtomicU64,
    /// Server messages kept after repairing a value (logged).
    pub repaired_messages: AtomicU64,
    /// WebSocket pings sent.
    pub pings_sent: AtomicU64,
    /// Silence frames injected while the source stalled mid-turn.
    pub silence_frames: AtomicU64,
    /// Successful reconnects.
    pub reconnects: AtomicU64,
    /// Audio frames sent (including replays and silence).
    pub audio_frames_sent: AtomicU64,
}

/// A turn event with the timing the engine needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnUpdate {
    /// The message, with times in session audio time (continuous across reconnects) and
    /// turn indices counted across reconnects.
    pub info: TurnInfo,
    /// When we sent the audio up to `info.audio_window_end`.
    pub audio_sent_at: Option<Instant>,
    /// When we sent the audio up to each word's `end` (same order as `info.words`).
    pub word_end_sent_at: Vec<Option<Instant>>,
}

impl TurnUpdate {
    /// When we sent the end of the last word, falling back to the window end: the start of the
    /// user's silence as far as voice-to-voice latency is concerned.
    pub fn speech_end_sent_at(&self) -> Option<Instant> {
        self.word_end_sent_at
            .last()
            .copied()
            .flatten()
            .or(self.audio_sent_at)
    }
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FluxEventKind {
    /// A connection is ready (`attempt` 0 is the first connection).
    Connected {
        /// The server's request id.
        request_id: String,
        /// 0 for the first connection, n for the n-th reconnect attempt that succeeded.
        attempt: u32,
    },
    /// The connection was lost; the client is reconnecting.
    Reconnecting {
        /// Why.
        reason: String,
    },
    /// A turn event.
    Turn(TurnUpdate),
    /// A `Configure` took effect.
    ConfigureApplied(ConfigureSuccess),
    /// A `Configure` was refused; the previous configuration stays.
    ConfigureRejected(ConfigureFailure),
    /// A non-fatal server warning.
    Warning(Warning),
    /// A message type this crate does not know, kept verbatim.
    Unknown(serde_json::Value),
}

/// One event, stamped with the instant it crossed our edge.
#[derive(Debug, Clone, PartialEq)]
pub struct FluxEvent {
    /// When the message was received (tokio's monotonic clock).
    pub received_at: Instant,
    /// What happened.
    pub kind: FluxEventKind,
}

/// The stream of events. Ends after [`FluxHandle::close`], or with one error item when the
/// session fails (server `Error`, reconnects exhausted).
pub struct FluxEvents {
    rx: mpsc::Receiver<Result<FluxEvent, FluxError>>,
}

impl FluxEvents {
    /// The next event, `None` once the session is over.
    ///
    /// # Cancellation safety
    /// Cancel safe: no event is lost if the future is dropped.
    pub async fn recv(&mut self) -> Option<Result<FluxEvent, FluxError>> {
        self.rx.recv().await
    }
}

impl Stream for FluxEvents {
    type Item = Result<FluxEvent, FluxError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

enum Command {
    Audio(Bytes),
    Configure(Configure, oneshot::Sender<Result<(), OptionsError>>),
    ForceEndTurn,
}

/// A cheap, cloneable way to send audio and control messages from several tasks.
#[derive(Clone)]
pub struct FluxSender {
    commands: mpsc::Sender<Command>,
}

impl FluxSender {
    /// Queues audio in the declared format; it is re-cut into frames of `FluxConfig::frame`.
    ///
    /// # Errors
    /// [`FluxError::Closed`] once the client is closed.
    ///
    /// # Cancellation safety
    /// If cancelled while waiting for queue space, the audio was not queued.
    pub async fn send_audio(&self, audio: impl Into<Bytes>) -> Result<(), FluxError> {
        self.commands
            .send(Command::Audio(audio.into()))
            .await
            .map_err(|_| FluxError::Closed)
    }

    /// Changes thresholds, key terms, language hints or numerals mid-stream. Validated against
    /// the configuration the server will have once earlier updates land; at most one
    /// `Configure` is in flight and later ones coalesce. The outcome arrives as
    /// [`FluxEventKind::ConfigureApplied`] or [`FluxEventKind::ConfigureRejected`].
    ///
    /// # Errors
    /// [`FluxError::InvalidOptions`] when the update would be refused (nothing is sent);
    /// [`FluxError::Closed`] once the client is closed.
    pub async fn configure(&self, update: Configure) -> Result<(), FluxError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Configure(update, tx))
            .await
            .map_err(|_| FluxError::Closed)?;
        rx.await.map_err(|_| FluxError::Closed)?.map_err(Into::into)
    }

    /// Ends the current turn now (`EndOfTurn` with trigger `manual`).
    ///
    /// # Errors
    /// [`FluxError::Closed`] once the client is closed.
    pub async fn force_end_turn(&self) -> Result<(), FluxError> {
        self.commands
            .send(Command::ForceEndTurn)
            .await
            .map_err(|_| FluxError::Closed)
    }
}

/// Owns the client's tasks. Dropping it cancels them; [`FluxHandle::close`] ends gracefully.
pub struct FluxHandle {
    sender: FluxSender,
    /// Close requests travel apart from audio so a full audio queue cannot delay them.
    close: mpsc::Sender<oneshot::Sender<()>>,
    cancel: CancellationToken,
    supervisor: Option<JoinHandle<()>>,
    request_id: String,
    stats: Arc<ClientStats>,
}

impl FluxHandle {
    /// A sender for audio and control messages.
    pub fn sender(&self) -> FluxSender {
        self.sender.clone()
    }

    /// See [`FluxSender::send_audio`].
    ///
    /// # Errors
    /// [`FluxError::Closed`] once the client is closed.
    pub async fn send_audio(&self, audio: impl Into<Bytes>) -> Result<(), FluxError> {
        self.sender.send_audio(audio).await
    }

    /// See [`FluxSender::configure`].
    ///
    /// # Errors
    /// As [`FluxSender::configure`].
    pub async fn configure(&self, update: Configure) -> Result<(), FluxError> {
        self.sender.configure(update).await
    }

    /// See [`FluxSender::force_end_turn`].
    ///
    /// # Errors
    /// [`FluxError::Closed`] once the client is closed.
    pub async fn force_end_turn(&self) -> Result<(), FluxError> {
        self.sender.force_end_turn().await
    }

    /// The request id of the first connection.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<ClientStats> {
        self.stats.clone()
    }

    /// Ends the session: sends the last partial frame, then `ForceEndTurn` and waits for the
    /// `EndOfTurn` (or the server's "no active turn" warning), so the transcript of an open turn
    /// is not lost, then `CloseStream` and waits for the server to close; each wait is bounded
    /// by `close_timeout`. Self-hosted deployments without `ForceEndTurn` answer with an error,
    /// which ends the close early. Then stops and
    /// awaits every task. The event stream ends after the last event.
    ///
    /// # Errors
    /// Never fails today; returns `Result` so transports that can fail on close may report it.
    pub async fn close(mut self) -> Result<(), FluxError> {
        let (tx, rx) = oneshot::channel();
        if self.close.send(tx).await.is_ok() {
            let _ = rx.await;
        }
        self.cancel.cancel();
        if let Some(task) = self.supervisor.take() {
            let _ = task.await;
        }
        Ok(())
    }
}

impl Drop for FluxHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Connects to Flux through `connector` and waits for `Connected`.
///
/// # Errors
/// [`FluxError::InvalidOptions`] before any I/O when the options are invalid;
/// [`FluxError::Connect`] for handshake rejections (with status, `dg-error` and request id) and
/// network failures; [`FluxError::ConnectedTimeout`] when the server never says `Connected`.
pub async fn connect(
    config: FluxConfig,
    connector: Arc<dyn Connector>,
) -> Result<(FluxHandle, FluxEvents), FluxError> {
    config.options.validate()?;
    config.check_base_url()?;
    let cancel = CancellationToken::new();
    let stats = Arc::new(ClientStats::default());
    let (link, request_id) = open_link(
        config.clone(),
        connector.clone(),
        config.options.clone(),
        cancel.clone(),
    )
    .await?;
    let span = info_span!("flux", request_id = %request_id);
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let (close_tx, close_rx) = mpsc::channel(1);
    let (events_tx, events_rx) = mpsc::channel(1024);
    let now = Instant::now();
    let frame_bytes = config
        .bytes_per_second()
        .map(|bps| (bps * config.frame.as_secs_f64()).round() as usize)
        .unwrap_or(0);
    let _ = events_tx
        .send(Ok(FluxEvent {
            received_at: now,
            kind: FluxEventKind::Connected {
                request_id: request_id.clone(),
                attempt: 0,
            },
        }))
        .await;
    let supervisor = Supervisor {
        bytes_per_second: config.bytes_per_second(),
        chunker: Chunker::new(frame_bytes),
        frame_bytes,
        ledger: AudioLedger::new(config.replay_limit * 2),
        replay: ReplayBuffer::new(config.replay_limit, Duration::from_secs(2)),
        tracker: TurnTracker::default(),
        audio_time: 0.0,
        desired: config.options.clone(),
        acked: config.options.clone(),
        inflight: None,
        pending: None,
        config,
        connector,
        commands: commands_rx,
        close: close_rx,
        outbox: VecDeque::new(),
        outbox_blocked_since: None,
        events: events_tx,
        cancel: cancel.clone(),
        link: Some(link),
        connecting: None,
        connected_at: now,
        failed_in_a_row: 0,
        last_source_audio: now,
        last_audio_sent: now,
        last_sent: now,
        last_inbound: now,
        audio_since_inbound: 0.0,
        phase: Phase::Running,
        stats: stats.clone(),
    };
    let supervisor = tokio::spawn(supervisor.run().instrument(span));
    Ok((
        FluxHandle {
            sender: FluxSender {
                commands: commands_tx,
            },
            close: close_tx,
            cancel,
            supervisor: Some(supervisor),
            request_id,
            stats,
        },
        FluxEvents { rx: events_rx },
    ))
}

enum Inbound {
    /// A message, when it arrived, and whether parsing had to repair it.
    Message(Box<ServerMessage>, Instant, bool),
    /// A text frame that could not be parsed (already logged by the reader).
    Malformed(Instant),
    Closed(String),
}

struct Link {
    to_writer: mpsc::Sender<WireFrame>,
    inbound: mpsc::Receiver<Inbound>,
    token: CancellationToken,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Link {
    async fn shutdown(self) {
        self.token.cancel();
        let _ = self.reader.await;
        let _ = self.writer.await;
    }
}

/// Opens one connection and starts its reader and writer under a child of `parent`. Takes
/// its inputs by value so a reconnect can run as a task of its own.
async fn open_link(
    config: FluxConfig,
    connector: Arc<dyn Connector>,
    options: ListenOptions,
    parent: CancellationToken,
) -> Result<(Link, String), FluxError> {
    let request = ConnectRequest {
        url: config.url_for(&options),
        api_key: config.api_key.clone(),
    };
    let mut connection = tokio::time::timeout(config.connect_timeout, connector.connect(&request))
        .await
        .map_err(|_| {
            ConnectError::Io(format!("no upgrade within {:?}", config.connect_timeout))
        })??;
    let request_id = wait_connected(&mut connection, config.connected_timeout).await?;
    let token = parent.child_token();
    let (to_writer, writer_rx) = mpsc::channel(32);
    let (inbound_tx, inbound) = mpsc::channel(256);
    let Connection { sink, stream, .. } = connection;
    let reader = tokio::spawn(read_loop(stream, inbound_tx, token.clone()).in_current_span());
    let writer = tokio::spawn(write_loop(sink, writer_rx, token.clone()).in_current_span());
    Ok((
        Link {
            to_writer,
            inbound,
            token,
            reader,
            writer,
        },
        request_id,
    ))
}

async fn wait_connected(connection: &mut Connection, limit: Duration) -> Result<String, FluxError> {
    let wait = async {
        while let Some(frame) = connection.stream.next().await {
            match frame {
                Ok(WireFrame::Text(text)) => match ServerMessage::parse(&text) {
                    Ok(ServerMessage::Connected { request_id, .. }) => return Ok(request_id),
                    Ok(ServerMessage::Error(e)) => return Err(FluxError::Server(e)),
                    Ok(other) => {
                        debug!(message_type = other.type_name(), "message before Connected")
                    }
                    Err(e) => warn!(error = %e, "malformed message before Connected"),
                },
                Ok(WireFrame::Close(reason)) => {
                    return Err(ConnectError::Io(format!(
                        "server closed before Connected: {reason:?}"
                    ))
                    .into());
                }
                Ok(_) => {}
                Err(e) => return Err(ConnectError::Io(e.0).into()),
            }
        }
        Err(ConnectError::Io("server closed before Connected".into()).into())
    };
    tokio::time::timeout(limit, wait)
        .await
        .map_err(|_| FluxError::ConnectedTimeout(limit))?
}

async fn read_loop(
    mut stream: super::transport::FrameStream,
    inbound: mpsc::Sender<Inbound>,
    token: CancellationToken,
) {
    let closed = loop {
        let frame = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            frame = stream.next() => frame,
        };
        let received_at = Instant::now();
        match frame {
            Some(Ok(WireFrame::Text(text))) => match ServerMessage::parse_repairing(&text) {
                Ok(Parsed { message, repairs }) => {
                    if !repairs.is_empty() {
                        warn!(
                            message_type = message.type_name(),
                            repairs = %repairs.join("; "),
                            "server message repaired"
                        );
                    }
                    if inbound
                        .send(Inbound::Message(
                            Box::new(message),
                            received_at,
                            !repairs.is_empty(),
                        ))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(error) => {
                    warn!(%error, "skipping malformed server message");
                    if inbound.send(Inbound::Malformed(received_at)).await.is_err() {
                        return;
                    }
                }
            },
            Some(Ok(WireFrame::Binary(b))) => {
                warn!(bytes = b.len(), "unexpected binary frame from server");
            }
            Some(Ok(WireFrame::Ping(_) | WireFrame::Pong(_))) => {}
            Some(Ok(WireFrame::Close(reason))) => {
                break match reason {
                    Some((code, text)) => format!("server closed the connection ({code} {text})"),
                    None => "server closed the connection".to_owned(),
                };
            }
            Some(Err(e)) => break format!("connection failed: {}", e.0),
            None => break "connection lost".to_owned(),
        }
    };
    let _ = inbound.send(Inbound::Closed(closed)).await;
}

async fn write_loop(
    mut sink: super::transport::FrameSink,
    mut frames: mpsc::Receiver<WireFrame>,
    token: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            biased;
            _ = token.cancelled() => break,
            frame = frames.recv() => frame,
        };
        let Some(frame) = frame else { break };
        if let Err(e) = sink.send(frame).await {
            debug!(error = %e, "writer stopped");
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(200), sink.close()).await;
}

enum Phase {
    Running,
    /// `attempt` counts failed and short-lived connections in a row; the attempt runs as a
    /// task (`Supervisor::connecting`) so audio, close and drop are served meanwhile.
    Reconnecting {
        attempt: u32,
        retry_at: Instant,
        reason: String,
    },
    ClosingAwaitEnd {
        deadline: Instant,
        reply: Option<oneshot::Sender<()>>,
    },
    ClosingAwaitServer {
        deadline: Instant,
        reply: Option<oneshot::Sender<()>>,
    },
}

struct Supervisor {
    config: FluxConfig,
    connector: Arc<dyn Connector>,
    commands: mpsc::Receiver<Command>,
    close: mpsc::Receiver<oneshot::Sender<()>>,
    /// Frames waiting for room in the writer's queue.
    outbox: VecDeque<WireFrame>,
    /// Since when the writer's queue has been full.
    outbox_blocked_since: Option<Instant>,
    events: mpsc::Sender<Result<FluxEvent, FluxError>>,
    cancel: CancellationToken,
    link: Option<Link>,
    /// A reconnect attempt in flight.
    connecting: Option<Connecting>,
    /// When the current connection was opened.
    connected_at: Instant,
    /// Reconnect attempts that failed, or connections that died before `stable_after`.
    failed_in_a_row: u32,
    bytes_per_second: Option<f64>,
    frame_bytes: usize,
    chunker: Chunker,
    ledger: AudioLedger,
    replay: ReplayBuffer,
    tracker: TurnTracker,
    /// Session audio time sent so far, in seconds, continuous across connections.
    audio_time: f64,
    /// The configuration once every requested update lands (used for reconnect URLs).
    desired: ListenOptions,
    /// The configuration the server confirmed.
    acked: ListenOptions,
    inflight: Option<Configure>,
    pending: Option<Configure>,
    last_source_audio: Instant,
    last_audio_sent: Instant,
    last_sent: Instant,
    last_inbound: Instant,
    audio_since_inbound: f64,
    phase: Phase,
    stats: Arc<ClientStats>,
}

struct Connecting {
    token: CancellationToken,
    task: JoinHandle<Result<(Link, String), FluxError>>,
}

impl Connecting {
    async fn abandon(self) {
        self.token.cancel();
        if let Ok(Ok((link, _))) = self.task.await {
            link.shutdown().await;
        }
    }
}

async fn connect_result(connecting: &mut Option<Connecting>) -> Result<(Link, String), FluxError> {
    match connecting {
        Some(c) => match (&mut c.task).await {
            Ok(result) => result,
            Err(e) => Err(ConnectError::Io(format!("connect task failed: {e}")).into()),
        },
        None => std::future::pending().await,
    }
}

/// What the supervisor loop should do next.
enum Flow {
    Continue,
    Stop,
}

/// Room for one frame in the writer's queue (never resolves without a writer).
async fn writer_room(
    writer: Option<mpsc::Sender<WireFrame>>,
) -> Result<mpsc::OwnedPermit<WireFrame>, mpsc::error::SendError<()>> {
    match writer {
        Some(writer) => writer.reserve_owned().await,
        None => std::future::pending().await,
    }
}

async fn next_inbound(link: &mut Option<Link>) -> Option<Inbound> {
    match link {
        Some(l) => l.inbound.recv().await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.frame.min(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // Audio waits in the caller's queue (backpressure) while the writer is behind.
            let accepting = matches!(self.phase, Phase::Running | Phase::Reconnecting { .. })
                && self.outbox.len() < OUTBOX_LIMIT;
            let backlog = (!self.outbox.is_empty())
                .then(|| self.link.as_ref().map(|l| l.to_writer.clone()))
                .flatten();
            let flow = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => Flow::Stop,
                inbound = next_inbound(&mut self.link) => match inbound {
                    Some(inbound) => self.on_inbound(inbound).await,
                    None => self.on_inbound(Inbound::Closed("connection tasks ended".into())).await,
                },
                reply = self.close.recv() => match reply {
                    Some(reply) => self.begin_close(reply).await,
                    None => Flow::Stop,
                },
                room = writer_room(backlog) => {
                    if let (Ok(permit), Some(frame)) = (room, self.outbox.pop_front()) {
                        permit.send(frame);
                        self.last_sent = Instant::now();
                        self.outbox_blocked_since = None;
                        self.drain_outbox();
                    }
                    Flow::Continue
                }
                result = connect_result(&mut self.connecting) => {
                    self.connecting = None;
                    self.on_reconnect_result(result).await
                }
                command = self.commands.recv(), if accepting => match command {
                    Some(command) => self.on_command(command).await,
                    None => Flow::Stop,
                },
                _ = tick.tick() => self.on_tick().await,
            };
            if let Flow::Stop = flow {
                break;
            }
        }
        if let Some(connecting) = self.connecting.take() {
            connecting.abandon().await;
        }
        if let Some(link) = self.link.take() {
            link.shutdown().await;
        }
        if let Phase::ClosingAwaitEnd { reply, .. } | Phase::ClosingAwaitServer { reply, .. } =
            &mut self.phase
            && let Some(reply) = reply.take()
        {
            let _ = reply.send(());
        }
    }

    async fn emit(&self, received_at: Instant, kind: FluxEventKind) {
        let _ = self.events.send(Ok(FluxEvent { received_at, kind })).await;
    }

    /// Queues a frame for the writer without waiting: a server that stops reading must not
    /// stall the supervisor. Frames wait in the outbox while the writer is behind; the tick
    /// treats a writer stuck for `writer_stall_timeout` as a lost connection.
    async fn write(&mut self, frame: WireFrame) {
        if self.link.is_none() {
            return;
        }
        self.outbox.push_back(frame);
        self.drain_outbox();
    }

    fn drain_outbox(&mut self) {
        let Some(link) = &self.link else {
            self.outbox.clear();
            return;
        };
        while let Some(frame) = self.outbox.pop_front() {
            match link.to_writer.try_send(frame) {
                Ok(()) => {
                    self.last_sent = Instant::now();
                    self.outbox_blocked_since = None;
                }
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    self.outbox.push_front(frame);
                    self.outbox_blocked_since.get_or_insert_with(Instant::now);
                    return;
                }
                // The writer ended; the reader reports why.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.outbox.clear();
                    return;
                }
            }
        }
    }

    async fn on_command(&mut self, command: Command) -> Flow {
        match command {
            Command::Audio(audio) => {
                let now = Instant::now();
                self.last_source_audio = now;
                for frame in self.chunker.push(&audio) {
                    self.send_audio_frame(frame, now).await;
                }
            }
            Command::Configure(update, reply) => {
                let result = self.desired.apply(&update);
                match result {
                    Ok(next) => {
                        self.desired = next;
                        match &mut self.pending {
                            Some(p) => p.merge(update),
                            None => self.pending = Some(update),
                        }
                        let _ = reply.send(Ok(()));
                        self.send_pending_configure().await;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::ForceEndTurn => {
                if matches!(self.phase, Phase::Running) {
                    self.write(WireFrame::Text(ClientMessage::ForceEndTurn.to_json()))
                        .await;
                }
            }
        }
        Flow::Continue
    }

    async fn send_audio_frame(&mut self, frame: Bytes, now: Instant) {
        let start = self.audio_time;
        if let Some(bps) = self.bytes_per_second {
            let end = start + frame.len() as f64 / bps;
            self.audio_time = end;
            self.audio_since_inbound += end - start;
            self.ledger.record(end, now);
            self.replay
                .push(start, end, frame.clone(), self.tracker.turn_open());
        }
        self.last_audio_sent = now;
        if matches!(self.phase, Phase::Running) {
            self.stats.audio_frames_sent.fetch_add(1, Ordering::Relaxed);
            self.write(WireFrame::Binary(frame)).await;
        }
    }

    async fn send_pending_configure(&mut self) {
        if self.inflight.is_some() || !matches!(self.phase, Phase::Running) {
            return;
        }
        if let Some(update) = self.pending.take().filter(|u| !u.is_empty()) {
            self.write(WireFrame::Text(
                ClientMessage::Configure(update.clone()).to_json(),
            ))
            .await;
            self.inflight = Some(update);
        }
    }

    async fn begin_close(&mut self, reply: oneshot::Sender<()>) -> Flow {
        if !matches!(self.phase, Phase::Running) {
            let _ = reply.send(());
            return Flow::Stop;
        }
        // Audio the caller queued before closing goes out first.
        while let Ok(command) = self.commands.try_recv() {
            self.on_command(command).await;
        }
        if let Some(rest) = self.chunker.flush() {
            self.send_audio_frame(rest, Instant::now()).await;
        }
        // ForceEndTurn goes out even when we think no turn is open: the server may not have
        // reported a turn for the audio just sent. It answers with EndOfTurn or a Warning.
        self.write(WireFrame::Text(ClientMessage::ForceEndTurn.to_json()))
            .await;
        self.phase = Phase::ClosingAwaitEnd {
            deadline: Instant::now() + self.config.close_timeout,
            reply: Some(reply),
        };
        Flow::Continue
    }

    async fn after_end_of_turn_while_closing(&mut self) {
        if let Phase::ClosingAwaitEnd { reply, .. } = &mut self.phase {
            let reply = reply.take();
            self.write(WireFrame::Text(ClientMessage::CloseStream.to_json()))
                .await;
            self.phase = Phase::ClosingAwaitServer {
                deadline: Instant::now() + self.config.close_timeout,
                reply,
            };
        }
    }

    async fn on_inbound(&mut self, inbound: Inbound) -> Flow {
        let (message, received_at, repaired) = match inbound {
            Inbound::Message(m, at, repaired) => {
                if repaired && !matches!(*m, ServerMessage::TurnInfo(_)) {
                    self.stats.repaired_messages.fetch_add(1, Ordering::Relaxed);
                }
                (*m, at, repaired)
            }
            Inbound::Malformed(at) => {
                // The server is alive even if this message was garbage.
                self.last_inbound = at;
                self.stats
                    .malformed_messages
                    .fetch_add(1, Ordering::Relaxed);
                return Flow::Continue;
            }
            Inbound::Closed(reason) => {
                return match self.phase {
                    Phase::ClosingAwaitEnd { .. } | Phase::ClosingAwaitServer { .. } => Flow::Stop,
                    _ => self.connection_lost(reason).await,
                };
            }
        };
        self.last_inbound = received_at;
        self.audio_since_inbound = 0.0;
        match message {
            ServerMessage::TurnInfo(info) => {
                let sent = self.bytes_per_second.map(|_| self.audio_time);
                let accepted = self.tracker.accept(info, sent);
                for anomaly in &accepted.anomalies {
                    warn!(%anomaly, "flux turn event repaired");
                }
                if repaired || !accepted.anomalies.is_empty() {
                    self.stats.repaired_messages.fetch_add(1, Ordering::Relaxed);
                }
                let Some(info) = accepted.info else {
                    return Flow::Continue;
                };
                if info.event == TurnEvent::EndOfTurn {
                    self.replay.discard_until(info.audio_window_end);
                }
                let update = TurnUpdate {
                    audio_sent_at: self.ledger.sent_at(info.audio_window_end),
                    word_end_sent_at: info
                        .words
                        .iter()
                        .map(|w| w.end.and_then(|e| self.ledger.sent_at(e)))
                        .collect(),
                    info,
                };
                let ended = update.info.event == TurnEvent::EndOfTurn;
                self.emit(received_at, FluxEventKind::Turn(update)).await;
                if ended {
                    self.after_end_of_turn_while_closing().await;
                }
            }
            ServerMessage::ConfigureSuccess(success) => {
                if let Some(update) = self.inflight.take() {
                    match self.acked.apply(&update) {
                        Ok(next) => self.acked = next,
                        Err(e) => {
                            warn!(error = %e, "server accepted a configure we consider invalid")
                        }
                    }
                }
                self.emit(received_at, FluxEventKind::ConfigureApplied(success))
                    .await;
                self.send_pending_configure().await;
            }
            ServerMessage::ConfigureFailure(failure) => {
                warn!(code = ?failure.code, description = ?failure.description, "configure rejected");
                self.inflight = None;
                self.desired = self.acked.clone();
                if let Some(pending) = &self.pending {
                    match self.acked.apply(pending) {
                        Ok(next) => self.desired = next,
                        Err(_) => self.pending = None,
                    }
                }
                self.emit(received_at, FluxEventKind::ConfigureRejected(failure))
                    .await;
                self.send_pending_configure().await;
            }
            ServerMessage::Warning(w)
                if w.code == "FORCE_END_TURN_NO_ACTIVE_TURN"
                    && matches!(self.phase, Phase::ClosingAwaitEnd { .. }) =>
            {
                self.after_end_of_turn_while_closing().await;
            }
            ServerMessage::Warning(w) => {
                warn!(code = %w.code, description = %w.description, "flux warning");
                self.emit(received_at, FluxEventKind::Warning(w)).await;
            }
            ServerMessage::Error(e)
                if !matches!(self.phase, Phase::Running | Phase::Reconnecting { .. }) =>
            {
                debug!(code = %e.code, "server error while closing");
                return Flow::Stop;
            }
            ServerMessage::Error(e) => {
                warn!(code = %e.code, description = %e.description, "flux fatal error");
                let _ = self.events.send(Err(FluxError::Server(e))).await;
                return Flow::Stop;
            }
            ServerMessage::Connected { .. } => {}
            ServerMessage::Unknown(value) => {
                debug!(message_type = ?value.get("type"), "unknown server message");
                self.emit(received_at, FluxEventKind::Unknown(value)).await;
            }
        }
        Flow::Continue
    }

    async fn connection_lost(&mut self, reason: String) -> Flow {
        warn!(%reason, "flux connection lost");
        if let Some(link) = self.link.take() {
            link.shutdown().await;
        }
        // The replay buffer re-sends the audio that matters on the next connection.
        self.outbox.clear();
        self.outbox_blocked_since = None;
        let policy = &self.config.reconnect;
        if Instant::now().duration_since(self.connected_at) >= policy.stable_after {
            self.failed_in_a_row = 0;
        } else if self.failed_in_a_row > 0 {
            // The last reconnect "succeeded" but did not last: it counts as a failure.
            info!(
                attempts = self.failed_in_a_row,
                "connection died soon after reconnecting"
            );
        }
        let attempt = self.failed_in_a_row + 1;
        if attempt > policy.max_attempts {
            let last_error = if policy.max_attempts == 0 {
                "reconnecting is disabled".to_owned()
            } else {
                format!(
                    "each new connection was lost within {:?}",
                    policy.stable_after
                )
            };
            return self.give_up(reason, self.failed_in_a_row, last_error).await;
        }
        self.emit(
            Instant::now(),
            FluxEventKind::Reconnecting {
                reason: reason.clone(),
            },
        )
        .await;
        self.phase = Phase::Reconnecting {
            attempt,
            retry_at: Instant::now() + policy.backoff(attempt),
            reason,
        };
        Flow::Continue
    }

    async fn give_up(&mut self, reason: String, attempts: u32, last_error: String) -> Flow {
        let error = FluxError::ReconnectFailed {
            reason,
            attempts,
            last_error,
        };
        warn!(%error, "flux session failed");
        let _ = self.events.send(Err(error)).await;
        Flow::Stop
    }

    fn start_reconnect(&mut self) {
        // The new URL carries every update requested so far, so nothing needs re-sending.
        let token = self.cancel.child_token();
        let attempt = open_link(
            self.config.clone(),
            self.connector.clone(),
            self.desired.clone(),
            token.clone(),
        );
        let cancelled = token.clone();
        let task = tokio::spawn(
            async move {
                tokio::select! {
                    biased;
                    _ = cancelled.cancelled() => Err(FluxError::Closed),
                    result = attempt => result,
                }
            }
            .in_current_span(),
        );
        self.connecting = Some(Connecting { token, task });
    }

    async fn on_reconnect_result(&mut self, result: Result<(Link, String), FluxError>) -> Flow {
        let Phase::Reconnecting {
            attempt, reason, ..
        } = &mut self.phase
        else {
            if let Ok((link, _)) = result {
                link.shutdown().await;
            }
            return Flow::Continue;
        };
        let (attempt, reason) = (*attempt, std::mem::take(reason));
        match result {
            Ok((link, request_id)) => {
                info!(%request_id, attempt, replay_seconds = self.replay.duration(), "flux reconnected");
                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                self.link = Some(link);
                self.failed_in_a_row = attempt;
                self.acked = self.desired.clone();
                self.inflight = None;
                self.pending = None;
                self.tracker.new_connection(self.replay.start());
                let now = Instant::now();
                self.connected_at = now;
                self.last_inbound = now;
                self.audio_since_inbound = 0.0;
                self.phase = Phase::Running;
                let frames: Vec<Bytes> = self.replay.frames().cloned().collect();
                self.emit(
                    now,
                    FluxEventKind::Connected {
                        request_id,
                        attempt,
                    },
                )
                .await;
                for frame in frames {
                    self.stats.audio_frames_sent.fetch_add(1, Ordering::Relaxed);
                    self.write(WireFrame::Binary(frame)).await;
                }
                Flow::Continue
            }
            Err(error) => {
                let retryable = match &error {
                    FluxError::Connect(e) => e.is_retryable(),
                    FluxError::ConnectedTimeout(_) => true,
                    _ => false,
                };
                warn!(%error, attempt, "flux reconnect failed");
                self.failed_in_a_row = attempt;
                if !retryable || attempt >= self.config.reconnect.max_attempts {
                    return self.give_up(reason, attempt, error.to_string()).await;
                }
                self.phase = Phase::Reconnecting {
                    attempt: attempt + 1,
                    retry_at: Instant::now() + self.config.reconnect.backoff(attempt + 1),
                    reason,
                };
                Flow::Continue
            }
        }
    }

    async fn on_tick(&mut self) -> Flow {
        let now = Instant::now();
        match &mut self.phase {
            Phase::Reconnecting { retry_at, .. } => {
                if now >= *retry_at && self.connecting.is_none() {
                    self.start_reconnect();
                }
                return Flow::Continue;
            }
            Phase::ClosingAwaitEnd { deadline, .. } => {
                if now >= *deadline {
                    warn!("no EndOfTurn after ForceEndTurn; closing anyway");
                    self.after_end_of_turn_while_closing().await;
                }
                return Flow::Continue;
            }
            Phase::ClosingAwaitServer { deadline, .. } => {
                return if now >= *deadline {
                    Flow::Stop
                } else {
                    Flow::Continue
                };
            }
            Phase::Running => {}
        }
        if let Some(since) = self.outbox_blocked_since
            && now.duration_since(since) >= self.config.writer_stall_timeout
        {
            return self
                .connection_lost(format!(
                    "the server stopped reading: {} frames waited {:?}",
                    self.outbox.len(),
                    now.duration_since(since)
                ))
                .await;
        }
        if self.tracker.turn_open()
            && self.frame_bytes > 0
            && now.duration_since(self.last_source_audio) >= self.config.silence_after
            && now.duration_since(self.last_audio_sent) >= self.config.frame
        {
            if let Some(rest) = self.chunker.flush() {
                self.send_audio_frame(rest, now).await;
            } else if let Some(sample) = self
                .config
                .options
                .encoding
                .and_then(|e| e.silence_sample())
            {
                let silence = Bytes::from(sample.repeat(self.frame_bytes / sample.len()));
                self.stats.silence_frames.fetch_add(1, Ordering::Relaxed);
                self.send_audio_frame(silence, now).await;
            }
        }
        if now.duration_since(self.last_sent) >= self.config.ping_interval {
            self.stats.pings_sent.fetch_add(1, Ordering::Relaxed);
            self.write(WireFrame::Ping(Bytes::new())).await;
        }
        let silent_for = now.duration_since(self.last_inbound);
        if silent_for >= self.config.silent_server_timeout
            && self.audio_since_inbound >= self.config.silent_server_timeout.as_secs_f64() / 2.0
        {
            return self
                .connection_lost(format!(
                    "no message from the server for {silent_for:?} while {:.1} s of audio were sent",
                    self.audio_since_inbound
                ))
                .await;
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_for_deepgram_and_emulators() {
        let c = FluxConfig::new(ListenOptions::default());
        assert_eq!(
            c.url_for(&c.options),
            "wss://api.deepgram.com/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000"
        );
        let e = c.clone().with_base_url("http://127.0.0.1:9000/");
        assert!(
            e.url_for(&e.options)
                .starts_with("ws://127.0.0.1:9000/v2/listen?model=")
        );
        let full = c
            .clone()
            .with_base_url("wss://api.eu.deepgram.com/v2/listen");
        assert!(
            full.url_for(&full.options)
                .starts_with("wss://api.eu.deepgram.com/v2/listen?")
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = ReconnectPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(30), Duration::from_secs(5));
    }

    #[test]
    fn frame_size_is_80_ms_of_the_declared_format() {
        let c = FluxConfig::new(ListenOptions::default());
        assert_eq!(c.bytes_per_second(), Some(32000.0));
        let mulaw = FluxConfig::new(ListenOptions::raw(
            super::super::options::Encoding::Mulaw,
            8000,
        ));
        assert_eq!(mulaw.bytes_per_second(), Some(8000.0));
        assert_eq!(
            FluxConfig::new(ListenOptions::containerized()).bytes_per_second(),
            None
        );
    }
}
