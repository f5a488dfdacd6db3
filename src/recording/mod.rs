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

mod format;
mod recorder;

pub(crate) use format::read_wav;
pub use format::{
    EventLine, FORMAT, FluxLine, LlmEvent, LlmLine, RecordedSettings, RecordedTool, RecordedWord,
    Recording, RecordingError, RecordingMeta, ToolLine, TtsEvent, TtsLine, VERSION,
};
pub use recorder::Recorder;
pub(crate) use recorder::{last_user, recorded_error};
