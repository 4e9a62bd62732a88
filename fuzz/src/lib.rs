//! What the `wire` targets share: a real hyper HTTP/1 connection served
//! over `wire::HeadWatch` from bytes in memory, and the check that holds
//! the watch's head count to hyper's request count. The gateway's safety
//! rests on that count: a request hyper serves without a note must be the
//! head the watch saw at the same index.

use std::cell::RefCell;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokengate::wire::{self, HeadNote, HeadWatch};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// hyper's smallest read buffer, and so the longest head it takes: the
/// gateway's own floor (`max_header_bytes.max(8192)`), small enough that
/// fuzzed inputs reach it.
pub const MAX_HEAD: usize = 8192;

/// The connection's incoming bytes, in reads of the sizes given (cycled; a
/// read is also cut short by hyper's buffer), then end of file. Writes
/// vanish.
struct Feed<'a> {
    rest: &'a [u8],
    sizes: &'a [usize],
    turn: usize,
}

impl AsyncRead for Feed<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let want = match self.sizes {
            [] => usize::MAX,
            s => s[self.turn % s.len()].max(1),
        };
        self.turn += 1;
        let n = want.min(buf.remaining()).min(self.rest.len());
        let (now, later) = self.rest.split_at(n);
        buf.put_slice(now);
        self.rest = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Feed<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One request hyper served: its method, its URI, and whether the watch
/// gave it a note.
#[derive(Debug)]
pub struct Served {
    pub method: String,
    pub uri: http::Uri,
    pub note: Option<HeadNote>,
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
}

/// Serves `stream` (read in pieces of `sizes`) on one hyper HTTP/1
/// connection as the gateway does, and checks that every request served
/// without a note is the head the watch saw at its index.
pub fn check(stream: &[u8], sizes: &[usize]) {
    let notes = wire::notes();
    let served = Rc::new(RefCell::new(Vec::<Served>::new()));
    let io = HeadWatch::new(Feed { rest: stream, sizes, turn: 0 }, notes.clone(), MAX_HEAD);
    let (svc_notes, svc_served) = (notes.clone(), served.clone());
    let service = service_fn(move |mut req: Request<Incoming>| {
        wire::attach_note(&svc_notes, &mut req);
        svc_served.borrow_mut().push(Served {
            method: req.method().to_string(),
            uri: req.uri().clone(),
            note: req.extensions().get::<HeadNote>().copied(),
        });
        async move {
            // Read the body whole, as a form is, so hyper goes on to the next.
            let _ = req.into_body().collect().await;
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let conn =
        http1::Builder::new().max_buf_size(MAX_HEAD).keep_alive(true).serve_connection(TokioIo::new(io), service);
    RUNTIME.with(|rt| {
        let _ = rt.block_on(conn);
    });
    let seen = notes.seen();
    for (i, req) in served.borrow().iter().enumerate() {
        if req.note.is_some() {
            continue;
        }
        let Some((method, target)) = seen.get(i) else {
            panic!("hyper served request {i} ({req:?}) without a note, but the watch saw only {} heads", seen.len());
        };
        assert_eq!(method.as_slice(), req.method.as_bytes(), "request {i}: {req:?}, watch saw {seen:?}");
        // The watch's target read as hyper reads its own (the URI parser
        // fills in an absolute form's path, and drops nothing else).
        let same = http::Uri::from_maybe_shared(Bytes::copy_from_slice(target)).is_ok_and(|u| u == req.uri);
        assert!(same, "request {i}: hyper {req:?}, watch {:?}", String::from_utf8_lossy(target));
    }
}
