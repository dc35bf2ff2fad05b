//! A whole Messages answer read in one pass of [`crate::json`]'s check,
//! without serde: the usual answer (text blocks, a stop reason, token
//! counts) is read in a fraction of the instructions serde's derived
//! reader spends on its keys and strings.
//!
//! [`message`] says `None` for whatever it cannot vouch for (a repeated or
//! escaped key, a `tool_use` block, a value of a type serde would refuse,
//! text that is not JSON), and the caller reads those with serde, which
//! decides and words any error. So the two readers never disagree: where
//! this one answers, serde would have given the same.

use std::borrow::Cow;

use crate::json::{
    Seen, count_or_null, object_end, plain, plain_or_null, skip_ws, string_or_null, value_end,
};

use super::{ContentBlock, MessageResponse, WireUsage};

/// The answer in `text`, or `None` for serde to read.
pub(super) fn message(text: &str) -> Option<MessageResponse<'_>> {
    let b = text.as_bytes();
    let mut response = MessageResponse {
        kind: None,
        content: Vec::new(),
        stop_reason: None,
        usage: WireUsage::default(),
    };
    // serde refuses a repeated field, even when the first was `null`.
    let mut seen = Seen::default();
    let end = object_end(b, skip_ws(b, 0), |key, at| match key {
        b"type" => {
            seen.first(0)?;
            let (kind, end) = plain_or_null(text, at)?;
            response.kind = kind;
            Some(end)
        }
        b"content" => {
            seen.first(1)?;
            blocks(text, at, &mut response.content)
        }
        b"stop_reason" => {
            seen.first(2)?;
            let (reason, end) = plain_or_null(text, at)?;
            response.stop_reason = reason;
            Some(end)
        }
        b"usage" => {
            seen.first(3)?;
            usage(b, at, &mut response.usage)
        }
        _ if key.contains(&b'\\') => None,
        _ => value_end(b, at),
    })?;
    (skip_ws(b, end) == b.len()).then_some(response)
}

