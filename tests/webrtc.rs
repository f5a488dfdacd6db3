//! WebRTC sessions end to end on loopback: a server on port 0 with its WebRTC port on
//! 127.0.0.1, the in-memory emulator, the scripted model and the synthetic voice, and callers
//! through turnflow's own WebRTC client (str0m, Opus both ways), as the load generator calls.
//! The real clock runs (DTLS and UDP cannot run on a paused one); nothing asserts a wall-clock
//! threshold, and every wait has a generous bound only so that a broken server fails instead
//! of hanging. The page itself is tested in headless Chromium over loopback WebRTC; a
//! screenshot is left in `target/webrtc-page.png`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use turnflow::emulator::{EmulatorConfig, MemoryEmulator};
use turnflow::engine::{Backends, EngineEvent};
use turnflow::flux::{Encoding, FluxConfig, ListenOptions};
use turnflow::llm::ScriptedLlm;
use turnflow::scenario::Scenario;
use turnflow::server::protocol::{FromClient, PROTOCOL_VERSION, Playout, Start, ToClient};
use turnflow::server::webrtc::{CallerError, CallerEvent, WebRtcCaller, WebRtcPort};
use turnflow::server::{DrainReport, Server, ServerConfig};
use turnflow::tts::SyntheticTts;

/// Bound for anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

/// The server on `file`'s scenario, the emulator hearing turns by voice activity as `serve`
/// does (for callers that speak a WAV), without a WebRTC port.
fn listening_config(file: &str) -> ServerConfig {
    let scenario = Arc::new(Scenario::load(format!("scenarios/{file}").as_ref()).unwrap());
    let mut emulator = EmulatorConfig::new(scenario.clone());
    emulator.turn_detection = turnflow::emulator::TurnDetection::Vad;
    ServerConfig::new(
        FluxConfig::new(ListenOptions::raw(Encoding::Linear16, 16000))
            .with_base_url("ws://emulator.invalid"),
        Arc::new(MemoryEmulator::new(emulator)),
        Backends {
            llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
            tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
            tools: None,
        },
    )
}

/// The server on `file`'s scenario as scripted, with a WebRTC port on 127.0.0.1.
fn config(file: &str) -> ServerConfig {
    let scenario = Arc::new(Scenario::load(format!("scenarios/{file}").as_ref()).unwrap());
    let mut options = ListenOptions::raw(Encoding::Linear16, 16000);
    if let Some(t) = scenario.listen {
        options = options.with_thresholds(t);
    }
    let backends = Backends {
        llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
        tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
        tools: None,
    };
    let mut config = ServerConfig::new(
        FluxConfig::new(options).with_base_url("ws://emulator.invalid"),
        Arc::new(MemoryEmulator::new(EmulatorConfig::new(scenario))),
        backends,
    );
    config.webrtc = Some(WebRtcPort::bind("127.0.0.1:0".parse().unwrap(), &[]).unwrap());
    config
}

struct Running {
    url: String,
    metrics_url: String,
    port: SocketAddr,
    drain: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<DrainReport>>,
}

async fn start(config: ServerConfig) -> Running {
    start_on("127.0.0.1:0".parse().unwrap(), config).await
}

/// The server listening for HTTP on `listen`.
async fn start_on(listen: SocketAddr, config: ServerConfig) -> Running {
    let port = config.webrtc.as_ref().unwrap().local_addr();
    let server = Server::bind(listen, config).await.unwrap();
    let addr = server.local_addr();
    let (drain, signal) = oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(async move {
        let _ = signal.await;
    }));
    Running {
        url: format!("http://{addr}/webrtc"),
        metrics_url: format!("http://{addr}/metrics"),
        port,
        drain: Some(drain),
        served,
    }
}

impl Running {
    /// `body` POSTed to `/webrtc` as `content_type`.
    async fn post(&self, body: &'static str, content_type: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(&self.url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        reqwest::get(&self.metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn drain(mut self) -> DrainReport {
        let _ = self.drain.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.served)
            .await
            .expect("the drain ends")
            .unwrap()
            .unwrap()
    }
}

