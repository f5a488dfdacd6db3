//! A recorded session run again on tokio's paused clock (`turnflow replay`).
//!
//! The real Flux client and the real engine run; what they talk to comes from the recording:
//! - Flux: the turn events re-derived ([`super::derive`]) under the what-if thresholds, each
//!   delivered when the recorded message for the same audio arrived;
//! - the model: each request is answered by the recorded stream for the same last user message
//!   (in order, when one was asked several times), with its recorded timing and content. A
//!   request the recording never made (the what-if asks for another reply) is answered by the
//!   scripted model with the recording's median time to first token and token interval, and
//!   the outcome lists it; a recorded stream that was cancelled before its end ends where the
//!   recording did, and the outcome lists that too;
//! - the voice: likewise by text, replaying the recorded audio and word timings, or the
//!   synthetic voice with the recorded median time to first byte;
//! - the user: the recorded audio, sent in 20 ms chunks at the recorded time.
//!
//! The user does not react to the what-if agent (a recording is fixed): a reply that now comes
//! earlier or later does not move the user's next turn.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::LabError;
use super::derive::{Derivation, Timeline, derive};
use crate::engine::{
    Backends, BargeInPolicy, EngineEvent, Presynthesis, SessionConfig, start_session,
};
use crate::error::{BackendError, ErrorKind};
use crate::flux::messages::{TurnEvent, TurnInfo, TurnTrigger};
use crate::flux::{Connector, Encoding, FluxConfig, ListenOptions, Thresholds, connect};
use crate::llm::{
    LanguageModel, LlmChunk, LlmError, LlmRequest, LlmStream, ScriptedLlm, ToolCall, ToolExecutor,
    ToolSpec, Usage,
};
use crate::recording::{
    LlmEvent, RecordedSettings, Recording, ToolLine, TtsEvent, last_user, recorded_error,
};
use crate::report::Report;
use crate::scenario::{LlmTiming, TtsTiming};
use crate::sim::{RecordingSink, SimulationResult};
use crate::tts::{
    SpeechChunk, SpeechStream, SpeechSynthesizer, SyntheticTts, TtsError, WordTiming,
};
use crate::ws::{ConnectError, ConnectRequest, Connection, WireFrame, channel_pair};

/// The settings a replay runs with.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReplaySettings {
    /// Flux thresholds the events are re-derived with.
    pub thresholds: Thresholds,
    /// Start replies on `EagerEndOfTurn`.
    pub speculation: bool,
    /// Barge-in policy.
    pub barge_in: BargeInPolicy,
    /// What a speculative reply synthesizes before promotion.
    pub presynthesis: Presynthesis,
    /// The system prompt.
    pub system_prompt: Option<String>,
    /// How soon (seconds) after an `EndOfTurn` the user's next word makes the end premature.
    pub premature_window: f64,
}

impl Default for ReplaySettings {
    /// Flux's default thresholds, speculation on, immediate barge-in, the default presynthesis.
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            speculation: true,
            barge_in: BargeInPolicy::Immediate,
            presynthesis: Presynthesis::default(),
            system_prompt: None,
            premature_window: PREMATURE_WINDOW_SECONDS,
        }
    }
}

/// Default premature-end window: a user who speaks again within a second was not done.
pub const PREMATURE_WINDOW_SECONDS: f64 = 1.0;

impl ReplaySettings {
    /// The settings a recording was made with.
    ///
    /// # Errors
    /// [`LabError::Setting`] when its barge-in policy or presynthesis is spelled in a way this
    /// build does not know.
    pub fn recorded(settings: &RecordedSettings) -> Result<Self, LabError> {
        Ok(Self {
            thresholds: Thresholds {
                eager_eot_threshold: settings.eager_eot_threshold,
                eot_threshold: settings.eot_threshold,
                eot_timeout_ms: settings.eot_timeout_ms,
            },
            speculation: settings.speculation,
            barge_in: settings
                .barge_in
                .parse()
                .map_err(|e| LabError::Setting(format!("settings.barge_in: {e}")))?,
            presynthesis: settings
                .presynthesis
                .parse()
                .map_err(|e| LabError::Setting(format!("settings.presynthesis: {e}")))?,
            system_prompt: settings.system_prompt.clone(),
            premature_window: PREMATURE_WINDOW_SECONDS,
        })
    }
}

