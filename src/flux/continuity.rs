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

/// Cuts an arbitrary byte stream into frames of exactly `frame_bytes`, keeping sample
/// boundaries. `frame_bytes == 0` means pass-through (compressed or containerized audio).
#[derive(Debug)]
pub struct Chunker {
    frame_bytes: usize,
    pending: BytesMut,
}

impl Chunker {
    /// A chunker for frames of `frame_bytes` (0 = pass-through).
    pub fn new(frame_bytes: usize) -> Self {
        Self {
            frame_bytes,
            pending: BytesMut::new(),
        }
    }

    /// Adds bytes and returns every complete frame now available.
    pub fn push(&mut self, data: &[u8]) -> Vec<Bytes> {
        if self.frame_bytes == 0 {
            return if data.is_empty() {
                Vec::new()
            } else {
                vec![Bytes::copy_from_slice(data)]
            };
        }
        self.pending.extend_from_slice(data);
        let mut frames = Vec::with_capacity(self.pending.len() / self.frame_bytes);
        while self.pending.len() >= self.frame_bytes {
            frames.push(self.pending.split_to(self.frame_bytes).freeze());
        }
        frames
    }

    /// Takes the incomplete remainder (on close), if any.
    pub fn flush(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.pending.split().freeze())
    }

    /// Bytes waiting for a complete frame.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Maps audio time (seconds since the session's first byte, across reconnects) to the
/// instant that audio was first sent.
#[derive(Debug)]
pub struct AudioLedger {
    /// (audio end time of a frame, instant it was first sent), ascending.
    entries: VecDeque<(f64, Instant)>,
    horizon: f64,
}

impl AudioLedger {
    /// A ledger remembering `horizon` seconds of audio.
    pub fn new(horizon: Duration) -> Self {
        Self {
            entries: VecDeque::new(),
            horizon: horizon.as_secs_f64(),
        }
    }

    /// Records that audio up to `audio_end` was sent at `at`. Re-sending (replay) an already
    /// recorded stretch keeps the first instant.
    pub fn record(&mut self, audio_end: f64, at: Instant) {
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
    pub fn sent_at(&self, audio_time: f64) -> Option<Instant> {
        // Allow float noise from server-side rounding (e.g. 0.24 vs 0.2399999).
        let t = audio_time - 1e-6;
        let i = self.entries.partition_point(|(end, _)| *end < t);
        self.entries.get(i).map(|(_, at)| *at)
    }
}

/// Audio kept for replay after a dropped connection: everything since the last `EndOfTurn`,
/// bounded to `turn_limit` while a turn is open and `idle_limit` between turns.
#[derive(Debug)]
pub struct ReplayBuffer {
    frames: VecDeque<(f64, Bytes)>,
    start: f64,
    end: f64,
    turn_limit: f64,
    idle_limit: f64,
}

impl ReplayBuffer {
    /// A buffer keeping at most `turn_limit` of an open turn and `idle_limit` between turns.
    pub fn new(turn_limit: Duration, idle_limit: Duration) -> Self {
        Self {
            frames: VecDeque::new(),
            start: 0.0,
            end: 0.0,
            turn_limit: turn_limit.as_secs_f64(),
            idle_limit: idle_limit.as_secs_f64(),
        }
    }

    /// Appends a frame covering audio `[start, end)`.
    pub fn push(&mut self, start: f64, end: f64, frame: Bytes, turn_open: bool) {
        if self.frames.is_empty() {
            self.start = start;
        }
        self.frames.push_back((end, frame));
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
    pub fn discard_until(&mut self, audio_time: f64) {
        while let Some((end, _)) = self.frames.front() {
            if *end > audio_time + 1e-9 {
                break;
            }
            self.start = *end;
            self.frames.pop_front();
        }
    }

    /// Audio time where the buffered audio starts (= `end()` when empty).
    pub fn start(&self) -> f64 {
        if self.frames.is_empty() {
            self.end
        } else {
            self.start
        }
    }

    /// Audio time where the buffered audio ends.
    pub fn end(&self) -> f64 {
        self.end
    }

    /// The buffered frames, oldest first.
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter().map(|(_, f)| f)
    }

    /// Seconds of audio buffered.
    pub fn duration(&self) -> f64 {
        self.end() - self.start()
    }
}

/// The turn state a consumer has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnState {
    /// No turn in progress.
    Idle,
    /// The user is speaking.
    Ongoing,
    /// An `EagerEndOfTurn` was sent; waiting for `EndOfTurn` or `TurnResumed`.
    AwaitingEnd,
}

/// Merges the turn events of successive connections into one legal sequence in one timeline.
#[derive(Debug)]
pub struct TurnTracker {
    state: TurnState,
    turns_completed: u64,
    time_offset: f64,
    index_offset: u64,
    last_window_end: f64,
}

impl Default for TurnTracker {
    fn default() -> Self {
        Self {
            state: TurnState::Idle,
            turns_completed: 0,
            time_offset: 0.0,
            index_offset: 0,
            last_window_end: f64::NEG_INFINITY,
        }
    }
}

impl TurnTracker {
    /// The turn state as the consumer sees it.
    pub fn state(&self) -> TurnState {
        self.state
    }

