//! Stage 0 of a request: its framing, refused before anything else
//! (interface.md §5, first row). No token is looked up for a request that
//! fails here, so the answer tells nothing about any token, and nothing is
//! counted against one. What is checked is what a front proxy, the gateway
//! and the scanner's container could each read differently:
//!
//! - one `Host` (HTTP/1.1 must have it; HTTP/2 may, and then it must agree
//!   with `:authority`);
//! - an origin-form target (`/path?query`): not absolute-form
//!   (`http://host/path`), not asterisk-form (`*`), not authority-form;
//! - at most one `Content-Length`, a plain decimal number, and not beside
//!   `Transfer-Encoding`;
//! - no fragment in the target. (hyper drops a fragment, and a length
//!   beside chunked framing, while it parses an HTTP/1 head; the
//!   connection's `wire::HeadWatch` notes them for this check.)
//! - no method-override header (`X-HTTP-Method-Override`, `X-HTTP-Method`,
//!   `X-Method-Override`): a framework that honours one would run another
//!   method than the one the route was decided for.
//!
//! The headers are walked once; a usual request has a handful.

use http::header::{self, HeaderName};
use http::request::Parts;
use http::{HeaderValue, Version};

use crate::denial::Denial;
use crate::wire::HeadNote;

/// The headers that ask a framework to run another method.
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// Refuses a request whose framing could be read two ways.
pub fn check(parts: &Parts) -> Result<(), Denial> {
    let refuse = |why| Err(Denial::AmbiguousRequest(why));
    // What hyper forgot but the connection's watch noted (HTTP/1).
    if let Some(note) = parts.extensions.get::<HeadNote>() {
        return refuse(match note {
            HeadNote::Fragment => "The request target has a fragment",
            HeadNote::LengthAndChunked => "The request has both Content-Length and Transfer-Encoding",
            HeadNote::Unwatched => "The connection's framing could not be followed to this request",
        });
    }
    let mut host: Option<&HeaderValue> = None;
    let mut content_length = false;
    let mut transfer_encoding = false;
    for (name, value) in &parts.headers {
        if name == header::HOST {
            if host.replace(value).is_some() {
                return refuse("The request has more than one Host header");
            }
        } else if name == header::CONTENT_LENGTH {
            if std::mem::replace(&mut content_length, true) {
                return refuse("The request has more than one Content-Length header");
            }
            if value.is_empty() || !value.as_bytes().iter().all(u8::is_ascii_digit) {
                return refuse("The request's Content-Length is not a number");
            }
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
        } else if is_method_override(name) {
            return refuse("A method-override header is not accepted");
        }
    }
    if content_length && transfer_encoding {
        return refuse("The request has both Content-Length and Transfer-Encoding");
    }
    match parts.version {
        Version::HTTP_2 | Version::HTTP_3 => {
            if let (Some(host), Some(authority)) = (host, parts.uri.authority()) {
                if !host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()) {
                    return refuse("The Host header and :authority disagree");
                }
            }
        }
        version => {
            if version == Version::HTTP_11 && host.is_none() {
                return refuse("An HTTP/1.1 request must have a Host header");
            }
            // Over HTTP/1 the target as sent: only a path is origin-form.
            if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                return refuse("The request target must be a path, not an absolute URL");
            }
        }
    }
    if !parts.uri.path().starts_with('/') {
        return refuse("The request target must be a path");
    }
    Ok(())
}

fn is_method_override(name: &HeaderName) -> bool {
    // Custom names only: cheap to rule out by length first.
    let n = name.as_str();
    (13..=22).contains(&n.len()) && METHOD_OVERRIDES.contains(&n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(version: Version, target: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().version(version).uri(target);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn why(version: Version, target: &str, headers: &[(&str, &str)]) -> Option<&'static str> {
        match check(&parts(version, target, headers)) {
            Ok(()) => None,
            Err(Denial::AmbiguousRequest(why)) => Some(why),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn well_framed_requests_pass() {
        let h11 = Version::HTTP_11;
        assert_eq!(why(h11, "/opi/XMLAPI?A=1", &[("host", "gw")]), None);
        assert_eq!(why(h11, "/x", &[("host", "gw"), ("content-length", "12")]), None);
        assert_eq!(why(h11, "/x", &[("host", "gw"), ("transfer-encoding", "chunked")]), None);
        assert_eq!(why(Version::HTTP_10, "/x", &[]), None);
        assert_eq!(why(Version::HTTP_2, "https://gw/x", &[]), None);
        assert_eq!(why(Version::HTTP_2, "https://gw/x", &[("host", "GW")]), None);
        assert_eq!(why(h11, "/x", &[("host", "gw"), ("x-http-method-overrides", "1")]), None);
    }

    /// A version, a target and headers.
    type Case<'a> = (Version, &'a str, &'a [(&'a str, &'a str)]);

    #[test]
    fn each_framing_fault_is_refused() {
        let h11 = Version::HTTP_11;
        let cases: [Case<'_>; 12] = [
            (h11, "/x", &[("host", "a"), ("host", "b")]),
            (h11, "/x", &[("host", "a"), ("host", "a")]),
            (h11, "/x", &[]),
            (h11, "http://gw/x", &[("host", "gw")]),
            (h11, "*", &[("host", "gw")]),
            (h11, "/x", &[("host", "gw"), ("content-length", "5"), ("content-length", "5")]),
            (h11, "/x", &[("host", "gw"), ("content-length", "")]),
            (h11, "/x", &[("host", "gw"), ("content-length", "+5")]),
            (h11, "/x", &[("host", "gw"), ("content-length", "5"), ("transfer-encoding", "chunked")]),
            (h11, "/x", &[("host", "gw"), ("X-HTTP-Method-Override", "DELETE")]),
            (h11, "/x", &[("host", "gw"), ("x-method-override", "DELETE")]),
            (Version::HTTP_2, "https://gw/x", &[("host", "other")]),
        ];
        for (v, target, headers) in cases {
            assert!(why(v, target, headers).is_some(), "{v:?} {target} {headers:?}");
        }
        assert!(why(h11, "/x", &[("host", "gw"), ("x-http-method", "PUT")]).is_some());
    }
}
