//! espeak-ng as a local voice: a subprocess per sentence, offline, no key.
//!
//! The text goes to espeak-ng on stdin (never on the command line, where a sentence starting
//! with `-` would be an option). `espeak-ng --stdout` writes a WAV stream (22050 Hz, 16-bit mono) whose header is followed by
//! samples as they are synthesized. The process is killed when the stream is dropped, so a
//! barge-in stops it at once. Installed on Debian with `apt-get install espeak-ng`.

use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};

use super::{SpeechChunk, SpeechStream, SpeechSynthesizer, TtsError};
use crate::error::ErrorKind;

/// Text accepted per request: well under a pipe's buffer, so writing it never blocks.
const MAX_TEXT_BYTES: usize = 16 * 1024;

/// espeak-ng's output rate.
pub const ESPEAK_RATE: u32 = 22050;

/// The espeak-ng voice.
#[derive(Debug, Clone)]
pub struct Espeak {
    program: String,
    voice: String,
    words_per_minute: u32,
}

fn error(kind: ErrorKind, message: impl Into<String>) -> TtsError {
    TtsError::new("espeak-ng", kind, message)
}

impl Espeak {
    /// espeak-ng with `voice` (e.g. `en-us`) at `words_per_minute` (80-450).
    pub fn new(voice: &str, words_per_minute: u32) -> Self {
        Self {
            program: "espeak-ng".into(),
            voice: voice.into(),
            words_per_minute: words_per_minute.clamp(80, 450),
        }
    }

    /// Whether the program can be run here.
    pub fn available() -> bool {
        std::process::Command::new("espeak-ng")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

struct Speaking {
    // Held so the process is killed (kill_on_drop) when the stream is dropped.
    _child: Child,
    stdout: ChildStdout,
    header_done: bool,
    pending: Vec<u8>,
}

#[async_trait]
impl SpeechSynthesizer for Espeak {
    fn name(&self) -> &str {
        "espeak-ng"
    }

    fn sample_rate(&self) -> u32 {
        ESPEAK_RATE
    }

    async fn synthesize(&self, text: &str) -> Result<SpeechStream, TtsError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(error(
                ErrorKind::BadRequest,
                format!(
                    "{} bytes of text in one request; at most {MAX_TEXT_BYTES} (one sentence at a time)",
                    text.len()
                ),
            ));
        }
        // The text goes in on stdin, never as an argument: a sentence starting with "-" must be
        // spoken, not read as an option.
        let mut child = Command::new(&self.program)
            .args([
                "-v",
                &self.voice,
                "-s",
                &self.words_per_minute.to_string(),
                "-b",
                "1",
                "--stdin",
                "--stdout",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                error(
                    ErrorKind::BadRequest,
                    format!(
                        "cannot run espeak-ng ({e}); install it with apt-get install espeak-ng"
                    ),
                )
            })?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| error(ErrorKind::StreamBroken, "no stdin"))?;
        // Fits the pipe (MAX_TEXT_BYTES), so this cannot wait on espeak reading its output.
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| error(ErrorKind::StreamBroken, format!("writing the text: {e}")))?;
        drop(stdin);
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| error(ErrorKind::StreamBroken, "no stdout"))?;
        let state = Speaking {
            _child: child,
            stdout,
            header_done: false,
            pending: Vec::new(),
        };
        let stream = futures_util::stream::unfold(state, |mut s| async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = match s.stdout.read(&mut buf).await {
                    Ok(0) => return None,
                    Ok(n) => n,
                    Err(e) => {
                        return Some((
                            Err(error(
                                ErrorKind::StreamBroken,
                                format!("reading audio: {e}"),
                            )),
                            s,
                        ));
                    }
                };
                s.pending.extend_from_slice(&buf[..n]);
                if !s.header_done {
                    match crate::audio::parse_wav_header(&s.pending) {
                        Ok(None) => continue,
                        Ok(Some((_, offset))) => {
                            s.pending.drain(..offset);
                            s.header_done = true;
                        }
                        Err(e) => {
                            return Some((Err(error(ErrorKind::StreamBroken, e.to_string())), s));
                        }
                    }
                }
                let whole = s.pending.len() / 2 * 2;
                if whole == 0 {
                    continue;
                }
                let chunk = SpeechChunk::from_pcm16(&s.pending[..whole]);
                s.pending.drain(..whole);
                return Some((Ok(chunk), s));
            }
        });
        Ok(Box::pin(stream))
    }
}
