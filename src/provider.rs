//! A provider as the request path sees it: an adapter, a transport, a credential.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, header};

use crate::adapter::Adapter;
use crate::dispatch::health::HealthCheck;
use crate::dispatch::limit::Limiter;
use crate::secret::Secret;
use crate::upstream::{PoolKey, Timeouts, Transport};

#[derive(Debug)]
pub struct Provider {
    /// The name in the config; the `provider` metric label.
    pub id: Arc<str>,
    /// `id` as the value of `x-switchyard-provider`.
    pub id_header: Option<HeaderValue>,
    /// This provider's `switchyard_inflight_requests` series.
    pub inflight: prometheus::IntGauge,
    pub kind: String,
    pub adapter: Box<dyn Adapter>,
    pub transport: Transport,
    /// The header that carries the provider key, marked sensitive.
    pub credential: Option<(HeaderName, HeaderValue)>,
    /// The provider key, kept to scrub it from anything a backend says back.
    pub api_key: Option<Secret>,
    /// Static headers from the config, sent with every request.
    pub headers: HeaderMap,
    pub timeouts: Timeouts,
    /// The pool this provider's HTTP client lives in, if it talks HTTP.
    pub pool: Option<PoolKey>,
    /// The concurrency cap, when `max_concurrent` is set.
    pub limiter: Option<Arc<Limiter>>,
    pub health_check: Option<HealthCheck>,
    /// How often to list the backend's models, when `discover` is on.
    pub discover: Option<std::time::Duration>,
}

const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("switchyard/", env!("CARGO_PKG_VERSION")));

impl Provider {
    /// What the gateway adds to every request to this provider: the
    /// configured headers, the credential (which wins over them) and the
    /// user agent.
    pub fn stamp(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            headers.insert(name, value.clone());
        }
        if let Some((name, value)) = &self.credential {
            headers.insert(name, value.clone());
        }
        headers.insert(header::USER_AGENT, USER_AGENT);
    }

    /// A GET of `uri` as this provider expects it (health checks, model lists).
    pub fn get(&self, uri: Uri) -> Request<Bytes> {
        let mut request = Request::new(Bytes::new());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = uri;
        self.stamp(request.headers_mut());
        request
    }
}
