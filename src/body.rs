//! The body of every response the gateway sends, and reading a whole body
//! (a client's request, a backend's answer) into one buffer.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::stream::{Relay, StreamOutcome};

pub enum Body {
    /// A whole body, sent with a content-length.
    Full(Option<Bytes>),
    /// A relayed stream of server-sent events.
    Relay(Box<Relay>),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Some(bytes.into()))
    }

    pub fn empty() -> Body {
        Body::Full(None)
    }

    /// Usage and in-band error of a relayed stream; `None` for whole bodies.
    pub fn stream_outcome(&self) -> Option<StreamOutcome> {
        match self {
            Body::Full(_) => None,
            Body::Relay(r) => Some(r.outcome()),
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Relay(relay) => Pin::new(relay.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Relay(relay) => relay.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Relay(_) => SizeHint::default(),
        }
    }
}

/// Why [`whole`] did not return a body.
#[derive(Debug)]
pub enum WholeError<E> {
    /// More than the limit arrived (or was announced).
    TooLarge,
    /// The body broke off.
    Body(E),
}

/// All of `body`'s data, at most `limit` bytes; trailers are ignored. A
/// body that comes in one data frame (the usual request or answer) is that
/// frame itself: no copy and, unlike `http_body_util`'s collect, no list of
/// chunks to allocate.
pub async fn whole<B>(body: B, limit: usize) -> Result<Bytes, WholeError<B::Error>>
where
    B: HttpBody<Data = Bytes>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(WholeError::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(WholeError::Body)?.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            return Err(WholeError::TooLarge);
        }
        if let Some(joined) = &mut joined {
            joined.put(data);
        } else if first.is_empty() {
            first = data;
        } else if !data.is_empty() {
            let expected = (len as u64 + body.size_hint().lower()).min(limit as u64);
            let mut buf = BytesMut::with_capacity(expected as usize);
            buf.put(std::mem::take(&mut first));
            buf.put(data);
            joined = Some(buf);
        }
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunked(parts: &[&'static str]) -> impl HttpBody<Data = Bytes, Error = std::io::Error> {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .chain([Ok(Frame::trailers(http::HeaderMap::new()))])
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn one_frame_is_returned_as_it_is() {
        let data = Bytes::from_static(b"{\"model\":\"m\"}");
        let got = whole(Full::new(data.clone()), 100).await.unwrap();
        assert_eq!(got, data);
        assert_eq!(got.as_ptr(), data.as_ptr(), "no copy of a single frame");
    }

    #[tokio::test]
    async fn frames_are_joined_in_order_and_trailers_ignored() {
        let got = whole(chunked(&["", "ab", "", "cd", "e"]), 5).await.unwrap();
        assert_eq!(&got[..], b"abcde");
        assert_eq!(&whole(chunked(&[]), 0).await.unwrap()[..], b"");
    }

    #[tokio::test]
    async fn the_limit_counts_every_frame() {
        assert!(matches!(
            whole(chunked(&["abc", "def"]), 5).await,
            Err(WholeError::TooLarge)
        ));
        assert!(matches!(
            whole(Full::new(Bytes::from_static(b"123456")), 5).await,
            Err(WholeError::TooLarge)
        ));
    }

    #[tokio::test]
    async fn a_broken_body_is_an_error() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("reset")),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        assert!(matches!(whole(body, 10).await, Err(WholeError::Body(_))));
    }
}
