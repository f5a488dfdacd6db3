//! Deepgram Flux TTS (`/v2/speak`), the speaking half of Flux, over one WebSocket per
//! conversation kept across replies.
//!
//! Each sentence the engine asks for is one of the service's turns: a `Speak` and a `Flush`,
//! its audio every binary frame until the turn's `SpeechMetadata`. (A turn per sentence, not
//! per reply: the service marks no boundary inside a turn, and the engine places each sentence's
//! audio to know what was heard; the voice's prosody lives on the socket, so nothing is lost.)
//!
//! A cut reply ([`SpeechSynthesizer::clear`]) whose turn is still being produced gets an
//! `Interrupt` with the position the listener actually played, on the service's own clock: the
//! audio of the turns it finished, rebased by each earlier interrupt, plus what the listener
//! heard of this turn. Audio still arriving is dropped until `SpeechInterrupted` (waited for at
//! most [`INTERRUPT_WAIT`]; a service that never answers costs the socket, not the
//! conversation), whose `text_spoken` is compared with the engine's own heard text: a
//! difference is logged and counted ([`FluxTtsCounts::heard_differed`]).
//!
//! The socket is opened when the conversation starts, kept alive with WebSocket pings every
//! [`KEEPALIVE_EVERY`] (the service closes one idle for 60 s) and replaced between replies
//! before the service's one-hour limit; a socket the service closed anyway (`NET-0003`,
//! `NET-0004`, a dropped connection) before a sentence's first audio is reopened and the
//! sentence sent again. Errors map to [`ErrorKind`]s (`NET-*` to a broken stream, `DATA-*`,
//! `MESSAGE-*` and `BIG-*` to a refused request, HTTP 401/403/429 to auth and rate limiting), so
//! a failover chain can put Flux TTS before or after Aura.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, info, warn};

use super::{Billed, SpeechChunk, SpeechCut, SpeechStream, SpeechSynthesizer, TtsError};
use crate::error::ErrorKind;
use crate::flux::speak::{PlaybackOffset, SpeakEvent, SpeakOptions, SpeakRequest};
use crate::net::{ApiKey, insecure_remote};
use crate::text::Untrusted;
use crate::ws::{
    ConnectError, ConnectRequest, Connection, Connector, WebSocketConnector, WireFrame,
};

/// Where Deepgram serves Flux TTS.
pub const FLUX_TTS_BASE_URL: &str = "wss://api.deepgram.com";
/// The voice when none is named (the one Deepgram's examples use).
pub const FLUX_TTS_MODEL: &str = "flux-haley-en";
/// Longest wait for `SpeechInterrupted` after an `Interrupt`.
pub const INTERRUPT_WAIT: Duration = Duration::from_secs(1);
/// How often an idle socket is pinged (the service closes one silent for 60 s).
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);
/// Age at which a socket is replaced between replies (the service ends it at one hour).
pub const SOCKET_LIFETIME: Duration = Duration::from_secs(59 * 60);
/// Longest wait for `Connected` after the upgrade.
const CONNECTED_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for `SessionMetadata` after `Close` when a conversation ends.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

const NAME: &str = "flux-tts";

fn error(kind: ErrorKind, message: impl Into<String>) -> TtsError {
    TtsError::new(NAME, kind, message)
}

