//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/tokens`. Never on
//! the proxy port; never shows a token or a digest. Answers only to its own
//! host (an IP literal, `localhost` or a name of `admin.hosts`), so that a
//! web page cannot read it through DNS rebinding, and only `GET` and `HEAD`.
//! `/tokens` streams from the table snapshot in bounded memory, at most
//! [`TOKENS_AT_ONCE`] at a time.

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{Either, Full};
use serde::ser::{Serialize, SerializeMap, Serializer};
use strum::IntoEnumIterator;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::denial::DenialCode;
use crate::proxy::GatewayState;
use crate::quota::Rate;
use crate::tokens::state::{Decision, StateRegistry, TokenState};
use crate::tokens::table::{TokenRef, TokenTable};

/// `/tokens` answers streamed at once; a further one gets 503. Each holds
/// the table snapshot it started from (shared, not copied) and a few chunks.
pub const TOKENS_AT_ONCE: usize = 2;

/// Size of one chunk of the `/tokens` JSON.
const CHUNK: usize = 64 * 1024;

/// Chunks made ahead of the client: the backpressure window.
const CHUNKS_AHEAD: usize = 4;

/// A `/tokens` client that takes no chunk for this long loses the answer
/// (and its slot).
const STALL: Duration = Duration::from_secs(30);

/// What the admin endpoints read.
pub struct Admin {
    /// What the proxy shares: the token store and the metrics.
    pub gateway: Arc<GatewayState>,
    /// `admin.hosts`, lower case.
    hosts: Vec<String>,
    /// Slots for `/tokens` answers.
    tokens_slots: Arc<Semaphore>,
}

impl Admin {
    /// The admin endpoints over `gateway`, answering to `hosts` besides IP
    /// literals and `localhost`.
    pub fn new(gateway: Arc<GatewayState>, hosts: Vec<String>) -> Self {
        Self { gateway, hosts, tokens_slots: Arc::new(Semaphore::new(TOKENS_AT_ONCE)) }
    }
}

/// An admin answer: a whole text, or the `/tokens` stream.
pub type AdminBody = Either<Full<Bytes>, TokensBody>;

/// Answers one admin request.
pub async fn handle<B>(admin: Arc<Admin>, req: Request<B>) -> Result<Response<AdminBody>, Infallible> {
    // The Host first: a page that rebinds its name to this address learns
    // nothing, not even which paths exist.
    if !host_allowed(&req, &admin.hosts) {
        return Ok(text(
            StatusCode::MISDIRECTED_REQUEST,
            "this admin listener answers to an IP address, localhost or a name of admin.hosts only\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into());
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let shared = &admin.gateway;
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            // A table is loaded from start on; the upstream must have answered,
            // and the token file must be readable (a revocation written to a
            // file the gateway cannot read would never apply).
            if let Some(why) = shared.tokens.read_failure() {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("the token file cannot be read: {why}\n"))
            } else if shared.metrics.upstream_ready() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "the upstream has not answered yet\n".into())
            }
        }
        // Walks every token state: built on the blocking pool, so a large
        // table does not hold up requests (one CPU: one scheduler thread).
        "/metrics" => {
            let s = shared.clone();
            let body = tokio::task::spawn_blocking(move || s.metrics.render(s.tokens.states())).await;
            match body {
                Ok(b) => {
                    with_type(text(StatusCode::OK, b), "application/openmetrics-text; version=1.0.0; charset=utf-8")
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "metrics failed\n".into()),
            }
        }
        "/tokens" => {
            let Ok(permit) = admin.tokens_slots.clone().try_acquire_owned() else {
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{TOKENS_AT_ONCE} /tokens answers are being sent already; try again when one is done\n"),
                );
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(r);
            };
            let mut r = if req.method() == Method::HEAD {
                Response::new(Either::Left(Full::new(Bytes::new())))
            } else {
                let table = arc_swap::Guard::into_inner(shared.tokens.current());
                Response::new(Either::Right(TokensBody::start(table, shared.tokens.states().clone(), permit)))
            };
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found: /metrics /healthz /readyz /tokens\n".into()),
    })
}

