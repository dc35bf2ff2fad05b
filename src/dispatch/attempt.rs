//! One try against one target: the adapter builds the upstream request, the
//! provider's credential is added, the transport sends it under the
//! provider's timeouts, and the answer becomes the client's response: whole,
//! or a [`Relay`] that has already produced its first event (so that a
//! failure up to that point can still be retried).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::adapter::{Converted, UpstreamRequest};
use crate::body::{Body, WholeError};
use crate::call::Call;
use crate::error::{Error, Kind};
use crate::headers::{X_ACCEL_BUFFERING, X_REQUEST_ID, X_SWITCHYARD_MODEL, X_SWITCHYARD_PROVIDER};
use crate::metrics::{Inflight, Metrics};
use crate::openai::Usage;
use crate::provider::Provider;
use crate::route::{ModelName, Target};
use crate::stream::Relay;
use crate::stream::chunks::{Shape, render_completion, render_embeddings, synthesize};
use crate::upstream::{BoxError, Cause, Failure, UpstreamBody, error_chain};

/// Which target answered; handed back through the call's outcome.
#[derive(Debug, Clone)]
pub struct Served {
    pub provider: Arc<str>,
    pub model: Arc<str>,
    /// Usage of a whole response (a stream reports its own at the end).
    pub usage: Option<Usage>,
}

/// Why one attempt did not produce a response.
#[derive(Debug)]
pub enum AttemptError {
    /// The request cannot be sent to this backend at all (a client error).
    Refused(Error),
    /// The backend failed; the dispatcher may try elsewhere.
    Failed(Failure),
}

impl From<Failure> for AttemptError {
    fn from(f: Failure) -> Self {
        AttemptError::Failed(f)
    }
}

/// One try against one target, sending `model` as the backend model, begun
/// at `sent`. `permit` (a provider concurrency slot) is held until the
/// answer is read, or, for a stream, until the stream ends.
pub async fn attempt(
    call: &Call,
    target: &Target,
    model: &ModelName,
    permit: Option<OwnedSemaphorePermit>,
    metrics: &Metrics,
    sent: Instant,
) -> Result<Response<Body>, AttemptError> {
    let provider = &target.provider;
    let upstream = provider
        .adapter
        .request(call, model)
        .map_err(AttemptError::Refused)?;
    let stream = upstream.stream;
    let fixed = upstream.fixed;
    let request = http_request(upstream);

    let timeouts = provider.timeouts;
    let deadline = call.started + timeouts.total;
    let inflight = Inflight::enter(&provider.inflight);
    let first_byte = (sent + timeouts.first_byte).min(deadline);
    let series = |label: &str| {
        metrics
            .upstream_duration
            .with_label_values(&[&provider.id, label])
    };
    let sent_to = |label: &str| {
        let seconds = sent.elapsed().as_secs_f64();
        if label == "200" {
            // The usual answer's series is looked up once per provider.
            let ok = provider.answered_ok.get_or_init(|| series(label));
            ok.observe(seconds);
        } else {
            series(label).observe(seconds);
        }
    };
    // Inline: the send (0.7 KB) fits in the room reading a body takes.
    // Pinned where it is made: the timeout holds a reference to it, so the
    // send is not copied into the timeout and again into this future.
    let send = std::pin::pin!(provider.send(request, fixed, Some(&call.request_id)));
    let response = match tokio::time::timeout_at(first_byte, send).await {
        Ok(Ok(response)) => response,
        Ok(Err(failure)) => {
            sent_to("connect");
            return Err(failure.into());
        }
        Err(_) => {
            sent_to("timeout");
            let cause = if first_byte < sent + timeouts.first_byte {
                Cause::TotalTimeout
            } else {
                Cause::FirstByteTimeout
            };
            return Err(Failure::new(
                cause,
                format!(
                    "no response within {}",
                    humantime::format_duration(first_byte.saturating_duration_since(sent))
                ),
            )
            .into());
        }
    };
    let status = response.status();
    sent_to(status.as_str());

    let (head, body) = response.into_parts();
    if !status.is_success() {
        let bytes = read_body(body, 64 * 1024, deadline)
            .await
            .unwrap_or_default();
        return Err(provider
            .adapter
            .failure(status, &head.headers, &bytes)
            .into());
    }

    let (mut response, usage) = if stream {
        let decoder = provider.adapter.decoder(call);
        let mut relay = Relay::new(
            provider.clone(),
            body,
            decoder,
            timeouts.stream_idle,
            deadline,
        );
        relay.hold(Box::new(inflight));
        if let Some(permit) = permit {
            relay.hold(Box::new(permit));
        }
        relay.prime().await?;
        let mut response = Response::new(Body::Relay(Box::new(relay)));
        *response.headers_mut() = target.answer.stream.clone();
        // A stream reports its usage when it ends.
        (response, None)
    } else {
        let limit = call.snapshot.settings.max_response_body as usize;
        let bytes = read_body(body, limit, deadline).await?;
        drop(permit);
        let converted = provider.adapter.response(call, &head.headers, bytes)?;
        render(call, &target.answer, converted)
    };

    target.answer.put_model(response.headers_mut(), model);
    call.outcome().served = Some(Served {
        provider: provider.id.clone(),
        model: model.name.clone(),
        usage,
    });
    Ok(response)
}

