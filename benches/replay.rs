//! The latency lab's costs: re-deriving a recording's Flux events under other thresholds (pure)
//! and a whole replay on the paused clock (Flux client, engine, recorded model and voice).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use turnflow::flux::Thresholds;
use turnflow::lab::{ReplaySettings, Timeline, derive, replay};
use turnflow::recording::Recording;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let recording = Recording::load("recordings/barge_in".as_ref()).unwrap();
    let timeline = Timeline::from_flux(&recording.flux);
    let settings = ReplaySettings::recorded(&recording.meta.settings).unwrap();
    // What the benchmarked work must produce: the recording's own events, and its two answers.
    let own = derive(&timeline, &settings.thresholds, 1.0);
    assert_eq!(own.differences(&timeline), vec![]);
    let outcome = runtime().block_on(replay(&recording, &settings)).unwrap();
    assert_eq!(outcome.derivation.turn_taking.ends, 2);
    assert!(outcome.generated_replies.is_empty());

    let lower = Thresholds {
        eot_threshold: Some(0.6),
        ..settings.thresholds
    };
    c.bench_function("lab/derive_barge_in_recording", |b| {
        b.iter(|| derive(black_box(&timeline), black_box(&lower), 1.0))
    });
    let rt = runtime();
    c.bench_function("lab/replay_barge_in_recording", |b| {
        b.iter(|| {
            rt.block_on(replay(black_box(&recording), &settings))
                .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
