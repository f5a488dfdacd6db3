//! The user's audio kept in step with the sender's clock. Pure: the session hands it packet
//! numbers, RTP timestamps and the audio it decoded.
//!
//! Flux hears time pass only through audio, so a pause in the packets (a sender's
//! discontinuous transmission, a network stall) is filled with silence as it happens. When
//! packets come again, their timestamps tell which it was: a sender that paused skipped
//! ahead in media time, and the silence stood for that; a stall delivers the packets it held
//! up, with their timestamps contiguous, and the silence already stood for them: that much of
//! their audio is dropped, so Flux never hears more than a frame more audio than time has
//! passed. That one frame is let stand: the silence is filled on the clock, and a packet that
//! comes a moment after its frame's silence went (the user starting to speak again, after
//! discontinuous transmission) would otherwise lose its first 20 ms of speech.

/// Opus's RTP clock ticks per 20 ms packet.
const TICKS_PER_PACKET: u64 = 960;

/// Silence owed and the last packet's place.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Pacing {
    /// Samples of silence given for media time no packet has yet accounted for.
    owed: u64,
    /// The last packet's sequence number and timestamp.
    last: Option<(u16, u32)>,
}

impl Pacing {
    /// Silence of `samples` was given for a pause.
    pub(super) fn filled(&mut self, samples: u64) {
        self.owed += samples;
    }

