//! A whole simulated conversation: the emulator, the real Flux client, the engine with the
//! scripted LLM and synthetic TTS, and a simulated user who speaks the scenario's turns in
//! real time and reacts to the agent (waits for it to finish, or barges in). The conversation
//! is a [`crate::call::Call`] like any other; the simulated user is its transport.
//!
//! Over [`Transport::Socket`] the client reaches the emulator through a WebSocket on
//! 127.0.0.1; over [`Transport::Memory`] through channels, which together with tokio's paused
//! clock gives the same conversation deterministically and in milliseconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::call::{
    AudioFormat, Call, CallObserver, EndError, Ending, Gone, Inbound, Outbound, Settings, Start,
};
use crate::emulator::{EmulatorConfig, EmulatorServer, MemoryEmulator};
use crate::engine::log::LogEntry;
use crate::engine::{AudioSink, Backends, EngineEvent, SessionConfig};
use crate::flux::{
    Connector, Encoding, FluxConfig, FluxError, ListenOptions, Thresholds, WebSocketConnector,
};
use crate::llm::{Message, ScriptedLlm};
use crate::report::Report;
use crate::scenario::{Scenario, TurnStart};
use crate::tts::flux::{FLUX_TTS_MODEL, FluxTtsCounts};
use crate::tts::{FluxTts, SyntheticTts};

/// How the client reaches the emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// A WebSocket on a loopback port.
    Socket,
    /// In-memory channels (use with tokio's paused clock).
    Memory,
}

/// Wraps the connector the simulation uses to reach the emulator.
pub type WrapConnector = fn(Arc<dyn Connector>) -> Arc<dyn Connector>;

/// What to simulate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimulationConfig {
    /// The conversation.
    pub scenario: Arc<Scenario>,
    /// How the client reaches the emulator.
    pub transport: Transport,
    /// Engine settings.
    pub session: SessionConfig,
    /// Flux thresholds (default: the scenario's `listen`).
    pub thresholds: Thresholds,
    /// Sample rate of user and agent audio.
    pub sample_rate: u32,
    /// Silence kept after the last reply.
    pub tail: Duration,
    /// How long the simulated user waits for the agent before speaking anyway.
    pub patience: Duration,
    /// Backends to use instead of the scenario's scripted LLM, `voice` and the demo
    /// restaurant's tools.
    pub backends: Option<Backends>,
    /// The agent's tools when `backends` is not given (default: the demo restaurant's).
    pub tools: Option<Arc<dyn crate::llm::ToolExecutor>>,
    /// The agent's voice when `backends` is not given.
    pub voice: SimulatedVoice,
    /// Receives every engine event as it happens (for live output).
    pub observer: Option<tokio::sync::mpsc::UnboundedSender<EngineEvent>>,
    /// Keep the user and agent audio for `conversation.wav` (off for load runs).
    pub record_audio: bool,
    /// Wraps the connector to the emulator (fault injection, proxies).
    pub wrap_connector: Option<WrapConnector>,
    /// Records the conversation for `turnflow replay`: Flux messages, model and voice streams,
    /// the user's audio. Write it with [`crate::recording::Recorder::write`] afterwards.
    pub recorder: Option<crate::recording::Recorder>,
}

impl SimulationConfig {
    /// Defaults for `scenario`: socket transport, its thresholds and system prompt, 16 kHz.
    pub fn new(scenario: Arc<Scenario>) -> Self {
        let mut session = SessionConfig::default();
        session.machine.system_prompt = scenario.system_prompt.clone();
        Self {
            thresholds: scenario.listen.unwrap_or_default(),
            scenario,
            transport: Transport::Socket,
            session,
            sample_rate: 16000,
            tail: Duration::from_millis(500),
            patience: Duration::from_secs(10),
            backends: None,
            tools: None,
            voice: SimulatedVoice::Synthetic,
            observer: None,
            record_audio: true,
            wrap_connector: None,
            recorder: None,
        }
    }
}

