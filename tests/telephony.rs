//! Phone calls end to end on loopback: a server on port 0 (in-memory emulator, scripted model,
//! synthetic voice) and a simulated carrier speaking Twilio's or Telnyx's documented messages:
//! 20 ms mu-law media, marks echoed when the audio before them has played on the carrier's
//! own real-time playback clock (at once when a `clear` drops it), `clear` honoured, DTMF,
//! `stop`. Nothing asserts a wall-clock threshold; waits are bounded only so a broken server
//! fails instead of hanging.

#[path = "support/http.rs"]
mod http;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use turnflow::emulator::{EmulatorConfig, MemoryEmulator};
use turnflow::engine::{Backends, EngineEvent};
use turnflow::flux::{Encoding, FluxConfig, ListenOptions};
use turnflow::llm::ScriptedLlm;
use turnflow::scenario::Scenario;
use turnflow::server::metrics::SessionEnd;
use turnflow::server::telephony::carrier::StreamStart;
use turnflow::server::{Metrics, Server, ServerConfig, SessionObserver};
use turnflow::tts::SyntheticTts;

const PATIENCE: Duration = Duration::from_secs(30);

/// What the application saw, per session.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<(String, EngineEvent)>>,
    calls: Mutex<Vec<(String, StreamStart)>>,
    digits: Mutex<Vec<(String, String)>>,
}

impl SessionObserver for Seen {
    fn event(&self, session: &str, event: &EngineEvent) {
        self.events
            .lock()
            .unwrap()
            .push((session.to_owned(), event.clone()));
    }
    fn call_started(&self, session: &str, call: &StreamStart) {
        self.calls
            .lock()
            .unwrap()
            .push((session.to_owned(), call.clone()));
    }
    fn dtmf(&self, session: &str, digit: &str) {
        self.digits
            .lock()
            .unwrap()
            .push((session.to_owned(), digit.to_owned()));
    }
}

impl Seen {
    /// The session whose call carried `tag` in its parameters.
    fn session_tagged(&self, tag: &str) -> String {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .find(|(_, c)| c.parameters.values().any(|v| v == tag))
            .map(|(s, _)| s.clone())
            .unwrap_or_else(|| panic!("no call tagged {tag}"))
    }

    fn events_of(&self, session: &str) -> Vec<EngineEvent> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == session)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

