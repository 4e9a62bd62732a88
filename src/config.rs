//! `gateway.toml` (interface.md §3): raw serde structs that reject unknown
//! keys, then a validated [`Config`]. Every section is read on its own so that
//! one broken section does not hide the errors of the next; relative paths
//! resolve against the config file's folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use ipnet::IpNet;
use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::Deserialize;
use serde_spanned::Spanned;
use toml_edit::ImDocument;

use crate::diagnostic::{ConfigErrors, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Spanned<String>,
    denial_status: Option<Spanned<String>>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Spanned<String>,
    apptoken_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rest: Option<RawRest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRest {
    login: Spanned<String>,
    username_file: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    token_lifetime: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    file: Spanned<String>,
    max_file_bytes: Option<Spanned<i64>>,
}

/// Default of `tokens.max_file_bytes` (interface.md §3): 512 MiB, well
/// above a million tokens (about 200 MB).
pub const DEFAULT_MAX_TOKEN_FILE_BYTES: u64 = 512 << 20;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClientIp {
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_read_timeout: Option<Spanned<String>>,
    body_idle_timeout: Option<Spanned<String>>,
    keepalive_idle_timeout: Option<Spanned<String>>,
    max_header_bytes: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    inspect_body_bytes: Option<Spanned<i64>>,
    shutdown_grace: Option<Spanned<String>>,
    shared: Option<RawShared>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShared {
    redis: Spanned<String>,
    on_error: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<Spanned<String>>,
}

/// TLS for the proxy listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The upstream credential put in place of the caller's token. Its `Debug`
/// never prints it.
#[derive(Clone)]
pub struct UpstreamToken(pub String);

impl std::fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamToken(<redacted>)")
    }
}

/// A secret read from a file (a REST login's user name or password). Its
/// `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How the gateway obtains the scanner's own REST token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestLogin {
    /// `GET /opi/XMLAPI?ACTION=GETRESTTOKEN&APPTOKEN=<apptoken_file>&JSON=1`.
    AppToken,
    /// `POST /opi/rest/auth/login` with these form fields.
    Password {
        /// `username_file`'s content.
        username: Secret,
        /// `password_file`'s content.
        password: Secret,
    },
}

/// `[upstream.rest]`: REST routes go upstream with the scanner's own REST
/// bearer token, which the gateway obtains and renews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestConfig {
    /// How the token is obtained.
    pub login: RestLogin,
    /// How long a REST token lasts at the scanner (renewed at about 80 %).
    pub token_lifetime: Duration,
}

/// What HTTP status a refusal answers with (`server.denial_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenialStatus {
    /// The status of interface.md §5 (401, 403, ...).
    #[default]
    Http,
    /// 200 for a refusal of an XMLAPI request that names an ACTION, as the
    /// scanner answers its own errors (the common Python clients read the
    /// error only from a 2xx answer).
    Xmlapi,
}

/// `[upstream]`, validated: where allowed requests go and with what credential.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// host[:port].
    pub authority: Authority,
    /// The credential from `apptoken_file`, if set.
    pub apptoken: Option<UpstreamToken>,
    /// An extra CA to trust for the upstream.
    pub ca_file: Option<PathBuf>,
    /// Limit for opening a connection.
    pub connect_timeout: Duration,
    /// Limit for the answer to begin.
    pub timeout: Duration,
    /// `[upstream.rest]`, when present.
    pub rest: Option<RestConfig>,
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The whole request head must arrive within this.
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of a request body.
    pub body_idle_timeout: Duration,
    /// An idle client connection is closed after this.
    pub keepalive_idle_timeout: Duration,
    /// A request head larger than this gets 431.
    pub max_header_bytes: usize,
    /// Connections served at once; more wait in the backlog.
    pub max_connections: usize,
    /// A body that must be read to decide, larger than this: 413.
    pub inspect_body_bytes: usize,
    /// In-flight requests get this long to finish on SIGTERM.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            keepalive_idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16384,
            max_connections: 10000,
            inspect_body_bytes: 1 << 20,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What a limited request gets when the shared store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Each replica counts alone, in its own bucket.
    Local,
    /// 429 RATE_LIMITED.
    Deny,
    /// Allowed, uncounted.
    Allow,
}

