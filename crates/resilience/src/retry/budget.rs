//! Retry budget: retries as a fraction of recent traffic.
//!
//! A per-call attempt limit still multiplies load on a failing upstream by
//! the number of attempts — a retry storm exactly when the upstream can least
//! take it. A budget (as in Finagle and Linkerd) caps retries across all
//! calls instead: every request deposits into a sliding window of `ttl`,
//! every retry withdraws `1 / retry_ratio` of a deposit, and a floor of
//! `min_per_sec` retries per second keeps low-traffic clients able to retry.
//! With the whole upstream down, retries never exceed
//! `retry_ratio × requests + min_per_sec × ttl` within a window.
//!
//! The budget is an `Arc` inside: clone it into several retry layers to give
//! them one budget (say, one per upstream).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Buckets of the sliding window; the window is `ttl` long and slides by
/// `ttl / BUCKETS`.
const BUCKETS: usize = 10;
/// What one request deposits, in fixed-point units so that ratios below one
/// stay exact enough.
const DEPOSIT: i64 = 1000;

/// A budget's parameters were out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidBudget {
    #[error("retry budget ttl must be between 1s and 60s, got {0:?}")]
    Ttl(Duration),
    #[error("retry budget retry_ratio must be a number between 0 and 1000, got {0}")]
    RetryRatio(f64),
}

/// A retry budget shared by every clone. See the module docs.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    epoch: Instant,
    bucket_width: Duration,
    ttl: Duration,
    min_per_sec: u32,
    retry_ratio: f64,
    /// What one retry withdraws.
    withdrawal: i64,
    /// The floor: `min_per_sec × ttl` retries that need no deposits.
    reserve: i64,
    /// Net deposits minus withdrawals per bucket.
    buckets: [AtomicI64; BUCKETS],
    /// The absolute number of the bucket being written to.
    head: AtomicU64,
    /// Serialises only the clearing of expired buckets.
    rotation: Mutex<()>,
}

/// A budget's state now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSnapshot {
    /// Retries that would be allowed now.
    pub available: u64,
    /// The window, the floor and the ratio it was built with.
    pub ttl: Duration,
    pub min_per_sec: u32,
    pub retry_ratio: f64,
}

impl Default for RetryBudget {
    /// 20% of requests over 10 s, with a floor of 10 retries a second
    /// (Linkerd's defaults).
    fn default() -> Self {
        RetryBudget::build(Duration::from_secs(10), 10, 0.2)
    }
}

impl RetryBudget {
    /// A budget allowing `retry_ratio` retries per request (0.2 = 20%) over
    /// a window of `ttl` (1 s to 60 s), plus `min_per_sec` retries a second
    /// regardless of traffic.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_ratio: f64) -> Result<Self, InvalidBudget> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(InvalidBudget::Ttl(ttl));
        }
        if !(0.0..=1000.0).contains(&retry_ratio) {
            return Err(InvalidBudget::RetryRatio(retry_ratio));
        }
        Ok(Self::build(ttl, min_per_sec, retry_ratio))
    }

    fn build(ttl: Duration, min_per_sec: u32, retry_ratio: f64) -> Self {
        // A ratio of zero means "the floor only": requests deposit nothing
        // and a retry withdraws one unit of the floor.
        let withdrawal = if retry_ratio > 0.0 {
            ((DEPOSIT as f64 / retry_ratio).round() as i64).max(1)
        } else {
            1
        };
        let floor_retries = i64::from(min_per_sec).saturating_mul(ttl.as_secs() as i64);
        let reserve = floor_retries.saturating_mul(withdrawal);
        RetryBudget {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                bucket_width: ttl / BUCKETS as u32,
                ttl,
                min_per_sec,
                retry_ratio,
                withdrawal,
                reserve,
                buckets: Default::default(),
                head: AtomicU64::new(0),
                rotation: Mutex::new(()),
            }),
        }
    }

    /// Records a request (every call, retried or not).
    pub fn deposit(&self) {
        if self.inner.retry_ratio <= 0.0 {
            return;
        }
        let slot = self.inner.advance();
        self.inner.buckets[slot].fetch_add(DEPOSIT, Ordering::Relaxed);
    }

    /// Takes one retry out of the budget; `false` when none is left.
    ///
    /// Concurrent withdrawals may overdraw by at most one retry each: the
    /// check and the withdrawal are not one atomic step, which is cheaper
    /// and harmless for a budget that exists to stop storms, not single retries.
    pub fn withdraw(&self) -> bool {
        let inner = &*self.inner;
        let slot = inner.advance();
        if inner.balance() < inner.withdrawal {
            return false;
        }
        inner.buckets[slot].fetch_sub(inner.withdrawal, Ordering::Relaxed);
        true
    }

    /// The budget now.
    pub fn snapshot(&self) -> BudgetSnapshot {
        let inner = &*self.inner;
        inner.advance();
        let available = (inner.balance().max(0) / inner.withdrawal) as u64;
        BudgetSnapshot {
            available,
            ttl: inner.ttl,
            min_per_sec: inner.min_per_sec,
            retry_ratio: inner.retry_ratio,
        }
    }
}

