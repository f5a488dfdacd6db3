//! Opus for voice over WebRTC (feature `opus`; libopus from the system, Debian `libopus-dev`):
//! mono in 20 ms frames both ways, with in-band forward error correction and packet-loss
//! concealment on the way in, so that a lost packet costs a recovered or concealed frame, never
//! a stall. Opus itself runs at 48 kHz; libopus takes and gives 8, 12, 16, 24 or 48 kHz audio
//! directly, which spares a resampler on each side for a 16 kHz voice or speech recognizer.
//!
//! [`arrival`] is the pure part: what an RTP sequence number means given the one expected
//! (in order, after a loss, or late). [`VoiceDecoder`] acts on it: after a loss it conceals the
//! missing frames (up to [`MAX_CONCEALED`]) and rebuilds the last one from the arriving
//! packet's forward error correction, then decodes the packet; a late or repeated packet is
//! dropped; a packet libopus cannot read is concealed and counted. Nothing here panics on what
//! a peer sends.

use opusic_c::{Application, Bitrate, Channels, Decoder, Encoder, InbandFec, SampleRate};

/// Opus's own rate (and its RTP clock's).
pub const SAMPLE_RATE: u32 = 48_000;

/// Samples in one 20 ms frame at [`SAMPLE_RATE`].
pub const FRAME_SAMPLES: usize = 960;

/// The rates libopus takes and gives audio at.
pub const RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];

/// libopus's name for `rate`.
fn opus_rate(rate: u32) -> Result<SampleRate, OpusError> {
    Ok(match rate {
        8_000 => SampleRate::Hz8000,
        12_000 => SampleRate::Hz12000,
        16_000 => SampleRate::Hz16000,
        24_000 => SampleRate::Hz24000,
        48_000 => SampleRate::Hz48000,
        _ => {
            return Err(OpusError::Codec {
                operation: "choosing the sample rate",
                reason: format!("{rate} Hz; libopus takes {RATES:?}"),
            });
        }
    })
}

/// The most frames concealed for one gap (100 ms): past that, playing invented audio is worse
/// than skipping it.
pub const MAX_CONCEALED: u16 = 5;

/// The largest packet produced (libopus's own limit for a 20 ms frame is 1275 bytes).
const MAX_PACKET: usize = 1500;

/// Why the codec failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpusError {
    /// libopus refused a setting or an operation.
    #[error("opus {operation} failed: {reason}")]
    Codec {
        /// What was asked.
        operation: &'static str,
        /// libopus's reason.
        reason: String,
    },
    /// A frame of the wrong length was given to the encoder.
    #[error("opus frames are {expected} samples (20 ms), not {given}")]
    FrameLength {
        /// The samples of 20 ms at the encoder's rate.
        expected: usize,
        /// The samples given.
        given: usize,
    },
}

fn codec(operation: &'static str) -> impl Fn(opusic_c::ErrorCode) -> OpusError {
    move |code| OpusError::Codec {
        operation,
        reason: format!("{code:?}"),
    }
}

/// How the agent's voice is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    /// Target bitrate (24 kbit/s: wideband speech with room for error correction).
    pub bitrate_bps: u32,
    /// 0 (cheapest) to 10 (best); 5 costs half of 10 for speech that sounds the same on a call.
    pub complexity: u8,
    /// The loss the encoder plans its error correction for, in percent.
    pub expected_loss_percent: u8,
    /// Discontinuous transmission: almost nothing is sent during silence.
    pub dtx: bool,
    /// The rate of the audio given to the encoder, one of [`RATES`].
    pub sample_rate: u32,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        Self {
            bitrate_bps: 24_000,
            complexity: 5,
            expected_loss_percent: 10,
            dtx: false,
            sample_rate: SAMPLE_RATE,
        }
    }
}

/// Encodes 20 ms frames of mono speech.
pub struct VoiceEncoder {
    inner: Encoder,
    /// Samples in a frame at the settings' rate.
    frame: usize,
    /// The frame's samples as opusic-c takes them, kept between frames.
    samples: Vec<u16>,
    packet: Vec<u8>,
}

impl std::fmt::Debug for VoiceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceEncoder").finish_non_exhaustive()
    }
}

