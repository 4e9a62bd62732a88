//! One request's path through the gateway, once the server has accepted it
//! and the stack has wrapped it: [`handle`], whose stages follow
//! interface.md §5 and §6 in the order a request meets them.
//!
//! | stage | module | what it does |
//! | --- | --- | --- |
//! | 0. framing | [`framing`] | one Host, an origin-form target, one valid Content-Length, no method override |
//! | 1. inspect the body | [`inspect`] | a form is read whole (it may carry APPTOKEN or ACTION); other bodies stream on |
//! | 2. gather | [`gather`] | APPTOKEN, ACTION, JSON, the path as Tomcat maps it, the client address |
//! | 3. decide | [`crate::decide`] | the pure decision of §5, row by row; a grant is final |
//! | 4. limit | [`limit`] | the token's concurrency and rate (§5's last row), locally or in Redis |
//! | 5. count | [`count`] | the decision against the token's live state, or the anonymous counters |
//! | 6. rewrite | [`rewrite`] | APPTOKEN out, the credential in, headers for the upstream |
//! | 7. forward | [`upstream`], [`pool`], [`rest`] | send it on a kept-alive connection; stream the answer back |
//!
//! A stage that ends the request returns the gateway's own answer
//! ([`GatewayError`]) at once, counted as a refusal; a refused request
//! never reaches stage 6: nothing of it goes upstream.

pub mod count;
pub mod framing;
pub mod gather;
pub mod inspect;
pub mod limit;
pub mod pool;
pub mod rest;
pub mod rewrite;
pub mod upstream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::Either as FutureEither;
use futures_util::FutureExt as _;
use http::header::InvalidHeaderValue;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{Either, Full};
use tower_http::BoxError;

use crate::config::{Config, DenialStatus, UpstreamToken};
use crate::decide::client_ip::{PeerAddr, TrustedProxies};
use crate::decide::decide;
use crate::denial::GatewayError;
use crate::percent::Spelled;
use crate::telemetry::access::{AccessRecord, Logged};
use crate::telemetry::metrics::Metrics;
use crate::tokens::reload::TokenStore;
use crate::tokens::state::Decision;
use inspect::{Account, BodyPlan, InspectBudget, Inspector};
use pool::UpstreamBody;
use rest::{NoRestToken, RestSession, RestToken};
use upstream::UpstreamClient;

/// What the client gets: the gateway's own answer or the upstream's,
/// counted for the access log.
pub type ResponseBody = Logged<Either<Full<Bytes>, pool::AnswerBody>>;

/// Everything a request needs that outlives it, shared by every request.
pub struct GatewayState {
    /// The token table now serving, and the live per-token state.
    pub tokens: Arc<TokenStore>,
    /// The counters `/metrics` shows.
    pub metrics: Arc<Metrics>,
    /// Connections to the scanner.
    pub upstream: Arc<UpstreamClient>,
    /// `upstream.apptoken_file`: put upstream in place of the caller's token.
    pub credential: Option<UpstreamToken>,
    /// The same credential in every spelling, to be kept out of answers.
    pub credential_in_answers: Option<Spelled>,
    /// The Host header for the upstream, made once.
    pub upstream_host: HeaderValue,
    /// `client_ip.trusted_proxies`.
    pub trusted: TrustedProxies,
    /// Reads the bodies that must be read to decide.
    pub inspector: Inspector,
    /// `server.denial_status`.
    pub denial_status: DenialStatus,
    /// `[upstream.rest]`: the scanner's REST token for REST routes.
    pub rest: Option<Arc<RestSession>>,
    /// `[limits.shared]`: per-token rates counted in Redis.
    pub shared_limits: Option<Arc<limit::SharedStore>>,
}

/// How the gateway's own answer to one request is shaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// `JSON=1` was given: JSON, not XML.
    pub json: bool,
    /// A refusal answers 200 (`denial_status = "xmlapi"`, an XMLAPI
    /// request that names an ACTION).
    pub refusal_as_200: bool,
}

