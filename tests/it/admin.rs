//! The admin listener: health, readiness, metrics and the token view.

use std::time::Duration;

use crate::harness::client::send_raw;
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

/// One raw HTTP/1.1 request to the admin listener with this Host line
/// (`None`: no Host header, as HTTP/1.0 allows).
fn admin_with_host(gw: &Gateway, method: &str, path: &str, host: Option<&str>) -> Response {
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let version = if host.is_empty() { "HTTP/1.0" } else { "HTTP/1.1" };
    send_raw(gw.admin, format!("{method} {path} {version}\r\n{host}Connection: close\r\n\r\n").as_bytes())
}

#[test]
fn the_admin_listener_answers_only_to_its_own_host() {
    let up = MockUpstream::start();
    let gw = Gateway::builder(&up.url(), &standard_tokens().render())
        .extra_admin("hosts = [\"tokengate.internal\"]")
        .start();
    let port = gw.admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
        "LocalHost".into(),
        format!("tokengate.internal:{port}"),
        "TOKENGATE.internal.".into(),
    ] {
        let r = admin_with_host(&gw, "GET", "/tokens", Some(&host));
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
    // A page whose name was rebound to this address sends its own name.
    for host in [Some(format!("attacker.example:{port}")), Some("tokengate.internal.attacker.example".into()), None] {
        for path in ["/tokens", "/metrics", "/healthz", "/nope"] {
            let r = admin_with_host(&gw, "GET", path, host.as_deref());
            assert_eq!(r.status, 421, "{host:?} {path}");
            assert!(r.text().contains("answers to an IP address, localhost or a name of admin.hosts"), "{}", r.text());
            assert!(!r.text().contains("reader"), "a refused answer showed a token name");
        }
    }
}

#[test]
fn other_methods_get_405_with_allow() {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let r = request(gw.admin, method, "/tokens", &[], b"");
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method}");
    }
    let r = request(gw.admin, "HEAD", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
}

/// A token file of `n` tokens with long names, so its `/tokens` JSON is
/// large (about 200 bytes a token).
fn many_tokens(n: usize) -> String {
    let mut f = TokenFile::new().right("read-only", &["TARGETDATA"], &[]);
    for i in 0..n {
        let spec = TokenSpec::new(&format!("token-{i:07}-{}", "n".repeat(90)), &format!("{i:064X}"), "read-only")
            .ips(&["10.0.0.0/8"]);
        f = f.token(spec);
    }
    f.render()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets the peak resident size (VmHWM) to the resident size now.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// GETs `/tokens`, reads it whole; how much the gateway's peak resident
/// size grew over its resident size before, in KiB, and the answer.
fn tokens_peak_growth(gw: &Gateway) -> (u64, Response) {
    reset_peak(gw.pid());
    let before = status_kib(gw.pid(), "VmRSS:");
    let r = request(gw.admin, "GET", "/tokens", &[], b"");
    let peak = status_kib(gw.pid(), "VmHWM:");
    (peak.saturating_sub(before), r)
}

fn check_tokens_json(r: &Response, n: usize) {
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("whole, valid JSON");
    let list = v["tokens"].as_array().unwrap();
    assert_eq!(list.len(), n);
    assert_eq!(list[n - 1]["name"], format!("token-{:07}-{}", n - 1, "n".repeat(90)));
    assert_eq!(list[0]["ip_restriction"][0], "10.0.0.0/8");
}

#[test]
fn tokens_streams_in_bounded_memory_and_at_most_two_at_once() {
    const N: usize = 100_000;
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &many_tokens(N));
    let (growth, r) = tokens_peak_growth(&gw);
    check_tokens_json(&r, N);
    // About 20 MB of JSON; the whole of it in memory at once was 400 MB.
    assert!(r.body.len() > 15 << 20, "{} bytes", r.body.len());
    assert!(growth < 16 * 1024, "the peak grew by {growth} KiB for one /tokens");

    // Two clients that take nothing hold both slots; a third gets 503.
    use std::io::{Read, Write};
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(gw.admin).unwrap();
            write!(s, "GET /tokens HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
            // Its answer has begun: it holds a slot.
            let mut head = [0u8; 12];
            s.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 200");
            s
        })
        .collect();
    let busy = poll(Duration::from_secs(5), || {
        let r = request(gw.admin, "GET", "/tokens", &[], b"");
        (r.status == 503).then_some(r)
    })
    .expect("a third /tokens was not refused");
    assert!(busy.text().contains("/tokens answers are being sent already"), "{}", busy.text());
    assert_eq!(busy.header("retry-after"), Some("1"));
    // Every other endpoint still answers.
    assert_eq!(request(gw.admin, "GET", "/healthz", &[], b"").status, 200);
    // Clients that go away give their slots back.
    drop(stuck);
    let served = poll(Duration::from_secs(10), || {
        let r = request(gw.admin, "GET", "/tokens", &[], b"");
        (r.status == 200).then_some(r)
    })
    .expect("the slots were not given back");
    check_tokens_json(&served, N);
}

/// The measurement of issue 12 point 5 at 1,000,000 tokens (a 300 MB token
/// file; about a minute): `cargo test --test it -- --ignored
/// tokens_at_a_million --nocapture` prints the figure.
#[test]
#[ignore]
fn tokens_at_a_million_tokens_grows_the_peak_by_less_than_64_mib() {
    const N: usize = 1_000_000;
    let up = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(&path, many_tokens(N)).unwrap();
    let gw = Gateway::builder(&up.url(), "").tokens_path(&path).start();
    let rss = status_kib(gw.pid(), "VmRSS:");
    let (growth, r) = tokens_peak_growth(&gw);
    check_tokens_json(&r, N);
    println!(
        "/tokens at {N} tokens: {} bytes of JSON; resident before {rss} KiB; peak grew by {growth} KiB ({:.1} MiB)",
        r.body.len(),
        growth as f64 / 1024.0
    );
    assert!(growth < 64 * 1024, "the peak grew by {growth} KiB");
}
