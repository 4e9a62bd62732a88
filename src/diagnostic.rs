//! Errors found in a config file, each pinned to file:line:column. Owns the
//! error type shared by `gateway.toml` and the token file; knows no schema.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in one config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, 0 when the problem is the file as a whole.
    pub line: usize,
    /// 1-based column (in characters), 0 when the problem is the file as a whole.
    pub column: usize,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every error found in one pass over a file (or two files), in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// One problem with `file` as a whole (it cannot be read, say).
    pub fn whole_file(file: &std::path::Path, message: String) -> Self {
        ConfigErrors(vec![ConfigError { file: file.to_path_buf(), line: 0, column: 0, message }])
    }
}

/// The text of a config file, kept so that byte spans can be turned into
/// line:column while errors are collected.
pub struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
    /// Byte offset of each line's start, built on first use.
    line_starts: std::cell::OnceCell<Vec<usize>>,
}

impl<'a> Source<'a> {
    /// Starts collecting errors for `text`, read from `path`.
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Self { path, text, errors: Vec::new(), line_starts: std::cell::OnceCell::new() }
    }

    /// The file's path.
    pub fn path(&self) -> &'a Path {
        self.path
    }

    /// The file's text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// Records an error at a byte span (or for the whole file when `None`).
    pub fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let (line, column) = match span {
            Some(s) => self.line_col(s.start),
            None => (0, 0),
        };
        self.errors.push(ConfigError { file: self.path.to_path_buf(), line, column, message: message.into() });
    }

    /// Records a TOML parse or deserialisation error; `fallback` is used when
    /// the error carries no span of its own (a missing key: point at its table).
    pub fn toml_error(&mut self, e: &toml_edit::de::Error, fallback: Option<Range<usize>>) {
        let span = e.span().or(fallback);
        self.error(span, e.message().trim_end().to_string());
    }

    /// Whether any error was recorded.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The errors recorded so far, in file order.
    pub fn into_errors(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|e| (e.line, e.column));
        self.errors
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.line_col(offset).0
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let starts = self
            .line_starts
            .get_or_init(|| std::iter::once(0).chain(self.text.match_indices('\n').map(|(i, _)| i + 1)).collect());
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let line = starts.partition_point(|&s| s <= offset);
        let start = starts[line - 1];
        let column = self.text[start..offset].chars().count() + 1;
        (line, column)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_become_one_based_line_and_column() {
        let text = "a = 1\nbé = 2\n";
        let mut src = Source::new(Path::new("f.toml"), text);
        src.error(Some(10..11), "here");
        src.error(None, "whole");
        let errs = src.into_errors();
        assert_eq!(errs[0].to_string(), "f.toml: whole");
        assert_eq!(errs[1].to_string(), "f.toml:2:4: here");
    }
}
