//! `turnflow serve` end to end on loopback: a server on port 0 with the in-memory emulator
//! (scripted turns), the scripted model and the synthetic voice, and clients speaking the
//! session protocol (docs/protocol.md) over real WebSockets. Timing here is the real clock,
//! but nothing asserts a wall-clock threshold: limits are exercised by what a client sends,
//! and every wait has a generous bound only so that a broken server fails instead of hanging.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use turnflow::emulator::{EmulatorConfig, MemoryEmulator};
use turnflow::engine::Backends;
use turnflow::flux::{Connector, Encoding, FluxConfig, ListenOptions};
use turnflow::llm::scripted::Fault;
use turnflow::llm::{FailoverLlm, LanguageModel, LlmError, LlmRequest, LlmStream, ScriptedLlm};
use turnflow::scenario::Scenario;
use turnflow::server::metrics::SessionEnd;
use turnflow::server::protocol::{FromClient, PROTOCOL_VERSION, Played, Start, ToClient};
use turnflow::server::{DrainReport, Server, ServerConfig};
use turnflow::tts::SyntheticTts;
use turnflow::ws::{ConnectError, ConnectRequest, Connection};

/// Bound for anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

/// Counts the Flux connections open now (the emulator's, wrapped).
struct Counted {
    inner: MemoryEmulator,
    open: Arc<AtomicUsize>,
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Connector for Counted {
    async fn connect(&self, request: &ConnectRequest) -> Result<Connection, ConnectError> {
        let mut connection = self.inner.connect(request).await?;
        self.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(self.open.clone());
        connection.stream = Box::pin(connection.stream.inspect(move |_| {
            let _ = &guard;
        }));
        Ok(connection)
    }
}

/// The scripted model, counting its streams still open.
struct CountedLlm {
    inner: ScriptedLlm,
    open: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl LanguageModel for CountedLlm {
    fn name(&self) -> &str {
        "counted"
    }

    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, LlmError> {
        let stream = self.inner.stream(request).await?;
        self.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(self.open.clone());
        Ok(Box::pin(stream.inspect(move |_| {
            let _ = &guard;
        })))
    }
}

fn scenario(file: &str) -> Arc<Scenario> {
    Arc::new(Scenario::load(format!("scenarios/{file}").as_ref()).unwrap())
}

struct Setup {
    config: ServerConfig,
    flux_open: Arc<AtomicUsize>,
    llm_open: Arc<AtomicUsize>,
}

fn setup(file: &str) -> Setup {
    setup_on(scenario(file))
}

fn setup_on(scenario: Arc<Scenario>) -> Setup {
    let open = Arc::new(AtomicUsize::new(0));
    let connector = Counted {
        inner: MemoryEmulator::new(EmulatorConfig::new(scenario.clone())),
        open: open.clone(),
    };
    let mut options = ListenOptions::raw(Encoding::Linear16, 16000);
    if let Some(t) = scenario.listen {
        options = options.with_thresholds(t);
    }
    let llm_open = Arc::new(AtomicUsize::new(0));
    let backends = Backends {
        llm: Arc::new(CountedLlm {
            inner: ScriptedLlm::from_scenario(&scenario),
            open: llm_open.clone(),
        }),
        tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
        tools: None,
    };
    Setup {
        config: ServerConfig::new(
            FluxConfig::new(options).with_base_url("ws://emulator.invalid"),
            Arc::new(connector),
            backends,
        ),
        flux_open: open,
        llm_open,
    }
}

/// A running server and the way to start its drain.
struct Running {
    addr: std::net::SocketAddr,
    metrics: Arc<turnflow::server::Metrics>,
    drain: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<DrainReport>>,
}

async fn start(config: ServerConfig) -> Running {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let addr = server.local_addr();
    let metrics = server.metrics();
    let (drain, signal) = oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(async move {
        let _ = signal.await;
    }));
    Running {
        addr,
        metrics,
        drain: Some(drain),
        served,
    }
}

impl Running {
    async fn drain(mut self) -> DrainReport {
        let _ = self.drain.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.served)
            .await
            .expect("the drain ends")
            .unwrap()
            .unwrap()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A client like the browser page: streams 20 ms of silence at real time while `talking`,
/// acknowledges the agent audio it received as played, and collects what the server says.
struct Client {
    to_server: mpsc::UnboundedSender<Message>,
    from_server: mpsc::UnboundedReceiver<Message>,
    agent_samples: u64,
    /// How far behind what it received the client says it has played (its jitter buffer).
    ack_lag: u64,
    clears: usize,
    /// The user starts speaking over the agent once this much agent audio arrived.
    barge_in_after: Option<u64>,
    /// Whether the "microphone" carries speech (loud samples) rather than silence.
    loud: Arc<std::sync::atomic::AtomicBool>,
}

async fn open(addr: std::net::SocketAddr, path: &str) -> Result<Socket, u16> {
    match connect_async(format!("ws://{addr}{path}")).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("connect: {e}"),
    }
}

/// A browser's `start` at 16 kHz.
fn start_message() -> FromClient {
    FromClient::Start(Start {
        version: PROTOCOL_VERSION,
        sample_rate: 16000,
    })
}

fn text(message: &FromClient) -> Message {
    Message::Text(message.to_json().into())
}

impl Client {
    /// Connects, sends `start` and streams audio in real time from then on.
    async fn start(addr: std::net::SocketAddr) -> Client {
        let mut socket = open(addr, "/session").await.expect("admitted");
        socket.send(text(&start_message())).await.unwrap();
        Client::over(socket, true)
    }

