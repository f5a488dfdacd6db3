//! The failover loop that the model chain ([`crate::llm::FailoverLlm`]) and the voice chain
//! ([`crate::tts::FailoverTts`]) share, with a circuit breaker per provider.
//!
//! Providers are tried healthy first, each once more after a retryable failure other than a
//! timeout (after the back-off, or the provider's own `retry-after` when it is not too long). A provider that
//! failed both times is tried last for a while (`probe_after`). What counts as success (a
//! first token, a first audio chunk) is the caller's `attempt`.
//!
//! The breaker is what keeps a provider that is down from costing every session its own
//! timeout. A provider that has failed every attempt for `trip_after` opens: it is not asked
//! at all for `cool_down`, and a chain whose providers are all open fails at once (with
//! [`ErrorKind::Unavailable`]), so the engine's apology plays now rather than after a timeout.
//! After the cool-down one request is let through as a probe while the others still skip the
//! provider; its success closes the breaker, its failure opens it again. A chain is built once
//! per process and shared by every session (the voice's per-conversation chains share it
//! too), so one breaker serves all of them.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::{BackendError, ErrorKind};

/// How a chain retries, how long it tries a failed provider last, and when a provider's
/// breaker opens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Wait before the single retry of the same provider.
    pub(crate) retry_backoff: Duration,
    /// A provider asking to wait longer than this is not retried; the next one is tried.
    pub(crate) longest_retry_wait: Duration,
    /// How long a provider that failed a request is tried after the others.
    pub(crate) probe_after: Duration,
    /// A provider failing every attempt for this long opens its breaker.
    pub(crate) trip_after: Duration,
    /// How long an open breaker keeps its provider from being asked.
    pub(crate) cool_down: Duration,
}

/// Whether one provider of a chain is being asked, as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderHealth {
    /// `llm` or `tts`.
    pub kind: &'static str,
    /// The provider's name, with `#2`, `#3`... when a chain holds one name more than once.
    pub provider: String,
    /// False while its breaker is open (or half-open, until its probe succeeds).
    pub up: bool,
}

/// One provider's breaker.
#[derive(Debug, Default, Clone, Copy)]
struct Breaker {
    /// Tried after the others until then.
    demoted_until: Option<Instant>,
    /// The first failed attempt since the last success.
    failing_since: Option<Instant>,
    /// Open until then; half-open after, until a probe answers.
    open_until: Option<Instant>,
    /// A probe of the half-open breaker is in flight.
    probing: bool,
}

/// What a chain may do with a provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Ask,
    Probe,
    Skip,
}

/// The breakers of a chain's providers.
#[derive(Debug)]
pub(crate) struct Health {
    kind: &'static str,
    names: Vec<String>,
    breakers: Mutex<Vec<Breaker>>,
}

/// Releases a probe that ended without an answer (its request was dropped), so that the next
/// request probes instead of the breaker waiting forever.
struct ProbeRelease<'a> {
    health: &'a Health,
    index: usize,
    armed: bool,
}

impl Drop for ProbeRelease<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.health.lock()[self.index].probing = false;
        }
    }
}

