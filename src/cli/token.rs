//! `tokengate token new|rotate|hash|list` (interface.md §2): make a token,
//! or a new secret for one, and add its digest to the token file without
//! disturbing the rest of the file; hash a token; list the tokens. Never
//! prints a digest; prints a new secret exactly once.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rand::TryRngCore;
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, ImDocument, Item, Table, Value};

use crate::config::Config;
use crate::net::parse_cidr;
use crate::quota::Limits;
use crate::tokens::edit::{self, EditError};
use crate::tokens::file::{self, parse_rfc3339, shown};
use crate::tokens::state::MAX_SECRETS;
use crate::tokens::table::{Token, TokenHash};

/// `token hash`: a token on stdin, its `token_sha256` on stdout.
pub fn hash() -> i32 {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read stdin: {e}");
        return 1;
    }
    let token = input.trim();
    if token.is_empty() {
        eprintln!("no token on stdin");
        return 1;
    }
    println!("{}", TokenHash::of(&Token(token.as_bytes())).to_hex());
    0
}

/// `token list`: one row per token; never a secret or a digest, never a
/// control character as it is.
pub fn list(config: &Path) -> i32 {
    let Some((tokens_file, max_bytes)) = tokens_file(config) else {
        return 1;
    };
    let loaded = match file::load(&tokens_file, max_bytes) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    let mut entries: Vec<_> = loaded.table.entries().collect();
    entries.sort_by_key(|e| e.line());
    let now = std::time::SystemTime::now();
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            let ips = e.ip_restriction().nets();
            [
                shown(e.name()).into_owned(),
                if !e.active() {
                    "no".into()
                } else if e.expired_at(now) {
                    "expired".into()
                } else {
                    "yes".into()
                },
                shown(&e.right().name).into_owned(),
                limits_column(&e.limits()),
                if ips.is_empty() {
                    "any".into()
                } else {
                    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                },
                e.expires().map_or("never".into(), |t| humantime::format_rfc3339_seconds(t).to_string()),
                e.secrets().to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "ACTIVE", "ACCESS RIGHT", "LIMITS", "IP RESTRICTION", "EXPIRES", "SECRETS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    0
}

/// A token's effective limits as `token list` shows them, key by key as
/// the file names them (`rate=10/s,burst=20,concurrency=4`; the burst is
/// shown with every rate, defaulted or not), or `-` for none.
fn limits_column(l: &Limits) -> String {
    let rate = l.rate.map(|r| format!("rate={r},burst={}", l.burst_or_n()));
    let concurrency = l.concurrency.map(|c| format!("concurrency={c}"));
    let shown: Vec<String> = rate.into_iter().chain(concurrency).collect();
    if shown.is_empty() {
        "-".into()
    } else {
        shown.join(",")
    }
}

/// What `token new` was asked for on the command line.
pub struct NewTokenRequest<'a> {
    /// Unique name.
    pub name: &'a str,
    /// An access right of the file.
    pub access_right: &'a str,
    /// CIDRs; none means any address.
    pub ips: &'a [String],
    /// RFC 3339 expiry; none means `"never"`.
    pub expires: Option<&'a str>,
    /// `rate` (`N/s`, `N/m`, `N/h`); none: the right's.
    pub rate: Option<&'a str>,
    /// `burst`; none: the right's, or the rate's N.
    pub burst: Option<&'a str>,
    /// `concurrency`; none: the right's.
    pub concurrency: Option<&'a str>,
}

