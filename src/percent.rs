//! Percent-escapes, decoded the one way the gateway decodes them everywhere
//! (paths, parameter names, parameter values, digests in the token file):
//! `%XX` is a byte, anything else is itself, and a `%` not followed by two
//! hex digits is malformed. A leaf: uses nothing of the crate.
//!
//! Also where a secret (the caller's token, the upstream credential) is in
//! a text in any spelling a URL or a header could give it: [`Spelled`].

/// The value of one hex digit.
pub fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The decoded bytes of `raw`, one at a time; `None` for a malformed escape
/// (and nothing after it). With `plus_is_space`, `+` is a space (query and
/// form encoding); in a path it is itself.
pub fn unescape(raw: &[u8], plus_is_space: bool) -> impl Iterator<Item = Option<u8>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *raw.get(i)?;
        Some(match b {
            b'%' => {
                let byte = match (raw.get(i + 1).and_then(|&c| hex_val(c)), raw.get(i + 2).and_then(|&c| hex_val(c))) {
                    (Some(h), Some(l)) => Some(h << 4 | l),
                    _ => None,
                };
                // Stop after a malformed escape.
                i = if byte.is_some() { i + 3 } else { raw.len() };
                byte
            }
            b'+' if plus_is_space => {
                i += 1;
                Some(b' ')
            }
            c => {
                i += 1;
                Some(c)
            }
        })
    })
}

/// A secret to look for in texts in every spelling: each byte as itself in
/// either ASCII letter case, percent-encoded (`%XX`, either hex case, wholly
/// or in part), or a space as `+`; or as it is, undecoded (a secret that
/// holds `%41` itself, written in a header as it is). A `+` and a space are one byte to the
/// search, in the secret and in the text (each may stand for the other: a
/// base64 secret's `+` is found written as it is, not only as `%2B`). A
/// text is normalised once (decoded a level, lower-cased) and searched with
/// memchr's substring finder, so a search is linear in the text whatever
/// the secret and the text hold.
pub struct Spelled {
    needle: Vec<u8>,
}

impl Spelled {
    /// Looks for `secret`; `None` for an empty secret (found everywhere).
    pub fn new(secret: &[u8]) -> Option<Self> {
        (!secret.is_empty()).then(|| Self { needle: secret.iter().map(|&b| fold(b)).collect() })
    }

    /// Whether `text` holds the secret in some spelling.
    pub fn is_in(&self, text: &[u8]) -> bool {
        // Every spelling of a byte takes at least one byte of text.
        if text.len() < self.needle.len() {
            return false;
        }
        let mut normal = Vec::with_capacity(text.len());
        passes(text).iter().any(|&decode| {
            normal.clear();
            normalise(text, &mut normal, None, decode);
            memchr::memmem::find(&normal, &self.needle).is_some()
        })
    }

