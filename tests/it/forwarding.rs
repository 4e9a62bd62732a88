//! interface.md §6 through the real gateway: what reaches the upstream, byte
//! for byte, and what the client gets back.

use std::time::Duration;

use crate::harness::*;

fn setup() -> (MockUpstream, Gateway) {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    (up, gw)
}

/// Every APPTOKEN value the upstream saw, in query and body, any spelling.
fn apptokens(r: &Recorded) -> Vec<String> {
    let mut out = Vec::new();
    for s in [r.query().as_bytes(), &r.body[..]] {
        for piece in s.split(|&b| b == b'&') {
            let (name, value) = match piece.iter().position(|&b| b == b'=') {
                Some(i) => (&piece[..i], &piece[i + 1..]),
                None => (piece, &b""[..]),
            };
            let name = String::from_utf8_lossy(name).replace("%41", "A").replace("%61", "a");
            if name.eq_ignore_ascii_case("apptoken") {
                out.push(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    out
}

#[test]
fn the_callers_token_is_replaced_by_the_upstream_credential_everywhere() {
    let (up, gw) = setup();
    let cases = [
        gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA")),
        gw.get(&format!("/opi/XMLAPI?ACTION=TARGETDATA&apptoken={RO}")),
        gw.get(&format!("/opi/XMLAPI?%41PPTOKEN={RO}&APPTOKEN={RO}")),
        gw.post_form(&format!("/opi/XMLAPI?APPTOKEN={RO}"), &format!("ACTION=TARGETDATA&APPTOKEN={RO}")),
        gw.post_form("/opi/XMLAPI", &format!("apptoken={RO}&ACTION=TARGETDATA")),
        gw.get(&format!("/opi/rest/outscan/targets?APPTOKEN={RO}")),
    ];
    for r in &cases {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let seen = up.requests();
    assert_eq!(seen.len(), cases.len());
    for r in &seen {
        assert_eq!(apptokens(r), vec![UPSTREAM_TOKEN.to_string()], "{r:?}");
        let raw = format!("{r:?}");
        assert!(!raw.contains(RO), "the caller's token reached the upstream: {raw}");
    }
}

#[test]
fn every_other_byte_of_query_and_body_is_kept() {
    let (up, gw) = setup();
    let q = "ACTION=TARGETDATA&NAME=a%20b+c&EMPTY=&&FLAG&X=%7e%7E&Y=%zz";
    let r = gw.get(&format!("/opi/XMLAPI?{q}&APPTOKEN={RO}"));
    assert_eq!(r.status, 200);
    assert_eq!(up.last().query(), format!("APPTOKEN={UPSTREAM_TOKEN}&{q}"));
    let body = "ACTION=TARGETDATA&XMLDATA=%3CTARGET%3E1.2.3.4%3C%2FTARGET%3E&&Z=%zz&LIMIT=1";
    let r = gw.post_form(&format!("/opi/XMLAPI?APPTOKEN={RO}"), &format!("{body}&APPTOKEN={RO}"));
    assert_eq!(r.status, 200);
    let last = up.last();
    assert_eq!(String::from_utf8_lossy(&last.body), body);
    // The framing is rebuilt for the new body.
    assert_eq!(last.header("content-length"), Some(body.len().to_string().as_str()));
    assert_eq!(last.header("transfer-encoding"), None);
    assert_eq!(last.query(), format!("APPTOKEN={UPSTREAM_TOKEN}"));
}

#[test]
fn without_an_upstream_credential_no_apptoken_goes_upstream() {
    let up = MockUpstream::start();
    let gw = Gateway::builder(&up.url(), &standard_tokens().render()).no_upstream_token().start();
    assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA")).status, 200);
    assert_eq!(up.last().target, "/opi/XMLAPI?ACTION=TARGETDATA");
}

#[test]
fn a_non_canonical_path_is_forwarded_as_it_was_matched() {
    let (up, gw) = setup();
    for raw in ["/opi/./XMLAPI", "/opi//XMLAPI", "/opi/x/../XMLAPI", "/opi/%58MLAPI", "/opi/XMLAPI;jsessionid=1"] {
        let r = gw.get(&format!("{raw}?APPTOKEN={RO}&ACTION=TARGETDATA"));
        assert_eq!(r.status, 200, "{raw}");
        assert_eq!(up.last().path(), "/opi/XMLAPI", "{raw}");
    }
}

#[test]
fn hop_by_hop_headers_are_dropped_and_forwarding_headers_set() {
    let (up, gw) = setup();
    let r = gw.send(
        "GET",
        &format!("/opi/XMLAPI?APPTOKEN={RO}"),
        &[
            ("Connection", "close, X-Drop-Me"),
            ("X-Drop-Me", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic eA=="),
            ("TE", "trailers"),
            ("Upgrade", "websocket"),
            ("X-Forwarded-For", "203.0.113.66"),
            ("X-Keep-Me", "yes"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let last = up.last();
    for h in ["x-drop-me", "keep-alive", "proxy-authorization", "te", "upgrade"] {
        assert_eq!(last.header(h), None, "{h} reached the upstream");
    }
    assert_eq!(last.header("x-keep-me"), Some("yes"));
    // A GET without a body goes up without one (no chunked framing).
    assert_eq!(last.header("transfer-encoding"), None);
    assert!(last.body.is_empty());
    assert_eq!(last.headers_named("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(last.header("host"), Some(up.addr.to_string().as_str()));
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn large_answers_and_uploads_stream_through_without_sitting_in_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let up = MockUpstream::start_with(Reply::Stream(SIZE));
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    // Read the download with a streaming reader: count bytes, keep none.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    write!(s, "GET /opi/XMLAPI?APPTOKEN={RO}&ACTION=REPORTTARGETDATA HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(total > SIZE, "got {total} bytes");
    let peak = peak_rss_kib(gw.pid());
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB: the answer was buffered");

    // An opaque upload streams too (admin may PUT anything).
    up.set_reply(Reply::Ok);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    const UP: usize = 64 * 1024 * 1024;
    write!(
        s,
        "PUT /opi/rest/upload?APPTOKEN={ADMIN} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {UP}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'y'; 1 << 20];
    for _ in 0..UP / chunk.len() {
        s.write_all(&chunk).unwrap();
    }
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.last().body.len(), UP);
    let peak = peak_rss_kib(gw.pid());
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB: the upload was buffered");
}

#[test]
fn upstream_down_is_502_and_slow_is_504() {
    // A port with nothing listening: bind, note, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gw = Gateway::start(&format!("http://{dead}"), &standard_tokens().render());
    let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
    assert_eq!((r.status, r.errorcode().as_deref()), (502, Some("UPSTREAM_UNREACHABLE")));
    // Refusals still answer without the upstream.
    assert_eq!(gw.get("/opi/XMLAPI").status, 401);
    let m = request(gw.admin, "GET", "/metrics", &[], b"").text();
    assert!(m.contains("tokengate_upstream_failures_total{kind=\"unreachable\"} 1\n"), "{m}");

    let up = MockUpstream::start_with(Reply::Delay(Duration::from_secs(3)));
    let gw = Gateway::builder(&up.url(), &standard_tokens().render()).upstream_timeout("500ms").start();
    let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA&JSON=1"));
    assert_eq!(r.status, 504);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["data"]["errorCode"], "UPSTREAM_TIMEOUT");
}

#[test]
fn upstream_status_and_body_come_back_unchanged() {
    let up = MockUpstream::start_with(Reply::Status(500, "<RESPONSE><SUCCESS>false</SUCCESS></RESPONSE>"));
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "<RESPONSE><SUCCESS>false</SUCCESS></RESPONSE>");
}

#[test]
fn tokens_never_appear_in_logs() {
    let (_up, gw) = setup();
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={UNKNOWN}&ACTION=TARGETDATA"));
    gw.post_form("/opi/XMLAPI", &format!("APPTOKEN={ADMIN}&ACTION=X"));
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&APPTOKEN={ADMIN}"));
    gw.wait_log("the fourth access line", |l| l.contains("AMBIGUOUS_REQUEST"));
    // A client that wrote `&` for `?`, or `%3F`: the token is in the path.
    gw.get(&format!("/opi/XMLAPI&APPTOKEN={RO}&ACTION=TARGETDATA"));
    gw.get(&format!("/opi/XMLAPI%3FAPPTOKEN={ADMIN}"));
    gw.wait_log("the path's access lines", |l| l.matches("[REDACTED]").count() == 1 && l.contains("TOKEN_MISSING"));
    poll(Duration::from_secs(5), || {
        (gw.log().iter().filter(|l| l.contains("path=/opi/[REDACTED]")).count() >= 2).then_some(())
    })
    .expect("two access lines with the path cut");
    let log = gw.log().join("\n");
    for secret in [RO, ADMIN, UNKNOWN, UPSTREAM_TOKEN] {
        assert!(!log.contains(secret), "a token is in the log:\n{log}");
        assert!(!log.contains(&sha256_hex(secret)), "a digest is in the log:\n{log}");
    }
    assert!(log.contains("token=reader"), "{log}");
}

#[test]
fn access_log_has_one_line_per_request_with_its_fields() {
    let (_up, gw) = setup();
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA&SECRET=hide"));
    let line = gw.wait_log("access line", |l| l.contains("tokengate::access"));
    for field in [
        "client=127.0.0.1",
        "token=reader",
        "method=GET",
        "path=/opi/XMLAPI",
        "action=TARGETDATA",
        "decision=allowed",
        "reason=ok",
        "upstream_status=200",
        "bytes=",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(!line.contains("SECRET") && !line.contains("hide"), "the query was logged: {line}");
}

#[test]
fn json_access_log_has_typed_fields() {
    let up = MockUpstream::start();
    let gw = Gateway::builder(&up.url(), &standard_tokens().render()).extra("[log]\nformat = \"json\"").start();
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGET%0ADATA"));
    let line = gw.wait_log("access line", |l| l.contains("tokengate::access"));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["token"], "reader");
    assert_eq!(v["decision"], "denied");
    assert_eq!(v["reason"], "ACTION_NOT_ALLOWED");
    // A control character in the ACTION cannot break the line or forge a field.
    assert_eq!(v["action"], "TARGET?DATA");
    assert_eq!(v["upstream_status"], 0);
    assert!(v["duration_ms"].is_f64(), "{line}");
    assert!(v["bytes"].is_u64(), "{line}");
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits() {
    let up = MockUpstream::start_with(Reply::Delay(Duration::from_millis(800)));
    let mut gw = Gateway::start(&up.url(), &standard_tokens().render());
    let addr = gw.addr;
    let in_flight = std::thread::spawn(move || {
        request(addr, "GET", &format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"), &[], b"")
    });
    // Wait until the request has reached the upstream, then ask to stop.
    assert!(poll(Duration::from_secs(5), || (up.count() == 1).then_some(())).is_some());
    let ok = std::process::Command::new("kill").args(["-TERM", &gw.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200, "the request in flight was cut off");
    let status = gw.wait_exit(Duration::from_secs(10)).expect("the gateway did not exit");
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_upstream_credential_and_session_never_come_back_to_the_caller() {
    let up = MockUpstream::start_with(Reply::Redirect);
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    let r = gw.get(&format!("/opi?APPTOKEN={ADMIN}&X=1"));
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap();
    assert!(up.last().query().contains(UPSTREAM_TOKEN), "the credential went upstream");
    assert!(!location.contains(UPSTREAM_TOKEN), "the credential came back: {location}");
    assert!(location.contains("APPTOKEN=REDACTED&X=1"), "{location}");
    assert!(r.header("set-cookie").is_none(), "the upstream session came back");
}

#[test]
fn spoofable_forwarding_headers_and_cookies_do_not_go_upstream() {
    let (up, gw) = setup();
    let r = gw.send(
        "GET",
        &format!("/opi/XMLAPI?APPTOKEN={RO}"),
        &[
            ("Forwarded", "for=203.0.113.66"),
            ("X-Real-IP", "203.0.113.66"),
            ("X-Forwarded-Host", "evil"),
            ("X-Forwarded-Proto", "https"),
            ("Cookie", "JSESSIONID=stolen"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let last = up.last();
    for h in ["forwarded", "x-real-ip", "x-forwarded-host", "x-forwarded-proto", "cookie"] {
        assert_eq!(last.header(h), None, "{h} reached the upstream");
    }
}

#[test]
fn on_one_cpu_the_single_threaded_scheduler_does_the_whole_job() {
    let up = MockUpstream::start();
    let mut gw = Gateway::builder(&up.url(), &standard_tokens().render()).one_cpu().start();
    gw.wait_log("the scheduler choice", |l| l.contains("scheduler=current_thread"));
    assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA")).status, 200);
    assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=REMOVETARGETDATA")).status, 403);
    let r = gw.post_form(&format!("/opi/XMLAPI?APPTOKEN={RO}"), "ACTION=SCANNERDATA&LIMIT=1");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, b"ACTION=SCANNERDATA&LIMIT=1");
    // Reloads run beside the requests on the blocking pool.
    let tokens = standard_tokens().token(TokenSpec::new("late", UNKNOWN, "read-only")).render();
    let tmp = gw.path("tokens.toml.new");
    std::fs::write(&tmp, tokens).unwrap();
    std::fs::rename(&tmp, gw.path("tokens.toml")).unwrap();
    let ok = poll(Duration::from_secs(5), || {
        (gw.get(&format!("/opi/XMLAPI?APPTOKEN={UNKNOWN}")).status == 200).then_some(())
    });
    assert!(ok.is_some(), "the reload did not apply");
    let stopped = std::process::Command::new("kill").args(["-TERM", &gw.pid().to_string()]).status().unwrap();
    assert!(stopped.success());
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
}

#[test]
fn upstream_connections_are_kept_alive_and_shared_by_client_connections() {
    let (up, gw) = setup();
    // Twenty clients one after another, each on its own connection.
    for _ in 0..20 {
        let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.count(), 20);
    // One kept-alive connection carried them all (plus, at most, the one the
    // readiness probe opened and closed).
    assert!(up.connections() <= 2, "{} upstream connections for 20 requests", up.connections());
}

#[test]
fn a_download_the_client_abandons_does_not_spoil_the_connection_for_the_next() {
    use std::io::{Read, Write};
    let up = MockUpstream::start_with(Reply::Stream(64 * 1024 * 1024));
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    write!(s, "GET /opi/XMLAPI?APPTOKEN={RO}&ACTION=REPORTTARGETDATA HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    up.set_reply(Reply::Ok);
    for _ in 0..3 {
        let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), OK_BODY);
    }
    assert_eq!(up.count(), 4);
}

#[test]
fn an_upstream_that_closes_idle_connections_is_reconnected_without_an_error() {
    use std::io::{Read, Write};
    // A scanner that closes each connection shortly after answering on it,
    // without saying so (as a keep-alive timeout does).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{OK_BODY}", OK_BODY.len());
                std::thread::sleep(Duration::from_millis(100));
            });
        }
    });
    let gw = Gateway::start(&format!("http://{addr}"), &standard_tokens().render());
    for i in 0..4 {
        let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 4);
}

#[test]
fn an_upload_the_upstream_answered_early_does_not_hold_up_the_next_request() {
    use std::io::{Read, Write};
    // A scanner that refuses a PUT as soon as it has its head, without
    // reading the body, and keeps the connection open; GETs it answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            std::thread::spawn(move || loop {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => head.push(b[0]),
                    }
                }
                if head.starts_with(b"PUT") {
                    let _ = c.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n");
                    // Holds the connection and never reads the body.
                    std::thread::sleep(Duration::from_secs(30));
                    return;
                }
                let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{OK_BODY}", OK_BODY.len());
            });
        }
    });
    let gw = Gateway::builder(&format!("http://{addr}"), &standard_tokens().render()).upstream_timeout("8s").start();
    // Warm the pool with one connection.
    assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA")).status, 200);
    // An upload that stalls after its first bytes; the scanner answers 413.
    let mut up = std::net::TcpStream::connect(gw.addr).unwrap();
    write!(
        up,
        "PUT /opi/rest/upload?APPTOKEN={ADMIN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    up.write_all(&[b'y'; 1000]).unwrap();
    let mut answer = [0u8; 64];
    let n = up.read(&mut answer).unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 413"), "{}", String::from_utf8_lossy(&answer[..n]));
    // The next requests do not wait for that connection to be free (one
    // that did would get 504 once the upstream timeout is over).
    for _ in 0..3 {
        let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    drop(up);
}

#[test]
fn a_client_connection_is_kept_alive_and_an_oversized_head_gets_431() {
    use std::io::{BufRead, BufReader, Read, Write};
    let (up, gw) = setup();
    // Two requests on one connection, each answered in full.
    let s = std::net::TcpStream::connect(gw.addr).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    for _ in 0..2 {
        write!(w, "GET /opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut len = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        assert_eq!(body, OK_BODY.as_bytes());
    }
    assert_eq!(up.count(), 2);
    // A head beyond limits.max_header_bytes (the default 16 KiB).
    let big = "a".repeat(40 * 1024);
    let r = request(gw.addr, "GET", &format!("/opi/XMLAPI?APPTOKEN={RO}"), &[("x-big", big.as_str())], b"");
    assert_eq!(r.status, 431);
    assert_eq!(up.count(), 2, "an oversized request reached the upstream");
}
