//! interface.md §5's first row and §6's headers, through the real gateway:
//! framing that could be read two ways is refused before any token is
//! looked up (raw sockets for HTTP/1.1, the `h2` crate for HTTP/2), the
//! caller's token and `Authorization` never go upstream in a header, and
//! the upstream credential never comes back in one.

use std::time::Duration;

use bytes::Bytes;

use crate::harness::client::send_raw;
use crate::harness::upstream::runtime;
use crate::harness::*;

fn setup() -> (MockUpstream, Gateway) {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    (up, gw)
}

/// The value of one series of `/metrics`, 0 when absent.
fn series(gw: &Gateway, start: &str) -> u64 {
    let m = request(gw.admin, "GET", "/metrics", &[], b"").text();
    m.lines().find(|l| l.starts_with(start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

fn ambiguous(r: &Response) {
    assert_eq!((r.status, r.errorcode().as_deref()), (400, Some("AMBIGUOUS_REQUEST")), "{}", r.text());
}

#[test]
fn framing_faults_are_refused_before_the_token_is_looked_up() {
    let (up, gw) = setup();
    let q = format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA");
    let host = format!("Host: {}\r\n", gw.addr);
    let cases: Vec<(&str, String)> = vec![
        ("two Host headers", format!("GET {q} HTTP/1.1\r\n{host}Host: other\r\nConnection: close\r\n\r\n")),
        ("the same Host twice", format!("GET {q} HTTP/1.1\r\n{host}{host}Connection: close\r\n\r\n")),
        ("no Host on HTTP/1.1", format!("GET {q} HTTP/1.1\r\nConnection: close\r\n\r\n")),
        ("absolute-form", format!("GET http://{}{q} HTTP/1.1\r\n{host}Connection: close\r\n\r\n", gw.addr)),
        ("asterisk-form", format!("OPTIONS * HTTP/1.1\r\n{host}Connection: close\r\n\r\n")),
        (
            "method override",
            format!("GET {q} HTTP/1.1\r\n{host}X-HTTP-Method-Override: DELETE\r\nConnection: close\r\n\r\n"),
        ),
        ("X-HTTP-Method", format!("GET {q} HTTP/1.1\r\n{host}X-HTTP-Method: DELETE\r\nConnection: close\r\n\r\n")),
        ("X-Method-Override", format!("GET {q} HTTP/1.1\r\n{host}x-method-override: PUT\r\nConnection: close\r\n\r\n")),
        ("a fragment", format!("GET {q}#&ACTION=REMOVETARGETDATA HTTP/1.1\r\n{host}Connection: close\r\n\r\n")),
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST {q} HTTP/1.1\r\n{host}Content-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "Transfer-Encoding with Content-Length",
            format!(
                "POST {q} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\n0\r\n\r\n"
            ),
        ),
    ];
    for (what, raw) in &cases {
        let r = send_raw(gw.addr, raw.as_bytes());
        assert_eq!((r.status, r.errorcode().as_deref()), (400, Some("AMBIGUOUS_REQUEST")), "{what}: {}", r.text());
    }
    assert_eq!(up.count(), 0, "a request with ambiguous framing reached the upstream");
    // Not one of them was counted against the token: it was never looked up.
    assert_eq!(
        series(&gw, "tokengate_requests_total{decision=\"denied\",reason=\"AMBIGUOUS_REQUEST\",token=\"reader\"}"),
        0
    );
    let anonymous = "tokengate_requests_total{decision=\"denied\",reason=\"AMBIGUOUS_REQUEST\",token=\"\"}";
    assert_eq!(series(&gw, anonymous), cases.len() as u64);
    // On a kept-alive connection, after requests with bodies of either
    // framing, a fragment is still seen (the notes follow the framing).
    let inner = "GET /x#y HTTP/1.1\r\n\r\n";
    let pipelined = format!(
        "POST {q} HTTP/1.1\r\n{host}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{inner}\
         POST {q} HTTP/1.1\r\n{host}Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n#a#\r\n0\r\n\r\n\
         GET {q}#x HTTP/1.1\r\n{host}Connection: close\r\n\r\n",
        inner.len()
    );
    let answers = crate::harness::client::read_all(gw.addr, pipelined.as_bytes());
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![200, 200, 400], "{answers:?}");
    // The same requests, well framed, pass.
    let r = send_raw(gw.addr, format!("GET {q} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn the_watch_follows_any_number_of_pipelined_heads_and_heads_as_long_as_hyper_takes() {
    let up = MockUpstream::start();
    let gw =
        Gateway::builder(&up.url(), &standard_tokens().render()).extra("[limits]\nmax_header_bytes = 131072").start();
    let q = format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA");
    let host = format!("Host: {}\r\n", gw.addr);
    // 100 pipelined requests in one write (more than any queue of notes
    // would hold), then one with a fragment: each answered in order, the
    // last refused, and the connection closed after it.
    let mut raw = format!("GET {q} HTTP/1.1\r\n{host}\r\n").repeat(100);
    raw.push_str(&format!("GET {q}#&ACTION=REMOVETARGETDATA HTTP/1.1\r\n{host}\r\nGET {q} HTTP/1.1\r\n{host}\r\n"));
    let answers = crate::harness::client::read_all(gw.addr, raw.as_bytes());
    assert_eq!(answers.len(), 101, "the connection is closed after the refusal");
    assert!(
        answers[..100].iter().all(|a| a.status == 200),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    ambiguous(&answers[100]);
    assert_eq!(answers[100].header("connection"), Some("close"));
    assert_eq!(up.count(), 100);
    // A 70 KB head (which this gateway's max_header_bytes takes) is followed
    // too: the fragment after it is seen.
    let long =
        format!("GET {q} HTTP/1.1\r\n{host}X-Long: {}\r\n\r\nGET {q}#x HTTP/1.1\r\n{host}\r\n", "a".repeat(70_000));
    let answers = crate::harness::client::read_all(gw.addr, long.as_bytes());
    assert_eq!(answers.iter().map(|a| a.status).collect::<Vec<_>>(), vec![200, 400]);
    ambiguous(&answers[1]);
    assert_eq!(up.count(), 101);
}

#[test]
fn a_read_only_token_cannot_run_another_method_by_override() {
    let (up, gw) = setup();
    for name in ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "x-http-method-override"] {
        let r = gw.send("GET", &format!("/opi/rest/outscan/targets?APPTOKEN={RO}"), &[(name, "DELETE")], b"");
        ambiguous(&r);
    }
    // The same as a parameter (Spring's HiddenHttpMethodFilter reads `_method`).
    ambiguous(&gw.get(&format!("/opi/rest/outscan/targets?APPTOKEN={RO}&_method=DELETE")));
    ambiguous(&gw.post_form(&format!("/opi/XMLAPI?APPTOKEN={RO}"), "ACTION=TARGETDATA&_Method=DELETE"));
    assert_eq!(up.count(), 0);
    assert_eq!(gw.get(&format!("/opi/rest/outscan/targets?APPTOKEN={RO}")).status, 200);
}

#[test]
fn the_callers_token_never_goes_upstream_in_a_header() {
    let (up, gw) = setup();
    let referer = format!("https://gw/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA");
    let lower = RO.to_lowercase();
    let encoded: String = RO.bytes().map(|b| format!("%{b:02X}")).collect();
    let partly = format!("{}{}", &RO[..10], &encoded[30..]);
    let headers: Vec<(&str, String)> = vec![
        ("Referer", referer),
        ("X-Original-Url", format!("/opi/XMLAPI?apptoken={lower}")),
        ("X-Debug", format!("t={encoded}")),
        ("X-Partly", partly),
        ("Authorization", "Basic dXNlcjpwYXNz".into()),
        ("Accept", "text/xml".into()),
    ];
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = gw.send("GET", &format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"), &pairs, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    for gone in ["referer", "x-original-url", "x-debug", "x-partly", "authorization"] {
        assert_eq!(seen.header(gone), None, "{gone} went upstream: {seen:?}");
    }
    assert_eq!(seen.header("accept"), Some("text/xml"), "a header without the token is kept");
    let raw = format!("{seen:?}").to_lowercase();
    assert!(!raw.contains(&lower), "the caller's token reached the upstream: {raw}");
    // Nor any other Authorization: Basic on a REST route, a bearer on the
    // XMLAPI (where it is not a token source).
    let r =
        gw.send("GET", &format!("/opi/rest/outscan/targets?APPTOKEN={RO}"), &[("Authorization", "Basic eA==")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("authorization"), None);
    let r = gw.send(
        "GET",
        &format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"),
        &[("Authorization", "Bearer upstream-session")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("authorization"), None);
}

#[test]
fn the_upstream_credential_never_comes_back_in_any_spelling_or_header() {
    let lower = UPSTREAM_TOKEN.to_lowercase();
    let encoded: String = UPSTREAM_TOKEN.bytes().map(|b| format!("%{b:02x}")).collect();
    let partly = format!("{}{}", &UPSTREAM_TOKEN[..32], &encoded[96..]);
    let up = MockUpstream::start_with(Reply::Headers(vec![
        ("location", format!("https://scanner/opi/?apptoken={lower}&x=1")),
        ("x-debug-query", format!("APPTOKEN={encoded}")),
        ("www-authenticate", format!("Bearer realm=\"{partly}\"")),
        ("set-cookie2", "JSESSIONID=abc".into()),
        ("x-plain", "kept".into()),
    ]));
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
    assert_eq!(r.status, 200);
    let head = format!("{:?}", r.headers).to_lowercase();
    assert!(!head.contains(&lower), "the credential came back: {head}");
    assert!(!head.contains(&encoded.to_lowercase()), "the credential came back encoded: {head}");
    assert!(!head.contains(&partly.to_lowercase()), "the credential came back partly encoded: {head}");
    assert_eq!(r.header("set-cookie2"), None);
    assert_eq!(r.header("x-plain"), Some("kept"));
    assert_eq!(r.header("location"), Some("https://scanner/opi/?apptoken=REDACTED&x=1"));
    assert_eq!(r.header("x-debug-query"), Some("APPTOKEN=REDACTED"));
}

#[test]
fn neither_a_reason_phrase_nor_a_trailer_brings_the_upstream_credential_back() {
    use std::io::{Read, Write};
    let up = MockUpstream::start_with(Reply::Quoting);
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    let target = format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA");
    // HTTP/1: the status line as it comes, bytes and all.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(!raw.contains(UPSTREAM_TOKEN), "{raw}");
    assert!(up.last().query().contains(UPSTREAM_TOKEN), "the mock quotes what it was sent");
    // HTTP/2, which carries trailers: none comes back.
    let addr = gw.addr;
    let (status, trailers) = runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://{addr}{target}")).body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), resp).await.unwrap().unwrap();
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let n = chunk.unwrap().len();
            let _ = body.flow_control().release_capacity(n);
        }
        (status, body.trailers().await.unwrap())
    });
    assert_eq!(status, 200);
    assert!(trailers.is_none_or(|t| !format!("{t:?}").contains(UPSTREAM_TOKEN)), "a trailer quoted the credential");
}

/// One HTTP/2 request with prior knowledge over plain TCP: the status, or
/// why the stream ended without one.
fn h2_request(gw: &Gateway, req: http::Request<()>, body: &[u8]) -> Result<u16, String> {
    let addr = gw.addr;
    let body = Bytes::copy_from_slice(body);
    runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut client, conn) = h2::client::handshake(tcp).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let (resp, mut stream) = client.send_request(req, body.is_empty()).map_err(|e| e.to_string())?;
        if !body.is_empty() {
            stream.send_data(body, true).map_err(|e| e.to_string())?;
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), resp).await.map_err(|_| "no answer".to_string())?;
        resp.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
    })
}

