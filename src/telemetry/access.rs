//! The access log: one event per request on target `tokengate::access`, with
//! a fixed set of fields, written when the answer has been sent (so `bytes`
//! is what went out, also for a streamed download). Never the token: only
//! its name; the path without its query.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http::{Method, Uri};
use http_body::{Body, Frame, SizeHint};

use super::format::Line;
use super::log::AccessSink;
use crate::denial::Denial;

/// What was decided, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded upstream.
    Allowed,
    /// Refused by the gateway.
    Denied(Denial),
    /// Allowed, but the upstream failed (502/504).
    UpstreamFailed(&'static str),
    /// Not decided: the gateway had no room to read the body (503).
    Busy,
}

impl Outcome {
    /// `allowed` or `denied`.
    pub fn decision(self) -> &'static str {
        match self {
            Outcome::Allowed | Outcome::UpstreamFailed(_) => "allowed",
            Outcome::Denied(_) | Outcome::Busy => "denied",
        }
    }

    /// The reason: `ok`, an ERRORCODE, or the upstream failure.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Allowed => "ok",
            Outcome::Denied(d) => d.code(),
            Outcome::UpstreamFailed(why) => why,
            Outcome::Busy => "GATEWAY_BUSY",
        }
    }
}

/// One request's line, filled in as the request goes.
#[derive(Debug)]
pub struct AccessRecord {
    /// When the request head arrived.
    pub start: Instant,
    /// The client address decided on (the peer when none could be).
    pub client: IpAddr,
    /// The token's name, once it was found in the table.
    pub token: Option<Arc<str>>,
    /// Request method.
    pub method: Method,
    /// Request URI; only its path is logged.
    pub uri: Uri,
    /// ACTION as given (decoded, cut to 64 bytes).
    pub action: Option<Box<str>>,
    /// The decision.
    pub outcome: Outcome,
    /// Status the upstream answered with.
    pub upstream_status: Option<u16>,
}

impl AccessRecord {
    /// A line for a request from `client`, before anything is known of its
    /// token.
    pub fn new(start: Instant, client: IpAddr, parts: &http::request::Parts, outcome: Outcome) -> Self {
        Self {
            start,
            client,
            token: None,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            action: None,
            outcome,
            upstream_status: None,
        }
    }

    /// Writes the line into its thread's log buffer when the logger is
    /// installed and lets `tokengate::access` through; without a logger (or
    /// on a thread that is exiting), straight to stdout.
    pub fn emit(&self, bytes: u64) {
        let micros = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(sink) = AccessSink::get() {
            if !tracing::enabled!(target: "tokengate::access", tracing::Level::INFO) {
                return;
            }
            if sink.write(|buf| self.write(buf, sink.json, bytes, micros)) {
                return;
            }
        }
        let mut line = String::with_capacity(256);
        self.write(&mut line, AccessSink::get().is_some_and(|s| s.json), bytes, micros);
        let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
    }

    fn write(&self, buf: &mut String, json: bool, bytes: u64, micros: u64) {
        let mut l = Line::start(buf, json, "INFO", "tokengate::access");
        l.ip("client", self.client);
        l.text("token", self.token.as_deref().unwrap_or("-"));
        l.text("method", self.method.as_str());
        l.text("path", self.uri.path());
        l.text("action", self.action.as_deref().unwrap_or("-"));
        l.text("decision", self.outcome.decision());
        l.text("reason", self.outcome.reason());
        l.number("upstream_status", self.upstream_status.map_or(0, u64::from));
        l.number("bytes", bytes);
        l.millis("duration_ms", micros);
        l.finish();
    }

    /// Keeps at most 64 bytes of an ACTION for the log, as text; anything
    /// but printable ASCII becomes `?`, so a caller cannot forge log lines or
    /// fields.
    pub fn action_for_log(action: &[u8]) -> Box<str> {
        action
            .iter()
            .take(64)
            .map(|&b| if b.is_ascii_graphic() && b != b'"' && b != b'\\' { char::from(b) } else { '?' })
            .collect()
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and writes the access line
    /// when it ends or is dropped (a client that hangs up still gets a line).
    pub struct Logged<B> {
        #[pin]
        inner: B,
        record: Option<AccessRecord>,
        bytes: u64,
    }

    impl<B> PinnedDrop for Logged<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(r) = this.record.take() {
                r.emit(*this.bytes);
            }
        }
    }
}

impl<B> Logged<B> {
    /// Wraps `inner`; the line is written once.
    pub fn new(inner: B, record: AccessRecord) -> Self {
        Self { inner, record: Some(record), bytes: 0 }
    }
}

impl<B: Body> Body for Logged<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    *this.bytes += d.remaining() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(r) = this.record.take() {
                    r.emit(*this.bytes);
                }
            }
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
