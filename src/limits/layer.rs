//! The admission layer: the outermost tower layer of dispatch. It checks and
//! charges the caller's and the alias's limits, adds the `x-ratelimit-*`
//! headers, and hands the [`Ticket`] to the response, whose body settles it
//! with the real usage when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use tower::ServiceExt;

use super::{Engine, Ticket};
use crate::body::Body;
use crate::call::Call;
use crate::error::Error;
use crate::openai::Usage;
use crate::registry::Snapshot;
use crate::route::Alias;

/// The ticket, as a response extension (extensions must be `Clone`).
#[derive(Clone, Debug)]
pub struct Admitted(pub Arc<Mutex<Option<Ticket>>>);

impl Admitted {
    pub fn take(&self) -> Option<Ticket> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

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
        Box::pin(async move {
            let ticket = engine
                .admit(&call, lease_for(&call.snapshot, &call.route.alias))
                .await?;
            match inner.oneshot(call).await {
                Ok(mut response) => {
                    for (name, value) in ticket.headers() {
                        response.headers_mut().insert(name.clone(), value.clone());
                    }
                    response
                        .extensions_mut()
                        .insert(Admitted(Arc::new(Mutex::new(Some(ticket)))));
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

/// How long a concurrency lease lives: past the longest request the call can
/// become on its alias or on any of the alias's fallbacks, then it expires
/// (so that a replica that died cannot hold a slot for ever).
fn lease_for(snapshot: &Snapshot, alias: &Alias) -> Duration {
    let fallbacks = alias
        .fallbacks
        .iter()
        .filter_map(|name| snapshot.aliases.get_exact(name));
    std::iter::once(alias)
        .chain(fallbacks.map(|a| &**a))
        .flat_map(|a| &a.targets)
        .map(|t| t.provider.timeouts.total)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load_str;
    use crate::registry::Shared;

    #[test]
    fn a_lease_outlives_the_longest_fallback_too() {
        let text = "\
providers:
  quick: { type: demo, timeouts: { total: 30s } }
  slow: { type: demo, timeouts: { total: 10m } }
models:
  a: { targets: [{ provider: quick }], fallbacks: [b] }
  b: { targets: [{ provider: slow }] }
";
        let snapshot = load_str(text, &|_| None, &Shared::default())
            .unwrap_or_else(|problems| panic!("{problems:?}"));
        let a = snapshot.aliases.get_exact("a").unwrap();
        let b = snapshot.aliases.get_exact("b").unwrap();
        assert_eq!(lease_for(&snapshot, a), Duration::from_secs(660));
        assert_eq!(lease_for(&snapshot, b), Duration::from_secs(660));
    }
}