/// What a Flux TTS voice has seen, over all its conversations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FluxTtsCounts {
    /// Sockets opened.
    pub sockets: u64,
    /// Turns the service completed (`SpeechMetadata`).
    pub turns: u64,
    /// Characters billed over those turns and the interrupted ones.
    pub billable_characters: u64,
    /// Milliseconds of audio the service reported producing.
    pub audio_ms: u64,
    /// `Interrupt`s sent.
    pub interrupts: u64,
    /// Interrupts whose `text_spoken` matched the engine's heard text.
    pub heard_matched: u64,
    /// Interrupts whose `text_spoken` differed from it (each one logged).
    pub heard_differed: u64,
    /// Interrupts the service ignored with a warning (the turn had ended, say).
    pub interrupts_ignored: u64,
    /// Interrupts never answered within [`INTERRUPT_WAIT`] (the socket was replaced).
    pub interrupts_unanswered: u64,
    /// `Warning`s received.
    pub warnings: u64,
    /// Messages that were not `/v2/speak`'s, or out of place, and were skipped.
    pub unexpected: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sockets: AtomicU64,
    turns: AtomicU64,
    billable_characters: AtomicU64,
    audio_ms: AtomicU64,
    interrupts: AtomicU64,
    heard_matched: AtomicU64,
    heard_differed: AtomicU64,
    interrupts_ignored: AtomicU64,
    interrupts_unanswered: AtomicU64,
    warnings: AtomicU64,
    unexpected: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> FluxTtsCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FluxTtsCounts {
            sockets: get(&self.sockets),
            turns: get(&self.turns),
            billable_characters: get(&self.billable_characters),
            audio_ms: get(&self.audio_ms),
            interrupts: get(&self.interrupts),
            heard_matched: get(&self.heard_matched),
            heard_differed: get(&self.heard_differed),
            interrupts_ignored: get(&self.interrupts_ignored),
            interrupts_unanswered: get(&self.interrupts_unanswered),
            warnings: get(&self.warnings),
            unexpected: get(&self.unexpected),
        }
    }
}

/// What every conversation of one voice shares.
struct Config {
    url: String,
    api_key: Option<ApiKey>,
    sample_rate: u32,
    connector: Arc<dyn Connector>,
    counters: Counters,
    interrupt_wait: Duration,
    keepalive_every: Duration,
    socket_lifetime: Duration,
}

/// The Flux TTS voice. Give each conversation its own with
/// [`SpeechSynthesizer::for_conversation`] (the engine does): one socket, one voice state, one
/// clock of played audio per conversation.
pub struct FluxTts {
    config: Arc<Config>,
    link: Arc<Mutex<Link>>,
    /// Stops the keeper (pings, replacement, the closing `Close`) when the voice is dropped.
    keeper: StdMutex<Option<DropGuard>>,
}

#[derive(Default)]
struct Link {
    socket: Option<Socket>,
}

struct Socket {
    connection: Connection,
    opened_at: Instant,
    /// The service's clock, in ms, where the turn in progress began (or the next will).
    position_ms: u64,
    /// The last offset an `Interrupt` carried; the next must be greater.
    last_offset: Option<u64>,
    /// The turn in progress, until its `SpeechMetadata` is read.
    turn: Option<Turn>,
}

struct Turn {
    text: String,
    speech_id: Option<String>,
}

impl FluxTts {
    /// Flux TTS at `base_url` with `model` (`flux-<voice>-en`), linear16 at `sample_rate`.
    ///
    /// # Errors
    /// [`TtsError`] ([`ErrorKind::BadRequest`]) for a model or rate the service refuses, or a
    /// key for an unencrypted `ws://` URL to another machine (it would travel in clear).
    pub fn new(
        base_url: &str,
        model: &str,
        sample_rate: u32,
        api_key: Option<ApiKey>,
    ) -> Result<Self, TtsError> {
        let base = base_url.trim_end_matches('/');
        if api_key.is_some() && insecure_remote(base) {
            return Err(error(
                ErrorKind::BadRequest,
                format!("refusing unencrypted ws:// to a remote host ({base}): use wss"),
            ));
        }
        let options = SpeakOptions::new(model, sample_rate);
        options
            .validate()
            .map_err(|e| error(ErrorKind::BadRequest, e.detail.to_string()))?;
        Ok(Self::with_config(Config {
            url: format!("{base}/v2/speak?{}", options.to_query()),
            api_key,
            sample_rate,
            connector: Arc::new(WebSocketConnector),
            counters: Counters::default(),
            interrupt_wait: INTERRUPT_WAIT,
            keepalive_every: KEEPALIVE_EVERY,
            socket_lifetime: SOCKET_LIFETIME,
        }))
    }

