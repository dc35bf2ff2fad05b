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
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: default_level(),
            format: LogFormat::default(),
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
    #[serde(flatten)]
    pub options: Map<String, Value>,
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
