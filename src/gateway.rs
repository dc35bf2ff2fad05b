//! The public request path, read top to bottom.
//!
//! Phases of one request, in order (each returns early with an [`Error`]):
//! 1. **observe** – take or make the request id, load the config snapshot
//!    once; every later phase uses that snapshot.
//! 2. **match** – method and path → [`Endpoint`] (404 / 405).
//! 3. **hygiene** – header size (431).
//! 4. **authenticate** – gateway key → [`Caller`] (401).
//! 5. **read** – the body, up to `limits.max_request_body` (413), within
//!    `timeouts.client_body` (408).
//! 6. **parse** – the zero-copy [`RequestView`] (400).
//! 7. **route** – model → alias (404), key allow-list (403), endpoint support (400).
//! 8. **dispatch** – target choice, adapter, upstream call (502 / 504 / backend 4xx).
//! 9. **rescue** – an error becomes its OpenAI-shaped response; every response
//!    gets `x-request-id`, and its body is wrapped in [`Observed`], which
//!    records the request metrics when the last byte is handed to hyper and
//!    writes the access log line once hyper has written it ([`crate::deferred`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame};
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::Caller;
use crate::body::{Body, WholeError};
use crate::call::Call;
use crate::discovery::Discovery;
use crate::dispatch;
use crate::error::{Error, Kind};
use crate::headers::{X_REQUEST_ID, X_SWITCHYARD_ATTEMPTS};
use crate::limits::Ticket;
use crate::metrics::{Metrics, RequestLabels, RequestRecord};
use crate::openai::{Endpoint, ModelList, ModelObject, RequestView, json_string};
use crate::registry::{Registry, Snapshot};
use crate::upstream::BoxError;

/// Everything the request path shares.
pub struct State {
    pub registry: Registry,
    /// Set when shutdown begins; `/readyz` turns false.
    pub draining: AtomicBool,
}

/// The public service.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<State>,
}

impl Gateway {
    pub fn new(state: Arc<State>) -> Self {
        Gateway { state }
    }
}

impl<B> tower::Service<Request<B>> for Gateway
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Observed>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Observed>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        crate::inplace::pinned(|| serve(self.state.clone(), request))
    }
}

async fn serve<B>(state: Arc<State>, request: Request<B>) -> Result<Response<Observed>, Infallible>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    // 1. observe
    let started = Instant::now();
    let request_id = request_id(request.headers());
    let snapshot = state.registry.load();
    // Boxed: the response carries the record to its last byte, and hyper
    // moves the response several times (a 352-byte record made each move
    // cost more than the allocation).
    let mut record = Box::new(Record::new(request_id.clone(), started));
    let span = tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or(""),
        key = tracing::field::Empty,
        model = tracing::field::Empty,
    );

    // Boxed: inline, the handler's future (about 1 KB) would be copied into
    // the span's wrapper and again whenever this future moves or is boxed.
    // The handler records fields on the span it is given: finding the
    // current span costs more than the clone (nothing, when it is disabled).
    let handled = crate::inplace::pinned(|| handle(&state, snapshot, request, &mut record, &span))
        .instrument(span.clone())
        .await;
    let mut response = match handled {
        Ok(response) => response,
        // 9. rescue
        Err(error) => {
            record.error = Some(error.message.to_string());
            record.provider = error.provider.clone();
            error.into_response()
        }
    };
    response.headers_mut().insert(X_REQUEST_ID, request_id);
    record.status = response.status();
    Ok(response.map(|body| Observed::new(body, record, state)))
}

