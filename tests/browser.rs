//! The page at `/` in a real browser: headless Chromium (Debian `chromium`) with a fake
//! microphone playing a speech WAV, driven over the DevTools protocol. The page must show the
//! user's turn and the agent's reply with the table lookup it made through the example MCP
//! server, and play the agent's audio. This server has no WebRTC, so the page says it uses the
//! WebSocket and why (the WebRTC page is tested in `tests/webrtc.rs`). A screenshot of the
//! page is left in `target/serve-page.png`.

use std::sync::Arc;

use serde_json::Value;
use turnflow::emulator::{EmulatorConfig, MemoryEmulator, TurnDetection};
use turnflow::engine::Backends;
use turnflow::flux::{Encoding, FluxConfig, ListenOptions, Thresholds};
use turnflow::llm::ScriptedLlm;
use turnflow::scenario::Scenario;
use turnflow::server::{Server, ServerConfig};
use turnflow::tools::mcp::{McpServer, McpServerConfig, McpTransport};
use turnflow::tts::SyntheticTts;

#[path = "support/chromium.rs"]
mod chromium;
#[path = "support/example.rs"]
mod support;

use chromium::{Browser, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_talks_to_the_agent_in_a_real_browser() {
    if !chromium::available() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The demo, its first reply looking a table up through the example MCP server.
    let mut demo = Scenario::demo();
    demo.turns[0].calls = demo.turns[1].calls.clone();
    let scenario = Arc::new(demo);
    let mut restaurant = McpServerConfig::new(
        "restaurant",
        McpTransport::Stdio {
            command: support::example("mcp_restaurant").display().to_string(),
            args: Vec::new(),
            env: Vec::new(),
        },
    );
    restaurant.trusted = true;
    let restaurant = Arc::new(McpServer::start(restaurant).await.unwrap());
    let mut emulator = EmulatorConfig::new(scenario.clone());
    emulator.turn_detection = TurnDetection::Vad;
    let config = ServerConfig::new(
        FluxConfig::new(
            ListenOptions::raw(Encoding::Linear16, 16000).with_thresholds(Thresholds {
                eager_eot_threshold: Some(0.5),
                ..Thresholds::default()
            }),
        )
        .with_base_url("ws://emulator.invalid"),
        Arc::new(MemoryEmulator::new(emulator)),
        Backends {
            llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
            tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
            tools: Some(restaurant.clone()),
        },
    );
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let addr = server.local_addr();
    let metrics = server.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));

    let url = format!("http://{addr}/");
    let mut browser =
        Browser::open(&url, &root.join("tests/fixtures/book_table_16k.wav"), &[]).await;
    browser
        .evaluate("document.getElementById('talk').click(); true")
        .await;

    // The fake microphone says the WAV once; the agent answers it.
    let state = browser
        .wait_for(
            "({userFinals: turnflow.userFinals, agentReplies: turnflow.agentReplies, \
              turns: turnflow.turns, received: turnflow.agentSamplesReceived, \
              played: turnflow.agentSamplesPlayed, transport: turnflow.transport, \
              fallback: turnflow.fallback, \
              status: document.getElementById('status').textContent})",
            |state| state["agentReplies"].as_u64() >= Some(1) && state["turns"].as_u64() >= Some(1),
        )
        .await;
    // Without WebRTC on the server the page says so and talks over the WebSocket.
    assert_eq!(state["transport"], "websocket", "{state}");
    assert!(
        state["fallback"]
            .as_str()
            .is_some_and(|why| why.contains("no WebRTC here (404)")),
        "{state}"
    );
    assert_eq!(state["status"], "listening (WebSocket)", "{state}");
    assert!(state["userFinals"].as_u64() >= Some(1), "{state}");
    assert!(
        state["played"].as_u64() > Some(8000),
        "the page played agent audio: {state}"
    );
    let shown = browser
        .evaluate(
            "({user: document.querySelector('.turn.user .text').textContent, \
          agent: document.querySelector('.turn.agent .text').textContent, \
          latency: [...document.querySelectorAll('.turn.user .tag')].map(t => t.textContent)})",
        )
        .await;
    assert!(
        !shown["user"].as_str().unwrap().is_empty(),
        "the user's turn is shown: {shown}"
    );
    assert!(
        !shown["agent"].as_str().unwrap().is_empty(),
        "the agent's reply is shown: {shown}"
    );
    assert!(
        shown["latency"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().starts_with("reply in ")),
        "the turn's latency is shown: {shown}"
    );
    // As `turnflow serve` does by default, eager mode is on: the reply was a promoted
    // speculation, and the page says so with its lead.
    assert!(
        shown["latency"].as_array().unwrap().iter().any(|t| {
            let t = t.as_str().unwrap();
            t.starts_with("speculation: hit, ") && t.ends_with(" ms ahead")
        }),
        "the speculation is shown: {shown}"
    );
    // The reply's lookup, made by the MCP server, is tagged on the agent's turn.
    let tools = browser
        .evaluate("[...document.querySelectorAll('.turn.agent .tag')].map(t => t.textContent)")
        .await;
    let tags: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tags.iter().any(|t| t.starts_with("→ check_availability")),
        "the call is shown: {tags:?}"
    );
    assert!(
        tags.iter()
            .any(|t| t.starts_with("check_availability: ok in ")),
        "its result is shown: {tags:?}"
    );
    let png = browser.screenshot().await;
    std::fs::write(root.join("target/serve-page.png"), png).unwrap();

    // The page's socket counts as a completed or closed session once the browser goes.
    drop(browser);
    let _ = stop.send(());
    tokio::time::timeout(PATIENCE, served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(metrics.active(), 0);
    restaurant.close().await;
}
