//! What the declarative dialects (`graphql`, `rest`) share: JSON templates
//! filled from the client's request, JSON Pointers into the backend's answer,
//! and the backend's finish reason in OpenAI's words.
//!
//! # Templates
//!
//! A template is any JSON value from the config. Its strings may hold
//! `{{placeholder}}`s:
//! - a string that is exactly one placeholder becomes the field's JSON value
//!   (`"{{max_tokens}}"` → `256`), or `null` when the request has no such
//!   field (the key is kept);
//! - a placeholder inside a longer string is interpolated as text: a string
//!   as it is, `null` as nothing, anything else as its JSON text.
//!
//! Keys are literal, and `{{` always opens a placeholder (there is no
//! escape). A template is compiled once, when the config loads: an unknown
//! placeholder is a config problem at its YAML path. Parts without
//! placeholders are serialised then, so rendering only fills the holes.
//!
//! # Pointers
//!
//! JSON Pointers (RFC 6901): `""` is the whole document, `/a/0/b~1c` walks
//! keys and array indices, `~1` is `/` and `~0` is `~`.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::BytesMut;
use http::Uri;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::call::Call;
use crate::chat::{ChatRequest, Completion, FinishReason, Role, ToolChoice, unsupported};
use crate::config::{Path, Problem};
use crate::error::Error;
use crate::openai::{Endpoint, Usage};
use crate::stream::Decoder;
use crate::upstream::Failure;

// === placeholders ===

/// What a placeholder names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The backend model name of the target.
    Model,
    /// The messages array as the client sent it (a legacy prompt becomes
    /// one user message).
    Messages,
    /// The conversation as plain text, or the legacy prompt.
    Prompt,
    LastUserMessage,
    /// System and developer messages, joined by blank lines.
    System,
    /// `max_completion_tokens`, else `max_tokens`.
    MaxTokens,
    Temperature,
    TopP,
    /// Always an array of strings.
    Stop,
    /// Whether the backend is asked to stream.
    Stream,
    User,
    /// Any top-level field of the client's body, as sent.
    Request(Box<str>),
}

/// The names, in the order the documentation lists them.
const NAMES: &[(&str, Field)] = &[
    ("model", Field::Model),
    ("messages", Field::Messages),
    ("prompt", Field::Prompt),
    ("last_user_message", Field::LastUserMessage),
    ("system", Field::System),
    ("max_tokens", Field::MaxTokens),
    ("temperature", Field::Temperature),
    ("top_p", Field::TopP),
    ("stop", Field::Stop),
    ("stream", Field::Stream),
    ("user", Field::User),
];

impl Field {
    fn parse(name: &str) -> Result<Field, String> {
        if let Some((_, field)) = NAMES.iter().find(|(n, _)| *n == name) {
            return Ok(field.clone());
        }
        if let Some(key) = name.strip_prefix("request.") {
            let fine = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if fine {
                return Ok(Field::Request(key.into()));
            }
            return Err(format!(
                "`{{{{{name}}}}}` must name one top-level field, such as `{{{{request.seed}}}}`"
            ));
        }
        let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
        Err(format!(
            "unknown placeholder `{{{{{name}}}}}`; known: {}, request.<field>",
            known.join(", ")
        ))
    }
}

// === templates ===

/// A compiled JSON template.
#[derive(Debug, Clone)]
pub struct Template(Node);

#[derive(Debug, Clone)]
enum Node {
    /// JSON text with no placeholder in it.
    Literal(Box<str>),
    /// A string that is one placeholder: the field's JSON value.
    Field(Field),
    /// A string with placeholders inside text.
    Text(Vec<Piece>),
    Array(Vec<Node>),
    /// Keys already as JSON strings.
    Object(Vec<(Box<str>, Node)>),
}

#[derive(Debug, Clone)]
enum Piece {
    Text(Box<str>),
    Field(Field),
}

impl Template {
    /// Compiles `value`, reporting every bad placeholder at its path.
    pub fn compile(value: &Value, path: &Path, problems: &mut Vec<Problem>) -> Option<Template> {
        let before = problems.len();
        let node = compile(value, path, problems);
        (problems.len() == before).then_some(Template(node))
    }