    /// `text` with every spelling of the secret replaced by `with`; `None`
    /// when it holds none. Decoded spellings go first, then undecoded ones,
    /// again while a pass finds one (a few passes at most): what a
    /// replacement leaves can join into a new spelling, and `with` itself
    /// may spell a short secret. The caller checks the result with
    /// [`Spelled::is_in`] where that matters.
    pub fn replaced(&self, text: &[u8], with: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for _ in 0..4 {
            let mut changed = false;
            for &decode in passes(out.as_deref().unwrap_or(text)) {
                if let Some(r) = self.replaced_once(out.as_deref().unwrap_or(text), with, decode) {
                    out = Some(r);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        out
    }

    /// One pass of [`Spelled::replaced`], decoding a level or not.
    fn replaced_once(&self, text: &[u8], with: &[u8], decode: bool) -> Option<Vec<u8>> {
        if text.len() < self.needle.len() {
            return None;
        }
        let mut normal = Vec::with_capacity(text.len());
        let mut starts = Vec::with_capacity(text.len() + 1);
        normalise(text, &mut normal, Some(&mut starts), decode);
        starts.push(text.len());
        let mut out = Vec::with_capacity(text.len());
        let (mut copied, mut found) = (0, false);
        for at in memchr::memmem::find_iter(&normal, &self.needle) {
            let (from, to) = (starts[at], starts[at + self.needle.len()]);
            if from < copied {
                // Overlaps the previous occurrence, which is gone already.
                continue;
            }
            out.extend_from_slice(&text[copied..from]);
            out.extend_from_slice(with);
            copied = to;
            found = true;
        }
        out.extend_from_slice(&text[copied..]);
        found.then_some(out)
    }
}

/// Decodes one level of `%XX` (with `decode`) and folds each byte as
/// [`fold`] does; with `starts`, records where in `text` each normalised
/// byte began.
fn normalise(text: &[u8], out: &mut Vec<u8>, mut starts: Option<&mut Vec<usize>>, decode: bool) {
    let mut i = 0;
    while i < text.len() {
        let (byte, width) = match text[i] {
            b'%' if decode => {
                match (text.get(i + 1).and_then(|&c| hex_val(c)), text.get(i + 2).and_then(|&c| hex_val(c))) {
                    (Some(h), Some(l)) => (h << 4 | l, 3),
                    _ => (b'%', 1),
                }
            }
            b'+' => (b' ', 1),
            c => (c, 1),
        };
        if let Some(s) = starts.as_deref_mut() {
            s.push(i);
        }
        out.push(fold(byte));
        i += width;
    }
}

/// Whether `text` is searched decoded and undecoded, or once: without a
/// `%` the two readings are the same bytes (most answer headers, each of
/// which is searched for every secret).
fn passes(text: &[u8]) -> &'static [bool] {
    if memchr::memchr(b'%', text).is_some() {
        &[true, false]
    } else {
        &[true]
    }
}

/// A byte as the search compares it: lower-cased, `+` as a space.
fn fold(b: u8) -> u8 {
    match b {
        b'+' => b' ',
        b => b.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_secret_is_found_in_every_spelling_and_replaced_in_place() {
        let s = Spelled::new(b"AbC1-x").unwrap();
        for text in ["AbC1-x", "abc1-X", "%41bc1-x", "%61%62%63%31%2d%78", "q=%41BC1%2Dx&z", "x ABC1-X y"] {
            assert!(s.is_in(text.as_bytes()), "{text}");
        }
        for text in ["AbC1x", "AbC1-", "%2541bc1-x", "Ab C1-x", ""] {
            assert!(!s.is_in(text.as_bytes()), "{text}");
        }
        let r = s.replaced(b"https://up/?APPTOKEN=%41bc1-X&t=abc1-x", b"REDACTED").unwrap();
        assert_eq!(String::from_utf8(r).unwrap(), "https://up/?APPTOKEN=REDACTED&t=REDACTED");
        assert_eq!(s.replaced(b"nothing here at all", b"R"), None);
        let space = Spelled::new(b"a b").unwrap();
        assert!(space.is_in(b"A+B") && space.is_in(b"a%20b") && space.is_in(b"a b"));
        assert!(Spelled::new(b"").is_none());
    }

    #[test]
    fn a_secret_with_a_plus_is_found_written_as_it_is() {
        // A base64 credential echoed in an answer's header.
        let s = Spelled::new(b"ab+cd/e=").unwrap();
        for text in ["x ab+cd/e= y", "AB%2BCD%2Fe%3D", "ab cd/e=", "ab%20cd/e="] {
            assert!(s.is_in(text.as_bytes()), "{text}");
        }
        assert_eq!(s.replaced(b"u?t=Ab+cD/e=&z", b"REDACTED").unwrap(), b"u?t=REDACTED&z");
    }

    #[test]
    fn a_secret_that_holds_an_escape_is_found_written_as_it_is() {
        let s = Spelled::new(b"pa%41ss").unwrap();
        for text in ["pa%41ss", "PA%41SS", "pa%2541ss", "x=pa%2541ss&y"] {
            assert!(s.is_in(text.as_bytes()), "{text}");
        }
        assert!(!s.is_in(b"paAss"));
        let r = s.replaced(b"a pa%41ss b pa%2541ss c", b"#").unwrap();
        assert_eq!(r, b"a # b # c");
        // What a replacement leaves may spell the secret anew: replaced again.
        let ab = Spelled::new(b"ab").unwrap();
        let r = ab.replaced(b"aabb", b"").unwrap();
        assert!(!ab.is_in(&r), "{}", String::from_utf8_lossy(&r));
    }

    proptest! {
        #[test]
        fn any_spelling_of_a_secret_is_found_and_replaced(
            secret in "[A-Za-z0-9._~-]{1,12}",
            how in proptest::collection::vec(0u8..4, 12),
            before in "[a-z=&/?]{0,6}",
            after in "[a-z=&/?]{0,6}",
        ) {
            let spelled: String = secret
                .bytes()
                .zip(how.iter().cycle())
                .map(|(b, h)| match h {
                    0 => char::from(b).to_string(),
                    1 => char::from(b.to_ascii_uppercase()).to_string(),
                    2 => format!("%{b:02X}"),
                    _ => format!("%{b:02x}"),
                })
                .collect();
            let text = format!("{before}{spelled}{after}");
            let s = Spelled::new(secret.as_bytes()).unwrap();
            prop_assert!(s.is_in(text.as_bytes()));
            let r = s.replaced(text.as_bytes(), b"#").unwrap();
            prop_assert!(!s.is_in(&r), "{}", String::from_utf8_lossy(&r));
        }
    }

    fn all(raw: &str, plus: bool) -> Option<Vec<u8>> {
        unescape(raw.as_bytes(), plus).collect()
    }

    #[test]
    fn escapes_plus_and_malformed() {
        assert_eq!(all("a%41+b", true).as_deref(), Some(&b"aA b"[..]));
        assert_eq!(all("a%41+b", false).as_deref(), Some(&b"aA+b"[..]));
        assert_eq!(all("%4", true), None);
        assert_eq!(all("%zz", true), None);
        assert_eq!(all("", true).as_deref(), Some(&b""[..]));
    }
}
