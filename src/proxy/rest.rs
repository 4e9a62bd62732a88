//! The scanner's own REST bearer token, for REST routes when
//! `[upstream.rest]` is set (interface.md §6): obtained once and shared by
//! every request, renewed before it runs out (from about 80 % of
//! `token_lifetime` on, in the background while the old one still serves)
//! and at once when the scanner answers 401 to it.
//!
//! One renewal at a time, however many requests wait for it: a renewal is
//! an attempt that requests join; only when none is under way does a
//! request start one, and after a failed attempt none is started for a
//! second (requests meanwhile get 502 `UPSTREAM_AUTH`), so a scanner that
//! refuses the login is asked at most once a second, never once per
//! request. The fresh-token path reads one atomic pointer; the lock here is
//! taken only to start or join an attempt.
//!
//! The REST token and the login's secrets never appear in logs, metrics or
//! errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};

use super::pool::UpstreamBody;
use super::upstream::UpstreamClient;
use crate::config::{RestConfig, RestLogin, UpstreamToken};
use crate::percent::Spelled;
use crate::telemetry::metrics::Metrics;

/// A REST token of the scanner's, as an `Authorization` value.
pub struct RestToken {
    /// `Bearer <token>`, marked sensitive.
    pub authorization: HeaderValue,
    /// The token, to write over wherever an answer's header quotes it.
    pub secret: Spelled,
    obtained: Instant,
}

impl std::fmt::Debug for RestToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestToken(<redacted>)")
    }
}

/// No REST token could be had: REST routes answer 502 `UPSTREAM_AUTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRestToken;

/// One renewal under way, or done.
struct Attempt {
    result: OnceLock<Result<Arc<RestToken>, NoRestToken>>,
    done: tokio::sync::Notify,
    finished_at: OnceLock<Instant>,
}

/// The REST token shared by every request, and its renewals.
pub struct RestSession {
    config: RestConfig,
    /// The credential for `login = "apptoken"`.
    apptoken: Option<UpstreamToken>,
    host: HeaderValue,
    upstream: Arc<UpstreamClient>,
    metrics: Arc<Metrics>,
    token: ArcSwapOption<RestToken>,
    /// The login password (`login = "password"`), to write over wherever
    /// an answer's header quotes it.
    password: Option<Spelled>,
    attempt: Mutex<Option<Arc<Attempt>>>,
    /// Renewals started, for tests and the log.
    renewals: AtomicU64,
}

/// How long after a failed renewal no new one is started.
const AFTER_FAILURE: Duration = Duration::from_secs(1);
/// The largest login answer read.
const MAX_ANSWER: usize = 64 * 1024;

impl RestSession {
    /// A session that logs in as `config` says, through `upstream`.
    pub fn new(
        config: RestConfig,
        apptoken: Option<UpstreamToken>,
        host: HeaderValue,
        upstream: Arc<UpstreamClient>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let password = match &config.login {
            RestLogin::Password { password, .. } => Spelled::new(password.0.as_bytes()),
            RestLogin::AppToken => None,
        };
        Self {
            password,
            config,
            apptoken,
            host,
            upstream,
            metrics,
            token: ArcSwapOption::empty(),
            attempt: Mutex::new(None),
            renewals: AtomicU64::new(0),
        }
    }

    /// A REST token for a request: the current one while it is fresh (past
    /// 80 % of its lifetime a renewal starts in the background and it still
    /// serves), else the one a renewal brings.
    pub async fn token(self: &Arc<Self>) -> Result<Arc<RestToken>, NoRestToken> {
        if let Some(t) = self.token.load_full() {
            let age = t.obtained.elapsed();
            if age < self.config.token_lifetime.mul_f64(0.8) {
                return Ok(t);
            }
            if age < self.config.token_lifetime {
                // Aging: renew without making this request wait.
                drop(self.attempt_for(None));
                return Ok(t);
            }
        }
        self.renewed(None).await
    }

    /// A new token because the scanner answered 401 to `used`; when another
    /// request already renewed it, that one.
    pub async fn after_401(self: &Arc<Self>, used: &Arc<RestToken>) -> Result<Arc<RestToken>, NoRestToken> {
        self.renewed(Some(used)).await
    }

    async fn renewed(self: &Arc<Self>, used: Option<&Arc<RestToken>>) -> Result<Arc<RestToken>, NoRestToken> {
        let attempt = self.attempt_for(used);
        loop {
            let notified = attempt.done.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = attempt.result.get() {
                return r.clone();
            }
            notified.await;
        }
    }

