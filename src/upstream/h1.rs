//! The HTTP/1.1 client for plain-`http` backends (vLLM, Ollama, llama.cpp,
//! TGI on a private network): a keep-alive pool of TCP connections and an
//! exchange that runs inside the request's own task.
//!
//! There is no connection task. The request is written and the response head
//! read by the attempt's future; the body is read by whoever polls [`Body`]
//! (for a stream, the client's connection task through the relay), and a
//! connection whose body was read to the end goes back to the pool. A body
//! dropped early closes its connection, which is how a backend learns the
//! client left. An idle connection is not polled: checkout looks at the
//! readiness the reactor recorded and drops a connection the backend closed
//! or wrote to while idle.
//!
//! `https` backends use hyper-util's pooled client (TLS, HTTP/2 by ALPN).

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::HOST;
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::stamp::put_line;
use super::{Added, Cause, Failure};

/// How long a connection may sit idle in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per backend address; the oldest go first.
const MAX_IDLE: usize = 1024;
/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 4096;
/// The longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most response headers accepted.
const MAX_HEADERS: usize = 100;
/// A chunk-size line (with extensions) longer than this is not HTTP.
const MAX_CHUNK_LINE: usize = 4096;

/// Idle connections to the backends of one provider.
pub struct Pool {
    connect: Duration,
    /// One entry per backend authority; nearly always exactly one.
    /// Authorities are told apart by their exact text (see [`same`]).
    idle: Mutex<Vec<(Authority, VecDeque<Idle>)>>,
}

/// Whether two authorities are written alike. `Authority`'s own equality
/// ignores case, byte by byte, and costs several times a plain comparison;
/// a provider's requests all carry its base URL's authority as written, and
/// two spellings of one host would only keep two idle lists.
fn same(a: &Authority, b: &Authority) -> bool {
    a.as_str() == b.as_str()
}

struct Idle {
    conn: Conn,
    since: Instant,
}

struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed. Empty whenever the connection is idle.
    buf: BytesMut,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Pool")
            .field("connect", &self.connect)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool whose connections are made within `connect`. Inside a tokio
    /// runtime, a background task closes expired idle connections for as long
    /// as the pool lives.
    pub fn new(connect: Duration) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            connect,
            idle: Mutex::new(Vec::new()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reap(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Sends one request and reads the response head. A request that fails
    /// on a reused connection before any byte of an answer (the backend had
    /// closed it while idle) is sent once more, on a new connection; the
    /// other idle connections to that backend are closed with it, since a
    /// backend that restarted left them all dead.
    ///
    /// The head is written before the future is made, which then holds only
    /// what the exchange needs, not the request it was written from.
    pub fn send<'a>(
        self: &'a Arc<Self>,
        request: Request<Bytes>,
        added: Added<'_>,
    ) -> impl Future<Output = Result<Response<Body>, Failure>> + Send + 'a {
        let (parts, body) = request.into_parts();
        let head = encode_head(&parts, &body, added);
        let authority = parts
            .uri
            .into_parts()
            .authority
            .ok_or_else(|| Failure::new(Cause::Connect, "the backend URL has no host"));
        let reading = Reading {
            head_request: parts.method == Method::HEAD,
            headers: added.answer_headers,
        };
        self.exchange(authority, head, body, reading)
    }

    async fn exchange(
        self: &Arc<Self>,
        authority: Result<Authority, Failure>,
        head: Vec<u8>,
        body: Bytes,
        reading: Reading,
    ) -> Result<Response<Body>, Failure> {
        let authority = &authority?;
        let mut pooled = true;
        loop {
            let conn = match pooled.then(|| self.checkout(authority)).flatten() {
                Some(conn) => conn,
                None => {
                    pooled = false;
                    Box::pin(self.connect(authority)).await?
                }
            };
            match exchange(conn, &head, &body, reading).await {
                Ok((answer, conn)) => {
                    let mut body = Body {
                        conn: Some(conn),
                        framing: answer.framing,
                        keep_alive: answer.keep_alive,
                        pool: Arc::downgrade(self),
                        authority: authority.clone(),
                    };
                    body.finish_if_done();
                    return Ok(answer.response.map(|()| body));
                }
                Err(e) if e.stale && pooled => {
                    tracing::debug!(
                        backend = authority.host(),
                        error = %e.failure.message,
                        "a kept-alive connection was closed by the backend; sending again on a new one"
                    );
                    self.forget(authority);
                    pooled = false;
                }
                Err(e) => return Err(e.failure),
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Conn, Failure> {
        let port = authority.port_u16().unwrap_or(80);
        Ok(Conn {
            io: super::connect_tcp(authority.host(), port, self.connect).await?,
            buf: BytesMut::new(),
        })
    }

    /// The most recently used idle connection to `authority` that is still open.
    fn checkout(&self, authority: &Authority) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let (_, conns) = idle.iter_mut().find(|(a, _)| same(a, authority))?;
        while let Some(Idle { conn, since }) = conns.pop_back() {
            if since.elapsed() >= IDLE_TIMEOUT {
                // Everything older is expired too.
                conns.clear();
                return None;
            }
            if conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, authority: &Authority, conn: Conn) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = match idle.iter().position(|(a, _)| same(a, authority)) {
            Some(i) => &mut idle[i].1,
            None => {
                idle.push((authority.clone(), VecDeque::new()));
                &mut idle.last_mut().expect("just pushed").1
            }
        };
        while conns
            .front()
            .is_some_and(|c| conns.len() >= MAX_IDLE || now - c.since >= IDLE_TIMEOUT)
        {
            conns.pop_front();
        }
        conns.push_back(Idle { conn, since: now });
    }

    fn forget(&self, authority: &Authority) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(a, _)| !same(a, authority));
    }

    /// Closes idle connections that expired or that the backend closed.
    fn prune(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for (_, conns) in idle.iter_mut() {
            conns.retain(|c| c.since.elapsed() < IDLE_TIMEOUT && c.conn.is_open());
        }
        idle.retain(|(_, conns)| !conns.is_empty());
    }

    /// Idle connections held, over every backend address.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap();
        idle.iter().map(|(_, c)| c.len()).sum()
    }
}

