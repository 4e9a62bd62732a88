//! The only caller of the upstream: a pooled, kept-alive hyper-util client,
//! TLS through rustls with the system roots plus an optional `ca_file`, and
//! the classification of failures into 502 and 504.

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::UpstreamBody;
use crate::config;

/// Why the upstream gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection (refused, reset, DNS): 502.
    Unreachable,
    /// The TLS handshake failed (untrusted certificate, wrong name): 502.
    Tls,
    /// No answer began within `upstream.timeout`: 504.
    Timeout,
}

impl UpstreamError {
    /// Index into `telemetry::metrics::UPSTREAM_FAILURES`.
    pub fn index(self) -> usize {
        match self {
            UpstreamError::Unreachable => 0,
            UpstreamError::Tls => 1,
            UpstreamError::Timeout => 2,
        }
    }

    /// The label and ERRORCODE.
    pub fn code(self) -> &'static str {
        match self {
            UpstreamError::Unreachable => "UPSTREAM_UNREACHABLE",
            UpstreamError::Tls => "UPSTREAM_TLS",
            UpstreamError::Timeout => "UPSTREAM_TIMEOUT",
        }
    }

    /// 502 or 504.
    pub fn status(self) -> http::StatusCode {
        match self {
            UpstreamError::Unreachable | UpstreamError::Tls => http::StatusCode::BAD_GATEWAY,
            UpstreamError::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// What the caller is told.
    pub fn message(self) -> &'static str {
        match self {
            UpstreamError::Unreachable => "The scanner could not be reached",
            UpstreamError::Tls => "The scanner's TLS certificate was not accepted",
            UpstreamError::Timeout => "The scanner did not answer in time",
        }
    }
}

/// The pooled client for one upstream.
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    timeout: Duration,
}

impl Upstream {
    /// Builds the client; fails when the CA file cannot be read.
    pub fn new(cfg: &config::Upstream) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &cfg.ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("cannot read upstream.ca_file {}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("upstream.ca_file {} holds no certificate", ca.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("upstream.ca_file {}: {e}", ca.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(1024)
            .build(https);
        Ok(Self { client, timeout: cfg.timeout })
    }

    /// Sends one request; returns the answer's head (its body streams) and
    /// how long it took to begin.
    pub async fn send(&self, req: Request<UpstreamBody>) -> Result<(Response<Incoming>, Duration), UpstreamError> {
        self.send_quietly(req).await.map_err(|(kind, why)| {
            tracing::warn!(error = %why, "upstream request failed");
            kind
        })
    }

    async fn send_quietly(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Duration), (UpstreamError, String)> {
        let start = Instant::now();
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err((UpstreamError::Timeout, format!("no answer within {:?}", self.timeout))),
            Ok(Ok(resp)) => Ok((resp, start.elapsed())),
            Ok(Err(e)) => Err((classify(&e), error_chain(&e))),
        }
    }
}

/// The User-Agent of the readiness probe, so upstream logs can tell it apart.
pub const PROBE_USER_AGENT: &str = "tokengate-readiness-probe";

impl Upstream {
    /// Asks the upstream for `/` with no credential; true when it answers at
    /// all (any status), which is what readiness means here.
    pub async fn probe(&self, scheme: &http::uri::Scheme, authority: &http::uri::Authority) -> bool {
        let uri = format!("{scheme}://{authority}/");
        let Ok(req) = Request::get(uri)
            .header(http::header::USER_AGENT, PROBE_USER_AGENT)
            .body(http_body_util::Either::Left(http_body_util::Full::new(bytes::Bytes::new())))
        else {
            return false;
        };
        match self.send_quietly(req).await {
            Ok(_) => true,
            Err((_, why)) => {
                tracing::debug!(error = %why, "readiness probe: the upstream did not answer");
                false
            }
        }
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    e.source().map_or(UpstreamError::Unreachable, classify_cause)
}

/// Walks the causes. An `io::Error` hides the error it wraps from
/// `source()` (it returns the wrapped error's own source), so look inside.
fn classify_cause(e: &(dyn StdError + 'static)) -> UpstreamError {
    if e.is::<rustls::Error>() {
        return UpstreamError::Tls;
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref() {
            let inner: &(dyn StdError + 'static) = inner;
            return classify_cause(inner);
        }
    }
    e.source().map_or(UpstreamError::Unreachable, classify_cause)
}

fn error_chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
