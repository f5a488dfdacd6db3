//! The Flux emulator: grammar of what it emits (property test), handshake rules and client
//! input handling over real loopback sockets, and the example scenarios through our client.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use turnflow::audio::encode;
use turnflow::emulator::{EmulatorConfig, EmulatorServer, EmulatorSession, MemoryEmulator};
use turnflow::flux::client::FluxEventKind;
use turnflow::flux::messages::ServerMessage;
use turnflow::flux::{
    ApiKey, Connector, Encoding, FluxConfig, ListenOptions, Thresholds, TurnEvent, TurnInfo,
    TurnTrigger, WebSocketConnector, connect,
};
use turnflow::scenario::Scenario;
use turnflow::ws::{ConnectRequest, WireFrame};

fn silence(seconds: f64) -> Vec<u8> {
    encode(Encoding::Linear16, &vec![0; (seconds * 16000.0) as usize])
}

async fn server(scenario: Scenario, key: Option<&str>) -> EmulatorServer {
    let mut config = EmulatorConfig::new(Arc::new(scenario));
    config.api_key = key.map(ApiKey::new);
    EmulatorServer::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

/// Streams `seconds` of silence through our client over a socket and returns the state
/// events as "Event@audio_time[trigger]: transcript".
async fn events_over_socket(path: &str, seconds: f64) -> Vec<String> {
    let scenario = Scenario::load(path.as_ref()).unwrap();
    let t = scenario.listen.unwrap_or_default();
    let server = server(scenario, None).await;
    let options = ListenOptions::default().with_thresholds(t);
    let mut config = FluxConfig::new(options).with_base_url(server.base_url());
    config.api_key = None;
    let (handle, mut events) = connect(config, Arc::new(WebSocketConnector)).await.unwrap();
    handle.send_audio(silence(seconds)).await.unwrap();
    let collector = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(e) = events.recv().await {
            if let FluxEventKind::Turn(u) = e.unwrap().kind
                && u.info.event != TurnEvent::Update
            {
                let trigger = u
                    .info
                    .trigger
                    .map(|t| format!("[{}]", t.as_str()))
                    .unwrap_or_default();
                out.push(format!(
                    "{}@{:.2}{trigger}: {}",
                    u.info.event, u.info.audio_window_end, u.info.transcript
                ));
            }
        }
        out
    });
    handle.close().await.unwrap();
    let out = collector.await.unwrap();
    server.shutdown().await;
    out
}

#[tokio::test]
async fn example_scenarios_over_a_socket_give_exact_events_in_audio_time() {
    // plain: 6 words at 160 wpm from 0.5 s end at 2.75 s; confidence reaches 0.7 at 3.37 s.
    assert_eq!(
        events_over_socket("scenarios/plain.json", 4.0).await,
        vec![
            "StartOfTurn@0.96: What",
            "EndOfTurn@3.60[model]: What time do you open tomorrow?"
        ]
    );
    // eager hit: 9 words end at 3.875 s; 0.5 is reached 0.65 s later, 0.7 0.93 s later.
    assert_eq!(
        events_over_socket("scenarios/eager_hit.json", 6.0).await,
        vec![
            "StartOfTurn@0.96: Can",
            "EagerEndOfTurn@4.56: Can you book me a table for two tonight?",
            "EndOfTurn@5.04[model]: Can you book me a table for two tonight?"
        ]
    );
    assert_eq!(
        events_over_socket("scenarios/eager_miss.json", 6.0).await,
        vec![
            "StartOfTurn@0.96: I'd",
            "EagerEndOfTurn@3.36: I'd like to change my flight",
            "TurnResumed@4.08: I'd like to change my flight to",
            "EagerEndOfTurn@5.28: I'd like to change my flight to Friday morning.",
            "EndOfTurn@5.52[model]: I'd like to change my flight to Friday morning."
        ]
    );
    // timeout: 5 words end at 2.375 s; eot_timeout_ms is 2000.
    assert_eq!(
        events_over_socket("scenarios/timeout.json", 5.0).await,
        vec![
            "StartOfTurn@0.96: And",
            "EndOfTurn@4.56[timeout]: And my phone number is"
        ]
    );
}

