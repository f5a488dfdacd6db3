//! The Aura TTS client against a loopback WebSocket server that speaks `/v1/speak`: Speak,
//! Flush -> audio frames -> Flushed, Clear -> Cleared, Warning, close codes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use turnflow::flux::ApiKey;
use turnflow::tts::{AuraTts, SpeechCut, SpeechSynthesizer};

#[derive(Default)]
struct Log {
    connections: usize,
    urls: Vec<String>,
    auth: Vec<String>,
    texts: Vec<String>,
}

/// How the fake server behaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// 4 frames of 20 ms per Flush, quickly.
    Normal,
    /// 20 frames per Flush, 10 ms apart (so a client can leave mid-sentence).
    Slow,
    /// Close with 1008 DATA-0001 on the first Flush.
    RateLimited,
    /// Close the socket after each Flushed.
    DropAfterEach,
    /// Like Slow, but never answer Clear.
    NeverClears,
}

#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
async fn aura_server(mode: Mode) -> (String, Arc<Mutex<Log>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let record = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut seen = (String::new(), String::new());
                let ws =
                    tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
                        seen.0 = req.uri().to_string();
                        seen.1 = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        Ok(resp)
                    })
                    .await
                    .unwrap();
                {
                    let mut l = record.lock().unwrap();
                    l.connections += 1;
                    l.urls.push(seen.0);
                    l.auth.push(seen.1);
                }
                let (mut tx, mut rx) = ws.split();
                let _ = tx
                    .send(Message::text(r#"{"type":"Metadata","request_id":"0e5d8c41-2a9b-4c7e-b3f6-58d1a0e29c74","model_name":"aura-2-thalia-en","model_version":"2025-04-07.0","model_uuid":"d9a1c3e5-7b2f-4a60-9e84-1c3b5d7f9a02"}"#))
                    .await;
                let mut sequence = 0;
                let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
                // Sentences numbered below this were cleared. Held while checking and sending, so
                // nothing of a cleared sentence follows Cleared; a number rather than a flag, so
                // the next sentence's Flush cannot revive a writer of the cleared one still asleep.
                let cleared_below = Arc::new(Mutex::new(0));
                loop {
                    tokio::select! {
                        out = frames_rx.recv() => {
                            let Some(out) = out else { break };
                            let close = matches!(out, Message::Close(_));
                            if tx.send(out).await.is_err() || close { break; }
                        }
                        msg = rx.next() => {
                            let Some(Ok(Message::Text(text))) = msg else { break };
                            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                            match v["type"].as_str().unwrap() {
                                "Speak" => record.lock().unwrap().texts.push(v["text"].as_str().unwrap().to_owned()),
                                "Flush" => {
                                    if mode == Mode::RateLimited {
                                        let _ = frames_tx.send(Message::Close(Some(CloseFrame { code: 1008.into(), reason: "DATA-0001".into() })));
                                        continue;
                                    }
                                    let (count, pause) = if matches!(mode, Mode::Slow | Mode::NeverClears) { (20, 10) } else { (4, 0) };
                                    let frames_tx = frames_tx.clone();
                                    let seq = sequence;
                                    sequence += 1;
                                    let cleared_below = cleared_below.clone();
                                    tokio::spawn(async move {
                                        let _ = frames_tx.send(Message::text(r#"{"type":"Warning","warn_code":"W1","warn_msg":"old spelling"}"#));
                                        for _ in 0..count {
                                            tokio::time::sleep(Duration::from_millis(pause)).await;
                                            // Sample value = sentence number, so frames can be traced to their sentence.
                                            let pcm: Vec<u8> = std::iter::repeat_n(((seq + 1) as i16 * 1000).to_le_bytes(), 320).flatten().collect();
                                            let cleared_below = cleared_below.lock().unwrap();
                                            if seq < *cleared_below { return; }
                                            let _ = frames_tx.send(Message::Binary(pcm.into()));
                                        }
                                        let _ = frames_tx.send(Message::text(format!(r#"{{"type":"Flushed","sequence_id":{seq}}}"#)));
                                        if mode == Mode::DropAfterEach {
                                            let _ = frames_tx.send(Message::Close(None));
                                        }
                                    });
                                }
                                "Clear" if mode == Mode::NeverClears => {}
                                "Clear" => {
                                    let mut cleared_below = cleared_below.lock().unwrap();
                                    *cleared_below = sequence;
                                    let _ = frames_tx.send(Message::text(format!(r#"{{"type":"Cleared","sequence_id":{sequence}}}"#)));
                                }
                                _ => {}
                            }
                        }
                    }
                }
            });
        }
    });
    (format!("ws://{addr}"), log)
}

async fn speak(tts: &dyn SpeechSynthesizer, text: &str) -> Result<Vec<i16>, String> {
    let mut stream = tts.synthesize(text).await.map_err(|e| e.to_string())?;
    let mut samples = Vec::new();
    while let Some(chunk) = stream.next().await {
        samples.extend(chunk.map_err(|e| e.to_string())?.samples);
    }
    Ok(samples)
}

#[tokio::test]
async fn sentences_share_one_socket_and_end_at_flushed() {
    let (url, log) = aura_server(Mode::Normal).await;
    let tts = AuraTts::new(
        &url,
        "aura-2-thalia-en",
        16000,
        Some(ApiKey::new("dg-secret")),
    )
    .unwrap();
    let first = speak(&tts, "Hello there.").await.unwrap();
    let second = speak(&tts, "How can I help?").await.unwrap();
    assert_eq!(first.len(), 4 * 320);
    assert!(first.iter().all(|s| *s == 1000));
    assert!(second.iter().all(|s| *s == 2000));
    let l = log.lock().unwrap();
    assert_eq!(l.connections, 1, "one socket per conversation");
    assert_eq!(
        l.urls[0],
        "/v1/speak?model=aura-2-thalia-en&encoding=linear16&sample_rate=16000"
    );
    assert_eq!(l.auth[0], "Token dg-secret");
    assert_eq!(l.texts, vec!["Hello there.", "How can I help?"]);
}

#[tokio::test]
async fn each_conversation_has_a_socket_of_its_own() {
    let (url, log) = aura_server(Mode::Normal).await;
    let tts = AuraTts::new(&url, "aura-2-thalia-en", 16000, None).unwrap();
    let first = tts.for_conversation().unwrap();
    let second = tts.for_conversation().unwrap();
    speak(&*first, "Hello.").await.unwrap();
    speak(&*second, "Hi.").await.unwrap();
    speak(&*first, "Again.").await.unwrap();
    assert_eq!(log.lock().unwrap().connections, 2);
}

#[tokio::test]
async fn a_sentence_left_midway_is_cleared_and_its_frames_never_leak() {
    let (url, _log) = aura_server(Mode::Slow).await;
    let tts = AuraTts::new(&url, "aura-2-thalia-en", 16000, None).unwrap();
    let mut stream = tts
        .synthesize("A long sentence that will be cut.")
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.samples.iter().all(|s| *s == 1000));
    drop(stream);
    tts.clear(&SpeechCut::default()).await;
    let next = speak(&tts, "Next one.").await.unwrap();
    assert!(!next.is_empty());
    assert!(
        next.iter().all(|s| *s == 2000),
        "no frame of the cut sentence in the next one"
    );
}

#[tokio::test]
async fn a_socket_dropped_between_replies_is_reopened() {
    let (url, log) = aura_server(Mode::DropAfterEach).await;
    let tts = AuraTts::new(&url, "aura-2-thalia-en", 16000, None).unwrap();
    speak(&tts, "One.").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = speak(&tts, "Two.").await;
    let second = match second {
        Ok(s) => s,
        // The close may arrive as this sentence starts; the next one reconnects.
        Err(_) => speak(&tts, "Two.").await.unwrap(),
    };
    assert!(!second.is_empty());
    assert!(log.lock().unwrap().connections >= 2);
}

#[tokio::test]
async fn rate_limit_close_is_an_error_that_says_so() {
    let (url, _log) = aura_server(Mode::RateLimited).await;
    let tts = AuraTts::new(&url, "aura-2-thalia-en", 16000, None).unwrap();
    let e = speak(&tts, "Hello.").await.unwrap_err();
    assert!(
        e.contains("1008 DATA-0001") && e.contains("rate limit"),
        "{e}"
    );
    let again = speak(&tts, "Hello again.").await.unwrap_err();
    assert!(
        again.contains("backing off"),
        "no new request during the back-off: {again}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_confirms_a_clear_is_replaced_not_waited_for() {
    let (url, log) = aura_server(Mode::NeverClears).await;
    let tts = AuraTts::new(&url, "aura-2-thalia-en", 16000, None).unwrap();
    let mut stream = tts
        .synthesize("A long sentence that will be cut.")
        .await
        .unwrap();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let started = tokio::time::Instant::now();
    tts.clear(&SpeechCut::default()).await;
    assert!(started.elapsed() <= turnflow::tts::aura::CLEAR_TIMEOUT + Duration::from_millis(50));
    let next = speak(&tts, "Next one.").await.unwrap();
    assert!(!next.is_empty());
    assert!(
        next.iter().all(|s| *s == 1000),
        "a fresh socket: its first sentence, nothing of the cut one"
    );
    assert_eq!(log.lock().unwrap().connections, 2);
}
