//! The token file (interface.md §4): parse, validate, and build a table.
//! Every error is collected with its line and column before anything is
//! applied; a file with any error yields no table. Shared by `check`, the
//! loader at start and every reload.
//!
//! Two readers hand the same raw tables to one validation (a [`Sink`]): a
//! fast line scanner for the shape token files are written in
//! (`tokens::lines`), and the general TOML parser (toml_edit), used whenever
//! the scanner meets anything else, and so for every file with a structural
//! error.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::de::IntoDeserializer;
use serde::Deserialize;
use serde_spanned::Spanned;
use std::ops::Range;
use toml_edit::{ImDocument, Item, Value};

use super::lines;
use super::raw::{RawDigests, RawRight, RawToken, Sink, SpannedText};
use super::read::{read_stable, ReadError};
use super::state::MAX_SECRETS;
use super::table::{Duplicate, TableBuilder, Token, TokenHash, TokenRow, TokenTable, MAX_RIGHTS};
use crate::diagnostic::{ConfigError, ConfigErrors, Source};
use crate::net::parse_cidr;
use crate::rights::{is_minting_action, AccessRight, Actions, RoutePattern};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerdeRight {
    #[serde(default)]
    actions: Vec<Spanned<String>>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
}

/// A `[[token]]` but for `token`, `token_sha256` and `expires`, which are
/// taken out first and read by hand ([`token_keys`]): serde's type errors
/// quote the value, and a `token = 123` must not be echoed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerdeToken {
    name: Spanned<String>,
    active: bool,
    ip_restriction: Vec<Spanned<String>>,
    access_right: Spanned<String>,
}

/// Longest token or access right name, in bytes (interface.md §4).
pub const MAX_NAME_BYTES: usize = 128;

/// A token file that validated: its table and any warnings for `check`.
#[derive(Debug)]
pub struct Loaded {
    /// The table, ready to swap in.
    pub table: TokenTable,
    /// Things worth telling an operator that do not make the file invalid
    /// (plaintext tokens).
    pub warnings: Vec<ConfigError>,
}

/// Reads (as the reloader does: a regular file of at most `max_bytes`, not
/// while it is being written) and validates a token file.
pub fn load(path: &Path, max_bytes: u64) -> Result<Loaded, ConfigErrors> {
    let text = read_stable(path, max_bytes).map_err(|e| unreadable(path, &e))?;
    parse(path, &text)
}

/// A read failure as the one error of the file, for `check` and `token`.
pub fn unreadable(path: &Path, e: &ReadError) -> ConfigErrors {
    ConfigErrors::whole_file(path, format!("cannot read the token file: {e}"))
}

/// Validates the text of a token file read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigErrors> {
    // Live state is not made here: it is attached to an entry on the
    // token's first request after a load (tokens::table::TokenRef::state).
    let mut fast = Builder::new(Source::new(path, text));
    if lines::scan(text, &mut fast).is_some() {
        return fast.finish();
    }
    // Not the usual shape: read it again, as TOML, from scratch.
    drop(fast);
    let mut general = Builder::new(Source::new(path, text));
    read_toml(&mut general);
    general.finish()
}

/// The general reader: toml_edit, each table deserialised on its own so that
/// one broken `[[token]]` does not hide the errors of the next. `None` only
/// for a syntax error; other errors are recorded in `src`.
pub fn read_toml<'a>(sink: &mut impl Sink<'a>) -> Option<()> {
    let src = sink.source();
    let text = src.text();
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            src.error(e.span(), e.message().trim_end().to_string());
            return None;
        }
    };
    for (key, _) in doc.iter() {
        if key != "access_rights" && key != "token" {
            let span = doc.key(key).and_then(|k| k.span());
            src.error(span, format!("unknown key `{key}`: expected `access_rights` or `token`"));
        }
    }
    if let Some(item) = doc.get("access_rights") {
        match item.as_table_like() {
            None => src.error(item.span(), "`access_rights` must be a table of named rights"),
            Some(table) => {
                for (name, item) in table.iter() {
                    let span = item.span();
                    let Ok(v) = item.clone().into_value() else {
                        sink.source().error(span, format!("access right `{name}` must be a table"));
                        continue;
                    };
                    match SerdeRight::deserialize(v.into_deserializer()) {
                        Ok(r) => sink.right(RawRight {
                            name: Cow::Owned(name.to_string()),
                            span: span.unwrap_or(0..0),
                            actions: r.actions.into_iter().map(SpannedText::owned).collect(),
                            routes: r.routes.into_iter().map(SpannedText::owned).collect(),
                        }),
                        Err(e) => sink.source().toml_error(&e, span),
                    }
                }
            }
        }
    }
    if let Some(item) = doc.get("token") {
        match item.as_array_of_tables() {
            None => sink.source().error(item.span(), "`token` must be written as [[token]] tables"),
            Some(array) => {
                for table in array.iter() {
                    let span = table.span();
                    let mut table = table.clone();
                    let keys = token_keys(&mut table, span.clone(), sink.source());
                    let Ok(v) = Item::Table(table).into_value() else {
                        sink.source().error(span, "a [[token]] must be a table");
                        continue;
                    };
                    match SerdeToken::deserialize(v.into_deserializer()) {
                        Ok(t) => {
                            let Some((token, token_sha256, expires)) = keys else { continue };
                            let span = span.unwrap_or(0..0);
                            let line = sink.source().line_of(span.start) as u32;
                            sink.token(RawToken {
                                span,
                                line,
                                name: SpannedText::owned(t.name),
                                active: t.active,
                                token,
                                token_sha256,
                                ip_restriction: t.ip_restriction.into_iter().map(SpannedText::owned).collect(),
                                access_right: SpannedText::owned(t.access_right),
                                expires,
                            });
                        }
                        Err(e) => sink.source().toml_error(&e, span),
                    }
                }
            }
        }
    }
    // Structural errors are recorded; the tables that did read are still
    // validated, so one pass reports every error.
    Some(())
}

