//! The request path as the scanner's servlet container will map it. Pure:
//! no I/O. (The `METHOD PATH-GLOB` patterns it is matched against are
//! `crate::rights::RoutePattern`.)
//!
//! Tomcat maps a request after dropping `;` path parameters from every
//! segment, percent-decoding, merging repeated slashes and resolving `.` and
//! `..`. The gateway does the same and then forwards the canonical path it
//! matched, so the container can never map the request somewhere else. What
//! cannot be made canonical without doubt (an encoded `/`, `\` or NUL, a
//! double encoding, a `..` above the root, bytes that are not UTF-8) is
//! refused.

use std::borrow::Cow;
use std::fmt;

use crate::percent::unescape;

/// The XMLAPI endpoint, as the scanner maps it.
pub const XMLAPI_PATH: &str = "/opi/XMLAPI";

/// A path that could not be normalised without doubt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotCanonical(pub &'static str);

/// A decoded, normalised path: what the upstream's router will see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    decoded: Cow<'a, str>,
}

impl<'a> CanonicalPath<'a> {
    /// Normalises a raw request path (without its query) as Tomcat would.
    pub fn parse(raw: &'a str) -> Result<Self, NotCanonical> {
        if !raw.starts_with('/') {
            return Err(NotCanonical("the request target is not an absolute path"));
        }
        if is_plain(raw) {
            return Ok(Self { decoded: Cow::Borrowed(raw) });
        }
        let mut out: Vec<String> = Vec::new();
        let trailing_slash = raw.len() > 1 && raw.ends_with('/');
        for seg in raw[1..].split('/') {
            // Path parameters go first, before decoding, as in Tomcat.
            let seg = seg.split(';').next().unwrap_or("");
            let bytes = percent_decode_path(seg)?;
            let seg = String::from_utf8(bytes).map_err(|_| NotCanonical("the path is not UTF-8 once decoded"))?;
            if seg.contains(['/', '\\', '\0', '%', ';']) {
                return Err(NotCanonical("the path encodes a separator, a NUL or a percent sign"));
            }
            match seg.as_str() {
                "" | "." => {}
                ".." => {
                    if out.pop().is_none() {
                        return Err(NotCanonical("the path climbs above the root"));
                    }
                }
                _ => out.push(seg),
            }
        }
        let mut decoded = String::with_capacity(raw.len());
        for seg in &out {
            decoded.push('/');
            decoded.push_str(seg);
        }
        if decoded.is_empty() || (trailing_slash && !out.is_empty()) {
            decoded.push('/');
        }
        Ok(Self { decoded: Cow::Owned(decoded) })
    }

    /// The decoded path, as routes are matched against it.
    pub fn as_str(&self) -> &str {
        &self.decoded
    }

    /// Whether the raw path was canonical already (nothing decoded or dropped),
    /// so it can be forwarded byte for byte.
    pub fn is_unchanged(&self) -> bool {
        matches!(self.decoded, Cow::Borrowed(_))
    }

    /// Whether this is the XMLAPI endpoint. Matched without regard to letter
    /// case and with anything below it, so that a container or a front proxy
    /// that is lenient about either still has its ACTION checked.
    pub fn is_xmlapi(&self) -> bool {
        let p = self.decoded.as_bytes();
        let n = XMLAPI_PATH.len();
        p.len() >= n && p[..n].eq_ignore_ascii_case(XMLAPI_PATH.as_bytes()) && (p.len() == n || p[n] == b'/')
    }

    /// Whether a lenient container or front proxy might take this path for
    /// the XMLAPI even though [`is_xmlapi`](Self::is_xmlapi) does not: its
    /// first segments are `opi` and `xmlapi` once folded and trimmed as
    /// [`crate::rights::skeleton`] does. Only looked at off the XMLAPI path.
    pub fn may_be_xmlapi(&self) -> bool {
        crate::rights::has_prefix_segments(&self.decoded, &["opi", "xmlapi"])
    }

    /// The path to send upstream: the canonical path, percent-encoded where a
    /// byte is not allowed as is in a path, so that the upstream decodes it to
    /// exactly what was matched.
    pub fn to_upstream(&self, out: &mut String) {
        for c in self.decoded.chars() {
            if is_pchar_or_slash(c) {
                out.push(c);
            } else {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 15)]));
                }
            }
        }
    }
}