/// `token new`: prints the new token once on stdout and adds its digest to
/// the token file, through [`edit::edit`] (locked, checked, replaced whole).
pub fn new(config: &Path, req: &NewTokenRequest<'_>) -> i32 {
    let Some((path, max_bytes)) = tokens_file(config) else {
        return 1;
    };
    let mut bad = false;
    for ip in req.ips {
        if parse_cidr(ip).is_none() {
            eprintln!("--ip {ip:?} is not an IP address or CIDR");
            bad = true;
        }
    }
    let expires = match req.expires {
        Some(e) => match (parse_rfc3339(e), e.parse::<toml_edit::Datetime>()) {
            (Some(_), Ok(dt)) => Some(dt),
            _ => {
                eprintln!("--expires {e:?} is not an RFC 3339 date-time with a time zone, e.g. 2027-06-30T00:00:00Z");
                bad = true;
                None
            }
        },
        None => None,
    };
    // Checked as the file's values are (a burst with no rate to rest on is
    // refused by the validation of the edited file).
    if let Some(r) = req.rate {
        if let Err(msg) = file::parse_rate(r) {
            eprintln!("--rate {r:?}: {msg}");
            bad = true;
        }
    }
    let mut count = |key: &str, v: Option<&str>| {
        // Not a number at all is the same error as one out of range.
        match file::check_count(key, v?.parse().unwrap_or(0)) {
            Ok(n) => Some(n),
            Err(msg) => {
                eprintln!("--{key} {:?}: {msg}", v.unwrap_or_default());
                bad = true;
                None
            }
        }
    };
    let burst = count("burst", req.burst);
    let concurrency = count("concurrency", req.concurrency);
    if bad {
        return 1;
    }
    let Some((token, digest)) = new_secret() else {
        return 1;
    };

    // Render the new [[token]] with toml_edit (quoting, arrays, datetimes)
    // and append it: every byte of the existing file stays as it was.
    let mut t = Table::new();
    t.insert("name", value(req.name));
    t.insert("active", value(true));
    t.insert("token_sha256", value(digest));
    let mut ips = Array::new();
    for ip in req.ips {
        ips.push(ip.as_str());
    }
    t.insert("ip_restriction", value(ips));
    t.insert("access_right", value(req.access_right));
    // Above `expires`, its last required key: a limit written after it is
    // refused (a cut just before it would drop it unseen).
    if let Some(r) = req.rate {
        t.insert("rate", value(r));
    }
    if let Some(b) = burst {
        t.insert("burst", value(i64::from(b)));
    }
    if let Some(c) = concurrency {
        t.insert("concurrency", value(i64::from(c)));
    }
    // Always written: a token without `expires` is refused (interface.md §4).
    match expires {
        Some(dt) => t.insert("expires", value(dt)),
        None => t.insert("expires", value("never")),
    };
    let mut array = ArrayOfTables::new();
    array.push(t);
    let mut doc = DocumentMut::new();
    doc.insert("token", Item::ArrayOfTables(array));
    let appended = |text: &str| {
        let mut new_text = text.to_string();
        if !new_text.is_empty() && !new_text.ends_with('\n') {
            new_text.push('\n');
        }
        if !new_text.is_empty() {
            new_text.push('\n');
        }
        new_text.push_str(&doc.to_string());
        Ok(new_text)
    };
    let path = match edit::edit(&path, max_bytes, appended) {
        Ok(p) => p,
        Err(e) => return refused(&path, &e),
    };
    if req.ips.is_empty() {
        eprintln!("note: token `{}` may be used from any address (no --ip given)", shown(req.name));
    }
    eprintln!(
        "added token `{}` ({}) to {}; it is shown only now:",
        shown(req.name),
        shown(req.access_right),
        path.display()
    );
    println!("{token}");
    0
}

/// `token rotate`: a new random secret in front of token `name`'s
/// `token_sha256` (a single digest becomes a list), printed once; the old
/// secrets keep working until removed. Only the digest list changes: every
/// other byte of the file stays as it was.
pub fn rotate(config: &Path, name: &str) -> i32 {
    let Some((path, max_bytes)) = tokens_file(config) else {
        return 1;
    };
    let Some((token, digest)) = new_secret() else {
        return 1;
    };
    let mut secrets = 0;
    let path = match edit::edit(&path, max_bytes, |text| {
        let (new_text, n) = add_secret(text, name, &digest)?;
        secrets = n;
        Ok(new_text)
    }) {
        Ok(p) => p,
        Err(e) => return refused(&path, &e),
    };
    eprintln!(
        "token `{}` in {} has {secrets} secrets now; the new one is position 0 and is shown only now. \
         The older ones keep working until you remove their digests:",
        shown(name),
        path.display()
    );
    println!("{token}");
    0
}

