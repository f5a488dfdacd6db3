//! Lossless packing of 16-bit PCM frames, for audio the Flux client keeps for replay.
//!
//! The replay buffer holds everything since the last `EndOfTurn` so a dropped connection can be
//! resumed without losing a word, and under load it is most of a session's memory (a few
//! seconds of 16 kHz audio is ~100-200 KiB). Packed audio must come back bit for bit: the
//! replayed turn is transcribed again and must not differ from what the first connection heard.
//! So this is a lossless coder in the manner of FLAC's subset without a container: per frame the
//! best of the fixed polynomial predictors of order 0, 1 or 2, the residuals zigzag-mapped and
//! Rice-coded in partitions of [`PARTITION`] samples, each with its own parameter. A frame
//! that would not get smaller is kept as it is.
//!
//! Layout: one tag byte (`RAW`, or `CODED + order`); raw frames follow with their bytes; coded
//! ones with the sample count (u32 LE), `order` warm-up samples (i16 LE) and the bit stream.

const RAW: u8 = 0;
const CODED: u8 = 1;
const MAX_ORDER: usize = 2;
/// Residuals per Rice parameter.
const PARTITION: usize = 256;
/// A unary quotient this long is cut short: the value follows in 32 plain bits, so one wild
/// sample in a quiet partition costs 56 bits, not thousands.
const ESCAPE: u32 = 24;

/// Packs a frame of 16-bit little-endian PCM. Any other length (odd) is stored as it is.
pub(crate) fn pack(pcm: &[u8]) -> Vec<u8> {
    let raw = || {
        let mut out = Vec::with_capacity(pcm.len() + 1);
        out.push(RAW);
        out.extend_from_slice(pcm);
        out
    };
    if !pcm.len().is_multiple_of(2) || pcm.len() / 2 <= MAX_ORDER {
        return raw();
    }
    let samples: Vec<i32> = pcm
        .chunks_exact(2)
        .map(|b| i32::from(i16::from_le_bytes([b[0], b[1]])))
        .collect();
    // One pass sums every order's error (from sample 2 on, where all three exist).
    let mut error = [0u64; MAX_ORDER + 1];
    for w in samples.windows(3) {
        let d1 = w[2] - w[1];
        let d2 = d1 - (w[1] - w[0]);
        error[0] += u64::from(w[2].unsigned_abs());
        error[1] += u64::from(d1.unsigned_abs());
        error[2] += u64::from(d2.unsigned_abs());
    }
    let order = (0..=MAX_ORDER)
        .min_by_key(|&order| error[order])
        .expect("orders to choose from");
    let mut bits = BitWriter::with_capacity(pcm.len() / 2);
    let residuals: Vec<u32> = match order {
        0 => samples.iter().map(|&x| zigzag(x)).collect(),
        1 => samples.windows(2).map(|w| zigzag(w[1] - w[0])).collect(),
        _ => samples
            .windows(3)
            .map(|w| zigzag(w[2] - 2 * w[1] + w[0]))
            .collect(),
    };
    for partition in residuals.chunks(PARTITION) {
        let k = rice_parameter(partition);
        bits.write(u64::from(k), 5);
        for &value in partition {
            bits.rice(value, k);
        }
    }
    let stream = bits.finish();
    let coded_len = 1 + 4 + 2 * order + stream.len();
    if coded_len > pcm.len() {
        return raw();
    }
    let mut out = Vec::with_capacity(coded_len);
    out.push(CODED + order as u8);
    out.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    for &warm in &samples[..order] {
        out.extend_from_slice(&(warm as i16).to_le_bytes());
    }
    out.extend_from_slice(&stream);
    out
}

/// The PCM bytes of a frame made by [`pack`].
///
/// # Panics
/// On bytes [`pack`] did not produce: the replay buffer only unpacks its own frames.
pub(crate) fn unpack(packed: &[u8]) -> Vec<u8> {
    let (&tag, body) = packed.split_first().expect("a packed frame has a tag");
    if tag == RAW {
        return body.to_vec();
    }
    let order = usize::from(tag - CODED);
    let count = u32::from_le_bytes(body[..4].try_into().expect("sample count")) as usize;
    let mut samples: Vec<i32> = body[4..4 + 2 * order]
        .chunks_exact(2)
        .map(|b| i32::from(i16::from_le_bytes([b[0], b[1]])))
        .collect();
    samples.reserve(count - order);
    let mut bits = BitReader::new(&body[4 + 2 * order..]);
    while samples.len() < count {
        let k = bits.read(5) as u32;
        let partition_end = (samples.len() + PARTITION).min(count);
        while samples.len() < partition_end {
            let r = unzigzag(bits.rice(k));
            let n = samples.len();
            let x = match order {
                0 => r,
                1 => r + samples[n - 1],
                _ => r + 2 * samples[n - 1] - samples[n - 2],
            };
            samples.push(x);
        }
    }
    samples
        .iter()
        .flat_map(|&x| (x as i16).to_le_bytes())
        .collect()
}

