//! One browser session: a WebSocket from `start` to `end`, with its Flux connection, its
//! engine session and the limits that keep one client from disturbing the others.
//!
//! One task owns the socket: it reads client messages, forwards agent audio and engine events,
//! and ends the session. The engine's playout writes agent frames into [`SocketSink`], which
//! queues them for that task without waiting; a `clear` travels in the same queue, after the
//! frames written before it. Every send to the client is bounded, so a client that stops
//! reading ends its session instead of holding it.
//!
//! Each phase has its deadline: the `start` must come within the start timeout of the upgrade
//! (nothing sent before it moves that), audio must keep coming within the idle timeout (control
//! messages and pings do not count), and after the client's `stop` the reply in progress has
//! the finish timeout; audio sent after `stop` is dropped and counted. The message rate is
//! limited from the first message, and a drain ends a connection still waiting for `start`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::State;
use super::limits::{MessageRate, PlaybackReport, RealtimeGuard};
use super::metrics::SessionEnd;
use super::protocol::{FromClient, PROTOCOL_VERSION, Start, ToClient, close_code};
use crate::engine::{AudioSink, EngineEvent};
use crate::flux::{Encoding, connect};

/// Agent audio frames queued for the socket at most (one second); beyond it the client is
/// not reading and frames are dropped.
const AUDIO_QUEUE_FRAMES: usize = 50;
/// Longest one send to the client may take before the client counts as gone.
const SEND_LIMIT: Duration = Duration::from_secs(5);
/// Longest the ending of a session may take: provider connections are closed by then.
const END_LIMIT: Duration = Duration::from_secs(1);

/// What playout queues for the connection task to write to the client, in order.
enum Queued {
    Audio(Bytes),
    Clear,
}

/// Where the engine's playout writes: frames go to the connection's task, and the client's
/// playback reports decide what was heard.
struct SocketSink {
    queue: mpsc::UnboundedSender<Queued>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    written: u64,
    sample_rate: u32,
    playback: Arc<Mutex<Option<PlaybackReport>>>,
    /// Where each cut is counted by the clock that decided it.
    metrics: Arc<super::Metrics>,
}

impl AudioSink for SocketSink {
    fn write(&mut self, frame: &[i16]) {
        self.written += frame.len() as u64;
        if self.queued.load(Ordering::Relaxed) >= AUDIO_QUEUE_FRAMES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let bytes = crate::audio::encode(Encoding::Linear16, frame);
        self.queued.fetch_add(1, Ordering::Relaxed);
        let _ = self.queue.send(Queued::Audio(bytes.into()));
    }

    fn clear(&mut self) {
        let reported = self.playback.lock().expect("playback lock").is_some();
        let clock = if reported {
            "client_reports"
        } else {
            "server_clock"
        };
        self.metrics.cuts_decided_by(clock, 1);
        let _ = self.queue.send(Queued::Clear);
    }

    fn played(&self) -> Option<u64> {
        let report = *self.playback.lock().expect("playback lock");
        report.map(|r| r.estimate(Instant::now(), self.sample_rate, self.written))
    }
}

/// How a session ended, for the client's `end` message, the close code and the metrics.
struct Ending {
    outcome: SessionEnd,
    reason: &'static str,
    error: Option<(&'static str, String)>,
    close: u16,
}

impl Ending {
    fn normal(outcome: SessionEnd, reason: &'static str) -> Self {
        Ending {
            outcome,
            reason,
            error: None,
            close: close_code::NORMAL,
        }
    }

    /// A refusal: `message` may quote the client, so it is escaped and cut short before it is
    /// logged or sent back.
    fn refused(code: &'static str, message: String, close: u16) -> Self {
        Ending {
            outcome: SessionEnd::ProtocolError,
            reason: "protocol_error",
            error: Some((code, crate::text::Untrusted(&message).to_string())),
            close,
        }
    }

    fn shutdown() -> Self {
        Ending {
            outcome: SessionEnd::Shutdown,
            reason: "server_shutdown",
            error: None,
            close: close_code::GOING_AWAY,
        }
    }

