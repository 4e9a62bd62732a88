//! The gateway's refusals: one variant per ERRORCODE of interface.md §5, and
//! the one function that renders a refusal in the XMLAPI's own shape. Uses
//! `http` types only. A refusal never echoes the caller's input.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Why a request was refused. The order of variants is the order of §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The gateway cannot tell with certainty what the request asks for.
    Ambiguous(&'static str),
    /// The body must be read to decide but is over `inspect_body_bytes`.
    BodyTooLarge,
}

/// Every reason, as label values and array indexes: `Denial::index()`.
pub const DENIAL_CODES: [&str; 9] = [
    "TOKEN_MISSING",
    "TOKEN_UNKNOWN",
    "TOKEN_INACTIVE",
    "TOKEN_EXPIRED",
    "IP_NOT_ALLOWED",
    "ACTION_NOT_ALLOWED",
    "ROUTE_NOT_ALLOWED",
    "AMBIGUOUS_REQUEST",
    "BODY_TOO_LARGE",
];

impl Denial {
    /// The HTTP status of §5.
    pub fn status(self) -> StatusCode {
        match self {
            Denial::TokenMissing | Denial::TokenUnknown => StatusCode::UNAUTHORIZED,
            Denial::TokenInactive
            | Denial::TokenExpired
            | Denial::IpNotAllowed
            | Denial::ActionNotAllowed
            | Denial::RouteNotAllowed => StatusCode::FORBIDDEN,
            Denial::Ambiguous(_) => StatusCode::BAD_REQUEST,
            Denial::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Position in [`DENIAL_CODES`].
    pub fn index(self) -> usize {
        match self {
            Denial::TokenMissing => 0,
            Denial::TokenUnknown => 1,
            Denial::TokenInactive => 2,
            Denial::TokenExpired => 3,
            Denial::IpNotAllowed => 4,
            Denial::ActionNotAllowed => 5,
            Denial::RouteNotAllowed => 6,
            Denial::Ambiguous(_) => 7,
            Denial::BodyTooLarge => 8,
        }
    }

    /// The ERRORCODE, also the `reason` in logs and metrics.
    pub fn code(self) -> &'static str {
        DENIAL_CODES[self.index()]
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
            Denial::Ambiguous(why) => why,
            Denial::BodyTooLarge => "The request body is too large to inspect",
        }
    }

    /// The refusal as the XMLAPI would shape it. The bodies of the fixed
    /// messages are rendered once and shared.
    pub fn into_response(self, json: bool) -> Response<Bytes> {
        static RENDERED: std::sync::OnceLock<Vec<[Response<Bytes>; 2]>> = std::sync::OnceLock::new();
        if matches!(self, Denial::Ambiguous(_)) {
            return xmlapi_error(self.status(), self.code(), self.message(), json);
        }
        let rendered = RENDERED.get_or_init(|| {
            FIXED.iter().map(|d| [false, true].map(|j| xmlapi_error(d.status(), d.code(), d.message(), j))).collect()
        });
        let r = &rendered[self.index()][usize::from(json)];
        let mut resp = Response::new(r.body().clone());
        *resp.status_mut() = r.status();
        *resp.headers_mut() = r.headers().clone();
        resp
    }
}

/// The denials with a fixed message, in [`DENIAL_CODES`] order (the
/// ambiguous one's place holds a stand-in that is never served).
const FIXED: [Denial; 9] = [
    Denial::TokenMissing,
    Denial::TokenUnknown,
    Denial::TokenInactive,
    Denial::TokenExpired,
    Denial::IpNotAllowed,
    Denial::ActionNotAllowed,
    Denial::RouteNotAllowed,
    Denial::Ambiguous(""),
    Denial::BodyTooLarge,
];

/// An error answer in the XMLAPI's shape: XML by default, JSON when the
/// request carried `JSON=1`. `code` and `message` are the gateway's own
/// constants, never request data, so they need no escaping beyond the XML
/// entities below.
pub fn xmlapi_error(status: StatusCode, code: &str, message: &str, json: bool) -> Response<Bytes> {
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

    #[test]
    fn every_denial_has_its_code_and_status() {
        let all = [
            (Denial::TokenMissing, 401),
            (Denial::TokenUnknown, 401),
            (Denial::TokenInactive, 403),
            (Denial::TokenExpired, 403),
            (Denial::IpNotAllowed, 403),
            (Denial::ActionNotAllowed, 403),
            (Denial::RouteNotAllowed, 403),
            (Denial::Ambiguous("x"), 400),
            (Denial::BodyTooLarge, 413),
        ];
        for (i, (d, status)) in all.into_iter().enumerate() {
            assert_eq!(d.index(), i);
            assert_eq!(d.status().as_u16(), status);
        }
    }

    #[test]
    fn xml_and_json_shapes() {
        let xml = Denial::ActionNotAllowed.into_response(false);
        let body = std::str::from_utf8(xml.body()).unwrap();
        assert!(body.contains("<SUCCESS>false</SUCCESS>"));
        assert!(body.contains("<ERRORCODE>ACTION_NOT_ALLOWED</ERRORCODE>"));
        let json = Denial::TokenUnknown.into_response(true);
        let v: serde_json::Value = serde_json::from_slice(json.body()).unwrap();
        assert_eq!(v["success"], false);
        assert_eq!(v["data"]["errorCode"], "TOKEN_UNKNOWN");
        assert_eq!(v["data"]["errorMessage"], "A valid APPTOKEN is required");
        for (i, d) in FIXED.into_iter().enumerate() {
            assert_eq!(d.index(), i);
            for json in [false, true] {
                let shared = d.into_response(json);
                let fresh = xmlapi_error(d.status(), d.code(), d.message(), json);
                assert_eq!(
                    (shared.status(), shared.headers(), shared.body()),
                    (fresh.status(), fresh.headers(), fresh.body())
                );
            }
        }
    }
}