#[tokio::test]
async fn handshake_rejections_over_a_socket() {
    let server = server(Scenario::demo(), Some("k3y")).await;
    let base = server.base_url();
    let attempt = |path: String, auth: Option<&'static str>, protocol: Option<&'static str>| {
        let url = format!("{base}{path}");
        async move {
            let mut request = url.into_client_request().unwrap();
            if let Some(a) = auth {
                request
                    .headers_mut()
                    .insert("authorization", a.parse().unwrap());
            }
            if let Some(p) = protocol {
                request
                    .headers_mut()
                    .insert("sec-websocket-protocol", p.parse().unwrap());
            }
            tokio_tungstenite::connect_async(request).await
        }
    };
    let ok = "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000";
    let cases = [
        (ok.to_owned(), None, None, 401, "missing credentials"),
        (
            ok.to_owned(),
            Some("Token nope"),
            None,
            401,
            "invalid credentials",
        ),
        (
            "/v2/listen?model=nova-3&encoding=linear16&sample_rate=16000".to_owned(),
            Some("Token k3y"),
            None,
            400,
            "flux-general-en or flux-general-multi",
        ),
        (
            format!("{ok}&eot_threshold=0.4"),
            Some("Token k3y"),
            None,
            400,
            "eot_threshold",
        ),
        (
            format!("{ok}&numerals=True"),
            Some("Token k3y"),
            None,
            400,
            "lowercase",
        ),
        (
            "/v1/listen?model=nova-3".to_owned(),
            Some("Token k3y"),
            None,
            404,
            "/v2/listen",
        ),
    ];
    for (path, auth, protocol, status, needle) in cases {
        match attempt(path.clone(), auth, protocol).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), status, "{path}");
                let dg_error = response.headers()["dg-error"].to_str().unwrap().to_owned();
                assert!(dg_error.contains(needle), "{path}: {dg_error}");
                assert!(response.headers().contains_key("dg-request-id"));
            }
            other => panic!("{path}: expected http {status}, got {other:?}"),
        }
    }
    let (ws, response) = attempt(ok.to_owned(), None, Some("token, k3y"))
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "token");
    assert!(response.headers().contains_key("dg-request-id"));
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn a_plain_websocket_client_sees_connected_turninfo_and_errors() {
    let server = server(Scenario::demo(), None).await;
    let url = format!(
        "{}/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000",
        server.base_url()
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    let request_id = response.headers()["dg-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let Some(Ok(Message::Text(text))) = ws.next().await else {
        panic!()
    };
    assert_eq!(
        ServerMessage::parse(&text).unwrap(),
        ServerMessage::Connected {
            request_id: request_id.clone(),
            sequence_id: 0
        }
    );
    ws.send(Message::Binary(silence(0.5).into())).await.unwrap();
    for expected_seq in 1..=2 {
        let Some(Ok(Message::Text(text))) = ws.next().await else {
            panic!()
        };
        let ServerMessage::TurnInfo(info) = ServerMessage::parse(&text).unwrap() else {
            panic!()
        };
        assert_eq!(info.sequence_id, expected_seq);
        assert_eq!(info.request_id, request_id);
        assert_eq!(info.event, TurnEvent::Update);
    }
    ws.send(Message::text(r#"{"type":"KeepAlive"}"#))
        .await
        .unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else {
        panic!()
    };
    let ServerMessage::Error(e) = ServerMessage::parse(&text).unwrap() else {
        panic!("{text}")
    };
    assert_eq!(e.code, "UNPARSABLE_CLIENT_MESSAGE");
    assert_eq!(e.sequence_id, 3);
    assert!(matches!(
        ws.next().await,
        Some(Ok(Message::Close(None))) | None
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn many_connections_at_once_keep_their_own_state() {
    let server = server(
        Scenario::load("scenarios/plain.json".as_ref()).unwrap(),
        None,
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let url = server.base_url();
        tasks.push(tokio::spawn(async move {
            let mut config = FluxConfig::new(ListenOptions::default()).with_base_url(url);
            config.api_key = None;
            let (handle, mut events) = connect(config, Arc::new(WebSocketConnector)).await.unwrap();
            // Each client sends a different amount of audio: 1 s to 4.75 s.
            let seconds = 1.0 + 0.25 * f64::from(i);
            handle.send_audio(silence(seconds)).await.unwrap();
            let close = tokio::spawn(async move { handle.close().await });
            let mut updates = 0;
            let mut ended = false;
            while let Some(e) = events.recv().await {
                if let FluxEventKind::Turn(u) = e.unwrap().kind {
                    updates += 1;
                    ended |= u.info.event == TurnEvent::EndOfTurn;
                }
            }
            close.await.unwrap().unwrap();
            (seconds, updates, ended)
        }));
    }
    for t in tasks {
        let (seconds, updates, ended) = t.await.unwrap();
        // One TurnInfo per 240 ms tick, plus CloseStream's final partial Update, plus an
        // EndOfTurn forced by close when the turn was still open.
        let ticks = (seconds / 0.24 + 1e-9).floor() as usize;
        let partial = usize::from((seconds / 0.24).fract() > 1e-6);
        let forced = usize::from(seconds > 0.96 && seconds < 3.6);
        assert_eq!(updates, ticks + partial + forced, "{seconds} s");
        assert_eq!(ended, seconds >= 3.6 || forced == 1, "{seconds} s");
    }
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_dropped_and_never_holds_up_shutdown() {
    let emulator = MemoryEmulator::new(EmulatorConfig::new(Arc::new(Scenario::demo())));
    let request = ConnectRequest {
        url: "ws://e/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000".into(),
        api_key: None,
    };
    // Audio in real time and nothing read: the demo's answers fill the connection's queue of 64
    // messages, and the emulator drops a client that takes nothing for ten seconds.
    let started = tokio::time::Instant::now();
    let mut stuck = emulator.connect(&request).await.unwrap();
    let mut first_refused = None;
    loop {
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            stuck.sink.send(WireFrame::Binary(silence(0.08).into())),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                first_refused.get_or_insert_with(tokio::time::Instant::now);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "never dropped"
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    // The emulator stopped taking audio once it was stuck on a send, and dropped the client
    // within the ten seconds that send may wait.
    let refused = first_refused.expect("the emulator stopped taking audio first");
    let waited = refused.elapsed();
    assert!(
        waited <= Duration::from_secs(10),
        "dropped {waited:?} later"
    );
    // A client that stops reading is also dropped at shutdown, at once.
    let mut second = emulator.connect(&request).await.unwrap();
    for _ in 0..2000 {
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            second.sink.send(WireFrame::Binary(silence(0.08).into())),
        )
        .await;
        if sent.is_err() {
            break;
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(2), emulator.shutdown())
            .await
            .is_ok(),
        "shutdown waited on a client that does not read"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_sends_its_handshake_is_closed_and_never_holds_up_shutdown() {
    use tokio::io::AsyncReadExt;
    let emulator = server(Scenario::demo(), None).await;
    // Connects and says nothing: closed after the 10 s handshake limit.
    let mut silent = tokio::net::TcpStream::connect(emulator.local_addr())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), silent.read_to_end(&mut rest))
        .await
        .expect("the emulator closed the silent connection")
        .unwrap();
    assert!(rest.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "closed after {waited:?}"
    );
    // Half a handshake, then shutdown: it does not wait for the rest.
    let mut half = tokio::net::TcpStream::connect(emulator.local_addr())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, b"GET /v2/listen HTTP/1.1\r\n")
        .await
        .unwrap();
    tokio::task::yield_now().await;
    let before = tokio::time::Instant::now();
    emulator.shutdown().await;
    assert!(
        before.elapsed() < Duration::from_secs(1),
        "shutdown waited {:?} for a handshake",
        before.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn idle_connections_close_after_sixty_seconds() {
    let emulator = MemoryEmulator::new(EmulatorConfig::new(Arc::new(Scenario::demo())));
    let request = ConnectRequest {
        url: "ws://e/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000".into(),
        api_key: None,
    };
    let mut connection = emulator.connect(&request).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut last = None;
    while let Some(frame) = connection.stream.next().await {
        last = Some(frame.unwrap());
    }
    assert_eq!(
        last,
        Some(WireFrame::Close(Some((1011, "NET-0001".into()))))
    );
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    // A ping keeps it open.
    let mut connection = emulator.connect(&request).await.unwrap();
    tokio::time::sleep(Duration::from_secs(50)).await;
    connection
        .sink
        .send(WireFrame::Ping(Default::default()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(50)).await;
    connection.stream.next().await.unwrap().unwrap(); // Connected
    assert!(
        tokio::time::timeout(Duration::from_secs(1), connection.stream.next())
            .await
            .is_err(),
        "still open 100 s in, 50 s after the ping"
    );
    emulator.shutdown().await;
}

/// Checks the grammar of one connection's TurnInfos: per turn, StartOfTurn, then Updates, with
/// EagerEndOfTurn and TurnResumed pairs when eager, then EndOfTurn.
fn check_grammar(infos: &[TurnInfo], eager: bool) {
    #[derive(PartialEq, Clone, Copy, Debug)]
    enum S {
        Idle,
        Ongoing,
        Awaiting,
    }
    let mut state = S::Idle;
    let mut turn = 0;
    let mut eager_transcript: Option<String> = None;
    let mut last_state_event = TurnEvent::Update;
    for (i, info) in infos.iter().enumerate() {
        assert_eq!(info.turn_index, turn, "turn_index at message {i}");
        match (&info.event, state) {
            (TurnEvent::Update, S::Idle) => assert_eq!(info.transcript, ""),
            (TurnEvent::Update, _) => {}
            (TurnEvent::StartOfTurn, S::Idle) => {
                assert!(!info.transcript.is_empty());
                state = S::Ongoing;
            }
            (TurnEvent::EagerEndOfTurn, S::Ongoing) => {
                assert!(eager, "eager events only with eager_eot_threshold");
                assert!(!info.transcript.is_empty());
                eager_transcript = Some(info.transcript.clone());
                state = S::Awaiting;
            }
            (TurnEvent::TurnResumed, S::Awaiting) => state = S::Ongoing,
            (TurnEvent::EndOfTurn, S::Ongoing | S::Awaiting) => {
                let trigger = info.trigger.clone().expect("EndOfTurn has a trigger");
                if trigger == TurnTrigger::Model && eager {
                    assert_eq!(last_state_event, TurnEvent::EagerEndOfTurn);
                }
                if last_state_event == TurnEvent::EagerEndOfTurn {
                    assert_eq!(Some(&info.transcript), eager_transcript.as_ref());
                }
                state = S::Idle;
                turn += 1;
            }
            (event, s) => panic!("{event} in state {s:?} at message {i}"),
        }
        if info.event != TurnEvent::Update {
            last_state_event = info.event.clone();
        }
        if info.event != TurnEvent::EndOfTurn {
            assert!(info.trigger.is_none());
        }
    }
}

fn arb_scenario() -> impl Strategy<Value = String> {
    let phrase =
        (1usize..5, 0u64..1500, 0u32..100, 50u64..1500).prop_map(|(words, pause, conf, ramp)| {
            format!(
                r#"{{"text":"{}","pause_ms":{pause},"eot_confidence":{},"ramp_ms":{ramp}}}"#,
                vec!["word"; words].join(" "),
                f64::from(conf) / 100.0
            )
        });
    let turn = (
        proptest::collection::vec(phrase, 1..4),
        100u64..2000,
        90u32..300,
    )
        .prop_map(|(phrases, gap, wpm)| (phrases.join(","), gap, wpm));
    proptest::collection::vec(turn, 1..4).prop_map(|turns| {
        let mut at = 0;
        let turns: Vec<String> = turns
            .into_iter()
            .map(|(phrases, gap, wpm)| {
                at += gap;
                let t = format!(
                    r#"{{"start":{{"at_ms":{at}}},"words_per_minute":{wpm},"phrases":[{phrases}]}}"#
                );
                at += 6000;
                t
            })
            .collect();
        format!(r#"{{"name":"p","turns":[{}]}}"#, turns.join(","))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn emitted_sequences_obey_the_flux_grammar(
        scenario in arb_scenario(),
        eager in proptest::option::of(30u32..=90),
        eot in 50u32..=100,
        timeout in 500u64..4000,
        force_at in proptest::option::of(0usize..200),
        chunk_ms in prop_oneof![Just(20u64), Just(80), Just(100), Just(250)],
    ) {
        let eager = eager.map(|e| f64::from(e.min(eot)) / 100.0);
        let options = ListenOptions::default().with_thresholds(Thresholds {
            eager_eot_threshold: eager,
            eot_threshold: Some(f64::from(eot) / 100.0),
            eot_timeout_ms: Some(timeout),
        });
        options.validate().unwrap();
        let scenario = Arc::new(Scenario::parse(&scenario, "prop").unwrap());
        let mut session = EmulatorSession::new(options, scenario, "r".into());
        let mut infos = Vec::new();
        let mut sequence = 0;
        let mut take = |out: turnflow::emulator::Output| {
            for m in out.messages {
                let seq = match &m {
                    ServerMessage::TurnInfo(t) => t.sequence_id,
                    ServerMessage::Warning(w) => w.sequence_id,
                    other => panic!("unexpected {other:?}"),
                };
                sequence += 1;
                assert_eq!(seq, sequence, "sequence_id counts every message");
                if let ServerMessage::TurnInfo(t) = m { infos.push(t); }
            }
        };
        assert!(matches!(session.connected(), ServerMessage::Connected { sequence_id: 0, .. }));
        let chunk = encode(Encoding::Linear16, &vec![0; (16 * chunk_ms) as usize]);
        for i in 0..(30_000 / chunk_ms) as usize {
            if force_at == Some(i) {
                take(session.on_text(r#"{"type":"ForceEndTurn"}"#));
            }
            take(session.on_audio(&chunk));
        }
        take(session.close_stream());
        check_grammar(&infos, eager.is_some());
    }
}

/// The 16 kHz fixture: 0.5 s of silence, "Hello, can you book me a table for two tonight?"
/// spoken by espeak-ng (about 3.4 s), 2 s of silence.
fn speech_fixture() -> Vec<u8> {
    let bytes = std::fs::read("tests/fixtures/book_table_16k.wav").unwrap();
    let (format, offset) = turnflow::audio::parse_wav_header(&bytes).unwrap().unwrap();
    assert_eq!((format.sample_rate, format.channels), (16000, 1));
    bytes[offset..].to_vec()
}

/// Streams `audio` (16 kHz linear16) to a voice-activity emulator through our client.
async fn vad_events(scenario: &str, audio: Vec<u8>) -> Vec<TurnInfo> {
    vad_events_as(scenario, audio, ListenOptions::default()).await
}

/// Streams `audio` in the encoding `options` name to a voice-activity emulator.
async fn vad_events_as(scenario: &str, audio: Vec<u8>, options: ListenOptions) -> Vec<TurnInfo> {
    let thresholds = Thresholds {
        eager_eot_threshold: Some(0.5),
        ..Thresholds::default()
    };
    vad_events_with(scenario, audio, options.with_thresholds(thresholds)).await
}

/// Streams `audio` to a voice-activity emulator with the thresholds `options` carry.
async fn vad_events_with(scenario: &str, audio: Vec<u8>, options: ListenOptions) -> Vec<TurnInfo> {
    let mut config = EmulatorConfig::new(Arc::new(Scenario::parse(scenario, "vad").unwrap()));
    config.turn_detection = turnflow::emulator::TurnDetection::Vad;
    let emulator = MemoryEmulator::new(config);
    let mut flux_config = FluxConfig::new(options);
    flux_config.api_key = None;
    let (handle, mut events) = connect(flux_config, Arc::new(emulator.clone()))
        .await
        .unwrap();
    handle.send_audio(audio).await.unwrap();
    let collector = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(e) = events.recv().await {
            if let FluxEventKind::Turn(u) = e.unwrap().kind {
                out.push(u.info);
            }
        }
        out
    });
    handle.close().await.unwrap();
    let out = collector.await.unwrap();
    emulator.shutdown().await;
    out
}

#[tokio::test(start_paused = true)]
async fn voice_activity_mode_turns_real_speech_into_a_turn() {
    let infos = vad_events(
        r#"{"name":"vad","turns":[{"say":"Hello, can you book me a table for two tonight?"}]}"#,
        speech_fixture(),
    )
    .await;
    check_grammar(&infos, true);
    let start = infos
        .iter()
        .find(|i| i.event == TurnEvent::StartOfTurn)
        .expect("speech detected");
    assert!(
        (0.5..=1.5).contains(&start.audio_window_end),
        "StartOfTurn soon after the speech begins at 0.5 s: {}",
        start.audio_window_end
    );
    let end = infos
        .iter()
        .find(|i| i.event == TurnEvent::EndOfTurn)
        .expect("the turn ends");
    assert_eq!(
        end.transcript,
        "Hello, can you book me a table for two tonight?"
    );
    assert_eq!(end.trigger, Some(TurnTrigger::Model));
    let words_end = end.words.last().unwrap().end.unwrap();
    assert!(
        (3.3..=4.3).contains(&words_end),
        "speech ends near 3.9 s: {words_end}"
    );
    assert!(end.audio_window_end > words_end && end.audio_window_end < words_end + 1.5);
    assert_eq!(
        infos
            .iter()
            .filter(|i| i.event == TurnEvent::StartOfTurn)
            .count(),
        1
    );
}

/// The audio time of the first event of `kind`, and its confidence.
fn first(infos: &[TurnInfo], kind: TurnEvent) -> (f64, f64) {
    let info = infos
        .iter()
        .find(|i| i.event == kind)
        .unwrap_or_else(|| panic!("a {kind:?} in {infos:?}"));
    (info.audio_window_end, info.end_of_turn_confidence)
}

#[tokio::test(start_paused = true)]
async fn voice_activity_confidence_rises_with_the_silence_so_eager_ends_lead() {
    const SCENARIO: &str =
        r#"{"name":"vad","turns":[{"say":"Hello, can you book me a table for two tonight?"}]}"#;
    let with = |eager: f64, eot: f64| {
        ListenOptions::default().with_thresholds(Thresholds {
            eager_eot_threshold: Some(eager),
            eot_threshold: Some(eot),
            ..Thresholds::default()
        })
    };
    let infos = vad_events_with(SCENARIO, speech_fixture(), with(0.5, 0.7)).await;
    check_grammar(&infos, true);
    let (eager_at, eager_confidence) = first(&infos, TurnEvent::EagerEndOfTurn);
    let (end_at, end_confidence) = first(&infos, TurnEvent::EndOfTurn);
    let end_info = infos
        .iter()
        .find(|i| i.event == TurnEvent::EndOfTurn)
        .unwrap();
    let speech_end = end_info.words.last().unwrap().end.unwrap();
    assert!((0.5..0.7).contains(&eager_confidence), "{eager_confidence}");
    assert!(end_confidence >= 0.7, "{end_confidence}");
    assert!(
        eager_at - speech_end >= 0.436 && end_at - speech_end >= 0.618,
        "each after its share of the 800 ms ramp: speech ended at {speech_end}, eager at {eager_at}, end at {end_at}"
    );
    assert!(
        (end_at - eager_at - 0.24).abs() < 1e-6,
        "the eager end leads by one tick: {eager_at} then {end_at}"
    );

    // Thresholds further apart on the same curve (crossed 255 ms and 800 ms into the silence):
    // the eager end leads by two ticks or more, wherever the ticks fall.
    let infos = vad_events_with(SCENARIO, speech_fixture(), with(0.3, 0.9)).await;
    check_grammar(&infos, true);
    let (later_eager, _) = first(&infos, TurnEvent::EagerEndOfTurn);
    let (later_end, _) = first(&infos, TurnEvent::EndOfTurn);
    assert!(
        later_end - later_eager >= 0.48 - 1e-6,
        "{later_eager} then {later_end}"
    );
}

#[tokio::test(start_paused = true)]
async fn voice_activity_mode_hears_phone_audio_too() {
    // The fixture as a phone line carries it: 8 kHz (pairs averaged) in G.711 mu-law.
    let pcm = speech_fixture();
    let samples: Vec<i16> = pcm
        .chunks(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let phone: Vec<u8> = samples
        .chunks(2)
        .map(|pair| {
            let mean = pair.iter().map(|s| i32::from(*s)).sum::<i32>() / pair.len() as i32;
            turnflow::audio::mulaw_encode(mean as i16)
        })
        .collect();
    let infos = vad_events_as(
        r#"{"name":"vad","turns":[{"say":"Book me a table."}]}"#,
        phone,
        ListenOptions::raw(turnflow::flux::Encoding::Mulaw, 8000),
    )
    .await;
    check_grammar(&infos, true);
    let end = infos
        .iter()
        .find(|i| i.event == TurnEvent::EndOfTurn)
        .expect("the turn ends");
    assert_eq!(end.transcript, "Book me a table.");
    let words_end = end.words.last().unwrap().end.unwrap();
    assert!(
        end.audio_window_end > words_end && end.audio_window_end < words_end + 1.5,
        "the turn ends as promptly as at 16 kHz: {}",
        end.audio_window_end
    );
    assert!(
        (3.3..=4.3).contains(&words_end),
        "speech ends near 3.9 s, as at 16 kHz: {words_end}"
    );
}

#[tokio::test(start_paused = true)]
async fn voice_activity_mode_ignores_silence_and_uses_a_placeholder_past_the_script() {
    let quiet = vad_events(r#"{"name":"vad","turns":[{"say":"Hi."}]}"#, silence(3.0)).await;
    assert!(
        quiet
            .iter()
            .all(|i| i.event == TurnEvent::Update && i.transcript.is_empty())
    );
    let mut twice = speech_fixture();
    twice.extend(speech_fixture());
    let infos = vad_events(r#"{"name":"vad","turns":[{"say":"Hi there."}]}"#, twice).await;
    check_grammar(&infos, true);
    let ends: Vec<&str> = infos
        .iter()
        .filter(|i| i.event == TurnEvent::EndOfTurn)
        .map(|i| i.transcript.as_str())
        .collect();
    assert_eq!(ends[0], "Hi there.");
    assert!(ends[1].starts_with("unscripted speech"), "{ends:?}");
}
