//! A fast reader for token files written the way they are written: table
//! headers, `key = value` lines, basic strings without escapes, literal
//! strings, booleans, plain decimal integers, offset date-times and arrays
//! of strings. It gives up (`None`) at anything else, and the general TOML
//! reader takes over; so it only has to be right about what it accepts,
//! never complete. A 1,000,000 token file is ~190 MB: the general reader
//! takes many seconds for it.

use std::borrow::Cow;

use rustc_hash::FxHashSet;

use super::raw::{RawDigests, RawLimits, RawRight, RawToken, RawValue, Sink, SpannedText};

/// Scans `text`, handing each table to `sink` as it is read; `None` when
/// the text is not in the subset (or not valid TOML): what the sink got is
/// then to be thrown away.
pub fn scan<'a>(text: &'a str, sink: &mut impl Sink<'a>) -> Option<()> {
    let mut s = Scanner { text, b: text.as_bytes(), pos: 0, line: 1 };
    // A set: 65,000 rights took 3 s of CPU when this was a list.
    let mut right_names: FxHashSet<&'a str> = FxHashSet::default();
    let mut current = Table::None;
    loop {
        s.skip_blank_lines()?;
        if s.pos >= s.b.len() {
            break;
        }
        let line = s.line;
        let start = s.pos;
        if s.eat("[[") {
            s.expect_word("token")?;
            if !s.eat("]]") {
                return None;
            }
            s.end_of_line()?;
            finish(sink, std::mem::take(&mut current))?;
            current = Table::Token(TokenKeys { line: line as u32, start, ..TokenKeys::default() });
        } else if s.eat("[") {
            s.expect_word("access_rights")?;
            if !s.eat(".") {
                return None;
            }
            let name = s.bare_key()?;
            if !s.eat("]") {
                return None;
            }
            s.end_of_line()?;
            finish(sink, std::mem::take(&mut current))?;
            if !right_names.insert(name) {
                return None;
            }
            current = Table::Right(
                RawRight {
                    name: Cow::Borrowed(name),
                    span: start..s.pos,
                    actions: vec![],
                    routes: vec![],
                    limits: RawLimits::default(),
                },
                [false; 2],
            );
        } else {
            let key = s.bare_key()?;
            s.skip_ws();
            if !s.eat("=") {
                return None;
            }
            s.skip_ws();
            match &mut current {
                Table::None => return None,
                Table::Right(r, seen) => match key {
                    "actions" | "routes" => {
                        let i = usize::from(key == "routes");
                        if std::mem::replace(&mut seen[i], true) {
                            return None;
                        }
                        let list = s.string_array()?;
                        *if i == 0 { &mut r.actions } else { &mut r.routes } = list;
                    }
                    _ => s.limit(&mut r.limits, key)?,
                },
                Table::Token(t) => {
                    let at = s.pos;
                    let dup = match key {
                        "name" => t.name.replace(s.string()?).is_some(),
                        "active" => t.active.replace(s.boolean()?).is_some(),
                        "token" => t.token.replace(s.string()?).is_some(),
                        "token_sha256" => t.token_sha256.replace(s.digests()?).is_some(),
                        "ip_restriction" => t.ip_restriction.replace(s.string_array()?).is_some(),
                        "access_right" => t.access_right.replace(s.string()?).is_some(),
                        "expires" => t.expires.replace(s.datetime_or_string()?).is_some(),
                        _ => {
                            s.limit(&mut t.limits, key)?;
                            false
                        }
                    };
                    if dup {
                        return None;
                    }
                    if !matches!(key, "rate" | "burst" | "concurrency") {
                        t.last_required_at = at;
                    }
                }
            }
            s.end_of_line()?;
            if let Table::Token(t) = &mut current {
                t.end = s.pos;
            }
        }
    }
    finish(sink, current)
}

#[derive(Default)]
enum Table<'a> {
    #[default]
    None,
    Right(RawRight<'a>, [bool; 2]),
    Token(TokenKeys<'a>),
}

#[derive(Default)]
struct TokenKeys<'a> {
    line: u32,
    start: usize,
    end: usize,
    name: Option<SpannedText<'a>>,
    active: Option<bool>,
    token: Option<SpannedText<'a>>,
    token_sha256: Option<RawDigests<'a>>,
    ip_restriction: Option<Vec<SpannedText<'a>>>,
    access_right: Option<SpannedText<'a>>,
    expires: Option<SpannedText<'a>>,
    limits: RawLimits<'a>,
    /// Where the value of the last required key so far begins.
    last_required_at: usize,
}

