//! Flux's turn events re-derived from a recorded confidence curve under other thresholds: pure
//! logic, no I/O, no clock.
//!
//! Flux sends one `TurnInfo` per 240 ms of audio, each with the transcript and words so far and
//! its end-of-turn confidence. [`Timeline::from_flux`] reads those ticks off a recording (mapping
//! a reconnected connection's audio times onto the session's); [`derive()`] walks them again with
//! the thresholds given, the way the emulator and Flux decide:
//! - `StartOfTurn` with the first word not yet in a turn;
//! - `EagerEndOfTurn` (eager mode) when the confidence reaches `eager_eot_threshold` in silence;
//! - `TurnResumed` when a new word arrives after an eager end;
//! - `EndOfTurn` when the confidence reaches `eot_threshold` in silence (in eager mode only in a
//!   tick after an eager end), or after `eot_timeout_ms` of silence (trigger `timeout`).
//!
//! The assumption, which replay reports depend on: **the curve does not depend on the
//! thresholds.** Flux's confidence is a function of the audio; thresholds only decide where
//! events fire. Two places have no recorded curve and are filled in: a turn the what-if keeps
//! open past the recorded `EndOfTurn` holds the last recorded confidence through the following
//! silence, and a turn the what-if ends earlier than the recording starts a new turn with the
//! next word (Flux would have heard that speech as a new turn). Silence is measured from the
//! words' recorded times when Flux sent them, else from the tick where the last word appeared.

use crate::flux::messages::{TurnEvent, TurnInfo, TurnTrigger, Word};
use crate::flux::{ListenOptions, Thresholds};

use crate::recording::FluxLine;

/// One recorded `TurnInfo` tick, on the session's audio clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// When it arrived, ms since the recording started.
    pub arrival_ms: f64,
    /// Seconds of session audio it covers.
    pub audio_end: f64,
    /// The recorded turn it belongs to (the number of `EndOfTurn`s before it).
    pub turn: usize,
    /// Words of that turn visible at this tick.
    pub words: usize,
    /// The recorded transcript at this tick.
    pub transcript: String,
    /// Flux's end-of-turn confidence.
    pub confidence: f64,
    /// The recorded event.
    pub event: TurnEvent,
    /// The recorded `request_id`.
    pub request_id: String,
}

impl Tick {
    /// Whether the recorded turn was open at this tick (not an idle `Update`).
    pub fn in_turn(&self) -> bool {
        self.words > 0 || self.event != TurnEvent::Update
    }
}

/// A recorded user turn: its words (session times) and final transcript.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordedTurn {
    /// Every word of the turn, as last sent.
    pub words: Vec<Word>,
    /// The transcript of its last tick.
    pub transcript: String,
}

/// The ticks of a recording and the turns they make.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// Every kept tick, in order.
    pub ticks: Vec<Tick>,
    /// The recorded turns (the last may be unfinished).
    pub turns: Vec<RecordedTurn>,
    /// Ticks dropped because a reconnect sent their audio again.
    pub repeated_ticks: usize,
    /// `TurnInfo` messages that could not be read (skipped; replay says how many).
    pub unreadable_ticks: usize,
}