/// Which voice the simulated agent speaks with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimulatedVoice {
    /// The synthetic voice, in process, at the scenario's speaking rate.
    #[default]
    Synthetic,
    /// Flux TTS (`/v2/speak`), served by the same emulator as the listening half.
    FluxTts,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    /// The Flux client failed.
    #[error(transparent)]
    Flux(#[from] FluxError),
    /// The session failed.
    #[error(transparent)]
    Session(#[from] crate::engine::SessionError),
    /// The emulator could not bind its port.
    #[error("cannot start the emulator: {0}")]
    Emulator(#[from] std::io::Error),
    /// The conversation ended before its session started.
    #[error("the conversation ended before it started: {0}")]
    Ended(String),
}

/// Everything a simulation produced.
#[derive(Debug, Clone)]
pub struct SimulationResult {
    /// Per-turn metrics and summary.
    pub report: Report,
    /// The history as the user heard it.
    pub history: Vec<Message>,
    /// The session's event log.
    pub log: Vec<LogEntry>,
    /// Application events, in order.
    pub events: Vec<EngineEvent>,
    /// When the user's first audio was sent.
    pub start: Instant,
    /// Every user sample sent, from `start`.
    pub user_audio: Vec<i16>,
    /// Every agent frame written, with the instant it was written.
    pub agent_frames: Vec<TimedFrame>,
    /// Sample rate of both.
    pub sample_rate: u32,
    /// What the Flux TTS voice saw, when it spoke.
    pub flux_tts: Option<FluxTtsCounts>,
}

impl SimulationResult {
    /// The conversation as [`crate::report::timeline::render`] draws it.
    pub fn conversation(&self) -> crate::report::timeline::Conversation<'_> {
        crate::report::timeline::Conversation {
            start: self.start,
            log: &self.log,
            report: &self.report,
            user_audio: &self.user_audio,
            sample_rate: self.sample_rate,
        }
    }

    /// Stereo PCM, user left and agent right, aligned on the session clock.
    pub fn stereo(&self) -> Vec<i16> {
        let agent = place_frames(&self.agent_frames, self.start, self.sample_rate);
        let len = self.user_audio.len().max(agent.len());
        let mut out = Vec::with_capacity(len * 2);
        for i in 0..len {
            out.push(self.user_audio.get(i).copied().unwrap_or(0));
            out.push(agent.get(i).copied().unwrap_or(0));
        }
        out
    }
}

/// An agent frame and the instant it was written.
pub type TimedFrame = (Instant, Vec<i16>);

/// An [`AudioSink`] that keeps every frame with the instant it was written (or, with `keep`
/// off, only counts as an output).
#[derive(Clone, Default)]
pub struct RecordingSink {
    frames: Arc<Mutex<Vec<TimedFrame>>>,
    keep: bool,
}

impl RecordingSink {
    /// A sink that keeps what it is given.
    pub fn new() -> Self {
        Self {
            frames: Arc::default(),
            keep: true,
        }
    }

    /// Takes the frames written so far.
    pub fn take(&self) -> Vec<TimedFrame> {
        std::mem::take(&mut *self.frames.lock().expect("recording lock"))
    }
}

/// Mono PCM of `frames` placed on a timeline starting at `start`, silence in between.
pub fn place_frames(frames: &[TimedFrame], start: Instant, sample_rate: u32) -> Vec<i16> {
    let rate = f64::from(sample_rate);
    let mut out: Vec<i16> = Vec::new();
    for (at, frame) in frames {
        let offset = (at.saturating_duration_since(start).as_secs_f64() * rate) as usize;
        if out.len() < offset + frame.len() {
            out.resize(offset + frame.len(), 0);
        }
        out[offset..offset + frame.len()].copy_from_slice(frame);
    }
    out
}

impl AudioSink for RecordingSink {
    fn write(&mut self, frame: &[i16]) {
        if self.keep {
            self.frames
                .lock()
                .expect("recording lock")
                .push((Instant::now(), frame.to_vec()));
        }
    }
}

/// What the simulated user knows about the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct AgentState {
    speaking: bool,
    replies_started: u64,
    replies_ended: u64,
}

/// The simulation's view of the conversation: every event kept, the agent's state told to the
/// simulated user, and the events passed on to the caller's observer.
struct Watcher {
    agent: watch::Sender<AgentState>,
    speaking: Mutex<std::collections::HashSet<crate::engine::ResponseId>>,
    seen: Mutex<Vec<EngineEvent>>,
    observer: Option<tokio::sync::mpsc::UnboundedSender<EngineEvent>>,
}

