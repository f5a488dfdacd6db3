//! One full simulated turn through every layer (in-memory emulator, Flux client, session,
//! scripted LLM, synthetic TTS, playout) on tokio's paused clock: the CPU cost of a turn.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use turnflow::scenario::Scenario;
use turnflow::sim::{SimulationConfig, SimulationResult, Transport, run};

fn simulate(scenario: &Arc<Scenario>) -> SimulationResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let mut config = SimulationConfig::new(scenario.clone());
    config.transport = Transport::Memory;
    runtime.block_on(run(config)).unwrap()
}

fn bench(c: &mut Criterion) {
    let scenario = Arc::new(Scenario::load("scenarios/eager_hit.json".as_ref()).unwrap());
    // What is measured must be a real turn: answered, by the promoted speculation.
    let result = simulate(&scenario);
    assert_eq!(result.report.turns.len(), 1);
    assert_eq!(result.report.turns[0].speculation, "hit");
    assert!(!result.report.turns[0].assistant_heard.is_empty());
    c.bench_function("simulated_turn/eager_hit_virtual_clock", |b| {
        b.iter(|| simulate(&scenario))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
