//! Rate limiting: GCRA per key with bursts, locally or shared through Redis.
//!
//! A [`RateLimiter`] applies a [`Quota`] (`n` calls per period, bursts of up
//! to `b`) to each key — client IP, API key, tenant — and answers each call
//! with a [`Decision`]: admitted or not, how much quota remains, when it
//! resets and when to retry, everything a gateway needs for `429` with
//! `Retry-After` and `RateLimit-*` headers (the `http` feature renders them:
//! [`Decision::write_headers`]).
//!
//! The state lives in a [`RateLimitStore`]:
//! - [`MemoryStore`]: sharded, bounded, idle keys swept, for one process;
//! - [`DirectStore`]: a single lock-free limit with no keys;
//! - `RedisStore` (the `redis` feature): one atomic round trip per decision,
//!   so a fleet of gateways shares one limit.
//!
//! The two local stores read tokio's clock by default, so a paused test
//! clock drives them, or the several-times-cheaper [`FastClock`].
//!
//! When a store fails, the limiter's [`FailurePolicy`] decides (open or
//! closed) and a [`RateLimitEvent::StoreFailed`] is published.
//! [`RateLimitLayer`] puts a limiter in front of any tower service; refused
//! calls fail with [`RateLimited`].

mod clock;
mod limiter;
mod memory;
mod quota;
mod service;
mod store;

#[cfg(feature = "http")]
pub mod headers;
#[cfg(feature = "redis")]
mod redis;

pub use clock::{Clock, FastClock, TokioClock};
pub use limiter::{FailurePolicy, RateLimitEvent, RateLimiter, RateLimiterSnapshot};
pub use memory::{
    DirectStore, MemoryStore, MemoryStoreConfig, MemoryStoreError, MemoryStoreSnapshot,
};
pub use quota::{Decision, Quota, QuotaError};
#[cfg(feature = "redis")]
pub use redis::{RedisStore, RedisStoreConfig};
pub use service::{RateLimitFuture, RateLimitLayer, RateLimitService};
pub use store::{LocalStore, RateLimitStore, StoreError};

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
