//! Real LLM backends against loopback HTTP servers (127.0.0.1, port 0) that replay each
//! provider's documented streaming wire format, chunk by chunk.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use turnflow::error::ErrorKind;
use turnflow::flux::ApiKey;
use turnflow::llm::{
    LanguageModel, LlmChunk, LlmError, LlmRequest, Message, OpenAiCompatible, ToolCall, ToolEffect,
    ToolSpec,
};

/// What the server answers on one connection.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    /// Body pieces, each sent as one HTTP chunk after a short pause.
    chunks: Vec<String>,
    /// Close the socket without the final chunk (a broken stream).
    cut: bool,
    /// After the chunks, keep the connection open until the client goes away.
    hold: bool,
}

fn sse(events: &[&str]) -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type", "text/event-stream")],
        chunks: events.iter().map(|e| format!("{e}\n\n")).collect(),
        cut: false,
        hold: false,
    }
}

#[derive(Default)]
struct Seen {
    requests: Vec<String>,
    client_left: bool,
}

async fn serve(replies: Vec<Reply>) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        for reply in replies {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() >= head_end + 4 + length {
                        break;
                    }
                }
            }
            record
                .lock()
                .unwrap()
                .requests
                .push(String::from_utf8_lossy(&request).into_owned());
            let mut head = format!(
                "HTTP/1.1 {} X\r\ntransfer-encoding: chunked\r\n",
                reply.status
            );
            for (k, v) in &reply.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
            for chunk in &reply.chunks {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = socket
                    .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
                    .await;
            }
            if reply.hold {
                let mut rest = [0u8; 64];
                let gone =
                    tokio::time::timeout(Duration::from_secs(5), socket.read(&mut rest)).await;
                record.lock().unwrap().client_left = matches!(gone, Ok(Ok(0)) | Ok(Err(_)));
                continue;
            }
            if !reply.cut {
                let _ = socket.write_all(b"0\r\n\r\n").await;
            }
        }
    });
    (format!("http://{addr}/v1"), seen)
}

fn request(user: &str) -> LlmRequest {
    LlmRequest {
        messages: vec![
            Message::System {
                content: "be brief".into(),
            },
            Message::user(user),
        ],
        tools: vec![],
    }
}

async fn collect(model: &dyn LanguageModel, r: LlmRequest) -> Vec<Result<LlmChunk, LlmError>> {
    model.stream(r).await.unwrap().collect().await
}

fn openai(base: &str) -> OpenAiCompatible {
    OpenAiCompatible::new(
        base,
        "gpt-4o-mini",
        Some(ApiKey::new("sk-test-123")),
        "OPENAI_API_KEY",
    )
    .unwrap()
}

const TEXT: [&str; 5] = [
    r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
    r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"We open"},"finish_reason":null}]}"#,
    r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" at nine."},"finish_reason":"stop"}]}"#,
    r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#,
    "data: [DONE]",
];

