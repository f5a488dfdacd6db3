//! `turnflow serve` attacked as a client on the internet would attack it, on loopback: a server
//! on port 0 (in-memory emulator, scripted model, synthetic voice) and clients that hold
//! connections without starting, flood, trickle request bodies, send audio after `stop`, open
//! the phone route from a foreign page, and put newlines and secrets where text goes. Each test
//! is one way the server was held or leaked before its deadlines and bounds existed.
//!
//! Deadlines here are short (hundreds of milliseconds) and nothing asserts a wall-clock
//! threshold: a test waits for the server to act, bounded by [`PATIENCE`] only so that a server
//! that never acts (the failure) ends the test instead of hanging it.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use turnflow::emulator::{EmulatorConfig, MemoryEmulator};
use turnflow::engine::Backends;
use turnflow::flux::{ApiKey, Encoding, FluxConfig, ListenOptions};
use turnflow::llm::{LanguageModel, LlmError, LlmRequest, LlmStream, ScriptedLlm};
use turnflow::scenario::Scenario;
use turnflow::server::metrics::SessionEnd;
use turnflow::server::protocol::{FromClient, PROTOCOL_VERSION, Start};
use turnflow::server::{DrainReport, Metrics, Server, ServerConfig};
use turnflow::tts::SyntheticTts;

mod support;

/// Bound for anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);
/// The deadlines of the servers here.
const DEADLINE: Duration = Duration::from_millis(600);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Everything the servers of this file log, at debug and above, to look for what must not be
/// there. One subscriber for the whole test binary: the servers' tasks run on many threads.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("turnflow=debug")
            .with_ansi(false)
            .with_writer(move || Captured(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
}

struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

struct Running {
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    drain: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<DrainReport>>,
}

/// A server with [`DEADLINE`] for `start` and idleness, configured further by `configure`.
async fn serve(configure: impl FnOnce(&mut ServerConfig)) -> Running {
    logs();
    let scenario = Arc::new(Scenario::load("scenarios/plain.json".as_ref()).unwrap());
    let mut options = ListenOptions::raw(Encoding::Linear16, 16000);
    if let Some(t) = scenario.listen {
        options = options.with_thresholds(t);
    }
    let mut config = ServerConfig::new(
        FluxConfig::new(options).with_base_url("ws://emulator.invalid"),
        Arc::new(MemoryEmulator::new(EmulatorConfig::new(scenario.clone()))),
        Backends {
            llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
            tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
            tools: None,
        },
    );
    config.start_timeout = DEADLINE;
    config.idle_timeout = DEADLINE;
    configure(&mut config);
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let (addr, metrics) = (server.local_addr(), server.metrics());
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
    /// Drains; the server must return whatever its clients do.
    async fn drain(mut self) -> DrainReport {
        let _ = self.drain.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.served)
            .await
            .expect("the drain returns")
            .unwrap()
            .unwrap()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// Waits until no session runs.
    async fn settled(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.metrics.active() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "sessions end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Opens a WebSocket at `path` with `headers`: the socket, or the HTTP status of the refusal.
async fn open(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Socket, u16> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("connect: {e}"),
    }
}

/// How the server ended a connection: its `error` message, if it sent one, and its close code.
#[derive(Debug)]
struct Closed {
    error: Option<Value>,
    code: Option<u16>,
}

/// Sends `keep_sending` every 100 ms (what holds a connection open without doing anything) and
/// reads until the server closes.
async fn held_open_with(socket: Socket, keep_sending: Message) -> Closed {
    closed_while_sending(socket, keep_sending)
        .await
        .expect("the server closes a connection that only keeps itself open")
}

/// [`held_open_with`], or `None` when the server has not closed within [`PATIENCE`].
async fn closed_while_sending(mut socket: Socket, keep_sending: Message) -> Option<Closed> {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    // A late tick must not become a burst: audio sent ahead of real time is closed by the
    // server's guard, which is not what these tests hold open.
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut error = None;
    let read = async {
        loop {
            tokio::select! {
                _ = every.tick() => {
                    if socket.send(keep_sending.clone()).await.is_err() {
                        return None;
                    }
                }
                message = socket.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        let value: Value = serde_json::from_str(&text).unwrap();
                        if value["type"] == "error" {
                            error = Some(value);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => return None,
                },
            }
        }
    };
    let code = tokio::time::timeout(PATIENCE, read).await.ok()?;
    Some(Closed { error, code })
}

/// A browser's `start` at 16 kHz, as the protocol's own type writes it.
fn start_text() -> String {
    FromClient::Start(Start {
        version: PROTOCOL_VERSION,
        sample_rate: 16000,
    })
    .to_json()
}
const TWILIO_CONNECTED: &str = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;

fn twilio_start(call_sid: &str) -> String {
    json!({
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC0",
            "streamSid": "MZ1",
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": {"caller": "+15550100"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        },
        "streamSid": "MZ1"
    })
    .to_string()
}

fn twilio_mark(name: &str) -> String {
    json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": name}}).to_string()
}

fn twilio_dtmf(digit: &str) -> String {
    json!({"event": "dtmf", "streamSid": "MZ1", "dtmf": {"track": "inbound_track", "digit": digit}})
        .to_string()
}

/// The head of a 100 KB Twilio webhook request; its body follows a byte at a time.
const SLOW_POST: &[u8] = b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n\
    Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\nC";

/// A request body sent a byte every 100 ms for as long as the server takes it.
async fn trickle_body(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    trickle.write_all(SLOW_POST).await.unwrap();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if trickle.write_all(b"a").await.is_err() {
                return;
            }
        }
    })
}

