//! Talking to backends: pooled HTTP clients, the in-process demo transport,
//! WebSocket connections, the upstream body type, and the failure type every
//! attempt reports.

pub mod h1;
pub mod stamp;
pub mod websocket;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::Either;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;

use crate::adapter::demo;
pub use stamp::{Added, Stamp};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TlsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One provider's HTTP client: plain `http` through the in-task HTTP/1.1
/// client ([`h1`]), `https` through hyper-util's pooled client.
pub struct HttpClient {
    plain: Arc<h1::Pool>,
    tls: TlsClient,
}

impl HttpClient {
    /// Picks the client before any future is made: a plain request's
    /// future is the in-task client's alone.
    fn send<'a>(
        &'a self,
        mut request: Request<Bytes>,
        added: Added<'_>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Failure>> + Send + 'a {
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
            // Mapped, not awaited in an async block, which would hold the
            // future twice (before it starts and while it runs).
            let plain = self.plain.send(request, added);
            return Either::Left(
                plain.map(|r| r.map(|response| response.map(UpstreamBody::Plain))),
            );
        }
        added.apply(request.headers_mut());
        // The pooled client's future is boxed by the client itself.
        let tls = self.tls.request(request.map(Full::new));
        Either::Right(async move {
            match tls.await {
                Ok(response) => Ok(response.map(UpstreamBody::Http)),
                Err(e) if e.is_connect() => Err(Failure::new(
                    Cause::Connect,
                    format!("cannot connect: {}", error_chain(&e)),
                )),
                Err(e) => Err(Failure::new(
                    Cause::Connect,
                    format!("connection failed: {}", error_chain(&e)),
                )),
            }
        })
    }
}

/// Per-provider timeouts, resolved from the global ones and the provider's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// TCP (and TLS) connect.
    pub connect: Duration,
    /// Until the backend's response headers.
    pub first_byte: Duration,
    /// Longest silence between two stream chunks.
    pub stream_idle: Duration,
    /// The whole exchange, from the first try to the last byte.
    pub total: Duration,
}

/// How a provider's requests leave the process.
#[derive(Clone)]
pub enum Transport {
    Http(Arc<HttpClient>),
    Demo(Arc<demo::Backend>),
    WebSocket(websocket::WebSocket),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Http(_) => f.write_str("Transport::Http"),
            Transport::Demo(_) => f.write_str("Transport::Demo"),
            Transport::WebSocket(_) => f.write_str("Transport::WebSocket"),
        }
    }
}

impl Transport {
    /// Sends one request (its whole body at hand) and waits for the response head.
    /// `added` goes with it: written into the head by the plain-HTTP
    /// client, put into the header map by the others.
    /// The transport is picked before any future is made: each one's
    /// future is its own, not one holding every transport's.
    pub fn send<'a>(
        &'a self,
        mut request: Request<Bytes>,
        added: Added<'_>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Failure>> + Send + 'a {
        type Boxed<'a> =
            Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, Failure>> + Send + 'a>>;
        match self {
            Transport::Http(client) => Either::Left(client.send(request, added)),
            Transport::Demo(backend) => {
                added.apply(request.headers_mut());
                let answer: Boxed<'a> = Box::pin(async move { Ok(backend.handle(request).await) });
                Either::Right(answer)
            }
            Transport::WebSocket(ws) => {
                added.apply(request.headers_mut());
                let answer: Boxed<'a> = Box::pin(ws.send(request));
                Either::Right(answer)
            }
        }
    }

    /// The provider's connect timeout, for transports that connect themselves.
    pub fn with_connect_timeout(self, connect: Duration) -> Transport {
        match self {
            Transport::WebSocket(ws) => Transport::WebSocket(ws.with_connect_timeout(connect)),
            other => other,
        }
    }
}

/// A TCP connection to `host` (an IPv6 literal in brackets or not) within
/// `within`, with TCP_NODELAY and keep-alive probes after a minute of
/// silence: what the in-task HTTP/1.1 client and WebSocket connect with.
pub async fn connect_tcp(host: &str, port: u16, within: Duration) -> Result<TcpStream, Failure> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let io = match tokio::time::timeout(within, TcpStream::connect((host, port))).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => return Err(Failure::new(Cause::Connect, format!("cannot connect: {e}"))),
        Err(_) => {
            return Err(Failure::new(
                Cause::Connect,
                format!(
                    "cannot connect: no connection within {}",
                    humantime::format_duration(within)
                ),
            ));
        }
    };
    let _ = io.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    let _ = socket2::SockRef::from(&io).set_tcp_keepalive(&keepalive);
    Ok(io)
}