struct Running {
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    seen: Arc<Seen>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(file: &str, configure: impl FnOnce(&mut ServerConfig)) -> Running {
    start_with(file, false, configure).await
}

/// A server whose emulator detects turns from the audio (`vad`) or plays the scenario's timing.
async fn start_with(file: &str, vad: bool, configure: impl FnOnce(&mut ServerConfig)) -> Running {
    let scenario = Arc::new(Scenario::load(format!("scenarios/{file}").as_ref()).unwrap());
    start_scenario(scenario, vad, configure).await
}

/// [`start_with`] for a scenario given here.
async fn start_scenario(
    scenario: Arc<Scenario>,
    vad: bool,
    configure: impl FnOnce(&mut ServerConfig),
) -> Running {
    let mut emulator = EmulatorConfig::new(scenario.clone());
    if vad {
        emulator.turn_detection = turnflow::emulator::TurnDetection::Vad;
    }
    let mut options = ListenOptions::raw(Encoding::Linear16, 16000);
    if let Some(t) = scenario.listen {
        options = options.with_thresholds(t);
    }
    let mut config = ServerConfig::new(
        FluxConfig::new(options).with_base_url("ws://emulator.invalid"),
        Arc::new(MemoryEmulator::new(emulator)),
        Backends {
            llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
            tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
            tools: None,
        },
    );
    let seen = Arc::new(Seen::default());
    config.observer = Some(seen.clone());
    configure(&mut config);
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let (addr, metrics) = (server.local_addr(), server.metrics());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        metrics,
        seen,
        stop: Some(stop),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Twilio,
    Telnyx,
}

/// How the simulated carrier behaves on one call.
#[derive(Clone)]
struct Plan {
    kind: Kind,
    /// Put in the call's parameters, to find the session again.
    tag: &'static str,
    /// Start speaking over the agent once this much of its audio was received.
    barge_in_after: Option<Duration>,
    /// Extra delay of the carrier's playback (a deeper buffer): marks come back this late.
    playback_delay: Duration,
    /// Send chunks in swapped pairs (2, 1, 4, 3, ...).
    out_of_order: bool,
    /// A key pressed early in the call.
    dtmf: Option<&'static str>,
    /// How long the call lasts.
    length: Duration,
    /// Hang up with `stop` (else the socket just closes).
    stop: bool,
    /// Messages sent once, right after `start`.
    extra: Vec<String>,
}

impl Plan {
    fn new(kind: Kind, tag: &'static str) -> Self {
        Plan {
            kind,
            tag,
            barge_in_after: None,
            playback_delay: Duration::ZERO,
            out_of_order: false,
            dtmf: None,
            length: Duration::from_secs(8),
            stop: true,
            extra: Vec::new(),
        }
    }
}

/// What the carrier saw.
#[derive(Debug, Default)]
struct Heard {
    agent_ms: u64,
    clears: usize,
    marks: usize,
    closed: bool,
}

fn start_message(kind: Kind, tag: &str) -> String {
    match kind {
        Kind::Twilio => json!({"event": "start", "sequenceNumber": "1", "start": {
            "accountSid": "AC0", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
            "customParameters": {"tag": tag, "caller": "+15550100"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
            "streamSid": "MZ1"}),
        Kind::Telnyx => json!({"event": "start", "sequence_number": "1", "start": {
            "user_id": "u", "call_control_id": "v3:c1", "client_state": tag,
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}},
            "stream_id": "s1"}),
    }
    .to_string()
}

fn media_message(kind: Kind, sequence: u64, chunk: u64, audio: &[u8]) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(audio);
    match kind {
        Kind::Twilio => json!({"event": "media", "sequenceNumber": sequence.to_string(),
            "media": {"track": "inbound", "chunk": chunk.to_string(),
            "timestamp": (chunk * 20).to_string(), "payload": payload}, "streamSid": "MZ1"}),
        Kind::Telnyx => json!({"event": "media", "sequence_number": sequence.to_string(),
            "media": {"track": "inbound", "chunk": chunk.to_string(),
            "timestamp": (chunk * 20).to_string(), "payload": payload}, "stream_id": "s1"}),
    }
    .to_string()
}

fn mark_echo(kind: Kind, name: &str) -> String {
    match kind {
        Kind::Twilio => json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": name}}),
        Kind::Telnyx => json!({"event": "mark", "stream_id": "s1", "mark": {"name": name}}),
    }
    .to_string()
}

/// Sends each of `messages` as text; false once the server has closed the stream.
async fn send_all<S>(write: &mut S, messages: Vec<String>) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    for message in messages {
        if write.send(Message::Text(message.into())).await.is_err() {
            return false;
        }
    }
    true
}

