//! `type: rest`: any JSON-over-HTTP (or WebSocket) text generation API,
//! described in the config instead of in code. The request body is a
//! template filled from the OpenAI request (see [`super::template`]); the
//! answer, token counts, finish reason and errors are read with JSON
//! Pointers.
//!
//! Streaming is optional: with a `stream` section and a client that asks to
//! stream, the backend is asked to stream too (`{{stream}}` renders `true`)
//! and each event of its NDJSON, server-sent-event or delimited stream gives
//! one content delta. Without it, a client's stream is synthesized from the
//! whole answer.
//!
//! With `transport: websocket`, the body goes out as one text frame on a
//! fresh connection and the answer is read frame by frame with the `stream`
//! pointers, for streaming clients and whole ones alike (the transport hands
//! the frames over as lines; see [`crate::upstream::websocket`]).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Uri, header};
use serde::Deserialize;
use serde_json::Value;

use super::template::{
    Answer, AnswerOptions, Coverage, NoStream, Pointer, Template, UsagePointers, endpoint,
    error_text, finish_reason, truthy, usage_pointers,
};
use super::{Adapter, AuthStyle, Built, Converted, UpstreamRequest};
use crate::call::Call;
use crate::chat::{Completion, FinishReason};
use crate::config::{Path, Problem, raw};
use crate::error::Error;
use crate::openai::{Endpoint, Usage};
use crate::route::ModelName;
use crate::stream::Decoder;
use crate::stream::chunks::{ChunkWriter, Shape};
use crate::stream::lines::{FrameError, MAX_LINE};
use crate::stream::ndjson::NdjsonParser;
use crate::stream::sse::SseParser;
use crate::upstream::websocket::{LastFrame, WebSocket};
use crate::upstream::{Cause, Failure, Transport};

// === config ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    url: String,
    #[serde(default)]
    transport: TransportKind,
    body: Value,
    #[serde(default)]
    response: Option<AnswerOptions>,
    #[serde(default)]
    stream: Option<StreamOptions>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TransportKind {
    #[default]
    Http,
    Websocket,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    delimiter: Option<String>,
    delta: String,
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    prompt_tokens: Option<String>,
    #[serde(default)]
    completion_tokens: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// How a backend's stream is cut into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    /// One JSON value per line.
    Ndjson,
    /// Server-sent events; each event's `data` is one JSON value.
    Sse,
    /// JSON values separated by `delimiter`.
    Delimited,
    /// WebSocket text frames, one JSON value each.
    Frames,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Sse => "sse",
            Format::Delimited => "delimited",
            Format::Frames => "frames",
        }
    }
}

/// What marks the end of a streamed answer.
#[derive(Debug, Clone)]
enum Done {
    /// An event where the pointer finds a truthy value.
    Pointer(Pointer),
    /// An event whose whole text is this (e.g. `[DONE]`).
    Literal(Box<str>),
}

/// How to read a streamed answer.
#[derive(Debug)]
struct StreamSpec {
    format: Format,
    /// `format: delimited`'s separator, its searcher built once.
    delimiter: Arc<memchr::memmem::Finder<'static>>,
    delta: Pointer,
    done: Option<Done>,
    usage: UsagePointers,
    finish_reason: Option<Pointer>,
    error: Option<Pointer>,
}

