//! What an access right is (interface.md §4): the XMLAPI ACTIONs it allows
//! and the `METHOD PATH-GLOB` routes it allows outside the XMLAPI. Shared by
//! the token file (which builds rights), the table (which holds them) and
//! the decision (which asks them). A leaf: uses nothing of the crate.

use std::fmt;
use std::sync::Arc;

use http::Method;

/// The ACTIONs a right allows on the XMLAPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actions {
    /// `["*"]`: every ACTION.
    Any,
    /// These, compared without regard to ASCII case.
    Listed(Box<[Box<str>]>),
}

impl Actions {
    /// Whether `action` (decoded bytes) is allowed. A non-ASCII spelling never
    /// matches a listed name, so no Unicode case mapping can widen a right.
    pub fn allows(&self, action: &[u8]) -> bool {
        match self {
            Actions::Any => true,
            Actions::Listed(list) => list.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(action)),
        }
    }
}

/// A named access right from `[access_rights.NAME]`.
#[derive(Debug)]
pub struct AccessRight {
    /// Its name in the token file.
    pub name: Arc<str>,
    /// ACTIONs allowed on the XMLAPI path.
    pub actions: Actions,
    /// Routes allowed off the XMLAPI path.
    pub routes: Box<[RoutePattern]>,
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

    /// Whether a request with this method and canonical path (decoded and
    /// normalised, as `decide::route::CanonicalPath::as_str` gives it) is covered.
    pub fn matches(&self, method: &Method, canonical_path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && glob_match(self.glob.as_bytes(), canonical_path.as_bytes())
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

    #[test]
    fn actions_compare_ascii_case_only() {
        let a = Actions::Listed(vec!["TARGETDATA".into()].into());
        assert!(a.allows(b"targetdata"));
        assert!(!a.allows(b"TARGETDATA "));
        assert!(!a.allows("TARGETDAṪA".as_bytes()));
        assert!(Actions::Any.allows(b"anything"));
    }

    #[test]
    fn routes_match_method_and_glob() {
        let r = RoutePattern::parse("GET /opi/rest/outscan/*").unwrap();
        assert!(r.matches(&Method::GET, "/opi/rest/outscan/targets"));
        assert!(r.matches(&Method::GET, "/opi/rest/outscan/a/b"));
        assert!(!r.matches(&Method::POST, "/opi/rest/outscan/targets"));
        assert!(!r.matches(&Method::GET, "/opi/rest/outscan"));
        assert!(!r.matches(&Method::GET, "/opi/rest/other/x"));
        let any = RoutePattern::parse("* /*").unwrap();
        assert!(any.matches(&Method::DELETE, "/anything/at/all"));
        assert!(RoutePattern::parse("get /x").is_err());
        assert!(RoutePattern::parse("GET x").is_err());
        assert!(RoutePattern::parse("GET").is_err());
    }

    proptest! {
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
