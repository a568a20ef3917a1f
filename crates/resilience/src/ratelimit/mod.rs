//! Rate limiting (being written).

use std::time::Duration;

/// A call refused by a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded; retry in {retry_after:?}")]
pub struct RateLimited {
    retry_after: Duration,
}

impl RateLimited {
    /// A rejection whose next chance is `retry_after` from now.
    pub fn new(retry_after: Duration) -> Self {
        RateLimited { retry_after }
    }

    /// How long until the key has quota again.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}
