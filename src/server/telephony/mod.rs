//! Phone calls: Twilio and Telnyx media streams on `/telephony`, and Twilio's call webhook at
//! `/twilio/voice`.
//!
//! One WebSocket is one call, as for browsers, and it shares the server's sessions, limits,
//! metrics and drain. The caller's audio (G.711 mu-law, 8 kHz) goes to Flux as it comes, put
//! back in order first (`reorder`); the agent's audio is low-passed and decimated to 8 kHz
//! (`resample`), encoded, and sent in 40 ms messages, each followed by a `mark`. The carrier
//! echoes a mark once the audio before it has played, so what the caller heard is known from
//! the carrier's own playback clock: on barge-in the history keeps exactly the audio up to the
//! last echoed mark, and `clear` drops the rest at the carrier.
//!
//! A stream has the browser session's deadlines: its `start` within the start timeout of the
//! upgrade (a `connected` event or a ping does not move it), media within the idle timeout
//! (marks, DTMF and pings do not count), the message rate from the first message, and the end
//! of the wait for `start` when a drain begins. What the carrier sends is escaped and cut short
//! before it is logged; digits and custom parameters are never logged.

pub mod carrier;
mod line;
mod reorder;
mod resample;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt as _, StreamExt as _};
use hmac::Mac as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::State;
use super::limits::{MessageRate, RealtimeGuard};
use super::metrics::SessionEnd;
use crate::engine::{EngineEvent, Prompt, ResponseId};
use crate::flux::{Encoding, connect};
use carrier::{FromCarrier, StreamStart, ToCarrier};
use line::{CarrierSink, Cut, Line, Out, Writer};
use reorder::Reorder;
use resample::{PHONE_RATE, ToPhone};

/// Agent audio per media message: 40 ms at 8 kHz mu-law (carriers stutter on tiny chunks).
const MESSAGE_BYTES: usize = 320;
/// A partial message goes out when no more audio came for this long.
const FLUSH_AFTER: Duration = Duration::from_millis(25);
/// Longest one send to the carrier may take.
const SEND_LIMIT: Duration = Duration::from_secs(5);

/// A caller's speech at `rate` as a phone line carries it: low-passed, decimated to 8 kHz and
/// mu-law encoded, as the agent's voice is sent to a carrier.
///
/// # Errors
/// `rate` is not a multiple of 8 kHz this line can decimate from (8, 16, 24 or 48 kHz).
pub fn to_phone_line(speech: &[i16], rate: u32) -> Result<Vec<u8>, String> {
    let phone = ToPhone::new(rate)?.process(speech);
    Ok(crate::audio::encode(Encoding::Mulaw, &phone))
}

/// Twilio's request signature: HMAC-SHA1 of the URL followed by the POST parameters sorted by
/// name (each name then its value), keyed by the account's auth token, in base64.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    use base64::Engine as _;
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `given` is the signature, compared in constant time.
pub(super) fn signature_valid(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    given: Option<&str>,
) -> bool {
    let expected = twilio_signature(auth_token, url, params);
    given.is_some_and(|g| super::token_matches(&expected, g))
}

/// The TwiML that connects a call to our media-stream endpoint, bidirectionally.
pub(super) fn twiml(stream_url: &str) -> String {
    let escaped = stream_url
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Connect><Stream url=\"{escaped}\"/></Connect></Response>\n"
    )
}

/// What to do about a silent caller.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Nudge {
    Reprompt,
    Goodbye,
}

/// The caller's silence after the agent spoke: one re-prompt, then a goodbye and a hang-up.
#[derive(Debug)]
struct Silence {
    after: Option<Duration>,
    /// Since when nobody has spoken (`None` while someone speaks or a reply is live).
    quiet_since: Option<Instant>,
    /// Re-prompts given since the caller last spoke.
    nudged: u8,
    /// The goodbye's response, once it started.
    goodbye: Option<ResponseId>,
    /// A re-prompt or goodbye was asked for and has not started yet.
    pending: bool,
}

impl Silence {
    fn new(after: Option<Duration>) -> Self {
        Silence {
            after,
            quiet_since: Some(Instant::now()),
            nudged: 0,
            goodbye: None,
            pending: false,
        }
    }

