//! `turnflow load`: many callers against a running `turnflow serve`, measured where callers
//! are. Each virtual caller speaks the session protocol (docs/protocol.md): it streams a WAV
//! in real time as its microphone, plays the agent's audio on a simulated real-time clock (and
//! reports it played, dropping it on `clear`), and times every turn at the client.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::SinkExt;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use turnflow::report::{Speculation, Stats};
use turnflow::server::protocol::Played;

mod browser;
mod phone;
mod summary;
mod turns;
#[cfg(feature = "webrtc")]
mod webrtc;

use browser::{BrowserSpeech, one_session};
use phone::{PhoneSpeech, one_call};
use summary::{SpeculationSummary, Summary, print_summary};

#[derive(Parser)]
pub(crate) struct LoadArgs {
    /// The server (`http://HOST:PORT`, whose /session is used) or a session URL (`ws://...`).
    url: String,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// The caller's speech for each turn: a 16 kHz mono 16-bit WAV.
    #[arg(long)]
    wav: PathBuf,
    /// Turns per session (the WAV is spoken once per turn).
    #[arg(long, default_value_t = 3)]
    turns: u32,
    /// Spread session starts evenly over this window (default 10s with several sessions, so
    /// turns do not all end in the same millisecond; 0 for lock step).
    #[arg(long, value_parser = crate::parse_duration)]
    ramp: Option<Duration>,
    /// Bearer token, if the server requires one.
    #[arg(long, env = "TURNFLOW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the summary as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// How a browser caller reaches the server: the WebSocket (/session, PCM16) or WebRTC
    /// (an offer to /webrtc, Opus over UDP, the protocol on a data channel; needs a build
    /// with the webrtc feature).
    #[arg(
        long,
        value_enum,
        default_value = "websocket",
        conflicts_with = "carrier"
    )]
    transport: LoadTransport,
    /// Call like a phone carrier instead of a browser: Twilio's or Telnyx's media-stream
    /// messages on the server's /telephony (8 kHz mu-law, marks echoed as the audio plays).
    #[arg(long, value_enum)]
    carrier: Option<CarrierKind>,
    /// The caller speaks again (its next turn) once this much of each reply has arrived,
    /// interrupting the agent; the server's turnflow_clear_sent_seconds then measures how fast
    /// the clear went out.
    #[arg(long, value_parser = crate::parse_duration)]
    barge_in_after: Option<Duration>,
    /// A caller fails when the agent has not answered this long after it stopped speaking
    /// (raise it to ride through a provider's outage).
    #[arg(long, value_parser = crate::parse_duration, default_value = "20s")]
    reply_patience: Duration,
    /// WebRTC callers send a packet every 20 ms even while silent, as a sender without
    /// discontinuous transmission does (by default they send what a browser asked for
    /// `usedtx=1` sends: almost nothing while silent).
    #[arg(long)]
    no_dtx: bool,
}

/// How `load`'s browser callers connect.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub(crate) enum LoadTransport {
    Websocket,
    Webrtc,
}

/// Which carrier `load --carrier` imitates.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub(crate) enum CarrierKind {
    Twilio,
    Telnyx,
}

/// What every caller of a run does.
#[derive(Debug, Clone, Copy)]
struct CallerPlan {
    /// Turns to speak.
    turns: u32,
    /// Speak the next turn once this much of a reply has arrived.
    barge_in_after: Option<Duration>,
    /// Longest to wait for the agent's reply after the caller stopped speaking.
    reply_patience: Duration,
}
/// Longest a caller waits for the WebSocket upgrade, and a browser caller for `ready`.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// Longest a caller waits to hand the server one message: a server that stops reading fails
/// its session instead of stalling the whole run.
const SEND_PATIENCE: Duration = Duration::from_secs(5);
/// Quiet between the end of the agent's reply and the caller's next turn.
const PAUSE_AFTER_REPLY: Duration = Duration::from_secs(1);
const FRAME: usize = 320;

