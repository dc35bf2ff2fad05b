//! `type: ollama`: Ollama's native API.
//!
//! Chat and legacy completions go to `POST /api/chat` (a legacy prompt is one
//! user message, templated by the model like any chat turn, as Ollama's own
//! `/v1/completions` does); embeddings go to `POST /api/embed`. Streams are
//! NDJSON: one chat response per line, the last one with `done: true`, its
//! `done_reason` and the token counts. Tool calls arrive whole, arguments as
//! JSON objects; they become one OpenAI tool-call chunk each.
//!
//! What Ollama cannot honour: `n > 1` and `logprobs` (refused), remote image
//! URLs (refused: Ollama takes images as base64 only), audio and file parts
//! (refused), `tool_choice: "required"`, `parallel_tool_calls` and `user`
//! (dropped). `tool_choice: "none"` sends no tools; a named `tool_choice`
//! sends only that tool.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use super::{Adapter, AuthStyle, Built, Converted, UpstreamRequest};
use crate::call::Call;
use crate::chat::{
    ChatRequest, Completion, Content, EmbeddingRequest, Embeddings, FinishReason, Image, Message,
    Part, Role, ToolCallOut, ToolChoice,
};
use crate::config::{Path, Problem, raw, units};
use crate::error::Error;
use crate::openai::{Endpoint, Usage};
use crate::route::ModelName;
use crate::stream::chunks::{ChunkWriter, Shape};
use crate::stream::sse::Event;
use crate::stream::{Decoder, Framed, Handler};
use crate::upstream::Failure;

/// Where a local Ollama listens.
const DEFAULT_BASE_URL: &str = "http://localhost:11434";

// === config ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// How long Ollama keeps the model loaded after a request.
    #[serde(default)]
    keep_alive: Option<KeepAlive>,
    /// Ollama runtime options sent with every request (`num_ctx`, `top_k`, …);
    /// the client's own fields win over the same keys.
    #[serde(default)]
    options: Option<Map<String, Value>>,
}

/// `keep_alive`: a duration, or whole seconds (negative: keep loaded).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum KeepAlive {
    Seconds(i64),
    Duration(String),
}

pub fn build(
    id: &str,
    raw: &raw::Provider,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Built> {
    Some(Built {
        adapter: Box::new(Ollama::configure(id, raw, path, problems)?),
        transport: None,
        // A local Ollama takes no credential: nothing is sent without `api_key`.
        default_auth: AuthStyle::Bearer,
    })
}

#[derive(Debug)]
pub struct Ollama {
    id: String,
    chat: Uri,
    embed: Uri,
    tags: Uri,
    /// Seconds, as Ollama reads a number.
    keep_alive: Option<Number>,
    options: Map<String, Value>,
}

impl Ollama {
    fn configure(
        id: &str,
        raw: &raw::Provider,
        path: &Path,
        problems: &mut Vec<Problem>,
    ) -> Option<Ollama> {
        let options: Options = super::options(raw, path, problems)?;
        let base = super::base_url(raw, Some(DEFAULT_BASE_URL), path, problems)?;
        let keep_alive = match options.keep_alive {
            None => None,
            Some(KeepAlive::Seconds(s)) => Some(Number::from(s)),
            Some(KeepAlive::Duration(text)) => match units::duration(&text) {
                Ok(d) if d.subsec_nanos() == 0 => Some(Number::from(d.as_secs())),
                Ok(d) => Number::from_f64(d.as_secs_f64()),
                Err(e) => {
                    problems.push(Problem::new(path.key("keep_alive"), e));
                    return None;
                }
            },
        };
        Some(Ollama {
            id: id.to_owned(),
            chat: super::join(&base, "/api/chat"),
            embed: super::join(&base, "/api/embed"),
            tags: super::join(&base, "/api/tags"),
            keep_alive,
            options: options.options.unwrap_or_default(),
        })
    }
}

// === wire types: requests ===

#[derive(Debug, Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<Format<'a>>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    options: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<&'a Number>,
}

#[derive(Debug, Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Cow<'a, str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    function: WireFunctionCall<'a>,
}

#[derive(Debug, Serialize)]
struct WireFunctionCall<'a> {
    index: usize,
    name: &'a str,
    /// An object, where OpenAI has JSON text.
    arguments: Value,
}

#[derive(Debug, Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Debug, Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a RawValue>,
}

/// `"json"`, or a JSON Schema the answer must follow.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Format<'a> {
    Json(&'static str),
    Schema(&'a RawValue),
}

#[derive(Debug, Serialize)]
struct EmbedBody<'a> {
    model: &'a str,
    input: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u64>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    options: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<&'a Number>,
}

// === wire types: responses ===

/// A whole chat response, or one line of a chat stream.
#[derive(Debug, Deserialize)]
struct ChatResponse<'a> {
    #[serde(borrow, default)]
    message: Option<ResponseMessage<'a>>,
    #[serde(default)]
    done: bool,
    #[serde(borrow, default)]
    done_reason: Option<Cow<'a, str>>,
    /// Omitted when zero (a prompt served from cache).
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct ResponseMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ResponseToolCall<'a>>>,
}

