//! Audio from one rate to another, whatever the pair: a windowed-sinc low-pass (cut at 45 % of
//! the lower rate: 3.6 kHz for a phone, under its band's edge) evaluated only at the output
//! samples, one set of taps per output phase (polyphase), so 22.05 kHz espeak-ng reaches an
//! 8 kHz line as 16 or 24 kHz voices do, and a local voice can stand in for a 24 kHz one.
//! Stateful across chunks, so frame boundaries leave no clicks. The taps of each pair of rates
//! are computed once per process and shared.

use std::collections::HashMap;
use std::f64::consts::PI;
use std::sync::{Arc, Mutex, OnceLock};

/// Converts 16-bit audio from one rate to another.
#[derive(Debug, Clone)]
pub(crate) struct Resampler {
    /// Output samples per `down` input samples.
    up: usize,
    /// Input samples per `up` output samples.
    down: usize,
    /// Taps per phase.
    len: usize,
    /// `up` phases of `len` taps each.
    taps: Arc<[f32]>,
    /// The last `len - 1` input samples, then the current chunk.
    history: Vec<f32>,
    /// Where the next output's window starts in `history`, and its phase.
    at: usize,
    phase: usize,
}

/// The taps of each pair of rates (from, to) met so far.
type TapsByRates = HashMap<(u32, u32), Arc<[f32]>>;

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The polyphase taps from `from` to `to`: `up` phases of `len` taps.
fn design(from: u32, to: u32, up: usize, len: usize) -> Arc<[f32]> {
    let cutoff = 0.45 * f64::from(from.min(to)) / f64::from(from);
    let mid = (len / 2) as f64;
    let mut taps = Vec::with_capacity(up * len);
    for phase in 0..up {
        // This phase's output falls `phase / up` of an input sample past the window's middle.
        let shift = phase as f64 / up as f64;
        let mut set: Vec<f64> = (0..len)
            .map(|i| {
                let x = i as f64 - mid - shift;
                let sinc = if x == 0.0 {
                    2.0 * cutoff
                } else {
                    (2.0 * PI * cutoff * x).sin() / (PI * x)
                };
                let position = ((i as f64 - shift) / (len - 1) as f64).clamp(0.0, 1.0);
                sinc * (0.54 - 0.46 * (2.0 * PI * position).cos())
            })
            .collect();
        let gain: f64 = set.iter().sum();
        set.iter_mut().for_each(|t| *t /= gain);
        taps.extend(set.into_iter().map(|t| t as f32));
    }
    taps.into()
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz.
    ///
    /// # Errors
    /// A rate of zero, or rates whose ratio would need more than 1000 phases (no voice or line
    /// has such a rate).
    pub(crate) fn new(from: u32, to: u32) -> Result<Self, String> {
        if from == 0 || to == 0 {
            return Err(format!(
                "cannot convert audio from {from} Hz to {to} Hz: a rate must be above zero"
            ));
        }
        let g = gcd(from, to);
        let (up, down) = ((to / g) as usize, (from / g) as usize);
        if up > 1000 {
            return Err(format!(
                "cannot convert audio from {from} Hz to {to} Hz: their ratio {down}/{up} is too fine; use a voice at a common rate (8, 16, 22.05, 24, 44.1 or 48 kHz)"
            ));
        }
        let len = 16 * from.div_ceil(to) as usize + 1;
        static TAPS: OnceLock<Mutex<TapsByRates>> = OnceLock::new();
        let taps = TAPS
            .get_or_init(Mutex::default)
            .lock()
            .expect("taps lock")
            .entry((from, to))
            .or_insert_with(|| design(from, to, up, len))
            .clone();
        Ok(Self {
            up,
            down,
            len,
            taps,
            history: vec![0.0; len - 1],
            at: 0,
            phase: 0,
        })
    }

    /// The next chunk, at the output rate.
    pub(crate) fn process(&mut self, input: &[i16]) -> Vec<i16> {
        let keep = self.len - 1;
        self.history.extend(input.iter().map(|s| f32::from(*s)));
        let mut out = Vec::with_capacity(input.len() * self.up / self.down + 1);
        while self.at + keep < self.history.len() {
            let taps = &self.taps[self.phase * self.len..(self.phase + 1) * self.len];
            let acc = dot(&self.history[self.at..self.at + self.len], taps);
            // `as` saturates at the i16 range; adding half away from zero rounds like `round`,
            // which is a library call per sample on baseline x86-64.
            out.push((acc + 0.5f32.copysign(acc)) as i16);
            self.phase += self.down;
            self.at += self.phase / self.up;
            self.phase %= self.up;
        }
        let consumed = self.at.min(self.history.len() - keep);
        self.at -= consumed;
        self.history.drain(..consumed);
        out
    }
}

