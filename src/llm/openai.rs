//! OpenAI-compatible chat completions, streamed over server-sent events.
//!
//! One client for every server speaking `POST {base_url}/chat/completions` with
//! `"stream": true`: OpenAI, Groq, Together, vLLM, llama.cpp's server, Ollama, LM Studio.
//! Wire format (OpenAI API reference, "Create chat completion" and "The chat completion chunk
//! object"): each `data:` line holds a `chat.completion.chunk` whose `choices[0].delta` carries
//! `content` text or `tool_calls` fragments (`index`, then `id` and `function.name` once, then
//! `function.arguments` in pieces); `finish_reason` closes the choice; with
//! `stream_options.include_usage` a last chunk with empty `choices` carries `usage`; the stream
//! ends with `data: [DONE]`. Parallel calls interleave by `index`; empty arguments mean `{}`.
//! Compatible servers that bend the format still give every call: a reused `index` with a new
//! `id` (every call numbered 0), no `index` at all, arguments as an object instead of JSON
//! text. Arguments that are not JSON are not fatal: the engine answers that call with what
//! was wrong.
//!
//! Dropping the returned stream drops the HTTP response, which closes the connection: the
//! provider stops generating (and billing) at once.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::sse::SseParser;
use super::{LanguageModel, LlmChunk, LlmError, LlmRequest, LlmStream, Message, ToolCall, Usage};
use crate::error::ErrorKind;
use crate::net::{ApiKey, http_client, insecure_remote};

/// The environment variable holding the key, by default.
pub const OPENAI_API_KEY_ENV: &str = "OPENAI_API_KEY";

/// An OpenAI-compatible chat model.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    client: reqwest::Client,
    base_url: String,
    model: String,
    api_key: Option<ApiKey>,
    key_env: String,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Cap on generated tokens.
    pub max_tokens: Option<u32>,
    /// Extra body fields for servers with their own options (e.g. `{"top_k": 20}`).
    pub extra_body: serde_json::Map<String, Value>,
}

impl OpenAiCompatible {
    /// A model at `base_url` (e.g. `https://api.openai.com/v1`), authenticated with `api_key`
    /// when given. `key_env` names where the key came from, for error messages.
    ///
    /// # Errors
    /// [`LlmError`] for a plain-HTTP URL to another machine (keys would travel in
    /// clear; use [`OpenAiCompatible::allow_insecure`] to accept that), or when the HTTP client
    /// cannot be built.
    pub fn new(
        base_url: impl Into<String>,
        model: impl Into<String>,
        api_key: Option<ApiKey>,
        key_env: impl Into<String>,
    ) -> Result<Self, LlmError> {
        Self::build(
            base_url.into(),
            model.into(),
            api_key,
            key_env.into(),
            false,
        )
    }

    /// Like [`OpenAiCompatible::new`], accepting plain HTTP to another machine.
    ///
    /// # Errors
    /// [`LlmError`] when the HTTP client cannot be built.
    pub fn allow_insecure(
        base_url: impl Into<String>,
        model: impl Into<String>,
        api_key: Option<ApiKey>,
        key_env: impl Into<String>,
    ) -> Result<Self, LlmError> {
        Self::build(base_url.into(), model.into(), api_key, key_env.into(), true)
    }

    fn build(
        base_url: String,
        model: String,
        api_key: Option<ApiKey>,
        key_env: String,
        insecure_ok: bool,
    ) -> Result<Self, LlmError> {
        let provider_error =
            |message: String| LlmError::new("openai-compatible", ErrorKind::BadRequest, message);
        if !insecure_ok && insecure_remote(&base_url) {
            return Err(provider_error(format!(
                "refusing plain http to a remote host ({base_url}): use https, or allow it explicitly"
            )));
        }
        Ok(Self {
            client: http_client(Duration::from_secs(5)).map_err(provider_error)?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            model,
            api_key,
            key_env,
            temperature: None,
            max_tokens: None,
            extra_body: serde_json::Map::new(),
        })
    }

