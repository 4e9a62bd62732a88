//! The command line: `check` and `run` on good and broken files.

use crate::harness::*;

fn write_config(dir: &std::path::Path, gateway: &str, tokens: &str) -> String {
    std::fs::write(dir.join("gateway.toml"), gateway).unwrap();
    std::fs::write(dir.join("tokens.toml"), tokens).unwrap();
    dir.join("gateway.toml").to_string_lossy().into_owned()
}

const GATEWAY: &str =
    "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
                       [tokens]\nfile = \"tokens.toml\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";

#[test]
fn check_accepts_the_shipped_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml");
    let (code, out, err) = run_cli(&["check", "-c", shipped], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok"), "{out}");
}

#[test]
fn check_summarises_a_valid_config_and_warns_on_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = standard_tokens().render()
        + "[[token]]\nname = \"plain\"\nactive = true\ntoken = \"s3cr3t\"\nip_restriction = []\naccess_right = \"admin\"\n";
    let cfg = write_config(dir.path(), GATEWAY, &tokens);
    let (code, out, err) = run_cli(&["check", "-c", &cfg], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("6 tokens (5 active), 2 access rights"),
        "{out}"
    );
    assert!(
        err.contains("warning:") && err.contains("plain text"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t") && !out.contains("s3cr3t"));
}

#[test]
fn check_reports_every_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = GATEWAY.replace("[admin]", "[limits]\nmax_conections = 5\n[admin]");
    let cfg = write_config(dir.path(), &gateway, "");
    let (code, _out, err) = run_cli(&["check", "-c", &cfg], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("gateway.toml:8:1: unknown field `max_conections`"),
        "{err}"
    );

    let tokens = "[access_rights.r]\n\n[[token]]\nname = \"a\"\nactive = true\ntoken_sha256 = \"00\"\n\
                  ip_restriction = [\"300.1.1.1\"]\naccess_right = \"r\"\n\n[[token]]\nname = \"b\"\nactive = true\n\
                  token = \"x\"\nip_restrictions = []\naccess_right = \"r\"\n";
    let cfg = write_config(dir.path(), GATEWAY, tokens);
    let (code, _out, err) = run_cli(&["check", "-c", &cfg], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("tokens.toml:6:16: `token_sha256` must be 64 hex digits"),
        "{err}"
    );
    assert!(
        err.contains("tokens.toml:7:19: \"300.1.1.1\" is not an IP address or CIDR"),
        "{err}"
    );
    assert!(
        err.contains("tokens.toml:14:1: unknown field `ip_restrictions`"),
        "{err}"
    );
    assert!(err.contains("(3 errors)"), "{err}");
}

#[test]
fn run_with_an_invalid_token_file_prints_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = "[[token]]\nname = \"a\"\nactive = true\ntoken = \"x\"\nip_restriction = []\naccess_right = \"nope\"\n[x]\n";
    let cfg = write_config(dir.path(), GATEWAY, tokens);
    let (code, _out, err) = run_cli(&["run", "-c", &cfg], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("tokens.toml:6:16: access right `nope` is not defined"),
        "{err}"
    );
    assert!(err.contains("tokens.toml:7:2: unknown key `x`"), "{err}");
}
