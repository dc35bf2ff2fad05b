//! Adapters: one module per backend dialect, all behind [`Adapter`].
//!
//! An adapter is built once per provider when a config compiles and is then
//! shared read-only. It turns the client's request into the backend's,
//! the backend's answer into OpenAI's, and reads the backend's errors. It
//! never does I/O, sleeps, retries or logs: the dispatcher does all that.
//!
//! Adding a dialect is one new module and one arm in [`build`].

pub mod anthropic;
pub mod cohere;
pub mod demo;
pub mod graphql;
pub mod huggingface;
pub mod ollama;
pub mod openai;
pub mod rest;
pub mod template;

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use serde::Deserialize;

use crate::call::Call;
use crate::chat::{Completion, Embeddings};
use crate::config::{Path, Problem, raw};
use crate::error::Error;
use crate::openai::{Endpoint, Usage};
use crate::route::ModelName;
use crate::stream::Decoder;
use crate::upstream::{Cause, Failure, Transport, truncate};

/// A backend dialect.
pub trait Adapter: Send + Sync + Debug {
    /// Whether this backend serves `endpoint`; others get a 400 before any I/O.
    fn supports(&self, endpoint: Endpoint) -> bool;

    /// The upstream request for one attempt, sending `model` as the backend model.
    fn request(&self, call: &Call, model: &ModelName) -> Result<UpstreamRequest, Error>;

    /// A whole successful upstream answer → the OpenAI response. `headers`
    /// are the backend's (TGI reports prompt tokens there) when
    /// [`Adapter::reads_answer_headers`] says so, else possibly empty.
    fn response(&self, call: &Call, headers: &HeaderMap, body: Bytes)
    -> Result<Converted, Failure>;

    /// Whether [`Adapter::response`] reads the answer's headers. When not,
    /// the transport may leave a successful answer's header map empty: making
    /// it is a good part of reading a response head.
    fn reads_answer_headers(&self) -> bool {
        false
    }

    /// A fresh decoder for one streamed upstream response.
    fn decoder(&self, call: &Call) -> Box<dyn Decoder>;

    /// An upstream error response → a failure.
    fn failure(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        status_failure(status, headers, body)
    }

    /// Where the backend lists its models (`GET`), for `discover: true`;
    /// `None` when the dialect has no such listing.
    fn models_uri(&self) -> Option<Uri> {
        None
    }

    /// The model names in that listing.
    fn parse_models(&self, body: &[u8]) -> Result<Vec<String>, Failure> {
        let _ = body;
        Err(Failure::protocol(
            "this backend type cannot list its models",
        ))
    }
}

/// Room to make in an upstream request's header map: the adapter's own
/// headers and those a transport may add (user agent, credential, request
/// id), so that none of them makes it grow.
pub const REQUEST_HEADERS: usize = 8;

/// What an adapter asks the transport to send.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub uri: Uri,
    /// Dialect headers that every request of this kind carries (content
    /// type, accept), made once; `headers` never repeats them.
    pub fixed: &'static [(HeaderName, HeaderValue)],
    /// Dialect headers made for this request (API version, say);
    /// credentials are added later.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether the backend will answer with a stream.
    pub stream: bool,
}

/// A whole successful answer, converted.
#[derive(Debug)]
pub enum Converted {
    /// OpenAI JSON, ready to send (the passthrough).
    Json {
        body: Bytes,
        usage: Option<Usage>,
    },
    /// A chat (or legacy completion) answer to render, or to stream when the
    /// client asked for a stream from a backend that answered whole.
    Chat(Completion),
    Embeddings(Embeddings),
}

/// How a provider's credential travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStyle {
    Bearer,
    Header(HeaderName),
    None,
}

/// What [`build`] makes of a provider's config.
pub struct Built {
    pub adapter: Box<dyn Adapter>,
    /// A transport of the dialect's own (the in-process demo backend);
    /// `None` means HTTP through the provider's connection pool.
    pub transport: Option<Transport>,
    pub default_auth: AuthStyle,
}

