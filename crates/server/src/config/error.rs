//! [`ConfigError`]: every way a config can be wrong, rendered as
//! `file:line:col: key.path: message` lines that editors and CI annotate.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::locate::{line_col, span_of};
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
        let message = inner.message().trim().to_owned();
        // Make sure the typo itself ends the path, whichever way the
        // deserializer reported it (at the key, or at its table).
        if let Some(unknown) = unknown_field(&message) {
            if key.0.last() != Some(&Segment::Key(unknown.to_owned())) {
                key.0.push(Segment::Key(unknown.to_owned()));
            }
        }
        let location = inner
            .span()
            .map(|span| line_col(text, span.start))
            .or_else(|| span_of(text, &key).map(|span| line_col(text, span.start)));
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
