//! What hyper's HTTP/1 parser reads and then forgets: a fragment in the
//! request target (the URI parser drops `#` and all that follows) and a
//! `Content-Length` beside `Transfer-Encoding` (hyper drops the length and
//! follows the chunked framing). interface.md §5 refuses both before any
//! decision, so the connection's bytes are watched on their way into hyper
//! by [`HeadWatch`], which notes these two facts of each request head and
//! hands the notes, in request order, to the service ([`attach_note`]);
//! `proxy::framing` refuses a request whose note says so.
//!
//! The watch reads each head as httparse (the parser hyper uses) does, but
//! only for the request line and the two framing headers, in place where
//! the head lies in one read (a full httparse parse per request cost about
//! 2,500 instructions, a copy and a parse too many; this costs a few
//! hundred), and follows the body's framing by hyper's rules (chunked when
//! the last coding is `chunked`, else `Content-Length`, else none) to find
//! the next head. A proptest pins it to httparse. It only reads: the bytes go to hyper
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
        // Every request takes its note, in order; only one that says
        // something is stored (an extension costs an allocation).
        if let Some(note) = notes.pop().filter(|n| *n != HeadNote::default()) {
            req.extensions_mut().insert(note);
        }
    }
}

/// What a complete request head says, as far as the watch cares.
#[derive(Debug, Default)]
struct HeadFacts {
    /// The HTTP/2 preface: stop watching.
    http2: bool,
    /// A `#` in the request target.
    fragment: bool,
    /// The last `Transfer-Encoding`'s last coding is `chunked` (Some(true)),
    /// or another (Some(false)); None: no such header.
    chunked: Option<bool>,
    /// The `Content-Length`, if any.
    length: Option<u64>,
    /// A `Content-Length` that is not a number (hyper refuses it).
    unframed: bool,
}

/// Looks at `bytes` for one complete request head: its length and facts,
/// or `None` while it is not complete. Lines end in LF or CRLF and empty
/// lines before the request line are skipped, as httparse reads them; a
/// header line is `name:value` (httparse, and so hyper, refuses anything
/// else, and a head it refuses ends the connection before its note is
/// used). Pinned to httparse by a proptest below.
fn scan_head(bytes: &[u8]) -> Option<(usize, HeadFacts)> {
    let mut facts = HeadFacts::default();
    let mut request_line = true;
    let mut line_start = 0;
    // One searcher for every line end of the head.
    for nl in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[line_start..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line_start = nl + 1;
        if line.is_empty() {
            if request_line {
                // Empty lines before the request line are skipped.
                continue;
            }
            return Some((nl + 1, facts));
        }
        if request_line {
            request_line = false;
            if line.starts_with(b"PRI * HTTP/2.0") {
                facts.http2 = true;
                return Some((nl + 1, facts));
            }
            facts.fragment = memchr::memchr(b'#', line).is_some();
            continue;
        }
        let header = |name: &[u8]| {
            line.len() > name.len() && line[name.len()] == b':' && line[..name.len()].eq_ignore_ascii_case(name)
        };
        match line[0] {
            b'c' | b'C' if header(b"content-length") => {
                let v = line[15..].trim_ascii();
                match std::str::from_utf8(v).ok().and_then(|v| v.parse::<u64>().ok()) {
                    Some(n) if v.iter().all(u8::is_ascii_digit) => facts.length = Some(n),
                    _ => facts.unframed = true,
                }
            }
            b't' | b'T' if header(b"transfer-encoding") => {
                // hyper: chunked when the last coding of the last header is.
                let last = line[18..].rsplit(|&b| b == b',').next().unwrap_or_default();
                facts.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            _ => {}
        }
    }
    None
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
                State::Head(buf) if buf.is_empty() => match scan_head(bytes) {
                    // The usual case: the whole head in one read, looked at
                    // where it lies.
                    Some((len, facts)) => {
                        self.after_head(facts);
                        len
                    }
                    None => {
                        buf.extend_from_slice(bytes);
                        bytes.len()
                    }
                },
                State::Head(buf) => {
                    let before = buf.len();
                    buf.extend_from_slice(bytes);
                    match scan_head(buf) {
                        Some((len, facts)) => {
                            self.after_head(facts);
                            len - before
                        }
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

    /// Notes a complete head and moves on to its body.
    fn after_head(&mut self, facts: HeadFacts) {
        let note = HeadNote {
            fragment: facts.fragment,
            length_and_chunked: facts.chunked.is_some() && facts.length.is_some(),
        };
        self.state = match (facts.chunked, facts.length) {
            _ if facts.http2 || facts.unframed => State::Off,
            (Some(true), _) => State::ChunkSize(Vec::new()),
            // hyper refuses a body it cannot frame, and closes.
            (Some(false), _) => State::Off,
            (None, Some(0) | None) => State::Head(Vec::new()),
            (None, Some(n)) => State::Body(n),
        };
        if !facts.http2 && self.notes.push(note).is_err() {
            self.state = State::Off;
        }
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
                (proptest::bool::ANY, proptest::bool::ANY, proptest::bool::ANY, 0u8..3),
            ), 1..6),
            piece in 1usize..40,
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (path, len, chunked, both, (upper, bare_lf, te_first, extra)) in &reqs {
                let eol = if *bare_lf { "\n" } else { "\r\n" };
                let name = |n: &str| if *upper { n.to_ascii_uppercase() } else { n.to_string() };
                let body: Vec<u8> = vec![b'#'; usize::from(len.unwrap_or(0))];
                let mut head = format!("{eol}POST {path} HTTP/1.1{eol}Host: h{eol}");
                for i in 0..*extra {
                    head.push_str(&format!("X-Content-Length-{i}: 9{eol}"));
                }
                let cl = format!("{}: {}{eol}", name("Content-Length"), body.len());
                let te = format!("{}: gzip, chunked{eol}", name("Transfer-Encoding"));
                match (*chunked, *both, *te_first) {
                    (true, true, true) => head.push_str(&(te + &cl)),
                    (true, true, false) => head.push_str(&(cl + &te)),
                    (true, false, _) => head.push_str(&te),
                    (false, _, _) => head.push_str(&cl),
                }
                head.push_str(eol);
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
