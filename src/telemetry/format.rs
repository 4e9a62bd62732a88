//! The one line format of every log event, text or JSON, as a
//! tracing-subscriber [`FormatEvent`]: timestamp, level, target, then the
//! event's fields in order. The access log (`tokengate::access`) and the
//! diagnostics are events like any other and go through it.
//!
//! Its own formatter rather than tracing-subscriber's: the text form keeps a
//! value bare when nothing in it could be taken for a separator
//! (`token=reader`, where the stock formatter quotes every string), floats
//! (durations) have three decimals so they stay floats in JSON, and it
//! writes straight into one reused buffer (the stock formatter's styling
//! machinery cost about a fifth of a proxied request's instructions).
//! Timestamps are humantime's (its seconds cached per thread), numbers itoa's.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as `key=value` text or as one JSON object per line.
#[derive(Debug, Clone, Copy)]
pub struct LineFormat {
    /// JSON instead of text.
    pub json: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        thread_local! {
            static BUF: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let meta = event.metadata();
        BUF.with(|buf| {
            // A formatter that logs while formatting would find the buffer
            // taken: it gets a fresh one.
            let mut fresh = String::new();
            let mut guard = buf.try_borrow_mut();
            let buf = match &mut guard {
                Ok(b) => &mut **b,
                Err(_) => &mut fresh,
            };
            buf.clear();
            let mut line = LogLine::start(buf, self.json, meta.level().as_str(), meta.target());
            event.record(&mut line);
            line.finish();
            w.write_str(buf)
        })
    }
}

/// One line being written: the head (timestamp, level, target), then
/// fields.
pub struct LogLine<'a> {
    buf: &'a mut String,
    json: bool,
}

impl<'a> LogLine<'a> {
    /// Begins a line at the end of `buf` with its timestamp, level and target.
    pub fn start(buf: &'a mut String, json: bool, level: &str, target: &str) -> Self {
        if json {
            buf.push_str("{\"timestamp\":\"");
            timestamp(buf, SystemTime::now());
            buf.push_str("\",\"level\":\"");
            buf.push_str(level);
            buf.push_str("\",\"target\":");
            json_str(buf, target);
        } else {
            // Levels right-aligned in five columns, as tracing-subscriber's.
            timestamp(buf, SystemTime::now());
            buf.push(' ');
            for _ in level.len()..5 {
                buf.push(' ');
            }
            buf.push_str(level);
            buf.push(' ');
            buf.push_str(target);
            buf.push(':');
        }
        Self { buf, json }
    }

    fn key(&mut self, name: &str) {
        if self.json {
            self.buf.push(',');
            json_str(self.buf, name);
            self.buf.push(':');
        } else if name == "message" {
            self.buf.push(' ');
        } else {
            self.buf.push(' ');
            self.buf.push_str(name);
            self.buf.push('=');
        }
    }

    /// A text field: bare when safe, else quoted (JSON: always a string).
    pub fn text(&mut self, name: &str, value: &str) {
        self.key(name);
        self.value(name, value);
    }

    fn value(&mut self, name: &str, value: &str) {
        if self.json {
            json_str(self.buf, value);
        } else if is_plain(value) || (name == "message" && !value.contains(|c: char| c.is_control())) {
            self.buf.push_str(value);
        } else {
            let _ = write!(self.buf, "{value:?}");
        }
    }

    /// A number field.
    pub fn number(&mut self, name: &str, value: u64) {
        self.key(name);
        self.buf.push_str(itoa::Buffer::new().format(value));
    }

    /// A float field with three decimals (a duration in milliseconds), so
    /// that it stays a float in JSON.
    pub fn float(&mut self, name: &str, value: f64) {
        self.key(name);
        if !value.is_finite() {
            // Not a JSON number.
            self.buf.push_str("null");
        } else if (0.0..1e15).contains(&value) {
            let thousandths = (value * 1000.0).round() as u64;
            self.buf.push_str(itoa::Buffer::new().format(thousandths / 1000));
            let frac = thousandths % 1000;
            self.buf.push('.');
            for d in [frac / 100, frac / 10 % 10, frac % 10] {
                self.buf.push(char::from(b'0' + d as u8));
            }
        } else {
            let _ = write!(self.buf, "{value:.3}");
        }
    }

    /// Ends the line with its newline.
    pub fn finish(self) {
        if self.json {
            self.buf.push('}');
        }
        self.buf.push('\n');
    }
}

