//! Stage 2 of a request: what it asks, gathered for the decision. The
//! parameters APPTOKEN, ACTION and JSON from the query and a form body, the
//! path as the scanner's container will map it, and the client address
//! (the socket peer, or who a trusted proxy says it forwards). Borrows from
//! the request; copies nothing it does not have to.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::request::Parts;

use crate::decide::client_ip::{resolve, PeerAddr, TrustedProxies};
use crate::decide::params::{ParamValue, Params};
use crate::decide::route::CanonicalPath;
use crate::decide::{caller, BodyCheck, DecisionInput};
use crate::telemetry::access::LoggedAction;
use crate::tokens::reload::TokenStore;
use crate::tokens::state::TokenState;

/// Whether the query alone asks for JSON answers (`JSON=1`), for answers
/// given before the body is read.
pub fn query_asks_json(parts: &Parts) -> bool {
    let mut params = Params::default();
    params.scan(parts.uri.query().map(str::as_bytes).unwrap_or_default()).is_ok() && params.json
}

/// Whether refusals are to be JSON (`JSON=1` in the query or the form).
pub fn json(asked: &DecisionInput<'_>) -> bool {
    asked.params.as_ref().is_ok_and(|p| p.json)
}

/// The address the access log and the token's state record: the client
/// decided on, or the peer when none could be.
pub fn client_for_log(asked: &DecisionInput<'_>, peer: PeerAddr) -> IpAddr {
    asked.client.as_ref().map_or(peer.0.to_canonical(), |r| r.client.0)
}

/// Whether this is an XMLAPI request that names an ACTION (the clients'
/// login probe names none).
pub fn names_an_action(asked: &DecisionInput<'_>) -> bool {
    asked.path.as_ref().is_ok_and(|p| p.is_xmlapi())
        && asked.params.as_ref().is_ok_and(|p| !matches!(p.action, ParamValue::Absent))
}

/// The ACTION as the access log shows it.
pub fn action_for_log(asked: &DecisionInput<'_>) -> Option<LoggedAction> {
    match &asked.params {
        Ok(Params { action: ParamValue::One(a), .. }) => Some(LoggedAction::new(a)),
        _ => None,
    }
}

/// What the query alone tells before a form body is read.
pub struct BeforeBody<'r> {
    /// The token the query names, when rows 1 to 4 admit it: the body is
    /// read in the known tokens' room, in this token's share.
    pub token: Option<Arc<TokenState>>,
    /// The decision's input so far (query, path, client, and the query
    /// token's digest), which the form completes: nothing is read twice.
    pub asked: DecisionInput<'r>,
}

impl BeforeBody<'_> {
    /// The client address (the shared room's shares are by address).
    pub fn client(&self, peer: PeerAddr) -> IpAddr {
        client_for_log(&self.asked, peer)
    }
}

/// Looks at the query of a request whose form body is still to be read:
/// whose room the body is read in (interface.md §5's rows 1 to 4 for the
/// query's APPTOKEN alone, as `decide::caller` has them). Counts nothing.
pub fn before_body<'r>(
    parts: &'r Parts,
    peer: PeerAddr,
    trusted: &TrustedProxies,
    tokens: &TokenStore,
    now: SystemTime,
) -> BeforeBody<'r> {
    let mut asked = gather(parts, None, BodyCheck::Fine, peer, trusted, now);
    let table = tokens.current();
    let (token, digest) = match caller(&table, &asked) {
        // The digest is kept for the value it hashes, when that is borrowed
        // from the query (a decoded one is hashed again: rare).
        Ok(c) => {
            let state = c.token.state(tokens.states()).clone();
            let digest = match &asked.params {
                Ok(Params { apptoken: ParamValue::One(Cow::Borrowed(value)), .. }) => Some((*value, c.digest)),
                _ => None,
            };
            (Some(state), digest)
        }
        Err(_) => (None, None),
    };
    drop(table);
    asked.known_digest = digest;
    BeforeBody { token, asked }
}

/// Completes the input [`before_body`] gathered with the form read since,
/// at `now`.
pub fn with_form<'r>(
    mut asked: DecisionInput<'r>,
    form: Option<&'r [u8]>,
    body: BodyCheck,
    now: SystemTime,
) -> DecisionInput<'r> {
    if let (Ok(params), Some(form)) = (&mut asked.params, form) {
        if let Err(e) = params.scan(form) {
            asked.params = Err(e);
        }
    }
    asked.body = body;
    asked.now = now;
    asked
}

/// Gathers what the request of `parts` (with `form`, when its body was a
/// form read whole) asks, at `now`.
pub fn gather<'r>(
    parts: &'r Parts,
    form: Option<&'r [u8]>,
    body: BodyCheck,
    peer: PeerAddr,
    trusted: &TrustedProxies,
    now: SystemTime,
) -> DecisionInput<'r> {
    let path = CanonicalPath::parse(parts.uri.path());
    let mut params = Params::default();
    let query = parts.uri.query().map(str::as_bytes).unwrap_or_default();
    let mut params = params.scan(query).and_then(|()| form.map_or(Ok(()), |f| params.scan(f))).map(|()| params);
    // Outside the XMLAPI a REST client sends its token as a bearer.
    if let (Ok(p), Ok(path)) = (&mut params, &path) {
        if !path.is_xmlapi() {
            p.scan_bearers(parts.headers.get_all(AUTHORIZATION).iter().map(HeaderValue::as_bytes));
        }
    }
    let forwarded_for = || parts.headers.get_all(HeaderName::from_static("x-forwarded-for")).iter();
    let resolved = resolve(peer, forwarded_for, trusted);
    DecisionInput { method: &parts.method, path, params, body, client: resolved, now, known_digest: None }
}
