//! The integration harness: a mock upstream that records exactly what it
//! receives, the real `tokengate` binary on ephemeral ports, a token-file
//! builder, and a raw HTTP/1.1 client that sends bytes exactly as written.

#![allow(dead_code)]

pub mod client;
pub mod h2client;
pub mod redis;
pub mod tls;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use client::{request, Response};
pub use upstream::{MockUpstream, Recorded, Reply, RestScanner, OK_BODY};

/// The credential the gateway is configured to put upstream.
pub const UPSTREAM_TOKEN: &str = "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF";

/// Lower-case hex SHA-256, as token files hold it.
pub fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A token for a `[[token]]`.
#[derive(Clone)]
pub struct TokenSpec {
    pub name: String,
    pub secret: String,
    /// Further secrets after `secret` (rotation): `token_sha256` is then a list.
    pub older: Vec<String>,
    pub right: String,
    pub active: bool,
    pub ips: Vec<String>,
    pub expires: Option<String>,
}

impl TokenSpec {
    pub fn new(name: &str, secret: &str, right: &str) -> Self {
        Self {
            name: name.into(),
            secret: secret.into(),
            older: Vec::new(),
            right: right.into(),
            active: true,
            ips: Vec::new(),
            expires: None,
        }
    }
    pub fn ips(mut self, ips: &[&str]) -> Self {
        self.ips = ips.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn inactive(mut self) -> Self {
        self.active = false;
        self
    }
    /// `expires` as a TOML date-time; without it the token has `"never"`.
    pub fn expires(mut self, at: &str) -> Self {
        self.expires = Some(at.into());
        self
    }
    /// An older secret after the others (as `token rotate` leaves it).
    pub fn also(mut self, secret: &str) -> Self {
        self.older.push(secret.into());
        self
    }
}

/// Builds the text of a token file.
#[derive(Default, Clone)]
pub struct TokenFile {
    rights: Vec<(String, Vec<String>, Vec<String>)>,
    tokens: Vec<TokenSpec>,
}

impl TokenFile {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn right(mut self, name: &str, actions: &[&str], routes: &[&str]) -> Self {
        self.rights.push((
            name.into(),
            actions.iter().map(|s| s.to_string()).collect(),
            routes.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }
    pub fn token(mut self, t: TokenSpec) -> Self {
        self.tokens.push(t);
        self
    }
    pub fn render(&self) -> String {
        let q = |v: &[String]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        let mut out = String::new();
        for (name, actions, routes) in &self.rights {
            out += &format!("[access_rights.{name}]\nactions = [{}]\nroutes = [{}]\n\n", q(actions), q(routes));
        }
        for t in &self.tokens {
            let digest = if t.older.is_empty() {
                format!("\"{}\"", sha256_hex(&t.secret))
            } else {
                let all: Vec<String> = std::iter::once(&t.secret).chain(&t.older).map(|s| sha256_hex(s)).collect();
                format!("[{}]", q(&all))
            };
            out += &format!(
                "[[token]]\nname = {:?}\nactive = {}\ntoken_sha256 = {digest}\nip_restriction = [{}]\naccess_right = {:?}\n",
                t.name,
                t.active,
                q(&t.ips),
                t.right
            );
            out += &format!("expires = {}\n\n", t.expires.as_deref().unwrap_or("\"never\""));
        }
        out
    }
}

/// The usual table of the tests: a read-only right, an admin right, and
/// tokens named after what they show.
pub fn standard_tokens() -> TokenFile {
    TokenFile::new()
        .right(
            "read-only",
            &["TARGETDATA", "TARGETGROUPDATA", "SCANNERDATA", "REPORTTARGETDATA"],
            &["GET /opi/rest/outscan/*"],
        )
        .right("admin", &["*"], &["* /*"])
        .token(TokenSpec::new("reader", RO, "read-only"))
        .token(TokenSpec::new("boss", ADMIN, "admin"))
        .token(TokenSpec::new("sleeper", INACTIVE, "admin").inactive())
        .token(TokenSpec::new("old", EXPIRED, "admin").expires("2020-01-01T00:00:00Z"))
        .token(TokenSpec::new("elsewhere", ELSEWHERE, "admin").ips(&["192.0.2.0/24", "2001:db8::/32"]))
}

/// Tokens of [`standard_tokens`], 64 upper-case hex like the scanner's.
pub const RO: &str = "A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1";
pub const ADMIN: &str = "B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2";
pub const INACTIVE: &str = "C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3";
pub const EXPIRED: &str = "D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4D4";
pub const ELSEWHERE: &str = "E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5E5";
pub const UNKNOWN: &str = "F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6F6";

/// How to start a gateway.
pub struct GatewayBuilder {
    upstream: String,
    tokens: String,
    extra: String,
    apptoken: bool,
    timeout: String,
    tokens_path: Option<PathBuf>,
    upstream_extra: String,
    tokens_extra: String,
    server_extra: String,
    admin_extra: String,
    one_cpu: bool,
}

impl GatewayBuilder {
    /// Extra TOML appended to gateway.toml (whole sections, e.g. `[limits]`).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }
    /// Pin the gateway to one CPU (`taskset`), as the load comparison does:
    /// it then runs its single-threaded scheduler.
    pub fn one_cpu(mut self) -> Self {
        self.one_cpu = true;
        self
    }
    /// Extra lines inside `[server]`.
    pub fn extra_server(mut self, lines: &str) -> Self {
        self.server_extra.push_str(lines);
        self.server_extra.push('\n');
        self
    }
    /// Extra lines inside `[upstream]`.
    pub fn extra_upstream(mut self, lines: &str) -> Self {
        self.upstream_extra.push_str(lines);
        self.upstream_extra.push('\n');
        self
    }
    /// Extra lines inside `[admin]`.
    pub fn extra_admin(mut self, lines: &str) -> Self {
        self.admin_extra.push_str(lines);
        self.admin_extra.push('\n');
        self
    }
    /// Extra lines inside `[tokens]` (`max_file_bytes = ...`).
    pub fn tokens_extra(mut self, lines: &str) -> Self {
        self.tokens_extra.push_str(lines);
        self.tokens_extra.push('\n');
        self
    }
    /// Point `tokens.file` at an existing file instead of writing one.
    pub fn tokens_path(mut self, p: &Path) -> Self {
        self.tokens_path = Some(p.to_path_buf());
        self
    }
    /// `upstream.timeout`.
    pub fn upstream_timeout(mut self, t: &str) -> Self {
        self.timeout = t.into();
        self
    }
    /// Leave `upstream.apptoken_file` unset.
    pub fn no_upstream_token(mut self) -> Self {
        self.apptoken = false;
        self
    }
    pub fn start(self) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let tokens_file = match &self.tokens_path {
            Some(p) => p.to_string_lossy().into_owned(),
            None => {
                std::fs::write(dir.path().join("tokens.toml"), &self.tokens).unwrap();
                "tokens.toml".to_string()
            }
        };
        std::fs::write(dir.path().join("upstream.token"), format!("{UPSTREAM_TOKEN}\n")).unwrap();
        let apptoken = if self.apptoken { "apptoken_file = \"upstream.token\"\n" } else { "" };
        let mut cfg = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[upstream]\nurl = \"{}\"\n{apptoken}{}timeout = \"{}\"\n\n\
             [tokens]\nfile = \"{}\"\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\n",
            self.server_extra,
            self.upstream,
            self.upstream_extra,
            self.timeout,
            tokens_file,
            self.tokens_extra,
            self.admin_extra
        );
        cfg.push_str(&self.extra);
        if !self.extra.contains("[client_ip]") {
            cfg.push_str("[client_ip]\ntrusted_proxies = []\n");
        }
        std::fs::write(dir.path().join("gateway.toml"), cfg).unwrap();
        Gateway::spawn(dir, self.one_cpu)
    }
}

/// A running gateway; killed on drop.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    pub fn builder(upstream_url: &str, tokens_toml: &str) -> GatewayBuilder {
        GatewayBuilder {
            upstream: upstream_url.into(),
            tokens: tokens_toml.into(),
            extra: String::new(),
            apptoken: true,
            timeout: "5s".into(),
            tokens_path: None,
            upstream_extra: String::new(),
            tokens_extra: String::new(),
            server_extra: String::new(),
            admin_extra: String::new(),
            one_cpu: false,
        }
    }

    /// A gateway in front of `upstream_url` with the given token file.
    pub fn start(upstream_url: &str, tokens_toml: &str) -> Gateway {
        Self::builder(upstream_url, tokens_toml).start()
    }

    fn spawn(dir: tempfile::TempDir, one_cpu: bool) -> Gateway {
        let mut cmd = if one_cpu {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(bin());
            c
        } else {
            Command::new(bin())
        };
        let mut child = cmd
            .arg("run")
            .arg("-c")
            .arg(dir.path().join("gateway.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tokengate");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line.clone());
                    log.lock().unwrap().push(line);
                }
            });
        }
        let (mut addr, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while addr.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!("tokengate did not start:\n{}", log.lock().unwrap().join("\n"));
            };
            if line.contains("proxy listening") {
                addr = Some(addr_in(&line));
            } else if line.contains("admin listening") {
                admin = Some(addr_in(&line));
            }
        }
        Gateway { addr: addr.unwrap(), admin: admin.unwrap(), dir, child, log }
    }

    /// Everything the gateway printed so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (polling, bounded) until a printed line satisfies `f`.
    pub fn wait_log(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.log().into_iter().find(|l| f(l)) {
                return l;
            }
            assert!(Instant::now() < deadline, "no log line for {what}:\n{}", self.log().join("\n"));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Sends one request through the proxy listener.
    pub fn send(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(self.addr, method, target, headers, body)
    }

    pub fn get(&self, target: &str) -> Response {
        self.send("GET", target, &[], b"")
    }

    pub fn post_form(&self, target: &str, body: &str) -> Response {
        self.send("POST", target, &[("Content-Type", "application/x-www-form-urlencoded")], body.as_bytes())
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr_in(line: &str) -> SocketAddr {
    // Text logs say addr=1.2.3.4:5, JSON logs "addr":"1.2.3.4:5".
    let at = line.find("addr=").map(|i| i + 5).or_else(|| line.find("\"addr\":\"").map(|i| i + 8));
    let rest = &line[at.expect("addr in the listening line")..];
    let end = rest.find(|c: char| c.is_whitespace() || c == '"' || c == ',').unwrap_or(rest.len());
    rest[..end].parse().expect("a socket address")
}

/// The gateway binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tokengate"))
}

/// Runs the binary with arguments to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sin = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        sin.write_all(s.as_bytes()).unwrap();
    }
    drop(sin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`run_cli`], but the command is killed when it has not exited
/// `within` (then the code is -1): for commands that must not hang.
pub fn run_cli_within(args: &[&str], within: Duration) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` every 5 ms until it returns Some, for at most `within`.
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