impl Timeline {
    /// Reads the `TurnInfo` ticks of `flux.jsonl`. A reconnected connection's times restart
    /// at the audio the client replayed (everything since the last `EndOfTurn`), so they are
    /// shifted by that `EndOfTurn`'s time; ticks for audio already covered are dropped.
    pub fn from_flux(lines: &[FluxLine]) -> Self {
        let mut timeline = Timeline::default();
        let mut connection = 0;
        let mut offset = 0.0;
        let mut last_end_of_turn = 0.0;
        let mut last_audio_end = f64::NEG_INFINITY;
        let mut closed = 0;
        for line in lines {
            if line.message.get("type").and_then(|t| t.as_str()) != Some("TurnInfo") {
                continue;
            }
            let Ok(info) = <TurnInfo as serde::Deserialize>::deserialize(&line.message) else {
                timeline.unreadable_ticks += 1;
                continue;
            };
            if line.connection != connection {
                connection = line.connection;
                offset = last_end_of_turn;
            }
            let audio_end = info.audio_window_end + offset;
            if audio_end <= last_audio_end + 1e-9 {
                timeline.repeated_ticks += 1;
                continue;
            }
            last_audio_end = audio_end;
            let visible = if info.event == TurnEvent::Update && info.transcript.is_empty() {
                0
            } else {
                info.words.len()
            };
            if visible > 0 || info.event != TurnEvent::Update {
                if timeline.turns.len() == closed {
                    timeline.turns.push(RecordedTurn::default());
                }
                let shift = |t: Option<f64>| t.map(|t| t + offset);
                let recorded = &mut timeline.turns[closed];
                recorded.words = info
                    .words
                    .iter()
                    .map(|w| Word {
                        start: shift(w.start),
                        end: shift(w.end),
                        ..w.clone()
                    })
                    .collect();
                recorded.transcript.clone_from(&info.transcript);
            }
            let end_of_turn = info.event == TurnEvent::EndOfTurn;
            timeline.ticks.push(Tick {
                arrival_ms: line.t_ms,
                audio_end,
                turn: closed,
                words: visible,
                transcript: info.transcript,
                confidence: info.end_of_turn_confidence,
                event: info.event,
                request_id: info.request_id,
            });
            if end_of_turn {
                last_end_of_turn = audio_end;
                closed += 1;
            }
        }
        timeline
    }
}

/// A re-derived message and when it is delivered (the arrival time of the recorded tick for
/// the same audio, so Flux's own latency is kept).
#[derive(Debug, Clone, PartialEq)]
pub struct DerivedTick {
    /// Delivery, ms since the recording started.
    pub arrival_ms: f64,
    /// The message.
    pub info: TurnInfo,
}

/// How the user's turns were taken under one set of thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TurnTaking {
    /// `EndOfTurn`s.
    pub ends: usize,
    /// Of them, ended by `eot_timeout_ms`.
    pub timeouts: usize,
    /// Of them, followed by the same user speaking again within the premature window: the
    /// agent would have cut the user off.
    pub premature_ends: usize,
    /// `EagerEndOfTurn`s.
    pub eager_ends: usize,
    /// `TurnResumed`s.
    pub resumed: usize,
}

impl std::ops::AddAssign for TurnTaking {
    fn add_assign(&mut self, other: Self) {
        self.ends += other.ends;
        self.timeouts += other.timeouts;
        self.premature_ends += other.premature_ends;
        self.eager_ends += other.eager_ends;
        self.resumed += other.resumed;
    }
}

/// The derived messages and what they add up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derivation {
    /// One message per recorded tick.
    pub ticks: Vec<DerivedTick>,
    /// Counts over the whole recording.
    pub turn_taking: TurnTaking,
}

impl Derivation {
    /// The ticks whose event differs from the recording's: `(audio time, recorded, derived)`.
    /// Empty when the recording's own thresholds re-derive it exactly.
    pub fn differences(&self, timeline: &Timeline) -> Vec<(f64, TurnEvent, TurnEvent)> {
        timeline
            .ticks
            .iter()
            .zip(&self.ticks)
            .filter(|(recorded, derived)| recorded.event != derived.info.event)
            .map(|(r, d)| (r.audio_end, r.event.clone(), d.info.event.clone()))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Ongoing,
    AwaitingEnd,
}

/// Every recorded word in order, with where its turn starts in that order.
struct Words<'a> {
    all: Vec<&'a Word>,
    /// Index in `all` of each recorded turn's first word; one more entry at the end.
    base: Vec<usize>,
}

impl<'a> Words<'a> {
    fn new(timeline: &'a Timeline) -> Self {
        let mut all = Vec::new();
        let mut base = Vec::with_capacity(timeline.turns.len() + 1);
        for turn in &timeline.turns {
            base.push(all.len());
            all.extend(turn.words.iter());
        }
        base.push(all.len());
        Self { all, base }
    }