    /// The attempt to join: the one under way, or the last one when it
    /// failed less than a second ago, or a new one.
    fn attempt_for(self: &Arc<Self>, used: Option<&Arc<RestToken>>) -> Arc<Attempt> {
        let mut slot = self.attempt.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(a) = slot.as_ref() {
            match (a.result.get(), a.finished_at.get()) {
                // Under way: join it.
                (None, _) => return a.clone(),
                // Failed a moment ago: the same failure.
                (Some(Err(_)), Some(at)) if at.elapsed() < AFTER_FAILURE => return a.clone(),
                // A 401 to a token obtained a moment ago is most likely the
                // route's own answer: at most one renewal a second for
                // them, however many requests a caller sends.
                (Some(Ok(_)), Some(at)) if used.is_some() && at.elapsed() < AFTER_FAILURE => return a.clone(),
                // Succeeded after `used` was obtained (another request
                // renewed already): that token.
                (Some(Ok(t)), _) if used.is_some_and(|u| !Arc::ptr_eq(u, t)) => return a.clone(),
                _ => {}
            }
        }
        let attempt = Arc::new(Attempt {
            result: OnceLock::new(),
            done: tokio::sync::Notify::new(),
            finished_at: OnceLock::new(),
        });
        *slot = Some(attempt.clone());
        drop(slot);
        self.renewals.fetch_add(1, Ordering::Relaxed);
        // Its own task: a request that goes away does not end the login
        // the others wait for.
        let (this, a) = (self.clone(), attempt.clone());
        tokio::spawn(async move {
            let result = this.login().await;
            match &result {
                Ok(t) => {
                    this.token.store(Some(t.clone()));
                    this.metrics.rest_renewal(true);
                    tracing::info!("obtained a REST token from the scanner");
                }
                Err(why) => {
                    this.metrics.rest_renewal(false);
                    tracing::warn!(reason = why.as_str(), "could not obtain a REST token from the scanner");
                }
            }
            let _ = a.finished_at.set(Instant::now());
            let _ = a.result.set(result.map_err(|_| NoRestToken));
            a.done.notify_waiters();
        });
        attempt
    }

    /// The login password, as answers are searched for it.
    pub fn password(&self) -> Option<&Spelled> {
        self.password.as_ref()
    }

    /// How many renewals were started.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// Logs in once, as configured. The error says why, never with a secret.
    async fn login(&self) -> Result<Arc<RestToken>, String> {
        let req = match &self.config.login {
            RestLogin::AppToken => {
                let cred = self.apptoken.as_ref().ok_or("no upstream.apptoken_file")?;
                // The credential is unreserved characters only (config):
                // it needs no escaping in a query.
                let target = format!("/opi/XMLAPI?ACTION=GETRESTTOKEN&APPTOKEN={}&JSON=1", cred.0);
                Request::get(target).header(header::HOST, &self.host).body(empty())
            }
            RestLogin::Password { username, password } => {
                let form = format!("username={}&password={}", form_encode(&username.0), form_encode(&password.0));
                Request::post("/opi/rest/auth/login")
                    .header(header::HOST, &self.host)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Either::Left(Full::new(Bytes::from(form))))
            }
        }
        .map_err(|_| "the login request could not be built".to_string())?;
        let (resp, _) = self.upstream.send(req).await.map_err(|f| format!("the scanner did not answer ({f:?})"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|_| format!("the login answer ({status}) could not be read"))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("the scanner answered the login with {status}"));
        }
        let token = match self.config.login {
            RestLogin::AppToken => token_from_json(&body)?,
            RestLogin::Password { .. } => token_from_text(&body)?,
        };
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the REST token is not a valid header value".to_string())?;
        authorization.set_sensitive(true);
        let secret = Spelled::new(token.as_bytes()).ok_or("the scanner's REST token is empty")?;
        Ok(Arc::new(RestToken { authorization, secret, obtained: Instant::now() }))
    }
}

fn empty() -> UpstreamBody {
    Either::Left(Full::new(Bytes::new()))
}

/// GETRESTTOKEN with `JSON=1`: the token is the answer's `data` string.
/// (Outpost24 does not publish the exact shape; this is what its examples
/// show.)
fn token_from_json(body: &[u8]) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the GETRESTTOKEN answer is not JSON".to_string())?;
    if v.get("success").and_then(serde_json::Value::as_bool) == Some(false) {
        return Err("the scanner refused GETRESTTOKEN (success false)".into());
    }
    match v.get("data").and_then(serde_json::Value::as_str) {
        Some(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => Err("the GETRESTTOKEN answer has no data string".into()),
    }
}

/// `/opi/rest/auth/login`: the answer's body is the token (a JSON string
/// is taken apart too).
fn token_from_text(body: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the login answer is not text".to_string())?.trim();
    let text = serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_string());
    if text.is_empty() {
        return Err("the login answer is empty".into());
    }
    Ok(text)
}

/// `application/x-www-form-urlencoded` encoding of a value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_both_answers() {
        assert_eq!(token_from_json(br#"{"success":true,"data":"abc"}"#), Ok("abc".into()));
        assert!(token_from_json(br#"{"success":false,"data":{"errorMessage":"no"}}"#).is_err());
        assert!(token_from_json(br#"{"success":true}"#).is_err());
        assert!(token_from_json(b"<xml/>").is_err());
        assert_eq!(token_from_text(b" abc\n"), Ok("abc".into()));
        assert_eq!(token_from_text(br#""abc""#), Ok("abc".into()));
        assert!(token_from_text(b"  ").is_err());
        assert_eq!(form_encode("a b&c=d%"), "a+b%26c%3Dd%25");
    }
}