impl CallObserver for Watcher {
    fn event(&self, _call: &str, event: &EngineEvent) {
        match event {
            EngineEvent::AgentSpeaking { response } => {
                self.speaking
                    .lock()
                    .expect("watcher lock")
                    .insert(*response);
                self.agent.send_modify(|a| {
                    a.speaking = true;
                    a.replies_started += 1;
                });
            }
            EngineEvent::ResponseEnded { response, .. }
                if self.speaking.lock().expect("watcher lock").remove(response) =>
            {
                self.agent.send_modify(|a| {
                    a.speaking = false;
                    a.replies_ended += 1;
                });
            }
            _ => {}
        }
        if let Some(o) = &self.observer {
            let _ = o.send(event.clone());
        }
        self.seen.lock().expect("watcher lock").push(event.clone());
    }
}

/// The simulated user as the conversation's transport: its voice in 20 ms chunks, on the
/// transport's own clock, and the agent's frames kept with the instant they were sent.
struct SimulatedUser {
    started: bool,
    stopped: bool,
    sample_rate: u32,
    voice: UserVoice,
    /// The user's clock, from its first audio (once the call is ready for it).
    ticker: Option<(Instant, tokio::time::Interval)>,
    agent: RecordingSink,
}

impl crate::call::Transport for SimulatedUser {
    async fn recv(&mut self) -> Result<Option<Inbound>, EndError> {
        if !std::mem::replace(&mut self.started, true) {
            let format = AudioFormat {
                encoding: Encoding::Linear16,
                sample_rate: self.sample_rate,
            };
            return Ok(Some(Inbound::Start(Start::new(format))));
        }
        if self.stopped {
            return std::future::pending().await;
        }
        let (_, ticker) = self.ticker.get_or_insert_with(|| {
            (
                Instant::now(),
                tokio::time::interval(Duration::from_millis(20)),
            )
        });
        // Cancel-safe: a tick is not lost when the call drops this future, and the chunk is
        // made after it, with nothing awaited.
        ticker.tick().await;
        Ok(Some(match self.voice.next_chunk() {
            Some(samples) => {
                Inbound::Audio(crate::audio::encode(Encoding::Linear16, &samples).into())
            }
            None => {
                self.stopped = true;
                Inbound::Stop
            }
        }))
    }

    async fn send(&mut self, item: Outbound<'_>) -> Result<(), Gone> {
        if let Outbound::Audio(speech) = item {
            self.agent.write(speech.pcm);
        }
        Ok(())
    }

    async fn finish(&mut self, _ending: &Ending) {}
}

