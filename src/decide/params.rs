//! APPTOKEN, ACTION and JSON as the scanner's servlet container reads them,
//! from the query string and from a form body. Pure: no I/O.
//!
//! Tomcat splits on `&`, splits each piece at its first `=`, percent-decodes
//! name and value (`+` is a space) and compares names case-sensitively. The
//! gateway decodes the same way but compares names without regard to ASCII
//! case, so it sees every parameter the container could take as ACTION or
//! APPTOKEN, and more. A name it cannot decode might be either, so it refuses.

use std::borrow::Cow;

use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::HeaderMap;

use crate::percent::unescape;

/// A parameter that was found zero, one or several times.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ParamValue<'a> {
    /// Not given.
    #[default]
    Absent,
    /// Given once, or several times with the same decoded value.
    One(Cow<'a, [u8]>),
    /// Given several times with different values.
    Conflict,
}

impl<'a> ParamValue<'a> {
    fn add(&mut self, v: Cow<'a, [u8]>) {
        *self = match std::mem::take(self) {
            ParamValue::Absent => ParamValue::One(v),
            ParamValue::One(old) if old == v => ParamValue::One(old),
            ParamValue::One(_) | ParamValue::Conflict => ParamValue::Conflict,
        };
    }
}

/// What the gateway decides on, gathered from the query and the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params<'a> {
    /// Every `APPTOKEN` (any letter case).
    pub apptoken: ParamValue<'a>,
    /// Every `ACTION` (any letter case).
    pub action: ParamValue<'a>,
    /// `JSON=1` was given: refusals are shaped as JSON.
    pub json: bool,
    /// A `_method` parameter (any letter case) was given: the method
    /// override of Spring's `HiddenHttpMethodFilter` and of others like it.
    pub method_override: bool,
}

/// A parameter whose name (or APPTOKEN/ACTION value) has a broken escape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Which parameter a piece of a query or form body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// `APPTOKEN` in any letter case.
    AppToken,
    /// `ACTION` in any letter case.
    Action,
    /// `JSON` in any letter case.
    Json,
    /// `_method` in any letter case.
    MethodOverride,
    /// Anything else.
    Other,
}

impl<'a> Params<'a> {
    /// Adds the parameters of one `a=b&c=d` string (a query or a form body).
    pub fn scan(&mut self, input: &'a [u8]) -> Result<(), Malformed> {
        for piece in pieces(input) {
            let (raw_name, raw_value) = split_piece(piece);
            match classify(raw_name)? {
                Name::AppToken => self.apptoken.add(decode(raw_value)?),
                Name::Action => self.action.add(decode(raw_value)?),
                Name::Json => self.json |= raw_value == b"1",
                Name::MethodOverride => self.method_override = true,
                Name::Other => {}
            }
        }
        Ok(())
    }

