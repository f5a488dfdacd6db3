//! Tools from MCP servers: the example server (`examples/mcp_restaurant.rs`, built by `cargo
//! test`) over stdio and Streamable HTTP in both protocol eras; in-process rmcp servers on
//! loopback for what the example does not do (a tool list that changes, a call that hangs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, SubscriptionFilter, Tool,
    ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use turnflow::llm::{ToolCall, ToolEffect, ToolExecutor};
use turnflow::tools::mcp::{McpProtocol, McpServer, McpServerConfig, McpTransport};

/// A child process killed when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[path = "support/example.rs"]
mod support;

/// The example MCP server, built beside this test.
fn example_server() -> String {
    support::example("mcp_restaurant").display().to_string()
}

fn stdio(args: &[&str]) -> McpTransport {
    McpTransport::Stdio {
        command: example_server(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: Vec::new(),
    }
}

fn call(name: &str, arguments: serde_json::Value) -> ToolCall {
    ToolCall {
        id: "call_1".into(),
        name: name.into(),
        arguments,
    }
}

fn lookup(time: &str) -> ToolCall {
    call("check_availability", json!({"people": 4, "time": time}))
}

fn booking(time: &str) -> ToolCall {
    call(
        "book_table",
        json!({"name": "Jordan", "people": 4, "time": time}),
    )
}

/// The example over HTTP: the child (killed on drop) and its endpoint.
fn example_over_http() -> (Child, String) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(example_server())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child = Child(child);
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    (child, format!("http://{addr}/mcp"))
}

