//! Retries: which failures are worth another try, how long to wait, and the
//! budget that keeps a failing backend from a retry storm. The policy plugs
//! into `tower::retry::Retry`; the budget is tower's `TpsBudget`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Response, StatusCode};
use tokio::time::Instant;
use tower::retry::budget::{Budget as _, TpsBudget};

use super::{Attempt, DispatchError};
use crate::body::Body;
use crate::metrics::Metrics;
use crate::upstream::{Cause, Failure};

/// `routing:` compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Tries per alias, the first included.
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub on_connect: bool,
    pub on_timeout: bool,
    pub on_status: Vec<u16>,
    pub cooldown_after: u32,
    pub cooldown_for: Duration,
    pub budget: RetryBudget,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub ratio: f32,
    pub min_per_second: u32,
    pub window: Duration,
}

impl Routing {
    /// Why this failure may be retried on another target (the `reason`
    /// metric label), or `None` when it ends the alias.
    pub fn retry_reason(&self, f: &Failure) -> Option<Cow<'static, str>> {
        let status = |s: u16| {
            self.on_status
                .contains(&s)
                .then(|| Cow::Owned(s.to_string()))
        };
        match f.cause {
            Cause::Connect => self.on_connect.then_some(Cow::Borrowed("connect")),
            Cause::FirstByteTimeout | Cause::IdleTimeout => {
                self.on_timeout.then_some(Cow::Borrowed("timeout"))
            }
            // The request's own deadline is gone: nothing can be retried.
            Cause::TotalTimeout => None,
            // The client's mistake, not the backend's.
            c if c.is_client_error() => None,
            // The gateway's credentials for this provider: another target may have good ones.
            Cause::Status(s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)) => {
                Some(Cow::Owned(s.as_u16().to_string()))
            }
            Cause::Status(s) => status(s.as_u16()),
            Cause::Protocol | Cause::InBand => {
                status(502).map(|_| Cow::Borrowed("invalid_response"))
            }
            Cause::Saturated => Some(Cow::Borrowed("saturated")),
        }
    }

    /// Full-jitter exponential backoff before try number `tries + 1`; a
    /// backend's `retry-after` is honoured when it is within `backoff.max`.
    pub fn backoff(&self, tries: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(after) if after <= self.backoff_max => return after,
            // The target is cooling down for that long: go elsewhere at once.
            Some(_) => return Duration::ZERO,
            None => {}
        }
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << tries.saturating_sub(1).min(20));
        let ceiling = exp.min(self.backoff_max);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// The retry policy of one request's session with one alias.
#[derive(Clone)]
pub struct RetryPolicy {
    metrics: Arc<Metrics>,
    tries: u32,
}

impl RetryPolicy {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RetryPolicy { metrics, tries: 0 }
    }
}

impl tower::retry::Policy<Attempt, Response<Body>, DispatchError> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        attempt: &mut Attempt,
        result: &mut Result<Response<Body>, DispatchError>,
    ) -> Option<Self::Future> {
        let Err(DispatchError::Failed {
            failure,
            provider,
            target,
            last_resort,
        }) = result
        else {
            return None;
        };
        self.tries += 1;
        let routing = &attempt.call.snapshot.routing;
        if *last_resort || self.tries >= routing.attempts {
            return None;
        }
        let reason = routing.retry_reason(failure)?;
        let delay = if failure.cause == Cause::Saturated {
            // Nothing reached a backend: go to another target at once, no budget spent.
            Duration::ZERO
        } else {
            if !attempt.alias.budget.withdraw() {
                tracing::debug!(alias = %attempt.alias.name, "retry budget spent; not retrying");
                return None;
            }
            routing.backoff(self.tries, failure.retry_after)
        };
        let deadline = attempt.call.started + provider.timeouts.total;
        if Instant::now() + delay >= deadline {
            return None;
        }
        attempt.tried.push(*target);
        self.metrics
            .retries
            .with_label_values(&[provider.id.as_ref(), reason.as_ref()])
            .inc();
        tracing::debug!(
            provider = %provider.id,
            reason = %reason,
            delay_ms = delay.as_millis() as u64,
            "retrying on another target"
        );
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, attempt: &Attempt) -> Option<Attempt> {
        Some(attempt.clone())
    }
}

