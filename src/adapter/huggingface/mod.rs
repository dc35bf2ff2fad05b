//! `type: huggingface`: Text Generation Inference (TGI) and the serverless
//! Inference API, through one of three surfaces picked by the `api` option:
//!
//! - `messages`: TGI's OpenAI-like `/v1/chat/completions`. The request goes
//!   through with its fields as sent, except where TGI differs from OpenAI
//!   (`response_format` in TGI's grammar shape, `top_p: 1` rejected, usage
//!   only on request); the answer is re-emitted in exact OpenAI shapes (our
//!   ids, one role delta, `stop` for `eos_token`/`stop_sequence`, OpenAI
//!   error events).
//! - `generate`: TGI's native `/generate` and `/generate_stream`, with the
//!   conversation rendered by a chat template (see [`templates`]).
//! - `inference`: the serverless Inference API's task payloads at
//!   `{base_url}/models/{model}`: text generation (whole answers; a client
//!   stream is synthesized) and feature extraction (embeddings).
//!
//! Legacy `/v1/completions` on TGI (`messages` and `generate`) goes to
//! `/generate` with the prompt as is: no template, as TGI's own completions
//! route does. Token counts come from TGI's `details` (`input_length`,
//! `generated_tokens`) and its `x-prompt-tokens` header; where a backend
//! reports none they are estimated at four bytes of text per token.

mod templates;

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use self::templates::{Family, Speaker, Template, Turn};
use super::openai::json_headers;
use super::{Adapter, AuthStyle, Built, Converted, UpstreamRequest};
use crate::call::Call;
use crate::chat::{
    ChatRequest, Completion, Content, EmbeddingRequest, Embeddings, FinishReason, Part, Role, Stop,
    ToolCallOut, ToolChoice, unsupported,
};
use crate::config::{Path, Problem, raw};
use crate::error::Error;
use crate::openai::{Endpoint, Usage, span_of};
use crate::route::ModelName;
use crate::stream::chunks::{ChunkWriter, Shape};
use crate::stream::sse::Event;
use crate::stream::{Decoder, Framed, Handler};
use crate::upstream::{Cause, Failure, truncate};

/// The public Inference API host (Inference Providers' hf-inference route).
const INFERENCE_API: &str = "https://router.huggingface.co/hf-inference";
/// `max_new_tokens` when the client sets no limit.
const DEFAULT_MAX_NEW_TOKENS: u64 = 1024;
/// TGI's default `max_stop_sequences`: template stops are added only up to it.
const MAX_STOPS: usize = 4;
/// Bytes of text per token, for counts a backend does not report.
const BYTES_PER_TOKEN: u64 = 4;

// === options ===

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Api {
    #[default]
    Messages,
    Generate,
    Inference,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    api: Api,
    /// `llama2 | llama3 | chatml | gemma | mistral`, or a Jinja template.
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    default_max_new_tokens: Option<u64>,
}

pub fn build(
    id: &str,
    raw: &raw::Provider,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Built> {
    Some(Built {
        adapter: Box::new(adapter(id, raw, path, problems)?),
        transport: None,
        default_auth: AuthStyle::Bearer,
    })
}

fn adapter(
    id: &str,
    raw: &raw::Provider,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<HuggingFace> {
    let options: Options = super::options(raw, path, problems)?;
    let before = problems.len();
    let default_base = (options.api == Api::Inference).then_some(INFERENCE_API);
    let base = super::base_url(raw, default_base, path, problems);
    let template = template(&options, path, problems);
    let max_new_tokens = match options.default_max_new_tokens {
        Some(0) => {
            problems.push(Problem::new(
                path.key("default_max_new_tokens"),
                "must be at least 1",
            ));
            DEFAULT_MAX_NEW_TOKENS
        }
        Some(n) => n,
        None => DEFAULT_MAX_NEW_TOKENS,
    };
    if problems.len() > before {
        return None;
    }
    Some(HuggingFace::new(
        id,
        &base?,
        options.api,
        template,
        max_new_tokens,
    ))
}

/// The chat template the options describe, checked against the `api`.
fn template(options: &Options, path: &Path, problems: &mut Vec<Problem>) -> Option<Template> {
    let Some(source) = options.chat_template.as_deref() else {
        if options.api != Api::Messages {
            problems.push(Problem::new(
                path.key("chat_template"),
                "`chat_template` is required with `api: generate` and `api: inference` \
                 (llama2, llama3, chatml, gemma, mistral, or the model's Jinja template)",
            ));
        }
        for (key, set) in [
            ("bos_token", options.bos_token.is_some()),
            ("eos_token", options.eos_token.is_some()),
        ] {
            if set {
                problems.push(Problem::new(
                    path.key(key),
                    format!("`{key}` applies only together with a `chat_template`"),
                ));
            }
        }
        return None;
    };
    if options.api == Api::Messages {
        problems.push(Problem::new(
            path.key("chat_template"),
            "`chat_template` applies to `api: generate` and `api: inference`; \
             with `api: messages` TGI applies the model's own template",
        ));
        return None;
    }
    if Template::is_jinja(source) {
        return match Template::jinja(source, options.bos_token.clone(), options.eos_token.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(Problem::new(
                    path.key("chat_template"),
                    format!("the Jinja template does not compile: {e}"),
                ));
                None
            }
        };
    }
    let Some(family) = Family::named(source) else {
        problems.push(Problem::new(
            path.key("chat_template"),
            format!(
                "{source:?} is not a built-in template (llama2, llama3, chatml, gemma, mistral) \
                 nor a Jinja template"
            ),
        ));
        return None;
    };
    if options.eos_token.is_some() {
        problems.push(Problem::new(
            path.key("eos_token"),
            "`eos_token` applies to a Jinja `chat_template`; built-in templates write their own",
        ));
        return None;
    }
    Some(Template::builtin(family, options.bos_token.clone()))
}

// === the adapter ===

#[derive(Debug)]
pub struct HuggingFace {
    provider: String,
    api: Api,
    template: Option<Template>,
    max_new_tokens: u64,
    base: String,
    chat: Uri,
    generate: Uri,
    generate_stream: Uri,
}

impl HuggingFace {
    fn new(
        provider: &str,
        base: &str,
        api: Api,
        template: Option<Template>,
        max_new_tokens: u64,
    ) -> Self {
        HuggingFace {
            provider: provider.to_owned(),
            api,
            template,
            max_new_tokens,
            base: base.to_owned(),
            chat: super::join(base, "/v1/chat/completions"),
            generate: super::join(base, "/generate"),
            generate_stream: super::join(base, "/generate_stream"),
        }
    }

    /// `{base}/models/{model}{suffix}`, the model id kept as a path.
    fn model_uri(&self, model: &str, suffix: &str) -> Uri {
        super::join(
            &self.base,
            &format!("/models/{}{suffix}", model_path(model)),
        )
    }
}

impl Adapter for HuggingFace {
    fn supports(&self, endpoint: Endpoint) -> bool {
        match endpoint {
            Endpoint::Chat | Endpoint::Completions => true,
            Endpoint::Embeddings => self.api == Api::Inference,
            Endpoint::Models => false,
        }
    }

    fn request(&self, call: &Call, model: &ModelName) -> Result<UpstreamRequest, Error> {
        match (self.api, call.endpoint) {
            (Api::Inference, Endpoint::Embeddings) => self.embed_request(&call.body, model),
            (Api::Messages, Endpoint::Chat) => {
                self.messages_request(&call.body, call.view.stream, model)
            }
            (_, endpoint @ (Endpoint::Chat | Endpoint::Completions)) => {
                self.generate_request(endpoint, &call.body, call.view.stream, model)
            }
            (_, endpoint) => Err(Error::invalid(format!(
                "provider {} does not serve /v1{}",
                self.provider,
                endpoint.path()
            ))),
        }
    }

    // TGI's `x-prompt-tokens`.
    fn reads_answer_headers(&self) -> bool {
        true
    }

    fn response(
        &self,
        call: &Call,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Converted, Failure> {
        match (self.api, call.endpoint) {
            (_, Endpoint::Embeddings) => feature_response(&call.body, &body),
            (Api::Messages, Endpoint::Chat) => messages_response(&body, &tool_id_prefix(call)),
            (_, endpoint) => {
                let hints = Hints::of(endpoint, &call.body, self.template.as_ref());
                let prompt_tokens = header_count(headers, "x-prompt-tokens")
                    .unwrap_or_else(|| estimate(call.view.prompt_bytes));
                generate_response(&body, &hints, prompt_tokens)
            }
        }
    }

    fn decoder(&self, call: &Call) -> Box<dyn Decoder> {
        let writer = ChunkWriter::new(&Shape::of(call));
        match (self.api, call.endpoint) {
            (Api::Messages, Endpoint::Chat) => {
                Box::new(MessagesStream::new(writer, tool_id_prefix(call)))
            }
            (_, endpoint) => Box::new(GenerateStream::new(
                writer,
                Hints::of(endpoint, &call.body, self.template.as_ref()),
            )),
        }
    }

    fn failure(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        hf_failure(status, headers, body)
    }
}

// === wire types ===

/// `POST /generate`, `/generate_stream` and the Inference API's text generation.
#[derive(Debug, Serialize)]
struct GenerateRequest<'a> {
    inputs: String,
    parameters: Parameters<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<InferenceOptions>,
}

#[derive(Debug, Serialize)]
struct Parameters<'a> {
    max_new_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    do_sample: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grammar: Option<Grammar>,
    return_full_text: bool,
    details: bool,
}

