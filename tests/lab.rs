//! The latency lab end to end: a conversation recorded on the virtual clock replays to the
//! identical report with its own settings, and other thresholds change what they should.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use turnflow::emulator::sim::{SimulationConfig, SimulationResult, Transport};
use turnflow::lab::derive::Timeline;
use turnflow::lab::{RecordedSettings, Recorder, Recording, ReplaySettings, replay};
use turnflow::scenario::Scenario;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("turnflow-lab-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `scenario` on the paused clock with a recorder and writes the recording to `dir`.
async fn record(scenario: &str, dir: &Path) -> SimulationResult {
    let scenario = Arc::new(Scenario::load(scenario.as_ref()).expect("scenario loads"));
    let mut config = SimulationConfig::new(scenario.clone());
    config.transport = Transport::Memory;
    let recorder = Recorder::new();
    config.recorder = Some(recorder.clone());
    let thresholds = config.thresholds;
    let result = turnflow::emulator::sim::run(config)
        .await
        .expect("simulation runs");
    let settings = RecordedSettings {
        eager_eot_threshold: thresholds.eager_eot_threshold,
        eot_threshold: thresholds.eot_threshold,
        eot_timeout_ms: thresholds.eot_timeout_ms,
        speculation: true,
        barge_in: "immediate".into(),
        presynthesis: "first-chunk".into(),
        system_prompt: scenario.system_prompt.clone(),
        llm: "scripted".into(),
        tts: "synthetic".into(),
    };
    recorder
        .write(dir, "simulate", settings, 16000, 16000, &result.log)
        .expect("recording written");
    result
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_scenario_replays_to_the_identical_report_with_its_own_settings() {
    for name in [
        "plain",
        "eager_hit",
        "eager_miss",
        "barge_in",
        "timeout",
        "demo",
        "quick_replies",
    ] {
        let dir = scratch(name);
        let original = record(&format!("scenarios/{name}.json"), &dir).await;
        let recording = Recording::load(&dir).expect("recording loads");
        let timeline = Timeline::from_flux(&recording.flux);
        let settings = ReplaySettings::recorded(&recording.meta.settings).expect("settings");
        let replayed = replay(&recording, &settings).await.expect("replay runs");
        assert_eq!(
            replayed.derivation.differences(&timeline),
            vec![],
            "{name}: the recorded thresholds re-derive every recorded event"
        );
        assert!(
            replayed.generated_replies.is_empty(),
            "{name}: {:?}",
            replayed.generated_replies
        );
        assert!(
            replayed.generated_speech.is_empty(),
            "{name}: {:?}",
            replayed.generated_speech
        );
        assert_eq!(
            serde_json::to_value(&replayed.result.report).unwrap(),
            serde_json::to_value(&original.report).unwrap(),
            "{name}: the replay's report is the original's"
        );
        assert_eq!(replayed.result.history, original.history, "{name}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn other_thresholds_change_the_turns_and_say_what_was_generated() {
    let dir = scratch("what-if");
    let original = record("scenarios/eager_miss.json", &dir).await;
    let recording = Recording::load(&dir).expect("recording loads");
    let recorded = ReplaySettings::recorded(&recording.meta.settings).unwrap();
    assert_eq!(original.report.summary.speculation.misses, 1);

    // The mid-sentence pause reaches 0.6: above an eager threshold of 0.65 it no longer is.
    let mut calmer = recorded.clone();
    calmer.thresholds.eager_eot_threshold = Some(0.65);
    let calm = replay(&recording, &calmer).await.unwrap();
    assert_eq!(calm.result.report.summary.speculation.misses, 0);
    assert_eq!(calm.derivation.turn_taking.resumed, 0);
    assert_eq!(calm.derivation.turn_taking.premature_ends, 0);

    // Without eager mode and an end-of-turn threshold of 0.55, the pause ends the turn: the
    // user is cut off mid-sentence. They go on before the reply to the half sentence is heard,
    // so the engine answers both halves together: a request the recording made too.
    let mut hasty = recorded.clone();
    hasty.thresholds.eager_eot_threshold = None;
    hasty.thresholds.eot_threshold = Some(0.55);
    let cut = replay(&recording, &hasty).await.unwrap();
    assert_eq!(cut.derivation.turn_taking.ends, 2);
    assert_eq!(cut.derivation.turn_taking.premature_ends, 1);
    assert!(
        cut.generated_replies.is_empty(),
        "{:?}",
        cut.generated_replies
    );
    let users: Vec<_> = cut
        .result
        .history
        .iter()
        .filter_map(|m| match m {
            turnflow::llm::Message::User { content } => Some(content.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(users, ["I'd like to change my flight to Friday morning."]);
    assert_ne!(
        serde_json::to_value(&cut.result.report).unwrap(),
        serde_json::to_value(&original.report).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
