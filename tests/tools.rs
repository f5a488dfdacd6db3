//! Tools under speculation and barge-in, on tokio's paused clock with the demo restaurant: a
//! lookup runs while the reply is a guess and is not made again on promotion; a booking the
//! user talks over completes once, enters the history with its result, and is what the next
//! request sees.

#[path = "support/http.rs"]
mod http;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use turnflow::engine::log::LogKind;
use turnflow::engine::{Backends, TOOL_STILL_RUNNING};
use turnflow::flux::TurnEvent;
use turnflow::llm::{LanguageModel, LlmError, LlmRequest, LlmStream, Message, ScriptedLlm};
use turnflow::scenario::Scenario;
use turnflow::sim::{SimulationConfig, SimulationResult, Transport, run};
use turnflow::tools::DemoRestaurant;
use turnflow::tts::SyntheticTts;

/// The scripted model, keeping every request it was sent.
struct Listening {
    inner: ScriptedLlm,
    requests: Mutex<Vec<LlmRequest>>,
}

#[async_trait]
impl LanguageModel for Listening {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, LlmError> {
        self.requests.lock().unwrap().push(request.clone());
        self.inner.stream(request).await
    }
}

async fn simulate(
    scenario: &str,
    restaurant: Arc<DemoRestaurant>,
) -> (SimulationResult, Vec<LlmRequest>) {
    simulate_with(scenario, restaurant, true).await
}

async fn simulate_with(
    scenario: &str,
    restaurant: Arc<DemoRestaurant>,
    tools_on_guess: bool,
) -> (SimulationResult, Vec<LlmRequest>) {
    let scenario = Arc::new(Scenario::parse(scenario, "tools").unwrap());
    let llm = Arc::new(Listening {
        inner: ScriptedLlm::from_scenario(&scenario),
        requests: Mutex::default(),
    });
    let mut config = SimulationConfig::new(scenario.clone());
    config.transport = Transport::Memory;
    config.session.response.tools_on_guess = tools_on_guess;
    config.backends = Some(Backends {
        llm: llm.clone(),
        tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
        tools: Some(restaurant),
    });
    let result = run(config).await.unwrap();
    let requests = llm.requests.lock().unwrap().clone();
    (result, requests)
}

fn first_at(r: &SimulationResult, matches: impl Fn(&LogKind) -> bool) -> tokio::time::Instant {
    r.log
        .iter()
        .find_map(|e| matches(&e.kind).then_some(e.at))
        .expect("logged")
}

#[tokio::test(start_paused = true)]
async fn a_lookup_runs_while_the_reply_is_a_guess_and_is_not_made_again() {
    let restaurant = Arc::new(DemoRestaurant::default());
    let (r, requests) = simulate(
        r#"{"name":"lookup","listen":{"eager_eot_threshold":0.4,"eot_threshold":0.7},
        "turns":[{"start":{"at_ms":500},
          "phrases":[{"text":"A table for four at seven?","eot_confidence":0.92,"ramp_ms":1600}],
          "calls":[{"tool":"check_availability","arguments":{"people":4,"time":"19:00"}}],
          "reply":"Yes, a table for four is free at seven."}]}"#,
        restaurant.clone(),
    )
    .await;
    assert_eq!(
        r.report.turns[0].assistant_heard,
        "Yes, a table for four is free at seven."
    );
    assert_eq!(r.report.turns[0].speculation.as_str(), "hit");
    assert_eq!(restaurant.lookups(), 1, "made once, reused on promotion");
    let started = first_at(&r, |k| {
        matches!(
            k,
            LogKind::ToolStarted {
                speculative: true,
                ..
            }
        )
    });
    let end = first_at(&r, |k| {
        matches!(
            k,
            LogKind::Flux {
                event: TurnEvent::EndOfTurn,
                ..
            }
        )
    });
    assert!(started < end, "the lookup started before EndOfTurn");
    let calls = &r.report.turns[0].tool_calls;
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        (call.tool.as_str(), call.outcome.as_str()),
        ("check_availability", "ok")
    );
    assert!(call.speculative && !call.withdrawn);
    assert!(
        call.start_ms.is_some_and(|at| at < 0.0),
        "before EndOfTurn: {:?}",
        call.start_ms
    );
    assert_eq!(call.duration_ms, Some(300.0));
    // The reply's second round carries the lookup's result to the model.
    let second = requests.last().unwrap();
    assert!(matches!(
        second.messages.last(),
        Some(Message::Tool { content, .. }) if content.contains("\"free_tables\":4")
    ));
    // And the history keeps the call and its result before what was said.
    let n = r.history.len();
    assert!(
        matches!(&r.history[n - 3], Message::Assistant { tool_calls, .. } if tool_calls[0].name == "check_availability")
    );
    assert!(matches!(&r.history[n - 2], Message::Tool { .. }));
    assert!(
        matches!(&r.history[n - 1], Message::Assistant { content, .. } if content.starts_with("Yes,"))
    );
}