/// One phone call as the carrier makes it.
async fn phone_call(addr: std::net::SocketAddr, plan: Plan) -> Heard {
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/telephony"))
        .await
        .expect("the call is admitted");
    let (mut write, mut read) = socket.split();
    let kind = plan.kind;
    let connected = json!({"event": "connected", "protocol": "Call", "version": "1.0.0"});
    write
        .send(Message::Text(connected.to_string().into()))
        .await
        .unwrap();
    write
        .send(Message::Text(start_message(kind, plan.tag).into()))
        .await
        .unwrap();
    for extra in &plan.extra {
        write
            .send(Message::Text(extra.clone().into()))
            .await
            .unwrap();
    }
    let silence = vec![0xffu8; 160];
    let loud = vec![turnflow::audio::mulaw_encode(0x2000); 160];
    let began = Instant::now();
    let mut heard = Heard::default();
    // The carrier's playback: audio plays in real time after `playback_delay`; each mark
    // comes back when everything before it has played.
    let mut playing_until = began;
    let mut marks: std::collections::VecDeque<(Instant, String)> = Default::default();
    let mut speaking_until: Option<Instant> = None;
    let mut held: Option<(u64, String)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let (mut sequence, mut chunk) = (1u64, 0u64);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                if now - began > plan.length {
                    break;
                }
                let mut out = Vec::new();
                while marks.front().is_some_and(|(at, _)| *at <= now) {
                    let (_, name) = marks.pop_front().unwrap();
                    out.push(mark_echo(kind, &name));
                }
                if let (Some(after), None) = (plan.barge_in_after, speaking_until)
                    && heard.agent_ms >= after.as_millis() as u64
                {
                    speaking_until = Some(now + Duration::from_millis(1500));
                }
                let audio = if speaking_until.is_some_and(|t| now < t) { &loud } else { &silence };
                sequence += 1;
                chunk += 1;
                let message = media_message(kind, sequence, chunk, audio);
                if plan.out_of_order {
                    match held.take() {
                        None => held = Some((chunk, message)),
                        Some((_, earlier)) => out.extend([message, earlier]),
                    }
                } else {
                    out.push(message);
                }
                if chunk == 25 && let Some(digit) = plan.dtmf {
                    let dtmf = match kind {
                        Kind::Twilio => json!({"event": "dtmf", "streamSid": "MZ1", "dtmf": {"track": "inbound_track", "digit": digit}}),
                        Kind::Telnyx => json!({"event": "dtmf", "stream_id": "s1", "dtmf": {"digit": digit}}),
                    };
                    out.push(dtmf.to_string());
                }
                // A write fails once the server has hung up (after a transfer, say) and its
                // close is not yet read: the carrier takes that as the end of the stream.
                if !send_all(&mut write, out).await {
                    heard.closed = true;
                    break;
                }
            }
            message = read.next() => {
                let Some(Ok(message)) = message else { heard.closed = true; break };
                let Message::Text(text) = message else {
                    if let Message::Close(_) = message { heard.closed = true; break }
                    continue;
                };
                let m: Value = serde_json::from_str(&text).unwrap();
                if kind == Kind::Twilio {
                    assert_eq!(m["streamSid"], "MZ1", "{m}");
                }
                let now = Instant::now();
                match m["event"].as_str().unwrap() {
                    "media" => {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(m["media"]["payload"].as_str().unwrap())
                            .unwrap();
                        let length = Duration::from_millis(bytes.len() as u64 / 8);
                        heard.agent_ms += length.as_millis() as u64;
                        playing_until = playing_until.max(now + plan.playback_delay) + length;
                    }
                    "mark" => {
                        heard.marks += 1;
                        marks.push_back((playing_until, m["mark"]["name"].as_str().unwrap().to_owned()));
                    }
                    "clear" => {
                        heard.clears += 1;
                        // Dropped audio: its marks come back at once.
                        let echoes = marks.drain(..).map(|(_, name)| mark_echo(kind, &name)).collect();
                        if !send_all(&mut write, echoes).await {
                            heard.closed = true;
                            break;
                        }
                        playing_until = now;
                    }
                    other => panic!("unexpected {other}: {m}"),
                }
            }
        }
    }
    if !heard.closed {
        if plan.stop {
            let stop = match kind {
                Kind::Twilio => {
                    json!({"event": "stop", "streamSid": "MZ1", "stop": {"accountSid": "AC0", "callSid": "CA1"}})
                }
                Kind::Telnyx => {
                    json!({"event": "stop", "stream_id": "s1", "stop": {"call_control_id": "v3:c1"}})
                }
            };
            let _ = write.send(Message::Text(stop.to_string().into())).await;
            // The server hangs up in turn.
            let _ = tokio::time::timeout(PATIENCE, async {
                while let Some(Ok(m)) = read.next().await {
                    if let Message::Close(_) = m {
                        break;
                    }
                }
            })
            .await;
        } else {
            let _ = write.close().await;
        }
    }
    heard
}

