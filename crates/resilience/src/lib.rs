//! Resilience patterns as tower layers: the **circuit breaker**, **retry with
//! backoff**, **bulkhead**, **rate limiting**, **timeout** and **fallback**.
//!
//! Every pattern is a [`tower::Layer`] producing a [`tower::Service`], usable
//! alone in any Rust service and composable in any order. The state of a
//! pattern (a breaker's window, a bulkhead's permits, a limiter's buckets)
//! lives behind an `Arc`, so every clone of a service shares it: one breaker
//! guards an upstream for all of its callers.
//!
//! Each pattern is observable in two ways: a `snapshot()` of its state now,
//! and a stream of [`observe`] events (state transitions, rejections,
//! retries) that the `trellis` server turns into Prometheus metrics.
//!
//! What counts as a failure is not the layer's business: a [`classify::Classify`]
//! decides, so the same breaker and retry serve HTTP (where connect errors,
//! timeouts and 5xx fail and 4xx do not), gRPC and plain futures.
//!
//! Rejections are typed errors ([`breaker::BreakerOpen`],
//! [`bulkhead::BulkheadFull`], [`ratelimit::RateLimited`],
//! [`timeout::Elapsed`]), boxed into [`BoxError`] the way tower's own
//! middleware does, so layers stack without nesting error enums; use
//! [`Rejection::of`] to find out which pattern refused a call.

pub mod breaker;
pub mod bulkhead;
pub mod classify;
pub mod fallback;
pub mod observe;
pub mod ratelimit;
pub mod retry;
pub mod timeout;

mod rejection;

pub use rejection::Rejection;

/// The error type of every layer in this crate, as in tower's own middleware.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
