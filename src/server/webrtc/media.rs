//! Opus over RTP, the sending half both ends share: audio at any rate in, 48 kHz 20 ms Opus
//! packets out on a connection's audio section, the RTP clock kept across pauses.

use std::time::{Duration, Instant};

use std::sync::Arc;

use str0m::config::CryptoProvider;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, MediaTime, Mid, Pt};
use str0m::rtp::Extension;
use str0m::{Rtc, RtcConfig};
use tracing::debug;

use crate::audio::opus::{
    EncoderSettings, FRAME_SAMPLES, OpusError, RATES, SAMPLE_RATE, VoiceEncoder,
};
use crate::audio::resample::Resampler;

/// The Opus bitrate of the user's speech (a caller's; the page asks the browser for the same):
/// the least at which libopus codes speech as wideband (SILK, 8 kHz of audio) rather than
/// narrowband, and Flux hears the speech it transcribes. Each 20 ms packet also carries about
/// 61 bytes of IP, UDP, RTP with its media id, and SRTP's tag (24 kbit/s), so the user's side
/// stays under 40 kbit/s on the wire while the user speaks, and near nothing while silent.
pub(super) const SPEECH_BITRATE_BPS: u32 = 16_000;

/// The Opus bitrate of the agent's voice: libopus codes it as narrowband (4 kHz of audio, a
/// telephone's) at this rate. Wideband would take [`SPEECH_BITRATE_BPS`], pushing the agent's
/// side past 40 kbit/s on the wire with the synthetic voice, and more encoding per packet,
/// which is most of a WebRTC session's CPU (BENCHMARKS.md, WebRTC).
const VOICE_BITRATE_BPS: u32 = 12_000;

/// The connection settings both ends share: Opus alone (the only codec either decodes), asking
/// the sender for discontinuous transmission (`usedtx=1`: a browser then sends one small packet
/// every 400 ms while its user is silent, instead of 50 a second) and in-band error correction;
/// of RTP's header extensions only the media id, so that 20 ms packets carry no bytes neither
/// end reads; a reordered packet is waited for briefly, since the decoder rebuilds a lost frame
/// from the next packet anyway.
pub(super) fn rtc_config(crypto: Arc<CryptoProvider>) -> RtcConfig {
    let mut config = RtcConfig::new().set_crypto_provider(crypto).clear_codecs();
    config.codec_config().add_config(
        OPUS_PT,
        None,
        Codec::Opus,
        Frequency::FORTY_EIGHT_KHZ,
        Some(2),
        FormatParams {
            min_p_time: Some(10),
            use_inband_fec: Some(true),
            use_dtx: Some(true),
            ..FormatParams::default()
        },
    );
    config
        .clear_extension_map()
        .set_extension(MID_EXTENSION_ID, Extension::RtpMid)
        .set_reordering_size_audio(2)
        .set_reordering_timeout_audio(Some(Duration::from_millis(40)))
        // Round trips for the metrics, from the peer's receiver reports.
        .set_stats_interval(Some(Duration::from_secs(5)))
        // The data channel's SCTP association from the offer and answer (draft-hancke-tsvwg-
        // snap, `a=sctp-init`) when both ends can: two round trips fewer before the protocol
        // flows, and no SCTP handshake to lose (its first retransmission waits 3 s). A peer
        // that does not offer it gets the usual handshake.
        .set_snap_enabled(true)
}

/// The payload type browsers offer Opus with.
const OPUS_PT: Pt = Pt::new_with_value(111);

/// Where browsers put the media id extension.
const MID_EXTENSION_ID: u8 = 4;

/// A gap in the audio longer than this starts a new talk spurt: the RTP clock jumps by the
/// silence, so the receiver's jitter buffer does not play the next words late.
const TALK_SPURT_GAP: Duration = Duration::from_millis(60);

/// Where RTP timestamps come from. Pure. Frames follow each other on the clock while audio
/// flows, sent on time or ahead of it (the agent's voice comes in bursts); when the time since
/// a talk spurt began outruns the audio sent in it by more than [`TALK_SPURT_GAP`], the sender
/// was silent (its reply ended, or discontinuous transmission), and the clock jumps by that
/// silence in whole frames, so the receiver plays the next words when they were spoken.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct RtpClock {
    next: u64,
    /// When the current talk spurt began, and the clock then.
    spurt: Option<(Instant, u64)>,
}

