//! Failover across language models: retry and switch providers only before the first token.
//!
//! A request goes to the first healthy provider. If it fails before producing its first chunk
//! with a retryable error (rate limited, server, network, broken), it is retried once after
//! `retry_backoff` (or the provider's `retry-after`, up to `longest_retry_wait`); one silent
//! past `first_token_timeout`, a wrong key or a refused request is not retried.
//! Then the provider is marked unhealthy for `probe_after` and the next one is tried. Once a chunk has been produced nothing is retried: that text may already be
//! on its way to the user. An unhealthy provider gets a request again (a probe) once its
//! `probe_after` has passed. A provider failing every request for `trip_after` opens its
//! breaker and is not asked for `cool_down` (see `crate::failover`); the chain is meant to
//! be built once and shared by every session, so they all skip it together.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{LanguageModel, LlmChunk, LlmError, LlmRequest, LlmStream};
use crate::error::ErrorKind;
use crate::failover::{Health, Policy, ProviderHealth};

/// A chain of models tried in order.
pub struct FailoverLlm {
    providers: Vec<Arc<dyn LanguageModel>>,
    health: Health,
    /// Give up on a provider when its first chunk takes longer than this.
    pub first_token_timeout: Duration,
    /// Wait before the single retry of the same provider.
    pub retry_backoff: Duration,
    /// A provider asking to wait longer than this is not retried; the next one is tried.
    pub longest_retry_wait: Duration,
    /// How long a provider that failed a request is tried after the others.
    pub probe_after: Duration,
    /// A provider failing every request for this long is not asked for `cool_down`.
    pub trip_after: Duration,
    /// How long a provider whose breaker opened is not asked.
    pub cool_down: Duration,
    name: String,
}

impl FailoverLlm {
    /// A chain over `providers` (at least one), first preferred; one provider alone still
    /// gets its breaker.
    pub fn new(providers: Vec<Arc<dyn LanguageModel>>) -> Self {
        let names: Vec<&str> = providers.iter().map(|p| p.name()).collect();
        Self {
            health: Health::new("llm", &names),
            name: names.join(","),
            providers,
            first_token_timeout: Duration::from_secs(3),
            retry_backoff: Duration::from_millis(200),
            longest_retry_wait: Duration::from_secs(2),
            probe_after: Duration::from_secs(30),
            trip_after: Duration::from_secs(3),
            cool_down: Duration::from_secs(10),
        }
    }

    /// Whether provider `index` is currently tried last or not at all.
    pub fn is_unhealthy(&self, index: usize) -> bool {
        self.health.is_unhealthy(index)
    }

    async fn first_chunk(
        &self,
        provider: &dyn LanguageModel,
        request: &LlmRequest,
    ) -> Result<(LlmChunk, LlmStream), LlmError> {
        let mut stream = provider.stream(request.clone()).await?;
        match tokio::time::timeout(self.first_token_timeout, stream.next()).await {
            Err(_) => Err(LlmError::new(
                provider.name(),
                ErrorKind::Timeout,
                format!("no first chunk within {:?}", self.first_token_timeout),
            )),
            Ok(None) => Err(LlmError::new(
                provider.name(),
                ErrorKind::EmptyReply,
                "empty stream",
            )),
            Ok(Some(Err(e))) => Err(e),
            Ok(Some(Ok(chunk))) => Ok((chunk, stream)),
        }
    }
}

