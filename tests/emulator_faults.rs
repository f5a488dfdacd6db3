//! The emulator's faults on demand, seen through our own Flux client: each fault is what a
//! broken or hostile server does, and the client rides through it (or fails with a reason).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use turnflow::emulator::{EmulatorConfig, EmulatorServer, MemoryEmulator};
use turnflow::flux::client::{ClientStats, FluxEventKind};
use turnflow::flux::{
    Connector, FluxConfig, FluxError, ListenOptions, TurnEvent, WebSocketConnector, connect,
};
use turnflow::scenario::FaultSpec;
use turnflow::scenario::Scenario;
use turnflow::ws::ConnectError;

const PLAIN: &str = r#"{"name":"plain","listen":{"eot_threshold":0.7},"turns":[
    {"start":{"at_ms":500},"say":"What time do you open tomorrow?"}]}"#;

/// What a consumer saw: turn events (not Updates) and reconnect reasons, in order.
struct Seen {
    events: Vec<String>,
    stats: Arc<ClientStats>,
}

/// Connects through `connector`, feeds audio in real time until the turn has ended (at most
/// eight seconds), and collects.
async fn run_against(base_url: &str, connector: Arc<dyn Connector>) -> Seen {
    let config = FluxConfig::new(ListenOptions::default()).with_base_url(base_url);
    let (flux, mut events) = connect(config, connector).await.unwrap();
    let stats = flux.stats();
    let (ended_tx, ended) = tokio::sync::watch::channel(false);
    let feeder = tokio::spawn(async move {
        for _ in 0..100 {
            if *ended.borrow() || flux.send_audio(vec![0u8; 2560]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        flux.close().await.unwrap();
    });
    let mut seen = Vec::new();
    while let Some(event) = events.recv().await {
        match event.map(|e| e.kind) {
            Ok(FluxEventKind::Turn(t)) if t.info.event != TurnEvent::Update => {
                if t.info.event == TurnEvent::EndOfTurn {
                    let _ = ended_tx.send(true);
                }
                seen.push(format!("{}:{}", t.info.event, t.info.transcript))
            }
            Ok(FluxEventKind::Reconnecting { reason }) => {
                seen.push(format!("reconnecting: {reason}"))
            }
            Ok(_) => {}
            Err(e) => seen.push(format!("error: {e}")),
        }
    }
    feeder.await.unwrap();
    Seen {
        events: seen,
        stats,
    }
}

fn emulator(faults: &[&str]) -> MemoryEmulator {
    let mut config = EmulatorConfig::new(Arc::new(Scenario::parse(PLAIN, "plain").unwrap()));
    config.faults = faults
        .iter()
        .map(|f| FaultSpec::parse(f).unwrap())
        .collect();
    MemoryEmulator::new(config)
}

fn ends_with_the_whole_turn(seen: &Seen) {
    assert_eq!(
        seen.events.last().map(String::as_str),
        Some("EndOfTurn:What time do you open tomorrow?"),
        "{:?}",
        seen.events
    );
    let ends = seen
        .events
        .iter()
        .filter(|e| e.starts_with("EndOfTurn"))
        .count();
    assert_eq!(ends, 1, "{:?}", seen.events);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_connection_is_replaced_and_the_turn_survives() {
    let server = emulator(&["stall@1200"]);
    let seen = run_against("ws://emulator", Arc::new(server.clone())).await;
    assert!(
        seen.events
            .iter()
            .any(|e| e.starts_with("reconnecting: no message from the server")),
        "{:?}",
        seen.events
    );
    ends_with_the_whole_turn(&seen);
    assert_eq!(seen.stats.reconnects.load(Ordering::Relaxed), 1);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_close_with_a_code_is_reconnected_and_the_code_is_reported() {
    let server = emulator(&["close=1011@1200"]);
    let seen = run_against("ws://emulator", Arc::new(server.clone())).await;
    assert!(
        seen.events
            .iter()
            .any(|e| e.contains("server closed the connection (1011 emulated fault)")),
        "{:?}",
        seen.events
    );
    ends_with_the_whole_turn(&seen);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_clock_jump_and_duplicates_are_repaired() {
    for fault in [
        "clock_jump=-5000@1500",
        "clock_jump=3600000@1500",
        "duplicate",
    ] {
        let server = emulator(&[fault]);
        let seen = run_against("ws://emulator", Arc::new(server.clone())).await;
        ends_with_the_whole_turn(&seen);
        assert!(
            seen.stats.repaired_messages.load(Ordering::Relaxed) > 0,
            "{fault}: the client noticed"
        );
        server.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_handshake_names_the_status() {
    let server = emulator(&["refuse=503/all"]);
    let config = FluxConfig::new(ListenOptions::default()).with_base_url("ws://emulator");
    let Err(FluxError::Connect(ConnectError::Handshake { status, body, .. })) =
        connect(config, Arc::new(server.clone())).await
    else {
        panic!("the handshake was refused")
    };
    assert_eq!(status, 503);
    assert!(body.contains("EMULATED_FAULT"), "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_dropped_socket_on_a_real_connection_is_reconnected() {
    let mut config = EmulatorConfig::new(Arc::new(Scenario::parse(PLAIN, "plain").unwrap()));
    config.faults = vec![FaultSpec::parse("drop@1200").unwrap()];
    let server = EmulatorServer::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let seen = run_against(&server.base_url(), Arc::new(WebSocketConnector)).await;
    assert!(
        seen.events.iter().any(|e| e.starts_with("reconnecting:")),
        "{:?}",
        seen.events
    );
    ends_with_the_whole_turn(&seen);
    server.shutdown().await;
}

#[test]
fn scenario_faults_are_checked_with_their_field() {
    let e = Scenario::parse(
        r#"{"name":"f","turns":[{"say":"hi"}],"faults":[{"kind":"close","at_ms":100}]}"#,
        "f.json",
    )
    .unwrap_err();
    assert_eq!(e.field, "faults[0].code");
    assert!(e.reason.contains("needs a code"), "{}", e.reason);
    let e = Scenario::parse(
        r#"{"name":"f","turns":[{"say":"hi"}],"faults":[{"kind":"melt"}]}"#,
        "f.json",
    )
    .unwrap_err();
    assert!(e.field.starts_with("faults[0]"), "{}", e.field);
    let ok = Scenario::parse(
        r#"{"name":"f","turns":[{"say":"hi"}],"faults":[{"kind":"stall","at_ms":2000,"connection":"all"}]}"#,
        "f.json",
    )
    .unwrap();
    assert_eq!(ok.faults.len(), 1);
}
