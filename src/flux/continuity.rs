//! Pure bookkeeping behind the Flux client: framing, audio time, replay and turn continuity.
//!
//! No tasks and no clocks here (instants come in as values), so every rule is unit tested:
//! - [`Chunker`] cuts whatever the application sends into fixed frames (80 ms by default).
//! - [`AudioLedger`] remembers when each stretch of audio left us, so a transcript's
//!   `audio_window_end` (or a word's `end`) maps back to the instant we sent that audio.
//! - [`ReplayBuffer`] keeps the audio of the open turn so a reconnect can replay it.
//! - [`TurnTracker`] turns events from successive connections into one consistent stream in
//!   one audio timeline: offsets times and turn indices, drops what a replay repeats, and never
//!   lets a consumer see two `StartOfTurn`s for one turn.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::messages::{TurnEvent, TurnInfo};
use crate::text::normalize;

/// Cuts an arbitrary byte stream into frames of exactly `frame_bytes`, keeping sample
/// boundaries. `frame_bytes == 0` means pass-through (compressed or containerized audio).
#[derive(Debug)]
pub(crate) struct Chunker {
    frame_bytes: usize,
    pending: BytesMut,
}

impl Chunker {
    /// A chunker for frames of `frame_bytes` (0 = pass-through).
    pub(crate) fn new(frame_bytes: usize) -> Self {
        Self {
            frame_bytes,
            pending: BytesMut::new(),
        }
    }

    /// Adds bytes and returns every complete frame now available.
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<Bytes> {
        if self.frame_bytes == 0 {
            return if data.is_empty() {
                Vec::new()
            } else {
                vec![Bytes::copy_from_slice(data)]
            };
        }
        self.pending.extend_from_slice(data);
        let mut frames = Vec::with_capacity(self.pending.len() / self.frame_bytes);
        // Frames only pass through (the replay buffer keeps its own packed copy), so sharing
        // the pending buffer pins nothing for long.
        while self.pending.len() >= self.frame_bytes {
            frames.push(self.pending.split_to(self.frame_bytes).freeze());
        }
        frames
    }

