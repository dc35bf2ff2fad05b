//! The client's request as typed data, and a dialect-neutral answer: what
//! translating adapters read and produce.
//!
//! The passthrough never uses these (it splices bytes); adapters for other
//! dialects parse the body once into [`ChatRequest`], build their own wire
//! types from it, and return a [`Completion`] or [`Embeddings`] that the
//! dispatcher renders as OpenAI JSON or as a synthesized stream.
//!
//! `/v1/completions` is served by chat dialects as a one-message chat: see
//! [`ChatRequest::parse`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::Error;
use crate::openai::{Endpoint, Usage};

/// A chat request (or a legacy completion seen as a chat).
#[derive(Debug, Deserialize)]
pub struct ChatRequest<'a> {
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(borrow, default)]
    pub messages: Vec<Message<'a>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(borrow, default)]
    pub stop: Option<Stop<'a>>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    /// `true`/`false` on chat; an integer on legacy completions.
    #[serde(borrow, default)]
    pub logprobs: Option<&'a RawValue>,
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    #[serde(borrow, default)]
    pub tools: Option<Vec<Tool<'a>>>,
    #[serde(borrow, default)]
    pub tool_choice: Option<ToolChoice<'a>>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(borrow, default)]
    pub response_format: Option<ResponseFormat<'a>>,
    #[serde(borrow, default)]
    pub user: Option<Cow<'a, str>>,
    /// Legacy completions only: the prompt, turned into one user message.
    #[serde(borrow, default)]
    prompt: Option<Prompt<'a>>,
    /// Legacy completions only: fields a chat cannot honour.
    #[serde(default)]
    echo: Option<bool>,
    #[serde(borrow, default)]
    suffix: Option<Cow<'a, str>>,
    #[serde(default)]
    best_of: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Deserialize)]
pub struct Message<'a> {
    pub role: Role,
    #[serde(borrow, default)]
    pub content: Option<Content<'a>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(borrow, default)]
    pub tool_call_id: Option<Cow<'a, str>>,
}

/// Message content: a string, or an array of parts.
#[derive(Debug)]
pub enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

/// Read by what the value is, a string or an array, rather than as an
/// untagged enum, which serde reads by buffering the value and trying each
/// variant on the copy.
impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Either<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Content<'a>, E> {
                Ok(Content::Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Content<'a>, E> {
                Ok(Content::Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Content<'a>, E> {
                Ok(Content::Text(Cow::Owned(text)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Content<'a>, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(Either(std::marker::PhantomData))
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part<'a> {
    Text {
        #[serde(borrow)]
        text: Cow<'a, str>,
    },
    ImageUrl {
        #[serde(borrow)]
        image_url: ImageUrl<'a>,
    },
    InputAudio {},
    File {},
    Refusal {
        #[serde(borrow)]
        refusal: Cow<'a, str>,
    },
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl<'a> {
    #[serde(borrow)]
    pub url: Cow<'a, str>,
    #[serde(borrow, default)]
    pub detail: Option<Cow<'a, str>>,
}

/// An image as a data URL's parts, or a remote URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url(&'a str),
}

impl<'a> ImageUrl<'a> {
    /// Splits `data:image/png;base64,AAAA` into media type and data.
    pub fn image(&'a self) -> Image<'a> {
        let url = self.url.as_ref();
        if let Some(rest) = url.strip_prefix("data:")
            && let Some((meta, data)) = rest.split_once(',')
            && let Some(media_type) = meta.strip_suffix(";base64")
        {
            return Image::Base64 { media_type, data };
        }
        Image::Url(url)
    }
}

#[derive(Debug, Deserialize)]
pub struct ToolCall<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub function: FunctionCall<'a>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCall<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// JSON text, as OpenAI sends it (possibly invalid JSON).
    #[serde(borrow, default)]
    pub arguments: Cow<'a, str>,
}

impl FunctionCall<'_> {
    /// The arguments as a JSON value; invalid or empty text becomes `{}`.
    pub fn arguments_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.arguments)
            .ok()
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()))
    }
}

