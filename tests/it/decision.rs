//! interface.md §5 through the real gateway: each row's status and
//! ERRORCODE, and that a refused request never reaches the upstream.

use crate::harness::*;

fn setup() -> (MockUpstream, Gateway) {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    (up, gw)
}

/// Asserts a refusal: status, ERRORCODE, and nothing upstream.
fn refused(up: &MockUpstream, r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.errorcode().as_deref(), Some(code), "{}", r.text());
    assert!(r.text().contains("<SUCCESS>false</SUCCESS>"));
    assert_eq!(up.count(), 0, "a refused request reached the upstream");
}

#[test]
fn each_row_of_the_decision_answers_with_its_status_and_code() {
    let (up, gw) = setup();
    let x = "/opi/XMLAPI";
    let cases: Vec<(Response, u16, &str)> = vec![
        (gw.get(&format!("{x}?ACTION=TARGETDATA")), 401, "TOKEN_MISSING"),
        (gw.get(&format!("{x}?APPTOKEN={RO}&APPTOKEN={ADMIN}")), 400, "AMBIGUOUS_REQUEST"),
        (gw.get(&format!("{x}?APPTOKEN={UNKNOWN}&ACTION=TARGETDATA")), 401, "TOKEN_UNKNOWN"),
        (gw.get(&format!("{x}?APPTOKEN={}&ACTION=TARGETDATA", RO.to_lowercase())), 401, "TOKEN_UNKNOWN"),
        (gw.get(&format!("{x}?APPTOKEN={INACTIVE}")), 403, "TOKEN_INACTIVE"),
        (gw.get(&format!("{x}?APPTOKEN={EXPIRED}")), 403, "TOKEN_EXPIRED"),
        (gw.get(&format!("{x}?APPTOKEN={ELSEWHERE}")), 403, "IP_NOT_ALLOWED"),
        (gw.get(&format!("{x}?APPTOKEN={RO}&ACTION=REMOVETARGETDATA")), 403, "ACTION_NOT_ALLOWED"),
        (gw.get(&format!("{x}?APPTOKEN={RO}&%41CTION=REMOVETARGETDATA")), 403, "ACTION_NOT_ALLOWED"),
        (gw.get(&format!("{x}?APPTOKEN={RO}&action=REMOVETARGETDATA")), 403, "ACTION_NOT_ALLOWED"),
        (gw.get(&format!("{x}?APPTOKEN={RO}&ACTION=TARGETDATA&ACTION=REMOVETARGETDATA")), 400, "AMBIGUOUS_REQUEST"),
        (gw.get(&format!("/opi/XMLAPI;x=1?APPTOKEN={RO}&ACTION=REMOVETARGETDATA")), 403, "ACTION_NOT_ALLOWED"),
        (gw.get(&format!("/opi%2FXMLAPI?APPTOKEN={ADMIN}")), 400, "AMBIGUOUS_REQUEST"),
        (gw.get(&format!("/opi/rest/outscan/../../admin?APPTOKEN={RO}")), 403, "ROUTE_NOT_ALLOWED"),
        (gw.send("DELETE", &format!("/opi/rest/outscan/targets/1?APPTOKEN={RO}"), &[], b""), 403, "ROUTE_NOT_ALLOWED"),
        (gw.post_form(&format!("{x}?APPTOKEN={RO}"), "ACTION=REMOVETARGETDATA"), 403, "ACTION_NOT_ALLOWED"),
        (
            gw.post_form(&format!("{x}?APPTOKEN={RO}&ACTION=TARGETDATA"), "ACTION=REMOVETARGETDATA"),
            400,
            "AMBIGUOUS_REQUEST",
        ),
        (gw.post_form(x, &format!("APPTOKEN={RO}&APPTOKEN={ADMIN}")), 400, "AMBIGUOUS_REQUEST"),
        (
            gw.send(
                "POST",
                &format!("{x}?APPTOKEN={RO}"),
                &[("Content-Type", "multipart/form-data; boundary=b")],
                b"--b--\r\n",
            ),
            400,
            "AMBIGUOUS_REQUEST",
        ),
    ];
    for (i, (r, status, code)) in cases.iter().enumerate() {
        assert_eq!((r.status, r.errorcode().as_deref()), (*status, Some(*code)), "case {i}: {}", r.text());
    }
    assert_eq!(up.count(), 0, "a refused request reached the upstream");
}

