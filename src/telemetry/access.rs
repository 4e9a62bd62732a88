//! The access log: one `tracing` event per request on target
//! `tokengate::access`, with a fixed set of fields, emitted when the answer
//! has been sent (so `bytes` is what went out, also for a streamed
//! download). Never the token: only its name; the path without its query
//! (and cut where it names APPTOKEN).

use std::borrow::Cow;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http::{Method, Uri};
use http_body::{Body, Frame, SizeHint};

use crate::denial::GatewayError;
use crate::net::IpText;
use crate::percent::Spelled;
use crate::quota::InFlightGuard;

/// The target of access events, for `TOKENGATE_LOG` filters.
pub const TARGET: &str = "tokengate::access";

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
    pub action: Option<LoggedAction>,
    /// What the gateway answered itself, if it did: `None` while the
    /// request is allowed and the upstream answers.
    pub error: Option<GatewayError>,
    /// Status the upstream answered with.
    pub upstream_status: Option<u16>,
    /// The request's place among its token's in flight, held until the
    /// answer is over (when the line is written) or the client went away.
    pub hold: Option<InFlightGuard>,
}

impl AccessRecord {
    /// A line for a request from `client`, before anything is known of its
    /// token.
    pub fn new(start: Instant, client: IpAddr, parts: &http::request::Parts) -> Self {
        Self {
            start,
            client,
            token: None,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            action: None,
            error: None,
            upstream_status: None,
            hold: None,
        }
    }

    /// `allowed` or `denied`: whether the decision let the request through
    /// (an upstream that then failed does not make it a denial).
    pub fn decision(&self) -> &'static str {
        match self.error {
            None | Some(GatewayError::Upstream(_) | GatewayError::Internal) => "allowed",
            Some(GatewayError::Denied(_) | GatewayError::Busy) => "denied",
        }
    }

    /// The reason: `ok`, or the ERRORCODE the gateway answered with.
    pub fn reason(&self) -> &'static str {
        self.error.map_or("ok", GatewayError::code)
    }

    /// Emits the line, `bytes` having gone out.
    pub fn emit(&self, bytes: u64) {
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: TARGET,
            client = IpText::new(self.client).as_str(),
            token = self.token.as_deref().unwrap_or("-"),
            method = self.method.as_str(),
            path = path_for_log(self.uri.path()).as_ref(),
            action = self.action.as_ref().map_or("-", LoggedAction::as_str),
            decision = self.decision(),
            reason = self.reason(),
            upstream_status = self.upstream_status.map_or(0, u64::from),
            bytes,
            duration_ms,
        );
    }
}

/// An ACTION as the log shows it: at most 64 bytes, anything but printable
/// ASCII (and `"`, `\`) as `?`, so a caller cannot forge log lines or
/// fields. Kept inline: a `Box<str>` cost an allocation and a free per
/// request (about 150 instructions of the 340 this took).
#[derive(Clone, Copy)]
pub struct LoggedAction {
    len: u8,
    bytes: [u8; 64],
}

impl LoggedAction {
    /// The ACTION `action` as the log shows it.
    pub fn new(action: &[u8]) -> Self {
        let shown = |b: u8| b.is_ascii_graphic() && b != b'"' && b != b'\\';
        let action = &action[..action.len().min(64)];
        let mut bytes = [0; 64];
        for (to, &b) in bytes.iter_mut().zip(action) {
            *to = if shown(b) { b } else { b'?' };
        }
        Self { len: action.len() as u8, bytes }
    }

    /// The text to log.
    pub fn as_str(&self) -> &str {
        // Printable ASCII only, by construction.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl std::fmt::Debug for LoggedAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// The request's path for the log: as it came, unless a segment names
/// APPTOKEN in some spelling (a client that wrote `&` for `?`, a path
/// parameter `;APPTOKEN=`, `%3F`): then the path is cut before that segment,
/// which may hold the token.
pub fn path_for_log(path: &str) -> Cow<'_, str> {
    static NAME: OnceLock<Option<Spelled>> = OnceLock::new();
    // Every spelling of APPTOKEN holds a `t`, a `T` or a `%`.
    if memchr::memchr3(b't', b'T', b'%', path.as_bytes()).is_none() {
        return Cow::Borrowed(path);
    }
    let Some(name) = NAME.get_or_init(|| Spelled::new(b"apptoken")) else { return Cow::Borrowed(path) };
    let mut start = 0;
    for segment in path.split('/') {
        if name.is_in(segment.as_bytes()) {
            return Cow::Owned(format!("{}[REDACTED]", &path[..start]));
        }
        start += segment.len() + 1;
    }
    Cow::Borrowed(path)
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and emits the access line
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
    /// Wraps `inner`; the line is emitted once.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_names_apptoken_is_cut_before_it() {
        assert_eq!(path_for_log("/opi/XMLAPI"), "/opi/XMLAPI");
        assert_eq!(path_for_log("/opi/rest/outscan/targets"), "/opi/rest/outscan/targets");
        for p in ["/opi/XMLAPI&APPTOKEN=SECRET", "/opi/XMLAPI%3FapPtoken=SECRET", "/opi/XMLAPI;%41PPTOKEN=SECRET"] {
            assert_eq!(path_for_log(p), "/opi/[REDACTED]", "{p}");
        }
        assert_eq!(path_for_log("/opi/rest/x/apptoken/SECRET"), "/opi/rest/x/[REDACTED]");
    }

    #[test]
    fn an_action_is_logged_printable_and_cut_to_64_bytes() {
        assert_eq!(LoggedAction::new(b"TARGETDATA").as_str(), "TARGETDATA");
        assert_eq!(LoggedAction::new(b"A\n\"B\\ \xc3\xa9").as_str(), "A??B????");
        assert_eq!(LoggedAction::new(&[b'X'; 100]).as_str(), "X".repeat(64));
        assert_eq!(LoggedAction::new(b"").as_str(), "");
    }
}
