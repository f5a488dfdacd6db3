//! The recording format, version 1 (`docs/recordings.md`): what each file holds, and a
//! recording read back ([`Recording::load`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::engine::log::{LogEntry, LogKind};

/// Why a recording could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    /// A file or directory could not be read or written.
    #[error("{}: {error}", .path.display())]
    Io {
        /// Which.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A file is not what the format says.
    #[error("{}{}: {message}", .path.display(), .line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Malformed {
        /// Which file.
        path: PathBuf,
        /// Which line (1-based), for line-per-record files.
        line: Option<usize>,
        /// What is wrong, and what is allowed.
        message: String,
    },
    /// A recording of a version this build does not read.
    #[error("{}: recording version {found}; this build reads version {VERSION}", .path.display())]
    Version {
        /// `recording.json`.
        path: PathBuf,
        /// The version it has.
        found: u32,
    },
}

impl RecordingError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        RecordingError::Io {
            path: path.to_owned(),
            error,
        }
    }
}

/// The `format` field of every `recording.json`.
pub const FORMAT: &str = "turnflow-recording";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// The settings a session ran with, as far as replay needs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedSettings {
    /// Flux's eager end-of-turn threshold (none: eager mode off).
    pub eager_eot_threshold: Option<f64>,
    /// Flux's end-of-turn threshold (none: Flux's default, 0.7).
    pub eot_threshold: Option<f64>,
    /// Flux's end-of-turn timeout (none: Flux's default, 5000 ms).
    pub eot_timeout_ms: Option<u64>,
    /// Replies started on `EagerEndOfTurn`.
    pub speculation: bool,
    /// Barge-in policy, spelled as on the command line (`immediate`, `min-words=N`).
    pub barge_in: String,
    /// Presynthesis, spelled as on the command line (`first-chunk`, `first-sentence`, `off`).
    pub presynthesis: String,
    /// The system prompt.
    pub system_prompt: Option<String>,
    /// The language model's name.
    pub llm: String,
    /// The voice's name.
    pub tts: String,
    /// The tools the model was offered, with their effects (none in recordings made before
    /// tools, or without any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<RecordedTool>,
}

/// A tool as a recording keeps it: what replay offers the model and how it gates it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedTool {
    /// The name the model used.
    pub name: String,
    /// What it was offered as.
    pub description: String,
    /// Its arguments' JSON Schema.
    pub parameters: serde_json::Value,
    /// `pure` (may run while a reply is a guess) or `side_effecting`.
    pub effect: crate::llm::ToolEffect,
}

/// One tool call and its result (`tools.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolLine {
    /// When the call was made, ms since the recorder started.
    pub t_ms: f64,
    /// How long it took, ms (absent for a call dropped with its reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<f64>,
    /// The model's id for the call.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// Its arguments.
    pub arguments: serde_json::Value,
    /// What it returned, when it returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The error it answered with, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RecordedSettings {
    /// The settings of a session with `config`, listening with `options`, answering with the
    /// model and voice named.
    pub fn of(
        config: &crate::engine::SessionConfig,
        options: &crate::flux::ListenOptions,
        llm: &str,
        tts: &str,
    ) -> Self {
        Self {
            eager_eot_threshold: options.eager_eot_threshold,
            eot_threshold: options.eot_threshold,
            eot_timeout_ms: options.eot_timeout_ms,
            speculation: config.machine.speculation,
            barge_in: config.machine.barge_in.to_string(),
            presynthesis: config.response.presynthesis.to_string(),
            system_prompt: config.machine.system_prompt.clone(),
            llm: llm.into(),
            tts: tts.into(),
            tools: Vec::new(),
        }
    }

    /// These settings, with the tools `specs` offered.
    pub fn with_tools(mut self, specs: &[crate::llm::ToolSpec]) -> Self {
        self.tools = specs
            .iter()
            .map(|t| RecordedTool {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
                effect: t.effect,
            })
            .collect();
        self
    }
}

