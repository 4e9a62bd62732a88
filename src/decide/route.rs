//! The request path as the scanner's servlet container will map it, and the
//! `METHOD PATH-GLOB` patterns of access rights. Pure: no I/O.
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

use http::Method;

use super::escape::unescape;

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

/// One `METHOD PATH-GLOB` entry of an access right's `routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    method: Option<Method>,
    glob: Box<str>,
}

impl RoutePattern {
    /// Parses `"GET /opi/rest/outscan/*"`; `*` as the method means any method,
    /// and `*` in the path matches any run of characters, `/` included.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = s.split_whitespace();
        let (Some(m), Some(p), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("route {s:?} is not \"METHOD /path-glob\""));
        };
        let method = if m == "*" {
            None
        } else {
            let method =
                Method::from_bytes(m.as_bytes()).map_err(|_| format!("route {s:?}: {m:?} is not an HTTP method"))?;
            if !m.bytes().all(|c| c.is_ascii_uppercase()) {
                return Err(format!("route {s:?}: write the method in upper case"));
            }
            Some(method)
        };
        if !p.starts_with('/') {
            return Err(format!("route {s:?}: the path glob must start with '/'"));
        }
        Ok(Self { method, glob: p.into() })
    }

    /// Whether a request with this method and canonical path is covered.
    pub fn matches(&self, method: &Method, path: &CanonicalPath<'_>) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && glob_match(self.glob.as_bytes(), path.as_str().as_bytes())
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.method {
            Some(m) => write!(f, "{m} {}", self.glob),
            None => write!(f, "* {}", self.glob),
        }
    }
}

/// `*` matches any run of bytes; everything else matches itself. Backtracks
/// only to the last star: O(path × pattern) at worst, with patterns from
/// the operator's file and paths bounded by the header size limit.
fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pat.len() && pat[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
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

    #[test]
    fn routes_match_method_and_glob() {
        let r = RoutePattern::parse("GET /opi/rest/outscan/*").unwrap();
        let p = |s| CanonicalPath::parse(s).unwrap();
        assert!(r.matches(&Method::GET, &p("/opi/rest/outscan/targets")));
        assert!(r.matches(&Method::GET, &p("/opi/rest/outscan/a/b")));
        assert!(!r.matches(&Method::POST, &p("/opi/rest/outscan/targets")));
        assert!(!r.matches(&Method::GET, &p("/opi/rest/outscan")));
        assert!(!r.matches(&Method::GET, &p("/opi/rest/other/x")));
        let any = RoutePattern::parse("* /*").unwrap();
        assert!(any.matches(&Method::DELETE, &p("/anything/at/all")));
        assert!(RoutePattern::parse("get /x").is_err());
        assert!(RoutePattern::parse("GET x").is_err());
        assert!(RoutePattern::parse("GET").is_err());
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

        #[test]
        fn glob_star_matches_like_a_regex(pat in "[ab*/]{0,8}", text in "[ab/]{0,10}") {
            let re = format!("^{}$", pat.replace('*', ".*"));
            let want = regex_lite_match(&re, &text);
            prop_assert_eq!(glob_match(pat.as_bytes(), text.as_bytes()), want);
        }
    }

    /// A tiny reference matcher for `.*` and literals, by brute force.
    fn regex_lite_match(re: &str, text: &str) -> bool {
        let body = &re[1..re.len() - 1];
        fn go(p: &[u8], t: &[u8]) -> bool {
            if p.is_empty() {
                return t.is_empty();
            }
            if p.len() >= 2 && p[0] == b'.' && p[1] == b'*' {
                return (0..=t.len()).any(|k| go(&p[2..], &t[k..]));
            }
            !t.is_empty() && p[0] == t[0] && go(&p[1..], &t[1..])
        }
        go(body.as_bytes(), text.as_bytes())
    }
}
