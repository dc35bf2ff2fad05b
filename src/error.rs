//! The one error type of the request path, and its OpenAI-shaped rendering.
//!
//! Every stage below the rescue stage only propagates an [`Error`]; the rescue
//! stage in `gateway.rs` turns it into a response with [`Error::into_response`].
//! An error records whose fault it is through its [`Kind`]; the status, the
//! OpenAI `type` and `code` all follow from the kind, in one match.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::body::Body;

/// What went wrong, and so whose fault it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    // --- the client's request ---
    /// Malformed JSON, missing or mistyped fields, a field the backend cannot honour.
    InvalidRequest,
    /// No gateway key, or one that is not configured.
    Unauthenticated,
    /// The key may not use this model.
    ModelNotAllowed,
    /// No alias or wildcard matches the model.
    ModelNotFound,
    /// No such endpoint.
    UnknownPath,
    /// The endpoint exists but not with this method.
    MethodNotAllowed,
    /// Body larger than `limits.max_request_body`.
    TooLarge,
    /// Request headers larger than `limits.max_header_bytes`.
    HeadersTooLarge,
    /// The client took too long to send its request.
    ClientTimeout,
    /// A key or alias limit was hit.
    RateLimited,
    // --- the backend's answer ---
    /// The backend said the request was bad (400/404/413/422); its status is kept.
    UpstreamRejected(StatusCode),
    /// Every target answered 429/529.
    UpstreamRateLimited,
    /// Every target and fallback failed.
    Upstream,
    /// A timeout expired.
    UpstreamTimeout,
    // --- the gateway itself ---
    /// A provider's queue is full, or the gateway is shutting down.
    Overloaded,
    /// A bug or an unexpected state; never a client's or a backend's fault.
    Internal,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::InvalidRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::ModelNotAllowed => StatusCode::FORBIDDEN,
            Kind::ModelNotFound | Kind::UnknownPath => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Kind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::RateLimited | Kind::UpstreamRateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::UpstreamRejected(status) => status,
            Kind::Upstream => StatusCode::BAD_GATEWAY,
            Kind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `error.type`.
    pub fn error_type(self) -> &'static str {
        match self {
            Kind::InvalidRequest
            | Kind::ModelNotFound
            | Kind::UnknownPath
            | Kind::MethodNotAllowed
            | Kind::TooLarge
            | Kind::HeadersTooLarge
            | Kind::ClientTimeout
            | Kind::UpstreamRejected(_) => "invalid_request_error",
            Kind::Unauthenticated => "authentication_error",
            Kind::ModelNotAllowed => "permission_error",
            Kind::RateLimited | Kind::UpstreamRateLimited => "rate_limit_error",
            Kind::Upstream | Kind::UpstreamTimeout => "upstream_error",
            Kind::Overloaded | Kind::Internal => "server_error",
        }
    }

    /// The OpenAI `error.code` when the kind fixes one.
    pub fn default_code(self) -> Option<&'static str> {
        match self {
            Kind::InvalidRequest | Kind::UpstreamRejected(_) => None,
            Kind::Unauthenticated => Some("invalid_api_key"),
            Kind::ModelNotAllowed => Some("model_not_allowed"),
            Kind::ModelNotFound => Some("model_not_found"),
            Kind::UnknownPath => Some("unknown_url"),
            Kind::MethodNotAllowed => Some("method_not_allowed"),
            Kind::TooLarge => Some("request_too_large"),
            Kind::HeadersTooLarge => Some("request_header_fields_too_large"),
            Kind::ClientTimeout => Some("request_timeout"),
            Kind::RateLimited => Some("rate_limit_exceeded"),
            Kind::UpstreamRateLimited => Some("upstream_rate_limited"),
            Kind::Upstream => Some("upstream_error"),
            Kind::UpstreamTimeout => Some("upstream_timeout"),
            Kind::Overloaded => Some("overloaded"),
            Kind::Internal => Some("internal_error"),
        }
    }
}

/// A request-path error: a kind plus what the client should read.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub message: Cow<'static, str>,
    /// The request field at fault, when there is one.
    pub param: Option<&'static str>,
    /// A code that overrides the kind's default (a backend's own code).
    pub code: Option<Box<str>>,
    /// Sent as `retry-after` (whole seconds, rounded up).
    pub retry_after: Option<Duration>,
    /// Extra headers such as the `x-ratelimit-*` family.
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The provider that failed last, for logs and metrics (never sent).
    pub provider: Option<std::sync::Arc<str>>,
}

/// The constructors are `#[cold]`: the compiler then lays out the code
/// that makes an error (mostly formatting its message) away from the code
/// a request runs, which so takes fewer instruction-cache lines.
impl Error {
    #[cold]
    pub fn new(kind: Kind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
            headers: Vec::new(),
            provider: None,
        }
    }

    #[cold]
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Kind::InvalidRequest, message)
    }

    #[cold]
    pub fn invalid_param(param: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Kind::InvalidRequest, message).with_param(param)
    }

    #[cold]
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Kind::Internal, message)
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into().into_boxed_str());
        self
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The error body, `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Bytes {
        let code = self.code.as_deref().or(self.kind.default_code());
        let body = ErrorBody {
            error: ErrorObject {
                message: &self.message,
                r#type: self.kind.error_type(),
                param: self.param,
                code,
            },
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The whole response: status, JSON body, `retry-after` and extra headers.
    #[cold]
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::full(self.body()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.error_type())
    }
}

impl std::error::Error for Error {}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

/// The OpenAI error object; also used for the in-band error event of a stream.
#[derive(Serialize)]
pub struct ErrorObject<'a> {
    pub message: &'a str,
    pub r#type: &'static str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_all_four_keys() {
        let body = Error::new(Kind::ModelNotFound, "no model `x`").body();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["param"].is_null());
        assert_eq!(v["error"]["message"], "no model `x`");
    }

    #[test]
    fn upstream_rejection_keeps_the_backend_status() {
        let e = Error::new(
            Kind::UpstreamRejected(StatusCode::UNPROCESSABLE_ENTITY),
            "bad",
        )
        .with_code("context_length_exceeded");
        assert_eq!(e.status(), 422);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "context_length_exceeded");
    }

    #[test]
    fn retry_after_rounds_up() {
        let r = Error::new(Kind::RateLimited, "slow down")
            .with_retry_after(Some(Duration::from_millis(1200)))
            .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
