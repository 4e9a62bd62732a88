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