    /// Words heard by the end of `tick`, across turns.
    fn visible(&self, tick: &Tick) -> usize {
        let base = self.base[tick.turn.min(self.base.len() - 1)];
        (base + tick.words).min(self.all.len())
    }

    /// The transcript of words `first..to` at `tick`: the recorded transcript wherever a
    /// recorded turn is covered from its first word, the words themselves elsewhere.
    fn transcript(&self, timeline: &Timeline, tick: &Tick, first: usize, to: usize) -> String {
        let mut pieces: Vec<String> = Vec::new();
        for (r, turn) in timeline.turns.iter().enumerate() {
            let (start, end) = (self.base[r], self.base[r + 1]);
            let (lo, hi) = (first.max(start), to.min(end));
            if lo >= hi {
                continue;
            }
            if lo == start && r == tick.turn && hi - start == tick.words {
                pieces.push(tick.transcript.clone());
            } else if lo == start && hi == end {
                pieces.push(turn.transcript.clone());
            } else {
                pieces.extend(self.all[lo..hi].iter().map(|w| w.word.clone()));
            }
        }
        pieces.join(" ")
    }
}

/// Re-derives every tick's event under `thresholds`. `premature_window` (seconds) is how soon
/// after an `EndOfTurn` the user's next word makes that end premature.
pub fn derive(timeline: &Timeline, thresholds: &Thresholds, premature_window: f64) -> Derivation {
    let options = ListenOptions::default().with_thresholds(*thresholds);
    let eager = options.eager_eot_threshold;
    let eot = options.effective_eot_threshold();
    let timeout = options.effective_eot_timeout_ms() as f64 / 1000.0;
    let words = Words::new(timeline);
    let mut out = Derivation::default();
    let mut state = State::Idle;
    let mut turn_index = 0;
    let mut window_start = 0.0;
    let mut first = 0;
    let mut eager_words = 0;
    let mut held = 0.0;
    let mut last_visible = 0;
    let mut appeared_at = 0.0;
    let mut ends: Vec<(f64, usize)> = Vec::new();
    for (n, tick) in timeline.ticks.iter().enumerate() {
        let t = tick.audio_end;
        let visible = words.visible(tick).max(last_visible);
        if visible > last_visible {
            appeared_at = t;
            last_visible = visible;
        }
        let speaking = words
            .all
            .get(visible)
            .and_then(|w| w.start)
            .is_some_and(|s| s <= t + 1e-9);
        let silence = if speaking || visible == 0 {
            0.0
        } else {
            match words.all[visible - 1].end {
                Some(end) => (t - end).max(0.0),
                None => t - appeared_at,
            }
        };
        if tick.in_turn() {
            held = tick.confidence;
        }
        let confidence = if tick.in_turn() || state == State::Idle {
            tick.confidence
        } else {
            held
        };
        let quiet = silence > 0.0;
        let (event, trigger) = if state == State::Idle {
            if visible > first {
                state = State::Ongoing;
                (TurnEvent::StartOfTurn, None)
            } else {
                (TurnEvent::Update, None)
            }
        } else if state == State::AwaitingEnd && visible > eager_words {
            state = State::Ongoing;
            out.turn_taking.resumed += 1;
            (TurnEvent::TurnResumed, None)
        } else if quiet && silence + 1e-9 >= timeout {
            (TurnEvent::EndOfTurn, Some(TurnTrigger::Timeout))
        } else if quiet
            && eot < 1.0
            && confidence >= eot
            && (state == State::AwaitingEnd || eager.is_none())
        {
            (TurnEvent::EndOfTurn, Some(TurnTrigger::Model))
        } else if quiet && state == State::Ongoing && eager.is_some_and(|e| confidence >= e) {
            state = State::AwaitingEnd;
            eager_words = visible;
            out.turn_taking.eager_ends += 1;
            (TurnEvent::EagerEndOfTurn, None)
        } else {
            (TurnEvent::Update, None)
        };
        let shown = if state == State::Idle && event == TurnEvent::Update {
            first
        } else {
            visible
        };
        let info = TurnInfo {
            request_id: tick.request_id.clone(),
            event: event.clone(),
            turn_index,
            audio_window_start: window_start,
            audio_window_end: t,
            transcript: words.transcript(timeline, tick, first, shown),
            words: words.all[first..shown]
                .iter()
                .map(|w| (*w).clone())
                .collect(),
            end_of_turn_confidence: confidence,
            trigger: trigger.clone(),
            languages: None,
            languages_hinted: None,
            sequence_id: n as u64 + 1,
        };
        out.ticks.push(DerivedTick {
            arrival_ms: tick.arrival_ms,
            info,
        });
        if event == TurnEvent::EndOfTurn {
            out.turn_taking.ends += 1;
            if trigger == Some(TurnTrigger::Timeout) {
                out.turn_taking.timeouts += 1;
            }
            ends.push((t, visible));
            state = State::Idle;
            turn_index += 1;
            window_start = t;
            first = visible;
            eager_words = 0;
        }
    }
    out.turn_taking.premature_ends = ends
        .iter()
        .filter(|(at, consumed)| {
            next_speech(timeline, &words, *consumed).is_some_and(|s| s - at <= premature_window)
        })
        .count();
    out
}

