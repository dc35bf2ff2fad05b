//! `type: anthropic`: the Anthropic Messages API (`POST {base_url}/v1/messages`).
//!
//! Chat and legacy completions become one Messages request: system and
//! developer messages are lifted into `system`, tool calls and tool results
//! become `tool_use` and `tool_result` blocks, and consecutive turns of one
//! role are merged, as the API wants strictly alternating turns. Answers come
//! back as a [`Completion`] (the usual answer read in one pass, see
//! [`answer`]) or, streamed, through [`MessageStream`], which turns
//! Anthropic's named events into OpenAI chunks with a [`ChunkWriter`] (the
//! per-token events read in one pass too, see [`event`]).
//!
//! Errors use the common shape reader: Anthropic's
//! `{"type":"error","error":{"type","message"}}` gives the message and the
//! error type as code; 529 (overloaded) stays a status of its own, which the
//! dispatcher treats like 429.

mod answer;
mod event;
mod request;

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Uri};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Adapter, AuthStyle, Built, Converted, UpstreamRequest};
use crate::call::Call;
use crate::chat::{
    ChatRequest, Completion, Content, FinishReason, Image, Message, Part, Role, Tool, ToolCallOut,
    ToolChoice, unsupported,
};
use crate::config::{Path, Problem, raw};
use crate::error::Error;
use crate::openai::{Endpoint, Usage};
use crate::route::ModelName;
use crate::stream::chunks::{ChunkWriter, Shape};
use crate::stream::{Decoder, Framed, Handler, sse::Event};
use crate::upstream::Failure;

const DEFAULT_BASE: &str = "https://api.anthropic.com";
const DEFAULT_VERSION: &str = "2023-06-01";
const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The provider options of `type: anthropic`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// The `anthropic-version` header.
    version: Option<String>,
    /// `max_tokens` sent when the client gives neither `max_tokens` nor
    /// `max_completion_tokens` (the API requires one).
    default_max_tokens: Option<u64>,
}

pub fn build(
    id: &str,
    raw: &raw::Provider,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Built> {
    let options: Options = super::options(raw, path, problems)?;
    let base = super::base_url(raw, Some(DEFAULT_BASE), path, problems);
    let version = options.version.as_deref().unwrap_or(DEFAULT_VERSION);
    let version = match HeaderValue::from_str(version) {
        Ok(v) if !version.is_empty() => Some(v),
        _ => {
            problems.push(Problem::new(
                path.key("version"),
                format!("{version:?} cannot be sent as the anthropic-version header"),
            ));
            None
        }
    };
    let default_max_tokens = match options.default_max_tokens {
        None => Some(DEFAULT_MAX_TOKENS),
        Some(0) => {
            problems.push(Problem::new(
                path.key("default_max_tokens"),
                "must be at least 1",
            ));
            None
        }
        Some(n) => Some(n),
    };
    Some(Built {
        adapter: Box::new(Anthropic {
            provider: id.into(),
            messages: super::join(&base?, "/v1/messages"),
            version: version?,
            default_max_tokens: default_max_tokens?,
        }),
        transport: None,
        default_auth: AuthStyle::Header(http::HeaderName::from_static("x-api-key")),
    })
}

#[derive(Debug)]
pub struct Anthropic {
    /// The provider id, for refusals.
    provider: Box<str>,
    messages: Uri,
    version: HeaderValue,
    default_max_tokens: u64,
}

impl Adapter for Anthropic {
    fn supports(&self, endpoint: Endpoint) -> bool {
        matches!(endpoint, Endpoint::Chat | Endpoint::Completions)
    }

    fn request(&self, call: &Call, model: &ModelName) -> Result<UpstreamRequest, Error> {
        let (body, stream) = self.translate(call.endpoint, &call.body, model)?;
        let mut headers = HeaderMap::with_capacity(1);
        headers.insert("anthropic-version", self.version.clone());
        Ok(UpstreamRequest {
            uri: self.messages.clone(),
            fixed: super::openai::json_headers(stream),
            headers,
            body,
            stream,
        })
    }

    fn response(
        &self,
        _call: &Call,
        _headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<Converted, Failure> {
        completion(&body).map(Converted::Chat)
    }

    fn decoder(&self, call: &Call) -> Box<dyn Decoder> {
        Box::new(MessageStream::new(&Shape::of(call)))
    }
}

// === wire types: request ===
//
// Their derived `Serialize` defines the JSON; `request.rs` writes the same
// bytes without serde's passes over each string.

#[derive(Debug, Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolDef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Debug, Serialize)]
struct Turn<'a> {
    role: TurnRole,
    content: Vec<Block<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum TurnRole {
    User,
    Assistant,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: Cow<'a, str>,
    },
    Image {
        source: ImageSource<'a>,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: serde_json::Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Debug, Serialize)]
struct ToolDef<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a RawValue,
}

#[derive(Debug, Serialize)]
struct ToolChoiceWire<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

// === wire types: responses and events ===

/// A whole Messages response; only the fields the translation reads.
#[derive(Debug, Deserialize)]
struct MessageResponse<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Vec<ContentBlock<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: WireUsage,
}

/// A content block of a response, or the skeleton of a streamed one.
#[derive(Debug, Deserialize)]
struct ContentBlock<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

/// Token counts; in a stream, `message_delta` repeats them cumulatively, so
/// a count that is present replaces the one before.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

/// One stream event's data; which fields are set depends on `type`.
#[derive(Debug, Deserialize)]
struct StreamEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(borrow, default)]
    content_block: Option<ContentBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<EventDelta<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// `content_block_delta.delta` or `message_delta.delta`.