impl Visit for LogLine<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field.name());
        self.buf.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.float(field.name(), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field.name());
        self.buf.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here too (as Debug that prints Display).
        // Written in place first; only a value that needs quoting or
        // escaping is taken out and written again.
        let name = field.name();
        self.key(name);
        let at = self.buf.len();
        let _ = write!(self.buf, "{value:?}");
        let written = &self.buf[at..];
        if self.json {
            if !written.chars().any(|c| c == '"' || c == '\\' || c < ' ') {
                self.buf.insert(at, '"');
                self.buf.push('"');
                return;
            }
        } else if is_plain(written) {
            return;
        }
        let text = self.buf.split_off(at);
        self.value(name, &text);
    }
}

/// `t` in RFC 3339, UTC, with microseconds, as humantime's
/// `format_rfc3339_micros` writes it. humantime writes the part up to the
/// second once a second per thread; the microseconds are six digits added
/// here (together about a third of the cost of humantime's whole
/// timestamp per line, which goes through the formatting machinery).
fn timestamp(out: &mut String, t: SystemTime) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            let whole = UNIX_EPOCH + Duration::from_secs(secs);
            cache.1 = humantime::format_rfc3339_seconds(whole).to_string();
            // "…T12:34:56Z": the fraction goes before the zone.
            cache.1.pop();
            cache.0 = secs;
        }
        out.push_str(&cache.1);
    });
    let micros = since.subsec_micros();
    out.push('.');
    for shift in [100_000, 10_000, 1_000, 100, 10, 1] {
        out.push(char::from(b'0' + (micros / shift % 10) as u8));
    }
    out.push('Z');
}

/// Text values print bare when nothing in them could be mistaken for a
/// separator; otherwise quoted and escaped.
fn is_plain(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| PLAIN[usize::from(b)])
}

/// The bytes a bare value may hold: printable ASCII but `"`, `\\` and `=`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        t[b] = !matches!(b as u8, b'"' | b'\\' | b'=');
        b += 1;
    }
    t
};

/// A JSON string. (serde_json escapes the same way, but only into an
/// `io::Write`; the line is a `String`.)
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain_from = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[plain_from..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escaped);
        }
        plain_from = i + c.len_utf8();
    }
    out.push_str(&s[plain_from..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_have_an_rfc3339_utc_timestamp() {
        let mut s = String::new();
        LogLine::start(&mut s, false, "INFO", "t").finish();
        // Levels are right-aligned in five columns, as tracing-subscriber's.
        assert_eq!(&s[27..], "  INFO t:\n", "{s}");
        assert!(s.as_bytes()[26] == b'Z' && s.as_bytes()[10] == b'T', "{s}");
    }

    proptest::proptest! {
        #[test]
        fn timestamps_are_what_humantime_writes(secs in 0u64..4_000_000_000, micros in 0u32..1_000_000) {
            let t = UNIX_EPOCH + Duration::new(secs, micros * 1000 + 999);
            let mut s = String::new();
            timestamp(&mut s, t);
            proptest::prop_assert_eq!(s, humantime::format_rfc3339_micros(t).to_string());
        }
    }

    #[test]
    fn durations_have_three_decimals() {
        let mut buf = String::new();
        let mut l = LogLine::start(&mut buf, false, "INFO", "t");
        l.float("duration_ms", 12.045);
        l.float("d", 0.007);
        l.float("e", 3.0);
        l.number("n", 42);
        l.finish();
        assert!(buf.ends_with(" INFO t: duration_ms=12.045 d=0.007 e=3.000 n=42\n"), "{buf}");
    }

    #[test]
    fn values_are_bare_only_when_safe() {
        assert!(is_plain("/opi/XMLAPI"));
        assert!(!is_plain("a b"));
        assert!(!is_plain("a=b"));
        assert!(!is_plain(""));
        let mut s = String::new();
        json_str(&mut s, "a\"b\n\u{1}é");
        assert_eq!(s, "\"a\\\"b\\n\\u0001é\"");
        let mut buf = String::new();
        let mut l = LogLine::start(&mut buf, false, "INFO", "t");
        l.text("a", "x y");
        l.text("message", "hello there");
        l.finish();
        assert!(buf.ends_with(" t: a=\"x y\" hello there\n"), "{buf}");
    }
}