impl Inner {
    /// Deposits minus withdrawals in the window, plus the floor.
    fn balance(&self) -> i64 {
        let sum: i64 = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        sum.saturating_add(self.reserve)
    }

    /// Clears buckets that slid out of the window; returns the current slot.
    /// Only a bucket change takes the lock, so the hot path is a clock read
    /// and an atomic load.
    fn advance(&self) -> usize {
        let now = Instant::now().saturating_duration_since(self.epoch);
        let bucket = (now.as_nanos() / self.bucket_width.as_nanos().max(1)) as u64;
        if bucket > self.head.load(Ordering::Acquire) {
            let _guard = self.rotation.lock();
            let head = self.head.load(Ordering::Acquire);
            if bucket > head {
                let stale = (bucket - head).min(BUCKETS as u64);
                for b in (bucket + 1 - stale)..=bucket {
                    self.buckets[(b % BUCKETS as u64) as usize].store(0, Ordering::Relaxed);
                }
                self.head.store(bucket, Ordering::Release);
            }
        }
        (bucket % BUCKETS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_fraction_of_requests_plus_the_floor() {
        let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.25).unwrap();
        assert!(!budget.withdraw(), "no requests, no floor: no retries");
        for _ in 0..100 {
            budget.deposit();
        }
        let allowed = (0..1000).take_while(|_| budget.withdraw()).count();
        assert_eq!(allowed, 25);
        assert_eq!(budget.snapshot().available, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_retries_without_traffic() {
        let budget = RetryBudget::new(Duration::from_secs(2), 5, 0.1).unwrap();
        assert_eq!(budget.snapshot().available, 10);
        let allowed = (0..1000).take_while(|_| budget.withdraw()).count();
        assert_eq!(allowed, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_ratio_allows_only_the_floor() {
        let budget = RetryBudget::new(Duration::from_secs(1), 3, 0.0).unwrap();
        for _ in 0..1000 {
            budget.deposit();
        }
        let allowed = (0..1000).take_while(|_| budget.withdraw()).count();
        assert_eq!(allowed, 3);
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!((0..1000).take_while(|_| budget.withdraw()).count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_ttl() {
        let budget = RetryBudget::new(Duration::from_secs(1), 0, 1.0).unwrap();
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(budget.snapshot().available, 10);
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(budget.snapshot().available, 0);
        assert!(!budget.withdraw());
    }

    #[test]
    fn out_of_range_parameters_are_named() {
        let e = RetryBudget::new(Duration::from_millis(10), 1, 0.2).unwrap_err();
        assert!(e.to_string().contains("ttl"), "{e}");
        let e = RetryBudget::new(Duration::from_secs(10), 1, f64::NAN).unwrap_err();
        assert!(e.to_string().contains("retry_ratio"), "{e}");
        assert!(RetryBudget::new(Duration::from_secs(10), 1, -0.5).is_err());
    }
}
