//! `percent::Spelled`, the search for a secret in any spelling: a secret
//! spelled any way (letter case, `%XX` in either case, `+` for a space)
//! between any bytes is found; `replaced` finds what `is_in` finds, and
//! leaves no spelling of the secret; `downstream_headers` writes a header
//! over as `replaced` does (with `REDACTED`), or drops it where that
//! still spells the secret.
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

/// A spelling of `secret`, byte by byte as `how` says. A secret that holds
/// an escape (`%41`) of its own is spelled wholly as it is, or with that
/// `%` encoded: a text that decodes some bytes and not that `%` is no
/// spelling any writer makes, and none the search claims to find.
fn spell(secret: &[u8], how: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let raw = (0..secret.len()).all(|i| how.get(i).copied().unwrap_or(0) % 5 < 2);
    let escape_at =
        |i: usize| secret[i] == b'%' && secret.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
    for (i, &b) in secret.iter().enumerate() {
        if !raw && escape_at(i) {
            out.extend_from_slice(b"%25");
            continue;
        }
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

fn holds_none(s: &Spelled, secret: &[u8], text: &[u8]) {
    let found = s.is_in(text);
    // Replaced by a byte that is in no spelling of the secret (the word
    // `REDACTED` may itself spell a short one), nothing of it is left.
    let Some(marker) = (1u8..32).find(|b| !secret.contains(b)) else { return };
    let replaced = s.replaced(text, &[marker]);
    assert_eq!(found, replaced.is_some());
    if let Some(r) = &replaced {
        assert!(!s.is_in(r), "{:?} -> {:?}", String::from_utf8_lossy(text), String::from_utf8_lossy(r));
    }
    // The answer's headers: a value holding it is written over as
    // `replaced` writes it, or dropped.
    let Ok(v) = HeaderValue::from_bytes(text) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static("location"), v.clone());
    downstream_headers(&mut headers, [s]);
    let want = match s.replaced(text, b"REDACTED") {
        Some(r) if s.is_in(&r) => None,
        Some(r) => HeaderValue::from_bytes(&r).ok(),
        None => Some(v),
    };
    assert_eq!(headers.get("location"), want.as_ref());
}

fuzz_target!(|input: Input| {
    let Some(s) = Spelled::new(&input.secret) else { return };
    // Set off by `|`: a `%2` before a secret that starts with `D` is an
    // escape of its own, not the secret (so a `%` at its end before `41`).
    let text = [&input.before[..], b"|", &spell(&input.secret, &input.how), b"|", &input.after].concat();
    assert!(s.is_in(&text), "{:?} not found in {:?}", input.secret, String::from_utf8_lossy(&text));
    holds_none(&s, &input.secret, &text);
    holds_none(&s, &input.secret, &input.text);
});
