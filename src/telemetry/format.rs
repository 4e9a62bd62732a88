//! The one line format of every log event, text or JSON: timestamp, level,
//! target, message, then the event's fields in order. Written straight into
//! the line buffer with no styling machinery, since an access line is
//! written for every request (tracing-subscriber's general formatter cost
//! about a fifth of the instructions a proxied request takes).

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

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
        let meta = event.metadata();
        let mut line = String::with_capacity(256);
        timestamp(&mut line);
        if self.json {
            let ts = std::mem::take(&mut line);
            line.push_str("{\"timestamp\":\"");
            line.push_str(&ts);
            line.push_str("\",\"level\":\"");
            line.push_str(meta.level().as_str());
            line.push_str("\",\"target\":");
            json_str(&mut line, meta.target());
        } else {
            let _ = write!(line, " {:>5} {}:", meta.level().as_str(), meta.target());
        }
        let mut v = Fields { line: &mut line, json: self.json };
        event.record(&mut v);
        if self.json {
            line.push('}');
        }
        line.push('\n');
        w.write_str(&line)
    }
}

struct Fields<'a> {
    line: &'a mut String,
    json: bool,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        if self.json {
            self.line.push(',');
            json_str(self.line, field.name());
            self.line.push(':');
        } else if field.name() == "message" {
            self.line.push(' ');
        } else {
            self.line.push(' ');
            self.line.push_str(field.name());
            self.line.push('=');
        }
    }

    fn text(&mut self, field: &Field, value: &str) {
        self.key(field);
        if self.json {
            json_str(self.line, value);
        } else if is_plain(value) || (field.name() == "message" && !value.contains(|c: char| c.is_control())) {
            self.line.push_str(value);
        } else {
            let _ = write!(self.line, "{value:?}");
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            // Not a JSON number.
            self.line.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here too (as Debug that prints Display).
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.text(field, &s);
    }
}

/// Text values print bare when nothing in them could be mistaken for a
/// separator; otherwise quoted and escaped.
fn is_plain(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'=')
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 in UTC with microseconds. The part up to the second is made
/// once a second per thread.
fn timestamp(out: &mut String) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            cache.1.clear();
            let _ = write!(
                cache.1,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            cache.0 = secs;
        }
        out.push_str(&cache.1);
    });
    let _ = write!(out, ".{:06}Z", now.subsec_micros());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut s = String::new();
        timestamp(&mut s);
        assert_eq!(s.len(), 27, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
    }

    #[test]
    fn values_are_bare_only_when_safe() {
        assert!(is_plain("/opi/XMLAPI"));
        assert!(!is_plain("a b"));
        assert!(!is_plain("a=b"));
        assert!(!is_plain(""));
        let mut s = String::new();
        json_str(&mut s, "a\"b\n\u{1}");
        assert_eq!(s, "\"a\\\"b\\n\\u0001\"");
    }
}
