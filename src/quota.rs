//! Per-token limits (interface.md §4 `rate`, `burst`, `concurrency`): what
//! they are, and the two pieces of live state that keep them, both
//! lock-free. A leaf: uses nothing of the crate.
//!
//! The rate is a token bucket, kept as GCRA (the generic cell rate
//! algorithm): one "theoretical arrival time" per token, moved on by one
//! emission interval (the rate's period over its N) per request; a request
//! fits while that time is at most `burst` intervals ahead of now. That is
//! exactly a bucket of `burst` tokens refilled at the rate, in one atomic
//! word, and the same arithmetic runs in Redis for limits shared across
//! replicas (`proxy::limit`).

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// `N/s`, `N/m` or `N/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests per period.
    pub n: u32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Parses `"10/s"`, `"600/m"`, `"1000/h"` (N at least 1).
    pub fn parse(s: &str) -> Option<Self> {
        let (n, unit) = s.trim().split_once('/')?;
        let n: u32 = n.trim().parse().ok().filter(|&n| n > 0)?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        Some(Self { n, per })
    }

    /// The time one request takes of the rate.
    pub fn interval(self) -> Duration {
        self.per / self.n
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.n)
    }
}

/// The limits of an access right or of one token; a token's own replace
/// its right's, key by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Limits {
    /// `rate`.
    pub rate: Option<Rate>,
    /// `burst`: requests allowed at once; default the rate's N.
    pub burst: Option<u32>,
    /// `concurrency`: requests in flight at once.
    pub concurrency: Option<u32>,
}

impl Limits {
    /// These limits where set, else `base`'s.
    pub fn over(self, base: Limits) -> Limits {
        Limits {
            rate: self.rate.or(base.rate),
            burst: self.burst.or(base.burst),
            concurrency: self.concurrency.or(base.concurrency),
        }
    }

    /// Whether any limit is set (a token without one costs nothing more).
    pub fn any(&self) -> bool {
        self.rate.is_some() || self.concurrency.is_some()
    }

    /// The bucket's size: `burst`, or the rate's N.
    pub fn burst_or_n(&self) -> u32 {
        match (self.burst, self.rate) {
            (Some(b), _) => b,
            (None, Some(r)) => r.n,
            (None, None) => 0,
        }
    }
}

/// Nanoseconds on the process's monotonic clock.
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One token's rate, as a GCRA arrival time.
#[derive(Debug, Default)]
pub struct Bucket {
    /// The theoretical arrival time, in [`now_ns`] nanoseconds (0: full).
    tat_ns: AtomicU64,
}

impl Bucket {
    /// Takes one request of `rate` with room for `burst` at once, at `now`
    /// (from [`now_ns`]); `Err` with how long until one more fits.
    ///
    /// The limits may differ from the last call's (a reload changed them):
    /// the arrival time is then read as at most one whole bucket ahead at
    /// the new ones. A bucket run dry stays dry (a reload does not refill
    /// it), and refills at the new rate from the next request, instead of
    /// first paying off what the old, slower rate ran up (2/m raised to
    /// 100/s would otherwise wait out the old minute). With unchanged
    /// limits the arrival time is never that far ahead, so this changes
    /// nothing.
    pub fn take(&self, rate: Rate, burst: u32, now: u64) -> Result<(), Duration> {
        let t = u64::try_from(rate.interval().as_nanos()).unwrap_or(u64::MAX).max(1);
        let tolerance = t.saturating_mul(u64::from(burst.max(1)));
        let mut current = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let from = current.max(now).min(now.saturating_add(tolerance));
            let next = from.saturating_add(t);
            let ahead = next - now;
            if ahead > tolerance {
                if from < current {
                    // Kept, so that the bucket refills from here (lost to
                    // a concurrent take, it is redone by the next one).
                    let _ = self.tat_ns.compare_exchange(current, from, Ordering::AcqRel, Ordering::Relaxed);
                }
                return Err(Duration::from_nanos(ahead - tolerance));
            }
            match self.tat_ns.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }
}

/// One token's requests in flight (kept in an `Arc`, which its guards hold).
#[derive(Debug, Default)]
pub struct InFlight {
    n: AtomicU32,
}

/// One request in flight; dropped when its answer has ended or the client
/// went away.
#[derive(Debug)]
pub struct InFlightGuard {
    counter: Arc<InFlight>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.counter.n.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    /// Counts one more request if fewer than `limit` are in flight.
    pub fn enter(self: &Arc<Self>, limit: u32) -> Option<InFlightGuard> {
        self.n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| (v < limit).then_some(v + 1)).ok()?;
        Some(InFlightGuard { counter: self.clone() })
    }

    /// How many are in flight now.
    pub fn now(&self) -> u32 {
        self.n.load(Ordering::Acquire)
    }
}

