//! What goes upstream (interface.md §6): the caller's APPTOKENs removed from
//! query and body, the upstream's own credential added once, hop-by-hop
//! headers (and those `Connection` names) dropped, Host set to the upstream,
//! X-Forwarded-For set to the client decided on. Every other byte of the
//! query and body stays as the caller sent it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Uri, Version};

use crate::config::UpstreamToken;
use crate::decide::client_ip::Resolved;
use crate::decide::params::strip_apptoken;
use crate::decide::route::CanonicalPath;

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the usual legacy ones).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers and every header the `Connection` header names.
pub fn drop_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

/// The upstream URI: scheme and authority of the upstream, the canonical path
/// that was matched, and the caller's query without APPTOKEN, with the
/// upstream's credential first.
pub fn upstream_uri(
    scheme: &Scheme,
    authority: &Authority,
    raw_path: &str,
    path: &CanonicalPath<'_>,
    query: Option<&str>,
    credential: Option<&UpstreamToken>,
) -> Result<Uri, http::Error> {
    // Built as bytes and handed to the URI parser without a copy.
    let mut s: Vec<u8> =
        Vec::with_capacity(16 + authority.as_str().len() + raw_path.len() + query.map_or(0, str::len) + 80);
    s.extend_from_slice(scheme.as_str().as_bytes());
    s.extend_from_slice(b"://");
    s.extend_from_slice(authority.as_str().as_bytes());
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
    Ok(Uri::from_maybe_shared(bytes::Bytes::from(s))?)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Request headers a client could use to pass itself off as something it is
/// not (another address, another host or scheme), or to carry a session
/// that is not the gateway's. The gateway speaks for the client upstream.
const NOT_FORWARDED: [&str; 5] = ["forwarded", "x-real-ip", "x-forwarded-host", "x-forwarded-proto", "cookie"];

/// Rewrites the request headers in place for the upstream.
pub fn upstream_headers(headers: &mut HeaderMap, host: &HeaderValue, resolved: &Resolved, body_rebuilt: bool) {
    drop_hop_by_hop(headers);
    for h in NOT_FORWARDED {
        headers.remove(h);
    }
    if body_rebuilt {
        // The client sets the length of the rebuilt body.
        headers.remove(header::CONTENT_LENGTH);
    }
    headers.insert(header::HOST, host.clone());
    headers.insert(HeaderName::from_static("x-forwarded-for"), forwarded_for(resolved));
}

/// Answer headers that point the client somewhere, and so may carry the
/// query the upstream was sent (a servlet container's redirect does).
const POINTERS: [HeaderName; 4] =
    [header::LOCATION, header::CONTENT_LOCATION, HeaderName::from_static("refresh"), header::LINK];

/// Rewrites the upstream's answer headers in place for the client: no
/// hop-by-hop headers, no session cookie of the upstream credential, and the
/// credential itself not in a redirect.
pub fn downstream_headers(headers: &mut HeaderMap, credential: Option<&UpstreamToken>) {
    drop_hop_by_hop(headers);
    headers.remove(header::SET_COOKIE);
    let Some(secret) = credential.map(|c| c.0.as_str()).filter(|s| !s.is_empty()) else { return };
    for name in &POINTERS {
        if !headers.get_all(name).iter().any(|v| v.as_bytes().windows(secret.len()).any(|w| w == secret.as_bytes())) {
            continue;
        }
        let scrubbed: Vec<HeaderValue> = headers
            .get_all(name)
            .iter()
            .map(|v| {
                let text = String::from_utf8_lossy(v.as_bytes()).replace(secret, "REDACTED");
                HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("REDACTED"))
            })
            .collect();
        headers.remove(name);
        for v in scrubbed {
            headers.append(name.clone(), v);
        }
    }
}

fn forwarded_for(r: &Resolved) -> HeaderValue {
    use std::fmt::Write;
    let mut s = String::with_capacity(16 + 18 * r.hops.len());
    let _ = write!(s, "{}", r.client.0);
    for hop in &r.hops {
        let _ = write!(s, ", {hop}");
    }
    // Addresses are ASCII: valid header bytes, taken without a copy.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The HTTP version spoken upstream: the pool picks HTTP/2 by ALPN on its own.
pub const UPSTREAM_VERSION: Version = Version::HTTP_11;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::client_ip::ClientIp;

    fn uri(path: &str, query: Option<&str>, cred: Option<&str>) -> String {
        let p = CanonicalPath::parse(path).unwrap();
        let c = cred.map(|c| UpstreamToken(c.into()));
        upstream_uri(&Scheme::HTTPS, &"scanner:8443".parse().unwrap(), path, &p, query, c.as_ref()).unwrap().to_string()
    }

    #[test]
    fn query_loses_apptoken_and_gains_the_credential() {
        assert_eq!(
            uri("/opi/XMLAPI", Some("APPTOKEN=x&ACTION=A"), Some("UP")),
            "https://scanner:8443/opi/XMLAPI?APPTOKEN=UP&ACTION=A"
        );
        assert_eq!(uri("/opi/XMLAPI", Some("apptoken=x"), Some("UP")), "https://scanner:8443/opi/XMLAPI?APPTOKEN=UP");
        assert_eq!(uri("/opi/XMLAPI", Some("apptoken=x"), None), "https://scanner:8443/opi/XMLAPI");
        assert_eq!(uri("/opi/XMLAPI", Some("A=%7e+b&APPTOKEN=x"), None), "https://scanner:8443/opi/XMLAPI?A=%7e+b");
        assert_eq!(uri("/opi//XMLAPI;x", None, Some("U P")), "https://scanner:8443/opi/XMLAPI?APPTOKEN=U%20P");
    }

    #[test]
    fn answers_lose_the_upstream_session_and_credential() {
        let mut h = HeaderMap::new();
        h.insert("location", "https://scanner/opi/?APPTOKEN=SECRET&x=1".parse().unwrap());
        h.insert("set-cookie", "JSESSIONID=abc".parse().unwrap());
        h.insert("content-type", "text/xml".parse().unwrap());
        downstream_headers(&mut h, Some(&UpstreamToken("SECRET".into())));
        assert_eq!(h["location"], "https://scanner/opi/?APPTOKEN=REDACTED&x=1");
        assert!(h.get("set-cookie").is_none());
        assert_eq!(h["content-type"], "text/xml");
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
        upstream_headers(&mut h, &HeaderValue::from_static("scanner"), &r, true);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(h["host"], "scanner");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.0.0.1");
        assert_eq!(h["accept"], "*/*");
    }
}