/// The one place that matches on provider type.
pub fn build(
    id: &str,
    raw: &raw::Provider,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Built> {
    match raw.kind.as_str() {
        "openai" => openai::build(id, raw, path, problems),
        "anthropic" => anthropic::build(id, raw, path, problems),
        "demo" => demo::build(id, raw, path, problems),
        "ollama" => ollama::build(id, raw, path, problems),
        "cohere" => cohere::build(id, raw, path, problems),
        "graphql" => graphql::build(id, raw, path, problems),
        "rest" => rest::build(id, raw, path, problems),
        "huggingface" => huggingface::build(id, raw, path, problems),
        other => {
            problems.push(Problem::new(
                path.key("type"),
                format!("unknown provider type {other:?}"),
            ));
            None
        }
    }
}

/// Deserialises a provider's type-specific options, reporting problems at `path`.
pub fn options<T: for<'de> Deserialize<'de>>(
    raw: &raw::Provider,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_json::from_value(serde_json::Value::Object(raw.options.clone())) {
        Ok(options) => Some(options),
        Err(e) => {
            problems.push(Problem::new(path.clone(), e.to_string()));
            None
        }
    }
}

/// A base URL: absolute http(s), trailing slash dropped.
pub fn base_url(
    raw: &raw::Provider,
    default: Option<&str>,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let Some(text) = raw.base_url.as_deref().or(default) else {
        problems.push(Problem::new(
            path.clone(),
            "`base_url` is required for this provider type",
        ));
        return None;
    };
    let trimmed = text.trim_end_matches('/');
    match trimmed.parse::<Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some()
                && uri.query().is_none() =>
        {
            Some(trimmed.to_owned())
        }
        _ => {
            problems.push(Problem::new(
                path.key("base_url"),
                format!("{text:?} is not an http:// or https:// URL without a query"),
            ));
            None
        }
    }
}

/// `base` + `path` as a URI (both already checked).
pub fn join(base: &str, path: &str) -> Uri {
    format!("{base}{path}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("http://invalid./"))
}

/// Reads the common error shapes: `{"error": {"message", "code"}}`,
/// `{"error": "text"}`, `{"message"}`, `{"detail"}`; else the raw text.
pub fn error_message(body: &[u8]) -> (String, Option<String>) {
    #[derive(Deserialize)]
    struct Shape {
        error: Option<serde_json::Value>,
        message: Option<serde_json::Value>,
        detail: Option<serde_json::Value>,
        code: Option<serde_json::Value>,
    }
    fn text(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    fn code(v: Option<&serde_json::Value>) -> Option<String> {
        match v? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
    if let Ok(shape) = crate::json::from_slice::<Shape>(body) {
        match &shape.error {
            Some(serde_json::Value::Object(e)) => {
                let message = e
                    .get("message")
                    .map(text)
                    .unwrap_or_else(|| text(&shape.error.clone().unwrap_or_default()));
                return (message, code(e.get("code")).or_else(|| code(e.get("type"))));
            }
            Some(v) if !v.is_null() => return (text(v), code(shape.code.as_ref())),
            _ => {}
        }
        if let Some(m) = shape.message.as_ref().or(shape.detail.as_ref()) {
            return (text(m), code(shape.code.as_ref()));
        }
    }
    let raw = String::from_utf8_lossy(body).trim().to_owned();
    if raw.is_empty() {
        ("(empty body)".to_owned(), None)
    } else {
        (raw, None)
    }
}

/// A tool call's arguments as OpenAI carries them (JSON text in a string):
/// the contents of a JSON string, or an object's own text; `absent` when
/// the backend sent none (or null).
pub fn arguments_text(raw: Option<&serde_json::value::RawValue>, absent: &str) -> String {
    match raw.map(|r| r.get()) {
        None | Some("null") => absent.to_owned(),
        Some(text) if text.starts_with('"') => {
            serde_json::from_str(text).unwrap_or_else(|_| absent.to_owned())
        }
        Some(text) => text.to_owned(),
    }
}

/// The failure for an error a backend wrote where an answer was expected
/// (an error event in a stream, an error object in a 200 body).
pub fn in_band_failure(body: &[u8]) -> Failure {
    let (message, code) = error_message(body);
    let mut failure = Failure::new(Cause::InBand, message);
    failure.code = code;
    failure
}

/// The failure for a non-success status with a body in one of the common shapes.
/// A translated request is about as long as the chat body it came from:
/// its buffer starts at that length and this much more.
pub const TRANSLATED_ROOM: usize = 128;

pub fn status_failure(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
    let (message, code) = error_message(body);
    Failure {
        cause: Cause::Status(status),
        message: truncate(message, 500),
        code,
        retry_after: retry_after(headers),
    }
}

/// `retry-after-ms`, or `retry-after` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_common_error_shape() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                r#"{"error":{"message":"bad","type":"invalid_request_error","code":"x"}}"#,
                "bad",
                Some("x"),
            ),
            (
                r#"{"error":{"message":"m","type":"BadRequestError","code":400}}"#,
                "m",
                Some("400"),
            ),
            (
                r#"{"error":"'response_format.type' must be 'json_schema'"}"#,
                "'response_format.type' must be 'json_schema'",
                None,
            ),
            (
                r#"{"object":"error","message":"nope","code":404}"#,
                "nope",
                Some("404"),
            ),
            (
                r#"{"detail":"Not authenticated"}"#,
                "Not authenticated",
                None,
            ),
            ("upstream connect error", "upstream connect error", None),
            ("", "(empty body)", None),
        ];
        for (body, message, code) in cases {
            let (m, c) = error_message(body.as_bytes());
            assert_eq!(m, *message, "{body}");
            assert_eq!(c.as_deref(), *code, "{body}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
