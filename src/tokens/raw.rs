//! A token file's tables as read, before anything is validated: what both
//! readers (the fast line scanner of `tokens::lines` and the general TOML
//! reader of `tokens::file`) hand to the one validation, through [`Sink`].

use std::borrow::Cow;
use std::ops::Range;

use crate::diagnostic::Source;

/// A string value and where it stands in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpannedText<'a> {
    /// The value (borrowed from the file when it needed no unescaping).
    pub text: Cow<'a, str>,
    /// Its byte span.
    pub span: Range<usize>,
}

impl SpannedText<'_> {
    /// From a value the general TOML reader parsed.
    pub fn owned(s: serde_spanned::Spanned<String>) -> Self {
        Self { span: s.span(), text: Cow::Owned(s.into_inner()) }
    }
}

/// One `[access_rights.NAME]`, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRight<'a> {
    /// The NAME of `[access_rights.NAME]`.
    pub name: Cow<'a, str>,
    /// Span of the table (for errors about it as a whole).
    pub span: Range<usize>,
    /// The `actions` array, element by element.
    pub actions: Vec<SpannedText<'a>>,
    /// The `routes` array, element by element (not parsed yet).
    pub routes: Vec<SpannedText<'a>>,
    /// `rate`, `burst` and `concurrency`, as written.
    pub limits: RawLimits<'a>,
}

/// One `[[token]]`, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawToken<'a> {
    /// Span of the table.
    pub span: Range<usize>,
    /// Line of its `[[token]]` header.
    pub line: u32,
    /// `name`, not checked yet for emptiness or uniqueness.
    pub name: SpannedText<'a>,
    /// `active` (a boolean by then: the readers check the type).
    pub active: bool,
    /// `token`: the secret in plain text, when the file holds it so.
    pub token: Option<SpannedText<'a>>,
    /// `token_sha256`: one digest or a list, not checked yet.
    pub token_sha256: Option<RawDigests<'a>>,
    /// `ip_restriction`, element by element (not parsed yet).
    pub ip_restriction: Vec<SpannedText<'a>>,
    /// `access_right`: a right's name, perhaps of a right defined further down.
    pub access_right: SpannedText<'a>,
    /// `expires` as text: `never`, or RFC 3339 (a TOML date-time is turned
    /// back into text). Required: `None` is an error the validation words.
    pub expires: Option<SpannedText<'a>>,
    /// Its own `rate`, `burst` and `concurrency`, as written.
    pub limits: RawLimits<'a>,
    /// Where the value of its last required key (in file order) begins: a
    /// limit key written after it would be dropped without a trace by a
    /// file cut short just before that key, so the validation refuses it.
    pub last_required_at: usize,
}

/// The optional limit keys of an access right or a token (interface.md §4),
/// before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawLimits<'a> {
    /// `rate`: a string `N/s`, `N/m` or `N/h`, not parsed yet.
    pub rate: Option<RawValue<'a>>,
    /// `burst`: a whole number, not checked yet.
    pub burst: Option<RawValue<'a>>,
    /// `concurrency`: a whole number, not checked yet.
    pub concurrency: Option<RawValue<'a>>,
}

impl RawLimits<'_> {
    /// Whether any of the keys is written.
    pub fn any(&self) -> bool {
        self.rate.is_some() || self.burst.is_some() || self.concurrency.is_some()
    }

    /// The keys that are written, with their names, in this order.
    pub fn written(&self) -> impl Iterator<Item = (&'static str, &RawValue<'_>)> {
        [("rate", &self.rate), ("burst", &self.burst), ("concurrency", &self.concurrency)]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_ref()?)))
    }
}

/// A value whose type the validation checks (so that both readers word a
/// mistyped one alike, without quoting it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawValue<'a> {
    /// A string.
    Text(SpannedText<'a>),
    /// An integer, and its span.
    Integer(i64, Range<usize>),
    /// Anything else (a float, a boolean, an array...): only its span.
    Other(Range<usize>),
}

impl RawValue<'_> {
    /// Where the value stands in the file.
    pub fn span(&self) -> &Range<usize> {
        match self {
            RawValue::Text(t) => &t.span,
            RawValue::Integer(_, span) | RawValue::Other(span) => span,
        }
    }
}

/// `token_sha256` as written: a string, or an array of strings (rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDigests<'a> {
    /// The whole value's span (the string, or the array with its brackets).
    pub span: Range<usize>,
    /// Whether it was written as an array.
    pub list: bool,
    /// Each digest, not checked yet for being 64 hex digits.
    pub digests: Vec<SpannedText<'a>>,
}

/// Receives the tables of a token file in file order, whichever reader
/// found them.
pub trait Sink<'a> {
    /// One `[access_rights.NAME]`.
    fn right(&mut self, r: RawRight<'a>);
    /// One `[[token]]`.
    fn token(&mut self, t: RawToken<'a>);
    /// Where errors go.
    fn source(&mut self) -> &mut Source<'a>;
}
