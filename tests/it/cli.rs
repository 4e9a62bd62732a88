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
fn check_and_the_load_warn_about_each_right_naming_a_credential_minting_call() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = "[access_rights.everything]\nactions = [\"*\"]\nroutes = [\"* /*\"]\n\n\
                  [access_rights.minter]\nactions = [\"GETRESTTOKEN\"]\nroutes = [\"POST /opi/rest/auth/login\"]\n";
    let cfg = write_config(dir.path(), GATEWAY, tokens);
    let (code, out, err) = run_cli(&["check", "-c", &cfg], None);
    assert_eq!(code, 0, "a warning, not an error: {out}{err}");
    assert!(
        err.contains("warning: ") && err.contains("tokens.toml:6:12: access right `minter` names GETRESTTOKEN"),
        "{err}"
    );
    assert!(err.contains("tokens.toml:7:11: access right `minter` allows `POST /opi/rest/auth/login`"), "{err}");
    assert!(!err.contains("`everything`"), "\"*\" does not cover them: {err}");

    let gw = Gateway::start("http://127.0.0.1:9", tokens);
    let line = gw.wait_log("the load's warning", |l| l.contains("names GETRESTTOKEN"));
    assert!(line.contains("WARN") && line.contains("tokens.toml:6:12:"), "{line}");
    gw.wait_log("the route's warning", |l| l.contains("tokens.toml:7:11: access right `minter` allows"));
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

use std::path::Path;
use std::time::{Duration, Instant};

fn cfg_in(dir: &Path, tokens_extra: &str) -> String {
    let gateway = GATEWAY.replace("file = \"tokens.toml\"\n", &format!("file = \"tokens.toml\"\n{tokens_extra}"));
    std::fs::write(dir.join("gateway.toml"), gateway).unwrap();
    dir.join("gateway.toml").to_string_lossy().into_owned()
}

#[test]
fn check_and_the_token_commands_refuse_what_is_not_a_small_regular_file_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg_in(dir.path(), "max_file_bytes = 4096\n");
    let tokens = dir.path().join("tokens.toml");
    type Make = Box<dyn Fn(&Path)>;
    let cases: [(&str, Make); 3] = [
        (
            "it is a FIFO, not a regular file",
            Box::new(|p: &Path| assert!(std::process::Command::new("mkfifo").arg(p).status().unwrap().success())),
        ),
        ("it is a character device", Box::new(|p: &Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap())),
        (
            "larger than tokens.max_file_bytes (4096)",
            Box::new(|p: &Path| std::fs::File::create(p).unwrap().set_len(1 << 30).unwrap()),
        ),
    ];
    for (why, make) in cases {
        let _ = std::fs::remove_file(&tokens);
        make(&tokens);
        for args in [
            vec!["check", "-c", &cfg],
            vec!["token", "list", "-c", &cfg],
            vec!["token", "new", "-c", &cfg, "--name", "n", "--access-right", "admin"],
            vec!["token", "rotate", "-c", &cfg, "--name", "reader"],
        ] {
            let t = Instant::now();
            let (code, out, err) = run_cli_within(&args, Duration::from_secs(20));
            assert_eq!(code, 1, "{args:?} after {:?}: {out}{err}", t.elapsed());
            assert!(err.contains("cannot read the token file: ") && err.contains(why), "{args:?}: {err}");
            assert!(out.is_empty() || args[0] == "check", "{args:?} printed {out}");
        }
    }
}