/// When word `index` started: its recorded start, else the first tick that showed it.
fn next_speech(timeline: &Timeline, words: &Words<'_>, index: usize) -> Option<f64> {
    let word = words.all.get(index)?;
    word.start.or_else(|| {
        timeline
            .ticks
            .iter()
            .find(|t| words.visible(t) > index)
            .map(|t| t.audio_end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A timeline from per-tick (new words, confidence, recorded end of turn) triples.
    fn timeline(steps: &[(usize, f64, bool)], with_times: bool) -> Timeline {
        let mut lines = Vec::new();
        let mut turn_words: Vec<Word> = Vec::new();
        let mut spoken = 0;
        for (i, &(new, confidence, end)) in steps.iter().enumerate() {
            let t = 0.24 * (i + 1) as f64;
            for k in 0..new {
                let start = t - 0.2 + 0.08 * k as f64;
                turn_words.push(Word {
                    word: format!("w{spoken}"),
                    confidence: 0.9,
                    start: with_times.then_some(start),
                    end: with_times.then_some(start + 0.07),
                });
                spoken += 1;
            }
            let end = end && new == 0 && !turn_words.is_empty();
            let event = if end {
                "EndOfTurn"
            } else if new > 0 && turn_words.len() == new {
                "StartOfTurn"
            } else {
                "Update"
            };
            let transcript: Vec<_> = turn_words.iter().map(|w| w.word.clone()).collect();
            let mut message = serde_json::json!({
                "type": "TurnInfo", "request_id": "r", "sequence_id": i + 1, "event": event,
                "turn_index": 0, "audio_window_start": 0.0, "audio_window_end": t,
                "transcript": transcript.join(" "), "words": turn_words,
                "end_of_turn_confidence": confidence,
            });
            if end {
                message["trigger"] = "model".into();
            }
            lines.push(FluxLine {
                t_ms: t * 1000.0 + 5.0,
                connection: 0,
                message,
            });
            if end {
                turn_words.clear();
            }
        }
        Timeline::from_flux(&lines)
    }

    fn thresholds(eager: Option<f64>, eot: f64, timeout: u64) -> Thresholds {
        Thresholds {
            eager_eot_threshold: eager,
            eot_threshold: Some(eot),
            eot_timeout_ms: Some(timeout),
        }
    }

    fn events(d: &Derivation) -> Vec<String> {
        d.ticks
            .iter()
            .filter(|t| t.info.event != TurnEvent::Update)
            .map(|t| format!("{}@{:.2}", t.info.event.as_str(), t.info.audio_window_end))
            .collect()
    }

    #[test]
    fn a_lower_threshold_ends_a_turn_at_the_pause_and_the_rest_is_a_new_turn() {
        // Two words, a pause reaching 0.6, two more words, a pause reaching 0.9.
        let steps = [
            (1, 0.02, false),
            (1, 0.02, false),
            (0, 0.3, false),
            (0, 0.6, false),
            (1, 0.02, false),
            (1, 0.02, false),
            (0, 0.5, false),
            (0, 0.9, true),
        ];
        let line = timeline(&steps, true);
        let recorded = derive(&line, &thresholds(None, 0.7, 5000), 1.0);
        assert_eq!(recorded.differences(&line), vec![]);
        assert_eq!(events(&recorded), ["StartOfTurn@0.24", "EndOfTurn@1.92"]);
        assert_eq!(recorded.turn_taking.premature_ends, 0);

        let hasty = derive(&line, &thresholds(None, 0.55, 5000), 1.0);
        assert_eq!(
            events(&hasty),
            [
                "StartOfTurn@0.24",
                "EndOfTurn@0.96",
                "StartOfTurn@1.20",
                "EndOfTurn@1.92"
            ]
        );
        let ends: Vec<_> = hasty
            .ticks
            .iter()
            .filter(|t| t.info.event == TurnEvent::EndOfTurn)
            .map(|t| (t.info.turn_index, t.info.transcript.as_str()))
            .collect();
        assert_eq!(ends, [(0, "w0 w1"), (1, "w2 w3")]);
        assert_eq!(hasty.turn_taking.premature_ends, 1);
        // The message for the same audio arrives when the recorded one did.
        assert_eq!(hasty.ticks[3].arrival_ms, line.ticks[3].arrival_ms);

        let eager = derive(&line, &thresholds(Some(0.5), 0.7, 5000), 1.0);
        assert_eq!(
            events(&eager),
            [
                "StartOfTurn@0.24",
                "EagerEndOfTurn@0.96",
                "TurnResumed@1.20",
                "EagerEndOfTurn@1.68",
                "EndOfTurn@1.92"
            ]
        );
    }

    #[test]
    fn a_higher_threshold_holds_the_last_confidence_until_the_timeout_or_more_words() {
        let mut steps = vec![
            (1, 0.02, false),
            (1, 0.02, false),
            (0, 0.5, false),
            (0, 0.8, true),
        ];
        steps.extend(std::iter::repeat_n((0, 0.01, false), 6));
        steps.push((1, 0.02, false));
        steps.extend(std::iter::repeat_n((0, 0.9, false), 3));
        let line = timeline(&steps, true);
        // 0.8 never reaches 0.85: the recorded end is gone, and 1 s of silence ends the turn.
        let strict = derive(&line, &thresholds(None, 0.85, 1000), 1.0);
        let first_end = strict
            .ticks
            .iter()
            .find(|t| t.info.event == TurnEvent::EndOfTurn)
            .unwrap();
        assert_eq!(first_end.info.trigger, Some(TurnTrigger::Timeout));
        assert_eq!(first_end.info.transcript, "w0 w1");
        assert_eq!(strict.turn_taking.timeouts, 1);
        // With a long timeout the next word joins the same turn: one turn of three words.
        let merged = derive(&line, &thresholds(None, 0.85, 10000), 1.0);
        let end = merged
            .ticks
            .iter()
            .find(|t| t.info.event == TurnEvent::EndOfTurn)
            .unwrap();
        assert_eq!(end.info.transcript, "w0 w1 w2");
        assert_eq!(merged.turn_taking.ends, 1);
    }

    fn line(connection: u32, t: f64, event: &str, words: &[&str]) -> FluxLine {
        let words: Vec<Word> = words
            .iter()
            .map(|w| Word {
                word: (*w).into(),
                confidence: 0.9,
                start: None,
                end: None,
            })
            .collect();
        let transcript: Vec<&str> = words.iter().map(|w| w.word.as_str()).collect();
        FluxLine {
            t_ms: t * 1000.0,
            connection,
            message: serde_json::json!({
                "type": "TurnInfo", "request_id": "r", "sequence_id": 1, "event": event,
                "turn_index": 0, "audio_window_start": 0.0, "audio_window_end": t,
                "transcript": transcript.join(" "), "words": words,
                "end_of_turn_confidence": 0.1,
            }),
        }
    }

    #[test]
    fn a_reconnect_maps_times_back_and_drops_what_it_sent_again() {
        let mut lines = vec![
            line(0, 0.24, "StartOfTurn", &["w0"]),
            line(0, 0.48, "Update", &["w0"]),
            line(0, 0.72, "Update", &["w0"]),
        ];
        // The new connection hears the open turn's audio again from its start.
        lines.extend([0.24, 0.48, 0.72].map(|t| line(1, t, "Update", &["w0"])));
        lines.push(line(1, 0.96, "Update", &["w0", "w1"]));
        lines.push(line(1, 1.20, "EndOfTurn", &["w0", "w1"]));
        lines.push(FluxLine {
            t_ms: 1300.0,
            connection: 1,
            message: serde_json::json!({"type": "TurnInfo", "event": "Update"}),
        });
        // After an end of turn a reconnect's clock starts at that end.
        lines.push(line(2, 0.24, "StartOfTurn", &["w2"]));
        let timeline = Timeline::from_flux(&lines);
        assert_eq!(timeline.repeated_ticks, 3);
        assert_eq!(timeline.unreadable_ticks, 1);
        let ends: Vec<f64> = timeline.ticks.iter().map(|t| t.audio_end).collect();
        assert_eq!(ends, [0.24, 0.48, 0.72, 0.96, 1.20, 1.44]);
        let words: Vec<Vec<&str>> = timeline
            .turns
            .iter()
            .map(|t| t.words.iter().map(|w| w.word.as_str()).collect())
            .collect();
        assert_eq!(words, [vec!["w0", "w1"], vec!["w2"]]);
    }

    proptest! {
        /// Whatever the curve and thresholds: one message per tick, Flux's grammar, turn
        /// indices that count ends, and every word in exactly one turn.
        #[test]
        fn derived_events_follow_flux_grammar_and_lose_no_word(
            steps in prop::collection::vec((0usize..3, 0.0f64..1.0, any::<bool>()), 1..80),
            eager in prop::option::of(0.3f64..0.9),
            eot in 0.5f64..1.0,
            timeout in 500u64..4000,
            with_times in any::<bool>(),
        ) {
            let line = timeline(&steps, with_times);
            let d = derive(&line, &thresholds(eager, eot, timeout), 1.0);
            prop_assert_eq!(d.ticks.len(), line.ticks.len());
            let mut open = false;
            let mut eager_transcript: Option<String> = None;
            let mut index = 0;
            let mut ended_words = Vec::new();
            let mut last_words = Vec::new();
            for t in &d.ticks {
                let info = &t.info;
                prop_assert_eq!(info.turn_index, index);
                match info.event {
                    TurnEvent::StartOfTurn => {
                        prop_assert!(!open);
                        prop_assert!(!info.transcript.is_empty());
                        open = true;
                    }
                    TurnEvent::EagerEndOfTurn => {
                        prop_assert!(open && eager.is_some() && eager_transcript.is_none());
                        eager_transcript = Some(info.transcript.clone());
                    }
                    TurnEvent::TurnResumed => {
                        prop_assert!(eager_transcript.take().is_some());
                    }
                    TurnEvent::EndOfTurn => {
                        prop_assert!(open);
                        if eager.is_some() && info.trigger == Some(TurnTrigger::Model) {
                            prop_assert_eq!(eager_transcript.as_ref(), Some(&info.transcript));
                        }
                        ended_words.extend(info.words.iter().map(|w| w.word.clone()));
                        open = false;
                        eager_transcript = None;
                        index += 1;
                    }
                    _ => {}
                }
                last_words = if open {
                    info.words.iter().map(|w| w.word.clone()).collect()
                } else {
                    Vec::new()
                };
            }
            ended_words.extend(last_words);
            let spoken: Vec<String> = line.turns.iter().flat_map(|t| t.words.iter().map(|w| w.word.clone())).collect();
            prop_assert_eq!(ended_words, spoken);
        }
    }
}