#[tokio::test]
async fn openai_streams_text_and_usage_and_sends_the_documented_request() {
    let (base, seen) = serve(vec![sse(&TEXT)]).await;
    let chunks = collect(&openai(&base), request("When do you open?")).await;
    let chunks: Vec<LlmChunk> = chunks.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        chunks,
        vec![
            LlmChunk::Text("We open".into()),
            LlmChunk::Text(" at nine.".into()),
            LlmChunk::Usage(turnflow::llm::Usage {
                input_tokens: 9,
                output_tokens: 4
            }),
            LlmChunk::End {
                finish_reason: None
            },
        ]
    );
    let requests = &seen.lock().unwrap().requests;
    let r = &requests[0];
    assert!(r.starts_with("POST /v1/chat/completions HTTP/1.1"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("authorization: bearer sk-test-123")
    );
    let body: serde_json::Value =
        serde_json::from_str(&r[r.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(
        body["messages"][1],
        serde_json::json!({"role": "user", "content": "When do you open?"})
    );
}

#[tokio::test]
async fn openai_assembles_streamed_tool_calls() {
    let (base, seen) = serve(vec![sse(&[
        r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"check_availability","arguments":""}}]},"finish_reason":null}]}"#,
        r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"party\":"}}]},"finish_reason":null}]}"#,
        r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":" 4}"}}]},"finish_reason":null}]}"#,
        r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        "data: [DONE]",
    ])])
    .await;
    let mut r = request("Any table for four?");
    r.tools.push(ToolSpec {
        name: "check_availability".into(),
        description: "free tables".into(),
        parameters: serde_json::json!({"type": "object", "properties": {"party": {"type": "integer"}}}),
        effect: ToolEffect::Pure,
    });
    let chunks: Vec<LlmChunk> = collect(&openai(&base), r)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        chunks[0],
        LlmChunk::ToolCall(ToolCall {
            id: "call_a".into(),
            name: "check_availability".into(),
            arguments: serde_json::json!({"party": 4})
        })
    );
    let request = seen.lock().unwrap().requests[0].clone();
    let body: serde_json::Value =
        serde_json::from_str(&request[request.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "check_availability");
    assert_eq!(
        body["tools"][0]["function"]["parameters"]["properties"]["party"]["type"],
        "integer"
    );
}

#[tokio::test]
async fn openai_errors_say_what_to_do() {
    let error = |status, headers: Vec<(&'static str, &'static str)>, body: &str| Reply {
        status,
        headers,
        chunks: vec![body.to_owned()],
        cut: false,
        hold: false,
    };
    let (base, _) = serve(vec![
        error(
            401,
            vec![],
            r#"{"error":{"message":"Incorrect API key provided"}}"#,
        ),
        error(
            429,
            vec![("retry-after", "3")],
            r#"{"error":{"message":"Rate limit reached"}}"#,
        ),
        error(500, vec![], "upstream exploded"),
    ])
    .await;
    let model = openai(&base);
    let messages: Vec<String> = futures_util::future::join_all((0..3).map(|_| async {
        match model.stream(request("hi")).await {
            Err(e) => e.to_string(),
            Ok(_) => "ok".into(),
        }
    }))
    .await;
    let mut messages = messages;
    messages.sort();
    assert!(
        messages.iter().any(
            |m| m.contains("http 401: check OPENAI_API_KEY") && m.contains("Incorrect API key")
        ),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(
            |m| m.contains("rate limited, retry after 3 s") && m.contains("Rate limit reached")
        ),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("http 500: upstream exploded")),
        "{messages:?}"
    );
    assert!(
        messages.iter().all(|m| !m.contains("sk-test-123")),
        "the key never appears"
    );
}

#[tokio::test]
async fn openai_broken_streams_end_with_a_typed_error() {
    let mut cut = sse(&TEXT[..2]);
    cut.cut = true;
    let malformed = sse(&[TEXT[1], "data: {\"choices\": [oops"]);
    let unterminated = sse(&TEXT[..3]);
    for (reply, needle, kind) in [
        (cut, "connection failed", ErrorKind::StreamBroken),
        (malformed, "malformed chunk", ErrorKind::StreamBroken),
        (unterminated, "truncated", ErrorKind::StreamBroken),
    ] {
        let (base, _) = serve(vec![reply]).await;
        let chunks = collect(&openai(&base), request("hi")).await;
        let last = chunks.last().unwrap();
        assert!(
            matches!(last, Err(e) if e.message.contains(needle) && e.kind == kind && e.is_retryable()),
            "{needle}: {chunks:?}"
        );
        assert_eq!(
            chunks[0],
            Ok(LlmChunk::Text("We open".into())),
            "text before the break still arrives"
        );
    }
}