async fn reap(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(Duration::from_secs(15)).await;
        match pool.upgrade() {
            Some(pool) => pool.prune(),
            None => return,
        }
    }
}

impl Conn {
    /// False when the backend closed the connection or sent something while
    /// it was idle. Costs no system call unless the reactor saw the socket
    /// become readable.
    fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.io.try_read(&mut probe) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }

    async fn write_all(&self, mut head: &[u8], mut body: &[u8]) -> io::Result<()> {
        while !head.is_empty() || !body.is_empty() {
            self.io.writable().await?;
            match self
                .io
                .try_write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    let h = n.min(head.len());
                    head = &head[h..];
                    n -= h;
                    body = &body[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads more bytes into `buf`; 0 means the backend closed.
    async fn read(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read(cx)).await
    }

    /// Through `AsyncRead`, which marks the socket drained after a short
    /// read, so that the next [`Conn::is_open`] needs no system call.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_SIZE);
        std::pin::pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }
}

/// Why an exchange failed, and whether it may have failed only because a
/// pooled connection had gone stale (nothing of an answer was received).
struct SendError {
    failure: Failure,
    stale: bool,
}

impl SendError {
    fn io(what: &str, e: io::Error, stale: bool) -> SendError {
        SendError {
            failure: Failure::new(Cause::Connect, format!("connection failed: {what}: {e}")),
            stale,
        }
    }

    fn protocol(message: impl Into<String>) -> SendError {
        SendError {
            failure: Failure::protocol(message),
            stale: false,
        }
    }
}

