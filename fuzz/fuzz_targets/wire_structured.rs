//! Pipelined requests built from parts (methods, targets with `#`, `?`
//! and escapes, line ends CRLF, LF or CR, Content-Length and
//! Transfer-Encoding in many spellings, chunk sizes with leading zeros,
//! extensions, trailers with bare LF or CR, bodies whose length lies) on a
//! real hyper HTTP/1 connection over `wire::HeadWatch`, read in pieces of
//! the sizes chosen: the same check as `wire`, on streams raw bytes rarely
//! reach.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Eol {
    CrLf,
    Lf,
    Cr,
    CrCrLf,
}

impl Eol {
    fn bytes(&self) -> &'static [u8] {
        match self {
            Eol::CrLf => b"\r\n",
            Eol::Lf => b"\n",
            Eol::Cr => b"\r",
            Eol::CrCrLf => b"\r\r\n",
        }
    }
}

/// Mostly CRLF: other line ends end most connections at once.
#[derive(Arbitrary, Debug)]
struct MaybeEol(u8, Eol);

impl MaybeEol {
    fn bytes(&self) -> &'static [u8] {
        if self.0 < 200 {
            b"\r\n"
        } else {
            self.1.bytes()
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Method {
    Get,
    Post,
    Head,
    Connect,
    Options,
    Hash,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Piece {
    Slash,
    Letters(u8),
    Hash,
    Question,
    Amp,
    Eq,
    Percent,
    Semi,
    Dot,
    Star,
    Space,
    Tab,
    Byte(u8),
}

#[derive(Arbitrary, Debug)]
enum Target {
    Origin(Vec<Piece>),
    Absolute(Vec<Piece>),
    Star,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Version {
    Http11,
    Http10,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Header {
    /// `Content-Length`, in a spelling of the name, then a value.
    Length {
        upper: bool,
        value: LengthValue,
    },
    /// `Transfer-Encoding`, in a spelling of the name, then codings.
    Coding {
        upper: bool,
        value: Coding,
    },
    Host,
    Expect,
    Connection(bool),
    Other(Vec<u8>, Vec<u8>),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum LengthValue {
    /// The body's own length.
    Right,
    /// The body's length plus or minus a little.
    Off(i8),
    Zeros(u8),
    Twice,
    Spaced,
    Plus,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Coding {
    Chunked,
    Upper,
    GzipChunked,
    ChunkedGzip,
    Spaced,
    Empty,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Chunk {
    data: Vec<u8>,
    zeros: u8,
    upper: bool,
    /// Added to the length written.
    off: i8,
    blanks: u8,
    ext: Option<Vec<u8>>,
    size_eol: MaybeEol,
    data_eol: MaybeEol,
}

#[derive(Arbitrary, Debug)]
struct Chunked {
    chunks: Vec<Chunk>,
    last_zeros: u8,
    last_ext: Option<Vec<u8>>,
    trailers: Vec<(Vec<u8>, MaybeEol)>,
    end: MaybeEol,
}

#[derive(Arbitrary, Debug)]
enum Body {
    None,
    Bytes(Vec<u8>),
    Chunked(Chunked),
}

#[derive(Arbitrary, Debug)]
struct Req {
    blank_lines: u8,
    method: Method,
    target: Target,
    version: Version,
    line_eol: MaybeEol,
    headers: Vec<(Header, MaybeEol)>,
    end: MaybeEol,
    body: Body,
}

#[derive(Arbitrary, Debug)]
struct Conn {
    reqs: Vec<Req>,
    sizes: Vec<u8>,
    tail: Vec<u8>,
}

fn pieces(out: &mut Vec<u8>, ps: &[Piece]) {
    for p in ps {
        match p {
            Piece::Slash => out.push(b'/'),
            Piece::Letters(n) => out.extend(std::iter::repeat_n(b'a', usize::from(n % 5) + 1)),
            Piece::Hash => out.push(b'#'),
            Piece::Question => out.push(b'?'),
            Piece::Amp => out.push(b'&'),
            Piece::Eq => out.push(b'='),
            Piece::Percent => out.extend_from_slice(b"%2F"),
            Piece::Semi => out.push(b';'),
            Piece::Dot => out.push(b'.'),
            Piece::Star => out.push(b'*'),
            Piece::Space => out.push(b' '),
            Piece::Tab => out.push(b'\t'),
            Piece::Byte(b) => out.push(*b),
        }
    }
}

fn body_len(body: &Body) -> usize {
    match body {
        Body::None => 0,
        Body::Bytes(b) => b.len(),
        Body::Chunked(c) => c.chunks.iter().map(|c| c.data.len()).sum(),
    }
}

fn hex(n: usize, zeros: u8, upper: bool) -> String {
    let z = "0".repeat(usize::from(zeros % 24));
    if upper {
        format!("{z}{n:X}")
    } else {
        format!("{z}{n:x}")
    }
}

fn write(out: &mut Vec<u8>, r: &Req) {
    for _ in 0..r.blank_lines % 3 {
        out.extend_from_slice(b"\r\n");
    }
    match &r.method {
        Method::Get => out.extend_from_slice(b"GET"),
        Method::Post => out.extend_from_slice(b"POST"),
        Method::Head => out.extend_from_slice(b"HEAD"),
        Method::Connect => out.extend_from_slice(b"CONNECT"),
        Method::Options => out.extend_from_slice(b"OPTIONS"),
        Method::Hash => out.extend_from_slice(b"GE#T"),
        Method::Raw(m) => out.extend_from_slice(m),
    }
    out.push(b' ');
    match &r.target {
        Target::Origin(ps) => {
            out.push(b'/');
            pieces(out, ps);
        }
        Target::Absolute(ps) => {
            out.extend_from_slice(b"http://h");
            pieces(out, ps);
        }
        Target::Star => out.push(b'*'),
        Target::Raw(t) => out.extend_from_slice(t),
    }
    out.push(b' ');
    match &r.version {
        Version::Http11 => out.extend_from_slice(b"HTTP/1.1"),
        Version::Http10 => out.extend_from_slice(b"HTTP/1.0"),
        Version::Raw(v) => out.extend_from_slice(v),
    }
    out.extend_from_slice(r.line_eol.bytes());
    let len = body_len(&r.body);
    for (h, eol) in &r.headers {
        match h {
            Header::Length { upper, value } => {
                out.extend_from_slice(if *upper { b"CONTENT-LENGTH:" } else { b"Content-Length:" });
                let v = match value {
                    LengthValue::Right => format!(" {len}"),
                    LengthValue::Off(d) => format!(" {}", (len as i64 + i64::from(*d)).max(0)),
                    LengthValue::Zeros(z) => format!(" {}{len}", "0".repeat(usize::from(z % 24))),
                    LengthValue::Twice => format!(" {len}, {len}"),
                    LengthValue::Spaced => format!("\t{len} \t"),
                    LengthValue::Plus => format!(" +{len}"),
                    LengthValue::Raw(v) => String::from_utf8_lossy(v).into_owned(),
                };
                out.extend_from_slice(v.as_bytes());
            }
            Header::Coding { upper, value } => {
                out.extend_from_slice(if *upper { b"TRANSFER-ENCODING:" } else { b"transfer-encoding:" });
                match value {
                    Coding::Chunked => out.extend_from_slice(b" chunked"),
                    Coding::Upper => out.extend_from_slice(b" CHUNKED"),
                    Coding::GzipChunked => out.extend_from_slice(b" gzip, chunked"),
                    Coding::ChunkedGzip => out.extend_from_slice(b" chunked, gzip"),
                    Coding::Spaced => out.extend_from_slice(b" \tchunked \t"),
                    Coding::Empty => {}
                    Coding::Raw(v) => out.extend_from_slice(v),
                }
            }
            Header::Host => out.extend_from_slice(b"Host: h"),
            Header::Expect => out.extend_from_slice(b"Expect: 100-continue"),
            Header::Connection(close) => {
                out.extend_from_slice(if *close { b"Connection: close" } else { b"Connection: keep-alive" })
            }
            Header::Other(n, v) => {
                out.extend_from_slice(n);
                out.push(b':');
                out.extend_from_slice(v);
            }
            Header::Raw(v) => out.extend_from_slice(v),
        }
        out.extend_from_slice(eol.bytes());
    }
    out.extend_from_slice(r.end.bytes());
    match &r.body {
        Body::None => {}
        Body::Bytes(b) => out.extend_from_slice(b),
        Body::Chunked(c) => {
            for ch in &c.chunks {
                let n = (ch.data.len() as i64 + i64::from(ch.off % 3)).max(0) as usize;
                out.extend_from_slice(hex(n, ch.zeros, ch.upper).as_bytes());
                out.extend(std::iter::repeat_n(b' ', usize::from(ch.blanks % 3)));
                if let Some(e) = &ch.ext {
                    out.push(b';');
                    out.extend_from_slice(e);
                }
                out.extend_from_slice(ch.size_eol.bytes());
                out.extend_from_slice(&ch.data);
                out.extend_from_slice(ch.data_eol.bytes());
            }
            out.extend_from_slice(hex(0, c.last_zeros, false).as_bytes());
            if let Some(e) = &c.last_ext {
                out.push(b';');
                out.extend_from_slice(e);
            }
            out.extend_from_slice(b"\r\n");
            for (t, eol) in &c.trailers {
                out.extend_from_slice(t);
                out.extend_from_slice(eol.bytes());
            }
            out.extend_from_slice(c.end.bytes());
        }
    }
}

fuzz_target!(|conn: Conn| {
    let mut stream = Vec::new();
    for r in &conn.reqs {
        write(&mut stream, r);
    }
    stream.extend_from_slice(&conn.tail);
    let sizes: Vec<usize> = conn.sizes.iter().take(8).map(|&s| usize::from(s)).collect();
    tokengate_fuzz::check(&stream, &sizes);
});
