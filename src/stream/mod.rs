//! Streaming: incremental decoders for backend framings, and [`Relay`], the
//! response body that pulls the backend's stream through an adapter's
//! decoder and hands OpenAI server-sent events to the client.
//!
//! The relay is driven by the client: every poll for the next frame polls the
//! backend once more, so there is no task, no channel and no buffering beyond
//! what one backend read produces. When the client goes away, hyper drops the
//! relay, which drops the backend's response and closes its connection.

pub mod chunks;
pub mod lines;
pub mod ndjson;
pub mod sse;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use memchr::memmem;
use tokio::time::{Instant, Sleep};

use crate::error::Kind;
use crate::openai::{Usage, write_error_event};
use crate::provider::Provider;
use crate::upstream::{Cause, Failure, UpstreamBody, error_chain};

/// Turns one backend stream into OpenAI `chat.completion.chunk` events.
pub trait Decoder: Send {
    /// Takes the next bytes of the backend's stream (any boundary) and appends
    /// complete OpenAI SSE events, `data: [DONE]` included, to `out`.
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), Failure>;

    /// The backend's stream ended. A stream that ended before its dialect's
    /// terminator is a failure.
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), Failure>;

    /// Token counts seen so far.
    fn usage(&self) -> Option<Usage>;
}

/// A dialect's stream, event by event: what most decoders are, on top of
/// one of the shared framings (see [`Framed`]).
pub trait Handler: Send {
    /// One backend event; an NDJSON line comes as an event with no name.
    fn event(&mut self, event: sse::Event<'_>, out: &mut BytesMut) -> Result<(), Failure>;

    /// The backend closed the stream: finish it, or fail if it was cut short.
    fn end(&mut self, out: &mut BytesMut) -> Result<(), Failure>;

    fn usage(&self) -> Option<Usage>;
}

/// How a backend frames its stream.
#[derive(Debug)]
enum Framing {
    Sse(sse::SseParser),
    Ndjson(ndjson::NdjsonParser),
}

/// A [`Decoder`] made of a framing and a [`Handler`].
pub struct Framed<H> {
    framing: Framing,
    pub state: H,
}

impl<H: Handler> Framed<H> {
    /// Server-sent events.
    pub fn sse(state: H) -> Self {
        Framed {
            framing: Framing::Sse(sse::SseParser::new()),
            state,
        }
    }

    /// Newline-delimited JSON.
    pub fn ndjson(state: H) -> Self {
        Framed {
            framing: Framing::Ndjson(ndjson::NdjsonParser::new()),
            state,
        }
    }
}

impl<H: Handler> Decoder for Framed<H> {
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), Failure> {
        let state = &mut self.state;
        match &mut self.framing {
            Framing::Sse(p) => p.feed(input, &mut |event| state.event(event, out)),
            Framing::Ndjson(p) => p.feed(input, &mut |line| state.event(line_event(line), out)),
        }
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), Failure> {
        let state = &mut self.state;
        match &mut self.framing {
            Framing::Sse(p) => p.finish(&mut |event| state.event(event, out))?,
            Framing::Ndjson(p) => p.finish(&mut |line| state.event(line_event(line), out))?,
        }
        state.end(out)
    }

    fn usage(&self) -> Option<Usage> {
        self.state.usage()
    }
}

fn line_event(line: &str) -> sse::Event<'_> {
    sse::Event {
        event: "",
        data: line,
    }
}

impl From<lines::FrameError> for Failure {
    fn from(e: lines::FrameError) -> Self {
        Failure::protocol(e.to_string())
    }
}

/// How a relayed stream ended, for logs and metrics.
#[derive(Debug, Clone, Default)]
pub struct StreamOutcome {
    pub usage: Option<Usage>,
    /// Set when the stream ended with an in-band error event.
    pub error: Option<String>,
    /// When the first content (text or a tool call) went to the client.
    pub first_content: Option<Instant>,
}

/// The body of a streamed response.
pub struct Relay {
    provider: Arc<Provider>,
    upstream: Option<UpstreamBody>,
    decoder: Box<dyn Decoder>,
    out: BytesMut,
    /// Some bytes went to the client: from now on failures are in-band.
    primed: bool,
    finished: bool,
    /// A failure before anything reached the client, for the dispatcher to retry.
    early: Option<Failure>,
    error: Option<String>,
    first_content: Option<Instant>,
    idle: Duration,
    /// When the backend last sent data. The timer is not moved for every
    /// chunk: when it fires, it is set again from this.
    last_data: Instant,
    /// The request's total deadline.
    deadline: Instant,
    /// One timer for both limits: due at the earlier of `deadline` and
    /// `last_data + idle` as they stood when it was last set.
    timer: Pin<Box<Sleep>>,
    /// The waker the timer holds, once it has been polled: while the relay
    /// is polled with the same one, the timer need not be polled again
    /// until it has fired.
    timer_waker: Option<Waker>,
    /// Held until the stream ends: concurrency permits and the like.
    hold: Vec<Box<dyn Send + Sync>>,
}

