//! Configuration: the `trellis.toml` model, how it is loaded, and how it is
//! checked.
//!
//! Every section is a plain serde type with `deny_unknown_fields` and defaults,
//! so a typo is an error that names the key instead of being silently ignored,
//! and an empty file is a working configuration. Errors from parsing and from
//! semantic checks both point at `file:line:col: key.path`.
//!
//! Adding a section owned by another crate is a two-line change: a field on
//! [`Config`] and a `v.section("name", &self.name)` line in its [`Validate`]
//! impl; the section's own rules go in an `impl Validate` for its type (here,
//! since the trait is local). See docs/config.md.

mod core;
pub mod de;
mod error;
mod live;
mod locate;
mod store;
mod validate;

use std::path::Path;

use serde::Deserialize;

pub use self::core::{ControlConfig, DataConfig, LogConfig, LogFormat, ReloadConfig, Secret};
pub use error::{ConfigError, Diagnostic, Location};
pub use live::LiveConfig;
pub use store::{StoreBackend, StoreSection};
pub use validate::{KeyPath, Problem, Segment, Validate, Validator};

/// The whole `trellis.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[control]`: the control-plane HTTP API.
    pub control: ControlConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[data]`: where embedded state lives.
    pub data: DataConfig,
    /// `[reload]`: watching the config file for edits.
    pub reload: ReloadConfig,
    /// `[telemetry]`: OpenTelemetry traces over OTLP.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// `[store]`: the database behind events, the registry and projections.
    pub store: StoreSection,
    /// `[registry]`: the service registry.
    pub registry: trellis_discovery::RegistryConfig,
    /// `[[listeners]]`: the gateway's listening sockets (see docs/gateway-config.md).
    pub listeners: Vec<trellis_gateway::config::Listener>,
    /// `[[routes]]`: the gateway's routes.
    pub routes: Vec<trellis_gateway::config::Route>,
    /// `[[upstreams]]`: where routes forward to.
    pub upstreams: Vec<trellis_gateway::config::UpstreamConfig>,
}

impl Validate for Config {
    fn validate(&self, v: &mut Validator) {
        v.section("control", &self.control);
        v.section("log", &self.log);
        v.section("data", &self.data);
        v.section("reload", &self.reload);
        v.section("telemetry", &self.telemetry);
        v.section("store", &self.store);
        if let Err(trellis_discovery::RegistryError::Invalid { field, reason }) =
            self.registry.validate()
        {
            v.invalid_at(&format!("registry.{field}"), reason);
        }
        // The gateway checks its own sections and names keys from the top.
        if let Err(errors) = self.gateway().validate() {
            for e in errors.0 {
                v.invalid_at(&e.path, e.message);
            }
        }
    }
}

impl Config {
    /// The gateway's part of the config.
    pub fn gateway(&self) -> trellis_gateway::GatewayConfig {
        trellis_gateway::GatewayConfig {
            listeners: self.listeners.clone(),
            routes: self.routes.clone(),
            upstreams: self.upstreams.clone(),
        }
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `file` is only used to name the source in
    /// errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = parse_section(text, file)?;
        let mut v = Validator::new();
        config.validate(&mut v);
        let problems = v.into_problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::from_problems(text, file, problems))
        }
    }
}

/// Deserializes `text` into any section-shaped type, turning a failure into a
/// located [`ConfigError`]. Exposed so that other crates can test their own
/// section types with the same error rendering.
pub fn parse_section<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| ConfigError::from_serde(text, file, e))
}

#[cfg(test)]
mod tests;