#[derive(Debug, Deserialize)]
pub struct Tool<'a> {
    #[serde(borrow, rename = "type")]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub function: Option<FunctionDef<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDef<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    /// A JSON Schema, kept as raw text.
    #[serde(borrow, default)]
    pub parameters: Option<&'a RawValue>,
}

/// `"none" | "auto" | "required"` or `{"type":"function","function":{"name":…}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice<'a> {
    #[serde(borrow)]
    Mode(Cow<'a, str>),
    #[serde(borrow)]
    Named(NamedToolChoice<'a>),
}

#[derive(Debug, Deserialize)]
pub struct NamedToolChoice<'a> {
    #[serde(borrow)]
    pub function: NamedFunction<'a>,
}

#[derive(Debug, Deserialize)]
pub struct NamedFunction<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
pub struct ResponseFormat<'a> {
    #[serde(borrow, rename = "type")]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub json_schema: Option<JsonSchemaFormat<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub schema: Option<&'a RawValue>,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop<'a> {
    #[serde(borrow)]
    One(Cow<'a, str>),
    #[serde(borrow)]
    Many(Vec<Cow<'a, str>>),
}

impl Stop<'_> {
    pub fn to_vec(&self) -> Vec<&str> {
        match self {
            Stop::One(s) => vec![s.as_ref()],
            Stop::Many(v) => v.iter().map(AsRef::as_ref).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt<'a> {
    #[serde(borrow)]
    One(Cow<'a, str>),
    #[serde(borrow)]
    Many(Vec<Cow<'a, str>>),
    Tokens(serde::de::IgnoredAny),
}

impl<'a> ChatRequest<'a> {
    /// Parses a chat body, or a legacy completion body as a chat with the
    /// prompt as its one user message. Errors are 400s naming the problem.
    pub fn parse(endpoint: Endpoint, body: &'a [u8]) -> Result<ChatRequest<'a>, Error> {
        let mut request: ChatRequest<'a> = crate::json::from_slice(body)
            .map_err(|e| Error::invalid(format!("invalid request body: {e}")))?;
        if endpoint == Endpoint::Completions {
            let prompt = match request.prompt.take() {
                Some(Prompt::One(p)) => p,
                Some(Prompt::Many(mut v)) if v.len() == 1 => v.remove(0),
                Some(Prompt::Many(_)) => {
                    return Err(Error::invalid_param(
                        "prompt",
                        "this model takes one prompt string per request",
                    ));
                }
                Some(Prompt::Tokens(_)) | None => {
                    return Err(Error::invalid_param(
                        "prompt",
                        "this model takes the prompt as a string, not as token ids",
                    ));
                }
            };
            request.messages = vec![Message {
                role: Role::User,
                content: Some(Content::Text(prompt)),
                name: None,
                tool_calls: None,
                tool_call_id: None,
            }];
        }
        Ok(request)
    }

    /// `max_completion_tokens`, else `max_tokens`.
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn wants_stream(&self) -> bool {
        self.stream == Some(true)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Whether the client asked for log probabilities.
    pub fn wants_logprobs(&self) -> bool {
        self.logprobs
            .is_some_and(|raw| !matches!(raw.get(), "false" | "null" | "0"))
    }

    /// The text of every system and developer message, joined by blank lines.
    pub fn system_text(&self) -> Option<String> {
        let parts: Vec<String> = self
            .messages
            .iter()
            .filter(|m| matches!(m.role, Role::System | Role::Developer))
            .filter_map(|m| m.content.as_ref().map(Content::text))
            .collect();
        (!parts.is_empty()).then(|| parts.join("\n\n"))
    }

    /// Refuses a legacy completion's `echo: true`, for backends that only
    /// chat (a raw-completion backend can echo the prompt itself).
    pub fn refuse_echo(&self, provider: &str) -> Result<(), Error> {
        if self.echo == Some(true) {
            return Err(unsupported("echo", provider, "the prompt cannot be echoed"));
        }
        Ok(())
    }

    /// The common refusals: fields whose loss would change the answer's
    /// meaning. `structured` says whether the backend honours `json_schema`.
    pub fn refuse_unsupported(&self, provider: &str, structured: bool) -> Result<(), Error> {
        if self.n.is_some_and(|n| n > 1) {
            return Err(unsupported("n", provider, "only n = 1 is supported"));
        }
        if self.wants_logprobs() {
            return Err(unsupported(
                "logprobs",
                provider,
                "log probabilities are not available",
            ));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported(
                "suffix",
                provider,
                "insertion is not available",
            ));
        }
        if self.best_of.is_some_and(|n| n > 1) {
            return Err(unsupported(
                "best_of",
                provider,
                "only best_of = 1 is supported",
            ));
        }
        if !structured
            && self
                .response_format
                .as_ref()
                .is_some_and(|f| f.kind == "json_schema")
        {
            return Err(unsupported(
                "response_format",
                provider,
                "`json_schema` structured output is not available",
            ));
        }
        Ok(())
    }
}

/// 400: `param` cannot be honoured by `provider`.
pub fn unsupported(param: &'static str, provider: &str, why: &str) -> Error {
    Error::invalid_param(
        param,
        format!("`{param}` is not supported by provider {provider}: {why}"),
    )
}

impl Content<'_> {
    /// The text parts joined by newlines (images and audio left out).
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.to_string(),
            Content::Parts(parts) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Text { text } => Some(text.as_ref()),
                        Part::Refusal { refusal } => Some(refusal.as_ref()),
                        _ => None,
                    })
                    .collect();
                texts.join("\n")
            }
        }
    }
}

