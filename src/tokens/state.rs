//! What requests change as they run, per token name, and what must outlive a
//! reload: last use, last client address, counts by decision. The registry is
//! consulted when a table is built; requests touch only their entry's atomics.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use strum::EnumCount;

use crate::denial::DenialCode;

/// What was decided for one request of a token, as its counters keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every row of interface.md §5 passed.
    Allowed,
    /// A row refused it.
    Denied(DenialCode),
}

/// One token's live state.
#[derive(Debug, Default)]
pub struct TokenState {
    /// The token's name (for the access log, without holding the table).
    pub name: Arc<str>,
    last_use_ms: AtomicU64,
    last_ip: Mutex<Option<IpAddr>>,
    allowed: AtomicU64,
    /// Refusals, indexed by code.
    denied: [AtomicU64; DenialCode::COUNT],
}

impl TokenState {
    /// Records one decision made for this token.
    pub fn record(&self, decision: Decision, ip: IpAddr, now: SystemTime) {
        self.counter(decision).fetch_add(1, Ordering::Relaxed);
        let ms = unix_ms(now);
        self.last_use_ms.fetch_max(ms, Ordering::Relaxed);
        // A per-token lock held for a copy; never shared across tokens.
        if let Ok(mut g) = self.last_ip.lock() {
            *g = Some(ip);
        }
    }

    /// Last use, if any.
    pub fn last_use(&self) -> Option<SystemTime> {
        match self.last_use_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + std::time::Duration::from_millis(ms)),
        }
    }

    /// The client address of the last use.
    pub fn last_ip(&self) -> Option<IpAddr> {
        self.last_ip.lock().ok().and_then(|g| *g)
    }

    /// How many requests had this decision.
    pub fn count(&self, decision: Decision) -> u64 {
        self.counter(decision).load(Ordering::Relaxed)
    }

    fn counter(&self, decision: Decision) -> &AtomicU64 {
        match decision {
            Decision::Allowed => &self.allowed,
            Decision::Denied(code) => &self.denied[code as usize],
        }
    }
}

/// Live state by token name, across reloads.
#[derive(Debug, Default)]
pub struct StateRegistry {
    by_name: DashMap<Arc<str>, Arc<TokenState>>,
}

impl StateRegistry {
    /// The state for `name`, created on first sight. Called by the loader.
    pub fn for_name(&self, name: &str) -> Arc<TokenState> {
        if let Some(s) = self.by_name.get(name) {
            return s.clone();
        }
        let name: Arc<str> = Arc::from(name);
        self.by_name
            .entry(name.clone())
            .or_insert_with(|| Arc::new(TokenState { name, ..TokenState::default() }))
            .clone()
    }

    /// The state for `name`, if it was ever used.
    pub fn get(&self, name: &str) -> Option<Arc<TokenState>> {
        self.by_name.get(name).map(|s| s.clone())
    }

    /// Every state (each with its name), for `/metrics`.
    pub fn snapshot(&self) -> Vec<Arc<TokenState>> {
        self.by_name.iter().map(|e| e.value().clone()).collect()
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