async fn handle<B>(
    state: &State,
    snapshot: Arc<Snapshot>,
    request: Request<B>,
    record: &mut Record,
    span: &tracing::Span,
) -> Result<Response<Body>, Error>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    // 2. match
    let endpoint = endpoint(request.method(), request.uri().path())?;
    record.endpoint = Some(endpoint);

    // 3. hygiene
    let settings = &snapshot.settings;
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes as u64 > settings.max_header_bytes {
        return Err(Error::new(
            Kind::HeadersTooLarge,
            format!(
                "request headers are {header_bytes} bytes; the limit is {}",
                settings.max_header_bytes
            ),
        ));
    }

    // 4. authenticate
    let caller = snapshot.keys.authenticate(request.headers())?;
    span.record("key", caller.label());
    record.key = Some(caller.clone());

    if endpoint == Endpoint::Models {
        return models(
            &snapshot,
            &state.registry.shared.discovery,
            &caller,
            request.uri().path(),
        );
    }

    // 5. read
    let body = read_body(
        request.into_body(),
        settings.max_request_body,
        record.started,
        settings.client_body_timeout,
    )
    .await?;

    if settings.log_bodies {
        record.body = Some(bytes::BytesMut::new());
        tracing::info!(
            target: "switchyard::bodies",
            request_id = record.request_id.to_str().unwrap_or(""),
            request = %String::from_utf8_lossy(&body[..body.len().min(BODY_LOG_LIMIT)]),
            "request body"
        );
    }

    // 6. parse
    let view = RequestView::parse(endpoint, &body)?;
    record.stream = view.stream;

    // 7. route
    let route = snapshot.aliases.resolve(&view.model).ok_or_else(|| {
        Error::new(
            Kind::ModelNotFound,
            format!(
                "The model `{}` does not exist or you do not have access to it.",
                view.model
            ),
        )
        .with_param("model")
    })?;
    record.model = Some(route.alias.name.clone());
    span.record("model", &*route.alias.name);
    if !caller.may_use(&view.model) {
        return Err(Error::new(
            Kind::ModelNotAllowed,
            format!("this key may not use the model `{}`", view.model),
        )
        .with_param("model"));
    }
    if !route
        .alias
        .targets
        .iter()
        .any(|t| t.provider.adapter.supports(endpoint))
    {
        return Err(Error::invalid_param(
            "model",
            format!(
                "the model `{}` does not serve /v1{}",
                view.model,
                endpoint.path()
            ),
        ));
    }

    // 8. dispatch
    // An alias asked for by its own name has its JSON string made already.
    let model_json = if *view.model == *route.alias.name {
        route.alias.as_model.json.clone()
    } else {
        json_string(&view.model)
    };
    let call = Arc::new(Call {
        model_json,
        snapshot,
        request_id: record.request_id.clone(),
        endpoint,
        caller,
        body,
        view,
        route,
        started: record.started,
        attempts: AtomicU32::new(0),
        outcome: Default::default(),
    });
    let result = dispatch::dispatch(call.clone(), &state.registry.shared).await;
    record.attempts = call.attempts.load(Ordering::Relaxed);
    let outcome = std::mem::take(&mut *call.outcome());
    record.ticket = outcome.ticket;
    if let Some(served) = outcome.served {
        record.provider = Some(served.provider);
        record.backend_model = Some(served.model);
        record.usage = served.usage;
    }
    let mut response = result?;
    if record.attempts > 1
        && let Ok(v) = HeaderValue::try_from(record.attempts.to_string())
    {
        response.headers_mut().insert(X_SWITCHYARD_ATTEMPTS, v);
    }
    Ok(response)
}

/// The endpoint for a method and path.
fn endpoint(method: &Method, path: &str) -> Result<Endpoint, Error> {
    let (endpoint, allowed) = match path.trim_end_matches('/') {
        "/v1/chat/completions" => (Endpoint::Chat, Method::POST),
        "/v1/completions" => (Endpoint::Completions, Method::POST),
        "/v1/embeddings" => (Endpoint::Embeddings, Method::POST),
        "/v1/models" => (Endpoint::Models, Method::GET),
        p if p.starts_with("/v1/models/") => (Endpoint::Models, Method::GET),
        _ => {
            return Err(Error::new(
                Kind::UnknownPath,
                format!("Invalid URL ({method} {path})"),
            ));
        }
    };
    if *method != allowed {
        let mut e = Error::new(
            Kind::MethodNotAllowed,
            format!("{path} accepts {allowed}, not {method}"),
        );
        let allow = if allowed == Method::GET {
            "GET"
        } else {
            "POST"
        };
        e.headers
            .push((header::ALLOW, HeaderValue::from_static(allow)));
        return Err(e);
    }
    Ok(endpoint)
}

