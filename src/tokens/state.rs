//! What requests change as they run, per token name, and what must outlive a
//! reload: last use (of the token, and of each of its secrets), last client
//! address, counts by decision. The registry is consulted when a table is
//! built; requests touch only their entry's atomics.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use strum::EnumCount;

use crate::denial::DenialCode;
use crate::quota::{Bucket, InFlight};

/// What was decided for one request of a token, as its counters keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every row of interface.md §5 passed.
    Allowed,
    /// A row refused it.
    Denied(DenialCode),
}

/// How many secrets one token may have (`token_sha256` as a list).
pub const MAX_SECRETS: usize = 4;

/// Identifies one secret of a token in its live state without holding its
/// digest: 64 bits folded from the digest, never 0. Positions are not used
/// for this because they move: `token rotate` puts the new secret in front,
/// and the old one's last use must stay with the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretTag(u64);

impl SecretTag {
    /// The tag of the secret whose SHA-256 is `digest`.
    pub fn of(digest: &[u8; 32]) -> Self {
        let word = |i: usize| {
            u64::from_le_bytes([
                digest[i],
                digest[i + 1],
                digest[i + 2],
                digest[i + 3],
                digest[i + 4],
                digest[i + 5],
                digest[i + 6],
                digest[i + 7],
            ])
        };
        Self((word(0) ^ word(8).rotate_left(17) ^ word(16).rotate_left(31) ^ word(24).rotate_left(47)) | 1)
    }
}

/// The last use of one secret: which secret (its tag, 0 for a free slot)
/// and when.
#[derive(Debug, Default)]
struct SecretUse {
    tag: AtomicU64,
    last_ms: AtomicU64,
}

/// One token's live state.
#[derive(Debug, Default)]
pub struct TokenState {
    /// The token's name (for the access log, without holding the table).
    pub name: Arc<str>,
    last_use_ms: AtomicU64,
    /// The last use of each secret seen, by tag. A token has at most
    /// `MAX_SECRETS` secrets at a time; a secret seen for the first time
    /// takes a free slot or the one used longest ago (a removed secret's).
    secrets: [SecretUse; MAX_SECRETS],
    last_ip: Mutex<Option<IpAddr>>,
    allowed: AtomicU64,
    /// Refusals, indexed by code.
    denied: [AtomicU64; DenialCode::COUNT],
    /// Its `rate`, counted on this replica (kept by name: a reload does not
    /// refill it).
    pub bucket: Bucket,
    /// Its requests in flight, for `concurrency`.
    pub in_flight: Arc<InFlight>,
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

    /// Last use of the secret `tag`, if it was used since the process started.
    pub fn secret_last_use(&self, tag: SecretTag) -> Option<SystemTime> {
        let ms = self
            .secrets
            .iter()
            .filter(|s| s.tag.load(Ordering::Relaxed) == tag.0)
            .map(|s| s.last_ms.load(Ordering::Relaxed))
            .max()?;
        (ms != 0).then(|| UNIX_EPOCH + std::time::Duration::from_millis(ms))
    }

    /// Records a use of the secret `tag` at `now` (beside [`Self::record`],
    /// whatever was decided: a client still sending an old secret is using it).
    pub fn record_secret(&self, tag: SecretTag, now: SystemTime) {
        let ms = unix_ms(now);
        if let Some(s) = self.secrets.iter().find(|s| s.tag.load(Ordering::Relaxed) == tag.0) {
            s.last_ms.fetch_max(ms, Ordering::Relaxed);
            return;
        }
        // First use of this secret: take the slot used longest ago (a free
        // one has 0). Two first uses at once may take the same slot; the
        // loser is recorded again on its next use. Advisory, never a lock.
        let oldest = self.secrets.iter().min_by_key(|s| s.last_ms.load(Ordering::Relaxed));
        if let Some(s) = oldest {
            s.tag.store(tag.0, Ordering::Relaxed);
            s.last_ms.store(ms, Ordering::Relaxed);
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
