//! One request's path through the gateway, once the stack has accepted it:
//! read the body if it must be inspected, gather what the request asks,
//! decide, and either refuse or rewrite and forward. The order of the steps
//! follows interface.md §5 and §6.

pub mod rewrite;
pub mod upstream;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
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
    pub upstream: Upstream,
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

/// Handles one request from `peer`.
pub async fn handle(
    shared: Arc<Shared>,
    peer: PeerAddr,
    body_idle_timeout: std::time::Duration,
    req: Request<Incoming>,
) -> Response<GatewayBody> {
    let start = Instant::now();
    let now = SystemTime::now();
    let (mut parts, incoming) = req.into_parts();
    // What the body's framing says, before the idle timeout hides it: a
    // client that stalls between two pieces of its body is cut off, so it
    // cannot hold a connection slot and a buffer forever.
    let no_body = incoming.is_end_stream();
    let announced = incoming.size_hint().upper();
    let body = TimeoutBody::new(body_idle_timeout, incoming);

    // A form body is read before deciding: APPTOKEN and ACTION may be in it.
    let kind = body_kind(&parts.headers);
    let mut budget = None;
    let (form, body, body_check) = match kind {
        BodyKind::Form => {
            let limit = shared.inspect_body_bytes;
            let Some(permit) = shared.inspect_budget.reserve(announced, limit).await else {
                let record = AccessRecord {
                    start,
                    client: peer.0.to_canonical(),
                    token: None,
                    method: parts.method.clone(),
                    uri: parts.uri.clone(),
                    action: None,
                    outcome: Outcome::Busy,
                    upstream_status: None,
                };
                let msg = "The gateway is reading too many request bodies at once; try again";
                return own_answer(
                    xmlapi_error(http::StatusCode::SERVICE_UNAVAILABLE, "GATEWAY_BUSY", msg, false),
                    record,
                );
            };
            budget = Some(permit);
            match read_form(body, announced, limit).await {
                Ok(bytes) => (Some(bytes), None, BodyCheck::Fine),
                Err(check) => (None, None, check),
            }
        }
        BodyKind::Opaque => (None, Some(body), BodyCheck::Fine),
        BodyKind::Refused(why) => (None, None, BodyCheck::Refused(why)),
    };

    let mut params = Params::default();
    let query = parts.uri.query().map(str::as_bytes).unwrap_or_default();
    let scanned = params.scan(query).and_then(|()| form.as_deref().map_or(Ok(()), |f| params.scan(f))).map(|()| params);
    let json = scanned.as_ref().is_ok_and(|p| p.json);
    let action_for_log = match &scanned {
        Ok(Params { action: Slot::One(a), .. }) => Some(AccessRecord::action_for_log(a)),
        _ => None,
    };
    let resolved =
        resolve(peer, parts.headers.get_all(HeaderName::from_static("x-forwarded-for")).iter(), &shared.trusted);
    let client_for_log = resolved.as_ref().map_or(peer.0.to_canonical(), |r| r.client.0);
    let cfg = &shared.upstream_cfg;

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
                    Ok(path) => rewrite::upstream_uri(raw_path, path, parts.uri.query(), cfg.apptoken.as_ref()).ok(),
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
    let mut record = AccessRecord {
        start,
        client: client_for_log,
        token: None,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        action: action_for_log,
        outcome: Outcome::Allowed,
        upstream_status: None,
    };
    let name = match decision {
        Ok(name) => name,
        Err((denial, name)) => {
            record.token = name;
            record.outcome = Outcome::Denied(denial);
            return own_answer(denial.into_response(json), record);
        }
    };
    record.token = Some(name);

    // Granted (so the path was canonical and the client known): forward.
    let (Some(uri), Ok(resolved)) = (uri, resolved) else {
        let denial = Denial::Ambiguous("The request target cannot be forwarded");
        record.outcome = Outcome::Denied(denial);
        return own_answer(denial.into_response(json), record);
    };
    let up_body = match (form, body) {
        (Some(f), _) => {
            let mut stripped = Vec::with_capacity(f.len());
            crate::decide::params::strip_apptoken(&f, &mut stripped);
            Either::Left(Full::new(Bytes::from(stripped)))
        }
        (None, Some(_)) if no_body => Either::Left(Full::new(Bytes::new())),
        (None, Some(b)) => Either::Right(Box::pin(b)),
        (None, None) => Either::Left(Full::new(Bytes::new())),
    };
    rewrite::upstream_headers(&mut parts.headers, &shared.upstream_host, &resolved, matches!(up_body, Either::Left(_)));
    parts.uri = uri;
    parts.version = rewrite::UPSTREAM_VERSION;
    let up_req = Request::from_parts(parts, up_body);
    // The body has been read and decided on: its room goes back before the
    // (possibly slow) upstream, so only reading is bounded by the budget.
    drop(budget);

    match shared.upstream.send(up_req).await {
        Ok((resp, took)) => {
            shared.metrics.upstream_latency(took);
            let (mut parts, body) = resp.into_parts();
            rewrite::downstream_headers(&mut parts.headers, cfg.apptoken.as_ref());
            record.upstream_status = Some(parts.status.as_u16());
            Response::from_parts(parts, Logged::new(Either::Right(body), record))
        }
        Err(e) => {
            shared.metrics.upstream_failure(e.index());
            record.outcome = Outcome::UpstreamFailed(e.code());
            own_answer(xmlapi_error(e.status(), e.code(), e.message(), json), record)
        }
    }
}

fn own_answer(resp: Response<Bytes>, record: AccessRecord) -> Response<GatewayBody> {
    resp.map(|b| Logged::new(Either::Left(Full::new(b)), record))
}

/// The memory that bodies read before deciding may take together.
pub struct InspectBudget {
    kib: Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
}

impl InspectBudget {
    /// Room for `total_bytes`; a body waits at most `wait` for its share.
    pub fn new(total_bytes: usize, wait: std::time::Duration) -> Self {
        let kib = (total_bytes / 1024).clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self { kib: Arc::new(tokio::sync::Semaphore::new(kib)), wait }
    }

    /// Reserves what `body` may take (its length, or the limit when unknown),
    /// waiting for room; `None` when there was none in time.
    async fn reserve(&self, announced: Option<u64>, limit: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let bytes = announced.map_or(limit as u64, |u| u.min(limit as u64));
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        tokio::time::timeout(self.wait, self.kib.clone().acquire_many_owned(kib)).await.ok()?.ok()
    }
}

/// Reads a form body up to `limit` bytes.
async fn read_form(body: ClientBody, announced: Option<u64>, limit: usize) -> Result<Bytes, BodyCheck> {
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(BodyCheck::TooLarge);
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyCheck::TooLarge),
        Err(_) => Err(BodyCheck::Refused("The request body could not be read")),
    }
}