/// `[limits.shared]`: per-token rates counted across every replica that
/// names the same Redis.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedLimits {
    /// `redis`: the store's URL (it may hold a password: `Debug` hides it).
    pub redis: String,
    /// `on_error`.
    pub on_error: OnStoreError,
    /// `timeout`: the longest wait for the store.
    pub timeout: Duration,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits").field("on_error", &self.on_error).field("timeout", &self.timeout).finish()
    }
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// The validated gateway config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Proxy listener.
    pub listen: SocketAddr,
    /// TLS for the proxy listener, when set.
    pub tls: Option<TlsFiles>,
    /// `[upstream]`.
    pub upstream: UpstreamConfig,
    /// The token file, resolved.
    pub tokens_file: PathBuf,
    /// `tokens.max_file_bytes`: a larger token file is refused unread.
    pub tokens_max_file_bytes: u64,
    /// CIDRs whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `[limits]`.
    pub limits: Limits,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// `admin.hosts`: names the admin listener answers to besides IP
    /// literals and `localhost`; lower case, without a trailing dot.
    pub admin_hosts: Vec<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// `server.denial_status`.
    pub denial_status: DenialStatus,
    /// `[limits.shared]`, when present.
    pub shared_limits: Option<SharedLimits>,
}

impl Config {
    /// Reads and validates `path`, reporting every error found.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::whole_file(path, format!("cannot read the config file: {e}")))?;
        Self::parse(path, &text)
    }

    /// Validates the text of a config file read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let mut src = Source::new(path, text);
        let doc = match ImDocument::parse(text) {
            Ok(d) => d,
            Err(e) => {
                src.error(e.span(), e.message().trim_end().to_string());
                return Err(ConfigErrors(src.into_errors()));
            }
        };
        const SECTIONS: [&str; 7] = ["server", "upstream", "tokens", "client_ip", "limits", "admin", "log"];
        for (key, _) in doc.iter() {
            if !SECTIONS.contains(&key) {
                let span = doc.key(key).and_then(|k| k.span());
                src.error(span, format!("unknown section `{key}`: expected one of {}", SECTIONS.join(", ")));
            }
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let server: Option<RawServer> = section(&doc, "server", true, &mut src);
        let upstream: Option<RawUpstream> = section(&doc, "upstream", true, &mut src);
        let tokens: Option<RawTokens> = section(&doc, "tokens", true, &mut src);
        let client_ip: RawClientIp = section(&doc, "client_ip", false, &mut src).unwrap_or_default();
        let limits: RawLimits = section(&doc, "limits", false, &mut src).unwrap_or_default();
        let admin: Option<RawAdmin> = section(&doc, "admin", true, &mut src);
        let log: RawLog = section(&doc, "log", false, &mut src).unwrap_or_default();

        let listen = server.as_ref().and_then(|s| socket_addr(&s.listen, &mut src));
        let denial_status = match server.as_ref().and_then(|s| s.denial_status.as_ref()) {
            None => DenialStatus::Http,
            Some(v) => match v.get_ref().as_str() {
                "http" => DenialStatus::Http,
                "xmlapi" => DenialStatus::Xmlapi,
                other => {
                    src.error(Some(v.span()), format!("denial_status {other:?} is not \"http\" or \"xmlapi\""));
                    DenialStatus::Http
                }
            },
        };
        let tls = server
            .and_then(|s| s.tls)
            .map(|t| TlsFiles { cert: resolve(t.cert.get_ref()), key: resolve(t.key.get_ref()) });
        let admin_listen = admin.as_ref().and_then(|a| socket_addr(&a.listen, &mut src));
        let admin_hosts = admin
            .as_ref()
            .map_or_else(Vec::new, |a| a.hosts.iter().filter_map(|h| host_name(h, &mut src)).collect::<Vec<_>>());
        if let (Some(l), Some(a), Some(admin)) = (listen, admin_listen, &admin) {
            if l == a && l.port() != 0 {
                src.error(Some(admin.listen.span()), "the admin listener must not share the proxy's address");
            }
        }

        let upstream = upstream.and_then(|u| {
            let url = upstream_url(&u.url, &mut src);
            let apptoken = u.apptoken_file.as_ref().and_then(|f| {
                let p = resolve(f.get_ref());
                match std::fs::read_to_string(&p) {
                    // Unreserved characters only: the credential then reads
                    // the same in a query as in the file, so it can be found
                    // and written over wherever an answer would echo it.
                    Ok(s)
                        if !s.trim().is_empty()
                            && s.trim().bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) =>
                    {
                        Some(UpstreamToken(s.trim().to_string()))
                    }
                    // Neither message quotes the path: a credential pasted
                    // where the path belongs would be echoed to the terminal
                    // and the logs.
                    Ok(_) => {
                        src.error(
                            Some(f.span()),
                            "the file named by `apptoken_file` must hold one token and nothing else \
                             (letters, digits, - . _ ~)",
                        );
                        None
                    }
                    Err(e) => {
                        src.error(
                            Some(f.span()),
                            format!("cannot read the file named by `apptoken_file` (the path is not shown): {e}"),
                        );
                        None
                    }
                }
            });
            let ca_file = u.ca_file.as_ref().map(|f| resolve(f.get_ref()));
            let connect_timeout = duration(u.connect_timeout.as_ref(), Duration::from_secs(5), &mut src);
            let timeout = duration(u.timeout.as_ref(), Duration::from_secs(120), &mut src);
            let rest = u.rest.as_ref().and_then(|r| rest_config(r, apptoken.is_some(), &resolve, &mut src));
            let (scheme, authority) = url?;
            Some(UpstreamConfig { scheme, authority, apptoken, ca_file, connect_timeout, timeout, rest })
        });

        let mut trusted_proxies = Vec::new();
        for p in &client_ip.trusted_proxies {
            match crate::net::parse_cidr(p.get_ref()) {
                Some(n) => trusted_proxies.push(n),
                None => src.error(Some(p.span()), format!("{:?} is not an IP address or CIDR", p.get_ref())),
            }
        }

        let shared_limits = limits.shared.as_ref().and_then(|sh| {
            let redis = match redis::IntoConnectionInfo::into_connection_info(sh.redis.get_ref().as_str()) {
                Ok(_) => Some(sh.redis.get_ref().clone()),
                Err(_) => {
                    // The URL may hold a password: said where, not quoted.
                    src.error(Some(sh.redis.span()), "`redis` is not a Redis URL (redis://host:port/db)");
                    None
                }
            };
            let on_error = match sh.on_error.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
                None | Some(("local", _)) => OnStoreError::Local,
                Some(("deny", _)) => OnStoreError::Deny,
                Some(("allow", _)) => OnStoreError::Allow,
                Some((other, span)) => {
                    src.error(Some(span), format!("on_error {other:?} is not \"local\", \"deny\" or \"allow\""));
                    OnStoreError::Local
                }
            };
            let timeout = duration(sh.timeout.as_ref(), Duration::from_millis(50), &mut src);
            Some(SharedLimits { redis: redis?, on_error, timeout })
        });
        let d = Limits::default();
        let limits = Limits {
            header_read_timeout: duration(limits.header_read_timeout.as_ref(), d.header_read_timeout, &mut src),
            body_idle_timeout: duration(limits.body_idle_timeout.as_ref(), d.body_idle_timeout, &mut src),
            keepalive_idle_timeout: duration(
                limits.keepalive_idle_timeout.as_ref(),
                d.keepalive_idle_timeout,
                &mut src,
            ),
            max_header_bytes: count(limits.max_header_bytes.as_ref(), d.max_header_bytes, 8192, &mut src),
            max_connections: count(limits.max_connections.as_ref(), d.max_connections, 1, &mut src),
            inspect_body_bytes: count(limits.inspect_body_bytes.as_ref(), d.inspect_body_bytes, 0, &mut src),
            shutdown_grace: duration(limits.shutdown_grace.as_ref(), d.shutdown_grace, &mut src),
        };

        let log_format = match log.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
            None | Some(("text", _)) => LogFormat::Text,
            Some(("json", _)) => LogFormat::Json,
            Some((other, span)) => {
                src.error(Some(span), format!("log format {other:?} is not \"text\" or \"json\""));
                LogFormat::Text
            }
        };

        let d = DEFAULT_MAX_TOKEN_FILE_BYTES as usize;
        let tokens_max_file_bytes =
            tokens.as_ref().map_or(d, |t| count(t.max_file_bytes.as_ref(), d, 1, &mut src)) as u64;
        let tokens_file = tokens.map(|t| resolve(t.file.get_ref()));
        match (src.has_errors(), listen, upstream, tokens_file, admin_listen) {
            (false, Some(listen), Some(upstream), Some(tokens_file), Some(admin_listen)) => Ok(Config {
                path: path.to_path_buf(),
                listen,
                tls,
                upstream,
                tokens_file,
                tokens_max_file_bytes,
                trusted_proxies,
                limits,
                admin_listen,
                admin_hosts,
                log_format,
                denial_status,
                shared_limits,
            }),
            _ => Err(ConfigErrors(src.into_errors())),
        }
    }
}