#[tokio::test]
async fn a_stream_that_never_ends_its_event_is_cut_off_at_a_mebibyte() {
    // Text first, then a data line that goes on for two mebibytes, in 64 KiB chunks, and then
    // the connection stays open: the client must not hold all of it, nor wait.
    let mut endless = sse(&TEXT[..2]);
    endless
        .chunks
        .push(format!("data: {}", "x".repeat(64 * 1024 - 6)));
    endless
        .chunks
        .extend(std::iter::repeat_n("x".repeat(64 * 1024), 31));
    endless.hold = true;
    let (base, _) = serve(vec![endless]).await;
    let chunks = collect(&openai(&base), request("hi")).await;
    assert_eq!(chunks[0], Ok(LlmChunk::Text("We open".into())));
    let last = chunks.last().unwrap();
    assert!(
        matches!(last, Err(e) if e.kind == ErrorKind::StreamBroken
            && e.message.contains("an event grew past 1048576 bytes without ending")),
        "{chunks:?}"
    );
}

#[tokio::test]
async fn an_error_with_an_endless_body_is_read_only_as_far_as_its_message_needs() {
    let mut endless = sse(&[]);
    endless.status = 500;
    endless.headers = vec![("content-type", "text/plain")];
    endless.chunks = std::iter::once("overloaded, try later ".to_owned())
        .chain(std::iter::repeat_n("z".repeat(64 * 1024), 64))
        .collect();
    endless.hold = true;
    let (base, seen) = serve(vec![endless]).await;
    let error = match openai(&base).stream(request("hi")).await {
        Err(e) => e,
        Ok(_) => panic!("a 500 is an error"),
    };
    assert_eq!(error.kind, ErrorKind::Server);
    assert!(
        error
            .message
            .starts_with("http 500: overloaded, try later zzz"),
        "{}",
        error.message
    );
    // The server waits up to 5 s for the client to hang up.
    for _ in 0..600 {
        if seen.lock().unwrap().client_left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen.lock().unwrap().client_left,
        "the client hung up instead of reading four mebibytes of error"
    );
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    let mut held = sse(&TEXT[..2]);
    held.hold = true;
    let (base, seen) = serve(vec![held]).await;
    let model = openai(&base);
    let mut stream = model.stream(request("hi")).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        LlmChunk::Text("We open".into())
    );
    drop(stream);
    for _ in 0..100 {
        if seen.lock().unwrap().client_left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen.lock().unwrap().client_left,
        "the server saw the client go away"
    );
}

#[tokio::test]
async fn anthropic_streams_text_and_tool_use_with_the_documented_headers() {
    let events = [
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet\",\"stop_reason\":null,\"usage\":{\"input_tokens\":21,\"output_tokens\":1}}}",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}",
        "event: ping\ndata: {\"type\": \"ping\"}",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Sure, booking.\"}}",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"book_table\",\"input\":{}}}",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"time\\\": \\\"20:00\\\"}\"}}",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":17}}",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}",
    ];
    let (base, seen) = serve(vec![sse(&events)]).await;
    let base = base.trim_end_matches("/v1").to_owned();
    let model =
        turnflow::llm::Anthropic::new(base, "claude-sonnet", ApiKey::new("sk-ant-test")).unwrap();
    let chunks: Vec<LlmChunk> = collect(&model, request("Book eight pm."))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(chunks[0], LlmChunk::Text("Sure, booking.".into()));
    assert_eq!(
        chunks[1],
        LlmChunk::ToolCall(ToolCall {
            id: "toolu_9".into(),
            name: "book_table".into(),
            arguments: serde_json::json!({"time": "20:00"})
        })
    );
    assert_eq!(
        chunks[2],
        LlmChunk::Usage(turnflow::llm::Usage {
            input_tokens: 21,
            output_tokens: 17
        })
    );
    let r = seen.lock().unwrap().requests[0].clone();
    let lower = r.to_ascii_lowercase();
    assert!(r.starts_with("POST /v1/messages HTTP/1.1"));
    assert!(
        lower.contains("x-api-key: sk-ant-test") && lower.contains("anthropic-version: 2023-06-01")
    );
    let body: serde_json::Value =
        serde_json::from_str(&r[r.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["system"], "be brief");
    assert_eq!(body["messages"][0]["role"], "user");
    assert_eq!(body["stream"], true);
}

