//! The client-facing dialect: endpoints, the zero-copy view of a request
//! body, usage, and the bytes of server-sent events.
//!
//! A request body is never parsed into a closed struct: [`RequestView`] reads
//! only the fields the gateway needs and records where `model` sits, so a
//! passthrough can rewrite it and leave every other byte as the client sent it.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, ErrorObject, Kind};
use crate::json::{is_ws, skip_ws};

/// The public endpoints. The label is the `endpoint` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Models,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
        }
    }

    /// Path below the API root, as OpenAI-compatible servers spell it.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Models => "/models",
        }
    }
}

/// What the gateway reads from a request body, with byte spans into it.
#[derive(Debug, Clone)]
pub struct RequestView {
    /// The model the client asked for.
    pub model: Box<str>,
    /// Where the `model` value (quotes included) sits in the body.
    pub model_span: Range<usize>,
    pub stream: bool,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: bool,
    /// Where the `stream_options` value sits, if present.
    pub stream_options_span: Option<Range<usize>>,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Size of the prompt (`messages`, `prompt` or `input`) in bytes.
    pub prompt_bytes: usize,
    /// Embeddings: `encoding_format` is `base64`.
    pub base64: bool,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    encoding_format: Option<&'a RawValue>,
}

/// The request's fields as text: from the one-pass scan, or from serde.
#[derive(Default)]
struct Fields<'a> {
    model: Option<&'a str>,
    stream: Option<&'a str>,
    stream_options: Option<&'a str>,
    messages: Option<&'a str>,
    prompt: Option<&'a str>,
    input: Option<&'a str>,
    max_tokens: Option<&'a str>,
    max_completion_tokens: Option<&'a str>,
    encoding_format: Option<&'a str>,
    /// How many messages `messages` holds, each an object with a string
    /// `role`, when the scan has counted them.
    message_count: Option<usize>,
}

impl<'a> From<Wire<'a>> for Fields<'a> {
    fn from(w: Wire<'a>) -> Self {
        Fields {
            model: w.model.map(RawValue::get),
            stream: w.stream.map(RawValue::get),
            stream_options: w.stream_options.map(RawValue::get),
            messages: w.messages.map(RawValue::get),
            prompt: w.prompt.map(RawValue::get),
            input: w.input.map(RawValue::get),
            max_tokens: w.max_tokens.map(RawValue::get),
            max_completion_tokens: w.max_completion_tokens.map(RawValue::get),
            encoding_format: w.encoding_format.map(RawValue::get),
            message_count: None,
        }
    }
}

impl<'a> Fields<'a> {
    /// The fields of a body that is one valid JSON object, by one pass of
    /// [`crate::json`]'s check, which also counts the messages. `None` for
    /// whatever it cannot vouch for (invalid JSON, a repeated field, a key
    /// spelled with escapes, messages of another shape): serde decides those.
    fn scan(text: &'a str) -> Option<Fields<'a>> {
        let b = text.as_bytes();
        let mut fields = Fields::default();
        let mut seen = crate::json::Seen::default();
        let start = skip_ws(b, 0);
        let end = crate::json::object_end(b, start, |key, at| {
            let (slot, bit) = match key {
                b"model" => (&mut fields.model, 0),
                b"stream" => (&mut fields.stream, 1),
                b"stream_options" => (&mut fields.stream_options, 2),
                b"messages" => (&mut fields.messages, 3),
                b"prompt" => (&mut fields.prompt, 4),
                b"input" => (&mut fields.input, 5),
                b"max_tokens" => (&mut fields.max_tokens, 6),
                b"max_completion_tokens" => (&mut fields.max_completion_tokens, 7),
                b"encoding_format" => (&mut fields.encoding_format, 8),
                _ if key.contains(&b'\\') => return None,
                _ => return crate::json::value_end(b, at),
            };
            seen.first(bit)?;
            let end = if key == b"messages" && b.get(at) == Some(&b'[') {
                let (end, count) = scan_messages(b, at)?;
                fields.message_count = Some(count);
                end
            } else {
                crate::json::value_end(b, at)?
            };
            // As serde reads an `Option`, `null` is no value.
            let value = &text[at..end];
            *slot = (value != "null").then_some(value);
            Some(end)
        })?;
        (skip_ws(b, end) == b.len()).then_some(fields)
    }
}

/// The end of the array of messages at `text[at]` and how many it holds,
/// each an object with one string `role`; `None` for any other shape.
fn scan_messages(text: &[u8], at: usize) -> Option<(usize, usize)> {
    if text.get(at) != Some(&b'[') {
        return None;
    }
    let mut count = 0;
    let mut i = skip_ws(text, at + 1);
    if text.get(i) == Some(&b']') {
        return Some((i + 1, 0));
    }
    loop {
        let mut role = false;
        let end = crate::json::object_end(text, i, |key, start| {
            if key == b"role" {
                if role || text.get(start) != Some(&b'"') {
                    return None;
                }
                role = true;
            } else if key.contains(&b'\\') {
                return None;
            }
            crate::json::value_end(text, start)
        })?;
        if !role {
            return None;
        }
        count += 1;
        i = skip_ws(text, end);
        match text.get(i) {
            Some(b',') => i = skip_ws(text, i + 1),
            Some(b']') => return Some((i + 1, count)),
            _ => return None,
        }
    }
}

#[derive(Deserialize)]
struct MessagePeek<'a> {
    #[serde(borrow)]
    #[allow(dead_code)]
    role: std::borrow::Cow<'a, str>,
}