    /// Whether some placeholder satisfies `test`.
    pub fn uses(&self, test: &dyn Fn(&Field) -> bool) -> bool {
        uses(&self.0, test)
    }

    /// Appends the rendered JSON to `out`.
    pub fn render(&self, cx: &Context<'_>, out: &mut Vec<u8>) {
        render(&self.0, cx, out);
    }
}

fn compile(value: &Value, path: &Path, problems: &mut Vec<Problem>) -> Node {
    match value {
        Value::String(s) => match pieces(s) {
            Err(message) => {
                problems.push(Problem::new(path.clone(), message));
                Node::Literal("null".into())
            }
            Ok(pieces) if pieces.iter().all(|p| matches!(p, Piece::Text(_))) => {
                Node::Literal(json_text(value))
            }
            Ok(mut pieces) if pieces.len() == 1 => match pieces.pop() {
                Some(Piece::Field(field)) => Node::Field(field),
                _ => Node::Literal(json_text(value)),
            },
            Ok(pieces) => Node::Text(pieces),
        },
        Value::Array(items) => {
            let nodes: Vec<Node> = items
                .iter()
                .enumerate()
                .map(|(i, v)| compile(v, &path.index(i), problems))
                .collect();
            if nodes.iter().all(|n| matches!(n, Node::Literal(_))) {
                Node::Literal(json_text(value))
            } else {
                Node::Array(nodes)
            }
        }
        Value::Object(map) => {
            let entries: Vec<(Box<str>, Node)> = map
                .iter()
                .map(|(k, v)| {
                    (
                        json_text(&Value::String(k.clone())),
                        compile(v, &path.key(k), problems),
                    )
                })
                .collect();
            if entries.iter().all(|(_, n)| matches!(n, Node::Literal(_))) {
                Node::Literal(json_text(value))
            } else {
                Node::Object(entries)
            }
        }
        other => Node::Literal(json_text(other)),
    }
}

fn json_text(value: &Value) -> Box<str> {
    value.to_string().into_boxed_str()
}

/// Splits a string into text and placeholders.
fn pieces(s: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(rest[..open].into()));
        }
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(format!("{s:?} has a `{{{{` without its `}}}}`"));
        };
        out.push(Piece::Field(Field::parse(after[..close].trim())?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.into()));
    }
    Ok(out)
}

fn uses(node: &Node, test: &dyn Fn(&Field) -> bool) -> bool {
    match node {
        Node::Literal(_) => false,
        Node::Field(f) => test(f),
        Node::Text(pieces) => pieces
            .iter()
            .any(|p| matches!(p, Piece::Field(f) if test(f))),
        Node::Array(items) => items.iter().any(|n| uses(n, test)),
        Node::Object(entries) => entries.iter().any(|(_, n)| uses(n, test)),
    }
}

fn render(node: &Node, cx: &Context<'_>, out: &mut Vec<u8>) {
    match node {
        Node::Literal(json) => out.extend_from_slice(json.as_bytes()),
        Node::Field(field) => cx.value(field).write_json(out),
        Node::Text(pieces) => {
            let mut text = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(t) => text.push_str(t),
                    Piece::Field(field) => cx.value(field).push_text(&mut text),
                }
            }
            write_string(out, &text);
        }
        Node::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                render(item, cx, out);
            }
            out.push(b']');
        }
        Node::Object(entries) => {
            out.push(b'{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(key.as_bytes());
                out.push(b':');
                render(value, cx, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).unwrap_or_default();
}

// === what placeholders are filled from ===

/// The top-level fields of the client's body, read only when a template
/// uses `{{messages}}` or `{{request.…}}`.
pub type Fields<'a> = HashMap<String, &'a RawValue>;

/// Reads the top-level fields of a body already known to be a JSON object.
fn fields(body: &[u8]) -> Fields<'_> {
    crate::json::from_slice(body).unwrap_or_default()
}

