//! What hyper's HTTP/1 parser reads and then forgets: a fragment in the
//! request target (the URI parser drops `#` and all that follows) and a
//! `Content-Length` beside `Transfer-Encoding` (hyper drops the length and
//! follows the chunked framing). interface.md §5 refuses both before any
//! decision, so the connection's bytes are watched on their way into hyper
//! by [`HeadWatch`], which counts the request heads and marks the first
//! that says either (its [`HeadNote`]); [`attach_note`] hands the note to
//! that request and `proxy::framing` refuses it, closing the connection.
//!
//! The watch reads each head as httparse (the parser hyper uses) does, but
//! only for the request line and the two framing headers, in place where
//! the head lies in one read (a full httparse parse per request cost about
//! 2,500 instructions, a copy and a parse too many; this costs a few
//! hundred), and follows the body's framing by hyper's rules (chunked when
//! the last coding is `chunked`, else `Content-Length`, else none) to find
//! the next head. A proptest pins it to httparse, unit tests to hyper's
//! chunked decoder where the two differ, and the `wire` fuzz targets to a
//! real hyper connection. It only reads: the bytes go to hyper unchanged.
//!
//! It fails closed. Once it has marked a head it stops watching, and every
//! later request of the connection is refused as [`HeadNote::Unwatched`]
//! (the refusal closes the connection in any case). Should it lose the
//! framing (a head or chunk line it cannot read or that is longer than
//! hyper would take, a chunk size it cannot parse: hyper then refuses the
//! connection itself), every request from there on is refused the same
//! way: no request is taken on a connection whose heads were not seen. Only
//! a connection that opens with the HTTP/2 preface is not watched: its
//! framing is the h2 crate's, and `proxy::framing` checks what can be
//! checked there.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why an HTTP/1 request is refused for what its connection's bytes held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadNote {
    /// The request target had a `#` fragment.
    Fragment,
    /// The head had both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// The watch could not follow the connection's framing up to this
    /// head, or stopped after an earlier head it marked.
    Unwatched,
}

impl HeadNote {
    fn bits(self) -> u64 {
        match self {
            HeadNote::Fragment => 0,
            HeadNote::LengthAndChunked => 1,
            HeadNote::Unwatched => 2,
        }
    }

    fn from_bits(bits: u64) -> Self {
        match bits {
            0 => HeadNote::Fragment,
            1 => HeadNote::LengthAndChunked,
            _ => HeadNote::Unwatched,
        }
    }
}

