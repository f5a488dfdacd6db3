//! The Flux TTS voice (`/v2/speak`) against the emulator, in memory on tokio's paused clock and
//! once over a real loopback socket, and against a scripted server for what the emulator never
//! sends: replies streamed and flushed, barge-ins interrupted where the listener stopped, a
//! withdrawn guess interrupted, interrupts answered late, never, or after the turn ended, a
//! server error mid-reply, the idle and hour limits, and messages malformed, out of order or
//! unknown.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use turnflow::emulator::{EmulatorConfig, EmulatorServer, MemoryEmulator, SpeakFault};
use turnflow::error::ErrorKind;
use turnflow::flux::ApiKey;
use turnflow::flux::speak::{SpeakEvent, SpeakRequest, TurnMetadata};
use turnflow::scenario::Scenario;
use turnflow::tts::flux::{FluxTts, FluxTtsCounts};
use turnflow::tts::{SpeechCut, SpeechSynthesizer};
use turnflow::ws::{ConnectError, ConnectRequest, Connection, Connector, WireFrame, channel_pair};

const RATE: u32 = 16000;
/// The emulator's voice: 60 ms a character, 16 samples a millisecond.
const PER_CHAR: u64 = 960;

fn emulated(faults: Vec<SpeakFault>) -> (MemoryEmulator, EmulatorConfig) {
    let mut config = EmulatorConfig::new(Arc::new(Scenario::demo()));
    config.speak.faults = faults;
    (MemoryEmulator::new(config.clone()), config)
}

fn flux_voice(connector: Arc<dyn Connector>) -> FluxTts {
    FluxTts::new("ws://emulator.invalid", "flux-haley-en", RATE, None)
        .unwrap()
        .with_connector(connector)
}

/// The emulator with `faults`, a Flux voice on it, and one conversation's own voice.
fn start(faults: Vec<SpeakFault>) -> (MemoryEmulator, FluxTts, Arc<dyn SpeechSynthesizer>) {
    let (emulator, _) = emulated(faults);
    let shared = flux_voice(Arc::new(emulator.clone()));
    let voice = conversation(&shared);
    (emulator, shared, voice)
}

/// A conversation's own voice, and the shared one that counts for all.
fn conversation(voice: &FluxTts) -> Arc<dyn SpeechSynthesizer> {
    voice
        .for_conversation()
        .expect("flux tts keeps a socket per conversation")
}

async fn speak_whole(voice: &dyn SpeechSynthesizer, text: &str) -> u64 {
    let mut stream = voice.synthesize(text).await.unwrap();
    let mut samples = 0;
    while let Some(chunk) = stream.next().await {
        samples += chunk.unwrap().samples.len() as u64;
    }
    samples
}

/// Pulls at least `samples` of a sentence's audio, then drops the stream as a cut does.
async fn speak_until(voice: &dyn SpeechSynthesizer, text: &str, samples: u64) -> u64 {
    let mut stream = voice.synthesize(text).await.unwrap();
    let mut got = 0;
    while got < samples {
        got += stream.next().await.unwrap().unwrap().samples.len() as u64;
    }
    got
}

