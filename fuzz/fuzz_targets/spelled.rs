//! `percent::Spelled`, the search for a secret in any spelling: a secret
//! spelled any way (letter case, `%XX` in either case, `+` for a space)
//! between any bytes is found; `replaced` finds what `is_in` finds, and its
//! output (with `REDACTED`, as the answer's headers are scrubbed) holds no
//! spelling of the secret; nor does any header `downstream_headers` lets
//! through.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tokengate::percent::Spelled;
use tokengate::proxy::rewrite::downstream_headers;

#[derive(Arbitrary, Debug)]
struct Input {
    secret: Vec<u8>,
    how: Vec<u8>,
    before: Vec<u8>,
    after: Vec<u8>,
    text: Vec<u8>,
}

fn spell(secret: &[u8], how: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &b) in secret.iter().enumerate() {
        match how.get(i).copied().unwrap_or(0) % 5 {
            0 => out.push(b),
            1 => out.push(if b.is_ascii_lowercase() { b.to_ascii_uppercase() } else { b.to_ascii_lowercase() }),
            2 => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
            3 => out.extend_from_slice(format!("%{b:02x}").as_bytes()),
            _ => out.extend_from_slice(if b == b' ' { b"+" } else { std::slice::from_ref(&b) }),
        }
    }
    out
}

fn holds_none(s: &Spelled, text: &[u8]) {
    let found = s.is_in(text);
    let replaced = s.replaced(text, b"REDACTED");
    assert_eq!(found, replaced.is_some());
    if let Some(r) = replaced {
        assert!(!s.is_in(&r), "{:?} -> {:?}", String::from_utf8_lossy(text), String::from_utf8_lossy(&r));
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(text) {
        headers.insert(HeaderName::from_static("location"), v);
    }
    downstream_headers(&mut headers, [s]);
    for v in headers.values() {
        assert!(!s.is_in(v.as_bytes()), "{:?} let through", String::from_utf8_lossy(v.as_bytes()));
    }
}

fuzz_target!(|input: Input| {
    let Some(s) = Spelled::new(&input.secret) else { return };
    let text = [&input.before[..], &spell(&input.secret, &input.how), &input.after].concat();
    assert!(s.is_in(&text), "{:?} not found in {:?}", input.secret, String::from_utf8_lossy(&text));
    holds_none(&s, &text);
    holds_none(&s, &input.text);
});
