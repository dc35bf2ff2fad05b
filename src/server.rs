//! Accepting connections: HTTP/1.1 and HTTP/2 (h2c) through hyper-util,
//! TCP_NODELAY, a header read timeout, bounded header buffers, and a graceful
//! drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::upstream::BoxError;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub header_read_timeout: Duration,
    /// Largest request head hyper buffers; larger ones get hyper's own 431.
    pub max_header_buffer: usize,
    /// How long in-flight requests may run on after shutdown begins.
    pub grace: Duration,
}

/// Serves `service` on `listener` until `shutdown` turns true, then drains.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    options: Options,
    mut shutdown: watch::Receiver<bool>,
    name: &'static str,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_buffer.max(8192))
        .max_headers(256);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(options.max_header_buffer as u32);
    let drain = Drain::new();

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly, keep serving.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = builder
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()))
                    .into_owned();
                let connection = drain.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(listener = name, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    tracing::info!(
        listener = name,
        connections = drain.connections(),
        "draining connections"
    );
    tokio::select! {
        _ = drain.shutdown() => {
            tracing::info!(listener = name, "all connections drained");
        }
        _ = tokio::time::sleep(options.grace) => {
            tracing::warn!(listener = name, grace = %humantime::format_duration(options.grace),
                "grace period over; closing the connections still open");
        }
    }
}

/// The connections of one listener, told to finish when the server stops:
/// each begins a graceful shutdown (hyper completes the requests in flight
/// and closes idle keep-alive connections), and [`Drain::shutdown`] returns
/// once all of them are gone.
///
/// Unlike hyper-util's `GracefulShutdown`, a connection does not poll the
/// shutdown signal's future every time it is woken, which for a stream is
/// every chunk: while that future holds the connection task's waker, a look
/// at the channel's version stands in for polling it.
struct Drain {
    tx: watch::Sender<()>,
}

impl Drain {
    fn new() -> Self {
        Drain {
            tx: watch::channel(()).0,
        }
    }

    fn watch<C: GracefulConnection>(&self, connection: C) -> Watched<C> {
        let mut signal = self.tx.subscribe();
        Watched {
            connection: Box::pin(connection),
            signal: Box::pin(async move {
                // A closed channel (the server gone) drains too.
                let _ = signal.changed().await;
            }),
            seen: self.tx.subscribe(),
            waker: None,
            draining: false,
        }
    }

    /// How many connections are open (each holds two receivers of the
    /// channel: its signal's and the one it reads).
    fn connections(&self) -> usize {
        self.tx.receiver_count() / 2
    }

    /// Tells every connection to finish and waits until all have.
    async fn shutdown(self) {
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

struct Watched<C> {
    connection: Pin<Box<C>>,
    /// Resolves when the drain begins.
    signal: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The same channel, read without polling `signal`.
    seen: watch::Receiver<()>,
    /// The waker `signal` was last polled with.
    waker: Option<Waker>,
    draining: bool,
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        if !this.draining {
            let holds_waker = this
                .waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()));
            if !holds_waker || !matches!(this.seen.has_changed(), Ok(false)) {
                match this.signal.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.draining = true;
                        this.waker = None;
                        this.connection.as_mut().graceful_shutdown();
                    }
                    Poll::Pending => this.waker = Some(cx.waker().clone()),
                }
            }
        }
        // What the poll's responses leave for later (their access lines)
        // runs once it returns, after hyper has written them out.
        crate::deferred::scope(|| this.connection.as_mut().poll(cx))
    }
}
