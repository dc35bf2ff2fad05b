//! `type: cohere`: Cohere's native API.
//!
//! Chat goes to Chat v2 (`POST /v2/chat`, SSE events) by default, or to the
//! older Chat v1 (`POST /v1/chat`, NDJSON events) with `api: v1`. Legacy
//! completions are a one-message chat. Embeddings go to `POST /v2/embed`
//! with the provider's `input_type`, always asking for float vectors (the
//! gateway encodes base64 itself when the client wants it).
//!
//! Usage is `tokens.input_tokens` / `tokens.output_tokens`; billed units are
//! not tokens the model saw and are ignored (embeddings fall back to them only
//! when the answer has no token counts). Cohere's tool plan (the text a model
//! writes before its tool calls) becomes assistant content, and an assistant
//! message with tool calls sends its content back as the tool plan.

use std::borrow::Cow;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Adapter, AuthStyle, Built, Converted, UpstreamRequest};
use crate::call::Call;
use crate::chat::{
    ChatRequest, Completion, Content, EmbeddingRequest, Embeddings, FinishReason, FunctionDef,
    Message, Part, Role, ToolCallOut, ToolChoice, unsupported,
};
use crate::config::{Path, Problem, raw};
use crate::error::Error;
use crate::openai::{Endpoint, Usage};
use crate::route::ModelName;
use crate::stream::chunks::{ChunkWriter, Shape};
use crate::stream::sse::Event;
use crate::stream::{Decoder, Framed, Handler};
use crate::upstream::{Cause, Failure, truncate};

/// The public API's root.
const DEFAULT_BASE: &str = "https://api.cohere.com";

/// Most texts one `/v2/embed` call takes.
const MAX_EMBED_TEXTS: usize = 96;

/// Sent for a function tool that declares no parameters (Cohere requires them).
static NO_PARAMETERS: LazyLock<Box<RawValue>> = LazyLock::new(|| {
    RawValue::from_string(r#"{"type":"object","properties":{}}"#.to_owned())
        .expect("a valid JSON object")
});

// === options ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Which chat API: `v2` (default) or `v1`.
    #[serde(default)]
    api: Api,
    /// The embed `input_type` (default `search_document`).
    #[serde(default)]
    input_type: InputType,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Api {
    V1,
    #[default]
    V2,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum InputType {
    #[default]
    SearchDocument,
    SearchQuery,
    Classification,
    Clustering,
}

pub fn build(
    id: &str,
    raw: &raw::Provider,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Built> {
    let options: Options = super::options(raw, path, problems)?;
    let base = super::base_url(raw, Some(DEFAULT_BASE), path, problems)?;
    Some(Built {
        adapter: Box::new(Cohere::new(id, &base, &options)),
        transport: None,
        default_auth: AuthStyle::Bearer,
    })
}

#[derive(Debug)]
pub struct Cohere {
    provider: String,
    api: Api,
    input_type: InputType,
    chat: Uri,
    embed: Uri,
}

impl Cohere {
    fn new(provider: &str, base: &str, options: &Options) -> Self {
        let chat = match options.api {
            Api::V1 => "/v1/chat",
            Api::V2 => "/v2/chat",
        };
        Cohere {
            provider: provider.to_owned(),
            api: options.api,
            input_type: options.input_type,
            chat: super::join(base, chat),
            embed: super::join(base, "/v2/embed"),
        }
    }
}

// === wire types: requests ===

/// Sampling and length fields, the same in Chat v1 and v2.
#[derive(Debug, Default, Serialize)]
struct Sampling<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
}

#[derive(Debug, Serialize)]
struct V2Request<'a> {
    model: &'a str,
    messages: Vec<V2Message<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<V2Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<V2ResponseFormat<'a>>,
    #[serde(flatten)]
    sampling: Sampling<'a>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum V2Message<'a> {
    System {
        content: String,
    },
    User {
        content: V2UserContent<'a>,
    },
    Assistant {
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_plan: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<V2ToolCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: String,
    },
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum V2UserContent<'a> {
    Text(&'a str),
    Parts(Vec<V2Part<'a>>),
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum V2Part<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: V2Image<'a> },
}

#[derive(Debug, Serialize)]
struct V2Image<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct V2ToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: V2Function<'a>,
}

#[derive(Debug, Serialize)]
struct V2Function<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Debug, Serialize)]
struct V2Tool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: V2FunctionDef<'a>,
}

#[derive(Debug, Serialize)]
struct V2FunctionDef<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: &'a RawValue,
}

/// `{"type": "json_object", "json_schema"?: {…}}`.
#[derive(Debug, Serialize)]
struct V2ResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<&'a RawValue>,
}

#[derive(Debug, Serialize)]
struct V1Request<'a> {
    model: &'a str,
    /// The current user turn (empty when the turn is tool results).
    message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    chat_history: Vec<V1Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preamble: Option<String>,
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<V1Tool<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_results: Vec<V1ToolResult<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<V1ResponseFormat<'a>>,
    #[serde(flatten)]
    sampling: Sampling<'a>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum V1Message<'a> {
    Text {
        role: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<V1ToolCall<'a>>,
    },
    Tool {
        role: &'static str,
        tool_results: Vec<V1ToolResult<'a>>,
    },
}

#[derive(Debug, Serialize)]
struct V1ToolCall<'a> {
    name: &'a str,
    parameters: Value,
}

#[derive(Debug, Serialize)]
struct V1ToolResult<'a> {
    call: V1ToolCall<'a>,
    outputs: Vec<Value>,
}

#[derive(Debug, Serialize)]
struct V1Tool<'a> {
    name: &'a str,
    description: &'a str,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    parameter_definitions: IndexMap<String, V1Parameter>,
}

#[derive(Debug, PartialEq, Serialize)]
struct V1Parameter {
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    required: bool,
}

/// `{"type": "json_object", "schema"?: {…}}`.
#[derive(Debug, Serialize)]
struct V1ResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'a RawValue>,
}

#[derive(Debug, Serialize)]
struct EmbedRequest<'a> {
    model: &'a str,
    texts: Vec<&'a str>,
    input_type: InputType,
    embedding_types: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimension: Option<u64>,
}

// === wire types: answers ===

/// `usage.tokens` (v2) or `meta.tokens` / `meta.billed_units`; the schema
/// types the counts as numbers, so they are read as floats.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct Tokens {
    #[serde(default)]
    input_tokens: Option<f64>,
    #[serde(default)]
    output_tokens: Option<f64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct V2Usage {
    #[serde(default)]
    tokens: Option<Tokens>,
}

/// `meta` of Chat v1 and Embed answers.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct Meta {
    #[serde(default)]
    tokens: Option<Tokens>,
    #[serde(default)]
    billed_units: Option<Tokens>,
}

#[derive(Debug, Deserialize)]
struct V2Response<'a> {
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: V2ResponseMessage<'a>,
    #[serde(default)]
    usage: Option<V2Usage>,
}

#[derive(Debug, Default, Deserialize)]
struct V2ResponseMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Vec<V2Block<'a>>>,
    #[serde(borrow, default)]
    tool_plan: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<V2ToolCallIn<'a>>>,
}

/// A content block: `text`, or `thinking` (left out).
#[derive(Debug, Default, Deserialize)]
struct V2Block<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// A tool call of an answer, or a fragment of one in a stream.
#[derive(Debug, Default, Deserialize)]
struct V2ToolCallIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<V2FunctionIn<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct V2FunctionIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    /// A JSON string as documented; an object is taken as its JSON text.
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

/// One Chat v2 stream event; `delta` is read according to `type`.
#[derive(Debug, Deserialize)]
struct V2Event<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<V2Delta<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct V2Delta<'a> {
    #[serde(borrow, default)]
    message: Option<V2DeltaMessage<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<V2Usage>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
}

/// `content` and `tool_calls` are objects in block events but arrays in
/// `message-start`, so they stay raw until the event type is known.
#[derive(Debug, Default, Deserialize)]
struct V2DeltaMessage<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_plan: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
struct V1Response<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    generation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<V1ToolCallIn<'a>>>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Debug, Deserialize)]
struct V1ToolCallIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
}

/// One line of a Chat v1 stream.
#[derive(Debug, Deserialize)]
struct V1Event<'a> {
    #[serde(borrow, default)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    generation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_call_delta: Option<V1ToolCallDelta<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<V1ToolCallIn<'a>>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response: Option<V1Response<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct V1ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<f64>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parameters: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct EmbedResponse {
    embeddings: EmbedByType,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Debug, Deserialize)]
struct EmbedByType {
    #[serde(default)]
    float: Option<Vec<Vec<f32>>>,
}

/// Every documented error status: `{"id": "…", "message": "…"}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    message: String,
}

// === the adapter ===

impl Adapter for Cohere {
    fn supports(&self, endpoint: Endpoint) -> bool {
        matches!(
            endpoint,
            Endpoint::Chat | Endpoint::Completions | Endpoint::Embeddings
        )
    }

    fn request(&self, call: &Call, model: &ModelName) -> Result<UpstreamRequest, Error> {
        let (uri, body, stream) = match call.endpoint {
            Endpoint::Chat | Endpoint::Completions => {
                let request = ChatRequest::parse(call.endpoint, &call.body)?;
                let body = match self.api {
                    Api::V2 => v2_body(&request, model, &self.provider)?,
                    Api::V1 => v1_body(&request, model, &self.provider)?,
                };
                (&self.chat, body, request.wants_stream())
            }
            Endpoint::Embeddings => {
                let request = EmbeddingRequest::parse(&call.body)?;
                (
                    &self.embed,
                    embed_body(&request, model, self.input_type, &self.provider)?,
                    false,
                )
            }
            Endpoint::Models => return Err(Error::internal("models is not proxied")),
        };
        Ok(UpstreamRequest {
            uri: uri.clone(),
            fixed: &[],
            headers: self.headers(stream),
            body,
            stream,
        })
    }

