//! The scripted model: replies from the scenario, with scripted latency, tool calls and faults.
//!
//! It is the embedded default of `turnflow simulate` and the test fake of the engine. A reply
//! is chosen by the words of the last user message (compared like transcripts); unknown
//! requests get a short rule-based answer. Tokens are words with their leading space, token n
//! due at request + `ttft_ms` + n x `token_interval_ms`: absolute deadlines on tokio's clock, so
//! paused tests are exact and on the real clock timer slack does not add up from token to
//! token. A [`Stepper`] instead releases tokens one at a time from a test.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{LanguageModel, LlmChunk, LlmError, LlmRequest, LlmStream, Message, ToolCall, Usage};
use crate::scenario::{LlmTiming, Scenario};
use crate::text::normalize;

/// A scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedReply {
    /// The text of the reply (after the tool results, when there are tool calls).
    pub text: String,
    /// Tool calls made together before the text: name and arguments.
    pub tool_calls: Vec<(String, serde_json::Value)>,
}

impl ScriptedReply {
    /// A plain text reply.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            tool_calls: Vec::new(),
        }
    }
}

/// A scripted failure of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The stream errors after this many text tokens.
    FailAfterTokens(usize),
    /// The stream exists but no token ever arrives.
    Stall,
    /// The request is accepted and never answered: `stream` never returns (a server that
    /// sends no headers).
    StallBeforeStream,
    /// `stream` returns only after this long (headers arrive late, with the first token).
    DelayStream(Duration),
    /// The stream stops after this many tokens without ending.
    StallAfterTokens(usize),
    /// The reply has no text at all, only its end.
    Empty,
    /// The request is refused with this HTTP status (401: a wrong key, 429: rate limited).
    Reject(u16),
}

/// Releases tokens one by one in tests.
#[derive(Debug, Clone)]
pub struct Stepper(Arc<Semaphore>);

impl Stepper {
    /// Lets `n` more tokens through.
    pub fn release(&self, n: usize) {
        self.0.add_permits(n);
    }
}

/// The scripted language model.
#[derive(Debug)]
pub struct ScriptedLlm {
    replies: HashMap<String, ScriptedReply>,
    timing: LlmTiming,
    faults: Mutex<HashMap<u64, Fault>>,
    calls: AtomicU64,
    stepper: Option<Stepper>,
}

impl ScriptedLlm {
    /// A model answering `replies` (user transcript -> reply) with `timing`.
    pub fn new(
        replies: impl IntoIterator<Item = (String, ScriptedReply)>,
        timing: LlmTiming,
    ) -> Self {
        Self {
            replies: replies
                .into_iter()
                .map(|(user, reply)| (normalize(&user), reply))
                .collect(),
            timing,
            faults: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
            stepper: None,
        }
    }

    /// A model answering the scenario's scripted replies, with their tool calls, with its
    /// latencies.
    pub fn from_scenario(scenario: &Scenario) -> Self {
        Self::new(
            scenario.turns.iter().filter_map(|t| {
                t.reply.as_ref().map(|r| {
                    let reply = ScriptedReply {
                        text: r.clone(),
                        tool_calls: t
                            .calls
                            .iter()
                            .map(|c| (c.tool.clone(), c.arguments.clone()))
                            .collect(),
                    };
                    (t.transcript(), reply)
                })
            }),
            scenario.llm.clone(),
        )
    }

    /// Makes request number `call` (0-based, counting every request) fail.
    pub fn fail_call(self, call: u64, fault: Fault) -> Self {
        self.faults.lock().expect("faults lock").insert(call, fault);
        self
    }

    /// Switches to stepped mode; tokens flow only as the returned stepper releases them.
    pub fn stepped(mut self) -> (Self, Stepper) {
        let stepper = Stepper(Arc::new(Semaphore::new(0)));
        self.stepper = Some(stepper.clone());
        (self, stepper)
    }

    /// Requests made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn answer(&self, request: &LlmRequest) -> (Vec<LlmChunk>, usize) {
        let last_user = request.messages.iter().rev().find_map(|m| match m {
            Message::User { content } => Some(content.as_str()),
            _ => None,
        });
        let after_tool = matches!(request.messages.last(), Some(Message::Tool { .. }));
        let reply = last_user
            .and_then(|u| self.replies.get(&normalize(u)).cloned())
            .unwrap_or_else(|| ScriptedReply::text(rule_based(last_user.unwrap_or(""))));
        let mut chunks = Vec::new();
        if !reply.tool_calls.is_empty() && !after_tool {
            let request = self.calls();
            for (n, (name, arguments)) in reply.tool_calls.iter().enumerate() {
                chunks.push(LlmChunk::ToolCall(ToolCall {
                    id: format!("call_{request}_{n}"),
                    name: name.clone(),
                    arguments: arguments.clone(),
                }));
            }
            return (chunks, 0);
        }
        let mut first = true;
        for word in reply.text.split_whitespace() {
            let token = if first {
                word.to_owned()
            } else {
                format!(" {word}")
            };
            first = false;
            chunks.push(LlmChunk::Text(token));
        }
        let tokens = chunks.len();
        (chunks, tokens)
    }
}

