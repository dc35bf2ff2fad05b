//! The admission layer: the outermost tower layer of dispatch. It checks and
//! charges the caller's and the alias's limits, adds the `x-ratelimit-*`
//! headers, and hands the [`Ticket`] back through the call's outcome; the
//! response's body settles it with the real usage when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use tower::ServiceExt;

use super::Engine;
use crate::body::Body;
use crate::call::Call;
use crate::error::Error;
use crate::openai::Usage;

#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S> Admit<S> {
    pub fn new(inner: S, engine: Arc<Engine>) -> Self {
        Admit { inner, engine }
    }
}

impl<S> tower::Service<Arc<Call>> for Admit<S>
where
    S: tower::Service<Arc<Call>, Response = Response<Body>, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Arc<Call>) -> Self::Future {
        let inner = self.inner.clone();
        let engine = self.engine.clone();
        crate::inplace::pinned(|| async move {
            let ticket = engine.admit(&call).await?;
            match inner.oneshot(call.clone()).await {
                Ok(mut response) => {
                    for (name, value) in ticket.headers() {
                        response.headers_mut().insert(name.clone(), value.clone());
                    }
                    call.outcome().ticket = Some(ticket);
                    Ok(response)
                }
                Err(mut e) => {
                    e.headers.extend(ticket.headers().iter().cloned());
                    // Nothing was generated: the token estimate is refunded.
                    ticket.settle(Some(Usage::default()));
                    Err(e)
                }
            }
        })
    }
}
