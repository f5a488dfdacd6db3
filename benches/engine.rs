//! The engine's pure hot paths: one turn-machine step and streaming sentence segmentation.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use turnflow::engine::segment::SentenceSplitter;
use turnflow::engine::turn::{Action, Input, MachineConfig, TurnMachine, UserEvent};

fn user(event: UserEvent, transcript: &str) -> Input {
    Input::User {
        event,
        transcript: transcript.into(),
    }
}

/// What the benchmarked work must produce (checked before timing, and by `cargo bench --
/// --test`): an eager end then the same end is a promoted speculation, and the reply splits
/// into its three sentences.
fn check(tokens: &[String]) {
    let mut m = TurnMachine::new(MachineConfig::default());
    m.step(user(UserEvent::StartOfTurn, "I'd"));
    m.step(user(
        UserEvent::EagerEndOfTurn,
        "I'd like to change my flight.",
    ));
    let end = m.step(user(UserEvent::EndOfTurn, "I'd like to change my flight."));
    assert!(
        end.iter().any(|a| matches!(a, Action::Promote(_))),
        "{end:?}"
    );
    let mut s = SentenceSplitter::default();
    let mut sentences: Vec<String> = tokens.iter().flat_map(|t| s.push(t)).collect();
    sentences.extend(s.finish());
    assert_eq!(sentences.len(), 3, "{sentences:?}");
}

fn bench(c: &mut Criterion) {
    c.bench_function("turn_machine/update_step", |b| {
        let mut m = TurnMachine::new(MachineConfig::default());
        m.step(user(UserEvent::StartOfTurn, "I'd"));
        b.iter(|| {
            m.step(black_box(user(
                UserEvent::Update,
                "I'd like to change my flight",
            )))
        })
    });
    c.bench_function("turn_machine/eager_then_end_of_turn", |b| {
        b.iter_batched(
            || {
                let mut m = TurnMachine::new(MachineConfig::default());
                m.step(user(UserEvent::StartOfTurn, "I'd"));
                m
            },
            |mut m| {
                m.step(user(
                    UserEvent::EagerEndOfTurn,
                    "I'd like to change my flight.",
                ));
                m.step(user(UserEvent::EndOfTurn, "I'd like to change my flight."))
            },
            BatchSize::SmallInput,
        )
    });
    let reply = "Thanks Jordan. Your table for four is booked for seven tonight. We will hold it \
                 for fifteen minutes, and you will get a confirmation by text message shortly.";
    let tokens: Vec<String> = reply.split_inclusive(' ').map(str::to_owned).collect();
    check(&tokens);
    c.bench_function("segment/stream_29_tokens", |b| {
        b.iter(|| {
            let mut s = SentenceSplitter::default();
            let mut n = 0;
            for t in &tokens {
                n += s.push(black_box(t)).len();
            }
            n + usize::from(s.finish().is_some())
        })
    });
    c.bench_function("segment/one_token", |b| {
        let mut s = SentenceSplitter::default();
        b.iter(|| s.push(black_box(" word")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
