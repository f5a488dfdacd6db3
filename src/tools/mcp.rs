//! Tools from a Model Context Protocol server, through the official SDK's client (`rmcp`):
//! a local server started as a child process (stdio) or a remote one over Streamable HTTP,
//! speaking the current revision (2026-07-28, no handshake) or the handshake era (2025-11-25).
//!
//! One [`McpServer`] serves every session of the process: its tools are listed once at start
//! and again when the server announces a new list (`notifications/tools/list_changed`,
//! through a `subscriptions/listen` stream on the current revision), and
//! [`ToolExecutor::revision`] tells the [`Toolbox`](super::Toolbox) to read them again.
//!
//! The speculation gate: a tool is [`ToolEffect::Pure`] (may run while its reply is a guess)
//! only when the settings trust the server and the server annotates it `readOnlyHint: true`,
//! or when the settings name it read-only themselves; the protocol's own defaults call an
//! unannotated tool destructive, and annotations from an untrusted server are only hints.
//!
//! Failures are results the model hears: a call that times out, a server that exits during a
//! call (whether it acted is then unknown, and it is said so), a server that refuses. A stdio
//! server that stopped is started again for a later call, at once the first time and then
//! after a back-off that doubles to 30 s while it keeps failing. A call whose reply is
//! cancelled is dropped, and rmcp then cancels it on the wire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientConfig, ContentBlock, Implementation,
    ProtocolVersion, ServerNotification, SubscriptionFilter, Tool,
};
use rmcp::service::{NotificationContext, Peer, RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::llm::{ToolCall, ToolEffect, ToolExecutor, ToolSpec};

/// The most of a result the model reads.
pub const MAX_RESULT_CHARS: usize = 16 * 1024;

/// The longest wait before a failing server is started again.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// A server alive this long is healthy again: its next failure restarts it at once.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// How to reach a server. Its `Debug` names headers and variables, never their values.
#[derive(Clone, PartialEq, Eq)]
pub enum McpTransport {
    /// A child process speaking newline-delimited JSON-RPC on stdin and stdout; its stderr
    /// goes to turnflow's.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Variables added to its environment (values already taken from turnflow's).
        env: Vec<(String, String)>,
    },
    /// A Streamable HTTP endpoint.
    Http {
        /// `http://` or `https://`.
        url: String,
        /// Sent on every request (values already taken from the environment; never logged).
        headers: Vec<(String, String)>,
    },
}

impl std::fmt::Debug for McpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |pairs: &[(String, String)]| -> Vec<String> {
            pairs.iter().map(|(name, _)| name.clone()).collect()
        };
        match self {
            Self::Stdio { command, args, env } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field("env", &names(env))
                .finish(),
            Self::Http { url, headers } => f
                .debug_struct("Http")
                .field("url", url)
                .field("headers", &names(headers))
                .finish(),
        }
    }
}

/// Which protocol era to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum McpProtocol {
    /// Ask with `server/discover` (2026-07-28) and fall back to the `initialize` handshake
    /// when the server is older (rmcp waits up to 10 s for a silent one).
    #[default]
    Auto,
    /// 2026-07-28 only: no handshake, the version on every request.
    Current,
    /// 2025-11-25 with its `initialize` handshake, what most servers in the wild speak.
    Legacy,
}

impl std::str::FromStr for McpProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "2026-07-28" => Ok(Self::Current),
            "2025-11-25" => Ok(Self::Legacy),
            other => Err(format!(
                "protocol {other:?}: expected auto, 2026-07-28 or 2025-11-25"
            )),
        }
    }
}

