//! The engine against slow, silent, broken and panicking backends and outputs, on tokio's
//! paused clock: every failure ends that reply with the fallback line or ends the session
//! with a clear reason, and the conversation goes on where it can.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use turnflow::emulator::{EmulatorConfig, MemoryEmulator};
use turnflow::engine::log::LogKind;
use turnflow::engine::{
    AudioSink, Backends, CancellationToken, EngineEvent, Interrupter, SessionConfig, SessionError,
    SessionOutcome, start_session,
};
use turnflow::error::{BackendError, ErrorKind};
use turnflow::flux::{FluxConfig, FluxHandle, ListenOptions, connect};
use turnflow::llm::scripted::Fault;
use turnflow::llm::{
    LanguageModel, LlmError, LlmRequest, LlmStream, Message, ScriptedLlm, ScriptedReply,
};
use turnflow::scenario::Scenario;
use turnflow::sim::{SimulationConfig, SimulationResult, Transport, run};
use turnflow::tts::SyntheticTts;
use turnflow::tts::synthetic::TtsFault;

const FALLBACK: &str = "Sorry, I'm having trouble right now. Could you say that again?";

const TWO_TURNS: &str = r#"{"name":"two","turns":[
    {"start":{"at_ms":500},"phrases":[{"text":"When do you open?","ramp_ms":300}],"reply":"We open at nine in the morning."},
    {"start":{"after_agent_ms":500},"phrases":[{"text":"Thanks.","ramp_ms":300}],"reply":"You're welcome."}]}"#;

fn two_turns() -> Arc<Scenario> {
    Arc::new(Scenario::parse(TWO_TURNS, "two").unwrap())
}

async fn simulate_with(llm: Arc<dyn LanguageModel>, tts: SyntheticTts) -> SimulationResult {
    let mut config = SimulationConfig::new(two_turns());
    config.transport = Transport::Memory;
    config.session.machine.speculation = false;
    config.backends = Some(Backends {
        llm,
        tts: Arc::new(tts),
        tools: None,
    });
    run(config).await.unwrap()
}

fn voice() -> SyntheticTts {
    SyntheticTts::new(16000, two_turns().tts.clone())
}

fn scripted() -> ScriptedLlm {
    ScriptedLlm::from_scenario(&two_turns())
}

/// The first reply's failure (as text), the first reply as heard, and the second as heard.
fn first_failure(r: &SimulationResult) -> (String, String, String) {
    let (error, first, second) = first_error(r);
    (error.to_string(), first, second)
}

/// Like [`first_failure`], with the typed error.
fn first_error(r: &SimulationResult) -> (BackendError, String, String) {
    let error = r
        .events
        .iter()
        .find_map(|e| match e {
            EngineEvent::ResponseEnded { error: Some(e), .. } => Some(e.clone()),
            _ => None,
        })
        .expect("a reply failed");
    (
        error,
        r.report.turns[0].assistant_heard.clone(),
        r.report.turns[1].assistant_heard.clone(),
    )
}

#[tokio::test(start_paused = true)]
async fn an_llm_that_never_answers_the_request_gets_the_fallback_at_the_ttft_limit() {
    let r = simulate_with(
        Arc::new(scripted().fail_call(0, Fault::StallBeforeStream)),
        voice(),
    )
    .await;
    let (error, first, second) = first_error(&r);
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(error.is_retryable());
    assert!(
        error
            .message
            .contains("no first token within 5s of the request"),
        "{error}"
    );
    assert_eq!(first, FALLBACK);
    assert_eq!(second, "You're welcome.", "the session goes on");
    let sent = r
        .log
        .iter()
        .find_map(|e| matches!(e.kind, LogKind::LlmRequestSent { .. }).then_some(e.at))
        .unwrap();
    let tts = r
        .log
        .iter()
        .find_map(|e| matches!(e.kind, LogKind::TtsRequestSent { .. }).then_some(e.at))
        .unwrap();
    assert_eq!(tts - sent, Duration::from_secs(5), "exactly at the limit");
}

#[tokio::test(start_paused = true)]
async fn headers_that_come_after_the_ttft_limit_get_the_fallback() {
    let r = simulate_with(
        Arc::new(scripted().fail_call(0, Fault::DelayStream(Duration::from_secs(6)))),
        voice(),
    )
    .await;
    let (error, first, second) = first_failure(&r);
    assert!(error.contains("no first token within 5s"), "{error}");
    assert_eq!(
        (first.as_str(), second.as_str()),
        (FALLBACK, "You're welcome.")
    );
}

