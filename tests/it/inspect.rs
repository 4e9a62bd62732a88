//! The inspection budget (interface.md §3 `inspect_body_bytes`, issue:
//! "requests nobody is known for cannot hold it"): form bodies read to
//! decide are held to rooms and shares, and to a deadline for the whole
//! read, so that trickling bodies without a known token cannot keep valid
//! clients' forms from being served.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::harness::upstream::runtime;
use crate::harness::*;

const FORM: &str = "application/x-www-form-urlencoded";

/// A POST from a chosen loopback address (127.0.0.2 is another client).
fn post_from(from: &str, to: SocketAddr, target: &str, body: &str) -> Response {
    use std::io::{Read, Write};
    let mut s = connect_from(from, to);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: {FORM}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    crate::harness::client::parse(&buf).unwrap_or_else(|| panic!("{:?}", String::from_utf8_lossy(&buf)))
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    // std cannot bind before connecting; tokio's TcpSocket can.
    runtime().block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let s = sock.connect(to).await.unwrap().into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

#[test]
fn trickling_forms_nobody_is_known_for_cannot_keep_valid_forms_from_being_served() {
    let up = MockUpstream::start();
    let gw =
        Gateway::builder(&up.url(), &standard_tokens().render()).extra("[limits]\nbody_idle_timeout = \"4s\"").start();
    let addr = gw.addr;
    // One HTTP/2 connection, 64 streams, each announcing a 1 MiB form and
    // sending one byte: no APPTOKEN anywhere.
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    let attacker = runtime().spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::Builder::new().initial_window_size(1 << 20).handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut streams = Vec::new();
        for _ in 0..64 {
            let mut client = client.clone().ready().await.unwrap();
            let req = http::Request::post(format!("http://{addr}/opi/XMLAPI"))
                .header("content-type", FORM)
                .header("content-length", "1048576")
                .body(())
                .unwrap();
            let (resp, mut stream) = client.send_request(req, false).unwrap();
            stream.send_data(Bytes::from_static(b"A"), false).unwrap();
            streams.push(stream);
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(15), resp).await;
                let _ = tx.send(r.ok().and_then(|r| r.ok()).map(|r| r.status().as_u16()));
            });
        }
        // The streams stay open (unfinished) until the gateway ends them.
        tokio::time::sleep(Duration::from_secs(15)).await;
        drop(streams);
    });
    // The first answers: the streams beyond the address's share waited a
    // second for room and got 503. The share is full now.
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first, Some(503), "a stream beyond the share was not refused");
    let busy = gw.send(
        "POST",
        "/opi/XMLAPI?JSON=1",
        &[("Content-Type", FORM), ("Content-Length", "1048576")],
        format!("APPTOKEN={RO}&ACTION=TARGETDATA").as_bytes(),
    );
    assert_eq!(busy.status, 503, "{}", busy.text());
    let v: serde_json::Value = serde_json::from_slice(&busy.body).unwrap();
    assert_eq!(v["data"]["errorCode"], "GATEWAY_BUSY", "the 503 answers in JSON with JSON=1");
    // A valid client's form, APPTOKEN in the query as the common clients
    // send it, from the same address: served from its token's own room.
    let r = gw.post_form(&format!("/opi/XMLAPI?APPTOKEN={RO}"), "ACTION=TARGETDATA");
    assert_eq!(r.status, 200, "{}", r.text());
    // A valid client with APPTOKEN in the body, from another address: its
    // own share of the shared room.
    let r = post_from("127.0.0.2", gw.addr, "/opi/XMLAPI", &format!("APPTOKEN={RO}&ACTION=TARGETDATA"));
    assert_eq!(r.status, 200, "{}", r.text());
    // Every trickling stream is answered (refused, or cut off when the
    // whole-read deadline of 4 s passes); none is held for longer.
    let mut statuses = vec![first];
    while statuses.len() < 64 {
        statuses.push(rx.recv_timeout(Duration::from_secs(15)).expect("a trickling stream was never answered"));
    }
    let took = started.elapsed();
    attacker.abort();
    assert!(took < Duration::from_secs(12), "the trickling bodies were held for {took:?}");
    assert!(
        statuses.iter().all(|s| matches!(s, Some(400 | 503))),
        "every trickling stream is cut off or refused: {statuses:?}"
    );
    assert_eq!(up.count(), 2, "only the two valid forms reached the upstream");
}
