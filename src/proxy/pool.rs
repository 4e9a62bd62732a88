//! Kept-alive HTTP/1.1 connections to the upstream, in a lock-free pool.
//! A request takes an idle connection (or opens one), and its answer's
//! body puts the connection back once the answer has been read to its end,
//! so there are as many connections as requests in flight, as with nginx's
//! `keepalive`. No lock is taken and no map is searched on the way.
//!
//! Why not hyper-util's pooled client: its checkout takes a mutex and hashes
//! a SipHash key per request (a lock shared by every request), and clones
//! its connector per request; replacing it took a proxied GET from about
//! 70,700 to 52,000 user-space instructions (callgrind).
//!
//! Its invariants, each with a test below:
//! 1. A request that was written to a connection is never sent again
//!    (an XMLAPI GET may change things). Only a request the connection
//!    handed back unwritten, because it turned out closed, goes out on
//!    another one.
//! 2. A connection goes back into the pool only once its answer was read
//!    to the end and its request's upload is done; an answer dropped before
//!    its end closes its connection (HTTP/1 cannot skip the rest).
//! 3. An idle connection lives at most [`MAX_IDLE`] (15 s, before Tomcat's
//!    own 20 s), so a request rarely meets one the upstream has closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

/// What is sent upstream: a body the gateway built (a rebuilt form, or
/// none), or the client's, streaming on.
pub type UpstreamBody = Either<Full<Bytes>, UnsyncBoxBody<Bytes, ClientBodyError>>;

/// Why the client's body stopped while it streamed upstream (it broke off,
/// or paused longer than `limits.body_idle_timeout`). A type of its own
/// rather than a boxed error: the connection task must be `Send` for every
/// lifetime of the error it converts, which a `Box<dyn Error>` is not.
#[derive(Debug)]
pub struct ClientBodyError(pub tower_http::BoxError);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client's body: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A connection to the upstream, ready for one request at a time.
pub type Connection = SendRequest<UpstreamBody>;

/// Idle connections kept at most; one more is closed when it is done.
const POOL_SIZE: usize = 1024;
/// How long an idle connection is kept: Tomcat closes its own after 20 s by
/// default, so ours close first.
pub const MAX_IDLE: Duration = Duration::from_secs(15);
/// Attempts on connections that turn out closed before a request is written
/// to one, before a new connection is opened for it.
const STALE_RETRIES: usize = 2;

/// Idle connections, oldest first.
pub struct Pool {
    idle: ArrayQueue<Idle>,
    /// The fewest idle connections seen since the last sweep: that many were
    /// never needed, and the sweep closes them. (The queue hands out the
    /// oldest connection first, so without this a burst's connections would
    /// all stay warm in rotation under light traffic.)
    low_water: AtomicUsize,
    max_idle: Duration,
}

struct Idle {
    conn: Connection,
    since: Instant,
}

/// Why [`Pool::exchange`] got no answer.
#[derive(Debug)]
pub enum ExchangeError<E> {
    /// Opening a connection failed.
    Connect(E),
    /// A new connection closed before it could take the request.
    ClosedAtOnce,
    /// The request failed on its connection (and was not sent again).
    Send(hyper::Error),
}

impl Default for Pool {
    fn default() -> Self {
        Self::with_max_idle(MAX_IDLE)
    }
}

impl Pool {
    /// A pool whose connections live at most `max_idle` while idle.
    pub fn with_max_idle(max_idle: Duration) -> Self {
        Self { idle: ArrayQueue::new(POOL_SIZE), low_water: AtomicUsize::new(0), max_idle }
    }

    /// How many connections are idle now.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }

    /// Puts a connection whose last exchange is over back for the next
    /// request; closes it when the pool is full.
    fn put(&self, conn: Connection) {
        if !conn.is_closed() {
            let _ = self.idle.push(Idle { conn, since: Instant::now() });
        }
    }

    /// An idle connection still open and young enough, if any.
    fn take(&self) -> Option<Connection> {
        while let Some(idle) = self.idle.pop() {
            self.low_water.fetch_min(self.idle.len(), Ordering::Relaxed);
            if !idle.conn.is_closed() && idle.since.elapsed() < self.max_idle {
                return Some(idle.conn);
            }
        }
        self.low_water.store(0, Ordering::Relaxed);
        None
    }

