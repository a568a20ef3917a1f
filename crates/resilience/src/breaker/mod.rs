//! Circuit breaker (being written).

mod error;
pub use error::BreakerOpen;
