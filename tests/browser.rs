//! The page at `/` in a real browser: headless Chromium (Debian `chromium`) with a fake
//! microphone playing a speech WAV, driven over the DevTools protocol. The page must show the
//! user's turn and the agent's reply with the table lookup it made through the example MCP
//! server, and play the agent's audio. `.ci/run` installs chromium
//! and sets `TURNFLOW_REQUIRE_CHROMIUM`, so CI never skips this. A screenshot of the page is
//! left in `target/serve-page.png`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use turnflow::emulator::{EmulatorConfig, MemoryEmulator, TurnDetection};
use turnflow::engine::Backends;
use turnflow::flux::{Encoding, FluxConfig, ListenOptions, Thresholds};
use turnflow::llm::ScriptedLlm;
use turnflow::scenario::Scenario;
use turnflow::server::{Server, ServerConfig};
use turnflow::tools::mcp::{McpServer, McpServerConfig, McpTransport};
use turnflow::tts::SyntheticTts;

#[path = "support/example.rs"]
mod support;

const PATIENCE: Duration = Duration::from_secs(60);

type Page =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Chromium with a fake microphone; returns the process and its DevTools address.
fn chromium(url: &str, wav: &std::path::Path, profile: &std::path::Path) -> (Child, String) {
    let mut child = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            "--remote-debugging-port=0",
            "--window-size=900,900",
        ])
        .arg(format!(
            "--use-file-for-fake-audio-capture={}%noloop",
            wav.display()
        ))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium runs");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let devtools = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "chromium exited before DevTools listened"
        );
        if let Some(rest) = line.trim().strip_prefix("DevTools listening on ") {
            break rest.to_owned();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, devtools)
}

/// One DevTools call on the page's socket: its result (events in between are skipped).
async fn cdp(page: &mut Page, id: u64, method: &str, params: Value) -> Value {
    let request = json!({"id": id, "method": method, "params": params});
    page.send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    loop {
        let message = tokio::time::timeout(PATIENCE, page.next())
            .await
            .expect("DevTools answers")
            .expect("DevTools socket open")
            .unwrap();
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
        }
    }
}

async fn evaluate(page: &mut Page, id: u64, expression: &str) -> Value {
    let result = cdp(
        page,
        id,
        "Runtime.evaluate",
        json!({"expression": expression, "returnByValue": true, "awaitPromise": true, "userGesture": true}),
    )
    .await;
    assert!(
        result.get("exceptionDetails").is_none(),
        "{expression}: {result}"
    );
    result["result"]["value"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_talks_to_the_agent_in_a_real_browser() {
    if Command::new("chromium").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("TURNFLOW_REQUIRE_CHROMIUM").is_none(),
            "chromium is required here"
        );
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

    let profile = std::env::temp_dir().join(format!("turnflow-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let (mut browser, devtools) = chromium(
        &format!("http://{addr}/"),
        &root.join("tests/fixtures/book_table_16k.wav"),
        &profile,
    );
    let port = devtools
        .trim_start_matches("ws://")
        .split(['/', ':'])
        .nth(1)
        .unwrap()
        .to_owned();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let page_socket = loop {
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets.as_array().unwrap().iter().find(|t| {
            t["type"] == "page"
                && t["url"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&addr.to_string())
        });
        if let Some(page) = page {
            break page["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "the page opens");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut page, _) = tokio_tungstenite::connect_async(page_socket).await.unwrap();
    let mut id = 0;
    let mut next = || {
        id += 1;
        id
    };
    // The page has loaded when its button exists.
    loop {
        let loaded = evaluate(&mut page, next(), "!!document.getElementById('talk')").await;
        if loaded == true {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the page loads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    evaluate(
        &mut page,
        next(),
        "document.getElementById('talk').click(); true",
    )
    .await;

    // The fake microphone says the WAV once; the agent answers it.
    let state = loop {
        let state = evaluate(
            &mut page,
            next(),
            "({userFinals: turnflow.userFinals, agentReplies: turnflow.agentReplies, \
              turns: turnflow.turns, received: turnflow.agentSamplesReceived, \
              played: turnflow.agentSamplesPlayed, status: document.getElementById('status').textContent})",
        )
        .await;
        if state["agentReplies"].as_u64() >= Some(1) && state["turns"].as_u64() >= Some(1) {
            break state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent answers in the page: {state}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(state["userFinals"].as_u64() >= Some(1), "{state}");
    assert!(
        state["played"].as_u64() > Some(8000),
        "the page played agent audio: {state}"
    );
    let shown = evaluate(
        &mut page,
        next(),
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
    let tools = evaluate(
        &mut page,
        next(),
        "[...document.querySelectorAll('.turn.agent .tag')].map(t => t.textContent)",
    )
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
    let shot = cdp(
        &mut page,
        next(),
        "Page.captureScreenshot",
        json!({"format": "png"}),
    )
    .await;
    let png = base64_decode(shot["data"].as_str().unwrap());
    std::fs::write(root.join("target/serve-page.png"), png).unwrap();

    // The page's socket counts as a completed or closed session once the browser goes.
    let _ = browser.kill();
    let _ = browser.wait();
    let _ = std::fs::remove_dir_all(&profile);
    let _ = stop.send(());
    tokio::time::timeout(PATIENCE, served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(metrics.active(), 0);
    restaurant.close().await;
}

/// Standard base64 (the screenshot), without a dependency for one test.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (u32::from(value(*c)) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