/// A response head, and what it says of the body and the connection.
struct Head {
    response: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

/// Writes the request and reads the response head.
async fn exchange(
    mut conn: Conn,
    head: &[u8],
    body: &[u8],
    reading: Reading,
) -> Result<(Head, Conn), SendError> {
    if let Err(e) = conn.write_all(head, body).await {
        // A backend may answer (413, say) and close before reading a large
        // body: its answer is worth more than the write error.
        return match read_head(&mut conn, reading).await {
            Ok(answer) => Ok((
                Head {
                    keep_alive: false,
                    ..answer
                },
                conn,
            )),
            Err(_) => Err(SendError::io("sending the request", e, true)),
        };
    }
    let answer = read_head(&mut conn, reading).await?;
    Ok((answer, conn))
}

/// Reads and parses the response head, skipping informational answers.
async fn read_head(conn: &mut Conn, reading: Reading) -> Result<Head, SendError> {
    let mut received = false;
    loop {
        if !conn.buf.is_empty() {
            received = true;
            match parse_head(&mut conn.buf, reading)? {
                Parsed::Informational => continue,
                Parsed::Head(answer) => return Ok(answer),
                Parsed::Partial if conn.buf.len() > MAX_HEAD => {
                    return Err(SendError::protocol(format!(
                        "the response head is larger than {MAX_HEAD} bytes"
                    )));
                }
                Parsed::Partial => {}
            }
        }
        match conn.read().await {
            Ok(0) if received => {
                return Err(SendError::protocol(
                    "the backend closed the connection in the middle of the response head",
                ));
            }
            Ok(0) => {
                return Err(SendError::io(
                    "reading the response",
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection before answering",
                    ),
                    true,
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(SendError::io("reading the response", e, !received)),
        }
    }
}

enum Parsed {
    Partial,
    Informational,
    Head(Head),
}

/// What a request wants of its answer's head.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// The request was a HEAD: the answer has no body, whatever it says.
    head_request: bool,
    /// A successful answer's headers go into its header map. When not, only
    /// the framing is read from them, without making a name or value of
    /// each (an unsuccessful answer's headers are always kept: retry hints).
    headers: bool,
}

/// Parses a complete head at the start of `buf` and consumes it.
fn parse_head(buf: &mut BytesMut, reading: Reading) -> Result<Parsed, SendError> {
    // Where each header's name and value sit in `buf`. httparse fills only
    // the slots it uses: nothing zeroes a hundred of them per response.
    let mut spans = Vec::new();
    let (len, code, version) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(SendError::protocol(format!(
                    "the backend's response has more than {MAX_HEADERS} headers"
                )));
            }
            Err(e) => {
                return Err(SendError::protocol(format!(
                    "the backend's response is not HTTP/1: {e}"
                )));
            }
        };
        let base = buf.as_ptr() as usize;
        spans.reserve_exact(parsed.headers.len());
        spans.extend(parsed.headers.iter().map(|h| {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            (name..name + h.name.len(), value..value + h.value.len())
        }));
        let code = parsed.code.unwrap_or(0);
        (len, code, parsed.version.unwrap_or(1))
    };
    let status = StatusCode::from_u16(code)
        .map_err(|_| SendError::protocol(format!("the backend answered status {code}")))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Parsed::Informational);
    }
    let raw = buf.split_to(len).freeze();
    // The framing is read from the text httparse has checked (names are
    // tokens, values hold no control characters), map or not.
    let mut delimiters = Delimiters::default();
    for (name, value) in &spans {
        delimiters.read(&raw[name.clone()], &raw[value.clone()]);
    }
    let mut headers = HeaderMap::new();
    if reading.headers || !status.is_success() {
        headers.reserve(spans.len());
        for (name, value) in spans {
            let name = HeaderName::from_bytes(&raw[name])
                .map_err(|_| SendError::protocol("the backend sent an invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(raw.slice(value))
                .map_err(|_| SendError::protocol("the backend sent an invalid header value"))?;
            // Spent on the framing: nothing else reads them from the map.
            if !super::stamp::hop_by_hop(&name) {
                headers.append(name, value);
            }
        }
    }

    let version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let framing = delimiters.framing(status, reading.head_request)?;
    let keep_alive =
        version == Version::HTTP_11 && !delimiters.close && !matches!(framing, Framing::UntilClose);
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Parsed::Head(Head {
        response,
        framing,
        keep_alive,
    }))
}

/// What a response head says about where its body ends and whether its
/// connection stays open, read header by header as the head is taken apart.
#[derive(Default)]
struct Delimiters {
    /// A `connection: close`.
    close: bool,
    /// Whether the last `transfer-encoding` ends in `chunked`, when there is one.
    chunked: Option<bool>,
    /// The `content-length`, every one of them agreeing.
    length: Option<u64>,
    bad_length: Option<&'static str>,
}

