//! The recording format (version 1, `docs/recordings.md`) and the [`Recorder`] that writes it.
//!
//! A recording is a directory: `recording.json` (format, version, settings, sample rates),
//! `user.wav` (the user's audio as sent to Flux), `flux.jsonl` (every Flux text message as
//! received, with its arrival time and connection), `llm.jsonl` and `tts.jsonl` (every model and
//! voice stream: request, headers, each chunk, end, error or drop, with times), `tts.pcm` (the
//! voice's audio, which `tts.jsonl` points into) and `events.jsonl` (the engine's event log).
//! Times are milliseconds since the recorder started. Nothing that identifies a key is ever
//! recorded: the Flux URL and headers are not, and the model's request is its messages.
//!
//! The recorder wraps the session's Flux connector, language model and voice; it keeps
//! everything in memory (about 115 MB per hour of user audio) and writes the directory once, at
//! the end, with [`Recorder::write`].

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::engine::log::{LogEntry, LogKind};
use crate::error::{BackendError, ErrorKind};
use crate::flux::Connector;
use crate::llm::{LanguageModel, LlmChunk, LlmRequest, LlmStream, Message};
use crate::tts::{SpeechStream, SpeechSynthesizer, TtsError, WordTiming};
use crate::ws::{ConnectError, ConnectRequest, Connection, WireFrame};

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
        }
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
        /// [`ErrorKind::as_str`].
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
        /// [`ErrorKind::as_str`].
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

#[derive(Default)]
struct Tape {
    flux: Vec<FluxLine>,
    llm: Vec<LlmLine>,
    tts: Vec<TtsLine>,
    tts_audio: Vec<i16>,
    user_audio: Vec<i16>,
    audio_start_ms: Option<f64>,
    connections: u32,
    llm_streams: u64,
    tts_streams: u64,
}

/// Records a session as it runs. Cheap to clone; every clone records into the same tape.
#[derive(Clone)]
pub struct Recorder {
    tape: Arc<Mutex<Tape>>,
    origin: Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("origin", &self.origin)
            .finish()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            tape: Arc::default(),
            origin: Instant::now(),
        }
    }

    /// When its clock started.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    fn ms(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * 1000.0
    }

    fn tape(&self) -> std::sync::MutexGuard<'_, Tape> {
        self.tape.lock().expect("recorder lock")
    }

    /// Keeps user audio as it is sent to Flux; the first call marks when the audio started.
    pub fn user_audio(&self, samples: &[i16]) {
        self.started_audio().user_audio.extend_from_slice(samples);
    }

    /// Keeps user audio sent as `bytes` of `encoding`, decoded straight onto the tape (the
    /// server's path, once per received frame).
    pub fn user_audio_encoded(&self, encoding: crate::flux::Encoding, bytes: &[u8]) {
        crate::audio::decode_into(encoding, bytes, &mut self.started_audio().user_audio);
    }

    /// The tape, with the start of the user's audio marked the first time.
    fn started_audio(&self) -> std::sync::MutexGuard<'_, Tape> {
        let now = self.ms();
        let mut tape = self.tape();
        tape.audio_start_ms.get_or_insert(now);
        tape
    }

    /// Wraps a Flux connector: every text message received on every connection is recorded.
    pub fn connector(&self, inner: Arc<dyn Connector>) -> Arc<dyn Connector> {
        Arc::new(RecordingConnector {
            inner,
            recorder: self.clone(),
        })
    }

    /// Wraps a language model: every request and every step of its stream is recorded.
    pub fn llm(&self, inner: Arc<dyn LanguageModel>) -> Arc<dyn LanguageModel> {
        Arc::new(RecordingLlm {
            inner,
            recorder: self.clone(),
        })
    }

    /// Wraps a voice: every request and every chunk of its audio is recorded.
    pub fn tts(&self, inner: Arc<dyn SpeechSynthesizer>) -> Arc<dyn SpeechSynthesizer> {
        Arc::new(RecordingTts {
            inner,
            recorder: self.clone(),
        })
    }

    fn llm_line(&self, stream: u64, event: LlmEvent) {
        let t_ms = self.ms();
        self.tape().llm.push(LlmLine {
            t_ms,
            stream,
            event,
        });
    }

    fn tts_line(&self, stream: u64, event: TtsEvent) {
        let t_ms = self.ms();
        self.tape().tts.push(TtsLine {
            t_ms,
            stream,
            event,
        });
    }

    /// Writes the recording directory (created if needed): the tape, the settings and
    /// `events`, the session's event log (none: the caller writes `events.jsonl` itself, as
    /// `turnflow run` does while the session goes on).
    ///
    /// # Errors
    /// [`RecordingError::Io`] naming the file that could not be written.
    pub fn write(
        &self,
        dir: &Path,
        source: &str,
        settings: RecordedSettings,
        user_sample_rate: u32,
        voice_sample_rate: u32,
        events: Option<&[LogEntry]>,
    ) -> Result<(), RecordingError> {
        std::fs::create_dir_all(dir).map_err(|e| RecordingError::io(dir, e))?;
        let tape = self.tape();
        let mut notes = Vec::new();
        if tape.connections > 1 {
            notes.push(format!(
                "flux reconnected {} time(s); later connections' audio times are mapped onto the session's",
                tape.connections - 1
            ));
        }
        let meta = RecordingMeta {
            format: FORMAT.into(),
            version: VERSION,
            source: source.into(),
            settings,
            user_sample_rate,
            voice_sample_rate,
            audio_start_ms: tape.audio_start_ms.unwrap_or(0.0),
            notes,
        };
        write_file(
            &dir.join("recording.json"),
            (serde_json::to_string_pretty(&meta).expect("meta serializes") + "\n").as_bytes(),
        )?;
        crate::audio::write_wav(&dir.join("user.wav"), user_sample_rate, 1, &tape.user_audio)
            .map_err(|e| RecordingError::io(&dir.join("user.wav"), e))?;
        write_file(
            &dir.join("tts.pcm"),
            &crate::audio::encode(crate::flux::Encoding::Linear16, &tape.tts_audio),
        )?;
        write_jsonl(&dir.join("flux.jsonl"), &tape.flux)?;
        write_jsonl(&dir.join("llm.jsonl"), &tape.llm)?;
        write_jsonl(&dir.join("tts.jsonl"), &tape.tts)?;
        let Some(events) = events else {
            return Ok(());
        };
        let lines: Vec<EventLine<'_>> = events
            .iter()
            .map(|e| EventLine::new(e, self.origin))
            .collect();
        write_jsonl(&dir.join("events.jsonl"), &lines)
    }
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

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RecordingError> {
    std::fs::write(path, bytes).map_err(|e| RecordingError::io(path, e))
}