#[derive(Debug, Deserialize)]
struct ResponseToolCall<'a> {
    /// Absent on older versions.
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: ResponseFunction<'a>,
}

#[derive(Debug, Deserialize)]
struct ResponseFunction<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct EmbedResponse<'a> {
    #[serde(default)]
    embeddings: Option<Vec<Vec<f32>>>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

// === impl Adapter ===

impl Adapter for Ollama {
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
                let body = self.chat_body(
                    &request,
                    model,
                    call.view.stream,
                    call.body.len() + super::TRANSLATED_ROOM,
                )?;
                (&self.chat, body, call.view.stream)
            }
            Endpoint::Embeddings => {
                let request = EmbeddingRequest::parse(&call.body)?;
                (&self.embed, self.embed_body(&request, model)?, false)
            }
            Endpoint::Models => return Err(Error::internal("models is not proxied")),
        };
        Ok(UpstreamRequest {
            uri: uri.clone(),
            fixed: &[],
            headers: headers(stream),
            body: Bytes::from(body),
            stream,
        })
    }

    fn response(
        &self,
        call: &Call,
        _headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<Converted, Failure> {
        match call.endpoint {
            Endpoint::Embeddings => {
                let expected = EmbeddingRequest::parse(&call.body)
                    .ok()
                    .and_then(|r| r.texts(&self.id).ok().map(|t| t.len()));
                embeddings(&body, expected).map(Converted::Embeddings)
            }
            _ => completion(&body, call.endpoint == Endpoint::Completions).map(Converted::Chat),
        }
    }

    fn decoder(&self, call: &Call) -> Box<dyn Decoder> {
        Box::new(ChatStream::new(&Shape::of(call)))
    }

    fn failure(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        let mut failure = super::status_failure(status, headers, body);
        if status == StatusCode::NOT_FOUND
            && failure.code.is_none()
            && failure.message.contains("model")
            && failure.message.contains("not found")
        {
            failure.code = Some("model_not_found".to_owned());
        }
        failure
    }

    fn models_uri(&self) -> Option<Uri> {
        Some(self.tags.clone())
    }

    fn parse_models(&self, body: &[u8]) -> Result<Vec<String>, Failure> {
        #[derive(Deserialize)]
        struct Tags {
            models: Vec<Tag>,
        }
        #[derive(Deserialize)]
        struct Tag {
            model: Option<String>,
            name: Option<String>,
        }
        let tags: Tags = crate::json::from_slice(body)
            .map_err(|e| Failure::protocol(format!("/api/tags is not Ollama's shape: {e}")))?;
        Ok(tags
            .models
            .into_iter()
            .filter_map(|t| t.model.or(t.name))
            .collect())
    }
}

/// `content-type: application/json`; NDJSON accepted for streams.
fn headers(stream: bool) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static(if stream {
            "application/x-ndjson"
        } else {
            "application/json"
        }),
    );
    headers
}

// === conversions: OpenAI → Ollama ===

impl Ollama {
    /// The chat as an Ollama `/api/chat` body; `room` is the size to
    /// expect (the client's body's).
    fn chat_body(
        &self,
        request: &ChatRequest<'_>,
        model: &str,
        stream: bool,
        room: usize,
    ) -> Result<Vec<u8>, Error> {
        request.refuse_unsupported(&self.id, true)?;
        request.refuse_echo(&self.id)?;
        let mut dropped: Vec<&str> = Vec::new();
        if request.parallel_tool_calls.is_some() {
            dropped.push("parallel_tool_calls");
        }
        if request.user.is_some() {
            dropped.push("user");
        }
        if request.top_logprobs.is_some() {
            dropped.push("top_logprobs");
        }
        if matches!(&request.tool_choice, Some(ToolChoice::Mode(m)) if m == "required") {
            dropped.push("tool_choice");
        }
        if !dropped.is_empty() {
            tracing::debug!(provider = %self.id, fields = ?dropped, "dropped fields Ollama cannot honour");
        }
        let body = ChatBody {
            model,
            messages: messages(request, &self.id)?,
            stream,
            tools: tools(request)?,
            format: format(request)?,
            options: self.run_options(request),
            keep_alive: self.keep_alive.as_ref(),
        };
        crate::json::to_vec_sized(&body, room).map_err(|e| Error::internal(e.to_string()))
    }

    /// The provider's `options`, then the client's sampling fields over them.
    fn run_options(&self, request: &ChatRequest<'_>) -> Map<String, Value> {
        let mut options = self.options.clone();
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                options.insert(key.to_owned(), value);
            }
        };
        set("num_predict", request.max_tokens().map(Value::from));
        set("temperature", request.temperature.and_then(float));
        set("top_p", request.top_p.and_then(float));
        set(
            "stop",
            request
                .stop
                .as_ref()
                .map(|s| s.to_vec())
                .filter(|s| !s.is_empty())
                .map(Value::from),
        );
        set("seed", request.seed.map(Value::from));
        set(
            "frequency_penalty",
            request.frequency_penalty.and_then(float),
        );
        set("presence_penalty", request.presence_penalty.and_then(float));
        options
    }

    fn embed_body(&self, request: &EmbeddingRequest<'_>, model: &str) -> Result<Vec<u8>, Error> {
        let body = EmbedBody {
            model,
            input: request.texts(&self.id)?,
            dimensions: request.dimensions,
            options: &self.options,
            keep_alive: self.keep_alive.as_ref(),
        };
        serde_json::to_vec(&body).map_err(|e| Error::internal(e.to_string()))
    }
}