/// Deserialises one top-level section on its own, recording its error.
fn section<T: DeserializeOwned>(doc: &ImDocument<&str>, name: &str, required: bool, src: &mut Source<'_>) -> Option<T> {
    let Some(item) = doc.get(name) else {
        if required {
            src.error(None, format!("missing section [{name}]"));
        }
        return None;
    };
    let span = doc.key(name).and_then(|k| k.span()).or_else(|| item.span());
    let Ok(value) = item.clone().into_value() else {
        src.error(span, format!("[{name}] must be a table"));
        return None;
    };
    match T::deserialize(value.into_deserializer()) {
        Ok(v) => Some(v),
        Err(e) => {
            src.toml_error(&e, span);
            None
        }
    }
}

/// `[upstream.rest]`, validated; its secrets read from their files, never
/// quoted in an error.
fn rest_config(
    r: &RawRest,
    has_apptoken: bool,
    resolve: &dyn Fn(&str) -> PathBuf,
    src: &mut Source<'_>,
) -> Option<RestConfig> {
    let token_lifetime = duration(r.token_lifetime.as_ref(), Duration::from_secs(600), src);
    let mut secret = |key: &str, file: &Option<Spanned<String>>| -> Option<Secret> {
        let Some(f) = file else {
            src.error(Some(r.login.span()), format!("login = \"password\" needs `{key}`"));
            return None;
        };
        let p = resolve(f.get_ref());
        match std::fs::read_to_string(&p) {
            Ok(s) if !s.trim().is_empty() && !s.trim().contains(['\r', '\n']) => Some(Secret(s.trim().to_string())),
            Ok(_) => {
                src.error(Some(f.span()), format!("`{key}` {} must hold one line and nothing else", p.display()));
                None
            }
            Err(e) => {
                src.error(Some(f.span()), format!("cannot read `{key}` {}: {}", p.display(), e.kind()));
                None
            }
        }
    };
    let login = match r.login.get_ref().as_str() {
        "apptoken" => {
            if !has_apptoken {
                src.error(
                    Some(r.login.span()),
                    "login = \"apptoken\" needs `upstream.apptoken_file` (a super-user token)",
                );
                return None;
            }
            for (key, f) in [("username_file", &r.username_file), ("password_file", &r.password_file)] {
                if let Some(f) = f {
                    src.error(Some(f.span()), format!("`{key}` belongs to login = \"password\""));
                }
            }
            RestLogin::AppToken
        }
        "password" => {
            let username = secret("username_file", &r.username_file);
            let password = secret("password_file", &r.password_file);
            RestLogin::Password { username: username?, password: password? }
        }
        other => {
            src.error(Some(r.login.span()), format!("login {other:?} is not \"apptoken\" or \"password\""));
            return None;
        }
    };
    Some(RestConfig { login, token_lifetime })
}

