//! The route-level `[auth]` table and the error type every `validate()` in
//! this crate returns: each error names the key path it is about, relative to
//! the table being validated, so the gateway can prefix it with the route's
//! own path (`listeners[0].routes[2].auth.jwt.keys[1].secret`).

use crate::api_key::ApiKeyConfig;
use crate::jwt::JwtConfig;
use serde::{Deserialize, Deserializer};
use std::fmt;

/// How a route authenticates its callers. At least one of `api_keys` and
/// `jwt` must be set; with both, a request may present either.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// API keys, stored as hashes.
    #[serde(default)]
    pub api_keys: Option<ApiKeyConfig>,
    /// JSON Web Tokens.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Let requests that present no credentials at all through, without an
    /// identity. Credentials that are present and wrong are still refused.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// The realm named in `WWW-Authenticate` challenges.
    #[serde(default = "default_realm")]
    pub realm: String,
}

fn default_realm() -> String {
    "trellis".to_owned()
}

impl AuthConfig {
    /// Checks everything that can be checked without reading files or the
    /// network. Paths in the errors are relative to this table.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = ConfigErrors::default();
        if self.api_keys.is_none() && self.jwt.is_none() {
            errors.push("", "set at least one of `api_keys` and `jwt`");
        }
        if self.realm.is_empty()
            || self.realm.contains(['"', '\\'])
            || !is_visible_ascii(&self.realm)
        {
            errors.push(
                "realm",
                "must be non-empty printable ASCII without quotes or backslashes",
            );
        }
        if let Some(api_keys) = &self.api_keys {
            errors.extend_at("api_keys", api_keys.validate());
        }
        if let Some(jwt) = &self.jwt {
            errors.extend_at("jwt", jwt.validate());
        }
        errors.into_result()
    }
}

pub(crate) fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// One problem in a configuration, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct ConfigError {
    /// Dotted key path, e.g. `jwt.keys[1].jwks_url`; empty for the table itself.
    pub path: String,
    /// What is wrong, never echoing a secret.
    pub message: String,
}

/// Every problem found in a configuration, not just the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Nests these errors under `prefix`, so that a table embedded at
    /// `routes[3].auth` reports `routes[3].auth.jwt.issuer`.
    pub fn with_prefix(self, prefix: &str) -> Self {
        ConfigErrors(
            self.0
                .into_iter()
                .map(|e| ConfigError {
                    path: join_path(prefix, &e.path),
                    message: e.message,
                })
                .collect(),
        )
    }

    pub(crate) fn extend_at(&mut self, prefix: &str, result: Result<(), ConfigErrors>) {
        if let Err(errors) = result {
            self.0.extend(errors.with_prefix(prefix).0);
        }
    }

    pub(crate) fn into_result(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// The individual errors.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    pub(crate) fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        let mut errors = ConfigErrors::default();
        errors.push(path, message);
        errors
    }
}

pub(crate) fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Serde helpers for humantime durations (`"30s"`, `"5m"`, `"250ms"`).
pub(crate) mod duration {
    use super::*;
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: {e} (write e.g. \"30s\", \"5m\")"
            ))
        })
    }

    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

/// Accepts either one string or a list of strings, so `issuer = "x"` and
/// `issuer = ["x", "y"]` both read naturally.
pub(crate) fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(one)) => Ok(vec![one]),
        Ok(OneOrMany::Many(many)) => Ok(many),
        Err(_) => Err(serde::de::Error::custom(
            "expected a string or a list of strings",
        )),
    }
}

/// A secret read from the configuration: its `Debug` output never shows it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