fn float(x: f64) -> Option<Value> {
    Number::from_f64(x).map(Value::Number)
}

/// OpenAI messages → Ollama's: string content, base64 images, tool calls with
/// object arguments, tool results named after their tool.
fn messages<'r>(
    request: &'r ChatRequest<'_>,
    provider: &str,
) -> Result<Vec<WireMessage<'r>>, Error> {
    let all = &request.messages;
    let mut out = Vec::with_capacity(all.len());
    for (i, message) in all.iter().enumerate() {
        let (content, images) = content(message.content.as_ref(), i, provider)?;
        let mut wire = WireMessage {
            role: "user",
            content,
            images,
            tool_calls: Vec::new(),
            tool_name: None,
            tool_call_id: None,
        };
        match message.role {
            Role::System | Role::Developer => wire.role = "system",
            Role::User => {}
            Role::Assistant => {
                wire.role = "assistant";
                wire.tool_calls = message
                    .tool_calls
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(index, call)| WireToolCall {
                        id: &call.id,
                        function: WireFunctionCall {
                            index,
                            name: &call.function.name,
                            arguments: call.function.arguments_value(),
                        },
                    })
                    .collect();
            }
            Role::Tool | Role::Function => {
                wire.role = "tool";
                wire.tool_call_id = message.tool_call_id.as_deref();
                wire.tool_name = wire
                    .tool_call_id
                    .and_then(|id| tool_name(&all[..i], id))
                    .or(message.name.as_deref());
            }
        }
        out.push(wire);
    }
    Ok(out)
}

/// The name of the function an earlier assistant message called as `id`
/// (the latest such call: generated ids repeat from one turn to the next).
fn tool_name<'r>(earlier: &'r [Message<'_>], id: &str) -> Option<&'r str> {
    earlier
        .iter()
        .rev()
        .filter(|m| m.role == Role::Assistant)
        .flat_map(|m| m.tool_calls.iter().flatten())
        .find(|call| call.id == id)
        .map(|call| call.function.name.as_ref())
}

/// Content as one string plus the base64 of its images.
fn content<'r>(
    content: Option<&'r Content<'_>>,
    message: usize,
    provider: &str,
) -> Result<(Cow<'r, str>, Vec<&'r str>), Error> {
    let parts = match content {
        None => return Ok((Cow::Borrowed(""), Vec::new())),
        Some(Content::Text(text)) => return Ok((Cow::Borrowed(text.as_ref()), Vec::new())),
        Some(Content::Parts(parts)) => parts,
    };
    let mut texts: Vec<&str> = Vec::new();
    let mut images = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let at = || format!("messages[{message}].content[{j}]");
        match part {
            Part::Text { text } => texts.push(text),
            Part::Refusal { refusal } => texts.push(refusal),
            Part::ImageUrl { image_url } => match image_url.image() {
                Image::Base64 { data, .. } => images.push(data),
                Image::Url(_) => {
                    return Err(Error::invalid_param(
                        "messages",
                        format!(
                            "`{}.image_url` is a remote URL, which provider {provider} cannot use: \
                             Ollama does not fetch images; send the image as a base64 data URL",
                            at()
                        ),
                    ));
                }
            },
            Part::InputAudio {} | Part::File {} => {
                return Err(Error::invalid_param(
                    "messages",
                    format!(
                        "`{}` is not supported by provider {provider}: Ollama takes text and images only",
                        at()
                    ),
                ));
            }
        }
    }
    let text = match texts.as_slice() {
        [one] => Cow::Borrowed(*one),
        many => Cow::Owned(many.join("\n")),
    };
    Ok((text, images))
}

/// Function tools. `tool_choice: "none"` sends none; a named choice sends
/// only the named function (Ollama has no way to force a call).
fn tools<'r>(request: &'r ChatRequest<'_>) -> Result<Vec<WireTool<'r>>, Error> {
    let Some(tools) = &request.tools else {
        return Ok(Vec::new());
    };
    let only = match &request.tool_choice {
        Some(ToolChoice::Mode(mode)) if mode == "none" => return Ok(Vec::new()),
        Some(ToolChoice::Named(named)) => Some(named.function.name.as_ref()),
        _ => None,
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let function = match &tool.function {
            Some(f) if tool.kind == "function" => f,
            _ => {
                return Err(Error::invalid_param(
                    "tools",
                    format!(
                        "`tools[{i}]` is not a function tool; only function tools are supported"
                    ),
                ));
            }
        };
        if only.is_some_and(|name| name != function.name) {
            continue;
        }
        out.push(WireTool {
            kind: "function",
            function: WireFunction {
                name: &function.name,
                description: function.description.as_deref(),
                parameters: function.parameters,
            },
        });
    }
    if let Some(name) = only
        && out.is_empty()
    {
        return Err(Error::invalid_param(
            "tool_choice",
            format!("`tool_choice` names function {name:?}, which is not in `tools`"),
        ));
    }
    Ok(out)
}

