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
use toml_edit::{ImDocument, Item, TableLike, Value};

use super::lines;
use super::raw::{RawDigests, RawLimits, RawRight, RawToken, RawValue, Sink, SpannedText};
use super::read::{read_stable, ReadError};
use super::state::MAX_SECRETS;
use super::table::{
    Duplicate, TableBuilder, Token, TokenHash, TokenRow, TokenTable, MAX_LIMIT_SETS, MAX_NAME_BYTES, MAX_RIGHTS,
};
use crate::diagnostic::{ConfigError, ConfigErrors, Source};
use crate::net::parse_cidr;
use crate::quota::{Limits, Rate};
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

/// `text` read both ways, for tests and fuzzing: as [`parse`] reads it (the
/// fast scanner whenever it can) and by the general reader alone. The two
/// must agree, tables and errors alike, on any text.
pub fn parse_both_ways(path: &Path, text: &str) -> [Result<Loaded, ConfigErrors>; 2] {
    let mut general = Builder::new(Source::new(path, text));
    read_toml(&mut general);
    [parse(path, text), general.finish()]
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
                    let mut item = item.clone();
                    let limits = item.as_table_like_mut().map(|t| limit_keys(t, &span)).unwrap_or_default();
                    let Ok(v) = item.into_value() else {
                        sink.source().error(span, format!("access right `{name}` must be a table"));
                        continue;
                    };
                    match SerdeRight::deserialize(v.into_deserializer()) {
                        Ok(r) => sink.right(RawRight {
                            name: Cow::Owned(name.to_string()),
                            span: span.unwrap_or(0..0),
                            actions: r.actions.into_iter().map(SpannedText::owned).collect(),
                            routes: r.routes.into_iter().map(SpannedText::owned).collect(),
                            limits,
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
                    let last_required_at =
                        REQUIRED_KEYS.iter().filter_map(|&k| Some(table.get(k)?.span()?.start)).max().unwrap_or(0);
                    let limits = limit_keys(&mut table, &span);
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
                                limits,
                                last_required_at,
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

/// The keys a `[[token]]` must state (but for the choice of `token` or
/// `token_sha256`): a file cut short before the last of them is refused.
const REQUIRED_KEYS: [&str; 7] =
    ["name", "active", "token", "token_sha256", "ip_restriction", "access_right", "expires"];

/// `rate`, `burst` and `concurrency` of a right or a token, taken out of
/// `table` as they are: their types are checked by the validation, which
/// words both readers' errors alike and never quotes a value.
fn limit_keys<'a>(table: &mut dyn TableLike, at: &Option<Range<usize>>) -> RawLimits<'a> {
    let mut take = |key: &str| {
        let item = table.remove(key)?;
        Some(match item.as_value() {
            Some(v @ Value::String(s)) => {
                RawValue::Text(SpannedText { text: Cow::Owned(s.value().clone()), span: v.span().unwrap_or(0..0) })
            }
            Some(v @ Value::Integer(i)) => RawValue::Integer(*i.value(), v.span().unwrap_or(0..0)),
            _ => RawValue::Other(item.span().or(at.clone()).unwrap_or(0..0)),
        })
    };
    RawLimits { rate: take("rate"), burst: take("burst"), concurrency: take("concurrency") }
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
    /// What each right (by its index) sets of `rate`, `burst` and
    /// `concurrency`, for its tokens.
    right_limits: Vec<RightLimits>,
    /// Whether a token past [`MAX_LIMIT_SETS`] distinct sets of limits was
    /// reported (once, not once per token).
    limit_sets_full: bool,
    warnings: Vec<ConfigError>,
}

/// What the validation keeps of one right's limits.
#[derive(Debug, Default)]
struct RightLimits {
    /// Its own, validated; `None` when one was wrong (already an error, so
    /// its tokens are not checked against it).
    limits: Option<Limits>,
    /// Whether it writes a `rate` (valid or not): a token's `burst` may
    /// rest on it.
    rate_written: bool,
    /// When it writes any: the first key's name and span, and where the
    /// last one's value begins (no token naming the right may come before).
    written: Option<(&'static str, Range<usize>, usize)>,
    /// Whether a token above it has been reported.
    reported: bool,
}

/// A token's values, checked.
struct Checked {
    digests: Vec<TokenHash>,
    expires: Option<SystemTime>,
    restriction: u32,
    /// Its own limits (before its right's are merged in); `None` on an error.
    limits: Option<Limits>,
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
            right_limits: Vec::new(),
            limit_sets_full: false,
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
        let checked = self.check_values(&t);
        let limits = self.effective_limits(&t, right, checked.as_ref().and_then(|c| c.limits));
        let Some(Checked { digests, expires, restriction, .. }) = checked else { return };
        let name = t.name.text.as_ref();
        let new = TokenRow {
            digests: &digests,
            name,
            active: t.active,
            expires,
            right,
            restriction,
            limits: limits.unwrap_or(0),
            line: t.line,
        };
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

    /// A token's limits merged over those of its right (by index), checked
    /// against it, and interned: `None` on an error (recorded), so that
    /// the table is not used.
    fn effective_limits(&mut self, t: &RawToken<'a>, right: u16, own: Option<Limits>) -> Option<u16> {
        let name = shown(&t.name.text);
        let r = self.right_limits.get_mut(usize::from(right))?;
        // A right's limits written below a token that names it: a file cut
        // short inside the right would keep the token and drop the limits.
        if let Some((key, span, last_at)) = &r.written {
            if *last_at > t.span.start && !std::mem::replace(&mut r.reported, true) {
                let msg = format!(
                    "access right `{}` sets `{key}` below token `{name}` (line {}), which names it: define an access \
                     right with limits above every token that uses it (a file cut short inside the right would drop \
                     its limits from the tokens above)",
                    shown(&t.access_right.text),
                    t.line,
                );
                self.src.error(Some(span.clone()), msg);
            }
        }
        if let Some(burst) = &t.limits.burst {
            if t.limits.rate.is_none() && !r.rate_written {
                let msg = format!(
                    "`burst` of token `{name}` needs a `rate`, on the token or on its access right `{}`: it is the \
                     size of the rate's bucket",
                    shown(&t.access_right.text)
                );
                self.src.error(Some(burst.span().clone()), msg);
                return None;
            }
        }
        let effective = own?.over(r.limits?);
        match self.table.limits(effective) {
            Some(id) => Some(id),
            None => {
                if !std::mem::replace(&mut self.limit_sets_full, true) {
                    let msg = format!(
                        "the tokens use more than {MAX_LIMIT_SETS} different sets of `rate`, `burst` and \
                         `concurrency`; token `{name}` is the first past the limit"
                    );
                    self.src.error(Some(t.span.clone()), msg);
                }
                None
            }
        }
    }

    /// The `rate`, `burst` and `concurrency` a right or token writes,
    /// checked; `None` on an error (each recorded).
    fn own_limits(&mut self, raw: &RawLimits<'a>) -> Option<Limits> {
        let rate = self.checked(raw.rate.as_ref(), |v| match v {
            RawValue::Text(t) => parse_rate(&t.text),
            _ => Err(RATE_FORMAT.to_string()),
        });
        let count = |key: &'static str| {
            move |v: &RawValue<'a>| match v {
                RawValue::Integer(n, _) => check_count(key, *n),
                _ => Err(count_format(key)),
            }
        };
        let burst = self.checked(raw.burst.as_ref(), count("burst"));
        let concurrency = self.checked(raw.concurrency.as_ref(), count("concurrency"));
        Some(Limits { rate: rate.ok()?, burst: burst.ok()?, concurrency: concurrency.ok()? })
    }

    /// `check` on a value that may be absent, recording its error at it.
    fn checked<T>(
        &mut self,
        v: Option<&RawValue<'a>>,
        check: impl FnOnce(&RawValue<'a>) -> Result<T, String>,
    ) -> Result<Option<T>, ()> {
        let Some(v) = v else { return Ok(None) };
        check(v).map(Some).map_err(|msg| self.src.error(Some(v.span().clone()), msg))
    }

    /// The digests, expiry, restriction and own limits of a token,
    /// recording what is wrong (the name too). Only a missing or bad digest
    /// or a name too long for the table stops the token from being entered:
    /// the others are still checked for duplicates (the table is not used
    /// then).
    fn check_values(&mut self, t: &RawToken<'a>) -> Option<Checked> {
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
        let limits = self.own_limits(&t.limits);
        // After every required key a limit key would be lost without a
        // trace by a file cut short just before it (interface.md §4); above
        // the last one, such a cut drops that required key too and is
        // refused. (Without `expires` the file is refused already.)
        if t.expires.is_some() {
            for (key, v) in t.limits.written().filter(|(_, v)| v.span().start > t.last_required_at) {
                let msg = format!(
                    "`{key}` of token `{}` comes after all its required keys: write `rate`, `burst` and \
                     `concurrency` above its last required key (above `expires`, say), so that a file cut short \
                     just before them is refused rather than read without them",
                    shown(name)
                );
                self.src.error(Some(v.span().clone()), msg);
            }
        }
        let fits = name.len() <= MAX_NAME_BYTES;
        Some(Checked { digests: digests.filter(|_| fits)?, expires, restriction: restriction.unwrap_or(0), limits })
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
        let mut limits = self.own_limits(&r.limits);
        if let (Some(burst), None) = (&r.limits.burst, &r.limits.rate) {
            let msg = format!(
                "`burst` of access right `{}` needs a `rate` on the same right: it is the size of the rate's bucket",
                shown(&r.name)
            );
            self.src.error(Some(burst.span().clone()), msg);
            limits = None;
        }
        let written = r.limits.written().next().map(|(key, v)| {
            let last_at = r.limits.written().map(|(_, v)| v.span().start).max().unwrap_or(0);
            (key, v.span().clone(), last_at)
        });
        let right_limits = RightLimits { limits, rate_written: r.limits.rate.is_some(), written, reported: false };
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
        self.right_limits.push(right_limits);
    }

    fn token(&mut self, t: RawToken<'a>) {
        self.add_token(t, false);
    }

    fn source(&mut self) -> &mut Source<'a> {
        &mut self.src
    }
}

/// The largest `burst`, `concurrency` and N of a `rate`: far above what
/// one token should ever be allowed against a scanner, and low enough that
/// no arithmetic on them can overflow (a bucket's tolerance is burst times
/// the rate's interval, in nanoseconds).
pub const MAX_LIMIT: u32 = 1_000_000;

const RATE_FORMAT: &str =
    "`rate` must be a string N/s, N/m or N/h (requests per second, minute or hour), N a whole number from 1 to \
     1000000, e.g. \"10/s\"";

/// A `rate` as the token file and `token new --rate` take it: `N/s`,
/// `N/m` or `N/h`, N from 1 to [`MAX_LIMIT`], digits only, no spaces.
/// The error never quotes the value.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let plain = text.split_once('/').is_some_and(|(n, unit)| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && matches!(unit, "s" | "m" | "h")
    });
    match Rate::parse(text).filter(|r| plain && r.n <= MAX_LIMIT) {
        Some(r) => Ok(r),
        None => Err(RATE_FORMAT.to_string()),
    }
}