/// Streams 20 ms of silence every 20 ms, as a microphone does, until `wanted` picks something
/// from what the server sends.
async fn talk_until<T>(socket: &mut Socket, mut wanted: impl FnMut(&Message) -> Option<T>) -> T {
    let mut every = tokio::time::interval(Duration::from_millis(20));
    let talking = async {
        loop {
            tokio::select! {
                _ = every.tick() => {
                    let _ = socket.send(Message::Binary(vec![0; 640].into())).await;
                }
                message = socket.next() => match message {
                    Some(Ok(message)) => {
                        if let Some(found) = wanted(&message) {
                            return found;
                        }
                    }
                    _ => panic!("the session ended before what the test waits for"),
                },
            }
        }
    };
    tokio::time::timeout(PATIENCE, talking)
        .await
        .expect("the server sends what the test waits for")
}

/// A JSON text message from the server.
fn event(message: &Message) -> Option<Value> {
    match message {
        Message::Text(text) => serde_json::from_str(text).ok(),
        _ => None,
    }
}

/// Failure 1: messages before `start` no longer restart its timer, on either route; the
/// places they held are free again for real callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinging_or_connecting_without_start_is_ended_at_the_start_deadline() {
    let server = serve(|c| c.max_sessions = 3).await;
    let browser = open(server.addr, "/session", &[]).await.unwrap();
    let pinger = open(server.addr, "/telephony", &[]).await.unwrap();
    let connected = open(server.addr, "/telephony", &[]).await.unwrap();
    let (browser, pinger, connected) = tokio::join!(
        held_open_with(browser, Message::Ping(vec![1].into())),
        held_open_with(pinger, Message::Ping(vec![1].into())),
        held_open_with(connected, Message::Text(TWILIO_CONNECTED.into())),
    );
    let error = browser.error.expect("the browser is told why");
    assert_eq!(error["code"], "idle", "{error}");
    assert_eq!(browser.code, Some(1008));
    // A carrier is closed without a code (it reads none): returning at all is the check.
    drop((pinger, connected));
    server.settled().await;
    assert_eq!(server.metrics.sessions(SessionEnd::ProtocolError), 3);
    let ready = server.get("/readyz", &[]).await;
    assert_eq!(ready.status(), 200, "the places are free again");
    let report = server.drain().await;
    assert_eq!(report.running, 0);
}

/// Failure 1: before `start` there was no flood limit (5000 pings and 125 MiB of binary were
/// taken on `/telephony`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_before_start_or_binary_to_a_carrier_route_is_refused() {
    let server = serve(|c| c.start_timeout = PATIENCE * 2).await;
    for path in ["/session", "/telephony"] {
        let mut socket = open(server.addr, path, &[]).await.unwrap();
        for _ in 0..1000 {
            if socket.send(Message::Ping(vec![1].into())).await.is_err() {
                break;
            }
        }
        let closed = held_open_with(socket, Message::Ping(vec![1].into())).await;
        if path == "/session" {
            let error = closed.error.expect("told why");
            assert_eq!(error["code"], "flood", "{error}");
            assert_eq!(closed.code, Some(1008));
        }
    }
    let binary = open(server.addr, "/telephony", &[]).await.unwrap();
    held_open_with(binary, Message::Binary(vec![0; 16 * 1024].into())).await;
    server.settled().await;
    assert_eq!(server.metrics.sessions(SessionEnd::ProtocolError), 3);
    server.drain().await;
}