#[test]
fn check_says_where_a_secret_is_wrong_but_never_quotes_it() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "9081726354453627";
    let tokens = standard_tokens().render().replacen("token_sha256 = \"", &format!("token = {secret}\n#\""), 1);
    let cfg = write_config(dir.path(), GATEWAY, &tokens);
    let (code, out, err) = run_cli(&["check", "-c", &cfg], None);
    assert_eq!(code, 1);
    assert!(err.contains("tokens.toml:12:9: `token` must be a string in quotes (its value is not shown)"), "{err}");
    assert!(!err.contains(secret) && !out.contains(secret), "{err}");

    let credential = "CAFEBABE0123456789CAFEBABE0123456789CAFEBABE0123456789CAFEBABE01";
    for (upstream, want) in [
        (
            format!("url = \"http://127.0.0.1:9\"\napptoken_file = \"{credential}\""),
            "gateway.toml:5:17: cannot read the file named by `apptoken_file`",
        ),
        (
            format!("url = \"https://admin:{credential}@hiab.example\""),
            "gateway.toml:4:7: `upstream.url` must not hold a user",
        ),
        (
            format!("url = \"https://hiab.example/?APPTOKEN={credential}\""),
            "gateway.toml:4:7: `upstream.url` must not have a query",
        ),
    ] {
        let gateway = GATEWAY.replace("url = \"http://127.0.0.1:9\"", &upstream);
        let cfg = write_config(dir.path(), &gateway, &standard_tokens().render());
        let (code, out, err) = run_cli(&["check", "-c", &cfg], None);
        assert_eq!(code, 1, "{out}{err}");
        assert!(err.contains(want), "{err}");
        assert!(!err.contains(credential) && !out.contains(credential), "{err}");
    }
}

#[test]
fn names_with_control_characters_are_refused_and_never_printed_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    // An escape sequence that would retitle the terminal, and a newline.
    let tokens = standard_tokens().render().replace("name = \"reader\"", "name = \"read\\u001b]0;pwned\\u0007er\\n\"");
    let cfg = write_config(dir.path(), GATEWAY, &tokens);
    for args in [vec!["check", "-c", &cfg], vec!["token", "list", "-c", &cfg]] {
        let (code, out, err) = run_cli(&args, None);
        assert_eq!(code, 1, "{args:?}");
        assert!(
            err.contains("tokens.toml:10:8: token name read\\u{1b}]0;pwned\\u{7}er\\u{a} holds the character U+001B"),
            "{err}"
        );
        assert!(!(out.clone() + &err).chars().any(|c| c.is_control() && c != '\n'), "{err:?}");
    }
    let long = "n".repeat(129);
    let cfg =
        write_config(dir.path(), GATEWAY, &standard_tokens().render().replace("\"reader\"", &format!("\"{long}\"")));
    let (code, _out, err) = run_cli(&["check", "-c", &cfg], None);
    assert_eq!(code, 1);
    assert!(err.contains("tokens.toml:10:8: token name is 129 bytes long; at most 128 are allowed"), "{err}");
}

/// A token file of `n` tokens besides the standard ones, for commands that
/// must take long enough to be raced.
fn big_tokens(n: usize) -> String {
    let mut file = standard_tokens();
    for i in 0..n {
        file = file.token(TokenSpec::new(&format!("bulk-{i}"), &format!("bulk-secret-{i}"), "read-only"));
    }
    file.render()
}

