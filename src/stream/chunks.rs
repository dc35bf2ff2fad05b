//! Writing OpenAI output for translating adapters: streamed chunks with the
//! exact shapes OpenAI clients accumulate, whole responses, synthesized
//! streams for backends that do not stream, and embeddings.

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::call::Call;
use crate::chat::{Completion, Embeddings, FinishReason};
use crate::json::{write_str, write_u64};
use crate::openai::{Endpoint, SSE_DONE, Usage};

/// Builds the events of one OpenAI stream, in order: role first, content and
/// tool-call deltas, the finish chunk, the usage chunk when asked, `[DONE]`.
#[derive(Debug)]
pub struct ChunkWriter {
    /// `data: {"id":…,"object":…,"created":…,"model":…,"choices":`
    head: Vec<u8>,
    /// Legacy completions: `text_completion` chunks with `text`.
    text: bool,
    include_usage: bool,
    role_sent: bool,
    tool_calls: u32,
    finished: bool,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<FinishReason>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a str>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: Option<FinishReason>,
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the output of one request looks like, whatever the backend.
#[derive(Debug, Clone)]
pub struct Shape<'a> {
    /// `chatcmpl-…` or `cmpl-…`, the same for every chunk.
    pub id: String,
    /// Legacy completions (`text_completion`, `text`) rather than chat.
    pub text: bool,
    /// The model name the client sent.
    pub model: &'a str,
    pub include_usage: bool,
    /// Embeddings as base64 rather than float arrays.
    pub base64: bool,
}

impl<'a> Shape<'a> {
    pub fn of(call: &'a Call) -> Shape<'a> {
        let text = call.endpoint == Endpoint::Completions;
        let prefix = if text { "cmpl-" } else { "chatcmpl-" };
        Shape {
            id: format!("{prefix}{}", call.request_id.to_str().unwrap_or("0")),
            text,
            model: &call.view.model,
            include_usage: call.view.include_usage,
            base64: call.view.base64,
        }
    }
}

impl ChunkWriter {
    pub fn new(shape: &Shape<'_>) -> Self {
        let text = shape.text;
        let mut head = Vec::with_capacity(128);
        head.put_slice(b"data: {\"id\":");
        write_str(&mut head, &shape.id);
        head.put_slice(if text {
            b",\"object\":\"text_completion\",\"created\":"
        } else {
            b",\"object\":\"chat.completion.chunk\",\"created\":"
        });
        write_u64(&mut head, now());
        head.put_slice(b",\"model\":");
        write_str(&mut head, shape.model);
        head.put_slice(b",\"choices\":");
        ChunkWriter {
            head,
            text,
            include_usage: shape.include_usage,
            role_sent: false,
            tool_calls: 0,
            finished: false,
        }
    }

    fn chunk(&self, out: &mut BytesMut, choice: &impl Serialize) {
        out.put_slice(&self.head);
        out.put_u8(b'[');
        serde_json::to_writer(out.writer(), choice).unwrap_or_default();
        out.put_slice(b"]}\n\n");
    }

    /// The first chunk: `delta: {"role": "assistant", "content": ""}`. Later
    /// calls do nothing; the other methods call it when needed.
    pub fn role(&mut self, out: &mut BytesMut) {
        if self.role_sent || self.text {
            self.role_sent = true;
            return;
        }
        self.role_sent = true;
        let delta = Delta {
            role: Some("assistant"),
            content: Some(""),
            tool_calls: None,
        };
        self.chunk(
            out,
            &ChatChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: None,
            },
        );
    }