/// What one connection's watch and its service share: the index of the
/// first marked head with its note, and how many requests the service has
/// taken. Both run in the connection's own task, one after the other
/// (hyper reads a head's bytes before it calls the service for it).
#[derive(Debug)]
pub struct Marks {
    /// `index << 2 | note`, or [`Marks::NONE`].
    first: AtomicU64,
    /// HTTP/1 requests taken so far.
    taken: AtomicU64,
    /// Each head seen whole, in order: its method and target, for the fuzz
    /// target and tests that hold the watch's count to hyper's.
    #[cfg(any(test, fuzzing))]
    seen: std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Marks {
    const NONE: u64 = u64::MAX;

    /// Marks head `index` (counted from 0), unless an earlier one is.
    fn mark(&self, index: u64, note: HeadNote) {
        let _ = self.first.fetch_min(index << 2 | note.bits(), Ordering::Release);
    }

    /// The method and target of each head seen whole so far, in order (for
    /// tests and fuzzing).
    #[cfg(any(test, fuzzing))]
    pub fn seen(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
}

/// The marks of one connection.
pub type Notes = Arc<Marks>;

/// A new connection's marks: none yet.
pub fn notes() -> Notes {
    Arc::new(Marks {
        first: AtomicU64::new(Marks::NONE),
        taken: AtomicU64::new(0),
        #[cfg(any(test, fuzzing))]
        seen: std::sync::Mutex::default(),
    })
}

/// Gives an HTTP/1 request its note, if its head or an earlier one was
/// marked, into its extensions.
pub fn attach_note<B>(notes: &Notes, req: &mut http::Request<B>) {
    if req.version() < http::Version::HTTP_2 {
        // Every request takes its index, in order (one at a time: HTTP/1).
        let index = notes.taken.load(Ordering::Relaxed);
        notes.taken.store(index + 1, Ordering::Relaxed);
        let first = notes.first.load(Ordering::Acquire);
        if first != Marks::NONE && index >= first >> 2 {
            let note = if index == first >> 2 { HeadNote::from_bits(first & 3) } else { HeadNote::Unwatched };
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
    /// A `Content-Length` that is not a number (hyper refuses it unless a
    /// `Transfer-Encoding` came before it).
    unframed: bool,
    /// Any `Content-Length` at all, read or not.
    any_length: bool,
    /// The method and target (for tests and fuzzing: [`Marks::seen`]).
    #[cfg(any(test, fuzzing))]
    request: (Vec<u8>, Vec<u8>),
}

/// A request head read so far: what its complete lines said and where the
/// next line begins.
#[derive(Debug, Default)]
struct HeadScan {
    facts: HeadFacts,
    /// Where the first line not yet read whole begins.
    line_start: usize,
    /// How far the bytes were searched for a line end.
    searched: usize,
    /// The request line was read.
    past_request_line: bool,
    /// Bytes searched in all, for the test that each is searched once.
    #[cfg(test)]
    examined: usize,
}

/// Looks at `bytes` for one complete request head: its length and facts,
/// or `None` while it is not complete. Lines end in LF or CRLF and empty
/// lines before the request line are skipped, as httparse reads them; a
/// header line is `name:value` (httparse, and so hyper, refuses anything
/// else, and a head it refuses ends the connection before its note is
/// used). Pinned to httparse by a proptest below. `scan` keeps what the
/// complete lines so far said, so that a head read in many pieces is
/// scanned once, not once per piece (which would be quadratic in its size).
fn scan_head(scan: &mut HeadScan, bytes: &[u8]) -> Option<usize> {
    let facts = &mut scan.facts;
    // One searcher for every line end of the head, from where the last
    // call stopped looking: a head that trickles in is read once in all.
    let from = scan.searched;
    scan.searched = bytes.len();
    #[cfg(test)]
    {
        scan.examined += bytes.len() - from;
    }
    for nl in memchr::memchr_iter(b'\n', &bytes[from..]) {
        let nl = from + nl;
        let line = &bytes[scan.line_start..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        scan.line_start = nl + 1;
        if line.is_empty() {
            if !scan.past_request_line {
                // Empty lines before the request line are skipped.
                continue;
            }
            return Some(nl + 1);
        }
        if !scan.past_request_line {
            scan.past_request_line = true;
            if line.starts_with(b"PRI * HTTP/2.0") {
                facts.http2 = true;
                return Some(nl + 1);
            }
            // A `#` in the target: after the method's space, before the
            // next (a method may hold a `#` too). Looked at only when there
            // is a `#` at all.
            facts.fragment = memchr::memchr(b'#', line).is_some() && {
                let after_method = memchr::memchr(b' ', line).map_or(&[][..], |i| &line[i + 1..]);
                memchr::memchr(b'#', after_method).is_some_and(|h| memchr::memchr(b' ', &after_method[..h]).is_none())
            };
            #[cfg(any(test, fuzzing))]
            {
                let mut parts = line.split(|&b| b == b' ');
                let method = parts.next().unwrap_or_default();
                let target = parts.next().unwrap_or_default();
                facts.request = (method.to_vec(), target.to_vec());
            }
            continue;
        }
        let header = |name: &[u8]| {
            line.len() > name.len() && line[name.len()] == b':' && line[..name.len()].eq_ignore_ascii_case(name)
        };
        match line[0] {
            b'c' | b'C' if header(b"content-length") => {
                facts.any_length = true;
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
    /// Gathering a request head (the bytes kept only while it is not
    /// whole in one read), and what its lines said so far.
    Head(Vec<u8>, HeadScan),
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

impl State {
    /// Waiting for the next request head.
    fn head() -> Self {
        State::Head(Vec::new(), HeadScan::default())
    }
}

/// The longest chunk line or trailer line followed whatever `max_head` is:
/// hyper's own limits on a body's chunk extensions and trailers (16 KiB
/// each), and a line's end.
const CHUNK_LINES: usize = 16 * 1024 + 64;

/// An I/O stream whose incoming bytes are watched for [`HeadNote`]s.
pub struct HeadWatch<T> {
    inner: T,
    state: State,
    notes: Notes,
    /// Heads seen whole so far: the index of the next one.
    heads: u64,
    /// The longest head the watch gathers: a longer one is one hyper
    /// refuses (chunk and trailer lines may be as long as [`CHUNK_LINES`]).
    max_head: usize,
}

impl<T> HeadWatch<T> {
    /// Watches `inner`'s incoming bytes, marking into `notes`; `max_head`
    /// is the longest head hyper is set to take (`limits.max_header_bytes`,
    /// its read buffer).
    pub fn new(inner: T, notes: Notes, max_head: usize) -> Self {
        Self { inner, state: State::head(), notes, heads: 0, max_head }
    }

    /// Stops watching: this head and every later one are refused.
    fn lose(&mut self) {
        self.notes.mark(self.heads, HeadNote::Unwatched);
        self.state = State::Off;
    }

    /// Follows `bytes`, the next ones read from the connection.
    fn watch(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let in_trailers = matches!(self.state, State::Trailers(_));
            let used = match &mut self.state {
                State::Off => return,
                State::Head(buf, scan) if buf.is_empty() => match scan_head(scan, bytes) {
                    // The usual case: the whole head in one read, looked at
                    // where it lies.
                    Some(len) => {
                        let facts = std::mem::take(&mut scan.facts);
                        self.after_head(facts);
                        len
                    }
                    None => {
                        buf.extend_from_slice(bytes);
                        bytes.len()
                    }
                },
                State::Head(buf, scan) => {
                    let before = buf.len();
                    buf.extend_from_slice(bytes);
                    match scan_head(scan, buf) {
                        Some(len) => {
                            let facts = std::mem::take(&mut scan.facts);
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
                        self.state = State::head();
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
                            // hyper ends a trailer line at CRLF only: a bare
                            // LF is part of it.
                            let whole = !in_trailers || line.ends_with(b"\r\n");
                            if whole {
                                let line = std::mem::take(line);
                                self.after_line(&line);
                            }
                            i + 1
                        }
                    }
                }
            };
            bytes = &bytes[used..];
            // hyper refuses a head longer than its buffer, and takes 16 KiB
            // of chunk extensions and of trailers whatever that buffer is:
            // a longer run than hyper takes cannot be followed.
            let (gathered, most) = match &self.state {
                State::Head(buf, _) => (buf.len(), self.max_head),
                State::ChunkSize(buf) | State::ChunkEnd(buf) | State::Trailers(buf) => {
                    (buf.len(), self.max_head.max(CHUNK_LINES))
                }
                _ => (0, 0),
            };
            if gathered > most {
                self.lose();
            }
        }
    }

    /// Marks a complete head if it says something, and moves on to its body.
    fn after_head(&mut self, facts: HeadFacts) {
        if facts.http2 {
            // The preface opens an HTTP/2 connection; anywhere else hyper
            // refuses it, and nothing after it is taken.
            if self.heads == 0 {
                self.state = State::Off;
            } else {
                self.lose();
            }
            return;
        }
        #[cfg(any(test, fuzzing))]
        self.notes.seen.lock().unwrap().push(facts.request.clone());
        let note = if facts.fragment {
            Some(HeadNote::Fragment)
        } else if facts.chunked.is_some() && facts.any_length {
            Some(HeadNote::LengthAndChunked)
        } else {
            None
        };
        if let Some(note) = note {
            // Refused, and the connection with it: nothing later is taken.
            self.notes.mark(self.heads, note);
            self.heads += 1;
            self.lose();
            return;
        }
        self.heads += 1;
        match (facts.chunked, facts.length) {
            // hyper refuses a head whose body it cannot frame, and closes.
            _ if facts.unframed => self.lose(),
            (Some(false), _) => self.lose(),
            (Some(true), _) => self.state = State::ChunkSize(Vec::new()),
            (None, Some(0) | None) => self.state = State::head(),
            (None, Some(n)) => self.state = State::Body(n),
        }
    }

    /// A whole line of a chunked body, read as hyper's decoder reads it:
    /// every line ends in CRLF.
    fn after_line(&mut self, line: &[u8]) {
        let next = match std::mem::replace(&mut self.state, State::Off) {
            State::ChunkSize(_) => match chunk_size(line) {
                Some(0) => Some(State::Trailers(Vec::new())),
                Some(n) => Some(State::ChunkData(n)),
                None => None,
            },
            State::ChunkEnd(_) if line == b"\r\n" => Some(State::ChunkSize(Vec::new())),
            State::Trailers(_) if line == b"\r\n" => Some(State::head()),
            // A trailer line: hyper refuses a CR anywhere but at its end.
            State::Trailers(_) if memchr::memchr(b'\r', line) == line.len().checked_sub(2) => {
                Some(State::Trailers(Vec::new()))
            }
            _ => None,
        };
        match next {
            Some(state) => self.state = state,
            None => self.lose(),
        }
    }
}

/// The size of a chunk-size line (with its CRLF) as hyper reads it: hex
/// digits (any number of them, leading zeros too, while the value fits in
/// 64 bits), then spaces or tabs, then an optional `;` extension, then CRLF;
/// `None` where hyper refuses the line.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    if memchr::memchr2(b'\r', b'\n', line).is_some() {
        return None;
    }
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16)?;
        size = size.checked_mul(16)?.checked_add(u64::from(d))?;
    }
    let rest = &line[digits..];
    let blanks = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    match rest.get(blanks) {
        None | Some(b';') => Some(size),
        Some(_) => None,
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

    /// The first mark the watch makes on `stream` read in pieces of
    /// `piece` bytes: the head's index and its note.
    fn mark_of(stream: &[u8], piece: usize) -> Option<(u64, HeadNote)> {
        let notes = notes();
        let mut w = HeadWatch::new((), notes.clone(), 64 * 1024);
        for chunk in stream.chunks(piece.max(1)) {
            w.watch(chunk);
        }
        let first = notes.first.load(Ordering::Relaxed);
        (first != Marks::NONE).then(|| (first >> 2, HeadNote::from_bits(first & 3)))
    }

    /// What `requests` requests taken in order get from the marks.
    fn taken(notes: &Notes, requests: usize) -> Vec<Option<HeadNote>> {
        (0..requests)
            .map(|_| {
                let mut req = http::Request::new(());
                attach_note(notes, &mut req);
                req.extensions().get::<HeadNote>().copied()
            })
            .collect()
    }

    const BODIES: &[u8] = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n\
        POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 22\r\n\r\nGET /c#x HTTP/1.1\r\n\r\n\
        POST /d HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nGET /\r\n0\r\nX-T: 1\r\n\r\n";

    #[test]
    fn the_first_head_that_says_something_is_marked_across_bodies_of_every_framing() {
        let fragment = [BODIES, b"GET /e#f HTTP/1.1\r\nHost: h\r\n\r\nGET /h HTTP/1.1\r\n\r\n"].concat();
        let both = [
            BODIES,
            b"POST /g HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]
        .concat();
        let plain = [BODIES, b"GET /h HTTP/1.1\r\nHost: h\r\n\r\n"].concat();
        // Whatever pieces the bytes arrive in.
        for piece in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(mark_of(&fragment, piece), Some((3, HeadNote::Fragment)), "pieces of {piece}");
            assert_eq!(mark_of(&both, piece), Some((3, HeadNote::LengthAndChunked)), "pieces of {piece}");
            assert_eq!(mark_of(&plain, piece), None, "pieces of {piece}");
        }
    }

    #[test]
    fn requests_from_the_marked_one_on_are_refused() {
        let notes = notes();
        let mut w = HeadWatch::new((), notes.clone(), 64 * 1024);
        w.watch(&[BODIES, b"GET /e#f HTTP/1.1\r\nHost: h\r\n\r\nGET /h HTTP/1.1\r\n\r\n"].concat());
        assert_eq!(
            taken(&notes, 6),
            vec![None, None, None, Some(HeadNote::Fragment), Some(HeadNote::Unwatched), Some(HeadNote::Unwatched)]
        );
        // An HTTP/2 request never takes an index.
        let notes = super::notes();
        notes.mark(0, HeadNote::Unwatched);
        let mut req = http::Request::builder().version(http::Version::HTTP_2).body(()).unwrap();
        attach_note(&notes, &mut req);
        assert!(req.extensions().get::<HeadNote>().is_none());
    }

    #[test]
    fn lost_framing_refuses_what_follows_and_http2_is_not_watched() {
        assert_eq!(mark_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET /a#b HTTP/1.1\r\n\r\n", 5), None);
        // The preface after a request: hyper refuses it; nothing is taken.
        assert_eq!(mark_of(b"GET / HTTP/1.1\r\n\r\nPRI * HTTP/2.0\r\n\r\n", 5), Some((1, HeadNote::Unwatched)));
        // A chunk size that is not hex: hyper refuses; the next head is.
        let lost = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /b HTTP/1.1\r\n\r\n";
        assert_eq!(mark_of(lost, 4096), Some((1, HeadNote::Unwatched)));
        // A length that is not a number, a last coding other than chunked.
        assert_eq!(mark_of(b"POST /a HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 9), Some((1, HeadNote::Unwatched)));
        let gzip = b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(mark_of(gzip, 9), Some((1, HeadNote::Unwatched)));
        // A head longer than hyper takes, and a chunk line as long.
        let long = format!("GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70_000));
        assert_eq!(mark_of(long.as_bytes(), 4096), Some((1, HeadNote::Unwatched)));
        let ext = format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;{}\r\n", "e".repeat(70_000));
        assert_eq!(mark_of(ext.as_bytes(), 4096), Some((1, HeadNote::Unwatched)));
        // A thousand pipelined heads are all followed.
        assert_eq!(mark_of(&b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".repeat(1000), 4096), None);
    }

    #[test]
    fn heads_and_chunks_are_read_as_hyper_reads_them() {
        // A length after the chunked coding: hyper skips it unread (and drops
        // it), but the head had both.
        let both = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n0\r\n\r\n";
        assert_eq!(mark_of(both, 7), Some((0, HeadNote::LengthAndChunked)));
        // A `#` in the method is not in the target.
        assert_eq!(mark_of(b"GE#T / HTTP/1.1\r\n\r\n", 3), None);
        let next = b"GET /ok HTTP/1.1\r\n\r\nGET /x#y HTTP/1.1\r\n\r\n";
        // Leading zeros in a chunk size, as many as the sender likes.
        let zeros = [&b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000000003 \t;a=b\r\nabc\r\n0\r\n\r\n"[..], next].concat();
        assert_eq!(mark_of(&zeros, 5), Some((2, HeadNote::Fragment)));
        // A trailer line runs to CRLF: a bare LF does not end it, so what
        // follows it is more trailer, not a request.
        let trailer = [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\r\nGET /#f HTTP/1.1\r\n\r\n"[..],
            next,
        ]
        .concat();
        for piece in [1, 3, 4096] {
            assert_eq!(mark_of(&trailer, piece), Some((2, HeadNote::Fragment)), "pieces of {piece}");
        }
        // Lines hyper refuses: a bare LF after a size or after data, a CR
        // inside a trailer, a size past 64 bits.
        for bad in [&b"5\nhello\r\n"[..], b"5\r\nhello\n", b"0\r\nX: a\rb\r\n\r\n", b"10000000000000000\r\n"] {
            let stream = [&b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..], bad, next].concat();
            assert_eq!(mark_of(&stream, 4096), Some((1, HeadNote::Unwatched)), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_head_that_trickles_in_is_searched_once() {
        // 12,000 bytes of head, one at a time: each byte searched once, not
        // once per read (which is what made a slow head quadratic).
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        head.extend(b"a:b\n".repeat(1500));
        head.extend(b"X: ".iter().chain(&[b'x'; 5000]));
        let mut w = HeadWatch::new((), notes(), 64 * 1024);
        for b in &head {
            w.watch(std::slice::from_ref(b));
        }
        let State::Head(buf, scan) = &w.state else { panic!("{:?}", w.state) };
        assert_eq!((buf.len(), scan.examined), (head.len(), head.len()));
        // And the head, once whole, is read as in one piece.
        w.watch(b"\r\n\r\nGET /#f HTTP/1.1\r\n\r\n");
        assert_eq!(w.notes.first.load(Ordering::Relaxed), 1 << 2 | HeadNote::Fragment.bits());
    }

    #[test]
    fn chunk_lines_as_long_as_hyper_takes_are_followed_with_the_smallest_head_limit() {
        let ext = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;{}\r\na\r\n0\r\nX-T: {}\r\n\r\nGET /#f HTTP/1.1\r\n\r\n",
            "e".repeat(10_000),
            "t".repeat(10_000)
        );
        let notes = notes();
        let mut w = HeadWatch::new((), notes.clone(), 8192);
        for piece in ext.as_bytes().chunks(1000) {
            w.watch(piece);
        }
        assert_eq!(notes.first.load(Ordering::Relaxed), 1 << 2 | HeadNote::Fragment.bits());
    }

    /// A reference for the proptest: what httparse says of a head alone.
    fn reference(head: &[u8]) -> Option<Option<HeadNote>> {
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Request::new(&mut h);
        r.parse(head).ok()?.is_complete().then_some(())?;
        let has = |n: &str| r.headers.iter().any(|x| x.name.eq_ignore_ascii_case(n));
        Some(if r.path?.contains('#') {
            Some(HeadNote::Fragment)
        } else if has("content-length") && has("transfer-encoding") {
            Some(HeadNote::LengthAndChunked)
        } else {
            None
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
            let mut want = None;
            for (i, (path, len, chunked, both, (upper, bare_lf, te_first, extra))) in reqs.iter().enumerate() {
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
                if let (None, Some(note)) = (want, reference(head.as_bytes()).unwrap()) {
                    want = Some((i as u64, note));
                }
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
            proptest::prop_assert_eq!(mark_of(&stream, piece), want);
        }
    }
}