    /// The request body for `request`.
    pub fn body(&self, request: &LlmRequest) -> Value {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| match m {
                Message::System { content } => json!({"role": "system", "content": content}),
                Message::User { content } => json!({"role": "user", "content": content}),
                Message::Assistant {
                    content,
                    tool_calls,
                    ..
                } => {
                    let mut m = json!({"role": "assistant", "content": content});
                    if !tool_calls.is_empty() {
                        m["tool_calls"] = tool_calls
                            .iter()
                            .map(|c| {
                                json!({"id": c.id, "type": "function", "function": {
                                    "name": c.name, "arguments": arguments_text(&c.arguments)}})
                            })
                            .collect();
                    }
                    m
                }
                Message::Tool { call_id, content } => {
                    json!({"role": "tool", "tool_call_id": call_id, "content": content})
                }
            })
            .collect();
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters}})
                })
                .collect();
        }
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = self.max_tokens {
            body["max_tokens"] = json!(m);
        }
        for (k, v) in &self.extra_body {
            body[k] = v.clone();
        }
        body
    }
}

/// Passes a 200 response through; maps any other status to an error a person can act on:
/// 401/403 name the key's environment variable, 429 carries `retry-after` and the provider's
/// message.
///
/// # Errors
/// [`LlmError`] for every status but 200.
pub(crate) async fn check_status(
    response: reqwest::Response,
    provider: &str,
    key_env: &str,
) -> Result<reqwest::Response, LlmError> {
    let status = response.status().as_u16();
    if status == 200 {
        return Ok(response);
    }
    let retry_after = crate::net::retry_after(response.headers());
    let body = crate::net::error_body(response).await;
    Err(status_error(provider, status, key_env, retry_after, &body))
}

/// The error for an HTTP status (see [`check_status`]).
pub(crate) fn status_error(
    provider: &str,
    status: u16,
    key_env: &str,
    retry_after: Option<Duration>,
    body: &str,
) -> LlmError {
    let detail: String = body.chars().take(300).collect();
    let message = match status {
        401 | 403 => format!("http {status}: check {key_env} ({detail})"),
        429 => format!(
            "http 429 rate limited{}: {detail}",
            retry_after
                .map(|r| format!(", retry after {} s", r.as_secs_f64()))
                .unwrap_or_default()
        ),
        _ => format!("http {status}: {detail}"),
    };
    LlmError::http(provider, status, retry_after, message)
}

/// Why a streamed reply cannot go on: malformed data (the stream is broken) or an error event
/// from the provider, with the kind its type names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamFault {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl StreamFault {
    /// An error event's body (`{"type": ..., "message": ...}` in both OpenAI's and Anthropic's
    /// spelling), its kind read from the type or code.
    pub(crate) fn event(error: &Value) -> Self {
        let label = [error.get("type"), error.get("code")]
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        let kind = if label.contains("rate_limit") || label.contains("quota") {
            ErrorKind::RateLimited { retry_after: None }
        } else if label.contains("auth")
            || label.contains("api_key")
            || label.contains("permission")
        {
            ErrorKind::Auth
        } else if label.contains("invalid_request") || label.contains("not_found") {
            ErrorKind::BadRequest
        } else if label.contains("overloaded")
            || label.contains("server")
            || label.contains("api_error")
        {
            ErrorKind::Server
        } else {
            ErrorKind::StreamBroken
        };
        Self {
            kind,
            message: format!("error event: {error}"),
        }
    }
}

impl From<String> for StreamFault {
    fn from(message: String) -> Self {
        Self {
            kind: ErrorKind::StreamBroken,
            message,
        }
    }
}

