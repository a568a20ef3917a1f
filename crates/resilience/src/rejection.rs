use crate::BoxError;
use crate::{
    breaker::BreakerOpen, bulkhead::BulkheadFull, ratelimit::RateLimited, timeout::Elapsed,
};
use std::time::Duration;

/// Which pattern refused a call, found in a [`BoxError`] however deeply the
/// layers were stacked. A gateway maps this to a status: an open breaker and
/// a full bulkhead to `503`, a rate limit to `429`, a timeout to `504`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A circuit breaker is open; it may admit a probe after `retry_after`.
    BreakerOpen { retry_after: Duration },
    /// A bulkhead had no permit and its queue was full or the wait ran out.
    BulkheadFull,
    /// A rate limit was exceeded; the next call may pass after `retry_after`.
    RateLimited { retry_after: Duration },
    /// A deadline passed before the call completed.
    Timeout,
}

impl Rejection {
    /// The rejection carried by `error`, looking through its `source()` chain.
    pub fn of(error: &BoxError) -> Option<Rejection> {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
        while let Some(e) = current {
            if let Some(open) = e.downcast_ref::<BreakerOpen>() {
                return Some(Rejection::BreakerOpen {
                    retry_after: open.retry_after(),
                });
            }
            if e.downcast_ref::<BulkheadFull>().is_some() {
                return Some(Rejection::BulkheadFull);
            }
            if let Some(limited) = e.downcast_ref::<RateLimited>() {
                return Some(Rejection::RateLimited {
                    retry_after: limited.retry_after(),
                });
            }
            if e.downcast_ref::<Elapsed>().is_some() {
                return Some(Rejection::Timeout);
            }
            current = e.source();
        }
        None
    }
}
