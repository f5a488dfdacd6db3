//! The failover loop that the model chain ([`crate::llm::FailoverLlm`]) and the voice chain
//! ([`crate::tts::FailoverTts`]) share: providers are tried healthy first, each once more
//! after a retryable failure (after the back-off, or the provider's own `retry-after` when it
//! is not too long), and a provider that failed both times is skipped for a while. What counts
//! as success (a first token, a first audio chunk) is the caller's `attempt`.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::error::BackendError;

/// How a chain retries and how long it skips a provider that failed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Wait before the single retry of the same provider.
    pub(crate) retry_backoff: Duration,
    /// A provider asking to wait longer than this is not retried; the next one is tried.
    pub(crate) longest_retry_wait: Duration,
    /// How long a failed provider is skipped.
    pub(crate) probe_after: Duration,
}

/// Until when each provider of a chain is skipped.
#[derive(Debug)]
pub(crate) struct Health(Mutex<Vec<Option<Instant>>>);

impl Health {
    /// Every one of `providers` healthy.
    pub(crate) fn new(providers: usize) -> Self {
        Self(Mutex::new(vec![None; providers]))
    }

    /// Whether provider `index` is skipped now.
    pub(crate) fn is_unhealthy(&self, index: usize) -> bool {
        self.0.lock().expect("health lock")[index].is_some_and(|t| Instant::now() < t)
    }

    /// The providers in the order to try them: the healthy ones first, each group in the
    /// chain's order.
    fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let health = self.0.lock().expect("health lock");
        let (healthy, skipped): (Vec<usize>, Vec<usize>) =
            (0..health.len()).partition(|i| health[*i].is_none_or(|t| now >= t));
        healthy.into_iter().chain(skipped).collect()
    }

    fn set(&self, index: usize, until: Option<Instant>) {
        self.0.lock().expect("health lock")[index] = until;
    }

    /// Runs `attempt` on each provider in turn until one succeeds (see the module docs).
    /// `what` names the provider kind in the log (`llm`, `voice`), `name` each provider.
    ///
    /// # Errors
    /// The last provider's error when every one failed; `None` only for an empty chain.
    ///
    /// # Cancellation safety
    /// Dropping the future abandons the attempt in progress; health already recorded stays.
    pub(crate) async fn first_success<T, Fut>(
        &self,
        policy: Policy,
        what: &str,
        name: impl Fn(usize) -> String,
        mut attempt: impl FnMut(usize) -> Fut,
    ) -> Result<T, Option<BackendError>>
    where
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let mut last_error: Option<BackendError> = None;
        for index in self.order() {
            for round in 0..2 {
                if round > 0 {
                    let wait = last_error.as_ref().and_then(|e| {
                        e.retry_wait(policy.retry_backoff, policy.longest_retry_wait)
                    });
                    let Some(wait) = wait else { break };
                    tokio::time::sleep(wait).await;
                }
                match attempt(index).await {
                    Ok(success) => {
                        self.set(index, None);
                        return Ok(success);
                    }
                    Err(e) => {
                        warn!(provider = %name(index), attempt = round, error = %e, "{what} failed before its first output");
                        last_error = Some(e);
                    }
                }
            }
            self.set(index, Some(Instant::now() + policy.probe_after));
        }
        Err(last_error)
    }
}
