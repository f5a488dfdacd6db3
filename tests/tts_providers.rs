//! OpenAI-compatible speech against a loopback HTTP server, and the local espeak-ng voice.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use turnflow::flux::ApiKey;
use turnflow::tts::espeak::ESPEAK_RATE;
use turnflow::tts::{Espeak, OpenAiSpeech, SpeechSynthesizer};

/// Answers one request with `status` and `body` sent in the given pieces (chunked encoding).
async fn server(status: u16, pieces: Vec<Vec<u8>>) -> (String, Arc<Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&request).contains("\"response_format\"") {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        *record.lock().unwrap() = String::from_utf8_lossy(&request).into_owned();
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: audio/pcm\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        for piece in pieces {
            socket
                .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await
                .unwrap();
            socket.write_all(&piece).await.unwrap();
            socket.write_all(b"\r\n").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        socket.write_all(b"0\r\n\r\n").await.unwrap();
    });
    (format!("http://{addr}/v1"), seen)
}

#[tokio::test]
async fn openai_speech_streams_pcm_even_when_chunks_split_a_sample() {
    let samples: Vec<i16> = (0..100).map(|i| i * 300 - 15000).collect();
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    // 201 bytes, then the rest: the first chunk ends in the middle of a sample.
    let (base, seen) = server(200, vec![bytes[..101].to_vec(), bytes[101..].to_vec()]).await;
    let tts = OpenAiSpeech::new(
        &base,
        "gpt-4o-mini-tts",
        "alloy",
        Some(ApiKey::new("sk-x")),
        "OPENAI_API_KEY",
    )
    .unwrap();
    assert_eq!(tts.sample_rate(), 24000);
    let mut got = Vec::new();
    let mut stream = tts.synthesize("Hello there.").await.unwrap();
    while let Some(chunk) = stream.next().await {
        got.extend(chunk.unwrap().samples);
    }
    assert_eq!(got, samples);
    let request = seen.lock().unwrap().clone();
    assert!(request.starts_with("POST /v1/audio/speech HTTP/1.1"));
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: bearer sk-x")
    );
    let body: serde_json::Value =
        serde_json::from_str(&request[request.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"model": "gpt-4o-mini-tts", "input": "Hello there.", "voice": "alloy", "response_format": "pcm"})
    );
}

#[tokio::test]
async fn openai_speech_401_names_the_key_variable() {
    let (base, _) = server(401, vec![b"{\"error\":{\"message\":\"bad key\"}}".to_vec()]).await;
    let tts = OpenAiSpeech::new(&base, "tts-1", "alloy", None, "MY_TTS_KEY").unwrap();
    let Err(e) = tts.synthesize("x").await else {
        panic!("expected an error")
    };
    assert!(
        e.to_string().contains("check MY_TTS_KEY") && e.to_string().contains("bad key"),
        "{e}"
    );
    assert!(OpenAiSpeech::new("http://example.com/v1", "m", "v", None, "K").is_err());
}

#[tokio::test]
async fn espeak_speaks_when_installed_and_says_how_to_install_it_otherwise() {
    let tts = Espeak::new("en-us", 170);
    let result = tts.synthesize("Hello, this is a real voice.").await;
    if Espeak::available() {
        let mut stream = result.unwrap();
        let mut samples = Vec::new();
        while let Some(chunk) = stream.next().await {
            samples.extend(chunk.unwrap().samples);
        }
        let seconds = samples.len() as f64 / f64::from(tts.sample_rate());
        assert!((0.8..6.0).contains(&seconds), "{seconds} s of speech");
        assert!(samples.iter().any(|s| s.unsigned_abs() > 3000), "audible");
    } else {
        let Err(e) = result else {
            panic!("espeak-ng is not installed, yet synthesis started")
        };
        assert!(e.to_string().contains("apt-get install espeak-ng"));
    }
}

#[tokio::test]
async fn espeak_speaks_text_that_looks_like_options() {
    if !Espeak::available() {
        // `.ci/run` installs espeak-ng and sets this, so CI never skips it.
        assert!(
            std::env::var_os("TURNFLOW_REQUIRE_ESPEAK").is_none(),
            "espeak-ng is required here"
        );
        return;
    }
    let target = std::env::temp_dir().join(format!("turnflow-espeak-{}.wav", std::process::id()));
    let tts = Espeak::new("en-us", 170);
    let text = format!("-w {} --version", target.display());
    let mut stream = tts.synthesize(&text).await.unwrap();
    let mut samples = 0;
    while let Some(chunk) = stream.next().await {
        samples += chunk.unwrap().samples.len();
    }
    assert!(
        samples > ESPEAK_RATE as usize / 2,
        "the words were spoken: {samples}"
    );
    assert!(!target.exists(), "the text was not read as -w FILE");
}
