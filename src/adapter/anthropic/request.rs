//! The Messages request written as JSON field by field. The wire types'
//! derived `Serialize` is the definition of what is written (a test holds
//! the two to the same bytes); this writer escapes each string in one pass
//! a word at a time rather than serde's byte by byte.

use bytes::BufMut;

use crate::json::{write_str, write_u64};

use super::{Block, ImageSource, MessagesRequest, ToolChoiceWire, ToolDef, Turn, TurnRole};

impl MessagesRequest<'_> {
    /// The request's JSON, in a buffer that starts with `room` bytes.
    pub(super) fn to_json(&self, room: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(room);
        out.put_slice(b"{\"model\":");
        write_str(&mut out, self.model);
        out.put_slice(b",\"max_tokens\":");
        write_u64(&mut out, self.max_tokens);
        optional(&mut out, b",\"system\":", self.system.as_deref());
        out.put_slice(b",\"messages\":");
        list(&mut out, &self.messages, turn);
        if let Some(t) = self.temperature {
            out.put_slice(b",\"temperature\":");
            write_f64(&mut out, t);
        }
        if let Some(p) = self.top_p {
            out.put_slice(b",\"top_p\":");
            write_f64(&mut out, p);
        }
        if !self.stop_sequences.is_empty() {
            out.put_slice(b",\"stop_sequences\":");
            list(&mut out, &self.stop_sequences, |out, s| write_str(out, s));
        }
        if !self.tools.is_empty() {
            out.put_slice(b",\"tools\":");
            list(&mut out, &self.tools, tool);
        }
        if let Some(choice) = &self.tool_choice {
            out.put_slice(b",\"tool_choice\":");
            tool_choice(&mut out, choice);
        }
        if let Some(metadata) = &self.metadata {
            out.put_slice(b",\"metadata\":{\"user_id\":");
            write_str(&mut out, metadata.user_id);
            out.put_u8(b'}');
        }
        if self.stream {
            out.put_slice(b",\"stream\":true");
        }
        out.put_u8(b'}');
        out
    }
}

/// `[item,item,…]`.
fn list<T>(out: &mut Vec<u8>, items: &[T], mut item: impl FnMut(&mut Vec<u8>, &T)) {
    out.put_u8(b'[');
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        item(out, x);
    }
    out.put_u8(b']');
}

/// `key` (written as `,"key":`) and its string, when there is one.
fn optional(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    if let Some(value) = value {
        out.put_slice(key);
        write_str(out, value);
    }
}

/// A number as serde_json writes an `f64` (`null` when it is not finite).
fn write_f64(out: &mut Vec<u8>, n: f64) {
    if n.is_finite() {
        out.put_slice(ryu::Buffer::new().format_finite(n).as_bytes());
    } else {
        out.put_slice(b"null");
    }
}

fn turn(out: &mut Vec<u8>, turn: &Turn<'_>) {
    out.put_slice(match turn.role {
        TurnRole::User => b"{\"role\":\"user\",\"content\":",
        TurnRole::Assistant => b"{\"role\":\"assistant\",\"content\":",
    });
    list(out, &turn.content, block);
    out.put_u8(b'}');
}

fn block(out: &mut Vec<u8>, block: &Block<'_>) {
    match block {
        Block::Text { text } => {
            out.put_slice(b"{\"type\":\"text\",\"text\":");
            write_str(out, text);
        }
        Block::Image { source } => {
            out.put_slice(b"{\"type\":\"image\",\"source\":");
            match source {
                ImageSource::Base64 { media_type, data } => {
                    out.put_slice(b"{\"type\":\"base64\",\"media_type\":");
                    write_str(out, media_type);
                    out.put_slice(b",\"data\":");
                    write_str(out, data);
                }
                ImageSource::Url { url } => {
                    out.put_slice(b"{\"type\":\"url\",\"url\":");
                    write_str(out, url);
                }
            }
            out.put_u8(b'}');
        }
        Block::ToolUse { id, name, input } => {
            out.put_slice(b"{\"type\":\"tool_use\",\"id\":");
            write_str(out, id);
            out.put_slice(b",\"name\":");
            write_str(out, name);
            out.put_slice(b",\"input\":");
            // A JSON value made from the client's arguments: serde's.
            let _ = serde_json::to_writer(&mut *out, input);
        }
        Block::ToolResult {
            tool_use_id,
            content,
        } => {
            out.put_slice(b"{\"type\":\"tool_result\",\"tool_use_id\":");
            write_str(out, tool_use_id);
            optional(out, b",\"content\":", content.as_deref());
        }
    }
    out.put_u8(b'}');
}

fn tool(out: &mut Vec<u8>, tool: &ToolDef<'_>) {
    out.put_slice(b"{\"name\":");
    write_str(out, tool.name);
    optional(out, b",\"description\":", tool.description);
    out.put_slice(b",\"input_schema\":");
    out.put_slice(tool.input_schema.get().as_bytes());
    out.put_u8(b'}');
}

fn tool_choice(out: &mut Vec<u8>, choice: &ToolChoiceWire<'_>) {
    out.put_slice(b"{\"type\":");
    write_str(out, choice.kind);
    optional(out, b",\"name\":", choice.name);
    if let Some(serial) = choice.disable_parallel_tool_use {
        out.put_slice(if serial {
            b",\"disable_parallel_tool_use\":true"
        } else {
            b",\"disable_parallel_tool_use\":false"
        });
    }
    out.put_u8(b'}');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::adapter;
    use crate::chat::ChatRequest;
    use crate::openai::Endpoint;

    #[test]
    fn writes_what_serde_writes_for_every_part_of_a_request() {
        let tool_turns = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use \"metric\"\n\u{1}."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather? caf\u{e9} \u{1f600}"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"n\":[1,2.5]}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "not json"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
            {"role": "tool", "tool_call_id": "call_2", "content": ""},
            {"role": "user", "content": "Thanks"}
        ]);
        let tools = json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather \\ now", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "get_time"}}
        ]);
        let bodies = [
            json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}),
            json!({"model": "m", "messages": tool_turns, "tools": tools, "tool_choice": "required",
                   "parallel_tool_calls": false, "stop": ["END", "\"q\""], "temperature": 1.5,
                   "top_p": 0.000_000_1, "user": "team-\"a\"", "stream": true, "max_tokens": 77}),
            json!({"model": "m", "messages": tool_turns, "tools": tools,
                   "tool_choice": {"type": "function", "function": {"name": "get_time"}}, "stop": "X",
                   "temperature": 0.7, "top_p": 1.0}),
            json!({"model": "m", "messages": tool_turns, "tools": tools, "tool_choice": "none"}),
            json!({"model": "m", "messages": tool_turns, "tools": tools}),
        ];
        let adapter = adapter();
        for body in bodies {
            let text = body.to_string();
            let request = ChatRequest::parse(Endpoint::Chat, text.as_bytes()).unwrap();
            let wire = adapter.wire(&request, "claude-\u{e9}").unwrap();
            let ours = String::from_utf8(wire.to_json(0)).unwrap();
            assert_eq!(ours, serde_json::to_string(&wire).unwrap(), "{body}");
        }
        let legacy = br#"{"model":"m","prompt":"Once upon","max_tokens":5}"#;
        let request = ChatRequest::parse(Endpoint::Completions, legacy).unwrap();
        let wire = adapter.wire(&request, "c").unwrap();
        assert_eq!(wire.to_json(0), serde_json::to_vec(&wire).unwrap());
    }
}
