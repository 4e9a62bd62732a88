//! The decision of interface.md §5 as a pure function of what the request
//! asks and the token table: a grant or a refusal. No I/O, no clock, no
//! metrics: everything it needs is in [`DecisionInput`].

pub mod client_ip;
pub mod params;
pub mod route;

use std::time::SystemTime;

use http::Method;

use crate::denial::Denial;
use crate::tokens::table::{Token, TokenHash, TokenRef, TokenTable};
use client_ip::{BadForwardedFor, Resolved};
use params::{Malformed, ParamValue, Params};
use route::{CanonicalPath, NotCanonical};

/// What became of the body before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCheck {
    /// Not a form (streams on), or a form read whole and scanned.
    Fine,
    /// A form over `inspect_body_bytes`.
    TooLarge,
    /// A body the gateway will not interpret (see `params::body_kind`).
    Refused(&'static str),
}

/// Everything the decision looks at, gathered from one request (by
/// `proxy::gather`, or by a test).
#[derive(Debug)]
pub struct DecisionInput<'a> {
    /// The request method, for routes.
    pub method: &'a Method,
    /// The path as the upstream will map it.
    pub path: Result<CanonicalPath<'a>, NotCanonical>,
    /// APPTOKEN, ACTION and JSON from the query and a form body.
    pub params: Result<Params<'a>, Malformed>,
    /// What became of the body.
    pub body: BodyCheck,
    /// The client address, and the trusted proxies it came through.
    pub client: Result<Resolved, BadForwardedFor>,
    /// The time the decision is made at (for `expires`).
    pub now: SystemTime,
    /// An APPTOKEN value whose digest was computed already (the query's,
    /// for the body's room), with that digest: used only for that value.
    pub known_digest: Option<(&'a [u8], TokenHash)>,
}

/// A grant: every row passed. It carries what the rows established, so
/// that nothing after the decision has to check them again.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'t, 'i, 'r> {
    /// The token, for its counters and name.
    pub token: TokenRef<'t>,
    /// The path that was matched: what goes upstream.
    pub path: &'i CanonicalPath<'r>,
    /// The client the decision was made for.
    pub client: &'i Resolved,
    /// The caller's token as it came (decoded): it must not go upstream.
    pub apptoken: &'i [u8],
}

/// A refusal, with the token when one was found (for its counters).
#[derive(Debug)]
pub struct Refusal<'t> {
    /// The row that refused, and with what code.
    pub denial: Denial,
    /// The token, when the refusal came after it was found (row 2 on), so
    /// that its counters can be charged.
    pub token: Option<TokenRef<'t>>,
}

fn refuse(denial: Denial) -> Refusal<'static> {
    Refusal { denial, token: None }
}

/// Who is asking, as rows 1 to 4 of §5 establish it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'t, 'i, 'r> {
    /// The token found.
    pub token: TokenRef<'t>,
    /// The parameters row 1 read (APPTOKEN, ACTION, JSON).
    pub params: &'i Params<'r>,
    /// The caller's token as it came (decoded).
    pub apptoken: &'i [u8],
    /// Its SHA-256, as the table is keyed.
    pub digest: TokenHash,
    /// The client, within the token's restriction.
    pub client: &'i Resolved,
}