    fn response(
        &self,
        call: &Call,
        _headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<Converted, Failure> {
        match (call.endpoint, self.api) {
            (Endpoint::Embeddings, _) => embeddings(&body).map(Converted::Embeddings),
            (_, Api::V2) => v2_completion(&body).map(Converted::Chat),
            (_, Api::V1) => v1_completion(&body).map(Converted::Chat),
        }
    }

    fn decoder(&self, call: &Call) -> Box<dyn Decoder> {
        let writer = ChunkWriter::new(&Shape::of(call));
        match self.api {
            Api::V2 => Box::new(V2Stream::new(writer)),
            Api::V1 => Box::new(V1Stream::new(writer)),
        }
    }

    fn failure(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        failure(status, headers, body)
    }
}

impl Cohere {
    /// JSON in; SSE out for a Chat v2 stream. A Chat v1 stream gets no
    /// `accept`, so it comes in Cohere's default framing, NDJSON.
    fn headers(&self, stream: bool) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(super::REQUEST_HEADERS);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let accept = match (stream, self.api) {
            (false, _) => Some("application/json"),
            (true, Api::V2) => Some("text/event-stream"),
            (true, Api::V1) => None,
        };
        if let Some(accept) = accept {
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        }
        headers
    }
}

// === conversions: requests ===

/// Fields that were dropped or moved into Cohere's ranges, for one debug line.
#[derive(Default)]
struct Adjusted(Vec<&'static str>);

impl Adjusted {
    fn log(&self, provider: &str) {
        if !self.0.is_empty() {
            tracing::debug!(
                provider,
                fields = ?self.0,
                "request fields dropped or clamped for Cohere"
            );
        }
    }
}

/// `value` moved into `lo..=hi`, noting a change.
fn clamp(
    value: Option<f64>,
    lo: f64,
    hi: f64,
    field: &'static str,
    adjusted: &mut Adjusted,
) -> Option<f64> {
    let v = value?;
    let c = v.clamp(lo, hi);
    if c != v {
        adjusted.0.push(field);
    }
    Some(c)
}

/// The sampling fields in Cohere's ranges (temperature and penalties 0–1, `p`
/// 0.01–0.99), plus the fields Cohere has no use for, noted as dropped.
fn sampling<'r>(request: &'r ChatRequest<'_>, adjusted: &mut Adjusted) -> Sampling<'r> {
    if request.user.is_some() {
        adjusted.0.push("user");
    }
    if request.parallel_tool_calls.is_some() {
        adjusted.0.push("parallel_tool_calls");
    }
    if request.top_logprobs.is_some() {
        adjusted.0.push("top_logprobs");
    }
    Sampling {
        max_tokens: request.max_tokens(),
        stop_sequences: request.stop.as_ref().map(|s| s.to_vec()),
        temperature: clamp(request.temperature, 0.0, 1.0, "temperature", adjusted),
        p: clamp(request.top_p, 0.01, 0.99, "top_p", adjusted),
        seed: request.seed,
        frequency_penalty: clamp(
            request.frequency_penalty,
            0.0,
            1.0,
            "frequency_penalty",
            adjusted,
        ),
        presence_penalty: clamp(
            request.presence_penalty,
            0.0,
            1.0,
            "presence_penalty",
            adjusted,
        ),
    }
}

/// `response_format`: `Some(schema)` when the answer must be a JSON object
/// (with the schema when one was given), `None` for text.
fn json_format<'r>(request: &'r ChatRequest<'_>) -> Result<Option<Option<&'r RawValue>>, Error> {
    let Some(format) = &request.response_format else {
        return Ok(None);
    };
    match format.kind.as_ref() {
        "text" => Ok(None),
        "json_object" => Ok(Some(None)),
        "json_schema" => Ok(Some(format.json_schema.as_ref().and_then(|s| s.schema))),
        other => Err(Error::invalid_param(
            "response_format",
            format!("unknown response_format type {other:?}"),
        )),
    }
}

/// The request's function tools; any other kind is refused.
fn function_tools<'r>(
    request: &'r ChatRequest<'_>,
    provider: &str,
) -> Result<Vec<&'r FunctionDef<'r>>, Error> {
    let mut out = Vec::new();
    for tool in request.tools.iter().flatten() {
        match (&*tool.kind, &tool.function) {
            ("function", Some(function)) => out.push(function),
            _ => {
                return Err(unsupported(
                    "tools",
                    provider,
                    "only function tools are available",
                ));
            }
        }
    }
    Ok(out)
}

/// OpenAI's `arguments` text as Cohere takes it: never empty.
fn arguments_text(arguments: &str) -> &str {
    if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    }
}

/// A Chat v2 body.
fn v2_body(request: &ChatRequest<'_>, model: &str, provider: &str) -> Result<Bytes, Error> {
    request.refuse_unsupported(provider, true)?;
    request.refuse_echo(provider)?;
    let mut adjusted = Adjusted::default();
    let mut messages = Vec::with_capacity(request.messages.len());
    for m in &request.messages {
        messages.push(v2_message(m, provider)?);
    }

    let mut tools = function_tools(request, provider)?;
    let tool_choice = match &request.tool_choice {
        None => None,
        Some(ToolChoice::Mode(mode)) => match mode.as_ref() {
            "auto" => None,
            "none" => Some("NONE"),
            "required" => Some("REQUIRED"),
            other => {
                return Err(Error::invalid_param(
                    "tool_choice",
                    format!("unknown tool_choice {other:?}"),
                ));
            }
        },
        // Cohere cannot name a tool: offer only that one, and require a call.
        Some(ToolChoice::Named(named)) => {
            let name = named.function.name.as_ref();
            tools.retain(|f| f.name == name);
            if tools.is_empty() {
                return Err(Error::invalid_param(
                    "tool_choice",
                    format!("tool_choice names {name:?}, which is not in `tools`"),
                ));
            }
            Some("REQUIRED")
        }
    };
    let no_parameters: &RawValue = &NO_PARAMETERS;
    let tools: Vec<V2Tool<'_>> = tools
        .into_iter()
        .map(|f| V2Tool {
            kind: "function",
            function: V2FunctionDef {
                name: &f.name,
                description: f.description.as_deref(),
                parameters: f.parameters.unwrap_or(no_parameters),
            },
        })
        .collect();
    let tool_choice = if tools.is_empty() { None } else { tool_choice };

    let response_format = json_format(request)?.map(|schema| V2ResponseFormat {
        kind: "json_object",
        json_schema: schema,
    });
    let body = V2Request {
        model,
        messages,
        stream: request.wants_stream(),
        tools,
        tool_choice,
        response_format,
        sampling: sampling(request, &mut adjusted),
    };
    adjusted.log(provider);
    serialize(&body)
}

fn v2_message<'r>(m: &'r Message<'_>, provider: &str) -> Result<V2Message<'r>, Error> {
    let text = || m.content.as_ref().map(Content::text).unwrap_or_default();
    Ok(match m.role {
        Role::System | Role::Developer => V2Message::System { content: text() },
        Role::User => V2Message::User {
            content: match &m.content {
                None => V2UserContent::Text(""),
                Some(Content::Text(t)) => V2UserContent::Text(t),
                Some(Content::Parts(parts)) => {
                    let mut out = Vec::with_capacity(parts.len());
                    for part in parts {
                        out.push(match part {
                            Part::Text { text } => V2Part::Text { text },
                            Part::Refusal { refusal } => V2Part::Text { text: refusal },
                            Part::ImageUrl { image_url } => V2Part::ImageUrl {
                                image_url: V2Image {
                                    url: &image_url.url,
                                    detail: image_url.detail.as_deref(),
                                },
                            },
                            Part::InputAudio {} | Part::File {} => {
                                return Err(unsupported(
                                    "messages",
                                    provider,
                                    "audio and file parts are not available; send text or images",
                                ));
                            }
                        });
                    }
                    V2UserContent::Parts(out)
                }
            },
        },
        Role::Assistant => {
            let calls: Vec<V2ToolCall<'_>> = m
                .tool_calls
                .iter()
                .flatten()
                .map(|c| V2ToolCall {
                    id: &c.id,
                    kind: "function",
                    function: V2Function {
                        name: &c.function.name,
                        arguments: arguments_text(&c.function.arguments),
                    },
                })
                .collect();
            let text = Some(text()).filter(|t| !t.is_empty());
            if calls.is_empty() {
                V2Message::Assistant {
                    content: Some(text.unwrap_or_default()),
                    tool_plan: None,
                    tool_calls: calls,
                }
            } else {
                // The text before tool calls is what Cohere calls the tool plan.
                V2Message::Assistant {
                    content: None,
                    tool_plan: text,
                    tool_calls: calls,
                }
            }
        }
        Role::Tool => V2Message::Tool {
            tool_call_id: tool_call_id(m)?,
            content: text(),
        },
        Role::Function => return Err(function_role(provider)),
    })
}

fn tool_call_id<'r>(m: &'r Message<'_>) -> Result<&'r str, Error> {
    m.tool_call_id
        .as_deref()
        .ok_or_else(|| Error::invalid_param("messages", "a `tool` message needs `tool_call_id`"))
}