/// What a replay produced.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplayOutcome {
    /// The same result a simulation gives: report, log, events, audio.
    pub result: SimulationResult,
    /// The recording's Flux ticks, as read.
    pub timeline: Timeline,
    /// The re-derived Flux events and how the turns were taken.
    pub derivation: Derivation,
    /// Requests the recording never made, answered by the scripted model (their last user
    /// message).
    pub generated_replies: Vec<String>,
    /// Sentences the recording never synthesized, spoken by the synthetic voice.
    pub generated_speech: Vec<String>,
    /// Recorded model streams that were cancelled in the recording before the replay was done
    /// with them: the reply ends where the recording did.
    pub cut_short_replies: Vec<String>,
}

/// What replay's stand-ins noticed.
#[derive(Debug, Default)]
struct Notes {
    generated_replies: Vec<String>,
    generated_speech: Vec<String>,
    cut_short_replies: Vec<String>,
}

type SharedNotes = Arc<Mutex<Notes>>;

fn note(notes: &SharedNotes, f: impl FnOnce(&mut Notes)) {
    f(&mut notes.lock().expect("replay notes lock"));
}

/// Replays `recording` under `settings`. Run it on a current-thread runtime with tokio's clock
/// paused: the conversation then takes milliseconds and is the same every time.
///
/// # Errors
/// [`LabError::Replay`] when the replayed session cannot start or fails.
pub async fn replay(
    recording: &Recording,
    settings: &ReplaySettings,
) -> Result<ReplayOutcome, LabError> {
    let failed = |message: String| LabError::Replay {
        path: recording.dir.clone(),
        message,
    };
    let timeline = Timeline::from_flux(&recording.flux);
    let derivation = derive(&timeline, &settings.thresholds, settings.premature_window);
    let origin = Instant::now();
    let notes = SharedNotes::default();
    let flux_server = Arc::new(ReplayFlux::new(&derivation, origin));
    let user_rate = recording.meta.user_sample_rate;
    let options =
        ListenOptions::raw(Encoding::Linear16, user_rate).with_thresholds(settings.thresholds);
    let mut flux_config = FluxConfig::new(options).with_base_url("ws://replay");
    flux_config.api_key = None;
    let (flux, flux_events) = connect(flux_config, flux_server.clone())
        .await
        .map_err(|e| failed(format!("the flux client could not start: {e}")))?;
    let voice_rate = recording.meta.voice_sample_rate;
    let backends = Backends {
        llm: Arc::new(ReplayLlm::new(recording, notes.clone())),
        tts: Arc::new(ReplayTts::new(recording, notes.clone())),
        tools: ReplayTools::of(recording).map(|t| Arc::new(t) as Arc<dyn ToolExecutor>),
    };
    let mut session = SessionConfig::default();
    session.machine.speculation = settings.speculation;
    session.machine.barge_in = settings.barge_in;
    session.machine.system_prompt = settings.system_prompt.clone();
    session.response.presynthesis = settings.presynthesis;
    let sink = RecordingSink::new();
    let (handle, mut engine_events) = start_session(
        session,
        flux_events,
        backends,
        Box::new(sink.clone()),
        CancellationToken::new(),
    );
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<EngineEvent> = Vec::new();
        while let Some(event) = engine_events.recv().await {
            seen.push(event);
        }
        seen
    });
    tokio::time::sleep_until(origin + ms(recording.meta.audio_start_ms)).await;
    let start = Instant::now();
    let chunk = (user_rate / 50).max(1) as usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for piece in recording.user_audio.chunks(chunk) {
        ticker.tick().await;
        if flux
            .send_audio(crate::audio::encode(Encoding::Linear16, piece))
            .await
            .is_err()
        {
            break;
        }
    }
    let closed = flux.close().await;
    let log = handle.log();
    let outcome = handle.finished().await;
    let events = watcher.await.unwrap_or_default();
    flux_server.shutdown().await;
    if let Some(error) = outcome.error {
        return Err(failed(format!("the session failed: {error}")));
    }
    closed.map_err(|e| failed(format!("the flux stream did not close cleanly: {e}")))?;
    let entries = log.entries();
    let notes = std::mem::take(&mut *notes.lock().expect("replay notes lock"));
    Ok(ReplayOutcome {
        result: SimulationResult {
            report: Report::from_log(&entries),
            history: outcome.history,
            log: entries,
            events,
            start,
            user_audio: resample(&recording.user_audio, user_rate, voice_rate),
            agent_frames: sink.take(),
            sample_rate: voice_rate,
            flux_tts: None,
        },
        timeline,
        derivation,
        generated_replies: notes.generated_replies,
        generated_speech: notes.generated_speech,
        cut_short_replies: notes.cut_short_replies,
    })
}

