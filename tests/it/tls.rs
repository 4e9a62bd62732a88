//! TLS on both sides: the proxy listener with `[server.tls]`, and an upstream
//! with its own CA (`upstream.ca_file`), as HIABs often have.

use crate::harness::tls::{https_get, self_signed};
use crate::harness::*;

#[test]
fn the_proxy_serves_https_with_the_configured_certificate() {
    let up = MockUpstream::start();
    let (cert, key) = self_signed(&["gateway.test"]);
    let gw = {
        let dir_cert = tempfile::NamedTempFile::new().unwrap();
        let dir_key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(dir_cert.path(), &cert).unwrap();
        std::fs::write(dir_key.path(), &key).unwrap();
        let gw = Gateway::builder(&up.url(), &standard_tokens().render())
            .extra(&format!("[server.tls]\ncert = {:?}\nkey = {:?}\n", dir_cert.path(), dir_key.path()))
            .start();
        // The files are read at start; the gateway does not need them after.
        gw
    };
    let r = https_get(gw.addr, &cert, "gateway.test", &format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 1);
    let r = https_get(gw.addr, &cert, "gateway.test", "/opi/XMLAPI?ACTION=TARGETDATA");
    assert_eq!(r.errorcode().as_deref(), Some("TOKEN_MISSING"));
}

#[test]
fn an_upstream_with_its_own_ca_is_trusted_only_through_ca_file() {
    let (cert, key) = self_signed(&["localhost"]);
    let up = MockUpstream::start_tls(&cert, &key);
    let url = format!("https://localhost:{}", up.addr.port());

    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &cert).unwrap();
    let trusted = Gateway::builder(&url, &standard_tokens().render())
        .extra_upstream(&format!("ca_file = {:?}", ca.path()))
        .start();
    let r = trusted.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), trusted.log().join("\n"));
    assert_eq!(up.last().query(), format!("APPTOKEN={UPSTREAM_TOKEN}&ACTION=TARGETDATA"));

    let untrusted = Gateway::start(&url, &standard_tokens().render());
    let r = untrusted.get(&format!("/opi/XMLAPI?APPTOKEN={RO}&ACTION=TARGETDATA"));
    assert_eq!((r.status, r.errorcode().as_deref()), (502, Some("UPSTREAM_TLS")), "{}", untrusted.log().join("\n"));
    assert_eq!(up.count(), 1);
}

#[test]
fn check_fails_when_the_tls_files_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.toml"), standard_tokens().render()).unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"missing.pem\"\nkey = \"missing-key.pem\"\n\
         [upstream]\nurl = \"https://127.0.0.1:9\"\nca_file = \"no-ca.pem\"\n[tokens]\nfile = \"tokens.toml\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("gateway.toml");
    let (code, _out, err) = run_cli(&["check", "-c", cfg.to_str().unwrap()], None);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read server.tls.cert"), "{err}");
    assert!(err.contains("cannot read upstream.ca_file"), "{err}");
}

// The `[server.tls]` pair is followed like the token file (interface.md §7).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::tls::{der_of, https_on, peer_cert, tls_connect};

struct TlsGateway {
    gw: Gateway,
    _up: MockUpstream,
    dir: tempfile::TempDir,
}