/// Retry budgets by alias, kept across reloads while their numbers stay.
#[derive(Default)]
pub struct BudgetTable {
    budgets: Mutex<HashMap<Arc<str>, SpecBudget>>,
}

/// A budget and the numbers it was made with.
type SpecBudget = (RetryBudget, Arc<TpsBudget>);

impl BudgetTable {
    pub fn budget(&self, alias: &Arc<str>, spec: RetryBudget) -> Arc<TpsBudget> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let entry = budgets
            .entry(alias.clone())
            .or_insert_with(|| (spec, Arc::new(new_budget(spec))));
        if entry.0 != spec {
            *entry = (spec, Arc::new(new_budget(spec)));
        }
        entry.1.clone()
    }

    /// Holds exactly the installed snapshot's budgets, whatever a compile
    /// that was then rejected put here.
    pub fn reconcile(
        &self,
        spec: RetryBudget,
        installed: impl IntoIterator<Item = (Arc<str>, Arc<TpsBudget>)>,
    ) {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        *budgets = installed
            .into_iter()
            .map(|(alias, budget)| (alias, (spec, budget)))
            .collect();
    }
}

fn new_budget(spec: RetryBudget) -> TpsBudget {
    TpsBudget::new(spec.window, spec.min_per_second, spec.ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> Routing {
        Routing {
            attempts: 3,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            on_connect: true,
            on_timeout: true,
            on_status: vec![429, 500, 502, 503, 504, 529],
            cooldown_after: 3,
            cooldown_for: Duration::from_secs(30),
            budget: RetryBudget {
                ratio: 0.2,
                min_per_second: 10,
                window: Duration::from_secs(10),
            },
        }
    }

    fn failure(cause: Cause) -> Failure {
        Failure::new(cause, "x")
    }

    #[test]
    fn only_configured_conditions_retry() {
        let r = routing();
        let reason = |c| r.retry_reason(&failure(c)).map(|r| r.into_owned());
        assert_eq!(reason(Cause::Connect).as_deref(), Some("connect"));
        assert_eq!(reason(Cause::FirstByteTimeout).as_deref(), Some("timeout"));
        assert_eq!(
            reason(Cause::Status(StatusCode::SERVICE_UNAVAILABLE)).as_deref(),
            Some("503")
        );
        assert_eq!(
            reason(Cause::Status(StatusCode::from_u16(529).unwrap())).as_deref(),
            Some("529")
        );
        assert_eq!(reason(Cause::Status(StatusCode::NOT_IMPLEMENTED)), None);
        assert_eq!(reason(Cause::Status(StatusCode::BAD_REQUEST)), None);
        assert_eq!(
            reason(Cause::Status(StatusCode::UNAUTHORIZED)).as_deref(),
            Some("401")
        );
        assert_eq!(reason(Cause::TotalTimeout), None);
        assert_eq!(reason(Cause::InBand).as_deref(), Some("invalid_response"));
        let mut strict = routing();
        strict.on_connect = false;
        strict.on_status.clear();
        assert_eq!(strict.retry_reason(&failure(Cause::Connect)), None);
        assert_eq!(strict.retry_reason(&failure(Cause::InBand)), None);
    }

    #[test]
    fn backoff_is_full_jitter_capped_and_honours_short_retry_after() {
        let r = routing();
        for tries in 1..10 {
            let ceiling =
                Duration::from_millis(100 * (1 << (tries - 1))).min(Duration::from_secs(2));
            for _ in 0..50 {
                assert!(r.backoff(tries, None) <= ceiling);
            }
        }
        assert_eq!(
            r.backoff(1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert!(r.backoff(1, Some(Duration::from_secs(60))) <= Duration::from_millis(100));
    }
}