/// How many messages an array holds, each checked to be an object with a
/// string `role`, without collecting them.
struct MessageCount(usize);

impl<'de> Deserialize<'de> for MessageCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Counter;
        impl<'de> serde::de::Visitor<'de> for Counter {
            type Value = MessageCount;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of messages")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<MessageCount, A::Error> {
                let mut n = 0;
                while seq.next_element::<MessagePeek<'de>>()?.is_some() {
                    n += 1;
                }
                Ok(MessageCount(n))
            }
        }
        d.deserialize_seq(Counter)
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

impl RequestView {
    /// Reads the view of a body for `endpoint`; every problem is a 400 naming the field.
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<RequestView, Error> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::invalid(
                "the request body is empty; send a JSON object",
            ));
        }
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(Error::invalid("the request body must be a JSON object"));
        }
        // UTF-8 is checked once for the whole body; serde then reads a str
        // and need not check each string and raw value again.
        let text = std::str::from_utf8(body).map_err(|e| {
            Error::invalid(format!(
                "the request body is not valid JSON: invalid UTF-8 at byte {}",
                e.valid_up_to()
            ))
        })?;
        let wire =
            match Fields::scan(text) {
                Some(fields) => fields,
                None => Fields::from(serde_json::from_str::<Wire<'_>>(text).map_err(|e| {
                    match e.classify() {
                        serde_json::error::Category::Data => {
                            Error::invalid(format!("invalid request body: {e}"))
                        }
                        _ => Error::invalid(format!("the request body is not valid JSON: {e}")),
                    }
                })?),
            };

        let raw_model = wire
            .model
            .ok_or_else(|| Error::invalid_param("model", "you must provide a model parameter"))?;
        let model: Box<str> = match raw_model.as_bytes() {
            // The value has been checked: a string without escapes is its text.
            [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => {
                raw_model[1..=inner.len()].into()
            }
            _ => serde_json::from_str::<String>(raw_model)
                .map_err(|_| Error::invalid_param("model", "`model` must be a string"))?
                .into(),
        };
        if model.is_empty() {
            return Err(Error::invalid_param("model", "`model` must not be empty"));
        }

        let stream = match wire.stream {
            None => false,
            Some(raw) => match raw {
                "true" => true,
                "false" | "null" => false,
                _ => return Err(Error::invalid_param("stream", "`stream` must be a boolean")),
            },
        };
        let include_usage = match wire.stream_options {
            None => false,
            Some(raw) => serde_json::from_str::<StreamOptions>(raw)
                .map_err(|_| {
                    Error::invalid_param(
                        "stream_options",
                        "`stream_options` must be an object with a boolean `include_usage`",
                    )
                })?
                .include_usage
                .unwrap_or(false),
        };
        let max_tokens = match wire.max_completion_tokens.or(wire.max_tokens) {
            None => None,
            Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
                let name = if wire.max_completion_tokens.is_some() {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                Error::invalid_param(name, format!("`{name}` must be a non-negative integer"))
            })?),
        };

        let prompt = match endpoint {
            Endpoint::Chat => {
                let raw = wire.messages.ok_or_else(|| {
                    Error::invalid_param("messages", "you must provide a `messages` array")
                })?;
                let count = match wire.message_count.or_else(|| count_messages(raw.as_bytes())) {
                    Some(n) => n,
                    None => serde_json::from_str::<MessageCount>(raw)
                        .map_err(|_| {
                            Error::invalid_param(
                                "messages",
                                "`messages` must be an array of message objects, each with a string `role`",
                            )
                        })?
                        .0,
                };
                if count == 0 {
                    return Err(Error::invalid_param(
                        "messages",
                        "`messages` must contain at least one message",
                    ));
                }
                raw
            }
            Endpoint::Completions => {
                let raw = wire
                    .prompt
                    .ok_or_else(|| Error::invalid_param("prompt", "you must provide a `prompt`"))?;
                if !matches!(raw.as_bytes()[0], b'"' | b'[') {
                    return Err(Error::invalid_param(
                        "prompt",
                        "`prompt` must be a string or an array",
                    ));
                }
                raw
            }
            Endpoint::Embeddings => {
                let raw = wire
                    .input
                    .ok_or_else(|| Error::invalid_param("input", "you must provide an `input`"))?;
                if !matches!(raw.as_bytes()[0], b'"' | b'[') || matches!(raw, "\"\"" | "[]") {
                    return Err(Error::invalid_param(
                        "input",
                        "`input` must be a non-empty string or array",
                    ));
                }
                raw
            }
            Endpoint::Models => return Err(Error::internal("models has no request body")),
        };

        Ok(RequestView {
            model,
            model_span: span_in(body, raw_model),
            stream,
            include_usage,
            stream_options_span: wire.stream_options.map(|raw| span_in(body, raw)),
            max_tokens,
            prompt_bytes: prompt.len(),
            base64: wire.encoding_format.is_some_and(|raw| raw == "\"base64\""),
        })
    }
}

