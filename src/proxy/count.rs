//! Stage 4 of a request: its decision counted, before anyone is answered.
//! Against the token's live state (counts by decision, last use, last
//! client address) when a token was found, and in the anonymous counters of
//! the metrics when none was. Only the decision is counted here; what the
//! upstream then does is the access log's and the metrics' business.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::decide::{Grant, Refusal};
use crate::telemetry::metrics::Metrics;
use crate::tokens::state::{Decision, StateRegistry};

/// Counts `verdict` for a request from `client` at `now`; returns the
/// token's name for the access log, when a token was found.
pub fn count(
    verdict: &Result<Grant<'_, '_, '_>, Refusal<'_>>,
    states: &StateRegistry,
    metrics: &Metrics,
    client: IpAddr,
    now: SystemTime,
) -> Option<Arc<str>> {
    let (token, decision) = match verdict {
        Ok(grant) => (grant.token, Decision::Allowed),
        Err(Refusal { denial, token: Some(token) }) => (*token, Decision::Denied(denial.code())),
        Err(Refusal { denial, token: None }) => {
            metrics.anonymous_denial(denial.code());
            return None;
        }
    };
    let state = token.state(states);
    state.record(decision, client, now);
    state.record_secret(token.secret(), now);
    Some(state.name.clone())
}