impl VoiceEncoder {
    /// An encoder for speech with `settings` and in-band forward error correction.
    ///
    /// # Errors
    /// [`OpusError::Codec`] when libopus refuses a setting (a rate not in [`RATES`]).
    pub fn new(settings: EncoderSettings) -> Result<Self, OpusError> {
        let rate = opus_rate(settings.sample_rate)?;
        let mut inner = Encoder::new(Channels::Mono, rate, Application::Voip)
            .map_err(codec("encoder creation"))?;
        inner
            .set_bitrate(Bitrate::Value(settings.bitrate_bps))
            .map_err(codec("set bitrate"))?;
        inner
            .set_complexity(settings.complexity)
            .map_err(codec("set complexity"))?;
        inner
            .set_inband_fec(InbandFec::Mode1)
            .map_err(codec("enable forward error correction"))?;
        inner
            .set_packet_loss(settings.expected_loss_percent)
            .map_err(codec("set expected loss"))?;
        inner.set_dtx(settings.dtx).map_err(codec("set dtx"))?;
        let frame = settings.sample_rate as usize / 50;
        Ok(Self {
            inner,
            frame,
            samples: Vec::with_capacity(frame),
            packet: vec![0; MAX_PACKET],
        })
    }

    /// One packet for one 20 ms frame.
    ///
    /// # Errors
    /// [`OpusError::FrameLength`] for a frame that is not 20 ms long at the settings' rate;
    /// [`OpusError::Codec`] when libopus fails.
    pub fn encode(&mut self, frame: &[i16]) -> Result<Vec<u8>, OpusError> {
        if frame.len() != self.frame {
            return Err(OpusError::FrameLength {
                expected: self.frame,
                given: frame.len(),
            });
        }
        // opusic-c takes the samples' bits as u16.
        self.samples.clear();
        self.samples.extend(frame.iter().map(|s| *s as u16));
        let length = self
            .inner
            .encode_to_slice(&self.samples, &mut self.packet)
            .map_err(codec("encode"))?;
        Ok(self.packet[..length].to_vec())
    }
}

/// What an arriving packet's sequence number means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The one expected (or the first).
    InOrder,
    /// `lost` packets before it never came.
    AfterLoss {
        /// How many are missing.
        lost: u16,
    },
    /// Already played past (late, or repeated).
    Late,
}

/// Classifies `seq` against the `expected` next sequence number, in RTP's wrapping 16-bit
/// space: up to half the space ahead is a loss, the other half behind is late.
pub fn arrival(expected: Option<u16>, seq: u16) -> Arrival {
    let Some(expected) = expected else {
        return Arrival::InOrder;
    };
    match seq.wrapping_sub(expected) {
        0 => Arrival::InOrder,
        ahead if ahead < 0x8000 => Arrival::AfterLoss { lost: ahead },
        _ => Arrival::Late,
    }
}

/// What a decoder has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossStats {
    /// Packets decoded.
    pub decoded: u64,
    /// Packets that never came.
    pub lost: u64,
    /// Lost frames rebuilt from the next packet's error correction.
    pub recovered: u64,
    /// Frames invented by loss concealment (lost ones, and packets libopus could not read).
    pub concealed: u64,
    /// Lost frames skipped: the part of a long gap past [`MAX_CONCEALED`].
    pub skipped: u64,
    /// Packets dropped as late or repeated.
    pub late: u64,
    /// Packets libopus could not read.
    pub malformed: u64,
}

/// Decodes 20 ms packets of mono speech, recovering and concealing what was lost.
pub struct VoiceDecoder {
    inner: Decoder,
    expected: Option<u16>,
    stats: LossStats,
    frame: Vec<u16>,
}

