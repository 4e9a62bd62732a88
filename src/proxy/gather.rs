//! Stage 2 of a request: what it asks, gathered for the decision. The
//! parameters APPTOKEN, ACTION and JSON from the query and a form body, the
//! path as the scanner's container will map it, and the client address
//! (the socket peer, or who a trusted proxy says it forwards). Borrows from
//! the request; copies nothing it does not have to.

use std::net::IpAddr;
use std::time::SystemTime;

use http::header::HeaderName;
use http::request::Parts;

use crate::decide::client_ip::{resolve, PeerAddr, TrustedProxies};
use crate::decide::params::{ParamValue, Params};
use crate::decide::route::CanonicalPath;
use crate::decide::{BodyCheck, DecisionInput};
use crate::telemetry::access::AccessRecord;

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

/// The ACTION as the access log shows it.
pub fn action_for_log(asked: &DecisionInput<'_>) -> Option<Box<str>> {
    match &asked.params {
        Ok(Params { action: ParamValue::One(a), .. }) => Some(AccessRecord::action_for_log(a)),
        _ => None,
    }
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
    let mut params = Params::default();
    let query = parts.uri.query().map(str::as_bytes).unwrap_or_default();
    let params = params.scan(query).and_then(|()| form.map_or(Ok(()), |f| params.scan(f))).map(|()| params);
    let forwarded_for = || parts.headers.get_all(HeaderName::from_static("x-forwarded-for")).iter();
    let resolved = resolve(peer, forwarded_for, trusted);
    DecisionInput {
        method: &parts.method,
        path: CanonicalPath::parse(parts.uri.path()),
        params,
        body,
        client: resolved,
        now,
    }
}
