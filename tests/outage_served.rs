//! The real binaries through a Flux outage: `turnflow serve --stt flux` against a separate
//! `turnflow emulate`, callers from `turnflow load`, and the emulator killed under them and
//! started again on the same port ten seconds later. Every call and every turn must be
//! answered; the server's metrics must show the reconnects.

#[path = "support/scrape.rs"]
mod scrape;
#[path = "support/process.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SESSIONS: usize = 20;
const TURNS: usize = 2;
const OUTAGE: Duration = Duration::from_secs(10);

/// `turnflow emulate` in voice-activity mode on `listen`: the child and the port it took.
fn emulator(listen: &str) -> (Child, u16) {
    let (child, line) = support::spawn(
        &["emulate", "--turns", "vad", "--listen", listen],
        &[],
        Stdio::null(),
    );
    let url = support::address(&line, "ws://127.0.0.1:");
    let port = url
        .trim_start_matches("ws://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (child, port)
}

fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn callers_ride_through_the_emulator_killed_and_restarted_under_load() {
    let (mut first, port) = emulator("127.0.0.1:0");
    let flux_url = format!("ws://127.0.0.1:{port}");
    // The server's log goes to a file: a pipe nobody reads would fill and stall it.
    let log = std::env::temp_dir().join(format!("turnflow-outage-{}.log", std::process::id()));
    let (mut server, line) = support::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--stt",
            "flux",
            "--flux-url",
            &flux_url,
        ],
        &[("DEEPGRAM_API_KEY", "emulator-accepts-any-key")],
        std::fs::File::create(&log).unwrap().into(),
    );
    let url = support::address(&line, "http://");
    let load = {
        let url = url.clone();
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_turnflow"))
                .args(["load", &url, "--wav", "tests/fixtures/book_table_16k.wav"])
                .args(["--sessions", &SESSIONS.to_string()])
                .args(["--turns", &TURNS.to_string(), "--ramp", "2s"])
                .args(["--reply-patience", "60s", "--json"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap()
        })
    };

    // Every caller is on, speaking: then the service goes away.
    let deadline = Instant::now() + Duration::from_secs(30);
    while gauge(&scrape::metrics(&url), "turnflow_sessions_active") < SESSIONS as f64 {
        assert!(Instant::now() < deadline, "the callers connect");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    first.kill().unwrap();
    first.wait().unwrap();
    std::thread::sleep(OUTAGE);
    let (mut second, again) = emulator(&format!("127.0.0.1:{port}"));
    assert_eq!(again, port);

    let out = load.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let text = scrape::metrics(&url);
    let _ = server.kill();
    let _ = server.wait();
    let _ = second.kill();
    let _ = second.wait();
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(summary["failed_sessions"], 0, "{summary}\n{server_log}");
    assert_eq!(summary["turns"], SESSIONS * TURNS, "{summary}");
    assert_eq!(
        summary["response_latency_ms"]["count"],
        SESSIONS * TURNS,
        "every turn answered: {summary}"
    );
    assert!(out.status.success(), "{summary}");
    assert_eq!(
        gauge(
            &text,
            "turnflow_flux_reconnects_total{outcome=\"reconnected\"}"
        ),
        SESSIONS as f64,
        "each call reconnected once: {text}"
    );
    assert_eq!(
        gauge(&text, "turnflow_sessions_total{outcome=\"stt_failed\"}"),
        0.0
    );
    let offline = gauge(&text, "turnflow_flux_offline_seconds_total");
    assert!(
        offline >= SESSIONS as f64 * OUTAGE.as_secs_f64(),
        "each call spent the outage without Flux: {offline} s in all"
    );
    assert_eq!(
        server_log.matches("flux reconnect failed").count(),
        SESSIONS,
        "one warning per call, not one per attempt"
    );
}
