//! The command line: `check` and `run` on good and broken files.

use crate::harness::*;

fn write_config(dir: &std::path::Path, gateway: &str, tokens: &str) -> String {
    std::fs::write(dir.join("gateway.toml"), gateway).unwrap();
    std::fs::write(dir.join("tokens.toml"), tokens).unwrap();
    dir.join("gateway.toml").to_string_lossy().into_owned()
}

const GATEWAY: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
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
        + "[[token]]\nname = \"plain\"\nactive = true\ntoken = \"s3cr3t\"\nip_restriction = []\naccess_right = \"admin\"\n\
                           expires = \"never\"\n";
    let cfg = write_config(dir.path(), GATEWAY, &tokens);
    let (code, out, err) = run_cli(&["check", "-c", &cfg], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("6 tokens (5 active), 2 access rights"), "{out}");
    assert!(err.contains("warning:") && err.contains("plain text"), "{err}");
    assert!(!err.contains("s3cr3t") && !out.contains("s3cr3t"));
}

#[test]
fn check_reports_every_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = GATEWAY.replace("[admin]", "[limits]\nmax_conections = 5\n[admin]");
    let cfg = write_config(dir.path(), &gateway, "");
    let (code, _out, err) = run_cli(&["check", "-c", &cfg], None);
    assert_eq!(code, 1);
    assert!(err.contains("gateway.toml:8:1: unknown field `max_conections`"), "{err}");

    let tokens = "[access_rights.r]\n\n[[token]]\nname = \"a\"\nactive = true\ntoken_sha256 = \"00\"\n\
                  ip_restriction = [\"300.1.1.1\"]\naccess_right = \"r\"\nexpires = \"never\"\n\n[[token]]\nname = \"b\"\nactive = true\n\
                  token = \"x\"\nip_restrictions = []\naccess_right = \"r\"\n";
    let cfg = write_config(dir.path(), GATEWAY, tokens);
    let (code, _out, err) = run_cli(&["check", "-c", &cfg], None);
    assert_eq!(code, 1);
    assert!(err.contains("tokens.toml:6:16: `token_sha256` must be 64 hex digits"), "{err}");
    assert!(err.contains("tokens.toml:7:19: \"300.1.1.1\" is not an IP address or CIDR"), "{err}");
    assert!(err.contains("tokens.toml:15:1: unknown field `ip_restrictions`"), "{err}");
    assert!(err.contains("(3 errors)"), "{err}");
}

#[test]
fn run_with_an_invalid_token_file_prints_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let tokens =
        "[[token]]\nname = \"a\"\nactive = true\ntoken = \"x\"\nip_restriction = []\naccess_right = \"nope\"\n\
         expires = \"never\"\n[x]\n";
    let cfg = write_config(dir.path(), GATEWAY, tokens);
    let (code, _out, err) = run_cli(&["run", "-c", &cfg], None);
    assert_eq!(code, 1);
    assert!(err.contains("tokens.toml:6:16: access right `nope` is not defined"), "{err}");
    assert!(err.contains("tokens.toml:8:2: unknown key `x`"), "{err}");
}

#[test]
fn token_new_adds_a_token_the_running_gateway_accepts() {
    let up = MockUpstream::start();
    let before = "# operators' notes stay\n".to_string() + &standard_tokens().render();
    let gw = Gateway::start(&up.url(), &before);
    let cfg = gw.path("gateway.toml").to_string_lossy().into_owned();
    let (code, out, err) = run_cli(
        &["token", "new", "-c", &cfg, "--name", "fresh", "--access-right", "read-only", "--ip", "127.0.0.0/8"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)), "{token}");
    let after = std::fs::read_to_string(gw.path("tokens.toml")).unwrap();
    assert!(after.starts_with(&before), "the rest of the file was disturbed");
    assert!(after.contains(&sha256_hex(token)) && !after.contains(token));
    assert!(!err.contains(token));
    let ok = poll(std::time::Duration::from_secs(5), || {
        (gw.get(&format!("/opi/XMLAPI?APPTOKEN={token}&ACTION=TARGETDATA")).status == 200).then_some(())
    });
    assert!(ok.is_some(), "the running gateway did not pick up the new token");
    // A second token gets a different secret.
    let (code2, out2, err2) =
        run_cli(&["token", "new", "-c", &cfg, "--name", "fresh2", "--access-right", "admin"], None);
    assert_eq!(code2, 0, "{err2}");
    assert_eq!(out2.trim().len(), 64, "{out2}");
    assert_ne!(out2.trim(), token);
}

#[test]
fn token_new_refuses_what_would_make_the_file_invalid_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), GATEWAY, &standard_tokens().render());
    let before = std::fs::read_to_string(dir.path().join("tokens.toml")).unwrap();
    for args in [
        vec!["--name", "reader", "--access-right", "read-only"],
        vec!["--name", "x", "--access-right", "no-such-right"],
        vec!["--name", "x", "--access-right", "admin", "--ip", "10.0.0.0/99"],
        vec!["--name", "x", "--access-right", "admin", "--expires", "tomorrow"],
    ] {
        let mut full = vec!["token", "new", "-c", &cfg];
        full.extend(args.iter());
        let (code, out, err) = run_cli(&full, None);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "a token was printed although none was added: {out}");
    }
    assert_eq!(std::fs::read_to_string(dir.path().join("tokens.toml")).unwrap(), before);
}

#[test]
fn token_hash_and_list() {
    let (code, out, _) = run_cli(&["token", "hash"], Some(&format!("{RO}\n")));
    assert_eq!(code, 0);
    assert_eq!(out.trim(), sha256_hex(RO));

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), GATEWAY, &standard_tokens().render());
    let (code, out, err) = run_cli(&["token", "list", "-c", &cfg], None);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[0].starts_with("NAME"));
    assert!(lines.iter().any(|l| l.starts_with("sleeper") && l.contains(" no ")), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("old") && l.contains("expired")), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("elsewhere") && l.contains("192.0.2.0/24,2001:db8::/32")), "{out}");
    for secret in [RO, ADMIN, INACTIVE, EXPIRED, ELSEWHERE] {
        assert!(!out.contains(secret) && !out.contains(&sha256_hex(secret)));
    }
}
