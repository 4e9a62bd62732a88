//! A mock scanner on 127.0.0.1:0 that records exactly what reached it (the
//! request line, every header, the body bytes) and answers as told.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, exactly as on the request line.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

/// What the mock answers.
#[derive(Clone)]
pub enum Reply {
    /// 200 with a small XMLAPI success body.
    Ok,
    /// This status and body.
    Status(u16, &'static str),
    /// 200 with `n` bytes, streamed in 64 KiB chunks.
    Stream(u64),
    /// Wait this long, then answer Ok.
    Delay(Duration),
    /// 302 to the same path with a slash, carrying the query it was sent (as
    /// a servlet container's context-root redirect does), and a session cookie.
    Redirect,
    /// 200 with these extra answer headers.
    Headers(Vec<(&'static str, String)>),
    /// The scanner's REST API and its logins, as [`RestScanner`] keeps them.
    Rest(Arc<RestScanner>),
    /// 200 whose reason phrase and trailer (`x-query`) quote the query it
    /// was sent, chunked, as a careless debugging front might.
    Quoting,
}

/// A scanner's REST side: `POST /opi/rest/auth/login` (form fields
/// `username`, `password`; the body of the answer is the token), the
/// XMLAPI's `GETRESTTOKEN` (with the right APPTOKEN; `{"success": true,
/// "data": <token>}`), and REST routes that take only a bearer it issued,
/// not revoked and younger than its lifetime (401 otherwise).
pub struct RestScanner {
    pub username: &'static str,
    pub password: &'static str,
    pub apptoken: String,
    state: Mutex<RestState>,
}

#[derive(Default)]
struct RestState {
    issued: Vec<(String, std::time::Instant)>,
    revoked_before: usize,
    logins: usize,
    failing: bool,
    lifetime: Option<Duration>,
    delay: Duration,
}

impl RestScanner {
    pub fn new(username: &'static str, password: &'static str, apptoken: &str) -> Arc<Self> {
        Arc::new(Self { username, password, apptoken: apptoken.to_string(), state: Mutex::new(RestState::default()) })
    }
    /// Logins (of either kind) answered so far, good or bad.
    pub fn logins(&self) -> usize {
        self.state.lock().unwrap().logins
    }
    /// Every token issued so far stops working (as after a restart).
    pub fn revoke_all(&self) {
        let mut s = self.state.lock().unwrap();
        s.revoked_before = s.issued.len();
    }
    /// Refuse every login from now on (or not).
    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }
    /// Tokens expire this long after they were issued.
    pub fn set_lifetime(&self, d: Duration) {
        self.state.lock().unwrap().lifetime = Some(d);
    }
    /// Each login takes this long to answer.
    pub fn set_login_delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }

    fn issue(&self) -> Option<String> {
        let mut s = self.state.lock().unwrap();
        s.logins += 1;
        if s.failing {
            return None;
        }
        let t = format!("rest-{}", s.issued.len() + 1);
        s.issued.push((t.clone(), std::time::Instant::now()));
        Some(t)
    }

    fn valid(&self, bearer: &str) -> bool {
        let s = self.state.lock().unwrap();
        s.issued
            .iter()
            .enumerate()
            .any(|(i, (t, at))| t == bearer && i >= s.revoked_before && s.lifetime.is_none_or(|l| at.elapsed() < l))
    }

    async fn answer(&self, parts: &http::request::Parts, body: &[u8]) -> Response<Body> {
        let delay = self.state.lock().unwrap().delay;
        let query = parts.uri.query().unwrap_or("");
        let form =
            |text: &str, key: &str| text.split('&').find_map(|p| p.strip_prefix(&format!("{key}=")).map(form_decode));
        if parts.uri.path() == "/opi/rest/auth/login" {
            let text = String::from_utf8_lossy(body).into_owned();
            let ok = parts.method == http::Method::POST
                && form(&text, "username").as_deref() == Some(self.username)
                && form(&text, "password").as_deref() == Some(self.password);
            tokio::time::sleep(delay).await;
            return match ok.then(|| self.issue()).flatten() {
                Some(t) => xml_owned(200, t),
                None => xml(401, "bad credentials"),
            };
        }
        if parts.uri.path() == "/opi/XMLAPI" && query.contains("ACTION=GETRESTTOKEN") {
            let ok = form(query, "APPTOKEN").as_deref() == Some(self.apptoken.as_str()) && query.contains("JSON=1");
            tokio::time::sleep(delay).await;
            return match ok.then(|| self.issue()).flatten() {
                Some(t) => xml_owned(200, serde_json::json!({"success": true, "data": t}).to_string()),
                None => xml_owned(200, r#"{"success":false,"data":{"errorMessage":"no"}}"#.to_string()),
            };
        }
        if !parts.uri.path().starts_with("/opi/rest/") {
            // The XMLAPI and anything else: as the plain mock answers.
            return xml(200, OK_BODY);
        }
        let bearer =
            parts.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match bearer {
            // A debugging route that quotes what it was sent.
            Some(b) if self.valid(b) && parts.uri.path() == "/opi/rest/echo" => {
                let mut resp = xml(200, OK_BODY);
                resp.headers_mut().insert("x-echo-auth", format!("Bearer {b}").parse().unwrap());
                resp.headers_mut()
                    .insert("x-echo-login", format!("{}:{}", self.username, self.password).parse().unwrap());
                resp
            }
            Some(b) if self.valid(b) => xml(200, OK_BODY),
            _ => xml(401, "unauthorized"),
        }
    }
}

pub const OK_BODY: &str = "<?xml version=\"1.0\"?><RESPONSE><SUCCESS>true</SUCCESS></RESPONSE>";

/// The runtime the mock servers run on, shared by all tests.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

/// A running mock upstream.
pub struct MockUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    reply: Arc<Mutex<Reply>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    pub fn start() -> Self {
        Self::start_with(Reply::Ok)
    }

    pub fn start_with(reply: Reply) -> Self {
        Self::start_inner(reply, None)
    }

    /// A mock answering over TLS with this certificate and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::start_inner(Reply::Ok, Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))))
    }

