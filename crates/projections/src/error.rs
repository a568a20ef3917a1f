//! Errors of the projection API, each naming what was wrong.

use trellis_events::ReadError;
use trellis_store::StoreError;

use crate::script::ScriptError;

/// Why a projection operation or query failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("projection `{0}` does not exist")]
    NotFound(String),
    #[error("projection `{0}` already exists")]
    AlreadyExists(String),
    #[error("invalid projection name `{name}`: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid projection: {0}")]
    InvalidDefinition(String),
    #[error("invalid script: {0}")]
    Script(#[from] ScriptError),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("projection `{0}` has stopped (the runtime is shutting down)")]
    Stopped(String),
    #[error("timed out waiting for projection `{name}` to reach position {position}")]
    Timeout { name: String, position: u64 },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
