//! The sections the binary itself owns: `[control]`, `[log]` and `[data]`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de;
use super::validate::{Validate, Validator};

/// `[control]`: the control-plane HTTP API (health, metrics, OpenAPI and the
/// components' REST endpoints).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Address the control API listens on.
    #[serde(deserialize_with = "de::socket_addr")]
    pub listen: SocketAddr,
    /// Bearer token required on every control request except `/healthz` and
    /// `/readyz`. Mandatory (or `token_file`) when `listen` is not a loopback
    /// address.
    pub token: Option<Secret>,
    /// A file holding the token (surrounding whitespace ignored), so the
    /// secret can stay out of the config, e.g. a mounted Kubernetes secret.
    pub token_file: Option<PathBuf>,
    /// How long shutdown waits for in-flight requests before giving up.
    #[serde(deserialize_with = "de::duration")]
    pub shutdown_grace: Duration,
}

impl ControlConfig {
    /// The default control address, `127.0.0.1:9900`.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9900);
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: Self::DEFAULT_LISTEN,
            token: None,
            token_file: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl ControlConfig {
    /// The bearer token in force, from `token` or read from `token_file`.
    pub fn bearer_token(&self) -> Result<Option<Secret>, String> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        let Some(file) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        Ok(Some(Secret::new(text.trim())))
    }
}

impl Validate for ControlConfig {
    fn validate(&self, v: &mut Validator) {
        let key = if self.token_file.is_some() {
            "token_file"
        } else {
            "token"
        };
        if self.token.is_some() && self.token_file.is_some() {
            v.invalid("token_file", "set either token or token_file, not both");
            return;
        }
        let token = match self.bearer_token() {
            Ok(token) => token,
            Err(e) => {
                v.invalid(key, e);
                return;
            }
        };
        match token {
            Some(token) if token.expose().is_empty() => {
                v.invalid(key, "the token must not be empty");
            }
            Some(token)
                if token
                    .expose()
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control()) =>
            {
                v.invalid(
                    key,
                    "the token must not contain whitespace or control characters",
                );
            }
            Some(_) => {}
            None if !self.listen.ip().is_loopback() => {
                v.invalid(
                    "token",
                    format!(
                        "required because control.listen ({}) is reachable beyond loopback; \
                         set token or token_file, or listen on 127.0.0.1",
                        self.listen
                    ),
                );
            }
            None => {}
        }
    }
}

/// A string that must not show up in logs or debug output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the few places that must compare or send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `[log]`: what is logged and how.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`info`) or directives
    /// (`info,trellis=debug`). `RUST_LOG`, when set, wins.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Validate for LogConfig {
    fn validate(&self, v: &mut Validator) {
        if let Err(message) = check_filter(&self.level) {
            v.invalid("level", message);
        }
    }
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Accepts `tracing` filter directives, but rejects a bare word that is not a
/// level: `tracing` would read `verbose` as "everything from target
/// `verbose`", which silently logs nothing.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err(format!(
            "must not be empty; use one of {}",
            LEVELS.join(", ")
        ));
    }
    for directive in filter.split(',').map(str::trim) {
        if directive.is_empty() || directive.contains('=') || directive.contains('[') {
            continue;
        }
        if !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "unknown level {directive:?}; use one of {} or target=level directives",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| format!("invalid filter {filter:?}: {e}"))
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[data]`: where the embedded store and other local state live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Directory for embedded state; created on `trellis up` if missing.
    pub dir: PathBuf,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: PathBuf::from("./trellis-data"),
        }
    }
}

impl Validate for DataConfig {
    fn validate(&self, v: &mut Validator) {
        if self.dir.as_os_str().is_empty() {
            v.invalid("dir", "must not be empty");
        }
    }
}

/// `[reload]`: how a running node picks up edits to its config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Reload when the config file changes on disk, as on SIGHUP.
    pub watch: bool,
    /// Quiet time after the last change before the file is read, so an
    /// editor's several writes (or a write then a rename) make one reload.
    #[serde(deserialize_with = "de::duration")]
    pub debounce: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            debounce: Duration::from_millis(200),
        }
    }
}

impl Validate for ReloadConfig {
    fn validate(&self, v: &mut Validator) {
        if self.debounce < Duration::from_millis(10) || self.debounce > Duration::from_secs(60) {
            v.invalid("debounce", "must be between 10ms and 60s");
        }
    }
}