    /// Takes the incomplete remainder (on close), if any.
    pub(crate) fn flush(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.pending.split().freeze())
    }

    /// Bytes waiting for a complete frame.
    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Maps audio time (seconds since the session's first byte, across reconnects) to the
/// instant that audio was first sent.
#[derive(Debug)]
pub(crate) struct AudioLedger {
    /// (audio end time of a frame, instant it was first sent), ascending.
    entries: VecDeque<(f64, Instant)>,
    horizon: f64,
}

impl AudioLedger {
    /// A ledger remembering `horizon` seconds of audio.
    pub(crate) fn new(horizon: Duration) -> Self {
        Self {
            entries: VecDeque::new(),
            horizon: horizon.as_secs_f64(),
        }
    }

    /// Records that audio up to `audio_end` was sent at `at`. Re-sending (replay) an already
    /// recorded stretch keeps the first instant.
    pub(crate) fn record(&mut self, audio_end: f64, at: Instant) {
        if self
            .entries
            .back()
            .is_some_and(|(end, _)| *end >= audio_end)
        {
            return;
        }
        self.entries.push_back((audio_end, at));
        while self
            .entries
            .front()
            .is_some_and(|(end, _)| audio_end - *end > self.horizon)
        {
            self.entries.pop_front();
        }
    }

    /// The instant the audio at `audio_time` was sent: the first frame whose end reaches it.
    pub(crate) fn sent_at(&self, audio_time: f64) -> Option<Instant> {
        // Allow float noise from server-side rounding (e.g. 0.24 vs 0.2399999).
        let t = audio_time - 1e-6;
        let i = self.entries.partition_point(|(end, _)| *end < t);
        self.entries.get(i).map(|(_, at)| *at)
    }
}

/// Audio kept for replay after a dropped connection: everything since the last `EndOfTurn`,
/// bounded to `turn_limit` while a turn is open and `idle_limit` between turns. 16-bit PCM is
/// kept packed losslessly ([`super::lossless`]): it is most of a session's memory otherwise.
#[derive(Debug)]
pub(crate) struct ReplayBuffer {
    frames: VecDeque<(f64, Box<[u8]>)>,
    pack: bool,
    start: f64,
    end: f64,
    turn_limit: f64,
    idle_limit: f64,
}

impl ReplayBuffer {
    /// A buffer keeping at most `turn_limit` of an open turn and `idle_limit` between turns;
    /// `pcm16` frames are packed.
    pub(crate) fn new(turn_limit: Duration, idle_limit: Duration, pcm16: bool) -> Self {
        Self {
            frames: VecDeque::new(),
            pack: pcm16,
            start: 0.0,
            end: 0.0,
            turn_limit: turn_limit.as_secs_f64(),
            idle_limit: idle_limit.as_secs_f64(),
        }
    }

    /// Appends a frame covering audio `[start, end)`.
    pub(crate) fn push(&mut self, start: f64, end: f64, frame: &[u8], turn_open: bool) {
        if self.frames.is_empty() {
            self.start = start;
        }
        let kept = if self.pack {
            super::lossless::pack(frame)
        } else {
            frame.to_vec()
        };
        self.frames.push_back((end, kept.into_boxed_slice()));
        self.end = end;
        let limit = if turn_open {
            self.turn_limit
        } else {
            self.idle_limit
        };
        while self.end - self.start > limit + 1e-9 {
            let Some((end, _)) = self.frames.pop_front() else {
                break;
            };
            self.start = end;
        }
    }

    /// Drops audio that ends at or before `audio_time` (a turn ended there).
    pub(crate) fn discard_until(&mut self, audio_time: f64) {
        while let Some((end, _)) = self.frames.front() {
            if *end > audio_time + 1e-9 {
                break;
            }
            self.start = *end;
            self.frames.pop_front();
        }
    }

    /// Audio time where the buffered audio starts (= `end()` when empty).
    pub(crate) fn start(&self) -> f64 {
        if self.frames.is_empty() {
            self.end
        } else {
            self.start
        }
    }

    /// Audio time where the buffered audio ends.
    pub(crate) fn end(&self) -> f64 {
        self.end
    }

    /// The buffered frames as they were pushed, oldest first.
    pub(crate) fn frames(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.frames.iter().map(|(_, kept)| {
            Bytes::from(if self.pack {
                super::lossless::unpack(kept)
            } else {
                kept.to_vec()
            })
        })
    }

    /// Seconds of audio buffered.
    pub(crate) fn duration(&self) -> f64 {
        self.end() - self.start()
    }
}

/// The turn state a consumer has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnState {
    /// No turn in progress.
    Idle,
    /// The user is speaking.
    Ongoing,
    /// An `EagerEndOfTurn` was sent; waiting for `EndOfTurn` or `TurnResumed`.
    AwaitingEnd,
}

/// Something wrong with a `TurnInfo` that [`TurnTracker::accept`] repaired or dropped. Each is
/// logged by the client; none of them ends the session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Anomaly {
    /// A time that is not finite, negative, or beyond the audio sent; `replaced_by` is the
    /// estimate used instead (`None`: the value was dropped).
    Time {
        /// Which field (`audio_window_end`, `words[2].end`, ...).
        field: String,
        /// What the server sent (connection time).
        value: f64,
        /// What was used instead.
        replaced_by: Option<f64>,
    },
    /// The server's clock went back on one connection; later times are re-based to continue
    /// from the last good one.
    ClockRestarted {
        /// The last window end before the jump (connection time).
        from: f64,
        /// The window end after it.
        to: f64,
    },
    /// The server's `turn_index` disagrees with the turns it ended; the count is used.
    TurnIndex {
        /// What the server sent (plus the reconnect offset).
        server: u64,
        /// Turns ended so far in this session.
        counted: u64,
    },
    /// An `end_of_turn_confidence` outside 0..=1 (or not a number), clamped.
    Confidence {
        /// What the server sent.
        value: f64,
    },
    /// A second `EndOfTurn` for the same words without a `StartOfTurn` between: dropped.
    RepeatedEndOfTurn {
        /// Its transcript.
        transcript: String,
    },
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Anomaly::Time {
                field,
                value,
                replaced_by: Some(by),
            } => write!(
                f,
                "{field} {value} is not a plausible audio time; using {by:.3}"
            ),
            Anomaly::Time { field, value, .. } => {
                write!(f, "{field} {value} is not a plausible audio time; dropped")
            }
            Anomaly::ClockRestarted { from, to } => write!(
                f,
                "server clock went back from {from:.3} s to {to:.3} s; later times continue from {from:.3} s"
            ),
            Anomaly::TurnIndex { server, counted } => write!(
                f,
                "turn_index {server} disagrees with the {counted} turns ended so far; using {counted}"
            ),
            Anomaly::Confidence { value } => {
                write!(
                    f,
                    "end_of_turn_confidence {value} is outside 0..=1; clamped"
                )
            }
            Anomaly::RepeatedEndOfTurn { transcript } => write!(
                f,
                "EndOfTurn repeated without a StartOfTurn (\"{transcript}\"); dropped"
            ),
        }
    }
}