/// `GET /v1/models` and `GET /v1/models/{id}`.
/// Every alias the caller may use, and for wildcard aliases over
/// discovering providers, the concrete names they stand for.
fn models(
    snapshot: &Snapshot,
    discovery: &Discovery,
    caller: &Caller,
    path: &str,
) -> Result<Response<Body>, Error> {
    let object = |id| ModelObject {
        id,
        object: "model",
        created: snapshot.created,
        owned_by: "switchyard",
    };
    let body = match path.trim_end_matches('/').strip_prefix("/v1/models/") {
        None => {
            let mut names: Vec<String> = Vec::new();
            for alias in &snapshot.aliases.all {
                if caller.may_use(&alias.name) {
                    names.push(alias.name.to_string());
                }
                if alias.wildcard {
                    let concrete = crate::discovery::expand(alias, |p| discovery.models(p));
                    names.extend(concrete.into_iter().filter(|n| {
                        caller.may_use(n)
                            && snapshot
                                .aliases
                                .resolve(n)
                                .is_some_and(|r| Arc::ptr_eq(&r.alias, alias))
                    }));
                }
            }
            serde_json::to_vec(&ModelList {
                object: "list",
                data: names.iter().map(|n| object(n)).collect(),
            })
        }
        Some(id) => {
            let allowed = snapshot.aliases.resolve(id).is_some() && caller.may_use(id);
            if !allowed {
                return Err(Error::new(
                    Kind::ModelNotFound,
                    format!("The model `{id}` does not exist or you do not have access to it."),
                ));
            }
            serde_json::to_vec(&object(id))
        }
    }
    .map_err(|e| Error::internal(e.to_string()))?;
    let mut response = Response::new(Body::full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Reads the whole request body, refusing what is too large; a body whose
/// declared length is over the limit (hyper's size hint) is refused before
/// any of it is read. It must arrive `within` of the request's start.
/// (A plain function: an `async fn` would hold the body twice.)
fn read_body<B>(
    body: B,
    limit: u64,
    started: Instant,
    within: Duration,
) -> impl Future<Output = Result<Bytes, Error>>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let limit_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
    crate::body::whole_by(body, limit_bytes, started + within)
        .map(move |read| body_read(read, limit, within))
}

/// What reading a request body came to.
fn body_read<E: Into<BoxError>>(
    read: Option<Result<Bytes, WholeError<E>>>,
    limit: u64,
    within: Duration,
) -> Result<Bytes, Error> {
    let too_large = || {
        let mut e = Error::new(
            Kind::TooLarge,
            format!("the request body is larger than the limit of {limit} bytes"),
        );
        e.headers
            .push((header::CONNECTION, HeaderValue::from_static("close")));
        e
    };
    match read {
        Some(Ok(bytes)) => Ok(bytes),
        Some(Err(WholeError::TooLarge)) => Err(too_large()),
        Some(Err(WholeError::Body(e))) => Err(Error::invalid(format!(
            "the request body could not be read: {}",
            e.into()
        ))),
        None => {
            let mut e = Error::new(
                Kind::ClientTimeout,
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(within)
                ),
            );
            e.headers
                .push((header::CONNECTION, HeaderValue::from_static("close")));
            Err(e)
        }
    }
}

/// How much of a body `log.bodies` writes to the log.
const BODY_LOG_LIMIT: usize = 16 * 1024;

/// The client's `x-request-id` when it is sane, else a fresh one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    // A request has a handful of headers: comparing each name costs less
    // than hashing this one, not a standard name, for the map's lookup.
    let given = headers
        .iter()
        .find_map(|(name, value)| (*name == X_REQUEST_ID).then_some(value));
    if let Some(v) = given {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic) {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (pair, byte) in id.chunks_exact_mut(2).zip(fastrand::u128(..).to_be_bytes()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 15)];
    }
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

/// What the access log line and the request metrics need.
struct Record {
    request_id: HeaderValue,
    started: Instant,
    endpoint: Option<Endpoint>,
    key: Option<Caller>,
    model: Option<Arc<str>>,
    provider: Option<Arc<str>>,
    backend_model: Option<Arc<str>>,
    stream: bool,
    status: StatusCode,
    usage: Option<crate::openai::Usage>,
    error: Option<String>,
    first_byte: Option<Duration>,
    /// The body's first frame was also its last (a whole answer): its
    /// `first_byte` is the request's duration too, one clock read for both.
    one_frame: bool,
    attempts: u32,
    /// Rate-limit charges to settle with the real usage.
    ticket: Option<Ticket>,
    /// The response body so far, when `log.bodies` is on.
    body: Option<bytes::BytesMut>,
    /// Set by [`Record::measure`] for the access line.
    elapsed: Duration,
    completed: bool,
}

impl Record {
    fn new(request_id: HeaderValue, started: Instant) -> Self {
        Record {
            request_id,
            started,
            endpoint: None,
            key: None,
            model: None,
            provider: None,
            backend_model: None,
            stream: false,
            status: StatusCode::OK,
            usage: None,
            error: None,
            first_byte: None,
            one_frame: false,
            attempts: 0,
            ticket: None,
            body: None,
            elapsed: Duration::ZERO,
            completed: false,
        }
    }

