//! The Tomcat differential test: the real gateway in front of a real Tomcat 10
//! (tests/tomcat/EchoServer.java) that answers every request with what the
//! servlet container read from it. Hundreds of spellings of a request try to
//! get a write ACTION past a read-only token; whatever the gateway forwards,
//! Tomcat's own `getParameter("ACTION")` must be absent or a read-only
//! action, and no APPTOKEN but the gateway's upstream credential may reach it.
//!
//! Needs a JDK and Tomcat 10's jars (Debian: `openjdk-17-jdk-headless` and
//! `libtomcat10-java`, jars in /usr/share/java, or set `TOMCAT_JARS` to their
//! folder). Without them the test fails; it never passes silently.
//!
//! `TOMCAT_DIFF_SEED=<u64>` changes the seed of the generated combinations;
//! `TOMCAT_DIFF_VERBOSE=1` prints every case and what became of it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{self, Gateway};

// ---------------------------------------------------------------------------
// The Tomcat upstream
// ---------------------------------------------------------------------------

/// The jars of an embedded Tomcat 10, from `TOMCAT_JARS` or /usr/share/java.
const JARS: &[&str] = &[
    "tomcat10-servlet-api.jar",
    "tomcat10-api.jar",
    "tomcat10-catalina.jar",
    "tomcat10-coyote.jar",
    "tomcat10-util.jar",
    "tomcat10-util-scan.jar",
    "tomcat10-juli.jar",
    "tomcat10-jni.jar",
    "tomcat10-jaspic-api.jar",
    "tomcat10-annotations-api.jar",
];

const INSTALL_HINT: &str =
    "the Tomcat differential test needs a JDK and Tomcat 10: apt-get install -y openjdk-17-jdk-headless libtomcat10-java \
     (or set TOMCAT_JARS to the folder holding tomcat10-*.jar)";

fn jars() -> Vec<PathBuf> {
    let dir = std::env::var_os("TOMCAT_JARS").map_or_else(|| PathBuf::from("/usr/share/java"), PathBuf::from);
    let jars: Vec<PathBuf> = JARS.iter().map(|j| dir.join(j)).collect();
    let missing: Vec<String> = jars.iter().filter(|j| !j.is_file()).map(|j| j.display().to_string()).collect();
    assert!(missing.is_empty(), "{INSTALL_HINT}; missing: {}", missing.join(", "));
    jars
}

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tomcat/EchoServer.java")
}

/// Compiles EchoServer.java once per source version into a folder under
/// `CARGO_TARGET_TMPDIR`, and returns that folder.
fn compiled() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = source();
        let text = std::fs::read(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        let jars = jars();
        let mut h = Sha256::new();
        h.update(&text);
        for j in &jars {
            h.update(j.to_string_lossy().as_bytes());
        }
        let hash: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(base).unwrap();
        let out = base.join(format!("tomcat-echo-{hash}"));
        if out.join("EchoServer.class").is_file() {
            return out;
        }
        // Compile into a fresh folder and rename it into place, so that two
        // test processes never see a half-written class folder.
        let tmp = tempfile::Builder::new().prefix("tomcat-echo-build").tempdir_in(base).unwrap();
        let result = Command::new("javac")
            .arg("-nowarn")
            .arg("-encoding")
            .arg("UTF-8")
            .arg("-cp")
            .arg(join_paths(&jars))
            .arg("-d")
            .arg(tmp.path())
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run javac ({e}): {INSTALL_HINT}"));
        assert!(
            result.status.success(),
            "javac failed on {}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        let tmp = tmp.keep();
        if std::fs::rename(&tmp, &out).is_err() {
            // Another process won the race; its folder is as good as ours.
            let _ = std::fs::remove_dir_all(&tmp);
            assert!(out.join("EchoServer.class").is_file(), "could not put classes at {}", out.display());
        }
        out
    })
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":")
}

/// A running Tomcat EchoServer on 127.0.0.1; the JVM is killed on drop.
pub struct TomcatUpstream {
    pub addr: SocketAddr,
    child: Child,
    /// Held open: the JVM exits by itself when it reads end of file here,
    /// so it cannot outlive the test process even if drop never runs.
    stdin: Option<ChildStdin>,
    log: Arc<Mutex<Vec<String>>>,
}

impl TomcatUpstream {
    pub fn start() -> Self {
        let classes = compiled();
        let mut cp = jars();
        cp.push(classes.to_path_buf());
        let mut child = Command::new("java")
            .args(["-XX:+UseSerialGC", "-Xmx256m", "-Djava.awt.headless=true", "-cp"])
            .arg(join_paths(&cp))
            .arg("EchoServer")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run java ({e}): {INSTALL_HINT}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for stream in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line.clone());
                    log.lock().unwrap().push(line);
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(p) = line.trim().strip_prefix("PORT=") {
                        break p.parse::<u16>().expect("a port number after PORT=");
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "Tomcat EchoServer did not print PORT= ({e:?}); {INSTALL_HINT}\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        };
        let stdin = child.stdin.take();
        Self { addr: SocketAddr::from(([127, 0, 0, 1], port)), child, stdin, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the JVM printed so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TomcatUpstream {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Sending raw requests and reading every answer on the connection
// ---------------------------------------------------------------------------

/// One HTTP answer as parsed from the wire.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `bytes` exactly as given (writing on a thread, so that an early
/// answer and close cannot deadlock a big body) and returns everything the
/// server sent until it closed.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let s = TcpStream::connect(addr).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut w = s.try_clone().unwrap();
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&data);
    });
    let mut r = s;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let (start, mut last) = (Instant::now(), Instant::now());
    loop {
        match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                last = Instant::now();
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                // A connection left open (an upgrade, a smuggling attempt
                // whose framing kept it alive): done once it goes quiet.
                if (!buf.is_empty() && last.elapsed() > IDLE) || start.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = r.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    buf
}

/// How long an open connection may stay quiet after an answer began.
const IDLE: Duration = Duration::from_millis(2500);

/// Parses consecutive answers; `head_first`: the first request was HEAD.
fn parse_answers(mut b: &[u8], head_first: bool) -> Vec<Answer> {
    let mut out = Vec::new();
    let mut first_final = true;
    while let Some(end) = find(b, b"\r\n\r\n") {
        let Ok(head) = std::str::from_utf8(&b[..end]) else {
            break;
        };
        let mut lines = head.split("\r\n");
        let Some(status) = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse::<u16>().ok()) else {
            break;
        };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        b = &b[end + 4..];
        let get = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
        let no_body = (100..200).contains(&status) || status == 204 || status == 304 || (head_first && first_final);
        let body = if no_body {
            Vec::new()
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            match dechunk(b) {
                Some((body, used)) => {
                    b = &b[used..];
                    body
                }
                None => std::mem::take(&mut b).to_vec(),
            }
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let n = n.min(b.len());
            let body = b[..n].to_vec();
            b = &b[n..];
            body
        } else {
            std::mem::take(&mut b).to_vec()
        };
        if status >= 200 {
            first_final = false;
        }
        out.push(Answer { status, headers, body });
    }
    out
}

fn dechunk(mut b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let total = b.len();
    let mut out = Vec::new();
    loop {
        let nl = find(b, b"\r\n")?;
        let line = std::str::from_utf8(&b[..nl]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            // Trailers up to an empty line.
            let end = find(b, b"\r\n")?;
            let mut rest = &b[end..];
            if end > 0 {
                let e = find(b, b"\r\n\r\n")?;
                rest = &b[e + 2..];
            }
            return Some((out, total - rest.len() + 2));
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

// ---------------------------------------------------------------------------
// What Tomcat read, and the checks on it
// ---------------------------------------------------------------------------

const MARK: &[u8] = b"{\"echo\":\"tomcat\"";

/// The read-only right of `harness::standard_tokens`.
const READ_ONLY: &[&str] = &["TARGETDATA", "TARGETGROUPDATA", "SCANNERDATA", "REPORTTARGETDATA"];

/// What Tomcat reported for one request that reached it.
#[derive(Debug, Clone)]
struct Echo {
    servlet: String,
    method: String,
    /// servletPath + pathInfo.
    path: String,
    action: Option<String>,
    apptokens: Option<Vec<String>>,
    /// Every parameter (absent when only the X-Echo headers were there).
    params: Option<BTreeMap<String, Vec<String>>>,
    raw: String,
}

impl Echo {
    fn from_json(line: &[u8]) -> Option<Echo> {
        let v: Value = serde_json::from_slice(line).ok()?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let list = |x: &Value| -> Option<Vec<String>> {
            x.as_array().map(|a| a.iter().map(|e| e.as_str().unwrap_or("").to_string()).collect())
        };
        let params = v
            .get("parameters")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, x)| (k.clone(), list(x).unwrap_or_default())).collect::<BTreeMap<_, _>>());
        Some(Echo {
            servlet: s("servlet")?,
            method: s("method").unwrap_or_default(),
            path: s("servletPath").unwrap_or_default() + &s("pathInfo").unwrap_or_default(),
            action: s("action"),
            apptokens: v.get("apptokenValues").and_then(list),
            params,
            raw: String::from_utf8_lossy(line).into_owned(),
        })
    }

    /// From the X-Echo-* headers of an answer without a body (HEAD).
    fn from_headers(a: &Answer) -> Option<Echo> {
        let servlet = a.header("X-Echo-Servlet")?.to_string();
        let json = |n: &str| a.header(n).and_then(|h| serde_json::from_str::<Value>(h).ok());
        let action = match json("X-Echo-Action") {
            Some(Value::String(s)) => Some(s),
            Some(Value::Null) => None,
            // Unreadable: take it as the worst.
            _ => Some("(unreadable X-Echo-Action)".into()),
        };
        // The gateway writes the upstream credential over in every answer
        // header (interface.md §6), so Tomcat's echo of it comes back as
        // REDACTED; any other value (the caller's token, say) is not
        // written over and stays a leak.
        let seen = |e: &Value| match e.as_str().unwrap_or("") {
            "REDACTED" => harness::UPSTREAM_TOKEN.to_string(),
            other => other.to_string(),
        };
        let apptokens = match json("X-Echo-Apptoken") {
            Some(Value::Array(a)) => Some(a.iter().map(seen).collect()),
            Some(Value::Null) => None,
            _ => Some(vec!["(unreadable X-Echo-Apptoken)".into()]),
        };
        Some(Echo {
            servlet,
            method: String::new(),
            path: json("X-Echo-Path").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            action,
            apptokens,
            params: None,
            raw: format!("{:?}", a.headers),
        })
    }
}

