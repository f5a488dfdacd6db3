//! The latency lab end to end: a conversation recorded on the virtual clock replays to the
//! identical report with its own settings, and other thresholds change what they should.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use turnflow::llm::ToolExecutor;

use turnflow::lab::{ReplaySettings, Timeline, replay};
use turnflow::recording::{RecordedSettings, Recorder, Recording};
use turnflow::scenario::Scenario;
use turnflow::sim::{SimulationConfig, SimulationResult, Transport};

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
    let result = turnflow::sim::run(config).await.expect("simulation runs");
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
        tools: Vec::new(),
    }
    .with_tools(&turnflow::tools::DemoRestaurant::default().specs());
    recorder
        .write(dir, "simulate", settings, 16000, 16000, Some(&result.log))
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

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn eot_bench_rows_import_and_a_sweep_trades_cut_offs_for_dead_air() {
    use turnflow::lab::{Sweep, import_eot_bench, run_sweep};
    let rows = import_eot_bench("tests/fixtures/eot_bench/rows.jsonl".as_ref()).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].meta.source, "import:eot-bench");
    // The 8 kHz WAV is resampled to 16 kHz and padded to 6.24 s after the last word (3.7 s).
    assert_eq!(rows[0].user_audio.len(), 159_040);
    let bases: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let s = ReplaySettings::recorded(&r.meta.settings).unwrap();
            (r, s)
        })
        .collect();
    for (recording, settings) in &bases {
        let outcome = replay(recording, settings).await.unwrap();
        let timeline = Timeline::from_flux(&recording.flux);
        assert_eq!(outcome.derivation.differences(&timeline), vec![]);
        // No model or voice was recorded: every reply is the scripted model's, and says so.
        assert!(!outcome.generated_replies.is_empty());
    }
    let sweep: Sweep = "eot=0.5,0.7".parse().unwrap();
    let rows = run_sweep(&bases, &sweep).await.unwrap();
    // The first row holds 1.2 s mid-sentence: 0.5 ends the turn there, 0.7 waits it out and
    // answers the final pause later.
    assert_eq!(rows[0].turn_taking.premature_ends, 1);
    assert_eq!(rows[1].turn_taking.premature_ends, 0);
    assert!(rows[1].voice_to_voice_p50_ms > rows[0].voice_to_voice_p50_ms);
}

#[test]
fn bad_recordings_and_rows_are_refused_with_the_file_line_and_reason() {
    let dir = scratch("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let missing = Recording::load(&dir).unwrap_err().to_string();
    assert!(missing.contains("recording.json"), "{missing}");

    let meta = |version: u32| {
        format!(
            r#"{{"format":"turnflow-recording","version":{version},"source":"run","user_sample_rate":16000,
            "voice_sample_rate":16000,"audio_start_ms":0,"settings":{{"eager_eot_threshold":null,
            "eot_threshold":0.7,"eot_timeout_ms":5000,"speculation":true,"barge_in":"sometimes",
            "presynthesis":"off","system_prompt":null,"llm":"x","tts":"y"}}}}"#
        )
    };
    std::fs::write(dir.join("recording.json"), meta(2)).unwrap();
    let error = Recording::load(&dir).unwrap_err().to_string();
    assert!(
        error.contains("recording version 2; this build reads version 1"),
        "{error}"
    );
    std::fs::write(dir.join("recording.json"), meta(1)).unwrap();
    let error = Recording::load(&dir).unwrap_err().to_string();
    assert!(error.contains("user.wav"), "{error}");
    turnflow::audio::write_wav(&dir.join("user.wav"), 16000, 1, &[0; 320]).unwrap();
    std::fs::write(dir.join("flux.jsonl"), "{\"t_ms\": 1}\n").unwrap();
    let error = Recording::load(&dir).unwrap_err().to_string();
    assert!(
        error.contains("flux.jsonl line 1") && error.contains("missing field"),
        "{error}"
    );
    std::fs::write(dir.join("flux.jsonl"), "").unwrap();
    let recording = Recording::load(&dir).unwrap();
    let error = ReplaySettings::recorded(&recording.meta.settings)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("settings.barge_in: \"sometimes\": expected `immediate`"),
        "{error}"
    );

    let rows = dir.join("rows.jsonl");
    std::fs::write(
        &rows,
        "{\"id\":\"a\",\"language\":\"en\",\"audio\":{\"array\":[0.0],\"sampling_rate\":8000},\"silence_spans\":[[0.0,0.1]]}\n{\"id\":\"b\",\"language\":\"en\"}\n",
    )
    .unwrap();
    let error = turnflow::lab::import_eot_bench(&rows)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("line 1") && error.contains("nothing to replay"),
        "{error}"
    );
    std::fs::write(&rows, "{\"id\":\"b\",\"language\":\"en\"}\n").unwrap();
    let error = turnflow::lab::import_eot_bench(&rows)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("line 1") && error.contains("audio"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn recorded_provider_failures_replay_as_they_happened() {
    use turnflow::engine::Backends;
    use turnflow::llm::ScriptedLlm;
    use turnflow::llm::scripted::Fault;
    use turnflow::tts::SyntheticTts;
    let dir = scratch("failures");
    let scenario = Arc::new(Scenario::load("scenarios/demo.json".as_ref()).unwrap());
    let mut config = SimulationConfig::new(scenario.clone());
    config.transport = Transport::Memory;
    // The first request is refused (a server error), the second breaks after two tokens, and
    // the voice fails its third sentence.
    config.backends = Some(Backends {
        llm: Arc::new(
            ScriptedLlm::from_scenario(&scenario)
                .fail_call(0, Fault::Reject(503))
                .fail_call(1, Fault::FailAfterTokens(2)),
        ),
        tts: Arc::new(
            SyntheticTts::new(16000, scenario.tts.clone())
                .fail_call(2, turnflow::tts::synthetic::TtsFault::Fail),
        ),
        tools: None,
    });
    let recorder = Recorder::new();
    config.recorder = Some(recorder.clone());
    let thresholds = config.thresholds;
    let original = turnflow::sim::run(config).await.unwrap();
    let options = turnflow::flux::ListenOptions::default().with_thresholds(thresholds);
    let mut session = turnflow::engine::SessionConfig::default();
    session.machine.system_prompt = scenario.system_prompt.clone();
    let settings = RecordedSettings::of(&session, &options, "scripted", "synthetic");
    recorder
        .write(
            &dir,
            "simulate",
            settings,
            16000,
            16000,
            Some(&original.log),
        )
        .unwrap();
    let recording = Recording::load(&dir).unwrap();
    let llm = std::fs::read_to_string(dir.join("llm.jsonl")).unwrap();
    assert!(llm.contains("\"event\":\"error\""), "{llm}");
    let tts = std::fs::read_to_string(dir.join("tts.jsonl")).unwrap();
    assert!(tts.contains("\"event\":\"error\""), "{tts}");
    let replayed = replay(
        &recording,
        &ReplaySettings::recorded(&recording.meta.settings).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::to_value(&replayed.result.report).unwrap(),
        serde_json::to_value(&original.report).unwrap()
    );
    assert_eq!(replayed.result.history, original.history);
    let _ = std::fs::remove_dir_all(&dir);
}