async fn settled(metrics: &Metrics) {
    let deadline = Instant::now() + PATIENCE;
    while metrics.active() > 0 {
        assert!(Instant::now() < deadline, "calls end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn interrupted_heard(events: &[EngineEvent]) -> String {
    events
        .iter()
        .find_map(|e| match e {
            EngineEvent::ResponseEnded {
                heard,
                interrupted: true,
                ..
            } => Some(heard.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no interrupted reply in {events:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_call_is_answered_cleared_on_barge_in_and_keeps_what_the_carrier_played() {
    let server = start("barge_in.json", |_| {}).await;
    let mut prompt = Plan::new(Kind::Twilio, "prompt");
    prompt.barge_in_after = Some(Duration::from_millis(1500));
    prompt.dtmf = Some("7");
    prompt.length = Duration::from_secs(12);
    let mut late = prompt.clone();
    late.tag = "late";
    late.dtmf = None;
    late.playback_delay = Duration::from_millis(400);
    let (a, b) = tokio::join!(
        phone_call(server.addr, prompt),
        phone_call(server.addr, late)
    );
    settled(&server.metrics).await;
    for heard in [&a, &b] {
        assert_eq!(heard.clears, 1, "one clear for one barge-in: {heard:?}");
        assert!(heard.marks > 10, "a mark after each message: {heard:?}");
        assert!(heard.agent_ms >= 1500, "{heard:?}");
    }
    let seen = &server.seen;
    let (prompt, late) = (seen.session_tagged("prompt"), seen.session_tagged("late"));
    let events = seen.events_of(&prompt);
    assert!(events.iter().any(|e| matches!(e, EngineEvent::UserFinished { transcript, .. } if transcript == "What is your return policy?")));
    let heard_prompt = interrupted_heard(&events);
    let heard_late = interrupted_heard(&seen.events_of(&late));
    eprintln!("heard, marks echoed as played: {heard_prompt:?}; 400 ms later: {heard_late:?}");
    assert!(heard_prompt.starts_with("You can return"), "{heard_prompt}");
    assert!(
        heard_prompt.starts_with(&heard_late) && heard_late.len() < heard_prompt.len(),
        "the carrier that played 400 ms later confirmed less: {heard_late:?} vs {heard_prompt:?}"
    );
    // The second turn is answered after the barge-in.
    assert!(events.iter().any(|e| matches!(e, EngineEvent::ResponseEnded { heard, interrupted: false, .. } if heard.starts_with("Yes, sale items"))));
    // The application got the call's parameters and the key; the log got neither.
    let calls = seen.calls.lock().unwrap();
    let call = &calls.iter().find(|(s, _)| *s == prompt).unwrap().1;
    assert_eq!(call.parameters["caller"], "+15550100");
    assert_eq!(call.call_id, "CA1");
    assert_eq!(
        *seen.digits.lock().unwrap(),
        [(prompt.clone(), "7".to_owned())]
    );
    assert_eq!(server.metrics.sessions(SessionEnd::Completed), 2);
    let text = server.metrics.render(true, &[]);
    assert!(
        text.contains("turnflow_heard_clock_total{clock=\"carrier_marks\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("turnflow_barge_in_stop_seconds_count 2"),
        "calls report their turns: {text}"
    );
    assert!(
        text.contains("turnflow_clear_sent_seconds_count 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telnyx_call_with_frames_out_of_order_is_answered() {
    let server = start("plain.json", |_| {}).await;
    let mut plan = Plan::new(Kind::Telnyx, "telnyx");
    plan.out_of_order = true;
    let heard = phone_call(server.addr, plan).await;
    settled(&server.metrics).await;
    assert!(heard.agent_ms > 1000, "{heard:?}");
    assert_eq!(heard.clears, 0);
    let session = server.seen.session_tagged("telnyx");
    let events = server.seen.events_of(&session);
    assert!(events.iter().any(|e| matches!(e, EngineEvent::UserFinished { transcript, .. } if transcript == "What time do you open tomorrow?")), "{events:?}");
    assert!(events.iter().any(|e| matches!(e, EngineEvent::ResponseEnded { heard, .. } if heard == "We open at nine in the morning.")), "{events:?}");
    assert_eq!(server.metrics.sessions(SessionEnd::Completed), 1);
}

/// A voice at 22.05 kHz (espeak-ng's rate, not a multiple of the line's 8 kHz) is resampled to
/// the phone line; the call used to end at once with `unsupported_voice`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_at_any_rate_answers_a_phone_call() {
    let server = start("plain.json", |config| {
        let scenario = Scenario::load("scenarios/plain.json".as_ref()).unwrap();
        config.backends.tts = Arc::new(SyntheticTts::new(22050, scenario.tts.clone()));
    })
    .await;
    let heard = phone_call(server.addr, Plan::new(Kind::Twilio, "odd-rate")).await;
    settled(&server.metrics).await;
    assert!(heard.agent_ms > 1000, "{heard:?}");
    let session = server.seen.session_tagged("odd-rate");
    let events = server.seen.events_of(&session);
    assert!(events.iter().any(|e| matches!(e, EngineEvent::ResponseEnded { heard, .. } if heard == "We open at nine in the morning.")), "{events:?}");
    assert_eq!(server.metrics.sessions(SessionEnd::Completed), 1);
}

/// A recorded phone call: the caller's µ-law audio decoded to 8 kHz PCM, replayable offline,
/// and nothing of the carrier's custom parameters (the caller's number) in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_replays_and_keeps_no_caller_details() {
    let dir = std::env::temp_dir().join(format!("turnflow-call-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let record_dir = dir.clone();
    let server = start("plain.json", move |c| c.record_dir = Some(record_dir)).await;
    let heard = phone_call(server.addr, Plan::new(Kind::Twilio, "recorded")).await;
    settled(&server.metrics).await;
    assert!(heard.agent_ms > 1000, "{heard:?}");
    let session = server.seen.session_tagged("recorded");
    let recording = turnflow::recording::Recording::load(&dir.join(&session)).unwrap();
    assert_eq!(recording.meta.user_sample_rate, 8000);
    assert!(recording.user_audio.len() > 8000 * 5, "the caller's audio");
    for entry in std::fs::read_dir(dir.join(&session)).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(9).any(|w| w == b"+15550100"),
            "the caller's number was recorded"
        );
    }
    let replayed = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let settings = turnflow::lab::ReplaySettings::recorded(&recording.meta.settings).unwrap();
        runtime
            .block_on(turnflow::lab::replay(&recording, &settings))
            .unwrap()
    })
    .join()
    .unwrap();
    assert!(
        replayed.generated_replies.is_empty(),
        "{:?}",
        replayed.generated_replies
    );
    assert!(
        replayed
            .result
            .history
            .contains(&turnflow::llm::Message::assistant(
                "We open at nine in the morning."
            )),
        "{:?}",
        replayed.result.history
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_carrier_messages_skip_or_end_the_call_with_a_reason() {
    let server = start("plain.json", |c| {
        c.start_timeout = Duration::from_millis(500);
        // Longer than the wait for each close below: no call here ends for being idle.
        c.idle_timeout = Duration::from_secs(120);
    })
    .await;
    // Unknown events, bad base64 and broken JSON are skipped: the call goes on and is answered.
    let mut plan = Plan::new(Kind::Twilio, "noisy");
    plan.extra = vec![
        json!({"event": "vendor-thing", "x": 1}).to_string(),
        json!({"event": "media", "streamSid": "MZ1", "media": {"payload": "!!not base64!!"}})
            .to_string(),
        "{broken".to_owned(),
    ];
    let heard = phone_call(server.addr, plan).await;
    assert!(heard.agent_ms > 1000, "{heard:?}");
    // A socket that just closes (no stop) ends the call as the caller gone.
    let mut plan = Plan::new(Kind::Twilio, "vanished");
    plan.length = Duration::from_secs(1);
    plan.stop = false;
    phone_call(server.addr, plan).await;
    settled(&server.metrics).await;
    assert_eq!(server.metrics.sessions(SessionEnd::Completed), 1);
    assert_eq!(server.metrics.sessions(SessionEnd::ClientClosed), 1);

    // Media before start, a format this endpoint does not take, a huge message, silence, a
    // recording sent at full speed instead of a live call, and a flood of messages end the call.
    let wrong_format = start_message(Kind::Twilio, "x").replace("audio/x-mulaw", "audio/x-l16");
    let media = media_message(Kind::Twilio, 2, 1, &[0xff; 160]);
    let huge = media_message(Kind::Twilio, 2, 1, &vec![0xff; 1_000_000]);
    let full_speed: Vec<String> = std::iter::once(start_message(Kind::Twilio, "fast"))
        .chain((1..=250).map(|n| media_message(Kind::Twilio, n + 1, n, &[0xff; 160])))
        .collect();
    let flood: Vec<String> = std::iter::once(start_message(Kind::Twilio, "flood"))
        .chain((0..1000).map(|n| mark_echo(Kind::Twilio, &format!("m{n}"))))
        .collect();
    let cases = [
        vec![media],
        vec![wrong_format],
        vec![huge],
        vec![],
        full_speed,
        flood,
    ];
    let count = cases.len() as u64;
    for messages in cases {
        let (mut socket, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/telephony", server.addr))
                .await
                .unwrap();
        for message in messages {
            // The server may drop the connection while a message is still being written.
            if socket.send(Message::Text(message.into())).await.is_err() {
                break;
            }
        }
        let closed = tokio::time::timeout(PATIENCE, async {
            while let Some(Ok(m)) = socket.next().await {
                if let Message::Close(_) = m {
                    return true;
                }
            }
            true
        })
        .await
        .unwrap();
        assert!(closed);
    }
    settled(&server.metrics).await;
    assert_eq!(server.metrics.sessions(SessionEnd::ProtocolError), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_requests_need_a_valid_signature_when_an_auth_token_is_set() {
    let server = start("plain.json", |c| {
        c.public_url = Some("https://agent.example".into());
        c.twilio_auth_token = Some(turnflow::flux::ApiKey::new("12345"));
    })
    .await;
    let client = reqwest::Client::new();
    let form = [("CallSid", "CA1"), ("From", "+15550100")];
    let params: Vec<(String, String)> = form
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let url = format!("http://{}/twilio/voice", server.addr);
    let encode = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B")))
            .collect::<Vec<_>>()
            .join("&")
    };
    let post = |body: String| {
        client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let unsigned = post(encode(&form)).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let signature = turnflow::server::telephony::twilio_signature(
        "12345",
        "https://agent.example/twilio/voice",
        &params,
    );
    let signed = post(encode(&form))
        .header("x-twilio-signature", &signature)
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    let twiml = signed.text().await.unwrap();
    assert!(
        twiml.contains("<Connect><Stream url=\"wss://agent.example/telephony\"/></Connect>"),
        "{twiml}"
    );
    let forged = post(encode(&[("CallSid", "CA2"), ("From", "+15550100")]))
        .header("x-twilio-signature", &signature)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401, "the signature covers the parameters");

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = format!("ws://{}/telephony", server.addr);
    match tokio_tungstenite::connect_async(stream.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("an unsigned stream is refused: {:?}", other.map(|_| ())),
    }
    let mut request = stream.as_str().into_client_request().unwrap();
    let signature = turnflow::server::telephony::twilio_signature(
        "12345",
        "wss://agent.example/telephony",
        &[],
    );
    request
        .headers_mut()
        .insert("x-twilio-signature", signature.parse().unwrap());
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    let _ = socket.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_greeted_and_a_silent_caller_reprompted_then_let_go() {
    let server = start_with("plain.json", true, |c| {
        c.greeting = Some("Thanks for calling.".into());
        c.reprompt_after = Some(Duration::from_millis(1500));
    })
    .await;
    let mut plan = Plan::new(Kind::Twilio, "silent");
    plan.length = Duration::from_secs(20);
    let heard = phone_call(server.addr, plan).await;
    assert!(
        heard.closed,
        "the agent hung up before the caller did: {heard:?}"
    );
    settled(&server.metrics).await;
    let session = server.seen.session_tagged("silent");
    let events = server.seen.events_of(&session);
    let prompts = events
        .iter()
        .filter(|e| matches!(e, EngineEvent::Prompting { .. }))
        .count();
    let spoken: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::ResponseEnded { heard, .. } => Some(heard.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(prompts, 3, "{events:?}");
    assert_eq!(
        spoken,
        [
            "Thanks for calling.",
            "Are you still there?",
            "I'll let you go now. Goodbye!"
        ]
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, EngineEvent::UserStarted { .. }))
    );
    assert_eq!(server.metrics.sessions(SessionEnd::Completed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_telnyx_call_greeting_turn_barge_in_dtmf_and_stop() {
    let server = start("barge_in.json", |c| {
        c.greeting = Some("Hello.".into());
    })
    .await;
    let mut plan = Plan::new(Kind::Telnyx, "whole");
    plan.barge_in_after = Some(Duration::from_millis(2500));
    plan.dtmf = Some("#");
    plan.out_of_order = true;
    plan.length = Duration::from_secs(12);
    let heard = phone_call(server.addr, plan).await;
    settled(&server.metrics).await;
    assert_eq!(heard.clears, 1, "{heard:?}");
    let session = server.seen.session_tagged("whole");
    let events = server.seen.events_of(&session);
    let spoken: Vec<(&str, bool)> = events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::ResponseEnded {
                heard, interrupted, ..
            } => Some((heard.as_str(), *interrupted)),
            _ => None,
        })
        .collect();
    assert_eq!(spoken[0], ("Hello.", false), "the greeting: {spoken:?}");
    assert!(
        spoken[1].1 && spoken[1].0.starts_with("You can return"),
        "the first answer, cut by the caller: {spoken:?}"
    );
    assert!(
        spoken[2].0.starts_with("Yes, sale items"),
        "the second answer: {spoken:?}"
    );
    assert_eq!(
        *server.seen.digits.lock().unwrap(),
        [(session.clone(), "#".to_owned())]
    );
    let calls = server.seen.calls.lock().unwrap();
    assert_eq!(calls[0].1.call_id, "v3:c1");
    assert_eq!(server.metrics.sessions(SessionEnd::Completed), 1);
}

/// A carrier's REST API on loopback, accepting every request.
async fn carrier_api() -> (String, http::Requests) {
    http::recorder(|_| Some(("200 OK", "{}".to_owned()))).await
}

/// A caller asks for a person; once the agent has said it passes them on, the carrier is asked
/// to transfer the call, as each documents it, and the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_call_asks_each_carrier_to_dial_the_number() {
    for kind in [Kind::Twilio, Kind::Telnyx] {
        let scenario = Arc::new(
            Scenario::parse(
                r#"{"name":"transfer","listen":{"eot_threshold":0.7},"turns":[
                  {"start":{"at_ms":500},"say":"Can I talk to a person?",
                   "calls":[{"tool":"transfer_call","arguments":{"reason":"asked for a person"}}],
                   "reply":"Of course, I am passing you to a colleague."}]}"#,
                "transfer",
            )
            .unwrap(),
        );
        let (url, requests) = carrier_api().await;
        let server = start_scenario(scenario, false, |config| {
            config.transfer_to = Some("+15551234567".into());
            config.carrier_api.twilio_base = url.clone();
            config.carrier_api.telnyx_base = url.clone();
            config.carrier_api.twilio_auth_token = Some(turnflow::flux::ApiKey::new("tok"));
            config.carrier_api.telnyx_api_key = Some(turnflow::flux::ApiKey::new("KEY1"));
        })
        .await;
        let mut plan = Plan::new(kind, "transfer");
        plan.length = Duration::from_secs(12);
        let heard = phone_call(server.addr, plan).await;
        settled(&server.metrics).await;
        assert!(heard.closed, "the stream ended after the transfer");
        let requests = requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 1, "{requests:?}");
        let (head, body) = &requests[0];
        let lower = head.to_ascii_lowercase();
        match kind {
            Kind::Twilio => {
                assert!(
                    head.starts_with("POST /2010-04-01/Accounts/AC0/Calls/CA1.json HTTP/1.1"),
                    "{head}"
                );
                let basic = base64::engine::general_purpose::STANDARD.encode("AC0:tok");
                assert!(
                    lower.contains(&format!(
                        "authorization: basic {}",
                        basic.to_ascii_lowercase()
                    )),
                    "{head}"
                );
                assert!(lower.contains("content-type: application/x-www-form-urlencoded"));
                assert_eq!(
                    body,
                    "Twiml=%3CResponse%3E%3CDial%3E%2B15551234567%3C%2FDial%3E%3C%2FResponse%3E"
                );
            }
            Kind::Telnyx => {
                assert!(
                    head.starts_with("POST /v2/calls/v3:c1/actions/transfer HTTP/1.1"),
                    "{head}"
                );
                assert!(lower.contains("authorization: bearer key1"), "{head}");
                assert_eq!(body, r#"{"to":"+15551234567"}"#);
            }
        }
        let session = server.seen.session_tagged("transfer");
        let events = server.seen.events_of(&session);
        assert!(
            events.iter().any(|e| matches!(e, EngineEvent::ResponseEnded { heard, interrupted: false, .. } if heard == "Of course, I am passing you to a colleague.")),
            "{events:?}"
        );
        assert_eq!(server.metrics.sessions(SessionEnd::Completed), 1);
    }
}