/// `text` with `digest` put first in token `name`'s `token_sha256`, and how
/// many secrets the token then has. The change is spliced into the text at
/// the value's span, so nothing else moves.
fn add_secret(text: &str, name: &str, digest: &str) -> Result<(String, usize), String> {
    let doc = ImDocument::parse(text).map_err(|e| e.message().to_string())?;
    let table = doc
        .get("token")
        .and_then(Item::as_array_of_tables)
        .and_then(|tokens| tokens.iter().find(|t| t.get("name").and_then(Item::as_str) == Some(name)))
        .ok_or_else(|| format!("there is no token named `{}`", shown(name)))?;
    let splice = |at: usize, insert: &str, close: Option<usize>| {
        let mut out = String::with_capacity(text.len() + insert.len() + 1);
        out.push_str(&text[..at]);
        out.push_str(insert);
        match close {
            Some(end) => {
                out.push_str(&text[at..end]);
                out.push(']');
                out.push_str(&text[end..]);
            }
            None => out.push_str(&text[at..]),
        }
        out
    };
    match table.get("token_sha256").and_then(Item::as_value) {
        Some(v @ Value::String(_)) => {
            let span = v.span().ok_or("the file could not be read back")?;
            Ok((splice(span.start, &format!("[\"{digest}\", "), Some(span.end)), 2))
        }
        Some(Value::Array(a)) if a.len() >= MAX_SECRETS => Err(format!(
            "token `{}` already has {} secrets, the most a token may have: remove the oldest digest (the last \
             in its token_sha256) first",
            shown(name),
            a.len()
        )),
        Some(Value::Array(a)) => {
            let first = a.get(0).and_then(Value::span).ok_or("token_sha256 is an empty list")?;
            let open = a.span().ok_or("the file could not be read back")?.start + 1;
            // On its own line when the list is written one digest per line.
            let between = &text[open..first.start];
            let insert = match between.rfind('\n') {
                Some(nl) => format!("\"{digest}\",\n{}", &between[nl + 1..]),
                None => format!("\"{digest}\", "),
            };
            Ok((splice(first.start, &insert, None), a.len() + 1))
        }
        _ if table.contains_key("token") => Err(format!(
            "token `{}` keeps its secret in plain text (`token`): replace it with `token_sha256 = \"<digest>\"` \
             (tokengate token hash prints it) before rotating",
            shown(name)
        )),
        _ => Err(format!("token `{}` has no token_sha256", shown(name))),
    }
}

/// 32 random bytes from the operating system as 64 upper-case hex digits,
/// like the scanner's own tokens, and the digest the file keeps.
fn new_secret() -> Option<(String, String)> {
    let mut bytes = [0u8; 32];
    if let Err(e) = rand::rngs::OsRng.try_fill_bytes(&mut bytes) {
        eprintln!("the operating system's random source failed: {e}");
        return None;
    }
    let token: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    let digest = TokenHash::of(&Token(token.as_bytes())).to_hex();
    Some((token, digest))
}

/// Prints why the file was not changed; the exit code.
fn refused(path: &Path, e: &EditError) -> i32 {
    eprintln!("{e}");
    eprintln!("{}: nothing was changed", path.display());
    1
}

fn tokens_file(config: &Path) -> Option<(PathBuf, u64)> {
    match Config::load(config) {
        Ok(c) => Some((c.tokens_file, c.tokens_max_file_bytes)),
        Err(errors) => {
            eprintln!("{errors}");
            None
        }
    }
}
