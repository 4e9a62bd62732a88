//! Percent-escapes, decoded the one way the gateway decodes them everywhere
//! (paths, parameter names, parameter values, digests in the token file):
//! `%XX` is a byte, anything else is itself, and a `%` not followed by two
//! hex digits is malformed. A leaf: uses nothing of the crate.

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

#[cfg(test)]
mod tests {
    use super::*;

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