/// TGI's `grammar` (and its Messages API's `response_format`).
#[derive(Debug, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
enum Grammar {
    Json(Box<RawValue>),
}

/// The Inference API's `options`: identical requests must not share a
/// cached answer, since sampling is on unless the client asked for greedy.
#[derive(Debug, Serialize)]
struct InferenceOptions {
    use_cache: bool,
}

/// A TGI token in `/generate_stream`.
#[derive(Debug, Deserialize)]
struct WireToken<'a> {
    #[serde(borrow, default)]
    text: Cow<'a, str>,
    #[serde(default)]
    special: bool,
}

/// `details` of a whole answer or of a stream's last event.
#[derive(Debug, Deserialize)]
struct Details<'a> {
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    generated_tokens: Option<u64>,
    /// Streams only: the prompt's length in tokens.
    #[serde(default)]
    input_length: Option<u64>,
}

/// A whole `/generate` answer, or one element of the Inference API's array.
#[derive(Debug, Deserialize)]
struct Generated<'a> {
    #[serde(borrow)]
    generated_text: Cow<'a, str>,
    #[serde(borrow, default)]
    details: Option<Details<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum GenerateBody<'a> {
    #[serde(borrow)]
    Many(Vec<Generated<'a>>),
    #[serde(borrow)]
    One(Generated<'a>),
}

/// One `/generate_stream` event: a token, or an error.
#[derive(Debug, Deserialize)]
struct StreamEvent<'a> {
    #[serde(borrow, default)]
    token: Option<WireToken<'a>>,
    #[serde(borrow, default)]
    generated_text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    details: Option<Details<'a>>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// The fields of a Messages API body that TGI reads differently from OpenAI.
#[derive(Debug, Deserialize)]
struct MessagesPeek<'a> {
    #[serde(borrow)]
    model: &'a RawValue,
    #[serde(borrow, default)]
    response_format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    top_p: Option<&'a RawValue>,
    /// `null` included: its place is where the value goes.
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
}

/// A field's raw value whatever it is, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// `response_format` in OpenAI's shape or already in TGI's.
#[derive(Debug, Deserialize)]
struct FormatPeek<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    json_schema: Option<SchemaPeek<'a>>,
}

#[derive(Debug, Deserialize)]
struct SchemaPeek<'a> {
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
}

/// A Messages API answer.
#[derive(Debug, Deserialize)]
struct ChatResponse<'a> {
    #[serde(borrow, default)]
    choices: Vec<ChatChoice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct ChatChoice<'a> {
    #[serde(borrow)]
    message: ChatMessage<'a>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<WireToolCall<'a>>>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow)]
    function: WireFunction<'a>,
}

#[derive(Debug, Deserialize)]
struct WireFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    /// A JSON string (TGI today) or an object (older releases).
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

/// A Messages API stream chunk (or its usage chunk, or an error event).
#[derive(Debug, Deserialize)]
struct ChatChunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<ChunkDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct ChunkDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    /// A list, or one object (TGI before 3.2).
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

/// Streamed tool calls, in either of TGI's shapes.
fn delta_calls(raw: &RawValue) -> Result<Vec<WireToolCall<'_>>, Failure> {
    let text = raw.get();
    let parsed = match text.as_bytes().first() {
        Some(b'[') => serde_json::from_str(text),
        Some(b'{') => serde_json::from_str(text).map(|c| vec![c]),
        _ => Ok(Vec::new()),
    };
    parsed.map_err(|e| Failure::protocol(format!("a tool-call delta is malformed: {e}")))
}

/// TGI's error bodies: `{"error": "…", "error_type": "…"}`, the Messages
/// API's `{"error": {"message", "http_status_code"}}`, the Inference API's
/// `{"error": "…" | ["…"], "estimated_time": 20.0}`.
#[derive(Debug, Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default)]
    error: Option<ErrorField<'a>>,
    #[serde(borrow, default)]
    error_type: Option<Cow<'a, str>>,
    #[serde(default)]
    estimated_time: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ErrorField<'a> {
    #[serde(borrow)]
    Text(Cow<'a, str>),
    #[serde(borrow)]
    List(Vec<Cow<'a, str>>),
    #[serde(borrow)]
    Object(ErrorObject<'a>),
}

#[derive(Debug, Deserialize)]
struct ErrorObject<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(default)]
    http_status_code: Option<u16>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

/// Feature extraction: always a list, so the answer has one row per input.
#[derive(Debug, Serialize)]
struct FeatureRequest<'a> {
    inputs: Vec<&'a str>,
}

/// A feature-extraction answer: one vector, one per input, or token-level
/// features per input.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Features {
    One(Vec<f32>),
    Rows(Vec<Vec<f32>>),
    Tokens(Vec<Vec<Vec<f32>>>),
}

/// OpenAI fields without a TGI equivalent, read only to say they are dropped.
#[derive(Debug, Default, Deserialize)]
struct Dropped<'a> {
    #[serde(borrow, default)]
    logit_bias: Option<&'a RawValue>,
}

// === requests ===

impl HuggingFace {
    /// The Messages API body: the client's, with `model` and TGI's deviations
    /// rewritten in place; every other byte is kept.
    fn messages_request(
        &self,
        body: &[u8],
        stream: bool,
        model: &ModelName,
    ) -> Result<UpstreamRequest, Error> {
        let req = ChatRequest::parse(Endpoint::Chat, body)?;
        req.refuse_unsupported(&self.provider, true)?;
        let peek: MessagesPeek<'_> = crate::json::from_slice(body)
            .map_err(|e| Error::invalid(format!("invalid request body: {e}")))?;
        let mut edits: Vec<(Range<usize>, Bytes)> =
            vec![(span_of(body, peek.model), model.json.clone())];
        if let Some(raw) = peek.response_format
            && let Some(text) = tgi_response_format(raw, &self.provider)?
        {
            edits.push((span_of(body, raw), Bytes::from(text)));
        }
        if let Some(raw) = peek.top_p
            && raw.get().parse::<f64>().is_ok_and(|p| p >= 1.0)
        {
            // TGI rejects `top_p` ≥ 1; 1 is OpenAI's "no nucleus sampling".
            edits.push((span_of(body, raw), Bytes::from_static(b"null")));
        }
        if stream {
            // Usage is reported by TGI only when asked; the client still gets
            // a usage chunk only if it asked.
            let options = peek.stream_options.map(|raw| span_of(body, raw));
            edits.push(super::openai::usage_edit(body, options));
        }
        Ok(UpstreamRequest {
            uri: self.chat.clone(),
            fixed: json_headers(stream),
            headers: HeaderMap::new(),
            body: super::openai::splice_many(body, &mut edits),
            stream,
        })
    }

    /// A text-generation body: the prompt (templated for chats, as sent for
    /// legacy completions) and the sampling parameters in TGI's terms.
    fn generate_request(
        &self,
        endpoint: Endpoint,
        body: &[u8],
        stream: bool,
        model: &str,
    ) -> Result<UpstreamRequest, Error> {
        let provider = self.provider.as_str();
        let inference = self.api == Api::Inference;
        let req = ChatRequest::parse(endpoint, body)?;
        req.refuse_unsupported(provider, !inference)?;
        refuse_tools(&req, provider)?;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let dropped: Dropped<'_> = crate::json::from_slice(body).unwrap_or_default();
            if req.presence_penalty.is_some_and(|p| p != 0.0) {
                tracing::debug!(provider, "presence_penalty has no TGI equivalent; dropped");
            }
            if dropped
                .logit_bias
                .is_some_and(|b| !matches!(b.get(), "null" | "{}"))
            {
                tracing::debug!(provider, "logit_bias has no TGI equivalent; dropped");
            }
        }

        let (inputs, template_stops) = match endpoint {
            // `suffix` and `best_of` were refused with the rest above.
            Endpoint::Completions => (prompt_text(&req), Vec::new()),
            _ => {
                let template = self
                    .template
                    .as_ref()
                    .ok_or_else(|| Error::internal("a chat needs a chat template"))?;
                let turns = turns(&req, provider)?;
                let prompt = template.render(&turns).map_err(|why| {
                    Error::invalid_param(
                        "messages",
                        format!(
                            "provider {provider}'s chat template refused the conversation: {why}"
                        ),
                    )
                })?;
                (prompt, template.stops())
            }
        };

