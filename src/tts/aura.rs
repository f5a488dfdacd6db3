//! Deepgram Aura streaming TTS over one WebSocket per conversation (`/v1/speak`): each
//! conversation gets its own socket through [`SpeechSynthesizer::for_conversation`].
//!
//! Each sentence is a `Speak` followed by a `Flush`; its audio is every binary frame until the
//! server's `Flushed`. A synthesis dropped before `Flushed` (barge-in, cancelled speculation)
//! leaves frames in flight, so the connection sends `Clear` and discards every frame until
//! `Cleared` before it is used again; [`SpeechSynthesizer::clear`] does the same at once.
//! `Warning`s are logged (both the `code`/`description` and the older `warn_code`/`warn_msg`
//! spellings). Close codes become errors with the provider's reason (`DATA-0001` rate limit,
//! `BIG-0001` text too long, `NET-0003` connection time limit); a dropped or closed socket is
//! reopened on the next sentence, except that after `DATA-0001` requests fail fast for
//! [`RATE_LIMIT_BACKOFF`] (a failover chain moves on meanwhile) instead of hammering the limit. Text is split below Aura's 2000-character limit per `Speak`.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::{debug, warn};

use super::{SpeechChunk, SpeechCut, SpeechStream, SpeechSynthesizer, TtsError};
use crate::error::ErrorKind;
use crate::net::{ApiKey, insecure_remote};
use crate::ws::{
    ConnectError, ConnectRequest, Connection, Connector, WebSocketConnector, WireFrame,
};

/// Where Deepgram serves Aura.
pub const AURA_BASE_URL: &str = "wss://api.deepgram.com";
/// Most characters per `Speak` message.
pub const MAX_SPEAK_CHARS: usize = 2000;

/// Aura over WebSocket.
pub struct AuraTts {
    url: String,
    api_key: Option<ApiKey>,
    sample_rate: u32,
    connector: Arc<dyn Connector>,
    link: Arc<Mutex<Link>>,
}

#[derive(Default)]
struct Link {
    connection: Option<Connection>,
    /// A synthesis was abandoned: clear before the next one.
    dirty: bool,
    /// After a `DATA-0001` close (character rate limit), no request before this instant.
    backoff_until: Option<tokio::time::Instant>,
}

/// How long to stay away after Aura's character rate limit closed the connection.
pub const RATE_LIMIT_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a `Clear` may wait for `Cleared` before the socket is replaced instead: a server
/// that never confirms must not hold up the next reply.
pub const CLEAR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn error(kind: ErrorKind, message: impl Into<String>) -> TtsError {
    TtsError::new("aura", kind, message)
}