/// Where a borrowed raw value sits inside the buffer it was parsed from.
pub fn span_of(buffer: &[u8], raw: &RawValue) -> Range<usize> {
    span_in(buffer, raw.get())
}

/// Where `part`, a slice of `buffer`, sits in it.
fn span_in(buffer: &[u8], part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - buffer.as_ptr() as usize;
    start..start + part.len()
}

/// Where the values of `names` sit among the top-level keys of a JSON object,
/// found by a structural scan that neither builds nor validates values: the
/// fast way through a backend's answers, which are relayed, not checked.
/// `None` when the text is not shaped like one JSON object, repeats a key or
/// spells a key with escapes: the caller then falls back to a real parse.
pub fn top_level_spans<const N: usize>(
    text: &[u8],
    names: [&[u8]; N],
) -> Option<[Option<Range<usize>>; N]> {
    let (found, end) = object_spans(text, skip_ws(text, 0), names, false)?;
    (skip_ws(text, end) == text.len()).then_some(found)
}

/// The span of the first top-level `name` in the JSON object `text`, by the
/// same scan as [`top_level_spans`], which here stops at that value: what
/// follows it is not looked at (a caller that must know `name` is not
/// repeated searches the rest for it). `None` when `name` is not there or
/// the scan cannot vouch for what it read.
pub fn first_top_level(text: &[u8], name: &[u8]) -> Option<Range<usize>> {
    let ([found], _) = object_spans(text, skip_ws(text, 0), [name], true)?;
    found
}

/// The value of the key that starts at `text[at]` (where a substring search
/// found `"name"`, `key_len` bytes, its first hit in `text`) when that key
/// is a member of the JSON object `text` with only plain members before it:
/// no brace, bracket or backslash between the object's brace and the key,
/// so it is at the top level and its quote opens a string, and a colon
/// after it, so that string is a key (a closing quote is never followed by
/// a letter). The usual place of `model` in an answer, found without
/// walking the members before it. `None` otherwise; the caller walks them.
pub fn leading_member(text: &[u8], at: usize, key_len: usize) -> Option<Range<usize>> {
    let open = skip_ws(text, 0);
    if text.get(open) != Some(&b'{')
        || at <= open
        || memchr::memchr3(b'{', b'[', b'\\', &text[open + 1..at]).is_some()
    {
        return None;
    }
    let colon = skip_ws(text, at + key_len);
    if text.get(colon) != Some(&b':') {
        return None;
    }
    let start = skip_ws(text, colon + 1);
    let end = skip_value(text, start)?;
    matches!(text.get(skip_ws(text, end)), Some(b',' | b'}')).then_some(start..end)
}

/// The index of the closing brace that ends `text`, when only JSON
/// whitespace follows it.
pub fn final_brace(text: &[u8]) -> Option<usize> {
    let text = trim_ws_end(text);
    (text.last() == Some(&b'}')).then(|| text.len() - 1)
}

/// Where the value of the key that starts at `text[at]` (where a substring
/// search found `"name"`, `key_len` bytes) must lie if that member closes
/// the JSON object `text`: a key after `{` or `,`, then `:`, and the value
/// from there to the outermost closing brace. It is that member exactly
/// when the span holds one JSON value (a member nested deeper leaves
/// closing brackets in it), which the caller checks as it reads the value.
pub fn closing_member(text: &[u8], at: usize, key_len: usize) -> Option<Range<usize>> {
    if !matches!(trim_ws_end(&text[..at]).last(), Some(b'{' | b',')) {
        return None;
    }
    let colon = skip_ws(text, at + key_len);
    if text.get(colon) != Some(&b':') {
        return None;
    }
    let start = skip_ws(text, colon + 1);
    let end = start + trim_ws_end(text.get(start..final_brace(text)?)?).len();
    (end > start).then_some(start..end)
}