impl Health {
    /// Every one of `names` closed; `kind` is `llm` or `tts`.
    pub(crate) fn new(kind: &'static str, names: &[&str]) -> Self {
        let mut labels: Vec<String> = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let earlier = names[..i].iter().filter(|n| *n == name).count();
            labels.push(if earlier == 0 {
                (*name).to_owned()
            } else {
                format!("{name}#{}", earlier + 1)
            });
        }
        Self {
            kind,
            names: labels,
            breakers: Mutex::new(vec![Breaker::default(); names.len()]),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Breaker>> {
        // A panic while holding this lock cannot leave a breaker half-written (each update is
        // one assignment), so a poisoned lock is still good.
        self.breakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether provider `index` is tried last or not at all now.
    pub(crate) fn is_unhealthy(&self, index: usize) -> bool {
        let now = Instant::now();
        let b = self.lock()[index];
        b.demoted_until.is_some_and(|t| now < t) || b.open_until.is_some()
    }

    /// Every provider's state, for `/metrics`.
    pub(crate) fn report(&self) -> Vec<ProviderHealth> {
        self.lock()
            .iter()
            .zip(&self.names)
            .map(|(b, name)| ProviderHealth {
                kind: self.kind,
                provider: name.clone(),
                up: b.open_until.is_none(),
            })
            .collect()
    }

    /// The providers in the order to try them: those not demoted first, each group in the
    /// chain's order.
    fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let breakers = self.lock();
        let (first, last): (Vec<usize>, Vec<usize>) =
            (0..breakers.len()).partition(|i| breakers[*i].demoted_until.is_none_or(|t| now >= t));
        first.into_iter().chain(last).collect()
    }

    fn admit(&self, index: usize) -> Admission {
        let now = Instant::now();
        let mut breakers = self.lock();
        let b = &mut breakers[index];
        match b.open_until {
            None => Admission::Ask,
            Some(t) if now < t || b.probing => Admission::Skip,
            Some(_) => {
                b.probing = true;
                Admission::Probe
            }
        }
    }

    fn succeeded(&self, index: usize) {
        let was_open = std::mem::take(&mut self.lock()[index]).open_until.is_some();
        if was_open {
            info!(kind = self.kind, provider = %self.names[index], "provider answered its probe; breaker closed");
        }
    }

    /// Records a failed attempt; `counts` is false for a failure that says nothing about the
    /// provider's health (a refused request).
    fn failed(&self, index: usize, probe: bool, counts: bool, policy: &Policy) {
        let now = Instant::now();
        let mut breakers = self.lock();
        let b = &mut breakers[index];
        b.probing = false;
        if !counts {
            return;
        }
        let since = *b.failing_since.get_or_insert(now);
        if probe || now.duration_since(since) >= policy.trip_after {
            let reopened = b.open_until.is_some();
            b.open_until = Some(now + policy.cool_down);
            drop(breakers);
            if !reopened {
                warn!(kind = self.kind, provider = %self.names[index], failing_for = ?now.duration_since(since), cool_down = ?policy.cool_down, "provider failed every request; breaker open");
            }
        }
    }

    fn demote(&self, index: usize, policy: &Policy) {
        self.lock()[index].demoted_until = Some(Instant::now() + policy.probe_after);
    }

    /// Runs `attempt` on each provider in turn until one succeeds (see the module docs).
    /// `name` names the chain in errors.
    ///
    /// # Errors
    /// The last provider's error when every one asked failed; an [`ErrorKind::Unavailable`]
    /// error naming the chain when every provider's breaker is open; `None` only for an empty
    /// chain.
    ///
    /// # Cancellation safety
    /// Dropping the future abandons the attempt in progress; what was recorded stays, and a
    /// probe in flight is released for the next request.
    pub(crate) async fn first_success<T, Fut>(
        &self,
        policy: Policy,
        chain: &str,
        mut attempt: impl FnMut(usize) -> Fut,
    ) -> Result<T, Option<BackendError>>
    where
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let mut last_error: Option<BackendError> = None;
        let mut skipped = Vec::new();
        for index in self.order() {
            let admission = self.admit(index);
            if admission == Admission::Skip {
                skipped.push(index);
                continue;
            }
            let probe = admission == Admission::Probe;
            let mut release = ProbeRelease {
                health: self,
                index,
                armed: probe,
            };
            for round in 0..2 {
                if round > 0 {
                    // A provider that used its whole first-output time is not given it again:
                    // the caller's own limit would pass before the next provider is asked.
                    let wait = last_error
                        .as_ref()
                        .filter(|e| e.kind != ErrorKind::Timeout)
                        .and_then(|e| {
                            e.retry_wait(policy.retry_backoff, policy.longest_retry_wait)
                        });
                    let Some(wait) = wait else { break };
                    tokio::time::sleep(wait).await;
                }
                match attempt(index).await {
                    Ok(success) => {
                        release.armed = false;
                        self.succeeded(index);
                        return Ok(success);
                    }
                    Err(e) => {
                        warn!(kind = self.kind, provider = %self.names[index], attempt = round, probe, error = %e, "provider failed before its first output");
                        let counts = e.is_retryable() || e.kind == ErrorKind::Auth;
                        release.armed = false;
                        self.failed(index, probe, counts, &policy);
                        last_error = Some(e);
                        if probe {
                            break;
                        }
                    }
                }
            }
            self.demote(index, &policy);
        }
        if last_error.is_none() && !skipped.is_empty() {
            let names: Vec<&str> = skipped.iter().map(|i| self.names[*i].as_str()).collect();
            return Err(Some(BackendError::new(
                chain,
                ErrorKind::Unavailable,
                format!(
                    "not asked: {} failed every request recently and cool down before the next try",
                    names.join(", ")
                ),
            )));
        }
        Err(last_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            retry_backoff: Duration::from_millis(200),
            longest_retry_wait: Duration::from_secs(2),
            probe_after: Duration::from_secs(30),
            trip_after: Duration::from_secs(3),
            cool_down: Duration::from_secs(10),
        }
    }

