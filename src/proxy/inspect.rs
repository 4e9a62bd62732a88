//! Stage 1 of a request: its body, before anything is decided. A form
//! (`application/x-www-form-urlencoded`) may carry APPTOKEN and ACTION, so
//! it is read whole, up to `limits.inspect_body_bytes`, within the shared
//! [`InspectBudget`]; a body the container would read parameters from in a
//! way the gateway does not follow is refused; any other body is not read
//! and streams on to the upstream if the request is allowed, under the
//! body's idle timeout.

use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::HeaderMap;
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full, Limited};
use tower_http::timeout::TimeoutBody;
use tower_http::BoxError;

use super::pool::{ClientBodyError, UpstreamBody};
use crate::decide::params::{body_kind, strip_apptoken, BodyKind};
use crate::decide::BodyCheck;
use crate::tokens::state::TokenState;

/// What the body gave the decision.
pub enum InspectedBody<B> {
    /// A form, read whole, and the room it holds in the budget until the
    /// request has been rewritten.
    Form(Bytes, BudgetPermit),
    /// Not a form: streams on to the upstream if the request is allowed.
    Stream(TimeoutBody<B>),
    /// No body.
    Empty,
    /// The body alone refuses the request (too large, or not interpretable).
    Refused(BodyCheck),
}

/// What to do with a body, decided from the headers alone.
pub enum BodyPlan<B> {
    /// Read it with [`Inspector::read_form`].
    ReadForm(B),
    /// Nothing to read.
    Ready(InspectedBody<B>),
}

impl<B> InspectedBody<B> {
    /// The form's bytes, when the body was one.
    pub fn form(&self) -> Option<&[u8]> {
        match self {
            InspectedBody::Form(f, _) => Some(f),
            InspectedBody::Stream(_) | InspectedBody::Empty | InspectedBody::Refused(_) => None,
        }
    }

    /// What became of the body, for the decision.
    pub fn check(&self) -> BodyCheck {
        match self {
            InspectedBody::Refused(check) => *check,
            InspectedBody::Form(..) | InspectedBody::Stream(_) | InspectedBody::Empty => BodyCheck::Fine,
        }
    }

    /// The body to send upstream: the form without its APPTOKENs (its room
    /// in the budget goes back here, before the possibly slow upstream), the
    /// client's stream, or nothing.
    pub fn into_upstream(self) -> UpstreamBody
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match self {
            InspectedBody::Form(f, _permit) => {
                let mut stripped = Vec::with_capacity(f.len());
                strip_apptoken(&f, &mut stripped);
                Either::Left(Full::new(Bytes::from(stripped)))
            }
            InspectedBody::Stream(b) => Either::Right(UnsyncBoxBody::new(b.map_err(ClientBodyError))),
            InspectedBody::Empty | InspectedBody::Refused(_) => Either::Left(Full::new(Bytes::new())),
        }
    }

    /// Whether the gateway built the body it sends (its length is then set
    /// anew) rather than passing the client's on.
    pub fn is_rebuilt(&self) -> bool {
        !matches!(self, InspectedBody::Stream(_))
    }
}

/// No room in the inspection budget in time: the request gets 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom;

/// Reads request bodies that must be read to decide.
pub struct Inspector {
    /// `limits.inspect_body_bytes`.
    pub limit: usize,
    /// `limits.body_idle_timeout`: the longest pause between two pieces.
    pub idle_timeout: Duration,
    /// The memory all bodies being read may hold together.
    pub budget: InspectBudget,
}

impl Inspector {
    /// Decides from the headers what to do with `body`. What the framing
    /// says (no body at all) is looked at before the idle timeout hides it.
    pub fn plan<B: Body>(&self, headers: &HeaderMap, body: B) -> BodyPlan<B> {
        BodyPlan::Ready(match body_kind(headers) {
            BodyKind::Form => return BodyPlan::ReadForm(body),
            BodyKind::Opaque if body.is_end_stream() => InspectedBody::Empty,
            BodyKind::Opaque => InspectedBody::Stream(TimeoutBody::new(self.idle_timeout, body)),
            BodyKind::Refused(why) => InspectedBody::Refused(BodyCheck::Refused(why)),
        })
    }

