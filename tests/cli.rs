//! The `turnflow` binary: simulate's output and files on the virtual clock, and its errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

#[path = "support/http.rs"]
mod http;
#[path = "support/scrape.rs"]
mod scrape;
mod support;
use scrape::metrics;
use support::spawn_server;

fn turnflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the turnflow binary runs")
}

/// The standard output of a command that must have succeeded (its output and errors in the
/// failure message otherwise).
fn succeeded(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A JSON-lines file, every line parsed (a torn last line fails the test).
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("incomplete line {l:?}: {e}")))
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("turnflow-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn simulate_demo_on_the_virtual_clock_prints_turns_and_writes_the_outputs() {
    let dir = temp_dir("demo");
    let out = turnflow(&[
        "simulate",
        "--clock",
        "virtual",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("turn 0  user: Hi, are you open tonight?"),
        "{stdout}"
    );
    assert!(
        stdout.contains("speculation r2 cancelled (TurnResumed)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("agent r3 calls check_availability (while the reply is a guess)"),
        "the lookup runs before the end of the turn: {stdout}"
    );
    assert!(
        stdout.contains("agent r4 calls book_table\n"),
        "the booking waits for it: {stdout}"
    );
    assert!(
        stdout.contains("agent r4: book_table ok in 800 ms"),
        "{stdout}"
    );
    assert!(
        stdout.contains("agent r4: One moment. Thanks Jordan. Your table for [cut]"),
        "the filler line while the booking runs: {stdout}"
    );
    assert!(
        stdout.contains("speculation: 5 attempts, 4 hits, 1 misses, 3 wasted LLM tokens"),
        "{stdout}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let turns = report["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 5);
    for field in [
        "index",
        "user_transcript",
        "speculation",
        "speculation_attempts",
        "speculation_withdrawn",
        "lead_ms",
        "response_latency_ms",
        "voice_to_voice_ms",
        "engine_overhead_ms",
        "llm_ttft_ms",
        "tts_ttfb_ms",
        "interrupted",
        "barge_in_stop_ms",
        "assistant_text",
        "assistant_heard",
    ] {
        assert!(turns[0].get(field).is_some(), "turns[].{field}");
    }
    let latencies: Vec<f64> = turns
        .iter()
        .map(|t| t["response_latency_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(latencies, vec![260.0, 670.0, 850.0, 280.0, 620.0]);
    assert_eq!(report["summary"]["response_latency_ms"]["p50"], 620.0);
    assert_eq!(report["summary"]["speculation"]["hits"], 4);
    assert_eq!(report["summary"]["speculation"]["misses"], 1);

    let svg = std::fs::read_to_string(dir.join("timeline.svg")).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(">cut</text>") && svg.contains("260 ms"));
    assert!(
        svg.contains("<title>tool check_availability</title>")
            && svg.contains("<title>tool book_table</title>"),
        "the timeline draws the tool calls"
    );
    assert!(
        svg.contains("<title>engine ") && svg.contains("<title>endpointing "),
        "the breakdown's stacked bars"
    );

    let wav = std::fs::read(dir.join("conversation.wav")).unwrap();
    let (format, offset) = turnflow::audio::parse_wav_header(&wav).unwrap().unwrap();
    assert_eq!((format.channels, format.sample_rate), (2, 16000));
    let frames = (wav.len() - offset) / 4;
    assert!(
        frames > 16000 * 30,
        "about 35 s of conversation, got {frames} frames"
    );
    let samples: Vec<i16> = wav[offset..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert!(
        samples.iter().step_by(2).any(|s| s.unsigned_abs() > 3000),
        "user channel audible"
    );
    assert!(
        samples
            .iter()
            .skip(1)
            .step_by(2)
            .any(|s| s.unsigned_abs() > 3000),
        "agent channel audible"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn invalid_scenario_files_name_the_file_field_and_reason() {
    let dir = temp_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name":"x","turns":[{"phrases":[{"text":"hi","eot_confidence":2}]}]}"#,
    )
    .unwrap();
    let out = turnflow(&["simulate", "--clock", "virtual", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: turns[0].phrases[0].eot_confidence: must be from 0 to 1",
            bad.display()
        )),
        "{stderr}"
    );
    let missing = turnflow(&["simulate", "/nonexistent/scenario.json"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("/nonexistent/scenario.json: (file): cannot read")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn invalid_flags_are_refused_with_what_is_allowed() {
    let out = turnflow(&["simulate", "--clock", "virtual", "--barge-in", "sometimes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected `immediate` or `min-words=N`"));
    let out = turnflow(&["simulate", "--clock", "virtual", "--eot-threshold", "0.3"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("invalid eot_threshold=\"0.3\": a number from 0.5 to 1.0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = turnflow(&["bench", "--clock", "virtual", "--compare", "colour=red"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("supported keys"));
    let out = turnflow(&["serve", "--webrtc-candidate", "somewhere"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "--webrtc-candidate somewhere: expected IP or IP:PORT (203.0.113.7:3478, [2001:db8::7]:3478)"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = turnflow(&["serve", "--webrtc-udp", "3478"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--webrtc-udp 3478: expected IP:PORT or off"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = turnflow(&[
        "load",
        "http://127.0.0.1:9",
        "--wav",
        "tests/fixtures/book_table_16k.wav",
        "--no-dtx",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--no-dtx: only WebRTC callers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_on_the_virtual_clock_reports_and_writes_json_and_svg() {
    let dir = temp_dir("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let svg = dir.join("bench.svg");
    let turns = dir.join("turns.jsonl");
    let out = turnflow(&[
        "bench",
        "--clock",
        "virtual",
        "--sessions",
        "3",
        "--stagger",
        "2s",
        "--turns-json",
        turns.to_str().unwrap(),
        "--compare",
        "speculation=on,off",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
        "scenarios/eager_hit.json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let p50 = |i: usize| {
        results[i]["summary"]["response_latency_ms"]["p50"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(results[0]["config"], "speculation=on");
    assert_eq!(results[0]["summary"]["response_latency_ms"]["count"], 3);
    assert_eq!(
        (p50(0), p50(1)),
        (40.0, 520.0),
        "staggered starts change no latency"
    );
    assert!(results[0]["summary"]["response_latency_ms"]["p95"].is_number());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("3 sessions starting over 2s"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json_lines(&turns);
    assert_eq!(
        rows.len(),
        6,
        "one row per turn: 3 sessions x 2 configurations"
    );
    assert_eq!(rows[0]["config"], "speculation=on");
    assert_eq!(rows[5]["session"], 2);
    assert_eq!(rows[0]["turn"]["speculation"], "hit");
    assert_eq!(rows[0]["turn"]["response_latency_ms"], 40.0);
    // On the virtual clock the first audio is exactly at the limit the scripted providers
    // allow: 350 ms + one token of 20 ms + 150 ms of voice - the 480 ms lead.
    assert_eq!(rows[0]["first_audio_limit_ms"], 40.0);
    assert_eq!(rows[0]["above_limit_ms"], 0.0);
    assert_eq!(results[0]["above_limit_ms"]["max"], 0.0);
    assert!(
        std::fs::read_to_string(&svg)
            .unwrap()
            .contains("speculation=off")
    );
    assert!(Path::new(&svg).exists());
    std::fs::remove_dir_all(dir).unwrap();
}

/// `turnflow run` on the fixture WAV with the local emulator, the eager-hit scenario and the
/// example settings, writing the agent's audio to `output`, with `extra` flags.
fn run_book_table(output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--input",
        "tests/fixtures/book_table_16k.wav",
        "--output",
        output.to_str().unwrap(),
        "--scenario",
        "scenarios/eager_hit.json",
        "--config",
        "turnflow.example.toml",
    ];
    args.extend_from_slice(extra);
    turnflow(&args)
}

#[test]
fn run_on_a_wav_file_with_the_local_emulator_answers_and_records() {
    let dir = temp_dir("run");
    std::fs::create_dir_all(&dir).unwrap();
    let (wav, record) = (dir.join("agent.wav"), dir.join("recording"));
    let out = run_book_table(&wav, &["--record", record.to_str().unwrap()]);
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("user: Can you book me a table for two tonight?"),
        "{stdout}"
    );
    assert!(
        stdout.contains("agent r1: Of course. What time would you like the table for two?"),
        "{stdout}"
    );
    let bytes = std::fs::read(&wav).unwrap();
    let (format, offset) = turnflow::audio::parse_wav_header(&bytes).unwrap().unwrap();
    assert_eq!((format.channels, format.sample_rate), (1, 16000));
    assert!(
        bytes[offset..]
            .chunks_exact(2)
            .any(|c| i16::from_le_bytes([c[0], c[1]]).unsigned_abs() > 3000)
    );
    let lines = json_lines(&record.join("events.jsonl"));
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "flux" && l["event"] == "EndOfTurn")
    );
    assert!(lines.iter().any(|l| l["kind"] == "first_frame_written"));
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["t_ms"].as_f64() <= w[1]["t_ms"].as_f64())
    );

    // The recording replays with its own settings: every Flux event re-derived from the
    // recorded confidence curve, every request and sentence answered from the recording, and
    // the same report each time.
    let mut reports = Vec::new();
    for name in ["replay-a", "replay-b"] {
        let out_dir = dir.join(name);
        let out = turnflow(&[
            "replay",
            record.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        let stdout = succeeded(&out);
        assert!(
            stdout.contains("the recorded thresholds re-derive every recorded event"),
            "{stdout}"
        );
        assert!(
            !stdout.contains("never asked") && !stdout.contains("never synthesized"),
            "{stdout}"
        );
        assert!(
            stdout.contains("Of course. What time would you like the table for two?"),
            "{stdout}"
        );
        reports.push(std::fs::read_to_string(out_dir.join("report.json")).unwrap());
    }
    assert_eq!(reports[0], reports[1]);
    let report: serde_json::Value = serde_json::from_str(&reports[0]).unwrap();
    assert_eq!(report["turns"].as_array().unwrap().len(), 1);
    assert_eq!(report["turns"][0]["speculation"], "hit");

    // What if speculation had been off: the hit is gone, side by side with the recording.
    let out = turnflow(&["replay", record.to_str().unwrap(), "--speculation", "off"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let hits = stdout
        .lines()
        .find(|l| l.starts_with("speculation hits"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(
        hits.split_whitespace().collect::<Vec<_>>(),
        ["speculation", "hits", "1", "0", "-1"]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_names_what_is_missing_or_wrong() {
    let out = Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args([
            "run",
            "--input",
            "tests/fixtures/book_table_16k.wav",
            "--output",
            "/tmp/unused.wav",
            "--stt",
            "flux",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DEEPGRAM_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEEPGRAM_API_KEY is not set"));
    let out = turnflow(&[
        "run",
        "--input",
        "tests/fixtures/book_table_16k.wav",
        "--output",
        "/tmp/unused.wav",
        "--tts",
        "polly",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "tts provider \"polly\" is not available in this build; available: synthetic, aura"
    ));
    let out = turnflow(&[
        "run",
        "--input",
        "Cargo.toml",
        "--output",
        "/tmp/unused.wav",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Cargo.toml: unsupported wav: not a RIFF/WAVE container")
    );
}

#[test]
fn run_names_the_missing_llm_key_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args([
            "run",
            "--input",
            "tests/fixtures/book_table_16k.wav",
            "--output",
            "/tmp/unused.wav",
            "--llm",
            "anthropic",
            "--llm-model",
            "claude",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ANTHROPIC_API_KEY is not set"));
    let out = Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args([
            "run",
            "--input",
            "tests/fixtures/book_table_16k.wav",
            "--output",
            "/tmp/unused.wav",
            "--llm",
            "openai",
            "--llm-model",
            "m",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPENAI_API_KEY is not set"));
}

/// Starts `turnflow emulate` with `args` on a free loopback port: the process, the line it
/// printed, and the `ws://.../v2/listen` address in it.
fn spawn_emulator(args: &[&str]) -> (std::process::Child, String, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args(["emulate", "--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (child, line, url)
}

#[test]
fn emulate_serves_the_scenario_on_the_printed_address() {
    let (mut child, line, url) = spawn_emulator(&["--scenario", "scenarios/plain.json"]);
    assert!(line.contains("\"plain\""), "{line}");
    assert!(
        line.contains("/v2/speak"),
        "both halves of Flux are served: {line}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let events = runtime.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        let (mut ws, _) = tokio_tungstenite::connect_async(format!(
            "{url}?model=flux-general-en&encoding=linear16&sample_rate=16000"
        ))
        .await
        .unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![0u8; 16000 * 2 * 4].into(),
        ))
        .await
        .unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"type":"CloseStream"}"#,
        ))
        .await
        .unwrap();
        let mut events = Vec::new();
        while let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) = ws.next().await {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["type"] == "TurnInfo" && v["event"] != "Update" {
                events.push(format!(
                    "{}@{}",
                    v["event"].as_str().unwrap(),
                    v["audio_window_end"]
                ));
            }
        }
        events
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(events, vec!["StartOfTurn@0.96", "EndOfTurn@3.6"]);
}

/// A loopback HTTP server that answers every request with 401 and a provider-style error
/// body, and remembers the request lines it saw.
fn refusing_http_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
                if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            log.lock().unwrap().push(request_line.trim().to_owned());
            let reply =
                r#"{"error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (port, seen)
}

#[test]
fn run_fails_with_one_clear_line_when_every_reply_fails_and_llm_url_reaches_every_provider() {
    let (port, seen) = refusing_http_server();
    let dir = temp_dir("run-fails");
    std::fs::create_dir_all(&dir).unwrap();
    for (provider, key_env, path) in [
        ("openai", "OPENAI_API_KEY", "POST /v1/chat/completions"),
        ("anthropic", "ANTHROPIC_API_KEY", "POST /v1/v1/messages"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_turnflow"))
            .args([
                "run",
                "--input",
                "tests/fixtures/book_table_16k.wav",
                "--output",
                dir.join("agent.wav").to_str().unwrap(),
                "--llm",
                provider,
                "--llm-model",
                "m",
                "--llm-url",
                &format!("http://127.0.0.1:{port}/v1"),
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env(key_env, "wrong-key")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{provider}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: every reply failed") && last.contains("401"),
            "{provider}: {stderr}"
        );
        assert!(
            !stderr.contains("wrong-key"),
            "the key never reaches the output"
        );
        assert!(
            seen.lock().unwrap().iter().any(|l| l.starts_with(path)),
            "{provider} went to --llm-url: {:?}",
            seen.lock().unwrap()
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_checks_output_and_record_paths_before_the_session() {
    for (flag, expected) in [
        (
            "--output",
            "--output /nonexistent-turnflow-dir/agent.wav: cannot create the file",
        ),
        (
            "--record",
            "--record /dev/null/turnflow-record: cannot create the directory",
        ),
    ] {
        let mut args = vec![
            "run",
            "--input",
            "tests/fixtures/book_table_16k.wav",
            "--output",
            "/tmp/turnflow-unused.wav",
        ];
        if flag == "--output" {
            args[4] = "/nonexistent-turnflow-dir/agent.wav";
        } else {
            args.extend(["--record", "/dev/null/turnflow-record"]);
        }
        let out = turnflow(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(expected), "{stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "no conversation started"
        );
    }
}

#[cfg(unix)]
#[test]
fn sigterm_stops_a_run_and_leaves_complete_files() {
    use std::io::{BufRead, BufReader};
    let dir = temp_dir("run-term");
    std::fs::create_dir_all(&dir).unwrap();
    let (wav, record) = (dir.join("agent.wav"), dir.join("recording"));
    // A long input: the fixture three times over.
    let bytes = std::fs::read("tests/fixtures/book_table_16k.wav").unwrap();
    let (_, offset) = turnflow::audio::parse_wav_header(&bytes).unwrap().unwrap();
    let mut pcm = Vec::new();
    for _ in 0..3 {
        pcm.extend(
            bytes[offset..]
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]])),
        );
    }
    let input = dir.join("long.wav");
    turnflow::audio::write_wav(&input, 16000, 1, &pcm).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args([
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            wav.to_str().unwrap(),
            "--record",
            record.to_str().unwrap(),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 && !line.contains("user:") {
        line.clear();
    }
    assert!(line.contains("user:"), "the conversation started");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("terminated: stopping"), "{stderr}");
    let lines = json_lines(&record.join("events.jsonl"));
    assert!(lines.iter().any(|l| l["event"] == "EndOfTurn"), "{lines:?}");
    assert!(
        record.join("recording.json").exists(),
        "the recording was completed"
    );
    assert!(
        rest.contains(&format!("wrote {} (", record.display())),
        "{rest}"
    );
    let written = std::fs::read(&wav).unwrap();
    let (format, offset) = turnflow::audio::parse_wav_header(&written)
        .unwrap()
        .unwrap();
    assert_eq!(format.sample_rate, 16000);
    assert!(written.len() > offset, "the agent's audio so far");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_exits_non_zero_when_flux_keeps_failing_and_emulate_injects_the_fault() {
    let (mut emulator, line, url) = spawn_emulator(&["--fault", "close=1011@1000/all"]);
    assert!(line.contains("with 1 fault(s)"), "{line}");
    let url = url.trim_end_matches("/v2/listen").to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args([
            "run",
            "--input",
            "tests/fixtures/book_table_16k.wav",
            "--output",
            "/tmp/turnflow-flux-fails.wav",
            "--stt",
            "flux",
            "--flux-url",
            &url,
            "--flux-reconnect-budget",
            "2s",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DEEPGRAM_API_KEY", "dg-test-key")
        .output()
        .unwrap();
    emulator.kill().unwrap();
    let _ = emulator.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: the session failed: connection lost (server closed the connection (1011 emulated fault))"),
        "{stderr}"
    );
    assert!(!stderr.contains("dg-test-key"));
}

#[test]
fn load_measures_a_served_agent_which_then_drains_on_sigterm_and_exits_cleanly() {
    let (mut server, url) = spawn_server(&[]);
    let out = turnflow(&[
        "load",
        &url,
        "--sessions",
        "2",
        "--turns",
        "1",
        "--ramp",
        "0",
        "--wav",
        "tests/fixtures/book_table_16k.wav",
        "--json",
    ]);
    let stdout = succeeded(&out);
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["turns"], 2, "{summary}");
    assert_eq!(summary["failed_sessions"], 0, "{summary}");
    assert_eq!(summary["response_latency_ms"]["count"], 2, "{summary}");
    assert!(
        summary["engine_overhead_ms"]["p50"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    // Eager mode is on by default: both turns were answered by a speculative reply.
    assert_eq!(summary["speculation"]["hits"], 2, "{summary}");
    assert!(
        summary["speculation"]["lead_ms"]["p50"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    // A browser caller who speaks over the first reply: the server clears it, and decides what
    // was heard from the caller's playback reports.
    let text = interrupt_once(&url, &[]);
    assert!(
        text.contains("turnflow_heard_clock_total{clock=\"client_reports\"} 1\n"),
        "the barge-in's cut, decided by the caller's reports: {text}"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("terminated: draining"), "{stderr}");
    assert!(
        stderr.contains("drained: 0 session(s) were running"),
        "{stderr}"
    );
}

#[test]
fn serve_speaks_with_flux_tts_offline_on_the_embedded_emulator() {
    let (mut server, url) = spawn_server(&["--tts", "flux"]);
    let out = turnflow(&[
        "load",
        &url,
        "--sessions",
        "1",
        "--turns",
        "1",
        "--ramp",
        "0",
        "--wav",
        "tests/fixtures/book_table_16k.wav",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&succeeded(&out)).unwrap();
    assert_eq!(summary["turns"], 1, "{summary}");
    assert_eq!(summary["failed_sessions"], 0, "{summary}");
    server.kill().unwrap();
    let _ = server.wait();
}

/// Runs one caller (`extra` arguments to `load`) who speaks over the agent's first reply, and
/// checks that both turns completed and that the server sent one `clear`; returns the server's
/// metrics once the session has ended.
fn interrupt_once(url: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "load",
        url,
        "--turns",
        "2",
        "--barge-in-after",
        "1s",
        "--wav",
        "tests/fixtures/book_table_16k.wav",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = turnflow(&args);
    let summary: serde_json::Value = serde_json::from_str(&succeeded(&out)).unwrap();
    assert_eq!(summary["turns"], 2, "{summary}");
    assert_eq!(summary["failed_sessions"], 0, "{summary}");
    // `load` exits once its side of each socket is closed; the server counts a session as ended
    // after it has closed that session's Flux, LLM and TTS connections, a moment later.
    wait_until_no_session_is_active(url);
    let text = metrics(url);
    assert!(
        text.contains("turnflow_clear_sent_seconds_count 1\n"),
        "one barge-in, one clear: {text}"
    );
    text
}

/// Polls the server's `/metrics` until its active-session gauge reads 0; panics with the last
/// reading after ten seconds.
fn wait_until_no_session_is_active(url: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let response = metrics(url);
        let gauge = response
            .lines()
            .find(|line| line.starts_with("turnflow_sessions_active "))
            .unwrap_or_else(|| panic!("no active-session gauge in {response}"))
            .to_owned();
        if gauge == "turnflow_sessions_active 0" {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "still {gauge}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn load_reports_a_server_that_refuses_as_failed_sessions() {
    let (mut server, url) = spawn_server(&["--token", "s3cret"]);
    let out = turnflow(&["load", &url, "--wav", "tests/fixtures/book_table_16k.wav"]);
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stdout.contains("failed x1: refused: HTTP 401"), "{stdout}");
    assert!(stderr.contains("1 of 1 sessions failed"), "{stderr}");
}

#[test]
fn load_calls_like_a_phone_carrier() {
    let (mut server, url) = spawn_server(&[]);
    let out = turnflow(&[
        "load",
        &url,
        "--carrier",
        "telnyx",
        "--sessions",
        "1",
        "--turns",
        "1",
        "--wav",
        "tests/fixtures/book_table_16k.wav",
        "--json",
    ]);
    let stdout = succeeded(&out);
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        summary["url"].as_str().unwrap().ends_with("/telephony"),
        "{summary}"
    );
    assert_eq!(summary["turns"], 1, "{summary}");
    assert_eq!(summary["voice_to_voice_ms"]["count"], 1, "{summary}");
    // A caller who speaks over the first reply: the server clears it, and decides what was
    // heard from the marks the load generator echoed.
    let text = interrupt_once(&url, &["--carrier", "twilio"]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        text.contains("turnflow_heard_clock_total{clock=\"carrier_marks\"} 2\n"),
        "the barge-in and the second reply, cut by the hang-up: {text}"
    );
}

#[test]
fn replay_sweeps_the_shipped_recordings_into_a_table_and_a_chart() {
    let dir = temp_dir("sweep");
    let mut args = vec!["replay"];
    let shipped: Vec<String> = std::fs::read_dir("recordings")
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .collect();
    assert!(shipped.len() >= 4, "{shipped:?}");
    args.extend(shipped.iter().map(String::as_str));
    args.extend([
        "--sweep",
        "eot=0.5..0.9:0.1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let out = turnflow(&args);
    let stdout = succeeded(&out);
    for value in ["0.5", "0.6", "0.7", "0.8", "0.9"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{value} "))),
            "{value}: {stdout}"
        );
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 5);
    // A lower threshold cuts the eager-miss user off at their pause; a higher one waits for
    // the timeout more often.
    assert!(
        rows[0]["turn_taking"]["premature_ends"].as_u64()
            > rows[4]["turn_taking"]["premature_ends"].as_u64()
    );
    assert!(
        rows[4]["turn_taking"]["timeouts"].as_u64() > rows[0]["turn_taking"]["timeouts"].as_u64()
    );
    let svg = std::fs::read_to_string(dir.join("sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(">0.9</text>"));

    // One what-if, turn by turn: a lower end-of-turn threshold splits the eager-miss turn at
    // its pause; the two halves have no recorded partner, the recorded whole none in the what-if.
    let out = turnflow(&["replay", "recordings/eager_miss", "--eot-threshold", "0.55"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = |user: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(user))
            .unwrap_or_else(|| panic!("{user}: {stdout}"))
            .split_whitespace()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("to Friday morning."), ["980", "260", "hit", "-", "-"]);
    assert_eq!(
        row("I'd like to change my flight to Friday m"),
        ["-", "-", "980", "260", "hit"]
    );

    // A directory of recordings (what `serve --record` writes) gives all of them.
    let out = turnflow(&["replay", "recordings", "--sweep", "eot=0.6,0.8"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("sweep over {} recording(s)", shipped.len())),
        "{stdout}"
    );

    for (args, expected) in [
        (
            vec![
                "replay",
                "recordings/eager_miss",
                "--sweep",
                "eager=0.3..0.9:0.1",
            ],
            "--sweep eager=0.8 with recordings/eager_miss: invalid eager_eot_threshold",
        ),
        (
            vec!["replay", "recordings/eager_miss", "--sweep", "colour=1,2"],
            "unknown setting \"colour\"",
        ),
        (
            vec!["replay", "/nonexistent-turnflow-recording"],
            "/nonexistent-turnflow-recording",
        ),
        (
            vec![
                "replay",
                "recordings/eager_miss",
                "recordings/barge_in",
                "--out",
                "/tmp/x",
            ],
            "--out writes one replay's files",
        ),
    ] {
        let out = turnflow(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_run_recorded_on_the_virtual_clock_replays_to_the_identical_report() {
    let dir = temp_dir("run-virtual");
    std::fs::create_dir_all(&dir).unwrap();
    let (record, report, replayed) = (dir.join("rec"), dir.join("run.json"), dir.join("replay"));
    let out = run_book_table(
        &dir.join("agent.wav"),
        &[
            "--clock",
            "virtual",
            "--record",
            record.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("response_latency_ms  p50   280.0"),
        "{stdout}"
    );
    let out = turnflow(&[
        "replay",
        record.to_str().unwrap(),
        "--out",
        replayed.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let original = std::fs::read_to_string(&report).unwrap();
    assert!(original.contains("\"speculation\": \"hit\""), "{original}");
    assert_eq!(
        std::fs::read_to_string(replayed.join("report.json")).unwrap(),
        original
    );

    for (input, output) in [
        ("mic", "/tmp/turnflow-unused.wav"),
        ("tests/fixtures/book_table_16k.wav", "speaker"),
    ] {
        let expected = "--clock virtual needs --input FILE and --output FILE";
        let all = [
            "run", "--clock", "virtual", "--input", input, "--output", output,
        ];
        let out = turnflow(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn run_calls_a_webhook_tool_from_the_settings_file() {
    let dir = temp_dir("webhook");
    std::fs::create_dir_all(&dir).unwrap();
    // The backend runs on its own runtime's threads while the binary calls it.
    let io = tokio::runtime::Runtime::new().unwrap();
    let (url, requests) = io.block_on(http::recorder(|_| {
        Some(("200 OK", r#"{"free_tables":3}"#.to_owned()))
    }));
    let settings = dir.join("turnflow.toml");
    std::fs::write(
        &settings,
        format!(
            r#"
[tools]
demo = false

[[tools.webhook]]
name = "check_table"
description = "How many tables are free tonight for a party"
url = "{url}/tables"
effect = "read_only"
timeout_ms = 5000
parameters = {{ type = "object", properties = {{ people = {{ type = "integer" }} }}, required = ["people"] }}
headers = {{ "x-api-key" = "${{TURNFLOW_TEST_TABLES_KEY}}" }}
"#
        ),
    )
    .unwrap();
    let scenario = dir.join("scenario.json");
    std::fs::write(
        &scenario,
        r#"{"name":"hook","turns":[{"say":"Hello, can you book me a table for two tonight?",
            "calls":[{"tool":"check_table","arguments":{"people":2}}],
            "reply":"Yes, three tables are free tonight."}]}"#,
    )
    .unwrap();
    let report = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args(["run", "--input", "tests/fixtures/book_table_16k.wav"])
        .args(["--output", dir.join("agent.wav").to_str().unwrap()])
        .args(["--scenario", scenario.to_str().unwrap()])
        .args(["--config", settings.to_str().unwrap()])
        .args(["--report", report.to_str().unwrap()])
        .env("TURNFLOW_TEST_TABLES_KEY", "k-42")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    succeeded(&out);
    let received = requests.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:?}");
    let (head, body) = &received[0];
    assert!(head.starts_with("POST /tables HTTP/1.1"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-api-key: k-42"),
        "{head}"
    );
    assert_eq!(body, r#"{"people":2}"#);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let turn = &report["turns"][0];
    assert_eq!(
        turn["assistant_heard"],
        "Yes, three tables are free tonight."
    );
    assert_eq!(turn["tool_calls"][0]["tool"], "check_table");
    assert_eq!(turn["tool_calls"][0]["outcome"], "ok");

    // A header whose variable is not set is named at start.
    let out = Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args(["run", "--input", "tests/fixtures/book_table_16k.wav"])
        .args(["--output", dir.join("agent.wav").to_str().unwrap()])
        .args(["--config", settings.to_str().unwrap()])
        .env_remove("TURNFLOW_TEST_TABLES_KEY")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tools.webhook \"check_table\": header x-api-key needs the environment variable TURNFLOW_TEST_TABLES_KEY, which is not set"),
        "{stderr}"
    );
}

#[test]
fn mcp_settings_that_cannot_work_are_refused_at_start_with_what_is_wrong() {
    let dir = temp_dir("mcp-settings");
    std::fs::create_dir_all(&dir).unwrap();
    let settings = dir.join("turnflow.toml");
    for (tools, expected) in [
        (
            "name = \"crm\"\ncommand = \"crm-mcp\"\nurl = \"https://crm.example.com/mcp\"",
            "tools.mcp \"crm\": give either command (a server run as a child process) or url (Streamable HTTP), not both or neither",
        ),
        (
            "name = \"crm\"\nurl = \"https://crm.example.com/mcp\"\nprotocol = \"2024-11-05\"",
            "tools.mcp \"crm\": protocol \"2024-11-05\": expected auto, 2026-07-28 or 2025-11-25",
        ),
        (
            "name = \"crm\"\nurl = \"https://crm.example.com/mcp\"\nheaders = { Authorization = \"Bearer ${TURNFLOW_TEST_UNSET_CRM_TOKEN}\" }",
            "tools.mcp \"crm\": header Authorization needs the environment variable TURNFLOW_TEST_UNSET_CRM_TOKEN, which is not set",
        ),
        (
            "name = \"gone\"\ncommand = \"/nonexistent/mcp-server\"",
            "mcp server gone did not start: cannot run \"/nonexistent/mcp-server\"",
        ),
    ] {
        std::fs::write(&settings, format!("[[tools.mcp]]\n{tools}\n")).unwrap();
        let out = turnflow(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            settings.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{tools}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{expected}\nnot in\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
