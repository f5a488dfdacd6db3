//! The conversation runner over a transport written here, on tokio's paused clock: the
//! in-memory emulator, the scripted model and the synthetic voice, and a far end that is
//! well-behaved, silent, deaf, flooding or gone. Deadlines are asserted to the millisecond.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use turnflow::call::{
    AudioFormat, Call, CallObserver, EndError, Ending, Gone, Inbound, Outbound, SessionEnd,
    Settings, Start, Transport,
};
use turnflow::emulator::{EmulatorConfig, MemoryEmulator};
use turnflow::engine::log::EventLog;
use turnflow::engine::{Backends, CancellationToken, EngineEvent};
use turnflow::flux::{Encoding, FluxConfig, ListenOptions};
use turnflow::llm::{ScriptedLlm, ToolExecutor};
use turnflow::scenario::Scenario;
use turnflow::tts::SyntheticTts;

const FRAME: usize = 320;

fn settings() -> Settings {
    let scenario = Arc::new(Scenario::load("scenarios/plain.json".as_ref()).unwrap());
    settings_for(scenario, None)
}

/// A call on the in-memory emulator playing `scenario`, with its scripted model, the
/// synthetic voice and `tools`.
fn settings_for(scenario: Arc<Scenario>, tools: Option<Arc<dyn ToolExecutor>>) -> Settings {
    let flux = FluxConfig::new(ListenOptions::raw(Encoding::Linear16, 16000))
        .with_base_url("ws://emulator");
    let emulator = MemoryEmulator::new(EmulatorConfig::new(scenario.clone()));
    let backends = Backends {
        llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
        tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
        tools,
    };
    Settings::new(flux, Arc::new(emulator), backends)
}

/// A far end driven by the test: what it sends comes from a channel (closed: it went away),
/// what it is sent is written down, and it can be made deaf (its writes never finish).
struct Scripted {
    inbound: mpsc::UnboundedReceiver<Inbound>,
    sent: Arc<Mutex<Vec<String>>>,
    deaf_after: usize,
}

impl Transport for Scripted {
    async fn recv(&mut self) -> Result<Option<Inbound>, EndError> {
        Ok(self.inbound.recv().await)
    }