/// Runs the scenario to the end.
///
/// # Errors
/// [`SimulationError`] when the emulator cannot start or the client cannot connect.
pub async fn run(config: SimulationConfig) -> Result<SimulationResult, SimulationError> {
    let scenario = config.scenario.clone();
    let emulator_config = EmulatorConfig::new(scenario.clone());
    let (connector, base_url, server, memory): (Arc<dyn Connector>, String, _, _) =
        match config.transport {
            Transport::Socket => {
                let server =
                    EmulatorServer::bind("127.0.0.1:0".parse().expect("valid"), emulator_config)
                        .await?;
                let url = server.base_url();
                (Arc::new(WebSocketConnector), url, Some(server), None)
            }
            Transport::Memory => {
                let emulator = MemoryEmulator::new(emulator_config);
                (
                    Arc::new(emulator.clone()),
                    "ws://emulator".to_owned(),
                    None,
                    Some(emulator),
                )
            }
        };
    let options = ListenOptions {
        eager_eot_threshold: config.thresholds.eager_eot_threshold,
        eot_threshold: config.thresholds.eot_threshold,
        eot_timeout_ms: config.thresholds.eot_timeout_ms,
        ..ListenOptions::raw(Encoding::Linear16, config.sample_rate)
    };
    let connector = match config.wrap_connector {
        Some(wrap) => wrap(connector),
        None => connector,
    };
    let connector = match &config.recorder {
        Some(recorder) => recorder.connector(connector),
        None => connector,
    };
    let flux_tts = (config.backends.is_none() && config.voice == SimulatedVoice::FluxTts)
        .then(|| {
            FluxTts::new(&base_url, FLUX_TTS_MODEL, config.sample_rate, None)
                .map(|voice| Arc::new(voice.with_connector(connector.clone())))
        })
        .transpose()
        .map_err(|e| SimulationError::Ended(e.to_string()))?;
    let mut flux_config = FluxConfig::new(options).with_base_url(base_url);
    flux_config.api_key = None;
    let backends = config.backends.clone().unwrap_or_else(|| Backends {
        llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
        tts: match &flux_tts {
            Some(voice) => voice.clone(),
            None => Arc::new(SyntheticTts::new(config.sample_rate, scenario.tts.clone())),
        },
        tools: Some(
            config
                .tools
                .clone()
                .unwrap_or_else(|| Arc::new(crate::tools::DemoRestaurant::default())),
        ),
    });
    let backends = match &config.recorder {
        Some(recorder) => Backends {
            llm: recorder.llm(backends.llm),
            tts: recorder.tts(backends.tts),
            tools: backends.tools.map(|t| recorder.tools(t)),
        },
        None => backends,
    };
    let (agent_tx, agent_rx) = watch::channel(AgentState::default());
    let watcher = Arc::new(Watcher {
        agent: agent_tx,
        speaking: Mutex::default(),
        seen: Mutex::default(),
        observer: config.observer.clone(),
    });
    let mut settings = Settings::new(flux_config, connector, backends);
    settings.session = config.session.clone();
    let agent = RecordingSink {
        frames: Arc::default(),
        keep: config.record_audio,
    };
    let mut user = SimulatedUser {
        started: false,
        stopped: false,
        sample_rate: config.sample_rate,
        voice: UserVoice::new(&config, agent_rx),
        ticker: None,
        agent: agent.clone(),
    };
    let ending = Call::new("simulation", settings)
        .observed_by(watcher.clone())
        .run(&mut user)
        .await;
    let user_audio = std::mem::take(&mut user.voice.sent);
    let start = user.ticker.map_or_else(Instant::now, |(first, _)| first);
    if let Some(server) = server {
        server.shutdown().await;
    }
    if let Some(memory) = memory {
        memory.shutdown().await;
    }
    if let Some(error) = ending.flux_error {
        return Err(error.into());
    }
    let (Some(outcome), Some(log)) = (ending.session, ending.log) else {
        return Err(SimulationError::Ended(ending.detail));
    };
    if let Some(error) = outcome.error {
        return Err(error.into());
    }
    let entries = log.entries();
    let events = std::mem::take(&mut *watcher.seen.lock().expect("watcher lock"));
    Ok(SimulationResult {
        report: Report::from_log(&entries),
        history: outcome.history,
        log: entries,
        events,
        start,
        user_audio,
        agent_frames: agent.take(),
        sample_rate: config.sample_rate,
        flux_tts: flux_tts.map(|voice| voice.counts()),
    })
}

/// One user turn placed on the audio timeline, as sample ranges of speech.
struct Utterance {
    words: Vec<(u64, u64)>,
    end: u64,
}

fn utterance(turn: &crate::scenario::UserTurn, start: u64, rate: u32) -> Utterance {
    let at = |t: f64| start + (t * f64::from(rate)).round() as u64;
    let words: Vec<(u64, u64)> = turn
        .timed_words()
        .iter()
        .map(|w| (at(w.start), at(w.end)))
        .collect();
    let end = words.last().map_or(start, |w| w.1);
    Utterance { words, end }
}

