//! Every metric the gateway exports, in one place.
//!
//! Label values come only from the config (alias, provider and key names) or
//! from small fixed sets, so no request can grow the number of series.

use std::cell::RefCell;
use std::time::Duration;

use hashbrown::{Equivalent, HashMap};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use thread_local::ThreadLocal;

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
    /// The handles of finished requests' series, per thread (see `record_request`).
    series: ThreadLocal<RefCell<HashMap<SeriesKey, Series>>>,
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
    /// Caught up with the log writer's own count at each scrape.
    log_lines_dropped: IntCounter,
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
        let log_lines_dropped = IntCounter::new(
            "switchyard_log_lines_dropped_total",
            "Log lines dropped because stderr's reader fell too far behind.",
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
            Box::new(log_lines_dropped.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Both results exist from the start, so rate() and alerts see zero, not absence.
        config_reloads.with_label_values(&["ok"]);
        config_reloads.with_label_values(&["rejected"]);
        Metrics {
            registry,
            series: ThreadLocal::new(),
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
            log_lines_dropped,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let dropped = crate::telemetry::dropped_lines();
        let counted = self.log_lines_dropped.get();
        if dropped > counted {
            self.log_lines_dropped.inc_by(dropped - counted);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The labels of a finished request.
pub struct RequestLabels<'a> {
    pub endpoint: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
    pub key: &'a str,
    pub status: &'a str,
}

/// What a finished request records.
pub struct RequestRecord {
    pub elapsed: Duration,
    /// Recorded only for requests that reached a provider.
    pub ttft: Option<Duration>,
    /// Prompt and completion tokens, likewise.
    pub tokens: Option<(u64, u64)>,
}

impl Metrics {
    /// Records a finished request in the requests, duration, first-token and
    /// token series. Their handles are kept per thread and found by one
    /// lookup of the labels: `with_label_values` hashes and looks up the
    /// labels of each of the five series, on every request.
    pub fn record_request(&self, labels: &RequestLabels<'_>, record: &RequestRecord) {
        let mut series = self.series.get_or_default().borrow_mut();
        let s = match series.get_mut(labels) {
            Some(s) => s,
            None => series
                .entry(SeriesKey(labels.all().map(Box::from)))
                .or_insert(Series::new(self, labels)),
        };
        s.requests.inc();
        s.duration.observe(record.elapsed.as_secs_f64());
        let RequestLabels {
            model,
            provider,
            key,
            ..
        } = *labels;
        if let Some(ttft) = record.ttft {
            s.ttft
                .get_or_insert_with(|| {
                    self.time_to_first_token
                        .with_label_values(&[model, provider])
                })
                .observe(ttft.as_secs_f64());
        }
        if let Some((prompt, completion)) = record.tokens {
            let (p, c) = s.tokens.get_or_insert_with(|| {
                (
                    self.tokens
                        .with_label_values(&[model, provider, key, "prompt"]),
                    self.tokens
                        .with_label_values(&[model, provider, key, "completion"]),
                )
            });
            p.inc_by(prompt);
            c.inc_by(completion);
        }
    }
}

impl RequestLabels<'_> {
    fn all(&self) -> [&str; 5] {
        [
            self.endpoint,
            self.model,
            self.provider,
            self.key,
            self.status,
        ]
    }
}

/// A request series' labels, owned: the key of the per-thread map.
#[derive(PartialEq, Eq, Hash)]
struct SeriesKey([Box<str>; 5]);

impl std::hash::Hash for RequestLabels<'_> {
    // As `SeriesKey` hashes: the same strings, in the same order.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.all().hash(state);
    }
}

impl Equivalent<SeriesKey> for RequestLabels<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        self.all().iter().zip(&key.0).all(|(a, b)| *a == &**b)
    }
}

/// The handles of one request series. Label values come from the config, so
/// there are as many as the registry itself holds; metrics are never removed,
/// so a handle stays valid.
struct Series {
    requests: IntCounter,
    duration: Histogram,
    ttft: Option<Histogram>,
    tokens: Option<(IntCounter, IntCounter)>,
}

impl Series {
    fn new(metrics: &Metrics, l: &RequestLabels<'_>) -> Self {
        Series {
            requests: metrics.requests.with_label_values(&l.all()),
            duration: metrics
                .request_duration
                .with_label_values(&[l.endpoint, l.model, l.provider]),
            ttft: None,
            tokens: None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.render()).unwrap()
    }

    fn labels<'a>(model: &'a str, status: &'a str) -> RequestLabels<'a> {
        RequestLabels {
            endpoint: "chat",
            model,
            provider: "p",
            key: "team",
            status,
        }
    }

    #[test]
    fn cached_series_count_into_their_own_registry() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let whole = RequestRecord {
            elapsed: Duration::from_millis(20),
            ttft: Some(Duration::from_millis(5)),
            tokens: Some((7, 3)),
        };
        let bare = RequestRecord {
            elapsed: Duration::from_millis(1),
            ttft: None,
            tokens: None,
        };
        for _ in 0..3 {
            a.record_request(&labels("m", "200"), &whole);
        }
        a.record_request(&labels("m", "429"), &bare);
        a.record_request(&labels("n", "200"), &bare);
        b.record_request(&labels("m", "200"), &bare);

        let a = text(&a);
        let series =
            |name: &str, labels: &str, value: &str| format!("{name}{{{labels}}} {value}\n");
        for want in [
            series(
                "switchyard_requests_total",
                r#"endpoint="chat",key="team",model="m",provider="p",status="200""#,
                "3",
            ),
            series(
                "switchyard_requests_total",
                r#"endpoint="chat",key="team",model="m",provider="p",status="429""#,
                "1",
            ),
            series(
                "switchyard_requests_total",
                r#"endpoint="chat",key="team",model="n",provider="p",status="200""#,
                "1",
            ),
            series(
                "switchyard_request_duration_seconds_count",
                r#"endpoint="chat",model="m",provider="p""#,
                "4",
            ),
            series(
                "switchyard_time_to_first_token_seconds_count",
                r#"model="m",provider="p""#,
                "3",
            ),
            series(
                "switchyard_tokens_total",
                r#"key="team",kind="prompt",model="m",provider="p""#,
                "21",
            ),
            series(
                "switchyard_tokens_total",
                r#"key="team",kind="completion",model="m",provider="p""#,
                "9",
            ),
        ] {
            assert!(a.contains(&want), "missing {want} in\n{a}");
        }
        // Nothing recorded, no series: model "n" had no first token or tokens.
        assert!(!a.contains(r#"first_token_seconds_count{model="n""#), "{a}");
        assert!(!a.contains(r#"kind="prompt",model="n""#), "{a}");

        let b = text(&b);
        assert!(
            b.contains(&series(
                "switchyard_requests_total",
                r#"endpoint="chat",key="team",model="m",provider="p",status="200""#,
                "1"
            )),
            "{b}"
        );
        assert!(!b.contains("switchyard_tokens_total{"), "{b}");
    }

    #[test]
    fn labels_find_the_series_they_name_and_only_it() {
        use std::hash::BuildHasher;
        let owned = |l: &RequestLabels<'_>| SeriesKey(l.all().map(Box::from));
        let hasher = hashbrown::DefaultHashBuilder::default();
        let (a, b) = (labels("ab", "200"), labels("a", "200"));
        // Borrowed labels hash as their owned key does, or lookups would miss.
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(owned(&a)));
        assert!(a.equivalent(&owned(&a)));
        assert!(!a.equivalent(&owned(&b)));
        assert!(!a.equivalent(&owned(&labels("ab", "500"))));
    }
}
