//! Choosing a target, and the service that tries it.
//!
//! Balancing is weighted power-of-two-choices: two candidates are drawn by
//! weight (with replacement) from the targets in rotation, and the second
//! wins only when its cost (peak-EWMA latency to first byte × requests in
//! flight) is clearly lower. With similar latencies traffic follows the
//! weights; a slower target gets less than its share but is never starved,
//! so it keeps being measured.
//!
//! tower's `balance::p2c` is not used: it wants a `Discover` of ready
//! services behind `&mut self` (so a `Buffer` task per alias), and it knows
//! neither weights, nor cooldowns and probes, nor "prefer a target this
//! request has not tried yet". Nor is `load::PeakEwma`: its cost is opaque
//! (only ordered), so "clearly faster" cannot be told from noise with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::Response;
use tokio::time::Instant;
use tracing::Instrument;

use super::attempt::{self, AttemptError};
use super::health::{Availability, ProbeGuard};
use super::{Attempt, DispatchError};
use crate::body::Body;
use crate::metrics::Metrics;
use crate::route::Target;
use crate::upstream::{Cause, Failure};

/// The outcome of choosing.
pub enum Choice {
    /// A target in rotation (with the probe slot when it is ending a cooldown).
    Target(usize, Option<ProbeGuard>),
    /// Every target is cooling down: the one whose cooldown ends first, for one try.
    LastResort(usize),
}

/// Chooses a target of `targets`, preferring those not in `tried`.
pub fn choose(targets: &[Target], tried: &[usize], now: Instant) -> Choice {
    // The common case, one healthy target: nothing to weigh.
    if let [only] = targets
        && tried.is_empty()
        && only.weight > 0
        && only.state.availability(now) == Availability::Healthy
    {
        return Choice::Target(0, None);
    }
    let mut rotation: Vec<(usize, Availability)> = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.weight > 0)
        .map(|(i, t)| (i, t.state.availability(now)))
        .filter(|(_, a)| !matches!(a, Availability::Cooling(_)))
        .collect();
    // Prefer what this request has not tried yet, when there is any.
    if !tried.is_empty() && rotation.iter().any(|(i, _)| !tried.contains(i)) {
        rotation.retain(|(i, _)| !tried.contains(i));
    }
    while !rotation.is_empty() {
        let weight = |i: usize| targets[i].weight;
        let a = draw(&rotation, weight);
        let b = draw(&rotation, weight);
        let pick = if a != b && clearly_faster(&targets[rotation[b].0], &targets[rotation[a].0]) {
            b
        } else {
            a
        };
        let (index, availability) = rotation[pick];
        if availability == Availability::Healthy {
            return Choice::Target(index, None);
        }
        match targets[index].state.start_probe() {
            Some(probe) => return Choice::Target(index, Some(probe)),
            // Another request is probing it: not a candidate now.
            None => {
                rotation.swap_remove(pick);
            }
        }
    }
    let earliest = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.weight > 0)
        .min_by_key(|(_, t)| match t.state.availability(now) {
            Availability::Cooling(until) => until,
            _ => now,
        })
        .map_or(0, |(i, _)| i);
    Choice::LastResort(earliest)
}

/// Whether `b` is faster than `a` by more than noise: a fifth of `a`'s cost
/// and at least a millisecond. Closer than that, the weights decide.
fn clearly_faster(b: &Target, a: &Target) -> bool {
    let (cb, ca) = (b.state.cost(), a.state.cost());
    ca - cb > (ca * 0.2).max(1e6)
}

/// A position in `rotation`, drawn in proportion to the weights of the
/// targets there.
fn draw(rotation: &[(usize, Availability)], weight: impl Fn(usize) -> u32) -> usize {
    let total: u64 = rotation.iter().map(|(i, _)| u64::from(weight(*i))).sum();
    let mut r = fastrand::u64(0..total.max(1));
    for (pos, (i, _)) in rotation.iter().enumerate() {
        let w = u64::from(weight(*i));
        if r < w {
            return pos;
        }
        r -= w;
    }
    rotation.len() - 1
}

/// The innermost service: choose a target, take a concurrency slot, try it,
/// and record the outcome in the target's health.
#[derive(Clone)]
pub struct Pick {
    metrics: Arc<Metrics>,
}

impl Pick {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Pick { metrics }
    }
}

impl tower::Service<Attempt> for Pick {
    type Response = Response<Body>;
    type Error = DispatchError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, DispatchError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DispatchError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let metrics = self.metrics.clone();
        crate::inplace::pinned(|| try_target(attempt, metrics))
    }
}

