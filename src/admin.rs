//! The admin listener: `/metrics`, `/healthz`, `/readyz`. Never on the public port.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::body::Body;
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
                if self.state.is_draining() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "application/json",
                        b"{\"status\":\"draining\"}".to_vec(),
                    )
                } else {
                    (
                        StatusCode::OK,
                        "application/json",
                        b"{\"status\":\"ready\"}".to_vec(),
                    )
                }
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