/// What [`TurnTracker::accept`] makes of one `TurnInfo`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Accepted {
    /// The event for the consumer, in session time; `None` when it only repeats what the
    /// consumer already has (a replay) or was dropped (see `anomalies`).
    pub info: Option<TurnInfo>,
    /// What was repaired or dropped, for the log.
    pub anomalies: Vec<Anomaly>,
}

/// How far past the audio we sent a server time may be before it is not believed (rounding,
/// and a frame in flight).
const TIME_SLACK: f64 = 1.0;
/// A step back larger than this on one connection is a restarted clock, not jitter.
const CLOCK_RESTART: f64 = 1.0;

/// Merges the turn events of successive connections into one legal sequence in one timeline,
/// and keeps one bad message from corrupting it: times are checked against the audio actually
/// sent, turn indices are counted rather than trusted, and only the replayed stretch after a
/// reconnect is ever deduplicated.
#[derive(Debug)]
pub(crate) struct TurnTracker {
    state: TurnState,
    turns_completed: u64,
    /// Session time of this connection's time 0.
    time_offset: f64,
    index_offset: u64,
    /// Events ending at or before this session time repeat what the consumer has (replay).
    replay_until: Option<f64>,
    /// Last window (start, end) on this connection, connection time.
    last_raw: Option<(f64, f64)>,
    last_window_end: f64,
    last_end_transcript: Option<String>,
}

impl Default for TurnTracker {
    fn default() -> Self {
        Self {
            state: TurnState::Idle,
            turns_completed: 0,
            time_offset: 0.0,
            index_offset: 0,
            replay_until: None,
            last_raw: None,
            last_window_end: 0.0,
            last_end_transcript: None,
        }
    }
}

fn plausible(t: f64, limit: Option<f64>) -> bool {
    t.is_finite() && t >= 0.0 && limit.is_none_or(|l| t <= l)
}

impl TurnTracker {
    /// The turn state as the consumer sees it.
    #[cfg(test)]
    pub(crate) fn state(&self) -> TurnState {
        self.state
    }

    /// Whether a turn is open (started and not ended).
    pub(crate) fn turn_open(&self) -> bool {
        self.state != TurnState::Idle
    }

    /// How many turns ended so far.
    #[cfg(test)]
    pub(crate) fn turns_completed(&self) -> u64 {
        self.turns_completed
    }

    /// A new connection starts: its audio time 0 is `audio_offset` of the session timeline,
    /// and its events up to what the consumer has already seen are a replay.
    pub(crate) fn new_connection(&mut self, audio_offset: f64) {
        self.time_offset = audio_offset;
        self.index_offset = self.turns_completed;
        self.last_raw = None;
        self.replay_until = (self.last_window_end > audio_offset).then_some(self.last_window_end);
    }