/// Lists the example's tools through `transport` in `protocol`, checks the era agreed, the
/// effects, a lookup and a booking at `time` (one server process may serve several checks).
async fn check_the_restaurant(
    transport: McpTransport,
    protocol: McpProtocol,
    expected: &str,
    time: &str,
) {
    let mut config = McpServerConfig::new("restaurant", transport);
    config.protocol = protocol;
    config.trusted = true;
    let server = McpServer::start(config).await.unwrap();
    assert_eq!(server.protocol_version(), expected);
    let effects: Vec<(String, ToolEffect)> = server
        .specs()
        .into_iter()
        .map(|s| (s.name, s.effect))
        .collect();
    assert_eq!(
        effects,
        [
            ("check_availability".to_owned(), ToolEffect::Pure),
            ("book_table".to_owned(), ToolEffect::SideEffecting),
        ]
    );
    assert_eq!(
        server.call(&lookup(time)).await.unwrap(),
        format!(r#"{{"free_tables":4,"people":4,"time":"{time}"}}"#)
    );
    assert_eq!(
        server.call(&booking(time)).await.unwrap(),
        format!(r#"{{"booked":{{"name":"Jordan","people":4,"time":"{time}"}}}}"#)
    );
    server.close().await;
}

#[tokio::test]
async fn the_example_speaks_both_revisions_over_stdio() {
    check_the_restaurant(stdio(&[]), McpProtocol::Legacy, "2025-11-25", "19:00").await;
    check_the_restaurant(stdio(&[]), McpProtocol::Current, "2026-07-28", "19:00").await;
}

#[tokio::test]
async fn the_example_speaks_both_revisions_over_streamable_http() {
    let (_child, url) = example_over_http();
    check_the_restaurant(http(&url), McpProtocol::Legacy, "2025-11-25", "19:00").await;
    check_the_restaurant(http(&url), McpProtocol::Current, "2026-07-28", "19:30").await;
    check_the_restaurant(http(&url), McpProtocol::Auto, "2026-07-28", "20:00").await;
}

#[tokio::test]
async fn effects_follow_trust_and_the_settings_not_the_servers_word_alone() {
    let effects = |config: McpServerConfig| async move {
        let server = McpServer::start(config).await.unwrap();
        let effects: Vec<ToolEffect> = server.specs().into_iter().map(|s| s.effect).collect();
        server.close().await;
        effects
    };
    let untrusted = McpServerConfig::new("restaurant", stdio(&[]));
    assert_eq!(
        effects(untrusted.clone()).await,
        [ToolEffect::SideEffecting, ToolEffect::SideEffecting],
        "an untrusted server's readOnlyHint is only a hint"
    );
    let mut named = untrusted.clone();
    named.read_only = vec!["check_availability".into()];
    assert_eq!(
        effects(named).await,
        [ToolEffect::Pure, ToolEffect::SideEffecting]
    );
    let mut overruled = untrusted;
    overruled.trusted = true;
    overruled.side_effecting = vec!["check_availability".into()];
    assert_eq!(
        effects(overruled).await,
        [ToolEffect::SideEffecting, ToolEffect::SideEffecting]
    );
}

#[tokio::test]
async fn settings_that_cannot_work_are_refused_with_what_is_wrong() {
    let refusal = |config: McpServerConfig| async move {
        McpServer::start(config).await.unwrap_err().to_string()
    };
    let mut both = McpServerConfig::new("restaurant", stdio(&[]));
    both.read_only = vec!["book_table".into()];
    both.side_effecting = vec!["book_table".into()];
    assert_eq!(
        refusal(both).await,
        "mcp server restaurant: tool \"book_table\" is named both read_only and side_effecting"
    );
    let remote = McpServerConfig::new(
        "crm",
        McpTransport::Http {
            url: "http://crm.example.com/mcp".into(),
            headers: vec![("Authorization".into(), "Bearer secret-token".into())],
        },
    );
    let refused = refusal(remote).await;
    assert_eq!(
        refused,
        "mcp server crm: headers (credentials) would travel unencrypted to http://crm.example.com/mcp; use https:// or a server on this machine"
    );
    let missing = McpServerConfig::new(
        "gone",
        McpTransport::Stdio {
            command: "/nonexistent/mcp-server".into(),
            args: Vec::new(),
            env: Vec::new(),
        },
    );
    let refused = refusal(missing).await;
    assert!(
        refused
            .starts_with("mcp server gone did not start: cannot run \"/nonexistent/mcp-server\""),
        "{refused}"
    );
}

#[tokio::test]
async fn a_server_that_exits_during_a_call_is_reported_and_started_again() {
    let log = std::env::temp_dir().join(format!("turnflow-mcp-crash-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut config = McpServerConfig::new(
        "restaurant",
        stdio(&[
            "--exit-during",
            "book_table",
            "--bookings-log",
            log.to_str().unwrap(),
        ]),
    );
    config.trusted = true;
    let server = McpServer::start(config).await.unwrap();
    let crashed = server.call(&booking("19:00")).await.unwrap_err();
    assert_eq!(
        crashed,
        "the tool server restaurant stopped during the call to book_table; whether it acted is not known"
    );
    let down = server.call(&lookup("19:00")).await.unwrap_err();
    assert_eq!(
        down,
        "the tool server restaurant is down (it stopped); it is started again in 1 s"
    );
    // The back-off after a short life is one second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        server.call(&lookup("19:00")).await.unwrap(),
        r#"{"free_tables":4,"people":4,"time":"19:00"}"#,
        "the restarted server answers"
    );
    assert!(!log.exists(), "the crashed booking was never made");
    server.close().await;
}

/// An in-process server whose tool list grows on demand and whose one tool never answers
/// until cancelled.
#[derive(Clone, Default)]
struct Shifting {
    grown: Arc<AtomicBool>,
    announce: Arc<Notify>,
    legacy_peer: Arc<std::sync::Mutex<Option<rmcp::Peer<RoleServer>>>>,
    cancelled: Arc<AtomicUsize>,
}

impl ServerHandler for Shifting {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                () = self.announce.notified() => {
                    let _ = context.sink().notify_tool_list_changed().await;
                }
            }
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        *self.legacy_peer.lock().unwrap() = Some(context.peer.clone());
        let schema = json!({"type": "object"});
        let serde_json::Value::Object(schema) = schema else {
            unreachable!()
        };
        let mut tools = vec![
            Tool::new("wait_forever", "Never answers.", schema.clone())
                .with_annotations(ToolAnnotations::new().read_only(true)),
        ];
        if self.grown.load(Ordering::SeqCst) {
            tools.push(Tool::new("find_order", "Finds an order.", schema));
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        context.ct.cancelled().await;
        self.cancelled.fetch_add(1, Ordering::SeqCst);
        Ok(CallToolResult::success(vec![ContentBlock::text("too late")]).into())
    }
}

/// `handler` served over Streamable HTTP on loopback: its URL and what stops it.
async fn serve_in_process(handler: Shifting) -> (String, CancellationToken) {
    let stop = CancellationToken::new();
    let service: StreamableHttpService<Shifting, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(handler.clone()),
        Default::default(),
        StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().nest_service("/mcp", service);
    let until = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(until.cancelled_owned())
            .await
    });
    (format!("http://{addr}/mcp"), stop)
}