#[derive(Debug, Deserialize)]
struct EventDelta<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

// === conversions: request ===

impl Anthropic {
    /// The Messages body for a chat (or legacy completion) body, and whether
    /// it asks for a stream.
    fn translate(
        &self,
        endpoint: Endpoint,
        body: &[u8],
        model: &str,
    ) -> Result<(Bytes, bool), Error> {
        let request = ChatRequest::parse(endpoint, body)?;
        let wire = self.wire(&request, model)?;
        let json = wire.to_json(body.len() + super::TRANSLATED_ROOM);
        Ok((Bytes::from(json), wire.stream))
    }

    /// The Messages request for a client's request.
    fn wire<'a>(
        &self,
        request: &'a ChatRequest<'_>,
        model: &'a str,
    ) -> Result<MessagesRequest<'a>, Error> {
        request.refuse_unsupported(&self.provider, false)?;
        request.refuse_echo(&self.provider)?;
        let provider = &*self.provider;

        let temperature = request.temperature.map(|t| t.clamp(0.0, 1.0));
        if temperature != request.temperature {
            tracing::debug!(
                provider,
                "temperature clamped to the Messages API range 0 to 1"
            );
        }
        let tools = match &request.tools {
            Some(tools) => tools
                .iter()
                .map(|t| tool(t, provider))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let tool_choice = if tools.is_empty() {
            None
        } else {
            tool_choice(request)?
        };
        let dropped = dropped_fields(request, tools.is_empty());
        if !dropped.is_empty() {
            tracing::debug!(provider, ?dropped, "fields the Messages API has no use for");
        }

        Ok(MessagesRequest {
            model,
            max_tokens: request.max_tokens().unwrap_or(self.default_max_tokens),
            system: request.system_text(),
            messages: turns(&request.messages, provider)?,
            temperature,
            top_p: request.top_p,
            stop_sequences: request
                .stop
                .as_ref()
                .map(|s| s.to_vec())
                .unwrap_or_default(),
            tools,
            tool_choice,
            metadata: request.user.as_deref().map(|user_id| Metadata { user_id }),
            stream: request.wants_stream(),
        })
    }
}

/// Request fields that are dropped: they have no Messages equivalent, and
/// losing them does not change what the answer means.
fn dropped_fields(request: &ChatRequest<'_>, no_tools: bool) -> Vec<&'static str> {
    let mut dropped = Vec::new();
    let mut note = |present: bool, name: &'static str| {
        if present {
            dropped.push(name);
        }
    };
    note(request.presence_penalty.is_some(), "presence_penalty");
    note(request.frequency_penalty.is_some(), "frequency_penalty");
    note(request.seed.is_some(), "seed");
    note(request.top_logprobs.is_some(), "top_logprobs");
    note(
        request
            .response_format
            .as_ref()
            .is_some_and(|f| f.kind != "json_schema"),
        "response_format",
    );
    note(
        no_tools && (request.tool_choice.is_some() || request.parallel_tool_calls.is_some()),
        "tool_choice",
    );
    note(request.messages.iter().any(|m| m.name.is_some()), "name");
    dropped
}

/// `{"type":"function","function":{…}}` → `{name, description, input_schema}`.
fn tool<'a>(t: &'a Tool<'_>, provider: &str) -> Result<ToolDef<'a>, Error> {
    let Some(function) = t.function.as_ref().filter(|_| t.kind == "function") else {
        return Err(unsupported(
            "tools",
            provider,
            "only tools of type `function` are available",
        ));
    };
    Ok(ToolDef {
        name: &function.name,
        description: function.description.as_deref(),
        input_schema: function.parameters.unwrap_or_else(|| empty_schema()),
    })
}

/// `{"type":"object","properties":{}}`: the schema of a tool without parameters.
fn empty_schema() -> &'static RawValue {
    static EMPTY: std::sync::LazyLock<Box<RawValue>> = std::sync::LazyLock::new(|| {
        RawValue::from_string(r#"{"type":"object","properties":{}}"#.to_owned())
            .expect("a JSON object")
    });
    &EMPTY
}

