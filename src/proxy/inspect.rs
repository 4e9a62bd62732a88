//! Stage 1 of a request: its body, before anything is decided. A form
//! (`application/x-www-form-urlencoded`) may carry APPTOKEN and ACTION, so
//! it is read whole, up to `limits.inspect_body_bytes`, within the shared
//! [`InspectBudget`]; a body the container would read parameters from in a
//! way the gateway does not follow is refused; any other body is not read
//! and streams on to the upstream if the request is allowed, under the
//! body's idle timeout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

    /// Reads a form body within the inspection budget; `NoRoom` when there
    /// was none in time. A client that stalls between two pieces of its body
    /// is cut off, so it cannot hold a connection slot and a buffer forever.
    pub async fn read_form<B>(&self, body: B) -> Result<InspectedBody<B>, NoRoom>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let limit = self.limit;
        let announced = body.size_hint().upper();
        let permit = self.budget.reserve(announced, limit).await.ok_or(NoRoom)?;
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
                None => match tokio::time::timeout(self.idle_timeout, body.frame()).await {
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

/// The memory that bodies read before deciding may take together, in KiB.
///
/// Its own rather than tokio's `Semaphore` (whose `acquire_many_owned`
/// under a timeout would do the same): the semaphore locks its waiter list
/// on every release, a mutex shared by every form request, which the
/// request path must not take. Here taking and giving back room is one
/// atomic operation each; only a body that has to wait for room takes a
/// slower path. Single-threaded the two cost the same (`instructions.py`,
/// form POST: 64,118 instructions per request with this, 64,036 with the
/// semaphore); what this saves is the lock between worker threads.
pub struct InspectBudget {
    inner: Arc<Budget>,
    wait: Duration,
}

struct Budget {
    free_kib: AtomicU64,
    waiting: AtomicUsize,
    room: tokio::sync::Notify,
}

/// Room held in the budget, given back when dropped.
pub struct BudgetPermit {
    budget: Arc<Budget>,
    kib: u64,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget.free_kib.fetch_add(self.kib, Ordering::SeqCst);
        if self.budget.waiting.load(Ordering::SeqCst) > 0 {
            self.budget.room.notify_waiters();
        }
    }
}

impl Budget {
    fn try_take(&self, kib: u64) -> bool {
        self.free_kib.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |free| free.checked_sub(kib)).is_ok()
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
    /// Room for `total_bytes`; a body waits at most `wait` for its share.
    pub fn new(total_bytes: usize, wait: Duration) -> Self {
        let kib = (total_bytes as u64 / 1024).max(1);
        let inner =
            Budget { free_kib: AtomicU64::new(kib), waiting: AtomicUsize::new(0), room: tokio::sync::Notify::new() };
        Self { inner: Arc::new(inner), wait }
    }

    /// Reserves what a body may take (its length, or the limit when
    /// unknown), waiting for room; `None` when there was none in time.
    async fn reserve(&self, announced: Option<u64>, limit: usize) -> Option<BudgetPermit> {
        let bytes = announced.map_or(limit as u64, |u| u.min(limit as u64));
        let kib = bytes.div_ceil(1024).max(1);
        let permit = || BudgetPermit { budget: self.inner.clone(), kib };
        if self.inner.try_take(kib) {
            return Some(permit());
        }
        let budget = &self.inner;
        let wait = async {
            loop {
                // Registered before looking again, so that room given back
                // in between is not missed.
                let notified = budget.room.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                budget.waiting.fetch_add(1, Ordering::SeqCst);
                let _waiting = Waiting(&budget.waiting);
                if budget.try_take(kib) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(self.wait, wait).await.ok().map(|()| permit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_waiting_for_room_gets_it_when_room_is_given_back_and_not_otherwise() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let budget = InspectBudget::new(4 * 1024, Duration::from_millis(300));
            let all = budget.reserve(Some(4 * 1024), 4 * 1024).await.expect("the whole budget");
            // No room, none given back: the wait ends empty.
            assert!(budget.reserve(Some(1024), 4 * 1024).await.is_none());
            assert_eq!(budget.inner.waiting.load(Ordering::SeqCst), 0, "a timed-out waiter is still counted");
            // Room given back while a body waits: it gets it.
            let give_back = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(all);
            };
            let (got, ()) = tokio::join!(budget.reserve(Some(2048), 4 * 1024), give_back);
            assert_eq!(got.as_ref().map(|p| p.kib), Some(2));
            let rest = budget.reserve(Some(2048), 4 * 1024).await;
            assert!(rest.is_some(), "the rest is free");
            assert!(budget.reserve(Some(1), 4 * 1024).await.is_none(), "and no more");
            drop((got, rest));
            assert_eq!(budget.inner.free_kib.load(Ordering::SeqCst), 4, "every KiB came back");
        });
    }
}
