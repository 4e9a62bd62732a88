//! `tokengate run`: load both files (every error printed, exit 1, when either
//! is invalid), bind the listeners, and serve until SIGTERM or Ctrl-C.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::decide::client_ip::PeerAddr;
use crate::diagnostic::ConfigErrors;
use crate::proxy::upstream::{UpstreamClient, UpstreamSetupError};
use crate::proxy::GatewayState;
use crate::server::tls::{CertStore, TlsSetupError};
use crate::telemetry::metrics::Metrics;
use crate::tokens::reload::{self, Reloaded, TokenStore};
use crate::{admin, server, stack, telemetry};

/// Why the gateway did not start. Each is printed, and `run` exits 1.
#[derive(Debug)]
enum StartError {
    /// `gateway.toml` is invalid.
    Config(ConfigErrors),
    /// The token file is invalid (there is no last good table at start).
    Tokens(ConfigErrors),
    /// `upstream.ca_file` could not be used.
    Upstream(PathBuf, UpstreamSetupError),
    /// The `[server.tls]` pair could not be loaded.
    Tls(PathBuf, Box<TlsSetupError>),
    /// The upstream's host does not make a Host header.
    UpstreamHost(PathBuf),
    /// A listener could not be bound.
    Bind(PathBuf, SocketAddr, std::io::Error),
    /// The async runtime could not be started.
    Runtime(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(errors) | StartError::Tokens(errors) => write!(f, "{errors}"),
            StartError::Upstream(cfg, e) => write!(f, "{}: {e}", cfg.display()),
            StartError::Tls(cfg, e) => write!(f, "{}: {e}", cfg.display()),
            StartError::UpstreamHost(cfg) => {
                write!(f, "{}: the upstream host is not a valid Host header", cfg.display())
            }
            StartError::Bind(cfg, addr, e) => write!(f, "{}: cannot listen on {addr}: {e}", cfg.display()),
            StartError::Runtime(e) => write!(f, "cannot start the runtime: {e}"),
        }
    }
}

/// Serves; returns the exit code.
pub fn run(config: &Path) -> i32 {
    match start_and_serve(config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn start_and_serve(config: &Path) -> Result<(), StartError> {
    let cfg = Config::load(config).map_err(StartError::Config)?;
    let _log = telemetry::log::init(cfg.log_format);
    std::panic::set_hook(Box::new(|info| {
        // The location only: a panic message could quote request data.
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(at, "internal error while handling a request");
    }));
    // On one CPU (as under `taskset -c 0`) a single-threaded scheduler does
    // the same work without cross-thread wake-ups (measured: ~18 % more
    // requests per second, less system time); otherwise a worker per CPU.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = builder.enable_all().build().map_err(StartError::Runtime)?;
    rt.block_on(serve(cfg, if one_cpu { "current_thread" } else { "multi_thread" }))
}

async fn serve(cfg: Config, scheduler: &'static str) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::default());
    let (tokens, warnings) =
        TokenStore::open(&cfg.tokens_file, cfg.tokens_max_file_bytes).map_err(StartError::Tokens)?;
    metrics.reload_succeeded(tokens.current().len());
    for w in warnings {
        tracing::warn!(warning = %w, "token file");
    }
    let upstream = UpstreamClient::new(&cfg.upstream).map_err(|e| StartError::Upstream(cfg.path.clone(), e))?;
    let tls_err = |e| StartError::Tls(cfg.path.clone(), Box::new(e));
    let certs = cfg.tls.as_ref().map(CertStore::open).transpose().map_err(tls_err)?;
    let tls = certs.as_ref().map(|c| c.acceptor()).transpose().map_err(tls_err)?;
    let proxy_listener = bind(&cfg, cfg.listen).await?;
    let admin_listener = bind(&cfg, cfg.admin_listen).await?;
    // Signals are taken over before anyone is told the gateway is up.
    let hup = reload::listen_for_sighup();
    // A second listener of its own: tokio delivers a signal to every one.
    let tls_hup = certs.as_ref().and_then(|_| reload::listen_for_sighup());
    let stop = stop_signals();
    let table_size = tokens.current().len();
    if certs.is_some() {
        metrics.tls_reload(true);
    }
    let shared = GatewayState::new(&cfg, Arc::new(tokens), metrics, upstream)
        .map_err(|_| StartError::UpstreamHost(cfg.path.clone()))?;
    let shared = Arc::new(shared);
    log_listening("proxy", &proxy_listener, tls.is_some());
    log_listening("admin", &admin_listener, false);
    tracing::info!(
        tokens = table_size,
        scheduler,
        file = %shared.tokens.path().display(),
        upstream = %format_args!("{}://{}", cfg.upstream.scheme, cfg.upstream.authority),
        "tokengate started"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let admin = Arc::new(admin::Admin::new(shared.clone(), cfg.admin_hosts.clone()));
    let admin_limits = cfg.limits.clone();
    let admin_stop = stopped(stop_rx.clone());
    let admin_task = tokio::spawn(async move {
        let svc = tower::service_fn(move |req| admin::handle(admin.clone(), req));
        server::serve(admin_listener, None, admin_limits, move |_| svc.clone(), admin_stop).await;
    });
    // Each reload's outcome is counted here: the token store knows no metrics.
    let reload_metrics = shared.metrics.clone();
    tokio::spawn(reload::follow(shared.tokens.clone(), hup, move |outcome| match outcome {
        Reloaded::Applied(tokens) => reload_metrics.reload_succeeded(*tokens),
        Reloaded::Invalid(_) => reload_metrics.reload_failed(),
        Reloaded::Unreadable(_) => {
            reload_metrics.reload_failed();
            reload_metrics.token_file_read_failed();
        }
    }));
    if let Some(certs) = certs {
        let tls_metrics = shared.metrics.clone();
        tokio::spawn(server::tls::follow(certs, tls_hup, move |outcome| tls_metrics.tls_reload(outcome.is_ok())));
    }
    tokio::spawn(probe_upstream(shared.clone()));
    tokio::spawn(shared.upstream.pool().sweep());

    tokio::spawn(async move {
        stop.await;
        tracing::info!("stopping: no new connections; in-flight requests may finish");
        let _ = stop_tx.send(true);
    });

    let proxy_shared = shared.clone();
    server::serve(
        proxy_listener,
        tls,
        cfg.limits.clone(),
        move |peer| stack::proxy(proxy_shared.clone(), PeerAddr(peer.ip())),
        stopped(stop_rx),
    )
    .await;
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

async fn bind(cfg: &Config, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| StartError::Bind(cfg.path.clone(), addr, e))
}

fn log_listening(what: &str, l: &TcpListener, tls: bool) {
    if let Ok(addr) = l.local_addr() {
        let scheme = if tls { "https" } else { "http" };
        tracing::info!(%addr, scheme, "{what} listening");
    }
}

/// Marks the upstream ready once it answers anything; `/readyz` reports it.
async fn probe_upstream(shared: Arc<GatewayState>) {
    let mut wait = Duration::from_millis(200);
    while !shared.metrics.upstream_ready() {
        if shared.upstream.probe(&shared.upstream_host).await {
            shared.metrics.mark_upstream_ready();
            tracing::info!("the upstream answered");
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// SIGTERM or Ctrl-C; registered when called, awaited later.
fn stop_signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        tokio::select! {
            () = received(term) => {}
            () = received(int) => {}
        }
    }
}

/// The first delivery of a signal; never, when it could not be registered.
async fn received(signal: std::io::Result<tokio::signal::unix::Signal>) {
    match signal {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