/// OpenAI `tool_choice` (and `parallel_tool_calls: false`) → Anthropic's.
fn tool_choice<'a>(request: &'a ChatRequest<'_>) -> Result<Option<ToolChoiceWire<'a>>, Error> {
    let (kind, name) = match &request.tool_choice {
        None => ("auto", None),
        Some(ToolChoice::Mode(mode)) => match mode.as_ref() {
            "auto" => ("auto", None),
            "none" => ("none", None),
            "required" => ("any", None),
            other => {
                return Err(Error::invalid_param(
                    "tool_choice",
                    format!("`tool_choice` {other:?} is not none, auto, required or a function"),
                ));
            }
        },
        Some(ToolChoice::Named(named)) => ("tool", Some(named.function.name.as_ref())),
    };
    let serial = request.parallel_tool_calls == Some(false) && kind != "none";
    if request.tool_choice.is_none() && !serial {
        return Ok(None);
    }
    Ok(Some(ToolChoiceWire {
        kind,
        name,
        disable_parallel_tool_use: serial.then_some(true),
    }))
}

/// The conversation as alternating user and assistant turns.
fn turns<'a>(messages: &'a [Message<'_>], provider: &str) -> Result<Vec<Turn<'a>>, Error> {
    let mut turns: Vec<Turn<'a>> = Vec::with_capacity(messages.len());
    for message in messages {
        let (role, blocks) = match message.role {
            Role::System | Role::Developer => continue,
            Role::User => (TurnRole::User, user_blocks(message, provider)?),
            Role::Assistant => (TurnRole::Assistant, assistant_blocks(message)),
            Role::Tool => (TurnRole::User, vec![tool_result(message)?]),
            Role::Function => {
                return Err(unsupported(
                    "messages",
                    provider,
                    "the legacy `function` role is not available; use tools",
                ));
            }
        };
        push(&mut turns, role, blocks);
    }
    Ok(turns)
}

/// Appends blocks as a turn of `role`, merged into the last turn when it has
/// the same role. Tool results lead their user turn, as the API wants.
fn push<'a>(turns: &mut Vec<Turn<'a>>, role: TurnRole, blocks: Vec<Block<'a>>) {
    if blocks.is_empty() {
        return;
    }
    let Some(last) = turns.last_mut().filter(|t| t.role == role) else {
        turns.push(Turn {
            role,
            content: blocks,
        });
        return;
    };
    for block in blocks {
        if matches!(block, Block::ToolResult { .. }) {
            let at = last
                .content
                .iter()
                .take_while(|b| matches!(b, Block::ToolResult { .. }))
                .count();
            last.content.insert(at, block);
        } else {
            last.content.push(block);
        }
    }
}

fn text_block<'a>(text: Cow<'a, str>) -> Option<Block<'a>> {
    (!text.is_empty()).then_some(Block::Text { text })
}

fn user_blocks<'a>(message: &'a Message<'_>, provider: &str) -> Result<Vec<Block<'a>>, Error> {
    match &message.content {
        None => Ok(Vec::new()),
        Some(Content::Text(text)) => Ok(text_block(Cow::Borrowed(text.as_ref()))
            .into_iter()
            .collect()),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                let block = match part {
                    Part::Text { text } => text_block(Cow::Borrowed(text.as_ref())),
                    Part::Refusal { refusal } => text_block(Cow::Borrowed(refusal.as_ref())),
                    Part::ImageUrl { image_url } => Some(Block::Image {
                        source: match image_url.image() {
                            Image::Base64 { media_type, data } => {
                                ImageSource::Base64 { media_type, data }
                            }
                            Image::Url(url) => ImageSource::Url { url },
                        },
                    }),
                    Part::InputAudio {} | Part::File {} => {
                        return Err(unsupported(
                            "messages",
                            provider,
                            "only text and image content parts are available",
                        ));
                    }
                };
                blocks.extend(block);
            }
            Ok(blocks)
        }
    }
}

/// The text (if any), then one `tool_use` block per tool call.
fn assistant_blocks<'a>(message: &'a Message<'_>) -> Vec<Block<'a>> {
    let calls = message.tool_calls.as_deref().unwrap_or_default();
    let mut blocks = Vec::with_capacity(calls.len() + 1);
    let text = match &message.content {
        Some(Content::Text(text)) => Cow::Borrowed(text.as_ref()),
        Some(content) => Cow::Owned(content.text()),
        None => Cow::Borrowed(""),
    };
    blocks.extend(text_block(text));
    blocks.extend(calls.iter().map(|call| Block::ToolUse {
        id: &call.id,
        name: &call.function.name,
        input: call.function.arguments_value(),
    }));
    blocks
}

fn tool_result<'a>(message: &'a Message<'_>) -> Result<Block<'a>, Error> {
    let tool_use_id = message.tool_call_id.as_deref().ok_or_else(|| {
        Error::invalid_param("messages", "a `tool` message needs its `tool_call_id`")
    })?;
    Ok(Block::ToolResult {
        tool_use_id,
        content: message
            .content
            .as_ref()
            .map(Content::text)
            .filter(|t| !t.is_empty()),
    })
}

