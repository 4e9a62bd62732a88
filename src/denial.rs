//! Every answer the gateway gives itself, and the one place it is shaped:
//! the refusals of interface.md §5 ([`Denial`]), the upstream's failures
//! ([`UpstreamFailure`]), no room to read a body, and a bug, as one enum
//! ([`GatewayError`]) with one exhaustive [`GatewayError::into_response`].
//! Uses `http` types only; a leaf. An answer never echoes the caller's input.
//!
//! The codes are not kept in arrays beside the enums: [`DenialCode`] is
//! derived from [`Denial`] (strum), with its ERRORCODE spelling and its
//! count, so counters indexed by it cannot fall out of step.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use strum::{EnumCount, EnumDiscriminants, EnumIter, IntoStaticStr};

/// Why a request was refused. The order of variants is the order of §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumDiscriminants)]
#[strum_discriminants(
    name(DenialCode),
    derive(Hash, EnumCount, EnumIter, IntoStaticStr),
    strum(serialize_all = "SCREAMING_SNAKE_CASE")
)]
pub enum Denial {
    /// No APPTOKEN anywhere the XMLAPI reads it.
    TokenMissing,
    /// An APPTOKEN that is in no `[[token]]`.
    TokenUnknown,
    /// A known token with `active = false`.
    TokenInactive,
    /// A known token past its `expires`.
    TokenExpired,
    /// The client address is outside the token's `ip_restriction`, or could
    /// not be determined.
    IpNotAllowed,
    /// The XMLAPI ACTION is not in the token's access right.
    ActionNotAllowed,
    /// Method and path are covered by none of the right's `routes`.
    RouteNotAllowed,
    /// The gateway cannot tell with certainty what the request asks for;
    /// the text says what it could not tell (a constant, never request data).
    AmbiguousRequest(&'static str),
    /// The body must be read to decide but is over `inspect_body_bytes`.
    BodyTooLarge,
    /// Over the token's `rate`; one more request fits in this many whole
    /// seconds (`Retry-After`).
    RateLimited(u32),
    /// The token's `concurrency` requests are in flight already.
    TooManyInFlight,
}

impl DenialCode {
    /// The ERRORCODE, also the `reason` label in logs and metrics.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Denial {
    /// Its code, for counters and labels.
    pub fn code(self) -> DenialCode {
        self.into()
    }

    /// The HTTP status of §5.
    pub fn status(self) -> StatusCode {
        match self {
            Denial::TokenMissing | Denial::TokenUnknown => StatusCode::UNAUTHORIZED,
            Denial::TokenInactive
            | Denial::TokenExpired
            | Denial::IpNotAllowed
            | Denial::ActionNotAllowed
            | Denial::RouteNotAllowed => StatusCode::FORBIDDEN,
            Denial::AmbiguousRequest(_) => StatusCode::BAD_REQUEST,
            Denial::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Denial::RateLimited(_) | Denial::TooManyInFlight => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// What the caller is told. A missing and an unknown token read the same.
    pub fn message(self) -> &'static str {
        match self {
            Denial::TokenMissing | Denial::TokenUnknown => "A valid APPTOKEN is required",
            Denial::TokenInactive => "The APPTOKEN is not active",
            Denial::TokenExpired => "The APPTOKEN has expired",
            Denial::IpNotAllowed => "The APPTOKEN may not be used from this address",
            Denial::ActionNotAllowed => "The APPTOKEN does not allow this ACTION",
            Denial::RouteNotAllowed => "The APPTOKEN does not allow this request",
            Denial::AmbiguousRequest(why) => why,
            Denial::BodyTooLarge => "The request body is too large to inspect",
            Denial::RateLimited(_) => "The APPTOKEN is over its rate; try again later",
            Denial::TooManyInFlight => "The APPTOKEN has too many requests in flight",
        }
    }
}

/// Why an allowed request got no answer from the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumCount, EnumIter, IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum UpstreamFailure {
    /// No connection (refused, reset, DNS): 502.
    Unreachable,
    /// The TLS handshake failed (untrusted certificate, wrong name): 502.
    Tls,
    /// No answer began within `upstream.timeout`: 504.
    Timeout,
    /// No REST token of the scanner's could be had for a REST route: 502.
    Auth,
}

impl UpstreamFailure {
    /// The `kind` label of `tokengate_upstream_failures_total`.
    pub fn label(self) -> &'static str {
        self.into()
    }
}

/// Every answer the gateway gives itself instead of the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GatewayError {
    /// A row of §5 refused the request.
    Denied(Denial),
    /// The request was allowed; the upstream did not answer (502, 504).
    Upstream(UpstreamFailure),
    /// Too many bodies are being read to decide; none could be read in time (503).
    Busy,
    /// A bug: a panic while handling the request (500). Its message is never sent.
    Internal,
}

impl From<Denial> for GatewayError {
    fn from(d: Denial) -> Self {
        GatewayError::Denied(d)
    }
}

impl From<UpstreamFailure> for GatewayError {
    fn from(f: UpstreamFailure) -> Self {
        GatewayError::Upstream(f)
    }
}

