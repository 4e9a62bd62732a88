//! The only caller of the upstream: kept-alive HTTP/1.1 connections in a
//! lock-free pool, TLS through rustls with the system roots plus an optional
//! `ca_file`, and the classification of failures into 502 and 504.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use futures_util::FutureExt as _;
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tower::ServiceExt as _;

use super::UpstreamBody;
use crate::config;

/// Why the upstream gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection (refused, reset, DNS): 502.
    Unreachable,
    /// The TLS handshake failed (untrusted certificate, wrong name): 502.
    Tls,
    /// No answer began within `upstream.timeout`: 504.
    Timeout,
}

impl UpstreamError {
    /// Index into `telemetry::metrics::UPSTREAM_FAILURES`.
    pub fn index(self) -> usize {
        match self {
            UpstreamError::Unreachable => 0,
            UpstreamError::Tls => 1,
            UpstreamError::Timeout => 2,
        }
    }

    /// The label and ERRORCODE.
    pub fn code(self) -> &'static str {
        match self {
            UpstreamError::Unreachable => "UPSTREAM_UNREACHABLE",
            UpstreamError::Tls => "UPSTREAM_TLS",
            UpstreamError::Timeout => "UPSTREAM_TIMEOUT",
        }
    }

    /// 502 or 504.
    pub fn status(self) -> http::StatusCode {
        match self {
            UpstreamError::Unreachable | UpstreamError::Tls => http::StatusCode::BAD_GATEWAY,
            UpstreamError::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// What the caller is told.
    pub fn message(self) -> &'static str {
        match self {
            UpstreamError::Unreachable => "The scanner could not be reached",
            UpstreamError::Tls => "The scanner's TLS certificate was not accepted",
            UpstreamError::Timeout => "The scanner did not answer in time",
        }
    }
}