    /// A content delta; empty text writes nothing.
    pub fn content(&mut self, out: &mut BytesMut, text: &str) {
        if text.is_empty() || self.finished {
            return;
        }
        self.role(out);
        // The chunk of every token, written by hand: the bytes serde writes
        // for a `TextChoice` or a `ChatChoice` with only content (a test
        // holds the two to the same bytes).
        out.put_slice(&self.head);
        if self.text {
            out.put_slice(b"[{\"index\":0,\"text\":");
            write_str(out, text);
            out.put_slice(b",\"logprobs\":null,\"finish_reason\":null}]}\n\n");
        } else {
            out.put_slice(b"[{\"index\":0,\"delta\":{\"content\":");
            write_str(out, text);
            out.put_slice(b"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
        }
    }

    /// Starts a tool call (with its whole arguments, or `""` for fragments to
    /// follow); returns its index among the tool calls.
    pub fn tool_call(&mut self, out: &mut BytesMut, id: &str, name: &str, arguments: &str) -> u32 {
        let index = self.tool_calls;
        self.tool_calls += 1;
        self.role(out);
        let delta = Delta {
            tool_calls: Some([ToolCallDelta {
                index,
                id: Some(id),
                kind: Some("function"),
                function: FunctionDelta {
                    name: Some(name),
                    arguments: Some(arguments),
                },
            }]),
            ..Default::default()
        };
        self.chunk(
            out,
            &ChatChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: None,
            },
        );
        index
    }

