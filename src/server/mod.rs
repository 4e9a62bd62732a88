//! Listeners: TCP accept, optional TLS (rustls, [`tls`]), HTTP/1.1 and
//! HTTP/2, the connection limit, every connection under its deadlines
//! ([`conn`]), and graceful shutdown. Knows nothing of tokens: it runs
//! whatever service it is given.

pub mod conn;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::wire::{self, HeadWatch};
use conn::{Activity, Deadlines, Tracked};
pub use tls::{tls_acceptor, TlsSetupError};

/// How long an accept error (out of file descriptors, say) stops accepting:
/// the pending connection stays in the backlog, and the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves connections from `listener` until `shutdown` resolves, then lets
/// in-flight requests finish for up to `limits.shutdown_grace`.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    make_service: M,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(SocketAddr) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The longest HTTP/1 head hyper takes (its read buffer), and so the
    // longest the connection's `wire::HeadWatch` follows.
    let max_head = limits.max_header_bytes.max(8192);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Bounds each later head, and how long an idle keep-alive connection
        // waits for its next request: hyper starts this timer as soon as it
        // waits for a head. The first head's deadline counts from accept
        // (`conn::drive`).
        .header_read_timeout(limits.header_read_timeout.min(limits.keepalive_idle_timeout))
        .max_buf_size(max_head)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Pings find a peer that is gone; they do not keep a connection
        // open (`conn::drive` closes one with no open stream).
        .keep_alive_interval(Some(limits.keepalive_idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    // Every connection holds a permit; all of them back means all are done.
    let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX >> 3);
    let slots = Arc::new(Semaphore::new(max as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);

    let mut failing_since: Option<Instant> = None;
    loop {
        // Past max_connections, stop accepting: further clients wait in the
        // kernel's backlog instead of being accepted and starved.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Logged once per run of failures, not per retry.
                    if failing_since.is_none() {
                        tracing::warn!(error = %e, "accept failed; retrying every 50 ms");
                        failing_since = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Some(since) = failing_since.take() {
            tracing::info!(failed_ms = since.elapsed().as_millis() as u64, "accepting again");
        }
        let accepted = Instant::now();
        let _ = stream.set_nodelay(true);
        let activity = Activity::new(accepted);
        // What hyper's HTTP/1 parser forgets of each head, noted on the way
        // in and handed to the request (`wire`).
        let notes = wire::notes();
        let service = TowerToHyperService::new(Tracked::new(make_service(peer), activity.clone(), notes.clone()));
        let deadlines = Deadlines {
            first_head_by: accepted + limits.header_read_timeout,
            idle: limits.keepalive_idle_timeout,
            close_grace: limits.header_read_timeout,
        };
        let builder = builder.clone();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    connection(&builder, HeadWatch::new(stream, notes, max_head), service, &activity, deadlines, stop)
                        .await
                }
                Some(acceptor) => {
                    // The handshake counts against the first head's deadline.
                    let handshake = tokio::time::timeout_at(deadlines.first_head_by, acceptor.accept(stream));
                    let Ok(Ok(tls_stream)) = handshake.await else { return };
                    let io = HeadWatch::new(tls_stream, notes, max_head);
                    connection(&builder, io, service, &activity, deadlines, stop).await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tokio::select! {
        _ = slots.acquire_many(max) => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing the connections still open");
        }
    }
}

/// Serves one connection, HTTP/1.1 or HTTP/2 as the client speaks, under
/// its deadlines.
async fn connection<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: TowerToHyperService<Tracked<S>>,
    activity: &Activity,
    deadlines: Deadlines,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    conn::drive(conn, |c| c.graceful_shutdown(), activity, deadlines, stop).await;
}