/// One turn as the caller experienced it.
#[derive(Debug, Default, Clone, Serialize)]
struct TurnSample {
    /// From the `user_finished` message to the first agent audio frame received.
    response_latency_ms: Option<f64>,
    /// From sending the end of the caller's speech to the first agent audio frame received.
    voice_to_voice_ms: Option<f64>,
    /// The server's own figures for the turn.
    server_response_latency_ms: Option<f64>,
    engine_overhead_ms: Option<f64>,
    barge_in_stop_ms: Option<f64>,
    /// How speculation went (browser sessions, which receive the turn report).
    speculation: Option<Speculation>,
    /// Speculative replies withdrawn in the turn.
    speculation_withdrawn: u64,
    /// The eager lead of a hit.
    lead_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct SessionResult {
    turns: Vec<TurnSample>,
    failure: Option<String>,
}

/// The agent's audio played in real time from when it arrives, as a speaker would.
#[derive(Debug)]
struct Playback {
    rate: f64,
    received: u64,
    dropped: u64,
    buffered_until: Instant,
}

impl Playback {
    fn buffered(&self, now: Instant) -> u64 {
        (self
            .buffered_until
            .saturating_duration_since(now)
            .as_secs_f64()
            * self.rate) as u64
    }

    fn receive(&mut self, samples: u64, now: Instant) {
        self.received += samples;
        self.buffered_until =
            self.buffered_until.max(now) + Duration::from_secs_f64(samples as f64 / self.rate);
    }

    fn clear(&mut self, now: Instant) {
        self.dropped += self.buffered(now);
        self.buffered_until = now;
    }

    fn report(&self, now: Instant) -> Played {
        let buffered = self.buffered(now);
        Played {
            samples: self.received - self.dropped - buffered,
            buffered,
        }
    }
}

/// The end of the last 20 ms frame of `speech` with speech energy in it (RMS above 1.5 % of
/// full scale), in samples.
fn speech_end(speech: &[i16]) -> usize {
    speech
        .chunks(FRAME)
        .enumerate()
        .rev()
        .find(|(_, frame)| {
            let energy: f64 = frame.iter().map(|s| f64::from(*s).powi(2)).sum();
            (energy / frame.len() as f64).sqrt() > 500.0
        })
        .map_or(speech.len(), |(i, frame)| i * FRAME + frame.len())
}

fn session_url(url: &str) -> Result<String> {
    endpoint_url(url, "/session")
}

/// The server's WebRTC offer URL: `http(s)://HOST:PORT/webrtc` (a ws:// URL is read as its
/// http:// twin; a URL with a path is taken as it is).
fn offer_url(url: &str) -> Result<String> {
    let websocket = endpoint_url(url, "/webrtc")?;
    Ok(websocket
        .replacen("wss://", "https://", 1)
        .replacen("ws://", "http://", 1))
}

/// `url` as a WebSocket URL, with `path` appended when it names only the server.
fn endpoint_url(url: &str, path: &str) -> Result<String> {
    let url = url.trim_end_matches('/');
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{url}: expected http://HOST:PORT or a ws:// URL"))?;
    let scheme = match scheme {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => bail!("{url}: scheme {other:?}; use http(s) or ws(s)"),
    };
    Ok(if rest.contains('/') {
        format!("{scheme}://{rest}")
    } else {
        format!("{scheme}://{rest}{path}")
    })
}

struct Progress {
    open: AtomicUsize,
    turns: AtomicU64,
    failed: AtomicUsize,
}

impl Progress {
    /// A caller whose socket was open has finished.
    fn ended(&self, result: &SessionResult) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if result.failure.is_some() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a caller's WebSocket, with a bearer token if given; the failure as a report line.
async fn dial(url: &str, token: Option<&str>) -> Result<Socket, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad url: {e}"))?;
    if let Some(token) = token
        && let Ok(value) = format!("Bearer {token}").parse()
    {
        request.headers_mut().insert("authorization", value);
    }
    // Small buffers: a thousand callers in one process (see `turnflow::net`). Every send is
    // flushed; the buffer lets messages due together go out in one write.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024);
    // No Nagle, as browsers do: a frame must not wait for the previous one's ACK.
    let upgrade = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(CONNECT_PATIENCE, upgrade)
        .await
        .map_err(|_| format!("no WebSocket upgrade within {CONNECT_PATIENCE:?}"))?
    {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(format!("refused: HTTP {}", response.status().as_u16()))
        }
        Err(e) => Err(format!("cannot connect: {e}")),
    }
}

