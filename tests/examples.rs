//! The examples that show turnflow as a library, run as the programs they are: each is built by
//! `cargo test` (into `target/<profile>/examples/`) and driven here over loopback.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use turnflow::server::protocol::{FromClient, PROTOCOL_VERSION, Start};

#[path = "support/example.rs"]
mod support;
use support::example;

const PATIENCE: Duration = Duration::from_secs(30);

/// A child process killed if the test fails before it exits.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts an example on a loopback port: the child (killed if the test fails), its stdout, and
/// the address it printed (`listening on ADDR`).
fn launch(name: &str) -> (KillOnDrop, BufReader<std::process::ChildStdout>, String) {
    let child = Command::new(example(name))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(Some(child));
    let mut stdout = BufReader::new(child.0.as_mut().unwrap().stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    (child, stdout, addr)
}

/// `examples/embed_axum.rs`: the application's own route answers, turnflow's routes answer
/// under `/voice` only through the application's authentication, the page finds its scripts
/// and WebSocket under `/voice/`, a conversation runs there, and SIGTERM drains and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turnflow_mounted_in_an_axum_app_serves_under_its_path_and_drains_on_sigterm() {
    let (mut child, mut stdout, base) = launch("embed_axum");
    let http = reqwest::Client::new();
    let get = |path: &str, auth: bool| {
        let mut request = http.get(format!("{base}{path}"));
        if auth {
            request = request.header("authorization", "Bearer let-me-in");
        }
        request.send()
    };
    let own = get("/", false).await.unwrap();
    assert_eq!(own.text().await.unwrap(), "the application's own page\n");
    assert_eq!(get("/voice/healthz", false).await.unwrap().status(), 401);
    assert_eq!(
        get("/healthz", true).await.unwrap().status(),
        404,
        "only under /voice"
    );
    let ready = get("/voice/readyz", true).await.unwrap();
    assert_eq!(ready.text().await.unwrap(), "ready\n");
    let page = get("/voice", true).await.unwrap().text().await.unwrap();
    assert!(page.contains("<base href=\"/voice/\">"), "{page}");
    assert!(page.contains("<script src=\"app.js\">"), "{page}");
    let script = get("/voice/app.js", true).await.unwrap();
    assert_eq!(script.status(), 200);

    let ws = base.replacen("http://", "ws://", 1);
    let refused = tokio_tungstenite::connect_async(format!("{ws}/voice/session")).await;
    assert!(
        refused.is_err(),
        "the application's auth covers the WebSocket"
    );
    let mut request = format!("{ws}/voice/session").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer let-me-in".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(Message::Text(
            FromClient::Start(Start {
                version: PROTOCOL_VERSION,
                sample_rate: 16000,
            })
            .to_json()
            .into(),
        ))
        .await
        .unwrap();
    let mut every = tokio::time::interval(Duration::from_millis(20));
    let turn = async {
        loop {
            tokio::select! {
                _ = every.tick() => socket.send(Message::Binary(vec![0; 640].into())).await.unwrap(),
                message = socket.next() => {
                    if let Some(Ok(Message::Text(text))) = message {
                        let value: Value = serde_json::from_str(&text).unwrap();
                        if value["type"] == "turn" {
                            return value;
                        }
                    }
                }
            }
        }
    };
    let turn = tokio::time::timeout(PATIENCE, turn)
        .await
        .expect("a turn is answered");
    assert_eq!(turn["index"], 0, "{turn}");
    assert!(
        turn["assistant_heard"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.as_ref().unwrap().id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The running conversation is not cut: it goes on until its client stops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let draining = get("/voice/readyz", true).await.unwrap();
    assert_eq!(draining.status(), 503);
    socket
        .send(Message::Text(FromClient::Stop.to_json().into()))
        .await
        .unwrap();
    let ended = async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] == "end" {
                    return value;
                }
            }
        }
        panic!("no end");
    };
    let end = tokio::time::timeout(PATIENCE, ended)
        .await
        .expect("it ends");
    assert_eq!(end["reason"], "stopped", "{end}");
    let mut exiting = child.0.take().unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        (exiting.wait().unwrap(), rest)
    });
    let (status, rest) = tokio::time::timeout(PATIENCE, status)
        .await
        .expect("the example exits")
        .unwrap();
    assert!(status.success());
    assert!(
        rest.contains("drained: 1 session(s) were running, 0 stopped"),
        "{rest}"
    );
}

/// `examples/custom_transport.rs`: a transport written outside turnflow (raw PCM over TCP)
/// carries a whole conversation: the user's audio in, the agent's reply out, and the end when
/// the client half-closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_written_outside_the_crate_carries_a_whole_conversation() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let (_child, mut stdout, addr) = launch("custom_transport");
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let (heard_tx, mut heard) = tokio::sync::watch::channel(0usize);
    let listening = tokio::spawn(async move {
        let mut agent = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return agent,
                Ok(n) => {
                    agent.extend_from_slice(&buffer[..n]);
                    heard_tx.send_replace(agent.len());
                }
            }
        }
    });
    // Silence in real time (the emulator plays the scenario's words) until the reply has
    // come and stopped for half a second.
    let speak = async {
        let mut every = tokio::time::interval(Duration::from_millis(20));
        let mut quiet_since = None;
        loop {
            every.tick().await;
            writer.write_all(&[0u8; 640]).await.unwrap();
            let received = *heard.borrow_and_update();
            let now = tokio::time::Instant::now();
            match quiet_since {
                Some((count, since)) if count == received && received > 0 => {
                    if now - since > Duration::from_millis(500) {
                        return;
                    }
                }
                _ => quiet_since = Some((received, now)),
            }
        }
    };
    tokio::time::timeout(PATIENCE, speak)
        .await
        .expect("the agent answers");
    writer.shutdown().await.unwrap();
    let agent = tokio::time::timeout(PATIENCE, listening)
        .await
        .expect("the server closes after the reply")
        .unwrap();
    let samples: Vec<i16> = agent
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert!(
        samples.len() > 16000,
        "over a second of the agent's voice: {} samples",
        samples.len()
    );
    assert!(
        samples.iter().any(|s| s.unsigned_abs() > 1000),
        "a voice, not silence"
    );
    let mut ended = String::new();
    stdout.read_line(&mut ended).unwrap();
    assert_eq!(ended.trim(), "call 1 ended: completed (stopped), 1 turn(s)");
}
