//! Target health: consecutive failures, cooldowns, single probes after a
//! cooldown, a latency estimate for balancing, and optional active checks.
//!
//! One [`TargetState`] per (provider, model) lives in [`HealthTable`], outside
//! the config snapshot, so a reload keeps what was learnt about a target.
//! Compiling a config hands each `route::Target` its state, so the request
//! path never looks anything up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use http::Uri;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::provider::Provider;

/// Fixed origin for cooldown deadlines kept in atomics.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

fn to_nanos(at: Instant) -> u64 {
    at.saturating_duration_since(*ORIGIN).as_nanos() as u64 + 1
}

/// The latency estimate of a target never measured.
const DEFAULT_RTT: Duration = Duration::from_millis(50);
/// How fast old latency samples stop counting.
const DECAY: Duration = Duration::from_secs(10);

/// A peak-sensitive moving average of latency to first byte: the first
/// sample sets it, a slower sample is taken at once, faster ones pull it down
/// with a 10 s decay, and every sample moves it by a tenth at least (so
/// frequent traffic converges in a few requests).
#[derive(Debug)]
struct Latency {
    nanos: f64,
    at: Instant,
    measured: bool,
}

impl Latency {
    fn observe(&mut self, sample: Duration, now: Instant) {
        let sample = sample.as_nanos() as f64;
        if !self.measured || sample > self.nanos {
            self.nanos = sample;
            self.measured = true;
        } else {
            let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
            let keep = (-elapsed / DECAY.as_nanos() as f64).exp().min(0.9);
            self.nanos = self.nanos * keep + sample * (1.0 - keep);
        }
        self.at = now;
    }
}

/// What the balancer may do with a target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Healthy,
    /// The cooldown is over and no probe is running: one request may probe.
    Probe,
    /// In cooldown until then (or a probe is running).
    Cooling(Instant),
}

pub struct TargetState {
    pub provider: Arc<str>,
    /// The `model` label: the configured backend model, or the alias for a wildcard.
    pub model: Arc<str>,
    latency: Mutex<Latency>,
    inflight: AtomicU32,
    failures: AtomicU32,
    /// When the cooldown ends (nanoseconds past `ORIGIN`, plus one); 0: none.
    cooldown_until: AtomicU64,
    /// The cooldown was asked for (401/403, a long `retry-after`), not earned
    /// by failures: a passing health check does not end it early.
    firm: AtomicBool,
    probing: AtomicBool,
    gauge: prometheus::IntGauge,
}