#[tokio::test(start_paused = true)]
async fn late_headers_within_the_limit_are_not_a_failure() {
    let r = simulate_with(
        Arc::new(scripted().fail_call(0, Fault::DelayStream(Duration::from_secs(4)))),
        voice(),
    )
    .await;
    assert_eq!(
        r.report.turns[0].assistant_heard,
        "We open at nine in the morning."
    );
}

#[tokio::test(start_paused = true)]
async fn an_llm_that_stalls_between_chunks_gets_the_fallback_at_the_stall_limit() {
    let r = simulate_with(
        Arc::new(scripted().fail_call(0, Fault::StallAfterTokens(3))),
        voice(),
    )
    .await;
    let (error, first, second) = first_failure(&r);
    assert!(error.contains("stalled, no token for 5s"), "{error}");
    assert_eq!(
        (first.as_str(), second.as_str()),
        (FALLBACK, "You're welcome.")
    );
}

#[tokio::test(start_paused = true)]
async fn a_voice_that_never_answers_or_stalls_mid_sentence_gets_the_fallback() {
    for (fault, expected) in [
        (
            TtsFault::StallBeforeStream,
            "no first audio within 3s of the request",
        ),
        (TtsFault::StallAfterChunks(2), "stalled, no audio for 3s"),
    ] {
        let r = simulate_with(Arc::new(scripted()), voice().fail_call(0, fault)).await;
        let (error, first, second) = first_failure(&r);
        assert!(error.contains(expected), "{fault:?}: {error}");
        assert!(first.ends_with(FALLBACK), "{fault:?}: {first}");
        assert_eq!(second, "You're welcome.", "{fault:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_empty_reply_speaks_the_fallback_and_says_why() {
    let r = simulate_with(Arc::new(scripted().fail_call(0, Fault::Empty)), voice()).await;
    let (error, first, second) = first_error(&r);
    assert_eq!(error.to_string(), "scripted: the reply had no text");
    assert_eq!(error.kind, ErrorKind::EmptyReply);
    assert_eq!(
        (first.as_str(), second.as_str()),
        (FALLBACK, "You're welcome.")
    );
}

#[tokio::test(start_paused = true)]
async fn a_reply_that_is_only_a_tool_call_nobody_can_run_speaks_the_fallback() {
    let llm = ScriptedLlm::new(
        [(
            "When do you open?".to_owned(),
            ScriptedReply {
                text: "At nine.".into(),
                tool_calls: vec![("opening_hours".into(), serde_json::json!({}))],
            },
        )],
        two_turns().llm.clone(),
    );
    let r = simulate_with(Arc::new(llm), voice()).await;
    let (error, first, _) = first_failure(&r);
    assert_eq!(
        error,
        "scripted: the reply was only a call to opening_hours and no tools are configured"
    );
    assert_eq!(first, FALLBACK);
}

/// A model that panics on its first request and answers from the scenario after that.
struct PanicsOnce {
    inner: ScriptedLlm,
    calls: AtomicU64,
}

#[async_trait]
impl LanguageModel for PanicsOnce {
    fn name(&self) -> &str {
        "panicky"
    }

    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, LlmError> {
        if self.calls.fetch_add(1, Ordering::Relaxed) == 0 {
            panic!("index out of bounds in the model client");
        }
        self.inner.stream(request).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_model_gets_the_fallback_and_the_session_goes_on() {
    let llm = PanicsOnce {
        inner: scripted(),
        calls: AtomicU64::new(0),
    };
    let r = simulate_with(Arc::new(llm), voice()).await;
    let (error, first, second) = first_error(&r);
    assert_eq!(error.kind, ErrorKind::Panicked);
    assert_eq!(error.provider, "panicky");
    assert!(
        error.message.contains("panicked: index out of bounds"),
        "{error}"
    );
    assert_eq!(
        (first.as_str(), second.as_str()),
        (FALLBACK, "You're welcome.")
    );
}

const BARGE_IN: &str = r#"{"name":"b","turns":[
    {"start":{"at_ms":500},"phrases":[{"text":"Tell me about the menu.","ramp_ms":300}],
     "reply":"We have soups, salads, pasta, grilled fish, three kinds of steak, and a long list of desserts."},
    {"start":{"barge_in_ms":1500},"phrases":[{"text":"Do you have vegan options?","ramp_ms":300}],
     "reply":"Yes, several."}]}"#;

async fn barge_in_with(tts: SyntheticTts) -> SimulationResult {
    let scenario = Arc::new(Scenario::parse(BARGE_IN, "b").unwrap());
    let mut config = SimulationConfig::new(scenario.clone());
    config.transport = Transport::Memory;
    config.backends = Some(Backends {
        llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
        tts: Arc::new(tts),
        tools: None,
    });
    run(config).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_voice_that_never_confirms_a_clear_does_not_freeze_the_session() {
    let scenario = Scenario::parse(BARGE_IN, "b").unwrap();
    let normal = barge_in_with(SyntheticTts::new(16000, scenario.tts.clone())).await;
    let hanging =
        barge_in_with(SyntheticTts::new(16000, scenario.tts.clone()).never_confirm_clear()).await;
    assert!(normal.report.turns[0].interrupted, "the scenario barges in");
    assert_eq!(hanging.report.turns[1].assistant_heard, "Yes, several.");
    assert_eq!(
        hanging.report.turns[1].response_latency_ms, normal.report.turns[1].response_latency_ms,
        "the hanging clear costs the next reply nothing"
    );
    assert_eq!(hanging.history, normal.history);
}

// ---- Sessions driven directly --------------------------------------------------------

/// An output that counts frames, and panics on its `panic_at`-th frame when set.
#[derive(Clone, Default)]
struct CountingSink {
    frames: Arc<AtomicU64>,
    panic_at: Option<u64>,
}

impl AudioSink for CountingSink {
    fn write(&mut self, _frame: &[i16]) {
        let n = self.frames.fetch_add(1, Ordering::Relaxed) + 1;
        if self.panic_at == Some(n) {
            panic!("the sound card went away");
        }
    }
}

const LONG_REPLY: &str = r#"{"name":"long","listen":{"eot_threshold":0.7},"turns":[
    {"start":{"at_ms":500},"say":"Tell me a story.",
     "reply":"Once upon a time there was a small town by the sea. Every morning the fishermen went out before dawn. One day a storm came."}]}"#;

/// The user's audio side, the session and its application events.
type LiveSession = (
    FluxHandle,
    turnflow::engine::SessionHandle,
    tokio::sync::mpsc::Receiver<EngineEvent>,
);

/// A session on the in-memory emulator playing [`LONG_REPLY`], with `seconds` of user audio
/// sent.
async fn live_session(sink: CountingSink, seconds: u64) -> LiveSession {
    live_session_stopped_by(sink, seconds, CancellationToken::new()).await
}

/// Like [`live_session`], stopped by `stop`.
async fn live_session_stopped_by(
    sink: CountingSink,
    seconds: u64,
    stop: CancellationToken,
) -> LiveSession {
    live_session_on(LONG_REPLY, Box::new(sink), seconds, stop).await
}

/// A session on the in-memory emulator playing `scenario` into `sink`, with `seconds` of user
/// audio sent at once (none for a test that streams its own), stopped by `stop`.
async fn live_session_on(
    scenario: &str,
    sink: Box<dyn AudioSink>,
    seconds: u64,
    stop: CancellationToken,
) -> LiveSession {
    let scenario = Scenario::parse(scenario, "live").unwrap();
    let flux_server = MemoryEmulator::new(EmulatorConfig::new(Arc::new(scenario.clone())));
    let (flux, events) = connect(
        FluxConfig::new(ListenOptions::default()),
        Arc::new(flux_server),
    )
    .await
    .unwrap();
    let backends = Backends {
        llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
        tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
        tools: None,
    };
    let (session, app_events) =
        start_session(SessionConfig::default(), events, backends, sink, stop);
    if seconds > 0 {
        flux.send_audio(vec![0u8; 16000 * 2 * seconds as usize])
            .await
            .unwrap();
    }
    (flux, session, app_events)
}

async fn until_speaking(events: &mut tokio::sync::mpsc::Receiver<EngineEvent>) {
    while let Some(e) = events.recv().await {
        if matches!(e, EngineEvent::AgentSpeaking { .. }) {
            return;
        }
    }
    panic!("the agent never spoke");
}

/// An output with its own interrupter that notes, in order, what was done to it.
#[derive(Clone, Default)]
struct NotingSink(Arc<std::sync::Mutex<Vec<&'static str>>>);

impl NotingSink {
    fn note(&self, what: &'static str) {
        let mut steps = self.0.lock().unwrap();
        // Frames in a row are one step.
        if !(what == "write" && steps.last() == Some(&"write")) {
            steps.push(what);
        }
    }
}

impl AudioSink for NotingSink {
    fn write(&mut self, _frame: &[i16]) {
        self.note("write");
    }

    fn clear(&mut self) {
        self.note("clear");
    }

    fn interrupter(&self) -> Option<Arc<dyn Interrupter>> {
        Some(Arc::new(self.clone()))
    }
}

impl Interrupter for NotingSink {
    fn interrupt(&self) {
        self.note("interrupt");
    }
}

#[tokio::test(start_paused = true)]
async fn a_barge_in_cuts_the_listener_off_before_playout_clears_and_other_cuts_do_not() {
    const SCENARIO: &str = r#"{"name":"cut","listen":{"eot_threshold":0.7},"turns":[
        {"start":{"at_ms":500},"say":"Tell me a story.",
         "reply":"Once upon a time there was a small town by the sea. Every morning the fishermen went out before dawn."},
        {"start":{"at_ms":6000},"say":"Wait, tell me another one.",
         "reply":"A long time ago a lighthouse keeper lived alone on a rock far out at sea. He kept a diary."}]}"#;
    let sink = NotingSink::default();
    let steps = sink.0.clone();
    let (flux, session, mut events) =
        live_session_on(SCENARIO, Box::new(sink), 0, CancellationToken::new()).await;
    // The user's audio in real time: the second turn starts while the first reply plays.
    let user = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..1000 {
            tick.tick().await;
            if flux.send_audio(vec![0u8; 640]).await.is_err() {
                break;
            }
        }
    });
    until_speaking(&mut events).await;
    until_speaking(&mut events).await;
    // Cut off by the close during the second reply.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcome = session.close().await;
    user.abort();
    assert_eq!(
        outcome.history.len(),
        4,
        "both replies were cut: {:?}",
        outcome.history
    );
    assert_eq!(
        *steps.lock().unwrap(),
        ["write", "interrupt", "clear", "write", "clear"],
        "the barge-in interrupts, then playout clears; the close only clears"
    );
}