#[tokio::test(start_paused = true)]
async fn holding_the_lookup_until_the_end_of_turn_costs_the_part_it_would_have_overlapped() {
    const LOOKUP: &str = r#"{"name":"lookup","listen":{"eager_eot_threshold":0.4,"eot_threshold":0.7},
        "turns":[{"start":{"at_ms":500},
          "phrases":[{"text":"A table for four at seven?","eot_confidence":0.92,"ramp_ms":1600}],
          "calls":[{"tool":"check_availability","arguments":{"people":4,"time":"19:00"}}],
          "reply":"Yes, a table for four is free at seven."}]}"#;
    let (guess, _) = simulate_with(LOOKUP, Arc::new(DemoRestaurant::default()), true).await;
    let (held, _) = simulate_with(LOOKUP, Arc::new(DemoRestaurant::default()), false).await;
    let (g, h) = (&guess.report.turns[0], &held.report.turns[0]);
    assert!(g.tool_calls[0].speculative && !h.tool_calls[0].speculative);
    assert!(
        h.tool_calls[0].start_ms.is_some_and(|at| at >= 0.0),
        "held until EndOfTurn"
    );
    // The call comes 350 ms into the 480 ms lead: 130 ms of the 300 ms lookup ran before
    // EndOfTurn, and that is what holding it costs.
    assert_eq!(g.lead_ms, Some(480.0));
    assert_eq!(
        h.response_latency_ms.unwrap() - g.response_latency_ms.unwrap(),
        130.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_booking_the_user_talks_over_completes_once_and_the_next_turn_knows_it() {
    // The booking takes 6 s; the filler line plays 700 ms in, and the user speaks over it.
    let restaurant = Arc::new(DemoRestaurant::new(
        Duration::from_millis(300),
        Duration::from_secs(6),
    ));
    let (r, requests) = simulate(
        r#"{"name":"booking","listen":{"eot_threshold":0.7},
        "turns":[
          {"start":{"at_ms":500},"say":"Book a table for two at seven for Jordan.",
           "calls":[{"tool":"book_table","arguments":{"name":"Jordan","people":2,"time":"19:00"}}],
           "reply":"Your table for two at seven is booked."},
          {"start":{"barge_in_ms":300},"say":"Did that work?","reply":"Yes, it did."}]}"#,
        restaurant.clone(),
    )
    .await;
    assert_eq!(restaurant.bookings().len(), 1, "booked once");
    assert!(r.report.turns[0].interrupted, "the reply was cut");
    assert_eq!(r.report.turns[0].assistant_heard, "One moment.");
    // The next turn's request went out while the booking still ran: the model is told so.
    let next = requests
        .iter()
        .find(|q| {
            q.messages
                .iter()
                .any(|m| matches!(m, Message::User { content } if content == "Did that work?"))
        })
        .expect("the next turn's request");
    let told: Vec<&Message> = next
        .messages
        .iter()
        .filter(|m| matches!(m, Message::Tool { .. }))
        .collect();
    assert!(
        matches!(told[..], [Message::Tool { content, .. }] if content == TOOL_STILL_RUNNING),
        "{told:?}"
    );
    assert_eq!(
        requests
            .iter()
            .filter(|q| !matches!(q.messages.last(), Some(Message::Tool { .. })))
            .count(),
        2,
        "one request per user turn: the booking was not asked for again"
    );
    // When it finished, its result took the place of "still running".
    let result = r
        .history
        .iter()
        .find_map(|m| match m {
            Message::Tool { content, .. } => Some(content.as_str()),
            _ => None,
        })
        .expect("the booking in the history");
    assert!(result.contains("\"booked\""), "{result}");
    let ended = r
        .log
        .iter()
        .filter(|e| matches!(e.kind, LogKind::ToolEnded { outcome: "ok", .. }))
        .count();
    assert_eq!(ended, 1);
    let booking = &r.report.turns[0].tool_calls[0];
    assert_eq!(booking.tool, "book_table");
    assert!(!booking.speculative);
    assert_eq!(booking.duration_ms, Some(6000.0), "it ran to its end");
}