    fn enabled(&self) -> bool {
        self.after.is_some()
    }

    /// Notes an engine event; true when the goodbye has been said and the call should end.
    fn on_event(&mut self, event: &EngineEvent, now: Instant) -> bool {
        match event {
            EngineEvent::UserStarted { .. } => {
                self.quiet_since = None;
                self.nudged = 0;
                self.pending = false;
            }
            EngineEvent::Prompting { response } => {
                self.quiet_since = None;
                if self.pending && self.nudged == 2 {
                    self.goodbye = Some(*response);
                }
                self.pending = false;
            }
            EngineEvent::Responding { .. } | EngineEvent::Speculating { .. } => {
                self.quiet_since = None;
            }
            EngineEvent::ResponseEnded { response, .. } => {
                if self.goodbye == Some(*response) {
                    return true;
                }
                self.quiet_since = Some(now);
            }
            _ => {}
        }
        false
    }

    /// What to do now, if anything.
    fn due(&mut self, now: Instant) -> Option<Nudge> {
        let after = self.after?;
        let since = self.quiet_since?;
        if self.pending || now.saturating_duration_since(since) < after || self.nudged >= 2 {
            return None;
        }
        self.nudged += 1;
        self.pending = true;
        self.quiet_since = None;
        Some(if self.nudged == 1 {
            Nudge::Reprompt
        } else {
            Nudge::Goodbye
        })
    }
}

/// How a call ended, for the log and the metrics.
struct Ending {
    outcome: SessionEnd,
    reason: String,
}

impl Ending {
    /// An ending; `reason` may quote the carrier or a provider, so it is escaped and cut short.
    fn new(outcome: SessionEnd, reason: impl Into<String>) -> Self {
        Self {
            outcome,
            reason: crate::text::Untrusted(&reason.into()).to_string(),
        }
    }

    fn flood(rate: &MessageRate) -> Self {
        warn!(
            limit = rate.per_second(),
            "the carrier flooded the call with messages; ending it"
        );
        Ending::new(
            SessionEnd::ProtocolError,
            format!("more than {} messages a second", rate.per_second()),
        )
    }
}

/// Sends `text`, or flushes what the writer holds when there is none.
async fn send(writer: &Writer, text: Option<String>) -> Result<(), ()> {
    within_send_limit(async {
        let mut writer = writer.lock().await;
        match text {
            Some(text) => writer.send(Message::Text(Utf8Bytes::from(text))).await,
            None => writer.flush().await,
        }
    })
    .await
}

/// Runs a write to the carrier, bounded by [`SEND_LIMIT`]: a carrier that stops reading ends
/// the call rather than holding it.
async fn within_send_limit<E>(write: impl Future<Output = Result<(), E>>) -> Result<(), ()> {
    match tokio::time::timeout(SEND_LIMIT, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Serves one carrier stream until the call ends.
pub(super) async fn serve(mut socket: WebSocket, state: Arc<State>) {
    let id = uuid::Uuid::new_v4().to_string();
    let span = info_span!("call", session = %id);
    async move {
        state.metrics.session_started();
        let mut rate = MessageRate::new(
            super::MESSAGES_PER_SECOND,
            super::MESSAGE_BURST,
            Instant::now(),
        );
        let ending = match wait_for_start(&mut socket, &state, &mut rate).await {
            Ok(start) => {
                let (writer, reader) = socket.split();
                let writer = Arc::new(tokio::sync::Mutex::new(writer));
                let ending = call(reader, &writer, &state, &id, start, rate).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    writer.lock().await.send(Message::Close(None)).await
                })
                .await;
                ending
            }
            Err(ending) => {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(None)))
                        .await;
                ending
            }
        };
        state.metrics.session_ended(ending.outcome);
        info!(outcome = ending.outcome.as_str(), reason = %ending.reason, "call ended");
    }
    .instrument(span)
    .await
}

