//! JSON log lines written straight into the line being built.
//!
//! The shape is tracing-subscriber's own JSON format as switchyard used it
//! (`flatten_event`, the span list, no current span): `timestamp`, `level`,
//! the event's fields in order (`message` first), `target`, and `spans`
//! from the root, each span's fields followed by its `name`. That formatter
//! collects every event's fields into a map of `serde_json::Value`s before
//! writing them, and adds a field to a span by parsing the span's fields
//! back from text and writing them again; with an access line per request
//! and two spans that each get fields after they open, it cost more CPU
//! than the rest of the request. Here every value is written once, in
//! place, and a span's later fields are appended to its text.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// A span's fields, kept as the members of a JSON object without its
/// braces (`"a":1,"b":"x"`), so that the event line copies them as they
/// are. A field recorded twice appears twice; JSON readers keep the last.
#[derive(Debug, Default)]
pub struct Fields;

impl<'w> FormatFields<'w> for Fields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut text = String::with_capacity(128);
        let mut members = Members::new(&mut text, true);
        fields.record(&mut members);
        members.result?;
        writer.write_str(&text)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut members = Members::new(&mut current.fields, first);
        fields.record(&mut members);
        members.result
    }
}

/// One event, one line.
#[derive(Debug, Default)]
pub struct Lines;

thread_local! {
    /// The line being built: written to the subscriber's writer whole.
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl<S> FormatEvent<S, Fields> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, Fields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                let built = build(&mut line, ctx, event);
                built.and_then(|()| writer.write_str(&line))
            }
            // Logging while a line is built (from a field's `Debug`).
            Err(_) => {
                let mut line = String::new();
                build(&mut line, ctx, event)?;
                writer.write_str(&line)
            }
        })
    }
}

fn build<S>(line: &mut String, ctx: &FmtContext<'_, S, Fields>, event: &Event<'_>) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let meta = event.metadata();
    line.push_str("{\"timestamp\":\"");
    timestamp(line, std::time::SystemTime::now());
    line.push_str("\",\"level\":\"");
    line.push_str(meta.level().as_str());
    line.push('"');
    let mut members = Members::new(line, false);
    event.record(&mut members);
    members.result?;
    line.push_str(",\"target\":");
    string(line, meta.target());
    if let Some(scope) = ctx.event_scope() {
        line.push_str(",\"spans\":[");
        for (i, span) in scope.from_root().enumerate() {
            line.push_str(if i == 0 { "{" } else { ",{" });
            if let Some(fields) = span.extensions().get::<FormattedFields<Fields>>()
                && !fields.is_empty()
            {
                line.push_str(fields);
                line.push(',');
            }
            line.push_str("\"name\":");
            string(line, span.name());
            line.push('}');
        }
        line.push(']');
    }
    line.push_str("}\n");
    Ok(())
}

/// `at` as RFC 3339 in UTC with microseconds, `2026-11-27T02:46:11.769268Z`
/// (tracing-subscriber's own format).
fn timestamp(out: &mut String, at: std::time::SystemTime) {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil(secs / 86_400);
    let of_day = secs % 86_400;
    let mut text = [0u8; 27];
    let mut put = |at: usize, value: u64, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            text[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, of_day / 3600, 2);
    put(14, of_day / 60 % 60, 2);
    put(17, of_day % 60, 2);
    put(20, u64::from(since.subsec_micros()), 6);
    for (i, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        text[i] = c;
    }
    out.push_str(std::str::from_utf8(&text).unwrap_or_default());
}

/// The Gregorian (year, month, day) of a count of days since 1970-01-01,
/// by the days-from-civil inverse (proleptic calendar, eras of 400 years).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes the fields it visits as JSON object members.
struct Members<'a> {
    out: &'a mut String,
    /// Nothing written yet: no comma before the next member.
    first: bool,
    result: fmt::Result,
}

impl<'a> Members<'a> {
    fn new(out: &'a mut String, first: bool) -> Self {
        Members {
            out,
            first,
            result: Ok(()),
        }
    }

    /// Writes the member's key; its value follows.
    fn key(&mut self, field: &Field) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        string(self.out, field.name());
        self.out.push(':');
        self.out
    }
}

impl Visit for Members<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // As serde_json writes it: shortest round trip, `null` if not finite.
        let out = self.key(field);
        if value.is_finite() {
            out.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            out.push_str("null");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field).push_str(itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field).push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field)
            .push_str(if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        string(self.key(field), value);
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        let out = self.key(field);
        out.push('[');
        for (i, b) in value.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(itoa::Buffer::new().format(*b));
        }
        out.push(']');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let out = self.key(field);
        out.push('"');
        let written = write!(Escaped(out), "{value:?}");
        out.push('"');
        if self.result.is_ok() {
            self.result = written;
        }
    }
}

/// `text` as a JSON string.
fn string(out: &mut String, text: &str) {
    out.push('"');
    crate::json::escape(text, |run| out.push_str(run));
    out.push('"');
}

