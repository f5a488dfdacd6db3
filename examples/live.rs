//! A live agent on real services, configured from the environment.
//!
//! Run with (keys in the environment; nothing here runs without network access):
//! ```text
//! DEEPGRAM_API_KEY=... OPENAI_API_KEY=... cargo run --example live -- question.wav answer.wav
//! ```
//! Deepgram Flux hears `question.wav` (16 kHz mono 16-bit, streamed in real time), an
//! OpenAI model answers (`OPENAI_MODEL`, default `gpt-4o-mini`; `OPENAI_BASE_URL` for any
//! OpenAI-compatible server), Deepgram Aura speaks, and the agent's audio goes to `answer.wav`.
//! Without the keys it stops at once and names the missing variable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use turnflow::engine::{
    AudioSink, Backends, CancellationToken, EngineEvent, SessionConfig, start_session,
};
use turnflow::flux::{
    ApiKey, Encoding, FluxConfig, ListenOptions, Thresholds, WebSocketConnector, connect,
};
use turnflow::llm::OpenAiCompatible;
use turnflow::tts::AuraTts;
use turnflow::tts::aura::AURA_BASE_URL;

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<i16>>>);

impl AudioSink for Collect {
    fn write(&mut self, frame: &[i16]) {
        self.0
            .lock()
            .expect("collect lock")
            .extend_from_slice(frame);
    }
}

type Error = Box<dyn std::error::Error>;

fn key(name: &str) -> Result<String, Error> {
    match std::env::var(name) {
        Ok(k) if !k.is_empty() => Ok(k),
        _ => Err(format!("{name} is not set").into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (input, output) = (
        args.next().ok_or("usage: live QUESTION.wav ANSWER.wav")?,
        args.next().ok_or("usage: live QUESTION.wav ANSWER.wav")?,
    );
    let deepgram = key("DEEPGRAM_API_KEY")?;
    let openai = key("OPENAI_API_KEY")?;
    let bytes = std::fs::read(&input).map_err(|e| format!("{input}: cannot read: {e}"))?;
    let (format, offset) = turnflow::audio::parse_wav_header(&bytes)?.ok_or("truncated wav")?;
    if (format.sample_rate, format.channels) != (16000, 1) {
        return Err(format!("{input}: needs 16 kHz mono 16-bit PCM").into());
    }

    let options = ListenOptions::raw(Encoding::Linear16, 16000).with_thresholds(Thresholds {
        eager_eot_threshold: Some(0.5),
        ..Thresholds::default()
    });
    let (flux, events) = connect(
        FluxConfig::new(options).with_api_key(ApiKey::new(deepgram.clone())),
        Arc::new(WebSocketConnector),
    )
    .await?;
    let base =
        std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".into());
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
    let backends = Backends {
        llm: Arc::new(OpenAiCompatible::new(
            base,
            model,
            Some(ApiKey::new(openai)),
            "OPENAI_API_KEY",
        )?),
        tts: Arc::new(AuraTts::new(
            AURA_BASE_URL,
            "aura-2-thalia-en",
            16000,
            Some(ApiKey::new(deepgram)),
        )?),
        tools: None,
    };
    let mut config = SessionConfig::default();
    config.machine.system_prompt =
        Some("You are a helpful voice assistant. Answer in one or two short sentences.".into());
    let speaker = Collect::default();
    let (session, mut engine_events) = start_session(
        config,
        events,
        backends,
        Box::new(speaker.clone()),
        CancellationToken::new(),
    );
    tokio::spawn(async move {
        while let Some(event) = engine_events.recv().await {
            match event {
                EngineEvent::UserFinished { transcript, .. } => println!("user:  {transcript}"),
                EngineEvent::ResponseEnded { heard, error, .. } => {
                    println!(
                        "agent: {heard} {}",
                        error.map(|e| e.to_string()).unwrap_or_default()
                    )
                }
                _ => {}
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for chunk in bytes[offset..]
        .chunks(640)
        .chain(std::iter::repeat_n(&[0u8; 640][..], 400))
    {
        tick.tick().await;
        flux.send_audio(chunk.to_vec()).await?;
    }
    flux.close().await?;
    session.finished().await;
    let audio = speaker.0.lock().expect("collect lock").clone();
    turnflow::audio::write_wav(output.as_ref(), 16000, 1, &audio)?;
    println!("wrote {output}");
    Ok(())
}
