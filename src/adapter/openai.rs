//! `type: openai`: vLLM, LM Studio, llama.cpp, Ollama's `/v1`, TGI's
//! Messages API, OpenAI itself. The request passes through with only `model`
//! rewritten; responses and stream chunks pass through with only `model`
//! rewritten to the name the client sent.

use std::ops::Range;
use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use memchr::memmem;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Adapter, AuthStyle, Built, Converted, UpstreamRequest};
use crate::call::Call;
use crate::config::{Path, Problem, raw};
use crate::error::Error;

use crate::openai::{
    Endpoint, SSE_DONE, Usage, closing_member, final_brace, first_top_level, leading_member,
    span_of, splice, top_level_spans, trim_ws_start,
};
use crate::route::ModelName;
use crate::stream::sse::Event;
use crate::stream::{Decoder, Framed, Handler};
use crate::upstream::Failure;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Ask for `stream_options.include_usage` when the client did not.
    #[serde(default = "yes")]
    stream_usage: bool,
}

fn yes() -> bool {
    true
}

pub fn build(
    _id: &str,
    raw: &raw::Provider,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Built> {
    let options: Options = super::options(raw, path, problems)?;
    let base = super::base_url(raw, None, path, problems)?;
    let mut adapter = OpenAi::new(&base);
    adapter.stream_usage = options.stream_usage;
    Some(Built {
        adapter: Box::new(adapter),
        transport: None,
        default_auth: AuthStyle::Bearer,
    })
}

#[derive(Debug)]
pub struct OpenAi {
    chat: Uri,
    completions: Uri,
    embeddings: Uri,
    models: Uri,
    /// On streams, ask the backend for usage when the client did not (the
    /// extra chunk is removed before the client sees it).
    stream_usage: bool,
}

impl OpenAi {
    pub fn new(base: &str) -> Self {
        OpenAi {
            chat: super::join(base, Endpoint::Chat.path()),
            completions: super::join(base, Endpoint::Completions.path()),
            embeddings: super::join(base, Endpoint::Embeddings.path()),
            models: super::join(base, Endpoint::Models.path()),
            stream_usage: true,
        }
    }
}

impl Adapter for OpenAi {
    fn supports(&self, endpoint: Endpoint) -> bool {
        matches!(
            endpoint,
            Endpoint::Chat | Endpoint::Completions | Endpoint::Embeddings
        )
    }

    fn request(&self, call: &Call, model: &ModelName) -> Result<UpstreamRequest, Error> {
        let uri = match call.endpoint {
            Endpoint::Chat => &self.chat,
            Endpoint::Completions => &self.completions,
            Endpoint::Embeddings => &self.embeddings,
            Endpoint::Models => return Err(Error::internal("models is not proxied")),
        };
        // At most two edits: no list to allocate for them.
        let mut edits: [(Range<usize>, Bytes); 2] = Default::default();
        let mut n = 0;
        if *call.view.model != *model.name {
            edits[n] = (call.view.model_span.clone(), model.json.clone());
            n += 1;
        }
        if self.asks_usage(call) {
            edits[n] = usage_edit(&call.body, call.view.stream_options_span.clone());
            n += 1;
        }
        let body = splice_all(&call.body, &mut edits[..n]);
        Ok(UpstreamRequest {
            uri: uri.clone(),
            fixed: json_headers(call.view.stream),
            headers: HeaderMap::new(),
            body,
            stream: call.view.stream,
        })
    }

    fn response(
        &self,
        call: &Call,
        _headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<Converted, Failure> {
        rewrite_response(body, &call.model_json)
    }

    fn decoder(&self, call: &Call) -> Box<dyn Decoder> {
        let mut decoder = PassthroughStream::new(call.model_json.clone());
        decoder.state.strip_usage = self.asks_usage(call);
        Box::new(decoder)
    }

    fn models_uri(&self) -> Option<Uri> {
        Some(self.models.clone())
    }

    fn parse_models(&self, body: &[u8]) -> Result<Vec<String>, Failure> {
        #[derive(Deserialize)]
        struct List {
            data: Vec<Item>,
        }
        #[derive(Deserialize)]
        struct Item {
            id: String,
        }
        let list: List = crate::json::from_slice(body)
            .map_err(|e| Failure::protocol(format!("the model list is not OpenAI's shape: {e}")))?;
        Ok(list.data.into_iter().map(|m| m.id).collect())
    }
}

impl OpenAi {
    /// Whether this request's stream asks for usage the client did not ask for.
    fn asks_usage(&self, call: &Call) -> bool {
        self.stream_usage
            && call.view.stream
            && !call.view.include_usage
            && call.endpoint != Endpoint::Embeddings
    }
}

/// The edit that turns on `stream_options.include_usage`: a new field after
/// the opening brace, or the client's `stream_options` with it set.
pub(super) fn usage_edit(
    body: &[u8],
    stream_options: Option<Range<usize>>,
) -> (Range<usize>, Bytes) {
    match stream_options {
        Some(span) => {
            let mut options: serde_json::Map<String, serde_json::Value> =
                crate::json::from_slice(&body[span.clone()]).unwrap_or_default();
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            let json = serde_json::to_vec(&options).unwrap_or_default();
            (span, Bytes::from(json))
        }
        None => {
            let at = body.iter().position(|&b| b == b'{').map_or(0, |i| i + 1);
            (
                at..at,
                Bytes::from_static(b"\"stream_options\":{\"include_usage\":true},"),
            )
        }
    }
}

/// `body` with every span replaced; no edit, no copy.
fn splice_all(body: &Bytes, edits: &mut [(Range<usize>, Bytes)]) -> Bytes {
    if edits.is_empty() {
        body.clone()
    } else {
        splice_many(body, edits)
    }
}

/// `body` with every span replaced, in one allocation; spans in any order,
/// not overlapping.
pub(super) fn splice_many<T: AsRef<[u8]>>(body: &[u8], edits: &mut [(Range<usize>, T)]) -> Bytes {
    edits.sort_by_key(|(span, _)| span.start);
    let extra: usize = edits.iter().map(|(_, w)| w.as_ref().len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + extra);
    let mut at = 0;
    for (span, with) in edits.iter() {
        out.put_slice(&body[at..span.start]);
        out.put_slice(with.as_ref());
        at = span.end;
    }
    out.put_slice(&body[at..]);
    out.freeze()
}

/// `content-type: application/json` and the matching `accept`.
pub fn json_headers(stream: bool) -> &'static [(HeaderName, HeaderValue)] {
    const CONTENT_TYPE: (HeaderName, HeaderValue) = (
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    static WHOLE: [(HeaderName, HeaderValue); 2] = [
        CONTENT_TYPE,
        (header::ACCEPT, HeaderValue::from_static("application/json")),
    ];
    static STREAM: [(HeaderName, HeaderValue); 2] = [
        CONTENT_TYPE,
        (
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        ),
    ];
    if stream { &STREAM } else { &WHOLE }
}

/// The fields of a response or chunk the gateway looks at; everything else is
/// skipped without being built.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    choices: Option<&'a RawValue>,
}

fn parse_usage(json: &[u8]) -> Option<Usage> {
    plain_usage(json).or_else(|| {
        crate::json::from_slice::<Option<Usage>>(json)
            .ok()
            .flatten()
    })
}

/// The usual shape of usage, one object of plain counts beside nested
/// details, read from the spans of the three counts. `None` for anything
/// else, including text that is not exactly one object.
fn plain_usage(json: &[u8]) -> Option<Usage> {
    let [prompt, completion, total] = top_level_spans(
        json,
        [b"prompt_tokens", b"completion_tokens", b"total_tokens"],
    )?;
    let count = |span: Option<Range<usize>>| match span {
        None => Some(0),
        Some(span) => crate::json::count(&json[span]),
    };
    Some(Usage {
        prompt_tokens: count(prompt)?,
        completion_tokens: count(completion)?,
        total_tokens: count(total)?,
    })
}

/// Substring searches for the keys the shortcuts below look for. In a JSON
/// string these quotes would be escaped: a hit is a key, or a string value
/// that happens to spell one (the full scan then decides).
struct Keys {
    model: memmem::Finder<'static>,
    usage: memmem::Finder<'static>,
    error: memmem::Finder<'static>,
}

/// Built once: a searcher's set-up costs more than searching a response.
static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    model: memmem::Finder::new(b"\"model\""),
    usage: memmem::Finder::new(b"\"usage\""),
    error: memmem::Finder::new(b"\"error\""),
});