/// Rows 1 to 4 of §5 alone: a token is given once, is known, active and
/// unexpired, and the client may use it. What the request asks for (row 5)
/// is not looked at; [`decide`] is this and row 5. The body's room is
/// chosen with it before the body is read (`proxy::inspect`).
pub fn caller<'t, 'i, 'r>(
    table: &'t TokenTable,
    asked: &'i DecisionInput<'r>,
) -> Result<Caller<'t, 'i, 'r>, Refusal<'t>> {
    // Row 1: find APPTOKEN. A parameter name that cannot be decoded could be
    // APPTOKEN or ACTION, so nothing after this row can be trusted.
    let params = asked
        .params
        .as_ref()
        .map_err(|Malformed| refuse(Denial::AmbiguousRequest("A parameter has a malformed percent-escape")))?;
    let token: &'i [u8] = match &params.apptoken {
        ParamValue::One(t) => t,
        ParamValue::Conflict => {
            return Err(refuse(Denial::AmbiguousRequest("APPTOKEN is given twice with different values")))
        }
        // The token may be in the body we could not read: say why it was not.
        ParamValue::Absent => {
            return Err(refuse(match asked.body {
                BodyCheck::Fine => Denial::TokenMissing,
                BodyCheck::TooLarge => Denial::BodyTooLarge,
                BodyCheck::Refused(why) => Denial::AmbiguousRequest(why),
            }))
        }
    };

    // Row 2: look it up, by digest; computed once per request (here, or
    // already for the body's room when the same token came in the query).
    let digest = match asked.known_digest {
        Some((value, digest)) if value == token => digest,
        _ => TokenHash::of(&Token(token)),
    };
    let entry = table.get(&digest).ok_or_else(|| refuse(Denial::TokenUnknown))?;
    let deny = |denial| Refusal { denial, token: Some(entry) };

    // Row 3: active and not expired, before anything about the request itself.
    if !entry.active() {
        return Err(deny(Denial::TokenInactive));
    }
    if entry.expired_at(asked.now) {
        return Err(deny(Denial::TokenExpired));
    }

    // Row 4: the client address; an unreadable X-Forwarded-For from a trusted
    // proxy means the address is unknown, which no restriction allows.
    let client = asked.client.as_ref().map_err(|BadForwardedFor| deny(Denial::IpNotAllowed))?;
    if !entry.ip_restriction().allows(client.client.0) {
        return Err(deny(Denial::IpNotAllowed));
    }
    Ok(Caller { token: entry, params, apptoken: token, digest, client })
}