/// One server's settings.
#[derive(Debug, Clone)]
pub struct McpServerConfig {
    /// What the settings call it: in messages, and the prefix of its tools' names when
    /// `prefix` is set.
    pub name: String,
    /// How to reach it.
    pub transport: McpTransport,
    /// Which era to speak.
    pub protocol: McpProtocol,
    /// Whether its `readOnlyHint` annotations are believed.
    pub trusted: bool,
    /// Tools that may run during speculation whatever the server says.
    pub read_only: Vec<String>,
    /// Tools that never run during speculation whatever the server says.
    pub side_effecting: Vec<String>,
    /// Each call's limit.
    pub call_timeout: Duration,
    /// The limit on starting the server and listing its tools.
    pub start_timeout: Duration,
}

impl McpServerConfig {
    /// A server reached by `transport`, untrusted, speaking whatever it speaks, with 10 s
    /// calls and 20 s to start.
    pub fn new(name: &str, transport: McpTransport) -> Self {
        Self {
            name: name.to_owned(),
            transport,
            protocol: McpProtocol::Auto,
            trusted: false,
            read_only: Vec::new(),
            side_effecting: Vec::new(),
            call_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(20),
        }
    }
}

/// Why a server's tools cannot be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The settings cannot work.
    #[error("mcp server {server}: {reason}")]
    Config {
        /// The server.
        server: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// It did not start, or did not list its tools.
    #[error("mcp server {server} did not start: {reason}")]
    Start {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
}

/// Turns the server's notifications into refreshes (the handshake era sends them on the
/// connection; the current revision on a `subscriptions/listen` stream).
#[derive(Clone)]
struct Listener {
    list_changed: Arc<Notify>,
}

impl ClientHandler for Listener {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            Default::default(),
            Implementation::new("turnflow", env!("CARGO_PKG_VERSION")),
        )
    }
}

type Connection = RunningService<RoleClient, Listener>;

/// A connection and what it costs to have it.
struct Up {
    connection: Connection,
    started: Instant,
    /// Failed starts and short lives before this one.
    failures: u32,
    /// Forwards the current revision's list-changed stream; ends with the connection.
    subscription: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.subscription {
            stop.cancel();
        }
    }
}

enum Link {
    Up(Up),
    Down {
        why: String,
        retry_at: Instant,
        failures: u32,
    },
}

struct Shared {
    config: McpServerConfig,
    http: Option<reqwest::Client>,
    tools: Mutex<Arc<Vec<ToolSpec>>>,
    revision: std::sync::atomic::AtomicU64,
    protocol_version: Mutex<String>,
    list_changed: Arc<Notify>,
    link: tokio::sync::Mutex<Link>,
}

/// One MCP server's tools, as a [`ToolExecutor`] every session shares.
pub struct McpServer {
    shared: Arc<Shared>,
    stop: CancellationToken,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("name", &self.shared.config.name)
            .field("tools", &self.tool_names())
            .finish()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The delay before start number `failures + 1`: none after a healthy life, then 1, 2, 4 …
/// seconds up to [`MAX_RESTART_DELAY`].
pub fn restart_delay(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 1).min(5)).min(MAX_RESTART_DELAY),
    }
}