    /// A packet numbered `seq` with timestamp `timestamp` decoded to `audio` (at `rate`, which
    /// divides 48 kHz; concealed frames for packets lost before it included): the part the
    /// silence stood for is removed. True when it is the newest packet yet, false for one
    /// from behind (late, reordered).
    pub(super) fn arrived(
        &mut self,
        seq: u16,
        timestamp: u32,
        rate: u32,
        audio: &mut Vec<i16>,
    ) -> bool {
        let mut newest = true;
        if let Some((last_seq, last_timestamp)) = self.last {
            let packets = u64::from(seq.wrapping_sub(last_seq));
            let ticks = u64::from(timestamp.wrapping_sub(last_timestamp));
            // Media time the sender skipped beyond the packets it numbered: its own pause,
            // which the silence was right to fill.
            let skipped = ticks.saturating_sub(packets * TICKS_PER_PACKET);
            // A packet from behind (late, reordered) moves neither.
            newest = packets < 0x8000;
            if newest {
                self.owed = self.owed.saturating_sub(skipped * u64::from(rate) / 48_000);
                self.last = Some((seq, timestamp));
            }
        } else {
            // Silence before the first packet stood for no packet.
            self.owed = 0;
            self.last = Some((seq, timestamp));
        }
        let frame = u64::from(rate) / 50;
        let dropped = self.owed.saturating_sub(frame).min(audio.len() as u64);
        audio.drain(..dropped as usize);
        self.owed -= dropped;
        newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets from `first`, `count` of them, contiguous: (seq, timestamp).
    fn run(first: (u16, u32), count: u16) -> impl Iterator<Item = (u16, u32)> {
        (0..count).map(move |i| {
            (
                first.0.wrapping_add(i),
                first.1.wrapping_add(u32::from(i) * 960),
            )
        })
    }

    fn deliver(pacing: &mut Pacing, packets: impl Iterator<Item = (u16, u32)>) -> usize {
        packets
            .map(|(seq, ts)| {
                let mut audio = vec![1i16; 320];
                pacing.arrived(seq, ts, 16_000, &mut audio);
                audio.len()
            })
            .sum()
    }

    #[test]
    fn a_stall_is_not_heard_twice() {
        let mut pacing = Pacing::default();
        assert_eq!(deliver(&mut pacing, run((10, 5000), 5)), 1600);
        // 200 ms without packets: silence was given; then the held-up packets arrive, and all
        // but one frame of them goes.
        pacing.filled(3200);
        assert_eq!(deliver(&mut pacing, run((15, 5000 + 5 * 960), 10)), 320);
        assert_eq!(pacing.owed, 320);
        assert_eq!(deliver(&mut pacing, run((25, 5000 + 15 * 960), 2)), 640);
    }

    #[test]
    fn a_senders_pause_keeps_its_silence_and_the_speech_after_it() {
        let mut pacing = Pacing::default();
        deliver(&mut pacing, run((10, 5000), 5));
        pacing.filled(3200);
        // The next packet is numbered next but stamped 200 ms later: the sender paused.
        assert_eq!(deliver(&mut pacing, run((15, 5000 + 15 * 960), 3)), 960);
    }

    #[test]
    fn discontinuous_transmission_keeps_its_silence_and_the_speech_after_it() {
        let mut pacing = Pacing::default();
        // Speech, then the sender's marker that it has gone quiet (one more packet).
        deliver(&mut pacing, run((10, 5000), 6));
        // Silence filled frame by frame for the 19 frames the sender skipped; its next packet
        // (the user speaking again) is numbered next and stamped 20 frames on.
        for _ in 0..19 {
            pacing.filled(320);
        }
        assert_eq!(deliver(&mut pacing, run((16, 5000 + 25 * 960), 3)), 960);
        // Had the fill also covered that packet's own 20 ms before it came, the packet is
        // kept all the same (its speech's first 20 ms), and Flux is one frame ahead...
        for _ in 0..20 {
            pacing.filled(320);
        }
        assert_eq!(deliver(&mut pacing, run((19, 5000 + 47 * 960), 1)), 320);
        assert_eq!(pacing.owed, 320);
        // ...never more: the next pause's extra frame is taken from the packet after it.
        for _ in 0..20 {
            pacing.filled(320);
        }
        assert_eq!(deliver(&mut pacing, run((20, 5000 + 67 * 960), 1)), 0);
        assert_eq!(pacing.owed, 320);
        assert_eq!(deliver(&mut pacing, run((21, 5000 + 68 * 960), 1)), 320);
    }

    #[test]
    fn lost_packets_are_not_a_pause_and_counters_wrap() {
        let mut pacing = Pacing::default();
        deliver(&mut pacing, run((65534, u32::MAX - 959), 1));
        pacing.filled(960);
        // Three packets lost across both wraps: their time is theirs (the decoder conceals
        // it), so the silence still stands for what arrives next, but for one frame.
        assert_eq!(deliver(&mut pacing, run((2, 3 * 960), 4)), 640);
        assert_eq!(pacing.owed, 320);
    }

    #[test]
    fn a_late_packet_moves_nothing() {
        let mut pacing = Pacing::default();
        deliver(&mut pacing, run((10, 5000), 3));
        pacing.filled(640);
        let mut late = vec![1i16; 320];
        assert!(!pacing.arrived(9, 5000 - 960, 16_000, &mut late));
        assert!(late.is_empty());
        assert_eq!(pacing.last, Some((12, 5000 + 2 * 960)));
        assert_eq!(deliver(&mut pacing, run((13, 5000 + 3 * 960), 1)), 320);
    }

    proptest::proptest! {
        /// Whatever the stalls, pauses and losses, the audio delivered plus the silence
        /// given never exceeds the media time the packets span plus what the silence covered.
        #[test]
        fn audio_and_silence_never_outrun_the_senders_clock(
            steps in proptest::collection::vec((0u16..4, 0u32..30, 0u64..4000), 1..60),
        ) {
            let mut pacing = Pacing::default();
            let (mut seq, mut ts) = (100u16, 1000u32);
            let mut first = vec![0i16; 320];
            pacing.arrived(seq, ts, 16_000, &mut first);
            let (mut delivered, mut silence, mut span) = (first.len() as u64, 0u64, 0u64);
            for (lost, paused_packets, fill) in steps {
                pacing.filled(fill);
                silence += fill;
                seq = seq.wrapping_add(1 + lost);
                let advance = 960 * (1 + u32::from(lost) + paused_packets);
                ts = ts.wrapping_add(advance);
                span += u64::from(advance) / 3;
                let mut audio = vec![0i16; 320 * (1 + usize::from(lost))];
                pacing.arrived(seq, ts, 16_000, &mut audio);
                delivered += audio.len() as u64;
            }
            // The first packet's own time, then every advance: the silence given for a
            // pause counts as its time; beyond that, a stall's silence is still owed.
            proptest::prop_assert!(delivered + silence - pacing.owed <= span + 320);
        }
    }
}
