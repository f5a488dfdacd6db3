//! Opus for WebRTC: the CPU of encoding the agent's voice and decoding the caller's, per 20 ms
//! frame. At the settings a session uses (speech at 16 kHz straight into libopus, 12 kbit/s,
//! complexity 1, error correction; decoding straight to 16 kHz) and beside them (48 kHz,
//! 24 kbit/s, complexity 5 and 10). Run with `cargo bench --features opus --bench opus` (needs
//! libopus-dev).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use turnflow::audio::opus::{EncoderSettings, VoiceDecoder, VoiceEncoder};

/// The fixture's speech (16 kHz), in 20 ms frames at `rate` (16 or 48 kHz, each sample
/// repeated to reach 48).
fn speech(rate: u32) -> Vec<Vec<i16>> {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/book_table_16k.wav"
    ))
    .expect("the speech fixture");
    let (_, offset) = turnflow::audio::parse_wav_header(&bytes)
        .expect("a WAV")
        .expect("a whole header");
    let repeat = (rate / 16_000) as usize;
    let samples: Vec<i16> = bytes[offset..]
        .chunks_exact(2)
        .flat_map(|b| std::iter::repeat_n(i16::from_le_bytes([b[0], b[1]]), repeat))
        .collect();
    samples
        .chunks_exact(rate as usize / 50)
        .map(<[i16]>::to_vec)
        .collect()
}

/// What the benchmarked work must produce (checked before timing, and by `cargo bench --
/// --test`): every packet decodes to one frame at `rate`.
fn check(packets: &[Vec<u8>], rate: u32) {
    let mut decoder = VoiceDecoder::at(rate).unwrap();
    let mut out = Vec::new();
    for (seq, packet) in packets.iter().enumerate() {
        decoder.push(seq as u16, packet, &mut out);
    }
    assert_eq!(out.len(), packets.len() * rate as usize / 50);
    assert_eq!(decoder.stats().decoded, packets.len() as u64);
}

/// Sessions a server speaks for at once, in the benchmark of encoders taking turns.
const SESSIONS: usize = 500;

fn bench(c: &mut Criterion) {
    // What a WebRTC session sends, then the codec's defaults here.
    let cases = [
        (16_000, 12_000, 0),
        (16_000, 12_000, 1),
        (16_000, 12_000, 5),
        (48_000, 24_000, 5),
        (48_000, 24_000, 10),
    ];
    for (sample_rate, bitrate_bps, complexity) in cases {
        let frames = speech(sample_rate);
        let settings = EncoderSettings {
            bitrate_bps,
            complexity,
            sample_rate,
            ..EncoderSettings::default()
        };
        let mut encoder = VoiceEncoder::new(settings).unwrap();
        let packets: Vec<Vec<u8>> = frames.iter().map(|f| encoder.encode(f).unwrap()).collect();
        check(&packets, sample_rate);
        let mut next = 0;
        let name = format!(
            "opus/encode_20ms_{}khz_{}kbps_complexity_{complexity}",
            sample_rate / 1000,
            bitrate_bps / 1000
        );
        c.bench_function(&name, |b| {
            b.iter(|| {
                next = (next + 1) % frames.len();
                black_box(encoder.encode(black_box(&frames[next])).unwrap())
            })
        });
        if complexity == 1 {
            // A server speaks for many sessions, each with its own encoder, one frame at a
            // time: an encoder's state is rarely still in the cache when its next frame comes.
            let mut encoders: Vec<VoiceEncoder> = (0..SESSIONS)
                .map(|_| VoiceEncoder::new(settings).unwrap())
                .collect();
            let mut turn = 0;
            c.bench_function(
                &format!("opus/encode_20ms_16khz_12kbps_complexity_1_{SESSIONS}_encoders_in_turn"),
                |b| {
                    b.iter(|| {
                        turn = (turn + 1) % encoders.len();
                        next = (next + 1) % frames.len();
                        black_box(encoders[turn].encode(black_box(&frames[next])).unwrap())
                    })
                },
            );
        }
        if complexity == 1 || sample_rate == 48_000 && complexity == 5 {
            let mut decoder = VoiceDecoder::at(sample_rate).unwrap();
            let mut out = Vec::with_capacity(sample_rate as usize / 50);
            let mut seq: u16 = 0;
            c.bench_function(
                &format!("opus/decode_20ms_to_{}khz", sample_rate / 1000),
                |b| {
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
                },
            );
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
