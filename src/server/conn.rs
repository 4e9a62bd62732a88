//! One client connection's life under two deadlines (interface.md §3,
//! `[limits]`), whatever protocol it speaks:
//!
//! - the first request head must be complete within `header_read_timeout`
//!   of accept: the TLS handshake, hyper-util's protocol detection (which
//!   waits for the first bytes with no timer of its own) and the head itself
//!   all count. Later HTTP/1 heads are bounded by hyper's own header timer,
//!   which starts when the previous answer is done;
//! - a connection with no open stream for `keepalive_idle_timeout` is shut
//!   down gracefully. Streams are counted here, by [`Tracked`] around the
//!   service and [`Guarded`] around each answer's body, so HTTP/2 pings
//!   (which hyper answers below the service) are not activity.
//!
//! Knows nothing of tokens or of what the service does.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::wire::Notes;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the connection's streams have done, shared by its requests and the
/// task that drives it. Requests touch two atomics each; no lock.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    /// Streams (requests) whose answer is not over.
    open: AtomicUsize,
    /// When the last stream ended, in nanoseconds since `born`.
    idle_since_ns: AtomicU64,
    /// Whether a complete request head has arrived (the service was called).
    started: AtomicBool,
}

impl Activity {
    /// A connection accepted at `born`.
    pub fn new(born: Instant) -> Arc<Self> {
        Arc::new(Self {
            born,
            open: AtomicUsize::new(0),
            idle_since_ns: AtomicU64::new(0),
            started: AtomicBool::new(false),
        })
    }

    fn opened(&self) {
        self.started.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    fn closed(&self) {
        // The time first, then the count: whoever sees no stream open also
        // sees when the last one ended.
        let ns = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.idle_since_ns.store(ns, Ordering::Release);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether a whole request head has arrived on this connection.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// How long no stream has been open at `now`; `None` while one is.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.born + Duration::from_nanos(self.idle_since_ns.load(Ordering::Acquire));
        Some(now.saturating_duration_since(since))
    }
}

/// One open stream: counted from the service call until its answer's body
/// is over or dropped (or the call is abandoned).
#[derive(Debug)]
struct StreamGuard(Arc<Activity>);

impl StreamGuard {
    fn new(activity: Arc<Activity>) -> Self {
        activity.opened();
        Self(activity)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// The service of one connection, counting its streams in [`Activity`].
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    notes: Notes,
}

impl<S> Tracked<S> {
    /// Wraps the connection's service; each request gets the next of the
    /// connection's head `notes`.
    pub fn new(inner: S, activity: Arc<Activity>, notes: Notes) -> Self {
        Self { inner, activity, notes }
    }
}

impl<S, ReqB, B> tower::Service<Request<ReqB>> for Tracked<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<B>>,
{
    type Response = Response<Guarded<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        crate::wire::attach_note(&self.notes, &mut req);
        let guard = StreamGuard::new(self.activity.clone());
        TrackedFuture { inner: self.inner.call(req), guard: Some(guard) }
    }
}

pin_project_lite::pin_project! {
    /// The service's future; hands the stream's guard on to the answer body.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<StreamGuard>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Guarded<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(result.map(|r| r.map(|inner| Guarded { inner, _guard: guard })))
    }
}

pin_project_lite::pin_project! {
    /// An answer's body; its stream counts as open until it is dropped.
    pub struct Guarded<B> {
        #[pin]
        inner: B,
        _guard: Option<StreamGuard>,
    }
}

impl<B: Body> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The deadlines one connection is driven under.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// The first request head must be complete by then (accept plus
    /// `header_read_timeout`).
    pub first_head_by: Instant,
    /// A connection with no open stream this long is shut down gracefully.
    pub idle: Duration,
    /// How long a graceful shutdown for idleness may take before the
    /// connection is dropped (a peer that never answers the GOAWAY's ping).
    pub close_grace: Duration,
}

/// Wakes the connection's task for its timers and its stop signal, and
/// notes that one of them fired: the driving loop polls them only then, not
/// at each of the connection's wake-ups (three or more a request). Polling
/// the two timers and the stop signal at every wake-up cost about 600
/// user-space instructions a request (`instructions.py`, workload b).
#[derive(Debug, Default)]
struct SideWake {
    fired: AtomicBool,
    /// The connection task's waker; a per-connection lock, taken when the
    /// task's waker changes (once) and when a timer or the stop fires.
    task: Mutex<Option<Waker>>,
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(w) = self.task.lock().ok().as_deref().and_then(Option::as_ref) {
            w.wake_by_ref();
        }
    }
}

