//! Opus over RTP, the sending half both ends share: audio at any rate in, 48 kHz 20 ms Opus
//! packets out on a connection's audio section, the RTP clock kept across pauses.

use std::time::{Duration, Instant};

use std::sync::Arc;

use str0m::config::CryptoProvider;
use str0m::format::Codec;
use str0m::media::{Frequency, MediaTime, Mid, Pt};
use str0m::rtp::Extension;
use str0m::{Rtc, RtcConfig};
use tracing::debug;

use crate::audio::opus::{
    EncoderSettings, FRAME_SAMPLES, OpusError, RATES, SAMPLE_RATE, VoiceEncoder,
};
use crate::audio::resample::Resampler;

/// The Opus bitrate both ends aim for: wideband speech (SILK), which Opus carries well at this
/// rate, error correction included. Each 20 ms packet also carries about 61 bytes of IP, UDP,
/// RTP with its media id, and SRTP's tag (24 kbit/s), so a session stays under 40 kbit/s each
/// way on the wire.
const BITRATE_BPS: u32 = 12_000;

/// The connection settings both ends share: Opus alone (the only codec either decodes), and of
/// RTP's header extensions only the media id, so that 20 ms packets carry no bytes neither end
/// reads; a reordered packet is waited for briefly, since the decoder rebuilds a lost frame
/// from the next packet anyway.
pub(super) fn rtc_config(crypto: Arc<CryptoProvider>) -> RtcConfig {
    RtcConfig::new()
        .set_crypto_provider(crypto)
        .clear_codecs()
        .enable_opus(true, false)
        .clear_extension_map()
        .set_extension(MID_EXTENSION_ID, Extension::RtpMid)
        .set_reordering_size_audio(2)
        .set_reordering_timeout_audio(Some(Duration::from_millis(40)))
        // Round trips for the metrics, from the peer's receiver reports.
        .set_stats_interval(Some(Duration::from_secs(5)))
}

/// Where browsers put the media id extension.
const MID_EXTENSION_ID: u8 = 4;

/// A gap in the audio longer than this starts a new talk spurt: the RTP clock jumps by the
/// silence, so the receiver's jitter buffer does not play the next words late.
const TALK_SPURT_GAP: Duration = Duration::from_millis(60);

/// libopus's effort: 1 of 0-10. On this machine a 20 ms frame of 16 kHz speech at 12 kbit/s
/// takes 37 us at 1 and 181 at 5 (BENCHMARKS.md, `opus/encode_*`), and Opus is most of a
/// WebRTC session's CPU; for a voice that is itself wideband synthesis, 1 is the trade.
const COMPLEXITY: u8 = 1;

/// Encodes audio and writes it as Opus packets.
pub(super) struct OpusSender {
    /// To 48 kHz, for a voice at a rate libopus does not take (22.05 kHz espeak-ng).
    resampler: Option<Resampler>,
    encoder: VoiceEncoder,
    /// Samples in 20 ms at the encoder's rate.
    frame: usize,
    /// Samples short of a whole frame.
    unsent: Vec<i16>,
    rtp_samples: u64,
    last_packet: Option<Instant>,
    /// The payload type the answer gave Opus, looked up at the first packet.
    opus: Option<Pt>,
    /// Packets written.
    pub(super) packets: u64,
    /// Opus payload bytes written.
    pub(super) bytes: u64,
}

impl OpusSender {
    /// A sender of audio at `rate`.
    ///
    /// # Errors
    /// The rate cannot be resampled, or libopus cannot make an encoder.
    pub(super) fn new(rate: u32) -> Result<Self, OpusError> {
        let (resampler, encoder_rate) = if RATES.contains(&rate) {
            (None, rate)
        } else {
            let resampler =
                Resampler::new(rate, SAMPLE_RATE).map_err(|reason| OpusError::Codec {
                    operation: "resampling to 48 kHz",
                    reason,
                })?;
            (Some(resampler), SAMPLE_RATE)
        };
        let frame = encoder_rate as usize / 50;
        Ok(Self {
            resampler,
            encoder: VoiceEncoder::new(EncoderSettings {
                bitrate_bps: BITRATE_BPS,
                complexity: COMPLEXITY,
                sample_rate: encoder_rate,
                ..EncoderSettings::default()
            })?,
            frame,
            unsent: Vec::with_capacity(frame * 2),
            rtp_samples: 0,
            last_packet: None,
            opus: None,
            packets: 0,
            bytes: 0,
        })
    }

    /// Drops audio not yet sent (a barge-in's clear).
    pub(super) fn clear(&mut self) {
        self.unsent.clear();
    }

    /// Sends `pcm` on `mid`'s Opus: every whole 20 ms frame now, the rest with the next call.
    pub(super) fn send(&mut self, rtc: &mut Rtc, mid: Mid, pcm: &[i16], now: Instant) {
        match &mut self.resampler {
            Some(resampler) => self.unsent.extend_from_slice(&resampler.process(pcm)),
            None => self.unsent.extend_from_slice(pcm),
        }
        let frames = self.unsent.len() / self.frame;
        for frame in 0..frames {
            let samples = &self.unsent[frame * self.frame..(frame + 1) * self.frame];
            match self.encoder.encode(samples) {
                Ok(packet) => self.send_packet(rtc, mid, packet.into(), now),
                Err(e) => debug!(error = %e, "a frame could not be encoded"),
            }
        }
        self.unsent.drain(..frames * self.frame);
    }

    /// Sends one packet already encoded (20 ms of 48 kHz Opus) on `mid`.
    pub(super) fn send_packet(&mut self, rtc: &mut Rtc, mid: Mid, packet: Arc<[u8]>, now: Instant) {
        if let Some(last) = self.last_packet {
            let pause = now.duration_since(last);
            if pause > TALK_SPURT_GAP {
                let silent = pause.as_micros() as u64 * u64::from(SAMPLE_RATE) / 1_000_000;
                self.rtp_samples += silent / FRAME_SAMPLES as u64 * FRAME_SAMPLES as u64;
            }
        }
        self.last_packet = Some(now);
        let time = MediaTime::new(self.rtp_samples, Frequency::FORTY_EIGHT_KHZ);
        self.rtp_samples += FRAME_SAMPLES as u64;
        let Some(writer) = rtc.writer(mid) else {
            return;
        };
        let pt = match self.opus {
            Some(pt) => pt,
            None => {
                let Some(pt) = writer
                    .payload_params()
                    .find(|p| p.spec().codec == Codec::Opus)
                    .map(|p| p.pt())
                else {
                    return;
                };
                *self.opus.insert(pt)
            }
        };
        let length = packet.len() as u64;
        match writer.write(pt, now, time, packet) {
            Ok(()) => {
                self.packets += 1;
                self.bytes += length;
            }
            Err(e) => debug!(error = %e, "a packet was not written"),
        }
    }
}

/// Encodes 16 kHz speech once into the 20 ms Opus packets [`OpusSender`] would send for it,
/// so that many callers can send the same speech without each encoding it.
///
/// # Errors
/// libopus cannot make an encoder.
pub fn encode_speech(pcm: &[i16], rate: u32) -> Result<Vec<Arc<[u8]>>, OpusError> {
    let mut sender = OpusSender::new(rate)?;
    let mut audio = match &mut sender.resampler {
        Some(resampler) => resampler.process(pcm),
        None => pcm.to_vec(),
    };
    audio.resize(audio.len().div_ceil(sender.frame) * sender.frame, 0);
    audio
        .chunks_exact(sender.frame)
        .map(|frame| sender.encoder.encode(frame).map(Arc::from))
        .collect()
}