    async fn send(&mut self, item: Outbound<'_>) -> Result<(), Gone> {
        let line = match item {
            Outbound::Ready { .. } => "ready".to_owned(),
            Outbound::Audio(speech) => format!("audio to {}", speech.end),
            Outbound::Clear => "clear".to_owned(),
            Outbound::Event(event) => format!("event {}", kind(event)),
            Outbound::Turn(turn) => format!("turn {}", turn.index),
            _ => "other".to_owned(),
        };
        let deaf = {
            let mut sent = self.sent.lock().unwrap();
            let deaf = sent.len() >= self.deaf_after;
            if !deaf {
                sent.push(line);
            }
            deaf
        };
        if deaf {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn finish(&mut self, ending: &Ending) {
        self.sent
            .lock()
            .unwrap()
            .push(format!("end {}", ending.outcome.as_str()));
    }
}

fn kind(event: &EngineEvent) -> String {
    let json = serde_json::to_value(event).unwrap();
    json["type"].as_str().unwrap().to_owned()
}

/// What the observer was told, in order.
#[derive(Default)]
struct Told(Mutex<Vec<String>>);

impl CallObserver for Told {
    fn session_started(&self, call: &str, _log: &EventLog) {
        self.0.lock().unwrap().push(format!("started {call}"));
    }

    fn event(&self, _call: &str, event: &EngineEvent) {
        self.0.lock().unwrap().push(kind(event));
    }

    fn turn(&self, _call: &str, turn: &turnflow::report::TurnReport) {
        self.0.lock().unwrap().push(format!("turn {}", turn.index));
    }

    fn audio_after_stop(&self, frames: u64) {
        self.0.lock().unwrap().push(format!("after stop {frames}"));
    }
}

struct Harness {
    far_end: mpsc::UnboundedSender<Inbound>,
    sent: Arc<Mutex<Vec<String>>>,
    told: Arc<Told>,
    call: tokio::task::JoinHandle<Ending>,
}

fn start_call(deaf_after: usize, configure: impl FnOnce(Call) -> Call) -> Harness {
    let (far_end, inbound) = mpsc::unbounded_channel();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let told = Arc::new(Told::default());
    let mut transport = Scripted {
        inbound,
        sent: sent.clone(),
        deaf_after,
    };
    let call = configure(Call::new("c-1", settings()).observed_by(told.clone()));
    let call = tokio::spawn(async move { call.run(&mut transport).await });
    Harness {
        far_end,
        sent,
        told,
        call,
    }
}

fn start() -> Inbound {
    Inbound::Start(Start::new(AudioFormat {
        encoding: Encoding::Linear16,
        sample_rate: 16000,
    }))
}

fn audio() -> Inbound {
    Inbound::Audio(vec![0u8; FRAME * 2].into())
}

/// Sends `seconds` of silence in real time (the emulator plays the scenario's words).
async fn speak(far_end: &mpsc::UnboundedSender<Inbound>, seconds: u64) {
    let mut every = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..seconds * 50 {
        every.tick().await;
        if far_end.send(audio()).is_err() {
            return;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_transport_written_outside_the_crate_carries_a_conversation_to_its_end() {
    let h = start_call(usize::MAX, |call| call);
    h.far_end.send(start()).unwrap();
    speak(&h.far_end, 8).await;
    h.far_end.send(Inbound::Stop).unwrap();
    let ending = h.call.await.unwrap();
    assert_eq!(ending.outcome, SessionEnd::Completed, "{ending:?}");
    assert_eq!(ending.turns, 1);
    let session = ending.session.expect("the session ran");
    assert_eq!(
        session.history.len(),
        2,
        "the question and the answer as heard"
    );
    let sent = h.sent.lock().unwrap().clone();
    assert_eq!(sent.first().map(String::as_str), Some("ready"));
    assert!(sent.iter().any(|s| s == "event user_finished"), "{sent:?}");
    assert!(sent.iter().any(|s| s.starts_with("audio to ")), "{sent:?}");
    assert!(sent.iter().any(|s| s == "turn 0"), "{sent:?}");
    assert_eq!(sent.last().map(String::as_str), Some("end completed"));
    let told = h.told.0.lock().unwrap().clone();
    assert_eq!(told.first().map(String::as_str), Some("started c-1"));
    assert!(told.iter().any(|s| s == "response_ended"), "{told:?}");
    assert!(told.iter().any(|s| s == "turn 0"), "{told:?}");
}

#[tokio::test(start_paused = true)]
async fn a_far_end_that_never_starts_is_ended_at_the_start_deadline() {
    let began = Instant::now();
    let h = start_call(usize::MAX, |call| call);
    // Pings do not move the deadline.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.far_end.send(Inbound::Other).unwrap();
    }
    let ending = h.call.await.unwrap();
    assert_eq!(began.elapsed(), Duration::from_secs(15));
    assert_eq!(ending.outcome, SessionEnd::ProtocolError);
    let error = ending.error.expect("the far end is told why");
    assert_eq!(error.code, "idle");
    assert_eq!(error.message, "no start message within 15s of connecting");
    assert!(ending.session.is_none(), "no session was started");
}

#[tokio::test(start_paused = true)]
async fn a_drain_ends_the_wait_for_start_and_not_a_conversation() {
    let draining = CancellationToken::new();
    let waiting = start_call(usize::MAX, |call| call.draining_with(draining.clone()));
    let talking = start_call(usize::MAX, |call| call.draining_with(draining.clone()));
    talking.far_end.send(start()).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    draining.cancel();
    let ending = waiting.call.await.unwrap();
    assert_eq!(ending.outcome, SessionEnd::Shutdown);
    speak(&talking.far_end, 8).await;
    talking.far_end.send(Inbound::Stop).unwrap();
    let ending = talking.call.await.unwrap();
    assert_eq!(ending.outcome, SessionEnd::Completed, "{ending:?}");
}

#[tokio::test(start_paused = true)]
async fn a_far_end_that_stops_sending_audio_is_ended_at_the_idle_deadline() {
    let h = start_call(usize::MAX, |call| call);
    h.far_end.send(start()).unwrap();
    speak(&h.far_end, 1).await;
    let last_audio = Instant::now();
    // Playback reports and pings are not audio.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = h.far_end.send(Inbound::Playing {
            samples: 0,
            buffered: 0,
        });
    }
    let ending = h.call.await.unwrap();
    let idle = Instant::now() - last_audio;
    assert!(
        idle >= Duration::from_secs(15) && idle < Duration::from_millis(15_100),
        "{idle:?}"
    );
    assert_eq!(ending.error.map(|e| e.code), Some("idle"));
}

#[tokio::test(start_paused = true)]
async fn a_far_end_that_stops_reading_is_ended_within_the_send_limit() {
    // Deaf once it has taken the ready and a few events.
    let h = start_call(3, |call| call);
    h.far_end.send(start()).unwrap();
    let speaking = tokio::spawn({
        let far_end = h.far_end.clone();
        async move { speak(&far_end, 20).await }
    });
    let ending = h.call.await.unwrap();
    speaking.abort();
    assert_eq!(ending.outcome, SessionEnd::ClientClosed, "{ending:?}");
    assert_eq!(ending.detail, "the far end stopped reading");
}

#[tokio::test(start_paused = true)]
async fn audio_after_stop_is_dropped_and_counted_and_the_reply_finishes() {
    let h = start_call(usize::MAX, |call| call);
    h.far_end.send(start()).unwrap();
    speak(&h.far_end, 3).await;
    h.far_end.send(Inbound::Stop).unwrap();
    speak(&h.far_end, 1).await;
    let ending = h.call.await.unwrap();
    assert_eq!(ending.outcome, SessionEnd::Completed);
    let told = h.told.0.lock().unwrap().clone();
    assert!(
        told.iter().any(|s| s.starts_with("after stop ")),
        "{told:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn limits_too_long_to_add_mean_never() {
    let h = start_call(usize::MAX, |_| {
        let mut settings = settings();
        settings.limits.idle_timeout = Duration::MAX;
        settings.limits.finish_timeout = Duration::MAX;
        settings.limits.start_timeout = Duration::MAX;
        Call::new("c-2", settings)
    });
    h.far_end.send(start()).unwrap();
    speak(&h.far_end, 1).await;
    // An hour without audio: no idle deadline.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    h.far_end.send(Inbound::HungUp).unwrap();
    let ending = h.call.await.unwrap();
    assert_eq!(ending.detail, "the user hung up");
}

#[tokio::test(start_paused = true)]
async fn a_hang_up_ends_the_call_at_once() {
    let h = start_call(usize::MAX, |call| call);
    h.far_end.send(start()).unwrap();
    speak(&h.far_end, 1).await;
    h.far_end.send(Inbound::HungUp).unwrap();
    let hung_up = Instant::now();
    let ending = h.call.await.unwrap();
    assert!(hung_up.elapsed() < Duration::from_secs(1));
    assert_eq!(ending.outcome, SessionEnd::Completed);
    assert_eq!(ending.detail, "the user hung up");
}

#[tokio::test(start_paused = true)]
async fn a_flood_and_a_second_start_are_refused_by_name() {
    let h = start_call(usize::MAX, |call| call);
    h.far_end.send(start()).unwrap();
    for _ in 0..1000 {
        h.far_end.send(Inbound::Other).unwrap();
    }
    let ending = h.call.await.unwrap();
    assert_eq!(ending.error.map(|e| e.code), Some("flood"));

    let h = start_call(usize::MAX, |call| call);
    h.far_end.send(start()).unwrap();
    h.far_end.send(start()).unwrap();
    let ending = h.call.await.unwrap();
    let error = ending.error.unwrap();
    assert_eq!(
        (error.code, error.message.as_str()),
        ("invalid", "start was already received")
    );

    let h = start_call(usize::MAX, |call| call);
    h.far_end.send(start()).unwrap();
    h.far_end
        .send(Inbound::Audio(vec![0u8; 641].into()))
        .unwrap();
    let ending = h.call.await.unwrap();
    assert_eq!(ending.error.map(|e| e.code), Some("invalid_audio"));
}

#[tokio::test(start_paused = true)]
async fn a_far_end_that_goes_away_ends_the_call_as_closed_by_it() {
    let h = start_call(usize::MAX, |call| call);
    h.far_end.send(start()).unwrap();
    speak(&h.far_end, 1).await;
    drop(h.far_end);
    let ending = h.call.await.unwrap();
    assert_eq!(ending.outcome, SessionEnd::ClientClosed);
    assert_eq!(ending.detail, "the far end went away without stop");
}

#[tokio::test(start_paused = true)]
async fn what_the_session_says_as_it_finishes_is_not_lost() {
    let h = start_call(usize::MAX, |call| call);
    h.far_end.send(start()).unwrap();
    // Speak until the agent answers, then hang up in the middle of its reply.
    let mut every = tokio::time::interval(Duration::from_millis(20));
    while !h
        .sent
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.starts_with("audio to "))
    {
        every.tick().await;
        h.far_end.send(audio()).unwrap();
    }
    h.far_end.send(Inbound::HungUp).unwrap();
    let ending = h.call.await.unwrap();
    assert_eq!(ending.detail, "the user hung up");
    let told = h.told.0.lock().unwrap().clone();
    assert_eq!(
        told.iter().filter(|s| *s == "response_ended").count(),
        1,
        "the cut reply's end reaches the observer: {told:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_agent_ends_the_call_once_its_goodbye_is_heard() {
    let scenario = Arc::new(
        Scenario::parse(
            r#"{"name":"bye","listen":{"eot_threshold":0.7},"turns":[
              {"start":{"at_ms":500},"say":"That's all, thanks.",
               "calls":[{"tool":"end_call","arguments":{"reason":"the caller is done"}}],
               "reply":"Goodbye, have a nice evening!"},
              {"start":{"at_ms":20000},"say":"Hello?","reply":"Still here."}]}"#,
            "bye",
        )
        .unwrap(),
    );
    let settings = settings_for(
        scenario,
        Some(Arc::new(turnflow::tools::CallControl::ending())),
    );
    let (far_end, inbound) = mpsc::unbounded_channel();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut transport = Scripted {
        inbound,
        sent: sent.clone(),
        deaf_after: usize::MAX,
    };
    let call = tokio::spawn(async move { Call::new("c-2", settings).run(&mut transport).await });
    far_end.send(start()).unwrap();
    let speaking = tokio::spawn(async move { speak(&far_end, 30).await });
    let started = Instant::now();
    let ending = call.await.unwrap();
    assert_eq!(ending.outcome, SessionEnd::Completed, "{ending:?}");
    assert_eq!(ending.detail, "the agent ended the call");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "ended after the goodbye, before the next turn: {:?}",
        started.elapsed()
    );
    let history = ending.session.expect("the session ran").history;
    assert!(
        matches!(history.last(), Some(turnflow::llm::Message::Assistant { content, interrupted: false, .. }) if content == "Goodbye, have a nice evening!"),
        "the goodbye was heard whole: {history:?}"
    );
    let sent = sent.lock().unwrap().clone();
    assert!(sent.iter().any(|s| s == "event tool_started"), "{sent:?}");
    assert_eq!(sent.last().map(String::as_str), Some("end completed"));
    speaking.abort();
}

