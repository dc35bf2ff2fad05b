//! Types that mirror the config file. The JSON Schema has already checked
//! shapes and names by the time these are filled; `compile` turns them into
//! runtime types and checks what a schema cannot (cross references, units).

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: String,
    #[serde(default)]
    pub keys: Vec<Key>,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub providers: IndexMap<String, Provider>,
    #[serde(default)]
    pub models: IndexMap<String, Model>,
    #[serde(default)]
    pub routing: Routing,
    #[serde(default)]
    pub rate_limits: RateLimits,
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

fn default_shutdown_grace() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
    /// Log request and response bodies (prompts and completions).
    #[serde(default)]
    pub bodies: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: default_level(),
            format: LogFormat::default(),
            bodies: false,
        }
    }
}

fn default_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_request_body", deserialize_with = "size")]
    pub max_request_body: String,
    #[serde(default = "default_max_header_bytes", deserialize_with = "size")]
    pub max_header_bytes: String,
    #[serde(default = "default_max_response_body", deserialize_with = "size")]
    pub max_response_body: String,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body: default_max_request_body(),
            max_header_bytes: default_max_header_bytes(),
            max_response_body: default_max_response_body(),
        }
    }
}

fn default_max_request_body() -> String {
    "8MiB".into()
}

fn default_max_header_bytes() -> String {
    "64KiB".into()
}

fn default_max_response_body() -> String {
    "64MiB".into()
}

/// Upstream timeouts; every field may be overridden per provider.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub stream_idle: Option<String>,
    pub total: Option<String>,
    /// How long a client may take to send its request headers (global only).
    pub client_header: Option<String>,
    /// How long a client may take to send its request body (global only).
    pub client_body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub id: String,
    pub sha256: String,
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub limits: RateLimit,
    #[serde(default)]
    pub budgets: Vec<Budget>,
}

/// `rpm`, `tpm`, `max_concurrent`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// `day` or `month` (UTC).
    pub period: String,
    pub tokens: Option<u64>,
    /// In the unit of the models' prices (dollars, usually).
    pub cost: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per million prompt tokens.
    pub prompt: f64,
    /// Per million completion tokens.
    pub completion: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// `memory` or `redis://host:port/db`.
    #[serde(default = "default_store")]
    pub store: String,
    /// `open` or `closed`.
    #[serde(default = "default_on_store_error")]
    pub on_store_error: String,
    #[serde(default = "default_store_timeout")]
    pub timeout: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_completion_estimate")]
    pub completion_estimate: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            store: default_store(),
            on_store_error: default_on_store_error(),
            timeout: default_store_timeout(),
            prefix: default_prefix(),
            completion_estimate: default_completion_estimate(),
        }
    }
}

fn default_store() -> String {
    "memory".into()
}

fn default_on_store_error() -> String {
    "open".into()
}

fn default_store_timeout() -> String {
    "100ms".into()
}

fn default_prefix() -> String {
    "switchyard:".into()
}

fn default_completion_estimate() -> u64 {
    256
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default = "yes")]
    pub required: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Auth { required: true }
    }
}

fn yes() -> bool {
    true
}

/// A provider: fields every type shares, plus the type's own options, which
/// the adapter of that type deserialises.
#[derive(Debug, Deserialize)]
pub struct Provider {
    #[serde(rename = "type")]
    pub kind: String,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub auth_header: Option<AuthHeader>,
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Requests sent to this provider at once; more wait in a queue.
    pub max_concurrent: Option<u32>,
    /// Requests that may wait for a slot; more get 503 at once.
    pub max_queue: Option<u32>,
    pub health_check: Option<HealthCheck>,
    /// PEM certificates to trust on top of the built-in roots (a private CA).
    pub ca_file: Option<String>,
    /// List the backend's models for wildcard aliases: `true`, or `{interval: 5m}`.
    pub discover: Option<Discover>,
    #[serde(flatten)]
    pub options: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Discover {
    On(bool),
    Every {
        #[serde(default = "default_discover_interval")]
        interval: String,
    },
}

fn default_discover_interval() -> String {
    "60s".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path from the host root (`/health`), or a full URL.
    pub path: String,
    #[serde(default = "default_check_interval")]
    pub interval: String,
    #[serde(default = "default_check_timeout")]
    pub timeout: String,
}

fn default_check_interval() -> String {
    "10s".into()
}

fn default_check_timeout() -> String {
    "2s".into()
}

/// `bearer` | `x-api-key` | `none` | `{name: X-Custom}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AuthHeader {
    Mode(String),
    Custom { name: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub targets: Vec<Target>,
    /// Other aliases tried in order when every target failed.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Limits of the alias, whoever calls.
    #[serde(default)]
    pub limits: RateLimit,
    pub price: Option<Price>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub provider: String,
    pub model: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A size written as `8MiB` or as a bare number of bytes.
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Text(String),
        Bytes(u64),
    }
    Ok(match Size::deserialize(d)? {
        Size::Text(s) => s,
        Size::Bytes(n) => n.to_string(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    #[serde(default)]
    pub retry: Retry,
    #[serde(default)]
    pub cooldown: Cooldown,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Tries per alias, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    /// `connect`, `timeout` and statuses.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    #[serde(default)]
    pub budget: RetryBudget,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: default_attempts(),
            backoff: Backoff::default(),
            on: default_retry_on(),
            budget: RetryBudget::default(),
        }
    }
}

fn default_attempts() -> u32 {
    3
}

fn default_retry_on() -> Vec<RetryOn> {
    let mut on = vec![
        RetryOn::Name("connect".into()),
        RetryOn::Name("timeout".into()),
    ];
    on.extend([429, 500, 502, 503, 504, 529].map(RetryOn::Status));
    on
}

/// A retry condition: a name or an HTTP status.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RetryOn {
    Status(u16),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "default_backoff_base")]
    pub base: String,
    #[serde(default = "default_backoff_max")]
    pub max: String,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

fn default_backoff_base() -> String {
    "100ms".into()
}

fn default_backoff_max() -> String {
    "2s".into()
}

/// Retries allowed on top of recent traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries per request, on average (0.2 = one retry per five requests).
    #[serde(default = "default_budget_ratio")]
    pub ratio: f32,
    /// Retries always allowed per second, whatever the traffic.
    #[serde(default = "default_budget_min")]
    pub min_per_second: u32,
    /// How much recent traffic counts.
    #[serde(default = "default_budget_window")]
    pub window: String,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_min(),
            window: default_budget_window(),
        }
    }
}

fn default_budget_ratio() -> f32 {
    0.2
}

fn default_budget_min() -> u32 {
    10
}

fn default_budget_window() -> String {
    "10s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cooldown {
    #[serde(default = "default_after_failures")]
    pub after_failures: u32,
    #[serde(default = "default_cooldown_for", rename = "for")]
    pub duration: String,
}

impl Default for Cooldown {
    fn default() -> Self {
        Cooldown {
            after_failures: default_after_failures(),
            duration: default_cooldown_for(),
        }
    }
}

fn default_after_failures() -> u32 {
    3
}

fn default_cooldown_for() -> String {
    "30s".into()
}