/// The error and its sources, joined; no URL or header is ever part of them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let message = s.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = s.source();
    }
    text
}

/// Long-lived HTTP clients (and so connection pools), keyed by provider id and
/// connect settings, so that a reload keeps the pools of unchanged providers.
#[derive(Default)]
pub struct Pools {
    clients: Mutex<HashMap<PoolKey, Arc<HttpClient>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub provider: Arc<str>,
    pub connect: Duration,
    /// Digest of the extra CA certificates, when the provider has `ca_file`.
    pub ca: Option<[u8; 32]>,
}

/// Certificates trusted on top of the built-in roots (a private CA).
pub type ExtraRoots = Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>;

impl Pools {
    pub fn client(&self, key: PoolKey, roots: &ExtraRoots) -> Arc<HttpClient> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(key.clone())
            .or_insert_with(|| new_client(key.connect, roots))
            .clone()
    }

    /// Forgets clients no snapshot uses any more; their idle connections close.
    pub fn retain(&self, keep: &[PoolKey]) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|k, _| keep.contains(k));
    }
}

fn new_client(connect: Duration, extra: &ExtraRoots) -> Arc<HttpClient> {
    use tokio_rustls::rustls;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra {
        let _ = roots.add(cert.clone());
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let tls = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https);
    Arc::new(HttpClient {
        plain: h1::Pool::new(connect),
        tls,
    })
}

/// A backend's response body, from the network or from the demo backend.
pub enum UpstreamBody {
    Plain(h1::Body),
    Http(Incoming),
    Local(Pin<Box<dyn HttpBody<Data = Bytes, Error = BoxError> + Send>>),
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Plain(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Http(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Local(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Plain(b) => b.is_end_stream(),
            UpstreamBody::Http(b) => b.is_end_stream(),
            UpstreamBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Plain(b) => b.size_hint(),
            UpstreamBody::Http(b) => b.size_hint(),
            UpstreamBody::Local(b) => b.size_hint(),
        }
    }
}

/// Why an attempt failed. Deciding whether to retry matches on this
/// exhaustively, so a new cause forces a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No connection could be made (refused, reset, DNS, TLS).
    Connect,
    /// A timeout expired before the response head.
    FirstByteTimeout,
    /// The backend went silent mid-stream.
    IdleTimeout,
    /// The whole-exchange deadline passed.
    TotalTimeout,
    /// The backend answered with this non-success status.
    Status(StatusCode),
    /// The backend sent something that is not its dialect.
    Protocol,
    /// The backend reported an error inside a stream (or inside a 200 body).
    InBand,
    /// The provider is at its concurrency limit and its queue is full.
    Saturated,
}

impl Cause {
    /// A status that blames the client's request (400, 404, 413, 422): not
    /// retried, passed on to the client, and no mark against the target.
    pub fn is_client_error(self) -> bool {
        matches!(
            self,
            Cause::Status(
                StatusCode::BAD_REQUEST
                    | StatusCode::NOT_FOUND
                    | StatusCode::PAYLOAD_TOO_LARGE
                    | StatusCode::UNPROCESSABLE_ENTITY
            )
        )
    }
}

/// One failed attempt: what happened and what the backend said.
#[derive(Debug, Clone)]
pub struct Failure {
    pub cause: Cause,
    /// What the backend said (or what went wrong), at most 500 bytes.
    pub message: String,
    /// The backend's own error code, when it gave one.
    pub code: Option<String>,
    pub retry_after: Option<Duration>,
}

/// Cold, like [`crate::error::Error`]'s constructors.
impl Failure {
    #[cold]
    pub fn new(cause: Cause, message: impl Into<String>) -> Self {
        Failure {
            cause,
            message: truncate(message.into(), 500),
            code: None,
            retry_after: None,
        }
    }

    #[cold]
    pub fn protocol(message: impl Into<String>) -> Self {
        Failure::new(Cause::Protocol, message)
    }
}

/// Cuts a message to at most `max` bytes on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
    s
}