/// `recording.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written by this build.
    pub version: u32,
    /// What made it: `run`, `simulate`, `import:eot-bench`.
    pub source: String,
    /// The settings in force.
    pub settings: RecordedSettings,
    /// Sample rate of `user.wav`.
    pub user_sample_rate: u32,
    /// Sample rate of the voice (`tts.pcm`).
    pub voice_sample_rate: u32,
    /// When the first user audio was sent, in ms since the recorder started.
    pub audio_start_ms: f64,
    /// What a reader should know (reconnects, how an import made its curve).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One Flux text message as received (`flux.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FluxLine {
    /// Arrival, ms since the recorder started.
    pub t_ms: f64,
    /// Which connection: 0, then 1 for the first reconnect, ...
    pub connection: u32,
    /// The message as sent (a string when it was not JSON).
    pub message: serde_json::Value,
}

/// One step of a model stream (`llm.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmLine {
    /// When, ms since the recorder started.
    pub t_ms: f64,
    /// Which request, in order of requests.
    pub stream: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: LlmEvent,
}

/// What happened in a model stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum LlmEvent {
    /// The request went out.
    Request {
        /// The last user message: what replay matches requests by.
        last_user: String,
        /// The whole conversation sent.
        messages: serde_json::Value,
    },
    /// The stream opened (response headers).
    Opened,
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// A tool call.
    ToolCall {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments.
        arguments: serde_json::Value,
    },
    /// Token usage.
    Usage {
        /// Prompt tokens.
        input_tokens: u64,
        /// Completion tokens.
        output_tokens: u64,
    },
    /// The stream ended.
    End {
        /// The provider's reason.
        finish_reason: Option<String>,
    },
    /// The request or the stream failed.
    Error {
        /// [`ErrorKind::as_str`](crate::error::ErrorKind::as_str).
        kind: String,
        /// The message.
        message: String,
    },
    /// The engine dropped the stream before its end (cancelled).
    Dropped,
}

/// One step of a voice stream (`tts.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtsLine {
    /// When, ms since the recorder started.
    pub t_ms: f64,
    /// Which request, in order of requests.
    pub stream: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: TtsEvent,
}

/// A word's place in a chunk of recorded speech: text, first sample, one past the last.
pub type RecordedWord = (String, u64, u64);

/// What happened in a voice stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum TtsEvent {
    /// The text went out.
    Request {
        /// The text.
        text: String,
    },
    /// The stream opened.
    Opened,
    /// Audio: `samples` samples at `offset` in `tts.pcm`.
    Audio {
        /// First sample in `tts.pcm`.
        offset: u64,
        /// Samples.
        samples: u64,
        /// Words that start in this chunk (sentence-relative samples).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        words: Vec<RecordedWord>,
    },
    /// The stream ended.
    End,
    /// The request or the stream failed.
    Error {
        /// [`ErrorKind::as_str`](crate::error::ErrorKind::as_str).
        kind: String,
        /// The message.
        message: String,
    },
    /// The engine dropped the stream before its end.
    Dropped,
}

/// A recording read back.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Where it was read from.
    pub dir: PathBuf,
    /// `recording.json`.
    pub meta: RecordingMeta,
    /// `user.wav`.
    pub user_audio: Vec<i16>,
    /// `flux.jsonl`.
    pub flux: Vec<FluxLine>,
    /// `llm.jsonl`.
    pub llm: Vec<LlmLine>,
    /// `tts.jsonl`.
    pub tts: Vec<TtsLine>,
    /// `tts.pcm`.
    pub tts_audio: Vec<i16>,
    /// `tools.jsonl` (empty when the session called no tool).
    pub tools: Vec<ToolLine>,
}

