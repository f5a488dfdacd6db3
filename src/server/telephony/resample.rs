//! Agent audio to the phone's 8 kHz: a windowed-sinc low-pass (cut at 3.6 kHz, under the
//! phone band's edge) and decimation by an integer ratio, computed only at the output
//! samples. Stateful across chunks, so frame boundaries leave no clicks.

use std::f64::consts::PI;

/// The phone line's sample rate.
pub(crate) const PHONE_RATE: u32 = 8000;

/// Decimates 16, 24, 32 or 48 kHz audio to 8 kHz.
#[derive(Debug, Clone)]
pub(crate) struct ToPhone {
    ratio: usize,
    taps: Vec<f32>,
    /// The last `taps.len() - 1` input samples, then the current chunk.
    history: Vec<f32>,
    /// Input samples to skip before the next output sample.
    skip: usize,
}

impl ToPhone {
    /// A resampler from `rate`.
    ///
    /// # Errors
    /// A rate that is not a whole multiple of 8 kHz.
    pub(crate) fn new(rate: u32) -> Result<Self, String> {
        if rate == 0 || !rate.is_multiple_of(PHONE_RATE) {
            return Err(format!(
                "a voice at {rate} Hz cannot be sent to a phone line; use a voice at 8, 16, 24 or 48 kHz"
            ));
        }
        let ratio = (rate / PHONE_RATE) as usize;
        let len = 16 * ratio + 1;
        let cutoff = 3600.0 / f64::from(rate);
        let mid = (len / 2) as f64;
        let mut taps: Vec<f64> = (0..len)
            .map(|i| {
                let x = i as f64 - mid;
                let sinc = if x == 0.0 {
                    2.0 * cutoff
                } else {
                    (2.0 * PI * cutoff * x).sin() / (PI * x)
                };
                let window = 0.54 - 0.46 * (2.0 * PI * i as f64 / (len - 1) as f64).cos();
                sinc * window
            })
            .collect();
        let gain: f64 = taps.iter().sum();
        taps.iter_mut().for_each(|t| *t /= gain);
        Ok(Self {
            ratio,
            taps: taps.into_iter().map(|t| t as f32).collect(),
            history: vec![0.0; len - 1],
            skip: 0,
        })
    }

    /// The 8 kHz samples of the next chunk.
    pub(crate) fn process(&mut self, input: &[i16]) -> Vec<i16> {
        let keep = self.taps.len() - 1;
        self.history.extend(input.iter().map(|s| f32::from(*s)));
        let mut out = Vec::with_capacity(input.len() / self.ratio + 1);
        let mut at = self.skip;
        while at + keep < self.history.len() {
            let acc = dot(&self.history[at..at + self.taps.len()], &self.taps);
            // `as` saturates at the i16 range; adding half away from zero rounds like `round`,
            // which is a library call per sample on baseline x86-64.
            out.push((acc + 0.5f32.copysign(acc)) as i16);
            at += self.ratio;
        }
        let consumed = at.min(self.history.len() - keep);
        self.skip = at - consumed;
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
            let mut r = ToPhone::new(rate).unwrap();
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
            let mut r = ToPhone::new(rate).unwrap();
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
            let mut r = ToPhone::new(rate).unwrap();
            let taps: Vec<f64> = r.taps.iter().map(|t| f64::from(*t)).collect();
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
                .step_by(r.ratio)
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
    fn other_rates_are_refused_by_name() {
        assert!(ToPhone::new(22050).unwrap_err().contains("22050 Hz"));
    }
}