fn socket_addr(s: &Spanned<String>, src: &mut Source<'_>) -> Option<SocketAddr> {
    match s.get_ref().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            src.error(
                Some(s.span()),
                format!("{:?} is not host:port (an IP address and a port, [v6]:port for IPv6)", s.get_ref()),
            );
            None
        }
    }
}

/// A DNS name for `admin.hosts`: dot-separated labels of letters, digits
/// and `-` (not at either end of a label), at most 253 bytes; no port, no
/// wildcard. Returned in lower case without a trailing dot, as Host headers
/// are compared.
fn host_name(s: &Spanned<String>, src: &mut Source<'_>) -> Option<String> {
    let name = s.get_ref().strip_suffix('.').unwrap_or(s.get_ref()).to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok) {
        return Some(name);
    }
    src.error(
        Some(s.span()),
        format!(
            "admin.hosts: {:?} is not a host name (letters, digits, '-' and '.'; no port, no wildcard)",
            s.get_ref()
        ),
    );
    None
}

/// `upstream.url`. Errors never quote it: a URL with `user:password@` or a
/// query may carry a credential.
fn upstream_url(s: &Spanned<String>, src: &mut Source<'_>) -> Option<(Scheme, Authority)> {
    let err = |src: &mut Source<'_>, why: &str| {
        src.error(Some(s.span()), format!("`upstream.url` {why} (the value is not shown)"));
        None
    };
    let Ok(uri) = s.get_ref().parse::<http::Uri>() else {
        return err(src, "is not a URL: it must be scheme://host[:port]");
    };
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return err(src, "must be scheme://host[:port]");
    };
    if scheme != &Scheme::HTTP && scheme != &Scheme::HTTPS {
        return err(src, "must use the scheme http or https");
    }
    if authority.as_str().contains('@') {
        return err(src, "must not hold a user or password (user:password@): the gateway sends its own credential");
    }
    if uri.query().is_some() {
        return err(src, "must not have a query: scheme://host[:port] only");
    }
    if !matches!(uri.path(), "" | "/") {
        return err(src, "must not have a path: scheme://host[:port] only");
    }
    Some((scheme.clone(), authority.clone()))
}

