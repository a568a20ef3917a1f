use std::time::Duration;

/// A call refused because the circuit is open (or forced open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is open; next probe allowed in {retry_after:?}")]
pub struct BreakerOpen {
    retry_after: Duration,
}

impl BreakerOpen {
    /// A rejection that lasts `retry_after` longer.
    pub fn new(retry_after: Duration) -> Self {
        BreakerOpen { retry_after }
    }

    /// How long until the breaker may admit a probe (zero when forced open:
    /// it stays open until an operator closes it).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}
