//! A provider as the request path sees it: an adapter, a transport, a credential.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};

use crate::adapter::Adapter;
use crate::dispatch::health::HealthCheck;
use crate::dispatch::limit::Limiter;
use crate::secret::Secret;
use crate::upstream::{Added, Failure, PoolKey, Stamp, Timeouts, Transport, UpstreamBody};

#[derive(Debug)]
pub struct Provider {
    /// The name in the config; the `provider` metric label.
    pub id: Arc<str>,
    /// `id` as the value of `x-switchyard-provider`.
    pub id_header: Option<HeaderValue>,
    /// This provider's `switchyard_inflight_requests` series.
    pub inflight: prometheus::IntGauge,
    /// Its `switchyard_upstream_duration_seconds` series for status 200,
    /// looked up once, when the first 200 comes (a lookup by labels hashes
    /// them every time).
    pub answered_ok: std::sync::OnceLock<prometheus::Histogram>,
    pub kind: String,
    pub adapter: Box<dyn Adapter>,
    pub transport: Transport,
    /// The provider key, kept to scrub it from anything a backend says back.
    pub api_key: Option<Secret>,
    /// The configured headers, the credential and the user agent, sent
    /// with every request.
    pub stamp: Stamp,
    pub timeouts: Timeouts,
    /// The pool this provider's HTTP client lives in, if it talks HTTP.
    pub pool: Option<PoolKey>,
    /// The concurrency cap, when `max_concurrent` is set.
    pub limiter: Option<Arc<Limiter>>,
    pub health_check: Option<HealthCheck>,
    /// How often to list the backend's models, when `discover` is on.
    pub discover: Option<std::time::Duration>,
}

impl Provider {
    /// Sends `request` to this backend with what goes beside its own
    /// headers: the dialect's `fixed` ones, this provider's stamp
    /// (configured headers, credential, user agent) and the request id.
    /// A successful answer's headers are kept only when the adapter reads
    /// them (nothing else does: health checks and model lists read the
    /// status and the body, and an error's headers are always kept).
    pub fn send<'a>(
        &'a self,
        request: Request<Bytes>,
        fixed: &'static [(HeaderName, HeaderValue)],
        request_id: Option<&'a HeaderValue>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Failure>> + 'a {
        let added = Added {
            fixed,
            stamp: &self.stamp,
            request_id,
            answer_headers: self.adapter.reads_answer_headers(),
        };
        self.transport.send(request, added)
    }

    /// A GET of `uri`, sent with this provider's stamp (health checks,
    /// model lists).
    pub fn get(
        &self,
        uri: Uri,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Failure>> + '_ {
        let mut request = Request::new(Bytes::new());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = uri;
        self.send(request, &[], None)
    }
}
