//! Traces (feature `otel`): an OTLP/HTTP receiver in the test, on a loopback port, reads what
//! turnflow sends for a simulated call, and for calls of the real binaries (`simulate` and
//! `serve` with `load`) configured only by the standard `OTEL_*` variables.

#[path = "support/http.rs"]
mod http;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use turnflow::report::otlp::{OtlpConfig, TraceExporter};
use turnflow::report::trace::CallInfo;
use turnflow::scenario::Scenario;
use turnflow::sim::{SimulationConfig, Transport};

/// An OTLP/HTTP collector's traces endpoint: every request it received.
struct Receiver {
    url: String,
    requests: http::Requests,
}

impl Receiver {
    async fn start() -> Self {
        let (url, requests) = http::recorder(|_| Some(("200 OK", "{}".to_owned()))).await;
        Receiver { url, requests }
    }

    /// Every request's head and body, the body parsed.
    fn bodies(&self) -> Vec<(String, Value)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(head, body)| {
                (
                    head.clone(),
                    serde_json::from_str(body).unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    /// Every span received, waiting up to `limit` for at least `least` of them.
    async fn spans(&self, least: usize, limit: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let spans: Vec<Value> = self
                .bodies()
                .iter()
                .flat_map(|(_, b)| {
                    b["resourceSpans"][0]["scopeSpans"][0]["spans"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            if spans.len() >= least || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn nanos(span: &Value, field: &str) -> u128 {
    span[field].as_str().unwrap().parse().unwrap()
}

/// Checks the tree: one trace, hex ids, every parent present, children inside the call.
fn check_tree(spans: &[Value]) {
    let trace = spans[0]["traceId"].as_str().unwrap();
    assert_eq!(trace.len(), 32);
    assert!(trace.chars().all(|c| c.is_ascii_hexdigit()));
    let ids: Vec<&str> = spans
        .iter()
        .map(|s| s["spanId"].as_str().unwrap())
        .collect();
    for span in spans {
        assert_eq!(span["traceId"], trace, "one trace per call");
        assert_eq!(span["spanId"].as_str().unwrap().len(), 16);
        assert!(nanos(span, "endTimeUnixNano") >= nanos(span, "startTimeUnixNano"));
        if let Some(parent) = span["parentSpanId"].as_str() {
            assert!(ids.contains(&parent), "the parent of {span} is sent");
        }
    }
}

#[test]
fn a_simulated_call_reaches_the_collector_with_its_breakdown() {
    let io = tokio::runtime::Runtime::new().unwrap();
    let receiver = io.block_on(Receiver::start());
    let config = OtlpConfig::from_vars(|name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(receiver.url.clone()),
        "OTEL_SERVICE_NAME" => Some("agents-under-test".into()),
        _ => None,
    })
    .unwrap()
    .expect("an endpoint turns tracing on");
    let (exporter, task) = TraceExporter::start_on(config, io.handle()).unwrap();

    // The simulation runs on the paused clock, as `simulate --clock virtual` does.
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let scenario = Arc::new(Scenario::load("scenarios/eager_hit.json".as_ref()).unwrap());
    let result = paused.block_on(async {
        let mut config = SimulationConfig::new(scenario);
        config.transport = Transport::Memory;
        let result = turnflow::sim::run(config).await.unwrap();
        exporter.export_call(
            result.log.clone(),
            &CallInfo {
                session: "s-1",
                outcome: "completed",
                transport: "simulation",
                llm: "scripted",
                tts: "synthetic",
            },
        );
        result
    });
    drop(exporter);
    io.block_on(task.finish(Duration::from_secs(5)));

    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 1, "one request");
    let (head, body) = &bodies[0];
    assert!(head.starts_with("POST /v1/traces "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let resource = &body["resourceSpans"][0]["resource"];
    assert_eq!(
        attribute(resource, "service.name").unwrap()["stringValue"],
        "agents-under-test"
    );
    let spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .unwrap()
        .clone();
    check_tree(&spans);

    let call = named(&spans, "turnflow.call");
    assert_eq!(call.len(), 1);
    assert!(call[0].get("parentSpanId").is_none());
    assert_eq!(
        attribute(call[0], "turnflow.session.id").unwrap()["stringValue"],
        "s-1"
    );
    let turns = named(&spans, "turnflow.turn");
    assert_eq!(turns.len(), result.report.turns.len());
    let turn = turns[0];
    let report = &result.report.turns[0];
    assert_eq!(
        attribute(turn, "turnflow.speculation").unwrap()["stringValue"],
        "hit"
    );
    let figure = |key: &str| {
        attribute(turn, key).unwrap()["doubleValue"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(
        figure("turnflow.response_latency_ms"),
        report.response_latency_ms.unwrap()
    );
    assert_eq!(
        figure("turnflow.speculation.lead_ms"),
        report.lead_ms.unwrap()
    );
    let breakdown = report.breakdown.as_ref().unwrap();
    assert_eq!(
        figure("turnflow.breakdown.llm_ttft_ms"),
        breakdown.llm_ttft_ms
    );
    assert_eq!(
        figure("turnflow.breakdown.tts_ttfb_ms"),
        breakdown.tts_ttfb_ms
    );
    assert_eq!(
        figure("turnflow.breakdown.speculation_ms"),
        breakdown.speculation_ms
    );
    // The turn's span lasts as long as it did on the simulation's clock.
    assert!(nanos(turn, "endTimeUnixNano") - nanos(turn, "startTimeUnixNano") > 1_000_000_000);

    let responses = named(&spans, "turnflow.response");
    let promoted = responses
        .iter()
        .find(|r| attribute(r, "turnflow.response.outcome").unwrap()["stringValue"] == "promoted")
        .expect("the promoted speculation");
    assert_eq!(promoted["parentSpanId"], turn["spanId"]);
    let llm = named(&spans, "turnflow.llm")
        .into_iter()
        .find(|s| s["parentSpanId"] == promoted["spanId"])
        .expect("its model request");
    assert_eq!(llm["kind"], 3, "a client span");
    assert_eq!(
        attribute(llm, "gen_ai.operation.name").unwrap()["stringValue"],
        "chat"
    );
    let ttft = attribute(llm, "turnflow.llm.ttft_ms").unwrap()["doubleValue"]
        .as_f64()
        .unwrap();
    assert!((ttft - 350.0).abs() < 1.0, "the scenario's 350 ms: {ttft}");
    let voice: Vec<_> = named(&spans, "turnflow.tts")
        .into_iter()
        .filter(|s| s["parentSpanId"] == promoted["spanId"])
        .collect();
    assert!(!voice.is_empty(), "its sentences");
    assert!(attribute(voice[0], "turnflow.tts.characters").is_some());
    let text = serde_json::to_string(&spans).unwrap();
    let tools = named(&spans, "turnflow.tool");
    assert!(tools.is_empty(), "eager_hit calls no tool");
    assert!(
        !text.contains("table for two"),
        "no transcript or reply in a span"
    );
}

#[test]
fn the_binaries_send_traces_when_the_environment_asks() {
    let io = tokio::runtime::Runtime::new().unwrap();
    let receiver = io.block_on(Receiver::start());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args(["simulate", "--clock", "virtual"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = io.block_on(receiver.spans(1, Duration::from_secs(5)));
    check_tree(&spans);
    assert_eq!(named(&spans, "turnflow.call").len(), 1);
    assert_eq!(
        named(&spans, "turnflow.turn").len(),
        5,
        "the demo's five turns"
    );
    // The demo's lookup runs while its reply is a guess; its booking waits for the turn's end.
    let tools: Vec<(String, bool)> = named(&spans, "turnflow.tool")
        .iter()
        .map(|t| {
            (
                attribute(t, "gen_ai.tool.name").unwrap()["stringValue"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                attribute(t, "turnflow.tool.speculative").unwrap()["boolValue"]
                    .as_bool()
                    .unwrap(),
            )
        })
        .collect();
    assert!(
        tools.contains(&("check_availability".into(), true)),
        "{tools:?}"
    );
    assert!(tools.contains(&("book_table".into(), false)), "{tools:?}");

    // A served call, traced when it ends.
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .env("OTEL_SERVICE_NAME", "served")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    // Kept open until the server is killed: a closed pipe would end it with SIGPIPE at its
    // next line of output.
    let mut output = std::io::BufReader::new(server.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut output, &mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    let load = std::process::Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args([
            "load",
            &url,
            "--sessions",
            "1",
            "--turns",
            "1",
            "--ramp",
            "0",
        ])
        .args(["--wav", "tests/fixtures/book_table_16k.wav", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stdout)
    );
    let spans = io.block_on(receiver.spans(spans.len() + 2, Duration::from_secs(10)));
    let _ = server.kill();
    let _ = server.wait();
    let served: Vec<&Value> = named(&spans, "turnflow.call")
        .into_iter()
        .filter(|c| attribute(c, "turnflow.call.transport").unwrap()["stringValue"] == "browser")
        .collect();
    assert_eq!(served.len(), 1, "the browser call's trace: {spans:?}");
    assert_eq!(
        attribute(served[0], "turnflow.call.outcome").unwrap()["stringValue"],
        "completed"
    );
    let served_turns = named(&spans, "turnflow.turn")
        .into_iter()
        .filter(|t| t["traceId"] == served[0]["traceId"])
        .count();
    assert_eq!(served_turns, 1);

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args(["simulate", "--clock", "virtual"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc") && stderr.contains("http/json"),
        "{stderr}"
    );
}
