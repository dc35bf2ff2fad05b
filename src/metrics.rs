//! Every metric the gateway exports, in one place.
//!
//! Label values come only from the config (alias, provider and key names) or
//! from small fixed sets, so no request can grow the number of series.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Whole requests: 5 ms to 10 min.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Time to first token: 5 ms to 60 s.
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub time_to_first_token: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub tokens: IntCounterVec,
    pub inflight: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub retries: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub target_healthy: IntGaugeVec,
    pub rate_limited: IntCounterVec,
    pub limit_store_errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Requests answered, by endpoint, alias, provider, key and status.",
            ),
            &["endpoint", "model", "provider", "key", "status"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from request arrival to the last byte of the response.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["endpoint", "model", "provider"],
        )
        .expect("valid metric");
        let time_to_first_token = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_time_to_first_token_seconds",
                "Time from request arrival to the first body byte sent to the client.",
            )
            .buckets(TTFT_BUCKETS.to_vec()),
            &["model", "provider"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_upstream_duration_seconds",
                "Time from sending an attempt to its response head, by provider and status.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["provider", "status"],
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new("switchyard_tokens_total", "Tokens reported by backends."),
            &["model", "provider", "key", "kind"],
        )
        .expect("valid metric");
        let inflight = IntGaugeVec::new(
            Opts::new(
                "switchyard_inflight_requests",
                "Requests being served by each provider.",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "switchyard_config_reloads_total",
                "Config reload attempts, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "switchyard_retries_total",
                "Retries, by the provider that failed and why.",
            ),
            &["provider", "reason"],
        )
        .expect("valid metric");
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "switchyard_fallbacks_total",
                "Requests that moved on to a fallback alias.",
            ),
            &["from", "to"],
        )
        .expect("valid metric");
        let target_healthy = IntGaugeVec::new(
            Opts::new(
                "switchyard_target_healthy",
                "1 while a target is in rotation, 0 in cooldown.",
            ),
            &["provider", "model"],
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "switchyard_rate_limited_total",
                "Requests refused by a limit or budget, by key and limit.",
            ),
            &["key", "limit"],
        )
        .expect("valid metric");
        let limit_store_errors = IntCounterVec::new(
            Opts::new(
                "switchyard_rate_limit_store_errors_total",
                "Admissions the rate limit store could not answer (handled per rate_limits.on_store_error).",
            ),
            &["store"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(time_to_first_token.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(tokens.clone()),
            Box::new(inflight.clone()),
            Box::new(config_reloads.clone()),
            Box::new(retries.clone()),
            Box::new(fallbacks.clone()),
            Box::new(target_healthy.clone()),
            Box::new(rate_limited.clone()),
            Box::new(limit_store_errors.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Both results exist from the start, so rate() and alerts see zero, not absence.
        config_reloads.with_label_values(&["ok"]);
        config_reloads.with_label_values(&["rejected"]);
        Metrics {
            registry,
            requests,
            request_duration,
            time_to_first_token,
            upstream_duration,
            tokens,
            inflight,
            config_reloads,
            retries,
            fallbacks,
            target_healthy,
            rate_limited,
            limit_store_errors,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Keeps a provider's in-flight gauge up while alive.
pub struct Inflight(prometheus::IntGauge);

impl Inflight {
    /// `gauge` is the provider's series, looked up once when the config
    /// is compiled.
    pub fn enter(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Inflight(gauge.clone())
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
