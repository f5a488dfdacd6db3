//! Scripted turns: where the scenario's next user turn starts, its words on the audio
//! timeline, and the end-of-turn confidence curve the thresholds are applied to.

use super::{EmulatorSession, PlacedTurn, SPEAKING_CONFIDENCE};
use crate::scenario::TurnStart;

impl EmulatorSession {
    pub(super) fn current_turn_start(&self) -> Option<TurnStart> {
        let turn = self.scenario.turns.get(self.next_turn)?;
        Some(turn.start.unwrap_or(if self.next_turn == 0 {
            TurnStart::AtMs(500)
        } else {
            TurnStart::AfterAgentMs(600)
        }))
    }

    pub(super) fn place_turn(&mut self, t: f64) {
        if self.placed.is_some() || self.vad.is_some() {
            return;
        }
        let origin = match self.current_turn_start() {
            None => return,
            Some(TurnStart::AtMs(ms)) => {
                let at = (ms as f64 / 1000.0).max(self.window_start);
                if at > t {
                    return;
                }
                at
            }
            Some(TurnStart::AfterAgentMs(_) | TurnStart::BargeInMs(_)) => match self.onset {
                Some(onset) => onset,
                None => return,
            },
        };
        let turn = &self.scenario.turns[self.next_turn];
        let words = turn
            .timed_words()
            .into_iter()
            .map(|mut w| {
                w.start += origin;
                w.end += origin;
                w
            })
            .collect();
        self.placed = Some(PlacedTurn {
            words,
            phrases: turn.effective_phrases(),
        });
    }

    pub(super) fn visible_words(&self, t: f64) -> usize {
        self.placed.as_ref().map_or(0, |p| {
            p.words.iter().take_while(|w| w.end <= t + 1e-9).count()
        })
    }

    /// Seconds since the last word ended (0 while a word is being spoken).
    pub(super) fn silence(&self, t: f64, visible: usize) -> f64 {
        let Some(p) = &self.placed else { return 0.0 };
        if let Some(vad) = &self.vad {
            return vad.silence(t);
        }
        if p.words.get(visible).is_some_and(|w| w.start <= t + 1e-9) {
            return 0.0;
        }
        visible
            .checked_sub(1)
            .map_or(0.0, |i| (t - p.words[i].end).max(0.0))
    }

    pub(super) fn confidence(&self, t: f64, visible: usize) -> f64 {
        let silence = self.silence(t, visible);
        let Some(p) = &self.placed else {
            return SPEAKING_CONFIDENCE;
        };
        if visible == 0 || silence == 0.0 {
            return SPEAKING_CONFIDENCE + 0.01 * (visible % 5) as f64;
        }
        let phrase = &p.phrases[p.words[visible - 1].phrase];
        let ramp = (silence / (phrase.ramp_ms as f64 / 1000.0)).min(1.0);
        let value = SPEAKING_CONFIDENCE + (phrase.eot_confidence - SPEAKING_CONFIDENCE) * ramp;
        (value * 10_000.0).round() / 10_000.0
    }
}
