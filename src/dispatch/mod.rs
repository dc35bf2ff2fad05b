//! Dispatch: from a routed call to a backend's answer, as tower layers
//! around the upstream call, outer to inner:
//!
//! 1. [`limits::layer::Admit`] checks and charges the key's and the alias's
//!    rate limits and budgets (429 when one is spent), adds the
//!    `x-ratelimit-*` headers, and hands its ticket to the response;
//! 2. [`fallback::Fallback`] walks the alias and then its `fallbacks`;
//! 3. `tower::retry::Retry` with [`retry::RetryPolicy`] retries an alias's
//!    retryable failures on other targets, with backoff and a budget;
//! 4. [`balance::Pick`] chooses a target (weights, health, latency), takes a
//!    provider concurrency slot, tries it, and records the outcome;
//! 5. [`attempt::attempt`] is the one upstream call.
//!
//! [`limits::layer::Admit`]: crate::limits::layer::Admit
//!
//! Every layer works before the first byte reaches the client: an attempt
//! returns only once the backend's first event is in hand, so nothing that
//! reached the client is ever retried. When the client leaves, the whole
//! stack's future is dropped: the upstream call, a back-off sleep, a wait in
//! a provider's queue.

pub mod attempt;
pub mod balance;
pub mod fallback;
pub mod health;
pub mod limit;
pub mod retry;

use std::sync::Arc;

use http::Response;
use tower::ServiceExt;

pub use attempt::{AnswerHeaders, Served, final_error};

use crate::body::Body;
use crate::call::Call;
use crate::error::Error;
use crate::limits::layer::Admit;
use crate::provider::Provider;
use crate::registry::Shared;
use crate::route::{Alias, ModelName};
use crate::upstream::Failure;

/// One alias's share of a request, as it goes down the stack.
#[derive(Clone)]
pub struct Attempt {
    pub call: Arc<Call>,
    /// The alias being served: the client's, or a fallback.
    pub alias: Arc<Alias>,
    /// The backend model for targets that name none.
    pub default_model: ModelName,
    /// Targets of this alias already tried by this request.
    pub tried: Vec<usize>,
}

/// Why the stack produced no response.
#[derive(Debug)]
pub enum DispatchError {
    /// The request cannot go to this backend at all (the client's problem).
    Refused(Error),
    /// A backend failed.
    Failed {
        failure: Failure,
        provider: Arc<Provider>,
        /// Index of the target in its alias.
        target: usize,
        /// Every target was cooling down; this was the one try allowed.
        last_resort: bool,
    },
}

/// Sends the call through admit → fallback → retry → pick → attempt.
pub async fn dispatch(call: Arc<Call>, shared: &Shared) -> Result<Response<Body>, Error> {
    let metrics = &shared.metrics;
    let pick = balance::Pick::new(metrics.clone());
    let retry = tower::retry::Retry::new(retry::RetryPolicy::new(metrics.clone()), pick);
    let fallback = fallback::Fallback::new(retry, metrics.clone()).map_err(into_error);
    Admit::new(fallback, shared.limits.clone())
        .oneshot(call)
        .await
}

/// The client's error for what the stack could not do.
fn into_error(e: DispatchError) -> Error {
    match e {
        DispatchError::Refused(e) => e,
        DispatchError::Failed {
            failure, provider, ..
        } => {
            let mut e = final_error(&provider, failure);
            e.provider = Some(provider.id.clone());
            e
        }
    }
}
