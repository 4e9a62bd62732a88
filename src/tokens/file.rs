//! The token file (interface.md §4): parse, validate, and build a table.
//! Every error is collected with its line and column before anything is
//! applied; a file with any error yields no table. Shared by `check`, the
//! loader at start and every reload.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::de::IntoDeserializer;
use serde::Deserialize;
use serde_spanned::Spanned;
use toml_edit::{ImDocument, Item};

use super::state::StateRegistry;
use super::table::{AccessRight, Actions, IpRestriction, Token, TokenEntry, TokenHash, TokenTable};
use crate::decide::route::RoutePattern;
use crate::diagnostic::{ConfigError, ConfigErrors, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRight {
    #[serde(default)]
    actions: Vec<Spanned<String>>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Spanned<String>,
    active: bool,
    token: Option<Spanned<String>>,
    token_sha256: Option<Spanned<String>>,
    ip_restriction: Vec<Spanned<String>>,
    access_right: Spanned<String>,
    expires: Option<Spanned<RawExpiry>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawExpiry {
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

/// Reads and validates a token file.
pub fn load(path: &Path, states: &StateRegistry) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read the token file: {e}"),
        }])
    })?;
    parse(path, &text, states)
}

/// Validates the text of a token file read from `path`.
pub fn parse(path: &Path, text: &str, states: &StateRegistry) -> Result<Loaded, ConfigErrors> {
    let mut src = Source::new(path, text);
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            src.error(e.span(), e.message().trim_end().to_string());
            return Err(ConfigErrors(src.into_errors()));
        }
    };

    for (key, _) in doc.iter() {
        if key != "access_rights" && key != "token" {
            let span = doc.key(key).and_then(|k| k.span());
            src.error(
                span,
                format!("unknown key `{key}`: expected `access_rights` or `token`"),
            );
        }
    }

    let rights = parse_rights(&doc, &mut src);
    let mut warnings = Vec::new();
    let entries = parse_tokens(&doc, &rights, states, &mut src, &mut warnings);

    if src.has_errors() {
        return Err(ConfigErrors(src.into_errors()));
    }
    let rights: Vec<Arc<AccessRight>> = rights.into_values().collect();
    Ok(Loaded {
        table: TokenTable::new(entries, rights),
        warnings,
    })
}

fn parse_rights(doc: &ImDocument<&str>, src: &mut Source<'_>) -> HashMap<String, Arc<AccessRight>> {
    let mut out = HashMap::new();
    let Some(item) = doc.get("access_rights") else {
        return out;
    };
    let Some(table) = item.as_table_like() else {
        src.error(
            item.span(),
            "`access_rights` must be a table of named rights",
        );
        return out;
    };
    for (name, item) in table.iter() {
        let span = item.span();
        let raw = match item.clone().into_value() {
            Ok(v) => RawRight::deserialize(v.into_deserializer()),
            Err(_) => {
                src.error(span, format!("access right `{name}` must be a table"));
                continue;
            }
        };
        let raw = match raw {
            Ok(r) => r,
            Err(e) => {
                src.toml_error(&e, span);
                continue;
            }
        };
        let mut actions = Vec::new();
        let mut any = false;
        for a in &raw.actions {
            let v = a.get_ref();
            if v == "*" {
                any = true;
            } else if v.is_empty() || !v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                src.error(
                    Some(a.span()),
                    format!("{v:?} is not an XMLAPI ACTION name (letters, digits, _) or \"*\""),
                );
            } else {
                actions.push(v.to_ascii_uppercase().into_boxed_str());
            }
        }
        let mut routes = Vec::new();
        for r in &raw.routes {
            match RoutePattern::parse(r.get_ref()) {
                Ok(p) => routes.push(p),
                Err(msg) => src.error(Some(r.span()), msg),
            }
        }
        let actions = if any {
            Actions::Any
        } else {
            Actions::Listed(actions.into())
        };
        out.insert(
            name.to_string(),
            Arc::new(AccessRight {
                name: name.into(),
                actions,
                routes: routes.into(),
            }),
        );
    }
    out
}

