//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/tokens`. Never on
//! the proxy port; never shows a token or a digest.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use strum::IntoEnumIterator;

use crate::denial::DenialCode;
use crate::proxy::GatewayState;
use crate::tokens::state::Decision;

/// Answers one admin request.
pub async fn handle(shared: Arc<GatewayState>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into()));
    }
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            // A table is loaded from start on; the upstream must have answered,
            // and the token file must be readable (a revocation written to a
            // file the gateway cannot read would never apply).
            if let Some(why) = shared.tokens.read_failure() {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("the token file cannot be read: {why}\n"))
            } else if shared.metrics.upstream_ready() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the upstream has not answered yet\n".into())
            }
        }
        // Both walk every token: built on the blocking pool, so a large
        // table does not hold up requests (one CPU: one scheduler thread).
        "/metrics" => {
            let s = shared.clone();
            let body = tokio::task::spawn_blocking(move || s.metrics.render(s.tokens.states())).await;
            match body {
                Ok(b) => text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", b),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "metrics failed\n".into()),
            }
        }
        "/tokens" => {
            let s = shared.clone();
            match tokio::task::spawn_blocking(move || tokens_json(&s)).await {
                Ok(b) => text(StatusCode::OK, "application/json", b),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "tokens failed\n".into()),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: /metrics /healthz /readyz /tokens\n".into()),
    })
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn tokens_json(shared: &GatewayState) -> String {
    let table = shared.tokens.current();
    let mut entries: Vec<_> = table.entries().collect();
    entries.sort_by(|a, b| a.name().cmp(b.name()));
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            // A token not used since it was loaded may have no state yet.
            let state = e.existing_state(shared.tokens.states()).unwrap_or_default();
            let mut counts = serde_json::Map::new();
            counts.insert("allowed".into(), state.count(Decision::Allowed).into());
            for code in DenialCode::iter() {
                let n = state.count(Decision::Denied(code));
                if n > 0 {
                    counts.insert(code.as_str().into(), n.into());
                }
            }
            serde_json::json!({
                "name": e.name(),
                "access_right": &*e.right().name,
                "active": e.active(),
                "expires": e.expires().map(rfc3339),
                "ip_restriction": e.ip_restriction().nets().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "last_use": state.last_use().map(rfc3339),
                // Each secret's last use by position in token_sha256 (0 the
                // newest), so an old one can be seen going quiet.
                "secrets": e
                    .secret_last_uses(&state)
                    .into_iter()
                    .map(|(position, last)| serde_json::json!({ "position": position, "last_use": last.map(rfc3339) }))
                    .collect::<Vec<_>>(),
                "last_client_ip": state.last_ip().map(|ip| ip.to_string()),
                "requests": counts,
            })
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&serde_json::json!({ "tokens": list })).unwrap_or_default();
    s.push('\n');
    s
}
