//! Every connection is under a deadline from accept on (issue 8 point 1):
//! a client that has not sent a whole request head within
//! `limits.header_read_timeout` is closed, whatever it sent (nothing, a
//! byte, half an HTTP/2 preface, part of a TLS handshake, a head trickled a
//! byte at a time), and an HTTP/2 connection with no open stream for
//! `limits.keepalive_idle_timeout` is closed even while it answers pings.
//! Timings are only "within the deadline plus a margin".

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::h2client as h2c;
use crate::harness::tls::{client_hello, self_signed, tls_connect};
use crate::harness::*;

/// What the tests allow beyond a deadline (a loaded machine).
const MARGIN: Duration = Duration::from_secs(1);

fn gateway(limits: &str) -> (MockUpstream, Gateway) {
    let up = MockUpstream::start();
    let gw = Gateway::builder(&up.url(), &standard_tokens().render()).extra(&format!("[limits]\n{limits}\n")).start();
    (up, gw)
}

/// Waits until the peer closes `s` (EOF or reset), at most until `by`;
/// anything it sends first is read and ignored. `true` when it closed.
fn closed_by(s: &mut impl Read, tcp: &TcpStream, by: Instant) -> bool {
    let mut b = [0u8; 512];
    loop {
        let left = by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tcp.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn valid_get(addr: SocketAddr) -> Response {
    request(addr, "GET", &format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"), &[], b"")
}

#[test]
fn a_connection_without_a_whole_head_is_closed_at_header_read_timeout() {
    let (up, gw) = gateway("header_read_timeout = \"1s\"");
    let cases: [(&str, &[u8]); 5] = [
        ("silent", b""),
        ("one byte", b"G"),
        ("half an HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        ("a whole HTTP/2 preface and no request", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"),
        ("a head without its end", b"GET /opi/XMLAPI HTTP/1.1\r\nHost: x\r\n"),
    ];
    // All at once: each is closed within the deadline of its own accept.
    let mut open: Vec<_> = cases
        .iter()
        .map(|(what, bytes)| {
            let mut s = TcpStream::connect(gw.addr).unwrap();
            s.write_all(bytes).unwrap();
            (what, Instant::now(), s)
        })
        .collect();
    for (what, at, s) in &mut open {
        let tcp = s.try_clone().unwrap();
        assert!(closed_by(s, &tcp, *at + Duration::from_secs(1) + MARGIN), "{what}: still open");
    }
    assert_eq!(up.count(), 0);
    // The listener still serves.
    assert_eq!(valid_get(gw.addr).status, 200);
}

#[test]
fn a_head_trickled_a_byte_at_a_time_is_closed_at_the_deadline_from_accept() {
    let (_up, gw) = gateway("header_read_timeout = \"1s\"");
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let start = Instant::now();
    // One byte every 100 ms would take 4 s for this head.
    let head = format!("GET /opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut sent = 0;
    for b in head.bytes() {
        if s.write_all(&[b]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_secs(1) + MARGIN {
            break;
        }
    }
    let tcp = s.try_clone().unwrap();
    assert!(closed_by(&mut s, &tcp, start + Duration::from_secs(1) + MARGIN), "still open after {sent} bytes");
    assert!(sent < head.len(), "the whole head went out before the deadline");
}

#[test]
fn max_connections_silent_clients_do_not_keep_a_valid_request_out_for_longer_than_the_deadline() {
    let (_up, gw) = gateway("header_read_timeout = \"1s\"\nmax_connections = 20");
    let silent: Vec<_> = (0..20).map(|_| TcpStream::connect(gw.addr).unwrap()).collect();
    // Give the gateway time to accept them all, so the valid request waits
    // behind them in the backlog.
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let r = valid_get(gw.addr);
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert!(took < Duration::from_secs(1) + MARGIN, "served after {took:?}");
    drop(silent);
}

#[test]
fn an_unfinished_tls_handshake_is_closed_and_the_handshake_counts_against_the_deadline() {
    let up = MockUpstream::start();
    let (cert, key) = self_signed(&["gateway.test"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), &key).unwrap();
    let gw = Gateway::builder(&up.url(), &standard_tokens().render())
        .extra(&format!(
            "[server.tls]\ncert = {:?}\nkey = {:?}\n[limits]\nheader_read_timeout = \"2s\"\n",
            dir.path().join("c.pem"),
            dir.path().join("k.pem")
        ))
        .start();
    let deadline = Duration::from_secs(2);

    // Silent, and half a ClientHello.
    let hello = client_hello(&cert, "gateway.test");
    for (what, bytes) in [("silent", &[][..]), ("half a ClientHello", &hello[..hello.len() / 2])] {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        let at = Instant::now();
        s.write_all(bytes).unwrap();
        let tcp = s.try_clone().unwrap();
        assert!(closed_by(&mut s, &tcp, at + deadline + MARGIN), "{what}: still open");
    }

    // A real client that waits 1.5 s before its handshake, then sends no
    // request: closed 2 s after accept, not 2 s after the handshake.
    let start = Instant::now();
    let mut tls = {
        use rustls_pki_types::ServerName;
        let cfg = crate::harness::tls::client_config(&cert);
        let conn = rustls::ClientConnection::new(cfg, ServerName::try_from("gateway.test").unwrap()).unwrap();
        let tcp = TcpStream::connect(gw.addr).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).expect("the handshake within the deadline completes");
        }
        s
    };
    let tcp = tls.sock.try_clone().unwrap();
    assert!(closed_by(&mut tls, &tcp, start + deadline + MARGIN), "the deadline restarted after the handshake");

    // A handshake and a request in time are served.
    let mut ok = tls_connect(gw.addr, &cert, "gateway.test").unwrap();
    let r =
        crate::harness::tls::https_on(&mut ok, &format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"), "gateway.test");
    assert_eq!(r.status, 200);
}

#[test]
fn an_http2_connection_that_sends_no_request_is_closed_at_the_deadline() {
    let (_up, gw) = gateway("header_read_timeout = \"1s\"");
    let mut c = h2c::connect(gw.addr);
    let took = c.wait_over(Duration::from_secs(1) + MARGIN);
    assert!(took.is_some(), "an HTTP/2 connection with no request stayed open");
}

#[test]
fn an_idle_http2_connection_is_closed_even_while_it_answers_pings() {
    let (up, gw) = gateway("keepalive_idle_timeout = \"1s\"");
    let mut c = h2c::connect(gw.addr);
    let authority = gw.addr.to_string();
    let (status, _) = c.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"), &authority).unwrap();
    assert_eq!(status, 200);
    assert_eq!(up.count(), 1);
    let idle_from = Instant::now();
    // Pings go both ways (the gateway's keep-alive pings are answered by the
    // client's connection task); ours get their PONGs until the end.
    let mut pongs = 0;
    while !c.is_over() && idle_from.elapsed() < Duration::from_secs(1) + MARGIN {
        if c.ping() {
            pongs += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pongs > 0, "no ping was answered");
    let over = c.wait_over((Duration::from_secs(1) + MARGIN).saturating_sub(idle_from.elapsed()));
    assert!(over.is_some(), "the idle HTTP/2 connection is still open after {:?}", idle_from.elapsed());
}

#[test]
fn an_http2_stream_that_is_still_open_keeps_its_connection() {
    let up = MockUpstream::start_with(Reply::Delay(Duration::from_millis(2500)));
    let gw = Gateway::builder(&up.url(), &standard_tokens().render())
        .extra("[limits]\nkeepalive_idle_timeout = \"1s\"\n")
        .start();
    let mut c = h2c::connect(gw.addr);
    // The answer takes 2.5 s, longer than the idle limit: the stream is open.
    let (status, body) = c.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"), &gw.addr.to_string()).unwrap();
    assert_eq!((status, body.as_slice()), (200, OK_BODY.as_bytes()));
    // Then, idle, it is closed.
    assert!(c.wait_over(Duration::from_secs(1) + MARGIN).is_some());
}
