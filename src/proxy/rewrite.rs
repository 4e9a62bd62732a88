//! What goes upstream (interface.md §6): the caller's APPTOKENs removed from
//! query and body, the upstream's own credential added once, hop-by-hop
//! headers (and those `Connection` names) dropped, Host set to the upstream,
//! X-Forwarded-For set to the client decided on. Every other byte of the
//! query and body stays as the caller sent it. Stage 5 of a request, and
//! what the answer's headers lose on the way back.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Uri, Version};
use http_body::Body;
use tower_http::BoxError;

use super::inspect::InspectedBody;
use super::pool::UpstreamBody;
use crate::config::UpstreamToken;
use crate::decide::client_ip::Resolved;
use crate::decide::params::strip_apptoken;
use crate::decide::route::CanonicalPath;
use crate::net::IpText;
use crate::percent::Spelled;

/// What the rewrite does with a header, by name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Hop-by-hop (RFC 9110 §7.6.1 and the usual legacy ones): never passed on.
    HopByHop,
    /// A request header a client could use to pass itself off as something
    /// it is not (another address, host or scheme), or to carry a session
    /// or a credential that is not the gateway's: the gateway speaks for the
    /// client upstream, with its own credential.
    Impersonating,
    /// An answer's cookie: the upstream's session of the gateway's credential.
    SetCookie,
}

/// Every header name the rewrite may remove, with its class, so that
/// removing them needs no list built per request.
const DOOMABLE: [(HeaderName, Class); 16] = [
    (header::CONNECTION, Class::HopByHop),
    (HeaderName::from_static("keep-alive"), Class::HopByHop),
    (HeaderName::from_static("proxy-connection"), Class::HopByHop),
    (header::TE, Class::HopByHop),
    (header::TRAILER, Class::HopByHop),
    (header::TRANSFER_ENCODING, Class::HopByHop),
    (header::UPGRADE, Class::HopByHop),
    (header::PROXY_AUTHORIZATION, Class::HopByHop),
    (HeaderName::from_static("forwarded"), Class::Impersonating),
    (HeaderName::from_static("x-real-ip"), Class::Impersonating),
    (HeaderName::from_static("x-forwarded-host"), Class::Impersonating),
    (HeaderName::from_static("x-forwarded-proto"), Class::Impersonating),
    (header::COOKIE, Class::Impersonating),
    (header::AUTHORIZATION, Class::Impersonating),
    (header::SET_COOKIE, Class::SetCookie),
    (HeaderName::from_static("set-cookie2"), Class::SetCookie),
];