impl GatewayError {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            GatewayError::Denied(d) => d.status(),
            GatewayError::Upstream(UpstreamFailure::Unreachable | UpstreamFailure::Tls | UpstreamFailure::Auth) => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::Upstream(UpstreamFailure::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The ERRORCODE, also the `reason` in the access log.
    pub fn code(self) -> &'static str {
        match self {
            GatewayError::Denied(d) => d.code().as_str(),
            GatewayError::Upstream(UpstreamFailure::Unreachable) => "UPSTREAM_UNREACHABLE",
            GatewayError::Upstream(UpstreamFailure::Tls) => "UPSTREAM_TLS",
            GatewayError::Upstream(UpstreamFailure::Timeout) => "UPSTREAM_TIMEOUT",
            GatewayError::Upstream(UpstreamFailure::Auth) => "UPSTREAM_AUTH",
            GatewayError::Busy => "GATEWAY_BUSY",
            GatewayError::Internal => "INTERNAL_ERROR",
        }
    }

    /// What the caller is told.
    pub fn message(self) -> &'static str {
        match self {
            GatewayError::Denied(d) => d.message(),
            GatewayError::Upstream(UpstreamFailure::Unreachable) => "The scanner could not be reached",
            GatewayError::Upstream(UpstreamFailure::Tls) => "The scanner's TLS certificate was not accepted",
            GatewayError::Upstream(UpstreamFailure::Timeout) => "The scanner did not answer in time",
            GatewayError::Upstream(UpstreamFailure::Auth) => "The gateway could not log in to the scanner's REST API",
            GatewayError::Busy => "The gateway is reading too many request bodies at once; try again",
            GatewayError::Internal => "The gateway failed to handle the request",
        }
    }

    /// The answer in the XMLAPI's shape: XML by default, JSON when the
    /// request carried `JSON=1`. The refusals with a fixed message (the
    /// common ones: an unknown token, a forbidden ACTION) are rendered once
    /// and shared.
    pub fn into_response(self, json: bool) -> Response<Bytes> {
        match self {
            GatewayError::Denied(Denial::RateLimited(secs)) => {
                let mut resp = shared_denial(Denial::RateLimited(secs), json);
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                resp
            }
            GatewayError::Denied(d) if !matches!(d, Denial::AmbiguousRequest(_)) => shared_denial(d, json),
            GatewayError::Denied(_) | GatewayError::Upstream(_) | GatewayError::Busy | GatewayError::Internal => {
                render(self.status(), self.code(), self.message(), json)
            }
        }
    }
}

/// A fixed refusal from the bodies rendered at first use, one per code and shape.
fn shared_denial(d: Denial, json: bool) -> Response<Bytes> {
    use strum::IntoEnumIterator;
    static RENDERED: std::sync::OnceLock<Vec<[Response<Bytes>; 2]>> = std::sync::OnceLock::new();
    let rendered = RENDERED.get_or_init(|| {
        // The ambiguous code's entry is never served (its message varies):
        // it is there so that the vector is indexed by code.
        DenialCode::iter().map(|c| [false, true].map(|j| render(status_of(c), c.as_str(), message_of(c), j))).collect()
    });
    let r = &rendered[d.code() as usize][usize::from(json)];
    let mut resp = Response::new(r.body().clone());
    *resp.status_mut() = r.status();
    *resp.headers_mut() = r.headers().clone();
    resp
}

/// The status and message of a code whose denial has a fixed message.
fn fixed(code: DenialCode) -> Denial {
    match code {
        DenialCode::TokenMissing => Denial::TokenMissing,
        DenialCode::TokenUnknown => Denial::TokenUnknown,
        DenialCode::TokenInactive => Denial::TokenInactive,
        DenialCode::TokenExpired => Denial::TokenExpired,
        DenialCode::IpNotAllowed => Denial::IpNotAllowed,
        DenialCode::ActionNotAllowed => Denial::ActionNotAllowed,
        DenialCode::RouteNotAllowed => Denial::RouteNotAllowed,
        DenialCode::AmbiguousRequest => Denial::AmbiguousRequest("The request is ambiguous"),
        DenialCode::BodyTooLarge => Denial::BodyTooLarge,
        DenialCode::RateLimited => Denial::RateLimited(1),
        DenialCode::TooManyInFlight => Denial::TooManyInFlight,
    }
}

fn status_of(code: DenialCode) -> StatusCode {
    fixed(code).status()
}

fn message_of(code: DenialCode) -> &'static str {
    fixed(code).message()
}