impl std::fmt::Debug for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetState")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("failures", &self.failures.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TargetState {
    fn new(provider: Arc<str>, model: Arc<str>, metrics: &Metrics) -> Self {
        let gauge = metrics
            .target_healthy
            .with_label_values(&[&provider, &model]);
        gauge.set(1);
        TargetState {
            provider,
            model,
            latency: Mutex::new(Latency {
                nanos: DEFAULT_RTT.as_nanos() as f64,
                at: Instant::now(),
                measured: false,
            }),
            inflight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            cooldown_until: AtomicU64::new(0),
            firm: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            gauge,
        }
    }

    pub fn availability(&self, now: Instant) -> Availability {
        let until = self.cooldown_until.load(Ordering::Acquire);
        if until == 0 {
            return Availability::Healthy;
        }
        let until = *ORIGIN + Duration::from_nanos(until - 1);
        if now < until || self.probing.load(Ordering::Acquire) {
            Availability::Cooling(until)
        } else {
            Availability::Probe
        }
    }

    /// Claims the single probe after a cooldown; `None` when another request has it.
    pub fn start_probe(self: &Arc<Self>) -> Option<ProbeGuard> {
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| ProbeGuard(self.clone()))
    }

    /// The balancing cost: latency to first byte times (requests in flight + 1),
    /// in nanoseconds.
    pub fn cost(&self) -> f64 {
        let nanos = self.latency.lock().unwrap_or_else(|p| p.into_inner()).nanos;
        nanos * f64::from(self.inflight.load(Ordering::Relaxed) + 1)
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Adds a latency-to-first-byte sample taken at `now`.
    pub fn observe(&self, sample: Duration, now: Instant) {
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(sample, now);
    }

    /// A good answer: back in rotation, failure count cleared. Called for
    /// every answer, so the shared state is written only when it changes.
    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.cooldown_until.load(Ordering::Acquire) != 0
            && self.cooldown_until.swap(0, Ordering::AcqRel) != 0
        {
            self.firm.store(false, Ordering::Release);
            self.gauge.set(1);
            tracing::info!(provider = %self.provider, model = %self.model, "target back in rotation");
        }
    }

    /// A failure; the `after`-th in a row starts a cooldown of `duration`.
    pub fn failure(&self, after: u32, duration: Duration) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let probing = self.probing.load(Ordering::Acquire);
        if failures >= after.max(1) || probing {
            self.take_out(duration, "failures in a row", false);
        }
    }

    /// A passing health check: the failure count is cleared and a cooldown
    /// that failures earned ends, but one the backend asked for (its
    /// credentials were refused, or it said when to come back) runs its time.
    pub fn check_passed(&self, now: Instant) {
        let until = self.cooldown_until.load(Ordering::Acquire);
        let asked_for = until != 0
            && self.firm.load(Ordering::Acquire)
            && now < *ORIGIN + Duration::from_nanos(until - 1);
        if asked_for {
            self.failures.store(0, Ordering::Relaxed);
        } else {
            self.success();
        }
    }

    /// Takes the target out of rotation for `duration` because the backend
    /// asked for it (see [`TargetState::check_passed`]).
    pub fn hold_off(&self, duration: Duration, why: &str) {
        self.take_out(duration, why, true);
    }

    /// Out of rotation until `duration` from now, unless a longer cooldown
    /// already runs: a cooldown is never cut short by a shorter one.
    fn take_out(&self, duration: Duration, why: &str, firm: bool) {
        let until = to_nanos(Instant::now() + duration);
        let previous = self.cooldown_until.fetch_max(until, Ordering::AcqRel);
        if until >= previous {
            self.firm.store(firm, Ordering::Release);
        }
        self.gauge.set(0);
        if previous == 0 {
            tracing::warn!(
                provider = %self.provider,
                model = %self.model,
                cooldown = %humantime::format_duration(duration),
                failures = self.failures.load(Ordering::Relaxed),
                why,
                "target out of rotation"
            );
        }
    }
}

/// One request in flight to a target.
pub struct InFlight(Arc<TargetState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Releases the probe slot when the probing attempt ends, however it ends.
pub struct ProbeGuard(Arc<TargetState>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
    }
}

/// (provider, model label): what identifies a target across reloads.
pub type TargetKey = (Arc<str>, Arc<str>);

/// Every target's state, keyed by (provider, model label).
#[derive(Default)]
pub struct HealthTable {
    targets: Mutex<HashMap<TargetKey, Arc<TargetState>>>,
    checks: Mutex<Vec<JoinHandle<()>>>,
}

impl HealthTable {
    /// The state of a target, made on first use.
    pub fn target(
        &self,
        provider: &Arc<str>,
        model: &Arc<str>,
        metrics: &Metrics,
    ) -> Arc<TargetState> {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        targets
            .entry((provider.clone(), model.clone()))
            .or_insert_with(|| Arc::new(TargetState::new(provider.clone(), model.clone(), metrics)))
            .clone()
    }

    /// Forgets targets no config uses any more, and their gauges.
    pub fn retain(&self, keep: &[TargetKey], metrics: &Metrics) {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        targets.retain(|key, _| {
            let kept = keep.contains(key);
            if !kept {
                let _ = metrics
                    .target_healthy
                    .remove_label_values(&[&key.0, &key.1]);
            }
            kept
        });
    }

    /// Replaces the active health checks with one task per provider in
    /// `providers`; a failing check counts as a failure of each of its
    /// targets, `after` of them in a row cool a target down for `cooldown`.
    pub fn start_checks(
        &self,
        providers: &[(Arc<Provider>, Vec<Arc<TargetState>>)],
        after: u32,
        cooldown: Duration,
    ) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        for task in checks.drain(..) {
            task.abort();
        }
        for (provider, targets) in providers {
            if let Some(check) = provider.health_check.clone() {
                let provider = provider.clone();
                let targets = targets.clone();
                checks.push(tokio::spawn(run_check(
                    provider, check, targets, after, cooldown,
                )));
            }
        }
    }
}

/// An active health check of a provider.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub url: Uri,
    pub interval: Duration,
    pub timeout: Duration,
}

