//! interface.md §7: the token file is followed while the gateway runs; a bad
//! edit never wins; every way operators save a file is seen.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

const A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const Z: &str = "3333333333333333333333333333333333333333333333333333333333333333";

/// Version 1 has A active and B inactive; version 2 the other way round.
/// Z is active in both.
fn version(a_active: bool) -> String {
    let a = TokenSpec::new("a", A, "admin");
    let b = TokenSpec::new("b", B, "admin");
    let (a, b) = if a_active { (a, b.inactive()) } else { (a.inactive(), b) };
    TokenFile::new().right("admin", &["*"], &["* /*"]).token(a).token(b).token(TokenSpec::new("z", Z, "admin")).render()
}

fn status(gw: &Gateway, token: &str) -> u16 {
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={token}")).status
}

fn wait_status(gw: &Gateway, token: &str, want: u16, within: Duration) -> bool {
    poll(within, || (status(gw, token) == want).then_some(())).is_some()
}

fn start(tokens: &str) -> (MockUpstream, Gateway) {
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), tokens);
    (up, gw)
}

/// Writes `text` to a temp file in the same folder, then renames it over
/// `path`, as editors and `sed -i` do.
fn rename_save(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn metric(gw: &Gateway, line_start: &str) -> u64 {
    let m = request(gw.admin, "GET", "/metrics", &[], b"").text();
    m.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn an_edit_takes_effect_within_a_second() {
    let (_up, gw) = start(&version(true));
    assert_eq!(status(&gw, A), 200);
    assert_eq!(status(&gw, B), 403);
    let t = Instant::now();
    rename_save(&gw.path("tokens.toml"), &version(false));
    assert!(wait_status(&gw, B, 200, Duration::from_secs(1)), "not applied within a second");
    eprintln!("applied after {:?}", t.elapsed());
    assert_eq!(status(&gw, A), 403);
}

#[test]
fn an_invalid_file_keeps_the_old_table_and_a_later_valid_one_applies() {
    let (_up, gw) = start(&version(true));
    let path = gw.path("tokens.toml");
    let broken = version(false).replace(
        "ip_restriction = []\naccess_right = \"admin\"\nexpires = \"never\"\n\n[[token]]\nname = \"b\"",
        "ip_restrictions = []\naccess_right = \"admin\"\nexpires = \"never\"\n\n[[token]]\nname = \"b\"",
    );
    assert_ne!(broken, version(false));
    rename_save(&path, &broken);
    let line = gw.wait_log("the reload error", |l| l.contains("unknown field `ip_restrictions`"));
    assert!(line.contains("tokens.toml:9:1:"), "{line}");
    assert_eq!(metric(&gw, "tokengate_reloads_total{outcome=\"failure\"}"), 1);
    // The last good table still serves.
    assert_eq!(status(&gw, A), 200);
    assert_eq!(status(&gw, B), 403);
    rename_save(&path, &version(false));
    assert!(wait_status(&gw, B, 200, Duration::from_secs(5)));
    assert_eq!(status(&gw, A), 403);
    assert_eq!(metric(&gw, "tokengate_reloads_total{outcome=\"success\"}"), 2);
}

#[test]
fn a_file_cut_short_is_not_applied() {
    let (_up, gw) = start(&version(true));
    // The write stopped before B's ip_restriction (and everything after it):
    // B would be active with no restriction if that were allowed.
    let full = version(false);
    let b_at = full.find("name = \"b\"").unwrap();
    let cut = &full[..b_at + full[b_at..].find("ip_restriction").unwrap()];
    std::fs::write(gw.path("tokens.toml"), cut).unwrap();
    gw.wait_log("the reload error", |l| l.contains("missing field"));
    assert_eq!(status(&gw, A), 200);
    assert_eq!(status(&gw, B), 403);
}

#[test]
fn in_place_truncate_then_write_is_seen() {
    let (_up, gw) = start(&version(true));
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(gw.path("tokens.toml")).unwrap();
    f.flush().unwrap();
    f.write_all(version(false).as_bytes()).unwrap();
    drop(f);
    assert!(wait_status(&gw, B, 200, Duration::from_secs(5)), "{}", gw.log().join("\n"));
}

#[test]
fn delete_then_recreate_is_seen() {
    let (_up, gw) = start(&version(true));
    let path = gw.path("tokens.toml");
    std::fs::remove_file(&path).unwrap();
    gw.wait_log("the deletion", |l| l.contains("token file is gone"));
    // Still serving the last good table.
    assert_eq!(status(&gw, A), 200);
    std::fs::write(&path, version(false)).unwrap();
    assert!(wait_status(&gw, B, 200, Duration::from_secs(5)));
}

#[test]
fn a_kubernetes_style_symlink_swap_is_seen() {
    // tokens.toml -> ..data/tokens.toml, ..data -> ..v1; the update makes ..v2
    // and renames a new ..data symlink over the old one.
    let up = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/tokens.toml"), version(true)).unwrap();
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tokens.toml", d.join("tokens.toml")).unwrap();
    let gw = Gateway::builder(&up.url(), "").tokens_path(&d.join("tokens.toml")).start();
    assert_eq!(status(&gw, A), 200);
    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(d.join("..v2/tokens.toml"), version(false)).unwrap();
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..v1")).unwrap();
    assert!(wait_status(&gw, B, 200, Duration::from_secs(5)));
    assert_eq!(status(&gw, A), 403);
}

#[test]
fn sighup_reloads_at_once() {
    let (_up, gw) = start(&version(true));
    let before = metric(&gw, "tokengate_reloads_total{outcome=\"success\"}");
    assert_eq!(before, 1);
    let ok = std::process::Command::new("kill").args(["-HUP", &gw.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    // Nothing changed on disk: only the signal can cause this reload.
    let reloaded = poll(Duration::from_secs(5), || {
        (metric(&gw, "tokengate_reloads_total{outcome=\"success\"}") == 2).then_some(())
    });
    assert!(reloaded.is_some(), "SIGHUP did not reload");
    assert_eq!(status(&gw, A), 200);
}

#[test]
fn flipping_versions_under_load_never_mixes_or_fails() {
    let (_up, gw) = start(&version(true));
    let gw = Arc::new(gw);
    let done = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for token in [A, B, Z] {
        let (gw, done) = (gw.clone(), done.clone());
        loops.push(std::thread::spawn(move || {
            let mut seen = Vec::new();
            // Bounded in count and time.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done.load(Ordering::Relaxed) && seen.len() < 20_000 && Instant::now() < deadline {
                let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={token}"));
                seen.push((r.status, r.errorcode()));
            }
            seen
        }));
    }
    let path = gw.path("tokens.toml");
    // 101 rewrites: the last version differs from the first one.
    for i in 0..101 {
        rename_save(&path, &version(i % 2 == 1));
        std::thread::sleep(Duration::from_millis(15));
    }
    done.store(true, Ordering::Relaxed);
    let results: Vec<Vec<(u16, Option<String>)>> = loops.into_iter().map(|h| h.join().unwrap()).collect();
    for (token, seen) in ["a", "b"].iter().zip(&results[..2]) {
        for (s, code) in seen {
            assert!(
                *s == 200 || (*s == 403 && code.as_deref() == Some("TOKEN_INACTIVE")),
                "token {token}: {s} {code:?}"
            );
        }
    }
    assert!(results[2].iter().all(|(s, _)| *s == 200), "a valid request failed during reloads");
    let total: usize = results.iter().map(Vec::len).sum();
    eprintln!("{total} requests during 101 rewrites");
    assert!(total > 100);
    // The watcher was live throughout (not only a table that never changed):
    // new tables were swapped in, and the last version written is served.
    let reloads = || {
        let m = request(gw.admin, "GET", "/metrics", &[], b"").text();
        m.lines()
            .find_map(|l| l.strip_prefix("tokengate_reloads_total{outcome=\"success\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        wait_status(&gw, A, 403, Duration::from_secs(2)) && status(&gw, B) == 200,
        "the last version is not served after {} loads",
        reloads()
    );
    assert!(reloads() >= 2, "{} successful loads for 101 rewrites", reloads());
}

#[test]
fn a_writer_that_pauses_mid_write_is_waited_for() {
    // Version 1: x inactive. Version 2: x active but long expired. A prefix of
    // version 2 that stops before `expires` would be valid and would let x in.
    let x = "4444444444444444444444444444444444444444444444444444444444444444";
    let file = |active: bool, expired: bool| {
        let t = TokenSpec::new("x", x, "admin");
        let t = if active { t } else { t.inactive() };
        let t = if expired { t.expires("2020-01-01T00:00:00Z") } else { t };
        TokenFile::new().right("admin", &["*"], &["* /*"]).token(t).render()
    };
    let (_up, gw) = start(&file(false, false));
    assert_eq!(status(&gw, x), 403);
    let full = file(true, true);
    let cut = full.find("expires").unwrap();
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(gw.path("tokens.toml")).unwrap();
    f.write_all(&full.as_bytes()[..cut]).unwrap();
    f.flush().unwrap();
    // Five quiet periods with the file still open: the prefix must not apply.
    let deadline = Instant::now() + Duration::from_millis(600);
    while Instant::now() < deadline {
        assert_ne!(status(&gw, x), 200, "a half-written file was applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    f.write_all(&full.as_bytes()[cut..]).unwrap();
    drop(f);
    let expired = poll(Duration::from_secs(5), || {
        let r = gw.get(&format!("/opi/XMLAPI?APPTOKEN={x}"));
        (r.errorcode().as_deref() == Some("TOKEN_EXPIRED")).then_some(())
    });
    assert!(expired.is_some(), "the finished file was not applied");
}

#[test]
fn a_busy_folder_does_not_hold_back_an_edit() {
    let (_up, gw) = start(&version(true));
    let dir = gw.dir.path().to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    let noise = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Another file in the folder, rewritten every 20 ms (bounded).
            for i in 0..500 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::fs::write(dir.join("other.txt"), i.to_string()).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    rename_save(&gw.path("tokens.toml"), &version(false));
    let applied = wait_status(&gw, B, 200, Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    noise.join().unwrap();
    assert!(applied, "the edit waited for the folder to fall quiet");
}

#[test]
fn an_emptied_file_is_not_applied() {
    let (_up, gw) = start(&version(true));
    std::fs::write(gw.path("tokens.toml"), "").unwrap();
    gw.wait_log("the refusal", |l| l.contains("an empty file is not applied"));
    assert_eq!(status(&gw, A), 200);
}

/// A file with token x inactive (version 1), and one where x is active but
/// expired since 2020, cut just before its `expires` line: what a writer
/// leaves when it stops there. Before `expires` was required, that cut was
/// a valid file that let x in with no end.
fn x_inactive_and_x_cut_before_expires() -> (String, String, &'static str) {
    let x = "4444444444444444444444444444444444444444444444444444444444444444";
    let file = |active: bool| {
        let t = TokenSpec::new("x", x, "admin").expires("2020-01-01T00:00:00Z");
        let t = if active { t } else { t.inactive() };
        TokenFile::new().right("admin", &["*"], &["* /*"]).token(TokenSpec::new("z", Z, "admin")).token(t).render()
    };
    let full = file(true);
    let cut = full[..full.find("expires = 2020").unwrap()].to_string();
    (file(false), cut, x)
}

/// The error (the log writes it after `error=`, quotes as they are).
const NO_EXPIRES: &str = "token `x` has no `expires`: add `expires =";

#[test]
fn run_refuses_a_file_cut_before_a_tokens_expires() {
    let (_, cut, _) = x_inactive_and_x_cut_before_expires();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.toml"), &cut).unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
         [tokens]\nfile = \"tokens.toml\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (code, _out, err) = run_cli(&["run", "-c", cfg.to_str().unwrap()], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("tokens.toml:13:1: {NO_EXPIRES}")), "{err}");
}

#[test]
fn the_watcher_refuses_a_file_cut_before_a_tokens_expires() {
    let (v1, cut, x) = x_inactive_and_x_cut_before_expires();
    let (_up, gw) = start(&v1);
    assert_eq!(status(&gw, x), 403);
    // Written in place and closed: the watcher reads it once it is quiet.
    std::fs::write(gw.path("tokens.toml"), &cut).unwrap();
    let line = gw.wait_log("the refusal", |l| l.contains(NO_EXPIRES));
    assert!(line.contains("tokens.toml:13:1:"), "{line}");
    assert_eq!(status(&gw, x), 403, "the cut file was applied");
    assert_eq!(status(&gw, Z), 200);
}

#[test]
fn sighup_refuses_a_file_cut_before_a_tokens_expires() {
    let (v1, cut, x) = x_inactive_and_x_cut_before_expires();
    let (_up, gw) = start(&v1);
    std::fs::write(gw.path("tokens.toml"), &cut).unwrap();
    let hup = std::process::Command::new("kill").args(["-HUP", &gw.pid().to_string()]).status().unwrap();
    assert!(hup.success());
    // The signal's own reload reads the file whatever the watcher did, and
    // refuses it: an error line follows the SIGHUP line.
    let refused_after_hup = poll(Duration::from_secs(10), || {
        let log = gw.log();
        let hup_at = log.iter().position(|l| l.contains("SIGHUP: reloading"))?;
        log[hup_at..].iter().any(|l| l.contains(NO_EXPIRES)).then_some(())
    });
    assert!(refused_after_hup.is_some(), "{}", gw.log().join("\n"));
    assert_eq!(status(&gw, x), 403, "the cut file was applied");
}

#[test]
fn the_one_second_poll_refuses_a_file_cut_before_a_tokens_expires() {
    // tokens.toml sits in `cur`, a symlink to a version folder; the watch is
    // on the folder `cur` pointed to when the gateway started, so replacing
    // the symlink is seen only by the poll of the file's fingerprint.
    let (v1, cut, x) = x_inactive_and_x_cut_before_expires();
    let up = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let version = |n: u32, text: &str| {
        std::fs::create_dir(d.join(format!("v{n}"))).unwrap();
        std::fs::write(d.join(format!("v{n}/tokens.toml")), text).unwrap();
        std::os::unix::fs::symlink(format!("v{n}"), d.join("cur.new")).unwrap();
        std::fs::rename(d.join("cur.new"), d.join("cur")).unwrap();
    };
    version(1, &v1);
    let gw = Gateway::builder(&up.url(), "").tokens_path(&d.join("cur/tokens.toml")).start();
    assert_eq!(status(&gw, x), 403);
    version(2, &cut);
    gw.wait_log("the refusal", |l| l.contains(NO_EXPIRES));
    assert_eq!(status(&gw, x), 403, "the cut file was applied");
    // The same path applies a good file: x is refused as expired now.
    version(3, &format!("{cut}expires = 2020-01-01T00:00:00Z\n"));
    let expired = poll(Duration::from_secs(5), || {
        (gw.get(&format!("/opi/XMLAPI?APPTOKEN={x}")).errorcode().as_deref() == Some("TOKEN_EXPIRED")).then_some(())
    });
    assert!(expired.is_some(), "{}", gw.log().join("\n"));
}

fn readyz(gw: &Gateway) -> Response {
    request(gw.admin, "GET", "/readyz", &[], b"")
}

fn wait_ready(gw: &Gateway) {
    assert!(poll(Duration::from_secs(10), || (readyz(gw).status == 200).then_some(())).is_some(), "never ready");
}

/// Puts `make(tmp)` in place of the token file by rename, and checks that
/// the gateway says it cannot read it (log, metric, /readyz), keeps serving
/// the last good table, and applies the next good edit.
fn unreadable_then_good_edit(gw: &Gateway, make: impl FnOnce(&Path), why: &str) {
    assert_eq!(status(gw, A), 200);
    wait_ready(gw);
    let path = gw.path("tokens.toml");
    let tmp = gw.path("incoming");
    make(&tmp);
    let t = Instant::now();
    std::fs::rename(&tmp, &path).unwrap();
    let line = gw.wait_log("the read failure", |l| l.contains("token file cannot be read"));
    eprintln!("refused after {:?}: {line}", t.elapsed());
    assert!(line.contains(why), "{line}");
    assert_eq!(metric(gw, "tokengate_token_file_read_failures_total"), 1);
    let r = readyz(gw);
    assert_eq!(r.status, 503);
    assert!(r.text().contains("the token file cannot be read") && r.text().contains(why), "{}", r.text());
    // The last good table serves on.
    assert_eq!(status(gw, A), 200);
    assert_eq!(status(gw, B), 403);
    rename_save(&path, &version(false));
    assert!(wait_status(gw, B, 200, Duration::from_secs(5)), "{}", gw.log().join("\n"));
    assert_eq!(status(gw, A), 403);
    wait_ready(gw);
    assert_eq!(metric(gw, "tokengate_token_file_read_failures_total"), 1);
}

#[test]
fn a_fifo_renamed_over_the_file_is_refused_without_hanging_and_the_next_edit_applies() {
    let (_up, gw) = start(&version(true));
    let mkfifo = |p: &Path| assert!(std::process::Command::new("mkfifo").arg(p).status().unwrap().success());
    unreadable_then_good_edit(&gw, mkfifo, "it is a FIFO, not a regular file");
}

#[test]
fn a_symlink_to_dev_zero_is_refused_and_the_next_edit_applies() {
    let (_up, gw) = start(&version(true));
    let link = |p: &Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap();
    unreadable_then_good_edit(&gw, link, "it is a character device, not a regular file");
}

#[test]
fn a_sparse_file_over_max_file_bytes_is_refused_unread_and_the_next_edit_applies() {
    let up = MockUpstream::start();
    let gw = Gateway::builder(&up.url(), &version(true)).tokens_extra("max_file_bytes = 65536").start();
    // 1 GiB that takes no room on disk; the limit refuses it by its size.
    let sparse = |p: &Path| std::fs::File::create(p).unwrap().set_len(1 << 30).unwrap();
    unreadable_then_good_edit(&gw, sparse, "larger than tokens.max_file_bytes (65536)");
}

#[test]
fn a_mistyped_secret_is_not_quoted_in_the_reload_log() {
    let (_up, gw) = start(&version(true));
    let secret = "8765432123456789";
    let broken = version(false).replacen("token_sha256 = \"", &format!("token = {secret}\n#\""), 1);
    rename_save(&gw.path("tokens.toml"), &broken);
    let line = gw.wait_log("the refusal", |l| l.contains("`token` must be a string in quotes"));
    assert!(line.contains("tokens.toml:8:9:"), "{line}");
    assert!(!gw.log().iter().any(|l| l.contains(secret)), "{}", gw.log().join("\n"));
    assert_eq!(status(&gw, A), 200);
}

#[test]
fn a_hundred_thousand_digests_sharing_a_long_prefix_load_in_linear_time() {
    // Hand-made digests equal but for their last 8 hex digits. Hashed by
    // their first 8 bytes they all fell in one bucket: 200,000 took 99 s.
    let n = 100_000;
    let mut text = String::with_capacity(n * 190);
    text.push_str("[access_rights.admin]\nactions = [\"*\"]\n\n");
    for i in 0..n {
        text += &format!(
            "[[token]]\nname = \"p{i}\"\nactive = true\ntoken_sha256 = \"{}{i:08x}\"\nip_restriction = []\n\
             access_right = \"admin\"\nexpires = \"never\"\n\n",
            "ab".repeat(28)
        );
    }
    text += &TokenFile::new().token(TokenSpec::new("real", A, "admin")).render();
    let up = MockUpstream::start();
    let t = Instant::now();
    // The harness gives the gateway 20 s to start; quadratic would be minutes.
    let gw = Gateway::start(&up.url(), &text);
    eprintln!("{} tokens with a shared 56-digit prefix: listening after {:?}", n + 1, t.elapsed());
    assert_eq!(metric(&gw, "tokengate_tokens_loaded"), n as u64 + 1);
    assert_eq!(status(&gw, A), 200);
}