fn duration(s: Option<&Spanned<String>>, default: Duration, src: &mut Source<'_>) -> Duration {
    let Some(s) = s else { return default };
    match humantime::parse_duration(s.get_ref()) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            src.error(Some(s.span()), format!("{:?} is not a duration like \"10s\", \"500ms\" or \"2m\"", s.get_ref()));
            default
        }
    }
}

fn count(n: Option<&Spanned<i64>>, default: usize, min: usize, src: &mut Source<'_>) -> usize {
    let Some(n) = n else { return default };
    match usize::try_from(*n.get_ref()) {
        Ok(v) if v >= min => v,
        _ => {
            src.error(Some(n.span()), format!("must be a whole number of at least {min}"));
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(Path::new("/etc/tg/gateway.toml"), text).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_minimal_config_gets_defaults_and_resolves_paths() {
        let c = parse(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"https://outscan.outpost24.com\"\n\
             [tokens]\nfile = \"tokens.toml\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n",
        )
        .unwrap();
        assert_eq!(c.tokens_file, Path::new("/etc/tg/tokens.toml"));
        assert_eq!(c.upstream.scheme, Scheme::HTTPS);
        assert_eq!(c.upstream.timeout, Duration::from_secs(120));
        assert_eq!(c.limits.inspect_body_bytes, 1 << 20);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn every_error_is_reported_with_its_location() {
        let errs = parse(
            "[server]\nlisten = \"nope\"\n[upstream]\nurl = \"ftp://x\"\ntimeout = \"soon\"\n\
             [tokens]\nfile = \"t.toml\"\nextra = 1\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/40\"]\n\
             [limits]\nmax_header_bytes = 10\n[admin]\nlisten = \"127.0.0.1:9090\"\n[log]\nformat = \"xml\"\n[bogus]\n",
        )
        .unwrap_err();
        let want = [
            "/etc/tg/gateway.toml:2:10: \"nope\" is not host:port",
            "/etc/tg/gateway.toml:4:7: `upstream.url` must use the scheme http or https",
            "/etc/tg/gateway.toml:5:11: \"soon\" is not a duration",
            "/etc/tg/gateway.toml:8:1: unknown field `extra`",
            "/etc/tg/gateway.toml:10:20: \"10.0.0.0/40\" is not an IP address or CIDR",
            "/etc/tg/gateway.toml:12:20: must be a whole number of at least 8192",
            "/etc/tg/gateway.toml:16:10: log format \"xml\"",
            "/etc/tg/gateway.toml:17:2: unknown section `bogus`",
        ];
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        for (got, want) in errs.iter().zip(want) {
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn errors_about_secrets_say_where_and_what_not_the_value() {
        let base = |upstream: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:8080\"\n[upstream]\n{upstream}\n[tokens]\nfile = \"t.toml\"\n\
                 [admin]\nlisten = \"127.0.0.1:9090\"\n"
            )
        };
        let secret = "S3CRETs3cretS3CRET";
        for (upstream, want) in [
            (format!("url = \"https://admin:{secret}@hiab.example\""), "4:7: `upstream.url` must not hold a user"),
            (format!("url = \"https://hiab.example/?APPTOKEN={secret}\""), "4:7: `upstream.url` must not have a query"),
            (format!("url = \"https://hiab.example/{secret}\""), "4:7: `upstream.url` must not have a path"),
            (format!("url = \"{secret}\""), "4:7: `upstream.url` must be scheme://host[:port]"),
            (
                format!("url = \"https://hiab.example\"\napptoken_file = \"{secret}\""),
                "5:17: cannot read the file named by `apptoken_file`",
            ),
        ] {
            let errs = parse(&base(&upstream)).unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].starts_with(&format!("/etc/tg/gateway.toml:{want}")), "{errs:?}");
            assert!(!errs[0].contains(secret), "{errs:?}");
        }
    }

    #[test]
    fn tokens_max_file_bytes_is_a_positive_count() {
        let cfg = |tokens: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"https://h\"\n[tokens]\n{tokens}\n\
                 [admin]\nlisten = \"127.0.0.1:9090\"\n"
            )
        };
        assert_eq!(parse(&cfg("file = \"t.toml\"")).unwrap().tokens_max_file_bytes, 536_870_912);
        assert_eq!(parse(&cfg("file = \"t.toml\"\nmax_file_bytes = 4096")).unwrap().tokens_max_file_bytes, 4096);
        for bad in ["0", "-1"] {
            let errs = parse(&cfg(&format!("file = \"t.toml\"\nmax_file_bytes = {bad}"))).unwrap_err();
            assert_eq!(errs, ["/etc/tg/gateway.toml:7:18: must be a whole number of at least 1"], "{bad}");
        }
        let errs = parse(&cfg("file = \"t.toml\"\nmax_file_bytes = \"1MB\"")).unwrap_err();
        assert!(errs[0].starts_with("/etc/tg/gateway.toml:7:18: invalid type"), "{errs:?}");
    }

    #[test]
    fn rest_and_denial_status_are_validated_with_their_locations() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("user"), "u\n").unwrap();
        std::fs::write(dir.path().join("pass"), "p w\n").unwrap();
        let base = |server: &str, rest: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:8080\"\n{server}\n[upstream]\nurl = \"https://h\"\n{rest}\n\
                 [tokens]\nfile = \"t.toml\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n"
            )
        };
        let path = dir.path().join("gateway.toml");
        let ok = Config::parse(
            &path,
            &base(
                "denial_status = \"xmlapi\"",
                "[upstream.rest]\nlogin = \"password\"\nusername_file = \"user\"\npassword_file = \"pass\"\ntoken_lifetime = \"5m\"",
            ),
        )
        .unwrap();
        assert_eq!(ok.denial_status, DenialStatus::Xmlapi);
        let rest = ok.upstream.rest.unwrap();
        assert_eq!(rest.token_lifetime, Duration::from_secs(300));
        assert_eq!(rest.login, RestLogin::Password { username: Secret("u".into()), password: Secret("p w".into()) });
        assert!(!format!("{:?}", RestLogin::Password { username: Secret("u".into()), password: Secret("pw".into()) })
            .contains("pw"));
        let errs = |server: &str, rest: &str| -> Vec<String> {
            Config::parse(&path, &base(server, rest)).unwrap_err().0.iter().map(|e| e.to_string()).collect()
        };
        let e = errs("denial_status = \"quiet\"", "");
        assert!(e[0].ends_with(":3:17: denial_status \"quiet\" is not \"http\" or \"xmlapi\""), "{e:?}");
        let e = errs("", "[upstream.rest]\nlogin = \"apptoken\"");
        assert!(e[0].contains(":7:9: login = \"apptoken\" needs `upstream.apptoken_file`"), "{e:?}");
        let e = errs("", "[upstream.rest]\nlogin = \"password\"\nusername_file = \"user\"");
        assert!(e[0].contains("login = \"password\" needs `password_file`"), "{e:?}");
        let e = errs("", "[upstream.rest]\nlogin = \"password\"\nusername_file = \"none\"\npassword_file = \"pass\"");
        assert!(e[0].contains("cannot read `username_file`"), "{e:?}");
        let e = errs("", "[upstream.rest]\nlogin = \"magic\"\nextra = 1");
        assert!(e.iter().any(|e| e.contains("unknown field `extra`")), "{e:?}");
    }

    #[test]
    fn admin_hosts_are_host_names_in_lower_case() {
        let base = "[server]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"https://outscan.outpost24.com\"\n\
                    [tokens]\nfile = \"tokens.toml\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n";
        let c = parse(&format!("{base}hosts = [\"Gateway.Example.\", \"metrics-1\"]\n")).unwrap();
        assert_eq!(c.admin_hosts, ["gateway.example", "metrics-1"]);
        assert!(parse(base).unwrap().admin_hosts.is_empty());
        let errs = parse(&format!("{base}hosts = [\"ok\", \"a:9090\", \"*.example\", \"-x\", \"\"]\n")).unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(
            errs[0].starts_with("/etc/tg/gateway.toml:9:16: admin.hosts: \"a:9090\" is not a host name"),
            "{errs:#?}"
        );
    }

    #[test]
    fn missing_sections_are_named() {
        let errs = parse("[server]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(errs.iter().any(|e| e.contains("missing section [upstream]")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("missing section [admin]")), "{errs:?}");
    }
}