/// Escapes whatever is formatted through it (a `Debug` or `Display` value).
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::json::escape(s, |run| self.0.push_str(run));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Lines written by a subscriber, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    /// Logs the same things through `subscriber`: events outside and
    /// inside spans, fields of every kind, fields recorded after a span
    /// opened, and text that needs escaping.
    fn log_everything(subscriber: impl Subscriber + Send + Sync + 'static) {
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "switchyard::access",
                request_id = "r\"1\\",
                status = 200u16,
                delta = -3i64,
                stream = false,
                latency_ms = 0.500459,
                whole = 2.0,
                nan = f64::NAN,
                absent = None::<u64>,
                error = Some("a\nb\u{1}c\u{7f}é"),
                shown = %"display \"me\"",
                debugged = ?vec!["x"],
                r#type = "raw",
                "request"
            );
            let outer = tracing::info_span!(
                "request",
                request_id = "span-me",
                key = tracing::field::Empty,
                model = tracing::field::Empty
            );
            let _o = outer.enter();
            outer.record("key", "team");
            outer.record("model", "m\"x");
            let inner = tracing::info_span!("attempt", provider = "p", attempt = 1u32);
            let _i = inner.enter();
            tracing::warn!(why = "busy", "target out of rotation");
            drop(_i);
            let empty = tracing::info_span!("empty");
            let _e = empty.enter();
            tracing::error!("no fields but the message");
        });
    }

    /// What `log_everything` writes through our format.
    fn ours() -> Captured {
        let lines = Captured::default();
        log_everything(
            tracing_subscriber::fmt()
                .fmt_fields(Fields)
                .event_format(Lines)
                .with_writer(lines.clone())
                .finish(),
        );
        lines
    }

    fn without_timestamp(mut line: Value) -> Value {
        let time = line["timestamp"].as_str().unwrap().to_owned();
        assert!(
            time.len() == 27 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        line.as_object_mut().unwrap().remove("timestamp");
        line
    }

    #[test]
    fn lines_say_what_tracing_subscribers_json_format_says() {
        let ours = ours();
        let theirs = Captured::default();
        log_everything(
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true)
                .with_writer(theirs.clone())
                .finish(),
        );
        let (ours, theirs) = (ours.lines(), theirs.lines());
        assert_eq!(ours.len(), 3);
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.into_iter().zip(theirs) {
            assert_eq!(without_timestamp(a), without_timestamp(b));
        }
    }

    #[test]
    fn lines_carry_values_and_spans_as_written() {
        let ours = ours();
        let lines = ours.lines();
        let access = &lines[0];
        assert_eq!(access["level"], "INFO");
        assert_eq!(access["message"], "request");
        assert_eq!(access["target"], "switchyard::access");
        assert_eq!(access["request_id"], "r\"1\\");
        assert_eq!(access["status"], 200);
        assert_eq!(access["delta"], -3);
        assert_eq!(access["stream"], false);
        assert_eq!(access["latency_ms"], 0.500459);
        assert!(access["whole"].is_f64(), "{access}");
        assert_eq!(access["nan"], Value::Null);
        assert!(access.get("absent").is_none(), "{access}");
        assert_eq!(access["error"], "a\nb\u{1}c\u{7f}é");
        assert_eq!(access["shown"], "display \"me\"");
        assert_eq!(access["debugged"], "[\"x\"]");
        assert_eq!(access["type"], "raw");
        assert!(access.get("spans").is_none(), "{access}");

        assert_eq!(
            lines[1]["spans"],
            json!([
                {"name": "request", "request_id": "span-me", "key": "team", "model": "m\"x"},
                {"name": "attempt", "provider": "p", "attempt": 1},
            ])
        );
        assert_eq!(lines[1]["why"], "busy");
        assert_eq!(
            lines[2]["spans"],
            json!([{"name": "request", "request_id": "span-me", "key": "team", "model": "m\"x"}, {"name": "empty"}])
        );
    }

    #[test]
    fn timestamps_are_utc_dates_to_the_microsecond() {
        use std::time::{Duration, UNIX_EPOCH};
        let text = |at| {
            let mut out = String::new();
            timestamp(&mut out, at);
            out
        };
        assert_eq!(text(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            text(UNIX_EPOCH + Duration::new(1_795_747_571, 769_268_999)),
            "2026-11-27T02:46:11.769268Z"
        );
        assert_eq!(
            text(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
        // Every date part against httpdate's, over four centuries of days.
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        for n in 0..5000u64 {
            let secs = n * 2_524_609 + n % 86_400;
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            let ours = text(at);
            let http = httpdate::fmt_http_date(at); // "Fri, 27 Nov 2026 02:46:11 GMT"
            let p: Vec<&str> = http.split([' ', ',']).filter(|s| !s.is_empty()).collect();
            let month = months.iter().position(|m| *m == p[2]).unwrap() + 1;
            let expected = format!("{}-{month:02}-{}T{}.000000Z", p[3], p[1], p[4]);
            assert_eq!(ours, expected, "{secs}");
        }
    }

    #[test]
    fn control_characters_are_escaped_as_serde_json_escapes_them() {
        for text in [
            "",
            "plain",
            "\"",
            "\\",
            "\u{0}\u{1f}\u{8}\u{c}",
            "tab\there",
            "日本\n",
        ] {
            let mut ours = String::new();
            string(&mut ours, text);
            assert_eq!(ours, serde_json::to_string(text).unwrap(), "{text:?}");
        }
    }
}