#[tokio::test]
async fn anthropic_error_event_mid_stream_is_a_typed_error() {
    let (base, _) = serve(vec![sse(&[
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}",
    ])])
    .await;
    let model =
        turnflow::llm::Anthropic::new(base.trim_end_matches("/v1"), "c", ApiKey::new("k")).unwrap();
    let chunks = collect(&model, request("hi")).await;
    assert!(
        matches!(chunks.last(), Some(Err(e)) if e.message.contains("Overloaded") && e.kind == ErrorKind::Server)
    );
}

/// `scenarios/eager_hit.json` simulated with the OpenAI-compatible server at `base` as the
/// model, and `tools`.
async fn eager_hit_against(
    base: &str,
    tools: Option<Arc<dyn turnflow::llm::ToolExecutor>>,
) -> turnflow::sim::SimulationResult {
    let scenario =
        Arc::new(turnflow::scenario::Scenario::load("scenarios/eager_hit.json".as_ref()).unwrap());
    let mut config = turnflow::sim::SimulationConfig::new(scenario.clone());
    config.transport = turnflow::sim::Transport::Memory;
    config.record_audio = false;
    config.backends = Some(turnflow::engine::Backends {
        llm: Arc::new(openai(base)),
        tts: Arc::new(turnflow::tts::SyntheticTts::new(
            16000,
            scenario.tts.clone(),
        )),
        tools,
    });
    turnflow::sim::run(config).await.unwrap()
}

#[tokio::test]
async fn a_session_speaks_what_an_openai_compatible_server_streams() {
    let reply = sse(&TEXT);
    let (base, seen) = serve(vec![reply; 4]).await;
    let result = eager_hit_against(&base, None).await;
    assert_eq!(result.report.turns[0].assistant_heard, "We open at nine.");
    assert_eq!(result.report.turns[0].speculation, "hit");
    let requests = &seen.lock().unwrap().requests;
    assert_eq!(
        requests.len(),
        1,
        "one speculative request, promoted, no second request"
    );
    assert!(requests[0].contains("Can you book me a table for two tonight?"));
}

#[tokio::test]
async fn a_call_with_malformed_arguments_is_answered_not_made_and_the_turn_goes_on() {
    let malformed = sse(&[
        r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"check_availability","arguments":"{\"people\": 4, \"time\": "}}]},"finish_reason":null}]}"#,
        r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
        "data: [DONE]",
    ]);
    let (base, seen) = serve(vec![malformed, sse(&TEXT), sse(&TEXT), sse(&TEXT)]).await;
    let restaurant = Arc::new(turnflow::tools::DemoRestaurant::default());
    let result = eager_hit_against(&base, Some(restaurant.clone())).await;
    assert_eq!(result.report.turns[0].assistant_heard, "We open at nine.");
    assert_eq!(restaurant.lookups(), 0, "the malformed call was never made");
    let requests = &seen.lock().unwrap().requests;
    let second = requests[1].split("\r\n\r\n").nth(1).unwrap();
    let body: serde_json::Value = serde_json::from_str(second).unwrap();
    let messages = body["messages"].as_array().unwrap();
    let n = messages.len();
    assert_eq!(
        messages[n - 2]["tool_calls"][0]["function"]["arguments"],
        r#"{"people": 4, "time": "#,
        "the model sees what it sent"
    );
    assert_eq!(messages[n - 1]["role"], "tool");
    assert_eq!(messages[n - 1]["tool_call_id"], "call_a");
    assert_eq!(
        messages[n - 1]["content"],
        r#"error: the call to check_availability was not made: its arguments must be a JSON object, and they were {"people": 4, "time": "#
    );
}