fn rule_based(user: &str) -> String {
    let n = normalize(user);
    if n.is_empty() {
        "Sorry, I didn't catch that.".into()
    } else if ["hi", "hello", "hey"]
        .iter()
        .any(|g| n.split(' ').next() == Some(*g))
    {
        "Hello! How can I help you today?".into()
    } else if user.trim_end().ends_with('?') {
        "Good question. Let me check that for you.".into()
    } else {
        "Okay, I understand.".into()
    }
}

#[async_trait]
impl LanguageModel for ScriptedLlm {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, LlmError> {
        let requested_at = Instant::now();
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let fault = self.faults.lock().expect("faults lock").remove(&call);
        match fault {
            Some(Fault::Reject(status)) => {
                return Err(LlmError::http(
                    "scripted",
                    status,
                    None,
                    format!("http {status}: scripted refusal"),
                ));
            }
            Some(Fault::StallBeforeStream) => std::future::pending::<()>().await,
            Some(Fault::DelayStream(delay)) => tokio::time::sleep_until(requested_at + delay).await,
            _ => {}
        }
        let (chunks, output_tokens) = if fault == Some(Fault::Empty) {
            (Vec::new(), 0)
        } else {
            self.answer(&request)
        };
        let input_tokens = request
            .messages
            .iter()
            .map(|m| match m {
                Message::System { content }
                | Message::User { content }
                | Message::Assistant { content, .. }
                | Message::Tool { content, .. } => content.split_whitespace().count() as u64,
            })
            .sum();
        let finish = if chunks.iter().any(|c| matches!(c, LlmChunk::ToolCall(_))) {
            "tool_calls"
        } else {
            "stop"
        };
        let mut all = chunks;
        all.push(LlmChunk::Usage(Usage {
            input_tokens,
            output_tokens: output_tokens as u64,
        }));
        all.push(LlmChunk::End {
            finish_reason: Some(finish.into()),
        });
        let state = StreamState {
            chunks: all.into_iter(),
            index: 0,
            first_due: requested_at
                + match fault {
                    Some(Fault::DelayStream(delay)) => delay,
                    _ => Duration::from_millis(self.timing.ttft_ms),
                },
            interval: Duration::from_millis(self.timing.token_interval_ms),
            fault,
            stepper: self.stepper.clone(),
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(state, next_chunk)))
    }
}

struct StreamState {
    chunks: std::vec::IntoIter<LlmChunk>,
    index: usize,
    /// When the first token is due: the request plus the time to first token. Token n is due
    /// `n` intervals later, whenever the consumer polls (absolute deadlines, so polling late
    /// does not push every later token back).
    first_due: Instant,
    interval: Duration,
    fault: Option<Fault>,
    stepper: Option<Stepper>,
    done: bool,
}

