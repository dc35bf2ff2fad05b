//! A stream event's data read in one pass of [`crate::json`]'s check,
//! without serde: the events that come once per token
//! (`content_block_delta`) and the one that closes the message
//! (`message_delta`) are read in a fraction of what serde's derived reader
//! spends on them.
//!
//! As with [`super::answer`], [`event`] says `None` for whatever it cannot
//! vouch for (an event carrying a `message` or a `content_block`, a
//! repeated or escaped key, a value of a type serde would refuse, text that
//! is not JSON), and the caller reads those with serde, which decides and
//! words any error. Where this reader answers, serde would give the same.

use crate::json::{
    Seen, count_or_null, null_end, object_end, plain, plain_or_null, skip_ws, string_or_null,
    value_end,
};

use super::answer::usage;
use super::{EventDelta, StreamEvent, WireUsage};

/// The event in `text`, or `None` for serde to read.
pub(super) fn event(text: &str) -> Option<StreamEvent<'_>> {
    let b = text.as_bytes();
    let mut kind = None;
    let mut index = None;
    let mut delta = None;
    let mut counts = None;
    let mut seen = Seen::default();
    let end = object_end(b, skip_ws(b, 0), |key, at| match key {
        b"type" => {
            seen.first(0)?;
            let (value, end) = plain(text, at)?;
            kind = Some(value);
            Some(end)
        }
        b"index" => {
            seen.first(1)?;
            let (value, end) = count_or_null(b, at)?;
            index = value;
            Some(end)
        }
        b"delta" => {
            seen.first(2)?;
            event_delta(text, at, &mut delta)
        }
        b"usage" => {
            seen.first(3)?;
            if let Some(end) = null_end(b, at) {
                return Some(end);
            }
            let mut read = WireUsage::default();
            let end = usage(b, at, &mut read)?;
            counts = Some(read);
            Some(end)
        }
        // A message or block skeleton: once per stream or block, serde's.
        b"message" | b"content_block" => None,
        _ if key.contains(&b'\\') => None,
        _ => value_end(b, at),
    })?;
    (skip_ws(b, end) == b.len()).then_some(StreamEvent {
        kind: kind?.into(),
        index,
        message: None,
        content_block: None,
        delta,
        usage: counts,
    })
}

/// The `delta` object (or `null`) at `text[at]` into `out`; its end.
fn event_delta<'a>(text: &'a str, at: usize, out: &mut Option<EventDelta<'a>>) -> Option<usize> {
    let b = text.as_bytes();
    if let Some(end) = null_end(b, at) {
        return Some(end);
    }
    let mut delta = EventDelta {
        kind: None,
        text: None,
        partial_json: None,
        stop_reason: None,
    };
    let mut seen = Seen::default();
    let end = object_end(b, at, |key, at| {
        let (slot, bit, escapes) = match key {
            b"type" => (&mut delta.kind, 0, false),
            b"text" => (&mut delta.text, 1, true),
            b"partial_json" => (&mut delta.partial_json, 2, true),
            b"stop_reason" => (&mut delta.stop_reason, 3, false),
            _ if key.contains(&b'\\') => return None,
            _ => return value_end(b, at),
        };
        seen.first(bit)?;
        let (value, end) = if escapes {
            string_or_null(text, at)?
        } else {
            plain_or_null(text, at)?
        };
        *slot = value;
        Some(end)
    })?;
    *out = Some(delta);
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::super::answer::tests::agrees_on_broken;
    use super::*;

    /// What each reader makes of `data`: this one's event (if it gives
    /// one) and serde's.
    fn both(data: &[u8]) -> (Option<String>, Result<String, String>) {
        let ours = std::str::from_utf8(data)
            .ok()
            .and_then(event)
            .map(|e| format!("{e:?}"));
        let serde = serde_json::from_slice::<StreamEvent<'_>>(data)
            .map(|e| format!("{e:?}"))
            .map_err(|e| e.to_string());
        (ours, serde)
    }

    const READ: [&str; 7] = [
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"locat"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_stop"}"#,
        // Spaces, other scripts and escapes, a thinking delta, a null delta.
        " { \"type\" : \"content_block_delta\" , \"index\" : 2 ,\n \"delta\" : { \"type\" : \"text_delta\" , \"text\" : \"caf\u{e9} \u{1f600} \\u00e9\\ud83d\\ude00\\n\" , \"extra\" : [1, {\"a\": null}] } } ",
        r#"{"type":"content_block_delta","index":null,"delta":null,"usage":null}"#,
    ];

    #[test]
    fn the_usual_events_are_read_as_serde_reads_them() {
        for data in READ.iter().take(6) {
            let (ours, serde) = both(data.as_bytes());
            assert!(ours.is_some(), "not read: {data}");
            assert_eq!(Ok(ours.unwrap()), serde, "{data}");
        }
        let delta = event(READ[1]).unwrap().delta.unwrap();
        assert_eq!(delta.partial_json.as_deref(), Some("{\"locat"));
        let closing = event(READ[2]).unwrap();
        assert_eq!(closing.usage.unwrap().output_tokens, Some(15));
        assert_eq!(
            closing.delta.unwrap().stop_reason.as_deref(),
            Some("end_turn")
        );
    }

    #[test]
    fn what_it_cannot_vouch_for_is_left_to_serde() {
        let left = [
            r#"{"type":"message_start","message":{"usage":{"input_tokens":3}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","type":"content_block_delta"}"#,
            r#"{"type":"content_block_delta","delta":{"text":"a","text":"b"}}"#,
            r#"{"type":"content_block_delta","index":0,"index":1}"#,
            r#"{"typ\u0065":"message_stop"}"#,
            r#"{"type":"message_st\u006fp"}"#,
            r#"{"type":"content_block_delta","delta":{"type":"text_d\u0065lta"}}"#,
            r#"{"type":null}"#,
            r#"{"index":0}"#,
            r#"{"type":"content_block_delta","index":-1}"#,
            r#"{"type":"content_block_delta","index":1.0}"#,
            r#"{"type":"content_block_delta","index":18446744073709551616}"#,
            r#"{"type":"content_block_delta","delta":{"text":5}}"#,
            r#"{"type":"content_block_delta","delta":{"text":"\ud800"}}"#,
            r#"{"type":"content_block_delta","delta":[]}"#,
            r#"{"type":"message_delta","usage":{"output_tokens":"15"}}"#,
            r#"{"type":"message_stop"} x"#,
            r#"["type","message_stop"]"#,
        ];
        for data in left {
            assert_eq!(both(data.as_bytes()).0, None, "{data}");
        }
        // Nulls where serde takes them as absent are read (serde agrees).
        let (ours, serde) = both(READ[6].as_bytes());
        assert_eq!(Ok(ours.expect("read")), serde);
    }

    #[test]
    fn never_answers_other_than_serde_on_broken_events() {
        // Every event above with one byte dropped or replaced: where this
        // reader answers, serde must give the same event.
        agrees_on_broken(&READ, both);
    }
}
