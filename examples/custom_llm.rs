//! Plug your own language model into a session.
//!
//! Run with: `cargo run --example custom_llm`
//!
//! The model below answers by counting the user's words; replace its body with a call to your
//! own backend. The session is real: a Flux emulator on 127.0.0.1 plays
//! `scenarios/eager_hit.json`, the Flux client streams audio to it, and the engine speculates on
//! `EagerEndOfTurn`, speaks through the synthetic voice and prints what happens.

use std::sync::Arc;
use std::time::Duration;

use turnflow::async_trait;
use turnflow::emulator::{EmulatorConfig, EmulatorServer};
use turnflow::engine::{
    AudioSink, Backends, CancellationToken, EngineEvent, SessionConfig, start_session,
};
use turnflow::flux::{FluxConfig, ListenOptions, Thresholds, WebSocketConnector, connect};
use turnflow::llm::{LanguageModel, LlmChunk, LlmError, LlmRequest, LlmStream, Message};
use turnflow::scenario::{Scenario, TtsTiming};
use turnflow::tts::SyntheticTts;

/// Your model: stream the reply as chunks; dropping the stream must cancel the request.
struct WordCounter;

#[async_trait]
impl LanguageModel for WordCounter {
    fn name(&self) -> &str {
        "word-counter"
    }

    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, LlmError> {
        let said = request
            .messages
            .iter()
            .rev()
            .find_map(|m| match m {
                Message::User { content } => Some(content.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let reply = format!(
            "You said {} words. Anything else?",
            said.split_whitespace().count()
        );
        let chunks: Vec<Result<LlmChunk, LlmError>> = reply
            .split_inclusive(' ')
            .map(|t| Ok(LlmChunk::Text(t.to_owned())))
            .chain([Ok(LlmChunk::End {
                finish_reason: Some("stop".into()),
            })])
            .collect();
        Ok(Box::pin(turnflow::stream::iter(chunks)))
    }
}

/// Where the agent's audio goes; a real agent writes to a speaker or a phone line.
struct Discard;

impl AudioSink for Discard {
    fn write(&mut self, _frame: &[i16]) {}
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scenario = Scenario::load("scenarios/eager_hit.json".as_ref())?;
    let emulator = EmulatorServer::bind(
        "127.0.0.1:0".parse()?,
        EmulatorConfig::new(Arc::new(scenario)),
    )
    .await?;

    let options = ListenOptions::default().with_thresholds(Thresholds {
        eager_eot_threshold: Some(0.5),
        ..Thresholds::default()
    });
    let (flux, flux_events) = connect(
        FluxConfig::new(options).with_base_url(emulator.base_url()),
        Arc::new(WebSocketConnector),
    )
    .await?;
    let backends = Backends {
        llm: Arc::new(WordCounter),
        tts: Arc::new(SyntheticTts::new(16000, TtsTiming::default())),
        tools: None,
    };
    let (session, mut events) = start_session(
        SessionConfig::default(),
        flux_events,
        backends,
        Box::new(Discard),
        CancellationToken::new(),
    );

    // The microphone: 7 s of 16 kHz silence in 20 ms frames (this scenario's turn is scripted
    // by audio time, so silence is enough).
    let mic = flux.sender();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..350 {
            tick.tick().await;
            if mic.send_audio(vec![0u8; 640]).await.is_err() {
                break;
            }
        }
    });
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                EngineEvent::UserFinished { transcript, .. } => println!("user:  {transcript}"),
                EngineEvent::SpeculationPromoted { response, .. } => {
                    println!("       ({response} was speculative, promoted)")
                }
                EngineEvent::ResponseEnded { heard, .. } if !heard.is_empty() => {
                    println!("agent: {heard}")
                }
                _ => {}
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(7)).await;
    flux.close().await?;
    let outcome = session.finished().await;
    printer.await?;
    println!("history: {} messages", outcome.history.len());
    emulator.shutdown().await;
    Ok(())
}