    fn over(socket: Socket, stream_audio: bool) -> Client {
        let (mut write, mut read) = socket.split();
        let (to_server, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let (incoming, from_server) = mpsc::unbounded_channel();
        let loud = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let speech = loud.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    message = outgoing.recv() => match message {
                        Some(m) => if write.send(m).await.is_err() { break },
                        None => { let _ = write.close().await; break }
                    },
                    _ = tick.tick(), if stream_audio => {
                        let sample: i16 = if speech.load(Ordering::SeqCst) { 0x2000 } else { 0 };
                        let frame: Vec<u8> = (0..320).flat_map(|_| sample.to_le_bytes()).collect();
                        if write.send(Message::Binary(frame.into())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            while let Some(Ok(message)) = read.next().await {
                if incoming.send(message).is_err() {
                    break;
                }
            }
        });
        Client {
            to_server,
            from_server,
            agent_samples: 0,
            ack_lag: 0,
            clears: 0,
            barge_in_after: None,
            loud,
        }
    }

    fn send(&self, message: FromClient) {
        let _ = self.to_server.send(text(&message));
    }

    /// The next text message (agent audio is counted and acknowledged on the way), or the
    /// close code when the server closed.
    async fn next(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.from_server.recv())
                .await
                .expect("the server says something");
            match message {
                Some(Message::Text(text)) => {
                    // Every message the server sends reads back through its own type.
                    if let Err(e) = ToClient::parse(&text) {
                        panic!("{text}: {e}");
                    }
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "clear" {
                        self.clears += 1;
                    }
                    if value["type"] == "user_finished" {
                        self.loud.store(false, Ordering::SeqCst);
                    }
                    return Ok(value);
                }
                Some(Message::Binary(audio)) => {
                    self.agent_samples += audio.len() as u64 / 2;
                    if self.barge_in_after.is_some_and(|n| self.agent_samples >= n) {
                        self.barge_in_after = None;
                        self.loud.store(true, Ordering::SeqCst);
                    }
                    let played = self.agent_samples.saturating_sub(self.ack_lag);
                    self.send(FromClient::Played(Played {
                        samples: played,
                        buffered: 0,
                    }));
                }
                Some(Message::Close(frame)) => return Err(frame.map(|f| u16::from(f.code))),
                Some(_) => {}
                None => return Err(None),
            }
        }
    }