    /// Reads a form body within the inspection budget, in the room and
    /// share of `account`; `NoRoom` when there was none in time. The whole
    /// body must arrive within the idle timeout, and so a client that stalls
    /// or trickles is cut off: it cannot hold room, a buffer and a
    /// connection slot for longer.
    pub async fn read_form<B>(&self, body: B, account: Account<'_>) -> Result<InspectedBody<B>, NoRoom>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let limit = self.limit;
        let announced = body.size_hint().upper();
        let permit = self.budget.reserve(&account, announced, limit).await.ok_or(NoRoom)?;
        let deadline = tokio::time::Instant::from_std(Instant::now() + self.idle_timeout);
        if announced.is_some_and(|n| n > limit as u64) {
            return Ok(InspectedBody::Refused(BodyCheck::TooLarge));
        }
        let unreadable = InspectedBody::Refused(BodyCheck::Refused("The request body could not be read"));
        let mut body = std::pin::pin!(Limited::new(body, limit));
        let mut first = Bytes::new();
        let mut joined: Vec<u8> = Vec::new();
        loop {
            // A piece that is already here is taken without arming the idle
            // timer (the usual small form arrives with its head).
            let frame = match body.frame().now_or_never() {
                Some(f) => f,
                None => match tokio::time::timeout_at(deadline, body.frame()).await {
                    Ok(f) => f,
                    Err(_) => return Ok(unreadable),
                },
            };
            let data = match frame {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => d,
                    Err(_trailers) => continue,
                },
                Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return Ok(InspectedBody::Refused(BodyCheck::TooLarge));
                }
                Some(Err(_)) => return Ok(unreadable),
            };
            if first.is_empty() && joined.is_empty() {
                first = data;
            } else {
                if joined.is_empty() {
                    // Sized once: doubling could take twice the room reserved.
                    joined.reserve_exact(
                        announced.map_or(limit, |n| (n as usize).min(limit)).max(first.len() + data.len()),
                    );
                    joined.extend_from_slice(&first);
                }
                joined.extend_from_slice(&data);
            }
        }
        let form = if joined.is_empty() { first } else { Bytes::from(joined) };
        Ok(InspectedBody::Form(form, permit))
    }
}

/// The memory that bodies read before deciding may take together, in KiB,
/// in two rooms so that requests nobody is known for cannot hold it all:
///
/// - the **known** room, for a body whose query already names a token that
///   rows 1 to 4 of §5 admit from this client (the common clients put
///   APPTOKEN in the query and ACTION in the form); one token takes at most
///   an eighth of it (so a leaked token cannot starve the others);
/// - the **shared** room, for everyone else; one client address (an IPv6
///   one's whole /64) takes at most an eighth of it.
///
/// Shares are kept in a fixed table of counters indexed by a keyed hash of
/// the token or the address (two that share a counter share a cap: rare,
/// and never more room than the caps allow), so the budget takes no lock
/// and no map grows with the clients seen.
///
/// Its own rather than tokio's `Semaphore` (whose `acquire_many_owned`
/// under a timeout would do the room): a semaphore locks its waiter list on
/// every release, a mutex shared by every form request, which the request
/// path must not take, and it has no notion of shares. Here taking and
/// giving back room is a few atomic operations; only a body that has to
/// wait for room takes a slower path. Single-threaded the two cost the same
/// (`instructions.py`, form POST: 64,118 instructions per request with the
/// atomics, 64,036 with the semaphore).
pub struct InspectBudget {
    inner: Arc<Budget>,
    wait: Duration,
}

/// Whose share of the shared room a client address counts against: an
/// IPv4 address, or an IPv6 address's /64 (one host usually has a whole
/// /64 to pick addresses from, so per address it could take every share).
fn share_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    }
}

/// Which room a body is read in, and whose share it counts against.
pub enum Account<'a> {
    /// A token rows 1 to 4 admitted from its query APPTOKEN.
    Token(&'a Arc<TokenState>),
    /// Anyone else, by client address.
    Client(IpAddr),
}

struct Budget {
    rooms: [Room; 2],
    /// Most KiB one account may hold, per room.
    share_kib: [u64; 2],
    shares: Box<[AtomicU64]>,
    keys: RandomState,
}

struct Room {
    free_kib: AtomicU64,
    waiting: AtomicUsize,
    room: tokio::sync::Notify,
}

const KNOWN: usize = 0;
const SHARED: usize = 1;
/// Counters of the shares: enough that two busy accounts rarely meet.
const SHARE_SLOTS: usize = 4096;

/// Room held in the budget, given back when dropped.
pub struct BudgetPermit {
    budget: Arc<Budget>,
    room: usize,
    slot: usize,
    kib: u64,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget.shares[self.slot].fetch_sub(self.kib, Ordering::SeqCst);
        let room = &self.budget.rooms[self.room];
        room.free_kib.fetch_add(self.kib, Ordering::SeqCst);
        if room.waiting.load(Ordering::SeqCst) > 0 {
            room.room.notify_waiters();
        }
    }
}

