//! `tokengate token new|hash|list` (interface.md §2): make a token and add
//! its digest to the token file without disturbing the rest of the file,
//! hash a token, list the tokens. Never prints a digest; prints a new token
//! exactly once.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rand::TryRngCore;
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};

use crate::config::Config;
use crate::net::parse_cidr;
use crate::tokens::file::{self, parse_rfc3339};
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

/// `token list`: one row per token; never a secret or a digest.
pub fn list(config: &Path) -> i32 {
    let Some(tokens_file) = tokens_file(config) else {
        return 1;
    };
    let loaded = match file::load(&tokens_file) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    let mut entries: Vec<_> = loaded.table.entries().collect();
    entries.sort_by_key(|e| e.line());
    let now = std::time::SystemTime::now();
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            let ips = e.ip_restriction().nets();
            [
                e.name().to_string(),
                if !e.active() {
                    "no".into()
                } else if e.expired_at(now) {
                    "expired".into()
                } else {
                    "yes".into()
                },
                e.right().name.to_string(),
                if ips.is_empty() {
                    "any".into()
                } else {
                    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                },
                e.expires().map_or("never".into(), |t| humantime::format_rfc3339_seconds(t).to_string()),
            ]
        })
        .collect();
    let header = ["NAME", "ACTIVE", "ACCESS RIGHT", "IP RESTRICTION", "EXPIRES"].map(String::from);
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

/// What `token new` was asked for on the command line.
pub struct NewTokenRequest<'a> {
    /// Unique name.
    pub name: &'a str,
    /// An access right of the file.
    pub access_right: &'a str,
    /// CIDRs; none means any address.
    pub ips: &'a [String],
    /// RFC 3339 expiry.
    pub expires: Option<&'a str>,
}

/// `token new`: prints the new token once on stdout and adds its digest to
/// the token file, which is replaced atomically so a running gateway never
/// reads half of it.
pub fn new(config: &Path, req: &NewTokenRequest<'_>) -> i32 {
    let Some(path) = tokens_file(config) else {
        return 1;
    };
    // Edit the file a symlink points to (a rename over the link would break it).
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e}", path.display());
            return 1;
        }
    };
    // Refuse to build on a file that is already broken.
    if let Err(errors) = file::parse(&path, &text) {
        eprintln!("{errors}");
        eprintln!("{}: fix these errors first; nothing was changed", path.display());
        return 1;
    }
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
    if bad {
        return 1;
    }

    let mut bytes = [0u8; 32];
    if let Err(e) = rand::rngs::OsRng.try_fill_bytes(&mut bytes) {
        eprintln!("the operating system's random source failed: {e}");
        return 1;
    }
    let token: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    let digest = TokenHash::of(&Token(token.as_bytes())).to_hex();

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
    // Always written: a token without `expires` is refused (interface.md §4).
    match expires {
        Some(dt) => t.insert("expires", value(dt)),
        None => t.insert("expires", value("never")),
    };
    let mut array = ArrayOfTables::new();
    array.push(t);
    let mut doc = DocumentMut::new();
    doc.insert("token", Item::ArrayOfTables(array));
    let mut new_text = text.clone();
    if !new_text.is_empty() && !new_text.ends_with('\n') {
        new_text.push('\n');
    }
    if !new_text.is_empty() {
        new_text.push('\n');
    }
    new_text.push_str(&doc.to_string());

    // The edited file must validate as a whole (name taken, unknown right...).
    if let Err(errors) = file::parse(&path, &new_text) {
        for e in &errors.0 {
            eprintln!("{}", e.message);
        }
        eprintln!("{}: nothing was changed", path.display());
        return 1;
    }
    if let Err(e) = replace_atomically(&path, new_text.as_bytes()) {
        eprintln!("cannot write {}: {e}", path.display());
        return 1;
    }
    if req.ips.is_empty() {
        eprintln!("note: token `{}` may be used from any address (no --ip given)", req.name);
    }
    eprintln!("added token `{}` ({}) to {}; it is shown only now:", req.name, req.access_right, path.display());
    println!("{token}");
    0
}

/// Writes a temp file in the same folder, syncs it, renames it over `path`,
/// and syncs the folder: readers see the old file or the new one, never half.
fn replace_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tokengate-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn tokens_file(config: &Path) -> Option<PathBuf> {
    match Config::load(config) {
        Ok(c) => Some(c.tokens_file),
        Err(errors) => {
            eprintln!("{errors}");
            None
        }
    }
}