/// Splits `text` into pieces of at most `max` characters, at spaces when possible.
pub(crate) fn split_text(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for word in text.split_inclusive(' ') {
        if current.chars().count() + word.chars().count() > max && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        let mut word = word;
        while word.chars().count() > max {
            let cut = word.char_indices().nth(max).map_or(word.len(), |(i, _)| i);
            out.push(word[..cut].to_owned());
            word = &word[cut..];
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

impl AuraTts {
    /// Aura at `base_url` with `model` (e.g. `aura-2-thalia-en`), linear16 at `sample_rate`.
    ///
    /// # Errors
    /// [`TtsError`] for an unencrypted `ws://` URL to another machine (the key would travel in
    /// clear).
    pub fn new(
        base_url: &str,
        model: &str,
        sample_rate: u32,
        api_key: Option<ApiKey>,
    ) -> Result<Self, TtsError> {
        let base = base_url.trim_end_matches('/');
        if insecure_remote(base) {
            return Err(error(
                ErrorKind::BadRequest,
                format!("refusing unencrypted ws:// to a remote host ({base}): use wss"),
            ));
        }
        Ok(Self {
            url: format!(
                "{base}/v1/speak?model={model}&encoding=linear16&sample_rate={sample_rate}"
            ),
            api_key,
            sample_rate,
            connector: Arc::new(WebSocketConnector),
            link: Arc::default(),
        })
    }

    async fn ensure_connected(&self, link: &mut Link) -> Result<(), TtsError> {
        if link.connection.is_none() {
            let request = ConnectRequest {
                url: self.url.clone(),
                api_key: self.api_key.clone(),
            };
            let connection = self
                .connector
                .connect(&request)
                .await
                .map_err(|e| match &e {
                    ConnectError::Handshake { status, .. } => {
                        TtsError::http("aura", *status, None, e.to_string())
                    }
                    _ => error(ErrorKind::Network, e.to_string()),
                })?;
            link.connection = Some(connection);
            link.dirty = false;
        }
        Ok(())
    }

    /// Sends `Clear` and drops frames until `Cleared`.
    async fn clear_link(link: &mut Link) {
        let Some(connection) = &mut link.connection else {
            link.dirty = false;
            return;
        };
        if connection
            .sink
            .send(WireFrame::Text(r#"{"type":"Clear"}"#.into()))
            .await
            .is_err()
        {
            link.connection = None;
            return;
        }
        let cleared = tokio::time::timeout(CLEAR_TIMEOUT, async {
            loop {
                match connection.stream.next().await {
                    Some(Ok(WireFrame::Text(text)))
                        if message_type(&text).as_deref() == Some("Cleared") =>
                    {
                        return true;
                    }
                    Some(Ok(WireFrame::Close(_))) | None | Some(Err(_)) => return false,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        if cleared != Ok(true) {
            if cleared.is_err() {
                warn!("aura sent no Cleared within {CLEAR_TIMEOUT:?}; opening a fresh socket");
            }
            // Whatever the old socket still holds belongs to the cut sentence.
            link.connection = None;
        }
        link.dirty = false;
    }
}

fn message_type(text: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()?
        .get("type")?
        .as_str()
        .map(str::to_owned)
}

fn close_error(reason: Option<(u16, String)>) -> TtsError {
    match reason {
        Some((code, reason)) => {
            let advice = match reason.as_str() {
                "DATA-0001" => "character rate limit: slow down before retrying",
                "BIG-0000" | "BIG-0001" => "text too long for one message",
                "NET-0003" => "connection time limit reached; the next sentence reconnects",
                _ => "the connection is closed; the next sentence reconnects",
            };
            let kind = match reason.as_str() {
                "DATA-0001" => ErrorKind::RateLimited {
                    retry_after: Some(RATE_LIMIT_BACKOFF),
                },
                "BIG-0000" | "BIG-0001" => ErrorKind::BadRequest,
                _ => ErrorKind::StreamBroken,
            };
            error(kind, format!("closed with {code} {reason}: {advice}"))
        }
        None => error(
            ErrorKind::StreamBroken,
            "the connection closed; the next sentence reconnects",
        ),
    }
}

struct Synthesis {
    link: OwnedMutexGuard<Link>,
    done: bool,
}

impl Drop for Synthesis {
    fn drop(&mut self) {
        if !self.done {
            self.link.dirty = true;
        }
    }
}

#[async_trait]
impl SpeechSynthesizer for AuraTts {
    fn name(&self) -> &str {
        "aura"
    }

    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    async fn synthesize(&self, text: &str) -> Result<SpeechStream, TtsError> {
        let mut link = self.link.clone().lock_owned().await;
        if let Some(until) = link.backoff_until {
            let now = tokio::time::Instant::now();
            if now < until {
                return Err(error(
                    ErrorKind::RateLimited {
                        retry_after: Some(until - now),
                    },
                    format!(
                        "rate limited (DATA-0001): backing off for another {} ms",
                        (until - now).as_millis()
                    ),
                ));
            }
            link.backoff_until = None;
        }
        if link.dirty {
            Self::clear_link(&mut link).await;
        }
        self.ensure_connected(&mut link).await?;
        let connection = link.connection.as_mut().expect("connected above");
        for piece in split_text(text, MAX_SPEAK_CHARS) {
            let speak = serde_json::json!({"type": "Speak", "text": piece}).to_string();
            if connection.sink.send(WireFrame::Text(speak)).await.is_err() {
                link.connection = None;
                return Err(error(
                    ErrorKind::Network,
                    "the connection dropped while sending text",
                ));
            }
        }
        if connection
            .sink
            .send(WireFrame::Text(r#"{"type":"Flush"}"#.into()))
            .await
            .is_err()
        {
            link.connection = None;
            return Err(error(
                ErrorKind::Network,
                "the connection dropped while sending Flush",
            ));
        }
        let state = Synthesis { link, done: false };
        let stream = futures_util::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            loop {
                let connection = state.link.connection.as_mut()?;
                match connection.stream.next().await {
                    Some(Ok(WireFrame::Binary(bytes))) => {
                        return Some((Ok(SpeechChunk::from_pcm16(&bytes)), Some(state)));
                    }
                    Some(Ok(WireFrame::Text(text))) => match message_type(&text).as_deref() {
                        Some("Flushed") => {
                            state.done = true;
                            return None;
                        }
                        Some("Warning") => {
                            let v: serde_json::Value =
                                serde_json::from_str(&text).unwrap_or_default();
                            let code = v
                                .get("code")
                                .or(v.get("warn_code"))
                                .cloned()
                                .unwrap_or_default();
                            let description = v
                                .get("description")
                                .or(v.get("warn_msg"))
                                .cloned()
                                .unwrap_or_default();
                            warn!(code = %crate::text::Untrusted(&code.to_string()), description = %crate::text::Untrusted(&description.to_string()), "aura warning");
                        }
                        other => debug!(message_type = ?other, "aura message"),
                    },
                    Some(Ok(WireFrame::Close(reason))) => {
                        state.link.connection = None;
                        if reason.as_ref().is_some_and(|(_, r)| r == "DATA-0001") {
                            state.link.backoff_until =
                                Some(tokio::time::Instant::now() + RATE_LIMIT_BACKOFF);
                        }
                        state.done = true;
                        return Some((Err(close_error(reason)), None));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        state.link.connection = None;
                        state.done = true;
                        return Some((Err(error(ErrorKind::StreamBroken, e.0)), None));
                    }
                    None => {
                        state.link.connection = None;
                        state.done = true;
                        return Some((Err(close_error(None)), None));
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    fn for_conversation(&self) -> Option<Arc<dyn SpeechSynthesizer>> {
        Some(Arc::new(AuraTts {
            url: self.url.clone(),
            api_key: self.api_key.clone(),
            sample_rate: self.sample_rate,
            connector: self.connector.clone(),
            link: Arc::default(),
        }))
    }

    async fn clear(&self, _: &SpeechCut) {
        let mut link = self.link.lock().await;
        if link.dirty {
            Self::clear_link(&mut link).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_split_below_the_limit_at_spaces() {
        let text = "word ".repeat(1000);
        let pieces = split_text(&text, MAX_SPEAK_CHARS);
        assert!(pieces.iter().all(|p| p.chars().count() <= MAX_SPEAK_CHARS));
        assert_eq!(pieces.concat(), text);
        assert_eq!(split_text("abcdef", 4), vec!["abcd", "ef"]);
        assert_eq!(split_text("short text", 2000), vec!["short text"]);
    }

    #[test]
    fn unencrypted_remote_urls_are_refused() {
        assert!(AuraTts::new("ws://example.com", "m", 16000, None).is_err());
        assert!(AuraTts::new("ws://127.0.0.1:9", "m", 16000, None).is_ok());
        assert!(AuraTts::new(AURA_BASE_URL, "m", 16000, None).is_ok());
    }

    #[test]
    fn close_codes_name_the_reason() {
        assert!(
            close_error(Some((1008, "DATA-0001".into())))
                .to_string()
                .contains("rate limit")
        );
        assert!(
            close_error(Some((1011, "NET-0003".into())))
                .to_string()
                .contains("reconnects")
        );
    }
}