async fn next_chunk(mut s: StreamState) -> Option<(Result<LlmChunk, LlmError>, StreamState)> {
    if s.done {
        return None;
    }
    let chunk = s.chunks.next()?;
    let is_token = matches!(chunk, LlmChunk::Text(_) | LlmChunk::ToolCall(_));
    if is_token {
        match s.fault {
            Some(Fault::Stall) => std::future::pending::<()>().await,
            Some(Fault::StallAfterTokens(n)) if s.index >= n => std::future::pending::<()>().await,
            Some(Fault::FailAfterTokens(n)) if s.index >= n => {
                s.done = true;
                return Some((
                    Err(LlmError::new(
                        "scripted",
                        crate::error::ErrorKind::StreamBroken,
                        format!("scripted failure after {n} tokens"),
                    )),
                    s,
                ));
            }
            _ => {}
        }
        match &s.stepper {
            Some(stepper) => stepper
                .0
                .acquire()
                .await
                .expect("stepper semaphore is never closed")
                .forget(),
            None => {
                let due = s.first_due + s.interval * s.index as u32;
                tokio::time::sleep_until(due).await;
            }
        }
        s.index += 1;
    }
    Some((Ok(chunk), s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn request(user: &str) -> LlmRequest {
        LlmRequest {
            messages: vec![Message::user(user)],
            tools: Vec::new(),
        }
    }

    async fn collect(model: &ScriptedLlm, r: LlmRequest) -> Vec<Result<LlmChunk, LlmError>> {
        model.stream(r).await.unwrap().collect().await
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_keep_their_absolute_deadlines_when_read_late() {
        let model = ScriptedLlm::new(
            [(
                "Are you open?".to_owned(),
                ScriptedReply::text("Yes we are open until nine tonight."),
            )],
            LlmTiming {
                ttft_ms: 100,
                token_interval_ms: 10,
            },
        );
        let requested = Instant::now();
        let mut stream = model.stream(request("are you open")).await.unwrap();
        // The consumer is busy for 130 ms: tokens 0-3 (due at 100, 110, 120, 130 ms) are ready.
        tokio::time::sleep(Duration::from_millis(130)).await;
        let mut times = Vec::new();
        while let Some(chunk) = stream.next().await {
            if let LlmChunk::Text(_) = chunk.unwrap() {
                times.push(requested.elapsed().as_millis());
            }
        }
        assert_eq!(times, vec![130, 130, 130, 130, 140, 150, 160]);
    }

    #[tokio::test(start_paused = true)]
    async fn replies_by_transcript_with_scripted_timing() {
        let model = ScriptedLlm::new(
            [(
                "Are you open?".to_owned(),
                ScriptedReply::text("Yes we are."),
            )],
            LlmTiming {
                ttft_ms: 300,
                token_interval_ms: 20,
            },
        );
        let start = Instant::now();
        let mut stream = model.stream(request("are you OPEN")).await.unwrap();
        let mut texts = Vec::new();
        let mut times = Vec::new();
        while let Some(chunk) = stream.next().await {
            if let LlmChunk::Text(t) = chunk.unwrap() {
                texts.push(t);
                times.push(start.elapsed().as_millis());
            }
        }
        assert_eq!(texts, vec!["Yes", " we", " are."]);
        assert_eq!(times, vec![300, 320, 340]);
    }

    #[tokio::test(start_paused = true)]
    async fn usage_end_and_rule_based_fallback() {
        let model = ScriptedLlm::new([], LlmTiming::default());
        let chunks = collect(&model, request("hello there")).await;
        let text: String = chunks
            .iter()
            .filter_map(|c| match c {
                Ok(LlmChunk::Text(t)) => Some(t.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Hello! How can I help you today?");
        assert!(matches!(
            chunks[chunks.len() - 2],
            Ok(LlmChunk::Usage(Usage {
                input_tokens: 2,
                output_tokens: 7
            }))
        ));
        assert!(matches!(chunks.last(), Some(Ok(LlmChunk::End { .. }))));
        assert_eq!(model.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn tool_call_then_text_after_the_result() {
        let model = ScriptedLlm::new(
            [(
                "book it".to_owned(),
                ScriptedReply {
                    text: "Booked.".into(),
                    tool_calls: vec![("book_table".into(), serde_json::json!({"people": 4}))],
                },
            )],
            LlmTiming::default(),
        );
        let first = collect(&model, request("Book it.")).await;
        let Ok(LlmChunk::ToolCall(call)) = &first[0] else {
            panic!("{first:?}")
        };
        assert_eq!(call.name, "book_table");
        let mut r = request("Book it.");
        r.messages.push(Message::Tool {
            call_id: call.id.clone(),
            content: "ok".into(),
        });
        let second = collect(&model, r).await;
        assert_eq!(second[0], Ok(LlmChunk::Text("Booked.".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn faults_and_stepping() {
        let model =
            ScriptedLlm::new([], LlmTiming::default()).fail_call(0, Fault::FailAfterTokens(2));
        let chunks = collect(&model, request("tell me more")).await;
        assert_eq!(chunks.len(), 3);
        assert!(chunks[2].is_err());
        let ok = collect(&model, request("tell me more")).await;
        assert!(ok.iter().all(Result::is_ok), "only call 0 fails");

        let (model, stepper) = ScriptedLlm::new([], LlmTiming::default()).stepped();
        let mut stream = model.stream(request("tell me more")).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_secs(60), stream.next()).await;
        assert!(waiting.is_err(), "no token before release");
        stepper.release(1);
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            LlmChunk::Text("Okay,".into())
        );

        let stalled = ScriptedLlm::new([], LlmTiming::default()).fail_call(0, Fault::Stall);
        let mut s = stalled.stream(request("x")).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(600), s.next())
                .await
                .is_err()
        );
    }
}