    /// Messages up to one of type `kind` (returned last).
    async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Ok(m) => {
                    let done = m["type"] == kind;
                    seen.push(m);
                    if done {
                        return seen;
                    }
                }
                Err(code) => panic!("closed ({code:?}) before {kind}; saw {seen:?}"),
            }
        }
    }

    /// The error the server ends with, then its close code.
    async fn refused(&mut self) -> (Value, Option<u16>) {
        let mut error = Value::Null;
        loop {
            match self.next().await {
                Ok(m) if m["type"] == "error" => error = m,
                Ok(_) => {}
                Err(code) => return (error, code),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flux_connection_lost_mid_call_is_ridden_through_and_counted() {
    let s = setup_on(Arc::new(
        Scenario::parse(
            r#"{
              "name": "dropped",
              "listen": {"eot_threshold": 0.7, "eot_timeout_ms": 5000},
              "faults": [{"kind": "drop", "at_ms": 300}],
              "turns": [{"start": {"at_ms": 500}, "say": "What time do you open tomorrow?", "reply": "We open at nine."}]
            }"#,
            "inline",
        )
        .unwrap(),
    ));
    let server = start(s.config).await;
    let mut client = Client::start(server.addr).await;
    client.until("ready").await;
    let conversation = client.until("turn").await;
    assert!(
        conversation
            .iter()
            .any(|m| m["type"] == "response_ended" && m["heard"] == "We open at nine."),
        "{conversation:?}"
    );
    client.send(FromClient::Stop);
    client.until("end").await;
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("turnflow_flux_reconnects_total{outcome=\"reconnected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("turnflow_flux_reconnects_total{outcome=\"failed\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("turnflow_flux_offline_seconds_total "),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_breaker_opened_shows_down_on_metrics() {
    let mut s = setup("plain.json");
    let mut down = ScriptedLlm::from_scenario(&scenario("plain.json"));
    for call in 0..2 {
        down = down.fail_call(call, Fault::Reject(503));
    }
    let mut chain = FailoverLlm::new(vec![Arc::new(down)]);
    chain.trip_after = Duration::ZERO;
    s.config.backends.llm = Arc::new(chain);
    let server = start(s.config).await;
    let (_, before) = server.get("/metrics").await;
    assert!(
        before.contains("turnflow_provider_up{kind=\"llm\",provider=\"scripted\"} 1"),
        "{before}"
    );
    let mut client = Client::start(server.addr).await;
    client.until("ready").await;
    let conversation = client.until("turn").await;
    assert!(
        conversation.iter().any(|m| m["type"] == "response_ended"
            && m["heard"]
                .as_str()
                .is_some_and(|h| h.starts_with("Sorry, I'm having trouble"))),
        "{conversation:?}"
    );
    let (_, after) = server.get("/metrics").await;
    assert!(
        after.contains("turnflow_provider_up{kind=\"llm\",provider=\"scripted\"} 0"),
        "{after}"
    );
    assert!(
        !after.contains("kind=\"tts\""),
        "a voice outside a chain has no breaker to show"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_answered_reports_its_turn_and_ends_when_asked() {
    let s = setup("plain.json");
    let server = start(s.config).await;
    let mut client = Client::start(server.addr).await;
    let ready = client.until("ready").await.pop().unwrap();
    assert_eq!(ready["version"], 1);
    assert_eq!(ready["output_sample_rate"], 16000);
    let conversation = client.until("turn").await;
    let finished = conversation
        .iter()
        .find(|m| m["type"] == "user_finished")
        .expect("the user's final transcript");
    assert_eq!(finished["transcript"], "What time do you open tomorrow?");
    let ended = conversation
        .iter()
        .find(|m| m["type"] == "response_ended")
        .expect("the reply ended");
    assert_eq!(ended["heard"], "We open at nine in the morning.");
    assert!(
        client.agent_samples > 16000,
        "about two seconds of agent audio"
    );
    let turn = conversation.last().unwrap();
    assert_eq!(turn["index"], 0);
    assert!(
        turn["response_latency_ms"].as_f64().unwrap() > 0.0,
        "{turn}"
    );
    assert_eq!(turn["speculation"], "none");

    client.send(FromClient::Stop);
    let end = client.until("end").await.pop().unwrap();
    assert_eq!(end["reason"], "stopped");
    assert_eq!(end["turns"], 1);
    assert_eq!(client.next().await, Err(Some(1000)));

    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("turnflow_sessions_total{outcome=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("turnflow_turns_total 1"), "{metrics}");
    assert!(
        metrics.contains("turnflow_response_latency_seconds_count 1"),
        "{metrics}"
    );
    assert!(metrics.contains("turnflow_sessions_active 0"), "{metrics}");
    assert_eq!(s.flux_open.load(Ordering::SeqCst), 0);
    let report = server.drain().await;
    assert_eq!((report.running, report.stopped), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_request_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = setup("plain.json");
    s.config.header_timeout = Duration::from_millis(500);
    let server = start(s.config).await;
    // Half a request, then nothing: a slowloris connection.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, slow.read_to_end(&mut answer))
        .await
        .expect("the server closed the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // Whole requests and sessions are served as before.
    assert_eq!(server.get("/healthz").await.0, 200);
    let mut client = Client::start(server.addr).await;
    let turn = client.until("turn").await.pop().unwrap();
    assert_eq!(turn["index"], 0);
    client.send(FromClient::Stop);
    assert_eq!(
        client.until("end").await.pop().unwrap()["reason"],
        "stopped"
    );
    server.drain().await;
}

/// An application observer that panics on the first event it sees, and counts its calls.
struct PanickingObserver {
    calls: AtomicUsize,
}

impl turnflow::server::SessionObserver for PanickingObserver {
    fn event(&self, _session: &str, _event: &turnflow::engine::EngineEvent) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        panic!("the application's bug");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_that_panics_stops_observing_and_the_conversation_goes_on() {
    let mut s = setup("plain.json");
    let observer = Arc::new(PanickingObserver {
        calls: AtomicUsize::new(0),
    });
    s.config.observer = Some(observer.clone());
    let server = start(s.config).await;
    let mut client = Client::start(server.addr).await;
    let conversation = client.until("turn").await;
    let ended = conversation
        .iter()
        .find(|m| m["type"] == "response_ended")
        .expect("the reply ended");
    assert_eq!(ended["heard"], "We open at nine in the morning.");
    client.send(FromClient::Stop);
    let end = client.until("end").await.pop().unwrap();
    assert_eq!(end["reason"], "stopped");
    assert_eq!(
        observer.calls.load(Ordering::SeqCst),
        1,
        "called once, then left out"
    );
    settled(&server.metrics).await;
    assert_eq!(server.metrics.sessions(SessionEnd::Completed), 1);
    server.drain().await;
}

/// With `record_dir` every session leaves a recording that replays offline to the same
/// conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_session_replays_to_the_same_conversation() {
    let dir = std::env::temp_dir().join(format!("turnflow-serve-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut s = setup("plain.json");
    s.config.record_dir = Some(dir.clone());
    let server = start(s.config).await;
    let mut client = Client::start(server.addr).await;
    let session = client.until("ready").await.pop().unwrap()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    client.until("turn").await;
    client.send(FromClient::Stop);
    client.until("end").await;
    server.drain().await;

    let recording = turnflow::recording::Recording::load(&dir.join(&session)).unwrap();
    assert_eq!(recording.meta.source, "serve");
    assert!(recording.user_audio.len() > 16000, "the caller's audio");
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
    assert!(replayed.generated_replies.is_empty() && replayed.generated_speech.is_empty());
    assert_eq!(
        replayed.result.history,
        [
            turnflow::llm::Message::user("What time do you open tomorrow?"),
            turnflow::llm::Message::assistant("We open at nine in the morning."),
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the user heard of the interrupted first reply of `barge_in.json`, with the client
/// saying it plays `lag` samples behind what it received.
async fn heard_of_the_cut_reply(addr: std::net::SocketAddr, lag: u64) -> (String, usize) {
    let mut client = Client::start(addr).await;
    client.ack_lag = lag;
    client.barge_in_after = Some(24000);
    let seen = client.until("interrupted").await;
    assert!(seen.iter().any(|m| m["type"] == "agent_sentence"));
    let ended = client.until("response_ended").await.pop().unwrap();
    assert_eq!(ended["interrupted"], true, "{ended}");
    client.send(FromClient::Stop);
    client.until("end").await;
    (ended["heard"].as_str().unwrap().to_owned(), client.clears)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barge_in_clears_the_client_and_keeps_what_it_played() {
    let s = setup("barge_in.json");
    let server = start(s.config).await;
    // Two callers at once: one whose playback keeps up with what it receives, one whose
    // buffer holds half a second.
    let (prompt, behind) = tokio::join!(
        heard_of_the_cut_reply(server.addr, 0),
        heard_of_the_cut_reply(server.addr, 8000),
    );
    assert_eq!(prompt.1, 1, "one clear for the one interruption");
    assert_eq!(behind.1, 1);
    let (prompt, behind) = (prompt.0, behind.0);
    eprintln!("heard with playback in step: {prompt:?}; half a second behind: {behind:?}");
    assert!(prompt.starts_with("You can return any item"), "{prompt}");
    assert!(
        prompt.starts_with(&behind) && behind.len() < prompt.len(),
        "half a second behind hears less: {behind:?} vs {prompt:?}"
    );
    let text = server.metrics.render(true, &[]);
    assert!(
        text.contains("turnflow_clear_sent_seconds_count 2"),
        "{text}"
    );
    assert!(
        text.contains("turnflow_heard_clock_total{clock=\"client_reports\"} 2"),
        "{text}"
    );
    server.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_closed_with_a_reason_and_disturb_no_one() {
    let mut s = setup("plain.json");
    // Long enough that the good session, sending every 20 ms, is never taken for idle on a
    // loaded machine; the idle cases wait it out.
    s.config.idle_timeout = Duration::from_secs(1);
    s.config.start_timeout = Duration::from_secs(1);
    let server = start(s.config).await;
    let addr = server.addr;
    let good = tokio::spawn(async move {
        let mut client = Client::start(addr).await;
        let turn = client.until("turn").await.pop().unwrap();
        client.send(FromClient::Stop);
        let end = client.until("end").await.pop().unwrap();
        (turn, end)
    });
    let start = start_message().to_json();
    let cases: Vec<(&str, Vec<Message>, &str, u16)> = vec![
        (
            "malformed json",
            vec![Message::Text("{nope".into())],
            "malformed",
            1007,
        ),
        (
            "unknown type",
            vec![Message::Text(r#"{"type":"dance"}"#.into())],
            "unknown_type",
            1007,
        ),
        (
            "audio before start",
            vec![Message::Binary(vec![0; 640].into())],
            "not_started",
            1003,
        ),
        (
            "unsupported rate",
            vec![Message::Text(
                r#"{"type":"start","version":1,"sample_rate":11025}"#.into(),
            )],
            "unsupported",
            1007,
        ),
        (
            "oversized frame",
            vec![
                Message::Text(start.clone().into()),
                Message::Binary(vec![0; 20_000].into()),
            ],
            "too_big",
            1009,
        ),
        (
            "a 100 KB frame",
            vec![
                Message::Text(start.clone().into()),
                Message::Binary(vec![0; 100_000].into()),
            ],
            "too_big",
            1009,
        ),
        (
            "odd-length frame",
            vec![
                Message::Text(start.clone().into()),
                Message::Binary(vec![0; 641].into()),
            ],
            "invalid_audio",
            1007,
        ),
        (
            "a file at full speed",
            std::iter::once(Message::Text(start.clone().into()))
                .chain((0..200).map(|_| Message::Binary(vec![0; 640].into())))
                .collect(),
            "too_fast",
            1008,
        ),
        (
            "a second start",
            vec![
                Message::Text(start.clone().into()),
                Message::Text(start.clone().into()),
            ],
            "invalid",
            1008,
        ),
        (
            "a flood of playback reports",
            std::iter::once(Message::Text(start.clone().into()))
                .chain((0..1000).map(|_| Message::Text(r#"{"type":"played","samples":0}"#.into())))
                .collect(),
            "flood",
            1008,
        ),
        (
            "a flood of pings",
            std::iter::once(Message::Text(start.clone().into()))
                .chain((0..1000).map(|_| Message::Ping(vec![1].into())))
                .collect(),
            "flood",
            1008,
        ),
        ("silent after connecting", vec![], "idle", 1008),
        (
            "silent after start",
            vec![Message::Text(start.clone().into())],
            "idle",
            1008,
        ),
    ];
    let count = cases.len() as u64;
    for (name, messages, code, close) in cases {
        let socket = open(addr, "/session").await.unwrap();
        let mut client = Client::over(socket, false);
        for m in messages {
            let _ = client.to_server.send(m);
        }
        let (error, closed) = client.refused().await;
        assert_eq!(error["code"], code, "{name}: {error}");
        assert!(!error["message"].as_str().unwrap().is_empty(), "{name}");
        assert_eq!(closed, Some(close), "{name}: {error}");
    }
    let (turn, end) = good.await.unwrap();
    assert_eq!(turn["index"], 0);
    assert_eq!(end["reason"], "stopped");
    settled(&server.metrics).await;
    assert_eq!(server.metrics.sessions(SessionEnd::ProtocolError), count);
    assert_eq!(server.metrics.sessions(SessionEnd::Completed), 1);
    server.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_refuses_before_the_upgrade_and_says_when_to_retry() {
    let mut s = setup("plain.json");
    s.config.max_sessions = 1;
    let server = start(s.config).await;
    assert_eq!(server.get("/readyz").await, (200, "ready\n".into()));
    let mut first = Client::start(server.addr).await;
    first.until("ready").await;
    let refused = connect_async(format!("ws://{}/session", server.addr)).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("refused over HTTP")
    };
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(server.get("/readyz").await, (503, "full\n".into()));
    first.send(FromClient::Stop);
    first.until("end").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.get("/readyz").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place is released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("turnflow_connections_refused_total{reason=\"full\"} 1"),
        "{metrics}"
    );
    server.drain().await;
}

/// Waits until no session is running (a session is counted once its closing handshake is
/// over, after the client saw `end`).
async fn settled(metrics: &turnflow::server::Metrics) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metrics.active() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "sessions end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn status_with(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes());
        request
            .headers_mut()
            .insert(name.unwrap(), value.parse().unwrap());
    }
    match connect_async(request).await {
        Ok((mut socket, response)) => {
            let _ = socket.close(None).await;
            response.status().as_u16()
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_origins_are_checked_before_the_upgrade() {
    let mut s = setup("plain.json");
    s.config.token = Some(turnflow::flux::ApiKey::new("s3cret"));
    let server = start(s.config).await;
    let addr = server.addr;
    assert_eq!(status_with(addr, "/session", &[]).await, 401);
    assert_eq!(status_with(addr, "/session?token=guess", &[]).await, 401);
    assert_eq!(status_with(addr, "/session?token=s3cret", &[]).await, 101);
    assert_eq!(
        status_with(addr, "/session", &[("authorization", "Bearer s3cret")]).await,
        101
    );
    let own = format!("http://{addr}");
    assert_eq!(
        status_with(addr, "/session?token=s3cret", &[("origin", &own)]).await,
        101,
        "the page this server serves"
    );
    assert_eq!(
        status_with(
            addr,
            "/session?token=s3cret",
            &[("origin", "https://evil.example")]
        )
        .await,
        403
    );
    server.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_refuses_new_sessions_and_lets_running_ones_finish() {
    let s = setup("plain.json");
    let server = start(s.config).await;
    let mut running = Client::start(server.addr).await;
    running.until("ready").await;
    let addr = server.addr;
    let Running {
        drain,
        served,
        metrics,
        ..
    } = server;
    drain.unwrap().send(()).unwrap();
    let get = |path: &'static str| async move {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while get("/readyz").await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get("/readyz").await, (503, "draining\n".into()));
    assert_eq!(get("/healthz").await.0, 200, "alive while draining");
    assert_eq!(status_with(addr, "/session", &[]).await, 503);
    // The running conversation goes on to its answer and ends normally.
    let turn = running.until("turn").await.pop().unwrap();
    assert_eq!(turn["index"], 0);
    running.send(FromClient::Stop);
    assert_eq!(
        running.until("end").await.pop().unwrap()["reason"],
        "stopped"
    );
    settled(&metrics).await;
    let report = tokio::time::timeout(PATIENCE, served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((report.running, report.stopped), (1, 0));
    assert_eq!(metrics.sessions(SessionEnd::Completed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_still_running_at_the_drain_timeout_are_told_and_closed() {
    let mut s = setup("plain.json");
    s.config.drain_timeout = Duration::from_millis(300);
    let server = start(s.config).await;
    let mut running = Client::start(server.addr).await;
    running.until("ready").await;
    let metrics = server.metrics.clone();
    let report = server.drain().await;
    assert_eq!((report.running, report.stopped), (1, 1));
    let end = running.until("end").await.pop().unwrap();
    assert_eq!(end["reason"], "server_shutdown");
    assert_eq!(running.next().await, Err(Some(1001)));
    assert_eq!(metrics.sessions(SessionEnd::Shutdown), 1);
    assert_eq!(s.flux_open.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_vanishes_mid_reply_releases_every_provider_connection() {
    let s = setup("barge_in.json");
    let server = start(s.config).await;
    let mut client = Client::start(server.addr).await;
    client.until("agent_speaking").await;
    assert_eq!(s.flux_open.load(Ordering::SeqCst), 1);
    assert_eq!(
        s.llm_open.load(Ordering::SeqCst),
        1,
        "the reply is streaming"
    );
    drop(client);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.metrics.active() > 0
        || s.flux_open.load(Ordering::SeqCst) > 0
        || s.llm_open.load(Ordering::SeqCst) > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.metrics.sessions(SessionEnd::ClientClosed), 1);
    server.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_ended_before_the_kernel_buffers_a_whole_reply() {
    // Twenty seconds of reply, 640 KB of 16 kHz audio: a send buffer the kernel grew to
    // megabytes would take all of it, and the stall would never show.
    let reply = "The town library is open from nine in the morning until six in the evening on \
        weekdays and from ten until four on Saturdays. It is closed on Sundays and on public \
        holidays. You can borrow up to twelve books at a time for three weeks, renew them twice \
        online or at the desk, and reserve new titles for free. The reading room on the first \
        floor has quiet desks, power outlets and free wireless access for every member.";
    let scenario = format!(
        r#"{{"name":"long","listen":{{"eot_threshold":0.7}},
            "turns":[{{"start":{{"at_ms":500}},"say":"When are you open?","reply":"{reply}"}}]}}"#
    );
    let setup = setup_on(Arc::new(Scenario::parse(&scenario, "long").unwrap()));
    let server = start(setup.config).await;
    // A client whose own receive buffer is small, as a phone on a bad network's would be full.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(server.addr).await.unwrap();
    let url = format!("ws://{}/session", server.addr);
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    socket.send(text(&start_message())).await.unwrap();
    tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(message)) = socket.next().await {
            if message.to_text().is_ok_and(|t| t.contains(r#""ready""#)) {
                break;
            }
        }
    })
    .await
    .expect("ready");
    // From here on the client only talks: its audio keeps the session from going idle, and
    // nothing it is sent is read.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let silence = vec![0u8; 640];
    let ended = tokio::time::timeout(4 * PATIENCE, async {
        while server.metrics.sessions(SessionEnd::ClientClosed) == 0 {
            tick.tick().await;
            if socket
                .send(Message::Binary(silence.clone().into()))
                .await
                .is_err()
            {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the server still buffers for a client that stopped reading"
    );
    settled(&server.metrics).await;
    assert_eq!(server.metrics.sessions(SessionEnd::ClientClosed), 1);
    assert_eq!(setup.flux_open.load(Ordering::SeqCst), 0);
}
