//! Per-connection limits and clocks, pure so they are tested on numbers: how far a client's
//! audio may run ahead of real time, how many messages it may send a second, and how much
//! agent audio a browser has played.

use std::time::Duration;

use tokio::time::Instant;

/// Refuses audio that arrives faster than real time beyond a margin (a client replaying a
/// file at full speed, or a hostile one flooding the speech-to-text connection). A burst after
/// a network stall stays within the margin.
#[derive(Debug, Clone)]
pub(super) struct RealtimeGuard {
    started: Instant,
    sample_rate: u32,
    margin: Duration,
    received: u64,
}

impl RealtimeGuard {
    /// A guard for audio at `sample_rate` from `started`, allowing `margin` ahead.
    pub(super) fn new(started: Instant, sample_rate: u32, margin: Duration) -> Self {
        Self {
            started,
            sample_rate,
            margin,
            received: 0,
        }
    }

    /// Counts `samples` received at `now`.
    ///
    /// # Errors
    /// How far ahead of real time the audio is, when that is beyond the margin.
    pub(super) fn admit(&mut self, samples: u64, now: Instant) -> Result<(), Duration> {
        self.received += samples;
        let elapsed = now.saturating_duration_since(self.started);
        let audio = Duration::from_secs_f64(self.received as f64 / f64::from(self.sample_rate));
        let ahead = audio.saturating_sub(elapsed);
        if ahead > self.margin {
            Err(ahead)
        } else {
            Ok(())
        }
    }
}

/// Bounds how many messages a client may send a second, averaged, with room for a burst: a
/// client that floods small messages (a loop gone wrong, or an attack) would otherwise take a
/// core from every other session. Legitimate clients stay far below it (a browser reports its
/// playback at most ten times a second; a carrier sends 50 media messages and its mark echoes).
#[derive(Debug, Clone)]
pub(super) struct MessageRate {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl MessageRate {
    /// A bucket refilled at `per_second`, holding at most `burst`; full at `now`.
    pub(super) fn new(per_second: u32, burst: u32, now: Instant) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// The sustained rate allowed, in messages a second.
    pub(super) fn per_second(&self) -> u32 {
        self.per_second as u32
    }

    /// Counts one message at `now`; false when the client is over the rate.
    pub(super) fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a client last said about its playback, and how the server estimates what it has
/// played since: the buffered audio goes on playing in real time, so the position advances
/// from the report by the time elapsed, but never past what was buffered then, nor past what
/// the server wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PlaybackReport {
    /// Samples played, as reported.
    pub(super) played: u64,
    /// Samples buffered then.
    pub(super) buffered: u64,
    /// When the report arrived.
    pub(super) at: Instant,
}

impl PlaybackReport {
    /// Samples the client has played by `now`, of `written` written so far at `sample_rate`.
    pub(super) fn estimate(&self, now: Instant, sample_rate: u32, written: u64) -> u64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let since = (elapsed * f64::from(sample_rate)) as u64;
        // The numbers are the client's: the largest ones must not wrap around.
        self.played
            .saturating_add(since.min(self.buffered))
            .min(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_time_audio_and_a_burst_within_the_margin_pass() {
        let t0 = Instant::now();
        let mut guard = RealtimeGuard::new(t0, 16000, Duration::from_secs(2));
        for i in 1..=500u64 {
            let now = t0 + Duration::from_millis(20 * i);
            assert!(guard.admit(320, now).is_ok(), "frame {i}");
        }
        // A 1.5 s stall, then everything at once.
        let now = t0 + Duration::from_millis(10_000 + 1500);
        assert!(guard.admit(16000 * 3 / 2, now).is_ok());
    }

    #[test]
    fn a_file_sent_at_full_speed_is_refused_once_past_the_margin() {
        let t0 = Instant::now();
        let mut guard = RealtimeGuard::new(t0, 16000, Duration::from_secs(2));
        let now = t0 + Duration::from_millis(100);
        let mut frames = 0;
        let ahead = loop {
            frames += 1;
            if let Err(ahead) = guard.admit(320, now) {
                break ahead;
            }
        };
        // 2.1 s of audio in 100 ms: 105 frames of 20 ms, refused at the 106th.
        assert_eq!(frames, 106);
        assert!(ahead > Duration::from_secs(2), "{ahead:?}");
    }

    #[test]
    fn a_flood_is_refused_after_the_burst_and_a_steady_client_never() {
        let t0 = Instant::now();
        let mut rate = MessageRate::new(50, 100, t0);
        let flooded = (0..1000).take_while(|_| rate.admit(t0)).count();
        assert_eq!(flooded, 100, "the burst, then nothing at the same instant");
        let later = t0 + Duration::from_millis(100);
        assert!(rate.admit(later), "five messages' worth refilled");
        let mut steady = MessageRate::new(50, 100, t0);
        for i in 1..=10_000u64 {
            // 40 a second for over four minutes, against an allowance of 50.
            assert!(
                steady.admit(t0 + Duration::from_millis(25 * i)),
                "message {i}"
            );
        }
        let mut bursty = MessageRate::new(50, 100, t0);
        for second in 0..60u64 {
            // 90 at once every two seconds: within the burst, and 45 a second on average.
            let at = t0 + Duration::from_secs(2 * second);
            assert_eq!(
                (0..90).filter(|_| bursty.admit(at)).count(),
                90,
                "second {second}"
            );
        }
    }

    #[test]
    fn playback_advances_through_the_buffer_only() {
        let t0 = Instant::now();
        let report = PlaybackReport {
            played: 16000,
            buffered: 1600,
            at: t0,
        };
        assert_eq!(report.estimate(t0, 16000, 17600), 16000);
        assert_eq!(
            report.estimate(t0 + Duration::from_millis(50), 16000, 17600),
            16800
        );
        // The buffer ran dry after 100 ms: no further progress is assumed.
        assert_eq!(
            report.estimate(t0 + Duration::from_secs(5), 16000, 40000),
            17600
        );
        // Never past what was written (the server cleared in between).
        assert_eq!(
            report.estimate(t0 + Duration::from_millis(50), 16000, 16200),
            16200
        );
        // A client that claims the largest numbers there are has heard what was written.
        let absurd = PlaybackReport {
            played: u64::MAX,
            buffered: u64::MAX,
            at: t0,
        };
        assert_eq!(
            absurd.estimate(t0 + Duration::from_secs(1), 16000, 40000),
            40000
        );
    }
}
