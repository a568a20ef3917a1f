//! [`ConfigError`]: every way a config can be wrong, rendered as
//! `file:line:col: key.path: message` lines that editors and CI annotate.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::locate::{exact_span_of, line_col, span_of};
use super::validate::{KeyPath, Problem, Segment};

/// A 1-based line and column in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

/// One located problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the config came from.
    pub file: PathBuf,
    /// Where in the file, when it can be told.
    pub location: Option<Location>,
    /// The key the problem is about; root for syntax errors.
    pub key: KeyPath,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(loc) = self.location {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        if !self.key.is_root() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file was read but is not a valid config; one diagnostic per
    /// problem (parsing stops at the first, validation reports them all).
    #[error("{}", render(diagnostics))]
    Invalid {
        /// The problems, each located.
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The located problems (empty for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { diagnostics } => diagnostics,
        }
    }

    pub(crate) fn from_serde(
        text: &str,
        file: &Path,
        err: serde_path_to_error::Error<toml::de::Error>,
    ) -> ConfigError {
        let mut key = KeyPath::parse_dotted(&err.path().to_string());
        let inner = err.inner();
        let mut message = inner.message().trim().to_owned();
        // Make sure the typo itself ends the path, whichever way the
        // deserializer reported it (at the key, or at its table).
        if let Some(unknown) = unknown_field(&message) {
            if key.0.last() != Some(&Segment::Key(unknown.to_owned())) {
                key.0.push(Segment::Key(unknown.to_owned()));
            }
            if let Some(near) = suggestion(unknown, &message) {
                message.push_str(&format!(" (did you mean `{near}`?)"));
            }
        }
        // The parser's span is exact for syntax errors and unknown keys, but
        // a section's own deserializer that parses after reading a string
        // gets the span of the enclosing table; the key path is more precise
        // then, so prefer the value it names when it is in the file.
        let span = if unknown_field(&message).is_some() {
            inner.span()
        } else {
            exact_span_of(text, &key).or_else(|| inner.span())
        };
        let location = span
            .or_else(|| span_of(text, &key))
            .map(|span| line_col(text, span.start));
        ConfigError::Invalid {
            diagnostics: vec![Diagnostic {
                file: file.to_path_buf(),
                location,
                key,
                message,
            }],
        }
    }

    pub(crate) fn from_problems(text: &str, file: &Path, problems: Vec<Problem>) -> ConfigError {
        let diagnostics = problems
            .into_iter()
            .map(|p| Diagnostic {
                file: file.to_path_buf(),
                location: span_of(text, &p.path).map(|span| line_col(text, span.start)),
                key: p.path,
                message: p.message,
            })
            .collect();
        ConfigError::Invalid { diagnostics }
    }
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// The expected name closest to a misspelt one, if it is close enough to be
/// a typo (serde lists the expected names in backticks after "expected").
fn suggestion(unknown: &str, message: &str) -> Option<String> {
    let (_, expected) = message.split_once("expected")?;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|name| (edit_distance(unknown, name), name))
        .filter(|(d, name)| *d <= 2.max(name.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_expected_key() {
        let msg = "unknown field `lisen`, expected one of `listen`, `token`, `shutdown_grace`";
        assert_eq!(suggestion("lisen", msg).as_deref(), Some("listen"));
        let msg = "unknown field `formt`, expected `level` or `format`";
        assert_eq!(suggestion("formt", msg).as_deref(), Some("format"));
        let msg = "unknown field `gateway`, expected `level` or `format`";
        assert_eq!(suggestion("gateway", msg), None);
    }
}
