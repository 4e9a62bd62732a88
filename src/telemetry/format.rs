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
        let mut buf = String::with_capacity(256);
        let mut line = Line::start(&mut buf, self.json, meta.level().as_str(), meta.target());
        event.record(&mut line);
        line.finish();
        w.write_str(&buf)
    }
}

/// One line being written: the head (timestamp, level, target), then
/// fields. The tracing formatter above and the access log's direct path
/// both write through it, so their lines cannot differ.
pub struct Line<'a> {
    buf: &'a mut String,
    json: bool,
}

impl<'a> Line<'a> {
    /// Begins a line at the end of `buf` with its timestamp, level and target.
    pub fn start(buf: &'a mut String, json: bool, level: &str, target: &str) -> Self {
        if json {
            buf.push_str("{\"timestamp\":\"");
            timestamp(buf);
            buf.push_str("\",\"level\":\"");
            buf.push_str(level);
            buf.push_str("\",\"target\":");
            json_str(buf, target);
        } else {
            timestamp(buf);
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
        push_u64(self.buf, value);
    }

    /// A duration in milliseconds with three decimals (always a JSON float).
    pub fn millis(&mut self, name: &str, micros: u64) {
        self.key(name);
        push_u64(self.buf, micros / 1000);
        let frac = micros % 1000;
        self.buf.push('.');
        for d in [frac / 100, frac / 10 % 10, frac % 10] {
            self.buf.push(char::from(b'0' + d as u8));
        }
    }

    /// An IP address field.
    pub fn ip(&mut self, name: &str, ip: std::net::IpAddr) {
        self.key(name);
        if self.json {
            self.buf.push('"');
        }
        push_ip(self.buf, ip);
        if self.json {
            self.buf.push('"');
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

impl Visit for Line<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field.name());
        let _ = write!(self.buf, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field.name());
        if value.is_finite() {
            let _ = write!(self.buf, "{value}");
        } else {
            // Not a JSON number.
            self.buf.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field.name());
        self.buf.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here too (as Debug that prints Display).
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.text(field.name(), &s);
    }
}

/// Decimal digits of `n`, without the formatting machinery.
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// An address as `Display` writes it; IPv4 (the usual case) without the
/// formatting machinery, which costs a request more than all of its decision.
pub fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(o));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
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
    let micros = now.subsec_micros();
    out.push('.');
    for shift in [100_000, 10_000, 1_000, 100, 10, 1] {
        out.push(char::from(b'0' + (micros / shift % 10) as u8));
    }
    out.push('Z');
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
    fn numbers_and_addresses_print_as_display_does() {
        for n in [0u64, 7, 10, 255, 65_535, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.255.9", "::1", "2001:db8::5"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
        let mut buf = String::new();
        let mut l = Line::start(&mut buf, false, "INFO", "t");
        l.millis("duration_ms", 12_045);
        l.millis("d", 7);
        l.finish();
        assert!(buf.ends_with(" INFO t: duration_ms=12.045 d=0.007\n"), "{buf}");
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