/// Everything a template can be filled from, for one attempt.
pub struct Context<'a> {
    pub model: &'a str,
    pub chat: &'a ChatRequest<'a>,
    pub fields: &'a Fields<'a>,
    /// A legacy completion: `prompt` is the client's prompt.
    pub legacy: bool,
    pub stream: bool,
}

/// A field's value: absent, a plain string, or JSON text.
enum Val<'a> {
    Null,
    Text(Cow<'a, str>),
    Json(Cow<'a, str>),
}

impl Val<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Val::Null => out.extend_from_slice(b"null"),
            Val::Text(s) => write_string(out, s),
            Val::Json(j) => out.extend_from_slice(j.as_bytes()),
        }
    }

    fn push_text(&self, text: &mut String) {
        match self {
            Val::Null => {}
            Val::Text(s) => text.push_str(s),
            Val::Json(j) if j.starts_with('"') => {
                text.push_str(&serde_json::from_str::<String>(j).unwrap_or_default());
            }
            Val::Json(j) => text.push_str(j),
        }
    }
}

fn number<T: serde::Serialize>(n: Option<T>) -> Val<'static> {
    match n.and_then(|n| serde_json::to_string(&n).ok()) {
        Some(text) => Val::Json(text.into()),
        None => Val::Null,
    }
}

impl<'a> Context<'a> {
    fn value(&self, field: &Field) -> Val<'a> {
        let chat = self.chat;
        match field {
            Field::Model => Val::Text(self.model.into()),
            Field::Messages => match self.fields.get("messages") {
                Some(raw) if !self.legacy => Val::Json(raw.get().into()),
                _ => {
                    let mut json = Vec::new();
                    json.extend_from_slice(b"[{\"role\":\"user\",\"content\":");
                    write_string(&mut json, &self.prompt());
                    json.extend_from_slice(b"}]");
                    Val::Json(String::from_utf8(json).unwrap_or_default().into())
                }
            },
            Field::Prompt => Val::Text(self.prompt().into()),
            Field::LastUserMessage => chat
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .and_then(|m| m.content.as_ref())
                .map_or(Val::Null, |c| Val::Text(c.text().into())),
            Field::System => chat
                .system_text()
                .map_or(Val::Null, |s| Val::Text(s.into())),
            Field::MaxTokens => number(chat.max_tokens()),
            Field::Temperature => number(chat.temperature),
            Field::TopP => number(chat.top_p),
            Field::Stop => number(chat.stop.as_ref().map(|s| s.to_vec())),
            Field::Stream => Val::Json(if self.stream { "true" } else { "false" }.into()),
            Field::User => chat
                .user
                .as_ref()
                .map_or(Val::Null, |u| Val::Text(u.as_ref().to_owned().into())),
            Field::Request(key) => self
                .fields
                .get(key.as_ref())
                .map_or(Val::Null, |raw| Val::Json(raw.get().into())),
        }
    }

    /// The legacy prompt, or each message as `Role: text`, blank-line separated.
    fn prompt(&self) -> String {
        let messages = &self.chat.messages;
        if self.legacy {
            return messages
                .first()
                .and_then(|m| m.content.as_ref())
                .map(|c| c.text())
                .unwrap_or_default();
        }
        let mut text = String::new();
        for m in messages {
            let label = match m.role {
                Role::System | Role::Developer => "System",
                Role::User => "User",
                Role::Assistant => "Assistant",
                Role::Tool | Role::Function => "Tool",
            };
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str(label);
            text.push_str(": ");
            if let Some(content) = &m.content {
                text.push_str(&content.text());
            }
        }
        text
    }
}

// === pointers ===

/// A compiled JSON Pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    tokens: Box<[Box<str>]>,
}