pub fn build(
    id: &str,
    raw: &raw::Provider,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Built> {
    let options: Options = super::options(raw, path, problems)?;
    let before = problems.len();
    let websocket = options.transport == TransportKind::Websocket;
    if raw.base_url.is_some() {
        problems.push(Problem::new(
            path.key("base_url"),
            "a rest provider names its whole endpoint in `url`",
        ));
    }
    let schemes: &[&str] = if websocket {
        &["ws", "wss"]
    } else {
        &["http", "https"]
    };
    let uri = endpoint(&options.url, schemes, &path.key("url"), problems);
    let body = Template::compile(&options.body, &path.key("body"), problems);

    let answer = match (&options.response, websocket) {
        (Some(_), true) => {
            problems.push(Problem::new(
                path.key("response"),
                "a WebSocket answer is read frame by frame: describe it under `stream`",
            ));
            None
        }
        (Some(r), false) => r
            .compile(&path.key("response"), problems)
            .zip(Pointer::compile_opt(
                r.error.as_deref(),
                &path.key("response").key("error"),
                problems,
            )),
        (None, true) => None,
        (None, false) => {
            problems.push(Problem::new(
                path.clone(),
                "`response` is required: where the answer's text sits (`content`)",
            ));
            None
        }
    };
    let stream = match &options.stream {
        Some(s) => stream_spec(s, websocket, &path.key("stream"), problems),
        None if websocket => {
            problems.push(Problem::new(
                path.clone(),
                "`stream` is required with `transport: websocket`: where each frame's text sits (`delta`)",
            ));
            None
        }
        None => None,
    };
    if problems.len() != before {
        return None;
    }

    let body = body?;
    let stream = stream.map(Arc::new);
    let transport = match (&stream, websocket) {
        (Some(spec), true) => {
            let spec = spec.clone();
            let last = spec
                .ends_answer_possible()
                .then(|| Arc::new(move |frame: &str| spec.ends_answer(frame)) as LastFrame);
            Some(Transport::WebSocket(WebSocket::new(last)))
        }
        _ => None,
    };
    Some(Built {
        adapter: Box::new(Rest {
            id: id.into(),
            uri: uri?,
            coverage: Coverage::of(&[&body]),
            body,
            answer,
            stream,
            websocket,
        }),
        transport,
        default_auth: AuthStyle::Bearer,
    })
}

fn stream_spec(
    s: &StreamOptions,
    websocket: bool,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<StreamSpec> {
    let before = problems.len();
    let format = match (s.format, websocket) {
        (None | Some(Format::Frames), true) => Format::Frames,
        (Some(other), true) => {
            problems.push(Problem::new(
                path.key("format"),
                format!(
                    "a WebSocket answer comes as frames; {} is for HTTP streams",
                    other.name()
                ),
            ));
            Format::Frames
        }
        (Some(Format::Frames), false) => {
            problems.push(Problem::new(
                path.key("format"),
                "`frames` needs `transport: websocket`; HTTP streams are ndjson, sse or delimited",
            ));
            Format::Frames
        }
        (Some(format), false) => format,
        (None, false) => {
            problems.push(Problem::new(
                path.key("format"),
                "is required: ndjson, sse or delimited",
            ));
            Format::Ndjson
        }
    };
    let delimiter = match (&s.delimiter, format) {
        (Some(d), Format::Delimited) if !d.is_empty() => d.as_bytes(),
        (None, Format::Delimited) | (Some(_), Format::Delimited) => {
            problems.push(Problem::new(
                path.key("delimiter"),
                "`format: delimited` needs a non-empty `delimiter`",
            ));
            &[]
        }
        (Some(_), _) => {
            problems.push(Problem::new(
                path.key("delimiter"),
                "only `format: delimited` takes a delimiter",
            ));
            &[]
        }
        (None, _) => &[],
    };
    let delimiter = Arc::new(memchr::memmem::Finder::new(delimiter).into_owned());
    let delta = Pointer::compile(&s.delta, &path.key("delta"), problems);
    let done = match s.done.as_deref() {
        None => None,
        Some(t) if t.starts_with('/') => {
            Pointer::compile(t, &path.key("done"), problems).map(Done::Pointer)
        }
        Some("") => {
            problems.push(Problem::new(
                path.key("done"),
                "must be a JSON Pointer (`/done`) or the text of the last event (`[DONE]`)",
            ));
            None
        }
        Some(t) => Some(Done::Literal(t.trim().into())),
    };
    let usage = usage_pointers(
        s.prompt_tokens.as_deref(),
        s.completion_tokens.as_deref(),
        path,
        problems,
    );
    let finish = Pointer::compile_opt(
        s.finish_reason.as_deref(),
        &path.key("finish_reason"),
        problems,
    );
    let error = Pointer::compile_opt(s.error.as_deref(), &path.key("error"), problems);
    if problems.len() != before {
        return None;
    }
    Some(StreamSpec {
        format,
        delimiter,
        delta: delta?,
        done,
        usage: usage?,
        finish_reason: finish?,
        error: error?,
    })
}

impl StreamSpec {
    /// Whether some frame can end the answer before the server closes.
    fn ends_answer_possible(&self) -> bool {
        self.done.is_some() || self.error.is_some()
    }

    /// Whether a frame ends the answer: its end marker, or an error.
    fn ends_answer(&self, frame: &str) -> bool {
        let text = frame.trim();
        if let Some(Done::Literal(literal)) = &self.done
            && text == literal.as_ref()
        {
            return true;
        }
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        let done = matches!(&self.done, Some(Done::Pointer(p)) if truthy(p.find(&value)));
        let error = self
            .error
            .as_ref()
            .is_some_and(|p| p.find(&value).is_some_and(|v| !v.is_null()));
        done || error
    }
}

// === the adapter ===

#[derive(Debug)]
pub struct Rest {
    id: Box<str>,
    uri: Uri,
    body: Template,
    coverage: Coverage,
    /// HTTP only: the whole answer's pointers and its error pointer.
    answer: Option<(Answer, Option<Pointer>)>,
    stream: Option<Arc<StreamSpec>>,
    websocket: bool,
}

impl Adapter for Rest {
    fn supports(&self, endpoint: Endpoint) -> bool {
        matches!(endpoint, Endpoint::Chat | Endpoint::Completions)
    }

    fn request(&self, call: &Call, model: &ModelName) -> Result<UpstreamRequest, Error> {
        let stream = call.view.stream && self.stream.is_some();
        let mut body = Vec::with_capacity(call.body.len() + 256);
        self.coverage
            .fill(call, model, &self.id, stream, Some(&self.body), &mut body)?;
        let mut headers = HeaderMap::with_capacity(2);
        if !self.websocket {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let accept = match self.stream.as_deref().filter(|_| stream).map(|s| s.format) {
                Some(Format::Sse) => "text/event-stream",
                Some(Format::Ndjson) => "application/x-ndjson",
                Some(Format::Delimited | Format::Frames) => "*/*",
                None => "application/json",
            };
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        }
        Ok(UpstreamRequest {
            uri: self.uri.clone(),
            fixed: &[],
            headers,
            body: Bytes::from(body),
            stream,
        })
    }

    fn response(
        &self,
        _call: &Call,
        _headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<Converted, Failure> {
        if let (Some(spec), true) = (&self.stream, self.websocket) {
            return whole_from_events(spec.clone(), &body).map(Converted::Chat);
        }
        let Some((answer, error)) = &self.answer else {
            return Err(Failure::protocol("no `response` is configured"));
        };
        let value: Value = crate::json::from_slice(&body)
            .map_err(|e| Failure::protocol(format!("the answer is not JSON: {e}")))?;
        if let Some(e) = error
            .as_ref()
            .and_then(|p| p.find(&value))
            .filter(|v| !v.is_null())
        {
            return Err(Failure::new(Cause::InBand, error_text(e)));
        }
        Ok(Converted::Chat(answer.completion(&value)?))
    }

    fn decoder(&self, call: &Call) -> Box<dyn Decoder> {
        match &self.stream {
            Some(spec) => Box::new(RestStream {
                events: Events::new(spec.clone()),
                writer: ChunkWriter::new(&Shape::of(call)),
            }),
            None => Box::new(NoStream),
        }
    }
}

// === stream decoding ===

/// Cuts a stream into event texts.
enum Framing {
    Lines(NdjsonParser),
    Sse(SseParser),
    Delimited {
        delimiter: Arc<memchr::memmem::Finder<'static>>,
        buffer: Vec<u8>,
        /// Bytes of `buffer` already searched for the delimiter.
        searched: usize,
    },
}

impl Framing {
    fn new(spec: &StreamSpec) -> Framing {
        match spec.format {
            Format::Ndjson | Format::Frames => Framing::Lines(NdjsonParser::new()),
            Format::Sse => Framing::Sse(SseParser::new()),
            Format::Delimited => Framing::Delimited {
                delimiter: spec.delimiter.clone(),
                buffer: Vec::new(),
                searched: 0,
            },
        }
    }

    /// Calls `on_event(text, is_error_event)` for each event `input` completes.
    fn feed(
        &mut self,
        input: &[u8],
        on_event: &mut dyn FnMut(&str, bool) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        match self {
            Framing::Lines(p) => p.feed(input, &mut |line| on_event(line, false)),
            Framing::Sse(p) => p.feed(input, &mut |e| on_event(e.data, e.event == "error")),
            Framing::Delimited {
                delimiter,
                buffer,
                searched,
            } => {
                buffer.extend_from_slice(input);
                let mut start = 0;
                loop {
                    let from = (*searched).max(start);
                    match delimiter.find(&buffer[from..]) {
                        Some(at) => {
                            let end = from + at;
                            on_event(utf8(&buffer[start..end])?, false)?;
                            start = end + delimiter.needle().len();
                            *searched = start;
                        }
                        None => break,
                    }
                }
                buffer.drain(..start);
                *searched = buffer.len().saturating_sub(delimiter.needle().len() - 1);
                if buffer.len() > MAX_LINE {
                    return Err(FrameError::LineTooLong.into());
                }
                Ok(())
            }
        }
    }

    fn finish(
        &mut self,
        on_event: &mut dyn FnMut(&str, bool) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        match self {
            Framing::Lines(p) => p.finish(&mut |line| on_event(line, false)),
            Framing::Sse(p) => p.finish(&mut |e| on_event(e.data, e.event == "error")),
            Framing::Delimited { buffer, .. } => {
                let rest = std::mem::take(buffer);
                on_event(utf8(&rest)?, false)
            }
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, Failure> {
    std::str::from_utf8(bytes).map_err(|_| FrameError::InvalidUtf8.into())
}

/// What the events of one answer said so far.
struct Progress {
    spec: Arc<StreamSpec>,
    done: bool,
    usage: Usage,
    finish: Option<FinishReason>,
}

impl Progress {
    /// Reads one event; its text delta, if any, goes to `on_delta`.
    fn event(
        &mut self,
        text: &str,
        error_event: bool,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<(), Failure> {
        let text = text.trim();
        if self.done || text.is_empty() {
            return Ok(());
        }
        let spec = &*self.spec;
        if error_event {
            return Err(super::in_band_failure(text.as_bytes()));
        }
        if let Some(Done::Literal(literal)) = &spec.done
            && text == literal.as_ref()
        {
            self.done = true;
            return Ok(());
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let start: String = text.chars().take(40).collect();
            Failure::protocol(format!(
                "an event is not JSON ({e}): {start:?} (an end marker like [DONE] goes in `stream.done`)"
            ))
        })?;
        if let Some(e) = spec
            .error
            .as_ref()
            .and_then(|p| p.find(&value))
            .filter(|v| !v.is_null())
        {
            return Err(Failure::new(Cause::InBand, error_text(e)));
        }
        if let Some(delta) = spec.delta.text(&value) {
            on_delta(delta);
        }
        spec.usage.update(&value, &mut self.usage);
        if let Some(reason @ Value::String(_)) =
            spec.finish_reason.as_ref().and_then(|p| p.find(&value))
        {
            self.finish = Some(finish_reason(Some(reason)));
        }
        if let Some(Done::Pointer(p)) = &spec.done
            && truthy(p.find(&value))
        {
            self.done = true;
        }
        Ok(())
    }

    /// The stream ended: fine after the end marker, or when there is none.
    fn end(&self) -> Result<(), Failure> {
        if self.done || self.spec.done.is_none() {
            Ok(())
        } else {
            Err(Failure::protocol("the stream ended before its end marker"))
        }
    }

    fn usage(&self) -> Option<Usage> {
        (!self.spec.usage.is_empty()).then_some(self.usage)
    }

    fn finish_reason(&self) -> FinishReason {
        self.finish.unwrap_or(FinishReason::Stop)
    }
}

/// A stream cut into events and read.
struct Events {
    framing: Framing,
    progress: Progress,
}

impl Events {
    fn new(spec: Arc<StreamSpec>) -> Events {
        Events {
            framing: Framing::new(&spec),
            progress: Progress {
                spec,
                done: false,
                usage: Usage::default(),
                finish: None,
            },
        }
    }

    fn feed(&mut self, input: &[u8], on_delta: &mut dyn FnMut(&str)) -> Result<(), Failure> {
        let progress = &mut self.progress;
        self.framing.feed(input, &mut |text, error| {
            progress.event(text, error, on_delta)
        })
    }

    fn finish(&mut self, on_delta: &mut dyn FnMut(&str)) -> Result<(), Failure> {
        let progress = &mut self.progress;
        self.framing
            .finish(&mut |text, error| progress.event(text, error, on_delta))?;
        progress.end()
    }
}

/// A whole answer read from events (a WebSocket answer to a whole request).
fn whole_from_events(spec: Arc<StreamSpec>, body: &[u8]) -> Result<Completion, Failure> {
    let mut events = Events::new(spec);
    let mut content = String::new();
    events.feed(body, &mut |d| content.push_str(d))?;
    events.finish(&mut |d| content.push_str(d))?;
    let p = &events.progress;
    Ok(Completion {
        content: Some(content),
        tool_calls: Vec::new(),
        finish_reason: p.finish_reason(),
        usage: p.usage().unwrap_or_default(),
    })
}

/// A backend's stream as OpenAI chunks.
struct RestStream {
    events: Events,
    writer: ChunkWriter,
}

impl Decoder for RestStream {
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), Failure> {
        let writer = &mut self.writer;
        self.events
            .feed(input, &mut |delta| writer.content(out, delta))?;
        let p = &self.events.progress;
        if p.done {
            writer.finish(out, p.finish_reason(), p.usage());
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), Failure> {
        let writer = &mut self.writer;
        self.events
            .finish(&mut |delta| writer.content(out, delta))?;
        let p = &self.events.progress;
        writer.finish(out, p.finish_reason(), p.usage());
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.events.progress.usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::template::testing::{call, problems};
    use serde_json::json;

    const NDJSON: &str = r#"    type: rest
    url: http://api.test/generate
    body:
      model: "{{model}}"
      prompt: "{{prompt}}"
      options: {num_predict: "{{max_tokens}}", temperature: "{{temperature}}", seed: "{{request.seed}}"}
      stream: "{{stream}}"
    response:
      content: /output/text
      prompt_tokens: /usage/input
      completion_tokens: /usage/output
      finish_reason: /stop_reason
      error: /error
    stream:
      format: ndjson
      delta: /token/text
      done: /done
      prompt_tokens: /usage/input
      completion_tokens: /usage/output
      finish_reason: /stop_reason
      error: /error"#;

    const CHAT: &str = r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":64,"seed":7}"#;

    /// Decodes `pieces` as one stream; returns the chunk JSONs (DONE as a string) or the failure.
    fn decode(provider: &str, body: &str, pieces: &[&[u8]]) -> (Vec<Value>, Result<(), Failure>) {
        let (p, c) = call(provider, Endpoint::Chat, body);
        let mut d = p.adapter.decoder(&c);
        let mut out = BytesMut::new();
        let mut result = Ok(());
        for piece in pieces {
            if let Err(f) = d.feed(piece, &mut out) {
                result = Err(f);
                break;
            }
        }
        if result.is_ok() {
            result = d.finish(&mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        let events = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| match serde_json::from_str::<Value>(d) {
                Ok(mut v) => {
                    v["created"] = json!(0);
                    v
                }
                Err(_) => json!(d),
            })
            .collect();
        (events, result)
    }

    fn deltas(events: &[Value]) -> Vec<Value> {
        events
            .iter()
            .map(|e| match e.get("choices") {
                Some(choices) if choices.as_array().is_some_and(|c| !c.is_empty()) => {
                    json!([choices[0]["delta"], choices[0]["finish_reason"]])
                }
                Some(_) => json!({"usage": e["usage"]}),
                None => e.clone(),
            })
            .collect()
    }

    #[test]
    fn the_body_is_the_filled_template() {
        let (p, c) = call(NDJSON, Endpoint::Chat, CHAT);
        let r = p.adapter.request(&c, &"llama3".into()).unwrap();
        assert_eq!(r.uri, "http://api.test/generate");
        assert!(!r.stream);
        assert_eq!(r.headers["accept"], "application/json");
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap(),
            json!({"model": "llama3", "prompt": "System: Be brief.\n\nUser: Hi",
                   "options": {"num_predict": 64, "temperature": null, "seed": 7}, "stream": false})
        );
        let streaming = CHAT.replace("\"seed\":7", "\"stream\":true");
        let (p, c) = call(NDJSON, Endpoint::Chat, &streaming);
        let r = p.adapter.request(&c, &"llama3".into()).unwrap();
        assert!(r.stream);
        assert_eq!(r.headers["accept"], "application/x-ndjson");
        let sent: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (&sent["stream"], &sent["options"]["seed"]),
            (&json!(true), &Value::Null)
        );
    }

    #[test]
    fn a_whole_answer_and_its_errors() {
        let (p, c) = call(NDJSON, Endpoint::Chat, CHAT);
        let ok = Bytes::from(json!({"output": {"text": "Hello"}, "usage": {"input": 5, "output": 1}, "stop_reason": "length", "error": null}).to_string());
        let Converted::Chat(done) = p.adapter.response(&c, &http::HeaderMap::new(), ok).unwrap()
        else {
            panic!("a chat answer")
        };
        assert_eq!(done.content.as_deref(), Some("Hello"));
        assert_eq!(done.usage, Usage::new(5, 1));
        assert_eq!(done.finish_reason, FinishReason::Length);
        let f = p
            .adapter
            .response(
                &c,
                &http::HeaderMap::new(),
                Bytes::from_static(br#"{"error":{"message":"model is loading"}}"#),
            )
            .unwrap_err();
        assert_eq!(
            (f.cause, f.message.as_str()),
            (Cause::InBand, "model is loading")
        );
    }

    #[test]
    fn an_ndjson_stream_split_anywhere_gives_the_same_chunks() {
        let stream = concat!(
            "{\"token\":{\"text\":\"Hel\"},\"done\":false}\n",
            "{\"token\":{\"text\":\"lo \u{e9}\"},\"done\":false}\r\n\n",
            "{\"token\":{\"text\":\"\"},\"done\":true,\"stop_reason\":\"max_tokens\",\"usage\":{\"input\":5,\"output\":2}}\n",
        );
        let body = r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let (whole, r) = decode(NDJSON, body, &[stream.as_bytes()]);
        r.unwrap();
        assert_eq!(
            deltas(&whole),
            vec![
                json!([{"role": "assistant", "content": ""}, null]),
                json!([{"content": "Hel"}, null]),
                json!([{"content": "lo \u{e9}"}, null]),
                json!([{}, "length"]),
                json!({"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
                json!("[DONE]"),
            ]
        );
        let bytes = stream.as_bytes();
        for i in 0..bytes.len() {
            let (split, r) = decode(NDJSON, body, &[&bytes[..i], &bytes[i..]]);
            r.unwrap();
            assert_eq!(deltas(&split), deltas(&whole), "split at {i}");
        }
    }

    #[test]
    fn a_stream_without_its_end_marker_or_with_an_error_fails() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":true}"#;
        let (events, r) = decode(
            NDJSON,
            body,
            &[b"{\"token\":{\"text\":\"Hel\"},\"done\":false}\n"],
        );
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);
        assert_eq!(deltas(&events)[1], json!([{"content": "Hel"}, null]));
        let (_, r) = decode(
            NDJSON,
            body,
            &[b"{\"token\":{\"text\":\"a\"}}\n{\"error\":\"GPU fell over\"}\n"],
        );
        let f = r.unwrap_err();
        assert_eq!(
            (f.cause, f.message.as_str()),
            (Cause::InBand, "GPU fell over")
        );
        let (_, r) = decode(NDJSON, body, &[b"not json\n"]);
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);
    }

    #[test]
    fn sse_and_delimited_streams() {
        let sse = NDJSON
            .replace("format: ndjson", "format: sse")
            .replace("done: /done", "done: \"[DONE]\"");
        let body = r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":true}"#;
        let stream = ": hi\n\nevent: token\ndata: {\"token\":{\"text\":\"A\"}}\n\ndata: {\"token\":{\"text\":\"B\"},\"stop_reason\":\"stop\"}\r\n\r\ndata: [DONE]\n\n";
        let (whole, r) = decode(&sse, body, &[stream.as_bytes()]);
        r.unwrap();
        let expected = vec![
            json!([{"role": "assistant", "content": ""}, null]),
            json!([{"content": "A"}, null]),
            json!([{"content": "B"}, null]),
            json!([{}, "stop"]),
            json!("[DONE]"),
        ];
        assert_eq!(deltas(&whole), expected);
        for i in 0..stream.len() {
            let (split, r) = decode(
                &sse,
                body,
                &[&stream.as_bytes()[..i], &stream.as_bytes()[i..]],
            );
            r.unwrap();
            assert_eq!(deltas(&split), expected, "split at {i}");
        }
        let (_, r) = decode(&sse, body, &[b"event: error\ndata: {\"error\":{\"message\":\"overloaded\",\"code\":\"busy\"}}\n\n"]);
        let f = r.unwrap_err();
        assert_eq!(
            (f.cause, f.message.as_str(), f.code.as_deref()),
            (Cause::InBand, "overloaded", Some("busy"))
        );

        let delimited = NDJSON
            .replace(
                "format: ndjson",
                "format: delimited\n      delimiter: \"\\u001e\"",
            )
            .replace("      done: /done\n", "");
        let stream = "{\"token\":{\"text\":\"x\"}}\u{1e}{\"token\":{\"text\":\"y\"}}\u{1e}{\"token\":{\"text\":\"z\"}}";
        let expected = vec![
            json!([{"role": "assistant", "content": ""}, null]),
            json!([{"content": "x"}, null]),
            json!([{"content": "y"}, null]),
            json!([{"content": "z"}, null]),
            json!([{}, "stop"]),
            json!("[DONE]"),
        ];
        for i in 0..stream.len() {
            for j in i..stream.len() {
                let b = stream.as_bytes();
                let (split, r) = decode(&delimited, body, &[&b[..i], &b[i..j], &b[j..]]);
                r.unwrap();
                assert_eq!(deltas(&split), expected, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn a_websocket_answer_to_a_whole_request_gathers_its_frames() {
        let ws = r#"    type: rest
    transport: websocket
    url: ws://api.test/socket
    body: {prompt: "{{last_user_message}}", stream: "{{stream}}"}
    stream: {delta: /token, done: /done, completion_tokens: /count}"#;
        let (p, c) = call(ws, Endpoint::Chat, CHAT);
        let r = p.adapter.request(&c, &"x".into()).unwrap();
        assert!(r.headers.is_empty(), "a handshake carries no body headers");
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap(),
            json!({"prompt": "Hi", "stream": false})
        );
        let frames = Bytes::from_static(
            b"{\"token\":\"Hel\"}\n{\"token\":\"lo\"}\n{\"done\":true,\"count\":2}\n",
        );
        let Converted::Chat(done) = p
            .adapter
            .response(&c, &http::HeaderMap::new(), frames)
            .unwrap()
        else {
            panic!("a chat answer")
        };
        assert_eq!(done.content.as_deref(), Some("Hello"));
        assert_eq!(done.usage, Usage::new(0, 2));
        let f = p
            .adapter
            .response(
                &c,
                &http::HeaderMap::new(),
                Bytes::from_static(b"{\"token\":\"Hel\"}\n"),
            )
            .unwrap_err();
        assert_eq!(f.cause, Cause::Protocol);
    }

    #[test]
    fn config_problems_name_their_place() {
        let p = problems(&NDJSON.replace("      format: ndjson\n", ""));
        assert!(
            p.iter()
                .any(|l| l == "providers.p.stream.format: is required: ndjson, sse or delimited"),
            "{p:?}"
        );
        let p = problems(
            &NDJSON
                .replace("delta: /token/text", "delta: /token/{{x}}")
                .replace("{{prompt}}", "{{promt}}"),
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("providers.p.body.prompt: unknown placeholder `{{promt}}`")),
            "{p:?}"
        );
        let p = problems(&NDJSON.replace("format: ndjson", "format: delimited"));
        assert!(
            p.iter()
                .any(|l| l.starts_with("providers.p.stream.delimiter: ")),
            "{p:?}"
        );
        let ws = NDJSON
            .replace("type: rest", "type: rest\n    transport: websocket")
            .replace("http://api.test/generate", "ws://api.test/socket");
        let p = problems(&ws);
        assert!(
            p.iter()
                .any(|l| l.starts_with("providers.p.response: a WebSocket answer")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("providers.p.stream.format: ")),
            "{p:?}"
        );
        let p = problems(&NDJSON.replace("http://api.test/generate", "ws://api.test/generate"));
        assert!(
            p.iter().any(|l| l.starts_with("providers.p.url: ")),
            "{p:?}"
        );
        assert!(problems(NDJSON).is_empty());
    }
}
