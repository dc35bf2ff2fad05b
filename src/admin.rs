//! The admin listener: `/metrics`, `/healthz`, `/readyz`. Never on the public port.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::body::Body;
use crate::dispatch::health::Availability;
use crate::gateway::State;

#[derive(Clone)]
pub struct Admin {
    state: Arc<State>,
}

impl Admin {
    pub fn new(state: Arc<State>) -> Self {
        Admin { state }
    }

    fn respond(&self, path: &str) -> Response<Body> {
        let (status, content_type, body) = match path {
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.state.metrics().render(),
            ),
            "/healthz" => (
                StatusCode::OK,
                "application/json",
                b"{\"status\":\"ok\"}".to_vec(),
            ),
            "/readyz" => {
                let (status, text) = self.readiness();
                let body = format!("{{\"status\":\"{text}\"}}").into_bytes();
                (status, "application/json", body)
            }
            _ => (
                StatusCode::NOT_FOUND,
                "application/json",
                b"{\"error\":\"not found: try /metrics, /healthz or /readyz\"}".to_vec(),
            ),
        };
        let mut response = Response::new(Body::full(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}

impl Admin {
    /// Ready while not draining and while at least one target is in rotation.
    fn readiness(&self) -> (StatusCode, &'static str) {
        if self.state.is_draining() {
            return (StatusCode::SERVICE_UNAVAILABLE, "draining");
        }
        let snapshot = self.state.registry.load();
        let now = tokio::time::Instant::now();
        let healthy = snapshot
            .aliases
            .all
            .iter()
            .flat_map(|a| a.targets.iter())
            .filter(|t| t.weight > 0)
            .any(|t| !matches!(t.state.availability(now), Availability::Cooling(_)));
        if healthy {
            (StatusCode::OK, "ready")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "no healthy target")
        }
    }
}

impl<B> tower::Service<Request<B>> for Admin {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(self.respond(request.uri().path())))
    }
}