    fn start_inner(reply: Reply, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(Mutex::new(reply));
        let listener = runtime().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (s, r) = (seen.clone(), reply.clone());
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = connections.clone();
        let task = runtime().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (s, r) = (s.clone(), r.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, s.clone(), r.clone()));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls_stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(tls_stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, seen, reply, connections, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The last request received.
    pub fn last(&self) -> Recorded {
        self.seen.lock().unwrap().last().cloned().expect("the upstream received nothing")
    }

    /// How many connections were accepted (the readiness probe's included).
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_reply(&self, r: Reply) {
        *self.reply.lock().unwrap() = r;
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Recorded>>>,
    reply: Arc<Mutex<Reply>>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes().to_vec()).unwrap_or_default();
    let target = parts.uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string());
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    // The gateway's readiness probe is not a request under test.
    if parts.headers.get("user-agent").is_none_or(|v| v != "tokengate-readiness-probe") {
        seen.lock().unwrap().push(Recorded { method: parts.method.to_string(), target, headers, body: body.clone() });
    }
    let r = reply.lock().unwrap().clone();
    let redirect_to = format!("{}/?{}", parts.uri.path(), parts.uri.query().unwrap_or(""));
    let resp = match r {
        Reply::Ok => xml(200, OK_BODY),
        Reply::Status(code, body) => xml(code, body),
        Reply::Redirect => {
            let mut resp = xml(302, "");
            resp.headers_mut().insert("location", redirect_to.parse().unwrap());
            resp.headers_mut().insert("set-cookie", "JSESSIONID=upstream-session; Path=/opi".parse().unwrap());
            resp
        }
        Reply::Rest(scanner) => scanner.answer(&parts, &body).await,
        Reply::Quoting => {
            let query = parts.uri.query().unwrap_or("").to_string();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-query", query.parse().unwrap());
            let frames = [Frame::data(Bytes::from_static(OK_BODY.as_bytes())), Frame::trailers(trailers)];
            let s = futures_util::stream::iter(frames.into_iter().map(Ok::<_, Infallible>));
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(s)));
            let reason = format!("OK {query}").into_bytes();
            resp.extensions_mut().insert(hyper::ext::ReasonPhrase::try_from(reason).unwrap());
            resp.headers_mut().insert("trailer", "x-query".parse().unwrap());
            resp
        }
        Reply::Headers(extra) => {
            let mut resp = xml(200, OK_BODY);
            for (k, v) in extra {
                resp.headers_mut().append(k, v.parse().unwrap());
            }
            resp
        }
        Reply::Delay(d) => {
            tokio::time::sleep(d).await;
            xml(200, OK_BODY)
        }
        Reply::Stream(n) => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = (n / chunk.len() as u64) as usize;
            let tail = (n % chunk.len() as u64) as usize;
            let s = futures_util::stream::iter(
                std::iter::repeat_n(chunk.clone(), chunks)
                    .chain((tail > 0).then(|| chunk.slice(..tail)))
                    .map(|c| Ok::<_, Infallible>(Frame::data(c))),
            );
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(s)));
            resp.headers_mut().insert("content-type", "application/octet-stream".parse().unwrap());
            resp
        }
    };
    Ok(resp)
}

/// A form value decoded (`+` is a space, `%XX` a byte).
fn form_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn xml_owned(code: u16, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
    resp
}

fn xml(code: u16, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
    resp.headers_mut().insert("content-type", "text/xml".parse().unwrap());
    resp
}