/// Drives `conn` until it ends: drops it when no request head has arrived
/// by the first deadline; shuts it down gracefully (`shutdown`) when idle
/// too long or when `stop` turns true (the server's shutdown, whose grace
/// period the caller bounds).
pub async fn drive<C: Future>(
    conn: Pin<&mut C>,
    mut shutdown: impl FnMut(Pin<&mut C>),
    activity: &Activity,
    deadlines: Deadlines,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn = conn;
    let first = tokio::time::sleep_until(deadlines.first_head_by);
    let idle = tokio::time::sleep_until(Instant::now() + deadlines.idle);
    tokio::pin!(first, idle);
    let mut past_first = false;
    // Set once a graceful shutdown was asked for.
    let mut closing = false;
    let mut stopping = *stop.borrow();
    if stopping {
        shutdown(conn.as_mut());
        closing = true;
    }
    let changed = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(changed);
    let side = Arc::new(SideWake::default());
    let side_waker = Waker::from(side.clone());
    let mut task_waker: Option<Waker> = None;
    // The timers and the stop are polled on the first pass (to register
    // them), then whenever one of them has fired.
    let mut look = true;
    std::future::poll_fn(|cx| loop {
        if conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !task_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let w = cx.waker().clone();
            if let Ok(mut g) = side.task.lock() {
                *g = Some(w.clone());
            }
            task_waker = Some(w);
        }
        if !std::mem::take(&mut look) && !side.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut side_cx = Context::from_waker(&side_waker);
        if !past_first && first.as_mut().poll(&mut side_cx).is_ready() {
            if !activity.started() {
                // Silent, a few bytes, half a preface, a head cut short:
                // closed without an answer, as hyper's header timer does.
                return Poll::Ready(());
            }
            past_first = true;
        }
        if idle.as_mut().poll(&mut side_cx).is_ready() {
            let now = Instant::now();
            if closing {
                // A graceful shutdown for idleness that the peer holds up.
                if !stopping {
                    return Poll::Ready(());
                }
                idle.as_mut().reset(now + deadlines.idle);
            } else {
                match activity.idle_for(now) {
                    // Before the first head only the first deadline counts.
                    _ if !activity.started() => idle.as_mut().reset(now + deadlines.idle),
                    Some(d) if d >= deadlines.idle => {
                        shutdown(conn.as_mut());
                        closing = true;
                        idle.as_mut().reset(now + deadlines.close_grace);
                    }
                    Some(d) => idle.as_mut().reset(now + (deadlines.idle - d)),
                    None => idle.as_mut().reset(now + deadlines.idle),
                }
            }
            // The reset timer is polled again, and the connection too.
            look = true;
        }
        if !stopping && changed.as_mut().poll(&mut side_cx).is_ready() {
            // A stop, or a dropped sender (which is a stop too).
            stopping = true;
            if !closing {
                shutdown(conn.as_mut());
                closing = true;
            }
            look = true;
        }
        if !look {
            return Poll::Pending;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stream_is_open_from_the_call_until_its_body_is_dropped() {
        use tower::{Service, ServiceExt};
        let activity = Activity::new(Instant::now());
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
        });
        let mut svc = Tracked::new(inner, activity.clone(), crate::wire::notes());
        assert!(!activity.started());
        let fut = svc.ready().await.unwrap().call(Request::new(()));
        assert!(activity.started());
        assert_eq!(activity.idle_for(Instant::now()), None);
        let resp = fut.await.unwrap();
        assert_eq!(activity.idle_for(Instant::now()), None, "the answer's body is still being sent");
        drop(resp);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(activity.idle_for(Instant::now()), Some(Duration::from_secs(3)));
        // An abandoned call closes its stream too.
        let fut = svc.ready().await.unwrap().call(Request::new(()));
        assert_eq!(activity.idle_for(Instant::now()), None);
        drop(fut);
        assert_eq!(activity.idle_for(Instant::now()), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_head_is_dropped_at_the_first_deadline() {
        let activity = Activity::new(Instant::now());
        let (_tx, rx) = watch::channel(false);
        let d = Deadlines {
            first_head_by: Instant::now() + Duration::from_secs(2),
            idle: Duration::from_secs(60),
            close_grace: Duration::from_secs(2),
        };
        let conn = std::future::pending::<()>();
        tokio::pin!(conn);
        let started = Instant::now();
        drive(conn, |_| panic!("no graceful shutdown for a silent connection"), &activity, d, rx).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
