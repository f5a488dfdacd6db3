//! Anthropic Messages API, streamed over server-sent events.
//!
//! Wire format (Anthropic API reference, "Messages" and "Streaming Messages"): `POST
//! {base_url}/v1/messages` with `x-api-key`, `anthropic-version: 2023-06-01` and
//! `"stream": true`; named events `message_start` (input token usage), `content_block_start`
//! (a `text` or `tool_use` block), `content_block_delta` (`text_delta` or `input_json_delta`
//! with `partial_json`), `content_block_stop`, `message_delta` (`stop_reason`, output usage),
//! `message_stop`, `ping`, and `error`. The system prompt is a top-level field; tool results go
//! back as `tool_result` blocks in a user message; roles must alternate, so consecutive
//! messages of one role are merged.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::openai::{Finished, StreamFault, ToolBudget, check_status, decode_sse, tool_arguments};
use super::sse::SseEvent;
use super::{LanguageModel, LlmChunk, LlmError, LlmRequest, LlmStream, Message, ToolCall, Usage};
use crate::error::ErrorKind;
use crate::net::{ApiKey, http_client, insecure_remote, secret_header};

/// The environment variable holding the key.
pub const ANTHROPIC_API_KEY_ENV: &str = "ANTHROPIC_API_KEY";
/// Where Anthropic serves the API.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
const API_VERSION: &str = "2023-06-01";

/// An Anthropic model.
#[derive(Debug, Clone)]
pub struct Anthropic {
    client: reqwest::Client,
    base_url: String,
    model: String,
    api_key: ApiKey,
    /// Cap on generated tokens (required by the API).
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: Option<f64>,
}

impl Anthropic {
    /// A model at `base_url` (normally [`ANTHROPIC_BASE_URL`]).
    ///
    /// # Errors
    /// [`LlmError`] for plain HTTP to another machine, or when the HTTP client cannot
    /// be built.
    pub fn new(
        base_url: impl Into<String>,
        model: impl Into<String>,
        api_key: ApiKey,
    ) -> Result<Self, LlmError> {
        let base_url: String = base_url.into();
        let provider_error =
            |message: String| LlmError::new("anthropic", ErrorKind::BadRequest, message);
        if insecure_remote(&base_url) {
            return Err(provider_error(format!(
                "refusing plain http to a remote host ({base_url}): use https"
            )));
        }
        Ok(Self {
            client: http_client(Duration::from_secs(5)).map_err(provider_error)?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.into(),
            api_key,
            max_tokens: 1024,
            temperature: None,
        })
    }

    /// The request body for `request`.
    pub fn body(&self, request: &LlmRequest) -> Value {
        let mut system = Vec::new();
        let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
        let push =
            |role: &'static str, block: Value, turns: &mut Vec<(&str, Vec<Value>)>| match turns
                .last_mut()
            {
                Some((r, blocks)) if *r == role => blocks.push(block),
                _ => turns.push((role, vec![block])),
            };
        for m in &request.messages {
            match m {
                Message::System { content } => system.push(content.clone()),
                Message::User { content } => {
                    push("user", json!({"type": "text", "text": content}), &mut turns)
                }
                Message::Assistant {
                    content,
                    tool_calls,
                    ..
                } => {
                    if !content.is_empty() {
                        push(
                            "assistant",
                            json!({"type": "text", "text": content}),
                            &mut turns,
                        );
                    }
                    for c in tool_calls {
                        push(
                            "assistant",
                            // The API takes only an object; a call whose arguments were not
                            // JSON was answered with that error and never made.
                            json!({"type": "tool_use", "id": c.id, "name": c.name,
                                "input": if c.arguments.is_object() { c.arguments.clone() } else { json!({}) }}),
                            &mut turns,
                        );
                    }
                }
                Message::Tool { call_id, content } => push(
                    "user",
                    json!({"type": "tool_result", "tool_use_id": call_id, "content": content}),
                    &mut turns,
                ),
            }
        }
        let messages: Vec<Value> = turns
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect();
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": messages,
            "stream": true,
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
                .collect();
        }
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        body
    }
}

#[derive(Default)]
struct ToolBlock {
    id: String,
    name: String,
    json: String,
}

/// Turns Anthropic stream events into [`LlmChunk`]s.
#[derive(Default)]
pub(crate) struct EventDecoder {
    tools: BTreeMap<u64, ToolBlock>,
    budget: ToolBudget,
    input_tokens: u64,
    finished: bool,
}