/// The value of the first top-level `model` in an answer: where the first
/// substring hit says it is when only plain members come before it (the
/// usual order), else by walking the members up to it.
fn early_model(json: &[u8]) -> Option<Range<usize>> {
    let at = KEYS.model.find(json)?;
    leading_member(json, at, KEYS.model.needle().len()).or_else(|| first_top_level(json, b"model"))
}

/// Where `model` is in the usual whole response, and its usage: one
/// `model`, found by [`early_model`], and `usage`, if any, a
/// plain object that closes the response, found by a substring search and
/// read (which checks it is one object, so the member closing the
/// response). `None` leaves the response to the full scan.
fn response_spans(body: &[u8]) -> Option<(Range<usize>, Option<Usage>)> {
    let model = early_model(body)?;
    if KEYS.model.find(&body[model.end..]).is_some() {
        return None;
    }
    let usage = match KEYS.usage.find(body) {
        // The first `"usage"`: if it closes the object, any later one is
        // inside its value.
        Some(at) => {
            let span = closing_member(body, at, KEYS.usage.needle().len())?;
            Some(plain_usage(&body[span])?)
        }
        // Without usage, nothing after `model` is walked: it must at
        // least close.
        None => {
            final_brace(body)?;
            None
        }
    };
    Some((model, usage))
}