impl McpServer {
    /// Starts the server (or connects to it) and lists its tools.
    ///
    /// # Errors
    /// [`McpError::Config`] for settings that cannot work (a tool named both read-only and
    /// side-effecting, a URL that is not http(s), headers that would travel unencrypted to
    /// another host); [`McpError::Start`] when it does not start or list its tools within
    /// `start_timeout`.
    pub async fn start(config: McpServerConfig) -> Result<Self, McpError> {
        let refuse = |reason: String| McpError::Config {
            server: config.name.clone(),
            reason,
        };
        if let Some(both) = config
            .read_only
            .iter()
            .find(|t| config.side_effecting.contains(t))
        {
            return Err(refuse(format!(
                "tool {both:?} is named both read_only and side_effecting"
            )));
        }
        let http = match &config.transport {
            McpTransport::Stdio { command, .. } if command.trim().is_empty() => {
                return Err(refuse("the command is empty".into()));
            }
            McpTransport::Stdio { .. } => None,
            McpTransport::Http { url, headers } => {
                let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
                if !matches!(scheme.as_deref(), Some("http" | "https")) {
                    return Err(refuse(format!(
                        "url {url:?} is not an http:// or https:// URL"
                    )));
                }
                if !headers.is_empty() && crate::net::insecure_remote(url) {
                    return Err(refuse(format!(
                        "headers (credentials) would travel unencrypted to {url}; use https:// or a server on this machine"
                    )));
                }
                // No redirect is followed: the headers carry credentials.
                let client = crate::net::http_client_builder(config.start_timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| refuse(format!("cannot build the http client: {e}")))?;
                Some(client)
            }
        };
        let shared = Arc::new(Shared {
            http,
            tools: Mutex::new(Arc::new(Vec::new())),
            revision: Default::default(),
            protocol_version: Mutex::new(String::new()),
            list_changed: Arc::new(Notify::new()),
            link: tokio::sync::Mutex::new(Link::Down {
                why: "not started".into(),
                retry_at: Instant::now(),
                failures: 0,
            }),
            config,
        });
        let up = shared.connect(0).await.map_err(|reason| McpError::Start {
            server: shared.config.name.clone(),
            reason,
        })?;
        let listed = shared
            .tools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for named in shared
            .config
            .read_only
            .iter()
            .chain(&shared.config.side_effecting)
        {
            if !listed.iter().any(|t| &t.name == named) {
                tracing::warn!(server = %shared.config.name, tool = %named, "the settings name a tool the server does not list");
            }
        }
        *shared.link.lock().await = Link::Up(up);
        let stop = CancellationToken::new();
        let watcher = tokio::spawn(shared.clone().watch(stop.clone()));
        Ok(Self {
            shared,
            stop,
            watcher: Mutex::new(Some(watcher)),
        })
    }