    /// Whether a turn is open (started and not ended).
    pub fn turn_open(&self) -> bool {
        self.state != TurnState::Idle
    }

    /// How many turns ended so far.
    pub fn turns_completed(&self) -> u64 {
        self.turns_completed
    }

    /// A new connection starts: its audio time 0 is `audio_offset` of the session timeline.
    pub fn new_connection(&mut self, audio_offset: f64) {
        self.time_offset = audio_offset;
        self.index_offset = self.turns_completed;
    }

    /// Takes one `TurnInfo` from the current connection and returns what the consumer should
    /// see, in session time, or `None` when it only repeats what the consumer already has.
    pub fn accept(&mut self, mut info: TurnInfo) -> Option<TurnInfo> {
        let off = self.time_offset;
        info.audio_window_start += off;
        info.audio_window_end += off;
        for w in &mut info.words {
            w.start = w.start.map(|s| s + off);
            w.end = w.end.map(|e| e + off);
        }
        info.turn_index += self.index_offset;
        if info.audio_window_end <= self.last_window_end + 1e-9 {
            // Audio the consumer has already heard about: only the end of the open turn is
            // news (the new connection may finish the turn inside the replayed audio).
            if !(info.event == TurnEvent::EndOfTurn && self.turn_open()) {
                return None;
            }
        }
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
        }
        self.state = next_state;
        self.last_window_end = self.last_window_end.max(info.audio_window_end);
        Some(info)
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
        let mut r = ReplayBuffer::new(Duration::from_secs(1), Duration::from_millis(200));
        for i in 0..10u32 {
            let s = 0.08 * f64::from(i);
            r.push(s, s + 0.08, Bytes::from(vec![i as u8]), false);
        }
        assert!(r.duration() <= 0.2 + 1e-9, "idle limit: {}", r.duration());
        for i in 10..30u32 {
            let s = 0.08 * f64::from(i);
            r.push(s, s + 0.08, Bytes::from(vec![i as u8]), true);
        }
        assert!(r.duration() <= 1.0 + 1e-9);
        assert!((r.end() - 2.4).abs() < 1e-9);
        r.discard_until(2.0);
        assert!((r.start() - 2.0).abs() < 1e-9);
        assert_eq!(r.frames().count(), 5);
        r.discard_until(5.0);
        assert_eq!(r.frames().count(), 0);
        assert!((r.start() - r.end()).abs() < 1e-9);
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
            assert_eq!(t.accept(i.clone()), Some(i));
        }
        assert_eq!(t.turns_completed(), 1);
        assert!(!t.turn_open());
    }

    #[test]
    fn tracker_hides_the_replay_and_offsets_the_new_connection() {
        let mut t = TurnTracker::default();
        t.accept(info(TurnEvent::EndOfTurn, 0, 1.0, "first"));
        t.accept(info(TurnEvent::StartOfTurn, 1, 2.0, "second"));
        t.accept(info(TurnEvent::EagerEndOfTurn, 1, 2.24, "second turn"));
        assert_eq!(t.state(), TurnState::AwaitingEnd);
        // Connection dropped; replay starts at session time 1.5.
        t.new_connection(1.5);
        assert_eq!(t.accept(info(TurnEvent::Update, 0, 0.24, "")), None);
        assert_eq!(
            t.accept(info(TurnEvent::StartOfTurn, 0, 0.5, "second")),
            None
        );
        assert_eq!(
            t.accept(info(TurnEvent::EagerEndOfTurn, 0, 0.74, "second turn")),
            None
        );
        let mut end = info(TurnEvent::EndOfTurn, 0, 0.98, "second turn");
        end.trigger = Some(TurnTrigger::Model);
        let seen = t.accept(end).expect("the end of the replayed turn is new");
        assert_eq!(seen.event, TurnEvent::EndOfTurn);
        assert_eq!(seen.turn_index, 1);
        assert!((seen.audio_window_end - 2.48).abs() < 1e-9);
        assert!((seen.words[0].end.unwrap() - 2.38).abs() < 1e-9);
        assert_eq!(t.turns_completed(), 2);
        let next = t
            .accept(info(TurnEvent::StartOfTurn, 1, 1.5, "third"))
            .unwrap();
        assert_eq!(next.turn_index, 2);
        assert_eq!(next.event, TurnEvent::StartOfTurn);
    }

    #[test]
    fn tracker_rewrites_repeated_state_events_past_the_replay() {
        let mut t = TurnTracker::default();
        t.accept(info(TurnEvent::StartOfTurn, 0, 0.48, "hello"));
        t.new_connection(0.0);
        let again = t
            .accept(info(TurnEvent::StartOfTurn, 0, 0.72, "hello there"))
            .unwrap();
        assert_eq!(again.event, TurnEvent::Update, "one StartOfTurn per turn");
        assert_eq!(t.state(), TurnState::Ongoing);
        let resumed = t
            .accept(info(TurnEvent::TurnResumed, 0, 0.96, "hello there"))
            .unwrap();
        assert_eq!(
            resumed.event,
            TurnEvent::Update,
            "no TurnResumed without an eager end"
        );
    }
}
