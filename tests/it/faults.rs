//! What the gateway does when things around it fail (issue 8 point 8),
//! each bounded in time: an upstream that is blackholed, resets in the
//! middle of an answer or answers garbage; running out of file descriptors;
//! and graceful shutdown with connections that are idle or silent. (A
//! refused upstream is `forwarding::upstream_down_is_502_and_slow_is_504`;
//! a request in flight at SIGTERM is
//! `forwarding::sigterm_lets_the_request_in_flight_finish_then_exits`.)
//! All traffic stays on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::h2client as h2c;
use crate::harness::*;

const ALLOWED: &str =
    "/opi/XMLAPI?APPTOKEN=A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1&ACTION=TARGETDATA";

/// A raw upstream on 127.0.0.1:0: each accepted connection is handed to
/// `serve` on its own thread, with its number (0 for the first).
fn raw_upstream(serve: impl Fn(TcpStream, usize) + Send + Sync + 'static) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let serve = serve.clone();
            std::thread::spawn(move || serve(c, n));
        }
    });
    (url, accepted)
}

/// Reads a request head (the readiness probe's or a request's).
fn read_head(c: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(_) => head.push(b[0]),
        }
    }
    Some(head)
}

fn answer_ok(c: &mut TcpStream) {
    let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{OK_BODY}", OK_BODY.len());
}

fn is_probe(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).contains("tokengate-readiness-probe")
}

#[test]
fn a_blackholed_upstream_is_504_within_the_timeout_and_the_gateway_keeps_answering() {
    // Accepts every connection and never reads or answers on it (a
    // firewall that drops the answers looks the same to the gateway).
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    let (url, accepted) = raw_upstream(move |c, _| keep.lock().unwrap().push(c));
    let gw = Gateway::builder(&url, &standard_tokens().render()).upstream_timeout("1s").start();
    for _ in 0..2 {
        let start = Instant::now();
        let r = gw.get(ALLOWED);
        assert_eq!((r.status, r.errorcode().as_deref()), (504, Some("UPSTREAM_TIMEOUT")));
        assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    }
    // Refusals never wait for the upstream.
    let start = Instant::now();
    assert_eq!(gw.get("/opi/XMLAPI?ACTION=TARGETDATA").status, 401);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(accepted.load(Ordering::SeqCst) >= 2);
    let m = request(gw.admin, "GET", "/metrics", &[], b"").text();
    assert!(m.contains("tokengate_upstream_failures_total{kind=\"timeout\"} 2\n"), "{m}");
}

#[test]
fn an_upstream_reset_in_the_middle_of_an_answer_cuts_the_clients_answer_visibly() {
    const LEN: usize = 200_000;
    // The first request's connection: half the answer, then a reset (the
    // socket is closed with unread bytes, which makes Linux send RST).
    // Later connections answer properly.
    let (url, _) = raw_upstream(|mut c, _| loop {
        let Some(head) = read_head(&mut c) else { return };
        if is_probe(&head) || !String::from_utf8_lossy(&head).contains("ACTION=REPORTTARGETDATA") {
            answer_ok(&mut c);
            continue;
        }
        let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {LEN}\r\n\r\n");
        let _ = c.write_all(&vec![b'r'; LEN / 2]);
        let _ = c.flush();
        // Let the request's body arrive, unread: closing a socket with
        // unread bytes makes Linux send RST instead of FIN.
        std::thread::sleep(Duration::from_millis(200));
        drop(c);
        return;
    });
    let gw = Gateway::start(&url, &standard_tokens().render());
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A body (not a form: it streams through) that the upstream never reads.
    let target = format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=REPORTTARGETDATA");
    write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[b'b'; 1000]).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got[..got.len().min(200)]).into_owned();
    assert!(got.starts_with(b"HTTP/1.1 200"), "{text}");
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let body = &got[head_end..];
    if head.contains("transfer-encoding: chunked") {
        assert!(!body.ends_with(b"0\r\n\r\n"), "a cut answer ended like a whole one");
    } else {
        assert!(head.contains(&format!("content-length: {LEN}")), "{head}");
        assert!(body.len() < LEN, "the client got {} of {LEN} bytes", body.len());
    }
    // The gateway goes on; the next request gets a whole answer.
    let r = gw.get(ALLOWED);
    assert_eq!((r.status, r.text().as_str()), (200, OK_BODY));
}