/// Failure 6: a call kept open by marks (or DTMF) alone ends at the idle timeout, as the docs
/// say; only media count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sending_only_marks_or_digits_ends_at_the_idle_timeout() {
    let server = serve(|_| {}).await;
    for keep_alive in [twilio_mark("tf-1"), twilio_dtmf("5")] {
        let mut call = open(server.addr, "/telephony", &[]).await.unwrap();
        call.send(Message::Text(twilio_start("CA1").into()))
            .await
            .unwrap();
        held_open_with(call, Message::Text(keep_alive.into())).await;
    }
    server.settled().await;
    assert_eq!(server.metrics.sessions(SessionEnd::ProtocolError), 2);
    // A browser sending only playback reports after start is idle too.
    let mut browser = open(server.addr, "/session", &[]).await.unwrap();
    browser
        .send(Message::Text(start_text().into()))
        .await
        .unwrap();
    let closed = held_open_with(
        browser,
        Message::Text(r#"{"type":"played","samples":0}"#.into()),
    )
    .await;
    let error = closed.error.expect("told why");
    assert_eq!(error["code"], "idle", "{error}");
    server.drain().await;
}

/// Failures 1 and 2: a drain with sockets waiting for `start`, a session streaming audio, a
/// request body trickling in and a connection half through its headers returns once the
/// drain timeout has passed and the session was stopped; it used to wait for them forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_whatever_hostile_clients_are_connected() {
    let server = serve(|c| {
        c.start_timeout = PATIENCE * 2;
        c.idle_timeout = PATIENCE * 2;
        c.body_timeout = PATIENCE * 2;
        c.header_timeout = PATIENCE * 2;
        c.drain_timeout = Duration::from_millis(500);
        c.public_url = Some("https://agent.example".into());
    })
    .await;
    let addr = server.addr;
    let browser = open(addr, "/session", &[]).await.unwrap();
    let carrier = open(addr, "/telephony", &[]).await.unwrap();
    let waiting = tokio::spawn(held_open_with(browser, Message::Ping(vec![1].into())));
    let connected = tokio::spawn(held_open_with(
        carrier,
        Message::Text(TWILIO_CONNECTED.into()),
    ));
    let mut talking = open(addr, "/session", &[]).await.unwrap();
    talking
        .send(Message::Text(start_text().into()))
        .await
        .unwrap();
    let talking = tokio::spawn(held_open_with(
        talking,
        Message::Binary(vec![0; 3200].into()),
    ));
    let trickling = trickle_body(addr).await;
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost:")
        .await
        .unwrap();
    // Every connection is in: the session is running, the body is arriving.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.metrics.active() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "sessions start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = server.metrics.clone();
    let report = server.drain().await;
    assert_eq!(report.running, 3, "{report:?}");
    assert_eq!(report.stopped, 1, "the running session: {report:?}");
    let waiting = waiting.await.unwrap();
    assert_eq!(waiting.code, Some(1001), "{waiting:?}");
    assert_eq!(talking.await.unwrap().code, Some(1001));
    connected.await.unwrap();
    trickling.abort();
    assert_eq!(metrics.sessions(SessionEnd::Shutdown), 3);
}

