//! A model or a voice that is down for everyone, on tokio's paused clock: its breaker opens so
//! later sessions do not each wait on it, it is probed again after the cool-down, and the
//! apology kept in memory is heard even when the voice is what failed.

use std::sync::Arc;
use std::time::Duration;

use turnflow::engine::{Backends, EngineEvent};
use turnflow::error::{BackendError, ErrorKind};
use turnflow::llm::scripted::Fault;
use turnflow::llm::{FailoverLlm, LanguageModel, ScriptedLlm};
use turnflow::scenario::Scenario;
use turnflow::sim::{SimulationConfig, SimulationResult, Transport, run};
use turnflow::tts::synthetic::TtsFault;
use turnflow::tts::{SpeechSynthesizer, StoredSpeech, SyntheticTts};

const FALLBACK: &str = "Sorry, I'm having trouble right now. Could you say that again?";

const TWO_TURNS: &str = r#"{"name":"two","turns":[
    {"start":{"at_ms":500},"phrases":[{"text":"When do you open?","ramp_ms":300}],"reply":"We open at nine in the morning."},
    {"start":{"after_agent_ms":500},"phrases":[{"text":"Thanks.","ramp_ms":300}],"reply":"You're welcome."}]}"#;

fn two_turns() -> Arc<Scenario> {
    Arc::new(Scenario::parse(TWO_TURNS, "two").unwrap())
}

async fn simulate(
    llm: Arc<dyn LanguageModel>,
    tts: Arc<dyn SpeechSynthesizer>,
    stored: Option<StoredSpeech>,
) -> SimulationResult {
    let mut config = SimulationConfig::new(two_turns());
    config.transport = Transport::Memory;
    config.session.machine.speculation = false;
    config.session.response.stored_fallback = stored.map(Arc::new);
    config.backends = Some(Backends {
        llm,
        tts,
        tools: None,
    });
    run(config).await.unwrap()
}

fn heard(r: &SimulationResult) -> Vec<&str> {
    r.report
        .turns
        .iter()
        .map(|t| t.assistant_heard.as_str())
        .collect()
}

fn errors(r: &SimulationResult) -> Vec<BackendError> {
    r.events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::ResponseEnded { error: Some(e), .. } => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn voice() -> SyntheticTts {
    SyntheticTts::new(16000, two_turns().tts.clone())
}

#[tokio::test(start_paused = true)]
async fn a_model_down_for_everyone_is_skipped_until_its_cool_down_then_probed() {
    let mut model = ScriptedLlm::from_scenario(&two_turns());
    for call in 0..4 {
        model = model.fail_call(call, Fault::Reject(503));
    }
    let model = Arc::new(model);
    let mut chain = FailoverLlm::new(vec![model.clone()]);
    // Longer than a session, so that the second one meets the breaker open throughout.
    chain.cool_down = Duration::from_secs(60);
    let chain = Arc::new(chain);
    let tts: Arc<dyn SpeechSynthesizer> = Arc::new(voice());

    let first = simulate(chain.clone(), tts.clone(), None).await;
    assert_eq!(heard(&first), [FALLBACK, FALLBACK]);
    assert_eq!(model.calls(), 4, "each turn asked twice (one retry)");
    assert!(
        !chain.health()[0].up,
        "failing for seconds opened the breaker"
    );

    let second = simulate(chain.clone(), tts.clone(), None).await;
    assert_eq!(heard(&second), [FALLBACK, FALLBACK], "the apology, at once");
    assert_eq!(model.calls(), 4, "the next session did not ask the model");
    assert!(
        errors(&second)
            .iter()
            .all(|e| e.kind == ErrorKind::Unavailable),
        "{:?}",
        errors(&second)
    );

    tokio::time::sleep(chain.cool_down).await;
    let third = simulate(chain.clone(), tts, None).await;
    assert_eq!(
        heard(&third),
        ["We open at nine in the morning.", "You're welcome."],
        "probed after the cool-down, and back"
    );
    assert_eq!(model.calls(), 6);
    assert!(chain.health()[0].up);
}

#[tokio::test(start_paused = true)]
async fn a_chain_sends_later_sessions_straight_to_the_provider_that_answers() {
    let mut down = ScriptedLlm::from_scenario(&two_turns());
    for call in 0..2 {
        down = down.fail_call(call, Fault::Reject(503));
    }
    let down = Arc::new(down);
    let up = Arc::new(ScriptedLlm::from_scenario(&two_turns()));
    let chain = Arc::new(FailoverLlm::new(vec![down.clone(), up.clone()]));
    let tts: Arc<dyn SpeechSynthesizer> = Arc::new(voice());
    for _ in 0..3 {
        let r = simulate(chain.clone(), tts.clone(), None).await;
        assert_eq!(
            heard(&r),
            ["We open at nine in the morning.", "You're welcome."]
        );
    }
    assert_eq!(down.calls(), 2, "asked by the first reply only");
    assert_eq!(up.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn with_the_voice_down_the_kept_apology_is_heard() {
    let failing = || {
        let mut voice = voice();
        for call in 0..8 {
            voice = voice.fail_call(call, TtsFault::Fail);
        }
        Arc::new(voice)
    };
    let model = || Arc::new(ScriptedLlm::from_scenario(&two_turns()));

    let without = simulate(model(), failing(), None).await;
    assert_eq!(
        heard(&without),
        ["", ""],
        "asking the failed voice for the apology gets nothing"
    );

    let stored = StoredSpeech::render_with(&voice(), FALLBACK, Duration::from_secs(5))
        .await
        .unwrap();
    let voice = failing();
    let with = simulate(model(), voice.clone(), Some(stored)).await;
    assert_eq!(heard(&with), [FALLBACK, FALLBACK]);
    assert!(errors(&with).iter().all(|e| e.provider == "synthetic"));
    assert_eq!(
        voice.calls(),
        2,
        "one failed sentence per reply; the apology asked nothing of it"
    );
}