    /// A fragment of a started tool call's arguments; empty writes nothing.
    pub fn tool_arguments(&mut self, out: &mut BytesMut, index: u32, fragment: &str) {
        if fragment.is_empty() {
            return;
        }
        let delta = Delta {
            tool_calls: Some([ToolCallDelta {
                index,
                id: None,
                kind: None,
                function: FunctionDelta {
                    name: None,
                    arguments: Some(fragment),
                },
            }]),
            ..Default::default()
        };
        self.chunk(
            out,
            &ChatChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: None,
            },
        );
    }

    /// How many tool calls were started.
    pub fn tool_call_count(&self) -> u32 {
        self.tool_calls
    }

    /// Ends the stream: finish chunk, usage chunk when the client asked for
    /// it, `[DONE]`. A second call does nothing.
    pub fn finish(&mut self, out: &mut BytesMut, reason: FinishReason, usage: Option<Usage>) {
        if self.finished {
            return;
        }
        self.role(out);
        self.finished = true;
        if self.text {
            self.chunk(
                out,
                &TextChoice {
                    index: 0,
                    text: "",
                    logprobs: None,
                    finish_reason: Some(reason),
                },
            );
        } else {
            let choice = ChatChoice {
                index: 0,
                delta: Delta::default(),
                logprobs: None,
                finish_reason: Some(reason),
            };
            self.chunk(out, &choice);
        }
        if self.include_usage {
            out.put_slice(&self.head);
            out.put_slice(b"[],\"usage\":");
            write_usage(out, usage.unwrap_or_default());
            out.put_slice(b"}\n\n");
        }
        out.put_slice(SSE_DONE);
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

// === whole responses ===

/// A `chat.completion` (or `text_completion`) body for a whole answer.
pub fn render_completion(shape: &Shape<'_>, c: &Completion) -> Bytes {
    Bytes::from(completion_at(shape, c, now()))
}

/// The body of [`render_completion`], created at `created`: written field
/// by field, in the order and form serde would write OpenAI's shape (a
/// test holds the two to the same bytes), without serde's passes over
/// each string.
fn completion_at(shape: &Shape<'_>, c: &Completion, created: u64) -> Vec<u8> {
    let content = c.content.as_deref();
    let mut out = Vec::with_capacity(ANSWER_ROOM + content.map_or(0, str::len) + shape.model.len());
    out.put_slice(b"{\"id\":");
    write_str(&mut out, &shape.id);
    out.put_slice(if shape.text {
        b",\"object\":\"text_completion\",\"created\":"
    } else {
        b",\"object\":\"chat.completion\",\"created\":"
    });
    write_u64(&mut out, created);
    out.put_slice(b",\"model\":");
    write_str(&mut out, shape.model);
    if shape.text {
        out.put_slice(b",\"choices\":[{\"index\":0,\"text\":");
        write_str(&mut out, content.unwrap_or(""));
    } else {
        out.put_slice(
            b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":",
        );
        match content {
            Some(text) => write_str(&mut out, text),
            None => out.put_slice(b"null"),
        }
        out.put_slice(b",\"refusal\":null");
        for (i, call) in c.tool_calls.iter().enumerate() {
            out.put_slice(if i == 0 { b",\"tool_calls\":[" } else { b"," });
            out.put_slice(b"{\"id\":");
            write_str(&mut out, &call.id);
            out.put_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            write_str(&mut out, &call.name);
            out.put_slice(b",\"arguments\":");
            write_str(&mut out, &call.arguments);
            out.put_slice(b"}}");
        }
        if !c.tool_calls.is_empty() {
            out.put_u8(b']');
        }
        out.put_u8(b'}');
    }
    out.put_slice(b",\"logprobs\":null,\"finish_reason\":\"");
    out.put_slice(c.finish_reason.as_str().as_bytes());
    out.put_slice(b"\"}],\"usage\":");
    write_usage(&mut out, c.usage);
    out.put_u8(b'}');
    out
}

/// `{"prompt_tokens":…,"completion_tokens":…,"total_tokens":…}`.
fn write_usage(out: &mut impl BufMut, usage: Usage) {
    out.put_slice(b"{\"prompt_tokens\":");
    write_u64(out, usage.prompt_tokens);
    out.put_slice(b",\"completion_tokens\":");
    write_u64(out, usage.completion_tokens);
    out.put_slice(b",\"total_tokens\":");
    write_u64(out, usage.total_tokens);
    out.put_u8(b'}');
}

/// Room for an answer's fixed fields, its id, usage and a tool call or two.
const ANSWER_ROOM: usize = 512;

/// The whole stream for an answer that arrived whole: role, content, one
/// chunk per tool call, finish, usage when asked, `[DONE]`.
pub fn synthesize(shape: &Shape<'_>, c: &Completion) -> Bytes {
    let mut out = BytesMut::new();
    let mut writer = ChunkWriter::new(shape);
    writer.role(&mut out);
    if let Some(content) = &c.content {
        writer.content(&mut out, content);
    }
    for t in &c.tool_calls {
        writer.tool_call(&mut out, &t.id, &t.name, &t.arguments);
    }
    writer.finish(&mut out, c.finish_reason, Some(c.usage));
    out.freeze()
}

/// An embeddings list; vectors as floats, or as base64 of little-endian
/// float32 when the client asked for `encoding_format: base64`.
pub fn render_embeddings(shape: &Shape<'_>, e: &Embeddings) -> Bytes {
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Item>,
        model: &'a str,
        usage: EmbedUsage,
    }
    #[derive(Serialize)]
    struct Item {
        object: &'static str,
        index: usize,
        embedding: serde_json::Value,
    }
    #[derive(Serialize)]
    struct EmbedUsage {
        prompt_tokens: u64,
        total_tokens: u64,
    }
    let data = e
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if shape.base64 {
                let mut bytes = Vec::with_capacity(v.len() * 4);
                for x in v {
                    bytes.extend_from_slice(&x.to_le_bytes());
                }
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                serde_json::Value::Array(
                    v.iter()
                        .map(|x| {
                            serde_json::Number::from_f64(f64::from(*x))
                                .map_or(serde_json::Value::Null, Into::into)
                        })
                        .collect(),
                )
            };
            Item {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let list = List {
        object: "list",
        data,
        model: shape.model,
        usage: EmbedUsage {
            prompt_tokens: e.usage.prompt_tokens,
            total_tokens: e.usage.prompt_tokens,
        },
    };
    Bytes::from(serde_json::to_vec(&list).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ToolCallOut;
    use serde_json::{Value, json};

    fn shape(text: bool, include_usage: bool) -> Shape<'static> {
        Shape {
            id: "chatcmpl-1".into(),
            text,
            model: "alias",
            include_usage,
            base64: false,
        }
    }

    fn events(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn a_stream_with_text_and_streamed_tool_arguments() {
        let mut w = ChunkWriter::new(&shape(false, true));
        let mut out = BytesMut::new();
        w.content(&mut out, "Let me check.");
        let i = w.tool_call(&mut out, "call_1", "get_weather", "");
        w.tool_arguments(&mut out, i, "{\"city\":");
        w.tool_arguments(&mut out, i, "\"Oslo\"}");
        w.finish(&mut out, FinishReason::ToolCalls, Some(Usage::new(10, 5)));
        w.finish(&mut out, FinishReason::Stop, None);
        let e = events(&out);
        assert_eq!(e.len(), 7);
        for c in &e {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["model"], "alias");
            assert_eq!(c["id"], "chatcmpl-1");
        }
        assert_eq!(
            e[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(
            e[1]["choices"][0]["delta"],
            json!({"content": "Let me check."})
        );
        assert_eq!(
            e[2]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}})
        );
        assert_eq!(
            e[3]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 0, "function": {"arguments": "{\"city\":"}})
        );
        assert_eq!(e[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(e[5]["choices"][0]["delta"], json!({}));
        assert_eq!(e[6]["choices"], json!([]));
        assert_eq!(
            e[6]["usage"],
            json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
        );
    }

    #[test]
    fn legacy_completion_chunks_carry_text() {
        let mut w = ChunkWriter::new(&shape(true, false));
        let mut out = BytesMut::new();
        w.content(&mut out, "Once");
        w.finish(&mut out, FinishReason::Length, Some(Usage::new(1, 1)));
        let e = events(&out);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0]["object"], "text_completion");
        assert_eq!(e[0]["choices"][0]["text"], "Once");
        assert_eq!(e[1]["choices"][0]["finish_reason"], "length");
    }

    // What serde writes for OpenAI's shape of a whole answer: the bytes
    // `completion_at` must give.

    #[derive(Serialize)]
    struct Response<'a, C> {
        id: String,
        object: &'static str,
        created: u64,
        model: &'a str,
        choices: [C; 1],
        usage: Usage,
    }

    #[derive(Serialize)]
    struct MessageChoice<'a> {
        index: u32,
        message: OutMessage<'a>,
        logprobs: Option<()>,
        finish_reason: FinishReason,
    }

    #[derive(Serialize)]
    struct OutMessage<'a> {
        role: &'static str,
        content: Option<&'a str>,
        refusal: Option<()>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<OutToolCall<'a>>,
    }

    #[derive(Serialize)]
    struct OutToolCall<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        function: OutFunction<'a>,
    }

    #[derive(Serialize)]
    struct OutFunction<'a> {
        name: &'a str,
        arguments: &'a str,
    }

    fn serde_completion(shape: &Shape<'_>, c: &Completion, created: u64) -> Vec<u8> {
        let content = c.content.as_deref();
        if shape.text {
            return serde_json::to_vec(&Response {
                id: shape.id.clone(),
                object: "text_completion",
                created,
                model: shape.model,
                choices: [TextChoice {
                    index: 0,
                    text: content.unwrap_or(""),
                    logprobs: None,
                    finish_reason: Some(c.finish_reason),
                }],
                usage: c.usage,
            })
            .unwrap();
        }
        serde_json::to_vec(&Response {
            id: shape.id.clone(),
            object: "chat.completion",
            created,
            model: shape.model,
            choices: [MessageChoice {
                index: 0,
                message: OutMessage {
                    role: "assistant",
                    content,
                    refusal: None,
                    tool_calls: c
                        .tool_calls
                        .iter()
                        .map(|t| OutToolCall {
                            id: &t.id,
                            kind: "function",
                            function: OutFunction {
                                name: &t.name,
                                arguments: &t.arguments,
                            },
                        })
                        .collect(),
                },
                logprobs: None,
                finish_reason: c.finish_reason,
            }],
            usage: c.usage,
        })
        .unwrap()
    }

    #[test]
    fn a_whole_answer_is_written_as_serde_writes_it() {
        let call = |id: &str, arguments: &str| ToolCallOut {
            id: id.into(),
            name: "get_weather".into(),
            arguments: arguments.into(),
        };
        let reasons = [
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::ToolCalls,
            FinishReason::ContentFilter,
        ];
        let contents = [
            None,
            Some(""),
            Some("Packets \"queue\"\\\n\u{1}caf\u{e9} \u{1f600}"),
        ];
        let tools = [
            vec![],
            vec![call("call_1", "{\"city\":\"Paris\"}")],
            vec![call("call_1", "{}"), call("call\t2", "")],
        ];
        let mut n = 0;
        for text in [false, true] {
            let mut shape = shape(text, false);
            shape.model = "team/\"quoted\"-model";
            for (reason, content, tools) in every(&reasons, &contents, &tools) {
                let c = Completion {
                    content: content.map(str::to_owned),
                    tool_calls: tools.clone(),
                    finish_reason: *reason,
                    usage: Usage::new(u64::MAX - 1, 7),
                };
                let ours = completion_at(&shape, &c, 1_760_000_000);
                let serde = serde_completion(&shape, &c, 1_760_000_000);
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    String::from_utf8(serde).unwrap()
                );
                n += 1;
            }
        }
        assert_eq!(n, 2 * 4 * 3 * 3);
    }

    /// Every combination of one item from each list.
    fn every<'a, A, B, C>(
        a: &'a [A],
        b: &'a [B],
        c: &'a [C],
    ) -> impl Iterator<Item = (&'a A, &'a B, &'a C)> {
        a.iter()
            .flat_map(move |x| b.iter().flat_map(move |y| c.iter().map(move |z| (x, y, z))))
    }

    #[test]
    fn a_content_chunk_is_what_serde_writes() {
        for text_shape in [false, true] {
            let mut writer = ChunkWriter::new(&shape(text_shape, false));
            writer.role(&mut BytesMut::new());
            for text in ["Hello", "a \"b\" \\ c\n\u{1}\u{1f600}"] {
                let mut ours = BytesMut::new();
                writer.content(&mut ours, text);
                let mut serde = BytesMut::new();
                if text_shape {
                    let choice = TextChoice {
                        index: 0,
                        text,
                        logprobs: None,
                        finish_reason: None,
                    };
                    writer.chunk(&mut serde, &choice);
                } else {
                    let delta = Delta {
                        content: Some(text),
                        ..Default::default()
                    };
                    let choice = ChatChoice {
                        index: 0,
                        delta,
                        logprobs: None,
                        finish_reason: None,
                    };
                    writer.chunk(&mut serde, &choice);
                }
                assert_eq!(ours, serde, "{text:?}");
            }
        }
    }

    #[test]
    fn whole_answers_render_and_synthesize() {
        let c = Completion {
            content: None,
            tool_calls: vec![ToolCallOut {
                id: "call_9".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
            finish_reason: FinishReason::ToolCalls,
            usage: Usage::new(3, 4),
        };
        let v: Value =
            serde_json::from_slice(&render_completion(&shape(false, false), &c)).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["usage"]["total_tokens"], 7);
        let e = events(&synthesize(&shape(false, true), &c));
        assert_eq!(e.len(), 4, "role, tool call, finish, usage");
        assert_eq!(
            e[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
    }

    #[test]
    fn embeddings_as_floats_or_base64() {
        let e = Embeddings {
            vectors: vec![vec![1.0, -2.0]],
            usage: Usage::new(3, 0),
        };
        let mut s = shape(false, false);
        let v: Value = serde_json::from_slice(&render_embeddings(&s, &e)).unwrap();
        assert_eq!(v["data"][0]["embedding"], json!([1.0, -2.0]));
        assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
        s.base64 = true;
        let v: Value = serde_json::from_slice(&render_embeddings(&s, &e)).unwrap();
        let b = base64::engine::general_purpose::STANDARD
            .decode(v["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        assert_eq!(b, [1.0f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat());
    }
}
