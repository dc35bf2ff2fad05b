//! A strict check of JSON text (RFC 8259) that builds nothing: where a value
//! ends, when the text is one. The request path vouches for a body with it
//! in one pass, without a parse; whatever it cannot vouch for goes to
//! serde_json, which decides and words the error. So the check may decline
//! what is valid (deep nesting), but never accepts what serde_json refuses.

use std::borrow::Cow;

/// Nesting deeper than this below where a check starts is left to
/// serde_json (whose limit is 128 in all; callers start at most a couple
/// of levels down).
const MAX_DEPTH: u32 = 64;

/// `value` written as JSON into a buffer that starts with `room` bytes,
/// so that serializing does not grow it step by step from empty (and copy
/// it each time): for a body whose size is known roughly in advance.
pub fn to_vec_sized<T: serde::Serialize + ?Sized>(
    value: &T,
    room: usize,
) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(room);
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// `text` as a JSON string, escaped as serde_json escapes it (see
/// [`escape`]).
pub fn write_str(out: &mut impl bytes::BufMut, text: &str) {
    out.put_u8(b'"');
    escape(text, |run| out.put_slice(run.as_bytes()));
    out.put_u8(b'"');
}

/// The contents of `text` as a JSON string, handed to `put` piece by piece:
/// `"`, `\` and control characters escaped as serde_json escapes them (`\n`
/// and the like where JSON has a short form, `\u00XX` otherwise), and the
/// runs between them, found eight bytes at a time, as they are.
pub fn escape(text: &str, mut put: impl FnMut(&str)) {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(n) = special(&b[from..]) {
        let at = from + n;
        // `at` is an ASCII byte: a char boundary.
        put(&text[from..at]);
        put(match b[at] {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            c => CONTROL[usize::from(c)],
        });
        from = at + 1;
    }
    put(&text[from..]);
}

/// How JSON (as serde_json writes it) escapes each control character.
const CONTROL: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b",
    "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012",
    "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a",
    "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

/// `n` in decimal.
pub fn write_u64(out: &mut impl bytes::BufMut, n: u64) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `serde_json::from_slice`, with UTF-8 checked once for the whole text:
/// serde_json's slice reader checks every string and key it reads on its
/// own, which costs more than one pass over a body with a few dozen of
/// them. What it accepts and the errors it gives are serde_json's own:
/// text that is not UTF-8 goes to `from_slice` as it is.
pub fn from_slice<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    from_slice_or(bytes, |_| None)
}

/// [`from_slice`], trying `first` on the text before serde: a one-pass
/// reader of a known shape, which says `None` for whatever it cannot vouch
/// for (serde then reads it, and words any error).
pub fn from_slice_or<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    first: impl FnOnce(&'a str) -> Option<T>,
) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => first(text).map_or_else(|| serde_json::from_str(text), Ok),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// JSON's whitespace (RFC 8259), narrower than `u8::is_ascii_whitespace`,
/// which takes the form feed too.
pub fn is_ws(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The index of the first byte at or after `i` that is not whitespace.
pub fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while text.get(i).is_some_and(is_ws) {
        i += 1;
    }
    i
}

/// The index just past the JSON value that starts at `text[at]`.
pub fn value_end(text: &[u8], at: usize) -> Option<usize> {
    value(text, at, 0)
}

fn value(text: &[u8], at: usize, depth: u32) -> Option<usize> {
    match *text.get(at)? {
        b'"' => string_end(text, at),
        b'{' => object(text, at, depth, |_, start| value(text, start, depth + 1)),
        b'[' => array_end(text, at, depth),
        b't' => literal_end(text, at, b"true"),
        b'f' => literal_end(text, at, b"false"),
        b'n' => literal_end(text, at, b"null"),
        b'-' | b'0'..=b'9' => number_end(text, at),
        _ => None,
    }
}

/// The index just past the object that starts at `text[at]`. `member` is
/// given each key (its raw text, between the quotes) and where its value
/// starts, and returns where that value ends: it checks the value itself
/// (with [`value_end`]), which lets a caller read the members it wants as
/// it goes.
pub fn object_end<F>(text: &[u8], at: usize, member: F) -> Option<usize>
where
    F: FnMut(&[u8], usize) -> Option<usize>,
{
    object(text, at, 0, member)
}

