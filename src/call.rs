//! What the request path knows about one client request once it is routed.

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::HeaderValue;
use tokio::time::Instant;

use crate::auth::Caller;
use crate::dispatch::Served;
use crate::limits::Ticket;
use crate::openai::{Endpoint, RequestView};
use crate::registry::Snapshot;
use crate::route::Route;

/// One routed client request. Cheap to share: the body is `Bytes` and the
/// snapshot an `Arc`, so every attempt reads the same bytes.
#[derive(Debug)]
pub struct Call {
    /// The config this request started on; it finishes on it too.
    pub snapshot: Arc<Snapshot>,
    pub request_id: HeaderValue,
    pub endpoint: Endpoint,
    pub caller: Caller,
    /// The body exactly as the client sent it.
    pub body: Bytes,
    pub view: RequestView,
    pub route: Route,
    /// The client's model name as a JSON string; responses carry it as `model`.
    pub model_json: Bytes,
    pub started: Instant,
    /// Upstream tries so far, across retries and fallbacks.
    pub attempts: AtomicU32,
    /// What dispatch hands back besides the response.
    pub outcome: Mutex<Outcome>,
}

/// Set by the layers that produced a response, read by the gateway once
/// dispatch returns (a field here, not a response extension: no map and
/// no boxes to allocate per request).
#[derive(Debug, Default)]
pub struct Outcome {
    /// The admission ticket, settled with the real usage when the answer ends.
    pub ticket: Option<Ticket>,
    /// Which target answered.
    pub served: Option<Served>,
}

impl Call {
    pub fn outcome(&self) -> MutexGuard<'_, Outcome> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner())
    }
}
