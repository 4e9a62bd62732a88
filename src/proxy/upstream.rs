//! The only caller of the upstream: opens connections for the pool (TCP,
//! TLS through rustls with the system roots plus an optional `ca_file`),
//! sends each request through the pool under `upstream.timeout`, and
//! classifies failures into 502 and 504. Also the readiness probe.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use http::{Request, Response};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tower::ServiceExt as _;

use super::pool::{AnswerBody, Connection, ExchangeError, Pool, UpstreamBody};
use crate::config::UpstreamConfig;
use crate::denial::UpstreamFailure;

/// Why the upstream client could not be built at start.
#[derive(Debug)]
pub enum UpstreamSetupError {
    /// `upstream.ca_file` could not be read as PEM certificates.
    CaFile(PathBuf, String),
    /// `upstream.ca_file` holds no certificate.
    CaFileEmpty(PathBuf),
    /// rustls refused the configuration.
    Tls(rustls::Error),
}

impl fmt::Display for UpstreamSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamSetupError::CaFile(p, e) => write!(f, "cannot read upstream.ca_file {}: {e}", p.display()),
            UpstreamSetupError::CaFileEmpty(p) => write!(f, "upstream.ca_file {} holds no certificate", p.display()),
            UpstreamSetupError::Tls(e) => write!(f, "upstream TLS: {e}"),
        }
    }
}

impl std::error::Error for UpstreamSetupError {}

/// Opens connections to the upstream and sends requests through the pool.
pub struct UpstreamClient {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`, what the connector dials.
    target: http::Uri,
    pool: Arc<Pool>,
    timeout: Duration,
}

/// A failure with what the log says of it.
type Failed = (UpstreamFailure, String);

impl UpstreamClient {
    /// Builds the connector; fails when the CA file cannot be read.
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, UpstreamSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &cfg.ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| UpstreamSetupError::CaFile(ca.clone(), e.to_string()))?;
            if certs.is_empty() {
                return Err(UpstreamSetupError::CaFileEmpty(ca.clone()));
            }
            for c in certs {
                roots.add(c).map_err(|e| UpstreamSetupError::CaFile(ca.clone(), e.to_string()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .map_err(UpstreamSetupError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
        let target = http::Uri::builder()
            .scheme(cfg.scheme.clone())
            .authority(cfg.authority.clone())
            .path_and_query("/")
            .build()
            .expect("a validated scheme and authority make a URI");
        Ok(Self { connector, target, pool: Arc::new(Pool::default()), timeout: cfg.timeout })
    }

    /// The idle connections, to be swept ([`Pool::sweep`]).
    pub fn pool(&self) -> Arc<Pool> {
        self.pool.clone()
    }

    /// Sends one request (its URI in origin form, its Host set); returns the
    /// answer's head (its body streams, and gives the connection back when
    /// read to its end) and how long it took to begin.
    ///
    /// Built from combinators rather than `async` blocks: an `async` block
    /// that awaits a future it was given keeps that future twice, and this
    /// one is moved with every request.
    pub fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<(Response<AnswerBody>, Duration), UpstreamFailure>> + Send + 'static {
        self.send_quietly(req).map(|r| {
            r.map_err(|(kind, why)| {
                tracing::warn!(error = %why, "upstream request failed");
                kind
            })
        })
    }

    fn send_quietly(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<(Response<AnswerBody>, Duration), Failed>> + Send + 'static {
        let start = Instant::now();
        let timeout = self.timeout;
        let this = self.clone();
        let exchange = self.pool.clone().exchange(req, move || {
            let this = this.clone();
            async move { this.connect().await }
        });
        tokio::time::timeout(timeout, exchange).map(move |r| match r {
            Err(_) => Err((UpstreamFailure::Timeout, format!("no answer within {timeout:?}"))),
            Ok(Ok(resp)) => Ok((resp, start.elapsed())),
            Ok(Err(ExchangeError::Connect(failed))) => Err(failed),
            Ok(Err(ExchangeError::ClosedAtOnce)) => {
                Err((UpstreamFailure::Unreachable, "the new connection closed at once".into()))
            }
            Ok(Err(ExchangeError::Send(e))) => Err((classify_cause(&e), error_chain(&e))),
        })
    }

    async fn connect(&self) -> Result<Connection, Failed> {
        let io = self.connector.clone().oneshot(self.target.clone()).await.map_err(|e| {
            let e: &(dyn StdError + 'static) = &*e;
            (classify_cause(e), error_chain(e))
        })?;
        let (send, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| (classify_cause(&e), error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection closed");
            }
        });
        Ok(send)
    }

    /// Asks the upstream for `/` with no credential; true when it answers at
    /// all (any status), which is what readiness means here.
    pub async fn probe(self: &Arc<Self>, host: &http::HeaderValue) -> bool {
        let Ok(req) = Request::get("/")
            .header(http::header::HOST, host)
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

/// The User-Agent of the readiness probe, so upstream logs can tell it apart.
pub const PROBE_USER_AGENT: &str = "tokengate-readiness-probe";

/// Walks the causes. An `io::Error` hides the error it wraps from
/// `source()` (it returns the wrapped error's own source), so look inside.
fn classify_cause(e: &(dyn StdError + 'static)) -> UpstreamFailure {
    if e.is::<rustls::Error>() {
        return UpstreamFailure::Tls;
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref() {
            let inner: &(dyn StdError + 'static) = inner;
            return classify_cause(inner);
        }
    }
    e.source().map_or(UpstreamFailure::Unreachable, classify_cause)
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