impl GatewayState {
    /// Assembles what requests share from the validated config; fails only
    /// when the upstream's host does not make a Host header.
    pub fn new(
        cfg: &Config,
        tokens: Arc<TokenStore>,
        metrics: Arc<Metrics>,
        upstream: UpstreamClient,
    ) -> Result<Self, InvalidHeaderValue> {
        let limits = &cfg.limits;
        let upstream = Arc::new(upstream);
        let upstream_host = HeaderValue::from_str(cfg.upstream.authority.as_str())?;
        let rest = cfg.upstream.rest.clone().map(|rest| {
            let (cred, host) = (cfg.upstream.apptoken.clone(), upstream_host.clone());
            Arc::new(RestSession::new(rest, cred, host, upstream.clone(), metrics.clone()))
        });
        let shared_limits = cfg.shared_limits.as_ref().map(|c| limit::SharedStore::start(c, metrics.clone()));
        Ok(Self {
            tokens,
            metrics,
            upstream,
            credential: cfg.upstream.apptoken.clone(),
            credential_in_answers: cfg.upstream.apptoken.as_ref().and_then(|c| Spelled::new(c.0.as_bytes())),
            upstream_host,
            trusted: TrustedProxies::new(cfg.trusted_proxies.clone()),
            inspector: Inspector {
                limit: limits.inspect_body_bytes,
                idle_timeout: limits.body_idle_timeout,
                budget: InspectBudget::new(
                    limits.inspect_body_bytes.saturating_mul(64),
                    // A body waits briefly for room, then gets a clear 503.
                    limits.body_idle_timeout.min(Duration::from_secs(1)),
                ),
            },
            denial_status: cfg.denial_status,
            shared_limits,
            rest,
        })
    }
}

