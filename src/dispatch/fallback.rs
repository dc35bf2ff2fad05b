//! Fallbacks: when every try of an alias failed in a way worth retrying, the
//! alias's `fallbacks` are tried in order, each with its own tries. A
//! fallback's own fallbacks are not followed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use tower::ServiceExt;
use tower::retry::budget::Budget as _;

use super::{Attempt, DispatchError};
use crate::body::Body;
use crate::call::Call;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Fallback<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Fallback<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Fallback { inner, metrics }
    }
}

impl<S> tower::Service<Arc<Call>> for Fallback<S>
where
    S: tower::Service<Attempt, Response = Response<Body>, Error = DispatchError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = DispatchError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, DispatchError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DispatchError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Arc<Call>) -> Self::Future {
        let inner = self.inner.clone();
        let metrics = self.metrics.clone();
        crate::inplace::pinned(|| async move {
            let primary = &call.route.alias;
            let mut fallbacks = primary.fallbacks.iter();
            let (mut alias, mut default_model) = (primary, call.route.default_model.clone());
            loop {
                alias.budget.deposit();
                let attempt = Attempt {
                    alias: alias.clone(),
                    default_model,
                    tried: Vec::new(),
                    call: call.clone(),
                };
                let result = inner.clone().oneshot(attempt).await;
                let Err(DispatchError::Failed { failure, .. }) = &result else {
                    return result;
                };
                if call.snapshot.routing.retry_reason(failure).is_none() {
                    return result;
                }
                let Some(next) = fallbacks.find_map(|name| call.snapshot.aliases.get_exact(name))
                else {
                    return result;
                };
                metrics
                    .fallbacks
                    .with_label_values(&[&alias.name, &next.name])
                    .inc();
                tracing::info!(from = %alias.name, to = %next.name, "every target failed; falling back");
                (alias, default_model) = (next, next.as_model.clone());
            }
        })
    }
}