/// Removes every header `drop` says so of, and every header the
/// `Connection` header names. One pass over the names, and no allocation
/// unless `Connection` names a header of its own (not `close`, not
/// `keep-alive`).
fn remove_where(headers: &mut HeaderMap, drop: impl Fn(Class) -> bool) {
    let mut doomed = 0u16;
    for k in headers.keys() {
        if let Some(i) = DOOMABLE.iter().position(|(d, class)| d == k && drop(*class)) {
            doomed |= 1 << i;
        }
    }
    if doomed == 0 {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.eq_ignore_ascii_case("close") && !n.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for (i, (name, _)) in DOOMABLE.iter().enumerate() {
        if doomed & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The request an allowed request becomes upstream: `target` (from
/// [`upstream_uri`]), the headers rewritten (`forwarded_for` from
/// [`forwarded_for`]; the headers named in `holding_token`, from
/// [`headers_holding`], dropped), the body without APPTOKEN.
pub fn upstream_request<B>(
    mut parts: Parts,
    body: InspectedBody<B>,
    target: Uri,
    host: &HeaderValue,
    forwarded_for: HeaderValue,
    holding_token: Vec<HeaderName>,
) -> Request<UpstreamBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    upstream_headers(&mut parts.headers, host, forwarded_for, body.is_rebuilt(), holding_token);
    parts.uri = target;
    parts.version = UPSTREAM_VERSION;
    Request::from_parts(parts, body.into_upstream())
}

/// The upstream request target, in origin form (the Host header names the
/// upstream): the canonical path that was matched, and the caller's query
/// without APPTOKEN, with the upstream's credential first.
///
/// Every byte of it is one the URI parser accepted in the caller's own
/// target, or percent-encoded (the path where it was re-encoded, the
/// credential), so the parse at the end does not fail in practice; if it
/// did, the request would get a 500, not go upstream half-built.
pub fn upstream_uri(
    raw_path: &str,
    path: &CanonicalPath<'_>,
    query: Option<&str>,
    credential: Option<&UpstreamToken>,
) -> Result<Uri, http::Error> {
    // Built as bytes and handed to the URI parser without a copy.
    let mut s: Vec<u8> = Vec::with_capacity(raw_path.len() + query.map_or(0, str::len) + 80);
    if path.is_unchanged() {
        s.extend_from_slice(raw_path.as_bytes());
    } else {
        let mut encoded = String::new();
        path.to_upstream(&mut encoded);
        s.extend_from_slice(encoded.as_bytes());
    }
    if let Some(c) = credential {
        s.extend_from_slice(b"?APPTOKEN=");
        for b in c.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                s.push(b);
            } else {
                s.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
        }
    }
    // The caller's query without APPTOKEN: its pieces parsed as a URI before,
    // so they still are valid URI bytes.
    if let Some(query) = query {
        let mark = s.len();
        s.push(if credential.is_some() { b'&' } else { b'?' });
        strip_apptoken(query.as_bytes(), &mut s);
        if s.len() == mark + 1 {
            s.truncate(mark);
        }
    }
    // Exact length: `Bytes` then takes the buffer as it is (a buffer with
    // spare room would cost it a second allocation).
    s.shrink_to_fit();
    Ok(Uri::from_maybe_shared(bytes::Bytes::from(s))?)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Rewrites the request headers in place for the upstream: hop-by-hop and
/// impersonating headers out (`Authorization` among them), the headers
/// that hold the caller's token out (`holding_token`, from
/// [`headers_holding`]), then the gateway's own `Host` and
/// `X-Forwarded-For`.
pub fn upstream_headers(
    headers: &mut HeaderMap,
    host: &HeaderValue,
    forwarded_for: HeaderValue,
    body_rebuilt: bool,
    holding_token: Vec<HeaderName>,
) {
    remove_where(headers, |c| matches!(c, Class::HopByHop | Class::Impersonating));
    if body_rebuilt {
        // The client sets the length of the rebuilt body.
        headers.remove(header::CONTENT_LENGTH);
    }
    for name in holding_token {
        headers.remove(name);
    }
    headers.insert(header::HOST, host.clone());
    headers.insert(HeaderName::from_static("x-forwarded-for"), forwarded_for);
}

/// The names of the headers that hold the caller's `token` in any
/// spelling (a `Referer` that quotes the caller's URL, say: the scanner's
/// access log writes it); each is dropped whole, every value of its name.
/// A header shorter than the token cannot hold it, and a usual request's
/// headers all are: then nothing is searched and nothing allocated.
pub fn headers_holding(headers: &HeaderMap, token: &[u8]) -> Vec<HeaderName> {
    if token.is_empty() || !headers.values().any(|v| v.len() >= token.len()) {
        return Vec::new();
    }
    let Some(spelled) = Spelled::new(token) else { return Vec::new() };
    let mut holding: Vec<HeaderName> =
        headers.iter().filter(|(_, v)| spelled.is_in(v.as_bytes())).map(|(k, _)| k.clone()).collect();
    holding.dedup();
    holding
}

/// Rewrites the upstream's answer headers in place for the client: no
/// hop-by-hop headers, no session cookie of the upstream credential
/// (`Set-Cookie`, `Set-Cookie2`), and each of the gateway's `secrets` (its
/// APPTOKEN; on REST routes also the REST token and the login password),
/// in any spelling (letter case, percent-encoded wholly or in part) and in
/// any header, written over as `REDACTED` (a servlet container's redirect
/// copies the query it was sent; a debugging scanner may echo a header); a
/// header that cannot be written over is dropped.
pub fn downstream_headers<'s>(headers: &mut HeaderMap, secrets: impl IntoIterator<Item = &'s Spelled>) {
    remove_where(headers, |c| matches!(c, Class::HopByHop | Class::SetCookie));
    for secret in secrets {
        redact(headers, secret);
    }
}

fn redact(headers: &mut HeaderMap, secret: &Spelled) {
    let holding: Vec<HeaderName> =
        headers.iter().filter(|(_, v)| secret.is_in(v.as_bytes())).map(|(k, _)| k.clone()).collect();
    for name in holding {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        headers.remove(&name);
        for v in values {
            let scrubbed = match secret.replaced(v.as_bytes(), b"REDACTED") {
                // Still spelled (a secret so short `REDACTED` spells it): dropped.
                Some(bytes) if secret.is_in(&bytes) => None,
                Some(bytes) => HeaderValue::from_bytes(&bytes).ok(),
                None => Some(v),
            };
            if let Some(v) = scrubbed {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// The X-Forwarded-For sent upstream: the client decided on, then the
/// trusted proxies it came through.
pub fn forwarded_for(r: &Resolved) -> HeaderValue {
    let mut s = String::with_capacity(16 + 18 * r.hops.len());
    s.push_str(IpText::new(r.client.0).as_str());
    for hop in &r.hops {
        s.push_str(", ");
        s.push_str(IpText::new(*hop).as_str());
    }
    // Addresses are ASCII: valid header bytes, taken without a copy.
    let mut s = s.into_bytes();
    s.shrink_to_fit();
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The HTTP version spoken upstream.
pub const UPSTREAM_VERSION: Version = Version::HTTP_11;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::client_ip::ClientIp;

    fn uri(path: &str, query: Option<&str>, cred: Option<&str>) -> String {
        let p = CanonicalPath::parse(path).unwrap();
        let c = cred.map(|c| UpstreamToken(c.into()));
        upstream_uri(path, &p, query, c.as_ref()).unwrap().to_string()
    }

    #[test]
    fn query_loses_apptoken_and_gains_the_credential() {
        assert_eq!(uri("/opi/XMLAPI", Some("APPTOKEN=x&ACTION=A"), Some("UP")), "/opi/XMLAPI?APPTOKEN=UP&ACTION=A");
        assert_eq!(uri("/opi/XMLAPI", Some("apptoken=x"), Some("UP")), "/opi/XMLAPI?APPTOKEN=UP");
        assert_eq!(uri("/opi/XMLAPI", Some("apptoken=x"), None), "/opi/XMLAPI");
        assert_eq!(uri("/opi/XMLAPI", Some("A=%7e+b&APPTOKEN=x"), None), "/opi/XMLAPI?A=%7e+b");
        assert_eq!(uri("/opi//XMLAPI;x", None, Some("U P")), "/opi/XMLAPI?APPTOKEN=U%20P");
    }

    #[test]
    fn answers_lose_the_upstream_session_and_credential() {
        let mut h = HeaderMap::new();
        h.insert("location", "https://scanner/opi/?APPTOKEN=SECRET&x=1".parse().unwrap());
        h.insert("set-cookie", "JSESSIONID=abc".parse().unwrap());
        h.insert("content-type", "text/xml".parse().unwrap());
        h.insert("connection", "keep-alive, X-Up".parse().unwrap());
        h.insert("keep-alive", "timeout=20".parse().unwrap());
        h.insert("x-up", "1".parse().unwrap());
        h.insert("trailer", "x-checksum".parse().unwrap());
        downstream_headers(&mut h, Spelled::new(b"SECRET").iter());
        assert_eq!(h["location"], "https://scanner/opi/?APPTOKEN=REDACTED&x=1");
        assert!(h.get("set-cookie").is_none());
        assert_eq!(h["content-type"], "text/xml");
        for gone in ["connection", "keep-alive", "x-up", "trailer"] {
            assert!(h.get(gone).is_none(), "{gone} reached the client");
        }
        assert_eq!(h.len(), 2, "{h:?}");
    }

    #[test]
    fn a_header_the_word_redacted_would_still_spell_the_secret_in_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert("location", "/x?t=act".parse().unwrap());
        h.insert("x-echo", "pa%41ss and ab+c".parse().unwrap());
        downstream_headers(&mut h, Spelled::new(b"act").iter());
        assert!(h.get("location").is_none(), "{h:?}");
        // A secret holding an escape or a +, written as it is.
        downstream_headers(&mut h, [Spelled::new(b"pa%41ss"), Spelled::new(b"ab+c")].iter().flatten());
        assert_eq!(h["x-echo"], "REDACTED and REDACTED");
    }

    #[test]
    fn headers_lose_hop_by_hop_and_get_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("content-length", "10".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        h.insert("forwarded", "for=6.6.6.6".parse().unwrap());
        h.insert("x-real-ip", "6.6.6.6".parse().unwrap());
        h.insert("cookie", "JSESSIONID=1".parse().unwrap());
        let r = Resolved { client: ClientIp("192.0.2.1".parse().unwrap()), hops: vec!["10.0.0.1".parse().unwrap()] };
        upstream_headers(&mut h, &HeaderValue::from_static("scanner"), forwarded_for(&r), true, Vec::new());
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(h["host"], "scanner");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.0.0.1");
        assert_eq!(h["accept"], "*/*");
    }
}