/// Handles one request from `peer`, stage by stage (see the module's table).
/// Generic over the body so that the pipeline runs in-process too.
pub async fn handle<B>(gateway: Arc<GatewayState>, peer: PeerAddr, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    // Stages 1 to 5. Only owned values leave this block: the request's
    // pieces then take no room in the future while it waits upstream.
    let admitted_request = {
        let (parts, body) = req.into_parts();

        // 0. Framing first: a request that could be read two ways is
        //    refused before any token is looked up, and an HTTP/1
        //    connection that sent it is closed: what else it holds could
        //    be read two ways too.
        if let Err(denial) = framing::check(&parts) {
            gateway.metrics.anonymous_denial(denial.code());
            let record = AccessRecord::new(start, peer.0.to_canonical(), &parts);
            let json = gather::query_asks_json(&parts);
            let mut answer = own_answer(denial.into(), record, Shape { json, ..Shape::default() });
            if parts.version < http::Version::HTTP_2 {
                answer.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            return answer;
        }

        // 1. Inspect the body: a form is read before anything is decided
        //    (it may hold the APPTOKEN or ACTION that decide the request),
        //    in the room of the token its query names when that token may
        //    be used from here, else in the room shared by client address.
        let (body, early) = match gateway.inspector.plan(&parts.headers, body) {
            BodyPlan::Ready(body) => (body, None),
            BodyPlan::ReadForm(form) => {
                let early = gather::before_body(&parts, peer, &gateway.trusted, &gateway.tokens, SystemTime::now());
                let account = match &early.token {
                    Some(state) => Account::Token(state),
                    None => Account::Client(early.client(peer)),
                };
                // Boxed: its state, beside the early look's, would double the
                // future every request moves through the stack.
                match Box::pin(gateway.inspector.read_form(form, account)).await {
                    Ok(body) => (body, Some(early.asked)),
                    Err(inspect::NoRoom) => {
                        let record = AccessRecord::new(start, early.client(peer), &parts);
                        let shape = Shape { json: gather::json(&early.asked), ..Shape::default() };
                        return own_answer(GatewayError::Busy, record, shape);
                    }
                }
            }
        };

        // Stages 2 to 5 take no time and wait for nothing: one table
        // serves the whole decision.
        let now = SystemTime::now();
        // 2. Gather what the request asks.
        let asked = match early {
            Some(asked) => gather::with_form(asked, body.form(), body.check(), now),
            None => gather::gather(&parts, body.form(), body.check(), peer, &gateway.trusted, now),
        };
        let client = gather::client_for_log(&asked, peer);
        let shape = Shape {
            json: gather::json(&asked),
            refusal_as_200: gateway.denial_status == DenialStatus::Xmlapi && gather::names_an_action(&asked),
        };
        let mut record = AccessRecord::new(start, client, &parts);
        record.action = gather::action_for_log(&asked);

        // 3. Decide, row by row of §5. A refusal is counted and answered.
        let table = gateway.tokens.current();
        let grant = match decide(&table, &asked) {
            Ok(grant) => grant,
            Err(refusal) => {
                record.token = count::refusal(&refusal, gateway.tokens.states(), &gateway.metrics, client, now);
                return own_answer(refusal.denial.into(), record, shape);
            }
        };
        let granted = count::Granted::new(grant.token, gateway.tokens.states(), client, now);
        record.token = Some(granted.state.name.clone());

        // 4. Limit: the token's concurrency, and its rate on this replica
        //    (the last row of §5; a token without limits is not looked at).
        let limits = grant.token.limits();
        let admitted = if limits.any() {
            let state = &granted.state;
            match limit::local(&limits, &state.bucket, &state.in_flight, gateway.shared_limits.is_some()) {
                Ok(admitted) => admitted,
                Err(denial) => {
                    granted.count(Decision::Denied(denial.code()));
                    return own_answer(denial.into(), record, shape);
                }
            }
        } else {
            limit::Admitted::default()
        };

        // 6. Rewrite for the upstream: the path that was matched, the
        //    client that was allowed. A REST route with [upstream.rest]
        //    carries the scanner's REST token (stage 6), not the APPTOKEN.
        let rest = gateway.rest.clone().filter(|_| !grant.path.is_xmlapi());
        let credential = if rest.is_some() { None } else { gateway.credential.as_ref() };
        let target = rewrite::upstream_uri(parts.uri.path(), grant.path, parts.uri.query(), credential);
        let Ok(target) = target else {
            tracing::error!("the upstream target could not be built from a granted request");
            return own_answer(GatewayError::Internal, record, shape);
        };
        let forwarded_for = rewrite::forwarded_for(grant.client);
        let holding_token = rewrite::headers_holding(&parts.headers, grant.apptoken);
        drop(asked);
        let host = &gateway.upstream_host;
        let upstream_request = rewrite::upstream_request(parts, body, target, host, forwarded_for, holding_token);
        (upstream_request, record, shape, rest, granted, admitted)
    };

    // What follows builds the future to wait for, in a block of its own:
    // the request's pieces then take no room beside it while it waits.
    let forwarding = {
        let (upstream_request, record, shape, rest, granted, admitted) = admitted_request;
        // 4, continued: a rate shared across replicas is counted in Redis
        // (one round trip; boxed with what follows: limited tokens only).
        if let (Some(rate), Some(store)) = (admitted.shared_rate, gateway.shared_limits.clone()) {
            let held = admitted.in_flight;
            let tail = shared_then_forward(gateway, store, rate, granted, held, upstream_request, record, shape, rest);
            FutureEither::Right(Box::pin(tail) as BoxedAnswer)
        } else {
            // 5. Count the grant, now final. The request holds its place
            //    among the token's in flight until its answer is over.
            granted.count(Decision::Allowed);
            let mut record = record;
            record.hold = admitted.in_flight;
            // 7. Forward, and stream the answer back.
            match rest {
                None => FutureEither::Left(forward(gateway, upstream_request, record, shape)),
                // Boxed: the REST token's renewal is the rare path.
                Some(rest) => {
                    let rest = forward_rest(gateway, rest, upstream_request, record, shape);
                    FutureEither::Right(Box::pin(rest) as BoxedAnswer)
                }
            }
        }
    };
    forwarding.await
}

/// The rare paths' future, boxed so that it takes no room in every request's.
type BoxedAnswer = Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>;

/// Stages 4 (the rate, in Redis), 5 and 7 of a token whose rate is shared.
#[allow(clippy::too_many_arguments)]
async fn shared_then_forward(
    gateway: Arc<GatewayState>,
    store: Arc<limit::SharedStore>,
    (rate, burst): (crate::quota::Rate, u32),
    granted: count::Granted,
    held: Option<crate::quota::InFlightGuard>,
    request: Request<UpstreamBody>,
    mut record: AccessRecord,
    shape: Shape,
    rest: Option<Arc<RestSession>>,
) -> Response<ResponseBody> {
    let state = &granted.state;
    if let Err(denial) = store.take(&state.name, rate, burst, &state.bucket).await {
        granted.count(Decision::Denied(denial.code()));
        return own_answer(denial.into(), record, shape);
    }
    granted.count(Decision::Allowed);
    record.hold = held;
    match rest {
        None => forward(gateway, request, record, shape).await,
        Some(rest) => forward_rest(gateway, rest, request, record, shape).await,
    }
}

/// Sends the rewritten request and hands the answer back, or the gateway's
/// own 502/504.
fn forward(
    gateway: Arc<GatewayState>,
    request: Request<UpstreamBody>,
    record: AccessRecord,
    shape: Shape,
) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
    gateway.upstream.send(request).map(move |sent| answered(&gateway, sent, record, shape, None))
}