// === what translating adapters answer ===

/// Why generation stopped, in OpenAI's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    /// The name OpenAI gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

impl Serialize for FinishReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One tool call of an answer, arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallOut {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A whole answer of a chat dialect.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCallOut>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// A whole answer of an embedding endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub usage: Usage,
}

/// An embeddings request, typed.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest<'a> {
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(borrow)]
    pub input: EmbeddingInput<'a>,
    #[serde(borrow, default)]
    pub encoding_format: Option<Cow<'a, str>>,
    #[serde(default)]
    pub dimensions: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput<'a> {
    #[serde(borrow)]
    One(Cow<'a, str>),
    #[serde(borrow)]
    Many(Vec<Cow<'a, str>>),
    Tokens(Vec<serde_json::Value>),
}

impl<'a> EmbeddingRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<EmbeddingRequest<'a>, Error> {
        crate::json::from_slice(body)
            .map_err(|e| Error::invalid(format!("invalid request body: {e}")))
    }

    /// The input as strings; token-id input is refused.
    pub fn texts(&self, provider: &str) -> Result<Vec<&str>, Error> {
        match &self.input {
            EmbeddingInput::One(s) => Ok(vec![s.as_ref()]),
            EmbeddingInput::Many(v) => Ok(v.iter().map(AsRef::as_ref).collect()),
            EmbeddingInput::Tokens(_) => Err(unsupported(
                "input",
                provider,
                "token-id input is not available; send text",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_chat_request() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"developer","content":[{"type":"text","text":"Use metric."}]},
            {"role":"user","content":[{"type":"text","text":"Weather?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"12C"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],
            "tool_choice":{"type":"function","function":{"name":"get_weather"}},
            "stop":"END","temperature":0.5,"stream":true,"stream_options":{"include_usage":true},"guided_json":{}}"#;
        let r = ChatRequest::parse(Endpoint::Chat, body).unwrap();
        assert_eq!(r.messages.len(), 5);
        assert_eq!(r.system_text().unwrap(), "Be brief.\n\nUse metric.");
        assert!(r.wants_stream() && r.include_usage());
        assert_eq!(r.stop.as_ref().unwrap().to_vec(), ["END"]);
        let Some(Content::Parts(parts)) = &r.messages[2].content else {
            panic!()
        };
        let Part::ImageUrl { image_url } = &parts[1] else {
            panic!()
        };
        assert_eq!(
            image_url.image(),
            Image::Base64 {
                media_type: "image/png",
                data: "AAAA"
            }
        );
        let call = &r.messages[3].tool_calls.as_ref().unwrap()[0];
        assert_eq!(call.function.arguments_value()["city"], "Oslo");
        assert!(matches!(r.tool_choice, Some(ToolChoice::Named(_))));
        assert!(r.refuse_unsupported("p", false).is_ok());
    }

    #[test]
    fn content_is_a_string_or_parts_and_nothing_else() {
        let body = br#"{"model":"m","messages":[
            {"role":"user","content":"plain"},
            {"role":"user","content":"line\nbreak \u00e9"},
            {"role":"user","content":[{"type":"text","text":"a"}]},
            {"role":"user","content":null},
            {"role":"user","content":[]}]}"#;
        let r = ChatRequest::parse(Endpoint::Chat, body).unwrap();
        let content: Vec<_> = r.messages.iter().map(|m| m.content.as_ref()).collect();
        assert!(matches!(
            content[0],
            Some(Content::Text(Cow::Borrowed("plain")))
        ));
        assert!(
            matches!(content[1], Some(Content::Text(Cow::Owned(t))) if t == "line\nbreak \u{e9}")
        );
        assert!(matches!(content[2], Some(Content::Parts(p)) if p.len() == 1));
        assert!(content[3].is_none());
        assert!(matches!(content[4], Some(Content::Parts(p)) if p.is_empty()));
        for bad in ["5", "true", r#"{"text":"a"}"#] {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":{bad}}}]}}"#);
            let e = ChatRequest::parse(Endpoint::Chat, body.as_bytes()).unwrap_err();
            assert!(
                e.to_string()
                    .contains("expected a string or an array of content parts"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn legacy_fields_that_change_the_answer_are_refused() {
        for body in [
            &br#"{"model":"m","prompt":"x","echo":true}"#[..],
            br#"{"model":"m","prompt":"x","suffix":"end"}"#,
            br#"{"model":"m","prompt":"x","best_of":3}"#,
        ] {
            let r = ChatRequest::parse(Endpoint::Completions, body).unwrap();
            assert!(
                r.refuse_unsupported("p", true)
                    .and(r.refuse_echo("p"))
                    .is_err()
            );
        }
        let r = ChatRequest::parse(
            Endpoint::Completions,
            br#"{"model":"m","prompt":"x","echo":false,"best_of":1}"#,
        )
        .unwrap();
        assert!(
            r.refuse_unsupported("p", true)
                .and(r.refuse_echo("p"))
                .is_ok()
        );
    }

    #[test]
    fn completions_become_one_user_message() {
        let r = ChatRequest::parse(
            Endpoint::Completions,
            br#"{"model":"m","prompt":"Once upon","max_tokens":5}"#,
        )
        .unwrap();
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.messages[0].role, Role::User);
        assert_eq!(r.messages[0].content.as_ref().unwrap().text(), "Once upon");
        assert!(
            ChatRequest::parse(Endpoint::Completions, br#"{"model":"m","prompt":[1,2,3]}"#)
                .is_err()
        );
    }

    #[test]
    fn refuses_what_would_change_the_answer() {
        let r =
            ChatRequest::parse(Endpoint::Chat, br#"{"model":"m","messages":[],"n":2}"#).unwrap();
        let e = r.refuse_unsupported("claude", false).unwrap_err();
        assert_eq!(e.param, Some("n"));
        assert!(e.message.contains("provider claude"));
        let r = ChatRequest::parse(
            Endpoint::Chat,
            br#"{"model":"m","messages":[],"logprobs":true}"#,
        )
        .unwrap();
        assert!(r.refuse_unsupported("p", true).is_err());
        let r = ChatRequest::parse(Endpoint::Chat, br#"{"model":"m","messages":[],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{}}}}"#).unwrap();
        assert!(r.refuse_unsupported("p", false).is_err());
        assert!(r.refuse_unsupported("p", true).is_ok());
    }
}
