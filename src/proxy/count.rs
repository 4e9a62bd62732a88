//! Stage 5 of a request: its decision counted, before anyone is answered.
//! Against the token's live state (counts by decision, last use, the last
//! use of the secret it came with, last client address) when a token was
//! found, and in the anonymous counters of the metrics when none was. A
//! granted request is counted once its limits have said (a request over
//! its rate counts as RATE_LIMITED, not as allowed). Only the decision is
//! counted here; what the upstream then does is the access log's and the
//! metrics' business.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::decide::Refusal;
use crate::telemetry::metrics::Metrics;
use crate::tokens::state::{Decision, SecretTag, StateRegistry, TokenState};
use crate::tokens::table::TokenRef;

/// Counts a refusal of a request from `client` at `now`; returns the
/// token's name for the access log, when a token was found.
pub fn refusal(
    refusal: &Refusal<'_>,
    states: &StateRegistry,
    metrics: &Metrics,
    client: IpAddr,
    now: SystemTime,
) -> Option<Arc<str>> {
    let Some(token) = refusal.token else {
        metrics.anonymous_denial(refusal.denial.code());
        return None;
    };
    let state = token.state(states);
    state.record(Decision::Denied(refusal.denial.code()), client, now);
    state.record_secret(token.secret(), now);
    Some(state.name.clone())
}

/// A granted request, to be counted once its limits have said.
pub struct Granted {
    /// The token's live state.
    pub state: Arc<TokenState>,
    secret: SecretTag,
    client: IpAddr,
    now: SystemTime,
}

impl Granted {
    /// The grant of `token` to a request from `client` at `now`.
    pub fn new(token: TokenRef<'_>, states: &StateRegistry, client: IpAddr, now: SystemTime) -> Self {
        Self { state: token.state(states).clone(), secret: token.secret(), client, now }
    }

    /// Counts it as `decision` (allowed, or refused by a limit).
    pub fn count(&self, decision: Decision) {
        self.state.record(decision, self.client, self.now);
        self.state.record_secret(self.secret, self.now);
    }
}
