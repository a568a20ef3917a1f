//! Where a limiter keeps its keys' state.
//!
//! A store makes the whole decision for a key in one step (read the TAT,
//! decide, write it back) so that concurrent callers — threads, or whole
//! gateways sharing Redis — can never both spend the last unit of quota.
//! The clock is the store's own: the memory stores use tokio's clock (so a
//! paused test clock drives them) and Redis uses the server's `TIME`, so
//! gateways with skewed clocks still agree.

use super::{Decision, Quota};
use std::future::Future;
use std::time::Duration;

/// Keeps rate-limit state for keys of type `K`.
pub trait RateLimitStore<K>: Send + Sync + 'static {
    /// The future of one decision. Local stores answer with a ready future,
    /// so a limiter over them never allocates or yields.
    type Decide: Future<Output = Result<Decision, StoreError>> + Send + Unpin + 'static;

    /// Decides one call for `key` under `quota`, recording it if admitted.
    fn decide(&self, key: &K, quota: &Quota) -> Self::Decide;

    /// Told once by the limiter that owns the store, before any decision,
    /// the quota it will pass on every call without an override, so that
    /// the store can work out once what it derives from it.
    fn prepare(&mut self, _quota: &Quota) {}

    /// Keys the store holds now, when it can tell cheaply.
    fn keys_tracked(&self) -> Option<usize> {
        None
    }
}

/// A store that could not decide; the limiter's [`FailurePolicy`] decides
/// instead.
///
/// [`FailurePolicy`]: super::FailurePolicy
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or returned an error.
    #[error("rate-limit store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer in time.
    #[error("rate-limit store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store answered with something that is not a decision.
    #[error("rate-limit store gave an unexpected reply: {0}")]
    Protocol(String),
}

/// A store that decides at once, in this process: a limiter over it can
/// decide synchronously ([`RateLimiter::check_now`]), with no future at all.
///
/// [`RateLimiter::check_now`]: super::RateLimiter::check_now
pub trait LocalStore<K>: RateLimitStore<K> {
    /// Decides one call for `key` under `quota`, recording it if admitted.
    fn decide_now(&self, key: &K, quota: &Quota) -> Decision;
}
