//! REST routes with `[upstream.rest]` (interface.md §3, §6) against a mock
//! scanner that issues and checks REST tokens: one token shared, renewed
//! before it runs out and after a 401, one login at a time, both kinds of
//! login, the caller's token as a bearer, and `denial_status = "xmlapi"`.

use std::time::Duration;

use crate::harness::*;

const USER: &str = "gateway-user";
const PASS: &str = "s3cret pass&word";

fn rest_gateway(scanner: &std::sync::Arc<RestScanner>, rest: &str) -> (MockUpstream, Gateway) {
    let up = MockUpstream::start_with(Reply::Rest(scanner.clone()));
    let gw = Gateway::builder(&up.url(), &standard_tokens().render()).extra(rest).start();
    (up, gw)
}

fn password_files() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("user"), format!("{USER}\n")).unwrap();
    std::fs::write(dir.path().join("pass"), format!("{PASS}\n")).unwrap();
    let cfg = format!(
        "[upstream.rest]\nlogin = \"password\"\nusername_file = \"{}\"\npassword_file = \"{}\"\n",
        dir.path().join("user").display(),
        dir.path().join("pass").display()
    );
    (dir, cfg)
}

fn rest_get(gw: &Gateway) -> Response {
    gw.get(&format!("/opi/rest/outscan/targets?APPTOKEN={RO}"))
}

