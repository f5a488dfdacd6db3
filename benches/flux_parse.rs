//! Parsing and serializing Flux messages: the per-message cost of the client's reader and the
//! emulator's writer.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use turnflow::flux::TurnEvent;
use turnflow::flux::messages::ServerMessage;

const TURN_INFO: &str = r#"{"type":"TurnInfo","request_id":"7b3e2c90-15d4-4f6a-8e2b-9a41c0d57f18","sequence_id":7,"event":"Update","turn_index":0,"audio_window_start":0.0,"audio_window_end":1.68,"transcript":"I'd like to change my flight","words":[{"word":"I'd","confidence":0.9712,"start":0.62,"end":0.8},{"word":"like","confidence":0.953,"start":0.8,"end":0.96},{"word":"to","confidence":0.9904,"start":0.96,"end":1.04},{"word":"change","confidence":0.9877,"start":1.04,"end":1.3},{"word":"my","confidence":0.9921,"start":1.3,"end":1.4},{"word":"flight","confidence":0.9655,"start":1.4,"end":1.68}],"end_of_turn_confidence":0.2093}"#;

/// What the benchmarked work must produce (checked before timing, and by `cargo bench --
/// --test`): the message with its six words, and JSON that parses back to it.
fn check() {
    let ServerMessage::TurnInfo(info) = ServerMessage::parse(TURN_INFO).unwrap() else {
        panic!("not a TurnInfo")
    };
    assert_eq!(info.event, TurnEvent::Update);
    assert_eq!(info.words.len(), 6);
    assert_eq!(info.words[5].word, "flight");
    let repaired = ServerMessage::parse_repairing(TURN_INFO).unwrap();
    assert!(repaired.repairs.is_empty());
    assert_eq!(repaired.message, ServerMessage::TurnInfo(info.clone()));
    let back = ServerMessage::parse(&ServerMessage::TurnInfo(info.clone()).to_json()).unwrap();
    assert_eq!(back, ServerMessage::TurnInfo(info));
}

fn bench(c: &mut Criterion) {
    check();
    c.bench_function("flux/parse_turn_info_6_words", |b| {
        b.iter(|| ServerMessage::parse(black_box(TURN_INFO)).unwrap())
    });
    c.bench_function("flux/parse_repairing_turn_info_6_words", |b| {
        b.iter(|| ServerMessage::parse_repairing(black_box(TURN_INFO)).unwrap())
    });
    let message = ServerMessage::parse(TURN_INFO).unwrap();
    c.bench_function("flux/serialize_turn_info_6_words", |b| {
        b.iter(|| black_box(&message).to_json())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