/// Why a message did not reach the server.
#[derive(Debug, PartialEq)]
enum SendFailure {
    /// The connection is closed; what the caller was doing says what that means.
    Closed,
    /// The server took nothing for [`SEND_PATIENCE`].
    Stalled,
}

impl SendFailure {
    /// The failure line: `closed` for a closed connection, the stall otherwise.
    fn or(self, closed: &str) -> String {
        match self {
            SendFailure::Closed => closed.to_owned(),
            SendFailure::Stalled => stalled(),
        }
    }
}

/// The failure line of a server that stopped reading.
fn stalled() -> String {
    format!("the server stopped reading: a message waited {SEND_PATIENCE:?}")
}

async fn send(socket: &mut Socket, message: Message) -> Result<(), SendFailure> {
    send_all(socket, [message]).await
}

/// Sends `messages` in one write, bounded by [`SEND_PATIENCE`] altogether: what a caller has
/// due at the same moment (mark echoes and its next frame) costs one system call, not several.
async fn send_all(
    socket: &mut Socket,
    messages: impl IntoIterator<Item = Message>,
) -> Result<(), SendFailure> {
    let sent = tokio::time::timeout(SEND_PATIENCE, async {
        for message in messages {
            socket.feed(message).await?;
        }
        socket.flush().await
    });
    match sent.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendFailure::Closed),
        Err(_) => Err(SendFailure::Stalled),
    }
}