fn write_jsonl<T: Serialize>(path: &Path, lines: &[T]) -> Result<(), RecordingError> {
    let mut out = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut out, line).expect("recording lines serialize");
        out.push(b'\n');
    }
    write_file(path, &out)
}

struct RecordingConnector {
    inner: Arc<dyn Connector>,
    recorder: Recorder,
}

#[async_trait]
impl Connector for RecordingConnector {
    async fn connect(&self, request: &ConnectRequest) -> Result<Connection, ConnectError> {
        let connection = self.inner.connect(request).await?;
        let index = {
            let mut tape = self.recorder.tape();
            tape.connections += 1;
            tape.connections - 1
        };
        let recorder = self.recorder.clone();
        let stream = connection.stream.inspect(move |frame| {
            if let Ok(WireFrame::Text(text)) = frame {
                let message = serde_json::from_str(text)
                    .unwrap_or_else(|_| serde_json::Value::String(text.clone()));
                let t_ms = recorder.ms();
                recorder.tape().flux.push(FluxLine {
                    t_ms,
                    connection: index,
                    message,
                });
            }
        });
        Ok(Connection {
            sink: connection.sink,
            stream: Box::pin(stream),
            request_id: connection.request_id,
        })
    }
}

fn error_event(e: &BackendError) -> (String, String) {
    (e.kind.as_str().to_owned(), e.message.clone())
}

/// A recorded error of `provider` read back; a kind this build does not know reads as a
/// broken stream.
pub(crate) fn recorded_error(provider: &str, kind: &str, message: String) -> BackendError {
    let kind = ErrorKind::from_name(kind).unwrap_or(ErrorKind::StreamBroken);
    BackendError::new(provider, kind, message)
}