impl Pointer {
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer {
                tokens: Box::new([]),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "{text:?} is not a JSON Pointer: it must start with `/` (or be \"\" for the whole document)"
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => {
                        return Err(format!(
                            "{text:?} is not a JSON Pointer: `~` must be followed by 0 or 1"
                        ));
                    }
                }
            }
            tokens.push(token.into_boxed_str());
        }
        Ok(Pointer {
            tokens: tokens.into_boxed_slice(),
        })
    }

    /// Parses the pointer at `path`, reporting a bad one there.
    pub fn compile(text: &str, path: &Path, problems: &mut Vec<Problem>) -> Option<Pointer> {
        Pointer::parse(text)
            .map_err(|e| problems.push(Problem::new(path.clone(), e)))
            .ok()
    }

    /// `compile` for an optional pointer: `Some(None)` when absent, `None`
    /// when set and bad.
    pub fn compile_opt(
        text: Option<&str>,
        path: &Path,
        problems: &mut Vec<Problem>,
    ) -> Option<Option<Pointer>> {
        match text {
            None => Some(None),
            Some(t) => Pointer::compile(t, path, problems).map(Some),
        }
    }

    /// The value the pointer names, if there is one.
    pub fn find<'v>(&self, mut value: &'v Value) -> Option<&'v Value> {
        for token in &self.tokens {
            value = match value {
                Value::Object(map) => map.get(token.as_ref())?,
                Value::Array(items) => {
                    let canonical = token.as_ref() == "0" || !token.starts_with('0');
                    if !canonical || !token.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    items.get(token.parse::<usize>().ok()?)?
                }
                _ => return None,
            };
        }
        Some(value)
    }

    /// The string the pointer names; `None` when absent, null or not a string.
    pub fn text<'v>(&self, value: &'v Value) -> Option<&'v str> {
        self.find(value).and_then(Value::as_str)
    }

    /// A token count the pointer names: a non-negative number (or a numeric
    /// string); 0 when absent.
    pub fn count(&self, value: &Value) -> u64 {
        match self.find(value) {
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64))
                .unwrap_or(0),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
            _ => 0,
        }
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for token in &self.tokens {
            write!(f, "/{}", token.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

/// Whether a value counts as "yes" for an end-of-answer marker: `true`, a
/// non-zero number, a non-empty string, array or object.
pub fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

// === answers ===

/// Where token counts sit in an answer or a stream event.
#[derive(Debug, Clone, Default)]
pub struct UsagePointers {
    pub prompt_tokens: Option<Pointer>,
    pub completion_tokens: Option<Pointer>,
}

impl UsagePointers {
    pub fn is_empty(&self) -> bool {
        self.prompt_tokens.is_none() && self.completion_tokens.is_none()
    }

    /// Updates `usage` with the counts `value` holds; absent ones keep their value.
    pub fn update(&self, value: &Value, usage: &mut Usage) {
        let read = |p: &Option<Pointer>, old: u64| match p {
            Some(p) if p.find(value).is_some_and(|v| !v.is_null()) => p.count(value),
            _ => old,
        };
        let prompt = read(&self.prompt_tokens, usage.prompt_tokens);
        let completion = read(&self.completion_tokens, usage.completion_tokens);
        *usage = Usage::new(prompt, completion);
    }
}

/// Where the parts of a whole answer sit.
#[derive(Debug, Clone)]
pub struct Answer {
    pub content: Pointer,
    pub usage: UsagePointers,
    pub finish_reason: Option<Pointer>,
}

impl Answer {
    /// The completion a whole answer holds; its content must be a string.
    pub fn completion(&self, value: &Value) -> Result<Completion, Failure> {
        let content = match self.content.find(value) {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => {
                return Err(Failure::protocol(format!(
                    "the answer has nothing at `{}`",
                    self.content
                )));
            }
            Some(other) => {
                return Err(Failure::protocol(format!(
                    "the answer holds a {} at `{}`, not a string",
                    kind(other),
                    self.content
                )));
            }
        };
        let mut usage = Usage::default();
        self.usage.update(value, &mut usage);
        Ok(Completion {
            content: Some(content),
            tool_calls: Vec::new(),
            finish_reason: finish_reason(self.finish_reason.as_ref().and_then(|p| p.find(value))),
            usage,
        })
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A backend's finish reason in OpenAI's words. Matching ignores case and
/// treats `-` and spaces as `_`; anything unknown, absent or null is `stop`.
pub fn finish_reason(value: Option<&Value>) -> FinishReason {
    let Some(Value::String(s)) = value else {
        return FinishReason::Stop;
    };
    let word: String = s
        .trim()
        .chars()
        .map(|c| match c {
            '-' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    match word.as_str() {
        "length" | "max_tokens" | "max_length" | "max_new_tokens" | "max_output_tokens"
        | "token_limit" | "truncated" => FinishReason::Length,
        "content_filter" | "content_filtered" | "filtered" | "safety" | "blocked"
        | "recitation" | "moderation" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// The text of an error value: a string, an object's `message`, or JSON text.
pub fn error_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(map) => match map.get("message") {
            Some(Value::String(s)) => s.clone(),
            _ => value.to_string(),
        },
        other => other.to_string(),
    }
}

// === config and request checks ===

/// The answer pointers of a config, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerOptions {
    pub content: String,
    #[serde(default)]
    pub prompt_tokens: Option<String>,
    #[serde(default)]
    pub completion_tokens: Option<String>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// `rest` only: where an error sits in a 200 answer.
    #[serde(default)]
    pub error: Option<String>,
}

impl AnswerOptions {
    /// The compiled pointers (`error` is the caller's), problems at `path`.
    pub fn compile(&self, path: &Path, problems: &mut Vec<Problem>) -> Option<Answer> {
        let content = Pointer::compile(&self.content, &path.key("content"), problems);
        let usage = usage_pointers(
            self.prompt_tokens.as_deref(),
            self.completion_tokens.as_deref(),
            path,
            problems,
        );
        let finish_reason = Pointer::compile_opt(
            self.finish_reason.as_deref(),
            &path.key("finish_reason"),
            problems,
        );
        Some(Answer {
            content: content?,
            usage: usage?,
            finish_reason: finish_reason?,
        })
    }
}

/// `prompt_tokens` and `completion_tokens` pointers under `path`.
pub fn usage_pointers(
    prompt: Option<&str>,
    completion: Option<&str>,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<UsagePointers> {
    let prompt = Pointer::compile_opt(prompt, &path.key("prompt_tokens"), problems);
    let completion = Pointer::compile_opt(completion, &path.key("completion_tokens"), problems);
    Some(UsagePointers {
        prompt_tokens: prompt?,
        completion_tokens: completion?,
    })
}

/// An endpoint URL with one of `schemes` and a host.
pub fn endpoint(
    url: &str,
    schemes: &[&str],
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Uri> {
    match url.parse::<Uri>() {
        Ok(uri)
            if uri.scheme_str().is_some_and(|s| schemes.contains(&s))
                && uri.host().is_some_and(|h| !h.is_empty()) =>
        {
            Some(uri)
        }
        _ => {
            let schemes: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
            problems.push(Problem::new(
                path.clone(),
                format!("{url:?} is not a {} URL", schemes.join(" or ")),
            ));
            None
        }
    }
}

/// What a dialect's templates do with the client's request, worked out once
/// when the config compiles.
#[derive(Debug, Clone)]
pub struct Coverage {
    /// Some template reads `{{messages}}` or `{{request.…}}`.
    needs_fields: bool,
    /// `response_format` is passed on, so `json_schema` is the backend's to honour.
    structured: bool,
    /// Request fields no template sends.
    unused: Vec<&'static str>,
}

type Present = fn(&ChatRequest<'_>) -> bool;

/// Request fields a template may or may not send, with the placeholders that send them.
const SENDABLE: &[(&str, Option<Field>, Present)] = &[
    ("max_tokens", Some(Field::MaxTokens), |c| {
        c.max_tokens().is_some()
    }),
    ("temperature", Some(Field::Temperature), |c| {
        c.temperature.is_some()
    }),
    ("top_p", Some(Field::TopP), |c| c.top_p.is_some()),
    ("stop", Some(Field::Stop), |c| c.stop.is_some()),
    ("user", Some(Field::User), |c| c.user.is_some()),
    ("seed", None, |c| c.seed.is_some()),
    ("presence_penalty", None, |c| c.presence_penalty.is_some()),
    ("frequency_penalty", None, |c| c.frequency_penalty.is_some()),
    ("response_format", None, |c| c.response_format.is_some()),
];

impl Coverage {
    pub fn of(templates: &[&Template]) -> Coverage {
        let uses = |test: &dyn Fn(&Field) -> bool| templates.iter().any(|t| t.uses(test));
        let sends = |name: &str| {
            uses(&|f| {
                matches!(f, Field::Request(k) if k.as_ref() == name
                || (name == "max_tokens" && k.as_ref() == "max_completion_tokens"))
            })
        };
        Coverage {
            needs_fields: uses(&|f| matches!(f, Field::Messages | Field::Request(_))),
            structured: sends("response_format"),
            unused: SENDABLE
                .iter()
                .filter(|(name, field, _)| {
                    !sends(name) && !field.as_ref().is_some_and(|field| uses(&|f| f == field))
                })
                .map(|(name, _, _)| *name)
                .collect(),
        }
    }

    /// Reads the call's request, refuses what the templates cannot carry,
    /// and renders `template` (if any) with it into `out`.
    pub fn fill(
        &self,
        call: &Call,
        model: &str,
        provider: &str,
        stream: bool,
        template: Option<&Template>,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let chat = ChatRequest::parse(call.endpoint, &call.body)?;
        self.check(&chat, provider)?;
        let Some(template) = template else {
            return Ok(());
        };
        let fields = if self.needs_fields {
            fields(&call.body)
        } else {
            Fields::new()
        };
        let cx = Context {
            model,
            chat: &chat,
            fields: &fields,
            legacy: call.endpoint == Endpoint::Completions,
            stream,
        };
        template.render(&cx, out);
        Ok(())
    }

    /// Refuses what a template cannot carry without changing the answer's
    /// meaning; notes in a debug line the fields no template sends.
    fn check(&self, chat: &ChatRequest<'_>, provider: &str) -> Result<(), Error> {
        chat.refuse_unsupported(provider, self.structured)?;
        chat.refuse_echo(provider)?;
        let tools = chat.tools.as_ref().is_some_and(|t| !t.is_empty());
        let none = matches!(&chat.tool_choice, Some(ToolChoice::Mode(m)) if m == "none");
        if tools && !none {
            return Err(unsupported(
                "tools",
                provider,
                "its answers are read through JSON Pointers, which carry no tool calls",
            ));
        }
        let dropped: Vec<&str> = SENDABLE
            .iter()
            .filter(|(name, _, present)| self.unused.contains(name) && present(chat))
            .map(|(name, _, _)| *name)
            .collect();
        if !dropped.is_empty() {
            tracing::debug!(provider, fields = ?dropped, "the provider's template does not send these request fields");
        }
        Ok(())
    }
}

/// The decoder for a dialect whose requests never ask for a stream (the
/// client's stream is synthesized): should a stream arrive, it fails.
pub struct NoStream;

impl Decoder for NoStream {
    fn feed(&mut self, _input: &[u8], _out: &mut BytesMut) -> Result<(), Failure> {
        Err(Failure::protocol(
            "this provider answers whole, not as a stream",
        ))
    }

    fn finish(&mut self, _out: &mut BytesMut) -> Result<(), Failure> {
        Err(Failure::protocol(
            "this provider answers whole, not as a stream",
        ))
    }

    fn usage(&self) -> Option<Usage> {
        None
    }
}

/// Building calls for the dialects' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use bytes::Bytes;
    use http::HeaderValue;

    use crate::auth::Caller;
    use crate::call::Call;
    use crate::config::load::load_str;
    use crate::openai::{Endpoint, RequestView, json_string};
    use crate::provider::Provider;
    use crate::registry::Shared;

    /// A call for alias `m` (backend model `backend-model`) on a provider
    /// configured by `provider` (YAML lines indented by four spaces).
    pub fn call(provider: &str, endpoint: Endpoint, body: &str) -> (Arc<Provider>, Call) {
        let text = format!(
            "auth: {{required: false}}\nproviders:\n  p:\n{provider}\nmodels:\n  m: {{targets: [{{provider: p, model: backend-model}}]}}\n"
        );
        let snapshot = load_str(&text, &|_| None, &Shared::default())
            .unwrap_or_else(|problems| panic!("{problems:?}"));
        let provider = snapshot.providers["p"].clone();
        let route = snapshot.aliases.resolve("m").unwrap();
        let view = RequestView::parse(endpoint, body.as_bytes()).unwrap();
        let call = Call {
            snapshot: Arc::new(snapshot),
            request_id: HeaderValue::from_static("req-1"),
            endpoint,
            caller: Caller::Anonymous,
            body: Bytes::copy_from_slice(body.as_bytes()),
            model_json: json_string(&view.model),
            view,
            route,
            started: tokio::time::Instant::now(),
            attempts: Default::default(),
            outcome: Default::default(),
        };
        (provider, call)
    }

    /// The problems of a config with this one provider.
    pub fn problems(provider: &str) -> Vec<String> {
        let text =
            format!("providers:\n  p:\n{provider}\nmodels:\n  m: {{targets: [{{provider: p}}]}}\n");
        match load_str(&text, &|_| None, &Shared::default()) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render_with(template: &Value, endpoint: Endpoint, body: &str, stream: bool) -> Value {
        let t = Template::compile(template, &Path::root(), &mut Vec::new()).unwrap();
        let chat = ChatRequest::parse(endpoint, body.as_bytes()).unwrap();
        let fields = fields(body.as_bytes());
        let cx = Context {
            model: "internal-7b",
            chat: &chat,
            fields: &fields,
            legacy: endpoint == Endpoint::Completions,
            stream,
        };
        let mut out = Vec::new();
        t.render(&cx, &mut out);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn whole_placeholders_are_typed_values_and_absent_ones_null() {
        let template = json!({
            "input": {
                "messages": "{{messages}}",
                "settings": {"model": "{{model}}", "maxTokens": "{{max_tokens}}",
                             "temperature": "{{ temperature }}", "topP": "{{top_p}}",
                             "stop": "{{stop}}", "stream": "{{stream}}", "user": "{{user}}"},
                "seed": "{{request.seed}}", "extra": "{{request.nope}}",
                "fixed": [1, "two", {"three": null}],
            }
        });
        let body = r#"{"model":"alias","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],
                      "max_tokens":256,"temperature":0.2,"stop":"END","seed":7}"#;
        assert_eq!(
            render_with(&template, Endpoint::Chat, body, false),
            json!({"input": {
                "messages": [{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],
                "settings": {"model": "internal-7b", "maxTokens": 256, "temperature": 0.2, "topP": null,
                             "stop": ["END"], "stream": false, "user": null},
                "seed": 7, "extra": null,
                "fixed": [1, "two", {"three": null}],
            }})
        );
    }

    #[test]
    fn placeholders_inside_text_are_interpolated() {
        let template = json!({
            "prompt": "{{system}}\n---\n{{prompt}}",
            "label": "model={{model}} max={{max_tokens}} user={{user}} tag={{request.tag}} stop={{stop}}",
            "last": "{{last_user_message}}",
        });
        let body = r#"{"model":"a","messages":[{"role":"system","content":"S"},{"role":"user","content":"one"},
                      {"role":"assistant","content":"two"},{"role":"user","content":[{"type":"text","text":"three"}]}],
                      "tag":"x\"y","stop":["a","b"]}"#;
        assert_eq!(
            render_with(&template, Endpoint::Chat, body, true),
            json!({
                "prompt": "S\n---\nSystem: S\n\nUser: one\n\nAssistant: two\n\nUser: three",
                "label": "model=internal-7b max= user= tag=x\"y stop=[\"a\",\"b\"]",
                "last": "three",
            })
        );
    }

    #[test]
    fn a_legacy_prompt_is_the_prompt_and_one_message() {
        let template = json!({"p": "{{prompt}}", "m": "{{messages}}", "s": "{{stream}}"});
        assert_eq!(
            render_with(
                &template,
                Endpoint::Completions,
                r#"{"model":"a","prompt":"Once upon"}"#,
                true
            ),
            json!({"p": "Once upon", "m": [{"role": "user", "content": "Once upon"}], "s": true})
        );
    }

    #[test]
    fn bad_placeholders_are_reported_at_their_path() {
        let template =
            json!({"a": {"b": ["ok", "{{modle}}"]}, "c": "{{model", "d": "{{request.a.b}}"});
        let mut problems = Vec::new();
        let root = Path::root().key("providers").key("p").key("variables");
        assert!(Template::compile(&template, &root, &mut problems).is_none());
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("providers.p.variables.a.b[1]: unknown placeholder `{{modle}}`"),
            "{}",
            text[0]
        );
        assert!(
            text[1].starts_with("providers.p.variables.c: "),
            "{}",
            text[1]
        );
        assert!(
            text[2].starts_with("providers.p.variables.d: "),
            "{}",
            text[2]
        );
        let t =
            Template::compile(&json!({"x": "{{request.tools}}"}), &root, &mut problems).unwrap();
        assert!(t.uses(&|f| matches!(f, Field::Request(k) if k.as_ref() == "tools")));
        assert!(!t.uses(&|f| *f == Field::Messages));
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let doc = json!({"a": {"b/c": [10, {"~d": "x"}]}, "": 1, "n": null});
        let find = |p: &str| Pointer::parse(p).unwrap().find(&doc).cloned();
        assert_eq!(find(""), Some(doc.clone()));
        assert_eq!(find("/a/b~1c/0"), Some(json!(10)));
        assert_eq!(find("/a/b~1c/1/~0d"), Some(json!("x")));
        assert_eq!(find("/"), Some(json!(1)));
        assert_eq!(find("/n"), Some(Value::Null));
        assert_eq!(find("/a/b~1c/01"), None);
        assert_eq!(find("/a/b~1c/2"), None);
        assert_eq!(find("/a/x"), None);
        assert!(Pointer::parse("data/x").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert_eq!(
            Pointer::parse("/a/b~1c/~0d").unwrap().to_string(),
            "/a/b~1c/~0d"
        );
    }

    #[test]
    fn answers_and_finish_reasons() {
        let answer = Answer {
            content: Pointer::parse("/data/g/text").unwrap(),
            usage: UsagePointers {
                prompt_tokens: Some(Pointer::parse("/data/g/usage/in").unwrap()),
                completion_tokens: Some(Pointer::parse("/data/g/usage/out").unwrap()),
            },
            finish_reason: Some(Pointer::parse("/data/g/why").unwrap()),
        };
        let c = answer
            .completion(&json!({"data": {"g": {"text": "Hi", "usage": {"in": 3, "out": "4"}, "why": "MAX_TOKENS"}}}))
            .unwrap();
        assert_eq!(c.content.as_deref(), Some("Hi"));
        assert_eq!(c.usage, Usage::new(3, 4));
        assert_eq!(c.finish_reason, FinishReason::Length);
        let e = answer
            .completion(&json!({"data": {"g": null}}))
            .unwrap_err();
        assert!(e.message.contains("/data/g/text"), "{}", e.message);
        let e = answer
            .completion(&json!({"data": {"g": {"text": 5}}}))
            .unwrap_err();
        assert!(e.message.contains("number"), "{}", e.message);
        for (value, reason) in [
            (json!("stop"), FinishReason::Stop),
            (json!("END_TURN"), FinishReason::Stop),
            (json!("max-tokens"), FinishReason::Length),
            (json!("length"), FinishReason::Length),
            (json!("SAFETY"), FinishReason::ContentFilter),
            (json!("content_filter"), FinishReason::ContentFilter),
            (json!("whatever"), FinishReason::Stop),
            (json!(null), FinishReason::Stop),
        ] {
            assert_eq!(finish_reason(Some(&value)), reason, "{value}");
        }
    }
}
