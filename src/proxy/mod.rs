//! One request's path through the gateway, once the stack has accepted it:
//! read the body if it must be inspected, gather what the request asks,
//! decide, and either refuse or rewrite and forward. The order of the steps
//! follows interface.md §5 and §6.

pub mod rewrite;
pub mod upstream;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::Either as FutureEither;
use futures_util::FutureExt as _;
use http::header::HeaderName;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tower_http::timeout::TimeoutBody;

use crate::decide::client_ip::{resolve, PeerAddr, TrustedProxies};
use crate::decide::params::{body_kind, BodyKind, Params, Slot};
use crate::decide::route::CanonicalPath;
use crate::decide::{decide, Asked, BodyCheck};
use crate::denial::{xmlapi_error, Denial};
use crate::telemetry::access::{AccessRecord, Logged, Outcome};
use crate::telemetry::metrics::Metrics;
use crate::tokens::reload::TokenStore;
use crate::tokens::state::ALLOWED;
use upstream::Upstream;

/// A request body as the stack hands it on: the client's, with a limit on
/// the pause between two pieces.
pub type ClientBody = TimeoutBody<Incoming>;

/// What is sent upstream: a rebuilt form body (or none), or the client's
/// streaming on (boxed: the connection's dispatcher needs `Unpin`).
pub type UpstreamBody = Either<Full<Bytes>, Pin<Box<ClientBody>>>;

/// What the client gets: the gateway's own answer or the upstream's, counted
/// for the access log.
pub type GatewayBody = Logged<Either<Full<Bytes>, upstream::Answer>>;

/// Everything a request needs that outlives it.
pub struct Shared {
    /// The token table.
    pub tokens: Arc<TokenStore>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The scanner.
    pub upstream: Arc<Upstream>,
    /// Validated upstream settings (address, credential).
    pub upstream_cfg: crate::config::Upstream,
    /// Whose X-Forwarded-For is believed.
    pub trusted: TrustedProxies,
    /// `limits.inspect_body_bytes`.
    pub inspect_body_bytes: usize,
    /// Bodies being read to decide hold their size here (in KiB), so that
    /// many at once cannot take all memory: 64 times the inspection limit.
    pub inspect_budget: InspectBudget,
    /// The Host header for the upstream, made once.
    pub upstream_host: http::HeaderValue,
}

/// What the body gave the decision.
enum Inspected {
    /// A form, read whole (and the room it holds in the budget).
    Form(Bytes, BudgetPermit),
    /// Not a form: streams on to the upstream if allowed.
    Stream(ClientBody),
    /// Nothing to send.
    Empty,
    /// Why the body alone refuses the request.
    Refused(BodyCheck),
}

/// What deciding leaves to do.
enum Step {
    /// The gateway answers itself.
    Answer(Response<GatewayBody>),
    /// The rewritten request goes upstream; its line is finished with the
    /// upstream's answer.
    Forward(Request<UpstreamBody>, AccessRecord, bool),
}

/// Handles one request from `peer`: inspect the body if it must be, decide
/// and rewrite (no waiting), forward. The steps are separate functions so
/// that this future, which is moved several times per request, holds only
/// what crosses a wait.
pub fn handle(
    shared: Arc<Shared>,
    peer: PeerAddr,
    body_idle_timeout: std::time::Duration,
    req: Request<Incoming>,
) -> impl Future<Output = Response<GatewayBody>> + Send + 'static {
    let start = Instant::now();
    let (parts, incoming) = req.into_parts();
    let body = match body_kind(&parts.headers) {
        BodyKind::Form => {
            let form = handle_form(shared, peer, start, parts, incoming, body_idle_timeout);
            return FutureEither::Right(FutureEither::Right(Box::pin(form)));
        }
        // What the framing says is read before the idle timeout hides it.
        BodyKind::Opaque if incoming.is_end_stream() => Inspected::Empty,
        BodyKind::Opaque => Inspected::Stream(TimeoutBody::new(body_idle_timeout, incoming)),
        BodyKind::Refused(why) => Inspected::Refused(BodyCheck::Refused(why)),
    };
    match decide_and_rewrite(&shared, peer, start, parts, body) {
        Step::Answer(resp) => FutureEither::Left(std::future::ready(resp)),
        Step::Forward(up_req, record, json) => {
            FutureEither::Right(FutureEither::Left(forward(shared, up_req, record, json)))
        }
    }
}

