//! The cut, in one place: what the agent wrote, what the far end has played, and which audio
//! a barge-in has made stale. Pure; the sink (playout's task), the interrupter (the engine's
//! task) and the call's task each hold it only for a few instructions.
//!
//! A barge-in happens in two steps. The engine's task interrupts first ([`Playback::interrupt`]):
//! the epoch moves on, so audio queued before it is never sent, and until playout has read
//! what was heard, audio playout writes is dropped and a carrier's late mark echoes count for
//! nothing. Then playout clears ([`Playback::clear`]) after reading [`Playback::heard`]. A
//! response cut without an interrupt (a resumed speculation) takes the second step alone.

use tokio::time::Instant;

use super::guards::PlaybackReport;

/// How the far end's playback is known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Clock {
    /// Not at all: what was written counts as heard.
    Written,
    /// From its reports of samples played and buffered (a browser).
    Reports(Option<PlaybackReport>),
    /// From echoed marks naming running sample counts (a carrier).
    Marks {
        /// Samples confirmed played, or dropped by a clear.
        confirmed: u64,
        /// Echoes up to here were settled by a clear; from an interrupt until playout's
        /// clear, every echo is (the carrier echoes the marks a clear drops).
        settled: u64,
    },
}

impl Clock {
    /// The metrics label of the clock that decides a cut.
    fn label(&self) -> &'static str {
        match self {
            Clock::Reports(Some(_)) => "client_reports",
            Clock::Marks { .. } => "carrier_marks",
            Clock::Written | Clock::Reports(None) => "server_clock",
        }
    }
}

/// The agent's side of one call.
#[derive(Debug)]
pub(super) struct Playback {
    clock: Clock,
    /// Agent samples written by playout over the call.
    written: u64,
    sample_rate: u32,
    /// Moves on at each cut: audio written in an earlier epoch is never sent.
    epoch: u64,
    /// Interrupted; playout's clear has not come yet.
    pending: bool,
}

/// What a clear asks of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cleared {
    /// Send a clear (none went out at the interrupt).
    pub(super) send: bool,
    /// The clock that decided what was heard.
    pub(super) clock: &'static str,
}

impl Playback {
    pub(super) fn new(clock: Clock, sample_rate: u32) -> Self {
        Playback {
            clock,
            written: 0,
            sample_rate,
            epoch: 0,
            pending: false,
        }
    }

    /// Playout wrote `samples`: the epoch to queue them in and the running count after them,
    /// or `None` when they belong to a response being cut.
    pub(super) fn write(&mut self, samples: u64) -> Option<(u64, u64)> {
        self.written += samples;
        (!self.pending).then_some((self.epoch, self.written))
    }

    /// The engine decided a barge-in.
    pub(super) fn interrupt(&mut self) {
        self.pending = true;
        self.epoch += 1;
        if let Clock::Marks { settled, .. } = &mut self.clock {
            *settled = u64::MAX;
        }
    }

    /// Playout cut the response, after reading what was heard.
    pub(super) fn clear(&mut self) -> Cleared {
        let clock = self.clock.label();
        if let Clock::Marks { confirmed, settled } = &mut self.clock {
            *confirmed = self.written;
            *settled = self.written;
        }
        let send = !std::mem::replace(&mut self.pending, false);
        if send {
            self.epoch += 1;
        }
        Cleared { send, clock }
    }

    pub(super) fn is_current(&self, epoch: u64) -> bool {
        epoch == self.epoch
    }

    /// The far end reported its player's position.
    pub(super) fn playing(&mut self, samples: u64, buffered: u64, at: Instant) {
        if let Clock::Reports(report) = &mut self.clock {
            *report = Some(PlaybackReport {
                played: samples,
                buffered,
                at,
            });
        }
    }

    /// The far end confirmed everything up to `end` played (or dropped by a clear).
    pub(super) fn played_to(&mut self, end: u64) {
        if let Clock::Marks { confirmed, settled } = &mut self.clock
            && end > *settled
        {
            *confirmed = (*confirmed).max(end);
        }
    }

    /// Samples of all written that the far end has played by `now`, or `None` when what was
    /// written is all that is known. Never more than was written, whatever the far end claims.
    pub(super) fn heard(&self, now: Instant) -> Option<u64> {
        match self.clock {
            Clock::Written | Clock::Reports(None) => None,
            Clock::Reports(Some(report)) => {
                Some(report.estimate(now, self.sample_rate, self.written))
            }
            Clock::Marks { confirmed, .. } => Some(confirmed.min(self.written)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks() -> Playback {
        Playback::new(
            Clock::Marks {
                confirmed: 0,
                settled: 0,
            },
            16000,
        )
    }

    #[test]
    fn a_carrier_has_heard_what_it_echoed_and_never_more_than_was_written() {
        let mut line = marks();
        let now = Instant::now();
        assert_eq!(line.write(320), Some((0, 320)));
        assert_eq!(line.write(320), Some((0, 640)));
        assert_eq!(line.heard(now), Some(0));
        line.played_to(320);
        assert_eq!(line.heard(now), Some(320));
        line.played_to(100_000);
        assert_eq!(
            line.heard(now),
            Some(640),
            "a forged echo counts for what was written"
        );
    }

    #[test]
    fn an_interrupt_drops_what_playout_writes_until_its_clear_and_sends_one_clear() {
        let mut line = marks();
        let now = Instant::now();
        let (before, _) = line.write(320).unwrap();
        line.played_to(320);
        line.interrupt();
        assert!(
            !line.is_current(before),
            "audio queued before the cut is stale"
        );
        assert_eq!(
            line.write(320),
            None,
            "a frame of the cut response, written late"
        );
        line.played_to(640);
        assert_eq!(
            line.heard(now),
            Some(320),
            "echoes of dropped marks do not count"
        );
        let cleared = line.clear();
        assert_eq!(
            cleared,
            Cleared {
                send: false,
                clock: "carrier_marks"
            },
            "the interrupt sent the clear already"
        );
        let (after, end) = line.write(320).unwrap();
        assert!(line.is_current(after));
        assert_eq!(end, 960);
        line.played_to(640);
        assert_eq!(line.heard(now), Some(640), "settled by the clear");
        line.played_to(960);
        assert_eq!(line.heard(now), Some(960));
    }

    #[test]
    fn a_cut_without_an_interrupt_sends_its_own_clear_and_stales_the_queue() {
        let mut line = marks();
        let (before, _) = line.write(320).unwrap();
        assert!(line.clear().send);
        assert!(!line.is_current(before));
        assert!(line.write(320).is_some(), "nothing pending after a clear");
    }

    #[test]
    fn a_browser_is_heard_by_its_reports_and_the_server_clock_until_the_first() {
        let mut line = Playback::new(Clock::Reports(None), 16000);
        let t0 = Instant::now();
        line.write(16000);
        assert_eq!(line.heard(t0), None);
        assert_eq!(line.clear().clock, "server_clock");
        line.write(16000);
        line.playing(8000, 1600, t0);
        let later = t0 + std::time::Duration::from_millis(50);
        assert_eq!(line.heard(later), Some(8800));
        line.played_to(32000);
        assert_eq!(
            line.heard(later),
            Some(8800),
            "marks mean nothing to a browser"
        );
        assert_eq!(line.clear().clock, "client_reports");
    }

    #[test]
    fn without_a_clock_what_was_written_was_heard() {
        let mut line = Playback::new(Clock::Written, 16000);
        line.write(320);
        line.playing(1, 1, Instant::now());
        assert_eq!(line.heard(Instant::now()), None);
        assert_eq!(line.clear().clock, "server_clock");
    }
}
