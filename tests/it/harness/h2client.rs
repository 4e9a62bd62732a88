//! A real HTTP/2 client (the `h2` crate, prior knowledge, no TLS) for the
//! tests: its connection runs on the harness's runtime, so a test can send
//! requests, ping, and see when the gateway ends the connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;

use super::upstream::runtime;

/// One HTTP/2 connection to the gateway.
pub struct H2Conn {
    pub send: SendRequest<Bytes>,
    /// Resolves when the connection is over (the gateway closed it, or a GOAWAY).
    done: tokio::sync::oneshot::Receiver<Result<(), String>>,
    ping: Option<h2::PingPong>,
    over: bool,
}

/// Connects and sends the HTTP/2 preface and SETTINGS; no request yet.
pub fn connect(addr: SocketAddr) -> H2Conn {
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (send, mut conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let ping = conn.ping_pong();
        let (tx, done) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(conn.await.map_err(|e| e.to_string()));
        });
        H2Conn { send, done, ping, over: false }
    })
}

impl H2Conn {
    /// One GET; the status and the whole body.
    pub fn get(&mut self, target: &str, authority: &str) -> Result<(u16, Vec<u8>), String> {
        let req = http::Request::builder().method("GET").uri(format!("http://{authority}{target}")).body(()).unwrap();
        let send = self.send.clone();
        runtime().block_on(async move {
            let mut send = send.ready().await.map_err(|e| e.to_string())?;
            let (resp, _) = send.send_request(req, true).map_err(|e| e.to_string())?;
            let resp = resp.await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut out = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let _ = body.flow_control().release_capacity(chunk.len());
                out.extend_from_slice(&chunk);
            }
            Ok((status, out))
        })
    }

    /// Sends a PING and waits for its PONG; false when none came.
    pub fn ping(&mut self) -> bool {
        let Some(p) = self.ping.as_mut() else { return false };
        runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(2), p.ping(h2::Ping::opaque())).await.is_ok_and(|r| r.is_ok())
        })
    }

    /// Whether the connection has ended.
    pub fn is_over(&mut self) -> bool {
        self.over = self.over || !matches!(self.done.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty));
        self.over
    }

    /// Waits for the connection to end, at most `within`; how long it took.
    pub fn wait_over(&mut self, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        if self.over {
            return Some(Duration::ZERO);
        }
        let done = &mut self.done;
        let r = runtime().block_on(async { tokio::time::timeout(within, done).await.ok() }).map(|_| start.elapsed());
        self.over = r.is_some();
        r
    }
}
