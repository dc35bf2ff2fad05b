//! An incremental server-sent-events parser that copes with any chunk
//! boundary: split lines, split UTF-8 characters, CR, LF and CRLF (even a CRLF
//! split across reads), comments, and multi-line `data`.
//!
//! It follows the WHATWG event-stream algorithm with two additions for LLM
//! backends: an `error:` field (llama.cpp's server writes one) makes an event
//! of type `error`, and data still pending when the stream ends is
//! dispatched rather than dropped.

use super::lines::{FrameError, Lines};

/// One dispatched event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, or `""` when there was none.
    pub event: &'a str,
    pub data: &'a str,
}

#[derive(Debug)]
pub struct SseParser {
    lines: Lines,
    fields: Fields,
}

#[derive(Debug, Default)]
struct Fields {
    data: Vec<u8>,
    event: Vec<u8>,
    /// Still before the first line (a byte-order mark may lead).
    at_start: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        SseParser {
            lines: Lines::any_newline(),
            fields: Fields {
                at_start: true,
                ..Default::default()
            },
        }
    }

    /// Feeds bytes; calls `on_event` for every event they complete, in order.
    /// An error returned by `on_event` stops parsing and is passed through.
    pub fn feed<E: From<FrameError>>(
        &mut self,
        mut input: &[u8],
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        // The usual event, one `data` line and a blank line, whole in this
        // read with nothing pending before it: handed out from the read
        // itself rather than copied line by line. Anything else, from its
        // first byte on, takes the general way.
        while self.lines.is_clear() && self.fields.is_clear() {
            let Some(rest) = input.strip_prefix(b"data:") else {
                break;
            };
            let Some(end) = memchr::memchr2(b'\n', b'\r', rest) else {
                break;
            };
            if rest[end] != b'\n' || rest.get(end + 1) != Some(&b'\n') {
                break;
            }
            let value = &rest[..end];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            let data = std::str::from_utf8(value).map_err(|_| FrameError::InvalidUtf8)?;
            on_event(Event { event: "", data })?;
            input = &rest[end + 2..];
        }
        let fields = &mut self.fields;
        self.lines
            .feed(input, &mut |line| fields.line(line, on_event))
    }

    /// The stream ended: a last unterminated line is taken as complete, and
    /// pending data is dispatched.
    pub fn finish<E: From<FrameError>>(
        &mut self,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let fields = &mut self.fields;
        self.lines.finish(&mut |line| fields.line(line, on_event))?;
        fields.dispatch(on_event)
    }
}

impl Fields {
    /// Past the first line, with no field of an event pending.
    fn is_clear(&self) -> bool {
        !self.at_start && self.data.is_empty() && self.event.is_empty()
    }

    fn line<E: From<FrameError>>(
        &mut self,
        mut line: &[u8],
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.at_start {
            self.at_start = false;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            return self.dispatch(on_event);
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"error" => {
                self.event.clear();
                self.event.extend_from_slice(b"error");
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch<E: From<FrameError>>(
        &mut self,
        on_event: &mut dyn FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.data.is_empty() {
            self.event.clear();
            return Ok(());
        }
        self.data.pop();
        let result = match (
            std::str::from_utf8(&self.data),
            std::str::from_utf8(&self.event),
        ) {
            (Ok(data), Ok(event)) => on_event(Event { event, data }),
            _ => Err(FrameError::InvalidUtf8.into()),
        };
        self.data.clear();
        self.event.clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(pieces: &[&[u8]]) -> Vec<(String, String)> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut push = |e: Event<'_>| -> Result<(), FrameError> {
            out.push((e.event.to_owned(), e.data.to_owned()));
            Ok(())
        };
        for piece in pieces {
            p.feed(piece, &mut push).unwrap();
        }
        p.finish(&mut push).unwrap();
        out
    }

    /// Cut into three reads at every two points, `stream` gives `whole`.
    fn same_at_every_split(stream: &str, whole: &[(String, String)]) {
        let bytes = stream.as_bytes();
        for i in 0..bytes.len() {
            for j in i..bytes.len() {
                let got = events_of(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
    }

    fn ev(event: &str, data: &str) -> (String, String) {
        (event.to_owned(), data.to_owned())
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let stream = "\u{feff}: keep-alive\r\nevent: message_start\r\ndata: {\"a\":\"é\"}\r\n\r\ndata:x\ndata:  y\n\ndata\n\n: c\rdata: z\r\rerror: {\"code\":500}\n\n";
        let whole = events_of(&[stream.as_bytes()]);
        assert_eq!(
            whole,
            vec![
                ev("message_start", "{\"a\":\"é\"}"),
                ev("", "x\n y"),
                ev("", ""),
                ev("", "z"),
                ev("error", "{\"code\":500}"),
            ]
        );
        same_at_every_split(stream, &whole);
    }

    #[test]
    fn plain_events_give_the_same_events_at_every_split_point() {
        // After the first event, `data` line and blank line events are
        // handed out whole from a read; any other shape, or one split
        // across reads, goes the general way.
        let stream = "data: a\n\ndata:b\n\ndata: é\n\nevent: x\ndata: c\n\ndata: d\r\n\r\ndata: e\ndata: f\n\ndata: g\n\n: c\ndata: h\n\ndata\n\ndata: i\r\rdata: j\n\n";
        let whole = events_of(&[stream.as_bytes()]);
        assert_eq!(
            whole,
            vec![
                ev("", "a"),
                ev("", "b"),
                ev("", "é"),
                ev("x", "c"),
                ev("", "d"),
                ev("", "e\nf"),
                ev("", "g"),
                ev("", "h"),
                ev("", ""),
                ev("", "i"),
                ev("", "j"),
            ]
        );
        same_at_every_split(stream, &whole);
    }

    #[test]
    fn invalid_utf8_in_a_plain_event_is_an_error() {
        let mut p = SseParser::new();
        let mut ok = |_: Event<'_>| Ok::<(), FrameError>(());
        p.feed(b"data: a\n\n", &mut ok).unwrap();
        let r = p.feed(b"data: b\n\ndata: \xff\n\n", &mut ok);
        assert_eq!(r, Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn byte_by_byte_crlf_does_not_dispatch_early() {
        let stream = b"data: a\r\ndata: b\r\n\r\n";
        let pieces: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events_of(&pieces), vec![ev("", "a\nb")]);
    }

    #[test]
    fn unterminated_last_event_is_dispatched() {
        assert_eq!(events_of(&[b"data: {\"x\":1}"]), vec![ev("", "{\"x\":1}")]);
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut p = SseParser::new();
        let r = p.feed(b"data: \xff\n\n", &mut |_| Ok::<(), FrameError>(()));
        assert_eq!(r, Err(FrameError::InvalidUtf8));
    }
}