fn parse_tokens(
    doc: &ImDocument<&str>,
    rights: &HashMap<String, Arc<AccessRight>>,
    states: &StateRegistry,
    src: &mut Source<'_>,
    warnings: &mut Vec<ConfigError>,
) -> Vec<(TokenHash, TokenEntry)> {
    let Some(item) = doc.get("token") else {
        return Vec::new();
    };
    let Some(array) = item.as_array_of_tables() else {
        src.error(item.span(), "`token` must be written as [[token]] tables");
        return Vec::new();
    };
    let mut entries = Vec::with_capacity(array.len());
    // First line of each name and digest, to point at the earlier one.
    let mut names: HashMap<String, usize> = HashMap::with_capacity(array.len());
    let mut digests: HashMap<TokenHash, (usize, String)> = HashMap::with_capacity(array.len());
    for table in array.iter() {
        let span = table.span();
        let line = line_of(src.text(), span.as_ref().map_or(0, |s| s.start));
        let raw = match Item::Table(table.clone()).into_value() {
            Ok(v) => RawToken::deserialize(v.into_deserializer()),
            Err(_) => {
                src.error(span, "a [[token]] must be a table");
                continue;
            }
        };
        let raw = match raw {
            Ok(r) => r,
            Err(e) => {
                src.toml_error(&e, span);
                continue;
            }
        };
        let name = raw.name.get_ref();
        if name.trim().is_empty() {
            src.error(Some(raw.name.span()), "`name` must not be empty");
        } else if let Some(first) = names.get(name.as_str()) {
            src.error(
                Some(raw.name.span()),
                format!("duplicate name `{name}`: first used at line {first}"),
            );
        } else {
            names.insert(name.clone(), line);
        }

        let hash = match (&raw.token, &raw.token_sha256) {
            (Some(_), Some(d)) => {
                src.error(Some(d.span()), "give `token` or `token_sha256`, not both");
                None
            }
            (None, None) => {
                src.error(
                    span.clone(),
                    format!("token `{name}` needs `token_sha256` (or `token`)"),
                );
                None
            }
            (None, Some(d)) => {
                let h = TokenHash::from_hex(d.get_ref().trim());
                if h.is_none() {
                    src.error(
                        Some(d.span()),
                        "`token_sha256` must be 64 hex digits (the SHA-256 of the token)",
                    );
                }
                h
            }
            (Some(t), None) => {
                if t.get_ref().is_empty() {
                    src.error(Some(t.span()), "`token` must not be empty");
                    None
                } else {
                    let mut w = Source::new(src.path(), src.text());
                    w.error(
                        Some(t.span()),
                        format!("token `{name}` is stored in plain text; store `token_sha256` instead (tokengate token hash)"),
                    );
                    warnings.extend(w.into_errors());
                    Some(TokenHash::of(&Token(t.get_ref().as_bytes())))
                }
            }
        };
        if let Some(h) = hash {
            if let Some((first, other)) = digests.get(&h) {
                let at = raw
                    .token_sha256
                    .as_ref()
                    .map(|d| d.span())
                    .or(raw.token.as_ref().map(|t| t.span()));
                src.error(
                    at,
                    format!(
                        "duplicate token: `{name}` is the same token as `{other}` at line {first}"
                    ),
                );
            } else {
                digests.insert(h, (line, name.clone()));
            }
        }

        let mut nets = Vec::with_capacity(raw.ip_restriction.len());
        for entry in &raw.ip_restriction {
            match parse_cidr(entry.get_ref()) {
                Some(n) => nets.push(n),
                None => src.error(
                    Some(entry.span()),
                    format!("{:?} is not an IP address or CIDR", entry.get_ref()),
                ),
            }
        }

        let right = rights.get(raw.access_right.get_ref()).cloned();
        if right.is_none() {
            src.error(
                Some(raw.access_right.span()),
                format!(
                    "access right `{}` is not defined in [access_rights]",
                    raw.access_right.get_ref()
                ),
            );
        }

        let expires = match &raw.expires {
            None => None,
            Some(e) => {
                let text = match e.get_ref() {
                    RawExpiry::Datetime(d) => d.to_string(),
                    RawExpiry::Text(s) => s.clone(),
                };
                let t = parse_rfc3339(&text);
                if t.is_none() {
                    src.error(Some(e.span()), "`expires` must be an RFC 3339 date-time with a time zone, e.g. 2027-06-30T00:00:00Z");
                }
                t
            }
        };

        if let (Some(hash), Some(right)) = (hash, right) {
            let name: Arc<str> = name.as_str().into();
            let state = states.for_name(&name);
            entries.push((
                hash,
                TokenEntry {
                    name,
                    active: raw.active,
                    expires,
                    ip_restriction: IpRestriction::new(nets),
                    right,
                    state,
                    line,
                },
            ));
        }
    }
    entries
}

/// An address or a CIDR; a bare address is a single host.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n);
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// RFC 3339 with an offset (`Z` or `+hh:mm`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(t))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
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
        parse(Path::new("tokens.toml"), text, &StateRegistry::default())
    }

    #[test]
    fn a_good_file_loads_and_warns_about_plaintext() {
        let l = parse_str(GOOD).unwrap();
        assert_eq!(l.table.len(), 2);
        let e = l.table.get(&TokenHash::of(&Token(b"secret"))).unwrap();
        assert_eq!(&*e.name, "splunk");
        assert!(e.right.actions.allows(b"SCANNERDATA"));
        assert!(e.expires.is_some());
        assert!(l.table.get(&TokenHash::of(&Token(b"plain"))).is_some());
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0]
            .to_string()
            .starts_with("tokens.toml:21:9: token `ops` is stored in plain text"));
        assert!(!l.warnings[0].message.contains("\"plain\""));
    }

    fn errors(text: &str) -> Vec<String> {
        parse_str(text)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
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
        assert!(errs[1].starts_with(
            "tokens.toml:11:16: duplicate token: `a` is the same token as `a` at line 2"
        ));
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
        assert!(
            errs.iter()
                .any(|e| e.contains("missing field `ip_restriction`")),
            "{errs:?}"
        );
    }
}
