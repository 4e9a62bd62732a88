//! The admin listener: health, readiness, metrics and the token view.

use crate::harness::*;

#[test]
fn health_and_readiness() {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    assert_eq!(request(gw.admin, "GET", "/healthz", &[], b"").status, 200);
    let ready = poll(std::time::Duration::from_secs(10), || {
        (request(gw.admin, "GET", "/readyz", &[], b"").status == 200).then_some(())
    });
    assert!(ready.is_some(), "/readyz never became ready");
    // The admin endpoints are not on the proxy port.
    assert_eq!(gw.get("/metrics").status, 401);

    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gw = Gateway::start(&format!("http://{dead}"), &standard_tokens().render());
    assert_eq!(request(gw.admin, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(request(gw.admin, "GET", "/readyz", &[], b"").status, 503);
}

#[test]
fn metrics_count_by_decision_reason_and_token() {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=REMOVETARGETDATA"));
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={UNKNOWN}"));
    let m = request(gw.admin, "GET", "/metrics", &[], b"").text();
    for want in [
        "tokengate_requests_total{decision=\"allowed\",reason=\"ok\",token=\"reader\"} 1",
        "tokengate_requests_total{decision=\"denied\",reason=\"ACTION_NOT_ALLOWED\",token=\"reader\"} 1",
        "tokengate_requests_total{decision=\"denied\",reason=\"TOKEN_UNKNOWN\",token=\"\"} 1",
        "tokengate_reloads_total{outcome=\"success\"} 1",
        "tokengate_tokens_loaded 5",
        "tokengate_upstream_duration_seconds_count 1\n",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }
    for secret in [RO, UNKNOWN] {
        assert!(!m.contains(secret) && !m.contains(&sha256_hex(secret)));
    }
}

#[test]
fn tokens_view_shows_use_and_never_a_secret() {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
    let r = request(gw.admin, "GET", "/tokens", &[], b"");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let list = v["tokens"].as_array().unwrap();
    assert_eq!(list.len(), 5);
    let reader = list.iter().find(|t| t["name"] == "reader").unwrap();
    assert_eq!(reader["access_right"], "read-only");
    assert_eq!(reader["active"], true);
    assert_eq!(reader["last_client_ip"], "127.0.0.1");
    assert!(reader["last_use"].as_str().unwrap().starts_with("20"));
    assert_eq!(reader["requests"]["allowed"], 1);
    let old = list.iter().find(|t| t["name"] == "old").unwrap();
    assert_eq!(old["expires"], "2020-01-01T00:00:00Z");
    assert!(old["last_use"].is_null());
    let text = r.text();
    for secret in [RO, ADMIN, INACTIVE, EXPIRED, ELSEWHERE] {
        assert!(!text.contains(secret) && !text.contains(&sha256_hex(secret)));
    }
}

#[test]
fn use_counts_and_last_client_outlive_a_reload() {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA")).status, 200);
    assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=REMOVETARGETDATA")).status, 403);
    // A new table: one token more, rename-saved as an editor does.
    const NEW: &str = "5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A";
    let path = gw.path("tokens.toml");
    let tmp = gw.path("tokens.toml.new");
    std::fs::write(&tmp, standard_tokens().token(TokenSpec::new("newcomer", NEW, "admin")).render()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let loaded = poll(std::time::Duration::from_secs(5), || {
        (gw.get(&format!("/opi/XMLAPI?APPTOKEN={NEW}")).status == 200).then_some(())
    });
    assert!(loaded.is_some(), "the new table was not loaded");
    let v: serde_json::Value = serde_json::from_slice(&request(gw.admin, "GET", "/tokens", &[], b"").body).unwrap();
    let reader = v["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "reader").unwrap().clone();
    assert_eq!(reader["requests"]["allowed"], 1, "{reader}");
    assert_eq!(reader["requests"]["ACTION_NOT_ALLOWED"], 1, "{reader}");
    assert_eq!(reader["last_client_ip"], "127.0.0.1");
    assert!(reader["last_use"].is_string());
}