/// [`handle`] for a form body, which is read before deciding.
async fn handle_form(
    shared: Arc<Shared>,
    peer: PeerAddr,
    start: Instant,
    parts: http::request::Parts,
    incoming: Incoming,
    body_idle_timeout: std::time::Duration,
) -> Response<GatewayBody> {
    let Ok(body) = read_form(&shared, incoming, body_idle_timeout).await else {
        let record = AccessRecord::new(start, peer.0.to_canonical(), &parts, Outcome::Busy);
        let msg = "The gateway is reading too many request bodies at once; try again";
        return own_answer(xmlapi_error(http::StatusCode::SERVICE_UNAVAILABLE, "GATEWAY_BUSY", msg, false), record);
    };
    match decide_and_rewrite(&shared, peer, start, parts, body) {
        Step::Answer(resp) => resp,
        Step::Forward(up_req, record, json) => forward(shared, up_req, record, json).await,
    }
}

/// Reads a form body within the inspection budget; `Err` when there was no
/// room in time. A client that stalls between two pieces of its body is cut
/// off, so it cannot hold a connection slot and a buffer forever.
async fn read_form(
    shared: &Shared,
    incoming: Incoming,
    body_idle_timeout: std::time::Duration,
) -> Result<Inspected, ()> {
    let limit = shared.inspect_body_bytes;
    let announced = incoming.size_hint().upper();
    let permit = shared.inspect_budget.reserve(announced, limit).await.ok_or(())?;
    if announced.is_some_and(|n| n > limit as u64) {
        return Ok(Inspected::Refused(BodyCheck::TooLarge));
    }
    let mut body = Limited::new(incoming, limit);
    let mut first = Bytes::new();
    let mut joined: Vec<u8> = Vec::new();
    loop {
        // A piece that is already here is taken without arming the idle
        // timer (the usual small form arrives with its head).
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => match tokio::time::timeout(body_idle_timeout, body.frame()).await {
                Ok(f) => f,
                Err(_) => return Ok(Inspected::Refused(BodyCheck::Refused("The request body could not be read"))),
            },
        };
        let data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => d,
                Err(_trailers) => continue,
            },
            Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Ok(Inspected::Refused(BodyCheck::TooLarge));
            }
            Some(Err(_)) => return Ok(Inspected::Refused(BodyCheck::Refused("The request body could not be read"))),
        };
        if first.is_empty() && joined.is_empty() {
            first = data;
        } else {
            if joined.is_empty() {
                // Sized once: doubling could take twice the room reserved.
                joined
                    .reserve_exact(announced.map_or(limit, |n| (n as usize).min(limit)).max(first.len() + data.len()));
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&data);
        }
    }
    let form = if joined.is_empty() { first } else { Bytes::from(joined) };
    Ok(Inspected::Form(form, permit))
}