    fn with_config(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            link: Arc::default(),
            keeper: StdMutex::new(None),
        }
    }

    /// The same voice over `connector` (the in-memory emulator, a test's server).
    pub fn with_connector(self, connector: Arc<dyn Connector>) -> Self {
        let config = Arc::into_inner(self.config).expect("a new voice is not shared yet");
        Self::with_config(Config {
            connector,
            ..config
        })
    }

    /// Other limits: the wait for `SpeechInterrupted`, the ping interval and the age at which a
    /// socket is replaced (tests shorten them).
    pub fn with_limits(
        self,
        interrupt_wait: Duration,
        keepalive_every: Duration,
        socket_lifetime: Duration,
    ) -> Self {
        let config = Arc::into_inner(self.config).expect("a new voice is not shared yet");
        Self::with_config(Config {
            interrupt_wait,
            keepalive_every,
            socket_lifetime,
            ..config
        })
    }

    /// What this voice and its conversations have seen so far.
    pub fn counts(&self) -> FluxTtsCounts {
        self.config.counters.snapshot()
    }

    /// Starts the keeper once: it opens the socket at once (the first reply finds it warm),
    /// pings it, replaces it before the hour is up, and closes it when the voice is dropped.
    fn keep(&self) {
        let mut keeper = self.keeper.lock().expect("keeper lock");
        if keeper.is_some() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let stop = CancellationToken::new();
        tokio::spawn(
            keeper_task(self.config.clone(), self.link.clone(), stop.clone()).in_current_span(),
        );
        *keeper = Some(stop.drop_guard());
    }
}

async fn open(config: &Config) -> Result<Socket, TtsError> {
    let request = ConnectRequest {
        url: config.url.clone(),
        api_key: config.api_key.clone(),
    };
    let mut connection = config
        .connector
        .connect(&request)
        .await
        .map_err(|e| match &e {
            ConnectError::Handshake { status, .. } => {
                TtsError::http(NAME, *status, None, e.to_string())
            }
            ConnectError::InvalidUrl { .. } => error(ErrorKind::BadRequest, e.to_string()),
            ConnectError::Io(_) => error(ErrorKind::Network, e.to_string()),
        })?;
    let connected = tokio::time::timeout(CONNECTED_WAIT, async {
        loop {
            match connection.stream.next().await {
                Some(Ok(WireFrame::Text(text))) => match SpeakEvent::parse(&text) {
                    Ok(SpeakEvent::Connected { model_name, .. }) => return Ok(model_name),
                    Ok(SpeakEvent::Error { code, description }) => {
                        return Err(service_error(&code, &description));
                    }
                    _ => config.counters.unexpected.fetch_add(1, Ordering::Relaxed),
                },
                Some(Ok(WireFrame::Close(reason))) => return Err(closed(reason)),
                None => return Err(closed(None)),
                Some(Err(e)) => return Err(error(ErrorKind::Network, e.0)),
                Some(Ok(_)) => config.counters.unexpected.fetch_add(1, Ordering::Relaxed),
            };
        }
    })
    .await
    .map_err(|_| {
        error(
            ErrorKind::Timeout,
            format!("no Connected within {CONNECTED_WAIT:?} of the upgrade"),
        )
    })??;
    bump(&config.counters.sockets, 1);
    debug!(model = %Untrusted(&connected), request_id = ?connection.request_id, "flux tts socket open");
    Ok(Socket {
        connection,
        opened_at: Instant::now(),
        position_ms: 0,
        last_offset: None,
        turn: None,
    })
}

/// The error for a fatal `Error` message.
fn service_error(code: &str, description: &str) -> TtsError {
    let kind =
        if code.starts_with("DATA-") || code.starts_with("MESSAGE-") || code.starts_with("BIG-") {
            ErrorKind::BadRequest
        } else if code == "NET-0000" {
            ErrorKind::Server
        } else {
            ErrorKind::StreamBroken
        };
    let advice = match code {
        "NET-0003" => "the socket's hour is up; the next sentence opens another",
        "NET-0004" => "the socket was idle for 60 s; the next sentence opens another",
        _ if kind == ErrorKind::BadRequest => "the service refused what was sent",
        _ => "the next sentence opens another socket",
    };
    error(
        kind,
        format!(
            "service error {}: {} ({advice})",
            Untrusted(code),
            Untrusted(description)
        ),
    )
}

fn closed(reason: Option<(u16, String)>) -> TtsError {
    match reason {
        Some((code, reason)) => error(
            ErrorKind::StreamBroken,
            format!(
                "the service closed the socket ({code} {}); the next sentence opens another",
                Untrusted(&reason)
            ),
        ),
        None => error(
            ErrorKind::StreamBroken,
            "the socket closed; the next sentence opens another",
        ),
    }
}