/// A backend on loopback: what it was sent, and its answers (`/down` refuses, `/silent` never
/// answers).
async fn backend() -> (String, http::Requests) {
    http::recorder(|path| {
        if path.starts_with("/down") {
            Some(("503 Service Unavailable", "maintenance until 9".to_owned()))
        } else if path.starts_with("/silent") {
            None
        } else {
            Some(("200 OK", r#"{"status":"shipped"}"#.to_owned()))
        }
    })
    .await
}

fn order_tool(url: &str, method: turnflow::tools::webhook::Method) -> turnflow::tools::WebhookTool {
    turnflow::tools::WebhookTool::new(
        turnflow::llm::ToolSpec {
            name: "order_status".into(),
            description: "Where an order is".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}),
            effect: turnflow::llm::ToolEffect::Pure,
        },
        url,
        method,
        Duration::from_millis(500),
        &[("authorization".into(), "Bearer s3cret".into())],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_tools_post_or_query_and_every_failure_reaches_the_model() {
    use turnflow::llm::{ToolCall, ToolExecutor};
    use turnflow::tools::webhook::Method;
    let (url, seen) = backend().await;
    let call = ToolCall {
        id: "call_7".into(),
        name: "order_status".into(),
        arguments: serde_json::json!({"order": "A 17/b"}),
    };
    let posted = order_tool(&format!("{url}/orders"), Method::Post);
    assert_eq!(posted.call(&call).await.unwrap(), r#"{"status":"shipped"}"#);
    let queried = order_tool(&format!("{url}/orders"), Method::Get);
    queried.call(&call).await.unwrap();
    {
        let seen = seen.lock().unwrap();
        let (head, body) = &seen[0];
        assert!(head.starts_with("POST /orders HTTP/1.1"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json"), "{head}");
        assert!(lower.contains("authorization: bearer s3cret"));
        assert!(lower.contains("x-turnflow-tool-call: call_7"));
        assert_eq!(body, r#"{"order":"A 17/b"}"#);
        assert!(
            seen[1]
                .0
                .starts_with("GET /orders?order=A%2017%2Fb HTTP/1.1"),
            "{}",
            seen[1].0
        );
    }
    let down = order_tool(&format!("{url}/down"), Method::Post);
    assert_eq!(
        down.call(&call).await.unwrap_err(),
        "order_status answered HTTP 503: maintenance until 9"
    );
    let silent = order_tool(&format!("{url}/silent"), Method::Post);
    let error = silent.call(&call).await.unwrap_err();
    assert!(
        error.starts_with("order_status could not be reached"),
        "{error}"
    );
    let closed = order_tool("http://127.0.0.1:9/orders", Method::Post);
    let error = closed.call(&call).await.unwrap_err();
    assert!(
        error.starts_with("order_status could not be reached"),
        "{error}"
    );
    assert!(
        !format!("{posted:?}").contains("s3cret"),
        "headers never shown"
    );
    let insecure = turnflow::tools::WebhookTool::new(
        turnflow::llm::ToolSpec {
            name: "order_status".into(),
            description: String::new(),
            parameters: serde_json::json!({"type": "object"}),
            effect: turnflow::llm::ToolEffect::Pure,
        },
        "http://orders.example/status",
        Method::Post,
        Duration::from_secs(1),
        &[("authorization".into(), "Bearer s3cret".into())],
    )
    .unwrap_err();
    assert!(insecure.to_string().contains("unencrypted"), "{insecure}");
}