impl Relay {
    pub fn new(
        provider: Arc<Provider>,
        upstream: UpstreamBody,
        decoder: Box<dyn Decoder>,
        idle: Duration,
        deadline: Instant,
    ) -> Self {
        let now = Instant::now();
        Relay {
            provider,
            upstream: Some(upstream),
            decoder,
            out: BytesMut::new(),
            primed: false,
            finished: false,
            early: None,
            error: None,
            first_content: None,
            idle,
            last_data: now,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline.min(now + idle))),
            timer_waker: None,
            hold: Vec::new(),
        }
    }

    /// Keeps `guard` alive until the stream ends.
    pub fn hold(&mut self, guard: Box<dyn Send + Sync>) {
        self.hold.push(guard);
    }

    /// Waits for the first OpenAI event. A failure before it is returned, so
    /// the dispatcher may still retry: nothing has reached the client.
    pub fn prime(&mut self) -> impl Future<Output = Result<(), Failure>> + '_ {
        std::future::poll_fn(move |cx| {
            if self.poll_fill(cx).is_pending() {
                return Poll::Pending;
            }
            match self.early.take() {
                Some(failure) => Poll::Ready(Err(failure)),
                None => Poll::Ready(Ok(())),
            }
        })
    }

    pub fn outcome(&self) -> StreamOutcome {
        StreamOutcome {
            usage: self.decoder.usage(),
            error: self.error.clone(),
            first_content: self.first_content,
        }
    }

    /// Makes progress until there is output to send or the stream is over.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.out.is_empty() && !self.finished {
            let Some(upstream) = self.upstream.as_mut() else {
                self.finished = true;
                break;
            };
            match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.last_data = Instant::now();
                        if let Err(failure) = self.decoder.feed(&data, &mut self.out) {
                            self.fail(failure);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => self.fail(Failure::protocol(format!(
                    "the stream broke: {}",
                    error_chain(&*e)
                ))),
                Poll::Ready(None) => {
                    self.upstream = None;
                    match self.decoder.finish(&mut self.out) {
                        Ok(()) => self.finished = true,
                        Err(failure) => self.fail(failure),
                    }
                }
                Poll::Pending => match self.timed_out(cx) {
                    Some(failure) => self.fail(failure),
                    None => return Poll::Pending,
                },
            }
        }
        Poll::Ready(())
    }

    /// Whether the total deadline has passed or the backend has sent
    /// nothing for `idle`. The timer fires at most once per `idle` while
    /// data flows, and is then set again from the last data, so a chunk
    /// costs no timer update; while the waker it holds is the one this poll
    /// brings, it is only asked whether it has fired.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> Option<Failure> {
        if !self.timer.is_elapsed()
            && self
                .timer_waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return None;
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let fired = self.timer.deadline();
            if fired >= self.deadline {
                return Some(Failure::new(
                    Cause::TotalTimeout,
                    "the request took longer than the total timeout",
                ));
            }
            let due = self.last_data + self.idle;
            if due <= fired {
                let idle = humantime::format_duration(self.idle);
                return Some(Failure::new(
                    Cause::IdleTimeout,
                    format!("the stream was silent for {idle}"),
                ));
            }
            self.timer.as_mut().reset(due.min(self.deadline));
        }
        self.timer_waker = Some(cx.waker().clone());
        None
    }

    fn fail(&mut self, failure: Failure) {
        // Dropping the backend's body closes its connection at once.
        self.upstream = None;
        self.finished = true;
        if !self.primed {
            self.out.clear();
            self.early = Some(failure);
            return;
        }
        let kind = match failure.cause {
            Cause::FirstByteTimeout | Cause::IdleTimeout | Cause::TotalTimeout => {
                Kind::UpstreamTimeout
            }
            Cause::Connect
            | Cause::Status(_)
            | Cause::Protocol
            | Cause::InBand
            | Cause::Saturated => Kind::Upstream,
        };
        let said = match &self.provider.api_key {
            Some(key) => key.redact(&failure.message).into_owned(),
            None => failure.message,
        };
        let message = format!("provider {}: {said}", self.provider.id);
        write_error_event(&mut self.out, kind, &message);
        self.error = Some(message);
    }
}

/// Whether OpenAI chunks carry content: a non-empty `content`, `text` or
/// `refusal` string, or a tool call (a role chunk with `"content":""` does not).
pub fn has_content(sse: &[u8]) -> bool {
    // Built once: a searcher's set-up costs more than a chunk's search.
    static KEYS: LazyLock<[memmem::Finder<'static>; 4]> = LazyLock::new(|| {
        [
            b"\"tool_calls\"",
            &b"\"content\""[..],
            b"\"text\"",
            b"\"refusal\"",
        ]
        .map(memmem::Finder::new)
    });
    let [tool_calls, strings @ ..] = &*KEYS;
    if tool_calls.find(sse).is_some() {
        return true;
    }
    strings.iter().any(|field| {
        field.find_iter(sse).any(|at| {
            let rest = &sse[at + field.needle().len()..];
            let rest = rest.trim_ascii_start().strip_prefix(b":").unwrap_or(b"");
            let rest = rest.trim_ascii_start();
            rest.first() == Some(&b'"') && rest.get(1).is_some_and(|&b| b != b'"')
        })
    })
}

impl HttpBody for Relay {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        // A failure found while priming was handed to the dispatcher; a relay
        // that still gets polled after one has nothing more to say.
        if this.early.is_some() {
            return Poll::Ready(None);
        }
        if this.poll_fill(cx).is_pending() {
            return Poll::Pending;
        }
        if this.out.is_empty() {
            this.hold.clear();
            return Poll::Ready(None);
        }
        this.primed = true;
        if this.first_content.is_none() && has_content(&this.out) {
            this.first_content = Some(Instant::now());
        }
        Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::has_content;

    #[test]
    fn content_is_told_from_role_chunks() {
        assert!(!has_content(
            br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(!has_content(
            br#"data: {"choices":[{"delta":{"content":null}}]}"#
        ));
        assert!(has_content(
            br#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#
        ));
        assert!(has_content(
            br#"data: {"choices":[{"delta": {"content": "Hi"}}]}"#
        ));
        assert!(has_content(
            br#"data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#
        ));
        assert!(has_content(
            br#"data: {"object":"text_completion","choices":[{"text":"Once"}]}"#
        ));
    }
}
