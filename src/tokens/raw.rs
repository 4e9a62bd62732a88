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