impl Recording {
    /// Reads a recording directory.
    ///
    /// # Errors
    /// [`RecordingError`] naming the file (and line) that is missing, unreadable, of another format
    /// or version, or malformed.
    pub fn load(dir: &Path) -> Result<Self, RecordingError> {
        let meta_path = dir.join("recording.json");
        let text = read_text(&meta_path)?;
        let meta: RecordingMeta = {
            let de = &mut serde_json::Deserializer::from_str(&text);
            serde_path_to_error::deserialize(de).map_err(|e| RecordingError::Malformed {
                path: meta_path.clone(),
                line: None,
                message: e.to_string(),
            })?
        };
        if meta.format != FORMAT {
            return Err(RecordingError::Malformed {
                path: meta_path,
                line: None,
                message: format!("format {:?} is not {FORMAT:?}", meta.format),
            });
        }
        if meta.version != VERSION {
            return Err(RecordingError::Version {
                path: meta_path,
                found: meta.version,
            });
        }
        let user_audio = read_wav(&dir.join("user.wav"), meta.user_sample_rate)?;
        let pcm_path = dir.join("tts.pcm");
        let tts_audio = if pcm_path.exists() {
            let bytes = std::fs::read(&pcm_path).map_err(|e| RecordingError::io(&pcm_path, e))?;
            let mut samples = Vec::with_capacity(bytes.len() / 2);
            crate::audio::decode_into(crate::flux::Encoding::Linear16, &bytes, &mut samples);
            samples
        } else {
            Vec::new()
        };
        let recording = Self {
            flux: read_lines(&dir.join("flux.jsonl"))?,
            llm: read_lines_if_present(&dir.join("llm.jsonl"))?,
            tts: read_lines_if_present(&dir.join("tts.jsonl"))?,
            tools: read_lines_if_present(&dir.join("tools.jsonl"))?,
            dir: dir.to_owned(),
            meta,
            user_audio,
            tts_audio,
        };
        recording.check_audio_offsets()?;
        Ok(recording)
    }

    fn check_audio_offsets(&self) -> Result<(), RecordingError> {
        for (n, line) in self.tts.iter().enumerate() {
            if let TtsEvent::Audio {
                offset, samples, ..
            } = &line.event
                && offset + samples > self.tts_audio.len() as u64
            {
                return Err(RecordingError::Malformed {
                    path: self.dir.join("tts.jsonl"),
                    line: Some(n + 1),
                    message: format!(
                        "audio {offset}..{} is past the end of tts.pcm ({} samples)",
                        offset + samples,
                        self.tts_audio.len()
                    ),
                });
            }
        }
        Ok(())
    }
}

fn read_text(path: &Path) -> Result<String, RecordingError> {
    std::fs::read_to_string(path).map_err(|e| RecordingError::io(path, e))
}

fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, RecordingError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let de = &mut serde_json::Deserializer::from_str(line);
        out.push(
            serde_path_to_error::deserialize(de).map_err(|e| RecordingError::Malformed {
                path: path.to_owned(),
                line: Some(n + 1),
                message: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

fn read_lines_if_present<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Vec<T>, RecordingError> {
    if path.exists() {
        read_lines(path)
    } else {
        Ok(Vec::new())
    }
}

/// Reads a mono 16-bit WAV at `rate`.
pub(crate) fn read_wav(path: &Path, rate: u32) -> Result<Vec<i16>, RecordingError> {
    let bytes = std::fs::read(path).map_err(|e| RecordingError::io(path, e))?;
    let malformed = |message: String| RecordingError::Malformed {
        path: path.to_owned(),
        line: None,
        message,
    };
    let (format, offset) = crate::audio::parse_wav_header(&bytes)
        .map_err(|e| malformed(e.to_string()))?
        .ok_or_else(|| malformed("truncated wav header".into()))?;
    if format.channels != 1
        || format.sample_rate != rate
        || format.encoding != crate::flux::Encoding::Linear16
    {
        return Err(malformed(format!(
            "{} Hz, {} channel(s), {}; expected {rate} Hz mono 16-bit PCM",
            format.sample_rate,
            format.channels,
            format.encoding.as_str()
        )));
    }
    let mut samples = Vec::new();
    crate::audio::decode_into(
        crate::flux::Encoding::Linear16,
        &bytes[offset..],
        &mut samples,
    );
    Ok(samples)
}

/// One line of `events.jsonl`: an event-log entry with its time in ms since `origin`.
#[derive(Debug, Serialize)]
pub struct EventLine<'a> {
    t_ms: f64,
    #[serde(flatten)]
    kind: &'a LogKind,
}

impl<'a> EventLine<'a> {
    /// `entry` timed from `origin`.
    pub fn new(entry: &'a LogEntry, origin: Instant) -> Self {
        Self {
            t_ms: entry.at.saturating_duration_since(origin).as_secs_f64() * 1000.0,
            kind: &entry.kind,
        }
    }
}

pub(super) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RecordingError> {
    std::fs::write(path, bytes).map_err(|e| RecordingError::io(path, e))
}

pub(super) fn write_jsonl<T: Serialize>(path: &Path, lines: &[T]) -> Result<(), RecordingError> {
    let mut out = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut out, line).expect("recording lines serialize");
        out.push(b'\n');
    }
    write_file(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of a checked-in recording, to damage one file at a time.
    fn copy_of(name: &str, test: &str) -> PathBuf {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("recordings")
            .join(name);
        let to =
            std::env::temp_dir().join(format!("turnflow-format-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&to);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        to
    }

    fn rewrite(path: &Path, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, edit(text)).unwrap();
    }

    #[test]
    fn a_checked_in_recording_loads_with_every_file() {
        let dir = copy_of("barge_in", "loads");
        let recording = Recording::load(&dir).unwrap();
        assert_eq!(
            (recording.meta.format.as_str(), recording.meta.version),
            (FORMAT, VERSION)
        );
        assert!(!recording.flux.is_empty());
        assert!(!recording.user_audio.is_empty());
        assert!(!recording.llm.is_empty() && !recording.tts.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn each_broken_file_is_named_with_its_line_and_what_is_wrong() {
        let dir = copy_of("barge_in", "version");
        rewrite(&dir.join("recording.json"), |t| {
            t.replacen("\"version\": 1", "\"version\": 2", 1)
        });
        let error = Recording::load(&dir).unwrap_err();
        assert!(
            matches!(error, RecordingError::Version { found: 2, .. }),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .ends_with("recording version 2; this build reads version 1")
        );
        std::fs::remove_dir_all(dir).unwrap();

        let dir = copy_of("barge_in", "format");
        rewrite(&dir.join("recording.json"), |t| {
            t.replacen(FORMAT, "someone-else", 1)
        });
        let error = Recording::load(&dir).unwrap_err().to_string();
        assert!(
            error.contains("format \"someone-else\" is not \"turnflow-recording\""),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();

        let dir = copy_of("barge_in", "line");
        rewrite(&dir.join("flux.jsonl"), |t| {
            let mut lines: Vec<&str> = t.lines().collect();
            lines[2] = r#"{"t_ms":"soon","connection":0,"message":{}}"#;
            lines.join("\n") + "\n"
        });
        let error = Recording::load(&dir).unwrap_err();
        let RecordingError::Malformed { path, line, .. } = &error else {
            panic!("{error}")
        };
        assert_eq!(
            (path.file_name().unwrap(), *line),
            ("flux.jsonl".as_ref(), Some(3))
        );
        std::fs::remove_dir_all(dir).unwrap();

        let dir = copy_of("barge_in", "pcm");
        std::fs::write(dir.join("tts.pcm"), [0u8; 4]).unwrap();
        let error = Recording::load(&dir).unwrap_err().to_string();
        assert!(
            error.contains("past the end of tts.pcm (2 samples)"),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();

        let dir = copy_of("barge_in", "missing");
        std::fs::remove_file(dir.join("user.wav")).unwrap();
        let error = Recording::load(&dir).unwrap_err();
        assert!(matches!(error, RecordingError::Io { .. }), "{error}");
        assert!(error.to_string().contains("user.wav"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