#[test]
fn http2_content_length_that_is_empty_repeated_or_wrong_never_goes_upstream_as_it_came() {
    let (up, gw) = setup();
    let uri = format!("http://{}/opi/rest/outscan/targets?APPTOKEN={ADMIN}", gw.addr);
    let post = |lengths: &[&str]| {
        let mut b = http::Request::post(uri.as_str());
        for l in lengths {
            b = b.header("content-length", *l);
        }
        b.body(()).unwrap()
    };
    // Empty, repeated, not a number: refused (by the gateway with 400, or
    // by the HTTP/2 layer resetting the stream); never forwarded.
    for lengths in [&[""][..], &["5", "5"], &["5", "6"], &["+5"]] {
        let got = h2_request(&gw, post(lengths), b"hello");
        assert!(got.as_ref().is_err() || got == Ok(400), "content-length {lengths:?}: {got:?}");
    }
    assert_eq!(up.count(), 0, "{:?}", up.requests());
    // Disagreeing with the DATA: the upstream never gets a request whose
    // framing disagrees with its body.
    let got = h2_request(&gw, post(&["10"]), b"hello");
    assert!(got != Ok(200), "a body shorter than its content-length was answered 200: {got:?}");
    for r in up.requests() {
        let cl = r.headers_named("content-length");
        let te = r.headers_named("transfer-encoding");
        assert!(cl.len() + te.len() == 1, "framing sent upstream: {:?}", r.headers);
        if let [cl] = cl[..] {
            assert_eq!(cl.parse::<usize>().ok(), Some(r.body.len()), "{r:?}");
        }
    }
    // A well-framed HTTP/2 POST goes through with one valid length.
    assert_eq!(h2_request(&gw, post(&["5"]), b"hello"), Ok(200));
    let last = up.last();
    assert_eq!(last.headers_named("content-length"), vec!["5"], "{:?}", last.headers);
    assert_eq!(last.body, b"hello");
}
