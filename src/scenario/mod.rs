//! The scenario file: one JSON document that describes a whole conversation.
//!
//! Shared by the emulator (what the user says and when, and how confident Flux is that they
//! finished), the scripted LLM (what the agent answers), the synthetic TTS and the user
//! simulator of `turnflow simulate` (backend latencies, speaking rates). The format is
//! documented in `docs/scenarios.md`.
//!
//! Timing model of a user turn: words follow each other at `words_per_minute`; after each
//! phrase the end-of-turn confidence ramps linearly from a low speaking value to the phrase's
//! `eot_confidence` over `ramp_ms`, and the next phrase starts after `pause_ms`. The
//! connection's thresholds decide which events that shape produces, as on the real service.

mod faults;

pub use faults::{Connections, FaultKind, FaultSpec};

use std::path::Path;

use serde::Deserialize;

use crate::flux::Thresholds;

/// A scenario that failed to load, naming file, field and reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ScenarioError {
    /// The file (or `<inline>`).
    pub file: String,
    /// Path of the offending field, e.g. `turns[1].phrases[0].eot_confidence`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

/// Scripted backend latencies (used by the scripted LLM and the synthetic TTS).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmTiming {
    /// Time to first token, in milliseconds.
    pub ttft_ms: u64,
    /// Interval between tokens, in milliseconds.
    pub token_interval_ms: u64,
}

impl Default for LlmTiming {
    fn default() -> Self {
        Self {
            ttft_ms: 350,
            token_interval_ms: 20,
        }
    }
}

/// Synthetic TTS behaviour.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtsTiming {
    /// Time to first byte, in milliseconds.
    pub ttfb_ms: u64,
    /// Speaking rate of the agent.
    pub words_per_minute: f64,
}

impl Default for TtsTiming {
    fn default() -> Self {
        Self {
            ttfb_ms: 150,
            words_per_minute: 180.0,
        }
    }
}

/// When a user turn starts.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TurnStart {
    /// At this absolute audio time (ms since the stream started).
    AtMs(u64),
    /// This long after the agent's previous reply finished playing.
    AfterAgentMs(u64),
    /// This long after the agent's previous reply started playing: a barge-in.
    BargeInMs(u64),
}

/// One stretch of speech followed by a pause.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phrase {
    /// The words, cased and punctuated as Flux would transcribe them.
    pub text: String,
    /// Silence after the phrase before the next one starts (ignored for the last phrase).
    #[serde(default = "default_pause_ms")]
    pub pause_ms: u64,
    /// End-of-turn confidence reached during the pause after this phrase.
    #[serde(default = "default_eot_confidence")]
    pub eot_confidence: f64,
    /// How long the confidence takes to climb to `eot_confidence`.
    #[serde(default = "default_ramp_ms")]
    pub ramp_ms: u64,
}

fn default_pause_ms() -> u64 {
    600
}
fn default_eot_confidence() -> f64 {
    0.9
}
fn default_ramp_ms() -> u64 {
    800
}
fn default_wpm() -> f64 {
    160.0
}

/// A user turn and the agent's scripted reply to it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserTurn {
    /// When the user starts speaking; default: 500 ms into the stream for the first turn,
    /// 600 ms after the agent's reply for later ones.
    #[serde(default)]
    pub start: Option<TurnStart>,
    /// Shorthand for a single phrase with default pause and confidence.
    #[serde(default)]
    pub say: Option<String>,
    /// The phrases of the turn (use either `say` or `phrases`).
    #[serde(default)]
    pub phrases: Vec<Phrase>,
    /// Speaking rate of the user in this turn.
    #[serde(default = "default_wpm")]
    pub words_per_minute: f64,
    /// The agent's scripted reply (scripted LLM); a rule-based answer when absent.
    #[serde(default)]
    pub reply: Option<String>,
    /// Tool calls the scripted model makes, together, before its reply.
    #[serde(default)]
    pub calls: Vec<ScriptedCall>,
}

/// A tool call the scripted model makes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCall {
    /// The tool's name.
    pub tool: String,
    /// Its arguments (an object).
    #[serde(default = "empty_object")]
    pub arguments: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A whole conversation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What the scenario demonstrates.
    #[serde(default)]
    pub description: Option<String>,
    /// System prompt for the LLM.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Scripted LLM latencies.
    #[serde(default)]
    pub llm: LlmTiming,
    /// Synthetic TTS behaviour.
    #[serde(default)]
    pub tts: TtsTiming,
    /// Flux thresholds this scenario is meant to run with (used by `turnflow simulate` unless
    /// overridden); clients of the emulator pick their own in the URL.
    #[serde(default)]
    pub listen: Option<Thresholds>,
    /// The user turns, in order.
    pub turns: Vec<UserTurn>,
    /// Faults the emulator commits ([`FaultSpec`]).
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
}

