//! Opus for WebRTC: the CPU of encoding the agent's voice and decoding the caller's, per 20 ms
//! frame, at the settings a session uses (12 kbit/s, error correction) and beside them.
//! Run with `cargo bench --features opus --bench opus` (needs libopus-dev).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use turnflow::audio::opus::{EncoderSettings, FRAME_SAMPLES, VoiceDecoder, VoiceEncoder};

/// One second of a voice-like tone, in 20 ms frames.
fn frames() -> Vec<Vec<i16>> {
    (0..50)
        .map(|f| {
            (0..FRAME_SAMPLES)
                .map(|i| {
                    let t = (f * FRAME_SAMPLES + i) as f64 / 48_000.0;
                    let swell = 1.0 + (t * 3.0).sin();
                    ((t * 180.0 * std::f64::consts::TAU).sin() * 5000.0 * swell) as i16
                })
                .collect()
        })
        .collect()
}

/// What the benchmarked work must produce (checked before timing, and by `cargo bench --
/// --test`): a second of packets that decodes to a second of audio.
fn check(packets: &[Vec<u8>]) {
    let mut decoder = VoiceDecoder::new().unwrap();
    let mut out = Vec::new();
    for (seq, packet) in packets.iter().enumerate() {
        decoder.push(seq as u16, packet, &mut out);
    }
    assert_eq!(out.len(), 50 * FRAME_SAMPLES);
    assert_eq!(decoder.stats().decoded, 50);
}

fn bench(c: &mut Criterion) {
    let frames = frames();
    // WebRTC sessions send 12 kbit/s; 24 kbit/s is the codec's default here.
    for (bitrate_bps, complexity) in [
        (12_000, 1),
        (12_000, 3),
        (12_000, 5),
        (24_000, 5),
        (24_000, 10),
    ] {
        let settings = EncoderSettings {
            bitrate_bps,
            complexity,
            ..EncoderSettings::default()
        };
        let mut encoder = VoiceEncoder::new(settings).unwrap();
        let packets: Vec<Vec<u8>> = frames.iter().map(|f| encoder.encode(f).unwrap()).collect();
        check(&packets);
        let mut next = 0;
        let name = format!(
            "opus/encode_20ms_{}kbps_complexity_{complexity}",
            bitrate_bps / 1000
        );
        c.bench_function(&name, |b| {
            b.iter(|| {
                next = (next + 1) % frames.len();
                black_box(encoder.encode(black_box(&frames[next])).unwrap())
            })
        });
    }
    let mut encoder = VoiceEncoder::new(EncoderSettings::default()).unwrap();
    let packets: Vec<Vec<u8>> = frames.iter().map(|f| encoder.encode(f).unwrap()).collect();
    let mut decoder = VoiceDecoder::new().unwrap();
    let mut out = Vec::with_capacity(FRAME_SAMPLES);
    let mut seq: u16 = 0;
    c.bench_function("opus/decode_20ms", |b| {
        b.iter(|| {
            out.clear();
            decoder.push(
                seq,
                black_box(&packets[usize::from(seq) % packets.len()]),
                &mut out,
            );
            seq = seq.wrapping_add(1);
            black_box(out.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
