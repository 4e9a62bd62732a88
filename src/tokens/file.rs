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

use rustc_hash::FxHashMap;
use serde::de::IntoDeserializer;
use serde::Deserialize;
use serde_spanned::Spanned;
use toml_edit::{ImDocument, Item};

use super::lines;
use super::raw::{RawRight, RawToken, Sink, SpannedText};
use super::table::{Duplicate, TableBuilder, Token, TokenHash, TokenRow, TokenTable};
use crate::diagnostic::{ConfigError, ConfigErrors, Source};
use crate::net::parse_cidr;
use crate::rights::{AccessRight, Actions, RoutePattern};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerdeRight {
    #[serde(default)]
    actions: Vec<Spanned<String>>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerdeToken {
    name: Spanned<String>,
    active: bool,
    token: Option<Spanned<String>>,
    token_sha256: Option<Spanned<String>>,
    ip_restriction: Vec<Spanned<String>>,
    access_right: Spanned<String>,
    expires: Option<Spanned<SerdeExpiry>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SerdeExpiry {
    Datetime(toml_edit::Datetime),
    Text(String),
}

/// A token file that validated: its table and any warnings for `check`.
#[derive(Debug)]
pub struct Loaded {
    /// The table, ready to swap in.
    pub table: TokenTable,
    /// Things worth telling an operator that do not make the file invalid
    /// (plaintext tokens).
    pub warnings: Vec<ConfigError>,
}

/// Reads (as the reloader does: not while it is being written) and
/// validates a token file.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    parse(path, &super::read::read_stable(path)?)
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
                    let Ok(v) = Item::Table(table.clone()).into_value() else {
                        sink.source().error(span, "a [[token]] must be a table");
                        continue;
                    };
                    match SerdeToken::deserialize(v.into_deserializer()) {
                        Ok(t) => {
                            let span = span.unwrap_or(0..0);
                            let line = sink.source().line_of(span.start) as u32;
                            let expires = t.expires.map(|e| {
                                let span = e.span();
                                let text = match e.into_inner() {
                                    SerdeExpiry::Datetime(d) => d.to_string(),
                                    SerdeExpiry::Text(s) => s,
                                };
                                SpannedText { text: Cow::Owned(text), span }
                            });
                            sink.token(RawToken {
                                span,
                                line,
                                name: SpannedText::owned(t.name),
                                active: t.active,
                                token: t.token.map(SpannedText::owned),
                                token_sha256: t.token_sha256.map(SpannedText::owned),
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

/// Validates each table as it arrives and builds the table from it; every
/// error is recorded, and any error means no table.
struct Builder<'a> {
    src: Source<'a>,
    table: TableBuilder,
    /// Right name to its index in the table.
    rights: FxHashMap<Box<str>, u16>,
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
            last_restriction: None,
            pending: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn finish(mut self) -> Result<Loaded, ConfigErrors> {
        for t in std::mem::take(&mut self.pending) {
            self.add_token(t, true);
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
            if last_chance {
                self.src.error(
                    Some(t.access_right.span.clone()),
                    format!("access right `{}` is not defined in [access_rights]", t.access_right.text),
                );
                self.check_values(&t);
            } else {
                self.pending.push(t);
            }
            return;
        };
        let Some((digest, expires, restriction)) = self.check_values(&t) else { return };
        let name = t.name.text.as_ref();
        if name.trim().is_empty() {
            self.src.error(Some(t.name.span.clone()), "`name` must not be empty");
        }
        let new = TokenRow { digest, name, active: t.active, expires, right, restriction, line: t.line };
        match self.table.insert(new) {
            Ok(()) => {}
            Err(Duplicate { name: same_name, token: same_token }) => {
                if let Some(first_line) = same_name {
                    let msg = format!("duplicate name `{name}`: first used at line {first_line}");
                    self.src.error(Some(t.name.span.clone()), msg);
                }
                if let Some((first_name, first_line)) = same_token {
                    let at = t.token_sha256.as_ref().or(t.token.as_ref()).map(|s| s.span.clone());
                    let msg =
                        format!("duplicate token: `{name}` is the same token as `{first_name}` at line {first_line}");
                    self.src.error(at, msg);
                }
            }
        }
    }

    /// The digest, expiry and restriction of a token, recording what is
    /// wrong. Only a missing digest stops the token from being entered: the
    /// others are still checked for duplicates (the table is not used then).
    fn check_values(&mut self, t: &RawToken<'a>) -> Option<(TokenHash, Option<SystemTime>, u32)> {
        let name = t.name.text.as_ref();
        let hash = match (&t.token, &t.token_sha256) {
            (Some(_), Some(d)) => {
                self.src.error(Some(d.span.clone()), "give `token` or `token_sha256`, not both");
                None
            }
            (None, None) => {
                self.src.error(Some(t.span.clone()), format!("token `{name}` needs `token_sha256` (or `token`)"));
                None
            }
            (None, Some(d)) => {
                let h = TokenHash::from_hex(d.text.trim());
                if h.is_none() {
                    self.src
                        .error(Some(d.span.clone()), "`token_sha256` must be 64 hex digits (the SHA-256 of the token)");
                }
                h
            }
            (Some(p), None) => {
                if p.text.is_empty() {
                    self.src.error(Some(p.span.clone()), "`token` must not be empty");
                    None
                } else {
                    let (line, column) = self.src.line_col(p.span.start);
                    self.warnings.push(ConfigError {
                        file: self.src.path().to_path_buf(),
                        line,
                        column,
                        message: format!(
                            "token `{name}` is stored in plain text; store `token_sha256` instead (tokengate token hash)"
                        ),
                    });
                    Some(TokenHash::of(&Token(p.text.as_bytes())))
                }
            }
        };
        let restriction = self.restriction(&t.ip_restriction);
        let expires = match &t.expires {
            None => None,
            Some(e) => {
                let at = parse_rfc3339(&e.text);
                if at.is_none() {
                    self.src.error(
                        Some(e.span.clone()),
                        "`expires` must be an RFC 3339 date-time with a time zone, e.g. 2027-06-30T00:00:00Z",
                    );
                }
                at
            }
        };
        Some((hash?, expires, restriction.unwrap_or(0)))
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

impl<'a> Sink<'a> for Builder<'a> {
    fn right(&mut self, r: RawRight<'a>) {
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
                actions.push(v.to_ascii_uppercase().into_boxed_str());
            }
        }
        let mut routes = Vec::new();
        for rt in &r.routes {
            match RoutePattern::parse(&rt.text) {
                Ok(p) => routes.push(p),
                Err(msg) => self.src.error(Some(rt.span.clone()), msg),
            }
        }
        let actions = if any { Actions::Any } else { Actions::Listed(actions.into()) };
        let right = Arc::new(AccessRight { name: r.name.as_ref().into(), actions, routes: routes.into() });
        let Some(index) = self.table.add_right(right) else {
            self.src.error(Some(r.span.clone()), "more than 65535 access rights");
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

[[token]]
name = "a"
active = true
token = "t"
ip_restriction = []
access_right = "r"
ip_restrictions = ["1.2.3.4"]

[[token]]
name = "c"
ip_restriction = []
access_right = "r"
token = "t"

[[token]]
name = "d"
active = "yes"
token = "u"
ip_restriction = []
access_right = "r"

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
            "tokens.toml:18:1: unknown field `ip_restrictions`",
            "tokens.toml:20:1: missing field `active`",
            "tokens.toml:28:10: invalid type: string \"yes\", expected a boolean",
            "tokens.toml:39:11: `expires` must be an RFC 3339 date-time",
            "tokens.toml:44:9: duplicate token: `f` is the same token as `e` at line 33",
            "tokens.toml:48:2: unknown key `stray`",
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
[[token]]
name = "a"
active = true
token_sha256 = "2BB80D537B1DA3E38BD30361AA855686BDE0EACD7162FEF6A25FE97BF527A25B"
ip_restriction = []
access_right = "r"
"#;
        let errs = errors(text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].starts_with("tokens.toml:9:8: duplicate name `a`: first used at line 2"));
        assert!(errs[1].starts_with("tokens.toml:11:16: duplicate token: `a` is the same token as `a` at line 2"));
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