/// A whole answer as the client wants it, and its usage: JSON, or a
/// synthesized stream when the client asked for one from a backend that
/// answered whole.
fn render(
    call: &Call,
    answer: &AnswerHeaders,
    converted: Converted,
) -> (Response<Body>, Option<Usage>) {
    let (body, usage, stream) = match converted {
        // The passthrough's JSON is ready: nothing to render.
        Converted::Json { body, usage } => (body, usage, false),
        Converted::Chat(c) if call.view.stream => {
            (synthesize(&Shape::of(call), &c), Some(c.usage), true)
        }
        Converted::Chat(c) => (
            render_completion(&Shape::of(call), &c),
            Some(c.usage),
            false,
        ),
        Converted::Embeddings(e) => (
            render_embeddings(&Shape::of(call), &e),
            Some(e.usage),
            false,
        ),
    };
    let mut response = Response::new(Body::full(body));
    *response.headers_mut() = if stream {
        answer.stream.clone()
    } else {
        answer.json.clone()
    };
    (response, usage)
}

/// The headers every answer from a target carries, made when the config is
/// compiled and cloned for each response, which costs less than inserting
/// them one by one: the content type (JSON, or an event stream with the
/// headers that stop proxies from buffering it), `x-switchyard-provider`,
/// `x-switchyard-model` and `x-request-id`. The last is a stand-in that the
/// gateway always replaces, as is the model's for a wildcard target, so
/// that no insert grows the map.
#[derive(Debug)]
pub struct AnswerHeaders {
    pub json: HeaderMap,
    pub stream: HeaderMap,
    /// `x-switchyard-model` is the target's own, made here; otherwise it is
    /// made per answer ([`AnswerHeaders::put_model`]).
    model_made: bool,
}

impl AnswerHeaders {
    /// `model` is the target's backend model; `None` for a wildcard's.
    pub fn new(provider: Option<&HeaderValue>, model: Option<&str>) -> AnswerHeaders {
        const STAND_IN: HeaderValue = HeaderValue::from_static("-");
        let model = model.and_then(|m| HeaderValue::try_from(m).ok());
        let model = model.as_ref();
        let common = |headers: &mut HeaderMap| {
            if let Some(v) = provider {
                headers.insert(X_SWITCHYARD_PROVIDER, v.clone());
            }
            headers.insert(X_SWITCHYARD_MODEL, model.unwrap_or(&STAND_IN).clone());
            headers.insert(X_REQUEST_ID, STAND_IN);
        };
        // Room to spare: a full map grows even to replace a header, and
        // every answer has its `x-request-id` replaced (and may gain
        // `x-switchyard-attempts`); a clone keeps the room.
        const ROOM: usize = 12;
        let mut json = HeaderMap::with_capacity(ROOM);
        json.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        common(&mut json);
        let mut stream = HeaderMap::with_capacity(ROOM);
        sse_headers(&mut stream);
        common(&mut stream);
        AnswerHeaders {
            json,
            stream,
            model_made: model.is_some(),
        }
    }

    /// Replaces the stand-in model header of an answer with `model`, the
    /// one sent (a wildcard's is the client's), or leaves it out when that
    /// name cannot be a header value.
    pub fn put_model(&self, headers: &mut HeaderMap, model: &str) {
        if self.model_made {
            return;
        }
        match HeaderValue::try_from(model) {
            Ok(v) => headers.insert(X_SWITCHYARD_MODEL, v),
            Err(_) => headers.remove(X_SWITCHYARD_MODEL),
        };
    }
}