/// The Streamable HTTP endpoint at `url`, with no header.
fn http(url: &str) -> McpTransport {
    McpTransport::Http {
        url: url.to_owned(),
        headers: Vec::new(),
    }
}

/// A fresh in-process server, and the settings of a server called `shop` reaching it in
/// `protocol`; cancelling the token stops it.
async fn shop(protocol: McpProtocol) -> (Shifting, McpServerConfig, CancellationToken) {
    let handler = Shifting::default();
    let (url, stop) = serve_in_process(handler.clone()).await;
    let mut config = McpServerConfig::new("shop", http(&url));
    config.protocol = protocol;
    (handler, config, stop)
}

/// Waits (at most 10 s) for `done`.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not happen within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_tool_list_is_read_again_in_both_revisions() {
    for (protocol, version) in [
        (McpProtocol::Current, "2026-07-28"),
        (McpProtocol::Legacy, "2025-11-25"),
    ] {
        let (handler, config, stop) = shop(protocol).await;
        let server = Arc::new(McpServer::start(config).await.unwrap());
        assert_eq!(server.protocol_version(), version);
        let mut toolbox = turnflow::tools::Toolbox::new();
        toolbox.add("shop", Some("shop"), server.clone()).unwrap();
        let names = |t: &turnflow::tools::Toolbox| -> Vec<String> {
            t.specs().into_iter().map(|s| s.name).collect()
        };
        assert_eq!(names(&toolbox), ["shop__wait_forever"]);
        handler.grown.store(true, Ordering::SeqCst);
        match protocol {
            McpProtocol::Legacy => {
                let peer = handler.legacy_peer.lock().unwrap().clone().unwrap();
                peer.notify_tool_list_changed().await.unwrap();
            }
            _ => handler.announce.notify_one(),
        }
        eventually("the new list", || server.specs().len() == 2).await;
        assert_eq!(
            names(&toolbox),
            ["shop__wait_forever", "shop__find_order"],
            "{version}"
        );
        server.close().await;
        stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_is_cancelled_on_the_wire_and_a_stalled_one_times_out() {
    for protocol in [McpProtocol::Current, McpProtocol::Legacy] {
        let (handler, mut config, stop) = shop(protocol).await;
        config.call_timeout = Duration::from_millis(300);
        let server = McpServer::start(config).await.unwrap();
        let wait = call("wait_forever", json!({}));
        // The engine drops a read-only call when its reply is withdrawn.
        let dropped = tokio::time::timeout(Duration::from_millis(100), server.call(&wait)).await;
        assert!(dropped.is_err());
        eventually("the server seeing the cancel", || {
            handler.cancelled.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(
            server.call(&wait).await.unwrap_err(),
            "the tool server shop did not answer wait_forever within 0.3 s; whether it acted is not known"
        );
        eventually("the server seeing the second cancel", || {
            handler.cancelled.load(Ordering::SeqCst) == 2
        })
        .await;
        server.close().await;
        stop.cancel();
    }
}

/// A model that acts on whatever it has heard so far, guesses included: asked about a table,
/// it looks one up; told to book, it books; given a result, it answers.
struct Acting;

#[async_trait::async_trait]
impl turnflow::llm::LanguageModel for Acting {
    fn name(&self) -> &str {
        "acting"
    }

    async fn stream(
        &self,
        request: turnflow::llm::LlmRequest,
    ) -> Result<turnflow::llm::LlmStream, turnflow::llm::LlmError> {
        use futures_util::StreamExt as _;
        use turnflow::llm::{LlmChunk, Message};
        let last = request.messages.last().cloned();
        let heard = request
            .messages
            .iter()
            .rev()
            .find_map(|m| match m {
                Message::User { content } => Some(content.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let chunk = match last {
            Some(Message::Tool { .. }) => LlmChunk::Text("Done.".into()),
            _ if heard.starts_with("Book") => LlmChunk::ToolCall(booking("19:00")),
            _ => LlmChunk::ToolCall(lookup("19:00")),
        };
        let end = LlmChunk::End {
            finish_reason: None,
        };
        Ok(Box::pin(
            futures_util::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(chunk)
            })
            .chain(futures_util::stream::iter([Ok(end)])),
        ))
    }
}

/// The real engine on the real clock (the server is a separate process), the example server
/// counting its bookings in a file: a guess that is withdrawn never books, the booking the
/// user confirms is made once, and a lookup that ran while its reply was a guess is used on
/// promotion, not made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_engine_a_withdrawn_guess_never_books_and_a_guessed_lookup_is_kept() {
    use turnflow::engine::Backends;
    use turnflow::scenario::Scenario;
    use turnflow::sim::{SimulationConfig, Transport};

    let log =
        std::env::temp_dir().join(format!("turnflow-mcp-engine-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut config = McpServerConfig::new(
        "restaurant",
        stdio(&["--bookings-log", log.to_str().unwrap()]),
    );
    config.trusted = true;
    let server = Arc::new(McpServer::start(config).await.unwrap());
    let scenario = Arc::new(
        Scenario::parse(
            r#"{
  "name": "mcp",
  "llm": {"ttft_ms": 350, "token_interval_ms": 20},
  "tts": {"ttfb_ms": 150, "words_per_minute": 180},
  "listen": {"eager_eot_threshold": 0.4, "eot_threshold": 0.7, "eot_timeout_ms": 2000},
  "turns": [
    {
      "start": {"at_ms": 300},
      "phrases": [{"text": "Is there a table for four at seven?", "eot_confidence": 0.92, "ramp_ms": 1600}],
      "reply": "Yes, a table for four at seven is free."
    },
    {
      "start": {"after_agent_ms": 500},
      "phrases": [
        {"text": "Book it", "pause_ms": 1200, "eot_confidence": 0.6, "ramp_ms": 300},
        {"text": "under Jordan.", "eot_confidence": 0.92, "ramp_ms": 1600}
      ],
      "reply": "Done, your table is booked."
    }
  ]
}"#,
            "the mcp scenario",
        )
        .unwrap(),
    );
    let mut sim = SimulationConfig::new(scenario.clone());
    sim.transport = Transport::Memory;
    sim.record_audio = false;
    sim.tail = Duration::from_millis(200);
    sim.backends = Some(Backends {
        llm: Arc::new(Acting),
        tts: Arc::new(turnflow::tts::SyntheticTts::new(
            16_000,
            scenario.tts.clone(),
        )),
        tools: Some(server.clone()),
    });
    let result = turnflow::sim::run(sim).await.unwrap();
    server.close().await;

    let lookup = &result.report.turns[0].tool_calls;
    assert_eq!(lookup.len(), 1, "{lookup:?}");
    assert_eq!(lookup[0].tool, "check_availability");
    assert!(
        lookup[0].speculative,
        "the lookup ran while its reply was a guess"
    );
    assert_eq!(lookup[0].outcome, "ok");
    assert!(
        lookup[0].start_ms.is_some_and(|at| at < 0.0),
        "it started before EndOfTurn: {lookup:?}"
    );

    let booking = &result.report.turns[1];
    assert!(
        booking.speculation_withdrawn >= 1,
        "the first guess was withdrawn: {booking:?}"
    );
    let held: Vec<_> = booking.tool_calls.iter().filter(|c| c.withdrawn).collect();
    assert!(
        !held.is_empty(),
        "the guess asked for the booking: {booking:?}"
    );
    for call in held {
        assert_eq!(
            (call.tool.as_str(), call.outcome.as_str(), call.start_ms),
            ("book_table", "not_sent", None),
            "a withdrawn guess's booking is never sent"
        );
    }
    let sent: Vec<_> = booking.tool_calls.iter().filter(|c| !c.withdrawn).collect();
    assert_eq!(sent.len(), 1, "{:?}", booking.tool_calls);
    assert_eq!(sent[0].tool, "book_table");
    assert!(!sent[0].speculative, "the booking waited for EndOfTurn");
    let bookings = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        bookings.lines().collect::<Vec<_>>(),
        [r#"{"name":"Jordan","people":4,"time":"19:00"}"#],
        "one booking, made once"
    );
    let _ = std::fs::remove_file(&log);
}
