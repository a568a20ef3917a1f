//! Who a request comes from, as the auth layer proved it. Put into the
//! request's extensions, where later layers (the rate limiter keying on a
//! claim or an API key id, access logs) read it.

use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The caller's name: the JWT subject claim, or the API key's id.
    pub subject: Option<String>,
    /// How the caller proved it.
    pub credential: Credential,
}

/// The credential that was verified.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// A configured API key.
    ApiKey {
        /// Its `id` from the config.
        key_id: String,
    },
    /// A verified JWT.
    Jwt {
        /// The `kid` of the key that verified it.
        key_id: Option<String>,
        /// Every claim of the token.
        claims: Arc<Map<String, Value>>,
    },
}

impl Identity {
    /// The id of the API key used, if one was.
    pub fn api_key_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::ApiKey { key_id } => Some(key_id),
            Credential::Jwt { .. } => None,
        }
    }

    /// A claim of the token, if a JWT was used.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        match &self.credential {
            Credential::Jwt { claims, .. } => claims.get(name),
            Credential::ApiKey { .. } => None,
        }
    }

    /// A claim rendered as text, as it is forwarded in a header and as a
    /// rate limiter would key on it: strings as they are, numbers and
    /// booleans in JSON form, arrays of scalars joined with commas, objects
    /// as compact JSON.
    pub fn claim_text(&self, name: &str) -> Option<Cow<'_, str>> {
        self.claim(name).and_then(claim_text)
    }
}

pub(crate) fn claim_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(_) | Value::Number(_) => Some(Cow::Owned(value.to_string())),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|item| match item {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            Some(Cow::Owned(parts.join(",")))
        }
        Value::Object(_) => Some(Cow::Owned(value.to_string())),
    }
}