#[tokio::test(start_paused = true)]
async fn a_caller_who_hangs_up_during_a_booking_still_has_it_made_and_kept() {
    let scenario = Arc::new(
        Scenario::parse(
            r#"{"name":"hangup","listen":{"eot_threshold":0.7},"turns":[
              {"start":{"at_ms":500},"say":"Book a table for two at seven for Jordan.",
               "calls":[{"tool":"book_table","arguments":{"name":"Jordan","people":2,"time":"19:00"}}],
               "reply":"Your table is booked."}]}"#,
            "hangup",
        )
        .unwrap(),
    );
    let restaurant = Arc::new(turnflow::tools::DemoRestaurant::new(
        Duration::from_millis(300),
        Duration::from_secs(5),
    ));
    let settings = settings_for(scenario, Some(restaurant.clone()));
    let told = Arc::new(Told::default());
    let (far_end, inbound) = mpsc::unbounded_channel();
    let mut transport = Scripted {
        inbound,
        sent: Arc::new(Mutex::new(Vec::new())),
        deaf_after: usize::MAX,
    };
    let call = Call::new("c-3", settings).observed_by(told.clone());
    let call = tokio::spawn(async move { call.run(&mut transport).await });
    far_end.send(start()).unwrap();
    // The caller speaks, then hangs up once the booking has started.
    let mut every = tokio::time::interval(Duration::from_millis(20));
    while !told.0.lock().unwrap().iter().any(|e| e == "tool_started") {
        every.tick().await;
        far_end.send(audio()).unwrap();
    }
    drop(far_end);
    let ending = call.await.unwrap();
    assert_eq!(ending.outcome, SessionEnd::ClientClosed, "{ending:?}");
    assert_eq!(restaurant.bookings().len(), 1, "the booking was made");
    let history = ending.session.expect("the session ran").history;
    assert!(
        history.iter().any(|m| matches!(m, turnflow::llm::Message::Tool { content, .. } if content.contains("\"booked\""))),
        "its result is in the history the call left: {history:?}"
    );
}
