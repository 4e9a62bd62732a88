//! What an access right is (interface.md §4): the XMLAPI ACTIONs it allows
//! and the `METHOD PATH-GLOB` routes it allows outside the XMLAPI. Shared by
//! the token file (which builds rights), the table (which holds them) and
//! the decision (which asks them). A leaf: uses nothing of the crate.
//!
//! Credential-minting calls are never covered by a wildcard (interface.md
//! §4): `ACTION=GETRESTTOKEN` returns the scanner's own REST token, and
//! `/opi/rest/auth/...` logs in; either would hand the caller a credential
//! of the gateway's, valid past every check of the gateway. `"*"` in
//! `actions` and a glob with `*` in `routes` cover neither; only a right
//! that names them does.
//!
//! Both are recognised leniently, failing closed: whatever a container or a
//! framework in front of the scanner might take for them counts. An ACTION
//! that `"*"` allows is a plain name (ASCII letters, digits, `_`) or empty,
//! so no trimming, truncation at a control character or Unicode case
//! mapping can turn it into GETRESTTOKEN; and a path is a login path when
//! its skeleton ([`skeleton`]: letters folded as Java folds case, each
//! segment trimmed of spaces, controls and trailing dots) starts with
//! `/opi/rest/auth`.

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

/// The XMLAPI ACTIONs that mint a credential: no `"*"` covers them.
pub const MINTING_ACTIONS: [&str; 1] = ["GETRESTTOKEN"];

/// The REST paths that mint a credential, below this prefix: no glob with
/// `*` covers them (matched without regard to case, as a lenient container
/// might map them).
pub const MINTING_PATH_PREFIX: &str = "/opi/rest/auth/";

impl Actions {
    /// Whether `action` (decoded bytes) is allowed. A non-ASCII spelling never
    /// matches a listed name, so no Unicode case mapping can widen a right.
    /// `"*"` allows every plain ACTION name (or none: `ACTION=`) but the
    /// credential-minting ones.
    pub fn allows(&self, action: &[u8]) -> bool {
        match self {
            Actions::Any => {
                action.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_') && !is_minting_action(action)
            }
            Actions::Listed(list) => list.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(action)),
        }
    }
}

/// Whether an ACTION mints a credential (Java's case-insensitive compare
/// folds a few non-ASCII letters to ASCII ones; any name that is not plain
/// ASCII is taken as one, so no spelling slips through `"*"`).
pub fn is_minting_action(action: &[u8]) -> bool {
    !action.is_ascii() || MINTING_ACTIONS.iter().any(|m| m.as_bytes().eq_ignore_ascii_case(action))
}

/// Whether a canonical path is a credential-minting REST path, or might be
/// taken for one (see [`skeleton`]).
pub fn is_minting_path(canonical_path: &str) -> bool {
    has_prefix_segments(canonical_path, &["opi", "rest", "auth"])
}

/// Whether a canonical path's first segments are, in [`skeleton`] form,
/// exactly `segments` (lower case ASCII). On the request path (every route
/// tried is asked whether the path is a login path): it allocates nothing
/// and stops at the first segment that differs.
pub fn has_prefix_segments(canonical_path: &str, segments: &[&str]) -> bool {
    let mut parts = canonical_path.split('/').filter(|s| !s.is_empty());
    segments
        .iter()
        .all(|want| parts.next().is_some_and(|got| trimmed(got).chars().map(fold_like_java).eq(want.chars())))
}

/// A path's segments as a lenient reader might compare them: each
/// character folded as Java's case-insensitive compare folds it (`ſ` is
/// `s`, `ı` and `İ` are `i`, the Kelvin sign is `k`; any other letter in its
/// ASCII lower case), then each segment trimmed of whitespace and control
/// characters at both ends and of dots at its end (`auth.`, `auth%20` and
/// `XMLAPI.` are `auth` and `xmlapi`). Only for recognising the paths that
/// need care; never what is matched or forwarded.
pub fn skeleton(canonical_path: &str) -> Vec<String> {
    canonical_path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|seg| trimmed(seg).chars().map(fold_like_java).collect())
        .collect()
}

/// A segment without what [`skeleton`] trims, judged on each character as
/// folded (folding maps one character to one, so the trimmed span is the
/// same before and after).
fn trimmed(seg: &str) -> &str {
    let edge = |c: char| {
        let f = fold_like_java(c);
        f.is_whitespace() || f.is_control()
    };
    seg.trim_start_matches(edge).trim_end_matches(|c: char| edge(c) || fold_like_java(c) == '.')
}