/// Decides on the request and, when it is granted, rewrites it for the
/// upstream. Counts the decision against the token.
fn decide_and_rewrite(
    shared: &Shared,
    peer: PeerAddr,
    start: Instant,
    mut parts: http::request::Parts,
    body: Inspected,
) -> Step {
    let now = SystemTime::now();
    let (form, body_check) = match &body {
        Inspected::Form(f, _) => (Some(f), BodyCheck::Fine),
        Inspected::Refused(check) => (None, *check),
        Inspected::Stream(_) | Inspected::Empty => (None, BodyCheck::Fine),
    };
    let mut params = Params::default();
    let query = parts.uri.query().map(str::as_bytes).unwrap_or_default();
    let scanned = params.scan(query).and_then(|()| form.map_or(Ok(()), |f| params.scan(f))).map(|()| params);
    let json = scanned.as_ref().is_ok_and(|p| p.json);
    let action_for_log = match &scanned {
        Ok(Params { action: Slot::One(a), .. }) => Some(AccessRecord::action_for_log(a)),
        _ => None,
    };
    let resolved =
        resolve(peer, parts.headers.get_all(HeaderName::from_static("x-forwarded-for")).iter(), &shared.trusted);
    let client_for_log = resolved.as_ref().map_or(peer.0.to_canonical(), |r| r.client.0);
    let mut record = AccessRecord::new(start, client_for_log, &parts, Outcome::Allowed);
    record.action = action_for_log;

    // Decide against one table, and compute where a grant goes while the
    // request's borrowed pieces are at hand; only owned values leave.
    let (decision, uri) = {
        let raw_path = parts.uri.path();
        let asked = Asked {
            method: &parts.method,
            path: CanonicalPath::parse(raw_path),
            params: scanned,
            body: body_check,
            client: resolved.as_ref().map(|r| r.client).map_err(|e| *e),
            now,
        };
        let table = shared.tokens.current();
        match decide(&table, &asked) {
            Ok(entry) => {
                let state = entry.state(shared.tokens.states());
                let uri = match &asked.path {
                    Ok(path) => {
                        rewrite::upstream_uri(raw_path, path, parts.uri.query(), shared.upstream_cfg.apptoken.as_ref())
                            .ok()
                    }
                    Err(_) => None,
                };
                // Counted as what the caller gets: a target that cannot be
                // forwarded is refused below.
                let outcome = if uri.is_some() { ALLOWED } else { Denial::Ambiguous("").index() };
                state.record(outcome, client_for_log, now);
                (Ok(state.name.clone()), uri)
            }
            Err(refusal) => {
                let name = match refusal.token {
                    Some(e) => {
                        let state = e.state(shared.tokens.states());
                        state.record(refusal.denial.index(), client_for_log, now);
                        Some(state.name.clone())
                    }
                    None => {
                        shared.metrics.anonymous_denial(refusal.denial.index());
                        None
                    }
                };
                (Err((refusal.denial, name)), None)
            }
        }
    };
    let name = match decision {
        Ok(name) => name,
        Err((denial, name)) => {
            record.token = name;
            record.outcome = Outcome::Denied(denial);
            return Step::Answer(own_answer(denial.into_response(json), record));
        }
    };
    record.token = Some(name);

    // Granted (so the path was canonical and the client known): forward.
    let (Some(uri), Ok(resolved)) = (uri, resolved) else {
        let denial = Denial::Ambiguous("The request target cannot be forwarded");
        record.outcome = Outcome::Denied(denial);
        return Step::Answer(own_answer(denial.into_response(json), record));
    };
    // The body has been decided on: a form's room in the budget goes back
    // here, before the (possibly slow) upstream.
    let up_body = match body {
        Inspected::Form(f, _permit) => {
            let mut stripped = Vec::with_capacity(f.len());
            crate::decide::params::strip_apptoken(&f, &mut stripped);
            Either::Left(Full::new(Bytes::from(stripped)))
        }
        Inspected::Stream(b) => Either::Right(Box::pin(b)),
        Inspected::Empty | Inspected::Refused(_) => Either::Left(Full::new(Bytes::new())),
    };
    rewrite::upstream_headers(&mut parts.headers, &shared.upstream_host, &resolved, matches!(up_body, Either::Left(_)));
    parts.uri = uri;
    parts.version = rewrite::UPSTREAM_VERSION;
    Step::Forward(Request::from_parts(parts, up_body), record, json)
}

/// Sends the rewritten request and hands the answer back, or the gateway's
/// own 502/504.
fn forward(
    shared: Arc<Shared>,
    up_req: Request<UpstreamBody>,
    mut record: AccessRecord,
    json: bool,
) -> impl Future<Output = Response<GatewayBody>> + Send + 'static {
    shared.upstream.send(up_req).map(move |sent| match sent {
        Ok((resp, took)) => {
            shared.metrics.upstream_latency(took);
            let (mut parts, body) = resp.into_parts();
            rewrite::downstream_headers(&mut parts.headers, shared.upstream_cfg.apptoken.as_ref());
            record.upstream_status = Some(parts.status.as_u16());
            Response::from_parts(parts, Logged::new(Either::Right(body), record))
        }
        Err(e) => {
            shared.metrics.upstream_failure(e.index());
            record.outcome = Outcome::UpstreamFailed(e.code());
            own_answer(xmlapi_error(e.status(), e.code(), e.message(), json), record)
        }
    })
}