#[tokio::test(start_paused = true)]
async fn replies_are_streamed_flushed_and_counted_on_one_socket() {
    let (emulator, shared, voice) = start(Vec::new());
    assert_eq!(speak_whole(&*voice, "Hello there.").await, 12 * PER_CHAR);
    assert_eq!(
        speak_whole(&*voice, "Your table is booked for eight.").await,
        31 * PER_CHAR
    );
    let counts = shared.counts();
    assert_eq!(
        (
            counts.sockets,
            counts.turns,
            counts.billable_characters,
            counts.audio_ms
        ),
        (1, 2, 43, 43 * 60)
    );
    // Each conversation has a socket of its own.
    let other = conversation(&shared);
    speak_whole(&*other, "Hi.").await;
    assert_eq!(shared.counts().sockets, 2);
    drop((voice, other));
    emulator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_barge_in_is_interrupted_where_the_listener_stopped() {
    let (emulator, shared, voice) = start(Vec::new());
    speak_whole(&*voice, "One two.").await;
    let sentence = "The forecast for tomorrow is sunny, with a light breeze.";
    speak_until(&*voice, sentence, RATE as u64).await;
    // 1.3 s of it played: the engine counts "The forecast for" heard, as the service does.
    voice
        .clear(&SpeechCut {
            sentence: Some(sentence.into()),
            played: 1300 * 16,
            heard: "The forecast for".into(),
        })
        .await;
    let counts = shared.counts();
    assert_eq!(
        (
            counts.interrupts,
            counts.heard_matched,
            counts.heard_differed
        ),
        (1, 1, 0)
    );
    // Nothing of the cut sentence leaks into the next one, on the same socket.
    assert_eq!(speak_whole(&*voice, "Sure.").await, 5 * PER_CHAR);
    assert_eq!(shared.counts().sockets, 1);
    // A disagreement is counted (and logged).
    speak_until(&*voice, sentence, RATE as u64).await;
    voice
        .clear(&SpeechCut {
            sentence: Some(sentence.into()),
            played: 1300 * 16,
            heard: "The forecast".into(),
        })
        .await;
    assert_eq!(shared.counts().heard_differed, 1);
    drop(voice);
    emulator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_withdrawn_guess_is_interrupted_not_left_to_bill() {
    let (emulator, shared, voice) = start(Vec::new());
    // The first chunk of a guess, synthesized ahead and never played.
    speak_until(&*voice, "I think you want a table for two tonight.", 1).await;
    voice.clear(&SpeechCut::default()).await;
    let counts = shared.counts();
    assert_eq!(
        (counts.interrupts, counts.heard_matched),
        (1, 1),
        "{counts:?}"
    );
    assert_eq!(counts.turns, 0, "the guess never completed");
    // A sentence dropped without a clear is interrupted before the next one.
    speak_until(&*voice, "Another guess that is withdrawn.", 1).await;
    assert_eq!(speak_whole(&*voice, "Okay.").await, 5 * PER_CHAR);
    assert_eq!(shared.counts().interrupts, 2);
    drop(voice);
    emulator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_interrupt_after_the_turn_ended_takes_the_warning_path() {
    let (emulator, shared, voice) = start(Vec::new());
    speak_whole(&*voice, "Hi.").await;
    // Every frame read, the SpeechMetadata not yet: the voice thinks the turn is active, the
    // service has finished it.
    let text = "All done.";
    speak_until(&*voice, text, 9 * PER_CHAR).await;
    voice
        .clear(&SpeechCut {
            sentence: Some(text.into()),
            played: 9 * PER_CHAR,
            heard: text.into(),
        })
        .await;
    let counts = shared.counts();
    assert_eq!(
        (counts.interrupts, counts.interrupts_ignored, counts.turns),
        (1, 1, 2),
        "{counts:?}"
    );
    assert_eq!(speak_whole(&*voice, "Next.").await, 5 * PER_CHAR);
    assert_eq!(shared.counts().sockets, 1);
    drop(voice);
    emulator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_interrupt_answered_late_is_waited_for_and_one_never_answered_costs_the_socket() {
    let (emulator, shared, voice) =
        start(vec![SpeakFault::SlowInterrupts(Duration::from_millis(600))]);
    speak_until(&*voice, "A long sentence that will be cut.", 1).await;
    voice.clear(&SpeechCut::default()).await;
    assert_eq!(shared.counts().heard_matched, 1);
    drop(voice);
    emulator.shutdown().await;

    let (emulator, shared, voice) = start(vec![SpeakFault::IgnoreInterrupts]);
    speak_until(&*voice, "A long sentence that will be cut.", 1).await;
    let started = tokio::time::Instant::now();
    voice.clear(&SpeechCut::default()).await;
    assert_eq!(started.elapsed(), turnflow::tts::flux::INTERRUPT_WAIT);
    assert_eq!(shared.counts().interrupts_unanswered, 1);
    // The conversation goes on, on a fresh socket.
    assert_eq!(speak_whole(&*voice, "Still here.").await, 11 * PER_CHAR);
    assert_eq!(shared.counts().sockets, 2);
    drop(voice);
    emulator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_error_mid_reply_fails_that_sentence_and_the_next_opens_a_socket() {
    let (emulator, shared, voice) = start(vec![SpeakFault::ErrorInTurn {
        turn: 1,
        code: "NET-0000".into(),
    }]);
    speak_whole(&*voice, "First.").await;
    let mut stream = voice.synthesize("Second sentence.").await.unwrap();
    assert!(
        stream.next().await.unwrap().is_ok(),
        "the first frame played"
    );
    let error = stream.next().await.unwrap().unwrap_err();
    assert_eq!(error.kind, ErrorKind::Server);
    assert!(error.to_string().contains("NET-0000"), "{error}");
    assert!(stream.next().await.is_none());
    drop(stream);
    // The engine's fallback line, on a new socket.
    assert_eq!(
        speak_whole(&*voice, "Sorry, say that again?").await,
        22 * PER_CHAR
    );
    assert_eq!(shared.counts().sockets, 2);
    drop(voice);
    emulator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn pings_keep_the_socket_past_the_idle_limit_and_a_closed_one_is_reopened() {
    let (emulator, shared, voice) = start(Vec::new());
    speak_whole(&*voice, "Hello.").await;
    tokio::time::sleep(Duration::from_secs(200)).await;
    speak_whole(&*voice, "Still there?").await;
    assert_eq!(shared.counts().sockets, 1, "kept alive by pings");
    drop(voice);
    emulator.shutdown().await;

    // A voice that pings too rarely: the service ends the socket (NET-0004) and the next
    // sentence is sent again on a new one, whole.
    let (emulator, _) = emulated(Vec::new());
    let shared = flux_voice(Arc::new(emulator.clone())).with_limits(
        turnflow::tts::flux::INTERRUPT_WAIT,
        Duration::from_secs(3600),
        turnflow::tts::flux::SOCKET_LIFETIME,
    );
    let voice = conversation(&shared);
    speak_whole(&*voice, "Hello.").await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(speak_whole(&*voice, "Still there?").await, 12 * PER_CHAR);
    assert_eq!(shared.counts().sockets, 2);
    drop(voice);
    emulator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_socket_is_replaced_before_its_hour_and_after_it_if_it_must() {
    let (_, mut config) = emulated(Vec::new());
    config.speak.session_limit = Duration::from_secs(600);
    let emulator = MemoryEmulator::new(config.clone());
    let shared = flux_voice(Arc::new(emulator.clone())).with_limits(
        turnflow::tts::flux::INTERRUPT_WAIT,
        turnflow::tts::flux::KEEPALIVE_EVERY,
        Duration::from_secs(540),
    );
    let voice = conversation(&shared);
    speak_whole(&*voice, "Hello.").await;
    tokio::time::sleep(Duration::from_secs(570)).await;
    assert_eq!(shared.counts().sockets, 2, "replaced while idle");
    speak_whole(&*voice, "Still there?").await;
    drop(voice);
    emulator.shutdown().await;

    // Replacement left to the service: NET-0003 ends the socket, the next sentence reconnects.
    let emulator = MemoryEmulator::new(config);
    let shared = flux_voice(Arc::new(emulator.clone()));
    let voice = conversation(&shared);
    speak_whole(&*voice, "Hello.").await;
    tokio::time::sleep(Duration::from_secs(610)).await;
    assert_eq!(speak_whole(&*voice, "Still there?").await, 12 * PER_CHAR);
    assert_eq!(shared.counts().sockets, 2);
    drop(voice);
    emulator.shutdown().await;
}

/// A server that answers each Flush with `script`, for what the emulator never sends.
struct Scripted {
    script: Vec<WireFrame>,
}

#[async_trait::async_trait]
impl Connector for Scripted {
    async fn connect(&self, _: &ConnectRequest) -> Result<Connection, ConnectError> {
        let (client, mut server) = channel_pair(64, None);
        let script = self.script.clone();
        tokio::spawn(async move {
            let connected = SpeakEvent::Connected {
                request_id: "r".into(),
                model_name: "haley".into(),
                model_version: "v".into(),
                model_uuids: Vec::new(),
            };
            let _ = server.sink.send(WireFrame::Text(connected.to_json())).await;
            while let Some(Ok(frame)) = server.stream.next().await {
                if frame == WireFrame::Text(SpeakRequest::Flush.to_json()) {
                    for frame in script.clone() {
                        let _ = server.sink.send(frame).await;
                    }
                }
            }
        });
        Ok(client)
    }
}

fn metadata(speech_id: &str, audio_duration_ms: u64) -> WireFrame {
    WireFrame::Text(
        SpeakEvent::SpeechMetadata(TurnMetadata {
            speech_id: speech_id.into(),
            audio_duration_ms,
            input_character_count: 3,
            billable_character_count: 3,
            controls_applied: Default::default(),
        })
        .to_json(),
    )
}

#[tokio::test(start_paused = true)]
async fn malformed_out_of_order_and_unknown_messages_are_skipped_and_counted() {
    let audio = WireFrame::Binary(vec![1u8, 0, 2, 0].into());
    let shared = flux_voice(Arc::new(Scripted {
        script: vec![
            WireFrame::Text(r#"{"type":"SpeechStarted","speech_id":"dg_sp_000000000002"}"#.into()),
            WireFrame::Text("not json".into()),
            WireFrame::Text(r#"{"type":"Mystery","x":1}"#.into()),
            audio.clone(),
            // An earlier turn's report, late: not the end of this one.
            metadata("dg_sp_000000000001", 40),
            WireFrame::Text(r#"{"type":"Flushed","speech_id":"dg_sp_000000000002"}"#.into()),
            WireFrame::Text(
                r#"{"type":"Warning","warn_code":"SYNTHESIS_RETRYING","warn_msg":"retrying"}"#
                    .into(),
            ),
            audio,
            metadata("dg_sp_000000000002", 40),
        ],
    }));
    let voice = conversation(&shared);
    assert_eq!(speak_whole(&*voice, "Hi!").await, 4);
    let counts: FluxTtsCounts = shared.counts();
    assert_eq!(
        (counts.unexpected, counts.warnings, counts.turns),
        (3, 1, 2),
        "{counts:?}"
    );
}

#[tokio::test]
async fn over_a_real_socket_the_key_is_checked_and_a_wrong_one_named() {
    let mut config = EmulatorConfig::new(Arc::new(Scenario::demo()));
    config.api_key = Some(ApiKey::new("right-key"));
    let server = EmulatorServer::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let good = FluxTts::new(
        &server.base_url(),
        "flux-haley-en",
        RATE,
        Some(ApiKey::new("right-key")),
    )
    .unwrap();
    assert_eq!(speak_whole(&good, "Hello.").await, 6 * PER_CHAR);
    let bad = FluxTts::new(
        &server.base_url(),
        "flux-haley-en",
        RATE,
        Some(ApiKey::new("wrong-key")),
    )
    .unwrap();
    let error = bad.synthesize("Hello.").await.err().unwrap();
    assert_eq!(error.kind, ErrorKind::Auth);
    assert!(!error.to_string().contains("wrong-key"), "{error}");
    drop((good, bad));
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_whole_conversation_speaks_through_flux_tts_and_its_barge_in_is_heard_alike() {
    let scenario = Scenario::parse(
        r#"{
          "name": "menu",
          "tts": {"ttfb_ms": 150, "words_per_minute": 180},
          "listen": {"eager_eot_threshold": 0.5, "eot_threshold": 0.7},
          "turns": [
            {
              "start": {"at_ms": 500},
              "phrases": [{"text": "What is on the menu?", "eot_confidence": 0.95}],
              "reply": "Tonight we have a tasting menu. It has seven courses, starting with a chilled pea soup and ending with a dark chocolate tart with sea salt."
            },
            {
              "start": {"barge_in_ms": 3500},
              "say": "How much is it?",
              "reply": "It is sixty dollars."
            }
          ]
        }"#,
        "inline",
    )
    .unwrap();
    let mut config = turnflow::sim::SimulationConfig::new(Arc::new(scenario));
    config.transport = turnflow::sim::Transport::Memory;
    config.voice = turnflow::sim::SimulatedVoice::FluxTts;
    let result = turnflow::sim::run(config).await.unwrap();
    let counts = result.flux_tts.expect("the flux voice spoke");
    assert_eq!(counts.sockets, 1, "{counts:?}");
    assert_eq!(
        (
            counts.interrupts,
            counts.heard_matched,
            counts.heard_differed
        ),
        (1, 1, 0),
        "the service heard the cut where the engine did: {counts:?}"
    );
    let cut = &result.report.turns[0];
    assert!(
        cut.assistant_heard.starts_with("Tonight we have a tasting menu. It has")
            && cut.assistant_heard.len() < "Tonight we have a tasting menu. It has seven courses, starting with a chilled pea soup".len(),
        "{}",
        cut.assistant_heard
    );
    assert_eq!(
        result.report.turns[1].assistant_heard,
        "It is sixty dollars."
    );
}

#[tokio::test(start_paused = true)]
async fn a_failover_chain_moves_past_a_refused_flux_voice_and_keeps_it_per_conversation() {
    let mut config = EmulatorConfig::new(Arc::new(Scenario::demo()));
    config.api_key = Some(ApiKey::new("the-key"));
    let emulator = MemoryEmulator::new(config);
    // No key: the service refuses the upgrade (401), an auth error a chain does not retry.
    let flux = Arc::new(flux_voice(Arc::new(emulator.clone())));
    let synthetic = Arc::new(turnflow::tts::SyntheticTts::new(
        RATE,
        turnflow::scenario::TtsTiming::default(),
    ));
    let chain = turnflow::tts::FailoverTts::new(vec![flux.clone(), synthetic.clone()]).unwrap();
    let voice = chain
        .for_conversation()
        .expect("a chain with a Flux voice gives each conversation its own");
    assert!(speak_whole(&*voice, "Hello there.").await > 0);
    assert_eq!(synthetic.calls(), 1, "the synthetic voice spoke instead");
    assert_eq!(flux.counts().sockets, 0);
    drop(voice);
    emulator.shutdown().await;
}