#[test]
fn two_token_new_at_once_both_succeed_or_one_fails_cleanly_and_no_token_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), GATEWAY, &big_tokens(3000));
    let mut added = Vec::new();
    for round in 0..4 {
        let runs: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|who| {
                let cfg = cfg.clone();
                let name = format!("round{round}-{who}");
                std::thread::spawn(move || {
                    let r = run_cli_within(
                        &["token", "new", "-c", &cfg, "--name", &name, "--access-right", "admin"],
                        Duration::from_secs(60),
                    );
                    (name, r)
                })
            })
            .collect();
        for run in runs {
            let (name, (code, out, err)) = run.join().unwrap();
            match code {
                0 => added.push((name, out.trim().to_string())),
                1 => assert!(out.is_empty() && err.contains("nothing was changed"), "{name}: {out}{err}"),
                _ => panic!("{name}: exit {code}: {err}"),
            }
        }
    }
    let text = std::fs::read_to_string(dir.path().join("tokens.toml")).unwrap();
    eprintln!("{} of 8 token new succeeded", added.len());
    assert!(added.len() >= 4, "at least one of each pair gets in");
    for (name, token) in &added {
        assert!(text.contains(&format!("name = \"{name}\"")) && text.contains(&sha256_hex(token)), "{name} was lost");
    }
    let (code, _, err) = run_cli(&["check", "-c", &cfg], None);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn token_new_never_undoes_a_revocation_renamed_in_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let base = big_tokens(20_000);
    let cfg = write_config(dir.path(), GATEWAY, &base);
    let path = dir.path().join("tokens.toml");
    let revoked = base.replacen("name = \"reader\"\nactive = true", "name = \"reader\"\nactive = false", 1);
    assert_ne!(revoked, base);
    let rename_in = |text: &str| {
        let tmp = dir.path().join("tokens.toml.edit");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    // How long one run takes on this file, to aim the renames inside it.
    let t = Instant::now();
    let (code, _, err) = run_cli(&["token", "new", "-c", &cfg, "--name", "timing", "--access-right", "admin"], None);
    assert_eq!(code, 0, "{err}");
    let took = t.elapsed();
    let (mut succeeded, mut refused) = (0, 0);
    for i in 0..12 {
        rename_in(&base);
        let delay = took.mul_f64(f64::from(i) / 12.0);
        let renamer = {
            let revoked = revoked.clone();
            let (dir, path) = (dir.path().to_path_buf(), path.clone());
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let tmp = dir.join("tokens.toml.edit");
                std::fs::write(&tmp, &revoked).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            })
        };
        let name = format!("racer-{i}");
        let (code, out, err) = run_cli_within(
            &["token", "new", "-c", &cfg, "--name", &name, "--access-right", "admin"],
            Duration::from_secs(60),
        );
        renamer.join().unwrap();
        match code {
            0 => succeeded += 1,
            1 => {
                assert!(out.is_empty() && err.contains("changed while this command ran"), "{err}");
                refused += 1;
            }
            _ => panic!("exit {code}: {err}"),
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("name = \"reader\"\nactive = false"),
            "iteration {i} (rename after {delay:?} of a {took:?} run): the revocation was undone"
        );
    }
    eprintln!("one run {took:?}; {succeeded} succeeded, {refused} refused (the file changed under them)");
    assert!(refused > 0, "no rename landed inside a run: the test did not race");
}

#[test]
fn token_new_does_not_follow_a_planted_temporary_file_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), GATEWAY, &standard_tokens().render());
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    // The shell plants the link under its own pid, then becomes tokengate
    // (exec keeps the pid): the name token new tries first.
    let script = format!(
        "ln -s {victim} {dir}/.tokens.toml.tokengate-$$.tmp && exec {bin} token new -c {cfg} --name planted --access-right admin",
        victim = victim.display(),
        dir = dir.path().display(),
        bin = bin().display(),
    );
    let out = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    let text = std::fs::read_to_string(dir.path().join("tokens.toml")).unwrap();
    assert!(text.contains(&sha256_hex(&token)));
    let planted = std::fs::read_dir(dir.path()).unwrap().filter_map(Result::ok).any(|e| {
        e.file_name().to_string_lossy().starts_with(".tokens.toml.tokengate-") && e.file_type().unwrap().is_symlink()
    });
    assert!(planted, "the planted link was not there to be avoided");
}

#[test]
fn token_new_keeps_the_files_mode_owner_and_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), GATEWAY, &standard_tokens().render());
    let path = dir.path().join("tokens.toml");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    // As root (as CI runs) the file is handed to another user first, as a
    // gateway's own 0600 file would be.
    let root = std::fs::metadata(dir.path()).unwrap().uid() == 0 && std::env::var("USER").map_or(true, |u| u == "root");
    if root {
        std::os::unix::fs::chown(&path, Some(4321), Some(8765)).unwrap();
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = run_cli(&["token", "new", "-c", &cfg, "--name", "kept", "--access-right", "admin"], None);
    assert_eq!(code, 0, "{err}");
    let m = std::fs::metadata(&path).unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().contains("name = \"kept\""));
    assert_eq!(m.mode() & 0o7777, 0o600);
    if root {
        assert_eq!((m.uid(), m.gid()), (4321, 8765));
    } else {
        eprintln!("not root: the owner and group part is not checked");
    }
}

