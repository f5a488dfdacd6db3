//! The Flux client against servers on loopback sockets (port 0) and in memory.
//!
//! Timing-dependent behaviour (pings, silence injection, silent-server detection, reconnect
//! backoff) runs over the in-memory transport on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use turnflow::audio::encode;
use turnflow::emulator::{EmulatorConfig, EmulatorServer, MemoryEmulator};
use turnflow::flux::client::FluxEventKind;
use turnflow::flux::messages::Thresholds;
use turnflow::flux::{
    ApiKey, Configure, Connector, Encoding, FluxConfig, FluxError, FluxEvents, ListenOptions,
    TurnEvent, TurnTrigger, WebSocketConnector, connect,
};
use turnflow::scenario::Scenario;
use turnflow::ws::{ConnectError, ConnectRequest, Connection, WireFrame, channel_pair};

const SPEECH: i16 = 6000;

fn scenario(json: &str) -> Arc<Scenario> {
    Arc::new(Scenario::parse(json, "test").unwrap())
}

fn eager_options() -> ListenOptions {
    ListenOptions::default().with_thresholds(Thresholds {
        eager_eot_threshold: Some(0.5),
        ..Thresholds::default()
    })
}

fn config(base_url: &str, options: ListenOptions) -> FluxConfig {
    let mut c = FluxConfig::new(options).with_base_url(base_url);
    c.api_key = None;
    c
}

fn pcm(seconds: f64, level: i16) -> Bytes {
    let n = (seconds * 16000.0).round() as usize;
    Bytes::from(encode(Encoding::Linear16, &vec![level; n]))
}

/// Collects turn events (not Updates) as "Event@end" strings until the stream ends.
async fn turn_events(events: &mut FluxEvents) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(e) = events.recv().await {
        if let FluxEventKind::Turn(t) = e.unwrap().kind
            && t.info.event != TurnEvent::Update
        {
            out.push(format!("{}@{:.2}", t.info.event, t.info.audio_window_end));
        }
    }
    out
}