/// The spans of `names` in the object that starts at `text[at]`, and the
/// index just past its closing brace; with `stop_when_found`, the index just
/// past the value that completed `names` instead, once all are found.
fn object_spans<const N: usize>(
    text: &[u8],
    at: usize,
    names: [&[u8]; N],
    stop_when_found: bool,
) -> Option<([Option<Range<usize>>; N], usize)> {
    let mut found: [Option<Range<usize>>; N] = std::array::from_fn(|_| None);
    if text.get(at) != Some(&b'{') {
        return None;
    }
    let mut i = skip_ws(text, at + 1);
    if text.get(i) == Some(&b'}') {
        return Some((found, i + 1));
    }
    loop {
        if text.get(i) != Some(&b'"') {
            return None;
        }
        // A key with an escape could spell one of `names`: not vouched for.
        let key_end = i + 1 + quote_or_backslash(text.get(i + 1..)?)?;
        if text[key_end] != b'"' {
            return None;
        }
        let key = &text[i + 1..key_end];
        let key_end = key_end + 1;
        i = skip_ws(text, key_end);
        if text.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(text, i + 1);
        let end = skip_value(text, start)?;
        if let Some(slot) = names.iter().position(|n| *n == key) {
            if found[slot].is_some() {
                return None;
            }
            found[slot] = Some(start..end);
            if stop_when_found && found.iter().all(Option::is_some) {
                return Some((found, end));
            }
        }
        i = skip_ws(text, end);
        match text.get(i) {
            Some(b',') => i = skip_ws(text, i + 1),
            Some(b'}') => return Some((found, i + 1)),
            _ => return None,
        }
    }
}

/// How many messages the JSON array `text` (all of it) holds, each an
/// object with one string `role`: for a body serde has read, whose fields
/// the one-pass scan declined. `None` for any other shape; serde decides.
fn count_messages(text: &[u8]) -> Option<usize> {
    let (end, count) = scan_messages(text, 0)?;
    (end == text.len()).then_some(count)
}

/// `text` without the JSON whitespace it starts with.
pub fn trim_ws_start(text: &[u8]) -> &[u8] {
    &text[skip_ws(text, 0)..]
}

/// `text` without the JSON whitespace it ends with.
pub fn trim_ws_end(text: &[u8]) -> &[u8] {
    let end = text.iter().rposition(|b| !is_ws(b)).map_or(0, |i| i + 1);
    &text[..end]
}

/// The first `"` or `\` in `text`. JSON keys and most values are short:
/// eight bytes at a time with word arithmetic first, the SIMD search
/// (whose set-up costs more than a short string) only past 32 bytes.
#[inline]
fn quote_or_backslash(text: &[u8]) -> Option<usize> {
    use crate::json::{ONES, scan_words, zero_bytes};
    let found = scan_words(text, 32, |w| {
        zero_bytes(w ^ (ONES * u64::from(b'"'))) | zero_bytes(w ^ (ONES * u64::from(b'\\')))
    });
    match found {
        Ok(at) => Some(at),
        Err(32) => memchr::memchr2(b'"', b'\\', &text[32..]).map(|n| 32 + n),
        Err(i) => text[i..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\')
            .map(|n| i + n),
    }
}

/// `text[at]` is `"`: the index just past the closing quote.
fn skip_string(text: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        i += quote_or_backslash(text.get(i..)?)?;
        if text[i] == b'\\' {
            i += 2;
        } else {
            return Some(i + 1);
        }
    }
}

/// The index just past the value that starts at `at`. Small enough to
/// inline: most values are strings and numbers, and the walk through a
/// nested object or array keeps its registers to itself.
#[inline]
fn skip_value(text: &[u8], at: usize) -> Option<usize> {
    match *text.get(at)? {
        b'"' => skip_string(text, at),
        b'{' | b'[' => skip_nested(text, at),
        _ => {
            // A number, `true`, `false` or `null`: up to what may follow it.
            let mut end = at;
            while let Some(&b) = text.get(end)
                && !matches!(b, b',' | b'}' | b']')
                && !is_ws(&b)
            {
                end += 1;
            }
            (end > at).then_some(end)
        }
    }
}