    /// Closes half of the connections that were idle all along since the
    /// last sweep (the fewest idle at any time), so that the pool shrinks to
    /// what the traffic needs, then those idle too long or closed by the
    /// upstream; the others go back.
    pub fn close_stale(&self) {
        let surplus = self.low_water.swap(usize::MAX, Ordering::Relaxed) / 2;
        let mut closed = 0;
        for _ in 0..self.idle.len() {
            let Some(idle) = self.idle.pop() else { break };
            if closed < surplus {
                closed += 1;
                continue;
            }
            if !idle.conn.is_closed() && idle.since.elapsed() < self.max_idle {
                // A request may have filled the pool meanwhile; then this
                // one is closed, which costs a reconnect at most.
                let _ = self.idle.push(idle);
            }
        }
        self.low_water.fetch_min(self.idle.len(), Ordering::Relaxed);
    }

    /// Sweeps with [`Pool::close_stale`] five times per idle lifetime,
    /// forever; spawned once.
    pub async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.max_idle / 5);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.close_stale();
        }
    }

    /// Sends `req` on an idle connection while one turns out usable before
    /// the request is written to it, else on a new one from `connect`.
    /// Returns the answer's head; its body gives the connection back.
    pub async fn exchange<E, F>(
        self: Arc<Self>,
        mut req: Request<UpstreamBody>,
        connect: impl Fn() -> F,
    ) -> Result<Response<AnswerBody>, ExchangeError<E>>
    where
        F: Future<Output = Result<Connection, E>>,
    {
        // A streamed request body may still be going out when the answer is
        // over (an upstream may answer early); such a connection goes back
        // only once it is free.
        let streamed = matches!(req.body(), Either::Right(_));
        let mut stale = 0;
        loop {
            let pooled = if stale < STALE_RETRIES { self.take() } else { None };
            let (mut conn, reused) = match pooled {
                Some(c) => (c, true),
                // Boxed: the handshake's state (a TLS session) is large, and
                // would otherwise be part of every request's future.
                None => (Box::pin(connect()).await.map_err(ExchangeError::Connect)?, false),
            };
            if conn.ready().await.is_err() {
                if reused {
                    stale += 1;
                    continue;
                }
                return Err(ExchangeError::ClosedAtOnce);
            }
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(resp.map(|body| AnswerBody { body, back: Some((conn, pool)), streamed }));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the connection was closed under it (the
                    // upstream may close an idle one at any time). Again.
                    Some(r) if reused => {
                        req = r;
                        stale += 1;
                    }
                    // Written (invariant 1), or a new connection: done.
                    _ => return Err(ExchangeError::Send(e.into_error())),
                },
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The upstream's answer body. Read to its end, it puts its connection
    /// back into the pool; dropped before that, the connection is closed.
    /// Its trailers are not passed on: nothing vets them (they could quote
    /// the credential), and the XMLAPI sends none.
    pub struct AnswerBody {
        #[pin]
        body: Incoming,
        back: Option<(Connection, Arc<Pool>)>,
        streamed: bool,
    }

    impl PinnedDrop for AnswerBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((conn, pool)) = this.back.take() {
                // An answer with no body (HEAD, 204, 304) is never polled.
                if this.body.is_end_stream() {
                    give_back(conn, pool, *this.streamed);
                }
            }
        }
    }
}

/// Puts a connection whose answer has been read back into the pool. One
/// whose request body was streamed may still be sending it: it goes back
/// when that is done (or is closed if it fails), so that no request waits
/// behind another's upload.
fn give_back(mut conn: Connection, pool: Arc<Pool>, streamed: bool) {
    if !streamed || conn.is_ready() {
        pool.put(conn);
    } else if !conn.is_closed() {
        tokio::spawn(async move {
            if conn.ready().await.is_ok() {
                pool.put(conn);
            }
        });
    }
}

