//! The community `deepgram` crate (pinned) as an independent client of the emulator: its strict
//! parser must accept every message the emulator sends, event by event.

use std::sync::Arc;

use deepgram::Deepgram;
use deepgram::common::flux_response::{ConfigureThresholds, FluxResponse, TurnEvent};
use deepgram::common::options::{Encoding, Model, Options};
use deepgram::listen::flux::ConfigureRequest;
use turnflow::emulator::{EmulatorConfig, EmulatorServer};
use turnflow::scenario::Scenario;

#[tokio::test]
async fn the_deepgram_crate_parses_everything_the_emulator_sends() {
    let scenario = Scenario::load("scenarios/eager_miss.json".as_ref()).unwrap();
    let server = EmulatorServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorConfig::new(Arc::new(scenario)),
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let dg = Deepgram::with_base_url(base.as_str()).unwrap();
    let options = Options::builder()
        .model(Model::FluxGeneralEn)
        .eager_eot_threshold(0.5)
        .build();
    let mut handle = dg
        .transcription()
        .flux_request_with_options(options)
        .encoding(Encoding::Linear16)
        .sample_rate(16000)
        .handle()
        .await
        .unwrap();
    assert!(handle.request_id().is_some(), "dg-request-id is a uuid");
    handle
        .configure(ConfigureRequest::new().with_keyterms(["Friday"]))
        .await
        .unwrap();
    handle
        .configure(
            ConfigureRequest::new()
                .with_thresholds(ConfigureThresholds::new().with_eot_threshold(0.4)),
        )
        .await
        .unwrap();
    for _ in 0..75 {
        handle.send_data(vec![0u8; 2560]).await.unwrap();
    }
    handle.close_stream().await.unwrap();
    let mut seen = Vec::new();
    while let Some(response) = handle.receive().await {
        let response = response.unwrap_or_else(|e| panic!("the crate refused a message: {e}"));
        let name = match &response {
            FluxResponse::Connected { .. } => "Connected".to_owned(),
            FluxResponse::TurnInfo { event, .. } => format!("{event:?}"),
            FluxResponse::ConfigureSuccess { .. } => "ConfigureSuccess".to_owned(),
            FluxResponse::ConfigureFailure { .. } => "ConfigureFailure".to_owned(),
            other => panic!("unexpected {other:?}"),
        };
        if let FluxResponse::TurnInfo {
            event: TurnEvent::Unknown,
            ..
        } = response
        {
            panic!("an event the crate does not know");
        }
        seen.push(name);
    }
    for expected in [
        "Connected",
        "ConfigureSuccess",
        "ConfigureFailure",
        "Update",
        "StartOfTurn",
        "EagerEndOfTurn",
        "TurnResumed",
        "EndOfTurn",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "{expected} not in {seen:?}"
        );
    }
    server.shutdown().await;
}