/// [`forward`] for a REST route with `[upstream.rest]`: the scanner's REST
/// token as the bearer; after a 401 the token is renewed, and a request
/// without a body is sent once more (one with a body was used up).
async fn forward_rest(
    gateway: Arc<GatewayState>,
    rest: Arc<RestSession>,
    mut request: Request<UpstreamBody>,
    record: AccessRecord,
    shape: Shape,
) -> Response<ResponseBody> {
    let Ok(token) = rest.token().await else {
        return no_rest_token(&gateway, record, shape);
    };
    let bodiless = matches!(request.body(), Either::Left(full) if full.is_end_stream());
    let again = bodiless.then(|| {
        let mut again = Request::new(Either::Left(Full::new(Bytes::new())));
        *again.method_mut() = request.method().clone();
        *again.uri_mut() = request.uri().clone();
        *again.version_mut() = request.version();
        *again.headers_mut() = request.headers().clone();
        again
    });
    request.headers_mut().insert(http::header::AUTHORIZATION, token.authorization.clone());
    let sent = gateway.upstream.send(request).await;
    let refused = matches!(&sent, Ok((resp, _)) if resp.status() == http::StatusCode::UNAUTHORIZED);
    if !refused {
        return answered(&gateway, sent, record, shape, Some((&rest, &token)));
    }
    // The scanner no longer takes this token: renew at once (once, however
    // many requests saw the 401).
    let renewed = rest.after_401(&token).await;
    match (again, renewed) {
        (Some(mut again), Ok(fresh)) => {
            drop(sent);
            again.headers_mut().insert(http::header::AUTHORIZATION, fresh.authorization.clone());
            let sent = gateway.upstream.send(again).await;
            answered(&gateway, sent, record, shape, Some((&rest, &fresh)))
        }
        (_, Err(NoRestToken)) => no_rest_token(&gateway, record, shape),
        (None, Ok(_)) => answered(&gateway, sent, record, shape, Some((&rest, &token))),
    }
}

fn no_rest_token(gateway: &GatewayState, record: AccessRecord, shape: Shape) -> Response<ResponseBody> {
    let failure = crate::denial::UpstreamFailure::Auth;
    gateway.metrics.upstream_failure(failure);
    own_answer(failure.into(), record, shape)
}

/// The upstream's answer, its headers cleaned (of the REST session's
/// secrets too, on a REST route), or the gateway's own 502/504.
fn answered(
    gateway: &GatewayState,
    sent: Result<(Response<pool::AnswerBody>, Duration), crate::denial::UpstreamFailure>,
    mut record: AccessRecord,
    shape: Shape,
    rest: Option<(&RestSession, &RestToken)>,
) -> Response<ResponseBody> {
    match sent {
        Ok((resp, took)) => {
            gateway.metrics.upstream_latency(took);
            let (mut parts, body) = resp.into_parts();
            let rest_secrets = rest.into_iter().flat_map(|(session, token)| [Some(&token.secret), session.password()]);
            let secrets = gateway.credential_in_answers.iter().chain(rest_secrets.flatten());
            rewrite::downstream_headers(&mut parts.headers, secrets);
            // A reason phrase of the upstream's own (hyper keeps it as an
            // extension) is not passed on: it could quote the credential.
            parts.extensions.clear();
            record.upstream_status = Some(parts.status.as_u16());
            Response::from_parts(parts, Logged::new(Either::Right(body), record))
        }
        Err(failure) => {
            gateway.metrics.upstream_failure(failure);
            own_answer(failure.into(), record, shape)
        }
    }
}

/// The gateway's own answer, with its access line.
fn own_answer(error: GatewayError, mut record: AccessRecord, shape: Shape) -> Response<ResponseBody> {
    record.error = Some(error);
    let mut resp = error.into_response(shape.json);
    if shape.refusal_as_200 && matches!(error, GatewayError::Denied(_)) {
        *resp.status_mut() = http::StatusCode::OK;
    }
    resp.map(|b| Logged::new(Either::Left(Full::new(b)), record))
}