    /// The protocol version the server and turnflow agreed on (`2026-07-28`, `2025-11-25` …).
    pub fn protocol_version(&self) -> String {
        self.shared
            .protocol_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn tool_names(&self) -> Vec<String> {
        self.shared
            .tools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// Stops watching for new tool lists and closes the connection (a child process is
    /// asked to end: stdin closed, then SIGTERM, then SIGKILL).
    ///
    /// # Cancellation safety
    /// Dropping it part-way leaves the connection to close when the server is dropped.
    pub async fn close(&self) {
        self.stop.cancel();
        let watcher = self
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        let mut link = self.shared.link.lock().await;
        let closed = std::mem::replace(
            &mut *link,
            Link::Down {
                why: "closed".into(),
                retry_at: Instant::now() + Duration::from_secs(3600 * 24 * 365),
                failures: 0,
            },
        );
        if let Link::Up(mut up) = closed {
            if let Some((stop, task)) = up.subscription.take() {
                stop.cancel();
                let _ = task.await;
            }
            let _ = up.connection.close().await;
        }
    }
}

impl Shared {
    /// Starts a connection and lists its tools.
    async fn connect(self: &Arc<Self>, failures: u32) -> Result<Up, String> {
        let limit = self.config.start_timeout;
        let started = Instant::now();
        let connection = tokio::time::timeout(limit, self.open())
            .await
            .map_err(|_| format!("no answer within {} s", limit.as_secs_f32()))??;
        let info = connection.peer_info();
        let version = info
            .as_ref()
            .map(|info| info.protocol_version.to_string())
            .unwrap_or_default();
        let announces = info
            .as_ref()
            .and_then(|info| info.capabilities.tools.as_ref())
            .and_then(|tools| tools.list_changed)
            == Some(true);
        let current = version.as_str() >= "2026-07-28";
        let peer = connection.peer().clone();
        let tools = tokio::time::timeout(limit, peer.list_all_tools())
            .await
            .map_err(|_| format!("tools/list had no answer within {} s", limit.as_secs_f32()))?
            .map_err(|e| format!("tools/list failed: {e}"))?;
        let subscription = if announces && current {
            // Without the stream the tools still work; only later changes go unseen.
            match self.subscribe(&peer).await {
                Ok(subscription) => Some(subscription),
                Err(why) => {
                    tracing::warn!(server = %self.config.name, "tool list changes will not be followed: {why}");
                    None
                }
            }
        } else {
            None
        };
        tracing::info!(
            server = %self.config.name,
            protocol = %version,
            tools = tools.len(),
            list_changed = announces,
            "mcp server connected"
        );
        *self
            .protocol_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = version;
        self.replace_tools(&tools);
        Ok(Up {
            connection,
            started,
            failures,
            subscription,
        })
    }

    async fn open(&self) -> Result<Connection, String> {
        let listener = Listener {
            list_changed: self.list_changed.clone(),
        };
        let lifecycle = match self.config.protocol {
            McpProtocol::Auto => ClientLifecycleMode::Auto {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                legacy_version: Some(ProtocolVersion::V_2025_11_25),
            },
            McpProtocol::Current => ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
            McpProtocol::Legacy => ClientLifecycleMode::Initialize,
        };
        let opened = match &self.config.transport {
            McpTransport::Stdio { command, args, env } => {
                let mut process = tokio::process::Command::new(command);
                process.args(args).envs(env.iter().cloned());
                let transport = TokioChildProcess::new(process)
                    .map_err(|e| format!("cannot run {command:?}: {e}"))?;
                listener.serve_with_lifecycle(transport, lifecycle).await
            }
            McpTransport::Http { url, headers } => {
                let mut map = HashMap::new();
                for (name, value) in headers {
                    let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("{name:?} is not a header name"))?;
                    let value = crate::net::secret_header(value).ok_or_else(|| {
                        format!("header {name}: its value has characters a header cannot carry")
                    })?;
                    map.insert(name, value);
                }
                let transport = StreamableHttpClientTransport::with_client(
                    self.http.clone().unwrap_or_default(),
                    StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(map),
                );
                listener.serve_with_lifecycle(transport, lifecycle).await
            }
        };
        opened.map_err(|e| e.to_string())
    }

    /// Opens the current revision's list-changed stream and forwards it to `list_changed`.
    async fn subscribe(
        &self,
        peer: &Peer<RoleClient>,
    ) -> Result<(CancellationToken, JoinHandle<()>), String> {
        let mut subscription = peer
            .listen(SubscriptionFilter::builder().tools_list_changed().build())
            .await
            .map_err(|e| format!("subscriptions/listen failed: {e}"))?;
        let stop = CancellationToken::new();
        let changed = self.list_changed.clone();
        let server = self.config.name.clone();
        let ended = stop.clone();
        let forward = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    () = ended.cancelled() => break,
                    next = subscription.next() => match next {
                        Ok(Some(ServerNotification::ToolListChangedNotification(_))) => {
                            changed.notify_one();
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(%server, "the tool-list subscription ended: {e}");
                            break;
                        }
                    },
                }
            }
        });
        Ok((stop, forward))
    }

    fn replace_tools(&self, tools: &[Tool]) {
        let specs: Vec<ToolSpec> = tools.iter().map(|t| self.spec_of(t)).collect();
        let mut held = self.tools.lock().unwrap_or_else(PoisonError::into_inner);
        if **held != specs {
            *held = Arc::new(specs);
            self.revision
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    fn spec_of(&self, tool: &Tool) -> ToolSpec {
        let name = tool.name.to_string();
        let hinted_read_only = self.config.trusted
            && tool.annotations.as_ref().and_then(|a| a.read_only_hint) == Some(true);
        let effect = if self.config.side_effecting.contains(&name) {
            ToolEffect::SideEffecting
        } else if hinted_read_only || self.config.read_only.contains(&name) {
            ToolEffect::Pure
        } else {
            ToolEffect::SideEffecting
        };
        let description = tool
            .description
            .as_deref()
            .or(tool.title.as_deref())
            .unwrap_or_default()
            .to_owned();
        ToolSpec {
            name,
            description,
            parameters: Value::Object((*tool.input_schema).clone()),
            effect,
        }
    }

    /// Lists the tools again whenever the server says they changed, until `stop`.
    async fn watch(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = self.list_changed.notified() => {}
            }
            let peer = match &*self.link.lock().await {
                Link::Up(up) => up.connection.peer().clone(),
                Link::Down { .. } => continue,
            };
            let listed = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                listed = tokio::time::timeout(self.config.start_timeout, peer.list_all_tools()) => listed,
            };
            match listed {
                Ok(Ok(tools)) => {
                    tracing::info!(server = %self.config.name, tools = tools.len(), "mcp tools changed");
                    self.replace_tools(&tools);
                }
                Ok(Err(e)) => {
                    tracing::warn!(server = %self.config.name, "the new tool list could not be read: {e}");
                }
                Err(_) => {
                    tracing::warn!(server = %self.config.name, "the new tool list was not sent in time");
                }
            }
        }
    }

    /// A live connection's peer: the one there is, or a new one when the last one stopped
    /// and its restart is due.
    async fn peer(self: &Arc<Self>) -> Result<Peer<RoleClient>, String> {
        let mut link = self.link.lock().await;
        if let Link::Up(up) = &*link {
            if !up.connection.is_transport_closed() {
                return Ok(up.connection.peer().clone());
            }
            let failures = if up.started.elapsed() >= STABLE_AFTER {
                0
            } else {
                up.failures + 1
            };
            tracing::warn!(server = %self.config.name, "the mcp server stopped; it is started again for the next call");
            *link = Link::Down {
                why: "it stopped".into(),
                retry_at: Instant::now() + restart_delay(failures),
                failures,
            };
        }
        let Link::Down {
            why,
            retry_at,
            failures,
        } = &*link
        else {
            unreachable!("an open link was returned above");
        };
        let now = Instant::now();
        if now < *retry_at {
            return Err(format!(
                "the tool server {} is down ({why}); it is started again in {:.0} s",
                self.config.name,
                (*retry_at - now).as_secs_f32().ceil()
            ));
        }
        let failures = *failures;
        match self.connect(failures).await {
            Ok(up) => {
                let peer = up.connection.peer().clone();
                *link = Link::Up(up);
                Ok(peer)
            }
            Err(why) => {
                let failures = failures + 1;
                let delay = restart_delay(failures);
                tracing::warn!(server = %self.config.name, retry_in_s = delay.as_secs(), "the mcp server did not start again: {why}");
                let message = format!(
                    "the tool server {} is down (it did not start again: {why})",
                    self.config.name
                );
                *link = Link::Down {
                    why,
                    retry_at: Instant::now() + delay,
                    failures,
                };
                Err(message)
            }
        }
    }
}