/// Sends one request; a failed send loses the socket.
async fn send(link: &mut Link, request: &SpeakRequest) -> Result<(), TtsError> {
    let socket = link.socket.as_mut().expect("sent on an open socket");
    let sent = socket
        .connection
        .sink
        .send(WireFrame::Text(request.to_json()))
        .await;
    if sent.is_err() {
        link.socket = None;
        return Err(error(
            ErrorKind::Network,
            "the socket dropped while sending text",
        ));
    }
    Ok(())
}

fn same_words(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

/// Cancels the turn in progress, if the service may still be producing it: `Interrupt` at the
/// position played, then every frame dropped until the service answers.
async fn interrupt(config: &Config, link: &mut Link, cut: &SpeechCut) {
    let Some(socket) = link.socket.as_mut() else {
        return;
    };
    let Some(turn) = socket.turn.take() else {
        return;
    };
    let heard_of_turn = cut.sentence.as_deref() == Some(turn.text.as_str());
    let played_ms = if heard_of_turn {
        cut.played * 1000 / u64::from(config.sample_rate.max(1))
    } else {
        0
    };
    let mut offset = socket.position_ms + played_ms;
    if let Some(last) = socket.last_offset
        && offset <= last
    {
        offset = last + 1;
    }
    socket.last_offset = Some(offset);
    let request = SpeakRequest::Interrupt {
        playback_offset: Some(PlaybackOffset::ms(offset)),
    };
    if send(link, &request).await.is_err() {
        return;
    }
    bump(&config.counters.interrupts, 1);
    let engine_heard = if heard_of_turn {
        cut.heard.as_str()
    } else {
        ""
    };
    let socket = link.socket.as_mut().expect("sent above");
    let answered = tokio::time::timeout(config.interrupt_wait, async {
        loop {
            let frame = match socket.connection.stream.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(_)) | None => return false,
            };
            let text = match frame {
                WireFrame::Text(text) => text,
                WireFrame::Close(_) => return false,
                // In flight before the service took the interrupt: never played.
                _ => continue,
            };
            match SpeakEvent::parse(&text) {
                Ok(SpeakEvent::SpeechInterrupted {
                    audio_played_ms,
                    text_spoken,
                    metadata,
                    ..
                }) => {
                    socket.position_ms = audio_played_ms;
                    bump(
                        &config.counters.billable_characters,
                        metadata.billable_character_count,
                    );
                    match text_spoken {
                        Some(spoken) if same_words(&spoken, engine_heard) => {
                            bump(&config.counters.heard_matched, 1);
                            debug!(speech_id = %Untrusted(&metadata.speech_id), offset, "interrupted where the engine heard it");
                        }
                        Some(spoken) => {
                            bump(&config.counters.heard_differed, 1);
                            warn!(speech_id = %Untrusted(&metadata.speech_id), offset, service = %Untrusted(&spoken), engine = %Untrusted(engine_heard), "the service and the engine disagree on what was heard");
                        }
                        None => {}
                    }
                    return true;
                }
                // The turn ended before the interrupt landed: its figures count, and the
                // service's warning about the interrupt follows.
                Ok(SpeakEvent::SpeechMetadata(metadata)) => {
                    socket.position_ms += metadata.audio_duration_ms;
                    count_turn(config, &metadata);
                }
                Ok(SpeakEvent::Warning { code, description }) => {
                    bump(&config.counters.warnings, 1);
                    if matches!(
                        code.as_str(),
                        "NO_ACTIVE_SPEECH"
                            | "NO_AUDIO_GENERATED"
                            | "INTERRUPT_IN_PROGRESS"
                            | "INVALID_INTERRUPT_OFFSET"
                    ) {
                        bump(&config.counters.interrupts_ignored, 1);
                        debug!(code = %Untrusted(&code), description = %Untrusted(&description), "the service ignored the interrupt");
                        return true;
                    }
                    warn!(code = %Untrusted(&code), description = %Untrusted(&description), "flux tts warning");
                }
                Ok(SpeakEvent::Error { code, description }) => {
                    warn!(error = %service_error(&code, &description), "flux tts error while interrupting");
                    return false;
                }
                Ok(_) => {}
                Err(e) => {
                    bump(&config.counters.unexpected, 1);
                    warn!(error = %e, "flux tts sent a message that is not /v2/speak's; skipped");
                }
            }
        }
    })
    .await;
    match answered {
        Ok(true) => {}
        Ok(false) => link.socket = None,
        Err(_) => {
            bump(&config.counters.interrupts_unanswered, 1);
            warn!(wait = ?config.interrupt_wait, "no SpeechInterrupted in time; the next sentence opens another socket");
            link.socket = None;
        }
    }
}