/// Decides a request, row by row of §5; the first failing row answers.
pub fn decide<'t, 'i, 'r>(
    table: &'t TokenTable,
    asked: &'i DecisionInput<'r>,
) -> Result<Grant<'t, 'i, 'r>, Refusal<'t>> {
    // Rows 1 to 4: who is asking.
    let Caller { token: entry, params, apptoken, client, .. } = caller(table, asked)?;
    let deny = |denial| Refusal { denial, token: Some(entry) };

    // Row 5: what the request asks for. The body first: ACTION may be in it.
    match asked.body {
        BodyCheck::Fine => {}
        BodyCheck::TooLarge => return Err(deny(Denial::BodyTooLarge)),
        BodyCheck::Refused(why) => return Err(deny(Denial::AmbiguousRequest(why))),
    }
    if params.method_override {
        // The method a framework behind the scanner might run instead.
        return Err(deny(Denial::AmbiguousRequest("A _method parameter (a method override) is not accepted")));
    }
    let path = asked.path.as_ref().map_err(|NotCanonical(why)| deny(Denial::AmbiguousRequest(why)))?;
    let grant = Grant { token: entry, path, client, apptoken };
    let action_allowed = || match &params.action {
        // The clients' login probe.
        ParamValue::Absent => Ok(()),
        ParamValue::Conflict => Err(deny(Denial::AmbiguousRequest("ACTION is given twice with different values"))),
        ParamValue::One(action) if entry.right().actions.allows(action) => Ok(()),
        ParamValue::One(_) => Err(deny(Denial::ActionNotAllowed)),
    };
    if path.is_xmlapi() {
        action_allowed()?;
    } else if entry.right().routes.iter().any(|r| r.matches(asked.method, path.as_str())) {
        // A path a lenient front might still map to the XMLAPI
        // (`/opi/XMLAPI.`, `/opi/XMLAP%C4%B0`): its ACTION must be allowed too.
        if path.may_be_xmlapi() {
            action_allowed()?;
        }
    } else {
        return Err(deny(Denial::RouteNotAllowed));
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::file::parse;
    use std::path::Path;
    use std::time::Duration;

    const FILE: &str = r#"
[access_rights.read-only]
actions = ["TARGETDATA", "SCANNERDATA"]
routes = ["GET /opi/rest/outscan/*"]
[access_rights.admin]
actions = ["*"]
routes = ["* /*"]
[access_rights.probe-only]
[access_rights.reads-and-routes]
actions = ["TARGETDATA"]
routes = ["* /*"]
[[token]]
name = "mixed"
active = true
token = "MX"
ip_restriction = []
access_right = "reads-and-routes"
expires = "never"
[access_rights.minter]
actions = ["GETRESTTOKEN"]
routes = ["POST /opi/rest/auth/login"]
[[token]]
name = "minter"
active = true
token = "MT"
ip_restriction = []
access_right = "minter"
expires = "never"
[[token]]
name = "ro"
active = true
token = "RO"
ip_restriction = ["192.0.2.0/24", "2001:db8::/32"]
access_right = "read-only"
expires = "never"
[[token]]
name = "admin"
active = true
token = "AD"
ip_restriction = []
access_right = "admin"
expires = "never"
[[token]]
name = "off"
active = false
token = "OFF"
ip_restriction = []
access_right = "admin"
expires = "never"
[[token]]
name = "old"
active = true
token = "OLD"
ip_restriction = []
access_right = "admin"
expires = 2020-01-01T00:00:00Z
[[token]]
name = "probe"
active = true
token = "PR"
ip_restriction = []
access_right = "probe-only"
expires = "never"
"#;

    fn client(ip: &str) -> Resolved {
        Resolved { client: client_ip::ClientIp(ip.parse().unwrap()), hops: Vec::new() }
    }

    fn table() -> TokenTable {
        parse(Path::new("t.toml"), FILE).unwrap().table
    }

    struct Case {
        method: Method,
        path: &'static str,
        query: &'static str,
        body: &'static str,
        body_check: BodyCheck,
        ip: &'static str,
        xff_bad: bool,
    }

    fn case(query: &'static str) -> Case {
        Case {
            method: Method::GET,
            path: "/opi/XMLAPI",
            query,
            body: "",
            body_check: BodyCheck::Fine,
            ip: "192.0.2.10",
            xff_bad: false,
        }
    }

    fn run(t: &TokenTable, c: &Case) -> Result<String, Denial> {
        let mut p = Params::default();
        let params = p.scan(c.query.as_bytes()).and_then(|()| p.scan(c.body.as_bytes())).map(|()| p);
        let asked = DecisionInput {
            method: &c.method,
            path: CanonicalPath::parse(c.path),
            params,
            body: c.body_check,
            client: if c.xff_bad { Err(BadForwardedFor) } else { Ok(client(c.ip)) },
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            known_digest: None,
        };
        decide(t, &asked).map(|g| g.token.name().to_string()).map_err(|r| r.denial)
    }

    #[test]
    fn each_row_of_the_decision() {
        use Denial::*;
        let t = table();
        let amb = |s| Err(AmbiguousRequest(s));
        let rows: Vec<(Case, Result<String, Denial>)> = vec![
            // Row 1: find APPTOKEN.
            (case("ACTION=TARGETDATA"), Err(TokenMissing)),
            (case("APPTOKEN=RO&apptoken=AD"), amb("APPTOKEN is given twice with different values")),
            (case("APPTOKEN=RO&APPTOKEN=RO&ACTION=TARGETDATA"), Ok("ro".into())),
            (case("apptoken=RO&action=targetdata"), Ok("ro".into())),
            (case("%41PPTOKEN=RO&ACTION=TARGETDATA"), Ok("ro".into())),
            (case("APPTOKEN=RO&%zz=1"), amb("A parameter has a malformed percent-escape")),
            (Case { body_check: BodyCheck::TooLarge, ..case("") }, Err(BodyTooLarge)),
            // Row 2: look it up (exact digest: another spelling is another token).
            (case("APPTOKEN=ro&ACTION=TARGETDATA"), Err(TokenUnknown)),
            (case("APPTOKEN=NOPE"), Err(TokenUnknown)),
            // Row 3: active, not expired.
            (case("APPTOKEN=OFF"), Err(TokenInactive)),
            (case("APPTOKEN=OLD"), Err(TokenExpired)),
            // Row 4: client address.
            (Case { ip: "198.51.100.1", ..case("APPTOKEN=RO") }, Err(IpNotAllowed)),
            // Two failures: the earlier row answers (§5's order).
            (case("APPTOKEN=OFF&ACTION=REMOVETARGETDATA"), Err(TokenInactive)),
            (case("APPTOKEN=OLD&ACTION=REMOVETARGETDATA"), Err(TokenExpired)),
            (Case { ip: "198.51.100.1", ..case("APPTOKEN=OFF") }, Err(TokenInactive)),
            (Case { ip: "198.51.100.1", ..case("APPTOKEN=RO&ACTION=REMOVETARGETDATA") }, Err(IpNotAllowed)),
            (Case { body: "APPTOKEN=AD", ..case("APPTOKEN=RO") }, amb("APPTOKEN is given twice with different values")),
            (Case { ip: "2001:db8::1", ..case("APPTOKEN=RO") }, Ok("ro".into())),
            (Case { xff_bad: true, ..case("APPTOKEN=AD") }, Err(IpNotAllowed)),
            (Case { ip: "198.51.100.1", ..case("APPTOKEN=AD&ACTION=X") }, Ok("admin".into())),
            // Row 5: the ACTION on the XMLAPI path.
            (case("APPTOKEN=RO"), Ok("ro".into())),
            (case("APPTOKEN=PR"), Ok("probe".into())),
            (case("APPTOKEN=PR&ACTION=TARGETDATA"), Err(ActionNotAllowed)),
            (case("APPTOKEN=RO&ACTION=REMOVETARGETDATA"), Err(ActionNotAllowed)),
            (case("APPTOKEN=RO&%41CTION=REMOVETARGETDATA"), Err(ActionNotAllowed)),
            (case("APPTOKEN=RO&ACTION="), Err(ActionNotAllowed)),
            (
                case("APPTOKEN=RO&ACTION=TARGETDATA&action=REMOVETARGETDATA"),
                amb("ACTION is given twice with different values"),
            ),
            (Case { body: "ACTION=REMOVETARGETDATA", ..case("APPTOKEN=RO") }, Err(ActionNotAllowed)),
            (Case { body: "ACTION=SCANNERDATA&APPTOKEN=RO", ..case("") }, Ok("ro".into())),
            (
                Case { body: "ACTION=REMOVETARGETDATA", ..case("APPTOKEN=RO&ACTION=TARGETDATA") },
                amb("ACTION is given twice with different values"),
            ),
            (Case { body_check: BodyCheck::TooLarge, ..case("APPTOKEN=RO") }, Err(BodyTooLarge)),
            (Case { body_check: BodyCheck::Refused("r"), ..case("APPTOKEN=RO") }, amb("r")),
            (Case { path: "/opi/xmlapi", ..case("APPTOKEN=RO&ACTION=REMOVETARGETDATA") }, Err(ActionNotAllowed)),
            (Case { path: "/opi/XMLAPI;x=1", ..case("APPTOKEN=RO&ACTION=REMOVETARGETDATA") }, Err(ActionNotAllowed)),
            (Case { path: "/opi/%58MLAPI", ..case("APPTOKEN=RO&ACTION=TARGETDATA") }, Ok("ro".into())),
            (
                Case { path: "/opi%2FXMLAPI", ..case("APPTOKEN=AD") },
                amb("the path encodes a separator, a NUL or a percent sign"),
            ),
            // Row 5: routes off the XMLAPI path.
            (Case { path: "/opi/rest/outscan/targets", ..case("APPTOKEN=RO") }, Ok("ro".into())),
            (
                Case { path: "/opi/rest/outscan/targets", method: Method::DELETE, ..case("APPTOKEN=RO") },
                Err(RouteNotAllowed),
            ),
            (Case { path: "/opi/rest/outscan/../admin/x", ..case("APPTOKEN=RO") }, Err(RouteNotAllowed)),
            (Case { path: "/opi/rest/admin", method: Method::DELETE, ..case("APPTOKEN=AD") }, Ok("admin".into())),
            (Case { path: "/opi/rest/outscan/x", ..case("APPTOKEN=PR") }, Err(RouteNotAllowed)),
            // Row 5: a method override in a parameter.
            (
                Case { path: "/opi/rest/outscan/x", ..case("APPTOKEN=RO&_method=DELETE") },
                amb("A _method parameter (a method override) is not accepted"),
            ),
            (
                Case { body: "_METHOD=PUT", ..case("APPTOKEN=AD&ACTION=TARGETDATA") },
                amb("A _method parameter (a method override) is not accepted"),
            ),
            (case("APPTOKEN=AD&%5Fmethod=DELETE"), amb("A _method parameter (a method override) is not accepted")),
            (case("APPTOKEN=AD&_methods=DELETE"), Ok("admin".into())),
            // Row 5: credential-minting calls, never covered by a wildcard
            // (§4), allowed to a right that names them.
            (case("APPTOKEN=AD&ACTION=GETRESTTOKEN"), Err(ActionNotAllowed)),
            (case("APPTOKEN=AD&action=getRestToken"), Err(ActionNotAllowed)),
            (case("APPTOKEN=AD&ACTION=%47ETRESTTOKEN"), Err(ActionNotAllowed)),
            (Case { body: "ACTION=GETRESTTOKEN", ..case("APPTOKEN=AD") }, Err(ActionNotAllowed)),
            (case("APPTOKEN=AD&ACTION=TARGETDATA"), Ok("admin".into())),
            (case("APPTOKEN=MT&ACTION=GETRESTTOKEN"), Ok("minter".into())),
            (case("APPTOKEN=MT&ACTION=TARGETDATA"), Err(ActionNotAllowed)),
            (Case { path: "/opi/rest/auth/login", method: Method::POST, ..case("APPTOKEN=AD") }, Err(RouteNotAllowed)),
            (Case { path: "/opi/rest/AUTH/Login", method: Method::POST, ..case("APPTOKEN=AD") }, Err(RouteNotAllowed)),
            (Case { path: "/opi/rest/auth", method: Method::POST, ..case("APPTOKEN=AD") }, Err(RouteNotAllowed)),
            (
                Case { path: "/opi//rest/./auth/login", method: Method::POST, ..case("APPTOKEN=AD") },
                Err(RouteNotAllowed),
            ),
            (
                Case { path: "/opi/rest/%61uth/login", method: Method::POST, ..case("APPTOKEN=AD") },
                Err(RouteNotAllowed),
            ),
            (Case { path: "/opi/rest/authority", ..case("APPTOKEN=AD") }, Ok("admin".into())),
            (Case { path: "/opi/rest/auth/login", method: Method::POST, ..case("APPTOKEN=MT") }, Ok("minter".into())),
            (Case { path: "/opi/rest/auth/login", ..case("APPTOKEN=MT") }, Err(RouteNotAllowed)),
            (Case { path: "/opi/rest/auth/logout", method: Method::POST, ..case("APPTOKEN=MT") }, Err(RouteNotAllowed)),
            // ... nor anything a lenient reader might take for them: an
            // ACTION "*" allows is a plain name; a login path is one in any
            // Java case folding, with segments trimmed.
            (case("APPTOKEN=AD&ACTION=GETRESTTOKEN%20"), Err(ActionNotAllowed)),
            (case("APPTOKEN=AD&ACTION=%20GETRESTTOKEN"), Err(ActionNotAllowed)),
            (case("APPTOKEN=AD&ACTION=GETRESTTOKEN%09"), Err(ActionNotAllowed)),
            (case("APPTOKEN=AD&ACTION=GETRESTTOKEN%00"), Err(ActionNotAllowed)),
            (case("APPTOKEN=AD&ACTION=GETRESTTOKEN;x"), Err(ActionNotAllowed)),
            (case("APPTOKEN=AD&ACTION="), Ok("admin".into())),
            (case("APPTOKEN=AD&ACTION=TARGET_DATA2"), Ok("admin".into())),
            (case("APPTOKEN=MT&ACTION=GETRESTTOKEN%20"), Err(ActionNotAllowed)),
            (Case { path: "/opi/XMLAPI.", ..case("APPTOKEN=AD&ACTION=GETRESTTOKEN") }, Err(ActionNotAllowed)),
            (Case { path: "/opi/XMLAPI%20", ..case("APPTOKEN=AD&ACTION=GETRESTTOKEN") }, Err(ActionNotAllowed)),
            (Case { path: "/opi/XMLAPI%09/x", ..case("APPTOKEN=AD&ACTION=GETRESTTOKEN") }, Err(ActionNotAllowed)),
            (Case { path: "/opi/XMLAP%C4%B0", ..case("APPTOKEN=AD&ACTION=GETRESTTOKEN") }, Err(ActionNotAllowed)),
            (Case { path: "/op%C4%B1/xmlapi..", ..case("APPTOKEN=AD&ACTION=GETRESTTOKEN") }, Err(ActionNotAllowed)),
            (Case { path: "/opi/XMLAPI.", ..case("APPTOKEN=AD&ACTION=TARGETDATA") }, Ok("admin".into())),
            (Case { path: "/opi/XMLAPI.", ..case("APPTOKEN=MX&ACTION=REMOVETARGETDATA") }, Err(ActionNotAllowed)),
            (Case { path: "/opi/XMLAPI.", ..case("APPTOKEN=MX&ACTION=TARGETDATA") }, Ok("mixed".into())),
            (Case { path: "/opi/XMLAPIX", ..case("APPTOKEN=MX&ACTION=REMOVETARGETDATA") }, Ok("mixed".into())),
            (Case { path: "/opi/XMLAPI", ..case("APPTOKEN=MX&ACTION=REMOVETARGETDATA") }, Err(ActionNotAllowed)),
            (Case { path: "/opi/rest/auth./login", method: Method::POST, ..case("APPTOKEN=AD") }, Err(RouteNotAllowed)),
            (
                Case { path: "/opi/rest/auth%20/login", method: Method::POST, ..case("APPTOKEN=AD") },
                Err(RouteNotAllowed),
            ),
            (
                Case { path: "/opi/rest/auth%09/login", method: Method::POST, ..case("APPTOKEN=AD") },
                Err(RouteNotAllowed),
            ),
            (
                Case { path: "/opi/re%C5%BFt/auth/login", method: Method::POST, ..case("APPTOKEN=AD") },
                Err(RouteNotAllowed),
            ),
            (
                Case { path: "/op%C4%B1/rest/auth/login", method: Method::POST, ..case("APPTOKEN=AD") },
                Err(RouteNotAllowed),
            ),
            (Case { path: "/opi/rest/auth./login", method: Method::POST, ..case("APPTOKEN=MT") }, Err(RouteNotAllowed)),
        ];
        for (i, (c, want)) in rows.iter().enumerate() {
            assert_eq!(&run(&t, c), want, "row {i}: {} {}?{} body={:?}", c.method, c.path, c.query, c.body);
        }
    }

    #[test]
    fn refusals_after_lookup_carry_the_token() {
        let t = table();
        let c = case("APPTOKEN=RO&ACTION=REMOVETARGETDATA");
        let mut p = Params::default();
        p.scan(c.query.as_bytes()).unwrap();
        let asked = DecisionInput {
            method: &c.method,
            path: CanonicalPath::parse(c.path),
            params: Ok(p),
            body: BodyCheck::Fine,
            client: Ok(client(c.ip)),
            now: SystemTime::now(),
            known_digest: None,
        };
        let r = decide(&t, &asked).unwrap_err();
        assert_eq!(r.token.map(|e| e.name()), Some("ro"));
    }
}