#[tokio::test]
async fn demo_conversation_over_a_real_socket() {
    let server = EmulatorServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorConfig::new(scenario(
            r#"{"name":"x","turns":[{"start":{"at_ms":500},"phrases":[{"text":"one two three","eot_confidence":0.9,"ramp_ms":1000}]}]}"#,
        )),
    )
    .await
    .unwrap();
    let (handle, mut events) = connect(
        config(&server.base_url(), eager_options()),
        Arc::new(WebSocketConnector),
    )
    .await
    .unwrap();
    assert_eq!(handle.request_id().len(), 36, "a uuid");
    // Send 3 s of audio in odd-sized pieces; the client re-cuts them into 80 ms frames.
    let audio = pcm(3.0, 0);
    for piece in audio.chunks(1234) {
        handle
            .send_audio(Bytes::copy_from_slice(piece))
            .await
            .unwrap();
    }
    let collector = tokio::spawn(async move { turn_events(&mut events).await });
    handle.close().await.unwrap();
    let seen = collector.await.unwrap();
    // Words end at 0.875, 1.25, 1.625; confidence 0.5 at +0.55 s, 0.7 at +0.77 s.
    assert_eq!(
        seen,
        vec!["StartOfTurn@0.96", "EagerEndOfTurn@2.40", "EndOfTurn@2.64"]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn every_event_of_an_eager_miss_with_timings() {
    let emulator = MemoryEmulator::new(EmulatorConfig::new(Arc::new(
        Scenario::load(std::path::Path::new("scenarios/eager_miss.json")).unwrap(),
    )));
    let (handle, mut events) = connect(
        config("ws://emulator", eager_options()),
        Arc::new(emulator.clone()),
    )
    .await
    .unwrap();
    let Some(Ok(first)) = events.recv().await else {
        panic!()
    };
    assert!(matches!(
        first.kind,
        FluxEventKind::Connected { attempt: 0, .. }
    ));
    handle.send_audio(pcm(6.0, 0)).await.unwrap();
    let collector = tokio::spawn(async move {
        let mut turns = Vec::new();
        while let Some(e) = events.recv().await {
            if let FluxEventKind::Turn(t) = e.unwrap().kind {
                turns.push(t);
            }
        }
        turns
    });
    handle.close().await.unwrap();
    let turns = collector.await.unwrap();
    let states: Vec<_> = turns
        .iter()
        .filter(|t| t.info.event != TurnEvent::Update)
        .map(|t| (t.info.event.clone(), t.info.transcript.clone()))
        .collect();
    assert_eq!(
        states,
        vec![
            (TurnEvent::StartOfTurn, "I'd".to_owned()),
            (
                TurnEvent::EagerEndOfTurn,
                "I'd like to change my flight".to_owned()
            ),
            (
                TurnEvent::TurnResumed,
                "I'd like to change my flight to".to_owned()
            ),
            (
                TurnEvent::EagerEndOfTurn,
                "I'd like to change my flight to Friday morning.".to_owned()
            ),
            (
                TurnEvent::EndOfTurn,
                "I'd like to change my flight to Friday morning.".to_owned()
            ),
        ]
    );
    let end = turns
        .iter()
        .find(|t| t.info.event == TurnEvent::EndOfTurn)
        .unwrap();
    assert_eq!(end.info.trigger, Some(TurnTrigger::Model));
    assert!(end.audio_sent_at.is_some());
    assert_eq!(end.word_end_sent_at.len(), end.info.words.len());
    assert!(end.speech_end_sent_at().unwrap() <= end.audio_sent_at.unwrap());
    // Every 240 ms of audio produced exactly one TurnInfo.
    assert_eq!(turns.len(), 25);
    emulator.shutdown().await;
}

#[tokio::test]
async fn invalid_options_fail_before_any_io() {
    struct Unreachable;
    #[async_trait]
    impl Connector for Unreachable {
        async fn connect(&self, _: &ConnectRequest) -> Result<Connection, ConnectError> {
            panic!("invalid options reached the network");
        }
    }
    let options = ListenOptions::default().with_thresholds(Thresholds {
        eager_eot_threshold: Some(0.8),
        eot_threshold: Some(0.6),
        ..Thresholds::default()
    });
    let Err(e) = connect(config("ws://x", options), Arc::new(Unreachable)).await else {
        panic!("expected an error")
    };
    assert!(
        matches!(e, FluxError::InvalidOptions(ref o) if o.parameter == "eager_eot_threshold"),
        "{e}"
    );
}

#[tokio::test]
async fn handshake_400_and_401_from_the_emulator() {
    let mut c = EmulatorConfig::new(Arc::new(Scenario::demo()));
    c.api_key = Some(ApiKey::new("sekrit"));
    let server = EmulatorServer::bind("127.0.0.1:0".parse().unwrap(), c)
        .await
        .unwrap();
    let Err(e) = connect(
        config(&server.base_url(), ListenOptions::default()),
        Arc::new(WebSocketConnector),
    )
    .await
    else {
        panic!()
    };
    let FluxError::Connect(ConnectError::Handshake {
        status, request_id, ..
    }) = &e
    else {
        panic!("{e}")
    };
    assert_eq!(*status, 401);
    assert!(request_id.is_some(), "dg-request-id on rejections too");

    let ok =
        config(&server.base_url(), ListenOptions::default()).with_api_key(ApiKey::new("sekrit"));
    let (handle, _events) = connect(ok, Arc::new(WebSocketConnector)).await.unwrap();
    handle.close().await.unwrap();

    // The client validates locally, so reach the server's 400 through a raw URL.
    let request = ConnectRequest {
        url: format!(
            "{}/v2/listen?model=nova-3&encoding=linear16&sample_rate=16000",
            server.base_url()
        ),
        api_key: Some(ApiKey::new("sekrit")),
    };
    let Err(e) = WebSocketConnector.connect(&request).await else {
        panic!()
    };
    let ConnectError::Handshake {
        status,
        dg_error,
        body,
        ..
    } = e
    else {
        panic!()
    };
    assert_eq!(status, 400);
    assert!(
        dg_error
            .unwrap()
            .contains("flux-general-en or flux-general-multi")
    );
    assert!(body.contains("err_msg"));
    server.shutdown().await;
}

/// A raw HTTP server answering every upgrade with `status` and Deepgram's error headers.
async fn refusing_server(status: u16, reason: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let body = format!(r#"{{"err_code":"E","err_msg":"{reason}","request_id":"rid-1"}}"#);
            let response = format!(
                "HTTP/1.1 {status} X\r\ndg-request-id: rid-1\r\ndg-error: {reason}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    format!("ws://{addr}")
}

#[tokio::test]
async fn handshake_403_and_429_carry_status_error_and_request_id() {
    for (status, reason, retryable) in [
        (
            403,
            "Project does not have access to the requested model",
            false,
        ),
        (429, "Too many concurrent requests", true),
    ] {
        let url = refusing_server(status, reason).await;
        let Err(FluxError::Connect(e)) = connect(
            config(&url, ListenOptions::default()),
            Arc::new(WebSocketConnector),
        )
        .await
        else {
            panic!("expected a connect error")
        };
        assert_eq!(e.is_retryable(), retryable);
        assert_eq!(
            e.to_string(),
            format!("handshake rejected with http {status}: {reason} (dg-request-id rid-1)")
        );
    }
}

/// A connector handing the server end of each in-memory connection to the test.
struct ScriptedServer {
    ends: mpsc::UnboundedSender<(String, Connection)>,
}

#[async_trait]
impl Connector for ScriptedServer {
    async fn connect(&self, request: &ConnectRequest) -> Result<Connection, ConnectError> {
        let (client, server) = channel_pair(256, None);
        self.ends
            .send((request.url.clone(), server))
            .map_err(|_| ConnectError::Io("test server gone".into()))?;
        Ok(client)
    }
}

fn scripted() -> (
    Arc<ScriptedServer>,
    mpsc::UnboundedReceiver<(String, Connection)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(ScriptedServer { ends: tx }), rx)
}

/// Connects through a [`ScriptedServer`] that answers `Connected`: the handle, the events after
/// the `Connected` event, the URL asked for, the server's end, and the later connections.
async fn connected(
    config: FluxConfig,
) -> (
    turnflow::flux::FluxHandle,
    FluxEvents,
    String,
    Connection,
    mpsc::UnboundedReceiver<(String, Connection)>,
) {
    let (connector, mut ends) = scripted();
    let attempt = tokio::spawn(connect(config, connector));
    let (url, mut server) = ends.recv().await.unwrap();
    send_json(
        &mut server,
        r#"{"type":"Connected","request_id":"r1","sequence_id":0}"#.into(),
    )
    .await;
    let (handle, mut events) = attempt.await.unwrap().unwrap();
    events.recv().await.unwrap().unwrap();
    (handle, events, url, server, ends)
}

async fn send_json(server: &mut Connection, text: String) {
    server.sink.send(WireFrame::Text(text)).await.unwrap();
}

fn turn_info(event: &str, index: u64, end: f64, transcript: &str, seq: u64) -> String {
    let trigger = if event == "EndOfTurn" {
        r#","trigger":"model""#
    } else {
        ""
    };
    let words = transcript
        .split_whitespace()
        .map(|w| {
            format!(
                r#"{{"word":"{w}","confidence":0.9,"start":{:.2},"end":{end}}}"#,
                end - 0.1
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r#"{{"type":"TurnInfo","request_id":"r","sequence_id":{seq},"event":"{event}","turn_index":{index},"audio_window_start":0,"audio_window_end":{end},"transcript":"{transcript}","words":[{words}],"end_of_turn_confidence":0.5{trigger}}}"#
    )
}

#[tokio::test(start_paused = true)]
async fn connected_wait_times_out() {
    let (connector, mut ends) = scripted();
    let mut c = config("ws://x", ListenOptions::default());
    c.connected_timeout = Duration::from_secs(2);
    let attempt = tokio::spawn(connect(c, connector));
    let _server = ends.recv().await.unwrap();
    let Err(e) = attempt.await.unwrap() else {
        panic!()
    };
    assert!(matches!(e, FluxError::ConnectedTimeout(d) if d == Duration::from_secs(2)));
}

#[tokio::test(start_paused = true)]
async fn unknown_and_malformed_messages_are_tolerated_and_error_is_fatal() {
    let (handle, mut events, _, mut server, _ends) =
        connected(config("ws://x", ListenOptions::default())).await;
    send_json(
        &mut server,
        r#"{"type":"SpeakerDiarization","speaker":2}"#.into(),
    )
    .await;
    send_json(&mut server, "{broken".into()).await;
    send_json(
        &mut server,
        r#"{"type":"TurnInfo","request_id":"r"}"#.into(),
    )
    .await;
    send_json(
        &mut server,
        r#"{"type":"Warning","request_id":"r","sequence_id":4,"code":"W1","description":"careful"}"#.into(),
    )
    .await;
    send_json(
        &mut server,
        r#"{"type":"ConfigureFailure","request_id":"r","sequence_id":5,"code":"INVALID","description":"nope"}"#.into(),
    )
    .await;
    send_json(
        &mut server,
        r#"{"type":"Error","sequence_id":6,"code":"INTERNAL_SERVER_ERROR","description":"boom"}"#
            .into(),
    )
    .await;
    let unknown = events.recv().await.unwrap().unwrap();
    assert!(matches!(unknown.kind, FluxEventKind::Unknown(ref v) if v["speaker"] == 2));
    let warning = events.recv().await.unwrap().unwrap();
    assert!(matches!(warning.kind, FluxEventKind::Warning(ref w) if w.code == "W1"));
    let rejected = events.recv().await.unwrap().unwrap();
    assert!(
        matches!(rejected.kind, FluxEventKind::ConfigureRejected(ref f) if f.code.as_deref() == Some("INVALID"))
    );
    let fatal = events.recv().await.unwrap();
    assert!(matches!(fatal, Err(FluxError::Server(ref e)) if e.code == "INTERNAL_SERVER_ERROR"));
    assert!(
        events.recv().await.is_none(),
        "the stream ends after a fatal error"
    );
    assert_eq!(handle.stats().malformed_messages.load(Ordering::Relaxed), 2);
    assert!(matches!(
        handle.send_audio(pcm(0.1, 0)).await,
        Err(FluxError::Closed)
    ));
}

/// The supervisor reads the connection itself: frames that carry no message are passed over
/// without holding up the ones that do, and the server's close frame is the reason given.
#[tokio::test(start_paused = true)]
async fn frames_without_a_message_are_skipped_and_a_close_says_why() {
    let (_handle, mut events, _, mut server, mut ends) =
        connected(config("ws://x", ListenOptions::default())).await;
    for frame in [
        WireFrame::Binary(Bytes::from_static(b"??")),
        WireFrame::Ping(Bytes::from_static(b"p")),
        WireFrame::Pong(Bytes::new()),
    ] {
        server.sink.send(frame).await.unwrap();
    }
    send_json(
        &mut server,
        r#"{"type":"Warning","request_id":"r","sequence_id":1,"code":"W1","description":"careful"}"#
            .into(),
    )
    .await;
    server
        .sink
        .send(WireFrame::Close(Some((1011, "overloaded".into()))))
        .await
        .unwrap();
    let warning = events.recv().await.unwrap().unwrap();
    assert!(matches!(warning.kind, FluxEventKind::Warning(ref w) if w.code == "W1"));
    let lost = events.recv().await.unwrap().unwrap();
    assert!(
        matches!(lost.kind, FluxEventKind::Reconnecting { ref reason }
            if reason == "server closed the connection (1011 overloaded)"),
        "{:?}",
        lost.kind
    );
    assert!(ends.recv().await.is_some(), "a new connection is opened");
}

#[tokio::test]
async fn a_message_over_four_mebibytes_ends_the_connection_not_the_process() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(socket).await.unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"type":"Connected","request_id":"r1","sequence_id":0}"#,
        ))
        .await
        .unwrap();
        let huge = format!(
            r#"{{"type":"Warning","request_id":"r","sequence_id":1,"code":"W","description":"{}"}}"#,
            "x".repeat(5 << 20)
        );
        let _ = ws
            .send(tokio_tungstenite::tungstenite::Message::text(huge))
            .await;
        while ws.next().await.is_some() {}
    });
    let mut c = config(&base, ListenOptions::default());
    c.reconnect.max_attempts = 0;
    let (_handle, mut events) = connect(c, Arc::new(WebSocketConnector)).await.unwrap();
    let mut seen = Vec::new();
    let failure = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events
                .recv()
                .await
                .expect("the client reports why it stopped")
            {
                Ok(event) => seen.push(event.kind),
                Err(e) => break e,
            }
        }
    })
    .await
    .expect("the connection ended on the oversized message");
    let message = failure.to_string();
    assert!(
        message.contains("Message too long") || message.contains("Space limit exceeded"),
        "{message}"
    );
    assert!(
        !seen.iter().any(|k| matches!(k, FluxEventKind::Warning(_))),
        "the oversized message was not delivered"
    );
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn audio_is_cut_into_80_ms_frames_and_idle_sockets_are_pinged() {
    let (handle, _events, url, mut server, _ends) =
        connected(config("ws://x", ListenOptions::default())).await;
    assert!(url.starts_with("ws://x/v2/listen?model=flux-general-en"));
    for piece in pcm(0.5, 100).chunks(999) {
        handle
            .send_audio(Bytes::copy_from_slice(piece))
            .await
            .unwrap();
    }
    let mut sizes = Vec::new();
    for _ in 0..6 {
        match server.stream.next().await.unwrap().unwrap() {
            WireFrame::Binary(b) => sizes.push(b.len()),
            other => panic!("expected audio, got {other:?}"),
        }
    }
    assert_eq!(sizes, vec![2560; 6], "80 ms of 16 kHz linear16");
    // No audio for a while: pings every 5 s, nothing else.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut pings = 0;
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_millis(1), server.stream.next()).await
    {
        assert!(matches!(frame, WireFrame::Ping(_)), "{frame:?}");
        pings += 1;
    }
    assert_eq!(pings, 2);
    assert_eq!(handle.stats().pings_sent.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn configure_keeps_one_in_flight_and_coalesces_the_rest() {
    let (handle, mut events, _, mut server, _ends) =
        connected(config("ws://x", eager_options())).await;
    let eot = |v: f64| Configure {
        thresholds: Some(Thresholds {
            eot_threshold: Some(v),
            ..Thresholds::default()
        }),
        ..Configure::default()
    };
    handle.configure(eot(0.8)).await.unwrap();
    handle.configure(eot(0.85)).await.unwrap();
    handle
        .configure(Configure {
            keyterms: Some(vec!["Acme".into()]),
            ..Configure::default()
        })
        .await
        .unwrap();
    let bad = handle.configure(eot(0.45)).await.unwrap_err();
    assert!(
        matches!(bad, FluxError::InvalidOptions(ref o) if o.parameter == "eot_threshold"),
        "{bad}"
    );
    let WireFrame::Text(first) = server.stream.next().await.unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(
        first,
        r#"{"type":"Configure","thresholds":{"eot_threshold":0.8}}"#
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(50), server.stream.next())
            .await
            .is_err(),
        "nothing more until the first is acknowledged"
    );
    send_json(
        &mut server,
        r#"{"type":"ConfigureSuccess","request_id":"r","sequence_id":1,"thresholds":{"eager_eot_threshold":0.5,"eot_threshold":0.8,"eot_timeout_ms":5000},"keyterms":[]}"#.into(),
    )
    .await;
    let WireFrame::Text(second) = server.stream.next().await.unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(
        second,
        r#"{"type":"Configure","thresholds":{"eot_threshold":0.85},"keyterms":["Acme"]}"#
    );
    let applied = events.recv().await.unwrap().unwrap();
    assert!(
        matches!(applied.kind, FluxEventKind::ConfigureApplied(ref s) if s.thresholds.eot_threshold == Some(0.8))
    );
}