/// A word of a user turn with its timing relative to the turn's start, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedWord {
    /// The word as transcribed.
    pub word: String,
    /// Start, seconds after the turn's first sound.
    pub start: f64,
    /// End, seconds after the turn's first sound.
    pub end: f64,
    /// Index of the phrase the word belongs to.
    pub phrase: usize,
}

impl UserTurn {
    /// The phrases, with `say` expanded.
    pub fn effective_phrases(&self) -> Vec<Phrase> {
        match &self.say {
            Some(text) => vec![Phrase {
                text: text.clone(),
                pause_ms: default_pause_ms(),
                eot_confidence: default_eot_confidence(),
                ramp_ms: default_ramp_ms(),
            }],
            None => self.phrases.clone(),
        }
    }

    /// The full transcript of the turn.
    pub fn transcript(&self) -> String {
        self.effective_phrases()
            .iter()
            .map(|p| p.text.trim())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Every word with its timing relative to the turn's first sound.
    pub fn timed_words(&self) -> Vec<TimedWord> {
        let word_len = 60.0 / self.words_per_minute;
        let mut t = 0.0;
        let mut out = Vec::new();
        for (i, phrase) in self.effective_phrases().iter().enumerate() {
            if i > 0 {
                t += ms(self.effective_phrases()[i - 1].pause_ms);
            }
            for word in phrase.text.split_whitespace() {
                out.push(TimedWord {
                    word: word.to_owned(),
                    start: t,
                    end: t + word_len,
                    phrase: i,
                });
                t += word_len;
            }
        }
        out
    }

    /// Duration of the speech, first word start to last word end, in seconds.
    pub fn speech_duration(&self) -> f64 {
        self.timed_words().last().map_or(0.0, |w| w.end)
    }
}

fn ms(v: u64) -> f64 {
    v as f64 / 1000.0
}

impl Scenario {
    /// Reads and validates a scenario file.
    ///
    /// # Errors
    /// [`ScenarioError`] naming the file, the field and the reason.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: file.clone(),
            field: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates scenario JSON; `file` names the source in errors.
    ///
    /// # Errors
    /// [`ScenarioError`] naming the file, the field and the reason.
    pub fn parse(text: &str, file: &str) -> Result<Self, ScenarioError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let scenario: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            ScenarioError {
                file: file.into(),
                field: if field == "." {
                    "(document)".into()
                } else {
                    field
                },
                reason: inner.to_string(),
            }
        })?;
        scenario.validate(file)?;
        Ok(scenario)
    }

    fn validate(&self, file: &str) -> Result<(), ScenarioError> {
        let err = |field: String, reason: &str| ScenarioError {
            file: file.into(),
            field,
            reason: reason.into(),
        };
        if self.turns.is_empty() {
            return Err(err("turns".into(), "at least one turn is required"));
        }
        if let Some(t) = self.listen {
            let options = crate::flux::ListenOptions {
                eager_eot_threshold: t.eager_eot_threshold,
                eot_threshold: t.eot_threshold,
                eot_timeout_ms: t.eot_timeout_ms,
                ..crate::flux::ListenOptions::default()
            };
            if let Err(e) = options.validate() {
                return Err(err(format!("listen.{}", e.parameter), &e.to_string()));
            }
        }
        for (i, fault) in self.faults.iter().enumerate() {
            if let Err((field, reason)) = fault.check() {
                return Err(err(format!("faults[{i}].{field}"), &reason));
            }
        }
        if !(60.0..=400.0).contains(&self.tts.words_per_minute) {
            return Err(err("tts.words_per_minute".into(), "must be from 60 to 400"));
        }
        for (i, turn) in self.turns.iter().enumerate() {
            let at = |f: &str| format!("turns[{i}].{f}");
            match (&turn.say, turn.phrases.is_empty()) {
                (Some(_), false) => {
                    return Err(err(at("say"), "use either say or phrases, not both"));
                }
                (None, true) => {
                    return Err(err(
                        at("phrases"),
                        "a turn needs say or at least one phrase",
                    ));
                }
                _ => {}
            }
            if !(60.0..=400.0).contains(&turn.words_per_minute) {
                return Err(err(at("words_per_minute"), "must be from 60 to 400"));
            }
            if i == 0 && matches!(turn.start, Some(TurnStart::BargeInMs(_))) {
                return Err(err(
                    at("start"),
                    "the first turn cannot barge in: the agent has not spoken yet",
                ));
            }
            for (j, phrase) in turn.effective_phrases().iter().enumerate() {
                let field = |f: &str| {
                    if turn.say.is_some() {
                        at("say")
                    } else {
                        format!("turns[{i}].phrases[{j}].{f}")
                    }
                };
                if phrase.text.split_whitespace().next().is_none() {
                    return Err(err(field("text"), "must contain at least one word"));
                }
                if !(0.0..=1.0).contains(&phrase.eot_confidence) {
                    return Err(err(field("eot_confidence"), "must be from 0 to 1"));
                }
                if phrase.ramp_ms == 0 || phrase.ramp_ms > 10_000 {
                    return Err(err(field("ramp_ms"), "must be from 1 to 10000"));
                }
                if phrase.pause_ms > 60_000 {
                    return Err(err(field("pause_ms"), "must be at most 60000"));
                }
            }
        }
        Ok(())
    }

    /// The built-in demo: a plain turn, an eager hit, an eager miss and a barge-in.
    pub fn demo() -> Self {
        Self::parse(
            include_str!("../../scenarios/demo.json"),
            "scenarios/demo.json",
        )
        .expect("the built-in demo scenario is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, "t.json")
    }

    #[test]
    fn minimal_scenario_and_defaults() {
        let s = parse(r#"{"name":"x","turns":[{"say":"Hello there."}]}"#).unwrap();
        assert_eq!(s.llm, LlmTiming::default());
        let words = s.turns[0].timed_words();
        assert_eq!(words.len(), 2);
        assert!((words[1].start - 0.375).abs() < 1e-9);
        assert!((s.turns[0].speech_duration() - 0.75).abs() < 1e-9);
        assert_eq!(s.turns[0].transcript(), "Hello there.");
    }

    #[test]
    fn pauses_separate_phrases() {
        let s = parse(
            r#"{"name":"x","turns":[{"words_per_minute":120,"phrases":[
                {"text":"one two","pause_ms":1000,"eot_confidence":0.6},
                {"text":"three"}]}]}"#,
        )
        .unwrap();
        let w = s.turns[0].timed_words();
        assert_eq!(w[2].phrase, 1);
        assert!((w[2].start - 2.0).abs() < 1e-9, "1 s of words + 1 s pause");
        assert_eq!(s.turns[0].transcript(), "one two three");
    }

    #[test]
    fn errors_name_file_field_and_reason() {
        let cases = [
            (r#"{"turns":[]}"#, "(document)", "name"),
            (r#"{"name":"x","turns":[]}"#, "turns", "at least one"),
            (
                r#"{"name":"x","turns":[{"say":"hi","colour":1}]}"#,
                "turns[0].colour",
                "unknown field",
            ),
            (
                r#"{"name":"x","turns":[{"phrases":[{"text":"hi","eot_confidence":1.5}]}]}"#,
                "turns[0].phrases[0].eot_confidence",
                "from 0 to 1",
            ),
            (
                r#"{"name":"x","turns":[{"say":"hi","start":{"barge_in_ms":5}}]}"#,
                "turns[0].start",
                "cannot barge in",
            ),
            (
                r#"{"name":"x","turns":[{"say":"hi","start":{"soon":5}}]}"#,
                "turns[0].start",
                "unknown variant",
            ),
            (
                r#"{"name":"x","turns":[{"say":"hi","words_per_minute":"fast"}]}"#,
                "turns[0].words_per_minute",
                "invalid type",
            ),
            (r#"{"name":"x","turns":[{}]}"#, "turns[0].phrases", "say or"),
            (
                r#"{"name":"x","listen":{"eager_eot_threshold":0.8,"eot_threshold":0.6},"turns":[{"say":"hi"}]}"#,
                "listen.eager_eot_threshold",
                "at most eot_threshold",
            ),
            (
                r#"{"name":"x","turns":[{"say":"  "}]}"#,
                "turns[0].say",
                "at least one word",
            ),
        ];
        for (text, field, reason) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.file, "t.json");
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(e.reason.contains(reason), "{text}: {e}");
        }
    }

    #[test]
    fn missing_file_is_named() {
        let e = Scenario::load(Path::new("/nonexistent/s.json")).unwrap_err();
        assert_eq!(e.file, "/nonexistent/s.json");
        assert!(e.reason.starts_with("cannot read"));
    }

    #[test]
    fn shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                Scenario::load(&path).unwrap();
                count += 1;
            }
        }
        assert!(
            count >= 6,
            "expected the six example scenarios, found {count}"
        );
        assert!(Scenario::demo().turns.len() >= 4);
    }
}