/// An error answer in the XMLAPI's shape. `code` and `message` are the
/// gateway's own constants, never request data, so they need no escaping
/// beyond the XML entities below.
fn render(status: StatusCode, code: &str, message: &str, json: bool) -> Response<Bytes> {
    let (body, content_type) = if json {
        let body = serde_json::json!({
            "success": false,
            "data": { "errorMessage": message, "errorCode": code },
        });
        (body.to_string(), "application/json; charset=UTF-8")
    } else {
        (
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<RESPONSE><SUCCESS>false</SUCCESS>\
                 <ERRORCODE>{}</ERRORCODE><MESSAGE>{}</MESSAGE></RESPONSE>\n",
                xml_escape(code),
                xml_escape(message)
            ),
            "text/xml; charset=UTF-8",
        )
    };
    let mut resp = Response::new(Bytes::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn every_denial_has_its_code_and_status() {
        let all = [
            (Denial::TokenMissing, 401, "TOKEN_MISSING"),
            (Denial::TokenUnknown, 401, "TOKEN_UNKNOWN"),
            (Denial::TokenInactive, 403, "TOKEN_INACTIVE"),
            (Denial::TokenExpired, 403, "TOKEN_EXPIRED"),
            (Denial::IpNotAllowed, 403, "IP_NOT_ALLOWED"),
            (Denial::ActionNotAllowed, 403, "ACTION_NOT_ALLOWED"),
            (Denial::RouteNotAllowed, 403, "ROUTE_NOT_ALLOWED"),
            (Denial::AmbiguousRequest("x"), 400, "AMBIGUOUS_REQUEST"),
            (Denial::BodyTooLarge, 413, "BODY_TOO_LARGE"),
            (Denial::RateLimited(3), 429, "RATE_LIMITED"),
            (Denial::TooManyInFlight, 429, "TOO_MANY_IN_FLIGHT"),
        ];
        assert_eq!(all.len(), DenialCode::COUNT);
        for (i, (d, status, code)) in all.into_iter().enumerate() {
            assert_eq!(d.code() as usize, i, "{d:?}: codes follow §5's order");
            assert_eq!(d.status().as_u16(), status);
            assert_eq!(d.code().as_str(), code);
            assert_eq!(fixed(d.code()).code(), d.code());
        }
    }

    #[test]
    fn gateway_errors_have_their_codes_and_statuses() {
        let all = [
            (GatewayError::Upstream(UpstreamFailure::Unreachable), 502, "UPSTREAM_UNREACHABLE", "unreachable"),
            (GatewayError::Upstream(UpstreamFailure::Tls), 502, "UPSTREAM_TLS", "tls"),
            (GatewayError::Upstream(UpstreamFailure::Timeout), 504, "UPSTREAM_TIMEOUT", "timeout"),
            (GatewayError::Upstream(UpstreamFailure::Auth), 502, "UPSTREAM_AUTH", "auth"),
        ];
        for (e, status, code, label) in all {
            assert_eq!((e.status().as_u16(), e.code()), (status, code));
            let GatewayError::Upstream(f) = e else { unreachable!() };
            assert_eq!(f.label(), label);
        }
        assert_eq!((GatewayError::Busy.status().as_u16(), GatewayError::Busy.code()), (503, "GATEWAY_BUSY"));
        assert_eq!((GatewayError::Internal.status().as_u16(), GatewayError::Internal.code()), (500, "INTERNAL_ERROR"));
    }

    #[test]
    fn xml_and_json_shapes() {
        let xml = GatewayError::Denied(Denial::ActionNotAllowed).into_response(false);
        let body = std::str::from_utf8(xml.body()).unwrap();
        assert!(body.contains("<SUCCESS>false</SUCCESS>"));
        assert!(body.contains("<ERRORCODE>ACTION_NOT_ALLOWED</ERRORCODE>"));
        let json = GatewayError::Denied(Denial::TokenUnknown).into_response(true);
        let v: serde_json::Value = serde_json::from_slice(json.body()).unwrap();
        assert_eq!(v["success"], false);
        assert_eq!(v["data"]["errorCode"], "TOKEN_UNKNOWN");
        assert_eq!(v["data"]["errorMessage"], "A valid APPTOKEN is required");
        let busy = GatewayError::Busy.into_response(true);
        let v: serde_json::Value = serde_json::from_slice(busy.body()).unwrap();
        assert_eq!(v["data"]["errorCode"], "GATEWAY_BUSY");
    }

    #[test]
    fn shared_bodies_are_what_a_fresh_rendering_gives() {
        for code in DenialCode::iter().filter(|c| *c != DenialCode::AmbiguousRequest) {
            let d = fixed(code);
            for json in [false, true] {
                let shared = GatewayError::Denied(d).into_response(json);
                let mut fresh = render(d.status(), d.code().as_str(), d.message(), json);
                if let Denial::RateLimited(secs) = d {
                    fresh.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                assert_eq!(
                    (shared.status(), shared.headers(), shared.body()),
                    (fresh.status(), fresh.headers(), fresh.body())
                );
            }
        }
        let limited = GatewayError::Denied(Denial::RateLimited(7)).into_response(false);
        assert_eq!(limited.headers()["retry-after"], "7");
        assert_eq!(limited.status(), 429);
        let amb = GatewayError::Denied(Denial::AmbiguousRequest("because")).into_response(false);
        assert!(std::str::from_utf8(amb.body()).unwrap().contains("<MESSAGE>because</MESSAGE>"));
    }
}
