//! LiveKit's eot-bench rows as recordings, so a sweep runs on public human-to-agent turns.
//!
//! The file is the dataset exported as JSON lines, one row per line, in eot-bench's field
//! layout: `id`, `language`, `audio` (`{"path": "relative/or/absolute.wav"}` or
//! `{"array": [floats], "sampling_rate": N}`), `silence_spans` (`[{"start": s, "end": s}]` or
//! `[[s, e]]`, seconds), and optionally `words` (`[{"word", "start", "end"}]`) and `messages`.
//! Each row is one user turn whose last silence span is its true end.
//!
//! eot-bench carries no Flux output, so an imported row has no recorded confidence curve. The
//! importer gives it the silence-timing baseline (eot-bench's own "VAD baseline"): confidence
//! 0.02 while the user speaks, rising linearly over 1.5 s of silence to 0.95
//! ([`baseline_confidence`]). Thresholds then act as silence lengths (`eot` 0.5 is about 0.77 s
//! of silence), which is what the sweep measures on this data: how many mid-turn holds a
//! setting would cut off, against how long the final pause waits. To sweep Flux's own curve on
//! your audio, run it through Flux with `turnflow run --record`. Rows without `words` get one
//! word, `(speech)`, per stretch of speech between silence spans. Audio is padded with 6.24 s of
//! silence so the final pause can end the turn under any threshold or a timeout up to 6 s;
//! messages arrive exactly at their audio time (no transport latency); `messages` are not used.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::LabError;
use super::derive::{Timeline, derive};
use crate::flux::Thresholds;
use crate::flux::messages::{TurnEvent, Word};
use crate::recording::{
    FORMAT, FluxLine, RecordedSettings, Recording, RecordingMeta, VERSION, read_wav,
};

/// Sample rate of an imported recording's user audio.
const RATE: u32 = 16000;
/// Silence after the last word, so any threshold or a timeout up to 6 s can end the turn.
const PADDING_SECONDS: f64 = 6.24;
/// The recorded settings of an import: no model-driven ends, a 6 s timeout; the baseline whose
/// events the recording carries.
const RECORDED_TIMEOUT_MS: u64 = 6000;

/// The silence-timing baseline: 0.02 in speech, then linear over 1.5 s of silence to 0.95.
pub fn baseline_confidence(silence_seconds: f64) -> f64 {
    let value = 0.02 + 0.93 * (silence_seconds / 1.5).clamp(0.0, 1.0);
    (value * 10_000.0).round() / 10_000.0
}