        let grammar = grammar(&req, provider, inference)?;
        let greedy = req.temperature.is_some_and(|t| t <= 0.0);
        let stop = stop_list(req.stop.as_ref(), template_stops);
        let request = GenerateRequest {
            inputs,
            parameters: Parameters {
                max_new_tokens: req.max_tokens().unwrap_or(self.max_new_tokens),
                temperature: req.temperature.filter(|_| !greedy),
                top_p: req.top_p.filter(|p| !greedy && *p < 1.0),
                do_sample: !greedy,
                frequency_penalty: req.frequency_penalty.filter(|f| *f != 0.0),
                stop,
                seed: req.seed,
                grammar,
                return_full_text: false,
                details: true,
            },
            options: inference.then_some(InferenceOptions { use_cache: false }),
        };
        let body = crate::json::to_vec_sized(&request, body.len() + super::TRANSLATED_ROOM)
            .map_err(|e| Error::internal(e.to_string()))?;
        let stream = stream && !inference;
        let uri = match (self.api, stream) {
            (Api::Inference, _) => self.model_uri(model, ""),
            (_, true) => self.generate_stream.clone(),
            (_, false) => self.generate.clone(),
        };
        Ok(UpstreamRequest {
            uri,
            fixed: json_headers(stream),
            headers: HeaderMap::new(),
            body: Bytes::from(body),
            stream,
        })
    }
}

impl HuggingFace {
    /// Feature extraction for `/v1/embeddings`.
    fn embed_request(&self, body: &[u8], model: &str) -> Result<UpstreamRequest, Error> {
        let req = EmbeddingRequest::parse(body)?;
        let texts = req.texts(&self.provider)?;
        if req.dimensions.is_some() {
            return Err(unsupported(
                "dimensions",
                &self.provider,
                "feature extraction returns the model's own size",
            ));
        }
        let body = serde_json::to_vec(&FeatureRequest { inputs: texts })
            .map_err(|e| Error::internal(e.to_string()))?;
        Ok(UpstreamRequest {
            uri: self.model_uri(model, "/pipeline/feature-extraction"),
            fixed: json_headers(false),
            headers: HeaderMap::new(),
            body: Bytes::from(body),
            stream: false,
        })
    }
}

/// TGI's `response_format` for an OpenAI one; `None` keeps it as sent.
fn tgi_response_format(raw: &RawValue, provider: &str) -> Result<Option<String>, Error> {
    let Ok(format) = serde_json::from_str::<FormatPeek<'_>>(raw.get()) else {
        return Ok(None);
    };
    if format.value.is_some() {
        return Ok(None);
    }
    let schema = match format.kind.as_ref() {
        "text" => return Ok(Some("null".to_owned())),
        "json_object" => r#"{"type":"object"}"#,
        "json_schema" => format
            .json_schema
            .and_then(|j| j.schema)
            .map(RawValue::get)
            .ok_or_else(|| missing_schema(provider))?,
        _ => return Ok(None),
    };
    Ok(Some(format!(r#"{{"type":"json","value":{schema}}}"#)))
}

fn missing_schema(provider: &str) -> Error {
    unsupported(
        "response_format",
        provider,
        "`json_schema` needs a `schema` to constrain the output",
    )
}

/// `response_format` as a TGI grammar (the Inference API has none).
fn grammar(
    req: &ChatRequest<'_>,
    provider: &str,
    inference: bool,
) -> Result<Option<Grammar>, Error> {
    let Some(format) = &req.response_format else {
        return Ok(None);
    };
    let schema = match format.kind.as_ref() {
        "text" => return Ok(None),
        "json_object" => r#"{"type":"object"}"#,
        "json_schema" => format
            .json_schema
            .as_ref()
            .and_then(|j| j.schema)
            .map(RawValue::get)
            .ok_or_else(|| missing_schema(provider))?,
        other => {
            return Err(unsupported(
                "response_format",
                provider,
                &format!("`{other}` is not an OpenAI response format"),
            ));
        }
    };
    if inference {
        return Err(unsupported(
            "response_format",
            provider,
            "the Inference API's text generation has no constrained output",
        ));
    }
    let value =
        RawValue::from_string(schema.to_owned()).map_err(|e| Error::internal(e.to_string()))?;
    Ok(Some(Grammar::Json(value)))
}

/// Text generation has no tools: tools are refused unless `tool_choice`
/// is `none`, in which case they change nothing.
fn refuse_tools(req: &ChatRequest<'_>, provider: &str) -> Result<(), Error> {
    let offered = req.tools.as_ref().is_some_and(|t| !t.is_empty());
    let declined = matches!(&req.tool_choice, Some(ToolChoice::Mode(m)) if m == "none");
    if offered && !declined {
        return Err(unsupported(
            "tools",
            provider,
            "text generation through a chat template has no tool calling; use `api: messages`",
        ));
    }
    if offered {
        tracing::debug!(provider, "tools with tool_choice none dropped");
    }
    Ok(())
}

/// The conversation as template turns: text only, no tool traffic.
fn turns(req: &ChatRequest<'_>, provider: &str) -> Result<Vec<Turn>, Error> {
    let mut turns = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role {
            Role::System | Role::Developer => Speaker::System,
            Role::User => Speaker::User,
            Role::Assistant => Speaker::Assistant,
            Role::Tool | Role::Function => {
                return Err(unsupported(
                    "messages",
                    provider,
                    "tool results need tool calling, which text generation does not have",
                ));
            }
        };
        if m.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(unsupported(
                "messages",
                provider,
                "assistant tool calls need tool calling, which text generation does not have",
            ));
        }
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.to_string(),
            Some(c @ Content::Parts(parts)) => {
                if parts
                    .iter()
                    .any(|p| !matches!(p, Part::Text { .. } | Part::Refusal { .. }))
                {
                    return Err(unsupported(
                        "messages",
                        provider,
                        "only text content can be put in a prompt",
                    ));
                }
                c.text()
            }
        };
        turns.push(Turn { role, content });
    }
    Ok(turns)
}

/// The client's stop strings, then the template's while TGI's default limit
/// allows.
fn stop_list<'s>(client: Option<&'s Stop<'_>>, template: Vec<&'s str>) -> Vec<&'s str> {
    let mut stop: Vec<&str> = client.map(Stop::to_vec).unwrap_or_default();
    for s in template {
        if stop.len() < MAX_STOPS && !stop.contains(&s) {
            stop.push(s);
        }
    }
    stop
}

/// The legacy completion's prompt (its one user message).
fn prompt_text(req: &ChatRequest<'_>) -> String {
    req.messages
        .first()
        .and_then(|m| m.content.as_ref())
        .map(Content::text)
        .unwrap_or_default()
}

/// A model id as a URL path: `/` kept, anything outside the unreserved set
/// percent-encoded.
fn model_path(model: &str) -> String {
    let mut out = String::with_capacity(model.len());
    for b in model.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// === answers ===

/// What conversion needs from the request: the stop strings to trim, and
/// the prompt to echo for a legacy completion with `echo: true`.
#[derive(Debug, Default)]
struct Hints {
    stops: Vec<String>,
    echo: Option<String>,
}

impl Hints {
    /// Reads only `stop` and `echo` (the request itself was checked when it
    /// was translated), and the prompt when it is to be echoed.
    fn of(endpoint: Endpoint, body: &[u8], template: Option<&Template>) -> Hints {
        #[derive(Deserialize)]
        struct Peek<'a> {
            #[serde(borrow, default)]
            stop: Option<Stop<'a>>,
            #[serde(default)]
            echo: Option<bool>,
        }
        let Ok(peek) = crate::json::from_slice::<Peek<'_>>(body) else {
            return Hints::default();
        };
        let mut echo = None;
        let mut template_stops = Vec::new();
        if endpoint == Endpoint::Completions {
            if peek.echo == Some(true) {
                echo = ChatRequest::parse(endpoint, body)
                    .ok()
                    .map(|req| prompt_text(&req));
            }
        } else if let Some(t) = template {
            template_stops = t.stops();
        }
        let stops = stop_list(peek.stop.as_ref(), template_stops)
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        Hints { stops, echo }
    }
}

fn finish_reason(tgi: Option<&str>) -> FinishReason {
    match tgi {
        Some("length") => FinishReason::Length,
        Some("tool_calls") => FinishReason::ToolCalls,
        // `eos_token`, `stop_sequence`, `stop`, or nothing said.
        _ => FinishReason::Stop,
    }
}

/// `text` without the stop string it ends with.
fn strip_stop<'t>(text: &'t str, stops: &[String]) -> &'t str {
    stops
        .iter()
        .filter(|s| text.ends_with(s.as_str()))
        .map(|s| &text[..text.len() - s.len()])
        .min_by_key(|t| t.len())
        .unwrap_or(text)
}

/// Tokens for `bytes` of text that no backend counted.
fn estimate(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(BYTES_PER_TOKEN)
}