    fn flood(rate: &MessageRate) -> Self {
        Ending::refused(
            "flood",
            format!(
                "more than {} messages a second; a client sends 50 audio frames and at most 10 \
                 playback reports",
                rate.per_second()
            ),
            close_code::POLICY,
        )
    }
}

/// Sends one message to the client, bounded by [`SEND_LIMIT`].
async fn send(socket: &mut WebSocket, message: Message) -> Result<(), ()> {
    match tokio::time::timeout(SEND_LIMIT, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

fn text(message: &ToClient<'_>) -> Message {
    Message::Text(Utf8Bytes::from(message.to_json()))
}

/// Serves one upgraded connection until its session ends.
pub(super) async fn serve(mut socket: WebSocket, state: Arc<State>) {
    let id = uuid::Uuid::new_v4();
    let span = info_span!("connection", session = %id);
    async move {
        state.metrics.session_started();
        let mut rate = MessageRate::new(
            super::MESSAGES_PER_SECOND,
            super::MESSAGE_BURST,
            Instant::now(),
        );
        let (ending, turns) = match wait_for_start(&mut socket, &state, &mut rate).await {
            Ok(start) => run(&mut socket, &state, id, start, rate).await,
            Err(ending) => (ending, 0),
        };
        finish(&mut socket, &ending, turns).await;
        state.metrics.session_ended(ending.outcome);
        info!(outcome = ending.outcome.as_str(), turns, "session ended");
    }
    .instrument(span)
    .await
}

/// Tells the client how it ended and closes the socket, bounded.
async fn finish(socket: &mut WebSocket, ending: &Ending, turns: u64) {
    if ending.outcome == SessionEnd::ClientClosed {
        return;
    }
    let _ = tokio::time::timeout(END_LIMIT, async {
        if let Some((code, message)) = &ending.error {
            warn!(code, %message, "closing the session");
            let _ = socket
                .send(text(&ToClient::Error {
                    code,
                    message,
                    fatal: true,
                }))
                .await;
        }
        let _ = socket
            .send(text(&ToClient::End {
                reason: ending.reason,
                turns,
            }))
            .await;
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code: ending.close,
                reason: Utf8Bytes::from_static(""),
            })))
            .await;
        // The closing handshake: read until the client's close, so what it sent meanwhile is
        // consumed and the close frame is not lost to a reset connection.
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Waits for the `start` message; anything else first ends the connection, and so do the
/// start timeout (counted from the upgrade, whatever arrives meanwhile), a flood of pings and
/// the beginning of a drain.
async fn wait_for_start(
    socket: &mut WebSocket,
    state: &State,
    rate: &mut MessageRate,
) -> Result<Start, Ending> {
    let limit = state.config.start_timeout;
    let mut deadline = std::pin::pin!(tokio::time::sleep(limit));
    loop {
        let message = tokio::select! {
            biased;
            () = state.draining.cancelled() => return Err(Ending::shutdown()),
            () = &mut deadline => {
                return Err(Ending::refused(
                    "idle",
                    format!("no start message within {limit:?} of connecting"),
                    close_code::POLICY,
                ));
            }
            message = socket.recv() => message,
        };
        let message = match message {
            Some(Err(e)) if super::too_big(&e) => return Err(oversized()),
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                return Err(Ending::normal(SessionEnd::ClientClosed, "client_closed"));
            }
            Some(Ok(message)) => message,
        };
        if !rate.admit(Instant::now()) {
            return Err(Ending::flood(rate));
        }
        match message {
            Message::Text(text) => match FromClient::parse(&text) {
                Ok(FromClient::Start(start)) => return Ok(start),
                Ok(_) => {
                    return Err(Ending::refused(
                        "not_started",
                        "the first message must be start".into(),
                        close_code::POLICY,
                    ));
                }
                Err(e) => {
                    return Err(Ending::refused(
                        e.code(),
                        e.to_string(),
                        close_code::INVALID,
                    ));
                }
            },
            Message::Binary(_) => {
                return Err(Ending::refused(
                    "not_started",
                    "audio before the start message".into(),
                    close_code::UNSUPPORTED,
                ));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => {}
        }
    }
}

async fn run(
    socket: &mut WebSocket,
    state: &State,
    id: uuid::Uuid,
    start: Start,
    mut rate: MessageRate,
) -> (Ending, u64) {
    let config = &state.config;
    let mut flux_config = config.flux.clone();
    flux_config.options.encoding = Some(Encoding::Linear16);
    flux_config.options.sample_rate = Some(start.sample_rate);
    let recording = super::SessionRecording::start(config, &id.to_string(), &flux_config.options);
    let connector = match &recording {
        Some(r) => r.connector(config.connector.clone()),
        None => config.connector.clone(),
    };
    let (flux, flux_events) = match connect(flux_config, connector).await {
        Ok(pair) => pair,
        Err(e) => {
            // The provider's words stay in the log: they can quote the request or the key.
            warn!(error = %crate::text::Untrusted(&e.to_string()), "speech to text unavailable");
            return (
                Ending {
                    outcome: SessionEnd::SttFailed,
                    reason: "stt_failed",
                    error: Some((
                        "stt_unavailable",
                        "speech to text is unavailable; try again later".into(),
                    )),
                    close: close_code::INTERNAL,
                },
                0,
            );
        }
    };
    let output_rate = config.backends.tts.sample_rate();
    let (queue, mut outbound) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let playback = Arc::new(Mutex::new(None));
    let sink = SocketSink {
        queue,
        queued: queued.clone(),
        dropped: dropped.clone(),
        written: 0,
        sample_rate: output_rate,
        playback: playback.clone(),
        metrics: state.metrics.clone(),
    };
    let backends = match &recording {
        Some(r) => r.backends(&config.backends),
        None => config.backends.clone(),
    };
    let (stop, handle, mut events) =
        super::start_engine(state, flux_events, backends, Box::new(sink));
    let log = handle.log();
    let mut finished = std::pin::pin!(handle.finished());
    let ready = ToClient::Ready {
        version: PROTOCOL_VERSION,
        session: id.to_string(),
        input_sample_rate: start.sample_rate,
        output_sample_rate: output_rate,
        frame_ms: 20,
    };
    let mut flux = Some(flux);
    let mut closing: Option<tokio::task::JoinHandle<()>> = None;
    let flux_frame_bytes =
        (u128::from(start.sample_rate) * 2 * config.flux.frame.as_millis() / 1000).max(2) as usize;
    let mut inbound = bytes::BytesMut::with_capacity(flux_frame_bytes);
    let mut session = Session {
        id: id.to_string(),
        turns: super::TurnReports::default(),
        observer: super::Observing::new(config.observer.clone()),
    };
    let mut guard = RealtimeGuard::new(Instant::now(), start.sample_rate, config.realtime_margin);
    let idle = config.idle_timeout;
    // Audio only: a client that sends nothing but pings or playback reports is idle.
    let mut last_audio = Instant::now();
    let mut idle_check = std::pin::pin!(tokio::time::sleep_until(last_audio + idle));
    let mut finish_by = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut stopping = false;
    let mut after_stop = 0u64;
    let mut ending = None;
    if send(socket, text(&ready)).await.is_err() {
        ending = Some(Ending::normal(SessionEnd::ClientClosed, "client_closed"));
        stop.cancel();
    }
    info!(sample_rate = start.sample_rate, "session started");
    let outcome = loop {
        tokio::select! {
            biased;
            outcome = &mut finished => break outcome,
            Some(out) = outbound.recv() => {
                let (message, clear) = match out {
                    Queued::Audio(frame) => {
                        queued.fetch_sub(1, Ordering::Relaxed);
                        (Message::Binary(frame), false)
                    }
                    Queued::Clear => (text(&ToClient::Clear), true),
                };
                let sent = ending.is_none() && send(socket, message).await.is_ok();
                // A barge-in's clear, not the one of a server shutting down.
                if sent && clear && !stop.is_cancelled() {
                    super::clear_written(&state.metrics, &log);
                }
                if ending.is_none() && !sent {
                    warn!("the client stopped reading; ending the session");
                    ending = Some(Ending::normal(SessionEnd::ClientClosed, "client_closed"));
                    stop.cancel();
                }
            }
            Some(event) = events.recv() => {
                if ending.is_none() && session.forward(socket, state, &log, &event).await.is_err() {
                    ending = Some(Ending::normal(SessionEnd::ClientClosed, "client_closed"));
                    stop.cancel();
                }
            }
            () = &mut idle_check, if ending.is_none() && !stopping => {
                // One timer, moved only when it fires: resetting it on each of the fifty
                // messages a second would cost more than the check.
                let due = last_audio + idle;
                if due > Instant::now() {
                    idle_check.as_mut().reset(due);
                } else {
                    ending = Some(Ending::refused(
                        "idle",
                        format!("no audio received for {idle:?}"),
                        close_code::POLICY,
                    ));
                    stop.cancel();
                }
            }
            () = &mut finish_by, if stopping && ending.is_none() => {
                warn!(
                    limit = ?config.finish_timeout,
                    "the reply in progress at stop ran past the finish timeout; ending the session"
                );
                ending = Some(Ending::normal(SessionEnd::Completed, "stopped"));
                stop.cancel();
            }
            message = socket.recv(), if ending.is_none() => {
                let now = Instant::now();
                let flooding = message.as_ref().is_some_and(|m| m.is_ok()) && !rate.admit(now);
                let verdict = match message {
                    _ if flooding => Err(Ending::flood(&rate)),
                    Some(Err(e)) if super::too_big(&e) => Err(oversized()),
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                        Err(Ending::normal(SessionEnd::ClientClosed, "client_closed"))
                    }
                    // The user's audio ended with stop: nothing more reaches Flux or memory.
                    Some(Ok(Message::Binary(_))) if stopping => {
                        after_stop += 1;
                        Ok(None)
                    }
                    Some(Ok(Message::Binary(audio))) => {
                        audio_frame(&audio, config.max_frame_bytes, &mut guard)
                            .map(|()| Some(audio))
                    }
                    Some(Ok(Message::Text(text))) => match FromClient::parse(&text) {
                        Ok(FromClient::Played(p)) => {
                            *playback.lock().expect("playback lock") = Some(PlaybackReport {
                                played: p.samples,
                                buffered: p.buffered,
                                at: Instant::now(),
                            });
                            Ok(None)
                        }
                        Ok(FromClient::Stop) if stopping => Ok(None),
                        Ok(FromClient::Stop) => {
                            stopping = true;
                            finish_by.as_mut().reset(now + config.finish_timeout);
                            // Ends the user's audio; the session finishes the turn in progress.
                            if let Some(flux) = flux.take() {
                                let rest = inbound.split().freeze();
                                // Owned by this task: awaited (bounded) when the session ends.
                                closing = Some(tokio::spawn(async move {
                                    if !rest.is_empty() {
                                        let _ = flux.send_audio(rest).await;
                                    }
                                    if let Err(e) = flux.close().await {
                                        debug!(error = %e, "flux close");
                                    }
                                }.in_current_span()));
                            }
                            Ok(None)
                        }
                        Ok(FromClient::Start(_)) => Err(Ending::refused(
                            "invalid",
                            "start was already received".into(),
                            close_code::POLICY,
                        )),
                        Err(e) => Err(Ending::refused(e.code(), e.to_string(), close_code::INVALID)),
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(None),
                };
                match verdict {
                    Ok(Some(audio)) => {
                        last_audio = now;
                        if let Some(r) = &recording {
                            r.user_audio(Encoding::Linear16, &audio);
                        }
                        // The Flux client sends whole frames; handing it whole frames wakes
                        // its task once per frame instead of once per 20 ms message, and
                        // delays nothing.
                        inbound.extend_from_slice(&audio);
                        if inbound.len() >= flux_frame_bytes
                            && let Some(flux) = &flux
                            && flux.send_audio(inbound.split().freeze()).await.is_err()
                        {
                            debug!("flux no longer takes audio");
                        }
                    }
                    Ok(None) => {}
                    Err(end) => {
                        ending = Some(end);
                        stop.cancel();
                    }
                }
            }
        }
    };
    // The session is over: its Flux connection closes now, releasing the provider's slot.
    drop(flux);
    if let Some(mut task) = closing
        && tokio::time::timeout(END_LIMIT, &mut task).await.is_err()
    {
        task.abort();
    }
    if let Some(r) = recording {
        r.finish(&log, output_rate).await;
    }
    if after_stop > 0 {
        state.metrics.audio_after_stop(after_stop);
        info!(frames = after_stop, "audio sent after stop dropped");
    }
    let dropped = dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        warn!(
            dropped,
            "agent audio frames dropped because the client fell behind"
        );
    }
    let ending = ending.unwrap_or_else(|| match &outcome.error {
        Some(e) if !state.shutdown.is_cancelled() => {
            warn!(error = %crate::text::Untrusted(&e.to_string()), "speech to text failed");
            Ending {
                outcome: SessionEnd::SttFailed,
                reason: "stt_failed",
                error: Some(("stt_failed", "speech to text failed".into())),
                close: close_code::INTERNAL,
            }
        }
        _ if state.shutdown.is_cancelled() => Ending::shutdown(),
        _ => Ending::normal(SessionEnd::Completed, "stopped"),
    });
    (ending, session.turns.started())
}

/// A message over the WebSocket limit (four times the frame limit).
fn oversized() -> Ending {
    Ending::refused(
        "too_big",
        "a message over the size limit (send 20 ms audio frames and small JSON messages)".into(),
        close_code::TOO_BIG,
    )
}

/// Checks one binary audio frame against the limits.
fn audio_frame(audio: &[u8], max_bytes: usize, guard: &mut RealtimeGuard) -> Result<(), Ending> {
    if audio.len() > max_bytes {
        return Err(Ending::refused(
            "too_big",
            format!(
                "an audio frame of {} bytes; at most {max_bytes} bytes (send 20 ms frames)",
                audio.len()
            ),
            close_code::TOO_BIG,
        ));
    }
    if !audio.len().is_multiple_of(2) {
        return Err(Ending::refused(
            "invalid_audio",
            format!(
                "an audio frame of {} bytes; PCM16 frames have an even length",
                audio.len()
            ),
            close_code::INVALID,
        ));
    }
    guard
        .admit(audio.len() as u64 / 2, Instant::now())
        .map_err(|ahead| {
            Ending::refused(
                "too_fast",
                format!(
                    "audio arrives faster than real time: {:.1} s ahead; send it as it is captured",
                    ahead.as_secs_f64()
                ),
                close_code::POLICY,
            )
        })
}

/// What the connection remembers of the conversation to report turns as they end.
struct Session {
    id: String,
    turns: super::TurnReports,
    observer: super::Observing,
}

impl Session {
    async fn forward(
        &mut self,
        socket: &mut WebSocket,
        state: &State,
        log: &crate::engine::log::EventLog,
        event: &EngineEvent,
    ) -> Result<(), ()> {
        self.observer.notify(|o| o.event(&self.id, event));
        // The application's observer gets the provider's words; the client gets a fixed message.
        let told;
        let event = match event {
            EngineEvent::ResponseEnded {
                response,
                heard,
                interrupted,
                error: Some(error),
            } => {
                told = EngineEvent::ResponseEnded {
                    response: *response,
                    heard: heard.clone(),
                    interrupted: *interrupted,
                    error: Some(error.for_caller()),
                };
                &told
            }
            _ => event,
        };
        send(socket, text(&ToClient::Event(event))).await?;
        for turn in self.turns.on_event(event, log, &state.metrics) {
            send(socket, text(&ToClient::Turn(&turn))).await?;
        }
        Ok(())
    }
}