impl From<&str> for StreamFault {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// The most one reply's tool calls may hold, names and arguments of every call together: a
/// model's calls are small, and one that streams arguments without end must not take the
/// process's memory with it.
pub(crate) const TOOL_CALL_BYTES: usize = 256 * 1024;
/// The most tool calls one reply may make.
pub(crate) const TOOL_CALLS: usize = 64;

/// What one reply's tool calls have taken of [`TOOL_CALL_BYTES`].
#[derive(Default)]
pub(crate) struct ToolBudget {
    bytes: usize,
}

impl ToolBudget {
    /// Counts `bytes` more of tool calls, `calls` of them open.
    ///
    /// # Errors
    /// Which limit the reply went past.
    pub(crate) fn take(&mut self, calls: usize, bytes: usize) -> Result<(), String> {
        if calls > TOOL_CALLS {
            return Err(format!("more than {TOOL_CALLS} tool calls in one reply"));
        }
        self.bytes += bytes;
        if self.bytes > TOOL_CALL_BYTES {
            return Err(format!(
                "tool calls grew past {TOOL_CALL_BYTES} bytes in one reply"
            ));
        }
        Ok(())
    }
}

/// Parses the streamed JSON arguments of a tool call (empty means `{}`). Arguments that are
/// not JSON (a model's slip, a stream cut at its length limit) are kept as the raw text, a
/// JSON string: the engine answers such a call with what was wrong instead of making it, and
/// the conversation goes on.
pub(crate) fn tool_arguments(name: &str, text: &str) -> serde_json::Value {
    if text.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(tool = %crate::text::Untrusted(name), "the model's tool call has malformed arguments: {e}");
        Value::String(text.to_owned())
    })
}