/// Waits for the stream's `start`: `connected` and events this endpoint does not use are
/// skipped, anything else ends the stream, and so do the start timeout (counted from the
/// upgrade), a flood and the beginning of a drain.
async fn wait_for_start(
    socket: &mut WebSocket,
    state: &State,
    rate: &mut MessageRate,
) -> Result<StreamStart, Ending> {
    let limit = state.config.start_timeout;
    let mut deadline = std::pin::pin!(tokio::time::sleep(limit));
    loop {
        let message = tokio::select! {
            biased;
            () = state.draining.cancelled() => {
                return Err(Ending::new(SessionEnd::Shutdown, "server shutdown before start"));
            }
            () = &mut deadline => {
                return Err(Ending::new(
                    SessionEnd::ProtocolError,
                    format!("no start within {limit:?} of connecting"),
                ));
            }
            message = socket.recv() => message,
        };
        let message = match message {
            Some(Err(e)) if super::too_big(&e) => {
                return Err(Ending::new(
                    SessionEnd::ProtocolError,
                    "a message over the size limit",
                ));
            }
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                return Err(Ending::new(SessionEnd::ClientClosed, "closed before start"));
            }
            Some(Ok(message)) => message,
        };
        if !rate.admit(Instant::now()) {
            return Err(Ending::flood(rate));
        }
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                return Err(Ending::new(
                    SessionEnd::ProtocolError,
                    "a binary message before start (carriers send JSON text)",
                ));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
        };
        match FromCarrier::parse(&text) {
            Ok(FromCarrier::Start(start)) => return Ok(start),
            Ok(FromCarrier::Connected | FromCarrier::Other(_)) => {}
            Ok(FromCarrier::Media { .. }) => {
                return Err(Ending::new(SessionEnd::ProtocolError, "media before start"));
            }
            // What the message held (a digit may be a PIN) stays out of the log.
            Ok(
                FromCarrier::Mark { .. }
                | FromCarrier::Dtmf { .. }
                | FromCarrier::Error { .. }
                | FromCarrier::Stop,
            ) => {
                debug!("a carrier event before start ignored");
            }
            Err(e) => {
                return Err(Ending::new(
                    SessionEnd::ProtocolError,
                    format!("before start: {e}"),
                ));
            }
        }
    }
}