impl RtpClock {
    /// The timestamp (48 kHz) of a 20 ms packet sent at `now`.
    pub(super) fn stamp(&mut self, now: Instant) -> u64 {
        let frame = FRAME_SAMPLES as u64;
        match self.spurt {
            Some((start, at_start)) => {
                let sent = self.next - at_start;
                let elapsed = now.saturating_duration_since(start).as_micros() as u64
                    * u64::from(SAMPLE_RATE)
                    / 1_000_000;
                let gap = TALK_SPURT_GAP.as_millis() as u64 * u64::from(SAMPLE_RATE) / 1000;
                if elapsed > sent + gap {
                    let silence = elapsed - sent;
                    self.next += (silence + frame / 2) / frame * frame;
                    self.spurt = Some((now, self.next));
                }
            }
            None => self.spurt = Some((now, self.next)),
        }
        let stamp = self.next;
        self.next += frame;
        stamp
    }
}

/// Whether a packet libopus made is a discontinuous-transmission frame: two bytes or less say
/// only that the sender is silent, and after the first of a run none need be sent.
pub(super) fn is_dtx(packet: &[u8]) -> bool {
    packet.len() <= 2
}

/// Which of an encoder's packets a sender in discontinuous transmission sends: all but the
/// repeats of its silent marker, as WebRTC's Opus sender does. Pure.
#[derive(Debug, Default, Clone, Copy)]
struct DtxGate {
    /// The last packet was a marker.
    silent: bool,
}

impl DtxGate {
    /// Whether `packet`, the encoder's next, goes out.
    fn admits(&mut self, packet: &[u8]) -> bool {
        let repeat = is_dtx(packet) && self.silent;
        self.silent = is_dtx(packet);
        !repeat
    }
}

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
    clock: RtpClock,
    dtx: DtxGate,
    /// The payload type the answer gave Opus, looked up at the first packet.
    opus: Option<Pt>,
    /// Packets written.
    pub(super) packets: u64,
    /// Opus payload bytes written.
    pub(super) bytes: u64,
}

impl OpusSender {
    /// A sender of the user's speech at `rate`, with discontinuous transmission (`dtx`) or
    /// not.
    ///
    /// # Errors
    /// The rate cannot be resampled, or libopus cannot make an encoder.
    pub(super) fn speech(rate: u32, dtx: bool) -> Result<Self, OpusError> {
        Self::new(rate, SPEECH_BITRATE_BPS, dtx)
    }

    /// A sender of the agent's voice at `rate`.
    ///
    /// # Errors
    /// The rate cannot be resampled, or libopus cannot make an encoder.
    pub(super) fn voice(rate: u32) -> Result<Self, OpusError> {
        Self::new(rate, VOICE_BITRATE_BPS, false)
    }

