//! OpenAI-compatible speech: `POST {base_url}/audio/speech` with `response_format: "pcm"`.
//!
//! Wire format (OpenAI API reference, "Create speech"): JSON body `{model, input, voice,
//! response_format}`; with `pcm` the response body is raw 24 kHz, 16-bit little-endian, mono
//! samples, streamed as they are generated. Dropping the stream closes the connection.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{SpeechChunk, SpeechStream, SpeechSynthesizer, TtsError};
use crate::error::ErrorKind;
use crate::net::{ApiKey, http_client, insecure_remote, retry_after};

/// Sample rate of OpenAI's `pcm` format.
pub const OPENAI_PCM_RATE: u32 = 24000;

/// An OpenAI-compatible speech endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiSpeech {
    client: reqwest::Client,
    base_url: String,
    model: String,
    voice: String,
    api_key: Option<ApiKey>,
    key_env: String,
}

fn error(kind: ErrorKind, message: impl Into<String>) -> TtsError {
    TtsError::new("openai-speech", kind, message)
}

impl OpenAiSpeech {
    /// `model` (e.g. `gpt-4o-mini-tts`) speaking with `voice` (e.g. `alloy`) at `base_url`.
    ///
    /// # Errors
    /// [`TtsError`] for plain HTTP to another machine or when the HTTP client cannot be built.
    pub fn new(
        base_url: &str,
        model: &str,
        voice: &str,
        api_key: Option<ApiKey>,
        key_env: &str,
    ) -> Result<Self, TtsError> {
        if insecure_remote(base_url) {
            return Err(error(
                ErrorKind::BadRequest,
                format!("refusing plain http to a remote host ({base_url}): use https"),
            ));
        }
        Ok(Self {
            client: http_client(Duration::from_secs(5))
                .map_err(|e| error(ErrorKind::BadRequest, e))?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            voice: voice.to_owned(),
            api_key,
            key_env: key_env.to_owned(),
        })
    }
}

#[async_trait]
impl SpeechSynthesizer for OpenAiSpeech {
    fn name(&self) -> &str {
        "openai-speech"
    }

    fn sample_rate(&self) -> u32 {
        OPENAI_PCM_RATE
    }

    async fn synthesize(&self, text: &str) -> Result<SpeechStream, TtsError> {
        let body = serde_json::json!({
            "model": self.model,
            "input": text,
            "voice": self.voice,
            "response_format": "pcm",
        });
        let mut request = self
            .client
            .post(format!("{}/audio/speech", self.base_url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| crate::net::http_error("openai-speech", &e))?;
        let status = response.status().as_u16();
        if status != 200 {
            let retry_after = retry_after(response.headers());
            let detail: String = crate::net::error_body(response)
                .await
                .chars()
                .take(300)
                .collect();
            return Err(TtsError::http(
                "openai-speech",
                status,
                retry_after,
                match status {
                    401 | 403 => format!("http {status}: check {} ({detail})", self.key_env),
                    _ => format!("http {status}: {detail}"),
                },
            ));
        }
        let body = response.bytes_stream();
        // An odd byte at a chunk boundary waits for its partner.
        let stream = futures_util::stream::unfold(
            (Box::pin(body), None::<u8>),
            |(mut body, mut carry)| async move {
                loop {
                    match body.next().await {
                        None => return None,
                        Some(Err(e)) => {
                            return Some((
                                Err(error(
                                    ErrorKind::StreamBroken,
                                    format!(
                                        "audio stream broke off: {}",
                                        crate::net::describe_http_error(&e)
                                    ),
                                )),
                                (body, None),
                            ));
                        }
                        Some(Ok(bytes)) => {
                            let mut data: Vec<u8> = carry.take().into_iter().collect();
                            data.extend_from_slice(&bytes);
                            if data.len() % 2 == 1 {
                                carry = data.pop();
                            }
                            if data.is_empty() {
                                continue;
                            }
                            return Some((Ok(SpeechChunk::from_pcm16(&data)), (body, carry)));
                        }
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }
}
