//! The library calls behind `turnflow simulate`.
//!
//! Run with: `cargo run --example simulate [SCENARIO.json]`
//!
//! Runs the scenario on tokio's paused clock over an in-memory transport (instant and exact),
//! then prints each turn's metrics and the history the user heard.

use std::sync::Arc;

use turnflow::scenario::Scenario;
use turnflow::sim::{SimulationConfig, Transport, run};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scenario = match std::env::args().nth(1) {
        Some(path) => Scenario::load(path.as_ref())?,
        None => Scenario::demo(),
    };
    let mut config = SimulationConfig::new(Arc::new(scenario));
    config.transport = Transport::Memory;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let result = runtime.block_on(run(config))?;
    for turn in &result.report.turns {
        println!(
            "turn {}: {:?} -> speculation {}, response {:?} ms, heard {:?}{}",
            turn.index,
            turn.user_transcript,
            turn.speculation,
            turn.response_latency_ms,
            turn.assistant_heard,
            if turn.interrupted { " (cut)" } else { "" }
        );
    }
    println!("\n{}", serde_json::to_string_pretty(&result.history)?);
    Ok(())
}