fn ms(value: f64) -> Duration {
    Duration::from_secs_f64((value / 1000.0).max(0.0))
}

/// Linear interpolation from `from` to `to` Hz: for the replay's conversation.wav and timeline
/// (both voices on the voice's rate) and imported audio, never for what Flux hears.
pub(crate) fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() {
        return samples.to_vec();
    }
    let len = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..len)
        .map(|i| {
            let x = i as f64 * step;
            let j = x as usize;
            let frac = x - j as f64;
            let a = f64::from(samples[j.min(samples.len() - 1)]);
            let b = f64::from(samples[(j + 1).min(samples.len() - 1)]);
            (a + (b - a) * frac).round() as i16
        })
        .collect()
}

/// The replayed Flux server: one connection, the derived messages on schedule. It answers
/// `ForceEndTurn` as Flux does: an `EndOfTurn` (trigger `manual`) for the turn in progress, or a
/// warning when none is.
struct ReplayFlux {
    messages: Arc<Vec<(f64, String)>>,
    ticks: Arc<Vec<TurnInfo>>,
    request_id: String,
    origin: Instant,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

fn turn_info_json(info: &TurnInfo) -> String {
    let mut value = serde_json::to_value(info).expect("turn info serializes");
    value["type"] = "TurnInfo".into();
    value.to_string()
}

/// The answer to `ForceEndTurn` after `last`, the latest message delivered.
fn force_end_answer(last: Option<&TurnInfo>) -> String {
    match last {
        Some(info)
            if info.event != TurnEvent::EndOfTurn
                && !(info.event == TurnEvent::Update && info.transcript.is_empty()) =>
        {
            let mut end = info.clone();
            end.event = TurnEvent::EndOfTurn;
            end.trigger = Some(TurnTrigger::Manual);
            turn_info_json(&end)
        }
        _ => serde_json::json!({
            "type": "Warning",
            "code": "FORCE_END_TURN_NO_ACTIVE_TURN",
            "description": "ForceEndTurn received while no turn was in progress.",
        })
        .to_string(),
    }
}

impl ReplayFlux {
    fn new(derivation: &Derivation, origin: Instant) -> Self {
        let request_id = derivation
            .ticks
            .first()
            .map(|t| t.info.request_id.clone())
            .unwrap_or_else(|| "replay".into());
        let connected = serde_json::json!({
            "type": "Connected", "request_id": request_id, "sequence_id": 0
        });
        let mut messages = vec![(0.0, connected.to_string())];
        messages.extend(
            derivation
                .ticks
                .iter()
                .map(|t| (t.arrival_ms, turn_info_json(&t.info))),
        );
        Self {
            messages: Arc::new(messages),
            ticks: Arc::new(derivation.ticks.iter().map(|t| t.info.clone()).collect()),
            request_id,
            origin,
            stop: CancellationToken::new(),
            task: Mutex::new(None),
        }
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        let task = self.task.lock().expect("replay flux lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

#[async_trait]
impl Connector for ReplayFlux {
    async fn connect(&self, _request: &ConnectRequest) -> Result<Connection, ConnectError> {
        let mut task = self.task.lock().expect("replay flux lock");
        if task.is_some() {
            return Err(ConnectError::Io(
                "a replayed flux stream cannot be reconnected (the recording has one timeline)"
                    .into(),
            ));
        }
        let (client, mut server) = channel_pair(64, Some(self.request_id.clone()));
        let messages = self.messages.clone();
        let ticks = self.ticks.clone();
        let origin = self.origin;
        let stop = self.stop.clone();
        *task = Some(tokio::spawn(async move {
            // messages[0] is `Connected`; messages[n] for n >= 1 is ticks[n - 1].
            let mut next = 0;
            loop {
                let due = messages.get(next).map(|(at, _)| origin + ms(*at));
                let reply = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    frame = server.stream.next() => match frame {
                        Some(Ok(WireFrame::Text(text))) if text.contains("CloseStream") => {
                            let _ = server.sink.send(WireFrame::Close(None)).await;
                            break;
                        }
                        Some(Ok(WireFrame::Text(text))) if text.contains("ForceEndTurn") => {
                            force_end_answer(next.checked_sub(2).and_then(|i| ticks.get(i)))
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => break,
                    },
                    () = tokio::time::sleep_until(due.unwrap_or(origin)), if due.is_some() => {
                        next += 1;
                        messages[next - 1].1.clone()
                    }
                };
                if server.sink.send(WireFrame::Text(reply)).await.is_err() {
                    break;
                }
            }
        }));
        Ok(client)
    }
}

/// A recorded stream, steps relative to its request.
#[derive(Debug, Clone)]
struct Recorded<E> {
    key: String,
    opened_after: Option<f64>,
    steps: Vec<(f64, E)>,
    complete: bool,
}

impl<E> Recorded<E> {
    /// Whether the recording has its answer: headers or a refusal. A request the engine
    /// abandoned before either has none.
    fn answered(&self) -> bool {
        self.opened_after.is_some() || !self.steps.is_empty()
    }
}

/// A step of a recorded model or voice stream, as grouping needs to read it.
trait Step: Clone {
    /// The request's key (last user message, or text) when this step is the request.
    fn request_key(&self) -> Option<String>;
    /// The stream opened (headers).
    fn is_opened(&self) -> bool;
    /// The stream's last word: its end or an error.
    fn is_last(&self) -> bool;
    /// The engine dropped the stream.
    fn is_drop(&self) -> bool;
}

impl Step for LlmEvent {
    fn request_key(&self) -> Option<String> {
        match self {
            LlmEvent::Request { last_user, .. } => Some(last_user.clone()),
            _ => None,
        }
    }
    fn is_opened(&self) -> bool {
        matches!(self, LlmEvent::Opened)
    }
    fn is_last(&self) -> bool {
        matches!(self, LlmEvent::End { .. } | LlmEvent::Error { .. })
    }
    fn is_drop(&self) -> bool {
        matches!(self, LlmEvent::Dropped)
    }
}

impl Step for TtsEvent {
    fn request_key(&self) -> Option<String> {
        match self {
            TtsEvent::Request { text } => Some(text.clone()),
            _ => None,
        }
    }
    fn is_opened(&self) -> bool {
        matches!(self, TtsEvent::Opened)
    }
    fn is_last(&self) -> bool {
        matches!(self, TtsEvent::End | TtsEvent::Error { .. })
    }
    fn is_drop(&self) -> bool {
        matches!(self, TtsEvent::Dropped)
    }
}

/// Groups `(t_ms, stream, event)` lines into streams keyed by their request, in request order.
fn group<E: Step>(lines: impl Iterator<Item = (f64, u64, E)>) -> Vec<Recorded<E>> {
    let mut order: Vec<u64> = Vec::new();
    let mut streams: HashMap<u64, (f64, Recorded<E>)> = HashMap::new();
    for (t, id, event) in lines {
        if let Some(key) = event.request_key() {
            order.push(id);
            let stream = Recorded {
                key,
                opened_after: None,
                steps: Vec::new(),
                complete: false,
            };
            streams.insert(id, (t, stream));
            continue;
        }
        let Some((requested, stream)) = streams.get_mut(&id) else {
            continue;
        };
        if event.is_opened() {
            stream.opened_after = Some(t - *requested);
        } else if !event.is_drop() {
            stream.complete |= event.is_last();
            stream.steps.push((t - *requested, event));
        }
    }
    order
        .into_iter()
        .filter_map(|id| streams.remove(&id).map(|(_, s)| s))
        .collect()
}

/// A request the recording shows refused before any stream: its recorded error (`error` reads
/// it from the first step), at its recorded time.
async fn refusal<E>(
    provider: &str,
    requested: Instant,
    steps: Vec<(f64, E)>,
    error: impl Fn(E) -> Option<BackendError>,
) -> BackendError {
    let no_answer = || {
        BackendError::new(
            provider,
            ErrorKind::StreamBroken,
            "the recorded request has no answer",
        )
    };
    let Some((after, event)) = steps.into_iter().next() else {
        return no_answer();
    };
    tokio::time::sleep_until(requested + ms(after)).await;
    error(event).unwrap_or_else(no_answer)
}

/// Takes the first unused recorded stream with `key`.
fn take<E: Clone>(pool: &Mutex<Vec<Option<Recorded<E>>>>, key: &str) -> Option<Recorded<E>> {
    pool.lock()
        .expect("replay pool lock")
        .iter_mut()
        .find(|s| s.as_ref().is_some_and(|s| s.key == key))
        .and_then(Option::take)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// The recorded tools: offered as they were, each call answered with its recorded result
/// after its recorded duration.
struct ReplayTools {
    specs: Vec<ToolSpec>,
    calls: Mutex<Vec<Option<ToolLine>>>,
    /// Each tool's median recorded duration, for calls the recording dropped before they
    /// ended.
    typical: HashMap<String, Duration>,
}

impl ReplayTools {
    /// `None` when the recording offered no tool.
    fn of(recording: &Recording) -> Option<Self> {
        let offered = &recording.meta.settings.tools;
        if offered.is_empty() && recording.tools.is_empty() {
            return None;
        }
        let mut durations: HashMap<String, Vec<f64>> = HashMap::new();
        for line in &recording.tools {
            if let Some(took) = line.took_ms {
                durations.entry(line.tool.clone()).or_default().push(took);
            }
        }
        Some(Self {
            specs: offered
                .iter()
                .map(|t| ToolSpec {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    parameters: t.parameters.clone(),
                    effect: t.effect,
                })
                .collect(),
            calls: Mutex::new(recording.tools.iter().cloned().map(Some).collect()),
            typical: durations
                .into_iter()
                .filter_map(|(tool, took)| {
                    median(took).map(|ms| (tool, Duration::from_secs_f64(ms / 1000.0)))
                })
                .collect(),
        })
    }
}

#[async_trait]
impl ToolExecutor for ReplayTools {
    fn specs(&self) -> Vec<ToolSpec> {
        self.specs.clone()
    }

    async fn call(&self, call: &ToolCall) -> Result<String, String> {
        let recorded = {
            let mut calls = self.calls.lock().expect("replay tools lock");
            let same_id = calls
                .iter()
                .position(|l| l.as_ref().is_some_and(|l| l.call_id == call.id));
            let same_call = || {
                calls.iter().position(|l| {
                    l.as_ref()
                        .is_some_and(|l| l.tool == call.name && l.arguments == call.arguments)
                })
            };
            same_id.or_else(same_call).and_then(|i| calls[i].take())
        };
        let Some(line) = recorded else {
            tracing::warn!(tool = %crate::text::Untrusted(&call.name), "replay: the recording has no such call; the model hears an error");
            return Err(format!(
                "the recording has no call to {} like this one",
                call.name
            ));
        };
        let took = line
            .took_ms
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            .or_else(|| self.typical.get(&line.tool).copied())
            .unwrap_or_default();
        tokio::time::sleep(took).await;
        match (line.result, line.error) {
            (Some(result), _) => Ok(result),
            (None, Some(error)) => Err(error),
            (None, None) => Err(format!("{} did not answer in the recording", call.name)),
        }
    }
}

struct ReplayLlm {
    pool: Mutex<Vec<Option<Recorded<LlmEvent>>>>,
    fallback: ScriptedLlm,
    name: String,
    notes: SharedNotes,
}

impl ReplayLlm {
    fn new(recording: &Recording, notes: SharedNotes) -> Self {
        let streams = group(
            recording
                .llm
                .iter()
                .map(|l| (l.t_ms, l.stream, l.event.clone())),
        );
        let texts = |s: &Recorded<LlmEvent>| -> Vec<f64> {
            s.steps
                .iter()
                .filter(|(_, e)| matches!(e, LlmEvent::Text { .. }))
                .map(|(t, _)| *t)
                .collect()
        };
        let ttft = median(
            streams
                .iter()
                .filter_map(|s| texts(s).first().copied())
                .collect(),
        );
        let interval = median(
            streams
                .iter()
                .filter_map(|s| {
                    let t = texts(s);
                    (t.len() > 1).then(|| (t[t.len() - 1] - t[0]) / (t.len() - 1) as f64)
                })
                .collect(),
        );
        let defaults = LlmTiming::default();
        let timing = LlmTiming {
            ttft_ms: ttft.map_or(defaults.ttft_ms, |v| v.round() as u64),
            token_interval_ms: interval.map_or(defaults.token_interval_ms, |v| v.round() as u64),
        };
        Self {
            pool: Mutex::new(streams.into_iter().map(Some).collect()),
            fallback: ScriptedLlm::new(std::iter::empty(), timing),
            name: recording.meta.settings.llm.clone(),
            notes,
        }
    }
}

#[async_trait]
impl LanguageModel for ReplayLlm {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, LlmError> {
        let requested = Instant::now();
        let last_user = last_user(&request.messages);
        // A request abandoned before its headers in the recording has no answer to replay.
        let Some(recorded) = take(&self.pool, &last_user).filter(Recorded::answered) else {
            note(&self.notes, |n| n.generated_replies.push(last_user));
            return self.fallback.stream(request).await;
        };
        let name = self.name.clone();
        let to_chunk = move |event: LlmEvent| -> Option<Result<LlmChunk, LlmError>> {
            Some(match event {
                LlmEvent::Text { text } => Ok(LlmChunk::Text(text)),
                LlmEvent::ToolCall {
                    id,
                    name,
                    arguments,
                } => Ok(LlmChunk::ToolCall(ToolCall {
                    id,
                    name,
                    arguments,
                })),
                LlmEvent::Usage {
                    input_tokens,
                    output_tokens,
                } => Ok(LlmChunk::Usage(Usage {
                    input_tokens,
                    output_tokens,
                })),
                LlmEvent::End { finish_reason } => Ok(LlmChunk::End { finish_reason }),
                LlmEvent::Error { kind, message } => Err(recorded_error(&name, &kind, message)),
                _ => return None,
            })
        };
        let Some(after) = recorded.opened_after else {
            return Err(refusal(&self.name, requested, recorded.steps, |event| {
                to_chunk(event).and_then(Result::err)
            })
            .await);
        };
        tokio::time::sleep_until(requested + ms(after)).await;
        let complete = recorded.complete;
        let notes = self.notes.clone();
        let key = recorded.key.clone();
        let steps = recorded.steps.into_iter();
        Ok(Box::pin(futures_util::stream::unfold(
            (steps, Some((notes, key))),
            move |(mut steps, mut cut)| {
                let to_chunk = to_chunk.clone();
                async move {
                    loop {
                        let Some((after, event)) = steps.next() else {
                            if !complete && let Some((notes, key)) = cut.take() {
                                note(&notes, |n| n.cut_short_replies.push(key));
                                return Some((
                                    Ok(LlmChunk::End {
                                        finish_reason: Some("recording ended".into()),
                                    }),
                                    (steps, cut),
                                ));
                            }
                            return None;
                        };
                        tokio::time::sleep_until(requested + ms(after)).await;
                        if let Some(chunk) = to_chunk(event) {
                            return Some((chunk, (steps, cut)));
                        }
                    }
                }
            },
        )))
    }
}

struct ReplayTts {
    pool: Mutex<Vec<Option<Recorded<TtsEvent>>>>,
    audio: Arc<Vec<i16>>,
    fallback: SyntheticTts,
    name: String,
    sample_rate: u32,
    notes: SharedNotes,
}

impl ReplayTts {
    fn new(recording: &Recording, notes: SharedNotes) -> Self {
        let streams = group(
            recording
                .tts
                .iter()
                .map(|l| (l.t_ms, l.stream, l.event.clone())),
        );
        let ttfb = median(
            streams
                .iter()
                .filter_map(|s| {
                    s.steps
                        .iter()
                        .find(|(_, e)| matches!(e, TtsEvent::Audio { .. }))
                        .map(|(t, _)| *t)
                })
                .collect(),
        );
        let rate = recording.meta.voice_sample_rate;
        let timing = TtsTiming {
            ttfb_ms: ttfb.map_or(TtsTiming::default().ttfb_ms, |v| v.round() as u64),
            ..TtsTiming::default()
        };
        Self {
            pool: Mutex::new(streams.into_iter().map(Some).collect()),
            audio: Arc::new(recording.tts_audio.clone()),
            fallback: SyntheticTts::new(rate, timing),
            name: recording.meta.settings.tts.clone(),
            sample_rate: rate,
            notes,
        }
    }
}

#[async_trait]
impl SpeechSynthesizer for ReplayTts {
    fn name(&self) -> &str {
        &self.name
    }

    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    async fn synthesize(&self, text: &str) -> Result<SpeechStream, TtsError> {
        let requested = Instant::now();
        let Some(recorded) = take(&self.pool, text).filter(Recorded::answered) else {
            note(&self.notes, |n| n.generated_speech.push(text.to_owned()));
            return self.fallback.synthesize(text).await;
        };
        let name = self.name.clone();
        let audio = self.audio.clone();
        let to_chunk = move |event: TtsEvent| -> Option<Result<SpeechChunk, TtsError>> {
            Some(match event {
                TtsEvent::Audio {
                    offset,
                    samples,
                    words,
                } => Ok(SpeechChunk {
                    samples: audio[offset as usize..(offset + samples) as usize].to_vec(),
                    words: words
                        .into_iter()
                        .map(|(word, start, end)| WordTiming { word, start, end })
                        .collect(),
                    billed: None,
                }),
                TtsEvent::Error { kind, message } => Err(recorded_error(&name, &kind, message)),
                _ => return None,
            })
        };
        let Some(after) = recorded.opened_after else {
            return Err(refusal(&self.name, requested, recorded.steps, |event| {
                to_chunk(event).and_then(Result::err)
            })
            .await);
        };
        tokio::time::sleep_until(requested + ms(after)).await;
        let steps = recorded.steps.into_iter();
        Ok(Box::pin(futures_util::stream::unfold(
            steps,
            move |mut steps| {
                let to_chunk = to_chunk.clone();
                async move {
                    loop {
                        let (after, event) = steps.next()?;
                        tokio::time::sleep_until(requested + ms(after)).await;
                        if let Some(chunk) = to_chunk(event) {
                            return Some((chunk, steps));
                        }
                    }
                }
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_group_by_request_and_an_abandoned_request_has_no_answer() {
        let request = |text: &str| TtsEvent::Request { text: text.into() };
        let lines = vec![
            (0.0, 0, request("Hello.")),
            (5.0, 1, request("Bye.")),
            (40.0, 1, TtsEvent::Opened),
            (
                90.0,
                1,
                TtsEvent::Audio {
                    offset: 0,
                    samples: 320,
                    words: Vec::new(),
                },
            ),
            (95.0, 1, TtsEvent::Dropped),
            (100.0, 2, request("Again.")),
            (
                130.0,
                2,
                TtsEvent::Error {
                    kind: "rate_limited".into(),
                    message: "slow down".into(),
                },
            ),
        ];
        let streams = group(lines.into_iter());
        let keys: Vec<_> = streams.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["Hello.", "Bye.", "Again."]);
        assert!(!streams[0].answered(), "abandoned before its headers");
        assert!(streams[1].answered() && !streams[1].complete);
        assert_eq!(streams[1].opened_after, Some(35.0));
        assert_eq!(streams[1].steps.len(), 1, "the drop is not a step");
        assert!(streams[2].answered() && streams[2].complete);
        assert_eq!(streams[2].steps[0].0, 30.0);
    }

    #[test]
    fn resampling_keeps_the_duration_and_interpolates() {
        assert_eq!(
            resample(&[0, 100, 200, 300], 8000, 16000),
            [0, 50, 100, 150, 200, 250, 300, 300]
        );
        assert_eq!(resample(&[7; 320], 16000, 16000).len(), 320);
        assert_eq!(resample(&[0; 480], 48000, 16000).len(), 160);
    }
}