/// The index just past the object or array that starts at `at`.
#[inline(never)]
fn skip_nested(text: &[u8], at: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = at;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i = skip_string(text, i)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// `body` with `span` replaced by `replacement`, in one allocation.
pub fn splice(body: &[u8], span: Range<usize>, replacement: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() - span.len() + replacement.len());
    out.put_slice(&body[..span.start]);
    out.put_slice(replacement);
    out.put_slice(&body[span.end..]);
    out.freeze()
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> Bytes {
    // Model names seldom need an escape: then one allocation of the exact
    // size, which `Bytes` takes over without a second one.
    let mut out = Vec::with_capacity(s.len() + 2);
    crate::json::write_str(&mut out, s);
    Bytes::from(out)
}

/// Token counts in OpenAI's shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

// === server-sent events ===

pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// Appends `data: <json>\n\n`.
pub fn write_event(out: &mut BytesMut, json: &[u8]) {
    out.reserve(json.len() + 8);
    out.put_slice(b"data: ");
    out.put_slice(json);
    out.put_slice(b"\n\n");
}

/// Appends the in-band error event and `[DONE]` that end a failed stream.
pub fn write_error_event(out: &mut BytesMut, kind: Kind, message: &str) {
    #[derive(Serialize)]
    struct Event<'a> {
        error: ErrorObject<'a>,
    }
    let event = Event {
        error: ErrorObject {
            message,
            r#type: kind.error_type(),
            param: None,
            code: kind.default_code(),
        },
    };
    let json = serde_json::to_vec(&event).unwrap_or_default();
    write_event(out, &json);
    out.put_slice(SSE_DONE);
}

// === /v1/models ===

#[derive(Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelObject<'a>>,
}