impl Finished for EventDecoder {
    fn finished(&self) -> bool {
        self.finished
    }
}

impl EventDecoder {
    /// Decodes one event.
    ///
    /// # Errors
    /// A message naming what is malformed, or the provider's error event.
    pub(crate) fn decode(&mut self, event: &SseEvent) -> Result<Vec<LlmChunk>, StreamFault> {
        let name = event.event.as_deref().unwrap_or("");
        if name == "ping" {
            return Ok(Vec::new());
        }
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|e| format!("malformed {name} event ({e}): {}", event.data))?;
        let kind = data["type"].as_str().unwrap_or(name);
        let index = data["index"].as_u64().unwrap_or(0);
        Ok(match kind {
            "message_start" => {
                self.input_tokens = data["message"]["usage"]["input_tokens"]
                    .as_u64()
                    .unwrap_or(0);
                Vec::new()
            }
            "content_block_start" => {
                let block = &data["content_block"];
                if block["type"] == "tool_use" {
                    let id = block["id"].as_str().unwrap_or_default();
                    let name = block["name"].as_str().unwrap_or_default();
                    let open = self.tools.len() + usize::from(!self.tools.contains_key(&index));
                    self.budget.take(open, id.len() + name.len())?;
                    self.tools.insert(
                        index,
                        ToolBlock {
                            id: id.to_owned(),
                            name: name.to_owned(),
                            json: String::new(),
                        },
                    );
                }
                match block["text"].as_str() {
                    Some(text) if !text.is_empty() => vec![LlmChunk::Text(text.to_owned())],
                    _ => Vec::new(),
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        vec![LlmChunk::Text(
                            delta["text"].as_str().unwrap_or_default().to_owned(),
                        )]
                    }
                    Some("input_json_delta") => {
                        let open = self.tools.len();
                        let block = self.tools.get_mut(&index).ok_or_else(|| {
                            format!("input_json_delta for block {index}, which is not a tool_use")
                        })?;
                        let piece = delta["partial_json"].as_str().unwrap_or_default();
                        self.budget.take(open, piece.len())?;
                        block.json.push_str(piece);
                        Vec::new()
                    }
                    _ => Vec::new(),
                }
            }
            "content_block_stop" => match self.tools.remove(&index) {
                Some(block) => {
                    let input = tool_arguments(&block.name, &block.json);
                    vec![LlmChunk::ToolCall(ToolCall {
                        id: block.id,
                        name: block.name,
                        arguments: input,
                    })]
                }
                None => Vec::new(),
            },
            "message_delta" => vec![LlmChunk::Usage(Usage {
                input_tokens: self.input_tokens,
                output_tokens: data["usage"]["output_tokens"].as_u64().unwrap_or(0),
            })],
            "message_stop" => {
                self.finished = true;
                vec![LlmChunk::End {
                    finish_reason: None,
                }]
            }
            "error" => return Err(StreamFault::event(&data["error"])),
            _ => Vec::new(),
        })
    }
}

