//! Connect the Flux client to a local emulator and print the turn events of one scenario.
//!
//! Run with: `cargo run --example flux_events [SCENARIO.json]` (default: scenarios/eager_miss.json).
//! Everything stays on 127.0.0.1; the audio is paced in real time, as a microphone would be.

use std::sync::Arc;
use std::time::Duration;

use turnflow::emulator::{EmulatorConfig, EmulatorServer};
use turnflow::flux::{
    Encoding, FluxConfig, FluxEventKind, ListenOptions, TurnEvent, WebSocketConnector, connect,
};
use turnflow::scenario::Scenario;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "scenarios/eager_miss.json".into());
    let scenario = Arc::new(Scenario::load(path.as_ref())?);
    let server = EmulatorServer::bind(
        "127.0.0.1:0".parse()?,
        EmulatorConfig::new(scenario.clone()),
    )
    .await?;
    let thresholds = scenario.listen.unwrap_or_default();
    let options = ListenOptions::raw(Encoding::Linear16, 16000).with_thresholds(thresholds);
    let config = FluxConfig::new(options).with_base_url(server.base_url());
    let (flux, mut events) = connect(config, Arc::new(WebSocketConnector)).await?;
    println!(
        "connected to {} (request id {})",
        server.base_url(),
        flux.request_id()
    );

    let sender = flux.sender();
    let feeder = tokio::spawn(async move {
        // 6 s of silence in 20 ms pieces: scenario turns with `at_ms` starts need no speech.
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..300 {
            ticker.tick().await;
            if sender.send_audio(vec![0u8; 640]).await.is_err() {
                break;
            }
        }
    });
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                Ok(e) => {
                    if let FluxEventKind::Turn(t) = e.kind
                        && t.info.event != TurnEvent::Update
                    {
                        println!(
                            "{:>6.2}s  {:<15} {:?}",
                            t.info.audio_window_end,
                            t.info.event.as_str(),
                            t.info.transcript
                        );
                    }
                }
                Err(e) => eprintln!("flux error: {e}"),
            }
        }
    });
    feeder.await?;
    flux.close().await?;
    printer.await?;
    server.shutdown().await;
    Ok(())
}