impl fmt::Display for CanonicalPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.decoded)
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Nothing to decode, drop or resolve: the common case, borrowed as is,
/// found in one pass. (`%`, `;` and `\\` are not path characters here.) No
/// empty segment but a trailing one, no `.` or `..` segment.
fn is_plain(raw: &str) -> bool {
    let b = raw.as_bytes();
    let mut seg_start = 1;
    for (i, &c) in b.iter().enumerate() {
        if !is_pchar_or_slash(char::from(c)) {
            return false;
        }
        if c == b'/' && i > 0 {
            if matches!(&b[seg_start..i], b"" | b"." | b"..") {
                return false;
            }
            seg_start = i + 1;
        }
    }
    !matches!(b.get(seg_start..), Some(b"." | b".."))
}

fn is_pchar_or_slash(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '/' | '-' | '.' | '_' | '~' | '!' | '$' | '&' | '\'' | '(' | ')' | '*' | '+' | ',' | '=' | ':' | '@'
        )
}

fn percent_decode_path(seg: &str) -> Result<Vec<u8>, NotCanonical> {
    unescape(seg.as_bytes(), false)
        .collect::<Option<Vec<u8>>>()
        .ok_or(NotCanonical("the path has a malformed percent-escape"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(s: &str) -> Result<String, NotCanonical> {
        CanonicalPath::parse(s).map(|p| p.as_str().to_string())
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in ["/opi/XMLAPI", "/", "/opi/rest/outscan/targets/", "/a.b/c-d_e~f"] {
            let c = CanonicalPath::parse(p).unwrap();
            assert!(c.is_unchanged(), "{p}");
            assert_eq!(c.as_str(), p);
        }
    }

    #[test]
    fn normalises_as_tomcat_maps() {
        let cases = [
            ("/opi/XMLAPI;jsessionid=1", "/opi/XMLAPI"),
            ("/opi;x=y/XMLAPI", "/opi/XMLAPI"),
            ("/opi//XMLAPI", "/opi/XMLAPI"),
            ("//opi/XMLAPI", "/opi/XMLAPI"),
            ("/opi/%58MLAPI", "/opi/XMLAPI"),
            ("/opi/./XMLAPI", "/opi/XMLAPI"),
            ("/x/../opi/XMLAPI", "/opi/XMLAPI"),
            ("/opi/rest/a/", "/opi/rest/a/"),
            ("/opi/rest/a/.", "/opi/rest/a"),
            ("/opi/%2e%2e/x", "/x"),
            ("/a%20b", "/a b"),
        ];
        for (raw, want) in cases {
            assert_eq!(canon(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_normalised_without_doubt() {
        for raw in [
            "/opi%2FXMLAPI",
            "/opi%5CXMLAPI",
            "/opi\\XMLAPI",
            "/opi/%00",
            "/opi/%2558MLAPI",
            "/opi/%3B/x",
            "/..",
            "/a/../../b",
            "/opi/%zz",
            "/opi/%C0%AF",
            "*",
            "opi/XMLAPI",
        ] {
            assert!(canon(raw).is_err(), "{raw} should be refused");
        }
    }

    #[test]
    fn xmlapi_is_recognised_in_any_case_and_below() {
        for (p, want) in [
            ("/opi/XMLAPI", true),
            ("/opi/xmlapi", true),
            ("/opi/XMLAPI/", true),
            ("/opi/XMLAPI/x", true),
            ("/opi/XMLAPIx", false),
            ("/opi/rest/x", false),
        ] {
            assert_eq!(CanonicalPath::parse(p).unwrap().is_xmlapi(), want, "{p}");
        }
    }

    proptest! {
        #[test]
        fn canonical_paths_are_fixed_points(raw in "/[a-zA-Z0-9%./;_-]{0,24}") {
            if let Ok(c) = CanonicalPath::parse(&raw) {
                let mut up = String::new();
                c.to_upstream(&mut up);
                let again = CanonicalPath::parse(&up).unwrap();
                prop_assert_eq!(again.as_str(), c.as_str());
                prop_assert!(again.is_unchanged() || up.contains('%'));
                prop_assert!(!c.as_str().contains("//"));
                prop_assert!(!c.as_str().split('/').any(|s| s == "." || s == ".."));
            }
        }

        #[test]
        fn the_one_pass_plain_test_keeps_its_definition(raw in "/[a./%]{0,12}") {
            let by_definition = raw.bytes().all(|c| is_pchar_or_slash(char::from(c)))
                && !raw.contains("//")
                && !raw.contains("/./")
                && !raw.contains("/../")
                && !raw.ends_with("/.")
                && !raw.ends_with("/..");
            prop_assert_eq!(is_plain(&raw), by_definition, "{}", raw);
        }

    }
}
