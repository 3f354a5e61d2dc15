//! Configuration errors that point into the file: `path:line:col: error: message`, then the
//! source line and a caret under the offending value, the way toml's own syntax errors look
//! (and the way `--check` prints warnings, with `warning:`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Byte range in the file the problem is about; `None` for problems of the file as a whole.
    pub span: Option<Range<usize>>,
    /// What is wrong and what would be right, lowercase, no trailing period.
    pub message: String,
}

impl Diagnostic {
    /// A problem located at `span`.
    pub fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic { span: Some(span), message: message.into() }
    }

    /// A problem of the whole file.
    pub fn whole(message: impl Into<String>) -> Self {
        Diagnostic { span: None, message: message.into() }
    }
}

/// Every problem of one configuration file, ready to print.
#[derive(Debug)]
pub struct ConfigError {
    path: PathBuf,
    source: String,
    diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// Collects `diagnostics` about the file at `path` whose text is `source`.
    pub fn new(path: &Path, source: &str, diagnostics: Vec<Diagnostic>) -> Self {
        ConfigError { path: path.to_owned(), source: source.to_owned(), diagnostics }
    }

    /// The file could not be read at all.
    pub fn unreadable(path: &Path, err: &std::io::Error) -> Self {
        let message = format!("cannot read the configuration file: {err}");
        ConfigError::new(path, "", vec![Diagnostic::whole(message)])
    }

    /// The individual problems, in file order.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// `(line, column)` of a problem, both 1-based, or `None` for a whole-file problem.
    pub fn line_col(&self, diagnostic: &Diagnostic) -> Option<(usize, usize)> {
        diagnostic.span.as_ref().map(|span| line_col(&self.source, span.start))
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let Some(span) = &d.span else {
                write!(f, "{path}: error: {}", d.message)?;
                continue;
            };
            let (line, col) = line_col(&self.source, span.start);
            writeln!(f, "{path}:{line}:{col}: error: {}", d.message)?;
            let text = self.source.lines().nth(line - 1).unwrap_or("");
            let width = self.source[span.clone()].lines().next().unwrap_or("").chars().count();
            let gutter = line.to_string().len();
            writeln!(f, "{:gutter$} |", "")?;
            writeln!(f, "{line} | {text}")?;
            write!(f, "{:gutter$} | {:pad$}{}", "", "", "^".repeat(width.max(1)), pad = col - 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\nbb = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 11), (2, 6));
    }

    #[test]
    fn display_shows_line_and_caret() {
        let text = "x = 1\nroute = \"legcy\"\n";
        let err =
            ConfigError::new(Path::new("proxy.toml"), text, vec![Diagnostic::at(14..21, "no such upstream")]);
        let shown = err.to_string();
        assert!(shown.starts_with("proxy.toml:2:9: error: no such upstream\n"), "{shown}");
        assert!(shown.contains("2 | route = \"legcy\""), "{shown}");
        assert!(shown.ends_with("  |         ^^^^^^^"), "{shown:?}");
    }
}
