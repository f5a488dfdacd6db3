//! A rolling update in miniature: two `turnflow serve` processes behind a real HAProxy
//! (Debian `haproxy`, on loopback ports). One gets SIGTERM in the middle of a conversation:
//! its conversation finishes, new sessions land on the other, no client sees an error, and the
//! drained process exits 0. `.ci/run` installs haproxy and sets `TURNFLOW_REQUIRE_HAPROXY`, so
//! CI never skips this.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use turnflow::server::protocol::{FromClient, PROTOCOL_VERSION, Start};

mod support;

const PATIENCE: Duration = Duration::from_secs(60);

struct Served {
    child: Child,
    url: String,
}

fn serve() -> Served {
    let (child, url) = support::spawn_server(&["--drain-timeout", "60s"]);
    Served { child, url }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn haproxy(port: u16, backends: &[&str]) -> Child {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, url)| {
            format!(
                "  server s{i} {} check\n",
                url.trim_start_matches("http://")
            )
        })
        .collect();
    // Health checks on /readyz take a draining server out; `retry-on 503` with redispatch
    // sends an upgrade that raced the check to the other server instead of failing it.
    let config = format!(
        "global\n  maxconn 512\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  timeout tunnel 1h\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
         backend be\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n\
         \x20 retries 3\n  option redispatch 1\n  retry-on 503 conn-failure\n\
         \x20 default-server inter 200ms fall 1 rise 1\n{servers}"
    );
    let path = std::env::temp_dir().join(format!("turnflow-haproxy-{}.cfg", std::process::id()));
    std::fs::write(&path, config).unwrap();
    Command::new("haproxy")
        .args(["-db", "-f", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy runs")
}

fn speech() -> Vec<u8> {
    let bytes = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/book_table_16k.wav"),
    )
    .unwrap();
    let (_, offset) = turnflow::audio::parse_wav_header(&bytes).unwrap().unwrap();
    bytes[offset..].to_vec()
}

/// What one caller saw: its `ready`, the turn figures, any error, and how it ended.
#[derive(Debug, Default)]
struct Call {
    session: String,
    turns: usize,
    errors: Vec<Value>,
    end: Option<Value>,
}

/// One conversation through the balancer: the speech in real time, silence until the turn's
/// figures arrive, then `stop`. `ready` reports the session id once the session runs.
async fn call(url: String, ready: tokio::sync::oneshot::Sender<String>) -> Call {
    let (socket, _) = tokio_tungstenite::connect_async(format!("{url}/session"))
        .await
        .expect("the balancer admits the session");
    let (mut write, mut read) = socket.split();
    let start = FromClient::Start(Start {
        version: PROTOCOL_VERSION,
        sample_rate: 16000,
    });
    write
        .send(Message::Text(start.to_json().into()))
        .await
        .unwrap();
    let audio = speech();
    let mut frames = audio.chunks(640).map(<[u8]>::to_vec);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut ready = Some(ready);
    let mut seen = Call::default();
    let mut stopped = false;
    loop {
        tokio::select! {
            _ = tick.tick(), if !stopped => {
                let frame = frames.next().unwrap_or_else(|| vec![0; 640]);
                if write.send(Message::Binary(frame.into())).await.is_err() {
                    break;
                }
            }
            message = read.next() => {
                let Some(Ok(message)) = message else { break };
                let Message::Text(text) = message else { continue };
                let m: Value = serde_json::from_str(&text).unwrap();
                match m["type"].as_str().unwrap() {
                    "ready" => {
                        seen.session = m["session"].as_str().unwrap().to_owned();
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(seen.session.clone());
                        }
                    }
                    "turn" => {
                        seen.turns += 1;
                        stopped = true;
                        let stop = FromClient::Stop.to_json();
                        write.send(Message::Text(stop.into())).await.unwrap();
                    }
                    "error" => seen.errors.push(m),
                    "end" => seen.end = Some(m),
                    _ => {}
                }
            }
        }
    }
    seen
}

async fn metric(url: &str, line: &str) -> String {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_behind_haproxy_finishes_its_calls_while_new_ones_go_elsewhere() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        assert!(
            std::env::var_os("TURNFLOW_REQUIRE_HAPROXY").is_none(),
            "haproxy is required here"
        );
        return;
    }
    let (mut a, b) = (serve(), serve());
    let port = free_port();
    let mut proxy = haproxy(port, &[&a.url, &b.url]);
    let front = format!("http://127.0.0.1:{port}");
    let ws_front = format!("ws://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let up = reqwest::get(format!("{front}/readyz")).await;
        if up.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "haproxy comes up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Two conversations: round robin puts one on each server.
    let (ready_1, on_1) = tokio::sync::oneshot::channel();
    let (ready_2, on_2) = tokio::sync::oneshot::channel();
    let first = tokio::spawn(call(ws_front.clone(), ready_1));
    let second = tokio::spawn(call(ws_front.clone(), ready_2));
    on_1.await.unwrap();
    on_2.await.unwrap();
    assert_eq!(
        metric(&a.url, "turnflow_sessions_active").await,
        "turnflow_sessions_active 1"
    );
    assert_eq!(
        metric(&b.url, "turnflow_sessions_active").await,
        "turnflow_sessions_active 1"
    );

    // A rolling update replaces server A mid-conversation.
    let killed = Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Once A has taken the signal (its own /readyz says so; a signal is handled a moment after
    // `kill` returns, longer on a busy machine), new callers arrive at once, racing haproxy's
    // health check, which still sends some of them to A.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ready = reqwest::get(format!("{}/readyz", a.url)).await;
        if ready.is_ok_and(|r| r.status() == 503) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "A starts draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut newcomers = Vec::new();
    for _ in 0..2 {
        let (ready, _) = tokio::sync::oneshot::channel();
        newcomers.push(tokio::spawn(call(ws_front.clone(), ready)));
    }

    let mut calls = vec![first.await.unwrap(), second.await.unwrap()];
    for c in newcomers {
        calls.push(c.await.unwrap());
    }
    for c in &calls {
        assert!(c.errors.is_empty(), "{c:?}");
        assert_eq!(c.turns, 1, "{c:?}");
        let end = c.end.as_ref().unwrap_or_else(|| panic!("no end: {c:?}"));
        assert_eq!(end["reason"], "stopped", "{c:?}");
    }
    // Server A finished its conversation and exited cleanly; B took both newcomers.
    let status = tokio::task::spawn_blocking(move || {
        let status = a.child.wait().unwrap();
        let mut stderr = String::new();
        a.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stderr)
    });
    let (status, stderr) = tokio::time::timeout(PATIENCE, status)
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("drained: 1 session(s) were running, 0 stopped"),
        "{stderr}"
    );
    assert_eq!(
        metric(&b.url, "turnflow_sessions_total{outcome=\"completed\"}").await,
        "turnflow_sessions_total{outcome=\"completed\"} 3"
    );
    let _ = proxy.kill();
    let _ = proxy.wait();
    let mut b = b;
    let _ = b.child.kill();
    let _ = b.child.wait();
}