async fn call(
    mut reader: SplitStream<WebSocket>,
    writer: &Writer,
    state: &State,
    id: &str,
    start: StreamStart,
    mut rate: MessageRate,
) -> Ending {
    let config = &state.config;
    let mut observer = super::Observing::new(config.observer.clone());
    observer.notify(|o| o.call_started(id, &start));
    // Who is calling is the application's business; the log gets the call's ids only.
    info!(
        carrier = start.carrier.as_str(),
        call = %crate::text::Untrusted(&start.call_id),
        parameters = start.parameters.len(),
        "call started"
    );
    if !start.is_mulaw_8k() {
        return Ending::new(
            SessionEnd::ProtocolError,
            format!(
                "unsupported media format {} {} Hz x{}; this endpoint takes audio/x-mulaw (PCMU) 8000 Hz mono",
                start.encoding, start.sample_rate, start.channels
            ),
        );
    }
    let resampler = match ToPhone::new(config.backends.tts.sample_rate()) {
        Ok(r) => r,
        Err(e) => return Ending::new(SessionEnd::ProtocolError, e),
    };
    let mut flux_config = config.flux.clone();
    flux_config.options.encoding = Some(Encoding::Mulaw);
    flux_config.options.sample_rate = Some(PHONE_RATE);
    let recording = super::SessionRecording::start(config, id, &flux_config.options);
    let connector = match &recording {
        Some(r) => r.connector(config.connector.clone()),
        None => config.connector.clone(),
    };
    let (flux, flux_events) = match connect(flux_config, connector).await {
        Ok(pair) => pair,
        Err(e) => {
            return Ending::new(
                SessionEnd::SttFailed,
                format!("speech to text is unavailable: {e}"),
            );
        }
    };
    let (queue, mut outbound) = mpsc::unbounded_channel();
    let line = Arc::new(Line::new(state.metrics.clone()));
    let out = ToCarrier::new(&start);
    let sink = CarrierSink::new(queue, resampler, line.clone(), writer.clone(), out.clear());
    let backends = match &recording {
        Some(r) => r.backends(&config.backends),
        None => config.backends.clone(),
    };
    let (stop, handle, mut events) =
        super::start_engine(state, flux_events, backends, Box::new(sink));
    let log = handle.log();
    let _ = line.log.set(log.clone());
    let prompter = handle.prompter();
    if let Some(greeting) = &config.greeting {
        prompter.prompt(Prompt::Line(greeting.clone()));
    }
    let mut silence = Silence::new(config.reprompt_after);
    let mut silence_check = tokio::time::interval(Duration::from_millis(250));
    let mut turns = super::TurnReports::default();
    let mut finished = std::pin::pin!(handle.finished());
    let mut reorder = Reorder::default();
    let flux_frame_bytes =
        (u128::from(PHONE_RATE) * config.flux.frame.as_millis() / 1000).max(1) as usize;
    let mut inbound = Vec::with_capacity(flux_frame_bytes);
    let mut batch: Vec<u8> = Vec::with_capacity(MESSAGE_BYTES);
    let (mut batch_mark, mut batch_epoch) = (0, 0);
    let mut flush = std::pin::pin!(tokio::time::sleep(Duration::from_secs(3600)));
    let mut flushing = false;
    // Media only: a stream of marks or DTMF alone is idle.
    let mut last_media = Instant::now();
    let mut idle_check = std::pin::pin!(tokio::time::sleep_until(last_media + config.idle_timeout));
    let mut realtime = RealtimeGuard::new(last_media, PHONE_RATE, config.realtime_margin);
    let (mut bad_payloads, mut dtmf) = (0u64, 0u64);
    let mut ending = None;
    let mut flux = Some(flux);
    let outcome = loop {
        tokio::select! {
            biased;
            outcome = &mut finished => break outcome,
            Some(item) = outbound.recv() => {
                let sent = match item {
                    // Written before a clear: never played, and never to be.
                    Out::Audio { epoch, .. } if epoch != line.cut.epoch() => Ok(()),
                    Out::Audio { mulaw, mark, epoch } => {
                        if epoch != batch_epoch {
                            batch.clear();
                            batch_epoch = epoch;
                        }
                        batch.extend_from_slice(&mulaw);
                        batch_mark = mark;
                        if batch.len() >= MESSAGE_BYTES {
                            flushing = false;
                            flush_batch(writer, &out, &mut batch, batch_mark, batch_epoch, &line.cut).await
                        } else {
                            if !flushing {
                                flush.as_mut().reset(Instant::now() + FLUSH_AFTER);
                                flushing = true;
                            }
                            Ok(())
                        }
                    }
                    Out::Clear | Out::FlushClear => {
                        let text = matches!(item, Out::Clear).then(|| out.clear());
                        let sent = send(writer, text).await;
                        // A barge-in's clear, not the one that ends the call.
                        if sent.is_ok() && ending.is_none() && !stop.is_cancelled() {
                            super::clear_written(&state.metrics, &log);
                        }
                        sent
                    }
                };
                if sent.is_err() && ending.is_none() {
                    ending = Some(Ending::new(SessionEnd::ClientClosed, "the carrier stopped reading"));
                    stop.cancel();
                }
            }
            () = &mut flush, if flushing => {
                flushing = false;
                if flush_batch(writer, &out, &mut batch, batch_mark, batch_epoch, &line.cut).await.is_err() && ending.is_none() {
                    ending = Some(Ending::new(SessionEnd::ClientClosed, "the carrier stopped reading"));
                    stop.cancel();
                }
            }
            Some(event) = events.recv() => {
                observer.notify(|o| o.event(id, &event));
                turns.on_event(&event, &log, &state.metrics);
                if silence.on_event(&event, Instant::now()) && ending.is_none() {
                    ending = Some(Ending::new(SessionEnd::Completed, "the caller stayed silent; said goodbye"));
                    stop.cancel();
                }
            }
            _ = silence_check.tick(), if silence.enabled() && ending.is_none() => {
                match silence.due(Instant::now()) {
                    Some(Nudge::Reprompt) => {
                        info!("the caller is silent; re-prompting");
                        prompter.prompt(Prompt::Line(config.reprompt_line.clone()));
                    }
                    Some(Nudge::Goodbye) => {
                        info!("the caller is still silent; saying goodbye");
                        prompter.prompt(Prompt::Line(config.goodbye_line.clone()));
                    }
                    None => {}
                }
            }
            () = &mut idle_check, if ending.is_none() => {
                let due = last_media + config.idle_timeout;
                if due > Instant::now() {
                    idle_check.as_mut().reset(due);
                } else {
                    ending = Some(Ending::new(
                        SessionEnd::ProtocolError,
                        format!("no audio from the carrier for {:?}", config.idle_timeout),
                    ));
                    stop.cancel();
                }
            }
            message = reader.next(), if ending.is_none() => {
                let now = Instant::now();
                if matches!(message, Some(Ok(_))) && !rate.admit(now) {
                    ending = Some(Ending::flood(&rate));
                    stop.cancel();
                    continue;
                }
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => {
                        warn!("binary message from a carrier ignored");
                        continue;
                    }
                    Some(Err(e)) => {
                        let ended = if super::too_big(&e) {
                            Ending::new(SessionEnd::ProtocolError, "a message over the size limit")
                        } else {
                            Ending::new(SessionEnd::ClientClosed, "the stream broke")
                        };
                        ending = Some(ended);
                        stop.cancel();
                        continue;
                    }
                    None | Some(Ok(Message::Close(_))) => {
                        ending = Some(Ending::new(SessionEnd::ClientClosed, "the carrier closed the stream without stop"));
                        stop.cancel();
                        continue;
                    }
                };
                match FromCarrier::parse(&text) {
                    Ok(FromCarrier::Media { chunk, audio, .. }) => {
                        last_media = now;
                        // Mu-law: a byte a sample.
                        if let Err(ahead) = realtime.admit(audio.len() as u64, now) {
                            warn!(ahead_s = ahead.as_secs_f64(), "the carrier's audio runs ahead of real time; ending the call");
                            ending = Some(Ending::new(
                                SessionEnd::ProtocolError,
                                format!(
                                    "audio {:.1} s ahead of real time (the media is not a live call)",
                                    ahead.as_secs_f64()
                                ),
                            ));
                            stop.cancel();
                            continue;
                        }
                        for frame in reorder.push(chunk, audio) {
                            if let Some(r) = &recording {
                                r.user_audio(Encoding::Mulaw, &frame);
                            }
                            inbound.extend_from_slice(&frame);
                        }
                        if inbound.len() >= flux_frame_bytes
                            && let Some(flux) = &flux
                            && flux.send_audio(std::mem::take(&mut inbound)).await.is_err()
                        {
                            debug!("flux no longer takes audio");
                        }
                    }
                    Ok(FromCarrier::Mark { name }) => line.clock().echoed(&name),
                    Ok(FromCarrier::Dtmf { digit }) => {
                        // The digit may be a PIN: it goes to the application, not the log.
                        dtmf += 1;
                        debug!(dtmf, "a key was pressed");
                        observer.notify(|o| o.dtmf(id, &digit));
                    }
                    Ok(FromCarrier::Stop) => {
                        ending = Some(Ending::new(SessionEnd::Completed, "the caller hung up"));
                        stop.cancel();
                    }
                    Ok(FromCarrier::Error { detail }) => {
                        warn!(detail = %crate::text::Untrusted(&detail), "the carrier reported an error");
                    }
                    Ok(FromCarrier::Start(_)) => warn!("a second start ignored"),
                    Ok(FromCarrier::Connected) => {}
                    Ok(FromCarrier::Other(event)) => {
                        debug!(event = %crate::text::Untrusted(&event), "carrier event not used");
                    }
                    Err(carrier::CarrierError::Base64(e)) => {
                        bad_payloads += 1;
                        if bad_payloads.is_power_of_two() {
                            warn!(bad_payloads, error = %crate::text::Untrusted(&e.to_string()), "media with a payload that is not base64 skipped");
                        }
                    }
                    Err(e) => warn!(
                        error = %crate::text::Untrusted(&e.to_string()),
                        "carrier message not understood; the call goes on"
                    ),
                }
            }
        }
    };
    drop(flux.take());
    if let Some(r) = recording {
        r.finish(&log, config.backends.tts.sample_rate()).await;
    }
    if reorder.late + reorder.lost > 0 {
        info!(
            late = reorder.late,
            lost = reorder.lost,
            "caller audio frames out of order"
        );
    }
    ending.unwrap_or_else(|| match outcome.error {
        Some(e) if !state.shutdown.is_cancelled() => {
            Ending::new(SessionEnd::SttFailed, format!("speech to text failed: {e}"))
        }
        _ if state.shutdown.is_cancelled() => Ending::new(SessionEnd::Shutdown, "server shutdown"),
        _ => Ending::new(SessionEnd::Completed, "the session ended"),
    })
}