async fn run_check(
    provider: Arc<Provider>,
    check: HealthCheck,
    targets: Vec<Arc<TargetState>>,
    after: u32,
    cooldown: Duration,
) {
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let outcome = tokio::time::timeout(check.timeout, provider.get(check.url.clone())).await;
        let passed = matches!(&outcome, Ok(Ok(r)) if r.status().is_success());
        if passed {
            let now = Instant::now();
            targets.iter().for_each(|t| t.check_passed(now));
        } else {
            let why = match &outcome {
                Ok(Ok(r)) => format!("health check answered {}", r.status().as_u16()),
                Ok(Err(f)) => format!("health check failed: {}", f.message),
                Err(_) => "health check timed out".to_owned(),
            };
            tracing::debug!(provider = %provider.id, why, "health check failed");
            targets.iter().for_each(|t| t.failure(after, cooldown));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_takes_peaks_at_once_and_decays_slowly() {
        let start = Instant::now();
        let mut l = Latency {
            nanos: 5e7,
            at: start,
            measured: false,
        };
        l.observe(Duration::from_millis(1), start);
        assert_eq!(l.nanos, 1e6, "the first sample replaces the default");
        l.observe(Duration::from_millis(10), start);
        assert_eq!(l.nanos, 1e7, "a slower sample is taken at once");
        l.observe(Duration::from_millis(1), start + Duration::from_secs(1));
        assert!(l.nanos > 8e6 && l.nanos <= 9.1e6, "{}", l.nanos);
        l.observe(Duration::from_millis(1), start + Duration::from_secs(60));
        assert!(l.nanos < 1.1e6, "{}", l.nanos);
        let before = l.nanos;
        l.observe(Duration::ZERO, start + Duration::from_secs(60));
        assert!(
            l.nanos <= before * 0.9 + 1.0,
            "each sample moves it a tenth at least"
        );
    }

    #[test]
    fn cooldown_probe_and_recovery() {
        let metrics = Metrics::new();
        let t = Arc::new(TargetState::new("p".into(), "m".into(), &metrics));
        let now = Instant::now();
        assert_eq!(t.availability(now), Availability::Healthy);
        t.failure(2, Duration::from_secs(30));
        assert_eq!(t.availability(now), Availability::Healthy);
        t.failure(2, Duration::from_secs(30));
        assert!(matches!(
            t.availability(Instant::now()),
            Availability::Cooling(_)
        ));
        let later = Instant::now() + Duration::from_secs(31);
        assert_eq!(t.availability(later), Availability::Probe);
        let probe = t.start_probe().expect("the probe slot");
        assert!(t.start_probe().is_none(), "one probe at a time");
        assert!(matches!(t.availability(later), Availability::Cooling(_)));
        t.success();
        drop(probe);
        assert_eq!(t.availability(later), Availability::Healthy);
        assert_eq!(
            metrics.target_healthy.with_label_values(&["p", "m"]).get(),
            1
        );
    }

    #[test]
    fn a_passing_check_ends_earned_cooldowns_but_not_asked_for_ones() {
        let metrics = Metrics::new();
        let t = TargetState::new("p".into(), "m".into(), &metrics);
        t.failure(1, Duration::from_secs(30));
        assert!(matches!(
            t.availability(Instant::now()),
            Availability::Cooling(_)
        ));
        t.check_passed(Instant::now());
        assert_eq!(t.availability(Instant::now()), Availability::Healthy);

        t.hold_off(Duration::from_secs(30), "asked to retry later");
        t.check_passed(Instant::now());
        assert!(
            matches!(t.availability(Instant::now()), Availability::Cooling(_)),
            "a retry-after outlasts a passing health check"
        );
        // Once its time is up, a passing check brings the target back.
        t.check_passed(Instant::now() + Duration::from_secs(31));
        assert_eq!(t.availability(Instant::now()), Availability::Healthy);

        // A shorter earned cooldown does not cut an asked-for one short.
        t.hold_off(Duration::from_secs(600), "asked to retry later");
        t.failure(1, Duration::from_secs(30));
        t.check_passed(Instant::now() + Duration::from_secs(31));
        assert!(matches!(
            t.availability(Instant::now() + Duration::from_secs(31)),
            Availability::Cooling(_)
        ));

        // A real answer (the probe) ends any cooldown.
        t.hold_off(
            Duration::from_secs(30),
            "rejected the gateway's credentials",
        );
        t.success();
        assert_eq!(t.availability(Instant::now()), Availability::Healthy);
        t.failure(1, Duration::from_secs(30));
        t.check_passed(Instant::now());
        assert_eq!(
            t.availability(Instant::now()),
            Availability::Healthy,
            "success cleared the asked-for mark"
        );
    }
}