fn header_count(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A whole `/generate` or Inference API answer.
fn generate_response(body: &[u8], hints: &Hints, prompt_tokens: u64) -> Result<Converted, Failure> {
    if let Some(failure) = body_error(body) {
        return Err(failure);
    }
    let generated = match crate::json::from_slice::<GenerateBody<'_>>(body) {
        Ok(GenerateBody::One(g)) => g,
        Ok(GenerateBody::Many(many)) => many
            .into_iter()
            .next()
            .ok_or_else(|| Failure::protocol("the answer holds no generated text"))?,
        Err(e) => {
            return Err(Failure::protocol(format!(
                "the answer is not a text-generation result: {e}"
            )));
        }
    };
    let reason = generated
        .details
        .as_ref()
        .and_then(|d| d.finish_reason.as_deref());
    let text = generated.generated_text.as_ref();
    let text = if reason.is_none_or(|r| r == "stop_sequence") {
        strip_stop(text, &hints.stops)
    } else {
        text
    };
    let completion_tokens = generated
        .details
        .as_ref()
        .and_then(|d| d.generated_tokens)
        .unwrap_or_else(|| estimate(text.len()));
    let content = match &hints.echo {
        Some(prompt) => format!("{prompt}{text}"),
        None => text.to_owned(),
    };
    Ok(Converted::Chat(Completion {
        content: Some(content),
        tool_calls: Vec::new(),
        finish_reason: finish_reason(reason),
        usage: Usage::new(prompt_tokens, completion_tokens),
    }))
}

/// Ids for the tool calls of one answer: `call_<request id>_<n>`. TGI's own
/// (`"0"`, or a count over the conversation) repeat across turns.
fn tool_id_prefix(call: &Call) -> String {
    format!("call_{}_", call.request_id.to_str().unwrap_or("0"))
}

/// A whole Messages API answer.
fn messages_response(body: &[u8], ids: &str) -> Result<Converted, Failure> {
    let response: ChatResponse<'_> = crate::json::from_slice(body)
        .map_err(|e| Failure::protocol(format!("the answer is not a chat completion: {e}")))?;
    if response.error.is_some_and(|e| e.get() != "null") {
        return Err(error_failure(Cause::InBand, body));
    }
    let choice = response
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| Failure::protocol("the answer has no choice"))?;
    let tool_calls: Vec<ToolCallOut> = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| ToolCallOut {
            id: format!("{ids}{i}"),
            name: t.function.name.map(Cow::into_owned).unwrap_or_default(),
            arguments: super::arguments_text(t.function.arguments, "{}"),
        })
        .collect();
    let finish_reason = if tool_calls.is_empty() {
        finish_reason(choice.finish_reason.as_deref())
    } else {
        FinishReason::ToolCalls
    };
    let content = choice
        .message
        .content
        .map(Cow::into_owned)
        .filter(|c| !c.is_empty() || tool_calls.is_empty());
    let usage = response
        .usage
        .map(|u| Usage::new(u.prompt_tokens, u.completion_tokens))
        .unwrap_or_default();
    Ok(Converted::Chat(Completion {
        content,
        tool_calls,
        finish_reason,
        usage,
    }))
}

/// A feature-extraction answer as one vector per input; token-level
/// features are mean-pooled.
fn feature_response(request: &[u8], body: &[u8]) -> Result<Converted, Failure> {
    if let Some(failure) = body_error(body) {
        return Err(failure);
    }
    let texts: Vec<usize> = EmbeddingRequest::parse(request)
        .ok()
        .and_then(|r| {
            r.texts("")
                .ok()
                .map(|t| t.iter().map(|s| s.len()).collect())
        })
        .unwrap_or_default();
    let features: Features = crate::json::from_slice(body).map_err(|e| {
        Failure::protocol(format!(
            "the answer is not a feature-extraction result: {e}"
        ))
    })?;
    let vectors = match features {
        Features::One(v) => vec![v],
        Features::Rows(rows) => rows,
        Features::Tokens(inputs) => inputs.into_iter().map(mean_pool).collect(),
    };
    if vectors.len() != texts.len() {
        return Err(Failure::protocol(format!(
            "the answer has {} vectors for {} inputs",
            vectors.len(),
            texts.len()
        )));
    }
    let prompt_tokens = texts.iter().map(|&n| estimate(n)).sum();
    Ok(Converted::Embeddings(Embeddings {
        vectors,
        usage: Usage::new(prompt_tokens, 0),
    }))
}

/// The mean over tokens of token-level features.
fn mean_pool(tokens: Vec<Vec<f32>>) -> Vec<f32> {
    let Some(width) = tokens.first().map(Vec::len) else {
        return Vec::new();
    };
    let mut sum = vec![0f64; width];
    for token in &tokens {
        for (s, x) in sum.iter_mut().zip(token) {
            *s += f64::from(*x);
        }
    }
    let n = tokens.len() as f64;
    sum.into_iter().map(|s| (s / n) as f32).collect()
}

// === errors ===

/// A `{"error": …}` object in a 200 body.
fn body_error(body: &[u8]) -> Option<Failure> {
    let trimmed = body.trim_ascii_start();
    if trimmed.first() != Some(&b'{') {
        return None;
    }
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow, default)]
        error: Option<&'a RawValue>,
    }
    let peek: Peek<'_> = crate::json::from_slice(body).ok()?;
    peek.error.filter(|e| e.get() != "null")?;
    Some(error_failure(Cause::InBand, body))
}

/// The message and code of a TGI or Inference API error body.
fn read_error(body: &[u8]) -> Option<(String, Option<String>, Option<f64>)> {
    let parsed: ErrorBody<'_> = crate::json::from_slice(body).ok()?;
    let (message, code) = match parsed.error? {
        ErrorField::Text(t) => (t.into_owned(), None),
        ErrorField::List(items) => (items.join("; "), None),
        ErrorField::Object(o) => (
            o.message.map(Cow::into_owned)?,
            o.kind
                .map(Cow::into_owned)
                .or_else(|| o.http_status_code.map(|c| c.to_string())),
        ),
    };
    let code = parsed.error_type.map(Cow::into_owned).or(code);
    Some((message, code, parsed.estimated_time))
}

/// A failure from an error event or body: TGI's shapes first, then the common ones.
fn error_failure(cause: Cause, body: &[u8]) -> Failure {
    let (message, code) = match read_error(body) {
        Some((message, code, _)) => (message, code),
        None => super::error_message(body),
    };
    let mut failure = Failure::new(cause, message);
    failure.code = code;
    failure
}

/// An HTTP error: 503 with `estimated_time` (a model still loading) may be
/// retried after that many seconds.
fn hf_failure(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
    let mut failure = super::status_failure(status, headers, body);
    if let Some((message, code, estimated)) = read_error(body) {
        failure.message = truncate(message, 500);
        failure.code = code;
        if status == StatusCode::SERVICE_UNAVAILABLE
            && let Some(secs) = estimated.filter(|s| s.is_finite() && *s >= 0.0)
        {
            failure.retry_after = Some(std::time::Duration::from_secs_f64(secs));
        }
    }
    failure
}

// === streams ===

/// `/generate_stream` → OpenAI chunks. Special tokens are not text; text that
/// may be the start of a stop string is held back until it is known not to
/// be, so a matched stop string never reaches the client.
type GenerateStream = Framed<GenerateState>;

struct GenerateState {
    writer: ChunkWriter,
    hints: Hints,
    /// Generated text not yet sent: a possible start of a stop string.
    held: String,
    usage: Option<Usage>,
}

impl Framed<GenerateState> {
    fn new(writer: ChunkWriter, hints: Hints) -> Self {
        Framed::sse(GenerateState {
            writer,
            hints,
            held: String::new(),
            usage: None,
        })
    }
}

impl Handler for GenerateState {
    fn event(&mut self, event: Event<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        self.token(event.data, out)
    }

    fn end(&mut self, _out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() {
            Ok(())
        } else {
            Err(Failure::protocol(
                "the stream ended before its last token event",
            ))
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl GenerateState {
    fn token(&mut self, data: &str, out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() {
            return Ok(());
        }
        let event: StreamEvent<'_> = serde_json::from_str(data)
            .map_err(|e| Failure::protocol(format!("an event is not a TGI token event: {e}")))?;
        if event.error.is_some_and(|e| e.get() != "null") {
            return Err(error_failure(Cause::InBand, data.as_bytes()));
        }
        self.writer.role(out);
        if let Some(prompt) = self.hints.echo.take() {
            self.writer.content(out, &prompt);
        }
        if let Some(token) = &event.token
            && !token.special
        {
            self.held.push_str(&token.text);
            let safe = self.safe_len();
            self.writer.content(out, &self.held[..safe]);
            self.held.drain(..safe);
        }
        if event.generated_text.is_some() || event.details.is_some() {
            let reason = event
                .details
                .as_ref()
                .and_then(|d| d.finish_reason.as_deref());
            let rest = if reason.is_none_or(|r| r == "stop_sequence") {
                strip_stop(&self.held, &self.hints.stops)
            } else {
                &self.held
            };
            self.writer.content(out, rest);
            self.held.clear();
            self.usage = event
                .details
                .as_ref()
                .and_then(|d| Some(Usage::new(d.input_length?, d.generated_tokens?)));
            self.writer.finish(out, finish_reason(reason), self.usage);
        }
        Ok(())
    }

    /// How much of the held text cannot be the start of a stop string.
    fn safe_len(&self) -> usize {
        let held = self.held.as_str();
        held.char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &held[i..];
                self.hints
                    .stops
                    .iter()
                    .any(|s| s.starts_with(tail) || tail.starts_with(s.as_str()))
            })
            .unwrap_or(held.len())
    }
}

/// Messages API stream → OpenAI chunks with our ids, one role delta,
/// OpenAI finish reasons, and usage when the client asked.
type MessagesStream = Framed<MessagesState>;

struct MessagesState {
    writer: ChunkWriter,
    ids: String,
    /// TGI's tool-call index → ours.
    calls: Vec<(u64, u32)>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl Framed<MessagesState> {
    fn new(writer: ChunkWriter, ids: String) -> Self {
        Framed::sse(MessagesState {
            writer,
            ids,
            calls: Vec::new(),
            finish: None,
            usage: None,
        })
    }
}

impl Handler for MessagesState {
    fn event(&mut self, event: Event<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        self.chunk(event.data, out)
    }