/// The dot product in eight independent sums: one running sum is a chain of dependent adds
/// the compiler may not reorder (float addition is not associative), eight are a vector.
fn dot(window: &[f32], taps: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut lanes = [0.0f32; LANES];
    let (window_chunks, taps_chunks) = (window.chunks_exact(LANES), taps.chunks_exact(LANES));
    let tail: f32 = window_chunks
        .remainder()
        .iter()
        .zip(taps_chunks.remainder())
        .map(|(x, t)| x * t)
        .sum();
    for (x, t) in window_chunks.zip(taps_chunks) {
        for lane in 0..LANES {
            lanes[lane] += x[lane] * t[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A phone line's rate.
    const PHONE_RATE: u32 = 8000;

    fn tone(freq: f64, rate: u32, seconds: f64) -> Vec<i16> {
        (0..(f64::from(rate) * seconds) as usize)
            .map(|i| ((2.0 * PI * freq * i as f64 / f64::from(rate)).sin() * 10000.0) as i16)
            .collect()
    }

    fn rms(samples: &[i16]) -> f64 {
        (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
    }

    #[test]
    fn speech_band_passes_and_what_would_alias_is_removed() {
        for rate in [16000, 24000, 48000] {
            let mut r = Resampler::new(rate, PHONE_RATE).unwrap();
            // In 20 ms frames, as playout writes them.
            let input = tone(1000.0, rate, 1.0);
            let out: Vec<i16> = input
                .chunks((rate / 50) as usize)
                .flat_map(|f| r.process(f))
                .collect();
            assert!(
                (out.len() as i64 - 8000).abs() <= 1,
                "{rate}: {}",
                out.len()
            );
            let level = rms(&out[400..]) / rms(&input);
            assert!((0.97..1.03).contains(&level), "{rate}: 1 kHz at {level}");
            let mut r = Resampler::new(rate, PHONE_RATE).unwrap();
            let high = r.process(&tone(5000.0, rate, 1.0));
            let level = rms(&high[400..]) / rms(&tone(5000.0, rate, 1.0));
            assert!(
                level < 0.03,
                "{rate}: 5 kHz (would fold to 3 kHz) at {level}"
            );
        }
    }

    #[test]
    fn output_matches_a_plain_convolution_including_clipping() {
        for rate in [16000, 48000] {
            let mut r = Resampler::new(rate, PHONE_RATE).unwrap();
            let taps: Vec<f64> = r.taps.iter().map(|t| f64::from(*t)).collect();
            assert_eq!(taps.len(), r.len, "one phase from a whole multiple");
            // A loud square wave overshoots the i16 range after the low-pass (Gibbs ripple).
            let input: Vec<i16> = (0..rate as usize / 10)
                .map(|i| if (i / 40) % 2 == 0 { 32767 } else { -32768 })
                .collect();
            let out: Vec<i16> = input.chunks(317).flat_map(|c| r.process(c)).collect();
            let padded: Vec<f64> = std::iter::repeat_n(0.0, taps.len() - 1)
                .chain(input.iter().map(|s| f64::from(*s)))
                .collect();
            let reference: Vec<i16> = padded
                .windows(taps.len())
                .step_by(r.down)
                .map(|w| {
                    let acc: f64 = w.iter().zip(&taps).map(|(x, t)| x * t).sum();
                    acc.round().clamp(-32768.0, 32767.0) as i16
                })
                .collect();
            assert_eq!(out.len(), reference.len(), "{rate}");
            assert!(
                out.contains(&32767) && out.contains(&-32768),
                "{rate}: no clipping"
            );
            for (i, (a, b)) in out.iter().zip(&reference).enumerate() {
                assert!(
                    (i32::from(*a) - i32::from(*b)).abs() <= 1,
                    "{rate} at {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn any_voice_reaches_a_phone_line_and_a_page_any_line() {
        for (from, to) in [
            (22050, PHONE_RATE),
            (44100, PHONE_RATE),
            (22050, 16000),
            (16000, 48000),
            (8000, 16000),
        ] {
            let mut r = Resampler::new(from, to).unwrap();
            let input = tone(1000.0, from, 1.0);
            let out: Vec<i16> = input
                .chunks((from / 50) as usize)
                .flat_map(|f| r.process(f))
                .collect();
            assert!(
                (out.len() as i64 - i64::from(to)).abs() <= 2,
                "{from}->{to}: {}",
                out.len()
            );
            let level = rms(&out[(to / 20) as usize..]) / rms(&input);
            assert!(
                (0.95..1.05).contains(&level),
                "{from}->{to}: 1 kHz at {level}"
            );
            // The output is the tone, not just its level: its zero crossings come 2000 a second.
            let crossings = out[(to / 20) as usize..]
                .windows(2)
                .filter(|w| (w[0] < 0) != (w[1] < 0))
                .count();
            let expected = 2000.0 * 0.95;
            assert!(
                (crossings as f64 - expected).abs() < 20.0,
                "{from}->{to}: {crossings} crossings"
            );
        }
        let mut r = Resampler::new(22050, PHONE_RATE).unwrap();
        let high = r.process(&tone(5000.0, 22050, 1.0));
        let level = rms(&high[400..]) / rms(&tone(5000.0, 22050, 1.0));
        assert!(level < 0.05, "5 kHz (would fold to 3 kHz) at {level}");
    }

    #[test]
    fn impossible_rates_are_refused_by_name() {
        assert!(
            Resampler::new(0, PHONE_RATE)
                .unwrap_err()
                .contains("above zero")
        );
        assert!(
            Resampler::new(48000, 7919)
                .unwrap_err()
                .contains("too fine")
        );
    }
}
