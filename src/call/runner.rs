//! The call's task: one `select!` loop between the transport, the engine and the deadlines.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use super::farewell::{Farewell, Leave};
use super::guards::{MessageRate, RealtimeGuard};
use super::playback::{Clock, Playback};
use super::recording::CallRecording;
use super::silence::{Nudge, Silence};
use super::transport::{CutNow, CutWritten, Gone, PlaybackClock};
use super::turns::TurnReports;
use super::{
    CallObserver, EndError, Ending, FaultKind, Inbound, Outbound, SessionEnd, Settings, Speech,
    Start, Transport,
};
use crate::engine::log::{EventLog, LogKind};
use crate::engine::{AudioSink, EngineEvent, Interrupter, Prompt, start_session};
use crate::flux::{TurnEvent, connect};

/// Agent audio frames queued for the transport at most (one second of 20 ms frames); beyond
/// it the far end is not reading and frames are dropped.
const AUDIO_QUEUE_FRAMES: usize = 50;
/// Longest one write to the far end may take before it counts as gone.
const SEND_LIMIT: Duration = Duration::from_secs(5);
/// Longest the ending may take: closing Flux, telling the far end.
const END_LIMIT: Duration = Duration::from_secs(1);
/// A partial chunk of agent audio goes out when no more came for this long.
const FLUSH_AFTER: Duration = Duration::from_millis(25);
/// How often the silence policy is asked whether a nudge is due.
const SILENCE_CHECK: Duration = Duration::from_millis(250);
/// Longest a carrier may take to accept a transfer.
const TRANSFER_LIMIT: Duration = Duration::from_secs(10);
/// Said when a transfer the agent announced did not happen.
const TRANSFER_FAILED: &str =
    "Sorry, I couldn't transfer you right now. Can I help you with something else?";