fn own_answer(resp: Response<Bytes>, record: AccessRecord) -> Response<GatewayBody> {
    resp.map(|b| Logged::new(Either::Left(Full::new(b)), record))
}

/// The memory that bodies read before deciding may take together, in KiB.
/// Taking and giving back room is one atomic operation each (a semaphore
/// would lock its waiter list on every release); only a body that has to
/// wait for room takes a slower path.
pub struct InspectBudget {
    inner: Arc<Budget>,
    wait: std::time::Duration,
}

struct Budget {
    free_kib: AtomicU64,
    waiting: AtomicUsize,
    room: tokio::sync::Notify,
}

/// Room held in the budget, given back when dropped.
pub struct BudgetPermit {
    budget: Arc<Budget>,
    kib: u64,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget.free_kib.fetch_add(self.kib, Ordering::SeqCst);
        if self.budget.waiting.load(Ordering::SeqCst) > 0 {
            self.budget.room.notify_waiters();
        }
    }
}

impl Budget {
    fn try_take(&self, kib: u64) -> bool {
        self.free_kib.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |free| free.checked_sub(kib)).is_ok()
    }
}

/// Counts a waiting body for as long as it waits (also when its wait is cut
/// short by the timeout).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl InspectBudget {
    /// Room for `total_bytes`; a body waits at most `wait` for its share.
    pub fn new(total_bytes: usize, wait: std::time::Duration) -> Self {
        let kib = (total_bytes as u64 / 1024).max(1);
        let inner =
            Budget { free_kib: AtomicU64::new(kib), waiting: AtomicUsize::new(0), room: tokio::sync::Notify::new() };
        Self { inner: Arc::new(inner), wait }
    }

    /// Reserves what `body` may take (its length, or the limit when unknown),
    /// waiting for room; `None` when there was none in time.
    async fn reserve(&self, announced: Option<u64>, limit: usize) -> Option<BudgetPermit> {
        let bytes = announced.map_or(limit as u64, |u| u.min(limit as u64));
        let kib = bytes.div_ceil(1024).max(1);
        let permit = || BudgetPermit { budget: self.inner.clone(), kib };
        if self.inner.try_take(kib) {
            return Some(permit());
        }
        let budget = &self.inner;
        let wait = async {
            loop {
                // Registered before looking again, so that room given back
                // in between is not missed.
                let notified = budget.room.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                budget.waiting.fetch_add(1, Ordering::SeqCst);
                let _waiting = Waiting(&budget.waiting);
                if budget.try_take(kib) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(self.wait, wait).await.ok().map(|()| permit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_body_waiting_for_room_gets_it_when_room_is_given_back_and_not_otherwise() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let budget = InspectBudget::new(4 * 1024, Duration::from_millis(300));
            let all = budget.reserve(Some(4 * 1024), 4 * 1024).await.expect("the whole budget");
            // No room, none given back: the wait ends empty.
            assert!(budget.reserve(Some(1024), 4 * 1024).await.is_none());
            assert_eq!(budget.inner.waiting.load(Ordering::SeqCst), 0, "a timed-out waiter is still counted");
            // Room given back while a body waits: it gets it.
            let give_back = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(all);
            };
            let (got, ()) = tokio::join!(budget.reserve(Some(2048), 4 * 1024), give_back);
            assert_eq!(got.as_ref().map(|p| p.kib), Some(2));
            let rest = budget.reserve(Some(2048), 4 * 1024).await;
            assert!(rest.is_some(), "the rest is free");
            assert!(budget.reserve(Some(1), 4 * 1024).await.is_none(), "and no more");
            drop((got, rest));
            assert_eq!(budget.inner.free_kib.load(Ordering::SeqCst), 4, "every KiB came back");
        });
    }
}