fn tokens_view(gw: &Gateway) -> serde_json::Value {
    serde_json::from_slice(&request(gw.admin, "GET", "/tokens", &[], b"").body).unwrap()
}

fn reader_of(view: &serde_json::Value) -> serde_json::Value {
    view["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "reader").unwrap().clone()
}

#[test]
fn a_rotated_token_works_with_both_secrets_until_the_old_digest_is_removed() {
    let up = MockUpstream::start();
    let before = "# operators' notes stay\n".to_string() + &standard_tokens().render();
    let gw = Gateway::start(&up.url(), &before);
    let cfg = gw.path("gateway.toml").to_string_lossy().into_owned();
    let path = gw.path("tokens.toml");
    let ask = |token: &str| gw.get(&format!("/opi/XMLAPI?APPTOKEN={token}&ACTION=TARGETDATA"));
    assert_eq!(ask(RO).status, 200);

    let (code, out, err) = run_cli(&["token", "rotate", "-c", &cfg, "--name", "reader"], None);
    assert_eq!(code, 0, "{err}");
    let new = out.trim().to_string();
    assert_eq!(new.len(), 64);
    assert!(!err.contains(&new));
    // Only the digest changed: every other byte is where it was.
    let after = std::fs::read_to_string(&path).unwrap();
    let old_value = format!("token_sha256 = \"{}\"", sha256_hex(RO));
    let new_value = format!("token_sha256 = [\"{}\", \"{}\"]", sha256_hex(&new), sha256_hex(RO));
    assert_eq!(after, before.replace(&old_value, &new_value));

    // Both secrets are the one token `reader`.
    assert!(poll(Duration::from_secs(5), || (ask(&new).status == 200).then_some(())).is_some());
    assert_eq!(ask(RO).status, 200);
    assert_eq!(ask(&new).errorcode(), None);
    let m = request(gw.admin, "GET", "/metrics", &[], b"").text();
    assert!(m.contains("tokengate_requests_total{decision=\"allowed\",reason=\"ok\",token=\"reader\"} 4"), "{m}");
    let reader = reader_of(&tokens_view(&gw));
    let secrets = reader["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 2, "{reader}");
    assert_eq!((secrets[0]["position"].as_u64(), secrets[1]["position"].as_u64()), (Some(0), Some(1)));
    assert!(secrets.iter().all(|s| s["last_use"].is_string()), "{reader}");
    assert!(!tokens_view(&gw).to_string().contains(&sha256_hex(&new)));

    let (code, out, _) = run_cli(&["token", "list", "-c", &cfg], None);
    assert_eq!(code, 0);
    let header = out.lines().next().unwrap().to_string();
    assert!(header.ends_with("SECRETS"), "{out}");
    let row = out.lines().find(|l| l.starts_with("reader")).unwrap();
    assert!(row.ends_with(" 2"), "{out}");

    // The old digest removed: the old secret stops, the new one goes on,
    // and the counters go on under the one name.
    std::fs::write(&path, after.replace(&new_value, &format!("token_sha256 = [\"{}\"]", sha256_hex(&new)))).unwrap();
    let stopped =
        poll(Duration::from_secs(5), || (ask(RO).errorcode().as_deref() == Some("TOKEN_UNKNOWN")).then_some(()));
    assert!(stopped.is_some(), "the old secret still works");
    assert_eq!(ask(&new).status, 200);
    let reader = reader_of(&tokens_view(&gw));
    assert!(reader["requests"]["allowed"].as_u64().unwrap() >= 6, "{reader}");
    assert_eq!(reader["secrets"].as_array().unwrap().len(), 1);
}

#[test]
fn a_secrets_last_use_stays_with_it_when_rotation_moves_it() {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &standard_tokens().render());
    let cfg = gw.path("gateway.toml").to_string_lossy().into_owned();
    assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={RO}")).status, 200);
    let (code, out, err) = run_cli(&["token", "rotate", "-c", &cfg, "--name", "reader"], None);
    assert_eq!(code, 0, "{err}");
    let new = out.trim().to_string();
    // Applied once the new secret is known; it has not been used yet.
    let applied = poll(Duration::from_secs(5), || {
        let r = reader_of(&tokens_view(&gw));
        (r["secrets"].as_array().unwrap().len() == 2).then_some(r)
    })
    .unwrap();
    let secrets = applied["secrets"].as_array().unwrap();
    assert!(secrets[0]["last_use"].is_null(), "the new secret was never used: {applied}");
    assert_eq!(secrets[1]["last_use"], applied["last_use"], "the old secret's use moved with it: {applied}");
    assert!(new.len() == 64);
}

#[test]
fn token_rotate_refuses_what_it_cannot_do_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = standard_tokens().render()
        + "[[token]]\nname = \"plain\"\nactive = true\ntoken = \"s3cr3t\"\nip_restriction = []\naccess_right = \"admin\"\n\
           expires = \"never\"\n";
    let cfg = write_config(dir.path(), GATEWAY, &tokens);
    let path = dir.path().join("tokens.toml");
    for (name, why) in [("nobody", "there is no token named `nobody`"), ("plain", "keeps its secret in plain text")] {
        let (code, out, err) = run_cli(&["token", "rotate", "-c", &cfg, "--name", name], None);
        assert_eq!(code, 1);
        assert!(out.is_empty() && err.contains(why) && err.contains("nothing was changed"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), tokens);
    }
    // Three more secrets make four; a fifth is refused. A list written one
    // digest per line gets the new one on a line of its own.
    for _ in 0..3 {
        let (code, _, err) = run_cli(&["token", "rotate", "-c", &cfg, "--name", "boss"], None);
        assert_eq!(code, 0, "{err}");
    }
    let four = std::fs::read_to_string(&path).unwrap();
    let (code, out, err) = run_cli(&["token", "rotate", "-c", &cfg, "--name", "boss"], None);
    assert_eq!(code, 1);
    assert!(out.is_empty() && err.contains("already has 4 secrets"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), four);
    let multi = tokens.replace(
        &format!("token_sha256 = \"{}\"", sha256_hex(RO)),
        &format!("token_sha256 = [\n  \"{}\", # the first\n]", sha256_hex(RO)),
    );
    std::fs::write(&path, &multi).unwrap();
    let (code, out, err) = run_cli(&["token", "rotate", "-c", &cfg, "--name", "reader"], None);
    assert_eq!(code, 0, "{err}");
    let want = format!("token_sha256 = [\n  \"{}\",\n  \"{}\", # the first\n]", sha256_hex(out.trim()), sha256_hex(RO));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        multi.replace(&format!("token_sha256 = [\n  \"{}\", # the first\n]", sha256_hex(RO)), &want)
    );
}