    /// Takes one `TurnInfo` from the current connection; `audio_sent` is the session audio
    /// time sent so far (`None` when bytes do not map to time). Returns what the consumer
    /// should see, in session time, and what had to be repaired.
    pub(crate) fn accept(&mut self, mut info: TurnInfo, audio_sent: Option<f64>) -> Accepted {
        let mut anomalies = Vec::new();
        let (last_start, last_end) = self.last_raw.unwrap_or((0.0, 0.0));
        let sent_end = info.audio_window_end;
        let mut end = sent_end;
        if plausible(end, None) && self.last_raw.is_some() && end < last_end - CLOCK_RESTART {
            anomalies.push(Anomaly::ClockRestarted {
                from: last_end,
                to: end,
            });
            self.time_offset += last_end - end;
            self.replay_until = None;
        }
        let limit = audio_sent.map(|sent| sent - self.time_offset + TIME_SLACK);
        if !plausible(end, limit) {
            // The last good value: the server has processed at least that much, and its lag
            // behind the audio we sent is unknown.
            let estimate = last_end;
            anomalies.push(Anomaly::Time {
                field: "audio_window_end".into(),
                value: sent_end,
                replaced_by: Some(estimate),
            });
            end = estimate;
        }
        let mut start = info.audio_window_start;
        if !plausible(start, Some(end)) {
            let estimate = last_start.min(end);
            anomalies.push(Anomaly::Time {
                field: "audio_window_start".into(),
                value: start,
                replaced_by: Some(estimate),
            });
            start = estimate;
        }
        let word_limit = Some(end + TIME_SLACK);
        for (i, w) in info.words.iter_mut().enumerate() {
            for (name, time) in [("start", &mut w.start), ("end", &mut w.end)] {
                if let Some(t) = *time
                    && !plausible(t, word_limit)
                {
                    anomalies.push(Anomaly::Time {
                        field: format!("words[{i}].{name}"),
                        value: t,
                        replaced_by: None,
                    });
                    *time = None;
                }
            }
        }
        let confidence = info.end_of_turn_confidence;
        if !(0.0..=1.0).contains(&confidence) {
            anomalies.push(Anomaly::Confidence { value: confidence });
            info.end_of_turn_confidence = if confidence.is_nan() {
                0.0
            } else {
                confidence.clamp(0.0, 1.0)
            };
        }
        self.last_raw = Some((start, end));

        let off = self.time_offset;
        info.audio_window_start = start + off;
        info.audio_window_end = end + off;
        for w in &mut info.words {
            w.start = w.start.map(|s| s + off);
            w.end = w.end.map(|e| e + off);
        }
        let server_index = info.turn_index.saturating_add(self.index_offset);
        if let Some(until) = self.replay_until {
            if info.audio_window_end <= until + 1e-9 {
                // Audio the consumer has already heard about: only the end of the open turn is
                // news (the new connection may finish the turn inside the replayed audio).
                if !(info.event == TurnEvent::EndOfTurn && self.turn_open()) {
                    return Accepted {
                        info: None,
                        anomalies,
                    };
                }
            } else {
                self.replay_until = None;
            }
        }
        if info.event == TurnEvent::EndOfTurn
            && self.state == TurnState::Idle
            && self.last_end_transcript.as_deref().map(normalize)
                == Some(normalize(&info.transcript))
        {
            anomalies.push(Anomaly::RepeatedEndOfTurn {
                transcript: info.transcript,
            });
            return Accepted {
                info: None,
                anomalies,
            };
        }
        if server_index != self.turns_completed {
            anomalies.push(Anomaly::TurnIndex {
                server: server_index,
                counted: self.turns_completed,
            });
        }
        info.turn_index = self.turns_completed;
        let (next_state, event) = match (&info.event, self.state) {
            (TurnEvent::StartOfTurn, TurnState::Idle) => (TurnState::Ongoing, None),
            (TurnEvent::StartOfTurn, s) => (s, Some(TurnEvent::Update)),
            (TurnEvent::EagerEndOfTurn, TurnState::AwaitingEnd) => {
                (TurnState::AwaitingEnd, Some(TurnEvent::Update))
            }
            (TurnEvent::EagerEndOfTurn, _) => (TurnState::AwaitingEnd, None),
            (TurnEvent::TurnResumed, TurnState::AwaitingEnd) => (TurnState::Ongoing, None),
            (TurnEvent::TurnResumed, s) => (s, Some(TurnEvent::Update)),
            (TurnEvent::EndOfTurn, _) => (TurnState::Idle, None),
            (TurnEvent::Update | TurnEvent::Unknown(_), s) => (s, None),
        };
        if let Some(e) = event {
            info.event = e;
        }
        if info.event == TurnEvent::EndOfTurn {
            self.turns_completed += 1;
            self.last_end_transcript = Some(info.transcript.clone());
        } else if info.event == TurnEvent::StartOfTurn {
            self.last_end_transcript = None;
        }
        self.state = next_state;
        self.last_window_end = self.last_window_end.max(info.audio_window_end);
        Accepted {
            info: Some(info),
            anomalies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flux::messages::{TurnTrigger, Word};

    fn info(event: TurnEvent, index: u64, end: f64, transcript: &str) -> TurnInfo {
        TurnInfo {
            request_id: "r".into(),
            event,
            turn_index: index,
            audio_window_start: 0.0,
            audio_window_end: end,
            transcript: transcript.into(),
            words: vec![Word {
                word: "w".into(),
                confidence: 0.9,
                start: Some(end - 0.2),
                end: Some(end - 0.1),
            }],
            end_of_turn_confidence: 0.1,
            trigger: None,
            languages: None,
            languages_hinted: None,
            sequence_id: 0,
        }
    }

    #[test]
    fn chunker_cuts_exact_frames_and_keeps_the_rest() {
        let mut c = Chunker::new(4);
        assert!(c.push(&[1, 2, 3]).is_empty());
        let frames = c.push(&[4, 5, 6, 7, 8, 9]);
        assert_eq!(
            frames,
            vec![
                Bytes::from_static(&[1, 2, 3, 4]),
                Bytes::from_static(&[5, 6, 7, 8])
            ]
        );
        assert_eq!(c.pending_len(), 1);
        assert_eq!(c.flush(), Some(Bytes::from_static(&[9])));
        assert_eq!(c.flush(), None);
        let mut pass = Chunker::new(0);
        assert_eq!(pass.push(&[1, 2, 3]).len(), 1);
        assert!(pass.push(&[]).is_empty());
    }

    #[test]
    fn ledger_maps_audio_time_to_send_instant() {
        let t0 = Instant::now();
        let mut l = AudioLedger::new(Duration::from_secs(10));
        for i in 1..=5u32 {
            l.record(
                0.08 * f64::from(i),
                t0 + Duration::from_millis(80 * u64::from(i)),
            );
        }
        assert_eq!(l.sent_at(0.24), Some(t0 + Duration::from_millis(240)));
        assert_eq!(l.sent_at(0.2), Some(t0 + Duration::from_millis(240)));
        assert_eq!(l.sent_at(0.0), Some(t0 + Duration::from_millis(80)));
        assert_eq!(l.sent_at(0.5), None);
        l.record(0.16, t0 + Duration::from_secs(9));
        assert_eq!(l.sent_at(0.16), Some(t0 + Duration::from_millis(160)));
    }

    #[test]
    fn ledger_forgets_beyond_its_horizon() {
        let t0 = Instant::now();
        let mut l = AudioLedger::new(Duration::from_secs(1));
        for i in 1..=50u32 {
            l.record(0.1 * f64::from(i), t0);
        }
        assert_eq!(
            l.sent_at(0.5),
            Some(t0),
            "0.5 s is past the horizon, first kept wins"
        );
        assert!(l.entries.len() <= 12);
    }

    #[test]
    fn replay_buffer_bounds_and_discards() {
        let mut r = ReplayBuffer::new(Duration::from_secs(1), Duration::from_millis(200), false);
        for i in 0..10u32 {
            let s = 0.08 * f64::from(i);
            r.push(s, s + 0.08, &[i as u8], false);
        }
        assert!(r.duration() <= 0.2 + 1e-9, "idle limit: {}", r.duration());
        for i in 10..30u32 {
            let s = 0.08 * f64::from(i);
            r.push(s, s + 0.08, &[i as u8], true);
        }
        assert!(r.duration() <= 1.0 + 1e-9);
        assert!((r.end() - 2.4).abs() < 1e-9);
        r.discard_until(2.0);
        assert!((r.start() - 2.0).abs() < 1e-9);
        assert_eq!(r.frames().count(), 5);
        let kept: Vec<Bytes> = r.frames().collect();
        assert_eq!(
            kept,
            (25..30u8).map(|i| Bytes::from(vec![i])).collect::<Vec<_>>()
        );
        r.discard_until(5.0);
        assert_eq!(r.frames().count(), 0);
        assert!((r.start() - r.end()).abs() < 1e-9);
    }

    #[test]
    fn packed_pcm_replays_exactly_what_was_sent() {
        let mut r = ReplayBuffer::new(Duration::from_secs(10), Duration::from_secs(2), true);
        let frames: Vec<Vec<u8>> = (0..5)
            .map(|f| {
                (0..1280)
                    .flat_map(|n| {
                        let x = f64::from(f * 1280 + n) * 0.03;
                        ((2000.0 * x.sin()) as i16 + (n % 7) as i16).to_le_bytes()
                    })
                    .collect()
            })
            .collect();
        for (i, frame) in frames.iter().enumerate() {
            let s = 0.08 * i as f64;
            r.push(s, s + 0.08, frame, true);
        }
        let kept: usize = r.frames.iter().map(|(_, k)| k.len()).sum();
        assert!(kept < 5 * 2560 / 2, "packed to {kept} bytes");
        let replayed: Vec<Bytes> = r.frames().collect();
        assert_eq!(replayed, frames);
    }

    #[test]
    fn tracker_passes_a_plain_turn_through() {
        let mut t = TurnTracker::default();
        let seq = [
            info(TurnEvent::Update, 0, 0.24, ""),
            info(TurnEvent::StartOfTurn, 0, 0.48, "hi"),
            info(TurnEvent::EagerEndOfTurn, 0, 0.72, "hi there"),
            info(TurnEvent::TurnResumed, 0, 0.96, "hi there you"),
            info(TurnEvent::EagerEndOfTurn, 0, 1.2, "hi there you"),
            info(TurnEvent::EndOfTurn, 0, 1.44, "hi there you"),
            info(TurnEvent::Update, 1, 1.68, ""),
        ];
        for i in seq.clone() {
            assert_eq!(t.accept(i.clone(), Some(2.0)).info, Some(i));
        }
        assert_eq!(t.turns_completed(), 1);
        assert!(!t.turn_open());
    }

    #[test]
    fn tracker_hides_the_replay_and_offsets_the_new_connection() {
        let mut t = TurnTracker::default();
        t.accept(info(TurnEvent::EndOfTurn, 0, 1.0, "first"), None);
        t.accept(info(TurnEvent::StartOfTurn, 1, 2.0, "second"), None);
        t.accept(
            info(TurnEvent::EagerEndOfTurn, 1, 2.24, "second turn"),
            None,
        );
        assert_eq!(t.state(), TurnState::AwaitingEnd);
        // Connection dropped; replay starts at session time 1.5.
        t.new_connection(1.5);
        assert_eq!(
            t.accept(info(TurnEvent::Update, 0, 0.24, ""), None).info,
            None
        );
        assert_eq!(
            t.accept(info(TurnEvent::StartOfTurn, 0, 0.5, "second"), None)
                .info,
            None
        );
        assert_eq!(
            t.accept(
                info(TurnEvent::EagerEndOfTurn, 0, 0.74, "second turn"),
                None
            )
            .info,
            None
        );
        let mut end = info(TurnEvent::EndOfTurn, 0, 0.98, "second turn");
        end.trigger = Some(TurnTrigger::Model);
        let seen = t
            .accept(end, None)
            .info
            .expect("the end of the replayed turn is new");
        assert_eq!(seen.event, TurnEvent::EndOfTurn);
        assert_eq!(seen.turn_index, 1);
        assert!((seen.audio_window_end - 2.48).abs() < 1e-9);
        assert!((seen.words[0].end.unwrap() - 2.38).abs() < 1e-9);
        assert_eq!(t.turns_completed(), 2);
        let next = t
            .accept(info(TurnEvent::StartOfTurn, 1, 1.5, "third"), None)
            .info
            .unwrap();
        assert_eq!(next.turn_index, 2);
        assert_eq!(next.event, TurnEvent::StartOfTurn);
    }

    #[test]
    fn tracker_rewrites_repeated_state_events_past_the_replay() {
        let mut t = TurnTracker::default();
        t.accept(info(TurnEvent::StartOfTurn, 0, 0.48, "hello"), None);
        t.new_connection(0.0);
        let again = t
            .accept(info(TurnEvent::StartOfTurn, 0, 0.72, "hello there"), None)
            .info
            .unwrap();
        assert_eq!(again.event, TurnEvent::Update, "one StartOfTurn per turn");
        assert_eq!(t.state(), TurnState::Ongoing);
        let resumed = t
            .accept(info(TurnEvent::TurnResumed, 0, 0.96, "hello there"), None)
            .info
            .unwrap();
        assert_eq!(
            resumed.event,
            TurnEvent::Update,
            "no TurnResumed without an eager end"
        );
    }

    #[test]
    fn one_absurd_time_cannot_deafen_the_tracker() {
        for absurd in [1e12, f64::INFINITY, f64::NAN, -3.0] {
            let mut t = TurnTracker::default();
            t.accept(info(TurnEvent::StartOfTurn, 0, 0.48, "book"), Some(0.5));
            let poisoned = t.accept(info(TurnEvent::Update, 0, absurd, "book a"), Some(0.8));
            let kept = poisoned.info.expect("the event is kept");
            assert!(
                (0.48..=0.8).contains(&kept.audio_window_end),
                "{absurd}: {}",
                kept.audio_window_end
            );
            assert!(
                matches!(&poisoned.anomalies[0], Anomaly::Time { field, .. } if field == "audio_window_end"),
                "{absurd}: {:?}",
                poisoned.anomalies
            );
            assert!(
                poisoned.anomalies[0]
                    .to_string()
                    .contains("audio_window_end")
            );
            // Every later turn still gets through.
            let end = t
                .accept(
                    info(TurnEvent::EndOfTurn, 0, 1.2, "book a table"),
                    Some(1.2),
                )
                .info
                .expect("not dropped");
            assert_eq!(end.event, TurnEvent::EndOfTurn);
            let next = t.accept(info(TurnEvent::StartOfTurn, 1, 2.4, "thanks"), Some(2.4));
            assert_eq!(next.info.map(|i| i.turn_index), Some(1), "{absurd}");
            assert!(next.anomalies.is_empty(), "{:?}", next.anomalies);
        }
    }

    #[test]
    fn bad_word_times_and_confidence_are_repaired_not_fatal() {
        let mut t = TurnTracker::default();
        let mut i = info(TurnEvent::StartOfTurn, 0, 0.48, "hi");
        i.words[0].end = Some(f64::INFINITY);
        i.words[0].start = Some(-1.0);
        i.end_of_turn_confidence = f64::NAN;
        i.audio_window_start = 5.0;
        let a = t.accept(i, Some(0.5));
        let seen = a.info.unwrap();
        assert_eq!((seen.words[0].start, seen.words[0].end), (None, None));
        assert_eq!(seen.end_of_turn_confidence, 0.0);
        assert_eq!(seen.audio_window_start, 0.0);
        assert_eq!(a.anomalies.len(), 4, "{:?}", a.anomalies);
    }

    #[test]
    fn a_restarted_server_clock_continues_the_timeline() {
        let mut t = TurnTracker::default();
        t.accept(info(TurnEvent::StartOfTurn, 0, 4.8, "one"), Some(4.8));
        t.accept(info(TurnEvent::EndOfTurn, 0, 5.04, "one two"), Some(5.04));
        let after = t.accept(info(TurnEvent::Update, 1, 0.24, ""), Some(5.28));
        assert!(matches!(
            after.anomalies[..],
            [Anomaly::ClockRestarted { .. }]
        ));
        let update = after.info.expect("kept");
        assert!((update.audio_window_end - 5.04).abs() < 1e-9);
        let start = t
            .accept(info(TurnEvent::StartOfTurn, 1, 0.48, "three"), Some(5.52))
            .info
            .expect("later turns are not mistaken for a replay");
        assert!((start.audio_window_end - 5.28).abs() < 1e-9);
        assert_eq!(start.turn_index, 1);
    }

    #[test]
    fn a_repeated_end_of_turn_is_dropped_and_indices_are_counted() {
        let mut t = TurnTracker::default();
        t.accept(info(TurnEvent::StartOfTurn, 0, 0.48, "yes"), None);
        t.accept(info(TurnEvent::EndOfTurn, 0, 0.72, "Yes."), None);
        let again = t.accept(info(TurnEvent::EndOfTurn, 0, 0.96, "yes"), None);
        assert_eq!(again.info, None);
        assert!(matches!(
            again.anomalies[..],
            [Anomaly::RepeatedEndOfTurn { .. }]
        ));
        assert_eq!(t.turns_completed(), 1);
        let odd = t.accept(info(TurnEvent::StartOfTurn, 7, 1.2, "no"), None);
        assert_eq!(odd.info.unwrap().turn_index, 1);
        assert!(matches!(
            odd.anomalies[..],
            [Anomaly::TurnIndex {
                server: 7,
                counted: 1
            }]
        ));
        let end = t.accept(info(TurnEvent::EndOfTurn, 1, 1.44, "yes"), None);
        assert!(
            end.info.is_some(),
            "same words after a StartOfTurn are a new turn"
        );
    }
}