/// What the model reads of a result: the text blocks, else the structured content as
/// compact JSON, with a placeholder for media, cut at [`MAX_RESULT_CHARS`].
fn rendered(result: &CallToolResult) -> String {
    let mut parts: Vec<String> = result
        .content
        .iter()
        .map(|block| match block {
            ContentBlock::Text(text) => text.text.clone(),
            ContentBlock::Image(_) => "[an image]".to_owned(),
            ContentBlock::Audio(_) => "[an audio clip]".to_owned(),
            ContentBlock::Resource(_) => "[an embedded resource]".to_owned(),
            ContentBlock::ResourceLink(link) => format!("[a resource at {}]", link.uri),
            _ => "[content of a kind turnflow does not read]".to_owned(),
        })
        .collect();
    if !result
        .content
        .iter()
        .any(|b| matches!(b, ContentBlock::Text(_)))
        && let Some(structured) = &result.structured_content
    {
        parts.insert(0, structured.to_string());
    }
    let text = parts.join("\n");
    if text.chars().count() > MAX_RESULT_CHARS {
        let cut: String = text.chars().take(MAX_RESULT_CHARS).collect();
        format!("{cut} … (cut at {MAX_RESULT_CHARS} characters)")
    } else {
        text
    }
}

#[async_trait]
impl ToolExecutor for McpServer {
    fn specs(&self) -> Vec<ToolSpec> {
        self.shared
            .tools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .to_vec()
    }