/// [`object_end`] for an object nested `depth` deep.
fn object<F>(text: &[u8], at: usize, depth: u32, mut member: F) -> Option<usize>
where
    F: FnMut(&[u8], usize) -> Option<usize>,
{
    if depth >= MAX_DEPTH || text.get(at) != Some(&b'{') {
        return None;
    }
    let mut i = skip_ws(text, at + 1);
    if text.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        if text.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(text, i)?;
        let key = &text[i + 1..key_end - 1];
        i = skip_ws(text, key_end);
        if text.get(i) != Some(&b':') {
            return None;
        }
        let end = member(key, skip_ws(text, i + 1))?;
        i = skip_ws(text, end);
        match text.get(i) {
            Some(b',') => i = skip_ws(text, i + 1),
            Some(b'}') => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The index just past the array that starts at `text[at]`.
fn array_end(text: &[u8], at: usize, depth: u32) -> Option<usize> {
    if depth >= MAX_DEPTH {
        return None;
    }
    let mut i = skip_ws(text, at + 1);
    if text.get(i) == Some(&b']') {
        return Some(i + 1);
    }
    loop {
        i = skip_ws(text, value(text, i, depth + 1)?);
        match text.get(i) {
            Some(b',') => i = skip_ws(text, i + 1),
            Some(b']') => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The index just past the string that starts at `text[at]`: no control
/// characters, only the escapes JSON has. `None` if no string starts there.
pub fn string_end(text: &[u8], at: usize) -> Option<usize> {
    string(text, at).map(|(end, _)| end)
}

/// [`string_end`], and whether the string holds an escape.
#[inline]
pub fn string(text: &[u8], at: usize) -> Option<(usize, bool)> {
    if text.get(at) != Some(&b'"') {
        return None;
    }
    // Most strings (keys, roles, short values) close within the next
    // eight bytes with nothing to escape: one word's test, done inline.
    if let Some(word) = text.get(at + 1..at + 9)
        && let Ok(word) = <[u8; 8]>::try_from(word)
    {
        let hits = special_bytes(u64::from_le_bytes(word));
        if hits != 0 {
            let i = at + 1 + (hits.trailing_zeros() / 8) as usize;
            if text[i] == b'"' {
                return Some((i + 1, false));
            }
        }
    }
    string_rest(text, at)
}

/// [`string`] for a string that starts at `text[at]`, whatever its length.
#[inline(never)]
fn string_rest(text: &[u8], at: usize) -> Option<(usize, bool)> {
    let mut i = at + 1;
    let mut escaped = false;
    loop {
        i += special(text.get(i..)?)?;
        match text[i] {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => match *text.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' if text.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                _ => return None,
            },
            _ => return None,
        }
        escaped = true;
    }
}

/// The text of a string's inside (between its quotes, as [`string`] found
/// it: its escapes are well formed) with the escapes replaced by what they
/// stand for. `None` for a surrogate that is not half of a pair, which
/// serde_json refuses.
pub fn unescape(inner: &str) -> Option<String> {
    let b = inner.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut from = 0;
    while let Some(n) = memchr::memchr(b'\\', &b[from..]) {
        let at = from + n;
        out.push_str(&inner[from..at]);
        let (c, len) = match *b.get(at + 1)? {
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'/' => ('/', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => match hex4(b.get(at + 2..at + 6)?)? {
                high @ 0xD800..=0xDBFF => {
                    if b.get(at + 6..at + 8)? != b"\\u" {
                        return None;
                    }
                    let low = hex4(b.get(at + 8..at + 12)?)?;
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return None;
                    }
                    let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    (char::from_u32(c)?, 12)
                }
                // A low surrogate alone is no char.
                c => (char::from_u32(c)?, 6),
            },
            _ => return None,
        };
        out.push(c);
        from = at + len;
    }
    out.push_str(&inner[from..]);
    Some(out)
}

/// Which of a reader's fields have been read: serde refuses a repeated
/// field, even when the first was `null`, so a one-pass reader must too.
#[derive(Default)]
pub struct Seen(u16);

impl Seen {
    /// `None` when field `bit` was read before.
    pub fn first(&mut self, bit: u8) -> Option<()> {
        let mask = 1 << bit;
        if self.0 & mask != 0 {
            return None;
        }
        self.0 |= mask;
        Some(())
    }
}

// Values read in place, for the one-pass readers of known shapes: each
// says `None` for what serde would read differently or refuse, and the
// reader then leaves the text to serde.

/// `null`'s end, when the value at `b[at]` is `null`.
pub fn null_end(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 4).filter(|w| *w == b"null").map(|_| at + 4)
}

/// A string without escapes at `text[at]`, and its end.
pub fn plain(text: &str, at: usize) -> Option<(&str, usize)> {
    match string(text.as_bytes(), at)? {
        (end, false) => Some((&text[at + 1..end - 1], end)),
        (_, true) => None,
    }
}

/// A string without escapes, or `null`, and its end.
pub fn plain_or_null(text: &str, at: usize) -> Option<(Option<Cow<'_, str>>, usize)> {
    if let Some(end) = null_end(text.as_bytes(), at) {
        return Some((None, end));
    }
    let (value, end) = plain(text, at)?;
    Some((Some(Cow::Borrowed(value)), end))
}

/// A string, unescaped when it must be, or `null`, and its end.
pub fn string_or_null(text: &str, at: usize) -> Option<(Option<Cow<'_, str>>, usize)> {
    if let Some(end) = null_end(text.as_bytes(), at) {
        return Some((None, end));
    }
    let (end, escaped) = string(text.as_bytes(), at)?;
    let inner = &text[at + 1..end - 1];
    let value = if escaped {
        Cow::Owned(unescape(inner)?)
    } else {
        Cow::Borrowed(inner)
    };
    Some((Some(value), end))
}

/// A count (an integer that fits in a `u64`), or `null`, and its end.
pub fn count_or_null(b: &[u8], at: usize) -> Option<(Option<u64>, usize)> {
    if let Some(end) = null_end(b, at) {
        return Some((None, end));
    }
    let end = value_end(b, at)?;
    Some((Some(count(&b[at..end])?), end))
}

/// A JSON number that is a non-negative integer, as serde reads a `u64`:
/// digits without a leading zero, read in the one pass that checks them.
pub fn count(text: &[u8]) -> Option<u64> {
    match text {
        [b'0'] => Some(0),
        [b'1'..=b'9', ..] => text.iter().try_fold(0u64, |n, &b| {
            let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
            n.checked_mul(10)?.checked_add(u64::from(digit))
        }),
        _ => None,
    }
}

/// Four hex digits' value.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0, |n, d| Some(n * 16 + char::from(*d).to_digit(16)?))
}

/// The first `"`, `\` or control character in `text`, eight bytes at a time.
#[inline]
fn special(text: &[u8]) -> Option<usize> {
    let found = scan_words(text, usize::MAX, special_bytes);
    match found {
        Ok(at) => Some(at),
        Err(i) => text[i..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .map(|n| i + n),
    }
}

/// The high bit set in each byte of `w` that is `"`, `\` or a control
/// character, exact at the lowest (as [`zero_bytes`] is).
#[inline]
fn special_bytes(w: u64) -> u64 {
    // Bytes under 0x20 get their high bit set the way zero bytes do.
    zero_bytes(w ^ (ONES * u64::from(b'"')))
        | zero_bytes(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
}

pub const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit set in each byte of `x` that is zero. A byte above a flagged
/// one may be flagged too, never one below, so the lowest flag is exact.
#[inline]
pub fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGH
}

/// Where `flags` (which sets the high bit of the bytes it looks for, exact
/// at the lowest, as [`zero_bytes`] does) first flags a byte, in whole
/// words of `text` up to `limit` bytes: `Ok(index)`, or `Err(index)` where
/// the words stopped, for the caller to finish the search.
#[inline]
pub fn scan_words(text: &[u8], limit: usize, flags: impl Fn(u64) -> u64) -> Result<usize, usize> {
    let mut i = 0;
    while i < limit
        && let Some(word) = text.get(i..i + 8)
        && let Ok(word) = <[u8; 8]>::try_from(word)
    {
        let hits = flags(u64::from_le_bytes(word));
        if hits != 0 {
            return Ok(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    Err(i)
}

/// The index just past the number that starts at `text[at]`:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number_end(text: &[u8], at: usize) -> Option<usize> {
    let digits = |from: usize| {
        let mut i = from;
        while text.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = at + usize::from(text[at] == b'-');
    i = match text.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i + 1),
        _ => return None,
    };
    if text.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(text.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(text.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

fn literal_end(text: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    (text.get(at..at + word.len())? == word).then_some(at + word.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    #[test]
    fn a_sized_buffer_holds_what_serde_writes_whatever_its_room() {
        let value = serde_json::json!({"model": "m", "text": "a \"quoted\" line\n"});
        for room in [0, 4, 1024] {
            let out = to_vec_sized(&value, room).unwrap();
            assert_eq!(out, serde_json::to_vec(&value).unwrap(), "room {room}");
            assert!(out.capacity() >= room);
        }
    }

    #[test]
    fn reading_a_slice_gives_what_serde_json_gives() {
        use std::borrow::Cow;
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct Two<'a> {
            #[serde(borrow)]
            a: Cow<'a, str>,
            b: u32,
        }
        let cases: [&[u8]; 7] = [
            br#"{"a":"plain","b":1}"#,
            br#"{"a":"esc\u00e9\n","b":2,"c":[1,{"d":null}]}"#,
            "{\"a\":\"caf\u{e9} \u{1f600}\",\"b\":3}".as_bytes(),
            // Not UTF-8 inside a string that is read, and inside one that is
            // skipped (serde_json's slice reader lets the second pass).
            b"{\"a\":\"\xff\",\"b\":4}",
            b"{\"a\":\"x\",\"b\":5,\"skipped\":\"\xc3\x28\"}",
            br#"{"a":"x","b":"six"}"#,
            br#"{"a":"x","b":7"#,
        ];
        for bytes in cases {
            let ours = from_slice::<Two<'_>>(bytes).map_err(|e| e.to_string());
            let theirs = serde_json::from_slice::<Two<'_>>(bytes).map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(bytes));
        }
        // A string without escapes is still borrowed from the text.
        let two: Two<'_> = from_slice(br#"{"a":"plain","b":1}"#).unwrap();
        assert!(matches!(two.a, Cow::Borrowed("plain")));
    }

    /// The check's verdict on a whole text: one value and nothing after.
    fn checks(text: &str) -> bool {
        let b = text.as_bytes();
        value_end(b, skip_ws(b, 0)).is_some_and(|end| skip_ws(b, end) == b.len())
    }

    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<IgnoredAny>(text).is_ok()
    }

    #[test]
    fn agrees_with_serde_on_awkward_values() {
        let cases = [
            r#"{"a":[1,-0,0.5,1e9,1E+2,-3.25e-7,true,false,null,"x"]}"#,
            r#"{"a":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"}"#,
            r#"{"a":"é 日本 😀"}"#,
            "{}",
            "[]",
            " \t\r\n{ } ",
            "\"s\"",
            "0",
            "{\"a\":1,}",
            "[1,]",
            "[01]",
            "[1.]",
            "[.5]",
            "[1e]",
            "[+1]",
            "[-]",
            "[tru]",
            "[nul]",
            "[True]",
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12G4"}"#,
            "{\"a\":\"tab\there\"}",
            "{\"a\":\"nul\u{0}\"}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":1 \"b\":2}",
            "[1 2]",
            "{\"a\":1}}",
            "{\"a\":1",
            "[",
            "\"open",
            "{\"a\":1}\u{c}",
            "{\"a\":[}",
            "{\"a\":{]}",
        ];
        for case in cases {
            assert_eq!(checks(case), serde_accepts(case), "{case:?}");
        }
    }

    #[test]
    fn deep_nesting_is_left_to_serde() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(checks(&deep(MAX_DEPTH as usize)));
        assert!(!checks(&deep(MAX_DEPTH as usize + 1)));
        assert!(serde_accepts(&deep(MAX_DEPTH as usize + 1)));
    }

    #[test]
    fn never_accepts_what_serde_refuses_on_generated_text() {
        // Texts built from JSON's pieces and near-misses; the check may
        // decline valid text but must never accept invalid text.
        const PIECES: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"k\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "\"\\q\"",
            "1",
            "-0",
            "2.5",
            "1e3",
            "01",
            "-",
            "true",
            "nul",
            " ",
            "\n",
            "\"\t\"",
            "\"é\"",
        ];
        let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
        let (mut valid, mut agreed) = (0, 0);
        for _ in 0..200_000 {
            let mut text = String::new();
            for _ in 0..rng.usize(1..12) {
                text.push_str(PIECES[rng.usize(..PIECES.len())]);
            }
            let serde = serde_accepts(&text);
            let check = checks(&text);
            assert!(serde || !check, "accepted what serde refuses: {text:?}");
            valid += usize::from(serde);
            agreed += usize::from(serde && check);
        }
        // It must vouch for valid text, not only decline.
        assert!(valid > 1_000 && agreed == valid, "{agreed} of {valid}");
    }

    #[test]
    fn unescaping_gives_what_serde_json_gives() {
        let pieces = [
            "a",
            "\u{e9}",
            "\u{1f600}",
            r"\n",
            r#"\""#,
            r"\\",
            r"\/",
            r"\b",
            r"\f",
            r"\r",
            r"\t",
            r"\u0041",
            r"\u00e9",
            r"\u0000",
            r"\ud83d\ude00",
            r"\uD83D\uDE00",
            r"\ud800",
            r"\udc00",
            r"\ud800\u0041",
            r"\ud800\ud800\udc00",
        ];
        let mut checked = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let quoted = format!("\"{a}{b}{c}\"");
                    let (end, escaped) = string(quoted.as_bytes(), 0).unwrap();
                    assert_eq!(end, quoted.len());
                    let inner = &quoted[1..end - 1];
                    assert_eq!(escaped, inner.contains('\\'), "{quoted}");
                    let serde = serde_json::from_str::<String>(&quoted).ok();
                    assert_eq!(unescape(inner), serde, "{quoted}");
                    checked += usize::from(serde.is_some());
                }
            }
        }
        assert!(checked > 4000, "only {checked} strings were valid");
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut every_byte = String::new();
        for c in (0u8..0x80).map(char::from) {
            every_byte.push(c);
        }
        let texts = [
            "",
            "plain",
            "a \"quoted\" \\ line\n",
            "caf\u{e9} \u{1f600}\u{7f}\u{2028}",
            &every_byte,
            "\u{1f}\u{0}x\u{8}\u{c}",
        ];
        for text in texts {
            let mut ours = Vec::new();
            write_str(&mut ours, text);
            assert_eq!(ours, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
        let mut n = Vec::new();
        write_u64(&mut n, u64::MAX);
        assert_eq!(n, u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn a_string_ends_only_where_one_started() {
        assert_eq!(string_end(br#"x "ab\"c" y"#, 2), Some(9));
        // Where no quote opens a string, its closing quote is no end.
        assert_eq!(string_end(br#"x ab" y"#, 2), None);
        assert_eq!(string_end(b"", 0), None);
        // Short strings, which one word's test settles, and longer ones.
        let check = |text: &[u8], end| {
            assert_eq!(string(text, 0), end, "{}", String::from_utf8_lossy(text));
        };
        check(b"\"ab\" x", Some((4, false)));
        check(b"\"\" xxxxxxxx", Some((2, false)));
        check(b"\"a\x01b\" xxxxxxx", None);
        check(b"\"a\\\"b\" xxxxxx", Some((6, true)));
        check(b"\"abcdefgh\" x", Some((10, false)));
        check(b"\"abcdefghij\\n\"", Some((14, true)));
        check(b"\"abcdefghij", None);
    }

    #[test]
    fn special_finds_the_first_quote_backslash_or_control() {
        for len in 0..40 {
            for at in 0..=len {
                for mark in [b'"', b'\\', 0x00, 0x1f] {
                    // Bytes around the marks: near misses for each test, and
                    // high bytes, which the word arithmetic must not confuse.
                    let mut text: Vec<u8> = (0..len)
                        .map(|n| [b'a', 0x20, 0x21, 0x5b, 0x5d, 0x7f, 0xa2, 0xdc][n % 8])
                        .collect();
                    if at < len {
                        text[at] = mark;
                        if at + 3 < len {
                            text[at + 3] = 0x01;
                        }
                    }
                    let want = text
                        .iter()
                        .position(|&b| b == b'"' || b == b'\\' || b < 0x20);
                    assert_eq!(special(&text), want, "len {len} at {at} mark {mark}");
                }
            }
        }
    }
}