    fn down() -> BackendError {
        BackendError::new("p", ErrorKind::Network, "connection refused")
    }

    async fn ask(health: &Health, answer: Result<(), BackendError>) -> Result<(), BackendError> {
        health
            .first_success(policy(), "chain", |_| {
                let answer = answer.clone();
                async move { answer }
            })
            .await
            .map_err(|e| e.expect("one provider"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_failing_for_the_trip_time_opens_then_probes_then_closes() {
        let health = Health::new("llm", &["p"]);
        ask(&health, Err(down())).await.unwrap_err();
        assert!(health.report()[0].up, "one failed request is not an outage");
        tokio::time::sleep(Duration::from_secs(3)).await;
        ask(&health, Err(down())).await.unwrap_err();
        assert!(!health.report()[0].up);
        let skipped = ask(&health, Ok(())).await.unwrap_err();
        assert_eq!(skipped.kind, ErrorKind::Unavailable, "not asked while open");
        assert!(skipped.message.contains("p failed every request"));
        tokio::time::sleep(Duration::from_secs(10)).await;
        ask(&health, Err(down())).await.unwrap_err();
        assert!(!health.report()[0].up, "a failed probe opens it again");
        assert_eq!(
            ask(&health, Ok(())).await.unwrap_err().kind,
            ErrorKind::Unavailable
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        ask(&health, Ok(())).await.unwrap();
        assert!(health.report()[0].up);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_request_says_nothing_about_health() {
        let health = Health::new("tts", &["p"]);
        let refused = BackendError::new("p", ErrorKind::BadRequest, "text too long");
        for _ in 0..5 {
            ask(&health, Err(refused.clone())).await.unwrap_err();
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        assert!(health.report()[0].up);
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_and_a_dropped_probe_is_released() {
        let health = Health::new("llm", &["p"]);
        ask(&health, Err(down())).await.unwrap_err();
        tokio::time::sleep(Duration::from_secs(3)).await;
        ask(&health, Err(down())).await.unwrap_err();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let stalled = health.first_success(policy(), "chain", |_| {
            std::future::pending::<Result<(), BackendError>>()
        });
        tokio::select! {
            biased;
            _ = stalled => unreachable!("pending"),
            () = async {
                tokio::task::yield_now().await;
                let other = ask(&health, Ok(())).await.unwrap_err();
                assert_eq!(other.kind, ErrorKind::Unavailable, "a second request does not probe");
            } => {}
        }
        ask(&health, Ok(())).await.unwrap();
        assert!(
            health.report()[0].up,
            "the dropped probe let the next request probe"
        );
    }

    #[test]
    fn repeated_names_are_told_apart() {
        let health = Health::new("llm", &["openai", "anthropic", "openai"]);
        let names: Vec<_> = health.report().into_iter().map(|p| p.provider).collect();
        assert_eq!(names, ["openai", "anthropic", "openai#2"]);
    }
}
