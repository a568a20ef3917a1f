//! `tracing` subscriber setup, with a filter that can be changed while the
//! process runs (`PUT /v1/logging`), as Envoy's `/logging` allows.

use std::io::IsTerminal;
use std::sync::Arc;

use parking_lot::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// Logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter directives do not parse.
    #[error("invalid log filter {filter:?}: {reason}")]
    InvalidFilter {
        /// The rejected filter.
        filter: String,
        /// Why.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("logging already initialised: {0}")]
    AlreadyInitialised(String),
    /// The running subscriber could not be updated.
    #[error("cannot change the log filter: {0}")]
    Reload(String),
}

/// Controls the installed subscriber's filter.
#[derive(Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    current: Arc<Mutex<String>>,
    from_env: bool,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("filter", &*self.current.lock())
            .finish()
    }
}

impl LogHandle {
    /// The filter in force.
    pub fn filter(&self) -> String {
        self.current.lock().clone()
    }

    /// True when `RUST_LOG` chose the filter, so config reloads leave it be.
    pub fn set_by_env(&self) -> bool {
        self.from_env
    }

    /// Replaces the filter, e.g. `"debug"` or `"info,trellis=trace"`.
    pub fn set_filter(&self, filter: &str) -> Result<(), LoggingError> {
        let parsed = parse_filter(filter)?;
        self.reload
            .reload(parsed)
            .map_err(|e| LoggingError::Reload(e.to_string()))?;
        *self.current.lock() = filter.to_owned();
        Ok(())
    }
}

fn parse_filter(filter: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| LoggingError::InvalidFilter {
            filter: filter.to_owned(),
            reason: e.to_string(),
        })
}

/// Installs the global subscriber: logs go to stderr as text or JSON, with
/// `RUST_LOG` (when set) taking precedence over `[log] level`.
pub fn init_logging(config: &LogConfig) -> Result<LogHandle, LoggingError> {
    let (filter_text, from_env) = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => (env, true),
        _ => (config.level.clone(), false),
    };
    let (filter, reload) = reload::Layer::new(parse_filter(&filter_text)?);
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::stderr().is_terminal();
    let installed = match config.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    installed.map_err(|e| LoggingError::AlreadyInitialised(e.to_string()))?;
    Ok(LogHandle {
        reload,
        current: Arc::new(Mutex::new(filter_text)),
        from_env,
    })
}