    fn revision(&self) -> u64 {
        self.shared
            .revision
            .load(std::sync::atomic::Ordering::Acquire)
    }

    async fn call(&self, call: &ToolCall) -> Result<String, String> {
        let server = &self.shared.config.name;
        let tool = &call.name;
        let peer = self.shared.peer().await?;
        let arguments = match &call.arguments {
            Value::Object(map) => map.clone(),
            Value::Null => Default::default(),
            other => {
                return Err(format!(
                    "the call to {tool} was not made: its arguments must be an object, not {other}"
                ));
            }
        };
        let params = CallToolRequestParams::new(tool.clone()).with_arguments(arguments);
        let limit = self.shared.config.call_timeout;
        match tokio::time::timeout(limit, peer.call_tool(params)).await {
            Err(_) => Err(format!(
                "the tool server {server} did not answer {tool} within {} s; whether it acted is not known",
                limit.as_secs_f32()
            )),
            Ok(Ok(result)) if result.is_error == Some(true) => Err(rendered(&result)),
            Ok(Ok(result)) => Ok(rendered(&result)),
            Ok(Err(ServiceError::McpError(refusal))) => Err(format!(
                "the tool server {server} refused the call to {tool}: {}",
                refusal.message
            )),
            Ok(Err(ServiceError::TransportClosed | ServiceError::TransportSend(_))) => {
                tracing::warn!(%server, %tool, "the mcp server stopped during a call");
                Err(format!(
                    "the tool server {server} stopped during the call to {tool}; whether it acted is not known"
                ))
            }
            Ok(Err(other)) => Err(format!(
                "the call to {tool} on the tool server {server} failed: {other}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let http = McpTransport::Http {
            url: "https://crm.example.com/mcp".into(),
            headers: vec![("Authorization".into(), "Bearer s3cret".into())],
        };
        let stdio = McpTransport::Stdio {
            command: "crm-mcp".into(),
            args: vec![],
            env: vec![("CRM_KEY".into(), "s3cret".into())],
        };
        for transport in [http, stdio] {
            let shown = format!("{:?}", McpServerConfig::new("crm", transport));
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("Authorization") || shown.contains("CRM_KEY"));
        }
    }

    #[test]
    fn restarts_back_off_to_thirty_seconds() {
        let delays: Vec<u64> = (0..9).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn protocols_are_spelled_as_the_revisions() {
        assert_eq!("2025-11-25".parse(), Ok(McpProtocol::Legacy));
        assert_eq!("2026-07-28".parse(), Ok(McpProtocol::Current));
        assert_eq!(
            "2024-11-05".parse::<McpProtocol>().unwrap_err(),
            "protocol \"2024-11-05\": expected auto, 2026-07-28 or 2025-11-25"
        );
    }

    #[test]
    fn results_read_as_text_else_as_structured_content_and_are_cut() {
        let text = CallToolResult::success(vec![
            ContentBlock::text("Table for 4 at 19:00: free."),
            ContentBlock::text("Also 19:30."),
        ]);
        assert_eq!(rendered(&text), "Table for 4 at 19:00: free.\nAlso 19:30.");
        let mut structured = CallToolResult::success(Vec::new());
        structured.structured_content = Some(serde_json::json!({"free": true}));
        assert_eq!(rendered(&structured), r#"{"free":true}"#);
        let long = CallToolResult::success(vec![ContentBlock::text("x".repeat(20_000))]);
        assert!(rendered(&long).ends_with("… (cut at 16384 characters)"));
        assert_eq!(rendered(&long).chars().count(), MAX_RESULT_CHARS + 28);
    }
}