    fn end(&mut self, out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() {
            Ok(())
        } else if self.finish.is_some() {
            // Finished, but closed before `[DONE]`.
            self.end_stream(out);
            Ok(())
        } else {
            Err(Failure::protocol("the stream ended before it was finished"))
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl MessagesState {
    fn chunk(&mut self, data: &str, out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() {
            return Ok(());
        }
        if data.starts_with("[DONE]") {
            self.end_stream(out);
            return Ok(());
        }
        let chunk: ChatChunk<'_> = serde_json::from_str(data)
            .map_err(|e| Failure::protocol(format!("an event is not a chat chunk: {e}")))?;
        if chunk.error.is_some_and(|e| e.get() != "null") {
            return Err(error_failure(Cause::InBand, data.as_bytes()));
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(Usage::new(u.prompt_tokens, u.completion_tokens));
        }
        for choice in chunk.choices {
            if let Some(delta) = choice.delta {
                if let Some(text) = &delta.content {
                    self.writer.content(out, text);
                }
                if let Some(raw) = delta.tool_calls {
                    for call in delta_calls(raw)? {
                        self.tool_call(call, out)?;
                    }
                }
            }
            if let Some(reason) = choice.finish_reason.as_deref().filter(|r| !r.is_empty()) {
                self.finish = Some(finish_reason(Some(reason)));
            }
        }
        Ok(())
    }

    fn tool_call(&mut self, call: WireToolCall<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        let theirs = call.index.unwrap_or(0);
        let fragment = match call.function.arguments {
            Some(raw) => serde_json::from_str::<Cow<'_, str>>(raw.get()).unwrap_or_default(),
            None => Cow::Borrowed(""),
        };
        match call.function.name.filter(|n| !n.is_empty()) {
            Some(name) => {
                let id = format!("{}{}", self.ids, self.writer.tool_call_count());
                let ours = self.writer.tool_call(out, &id, &name, &fragment);
                self.calls.retain(|(t, _)| *t != theirs);
                self.calls.push((theirs, ours));
            }
            None => {
                let ours = self
                    .calls
                    .iter()
                    .find(|(t, _)| *t == theirs)
                    .map(|(_, o)| *o)
                    .ok_or_else(|| {
                        Failure::protocol("tool-call arguments arrived before the call's name")
                    })?;
                self.writer.tool_arguments(out, ours, &fragment);
            }
        }
        Ok(())
    }

    fn end_stream(&mut self, out: &mut BytesMut) {
        let reason = if self.writer.tool_call_count() > 0 {
            FinishReason::ToolCalls
        } else {
            self.finish.unwrap_or(FinishReason::Stop)
        };
        self.writer.finish(out, reason, self.usage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn provider(options: Value) -> Result<HuggingFace, Vec<String>> {
        let raw: raw::Provider = serde_json::from_value(options).unwrap();
        let mut problems = Vec::new();
        let path = Path::root().key("providers").key("hf");
        match adapter("hf", &raw, &path, &mut problems) {
            Some(hf) if problems.is_empty() => Ok(hf),
            _ => Err(problems.iter().map(ToString::to_string).collect()),
        }
    }

    fn tgi(api: &str, template: Option<&str>) -> HuggingFace {
        let mut options =
            json!({"type": "huggingface", "base_url": "http://tgi:8080/", "api": api});
        if let Some(t) = template {
            options["chat_template"] = json!(t);
        }
        provider(options).unwrap()
    }

    fn body_json(r: &UpstreamRequest) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    fn chat_body(extra: Value) -> Vec<u8> {
        let mut body = json!({"model": "alias", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::to_vec(&body).unwrap()
    }

    // === config ===

    #[test]
    fn options_are_checked_at_their_yaml_path() {
        let cases: &[(Value, &str)] = &[
            (
                json!({"type": "huggingface", "base_url": "http://tgi:8080", "api": "generate"}),
                "providers.hf.chat_template: `chat_template` is required",
            ),
            (
                json!({"type": "huggingface", "base_url": "http://tgi:8080", "api": "generate", "chat_template": "llama4"}),
                "providers.hf.chat_template: \"llama4\" is not a built-in template",
            ),
            (
                json!({"type": "huggingface", "base_url": "http://tgi:8080", "chat_template": "llama3"}),
                "providers.hf.chat_template: `chat_template` applies to `api: generate`",
            ),
            (
                json!({"type": "huggingface", "base_url": "http://tgi:8080", "api": "generate", "chat_template": "llama3", "eos_token": "</s>"}),
                "providers.hf.eos_token: `eos_token` applies to a Jinja",
            ),
            (
                json!({"type": "huggingface", "base_url": "http://tgi:8080", "api": "generate", "chat_template": "{% if %}"}),
                "providers.hf.chat_template: the Jinja template does not compile",
            ),
            (
                json!({"type": "huggingface", "api": "generate", "chat_template": "llama3"}),
                "`base_url` is required",
            ),
            (
                json!({"type": "huggingface", "base_url": "http://tgi:8080", "api": "chat"}),
                "unknown variant `chat`",
            ),
            (
                json!({"type": "huggingface", "base_url": "http://tgi:8080", "templat": "x"}),
                "unknown field `templat`",
            ),
            (
                json!({"type": "huggingface", "base_url": "http://tgi:8080", "default_max_new_tokens": 0}),
                "providers.hf.default_max_new_tokens: must be at least 1",
            ),
        ];
        for (options, expected) in cases {
            let problems = provider(options.clone()).unwrap_err();
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{options}: {problems:?}"
            );
        }
        let hf =
            provider(json!({"type": "huggingface", "api": "inference", "chat_template": "chatml"}))
                .unwrap();
        assert_eq!(hf.base, INFERENCE_API);
        assert!(hf.supports(Endpoint::Embeddings));
        assert!(!tgi("messages", None).supports(Endpoint::Embeddings));
        assert!(tgi("messages", None).supports(Endpoint::Completions));
    }

    // === requests ===

    #[test]
    fn generate_renders_the_template_and_maps_parameters() {
        let hf = tgi("generate", Some("llama3"));
        let body = chat_body(json!({"temperature": 0, "top_p": 1, "max_tokens": 64,
            "stop": ["END"], "seed": 7, "user": "u1", "presence_penalty": 0.5}));
        let r = hf
            .generate_request(Endpoint::Chat, &body, false, "m")
            .unwrap();
        assert_eq!(r.uri, "http://tgi:8080/generate");
        assert!(!r.stream);
        assert_eq!(
            body_json(&r),
            json!({
                "inputs": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                "parameters": {"max_new_tokens": 64, "do_sample": false, "stop": ["END", "<|eot_id|>"],
                               "seed": 7, "return_full_text": false, "details": true}
            })
        );
        let body = chat_body(
            json!({"temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.3,
            "max_completion_tokens": 12, "max_tokens": 99, "stream": true,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}),
        );
        let r = hf
            .generate_request(Endpoint::Chat, &body, true, "m")
            .unwrap();
        assert_eq!(r.uri, "http://tgi:8080/generate_stream");
        assert!(r.stream);
        assert!(r.fixed.contains(&(
            http::header::ACCEPT,
            http::HeaderValue::from_static("text/event-stream")
        )));
        assert_eq!(
            body_json(&r)["parameters"],
            json!({"max_new_tokens": 12, "temperature": 0.7, "top_p": 0.9, "do_sample": true,
                   "frequency_penalty": 0.3, "stop": ["<|eot_id|>"],
                   "grammar": {"type": "json", "value": {"type": "object", "properties": {"a": {"type": "integer"}}}},
                   "return_full_text": false, "details": true})
        );
        let r = hf
            .generate_request(
                Endpoint::Chat,
                &chat_body(json!({"response_format": {"type": "json_object"}})),
                false,
                "m",
            )
            .unwrap();
        let p = &body_json(&r)["parameters"];
        assert_eq!(
            p["grammar"],
            json!({"type": "json", "value": {"type": "object"}})
        );
        assert_eq!(p["max_new_tokens"], 1024, "the provider default");
        assert_eq!(p["do_sample"], true, "OpenAI samples unless told otherwise");
    }

    #[test]
    fn template_stops_fill_up_to_four() {
        let hf = tgi("generate", Some("chatml"));
        let body = chat_body(json!({"stop": ["a", "b", "c"]}));
        let r = hf
            .generate_request(Endpoint::Chat, &body, false, "m")
            .unwrap();
        assert_eq!(
            body_json(&r)["parameters"]["stop"],
            json!(["a", "b", "c", "<|im_end|>"])
        );
    }

    #[test]
    fn completions_send_the_prompt_as_is() {
        for api in ["messages", "generate"] {
            let hf = if api == "generate" {
                tgi(api, Some("llama2"))
            } else {
                tgi(api, None)
            };
            let body =
                br#"{"model":"alias","prompt":"Once upon a time","max_tokens":5,"echo":true}"#;
            let r = hf
                .generate_request(Endpoint::Completions, body, false, "m")
                .unwrap();
            assert_eq!(r.uri, "http://tgi:8080/generate");
            assert_eq!(
                body_json(&r),
                json!({"inputs": "Once upon a time", "parameters": {"max_new_tokens": 5, "do_sample": true,
                       "return_full_text": false, "details": true}})
            );
            let e = hf
                .generate_request(
                    Endpoint::Completions,
                    br#"{"model":"a","prompt":"x","suffix":"y"}"#,
                    false,
                    "m",
                )
                .unwrap_err();
            assert_eq!(e.param, Some("suffix"));
        }
        let hints = Hints::of(
            Endpoint::Completions,
            br#"{"model":"a","prompt":"P: ","echo":true,"stop":"\n"}"#,
            None,
        );
        assert_eq!(hints.echo.as_deref(), Some("P: "));
        assert_eq!(hints.stops, ["\n"]);
    }

    #[test]
    fn inference_sends_the_task_payload_to_the_model() {
        let hf = provider(
            json!({"type": "huggingface", "api": "inference", "chat_template": "mistral"}),
        )
        .unwrap();
        let r = hf
            .generate_request(
                Endpoint::Chat,
                &chat_body(json!({"stream": true, "top_p": 0.5})),
                true,
                "mistralai/Mistral-7B-Instruct-v0.2",
            )
            .unwrap();
        assert_eq!(
            r.uri,
            "https://router.huggingface.co/hf-inference/models/mistralai/Mistral-7B-Instruct-v0.2"
        );
        assert!(
            !r.stream,
            "the Inference API answers whole; the stream is synthesized"
        );
        assert_eq!(
            body_json(&r),
            json!({"inputs": "<s>[INST] Be brief.\n\nHi [/INST]",
                   "parameters": {"max_new_tokens": 1024, "top_p": 0.5, "do_sample": true, "stop": ["</s>"],
                                  "return_full_text": false, "details": true},
                   "options": {"use_cache": false}})
        );
        for format in [
            json!({"type": "json_object"}),
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
        ] {
            let e = hf
                .generate_request(
                    Endpoint::Chat,
                    &chat_body(json!({"response_format": format})),
                    false,
                    "m",
                )
                .unwrap_err();
            assert_eq!(e.param, Some("response_format"));
        }
        let r = hf
            .embed_request(br#"{"model":"a","input":"hello"}"#, "BAAI/bge small")
            .unwrap();
        assert_eq!(
            r.uri,
            "https://router.huggingface.co/hf-inference/models/BAAI/bge%20small/pipeline/feature-extraction"
        );
        assert_eq!(body_json(&r), json!({"inputs": ["hello"]}));
        let e = hf
            .embed_request(br#"{"model":"a","input":"x","dimensions":8}"#, "m")
            .unwrap_err();
        assert_eq!(e.param, Some("dimensions"));
    }

    #[test]
    fn what_text_generation_cannot_honour_is_refused() {
        let hf = tgi("generate", Some("llama3"));
        let cases: &[(Value, &str)] = &[
            (json!({"n": 2}), "n"),
            (json!({"logprobs": true}), "logprobs"),
            (
                json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
                "tools",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
                "messages",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "tool_call_id": "1", "content": "b"}]}),
                "messages",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
                "response_format",
            ),
        ];
        for (extra, param) in cases {
            let e = hf
                .generate_request(Endpoint::Chat, &chat_body(extra.clone()), false, "m")
                .unwrap_err();
            assert_eq!(e.param, Some(*param), "{extra}");
            assert!(e.message.contains("provider hf"), "{}", e.message);
        }
        let declined = chat_body(
            json!({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}),
        );
        assert!(
            hf.generate_request(Endpoint::Chat, &declined, false, "m")
                .is_ok()
        );
        let e = tgi("generate", Some("gemma"))
            .generate_request(
                Endpoint::Chat,
                &chat_body(json!({"messages": [{"role": "assistant", "content": "a"}]})),
                false,
                "m",
            )
            .unwrap_err();
        assert_eq!(e.param, Some("messages"));
        assert!(e.message.contains("alternate"), "{}", e.message);
    }

    #[test]
    fn messages_rewrites_only_what_tgi_reads_differently() {
        let hf = tgi("messages", None);
        let body = br#"{"model":"alias","messages":[{"role":"user","content":"caf\u00e9"}],"top_p":1,"temperature":0.2,"response_format":{"type":"json_schema","json_schema":{"name":"p","strict":true,"schema":{"type":"object"}}},"tools":null,"stream":true,"tool_prompt":"x"}"#;
        let r = hf
            .messages_request(body, true, &"meta-llama/Llama-3.1-8B-Instruct".into())
            .unwrap();
        assert_eq!(r.uri, "http://tgi:8080/v1/chat/completions");
        assert!(r.stream);
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"{"stream_options":{"include_usage":true},"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{"role":"user","content":"caf\u00e9"}],"top_p":null,"temperature":0.2,"response_format":{"type":"json","value":{"type":"object"}},"tools":null,"stream":true,"tool_prompt":"x"}"#
        );
        let body = br#"{"model":"a","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":false},"response_format":{"type":"text"},"top_p":0.5}"#;
        let r = hf.messages_request(body, true, &"m".into()).unwrap();
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true},"response_format":null,"top_p":0.5}"#
        );
        let body = br#"{"model":"a","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":null}"#;
        let r = hf.messages_request(body, true, &"m".into()).unwrap();
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#
        );
        let body = br#"{"model":"a","messages":[{"role":"user","content":"x"}],"response_format":{"type":"regex","value":"[0-9]+"}}"#;
        let r = hf.messages_request(body, false, &"a".into()).unwrap();
        assert_eq!(&r.body[..], &body[..], "TGI's own shapes pass as sent");
        for extra in [r#""n":3"#, r#""logprobs":true"#] {
            let body =
                format!(r#"{{"model":"a","messages":[{{"role":"user","content":"x"}}],{extra}}}"#);
            assert!(
                hf.messages_request(body.as_bytes(), false, &"m".into())
                    .is_err(),
                "{extra}"
            );
        }
    }