impl Budget {
    /// Takes `kib` of `room` within the account's share of `slot`.
    fn try_take(&self, room: usize, slot: usize, kib: u64) -> bool {
        let cap = self.share_kib[room];
        let share = &self.shares[slot];
        if share.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| (v + kib <= cap).then_some(v + kib)).is_err() {
            return false;
        }
        let free = &self.rooms[room].free_kib;
        if free.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(kib)).is_err() {
            share.fetch_sub(kib, Ordering::SeqCst);
            return false;
        }
        true
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
    /// Room for `total_bytes`, half known and half shared; a body waits at
    /// most `wait` for its room.
    pub fn new(total_bytes: usize, wait: Duration) -> Self {
        let half = (total_bytes as u64 / 2048).max(1);
        let room = || Room { free_kib: AtomicU64::new(half), waiting: AtomicUsize::new(0), room: Default::default() };
        let share = (half / 8).max(1);
        let inner = Budget {
            rooms: [room(), room()],
            share_kib: [share, share],
            shares: (0..SHARE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            keys: RandomState::new(),
        };
        Self { inner: Arc::new(inner), wait }
    }

    /// Reserves what a body may take (its length, or the limit when
    /// unknown) in the account's room and share, waiting for room; `None`
    /// when there was none in time.
    async fn reserve(&self, account: &Account<'_>, announced: Option<u64>, limit: usize) -> Option<BudgetPermit> {
        let bytes = announced.map_or(limit as u64, |u| u.min(limit as u64));
        let kib = bytes.div_ceil(1024).max(1);
        let (room, slot) = match account {
            Account::Token(state) => (KNOWN, self.slot(Arc::as_ptr(state) as usize)),
            Account::Client(ip) => (SHARED, self.slot(share_key(*ip))),
        };
        let permit = || BudgetPermit { budget: self.inner.clone(), room, slot, kib };
        if self.inner.try_take(room, slot, kib) {
            return Some(permit());
        }
        let budget = &self.inner;
        let r = &budget.rooms[room];
        let wait = async {
            loop {
                // Registered before looking again, so that room given back
                // in between is not missed.
                let notified = r.room.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                r.waiting.fetch_add(1, Ordering::SeqCst);
                let _waiting = Waiting(&r.waiting);
                if budget.try_take(room, slot, kib) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(self.wait, wait).await.ok().map(|()| permit())
    }

    fn slot(&self, key: impl Hash) -> usize {
        (self.inner.keys.hash_one(key) % SHARE_SLOTS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
    }

    fn free(budget: &InspectBudget, room: usize) -> u64 {
        budget.inner.rooms[room].free_kib.load(Ordering::SeqCst)
    }

    #[test]
    fn an_ipv6_host_shares_one_share_across_its_64() {
        runtime().block_on(async {
            let budget = InspectBudget::new(64 * 1024, Duration::from_millis(50));
            let mut held = Vec::new();
            for i in 0..16u16 {
                let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 7, i, 0, 0, 1));
                if let Some(p) = budget.reserve(&Account::Client(ip), Some(1024), 8 * 1024).await {
                    held.push(p);
                }
            }
            assert_eq!(held.len(), 4, "the /64 took more than one address's share");
            let elsewhere = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 8, 0, 0, 0, 1));
            assert!(budget.reserve(&Account::Client(elsewhere), Some(1024), 8 * 1024).await.is_some());
        });
    }

    #[test]
    fn a_body_waiting_for_room_gets_it_when_room_is_given_back_and_not_otherwise() {
        runtime().block_on(async {
            // 64 KiB: 32 shared, of which one address may hold 4.
            let budget = InspectBudget::new(64 * 1024, Duration::from_millis(300));
            let me = Account::Client("192.0.2.1".parse().unwrap());
            let all = budget.reserve(&me, Some(4 * 1024), 8 * 1024).await.expect("a whole share");
            // No room in the share, none given back: the wait ends empty.
            assert!(budget.reserve(&me, Some(1024), 8 * 1024).await.is_none());
            assert_eq!(budget.inner.rooms[SHARED].waiting.load(Ordering::SeqCst), 0, "a timed-out waiter is counted");
            // Room given back while a body waits: it gets it.
            let give_back = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(all);
            };
            let (got, ()) = tokio::join!(budget.reserve(&me, Some(2048), 8 * 1024), give_back);
            assert_eq!(got.as_ref().map(|p| p.kib), Some(2));
            drop(got);
            assert_eq!(free(&budget, SHARED), 32, "every KiB came back");
        });
    }

    #[test]
    fn one_address_or_token_cannot_take_the_room_of_the_others() {
        runtime().block_on(async {
            let budget = InspectBudget::new(64 * 1024, Duration::from_millis(50));
            let attacker = Account::Client("198.51.100.66".parse().unwrap());
            // The attacker gets its share (4 KiB) and no more...
            let mut held = Vec::new();
            while let Some(p) = budget.reserve(&attacker, None, 1024).await {
                held.push(p);
                assert!(held.len() <= 4, "one address took more than its share");
            }
            assert_eq!(held.len(), 4);
            // ...while another address and a known token still get room.
            let other = Account::Client("203.0.113.9".parse().unwrap());
            assert!(budget.reserve(&other, Some(1024), 1024).await.is_some());
            let token = Arc::new(TokenState::default());
            let known = Account::Token(&token);
            let mut permits = Vec::new();
            for _ in 0..4 {
                permits.push(budget.reserve(&known, None, 1024).await.expect("a token's share"));
            }
            assert!(budget.reserve(&known, None, 1024).await.is_none(), "a token is held to its share too");
            assert_eq!(free(&budget, KNOWN), 28);
            drop((held, permits));
            assert_eq!((free(&budget, KNOWN), free(&budget, SHARED)), (32, 32));
        });
    }
}