#[test]
fn body_over_the_inspection_limit_gets_413_and_never_reaches_upstream() {
    let up = MockUpstream::start();
    let gw =
        Gateway::builder(&up.url(), &standard_tokens().render()).extra("[limits]\ninspect_body_bytes = 1024").start();
    let big = format!("PAD={}&ACTION=REMOVETARGETDATA", "a".repeat(4096));
    let r = gw.post_form(&format!("/opi/XMLAPI?APPTOKEN={RO}"), &big);
    refused(&up, &r, 413, "BODY_TOO_LARGE");
    // Chunked, so the size is not known up front.
    let chunked = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let r = gw.send(
        "POST",
        &format!("/opi/XMLAPI?APPTOKEN={RO}"),
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Transfer-Encoding", "chunked")],
        chunked.as_bytes(),
    );
    refused(&up, &r, 413, "BODY_TOO_LARGE");
}

#[test]
fn allowed_requests_reach_the_upstream() {
    let (up, gw) = setup();
    let x = "/opi/XMLAPI";
    let ok = [
        gw.get(&format!("{x}?APPTOKEN={RO}&ACTION=TARGETDATA")),
        gw.get(&format!("{x}?APPTOKEN={RO}")),
        gw.get(&format!("{x}?apptoken={RO}&action=targetdata")),
        gw.get(&format!("{x}?APPTOKEN={RO}&APPTOKEN={RO}&ACTION=SCANNERDATA")),
        gw.post_form(&format!("{x}?APPTOKEN={RO}"), "ACTION=TARGETDATA&LIMIT=100&OFFSET=0"),
        gw.post_form(x, &format!("APPTOKEN={RO}&ACTION=TARGETDATA")),
        gw.get(&format!("/opi/rest/outscan/targets?APPTOKEN={RO}")),
        gw.get(&format!("{x}?APPTOKEN={ADMIN}&ACTION=UPDATESUBACCOUNTDATA")),
        gw.send("DELETE", &format!("/opi/rest/anything?APPTOKEN={ADMIN}"), &[], b""),
    ];
    for (i, r) in ok.iter().enumerate() {
        assert_eq!(r.status, 200, "case {i}: {}", r.text());
        assert!(r.text().contains("<SUCCESS>true</SUCCESS>"), "case {i}");
    }
    assert_eq!(up.count(), ok.len());
}

#[test]
fn python_client_style_post_passes_or_gets_action_not_allowed() {
    // APPTOKEN in the query, ACTION and the other fields in a form body, as the
    // widely used Python XMLAPI clients send them.
    let (up, gw) = setup();
    let headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("User-Agent", "python-requests/2.31.0"),
        ("Accept", "*/*"),
    ];
    let target = format!("/opi/XMLAPI?APPTOKEN={RO}");
    let r = gw.send("POST", &target, &headers, b"ACTION=TARGETDATA&LIMIT=1000&OFFSET=0&JSON=1");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, b"ACTION=TARGETDATA&LIMIT=1000&OFFSET=0&JSON=1");
    let r = gw.send("POST", &target, &headers, b"ACTION=UPDATETARGETDATA&XMLDATA=%3Cx%2F%3E");
    assert_eq!(r.status, 403);
    assert_eq!(r.errorcode().as_deref(), Some("ACTION_NOT_ALLOWED"));
    // JSON=1 in the form body shapes the refusal as JSON too.
    let r = gw.send("POST", &target, &headers, b"ACTION=UPDATETARGETDATA&JSON=1");
    assert_eq!(r.status, 403);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    assert_eq!(v["data"]["errorCode"], "ACTION_NOT_ALLOWED");
    assert_eq!(up.count(), 1);
}