/// `token`, `token_sha256` and `expires` of a `[[token]]`, taken out of
/// `table` and type-checked by hand, with errors that say where and what is
/// wrong but never quote the value. `None` when one of them is mistyped.
#[allow(clippy::type_complexity)]
fn token_keys<'a>(
    table: &mut toml_edit::Table,
    at: Option<Range<usize>>,
    src: &mut Source<'_>,
) -> Option<(Option<SpannedText<'a>>, Option<RawDigests<'a>>, Option<SpannedText<'a>>)> {
    let mut ok = true;
    let mut string = |item: Option<&Value>, src: &mut Source<'_>, what: &str| match item {
        Some(v @ Value::String(s)) => {
            Some(SpannedText { text: Cow::Owned(s.value().clone()), span: v.span().unwrap_or(0..0) })
        }
        other => {
            src.error(other.and_then(Value::span).or(at.clone()), format!("{what} (its value is not shown)"));
            ok = false;
            None
        }
    };
    let token =
        table.remove("token").and_then(|item| string(item.as_value(), src, "`token` must be a string in quotes"));
    let sha = "`token_sha256` must be a string of 64 hex digits in quotes, or a list of them";
    let token_sha256 = table.remove("token_sha256").and_then(|item| match item.as_value() {
        Some(Value::Array(a)) => {
            let digests = a.iter().filter_map(|v| string(Some(v), src, sha)).collect();
            Some(RawDigests { span: a.span().unwrap_or(0..0), list: true, digests })
        }
        v => {
            let one = string(v, src, sha)?;
            Some(RawDigests { span: one.span.clone(), list: false, digests: vec![one] })
        }
    });
    let expires = table.remove("expires").and_then(|item| match item.as_value() {
        Some(Value::Datetime(d)) => {
            Some(SpannedText { text: Cow::Owned(d.value().to_string()), span: d.span().unwrap_or(0..0) })
        }
        v => string(v, src, EXPIRES_FORMAT),
    });
    ok.then_some((token, token_sha256, expires))
}

const EXPIRES_FORMAT: &str =
    "`expires` must be an RFC 3339 date-time with a time zone, e.g. 2027-06-30T00:00:00Z, or \"never\"";

/// Validates each table as it arrives and builds the table from it; every
/// error is recorded, and any error means no table.
struct Builder<'a> {
    src: Source<'a>,
    table: TableBuilder,
    /// Right name to its index in the table.
    rights: FxHashMap<Box<str>, u16>,
    /// Rights past the 65,535 the table can number: how many, where the
    /// first one is, and their names (tokens naming them add no error).
    over_limit: Option<(usize, Range<usize>, FxHashSet<Box<str>>)>,
    /// The previous token's restriction, as written: the common case of the
    /// same list line after line costs no parsing.
    last_restriction: Option<(Vec<SpannedText<'a>>, u32)>,
    /// Tokens naming a right not seen yet (rights may follow tokens).
    pending: Vec<RawToken<'a>>,
    warnings: Vec<ConfigError>,
}

