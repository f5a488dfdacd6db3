//! The engine end to end on tokio's paused clock: emulator (in memory) -> Flux client ->
//! session -> scripted LLM -> synthetic TTS -> playout.

use std::sync::Arc;

use turnflow::engine::EngineEvent;
use turnflow::scenario::Scenario;
use turnflow::sim::{SimulationConfig, SimulationResult, Transport, run};

async fn simulate(path: &str, tweak: impl FnOnce(&mut SimulationConfig)) -> SimulationResult {
    let scenario = Arc::new(Scenario::load(path.as_ref()).unwrap());
    let mut config = SimulationConfig::new(scenario);
    config.transport = Transport::Memory;
    tweak(&mut config);
    run(config).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn demo_runs_end_to_end() {
    let r = simulate("scenarios/demo.json", |_| {}).await;
    let report = serde_json::to_string_pretty(&r.report).unwrap();
    println!("{report}");
    for e in &r.events {
        println!("{e:?}");
    }
    println!("{:#?}", r.history);
    assert!(r.report.turns.len() >= 4);
}
