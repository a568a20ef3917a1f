//! What can go wrong, typed so the REST layer maps each case to a status and
//! a stable problem code.

use trellis_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A field of a registration (or a name) is unacceptable; nothing was written.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("service {service:?} has no instance {id:?}")]
    NotFound { service: String, id: String },
    /// A heartbeat for an instance that has no TTL.
    #[error(
        "instance {service:?}/{id:?} has no ttl: it is health-checked by the registry or static"
    )]
    NoTtl { service: String, id: String },
    #[error("the registry holds its maximum of {0} instances")]
    Full(usize),
    #[error("registry storage failed: {0}")]
    Store(#[from] StoreError),
    /// The shared backend (etcd) failed or is unreachable.
    #[error("registry backend failed: {0}")]
    Backend(String),
    #[error("stored registration {service:?}/{id:?} is unreadable: {reason}")]
    Corrupt {
        service: String,
        id: String,
        reason: String,
    },
}

impl RegistryError {
    /// The field an `Invalid` error names.
    pub fn field(&self) -> Option<&str> {
        match self {
            RegistryError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}