// === conversions: answers ===

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
fn finish_reason(stop_reason: Option<&str>) -> FinishReason {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        // end_turn, stop_sequence, pause_turn, null and reasons yet unknown
        _ => FinishReason::Stop,
    }
}

impl WireUsage {
    /// Takes the counts `later` has, keeps the others.
    fn update(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// Prompt tokens are the whole input: uncached, written to and read from the cache.
    fn openai(self) -> Usage {
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0));
        Usage::new(prompt, self.output_tokens.unwrap_or(0))
    }
}

/// A whole Messages response → a completion.
fn completion(body: &[u8]) -> Result<Completion, Failure> {
    let response = crate::json::from_slice_or(body, answer::message)
        .map_err(|e| Failure::protocol(format!("the response is not a Messages object: {e}")))?;
    read_answer(body, response)
}

/// The completion a Messages answer holds (`body` is its text, for errors).
fn read_answer(body: &[u8], response: MessageResponse<'_>) -> Result<Completion, Failure> {
    if response.kind.as_deref() == Some("error") {
        return Err(super::in_band_failure(body));
    }
    let mut content: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in response.content {
        match block.kind.as_ref() {
            "text" => content
                .get_or_insert_with(String::new)
                .push_str(block.text.as_deref().unwrap_or("")),
            "tool_use" => tool_calls.push(ToolCallOut {
                id: block.id.unwrap_or_default().into_owned(),
                name: block.name.unwrap_or_default().into_owned(),
                arguments: block.input.map_or("{}", RawValue::get).to_owned(),
            }),
            // thinking, redacted_thinking, server-tool blocks
            _ => {}
        }
    }
    Ok(Completion {
        content,
        tool_calls,
        finish_reason: finish_reason(response.stop_reason.as_deref()),
        usage: response.usage.openai(),
    })
}

// === stream decoding ===

/// Anthropic's named events → OpenAI chunks.
pub type MessageStream = Framed<StreamState>;

pub struct StreamState {
    writer: ChunkWriter,
    /// Started tool calls, in order: the Anthropic block index, and whether
    /// any argument text went out yet.
    tools: Vec<(u64, bool)>,
    usage: Option<WireUsage>,
    stop_reason: Option<FinishReason>,
}

impl Framed<StreamState> {
    pub fn new(shape: &Shape<'_>) -> Self {
        Framed::sse(StreamState {
            writer: ChunkWriter::new(shape),
            tools: Vec::new(),
            usage: None,
            stop_reason: None,
        })
    }
}

impl Handler for StreamState {
    fn event(&mut self, event: Event<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        self.translate(event, out)
    }

