//! The WebSocket transport: one connection per request.
//!
//! It connects to the request's `ws://` or `wss://` URI (TCP and TLS within
//! the provider's connect timeout; TLS through rustls with the webpki
//! roots), sends the request's headers in the handshake (so the provider's
//! credential travels there), sends the request body as one text frame, and
//! answers with a response whose body yields each text frame followed by
//! `\n`. A frame's own line breaks become spaces: frames are JSON, where a
//! line break is only whitespace, so the body reads like NDJSON.
//!
//! The body ends when the server closes, or after the frame the adapter
//! marks as the last one (then the socket is closed politely). Dropping the
//! body closes the socket, so a client that leaves cancels the backend.
//! A server that refuses the upgrade with an HTTP status is answered like
//! an HTTP backend with that status and body.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream};
use http::{HeaderName, Request, Response, header};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use super::{BoxError, Cause, Failure, UpstreamBody, error_chain};

/// Says whether a text frame is the last of an answer.
pub type LastFrame = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Clone)]
pub struct WebSocket {
    connect: Duration,
    last: Option<LastFrame>,
}

impl fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("connect", &self.connect)
            .field("last", &self.last.is_some())
            .finish()
    }
}

/// Handshake headers the handshake writes itself; the request's are not sent.
const OWN_HEADERS: [HeaderName; 7] = [
    header::HOST,
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

impl WebSocket {
    /// `last` marks the final frame of an answer; without it the answer ends
    /// when the server closes.
    pub fn new(last: Option<LastFrame>) -> Self {
        WebSocket {
            connect: Duration::from_secs(5),
            last,
        }
    }

    pub fn with_connect_timeout(mut self, connect: Duration) -> Self {
        self.connect = connect;
        self
    }

    /// Connects, shakes hands, sends the body as one text frame.
    pub async fn send(&self, request: Request<Bytes>) -> Result<Response<UpstreamBody>, Failure> {
        let (head, body) = request.into_parts();
        let text = Utf8Bytes::try_from(body)
            .map_err(|_| Failure::protocol("the request body is not UTF-8 text"))?;
        let uri = head.uri;
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(Failure::protocol("not a ws:// or wss:// URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| Failure::protocol("the URL has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });

        let mut handshake = uri
            .clone()
            .into_client_request()
            .map_err(|e| Failure::protocol(format!("bad WebSocket URL: {e}")))?;
        for (name, value) in &head.headers {
            if !OWN_HEADERS.contains(name) {
                handshake.headers_mut().append(name.clone(), value.clone());
            }
        }

        let deadline = Instant::now() + self.connect;
        let tcp = super::connect_tcp(&host, port, self.connect).await?;
        if !tls {
            return open(handshake, tcp, text, self.last.clone()).await;
        }
        let name = ServerName::try_from(host)
            .map_err(|e| Failure::new(Cause::Connect, format!("cannot connect: {e}")))?;
        let stream = tokio::time::timeout_at(
            deadline,
            TlsConnector::from(tls_config()).connect(name, tcp),
        )
        .await
        .map_err(|_| {
            Failure::new(
                Cause::Connect,
                format!(
                    "cannot connect: no TLS session within {}",
                    humantime::format_duration(self.connect)
                ),
            )
        })?
        .map_err(|e| Failure::new(Cause::Connect, format!("TLS failed: {e}")))?;
        open(handshake, stream, text, self.last.clone()).await
    }
}

/// rustls with the ring provider and the webpki roots, built on first use.
fn tls_config() -> Arc<ClientConfig> {
    static CONFIG: LazyLock<Arc<ClientConfig>> = LazyLock::new(|| {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    });
    CONFIG.clone()
}

/// The handshake and the request frame over an open stream.
async fn open<S>(
    handshake: tungstenite::handshake::client::Request,
    stream: S,
    text: Utf8Bytes,
    last: Option<LastFrame>,
) -> Result<Response<UpstreamBody>, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ws = match tokio_tungstenite::client_async(handshake, stream).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(refused)) => {
            let (parts, body) = refused.into_parts();
            if parts.status.is_success() {
                return Err(Failure::protocol(format!(
                    "the server answered {} instead of switching to WebSocket",
                    parts.status
                )));
            }
            let body =
                Full::new(Bytes::from(body.unwrap_or_default())).map_err(|never| match never {});
            return Ok(Response::from_parts(
                parts,
                UpstreamBody::Local(Box::pin(body)),
            ));
        }
        Err(tungstenite::Error::Io(e)) => {
            return Err(Failure::new(
                Cause::Connect,
                format!("the WebSocket handshake failed: {e}"),
            ));
        }
        Err(e) => {
            return Err(Failure::protocol(format!(
                "the WebSocket handshake failed: {}",
                error_chain(&e)
            )));
        }
    };
    ws.send(Message::Text(text)).await.map_err(|e| {
        Failure::new(
            Cause::Connect,
            format!("sending the request frame failed: {}", error_chain(&e)),
        )
    })?;
    Ok(Response::new(UpstreamBody::Local(Box::pin(Frames {
        ws,
        last,
        state: State::Reading,
    }))))
}

/// The frames of one answer as a body.
struct Frames<S> {
    ws: WebSocketStream<S>,
    last: Option<LastFrame>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    /// The last frame went out; the socket is being closed.
    Closing,
    Ended,
}

impl<S: AsyncRead + AsyncWrite + Unpin> HttpBody for Frames<S> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Ended => return Poll::Ready(None),
                State::Closing => {
                    // Whatever the close handshake says, the answer is complete.
                    let _ = ready!(Pin::new(&mut this.ws).poll_close(cx));
                    this.state = State::Ended;
                    return Poll::Ready(None);
                }
                State::Reading => {}
            }
            let message = match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None
                | Some(Ok(Message::Close(_)))
                | Some(Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                )) => {
                    this.state = State::Ended;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.state = State::Ended;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Some(Ok(message)) => message,
            };
            let text = match &message {
                Message::Text(text) => text.as_str(),
                Message::Binary(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(_) => {
                        this.state = State::Ended;
                        return Poll::Ready(Some(Err("a binary frame is not UTF-8 text".into())));
                    }
                },
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {
                    continue;
                }
            };
            if this.last.as_ref().is_some_and(|last| last(text)) {
                this.state = State::Closing;
            }
            return Poll::Ready(Some(Ok(Frame::data(line(text)))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Ended
    }
}

/// A frame as one line: its line breaks as spaces, then `\n`.
fn line(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 1);
    if memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_none() {
        out.put_slice(text.as_bytes());
    } else {
        out.extend(
            text.bytes()
                .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
    }
    out.put_u8(b'\n');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_become_lines() {
        assert_eq!(&line("{\"a\":1}")[..], b"{\"a\":1}\n");
        assert_eq!(
            &line("{\r\n  \"a\": \"x\"\n}")[..],
            b"{    \"a\": \"x\" }\n"
        );
    }

    #[test]
    fn the_tls_config_builds() {
        assert_eq!(tls_config().alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
