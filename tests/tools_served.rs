//! `turnflow serve --config` with an MCP server and a webhook tool, the real binaries end to
//! end: the example MCP server (`examples/mcp_restaurant.rs`) started by `serve` over stdio,
//! a loopback HTTP backend behind the webhook, and a caller from `turnflow load` who asks for
//! a table, then books it. Each effect must happen exactly once and be counted.

#[path = "support/http.rs"]
mod http;
#[path = "support/process.rs"]
mod support;

use std::process::{Command, Stdio};

fn example_server() -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("mcp_restaurant");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples",
        path.display()
    );
    path
}

fn metrics(url: &str) -> String {
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_call_looks_up_books_and_confirms_through_mcp_and_a_webhook() {
    let dir = std::env::temp_dir().join(format!("turnflow-tools-served-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (backend, requests) =
        http::recorder(|_| Some(("200 OK", r#"{"sent":true}"#.to_owned()))).await;
    let bookings = dir.join("bookings.jsonl");
    let settings = dir.join("turnflow.toml");
    std::fs::write(
        &settings,
        format!(
            r#"
[tools]
demo = false

[[tools.mcp]]
name = "restaurant"
command = "{server}"
args = ["--bookings-log", "{bookings}"]
trusted = true

[[tools.webhook]]
name = "send_confirmation"
description = "Texts the caller their booking"
url = "{backend}/confirm"
effect = "side_effecting"
parameters = {{ type = "object", properties = {{ name = {{ type = "string" }} }}, required = ["name"] }}
"#,
            server = example_server().display(),
            bookings = bookings.display(),
        ),
    )
    .unwrap();
    let scenario = dir.join("scenario.json");
    std::fs::write(
        &scenario,
        r#"{"name":"served-tools","turns":[
  {"say":"I'd like a table for four people at seven.",
   "calls":[{"tool":"check_availability","arguments":{"people":4,"time":"19:00"}}],
   "reply":"A table for four at seven is free. Can I have your name?"},
  {"say":"It's Jordan.",
   "calls":[{"tool":"book_table","arguments":{"name":"Jordan","people":4,"time":"19:00"}},
            {"tool":"send_confirmation","arguments":{"name":"Jordan"}}],
   "reply":"Thanks Jordan, your table is booked and the confirmation is on its way."}]}"#,
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let (mut server, line) = support::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            settings.to_str().unwrap(),
            "--scenario",
            scenario.to_str().unwrap(),
            "--record",
            dir.join("recordings").to_str().unwrap(),
        ],
        &[],
        log.into(),
    );
    let url = support::address(&line, "http://");
    let caller = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_turnflow"))
                .args(["load", &url, "--wav", "tests/fixtures/book_table_16k.wav"])
                .args(["--sessions", "1", "--turns", "2", "--json"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stderr(Stdio::null())
                .output()
                .unwrap()
        })
    };
    let out = caller.await.unwrap();
    let text = metrics(&url);
    let _ = server.kill();
    let _ = server.wait();
    let server_log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{server_log}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(summary["failed_sessions"], 0, "{summary}\n{server_log}");
    assert_eq!(
        summary["response_latency_ms"]["count"], 2,
        "both turns answered: {summary}\n{server_log}"
    );

    assert_eq!(
        std::fs::read_to_string(&bookings)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        [r#"{"name":"Jordan","people":4,"time":"19:00"}"#],
        "the MCP server booked once"
    );
    let confirmations = requests.lock().unwrap().clone();
    assert_eq!(confirmations.len(), 1, "{confirmations:?}");
    assert!(confirmations[0].0.starts_with("POST /confirm HTTP/1.1"));
    assert_eq!(confirmations[0].1, r#"{"name":"Jordan"}"#);
    for tool in ["check_availability", "book_table", "send_confirmation"] {
        let counted = format!("turnflow_tool_calls_total{{tool=\"{tool}\",outcome=\"ok\"}} 1");
        assert!(text.contains(&counted), "{counted} in\n{text}");
    }
    let recorded: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("recordings"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(recorded.len(), 1);
    let tools = std::fs::read_to_string(recorded[0].join("tools.jsonl")).unwrap();
    let called: Vec<String> = tools
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["tool"].to_string())
        .collect();
    assert_eq!(
        called,
        [
            "\"check_availability\"",
            "\"book_table\"",
            "\"send_confirmation\""
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
