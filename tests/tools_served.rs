//! `turnflow serve --config` with an MCP server and a webhook tool, the real binaries end to
//! end: the example MCP server (`examples/mcp_restaurant.rs`) started by `serve` over stdio,
//! a loopback HTTP backend behind the webhook, and a caller from `turnflow load` who asks for
//! a table, then books it. Each effect must happen exactly once and be counted. And
//! `simulate --config` with the same server, whose report shows the lookup made on the guess.

#[path = "support/example.rs"]
mod example;
#[path = "support/http.rs"]
mod http;
#[path = "support/scrape.rs"]
mod scrape;
#[path = "support/process.rs"]
mod support;

use std::process::{Command, Stdio};

fn example_server() -> std::path::PathBuf {
    example::example("mcp_restaurant")
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
    let text = scrape::metrics(&url);
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

/// `simulate --config`: the demo's tools from the example MCP server instead of from memory;
/// the report and the timeline show the lookup made during the guess and the booking that
/// waited for `EndOfTurn`.
#[test]
fn simulate_takes_its_tools_from_an_mcp_server_in_the_settings() {
    let dir = std::env::temp_dir().join(format!("turnflow-simulate-mcp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bookings = dir.join("bookings.jsonl");
    let settings = dir.join("turnflow.toml");
    std::fs::write(
        &settings,
        format!(
            "[tools]\ndemo = false\n\n[[tools.mcp]]\nname = \"restaurant\"\ncommand = \"{}\"\nargs = [\"--bookings-log\", \"{}\"]\ntrusted = true\n",
            example_server().display(),
            bookings.display()
        ),
    )
    .unwrap();
    let scenario = dir.join("scenario.json");
    std::fs::write(
        &scenario,
        r#"{"name":"mcp","llm":{"ttft_ms":350,"token_interval_ms":20},
  "listen":{"eager_eot_threshold":0.4,"eot_threshold":0.7,"eot_timeout_ms":2000},
  "turns":[
  {"start":{"at_ms":300},
   "phrases":[{"text":"A table for four at seven?","eot_confidence":0.92,"ramp_ms":1600}],
   "calls":[{"tool":"check_availability","arguments":{"people":4,"time":"19:00"}}],
   "reply":"Yes, one is free. Your name?"},
  {"start":{"after_agent_ms":400},
   "phrases":[{"text":"It's Jordan.","eot_confidence":0.9,"ramp_ms":1400}],
   "calls":[{"tool":"book_table","arguments":{"name":"Jordan","people":4,"time":"19:00"}}],
   "reply":"Booked, Jordan."}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args(["simulate", scenario.to_str().unwrap()])
        .args(["--config", settings.to_str().unwrap()])
        .args(["--out", dir.join("out").to_str().unwrap()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/report.json")).unwrap())
            .unwrap();
    let lookup = &report["turns"][0]["tool_calls"][0];
    assert_eq!(lookup["tool"], "check_availability");
    assert_eq!(lookup["speculative"], true, "{lookup}");
    assert!(lookup["start_ms"].as_f64().unwrap() < 0.0, "{lookup}");
    let booking = &report["turns"][1]["tool_calls"][0];
    assert_eq!(booking["tool"], "book_table");
    assert_eq!(booking["speculative"], false, "{booking}");
    assert!(booking["start_ms"].as_f64().unwrap() >= 0.0, "{booking}");
    assert!(
        report["turns"][0]["breakdown"]["tool_ms"].as_f64().unwrap() > 250.0,
        "the lookup is the breakdown's tool part: {}",
        report["turns"][0]["breakdown"]
    );
    let timeline = std::fs::read_to_string(dir.join("out/timeline.svg")).unwrap();
    assert!(timeline.contains("check_availability") && timeline.contains("book_table"));
    assert_eq!(
        std::fs::read_to_string(&bookings).unwrap().lines().count(),
        1
    );

    // The paused clock cannot wait for a process that runs in real time.
    let out = Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args(["simulate", "--clock", "virtual"])
        .args(["--config", settings.to_str().unwrap()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "--clock virtual cannot wait for an MCP server or a webhook, which answer in real time"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