impl std::fmt::Debug for VoiceDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceDecoder")
            .field("expected", &self.expected)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl VoiceDecoder {
    /// A decoder giving 48 kHz audio.
    ///
    /// # Errors
    /// [`OpusError::Codec`] when libopus cannot make one.
    pub fn new() -> Result<Self, OpusError> {
        Self::at(SAMPLE_RATE)
    }

    /// A decoder giving audio at `rate`, one of [`RATES`]: libopus decodes straight to it.
    ///
    /// # Errors
    /// [`OpusError::Codec`] for another rate, or when libopus cannot make one.
    pub fn at(rate: u32) -> Result<Self, OpusError> {
        Ok(Self {
            inner: Decoder::new(Channels::Mono, opus_rate(rate)?)
                .map_err(codec("decoder creation"))?,
            expected: None,
            stats: LossStats::default(),
            frame: vec![0; rate as usize / 50],
        })
    }

    /// What it has seen so far.
    pub fn stats(&self) -> LossStats {
        self.stats
    }

    /// Takes the packet numbered `seq` and appends what is to be played to `out`: concealed
    /// and recovered frames for a loss before it, then its own frame. A late packet adds
    /// nothing.
    pub fn push(&mut self, seq: u16, packet: &[u8], out: &mut Vec<i16>) {
        match arrival(self.expected, seq) {
            Arrival::Late => {
                self.stats.late += 1;
                return;
            }
            Arrival::InOrder => {}
            Arrival::AfterLoss { lost } => {
                self.stats.lost += u64::from(lost);
                let concealed = (lost - 1).min(MAX_CONCEALED);
                for _ in 0..concealed {
                    self.conceal(out);
                }
                self.stats.skipped += u64::from(lost - 1 - concealed);
                // The packet carries the previous frame at a lower quality; libopus conceals
                // when it carries none.
                if self.decode(packet, true, out) {
                    self.stats.recovered += 1;
                } else {
                    self.conceal(out);
                }
            }
        }
        self.expected = Some(seq.wrapping_add(1));
        if self.decode(packet, false, out) {
            self.stats.decoded += 1;
        } else {
            self.stats.malformed += 1;
            self.conceal(out);
        }
    }

    /// Appends one decoded frame; false when libopus could not read the packet (an empty one
    /// included: libopus would conceal it, and concealment is counted apart).
    fn decode(&mut self, packet: &[u8], fec: bool, out: &mut Vec<i16>) -> bool {
        if packet.is_empty() {
            return false;
        }
        self.decode_into(packet, fec, out)
    }

    fn decode_into(&mut self, packet: &[u8], fec: bool, out: &mut Vec<i16>) -> bool {
        match self.inner.decode_to_slice(packet, &mut self.frame, fec) {
            Ok(samples) => {
                out.extend(self.frame[..samples].iter().map(|s| *s as i16));
                true
            }
            Err(_) => false,
        }
    }

    /// Appends one concealed frame (silence if even concealment fails).
    fn conceal(&mut self, out: &mut Vec<i16>) {
        self.stats.concealed += 1;
        if !self.decode_into(&[], false, out) {
            out.extend(std::iter::repeat_n(0, self.frame.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `frames` of a 220 Hz tone whose loudness swells, as 20 ms frames.
    fn tone(frames: usize) -> Vec<Vec<i16>> {
        (0..frames)
            .map(|f| {
                (0..FRAME_SAMPLES)
                    .map(|i| {
                        let t = (f * FRAME_SAMPLES + i) as f64 / f64::from(SAMPLE_RATE);
                        let swell = 1.0 + (t * 2.0).sin();
                        ((t * 220.0 * std::f64::consts::TAU).sin() * 6000.0 * swell) as i16
                    })
                    .collect()
            })
            .collect()
    }

    fn packets(frames: usize) -> Vec<Vec<u8>> {
        let mut encoder = VoiceEncoder::new(EncoderSettings::default()).unwrap();
        tone(frames)
            .iter()
            .map(|f| encoder.encode(f).unwrap())
            .collect()
    }

    fn rms(samples: &[i16]) -> f64 {
        (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
    }

    #[test]
    fn sequence_numbers_wrap() {
        assert_eq!(arrival(None, 7), Arrival::InOrder);
        assert_eq!(arrival(Some(7), 7), Arrival::InOrder);
        assert_eq!(arrival(Some(7), 9), Arrival::AfterLoss { lost: 2 });
        assert_eq!(arrival(Some(7), 6), Arrival::Late);
        assert_eq!(arrival(Some(65535), 0), Arrival::AfterLoss { lost: 1 });
        assert_eq!(arrival(Some(0), 65535), Arrival::Late);
        assert_eq!(
            arrival(Some(0), 0x7fff),
            Arrival::AfterLoss { lost: 0x7fff }
        );
        assert_eq!(arrival(Some(0), 0x8000), Arrival::Late);
    }

    #[test]
    fn speech_goes_through_at_the_set_bitrate() {
        let sent = packets(500);
        let bits: usize = sent.iter().map(|p| p.len() * 8).sum();
        let kbps = bits as f64 / 10.0 / 1000.0;
        assert!((18.0..=30.0).contains(&kbps), "{kbps} kbit/s for 24 set");
        let mut decoder = VoiceDecoder::new().unwrap();
        let mut out = Vec::new();
        for (seq, packet) in sent.iter().enumerate() {
            decoder.push(seq as u16, packet, &mut out);
        }
        assert_eq!(out.len(), 500 * FRAME_SAMPLES);
        let original: Vec<i16> = tone(500).concat();
        let (heard, said) = (rms(&out), rms(&original));
        assert!(
            (heard / said - 1.0).abs() < 0.2,
            "loudness kept: {heard} against {said}"
        );
        assert_eq!(
            decoder.stats(),
            LossStats {
                decoded: 500,
                ..LossStats::default()
            }
        );
        assert_eq!(
            VoiceEncoder::new(EncoderSettings::default())
                .unwrap()
                .encode(&[0; 320])
                .unwrap_err()
                .to_string(),
            "opus frames are 960 samples (20 ms), not 320"
        );
    }

    #[test]
    fn a_16_khz_voice_is_encoded_and_heard_at_16_khz_without_a_resampler() {
        let mut encoder = VoiceEncoder::new(EncoderSettings {
            bitrate_bps: 12_000,
            complexity: 1,
            sample_rate: 16_000,
            ..EncoderSettings::default()
        })
        .unwrap();
        // The swelling tone, every third sample: the same sound at 16 kHz.
        let original: Vec<i16> = tone(100).concat().into_iter().step_by(3).collect();
        let packets: Vec<Vec<u8>> = original
            .chunks_exact(320)
            .map(|frame| encoder.encode(frame).unwrap())
            .collect();
        let mut decoder = VoiceDecoder::at(16_000).unwrap();
        let mut out = Vec::new();
        for (seq, packet) in packets.iter().enumerate() {
            decoder.push(seq as u16, packet, &mut out);
        }
        assert_eq!(out.len(), original.len());
        let (heard, said) = (rms(&out), rms(&original));
        assert!((heard / said - 1.0).abs() < 0.25, "{heard} against {said}");
        // A lost packet conceals a 16 kHz frame.
        let mut lossy = VoiceDecoder::at(16_000).unwrap();
        let mut out = Vec::new();
        lossy.push(0, &packets[0], &mut out);
        lossy.push(3, &packets[3], &mut out);
        assert_eq!(out.len(), 4 * 320);
        assert_eq!(
            VoiceDecoder::at(22_050).unwrap_err().to_string(),
            "opus choosing the sample rate failed: 22050 Hz; libopus takes [8000, 12000, 16000, 24000, 48000]"
        );
    }

    #[test]
    fn a_lost_packet_is_rebuilt_a_burst_concealed_a_late_one_dropped() {
        let sent = packets(60);
        let mut decoder = VoiceDecoder::new().unwrap();
        let mut out = Vec::new();
        for seq in 0..60u16 {
            // 10 lost alone; 20, 21, 22 lost together; 40 comes again after 41.
            if matches!(seq, 10 | 20 | 21 | 22) {
                continue;
            }
            decoder.push(seq, &sent[usize::from(seq)], &mut out);
            if seq == 41 {
                decoder.push(40, &sent[40], &mut out);
            }
        }
        assert_eq!(
            out.len(),
            60 * FRAME_SAMPLES,
            "no frame missing, none twice"
        );
        let stats = decoder.stats();
        assert_eq!(stats.lost, 4);
        assert_eq!(stats.recovered, 2, "10 and 22 from the packets after them");
        assert_eq!(stats.concealed, 2, "20 and 21");
        assert_eq!(stats.late, 1);
        assert!(
            rms(&out[10 * FRAME_SAMPLES..11 * FRAME_SAMPLES]) > 500.0,
            "10 was rebuilt"
        );
    }

    #[test]
    fn a_long_gap_is_concealed_for_100_ms_and_garbage_is_concealed() {
        let sent = packets(40);
        let mut decoder = VoiceDecoder::new().unwrap();
        let mut out = Vec::new();
        decoder.push(0, &sent[0], &mut out);
        decoder.push(30, &sent[30], &mut out);
        let stats = decoder.stats();
        assert_eq!((stats.lost, stats.concealed, stats.skipped), (29, 5, 23));
        assert_eq!(out.len(), (1 + 5 + 1 + 1) * FRAME_SAMPLES);
        decoder.push(31, &[0xff; 3], &mut out);
        decoder.push(32, &[], &mut out);
        assert_eq!(decoder.stats().malformed, 2);
        assert_eq!(out.len(), 10 * FRAME_SAMPLES);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_delivery_plays_each_frame_at_most_once_and_never_stalls(
            deliveries in proptest::collection::vec((0u16..40, any::<bool>()), 0..80),
            start in any::<u16>(),
        ) {
            let sent = packets(40);
            let mut decoder = VoiceDecoder::new().unwrap();
            let mut out = Vec::new();
            for (offset, garbage) in &deliveries {
                // 63 frames of 20 ms in one packet: more than Opus allows.
                let packet: &[u8] = if *garbage { &[0xff; 3] } else { &sent[usize::from(*offset)] };
                decoder.push(start.wrapping_add(*offset), packet, &mut out);
            }
            let s = decoder.stats();
            prop_assert_eq!(out.len() % FRAME_SAMPLES, 0);
            let frames = (out.len() / FRAME_SAMPLES) as u64;
            prop_assert_eq!(frames, s.decoded + s.recovered + s.concealed);
            prop_assert_eq!(s.decoded + s.malformed + s.late, deliveries.len() as u64);
            // From the first packet to the newest, each frame is played once (decoded,
            // rebuilt or concealed) or skipped, never twice.
            if let (Some(next), Some((first, _))) = (decoder.expected, deliveries.first()) {
                let span = u64::from(next.wrapping_sub(start.wrapping_add(*first)));
                prop_assert_eq!(frames + s.skipped, span);
            }
        }
    }
}
