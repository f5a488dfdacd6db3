//! An hour-long conversation on tokio's paused clock: everything a session keeps stays within
//! its limits however long the call goes on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use turnflow::emulator::{EmulatorConfig, MemoryEmulator};
use turnflow::engine::{AudioSink, Backends, CancellationToken, SessionConfig, start_session};
use turnflow::flux::{FluxConfig, ListenOptions, connect};
use turnflow::llm::{LanguageModel, LlmError, LlmRequest, LlmStream, ScriptedLlm};
use turnflow::scenario::Scenario;
use turnflow::tts::SyntheticTts;

const TURNS: usize = 300;
const TURN_EVERY_MS: u64 = 12_000;

/// Remembers the longest request it was asked to answer.
struct Measuring {
    inner: ScriptedLlm,
    longest_request: AtomicUsize,
}

#[async_trait]
impl LanguageModel for Measuring {
    fn name(&self) -> &str {
        "measuring"
    }

    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, LlmError> {
        self.longest_request
            .fetch_max(request.messages.len(), Ordering::Relaxed);
        self.inner.stream(request).await
    }
}

struct Silent;

impl AudioSink for Silent {
    fn write(&mut self, _frame: &[i16]) {}
}

#[tokio::test(start_paused = true)]
async fn an_hour_of_conversation_stays_within_every_limit() {
    let turns: Vec<String> = (0..TURNS)
        .map(|i| {
            format!(
                r#"{{"start":{{"at_ms":{}}},"say":"Question number {i}.","reply":"Answer number {i}."}}"#,
                500 + i as u64 * TURN_EVERY_MS
            )
        })
        .collect();
    let scenario = Scenario::parse(
        &format!(
            r#"{{"name":"hour","listen":{{"eot_threshold":0.7}},"turns":[{}]}}"#,
            turns.join(",")
        ),
        "hour",
    )
    .unwrap();
    let emulator = MemoryEmulator::new(EmulatorConfig::new(Arc::new(scenario.clone())));
    let (flux, flux_events) = connect(
        FluxConfig::new(ListenOptions::default()),
        Arc::new(emulator.clone()),
    )
    .await
    .unwrap();
    let llm = Arc::new(Measuring {
        inner: ScriptedLlm::from_scenario(&scenario),
        longest_request: AtomicUsize::new(0),
    });
    let mut config = SessionConfig::default();
    config.log_limit = 2_000;
    config.machine.context_messages = 20;
    config.machine.history_limit = 50;
    let backends = Backends {
        llm: llm.clone(),
        tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
        tools: None,
    };
    let (session, events) = start_session(
        config,
        flux_events,
        backends,
        Box::new(Silent),
        CancellationToken::new(),
    );
    let log = session.log();

    let hour = Duration::from_millis(TURNS as u64 * TURN_EVERY_MS);
    let chunk = Duration::from_millis(400);
    let mut sent = Duration::ZERO;
    let mut samples = Vec::new();
    while sent < hour {
        flux.send_audio(vec![0u8; 16 * 2 * 400]).await.unwrap();
        tokio::time::sleep(chunk).await;
        sent += chunk;
        if sent.as_millis().is_multiple_of(600_000) {
            samples.push((log.len(), log.dropped(), events.len()));
        }
    }
    flux.close().await.unwrap();
    let outcome = session.finished().await;
    emulator.shutdown().await;

    assert_eq!(samples.len(), 6, "one sample every ten minutes");
    for (i, &(kept, _, _)) in samples.iter().enumerate() {
        assert!(kept <= 2_000, "log at sample {i}: {kept}");
    }
    // Nobody reads the application events: the queue filled up long ago, and the session went
    // on regardless (every turn is answered below).
    assert_eq!(
        samples.last().unwrap().2,
        1024,
        "the event queue holds 1024 unread events: {samples:?}"
    );
    assert!(
        samples.last().unwrap().1 > 2_000,
        "the hour produced more entries than were kept: {samples:?}"
    );
    assert_eq!(
        outcome.replies.answered, TURNS as u64,
        "every turn was answered"
    );
    assert!(outcome.history.len() <= 50, "{}", outcome.history.len());
    assert_eq!(
        outcome.history.last(),
        Some(&turnflow::llm::Message::assistant(format!(
            "Answer number {}.",
            TURNS - 1
        )))
    );
    let longest = llm.longest_request.load(Ordering::Relaxed);
    assert!(longest <= 21, "context window: {longest} messages");
}