#[async_trait]
impl LanguageModel for Anthropic {
    fn name(&self) -> &str {
        "anthropic"
    }

    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, LlmError> {
        let key = secret_header(self.api_key.expose()).ok_or_else(|| {
            LlmError::new(
                "anthropic",
                ErrorKind::Auth,
                format!("{ANTHROPIC_API_KEY_ENV} has characters an http header cannot carry"),
            )
        })?;
        let response = self
            .client
            .post(format!("{}/v1/messages", self.base_url))
            .header("x-api-key", key)
            .header("anthropic-version", API_VERSION)
            .header("content-type", "application/json")
            .body(self.body(&request).to_string())
            .send()
            .await
            .map_err(|e| crate::net::http_error("anthropic", &e))?;
        let response = check_status(response, "anthropic", ANTHROPIC_API_KEY_ENV).await?;
        Ok(decode_sse(
            "anthropic".into(),
            response.bytes_stream(),
            EventDecoder::decode,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent {
            event: Some(name.into()),
            data: data.into(),
        }
    }

    #[test]
    fn tool_input_past_the_limit_ends_the_stream() {
        let mut d = EventDecoder::default();
        d.decode(&event(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
        ))
        .unwrap();
        let piece = format!(
            r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"input_json_delta","partial_json":"{}"}}}}"#,
            "x".repeat(1000)
        );
        let mut taken = 0;
        let error = loop {
            match d.decode(&event("content_block_delta", &piece)) {
                Ok(out) => assert!(out.is_empty()),
                Err(e) => break e,
            }
            taken += 1;
            assert!(taken < 300, "{taken} pieces taken");
        };
        assert_eq!(
            error.message,
            "tool calls grew past 262144 bytes in one reply"
        );
        assert!(taken >= 250, "refused after {taken} pieces");
    }

    #[test]
    fn text_tool_use_usage_and_stop() {
        let mut d = EventDecoder::default();
        let events = [
            event(
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","usage":{"input_tokens":25,"output_tokens":1}}}"#,
            ),
            event(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            event("ping", r#"{"type":"ping"}"#),
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}"#,
            ),
            event(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            event(
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"book_table","input":{}}}"#,
            ),
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"people\""}}"#,
            ),
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":": 2}"}}"#,
            ),
            event(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
            event(
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":31}}"#,
            ),
            event("message_stop", r#"{"type":"message_stop"}"#),
        ];
        let chunks: Vec<LlmChunk> = events.iter().flat_map(|e| d.decode(e).unwrap()).collect();
        assert_eq!(
            chunks,
            vec![
                LlmChunk::Text("Let me check.".into()),
                LlmChunk::ToolCall(ToolCall {
                    id: "toolu_1".into(),
                    name: "book_table".into(),
                    arguments: json!({"people": 2})
                }),
                LlmChunk::Usage(Usage {
                    input_tokens: 25,
                    output_tokens: 31
                }),
                LlmChunk::End {
                    finish_reason: None
                },
            ]
        );
        assert!(d.finished());
    }

    #[test]
    fn error_events_and_malformed_data() {
        let mut d = EventDecoder::default();
        let e = d
            .decode(&event(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ))
            .unwrap_err();
        assert!(e.message.contains("Overloaded"));
        assert_eq!(e.kind, ErrorKind::Server, "overloaded is worth a retry");
        let broken = d
            .decode(&event("content_block_delta", "{oops"))
            .unwrap_err();
        assert!(broken.message.contains("malformed"));
        assert_eq!(broken.kind, ErrorKind::StreamBroken);
        let limited = d
            .decode(&event(
                "error",
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#,
            ))
            .unwrap_err();
        assert!(matches!(limited.kind, ErrorKind::RateLimited { .. }));
    }

    #[test]
    fn malformed_tool_input_is_kept_as_text_and_sent_back_as_an_empty_object() {
        let mut d = EventDecoder::default();
        let mut out = Vec::new();
        for (name, data) in [
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"book_table","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"people\": 4,"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
        ] {
            out.extend(d.decode(&event(name, data)).unwrap());
        }
        let call = match &out[..] {
            [LlmChunk::ToolCall(call)] => call.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(call.arguments, json!("{\"people\": 4,"));
        let m = Anthropic::new("http://127.0.0.1:9", "claude-x", ApiKey::new("k")).unwrap();
        let body = m.body(&LlmRequest {
            messages: vec![
                Message::user("book it"),
                Message::Assistant {
                    content: String::new(),
                    interrupted: false,
                    tool_calls: vec![call],
                },
                Message::Tool {
                    call_id: "toolu_1".into(),
                    content: "error: the call was not made".into(),
                },
            ],
            tools: vec![],
        });
        assert_eq!(body["messages"][1]["content"][0]["input"], json!({}));
        assert_eq!(body["messages"][2]["content"][0]["tool_use_id"], "toolu_1");
    }

    #[test]
    fn body_hoists_the_system_prompt_and_merges_roles() {
        let m = Anthropic::new("http://127.0.0.1:9", "claude-x", ApiKey::new("k")).unwrap();
        let body = m.body(&LlmRequest {
            messages: vec![
                Message::System {
                    content: "be brief".into(),
                },
                Message::user("book it"),
                Message::Assistant {
                    content: "On it.".into(),
                    interrupted: false,
                    tool_calls: vec![ToolCall {
                        id: "t1".into(),
                        name: "book".into(),
                        arguments: json!({"n": 2}),
                    }],
                },
                Message::Tool {
                    call_id: "t1".into(),
                    content: "booked".into(),
                },
            ],
            tools: vec![],
        });
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["max_tokens"], 1024);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1]["content"][1]["type"], "tool_use");
        assert_eq!(messages[2]["content"][0]["type"], "tool_result");
        assert!(Anthropic::new("http://example.com", "c", ApiKey::new("k")).is_err());
    }
}