/// Sends the batched audio and its mark in one write, unless a clear has gone out since it
/// was written (checked while holding the socket, which the interrupter also writes to).
async fn flush_batch(
    writer: &Writer,
    out: &ToCarrier,
    batch: &mut Vec<u8>,
    mark: u64,
    epoch: u64,
    cut: &Cut,
) -> Result<(), ()> {
    if batch.is_empty() {
        return Ok(());
    }
    let media = Message::Text(Utf8Bytes::from(out.media(batch)));
    let mark = Message::Text(Utf8Bytes::from(out.mark(&format!("tf-{mark}"))));
    batch.clear();
    within_send_limit(async {
        let mut writer = writer.lock().await;
        if cut.epoch() != epoch {
            return Ok(());
        }
        writer.feed(media).await?;
        writer.feed(mark).await?;
        writer.flush().await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_signatures_match_the_documented_algorithm() {
        // Known answers computed independently (Python's hmac and hashlib): the example of
        // Twilio's security documentation, and a WebSocket URL without parameters.
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .rev()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            twilio_signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert_eq!(
            twilio_signature("12345", "wss://agent.example/telephony", &[]),
            "DLFKUdMLs9prY+Er7lIRSBC15Wc="
        );
        assert!(!signature_valid(
            "12345",
            "wss://agent.example/telephony",
            &[],
            Some("x")
        ));
        assert!(!signature_valid(
            "12345",
            "wss://agent.example/telephony",
            &[],
            None
        ));
    }

    #[test]
    fn a_silent_caller_is_reprompted_once_then_told_goodbye() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut silence = Silence::new(Some(8 * s));
        let ended = |id| EngineEvent::ResponseEnded {
            response: ResponseId(id),
            heard: "words".into(),
            interrupted: false,
            error: None,
        };
        let prompting = |id| EngineEvent::Prompting {
            response: ResponseId(id),
        };
        // The greeting plays, then the caller says nothing.
        assert!(!silence.on_event(&prompting(1), t0));
        assert_eq!(
            silence.due(t0 + 20 * s),
            None,
            "not while the greeting plays"
        );
        assert!(!silence.on_event(&ended(1), t0 + 2 * s));
        assert_eq!(silence.due(t0 + 9 * s), None);
        assert_eq!(silence.due(t0 + 10 * s), Some(Nudge::Reprompt));
        assert_eq!(silence.due(t0 + 30 * s), None, "one nudge at a time");
        assert!(!silence.on_event(&prompting(2), t0 + 10 * s));
        assert!(!silence.on_event(&ended(2), t0 + 11 * s));
        // The caller answers the re-prompt: the count starts over.
        silence.on_event(
            &EngineEvent::UserStarted {
                turn: 0,
                over_agent: false,
            },
            t0 + 12 * s,
        );
        assert_eq!(
            silence.due(t0 + 40 * s),
            None,
            "not while the caller speaks"
        );
        silence.on_event(&ended(3), t0 + 15 * s);
        assert_eq!(silence.due(t0 + 23 * s), Some(Nudge::Reprompt));
        silence.on_event(&prompting(4), t0 + 23 * s);
        silence.on_event(&ended(4), t0 + 24 * s);
        assert_eq!(silence.due(t0 + 32 * s), Some(Nudge::Goodbye));
        silence.on_event(&prompting(5), t0 + 32 * s);
        assert!(
            silence.on_event(&ended(5), t0 + 34 * s),
            "after the goodbye, hang up"
        );
        let mut off = Silence::new(None);
        assert_eq!(off.due(t0 + 1000 * s), None);
    }

    #[test]
    fn twiml_connects_the_stream() {
        assert_eq!(
            twiml("wss://agent.example/telephony?a=1&b=2"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Connect><Stream url=\"wss://agent.example/telephony?a=1&amp;b=2\"/></Connect></Response>\n"
        );
    }
}