impl<'a> Builder<'a> {
    fn new(src: Source<'a>) -> Self {
        // A token takes about 190 bytes of file: size the table once.
        let table = TableBuilder::with_capacity(src.text().len() / 190);
        Self {
            src,
            table,
            rights: FxHashMap::default(),
            over_limit: None,
            last_restriction: None,
            pending: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn finish(mut self) -> Result<Loaded, ConfigErrors> {
        for t in std::mem::take(&mut self.pending) {
            self.add_token(t, true);
        }
        if let Some((n, first, _)) = self.over_limit.take() {
            let msg = format!(
                "the file defines {} access rights, more than the {MAX_RIGHTS} allowed; this is the first one past \
                 the limit",
                n + MAX_RIGHTS
            );
            self.src.error(Some(first), msg);
        }
        if self.table.is_empty() && self.table.rights() == 0 && !self.src.has_errors() {
            // Most likely a write caught at its start (truncated, not yet
            // written): applying it would revoke every token at once.
            self.src.error(None, "the token file defines no access right and no token; an empty file is not applied");
        }
        if self.src.has_errors() {
            return Err(ConfigErrors(self.src.into_errors()));
        }
        Ok(Loaded { table: self.table.finish(), warnings: self.warnings })
    }

    fn add_token(&mut self, t: RawToken<'a>, last_chance: bool) {
        let Some(&right) = self.rights.get(t.access_right.text.as_ref()) else {
            if self.over_limit.as_ref().is_some_and(|(_, _, names)| names.contains(t.access_right.text.as_ref())) {
                // Already an error, reported once.
                self.check_values(&t);
            } else if last_chance {
                self.src.error(
                    Some(t.access_right.span.clone()),
                    format!("access right `{}` is not defined in [access_rights]", shown(&t.access_right.text)),
                );
                self.check_values(&t);
            } else {
                self.pending.push(t);
            }
            return;
        };
        let Some((digests, expires, restriction)) = self.check_values(&t) else { return };
        let name = t.name.text.as_ref();
        let new = TokenRow { digests: &digests, name, active: t.active, expires, right, restriction, line: t.line };
        match self.table.insert(new) {
            Ok(()) => {}
            Err(Duplicate { name: same_name, token: same_token, full }) => {
                if let Some(first_line) = same_name {
                    let msg = format!("duplicate name `{}`: first used at line {first_line}", shown(name));
                    self.src.error(Some(t.name.span.clone()), msg);
                }
                if let Some((k, first_name, first_line)) = same_token {
                    let at = match (&t.token_sha256, &t.token) {
                        (Some(d), _) => d.digests.get(k).map(|s| s.span.clone()),
                        (None, p) => p.as_ref().map(|s| s.span.clone()),
                    };
                    let msg = format!(
                        "duplicate token: `{}` is the same token as `{}` at line {first_line}",
                        shown(name),
                        shown(&first_name)
                    );
                    self.src.error(at, msg);
                }
                if full {
                    self.src.error(Some(t.span.clone()), "too many tokens or secrets for one table (2^31)");
                }
            }
        }
    }

    /// The digests, expiry and restriction of a token, recording what is
    /// wrong (the name too). Only a missing or bad digest stops the token
    /// from being entered: the others are still checked for duplicates (the
    /// table is not used then).
    fn check_values(&mut self, t: &RawToken<'a>) -> Option<(Vec<TokenHash>, Option<SystemTime>, u32)> {
        let name = t.name.text.as_ref();
        check_name(&mut self.src, "token name", name, &t.name.span);
        let digests = match (&t.token, &t.token_sha256) {
            (Some(_), Some(d)) => {
                self.src.error(Some(d.span.clone()), "give `token` or `token_sha256`, not both");
                None
            }
            (None, None) => {
                let msg = format!("token `{}` needs `token_sha256` (or `token`)", shown(name));
                self.src.error(Some(t.span.clone()), msg);
                None
            }
            (None, Some(d)) => self.digests(d),
            (Some(p), None) => {
                if p.text.is_empty() {
                    self.src.error(Some(p.span.clone()), "`token` must not be empty");
                    None
                } else {
                    let msg = format!(
                        "token `{}` is stored in plain text; store `token_sha256` instead (tokengate token hash)",
                        shown(name)
                    );
                    self.warn(p.span.start, msg);
                    Some(vec![TokenHash::of(&Token(p.text.as_bytes()))])
                }
            }
        };
        let restriction = self.restriction(&t.ip_restriction);
        let expires = match &t.expires {
            None => {
                // Required, so that a file cut short just before this line
                // is refused instead of granting a token with no end.
                let msg = format!(
                    "token `{}` has no `expires`: add `expires = \"never\"` for no end, or a date-time such as \
                     `expires = 2027-06-30T00:00:00Z`",
                    shown(name)
                );
                self.src.error(Some(t.span.clone()), msg);
                None
            }
            Some(e) if e.text == "never" => None,
            Some(e) => {
                let at = parse_rfc3339(&e.text);
                if at.is_none() {
                    self.src.error(Some(e.span.clone()), EXPIRES_FORMAT);
                }
                at
            }
        };
        Some((digests?, expires, restriction.unwrap_or(0)))
    }

    /// A warning for `check` and the load's log, at `at` (a byte offset).
    fn warn(&mut self, at: usize, message: String) {
        let (line, column) = self.src.line_col(at);
        self.warnings.push(ConfigError { file: self.src.path().to_path_buf(), line, column, message });
    }

    /// The digests of `token_sha256`: 1 to 4, each 64 hex digits, distinct.
    fn digests(&mut self, d: &RawDigests<'a>) -> Option<Vec<TokenHash>> {
        if d.digests.is_empty() {
            self.src.error(Some(d.span.clone()), "`token_sha256` lists no digest; give at least one");
            return None;
        }
        if let Some(fifth) = d.digests.get(MAX_SECRETS) {
            let msg = format!(
                "`token_sha256` lists {} digests; a token has at most {MAX_SECRETS} secrets (remove the oldest, at the end)",
                d.digests.len()
            );
            self.src.error(Some(fifth.span.clone()), msg);
            return None;
        }
        let mut out = Vec::with_capacity(d.digests.len());
        let mut ok = true;
        for (k, text) in d.digests.iter().enumerate() {
            match TokenHash::from_hex(text.text.trim()) {
                Some(h) if out.contains(&h) => {
                    let first = out.iter().position(|o| *o == h).unwrap_or(0);
                    let msg = format!("`token_sha256` lists the same digest twice (positions {first} and {k})");
                    self.src.error(Some(text.span.clone()), msg);
                    ok = false;
                }
                Some(h) => out.push(h),
                None => {
                    self.src.error(
                        Some(text.span.clone()),
                        "`token_sha256` must be 64 hex digits (the SHA-256 of the token)",
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn restriction(&mut self, entries: &[SpannedText<'a>]) -> Option<u32> {
        if let Some((text, r)) = &self.last_restriction {
            if text.len() == entries.len() && text.iter().zip(entries).all(|(a, b)| a.text == b.text) {
                return Some(*r);
            }
        }
        let mut nets = Vec::with_capacity(entries.len());
        let mut ok = true;
        for entry in entries {
            match parse_cidr(&entry.text) {
                Some(n) => nets.push(n),
                None => {
                    ok = false;
                    self.src.error(Some(entry.span.clone()), format!("{:?} is not an IP address or CIDR", entry.text));
                }
            }
        }
        if !ok {
            return None;
        }
        let r = self.table.restriction(nets);
        self.last_restriction = Some((entries.to_vec(), r));
        Some(r)
    }
}

/// Records what is wrong with a token or access right name: empty, longer
/// than [`MAX_NAME_BYTES`], or holding a character that is not printable
/// ([`unprintable`]). Names reach logs, metrics labels, `/tokens` and
/// terminals, where such characters forge or hide text.
fn check_name(src: &mut Source<'_>, what: &str, name: &str, span: &Range<usize>) {
    if name.trim().is_empty() {
        src.error(Some(span.clone()), format!("{what} must not be empty"));
    } else if let Some(c) = name.chars().find(|&c| unprintable(c)) {
        let msg = format!(
            "{what} {} holds the character U+{:04X}, which is not allowed: names hold printable characters only \
             (no control characters, line separators or bidirectional controls)",
            shown(name),
            u32::from(c)
        );
        src.error(Some(span.clone()), msg);
    } else if name.len() > MAX_NAME_BYTES {
        src.error(
            Some(span.clone()),
            format!("{what} is {} bytes long; at most {MAX_NAME_BYTES} are allowed", name.len()),
        );
    }
}

/// The characters a name may not hold: control characters (C0, DEL, C1),
/// the line and paragraph separators, and the bidirectional controls that
/// reorder what a terminal shows.
pub fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{061C}' | '\u{200E}' | '\u{200F}')
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// A name as messages and `token list` show it: unprintable characters
/// escaped (`\u{1b}`), everything else as it is.
pub fn shown(name: &str) -> Cow<'_, str> {
    if !name.chars().any(unprintable) {
        return Cow::Borrowed(name);
    }
    Cow::Owned(
        name.chars().map(|c| if unprintable(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect(),
    )
}

impl<'a> Sink<'a> for Builder<'a> {
    fn right(&mut self, r: RawRight<'a>) {
        check_name(&mut self.src, "access right name", &r.name, &r.span);
        let mut actions = Vec::new();
        let mut any = false;
        for a in &r.actions {
            let v = a.text.as_ref();
            if v == "*" {
                any = true;
            } else if v.is_empty() || !v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                self.src.error(
                    Some(a.span.clone()),
                    format!("{v:?} is not an XMLAPI ACTION name (letters, digits, _) or \"*\""),
                );
            } else {
                if is_minting_action(v.as_bytes()) {
                    let msg = format!(
                        "access right `{}` names {}: its tokens can have the scanner mint a REST token of the \
                         gateway's own credential, usable for 10 minutes past every check of the gateway (\"*\" \
                         never covers it; keep it only where that is meant)",
                        shown(&r.name),
                        v.to_ascii_uppercase()
                    );
                    self.warn(a.span.start, msg);
                }
                actions.push(v.to_ascii_uppercase().into_boxed_str());
            }
        }
        let mut routes = Vec::new();
        for rt in &r.routes {
            match RoutePattern::parse(&rt.text) {
                Ok(p) => {
                    if p.names_minting_path() {
                        let msg = format!(
                            "access right `{}` allows `{p}`, a REST login: its tokens can obtain a scanner \
                             credential of the gateway's own, usable past every check of the gateway (a glob with \
                             `*` never covers it; keep it only where that is meant)",
                            shown(&r.name)
                        );
                        self.warn(rt.span.start, msg);
                    }
                    routes.push(p)
                }
                Err(msg) => self.src.error(Some(rt.span.clone()), msg),
            }
        }
        let actions = if any { Actions::Any } else { Actions::Listed(actions.into()) };
        let right = Arc::new(AccessRight { name: r.name.as_ref().into(), actions, routes: routes.into() });
        let Some(index) = self.table.add_right(right) else {
            // Reported once, at the end, with the count: not once per right.
            let over = self.over_limit.get_or_insert_with(|| (0, r.span.clone(), FxHashSet::default()));
            over.0 += 1;
            over.2.insert(r.name.as_ref().into());
            return;
        };
        self.rights.insert(r.name.as_ref().into(), index);
    }

    fn token(&mut self, t: RawToken<'a>) {
        self.add_token(t, false);
    }

    fn source(&mut self) -> &mut Source<'a> {
        &mut self.src
    }
}

/// RFC 3339 with an offset (`Z` or `+hh:mm`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[access_rights.read-only]
actions = ["TARGETDATA", "scannerdata"]
routes = ["GET /opi/rest/outscan/*"]

[access_rights.admin]
actions = ["*"]
routes = ["* /*"]

[[token]]
name = "splunk"
active = true
token_sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
ip_restriction = ["203.0.113.7", "10.20.0.0/16", "2001:db8::/48"]
access_right = "read-only"
expires = 2027-06-30T00:00:00Z

[[token]]
name = "ops"
active = false
token = "plain"
ip_restriction = []
access_right = "admin"
expires = "never"
"#;

    fn parse_str(text: &str) -> Result<Loaded, ConfigErrors> {
        parse(Path::new("tokens.toml"), text)
    }

    #[test]
    fn a_good_file_loads_and_warns_about_plaintext() {
        let l = parse_str(GOOD).unwrap();
        assert_eq!(l.table.len(), 2);
        let e = l.table.get(&TokenHash::of(&Token(b"secret"))).unwrap();
        assert_eq!(e.name(), "splunk");
        assert!(e.right().actions.allows(b"SCANNERDATA"));
        assert!(e.expires().is_some());
        assert!(l.table.get(&TokenHash::of(&Token(b"plain"))).is_some());
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].to_string().starts_with("tokens.toml:21:9: token `ops` is stored in plain text"));
        assert!(!l.warnings[0].message.contains("\"plain\""));
    }

    #[test]
    fn a_right_naming_a_credential_minting_call_is_warned_about_where_it_names_it() {
        let text = r#"[access_rights.everything]
actions = ["*"]
routes = ["* /*", "POST /opi/rest/*"]

[access_rights.minter]
actions = ["TARGETDATA", "getRestToken"]
routes = ["GET /opi/rest/outscan/*", "POST /opi/rest/auth/login"]
"#;
        let l = parse_str(text).unwrap();
        let w: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 2, "wildcards do not cover them, so only the naming right is warned about: {w:?}");
        assert!(w[0].starts_with("tokens.toml:6:26: access right `minter` names GETRESTTOKEN"), "{w:?}");
        assert!(
            w[1].starts_with("tokens.toml:7:38: access right `minter` allows `POST /opi/rest/auth/login`"),
            "{w:?}"
        );
    }

    fn errors(text: &str) -> Vec<String> {
        parse_str(text).unwrap_err().0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn every_error_is_reported_with_its_location() {
        let text = r#"[access_rights.r]
actions = ["TARGETDATA", "BAD NAME"]
routes = ["GET nopath"]

[[token]]
name = "a"
active = true
token_sha256 = "xyz"
ip_restriction = ["10.0.0.0/33"]
access_right = "nope"
expires = "never"

[[token]]
name = "a"
active = true
token = "t"
ip_restriction = []
access_right = "r"
expires = "never"
ip_restrictions = ["1.2.3.4"]

[[token]]
name = "c"
ip_restriction = []
access_right = "r"
expires = "never"
token = "t"

[[token]]
name = "d"
active = "yes"
token = "u"
ip_restriction = []
access_right = "r"
expires = "never"

[[token]]
name = "e"
active = true
token = "v"
ip_restriction = []
access_right = "r"
expires = 2027-01-01

[[token]]
name = "f"
active = true
token = "v"
ip_restriction = []
access_right = "r"

[stray]
x = 1
"#;
        let errs = errors(text);
        let want = [
            "tokens.toml:2:26: \"BAD NAME\" is not an XMLAPI ACTION name",
            "tokens.toml:3:11: route \"GET nopath\": the path glob must start with '/'",
            "tokens.toml:8:16: `token_sha256` must be 64 hex digits",
            "tokens.toml:9:19: \"10.0.0.0/33\" is not an IP address or CIDR",
            "tokens.toml:10:16: access right `nope` is not defined",
            "tokens.toml:20:1: unknown field `ip_restrictions`",
            "tokens.toml:22:1: missing field `active`",
            "tokens.toml:31:10: invalid type: string \"yes\", expected a boolean",
            "tokens.toml:43:11: `expires` must be an RFC 3339 date-time",
            "tokens.toml:45:1: token `f` has no `expires`: add `expires = \"never\"` for no end",
            "tokens.toml:48:9: duplicate token: `f` is the same token as `e` at line 37",
            "tokens.toml:52:2: unknown key `stray`",
        ];
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        for (got, want) in errs.iter().zip(want) {
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn duplicate_name_and_plain_vs_digest_duplicate() {
        let text = r#"[access_rights.r]
[[token]]
name = "a"
active = true
token = "secret"
ip_restriction = []
access_right = "r"
expires = "never"
[[token]]
name = "a"
active = true
token_sha256 = "2BB80D537B1DA3E38BD30361AA855686BDE0EACD7162FEF6A25FE97BF527A25B"
ip_restriction = []
access_right = "r"
expires = "never"
"#;
        let errs = errors(text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].starts_with("tokens.toml:10:8: duplicate name `a`: first used at line 2"));
        assert!(errs[1].starts_with("tokens.toml:12:16: duplicate token: `a` is the same token as `a` at line 2"));
        assert!(!errs.iter().any(|e| e.contains("secret")));
    }

    #[test]
    fn syntax_error_has_a_location() {
        let errs = errors("[[token]]\nname = \"a\nactive = true\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("tokens.toml:2:"), "{errs:?}");
    }

    #[test]
    fn a_file_cut_short_is_invalid() {
        // A write that stopped after access_right, before ip_restriction.
        let cut = GOOD.split("ip_restriction = []").next().unwrap();
        let errs = errors(cut);
        assert!(errs.iter().any(|e| e.contains("missing field `ip_restriction`")), "{errs:?}");
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn errors_about_a_secret_never_quote_it() {
        let secret = "1234567890987654321";
        let token = |line: &str| {
            format!(
                "[access_rights.r]\n[[token]]\nname = \"a\"\nactive = true\n{line}\nip_restriction = []\n\
                 access_right = \"r\"\nexpires = \"never\"\n"
            )
        };
        for (line, want) in [
            (format!("token = {secret}"), "5:9: `token` must be a string in quotes"),
            (format!("token_sha256 = {secret}"), "5:16: `token_sha256` must be a string of 64 hex digits"),
            (format!("token_sha256 = [\"{}\", {secret}]", "ab".repeat(32)), "5:85: `token_sha256` must be a string"),
            (format!("token = {secret}.5"), "5:9: `token` must be a string in quotes"),
            (format!("token = [{secret}]"), "5:9: `token` must be a string in quotes"),
            (format!("token = {{ x = {secret} }}"), "5:9: `token` must be a string in quotes"),
            (format!("token = \"{secret}"), "5:"),
            (format!("token = {secret}abc"), "5:"),
            (format!("token = x{secret}"), "5:"),
            (format!("token = '{secret}"), "5:"),
            // Unterminated: toml_edit points at the end of the file.
            (format!("token = \"\"\"{secret}"), "9:1: invalid multiline basic string"),
            (format!("token_sha256 = \"{secret}\""), "5:16: `token_sha256` must be 64 hex digits"),
        ] {
            let text = token(&line);
            let errs: Vec<String> =
                parse(Path::new("t.toml"), &text).unwrap_err().0.iter().map(|e| e.to_string()).collect();
            assert!(errs.iter().any(|e| e.starts_with(&format!("t.toml:{want}"))), "{line}: {errs:#?}");
            assert!(!errs.iter().any(|e| e.contains(secret) || e.contains("987654")), "{line}: {errs:#?}");
        }
    }
}

/// The property of interface.md §4: a token file cut short anywhere is
/// either refused or grants no more than the whole file.
#[cfg(test)]
mod cut_tests {
    use super::super::table::TokenRef;
    use super::*;
    use crate::rights::Actions;
    use proptest::prelude::*;

    /// Both readers on their own: the scanner (through `parse`, which uses
    /// it whenever it can) and the general reader alone.
    fn both_readers(text: &str) -> [Result<Loaded, ConfigErrors>; 2] {
        let path = Path::new("t.toml");
        let mut general = Builder::new(Source::new(path, text));
        read_toml(&mut general);
        [parse(path, text), general.finish()]
    }

    /// "Grants no more": every right of `cut` exists in `whole` by name
    /// with no ACTION or route more; every token of `cut` is, by each of
    /// its digests, the token of the same name in `whole`, with the same
    /// right, active only if that one is, expiring no later, and allowed
    /// from no address that one is not.
    fn grants_no_more(cut: &TokenTable, whole: &TokenTable) -> Result<(), String> {
        let no_more = |c: &AccessRight, w: &AccessRight| match (&c.actions, &w.actions) {
            (_, Actions::Any) => c.routes.iter().all(|r| w.routes.contains(r)),
            (Actions::Any, Actions::Listed(_)) => false,
            (Actions::Listed(c_list), Actions::Listed(w_list)) => {
                c_list.iter().all(|a| w_list.contains(a)) && c.routes.iter().all(|r| w.routes.contains(r))
            }
        };
        for c in cut.rights() {
            let w = whole.rights().iter().find(|w| w.name == c.name).ok_or(format!("right {} is new", c.name))?;
            if !no_more(c, w) {
                return Err(format!("right {} allows more: {c:?} vs {w:?}", c.name));
            }
        }
        for c in cut.entries() {
            for d in c.digests() {
                let w = whole.get(&d).ok_or(format!("token {} has a digest the whole file has not", c.name()))?;
                let ips = |t: &TokenRef<'_>| t.ip_restriction().nets().to_vec();
                let (c_ips, w_ips) = (ips(&c), ips(&w));
                let checks = [
                    (w.name() == c.name(), "another name"),
                    (!c.active() || w.active(), "active"),
                    (
                        match (c.expires(), w.expires()) {
                            (_, None) => true,
                            (None, Some(_)) => false,
                            (Some(ce), Some(we)) => ce <= we,
                        },
                        "expires later",
                    ),
                    (
                        w_ips.is_empty() || (!c_ips.is_empty() && c_ips.iter().all(|n| w_ips.contains(n))),
                        "more addresses",
                    ),
                    (c.right().name == w.right().name && no_more(c.right(), w.right()), "more right"),
                ];
                if let Some((_, why)) = checks.iter().find(|(ok, _)| !ok) {
                    return Err(format!("token {}: {why}", c.name()));
                }
            }
        }
        Ok(())
    }

    #[derive(Debug, Clone)]
    struct GenRight {
        actions: Vec<&'static str>,
        routes: Vec<&'static str>,
        multi_line: bool,
    }

    #[derive(Debug, Clone)]
    struct GenToken {
        active: bool,
        digests: usize,
        plain: bool,
        ips: Vec<&'static str>,
        right: usize,
        expires: &'static str,
        order: Vec<usize>,
        multi_line: bool,
    }

    /// A token file in either reader's shape: `escaped` writes names with a
    /// TOML escape, which only the general reader reads.
    fn render(rights: &[GenRight], tokens: &[GenToken], escaped: bool, comments: bool) -> String {
        let list = |items: &[&str], multi: bool| {
            let q: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
            if multi && !q.is_empty() {
                format!("[\n  {},\n]", q.join(",\n  # between\n  "))
            } else {
                format!("[{}]", q.join(", "))
            }
        };
        let mut out = String::from("# a token file\n");
        for (i, r) in rights.iter().enumerate() {
            out += &format!("[access_rights.r{i}]\n");
            out += &format!("actions = {}\n", list(&r.actions, r.multi_line));
            if comments {
                out += "# routes next\n";
            }
            out += &format!("routes = {} # trailing\n\n", list(&r.routes, false));
        }
        for (i, t) in tokens.iter().enumerate() {
            out += "[[token]]\n";
            let name = if escaped { format!("\"t\\u0031{i}\"") } else { format!("\"t1{i}\"") };
            let secret = |k: usize| format!("{:064x}", (i * 8 + k + 1) as u128 * 0x9e37_79b9_7f4a_7c15);
            let digests: Vec<String> = (0..t.digests).map(secret).collect();
            let digests: Vec<&str> = digests.iter().map(String::as_str).collect();
            let keys = [
                format!("name = {name}"),
                format!("active = {}", t.active),
                if t.plain {
                    format!("token = \"plain-{i}\"")
                } else if t.digests == 1 {
                    format!("token_sha256 = \"{}\"", digests[0])
                } else {
                    format!("token_sha256 = {}", list(&digests, t.multi_line))
                },
                format!("ip_restriction = {}", list(&t.ips, t.multi_line)),
                format!("access_right = \"r{}\"", t.right % rights.len()),
                format!("expires = {}", t.expires),
            ];
            for &k in &t.order {
                out += &keys[k];
                out += if comments { " # note\n" } else { "\n" };
            }
            out += "\n";
        }
        out
    }

    fn gen_right() -> impl Strategy<Value = GenRight> {
        (
            proptest::sample::subsequence(vec!["TARGETDATA", "SCANNERDATA", "REPORTTARGETDATA", "*"], 0..=3),
            proptest::sample::subsequence(vec!["GET /opi/rest/outscan/*", "* /*", "POST /opi/rest/x"], 0..=2),
            any::<bool>(),
        )
            .prop_map(|(actions, routes, multi_line)| GenRight { actions, routes, multi_line })
    }

    fn gen_token() -> impl Strategy<Value = GenToken> {
        (
            any::<bool>(),
            1..=3usize,
            proptest::bool::weighted(0.2),
            proptest::sample::subsequence(vec!["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"], 0..=2),
            0..3usize,
            prop_oneof![
                Just("\"never\""),
                Just("2027-06-30T00:00:00Z"),
                Just("2020-01-01T00:00:00Z"),
                Just("\"2030-01-01T12:00:00+02:00\""),
                Just("2031-05-05T10:20:30.5-01:00"),
            ],
            Just((0..6).collect::<Vec<usize>>()).prop_shuffle(),
            any::<bool>(),
        )
            .prop_map(|(active, digests, plain, ips, right, expires, order, multi_line)| GenToken {
                active,
                digests,
                plain,
                ips,
                right,
                expires,
                order,
                multi_line,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn a_file_cut_anywhere_is_refused_or_grants_no_more(
            rights in proptest::collection::vec(gen_right(), 1..=2),
            tokens in proptest::collection::vec(gen_token(), 1..=3),
            escaped in any::<bool>(),
            comments in any::<bool>(),
        ) {
            let text = render(&rights, &tokens, escaped, comments);
            let [fast, general] = both_readers(&text);
            let whole = fast.unwrap_or_else(|e| panic!("{e}\n{text}"));
            prop_assert!(general.is_ok(), "{text}");
            prop_assert_eq!(whole.table.len(), tokens.len());
            for at in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
                let cut = &text[..at];
                for loaded in both_readers(cut).into_iter().flatten() {
                    if let Err(why) = grants_no_more(&loaded.table, &whole.table) {
                        prop_assert!(false, "cut at {at} grants more ({why}):\n{cut}\n---- whole:\n{text}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_check_sees_a_cut_that_grants_more() {
        // The comparison itself: a file that is the whole minus its expiry
        // (what a cut before `expires` would give if it were optional).
        let whole = "[access_rights.r]\n[[token]]\nname = \"a\"\nactive = true\ntoken = \"x\"\nip_restriction = [\"10.0.0.0/8\"]\naccess_right = \"r\"\nexpires = 2020-01-01T00:00:00Z\n";
        let w = parse(Path::new("t.toml"), whole).unwrap().table;
        for (looser, why) in [
            (whole.replace("2020-01-01T00:00:00Z", "\"never\""), "expires later"),
            (whole.replace("[\"10.0.0.0/8\"]", "[]"), "more addresses"),
            (whole.replace("[access_rights.r]", "[access_rights.r]\nactions = [\"*\"]"), "allows more"),
            (whole.replace("name = \"a\"", "name = \"b\""), "another name"),
        ] {
            let c = parse(Path::new("t.toml"), &looser).unwrap().table;
            let err = grants_no_more(&c, &w).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let w_inactive = parse(Path::new("t.toml"), &whole.replace("active = true", "active = false")).unwrap().table;
        assert!(grants_no_more(&w, &w_inactive).unwrap_err().contains("active"));
        assert!(grants_no_more(&w, &w).is_ok());
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(Path::new("t.toml"), text).unwrap_err().0.iter().map(|e| e.to_string()).collect()
    }

    fn token(name: &str, sha: &str) -> String {
        format!(
            "[[token]]\nname = {name}\nactive = true\ntoken_sha256 = {sha}\nip_restriction = []\n\
             access_right = \"r\"\nexpires = \"never\"\n"
        )
    }

    const D1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn names_with_unprintable_characters_or_over_128_bytes_are_refused_where_they_are() {
        let sha = format!("\"{D1}\"");
        for (name, want) in [
            ("\"a\\u001b[31mb\"".to_string(), "t.toml:3:8: token name a\\u{1b}[31mb holds the character U+001B"),
            ("\"a\\nb\"".to_string(), "t.toml:3:8: token name a\\u{a}b holds the character U+000A"),
            ("\"evil\\u202Etxt\"".to_string(), "t.toml:3:8: token name evil\\u{202e}txt holds the character U+202E"),
            ("\"a\\u0085\"".to_string(), "U+0085"),
            (format!("\"{}\"", "x".repeat(129)), "t.toml:3:8: token name is 129 bytes long; at most 128"),
            (format!("\"{}\"", "é".repeat(65)), "token name is 130 bytes long"),
            ("\" \"".to_string(), "t.toml:3:8: token name must not be empty"),
        ] {
            let text = format!("[access_rights.r]\n{}", token(&name, &sha));
            let errs = errors(&text);
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].contains(want), "{errs:?} wants {want}");
            assert!(!errs[0].chars().any(unprintable), "{errs:?}");
        }
        // At the limit, and any printable character: fine.
        for name in ["x".repeat(128), "é".repeat(64), "splunk-export ü 東京 \"q\"".into()] {
            let text = format!("[access_rights.r]\n{}", token(&format!("{name:?}"), &format!("\"{D1}\"")));
            assert!(parse(Path::new("t.toml"), &text).is_ok(), "{name}");
        }
        // Right names too (only the general reader reads a quoted key).
        let text = format!(
            "[access_rights.\"r\\u0007\"]\n{}",
            token("\"a\"", &format!("\"{D1}\"")).replace("\"r\"", "\"r\\u0007\"")
        );
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.starts_with("t.toml:1:1: access right name r\\u{7} holds the character U+0007")),
            "{errs:?}"
        );
        let long = "r".repeat(129);
        let text = format!(
            "[access_rights.{long}]\n{}",
            token("\"a\"", &format!("\"{D1}\"")).replace("\"r\"", &format!("\"{long}\""))
        );
        assert!(errors(&text).iter().any(|e| e.contains("access right name is 129 bytes long")));
    }

    #[test]
    fn token_sha256_lists_one_to_four_distinct_digests() {
        let ok = format!("[access_rights.r]\n{}", token("\"a\"", &format!("[\"{D1}\", \"{D2}\"]")));
        let t = parse(Path::new("t.toml"), &ok).unwrap().table;
        let (a, b) = (TokenHash::from_hex(D1).unwrap(), TokenHash::from_hex(D2).unwrap());
        assert_eq!((t.get(&a).unwrap().name(), t.get(&a).unwrap().secret_position()), ("a", 0));
        assert_eq!((t.get(&b).unwrap().name(), t.get(&b).unwrap().secret_position()), ("a", 1));
        assert_eq!(t.get(&a).unwrap().secrets(), 2);
        let five: Vec<String> = (1..=5).map(|i| format!("\"{}\"", i.to_string().repeat(64))).collect();
        for (sha, extra, want) in [
            ("[]".to_string(), String::new(), "t.toml:5:16: `token_sha256` lists no digest"),
            (
                format!("[{}]", five.join(", ")),
                String::new(),
                "t.toml:5:289: `token_sha256` lists 5 digests; a token has at most 4",
            ),
            (
                format!("[\"{D1}\", \"{D2}\", \"{D1}\"]"),
                String::new(),
                "t.toml:5:153: `token_sha256` lists the same digest twice (positions 0 and 2)",
            ),
            (format!("[\"{D1}\", \"xyz\"]"), String::new(), "t.toml:5:85: `token_sha256` must be 64 hex digits"),
            (
                format!("[\"{D1}\", \"{D2}\"]"),
                token("\"b\"", &format!("\"{}\"", D2.to_uppercase())),
                "t.toml:12:16: duplicate token: `b` is the same token as `a` at line 2",
            ),
        ] {
            let text = format!("[access_rights.r]\n{}{extra}", token("\"a\"", &sha));
            let errs = errors(&text);
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].starts_with(want), "{errs:?} wants {want}");
        }
    }

    #[test]
    fn seventy_thousand_rights_load_in_one_pass_with_one_error() {
        let mut text = String::with_capacity(70_000 * 40);
        for i in 0..70_000 {
            text += &format!("[access_rights.r{i}]\nactions = [\"TARGETDATA\"]\n");
        }
        text += &token("\"a\"", &format!("\"{D1}\"")).replace("\"r\"", "\"r69999\"");
        let started = std::time::Instant::now();
        let errs = errors(&text);
        eprintln!("70,000 rights: {:?}", started.elapsed());
        assert_eq!(errs.len(), 1, "{:?}", &errs[..errs.len().min(3)]);
        assert!(
            errs[0].starts_with("t.toml:131071:1: the file defines 70000 access rights, more than the 65535 allowed"),
            "{errs:?}"
        );
        // The same number of distinct rights under the limit loads.
        let under: String = (0..65_535).map(|i| format!("[access_rights.r{i}]\n")).collect::<String>()
            + &token("\"a\"", &format!("\"{D1}\"")).replace("\"r\"", "\"r65534\"");
        assert_eq!(parse(Path::new("t.toml"), &under).unwrap().table.rights().len(), 65_535);
    }
}