/// A microphone's noise floor, -8..=7, the same for every run: no real input is digital
/// silence, and what the client keeps for replay must be measured on realistic audio. It stays
/// far below the emulator's voice-activity gate.
fn noise_floor(n: u64) -> i16 {
    (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as i16 - 8
}

/// A voice-like buzz (triangle wave at full amplitude from its first sample, so the emulator
/// sees the onset exactly).
fn voice_sample(n: u64, rate: u32) -> i16 {
    // The phase in integers: a float remainder per sample cost more than the rest of the
    // simulated user (a bench of 1000 sessions spent 3.5 % of its CPU in `fmod`).
    let phase = ((n * 140) % u64::from(rate)) as f64 / f64::from(rate);
    let triangle = 4.0 * (phase - 0.5).abs() - 1.0;
    (triangle * 6000.0) as i16
}

/// The user's side, 20 ms at a time, until the last reply was heard: each turn starts when
/// the scenario says (at a time, after the agent finished, or into the agent's reply), with
/// patience for an agent that does not answer.
struct UserVoice {
    rate: u32,
    chunk: u64,
    patience: u64,
    tail: u64,
    scenario: Arc<Scenario>,
    agent: watch::Receiver<AgentState>,
    record_audio: bool,
    recorder: Option<crate::recording::Recorder>,
    /// Every sample sent, when the simulation keeps audio.
    sent: Vec<i16>,
    cursor: u64,
    next_turn: usize,
    current: Option<Utterance>,
    after_turn: AgentState,
    prev_end: u64,
    agent_started_at: Option<u64>,
    done_at: Option<u64>,
}

impl UserVoice {
    fn new(config: &SimulationConfig, agent: watch::Receiver<AgentState>) -> Self {
        let rate = config.sample_rate;
        UserVoice {
            rate,
            chunk: u64::from(rate / 50),
            patience: (config.patience.as_secs_f64() * f64::from(rate)) as u64,
            tail: (config.tail.as_secs_f64() * f64::from(rate)) as u64,
            scenario: config.scenario.clone(),
            agent,
            record_audio: config.record_audio,
            recorder: config.recorder.clone(),
            sent: Vec::new(),
            cursor: 0,
            next_turn: 0,
            current: None,
            after_turn: AgentState::default(),
            prev_end: 0,
            agent_started_at: None,
            done_at: None,
        }
    }

    /// The next 20 ms, or `None` once the user is done.
    fn next_chunk(&mut self) -> Option<Vec<i16>> {
        let rate = self.rate;
        let chunk = self.chunk;
        let turns = &self.scenario.turns;
        let state = *self.agent.borrow_and_update();
        let cursor = self.cursor;
        if self.current.is_none() && self.next_turn < turns.len() {
            let turn = &turns[self.next_turn];
            let waited_too_long = cursor >= self.prev_end + self.patience;
            if self.agent_started_at.is_none()
                && state.replies_started > self.after_turn.replies_started
            {
                self.agent_started_at = Some(cursor);
            }
            let begin = match turn.start.unwrap_or(if self.next_turn == 0 {
                TurnStart::AtMs(500)
            } else {
                TurnStart::AfterAgentMs(600)
            }) {
                TurnStart::AtMs(ms) => Some((ms * u64::from(rate) / 1000).max(cursor)),
                TurnStart::AfterAgentMs(ms) => {
                    let finished =
                        state.replies_ended > self.after_turn.replies_ended && !state.speaking;
                    (finished || waited_too_long).then(|| cursor + ms * u64::from(rate) / 1000)
                }
                TurnStart::BargeInMs(ms) => match self.agent_started_at {
                    Some(at) => Some(at + ms * u64::from(rate) / 1000),
                    None => waited_too_long.then_some(cursor),
                },
            };
            if let Some(begin) = begin {
                self.current = Some(utterance(turn, begin, rate));
                self.next_turn += 1;
            }
        }
        if self.current.is_none() && self.next_turn == turns.len() && self.done_at.is_none() {
            let answered = state.replies_ended > self.after_turn.replies_ended && !state.speaking;
            if answered || cursor >= self.prev_end + self.patience {
                self.done_at = Some(cursor + self.tail);
            }
        }
        if self.done_at.is_some_and(|d| cursor >= d) {
            return None;
        }
        let mut samples: Vec<i16> = (cursor..cursor + chunk).map(noise_floor).collect();
        for &(start, end) in self.current.iter().flat_map(|u| &u.words) {
            for n in start.max(cursor)..end.min(cursor + chunk) {
                samples[(n - cursor) as usize] = voice_sample(n, rate);
            }
        }
        self.cursor += chunk;
        if self.current.as_ref().is_some_and(|u| self.cursor >= u.end) {
            self.current = None;
            self.after_turn = state;
            self.prev_end = self.cursor;
            self.agent_started_at = None;
        }
        if let Some(recorder) = &self.recorder {
            recorder.user_audio(&samples);
        }
        if self.record_audio {
            self.sent.extend_from_slice(&samples);
        }
        Some(samples)
    }
}