fn count_turn(config: &Config, metadata: &crate::flux::speak::TurnMetadata) {
    bump(&config.counters.turns, 1);
    bump(&config.counters.audio_ms, metadata.audio_duration_ms);
    bump(
        &config.counters.billable_characters,
        metadata.billable_character_count,
    );
    debug!(speech_id = %Untrusted(&metadata.speech_id), audio_ms = metadata.audio_duration_ms, billable_characters = metadata.billable_character_count, "flux tts turn");
}

/// The sentence's turn being read: the link it holds, and whether it may still be resent on
/// a fresh socket (nothing of it was heard yet).
struct Synthesis {
    config: Arc<Config>,
    link: OwnedMutexGuard<Link>,
    text: String,
    audio: bool,
    resent: bool,
    /// The turn's `SpeechMetadata` was read and handed on.
    done: bool,
}

/// Speaks `text` as a new turn, on a fresh socket when there is none or it is too old.
async fn start_turn(config: &Config, link: &mut Link, text: &str) -> Result<(), TtsError> {
    let stale = link
        .socket
        .as_ref()
        .is_some_and(|s| s.opened_at.elapsed() >= config.socket_lifetime);
    if stale {
        info!("flux tts socket near its hour; replacing it between sentences");
        if let Some(old) = link.socket.take() {
            close_socket(old).await;
        }
    }
    // A socket the service closed between replies is only found out by writing to it.
    let reused = link.socket.is_some();
    for fresh in [!reused, true] {
        if link.socket.is_none() {
            link.socket = Some(open(config).await?);
        }
        let sent = match send(
            link,
            &SpeakRequest::Speak {
                text: text.to_owned(),
            },
        )
        .await
        {
            Ok(()) => send(link, &SpeakRequest::Flush).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => break,
            Err(e) if fresh => return Err(e),
            Err(e) => debug!(error = %e, "flux tts socket gone while idle; opening another"),
        }
    }
    link.socket.as_mut().expect("sent above").turn = Some(Turn {
        text: text.to_owned(),
        speech_id: None,
    });
    Ok(())
}

impl Synthesis {
    /// The next chunk of the turn's audio; `None` at its `SpeechMetadata`.
    async fn next(&mut self) -> Option<Result<SpeechChunk, TtsError>> {
        if self.done {
            return None;
        }
        loop {
            let socket = self.link.socket.as_mut()?;
            let frame = socket.connection.stream.next().await;
            let failure = match frame {
                Some(Ok(WireFrame::Binary(bytes))) => {
                    self.audio = true;
                    return Some(Ok(SpeechChunk::from_pcm16(&bytes)));
                }
                Some(Ok(WireFrame::Text(text))) => match self.on_text(&text) {
                    Step::Continue => continue,
                    Step::Done(billed) => {
                        self.done = true;
                        return Some(Ok(SpeechChunk {
                            billed: Some(billed),
                            ..SpeechChunk::default()
                        }));
                    }
                    Step::Failed(e) => e,
                },
                Some(Ok(WireFrame::Close(reason))) => closed(reason),
                Some(Ok(_)) => continue,
                Some(Err(e)) => error(ErrorKind::StreamBroken, e.0),
                None => closed(None),
            };
            self.link.socket = None;
            // Nothing of the sentence was heard: a socket the service ended between replies
            // (its hour, its idle limit, a restart) costs a reconnect, not the sentence.
            if !self.audio && !self.resent && failure.is_retryable() {
                self.resent = true;
                info!(error = %failure, "flux tts socket gone before the sentence's audio; sending it on a new one");
                let text = std::mem::take(&mut self.text);
                let restarted = start_turn(&self.config, &mut self.link, &text).await;
                self.text = text;
                if let Err(e) = restarted {
                    return Some(Err(e));
                }
                continue;
            }
            return Some(Err(failure));
        }
    }