/// Rights with and without limits, and tokens that add their own.
fn limited_tokens() -> String {
    let token = |name: &str, secret: &str, right: &str, own: &str| {
        format!(
            "[[token]]\nname = \"{name}\"\nactive = true\ntoken_sha256 = \"{}\"\nip_restriction = []\n\
             access_right = \"{right}\"\n{own}expires = \"never\"\n\n",
            sha256_hex(secret)
        )
    };
    "[access_rights.limited]\nactions = [\"TARGETDATA\"]\nrate = \"10/s\"\nburst = 20\nconcurrency = 4\n\n\
     [access_rights.read-only]\nactions = [\"TARGETDATA\"]\n\n"
        .to_string()
        + &token("by-right", RO, "limited", "")
        + &token("own-rate", ADMIN, "limited", "rate = \"1/m\"\n")
        + &token("free", INACTIVE, "read-only", "")
        + &token("in-flight", EXPIRED, "read-only", "concurrency = 2\n")
}

/// `token list`'s LIMITS column of each row, by name.
fn limits_column(out: &str) -> Vec<(String, String)> {
    let header = out.lines().next().unwrap();
    let (at, end) = (header.find("LIMITS").unwrap(), header.find("IP RESTRICTION").unwrap());
    out.lines()
        .skip(1)
        .map(|l| {
            let name = l.split_whitespace().next().unwrap().to_string();
            (name, l[at..end].trim().to_string())
        })
        .collect()
}