async fn try_target(
    attempt: Attempt,
    metrics: Arc<Metrics>,
) -> Result<Response<Body>, DispatchError> {
    // The clock is read three times per attempt (here, when the backend
    // answers, when the attempt ends): each read costs more than the
    // arithmetic that shares it.
    let now = Instant::now();
    let (index, probe, last_resort) = match choose(&attempt.alias.targets, &attempt.tried, now) {
        Choice::Target(i, probe) => (i, probe, false),
        Choice::LastResort(i) => (i, None, true),
    };
    let target = &attempt.alias.targets[index];
    let provider = &target.provider;
    let call = &attempt.call;
    let model = target.model.as_ref().unwrap_or(&attempt.default_model);
    let number = call.attempts.fetch_add(1, Ordering::Relaxed) + 1;
    let span = tracing::info_span!(
        "attempt",
        provider = &*provider.id,
        model = &**model,
        attempt = number
    );
    let failed = |failure| DispatchError::Failed {
        failure,
        provider: provider.clone(),
        target: index,
        last_resort,
    };

    let (permit, started) = match &provider.limiter {
        None => (None, now),
        Some(limiter) => {
            let deadline = call.started + provider.timeouts.total;
            match tokio::time::timeout_at(deadline, limiter.acquire()).await {
                Ok(Ok(permit)) => (Some(permit), Instant::now()),
                Ok(Err(_)) => {
                    return Err(failed(Failure::new(
                        Cause::Saturated,
                        format!(
                            "is at its concurrency limit ({} running, {} queued)",
                            limiter.max_concurrent, limiter.max_queue
                        ),
                    )));
                }
                Err(_) => {
                    return Err(failed(Failure::new(
                        Cause::TotalTimeout,
                        "the request timed out waiting for a free slot",
                    )));
                }
            }
        }
    };

    let state = &target.state;
    let in_flight = state.begin();
    // Boxed for the same reason as the gateway's handler: the attempt's
    // future (about 1.7 KB) is then written once, where it stays, not
    // copied on every move.
    let result =
        crate::inplace::pinned(|| attempt::attempt(call, target, model, permit, &metrics, started))
            .instrument(span.clone())
            .await;
    let _in_span = span.enter();
    drop(in_flight);
    if matches!(
        &result,
        Ok(_)
            | Err(AttemptError::Failed(Failure {
                cause: Cause::FirstByteTimeout,
                ..
            }))
    ) {
        let done = Instant::now();
        state.observe(done.saturating_duration_since(started), done);
    }
    let routing = &call.snapshot.routing;
    let outcome = match result {
        Ok(response) => {
            state.success();
            Ok(response)
        }
        Err(AttemptError::Refused(e)) => Err(DispatchError::Refused(e)),
        Err(AttemptError::Failed(failure)) => {
            match failure.cause {
                // The client's request was bad: the target itself is fine.
                c if c.is_client_error() => state.success(),
                Cause::Status(s) if matches!(s.as_u16(), 401 | 403) => {
                    state.hold_off(routing.cooldown_for, "rejected the gateway's credentials")
                }
                // Any status that asks for longer than we would wait (a 429
                // quota, a 503 in maintenance): out of rotation for that long.
                Cause::Status(_)
                    if failure.retry_after.is_some_and(|a| a > routing.backoff_max) =>
                {
                    state.hold_off(
                        failure.retry_after.unwrap_or_default(),
                        "asked to retry later",
                    )
                }
                Cause::Saturated | Cause::TotalTimeout => {}
                _ => state.failure(routing.cooldown_after, routing.cooldown_for),
            }
            Err(failed(failure))
        }
    };
    drop(probe);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_weights() {
        fastrand::seed(7);
        let weights = [3, 0, 1, 4];
        // Target 1 is out of rotation (the caller leaves out weight 0).
        let rotation = [0, 2, 3].map(|i| (i, Availability::Healthy));
        let mut drawn = [0u32; 3];
        let n = 80_000;
        for _ in 0..n {
            drawn[draw(&rotation, |i| weights[i])] += 1;
        }
        // Shares 3/8, 1/8, 4/8; a standard deviation is under 150 draws.
        for (pos, share) in [(0, 3.0 / 8.0), (1, 1.0 / 8.0), (2, 4.0 / 8.0)] {
            let expected = share * f64::from(n);
            let got = f64::from(drawn[pos]);
            assert!((got - expected).abs() < 1_000.0, "{drawn:?}");
        }
    }
}