#[test]
fn denials_are_json_with_json_1_and_echo_nothing() {
    let (_up, gw) = setup();
    let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={UNKNOWN}&ACTION=%3Cscript%3E&JSON=1"));
    assert_eq!(r.status, 401);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["success"], false);
    assert_eq!(v["data"]["errorCode"], "TOKEN_UNKNOWN");
    assert!(v["data"]["errorMessage"].is_string());
    let missing = gw.get("/opi/XMLAPI?JSON=1");
    let m: serde_json::Value = serde_json::from_slice(&missing.body).unwrap();
    // An unknown token reads like a missing one, but for the code.
    assert_eq!(m["data"]["errorMessage"], v["data"]["errorMessage"]);
    assert!(!r.text().contains(UNKNOWN) && !r.text().contains("script"));
    let xml = gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=%3Cb%3E"));
    assert_eq!(xml.status, 403);
    assert!(xml.header("content-type").unwrap().starts_with("text/xml"));
    assert!(!xml.text().contains("<b>") && !xml.text().contains(RO));
}

#[test]
fn forwarded_for_from_a_trusted_proxy_decides_the_client() {
    let up = MockUpstream::start();
    let gw = Gateway::builder(&up.url(), &standard_tokens().render())
        .extra("[client_ip]\ntrusted_proxies = [\"127.0.0.0/8\"]")
        .start();
    let t = format!("/opi/XMLAPI?APPTOKEN={ELSEWHERE}");
    // The restriction allows 192.0.2.0/24: only the rightmost untrusted hop counts.
    let r = gw.send("GET", &t, &[("X-Forwarded-For", "192.0.2.9")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-forwarded-for"), Some("192.0.2.9, 127.0.0.1"));
    let r = gw.send("GET", &t, &[("X-Forwarded-For", "192.0.2.9, 198.51.100.1")], b"");
    assert_eq!(r.status, 403);
    let r = gw.send("GET", &t, &[("X-Forwarded-For", "::ffff:192.0.2.9")], b"");
    assert_eq!(r.status, 200);
    let r = gw.send("GET", &t, &[("X-Forwarded-For", "192.0.2.9, not-an-ip")], b"");
    assert_eq!((r.status, r.errorcode().as_deref()), (403, Some("IP_NOT_ALLOWED")));
    assert_eq!(up.count(), 2);
}

#[test]
fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let (up, gw) = setup();
    let r = gw.send("GET", &format!("/opi/XMLAPI?APPTOKEN={ELSEWHERE}"), &[("X-Forwarded-For", "192.0.2.9")], b"");
    assert_eq!((r.status, r.errorcode().as_deref()), (403, Some("IP_NOT_ALLOWED")));
    let r = gw.send("GET", &format!("/opi/XMLAPI?APPTOKEN={RO}"), &[("X-Forwarded-For", "192.0.2.9")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers_named("x-forwarded-for"), vec!["127.0.0.1"]);
}

#[test]
fn bodies_read_to_decide_share_a_bounded_budget() {
    // inspect_body_bytes = 1 KiB: room for 64 such bodies at once.
    let up = MockUpstream::start();
    let gw = Gateway::builder(&up.url(), &standard_tokens().render())
        .extra("[limits]\ninspect_body_bytes = 1024\nbody_idle_timeout = \"5s\"")
        .start();
    use std::io::Write;
    // 64 clients announce a 1000-byte form body and send only part of it.
    let mut holders = Vec::new();
    for _ in 0..64 {
        let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
        write!(
            s,
            "POST /opi/XMLAPI?APPTOKEN={RO} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nACTION=TARGETDATA&PAD="
        )
        .unwrap();
        holders.push(s);
    }
    // Once the gateway has taken them in, the budget is full: the next body
    // waits (up to a second), then gets a clear 503.
    let busy = poll(std::time::Duration::from_secs(10), || {
        let r = gw.post_form(&format!("/opi/XMLAPI?APPTOKEN={RO}"), "ACTION=TARGETDATA");
        (r.status == 503).then_some(r)
    })
    .expect("the budget never filled");
    assert_eq!(busy.errorcode().as_deref(), Some("GATEWAY_BUSY"), "{}", busy.text());
    // GETs, which read no body, are not held up.
    assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA")).status, 200);
    // The stalled bodies time out and give their room back.
    drop(holders);
    let ok = poll(std::time::Duration::from_secs(10), || {
        (gw.post_form(&format!("/opi/XMLAPI?APPTOKEN={RO}"), "ACTION=TARGETDATA").status == 200).then_some(())
    });
    assert!(ok.is_some(), "the budget was not given back");
}