/// A `burst` or `concurrency` (`key`): a whole number from 1 to
/// [`MAX_LIMIT`].
pub fn check_count(key: &str, n: i64) -> Result<u32, String> {
    u32::try_from(n).ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| count_format(key))
}

fn count_format(key: &str) -> String {
    format!("`{key}` must be a whole number from 1 to {MAX_LIMIT}, without quotes")
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

    fn both_readers(text: &str) -> [Result<Loaded, ConfigErrors>; 2] {
        parse_both_ways(Path::new("t.toml"), text)
    }

    /// "Grants no more": every right of `cut` exists in `whole` by name
    /// with no ACTION or route more; every token of `cut` is, by each of
    /// its digests, the token of the same name in `whole`, with the same
    /// right, active only if that one is, expiring no later, allowed from
    /// no address that one is not, and with limits no looser: a rate where
    /// that one has one, no faster and with no larger a burst, and a
    /// concurrency where that one has one, no higher. (A right's own limits
    /// reach requests only through its tokens, so they are compared there.)
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
                let (cl, wl) = (c.limits(), w.limits());
                // c.n / c.per <= w.n / w.per, without rounding.
                let no_faster =
                    |(c, w): (Rate, Rate)| u128::from(c.n) * w.per.as_nanos() <= u128::from(w.n) * c.per.as_nanos();
                let limit_checks = [
                    (wl.rate.is_none() || cl.rate.is_some(), "no rate"),
                    (cl.rate.zip(wl.rate).is_none_or(no_faster), "a higher rate"),
                    (wl.rate.is_none() || cl.burst_or_n() <= wl.burst_or_n(), "a higher burst"),
                    (wl.concurrency.is_none_or(|w| cl.concurrency.is_some_and(|c| c <= w)), "more in flight"),
                ];
                let checks = checks.iter().chain(&limit_checks);
                if let Some((_, why)) = checks.into_iter().find(|(ok, _)| !ok) {
                    return Err(format!("token {}: {why} ({cl:?} vs {wl:?})", c.name()));
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
        limits: GenLimits,
    }

    /// `rate`, `burst` and `concurrency` lines, each there or not.
    #[derive(Debug, Clone, Default)]
    struct GenLimits {
        rate: Option<&'static str>,
        burst: Option<u32>,
        concurrency: Option<u32>,
    }

    impl GenLimits {
        /// The lines, with `burst` only where it has a rate to rest on
        /// (`rate_above`: the right's, for a token).
        fn lines(&self, rate_above: bool) -> Vec<String> {
            let burst = self.burst.filter(|_| rate_above || self.rate.is_some());
            [
                self.rate.map(|r| format!("rate = \"{r}\"")),
                burst.map(|b| format!("burst = {b}")),
                self.concurrency.map(|c| format!("concurrency = {c}")),
            ]
            .into_iter()
            .flatten()
            .collect()
        }
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
        limits: GenLimits,
        /// Where each limit line goes: before the required line at this
        /// place of `order` (0 to 5: never after the last one, the rule).
        limit_slots: Vec<usize>,
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
            out += &format!("routes = {} # trailing\n", list(&r.routes, false));
            for line in r.limits.lines(false) {
                out += &line;
                out += "\n";
            }
            out += "\n";
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
            let right = &rights[t.right % rights.len()];
            let limits = t.limits.lines(right.limits.rate.is_some());
            for (place, &k) in t.order.iter().enumerate() {
                let here = limits.iter().zip(&t.limit_slots).filter(|&(_, &slot)| slot == place);
                for line in here.map(|(l, _)| l).chain([&keys[k]]) {
                    out += line;
                    out += if comments { " # note\n" } else { "\n" };
                }
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
            gen_limits(),
        )
            .prop_map(|(actions, routes, multi_line, limits)| GenRight { actions, routes, multi_line, limits })
    }

    fn gen_limits() -> impl Strategy<Value = GenLimits> {
        (
            proptest::option::of(proptest::sample::select(vec!["1/s", "10/s", "600/m", "5/h", "1000000/s"])),
            proptest::option::of(prop_oneof![1..=9u32, Just(1_000_000)]),
            proptest::option::of(prop_oneof![1..=12u32, Just(1_000_000)]),
        )
            .prop_map(|(rate, burst, concurrency)| GenLimits { rate, burst, concurrency })
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
            gen_limits(),
            proptest::collection::vec(0..6usize, 3),
        )
            .prop_map(
                |(active, digests, plain, ips, right, expires, order, multi_line, limits, limit_slots)| GenToken {
                    active,
                    digests,
                    plain,
                    ips,
                    right,
                    expires,
                    order,
                    multi_line,
                    limits,
                    limit_slots,
                },
            )
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
            // The limits were read as written (else the property is empty).
            for (t, entry) in tokens.iter().zip(whole.table.entries()) {
                let right = &rights[t.right % rights.len()].limits;
                prop_assert_eq!(entry.limits().rate, t.limits.rate.or(right.rate).and_then(Rate::parse));
                prop_assert_eq!(entry.limits().concurrency, t.limits.concurrency.or(right.concurrency));
            }
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

    #[test]
    fn the_check_sees_a_cut_that_loosens_a_limit() {
        let whole = "[access_rights.r]\nrate = \"10/s\"\nburst = 5\nconcurrency = 2\n[[token]]\nname = \"a\"\n\
                     active = true\ntoken = \"x\"\nip_restriction = []\naccess_right = \"r\"\nrate = \"1/s\"\n\
                     expires = \"never\"\n";
        let load = |text: &str| parse(Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}\n{text}")).table;
        let w = load(whole);
        for (looser, why) in [
            // The token's own rate gone: its right's, faster, applies.
            (whole.replace("rate = \"1/s\"\n", ""), "a higher rate"),
            (whole.replace("rate = \"1/s\"", "rate = \"2/s\""), "a higher rate"),
            (whole.replace("rate = \"1/s\"", "rate = \"61/m\""), "a higher rate"),
            (whole.replace("rate = \"10/s\"\nburst = 5\n", "").replace("rate = \"1/s\"\n", ""), "no rate"),
            (whole.replace("burst = 5", "burst = 6"), "a higher burst"),
            (whole.replace("concurrency = 2", "concurrency = 3"), "more in flight"),
            (whole.replace("concurrency = 2\n", ""), "more in flight"),
        ] {
            let err = grants_no_more(&load(&looser), &w).unwrap_err();
            assert!(err.contains(why), "{err}\n{looser}");
        }
        for tighter in [
            whole.replace("rate = \"1/s\"", "rate = \"59/m\""),
            whole.replace("burst = 5", "burst = 1"),
            whole.replace("[[token]]", "[[token]]\nconcurrency = 1"),
        ] {
            assert_eq!(grants_no_more(&load(&tighter), &w), Ok(()), "{tighter}");
        }

        // Why the two rules: each file below breaks one, and is refused;
        // cut just before the limit line it would load without the limit,
        // granting more than the same file written by the rules.
        let token_last =
            whole.replace("rate = \"1/s\"\nexpires = \"never\"\n", "expires = \"never\"\nrate = \"1/s\"\n");
        let right_below = format!("{}[access_rights.r]\nrate = \"10/s\"\n", &whole[whole.find("[[token]]").unwrap()..])
            .replace("rate = \"1/s\"\n", "");
        let right_above = whole.replace("burst = 5\nconcurrency = 2\n", "").replace("rate = \"1/s\"\n", "");
        for (broken, by_the_rules, why) in
            [(token_last, whole.to_string(), "a higher rate"), (right_below, right_above, "no rate")]
        {
            assert!(parse(Path::new("t.toml"), &broken).is_err(), "{broken}");
            let cut = &broken[..broken.rfind("rate = ").unwrap()];
            let err = grants_no_more(&load(cut), &load(&by_the_rules)).unwrap_err();
            assert!(err.contains(why), "{err}\n{cut}");
        }
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

/// `rate`, `burst` and `concurrency` (interface.md §4): read by both
/// readers, checked where they stand, merged key by key.
#[cfg(test)]
mod token_limits_tests {
    use super::*;

    /// The errors of both readers (the scanner through `parse`, and the
    /// general reader alone), which must be the same.
    fn errors(text: &str) -> Vec<String> {
        let [fast, slow] = parse_both_ways(Path::new("t.toml"), text).map(|r| match r {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        assert_eq!(fast, slow, "the two readers disagree on\n{text}");
        fast
    }

    fn digest(i: u8) -> String {
        format!("{i:02x}").repeat(32)
    }

    /// A right `r` with `right` lines (from line 3), and token `a` of it
    /// with `own` lines before its `expires` (from line 11 when `right` is
    /// one line).
    fn file(right: &str, own: &str) -> String {
        format!(
            "[access_rights.r]\nactions = [\"TARGETDATA\"]\n{right}\n\n[[token]]\nname = \"a\"\nactive = true\n\
             token_sha256 = \"{}\"\nip_restriction = []\naccess_right = \"r\"\n{own}\nexpires = \"never\"\n",
            digest(1)
        )
    }

    #[test]
    fn a_rights_limits_apply_to_its_tokens_and_a_tokens_own_replace_them_key_by_key() {
        let text = format!(
            "[access_rights.limited]\nrate = \"10/s\"\nburst = 20\nconcurrency = 4\nactions = [\"TARGETDATA\"]\n\
             [access_rights.free]\n{}{}{}{}",
            TokenSpec("a", 1, "limited", ""),
            TokenSpec("b", 2, "limited", "rate = \"1/m\"\n"),
            TokenSpec("c", 3, "limited", "concurrency = 1\nburst = 3\n"),
            TokenSpec("d", 4, "free", "rate = \"7/h\"\n"),
        ) + &TokenSpec("e", 5, "free", "").to_string();
        let general = {
            let mut g = Builder::new(Source::new(Path::new("t.toml"), &text));
            read_toml(&mut g);
            g.finish().unwrap().table
        };
        let fast = parse(Path::new("t.toml"), &text).unwrap().table;
        let rate = |s| Rate::parse(s);
        let want = [
            ("a", Limits { rate: rate("10/s"), burst: Some(20), concurrency: Some(4) }),
            ("b", Limits { rate: rate("1/m"), burst: Some(20), concurrency: Some(4) }),
            ("c", Limits { rate: rate("10/s"), burst: Some(3), concurrency: Some(1) }),
            ("d", Limits { rate: rate("7/h"), burst: None, concurrency: None }),
            ("e", Limits::default()),
        ];
        for table in [fast, general] {
            for (i, (name, limits)) in want.iter().enumerate() {
                let t = table.get(&TokenHash::from_hex(&digest(i as u8 + 1)).unwrap()).unwrap();
                assert_eq!((t.name(), t.limits()), (*name, *limits));
            }
            assert_eq!(table.get(&TokenHash::from_hex(&digest(4)).unwrap()).unwrap().limits().burst_or_n(), 7);
        }
        // Every TOML spelling of an integer reads alike (the general reader).
        let hex = file("rate = \"1/s\"\nburst = 0x1_0\nconcurrency = +3", "");
        let t = parse(Path::new("t.toml"), &hex).unwrap().table;
        let l = t.entries().next().unwrap().limits();
        assert_eq!((l.burst, l.concurrency), (Some(16), Some(3)));
    }

    /// `[[token]]` with `name`, digest `d`, right `right` and `own` lines
    /// before `expires`.
    struct TokenSpec<'s>(&'s str, u8, &'s str, &'s str);

    impl std::fmt::Display for TokenSpec<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let TokenSpec(name, d, right, own) = self;
            write!(
                f,
                "[[token]]\nname = \"{name}\"\nactive = true\ntoken_sha256 = \"{}\"\nip_restriction = []\n\
                 access_right = \"{right}\"\n{own}expires = \"never\"\n",
                digest(*d)
            )
        }
    }

    #[test]
    fn every_bad_limit_is_refused_where_it_stands() {
        let rate = "`rate` must be a string N/s, N/m or N/h (requests per second, minute or hour), N a whole number \
                    from 1 to 1000000";
        let burst = "`burst` must be a whole number from 1 to 1000000, without quotes";
        let concurrency = "`concurrency` must be a whole number from 1 to 1000000, without quotes";
        for (right, own, want) in [
            ("rate = \"0/s\"", "", format!("t.toml:3:8: {rate}")),
            ("rate = \"10/d\"", "", format!("t.toml:3:8: {rate}")),
            ("rate = \"10\"", "", format!("t.toml:3:8: {rate}")),
            ("rate = \"10 / s\"", "", format!("t.toml:3:8: {rate}")),
            ("rate = \"+5/s\"", "", format!("t.toml:3:8: {rate}")),
            ("rate = \"1000001/s\"", "", format!("t.toml:3:8: {rate}")),
            ("rate = \"99999999999/s\"", "", format!("t.toml:3:8: {rate}")),
            ("rate = 10", "", format!("t.toml:3:8: {rate}")),
            ("rate = [\"1/s\"]", "", format!("t.toml:3:8: {rate}")),
            ("", "rate = '5/x'", format!("t.toml:11:8: {rate}")),
            ("rate = \"1/s\"\nburst = 0", "", format!("t.toml:4:9: {burst}")),
            ("rate = \"1/s\"\nburst = -3", "", format!("t.toml:4:9: {burst}")),
            ("rate = \"1/s\"\nburst = 1000001", "", format!("t.toml:4:9: {burst}")),
            ("rate = \"1/s\"\nburst = 99999999999999999999", "", "t.toml:4:9: ".to_string()),
            ("rate = \"1/s\"\nburst = \"20\"", "", format!("t.toml:4:9: {burst}")),
            ("rate = \"1/s\"\nburst = 2.5", "", format!("t.toml:4:9: {burst}")),
            ("concurrency = 0", "", format!("t.toml:3:15: {concurrency}")),
            ("concurrency = true", "", format!("t.toml:3:15: {concurrency}")),
            ("", "concurrency = 2027-01-01", format!("t.toml:11:15: {concurrency}")),
            (
                "burst = 5",
                "",
                "t.toml:3:9: `burst` of access right `r` needs a `rate` on the same right: it is the size of the \
                 rate's bucket"
                    .into(),
            ),
            (
                "",
                "burst = 5",
                "t.toml:11:9: `burst` of token `a` needs a `rate`, on the token or on its access right `r`".into(),
            ),
            ("rate = \"1/s\"\nrate = \"2/s\"", "", "t.toml:4:1: duplicate key `rate`".into()),
        ] {
            let errs = errors(&file(right, own));
            assert_eq!(errs.len(), 1, "{right} / {own}: {errs:#?}");
            assert!(errs[0].starts_with(&want), "{right} / {own}: {errs:#?}, want {want}");
        }
        // At the bounds, and a token's burst resting on its right's rate: fine.
        for (right, own) in [
            ("rate = \"1000000/s\"\nburst = 1000000\nconcurrency = 1000000", ""),
            ("rate = \"1/h\"\nburst = 1\nconcurrency = 1", ""),
            ("rate = \"1/s\"", "burst = 3"),
            ("", "rate = \"3/m\"\nburst = 3"),
        ] {
            assert_eq!(errors(&file(right, own)), Vec::<String>::new(), "{right} / {own}");
        }
    }

    #[test]
    fn a_limit_after_all_of_a_tokens_required_keys_is_refused() {
        // Where `token new` writes them, and anywhere above the last
        // required key: fine.
        let above = format!(
            "[access_rights.r]\n[[token]]\nrate = \"1/s\"\nname = \"a\"\nconcurrency = 2\nactive = true\n\
             token_sha256 = \"{}\"\nip_restriction = []\nburst = 1\nexpires = \"never\"\naccess_right = \"r\"\n",
            digest(1)
        );
        assert_eq!(errors(&above), Vec::<String>::new());
        let l = parse(Path::new("t.toml"), &above).unwrap().table.entries().next().unwrap().limits();
        assert_eq!((l.rate, l.burst, l.concurrency), (Rate::parse("1/s"), Some(1), Some(2)));
        // After the last one (`expires` here): each such key is refused.
        let below =
            file("", "").replace("expires = \"never\"\n", "expires = \"never\"\nrate = \"1/s\" # x\nconcurrency = 3\n");
        let errs = errors(&below);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        let why = "of token `a` comes after all its required keys: write `rate`, `burst` and `concurrency` above \
                   its last required key (above `expires`, say)";
        assert!(errs[0].starts_with(&format!("t.toml:13:8: `rate` {why}")), "{errs:#?}");
        assert!(errs[1].starts_with(&format!("t.toml:14:15: `concurrency` {why}")), "{errs:#?}");
        // Whichever required key is last.
        let last =
            above.replace("burst = 1\n", "").replace("access_right = \"r\"\n", "access_right = \"r\"\nburst = 1\n");
        assert!(errors(&last)[0].starts_with("t.toml:11:9: `burst` of token `a` comes after"), "{:?}", errors(&last));
        // A token without `expires` is refused for that alone.
        let no_expiry = below.replace("expires = \"never\"\n", "");
        let errs = errors(&no_expiry);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].contains("has no `expires`"), "{errs:#?}");
    }

    #[test]
    fn a_right_with_limits_below_a_token_that_names_it_is_refused() {
        let token = TokenSpec("a", 1, "r", "").to_string();
        for (right, at) in [
            ("[access_rights.r]\nactions = [\"TARGETDATA\"]\nrate = \"1/s\"\n", "10:8: access right `r` sets `rate`"),
            ("[access_rights.r]\nconcurrency = 1\n", "9:15: access right `r` sets `concurrency`"),
            // Any spelling (only the general reader reads these).
            ("[access_rights]\nr = { concurrency = 1 }\n", "9:21: access right `r` sets `concurrency`"),
            ("[access_rights]\nr.rate = \"1/s\"\n", "9:10: access right `r` sets `rate`"),
        ] {
            let errs = errors(&format!("{token}{right}"));
            assert_eq!(errs.len(), 1, "{errs:#?}");
            let want = format!(
                "t.toml:{at} below token `a` (line 1), which names it: define an access right with limits above \
                 every token that uses it"
            );
            assert!(errs[0].starts_with(&want), "{errs:#?}, want {want}");
        }
        // Reported once however many tokens are above it; a right without
        // limits may follow its tokens as before.
        let two = format!("{token}{}[access_rights.r]\nrate = \"1/s\"\n", TokenSpec("b", 2, "r", ""));
        assert_eq!(errors(&two).len(), 1, "{:?}", errors(&two));
        assert_eq!(errors(&format!("{token}[access_rights.r]\nactions = [\"*\"]\n")), Vec::<String>::new());
    }

    #[test]
    fn errors_about_limits_never_quote_the_value() {
        let secret = "1234567890987654321";
        for (right, own) in [
            (format!("rate = \"{secret}/s\""), String::new()),
            (format!("rate = \"{secret}\""), String::new()),
            (String::new(), format!("concurrency = {secret}")),
            (format!("rate = \"1/s\"\nburst = \"{secret}\""), String::new()),
            (format!("rate = {secret}"), String::new()),
        ] {
            let errs = errors(&file(&right, &own));
            assert!(!errs.is_empty());
            assert!(!errs.iter().any(|e| e.contains(secret) || e.contains("987654")), "{errs:#?}");
        }
    }

    #[test]
    fn tokens_without_limits_share_the_empty_set_and_distinct_sets_are_interned() {
        let mut text = String::from("[access_rights.r]\nconcurrency = 8\n[access_rights.free]\n");
        for i in 0..40u8 {
            let own = ["", "rate = \"5/s\"\n", "concurrency = 2\n", "rate = \"5/s\"\nconcurrency = 8\n"];
            let name = format!("t{i}");
            text += &TokenSpec(&name, i + 1, if i < 20 { "r" } else { "free" }, own[usize::from(i % 4)]).to_string();
        }
        let table = parse(Path::new("t.toml"), &text).unwrap().table;
        let distinct: FxHashSet<u16> = table.entries().map(|t| t.limits_index()).collect();
        // {c8}, {5/s c8}, {c2} for r's; none, {5/s}, and the same {c2} and
        // {5/s c8} for free's.
        assert_eq!(distinct.len(), 5, "{distinct:?}");
        assert!(table.entries().filter(|t| !t.limits().any()).all(|t| t.limits_index() == 0));
        assert_eq!(table.entries().filter(|t| t.limits_index() == 0).count(), 5);
    }
}