fn function_role(provider: &str) -> Error {
    unsupported(
        "messages",
        provider,
        "`function` messages are not available; use `tool` messages",
    )
}

/// A Chat v1 body: system text as `preamble`, the last user turn (or the
/// trailing tool results) as `message` / `tool_results`, the rest as
/// `chat_history`.
fn v1_body(request: &ChatRequest<'_>, model: &str, provider: &str) -> Result<Bytes, Error> {
    request.refuse_unsupported(provider, true)?;
    request.refuse_echo(provider)?;
    let mut adjusted = Adjusted::default();
    let turns: Vec<&Message<'_>> = request
        .messages
        .iter()
        .filter(|m| !matches!(m.role, Role::System | Role::Developer))
        .collect();
    if turns.iter().any(|m| m.role == Role::Function) {
        return Err(function_role(provider));
    }

    // The current turn: the last user message, or the run of tool messages
    // that ends the conversation.
    let tool_run = turns
        .iter()
        .rev()
        .take_while(|m| m.role == Role::Tool)
        .count();
    let (history, message, tool_results) = match turns.last() {
        Some(m) if m.role == Role::User => {
            (&turns[..turns.len() - 1], v1_text(m, provider)?, Vec::new())
        }
        Some(_) if tool_run > 0 => {
            let start = turns.len() - tool_run;
            let results = (start..turns.len())
                .map(|i| v1_tool_result(&turns, i))
                .collect::<Result<Vec<_>, _>>()?;
            (&turns[..start], String::new(), results)
        }
        _ => {
            return Err(Error::invalid_param(
                "messages",
                "Chat v1 answers a user message or tool results: the last message must be `user` or `tool`",
            ));
        }
    };

    let mut chat_history = Vec::with_capacity(history.len());
    let mut i = 0;
    while i < history.len() {
        let m = history[i];
        match m.role {
            Role::User => chat_history.push(V1Message::Text {
                role: "USER",
                message: v1_text(m, provider)?,
                tool_calls: Vec::new(),
            }),
            Role::Assistant => chat_history.push(V1Message::Text {
                role: "CHATBOT",
                message: v1_text(m, provider)?,
                tool_calls: m
                    .tool_calls
                    .iter()
                    .flatten()
                    .map(|c| V1ToolCall {
                        name: &c.function.name,
                        parameters: c.function.arguments_value(),
                    })
                    .collect(),
            }),
            Role::Tool => {
                let end = i + history[i..]
                    .iter()
                    .take_while(|m| m.role == Role::Tool)
                    .count();
                let results = (i..end)
                    .map(|j| v1_tool_result(history, j))
                    .collect::<Result<Vec<_>, _>>()?;
                chat_history.push(V1Message::Tool {
                    role: "TOOL",
                    tool_results: results,
                });
                i = end;
                continue;
            }
            Role::System | Role::Developer | Role::Function => {}
        }
        i += 1;
    }

    let mut tools: Vec<V1Tool<'_>> = function_tools(request, provider)?
        .into_iter()
        .map(|f| V1Tool {
            name: &f.name,
            description: f.description.as_deref().unwrap_or(""),
            parameter_definitions: parameter_definitions(f.parameters),
        })
        .collect();
    match &request.tool_choice {
        None => {}
        Some(ToolChoice::Mode(mode)) if mode == "auto" => {}
        Some(ToolChoice::Mode(mode)) if mode == "none" => {
            if !tool_results.is_empty() {
                return Err(unsupported(
                    "tool_choice",
                    provider,
                    "Chat v1 needs the tools to take tool results; use api: v2",
                ));
            }
            tools.clear();
        }
        Some(_) => {
            return Err(unsupported(
                "tool_choice",
                provider,
                "Chat v1 cannot require a tool call; use api: v2",
            ));
        }
    }

    let response_format = json_format(request)?.map(|schema| V1ResponseFormat {
        kind: "json_object",
        schema,
    });
    let body = V1Request {
        model,
        message,
        chat_history,
        preamble: request.system_text(),
        stream: request.wants_stream(),
        tools,
        tool_results,
        response_format,
        sampling: sampling(request, &mut adjusted),
    };
    adjusted.log(provider);
    serialize(&body)
}

/// A v1 turn's text; Chat v1 takes no images.
fn v1_text(m: &Message<'_>, provider: &str) -> Result<String, Error> {
    if let Some(Content::Parts(parts)) = &m.content
        && parts
            .iter()
            .any(|p| !matches!(p, Part::Text { .. } | Part::Refusal { .. }))
    {
        return Err(unsupported(
            "messages",
            provider,
            "Chat v1 takes text only; images need api: v2",
        ));
    }
    Ok(m.content.as_ref().map(Content::text).unwrap_or_default())
}

/// The tool message `turns[at]` as a v1 tool result: the call it answers
/// (found in the nearest assistant message before it) and its output.
fn v1_tool_result<'r>(turns: &[&'r Message<'_>], at: usize) -> Result<V1ToolResult<'r>, Error> {
    let m = turns[at];
    let id = tool_call_id(m)?;
    let call = turns[..at]
        .iter()
        .rev()
        .find(|t| t.role == Role::Assistant)
        .and_then(|t| t.tool_calls.as_ref())
        .and_then(|calls| calls.iter().find(|c| c.id == id))
        .ok_or_else(|| {
            Error::invalid_param(
                "messages",
                format!(
                    "tool_call_id {id:?} answers no tool call of the assistant message before it"
                ),
            )
        })?;
    let text = m.content.as_ref().map(Content::text).unwrap_or_default();
    // Outputs are a list of objects: an object is wrapped, a list of objects
    // taken as is, anything else becomes `{"result": <text>}`.
    let outputs = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => vec![Value::Object(o)],
        Ok(Value::Array(items)) if items.iter().all(Value::is_object) => items,
        _ => vec![serde_json::json!({ "result": text })],
    };
    Ok(V1ToolResult {
        call: V1ToolCall {
            name: &call.function.name,
            parameters: call.function.arguments_value(),
        },
        outputs,
    })
}

/// A JSON Schema's top-level properties as v1 `parameter_definitions`,
/// with Python type names.
fn parameter_definitions(schema: Option<&RawValue>) -> IndexMap<String, V1Parameter> {
    let Some(schema) = schema.and_then(|s| serde_json::from_str::<Value>(s.get()).ok()) else {
        return IndexMap::new();
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema["properties"].as_object() else {
        return IndexMap::new();
    };
    properties
        .iter()
        .map(|(name, p)| {
            (
                name.clone(),
                V1Parameter {
                    description: p["description"].as_str().map(str::to_owned),
                    kind: python_type(p),
                    required: required.contains(&name.as_str()),
                },
            )
        })
        .collect()
}

fn python_type(schema: &Value) -> String {
    let simple = |t: &str| match t {
        "integer" => "int",
        "number" => "float",
        "boolean" => "bool",
        "object" => "dict",
        "array" => "list",
        _ => "str",
    };
    match schema["type"].as_str() {
        Some("array") => match schema["items"]["type"].as_str() {
            Some(item) => format!("List[{}]", simple(item)),
            None => "list".to_owned(),
        },
        Some(t) => simple(t).to_owned(),
        None => "str".to_owned(),
    }
}

fn embed_body(
    request: &EmbeddingRequest<'_>,
    model: &str,
    input_type: InputType,
    provider: &str,
) -> Result<Bytes, Error> {
    let texts = request.texts(provider)?;
    if texts.len() > MAX_EMBED_TEXTS {
        return Err(unsupported(
            "input",
            provider,
            "at most 96 inputs per request",
        ));
    }
    serialize(&EmbedRequest {
        model,
        texts,
        input_type,
        embedding_types: ["float"],
        output_dimension: request.dimensions,
    })
}

fn serialize(body: &impl Serialize) -> Result<Bytes, Error> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("cannot write the Cohere request: {e}")))
}

// === conversions: answers ===

fn count(n: Option<f64>) -> u64 {
    n.filter(|n| n.is_finite() && *n > 0.0)
        .map_or(0, |n| n.round() as u64)
}

fn usage_of(tokens: Option<Tokens>) -> Usage {
    let t = tokens.unwrap_or_default();
    Usage::new(count(t.input_tokens), count(t.output_tokens))
}

/// Cohere's finish reason (v1 or v2) in OpenAI's words, or the failure it
/// reports. `error` is the message a stream's `message-end` may carry.
fn finish_reason(reason: Option<&str>, error: Option<&str>) -> Result<FinishReason, Failure> {
    let error = error.filter(|e| !e.trim().is_empty());
    let failed = matches!(reason, Some("ERROR" | "TIMEOUT" | "USER_CANCEL"));
    if failed || error.is_some() {
        let reason = reason.unwrap_or("ERROR");
        let message = match error {
            Some(e) => e.to_owned(),
            None => format!("the generation ended with finish_reason {reason}"),
        };
        let mut failure = Failure::new(Cause::InBand, message);
        failure.code = Some(reason.to_owned());
        return Err(failure);
    }
    Ok(match reason {
        Some("MAX_TOKENS" | "ERROR_LIMIT") => FinishReason::Length,
        Some("TOOL_CALL") => FinishReason::ToolCalls,
        Some("ERROR_TOXIC") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    })
}

/// `tool_calls` whenever there were tool calls, as OpenAI reports it.
fn with_tools(reason: FinishReason, tool_calls: u32) -> FinishReason {
    if tool_calls > 0 && reason == FinishReason::Stop {
        FinishReason::ToolCalls
    } else {
        reason
    }
}