/// Whether the request names this listener: its `Host` (or HTTP/2
/// `:authority`) is an IP literal, `localhost` or a name of `hosts`, with
/// any port. No host, two hosts or one that does not parse: no.
fn host_allowed<B>(req: &Request<B>, hosts: &[String]) -> bool {
    let mut values = req.headers().get_all(header::HOST).iter();
    let (host, second) = (values.next(), values.next());
    if second.is_some() {
        return false;
    }
    let authority = match (req.uri().authority(), host) {
        (Some(a), h) => {
            // HTTP/2 and absolute-form: the Host, if any, must agree.
            if h.is_some_and(|h| h.as_bytes() != a.as_str().as_bytes()) {
                return false;
            }
            a.clone()
        }
        (None, Some(h)) => match h.to_str().ok().and_then(|h| h.parse::<http::uri::Authority>().ok()) {
            Some(a) => a,
            None => return false,
        },
        (None, None) => return false,
    };
    if authority.as_str().contains('@') {
        return false;
    }
    let host = authority.host();
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if bare.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    name == "localhost" || hosts.contains(&name)
}

fn text(status: StatusCode, body: String) -> Response<AdminBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    with_type(r, "text/plain; charset=utf-8")
}

fn with_type(mut r: Response<AdminBody>, content_type: &'static str) -> Response<AdminBody> {
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// What the producer hands the body: a chunk, or the mark that the JSON is
/// whole (a producer that stops without it ends the body with an error,
/// so a cut answer is never taken for a complete one).
enum Piece {
    Chunk(Bytes),
    Done,
}

/// The `/tokens` JSON, made on a blocking thread from one table snapshot,
/// [`CHUNK`] bytes at a time and at most [`CHUNKS_AHEAD`] ahead of what
/// the client has taken.
pub struct TokensBody {
    rx: mpsc::Receiver<Piece>,
    done: bool,
}

/// Why a `/tokens` answer ended before its JSON was whole.
#[derive(Debug)]
pub struct TokensCut;

impl std::fmt::Display for TokensCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the /tokens answer stopped before its end")
    }
}

impl std::error::Error for TokensCut {}

impl TokensBody {
    fn start(table: Arc<TokenTable>, states: Arc<StateRegistry>, permit: OwnedSemaphorePermit) -> Self {
        let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // The slot is free again when the producer is done, however it ends.
            let _permit = permit;
            let send = |piece| {
                rt.block_on(async { tokio::time::timeout(STALL, tx.send(piece)).await.is_ok_and(|r| r.is_ok()) })
            };
            let mut buf = Vec::with_capacity(CHUNK + 4096);
            buf.extend_from_slice(b"{\"tokens\":[");
            for (i, t) in table.entries().enumerate() {
                buf.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
                let state = t.existing_state(&states);
                // Writing into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut buf, &TokenView::new(&t, state.as_deref()));
                if buf.len() >= CHUNK
                    && !send(Piece::Chunk(Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096)))))
                {
                    return;
                }
            }
            buf.extend_from_slice(b"\n]}\n");
            if send(Piece::Chunk(Bytes::from(buf))) {
                send(Piece::Done);
            }
        });
        Self { rx, done: false }
    }
}

