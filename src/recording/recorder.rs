//! The [`Recorder`]: wraps a session's Flux connector, language model and voice, keeps
//! everything they said in memory, and writes it as a recording ([`super::format`]) at the end.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use super::format::{
    EventLine, FORMAT, FluxLine, LlmEvent, LlmLine, RecordedSettings, RecordingError,
    RecordingMeta, ToolLine, TtsEvent, TtsLine, VERSION, write_file, write_jsonl,
};
use crate::engine::log::LogEntry;
use crate::error::{BackendError, ErrorKind};
use crate::flux::Connector;
use crate::llm::{LanguageModel, LlmChunk, LlmRequest, LlmStream, Message, ToolCall, ToolExecutor};
use crate::tts::{SpeechCut, SpeechStream, SpeechSynthesizer, TtsError, WordTiming};
use crate::ws::{ConnectError, ConnectRequest, Connection, WireFrame};

#[derive(Default)]
struct Tape {
    flux: Vec<FluxLine>,
    llm: Vec<LlmLine>,
    tts: Vec<TtsLine>,
    tools: Vec<ToolLine>,
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

    /// Wraps a tool executor: every call, its arguments, result and duration are recorded.
    pub fn tools(&self, inner: Arc<dyn ToolExecutor>) -> Arc<dyn ToolExecutor> {
        Arc::new(RecordingTools {
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
        if !tape.tools.is_empty() {
            write_jsonl(&dir.join("tools.jsonl"), &tape.tools)?;
        }
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

struct RecordingTools {
    inner: Arc<dyn ToolExecutor>,
    recorder: Recorder,
}

/// Records a call that ends, or one dropped with its reply (no result), when dropped.
struct ToolRecord {
    recorder: Recorder,
    line: Option<ToolLine>,
    started: Instant,
}

impl Drop for ToolRecord {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            self.recorder.tape().tools.push(line);
        }
    }
}

#[async_trait]
impl ToolExecutor for RecordingTools {
    fn specs(&self) -> Vec<crate::llm::ToolSpec> {
        self.inner.specs()
    }

    fn revision(&self) -> u64 {
        self.inner.revision()
    }

    async fn call(&self, call: &ToolCall) -> Result<String, String> {
        let mut record = ToolRecord {
            recorder: self.recorder.clone(),
            line: Some(ToolLine {
                t_ms: self.recorder.ms(),
                took_ms: None,
                call_id: call.id.clone(),
                tool: call.name.clone(),
                arguments: call.arguments.clone(),
                result: None,
                error: None,
            }),
            started: Instant::now(),
        };
        let outcome = self.inner.call(call).await;
        if let Some(line) = &mut record.line {
            line.took_ms = Some(record.started.elapsed().as_secs_f64() * 1000.0);
            match &outcome {
                Ok(text) => line.result = Some(text.clone()),
                Err(e) => line.error = Some(e.clone()),
            }
        }
        outcome
    }
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

    async fn clear(&self, cut: &SpeechCut) {
        self.inner.clear(cut).await;
    }

    fn for_conversation(&self) -> Option<Arc<dyn SpeechSynthesizer>> {
        let inner = self.inner.for_conversation()?;
        Some(Arc::new(RecordingTts {
            inner,
            recorder: self.recorder.clone(),
        }))
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
