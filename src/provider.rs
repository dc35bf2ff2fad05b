//! A provider as the request path sees it: an adapter, a transport, a credential.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

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