/// Failure 2: a request body sent a byte at a time is answered 408 at the body deadline, and
/// one over the limit 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_huge_request_body_is_refused() {
    let server = serve(|c| {
        c.body_timeout = DEADLINE;
        c.public_url = Some("https://agent.example".into());
    })
    .await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(SLOW_POST).await.unwrap();
    let answered = async {
        let mut response = vec![0u8; 1024];
        loop {
            tokio::select! {
                read = slow.read(&mut response) => {
                    let n = read.unwrap();
                    return String::from_utf8_lossy(&response[..n]).into_owned();
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    let _ = slow.write_all(b"a").await;
                }
            }
        }
    };
    let response = tokio::time::timeout(PATIENCE, answered)
        .await
        .expect("the slow body is answered");
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    let huge = reqwest::Client::new()
        .post(format!("http://{}/twilio/voice", server.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("CallSid={}", "a".repeat(100_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let fine = reqwest::Client::new()
        .post(format!("http://{}/twilio/voice", server.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("CallSid=CA1")
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
    assert!(fine.text().await.unwrap().contains("<Stream url="));
    server.drain().await;
}

/// Failure 3: audio sent after `stop` while the reply finishes is dropped and counted, not
/// kept (it used to grow a buffer by 16 MiB in three seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_after_stop_is_dropped_and_counted() {
    let server = serve(|c| c.idle_timeout = PATIENCE).await;
    let mut socket = open(server.addr, "/session", &[]).await.unwrap();
    socket
        .send(Message::Text(start_text().into()))
        .await
        .unwrap();
    talk_until(&mut socket, |message| {
        matches!(message, Message::Binary(_)).then_some(())
    })
    .await;
    socket
        .send(Message::Text(FromClient::Stop.to_json().into()))
        .await
        .unwrap();
    const AFTER_STOP: u64 = 300;
    for _ in 0..AFTER_STOP {
        socket
            .send(Message::Binary(vec![0; 16 * 1024].into()))
            .await
            .unwrap();
    }
    let mut end = None;
    while let Some(Ok(message)) = tokio::time::timeout(PATIENCE, socket.next())
        .await
        .expect("the session ends")
    {
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["type"] == "end" {
                end = Some(value);
            }
        }
    }
    let end = end.expect("an end message");
    assert_eq!(end["reason"], "stopped", "{end}");
    server.settled().await;
    assert_eq!(server.metrics.audio_dropped_after_stop(), AFTER_STOP);
    let (status, text) = {
        let response = server.get("/metrics", &[]).await;
        (response.status(), response.text().await.unwrap())
    };
    assert_eq!(status, 200);
    assert!(
        text.contains(&format!(
            "turnflow_audio_dropped_after_stop_total {AFTER_STOP}"
        )),
        "{text}"
    );
    server.drain().await;
}

/// Failure 4: `/telephony` checks a browser's origin as `/session` does, and the default policy
/// refuses a DNS-rebinding request (the attacker's name as both Origin and Host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_pages_and_rebound_names_cannot_open_either_route() {
    let server = serve(|_| {}).await;
    let port = server.addr.port();
    let own = format!("http://127.0.0.1:{port}");
    let rebound_host = format!("evil.example:{port}");
    let rebound_origin = format!("http://{rebound_host}");
    for path in ["/session", "/telephony"] {
        let foreign = open(server.addr, path, &[("origin", "https://evil.example")]).await;
        assert_eq!(foreign.err(), Some(403), "{path}: another site");
        let rebound = open(
            server.addr,
            path,
            &[("origin", &rebound_origin), ("host", &rebound_host)],
        )
        .await;
        assert_eq!(rebound.err(), Some(403), "{path}: DNS rebinding");
        assert!(
            open(server.addr, path, &[("origin", &own)]).await.is_ok(),
            "{path}: the server's own page"
        );
        assert!(
            open(server.addr, path, &[]).await.is_ok(),
            "{path}: a carrier or SDK sends no Origin"
        );
    }
    server.drain().await;
    let named = serve(|c| c.public_url = Some("https://agent.example.com".into())).await;
    let allowed = open(
        named.addr,
        "/session",
        &[
            ("origin", "https://agent.example.com"),
            ("host", "agent.example.com"),
        ],
    )
    .await;
    assert!(allowed.is_ok(), "the public name is the server's own");
    named.drain().await;
}

/// A model that fails as a provider does when its 401 body echoes the key.
struct EchoesTheKey;

#[async_trait::async_trait]
impl LanguageModel for EchoesTheKey {
    fn name(&self) -> &str {
        "echoing"
    }

    async fn stream(&self, _: LlmRequest) -> Result<LlmStream, LlmError> {
        Err(LlmError::http(
            "echoing",
            401,
            None,
            "http 401: invalid key sk-live-0123456789\nINFO forged line",
        ))
    }
}

/// Failure 5: the client gets stable codes and fixed messages, never a provider's body; a
/// client's 900 KB field name comes back and reaches the log as a short line; a carrier's
/// `callSid` with a newline cannot forge a log line; a digit and the caller's number are not
/// logged, not even at debug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_client_or_provider_sends_leaves_the_process_unescaped() {
    let server = serve(|c| {
        c.idle_timeout = PATIENCE;
        c.backends.llm = Arc::new(EchoesTheKey);
    })
    .await;
    let mut socket = open(server.addr, "/session", &[]).await.unwrap();
    socket
        .send(Message::Text(start_text().into()))
        .await
        .unwrap();
    let ended = talk_until(&mut socket, |message| {
        event(message).filter(|v| v["type"] == "response_ended" && !v["error"].is_null())
    })
    .await;
    let error = &ended["error"];
    assert_eq!(
        (&error["kind"], &error["status"], &error["provider"]),
        (&json!("auth"), &json!(401), &json!("echoing")),
        "{ended}"
    );
    assert!(!ended.to_string().contains("sk-live"), "{ended}");
    let huge_field = format!(r#"{{"type":"stop","{}":1}}"#, "x".repeat(900_000));
    socket.send(Message::Text(huge_field.into())).await.unwrap();
    let closed = held_open_with(socket, Message::Ping(vec![1].into())).await;
    let error = closed.error.expect("told why");
    assert_eq!(error["code"], "invalid", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.len() < 400, "{} bytes", message.len());

    let mut call = open(server.addr, "/telephony", &[]).await.unwrap();
    call.send(Message::Text(twilio_dtmf("7").into()))
        .await
        .unwrap();
    call.send(Message::Text(
        twilio_start("CA9\n2026-01-01T00:00:00Z ERROR forged by the caller").into(),
    ))
    .await
    .unwrap();
    call.send(Message::Text(twilio_dtmf("8").into()))
        .await
        .unwrap();
    call.send(Message::Text(
        json!({"event": "stop", "streamSid": "MZ1"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    held_open_with(call, Message::Ping(vec![1].into())).await;
    server.settled().await;
    server.drain().await;
    let logs = logged();
    for line in logs.lines() {
        assert!(
            !line.starts_with("2026-01-01") && !line.starts_with("INFO forged"),
            "a forged line: {line}"
        );
        assert!(line.len() < 2000, "a line of {} bytes", line.len());
    }
    assert!(logs.contains(r"CA9\n2026-01-01"), "the call id, escaped");
    for secret in ["+15550100", "digit", "\"7\"", "\"8\""] {
        assert!(!logs.contains(secret), "{secret} logged");
    }
}

/// Item 7: the page carries headers that keep it to itself, and `/metrics` can be closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_framed_by_no_one_and_metrics_can_require_a_token() {
    let server = serve(|c| c.metrics_token = Some(ApiKey::new("scrape-me"))).await;
    let page = server.get("/", &[]).await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    for directive in [
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(server.get("/metrics", &[]).await.status(), 401);
    let wrong = server
        .get("/metrics", &[("authorization", "Bearer scrape-you")])
        .await;
    assert_eq!(wrong.status(), 401);
    let right = server
        .get("/metrics", &[("authorization", "Bearer scrape-me")])
        .await;
    assert_eq!(right.status(), 200);
    assert!(
        right
            .text()
            .await
            .unwrap()
            .contains("turnflow_sessions_active")
    );
    server.drain().await;
}

/// What a fuzzing client may send.
#[derive(Debug, Clone)]
enum Send {
    Text(String),
    Binary(usize),
    Ping,
    Pause(u64),
}

fn sends() -> impl proptest::strategy::Strategy<Value = Send> {
    use proptest::prelude::*;
    let texts = prop_oneof![
        Just(start_text()),
        Just(r#"{"type":"start","version":2,"sample_rate":16000}"#.to_owned()),
        Just(r#"{"type":"played","samples":1600,"buffered":320}"#.to_owned()),
        Just(r#"{"type":"stop"}"#.to_owned()),
        Just(TWILIO_CONNECTED.to_owned()),
        Just(twilio_start("CA7")),
        Just(twilio_mark("tf-3")),
        Just(twilio_dtmf("1")),
        Just(json!({"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "//8A"}}).to_string()),
        Just(json!({"event": "stop", "streamSid": "MZ1"}).to_string()),
        "[ -~\n]{0,40}",
    ];
    prop_oneof![
        4 => texts.prop_map(Send::Text),
        2 => (0usize..20_000).prop_map(Send::Binary),
        2 => Just(Send::Ping),
        1 => (0u64..150).prop_map(Send::Pause),
    ]
}

/// The codes a browser session may end with (docs/protocol.md).
const CODES: [&str; 12] = [
    "malformed",
    "unknown_type",
    "invalid",
    "unsupported",
    "not_started",
    "too_big",
    "invalid_audio",
    "too_fast",
    "flood",
    "idle",
    "stt_unavailable",
    "stt_failed",
];

/// Random sequences of protocol messages, carrier events, pings and binary frames on both
/// routes, then a client that keeps the socket open with pings: every connection ends by a
/// deadline or a refusal with a documented code and a short message, and a real session running
/// beside them is answered as if they were not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_hostile_sequences_end_by_their_deadlines_and_disturb_no_one() {
    use proptest::strategy::{Strategy, ValueTree};
    let server = serve(|c| {
        c.max_sessions = 100;
        c.finish_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = server.addr;
    let good = tokio::spawn(async move {
        let mut socket = open(addr, "/session", &[]).await.unwrap();
        socket
            .send(Message::Text(start_text().into()))
            .await
            .unwrap();
        let turn = talk_until(&mut socket, |m| event(m).filter(|v| v["type"] == "turn")).await;
        socket
            .send(Message::Text(FromClient::Stop.to_json().into()))
            .await
            .unwrap();
        let end = talk_until(&mut socket, |m| event(m).filter(|v| v["type"] == "end")).await;
        (turn, end)
    });
    let mut runner = proptest::test_runner::TestRunner::default();
    let strategy = proptest::collection::vec(sends(), 0..40);
    let mut clients = Vec::new();
    for case in 0..24 {
        let sequence = strategy.new_tree(&mut runner).unwrap().current();
        let path = if case % 2 == 0 {
            "/session"
        } else {
            "/telephony"
        };
        clients.push(tokio::spawn(async move {
            let mut socket = open(addr, path, &[]).await.unwrap();
            for send in &sequence {
                let sent = match send {
                    Send::Text(text) => socket.send(Message::Text(text.clone().into())).await,
                    Send::Binary(n) => socket.send(Message::Binary(vec![0; *n].into())).await,
                    Send::Ping => socket.send(Message::Ping(vec![1].into())).await,
                    Send::Pause(ms) => {
                        tokio::time::sleep(Duration::from_millis(*ms)).await;
                        Ok(())
                    }
                };
                if sent.is_err() {
                    break;
                }
            }
            // Then it holds on as a hostile client would: a ping every 100 ms.
            let Some(Closed { error, .. }) =
                closed_while_sending(socket, Message::Ping(vec![1].into())).await
            else {
                panic!("{path} never ended after {sequence:?}");
            };
            if let Some(error) = error {
                let code = error["code"].as_str().unwrap_or_default();
                assert!(CODES.contains(&code), "{path}: {error} after {sequence:?}");
                let message = error["message"].as_str().unwrap_or_default();
                assert!(message.len() <= 400, "{path}: {error}");
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let (turn, end) = tokio::time::timeout(PATIENCE, good)
        .await
        .expect("the good session ends")
        .unwrap();
    assert_eq!(turn["index"], 0, "{turn}");
    assert!(
        turn["assistant_heard"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    assert_eq!(end["reason"], "stopped", "{end}");
    server.settled().await;
    let report = server.drain().await;
    assert_eq!(report.stopped, 0, "{report:?}");
}

/// The binary itself: SIGTERM with a socket pinging without `start`, one carrier stream sending
/// `connected` and a request body trickling in exits, well before its long deadlines would
/// have ended them; before, it logged `drained` and never exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_hostile_clients_connected_exits() {
    let (mut child, url) = support::spawn_server(&[
        "--drain-timeout",
        "1s",
        "--start-timeout",
        "10m",
        "--public-url",
        "https://agent.example",
    ]);
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let browser = open(addr, "/session", &[]).await.unwrap();
    let carrier = open(addr, "/telephony", &[]).await.unwrap();
    let waiting = tokio::spawn(held_open_with(browser, Message::Ping(vec![1].into())));
    let connected = tokio::spawn(held_open_with(
        carrier,
        Message::Text(TWILIO_CONNECTED.into()),
    ));
    let trickling = trickle_body(addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                return (status, stderr);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("turnflow serve did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let (status, stderr) = exited.await.unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
    assert_eq!(waiting.await.unwrap().code, Some(1001));
    connected.await.unwrap();
    trickling.abort();
}