/// The connections to the upstream: HTTP/1.1 connections kept alive in a
/// lock-free queue of idle ones. A request takes one (or opens one), and its
/// answer's body puts it back once the answer has been read to its end, so
/// there are as many connections as requests in flight, as with nginx's
/// `keepalive`. No lock is taken and no map is searched on the way.
pub struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`, what the connector dials.
    target: http::Uri,
    pool: Arc<Pool>,
    timeout: Duration,
}

/// Idle connections, oldest first.
pub struct Pool {
    idle: ArrayQueue<Idle>,
    /// The fewest idle connections seen since the last sweep: that many were
    /// never needed, and the sweep closes them. (The queue hands out the
    /// oldest connection first, so without this a burst's connections would
    /// all stay warm in rotation under light traffic.)
    low_water: AtomicUsize,
}

struct Idle {
    conn: SendRequest<UpstreamBody>,
    since: Instant,
}

/// Idle connections kept at most; one more is closed when it is done.
const POOL_SIZE: usize = 1024;
/// How long an idle connection is kept: Tomcat closes its own after 20 s by
/// default, so ours close first and a request rarely meets one closed under
/// it (a request written to such a connection is not sent again: it may
/// have been acted on).
const MAX_IDLE: Duration = Duration::from_secs(15);
/// Attempts on connections that turn out closed before a request is written
/// to one, before a new connection is opened for it.
const STALE_RETRIES: usize = 2;

impl Pool {
    fn new() -> Self {
        Self { idle: ArrayQueue::new(POOL_SIZE), low_water: AtomicUsize::new(0) }
    }

    /// Puts a connection whose last exchange is over back for the next
    /// request; closes it when the pool is full.
    fn put(&self, conn: SendRequest<UpstreamBody>) {
        if !conn.is_closed() {
            let _ = self.idle.push(Idle { conn, since: Instant::now() });
        }
    }

    /// An idle connection still open and young enough, if any.
    fn take(&self) -> Option<SendRequest<UpstreamBody>> {
        while let Some(idle) = self.idle.pop() {
            self.low_water.fetch_min(self.idle.len(), Ordering::Relaxed);
            if !idle.conn.is_closed() && idle.since.elapsed() < MAX_IDLE {
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
    fn close_stale(&self) {
        let surplus = self.low_water.swap(usize::MAX, Ordering::Relaxed) / 2;
        let mut closed = 0;
        for _ in 0..self.idle.len() {
            let Some(idle) = self.idle.pop() else { break };
            if closed < surplus {
                closed += 1;
                continue;
            }
            if !idle.conn.is_closed() && idle.since.elapsed() < MAX_IDLE {
                // A request may have filled the pool meanwhile; then this
                // one is closed, which costs a reconnect at most.
                let _ = self.idle.push(idle);
            }
        }
        self.low_water.fetch_min(self.idle.len(), Ordering::Relaxed);
    }
}

impl Upstream {
    /// Builds the connector; fails when the CA file cannot be read.
    pub fn new(cfg: &config::Upstream) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &cfg.ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("cannot read upstream.ca_file {}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("upstream.ca_file {} holds no certificate", ca.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("upstream.ca_file {}: {e}", ca.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
        let target = http::Uri::builder()
            .scheme(cfg.scheme.clone())
            .authority(cfg.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| e.to_string())?;
        let pool = Arc::new(Pool::new());
        Ok(Self { connector, target, pool, timeout: cfg.timeout })
    }

    /// Closes idle connections past their time, forever; spawned once.
    pub async fn close_idle(pool: Arc<Pool>) {
        let mut tick = tokio::time::interval(MAX_IDLE / 5);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            pool.close_stale();
        }
    }

    /// The idle connections, for [`Upstream::close_idle`].
    pub fn pool(&self) -> Arc<Pool> {
        self.pool.clone()
    }

    /// Sends one request (its URI in origin form, its Host set); returns the
    /// answer's head (its body streams, and gives the connection back when
    /// read to its end) and how long it took to begin.
    ///
    /// Built from combinators rather than `async` blocks: an `async` block
    /// that awaits a future it was given keeps that future twice, and this
    /// one is moved with every request.
    pub fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<(Response<Answer>, Duration), UpstreamError>> + Send + 'static {
        self.send_quietly(req).map(|r| {
            r.map_err(|(kind, why)| {
                tracing::warn!(error = %why, "upstream request failed");
                kind
            })
        })
    }

    fn send_quietly(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<(Response<Answer>, Duration), (UpstreamError, String)>> + Send + 'static {
        let start = Instant::now();
        let timeout = self.timeout;
        tokio::time::timeout(timeout, exchange(self.clone(), req)).map(move |r| match r {
            Err(_) => Err((UpstreamError::Timeout, format!("no answer within {timeout:?}"))),
            Ok(Ok(resp)) => Ok((resp, start.elapsed())),
            Ok(Err(e)) => Err(e),
        })
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, (UpstreamError, String)> {
        let io = self.connector.clone().oneshot(self.target.clone()).await.map_err(|e| {
            let e: &(dyn StdError + 'static) = &*e;
            (classify_cause(e), error_chain(e))
        })?;
        let (send, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| (classify_cause(&e), error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection closed");
            }
        });
        Ok(send)
    }
}

/// On an idle connection while one turns out usable before the request
/// is written to it, else on a new one.
async fn exchange(
    this: Arc<Upstream>,
    mut req: Request<UpstreamBody>,
) -> Result<Response<Answer>, (UpstreamError, String)> {
    // A streamed request body may still be going out when the answer is
    // over (an upstream may answer early); such a connection goes back only
    // once it is free.
    let streamed = matches!(req.body(), http_body_util::Either::Right(_));
    let mut stale = 0;
    loop {
        let pooled = if stale < STALE_RETRIES { this.pool.take() } else { None };
        let (mut conn, reused) = match pooled {
            Some(c) => (c, true),
            // Boxed: the handshake's state (a TLS session) is large, and
            // would otherwise be part of every request's future.
            None => (Box::pin(this.connect()).await?, false),
        };
        if conn.ready().await.is_err() {
            if reused {
                stale += 1;
                continue;
            }
            return Err((UpstreamError::Unreachable, "the new connection closed at once".into()));
        }
        match conn.try_send_request(req).await {
            Ok(resp) => {
                let pool = this.pool.clone();
                return Ok(resp.map(|body| Answer { body, back: Some((conn, pool)), streamed }));
            }
            Err(mut e) => match e.take_message() {
                // Not written: the connection was closed under it (the
                // upstream may close an idle one at any time). Again.
                Some(r) if reused => {
                    req = r;
                    stale += 1;
                }
                _ => return Err((classify_cause(e.error()), error_chain(e.error()))),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The upstream's answer body. Read to its end, it puts its connection
    /// back into the pool; dropped before that, the connection is closed
    /// (HTTP/1 cannot skip the rest of an answer).
    pub struct Answer {
        #[pin]
        body: Incoming,
        back: Option<(SendRequest<UpstreamBody>, Arc<Pool>)>,
        streamed: bool,
    }

    impl PinnedDrop for Answer {
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
fn give_back(mut conn: SendRequest<UpstreamBody>, pool: Arc<Pool>, streamed: bool) {
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

impl http_body::Body for Answer {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let res = this.body.poll_frame(cx);
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

/// The User-Agent of the readiness probe, so upstream logs can tell it apart.
pub const PROBE_USER_AGENT: &str = "tokengate-readiness-probe";

impl Upstream {
    /// Asks the upstream for `/` with no credential; true when it answers at
    /// all (any status), which is what readiness means here.
    pub async fn probe(self: &Arc<Self>, host: &http::HeaderValue) -> bool {
        let Ok(req) = Request::get("/")
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, PROBE_USER_AGENT)
            .body(http_body_util::Either::Left(http_body_util::Full::new(bytes::Bytes::new())))
        else {
            return false;
        };
        match self.send_quietly(req).await {
            Ok(_) => true,
            Err((_, why)) => {
                tracing::debug!(error = %why, "readiness probe: the upstream did not answer");
                false
            }
        }
    }
}

/// Walks the causes. An `io::Error` hides the error it wraps from
/// `source()` (it returns the wrapped error's own source), so look inside.
fn classify_cause(e: &(dyn StdError + 'static)) -> UpstreamError {
    if e.is::<rustls::Error>() {
        return UpstreamError::Tls;
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref() {
            let inner: &(dyn StdError + 'static) = inner;
            return classify_cause(inner);
        }
    }
    e.source().map_or(UpstreamError::Unreachable, classify_cause)
}

fn error_chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