/// The last user message of a conversation: what replay matches a request by.
pub(crate) fn last_user(messages: &[Message]) -> String {
    messages
        .iter()
        .rev()
        .find_map(|m| match m {
            Message::User { content } => Some(content.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

struct RecordingLlm {
    inner: Arc<dyn LanguageModel>,
    recorder: Recorder,
}

#[async_trait]
impl LanguageModel for RecordingLlm {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, crate::llm::LlmError> {
        let stream = {
            let mut tape = self.recorder.tape();
            tape.llm_streams += 1;
            tape.llm_streams - 1
        };
        self.recorder.llm_line(
            stream,
            LlmEvent::Request {
                last_user: last_user(&request.messages),
                messages: serde_json::to_value(&request.messages).unwrap_or_default(),
            },
        );
        match self.inner.stream(request).await {
            Ok(inner) => {
                self.recorder.llm_line(stream, LlmEvent::Opened);
                Ok(Box::pin(Taped {
                    inner,
                    on_item: {
                        let recorder = self.recorder.clone();
                        Box::new(move |item: &Result<LlmChunk, BackendError>| {
                            let event = match item {
                                Ok(LlmChunk::Text(text)) => LlmEvent::Text { text: text.clone() },
                                Ok(LlmChunk::ToolCall(call)) => LlmEvent::ToolCall {
                                    id: call.id.clone(),
                                    name: call.name.clone(),
                                    arguments: call.arguments.clone(),
                                },
                                Ok(LlmChunk::Usage(u)) => LlmEvent::Usage {
                                    input_tokens: u.input_tokens,
                                    output_tokens: u.output_tokens,
                                },
                                Ok(LlmChunk::End { finish_reason }) => LlmEvent::End {
                                    finish_reason: finish_reason.clone(),
                                },
                                Err(e) => {
                                    let (kind, message) = error_event(e);
                                    LlmEvent::Error { kind, message }
                                }
                            };
                            let last =
                                matches!(event, LlmEvent::End { .. } | LlmEvent::Error { .. });
                            recorder.llm_line(stream, event);
                            last
                        })
                    },
                    on_end: {
                        let recorder = self.recorder.clone();
                        Some(Box::new(move || {
                            recorder.llm_line(
                                stream,
                                LlmEvent::End {
                                    finish_reason: None,
                                },
                            )
                        }))
                    },
                    on_drop: {
                        let recorder = self.recorder.clone();
                        Some(Box::new(move || {
                            recorder.llm_line(stream, LlmEvent::Dropped)
                        }))
                    },
                }))
            }
            Err(e) => {
                let (kind, message) = error_event(&e);
                self.recorder
                    .llm_line(stream, LlmEvent::Error { kind, message });
                Err(e)
            }
        }
    }
}

struct RecordingTts {
    inner: Arc<dyn SpeechSynthesizer>,
    recorder: Recorder,
}

#[async_trait]
impl SpeechSynthesizer for RecordingTts {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn sample_rate(&self) -> u32 {
        self.inner.sample_rate()
    }

    async fn synthesize(&self, text: &str) -> Result<SpeechStream, TtsError> {
        let stream = {
            let mut tape = self.recorder.tape();
            tape.tts_streams += 1;
            tape.tts_streams - 1
        };
        self.recorder
            .tts_line(stream, TtsEvent::Request { text: text.into() });
        match self.inner.synthesize(text).await {
            Ok(inner) => {
                self.recorder.tts_line(stream, TtsEvent::Opened);
                Ok(Box::pin(Taped {
                    inner,
                    on_item: {
                        let recorder = self.recorder.clone();
                        Box::new(
                            move |item: &Result<crate::tts::SpeechChunk, BackendError>| {
                                let event = match item {
                                    Ok(chunk) => {
                                        let offset = {
                                            let mut tape = recorder.tape();
                                            let offset = tape.tts_audio.len() as u64;
                                            tape.tts_audio.extend_from_slice(&chunk.samples);
                                            offset
                                        };
                                        TtsEvent::Audio {
                                            offset,
                                            samples: chunk.samples.len() as u64,
                                            words: chunk
                                                .words
                                                .iter()
                                                .map(|w: &WordTiming| {
                                                    (w.word.clone(), w.start, w.end)
                                                })
                                                .collect(),
                                        }
                                    }
                                    Err(e) => {
                                        let (kind, message) = error_event(e);
                                        TtsEvent::Error { kind, message }
                                    }
                                };
                                let last = matches!(event, TtsEvent::Error { .. });
                                recorder.tts_line(stream, event);
                                last
                            },
                        )
                    },
                    on_end: {
                        let recorder = self.recorder.clone();
                        Some(Box::new(move || recorder.tts_line(stream, TtsEvent::End)))
                    },
                    on_drop: {
                        let recorder = self.recorder.clone();
                        Some(Box::new(move || {
                            recorder.tts_line(stream, TtsEvent::Dropped)
                        }))
                    },
                }))
            }
            Err(e) => {
                let (kind, message) = error_event(&e);
                self.recorder
                    .tts_line(stream, TtsEvent::Error { kind, message });
                Err(e)
            }
        }
    }

    async fn clear(&self) {
        self.inner.clear().await;
    }
}

type OnItem<T> = Box<dyn FnMut(&T) -> bool + Send>;

/// A stream that reports each item, its end, and being dropped before its end.
struct Taped<T> {
    inner: Pin<Box<dyn Stream<Item = T> + Send>>,
    /// Returns whether the item was the stream's last word (an end or an error).
    on_item: OnItem<T>,
    /// Called once when the stream ends without a last word of its own (a voice's stream
    /// ends by ending).
    on_end: Option<Box<dyn FnOnce() + Send>>,
    /// Called once if the stream is dropped before it finished.
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl<T> Stream for Taped<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => {
                if (this.on_item)(&item) {
                    this.on_end = None;
                    this.on_drop = None;
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                this.on_drop = None;
                if let Some(on_end) = this.on_end.take() {
                    on_end();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for Taped<T> {
    fn drop(&mut self) {
        if let Some(on_drop) = self.on_drop.take() {
            on_drop();
        }
    }
}
