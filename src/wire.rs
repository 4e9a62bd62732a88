//! What hyper's HTTP/1 parser reads and then forgets: a fragment in the
//! request target (the URI parser drops `#` and all that follows) and a
//! `Content-Length` beside `Transfer-Encoding` (hyper drops the length and
//! follows the chunked framing). interface.md §5 refuses both before any
//! decision, so the connection's bytes are watched on their way into hyper
//! by [`HeadWatch`], which notes these two facts of each request head and
//! hands the notes, in request order, to the service ([`attach_note`]);
//! `proxy::framing` refuses a request whose note says so.
//!
//! The watch parses each head with httparse, the parser hyper itself uses
//! with the same settings, and follows the body's framing by hyper's rules
//! (chunked when the last coding is `chunked`, else `Content-Length`, else
//! none) to find the next head. It only reads: the bytes go to hyper
//! unchanged. Should it ever lose the framing (a head or chunk it cannot
//! parse: hyper then refuses the connection anyway), it stops watching and
//! the connection's later requests carry no note: they are taken as hyper
//! parsed them, which is what the gateway decides on and forwards in any
//! case (no fragment reaches the upstream; no length beside chunked
//! framing is sent on). An HTTP/2 connection is not watched: its framing is
//! the h2 crate's, and `proxy::framing` checks what can be checked there.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crossbeam_queue::ArrayQueue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one HTTP/1 request head held that hyper does not pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadNote {
    /// The request target had a `#` fragment.
    pub fragment: bool,
    /// The head had both `Content-Length` and `Transfer-Encoding`.
    pub length_and_chunked: bool,
}

/// The notes of one connection, oldest first, shared by its watch and its
/// service (which run in the connection's own task: never contended).
pub type Notes = Arc<ArrayQueue<HeadNote>>;

/// Notes waiting at once; pipelined heads beyond this many stop the watch.
const NOTES: usize = 64;

/// The longest head the watch buffers (hyper refuses a longer one).
const MAX_HEAD: usize = 64 * 1024;

/// A new, empty queue of notes for one connection.
pub fn notes() -> Notes {
    Arc::new(ArrayQueue::new(NOTES))
}

/// Takes the next note for an HTTP/1 request into its extensions.
pub fn attach_note<B>(notes: &Notes, req: &mut http::Request<B>) {
    if req.version() < http::Version::HTTP_2 {
        if let Some(note) = notes.pop() {
            req.extensions_mut().insert(note);
        }
    }
}

/// Where the watch is in the byte stream.
#[derive(Debug)]
enum State {
    /// Gathering a request head.
    Head(Vec<u8>),
    /// Skipping this many bytes of a body.
    Body(u64),
    /// In a chunked body: gathering a chunk-size line.
    ChunkSize(Vec<u8>),
    /// In a chunked body: skipping this many bytes of data, then its CRLF.
    ChunkData(u64),
    /// After a chunk's data: its line end.
    ChunkEnd(Vec<u8>),
    /// After the last chunk: trailer lines until an empty one.
    Trailers(Vec<u8>),
    /// Not watching (HTTP/2, or the framing was lost).
    Off,
}

/// An I/O stream whose incoming bytes are watched for [`HeadNote`]s.
pub struct HeadWatch<T> {
    inner: T,
    state: State,
    notes: Notes,
}

impl<T> HeadWatch<T> {
    /// Watches `inner`'s incoming bytes, noting into `notes`.
    pub fn new(inner: T, notes: Notes) -> Self {
        Self { inner, state: State::Head(Vec::new()), notes }
    }