/// A tool call's arguments as a provider takes them back in the history: the JSON text, or
/// the raw text the model sent when it was not JSON.
pub(crate) fn arguments_text(arguments: &Value) -> String {
    match arguments {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Turns OpenAI chunk JSON into [`LlmChunk`]s, assembling streamed tool calls.
#[derive(Default)]
pub(crate) struct ChunkDecoder {
    calls: BTreeMap<u64, PartialCall>,
    /// Added to the server's `index` once it has reused one for a new call.
    renumbered: u64,
    budget: ToolBudget,
    finished: bool,
}

impl ChunkDecoder {
    /// Decodes one `data:` payload.
    ///
    /// # Errors
    /// A message naming what is malformed.
    pub(crate) fn decode(&mut self, data: &str) -> Result<Vec<LlmChunk>, StreamFault> {
        if data.trim() == "[DONE]" {
            self.finished = true;
            let mut out = self.flush_calls()?;
            out.push(LlmChunk::End {
                finish_reason: None,
            });
            return Ok(out);
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| format!("malformed chunk ({e}): {data}"))?;
        if let Some(error) = chunk.get("error") {
            return Err(StreamFault::event(error));
        }
        let mut out = Vec::new();
        if let Some(choice) = chunk["choices"].get(0) {
            let delta = &choice["delta"];
            if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                out.push(LlmChunk::Text(text.to_owned()));
            }
            for fragment in delta["tool_calls"].as_array().into_iter().flatten() {
                let id = fragment["id"].as_str().filter(|id| !id.is_empty());
                let name = fragment["function"]["name"].as_str();
                // Some compatible servers send the arguments as an object, not as JSON text.
                let object_args = match &fragment["function"]["arguments"] {
                    Value::Object(_) => Some(fragment["function"]["arguments"].to_string()),
                    _ => None,
                };
                let args = fragment["function"]["arguments"]
                    .as_str()
                    .or(object_args.as_deref());
                let index = self.slot(fragment["index"].as_u64(), id);
                let open = self.calls.len() + usize::from(!self.calls.contains_key(&index));
                let bytes = [id, name, args].iter().flatten().map(|s| s.len()).sum();
                self.budget.take(open, bytes)?;
                let call = self.calls.entry(index).or_default();
                if let Some(id) = id {
                    call.id = id.to_owned();
                }
                if let Some(name) = name {
                    call.name.push_str(name);
                }
                if let Some(args) = args {
                    call.arguments.push_str(args);
                }
            }
            if !choice["finish_reason"].is_null() {
                out.extend(self.flush_calls()?);
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            out.push(LlmChunk::Usage(Usage {
                input_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
                output_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
            }));
        }
        Ok(out)
    }

    /// Where a fragment belongs. By its `index`, as OpenAI sends it, except that a fragment
    /// with a new `id` at an index already used starts a new call (servers that number every
    /// parallel call 0); without an `index` (servers that stream one call at a time), a
    /// fragment with an `id` starts a new call and one without continues the last.
    fn slot(&mut self, index: Option<u64>, id: Option<&str>) -> u64 {
        let last = self.calls.keys().next_back().copied();
        match (index, id) {
            (Some(index), Some(id))
                if self
                    .calls
                    .get(&(index + self.renumbered))
                    .is_some_and(|c| !c.id.is_empty() && c.id != id) =>
            {
                self.renumbered = last.map_or(0, |l| l + 1) - index;
                index + self.renumbered
            }
            (Some(index), _) => index + self.renumbered,
            (None, Some(_)) => last.map_or(0, |l| l + 1),
            (None, None) => last.unwrap_or(0),
        }
    }

    fn flush_calls(&mut self) -> Result<Vec<LlmChunk>, StreamFault> {
        self.renumbered = 0;
        Ok(std::mem::take(&mut self.calls)
            .into_values()
            .map(|c| {
                LlmChunk::ToolCall(ToolCall {
                    arguments: tool_arguments(&c.name, &c.arguments),
                    id: c.id,
                    name: c.name,
                })
            })
            .collect())
    }
}

#[async_trait]
impl LanguageModel for OpenAiCompatible {
    fn name(&self) -> &str {
        "openai-compatible"
    }

    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, LlmError> {
        let mut http = self
            .client
            .post(format!("{}/chat/completions", self.base_url))
            .header("content-type", "application/json")
            .body(self.body(&request).to_string());
        if let Some(key) = &self.api_key {
            http = http.bearer_auth(key.expose());
        }
        let provider = self.name().to_owned();
        let response = http
            .send()
            .await
            .map_err(|e| crate::net::http_error(&provider, &e))?;
        let response = check_status(response, &provider, &self.key_env).await?;
        Ok(decode_sse(
            provider,
            response.bytes_stream(),
            |decoder: &mut ChunkDecoder, e| decoder.decode(&e.data),
        ))
    }
}

/// Runs an SSE body through `decode`, ending with an error when the body breaks off.
pub(crate) fn decode_sse<D, S, B>(
    provider: String,
    body: S,
    decode: fn(&mut D, &super::sse::SseEvent) -> Result<Vec<LlmChunk>, StreamFault>,
) -> LlmStream
where
    D: Default + Finished + Send + 'static,
    S: futures_util::Stream<Item = Result<B, reqwest::Error>> + Send + 'static,
    B: AsRef<[u8]> + Send + 'static,
{
    struct State<D, S> {
        body: std::pin::Pin<Box<S>>,
        parser: SseParser,
        decoder: D,
        queue: std::collections::VecDeque<Result<LlmChunk, LlmError>>,
        done: bool,
    }
    let state = State {
        body: Box::pin(body),
        parser: SseParser::default(),
        decoder: D::default(),
        queue: Default::default(),
        done: false,
    };
    let stream = futures_util::stream::unfold(state, move |mut s| {
        let provider = provider.clone();
        async move {
            loop {
                if let Some(item) = s.queue.pop_front() {
                    return Some((item, s));
                }
                if s.done {
                    return None;
                }
                let stream_error = |message: String| {
                    LlmError::new(provider.clone(), ErrorKind::StreamBroken, message)
                };
                match s.body.next().await {
                    Some(Ok(bytes)) => {
                        let events = match s.parser.push(bytes.as_ref()) {
                            Ok(events) => events,
                            Err(e) => {
                                s.queue.push_back(Err(stream_error(e.to_string())));
                                s.done = true;
                                continue;
                            }
                        };
                        for event in events {
                            match decode(&mut s.decoder, &event) {
                                Ok(chunks) => s.queue.extend(chunks.into_iter().map(Ok)),
                                Err(fault) => {
                                    s.queue.push_back(Err(LlmError::new(
                                        provider.clone(),
                                        fault.kind,
                                        fault.message,
                                    )));
                                    s.done = true;
                                    break;
                                }
                            }
                            if s.decoder.finished() {
                                s.done = true;
                                break;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        s.queue.push_back(Err(stream_error(format!(
                            "connection failed: {}",
                            crate::net::describe_http_error(&e)
                        ))));
                        s.done = true;
                    }
                    None => {
                        s.done = true;
                        if !s.decoder.finished() {
                            s.queue.push_back(Err(stream_error(
                                "the stream ended before its end marker (truncated)".into(),
                            )));
                        }
                    }
                }
            }
        }
    });
    Box::pin(stream)
}

/// A decoder that knows when its stream is complete.
pub(crate) trait Finished {
    fn finished(&self) -> bool;
}

impl Finished for ChunkDecoder {
    fn finished(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_usage_and_done() {
        let mut d = ChunkDecoder::default();
        assert_eq!(
            d.decode(r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#).unwrap(),
            vec![LlmChunk::Text("Hi".into())]
        );
        assert_eq!(
            d.decode(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#)
                .unwrap(),
            vec![]
        );
        assert_eq!(
            d.decode(r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#).unwrap(),
            vec![LlmChunk::Usage(Usage { input_tokens: 12, output_tokens: 3 })]
        );
        assert_eq!(
            d.decode("[DONE]").unwrap(),
            vec![LlmChunk::End {
                finish_reason: None
            }]
        );
        assert!(d.finished());
    }

    #[test]
    fn tool_calls_are_assembled_from_fragments() {
        let mut d = ChunkDecoder::default();
        for data in [
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"book_table","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"peo"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ple\": 4}"}}]},"finish_reason":null}]}"#,
        ] {
            assert!(d.decode(data).unwrap().is_empty());
        }
        let out = d
            .decode(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#)
            .unwrap();
        assert_eq!(
            out,
            vec![LlmChunk::ToolCall(ToolCall {
                id: "call_1".into(),
                name: "book_table".into(),
                arguments: json!({"people": 4})
            })]
        );
    }

    /// The calls a stream of `fragments` (each a `delta.tool_calls` array) assembles, as
    /// (id, name, arguments), once `finish_reason` arrives.
    fn assembled(fragments: &[&str]) -> Vec<(String, String, Value)> {
        let mut d = ChunkDecoder::default();
        for tool_calls in fragments {
            let data = format!(
                r#"{{"choices":[{{"index":0,"delta":{{"tool_calls":{tool_calls}}},"finish_reason":null}}]}}"#
            );
            assert!(d.decode(&data).unwrap().is_empty(), "{data}");
        }
        d.decode(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#)
            .unwrap()
            .into_iter()
            .map(|chunk| match chunk {
                LlmChunk::ToolCall(c) => (c.id, c.name, c.arguments),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn parallel_calls_interleave_by_index_and_empty_arguments_mean_none() {
        let calls = assembled(&[
            r#"[{"index":0,"id":"a","type":"function","function":{"name":"check_availability","arguments":""}}]"#,
            r#"[{"index":1,"id":"b","type":"function","function":{"name":"end_call","arguments":""}}]"#,
            r#"[{"index":0,"function":{"arguments":"{\"people\":"}}]"#,
            r#"[{"index":0,"function":{"arguments":"2}"}}]"#,
        ]);
        assert_eq!(
            calls,
            [
                (
                    "a".into(),
                    "check_availability".into(),
                    json!({"people": 2})
                ),
                ("b".into(), "end_call".into(), json!({})),
            ]
        );
    }

    #[test]
    fn servers_that_bend_the_format_still_give_every_call() {
        // Every parallel call numbered 0, told apart by id (Ollama), arguments as an object.
        let reused = assembled(&[
            r#"[{"index":0,"id":"a","function":{"name":"f","arguments":{"x":1}}}]"#,
            r#"[{"index":0,"id":"b","function":{"name":"g","arguments":{"y":2}}}]"#,
        ]);
        assert_eq!(
            reused,
            [
                ("a".into(), "f".into(), json!({"x": 1})),
                ("b".into(), "g".into(), json!({"y": 2})),
            ]
        );
        // No index at all (one call at a time): an id starts a call, the rest continue it.
        let unnumbered = assembled(&[
            r#"[{"id":"a","function":{"name":"f","arguments":"{\"x\""}}]"#,
            r#"[{"function":{"arguments":": 1}"}}]"#,
            r#"[{"id":"b","function":{"name":"g","arguments":""}}]"#,
        ]);
        assert_eq!(
            unnumbered,
            [
                ("a".into(), "f".into(), json!({"x": 1})),
                ("b".into(), "g".into(), json!({})),
            ]
        );
    }

    #[test]
    fn malformed_arguments_are_kept_as_text_not_fatal() {
        let calls = assembled(&[
            r#"[{"index":0,"id":"a","function":{"name":"f","arguments":"{\"x\": 1"}}]"#,
        ]);
        assert_eq!(calls, [("a".into(), "f".into(), json!("{\"x\": 1"))]);
        assert_eq!(arguments_text(&calls[0].2), r#"{"x": 1"#);
        assert_eq!(arguments_text(&json!({"x": 1})), r#"{"x":1}"#);
    }

    #[test]
    fn tool_calls_past_the_limits_end_the_stream() {
        let fragment = |index: usize, args: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":{index},"function":{{"name":"f","arguments":"{args}"}}}}]}},"finish_reason":null}}]}}"#
            )
        };
        let mut d = ChunkDecoder::default();
        let piece = "x".repeat(1000);
        let mut taken = 0;
        let error = loop {
            match d.decode(&fragment(0, &piece)) {
                Ok(out) => assert!(out.is_empty()),
                Err(e) => break e,
            }
            taken += 1;
            assert!(taken < 300, "{taken} fragments taken");
        };
        assert_eq!(error.kind, ErrorKind::StreamBroken);
        assert_eq!(
            error.message,
            "tool calls grew past 262144 bytes in one reply"
        );
        assert!(taken >= 250, "refused after {taken} fragments");
        let mut d = ChunkDecoder::default();
        for index in 0..TOOL_CALLS {
            assert!(d.decode(&fragment(index, "{}")).unwrap().is_empty());
        }
        let error = d.decode(&fragment(TOOL_CALLS, "{}")).unwrap_err();
        assert_eq!(error.message, "more than 64 tool calls in one reply");
    }

    #[test]
    fn malformed_chunks_and_error_events_are_errors() {
        let mut d = ChunkDecoder::default();
        let malformed = d.decode("{not json").unwrap_err();
        assert!(malformed.message.contains("malformed chunk"));
        assert_eq!(malformed.kind, ErrorKind::StreamBroken);
        let event = d
            .decode(r#"{"error":{"message":"overloaded","type":"server_error"}}"#)
            .unwrap_err();
        assert!(event.message.contains("overloaded"));
        assert_eq!(event.kind, ErrorKind::Server);
    }

    #[test]
    fn request_body_maps_the_conversation() {
        let m = OpenAiCompatible::new(
            "http://127.0.0.1:1/v1",
            "gpt-4o-mini",
            None,
            OPENAI_API_KEY_ENV,
        )
        .unwrap();
        let body = m.body(&LlmRequest {
            messages: vec![
                Message::System {
                    content: "be brief".into(),
                },
                Message::user("book it"),
                Message::Assistant {
                    content: String::new(),
                    interrupted: false,
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "book".into(),
                        arguments: json!({"n": 2}),
                    }],
                },
                Message::Tool {
                    call_id: "c1".into(),
                    content: "ok".into(),
                },
            ],
            tools: vec![],
        });
        assert_eq!(body["stream"], true);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(
            body["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"n\":2}"
        );
        assert_eq!(body["messages"][3]["tool_call_id"], "c1");
        assert!(body.get("tools").is_none());
    }

    #[test]
    fn plain_http_is_refused_for_remote_hosts_only() {
        assert!(insecure_remote("http://example.com/v1"));
        assert!(insecure_remote("http://10.0.0.5:8000/v1"));
        assert!(!insecure_remote("http://127.0.0.1:8000/v1"));
        assert!(!insecure_remote("http://localhost:11434/v1"));
        assert!(!insecure_remote("https://api.openai.com/v1"));
        let e = OpenAiCompatible::new("http://example.com/v1", "m", None, "K").unwrap_err();
        assert!(e.to_string().contains("refusing plain http"));
        assert!(OpenAiCompatible::allow_insecure("http://example.com/v1", "m", None, "K").is_ok());
    }

    #[test]
    fn status_errors_say_what_to_do() {
        let e = status_error(
            "openai-compatible",
            401,
            "GROQ_API_KEY",
            None,
            "{\"error\":\"bad key\"}",
        );
        assert!(e.to_string().contains("check GROQ_API_KEY"));
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(!e.is_retryable());
        let e = status_error(
            "openai-compatible",
            429,
            "K",
            Some(Duration::from_secs(7)),
            "slow down",
        );
        assert!(e.to_string().contains("retry after 7 s") && e.to_string().contains("slow down"));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.is_retryable());
    }
}
