//! What a projection is: a name, the events it reads and the script that folds them.

use serde::{Deserialize, Serialize};
use trellis_events::{validate_stream_name, SubscriptionTarget};

use crate::error::ProjectionError;

/// Longest projection name.
pub const MAX_NAME_LEN: usize = 64;

/// The events a projection reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// Every event, by global position.
    #[serde(rename = "$all")]
    All,
    /// The streams of one category (`order` for `order-…`).
    Category(String),
    /// One stream.
    Stream(String),
}

impl Source {
    pub(crate) fn target(&self) -> SubscriptionTarget {
        match self {
            Source::All => SubscriptionTarget::All,
            Source::Category(c) => SubscriptionTarget::Category(c.clone()),
            Source::Stream(s) => SubscriptionTarget::Stream(s.clone()),
        }
    }
}

/// A projection's definition, as created through the API and persisted in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectionDefinition {
    /// `[a-z][a-z0-9_-]*`, at most [`MAX_NAME_LEN`] bytes.
    pub name: String,
    pub source: Source,
    /// Only these event types reach the script, when set (filtered in storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<String>>,
    /// The Rhai script; see [`crate::script`] for its API.
    pub script: String,
}

impl ProjectionDefinition {
    pub fn new(name: impl Into<String>, source: Source, script: impl Into<String>) -> Self {
        ProjectionDefinition {
            name: name.into(),
            source,
            event_types: None,
            script: script.into(),
        }
    }

    pub fn with_event_types(mut self, types: Vec<String>) -> Self {
        self.event_types = Some(types);
        self
    }

    /// Checks everything but the script (which [`crate::Script::compile`] checks).
    pub fn validate(&self) -> Result<(), ProjectionError> {
        validate_name(&self.name)?;
        let invalid = |reason: String| Err(ProjectionError::InvalidDefinition(reason));
        match &self.source {
            Source::All => {}
            Source::Category(c) | Source::Stream(c) => {
                if let Err(e) = validate_stream_name(c) {
                    return invalid(format!("source: {e}"));
                }
            }
        }
        if let Some(types) = &self.event_types {
            if types.is_empty() {
                return invalid("eventTypes is empty; omit it to receive every type".into());
            }
            if types.len() > 100 {
                return invalid("eventTypes lists more than 100 types".into());
            }
            if let Some(t) = types
                .iter()
                .find(|t| t.trim().is_empty() || t.len() > 200 || t.chars().any(char::is_control))
            {
                return invalid(format!(
                    "eventTypes: `{}` is not an event type",
                    t.chars().take(40).collect::<String>()
                ));
            }
        }
        Ok(())
    }
}

/// Checks a projection name: it appears in URLs and in the read model's rows.
pub fn validate_name(name: &str) -> Result<(), ProjectionError> {
    let bad = |reason: &'static str| {
        Err(ProjectionError::InvalidName {
            name: name.chars().take(64).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 64 bytes");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("it must start with a lowercase letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return bad("only lowercase letters, digits, `_` and `-` are allowed");
    }
    Ok(())
}
