//! The floor under switchyard's numbers: its server (`switchyard::server`,
//! hyper and hyper-util) and its in-task HTTP/1.1 client
//! (`switchyard::upstream::h1`) with nothing in between. Each request's body
//! is read whole and sent to the backend at the same path; the answer goes
//! back as the backend gave it. No routing, no keys, no JSON, no metrics, no
//! access record: what any gateway built on this stack pays before it does
//! anything. `bench/run` measures it beside nginx and switchyard.
//!
//! Usage: `floor LISTEN BACKEND`, e.g. `floor 127.0.0.1:18084 127.0.0.1:18001`.
//! It prints `floor listening on ADDR` once it accepts connections (port 0
//! picks a free port).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use switchyard::upstream::{Added, h1};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Answer = Response<Either<h1::Body, Empty<Bytes>>>;

/// Largest body the floor reads.
const LIMIT: usize = 64 << 20;

async fn forward(pool: Arc<h1::Pool>, backend: Authority, request: Request<Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    // As switchyard reads a body, and its URI: the client's path on the
    // backend's scheme and authority, with no text formatted per request.
    let Ok(body) = switchyard::body::whole(body, LIMIT).await else {
        return status(StatusCode::BAD_REQUEST);
    };
    let mut uri = parts.uri.into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(backend);
    let Ok(uri) = Uri::from_parts(uri) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let mut upstream = Request::new(body);
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = uri;
    if let Some(v) = parts.headers.get(header::CONTENT_TYPE) {
        upstream
            .headers_mut()
            .insert(header::CONTENT_TYPE, v.clone());
    }
    match pool.send(upstream, Added::NONE).await {
        Ok(response) => response.map(Either::Left),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(code: StatusCode) -> Answer {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: floor LISTEN BACKEND");
        std::process::exit(2);
    };
    let Ok(backend) = backend.parse::<Authority>() else {
        eprintln!("floor: BACKEND must be HOST:PORT, not {backend:?}");
        std::process::exit(2);
    };
    // The runtime `switchyard serve` runs on.
    let runtime = switchyard::cli::runtime().expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {listen}: {e}"));
        match listener.local_addr() {
            Ok(addr) => println!("floor listening on {addr}"),
            Err(e) => panic!("cannot read the listening address: {e}"),
        }
        let pool = h1::Pool::new(Duration::from_secs(5));
        let service = tower::service_fn(move |request: Request<Incoming>| {
            let (pool, backend) = (pool.clone(), backend.clone());
            async move { Ok::<_, Infallible>(forward(pool, backend, request).await) }
        });
        let options = switchyard::server::Options {
            header_read_timeout: Duration::from_secs(30),
            max_header_buffer: 64 * 1024,
            grace: Duration::from_secs(1),
        };
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        switchyard::server::serve(listener, service, options, shutdown, "floor").await;
    });
}