impl Delimiters {
    /// Reads one header; `name` in any case.
    fn read(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"connection") {
            self.close |= value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let Some(n) = decimal(part.trim_ascii()) else {
                    self.bad_length
                        .get_or_insert("the backend sent an invalid content-length");
                    continue;
                };
                if self.length.is_some_and(|l| l != n) {
                    self.bad_length
                        .get_or_insert("the backend sent conflicting content-length headers");
                }
                self.length = Some(n);
            }
        }
    }

    /// How the body is delimited (RFC 9112, section 6.3).
    fn framing(&self, status: StatusCode, head_request: bool) -> Result<Framing, SendError> {
        if head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status.is_informational()
        {
            return Ok(Framing::Length(0));
        }
        if let Some(chunked) = self.chunked {
            return Ok(if chunked {
                Framing::Chunked(Chunked::Size)
            } else {
                Framing::UntilClose
            });
        }
        if let Some(message) = self.bad_length {
            return Err(SendError::protocol(message));
        }
        Ok(match self.length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        })
    }
}

/// A `content-length` value: one or more ASCII digits (no sign, unlike
/// `u64`'s parser), within a u64.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The request line and headers: the request's own, then what `added`
/// brings (whose lines are mostly made already). The body always goes with a
/// content-length (a GET without one has none).
fn encode_head(parts: &http::request::Parts, body: &Bytes, added: Added<'_>) -> Vec<u8> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let size: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let mut head = Vec::with_capacity(64 + path.len() + size + added.size());
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let has_host = added.stamp.covers(&HOST) || parts.headers.contains_key(HOST);
    if !has_host {
        let authority = parts
            .uri
            .authority()
            .map_or(&b""[..], |a| a.as_str().as_bytes());
        let host = memchr::memrchr(b'@', authority).map_or(authority, |at| &authority[at + 1..]);
        head.extend_from_slice(b"host: ");
        head.extend_from_slice(host);
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parts.headers {
        if !added.replaces(name) {
            put_line(&mut head, name, value);
        }
    }
    added.put_lines(&mut head);
    let bodiless = matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE);
    if !(bodiless && body.is_empty()) {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// How much of the body is still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

/// A response body read straight from the backend's connection.
pub struct Body {
    /// `None` once the body ended (the connection went back to the pool or
    /// was closed).
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    pool: Weak<Pool>,
    authority: Authority,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Body")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl Body {
    fn done(&self) -> bool {
        matches!(
            self.framing,
            Framing::Length(0) | Framing::Chunked(Chunked::Done)
        )
    }

    /// Once the body is complete, the connection is reusable if the backend
    /// allows it and sent nothing beyond the response.
    fn finish_if_done(&mut self) {
        if !self.done() {
            return;
        }
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
            && let Some(pool) = self.pool.upgrade()
        {
            pool.checkin(&self.authority, conn);
        }
    }

    /// The next piece of body already in the buffer, if any; advances the framing.
    fn next_data(&mut self) -> Result<Option<Bytes>, io::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            match &mut self.framing {
                Framing::Length(0) | Framing::Chunked(Chunked::Done) => return Ok(None),
                Framing::Length(left) => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    return Ok(Some(buf.split_to(n as usize).freeze()));
                }
                Framing::UntilClose => return Ok(Some(buf.split().freeze())),
                Framing::Chunked(state) => match *state {
                    Chunked::Data(left) => {
                        let n = left.min(buf.len() as u64);
                        *state = if n == left {
                            Chunked::DataEnd
                        } else {
                            Chunked::Data(left - n)
                        };
                        return Ok(Some(buf.split_to(n as usize).freeze()));
                    }
                    Chunked::Size => {
                        let Some((len, used)) = line(buf)? else {
                            return Ok(None);
                        };
                        let size = chunk_size(&buf[..len])?;
                        buf.advance(used);
                        *state = if size == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(size)
                        };
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(None);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(invalid("a chunk does not end with CRLF"));
                        }
                        buf.advance(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Trailers => {
                        let Some((len, used)) = line(buf)? else {
                            return Ok(None);
                        };
                        buf.advance(used);
                        if len == 0 {
                            *state = Chunked::Done;
                        }
                    }
                    Chunked::Done => return Ok(None),
                },
            }
        }
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// The first line in `buf`, if it is complete: its length without the line
/// end, and with it.
fn line(buf: &[u8]) -> io::Result<Option<(usize, usize)>> {
    match memchr::memchr(b'\n', buf) {
        Some(end) => {
            let len = if end > 0 && buf[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            Ok(Some((len, end + 1)))
        }
        None if buf.len() > MAX_CHUNK_LINE => Err(invalid("a chunk-size line is too long")),
        None => Ok(None),
    }
}

/// The hexadecimal size at the start of a chunk-size line (extensions ignored).
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("a chunk size is not a hexadecimal number"));
    }
    let mut size = 0u64;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(invalid("a chunk size is not a hexadecimal number")),
        };
        size = size * 16 + u64::from(v);
    }
    Ok(size)
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            match this.next_data() {
                Ok(Some(data)) => {
                    this.finish_if_done();
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if this.done() => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_read(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection before the body was complete",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Reads one request (head and content-length body) from `io`.
    async fn read_request(io: &mut TcpStream) -> Option<String> {
        let mut buf = Vec::new();
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.parse::<usize>().unwrap());
                if buf.len() >= end + 4 + length {
                    return Some(String::from_utf8_lossy(&buf).into_owned());
                }
            }
            let mut chunk = [0u8; 1024];
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A backend that answers each connection's requests with the given
    /// byte pieces (written one by one), then closes the connection when
    /// `close` says so. Returns its address and the requests it saw, with
    /// the index of the connection each arrived on.
    async fn backend(
        answers: Vec<(Vec<&'static [u8]>, bool)>,
    ) -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<(usize, String)>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            let mut connection = 0;
            'accept: loop {
                let Ok((mut io, _)) = listener.accept().await else {
                    return;
                };
                connection += 1;
                loop {
                    let Some(request) = read_request(&mut io).await else {
                        continue 'accept;
                    };
                    let _ = tx.send((connection, request));
                    let Some((pieces, close)) = answers.next() else {
                        return;
                    };
                    for piece in pieces {
                        io.write_all(piece).await.unwrap();
                        io.flush().await.unwrap();
                        tokio::task::yield_now().await;
                    }
                    if close {
                        continue 'accept;
                    }
                }
            }
        });
        (address, rx)
    }

    fn post(address: &str, body: &'static str) -> Request<Bytes> {
        Request::post(format!("http://{address}/v1/chat/completions"))
            .header("authorization", "Bearer k")
            .body(Bytes::from_static(body.as_bytes()))
            .unwrap()
    }

    async fn text(response: Response<Body>) -> Result<String, io::Error> {
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_kept_alive_connection_carries_the_next_request() {
        let (address, mut seen) = backend(vec![
            (
                vec![
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhe",
                    b"llo",
                ],
                false,
            ),
            (
                vec![b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"],
                false,
            ),
        ])
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let response = pool
            .send(post(&address, "{\"a\":1}"), Added::NONE)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-a"], "1");
        assert!(
            !response.headers().contains_key("content-length"),
            "the framing headers are spent on the framing"
        );
        assert_eq!(text(response).await.unwrap(), "hello");
        assert_eq!(pool.idle_count(), 1);
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(text(response).await.unwrap(), "ok");

        let (first, request) = seen.recv().await.unwrap();
        assert!(
            request.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("host: {address}\r\n")),
            "{request}"
        );
        assert!(request.contains("authorization: Bearer k\r\n"), "{request}");
        assert!(
            request.ends_with("content-length: 7\r\n\r\n{\"a\":1}"),
            "{request}"
        );
        let (second, _) = seen.recv().await.unwrap();
        assert_eq!(first, second, "the second request reused the connection");
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_across_any_read_boundary() {
        let (address, mut seen) = backend(vec![
            (
                vec![
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6;ext=1\r\nda",
                    b"ta: \r",
                    b"\n1",
                    b"0\r\n0123456789abcdef\r\n0\r\nx-trailer: t\r\n",
                    b"\r\n",
                ],
                false,
            ),
            (vec![b"HTTP/1.1 204 No Content\r\n\r\n"], false),
        ])
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert!(!response.headers().contains_key("transfer-encoding"));
        assert_eq!(text(response).await.unwrap(), "data: 0123456789abcdef");
        assert_eq!(
            pool.idle_count(),
            1,
            "a complete chunked body frees the connection"
        );
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert_eq!(response.status(), 204);
        assert!(response.body().is_end_stream());
        assert_eq!(pool.idle_count(), 1);
        let (a, _) = seen.recv().await.unwrap();
        let (b, _) = seen.recv().await.unwrap();
        assert_eq!(a, b);
    }

    #[tokio::test]
    async fn informational_answers_are_skipped() {
        let (address, _seen) = backend(vec![(
            vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"],
            false,
        )])
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(text(response).await.unwrap(), "hi");
    }

    #[tokio::test]
    async fn connection_close_and_bodies_until_close_are_not_pooled() {
        let (address, _seen) = backend(vec![
            (
                vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na"],
                true,
            ),
            (vec![b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the end"], true),
            (vec![b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nb"], true),
        ])
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert_eq!(text(response).await.unwrap(), "a");
        assert_eq!(pool.idle_count(), 0);
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert_eq!(text(response).await.unwrap(), "until the end");
        assert_eq!(pool.idle_count(), 0);
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_10);
        assert_eq!(text(response).await.unwrap(), "b");
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_while_idle_is_replaced() {
        // The backend closes each connection after answering, without saying so.
        let (address, mut seen) = backend(vec![
            (vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1"], true),
            (vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2"], true),
        ])
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert_eq!(text(response).await.unwrap(), "1");
        assert_eq!(pool.idle_count(), 1);
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert_eq!(text(response).await.unwrap(), "2");
        assert_eq!(seen.recv().await.unwrap().0, 1);
        assert_eq!(seen.recv().await.unwrap().0, 2);
    }

    #[tokio::test]
    async fn idle_connections_the_backend_closed_are_pruned() {
        let (address, _seen) = backend(vec![(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1"],
            true,
        )])
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert_eq!(text(response).await.unwrap(), "1");
        assert_eq!(pool.idle_count(), 1);
        // The close reaches the reactor on one of its next turns.
        for _ in 0..2000 {
            pool.prune();
            if pool.idle_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_reused_connection_that_closes_unanswered_is_retried_once_on_a_new_one() {
        let (address, mut seen) = backend(vec![
            (
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1"],
                false,
            ),
            // The second request meets a connection the backend is closing.
            (vec![], true),
            (
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2"],
                false,
            ),
            // A new connection that closes unanswered is the backend's failure.
            (vec![], true),
        ])
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert_eq!(text(response).await.unwrap(), "1");
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        assert_eq!(text(response).await.unwrap(), "2");
        let connections: Vec<usize> = [(); 3].iter().map(|_| seen.try_recv().unwrap().0).collect();
        assert_eq!(connections, [1, 1, 2]);

        pool.forget(&address.parse().unwrap());
        let e = pool
            .send(post(&address, "{}"), Added::NONE)
            .await
            .unwrap_err();
        assert_eq!(e.cause, Cause::Connect);
        assert!(e.message.contains("before answering"), "{}", e.message);
        assert_eq!(seen.recv().await.unwrap().0, 3);
        assert!(
            seen.try_recv().is_err(),
            "a fresh connection is not retried"
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_a_dropped_body_closes_its_connection() {
        let (address, _seen) = backend(vec![
            (
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
                true,
            ),
            (
                vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n"],
                false,
            ),
        ])
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        let e = text(response).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        let mut body = response.into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        drop(body);
        assert_eq!(
            pool.idle_count(),
            0,
            "a body not read to the end is never reused"
        );
    }

    #[tokio::test]
    async fn what_is_not_http_is_a_protocol_failure() {
        let (address, _seen) = backend(vec![
            (vec![b"SSH-2.0-OpenSSH\r\n\r\n"], true),
            (
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"],
                true,
            ),
            (
                vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"],
                true,
            ),
        ])
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let e = pool
            .send(post(&address, "{}"), Added::NONE)
            .await
            .unwrap_err();
        assert_eq!(e.cause, Cause::Protocol, "{}", e.message);
        let e = pool
            .send(post(&address, "{}"), Added::NONE)
            .await
            .unwrap_err();
        assert!(
            e.message.contains("conflicting content-length"),
            "{}",
            e.message
        );
        let response = pool.send(post(&address, "{}"), Added::NONE).await.unwrap();
        let e = text(response).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = Pool::new(Duration::from_secs(1));
        let e = pool
            .send(post(&address, "{}"), Added::NONE)
            .await
            .unwrap_err();
        assert_eq!(e.cause, Cause::Connect);
        assert!(e.message.starts_with("cannot connect"), "{}", e.message);
    }

    #[test]
    fn gets_carry_no_content_length_and_hosts_drop_user_info() {
        let request = Request::get("http://user:pw@backend:8000/v1/models?x=1")
            .body(Bytes::new())
            .unwrap();
        let (parts, body) = request.into_parts();
        let head = String::from_utf8(encode_head(&parts, &body, Added::NONE)).unwrap();
        assert_eq!(
            head,
            "GET /v1/models?x=1 HTTP/1.1\r\nhost: backend:8000\r\n\r\n"
        );
    }

    #[test]
    fn a_request_head_holds_its_own_headers_and_the_added_lines_once_each() {
        use crate::upstream::Stamp;
        use http::header::{AUTHORIZATION, CONTENT_TYPE};
        static FIXED: [(HeaderName, HeaderValue); 1] =
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        let mut configured = HeaderMap::new();
        configured.insert(HOST, HeaderValue::from_static("api.example"));
        configured.insert("x-tenant", HeaderValue::from_static("search"));
        let stamp = Stamp::new(
            &configured,
            Some((AUTHORIZATION, HeaderValue::from_static("Bearer k"))),
        );
        let id = HeaderValue::from_static("req-9");
        let added = Added {
            fixed: &FIXED,
            stamp: &stamp,
            request_id: Some(&id),
            answer_headers: true,
        };
        let request = Request::post("http://backend:8000/v1/chat/completions")
            .header("anthropic-version", "2023-06-01")
            .header("x-tenant", "own")
            .header("content-length", "1")
            .body(Bytes::from_static(b"{}"))
            .unwrap();
        let (parts, body) = request.into_parts();
        let head = String::from_utf8(encode_head(&parts, &body, added)).unwrap();
        let mut lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "POST /v1/chat/completions HTTP/1.1");
        assert_eq!(lines[lines.len() - 3..], ["content-length: 2", "", ""]);
        lines.sort_unstable();
        let agent = concat!("user-agent: switchyard/", env!("CARGO_PKG_VERSION"));
        let mut want = vec![
            "",
            "",
            "POST /v1/chat/completions HTTP/1.1",
            "anthropic-version: 2023-06-01",
            "authorization: Bearer k",
            "content-length: 2",
            "content-type: application/json",
            "host: api.example",
            agent,
            "x-request-id: req-9",
            "x-tenant: search",
        ];
        want.sort_unstable();
        assert_eq!(lines, want);
    }

    #[test]
    fn bodies_are_delimited_as_rfc_9112_says() {
        let frame = |headers: &[(&str, &str)], status: u16, head: bool| {
            let mut d = Delimiters::default();
            for (n, v) in headers {
                d.read(n.as_bytes(), v.as_bytes());
            }
            let status = StatusCode::from_u16(status).unwrap();
            (
                d.framing(status, head).map_err(|e| e.failure.message),
                d.close,
            )
        };
        let ok = |f: Framing| (Ok(f), false);
        let chunked = Framing::Chunked(Chunked::Size);
        // Names come as the backend wrote them when no map is made.
        let cl = "Content-Length";
        let te = "transfer-Encoding";
        assert_eq!(frame(&[(cl, "5")], 200, false), ok(Framing::Length(5)));
        assert_eq!(
            frame(&[(cl, "5, 5"), (cl, "5")], 200, false),
            ok(Framing::Length(5))
        );
        assert_eq!(frame(&[], 200, false), ok(Framing::UntilClose));
        assert_eq!(
            frame(&[(te, "gzip, chunked"), (cl, "x")], 200, false),
            ok(chunked)
        );
        assert_eq!(
            frame(&[(te, "chunked"), (te, "gzip")], 200, false),
            ok(Framing::UntilClose)
        );
        assert_eq!(
            frame(&[(te, "chunked")], 204, false),
            ok(Framing::Length(0))
        );
        assert_eq!(frame(&[(cl, "9")], 200, true), ok(Framing::Length(0)));
        let bad = frame(&[(cl, "5"), (cl, "x"), (cl, "6")], 200, false).0;
        assert_eq!(
            bad,
            Err("the backend sent an invalid content-length".into())
        );
        for invalid in ["+5", "-1", "", "5 5", "18446744073709551616"] {
            assert_eq!(
                frame(&[(cl, invalid)], 200, false).0,
                Err("the backend sent an invalid content-length".into()),
                "{invalid:?}"
            );
        }
        assert_eq!(frame(&[(cl, "007")], 200, false), ok(Framing::Length(7)));
        let conflict = frame(&[(cl, "5, 6")], 200, false).0;
        assert!(conflict.unwrap_err().contains("conflicting"));
        let close = frame(
            &[("CONNECTION", "keep-alive, Close"), (cl, "1")],
            200,
            false,
        );
        assert_eq!(close, (Ok(Framing::Length(1)), true));
    }

    const ALL: Reading = Reading {
        head_request: false,
        headers: true,
    };

    #[test]
    fn a_successful_answer_s_headers_are_kept_only_when_wanted() {
        let parse = |text: &str, headers: bool| {
            let mut buf = BytesMut::from(text.as_bytes());
            let reading = Reading {
                head_request: false,
                headers,
            };
            let Ok(Parsed::Head(head)) = parse_head(&mut buf, reading) else {
                panic!("{text:?} did not parse");
            };
            assert_eq!(&buf[..], b"BODY");
            head
        };
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-prompt-tokens: 12\r\n\
                  Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nBODY";
        let kept = parse(ok, true);
        let left = parse(ok, false);
        assert_eq!(kept.response.headers()["x-prompt-tokens"], "12");
        assert_eq!(
            kept.response.headers().len(),
            2,
            "hop-by-hop headers stay out"
        );
        assert!(left.response.headers().is_empty());
        // The framing is read either way.
        for head in [&kept, &left] {
            assert!(matches!(head.framing, Framing::Chunked(Chunked::Size)));
            assert!(!head.keep_alive);
            assert_eq!(head.response.status(), 200);
        }
        let length = parse("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nBODY", false);
        assert!(matches!(length.framing, Framing::Length(4)) && length.keep_alive);
        // An error's headers are kept: its retry hints are read.
        let busy = parse(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\ncontent-length: 4\r\n\r\nBODY",
            false,
        );
        assert_eq!(busy.response.headers()["retry-after"], "3");
    }

    #[test]
    fn heads_keep_every_header_up_to_the_limit_and_the_body_after_them() {
        let head = |count: usize| {
            let mut text = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..count {
                text.push_str(&format!("x-h{i}: value {i}\r\n"));
            }
            text.push_str("\r\nBODY");
            BytesMut::from(text.as_bytes())
        };
        let mut buf = head(MAX_HEADERS);
        let Ok(Parsed::Head(parsed)) = parse_head(&mut buf, ALL) else {
            panic!("a head of {MAX_HEADERS} headers did not parse");
        };
        let headers = parsed.response.headers();
        assert_eq!(headers.len(), MAX_HEADERS);
        for i in 0..MAX_HEADERS {
            assert_eq!(headers[format!("x-h{i}")], format!("value {i}"));
        }
        assert_eq!(&buf[..], b"BODY");

        let Err(e) = parse_head(&mut head(MAX_HEADERS + 1), ALL) else {
            panic!("a head over the limit parsed");
        };
        assert_eq!(
            e.failure.message,
            format!("the backend's response has more than {MAX_HEADERS} headers")
        );
    }
}