    /// Follows `bytes`, the next ones read from the connection.
    fn watch(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = match &mut self.state {
                State::Off => return,
                State::Head(buf) => {
                    let before = buf.len();
                    buf.extend_from_slice(bytes);
                    match self.head_end() {
                        Some(end) => end - before,
                        None => bytes.len(),
                    }
                }
                State::Body(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                    n as usize
                }
                State::ChunkData(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::ChunkEnd(Vec::new());
                    }
                    n as usize
                }
                State::ChunkSize(line) | State::ChunkEnd(line) | State::Trailers(line) => {
                    match memchr::memchr(b'\n', bytes) {
                        None => {
                            line.extend_from_slice(bytes);
                            bytes.len()
                        }
                        Some(i) => {
                            line.extend_from_slice(&bytes[..=i]);
                            let line = std::mem::take(line);
                            self.after_line(&line);
                            i + 1
                        }
                    }
                }
            };
            bytes = &bytes[used..];
            if let State::Head(buf) | State::ChunkSize(buf) | State::ChunkEnd(buf) | State::Trailers(buf) = &self.state
            {
                if buf.len() > MAX_HEAD {
                    self.state = State::Off;
                }
            }
        }
    }

    /// Parses the head gathered so far; `Some(length)` once it is complete
    /// (the state then moves on to its body).
    fn head_end(&mut self) -> Option<usize> {
        let State::Head(buf) = &self.state else { return None };
        // httparse needs the whole head; look for its end first.
        if memchr::memmem::find(buf, b"\n\r\n").is_none() && memchr::memmem::find(buf, b"\n\n").is_none() {
            return None;
        }
        if buf.starts_with(b"PRI * HTTP/2.0") {
            self.state = State::Off;
            return None;
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => {
                // hyper refuses it and closes the connection.
                self.state = State::Off;
                return None;
            }
        };
        let mut length: Option<u64> = None;
        let (mut chunked, mut transfer_encoding) = (false, false);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
                // hyper: chunked when the last coding of the last header is.
                chunked = h
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let Some(n) = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok()) else {
                    self.state = State::Off;
                    return None;
                };
                length = Some(n);
            }
        }
        let note = HeadNote {
            fragment: req.path.is_some_and(|p| p.contains('#')),
            length_and_chunked: transfer_encoding && length.is_some(),
        };
        self.state = if transfer_encoding {
            if chunked {
                State::ChunkSize(Vec::new())
            } else {
                // hyper refuses a body it cannot frame.
                State::Off
            }
        } else {
            match length {
                Some(0) | None => State::Head(Vec::new()),
                Some(n) => State::Body(n),
            }
        };
        if self.notes.push(note).is_err() {
            self.state = State::Off;
        }
        Some(len)
    }

    /// A whole line of a chunked body.
    fn after_line(&mut self, line: &[u8]) {
        self.state = match std::mem::replace(&mut self.state, State::Off) {
            State::ChunkSize(_) => match httparse::parse_chunk_size(line) {
                Ok(httparse::Status::Complete((_, 0))) => State::Trailers(Vec::new()),
                Ok(httparse::Status::Complete((_, n))) => State::ChunkData(n),
                _ => State::Off,
            },
            State::ChunkEnd(_) if line == b"\r\n" || line == b"\n" => State::ChunkSize(Vec::new()),
            State::Trailers(_) if line == b"\r\n" || line == b"\n" => State::Head(Vec::new()),
            State::Trailers(_) => State::Trailers(Vec::new()),
            _ => State::Off,
        };
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadWatch<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && !matches!(this.state, State::Off) {
            this.watch(&buf.filled()[before..]);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadWatch<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notes_of(stream: &[u8], piece: usize) -> Vec<HeadNote> {
        let notes = notes();
        let mut w = HeadWatch::new((), notes.clone());
        for chunk in stream.chunks(piece.max(1)) {
            w.watch(chunk);
        }
        std::iter::from_fn(|| notes.pop()).collect()
    }

    const PLAIN: HeadNote = HeadNote { fragment: false, length_and_chunked: false };

    #[test]
    fn each_head_gets_its_note_across_bodies_of_every_framing() {
        let stream = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 22\r\n\r\nGET /c#x HTTP/1.1\r\n\r\n\
            POST /d HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nGET /\r\n0\r\nX-T: 1\r\n\r\n\
            GET /e#f HTTP/1.1\r\nHost: h\r\n\r\n\
            POST /g HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
            GET /h HTTP/1.1\r\nHost: h\r\n\r\n";
        let want = vec![
            PLAIN,
            PLAIN,
            PLAIN,
            HeadNote { fragment: true, length_and_chunked: false },
            HeadNote { fragment: false, length_and_chunked: true },
            PLAIN,
        ];
        // Whatever pieces the bytes arrive in.
        for piece in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(notes_of(stream, piece), want, "read in pieces of {piece}");
        }
    }

    #[test]
    fn http2_and_lost_framing_stop_the_watch() {
        assert!(notes_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 5).is_empty());
        // A chunk size that is not hex: hyper refuses; no note after it.
        let lost = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /b#c HTTP/1.1\r\n\r\n";
        assert_eq!(notes_of(lost, 4096), vec![PLAIN]);
    }

    /// A reference for the proptest: what httparse says of a head alone.
    fn reference(head: &[u8]) -> Option<HeadNote> {
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Request::new(&mut h);
        r.parse(head).ok()?.is_complete().then_some(())?;
        let has = |n: &str| r.headers.iter().any(|x| x.name.eq_ignore_ascii_case(n));
        Some(HeadNote {
            fragment: r.path?.contains('#'),
            length_and_chunked: has("content-length") && has("transfer-encoding"),
        })
    }

    proptest::proptest! {
        #[test]
        fn the_watch_agrees_with_httparse_on_pipelined_requests(
            reqs in proptest::collection::vec((
                "/[a-z#?=&]{0,8}",
                proptest::option::of(0u8..20),
                proptest::bool::ANY,
                proptest::bool::ANY,
            ), 1..6),
            piece in 1usize..40,
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (path, len, chunked, both) in &reqs {
                let mut head = format!("POST {path} HTTP/1.1\r\nHost: h\r\n");
                let body: Vec<u8> = vec![b'#'; usize::from(len.unwrap_or(0))];
                if *chunked {
                    if *both { head.push_str(&format!("Content-Length: {}\r\n", body.len())); }
                    head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                } else {
                    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                }
                want.push(reference(head.as_bytes()).unwrap());
                stream.extend_from_slice(head.as_bytes());
                if *chunked {
                    if !body.is_empty() {
                        stream.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                        stream.extend_from_slice(&body);
                        stream.extend_from_slice(b"\r\n");
                    }
                    stream.extend_from_slice(b"0\r\n\r\n");
                } else {
                    stream.extend_from_slice(&body);
                }
            }
            proptest::prop_assert_eq!(notes_of(&stream, piece), want);
        }
    }
}
