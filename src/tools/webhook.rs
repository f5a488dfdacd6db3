//! Tools served by a plain HTTP backend: the call's arguments go as a JSON body (`POST`, `PUT`)
//! or as query parameters (`GET`), and the response's body is what the model reads. A
//! non-success status is an error the model hears, with the start of the body. The tool's
//! effect is declared, not guessed: only a `read_only` webhook runs while a reply is a guess.
//! Secrets in headers come from the environment and never reach a log; a header over plain
//! `http://` to another host is refused.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::Value;

use crate::llm::{ToolCall, ToolEffect, ToolExecutor, ToolSpec};

/// The most of a response the model reads.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

/// How a webhook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Arguments as a JSON body.
    Post,
    /// Arguments as a JSON body.
    Put,
    /// Top-level arguments as query parameters.
    Get,
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "POST" => Ok(Method::Post),
            "PUT" => Ok(Method::Put),
            "GET" => Ok(Method::Get),
            _ => Err(format!("method {s:?}: expected POST, PUT or GET")),
        }
    }
}

/// Why a webhook tool cannot be set up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL is not http(s).
    #[error("webhook {tool}: url {url:?} is not an http:// or https:// URL")]
    Url {
        /// The tool.
        tool: String,
        /// Its URL.
        url: String,
    },
    /// Headers would travel unencrypted to another host.
    #[error(
        "webhook {tool}: headers (credentials) would travel unencrypted to {url}; use https:// or a service on this machine"
    )]
    Insecure {
        /// The tool.
        tool: String,
        /// Its URL.
        url: String,
    },
    /// The parameters are not a JSON Schema object.
    #[error("webhook {tool}: parameters must be a JSON Schema of type object")]
    Parameters {
        /// The tool.
        tool: String,
    },
    /// A header cannot be sent.
    #[error("webhook {tool}: header {name} cannot be sent ({reason})")]
    Header {
        /// The tool.
        tool: String,
        /// The header.
        name: String,
        /// Why, without its value.
        reason: String,
    },
    /// The HTTP client cannot be built.
    #[error("webhook {tool}: {reason}")]
    Client {
        /// The tool.
        tool: String,
        /// Why.
        reason: String,
    },
}

/// One tool behind an HTTP endpoint.
pub struct WebhookTool {
    spec: ToolSpec,
    url: String,
    method: Method,
    timeout: Duration,
    headers: reqwest::header::HeaderMap,
    client: reqwest::Client,
}

impl std::fmt::Debug for WebhookTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTool")
            .field("name", &self.spec.name)
            .field("url", &self.url)
            .field("method", &self.method)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebhookTool {
    /// The tool `spec` served at `url`, with `headers` (values already taken from the
    /// environment), each call bounded by `timeout`.
    ///
    /// # Errors
    /// [`WebhookError`] naming the tool and what cannot be used.
    pub fn new(
        spec: ToolSpec,
        url: &str,
        method: Method,
        timeout: Duration,
        headers: &[(String, String)],
    ) -> Result<Self, WebhookError> {
        let tool = spec.name.clone();
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https"))
            || crate::net::host_of(url).is_none_or(str::is_empty)
        {
            return Err(WebhookError::Url {
                tool,
                url: url.to_owned(),
            });
        }
        if !headers.is_empty() && crate::net::insecure_remote(url) {
            return Err(WebhookError::Insecure {
                tool,
                url: url.to_owned(),
            });
        }
        if spec.parameters.get("type").and_then(Value::as_str) != Some("object") {
            return Err(WebhookError::Parameters { tool });
        }
        let mut map = reqwest::header::HeaderMap::new();
        for (name, value) in headers {
            let header_name =
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    WebhookError::Header {
                        tool: tool.clone(),
                        name: name.clone(),
                        reason: "not a header name".into(),
                    }
                })?;
            let header_value =
                crate::net::secret_header(value).ok_or_else(|| WebhookError::Header {
                    tool: tool.clone(),
                    name: name.clone(),
                    reason: "its value has characters a header cannot carry".into(),
                })?;
            map.insert(header_name, header_value);
        }
        let client = crate::net::http_client(timeout).map_err(|reason| WebhookError::Client {
            tool: tool.clone(),
            reason,
        })?;
        Ok(Self {
            spec,
            url: url.to_owned(),
            method,
            timeout,
            headers: map,
            client,
        })
    }

    /// The effect a configuration spells `read_only` or `side_effecting`.
    ///
    /// # Errors
    /// What is allowed, for anything else.
    pub fn effect(spelled: &str) -> Result<ToolEffect, String> {
        match spelled {
            "read_only" => Ok(ToolEffect::Pure),
            "side_effecting" => Ok(ToolEffect::SideEffecting),
            other => Err(format!(
                "effect {other:?}: expected read_only (may run while a reply is a guess) or side_effecting"
            )),
        }
    }
}

/// `text` percent-encoded for a query string (everything but RFC 3986's unreserved set).
fn encode(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[async_trait]
impl ToolExecutor for WebhookTool {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![self.spec.clone()]
    }

    async fn call(&self, call: &ToolCall) -> Result<String, String> {
        let name = &self.spec.name;
        let request = match self.method {
            Method::Get => {
                let query: Vec<(String, String)> = call
                    .arguments
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), text)
                    })
                    .collect();
                let pairs: Vec<String> = query
                    .iter()
                    .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                    .collect();
                let joiner = if self.url.contains('?') { '&' } else { '?' };
                let url = if pairs.is_empty() {
                    self.url.clone()
                } else {
                    format!("{}{joiner}{}", self.url, pairs.join("&"))
                };
                self.client.get(url)
            }
            Method::Post | Method::Put => {
                let builder = if self.method == Method::Post {
                    self.client.post(&self.url)
                } else {
                    self.client.put(&self.url)
                };
                builder
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(call.arguments.to_string())
            }
        };
        let response = request
            .headers(self.headers.clone())
            .header("x-turnflow-tool-call", &call.id)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "{name} could not be reached: {}",
                    crate::net::describe_http_error(&e)
                )
            })?;
        let status = response.status();
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                format!(
                    "{name}'s answer broke off: {}",
                    crate::net::describe_http_error(&e)
                )
            })?;
            let room = MAX_RESULT_BYTES.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_RESULT_BYTES {
                break;
            }
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            Ok(text)
        } else {
            let excerpt: String = text.chars().take(300).collect();
            Err(format!(
                "{name} answered HTTP {}: {excerpt}",
                status.as_u16()
            ))
        }
    }
}