impl TlsGateway {
    fn start(cert: &str, key: &str) -> Self {
        let up = MockUpstream::start();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), key).unwrap();
        let gw = Gateway::builder(&up.url(), &standard_tokens().render())
            .extra(&format!(
                "[server.tls]\ncert = {:?}\nkey = {:?}\n",
                dir.path().join("server.pem"),
                dir.path().join("server-key.pem")
            ))
            .start();
        Self { gw, _up: up, dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// The certificate a new handshake gets, trusting `ca`.
    fn served(&self, ca: &str) -> Option<Vec<u8>> {
        tls_connect(self.gw.addr, ca, "gateway.test").ok().map(|s| peer_cert(&s))
    }
    fn metric(&self, line_start: &str) -> u64 {
        let m = request(self.gw.admin, "GET", "/metrics", &[], b"").text();
        m.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

fn rename_save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const SUCCESS: &str = "tokengate_tls_reloads_total{outcome=\"success\"}";
const FAILURE: &str = "tokengate_tls_reloads_total{outcome=\"failure\"}";
const ALLOWED: &str =
    "/opi/XMLAPI?APPTOKEN=A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1&ACTION=TARGETDATA";

#[test]
fn a_rename_saved_pair_is_served_to_the_next_handshake_and_open_connections_stay() {
    let (c1, k1) = self_signed(&["gateway.test"]);
    let (c2, k2) = self_signed(&["gateway.test"]);
    let t = TlsGateway::start(&c1, &k1);
    assert_eq!(t.served(&c1), Some(der_of(&c1)));
    assert_eq!(t.metric(SUCCESS), 1, "the load at start counts");
    // A kept-alive connection made with the first pair.
    let mut open = tls_connect(t.gw.addr, &c1, "gateway.test").unwrap();
    assert_eq!(https_on(&mut open, ALLOWED, "gateway.test").status, 200);

    // Key first, then certificate, each saved by rename, as a renewal does.
    rename_save(&t.path("server-key.pem"), &k2);
    rename_save(&t.path("server.pem"), &c2);
    let served = poll(Duration::from_secs(2), || (t.served(&c2) == Some(der_of(&c2))).then_some(()));
    assert!(served.is_some(), "the new pair was not served:\n{}", t.gw.log().join("\n"));
    assert!(t.served(&c1).is_none(), "a handshake still got the old certificate");
    t.gw.wait_log("the reload", |l| l.contains("TLS certificate reloaded"));

    // The connection made before keeps working, with the pair it was made with.
    assert_eq!(https_on(&mut open, ALLOWED, "gateway.test").status, 200);
    assert_eq!(peer_cert(&open), der_of(&c1));
}

#[test]
fn a_pair_that_does_not_load_is_refused_logged_counted_and_the_old_one_keeps_serving() {
    let (c1, k1) = self_signed(&["gateway.test"]);
    let (c2, _k2) = self_signed(&["gateway.test"]);
    let t = TlsGateway::start(&c1, &k1);

    // A certificate whose key is not the one beside it.
    rename_save(&t.path("server.pem"), &c2);
    assert!(poll(Duration::from_secs(3), || (t.metric(FAILURE) >= 1).then_some(())).is_some(), "not counted");
    t.gw.wait_log("the refusal", |l| l.contains("TLS certificate not applied") && l.contains("does not go with"));
    assert_eq!(t.served(&c1), Some(der_of(&c1)), "the old pair stopped serving");
    assert_eq!(t.metric(SUCCESS), 1);

    // A half-written certificate (written in place, cut in the middle).
    let failures = t.metric(FAILURE);
    std::fs::write(t.path("server.pem"), &c1[..c1.len() / 2]).unwrap();
    assert!(poll(Duration::from_secs(3), || (t.metric(FAILURE) > failures).then_some(())).is_some());
    assert_eq!(t.served(&c1), Some(der_of(&c1)));

    // An unreadable one: a folder where the file should be.
    let failures = t.metric(FAILURE);
    std::fs::remove_file(t.path("server.pem")).unwrap();
    std::fs::create_dir(t.path("server.pem")).unwrap();
    let _ = std::process::Command::new("kill").args(["-HUP", &t.gw.pid().to_string()]).status();
    assert!(poll(Duration::from_secs(3), || (t.metric(FAILURE) > failures).then_some(())).is_some());
    t.gw.wait_log("the reason", |l| l.contains("TLS certificate not applied") && l.contains("not a regular file"));
    assert_eq!(t.served(&c1), Some(der_of(&c1)));

    // The good pair again wins.
    std::fs::remove_dir(t.path("server.pem")).unwrap();
    rename_save(&t.path("server.pem"), &c1);
    assert!(poll(Duration::from_secs(3), || (t.metric(SUCCESS) == 2).then_some(())).is_some());
    assert_eq!(t.served(&c1), Some(der_of(&c1)));
    // No log line quotes the key.
    let key_line = k1.lines().nth(1).unwrap();
    assert!(t.gw.log().iter().all(|l| !l.contains(key_line)));
}

#[test]
fn sighup_reloads_the_pair_at_once_and_the_token_file_too() {
    let (c1, k1) = self_signed(&["gateway.test"]);
    let t = TlsGateway::start(&c1, &k1);
    assert_eq!(t.metric(SUCCESS), 1);
    let tokens_before = t.metric("tokengate_reloads_total{outcome=\"success\"}");
    let ok = std::process::Command::new("kill").args(["-HUP", &t.gw.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    // Nothing changed on disk: only the signal can cause these reloads.
    // Both followers get it (tokio delivers a signal to every listener).
    let both = poll(Duration::from_secs(3), || {
        (t.metric(SUCCESS) == 2 && t.metric("tokengate_reloads_total{outcome=\"success\"}") == tokens_before + 1)
            .then_some(())
    });
    assert!(both.is_some(), "SIGHUP did not reload both:\n{}", t.gw.log().join("\n"));
    assert_eq!(t.served(&c1), Some(der_of(&c1)));
}