    // === whole answers ===

    fn chat_of(c: Result<Converted, Failure>) -> Completion {
        match c.unwrap() {
            Converted::Chat(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn generate_answers_become_completions() {
        let hints = Hints {
            stops: vec!["END".into(), "<|eot_id|>".into()],
            echo: None,
        };
        let cases: &[(&str, &str, FinishReason, Usage)] = &[
            (
                r#"{"generated_text":"Hello!","details":{"finish_reason":"eos_token","generated_tokens":3,"seed":null,"prefill":[],"tokens":[]}}"#,
                "Hello!",
                FinishReason::Stop,
                Usage::new(12, 3),
            ),
            (
                r#"{"generated_text":"one two END","details":{"finish_reason":"stop_sequence","generated_tokens":4}}"#,
                "one two ",
                FinishReason::Stop,
                Usage::new(12, 4),
            ),
            (
                r#"{"generated_text":"cut END","details":{"finish_reason":"length","generated_tokens":9}}"#,
                "cut END",
                FinishReason::Length,
                Usage::new(12, 9),
            ),
            (
                r#"[{"generated_text":"from the API END"}]"#,
                "from the API ",
                FinishReason::Stop,
                Usage::new(12, 4),
            ),
        ];
        for (body, text, reason, usage) in cases {
            let c = chat_of(generate_response(body.as_bytes(), &hints, 12));
            assert_eq!(c.content.as_deref(), Some(*text), "{body}");
            assert_eq!(c.finish_reason, *reason, "{body}");
            assert_eq!(c.usage, *usage, "{body}");
        }
        let echo = Hints {
            stops: vec![],
            echo: Some("Once".into()),
        };
        let c = chat_of(generate_response(
            br#"{"generated_text":" upon"}"#,
            &echo,
            1,
        ));
        assert_eq!(c.content.as_deref(), Some("Once upon"));
        let f = generate_response(
            br#"{"error":"Input validation error","error_type":"validation"}"#,
            &hints,
            1,
        )
        .unwrap_err();
        assert_eq!(
            (f.cause, f.message.as_str(), f.code.as_deref()),
            (Cause::InBand, "Input validation error", Some("validation"))
        );
        assert_eq!(
            generate_response(b"[]", &hints, 1).unwrap_err().cause,
            Cause::Protocol
        );
        assert_eq!(
            generate_response(b"<html>", &hints, 1).unwrap_err().cause,
            Cause::Protocol
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-prompt-tokens", "42".parse().unwrap());
        assert_eq!(header_count(&headers, "x-prompt-tokens"), Some(42));
    }

    #[test]
    fn messages_answers_get_openai_shapes() {
        let body = br#"{"object":"chat.completion","id":"","created":1,"model":"tgi","system_fingerprint":"3.3.6-native","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"logprobs":null,"finish_reason":"stop_sequence"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        let c = chat_of(messages_response(body, "call_r_"));
        assert_eq!(c.content.as_deref(), Some("Hi"));
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert_eq!(c.usage, Usage::new(5, 2));
        for arguments in [r#""{\"city\":\"Oslo\"}""#, r#"{"city":"Oslo"}"#] {
            let body = format!(
                r#"{{"id":"","choices":[{{"index":0,"message":{{"role":"assistant","tool_calls":[{{"id":"0","type":"function","function":{{"description":null,"name":"get_weather","arguments":{arguments}}}}}]}},"finish_reason":"eos_token"}}],"usage":{{"prompt_tokens":9,"completion_tokens":8,"total_tokens":17}}}}"#
            );
            let c = chat_of(messages_response(body.as_bytes(), "call_r_"));
            assert_eq!(c.content, None);
            assert_eq!(c.finish_reason, FinishReason::ToolCalls);
            assert_eq!(
                c.tool_calls,
                [ToolCallOut {
                    id: "call_r_0".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Oslo"}"#.into()
                }]
            );
        }
        let c = chat_of(messages_response(
            br#"{"choices":[{"message":{"content":"x"},"finish_reason":"length"}]}"#,
            "c",
        ));
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert!(messages_response(br#"{"choices":[]}"#, "c").is_err());
    }

    #[test]
    fn feature_extraction_answers_become_vectors() {
        let two = br#"{"model":"a","input":["a","bbbbb"]}"#;
        let one = br#"{"model":"a","input":"abc"}"#;
        let Converted::Embeddings(e) = feature_response(two, b"[[1.0,2.0],[3.0,4.5]]").unwrap()
        else {
            panic!()
        };
        assert_eq!(e.vectors, [vec![1.0, 2.0], vec![3.0, 4.5]]);
        assert_eq!(e.usage, Usage::new(3, 0), "estimated: 1 + 2 tokens");
        let Converted::Embeddings(e) = feature_response(one, b"[0.5,-0.5]").unwrap() else {
            panic!()
        };
        assert_eq!(e.vectors, [vec![0.5, -0.5]]);
        let Converted::Embeddings(e) = feature_response(one, b"[[[1,2],[3,4]]]").unwrap() else {
            panic!()
        };
        assert_eq!(
            e.vectors,
            [vec![2.0, 3.0]],
            "token features are mean-pooled"
        );
        assert_eq!(
            feature_response(two, b"[[1.0]]").unwrap_err().cause,
            Cause::Protocol
        );
        assert_eq!(
            feature_response(one, br#"{"error":"boom"}"#)
                .unwrap_err()
                .message,
            "boom"
        );
    }

    // === errors ===

    #[test]
    fn errors_keep_the_backends_words_and_code() {
        let h = HeaderMap::new();
        let f = hf_failure(
            StatusCode::SERVICE_UNAVAILABLE,
            &h,
            br#"{"error":"Model meta-llama/Llama-3.1-8B-Instruct is currently loading","estimated_time":20.5}"#,
        );
        assert_eq!(f.cause, Cause::Status(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(
            f.retry_after,
            Some(std::time::Duration::from_secs_f64(20.5))
        );
        assert!(f.message.contains("currently loading"));
        let f = hf_failure(StatusCode::SERVICE_UNAVAILABLE, &h, br#"{"error":"down"}"#);
        assert_eq!(f.retry_after, None);
        let f = hf_failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            &h,
            br#"{"error":"Input validation error: `temperature` must be strictly positive","error_type":"validation"}"#,
        );
        assert_eq!(
            f.message,
            "Input validation error: `temperature` must be strictly positive"
        );
        assert_eq!(f.code.as_deref(), Some("validation"));
        let f = hf_failure(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"error":["a is wrong","b too"]}"#,
        );
        assert_eq!(f.message, "a is wrong; b too");
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        let f = hf_failure(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"error":"Model is overloaded","error_type":"overloaded"}"#,
        );
        assert_eq!(f.retry_after, Some(std::time::Duration::from_secs(3)));
        assert_eq!(f.code.as_deref(), Some("overloaded"));
        let f = hf_failure(StatusCode::BAD_GATEWAY, &h, b"<html>bad gateway</html>");
        assert_eq!(f.message, "<html>bad gateway</html>");
    }

    // === streams ===

    fn shape(text: bool, include_usage: bool) -> Shape<'static> {
        Shape {
            id: "chatcmpl-r".into(),
            text,
            model: "alias",
            include_usage,
            base64: false,
        }
    }

    /// Feeds `pieces`, then ends the stream; the output, or the failure.
    fn run(d: &mut dyn Decoder, pieces: &[&[u8]]) -> (String, Result<(), Failure>) {
        let mut out = BytesMut::new();
        for piece in pieces {
            if let Err(f) = d.feed(piece, &mut out) {
                return (String::from_utf8(out.to_vec()).unwrap(), Err(f));
            }
        }
        let r = d.finish(&mut out);
        (String::from_utf8(out.to_vec()).unwrap(), r)
    }

    /// The chunks' JSON with `created` zeroed, and whether `[DONE]` ended them.
    fn chunks(out: &str) -> (Vec<Value>, bool) {
        let mut done = false;
        let mut v = Vec::new();
        for data in out.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let mut c: Value = serde_json::from_str(data).unwrap();
            c["created"] = json!(0);
            v.push(c);
        }
        (v, done)
    }

    /// The same output whatever the read boundaries: whole, byte by byte,
    /// and split in two at every position.
    fn every_split(
        make: &dyn Fn() -> Box<dyn Decoder>,
        stream: &[u8],
    ) -> (Vec<Value>, bool, Result<(), Failure>) {
        let (whole, r) = run(&mut *make(), &[stream]);
        let expected = chunks(&whole);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            chunks(&run(&mut *make(), &bytes).0),
            expected,
            "byte by byte"
        );
        for i in 0..stream.len() {
            let (out, _) = run(&mut *make(), &[&stream[..i], &stream[i..]]);
            assert_eq!(chunks(&out), expected, "split at {i}");
        }
        (expected.0, expected.1, r)
    }

    fn generate_stream(text: bool, usage: bool, stops: &[&str]) -> Box<dyn Decoder> {
        Box::new(GenerateStream::new(
            ChunkWriter::new(&shape(text, usage)),
            Hints {
                stops: stops.iter().map(|s| s.to_string()).collect(),
                echo: None,
            },
        ))
    }

    const TOKENS: &str = concat!(
        ":\n\n",
        "data:{\"index\":1,\"token\":{\"id\":9906,\"text\":\"Hel\",\"logprob\":-0.1,\"special\":false},\"generated_text\":null,\"details\":null}\n\n",
        "data: {\"index\":2,\"token\":{\"id\":2,\"text\":\"lo \u{e9}\",\"logprob\":-0.3,\"special\":false},\"generated_text\":null,\"details\":null}\r\n\r\n",
        "data: {\"index\":3,\"token\":{\"id\":3,\"text\":\"!\",\"logprob\":-0.3,\"special\":false},\"generated_text\":null,\"details\":null}\n\n",
        "data: {\"index\":4,\"token\":{\"id\":128009,\"text\":\"<|eot_id|>\",\"logprob\":-0.01,\"special\":true},\"generated_text\":\"Hello \u{e9}!\",\"details\":{\"finish_reason\":\"eos_token\",\"generated_tokens\":4,\"seed\":null,\"input_length\":12}}\n\n",
    );

    #[test]
    fn token_events_become_chunks_at_any_boundary() {
        let make = || generate_stream(false, true, &["<|eot_id|>"]);
        let (c, done, r) = every_split(&make, TOKENS.as_bytes());
        r.unwrap();
        assert!(done);
        let deltas: Vec<&Value> = c.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert_eq!(c.len(), 6, "{c:?}");
        assert_eq!(*deltas[0], json!({"role": "assistant", "content": ""}));
        assert_eq!(*deltas[1], json!({"content": "Hel"}));
        assert_eq!(*deltas[2], json!({"content": "lo \u{e9}"}));
        assert_eq!(*deltas[3], json!({"content": "!"}));
        assert_eq!(
            c[4]["choices"][0],
            json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"})
        );
        assert_eq!(c[5]["choices"], json!([]));
        assert_eq!(
            c[5]["usage"],
            json!({"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16})
        );
        for chunk in &c {
            assert_eq!(chunk["id"], "chatcmpl-r");
            assert_eq!(chunk["model"], "alias");
            assert_eq!(chunk["object"], "chat.completion.chunk");
        }
        let mut d = make();
        run(&mut *d, &[TOKENS.as_bytes()]).1.unwrap();
        assert_eq!(d.usage(), Some(Usage::new(12, 4)));
    }

    fn token(text: &str) -> String {
        format!(
            "data: {{\"index\":1,\"token\":{{\"id\":1,\"text\":{},\"logprob\":0,\"special\":false}},\"generated_text\":null,\"details\":null}}\n\n",
            serde_json::to_string(text).unwrap()
        )
    }

    fn last(text: &str, reason: &str) -> String {
        format!(
            "data: {{\"index\":9,\"token\":{{\"id\":1,\"text\":{},\"logprob\":0,\"special\":false}},\"generated_text\":\"…\",\"details\":{{\"finish_reason\":\"{reason}\",\"generated_tokens\":5,\"seed\":1,\"input_length\":2}}}}\n\n",
            serde_json::to_string(text).unwrap()
        )
    }

    fn text_of(out: &str) -> String {
        chunks(out)
            .0
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .or(c["choices"][0]["text"].as_str())
                    .map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn a_matched_stop_string_never_reaches_the_client() {
        let stream = [
            token("The answer is 4"),
            token("2. E"),
            token("ND of"),
            last(" story.\nEND", "stop_sequence"),
        ]
        .concat();
        let (out, r) = run(
            &mut *generate_stream(false, false, &["\nEND", "STOP"]),
            &[stream.as_bytes()],
        );
        r.unwrap();
        assert_eq!(text_of(&out), "The answer is 42. END of story.");
        let stream = [token("x \nE"), last("ND", "stop_sequence")].concat();
        let (out, _) = run(
            &mut *generate_stream(false, false, &["\nEND"]),
            &[stream.as_bytes()],
        );
        assert_eq!(text_of(&out), "x ");
        let stream = [token("a \nE"), last("!", "length")].concat();
        let (out, _) = run(
            &mut *generate_stream(false, false, &["\nEND"]),
            &[stream.as_bytes()],
        );
        assert_eq!(
            text_of(&out),
            "a \nE!",
            "held text is released when it was no stop"
        );
        assert_eq!(
            chunks(&out).0.last().unwrap()["choices"][0]["finish_reason"],
            "length"
        );
    }

    #[test]
    fn legacy_completion_streams_carry_text_and_echo() {
        let mut d = GenerateStream::new(
            ChunkWriter::new(&shape(true, false)),
            Hints {
                stops: vec![],
                echo: Some("Once".into()),
            },
        );
        let stream = [token(" upon"), last(" a time", "length")].concat();
        let (out, r) = run(&mut d, &[stream.as_bytes()]);
        r.unwrap();
        let (c, done) = chunks(&out);
        assert!(done);
        assert!(c.iter().all(|c| c["object"] == "text_completion"));
        assert_eq!(text_of(&out), "Once upon a time");
        assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn generate_stream_errors() {
        let cases: &[(&str, Cause, &str, Option<&str>)] = &[
            (
                "data: {\"error\":\"Request failed during generation: CUDA OOM\",\"error_type\":\"generation\"}\n\n",
                Cause::InBand,
                "Request failed during generation: CUDA OOM",
                Some("generation"),
            ),
            (
                "data:{\"error\":\"Incomplete generation stream\",\"error_type\":\"incomplete_generation_stream\"}\n\n",
                Cause::InBand,
                "Incomplete generation stream",
                Some("incomplete_generation_stream"),
            ),
            ("data: not json\n\n", Cause::Protocol, "", None),
        ];
        for (stream, cause, message, code) in cases {
            let input = format!("{}{stream}", token("Hi"));
            let (out, r) = run(
                &mut *generate_stream(false, false, &[]),
                &[input.as_bytes()],
            );
            let f = r.unwrap_err();
            assert_eq!(f.cause, *cause, "{stream}");
            if !message.is_empty() {
                assert_eq!(f.message, *message);
                assert_eq!(f.code.as_deref(), *code);
            }
            assert!(!out.contains("[DONE]"));
        }
        let (_, r) = run(
            &mut *generate_stream(false, false, &[]),
            &[token("Hi").as_bytes()],
        );
        assert_eq!(
            r.unwrap_err().cause,
            Cause::Protocol,
            "no last event: truncated"
        );
    }

    fn messages_stream(usage: bool) -> Box<dyn Decoder> {
        Box::new(MessagesStream::new(
            ChunkWriter::new(&shape(false, usage)),
            "call_r_".into(),
        ))
    }

    const TGI_CHAT: &str = concat!(
        "data: {\"object\":\"chat.completion.chunk\",\"id\":\"\",\"created\":1,\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"system_fingerprint\":\"3.3.6-native\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        ": keep-alive\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"id\":\"\",\"created\":1,\"model\":\"m\",\"system_fingerprint\":\"f\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"lo\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"id\":\"\",\"created\":1,\"model\":\"m\",\"system_fingerprint\":\"f\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":\"stop_sequence\"}],\"usage\":null}\n\n",
        "data: {\"object\":\"chat.completion.chunk\",\"id\":\"\",\"created\":1,\"model\":\"m\",\"system_fingerprint\":\"f\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn tgi_chat_chunks_are_normalised_at_any_boundary() {
        let (c, done, r) = every_split(&|| messages_stream(true), TGI_CHAT.as_bytes());
        r.unwrap();
        assert!(done);
        assert_eq!(c.len(), 5, "{c:?}");
        assert_eq!(
            c[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(
            c[1]["choices"][0]["delta"],
            json!({"content": "Hel"}),
            "role only once"
        );
        assert_eq!(c[2]["choices"][0]["delta"], json!({"content": "lo"}));
        assert_eq!(c[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            c[4]["usage"],
            json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
        );
        for chunk in &c {
            assert_eq!(chunk["id"], "chatcmpl-r");
            assert_eq!(chunk["model"], "alias");
            assert!(chunk.get("system_fingerprint").is_none());
        }
        let mut d = messages_stream(false);
        let (out, r) = run(&mut *d, &[TGI_CHAT.as_bytes()]);
        r.unwrap();
        assert_eq!(chunks(&out).0.len(), 4, "no usage chunk unless asked");
        assert_eq!(
            d.usage(),
            Some(Usage::new(7, 3)),
            "usage is known all the same"
        );
    }

    #[test]
    fn tgi_tool_call_deltas_become_openai_tool_call_deltas() {
        let delta = |calls: &str| {
            format!(
                "data: {{\"object\":\"chat.completion.chunk\",\"id\":\"\",\"created\":1,\"model\":\"m\",\"system_fingerprint\":\"f\",\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"tool_calls\":{calls}}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
            )
        };
        for (first, rest) in [
            (
                r#"[{"index":0,"id":"0","type":"function","function":{"name":"get_weather","arguments":"{"}}]"#,
                r#"[{"index":0,"id":"0","type":"function","function":{"name":null,"arguments":" \"city\": \"Oslo\"}"}}]"#,
            ),
            (
                r#"{"index":0,"id":"0","type":"function","function":{"name":"get_weather","arguments":"{"}}"#,
                r#"{"index":0,"id":"0","type":"function","function":{"name":null,"arguments":" \"city\": \"Oslo\"}"}}"#,
            ),
        ] {
            let stream = [delta(first), delta(rest), "data: [DONE]\n\n".to_owned()].concat();
            let (c, done, r) = every_split(&|| messages_stream(false), stream.as_bytes());
            r.unwrap();
            assert!(done);
            assert_eq!(c.len(), 4, "{c:?}");
            assert_eq!(
                c[1]["choices"][0]["delta"],
                json!({"tool_calls": [{"index": 0, "id": "call_r_0", "type": "function", "function": {"name": "get_weather", "arguments": "{"}}]})
            );
            assert_eq!(
                c[2]["choices"][0]["delta"],
                json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"city\": \"Oslo\"}"}}]})
            );
            assert_eq!(c[3]["choices"][0]["finish_reason"], "tool_calls");
        }
    }

    #[test]
    fn tgi_chat_errors_and_cut_streams() {
        for (event, message, code) in [
            (
                r#"{"error":{"message":"Input validation error: stop sequences","http_status_code":422}}"#,
                "Input validation error: stop sequences",
                Some("422"),
            ),
            (
                r#"{"error":"Request failed during generation","error_type":"generation"}"#,
                "Request failed during generation",
                Some("generation"),
            ),
        ] {
            let stream = format!("data: {event}\n\ndata: [DONE]\n\n");
            let (_, r) = run(&mut *messages_stream(false), &[stream.as_bytes()]);
            let f = r.unwrap_err();
            assert_eq!(
                (f.cause, f.message.as_str(), f.code.as_deref()),
                (Cause::InBand, message, code)
            );
        }
        let cut = TGI_CHAT.split(": keep-alive").next().unwrap();
        let (_, r) = run(&mut *messages_stream(false), &[cut.as_bytes()]);
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);
        let no_done = TGI_CHAT.trim_end_matches("data: [DONE]\n\n");
        let (out, r) = run(&mut *messages_stream(false), &[no_done.as_bytes()]);
        r.unwrap();
        assert!(
            out.ends_with("data: [DONE]\n\n"),
            "finished, then closed: still a clean end"
        );
    }
}