    /// Adds the tokens of `Authorization: Bearer <token>` headers, which REST
    /// clients send theirs as (outside the XMLAPI path only: the caller
    /// decides). A bearer and an APPTOKEN naming two tokens conflict.
    pub fn scan_bearers(&mut self, authorization: impl Iterator<Item = &'a [u8]>) {
        for value in authorization {
            if let Some(token) = bearer_token(value) {
                self.apptoken.add(Cow::Borrowed(token));
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any
/// letter case, RFC 9110 §11.4), if the value is one.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The `&`-separated pieces of a query or form body, as `split` gives them
/// (an empty input is one empty piece), found with memchr: a query is
/// scanned on every request, and a 64-character token made the byte-wise
/// split a good part of the cost.
fn pieces(input: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(input);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b'&', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

fn split_piece(piece: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b'=', piece) {
        Some(i) => (&piece[..i], &piece[i + 1..]),
        None => (piece, &[]),
    }
}

/// Decodes a parameter name just far enough to know which one it is, without
/// allocating. Every escape in it must be well formed. A name with non-ASCII
/// characters is compared as Java's case-insensitive comparisons would see it
/// (`ı`, `ſ`, `K`, `İ` fold to ASCII letters there), so an application that
/// matches names that way cannot be handed an ACTION the gateway did not see.
pub fn classify(raw: &[u8]) -> Result<Name, Malformed> {
    // The usual name: plain ASCII with nothing to decode.
    if raw.iter().all(|&b| b.is_ascii() && b != b'%' && b != b'+') {
        return Ok(match raw.len() {
            8 if raw.eq_ignore_ascii_case(b"apptoken") => Name::AppToken,
            6 if raw.eq_ignore_ascii_case(b"action") => Name::Action,
            4 if raw.eq_ignore_ascii_case(b"json") => Name::Json,
            7 if raw.eq_ignore_ascii_case(b"_method") => Name::MethodOverride,
            _ => Name::Other,
        });
    }
    let mut buf = [0u8; 8];
    let mut n = 0usize;
    let mut non_ascii = false;
    for b in unescape(raw, true) {
        let b = b.ok_or(Malformed)?;
        non_ascii |= b >= 0x80;
        if n < buf.len() {
            buf[n] = b.to_ascii_lowercase();
        }
        n += 1;
    }
    if non_ascii {
        return Ok(classify_unicode(raw));
    }
    Ok(name_of(&buf[..n.min(8)], n))
}

fn name_of(lower: &[u8], len: usize) -> Name {
    match (len, lower) {
        (8, b"apptoken") => Name::AppToken,
        (6, b"action") => Name::Action,
        (4, b"json") => Name::Json,
        (7, b"_method") => Name::MethodOverride,
        _ => Name::Other,
    }
}

/// The rare name with non-ASCII bytes: fold each character to the ASCII
/// letter its Java upper or lower case is, where there is one.
fn classify_unicode(raw: &[u8]) -> Name {
    let Ok(bytes) = decode(raw) else { return Name::Other };
    let text = String::from_utf8_lossy(&bytes);
    let mut folded = Vec::with_capacity(8);
    for c in text.chars() {
        let ascii = if c.is_ascii() {
            Some(c)
        } else {
            // Java maps one character to one: a lower case that starts with
            // an ASCII letter (İ -> i + combining dot), or an upper case that
            // is a single ASCII letter (ı -> I, ſ -> S; not ß -> SS).
            let lower = c.to_lowercase().next().filter(char::is_ascii_alphabetic);
            let mut upper = c.to_uppercase();
            let single_upper = match (upper.next(), upper.next()) {
                (Some(u), None) if u.is_ascii_alphabetic() => Some(u),
                _ => None,
            };
            lower.or(single_upper)
        };
        match ascii {
            Some(a) => folded.push(a.to_ascii_lowercase() as u8),
            None => return Name::Other,
        }
        if folded.len() > 8 {
            return Name::Other;
        }
    }
    name_of(&folded, folded.len())
}

/// Percent-decodes a value (`+` is a space), borrowing when there is nothing
/// to decode.
pub fn decode(raw: &[u8]) -> Result<Cow<'_, [u8]>, Malformed> {
    if memchr::memchr2(b'%', b'+', raw).is_none() {
        return Ok(Cow::Borrowed(raw));
    }
    unescape(raw, true).collect::<Option<Vec<u8>>>().map(Cow::Owned).ok_or(Malformed)
}

/// Copies `input` (a query or form body) to `out` without its APPTOKEN
/// pieces; every other byte stays as the caller sent it. Returns whether
/// anything was removed. Call after [`Params::scan`] succeeded on `input`.
pub fn strip_apptoken(input: &[u8], out: &mut Vec<u8>) -> bool {
    let mut removed = false;
    let mut first = true;
    for piece in pieces(input) {
        if matches!(classify(split_piece(piece).0), Ok(Name::AppToken)) {
            removed = true;
            continue;
        }
        if !first {
            out.push(b'&');
        }
        out.extend_from_slice(piece);
        first = false;
    }
    removed
}

/// What to do with a request body before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Not a form: the container reads no parameters from it; it streams.
    Opaque,
    /// `application/x-www-form-urlencoded` in an ASCII-compatible charset:
    /// read it (up to the limit), decide on it, strip APPTOKEN from it.
    Form,
    /// A body the container might read parameters from in a way the gateway
    /// does not follow with certainty.
    Refused(&'static str),
}

/// Charsets in which the bytes of `APPTOKEN` and `ACTION` can only be those
/// ASCII bytes. In any other (UTF-16, EBCDIC, UTF-7) the container could
/// decode a name the gateway did not see.
const ASCII_COMPATIBLE: [&str; 11] = [
    "utf-8",
    "utf8",
    "iso-8859-1",
    "iso_8859-1",
    "latin1",
    "l1",
    "us-ascii",
    "ascii",
    "windows-1252",
    "cp1252",
    "iso-8859-15",
];

/// Classifies a request body by its headers, as Tomcat would decide whether
/// to parse it for parameters (form type in any letter case, any charset).
pub fn body_kind(headers: &HeaderMap) -> BodyKind {
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    let Some(ct) = types.next() else {
        return BodyKind::Opaque;
    };
    if types.next().is_some() {
        return BodyKind::Refused("The request has more than one Content-Type");
    }
    let Ok(ct) = ct.to_str() else {
        return BodyKind::Refused("The Content-Type is not readable");
    };
    // A charset other than an ASCII-compatible one changes how a container
    // may decode parameters (the body's, and with some settings the query's),
    // whatever the type: only plain, known charsets pass.
    if !charset_is_plain(ct) {
        return BodyKind::Refused("The Content-Type names a charset that is not supported");
    }
    let essence = ct.split(';').next().unwrap_or("").trim_matches(|c: char| c <= ' ');
    if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        if headers.get_all(CONTENT_ENCODING).iter().any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity")) {
            return BodyKind::Refused("A content-encoded form body is not supported");
        }
        return BodyKind::Form;
    }
    if essence.eq_ignore_ascii_case("multipart/form-data") {
        return BodyKind::Refused("multipart/form-data bodies are not supported");
    }
    if essence.as_bytes().windows(4).any(|w| w.eq_ignore_ascii_case(b"form")) {
        return BodyKind::Refused("The Content-Type is not understood");
    }
    BodyKind::Opaque
}

/// Every `charset=` parameter names an allowed charset, plainly written, and
/// "charset" appears nowhere else in the header (a parser that looks for the
/// word anywhere must not find one the gateway did not check).
fn charset_is_plain(ct: &str) -> bool {
    // Non-overlapping, as `str::matches` counts ("charset" cannot overlap itself).
    let mentions = ct.as_bytes().windows(7).filter(|w| w.eq_ignore_ascii_case(b"charset")).count();
    let mut checked = 0;
    for p in ct.split(';').skip(1) {
        let Some((k, v)) = p.split_once('=') else { continue };
        if !k.trim().eq_ignore_ascii_case("charset") {
            continue;
        }
        checked += 1;
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        if !ASCII_COMPATIBLE.iter().any(|c| c.eq_ignore_ascii_case(v)) {
            return false;
        }
    }
    checked == mentions
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan(q: &str) -> Result<Params<'_>, Malformed> {
        let mut p = Params::default();
        p.scan(q.as_bytes())?;
        Ok(p)
    }

