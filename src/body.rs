//! The body of every response the gateway sends, and reading a whole body
//! (a client's request, a backend's answer) into one buffer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};

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
pub fn whole<B>(body: B, limit: usize) -> Whole<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    Whole {
        body,
        limit,
        len: 0,
        first: Bytes::new(),
        joined: None,
    }
}

/// The future of [`whole`]: written out rather than an `async fn`, whose
/// state would hold the body three times (argument, binding, pinned copy).
pub struct Whole<B> {
    body: B,
    limit: usize,
    len: usize,
    first: Bytes,
    joined: Option<BytesMut>,
}

impl<B> Future for Whole<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Output = Result<Bytes, WholeError<B::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.len == 0 && this.body.size_hint().lower() > this.limit as u64 {
            return Poll::Ready(Err(WholeError::TooLarge));
        }
        while let Some(frame) = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
            let Ok(data) = frame.map_err(WholeError::Body)?.into_data() else {
                continue;
            };
            this.len += data.len();
            if this.len > this.limit {
                return Poll::Ready(Err(WholeError::TooLarge));
            }
            if let Some(joined) = &mut this.joined {
                joined.put(data);
            } else if this.first.is_empty() {
                this.first = data;
            } else if !data.is_empty() {
                let expected =
                    (this.len as u64 + this.body.size_hint().lower()).min(this.limit as u64);
                let mut buf = BytesMut::with_capacity(expected as usize);
                buf.put(std::mem::take(&mut this.first));
                buf.put(data);
                this.joined = Some(buf);
            }
        }
        let first = std::mem::take(&mut this.first);
        Poll::Ready(Ok(this.joined.take().map_or(first, BytesMut::freeze)))
    }
}

/// [`whole`] that gives up at `deadline` (`None`).
///
/// Like tokio's `timeout_at`, except that the timer is made only when the
/// body is not all there at the first poll. A small body usually is (a
/// request's came with its head, an answer's with its status line), and
/// making and dropping a timer, even one never armed, costs more than
/// reading it.
pub fn whole_by<B>(body: B, limit: usize, deadline: tokio::time::Instant) -> WholeBy<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    WholeBy {
        whole: whole(body, limit),
        deadline,
        timer: None,
    }
}

/// The future of [`whole_by`].
pub struct WholeBy<B> {
    whole: Whole<B>,
    deadline: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Future for WholeBy<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Output = Option<Result<Bytes, WholeError<B::Error>>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(read) = Pin::new(&mut this.whole).poll(cx) {
            return Poll::Ready(Some(read));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).map(|()| None)
    }
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

    /// A body whose one frame is there from the `ready_at`th poll on.
    struct Late {
        polls: usize,
        ready_at: usize,
        data: Option<Bytes>,
    }

    impl HttpBody for Late {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.polls += 1;
            if self.polls < self.ready_at {
                return Poll::Pending;
            }
            Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
        }
    }

    #[tokio::test]
    async fn a_deadline_ends_only_a_body_that_is_not_there() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let late = |ready_at| Late {
            polls: 0,
            ready_at,
            data: Some(Bytes::from_static(b"{}")),
        };
        let past = tokio::time::Instant::now() - std::time::Duration::from_secs(1);
        let later = tokio::time::Instant::now() + std::time::Duration::from_secs(60);

        // There at once: read, although the deadline has passed.
        let got = whole_by(late(1), 10, past).await;
        assert_eq!(&got.unwrap().unwrap()[..], b"{}");

        // Not there: the deadline ends the read.
        let mut read = whole_by(late(2), 10, past);
        assert!(matches!(
            Pin::new(&mut read).poll(&mut cx),
            Poll::Ready(None)
        ));

        // Not there at first, then there before the deadline.
        let mut read = whole_by(late(2), 10, later);
        assert!(Pin::new(&mut read).poll(&mut cx).is_pending());
        match Pin::new(&mut read).poll(&mut cx) {
            Poll::Ready(Some(Ok(b))) => assert_eq!(&b[..], b"{}"),
            other => panic!("{:?}", other.map(|r| r.map(|r| r.is_ok()))),
        }
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