#[tokio::test(start_paused = true)]
async fn silence_is_injected_while_a_turn_is_open_and_the_source_stalls() {
    let emulator = MemoryEmulator::new(EmulatorConfig::new(scenario(
        r#"{"name":"s","turns":[{"start":{"at_ms":0},"phrases":[{"text":"hello there","eot_confidence":0.9,"ramp_ms":400}]}]}"#,
    )));
    let (handle, mut events) = connect(
        config("ws://e", ListenOptions::default()),
        Arc::new(emulator.clone()),
    )
    .await
    .unwrap();
    // 0.8 s of audio: the turn starts (words end at 0.375 and 0.75) and then the source stalls.
    handle.send_audio(pcm(0.8, 0)).await.unwrap();
    let mut ended = None;
    while let Some(e) = events.recv().await {
        if let FluxEventKind::Turn(t) = e.unwrap().kind
            && t.info.event == TurnEvent::EndOfTurn
        {
            ended = Some(t);
            break;
        }
    }
    let ended = ended.expect("the turn ends on injected silence");
    assert_eq!(ended.info.transcript, "hello there");
    assert!(handle.stats().silence_frames.load(Ordering::Relaxed) >= 3);
    handle.close().await.unwrap();
    emulator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn dropped_socket_mid_turn_reconnects_replays_and_keeps_the_timeline() {
    let (handle, mut events, _, mut first, mut ends) =
        connected(config("ws://x", eager_options())).await;
    // 1 s of audio, then turn 0 ends at 0.48; turn 1 starts at 0.96. The samples vary (a
    // pseudo-random walk), so the replay is checked byte for byte through the client's
    // lossless packing.
    let mut level = 0i32;
    let mut state = 7u32;
    let samples: Vec<i16> = (0..16000)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            level = (level + (state >> 16) as i32 % 2001 - 1000).clamp(-20_000, 20_000);
            level as i16
        })
        .collect();
    let audio = Bytes::from(encode(Encoding::Linear16, &samples));
    handle.send_audio(audio.clone()).await.unwrap();
    for _ in 0..12 {
        first.stream.next().await.unwrap().unwrap();
    }
    send_json(&mut first, turn_info("StartOfTurn", 0, 0.24, "hi", 1)).await;
    send_json(&mut first, turn_info("EndOfTurn", 0, 0.48, "hi", 2)).await;
    send_json(&mut first, turn_info("StartOfTurn", 1, 0.96, "book a", 3)).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        if let FluxEventKind::Turn(t) = events.recv().await.unwrap().unwrap().kind {
            seen.push(t);
        }
    }
    drop(first);
    let reconnecting = events.recv().await.unwrap().unwrap();
    assert!(matches!(
        reconnecting.kind,
        FluxEventKind::Reconnecting { .. }
    ));
    let (url, mut second) = ends.recv().await.unwrap();
    assert!(
        url.contains("eager_eot_threshold=0.5"),
        "configuration re-applied in the url: {url}"
    );
    send_json(
        &mut second,
        r#"{"type":"Connected","request_id":"r2","sequence_id":0}"#.into(),
    )
    .await;
    let connected = events.recv().await.unwrap().unwrap();
    assert!(
        matches!(connected.kind, FluxEventKind::Connected { attempt: 1, ref request_id } if request_id == "r2")
    );
    // The audio since the last EndOfTurn (0.48 s .. 0.96 s, six whole frames) is replayed,
    // exactly as it was first sent.
    let mut replayed = Vec::new();
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_millis(1), second.stream.next()).await
    {
        let WireFrame::Binary(b) = frame else {
            panic!("{frame:?}")
        };
        replayed.extend_from_slice(&b);
    }
    assert_eq!(replayed.len() / 2, 7680, "0.48 s of audio at 16 kHz");
    assert!(
        replayed == audio[15_360..30_720],
        "the replayed bytes are the sent ones"
    );
    // The new connection's clock starts at session time 0.48; its turn 0 is our turn 1.
    send_json(&mut second, turn_info("StartOfTurn", 0, 0.24, "book", 1)).await;
    send_json(&mut second, turn_info("Update", 0, 0.48, "book a", 2)).await;
    send_json(&mut second, turn_info("Update", 0, 0.72, "book a table", 3)).await;
    send_json(
        &mut second,
        turn_info("EndOfTurn", 0, 0.96, "book a table", 4),
    )
    .await;
    let mut after = Vec::new();
    while after.len() < 2 {
        if let FluxEventKind::Turn(t) = events.recv().await.unwrap().unwrap().kind {
            after.push(t);
        }
    }
    assert_eq!(
        after[0].info.event,
        TurnEvent::Update,
        "replayed StartOfTurn hidden, first new Update shown"
    );
    assert!((after[0].info.audio_window_end - 1.2).abs() < 1e-9);
    assert_eq!(after[0].info.turn_index, 1);
    assert_eq!(after[1].info.event, TurnEvent::EndOfTurn);
    assert_eq!(
        after[1].info.transcript, "book a table",
        "the whole turn, not the fragment"
    );
    assert!((after[1].info.audio_window_end - 1.44).abs() < 1e-9);
    assert_eq!(handle.stats().reconnects.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_is_treated_as_dropped() {
    let mut c = config("ws://x", ListenOptions::default());
    c.silent_server_timeout = Duration::from_secs(3);
    let (handle, mut events, _, mut first, mut ends) = connected(c).await;
    let feeder = tokio::spawn(async move {
        for _ in 0..50 {
            if handle.send_audio(pcm(0.1, 0)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        handle
    });
    let drain = tokio::spawn(async move { while first.stream.next().await.is_some() {} });
    let reconnecting = events.recv().await.unwrap().unwrap();
    let FluxEventKind::Reconnecting { reason } = reconnecting.kind else {
        panic!()
    };
    assert!(reason.contains("no message from the server"), "{reason}");
    assert!(ends.recv().await.is_some(), "a new connection is attempted");
    drop(feeder);
    drain.abort();
}

#[tokio::test(start_paused = true)]
async fn a_server_that_stops_reading_is_replaced_and_never_blocks_the_caller_for_long() {
    let mut c = config("ws://x", ListenOptions::default());
    // Only the stalled writer may end this connection.
    c.silent_server_timeout = Duration::from_secs(600);
    let (handle, mut events, _, first, mut ends) = connected(c).await;
    let started = tokio::time::Instant::now();
    // A caller streaming in real time, noting its longest wait to hand over 100 ms of audio.
    let feeder = tokio::spawn(async move {
        let mut longest_wait = Duration::ZERO;
        for _ in 0..400 {
            let before = tokio::time::Instant::now();
            if handle.send_audio(pcm(0.1, 0)).await.is_err() {
                break;
            }
            longest_wait = longest_wait.max(before.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        longest_wait
    });
    // The server never reads `first`: its 256-frame queue fills after about 20 s of audio.
    let (at, reason) = loop {
        let event = events.recv().await.unwrap().unwrap();
        if let FluxEventKind::Reconnecting { reason } = event.kind {
            break (event.received_at, reason);
        }
    };
    assert!(reason.contains("the server stopped reading"), "{reason}");
    let after = at - started;
    assert!(
        after >= Duration::from_secs(25) && after <= Duration::from_secs(31),
        "20.5 s to fill the server's queue, then the 5 s stall limit; noticed after {after:?}"
    );
    let (_, mut second) = ends.recv().await.expect("a new connection is attempted");
    send_json(
        &mut second,
        r#"{"type":"Connected","request_id":"r2","sequence_id":0}"#.into(),
    )
    .await;
    let drain = tokio::spawn(async move { while second.stream.next().await.is_some() {} });
    let longest_wait = feeder.await.unwrap();
    assert!(
        longest_wait <= Duration::from_secs(6),
        "the caller waited {longest_wait:?} to hand over audio"
    );
    drop(first);
    drain.abort();
}
#[tokio::test(start_paused = true)]
async fn reconnects_give_up_after_the_policy_and_say_why() {
    struct Refusing;
    #[async_trait]
    impl Connector for Refusing {
        async fn connect(&self, _: &ConnectRequest) -> Result<Connection, ConnectError> {
            Err(ConnectError::Io("connection refused".into()))
        }
    }
    struct OnceThenRefuse {
        first: std::sync::Mutex<Option<Connection>>,
    }
    #[async_trait]
    impl Connector for OnceThenRefuse {
        async fn connect(&self, r: &ConnectRequest) -> Result<Connection, ConnectError> {
            let first = self.first.lock().unwrap().take();
            match first {
                Some(c) => Ok(c),
                None => Refusing.connect(r).await,
            }
        }
    }
    let (client, mut server) = channel_pair(16, None);
    send_json(
        &mut server,
        r#"{"type":"Connected","request_id":"r","sequence_id":0}"#.into(),
    )
    .await;
    let connector = Arc::new(OnceThenRefuse {
        first: std::sync::Mutex::new(Some(client)),
    });
    let (_handle, mut events) = connect(config("ws://x", ListenOptions::default()), connector)
        .await
        .unwrap();
    events.recv().await.unwrap().unwrap();
    drop(server);
    let lost = tokio::time::Instant::now();
    let mut last = None;
    while let Some(e) = events.recv().await {
        last = Some(e);
    }
    let Some(Err(FluxError::ReconnectFailed {
        attempts,
        last_error,
        ..
    })) = last
    else {
        panic!("{last:?}")
    };
    // A time budget, not a count: attempts until the next would start past 30 s.
    let away = lost.elapsed();
    assert!(
        away <= Duration::from_secs(30) && away >= Duration::from_secs(25),
        "{away:?}"
    );
    assert!(attempts > 8, "{attempts} attempts");
    assert!(last_error.contains("connection refused"), "{last_error}");
    assert!(last_error.contains("past the 30s budget"), "{last_error}");
}

/// The emulator behind a switch: while `down`, every connection is refused and the open one is
/// cut, as when the service is away.
struct Outage {
    inner: MemoryEmulator,
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled to cut the connections open at the start of the outage.
    cut: std::sync::Mutex<tokio_util::sync::CancellationToken>,
}

#[async_trait]
impl Connector for Outage {
    async fn connect(&self, r: &ConnectRequest) -> Result<Connection, ConnectError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ConnectError::Io("connection refused".into()));
        }
        let Connection {
            sink,
            stream,
            request_id,
        } = self.inner.connect(r).await?;
        let cut = self.cut.lock().unwrap().clone();
        Ok(Connection {
            sink,
            stream: Box::pin(stream.take_until(cut.cancelled_owned())),
            request_id,
        })
    }
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_25_seconds_is_ridden_through_and_the_turn_spoken_meanwhile_answered() {
    let inner = MemoryEmulator::new(EmulatorConfig::new(scenario(
        r#"{"name":"t","turns":[{"start":{"at_ms":10000},"phrases":[{"text":"are you there"}],"reply":"yes"}]}"#,
    )));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let connector = Arc::new(Outage {
        inner: inner.clone(),
        down: down.clone(),
        cut: Default::default(),
    });
    let (handle, mut events) = connect(
        config("ws://x", ListenOptions::default()),
        connector.clone(),
    )
    .await
    .unwrap();
    let stats = handle.stats();
    let sender = handle.sender();
    let feeder = tokio::spawn(async move {
        for _ in 0..(40_000 / 80) {
            if sender.send_audio(pcm(0.08, 0)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    down.store(true, Ordering::SeqCst);
    std::mem::take(&mut *connector.cut.lock().unwrap()).cancel();
    tokio::time::sleep(Duration::from_secs(25)).await;
    down.store(false, Ordering::SeqCst);
    let mut ends = Vec::new();
    let mut reconnected = false;
    while let Some(event) = events.recv().await {
        match event.expect("the outage is within the budget").kind {
            FluxEventKind::Connected { attempt, .. } if attempt > 0 => reconnected = true,
            FluxEventKind::Turn(t) if t.info.event == TurnEvent::EndOfTurn => {
                ends.push(t.info.transcript.clone());
                break;
            }
            _ => {}
        }
    }
    assert!(reconnected);
    assert_eq!(
        ends,
        ["are you there"],
        "the turn spoken into the outage is heard"
    );
    assert_eq!(stats.reconnects.load(Ordering::Relaxed), 1);
    assert!(stats.reconnect_failures.load(Ordering::Relaxed) >= 5);
    let offline = stats.offline_ms.load(Ordering::Relaxed);
    assert!((25_000..=30_000).contains(&offline), "{offline} ms offline");
    feeder.abort();
    drop(handle);
    inner.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn handshakes_in_flight_are_limited_across_sessions() {
    struct Slow {
        inner: MemoryEmulator,
        in_flight: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }
    #[async_trait]
    impl Connector for Slow {
        async fn connect(&self, r: &ConnectRequest) -> Result<Connection, ConnectError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let connection = self.inner.connect(r).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            connection
        }
    }
    let inner = MemoryEmulator::new(EmulatorConfig::new(Arc::new(Scenario::demo())));
    let connector = Arc::new(Slow {
        inner: inner.clone(),
        in_flight: Default::default(),
        most: Default::default(),
    });
    let mut flux = config("ws://x", ListenOptions::default());
    flux.handshakes = turnflow::flux::client::HandshakeLimit::new(8);
    let sessions: Vec<_> = (0..200)
        .map(|_| {
            let (flux, connector) = (flux.clone(), connector.clone());
            tokio::spawn(async move { connect(flux, connector).await.map(|(h, _)| h) })
        })
        .collect();
    let mut handles = Vec::new();
    for session in sessions {
        handles.push(session.await.unwrap().unwrap());
    }
    assert_eq!(connector.most.load(Ordering::SeqCst), 8);
    drop(handles);
    inner.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn close_forces_the_open_turn_to_end_then_closes_the_stream() {
    let emulator = MemoryEmulator::new(EmulatorConfig::new(scenario(
        r#"{"name":"c","turns":[{"start":{"at_ms":0},"phrases":[{"text":"my number is","eot_confidence":0.2}]}]}"#,
    )));
    let (handle, mut events) = connect(
        config("ws://e", ListenOptions::default()),
        Arc::new(emulator.clone()),
    )
    .await
    .unwrap();
    handle.send_audio(pcm(1.3, 0)).await.unwrap();
    let collector = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(e) = events.recv().await {
            if let FluxEventKind::Turn(t) = e.unwrap().kind
                && t.info.event != TurnEvent::Update
            {
                out.push((t.info.event, t.info.trigger, t.info.transcript));
            }
        }
        out
    });
    handle.close().await.unwrap();
    let seen = collector.await.unwrap();
    assert_eq!(
        seen,
        vec![
            (TurnEvent::StartOfTurn, None, "my".to_owned()),
            (
                TurnEvent::EndOfTurn,
                Some(TurnTrigger::Manual),
                "my number is".to_owned()
            ),
        ],
        "the transcript of the open turn is not lost on close"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn api_key_never_appears_in_debug_output() {
    let c = FluxConfig::new(ListenOptions::default()).with_api_key(ApiKey::new("dg_live_abc123"));
    assert!(!format!("{c:?}").contains("dg_live_abc123"));
}

// ---- Hostile, silent and broken servers -------------------------------------------------

/// A connector whose first connection is handed to the test and whose later attempts hang
/// until `release` says otherwise.
struct HangsOnReconnect {
    first: std::sync::Mutex<Option<Connection>>,
    attempts: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl Connector for HangsOnReconnect {
    async fn connect(&self, _: &ConnectRequest) -> Result<Connection, ConnectError> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let first = self.first.lock().unwrap().take();
        match first {
            Some(c) => Ok(c),
            None => std::future::pending().await,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_reconnect_never_blocks_audio_or_close() {
    let (client, mut server) = channel_pair(256, None);
    send_json(
        &mut server,
        r#"{"type":"Connected","request_id":"r","sequence_id":0}"#.into(),
    )
    .await;
    let connector = Arc::new(HangsOnReconnect {
        first: std::sync::Mutex::new(Some(client)),
        attempts: Default::default(),
    });
    let (handle, mut events) = connect(
        config("ws://x", ListenOptions::default()),
        connector.clone(),
    )
    .await
    .unwrap();
    events.recv().await.unwrap().unwrap();
    drop(server);
    let reconnecting = events.recv().await.unwrap().unwrap();
    assert!(matches!(
        reconnecting.kind,
        FluxEventKind::Reconnecting { .. }
    ));
    // Wait until the reconnect attempt is in flight (and hanging).
    while connector.attempts.load(Ordering::Relaxed) < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 20 s of audio in 80 ms pieces, far more than any queue holds: all accepted at once.
    let started = tokio::time::Instant::now();
    for _ in 0..250 {
        tokio::time::timeout(
            Duration::from_millis(10),
            handle.send_audio(pcm(0.08, SPEECH)),
        )
        .await
        .expect("audio is accepted while reconnecting")
        .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_millis(10),
        "{:?}",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_millis(10), handle.close())
        .await
        .expect("close returns at once while a reconnect hangs")
        .unwrap();
    assert!(events.recv().await.is_none(), "the stream ends after close");
}

#[tokio::test(start_paused = true)]
async fn a_server_that_goes_quiet_is_replaced_within_a_second_and_a_half() {
    let (handle, mut events, _, mut first, mut ends) =
        connected(config("ws://x", ListenOptions::default())).await;
    let feeder = tokio::spawn(async move {
        for _ in 0..100 {
            if handle.send_audio(pcm(0.08, SPEECH)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        handle
    });
    // The server answers every 240 ms of audio for two seconds, then reads but says nothing.
    let mut frames = 0u32;
    let mut last_answer = tokio::time::Instant::now();
    while frames < 25 {
        if let Some(Ok(WireFrame::Binary(_))) = first.stream.next().await {
            frames += 1;
            if frames.is_multiple_of(3) {
                let end = f64::from(frames) * 0.08;
                send_json(
                    &mut first,
                    turn_info("Update", 0, end, "", u64::from(frames)),
                )
                .await;
                last_answer = tokio::time::Instant::now();
            }
        }
    }
    let drain = tokio::spawn(async move { while first.stream.next().await.is_some() {} });
    let reconnecting = loop {
        let event = events.recv().await.unwrap().unwrap();
        if let FluxEventKind::Reconnecting { reason } = event.kind {
            break (event.received_at, reason);
        }
    };
    let noticed_after = reconnecting.0 - last_answer;
    assert!(
        noticed_after <= Duration::from_millis(1600),
        "noticed after {noticed_after:?}"
    );
    assert!(
        noticed_after >= Duration::from_millis(1400),
        "not before the timeout: {noticed_after:?}"
    );
    assert!(
        reconnecting.1.contains("no message from the server"),
        "{}",
        reconnecting.1
    );
    let (_, mut second) = ends.recv().await.expect("a new connection is attempted");
    send_json(
        &mut second,
        r#"{"type":"Connected","request_id":"r2","sequence_id":0}"#.into(),
    )
    .await;
    drop(feeder);
    drain.abort();
}

/// Accepts every connection, says `Connected`, and closes at once.
struct AcceptsThenCloses {
    connects: std::sync::Mutex<Vec<tokio::time::Instant>>,
}

#[async_trait]
impl Connector for AcceptsThenCloses {
    async fn connect(&self, _: &ConnectRequest) -> Result<Connection, ConnectError> {
        self.connects
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        let (client, mut server) = channel_pair(16, None);
        tokio::spawn(async move {
            send_json(
                &mut server,
                r#"{"type":"Connected","request_id":"r","sequence_id":0}"#.into(),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            let _ = server
                .sink
                .send(WireFrame::Close(Some((1011, "going away".into()))))
                .await;
        });
        Ok(client)
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_that_accepts_and_closes_is_not_retried_forever() {
    let connector = Arc::new(AcceptsThenCloses {
        connects: Default::default(),
    });
    let (_handle, mut events) = connect(
        config("ws://x", ListenOptions::default()),
        connector.clone(),
    )
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(120), async {
        let mut last = None;
        while let Some(e) = events.recv().await {
            last = Some(e);
        }
        last
    })
    .await
    .expect("the client gives up");
    let Some(Err(error @ FluxError::ReconnectFailed { .. })) = ended else {
        panic!("{ended:?}")
    };
    let message = error.to_string();
    assert!(message.contains("1011 going away"), "{message}");
    assert!(message.contains("past the 30s budget"), "{message}");
    // Connections that die at once do not end the outage: the budget runs from the first loss.
    let connects = connector.connects.lock().unwrap().clone();
    assert!(connects[connects.len() - 1] - connects[1] <= Duration::from_secs(30));
    let gaps: Vec<u128> = connects
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    // Each delay is drawn below a ceiling that doubles (100 ms, 200 ms, ... 5 s), plus the
    // few milliseconds each connection lives.
    for (i, gap) in gaps.iter().enumerate() {
        let ceiling = (100u128 << i.min(16)).min(5000);
        assert!(
            *gap <= ceiling + 10,
            "gap {i}: {gap} ms over {ceiling}: {gaps:?}"
        );
    }
    assert!(
        gaps.iter().any(|g| g % 80 != 0),
        "attempts start when drawn, not on the 80 ms tick: {gaps:?}"
    );
    // Drawn below ceilings of 200-800 ms, the early gaps sum to at most 1.4 s; eight late ones,
    // drawn below 5 s, fall under that together about once in a billion runs.
    assert!(gaps.len() >= 12, "{gaps:?}");
    let early: u128 = gaps[1..4].iter().sum();
    let late: u128 = gaps[gaps.len() - 8..].iter().sum();
    assert!(
        late > early,
        "the delays grow across quick failures: {gaps:?}"
    );
}

/// Sends `messages` on a fresh connection after 3 s of audio and collects the turn events
/// the consumer sees (not Updates) as "Event:transcript@end".
async fn consumer_view(messages: &[String]) -> (Vec<String>, u64) {
    let (handle, mut events, _, mut server, _ends) =
        connected(config("ws://x", ListenOptions::default())).await;
    handle.send_audio(pcm(3.0, SPEECH)).await.unwrap();
    for _ in 0..37 {
        server.stream.next().await.unwrap().unwrap();
    }
    for m in messages {
        send_json(&mut server, m.clone()).await;
    }
    drop(server);
    let mut seen = Vec::new();
    while let Some(Ok(e)) = events.recv().await {
        match e.kind {
            FluxEventKind::Turn(t) if t.info.event != TurnEvent::Update => seen.push(format!(
                "{}:{}@{:.2}#{}",
                t.info.event, t.info.transcript, t.info.audio_window_end, t.info.turn_index
            )),
            FluxEventKind::Reconnecting { .. } => break,
            _ => {}
        }
    }
    let repaired = handle.stats().repaired_messages.load(Ordering::Relaxed);
    (seen, repaired)
}

#[tokio::test(start_paused = true)]
async fn one_absurd_time_does_not_deafen_the_client() {
    for absurd in [
        "1e300",
        "\"Infinity\"",
        "-2.5",
        "\"-Infinity\"",
        "Infinity",
        "NaN",
    ] {
        let poisoned = turn_info("Update", 0, 1.0, "book a", 3).replace(
            "\"audio_window_end\":1",
            &format!("\"audio_window_end\":{absurd}"),
        );
        let (seen, repaired) = consumer_view(&[
            turn_info("StartOfTurn", 0, 0.72, "book", 2),
            poisoned,
            turn_info("EndOfTurn", 0, 1.44, "book a table", 4),
            turn_info("StartOfTurn", 1, 2.4, "thanks", 5),
            turn_info("EndOfTurn", 1, 2.88, "thanks", 6),
        ])
        .await;
        assert_eq!(
            seen,
            [
                "StartOfTurn:book@0.72#0",
                "EndOfTurn:book a table@1.44#0",
                "StartOfTurn:thanks@2.40#1",
                "EndOfTurn:thanks@2.88#1"
            ],
            "after audio_window_end {absurd}"
        );
        assert_eq!(repaired, 1, "{absurd}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_restarted_server_clock_keeps_every_turn() {
    let (seen, repaired) = consumer_view(&[
        turn_info("StartOfTurn", 0, 1.68, "one", 2),
        turn_info("EndOfTurn", 0, 1.92, "one two", 3),
        turn_info("Update", 1, 0.24, "", 4),
        turn_info("StartOfTurn", 1, 0.48, "three", 5),
        turn_info("EndOfTurn", 1, 0.72, "three four", 6),
    ])
    .await;
    assert_eq!(
        seen,
        [
            "StartOfTurn:one@1.68#0",
            "EndOfTurn:one two@1.92#0",
            "StartOfTurn:three@2.16#1",
            "EndOfTurn:three four@2.40#1"
        ]
    );
    assert_eq!(repaired, 1);
}

#[tokio::test(start_paused = true)]
async fn fields_the_engine_does_not_need_cannot_lose_a_turn() {
    let deep = format!("{}1{}", "{\"x\":[".repeat(150), "]}".repeat(150));
    let (seen, repaired) = consumer_view(&[
        turn_info("StartOfTurn", 0, 0.48, "book", 1)
            .replace("\"turn_index\":0", "\"turn_index\":0.5"),
        turn_info("Update", 0, 0.72, "book a", 2).replace("\"turn_index\":0", "\"turn_index\":-1"),
        turn_info("EndOfTurn", 0, 0.96, "book a table", 3)
            .replace(
                "\"end_of_turn_confidence\":0.5",
                "\"end_of_turn_confidence\":NaN",
            )
            .replace(
                "\"type\":\"TurnInfo\"",
                &format!("\"type\":\"TurnInfo\",\"debug\":{deep}"),
            ),
        turn_info("StartOfTurn", 1, 1.44, "yes", 4)
            .replace("\"sequence_id\":4", "\"sequence_id\":\"four\""),
    ])
    .await;
    assert_eq!(
        seen,
        [
            "StartOfTurn:book@0.48#0",
            "EndOfTurn:book a table@0.96#0",
            "StartOfTurn:yes@1.44#1"
        ]
    );
    assert_eq!(repaired, 4, "each repair is counted");
}

#[tokio::test(start_paused = true)]
async fn a_repeated_end_of_turn_reaches_the_consumer_once() {
    let (seen, repaired) = consumer_view(&[
        turn_info("StartOfTurn", 0, 0.48, "book it", 1),
        turn_info("EndOfTurn", 0, 0.72, "book it", 2),
        turn_info("EndOfTurn", 0, 0.96, "Book it.", 3),
        turn_info("StartOfTurn", 1, 1.2, "and", 4),
    ])
    .await;
    assert_eq!(
        seen,
        [
            "StartOfTurn:book it@0.48#0",
            "EndOfTurn:book it@0.72#0",
            "StartOfTurn:and@1.20#1"
        ]
    );
    assert_eq!(repaired, 1);
}

#[tokio::test]
async fn a_key_never_travels_unencrypted_to_another_machine() {
    struct Unreachable;
    #[async_trait]
    impl Connector for Unreachable {
        async fn connect(&self, _: &ConnectRequest) -> Result<Connection, ConnectError> {
            panic!("no I/O may happen")
        }
    }
    let keyed =
        |url: &str| config(url, ListenOptions::default()).with_api_key(ApiKey::new("dg_secret"));
    for url in [
        "ws://flux.example.com",
        "http://10.1.2.3:8080",
        "ws://127.evil.example",
    ] {
        let Err(e) = connect(keyed(url), Arc::new(Unreachable)).await else {
            panic!("{url} accepted")
        };
        assert!(
            matches!(e, FluxError::InsecureTransport { .. }),
            "{url}: {e}"
        );
        assert!(e.to_string().contains("wss://"), "{e}");
        assert!(!e.to_string().contains("dg_secret"));
    }
    let Err(e) = connect(
        keyed("wss://proxy.example/v2/listen?model=nova-3"),
        Arc::new(Unreachable),
    )
    .await
    else {
        panic!("a query setting a listen option is refused")
    };
    assert!(e.to_string().contains("sets model"), "{e}");
    let mut allowed = keyed("ws://flux.internal:8080");
    allowed.allow_insecure = true;
    assert!(allowed.check_base_url().is_ok());
    assert!(keyed("ws://127.0.0.1:9").check_base_url().is_ok());
    assert!(
        config("ws://flux.example.com", ListenOptions::default())
            .check_base_url()
            .is_ok(),
        "no key, nothing to leak"
    );
}

#[tokio::test]
async fn a_query_string_in_the_flux_url_is_kept() {
    let (connector, mut ends) = scripted();
    let attempt = tokio::spawn(connect(
        config(
            "wss://proxy.example/v2/listen?tenant=a&region=eu",
            ListenOptions::default(),
        ),
        connector,
    ));
    let (url, mut server) = ends.recv().await.unwrap();
    assert_eq!(
        url,
        "wss://proxy.example/v2/listen?tenant=a&region=eu&model=flux-general-en&encoding=linear16&sample_rate=16000"
    );
    send_json(
        &mut server,
        r#"{"type":"Connected","request_id":"r1","sequence_id":0}"#.into(),
    )
    .await;
    attempt.await.unwrap().unwrap();
}