impl http_body::Body for TokensBody {
    type Data = Bytes;
    type Error = TokensCut;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, TokensCut>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Piece::Chunk(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Some(Piece::Done) => {
                self.done = true;
                Poll::Ready(None)
            }
            None => {
                self.done = true;
                Poll::Ready(Some(Err(TokensCut)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// One token as `/tokens` shows it. Never a secret or a digest. To show
/// more of a token, add a field here.
#[derive(serde::Serialize)]
struct TokenView<'a> {
    name: &'a str,
    access_right: &'a str,
    active: bool,
    expires: Option<Rfc3339>,
    ip_restriction: Shown<'a>,
    last_use: Option<Rfc3339>,
    /// Each secret's last use by position in `token_sha256` (0 the newest),
    /// so an old one can be seen going quiet after a rotation.
    secrets: Vec<SecretView>,
    last_client_ip: Option<IpAddr>,
    /// Its effective `rate`, `burst` and `concurrency`, and its requests in
    /// flight on this replica; `null` when it has none.
    limits: Option<LimitsView>,
    requests: Counts<'a>,
}

/// A token's limits as `/tokens` shows them (its refusals by them are in
/// `requests`, as `RATE_LIMITED` and `TOO_MANY_IN_FLIGHT`).
#[derive(serde::Serialize)]
struct LimitsView {
    #[serde(serialize_with = "shown_rate")]
    rate: Option<Rate>,
    burst: Option<u32>,
    concurrency: Option<u32>,
    in_flight: u32,
}

fn shown_rate<S: Serializer>(rate: &Option<Rate>, s: S) -> Result<S::Ok, S::Error> {
    match rate {
        Some(r) => s.collect_str(r),
        None => s.serialize_none(),
    }
}

/// One secret of a token: its position, never its digest.
#[derive(serde::Serialize)]
struct SecretView {
    position: usize,
    last_use: Option<Rfc3339>,
}

impl<'a> TokenView<'a> {
    fn new(t: &TokenRef<'a>, state: Option<&'a TokenState>) -> Self {
        Self {
            name: t.name(),
            access_right: &t.right().name,
            active: t.active(),
            expires: t.expires().map(Rfc3339),
            ip_restriction: Shown(t.ip_restriction().nets()),
            last_use: state.and_then(TokenState::last_use).map(Rfc3339),
            secrets: match state {
                Some(state) => t
                    .secret_last_uses(state)
                    .into_iter()
                    .map(|(position, last)| SecretView { position, last_use: last.map(Rfc3339) })
                    .collect(),
                None => (0..t.secrets()).map(|position| SecretView { position, last_use: None }).collect(),
            },
            last_client_ip: state.and_then(TokenState::last_ip),
            limits: {
                let l = t.limits();
                l.any().then(|| LimitsView {
                    rate: l.rate,
                    burst: l.rate.map(|_| l.burst_or_n()),
                    concurrency: l.concurrency,
                    in_flight: state.map_or(0, |st| st.in_flight.now()),
                })
            },
            requests: Counts(state),
        }
    }
}

/// A time as RFC 3339, to the second.
struct Rfc3339(SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(self.0))
    }
}

/// CIDRs as strings, written without a `Vec<String>` in between.
struct Shown<'a>(&'a [ipnet::IpNet]);

impl Serialize for Shown<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct One<'n>(&'n ipnet::IpNet);
        impl Serialize for One<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self.0)
            }
        }
        s.collect_seq(self.0.iter().map(One))
    }
}

/// Requests by decision: `allowed` always, each refusal code that happened.
struct Counts<'a>(Option<&'a TokenState>);

impl Serialize for Counts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("allowed", &self.0.map_or(0, |st| st.count(Decision::Allowed)))?;
        if let Some(st) = self.0 {
            for code in DenialCode::iter() {
                let n = st.count(Decision::Denied(code));
                if n > 0 {
                    m.serialize_entry(code.as_str(), &n)?;
                }
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, uri: &str) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_ip_literals_localhost_and_configured_names_are_this_host() {
        let hosts = vec!["gw.example".to_string()];
        for ok in [
            "127.0.0.1:9090",
            "10.1.2.3",
            "[::1]:9090",
            "[2001:db8::1]",
            "localhost:9090",
            "LOCALHOST",
            "localhost.",
            "GW.example:1",
        ] {
            assert!(host_allowed(&req(Some(ok), "/tokens"), &hosts), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9090",
            "127.0.0.1.evil.example",
            "localhost.evil",
            "",
            "a b",
            "user@127.0.0.1",
        ] {
            assert!(!host_allowed(&req(Some(bad), "/tokens"), &hosts), "{bad:?}");
        }
        assert!(!host_allowed(&req(None, "/tokens"), &hosts), "no Host at all");
        let two =
            Request::builder().uri("/").header("host", "127.0.0.1").header("host", "evil.example").body(()).unwrap();
        assert!(!host_allowed(&two, &hosts));
        // HTTP/2's :authority (the URI's), and a Host that disagrees with it.
        assert!(host_allowed(&req(None, "http://127.0.0.1:9090/tokens"), &hosts));
        assert!(!host_allowed(&req(None, "http://evil.example/tokens"), &hosts));
        assert!(!host_allowed(&req(Some("evil.example"), "http://127.0.0.1/tokens"), &hosts));
    }
}