    fn on_text(&mut self, text: &str) -> Step {
        let config = &self.config;
        let socket = self.link.socket.as_mut().expect("read from an open socket");
        match SpeakEvent::parse(text) {
            Ok(SpeakEvent::SpeechStarted { speech_id }) => {
                if let Some(turn) = socket.turn.as_mut() {
                    turn.speech_id = Some(speech_id);
                }
            }
            Ok(SpeakEvent::SpeechMetadata(metadata)) => {
                socket.position_ms += metadata.audio_duration_ms;
                count_turn(config, &metadata);
                let ours = socket.turn.as_ref().is_some_and(|t| {
                    t.speech_id
                        .as_deref()
                        .is_none_or(|id| id == metadata.speech_id)
                });
                if ours {
                    socket.turn = None;
                    return Step::Done(Billed {
                        characters: metadata.billable_character_count,
                        audio_ms: metadata.audio_duration_ms,
                    });
                }
                bump(&config.counters.unexpected, 1);
                debug!(speech_id = %Untrusted(&metadata.speech_id), "metadata of an earlier turn");
            }
            Ok(SpeakEvent::SpeechInterrupted {
                audio_played_ms, ..
            }) => {
                // An answer to an interrupt that was given up on.
                socket.position_ms = audio_played_ms;
                bump(&config.counters.unexpected, 1);
            }
            Ok(SpeakEvent::Warning { code, description }) => {
                bump(&config.counters.warnings, 1);
                warn!(code = %Untrusted(&code), description = %Untrusted(&description), "flux tts warning");
            }
            Ok(SpeakEvent::Error { code, description }) => {
                return Step::Failed(service_error(&code, &description));
            }
            Ok(SpeakEvent::Unknown(kind)) => {
                bump(&config.counters.unexpected, 1);
                debug!(kind = %Untrusted(&kind), "unknown flux tts message skipped");
            }
            Ok(
                SpeakEvent::Flushed { .. }
                | SpeakEvent::Connected { .. }
                | SpeakEvent::ConfigureSuccess { .. }
                | SpeakEvent::ConfigureFailure { .. }
                | SpeakEvent::SessionMetadata { .. },
            ) => {}
            Err(e) => {
                bump(&config.counters.unexpected, 1);
                warn!(error = %e, "flux tts sent a message that is not /v2/speak's; skipped");
            }
        }
        Step::Continue
    }
}

enum Step {
    Continue,
    Done(Billed),
    Failed(TtsError),
}

/// Ends a socket the way the service asks: `Close`, then its `SessionMetadata`.
async fn close_socket(mut socket: Socket) {
    if socket
        .connection
        .sink
        .send(WireFrame::Text(SpeakRequest::Close.to_json()))
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(frame)) = socket.connection.stream.next().await {
            if let WireFrame::Text(text) = frame
                && let Ok(SpeakEvent::SessionMetadata { .. }) = SpeakEvent::parse(&text)
            {
                return;
            }
        }
    })
    .await;
}

async fn keeper_task(config: Arc<Config>, link: Arc<Mutex<Link>>, stop: CancellationToken) {
    {
        let mut guard = link.lock().await;
        if guard.socket.is_none() {
            match open(&config).await {
                Ok(socket) => guard.socket = Some(socket),
                Err(e) => {
                    warn!(error = %e, "flux tts could not open its socket ahead of the first reply")
                }
            }
        }
    }
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep(config.keepalive_every) => {}
        }
        // A sentence in progress keeps the socket busy; the next tick tries again.
        let Ok(mut guard) = link.try_lock() else {
            continue;
        };
        let Some(socket) = guard.socket.as_mut() else {
            continue;
        };
        if socket.turn.is_none() && socket.opened_at.elapsed() >= config.socket_lifetime {
            info!("flux tts socket near its hour; replacing it while idle");
            let old = guard.socket.take().expect("checked above");
            close_socket(old).await;
            match open(&config).await {
                Ok(socket) => guard.socket = Some(socket),
                Err(e) => {
                    warn!(error = %e, "flux tts could not replace its socket; the next sentence tries again")
                }
            }
            continue;
        }
        if socket
            .connection
            .sink
            .send(WireFrame::Ping(bytes::Bytes::new()))
            .await
            .is_err()
        {
            guard.socket = None;
        }
    }
    let socket = tokio::time::timeout(CLOSE_WAIT, link.lock())
        .await
        .ok()
        .and_then(|mut guard| guard.socket.take());
    // A sentence cut by the conversation's end is not drained (`Close` would have the service
    // finish it): the socket is dropped.
    if let Some(socket) = socket.filter(|s| s.turn.is_none()) {
        close_socket(socket).await;
    }
}