#[test]
fn an_upstream_that_answers_garbage_is_502_and_the_gateway_goes_on() {
    let (url, _) = raw_upstream(|mut c, _| {
        let Some(head) = read_head(&mut c) else { return };
        if is_probe(&head) {
            answer_ok(&mut c);
            return;
        }
        let _ = c.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\x00\xff\xfe garbage\r\n\r\n");
        std::thread::sleep(Duration::from_secs(2));
    });
    let gw = Gateway::start(&url, &standard_tokens().render());
    for _ in 0..2 {
        let start = Instant::now();
        let r = gw.get(ALLOWED);
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.errorcode().as_deref(), Some("UPSTREAM_UNREACHABLE"));
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    }
    assert_eq!(gw.get("/opi/XMLAPI").status, 401);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// User plus system CPU time of `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_file_descriptors_the_gateway_neither_exits_nor_spins_and_serves_again() {
    let up = MockUpstream::start();
    let mut gw = Gateway::start(&up.url(), &standard_tokens().render());
    assert_eq!(gw.get(ALLOWED).status, 200);
    let pid = gw.pid();
    // Room for a dozen more descriptors, then none.
    let limit = open_fds(pid) + 12;
    let ok = std::process::Command::new("prlimit")
        .args([format!("--pid={pid}"), format!("--nofile={limit}:{limit}")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(ok.success());
    let clients: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(gw.addr).unwrap()).collect();
    gw.wait_log("the accept failure", |l| l.contains("accept failed") && l.contains("open files"));
    // Out of descriptors with 28 connections waiting: about one accept
    // attempt every 50 ms, not a busy loop (well under a CPU).
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(1));
    let (used, took) = (cpu_ticks(pid) - c0, t0.elapsed());
    assert!(used * 10 < took.as_millis() as u64 / 2, "{used} ticks of CPU in {took:?}: spinning");
    assert!(gw.wait_exit(Duration::ZERO).is_none(), "the gateway exited");
    // The clients go away; the gateway accepts again and serves.
    drop(clients);
    let served = poll(Duration::from_secs(15), || (gw.get(ALLOWED).status == 200).then_some(()));
    assert!(served.is_some(), "not serving again:\n{}", gw.log().join("\n"));
    gw.wait_log("accepting again", |l| l.contains("accepting again"));
    assert_eq!(up.last().query(), format!("APPTOKEN={UPSTREAM_TOKEN}&ACTION=TARGETDATA"));
}

#[test]
fn sigterm_does_not_wait_for_idle_or_silent_connections() {
    let up = MockUpstream::start();
    let mut gw = Gateway::start(&up.url(), &standard_tokens().render());
    // A kept-alive HTTP/1.1 connection after one answer, an HTTP/2 one
    // after one answer, and a connection that never sent anything.
    let mut kept = TcpStream::connect(gw.addr).unwrap();
    write!(kept, "GET {ALLOWED} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut b = [0u8; 12];
    kept.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"HTTP/1.1 200");
    let mut h2c = h2c::connect(gw.addr);
    assert_eq!(h2c.get(ALLOWED, &gw.addr.to_string()).unwrap().0, 200);
    let _silent = TcpStream::connect(gw.addr).unwrap();
    let start = Instant::now();
    let ok = std::process::Command::new("kill").args(["-TERM", &gw.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    // shutdown_grace is 30 s: an exit well before shows nothing waited for it.
    let status = gw.wait_exit(Duration::from_secs(10)).expect("the gateway did not exit within 10 s");
    assert!(status.success(), "{status:?}");
    assert!(h2c.wait_over(Duration::from_secs(1)).is_some(), "the HTTP/2 connection was not closed");
    assert!(!gw.log().iter().any(|l| l.contains("grace period over")), "{:?} {:?}", start.elapsed(), gw.log());
}