/// Whole seconds until `wait` is over, as `Retry-After` says it (at least 1).
pub fn retry_after_secs(wait: Duration) -> u32 {
    u32::try_from(wait.as_nanos().div_ceil(1_000_000_000)).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(Rate::parse("10/s"), Some(Rate { n: 10, per: Duration::from_secs(1) }));
        assert_eq!(Rate::parse(" 600 / m "), Some(Rate { n: 600, per: Duration::from_secs(60) }));
        for bad in ["0/s", "10", "10/d", "-1/s", "x/s", "10/ss", ""] {
            assert_eq!(Rate::parse(bad), None, "{bad}");
        }
        assert_eq!(Rate::parse("3/h").unwrap().to_string(), "3/h");
        assert_eq!(Rate::parse("4/s").unwrap().interval(), Duration::from_millis(250));
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let b = Bucket::default();
        let rate = Rate::parse("10/s").unwrap();
        let t0 = 1_000_000_000;
        for i in 0..5 {
            assert_eq!(b.take(rate, 5, t0), Ok(()), "request {i} of the burst");
        }
        let wait = b.take(rate, 5, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "one more fits after one interval");
        assert_eq!(retry_after_secs(wait), 1);
        // After 100 ms exactly one more fits.
        assert_eq!(b.take(rate, 5, t0 + 100_000_000), Ok(()));
        assert!(b.take(rate, 5, t0 + 100_000_000).is_err());
        // Idle for long: full again, but no more than the burst.
        let later = t0 + 10_000_000_000;
        assert_eq!((0..8).filter(|_| b.take(rate, 5, later).is_ok()).count(), 5);
    }

    #[test]
    fn over_time_a_bucket_allows_the_rate_whatever_the_burst() {
        let b = Bucket::default();
        let rate = Rate::parse("50/s").unwrap();
        // One attempt every millisecond for ten seconds.
        let allowed = (0..10_000u64).filter(|ms| b.take(rate, 20, 1 + ms * 1_000_000).is_ok()).count();
        assert!((500..=520).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_changed_rate_applies_from_the_next_request_without_refilling_the_bucket() {
        let b = Bucket::default();
        let (slow, fast) = (Rate::parse("2/m").unwrap(), Rate::parse("100/s").unwrap());
        let t0 = 1_000_000_000;
        assert!(b.take(slow, 2, t0).is_ok() && b.take(slow, 2, t0).is_ok());
        assert_eq!(b.take(slow, 2, t0), Err(Duration::from_secs(30)));
        // Raised: still dry (no burst of 100 at once), one more fits after
        // one interval of the new rate, not after the old minute.
        assert_eq!(b.take(fast, 100, t0), Err(Duration::from_millis(10)));
        assert_eq!(b.take(fast, 100, t0 + 10_000_000), Ok(()));
        let second = (1..=100u64).filter(|ms| b.take(fast, 100, t0 + 10_000_000 + ms * 10_000_000).is_ok()).count();
        assert_eq!(second, 100, "the new rate, one every 10 ms");
        // Lowered again: counted at the slow rate from the next request,
        // with no more than its burst.
        let later = t0 + 3_000_000_000;
        assert_eq!((0..5).filter(|_| b.take(slow, 2, later).is_ok()).count(), 2);
        assert!(b.take(slow, 2, later + 29_000_000_000).is_err());
    }

    #[test]
    fn in_flight_counts_until_the_guard_goes() {
        let counter = Arc::new(InFlight::default());
        let a = counter.enter(2).unwrap();
        let b = counter.enter(2).unwrap();
        assert!(counter.enter(2).is_none());
        drop(a);
        assert_eq!(counter.now(), 1);
        let c = counter.enter(2);
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(counter.now(), 0);
    }

    #[test]
    fn limits_of_a_token_replace_those_of_its_right_key_by_key() {
        let right = Limits { rate: Rate::parse("10/s"), burst: Some(20), concurrency: Some(4) };
        let token = Limits { rate: Rate::parse("1/s"), ..Limits::default() };
        let l = token.over(right);
        assert_eq!((l.rate, l.burst, l.concurrency), (Rate::parse("1/s"), Some(20), Some(4)));
        assert_eq!(Limits { rate: Rate::parse("7/m"), ..Limits::default() }.burst_or_n(), 7);
    }
}