fn read_only(value: &str) -> bool {
    // Upper-cased as a Java servlet would (String.toUpperCase): full Unicode.
    let up = value.to_uppercase();
    READ_ONLY.contains(&up.as_str())
}

/// The checks on what reached Tomcat; each failure is one line.
fn violations(e: &Echo) -> Vec<String> {
    let mut v = Vec::new();
    // GET /opi/rest/outscan/* is a route the read-only right has; an ACTION
    // parameter means nothing there. (None of the cases aims there, but a
    // path may be normalised there.)
    let rest_route = e.path.starts_with("/opi/rest/outscan/");
    if !rest_route {
        if let Some(a) = &e.action {
            if !read_only(a) {
                v.push(format!(
                    "BYPASS: Tomcat's getParameter(\"ACTION\") = {a:?} ({} on servlet {}, path {:?})",
                    e.method, e.servlet, e.path
                ));
            }
        }
    }
    if let Some(ts) = &e.apptokens {
        for t in ts {
            if t != harness::UPSTREAM_TOKEN {
                v.push(format!("TOKEN LEAK: Tomcat's getParameterValues(\"APPTOKEN\") holds {t:?}"));
            }
        }
    }
    if let Some(params) = &e.params {
        for (name, values) in params {
            if !rest_route && name.eq_ignore_ascii_case("ACTION") {
                for x in values {
                    if !read_only(x) {
                        v.push(format!(
                            "STRICT (§5: ACTION in any letter case): parameter {name:?} = {x:?} reached Tomcat"
                        ));
                    }
                }
            }
            if name.eq_ignore_ascii_case("APPTOKEN") && name != "APPTOKEN" {
                v.push(format!("STRICT (§6: every APPTOKEN removed): parameter {name:?} = {values:?} reached Tomcat"));
            }
            if values.iter().any(|x| x.contains(harness::RO)) {
                v.push(format!("TOKEN LEAK: the caller's token reached Tomcat in parameter {name:?}"));
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------
// Building requests
// ---------------------------------------------------------------------------

/// One request, written out byte for byte by [`Req::bytes`].
#[derive(Clone, Debug)]
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send the body chunked, in pieces of this size.
    chunked: Option<usize>,
}

impl Req {
    fn new(method: &str, target: &str) -> Self {
        Req { method: method.into(), target: target.into(), headers: Vec::new(), body: Vec::new(), chunked: None }
    }
    fn get(target: &str) -> Self {
        Self::new("GET", target)
    }
    fn post(target: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", target).header("Content-Type", content_type).body(body)
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
    fn chunked(mut self, piece: usize) -> Self {
        self.chunked = Some(piece.max(1));
        self
    }

    /// The request on the wire; `close` adds `Connection: close`.
    fn bytes(&self, close: bool) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n", self.method, self.target).into_bytes();
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        match self.chunked {
            Some(n) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for piece in self.body.chunks(n) {
                    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            None => {
                if !self.body.is_empty() || self.method == "POST" {
                    out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&self.body);
            }
        }
        out
    }
}

/// A case: one connection's worth of bytes.
struct Case {
    name: String,
    raw: Vec<u8>,
    head: bool,
}

impl Case {
    fn one(name: impl Into<String>, r: &Req) -> Case {
        Case { name: name.into(), raw: r.bytes(true), head: r.method == "HEAD" }
    }
    /// Several requests on one kept-alive connection; the last one closes it.
    fn pipelined(name: impl Into<String>, reqs: &[Req]) -> Case {
        let mut raw = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            raw.extend_from_slice(&r.bytes(i + 1 == reqs.len()));
        }
        Case { name: name.into(), raw, head: false }
    }
    fn raw(name: impl Into<String>, raw: &[u8]) -> Case {
        Case { name: name.into(), raw: raw.to_vec(), head: false }
    }
}

const FORM: &str = "application/x-www-form-urlencoded";
const X: &str = "/opi/XMLAPI";

fn tok() -> String {
    format!("APPTOKEN={}", harness::RO)
}

/// How the pairs of a form body are put into bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Enc {
    /// `n=v&n=v` as written.
    Ascii,
    /// Names and values in UTF-16BE, with single-byte `=` and `&` between
    /// them (Tomcat splits on those bytes before decoding the pieces).
    Utf16Be,
    Utf16Le,
    Utf32Be,
    /// Names and values in EBCDIC (code page 037).
    Ebcdic,
    /// UTF-16BE bytes of names and values, percent-encoded: an ASCII body.
    PctUtf16Be,
    /// EBCDIC bytes, percent-encoded: an ASCII body.
    PctEbcdic,
    /// multipart/form-data with boundary `XyZ`, one part per pair.
    Multipart,
}

fn ebcdic(c: u8) -> u8 {
    match c {
        b'A'..=b'I' => 0xC1 + (c - b'A'),
        b'J'..=b'R' => 0xD1 + (c - b'J'),
        b'S'..=b'Z' => 0xE2 + (c - b'S'),
        b'a'..=b'i' => 0x81 + (c - b'a'),
        b'j'..=b'r' => 0x91 + (c - b'j'),
        b's'..=b'z' => 0xA2 + (c - b's'),
        b'0'..=b'9' => 0xF0 + (c - b'0'),
        b'%' => 0x6C,
        b'+' => 0x4E,
        b' ' => 0x40,
        b'_' => 0x6D,
        b'-' => 0x60,
        b'.' => 0x4B,
        _ => 0x6F, // '?'
    }
}

fn pct(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|b| format!("%{b:02X}").into_bytes()).collect()
}

fn encode_piece(enc: Enc, s: &str) -> Vec<u8> {
    match enc {
        Enc::Ascii | Enc::Multipart => s.as_bytes().to_vec(),
        Enc::Utf16Be => s.encode_utf16().flat_map(u16::to_be_bytes).collect(),
        Enc::Utf16Le => s.encode_utf16().flat_map(u16::to_le_bytes).collect(),
        Enc::Utf32Be => s.chars().flat_map(|c| u32::from(c).to_be_bytes()).collect(),
        Enc::Ebcdic => s.bytes().map(ebcdic).collect(),
        Enc::PctUtf16Be => pct(&encode_piece(Enc::Utf16Be, s)),
        Enc::PctEbcdic => pct(&encode_piece(Enc::Ebcdic, s)),
    }
}

/// A body of `name=value` pairs (`None` value: the name alone, no `=`).
fn form(enc: Enc, pairs: &[Pair]) -> Vec<u8> {
    if enc == Enc::Multipart {
        let mut out = Vec::new();
        for (n, v) in pairs {
            out.extend_from_slice(
                format!(
                    "--XyZ\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\n{}\r\n",
                    v.as_deref().unwrap_or("")
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        return out;
    }
    let mut out = Vec::new();
    for (i, (n, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(&encode_piece(enc, n));
        if let Some(v) = v {
            out.push(b'=');
            out.extend_from_slice(&encode_piece(enc, v));
        }
    }
    out
}

/// A parameter: its name and value as written (`None`: the name alone).
type Pair = (String, Option<String>);

fn kv(n: &str, v: &str) -> Pair {
    (n.to_string(), Some(v.to_string()))
}

fn query(pairs: &[Pair]) -> String {
    String::from_utf8(form(Enc::Ascii, pairs)).unwrap()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// gzip with one stored (uncompressed) deflate block.
fn gzip(data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 65536);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend_from_slice(&deflate_stored(data));
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn deflate_stored(data: &[u8]) -> Vec<u8> {
    let len = data.len() as u16;
    let mut out = vec![1];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// A small deterministic generator (xorshift64*), so that a failure can be
/// replayed with the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// The table of spellings
// ---------------------------------------------------------------------------

/// Names Tomcat decodes to exactly `ACTION` (what `getParameter` reads), then
/// other letter cases (the scanner ignores them; §5 says the gateway does
/// not), then names that are not ACTION to Tomcat at all.
const ACTION_NAMES: &[&str] = &[
    "ACTION",
    "%41CTION",
    "A%43TION",
    "AC%54ION",
    "ACTIO%4E",
    "ACTIO%4e",
    "%41%43%54%49%4F%4E",
    "%41%43%54%49%4f%4e",
    "action",
    "Action",
    "aCtIoN",
    "ACTIOn",
    "%61ction",
    "%61%63%74%69%6f%6e",
    "ACTION+",
    "+ACTION",
    "ACTION%20",
    "%20ACTION",
    "ACTION%00",
    "%00ACTION",
    "ACTION%09",
    "%2541CTION",
    "%25%34%31CTION",
    "%C1%81CTION",
    "%EF%BC%A1CTION",
    "ACTI%C3%98N",
    "ACTI%C4%B0N",
    "ACTION%",
    "ACTION%4",
    "%u0041CTION",
    "ACTION%5B%5D",
    "ACTION.",
    "?ACTION",
    "ACTION%3D",
    "ACTION%26",
    "ACTION;",
];

/// Write actions, spelt in every way a decoder might fold to one.
const FORBIDDEN: &[&str] = &[
    "REMOVETARGETDATA",
    "removetargetdata",
    "RemoveTargetData",
    "UPDATETARGETDATA",
    "UPDATESUBACCOUNTDATA",
    "GETRESTTOKEN",
    "%52EMOVETARGETDATA",
    "REMOVE%54ARGETDATA",
    "%52%45%4D%4F%56%45%54%41%52%47%45%54%44%41%54%41",
    "REMOVETARGETDATA%00",
    "REMOVETARGETDATA+",
    "+REMOVETARGETDATA",
    "REMOVETARGETDATA%20",
    "%2552EMOVETARGETDATA",
    "REMOVETARGETDATA%zz",
    "REMOVETARGETDATA%",
    "TARGETDATA%00REMOVETARGETDATA",
    "TARGETDATA,REMOVETARGETDATA",
    "TARGETDATA%26ACTION%3DREMOVETARGETDATA",
    "REMOVE%C5%BFARGETDATA",
    "%D0%95REMOVETARGETDATA",
    "",
];

/// The first few of [`FORBIDDEN`] go with every name.
const CORE_FORBIDDEN: usize = 6;

const ALLOWED: &[&str] = &["TARGETDATA", "targetdata", "SCANNERDATA", "%54ARGETDATA", "ReportTargetData"];

/// How the caller's token is named (the gateway must find and strip all).
const TOKEN_NAMES: &[&str] = &["APPTOKEN", "apptoken", "AppToken", "%41PPTOKEN", "APPTOKE%4E", "%61pptoken"];

/// Paths Tomcat maps to the XMLAPI servlet (or nearly), as a client may spell them.
const PATHS: &[&str] = &[
    "/opi/XMLAPI",
    "/opi/XMLAPI;jsessionid=x",
    "/opi/XMLAPI;ACTION=REMOVETARGETDATA",
    "/opi;a=b/XMLAPI",
    "/opi//XMLAPI",
    "//opi/XMLAPI",
    "/opi/./XMLAPI",
    "/opi/x/../XMLAPI",
    "/opi/x/%2e%2e/XMLAPI",
    "/opi/x/%2E%2E/XMLAPI",
    "/opi/%2e/XMLAPI",
    "/opi/x/..;/XMLAPI",
    "/opi/.;x/XMLAPI",
    "/opi/x;/../XMLAPI",
    "/opi/%58MLAPI",
    "/%6Fpi/XMLAPI",
    "/opi/%2558MLAPI",
    "/opi/xmlapi",
    "/OPI/XMLAPI",
    "/opi/XMLAPI/",
    "/opi/XMLAPI/.",
    "/opi/XMLAPI/x",
    "/opi/XMLAPI/x/..",
    "/opi/XMLAPI%3Bx",
    "/opi/XMLAPI%20",
    "/opi/XMLAPI%00",
    "/opi%2FXMLAPI",
    "/opi%5CXMLAPI",
    "/opi/%C0%AFXMLAPI",
    "/opi/%E9/../XMLAPI",
    "/opi/rest/outscan/../../XMLAPI",
    "/opi/rest/outscan/%2e%2e/%2e%2e/XMLAPI",
    "/opi/rest/outscan/..;/..;/XMLAPI",
    "/opi/rest/outscan/x/../../../XMLAPI",
    "/opi/rest/outscan;/../../XMLAPI",
    "/opi/rest/outscan/%2F..%2F..%2FXMLAPI",
    "/x/../../opi/XMLAPI",
    "http://127.0.0.1/opi/XMLAPI",
    "http://127.0.0.1/opi/rest/outscan/../../XMLAPI",
    "HTTP://example.com:1/opi/XMLAPI",
];

/// Content-Types of a form body, with how to encode it.
fn content_types() -> Vec<(&'static str, Enc)> {
    vec![
        ("application/x-www-form-urlencoded", Enc::Ascii),
        ("APPLICATION/X-WWW-FORM-URLENCODED", Enc::Ascii),
        ("Application/X-Www-Form-Urlencoded", Enc::Ascii),
        ("  application/x-www-form-urlencoded  ", Enc::Ascii),
        ("application/x-www-form-urlencoded;", Enc::Ascii),
        ("application/x-www-form-urlencoded; charset=UTF-8", Enc::Ascii),
        ("application/x-www-form-urlencoded;charset=utf-8", Enc::Ascii),
        ("application/x-www-form-urlencoded; charset=\"UTF-8\"", Enc::Ascii),
        ("application/x-www-form-urlencoded; charset=ISO-8859-1", Enc::Ascii),
        ("application/x-www-form-urlencoded; charset=windows-1252", Enc::Ascii),
        ("application/x-www-form-urlencoded; Charset=UTF-8", Enc::Ascii),
        ("application/x-www-form-urlencoded; charset = UTF-8", Enc::Ascii),
        ("application/x-www-form-urlencoded; foo=bar", Enc::Ascii),
        ("application/x-www-form-urlencoded; charset=UTF-16", Enc::Utf16Be),
        ("application/x-www-form-urlencoded; charset=utf-16be", Enc::Utf16Be),
        ("application/x-www-form-urlencoded; charset=UTF-16LE", Enc::Utf16Le),
        ("application/x-www-form-urlencoded; charset=UTF-16", Enc::PctUtf16Be),
        ("application/x-www-form-urlencoded; charset=UTF-32", Enc::Utf32Be),
        ("application/x-www-form-urlencoded; charset=IBM037", Enc::Ebcdic),
        ("application/x-www-form-urlencoded; charset=ibm500", Enc::Ebcdic),
        ("application/x-www-form-urlencoded; charset=IBM1047", Enc::Ebcdic),
        ("application/x-www-form-urlencoded; charset=Cp037", Enc::PctEbcdic),
        ("application/x-www-form-urlencoded; charset=x-UTF-7", Enc::Ascii),
        ("application/x-www-form-urlencoded; charset=bogus", Enc::Ascii),
        ("application/x-www-form-urlencoded; CHARSET=UTF-16", Enc::Utf16Be),
        ("application/x-www-form-urlencoded; charset = UTF-16", Enc::Utf16Be),
        ("application/x-www-form-urlencoded;\tcharset=UTF-16", Enc::Utf16Be),
        ("application/x-www-form-urlencoded\t;charset=UTF-16", Enc::Utf16Be),
        ("application/x-www-form-urlencoded; charset=\"UTF-16\"", Enc::Utf16Be),
        ("application/x-www-form-urlencoded; charset=\"UTF\\-16\"", Enc::Utf16Be),
        ("application/x-www-form-urlencoded; charset=UTF-8; charset=UTF-16", Enc::Utf16Be),
        ("application/x-www-form-urlencoded; charset=UTF-16; charset=UTF-8", Enc::Ascii),
        ("application/x-www-form-urlencoded; x; charset=UTF-16", Enc::Utf16Be),
        ("application/x-www-form-urlencoded; ; charset=UTF-16", Enc::Utf16Be),
        ("application/x-www-form-urlencoded; xcharset=UTF-16", Enc::PctUtf16Be),
        ("application/x-www-form-urlencoded; a=\"x;charset=UTF-16\"", Enc::PctUtf16Be),
        ("application/x-www-form-urlencoded; a=b,charset=UTF-16", Enc::PctUtf16Be),
        ("application/x-www-form-urlencoded; charset='UTF-16'", Enc::PctUtf16Be),
        ("application/x-www-form-urlencoded, text/plain", Enc::Ascii),
        ("application/x-www-form-urlencoded (comment)", Enc::Ascii),
        ("application/x-www-form-urlencodedx", Enc::Ascii),
        ("multipart/form-data; boundary=XyZ", Enc::Multipart),
        ("MULTIPART/FORM-DATA; boundary=XyZ", Enc::Multipart),
        ("multipart/form-data; boundary=\"XyZ\"; charset=UTF-8", Enc::Multipart),
        ("multipart/mixed; boundary=XyZ", Enc::Multipart),
        ("text/plain", Enc::Ascii),
        ("application/json", Enc::Ascii),
        ("", Enc::Ascii),
    ]
}

/// Where the token and the actions go in a request with a form body.
/// `f` is the forbidden pair, `a` an allowed one, `t` the token.
fn body_layouts(t: &Pair, a: &Pair, f: &Pair) -> Vec<(&'static str, Vec<Pair>, Vec<Pair>)> {
    let (t, a, f) = (t.clone(), a.clone(), f.clone());
    vec![
        ("token in query, forbidden in body", vec![t.clone()], vec![f.clone()]),
        ("token+allowed in query, forbidden in body", vec![t.clone(), a.clone()], vec![f.clone()]),
        ("token in query, allowed then forbidden in body", vec![t.clone()], vec![a.clone(), f.clone()]),
        ("token in query, forbidden then allowed in body", vec![t.clone()], vec![f.clone(), a.clone()]),
        ("forbidden in query, token+allowed in body", vec![f.clone()], vec![t.clone(), a.clone()]),
        ("token and forbidden in body", vec![], vec![t.clone(), f.clone()]),
        ("token+forbidden in query, allowed in body", vec![t.clone(), f.clone()], vec![a.clone()]),
        ("token in query and body, forbidden in body", vec![t.clone()], vec![t, f]),
    ]
}

fn target(path: &str, q: &[Pair]) -> String {
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query(q))
    }
}

fn cases(seed: u64) -> Vec<Case> {
    let mut out = Vec::new();
    let t = kv("APPTOKEN", harness::RO);
    let allowed = kv("ACTION", "TARGETDATA");

    // 1. Query only: every name with the core write actions, the token first.
    for n in ACTION_NAMES {
        for v in &FORBIDDEN[..CORE_FORBIDDEN] {
            let q = [t.clone(), kv(n, v)];
            out.push(Case::one(format!("query {n}={v}"), &Req::get(&target(X, &q))));
        }
    }
    // ... and every other write spelling with the two main names, both orders.
    for v in &FORBIDDEN[CORE_FORBIDDEN..] {
        for n in ["ACTION", "%41CTION"] {
            let q = [t.clone(), kv(n, v)];
            out.push(Case::one(format!("query {n}={v}"), &Req::get(&target(X, &q))));
            let q = [kv(n, v), t.clone()];
            out.push(Case::one(format!("query {n}={v} before token"), &Req::get(&target(X, &q))));
        }
    }

    // 2. Duplicates in the query: allowed first, forbidden first, a bare
    //    name, an empty value.
    for n in ACTION_NAMES {
        let f = kv(n, "REMOVETARGETDATA");
        for (what, q) in [
            ("allowed then forbidden", vec![t.clone(), allowed.clone(), f.clone()]),
            ("forbidden then allowed", vec![t.clone(), f.clone(), allowed.clone()]),
            ("bare name then allowed", vec![t.clone(), (n.to_string(), None), allowed.clone()]),
            ("empty value then allowed", vec![t.clone(), kv(n, ""), allowed.clone()]),
        ] {
            out.push(Case::one(format!("query {what}: {n}"), &Req::get(&target(X, &q))));
        }
    }
    for q in [
        format!("{}&ACTION=TARGETDATA&ACTION=TARGETDATA&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&ACTION=TARGETDATA&ACTION=targetdata&ACTION=%54ARGETDATA&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&ACTION=TARGETDATA;ACTION=REMOVETARGETDATA", tok()),
        format!("{};ACTION=REMOVETARGETDATA", tok()),
        format!("ACTION=REMOVETARGETDATA;{}", tok()),
        format!("{}&&&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&=&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&=ACTION=REMOVETARGETDATA&ACTION==REMOVETARGETDATA", tok()),
        format!("{}&ACTION=TARGETDATA=REMOVETARGETDATA", tok()),
        format!("?{}&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&%&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&%zz=1&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&x=%zz&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&ACTION%=TARGETDATA&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&ACTION=%zz&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&ACTION=TARGETDATA%&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&JSON=1&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&ACTION=REMOVETARGETDATA#frag", tok()),
        format!("{}#&ACTION=REMOVETARGETDATA", tok()),
        format!("{}&ACTION=REMOVETARGETDATA&{}", tok(), tok()),
        format!("{}&ACTION=REMOVETARGETDATA&APPTOKEN={}", tok(), harness::ADMIN),
        format!("APPTOKEN={}&ACTION=REMOVETARGETDATA&APPTOKEN={}", harness::ADMIN, harness::RO),
        format!("{}&ACTION=REMOVETARGETDATA&APPTOKEN=", tok()),
        format!("{}&ACTION=REMOVETARGETDATA&APPTOKEN", tok()),
        format!("{}&ACTION=REMOVETARGETDATA&APPTOKEN={}", tok(), harness::UPSTREAM_TOKEN),
        format!("APPTOKEN={}&ACTION=REMOVETARGETDATA", harness::RO.to_lowercase()),
        format!("APPTOKEN=%41{}&ACTION=REMOVETARGETDATA", &harness::RO[1..]),
        format!("APPTOKEN={}%00&ACTION=REMOVETARGETDATA", harness::RO),
        format!("APPTOKEN=+{}&ACTION=REMOVETARGETDATA", harness::RO),
    ] {
        out.push(Case::one(format!("query {q}"), &Req::get(&format!("{X}?{q}"))));
    }

    // 3. The token under other names, in the query and in the body.
    for tn in TOKEN_NAMES {
        let tt = kv(tn, harness::RO);
        for f in ["REMOVETARGETDATA", "UPDATESUBACCOUNTDATA"] {
            let q = [tt.clone(), kv("ACTION", f)];
            out.push(Case::one(format!("token as {tn} in query, ACTION={f}"), &Req::get(&target(X, &q))));
            let body = form(Enc::Ascii, &[tt.clone(), kv("ACTION", f)]);
            out.push(Case::one(format!("token as {tn} in body, ACTION={f}"), &Req::post(X, FORM, body)));
        }
        // Allowed ACTION: forwarded, so the token must have been stripped.
        let q = [tt.clone(), allowed.clone()];
        out.push(Case::one(format!("token as {tn} in query, allowed"), &Req::get(&target(X, &q))));
        let body = form(Enc::Ascii, &[allowed.clone(), tt.clone()]);
        out.push(Case::one(format!("token as {tn} in body, allowed"), &Req::post(X, FORM, body)));
    }

    // 4. Paths, with a forbidden ACTION in the query and in a body.
    for p in PATHS {
        for (n, v) in [("ACTION", "REMOVETARGETDATA"), ("%41CTION", "UPDATETARGETDATA")] {
            let q = [t.clone(), kv(n, v)];
            out.push(Case::one(format!("path {p} query {n}={v}"), &Req::get(&target(p, &q))));
        }
        let body = form(Enc::Ascii, &[kv("ACTION", "REMOVETARGETDATA")]);
        out.push(Case::one(format!("path {p} body"), &Req::post(&target(p, std::slice::from_ref(&t)), FORM, body)));
    }

    // 5. Form bodies: every Content-Type with every layout.
    let mut rng = Rng(seed);
    for (ct, enc) in content_types() {
        // Transcoded bodies keep to names and values without escapes.
        let transcoded = !matches!(enc, Enc::Ascii | Enc::Multipart);
        for (what, q, b) in body_layouts(&t, &allowed, &kv("ACTION", "REMOVETARGETDATA")) {
            let mut r = Req::post(&target(X, &q), ct, form(enc, &b));
            if ct.is_empty() {
                r.headers.clear();
            }
            out.push(Case::one(format!("body [{ct}] {enc:?}: {what}"), &r));
        }
        // A random other name and write action with this Content-Type.
        {
            let n = if transcoded { "ACTION" } else { *rng.pick(&ACTION_NAMES[..14]) };
            let v = if transcoded { "UPDATETARGETDATA" } else { *rng.pick(&FORBIDDEN[..CORE_FORBIDDEN]) };
            let r = Req::post(&target(X, std::slice::from_ref(&t)), ct, form(enc, &[kv(n, v)]));
            out.push(Case::one(format!("body [{ct}] {enc:?}: {n}={v}"), &r));
        }
    }
    // Every name and write spelling in a plain form body.
    for n in ACTION_NAMES {
        let v = FORBIDDEN[(n.len() * 7) % CORE_FORBIDDEN];
        let r = Req::post(&target(X, std::slice::from_ref(&t)), FORM, form(Enc::Ascii, &[kv(n, v)]));
        out.push(Case::one(format!("body {n}={v}"), &r));
        let r = Req::post(X, FORM, form(Enc::Ascii, &[kv(n, v), t.clone()]));
        out.push(Case::one(format!("body {n}={v}, token in body"), &r));
    }
    for v in FORBIDDEN {
        let r = Req::post(&target(X, std::slice::from_ref(&t)), FORM, form(Enc::Ascii, &[kv("ACTION", v)]));
        out.push(Case::one(format!("body ACTION={v}"), &r));
    }

    // 6. Methods: which ones Tomcat reads a body for (only POST), and which
    //    ones the gateway looks at.
    for m in ["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "post", "Post", "FOO", "POST "] {
        let r = Req::new(m, &target(X, std::slice::from_ref(&t)))
            .header("Content-Type", FORM)
            .body(form(Enc::Ascii, &[kv("ACTION", "REMOVETARGETDATA")]));
        out.push(Case::one(format!("method {m:?} with a form body"), &r));
        let r = Req::new(m, &target(X, &[t.clone(), kv("ACTION", "REMOVETARGETDATA")]));
        out.push(Case::one(format!("method {m:?} with ACTION in the query"), &r));
        let r = Req::new(m, &target(X, std::slice::from_ref(&t)))
            .header("Content-Type", "multipart/form-data; boundary=XyZ")
            .body(form(Enc::Multipart, &[kv("ACTION", "REMOVETARGETDATA")]));
        out.push(Case::one(format!("method {m:?} with a multipart body"), &r));
    }
    out.push(Case::one(
        "HEAD with ACTION in the query",
        &Req::new("HEAD", &target(X, &[t.clone(), kv("ACTION", "REMOVETARGETDATA")])),
    ));
    out.push(Case::one(
        "HEAD with %41CTION in the query",
        &Req::new("HEAD", &target(X, &[t.clone(), kv("%41CTION", "REMOVETARGETDATA")])),
    ));
    out.push(Case::one("HEAD allowed", &Req::new("HEAD", &target(X, &[t.clone(), allowed.clone()]))));

    // 7. Framing: chunked in several ways, Expect, content codings, versions.
    let fbody = form(Enc::Ascii, &[kv("ACTION", "REMOVETARGETDATA")]);
    let tq = target(X, std::slice::from_ref(&t));
    for piece in [1, 3, 7, 64] {
        out.push(Case::one(
            format!("chunked body, pieces of {piece}"),
            &Req::post(&tq, FORM, fbody.clone()).chunked(piece),
        ));
        let both = form(Enc::Ascii, &[t.clone(), kv("ACTION", "REMOVETARGETDATA")]);
        out.push(Case::one(
            format!("chunked body with token, pieces of {piece}"),
            &Req::post(X, FORM, both).chunked(piece),
        ));
    }
    let chunk_raw = |te: &str, chunks: &str| {
        format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n{chunks}")
    };
    for (name, raw) in [
        ("chunk extensions", chunk_raw("chunked", "8;a=b\r\nACTION=R\r\n10;x\r\nEMOVETARGETDATA&\r\n0\r\n\r\n")),
        ("chunked with trailer Content-Type", chunk_raw("chunked", "17\r\nACTION=REMOVETARGETDATA\r\n0\r\nContent-Type: text/plain\r\n\r\n")),
        ("chunked upper case", chunk_raw("Chunked", "17\r\nACTION=REMOVETARGETDATA\r\n0\r\n\r\n")),
        ("chunked, identity", chunk_raw("chunked, identity", "17\r\nACTION=REMOVETARGETDATA\r\n0\r\n\r\n")),
        ("identity, chunked", chunk_raw("identity, chunked", "17\r\nACTION=REMOVETARGETDATA\r\n0\r\n\r\n")),
        ("gzip, chunked", chunk_raw("gzip, chunked", "17\r\nACTION=REMOVETARGETDATA\r\n0\r\n\r\n")),
        ("chunk size with leading zeros", chunk_raw("chunked", "00017\r\nACTION=REMOVETARGETDATA\r\n0\r\n\r\n")),
        ("chunk size 0x", chunk_raw("chunked", "0x17\r\nACTION=REMOVETARGETDATA\r\n0\r\n\r\n")),
        ("chunk LF only", chunk_raw("chunked", "17\nACTION=REMOVETARGETDATA\n0\n\n")),
        ("chunked and Content-Length", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n17\r\nACTION=REMOVETARGETDATA\r\n0\r\n\r\n")),
        ("Content-Length twice, same", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\r\nContent-Length: 23\r\nContent-Length: 23\r\nConnection: close\r\n\r\nACTION=REMOVETARGETDATA")),
        ("Content-Length twice, different", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\r\nContent-Length: 0\r\nContent-Length: 23\r\nConnection: close\r\n\r\nACTION=REMOVETARGETDATA")),
        ("Content-Length list", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\r\nContent-Length: 23, 23\r\nConnection: close\r\n\r\nACTION=REMOVETARGETDATA")),
        ("Content-Length +23", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\r\nContent-Length: +23\r\nConnection: close\r\n\r\nACTION=REMOVETARGETDATA")),
        ("Content-Type twice", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Type: {FORM}\r\nContent-Length: 23\r\nConnection: close\r\n\r\nACTION=REMOVETARGETDATA")),
        ("Content-Type twice, form first", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\r\nContent-Type: text/plain\r\nContent-Length: 23\r\nConnection: close\r\n\r\nACTION=REMOVETARGETDATA")),
        ("content-type lower-case header name", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: {FORM}\r\ncontent-length: 23\r\nConnection: close\r\n\r\nACTION=REMOVETARGETDATA")),
        ("Content-Type folded", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-\r\n form-urlencoded\r\nContent-Length: 23\r\nConnection: close\r\n\r\nACTION=REMOVETARGETDATA")),
        ("Content-Type space before colon", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type : {FORM}\r\nContent-Length: 23\r\nConnection: close\r\n\r\nACTION=REMOVETARGETDATA")),
        ("Content-Type with NUL", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\0\r\nContent-Length: 23\r\nConnection: close\r\n\r\nACTION=REMOVETARGETDATA")),
        ("Content-Type with vertical tab", format!("POST {tq} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\x0b\r\nContent-Length: 23\r\nConnection: close\r\n\r\nACTION=REMOVETARGETDATA")),
        ("bare LF line ends", format!("POST {tq} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: {FORM}\nContent-Length: 23\nConnection: close\n\nACTION=REMOVETARGETDATA")),
        ("HTTP/1.0 GET", format!("GET {X}?{}&ACTION=REMOVETARGETDATA HTTP/1.0\r\n\r\n", tok())),
        ("HTTP/1.0 POST", format!("POST {tq} HTTP/1.0\r\nContent-Type: {FORM}\r\nContent-Length: 23\r\n\r\nACTION=REMOVETARGETDATA")),
        ("HTTP/0.9", format!("GET {X}?{}&ACTION=REMOVETARGETDATA\r\n\r\n", tok())),
        ("HTTP/2.0 line", format!("GET {X}?{}&ACTION=REMOVETARGETDATA HTTP/2.0\r\nHost: x\r\n\r\n", tok())),
        ("two spaces in request line", format!("GET  {X}?{}&ACTION=REMOVETARGETDATA HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", tok())),
        ("tab in target", format!("GET {X}?{}&ACTION=REMOVETARGETDATA\tHTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", tok())),
        ("space in query", format!("GET {X}?{}&ACTION=TARGETDATA &ACTION=REMOVETARGETDATA HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", tok())),
        ("raw UTF-8 in query", format!("GET {X}?{}&ACTION=REMOVETARGETDATA&x=\u{e9} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", tok())),
        ("CONNECT", format!("CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\nConnection: close\r\n\r\nGET {X}?{}&ACTION=REMOVETARGETDATA HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", tok())),
        ("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_string()),
        ("h2c upgrade", format!("GET {X}?{}&ACTION=REMOVETARGETDATA HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", tok())),
        ("websocket upgrade", format!("GET {X}?{}&ACTION=REMOVETARGETDATA HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", tok())),
    ] {
        out.push(Case::raw(name, raw.as_bytes()));
    }
    out.push(Case::one("Expect: 100-continue", &Req::post(&tq, FORM, fbody.clone()).header("Expect", "100-continue")));
    for ce in ["gzip", "deflate", "identity", "gzip, identity", "x-gzip", "GZIP", "br"] {
        let plain = form(Enc::Ascii, &[kv("ACTION", "REMOVETARGETDATA")]);
        let body = match ce {
            "gzip" | "gzip, identity" | "x-gzip" | "GZIP" => gzip(&plain),
            "deflate" => deflate_stored(&plain),
            _ => plain,
        };
        out.push(Case::one(
            format!("Content-Encoding: {ce}"),
            &Req::post(&tq, FORM, body).header("Content-Encoding", ce),
        ));
    }

    // 8. Pipelining and smuggling: a second request on the same connection.
    let ok = Req::get(&target(X, &[t.clone(), allowed.clone()]));
    let bad = Req::get(&target(X, &[t.clone(), kv("ACTION", "REMOVETARGETDATA")]));
    let bad_body = Req::post(&tq, FORM, fbody.clone());
    out.push(Case::pipelined("pipelined: allowed then forbidden", &[ok.clone(), bad.clone()]));
    out.push(Case::pipelined("pipelined: allowed then forbidden body", &[ok.clone(), bad_body.clone()]));
    out.push(Case::pipelined("pipelined: allowed, allowed, forbidden", &[ok.clone(), ok.clone(), bad.clone()]));
    out.push(Case::pipelined(
        "pipelined: allowed chunked body then forbidden",
        &[Req::post(&tq, FORM, form(Enc::Ascii, std::slice::from_ref(&allowed))).chunked(4), bad.clone()],
    ));
    out.push(Case::pipelined(
        "pipelined: allowed with token in body then forbidden",
        &[Req::post(X, FORM, form(Enc::Ascii, &[t.clone(), allowed.clone()])), bad_body.clone()],
    ));
    let inner = bad.bytes(true);
    let inner_s = String::from_utf8(inner.clone()).unwrap();
    for (name, raw) in [
        (
            "smuggle: CL.TE",
            format!("POST {tq}&ACTION=TARGETDATA HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner_s}", 5 + inner.len()),
        ),
        (
            "smuggle: TE.CL",
            format!("POST {tq}&ACTION=TARGETDATA HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner_s}\r\n0\r\n\r\n", inner.len()),
        ),
        (
            "smuggle: body holds a request",
            format!("POST {tq}&ACTION=TARGETDATA HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{inner_s}", inner.len()),
        ),
        (
            "smuggle: refused request with a body, then another",
            format!("POST {tq}&ACTION=REMOVETARGETDATA HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello{inner_s}"),
        ),
        (
            "smuggle: GET with Content-Length holding a request",
            format!("GET {tq}&ACTION=TARGETDATA HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{inner_s}", inner.len()),
        ),
        (
            "smuggle: allowed with the token stripped from its body, then another",
            format!("POST {X} HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\nContent-Length: {}\r\n\r\n{}&ACTION=TARGETDATA{inner_s}", tok().len() + 18, tok()),
        ),
    ] {
        out.push(Case::raw(name, raw.as_bytes()));
    }

    // 9. Sizes: long values, many parameters, the body limit.
    let junk = "x".repeat(100_000);
    out.push(Case::one(
        "long value before ACTION in the body",
        &Req::post(&tq, FORM, format!("x={junk}&ACTION=REMOVETARGETDATA")),
    ));
    out.push(Case::one("long ACTION value", &Req::post(&tq, FORM, format!("ACTION=REMOVETARGETDATA{junk}"))));
    out.push(Case::one(
        "long value then allowed then forbidden",
        &Req::post(&tq, FORM, format!("ACTION=TARGETDATA&x={junk}&ACTION=REMOVETARGETDATA")),
    ));
    let many: String = (0..5000).map(|i| format!("p{i}=1&")).collect();
    out.push(Case::one(
        "5000 parameters then ACTION in the body",
        &Req::post(&tq, FORM, format!("{many}ACTION=REMOVETARGETDATA")),
    ));
    let many_allowed: String = (0..2000).map(|_| "ACTION=TARGETDATA&").collect();
    out.push(Case::one(
        "2000 allowed then one forbidden",
        &Req::post(&tq, FORM, format!("{many_allowed}ACTION=REMOVETARGETDATA")),
    ));
    let many_q: String = (0..600).map(|i| format!("p{i}=1&")).collect();
    out.push(Case::one("long query then ACTION", &Req::get(&format!("{X}?{}&{many_q}ACTION=REMOVETARGETDATA", tok()))));
    // "y=" + pad + "&ACTION=REMOVETARGETDATA": 24 bytes more than `size`.
    for size in [1_048_552, 1_048_553, 1_048_600, 2_200_000] {
        let pad = "y".repeat(size - 2);
        let body = format!("y={pad}&ACTION=REMOVETARGETDATA");
        out.push(Case::one(format!("body of {} bytes, ACTION last", body.len()), &Req::post(&tq, FORM, body.clone())));
        if size > 2_000_000 {
            out.push(Case::one(
                format!("chunked body of {} bytes, ACTION last", body.len()),
                &Req::post(&tq, FORM, body).chunked(65536),
            ));
        }
    }
    out.push(Case::one(
        "big body, ACTION in the query",
        &Req::post(
            &target(X, &[t.clone(), kv("ACTION", "REMOVETARGETDATA")]),
            FORM,
            "z=".to_string() + &"z".repeat(1_100_000),
        ),
    ));

    // 10. Random combinations of everything above.
    let cts = content_types();
    for i in 0..150 {
        let n = *rng.pick(ACTION_NAMES);
        let v = *rng.pick(FORBIDDEN);
        let av = *rng.pick(ALLOWED);
        let tn = *rng.pick(TOKEN_NAMES);
        let p = *rng.pick(PATHS);
        let (ct, enc) = *rng.pick(&cts);
        let layout = (rng.next() % 10) as usize;
        let tt = kv(tn, harness::RO);
        let an: &&str = rng.pick(&ACTION_NAMES[..14]);
        let a = kv(an, av);
        let f = kv(n, v);
        let layouts = body_layouts(&tt, &a, &f);
        let name;
        let r = if layout < 8 {
            let (what, q, b) = &layouts[layout];
            name = format!("random {i}: {p} [{ct}] {enc:?} {what}: {n}={v}, {}={av}, token {tn}", a.0);
            let mut r = Req::post(&target(p, q), ct, form(enc, b));
            if ct.is_empty() {
                r.headers.clear();
            }
            if rng.next() % 4 == 0 {
                r = r.chunked(1 + (rng.next() % 9) as usize);
            }
            r
        } else {
            let mut q = vec![tt.clone(), a.clone(), f.clone()];
            let k = (rng.next() % 3) as usize;
            q.rotate_left(k);
            name = format!("random {i}: GET {p} query rotated {k}: {n}={v}, {}={av}, token {tn}", a.0);
            Req::get(&target(p, &q))
        };
        out.push(Case::one(name, &r));
    }
    out
}

// ---------------------------------------------------------------------------
// Running the cases
// ---------------------------------------------------------------------------

#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    answers: usize,
    forwarded: usize,
    /// Gateway refusals by ERRORCODE (or by status when the body had none).
    refused: BTreeMap<String, usize>,
    /// Reached Tomcat, which refused it itself (its own error page).
    tomcat_refused: usize,
    /// 502/504: the gateway could not get an answer from Tomcat.
    upstream_failed: Vec<String>,
    /// The connection closed without any answer.
    no_answer: Vec<String>,
    violations: Vec<String>,
}

fn errorcode(body: &[u8]) -> Option<String> {
    let t = String::from_utf8_lossy(body);
    if let Some(a) = t.find("<ERRORCODE>") {
        let a = a + 11;
        let b = t[a..].find("</ERRORCODE>")? + a;
        return Some(t[a..b].to_string());
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    v.pointer("/data/errorCode").and_then(Value::as_str).map(str::to_string)
}

fn show(raw: &[u8]) -> String {
    const MAX: usize = 1200;
    let s: String = raw.iter().take(MAX).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect();
    if raw.len() > MAX {
        format!("b\"{s}\" ... ({} bytes in all)", raw.len())
    } else {
        format!("b\"{s}\"")
    }
}

fn run_case(gw: &Gateway, c: &Case, tally: &mut Tally, verbose: bool) {
    let t = Instant::now();
    let raw = exchange(gw.addr, &c.raw);
    if verbose && t.elapsed() > Duration::from_millis(500) {
        println!("slow ({:?}): {}", t.elapsed(), c.name);
    }
    let answers = parse_answers(&raw, c.head);
    judge(&c.name, &show(&c.raw), &answers, &raw, tally, verbose);
}

/// Classifies the answers to one case, and checks everything that reached
/// Tomcat. `raw`: every byte that came back (echoes are counted in it too).
fn judge(name: &str, request: &str, answers: &[Answer], raw: &[u8], tally: &mut Tally, verbose: bool) {
    tally.cases += 1;
    let mut echoes = Vec::new();
    let mut outcome = Vec::new();
    for a in answers {
        if a.status < 200 {
            continue;
        }
        tally.answers += 1;
        let mut here = Vec::new();
        let mut at = 0;
        while let Some(i) = find(&a.body[at..], MARK) {
            let start = at + i;
            let end = a.body[start..].iter().position(|&b| b == b'\n').map_or(a.body.len(), |e| start + e);
            match Echo::from_json(&a.body[start..end]) {
                Some(e) => here.push(e),
                None => tally.violations.push(format!(
                    "UNREADABLE ECHO in case {:?}\n  request: {}\n  answer: {}",
                    name,
                    request,
                    show(&a.body)
                )),
            }
            at = end;
        }
        if here.is_empty() {
            if let Some(e) = Echo::from_headers(a) {
                here.push(e);
            }
        }
        if !here.is_empty() {
            tally.forwarded += 1;
            outcome.push(format!("forwarded({})", a.status));
            echoes.extend(here);
        } else if let Some(code) = errorcode(&a.body) {
            outcome.push(format!("refused({} {code})", a.status));
            *tally.refused.entry(code).or_default() += 1;
        } else if String::from_utf8_lossy(&a.body).contains("Apache Tomcat") {
            outcome.push(format!("tomcat-refused({})", a.status));
            tally.tomcat_refused += 1;
        } else if a.status == 502 || a.status == 504 {
            outcome.push(format!("upstream-failed({})", a.status));
            tally.upstream_failed.push(format!("{} -> {} {}", name, a.status, show(&a.body)));
        } else if a.status == 200 {
            tally.violations.push(format!(
                "UNEXPLAINED 200 (neither Tomcat's echo nor a refusal) in case {:?}\n  request: {}\n  answer: {}",
                name,
                request,
                show(&a.body)
            ));
        } else {
            outcome.push(format!("refused({} no code)", a.status));
            *tally.refused.entry(format!("HTTP {} without ERRORCODE", a.status)).or_default() += 1;
        }
    }
    // Nothing may reach Tomcat unseen: count the echoes in the raw bytes too.
    let seen_raw = count(raw, MARK);
    let seen = echoes.iter().filter(|e| e.params.is_some()).count();
    if seen_raw > seen {
        tally.violations.push(format!(
            "UNPARSED ECHO: {seen_raw} echoes on the wire, {seen} parsed, in case {:?}\n  request: {}\n  answer: {}",
            name,
            request,
            show(raw)
        ));
    }
    if answers.iter().all(|a| a.status < 200) {
        outcome.push("no answer".into());
        tally.no_answer.push(format!("{} -> {}", name, show(raw)));
    }
    for e in &echoes {
        for v in violations(e) {
            tally.violations.push(format!("{v}\n  case: {}\n  request: {}\n  Tomcat read: {}", name, request, e.raw));
        }
    }
    if verbose {
        println!("{:<28} | {}", outcome.join(" "), name);
    }
}

// ---------------------------------------------------------------------------
// HTTP/2 (prior knowledge): the gateway's listener speaks it too
// ---------------------------------------------------------------------------

type H2Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// One HTTP/2 request: the body goes as these DATA frames, then trailers.
struct H2Case {
    name: String,
    method: &'static str,
    target: String,
    headers: Vec<(&'static str, String)>,
    frames: Vec<Vec<u8>>,
    trailers: Vec<(&'static str, &'static str)>,
}

impl H2Case {
    fn new(name: impl Into<String>, method: &'static str, target: impl Into<String>) -> Self {
        H2Case {
            name: name.into(),
            method,
            target: target.into(),
            headers: Vec::new(),
            frames: Vec::new(),
            trailers: Vec::new(),
        }
    }
    fn header(mut self, k: &'static str, v: &str) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    /// The body in DATA frames of `piece` bytes.
    fn body(mut self, b: &[u8], piece: usize) -> Self {
        self.frames = b.chunks(piece.max(1)).map(<[u8]>::to_vec).collect();
        self
    }
    fn trailer(mut self, k: &'static str, v: &'static str) -> Self {
        self.trailers.push((k, v));
        self
    }
    fn describe(&self) -> String {
        let body: Vec<u8> = self.frames.concat();
        format!(
            "HTTP/2 {} {} headers {:?} body {} in {} DATA frame(s), trailers {:?}",
            self.method,
            self.target,
            self.headers,
            show(&body),
            self.frames.len(),
            self.trailers
        )
    }
}

/// Sends one request over a fresh prior-knowledge HTTP/2 connection.
fn h2_send(addr: SocketAddr, c: &H2Case) -> Result<Answer, String> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let mut b = http::Request::builder()
        .method(http::Method::from_bytes(c.method.as_bytes()).map_err(|e| e.to_string())?)
        .uri(format!("http://{addr}{}", c.target));
    for (k, v) in &c.headers {
        b = b.header(*k, v.as_str());
    }
    let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
        c.frames.iter().map(|f| Ok(Frame::data(Bytes::from(f.clone())))).collect();
    if !c.trailers.is_empty() {
        let mut t = http::HeaderMap::new();
        for (k, v) in &c.trailers {
            t.append(*k, v.parse().unwrap());
        }
        frames.push(Ok(Frame::trailers(t)));
    }
    let body: H2Body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
    let req = b.body(body).map_err(|e| format!("cannot build: {e}"))?;
    harness::upstream::runtime().block_on(async move {
        let work = async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes().to_vec();
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            Ok(Answer { status: parts.status.as_u16(), headers, body })
        };
        tokio::time::timeout(Duration::from_secs(15), work).await.map_err(|_| "timed out".to_string())?
    })
}

fn h2_cases() -> Vec<H2Case> {
    let mut out = Vec::new();
    let t = tok();
    for q in [
        format!("{t}&ACTION=REMOVETARGETDATA"),
        format!("{t}&%41CTION=REMOVETARGETDATA"),
        format!("{t}&action=UPDATETARGETDATA"),
        format!("{t}&ACTION=TARGETDATA&ACTION=REMOVETARGETDATA"),
        format!("{t}&ACTION&ACTION=TARGETDATA"),
        format!("ACTION=REMOVETARGETDATA&apptoken={}", harness::RO),
    ] {
        out.push(H2Case::new(format!("h2 GET query {q}"), "GET", format!("{X}?{q}")));
    }
    for p in [
        "/opi/XMLAPI;jsessionid=x",
        "/opi//XMLAPI",
        "/opi/./XMLAPI",
        "/opi/x/../XMLAPI",
        "/opi/%58MLAPI",
        "/opi/xmlapi",
        "/opi/rest/outscan/../../XMLAPI",
        "/opi/rest/outscan/..;/..;/XMLAPI",
    ] {
        out.push(H2Case::new(format!("h2 GET path {p}"), "GET", format!("{p}?{t}&ACTION=REMOVETARGETDATA")));
    }
    let fb = b"ACTION=REMOVETARGETDATA".to_vec();
    let tq = format!("{X}?{t}");
    for ct in [
        FORM,
        "APPLICATION/X-WWW-FORM-URLENCODED",
        "application/x-www-form-urlencoded; charset=UTF-8",
        "application/x-www-form-urlencoded; Charset=UTF-16",
        "multipart/form-data; boundary=XyZ",
        "text/plain",
    ] {
        let body = if ct.starts_with("multipart") {
            form(Enc::Multipart, &[kv("ACTION", "REMOVETARGETDATA")])
        } else if ct.contains("16") {
            form(Enc::Utf16Be, &[kv("ACTION", "REMOVETARGETDATA")])
        } else {
            fb.clone()
        };
        for piece in [1024, 1] {
            out.push(
                H2Case::new(format!("h2 POST [{ct}] in frames of {piece}"), "POST", tq.clone())
                    .header("content-type", ct)
                    .body(&body, piece),
            );
        }
    }
    out.push(
        H2Case::new("h2 POST token and forbidden in body", "POST", X)
            .header("content-type", FORM)
            .body(format!("{t}&ACTION=REMOVETARGETDATA").as_bytes(), 5),
    );
    out.push(
        H2Case::new("h2 POST allowed in query, forbidden in body", "POST", format!("{tq}&ACTION=TARGETDATA"))
            .header("content-type", FORM)
            .body(&fb, 1024),
    );
    out.push(
        H2Case::new("h2 POST forbidden in query, allowed in body", "POST", format!("{tq}&ACTION=REMOVETARGETDATA"))
            .header("content-type", FORM)
            .body(b"ACTION=TARGETDATA", 1024),
    );
    out.push(
        H2Case::new("h2 POST two content-types", "POST", tq.clone())
            .header("content-type", "text/plain")
            .header("content-type", FORM)
            .body(&fb, 1024),
    );
    out.push(
        H2Case::new("h2 POST content-length too small", "POST", tq.clone())
            .header("content-type", FORM)
            .header("content-length", "3")
            .body(&fb, 1024),
    );
    out.push(
        H2Case::new("h2 POST content-encoding gzip", "POST", tq.clone())
            .header("content-type", FORM)
            .header("content-encoding", "gzip")
            .body(&gzip(&fb), 1024),
    );
    out.push(
        H2Case::new("h2 POST trailer content-type", "POST", tq.clone())
            .header("content-type", "text/plain")
            .body(&fb, 1024)
            .trailer("content-type", FORM),
    );
    out.push(
        H2Case::new("h2 POST form with a trailer", "POST", tq.clone())
            .header("content-type", FORM)
            .body(b"ACTION=TARGETDATA", 1024)
            .trailer("x-action", "REMOVETARGETDATA"),
    );
    out.push(
        H2Case::new("h2 lower-case post with form", "post", tq.clone()).header("content-type", FORM).body(&fb, 1024),
    );
    out.push(H2Case::new("h2 PUT with form", "PUT", tq.clone()).header("content-type", FORM).body(&fb, 1024));
    out.push(H2Case::new("h2 GET with form body", "GET", tq.clone()).header("content-type", FORM).body(&fb, 1024));
    let big = format!("x={}&ACTION=REMOVETARGETDATA", "x".repeat(200_000));
    out.push(
        H2Case::new("h2 POST 200 KB, ACTION last", "POST", tq.clone())
            .header("content-type", FORM)
            .body(big.as_bytes(), 16_000),
    );
    let huge = format!("x={}&ACTION=REMOVETARGETDATA", "x".repeat(1_100_000));
    out.push(
        H2Case::new("h2 POST 1.1 MB, ACTION last", "POST", tq)
            .header("content-type", FORM)
            .body(huge.as_bytes(), 16_000),
    );
    out
}

/// Runs the HTTP/2 cases; none when the listener does not speak HTTP/2.
fn run_h2(gw: &Gateway, tally: &mut Tally, verbose: bool) -> usize {
    // A control first: a legitimate request must pass over HTTP/2.
    let control = H2Case::new("h2 control", "POST", format!("{X}?{}", tok()))
        .header("content-type", FORM)
        .body(b"ACTION=TARGETDATA", 4);
    match h2_send(gw.addr, &control) {
        Err(e) if e.starts_with("handshake") => {
            println!("the gateway does not speak HTTP/2 with prior knowledge ({e}): HTTP/2 cases skipped");
            return 0;
        }
        Err(e) => panic!("HTTP/2 control failed: {e}"),
        Ok(a) => {
            let body = String::from_utf8_lossy(&a.body);
            assert_eq!(a.status, 200, "HTTP/2 control: {body}");
            assert!(body.contains("\"action\":\"TARGETDATA\""), "HTTP/2 control: {body}");
        }
    }
    let cases = h2_cases();
    for c in &cases {
        match h2_send(gw.addr, c) {
            Ok(a) => {
                let raw = a.body.clone();
                judge(&c.name, &c.describe(), &[a], &raw, tally, verbose);
            }
            Err(e) => {
                tally.cases += 1;
                if verbose {
                    println!("{:<28} | {}", format!("h2 error: {e}"), c.name);
                }
                tally.no_answer.push(format!("{} -> {e}", c.name));
            }
        }
    }
    cases.len()
}

/// Legitimate requests that must pass and reach Tomcat as sent: the test
/// cannot pass by refusing everything.
fn positive_controls(gw: &Gateway) {
    let ro = harness::RO;
    let form_h = [("Content-Type", FORM)];
    let cases: Vec<(&str, harness::Response, Option<&str>, &str)> = vec![
        (
            "ACTION=TARGETDATA in the query",
            harness::request(gw.addr, "GET", &format!("{X}?APPTOKEN={ro}&ACTION=TARGETDATA"), &[], b""),
            Some("TARGETDATA"),
            "ACTION",
        ),
        (
            "ACTION in a form body, APPTOKEN in the query (Python clients)",
            harness::request(
                gw.addr,
                "POST",
                &format!("{X}?APPTOKEN={ro}"),
                &form_h,
                b"ACTION=TARGETDATA&JSON=1&TARGETGROUP=-1",
            ),
            Some("TARGETDATA"),
            "ACTION",
        ),
        (
            "everything in a form body, charset=UTF-8",
            harness::request(
                gw.addr,
                "POST",
                X,
                &[("Content-Type", "application/x-www-form-urlencoded; charset=UTF-8")],
                format!("APPTOKEN={ro}&ACTION=SCANNERDATA").as_bytes(),
            ),
            Some("SCANNERDATA"),
            "ACTION",
        ),
        (
            "lower-case names",
            harness::request(gw.addr, "GET", &format!("{X}?apptoken={ro}&action=TARGETDATA"), &[], b""),
            Some("TARGETDATA"),
            "action",
        ),
        (
            "lower-case value",
            harness::request(gw.addr, "GET", &format!("{X}?APPTOKEN={ro}&ACTION=targetdata"), &[], b""),
            Some("targetdata"),
            "ACTION",
        ),
        (
            "the login probe (no ACTION)",
            harness::request(gw.addr, "GET", &format!("{X}?APPTOKEN={ro}"), &[], b""),
            None,
            "ACTION",
        ),
        (
            "an admin token may remove (so the oracle would see a write action)",
            harness::request(
                gw.addr,
                "GET",
                &format!("{X}?APPTOKEN={}&ACTION=REMOVETARGETDATA", harness::ADMIN),
                &[],
                b"",
            ),
            Some("REMOVETARGETDATA"),
            "ACTION",
        ),
        (
            "an admin token's write action in a form body",
            harness::request(
                gw.addr,
                "POST",
                &format!("{X}?APPTOKEN={}", harness::ADMIN),
                &form_h,
                b"ACTION=UPDATETARGETDATA",
            ),
            Some("UPDATETARGETDATA"),
            "ACTION",
        ),
    ];
    for (what, resp, want, name) in cases {
        let body = resp.text();
        assert_eq!(resp.status, 200, "positive control {what:?} did not pass: {} {body}", resp.status);
        let start = body.find("{\"echo\":\"tomcat\"").unwrap_or_else(|| panic!("{what}: no echo in {body}"));
        let e = Echo::from_json(body[start..].lines().next().unwrap().as_bytes())
            .unwrap_or_else(|| panic!("{what}: unreadable echo {body}"));
        assert_eq!(e.servlet, "xmlapi", "{what}: {body}");
        let params = e.params.as_ref().unwrap();
        let got = params.get(name).and_then(|v| v.first()).map(String::as_str);
        assert_eq!(got, want, "{what}: Tomcat read {name} = {got:?}: {body}");
        assert_eq!(
            e.apptokens.as_deref(),
            Some(&[harness::UPSTREAM_TOKEN.to_string()][..]),
            "{what}: exactly the upstream credential must reach Tomcat: {body}"
        );
        assert!(!body.contains(ro), "{what}: the caller's token reached Tomcat: {body}");
    }
    // And a plain write attempt is refused, by the right reason.
    let r = harness::request(gw.addr, "GET", &format!("{X}?APPTOKEN={ro}&ACTION=REMOVETARGETDATA"), &[], b"");
    assert_eq!(r.status, 403, "a read-only token's REMOVETARGETDATA: {}", r.text());
    assert_eq!(r.errorcode().as_deref(), Some("ACTION_NOT_ALLOWED"), "{}", r.text());
}

#[test]
fn read_only_token_never_gets_a_write_action_to_tomcat() {
    let started = Instant::now();
    let tomcat = TomcatUpstream::start();
    let gw = Gateway::start(&tomcat.url(), &harness::standard_tokens().render());
    println!("Tomcat at {}, gateway at {} (ready in {:?})", tomcat.url(), gw.addr, started.elapsed());

    positive_controls(&gw);

    let seed = std::env::var("TOMCAT_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x7E57_C0DE_u64);
    let verbose = std::env::var_os("TOMCAT_DIFF_VERBOSE").is_some();
    let cases = cases(seed);
    assert!(cases.len() + h2_cases().len() <= 1500, "keep the run bounded: {} cases", cases.len());
    let mut tally = Tally::default();
    for c in &cases {
        run_case(&gw, c, &mut tally, verbose);
    }
    let h2 = run_h2(&gw, &mut tally, verbose);
    // Any desynchronised upstream connection would show here, in the answer
    // to a plain request after everything else.
    positive_controls(&gw);

    println!(
        "Tomcat differential (seed {seed:#x}): {} cases ({h2} over HTTP/2), {} answers: {} forwarded, {} refused by the gateway {:?}, \
         {} refused by Tomcat itself, {} upstream failures, {} without answer; {:?}",
        tally.cases,
        tally.answers,
        tally.forwarded,
        tally.refused.values().sum::<usize>(),
        tally.refused,
        tally.tomcat_refused,
        tally.upstream_failed.len(),
        tally.no_answer.len(),
        started.elapsed()
    );
    for u in &tally.upstream_failed {
        println!("upstream failure: {u}");
    }
    for u in &tally.no_answer {
        println!("no answer: {u}");
    }
    assert!(h2 > 0, "no HTTP/2 case ran: the listener's HTTP/2 went untested");
    assert!(tally.upstream_failed.is_empty(), "the gateway failed upstream: {:?}", tally.upstream_failed);
    assert!(
        tally.forwarded > 50,
        "too few requests reached Tomcat ({}): is the gateway refusing everything?",
        tally.forwarded
    );
    assert!(
        tally.violations.is_empty(),
        "{} violation(s):\n\n{}\n\nTomcat log:\n{}",
        tally.violations.len(),
        tally.violations.join("\n\n"),
        tomcat.log().join("\n")
    );
}

/// The checks themselves, without Tomcat: they must flag what they are for,
/// or the differential test could pass by seeing nothing.
#[test]
fn the_tomcat_oracle_flags_bypasses_and_leaks() {
    let up = harness::UPSTREAM_TOKEN;
    let echo = |action: &str, tokens: &str, params: &str, path: &str| {
        let line = format!(
            "{{\"echo\":\"tomcat\",\"servlet\":\"xmlapi\",\"method\":\"GET\",\"servletPath\":\"{path}\",\"pathInfo\":null,\
             \"action\":{action},\"apptokenValues\":{tokens},\"parameters\":{params}}}"
        );
        Echo::from_json(line.as_bytes()).expect("a readable echo")
    };
    let ok_tokens = format!("[\"{up}\"]");
    let clean = |v: Vec<String>| assert!(v.is_empty(), "{v:?}");
    let flagged = |v: Vec<String>, what: &str| assert!(v.iter().any(|x| x.starts_with(what)), "{what}: {v:?}");

    clean(violations(&echo("null", &ok_tokens, "{}", "/opi/XMLAPI")));
    clean(violations(&echo("\"targetdata\"", &ok_tokens, "{\"ACTION\":[\"targetdata\"]}", "/opi/XMLAPI")));
    clean(violations(&echo("\"\\u017fcannerdata\"", "null", "{}", "/opi/XMLAPI")));
    clean(violations(&echo("\"REMOVETARGETDATA\"", &ok_tokens, "{}", "/opi/rest/outscan/x")));
    flagged(violations(&echo("\"REMOVETARGETDATA\"", &ok_tokens, "{}", "/opi/XMLAPI")), "BYPASS");
    flagged(violations(&echo("\"\"", &ok_tokens, "{}", "/opi/XMLAPI")), "BYPASS");
    flagged(violations(&echo("\"TARGETDATA\\u0000\"", &ok_tokens, "{}", "/opi/xmlapi")), "BYPASS");
    flagged(
        violations(&echo(
            "\"TARGETDATA\"",
            &ok_tokens,
            "{\"ACTION\":[\"TARGETDATA\",\"REMOVETARGETDATA\"]}",
            "/opi/XMLAPI",
        )),
        "STRICT",
    );
    flagged(violations(&echo("null", &ok_tokens, "{\"action\":[\"REMOVETARGETDATA\"]}", "/opi/XMLAPI")), "STRICT");
    flagged(violations(&echo("null", &format!("[\"{}\"]", harness::RO), "{}", "/opi/XMLAPI")), "TOKEN LEAK");
    flagged(violations(&echo("null", &format!("[\"{up}\",\"x\"]"), "{}", "/opi/XMLAPI")), "TOKEN LEAK");
    flagged(
        violations(&echo("null", &ok_tokens, &format!("{{\"apptoken\":[\"{}\"]}}", harness::RO), "/opi/XMLAPI")),
        "STRICT",
    );

    // Answers on one connection: 100 Continue, a chunked one, a sized one.
    let wire =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                 HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nnoHTTP/1.1 200 OK\r\n\r\nrest";
    let a = parse_answers(wire, false);
    let got: Vec<(u16, &[u8])> = a.iter().map(|a| (a.status, &a.body[..])).collect();
    assert_eq!(got, vec![(100, &b""[..]), (200, &b"abc"[..]), (403, &b"no"[..]), (200, &b"rest"[..])]);
    let a = parse_answers(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Echo-Servlet: xmlapi\r\nX-Echo-Action: \"REMOVETARGETDATA\"\r\n\r\n", true);
    let e = Echo::from_headers(&a[0]).expect("an echo from headers");
    flagged(violations(&e), "BYPASS");
}