#[test]
fn token_list_shows_each_tokens_effective_limits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), GATEWAY, &limited_tokens());
    let (code, out, err) = run_cli(&["token", "list", "-c", &cfg], None);
    assert_eq!(code, 0, "{err}");
    let want = [
        ("by-right", "rate=10/s,burst=20,concurrency=4"),
        ("own-rate", "rate=1/m,burst=20,concurrency=4"),
        ("free", "-"),
        ("in-flight", "concurrency=2"),
    ];
    let got = limits_column(&out);
    assert_eq!(got, want.map(|(n, l)| (n.to_string(), l.to_string())), "{out}");
    let (code, out, err) = run_cli(&["check", "-c", &cfg], None);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn token_new_writes_the_limits_it_is_given_above_expires() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), GATEWAY, &limited_tokens());
    let path = dir.path().join("tokens.toml");
    let new = |extra: &[&str]| {
        let mut args = vec!["token", "new", "-c", &cfg, "--access-right", "read-only"];
        args.extend(extra);
        run_cli(&args, None)
    };
    let (code, out, err) = new(&["--name", "export", "--rate", "5/m", "--burst", "2", "--concurrency", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim().len(), 64);
    let text = std::fs::read_to_string(&path).unwrap();
    let entry = &text[text.find("name = \"export\"").unwrap()..];
    assert!(
        entry.contains(
            "access_right = \"read-only\"\nrate = \"5/m\"\nburst = 2\nconcurrency = 3\nexpires = \"never\"\n"
        ),
        "{entry}"
    );
    // A burst alone rests on the right's rate.
    let (code, _, err) = new(&["--name", "bursty", "--burst", "7"]);
    assert_eq!(code, 1, "a burst without any rate was written: {err}");
    assert!(err.contains("`burst` of token `bursty` needs a `rate`") && err.contains("nothing was changed"), "{err}");
    let (code, _, err) =
        run_cli(&["token", "new", "-c", &cfg, "--access-right", "limited", "--name", "bursty", "--burst", "7"], None);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_cli(&["token", "list", "-c", &cfg], None);
    assert_eq!(code, 0, "{err}");
    let got = limits_column(&out);
    assert!(got.contains(&("export".into(), "rate=5/m,burst=2,concurrency=3".into())), "{out}");
    assert!(got.contains(&("bursty".into(), "rate=10/s,burst=7,concurrency=4".into())), "{out}");
}

#[test]
fn token_new_refuses_a_bad_limit_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), GATEWAY, &limited_tokens());
    let before = std::fs::read_to_string(dir.path().join("tokens.toml")).unwrap();
    for (flag, value, why) in [
        ("--rate", "10/d", "`rate` must be a string N/s, N/m or N/h"),
        (
            "--rate",
            "0/s",
            "`rate` must be a string N/s, N/m or N/h (requests per second, minute or hour), N a whole \
                           number from 1 to 1000000",
        ),
        ("--rate", "1000001/s", "`rate` must be"),
        ("--rate", "10 /s", "`rate` must be"),
        ("--burst", "0", "`burst` must be a whole number from 1 to 1000000"),
        ("--burst", "many", "`burst` must be a whole number"),
        ("--concurrency", "1000001", "`concurrency` must be a whole number from 1 to 1000000"),
        ("--concurrency", "-2", "`concurrency` must be a whole number"),
    ] {
        let (code, out, err) =
            run_cli(&["token", "new", "-c", &cfg, "--name", "x", "--access-right", "limited", flag, value], None);
        assert_eq!(code, 1, "{flag} {value}: {err}");
        assert!(out.is_empty(), "a token was printed although none was added: {out}");
        assert!(err.contains(&format!("{flag} {value:?}: {why}")), "{flag} {value}: {err}");
    }
    assert_eq!(std::fs::read_to_string(dir.path().join("tokens.toml")).unwrap(), before);
}