/// Rewrites `model` in a whole response and reads its usage.
pub fn rewrite_response(body: Bytes, model_json: &[u8]) -> Result<Converted, Failure> {
    let (model, usage) = match response_spans(&body) {
        Some((model, usage)) => (Some(model), usage),
        None => {
            let [model, usage] = whole_response_spans(&body)?;
            (model, usage.and_then(|span| parse_usage(&body[span])))
        }
    };
    let body = match model {
        Some(span) => splice(&body, span, model_json),
        None => body,
    };
    Ok(Converted::Json { body, usage })
}

/// Where `model` and `usage` are in any whole response: by the structural
/// scan of every member, or by serde where the scan cannot vouch for it.
fn whole_response_spans(body: &[u8]) -> Result<[Option<Range<usize>>; 2], Failure> {
    if let Some(spans) = top_level_spans(body, [b"model", b"usage"]) {
        return Ok(spans);
    }
    let peek: Peek<'_> = crate::json::from_slice(body)
        .map_err(|e| Failure::protocol(format!("the response is not a JSON object: {e}")))?;
    let span = |raw: Option<&RawValue>| raw.map(|r| span_of(body, r));
    Ok([span(peek.model), span(peek.usage)])
}

/// Relays an OpenAI event stream, rewriting `model` in each chunk.
pub type PassthroughStream = Framed<PassthroughState>;

pub struct PassthroughState {
    model_json: Bytes,
    /// The usage chunk was asked for by the gateway, not the client: drop it.
    strip_usage: bool,
    usage: Option<Usage>,
    /// A choice reached its `finish_reason`.
    finished: bool,
    done: bool,
}

impl Framed<PassthroughState> {
    pub fn new(model_json: Bytes) -> Self {
        Framed::sse(PassthroughState {
            model_json,
            strip_usage: false,
            usage: None,
            finished: false,
            done: false,
        })
    }
}