fn finish<'a>(sink: &mut impl Sink<'a>, t: Table<'a>) -> Option<()> {
    match t {
        Table::None => {}
        Table::Right(r, _) => sink.right(r),
        Table::Token(k) => sink.token(RawToken {
            span: k.start..k.end.max(k.start),
            line: k.line,
            // A missing required key: the general reader words the error
            // (but for `expires`, which the validation words for both).
            name: k.name?,
            active: k.active?,
            token: k.token,
            token_sha256: k.token_sha256,
            ip_restriction: k.ip_restriction?,
            access_right: k.access_right?,
            expires: k.expires,
            limits: k.limits,
            last_required_at: k.last_required_at,
        }),
    }
    Some(())
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.b[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// A comment runs to the end of the line; TOML forbids control
    /// characters in it other than tab.
    fn skip_comment(&mut self) -> Option<()> {
        if self.peek() == Some(b'#') {
            while let Some(c) = self.peek() {
                if c == b'\n' || (c == b'\r' && self.b.get(self.pos + 1) == Some(&b'\n')) {
                    break;
                }
                if (c < 0x20 && c != b'\t') || c == 0x7f {
                    return None;
                }
                self.pos += 1;
            }
        }
        Some(())
    }

    /// Consumes a newline (LF or CRLF) or the end of the text.
    fn newline(&mut self) -> Option<()> {
        if self.eat("\n") || self.eat("\r\n") {
            self.line += 1;
            Some(())
        } else {
            (self.pos >= self.b.len()).then_some(())
        }
    }

    fn end_of_line(&mut self) -> Option<()> {
        self.skip_ws();
        self.skip_comment()?;
        self.newline()
    }

    fn skip_blank_lines(&mut self) -> Option<()> {
        loop {
            let save = (self.pos, self.line);
            self.skip_ws();
            if self.pos >= self.b.len() {
                return Some(());
            }
            if matches!(self.peek(), Some(b'#' | b'\n' | b'\r')) {
                self.end_of_line()?;
                continue;
            }
            (self.pos, self.line) = save;
            self.skip_ws();
            return Some(());
        }
    }

    fn bare_key(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.text[start..self.pos])
    }

    fn expect_word(&mut self, w: &str) -> Option<()> {
        let k = self.bare_key()?;
        (k == w).then_some(())
    }

    /// `"..."` without escapes, or `'...'`; no control characters but tab.
    fn string(&mut self) -> Option<SpannedText<'a>> {
        let quote = self.peek()?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        // Multi-line strings are left to the general reader.
        if self.b[self.pos..].starts_with(if quote == b'"' { b"\"\"\"" } else { b"'''" }) {
            return None;
        }
        let start = self.pos;
        self.pos += 1;
        let body = self.pos;
        loop {
            let c = self.peek()?;
            if c == quote {
                break;
            }
            if (quote == b'"' && c == b'\\') || (c < 0x20 && c != b'\t') || c == 0x7f {
                return None;
            }
            self.pos += 1;
        }
        let text = &self.text[body..self.pos];
        self.pos += 1;
        Some(SpannedText { text: Cow::Borrowed(text), span: start..self.pos })
    }

    /// `rate = "N/u"`, `burst = N` or `concurrency = N` into `limits`
    /// (`None` for any other key, a second one, or another type).
    fn limit(&mut self, limits: &mut RawLimits<'a>, key: &str) -> Option<()> {
        let (slot, value) = match key {
            "rate" => (&mut limits.rate, RawValue::Text(self.string()?)),
            "burst" => (&mut limits.burst, self.integer()?),
            "concurrency" => (&mut limits.concurrency, self.integer()?),
            _ => return None,
        };
        slot.replace(value).is_none().then_some(())
    }

    /// A decimal integer written plainly: no sign, no `_`, no leading zero
    /// (TOML's other spellings are left to the general reader). What
    /// follows is checked by the caller's `end_of_line`: `12.5`, `12e3`
    /// and `1979-05-27` are not integers and are given up there.
    fn integer(&mut self) -> Option<RawValue<'a>> {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        let digits = &self.text[start..self.pos];
        if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        Some(RawValue::Integer(digits.parse().ok()?, start..self.pos))
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.eat("true") {
            Some(true)
        } else if self.eat("false") {
            Some(false)
        } else {
            None
        }
        .filter(|_| !matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
    }

    /// `[ "a", 'b', ]`, across lines, with comments between elements.
    fn string_array(&mut self) -> Option<Vec<SpannedText<'a>>> {
        if !self.eat("[") {
            return None;
        }
        let mut out = Vec::new();
        loop {
            self.skip_array_space()?;
            if self.eat("]") {
                return Some(out);
            }
            out.push(self.string()?);
            self.skip_array_space()?;
            if self.eat(",") {
                continue;
            }
            if self.eat("]") {
                return Some(out);
            }
            return None;
        }
    }

    /// `token_sha256`: a string, or an array of strings.
    fn digests(&mut self) -> Option<RawDigests<'a>> {
        let start = self.pos;
        if self.peek() == Some(b'[') {
            let digests = self.string_array()?;
            return Some(RawDigests { span: start..self.pos, list: true, digests });
        }
        let one = self.string()?;
        Some(RawDigests { span: one.span.clone(), list: false, digests: vec![one] })
    }

    fn skip_array_space(&mut self) -> Option<()> {
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'#') => {
                    self.skip_comment()?;
                }
                Some(b'\n' | b'\r') => self.newline()?,
                _ => return Some(()),
            }
        }
    }

    /// An offset date-time (`2027-06-30T00:00:00Z`), or a string holding one.
    fn datetime_or_string(&mut self) -> Option<SpannedText<'a>> {
        if matches!(self.peek(), Some(b'"' | b'\'')) {
            return self.string();
        }
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b':' | b'.' | b'+')) {
            self.pos += 1;
        }
        let raw = &self.text[start..self.pos];
        // Only the form the general reader would turn into the same text.
        let dt: toml_edit::Datetime = raw.parse().ok()?;
        (dt.date.is_some() && dt.time.is_some() && dt.offset.is_some() && dt.to_string() == raw)
            .then_some(SpannedText { text: Cow::Borrowed(raw), span: start..self.pos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::Source;
    use proptest::prelude::*;
    use std::path::Path;

    /// Collects what a reader hands over.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    struct RawFile<'a> {
        rights: Vec<RawRight<'a>>,
        tokens: Vec<RawToken<'a>>,
    }

    struct Collect<'a> {
        file: RawFile<'a>,
        src: Source<'a>,
    }

    impl<'a> Sink<'a> for Collect<'a> {
        fn right(&mut self, r: RawRight<'a>) {
            self.file.rights.push(r);
        }
        fn token(&mut self, t: RawToken<'a>) {
            self.file.tokens.push(t);
        }
        fn source(&mut self) -> &mut Source<'a> {
            &mut self.src
        }
    }

    fn collect(text: &str) -> Collect<'_> {
        Collect { file: RawFile::default(), src: Source::new(Path::new("t.toml"), text) }
    }

    fn scan(text: &str) -> Option<RawFile<'_>> {
        let mut c = collect(text);
        super::scan(text, &mut c).map(|()| c.file)
    }

    fn general(text: &str) -> Option<RawFile<'_>> {
        let mut c = collect(text);
        let ok = super::super::file::read_toml(&mut c);
        ok.filter(|_| !c.src.has_errors()).map(|()| c.file)
    }

    /// What both readers must agree on: values as text, and spans (of
    /// whole tables only where they start: that is all errors use).
    fn norm(f: &RawFile<'_>) -> String {
        let mut f = f.clone();
        for r in &mut f.rights {
            r.span.end = r.span.start;
        }
        for t in &mut f.tokens {
            t.span.end = t.span.start;
        }
        format!("{f:?}")
    }

    const SAMPLE: &str = "# header\n\
        [access_rights.read-only]\n\
        actions = [\"TARGETDATA\", 'SCANNERDATA'] # trailing\n\
        routes = [\n  \"GET /opi/rest/*\", # why\n  'GET /x',\n]\n\
        \n\
        rate = \"10/s\" # per token\n\
        burst = 20\n\
        [access_rights.none]\n\
        concurrency = 0\n\
        [[token]]\n\
        name = \"a\"\n\
        concurrency = 4\n\
        active = true\n\
        rate = 'x'\n\
        token_sha256 = \"00\"\n\
        ip_restriction = []\n\
        access_right = \"read-only\"\n\
        expires = 2027-06-30T00:00:00Z\n\
        \r\n\
        [[token]]   # second\n\
        name='b'\n\
        active=false\n\
        token = \"p\"\n\
        ip_restriction = [\"10.0.0.0/8\",\"::1\"]\n\
        access_right = \"none\"\n\
        expires = \"2027-06-30T00:00:00+02:00\"\n\
        [[token]]\n\
        expires = \"never\"\n\
        token_sha256 = [ # newest first\n  \"01\",\n  '02' ,\n]\n\
        access_right = \"none\"\n\
        name = \"c\"\n\
        ip_restriction = []\n\
        active = true\n";

    #[test]
    fn agrees_with_the_general_reader_on_the_usual_shape() {
        let fast = scan(SAMPLE).expect("the usual shape is scanned");
        let slow = general(SAMPLE).expect("valid TOML");
        assert_eq!(norm(&fast), norm(&slow));
        assert_eq!(fast.tokens[1].line, 23);
        let at = |s: &str| SAMPLE.find(s).unwrap() + s.len();
        assert_eq!(fast.rights[0].limits.burst, Some(RawValue::Integer(20, at("burst = ")..at("burst = 20"))));
        assert!(matches!(&fast.tokens[0].limits.rate, Some(RawValue::Text(t)) if t.text == "x"));
        assert_eq!(fast.tokens[0].limits.concurrency, Some(RawValue::Integer(4, at("y = 4") - 1..at("y = 4"))));
        assert_eq!(&SAMPLE[fast.tokens[0].last_required_at..][..20], "2027-06-30T00:00:00Z");
    }

    #[test]
    fn gives_up_on_anything_else() {
        for bad in [
            "x = 1\n",
            "[access_rights]\n",
            "[other]\n",
            "[[token]]\nname = \"a\\u0041\"\nactive = true\nip_restriction = []\naccess_right = \"r\"\n",
            "[[token]]\nname = \"a\"\nname = \"b\"\nactive = true\nip_restriction = []\naccess_right = \"r\"\n",
            "[[token]]\nname = \"a\"\nactive = true\nip_restriction = []\n",
            "[[token]]\nname = \"a\"\nactive = true\nip_restrictions = []\naccess_right = \"r\"\n",
            "[[token]]\nname = \"a\"\nactive = 1\nip_restriction = []\naccess_right = \"r\"\n",
            "[[token]]\nname = \"a\"\nactive = truex\nip_restriction = []\naccess_right = \"r\"\n",
            "[[token]]\nname = \"a\" x\nactive = true\nip_restriction = []\naccess_right = \"r\"\n",
            "[[token]]\n\"name\" = \"a\"\nactive = true\nip_restriction = []\naccess_right = \"r\"\n",
            "[[token]]\nname = \"\"\"a\"\"\"\nactive = true\nip_restriction = []\naccess_right = \"r\"\n",
            "[[token]]\nname = \"a\"\nactive = true\nip_restriction = []\naccess_right = \"r\"\nexpires = 2027-06-30\n",
            "[[token]]\nname = \"a\"\nactive = true\nip_restriction = [1]\naccess_right = \"r\"\n",
            "[access_rights.r]\n[access_rights.r]\n",
            "[[token]]\nname = \"a\" # \u{7}\nactive = true\nip_restriction = []\naccess_right = \"r\"\n",
            // Limits in any spelling but the plain one, or twice.
            "[access_rights.r]\nburst = 012\n",
            "[access_rights.r]\nburst = 1_0\n",
            "[access_rights.r]\nburst = +1\n",
            "[access_rights.r]\nburst = 0x1\n",
            "[access_rights.r]\nburst = 2.5\n",
            "[access_rights.r]\nburst = 1e3\n",
            "[access_rights.r]\nburst = 99999999999999999999\n",
            "[access_rights.r]\nconcurrency = 1979-05-27\n",
            "[access_rights.r]\nrate = 5\n",
            "[access_rights.r]\nrate = \"1/s\"\nrate = \"1/s\"\n",
            "[access_rights.r]\nrates = \"1/s\"\n",
            "[[token]]\nname = \"a\"\nactive = true\nip_restriction = []\naccess_right = \"r\"\nburst = [1]\n",
        ] {
            assert!(scan(bad).is_none(), "{bad:?}");
        }
    }

    /// A `rate` line, in spellings the scanner reads and some it does not.
    const RATE_LINE: &str = "rate ?= ?(\"[0-9]{0,3}/[smhd]\"|'1/s'|1|\"\")( #x)?";
    /// A `burst` or `concurrency` line, likewise.
    const COUNT_LINE: &str =
        "(burst|concurrency) ?= ?(0|7|12|007|-1|\\+3|1_0|0x1f|2\\.5|1e3|\"3\"|true|99999999999999999999)( #x)?";

    /// The three limit keys, each present or not, mostly in the spelling
    /// the scanner reads, sometimes in another (TOML's or none).
    fn limit_lines() -> impl Strategy<Value = Vec<String>> {
        let count = |key: &'static str| {
            prop_oneof![
                4 => "(0|[1-9][0-9]{0,6})( #x)?".prop_map(move |v| format!("{key} = {v}")),
                1 => "(007|-1|\\+3|1_0|0x1f|2\\.5|1e3|\"3\"|true|99999999999999999999)"
                    .prop_map(move |v| format!("{key} ={v}")),
            ]
        };
        let rate = prop_oneof![
            4 => "rate ?= ?(\"[0-9]{0,3}/[smhd]\"|'1/s'|\"\")( #x)?",
            1 => "rate = (1|\"\"\"1/s\"\"\"|\"1\\\\u002fs\")",
        ];
        (proptest::option::of(rate), proptest::option::of(count("burst")), proptest::option::of(count("concurrency")))
            .prop_map(|(a, b, c)| [a, b, c].into_iter().flatten().collect())
    }

    /// A `[[token]]` with its required keys (one sometimes missing) and
    /// limit keys, in any order: what token files look like, so that the
    /// scanner accepts many of them.
    fn token_table() -> impl Strategy<Value = String> {
        let required = (
            "name = (\"[a-z]{1,3}\"|'q')",
            "active = (true|false)",
            "token_sha256 = (\"[0-9a-f]{2}\"|\\[\"0a\", '0b'\\])",
            "ip_restriction = \\[(\"10.0.0.0/8\"|\"::1\"|)\\]",
            "access_right = \"r[0-3]\"",
            "expires = (2027-06-30T00:00:00Z|\"never\")",
        );
        (required, limit_lines(), proptest::option::weighted(0.1, 0..6usize))
            .prop_flat_map(|((a, b, c, d, e, f), limits, missing)| {
                let mut lines = vec![a, b, c, d, e, f];
                if let Some(i) = missing {
                    lines.remove(i);
                }
                lines.extend(limits);
                Just(lines).prop_shuffle()
            })
            .prop_map(|lines| format!("[[token]]\n{}", lines.join("\n")))
    }

    /// An `[access_rights.rN]` with actions, routes and limit keys.
    fn right_table() -> impl Strategy<Value = String> {
        let lines = (
            proptest::option::of(Just("actions = [\"TARGETDATA\"]".to_string())),
            proptest::option::of(Just("routes = ['GET /x'] # r".to_string())),
            limit_lines(),
        )
            .prop_flat_map(|(a, r, limits)| {
                let lines: Vec<String> = [a, r].into_iter().flatten().chain(limits).collect();
                Just(lines).prop_shuffle()
            });
        (0..16u8, lines).prop_map(|(i, lines)| format!("[access_rights.r{i}]\n{}", lines.join("\n")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever the scanner accepts of a token file with limits, the
        /// general reader reads the same, and what it gives up on the
        /// general reader may read (most files here are accepted).
        #[test]
        fn never_disagrees_with_the_general_reader_on_limits(
            tables in proptest::collection::vec(prop_oneof![right_table(), token_table()], 1..6),
        ) {
            let text = tables.join("\n\n");
            if let Some(fast) = scan(&text) {
                let slow = general(&text);
                prop_assert!(slow.is_some(), "scanner accepted what TOML rejects:\n{}", text);
                prop_assert_eq!(norm(&fast), norm(&slow.unwrap()), "{}", text);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever the scanner accepts, the general reader reads the same.
        #[test]
        fn never_disagrees_with_the_general_reader(
            lines in proptest::collection::vec(prop_oneof![
                Just("[[token]]".to_string()),
                Just("[access_rights.r]".to_string()),
                Just("".to_string()),
                Just("# c".to_string()),
                "(name|token|token_sha256|access_right) ?= ?(\"[a-z0-9 #'=]{0,6}\"|'[a-z\"#]{0,4}')( #x)?",
                "token_sha256 = \\[( ?\"[0-9a-f]{0,3}\" ?,?){0,3}\\]",
                "token_sha256 = (1|\\[1\\]|\\[\"a\", 2\\])",
                "active ?= ?(true|false|tru|1)",
                "ip_restriction = \\[( ?\"[0-9./:]{0,6}\" ?,?){0,3}\\]",
                "(actions|routes) = \\[(\"[A-Z* /]{0,5}\",? ?){0,2}\\]",
                "expires = (2027-06-30T00:00:00Z|2027-06-30|\"x\"|\"never\"|'never'|2027-06-30T00:00:00\\+01:00)",
                RATE_LINE,
                COUNT_LINE,
            ], 0..24),
        ) {
            let text = lines.join("\n");
            if let Some(fast) = scan(&text) {
                let slow = general(&text);
                prop_assert!(slow.is_some(), "scanner accepted what TOML rejects:\n{}", text);
                prop_assert_eq!(norm(&fast), norm(&slow.unwrap()), "{}", text);
            }
        }
    }
}