fn zigzag(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

fn unzigzag(u: u32) -> i32 {
    ((u >> 1) as i32) ^ -((u & 1) as i32)
}

/// The Rice parameter for a partition: the one with the fewest bits, estimated from a
/// histogram of the values' bit lengths (a mean would let one loud click set the parameter
/// for a whole quiet partition).
fn rice_parameter(values: &[u32]) -> u32 {
    // Four tallies, summed after: neighbouring samples mostly share a length, and one tally
    // would make each increment wait for the previous one.
    let mut tallies = [[0u64; 33]; 4];
    let mut quads = values.chunks_exact(4);
    for quad in &mut quads {
        for (tally, &v) in tallies.iter_mut().zip(quad) {
            tally[(32 - v.leading_zeros()) as usize] += 1;
        }
    }
    for &v in quads.remainder() {
        tallies[0][(32 - v.leading_zeros()) as usize] += 1;
    }
    let mut lengths = [0u64; 33];
    for (b, length) in lengths.iter_mut().enumerate() {
        *length = tallies.iter().map(|tally| tally[b]).sum();
    }
    let longest = lengths.iter().rposition(|&n| n > 0).unwrap_or(0) as u32;
    let cost = |k: u32| -> u64 {
        (0..=longest)
            .map(|b| {
                let bits = if b <= k {
                    u64::from(k) + 1
                } else {
                    // A value of `b` bits has a quotient of about 1.5 x 2^(b - 1 - k).
                    let quotient = (3u64 << (b - 1 - k)) >> 1;
                    if quotient >= u64::from(ESCAPE) {
                        u64::from(ESCAPE) + 32
                    } else {
                        quotient + 1 + u64::from(k)
                    }
                };
                lengths[b as usize] * bits
            })
            .sum()
    };
    (0..=longest.min(30))
        .min_by_key(|&k| cost(k))
        .expect("parameters to choose from")
}

struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    bits: u32,
}

impl BitWriter {
    fn with_capacity(bytes: usize) -> Self {
        Self {
            out: Vec::with_capacity(bytes),
            acc: 0,
            bits: 0,
        }
    }

    /// Appends the low `count` bits of `value` (count <= 32), most significant first. Whole
    /// 32-bit words go out at once: per-byte pushes were most of the packing time.
    fn write(&mut self, value: u64, count: u32) {
        self.acc = (self.acc << count) | (value & ((1u64 << count) - 1));
        self.bits += count;
        if self.bits >= 32 {
            self.bits -= 32;
            self.out
                .extend_from_slice(&((self.acc >> self.bits) as u32).to_be_bytes());
        }
    }

    fn rice(&mut self, value: u32, k: u32) {
        let quotient = value >> k;
        if quotient >= ESCAPE {
            self.write((1 << ESCAPE) - 1, ESCAPE);
            self.write(u64::from(value), 32);
            return;
        }
        // `quotient` ones and a zero, then the remainder; one write when both fit.
        let unary = ((1u64 << quotient) - 1) << 1;
        if quotient + 1 + k <= 32 {
            let remainder = u64::from(value) & ((1u64 << k) - 1);
            self.write((unary << k) | remainder, quotient + 1 + k);
        } else {
            self.write(unary, quotient + 1);
            self.write(u64::from(value), k);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let pad = (8 - self.bits % 8) % 8;
        self.write(0, pad);
        // Whole bytes are left (fewer than four): the low `bits` of the accumulator.
        let bytes = (self.bits / 8) as usize;
        self.out
            .extend_from_slice(&(self.acc as u32).to_be_bytes()[4 - bytes..]);
        self.out
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    fn bit(&mut self) -> u64 {
        let byte = self.bytes[self.position / 8];
        let bit = (byte >> (7 - self.position % 8)) & 1;
        self.position += 1;
        u64::from(bit)
    }

    fn read(&mut self, count: u32) -> u64 {
        (0..count).fold(0, |acc, _| (acc << 1) | self.bit())
    }

    fn rice(&mut self, k: u32) -> u32 {
        let mut quotient = 0;
        while quotient < ESCAPE && self.bit() == 1 {
            quotient += 1;
        }
        if quotient == ESCAPE {
            return self.read(32) as u32;
        }
        (quotient << k) | self.read(k) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pcm(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn silence_and_a_quiet_tone_pack_small() {
        let silence = pcm(&[0; 1280]);
        let packed = pack(&silence);
        assert!(packed.len() < silence.len() / 10, "{} bytes", packed.len());
        assert_eq!(unpack(&packed), silence);

        let tone: Vec<i16> = (0..1280)
            .map(|n| (3000.0 * (n as f64 * 0.05).sin()) as i16)
            .collect();
        let packed = pack(&pcm(&tone));
        assert!(packed.len() < 2560 / 2, "{} bytes", packed.len());
        assert_eq!(unpack(&packed), pcm(&tone));
    }

    #[test]
    fn what_would_grow_is_kept_as_it_is() {
        // Full-scale alternation: every residual escapes.
        let wild: Vec<i16> = (0..640)
            .map(|n| if n % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        let packed = pack(&pcm(&wild));
        assert_eq!(packed[0], RAW);
        assert_eq!(packed.len(), 1281);
        assert_eq!(unpack(&packed), pcm(&wild));
        for odd in [&[1u8][..], &[1, 2, 3], &[]] {
            assert_eq!(unpack(&pack(odd)), odd);
        }
    }

    #[test]
    fn one_wild_sample_in_silence_costs_a_few_bytes() {
        let mut samples = vec![0i16; 1280];
        samples[700] = i16::MIN;
        let packed = pack(&pcm(&samples));
        assert!(packed.len() < 200, "{} bytes", packed.len());
        assert_eq!(unpack(&packed), pcm(&samples));
    }

    proptest! {
        #[test]
        fn every_frame_comes_back_bit_for_bit(
            samples in proptest::collection::vec(any::<i16>(), 0..2000),
            quiet in proptest::collection::vec(-40i16..40, 0..2000),
        ) {
            for frame in [pcm(&samples), pcm(&quiet)] {
                let packed = pack(&frame);
                prop_assert!(packed.len() <= frame.len() + 1);
                prop_assert_eq!(unpack(&packed), frame);
            }
        }
    }
}