impl Handler for PassthroughState {
    fn event(&mut self, event: Event<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        self.relay(event, out)
    }

    fn end(&mut self, out: &mut BytesMut) -> Result<(), Failure> {
        if self.done {
            Ok(())
        } else if self.finished {
            // Some servers close without `[DONE]` after a finished choice.
            out.put_slice(SSE_DONE);
            self.done = true;
            Ok(())
        } else {
            Err(Failure::protocol("the stream ended before it was finished"))
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl PassthroughState {
    fn relay(&mut self, event: Event<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        if self.done {
            return Ok(());
        }
        let data = event.data;
        if data.starts_with("[DONE]") {
            self.done = true;
            out.put_slice(SSE_DONE);
            return Ok(());
        }
        if event.event == "error" {
            return Err(super::in_band_failure(data.as_bytes()));
        }
        let bytes = data.as_bytes();
        // `finish_reason` is looked for in `finishes`: the choices, or the
        // whole of a chunk whose choices were not looked for.
        let (model, usage, error, choices, finishes) = match lone_model(bytes) {
            Some(model) => (Some(model), None, None, None, Some(0..bytes.len())),
            None => {
                let [model, usage, error, choices] = event_spans(data)?;
                (model, usage, error, choices.clone(), choices)
            }
        };
        if error.is_some_and(|e| &bytes[e] != b"null") {
            return Err(super::in_band_failure(bytes));
        }
        if let Some(usage) = usage.and_then(|span| parse_usage(&bytes[span])) {
            self.usage = Some(usage);
            if self.strip_usage && choices.as_ref().is_some_and(|c| &bytes[c.clone()] == b"[]") {
                return Ok(());
            }
        }
        if finishes.is_some_and(|c| has_finish_reason(&data[c])) {
            self.finished = true;
        }
        out.reserve(data.len() + self.model_json.len() + 8);
        out.put_slice(b"data: ");
        match model {
            Some(span) => {
                put_one_line(out, &data.as_bytes()[..span.start]);
                out.put_slice(&self.model_json);
                put_one_line(out, &data.as_bytes()[span.end..]);
            }
            None => put_one_line(out, data.as_bytes()),
        }
        out.put_slice(b"\n\n");
        Ok(())
    }
}

/// Where `model`, `usage`, `error` and `choices` are in an event: by the
/// structural scan, or by serde where the scan cannot vouch for the text.
fn event_spans(data: &str) -> Result<[Option<Range<usize>>; 4], Failure> {
    let bytes = data.as_bytes();
    if let Some(spans) = top_level_spans(bytes, [b"model", b"usage", b"error", b"choices"]) {
        return Ok(spans);
    }
    let peek: Peek<'_> = serde_json::from_str(data)
        .map_err(|e| Failure::protocol(format!("an event is not JSON: {e}")))?;
    let span = |raw: Option<&RawValue>| raw.map(|r| span_of(bytes, r));
    Ok([
        span(peek.model),
        span(peek.usage),
        span(peek.error),
        span(peek.choices),
    ])
}

/// Copies JSON text, turning the newlines of a multi-line `data` event into
/// spaces (JSON strings cannot hold raw newlines, so only whitespace changes).
fn put_one_line(out: &mut BytesMut, json: &[u8]) {
    if memchr::memchr(b'\n', json).is_none() {
        out.put_slice(json);
    } else {
        out.extend(json.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
    }
}

/// Where `model` is in a chunk that has one `model` and no `usage` or
/// `error` key, the usual chunk: found without scanning the choices, which
/// a fast substring search vouches hold no such key. `None` leaves the
/// event to the full scan.
fn lone_model(event: &[u8]) -> Option<Range<usize>> {
    if KEYS.usage.find(event).is_some()
        || KEYS.error.find(event).is_some()
        || final_brace(event).is_none()
    {
        return None;
    }
    let model = early_model(event)?;
    let rest = &event[model.end..];
    (matches!(trim_ws_start(rest).first(), Some(b',' | b'}')) && KEYS.model.find(rest).is_none())
        .then_some(model)
}

/// Whether a `choices` array (or a chunk holding one) has a non-null
/// `finish_reason`.
fn has_finish_reason(choices: &str) -> bool {
    // Built once: `str::find` would set up a new searcher for every chunk.
    static KEY: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"finish_reason\""));
    let mut rest = choices.as_bytes();
    while let Some(at) = KEY.find(rest) {
        rest = &rest[at + KEY.needle().len()..];
        let value = rest.trim_ascii_start();
        if let Some(value) = value.strip_prefix(b":")
            && value.trim_ascii_start().first() == Some(&b'"')
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::json_string;
    use crate::upstream::Cause;

    fn pick(rng: &mut fastrand::Rng, items: &[&'static str]) -> &'static str {
        items[rng.usize(..items.len())]
    }

    /// An id, a `model` (plain, escaped or null) and `choices`, as the
    /// members of a generated response or chunk.
    fn members(rng: &mut fastrand::Rng, choices: String) -> Vec<String> {
        vec![
            r#""id":"chatcmpl-1""#.to_string(),
            format!(r#""model":{}"#, pick(rng, &[r#""m""#, r#""a\"b""#, "null"])),
            choices,
        ]
    }

    /// The response shortcut must find what the full scan finds: on
    /// generated responses, whenever it answers, the full scan agrees.
    #[test]
    fn the_response_shortcut_agrees_with_the_full_scan_on_generated_responses() {
        let mut rng = fastrand::Rng::with_seed(80);
        let (mut answered, mut declined) = (0, 0);
        for _ in 0..20_000 {
            let message = format!(
                r#"{{"role":"assistant","content":{}{}}}"#,
                pick(
                    &mut rng,
                    &[
                        r#""hi""#,
                        r#""hi""#,
                        r#""hi""#,
                        r#""the \"usage\": 1""#,
                        r#""model""#,
                        r#""usage""#
                    ]
                ),
                pick(
                    &mut rng,
                    &[
                        "",
                        "",
                        "",
                        "",
                        "",
                        r#","usage":{"n":1}"#,
                        r#","model":"inner""#,
                        r#","x":{"usage":{}}"#
                    ]
                ),
            );
            let mut members = members(
                &mut rng,
                format!(r#""choices":[{{"index":0,"message":{message}}}]"#),
            );
            for extra in [
                r#""created":1"#,
                r#""model":"n""#,
                r#""system_fingerprint":"fp""#,
            ] {
                if rng.u8(..6) == 0 {
                    members.push(extra.to_string());
                }
            }
            rng.shuffle(&mut members);
            let usage = pick(
                &mut rng,
                &[
                    r#""usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}"#,
                    r#""usage" : { "prompt_tokens": 3, "details": {"usage": 1} }"#,
                    r#""usage":null"#,
                    "",
                ],
            );
            if !usage.is_empty() {
                // Mostly last, as backends send it; sometimes anywhere.
                let at = if rng.bool() {
                    members.len()
                } else {
                    rng.usize(..=members.len())
                };
                members.insert(at, usage.to_string());
            }
            let sep = pick(&mut rng, &[",", ", ", " ,\n"]);
            let body = format!("{{{}}}{}", members.join(sep), pick(&mut rng, &["", "\n"]));
            let Some((model, usage)) = response_spans(body.as_bytes()) else {
                declined += 1;
                continue;
            };
            answered += 1;
            let [full_model, full_usage] = top_level_spans(body.as_bytes(), [b"model", b"usage"])
                .unwrap_or_else(|| panic!("full scan refused {body}"));
            assert_eq!(Some(model), full_model, "{body}");
            assert_eq!(
                usage,
                full_usage.and_then(|span| parse_usage(&body.as_bytes()[span])),
                "{body}"
            );
        }
        assert!(
            answered > 4_000 && declined > 4_000,
            "{answered} / {declined}"
        );
    }

    #[test]
    fn a_response_the_shortcut_cannot_vouch_for_takes_the_full_scan() {
        for body in [
            r#"{"usage":{"prompt_tokens":1},"model":"m"}"#,
            r#"{"model":"m","choices":[{"usage":{}}],"usage":{}}"#,
            r#"{"model":"m","model":"n"}"#,
            r#"{"model":"m","usage":{"prompt_tokens":1}"#,
            r#"{"model":"m","choices":["#,
            r#"{"choices":[]}"#,
            r#"{"model":"m","usage":null}"#,
            r#"{"model":"m","x":{"usage":{"prompt_tokens":1}}}"#,
        ] {
            assert_eq!(response_spans(body.as_bytes()), None, "{body}");
        }
        let body = r#"{"id":"x","model":"m","choices":[],"usage":{"prompt_tokens":2}}"#;
        let (model, usage) = response_spans(body.as_bytes()).unwrap();
        assert_eq!(&body[model], r#""m""#);
        assert_eq!(usage.unwrap().prompt_tokens, 2);
    }

    #[test]
    fn the_lone_model_of_a_chunk_is_found_only_when_nothing_else_is_there() {
        let plain = r#"{"id":"c","model":"m","choices":[{"delta":{"content":"say \"model\" and \"usage\""},"finish_reason":null}]}"#;
        assert_eq!(&plain[lone_model(plain.as_bytes()).unwrap()], r#""m""#);
        for full_scan in [
            r#"{"model":"m","choices":[],"usage":{"prompt_tokens":1}}"#,
            r#"{"model":"m","error":{"message":"x"}}"#,
            r#"{"model":"m","model":"n"}"#,
            r#"{"model":"m","choices":[{"model":"inner"}]}"#,
            r#"{"model":"m","choices":[{"logprobs":{"content":[{"token":"usage"}]}}]}"#,
            r#"{"id":"c","choices":[]}"#,
            r#"{"model":"m","choices":["#,
            r#"{"model":"a"b","choices":[]}"#,
            // A form feed is not JSON whitespace.
            "{\"model\":\"m\"\u{c},\"choices\":[]}",
        ] {
            assert_eq!(lone_model(full_scan.as_bytes()), None, "{full_scan}");
        }
    }

    /// The shortcut must relay what the full scan relays: on generated
    /// chunks, whenever `lone_model` answers, the full scan finds the same
    /// `model`, no `usage` or `error`, and the same finish.
    #[test]
    fn the_lone_model_agrees_with_the_full_scan_on_generated_chunks() {
        let mut rng = fastrand::Rng::with_seed(8);
        let texts = [
            r#""hi""#,
            r#""say \"model\": 1""#,
            r#""\"usage\"""#,
            r#""finish_reason""#,
            r#""a\\""#,
            r#""""#,
        ];
        let (mut answered, mut declined) = (0, 0);
        for _ in 0..20_000 {
            let choice = format!(
                r#"{{"index":0,"delta":{{"content":{}}},"finish_reason":{}{}}}"#,
                pick(&mut rng, &texts),
                pick(&mut rng, &["null", r#""stop""#, r#" "length""#, "null"]),
                pick(
                    &mut rng,
                    &[
                        "",
                        "",
                        r#","logprobs":{"content":[{"token":"usage"}]}"#,
                        r#","x":{"model":1}"#
                    ]
                ),
            );
            let mut members = members(&mut rng, format!(r#""choices":[{choice}]"#));
            members.push(r#""created":1"#.to_string());
            for extra in [
                r#""usage":null"#,
                r#""error":null"#,
                r#""model":"n""#,
                r#""object":"chat.completion.chunk""#,
            ] {
                if rng.u8(..8) == 0 {
                    members.push(extra.to_string());
                }
            }
            rng.shuffle(&mut members);
            let chunk = format!("{{{}}}", members.join(pick(&mut rng, &[",", ", ", " ,\n"])));
            let bytes = chunk.as_bytes();
            let Some(model) = lone_model(bytes) else {
                declined += 1;
                continue;
            };
            answered += 1;
            let [full_model, usage, error, choices] =
                top_level_spans(bytes, [b"model", b"usage", b"error", b"choices"])
                    .unwrap_or_else(|| panic!("full scan refused {chunk}"));
            assert_eq!(Some(model), full_model, "{chunk}");
            assert_eq!((usage, error), (None, None), "{chunk}");
            assert_eq!(
                has_finish_reason(&chunk),
                has_finish_reason(&chunk[choices.unwrap()]),
                "{chunk}"
            );
        }
        assert!(
            answered > 5_000 && declined > 5_000,
            "{answered} / {declined}"
        );
    }

    #[test]
    fn a_finish_reason_counts_only_as_a_key_with_a_string() {
        assert!(!has_finish_reason(r#"[{"delta":{},"finish_reason":null}]"#));
        assert!(has_finish_reason(
            r#"[{"delta":{},"finish_reason" :  "stop"}]"#
        ));
        assert!(has_finish_reason(
            r#"[{"index":0,"finish_reason":null},{"index":1,"finish_reason":"length"}]"#
        ));
        // Inside a string the quotes are escaped: no key there.
        assert!(!has_finish_reason(
            r#"[{"delta":{"content":"say \"finish_reason\":\"x\""},"finish_reason":null}]"#
        ));
        assert!(!has_finish_reason(r#"[{"finish_reason"}]"#));
        assert!(!has_finish_reason("[]"));
    }

    #[test]
    fn counts_are_read_as_serde_reads_a_u64() {
        for text in [
            "0",
            "7",
            "42",
            "18446744073709551615",
            "18446744073709551616",
            "00",
            "-0",
            "1.0",
            "1a",
            "",
            "٣",
        ] {
            assert_eq!(
                crate::json::count(text.as_bytes()),
                serde_json::from_str::<u64>(text).ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn usage_counts_are_read_past_nested_details() {
        let usage = br#"{"prompt_tokens":24,"completion_tokens":19,"total_tokens":43,
            "prompt_tokens_details":{"cached_tokens":3,"audio_tokens":null},
            "completion_tokens_details":{"reasoning_tokens":0}}"#;
        assert_eq!(parse_usage(usage), Some(Usage::new(24, 19)));
        assert_eq!(
            parse_usage(br#"{"completion_tokens": 5}"#),
            Some(Usage {
                prompt_tokens: 0,
                completion_tokens: 5,
                total_tokens: 0
            })
        );
        assert_eq!(parse_usage(b"null"), None);
        assert_eq!(parse_usage(br#"{"prompt_tokens":1.5}"#), None);
        assert_eq!(parse_usage(br#"{"prompt_tokens":-1}"#), None);
        assert_eq!(parse_usage(br#"{"prompt_tokens":+1}"#), None);
        assert_eq!(parse_usage(br#"{"prompt_tokens":01}"#), None);
        assert_eq!(parse_usage(br#"{"prompt_tokens":null}"#), None);
        assert_eq!(parse_usage(br#"{"prompt_tokens":"7"}"#), None);
        assert_eq!(parse_usage(br#"{"prompt_tokens":1e2}"#), None);
        assert_eq!(
            parse_usage(br#"{"prompt_tokens":99999999999999999999}"#),
            None
        );
        // A repeated count is not guessed at: serde refuses it too.
        assert_eq!(
            parse_usage(br#"{"prompt_tokens":1,"prompt_tokens":2}"#),
            None
        );
    }

    fn relay(input: &[&str]) -> (String, Result<(), Failure>, Option<Usage>) {
        let mut d = PassthroughStream::new(json_string("alias"));
        let mut out = BytesMut::new();
        for piece in input {
            if let Err(f) = d.feed(piece.as_bytes(), &mut out) {
                return (String::from_utf8(out.to_vec()).unwrap(), Err(f), d.usage());
            }
        }
        let r = d.finish(&mut out);
        (String::from_utf8(out.to_vec()).unwrap(), r, d.usage())
    }

    #[test]
    fn rewrites_model_and_keeps_everything_else() {
        let (out, r, usage) = relay(&[
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"meta/llama\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"x\":1}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"meta/llama\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"c1\",\"model\":\"meta/llama\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n",
        ]);
        r.unwrap();
        assert_eq!(usage, Some(Usage::new(3, 1)));
        assert!(out.starts_with("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"alias\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"x\":1}\n\n"));
        assert!(!out.contains("meta/llama"));
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn multi_line_data_becomes_one_line() {
        let (out, r, _) = relay(&[
            "data: {\"model\":\"m\",\n",
            "data: \"choices\":[{\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        ]);
        r.unwrap();
        assert_eq!(
            out,
            "data: {\"model\":\"alias\", \"choices\":[{\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
        );
    }

    #[test]
    fn in_band_errors_fail_the_stream() {
        let (_, r, _) = relay(&["data: {\"error\":{\"message\":\"boom\",\"code\":500}}\n\n"]);
        assert_eq!(r.unwrap_err().message, "boom");
        let (_, r, _) = relay(&[
            "error: {\"code\":500,\"message\":\"llama fell over\",\"type\":\"server_error\"}\n\n",
        ]);
        assert_eq!(r.unwrap_err().cause, Cause::InBand);
    }

    #[test]
    fn a_stream_cut_short_fails_but_a_finished_one_without_done_does_not() {
        let (_, r, _) =
            relay(&["data: {\"model\":\"m\",\"choices\":[{\"finish_reason\":null}]}\n\n"]);
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);
        let (out, r, _) =
            relay(&["data: {\"model\":\"m\",\"choices\":[{\"finish_reason\": \"length\"}]}\n\n"]);
        r.unwrap();
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn usage_is_asked_for_and_its_chunk_dropped() {
        let body = Bytes::from_static(
            br#"{"model":"a","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
        );
        let (span, with) = usage_edit(&body, None);
        let asked = splice_all(&body, &mut [(1..1, Bytes::new()), (span, with)]);
        let v: serde_json::Value = serde_json::from_slice(&asked).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["content"], "x");

        let body = Bytes::from_static(
            br#"{"model":"a","stream":true,"stream_options":{"include_obfuscation":false}}"#,
        );
        let start = body.windows(9).position(|w| w == b"{\"include").unwrap();
        let span = start..body.len() - 1;
        assert_eq!(&body[span.clone()], br#"{"include_obfuscation":false}"#);
        let (span, with) = usage_edit(&body, Some(span));
        let v: serde_json::Value =
            serde_json::from_slice(&splice_all(&body, &mut [(span, with)])).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_obfuscation": false, "include_usage": true})
        );

        let mut d = PassthroughStream::new(json_string("alias"));
        d.state.strip_usage = true;
        let mut out = BytesMut::new();
        d.feed(b"data: {\"model\":\"m\",\"choices\":[{\"finish_reason\":\"stop\"}]}\n\ndata: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6,\"total_tokens\":10}}\n\ndata: [DONE]\n\n", &mut out).unwrap();
        d.finish(&mut out).unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(!text.contains("usage"), "{text}");
        assert_eq!(d.usage(), Some(Usage::new(4, 6)));
    }

    #[test]
    fn whole_responses_get_the_alias() {
        let body = Bytes::from_static(br#"{"id":"x","model":"meta/llama","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":5,"total_tokens":7}}"#);
        let Converted::Json { body, usage } =
            rewrite_response(body, &json_string("alias")).unwrap()
        else {
            panic!("passthrough answers JSON")
        };
        assert_eq!(&body[..], br#"{"id":"x","model":"alias","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":5,"total_tokens":7}}"#);
        assert_eq!(usage, Some(Usage::new(2, 5)));
        assert!(rewrite_response(Bytes::from_static(b"<html>"), b"\"a\"").is_err());
    }
}