    fn one(s: &str) -> ParamValue<'static> {
        ParamValue::One(Cow::Owned(s.as_bytes().to_vec()))
    }

    #[test]
    fn names_in_any_case_and_encoding_are_seen() {
        for q in ["ACTION=X", "action=X", "AcTiOn=X", "%41CTION=X", "%61ction=X", "ACTIO%4e=X", "ACTIO%4E=X"] {
            assert_eq!(scan(q).unwrap().action, one("X"), "{q}");
        }
        // As Java's case-insensitive comparison sees them.
        for q in ["ACT%C4%B1ON=X", "act%C4%B0on=X", "ACTION=X"] {
            assert_eq!(scan(q).unwrap().action, one("X"), "{q}");
        }
        let mut p = Params::default();
        p.scan(b"APPTO%E2%84%AAEN=t").unwrap();
        assert_eq!(p.apptoken, one("t"));
        for q in ["ACTION+=X", "ACTION%20=X", "ACTIONS=X", "XACTION=X", "ACTION%00=X", "ACT=X", "%EF%BC%A1CTION=X"] {
            assert_eq!(scan(q).unwrap().action, ParamValue::Absent, "{q}");
        }
    }

    #[test]
    fn values_are_decoded() {
        assert_eq!(scan("ACTION=TARGET%44ATA").unwrap().action, one("TARGETDATA"));
        assert_eq!(scan("ACTION=A+B").unwrap().action, one("A B"));
        assert_eq!(scan("ACTION").unwrap().action, one(""));
        assert_eq!(scan("ACTION=a=b").unwrap().action, one("a=b"));
    }

    #[test]
    fn duplicates_conflict_only_when_different() {
        assert_eq!(scan("ACTION=X&action=X").unwrap().action, one("X"));
        assert_eq!(scan("ACTION=X&ACTION=%58").unwrap().action, one("X"));
        assert_eq!(scan("ACTION=X&ACTION=Y").unwrap().action, ParamValue::Conflict);
        assert_eq!(scan("APPTOKEN=a&apptoken=b").unwrap().apptoken, ParamValue::Conflict);
        assert_eq!(scan("ACTION=X&ACTION=Y&ACTION=X").unwrap().action, ParamValue::Conflict);
    }

    #[test]
    fn broken_escapes_in_names_or_watched_values_are_malformed() {
        for q in ["%4=X", "ACTION%=X", "%zzCTION=X", "ACTION=%4", "APPTOKEN=%G0"] {
            assert_eq!(scan(q), Err(Malformed), "{q}");
        }
        // A broken escape in another parameter's value does not matter.
        assert!(scan("OTHER=%zz&ACTION=X").is_ok());
    }

    #[test]
    fn bearers_are_tokens_and_conflict_with_another_apptoken() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        let mut p = Params::default();
        p.scan(b"APPTOKEN=abc").unwrap();
        p.scan_bearers([&b"Bearer abc"[..]].into_iter());
        assert_eq!(p.apptoken, one("abc"), "the same token twice is one");
        p.scan_bearers([&b"Bearer xyz"[..]].into_iter());
        assert_eq!(p.apptoken, ParamValue::Conflict);
    }

    #[test]
    fn json_flag() {
        assert!(scan("JSON=1").unwrap().json);
        assert!(scan("json=1").unwrap().json);
        assert!(!scan("JSON=0").unwrap().json);
    }

    #[test]
    fn strip_removes_every_apptoken_and_keeps_the_rest() {
        let cases = [
            ("APPTOKEN=a&ACTION=X", "ACTION=X"),
            ("ACTION=X&APPTOKEN=a", "ACTION=X"),
            ("A=1&apptoken=a&%41PPTOKEN=b&B=%zz", "A=1&B=%zz"),
            ("APPTOKEN=a", ""),
            ("A=1&&B=2", "A=1&&B=2"),
            ("", ""),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            strip_apptoken(input.as_bytes(), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{input}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn body_kinds() {
        let form = "application/x-www-form-urlencoded";
        assert_eq!(body_kind(&headers(&[])), BodyKind::Opaque);
        assert_eq!(body_kind(&headers(&[("content-type", form)])), BodyKind::Form);
        assert_eq!(
            body_kind(&headers(&[("content-type", "Application/X-WWW-Form-URLEncoded; charset=UTF-8")])),
            BodyKind::Form
        );
        assert_eq!(
            body_kind(&headers(&[("content-type", "application/x-www-form-urlencoded; charset=\"ISO-8859-1\"")])),
            BodyKind::Form
        );
        assert_eq!(body_kind(&headers(&[("content-type", "application/json")])), BodyKind::Opaque);
        for refused in [
            vec![("content-type", "application/x-www-form-urlencoded; charset=UTF-16")],
            vec![("content-type", "application/x-www-form-urlencoded; charset=IBM037")],
            vec![("content-type", "multipart/form-data; boundary=x")],
            vec![("content-type", "MULTIPART/FORM-DATA; boundary=x")],
            vec![("content-type", "application/x-www-form-urlencoded, text/plain")],
            vec![("content-type", form), ("content-type", form)],
            vec![("content-type", form), ("content-encoding", "gzip")],
            vec![("content-type", "application/x-www-form-urlencoded; xcharset=UTF-16")],
            vec![("content-type", "application/x-www-form-urlencoded; charset=UTF-8; charset=UTF-16")],
            vec![("content-type", "application/x-www-form-urlencoded; charset=\"UTF\\-16\"")],
            vec![("content-type", "text/plain; charset=UTF-16")],
            vec![("content-type", "application/json; foo=\"charset=utf-16\"")],
        ] {
            assert!(matches!(body_kind(&headers(&refused)), BodyKind::Refused(_)), "{refused:?}");
        }
    }

    /// A reference decoder in the container's manner: decode the name fully,
    /// then compare.
    fn reference_name(raw: &[u8]) -> Option<Vec<u8>> {
        decode(raw).ok().map(|c| c.into_owned())
    }

    proptest! {
        #[test]
        fn pieces_are_what_split_gives(input in proptest::collection::vec(prop_oneof![Just(b'&'), Just(b'a'), Just(b'=')], 0..12)) {
            let want: Vec<&[u8]> = input.split(|&b| b == b'&').collect();
            prop_assert_eq!(pieces(&input).collect::<Vec<_>>(), want);
        }

        #[test]
        fn classify_agrees_with_full_decoding(raw in proptest::collection::vec(
            prop_oneof![Just(b'%'), Just(b'+'), Just(b'A'), Just(b'a'), Just(b'4'), Just(b'1'),
                        Just(b'C'), Just(b'T'), Just(b'I'), Just(b'O'), Just(b'N'), any::<u8>()], 0..14)) {
            // Non-ASCII names fold the Java way; the unit tests cover those.
            prop_assume!(reference_name(&raw).is_none_or(|n| n.is_ascii()));
            match (classify(&raw), reference_name(&raw)) {
                (Err(Malformed), None) => {}
                (Ok(kind), Some(name)) => {
                    let lower = name.to_ascii_lowercase();
                    let want = match lower.as_slice() {
                        b"apptoken" => Name::AppToken,
                        b"action" => Name::Action,
                        b"json" => Name::Json,
                        b"_method" => Name::MethodOverride,
                        _ => Name::Other,
                    };
                    prop_assert_eq!(kind, want);
                }
                (a, b) => prop_assert!(false, "classify {:?} vs decode {:?}", a, b),
            }
        }

        #[test]
        fn classify_finds_every_spelling_of_the_names(
            word in proptest::sample::select(vec!["apptoken", "action", "json", "_method", "apptokens", "actio", "jso", "_methods"]),
            how in proptest::collection::vec(0u8..3, 9),
        ) {
            // Each letter as is, upper case, or percent-encoded.
            let raw: String = word
                .chars()
                .zip(&how)
                .map(|(c, h)| match h {
                    0 => c.to_string(),
                    1 => c.to_ascii_uppercase().to_string(),
                    _ => format!("%{:02X}", c as u32),
                })
                .collect();
            let want = match word {
                "apptoken" => Name::AppToken,
                "action" => Name::Action,
                "json" => Name::Json,
                "_method" => Name::MethodOverride,
                _ => Name::Other,
            };
            prop_assert_eq!(classify(raw.as_bytes()), Ok(want), "{}", raw);
        }

        #[test]
        fn stripping_removes_exactly_the_apptoken_pieces(pieces in proptest::collection::vec((
            proptest::sample::select(vec!["APPTOKEN", "apptoken", "%41PPTOKEN", "ApPtOkEn", "ACTION", "JSON", "X", "APPTOKENS", "%2541PPTOKEN"]),
            "([A-Za-z0-9+]|%41){0,4}",
        ), 0..6)) {
            let query = pieces.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("&");
            let mut p = Params::default();
            prop_assume!(p.scan(query.as_bytes()).is_ok());
            let mut out = Vec::new();
            let removed = strip_apptoken(query.as_bytes(), &mut out);
            let is_token = |n: &str| ["APPTOKEN", "apptoken", "%41PPTOKEN", "ApPtOkEn"].contains(&n);
            let kept: Vec<String> =
                pieces.iter().filter(|(n, _)| !is_token(n)).map(|(n, v)| format!("{n}={v}")).collect();
            prop_assert_eq!(String::from_utf8(out).unwrap(), kept.join("&"));
            prop_assert_eq!(removed, pieces.iter().any(|(n, _)| is_token(n)));
        }

        #[test]
        fn stripped_input_has_no_apptoken_and_same_others(q in "[A-Za-z%=&+0-9]{0,40}") {
            let mut p = Params::default();
            if p.scan(q.as_bytes()).is_ok() {
                let mut out = Vec::new();
                strip_apptoken(q.as_bytes(), &mut out);
                let mut again = Params::default();
                again.scan(&out).unwrap();
                prop_assert_eq!(again.apptoken, ParamValue::Absent);
                prop_assert_eq!(again.action, p.action);
            }
        }
    }
}