#[derive(Debug, Deserialize)]
struct Row {
    id: serde_json::Value,
    language: String,
    audio: Audio,
    silence_spans: Vec<Span>,
    #[serde(default)]
    words: Option<Vec<RowWord>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audio {
    Path { path: String },
    Array { array: Vec<f32>, sampling_rate: u32 },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Span {
    Object { start: f64, end: f64 },
    Pair(f64, f64),
}

impl Span {
    fn bounds(&self) -> (f64, f64) {
        match *self {
            Span::Object { start, end } | Span::Pair(start, end) => (start, end),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RowWord {
    word: String,
    start: f64,
    end: f64,
}

/// Reads every row of an eot-bench JSON-lines file as a recording named `FILE#ID`.
///
/// # Errors
/// [`LabError`] naming the file and line of a row that is not in eot-bench's layout, whose
/// audio cannot be read, or whose spans or words are out of order.
pub fn import_eot_bench(path: &Path) -> Result<Vec<Recording>, LabError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| crate::recording::RecordingError::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |message: String| crate::recording::RecordingError::Malformed {
            path: path.to_owned(),
            line: Some(n + 1),
            message,
        };
        let de = &mut serde_json::Deserializer::from_str(line);
        let row: Row = serde_path_to_error::deserialize(de).map_err(|e| {
            malformed(format!(
                "{e} (an eot-bench row has id, language, audio {{path}} or {{array, sampling_rate}}, silence_spans, and optionally words)"
            ))
        })?;
        out.push(row_recording(path, base, &row).map_err(malformed)?);
    }
    Ok(out)
}

fn row_recording(file: &Path, base: &Path, row: &Row) -> Result<Recording, String> {
    let id = match &row.id {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let audio = match &row.audio {
        Audio::Path { path } => {
            let p = base.join(path);
            load_any_rate(&p)?
        }
        Audio::Array {
            array,
            sampling_rate,
        } => {
            if *sampling_rate == 0 {
                return Err("audio.sampling_rate: must be above 0".into());
            }
            let samples: Vec<i16> = array
                .iter()
                .map(|v| (v.clamp(-1.0, 1.0) * 32767.0) as i16)
                .collect();
            super::replay::resample(&samples, *sampling_rate, RATE)
        }
    };
    let spans: Vec<(f64, f64)> = row.silence_spans.iter().map(Span::bounds).collect();
    for (i, (s, e)) in spans.iter().enumerate() {
        if !(s.is_finite() && e.is_finite() && s <= e) || (i > 0 && *s < spans[i - 1].1 - 1e-9) {
            return Err(format!(
                "silence_spans[{i}]: {s}..{e}; spans are (start <= end) seconds, in order, not overlapping"
            ));
        }
    }
    let words = match &row.words {
        Some(words) => {
            for (i, w) in words.iter().enumerate() {
                if !(w.start.is_finite() && w.end.is_finite() && w.start <= w.end)
                    || (i > 0 && w.start < words[i - 1].start)
                {
                    return Err(format!(
                        "words[{i}] {:?}: {}..{}; words are (start <= end) seconds, in order",
                        w.word, w.start, w.end
                    ));
                }
            }
            words
                .iter()
                .map(|w| (w.word.clone(), w.start, w.end))
                .collect()
        }
        None => speech_stretches(&spans, audio.len() as f64 / f64::from(RATE)),
    };
    let Some(&(_, _, last_end)) = words.last() else {
        return Err("no words and no speech between the silence spans: nothing to replay".into());
    };
    let total = last_end + PADDING_SECONDS;
    let mut user_audio = audio;
    user_audio.resize((total * f64::from(RATE)).round() as usize, 0);
    let lines = flux_lines(&words, &spans, total);
    let thresholds = Thresholds {
        eager_eot_threshold: None,
        eot_threshold: Some(1.0),
        eot_timeout_ms: Some(RECORDED_TIMEOUT_MS),
    };
    let derived = derive(&Timeline::from_flux(&lines), &thresholds, 0.0);
    let flux = derived
        .ticks
        .into_iter()
        .map(|t| {
            let mut message = serde_json::to_value(&t.info).expect("turn info serializes");
            message["type"] = "TurnInfo".into();
            FluxLine {
                t_ms: t.arrival_ms,
                connection: 0,
                message,
            }
        })
        .collect();
    Ok(Recording {
        dir: PathBuf::from(format!("{}#{id}", file.display())),
        meta: RecordingMeta {
            format: FORMAT.into(),
            version: VERSION,
            source: "import:eot-bench".into(),
            settings: RecordedSettings {
                eager_eot_threshold: None,
                eot_threshold: Some(1.0),
                eot_timeout_ms: Some(RECORDED_TIMEOUT_MS),
                speculation: true,
                barge_in: "immediate".into(),
                presynthesis: "first-chunk".into(),
                system_prompt: None,
                llm: "scripted".into(),
                tts: "synthetic".into(),
                tools: Vec::new(),
            },
            user_sample_rate: RATE,
            voice_sample_rate: RATE,
            audio_start_ms: 0.0,
            notes: vec![
                format!("eot-bench row {id} ({})", row.language),
                "confidence is the silence-timing baseline, not Flux's".into(),
            ],
        },
        user_audio,
        flux,
        llm: Vec::new(),
        tts: Vec::new(),
        tts_audio: Vec::new(),
        tools: Vec::new(),
    })
}

/// A WAV of any rate, mono 16-bit, at [`RATE`].
fn load_any_rate(path: &Path) -> Result<Vec<i16>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("audio {}: {e}", path.display()))?;
    let (format, _) = crate::audio::parse_wav_header(&bytes)
        .map_err(|e| format!("audio {}: {e}", path.display()))?
        .ok_or_else(|| format!("audio {}: truncated wav header", path.display()))?;
    let samples = read_wav(path, format.sample_rate).map_err(|e| e.to_string())?;
    Ok(super::replay::resample(&samples, format.sample_rate, RATE))
}

/// One `(speech)` word per stretch of audio between silence spans.
fn speech_stretches(spans: &[(f64, f64)], duration: f64) -> Vec<(String, f64, f64)> {
    let mut words = Vec::new();
    let mut from = 0.0;
    for &(s, e) in spans {
        if s - from > 0.05 {
            words.push(("(speech)".to_owned(), from, s));
        }
        from = e;
    }
    if duration - from > 0.05 {
        words.push(("(speech)".to_owned(), from, duration));
    }
    words
}

/// One `TurnInfo` per 240 ms of audio, the baseline confidence, every word so far: the ticks
/// the baseline thresholds are then derived on.
fn flux_lines(words: &[(String, f64, f64)], spans: &[(f64, f64)], total: f64) -> Vec<FluxLine> {
    let ticks = (total / 0.24).floor() as usize;
    let last_word_end = words.last().map_or(0.0, |w| w.2);
    (1..=ticks)
        .map(|k| {
            let t = (0.24 * k as f64 * 1000.0).round() / 1000.0;
            let visible: Vec<Word> = words
                .iter()
                .filter(|w| w.2 <= t + 1e-9)
                .map(|(word, start, end)| Word {
                    word: word.clone(),
                    confidence: 0.9,
                    start: Some(*start),
                    end: Some(*end),
                })
                .collect();
            let silence = spans
                .iter()
                .find(|(s, e)| *s <= t && t <= *e)
                .map(|(s, _)| t - s)
                .or_else(|| (t >= last_word_end).then_some(t - last_word_end))
                .unwrap_or(0.0);
            let transcript: Vec<&str> = visible.iter().map(|w| w.word.as_str()).collect();
            FluxLine {
                t_ms: t * 1000.0,
                connection: 0,
                message: serde_json::json!({
                    "type": "TurnInfo", "request_id": "eot-bench", "sequence_id": k,
                    "event": TurnEvent::Update.as_str(), "turn_index": 0,
                    "audio_window_start": 0.0, "audio_window_end": t,
                    "transcript": transcript.join(" "), "words": visible,
                    "end_of_turn_confidence": baseline_confidence(silence),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_rises_over_a_second_and_a_half_of_silence() {
        assert_eq!(baseline_confidence(0.0), 0.02);
        assert_eq!(baseline_confidence(0.75), 0.485);
        assert_eq!(baseline_confidence(1.5), 0.95);
        assert_eq!(baseline_confidence(9.0), 0.95);
    }

    #[test]
    fn speech_between_spans_becomes_placeholder_words() {
        let words = speech_stretches(&[(0.0, 0.4), (1.2, 1.5), (2.5, 3.0)], 3.0);
        let bounds: Vec<_> = words.iter().map(|w| (w.1, w.2)).collect();
        assert_eq!(bounds, [(0.4, 1.2), (1.5, 2.5)]);
    }
}