impl http_body::Body for AnswerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let res = loop {
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => continue,
                res => break res,
            }
        };
        match &res {
            Poll::Ready(None) => {
                if let Some((conn, pool)) = this.back.take() {
                    give_back(conn, pool, *this.streamed);
                }
            }
            Poll::Ready(Some(Err(_))) => drop(this.back.take()),
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A raw upstream: counts the request heads it reads and answers each
    /// as `answer` says (`None`: closes the connection instead).
    struct Raw {
        addr: std::net::SocketAddr,
        heads: Arc<AtomicUsize>,
        connections: Arc<AtomicUsize>,
    }

    async fn raw(answer: impl Fn(usize) -> Option<&'static str> + Send + Sync + 'static) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c, answer) = (heads.clone(), connections.clone(), Arc::new(answer));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (h, answer) = (h.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        buf.drain(..end + 4);
                        let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                        match answer(n) {
                            Some(a) => {
                                if s.write_all(a.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            None => return,
                        }
                    }
                });
            }
        });
        Raw { addr, heads, connections }
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    async fn connect(addr: std::net::SocketAddr) -> Result<Connection, std::io::Error> {
        let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await?);
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(send)
    }

    fn get() -> Request<UpstreamBody> {
        Request::get("/opi/XMLAPI").header("host", "up").body(Either::Left(Full::new(Bytes::new()))).unwrap()
    }

    async fn read_to_end(resp: Response<AnswerBody>) {
        resp.into_body().collect().await.unwrap();
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_request_that_was_written_is_never_sent_twice() {
        runtime().block_on(async {
            // The first request is answered (its connection goes back);
            // the second is read on that kept-alive connection and then
            // the connection is closed without an answer.
            let up = raw(|n| (n == 1).then_some(OK)).await;
            let pool = Arc::new(Pool::default());
            let c = || connect(up.addr);
            read_to_end(pool.clone().exchange(get(), c).await.map_err(|_| "first").unwrap()).await;
            assert_eq!(pool.idle(), 1);
            let second = pool.clone().exchange(get(), c).await;
            assert!(matches!(second, Err(ExchangeError::Send(_))), "the written request failed, once");
            tokio::task::yield_now().await;
            assert_eq!(up.heads.load(Ordering::SeqCst), 2, "the second request reached the upstream once");
            assert_eq!(up.connections.load(Ordering::SeqCst), 1, "and was not tried on a new connection");
        });
    }

    #[test]
    fn a_connection_goes_back_only_when_its_answer_was_read_to_the_end() {
        runtime().block_on(async {
            let up = raw(|_| Some("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789")).await;
            let pool = Arc::new(Pool::default());
            let c = || connect(up.addr);
            let resp = pool.clone().exchange(get(), c).await.map_err(|_| "exchange").unwrap();
            assert_eq!(pool.idle(), 0, "in use");
            drop(resp);
            assert_eq!(pool.idle(), 0, "an answer dropped unread closes its connection");
            read_to_end(pool.clone().exchange(get(), c).await.map_err(|_| "exchange").unwrap()).await;
            assert_eq!(pool.idle(), 1, "an answer read to its end gives its connection back");
            assert_eq!(up.connections.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn a_connection_whose_upload_is_not_done_goes_back_only_when_it_is() {
        runtime().block_on(async {
            // The upstream answers as soon as it has the head, before the body.
            let up = raw(|_| Some(OK)).await;
            let pool = Arc::new(Pool::default());
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, ClientBodyError>>(1);
            let stream = http_body_util::StreamBody::new(tokio_stream(rx));
            let body: UpstreamBody = Either::Right(UnsyncBoxBody::new(stream));
            let req = Request::post("/x").header("host", "up").header("content-length", "4").body(body).unwrap();
            let resp = pool.clone().exchange(req, || connect(up.addr)).await.map_err(|_| "exchange").unwrap();
            read_to_end(resp).await;
            tokio::task::yield_now().await;
            assert_eq!(pool.idle(), 0, "the upload is still going out");
            tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"body")))).await.unwrap();
            drop(tx);
            let mut waited = 0;
            while pool.idle() == 0 && waited < 200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                waited += 1;
            }
            assert_eq!(pool.idle(), 1, "back once the upload is done");
        });
    }

    #[test]
    fn an_idle_connection_outlives_max_idle_neither_in_the_pool_nor_on_the_wire() {
        runtime().block_on(async {
            let up = raw(|_| Some(OK)).await;
            let pool = Arc::new(Pool::with_max_idle(Duration::from_millis(50)));
            let c = || connect(up.addr);
            read_to_end(pool.clone().exchange(get(), c).await.map_err(|_| "exchange").unwrap()).await;
            assert_eq!(pool.idle(), 1);
            tokio::time::sleep(Duration::from_millis(80)).await;
            // A sweep closes it even when no request comes.
            pool.close_stale();
            assert_eq!(pool.idle(), 0, "closed by the sweep");
            read_to_end(pool.clone().exchange(get(), c).await.map_err(|_| "exchange").unwrap()).await;
            assert_eq!(up.connections.load(Ordering::SeqCst), 2, "a new connection for the next request");
            tokio::time::sleep(Duration::from_millis(80)).await;
            // A request that finds only a connection past its time opens a new one.
            read_to_end(pool.clone().exchange(get(), c).await.map_err(|_| "exchange").unwrap()).await;
            assert_eq!(up.connections.load(Ordering::SeqCst), 3);
        });
    }

    /// An mpsc receiver as a stream of body frames.
    fn tokio_stream<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