#[async_trait]
impl SpeechSynthesizer for FluxTts {
    fn name(&self) -> &str {
        NAME
    }

    fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    async fn synthesize(&self, text: &str) -> Result<SpeechStream, TtsError> {
        self.keep();
        let mut link = self.link.clone().lock_owned().await;
        // A sentence dropped before its end (a cut the engine did not report) is still being
        // produced: nothing of it was heard.
        interrupt(&self.config, &mut link, &SpeechCut::default()).await;
        start_turn(&self.config, &mut link, text).await?;
        let synthesis = Synthesis {
            config: self.config.clone(),
            link,
            text: text.to_owned(),
            audio: false,
            resent: false,
            done: false,
        };
        let stream = futures_util::stream::unfold(Some(synthesis), |state| async move {
            let mut state = state?;
            match state.next().await? {
                Ok(chunk) => Some((Ok(chunk), Some(state))),
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn clear(&self, cut: &SpeechCut) {
        let mut link = self.link.lock().await;
        interrupt(&self.config, &mut link, cut).await;
    }

    fn for_conversation(&self) -> Option<Arc<dyn SpeechSynthesizer>> {
        let voice = FluxTts {
            config: self.config.clone(),
            link: Arc::default(),
            keeper: StdMutex::new(None),
        };
        voice.keep();
        Some(Arc::new(voice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_named_before_any_io() {
        let key = Some(ApiKey::new("secret"));
        let e = FluxTts::new("ws://example.com", "flux-haley-en", 24000, key.clone())
            .err()
            .unwrap();
        assert!(e.to_string().contains("use wss"), "{e}");
        assert!(!e.to_string().contains("secret"));
        assert!(FluxTts::new("ws://emulator.invalid", "flux-haley-en", 24000, None).is_ok());
        assert!(FluxTts::new("ws://127.0.0.1:9", "flux-haley-en", 24000, key).is_ok());
        let e = FluxTts::new(FLUX_TTS_BASE_URL, "aura-2-thalia-en", 24000, None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("flux-<voice>-<language>"), "{e}");
        let e = FluxTts::new(FLUX_TTS_BASE_URL, "flux-haley-en", 22050, None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("sample_rate"), "{e}");
        assert!(FluxTts::new("ws://127.0.0.1:9", "flux-haley-en", 16000, None).is_ok());
    }

    #[test]
    fn service_errors_map_to_kinds() {
        assert_eq!(service_error("NET-0003", "").kind, ErrorKind::StreamBroken);
        assert!(service_error("NET-0003", "").is_retryable());
        assert_eq!(
            service_error("DATA-0002", "pause").kind,
            ErrorKind::BadRequest
        );
        assert_eq!(
            service_error("MESSAGE-0000", "").kind,
            ErrorKind::BadRequest
        );
        assert_eq!(service_error("BIG-0000", "").kind, ErrorKind::BadRequest);
        assert_eq!(service_error("NET-0000", "").kind, ErrorKind::Server);
        assert!(
            service_error("NET-0004", "idle")
                .to_string()
                .contains("idle for 60 s")
        );
    }

    #[test]
    fn heard_text_is_compared_word_by_word() {
        assert!(same_words(
            "The forecast is sunny,",
            " The forecast  is sunny, "
        ));
        assert!(!same_words("The forecast", "The forecast is"));
        assert!(same_words("", "  "));
    }
}
