//! Headless Chromium (Debian `chromium`) with a fake microphone playing a WAV, on one page,
//! driven over the DevTools protocol. `.ci/run` installs chromium and sets
//! `TURNFLOW_REQUIRE_CHROMIUM`, so CI never skips a test that needs it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Bound for anything the browser is waited for.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Whether Chromium is here; without it a test returns early, unless CI requires it.
pub(crate) fn available() -> bool {
    if Command::new("chromium").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("TURNFLOW_REQUIRE_CHROMIUM").is_none(),
        "chromium is required here"
    );
    false
}

/// A browser showing one page; killed, and its profile removed, when dropped.
pub(crate) struct Browser {
    child: Child,
    profile: std::path::PathBuf,
    page: Socket,
    next_id: u64,
}

impl Browser {
    /// Chromium at `url` with `wav` as its microphone (played once) and `extra` flags, once
    /// the page's DevTools socket is open.
    pub(crate) async fn open(url: &str, wav: &std::path::Path, extra: &[&str]) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "turnflow-chromium-{}-{}",
            std::process::id(),
            url.len() + extra.len()
        ));
        let _ = std::fs::remove_dir_all(&profile);
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
            .args(extra)
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
                t["type"] == "page" && t["url"].as_str().unwrap_or_default().starts_with(url)
            });
            if let Some(page) = page {
                break page["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
            }
            assert!(tokio::time::Instant::now() < deadline, "the page opens");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (page, _) = tokio_tungstenite::connect_async(page_socket).await.unwrap();
        let mut browser = Browser {
            child,
            profile,
            page,
            next_id: 0,
        };
        browser
            .wait_for("!!document.getElementById('talk')", |v| *v == true)
            .await;
        browser
    }

    /// One DevTools call on the page: its result (events in between are skipped).
    pub(crate) async fn cdp(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.page
            .send(Message::Text(request.to_string().into()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(PATIENCE, self.page.next())
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

    /// The value of `expression` in the page (awaited when a promise, run as a user gesture).
    pub(crate) async fn evaluate(&mut self, expression: &str) -> Value {
        let result = self
            .cdp(
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

    /// Evaluates `expression` until `done` holds for its value, within [`PATIENCE`].
    pub(crate) async fn wait_for(
        &mut self,
        expression: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let value = self.evaluate(expression).await;
            if done(&value) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never got there: {expression} is {value}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A PNG of the page.
    pub(crate) async fn screenshot(&mut self) -> Vec<u8> {
        let shot = self
            .cdp("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64_decode(shot["data"].as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
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