/// 20 ms at 16 kHz: silence, or a 440 Hz tone loud enough to be speech to the emulator.
fn frame(loud: bool, at: &mut u64) -> Vec<i16> {
    (0..320)
        .map(|_| {
            *at += 1;
            if loud {
                let phase = *at as f64 * 440.0 / 16000.0 * std::f64::consts::TAU;
                (phase.sin() * 8000.0) as i16
            } else {
                0
            }
        })
        .collect()
}

/// What a caller saw.
#[derive(Debug, Default)]
struct Seen {
    messages: Vec<ToClient>,
    agent_samples: u64,
    /// 20 ms frames of the microphone given to the caller.
    frames: u64,
    clears: usize,
    closed: Option<String>,
}

impl Seen {
    fn events(&self) -> impl Iterator<Item = &EngineEvent> {
        self.messages.iter().filter_map(|m| match m {
            ToClient::Event(e) => Some(e),
            _ => None,
        })
    }
}

/// A caller like the page: `start` when the channel opens, 20 ms of audio at real time, a
/// `playout` report now and then; loud once `barge_in_after` agent samples (16 kHz) arrived;
/// `stop` once `stop_after` turn reports came; until the session ends.
async fn converse(
    url: &str,
    barge_in_after: Option<u64>,
    stop_after: usize,
) -> (Seen, turnflow::server::webrtc::CallerStats) {
    let mut caller = WebRtcCaller::connect(url, None)
        .await
        .expect("offer answered");
    let mut seen = Seen::default();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let (mut ready, mut loud, mut stopped, mut at) = (false, false, false, 0u64);
    let deadline = tokio::time::sleep(PATIENCE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => panic!("the session did not end in time: {seen:?}"),
            _ = tick.tick(), if ready => {
                if !caller.send_audio(&frame(loud, &mut at)).await {
                    break;
                }
                seen.frames += 1;
                if at % 16000 == 0 {
                    caller.send_message(&FromClient::Playout(Playout { delay_ms: 60 })).await;
                }
            }
            event = caller.next() => match event {
                Some(CallerEvent::Open) => {
                    let start = FromClient::Start(Start { version: PROTOCOL_VERSION, sample_rate: 48000 });
                    assert!(caller.send_message(&start).await);
                }
                Some(CallerEvent::Audio(pcm)) => {
                    seen.agent_samples += pcm.len() as u64;
                    if barge_in_after.is_some_and(|n| seen.agent_samples >= n) {
                        loud = true;
                    }
                }
                Some(CallerEvent::Message(message)) => {
                    match &message {
                        ToClient::Ready(_) => {
                            ready = true;
                            tick.reset();
                        }
                        ToClient::Clear => {
                            seen.clears += 1;
                            loud = false;
                        }
                        ToClient::Turn(_) => {
                            let turns = seen.messages.iter().filter(|m| matches!(m, ToClient::Turn(_))).count() + 1;
                            if turns >= stop_after && !stopped {
                                stopped = true;
                                caller.send_message(&FromClient::Stop).await;
                            }
                        }
                        _ => {}
                    }
                    seen.messages.push(message);
                }
                Some(CallerEvent::Closed(why)) => {
                    seen.closed = Some(why);
                    break;
                }
                None => break,
            }
        }
        if seen.messages.iter().any(|m| matches!(m, ToClient::End(_))) {
            break;
        }
    }
    let stats = caller.stats();
    caller.hang_up().await;
    (seen, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webrtc_call_is_answered_in_opus_and_ends_when_asked() {
    let server = start(config("plain.json")).await;
    let (seen, stats) = converse(&server.url, None, 1).await;
    let ready = seen.messages.iter().find_map(|m| match m {
        ToClient::Ready(r) => Some(r),
        _ => None,
    });
    assert_eq!(ready.unwrap().frame_ms, 20);
    let turn = seen
        .messages
        .iter()
        .find_map(|m| match m {
            ToClient::Turn(t) => Some(t),
            _ => None,
        })
        .expect("a turn report");
    assert!(turn.response_latency_ms.is_some(), "{turn:?}");
    let end = seen.messages.iter().find_map(|m| match m {
        ToClient::End(e) => Some(e),
        _ => None,
    });
    assert_eq!(end.unwrap().reason, "stopped", "{seen:?}");
    assert!(
        seen.events()
            .any(|e| matches!(e, EngineEvent::AgentSentence { .. })),
        "{seen:?}"
    );
    // The reply arrived as Opus and was decoded: over half a second of it, nothing lost on
    // loopback, and within 40 kbit/s each way on the wire while it flowed (50 RTP datagrams a
    // second, with 28 bytes of IP and UDP headers each).
    assert!(seen.agent_samples > 8_000, "{seen:?}");
    assert!(stats.received.decoded > 25, "{stats:?}");
    assert_eq!(stats.received.lost, 0, "{stats:?}");
    for wire in [stats.sent, stats.received_wire] {
        let bits_per_second = (wire.media_bytes / wire.media_datagrams + 28) * 8 * 50;
        assert!(
            bits_per_second <= 40_000,
            "{bits_per_second} bit/s: {stats:?}"
        );
    }
    eprintln!("media on the wire: {stats:?}");
    // The caller was silent but for its question, and the answer asked it for discontinuous
    // transmission: most of its frames went as no packet at all, and the server filled the
    // silence, or Flux would never have heard the turn end.
    assert!(
        stats.packets_sent * 2 < seen.frames,
        "{} packets for {} frames",
        stats.packets_sent,
        seen.frames
    );

    let metrics = poll_metrics(&server, "turnflow_webrtc_sessions_active 0").await;
    assert!(
        metrics.contains("turnflow_webrtc_connected_total 1"),
        "{metrics}"
    );
    let received = counter(&metrics, "turnflow_webrtc_packets_total{kind=\"received\"}");
    assert!(
        received >= stats.packets_sent.saturating_sub(5),
        "{metrics}"
    );
    let report = server.drain().await;
    assert_eq!(report.stopped, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_ipv6_is_answered_and_its_media_stays_on_ipv6() {
    let mut config = config("plain.json");
    let port = WebRtcPort::bind("[::1]:0".parse().unwrap(), &[]).unwrap();
    assert!(port.local_addr().is_ipv6());
    config.webrtc = Some(port);
    let server = start_on("[::1]:0".parse().unwrap(), config).await;
    assert!(server.url.starts_with("http://[::1]:"), "{}", server.url);
    let (seen, stats) = converse(&server.url, None, 1).await;
    assert!(
        seen.messages.iter().any(|m| matches!(m, ToClient::Turn(_))),
        "{seen:?}"
    );
    let end = seen.messages.iter().find_map(|m| match m {
        ToClient::End(e) => Some(e),
        _ => None,
    });
    assert_eq!(end.unwrap().reason, "stopped", "{seen:?}");
    assert!(stats.received.decoded > 25, "{stats:?}");
    let metrics = poll_metrics(&server, "turnflow_webrtc_sessions_active 0").await;
    assert!(
        metrics.contains("turnflow_webrtc_connected_total 1"),
        "{metrics}"
    );
    assert_eq!(
        counter(
            &metrics,
            "turnflow_webrtc_datagrams_dropped_total{reason=\"unclaimed\"}"
        ),
        0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barge_in_stops_the_agent_and_keeps_what_was_played() {
    let server = start(config("barge_in.json")).await;
    // The user talks over the reply once 1.5 s of it arrived.
    let (seen, _) = converse(&server.url, Some(24_000), 2).await;
    assert_eq!(
        seen.clears, 1,
        "one clear for the one interruption: {seen:?}"
    );
    let cut = seen
        .events()
        .find_map(|e| match e {
            EngineEvent::ResponseEnded {
                interrupted: true,
                heard,
                ..
            } => Some(heard.clone()),
            _ => None,
        })
        .expect("the first reply was interrupted");
    let full = "You can return any item within thirty days of delivery. Items must be unused and in their original packaging. Refunds go back to the original payment method within five business days.";
    assert!(cut.starts_with("You can return any item"), "{cut}");
    assert!(cut.len() < full.len() && full.starts_with(&cut), "{cut}");
    server.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_the_server_cannot_use_are_refused_with_the_reason() {
    let server = start(config("plain.json")).await;
    let cases = [
        ("v=0\r\nnot sdp at all", "application/sdp", 400, "no audio"),
        (
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
            "application/sdp",
            400,
            "no audio with Opus",
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n",
            "application/sdp",
            400,
            "no data channel",
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
            "application/sdp",
            400,
            "not valid SDP: Media is missing a=mid",
        ),
        ("{}", "application/json", 415, "application/sdp"),
    ];
    for (body, content_type, status, says) in cases {
        let response = server.post(body, content_type).await;
        assert_eq!(response.status().as_u16(), status, "{body}");
        let text = response.text().await.unwrap();
        assert!(text.contains(says), "{body}: {text}");
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("turnflow_webrtc_failures_total{reason=\"offer_refused\"} 4"),
        "{metrics}"
    );
    // None of them took a place: a real call still goes through.
    let (seen, _) = converse(&server.url, None, 1).await;
    assert!(seen.messages.iter().any(|m| matches!(m, ToClient::Turn(_))));
    server.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_refuses_an_offer_and_says_when_to_retry() {
    let mut config = config("plain.json");
    config.max_sessions = 0;
    let server = start(config).await;
    match WebRtcCaller::connect(&server.url, None).await {
        Err(CallerError::Refused {
            status: 503,
            retry_after: Some(seconds),
            body,
        }) => {
            assert!(seconds >= 1);
            assert!(body.contains("full"), "{body}");
        }
        other => panic!("expected 503: {other:?}"),
    }
    server.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_and_a_peer_that_never_connects_disturb_no_one() {
    let mut config = config("plain.json");
    config.start_timeout = Duration::from_secs(2);
    let server = start(config).await;
    // A flood from an unknown address: STUN naming no session, DTLS and RTP from nowhere,
    // and bytes that are not WebRTC at all.
    let flood = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut stun = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[9; 12]);
    stun.extend_from_slice(&[0x00, 0x06, 0x00, 0x07]);
    stun.extend_from_slice(b"nobody:x\0");
    let packets: [&[u8]; 4] = [
        &stun,
        &[22, 254, 253, 0, 0],
        &[0x80, 111, 0, 1, 0, 0],
        &[0xff; 40],
    ];
    let (flooded, call) = tokio::join!(
        async {
            for round in 0..2000 {
                flood
                    .send_to(packets[round % packets.len()], server.port)
                    .await
                    .unwrap();
                if round % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        },
        converse(&server.url, None, 1)
    );
    let () = flooded;
    let (seen, _) = call;
    assert!(
        seen.messages.iter().any(|m| matches!(m, ToClient::Turn(_))),
        "{seen:?}"
    );

    // A peer that offers and then never sends a connectivity check: its session ends at the
    // start deadline and its place is released.
    let offer_only = server.post(BROWSER_OFFER, "application/sdp").await;
    assert_eq!(offer_only.status().as_u16(), 201);
    let metrics = ended_unconnected(&server).await;
    let unclaimed = counter(
        &metrics,
        "turnflow_webrtc_datagrams_dropped_total{reason=\"unclaimed\"}",
    );
    assert!(unclaimed >= 1900, "the flood went nowhere: {metrics}");
    server.drain().await;
}

/// An offer as Chromium writes one for the page (audio and the protocol's data channel), from
/// a peer that is not there.
const BROWSER_OFFER: &str = "v=0\r
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=group:BUNDLE 0 1\r
a=extmap-allow-mixed\r
a=msid-semantic: WMS\r
m=audio 9 UDP/TLS/RTP/SAVPF 111\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=ice-ufrag:Ab3d\r
a=ice-pwd:4fJx0qYxU4cLqk9Yq2x8bE2f\r
a=ice-options:trickle\r
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:D6:BC\r
a=setup:actpass\r
a=mid:0\r
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r
a=sendrecv\r
a=msid:- 7d1c0a2e-6a3f-4a8e-9c2b-1f0e5d4c3b2a\r
a=rtcp-mux\r
a=rtpmap:111 opus/48000/2\r
a=rtcp-fb:111 transport-cc\r
a=fmtp:111 minptime=10;useinbandfec=1\r
a=ssrc:1001 cname:4TOk42mSjXCkVIa6\r
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r
c=IN IP4 0.0.0.0\r
a=ice-ufrag:Ab3d\r
a=ice-pwd:4fJx0qYxU4cLqk9Yq2x8bE2f\r
a=ice-options:trickle\r
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:D6:BC\r
a=setup:actpass\r
a=mid:1\r
a=sctp-port:5000\r
a=max-message-size:262144\r
";

/// The value of the counter or gauge `name` (with its labels) in `metrics`.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
        .parse()
        .unwrap()
}

/// The metrics once one session that never connected has ended, its place released.
async fn ended_unconnected(server: &Running) -> String {
    let metrics = poll_metrics(
        server,
        "turnflow_webrtc_failures_total{reason=\"ice_or_dtls\"} 1",
    )
    .await;
    assert_eq!(counter(&metrics, "turnflow_webrtc_sessions_active"), 0);
    metrics
}

async fn poll_metrics(server: &Running, wanted: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let metrics = server.metrics().await;
        if metrics.contains(wanted) {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {wanted}: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[path = "support/chromium.rs"]
mod chromium;

/// The fixture's question, a pause, and the question again: said over the agent's answer.
fn question_then_interruption(pause: Duration) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(root.join("tests/fixtures/book_table_16k.wav")).unwrap();
    let (format, offset) = turnflow::audio::parse_wav_header(&bytes).unwrap().unwrap();
    assert_eq!((format.sample_rate, format.channels), (16000, 1));
    let speech: Vec<i16> = bytes[offset..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut audio = speech.clone();
    audio.resize(audio.len() + (pause.as_millis() as usize) * 16, 0);
    audio.extend_from_slice(&speech);
    let path = std::env::temp_dir().join(format!("turnflow-interrupt-{}.wav", std::process::id()));
    turnflow::audio::write_wav(&path, 16000, 1, &audio).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_talks_over_webrtc_in_a_real_browser_and_interrupts_the_agent() {
    if !chromium::available() {
        return;
    }
    let mut config = listening_config("barge_in.json");
    config.webrtc = Some(WebRtcPort::bind("127.0.0.1:0".parse().unwrap(), &[]).unwrap());
    let server = start(config).await;
    let page = server.url.trim_end_matches("webrtc").to_owned();
    let wav = question_then_interruption(Duration::from_millis(2500));
    // Chromium pairs WebRTC with 127.0.0.1 only when told to.
    let mut browser =
        chromium::Browser::open(&page, &wav, &["--allow-loopback-in-peer-connection"]).await;
    browser
        .evaluate("document.getElementById('talk').click(); true")
        .await;
    let state = browser
        .wait_for(
            "({transport: turnflow.transport, fallback: turnflow.fallback, clears: turnflow.clears, \
              heard: turnflow.heard, packets: turnflow.agentPackets, \
              samples: turnflow.agentSamplesReceived, playout: turnflow.playoutMs, \
              status: document.getElementById('status').textContent})",
            |s| s["heard"].is_string() && s["packets"].as_u64() > Some(50),
        )
        .await;
    assert_eq!(state["transport"], "webrtc", "{state}");
    assert_eq!(state["status"], "listening (WebRTC)", "{state}");
    assert!(state["clears"].as_u64() >= Some(1), "{state}");
    // getStats: the agent's Opus arrived and was played out.
    assert!(state["samples"].as_u64() > Some(48_000), "{state}");
    let heard = state["heard"].as_str().unwrap();
    let full = "You can return any item within thirty days of delivery. Items must be unused and in their original packaging. Refunds go back to the original payment method within five business days.";
    assert!(
        !heard.is_empty() && heard.len() < full.len() && full.starts_with(heard),
        "the history keeps what was played of the cut reply: {heard:?}"
    );
    let shown = browser
        .evaluate("[...document.querySelectorAll('.turn.agent .tag')].map(t => t.textContent)")
        .await;
    assert!(
        shown.as_array().unwrap().iter().any(|t| t == "cut by you"),
        "{shown}"
    );
    eprintln!("the page over WebRTC: {state}");
    let png = browser.screenshot().await;
    std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/webrtc-page.png"),
        png,
    )
    .unwrap();
    drop(browser);
    let _ = std::fs::remove_file(&wav);
    let metrics = poll_metrics(&server, "turnflow_webrtc_sessions_active 0").await;
    assert!(
        metrics.contains("turnflow_webrtc_connected_total 1"),
        "{metrics}"
    );
    server.drain().await;
}

/// A lossy network in front of the server's port, as a NAT would sit there: `front` takes the
/// callers' datagrams, each caller gets its own upstream socket, every datagram either way is
/// dropped with probability `loss` (media, connectivity checks, DTLS and the data channel
/// alike) and delayed by up to `jitter` (so packets also arrive out of order).
fn lossy_relay(front: tokio::net::UdpSocket, server_port: SocketAddr, loss: f64, jitter: Duration) {
    use std::collections::HashMap;
    let front = Arc::new(front);
    // A fixed seed: the same packets are lost on every run.
    let chance = Arc::new(std::sync::Mutex::new(0x2545_f491_4f6c_dd1du64));
    let draw = move || {
        let mut state = chance.lock().unwrap();
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    };
    let forward = move |socket: Arc<tokio::net::UdpSocket>, bytes: Vec<u8>, to: SocketAddr| {
        if draw() < loss {
            return;
        }
        let delay = jitter.mul_f64(draw());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = socket.send_to(&bytes, to).await;
        });
    };
    tokio::spawn(async move {
        let mut upstream: HashMap<SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
        let mut buffer = vec![0u8; 2048];
        loop {
            let Ok((length, caller)) = front.recv_from(&mut buffer).await else {
                return;
            };
            let socket = match upstream.get(&caller) {
                Some(socket) => socket.clone(),
                None => {
                    let socket =
                        Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    let (back, front, forward) = (socket.clone(), front.clone(), forward.clone());
                    tokio::spawn(async move {
                        let mut buffer = vec![0u8; 2048];
                        while let Ok((length, _)) = back.recv_from(&mut buffer).await {
                            forward(front.clone(), buffer[..length].to_vec(), caller);
                        }
                    });
                    upstream.insert(caller, socket.clone());
                    socket
                }
            };
            forward(socket, buffer[..length].to_vec(), server_port);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_rides_through_loss_and_jitter() {
    let mut config = listening_config("plain.json");
    // The port is told to announce the relay, as --webrtc-candidate announces a NAT's address.
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = WebRtcPort::bind(
        "127.0.0.1:0".parse().unwrap(),
        &[relay.local_addr().unwrap()],
    )
    .unwrap();
    lossy_relay(relay, port.local_addr(), 0.05, Duration::from_millis(30));
    config.webrtc = Some(port);
    let server = start(config).await;
    let base = server.url.trim_end_matches("/webrtc").to_owned();
    let load = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args([
            "load",
            &base,
            "--transport",
            "webrtc",
            "--sessions",
            "4",
            "--turns",
            "2",
        ])
        .args([
            "--ramp",
            "2s",
            "--json",
            "--wav",
            "tests/fixtures/book_table_16k.wav",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let load = tokio::time::timeout(Duration::from_secs(120), load)
        .await
        .expect("the load run ends")
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&load.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&load.stdout),
            String::from_utf8_lossy(&load.stderr)
        )
    });
    eprintln!("{report:#}");
    assert!(load.status.success(), "{report:#}");
    assert_eq!(report["failed_sessions"], 0, "{report:#}");
    assert_eq!(report["turns"], 8, "every turn answered: {report:#}");
    let media = &report["webrtc"];
    // The callers saw the agent's audio lost and made up for it.
    assert!(media["packets_lost"].as_u64() > Some(0), "{media:#}");
    assert!(
        media["frames_concealed"].as_u64().unwrap() + media["packets_recovered"].as_u64().unwrap()
            > 0,
        "{media:#}"
    );
    // So did the server, with the callers' speech.
    let metrics = poll_metrics(&server, "turnflow_webrtc_sessions_active 0").await;
    let counted = |kind: &str| {
        counter(
            &metrics,
            &format!("turnflow_webrtc_packets_total{{kind=\"{kind}\"}}"),
        )
    };
    assert!(counted("lost") > 0, "{metrics}");
    assert!(counted("recovered") > 0, "{metrics}");
    server.drain().await;
}

#[test]
fn serve_refuses_a_webrtc_port_no_client_could_reach_and_names_the_fix() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--webrtc-udp",
            "0.0.0.0:0",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--webrtc-udp: WebRTC cannot start")
            && stderr.contains("which no client can reach; name the address clients should use with --webrtc-candidate IP[:PORT]"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_channel_message_that_is_not_the_protocol_ends_that_session_alone() {
    let server = start(config("plain.json")).await;
    let (bad, good) = tokio::join!(
        async {
            let mut caller = WebRtcCaller::connect(&server.url, None).await.unwrap();
            let mut said = Vec::new();
            loop {
                match tokio::time::timeout(PATIENCE, caller.next()).await.unwrap() {
                    Some(CallerEvent::Open) => {
                        assert!(caller.send_text(r#"{"type":"dance"}"#).await);
                    }
                    Some(CallerEvent::Message(message)) => {
                        let end = matches!(message, ToClient::End(_));
                        said.push(message);
                        if end {
                            break;
                        }
                    }
                    Some(CallerEvent::Audio(_)) => {}
                    Some(CallerEvent::Closed(_)) | None => break,
                }
            }
            caller.hang_up().await;
            said
        },
        converse(&server.url, None, 1)
    );
    let said = bad;
    assert!(
        said.iter().any(
            |m| matches!(m, ToClient::Error(e) if e.code == "unknown_type"
            && e.message.contains("this server knows start, played, playout and stop"))
        ),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|m| matches!(m, ToClient::End(e) if e.reason == "protocol_error")),
        "{said:?}"
    );
    let (seen, _) = good;
    assert!(
        seen.messages.iter().any(|m| matches!(m, ToClient::Turn(_))),
        "{seen:?}"
    );
    server.drain().await;
}

/// A STUN binding request as a browser's ICE agent sends it: `username` (the server's
/// fragment, a colon, ours), controlling and nominating, signed with the server's `password`
/// and fingerprinted (RFC 8489 sections 14.5 and 14.7, RFC 8445 section 7.1.2).
fn binding_request(username: &str, password: &str) -> Vec<u8> {
    use hmac::Mac as _;
    fn attribute(message: &mut Vec<u8>, kind: u16, value: &[u8]) {
        message.extend_from_slice(&kind.to_be_bytes());
        message.extend_from_slice(&(value.len() as u16).to_be_bytes());
        message.extend_from_slice(value);
        message.resize(message.len().div_ceil(4) * 4, 0);
    }
    fn set_length(message: &mut [u8], extra: usize) {
        let length = (message.len() - 20 + extra) as u16;
        message[2..4].copy_from_slice(&length.to_be_bytes());
    }
    let mut message = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    message.extend_from_slice(b"turnflowtest");
    attribute(&mut message, 0x0006, username.as_bytes());
    attribute(&mut message, 0x0024, &0x6E00_01FFu32.to_be_bytes());
    attribute(&mut message, 0x802A, &7u64.to_be_bytes());
    attribute(&mut message, 0x0025, &[]);
    set_length(&mut message, 24);
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(password.as_bytes()).unwrap();
    mac.update(&message);
    attribute(&mut message, 0x0008, &mac.finalize().into_bytes());
    set_length(&mut message, 8);
    let crc = message.iter().fold(!0u32, |crc, byte| {
        (0..8).fold(crc ^ u32::from(*byte), |c, _| {
            if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            }
        })
    });
    attribute(&mut message, 0x8028, &((!crc) ^ 0x5354_554E).to_be_bytes());
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_passes_ice_and_never_starts_dtls_is_ended_at_the_start_deadline() {
    let mut config = config("plain.json");
    config.start_timeout = Duration::from_secs(2);
    let server = start(config).await;
    let answer = server
        .post(BROWSER_OFFER, "application/sdp")
        .await
        .text()
        .await
        .unwrap();
    let field = |name: &str| {
        answer
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {answer}"))
            .to_owned()
    };
    let (ufrag, password) = (field("a=ice-ufrag:"), field("a=ice-pwd:"));
    // The answer asks the browser for discontinuous transmission and error correction.
    let fmtp = field("a=fmtp:111 ");
    assert!(
        fmtp.contains("usedtx=1") && fmtp.contains("useinbandfec=1"),
        "{fmtp}"
    );
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let request = binding_request(&format!("{ufrag}:Ab3d"), &password);
    // The server answers the check: ICE passes.
    let mut response = vec![0u8; 1500];
    let answered = tokio::time::timeout(PATIENCE, async {
        loop {
            peer.send_to(&request, server.port).await.unwrap();
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(200), peer.recv_from(&mut response))
                    .await
            {
                break n;
            }
        }
    })
    .await
    .expect("the server answers a signed check");
    assert_eq!(&response[..2], &[0x01, 0x01], "a binding success response");
    assert!(answered >= 20);
    // No DTLS follows: the session ends at the start deadline, counted, its place released.
    let metrics = ended_unconnected(&server).await;
    assert!(
        metrics.contains("turnflow_webrtc_connected_total 0"),
        "{metrics}"
    );
    server.drain().await;
}