fn metric(gw: &Gateway, start: &str) -> u64 {
    let m = request(gw.admin, "GET", "/metrics", &[], b"").text();
    m.lines().find(|l| l.starts_with(start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

#[test]
fn rest_routes_carry_one_shared_rest_token_obtained_with_the_apptoken() {
    let scanner = RestScanner::new(USER, PASS, UPSTREAM_TOKEN);
    let (up, gw) = rest_gateway(&scanner, "[upstream.rest]\nlogin = \"apptoken\"\n");
    for _ in 0..5 {
        let r = rest_get(&gw);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(scanner.logins(), 1, "one REST token for every request");
    let rest: Vec<_> = up.requests().into_iter().filter(|r| r.path().starts_with("/opi/rest/outscan")).collect();
    assert_eq!(rest.len(), 5);
    for r in &rest {
        assert_eq!(r.header("authorization"), Some("Bearer rest-1"), "{r:?}");
        assert!(!r.target.to_ascii_uppercase().contains("APPTOKEN"), "an APPTOKEN went to a REST route: {r:?}");
    }
    // The XMLAPI still gets the APPTOKEN credential, and no bearer.
    assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA")).status, 200);
    let x = up.last();
    assert!(x.query().starts_with(&format!("APPTOKEN={UPSTREAM_TOKEN}")), "{x:?}");
    assert_eq!(x.header("authorization"), None);
    assert_eq!(metric(&gw, "tokengate_rest_token_renewals_total{outcome=\"success\"}"), 1);
    // Neither the REST token nor the credential is in the log.
    let log = gw.log().join("\n");
    assert!(!log.contains("rest-1") && !log.contains(UPSTREAM_TOKEN), "{log}");
}

#[test]
fn the_password_login_works_and_bad_credentials_answer_502_upstream_auth() {
    let scanner = RestScanner::new(USER, PASS, UPSTREAM_TOKEN);
    let (_files, cfg) = password_files();
    let (up, gw) = rest_gateway(&scanner, &cfg);
    assert_eq!(rest_get(&gw).status, 200);
    assert_eq!(up.last().header("authorization"), Some("Bearer rest-1"));
    let login = up.requests().into_iter().find(|r| r.path() == "/opi/rest/auth/login").unwrap();
    assert_eq!(String::from_utf8_lossy(&login.body), "username=gateway-user&password=s3cret+pass%26word");

    // A scanner that refuses the login: REST routes get 502, the XMLAPI
    // does not depend on it.
    let scanner = RestScanner::new(USER, "another password", UPSTREAM_TOKEN);
    let (_files, cfg) = password_files();
    let (up, gw) = rest_gateway(&scanner, &cfg);
    let r = rest_get(&gw);
    assert_eq!((r.status, r.errorcode().as_deref()), (502, Some("UPSTREAM_AUTH")), "{}", r.text());
    assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA")).status, 200);
    assert!(up.requests().iter().all(|r| !r.path().starts_with("/opi/rest/outscan")), "nothing went without a token");
    assert!(metric(&gw, "tokengate_rest_token_renewals_total{outcome=\"failure\"}") >= 1);
    assert!(metric(&gw, "tokengate_upstream_failures_total{kind=\"auth\"}") >= 1);
    let log = gw.log().join("\n");
    assert!(!log.contains(PASS) && !log.contains("another password"), "a password is in the log: {log}");
}

#[test]
fn the_rest_token_is_renewed_before_it_runs_out() {
    let scanner = RestScanner::new(USER, PASS, UPSTREAM_TOKEN);
    // The scanner's tokens last 1.5 s; the gateway knows they last 1 s.
    scanner.set_lifetime(Duration::from_millis(1500));
    let (_up, gw) = rest_gateway(&scanner, "[upstream.rest]\nlogin = \"apptoken\"\ntoken_lifetime = \"1s\"\n");
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_millis(3500) {
        statuses.push(rest_get(&gw).status);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(statuses.iter().all(|&s| s == 200), "a request failed while the token aged: {statuses:?}");
    let logins = scanner.logins();
    assert!((3..=6).contains(&logins), "{logins} logins in 3.5 s with a 1 s lifetime");
}

#[test]
fn a_401_renews_at_once_and_a_request_without_a_body_is_sent_once_more() {
    let scanner = RestScanner::new(USER, PASS, UPSTREAM_TOKEN);
    let (up, gw) = rest_gateway(&scanner, "[upstream.rest]\nlogin = \"apptoken\"\n");
    assert_eq!(rest_get(&gw).status, 200);
    // (A 401 within a second of a login renews nothing: see below.)
    std::thread::sleep(RENEWAL_PAUSE);
    scanner.revoke_all();
    // Without a body: the 401 is not seen by the caller.
    assert_eq!(rest_get(&gw).status, 200);
    assert_eq!(scanner.logins(), 2);
    assert_eq!(up.last().header("authorization"), Some("Bearer rest-2"));
    // With a body: sent once only; the caller gets the scanner's 401, and
    // the next request has the new token.
    std::thread::sleep(RENEWAL_PAUSE);
    scanner.revoke_all();
    let before = up.count();
    let r = gw.send("PUT", &format!("/opi/rest/outscan/targets/1?APPTOKEN={ADMIN}"), &[], b"{\"name\":\"x\"}");
    assert_eq!(r.status, 401, "{}", r.text());
    let puts = up.requests()[before..].iter().filter(|r| r.method == "PUT").count();
    assert_eq!(puts, 1, "a request with a body was sent twice");
    assert_eq!(scanner.logins(), 3);
    assert_eq!(rest_get(&gw).status, 200);
}

/// A 401 renews the REST token at once, but not within a second of the
/// last login: longer than that.
const RENEWAL_PAUSE: Duration = Duration::from_millis(1100);

#[test]
fn a_route_that_always_answers_401_cannot_drive_a_login_per_request() {
    let scanner = RestScanner::new(USER, PASS, UPSTREAM_TOKEN);
    let (dir, cfg) = password_files();
    let (_up, gw) = rest_gateway(&scanner, &cfg);
    // Every token the scanner issues is refused at once.
    scanner.set_lifetime(Duration::ZERO);
    let started = std::time::Instant::now();
    for _ in 0..30 {
        assert_eq!(rest_get(&gw).status, 401);
    }
    let secs = started.elapsed().as_secs();
    assert!(scanner.logins() <= 2 + secs as usize, "{} logins in {secs} s", scanner.logins());
    drop(dir);
}

#[test]
fn the_rest_token_and_the_login_password_never_come_back_in_an_answer_header() {
    let scanner = RestScanner::new(USER, PASS, UPSTREAM_TOKEN);
    let (dir, cfg) = password_files();
    let (_up, gw) = rest_gateway(&scanner, &cfg);
    let r = gw.get(&format!("/opi/rest/echo?APPTOKEN={ADMIN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-echo-auth"), Some("Bearer REDACTED"));
    assert_eq!(r.header("x-echo-login"), Some(format!("{USER}:REDACTED").as_str()));
    assert!(!format!("{:?}", r.headers).contains("rest-1"));
    drop(dir);
}

#[test]
fn many_requests_waiting_for_a_token_share_one_login() {
    let scanner = RestScanner::new(USER, PASS, UPSTREAM_TOKEN);
    scanner.set_login_delay(Duration::from_millis(400));
    let (_up, gw) = rest_gateway(&scanner, "[upstream.rest]\nlogin = \"apptoken\"\n");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16).map(|_| s.spawn(|| rest_get(&gw).status)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(scanner.logins(), 1, "one login however many requests waited");
    // The same after a revocation: many 401s, one renewal.
    std::thread::sleep(RENEWAL_PAUSE);
    scanner.revoke_all();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16).map(|_| s.spawn(|| rest_get(&gw).status)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(scanner.logins(), 2, "one renewal however many requests saw the 401");
}

#[test]
fn a_rest_client_sends_its_gateway_token_as_its_bearer() {
    let scanner = RestScanner::new(USER, PASS, UPSTREAM_TOKEN);
    let (up, gw) = rest_gateway(&scanner, "[upstream.rest]\nlogin = \"apptoken\"\n");
    let bearer = format!("Bearer {RO}");
    let r = gw.send("GET", "/opi/rest/outscan/targets", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.header("authorization"), Some("Bearer rest-1"), "the caller's bearer went upstream: {seen:?}");
    assert!(!format!("{seen:?}").contains(RO));
    // An APPTOKEN and a bearer that name two tokens: 400.
    let r = gw.send("GET", &format!("/opi/rest/outscan/targets?APPTOKEN={ADMIN}"), &[("Authorization", &bearer)], b"");
    assert_eq!((r.status, r.errorcode().as_deref()), (400, Some("AMBIGUOUS_REQUEST")));
    // The same token both ways is one token.
    let r = gw.send("GET", &format!("/opi/rest/outscan/targets?APPTOKEN={RO}"), &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200);
    // On the XMLAPI path a bearer is not a token.
    let r = gw.send("GET", "/opi/XMLAPI?ACTION=TARGETDATA", &[("Authorization", &bearer)], b"");
    assert_eq!((r.status, r.errorcode().as_deref()), (401, Some("TOKEN_MISSING")));
}

#[test]
fn with_denial_status_xmlapi_a_refused_action_answers_200_as_the_scanner_does() {
    let up = MockUpstream::start();
    let gw =
        Gateway::builder(&up.url(), &standard_tokens().render()).extra_server("denial_status = \"xmlapi\"").start();
    // A client in the manner of the common Python clients: it reads the
    // XMLAPI error only from a 2xx answer.
    let python_client = |r: &Response| -> Result<String, String> {
        if !(200..300).contains(&r.status) {
            return Err(format!("HTTP {}", r.status));
        }
        match r.errorcode() {
            Some(code) => Ok(code),
            None => Ok("SUCCESS".into()),
        }
    };
    let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=REMOVETARGETDATA"));
    assert_eq!(python_client(&r), Ok("ACTION_NOT_ALLOWED".into()), "{}", r.text());
    let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={UNKNOWN}&ACTION=TARGETDATA&JSON=1"));
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((v["success"].clone(), v["data"]["errorCode"].clone()), (false.into(), "TOKEN_UNKNOWN".into()));
    // The login probe keeps its status: a bad token still fails the login check.
    assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={UNKNOWN}")).status, 401);
    // REST routes keep theirs.
    assert_eq!(gw.send("DELETE", &format!("/opi/rest/outscan/x?APPTOKEN={RO}"), &[], b"").status, 403);
    // Logged and counted as refusals all the same.
    assert_eq!(
        metric(&gw, "tokengate_requests_total{decision=\"denied\",reason=\"ACTION_NOT_ALLOWED\",token=\"reader\"}"),
        1
    );
    gw.wait_log("the refusal's access line", |l| {
        l.contains("decision=denied") && l.contains("reason=ACTION_NOT_ALLOWED")
    });
    assert_eq!(up.count(), 0);
}