/// The id of the `index`th tool call of a v1 answer (v1 calls have none).
fn v1_call_id(generation: Option<&str>, index: u32) -> String {
    match generation {
        Some(g) if !g.is_empty() => format!("call_{g}_{index}"),
        _ => format!("call_{index}"),
    }
}

fn malformed(what: &str, e: serde_json::Error) -> Failure {
    Failure::protocol(format!("{what} is not Cohere's shape: {e}"))
}

fn v2_completion(body: &[u8]) -> Result<Completion, Failure> {
    let r: V2Response<'_> =
        crate::json::from_slice(body).map_err(|e| malformed("the answer", e))?;
    let reason = finish_reason(r.finish_reason.as_deref(), None)?;
    let mut content = r.message.tool_plan.map(Cow::into_owned).unwrap_or_default();
    for block in r.message.content.iter().flatten() {
        if block.kind.as_deref().unwrap_or("text") == "text"
            && let Some(text) = &block.text
        {
            content.push_str(text);
        }
    }
    let tool_calls: Vec<ToolCallOut> = r
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let function = c.function.unwrap_or_default();
            ToolCallOut {
                id: c.id.map_or_else(|| format!("call_{i}"), Cow::into_owned),
                name: function.name.map(Cow::into_owned).unwrap_or_default(),
                arguments: super::arguments_text(function.arguments, ""),
            }
        })
        .collect();
    Ok(Completion {
        content: (!content.is_empty() || tool_calls.is_empty()).then_some(content),
        finish_reason: with_tools(reason, tool_calls.len() as u32),
        tool_calls,
        usage: usage_of(r.usage.and_then(|u| u.tokens)),
    })
}