#[tokio::test(start_paused = true)]
async fn close_keeps_what_the_user_heard_of_the_reply_in_progress() {
    let sink = CountingSink::default();
    let (flux, session, mut events) = live_session(sink, 30).await;
    until_speaking(&mut events).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome: SessionOutcome = session.close().await;
    assert_eq!(outcome.history[0], Message::user("Tell me a story."));
    let Message::Assistant {
        content,
        interrupted,
        ..
    } = &outcome.history[1]
    else {
        panic!("{:?}", outcome.history)
    };
    assert!(*interrupted);
    assert!(
        content.starts_with("Once upon a time") && content.len() < 60,
        "about three seconds of speech: {content}"
    );
    assert!(outcome.error.is_none());
    drop(flux);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_the_session() {
    let sink = CountingSink::default();
    let frames = sink.frames.clone();
    let (_flux, session, mut events) = live_session(sink, 30).await;
    until_speaking(&mut events).await;
    drop(session);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_drop = frames.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        frames.load(Ordering::Relaxed),
        after_drop,
        "no frame after the drop"
    );
    let drained = tokio::time::timeout(Duration::from_secs(1), async {
        while events.recv().await.is_some() {}
    });
    assert!(drained.await.is_ok(), "the session's tasks are gone");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_output_ends_the_session_with_an_error() {
    let sink = CountingSink {
        panic_at: Some(10),
        ..CountingSink::default()
    };
    let (flux, session, _events) = live_session(sink, 30).await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), session.finished())
        .await
        .expect("the session ends");
    let Some(SessionError::Panicked { task, message }) = &outcome.error else {
        panic!("{:?}", outcome.error)
    };
    assert_eq!(*task, "audio output");
    assert!(message.contains("sound card"), "{message}");
    assert_eq!(outcome.history[0], Message::user("Tell me a story."));
    drop(flux);
}

#[tokio::test(start_paused = true)]
async fn one_stop_token_stops_many_sessions_and_closing_one_leaves_the_others() {
    let stop = CancellationToken::new();
    let (a_sink, b_sink) = (CountingSink::default(), CountingSink::default());
    let b_frames = b_sink.frames.clone();
    let (_a_flux, a, mut a_events) = live_session_stopped_by(a_sink, 30, stop.clone()).await;
    let (_b_flux, b, mut b_events) = live_session_stopped_by(b_sink, 30, stop.clone()).await;
    until_speaking(&mut a_events).await;
    until_speaking(&mut b_events).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a_outcome = a.close().await;
    assert!(
        !stop.is_cancelled(),
        "closing one session leaves the shared token alone"
    );
    let before = b_frames.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        b_frames.load(Ordering::Relaxed) > before,
        "the other one still speaks"
    );
    stop.cancel();
    let b_outcome = b.finished().await;
    for outcome in [a_outcome, b_outcome] {
        assert!(
            matches!(&outcome.history[1], Message::Assistant { interrupted: true, content, .. } if content.starts_with("Once upon")),
            "{:?}",
            outcome.history
        );
    }
}