/// Sends a message whose loss alone ends nothing (a closed connection shows on the read side);
/// the failure line when the server stopped reading.
async fn send_or_stall(socket: &mut Socket, message: Message) -> Option<String> {
    match send(socket, message).await {
        Err(SendFailure::Stalled) => Some(stalled()),
        Ok(()) | Err(SendFailure::Closed) => None,
    }
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

pub(crate) fn load(args: LoadArgs) -> Result<()> {
    let url = match (args.carrier, args.transport) {
        (Some(_), _) => endpoint_url(&args.url, "/telephony")?,
        (None, LoadTransport::Websocket) => session_url(&args.url)?,
        (None, LoadTransport::Webrtc) => offer_url(&args.url)?,
    };
    #[cfg(not(feature = "webrtc"))]
    if args.transport == LoadTransport::Webrtc {
        bail!(
            "--transport webrtc: this turnflow was built without WebRTC; build it with --features webrtc (needs libopus-dev)"
        );
    }
    if args.no_dtx && (args.transport != LoadTransport::Webrtc || args.carrier.is_some()) {
        bail!(
            "--no-dtx: only WebRTC callers have discontinuous transmission to turn off; it needs --transport webrtc"
        );
    }
    let speech = crate::run::read_speech(
        args.wav.to_str().context("--wav: the path is not UTF-8")?,
        "--wav",
    )?;
    let phone = match args.carrier {
        Some(_) => Some(Arc::new(PhoneSpeech::new(&speech)?)),
        None => None,
    };
    // Encoded once for every caller: a load generator that encoded each caller's microphone
    // would measure itself.
    #[cfg(feature = "webrtc")]
    let packets = Arc::new(
        turnflow::server::webrtc::EncodedSpeech::new(
            &speech,
            turnflow::server::webrtc::CALLER_RATE,
            !args.no_dtx,
        )
        .context("--transport webrtc: encoding the WAV")?,
    );
    let speech = Arc::new(BrowserSpeech::new(&speech));
    if args.sessions == 0 || args.turns == 0 {
        bail!("--sessions and --turns must be at least 1");
    }
    let ramp = args.ramp.unwrap_or(if args.sessions > 1 {
        Duration::from_secs(10)
    } else {
        Duration::ZERO
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let (results, webrtc_media, session_seconds) = runtime.block_on(async {
        let progress = Arc::new(Progress {
            open: AtomicUsize::new(0),
            turns: AtomicU64::new(0),
            failed: AtomicUsize::new(0),
        });
        let reporter = {
            let progress = progress.clone();
            let (sessions, total) = (args.sessions, args.sessions as u64 * u64::from(args.turns));
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                every.tick().await;
                loop {
                    every.tick().await;
                    eprintln!(
                        "load: {}/{sessions} sessions open, {}/{total} turns, {} failed",
                        progress.open.load(Ordering::Relaxed),
                        progress.turns.load(Ordering::Relaxed),
                        progress.failed.load(Ordering::Relaxed),
                    );
                }
            })
        };
        let mut tasks = tokio::task::JoinSet::new();
        let t0 = Instant::now();
        for i in 0..args.sessions {
            let offset = ramp.mul_f64(i as f64 / args.sessions as f64);
            let (url, token, speech, progress) = (
                url.clone(),
                args.token.clone(),
                speech.clone(),
                progress.clone(),
            );
            let plan = CallerPlan {
                turns: args.turns,
                barge_in_after: args.barge_in_after,
                reply_patience: args.reply_patience,
            };
            let carrier = args.carrier.zip(phone.clone());
            let transport = args.transport;
            #[cfg(feature = "webrtc")]
            let packets = packets.clone();
            tasks.spawn(async move {
                tokio::time::sleep_until(t0 + offset).await;
                let began = Instant::now();
                let (result, media) = match (carrier, transport) {
                    (Some((kind, phone)), _) => {
                        (one_call(url, kind, phone, plan, progress).await, None)
                    }
                    #[cfg(feature = "webrtc")]
                    (None, LoadTransport::Webrtc) => {
                        let (result, media) =
                            webrtc::one_webrtc_session(url, token, speech, packets, plan, progress)
                                .await;
                        (result, Some(media))
                    }
                    _ => (one_session(url, token, speech, plan, progress).await, None),
                };
                (result, media, began.elapsed().as_secs_f64())
            });
        }
        let mut results = Vec::with_capacity(args.sessions);
        let mut media: Option<summary::WebRtcMedia> = None;
        let mut session_seconds = 0.0;
        while let Some(result) = tasks.join_next().await {
            let (result, caller_media, seconds) = result.unwrap_or_else(|e| {
                let failure = Some(format!("the caller task failed: {e}"));
                let result = SessionResult {
                    turns: Vec::new(),
                    failure,
                };
                (result, None, 0.0)
            });
            session_seconds += seconds;
            if let Some(caller_media) = caller_media {
                media.get_or_insert_default().add(&caller_media);
            }
            results.push(result);
        }
        reporter.abort();
        if let Some(media) = &mut media {
            media.finish();
        }
        (results, media, session_seconds)
    });
    let seconds = started.elapsed().as_secs_f64();
    let turns: Vec<&TurnSample> = results.iter().flat_map(|r| &r.turns).collect();
    let pick =
        |f: fn(&TurnSample) -> Option<f64>| Stats::of(turns.iter().filter_map(|t| f(t)).collect());
    let count = |kind: Speculation| turns.iter().filter(|t| t.speculation == Some(kind)).count();
    let mut failures = std::collections::BTreeMap::new();
    for failure in results.iter().filter_map(|r| r.failure.as_ref()) {
        *failures.entry(failure.clone()).or_insert(0) += 1;
    }
    let summary = Summary {
        url,
        sessions: args.sessions,
        turns_per_session: args.turns,
        turns: turns.len(),
        failed_sessions: results.iter().filter(|r| r.failure.is_some()).count(),
        failures,
        seconds,
        session_seconds,
        response_latency_ms: pick(|t| t.response_latency_ms),
        voice_to_voice_ms: pick(|t| t.voice_to_voice_ms),
        server_response_latency_ms: pick(|t| t.server_response_latency_ms),
        engine_overhead_ms: pick(|t| t.engine_overhead_ms),
        barge_in_stop_ms: pick(|t| t.barge_in_stop_ms),
        speculation: SpeculationSummary {
            hits: count(Speculation::Hit),
            misses: count(Speculation::Miss),
            none: count(Speculation::None),
            withdrawn: turns.iter().map(|t| t.speculation_withdrawn).sum(),
            lead_ms: pick(|t| t.lead_ms),
            hit_response_latency_ms: pick(|t| {
                t.response_latency_ms
                    .filter(|_| t.speculation == Some(Speculation::Hit))
            }),
        },
        webrtc: webrtc_media,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    if summary.failed_sessions > 0 {
        bail!(
            "{} of {} sessions failed",
            summary.failed_sessions,
            summary.sessions
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_turn() -> CallerPlan {
        CallerPlan {
            turns: 1,
            barge_in_after: None,
            reply_patience: Duration::from_secs(20),
        }
    }
    use futures_util::StreamExt;

    #[test]
    fn urls_name_the_offer_endpoint() {
        assert_eq!(
            offer_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/webrtc"
        );
        assert_eq!(
            offer_url("https://agent.example/").unwrap(),
            "https://agent.example/webrtc"
        );
        assert_eq!(
            offer_url("http://h:1/voice/webrtc").unwrap(),
            "http://h:1/voice/webrtc"
        );
    }

    #[test]
    fn urls_name_the_session_endpoint() {
        assert_eq!(
            session_url("http://127.0.0.1:8080").unwrap(),
            "ws://127.0.0.1:8080/session"
        );
        assert_eq!(
            session_url("https://agent.example/").unwrap(),
            "wss://agent.example/session"
        );
        assert_eq!(session_url("ws://h:1/custom").unwrap(), "ws://h:1/custom");
        assert!(
            session_url("ftp://h")
                .unwrap_err()
                .to_string()
                .contains("scheme \"ftp\"")
        );
    }

    #[test]
    fn playback_plays_in_real_time_and_drops_on_clear() {
        let t0 = Instant::now();
        let mut p = Playback {
            rate: 16000.0,
            received: 0,
            dropped: 0,
            buffered_until: t0,
        };
        p.receive(16000, t0);
        let at = t0 + Duration::from_millis(250);
        assert_eq!(p.report(at).samples, 4000);
        assert_eq!(p.report(at).buffered, 12000);
        p.clear(at);
        assert_eq!(p.report(at + Duration::from_secs(1)).samples, 4000);
    }

    fn progress() -> Arc<Progress> {
        Arc::new(Progress {
            open: AtomicUsize::new(0),
            turns: AtomicU64::new(0),
            failed: AtomicUsize::new(0),
        })
    }

    fn speech() -> Arc<BrowserSpeech> {
        Arc::new(BrowserSpeech::new(&[4000i16; 16000]))
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_upgrades_fails_the_session_and_says_so() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/session", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let result = one_session(url, None, speech(), one_turn(), progress()).await;
        assert_eq!(
            result.failure.as_deref(),
            Some("no WebSocket upgrade within 10s")
        );
        server.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_says_ready_fails_the_session_and_says_so() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/session", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(socket).await.unwrap();
            while ws.next().await.is_some() {}
        });
        let progress = progress();
        let result = one_session(url, None, speech(), one_turn(), progress.clone()).await;
        assert_eq!(
            result.failure.as_deref(),
            Some("no ready within 10s of start")
        );
        assert_eq!(progress.failed.load(Ordering::Relaxed), 1);
        assert_eq!(progress.open.load(Ordering::Relaxed), 0);
        server.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_stops_reading_fails_the_message_that_waited() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let url = format!("ws://{}/session", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let _ws = tokio_tungstenite::accept_async(socket).await.unwrap();
            std::future::pending::<()>().await;
        });
        let mut client = dial(&url, None).await.unwrap();
        let message = bytes::Bytes::from(vec![0u8; 64 * 1024]);
        let mut sent = 0;
        let failure = loop {
            match send(&mut client, Message::Binary(message.clone())).await {
                Ok(()) => sent += 1,
                Err(failure) => break failure,
            }
            assert!(sent < 2000, "128 MiB went into a socket nobody reads");
        };
        assert_eq!(failure, SendFailure::Stalled);
        assert_eq!(
            failure.or("closed"),
            "the server stopped reading: a message waited 5s"
        );
        server.abort();
    }

    #[test]
    fn speech_ends_at_the_last_loud_frame() {
        let mut speech = vec![0i16; 3200];
        speech[700..900].fill(4000);
        assert_eq!(speech_end(&speech), 960);
    }
}