#[async_trait]
impl LanguageModel for FailoverLlm {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, request: LlmRequest) -> Result<LlmStream, LlmError> {
        let policy = Policy {
            retry_backoff: self.retry_backoff,
            longest_retry_wait: self.longest_retry_wait,
            probe_after: self.probe_after,
            trip_after: self.trip_after,
            cool_down: self.cool_down,
        };
        let request = &request;
        let answered = self
            .health
            .first_success(policy, &self.name, |index| {
                self.first_chunk(&*self.providers[index], request)
            })
            .await;
        match answered {
            Ok((first, rest)) => {
                let stream: Pin<Box<_>> =
                    Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(rest));
                Ok(stream)
            }
            Err(last) => Err(last.unwrap_or_else(|| {
                LlmError::new(
                    self.name.clone(),
                    ErrorKind::BadRequest,
                    "no providers configured",
                )
            })),
        }
    }

    fn health(&self) -> Vec<ProviderHealth> {
        self.health.report()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Message;
    use crate::llm::scripted::{Fault, ScriptedLlm};
    use crate::scenario::LlmTiming;
    use tokio::time::Instant;

    fn request() -> LlmRequest {
        LlmRequest {
            messages: vec![Message::user("hello")],
            tools: vec![],
        }
    }

    async fn text(stream: LlmStream) -> String {
        stream
            .filter_map(|c| async move {
                match c {
                    Ok(LlmChunk::Text(t)) => Some(t),
                    _ => None,
                }
            })
            .collect::<Vec<_>>()
            .await
            .concat()
    }

    fn timing() -> LlmTiming {
        LlmTiming {
            ttft_ms: 100,
            token_interval_ms: 10,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_first_provider_fails_over_and_is_skipped_until_probed() {
        let first = Arc::new(ScriptedLlm::new([], timing()).fail_call(0, Fault::Stall));
        let second = Arc::new(ScriptedLlm::new([], timing()));
        let chain = FailoverLlm::new(vec![first.clone(), second.clone()]);
        let started = Instant::now();
        let reply = text(chain.stream(request()).await.unwrap()).await;
        assert_eq!(reply, "Hello! How can I help you today?");
        // 3 s first-token timeout, then the second provider at once: a retry of the silent
        // one would spend the engine's whole first-token limit on it.
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(3000 + 100 + 6 * 10)
        );
        assert_eq!(first.calls(), 1);
        assert!(chain.is_unhealthy(0));
        text(chain.stream(request()).await.unwrap()).await;
        assert_eq!(first.calls(), 1, "skipped while unhealthy");
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(!chain.is_unhealthy(0));
        text(chain.stream(request()).await.unwrap()).await;
        assert_eq!(first.calls(), 2, "probed again after probe_after");
        assert!(!chain.is_unhealthy(0), "and healthy again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_the_first_token_is_not_retried() {
        let first =
            Arc::new(ScriptedLlm::new([], timing()).fail_call(0, Fault::FailAfterTokens(2)));
        let second = Arc::new(ScriptedLlm::new([], timing()));
        let chain = FailoverLlm::new(vec![first.clone(), second.clone()]);
        let chunks: Vec<_> = chain.stream(request()).await.unwrap().collect().await;
        assert!(
            chunks.last().unwrap().is_err(),
            "the error reaches the engine"
        );
        assert_eq!(second.calls(), 0);
        assert_eq!(first.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn all_failing_returns_the_last_error() {
        let a = Arc::new(
            ScriptedLlm::new([], timing())
                .fail_call(0, Fault::FailAfterTokens(0))
                .fail_call(1, Fault::FailAfterTokens(0)),
        );
        let chain = FailoverLlm::new(vec![a]);
        let Err(e) = chain.stream(request()).await else {
            panic!("expected an error")
        };
        assert!(e.to_string().contains("scripted failure"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_key_is_not_retried_but_the_next_provider_is_asked() {
        let first = Arc::new(ScriptedLlm::new([], timing()).fail_call(0, Fault::Reject(401)));
        let second = Arc::new(ScriptedLlm::new([], timing()));
        let chain = FailoverLlm::new(vec![first.clone(), second.clone()]);
        let started = Instant::now();
        let reply = text(chain.stream(request()).await.unwrap()).await;
        assert_eq!(reply, "Hello! How can I help you today?");
        assert_eq!((first.calls(), second.calls()), (1, 1), "no retry of a 401");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100 + 6 * 10),
            "no back-off either"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_provider_refusing_the_request_fails_once_with_its_kind() {
        let only = Arc::new(ScriptedLlm::new([], timing()).fail_call(0, Fault::Reject(400)));
        let chain = FailoverLlm::new(vec![only.clone()]);
        let Err(e) = chain.stream(request()).await else {
            panic!("refused")
        };
        assert_eq!((e.kind, e.status), (ErrorKind::BadRequest, Some(400)));
        assert_eq!(only.calls(), 1);
    }
}