    fn new(rate: u32, bitrate_bps: u32, dtx: bool) -> Result<Self, OpusError> {
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
                bitrate_bps,
                complexity: COMPLEXITY,
                sample_rate: encoder_rate,
                dtx,
                ..EncoderSettings::default()
            })?,
            frame,
            unsent: Vec::with_capacity(frame * 2),
            clock: RtpClock::default(),
            dtx: DtxGate::default(),
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
                Ok(packet) => {
                    if self.dtx.admits(&packet) {
                        self.send_packet(rtc, mid, packet.into(), now);
                    }
                }
                Err(e) => debug!(error = %e, "a frame could not be encoded"),
            }
        }
        self.unsent.drain(..frames * self.frame);
    }

    /// Sends one packet already encoded (20 ms of Opus) on `mid`.
    pub(super) fn send_packet(&mut self, rtc: &mut Rtc, mid: Mid, packet: Arc<[u8]>, now: Instant) {
        let time = MediaTime::new(self.clock.stamp(now), Frequency::FORTY_EIGHT_KHZ);
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

/// Speech encoded once into the 20 ms Opus packets a caller sends for it, and for the silence
/// after it, so that many callers can send the same speech without each encoding it. With
/// discontinuous transmission a frame may have no packet: the sender is silent, as a browser
/// asked for `usedtx=1` is.
#[derive(Debug, Clone)]
pub struct EncodedSpeech {
    /// The speech's frames, then the silence's; `None`: nothing is sent for that frame.
    packets: Vec<Option<Arc<[u8]>>>,
    /// Frames of the speech (the silence follows).
    speech: usize,
    /// Where the silence's steady pattern starts, and its length in frames: past the end,
    /// silence repeats it.
    repeat_from: usize,
    period: usize,
}

/// How much silence is encoded after the speech: libopus settles into its discontinuous
/// pattern (a comfort-noise update every 400 ms) well within it.
const SILENCE_ENCODED: usize = 100;

impl EncodedSpeech {
    /// Encodes `pcm`, 16 kHz (or any rate [`OpusSender`] takes), with discontinuous
    /// transmission (`dtx`) or not.
    ///
    /// # Errors
    /// libopus cannot make an encoder.
    pub fn new(pcm: &[i16], rate: u32, dtx: bool) -> Result<Self, OpusError> {
        let mut sender = OpusSender::speech(rate, dtx)?;
        let mut audio = match &mut sender.resampler {
            Some(resampler) => resampler.process(pcm),
            None => pcm.to_vec(),
        };
        audio.resize(audio.len().div_ceil(sender.frame) * sender.frame, 0);
        let speech = audio.len() / sender.frame;
        audio.resize(audio.len() + SILENCE_ENCODED * sender.frame, 0);
        let packets = audio
            .chunks_exact(sender.frame)
            .map(|frame| {
                let packet = sender.encoder.encode(frame)?;
                Ok(sender.dtx.admits(&packet).then(|| Arc::from(packet)))
            })
            .collect::<Result<Vec<_>, OpusError>>()?;
        // The steady pattern runs from one comfort-noise update to the next (without
        // discontinuous transmission, it is the last frame alone).
        let updates: Vec<usize> = (speech..packets.len())
            .filter(|&i| packets[i].as_ref().is_some_and(|p| !is_dtx(p)))
            .collect();
        let (repeat_from, period) = match updates.as_slice() {
            [.., before_last, last] if dtx => (*before_last, last - before_last),
            _ => (packets.len() - 1, 1),
        };
        Ok(Self {
            packets,
            speech,
            repeat_from,
            period,
        })
    }

    /// Frames of the speech.
    pub fn speech_frames(&self) -> usize {
        self.speech
    }

    /// The packet for frame `index` of the speech; `None` past its end, or when that frame is
    /// not sent.
    pub fn speech(&self, index: usize) -> Option<Arc<[u8]>> {
        self.packets[..self.speech].get(index).cloned().flatten()
    }

    /// The packet for the `index`th frame of silence after the speech; `None` when that frame
    /// is not sent.
    pub fn silence(&self, index: usize) -> Option<Arc<[u8]>> {
        let mut at = self.speech + index;
        if at >= self.packets.len() {
            at = self.repeat_from + (at - self.repeat_from) % self.period;
        }
        self.packets[at].clone()
    }
}

#[cfg(test)]
mod tests {
    use str0m::media::MediaKind;

    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn frames_on_time_or_ahead_follow_each_other() {
        let start = Instant::now();
        let mut clock = RtpClock::default();
        // On time, with a little jitter.
        let stamps: Vec<u64> = [0, 21, 39, 60, 85]
            .map(|ms| clock.stamp(at(start, ms)))
            .to_vec();
        assert_eq!(stamps, [0, 960, 1920, 2880, 3840]);
        // A burst ahead of time (the agent's voice comes in chunks), then on time again.
        let burst: Vec<u64> = [100, 100, 100, 100, 160]
            .map(|ms| clock.stamp(at(start, ms)))
            .to_vec();
        assert_eq!(burst, [4800, 5760, 6720, 7680, 8640]);
    }

    #[test]
    fn a_silence_moves_the_clock_by_its_length_in_whole_frames() {
        let start = Instant::now();
        let mut clock = RtpClock::default();
        for ms in [0, 20, 40] {
            clock.stamp(at(start, ms));
        }
        // The next frame, due at 60 ms, comes 400 ms later (discontinuous transmission): it
        // was spoken at 460 ms.
        assert_eq!(clock.stamp(at(start, 461)), 460 * 48);
        assert_eq!(clock.stamp(at(start, 480)), 480 * 48);
        // Ahead of time after a burst, then a reply's end: the silence counts from where the
        // audio sent runs out, not from the last packet.
        for _ in 0..10 {
            clock.stamp(at(start, 500));
        }
        assert_eq!(clock.stamp(at(start, 1000)), 1000 * 48);
    }

    /// The answer `offerer`'s offer of audio and a data channel gets from a server's config.
    fn answer_to(offerer: RtcConfig) -> String {
        let crypto = || Arc::new(str0m::crypto::from_feature_flags());
        let mut caller = offerer.build(Instant::now());
        let mut change = caller.sdp_api();
        change.add_media(
            MediaKind::Audio,
            str0m::media::Direction::SendRecv,
            None,
            None,
            None,
        );
        change.add_channel("turnflow".to_owned());
        let (offer, _) = change.apply().unwrap();
        let mut server = rtc_config(crypto()).build(Instant::now());
        let answer = server.sdp_api().accept_offer(offer).unwrap();
        answer.to_sdp_string()
    }

    #[test]
    fn the_answer_asks_for_dtx_and_sets_up_the_data_channel_in_it_when_offered() {
        let crypto = || Arc::new(str0m::crypto::from_feature_flags());
        let ours = answer_to(rtc_config(crypto()));
        assert!(ours.contains("usedtx=1"), "{ours}");
        assert!(ours.contains("a=sctp-init:"), "{ours}");
        // A peer without SNAP (a browser today) gets the usual SCTP handshake.
        let plain = answer_to(rtc_config(crypto()).set_snap_enabled(false));
        assert!(plain.contains("usedtx=1"), "{plain}");
        assert!(!plain.contains("a=sctp-init"), "{plain}");
    }

    /// The Opus configuration a packet's first byte names (RFC 6716, 3.1).
    fn configuration(packet: &[u8]) -> u8 {
        packet[0] >> 3
    }

    #[test]
    fn the_users_speech_goes_as_wideband_and_the_agents_voice_as_narrowband() {
        let wav = std::fs::read("tests/fixtures/book_table_16k.wav").unwrap();
        let (_, offset) = crate::audio::parse_wav_header(&wav).unwrap().unwrap();
        let pcm: Vec<i16> = wav[offset..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let speech = EncodedSpeech::new(&pcm, 16_000, true).unwrap();
        let sent: Vec<Arc<[u8]>> = (0..speech.speech_frames())
            .filter_map(|i| speech.speech(i))
            .filter(|p| !is_dtx(p))
            .collect();
        assert!(sent.len() > 100, "{} packets", sent.len());
        // SILK wideband, 20 ms: configuration 9.
        assert!(sent.iter().all(|p| configuration(p) == 9));
        let mut voice = OpusSender::voice(16_000).unwrap();
        let packet = voice.encoder.encode(&pcm[16_000..16_320]).unwrap();
        // SILK narrowband, 20 ms: configuration 1.
        assert_eq!(configuration(&packet), 1);
    }

    #[test]
    fn silence_is_mostly_not_sent_with_dtx_and_repeats_its_pattern() {
        let speech: Vec<i16> = (0..16_000)
            .map(|i| ((i as f32 * 0.07).sin() * 8000.0 * ((i as f32 * 0.002).sin().abs())) as i16)
            .collect();
        let dtx = EncodedSpeech::new(&speech, 16_000, true).unwrap();
        let steady = EncodedSpeech::new(&speech, 16_000, false).unwrap();
        assert_eq!(dtx.speech_frames(), 50);
        assert!((0..50).all(|i| steady.speech(i).is_some()));
        assert!(dtx.speech(50).is_none());
        // Ten seconds of silence: every frame sent without DTX; with it, the first 200 ms
        // (libopus waits that long to be sure), then a comfort-noise update and the marker
        // after it every 420 ms.
        let sent = |s: &EncodedSpeech, frames: std::ops::Range<usize>| {
            frames.filter(|&i| s.silence(i).is_some()).count()
        };
        assert_eq!(sent(&steady, 0..500), 500);
        assert!(dtx.silence(0).is_some());
        assert!(
            sent(&dtx, 0..500) <= 70,
            "{} frames sent",
            sent(&dtx, 0..500)
        );
        // Past what was encoded the pattern goes on: two packets every 21 frames.
        for window in [SILENCE_ENCODED..SILENCE_ENCODED + 21, 400..421, 480..501] {
            assert_eq!(sent(&dtx, window.clone()), 2, "{window:?}");
        }
    }
}