    fn end(&mut self, _out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() {
            Ok(())
        } else {
            Err(Failure::protocol(
                "the stream ended before its message_stop event",
            ))
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.map(WireUsage::openai)
    }
}

impl StreamState {
    fn translate(&mut self, event: Event<'_>, out: &mut BytesMut) -> Result<(), Failure> {
        if self.writer.is_finished() || event.event == "ping" {
            return Ok(());
        }
        if event.event == "error" {
            return Err(super::in_band_failure(event.data.as_bytes()));
        }
        let data = match event::event(event.data) {
            Some(data) => data,
            None => serde_json::from_str(event.data)
                .map_err(|e| Failure::protocol(format!("an event is not a Messages event: {e}")))?,
        };
        match data.kind.as_ref() {
            "message_start" => {
                self.writer.role(out);
                if let Some(usage) = data.message.and_then(|m| m.usage) {
                    self.usage.get_or_insert_default().update(usage);
                }
            }
            "content_block_start" => {
                let Some(block) = data.content_block else {
                    return Err(Failure::protocol("content_block_start without its block"));
                };
                match block.kind.as_ref() {
                    "text" => self
                        .writer
                        .content(out, block.text.as_deref().unwrap_or("")),
                    "tool_use" => {
                        let id = block.id.as_deref().unwrap_or("");
                        let name = block.name.as_deref().unwrap_or("");
                        let index = block_index(data.index)?;
                        // OpenAI counts tool calls only: the call's position in `tools`.
                        self.writer.tool_call(out, id, name, "");
                        self.tools.push((index, false));
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let Some(delta) = data.delta else {
                    return Err(Failure::protocol("content_block_delta without its delta"));
                };
                match delta.kind.as_deref() {
                    Some("text_delta") => self
                        .writer
                        .content(out, delta.text.as_deref().unwrap_or("")),
                    Some("input_json_delta") => {
                        let fragment = delta.partial_json.as_deref().unwrap_or("");
                        let at = self.tool(data.index)?;
                        self.writer.tool_arguments(out, at as u32, fragment);
                        self.tools[at].1 |= !fragment.is_empty();
                    }
                    // thinking, signature and citations deltas
                    _ => {}
                }
            }
            "content_block_stop" => {
                // A tool call whose input streamed no text has the input `{}`.
                if let Some(at) = self.tools.iter().position(|t| Some(t.0) == data.index)
                    && !self.tools[at].1
                {
                    self.tools[at].1 = true;
                    self.writer.tool_arguments(out, at as u32, "{}");
                }
            }
            "message_delta" => {
                if let Some(reason) = data.delta.and_then(|d| d.stop_reason) {
                    self.stop_reason = Some(finish_reason(Some(&reason)));
                }
                if let Some(usage) = data.usage {
                    self.usage.get_or_insert_default().update(usage);
                }
            }
            "message_stop" => {
                let reason = self.stop_reason.unwrap_or(FinishReason::Stop);
                self.writer
                    .finish(out, reason, self.usage.map(WireUsage::openai));
            }
            "error" => return Err(super::in_band_failure(event.data.as_bytes())),
            // ping, and event types added later
            _ => {}
        }
        Ok(())
    }

    /// Where the tool call streamed in Anthropic block `index` sits among the tool calls.
    fn tool(&self, index: Option<u64>) -> Result<usize, Failure> {
        let index = block_index(index)?;
        self.tools.iter().position(|t| t.0 == index).ok_or_else(|| {
            Failure::protocol(format!(
                "input_json_delta for block {index}, which is not a tool_use block"
            ))
        })
    }
}

fn block_index(index: Option<u64>) -> Result<u64, Failure> {
    index.ok_or_else(|| Failure::protocol("a content block event without its index"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Cause;
    use http::{HeaderMap, StatusCode};
    use serde_json::{Value, json};
    use std::time::Duration;

    pub(super) fn adapter() -> Anthropic {
        Anthropic {
            provider: "claude".into(),
            messages: super::super::join(DEFAULT_BASE, "/v1/messages"),
            version: HeaderValue::from_static(DEFAULT_VERSION),
            default_max_tokens: DEFAULT_MAX_TOKENS,
        }
    }

    fn translate(endpoint: Endpoint, body: Value) -> Result<(Value, bool), Error> {
        let body = body.to_string();
        let (bytes, stream) = adapter().translate(endpoint, body.as_bytes(), "claude-x")?;
        Ok((serde_json::from_slice(&bytes).unwrap(), stream))
    }

    fn chat(body: Value) -> Value {
        translate(Endpoint::Chat, body).unwrap().0
    }

    #[test]
    fn a_whole_conversation_translates() {
        let (sent, stream) = translate(
            Endpoint::Chat,
            json!({
                "model": "alias",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                    {"role": "user", "name": "ann", "content": [
                        {"type": "text", "text": "Weather here?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/sky.jpg", "detail": "low"}}
                    ]},
                    {"role": "assistant", "content": "Let me check.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"unit\":\"C\"}"}},
                        {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "12C"},
                    {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "09:00"}]},
                    {"role": "user", "content": "Thanks. And tomorrow?"}
                ],
                "tools": [
                    {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                    {"type": "function", "function": {"name": "get_time"}}
                ],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": false,
                "stop": ["END", "STOP"],
                "temperature": 1.5,
                "top_p": 0.9,
                "max_tokens": 100,
                "max_completion_tokens": 200,
                "user": "user-42",
                "seed": 7,
                "stream": true,
                "stream_options": {"include_usage": true}
            }),
        )
        .unwrap();
        assert!(stream);
        assert_eq!(
            sent,
            json!({
                "model": "claude-x",
                "max_tokens": 200,
                "system": "Be brief.\n\nUse metric.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "Weather here?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/sky.jpg"}}
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo", "unit": "C"}},
                        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12C"},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "09:00"},
                        {"type": "text", "text": "Thanks. And tomorrow?"}
                    ]}
                ],
                "temperature": 1.0,
                "top_p": 0.9,
                "stop_sequences": ["END", "STOP"],
                "tools": [
                    {"name": "get_weather", "description": "Current weather",
                     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
                ],
                "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
                "metadata": {"user_id": "user-42"},
                "stream": true
            })
        );
    }

    #[test]
    fn max_tokens_defaults_and_stream_is_left_out_when_false() {
        let sent = chat(json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}));
        assert_eq!(
            sent,
            json!({"model": "claude-x", "max_tokens": 4096,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
        );
        let sent = chat(
            json!({"model": "m", "max_tokens": 9, "temperature": 0.3, "stream": false, "stop": "X",
                   "messages": [{"role": "user", "content": "Hi"}]}),
        );
        assert_eq!(sent["max_tokens"], 9);
        assert_eq!(sent["temperature"], 0.3);
        assert_eq!(sent["stop_sequences"], json!(["X"]));
        assert!(sent.get("stream").is_none());
    }

    #[test]
    fn legacy_completions_are_one_user_turn() {
        let (sent, stream) = translate(
            Endpoint::Completions,
            json!({"model": "m", "prompt": "Once upon", "max_tokens": 5, "stream": true}),
        )
        .unwrap();
        assert!(stream);
        assert_eq!(
            sent,
            json!({"model": "claude-x", "max_tokens": 5,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "Once upon"}]}],
                   "stream": true})
        );
    }

    #[test]
    fn turns_alternate() {
        let sent = chat(json!({"model": "m", "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "system", "content": "s"},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "not json"}}]},
            {"role": "user", "content": "too early"},
            {"role": "tool", "tool_call_id": "t1", "content": ""}
        ]}));
        assert_eq!(
            sent["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "c"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1"},
                    {"type": "text", "text": "too early"}
                ]}
            ])
        );
        assert_eq!(sent["system"], "s");
    }

    #[test]
    fn tool_choice_table() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let cases: &[(Value, Value, Option<Value>)] = &[
            (Value::Null, Value::Null, None),
            (json!("auto"), Value::Null, Some(json!({"type": "auto"}))),
            (json!("none"), Value::Null, Some(json!({"type": "none"}))),
            (json!("required"), Value::Null, Some(json!({"type": "any"}))),
            (
                json!({"type": "function", "function": {"name": "f"}}),
                Value::Null,
                Some(json!({"type": "tool", "name": "f"})),
            ),
            (
                Value::Null,
                json!(false),
                Some(json!({"type": "auto", "disable_parallel_tool_use": true})),
            ),
            (
                json!("required"),
                json!(false),
                Some(json!({"type": "any", "disable_parallel_tool_use": true})),
            ),
            (json!("none"), json!(false), Some(json!({"type": "none"}))),
            (json!("auto"), json!(true), Some(json!({"type": "auto"}))),
        ];
        for (choice, parallel, expected) in cases {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools});
            if !choice.is_null() {
                body["tool_choice"] = choice.clone();
            }
            if !parallel.is_null() {
                body["parallel_tool_calls"] = parallel.clone();
            }
            let sent = chat(body);
            assert_eq!(
                sent.get("tool_choice"),
                expected.as_ref(),
                "{choice} {parallel}"
            );
        }
        // Without tools there is nothing to choose from.
        let sent = chat(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "none"}),
        );
        assert!(sent.get("tool_choice").is_none() && sent.get("tools").is_none());
        let e = translate(
            Endpoint::Chat,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "sometimes"}),
        )
        .unwrap_err();
        assert_eq!(e.param, Some("tool_choice"));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let user = json!([{"role": "user", "content": "x"}]);
        let cases: &[(Value, &str)] = &[
            (json!({"n": 2}), "n"),
            (json!({"logprobs": true}), "logprobs"),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}),
                "response_format",
            ),
            (
                json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
                "tools",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]}),
                "messages",
            ),
            (
                json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}),
                "messages",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages",
            ),
        ];
        for (extra, param) in cases {
            let mut body = json!({"model": "m", "messages": user});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let e = translate(Endpoint::Chat, body).unwrap_err();
            assert_eq!(e.param, Some(*param), "{extra}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
        let e = translate(
            Endpoint::Chat,
            json!({"model": "m", "messages": user, "n": 2}),
        )
        .unwrap_err();
        assert!(e.message.contains("provider claude"), "{}", e.message);
        // json_object and n = 1 are fine.
        let sent = chat(
            json!({"model": "m", "messages": user, "n": 1, "response_format": {"type": "json_object"}}),
        );
        assert!(sent.get("response_format").is_none());
    }

    #[test]
    fn whole_responses_convert() {
        let body = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"thinking","thinking":"hm","signature":"s"},
                       {"type":"text","text":"I'll check "},{"type":"text","text":"the weather."},
                       {"type":"tool_use","id":"toolu_01A","name":"get_weather","input":{"location":"Paris","days":[1, 2]}}],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":377,"output_tokens":65,"cache_creation_input_tokens":10,"cache_read_input_tokens":3,"service_tier":"standard"}}"#;
        assert_eq!(
            completion(body).unwrap(),
            Completion {
                content: Some("I'll check the weather.".into()),
                tool_calls: vec![ToolCallOut {
                    id: "toolu_01A".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"location":"Paris","days":[1, 2]}"#.into(),
                }],
                finish_reason: FinishReason::ToolCalls,
                usage: Usage::new(390, 65),
            }
        );
        let c = completion(br#"{"type":"message","content":[{"type":"tool_use","id":"t","name":"f","input":{}}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":2,"cache_read_input_tokens":null}}"#).unwrap();
        assert_eq!(c.content, None);
        assert_eq!(c.tool_calls[0].arguments, "{}");
        assert_eq!(c.usage, Usage::new(1, 2));
        let f = completion(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap_err();
        assert_eq!((f.cause, f.message.as_str()), (Cause::InBand, "Overloaded"));
        assert_eq!(completion(b"<html>").unwrap_err().cause, Cause::Protocol);
    }

    #[test]
    fn stop_reasons_map() {
        for (reason, expected) in [
            (Some("end_turn"), FinishReason::Stop),
            (Some("stop_sequence"), FinishReason::Stop),
            (Some("max_tokens"), FinishReason::Length),
            (Some("model_context_window_exceeded"), FinishReason::Length),
            (Some("tool_use"), FinishReason::ToolCalls),
            (Some("refusal"), FinishReason::ContentFilter),
            (Some("pause_turn"), FinishReason::Stop),
            (Some("something_new"), FinishReason::Stop),
            (None, FinishReason::Stop),
        ] {
            assert_eq!(finish_reason(reason), expected, "{reason:?}");
        }
    }

    #[test]
    fn http_errors_read_the_anthropic_body() {
        let a = adapter();
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        let f = a.failure(
            StatusCode::from_u16(529).unwrap(),
            &headers,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#,
        );
        assert_eq!(f.cause, Cause::Status(StatusCode::from_u16(529).unwrap()));
        assert_eq!(f.message, "Overloaded");
        assert_eq!(f.code.as_deref(), Some("overloaded_error"));
        assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        let long = "x".repeat(900);
        let body =
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": long}});
        let f = a.failure(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            body.to_string().as_bytes(),
        );
        assert!(f.message.len() <= 500 + '…'.len_utf8());
        assert_eq!(f.code.as_deref(), Some("invalid_request_error"));
    }

    #[test]
    fn options_and_their_problems() {
        fn build_with(yaml: Value) -> (Option<Built>, Vec<String>) {
            let raw: raw::Provider = serde_json::from_value(yaml).unwrap();
            let mut problems = Vec::new();
            let built = build("claude", &raw, &Path::root().key("claude"), &mut problems);
            (built, problems.iter().map(ToString::to_string).collect())
        }
        let (built, problems) = build_with(json!({"type": "anthropic"}));
        assert!(problems.is_empty(), "{problems:?}");
        let built = built.unwrap();
        assert_eq!(
            built.default_auth,
            AuthStyle::Header(http::HeaderName::from_static("x-api-key"))
        );
        assert!(built.transport.is_none());
        assert!(built.adapter.supports(Endpoint::Chat));
        assert!(built.adapter.supports(Endpoint::Completions));
        assert!(!built.adapter.supports(Endpoint::Embeddings));
        assert!(format!("{:?}", built.adapter).contains("https://api.anthropic.com/v1/messages"));

        let (built, problems) = build_with(
            json!({"type": "anthropic", "base_url": "http://mock:1/", "version": "2024-01-01", "default_max_tokens": 10}),
        );
        assert!(problems.is_empty(), "{problems:?}");
        let debug = format!("{:?}", built.unwrap().adapter);
        assert!(debug.contains("http://mock:1/v1/messages"), "{debug}");
        assert!(debug.contains("2024-01-01") && debug.contains("default_max_tokens: 10"));

        let (built, problems) = build_with(
            json!({"type": "anthropic", "version": "bad\nvalue", "default_max_tokens": 0}),
        );
        assert!(built.is_none());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("claude.version: "), "{problems:?}");
        assert!(problems[1].starts_with("claude.default_max_tokens: "));

        let (built, problems) = build_with(json!({"type": "anthropic", "pace": "1s"}));
        assert!(built.is_none());
        assert!(problems[0].contains("pace"), "{problems:?}");
    }

    // === streams ===

    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01X\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":377,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me check, h\u{e9}.\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01A\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"locat\"}}\n\n",
        "event: some_future_event\n",
        "data: {\"type\":\"some_future_event\",\"index\":1}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ion\\\": \\\"Paris\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01B\",\"name\":\"get_time\",\"input\":{}}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":65}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    fn shape(include_usage: bool) -> Shape<'static> {
        Shape {
            id: "chatcmpl-1".into(),
            text: false,
            model: "alias",
            include_usage,
            base64: false,
        }
    }

    /// Feeds `pieces` in order; the output, and the result of the end.
    fn decode(shape: &Shape<'_>, pieces: &[&[u8]]) -> (String, Result<(), Failure>, Option<Usage>) {
        let mut d = MessageStream::new(shape);
        let mut out = BytesMut::new();
        for piece in pieces {
            if let Err(f) = d.feed(piece, &mut out) {
                return (String::from_utf8(out.to_vec()).unwrap(), Err(f), d.usage());
            }
        }
        let r = d.finish(&mut out);
        (String::from_utf8(out.to_vec()).unwrap(), r, d.usage())
    }

    /// The chunks of an output, `created` taken out (it is the clock's).
    fn chunks(out: &str) -> Vec<Value> {
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        out.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| {
                let mut v: Value = serde_json::from_str(d).unwrap();
                v.as_object_mut().unwrap().remove("created");
                v
            })
            .collect()
    }

    fn choice(delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "alias",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    }

    #[test]
    fn a_stream_becomes_openai_chunks() {
        let (out, r, usage) = decode(&shape(true), &[STREAM.as_bytes()]);
        r.unwrap();
        assert_eq!(usage, Some(Usage::new(382, 65)));
        let null = Value::Null;
        assert_eq!(
            chunks(&out),
            vec![
                choice(json!({"role": "assistant", "content": ""}), null.clone()),
                choice(json!({"content": "Let me check, hé."}), null.clone()),
                choice(
                    json!({"tool_calls": [{"index": 0, "id": "toolu_01A", "type": "function",
                                          "function": {"name": "get_weather", "arguments": ""}}]}),
                    null.clone()
                ),
                choice(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"locat"}}]}),
                    null.clone()
                ),
                choice(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "ion\": \"Paris\"}"}}]}),
                    null.clone()
                ),
                choice(
                    json!({"tool_calls": [{"index": 1, "id": "toolu_01B", "type": "function",
                                          "function": {"name": "get_time", "arguments": ""}}]}),
                    null.clone()
                ),
                choice(
                    json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
                    null.clone()
                ),
                choice(json!({}), json!("tool_calls")),
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "alias", "choices": [],
                       "usage": {"prompt_tokens": 382, "completion_tokens": 65, "total_tokens": 447}}),
            ]
        );
    }

    #[test]
    fn every_split_gives_the_same_chunks() {
        let whole = chunks(&decode(&shape(false), &[STREAM.as_bytes()]).0);
        let bytes = STREAM.as_bytes();
        for at in 0..=bytes.len() {
            let (out, r, usage) = decode(&shape(false), &[&bytes[..at], &bytes[at..]]);
            r.unwrap();
            assert_eq!(chunks(&out), whole, "split at {at}");
            assert_eq!(usage, Some(Usage::new(382, 65)));
        }
        for size in [1, 2, 3, 7, 64] {
            let pieces: Vec<&[u8]> = bytes.chunks(size).collect();
            let (out, r, _) = decode(&shape(false), &pieces);
            r.unwrap();
            assert_eq!(chunks(&out), whole, "pieces of {size}");
        }
        let crlf = STREAM.replace('\n', "\r\n");
        let pieces: Vec<&[u8]> = crlf.as_bytes().chunks(5).collect();
        assert_eq!(chunks(&decode(&shape(false), &pieces).0), whole);
    }

    #[test]
    fn legacy_completions_stream_text() {
        let mut text_shape = shape(false);
        text_shape.text = true;
        text_shape.id = "cmpl-1".into();
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" a time\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let (out, r, usage) = decode(&text_shape, &[stream.as_bytes()]);
        r.unwrap();
        assert_eq!(usage, Some(Usage::new(3, 2)));
        let c = chunks(&out);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["object"], "text_completion");
        assert_eq!(c[0]["choices"][0]["text"], " a time");
        assert_eq!(c[1]["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn error_events_and_broken_streams_fail() {
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n";
        let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let (out, r, usage) = decode(&shape(false), &[start.as_bytes(), error.as_bytes()]);
        let f = r.unwrap_err();
        assert_eq!(f.cause, Cause::InBand);
        assert_eq!(f.message, "Overloaded");
        assert_eq!(f.code.as_deref(), Some("overloaded_error"));
        assert!(out.contains("\"role\":\"assistant\""));
        assert!(
            !out.contains("[DONE]"),
            "the relay writes the error event and [DONE]"
        );
        assert_eq!(usage, Some(Usage::new(3, 1)));

        // An error event without the `event:` line is recognised by its type.
        let (_, r, _) = decode(
            &shape(false),
            &[b"data: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"boom\"}}\n\n"],
        );
        assert_eq!(r.unwrap_err().message, "boom");

        let (_, r, _) = decode(&shape(false), &[start.as_bytes()]);
        let f = r.unwrap_err();
        assert_eq!(f.cause, Cause::Protocol);
        assert!(f.message.contains("message_stop"), "{}", f.message);

        let (_, r, _) = decode(&shape(false), &[]);
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);

        let stray = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}\n\n";
        let (_, r, _) = decode(&shape(false), &[start.as_bytes(), stray.as_bytes()]);
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);

        let (_, r, _) = decode(
            &shape(false),
            &[b"event: message_start\ndata: {not json\n\n"],
        );
        assert_eq!(r.unwrap_err().cause, Cause::Protocol);
    }

    #[test]
    fn events_after_message_stop_are_ignored() {
        let mut bytes = STREAM.to_owned();
        bytes.push_str("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"late\"}}\n\n");
        let (out, r, _) = decode(&shape(false), &[bytes.as_bytes()]);
        r.unwrap();
        assert_eq!(out.matches("[DONE]").count(), 1);
    }
}