/// One conversation: run it over a transport with [`Call::run`].
pub struct Call {
    id: String,
    settings: Arc<Settings>,
    observer: Option<Arc<dyn CallObserver>>,
    shutdown: CancellationToken,
    draining: Option<CancellationToken>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("id", &self.id)
            .field("settings", &self.settings)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Call {
    /// A conversation named `id` (in logs, recordings and what the observer is told), with
    /// `settings` (shared: a server makes them once for all its calls).
    pub fn new(id: impl Into<String>, settings: impl Into<Arc<Settings>>) -> Self {
        Call {
            id: id.into(),
            settings: settings.into(),
            observer: None,
            shutdown: CancellationToken::new(),
            draining: None,
        }
    }

    /// Tells `observer` about the conversation as it happens.
    pub fn observed_by(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Ends the conversation when `shutdown` is cancelled: the reply in progress is cut and
    /// the far end told `shutdown`.
    pub fn stopped_by(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Ends the wait for the start when `draining` is cancelled (a conversation under way
    /// goes on); by default the shutdown token does.
    pub fn draining_with(mut self, draining: CancellationToken) -> Self {
        self.draining = Some(draining);
        self
    }

    /// Runs the conversation over `transport` to its end, tells the far end how it ended
    /// ([`Transport::finish`]) and returns that.
    ///
    /// # Cancellation safety
    /// Not cancel-safe: dropping it drops the engine session and the Flux connection
    /// without telling the far end. Cancel the shutdown token instead.
    pub async fn run<T: Transport>(self, transport: &mut T) -> Ending {
        let mut rate = MessageRate::new(
            self.settings.limits.messages_per_second,
            self.settings.limits.message_burst,
            Instant::now(),
        );
        let ending = 'ended: {
            // Matched in its own statement: the start's result is gone before the conversation.
            let start = match self.wait_for_start(transport, &mut rate).await {
                Ok(start) => start,
                Err(ending) => break 'ended ending,
            };
            self.converse(transport, start, rate).await
        };
        let _ = tokio::time::timeout(END_LIMIT, transport.finish(&ending)).await;
        ending
    }

    /// Waits for [`Inbound::Start`]; anything but pings first ends the call, and so do the
    /// start deadline (counted from the beginning, whatever arrives meanwhile), a flood and
    /// the beginning of a drain.
    async fn wait_for_start<T: Transport>(
        &self,
        transport: &mut T,
        rate: &mut MessageRate,
    ) -> Result<Start, Ending> {
        let limit = self.settings.limits.start_timeout;
        let draining = self.draining.as_ref().unwrap_or(&self.shutdown);
        let mut deadline = std::pin::pin!(tokio::time::sleep(limit));
        loop {
            let received = tokio::select! {
                biased;
                () = draining.cancelled() => {
                    return Err(Ending::new(SessionEnd::Shutdown, "shutdown before start"));
                }
                () = &mut deadline => {
                    return Err(Ending::fault(EndError::new(
                        "idle",
                        format!("no start message within {limit:?} of connecting"),
                        FaultKind::Policy,
                    )));
                }
                received = transport.recv() => received,
            };
            let item = match received {
                Err(error) => return Err(Ending::fault(error)),
                Ok(None) => {
                    return Err(Ending::new(SessionEnd::ClientClosed, "closed before start"));
                }
                Ok(Some(item)) => item,
            };
            if !rate.admit(Instant::now()) {
                return Err(flood(rate));
            }
            match item {
                Inbound::Start(start) => return Ok(start),
                Inbound::Other => {}
                Inbound::Audio(_) => {
                    return Err(Ending::fault(EndError::new(
                        "not_started",
                        "audio before the start message",
                        FaultKind::Unsupported,
                    )));
                }
                _ => {
                    return Err(Ending::fault(EndError::new(
                        "not_started",
                        "the first message must be start",
                        FaultKind::Policy,
                    )));
                }
            }
        }
    }

    async fn converse<T: Transport>(
        &self,
        transport: &mut T,
        start: Start,
        mut rate: MessageRate,
    ) -> Ending {
        let settings = &self.settings;
        let limits = settings.limits;
        let observer = self.observer.clone();
        let input = start.input;
        let Some(bytes_per_sample) = input.encoding.bytes_per_sample() else {
            return Ending::fault(EndError::new(
                "unsupported_audio",
                format!(
                    "{} audio; a call takes sample-based audio (linear16, mulaw, alaw)",
                    input.encoding.as_str()
                ),
                FaultKind::Unsupported,
            ));
        };
        let mut options = settings.flux.options.clone();
        options.encoding = Some(input.encoding);
        options.sample_rate = Some(input.sample_rate);
        let recording = CallRecording::start(settings, &self.id, &options);
        let connecting = {
            let mut flux_config = settings.flux.clone();
            flux_config.options = options;
            let connector = match &recording {
                Some(r) => r.connector(settings.connector.clone()),
                None => settings.connector.clone(),
            };
            // On the heap while it runs: the handshake's state would otherwise be part of
            // every call's task for its whole life.
            Box::pin(connect(flux_config, connector))
        };
        let (flux, flux_events) = match connecting.await {
            Ok(pair) => pair,
            Err(e) => {
                // The provider's words stay in the log: they can quote the request or the key.
                warn!(error = %crate::text::Untrusted(&e.to_string()), "speech to text unavailable");
                let mut ending = Ending::failed(
                    SessionEnd::SttFailed,
                    "speech to text unavailable",
                    EndError::new(
                        "stt_unavailable",
                        "speech to text is unavailable; try again later",
                        FaultKind::Internal,
                    ),
                );
                ending.flux_error = Some(e);
                return ending;
            }
        };
        let output_rate = settings.backends.tts.sample_rate();
        let clock = match transport.playback_clock() {
            PlaybackClock::Written => Clock::Written,
            PlaybackClock::Reports => Clock::Reports(None),
            PlaybackClock::Marks => Clock::Marks {
                confirmed: 0,
                settled: 0,
            },
        };
        let playback = Arc::new(Mutex::new(Playback::new(clock, output_rate)));
        let (queue, mut outbound) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let interrupter = Arc::new(CallInterrupter {
            playback: playback.clone(),
            cutter: transport.cutter(),
            queue: queue.clone(),
            log: OnceLock::new(),
            observer: observer.clone(),
        });
        let sink = CallSink {
            queue,
            queued: queued.clone(),
            dropped: dropped.clone(),
            playback: playback.clone(),
            interrupter: interrupter.clone(),
            observer: observer.clone(),
        };
        let backends = match &recording {
            Some(r) => r.backends(&settings.backends),
            None => settings.backends.clone(),
        };
        let stop = self.shutdown.child_token();
        let (handle, mut events) = start_session(
            settings.session.clone(),
            flux_events,
            backends,
            Box::new(sink),
            stop.clone(),
        );
        let log = handle.log();
        let _ = interrupter.log.set(log.clone());
        if let Some(o) = &observer {
            o.session_started(&self.id, &log);
        }
        let prompter = handle.prompter();
        if let Some(greeting) = &settings.greeting {
            prompter.prompt(Prompt::Line(greeting.clone()));
        }
        let mut finished = std::pin::pin!(handle.finished());
        let mut ending = None;
        let ready = Outbound::Ready {
            call: &self.id,
            input,
            output_rate,
        };
        if send(transport, ready).await.is_err() {
            ending = Some(Ending::new(SessionEnd::ClientClosed, "gone before ready"));
            stop.cancel();
        }
        info!(
            encoding = input.encoding.as_str(),
            sample_rate = input.sample_rate,
            "conversation started"
        );

        let flux_stats = flux.stats();
        let mut flux = Some(flux);
        let mut closing: Option<tokio::task::JoinHandle<()>> = None;
        let flux_frame_bytes = (u128::from(input.sample_rate)
            * bytes_per_sample as u128
            * settings.flux.frame.as_millis()
            / 1000)
            .max(bytes_per_sample as u128) as usize;
        let mut to_flux = bytes::BytesMut::with_capacity(flux_frame_bytes);
        let chunk_samples =
            ((u128::from(output_rate) * transport.chunk().as_millis() / 1000) as usize).max(1);
        let mut chunk: Vec<i16> = Vec::new();
        let (mut chunk_end, mut chunk_epoch) = (0, 0);
        let mut flush = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut flushing = false;
        let mut turns = TurnReports::default();
        let mut silence = Silence::new(settings.silence.as_ref().map(|s| s.after));
        let mut farewell = Farewell::default();
        let mut silence_check = tokio::time::interval(SILENCE_CHECK);
        let mut guard =
            RealtimeGuard::new(Instant::now(), input.sample_rate, limits.realtime_margin);
        let idle = limits.idle_timeout;
        // Audio only: a far end that sends nothing but pings or playback reports is idle.
        let mut last_audio = Instant::now();
        let mut idle_check = std::pin::pin!(tokio::time::sleep_until(later(last_audio, idle)));
        let mut finish_by = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut stopping = false;
        let (mut after_stop, mut dtmf) = (0u64, 0u64);
        let outcome = loop {
            tokio::select! {
                biased;
                outcome = &mut finished => break outcome,
                Some(item) = outbound.recv() => {
                    let sent = match item {
                        Queued::Audio { pcm, end, epoch } => {
                            queued.fetch_sub(1, Ordering::Relaxed);
                            let current = playback.lock().expect("playback lock").is_current(epoch);
                            if ending.is_some() || !current {
                                continue;
                            }
                            if epoch != chunk_epoch {
                                chunk.clear();
                                chunk_epoch = epoch;
                            }
                            // A whole chunk as playout wrote it (a browser's 20 ms) goes out
                            // without a copy.
                            let whole = chunk.is_empty() && pcm.len() >= chunk_samples;
                            if !whole {
                                chunk.extend_from_slice(&pcm);
                                chunk_end = end;
                            }
                            if whole {
                                flushing = false;
                                let speech = Speech::new(&pcm, end, epoch, &playback);
                                send(transport, Outbound::Audio(speech)).await
                            } else if chunk.len() >= chunk_samples {
                                flushing = false;
                                let speech = Speech::new(&chunk, chunk_end, chunk_epoch, &playback);
                                let sent = send(transport, Outbound::Audio(speech)).await;
                                chunk.clear();
                                sent
                            } else {
                                if !flushing {
                                    flush.as_mut().reset(Instant::now() + FLUSH_AFTER);
                                    flushing = true;
                                }
                                Ok(())
                            }
                        }
                        Queued::Clear | Queued::FlushClear if ending.is_some() => continue,
                        clear @ (Queued::Clear | Queued::FlushClear) => {
                            let item = match clear {
                                Queued::Clear => Outbound::Clear,
                                _ => Outbound::FlushClear,
                            };
                            let sent = send(transport, item).await;
                            // A barge-in's clear, not the one of a call being stopped.
                            if sent.is_ok() && !stop.is_cancelled() {
                                clear_sent(observer.as_deref(), &log);
                            }
                            sent
                        }
                    };
                    if sent.is_err() {
                        warn!("the far end stopped reading; ending the call");
                        ending = Some(Ending::new(SessionEnd::ClientClosed, "the far end stopped reading"));
                        stop.cancel();
                    }
                }
                () = &mut flush, if flushing => {
                    flushing = false;
                    let current = playback.lock().expect("playback lock").is_current(chunk_epoch);
                    if ending.is_none() && current && !chunk.is_empty() {
                        let speech = Speech::new(&chunk, chunk_end, chunk_epoch, &playback);
                        if send(transport, Outbound::Audio(speech)).await.is_err() {
                            warn!("the far end stopped reading; ending the call");
                            ending = Some(Ending::new(SessionEnd::ClientClosed, "the far end stopped reading"));
                            stop.cancel();
                        }
                    }
                    chunk.clear();
                }
                Some(event) = events.recv() => {
                    let done = note(observer.as_deref(), &self.id, &event, &mut turns, &log);
                    if silence.on_event(&event, Instant::now()) && ending.is_none() {
                        ending = Some(Ending::new(SessionEnd::Completed, "the user stayed silent; said goodbye"));
                        stop.cancel();
                    }
                    match farewell.on_event(&event) {
                        Some(Leave::End) if ending.is_none() => {
                            info!("the agent ended the call after its goodbye");
                            ending = Some(Ending::new(SessionEnd::Completed, "the agent ended the call"));
                            stop.cancel();
                        }
                        Some(Leave::Transfer) if ending.is_none() => {
                            let transferred = match &settings.transfer_to {
                                Some(to) => tokio::time::timeout(TRANSFER_LIMIT, transport.transfer(to))
                                    .await
                                    .unwrap_or_else(|_| Err(format!("no answer within {TRANSFER_LIMIT:?}"))),
                                None => Err("no number to transfer to is configured".to_owned()),
                            };
                            match transferred {
                                Ok(()) => {
                                    info!("the caller was transferred");
                                    ending = Some(Ending::new(SessionEnd::Completed, "transferred to a person"));
                                    stop.cancel();
                                }
                                Err(reason) => {
                                    warn!(%reason, "the transfer failed; the call goes on");
                                    prompter.prompt(Prompt::Line(TRANSFER_FAILED.to_owned()));
                                }
                            }
                        }
                        _ => {}
                    }
                    if ending.is_none() && forward(transport, &event, &done).await.is_err() {
                        ending = Some(Ending::new(SessionEnd::ClientClosed, "the far end stopped reading"));
                        stop.cancel();
                    }
                }
                _ = silence_check.tick(), if silence.enabled() && ending.is_none() => {
                    let policy = settings.silence.as_ref().expect("enabled by a policy");
                    match silence.due(Instant::now()) {
                        Some(Nudge::Reprompt) => {
                            info!("the user is silent; re-prompting");
                            prompter.prompt(Prompt::Line(policy.reprompt.clone()));
                        }
                        Some(Nudge::Goodbye) => {
                            info!("the user is still silent; saying goodbye");
                            prompter.prompt(Prompt::Line(policy.goodbye.clone()));
                        }
                        None => {}
                    }
                }
                () = &mut idle_check, if ending.is_none() && !stopping => {
                    // One timer, moved only when it fires: resetting it on each of the fifty
                    // messages a second would cost more than the check.
                    let due = later(last_audio, idle);
                    if due > Instant::now() {
                        idle_check.as_mut().reset(due);
                    } else {
                        ending = Some(Ending::fault(EndError::new(
                            "idle",
                            format!("no audio received for {idle:?}"),
                            FaultKind::Policy,
                        )));
                        stop.cancel();
                    }
                }
                () = &mut finish_by, if stopping && ending.is_none() => {
                    warn!(
                        limit = ?limits.finish_timeout,
                        "the reply in progress at stop ran past the finish timeout; ending the call"
                    );
                    ending = Some(Ending::new(SessionEnd::Completed, "stopped; the reply ran past the finish timeout"));
                    stop.cancel();
                }
                received = transport.recv(), if ending.is_none() => {
                    let now = Instant::now();
                    let item = match received {
                        Err(error) => {
                            ending = Some(Ending::fault(error));
                            stop.cancel();
                            continue;
                        }
                        Ok(None) => {
                            ending = Some(Ending::new(SessionEnd::ClientClosed, "the far end went away without stop"));
                            stop.cancel();
                            continue;
                        }
                        Ok(Some(item)) => item,
                    };
                    if !rate.admit(now) {
                        ending = Some(flood(&rate));
                        stop.cancel();
                        continue;
                    }
                    match item {
                        // The user's audio ended with stop: nothing more reaches Flux or memory.
                        Inbound::Audio(_) if stopping => after_stop += 1,
                        Inbound::Audio(audio) => {
                            if let Err(error) = admit_audio(&audio, bytes_per_sample, &limits, &mut guard, now) {
                                ending = Some(Ending::fault(error));
                                stop.cancel();
                                continue;
                            }
                            last_audio = now;
                            if let Some(r) = &recording {
                                r.user_audio(input.encoding, &audio);
                            }
                            // The Flux client sends whole frames; handing it whole frames
                            // wakes its task once per frame instead of once per message.
                            to_flux.extend_from_slice(&audio);
                            if to_flux.len() >= flux_frame_bytes
                                && let Some(flux) = &flux
                                && flux.send_audio(to_flux.split().freeze()).await.is_err()
                            {
                                debug!("flux no longer takes audio");
                            }
                        }
                        Inbound::Playing { samples, buffered } => {
                            playback.lock().expect("playback lock").playing(samples, buffered, now);
                        }
                        Inbound::PlayedTo(end) => playback.lock().expect("playback lock").played_to(end),
                        Inbound::Dtmf(digit) => {
                            // The digit may be a PIN: it goes to the application, not the log.
                            dtmf += 1;
                            debug!(dtmf, "a key was pressed");
                            if let Some(o) = &observer {
                                o.dtmf(&self.id, &digit);
                            }
                        }
                        Inbound::Stop if stopping => {}
                        Inbound::Stop => {
                            stopping = true;
                            finish_by.as_mut().reset(later(now, limits.finish_timeout));
                            // Ends the user's audio; the call finishes the turn in progress.
                            if let Some(flux) = flux.take() {
                                let rest = to_flux.split().freeze();
                                // Owned by this task: awaited (bounded) when the call ends.
                                closing = Some(tokio::spawn(async move {
                                    if !rest.is_empty() {
                                        let _ = flux.send_audio(rest).await;
                                    }
                                    if let Err(e) = flux.close().await {
                                        debug!(error = %e, "flux close");
                                    }
                                }.in_current_span()));
                            }
                        }
                        Inbound::HungUp => {
                            ending = Some(Ending::new(SessionEnd::Completed, "the user hung up"));
                            stop.cancel();
                        }
                        Inbound::Start(_) => {
                            ending = Some(Ending::fault(EndError::new(
                                "invalid",
                                "start was already received",
                                FaultKind::Policy,
                            )));
                            stop.cancel();
                        }
                        Inbound::Other => {}
                    }
                }
            }
        };
        // What the session said as it finished: the select saw the finish first.
        while let Ok(event) = events.try_recv() {
            let done = note(observer.as_deref(), &self.id, &event, &mut turns, &log);
            if ending.is_none() && forward(transport, &event, &done).await.is_err() {
                ending = Some(Ending::new(
                    SessionEnd::ClientClosed,
                    "the far end stopped reading",
                ));
            }
        }
        // The call is over: its Flux connection closes now, releasing the provider's slot.
        drop(flux);
        if let Some(mut task) = closing
            && tokio::time::timeout(END_LIMIT, &mut task).await.is_err()
        {
            task.abort();
        }
        if let Some(r) = recording {
            r.finish(&log, output_rate).await;
        }
        if let Some(o) = &observer {
            let reconnected = flux_stats.reconnects.load(Ordering::Relaxed);
            let failed = flux_stats.reconnect_failures.load(Ordering::Relaxed);
            if reconnected + failed > 0 {
                o.flux_outages(
                    reconnected,
                    failed,
                    Duration::from_millis(flux_stats.offline_ms.load(Ordering::Relaxed)),
                );
            }
        }
        if after_stop > 0 {
            if let Some(o) = &observer {
                o.audio_after_stop(after_stop);
            }
            info!(frames = after_stop, "audio sent after stop dropped");
        }
        let dropped = dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            warn!(
                dropped,
                "agent audio frames dropped because the far end fell behind"
            );
        }
        let mut ending = ending.unwrap_or_else(|| match &outcome.error {
            Some(e) if !self.shutdown.is_cancelled() => {
                warn!(error = %crate::text::Untrusted(&e.to_string()), "speech to text failed");
                Ending::failed(
                    SessionEnd::SttFailed,
                    "speech to text failed",
                    EndError::new("stt_failed", "speech to text failed", FaultKind::Internal),
                )
            }
            _ if self.shutdown.is_cancelled() => Ending::new(SessionEnd::Shutdown, "shutdown"),
            _ => Ending::new(SessionEnd::Completed, "stopped"),
        });
        ending.turns = turns.started();
        ending.session = Some(outcome);
        ending.log = Some(log);
        ending
    }
}

/// `after` past `from`; a limit too long to add (a way to say "never") is a century away.
fn later(from: Instant, after: Duration) -> Instant {
    from.checked_add(after)
        .unwrap_or_else(|| from + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Writes one item to the far end, bounded by [`SEND_LIMIT`].
async fn send<T: Transport>(transport: &mut T, item: Outbound<'_>) -> Result<(), Gone> {
    match tokio::time::timeout(SEND_LIMIT, transport.send(item)).await {
        Ok(result) => result,
        Err(_) => Err(Gone),
    }
}

/// Tells the observer of `event` and of the turns it completed; returns those turns.
fn note(
    observer: Option<&dyn CallObserver>,
    call: &str,
    event: &EngineEvent,
    turns: &mut TurnReports,
    log: &EventLog,
) -> Vec<crate::report::TurnReport> {
    if let Some(o) = observer {
        o.event(call, event);
        if let EngineEvent::ResponseEnded {
            error: Some(error), ..
        } = event
        {
            o.provider_error(error);
        }
    }
    let done = turns.on_event(event, log);
    if let Some(o) = observer {
        for turn in &done {
            o.turn(call, turn);
        }
    }
    done
}

/// Forwards an engine event and the turns it completed; a provider's failure goes out with a
/// fixed message (the observer had its words).
async fn forward<T: Transport>(
    transport: &mut T,
    event: &EngineEvent,
    turns: &[crate::report::TurnReport],
) -> Result<(), Gone> {
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
    send(transport, Outbound::Event(event)).await?;
    for turn in turns {
        send(transport, Outbound::Turn(turn)).await?;
    }
    Ok(())
}

fn flood(rate: &MessageRate) -> Ending {
    Ending::fault(EndError::new(
        "flood",
        format!(
            "more than {} messages a second; a client sends 50 audio frames and at most 10 \
             playback reports",
            rate.per_second()
        ),
        FaultKind::Policy,
    ))
}

/// Checks one message of the user's audio against the limits.
fn admit_audio(
    audio: &[u8],
    bytes_per_sample: usize,
    limits: &super::Limits,
    guard: &mut RealtimeGuard,
    now: Instant,
) -> Result<(), EndError> {
    if audio.len() > limits.max_audio_bytes {
        return Err(EndError::new(
            "too_big",
            format!(
                "an audio frame of {} bytes; at most {} bytes (send 20 ms frames)",
                audio.len(),
                limits.max_audio_bytes
            ),
            FaultKind::TooBig,
        ));
    }
    if !audio.len().is_multiple_of(bytes_per_sample) {
        return Err(EndError::new(
            "invalid_audio",
            format!(
                "an audio frame of {} bytes; frames of {bytes_per_sample}-byte samples have a \
                 length that is a multiple of {bytes_per_sample}",
                audio.len()
            ),
            FaultKind::Invalid,
        ));
    }
    guard
        .admit((audio.len() / bytes_per_sample) as u64, now)
        .map_err(|ahead| {
            EndError::new(
                "too_fast",
                format!(
                    "audio arrives faster than real time: {:.1} s ahead; send it as it is captured",
                    ahead.as_secs_f64()
                ),
                FaultKind::Policy,
            )
        })
}

/// Tells the observer how long after the StartOfTurn that caused it a clear went out.
fn clear_sent(observer: Option<&dyn CallObserver>, log: &EventLog) {
    let Some(observer) = observer else { return };
    let started = log.last_at(|kind| {
        matches!(
            kind,
            LogKind::Flux {
                event: TurnEvent::StartOfTurn,
                ..
            }
        )
    });
    if let Some(at) = started {
        observer.clear_sent(Instant::now().saturating_duration_since(at));
    }
}

/// What playout and the interrupter queue for the call's task, in order.
enum Queued {
    Audio { pcm: Vec<i16>, end: u64, epoch: u64 },
    Clear,
    FlushClear,
}

/// Where the engine's playout writes: frames are queued for the call's task without
/// waiting, and the transport's playback clock decides what was heard.
struct CallSink {
    queue: mpsc::UnboundedSender<Queued>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    playback: Arc<Mutex<Playback>>,
    interrupter: Arc<CallInterrupter>,
    observer: Option<Arc<dyn CallObserver>>,
}

impl AudioSink for CallSink {
    fn write(&mut self, frame: &[i16]) {
        let written = self
            .playback
            .lock()
            .expect("playback lock")
            .write(frame.len() as u64);
        let Some((epoch, end)) = written else { return };
        if self.queued.load(Ordering::Relaxed) >= AUDIO_QUEUE_FRAMES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        let _ = self.queue.send(Queued::Audio {
            pcm: frame.to_vec(),
            end,
            epoch,
        });
    }

    fn clear(&mut self) {
        let cleared = self.playback.lock().expect("playback lock").clear();
        if let Some(o) = &self.observer {
            o.cut_decided_by(cleared.clock);
        }
        if cleared.send {
            let _ = self.queue.send(Queued::Clear);
        }
    }

    fn played(&self) -> Option<u64> {
        self.playback
            .lock()
            .expect("playback lock")
            .heard(Instant::now())
    }

    fn interrupter(&self) -> Option<Arc<dyn Interrupter>> {
        Some(self.interrupter.clone())
    }
}

/// Cuts the far end off from the engine's task the moment a barge-in is decided: through
/// the transport's [`CutNow`] when it has one and the connection is free, else first in the
/// call's queue after audio that is now stale.
struct CallInterrupter {
    playback: Arc<Mutex<Playback>>,
    cutter: Option<Arc<dyn CutNow>>,
    queue: mpsc::UnboundedSender<Queued>,
    /// The call's log, set once the session starts: a clear is timed from the StartOfTurn.
    log: OnceLock<EventLog>,
    observer: Option<Arc<dyn CallObserver>>,
}

impl Interrupter for CallInterrupter {
    fn interrupt(&self) {
        self.playback.lock().expect("playback lock").interrupt();
        let written = self
            .cutter
            .as_ref()
            .map_or(CutWritten::NotNow, |c| c.cut_now());
        match written {
            CutWritten::Sent => {
                if let Some(log) = self.log.get() {
                    clear_sent(self.observer.as_deref(), log);
                }
            }
            CutWritten::Started => {
                let _ = self.queue.send(Queued::FlushClear);
            }
            CutWritten::NotNow => {
                let _ = self.queue.send(Queued::Clear);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU8;

    use super::*;

    /// A connection that answers each cut as it is told to.
    struct Cutter(AtomicU8);

    impl Cutter {
        fn answer(&self, written: CutWritten) {
            let n = match written {
                CutWritten::Sent => 0,
                CutWritten::Started => 1,
                CutWritten::NotNow => 2,
            };
            self.0.store(n, Ordering::SeqCst);
        }
    }

    impl CutNow for Cutter {
        fn cut_now(&self) -> CutWritten {
            match self.0.load(Ordering::SeqCst) {
                0 => CutWritten::Sent,
                1 => CutWritten::Started,
                _ => CutWritten::NotNow,
            }
        }
    }

    /// What the call's task would send next, in order: current audio, and clears.
    fn sendable(
        queue: &mut mpsc::UnboundedReceiver<Queued>,
        playback: &Mutex<Playback>,
    ) -> Vec<String> {
        std::iter::from_fn(|| queue.try_recv().ok())
            .filter_map(|item| match item {
                Queued::Audio { end, epoch, .. } => playback
                    .lock()
                    .unwrap()
                    .is_current(epoch)
                    .then(|| format!("audio to {end}")),
                Queued::Clear => Some("clear".into()),
                Queued::FlushClear => Some("flush".into()),
            })
            .collect()
    }

    #[test]
    fn a_barge_in_cuts_at_once_and_nothing_written_before_it_goes_out_after() {
        let frame = [1000i16; 320];
        let clock = Clock::Marks {
            confirmed: 0,
            settled: 0,
        };
        let playback = Arc::new(Mutex::new(Playback::new(clock, 16000)));
        let (queue, mut outbound) = mpsc::unbounded_channel();
        let cutter = Arc::new(Cutter(AtomicU8::new(0)));
        let interrupter = Arc::new(CallInterrupter {
            playback: playback.clone(),
            cutter: Some(cutter.clone()),
            queue: queue.clone(),
            log: OnceLock::new(),
            observer: None,
        });
        let mut sink = CallSink {
            queue,
            queued: Arc::default(),
            dropped: Arc::default(),
            playback: playback.clone(),
            interrupter: interrupter.clone(),
            observer: None,
        };
        let interrupter = sink.interrupter().expect("every call can be cut off");
        for _ in 0..3 {
            sink.write(&frame);
        }
        playback.lock().unwrap().played_to(320);
        // Still queued when the barge-in comes: the connection wrote the clear at once.
        let stale: Vec<_> = std::iter::from_fn(|| outbound.try_recv().ok()).collect();
        interrupter.interrupt();
        let current = |item: &Queued| match item {
            Queued::Audio { epoch, .. } => playback.lock().unwrap().is_current(*epoch),
            _ => true,
        };
        assert!(
            stale.iter().all(|item| !current(item)),
            "the audio queued before the cut is never sent"
        );
        sink.write(&frame);
        assert_eq!(
            sendable(&mut outbound, &playback),
            Vec::<String>::new(),
            "a frame playout writes before its clear is dropped, and no second clear is asked for"
        );
        // The carrier echoes the marks the clear dropped.
        playback.lock().unwrap().played_to(640);
        playback.lock().unwrap().played_to(960);
        assert_eq!(
            sink.played(),
            Some(320),
            "only what played before the clear"
        );
        sink.clear();
        assert_eq!(sendable(&mut outbound, &playback), Vec::<String>::new());
        sink.write(&frame);
        assert_eq!(
            sendable(&mut outbound, &playback),
            ["audio to 1600"],
            "the next reply is sent, its running count over everything written"
        );

        // The connection is busy: the clear goes first in the call's queue.
        cutter.answer(CutWritten::NotNow);
        sink.write(&frame);
        interrupter.interrupt();
        sink.clear();
        assert_eq!(sendable(&mut outbound, &playback), ["clear"]);

        // The connection took the clear but could not pass it on: the call's task flushes.
        cutter.answer(CutWritten::Started);
        interrupter.interrupt();
        sink.clear();
        assert_eq!(sendable(&mut outbound, &playback), ["flush"]);

        // A cut that was no barge-in (a speculation cancelled, a call ending mid-reply):
        // playout's clear asks for one.
        sink.write(&frame);
        sink.clear();
        assert_eq!(sendable(&mut outbound, &playback), ["clear"]);
    }

    #[test]
    fn a_far_end_that_stops_reading_loses_frames_beyond_a_second_not_the_engine() {
        let playback = Arc::new(Mutex::new(Playback::new(Clock::Written, 16000)));
        let (queue, mut outbound) = mpsc::unbounded_channel();
        let interrupter = Arc::new(CallInterrupter {
            playback: playback.clone(),
            cutter: None,
            queue: queue.clone(),
            log: OnceLock::new(),
            observer: None,
        });
        let dropped = Arc::new(AtomicU64::new(0));
        let mut sink = CallSink {
            queue,
            queued: Arc::default(),
            dropped: dropped.clone(),
            playback: playback.clone(),
            interrupter,
            observer: None,
        };
        for _ in 0..AUDIO_QUEUE_FRAMES + 10 {
            sink.write(&[0; 320]);
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 10);
        assert_eq!(sendable(&mut outbound, &playback).len(), AUDIO_QUEUE_FRAMES);
        sink.interrupter().unwrap().interrupt();
        assert_eq!(
            sendable(&mut outbound, &playback),
            ["clear"],
            "without a cutter the clear is queued"
        );
    }
}