#[derive(Serialize)]
pub struct ModelObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(endpoint: Endpoint, body: &str) -> Result<RequestView, Error> {
        RequestView::parse(endpoint, body.as_bytes())
    }

    #[test]
    fn a_total_beyond_what_a_count_holds_stays_at_the_most() {
        // A backend's counts are not trusted to add up without overflow.
        assert_eq!(Usage::new(u64::MAX, 7).total_tokens, u64::MAX);
        assert_eq!(Usage::new(3, 4).total_tokens, 7);
    }

    #[test]
    fn reads_the_fields_and_the_model_span() {
        let body = r#"{"messages":[{"role":"user","content":"hi"}],"model": "chat-default","stream":true,"guided_json":{"a":1}}"#;
        let v = parse(Endpoint::Chat, body).unwrap();
        assert_eq!(&*v.model, "chat-default");
        assert_eq!(&body[v.model_span.clone()], "\"chat-default\"");
        assert!(v.stream);
        let rewritten = splice(body.as_bytes(), v.model_span, &json_string("llama-3"));
        let value: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(value["model"], "llama-3");
        assert_eq!(value["guided_json"]["a"], 1);
    }

    #[test]
    fn escaped_model_names_decode() {
        let v = parse(
            Endpoint::Chat,
            r#"{"model":"a\/b\u0041","messages":[{"role":"user"}]}"#,
        )
        .unwrap();
        assert_eq!(&*v.model, "a/bA");
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let cases: &[(&str, Option<&str>)] = &[
            ("", None),
            ("{", None),
            ("[1]", None),
            (r#"{"messages":[{"role":"user"}]}"#, Some("model")),
            (r#"{"model":5,"messages":[{"role":"user"}]}"#, Some("model")),
            (r#"{"model":"m"}"#, Some("messages")),
            (r#"{"model":"m","messages":[]}"#, Some("messages")),
            (r#"{"model":"m","messages":"hi"}"#, Some("messages")),
            (
                r#"{"model":"m","messages":[{"content":"x"}]}"#,
                Some("messages"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#,
                Some("stream"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-1}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}]} trailing"#,
                None,
            ),
            (
                r#"{"model":"m","model":"n","messages":[{"role":"user"}]}"#,
                None,
            ),
        ];
        for (body, param) in cases {
            let e = parse(Endpoint::Chat, body).unwrap_err();
            assert_eq!(e.kind, Kind::InvalidRequest, "{body}");
            assert_eq!(e.param, *param, "{body}: {}", e.message);
        }
        assert!(parse(Endpoint::Embeddings, r#"{"model":"m","input":""}"#).is_err());
        assert!(parse(Endpoint::Completions, r#"{"model":"m","prompt":5}"#).is_err());
        assert!(RequestView::parse(Endpoint::Chat, b"{\"model\":\"\xff\"}").is_err());
        let e = RequestView::parse(
            Endpoint::Chat,
            b"{\"model\":\"m\",\"messages\":[{\"role\":\"\xc3\"}]}",
        )
        .unwrap_err();
        assert!(
            e.message.contains("invalid UTF-8 at byte 34"),
            "{}",
            e.message
        );
    }

    #[test]
    fn quotes_and_backslashes_are_found_at_every_offset() {
        for len in 0..80 {
            for at in 0..=len {
                for mark in [b'"', b'\\'] {
                    // Bytes next to the marks in value (0x21, 0x5b, 0x5d) and
                    // high bytes, which the word arithmetic must not confuse.
                    let mut text: Vec<u8> = (0..len)
                        .map(|n| [b'a', 0x21, 0x5b, 0x5d, 0xa2, 0xdc, 0x00][n % 7])
                        .collect();
                    if at < len {
                        text[at] = mark;
                        // A second mark later must not hide the first.
                        if at + 3 < len {
                            text[at + 3] = b'"';
                        }
                    }
                    let want = text.iter().position(|&b| b == b'"' || b == b'\\');
                    assert_eq!(quote_or_backslash(&text), want, "len {len} at {at}");
                }
            }
        }
    }

    #[test]
    fn messages_are_counted_as_serde_counts_them() {
        let cases = [
            r#"[]"#,
            r#"[{"role":"user","content":"a\nb \"role\": 5"}]"#,
            r#"[ {"role" : "system"} , {"content":[{"type":"text"}],"role":"user"} ]"#,
            r#"[{"content":"x"}]"#,
            r#"[{"role":5}]"#,
            r#"[{"role":null}]"#,
            r#"[{"role":"a","role":"b"}]"#,
            r#"[{"r\u006fle":"user"}]"#,
            r#"[["user"]]"#,
            r#"["user"]"#,
            r#"[{"role":"user"},5]"#,
        ];
        for case in cases {
            let serde = serde_json::from_str::<MessageCount>(case).ok().map(|c| c.0);
            // The scan may decline (serde then decides); when it answers, it agrees.
            if let Some(n) = count_messages(case.as_bytes()) {
                assert_eq!(Some(n), serde, "{case}");
            }
            let body = format!(r#"{{"model":"m","messages":{case}}}"#);
            let parsed = parse(Endpoint::Chat, &body);
            assert_eq!(
                parsed.is_ok(),
                serde.is_some_and(|n| n > 0),
                "{case}: {parsed:?}"
            );
        }
        assert_eq!(
            count_messages(br#"[{"role":"user","content":"a\nb"}]"#),
            Some(1)
        );
        assert_eq!(
            count_messages(br#"[{"role":"system"},{"role":"user","content":"x"}]"#),
            Some(2)
        );
    }

    #[test]
    fn the_messages_scan_agrees_with_serde_on_generated_arrays() {
        // Message arrays built from awkward pieces (escaped keys and values,
        // repeated or missing roles, nested values, odd whitespace), kept
        // when they are valid JSON, which is all the scan is ever given.
        const KEYS: &[&str] = &[
            r#""role""#,
            r#""role""#,
            r#""content""#,
            r#""r\u006fle""#,
            r#""name""#,
            r#""rol""#,
            r#""role ""#,
        ];
        const VALUES: &[&str] = &[
            r#""user""#,
            r#""a \"role\": \"x\" \\""#,
            r#""\u00e9\n""#,
            "5",
            "null",
            "true",
            r#"{"role":"inner"}"#,
            r#"[{"role":"x"},"]"]"#,
            r#""""#,
        ];
        const GAPS: &[&str] = &["", " ", "\n\t", "\r\n  "];
        let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d);
        let mut next = |n: usize| rng.usize(..n);
        let mut answered = 0;
        for _ in 0..20_000 {
            let mut text = String::from("[");
            let elements = next(4);
            for e in 0..elements {
                if e > 0 {
                    text.push(',');
                }
                text.push_str(GAPS[next(GAPS.len())]);
                match next(10) {
                    0 => text.push_str(VALUES[next(VALUES.len())]),
                    _ => {
                        text.push('{');
                        for f in 0..next(4) {
                            if f > 0 {
                                text.push(',');
                            }
                            text.push_str(GAPS[next(GAPS.len())]);
                            text.push_str(KEYS[next(KEYS.len())]);
                            text.push_str(GAPS[next(GAPS.len())]);
                            text.push(':');
                            text.push_str(GAPS[next(GAPS.len())]);
                            text.push_str(VALUES[next(VALUES.len())]);
                        }
                        text.push('}');
                    }
                }
                text.push_str(GAPS[next(GAPS.len())]);
            }
            text.push(']');
            if serde_json::from_str::<&RawValue>(&text).is_err() {
                continue;
            }
            let serde = serde_json::from_str::<MessageCount>(&text)
                .ok()
                .map(|c| c.0);
            if let Some(n) = count_messages(text.as_bytes()) {
                assert_eq!(Some(n), serde, "{text}");
                answered += 1;
            }
        }
        // The fast path must answer for the ordinary shapes, not only decline.
        assert!(answered > 1_000, "the scan answered {answered} times");
    }

    #[test]
    fn the_scan_reads_what_serde_reads() {
        // Bodies built from awkward pieces: repeated and escaped keys,
        // messages of every shape, odd whitespace, invalid values. Where the
        // scan answers, serde must read the same fields; where serde refuses
        // the body, the scan must refuse it too.
        const KEYS: &[&str] = &[
            r#""model""#,
            r#""messages""#,
            r#""stream""#,
            r#""max_tokens""#,
            r#""m\u006fdel""#,
            r#""temperature""#,
            r#""input""#,
        ];
        const VALUES: &[&str] = &[
            r#""m""#,
            r#""a \"b\" \\""#,
            r#"[{"role":"user","content":"x"}]"#,
            r#"[{"content":"x","role":"system"},{"role":"user"}]"#,
            r#"[{"role":5}]"#,
            r#"[{"role":"a","role":"b"}]"#,
            r#"[{"r\u006fle":"user"}]"#,
            r#"[["user"]]"#,
            "[]",
            "true",
            "null",
            "64",
            "0.7",
            "-1",
            "01",
            r#"{"a":[1,{"b":null}]}"#,
            "\"tab\there\"",
            r#""\x""#,
        ];
        const GAPS: &[&str] = &["", " ", "\n\t"];
        let mut rng = fastrand::Rng::with_seed(0x5851_f42d_4c95_7f2d);
        let mut answered = 0;
        for _ in 0..20_000 {
            let mut text = String::from("{");
            for m in 0..rng.usize(..5) {
                if m > 0 {
                    text.push(',');
                }
                text.push_str(GAPS[rng.usize(..GAPS.len())]);
                text.push_str(KEYS[rng.usize(..KEYS.len())]);
                text.push(':');
                text.push_str(GAPS[rng.usize(..GAPS.len())]);
                text.push_str(VALUES[rng.usize(..VALUES.len())]);
            }
            text.push('}');
            let serde = serde_json::from_str::<Wire<'_>>(&text).map(Fields::from);
            let Some(scan) = Fields::scan(&text) else {
                continue;
            };
            answered += 1;
            let serde =
                serde.unwrap_or_else(|e| panic!("scan took what serde refuses ({e}): {text}"));
            fn fields<'a>(f: &Fields<'a>) -> [Option<&'a str>; 9] {
                [
                    f.model,
                    f.stream,
                    f.stream_options,
                    f.messages,
                    f.prompt,
                    f.input,
                    f.max_tokens,
                    f.max_completion_tokens,
                    f.encoding_format,
                ]
            }
            assert_eq!(fields(&scan), fields(&serde), "{text}");
            if let Some(n) = scan.message_count {
                let count = serde_json::from_str::<MessageCount>(serde.messages.unwrap());
                assert_eq!(count.ok().map(|c| c.0), Some(n), "{text}");
            }
        }
        assert!(answered > 2_000, "the scan answered {answered} times");
        let body = r#" {"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false} "#;
        let scan = Fields::scan(body).unwrap();
        assert_eq!(scan.model, Some("\"m\""));
        assert_eq!(scan.message_count, Some(1));
    }

    #[test]
    fn top_level_values_are_found_without_a_parse() {
        let text = br#" {"id":"x","choices":[{"delta":{"content":"a \"model\": }"}}],"model" : "m\"1","usage":null} "#;
        let [model, usage, missing] =
            top_level_spans(text, [b"model", b"usage", b"error"]).unwrap();
        assert_eq!(&text[model.unwrap()], br#""m\"1""#);
        assert_eq!(&text[usage.unwrap()], b"null");
        assert!(missing.is_none());
        assert_eq!(top_level_spans(b"{}", [b"model"]), Some([None]));
        let bad: [&[u8]; 7] = [
            b"[1]",
            b"{\"a\":1",
            b"{\"a\" 1}",
            b"<html>",
            b"{\"a\":{}",
            b"{\"model\":1,\"model\":2}",
            b"{\"a\":\"x",
        ];
        for text in bad {
            assert!(
                top_level_spans(text, [b"model"]).is_none(),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn a_leading_member_is_where_the_walk_finds_it() {
        fn find(text: &str) -> Option<&str> {
            let at = text.find(r#""model""#)?;
            leading_member(text.as_bytes(), at, 7).map(|span| &text[span])
        }
        assert_eq!(
            find(r#"{"id":"x","model":"m","choices":[]}"#),
            Some(r#""m""#)
        );
        assert_eq!(find(" { \"model\" :\t\"m\" } "), Some(r#""m""#));
        assert_eq!(find(r#"{"created":1,"model":null}"#), Some("null"));
        for declined in [
            // Something opens before it: the walk decides.
            r#"{"choices":[],"model":"m"}"#,
            r#"{"x":{"model":"inner"},"model":"m"}"#,
            // An escape before it could hide a quote.
            r#"{"a":"say \"hi\"","model":"m"}"#,
            // A value, not a key.
            r#"{"object":"model","model":"m"}"#,
            r#"{"model":"m"x}"#,
            r#"{"model":"#,
            r#"["model"]"#,
        ] {
            assert_eq!(find(declined), None, "{declined}");
        }
        // Wherever it answers, the walk finds the same value.
        let mut rng = fastrand::Rng::with_seed(0x1405_7b7e_f767_814f);
        let members = [
            r#""id":"chatcmpl-1""#,
            r#""object":"model""#,
            r#""created":1760000000"#,
            r#""a\\":"\"model\": 1""#,
            r#""x":{"model":"inner"}"#,
            r#""choices":[{"delta":{"content":"\"model\""}}]"#,
            r#""model":"m""#,
            r#""model" : "n""#,
        ];
        let mut answered = 0;
        for _ in 0..20_000 {
            let count = rng.usize(1..6);
            let picked: Vec<&str> = (0..count)
                .map(|_| members[rng.usize(..members.len())])
                .collect();
            let text = format!("{{{}}}", picked.join(","));
            if let Some(value) = find(&text) {
                answered += 1;
                let walked = first_top_level(text.as_bytes(), b"model").map(|span| &text[span]);
                assert_eq!(Some(value), walked, "{text}");
            }
        }
        assert!(answered > 2_000, "{answered} answered");
    }

    #[test]
    fn the_first_top_level_value_is_found_without_reading_on() {
        let text = br#"{"id":"x","choices":[{"model":"inner"}],"model":"m","usage":{"#;
        let span = first_top_level(text, b"model").unwrap();
        assert_eq!(&text[span], b"\"m\"");
        // What follows the value is not read: a broken tail does not matter
        // here (top_level_spans, which reads it all, refuses it).
        assert!(top_level_spans(text, [b"model"]).is_none());
        assert_eq!(first_top_level(br#"{"a":1}"#, b"model"), None);
        // An escaped key before it could spell anything: not vouched for.
        assert_eq!(
            first_top_level(br#"{"\u0061":1,"model":2}"#, b"model"),
            None
        );
        assert_eq!(first_top_level(b"[1]", b"model"), None);
    }

    #[test]
    fn the_closing_member_is_found_from_its_key() {
        fn find(text: &str) -> Option<&str> {
            let at = text.find("\"usage\"").unwrap();
            closing_member(text.as_bytes(), at, 7).map(|span| &text[span])
        }
        assert_eq!(find(r#"{"a":[1],"usage":{"n":1}}"#), Some(r#"{"n":1}"#));
        assert_eq!(find("{ \"usage\" : 5 }\n"), Some("5"));
        // Nested, or the object unclosed: the span is not one value, which
        // the caller's reading of it sees.
        for (text, span) in [
            (r#"{"a":{"usage":{"n":1}}}"#, r#"{"n":1}}"#),
            (r#"{"usage":{"n":1}"#, r#"{"n":1"#),
        ] {
            assert_eq!(find(text), Some(span));
            assert_eq!(top_level_spans(span.as_bytes(), [b"n"]), None);
        }
        // A string value, not a key.
        assert_eq!(find(r#"{"a":"usage"}"#), None);
        assert_eq!(find(r#"{"a":["usage":1]}"#), None);
        // Not closed by a brace.
        assert_eq!(find("{\"usage\":1}\u{c}"), None);
        assert_eq!(find(r#"{"usage":}"#), None);
        assert_eq!(final_brace(b"{} \r\n\t"), Some(1));
        assert_eq!(final_brace(b"{}x"), None);
    }

    #[test]
    fn json_strings_match_serde() {
        for s in [
            "llama-3.1:8b",
            "",
            "a/b é 日本",
            "q\"uote",
            "back\\slash",
            "tab\tnl\n\u{1}",
        ] {
            assert_eq!(json_string(s), serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn usage_flags() {
        let v = parse(
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user"}],"stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":7,"max_tokens":3}"#,
        )
        .unwrap();
        assert!(v.include_usage);
        assert_eq!(v.max_tokens, Some(7));
    }

    #[test]
    fn error_events_end_with_done() {
        let mut out = BytesMut::new();
        write_error_event(&mut out, Kind::Upstream, "backend went away");
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("data: {\"error\":{\"message\":\"backend went away\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}