/// One character as Java's `equalsIgnoreCase` would compare it with ASCII:
/// its upper case, or else its lower case, when that is a single ASCII
/// letter; otherwise itself (lower-cased when ASCII).
fn fold_like_java(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let single = |mut it: std::iter::Peekable<std::char::ToUppercase>| -> Option<char> {
        let first = it.next()?;
        (it.peek().is_none() && first.is_ascii()).then(|| first.to_ascii_lowercase())
    };
    if let Some(a) = single(c.to_uppercase().peekable()) {
        return a;
    }
    match c.to_lowercase().next() {
        Some(l) if l.is_ascii() => l,
        _ => c,
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
    /// normalised, as `decide::route::CanonicalPath::as_str` gives it) is
    /// covered. A credential-minting path is covered only by a glob that
    /// names it without a `*`.
    pub fn matches(&self, method: &Method, canonical_path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        if is_minting_path(canonical_path) {
            return !self.glob.contains('*') && *self.glob == *canonical_path;
        }
        glob_match(self.glob.as_bytes(), canonical_path.as_bytes())
    }

    /// Whether this route names a credential-minting path (for the warning
    /// `check` gives about it).
    pub fn names_minting_path(&self) -> bool {
        !self.glob.contains('*') && is_minting_path(&self.glob)
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
    fn credential_minting_calls_are_never_wildcarded() {
        assert!(!Actions::Any.allows(b"GETRESTTOKEN"));
        assert!(!Actions::Any.allows(b"getresttoken"));
        assert!(!Actions::Any.allows("GETRESTTO\u{212A}EN".as_bytes()), "a Kelvin sign folds to K in Java");
        assert!(Actions::Any.allows(b"TARGETDATA"));
        let named = Actions::Listed(vec!["GETRESTTOKEN".into()].into());
        assert!(named.allows(b"GetRestToken"));
        let any = RoutePattern::parse("* /*").unwrap();
        let rest = RoutePattern::parse("POST /opi/rest/*").unwrap();
        for p in ["/opi/rest/auth/login", "/OPI/REST/AUTH/login", "/opi/rest/auth", "/opi/rest/auth/x/y"] {
            assert!(!any.matches(&Method::POST, p), "{p}");
            assert!(!rest.matches(&Method::POST, p), "{p}");
        }
        assert!(any.matches(&Method::GET, "/opi/rest/authority"), "only the auth folder");
        let login = RoutePattern::parse("POST /opi/rest/auth/login").unwrap();
        assert!(login.matches(&Method::POST, "/opi/rest/auth/login"));
        assert!(!login.matches(&Method::POST, "/opi/rest/auth/logout"));
        assert!(login.names_minting_path() && !any.names_minting_path());
    }

    #[test]
    fn the_skeleton_folds_as_java_and_trims_segments() {
        for (c, want) in [('ſ', 's'), ('ı', 'i'), ('İ', 'i'), ('\u{212A}', 'k'), ('A', 'a'), ('é', 'é')] {
            assert_eq!(fold_like_java(c), want, "{c:?}");
        }
        assert_eq!(skeleton("/OPI/ re\u{17F}t /auth.. /x"), ["opi", "rest", "auth", "x"]);
        assert_eq!(skeleton("/opi/xmlapi\u{0}/"), ["opi", "xmlapi"]);
        for p in ["/opi/rest/auth./login", "/opi/rest/auth \t/login", "/op\u{131}/rest/auth", "/opi/rest/AUTH"] {
            assert!(is_minting_path(p), "{p}");
        }
        for p in ["/opi/rest/authx/login", "/opi/rest/au.th", "/opi/rest", "/opi/rest/outscan/auth"] {
            assert!(!is_minting_path(p), "{p}");
        }
        assert!(!Actions::Any.allows(b"GETRESTTOKEN "));
        assert!(!Actions::Any.allows(b"TARGETDATA;x"), "not a plain name");
        assert!(Actions::Any.allows(b""));
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

        #[test]
        fn the_prefix_test_is_the_skeletons(path in "(/(opi|OPI|rest|re\u{17F}t|auth|AUTH|xmlapi|x| |\\.|\t|\u{131}|\u{212A}){0,3}){0,5}") {
            for want in [&["opi", "rest", "auth"][..], &["opi", "xmlapi"], &["auth"]] {
                let skel = skeleton(&path);
                let by_skeleton = skel.len() >= want.len() && skel.iter().zip(want).all(|(a, b)| a == b);
                prop_assert_eq!(has_prefix_segments(&path, want), by_skeleton, "{:?} {:?}", path, want);
            }
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