/// `response_format` → `format`.
fn format<'r>(request: &'r ChatRequest<'_>) -> Result<Option<Format<'r>>, Error> {
    let Some(f) = &request.response_format else {
        return Ok(None);
    };
    match f.kind.as_ref() {
        "text" => Ok(None),
        "json_object" => Ok(Some(Format::Json("json"))),
        "json_schema" => match f.json_schema.as_ref().and_then(|s| s.schema) {
            Some(schema) => Ok(Some(Format::Schema(schema))),
            None => Err(Error::invalid_param(
                "response_format",
                "`response_format.json_schema.schema` is required",
            )),
        },
        other => Err(Error::invalid_param(
            "response_format",
            format!("`response_format.type` {other:?} is not text, json_object or json_schema"),
        )),
    }
}

// === conversions: Ollama → OpenAI ===

/// The id Ollama gave, or `call_<n>` by position.
fn call_id(given: Option<&str>, position: u32) -> String {
    match given {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("call_{position}"),
    }
}

fn finish_reason(done_reason: Option<&str>, tool_calls: bool) -> FinishReason {
    match done_reason {
        Some("length") => FinishReason::Length,
        _ if tool_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

impl ChatResponse<'_> {
    fn usage(&self) -> Usage {
        Usage::new(
            self.prompt_eval_count.unwrap_or(0),
            self.eval_count.unwrap_or(0),
        )
    }
}

/// A whole `/api/chat` response.
fn completion(body: &[u8], text: bool) -> Result<Completion, Failure> {
    let response: ChatResponse<'_> = crate::json::from_slice(body).map_err(|e| {
        Failure::protocol(format!("the response is not an Ollama chat response: {e}"))
    })?;
    if response.error.is_some_and(|e| e.get() != "null") {
        return Err(super::in_band_failure(body));
    }
    let Some(message) = &response.message else {
        return Err(Failure::protocol("the response has no `message`"));
    };
    let tool_calls: Vec<ToolCallOut> = message
        .tool_calls
        .iter()
        .flatten()
        .zip(0..)
        .map(|(call, n)| ToolCallOut {
            id: call_id(call.id.as_deref(), n),
            name: call.function.name.clone().into_owned(),
            arguments: super::arguments_text(call.function.arguments, "{}"),
        })
        .collect();
    let content = message.content.as_deref().unwrap_or("");
    let content =
        (text || !content.is_empty() || tool_calls.is_empty()).then(|| content.to_owned());
    Ok(Completion {
        content,
        finish_reason: finish_reason(response.done_reason.as_deref(), !tool_calls.is_empty()),
        tool_calls,
        usage: response.usage(),
    })
}

/// A whole `/api/embed` response; `expected` is the number of inputs sent.
fn embeddings(body: &[u8], expected: Option<usize>) -> Result<Embeddings, Failure> {
    let not_embed = |e: &dyn std::fmt::Display| {
        Failure::protocol(format!("the response is not an Ollama embed response: {e}"))
    };
    let response: EmbedResponse<'_> = crate::json::from_slice(body).map_err(|e| not_embed(&e))?;
    if response.error.is_some_and(|e| e.get() != "null") {
        return Err(super::in_band_failure(body));
    }
    let vectors = response
        .embeddings
        .ok_or_else(|| not_embed(&"missing field `embeddings`"))?;
    if let Some(n) = expected
        && n != vectors.len()
    {
        return Err(Failure::protocol(format!(
            "{n} inputs were sent but {} embeddings came back",
            vectors.len()
        )));
    }
    let prompt = response.prompt_eval_count.unwrap_or(0);
    Ok(Embeddings {
        vectors,
        usage: Usage::new(prompt, 0),
    })
}

// === stream decoding ===

/// An `/api/chat` NDJSON stream → OpenAI chunks.
pub type ChatStream = Framed<StreamState>;

pub struct StreamState {
    writer: ChunkWriter,
    usage: Option<Usage>,
}

impl Framed<StreamState> {
    pub fn new(shape: &Shape<'_>) -> Self {
        Framed::ndjson(StreamState {
            writer: ChunkWriter::new(shape),
            usage: None,
        })
    }
}

impl Handler for StreamState {
    fn event(&mut self, event: Event<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        self.line(event.data, out)
    }