fn v1_calls(generation: Option<&str>, calls: &[V1ToolCallIn<'_>], first: u32) -> Vec<ToolCallOut> {
    calls
        .iter()
        .zip(first..)
        .map(|(c, i)| ToolCallOut {
            id: v1_call_id(generation, i),
            name: c.name.clone().into_owned(),
            arguments: match c.parameters {
                None => "{}".to_owned(),
                Some(p) => p.get().to_owned(),
            },
        })
        .collect()
}

fn v1_completion(body: &[u8]) -> Result<Completion, Failure> {
    let r: V1Response<'_> =
        crate::json::from_slice(body).map_err(|e| malformed("the answer", e))?;
    let reason = finish_reason(r.finish_reason.as_deref(), None)?;
    let tool_calls = v1_calls(
        r.generation_id.as_deref(),
        r.tool_calls.as_deref().unwrap_or_default(),
        0,
    );
    let content = r.text.map(Cow::into_owned).unwrap_or_default();
    Ok(Completion {
        content: (!content.is_empty() || tool_calls.is_empty()).then_some(content),
        finish_reason: with_tools(reason, tool_calls.len() as u32),
        tool_calls,
        usage: usage_of(r.meta.and_then(|m| m.tokens)),
    })
}

fn embeddings(body: &[u8]) -> Result<Embeddings, Failure> {
    let r: EmbedResponse = crate::json::from_slice(body).map_err(|e| malformed("the answer", e))?;
    let vectors = r
        .embeddings
        .float
        .ok_or_else(|| Failure::protocol("the answer has no float embeddings"))?;
    let meta = r.meta.unwrap_or_default();
    let input = meta
        .tokens
        .and_then(|t| t.input_tokens)
        .or(meta.billed_units.and_then(|t| t.input_tokens));
    Ok(Embeddings {
        vectors,
        usage: Usage::new(count(input), 0),
    })
}

/// Cohere's error body (or any common shape) → a failure. 498 (a deny-listed
/// token in the request or answer) is the client's content: a 400.
fn failure(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
    let (message, code) = match crate::json::from_slice::<ErrorBody>(body) {
        Ok(e) => (e.message, None),
        Err(_) => super::error_message(body),
    };
    let status = if status.as_u16() == 498 {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    Failure {
        cause: Cause::Status(status),
        message: truncate(message, 500),
        code,
        retry_after: super::retry_after(headers),
    }
}

/// An event that is not Cohere's stream shape: an error body (a proxy's, or
/// one Cohere wrote mid-stream) if it reads as one, else a protocol failure.
fn stray(data: &str) -> Failure {
    match serde_json::from_str::<Value>(data) {
        Ok(v) if v.get("message").is_some() || v.get("error").is_some() => {
            super::in_band_failure(data.as_bytes())
        }
        _ => Failure::protocol("a stream event has no type"),
    }
}

// === stream decoding: Chat v2 (SSE) ===

/// Relays a Chat v2 event stream as OpenAI chunks.
pub type V2Stream = Framed<V2State>;

pub struct V2State {
    writer: ChunkWriter,
    usage: Option<Usage>,
    /// The open content block is a thinking block (not relayed).
    thinking: bool,
    /// The OpenAI index of the open tool call.
    tool: Option<u32>,
}

impl Framed<V2State> {
    fn new(writer: ChunkWriter) -> Self {
        Framed::sse(V2State {
            writer,
            usage: None,
            thinking: false,
            tool: None,
        })
    }
}

impl Handler for V2State {
    fn event(&mut self, event: Event<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        self.translate(event, out)
    }

    fn end(&mut self, _out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() {
            Ok(())
        } else {
            Err(Failure::protocol("the stream ended before message-end"))
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl V2State {
    fn translate(&mut self, event: Event<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() {
            return Ok(());
        }
        let data = event.data.trim();
        if data.starts_with("[DONE]") {
            return Err(Failure::protocol("the stream ended before message-end"));
        }
        let e: V2Event<'_> =
            serde_json::from_str(data).map_err(|e| malformed("a stream event", e))?;
        let kind = match e.kind.as_deref() {
            Some(kind) => kind,
            None if !event.event.is_empty() => event.event,
            None => return Err(stray(data)),
        };
        let delta = e.delta.unwrap_or_default();
        let message = delta.message.unwrap_or_default();
        match kind {
            "message-start" => self.writer.role(out),
            "content-start" => {
                let block: V2Block<'_> = parse_part(message.content, "content-start")?;
                self.thinking = block.kind.as_deref() == Some("thinking");
            }
            "content-delta" => {
                let block: V2Block<'_> = parse_part(message.content, "content-delta")?;
                if !self.thinking
                    && let Some(text) = &block.text
                {
                    self.writer.content(out, text);
                }
            }
            "content-end" => self.thinking = false,
            "tool-plan-delta" => {
                if let Some(plan) = &message.tool_plan {
                    self.writer.content(out, plan);
                }
            }
            "tool-call-start" => {
                let call: V2ToolCallIn<'_> = parse_part(message.tool_calls, "tool-call-start")?;
                let function = call.function.unwrap_or_default();
                let Some(name) = function.name else {
                    return Err(Failure::protocol("a tool-call-start has no function name"));
                };
                let id = call.id.map_or_else(
                    || format!("call_{}", self.writer.tool_call_count()),
                    Cow::into_owned,
                );
                let arguments = super::arguments_text(function.arguments, "");
                self.tool = Some(self.writer.tool_call(out, &id, &name, &arguments));
            }
            "tool-call-delta" => {
                let Some(index) = self.tool else {
                    return Err(Failure::protocol("a tool-call-delta outside a tool call"));
                };
                let call: V2ToolCallIn<'_> = parse_part(message.tool_calls, "tool-call-delta")?;
                let fragment = super::arguments_text(call.function.and_then(|f| f.arguments), "");
                self.writer.tool_arguments(out, index, &fragment);
            }
            "tool-call-end" => self.tool = None,
            "message-end" => {
                if let Some(usage) = delta.usage {
                    self.usage = Some(usage_of(usage.tokens));
                }
                let reason = finish_reason(delta.finish_reason.as_deref(), delta.error.as_deref())?;
                let reason = with_tools(reason, self.writer.tool_call_count());
                self.writer.finish(out, reason, self.usage);
            }
            // citation-start, citation-end, debug, and types yet to come.
            _ => {}
        }
        Ok(())
    }
}

/// `delta.message.content` or `.tool_calls` of a block event, as `T`.
fn parse_part<'a, T: Deserialize<'a> + Default>(
    raw: Option<&'a RawValue>,
    event: &str,
) -> Result<T, Failure> {
    match raw {
        None => Ok(T::default()),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| Failure::protocol(format!("a {event} event is not Cohere's shape: {e}"))),
    }
}

// === stream decoding: Chat v1 (NDJSON) ===

/// Relays a Chat v1 NDJSON stream as OpenAI chunks.
pub type V1Stream = Framed<V1State>;

pub struct V1State {
    writer: ChunkWriter,
    usage: Option<Usage>,
    generation: Option<String>,
    /// Cohere's tool-call index → the OpenAI index.
    tools: Vec<(Option<u64>, u32)>,
    content_sent: bool,
}

impl Framed<V1State> {
    fn new(writer: ChunkWriter) -> Self {
        Framed::ndjson(V1State {
            writer,
            usage: None,
            generation: None,
            tools: Vec::new(),
            content_sent: false,
        })
    }
}

impl Handler for V1State {
    fn event(&mut self, event: Event<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        self.line(event.data, out)
    }

    fn end(&mut self, _out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() {
            Ok(())
        } else {
            Err(Failure::protocol("the stream ended before stream-end"))
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl V1State {
    fn line(&mut self, line: &str, out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() {
            return Ok(());
        }
        let e: V1Event<'_> =
            serde_json::from_str(line).map_err(|e| malformed("a stream line", e))?;
        let Some(kind) = e.event_type.as_deref() else {
            return Err(stray(line));
        };
        match kind {
            "stream-start" => {
                self.generation = e.generation_id.map(Cow::into_owned);
                self.writer.role(out);
            }
            "text-generation" => self.content(out, e.text.as_deref()),
            "tool-calls-chunk" => {
                let d = e.tool_call_delta.unwrap_or_default();
                self.content(out, d.text.as_deref());
                let key = d.index.filter(|i| *i >= 0.0).map(|i| i as u64);
                if let Some(name) = &d.name {
                    let id = v1_call_id(self.generation.as_deref(), self.writer.tool_call_count());
                    let index = self.writer.tool_call(out, &id, name, "");
                    self.tools.push((key, index));
                }
                if let Some(fragment) = &d.parameters {
                    let index = self
                        .tools
                        .iter()
                        .rev()
                        .find(|(k, _)| key.is_none() || *k == key)
                        .map(|(_, i)| *i)
                        .ok_or_else(|| {
                            Failure::protocol("tool-call parameters before the call's name")
                        })?;
                    self.writer.tool_arguments(out, index, fragment);
                }
            }
            // The whole calls: relayed only when no chunks carried them.
            "tool-calls-generation" if self.writer.tool_call_count() == 0 => {
                if !self.content_sent {
                    self.content(out, e.text.as_deref());
                }
                self.whole_calls(out, e.tool_calls.as_deref().unwrap_or_default());
            }
            "stream-end" => {
                let response = e.response.unwrap_or_default();
                if let Some(meta) = response.meta {
                    self.usage = Some(usage_of(meta.tokens));
                }
                let reason = e.finish_reason.or(response.finish_reason);
                let reason = finish_reason(reason.as_deref(), None)?;
                // A stream that carried no text or calls: take them from the
                // consolidated response.
                if !self.content_sent && self.writer.tool_call_count() == 0 {
                    self.content(out, response.text.as_deref());
                }
                if self.writer.tool_call_count() == 0 {
                    self.whole_calls(out, response.tool_calls.as_deref().unwrap_or_default());
                }
                let reason = with_tools(reason, self.writer.tool_call_count());
                self.writer.finish(out, reason, self.usage);
            }
            // search-queries-generation, search-results, citation-generation, debug.
            _ => {}
        }
        Ok(())
    }

    fn content(&mut self, out: &mut BytesMut, text: Option<&str>) {
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            self.writer.content(out, text);
            self.content_sent = true;
        }
    }

    fn whole_calls(&mut self, out: &mut BytesMut, calls: &[V1ToolCallIn<'_>]) {
        let first = self.writer.tool_call_count();
        for call in v1_calls(self.generation.as_deref(), calls, first) {
            self.writer
                .tool_call(out, &call.id, &call.name, &call.arguments);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape(text: bool, include_usage: bool) -> Shape<'static> {
        Shape {
            id: "chatcmpl-1".into(),
            text,
            model: "alias",
            include_usage,
            base64: false,
        }
    }

    fn v2(body: Value) -> Result<Value, Error> {
        let text = body.to_string();
        let r = ChatRequest::parse(Endpoint::Chat, text.as_bytes())?;
        let bytes = v2_body(&r, "command-a-03-2025", "co")?;
        Ok(serde_json::from_slice(&bytes).unwrap())
    }

    fn v1(body: Value) -> Result<Value, Error> {
        let text = body.to_string();
        let r = ChatRequest::parse(Endpoint::Chat, text.as_bytes())?;
        let bytes = v1_body(&r, "command-r-plus", "co")?;
        Ok(serde_json::from_slice(&bytes).unwrap())
    }

    /// Chunks of an OpenAI stream, checking it ends with `[DONE]`.
    fn chunks(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    /// Feeds `input` split at `at`, then finishes; `created` is blanked so
    /// runs compare equal.
    fn run(
        mut decoder: Box<dyn Decoder>,
        input: &[u8],
        at: usize,
    ) -> (String, Result<(), Failure>, Option<Usage>) {
        let mut out = BytesMut::new();
        let mut result = decoder.feed(&input[..at], &mut out);
        if result.is_ok() {
            result = decoder.feed(&input[at..], &mut out);
        }
        if result.is_ok() {
            result = decoder.finish(&mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        let mut parts = text.split("\"created\":");
        let mut blanked = parts.next().unwrap_or_default().to_owned();
        for part in parts {
            blanked.push_str("\"created\":0");
            blanked.push_str(part.trim_start_matches(|c: char| c.is_ascii_digit()));
        }
        (blanked, result, decoder.usage())
    }

    fn v2_stream(include_usage: bool) -> Box<dyn Decoder> {
        Box::new(V2Stream::new(ChunkWriter::new(&shape(
            false,
            include_usage,
        ))))
    }

    fn v1_stream(include_usage: bool) -> Box<dyn Decoder> {
        Box::new(V1Stream::new(ChunkWriter::new(&shape(
            false,
            include_usage,
        ))))
    }

    // --- requests ---

    #[test]
    fn a_v2_request_keeps_the_conversation_and_maps_every_field() {
        let body = v2(json!({
            "model": "alias",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}]},
                {"role": "assistant", "content": "I will look it up.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":12}"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:00"}]},
                {"role": "assistant", "content": "12 degrees at 14:00."},
                {"role": "user", "content": "Thanks"}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "get_time"}}
            ],
            "tool_choice": "required",
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": true}},
            "temperature": 1.5, "top_p": 1, "max_completion_tokens": 300, "max_tokens": 10,
            "stop": ["END", "STOP"], "seed": 7, "frequency_penalty": -0.5, "presence_penalty": 0.25,
            "stream": true, "stream_options": {"include_usage": true}, "user": "u-1",
            "parallel_tool_calls": false
        }))
        .unwrap();
        assert_eq!(
            body,
            json!({
                "model": "command-a-03-2025",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "system", "content": "Use metric."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Weather here?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}]},
                    {"role": "assistant", "tool_plan": "I will look it up.", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":12}"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "14:00"},
                    {"role": "assistant", "content": "12 degrees at 14:00."},
                    {"role": "user", "content": "Thanks"}
                ],
                "stream": true,
                "tools": [
                    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
                ],
                "tool_choice": "REQUIRED",
                "response_format": {"type": "json_object", "json_schema": {"type": "object"}},
                "max_tokens": 300,
                "stop_sequences": ["END", "STOP"],
                "temperature": 1.0,
                "p": 0.99,
                "seed": 7,
                "frequency_penalty": 0.0,
                "presence_penalty": 0.25
            })
        );
    }

    #[test]
    fn v2_tool_choice_and_response_format_forms() {
        let tools = json!([
            {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "b", "parameters": {"type": "object"}}}
        ]);
        let base = |extra: Value| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        let named = v2(base(
            json!({"tool_choice": {"type": "function", "function": {"name": "b"}}}),
        ))
        .unwrap();
        assert_eq!(named["tool_choice"], "REQUIRED");
        assert_eq!(named["tools"].as_array().unwrap().len(), 1);
        assert_eq!(named["tools"][0]["function"]["name"], "b");
        assert_eq!(
            v2(base(json!({"tool_choice": "none"}))).unwrap()["tool_choice"],
            "NONE"
        );
        assert!(
            v2(base(json!({"tool_choice": "auto"})))
                .unwrap()
                .get("tool_choice")
                .is_none()
        );
        let e = v2(base(
            json!({"tool_choice": {"type": "function", "function": {"name": "zz"}}}),
        ))
        .unwrap_err();
        assert_eq!(e.param, Some("tool_choice"));

        let plain = v2(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                              "response_format": {"type": "json_object"}}),
        )
        .unwrap();
        assert_eq!(plain["response_format"], json!({"type": "json_object"}));
        assert_eq!(plain["stream"], false);
        let text = v2(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                             "response_format": {"type": "text"}, "tool_choice": "required"}),
        )
        .unwrap();
        assert!(text.get("response_format").is_none());
        assert!(
            text.get("tool_choice").is_none(),
            "no tools, no tool_choice"
        );
    }

    #[test]
    fn refusals_name_the_field_and_the_provider() {
        let user = json!([{"role": "user", "content": "hi"}]);
        for (extra, param) in [
            (json!({"n": 2}), "n"),
            (json!({"logprobs": true}), "logprobs"),
            (
                json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
                "tools",
            ),
        ] {
            let mut body = json!({"model": "m", "messages": user});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            for e in [v2(body.clone()).unwrap_err(), v1(body).unwrap_err()] {
                assert_eq!(e.param, Some(param));
                assert!(e.message.contains("provider co"), "{}", e.message);
                assert_eq!(e.status(), 400);
            }
        }
        let audio = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]});
        assert_eq!(v2(audio).unwrap_err().param, Some("messages"));
        let image = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]});
        assert!(v1(image).unwrap_err().message.contains("api: v2"));
        let required = json!({"model": "m", "messages": user, "tool_choice": "required",
                              "tools": [{"type": "function", "function": {"name": "a"}}]});
        assert_eq!(v1(required).unwrap_err().param, Some("tool_choice"));
        let stray = json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c9", "content": "x"}]});
        assert!(v1(stray).unwrap_err().message.contains("c9"));
        let last = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Once"}]});
        assert_eq!(v1(last).unwrap_err().param, Some("messages"));
    }

    #[test]
    fn a_v1_request_splits_preamble_history_and_message() {
        let body = v1(json!({
            "model": "alias",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "days": {"type": "integer"},
                    "tags": {"type": "array", "items": {"type": "string"}}},
                    "required": ["city"]}}}],
            "temperature": 0.2, "max_tokens": 50, "stream": true,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
        }))
        .unwrap();
        assert_eq!(
            body,
            json!({
                "model": "command-r-plus",
                "message": "Weather in Oslo?",
                "chat_history": [
                    {"role": "USER", "message": "Hi"},
                    {"role": "CHATBOT", "message": "Hello!"}
                ],
                "preamble": "Be brief.",
                "stream": true,
                "tools": [{"name": "get_weather", "description": "Weather", "parameter_definitions": {
                    "city": {"description": "City name", "type": "str", "required": true},
                    "days": {"type": "int", "required": false},
                    "tags": {"type": "List[str]", "required": false}}}],
                "response_format": {"type": "json_object", "schema": {"type": "object"}},
                "max_tokens": 50,
                "temperature": 0.2
            })
        );
    }

    #[test]
    fn v1_tool_results_come_from_the_calls_they_answer() {
        let body = v1(json!({
            "model": "alias",
            "messages": [
                {"role": "user", "content": "Weather and time in Oslo?"},
                {"role": "assistant", "content": "Looking.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\":12}"},
                {"role": "assistant", "tool_calls": [
                    {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                    {"id": "c3", "type": "function", "function": {"name": "get_date", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c2", "content": "14:00"},
                {"role": "tool", "tool_call_id": "c3", "content": "[{\"d\":1},{\"d\":2}]"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
        }))
        .unwrap();
        assert_eq!(
            body,
            json!({
                "model": "command-r-plus",
                "message": "",
                "chat_history": [
                    {"role": "USER", "message": "Weather and time in Oslo?"},
                    {"role": "CHATBOT", "message": "Looking.", "tool_calls": [{"name": "get_weather", "parameters": {"city": "Oslo"}}]},
                    {"role": "TOOL", "tool_results": [{"call": {"name": "get_weather", "parameters": {"city": "Oslo"}}, "outputs": [{"temp": 12}]}]},
                    {"role": "CHATBOT", "message": "", "tool_calls": [{"name": "get_time", "parameters": {}}, {"name": "get_date", "parameters": {}}]}
                ],
                "stream": false,
                "tools": [{"name": "get_weather", "description": ""}],
                "tool_results": [
                    {"call": {"name": "get_time", "parameters": {}}, "outputs": [{"result": "14:00"}]},
                    {"call": {"name": "get_date", "parameters": {}}, "outputs": [{"d": 1}, {"d": 2}]}
                ]
            })
        );
    }

    #[test]
    fn completions_and_embeddings_requests() {
        let r = ChatRequest::parse(
            Endpoint::Completions,
            br#"{"model":"m","prompt":"Once upon","max_tokens":5}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&v2_body(&r, "c", "co").unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"model": "c", "messages": [{"role": "user", "content": "Once upon"}], "stream": false, "max_tokens": 5})
        );

        let e = EmbeddingRequest::parse(br#"{"model":"m","input":["a","b"],"dimensions":256}"#)
            .unwrap();
        let v: Value = serde_json::from_slice(
            &embed_body(&e, "embed-v4.0", InputType::SearchQuery, "co").unwrap(),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"model": "embed-v4.0", "texts": ["a", "b"], "input_type": "search_query", "embedding_types": ["float"], "output_dimension": 256})
        );
        let e = EmbeddingRequest::parse(br#"{"model":"m","input":"a"}"#).unwrap();
        let v: Value =
            serde_json::from_slice(&embed_body(&e, "x", InputType::default(), "co").unwrap())
                .unwrap();
        assert_eq!(v["input_type"], "search_document");
        assert_eq!(v["texts"], json!(["a"]));
        let many = json!({"model": "m", "input": vec!["t"; 97]}).to_string();
        let e = EmbeddingRequest::parse(many.as_bytes()).unwrap();
        assert_eq!(
            embed_body(&e, "x", InputType::default(), "co")
                .unwrap_err()
                .param,
            Some("input")
        );
    }

    // --- whole answers ---

    #[test]
    fn a_v2_text_answer() {
        let c = v2_completion(br#"{"id":"5d1e","finish_reason":"COMPLETE","message":{"role":"assistant",
            "content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"Hello "},{"type":"text","text":"world"}]},
            "usage":{"billed_units":{"input_tokens":3,"output_tokens":2},"tokens":{"input_tokens":70.0,"output_tokens":2}}}"#)
        .unwrap();
        assert_eq!(
            c,
            Completion {
                content: Some("Hello world".into()),
                tool_calls: vec![],
                finish_reason: FinishReason::Stop,
                usage: Usage::new(70, 2),
            }
        );
        let c = v2_completion(
            br#"{"id":"x","finish_reason":"MAX_TOKENS","message":{"role":"assistant","content":[{"type":"text","text":"Hel"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert_eq!(c.usage, Usage::new(0, 0));
    }

    #[test]
    fn a_v2_tool_call_answer() {
        let c = v2_completion(br#"{"id":"5d1e","finish_reason":"TOOL_CALL","message":{"role":"assistant",
            "tool_plan":"I will look up the weather.","tool_calls":[
              {"id":"get_weather_x1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Oslo\"}"}},
              {"id":"get_time_y2","type":"function","function":{"name":"get_time","arguments":{"tz":"CET"}}}]},
            "usage":{"tokens":{"input_tokens":912,"output_tokens":40}}}"#)
        .unwrap();
        assert_eq!(c.content.as_deref(), Some("I will look up the weather."));
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            c.tool_calls,
            vec![
                ToolCallOut {
                    id: "get_weather_x1".into(),
                    name: "get_weather".into(),
                    arguments: "{\"city\": \"Oslo\"}".into()
                },
                ToolCallOut {
                    id: "get_time_y2".into(),
                    name: "get_time".into(),
                    arguments: "{\"tz\":\"CET\"}".into()
                },
            ]
        );
        assert_eq!(c.usage, Usage::new(912, 40));
    }

    #[test]
    fn finish_reasons_map_or_fail() {
        for (reason, expected) in [
            ("COMPLETE", Some(FinishReason::Stop)),
            ("STOP_SEQUENCE", Some(FinishReason::Stop)),
            ("MAX_TOKENS", Some(FinishReason::Length)),
            ("ERROR_LIMIT", Some(FinishReason::Length)),
            ("TOOL_CALL", Some(FinishReason::ToolCalls)),
            ("ERROR_TOXIC", Some(FinishReason::ContentFilter)),
            ("ERROR", None),
            ("TIMEOUT", None),
            ("USER_CANCEL", None),
        ] {
            match finish_reason(Some(reason), None) {
                Ok(r) => assert_eq!(Some(r), expected, "{reason}"),
                Err(f) => {
                    assert_eq!(expected, None, "{reason}");
                    assert_eq!(f.cause, Cause::InBand);
                    assert_eq!(f.code.as_deref(), Some(reason));
                }
            }
        }
        let f =
            v2_completion(br#"{"id":"x","finish_reason":"ERROR","message":{"role":"assistant"}}"#)
                .unwrap_err();
        assert_eq!(f.cause, Cause::InBand);
        assert!(v2_completion(b"<html>").unwrap_err().cause == Cause::Protocol);
    }

    #[test]
    fn a_v1_answer_with_and_without_tool_calls() {
        let c = v1_completion(br#"{"response_id":"0f9d","generation_id":"8a3c","text":"Hello!","finish_reason":"COMPLETE",
            "chat_history":[],"meta":{"api_version":{"version":"1"},"billed_units":{"input_tokens":3,"output_tokens":9},"tokens":{"input_tokens":69,"output_tokens":9}}}"#)
        .unwrap();
        assert_eq!(c.content.as_deref(), Some("Hello!"));
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert_eq!(c.usage, Usage::new(69, 9));
        let c = v1_completion(br#"{"generation_id":"g1","text":"I will check.","finish_reason":"COMPLETE",
            "tool_calls":[{"name":"query","parameters":{"day":"2023-09-29"}},{"name":"catalog","parameters":{}}],
            "meta":{"tokens":{"input_tokens":1032,"output_tokens":124}}}"#)
        .unwrap();
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        assert_eq!(c.content.as_deref(), Some("I will check."));
        assert_eq!(c.tool_calls[0].id, "call_g1_0");
        assert_eq!(c.tool_calls[0].arguments, "{\"day\":\"2023-09-29\"}");
        assert_eq!(c.tool_calls[1].id, "call_g1_1");
        let f = v1_completion(br#"{"text":"","finish_reason":"ERROR"}"#).unwrap_err();
        assert_eq!(f.cause, Cause::InBand);
    }

    #[test]
    fn embeddings_take_float_vectors_and_token_counts() {
        let e = embeddings(br#"{"id":"da6e","texts":["hello","goodbye"],"embeddings":{"float":[[0.5,-0.25],[0.125,1]]},
            "meta":{"api_version":{"version":"2"},"billed_units":{"input_tokens":2}}}"#)
        .unwrap();
        assert_eq!(e.vectors, vec![vec![0.5, -0.25], vec![0.125, 1.0]]);
        assert_eq!(e.usage, Usage::new(2, 0));
        let e = embeddings(br#"{"id":"x","embeddings":{"float":[[1]]},"meta":{"billed_units":{"input_tokens":2},"tokens":{"input_tokens":5}}}"#)
            .unwrap();
        assert_eq!(e.usage, Usage::new(5, 0));
        assert_eq!(
            embeddings(br#"{"id":"x","embeddings":{"int8":[[1]]}}"#)
                .unwrap_err()
                .cause,
            Cause::Protocol
        );
    }

    #[test]
    fn errors_keep_cohere_message_and_retry_after() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        let f = failure(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"id":"b3f1","message":"You are using a Trial key, which is limited to 10 API calls / minute."}"#,
        );
        assert_eq!(f.cause, Cause::Status(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(
            f.message,
            "You are using a Trial key, which is limited to 10 API calls / minute."
        );
        assert_eq!(f.code, None);
        assert_eq!(f.retry_after, Some(std::time::Duration::from_secs(7)));
        let f = failure(
            StatusCode::from_u16(498).unwrap(),
            &HeaderMap::new(),
            br#"{"id":"x","message":"blocked"}"#,
        );
        assert_eq!(f.cause, Cause::Status(StatusCode::BAD_REQUEST));
        let long = format!(r#"{{"id":"x","message":"{}"}}"#, "é".repeat(400));
        let f = failure(StatusCode::BAD_REQUEST, &HeaderMap::new(), long.as_bytes());
        assert!(f.message.len() <= 503, "{}", f.message.len());
        let f = failure(
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            b"<html>bad gateway</html>",
        );
        assert_eq!(f.message, "<html>bad gateway</html>");
    }

    // --- streams ---

    const V2_TEXT: &str = "event: message-start\n\
data: {\"id\":\"8c1d\",\"type\":\"message-start\",\"delta\":{\"message\":{\"role\":\"assistant\",\"content\":[],\"tool_plan\":\"\",\"tool_calls\":[]}}}\n\n\
event: content-start\n\
data: {\"type\":\"content-start\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"type\":\"thinking\",\"thinking\":\"\"}}}}\n\n\
event: content-delta\n\
data: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"thinking\":\"Let me think\"}}}}\n\n\
event: content-end\n\
data: {\"type\":\"content-end\",\"index\":0}\n\n\
event: content-start\n\
data: {\"type\":\"content-start\",\"index\":1,\"delta\":{\"message\":{\"content\":{\"type\":\"text\",\"text\":\"\"}}}}\n\n\
event: content-delta\n\
data: {\"type\":\"content-delta\",\"index\":1,\"delta\":{\"message\":{\"content\":{\"text\":\"Hél\"}}}}\n\n\
event: content-delta\r\n\
data: {\"type\":\"content-delta\",\"delta\":{\"message\":{\"content\":{\"text\":\"lo!\"}}}}\r\n\r\n\
event: citation-start\n\
data: {\"type\":\"citation-start\",\"index\":0,\"delta\":{\"message\":{\"citations\":{\"start\":0,\"end\":3,\"text\":\"Hél\",\"sources\":[]}}}}\n\n\
event: citation-end\n\
data: {\"type\":\"citation-end\",\"index\":0}\n\n\
event: content-end\n\
data: {\"type\":\"content-end\",\"index\":1}\n\n\
event: message-end\n\
data: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\",\"usage\":{\"billed_units\":{\"input_tokens\":4,\"output_tokens\":3},\"tokens\":{\"input_tokens\":70,\"output_tokens\":3}}}}\n\n\
data: [DONE]\n\n";

    const V2_TOOLS: &str = "event: message-start\n\
data: {\"id\":\"t1\",\"type\":\"message-start\",\"delta\":{\"message\":{\"role\":\"assistant\"}}}\n\n\
event: tool-plan-delta\n\
data: {\"type\":\"tool-plan-delta\",\"delta\":{\"message\":{\"tool_plan\":\"I will\"}}}\n\n\
event: tool-plan-delta\n\
data: {\"type\":\"tool-plan-delta\",\"delta\":{\"message\":{\"tool_plan\":\" check.\"}}}\n\n\
event: tool-call-start\n\
data: {\"type\":\"tool-call-start\",\"index\":3,\"delta\":{\"message\":{\"tool_calls\":{\"id\":\"get_weather_a1b2\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}}}}\n\n\
event: tool-call-delta\n\
data: {\"type\":\"tool-call-delta\",\"index\":3,\"delta\":{\"message\":{\"tool_calls\":{\"function\":{\"arguments\":\"{\\\"city\\\": \\\"Os\"}}}}}\n\n\
event: tool-call-delta\n\
data: {\"type\":\"tool-call-delta\",\"index\":3,\"delta\":{\"message\":{\"tool_calls\":{\"function\":{\"arguments\":\"lo\\\"}\"}}}}}\n\n\
event: tool-call-end\n\
data: {\"type\":\"tool-call-end\",\"index\":3}\n\n\
event: tool-call-start\n\
data: {\"type\":\"tool-call-start\",\"index\":4,\"delta\":{\"message\":{\"tool_calls\":{\"id\":\"get_time_c3d4\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"\"}}}}}\n\n\
event: tool-call-delta\n\
data: {\"type\":\"tool-call-delta\",\"index\":4,\"delta\":{\"message\":{\"tool_calls\":{\"function\":{\"arguments\":\"{}\"}}}}}\n\n\
event: tool-call-end\n\
data: {\"type\":\"tool-call-end\",\"index\":4}\n\n\
event: message-end\n\
data: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"TOOL_CALL\",\"usage\":{\"billed_units\":{\"input_tokens\":126,\"output_tokens\":84},\"tokens\":{\"input_tokens\":1589,\"output_tokens\":135}}}}\n\n";

    #[test]
    fn a_v2_text_stream_gives_the_same_chunks_at_every_split() {
        let (whole, r, usage) = run(v2_stream(true), V2_TEXT.as_bytes(), 0);
        r.unwrap();
        assert_eq!(usage, Some(Usage::new(70, 3)));
        let c = chunks(whole.as_bytes());
        assert_eq!(c.len(), 5, "{whole}");
        assert_eq!(
            c[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(c[1]["choices"][0]["delta"], json!({"content": "Hél"}));
        assert_eq!(c[2]["choices"][0]["delta"], json!({"content": "lo!"}));
        assert_eq!(c[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            c[4]["usage"],
            json!({"prompt_tokens": 70, "completion_tokens": 3, "total_tokens": 73})
        );
        for c in &c {
            assert_eq!(c["model"], "alias");
            assert_eq!(c["object"], "chat.completion.chunk");
        }
        for at in 1..V2_TEXT.len() {
            let (split, r, u) = run(v2_stream(true), V2_TEXT.as_bytes(), at);
            r.unwrap();
            assert_eq!(split, whole, "split at {at}");
            assert_eq!(u, usage);
        }
    }

    #[test]
    fn a_v2_tool_stream_counts_its_own_indexes() {
        let (whole, r, usage) = run(v2_stream(false), V2_TOOLS.as_bytes(), 0);
        r.unwrap();
        assert_eq!(usage, Some(Usage::new(1589, 135)));
        let c = chunks(whole.as_bytes());
        let deltas: Vec<&Value> = c.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert_eq!(deltas[1], &json!({"content": "I will"}));
        assert_eq!(deltas[2], &json!({"content": " check."}));
        assert_eq!(
            deltas[3],
            &json!({"tool_calls": [{"index": 0, "id": "get_weather_a1b2", "type": "function",
                                     "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            deltas[4],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Os"}}]})
        );
        assert_eq!(
            deltas[5],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "lo\"}"}}]})
        );
        assert_eq!(deltas[6]["tool_calls"][0]["index"], 1);
        assert_eq!(deltas[6]["tool_calls"][0]["id"], "get_time_c3d4");
        assert_eq!(
            deltas[7],
            &json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]})
        );
        assert_eq!(c[8]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c.len(), 9, "no usage chunk unless asked");
        for at in (1..V2_TOOLS.len()).step_by(7) {
            let (split, r, _) = run(v2_stream(false), V2_TOOLS.as_bytes(), at);
            r.unwrap();
            assert_eq!(split, whole, "split at {at}");
        }
    }

    #[test]
    fn v2_stream_failures() {
        // message-end with ERROR is the in-band error form.
        let error = "event: message-start\ndata: {\"type\":\"message-start\",\"delta\":{\"message\":{\"role\":\"assistant\"}}}\n\n\
event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"Hi\"}}}}\n\n\
event: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"ERROR\",\"error\":\"internal generation failure\"}}\n\n";
        let (out, r, _) = run(v2_stream(false), error.as_bytes(), 0);
        let f = r.unwrap_err();
        assert_eq!(f.cause, Cause::InBand);
        assert_eq!(f.message, "internal generation failure");
        assert_eq!(f.code.as_deref(), Some("ERROR"));
        assert!(out.contains("\"content\":\"Hi\""));
        assert!(
            !out.contains("[DONE]"),
            "the relay writes the error and [DONE]"
        );

        // Cut before message-end, with or without [DONE].
        let cut = &V2_TEXT[..V2_TEXT.find("event: message-end").unwrap()];
        let (_, r, _) = run(v2_stream(false), cut.as_bytes(), 0);
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);
        let done = format!("{cut}data: [DONE]\n\n");
        let (_, r, _) = run(v2_stream(false), done.as_bytes(), 0);
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);

        let (_, r, _) = run(v2_stream(false), b"data: {not json\n\n", 0);
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);
        let (_, r, _) = run(
            v2_stream(false),
            b"data: {\"id\":\"x\",\"message\":\"overloaded\"}\n\n",
            0,
        );
        let f = r.unwrap_err();
        assert_eq!((f.cause, f.message.as_str()), (Cause::InBand, "overloaded"));
        let delta_first = "data: {\"type\":\"tool-call-delta\",\"delta\":{\"message\":{\"tool_calls\":{\"function\":{\"arguments\":\"{}\"}}}}}\n\n";
        let (_, r, _) = run(v2_stream(false), delta_first.as_bytes(), 0);
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);
    }

    const V1_TEXT: &str = "{\"is_finished\":false,\"event_type\":\"stream-start\",\"generation_id\":\"8a3c\"}\n\
{\"is_finished\":false,\"event_type\":\"text-generation\",\"text\":\"Hél\"}\r\n\
\n\
{\"is_finished\":false,\"event_type\":\"text-generation\",\"text\":\"lo!\"}\n\
{\"is_finished\":true,\"event_type\":\"stream-end\",\"finish_reason\":\"COMPLETE\",\"response\":{\"response_id\":\"0f9d\",\"text\":\"Hélo!\",\"generation_id\":\"8a3c\",\"finish_reason\":\"COMPLETE\",\"meta\":{\"billed_units\":{\"input_tokens\":3,\"output_tokens\":2},\"tokens\":{\"input_tokens\":69,\"output_tokens\":2}}}}";

    const V1_TOOLS: &str = "{\"is_finished\":false,\"event_type\":\"stream-start\",\"generation_id\":\"g7\"}\n\
{\"is_finished\":false,\"event_type\":\"tool-calls-chunk\",\"tool_call_delta\":{\"text\":\"I will check.\"}}\n\
{\"is_finished\":false,\"event_type\":\"tool-calls-chunk\",\"tool_call_delta\":{\"index\":0,\"name\":\"get_weather\"}}\n\
{\"is_finished\":false,\"event_type\":\"tool-calls-chunk\",\"tool_call_delta\":{\"index\":0,\"parameters\":\"{\\\"city\\\":\"}}\n\
{\"is_finished\":false,\"event_type\":\"tool-calls-chunk\",\"tool_call_delta\":{\"index\":0,\"parameters\":\"\\\"Oslo\\\"}\"}}\n\
{\"is_finished\":false,\"event_type\":\"tool-calls-chunk\",\"tool_call_delta\":{\"index\":1,\"name\":\"get_time\"}}\n\
{\"is_finished\":false,\"event_type\":\"tool-calls-chunk\",\"tool_call_delta\":{\"index\":1,\"parameters\":\"{}\"}}\n\
{\"is_finished\":false,\"event_type\":\"tool-calls-generation\",\"text\":\"I will check.\",\"tool_calls\":[{\"name\":\"get_weather\",\"parameters\":{\"city\":\"Oslo\"}},{\"name\":\"get_time\",\"parameters\":{}}]}\n\
{\"is_finished\":true,\"event_type\":\"stream-end\",\"finish_reason\":\"COMPLETE\",\"response\":{\"text\":\"I will check.\",\"generation_id\":\"g7\",\"tool_calls\":[{\"name\":\"get_weather\",\"parameters\":{\"city\":\"Oslo\"}},{\"name\":\"get_time\",\"parameters\":{}}],\"meta\":{\"tokens\":{\"input_tokens\":100,\"output_tokens\":20}}}}\n";

    #[test]
    fn a_v1_text_stream_gives_the_same_chunks_at_every_split() {
        let (whole, r, usage) = run(v1_stream(true), V1_TEXT.as_bytes(), 0);
        r.unwrap();
        assert_eq!(usage, Some(Usage::new(69, 2)));
        let c = chunks(whole.as_bytes());
        assert_eq!(c.len(), 5, "{whole}");
        assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(c[1]["choices"][0]["delta"], json!({"content": "Hél"}));
        assert_eq!(c[2]["choices"][0]["delta"], json!({"content": "lo!"}));
        assert_eq!(c[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(c[4]["usage"]["total_tokens"], 71);
        for at in 1..V1_TEXT.len() {
            let (split, r, _) = run(v1_stream(true), V1_TEXT.as_bytes(), at);
            r.unwrap();
            assert_eq!(split, whole, "split at {at}");
        }
    }

    #[test]
    fn a_v1_tool_stream_streams_calls_once() {
        let (whole, r, _) = run(v1_stream(false), V1_TOOLS.as_bytes(), 0);
        r.unwrap();
        let c = chunks(whole.as_bytes());
        let deltas: Vec<&Value> = c.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert_eq!(deltas[1], &json!({"content": "I will check."}));
        assert_eq!(
            deltas[2],
            &json!({"tool_calls": [{"index": 0, "id": "call_g7_0", "type": "function",
                                     "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            deltas[3],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]})
        );
        assert_eq!(deltas[5]["tool_calls"][0]["id"], "call_g7_1");
        assert_eq!(deltas[6]["tool_calls"][0]["index"], 1);
        assert_eq!(c[7]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c.len(), 8, "the generation event repeats nothing: {whole}");
        for at in (1..V1_TOOLS.len()).step_by(5) {
            let (split, r, _) = run(v1_stream(false), V1_TOOLS.as_bytes(), at);
            r.unwrap();
            assert_eq!(split, whole, "split at {at}");
        }

        // Whole calls only (no chunks): one chunk per call.
        let whole_only = "{\"event_type\":\"stream-start\",\"generation_id\":\"g8\"}\n\
{\"event_type\":\"tool-calls-generation\",\"text\":\"Plan.\",\"tool_calls\":[{\"name\":\"f\",\"parameters\":{\"a\":1}}]}\n\
{\"event_type\":\"stream-end\",\"finish_reason\":\"COMPLETE\",\"response\":{\"text\":\"Plan.\"}}\n";
        let (out, r, _) = run(v1_stream(false), whole_only.as_bytes(), 0);
        r.unwrap();
        let c = chunks(out.as_bytes());
        assert_eq!(c[1]["choices"][0]["delta"], json!({"content": "Plan."}));
        assert_eq!(
            c[2]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 0, "id": "call_g8_0", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}})
        );
        assert_eq!(c[3]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn v1_stream_failures() {
        let cut = &V1_TEXT[..V1_TEXT.find("{\"is_finished\":true").unwrap()];
        let (_, r, _) = run(v1_stream(false), cut.as_bytes(), 0);
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);
        let error = "{\"event_type\":\"stream-start\",\"generation_id\":\"g\"}\n\
{\"event_type\":\"text-generation\",\"text\":\"Hi\"}\n\
{\"is_finished\":true,\"event_type\":\"stream-end\",\"finish_reason\":\"ERROR\",\"response\":{\"text\":\"Hi\"}}\n";
        let (_, r, _) = run(v1_stream(false), error.as_bytes(), 0);
        assert_eq!(r.unwrap_err().cause, Cause::InBand);
        let (_, r, _) = run(v1_stream(false), b"{\"message\":\"internal error\"}\n", 0);
        assert_eq!(r.unwrap_err().message, "internal error");
        let (_, r, _) = run(v1_stream(false), b"not json\n", 0);
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);
        let toxic =
            "{\"event_type\":\"stream-end\",\"finish_reason\":\"ERROR_TOXIC\",\"response\":{}}\n";
        let (out, r, _) = run(v1_stream(false), toxic.as_bytes(), 0);
        r.unwrap();
        assert!(out.contains("\"finish_reason\":\"content_filter\""));
    }

    #[test]
    fn legacy_completion_streams_carry_text() {
        let decoder = Box::new(V2Stream::new(ChunkWriter::new(&shape(true, false))));
        let (out, r, _) = run(decoder, V2_TEXT.as_bytes(), 0);
        r.unwrap();
        let c = chunks(out.as_bytes());
        assert_eq!(c[0]["object"], "text_completion");
        assert_eq!(c[0]["choices"][0]["text"], "Hél");
        assert_eq!(c[2]["choices"][0]["finish_reason"], "stop");
    }

    // --- config ---

    fn built(options: Value) -> (Option<Built>, Vec<Problem>) {
        let raw: raw::Provider = serde_json::from_value(options).unwrap();
        let mut problems = Vec::new();
        let built = build(
            "co",
            &raw,
            &Path::root().key("providers").key("co"),
            &mut problems,
        );
        (built, problems)
    }

    #[test]
    fn build_defaults_and_options() {
        let (b, problems) = built(json!({"type": "cohere"}));
        assert!(problems.is_empty());
        let b = b.unwrap();
        assert_eq!(b.default_auth, AuthStyle::Bearer);
        assert!(b.transport.is_none());
        let text = format!("{:?}", b.adapter);
        assert!(text.contains("https://api.cohere.com/v2/chat"), "{text}");
        assert!(text.contains("https://api.cohere.com/v2/embed"), "{text}");
        assert!(text.contains("SearchDocument"), "{text}");

        let (b, _) = built(
            json!({"type": "cohere", "base_url": "http://co.local:9/", "api": "v1", "input_type": "clustering"}),
        );
        let text = format!("{:?}", b.unwrap().adapter);
        assert!(text.contains("http://co.local:9/v1/chat"), "{text}");
        assert!(text.contains("http://co.local:9/v2/embed"), "{text}");
        assert!(text.contains("Clustering"), "{text}");

        for bad in [
            json!({"type": "cohere", "api": "v3"}),
            json!({"type": "cohere", "input": 1}),
        ] {
            let (b, problems) = built(bad);
            assert!(b.is_none());
            assert_eq!(problems.len(), 1);
        }
    }
}