/// The array of content blocks at `text[at]`, each an object with a
/// string `type` and an optional `text`; its end.
fn blocks<'a>(text: &'a str, at: usize, out: &mut Vec<ContentBlock<'a>>) -> Option<usize> {
    let b = text.as_bytes();
    if b.get(at) != Some(&b'[') {
        return None;
    }
    let mut i = skip_ws(b, at + 1);
    if b.get(i) == Some(&b']') {
        return Some(i + 1);
    }
    loop {
        let mut kind = None;
        let mut block_text = None;
        let mut seen = Seen::default();
        let end = object_end(b, i, |key, at| match key {
            b"type" => {
                seen.first(0)?;
                let (value, end) = plain(text, at)?;
                kind = Some(value);
                Some(end)
            }
            b"text" => {
                seen.first(1)?;
                let (value, end) = string_or_null(text, at)?;
                block_text = value;
                Some(end)
            }
            // A tool call's fields (its input is kept as raw JSON): serde's.
            b"id" | b"name" | b"input" => None,
            _ if key.contains(&b'\\') => None,
            _ => value_end(b, at),
        })?;
        out.push(ContentBlock {
            kind: Cow::Borrowed(kind?),
            text: block_text,
            id: None,
            name: None,
            input: None,
        });
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The token counts at `text[at]` into `usage`; the object's end.
pub(super) fn usage(b: &[u8], at: usize, usage: &mut WireUsage) -> Option<usize> {
    if b.get(at) != Some(&b'{') {
        return None;
    }
    let mut seen = Seen::default();
    object_end(b, at, |key, at| {
        let (slot, bit) = match key {
            b"input_tokens" => (&mut usage.input_tokens, 0),
            b"output_tokens" => (&mut usage.output_tokens, 1),
            b"cache_creation_input_tokens" => (&mut usage.cache_creation_input_tokens, 2),
            b"cache_read_input_tokens" => (&mut usage.cache_read_input_tokens, 3),
            _ if key.contains(&b'\\') => return None,
            _ => return value_end(b, at),
        };
        seen.first(bit)?;
        let (count, end) = count_or_null(b, at)?;
        *slot = count;
        Some(end)
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::read_answer;
    use super::*;

    /// What each reader makes of `body`: this one's answer (if it gives
    /// one) and serde's.
    fn both(body: &[u8]) -> (Option<String>, Result<String, String>) {
        let answer = |r| format!("{:?}", read_answer(body, r));
        let ours = std::str::from_utf8(body).ok().and_then(message).map(answer);
        let serde = crate::json::from_slice::<MessageResponse<'_>>(body)
            .map(answer)
            .map_err(|e| e.to_string());
        (ours, serde)
    }

    const USUAL: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Packets queue and wait,\nthe balancer hums softly."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":24,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":19,"service_tier":"standard"}}"#;

    const READ: [&str; 5] = [
        USUAL,
        // Thinking before the text, spaces, other scripts, a nested count.
        "{ \"type\" : \"message\", \"content\" : [ {\"type\":\"thinking\",\"thinking\":\"hm\",\"signature\":\"c2ln\"} ,\n {\"type\":\"text\",\"text\":\"caf\u{e9} \u{1f600}\",\"citations\":null} ], \"stop_reason\":\"max_tokens\",\n \"usage\":{\"input_tokens\":7,\"output_tokens\":18446744073709551615,\"server_tool_use\":{\"web_search_requests\":1}} }\n",
        r#"{"type":"message","content":[],"stop_reason":null,"usage":{}}"#,
        r#"{"type":"message","content":[{"type":"text","text":"a\u00e9\ud83d\ude00\"b\\"},{"type":"text","text":null}]}"#,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ];

    #[test]
    fn the_usual_answers_are_read_as_serde_reads_them() {
        for body in READ {
            let (ours, serde) = both(body.as_bytes());
            assert!(ours.is_some(), "not read: {body}");
            assert_eq!(Ok(ours.unwrap()), serde, "{body}");
        }
        let usual = message(USUAL).unwrap();
        assert!(matches!(usual.content[0].text, Some(Cow::Owned(_))));
        assert_eq!(usual.usage.output_tokens, Some(19));
    }

    #[test]
    fn what_it_cannot_vouch_for_is_left_to_serde() {
        let left = [
            // A tool call keeps its input as raw JSON.
            r#"{"type":"message","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]}"#,
            r#"{"type":"message","type":"message"}"#,
            r#"{"type":"message","usage":{"input_tokens":1,"input_tokens":2}}"#,
            r#"{"type":"message","content":[{"type":"text","type":"text"}]}"#,
            r#"{"typ\u0065":"message"}"#,
            r#"{"type":"mess\u0061ge"}"#,
            r#"{"type":"message","content":null}"#,
            r#"{"type":"message","usage":null}"#,
            r#"{"type":"message","content":[{"text":"no type"}]}"#,
            r#"{"type":"message","content":[{"type":"text","text":5}]}"#,
            r#"{"type":"message","content":[{"type":"text","text":"\ud800"}]}"#,
            r#"{"type":"message","usage":{"input_tokens":1.0}}"#,
            r#"{"type":"message","usage":{"input_tokens":-1}}"#,
            r#"{"type":"message","usage":{"input_tokens":1e2}}"#,
            r#"{"type":"message","usage":{"input_tokens":18446744073709551616}}"#,
            r#"{"type":"message"} x"#,
            r#"["type","message"]"#,
        ];
        for body in left {
            assert_eq!(both(body.as_bytes()).0, None, "{body}");
        }
    }

    #[test]
    fn never_answers_other_than_serde_on_broken_answers() {
        // Every answer above with one byte dropped or replaced: where this
        // reader answers, serde must give the same answer.
        agrees_on_broken(&READ, both);
    }

    /// Every text of `samples` with each byte in turn dropped, or replaced
    /// by one that matters to JSON: where a one-pass reader answers, serde
    /// must give the same (`both` says what each made of a text). Most
    /// variants must be read, or the test would show nothing.
    pub(in super::super) fn agrees_on_broken(
        samples: &[&str],
        both: impl Fn(&[u8]) -> (Option<String>, Result<String, String>),
    ) {
        let mut read = 0;
        for text in samples.iter().map(|s| s.as_bytes()) {
            for i in 0..text.len() {
                let dropped = [&text[..i], &text[i + 1..]].concat();
                let replaced = b"\"\\{}[],:0-.enu \x01".iter().map(|&with| {
                    let mut v = text.to_vec();
                    v[i] = with;
                    v
                });
                for v in std::iter::once(dropped).chain(replaced) {
                    let (ours, serde) = both(&v);
                    if let Some(ours) = ours {
                        read += 1;
                        assert_eq!(Ok(ours), serde, "{}", String::from_utf8_lossy(&v));
                    }
                }
            }
        }
        assert!(read > 1000, "only {read} variants were read");
    }
}
