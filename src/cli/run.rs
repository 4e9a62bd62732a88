//! `tokengate run`: load both files (every error printed, exit 1, when either
//! is invalid), bind the listeners, and serve until SIGTERM or Ctrl-C.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::decide::client_ip::{PeerAddr, TrustedProxies};
use crate::proxy::upstream::Upstream;
use crate::proxy::Shared;
use crate::telemetry::metrics::Metrics;
use crate::tokens::reload::{self, TokenStore};
use crate::{admin, server, stack, telemetry};

/// Serves; returns the exit code.
pub fn run(config: &Path) -> i32 {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
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
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(serve(cfg, if one_cpu { "current_thread" } else { "multi_thread" }))
}

async fn serve(cfg: Config, scheduler: &'static str) -> i32 {
    let metrics = Arc::new(Metrics::default());
    let (tokens, warnings) = match TokenStore::open(&cfg.tokens_file, metrics.clone()) {
        Ok(t) => t,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    for w in warnings {
        tracing::warn!(warning = %w, "token file");
    }
    let upstream = match Upstream::new(&cfg.upstream) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("{}: {e}", cfg.path.display());
            return 1;
        }
    };
    let tls = match cfg.tls.as_ref().map(server::tls_acceptor).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", cfg.path.display());
            return 1;
        }
    };
    let (proxy_listener, admin_listener) = match (bind(cfg.listen).await, bind(cfg.admin_listen).await) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{}: {e}", cfg.path.display());
            return 1;
        }
    };
    // Signals are taken over before anyone is told the gateway is up.
    let hup = reload::listen_for_sighup();
    let stop = stop_signals();
    let table_size = tokens.current().len();
    let shared = Arc::new(Shared {
        tokens: Arc::new(tokens),
        metrics,
        upstream: Arc::new(upstream),
        upstream_cfg: cfg.upstream.clone(),
        trusted: TrustedProxies::new(cfg.trusted_proxies.clone()),
        inspect_body_bytes: cfg.limits.inspect_body_bytes,
        inspect_budget: crate::proxy::InspectBudget::new(
            cfg.limits.inspect_body_bytes.saturating_mul(64),
            // A body waits briefly for room, then gets a clear 503.
            cfg.limits.body_idle_timeout.min(std::time::Duration::from_secs(1)),
        ),
        upstream_host: match http::HeaderValue::from_str(cfg.upstream.authority.as_str()) {
            Ok(h) => h,
            Err(_) => {
                eprintln!("{}: the upstream host is not a valid Host header", cfg.path.display());
                return 1;
            }
        },
    });
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

    let admin_shared = shared.clone();
    let admin_limits = cfg.limits.clone();
    let admin_stop = stopped(stop_rx.clone());
    let admin_task = tokio::spawn(async move {
        let svc = tower::service_fn(move |req| admin::handle(admin_shared.clone(), req));
        server::serve(admin_listener, None, admin_limits, move |_| svc.clone(), admin_stop).await;
    });
    tokio::spawn(reload::follow(shared.tokens.clone(), hup));
    tokio::spawn(probe_upstream(shared.clone()));
    tokio::spawn(crate::proxy::upstream::Upstream::close_idle(shared.upstream.pool()));

    tokio::spawn(async move {
        stop.await;
        tracing::info!("stopping: no new connections; in-flight requests may finish");
        let _ = stop_tx.send(true);
    });

    let proxy_shared = shared.clone();
    let idle = cfg.limits.body_idle_timeout;
    server::serve(
        proxy_listener,
        tls,
        cfg.limits.clone(),
        move |peer| stack::proxy(proxy_shared.clone(), PeerAddr(peer.ip()), idle),
        stopped(stop_rx),
    )
    .await;
    let _ = admin_task.await;
    tracing::info!("stopped");
    0
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))
}

fn log_listening(what: &str, l: &TcpListener, tls: bool) {
    if let Ok(addr) = l.local_addr() {
        let scheme = if tls { "https" } else { "http" };
        tracing::info!(%addr, scheme, "{what} listening");
    }
}

/// Marks the upstream ready once it answers anything; `/readyz` reports it.
async fn probe_upstream(shared: Arc<Shared>) {
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