    /// Settles the request's rate-limit charges and records its metrics,
    /// before the response's last bytes are written: a client that reads
    /// its answer and then `/metrics`, or sends its next request against
    /// `max_concurrent`, finds the request counted and its slot free.
    fn measure(
        &mut self,
        metrics: &Metrics,
        outcome: Option<crate::stream::StreamOutcome>,
        completed: bool,
    ) {
        self.elapsed = match self.first_byte {
            Some(at) if self.one_frame => at,
            _ => self.started.elapsed(),
        };
        self.completed = completed;
        if let Some(o) = outcome {
            self.usage = o.usage.or(self.usage);
            if o.error.is_some() {
                self.error = o.error;
            }
            // A stream's first token is its first content, not its role chunk.
            self.first_byte = o
                .first_content
                .map(|at| at.saturating_duration_since(self.started));
        }
        if let Some(ticket) = self.ticket.take() {
            ticket.settle(self.usage);
        }
        let reached = self.provider.is_some();
        metrics.record_request(
            &self.labels(),
            &RequestRecord {
                elapsed: self.elapsed,
                ttft: self.first_byte.filter(|_| reached),
                tokens: self
                    .usage
                    .filter(|_| reached)
                    .map(|u| (u.prompt_tokens, u.completion_tokens)),
            },
        );
    }

    /// The request's metric labels; the access line shares all but `status`
    /// (a number there, and `stream_error` only here).
    fn labels(&self) -> RequestLabels<'_> {
        RequestLabels {
            endpoint: self.endpoint.map_or("unknown", Endpoint::label),
            model: self.model.as_deref().unwrap_or("unknown"),
            provider: self.provider.as_deref().unwrap_or("none"),
            key: self.key.as_ref().map_or("anonymous", Caller::label),
            status: if self.status == StatusCode::OK && self.error.is_some() {
                "stream_error"
            } else {
                self.status.as_str()
            },
        }
    }
}

/// The access line (and the response body, with `log.bodies`), written
/// after the response: the line goes to a writer thread anyway, and putting
/// it together is most of what a request costs with the log on.
impl crate::deferred::Later for Record {
    fn run(self: Box<Self>) {
        if let Some(body) = &self.body {
            tracing::info!(
                target: "switchyard::bodies",
                request_id = self.request_id.to_str().unwrap_or(""),
                response = %String::from_utf8_lossy(body),
                "response body"
            );
        }
        let labels = self.labels();
        tracing::info!(
            target: "switchyard::access",
            request_id = self.request_id.to_str().unwrap_or(""),
            endpoint = labels.endpoint,
            key = labels.key,
            model = labels.model,
            provider = labels.provider,
            backend_model = self.backend_model.as_deref().unwrap_or(""),
            status = self.status.as_u16(),
            stream = self.stream,
            completed = self.completed,
            latency_ms = self.elapsed.as_secs_f64() * 1000.0,
            ttft_ms = self.first_byte.map(|d| d.as_secs_f64() * 1000.0),
            prompt_tokens = self.usage.map(|u| u.prompt_tokens),
            completion_tokens = self.usage.map(|u| u.completion_tokens),
            attempts = self.attempts,
            error = self.error.as_deref(),
            "request"
        );
    }
}

/// A response body that records the request when its last byte is sent, or
/// when the client goes away first.
pub struct Observed {
    body: Body,
    record: Option<Box<Record>>,
    state: Arc<State>,
}

impl Observed {
    fn new(body: Body, record: Box<Record>, state: Arc<State>) -> Self {
        Observed {
            body,
            record: Some(record),
            state,
        }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(mut record) = self.record.take() {
            record.measure(self.state.metrics(), self.body.stream_outcome(), completed);
            if record.body.is_some()
                || tracing::enabled!(target: "switchyard::access", tracing::Level::INFO)
            {
                crate::deferred::later(record);
            }
        }
    }
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(frame)) => {
                if let Some(r) = this.record.as_mut() {
                    if r.first_byte.is_none() {
                        r.first_byte = Some(r.started.elapsed());
                        r.one_frame = this.body.is_end_stream();
                    }
                    if let (Some(log), Some(data)) = (
                        r.body.as_mut(),
                        frame.as_ref().ok().and_then(|f| f.data_ref()),
                    ) {
                        let room = BODY_LOG_LIMIT.saturating_sub(log.len());
                        log.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let completed = self.body.is_end_stream();
        self.finish(completed);
    }
}

impl State {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.registry.shared.metrics
    }
}