/// The upstream request as the adapter made it; the transport adds the
/// dialect's fixed headers, the provider's and the request id. Nothing of the
/// client's headers goes along.
fn http_request(upstream: UpstreamRequest) -> Request<Bytes> {
    let mut request = Request::new(upstream.body);
    *request.method_mut() = Method::POST;
    *request.uri_mut() = upstream.uri;
    *request.headers_mut() = upstream.headers;
    request
}

/// `text/event-stream` with the headers that stop proxies from buffering it.
fn sse_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
}

/// Reads a whole backend body, at most `limit` bytes, before `deadline`.
/// (A plain function: an `async fn` would hold the body twice.)
pub(crate) fn read_body(
    body: UpstreamBody,
    limit: usize,
    deadline: Instant,
) -> impl Future<Output = Result<Bytes, Failure>> {
    crate::body::whole_by(body, limit, deadline).map(move |read| body_read(read, limit))
}

/// What reading a backend's body came to.
fn body_read(
    read: Option<Result<Bytes, WholeError<BoxError>>>,
    limit: usize,
) -> Result<Bytes, Failure> {
    match read {
        Some(Ok(bytes)) => Ok(bytes),
        Some(Err(WholeError::TooLarge)) => Err(Failure::protocol(format!(
            "the response is larger than {limit} bytes"
        ))),
        Some(Err(WholeError::Body(e))) => Err(Failure::protocol(format!(
            "the response broke off: {}",
            error_chain(&*e)
        ))),
        None => Err(Failure::new(
            Cause::TotalTimeout,
            "the request took longer than the total timeout",
        )),
    }
}

/// The client's error for a failure that ends the request. Whatever the
/// backend said is scrubbed of the provider's key.
pub fn final_error(provider: &Provider, mut f: Failure) -> Error {
    if let Some(key) = &provider.api_key {
        f.message = key.redact(&f.message).into_owned();
    }
    let provider = &provider.id;
    let said = |what: &str| format!("provider {provider} {what}: {}", f.message);
    match f.cause {
        Cause::Status(s) if f.cause.is_client_error() => {
            let mut e = Error::new(Kind::UpstreamRejected(s), f.message);
            e.code = f.code.map(String::into_boxed_str);
            e
        }
        Cause::Status(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Error::new(
            Kind::Upstream,
            format!("provider {provider} rejected the gateway's credentials"),
        ),
        Cause::Status(s) if s.as_u16() == 429 || s.as_u16() == 529 => Error::new(
            Kind::UpstreamRateLimited,
            said(&format!("is rate limiting ({})", s.as_u16())),
        )
        .with_retry_after(f.retry_after),
        Cause::Status(s) => Error::new(Kind::Upstream, said(&format!("answered {}", s.as_u16()))),
        Cause::Connect => Error::new(Kind::Upstream, said("is unreachable")),
        Cause::FirstByteTimeout | Cause::IdleTimeout | Cause::TotalTimeout => {
            Error::new(Kind::UpstreamTimeout, said("timed out"))
        }
        Cause::Protocol | Cause::InBand => Error::new(Kind::Upstream, said("failed")),
        Cause::Saturated => Error::new(
            Kind::Overloaded,
            format!("provider {provider} {}", f.message),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::X_SWITCHYARD_ATTEMPTS;

    /// What the gateway puts into every answer fits in the room a target's
    /// headers were made with: no answer makes its map grow.
    #[test]
    fn an_answer_finishes_its_headers_without_growing_them() {
        let provider = HeaderValue::from_static("p");
        for answer in [
            AnswerHeaders::new(Some(&provider), Some("m")),
            AnswerHeaders::new(Some(&provider), None),
        ] {
            for made in [&answer.json, &answer.stream] {
                let mut headers = made.clone();
                let room = headers.capacity();
                answer.put_model(&mut headers, "wild/card");
                headers.insert(X_SWITCHYARD_ATTEMPTS, HeaderValue::from_static("3"));
                headers.insert(X_REQUEST_ID, HeaderValue::from_static("req-1"));
                assert_eq!(headers.capacity(), room, "{headers:?}");
                assert_eq!(headers[X_REQUEST_ID], "req-1");
            }
        }
    }
}