    fn end(&mut self, _out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() {
            Ok(())
        } else {
            Err(Failure::protocol(
                "the stream ended without its `done: true` line",
            ))
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl StreamState {
    fn line(&mut self, line: &str, out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() {
            return Ok(());
        }
        let response: ChatResponse<'_> = serde_json::from_str(line).map_err(|e| {
            Failure::protocol(format!(
                "a line of the stream is not an Ollama chat response: {e}"
            ))
        })?;
        if response.error.is_some_and(|e| e.get() != "null") {
            return Err(super::in_band_failure(line.as_bytes()));
        }
        self.writer.role(out);
        if let Some(message) = &response.message {
            if let Some(content) = &message.content {
                self.writer.content(out, content);
            }
            for call in message.tool_calls.iter().flatten() {
                let id = call_id(call.id.as_deref(), self.writer.tool_call_count());
                let arguments = super::arguments_text(call.function.arguments, "{}");
                self.writer
                    .tool_call(out, &id, &call.function.name, &arguments);
            }
        }
        if response.done {
            let usage = response.usage();
            let reason = finish_reason(
                response.done_reason.as_deref(),
                self.writer.tool_call_count() > 0,
            );
            self.writer.finish(out, reason, Some(usage));
            self.usage = Some(usage);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Cause;
    use serde_json::json;

    fn configure(options: Value) -> Result<Ollama, Vec<Problem>> {
        let mut raw = json!({"type": "ollama"});
        raw.as_object_mut()
            .unwrap()
            .extend(options.as_object().cloned().unwrap_or_default());
        let raw: raw::Provider = serde_json::from_value(raw).unwrap();
        let mut problems = Vec::new();
        let path = Path::root().key("providers").key("local");
        Ollama::configure("local", &raw, &path, &mut problems).ok_or(problems)
    }

    fn adapter() -> Ollama {
        configure(json!({})).unwrap()
    }

    /// The body sent to `/api/chat` for an OpenAI chat body.
    fn chat(
        ollama: &Ollama,
        endpoint: Endpoint,
        body: Value,
        stream: bool,
    ) -> Result<Value, Error> {
        let bytes = body.to_string();
        let request = ChatRequest::parse(endpoint, bytes.as_bytes())?;
        let sent = ollama.chat_body(&request, "llama3.2", stream, 0)?;
        Ok(serde_json::from_slice(&sent).unwrap())
    }

    fn refused(body: Value) -> Error {
        chat(&adapter(), Endpoint::Chat, body, false).unwrap_err()
    }

    #[test]
    fn config_defaults_and_options() {
        let a = adapter();
        assert_eq!(a.chat, "http://localhost:11434/api/chat");
        assert_eq!(a.embed, "http://localhost:11434/api/embed");
        assert!(a.keep_alive.is_none() && a.options.is_empty());
        let a = configure(json!({"base_url": "http://gpu:11434/", "keep_alive": "10m",
                                 "options": {"num_ctx": 8192}}))
        .unwrap();
        assert_eq!(a.chat, "http://gpu:11434/api/chat");
        assert_eq!(a.keep_alive, Some(Number::from(600)));
        assert_eq!(a.options["num_ctx"], 8192);
        assert_eq!(
            configure(json!({"keep_alive": -1})).unwrap().keep_alive,
            Some(Number::from(-1))
        );
        assert_eq!(
            configure(json!({"keep_alive": "1500ms"}))
                .unwrap()
                .keep_alive,
            Number::from_f64(1.5)
        );
        let problems = configure(json!({"keep_alive": "soon"})).unwrap_err();
        assert_eq!(problems[0].path.to_string(), "providers.local.keep_alive");
        let problems = configure(json!({"num_ctx": 8192})).unwrap_err();
        assert!(problems[0].message.contains("num_ctx"), "{problems:?}");
    }

    #[test]
    fn translates_a_full_chat_request() {
        let a = configure(
            json!({"keep_alive": "5m", "options": {"num_ctx": 8192, "temperature": 0.1}}),
        )
        .unwrap();
        let body = json!({
            "model": "alias",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "text", "text": "And the weather?"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"unit\":\"c\"}"}},
                    {"id": "call_8", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
                {"role": "tool", "tool_call_id": "call_7", "content": "12C"},
                {"role": "tool", "tool_call_id": "call_8", "content": [{"type": "text", "text": "09:00"}]},
                {"role": "user", "content": "Thanks"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object", "properties": {"t": {"type": "number"}}}}},
            "max_completion_tokens": 64, "max_tokens": 10, "temperature": 0.5, "top_p": 0.9,
            "stop": "END", "seed": 42, "frequency_penalty": 0.25, "presence_penalty": -0.5,
            "stream": true, "stream_options": {"include_usage": true}, "user": "u1", "n": 1
        });
        assert_eq!(
            chat(&a, Endpoint::Chat, body, true).unwrap(),
            json!({
                "model": "llama3.2",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "system", "content": "Use metric."},
                    {"role": "user", "content": "What is this?\nAnd the weather?", "images": ["iVBORw0KGgo="]},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"id": "call_7", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}},
                        {"id": "call_8", "function": {"index": 1, "name": "get_time", "arguments": {}}}]},
                    {"role": "tool", "content": "12C", "tool_name": "get_weather", "tool_call_id": "call_7"},
                    {"role": "tool", "content": "09:00", "tool_name": "get_time", "tool_call_id": "call_8"},
                    {"role": "user", "content": "Thanks"}
                ],
                "stream": true,
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
                "format": {"type": "object", "properties": {"t": {"type": "number"}}},
                "options": {"num_ctx": 8192, "temperature": 0.5, "num_predict": 64, "top_p": 0.9,
                            "stop": ["END"], "seed": 42, "frequency_penalty": 0.25, "presence_penalty": -0.5},
                "keep_alive": 300
            })
        );
    }

    #[test]
    fn a_minimal_request_sends_stream_false_and_nothing_else() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}],
                          "response_format": {"type": "json_object"}, "stop": ["a", "b"]});
        assert_eq!(
            chat(&adapter(), Endpoint::Chat, body, false).unwrap(),
            json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}], "stream": false,
                   "format": "json", "options": {"stop": ["a", "b"]}})
        );
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}],
                          "response_format": {"type": "text"}, "stop": []});
        assert_eq!(
            chat(&adapter(), Endpoint::Chat, body, false).unwrap(),
            json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}], "stream": false})
        );
    }

    #[test]
    fn legacy_completions_are_one_user_message() {
        let body =
            json!({"model": "m", "prompt": "Once upon a time", "max_tokens": 5, "stream": true});
        assert_eq!(
            chat(&adapter(), Endpoint::Completions, body, true).unwrap(),
            json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Once upon a time"}],
                   "stream": true, "options": {"num_predict": 5}})
        );
    }

    #[test]
    fn tool_choice_none_sends_no_tools_and_a_named_one_sends_only_it() {
        let tools = json!([
            {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "b"}}]);
        let body = |choice: Value| json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": choice});
        let sent = chat(&adapter(), Endpoint::Chat, body(json!("none")), false).unwrap();
        assert!(sent.get("tools").is_none());
        let sent = chat(
            &adapter(),
            Endpoint::Chat,
            body(json!({"type": "function", "function": {"name": "b"}})),
            false,
        )
        .unwrap();
        assert_eq!(
            sent["tools"],
            json!([{"type": "function", "function": {"name": "b"}}])
        );
        let sent = chat(&adapter(), Endpoint::Chat, body(json!("required")), false).unwrap();
        assert_eq!(sent["tools"].as_array().unwrap().len(), 2);
        let e = chat(
            &adapter(),
            Endpoint::Chat,
            body(json!({"type": "function", "function": {"name": "c"}})),
            false,
        )
        .unwrap_err();
        assert_eq!(e.param, Some("tool_choice"));
    }

    #[test]
    fn a_tool_result_is_named_after_the_latest_call_with_its_id() {
        let body = json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "first", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "1"},
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "second", "arguments": "not json"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "2"},
            {"role": "tool", "tool_call_id": "unknown", "name": "given", "content": "3"}]});
        let sent = chat(&adapter(), Endpoint::Chat, body, false).unwrap();
        assert_eq!(sent["messages"][1]["tool_name"], "first");
        assert_eq!(
            sent["messages"][2]["tool_calls"][0]["function"]["arguments"],
            json!({})
        );
        assert_eq!(sent["messages"][3]["tool_name"], "second");
        assert_eq!(sent["messages"][4]["tool_name"], "given");
    }

    #[test]
    fn refuses_what_ollama_cannot_honour() {
        let user = |content: Value| json!({"model": "m", "messages": [{"role": "user", "content": content}]});
        let e = refused(user(
            json!([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]),
        ));
        assert_eq!(e.status(), 400);
        assert_eq!(e.param, Some("messages"));
        assert!(
            e.message.contains("messages[0].content[0].image_url"),
            "{}",
            e.message
        );
        assert!(e.message.contains("provider local"), "{}", e.message);
        let e = refused(user(
            json!([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]),
        ));
        assert_eq!(e.param, Some("messages"));
        let mut body = user(json!("x"));
        body["n"] = json!(2);
        assert_eq!(refused(body).param, Some("n"));
        let mut body = user(json!("x"));
        body["logprobs"] = json!(true);
        let e = refused(body);
        assert_eq!(e.param, Some("logprobs"));
        assert!(e.message.contains("provider local"));
        let mut body = user(json!("x"));
        body["tools"] = json!([{"type": "custom", "custom": {"name": "x"}}]);
        assert_eq!(refused(body).param, Some("tools"));
        let mut body = user(json!("x"));
        body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "x"}});
        assert_eq!(refused(body).param, Some("response_format"));
    }

    #[test]
    fn embeddings_request_and_response() {
        let a = configure(json!({"keep_alive": 60})).unwrap();
        let request =
            EmbeddingRequest::parse(br#"{"model":"e","input":["a","b"],"dimensions":3}"#).unwrap();
        let sent: Value =
            serde_json::from_slice(&a.embed_body(&request, "all-minilm").unwrap()).unwrap();
        assert_eq!(
            sent,
            json!({"model": "all-minilm", "input": ["a", "b"], "dimensions": 3, "keep_alive": 60})
        );
        let request = EmbeddingRequest::parse(br#"{"model":"e","input":"one"}"#).unwrap();
        let sent: Value =
            serde_json::from_slice(&adapter().embed_body(&request, "m").unwrap()).unwrap();
        assert_eq!(sent, json!({"model": "m", "input": ["one"]}));
        let request = EmbeddingRequest::parse(br#"{"model":"e","input":[[1,2]]}"#).unwrap();
        assert_eq!(
            adapter().embed_body(&request, "m").unwrap_err().param,
            Some("input")
        );

        let body = br#"{"model":"all-minilm","embeddings":[[0.5,-0.25],[1,0]],"total_duration":1,"prompt_eval_count":8}"#;
        let e = embeddings(body, Some(2)).unwrap();
        assert_eq!(e.vectors, vec![vec![0.5, -0.25], vec![1.0, 0.0]]);
        assert_eq!(e.usage, Usage::new(8, 0));
        assert_eq!(
            embeddings(br#"{"embeddings":[[1]]}"#, Some(1))
                .unwrap()
                .usage,
            Usage::new(0, 0)
        );
        assert_eq!(
            embeddings(body, Some(3)).unwrap_err().cause,
            Cause::Protocol
        );
        let f = embeddings(br#"{"error":"input too long"}"#, Some(1)).unwrap_err();
        assert_eq!(
            (f.cause, f.message.as_str()),
            (Cause::InBand, "input too long")
        );
    }

    #[test]
    fn whole_responses() {
        let c = completion(br#"{"model":"llama3.2","created_at":"2025-07-07T20:32:53.84Z","message":{"role":"assistant","content":"Hello! How are you today?"},"done":true,"done_reason":"stop","total_duration":5191566416,"load_duration":2154458,"prompt_eval_count":26,"prompt_eval_duration":383809000,"eval_count":298,"eval_duration":4799921000}"#, false).unwrap();
        assert_eq!(
            c,
            Completion {
                content: Some("Hello! How are you today?".into()),
                tool_calls: vec![],
                finish_reason: FinishReason::Stop,
                usage: Usage::new(26, 298),
            }
        );
        let c = completion(br#"{"message":{"role":"assistant","content":"","tool_calls":[
            {"id":"call_x7","function":{"index":0,"name":"get_weather","arguments":{"city":"Oslo","unit":"c"}}},
            {"function":{"name":"get_time","arguments":{}}}]},"done":true,"done_reason":"stop","eval_count":20}"#, false).unwrap();
        assert_eq!(c.content, None);
        assert_eq!(c.finish_reason, FinishReason::ToolCalls);
        assert_eq!(c.usage, Usage::new(0, 20));
        assert_eq!(
            c.tool_calls,
            vec![
                ToolCallOut {
                    id: "call_x7".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Oslo","unit":"c"}"#.into()
                },
                ToolCallOut {
                    id: "call_1".into(),
                    name: "get_time".into(),
                    arguments: "{}".into()
                },
            ]
        );
        let c = completion(
            br#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"length"}"#,
            true,
        )
        .unwrap();
        assert_eq!(
            (c.content.as_deref(), c.finish_reason),
            (Some(""), FinishReason::Length)
        );
        let f = completion(
            br#"{"error":"model runner has unexpectedly stopped"}"#,
            false,
        )
        .unwrap_err();
        assert_eq!(
            (f.cause, f.message.as_str()),
            (Cause::InBand, "model runner has unexpectedly stopped")
        );
        assert_eq!(
            completion(b"<html>", false).unwrap_err().cause,
            Cause::Protocol
        );
        assert_eq!(
            completion(br#"{"done":true}"#, false).unwrap_err().cause,
            Cause::Protocol
        );
    }

    #[test]
    fn error_bodies() {
        let a = adapter();
        let f = a.failure(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            br#"{"error":"model \"llama9\" not found, try pulling it first"}"#,
        );
        assert_eq!(f.cause, Cause::Status(StatusCode::NOT_FOUND));
        assert_eq!(
            f.message,
            "model \"llama9\" not found, try pulling it first"
        );
        assert_eq!(f.code.as_deref(), Some("model_not_found"));
        let f = a.failure(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            b"404 page not found",
        );
        assert_eq!((f.message.as_str(), f.code), ("404 page not found", None));
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        let f = a.failure(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"error":"too many requests"}"#,
        );
        assert_eq!(f.retry_after, Some(std::time::Duration::from_secs(7)));
        assert_eq!(f.message, "too many requests");
        let long = format!(r#"{{"error":"{}"}}"#, "x".repeat(2000));
        let f = a.failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            &HeaderMap::new(),
            long.as_bytes(),
        );
        assert!(f.message.len() <= 503, "cut to 500 bytes plus an ellipsis");
    }

    // === streams ===

    fn shape(text: bool, include_usage: bool) -> Shape<'static> {
        Shape {
            id: "chatcmpl-r1".into(),
            text,
            model: "alias",
            include_usage,
            base64: false,
        }
    }

    /// The stream's output events as JSON (`created` dropped: it is the clock),
    /// `[DONE]` as a string; the failure if any; the usage.
    fn decode(
        shape: &Shape<'_>,
        pieces: &[&[u8]],
    ) -> (Vec<Value>, Result<(), Failure>, Option<Usage>) {
        let mut d = ChatStream::new(shape);
        let mut out = BytesMut::new();
        let mut result = Ok(());
        for piece in pieces {
            result = d.feed(piece, &mut out);
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = d.finish(&mut out);
        }
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.is_empty() || text.ends_with("\n\n"),
            "whole events only: {text:?}"
        );
        let events = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| match serde_json::from_str::<Value>(d) {
                Ok(mut v) => {
                    v.as_object_mut().unwrap().remove("created");
                    v
                }
                Err(_) => Value::String(d.to_owned()),
            })
            .collect();
        (events, result, d.usage())
    }

    const STREAM: &str = concat!(
        "{\"model\":\"llama3.2\",\"created_at\":\"2025-07-07T20:22:19.18Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":false}\n",
        "{\"model\":\"llama3.2\",\"created_at\":\"2025-07-07T20:22:19.19Z\",\"message\":{\"role\":\"assistant\",\"content\":\"Let me \u{e9}check\"},\"done\":false}\r\n",
        "{\"model\":\"llama3.2\",\"created_at\":\"2025-07-07T20:22:19.20Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"thinking\":\"hmm\",\"tool_calls\":[{\"function\":{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}},{\"id\":\"call_abc\",\"function\":{\"index\":1,\"name\":\"get_time\",\"arguments\":{}}}]},\"done\":false}\n",
        "\n",
        "{\"model\":\"llama3.2\",\"created_at\":\"2025-07-07T20:22:19.31Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"total_duration\":4883583458,\"prompt_eval_count\":26,\"eval_count\":12}\n",
    );

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-r1", "object": "chat.completion.chunk", "model": "alias",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    }

    #[test]
    fn a_stream_with_text_and_tool_calls() {
        let (events, result, usage) = decode(&shape(false, true), &[STREAM.as_bytes()]);
        result.unwrap();
        assert_eq!(usage, Some(Usage::new(26, 12)));
        assert_eq!(
            events,
            vec![
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "Let me \u{e9}check"}), Value::Null),
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
                             "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}),
                    Value::Null
                ),
                chunk(
                    json!({"tool_calls": [{"index": 1, "id": "call_abc", "type": "function",
                             "function": {"name": "get_time", "arguments": "{}"}}]}),
                    Value::Null
                ),
                chunk(json!({}), json!("tool_calls")),
                json!({"id": "chatcmpl-r1", "object": "chat.completion.chunk", "model": "alias", "choices": [],
                       "usage": {"prompt_tokens": 26, "completion_tokens": 12, "total_tokens": 38}}),
                json!("[DONE]"),
            ]
        );
    }

    #[test]
    fn any_split_gives_the_same_stream() {
        let bytes = STREAM.as_bytes();
        let (whole, _, _) = decode(&shape(false, true), &[bytes]);
        for i in 0..=bytes.len() {
            let (events, result, usage) = decode(&shape(false, true), &[&bytes[..i], &bytes[i..]]);
            result.unwrap();
            assert_eq!(events, whole, "split at {i}");
            assert_eq!(usage, Some(Usage::new(26, 12)));
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode(&shape(false, true), &singles).0, whole);
    }

    #[test]
    fn a_legacy_completion_stream_and_the_finish_reasons() {
        let stream = b"{\"message\":{\"role\":\"assistant\",\"content\":\"Once\"},\"done\":false}\n{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"length\",\"eval_count\":1}";
        let (events, result, usage) = decode(&shape(true, false), &[stream]);
        result.unwrap();
        assert_eq!(
            usage,
            Some(Usage::new(0, 1)),
            "prompt_eval_count omitted when zero"
        );
        assert_eq!(events[0]["object"], "text_completion");
        assert_eq!(events[0]["choices"][0]["text"], "Once");
        assert_eq!(events[1]["choices"][0]["finish_reason"], "length");
        assert_eq!(events[2], "[DONE]");
        assert_eq!(events.len(), 3, "no usage chunk unless asked");
        let (events, ..) = decode(
            &shape(false, false),
            &[b"{\"message\":{\"content\":\"x\"},\"done\":true}\n"],
        );
        assert_eq!(
            events[2]["choices"][0]["finish_reason"], "stop",
            "missing done_reason is stop"
        );
    }

    #[test]
    fn stream_failures() {
        let first = b"{\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n";
        let (events, result, _) = decode(
            &shape(false, false),
            &[
                first,
                b"{\"error\":\"an error was encountered while running the model\"}\n",
            ],
        );
        let f = result.unwrap_err();
        assert_eq!(f.cause, Cause::InBand);
        assert_eq!(
            f.message,
            "an error was encountered while running the model"
        );
        assert_eq!(events.len(), 2, "what came before the error was sent");
        let (_, result, usage) = decode(&shape(false, false), &[first]);
        assert_eq!(result.unwrap_err().cause, Cause::Protocol, "no done: true");
        assert_eq!(usage, None);
        let (_, result, _) = decode(
            &shape(false, false),
            &[first, b"{\"message\":{\"content\":\"cut"],
        );
        assert_eq!(result.unwrap_err().cause, Cause::Protocol);
        let (_, result, _) = decode(&shape(false, false), &[b"<html>oops</html>\n"]);
        assert_eq!(result.unwrap_err().cause, Cause::Protocol);
        let (events, result, _) = decode(
            &shape(false, false),
            &[b"{\"message\":{\"content\":\"\"},\"done\":true}\n{\"error\":\"late\"}\n"],
        );
        result.unwrap();
        assert_eq!(
            events.last().unwrap(),
            "[DONE]",
            "lines after done are ignored"
        );
    }
}
